"""The compiled-kernel cache is checked like the assets: a damaged library is rebuilt, never loaded."""
import ctypes

import pytest

from cnncompress.kernels import native


def test_a_truncated_library_in_the_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNCOMPRESS_CACHE", str(tmp_path))
    monkeypatch.delenv("CNNCOMPRESS_NO_NATIVE", raising=False)
    isa = native.requested_isa()
    flags = native.CFLAGS + native.isa_flags(isa)
    path = native.library_path("hashed", flags, (), isa)
    try:
        native.compile_library("hashed", path, flags)  # built, not loaded: a damaged file is never mapped here
    except OSError:
        pytest.skip("no C compiler here")
    assert native.verified(path)
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[:size // 3])  # a build cut short / a damaged cache
    assert not native.verified(path)
    with pytest.warns(RuntimeWarning, match="does not match its build digest"):
        lib = native.load("hashed", {"kernel_isa": []}, isa=isa)
    assert isinstance(lib, ctypes.CDLL) and native.verified(path) and path.stat().st_size == size


def test_a_library_without_its_digest_is_not_trusted(tmp_path):
    library = tmp_path / "x.so"
    library.write_bytes(b"\x7fELF not really")
    assert not native.verified(library)
