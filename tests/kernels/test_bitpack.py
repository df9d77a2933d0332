"""Bit-packed XNOR-popcount kernels == pure PyTorch references (exact integers, float tolerance after scaling), on
every ISA path of the C kernels the host can run and on the numpy fallback."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cnncompress.kernels import bitpack as bp
from cnncompress.kernels.native import ISAS


@pytest.fixture(params=[*ISAS, "numpy"])
def backend(request, monkeypatch, force_isa):
    """Run each test with the compiled C kernel forced to each ISA path (skipped where the host CPU lacks it) and
    with the numpy fallback."""
    if request.param == "numpy":
        monkeypatch.setattr(bp, "native", lambda: None)
    else:
        force_isa(request.param)
    return request.param


@pytest.mark.parametrize("rows,k", [(1, 1), (3, 63), (2, 64), (5, 65), (4, 200), (2, 1000)])
def test_pack_rows_round_trip_and_tail_bits(backend, rows, k):
    x = torch.randn(rows, k)
    x[0, 0] = 0.0  # sign(0) = +1
    words = bp.pack_rows(x)
    assert words.shape == (rows, bp.n_words(k)) and words.dtype == torch.int64
    assert torch.equal(bp.unpack_rows(words, k), bp.sign(x))
    tail = bp.unpack_rows(words, bp.n_words(k) * 64)[:, k:]
    assert torch.all(tail == -1)  # tail bits are 0 (decode to -1), identical in both operands


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (3, 5, 63), (4, 4, 64), (7, 9, 130), (8, 12, 577), (1, 33, 4096)])
def test_xnor_gemm_exact(backend, m, n, k):
    a, b = torch.randn(m, k), torch.randn(n, k)
    fast = bp.xnor_gemm(bp.pack_rows(a), bp.pack_rows(b), k)
    assert torch.equal(fast, bp.sign(b) @ bp.sign(a).T)  # integers: exact


def test_xnor_gemm_epilogue(backend):
    m, n, k = 9, 6, 150
    a, b = torch.randn(m, k), torch.randn(n, k)
    corr = torch.randint(-5, 5, (n, m), dtype=torch.int32)
    alpha, kscale, bias = torch.rand(n), torch.rand(m), torch.randn(n)
    fast = bp.xnor_gemm(bp.pack_rows(a), bp.pack_rows(b), k, corr=corr, alpha=alpha, kscale=kscale, bias=bias)
    ref = (bp.sign(b) @ bp.sign(a).T - corr) * alpha[:, None] * kscale[None, :] + bias[:, None]
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)


SHAPES = [  # n, c, h, w, out, k, stride, pad
    (2, 5, 7, 6, 3, 3, 1, 1), (1, 64, 9, 9, 8, 3, 1, 1), (1, 70, 9, 11, 9, 3, 2, 1), (1, 130, 8, 8, 13, 1, 1, 0),
    (2, 24, 7, 7, 16, 5, 1, 1), (1, 3, 12, 10, 5, 4, 3, 2),
]


@pytest.mark.parametrize("n,c,h,w,o,k,s,p", SHAPES)
def test_xnor_conv2d_matches_reference(backend, n, c, h, w, o, k, s, p):
    torch.manual_seed(n * 1000 + c)
    x, weight = torch.randn(n, c, h, w), torch.randn(o, c, k, k)
    words = bp.pack_conv_weight(weight)
    assert torch.equal(bp.unpack_conv_weight(words, weight.shape), bp.sign(weight))
    corr = bp.padding_correction(bp.sign(weight), (h, w), (s, s), (p, p))
    # raw integer result: exactly conv2d(sign(x), sign(W)) with zero padding
    raw = bp.xnor_conv2d(x, words, c, (k, k), (s, s), (p, p), torch.ones(o), None, False, corr)
    assert torch.equal(raw, F.conv2d(bp.sign(x), bp.sign(weight), stride=s, padding=p))
    alpha, bias = torch.rand(o), torch.randn(o)
    fast = bp.xnor_conv2d(x, words, c, (k, k), (s, s), (p, p), alpha, bias, True, corr)
    ref = bp.reference_xnor_conv2d(x, weight, (s, s), (p, p), alpha, bias, True)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n,k,o", [(1, 1, 1), (3, 100, 7), (4, 128, 16), (2, 577, 9)])
def test_xnor_linear_matches_reference(backend, n, k, o):
    x, weight, alpha, bias = torch.randn(n, k), torch.randn(o, k), torch.rand(o), torch.randn(o)
    fast = bp.xnor_linear(x, bp.pack_rows(weight), k, alpha, bias, True)
    torch.testing.assert_close(fast, bp.reference_xnor_linear(x, weight, alpha, bias, True), rtol=1e-5, atol=1e-5)


def test_threads_give_same_result(isa):
    for m, n, k in ((37, 21, 300), (300, 41, 640)):  # the second is large enough to be split across threads
        xa, xb = torch.randn(m, k), torch.randn(n, k)
        a, b = bp.pack_rows(xa), bp.pack_rows(xb)
        previous = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            one = bp.xnor_gemm(a, b, k)
            torch.set_num_threads(2)
            two = bp.xnor_gemm(a, b, k)
            torch.set_num_threads(3)
            three = bp.xnor_gemm(a, b, k)
        finally:
            torch.set_num_threads(previous)
        assert torch.equal(one, two) and torch.equal(one, three)
        signs_a, signs_b = torch.where(xa >= 0, 1.0, -1.0), torch.where(xb >= 0, 1.0, -1.0)
        assert torch.equal(one, signs_b @ signs_a.T)  # out[n, m] = sign(b_n) . sign(a_m)


@pytest.mark.parametrize("shape,k,s,ceil", [((2, 7, 10, 11), 3, 2, True), ((1, 5, 9, 9), 3, 3, True),
                                            ((1, 4, 8, 7), 2, 2, False), ((1, 3, 37, 37), 3, 3, True)])
def test_max_pool_matches_torch(backend, shape, k, s, ceil):
    x = torch.randn(*shape)
    assert torch.equal(bp.max_pool2d(x, k, s, ceil), F.max_pool2d(x, k, s, ceil_mode=ceil))


@pytest.mark.parametrize("size,alpha,beta,k", [(5, 5e-4, 0.75, 2.0), (4, 1e-2, 0.6, 1.0), (1, 1e-3, 0.75, 1.0)])
def test_local_response_norm_matches_torch(backend, size, alpha, beta, k):
    x = torch.randn(2, 9, 6, 7) * 3
    torch.testing.assert_close(bp.local_response_norm(x, size, alpha, beta, k),
                               F.local_response_norm(x, size, alpha, beta, k), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size,kernel,stride,padding", [((13, 11), (3, 3), (1, 1), (1, 1)), ((36, 36), (5, 5), (1, 1), (1, 1)),
                                                        ((20, 17), (7, 7), (2, 2), (0, 0)), ((9, 9), (3, 2), (2, 1), (2, 0))])
def test_box_mean_matches_conv_reference(size, kernel, stride, padding):
    torch.manual_seed(0)
    plane = torch.rand(*size) * 3
    box = torch.full((1, 1, *kernel), 1.0 / (kernel[0] * kernel[1]))
    expected = F.conv2d(plane[None, None], box, stride=stride, padding=padding).reshape(-1)
    assert torch.allclose(bp.box_mean(plane, kernel, stride, padding), expected, atol=1e-5)


@pytest.mark.parametrize("threads", [2, 3])
def test_float_helpers_split_across_threads_match_torch(isa, threads):
    torch.manual_seed(0)
    x = torch.randn(2, 96, 37, 41) * 4  # large enough to be split into pixel / plane shares
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        lrn = bp.local_response_norm(x, 5, 1e-2, 0.75, 2.0)
        pooled = bp.max_pool2d(x, 3, 3, True)
    finally:
        torch.set_num_threads(previous)
    torch.testing.assert_close(lrn, F.local_response_norm(x, 5, 1e-2, 0.75, 2.0), rtol=1e-5, atol=1e-6)
    assert torch.equal(pooled, F.max_pool2d(x, 3, 3, ceil_mode=True))
