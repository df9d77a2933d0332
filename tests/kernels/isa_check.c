/* Stand-alone check of the C kernels of cnncompress (kernels/bitpack.c, binary_graph.c, hashed.c) against naive C
   loops written here, on fixed pseudo-random inputs. Built by tests/kernels/test_arm_cross.py for the host (each
   ISA path it can run) and cross-compiled for aarch64 (NEON and forced scalar), run there under qemu-aarch64: no
   Python, numpy or torch needed on the target. Prints the path built (kernel_isa()) and one line per failed
   check; exit status 0 when every check passes.

   The kernels are included as source so the driver also reaches their static helpers through run_chain. */
#include "bitpack.c"
#include "binary_graph.c"
#define kernel_isa hashed_kernel_isa /* hashed.c names its own build path too */
#include "hashed.c"
#undef kernel_isa

#include <stdio.h>
#include <stdlib.h>

static uint64_t rng = 0x9E3779B97F4A7C15ULL;
static uint64_t next_u64(void) { /* xorshift64* */
  rng ^= rng >> 12;
  rng ^= rng << 25;
  rng ^= rng >> 27;
  return rng * 0x2545F4914F6CDD1DULL;
}
static float next_float(void) { return (float)((double)(next_u64() >> 11) / 9007199254740992.0 * 6.0 - 3.0); }

static int failures = 0;
#define CHECK(cond, ...)                          \
  do {                                            \
    if (!(cond)) {                                \
      if (failures < 20) {                        \
        printf("FAIL %s:%d ", __func__, __LINE__); \
        printf(__VA_ARGS__);                      \
        printf("\n");                             \
      }                                           \
      failures++;                                 \
    }                                             \
  } while (0)

static int close_enough(double got, double want, double rtol, double atol) {
  double d = got - want;
  if (d < 0) d = -d;
  return d <= atol + rtol * (want < 0 ? -want : want);
}

static int naive_popcount(uint64_t v) {
  int n = 0;
  for (int b = 0; b < 64; b++) n += (int)((v >> b) & 1u);
  return n;
}

/* xnor_gemm: raw popcounts (exact) and the fused epilogue (float tolerance), K words across the tails of every
   path: < 8 (scalar tile), 4-word steps, the 124-word AVX2 byte-count blocks, NEON's 8192-word blocks */
static void check_gemm(int M, int N, int K) {
  uint64_t* a = malloc(sizeof(uint64_t) * (size_t)M * K);
  uint64_t* b = malloc(sizeof(uint64_t) * (size_t)N * K);
  float* out = malloc(sizeof(float) * (size_t)M * N);
  float* fused = malloc(sizeof(float) * (size_t)M * N);
  int32_t* corr = malloc(sizeof(int32_t) * (size_t)M * N);
  float *alpha = malloc(sizeof(float) * N), *kscale = malloc(sizeof(float) * M), *bias = malloc(sizeof(float) * N);
  for (size_t i = 0; i < (size_t)M * K; i++) a[i] = next_u64();
  for (size_t i = 0; i < (size_t)N * K; i++) b[i] = next_u64();
  for (size_t i = 0; i < (size_t)M * N; i++) corr[i] = (int32_t)(next_u64() % 11) - 5;
  for (int n = 0; n < N; n++) alpha[n] = next_float(), bias[n] = next_float();
  for (int m = 0; m < M; m++) kscale[m] = next_float();
  int nbits = 64 * K;
  xnor_gemm(a, M, b, N, K, nbits, NULL, NULL, NULL, NULL, out, M, 1);
  xnor_gemm(a, M, b, N, K, nbits, corr, alpha, kscale, bias, fused, 1, N); /* transposed output strides */
  for (int n = 0; n < N; n++)
    for (int m = 0; m < M; m++) {
      int64_t pop = 0;
      for (int k = 0; k < K; k++) pop += naive_popcount(a[(size_t)m * K + k] ^ b[(size_t)n * K + k]);
      double dot = (double)(nbits - 2 * pop);
      CHECK(out[(size_t)n * M + m] == (float)dot, "gemm %dx%dx%d [%d,%d] %g != %g", M, N, K, n, m,
            out[(size_t)n * M + m], dot);
      double want = (dot - corr[(size_t)n * M + m]) * alpha[n] * kscale[m] + bias[n];
      CHECK(close_enough(fused[(size_t)m * N + n], want, 1e-5, 1e-3), "gemm epilogue %dx%dx%d [%d,%d] %g != %g",
            M, N, K, n, m, fused[(size_t)m * N + n], want);
    }
  free(a), free(b), free(out), free(fused), free(corr), free(alpha), free(kscale), free(bias);
}

static void check_pack(int C, int H, int W, int ph, int pw) {
  int Cw = (C + 63) / 64, Hp = H + 2 * ph, Wp = W + 2 * pw;
  float* x = malloc(sizeof(float) * (size_t)C * H * W);
  for (size_t i = 0; i < (size_t)C * H * W; i++) x[i] = next_u64() % 17 == 0 ? 0.0f : next_float();
  uint64_t* words = malloc(sizeof(uint64_t) * (size_t)Hp * Wp * Cw);
  float* absmean = malloc(sizeof(float) * (size_t)H * W);
  pack_chw(x, C, H, W, ph, pw, Cw, words, absmean);
  for (int y = 0; y < Hp; y++)
    for (int xx = 0; xx < Wp; xx++)
      for (int cb = 0; cb < Cw; cb++) {
        uint64_t want = 0;
        for (int c = cb * 64; c < C && c < cb * 64 + 64; c++) {
          int inside = y >= ph && y < ph + H && xx >= pw && xx < pw + W;
          int bit = inside ? x[((size_t)c * H + (y - ph)) * W + (xx - pw)] >= 0.0f : 1;
          want |= (uint64_t)bit << (c - cb * 64);
        }
        uint64_t got = words[((size_t)y * Wp + xx) * Cw + cb];
        CHECK(got == want, "pack_chw C=%d %dx%d pad %d,%d word (%d,%d,%d)", C, H, W, ph, pw, y, xx, cb);
      }
  for (int p = 0; p < H * W; p++) {
    double s = 0;
    for (int c = 0; c < C; c++) s += fabs(x[(size_t)c * H * W + p]);
    CHECK(close_enough(absmean[p], s / C, 1e-5, 1e-6), "pack_chw absmean C=%d pixel %d", C, p);
  }
  /* pack_rows: the same bits row by row */
  int R = 3, K = C * 3, Kw = (K + 63) / 64;
  uint64_t* rows = malloc(sizeof(uint64_t) * (size_t)R * Kw);
  pack_rows(x, R, K, Kw, rows);
  for (int r = 0; r < R; r++)
    for (int w = 0; w < Kw; w++) {
      uint64_t want = 0;
      for (int k = w * 64; k < K && k < w * 64 + 64; k++)
        want |= (uint64_t)(x[(size_t)r * K + k] >= 0.0f) << (k - w * 64);
      CHECK(rows[(size_t)r * Kw + w] == want, "pack_rows K=%d row %d word %d", K, r, w);
    }
  free(x), free(words), free(absmean), free(rows);
}

static void check_pool_lrn(int C, int H, int W, int k, int s, int OH, int OW) {
  size_t n = (size_t)C * H * W;
  float *x = malloc(sizeof(float) * n), *out = malloc(sizeof(float) * n), *sum = malloc(sizeof(float) * H * W);
  for (size_t i = 0; i < n; i++) x[i] = next_float() * 2;
  maxpool_f32(x, C, H, W, k, s, OH, OW, out);
  for (int c = 0; c < C; c++)
    for (int oy = 0; oy < OH; oy++)
      for (int ox = 0; ox < OW; ox++) {
        float m = -INFINITY;
        for (int y = oy * s; y < oy * s + k && y < H; y++)
          for (int xx = ox * s; xx < ox * s + k && xx < W; xx++) m = fmaxf(m, x[((size_t)c * H + y) * W + xx]);
        CHECK(out[((size_t)c * OH + oy) * OW + ox] == m, "maxpool C=%d %dx%d k%d s%d at (%d,%d,%d)", C, H, W, k, s,
              c, oy, ox);
      }
  const float betas[2] = {0.75f, 0.6f};
  for (int bi = 0; bi < 2; bi++) {
    int size = 5;
    float alpha = 1e-2f, kk = 2.0f, beta = betas[bi];
    lrn_f32(x, C, H * W, (long)H * W, size, alpha, beta, kk, out, sum);
    for (int c = 0; c < C; c++)
      for (int p = 0; p < H * W; p++) {
        double window = 0;
        for (int j = c - size / 2; j <= c + (size - 1) / 2; j++)
          if (j >= 0 && j < C) window += (double)x[(size_t)j * H * W + p] * x[(size_t)j * H * W + p];
        double want = x[(size_t)c * H * W + p] * pow(kk + alpha / size * window, -beta);
        CHECK(close_enough(out[(size_t)c * H * W + p], want, 1e-5, 1e-6), "lrn beta %g C=%d c=%d p=%d %g != %g", beta,
              C, c, p, out[(size_t)c * H * W + p], want);
      }
  }
  free(x), free(out), free(sum);
}

/* the float conv (conv_tile) and linear (dot_f32) ops through run_chain, 1 and 2 threads */
static void check_chain(int C, int H, int W, int O, int kh, int stride, int pad, int threads) {
  int OH = (H + 2 * pad - kh) / stride + 1, OW = (W + 2 * pad - kh) / stride + 1, P = OH * OW;
  int K = C * kh * kh, Ppad = (P + 31) / 32 * 32, Opad = (O + 3) / 4 * 4;
  float *x = malloc(sizeof(float) * (size_t)C * H * W), *w = calloc((size_t)Opad * K, sizeof(float));
  float *bias = malloc(sizeof(float) * O), *scratch = malloc(sizeof(float) * (size_t)K * Ppad);
  float *conv = malloc(sizeof(float) * (size_t)O * P), *y = malloc(sizeof(float) * (size_t)O * P);
  float *lw = malloc(sizeof(float) * (size_t)7 * O * P), *lb = malloc(sizeof(float) * 7);
  float *lin = malloc(sizeof(float) * 7), *y2 = malloc(sizeof(float) * 7);
  for (int i = 0; i < C * H * W; i++) x[i] = next_float();
  for (int i = 0; i < O * K; i++) w[i] = next_float();
  for (int i = 0; i < O; i++) bias[i] = next_float();
  for (int i = 0; i < 7 * O * P; i++) lw[i] = next_float();
  for (int i = 0; i < 7; i++) lb[i] = next_float();
  op_t ops[2];
  memset(ops, 0, sizeof ops);
  ops[0].kind = OP_CONV, ops[0].C = C, ops[0].H = H, ops[0].W = W, ops[0].O = O, ops[0].OH = OH, ops[0].OW = OW;
  ops[0].kh = ops[0].kw = kh, ops[0].sh = ops[0].sw = stride, ops[0].ph = ops[0].pw = pad, ops[0].relu = 1;
  ops[0].K = K, ops[0].Ppad = Ppad, ops[0].weight = w, ops[0].bias = bias, ops[0].scratch = scratch, ops[0].out = conv;
  ops[1].kind = OP_LINEAR, ops[1].C = O * P, ops[1].H = ops[1].W = 1, ops[1].O = 7, ops[1].OH = ops[1].OW = 1;
  ops[1].K = O * P, ops[1].weight = lw, ops[1].bias = lb, ops[1].out = lin;
  run_chain(ops, 1, x, 1, (long)C * H * W, y, (long)O * P, threads, 0);
  run_chain(ops, 2, x, 1, (long)C * H * W, y2, 7, threads, 0);
  for (int o = 0; o < O; o++)
    for (int oy = 0; oy < OH; oy++)
      for (int ox = 0; ox < OW; ox++) {
        double s = bias[o];
        for (int c = 0; c < C; c++)
          for (int ky = 0; ky < kh; ky++)
            for (int kx = 0; kx < kh; kx++) {
              int iy = oy * stride + ky - pad, ix = ox * stride + kx - pad;
              if (iy >= 0 && iy < H && ix >= 0 && ix < W)
                s += (double)w[((size_t)o * C + c) * kh * kh + ky * kh + kx] * x[((size_t)c * H + iy) * W + ix];
            }
        double want = s < 0 ? 0 : s;
        CHECK(close_enough(y[((size_t)o * OH + oy) * OW + ox], want, 1e-4, 1e-4),
              "conv C%d O%d k%d s%d p%d t%d (%d,%d,%d)", C, O, kh, stride, pad, threads, o, oy, ox);
      }
  for (int j = 0; j < 7; j++) {
    double s = lb[j];
    for (int i = 0; i < O * P; i++) s += (double)lw[(size_t)j * O * P + i] * conv[i];
    CHECK(close_enough(y2[j], s, 1e-4, 1e-3), "linear K=%d row %d %g != %g", O * P, j, y2[j], s);
  }
  free(x), free(w), free(bias), free(scratch), free(conv), free(y), free(lw), free(lb), free(lin), free(y2);
}

static void check_hashed(void) {
  int k = 97;
  long n = 5000;
  float *w = malloc(sizeof(float) * k), *out = malloc(sizeof(float) * n), *grad = malloc(sizeof(float) * n);
  float* gw = calloc((size_t)k, sizeof(float));
  double* want = calloc((size_t)k, sizeof(double));
  int32_t* slots = malloc(sizeof(int32_t) * n);
  for (int i = 0; i < k; i++) w[i] = next_float();
  for (long e = 0; e < n; e++) slots[e] = (int32_t)(next_u64() % (2 * (uint64_t)k)), grad[e] = next_float();
  hashed_gather(w, slots, 0, n, k, out);
  hashed_scatter(grad, slots, 0, n, k, gw);
  for (long e = 0; e < n; e++) {
    float v = slots[e] < k ? w[slots[e]] : -w[slots[e] - k];
    CHECK(out[e] == v, "hashed_gather e=%ld", e);
    want[slots[e] % k] += slots[e] < k ? grad[e] : -grad[e];
  }
  for (int i = 0; i < k; i++) CHECK(close_enough(gw[i], want[i], 1e-4, 1e-3), "hashed_scatter bucket %d", i);
  free(w), free(out), free(grad), free(gw), free(want), free(slots);
}

int main(void) {
  printf("kernel_isa %s hashed %s\n", kernel_isa(), hashed_kernel_isa());
  const int gemm[][3] = {{1, 1, 1},   {3, 5, 2},   {4, 4, 4},   {5, 7, 7},    {9, 13, 8},   {6, 9, 9},
                         {1, 33, 64}, {7, 6, 123}, {8, 8, 124}, {5, 11, 125}, {3, 4, 251}, {4, 5, 8195},
                         {300, 6, 10}, {517, 3, 3}};
  for (size_t i = 0; i < sizeof gemm / sizeof gemm[0]; i++) check_gemm(gemm[i][0], gemm[i][1], gemm[i][2]);
  check_pack(3, 5, 7, 1, 1);
  check_pack(64, 9, 9, 0, 0);
  check_pack(70, 9, 11, 2, 1);
  check_pack(130, 4, 5, 1, 0);
  check_pool_lrn(7, 11, 10, 3, 2, 5, 5); /* ceil-mode windows cut at the border */
  check_pool_lrn(3, 9, 9, 3, 3, 3, 3);
  check_pool_lrn(2, 4, 1030, 2, 2, 2, 515); /* rows wider than maxpool's stack buffer */
  check_chain(3, 13, 12, 5, 3, 1, 1, 1);
  check_chain(2, 20, 19, 9, 5, 2, 2, 2);
  check_chain(1, 48, 48, 24, 7, 2, 0, 2);
  check_hashed();
  float v[19], s[19], o[19];
  for (int i = 0; i < 19; i++) v[i] = next_float(), s[i] = next_float() * next_float();
  lrn_apply_075(v, s, 19, 2.0f, 0.01f, o);
  for (int i = 0; i < 19; i++) {
    double d = 2.0 + 0.01 * (s[i] > 0 ? s[i] : 0);
    CHECK(close_enough(o[i], v[i] * pow(d, -0.75), 1e-5, 1e-7), "lrn_apply_075 %d", i);
  }
  printf("%s: %d failed checks\n", failures ? "FAILED" : "ok", failures);
  return failures != 0;
}
