/* Bit-packed XNOR-popcount kernels and float helpers of the XNOR inference graph (cnncompress).

   Loaded by cnncompress/kernels/bitpack.py through kernels/native.py: compiled at first use with
   gcc -O3 -march=native -fno-math-errno -shared -fPIC into $CNNCOMPRESS_CACHE and called with ctypes.
   Every function here has a pure reference twin in kernels/bitpack_reference.py (the tests compare them):
     pack_chw, pack_rows  -> reference_pack_rows      xnor_gemm   -> reference_xnor_gemm
     im2col_bits + gemm   -> reference_xnor_conv2d    maxpool_f32 -> reference_max_pool2d
     lrn_f32              -> reference_local_response_norm
   Bits: v >= 0 -> 1, 64 per little-endian uint64 word, tail bits 0; a . b = n - 2 popcount(A xor B). */
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
