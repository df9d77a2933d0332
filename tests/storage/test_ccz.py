import json
import os
import struct

import pytest
import torch
from torch import nn

from cnncompress import models, storage
from cnncompress.errors import InputError
from cnncompress.storage.ccz import HEADER


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


def _rewrite_manifest(path, edit):
    raw = path.read_bytes()
    magic, version, length = HEADER.unpack(raw[:HEADER.size])
    manifest = json.loads(raw[HEADER.size:HEADER.size + length])
    edit(manifest)
    encoded = json.dumps(manifest).encode()
    path.write_bytes(HEADER.pack(magic, version, len(encoded)) + encoded + raw[HEADER.size + length:])


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
    (lambda p: p.write_bytes(p.read_bytes()[:HEADER.size] + b"[" + p.read_bytes()[HEADER.size + 1:]), "corrupt manifest"),
])
def test_corrupt_files_give_one_clear_error(tmp_path, model, corrupt, problem):
    path = storage.save(model, tmp_path / "m.ccz")
    corrupt(path)
    with pytest.raises(InputError, match=problem) as info:
        storage.load(path)
    assert "m.ccz" in str(info.value) and "\n" not in str(info.value)


def test_flipped_blob_byte_detected_by_sha256(tmp_path, model):
    path = storage.save(model, tmp_path / "m.ccz")
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="sha256 mismatch"):
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
