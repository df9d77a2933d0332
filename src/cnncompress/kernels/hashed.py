"""Index and sign maps of HashedNets (Chen et al. 2015), as used by Rassadin & Savchenko 2017 §3.

A hashed layer with a virtual weight tensor of ``n`` elements and ``K`` real buckets ``w`` computes

    V[e] = ξ(e) · w[h(e)],    h(e) = H(seed, 0, e) mod K,    ξ(e) = +1 if H(seed, 1, e) < 2**31 else -1

where ``e`` is the element's flat row-major index in the weight tensor (for a conv weight (O, C, KH, KW):
``e = ((o·C + c)·KH + y)·KW + x``; for a linear weight (O, I): ``e = o·I + i``) and ``H`` is this 32-bit hash:

    mix32(x)  = lowbias32 (C. Wellons):  x ^= x >> 16; x = x·0x7FEB352D mod 2**32; x ^= x >> 15;
                                         x = x·0x846CA68B mod 2**32;  x ^= x >> 16
    s         = mix32((seed ^ (stream · 0x9E3779B9)) mod 2**32)
    H(seed, stream, e) = mix32(mix32(e ^ s) ^ mix32(s ^ 0x5BD1E995))

``seed`` and ``e`` are unsigned 32-bit integers (``e < 2**32``); streams 0/1 are the weight's bucket and sign,
2/3 the bias's. Everything is integer arithmetic, so the maps are identical on every platform and process.
``h`` has a modulo bias of at most K / 2**32 (negligible).

Fast path (``bucket_map``, ``sign_map``, ``slot_map``): vectorised numpy uint32 arithmetic (which wraps modulo
2**32 by definition), in place, in chunks of 4M elements (bounded temporary memory); ~30 ns per element on
one core; on the ``meta`` device it only allocates. Reference twin (``reference_hash``, ``reference_maps``):
pure Python integers, one element at a time, for tests only.

``slot_map`` folds the sign into the index: slot = h(e) + K·[ξ(e) = -1] into the table ``[w, -w]`` (2K
entries), so the virtual weight is one ``index_select`` and its gradient to ``w`` the scatter-add
``g[:K] - g[K:]`` of ``index_add`` — i.e. Σ_{e: h(e)=k} ξ(e) · ∂L/∂V[e] — with one int32 map (4 bytes per
virtual weight) instead of an int32 index plus an int8 sign.

``expand`` (the training hot path): the C kernels of ``kernels/hashed.c`` (gather; gradient = scatter-add into
the K buckets, branch-free signs, prefetched buckets, split over ``torch.get_num_threads()`` Python threads) when
they can be built, else ``reference_expand`` (one ``index_select`` of ``[w, -w]``, whose backward is torch's
``index_add_``). ``linear`` is a hashed linear layer's forward whose backward builds the bucket gradient one
output row of Gᵀx at a time (never the dense ∂L/∂V). ``ExpandBuffer`` lets a training layer write V into the same memory every step (a fresh 64 MB
tensor costs more in page faults than the gather itself) while no autograd graph still holds the last one.
"""
from __future__ import annotations

import ctypes
import functools

import numpy as np
import torch

from cnncompress.kernels import native as _native

MASK32 = 0xFFFFFFFF
M1, M2 = 0x7FEB352D, 0x846CA68B
GOLDEN = 0x9E3779B9
SALT = 0x5BD1E995
STREAM_WEIGHT_BUCKET, STREAM_WEIGHT_SIGN, STREAM_BIAS_BUCKET, STREAM_BIAS_SIGN = 0, 1, 2, 3
CHUNK = 1 << 22
MAX_ELEMENTS = 1 << 32
MAX_SLOT_BUCKETS = 1 << 30


# ----------------------------------------------------------------------------------------------- reference twin
def reference_mix32(x: int) -> int:
    """lowbias32 finaliser on a Python int (reference)."""
    x &= MASK32
    x ^= x >> 16
    x = (x * M1) & MASK32
    x ^= x >> 15
    x = (x * M2) & MASK32
    x ^= x >> 16
    return x


def reference_hash(seed: int, stream: int, key: int) -> int:
    """H(seed, stream, key) of the module docstring, in pure Python (reference twin of ``hash32``)."""
    s = reference_mix32((seed ^ (stream * GOLDEN)) & MASK32)
    return reference_mix32(reference_mix32(key ^ s) ^ reference_mix32(s ^ SALT))


def reference_maps(seed: int, n: int, buckets: int, bias: bool = False) -> tuple[list[int], list[int]]:
    """(bucket index per element, sign per element) for ``n`` elements, one Python call per element."""
    bucket_stream, sign_stream = ((STREAM_BIAS_BUCKET, STREAM_BIAS_SIGN) if bias
                                  else (STREAM_WEIGHT_BUCKET, STREAM_WEIGHT_SIGN))
    index = [reference_hash(seed, bucket_stream, e) % buckets for e in range(n)]
    sign = [1 if reference_hash(seed, sign_stream, e) < (1 << 31) else -1 for e in range(n)]
    return index, sign


# ---------------------------------------------------------------------------------------------------- fast path
def mix32(x: np.ndarray) -> np.ndarray:
    """lowbias32 on a uint32 array, in place (numpy uint32 arithmetic wraps modulo 2**32 by definition)."""
    x ^= x >> np.uint32(16)
    x *= np.uint32(M1)
    x ^= x >> np.uint32(15)
    x *= np.uint32(M2)
    x ^= x >> np.uint32(16)
    return x


def _stream_keys(seed: int, stream: int) -> tuple[int, int]:
    s = reference_mix32((seed ^ (stream * GOLDEN)) & MASK32)
    return s, reference_mix32(s ^ SALT)


def hash32(seed: int, stream: int, keys: np.ndarray) -> np.ndarray:
    """H(seed, stream, keys) for a uint32 array of keys; returns a new uint32 array."""
    s, t = _stream_keys(seed, stream)
    x = keys ^ np.uint32(s)
    mix32(x)
    x ^= np.uint32(t)
    return mix32(x)


def _check(seed: int, n: int, buckets: int, limit: int = 1 << 31) -> None:
    if not 0 <= seed <= MASK32:
        raise ValueError(f"hash seed must be an unsigned 32-bit integer, got {seed}")
    if not 0 <= n < MAX_ELEMENTS:
        raise ValueError(f"a hashed tensor must have fewer than 2**32 elements, got {n}")
    if not 1 <= buckets < limit:
        raise ValueError(f"bucket count must be in [1, {limit}), got {buckets}")


def _chunked(n: int, device, dtype: torch.dtype, fill) -> torch.Tensor:
    """Fill an (n,) tensor chunk by chunk with ``fill(uint32 keys) -> array`` (bounded temporary memory)."""
    device = torch.device(device) if device is not None else torch.empty(0).device
    if device.type == "meta":
        return torch.empty(n, dtype=dtype, device=device)
    out = np.empty(n, dtype=np.int32 if dtype == torch.int32 else np.int8)
    for start in range(0, n, CHUNK):
        keys = np.arange(start, min(n, start + CHUNK), dtype=np.uint32)
        out[start:start + keys.size] = fill(keys)
    return torch.from_numpy(out).to(device)


def bucket_map(seed: int, n: int, buckets: int, bias: bool = False, device=None) -> torch.Tensor:
    """int32 tensor (n,): h(e) = H(seed, stream, e) mod buckets."""
    _check(seed, n, buckets)
    stream = STREAM_BIAS_BUCKET if bias else STREAM_WEIGHT_BUCKET
    return _chunked(n, device, torch.int32, lambda keys: hash32(seed, stream, keys) % np.uint32(buckets))


def sign_map(seed: int, n: int, bias: bool = False, device=None) -> torch.Tensor:
    """int8 tensor (n,): ξ(e) = +1 if H(seed, sign stream, e) < 2**31 else -1."""
    _check(seed, n, 1)
    stream = STREAM_BIAS_SIGN if bias else STREAM_WEIGHT_SIGN
    return _chunked(n, device, torch.int8,
                    lambda keys: 1 - 2 * (hash32(seed, stream, keys) >> np.uint32(31)).astype(np.int8))


def slot_map(seed: int, n: int, buckets: int, bias: bool = False, device=None) -> torch.Tensor:
    """int32 tensor (n,): slot = h(e) + buckets · [ξ(e) = -1], an index into the signed table ``[w, -w]``
    (so ``buckets`` < 2**30, keeping slots within int32)."""
    _check(seed, n, buckets, MAX_SLOT_BUCKETS)
    bucket_stream, sign_stream = ((STREAM_BIAS_BUCKET, STREAM_BIAS_SIGN) if bias
                                  else (STREAM_WEIGHT_BUCKET, STREAM_WEIGHT_SIGN))

    def fill(keys: np.ndarray) -> np.ndarray:
        negative = hash32(seed, sign_stream, keys) >> np.uint32(31)
        slots = hash32(seed, bucket_stream, keys)
        slots %= np.uint32(buckets)
        negative *= np.uint32(buckets)
        slots += negative  # < 2**31 since buckets < 2**30
        return slots.view(np.int32)
    return _chunked(n, device, torch.int32, fill)


def reference_expand(buckets: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """Virtual weights (flat): ``[w, -w][slots]`` — differentiable, the gradient scatter-adds into ``w``."""
    return torch.index_select(torch.cat((buckets, -buckets)), 0, slots)


_P, _L, _I = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
ARGTYPES = {"hashed_gather": [_P, _P, _L, _L, _I, _P], "hashed_scatter": [_P, _P, _L, _L, _I, _P],
            "hashed_linear_grad": [_P, _P, _L, _L, _L, _P, _L, _L, _I, _P, _P], "kernel_isa": []}
PARALLEL_MIN = 1 << 16  # below this many virtual weights one thread does the whole call


def native():
    """The compiled ``hashed.c`` for the path ``$CNNCOMPRESS_ISA`` asks for (the native best when unset), or None
    (one warning) when it cannot be built."""
    return _library(_native.requested_isa())


@functools.lru_cache(maxsize=None)
def _library(isa: str | None):
    return _native.load("hashed", ARGTYPES, isa=isa)


def kernel_path() -> str:
    """``"c-<target>"`` (kernels/hashed.c built for ``avx512``, ``avx2``, ``neon`` or ``scalar``: plain C with
    prefetches, vectorised only by the compiler) or ``"torch"`` (reference_expand: index_select / index_add_)."""
    return _native.kernel_path(native(), "torch")


def _threads(n: int) -> int:
    return 1 if n < PARALLEL_MIN else max(1, torch.get_num_threads())


def native_gather(buckets: torch.Tensor, slots: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out[e] = [w, -w][slots[e]] with the C kernel (float32, contiguous); returns ``out``."""
    lib, k, n = native(), buckets.numel(), slots.numel()
    w, s, o = buckets.data_ptr(), slots.data_ptr(), out.data_ptr()
    _native.split_range(lambda start, stop: lib.hashed_gather(w, s, start, stop, k, o), n, _threads(n))
    return out


def native_scatter(grad: torch.Tensor, slots: torch.Tensor, k: int) -> torch.Tensor:
    """grad_w[h] = sum over e of xi(e) * grad[e] (the gradient of ``native_gather`` w.r.t. the K buckets).
    Each thread accumulates into its own row; the rows are summed."""
    lib, n, threads = native(), slots.numel(), _threads(slots.numel())
    rows = torch.zeros(threads, k, dtype=torch.float32)
    g, s = grad.data_ptr(), slots.data_ptr()
    share = -(-n // threads)

    def run(start: int, stop: int) -> None:
        lib.hashed_scatter(g, s, start, stop, k, rows[start // share].data_ptr())
    _native.split_range(run, n, threads)
    return rows.sum(0) if threads > 1 else rows[0]


class _NativeExpand(torch.autograd.Function):
    @staticmethod
    def forward(ctx, buckets, slots, buffer):
        ctx.save_for_backward(slots)
        ctx.k = buckets.numel()
        out = buffer.get(slots.numel()) if buffer is not None else torch.empty(slots.numel(), dtype=torch.float32)
        return native_gather(buckets.detach().contiguous(), slots, out).view(-1)  # a view: the buffer keeps no graph

    @staticmethod
    def backward(ctx, grad):
        (slots,) = ctx.saved_tensors
        return native_scatter(grad.contiguous().to(torch.float32), slots, ctx.k), None, None


def native_linear_grad(grad_out: torch.Tensor, x: torch.Tensor, slots: torch.Tensor, k: int) -> torch.Tensor:
    """grad_w[h] = Σ_e ξ(e) · (Gᵀx)[e] for a hashed linear layer y = x Vᵀ (G = ∂L/∂y, (B, O); x (B, I)), without
    forming the (O, I) matrix Gᵀx: one output row at a time, built in L1 and scattered at once (``hashed.c``).
    Threads split the output rows, each accumulating into its own bucket row; the rows are summed."""
    lib = native()
    batch, out = grad_out.shape
    features = x.shape[1]
    threads = _threads(slots.numel())
    rows = torch.zeros(threads, k, dtype=torch.float32)
    scratch = torch.empty(threads, features, dtype=torch.float32)
    g, xp, s = grad_out.data_ptr(), x.data_ptr(), slots.data_ptr()
    share = -(-out // threads)

    def run(start: int, stop: int) -> None:
        part = start // share
        lib.hashed_linear_grad(g, xp, batch, out, features, s, start, stop, k, scratch[part].data_ptr(),
                               rows[part].data_ptr())
    _native.split_range(run, out, threads)
    return rows.sum(0) if threads > 1 else rows[0]


class _NativeLinear(torch.autograd.Function):
    """y = x Vᵀ + b with V = [w, -w][slots] gathered by the C kernel; backward: ∂L/∂x = G V (BLAS), ∂L/∂w by
    ``native_linear_grad`` (the dense ∂L/∂V, as large as V, is never written), ∂L/∂b = Σ_b G."""

    @staticmethod
    def forward(ctx, x, buckets, slots, bias, buffer, out_features):
        n = slots.numel()
        out = buffer.get(n) if buffer is not None else torch.empty(n, dtype=torch.float32)
        weight = native_gather(buckets.detach().contiguous(), slots, out).view(out_features, -1)
        ctx.save_for_backward(x, slots, weight)
        ctx.k, ctx.has_bias = buckets.numel(), bias is not None
        return torch.nn.functional.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, slots, weight = ctx.saved_tensors
        grad = grad.contiguous().to(torch.float32)
        grad_x = grad @ weight if ctx.needs_input_grad[0] else None
        grad_w = native_linear_grad(grad, x.contiguous(), slots, ctx.k) if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[3] else None
        return grad_x, grad_w, None, grad_b, None, None


def linear(x: torch.Tensor, buckets: torch.Tensor, slots: torch.Tensor, out_features: int,
           bias: torch.Tensor | None = None, buffer: "ExpandBuffer | None" = None) -> torch.Tensor:
    """``F.linear(x, V, bias)`` with V = ``expand(buckets, slots)`` viewed (out_features, in): the fused C path
    (``_NativeLinear``) for a 2-D float32 CPU batch when the kernels are built and nothing traces, else exactly
    that expression (the reference)."""
    if (native() is None or x.dim() != 2 or x.dtype != torch.float32 or buckets.dtype != torch.float32
            or x.device.type != "cpu" or slots.dtype != torch.int32 or torch.jit.is_tracing()
            or torch.compiler.is_compiling()):
        return torch.nn.functional.linear(x, expand(buckets, slots, buffer).view(out_features, -1), bias)
    return _NativeLinear.apply(x, buckets, slots.contiguous(), bias, buffer, out_features)


class ExpandBuffer:
    """Memory for V reused across training steps. ``get(n)`` returns the last buffer when nothing else holds
    its storage any more (the previous step's graph is gone), else a fresh one (e.g. two forward passes before
    one backward: the first graph still needs its V)."""

    def __init__(self) -> None:
        self.tensor: torch.Tensor | None = None

    def get(self, n: int) -> torch.Tensor:
        t = self.tensor
        use_count = getattr(torch._C, "_storage_Use_Count", None)  # private; without it: always fresh
        if (t is None or t.numel() != n or use_count is None
                or use_count(t.untyped_storage()._cdata) > 2):  # 2 = our tensor + the temporary storage object
            t = self.tensor = torch.empty(n, dtype=torch.float32)
        return t


def expand(buckets: torch.Tensor, slots: torch.Tensor, buffer: ExpandBuffer | None = None) -> torch.Tensor:
    """Virtual weights (flat): ``[w, -w][slots]``, differentiable w.r.t. ``buckets``. The C kernels when built and
    the call is plain CPU float32 (not traced or compiled: export sees ``reference_expand``), else the reference.
    With ``buffer``, V is written into its reused memory (returned as a fresh view)."""
    if (native() is None or buckets.dtype != torch.float32 or buckets.device.type != "cpu"
            or slots.dtype != torch.int32 or torch.jit.is_tracing() or torch.compiler.is_compiling()):
        return reference_expand(buckets, slots)
    return _NativeExpand.apply(buckets, slots.contiguous(), buffer)


def bucket_means(values: torch.Tensor, slots: torch.Tensor, buckets: int) -> torch.Tensor:
    """Least-squares buckets for dense ``values``: w[k] = mean of ξ(e)·values[e] over the e with h(e) = k
    (0 for empty buckets). Computed with two scatter-adds over the signed table."""
    flat = values.detach().reshape(-1).to(torch.float64)
    table = torch.zeros(2 * buckets, dtype=torch.float64, device=flat.device).index_add_(0, slots, flat)
    counts = torch.bincount(slots.to(torch.int64), minlength=2 * buckets).to(torch.float64)
    total = table[:buckets] - table[buckets:]
    count = counts[:buckets] + counts[buckets:]
    return (total / count.clamp(min=1)).to(values.dtype)
