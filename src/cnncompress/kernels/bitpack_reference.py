"""Pure reference twins of the bit-packed XNOR kernels and of the float helpers of the XNOR inference graph.

Each function here is the readable numpy/torch statement of what a fast kernel in ``kernels/bitpack.py``
(C loops in ``kernels/bitpack.c``, or its numpy fallback) computes; the formula is in its docstring, and the tests
(``tests/kernels``) compare fast against reference. Nothing here is used at inference time.

    fast (bitpack.py)        reference (here)
    pack_rows                reference_pack_rows
    xnor_gemm                reference_xnor_gemm
    box_mean                 reference_box_mean
    xnor_conv2d              reference_xnor_conv2d
    xnor_linear              reference_xnor_linear
    max_pool2d               reference_max_pool2d
    local_response_norm      reference_local_response_norm
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

WORD = 64


def n_words(bits: int) -> int:
    """64-bit words needed for ``bits`` bits."""
    return (bits + WORD - 1) // WORD


def sign(x: torch.Tensor) -> torch.Tensor:
    """±1 with sign(0) = +1 (the bit encoding)."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def pool_size(size: int, kernel: int, stride: int, ceil_mode: bool) -> int:
    """Output size of an unpadded max-pool (Caffe/torch ceil-mode rule: a last, partial window is kept only if
    it starts inside the input)."""
    out = -(-(size - kernel) // stride) + 1 if ceil_mode else (size - kernel) // stride + 1
    return out - 1 if ceil_mode and (out - 1) * stride >= size else out


def reference_pack_rows(x: torch.Tensor) -> torch.Tensor:
    """(R, K) float -> (R, ceil(K/64)) int64 words:

        word[r, w] = sum_{b < 64} [x[r, 64 w + b] >= 0] * 2**b       (uint64 arithmetic, stored as int64)

    where the bits past K (the tail of the last word) are 0."""
    rows, k = x.shape
    bits = np.zeros((rows, n_words(k) * WORD), dtype=np.uint64)
    bits[:, :k] = x.detach().float().numpy() >= 0
    powers = np.uint64(1) << np.arange(WORD, dtype=np.uint64)
    words = (bits.reshape(rows, -1, WORD) * powers).sum(-1, dtype=np.uint64)  # distinct bits: no carries
    return torch.from_numpy(words.view(np.int64))


def reference_xnor_gemm(a: torch.Tensor, b: torch.Tensor, *, corr: torch.Tensor | None = None,
                        alpha: torch.Tensor | None = None, kscale: torch.Tensor | None = None,
                        bias: torch.Tensor | None = None) -> torch.Tensor:
    """The binary GEMM on the float rows it packs: ``a`` (M, K), ``b`` (N, K) -> (N, M),

        out[n, m] = (sign(b[n]) . sign(a[m]) - corr[n, m]) * alpha[n] * kscale[m] + bias[n]

    (absent terms drop out). On words, ``sign(b[n]) . sign(a[m]) = K - 2 popcount(A[m] xor B[n])``."""
    out = sign(b.float()) @ sign(a.float()).T
    if corr is not None:
        out = out - corr.float()
    if alpha is not None:
        out = out * alpha.float()[:, None]
    if kscale is not None:
        out = out * kscale.float()[None, :]
    return out if bias is None else out + bias.float()[:, None]


def reference_box_mean(plane: torch.Tensor, kernel: tuple[int, int], stride, padding) -> torch.Tensor:
    """K of XNOR-Net (eq. 11) for one (H, W) plane, flattened (OH*OW):

        K[p] = 1/(kh kw) * sum over the kh x kw window of output pixel p of plane (zero padding counted)."""
    box = torch.full((1, 1, *kernel), 1.0 / (kernel[0] * kernel[1]), dtype=plane.dtype)
    return F.conv2d(plane[None, None], box, stride=stride, padding=padding).reshape(-1)


def reference_xnor_conv2d(x, weight, stride, padding, alpha, bias, input_scale: bool) -> torch.Tensor:
    """conv2d(sign(x), sign(W)) * alpha[o] * K + bias, K = box_kxk(mean_c |x|) (XNOR-Net eq. 11)."""
    out = F.conv2d(sign(x), sign(weight), stride=stride, padding=padding) * alpha.view(1, -1, 1, 1)
    if input_scale:
        kh, kw = weight.shape[-2:]
        box = torch.full((1, 1, kh, kw), 1.0 / (kh * kw), dtype=x.dtype)
        out = out * F.conv2d(x.abs().mean(1, keepdim=True), box, stride=stride, padding=padding)
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def reference_xnor_linear(x, weight, alpha, bias, input_scale: bool) -> torch.Tensor:
    """(sign(x) . sign(W)^T) * alpha[o] * mean|x[m]| + bias[o] (the mean only when ``input_scale``)."""
    out = F.linear(sign(x), sign(weight)) * alpha
    if input_scale:
        out = out * x.abs().mean(1, keepdim=True)
    return out if bias is None else out + bias


def reference_max_pool2d(x: torch.Tensor, kernel: int, stride: int, ceil_mode: bool) -> torch.Tensor:
    """Unpadded max-pool over the last two dims (x: (..., H, W)), one output pixel at a time:

        out[..., i, j] = max_{i s <= y < min(i s + k, H),  j s <= v < min(j s + k, W)} x[..., y, v]

    with (OH, OW) from ``pool_size`` (ceil mode keeps a last window cut at the border)."""
    h, w = x.shape[-2:]
    oh, ow = pool_size(h, kernel, stride, ceil_mode), pool_size(w, kernel, stride, ceil_mode)
    out = x.new_empty(*x.shape[:-2], oh, ow)
    for i in range(oh):
        for j in range(ow):
            window = x[..., i * stride:i * stride + kernel, j * stride:j * stride + kernel]  # slicing cuts at H, W
            out[..., i, j] = window.amax(dim=(-2, -1))
    return out


def reference_local_response_norm(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """Local response normalisation across channels (Krizhevsky et al. 2012, torch's scaling of alpha by size):

        b[n, c] = a[n, c] * (k + alpha / size * sum_{c' = c - size//2}^{c + (size-1)//2} a[n, c']^2) ** -beta

    channels outside [0, C) counting as 0; x is (N, C, ...). Computed in float64, returned in x's dtype."""
    a = x.detach().double()
    squares = a.pow(2).movedim(1, -1)
    squares = F.pad(squares, (size // 2, (size - 1) // 2)).movedim(-1, 1)  # zero channels on both sides
    window = squares.unfold(1, size, 1).sum(-1)  # (N, C, ...): the sum over each channel's window
    return (a * (k + alpha / size * window).pow(-beta)).to(x.dtype)
