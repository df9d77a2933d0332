import hashlib
import json
import os
import struct
import zlib

import pytest
import torch
from torch import nn

from cnncompress import models, storage
from cnncompress.errors import InputError
from cnncompress.storage.ccz_header import VERSION, HEADER, decode_manifest, encode_manifest, header_size, pack_header


@pytest.fixture
def model():
    torch.manual_seed(0)
    return models.build("squeezenet1_1", 10, 1, 48, width=0.25).eval()


def test_round_trip_fp32_is_exact(tmp_path, model):
    path = storage.save(model, tmp_path / "m.ccz")
    loaded = storage.load(path)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    x = torch.randn(2, 1, 48, 48)
    assert torch.equal(model(x), loaded(x))
    assert loaded.spec == model.spec


def test_fp16_halves_the_payload(tmp_path, model):
    full = storage.save(model, tmp_path / "a.ccz")
    half = storage.save(model, tmp_path / "b.ccz", float_codec="fp16")
    assert storage.payload_bytes(half) * 2 == pytest.approx(storage.payload_bytes(full), rel=0.01)
    loaded = storage.load(half)
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point():
            assert torch.equal(loaded.state_dict()[name], tensor.half().float()), name


def test_changed_architecture_is_rebuilt(tmp_path, model):
    model.features.fire2.squeeze = nn.Sequential(nn.Conv2d(16, 2, 1), nn.Conv2d(2, 4, 1))
    model.classifier.conv10 = nn.Conv2d(128, 10, 1, bias=False)
    path = storage.save(model, tmp_path / "m.ccz")
    manifest, _ = storage.read_manifest(path)
    assert set(manifest["architecture"]) == {"features.fire2.squeeze", "classifier.conv10"}
    loaded = storage.load(path)
    x = torch.randn(1, 1, 48, 48)
    assert torch.equal(model(x), loaded(x))


def _rewrite_raw_manifest(path, edit):
    """Replace the manifest bytes by ``edit(bytes)`` and re-hash them, as a hostile writer would: what the
    digest cannot catch must still be refused by the validation behind it."""
    raw = path.read_bytes()
    magic, version, length = HEADER.unpack(raw[:HEADER.size])
    start = header_size(version)
    encoded = edit(raw[start:start + length])
    path.write_bytes(pack_header(encoded, version) + encoded + raw[start + length:])


def _rewrite_manifest(path, edit):
    def change(raw: bytes) -> bytes:
        manifest = decode_manifest(raw, VERSION)
        edit(manifest)
        return encode_manifest(manifest, VERSION)
    _rewrite_raw_manifest(path, change)


def _first_tensor(key, value):
    def edit(manifest):
        manifest["tensors"][0][key] = value
    return edit


@pytest.mark.parametrize("corrupt, problem", [
    (lambda p: p.write_bytes(p.read_bytes()[:10]), "truncated .ccz header"),
    (lambda p: p.write_bytes(b"PK\x03\x04" + p.read_bytes()[4:]), "bad magic"),
    (lambda p: p.write_bytes(HEADER.pack(b"CCZ\x00", 99, 0) + p.read_bytes()[HEADER.size:]), "version 99"),
    (lambda p: p.write_bytes(p.read_bytes()[:-100]), "past the end"),
    (lambda p: p.write_bytes(HEADER.pack(b"CCZ\x00", 1, 1 << 40) + p.read_bytes()[HEADER.size:]), "manifest length"),
    (lambda p: _rewrite_manifest(p, _first_tensor("shape", [2**40])), "bad shape|too large"),
    (lambda p: _rewrite_manifest(p, _first_tensor("shape", [3, 3])), "expected|do not match"),
    (lambda p: _rewrite_manifest(p, _first_tensor("offset", 10**12)), "past the end"),
    (lambda p: _rewrite_manifest(p, _first_tensor("codec", "pickle")), "unknown codec"),
    (lambda p: _rewrite_manifest(p, lambda m: m["spec"].update(width=1e9)), "cannot rebuild"),
    (lambda p: _rewrite_manifest(p, lambda m: m.update(architecture={"features": {"type": "os.system"}})),
     "cannot rebuild"),
    (lambda p: _rewrite_raw_manifest(p, lambda raw: b"[" + raw[1:]), "corrupt manifest"),
    (lambda p: _rewrite_raw_manifest(p, lambda raw: zlib.compress(b"[" + zlib.decompress(raw)[1:])),
     "corrupt manifest"),
    (lambda p: _rewrite_raw_manifest(p, lambda raw: raw[:len(raw) // 2]), "corrupt manifest"),
    (lambda p: _rewrite_raw_manifest(p, lambda raw: zlib.compress(b" " * (65 << 20))), "inflates past"),
    (lambda p: p.write_bytes(p.read_bytes()[:header_size(2)] + b"[" + p.read_bytes()[header_size(2) + 1:]),
     "manifest sha256"),
])
def test_corrupt_files_give_one_clear_error(tmp_path, model, corrupt, problem):
    path = storage.save(model, tmp_path / "m.ccz")
    corrupt(path)
    with pytest.raises(InputError, match=problem) as info:
        storage.load(path)
    assert "m.ccz" in str(info.value) and "\n" not in str(info.value)


def test_flipped_blob_byte_names_the_corrupt_tensor(tmp_path, model):
    path = storage.save(model, tmp_path / "m.ccz")
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF
    path.write_bytes(bytes(raw))
    last = storage.read_manifest(path)[0]["tensors"][-1]["name"]
    with pytest.raises(InputError, match=f"tensor {last}: checksum mismatch"):
        storage.load(path)


def test_a_blob_forged_to_its_crc32_is_caught_by_the_payload_sha256(tmp_path, model):
    """CRC-32 names a corrupt tensor but is no defence against a crafted change: the manifest's CRC is rewritten
    to the forged bytes (and the header digest with it), and the blob section's sha256 still refuses it."""
    path = storage.save(model, tmp_path / "m.ccz")
    manifest, start = storage.read_manifest(path)
    raw = bytearray(path.read_bytes())
    entry = manifest["tensors"][-1]
    at = start + entry["offset"]
    raw[at] ^= 0x01
    forged = zlib.crc32(bytes(raw[at:at + entry["length"]]))
    path.write_bytes(bytes(raw))
    _rewrite_manifest(path, lambda m: m["tensors"][-1].update(crc32=forged))
    with pytest.raises(InputError, match="payload sha256 mismatch"):
        storage.load(path)


def test_missing_and_directory(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        storage.load(tmp_path / "none.ccz")
    with pytest.raises(InputError, match="is a directory"):
        storage.load(tmp_path)


def test_size_is_os_stat(tmp_path, model):
    from cnncompress import measure
    path = storage.save(model, tmp_path / "m.ccz")
    assert measure.file_bytes(path) == os.stat(path).st_size
    assert storage.payload_bytes(path) == sum(4 * t.numel() for t in model.state_dict().values()
                                              if t.is_floating_point()) + sum(
        8 * t.numel() for t in model.state_dict().values() if t.dtype == torch.int64)
    assert struct.unpack("<4s", path.read_bytes()[:4])[0] == b"CCZ\x00"


def test_a_file_cannot_make_the_reader_allocate_more_than_it_justifies(tmp_path):
    """A memory bomb: a fully pruned 1x1 classifier of 100,000 classes is ~1.1 MB of CSR and fp32 bias but ~120 MiB of
    tensors once loaded: refused, one line, before anything is allocated."""
    from cnncompress import methods
    net = models.build("squeezenet1_1", num_classes=100_000, in_channels=1, input_size=48, width=0.5)
    pruned = methods.apply(net, "prune-magnitude", layers="classifier.conv10", sparsity=0.5)
    with torch.no_grad():
        pruned.classifier.conv10.weight.zero_()
        pruned.classifier.conv10.bias.zero_()
    path = storage.save(pruned, tmp_path / "bomb.ccz")
    assert path.stat().st_size < 1_500_000  # the bias and the CSR row pointers
    with pytest.raises(InputError, match="bomb.ccz: the model it describes needs [0-9.]+ MiB") as info:
        storage.load(path)
    assert "\n" not in str(info.value)


def test_the_expansion_bound_is_configurable(tmp_path, model, monkeypatch):
    path = storage.save(model, tmp_path / "m.ccz")
    monkeypatch.setattr("cnncompress.storage.ccz.EXPANSION_ALLOWANCE", 0)
    monkeypatch.setenv("CNNCOMPRESS_MAX_EXPANSION", "0.5")
    with pytest.raises(InputError, match="CNNCOMPRESS_MAX_EXPANSION"):
        storage.load(path)
    monkeypatch.setenv("CNNCOMPRESS_MAX_EXPANSION", "64")
    storage.load(path)


@pytest.mark.parametrize("old", [1, 2, 3])
def test_older_versions_still_load(tmp_path, model, old):
    """Version 3 (a sha256 per tensor), 2 (plain-JSON manifest too) and 1 (no manifest digest either) files
    written as they were."""
    path = storage.save(model, tmp_path / "m.ccz")
    raw = path.read_bytes()
    _, version, length = HEADER.unpack(raw[:HEADER.size])
    start = header_size(version)
    content = decode_manifest(raw[start:start + length], version)
    blobs = raw[start + length:]
    content.pop("payload_sha256")
    content["version"] = old
    for entry in content["tensors"]:
        del entry["crc32"]
        entry["sha256"] = hashlib.sha256(blobs[entry["offset"]:entry["offset"] + entry["length"]]).hexdigest()
    manifest = encode_manifest(content, old)
    assert manifest.startswith(b"{") == (old < 3)  # plain JSON before version 3
    path.write_bytes(pack_header(manifest, old) + manifest + blobs)
    x = torch.randn(1, 1, 48, 48)
    assert torch.equal(storage.load(path)(x), model.eval()(x))


def test_manifest_is_compressed(tmp_path, model):
    path = storage.save(model, tmp_path / "m.ccz")
    raw = path.read_bytes()
    _, version, length = HEADER.unpack(raw[:HEADER.size])
    plain = len(encode_manifest(storage.read_manifest(path)[0], 2))
    assert version == VERSION == 4 and length < plain / 2


def test_no_single_bit_flip_loads_as_a_different_model(tmp_path):
    """Every byte that changes the model is covered by a hash: a flipped bit anywhere either is refused or (in
    bytes that change nothing) loads the same model. 1,000 random flips here; ``fuzz/fuzz_ccz.py --flips N``
    runs more."""
    from ccz_mutations import flip_outcomes
    torch.manual_seed(0)
    data = storage.save(models.build("cascade_cnn", 10, 1, 28, width=0.125), tmp_path / "seed.ccz").read_bytes()
    outcomes = flip_outcomes(data, tmp_path / "case.ccz", 1000)
    assert outcomes["different"] == 0 and outcomes["refused"] > 950, outcomes


def test_a_fifo_is_refused_not_read(tmp_path):
    import os
    fifo = tmp_path / "pipe.ccz"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="pipe.ccz: not a regular file"):
        storage.load(fifo)
