"""The ``.ccz`` probes section: compact codes that decode exactly, a round trip, bounds checked before anything is
allocated, stale probes never used, files without probes unchanged."""
import zlib

import pytest
import torch

from cnncompress import models, storage
from cnncompress.errors import InputError
from cnncompress.storage import probe_section as probe_store
from cnncompress.storage.ccz_header import HEADER, decode_manifest, encode_manifest, header_size, pack_header
from cnncompress.storage.probe_section import Probes, dequantize, quantize


@pytest.fixture
def model():
    torch.manual_seed(0)
    net = models.build("squeezenet1_1", 10, 1, 48, width=0.25).eval()
    net.compression_history = [{"method": "test", "config": {"k": (1, 2)}}]  # a tuple: JSON makes it a list
    return net


def _probes(model, count=5):
    images = torch.randn(count, 1, 48, 48, generator=torch.Generator().manual_seed(1))
    codes, low, step = quantize(images)
    reference = torch.randn(count, 10, generator=torch.Generator().manual_seed(2))
    return Probes(codes, low, step, reference, "the form", "test images", list(model.compression_history))


def test_codes_decode_within_half_a_step_and_reencode_to_themselves():
    images = torch.rand(4, 3, 8, 8) * torch.tensor([1.0, 10.0, 0.0]).view(1, 3, 1, 1)  # one constant channel
    codes, low, step = quantize(images)
    decoded = dequantize(codes, low, step)
    assert codes.dtype == torch.uint8 and step[2] == 1.0
    assert ((decoded - images).abs() <= torch.tensor(step).view(1, 3, 1, 1) / 2 + 1e-6).all()
    reference = torch.tensor(low).view(1, 3, 1, 1) + codes.float() * torch.tensor(step).view(1, 3, 1, 1)
    assert torch.equal(decoded, reference)


def test_round_trip(tmp_path, model):
    probes = _probes(model)
    path = storage.save(model, tmp_path / "m.ccz", probes=probes)
    loaded = storage.load(path)
    back = probe_store.of(loaded)
    assert back is not None and torch.equal(back.codes, probes.codes) and torch.equal(back.reference, probes.reference)
    assert (back.low, back.step, back.form, back.source) == (probes.low, probes.step, "the form", "test images")
    assert torch.equal(back.inputs(), probes.inputs())
    assert storage.payload_bytes(path) == storage.payload_bytes(storage.save(model, tmp_path / "plain.ccz"))


def test_a_file_without_probes_loads_as_before(tmp_path, model):
    path = storage.save(model, tmp_path / "m.ccz")
    assert "probes" not in storage.read_manifest(path)[0]
    assert probe_store.of(storage.load(path)) is None


def test_a_reader_that_ignores_probes_still_reads_the_model(tmp_path, model):
    """The probe blobs follow the tensors' and the payload sha256 covers them: dropping the section (what an older
    reader does) leaves a valid file of the same model."""
    path = storage.save(model, tmp_path / "m.ccz", probes=_probes(model))
    _rewrite(path, lambda manifest: manifest.pop("probes"))
    x = torch.randn(1, 1, 48, 48)
    assert torch.equal(storage.load(path)(x), model(x))


def test_stale_probes_are_never_used_nor_written(tmp_path, model):
    probes = _probes(model)
    probe_store.attach(model, probes)
    assert probe_store.of(model) is probes
    model.compression_history = model.compression_history + [{"method": "another", "config": {}}]
    assert probe_store.of(model) is None
    with pytest.raises(ValueError, match="another compression history"):
        storage.save(model, tmp_path / "m.ccz", probes=probes)


def _rewrite(path, edit):
    raw = path.read_bytes()
    _, version, length = HEADER.unpack(raw[:HEADER.size])
    start = header_size(version)
    manifest = decode_manifest(raw[start:start + length], version)
    edit(manifest)
    encoded = encode_manifest(manifest, version)
    path.write_bytes(pack_header(encoded, version) + encoded + raw[start + length:])


def _set(key, value):
    def edit(manifest):
        manifest["probes"][key] = value
    return edit


@pytest.mark.parametrize("edit, problem", [
    (_set("count", 10 ** 12), "count"),
    (_set("shape", [3, 100000, 100000]), "exceed"),
    (_set("shape", [1, 2]), "bad image shape"),
    (_set("shape", [1, 24, 24]), "do not fit the model's input"),
    (_set("classes", 10 ** 9), "out of bounds"),
    (_set("classes", 7), "the model has 10"),
    (_set("step", [0.0]), "positive"),
    (_set("low", ["a"]), "finite numbers"),
    (_set("reference", {"offset": 0, "length": 1 << 40, "crc32": 0}), "do not fit the file"),
    (_set("inputs", {"offset": 10 ** 15, "length": 1, "crc32": 0}), "do not fit the file"),
    (_set("inputs", "nothing"), "corrupt inputs entry"),
    (lambda manifest: manifest.__setitem__("probes", [1]), "not an object"),
])
def test_absurd_or_broken_sections_are_one_line_before_anything_is_allocated(tmp_path, model, monkeypatch, edit,
                                                                            problem):
    path = storage.save(model, tmp_path / "m.ccz", probes=_probes(model))
    _rewrite(path, edit)
    monkeypatch.setattr(probe_store, "decode", lambda *a: pytest.fail("decoded a section that is not checked"))
    monkeypatch.setattr(probe_store.torch, "frombuffer", lambda *a, **k: pytest.fail("allocated"))
    with pytest.raises(InputError) as error:
        storage.read_manifest(path)
    message = str(error.value)
    assert problem in message and "m.ccz" in message and "\n" not in message


def test_corrupt_probe_bytes_are_named(tmp_path, model):
    path = storage.save(model, tmp_path / "m.ccz", probes=_probes(model))
    section = storage.read_manifest(path)[0]["probes"]
    raw = bytearray(path.read_bytes())
    raw[len(raw) - section["reference"]["length"]] ^= 0xFF  # the reference is the last blob
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="corrupted file"):  # the payload sha256 covers the probes
        storage.load(path)


def test_inputs_that_inflate_past_their_declared_size_are_refused(tmp_path, model):
    """A zlib bomb in the inputs blob: inflated to at most the declared size, then refused."""
    probes = _probes(model)
    path = storage.save(model, tmp_path / "m.ccz", probes=probes)
    manifest, blob_start = storage.read_manifest(path)
    section = manifest["probes"]
    raw = path.read_bytes()
    bomb = zlib.compress(bytes(probes.codes.numel() * 100), 9)
    reference = raw[blob_start + section["reference"]["offset"]:]
    start = section["inputs"]["offset"]

    def edit(manifest):
        manifest["probes"]["inputs"] = {"offset": start, "length": len(bomb), "crc32": zlib.crc32(bomb)}
        manifest["probes"]["reference"]["offset"] = start + len(bomb)
        manifest["payload_sha256"] = __import__("hashlib").sha256(raw[blob_start:blob_start + start] + bomb
                                                                 + reference).hexdigest()
    _rewrite(path, edit)
    manifest, blob_start = storage.read_manifest(path)
    head = path.read_bytes()[:blob_start]
    path.write_bytes(head + raw[blob_start:blob_start + start] + bomb + reference)
    with pytest.raises(InputError, match="do not inflate"):
        storage.load(path)
