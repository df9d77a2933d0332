/* Bit-packed XNOR-popcount kernels and float helpers of the XNOR inference graph (cnncompress).

   Loaded by cnncompress/kernels/bitpack.py through kernels/native.py: compiled at first use with
   gcc -O3 -march=native -fno-math-errno -shared -fPIC into $CNNCOMPRESS_CACHE and called with ctypes
   ($CNNCOMPRESS_ISA forces a lower path: native.py adds -mno-avx512f, -mno-avx or -DCNNCOMPRESS_FORCE_SCALAR).
   Every function here has a pure reference twin in kernels/bitpack_reference.py (the tests compare them):
     pack_chw, pack_rows  -> reference_pack_rows      xnor_gemm   -> reference_xnor_gemm
     im2col_bits + gemm   -> reference_xnor_conv2d    maxpool_f32 -> reference_max_pool2d
     lrn_f32              -> reference_local_response_norm
   Bits: v >= 0 -> 1, 64 per little-endian uint64 word, tail bits 0; a . b = n - 2 popcount(A xor B).

   GEMM: per block of 4 filters x 256 pixels, the raw popcounts (per path below), then the epilogue (corr, alpha,
   K, bias) over each filter's row in one loop the compiler vectorises.
   Paths (picked at compile time from the compiler's ISA macros; kernel_isa() names the one built):
     avx512-vpopcnt  GEMM: 4x4 tile of 512-bit VPOPCNTQ; LRN d^-0.75 by rsqrt14 + Newton; AVX2 packing
     avx512          AVX-512F without VPOPCNTDQ: the AVX2 GEMM and packing, the AVX-512 float code
     avx2            GEMM: 2x4 / 1x4 register tiles of 256-bit XOR + vpshufb nibble-LUT popcount, byte counts
                     summed by vpsadbw every 31 steps, scalar POPCNT for the last 1-3 words (4.9-5.4 G word
                     pairs/s on VGG-S's conv shapes, 1.5-1.65x a 4x4 register tile of scalar POPCNT, on an AMD EPYC
                     Zen 4 built with -mno-avx512f; under 8 words the scalar tile is faster and runs instead;
                     docs/binarize.md); packing: 8 pixels x 64 channels compared, movemask'ed and
                     bit-transposed by pmovmskb; LRN by rsqrt + Newton (FMA)
     neon            GEMM: 4x4 tile of 128-bit XOR + vcntq_u8, vpadalq_u8 into 16-bit counts; packing: 4
                     pixels per vcgeq_f32; LRN by vrsqrte + 2 vrsqrts steps
     scalar          plain C: a 4x4 register tile of POPCNT (__builtin_popcountll); the compiler may still
                     vectorise the simple loops (with SSE only when forced: -mno-avx) */
#include <stdint.h>
#include <string.h>
#include <math.h>

#if !defined(CNNCOMPRESS_FORCE_SCALAR)
#if defined(__AVX512F__)
#define CCZ_AVX512 1
#if defined(__AVX512VPOPCNTDQ__)
#define CCZ_VPOPCNT 1
#endif
#endif
#if defined(__AVX2__) && defined(__FMA__)
#define CCZ_AVX2 1
#endif
#if defined(__ARM_NEON) && defined(__aarch64__)
#define CCZ_NEON 1
#endif
#endif
#if defined(CCZ_AVX512) || defined(CCZ_AVX2)
#include <immintrin.h>
#endif
#ifdef CCZ_NEON
#include <arm_neon.h>
#endif

/* the path this library was built for (bitpack.kernel_path() prefixes "c-") */
const char* kernel_isa(void) {
#if defined(CCZ_VPOPCNT)
  return "avx512-vpopcnt";
#elif defined(CCZ_AVX512)
  return "avx512";
#elif defined(CCZ_AVX2)
  return "avx2";
#elif defined(CCZ_NEON)
  return "neon";
#else
  return "scalar";
#endif
}

/* ---------------------------------------------------------------- packing */
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
#define PIXEL_WORD(pix) out[((size_t)((pix) / W + ph) * Wp + (pix) % W + pw) * Cw + cb]
  for (int cb = 0; cb < Cw; cb++) {
    int c0 = cb * 64, c1 = C < c0 + 64 ? C : c0 + 64;
    int p = 0;
#if defined(CCZ_AVX2)
    /* 8 pixels at a time: m[c] = the 8 pixels' bits of channel c (movemask); then bit j of the 64 bytes m[]
       is pixel j's word, read by pmovmskb after shifting bit j to the top of each byte */
    const __m256 zero = _mm256_setzero_ps();
    for (; p + 8 <= HW; p += 8) {
      uint8_t m[64];
      int c = c0;
      for (; c < c1; c++)
        m[c - c0] = (uint8_t)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + (size_t)c * HW + p), zero,
                                                              _CMP_GE_OQ));
      for (; c < c0 + 64; c++) m[c - c0] = 0;
      __m256i lo = _mm256_loadu_si256((const __m256i*)m), hi = _mm256_loadu_si256((const __m256i*)(m + 32));
      for (int j = 7; j >= 0; j--) {
        PIXEL_WORD(p + j) = (uint64_t)(uint32_t)_mm256_movemask_epi8(lo) |
                            (uint64_t)(uint32_t)_mm256_movemask_epi8(hi) << 32;
        lo = _mm256_add_epi8(lo, lo);
        hi = _mm256_add_epi8(hi, hi);
      }
    }
#elif defined(CCZ_NEON)
    /* 4 pixels at a time: each channel's 4 compare results shifted to bit c and or'ed into 2 x 2 words */
    const float32x4_t zero = vdupq_n_f32(0.0f);
    for (; p + 4 <= HW; p += 4) {
      uint64x2_t w01 = vdupq_n_u64(0), w23 = w01;
      for (int c = c0; c < c1; c++) {
        uint32x4_t bit = vshrq_n_u32(vcgeq_f32(vld1q_f32(x + (size_t)c * HW + p), zero), 31);
        int64x2_t shift = vdupq_n_s64(c - c0);
        w01 = vorrq_u64(w01, vshlq_u64(vmovl_u32(vget_low_u32(bit)), shift));
        w23 = vorrq_u64(w23, vshlq_u64(vmovl_high_u32(bit), shift));
      }
      PIXEL_WORD(p) = vgetq_lane_u64(w01, 0);
      PIXEL_WORD(p + 1) = vgetq_lane_u64(w01, 1);
      PIXEL_WORD(p + 2) = vgetq_lane_u64(w23, 0);
      PIXEL_WORD(p + 3) = vgetq_lane_u64(w23, 1);
    }
#endif
    for (; p < HW; p++) {
      uint64_t word = 0;
      for (int c = c0; c < c1; c++) word |= (uint64_t)(x[(size_t)c * HW + p] >= 0.0f) << (c - c0);
      PIXEL_WORD(p) = word;
    }
  }
#undef PIXEL_WORD
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
      const float* row = x + (size_t)r * K;
#if defined(CCZ_AVX2)
      if (k1 - k0 == 64) {
        for (int j = 0; j < 8; j++)
          word |= (uint64_t)(uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(row + k0 + 8 * j),
                                                                      _mm256_setzero_ps(), _CMP_GE_OQ)) << (8 * j);
        out[(size_t)r * Kw + w] = word;
        continue;
      }
#endif
      for (int k = k0; k < k1; k++) word |= (uint64_t)(row[k] >= 0.0f) << (k - k0);
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

/* ---------------------------------------------------------------- binary GEMM */
/* The GEMM runs per block of 4 filters (b rows) x MCHUNK pixels (a rows): raw popcounts into a small int32 block
   first (per ISA below), then the epilogue over each filter's row of the block in one loop the compiler
   vectorises (per element, as a separate step of a 2x4 tile, it cost ~11% of the AVX2 model at 224: K is only
   36-72 words there). b rows past N point at the last real row; their counts are dropped. */
#define MCHUNK 256

#if defined(CCZ_VPOPCNT)
/* 4 rows a x 4 rows b: 8 words per VPOPCNTQ step, masked loads for the K tail (no padding of K) */
static void pop_tile_vpopcnt(const uint64_t* a0, int K, const uint64_t* const brow[4], int32_t pops[4][MCHUNK],
                             int i) {
  const uint64_t *a1 = a0 + K, *a2 = a1 + K, *a3 = a2 + K;
  const uint64_t *b0 = brow[0], *b1 = brow[1], *b2 = brow[2], *b3 = brow[3];
  __m512i c00 = _mm512_setzero_si512(), c01 = c00, c02 = c00, c03 = c00, c10 = c00, c11 = c00, c12 = c00,
          c13 = c00, c20 = c00, c21 = c00, c22 = c00, c23 = c00, c30 = c00, c31 = c00, c32 = c00, c33 = c00;
#define PX(x, y) _mm512_popcnt_epi64(_mm512_xor_si512(x, y))
#define STEP(LOAD)                                                                                   \
  { __m512i v0 = LOAD(a0), v1 = LOAD(a1), v2 = LOAD(a2), v3 = LOAD(a3);                               \
    __m512i w = LOAD(b0);                                                                            \
    c00 = _mm512_add_epi64(c00, PX(v0, w)); c10 = _mm512_add_epi64(c10, PX(v1, w));                  \
    c20 = _mm512_add_epi64(c20, PX(v2, w)); c30 = _mm512_add_epi64(c30, PX(v3, w));                  \
    w = LOAD(b1);                                                                                    \
    c01 = _mm512_add_epi64(c01, PX(v0, w)); c11 = _mm512_add_epi64(c11, PX(v1, w));                  \
    c21 = _mm512_add_epi64(c21, PX(v2, w)); c31 = _mm512_add_epi64(c31, PX(v3, w));                  \
    w = LOAD(b2);                                                                                    \
    c02 = _mm512_add_epi64(c02, PX(v0, w)); c12 = _mm512_add_epi64(c12, PX(v1, w));                  \
    c22 = _mm512_add_epi64(c22, PX(v2, w)); c32 = _mm512_add_epi64(c32, PX(v3, w));                  \
    w = LOAD(b3);                                                                                    \
    c03 = _mm512_add_epi64(c03, PX(v0, w)); c13 = _mm512_add_epi64(c13, PX(v1, w));                  \
    c23 = _mm512_add_epi64(c23, PX(v2, w)); c33 = _mm512_add_epi64(c33, PX(v3, w)); }
  int k = 0;
#define FULL(p) _mm512_loadu_si512((p) + k)
  for (; k + 8 <= K; k += 8) STEP(FULL)
  if (k < K) {
    __mmask8 msk = (__mmask8)((1u << (K - k)) - 1u);
#define TAIL(p) _mm512_maskz_loadu_epi64(msk, (p) + k)
    STEP(TAIL)
  }
#define OUT(r, j, c) pops[j][i + r] = (int32_t)_mm512_reduce_add_epi64(c)
  OUT(0, 0, c00); OUT(0, 1, c01); OUT(0, 2, c02); OUT(0, 3, c03);
  OUT(1, 0, c10); OUT(1, 1, c11); OUT(1, 2, c12); OUT(1, 3, c13);
  OUT(2, 0, c20); OUT(2, 1, c21); OUT(2, 2, c22); OUT(2, 3, c23);
  OUT(3, 0, c30); OUT(3, 1, c31); OUT(3, 2, c32); OUT(3, 3, c33);
#undef OUT
#undef TAIL
#undef FULL
#undef STEP
#undef PX
}

/* 1 row a x 4 rows b (the pixels past the last whole 4-row tile; every row of a 1-row GEMM, a Linear) */
static void pop_row_vpopcnt(const uint64_t* a0, int K, const uint64_t* const brow[4], int32_t pops[4][MCHUNK],
                            int i) {
  __m512i c[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
  int k = 0;
  for (; k + 8 <= K; k += 8) {
    __m512i v = _mm512_loadu_si512(a0 + k);
    for (int j = 0; j < 4; j++)
      c[j] = _mm512_add_epi64(c[j], _mm512_popcnt_epi64(_mm512_xor_si512(v, _mm512_loadu_si512(brow[j] + k))));
  }
  if (k < K) {
    __mmask8 m = (__mmask8)((1u << (K - k)) - 1u);
    __m512i v = _mm512_maskz_loadu_epi64(m, a0 + k);
    for (int j = 0; j < 4; j++)
      c[j] = _mm512_add_epi64(c[j],
                              _mm512_popcnt_epi64(_mm512_xor_si512(v, _mm512_maskz_loadu_epi64(m, brow[j] + k))));
  }
  for (int j = 0; j < 4; j++) pops[j][i] = (int32_t)_mm512_reduce_add_epi64(c[j]);
}
#endif

#if defined(CCZ_AVX2) && !defined(CCZ_VPOPCNT)
/* MR (1 or 2) rows a x 4 rows b over the K4 = K - K % 4 words: 4 words per step, the byte counts of the nibble LUT
   (<= 8 per byte per step) summed in bytes for up to 31 steps, then by vpsadbw into pops. 8 vector ops per 4 word
   pairs (vpxor, 2 vpand, vpsrlw, 2 vpshufb, 2 vpaddb): ~2 word pairs per cycle on 4 vector ALUs, which this loop
   reaches. Not inlined: inside the caller's loops the compiler spilled accumulators (~10% slower); it clones the
   function per constant MR instead. */
#define AVX2_BLOCK 31
static inline int64_t hsum_sad(__m256i bytes) {
  __m256i s = _mm256_sad_epu8(bytes, _mm256_setzero_si256());
  __m128i h = _mm_add_epi64(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
  return _mm_cvtsi128_si64(h) + _mm_extract_epi64(h, 1);
}

#define LUT_POP(v)                                                                                          \
  _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(v, low)),                                       \
                  _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), low)))
#define ACC(c, x, y) c = _mm256_add_epi8(c, LUT_POP(_mm256_xor_si256(x, y)))

static __attribute__((noinline)) void pop_tile_avx2(const uint64_t* a0, const uint64_t* a1, int MR,
                                                    const uint64_t* const brow[4], int K4, int64_t pops[2][4]) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                       0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  const uint64_t *b0 = brow[0], *b1 = brow[1], *b2 = brow[2], *b3 = brow[3];
  for (int i = 0; i < 2; i++)
    for (int j = 0; j < 4; j++) pops[i][j] = 0;
  int k = 0;
  while (k < K4) {
    int stop = K4 - k > 4 * AVX2_BLOCK ? k + 4 * AVX2_BLOCK : K4;
    __m256i c00 = _mm256_setzero_si256(), c01 = c00, c02 = c00, c03 = c00, c10 = c00, c11 = c00, c12 = c00,
            c13 = c00;
#define LOAD4(p) _mm256_loadu_si256((const __m256i*)((p) + k))
    for (; k < stop; k += 4) {
      __m256i v0 = LOAD4(a0), w;
      if (MR == 2) {
        __m256i v1 = LOAD4(a1);
        w = LOAD4(b0); ACC(c00, v0, w); ACC(c10, v1, w);
        w = LOAD4(b1); ACC(c01, v0, w); ACC(c11, v1, w);
        w = LOAD4(b2); ACC(c02, v0, w); ACC(c12, v1, w);
        w = LOAD4(b3); ACC(c03, v0, w); ACC(c13, v1, w);
      } else {
        w = LOAD4(b0); ACC(c00, v0, w); w = LOAD4(b1); ACC(c01, v0, w);
        w = LOAD4(b2); ACC(c02, v0, w); w = LOAD4(b3); ACC(c03, v0, w);
      }
    }
#undef LOAD4
    pops[0][0] += hsum_sad(c00); pops[0][1] += hsum_sad(c01); pops[0][2] += hsum_sad(c02);
    pops[0][3] += hsum_sad(c03);
    if (MR == 2) {
      pops[1][0] += hsum_sad(c10); pops[1][1] += hsum_sad(c11); pops[1][2] += hsum_sad(c12);
      pops[1][3] += hsum_sad(c13);
    }
  }
}
#undef ACC
#undef LUT_POP
#endif

#if defined(CCZ_NEON)
/* 4 rows a x 4 rows b: 2 words per step, vcntq_u8 byte counts pairwise added into 16-bit lanes (<= 16 per lane
   per step: 4096 steps before a flush) */
static inline uint64x2_t load_words(const uint64_t* p, int k, int K) {
  return k + 2 <= K ? vld1q_u64(p + k) : vcombine_u64(vld1_u64(p + k), vdup_n_u64(0));
}

static void pop_tile_neon(const uint64_t* const a[4], const uint64_t* const b[4], int K, int64_t pops[4][4]) {
  for (int i = 0; i < 4; i++)
    for (int j = 0; j < 4; j++) pops[i][j] = 0;
  int k = 0;
  while (k < K) {
    int stop = K - k > 2 * 4096 ? k + 2 * 4096 : K;
    uint16x8_t acc[4][4];
    for (int i = 0; i < 4; i++)
      for (int j = 0; j < 4; j++) acc[i][j] = vdupq_n_u16(0);
    for (; k < stop; k += 2) {
      uint8x16_t v[4], w;
      for (int i = 0; i < 4; i++) v[i] = vreinterpretq_u8_u64(load_words(a[i], k, stop));
      for (int j = 0; j < 4; j++) {
        w = vreinterpretq_u8_u64(load_words(b[j], k, stop));
        for (int i = 0; i < 4; i++) acc[i][j] = vpadalq_u8(acc[i][j], vcntq_u8(veorq_u8(v[i], w)));
      }
    }
    for (int i = 0; i < 4; i++)
      for (int j = 0; j < 4; j++) pops[i][j] += vaddlvq_u16(acc[i][j]);
  }
}
#endif

/* pops[j][i] = popcount(a[i] ^ brow[j]) over K words, for the mc rows of a given (i < mc <= MCHUNK), j < 4 */
static void popcounts(const uint64_t* a, int mc, const uint64_t* const brow[4], int K, int32_t pops[4][MCHUNK]) {
  int i = 0;
#if defined(CCZ_VPOPCNT)
  for (; i + 4 <= mc; i += 4) pop_tile_vpopcnt(a + (size_t)i * K, K, brow, pops, i);
  for (; i < mc; i++) pop_row_vpopcnt(a + (size_t)i * K, K, brow, pops, i);
#elif defined(CCZ_AVX2)
  if (K >= 8) {  /* (fewer words: the scalar tile below is faster) */
    int K4 = K & ~3;
    for (; i < mc; i += 2) {
      int mr = i + 1 < mc ? 2 : 1;
      const uint64_t *a0 = a + (size_t)i * K, *a1 = a0 + K;
      int64_t p[2][4];
      if (mr == 2)
        pop_tile_avx2(a0, a1, 2, brow, K4, p);
      else
        pop_tile_avx2(a0, NULL, 1, brow, K4, p);
      for (int k = K4; k < K; k++)  /* the last 1-3 words: scalar POPCNT (a masked vector step was slower) */
        for (int j = 0; j < 4; j++) {
          p[0][j] += __builtin_popcountll(a0[k] ^ brow[j][k]);
          if (mr == 2) p[1][j] += __builtin_popcountll(a1[k] ^ brow[j][k]);
        }
      for (int r = 0; r < mr; r++)
        for (int j = 0; j < 4; j++) pops[j][i + r] = (int32_t)p[r][j];
    }
  }
#elif defined(CCZ_NEON)
  for (; i < mc; i += 4) {  /* rows past mc point at the last row; their counts are dropped */
    const uint64_t* arow[4];
    for (int r = 0; r < 4; r++) arow[r] = a + (size_t)(i + r < mc ? i + r : mc - 1) * K;
    int64_t p[4][4];
    pop_tile_neon(arow, brow, K, p);
    for (int r = 0; r < 4 && i + r < mc; r++)
      for (int j = 0; j < 4; j++) pops[j][i + r] = (int32_t)p[r][j];
  }
#endif
  for (; i + 4 <= mc; i += 4) {  /* a 4x4 tile of scalar POPCNT, 16 counts in registers */
    const uint64_t *a0 = a + (size_t)i * K, *a1 = a0 + K, *a2 = a1 + K, *a3 = a2 + K;
    int64_t c[4][4] = {{0}};
    for (int k = 0; k < K; k++) {
      uint64_t v0 = a0[k], v1 = a1[k], v2 = a2[k], v3 = a3[k];
      for (int j = 0; j < 4; j++) {
        uint64_t w = brow[j][k];
        c[0][j] += __builtin_popcountll(v0 ^ w);
        c[1][j] += __builtin_popcountll(v1 ^ w);
        c[2][j] += __builtin_popcountll(v2 ^ w);
        c[3][j] += __builtin_popcountll(v3 ^ w);
      }
    }
    for (int r = 0; r < 4; r++)
      for (int j = 0; j < 4; j++) pops[j][i + r] = (int32_t)c[r][j];
  }
  for (; i < mc; i++) {
    const uint64_t* a0 = a + (size_t)i * K;
    int64_t c[4] = {0, 0, 0, 0};
    for (int k = 0; k < K; k++)
      for (int j = 0; j < 4; j++) c[j] += __builtin_popcountll(a0[k] ^ brow[j][k]);
    for (int j = 0; j < 4; j++) pops[j][i] = (int32_t)c[j];
  }
}

/* out[m*sm] = ((nbits - 2 pop[m] - corr[m]) * alpha) * kscale[m] + bias for m < mc (corr, kscale: NULL = 0, 1) */
static void epilogue(float* out, long sm, const int32_t* pop, int mc, int nbits, const int32_t* corr, float alpha,
                     const float* kscale, float bias) {
  if (sm != 1) {
    for (int m = 0; m < mc; m++)
      out[m * sm] = (float)(nbits - 2 * pop[m] - (corr ? corr[m] : 0)) * alpha * (kscale ? kscale[m] : 1.0f) + bias;
    return;
  }
  if (corr && kscale)  /* contiguous: one loop per case, vectorised by the compiler */
    for (int m = 0; m < mc; m++) out[m] = (float)(nbits - 2 * pop[m] - corr[m]) * alpha * kscale[m] + bias;
  else if (corr)
    for (int m = 0; m < mc; m++) out[m] = (float)(nbits - 2 * pop[m] - corr[m]) * alpha + bias;
  else if (kscale)
    for (int m = 0; m < mc; m++) out[m] = (float)(nbits - 2 * pop[m]) * alpha * kscale[m] + bias;
  else
    for (int m = 0; m < mc; m++) out[m] = (float)(nbits - 2 * pop[m]) * alpha + bias;
}

/* out[n*sn + m*sm] = ((nbits - 2 popcount(a[m] ^ b[n])) - corr[n,m]) * alpha[n] * kscale[m] + bias[n] */
void xnor_gemm(const uint64_t* a, int M, const uint64_t* b, int N, int K, int nbits, const int32_t* corr,
               const float* alpha, const float* kscale, const float* bias, float* out, long sn, long sm) {
  int32_t pops[4][MCHUNK];
  for (int n0 = 0; n0 < N; n0 += 4) {
    const uint64_t* brow[4];
    for (int j = 0; j < 4; j++) brow[j] = b + (size_t)(n0 + j < N ? n0 + j : N - 1) * K;
    for (int m0 = 0; m0 < M; m0 += MCHUNK) {  /* the 4 b rows stay in L1 while a's rows stream past */
      int mc = M - m0 < MCHUNK ? M - m0 : MCHUNK;
      popcounts(a + (size_t)m0 * K, mc, brow, K, pops);
      for (int j = 0; j < 4 && n0 + j < N; j++) {
        int n = n0 + j;
        epilogue(out + n * sn + m0 * sm, sm, pops[j], mc, nbits, corr ? corr + (size_t)n * M + m0 : NULL,
                 alpha ? alpha[n] : 1.0f, kscale ? kscale + m0 : NULL, bias ? bias[n] : 0.0f);
      }
    }
  }
}

/* ---------------------------------------------------------------- float helpers of the XNOR graph */
/* (torch's NCHW LRN / ceil-mode max-pool are slow on CPU) */
/* Each output row: the column-wise max over the window's rows (contiguous: vectorised by the compiler), then
   the max over each window's columns; rows wider than the stack buffer take the window loop directly. */
void maxpool_f32(const float* x, int C, int H, int W, int k, int s, int OH, int OW, float* out) {
  float colmax[1024];
  for (int c = 0; c < C; c++) {
    const float* plane = x + (size_t)c * H * W;
    float* o = out + (size_t)c * OH * OW;
    for (int oy = 0; oy < OH; oy++) {
      int y0 = oy * s, y1 = y0 + k < H ? y0 + k : H;
      if (W <= 1024) {
        const float* first = plane + (size_t)y0 * W;
        for (int xx = 0; xx < W; xx++) colmax[xx] = first[xx];
        for (int y = y0 + 1; y < y1; y++) {
          const float* row = plane + (size_t)y * W;
          for (int xx = 0; xx < W; xx++) colmax[xx] = row[xx] > colmax[xx] ? row[xx] : colmax[xx];
        }
        for (int ox = 0; ox < OW; ox++) {
          int x0 = ox * s, x1 = x0 + k < W ? x0 + k : W;
          float m = colmax[x0];
          for (int xx = x0 + 1; xx < x1; xx++) m = colmax[xx] > m ? colmax[xx] : m;
          o[(size_t)oy * OW + ox] = m;
        }
        continue;
      }
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

/* out[i] = a[i] * (kk + scale * max(sum[i], 0))^-0.75 for i < n (out may be sum). Vector paths: r = 1/sqrt(d)
   from the hardware estimate and Newton steps (r' = r (1.5 - 0.5 d r^2)), then d^-0.75 = r * sqrt(r) =
   r^2 * rsqrt(r), rsqrt(r) refined the same way: FMAs instead of two square roots and a division per element.
   AVX-512: rsqrt14 + 1 step (relative error ~2^-27 before rounding); AVX2: rsqrt (12 bits) + 1 step (~2^-22);
   NEON: vrsqrte (8 bits) + 2 vrsqrts steps. Scalar and the tail: a / (sqrt(d) sqrt(sqrt(d))). */
void lrn_apply_075(const float* a, const float* sum, int n, float kk, float scale, float* out) {
  int i = 0;
#if defined(CCZ_AVX512)
  const __m512 half = _mm512_set1_ps(0.5f), three_halves = _mm512_set1_ps(1.5f), zero = _mm512_setzero_ps();
  for (; i + 16 <= n; i += 16) {
    __m512 d = _mm512_fmadd_ps(_mm512_set1_ps(scale), _mm512_max_ps(_mm512_loadu_ps(sum + i), zero),
                               _mm512_set1_ps(kk));
    __m512 r = _mm512_rsqrt14_ps(d);
    r = _mm512_mul_ps(r, _mm512_fnmadd_ps(_mm512_mul_ps(half, d), _mm512_mul_ps(r, r), three_halves));
    __m512 q = _mm512_rsqrt14_ps(r);
    q = _mm512_mul_ps(q, _mm512_fnmadd_ps(_mm512_mul_ps(half, r), _mm512_mul_ps(q, q), three_halves));
    _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_loadu_ps(a + i), _mm512_mul_ps(_mm512_mul_ps(r, r), q)));
  }
#endif
#if defined(CCZ_AVX2)
  const __m256 half8 = _mm256_set1_ps(0.5f), three_halves8 = _mm256_set1_ps(1.5f), zero8 = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    __m256 d = _mm256_fmadd_ps(_mm256_set1_ps(scale), _mm256_max_ps(_mm256_loadu_ps(sum + i), zero8),
                               _mm256_set1_ps(kk));
    __m256 r = _mm256_rsqrt_ps(d);
    r = _mm256_mul_ps(r, _mm256_fnmadd_ps(_mm256_mul_ps(half8, d), _mm256_mul_ps(r, r), three_halves8));
    __m256 q = _mm256_rsqrt_ps(r);
    q = _mm256_mul_ps(q, _mm256_fnmadd_ps(_mm256_mul_ps(half8, r), _mm256_mul_ps(q, q), three_halves8));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_loadu_ps(a + i), _mm256_mul_ps(_mm256_mul_ps(r, r), q)));
  }
#endif
#if defined(CCZ_NEON)
  for (; i + 4 <= n; i += 4) {
    float32x4_t d = vfmaq_n_f32(vdupq_n_f32(kk), vmaxq_f32(vld1q_f32(sum + i), vdupq_n_f32(0.0f)), scale);
    float32x4_t r = vrsqrteq_f32(d);
    r = vmulq_f32(r, vrsqrtsq_f32(vmulq_f32(d, r), r));
    r = vmulq_f32(r, vrsqrtsq_f32(vmulq_f32(d, r), r));
    float32x4_t q = vrsqrteq_f32(r);
    q = vmulq_f32(q, vrsqrtsq_f32(vmulq_f32(r, q), q));
    q = vmulq_f32(q, vrsqrtsq_f32(vmulq_f32(r, q), q));
    vst1q_f32(out + i, vmulq_f32(vld1q_f32(a + i), vmulq_f32(vmulq_f32(r, r), q)));
  }
#endif
  for (; i < n; i++) {
    float d = kk + scale * (sum[i] > 0.0f ? sum[i] : 0.0f);
    out[i] = a[i] / (sqrtf(d) * sqrtf(sqrtf(d)));
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
      lrn_apply_075(a, sum, HW, kk, scale, o);
    } else {
      for (int p = 0; p < HW; p++) o[p] = a[p] * powf(kk + scale * (sum[p] > 0.0f ? sum[p] : 0.0f), -beta);
    }
  }
}
