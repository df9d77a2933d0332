"""Bit-packed XNOR-popcount kernels for binary layers (XNOR-Net, Rastegari et al. 2016): the fast paths.

Encoding: a value v becomes the bit ``v >= 0`` (so sign(0) = +1), 64 of them per little-endian uint64 word
(stored in int64 tensors). For two ±1 vectors a, b of n elements packed into words A, B (tail bits zero in both):

    a . b = n - 2 * popcount(A xor B)

Convolutions are bit-im2col + this binary GEMM. Activations are packed channels-last: word ``(y, x, c // 64)``
holds channels ``c .. c+63`` of pixel (y, x); weights ``(o, ky, kx, c // 64)`` alike, so one patch row is
``kw * Cw`` contiguous words. Zero padding cannot be written as ±1: padded pixels are packed as +1 and the
exact correction ``corr[o, p] = sum over padded taps of sign(W)`` (one float conv of the padding mask,
cached per input size) is subtracted, so the fast path equals ``conv2d(sign(x), sign(W), padding=p)``.

Fast path: the C kernels of ``kernels/bitpack.c`` (AVX-512 VPOPCNTDQ, AVX2 vpshufb-LUT popcount, NEON vcnt or
scalar POPCNT, whichever the CPU has; ``CNNCOMPRESS_ISA=scalar|avx2|avx512|neon`` forces one, see
``kernels/native.py``), compiled at first use and loaded with ctypes by ``kernels/native.py`` (``-O3
-march=native``, one build per CPU kind and forced path, cached in ``$CNNCOMPRESS_CACHE``). Without a compiler a
numpy fallback (``numpy.bitwise_count`` on 64-bit words) runs, with one warning; ``kernel_path()`` says which path
runs. The GEMM is split over output
filters across ``torch.get_num_threads()`` Python threads (ctypes releases the GIL; no OpenMP, whose spinning
workers fought torch's own pool on 2 cores and cost ~30 ms per layer). The pure twins (``reference_*``, the
formulas) live in ``kernels/bitpack_reference.py`` and are re-exported here; the tests compare them.
"""
from __future__ import annotations

import ctypes
import functools

import numpy as np
import torch
import torch.nn.functional as F

from cnncompress.kernels import native as _native
from cnncompress.kernels.bitpack_reference import (  # noqa: F401  (the references are re-exported beside their fast twins)
    WORD, n_words, pool_size, reference_box_mean, reference_local_response_norm, reference_max_pool2d,
    reference_pack_rows, reference_xnor_conv2d, reference_xnor_gemm, reference_xnor_linear, sign)

_P, _I, _L, _F = ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_float
ARGTYPES = {  # the C signatures of kernels/bitpack.c
    "pack_chw": [_P, _I, _I, _I, _I, _I, _I, _P, _P],
    "pack_rows": [_P, _I, _I, _I, _P],
    "im2col_bits": [_P, _I, _I, _I, _I, _I, _I, _I, _I, _I, _P],
    "xnor_gemm": [_P, _I, _P, _I, _I, _I, _P, _P, _P, _P, _P, _L, _L],
    "maxpool_f32": [_P, _I, _I, _I, _I, _I, _I, _I, _P],
    "lrn_f32": [_P, _I, _I, _L, _I, _F, _F, _F, _P, _P],
    "lrn_apply_075": [_P, _P, _I, _F, _F, _P],
    "kernel_isa": [],
}


def native() -> ctypes.CDLL | None:
    """The compiled ``bitpack.c`` for the path ``$CNNCOMPRESS_ISA`` asks for (the native best when unset), or None
    (with one warning) when it cannot be built; ``native.IsaError`` when that path cannot run here."""
    return _library(_native.requested_isa())


@functools.lru_cache(maxsize=None)
def _library(isa: str | None) -> ctypes.CDLL | None:
    return _native.load("bitpack", ARGTYPES, isa=isa)


def kernel_path() -> str:
    """Which binary kernel runs in this process: ``"c-avx512-vpopcnt"``, ``"c-avx512"`` (AVX-512 without VPOPCNTDQ:
    the AVX2 popcount GEMM), ``"c-avx2"``, ``"c-neon"``, ``"c-scalar"`` (plain C POPCNT) or ``"numpy"`` (no compiler,
    or ``CNNCOMPRESS_NO_NATIVE=1``)."""
    return _native.kernel_path(native(), "numpy")


def _ptr(tensor: torch.Tensor | None):
    return None if tensor is None else ctypes.c_void_p(tensor.data_ptr())


def _threads() -> int:
    return max(1, torch.get_num_threads())


_split = _native.split_range  # contiguous shares of a range over Python threads (kernels/native.py)


# ---------------------------------------------------------------- packing
def pack_rows(x: torch.Tensor) -> torch.Tensor:
    """(R, K) float -> (R, ceil(K/64)) int64 words, bit k of word w = ``x[r, 64w + k] >= 0``; tail bits 0."""
    x = x.detach().float().contiguous()
    rows, k = x.shape
    lib = native()
    if lib is None:
        return _np_pack_rows(x)
    out = torch.empty(rows, n_words(k), dtype=torch.int64)
    lib.pack_rows(_ptr(x), rows, k, n_words(k), _ptr(out))
    return out


def _np_pack_rows(x: torch.Tensor) -> torch.Tensor:
    rows, k = x.shape
    bits = np.zeros((rows, n_words(k) * WORD), dtype=bool)
    bits[:, :k] = x.numpy() >= 0
    packed = np.packbits(bits, axis=1, bitorder="little")
    return torch.from_numpy(packed.view("<u8").view(np.int64).copy())


def unpack_rows(words: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of ``pack_rows``: (R, Kw) int64 -> (R, k) float ±1."""
    raw = np.ascontiguousarray(words.numpy()).view(np.uint8)
    bits = np.unpackbits(raw, axis=1, bitorder="little")[:, :k]
    return torch.from_numpy(bits.astype(np.float32) * 2.0 - 1.0)


def pack_conv_weight(weight: torch.Tensor) -> torch.Tensor:
    """(O, C, kh, kw) float -> (O, kh*kw*Cw) words in the (ky, kx, c) patch order of ``pack_image``."""
    o, c, kh, kw = weight.shape
    cw = n_words(c)
    padded = torch.full((o, kh, kw, cw * WORD), -1.0)
    padded[..., :c] = weight.detach().float().permute(0, 2, 3, 1)
    words = pack_rows(padded.reshape(-1, cw * WORD))  # -1 tails pack to 0 bits
    return words.reshape(o, kh * kw * cw)


def unpack_conv_weight(words: torch.Tensor, shape: tuple[int, int, int, int]) -> torch.Tensor:
    o, c, kh, kw = shape
    cw = n_words(c)
    signs = unpack_rows(words.reshape(o * kh * kw, cw), cw * WORD)[:, :c]
    return signs.reshape(o, kh, kw, c).permute(0, 3, 1, 2).contiguous()


def pack_image(x: torch.Tensor, padding: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """One (C, H, W) image -> ((H+2ph, W+2pw, Cw) words, (H, W) mean |x| over channels). Padding packs as +1."""
    x = x.detach().float().contiguous()
    c, h, w = x.shape
    ph, pw = padding
    cw = n_words(c)
    lib = native()
    if lib is None:
        signs = torch.nn.functional.pad(torch.where(x >= 0, 1.0, -1.0), (pw, pw, ph, ph), value=1.0)
        rows = torch.full((signs.shape[1] * signs.shape[2], cw * WORD), -1.0)
        rows[:, :c] = signs.permute(1, 2, 0).reshape(-1, c)
        return _np_pack_rows(rows).reshape(h + 2 * ph, w + 2 * pw, cw), x.abs().mean(0)
    out = torch.empty(h + 2 * ph, w + 2 * pw, cw, dtype=torch.int64)
    absmean = torch.empty(h, w)
    lib.pack_chw(_ptr(x), c, h, w, ph, pw, cw, _ptr(out), _ptr(absmean))
    return out, absmean


def im2col_bits(xp: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """(Hp, Wp, Cw) packed image -> (OH*OW, kh*kw*Cw) packed patches."""
    hp, wp, cw = xp.shape
    (kh, kw), (sh, sw) = kernel, stride
    oh, ow = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    lib = native()
    if lib is None:
        patches = xp.unfold(0, kh, sh).unfold(1, kw, sw)  # (OH, OW, Cw, kh, kw)
        return patches.permute(0, 1, 3, 4, 2).reshape(oh * ow, kh * kw * cw).contiguous()
    cols = torch.empty(oh * ow, kh * kw * cw, dtype=torch.int64)
    lib.im2col_bits(_ptr(xp), hp, wp, cw, kh, kw, sh, sw, oh, ow, _ptr(cols))
    return cols


# ---------------------------------------------------------------- binary GEMM
def xnor_gemm(a: torch.Tensor, b: torch.Tensor, nbits: int, *, corr: torch.Tensor | None = None,
              alpha: torch.Tensor | None = None, kscale: torch.Tensor | None = None,
              bias: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Binary GEMM with fused epilogue, returns (N, M) float (or writes ``out`` of that shape, any strides):

        out[n, m] = ((nbits - 2 popcount(a[m] xor b[n])) - corr[n, m]) * alpha[n] * kscale[m] + bias[n]

    ``a`` (M, K) and ``b`` (N, K) are int64 words; ``nbits`` is the number of real (non-tail) bits.
    """
    m, k = a.shape
    n = b.shape[0]
    if out is None:
        out = torch.empty(n, m)
    args = [t.contiguous() if t is not None else None for t in (corr, alpha, kscale, bias)]
    corr, alpha, kscale, bias = [t.to(torch.int32) if i == 0 and t is not None else
                                 (t.float() if t is not None else None) for i, t in enumerate(args)]
    lib = native()
    if lib is None:
        return _np_gemm(a, b, nbits, corr, alpha, kscale, bias, out)
    a, b = a.contiguous(), b.contiguous()

    def run(n0: int, n1: int) -> None:
        def part(t):
            return None if t is None else t[n0:n1]
        lib.xnor_gemm(_ptr(a), m, _ptr(b[n0:n1]), n1 - n0, k, nbits, _ptr(part(corr)), _ptr(part(alpha)), _ptr(kscale),
                      _ptr(part(bias)), _ptr(out[n0:n1]), out.stride(0), out.stride(1))

    threads = _threads() if m * n * k >= 1 << 16 and n >= 8 else 1
    _split(run, n, threads, multiple=4)  # whole 4-filter tiles per thread
    return out


def _np_gemm(a, b, nbits, corr, alpha, kscale, bias, out):
    an, bn = a.numpy().view(np.uint64), b.numpy().view(np.uint64)
    pops = np.empty((bn.shape[0], an.shape[0]), dtype=np.int64)
    step = max(1, (1 << 22) // max(1, an.size))
    for start in range(0, bn.shape[0], step):
        chunk = bn[start:start + step]
        pops[start:start + step] = np.bitwise_count(chunk[:, None, :] ^ an[None, :, :]).sum(-1, dtype=np.int64)
    value = torch.from_numpy(nbits - 2 * pops).float()
    if corr is not None:
        value -= corr.float()
    if alpha is not None:
        value *= alpha[:, None]
    if kscale is not None:
        value *= kscale[None, :]
    if bias is not None:
        value += bias[:, None]
    out.copy_(value)
    return out


# ---------------------------------------------------------------- layers' fast forwards
def padding_correction(signs: torch.Tensor, size: tuple[int, int], stride, padding) -> torch.Tensor | None:
    """(O, OH*OW) int32: sum of sign(W) over the padded taps of each output pixel (None when no padding)."""
    if not any(padding):
        return None
    h, w = size
    mask = torch.nn.functional.pad(torch.zeros(1, signs.shape[1], h, w), (padding[1],) * 2 + (padding[0],) * 2,
                                   value=1.0)
    corr = F.conv2d(mask, signs, stride=stride)[0]
    return corr.round().to(torch.int32).reshape(signs.shape[0], -1)


def box_mean(plane: torch.Tensor, kernel: tuple[int, int], stride, padding) -> torch.Tensor:
    """K of XNOR-Net: the mean of ``plane`` (H, W) over each kernel window, zero padding counted; flattened
    (OH*OW). Same as ``reference_box_mean`` (a conv with a 1/(kh*kw) box; the tests compare them),
    but by an integral image in numpy: a torch op here opens an OpenMP region whose spinning workers then
    compete with the binary GEMM's threads (2 threads: conv2 of VGG-S 3.0 vs 1.8 ms)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    padded = np.pad(plane.numpy().astype(np.float64), ((ph, ph), (pw, pw)))
    integral = np.zeros((padded.shape[0] + 1, padded.shape[1] + 1))
    integral[1:, 1:] = padded.cumsum(0).cumsum(1)
    oh, ow = (padded.shape[0] - kh) // sh + 1, (padded.shape[1] - kw) // sw + 1
    top, left = np.arange(oh)[:, None] * sh, np.arange(ow)[None, :] * sw
    sums = (integral[top + kh, left + kw] - integral[top, left + kw] - integral[top + kh, left] + integral[top, left])
    return torch.from_numpy((sums / (kh * kw)).astype(np.float32).reshape(-1))


def xnor_conv2d(x: torch.Tensor, wbits: torch.Tensor, in_channels: int, kernel: tuple[int, int], stride, padding,
                alpha: torch.Tensor, bias: torch.Tensor | None, input_scale: bool,
                corr: torch.Tensor | None) -> torch.Tensor:
    """Fast binary conv: sign(x) * sign(W) via packed words, scaled by alpha[o] (and K[p] if ``input_scale``)."""
    n, c, h, w = x.shape
    kh, kw = kernel
    oh, ow = (h + 2 * padding[0] - kh) // stride[0] + 1, (w + 2 * padding[1] - kw) // stride[1] + 1
    out = torch.empty(n, wbits.shape[0], oh, ow)
    for i in range(n):
        xp, absmean = pack_image(x[i], padding)
        cols = im2col_bits(xp, kernel, stride)
        kscale = box_mean(absmean, kernel, stride, padding) if input_scale else None
        xnor_gemm(cols, wbits, in_channels * kh * kw, corr=corr, alpha=alpha, kscale=kscale, bias=bias,
                  out=out[i].view(wbits.shape[0], oh * ow))
    return out


def xnor_linear(x: torch.Tensor, wbits: torch.Tensor, in_features: int, alpha: torch.Tensor,
                bias: torch.Tensor | None, input_scale: bool) -> torch.Tensor:
    """Fast binary linear: out[m, n] = (sign(x[m]) . sign(W[n])) * alpha[n] * mean|x[m]| + bias[n]."""
    x = x.detach().float().reshape(x.shape[0], -1)
    kscale = x.abs().mean(1) if input_scale else None
    out = torch.empty(x.shape[0], wbits.shape[0])
    xnor_gemm(pack_rows(x), wbits, in_features, alpha=alpha, kscale=kscale, bias=bias, out=out.t())
    return out


# ---------------------------------------------------------------- float helpers of the XNOR graph
def max_pool2d(x: torch.Tensor, kernel: int, stride: int, ceil_mode: bool) -> torch.Tensor:
    """NCHW max-pool without padding (C loop; torch's ceil-mode NCHW path is slow). Reference twin:
    ``reference_max_pool2d`` (equal to ``F.max_pool2d``); the fallback without the C library is torch's."""
    lib = native()
    if lib is None:
        return F.max_pool2d(x, kernel, stride, ceil_mode=ceil_mode)
    x = x.detach().float().contiguous()
    n, c, h, w = x.shape
    oh, ow = pool_size(h, kernel, stride, ceil_mode), pool_size(w, kernel, stride, ceil_mode)
    out = torch.empty(n, c, oh, ow)
    planes_in, planes_out = x.view(n * c, h, w), out.view(n * c, oh, ow)

    def run(p0: int, p1: int) -> None:
        lib.maxpool_f32(_ptr(planes_in[p0:p1]), p1 - p0, h, w, kernel, stride, oh, ow, _ptr(planes_out[p0:p1]))
    _split(run, n * c, _threads() if x.numel() >= 1 << 16 else 1)
    return out


def local_response_norm(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """Across-channel LRN with a running window sum over channels (C loop, pixels split across threads).
    Reference twin: ``reference_local_response_norm`` (equal to ``F.local_response_norm``, the fallback)."""
    lib = native()
    if lib is None or x.dim() != 4:
        return F.local_response_norm(x, size, alpha, beta, k)
    x = x.detach().float().contiguous()
    n, c, h, w = x.shape
    out = torch.empty_like(x)
    pixels_in, pixels_out = x.view(n, c, h * w), out.view(n, c, h * w)
    threads = _threads() if x.numel() >= 1 << 16 else 1
    for i in range(n):
        def run(p0: int, p1: int, i=i) -> None:  # a slice of the pixels, all channels (the window runs over c)
            scratch = torch.empty(p1 - p0)
            lib.lrn_f32(_ptr(pixels_in[i, :, p0:]), c, p1 - p0, h * w, size, alpha, beta, k,
                        _ptr(pixels_out[i, :, p0:]), _ptr(scratch))
        _split(run, h * w, threads, multiple=16)
    return out
