"""Every fast kernel of ``kernels/bitpack`` against its pure twin in ``kernels/bitpack_reference`` (and the twins
against torch's own ops), with the C library on every ISA path the host can run and with the fallback, at several
thread counts; the C loader."""
from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
import torch.nn.functional as F

from cnncompress.kernels import bitpack as bp
from cnncompress.kernels import bitpack_reference as ref
from cnncompress.kernels import native
from cnncompress.kernels.native import ISAS


@pytest.fixture(params=[*ISAS, "fallback"])
def backend(request, monkeypatch, force_isa):
    """Run each test with the compiled C kernel forced to each ISA path the host can run (``CNNCOMPRESS_ISA``;
    a path the CPU lacks is skipped with the reason) and with the fallback (numpy / torch)."""
    if request.param == "fallback":
        monkeypatch.setattr(bp, "native", lambda: None)
    else:
        force_isa(request.param)
    return request.param


@contextlib.contextmanager
def _threads(count: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ---------------------------------------------------------------- max-pool
POOLS = [  # (N, C, H, W), kernel, stride, ceil_mode: odd and even sizes, partial last windows in ceil mode
    ((1, 1, 5, 5), 2, 2, True), ((2, 3, 6, 7), 3, 2, True), ((1, 4, 8, 8), 2, 2, False), ((2, 5, 9, 10), 3, 3, True),
    ((1, 2, 7, 6), 3, 1, False), ((1, 3, 13, 11), 4, 3, True), ((3, 1, 4, 4), 4, 4, False),
]


@pytest.mark.parametrize("shape,k,s,ceil", POOLS)
def test_reference_max_pool_is_torchs(shape, k, s, ceil):
    torch.manual_seed(sum(shape))
    x = torch.randn(*shape)
    assert torch.equal(ref.reference_max_pool2d(x, k, s, ceil), F.max_pool2d(x, k, s, ceil_mode=ceil))


@pytest.mark.parametrize("shape,k,s,ceil", POOLS)
def test_max_pool_kernel_matches_reference(backend, shape, k, s, ceil):
    torch.manual_seed(sum(shape) + 1)
    x = torch.randn(*shape)
    assert torch.equal(bp.max_pool2d(x, k, s, ceil), ref.reference_max_pool2d(x, k, s, ceil))


@pytest.mark.parametrize("size,k,s", [(1, 1, 1), (2, 2, 2), (3, 2, 2), (7, 3, 2), (8, 3, 2), (37, 3, 3), (10, 4, 3)])
def test_pool_size_ceil_and_floor(size, k, s):
    for ceil in (False, True):
        expected = F.max_pool2d(torch.zeros(1, 1, size, size), k, s, ceil_mode=ceil).shape[-1]
        assert ref.pool_size(size, k, s, ceil) == expected


# ---------------------------------------------------------------- LRN
LRNS = [(5, 1e-4, 0.75, 1.0), (5, 5e-4, 0.75, 2.0), (4, 1e-2, 0.6, 1.0), (3, 2e-2, 0.75, 2.0), (1, 1e-3, 0.75, 1.0),
        (6, 1e-2, 1.0, 0.5)]  # odd/even window sizes; beta 0.75 takes the C loop's sqrt path, others powf


@pytest.mark.parametrize("size,alpha,beta,k", LRNS)
def test_reference_lrn_is_torchs(size, alpha, beta, k):
    x = torch.randn(2, 9, 6, 7) * 3
    torch.testing.assert_close(ref.reference_local_response_norm(x, size, alpha, beta, k),
                               F.local_response_norm(x, size, alpha, beta, k), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 8, 5, 6), (1, 7, 9, 9), (2, 3, 4, 11), (1, 16, 2, 3)])
@pytest.mark.parametrize("size,alpha,beta,k", LRNS)
def test_lrn_kernel_matches_reference(backend, shape, size, alpha, beta, k):
    torch.manual_seed(sum(shape) + size)
    x = torch.randn(*shape) * 4
    torch.testing.assert_close(bp.local_response_norm(x, size, alpha, beta, k),
                               ref.reference_local_response_norm(x, size, alpha, beta, k), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("threads", [1, 2, 3, 4])
def test_float_kernels_match_references_across_threads(isa, threads):
    torch.manual_seed(threads)
    for shape in ((1, 64, 33, 35), (2, 48, 30, 32)):  # >= 2**16 elements: split into pixel / plane shares
        x = torch.randn(*shape) * 3
        with _threads(threads):
            lrn = bp.local_response_norm(x, 5, 1e-2, 0.75, 2.0)
            odd = bp.local_response_norm(x, 4, 1e-2, 0.6, 1.0)
            pooled = bp.max_pool2d(x, 3, 2, True)
            floor = bp.max_pool2d(x, 2, 2, False)
        torch.testing.assert_close(lrn, ref.reference_local_response_norm(x, 5, 1e-2, 0.75, 2.0), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(odd, ref.reference_local_response_norm(x, 4, 1e-2, 0.6, 1.0), rtol=1e-5, atol=1e-6)
        assert torch.equal(pooled, ref.reference_max_pool2d(x, 3, 2, True))
        assert torch.equal(floor, ref.reference_max_pool2d(x, 2, 2, False))


# ---------------------------------------------------------------- packing, GEMM, box mean
@pytest.mark.parametrize("rows,k", [(1, 1), (3, 63), (2, 64), (5, 65), (4, 200), (2, 1000)])
def test_pack_rows_matches_reference(backend, rows, k):
    x = torch.randn(rows, k)
    x[0, -1] = 0.0  # sign(0) = +1
    assert torch.equal(bp.pack_rows(x), ref.reference_pack_rows(x))


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (5, 7, 63), (8, 8, 64), (9, 13, 130), (300, 41, 640)])
def test_xnor_gemm_matches_reference(backend, threads, m, n, k):
    torch.manual_seed(m + n + k)
    a, b = torch.randn(m, k), torch.randn(n, k)
    corr = torch.randint(-5, 5, (n, m), dtype=torch.int32)
    alpha, kscale, bias = torch.rand(n), torch.rand(m), torch.randn(n)
    with _threads(threads):
        raw = bp.xnor_gemm(bp.pack_rows(a), bp.pack_rows(b), k)
        fast = bp.xnor_gemm(bp.pack_rows(a), bp.pack_rows(b), k, corr=corr, alpha=alpha, kscale=kscale, bias=bias)
    assert torch.equal(raw, ref.reference_xnor_gemm(a, b))  # integers: exact
    torch.testing.assert_close(fast, ref.reference_xnor_gemm(a, b, corr=corr, alpha=alpha, kscale=kscale, bias=bias),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size,kernel,stride,padding", [((13, 11), (3, 3), (1, 1), (1, 1)),
                                                        ((8, 8), (2, 2), (2, 2), (0, 0)),
                                                        ((9, 9), (3, 2), (2, 1), (2, 0))])
def test_box_mean_matches_reference(size, kernel, stride, padding):
    plane = torch.rand(*size) * 3
    torch.testing.assert_close(bp.box_mean(plane, kernel, stride, padding),
                               ref.reference_box_mean(plane, kernel, stride, padding), rtol=1e-5, atol=1e-5)


def test_references_are_reexported_beside_the_fast_kernels():
    for name in ("sign", "reference_pack_rows", "reference_xnor_gemm", "reference_box_mean", "reference_xnor_conv2d",
                 "reference_xnor_linear", "reference_max_pool2d", "reference_local_response_norm"):
        assert getattr(bp, name) is getattr(ref, name)


# ---------------------------------------------------------------- the C loader
def test_c_source_ships_with_the_package():
    text = native.source("bitpack")
    for function in bp.ARGTYPES:
        assert f" {function}(" in text


def test_kernel_path_is_recorded(monkeypatch):
    monkeypatch.delenv(native.ISA_ENV, raising=False)
    assert bp.kernel_path() in ("c-avx512-vpopcnt", "c-avx512", "c-avx2", "c-neon", "c-scalar", "numpy")
    monkeypatch.setattr(bp, "native", lambda: None)
    assert bp.kernel_path() == "numpy"


def test_loader_falls_back_with_one_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNCOMPRESS_CACHE", str(tmp_path))
    with pytest.warns(RuntimeWarning, match="bitpack.c unavailable"):
        assert native.load("bitpack", bp.ARGTYPES, flags=("-shared", "--no-such-gcc-flag")) is None
    monkeypatch.setenv("CNNCOMPRESS_NO_NATIVE", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.load("bitpack", bp.ARGTYPES) is None  # switched off: silently the fallback
