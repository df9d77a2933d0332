"""Bit-packed XNOR-popcount kernels for binary layers (XNOR-Net, Rastegari et al. 2016), with pure references.

Encoding: a value v becomes the bit ``v >= 0`` (so sign(0) = +1), 64 of them per little-endian uint64 word
(stored in int64 tensors). For two ±1 vectors a, b of n elements packed into words A, B (tail bits zero in both):

    a . b = n - 2 * popcount(A xor B)

Convolutions are bit-im2col + this binary GEMM. Activations are packed channels-last: word ``(y, x, c // 64)``
holds channels ``c .. c+63`` of pixel (y, x); weights ``(o, ky, kx, c // 64)`` alike, so one patch row is
``kw * Cw`` contiguous words. Zero padding cannot be written as ±1: padded pixels are packed as +1 and the
exact correction ``corr[o, p] = sum over padded taps of sign(W)`` (one float conv of the padding mask,
cached per input size) is subtracted, so the fast path equals ``conv2d(sign(x), sign(W), padding=p)``.

Fast path: a small C kernel (AVX-512 VPOPCNTDQ when the CPU has it, scalar popcount otherwise) compiled with
gcc at first use into ``$CNNCOMPRESS_CACHE`` (default ``~/.cache/cnncompress``) and loaded with ctypes; the
build flags are ``-O3 -march=native``, so the compiled file is keyed by the CPU's flags (runtime dispatch =
one build per CPU kind). Without a compiler a numpy fallback (``numpy.bitwise_count`` on
64-bit words) runs, with one warning. The GEMM is split over output filters across
``torch.get_num_threads()`` Python threads (ctypes releases the GIL; no OpenMP, whose spinning workers fought
torch's own pool on 2 cores and cost ~30 ms per layer). ``reference_*`` functions are the pure-PyTorch twins
used by the tests.
"""
from __future__ import annotations

import concurrent.futures
import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

WORD = 64

C_SOURCE = r"""
#include <stdint.h>
#include <string.h>
#include <math.h>
#if defined(__AVX512F__) && defined(__AVX512VPOPCNTDQ__)
#include <immintrin.h>
#define HAVE_VPOPCNT 1
#endif

int has_vpopcnt(void) {
#ifdef HAVE_VPOPCNT
  return 1;
#else
  return 0;
#endif
}

/* x: one image (C,H,W) float; out: (H+2ph, W+2pw, Cw) words. Padded pixels = +1 for c < C. */
void pack_chw(const float* x, int C, int H, int W, int ph, int pw, int Cw, uint64_t* out, float* absmean) {
  int Hp = H + 2 * ph, Wp = W + 2 * pw, HW = H * W;
  memset(out, 0, sizeof(uint64_t) * (size_t)Hp * Wp * Cw);
  if (ph || pw) {
    for (int y = 0; y < Hp; y++)
      for (int xx = 0; xx < Wp; xx++) {
        if (y >= ph && y < ph + H && xx >= pw && xx < pw + W) continue;
        uint64_t* o = out + ((size_t)y * Wp + xx) * Cw;
        for (int c = 0; c < C; c++) o[c >> 6] |= 1ULL << (c & 63);
      }
  }
  for (int cb = 0; cb < Cw; cb++) {
    int c0 = cb * 64, c1 = C < c0 + 64 ? C : c0 + 64;
    for (int p = 0; p < HW; p++) {
      uint64_t word = 0;
      for (int c = c0; c < c1; c++) word |= (uint64_t)(x[(size_t)c * HW + p] >= 0.0f) << (c - c0);
      int y = p / W, xx = p % W;
      out[((size_t)(y + ph) * Wp + xx + pw) * Cw + cb] = word;
    }
  }
  if (absmean) {
    for (int p = 0; p < HW; p++) absmean[p] = 0.0f;
    for (int c = 0; c < C; c++) {
      const float* row = x + (size_t)c * HW;
      for (int p = 0; p < HW; p++) absmean[p] += row[p] < 0 ? -row[p] : row[p];
    }
    float inv = 1.0f / (float)C;
    for (int p = 0; p < HW; p++) absmean[p] *= inv;
  }
}

/* rows of float (R, K) -> (R, Kw) words, bit = v >= 0 */
void pack_rows(const float* x, int R, int K, int Kw, uint64_t* out) {
  for (int r = 0; r < R; r++)
    for (int w = 0; w < Kw; w++) {
      uint64_t word = 0;
      int k0 = w * 64, k1 = K < k0 + 64 ? K : k0 + 64;
      for (int k = k0; k < k1; k++) word |= (uint64_t)(x[(size_t)r * K + k] >= 0.0f) << (k - k0);
      out[(size_t)r * Kw + w] = word;
    }
}

void im2col_bits(const uint64_t* xp, int Hp, int Wp, int Cw, int kh, int kw, int sh, int sw, int OH, int OW,
                 uint64_t* cols) {
  size_t L = (size_t)kh * kw * Cw, run = (size_t)kw * Cw;
  for (int oy = 0; oy < OH; oy++)
    for (int ox = 0; ox < OW; ox++) {
      uint64_t* dst = cols + ((size_t)oy * OW + ox) * L;
      for (int ky = 0; ky < kh; ky++)
        memcpy(dst + ky * run, xp + ((size_t)(oy * sh + ky) * Wp + (size_t)ox * sw) * Cw, run * sizeof(uint64_t));
    }
}

static inline int64_t pop_pair(const uint64_t* a, const uint64_t* b, int K) {
  int64_t s = 0;
  int k = 0;
#ifdef HAVE_VPOPCNT
  __m512i acc = _mm512_setzero_si512();
  for (; k + 8 <= K; k += 8)
    acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(a + k),
                                                                      _mm512_loadu_si512(b + k))));
  if (k < K) {
    __mmask8 m = (__mmask8)((1u << (K - k)) - 1u);
    acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_maskz_loadu_epi64(m, a + k),
                                                                      _mm512_maskz_loadu_epi64(m, b + k))));
  }
  return _mm512_reduce_add_epi64(acc);
#else
  for (; k < K; k++) s += __builtin_popcountll(a[k] ^ b[k]);
  return s;
#endif
}

static inline void store(float* out, long sn, long sm, int n, int m, int64_t pop, int nbits, const int32_t* corr,
                         int M, const float* alpha, const float* kscale, const float* bias) {
  float v = (float)((int64_t)nbits - 2 * pop - (corr ? corr[(size_t)n * M + m] : 0));
  if (alpha) v *= alpha[n];
  if (kscale) v *= kscale[m];
  if (bias) v += bias[n];
  out[n * sn + m * sm] = v;
}

/* out[n*sn + m*sm] = ((nbits - 2 popcount(a[m] ^ b[n])) - corr[n,m]) * alpha[n] * kscale[m] + bias[n] */
void xnor_gemm(const uint64_t* a, int M, const uint64_t* b, int N, int K, int nbits, const int32_t* corr,
               const float* alpha, const float* kscale, const float* bias, float* out, long sn, long sm) {
  int MB = (M + 3) / 4, NB = (N + 3) / 4;
  long tiles = (long)MB * NB;
  for (long t = 0; t < tiles; t++) {
    int m0 = (int)(t % MB) * 4, n0 = (int)(t / MB) * 4;
#ifdef HAVE_VPOPCNT
    if (m0 + 4 <= M && n0 + 4 <= N) {
      const uint64_t *a0 = a + (size_t)m0 * K, *a1 = a0 + K, *a2 = a1 + K, *a3 = a2 + K;
      const uint64_t *b0 = b + (size_t)n0 * K, *b1 = b0 + K, *b2 = b1 + K, *b3 = b2 + K;
      __m512i c00 = _mm512_setzero_si512(), c01 = c00, c02 = c00, c03 = c00, c10 = c00, c11 = c00, c12 = c00,
              c13 = c00, c20 = c00, c21 = c00, c22 = c00, c23 = c00, c30 = c00, c31 = c00, c32 = c00, c33 = c00;
#define PX(x, y) _mm512_popcnt_epi64(_mm512_xor_si512(x, y))
#define STEP(LOAD)                                                                                   \
      { __m512i v0 = LOAD(a0), v1 = LOAD(a1), v2 = LOAD(a2), v3 = LOAD(a3);                           \
        __m512i w = LOAD(b0);                                                                        \
        c00 = _mm512_add_epi64(c00, PX(v0, w)); c10 = _mm512_add_epi64(c10, PX(v1, w));              \
        c20 = _mm512_add_epi64(c20, PX(v2, w)); c30 = _mm512_add_epi64(c30, PX(v3, w));              \
        w = LOAD(b1);                                                                                \
        c01 = _mm512_add_epi64(c01, PX(v0, w)); c11 = _mm512_add_epi64(c11, PX(v1, w));              \
        c21 = _mm512_add_epi64(c21, PX(v2, w)); c31 = _mm512_add_epi64(c31, PX(v3, w));              \
        w = LOAD(b2);                                                                                \
        c02 = _mm512_add_epi64(c02, PX(v0, w)); c12 = _mm512_add_epi64(c12, PX(v1, w));              \
        c22 = _mm512_add_epi64(c22, PX(v2, w)); c32 = _mm512_add_epi64(c32, PX(v3, w));              \
        w = LOAD(b3);                                                                                \
        c03 = _mm512_add_epi64(c03, PX(v0, w)); c13 = _mm512_add_epi64(c13, PX(v1, w));              \
        c23 = _mm512_add_epi64(c23, PX(v2, w)); c33 = _mm512_add_epi64(c33, PX(v3, w)); }
      int k = 0;
#define FULL(p) _mm512_loadu_si512((p) + k)
      for (; k + 8 <= K; k += 8) STEP(FULL)
      if (k < K) {
        __mmask8 msk = (__mmask8)((1u << (K - k)) - 1u);
#define TAIL(p) _mm512_maskz_loadu_epi64(msk, (p) + k)
        STEP(TAIL)
      }
#define OUT(i, j, c) store(out, sn, sm, n0 + j, m0 + i, _mm512_reduce_add_epi64(c), nbits, corr, M, alpha, kscale, bias)
      OUT(0, 0, c00); OUT(0, 1, c01); OUT(0, 2, c02); OUT(0, 3, c03);
      OUT(1, 0, c10); OUT(1, 1, c11); OUT(1, 2, c12); OUT(1, 3, c13);
      OUT(2, 0, c20); OUT(2, 1, c21); OUT(2, 2, c22); OUT(2, 3, c23);
      OUT(3, 0, c30); OUT(3, 1, c31); OUT(3, 2, c32); OUT(3, 3, c33);
      continue;
    }
#endif
    for (int i = m0; i < M && i < m0 + 4; i++)
      for (int j = n0; j < N && j < n0 + 4; j++)
        store(out, sn, sm, j, i, pop_pair(a + (size_t)i * K, b + (size_t)j * K, K), nbits, corr, M, alpha,
              kscale, bias);
  }
}

/* float helpers of the XNOR inference graph (torch's NCHW LRN / ceil-mode max-pool are slow on CPU) */
void maxpool_f32(const float* x, int C, int H, int W, int k, int s, int OH, int OW, float* out) {
  for (int c = 0; c < C; c++) {
    const float* plane = x + (size_t)c * H * W;
    float* o = out + (size_t)c * OH * OW;
    for (int oy = 0; oy < OH; oy++) {
      int y0 = oy * s, y1 = y0 + k < H ? y0 + k : H;
      for (int ox = 0; ox < OW; ox++) {
        int x0 = ox * s, x1 = x0 + k < W ? x0 + k : W;
        float m = plane[(size_t)y0 * W + x0];
        for (int y = y0; y < y1; y++)
          for (int xx = x0; xx < x1; xx++) { float v = plane[(size_t)y * W + xx]; m = v > m ? v : m; }
        o[(size_t)oy * OW + ox] = m;
      }
    }
  }
}

/* b_c = a_c * (k + alpha/size * sum_{c' in window(c)} a_c'^2)^-beta, window [c - size/2, c + (size-1)/2] */
/* HW pixels of each channel are processed; channels lie ``stride`` floats apart (a slice of the pixels may be
   given, so threads can split the image) */
void lrn_f32(const float* x, int C, int HW, long stride, int size, float alpha, float beta, float kk, float* out,
             float* sum) {
  int lo = size / 2, hi = (size - 1) / 2;
  for (int p = 0; p < HW; p++) sum[p] = 0.0f;
  for (int c = 0; c < hi && c < C; c++) {
    const float* row = x + (size_t)c * stride;
    for (int p = 0; p < HW; p++) sum[p] += row[p] * row[p];
  }
  for (int c = 0; c < C; c++) {
    int add = c + hi, drop = c - lo - 1;
    if (add < C) { const float* r = x + (size_t)add * stride; for (int p = 0; p < HW; p++) sum[p] += r[p] * r[p]; }
    if (drop >= 0) { const float* r = x + (size_t)drop * stride; for (int p = 0; p < HW; p++) sum[p] -= r[p] * r[p]; }
    const float* a = x + (size_t)c * stride;
    float* o = out + (size_t)c * stride;
    float scale = alpha / (float)size;
    if (beta == 0.75f) {
      for (int p = 0; p < HW; p++) {
        float d = kk + scale * (sum[p] > 0.0f ? sum[p] : 0.0f);
        o[p] = a[p] / (sqrtf(d) * sqrtf(sqrtf(d)));
      }
    } else {
      for (int p = 0; p < HW; p++) o[p] = a[p] * powf(kk + scale * (sum[p] > 0.0f ? sum[p] : 0.0f), -beta);
    }
  }
}
"""


CFLAGS = ("-O3", "-march=native", "-fno-math-errno", "-shared", "-fPIC")


def n_words(bits: int) -> int:
    return (bits + WORD - 1) // WORD


def cache_dir() -> Path:
    return Path(os.environ.get("CNNCOMPRESS_CACHE") or Path.home() / ".cache" / "cnncompress")


def _cpu_key() -> str:
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return platform.machine() + platform.processor() + flags


def _compile(out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        src = Path(tmp) / "bitpack.c"
        src.write_text(C_SOURCE)
        target = Path(tmp) / out.name
        command = ["gcc", *CFLAGS, str(src), "-o", str(target), "-lm"]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise OSError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "gcc failed")
        os.replace(target, out)


@functools.lru_cache(maxsize=1)
def native() -> ctypes.CDLL | None:
    """The compiled kernel library, or None (with one warning) when it cannot be built."""
    if os.environ.get("CNNCOMPRESS_NO_NATIVE"):
        return None
    key = hashlib.sha256((C_SOURCE + " ".join(CFLAGS) + _cpu_key()).encode()).hexdigest()[:16]
    path = cache_dir() / f"bitpack-{key}.so"
    try:
        if not path.exists():
            _compile(path)
        lib = ctypes.CDLL(str(path))
    except (OSError, FileNotFoundError) as error:
        warnings.warn(f"cnncompress: bit-packed C kernel unavailable ({error}); using the numpy fallback",
                      RuntimeWarning, stacklevel=2)
        return None
    p, i, lg = ctypes.c_void_p, ctypes.c_int, ctypes.c_long
    lib.pack_chw.argtypes = [p, i, i, i, i, i, i, p, p]
    lib.pack_rows.argtypes = [p, i, i, i, p]
    lib.im2col_bits.argtypes = [p, i, i, i, i, i, i, i, i, i, p]
    lib.xnor_gemm.argtypes = [p, i, p, i, i, i, p, p, p, p, p, lg, lg]
    f = ctypes.c_float
    lib.maxpool_f32.argtypes = [p, i, i, i, i, i, i, i, p]
    lib.lrn_f32.argtypes = [p, i, i, lg, i, f, f, f, p, p]
    return lib


def _ptr(tensor: torch.Tensor | None):
    return None if tensor is None else ctypes.c_void_p(tensor.data_ptr())


def _threads() -> int:
    return max(1, torch.get_num_threads())


@functools.lru_cache(maxsize=4)
def _pool(threads: int) -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="cnncompress-xnor")


def _split(run, total: int, threads: int, multiple: int = 1) -> None:
    """``run(start, stop)`` over ``range(total)`` in ``threads`` contiguous shares (multiples of ``multiple``).
    ctypes drops the GIL, so plain threads run the C loops side by side; they sleep when idle (no OpenMP
    spinning against torch's own pool). The calling thread takes the first share instead of waiting idle."""
    if threads <= 1 or total < 2 * multiple:
        run(0, total)
        return
    step = -(-(-(-total // threads)) // multiple) * multiple
    jobs = [_pool(threads).submit(run, start, min(total, start + step)) for start in range(step, total, step)]
    run(0, min(total, step))
    for job in jobs:
        job.result()


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
    (OH*OW). Same as ``F.conv2d(plane[None, None], ones/(kh*kw), stride, padding)`` (the tests compare them),
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


# ---------------------------------------------------------------- float helpers (references: torch's own)
def pool_size(size: int, kernel: int, stride: int, ceil_mode: bool) -> int:
    """Output size of an unpadded max-pool (Caffe/torch ceil-mode rule)."""
    out = -(-(size - kernel) // stride) + 1 if ceil_mode else (size - kernel) // stride + 1
    return out - 1 if ceil_mode and (out - 1) * stride >= size else out


def max_pool2d(x: torch.Tensor, kernel: int, stride: int, ceil_mode: bool) -> torch.Tensor:
    """NCHW max-pool without padding (reference: ``F.max_pool2d``; C loop, torch's ceil-mode NCHW path is slow)."""
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
    """Across-channel LRN (reference: ``F.local_response_norm``) with a running window sum over channels."""
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


# ---------------------------------------------------------------- pure references
def sign(x: torch.Tensor) -> torch.Tensor:
    """±1 with sign(0) = +1 (the bit encoding)."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def reference_xnor_conv2d(x, weight, stride, padding, alpha, bias, input_scale: bool) -> torch.Tensor:
    """conv2d(sign(x), sign(W)) * alpha[o] * K + bias, K = box_kxk(mean_c |x|) (XNOR-Net eq. 11)."""
    out = F.conv2d(sign(x), sign(weight), stride=stride, padding=padding) * alpha.view(1, -1, 1, 1)
    if input_scale:
        kh, kw = weight.shape[-2:]
        box = torch.full((1, 1, kh, kw), 1.0 / (kh * kw), dtype=x.dtype)
        out = out * F.conv2d(x.abs().mean(1, keepdim=True), box, stride=stride, padding=padding)
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def reference_xnor_linear(x, weight, alpha, bias, input_scale: bool) -> torch.Tensor:
    out = F.linear(sign(x), sign(weight)) * alpha
    if input_scale:
        out = out * x.abs().mean(1, keepdim=True)
    return out if bias is None else out + bias
