"""Fixtures of the kernel tests: run a test on every ISA path of the C kernels this host can run.

``force_isa(name)`` (``use_isa``) forces a path the way a user does (``CNNCOMPRESS_ISA``), clears the loader's caches
and checks that the path that then runs is the one asked for; a path the host CPU lacks is skipped with the
reason (``native.isa_missing``). The fast == reference comparisons of the test modules take ``isa`` (or a
``backend`` made of these paths plus the numpy / torch fallback), so each comparison runs on each path.
"""
from __future__ import annotations

import pytest

from cnncompress import hardware
from cnncompress.kernels import binary_graph, bitpack, hashed, native

ISAS = native.ISAS  # scalar, avx2, avx512, neon
EXPECTED_PATHS = {"scalar": ("c-scalar",), "avx2": ("c-avx2",), "avx512": ("c-avx512-vpopcnt", "c-avx512"),
                  "neon": ("c-neon",)}


def clear_kernel_caches() -> None:
    native.check_isa.cache_clear()
    for module in (bitpack, binary_graph, hashed):
        module._library.cache_clear()


def use_isa(isa: str, monkeypatch) -> str:
    """Force ``isa`` for the rest of the test (skipped where the host lacks it or has no compiler)."""
    lacking = native.isa_missing(isa)
    if lacking:
        pytest.skip(f"CNNCOMPRESS_ISA={isa}: the host CPU ({hardware.cpu_name()}) {lacking}")
    monkeypatch.setenv(native.ISA_ENV, isa)
    clear_kernel_caches()
    if bitpack.native() is None:
        pytest.skip("no C compiler: native kernels unavailable")
    assert bitpack.kernel_path() in EXPECTED_PATHS[isa], (isa, bitpack.kernel_path())
    return isa


@pytest.fixture
def force_isa(monkeypatch):
    """``force_isa(name)``: ``use_isa`` for this test (the caches are cleared again afterwards)."""
    yield lambda name: use_isa(name, monkeypatch)
    clear_kernel_caches()


@pytest.fixture(params=ISAS)
def isa(request, force_isa):
    """Each ISA path the host can run, forced by ``CNNCOMPRESS_ISA``."""
    return force_isa(request.param)
