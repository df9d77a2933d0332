/* A chain of XNOR-graph layers run in one native call (cnncompress): no Python, numpy or allocation per layer.

   Built together with kernels/bitpack.c (whose pack / bit-im2col / XNOR-GEMM / LRN / max-pool functions it calls)
   by kernels/native.py; driven by kernels/binary_graph.py, which lays out the op table and preallocates every
   buffer per input shape. The pure reference of a chain is the same layers run one by one as PyTorch modules
   (deploy/xnor.py); the tests compare the two.

   Ops (one image at a time, NCHW float activations between ops):
     CONV     out[o,p] = bias[o] + sum_k W[o,k] colsT[k,p]      (float conv: im2col + a 4x32 register tile)
     XCONV    out[o,p] = ((n - 2 popcount(x_p xor w_o)) - corr[o,p]) * alpha[o] * K[p] + bias[o]
              on x = sign(scale[c] x + shift[c]) (a BatchNorm folded in), K = box mean of mean_c |x|
     XLINEAR  out[o]   = (n - 2 popcount(x xor w_o)) * alpha[o] * mean|x| + bias[o]
     LINEAR   out[o]   = bias[o] + sum_k W[o,k] x[k]
     AFFINE   out[c,p] = scale[c] x[c,p] + shift[c]             (a BatchNorm not followed by a binary layer)
     RELU, LRN, MAXPOOL as their PyTorch twins. Any op may end with a fused ReLU (relu = 1).
   Threads: an op whose work is at least min_work multiply-adds (word pairs for binary ops) is split over
   output filters / channels / pixels across `threads` POSIX threads started for that op; smaller ops (every
   op at the 48x48 FER size) run on the calling thread, so a small net pays no hand-off at all. */
#include <pthread.h>
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* the ISA path, as in bitpack.c (kernel_isa() there names it): CNNCOMPRESS_FORCE_SCALAR, else AVX-512F, AVX2 + FMA
   (also under AVX-512), NEON (aarch64) */
#if !defined(CNNCOMPRESS_FORCE_SCALAR)
#if defined(__AVX512F__)
#define CCZ_AVX512 1
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

void pack_chw(const float* x, int C, int H, int W, int ph, int pw, int Cw, uint64_t* out, float* absmean);
void pack_rows(const float* x, int R, int K, int Kw, uint64_t* out);
void im2col_bits(const uint64_t* xp, int Hp, int Wp, int Cw, int kh, int kw, int sh, int sw, int OH, int OW,
                 uint64_t* cols);
void xnor_gemm(const uint64_t* a, int M, const uint64_t* b, int N, int K, int nbits, const int32_t* corr,
               const float* alpha, const float* kscale, const float* bias, float* out, long sn, long sm);
void maxpool_f32(const float* x, int C, int H, int W, int k, int s, int OH, int OW, float* out);
void lrn_f32(const float* x, int C, int HW, long stride, int size, float alpha, float beta, float kk, float* out,
             float* sum);
void lrn_apply_075(const float* a, const float* sum, int n, float kk, float scale, float* out);

enum { OP_CONV = 0, OP_XCONV = 1, OP_XLINEAR = 2, OP_LINEAR = 3, OP_RELU = 4, OP_LRN = 5, OP_MAXPOOL = 6,
       OP_AFFINE = 7 };

/* Every field is 8 bytes, so the ctypes Structure of kernels/binary_graph.py has no padding to guess. */
typedef struct {
  int64_t kind, C, H, W, O, OH, OW, kh, kw, sh, sw, ph, pw, relu, input_scale, K, Kw, nbits, Ppad, lrn_size;
  double lrn_alpha, lrn_beta, lrn_k;
  const float *weight, *bias, *scale, *shift, *alpha;
  const uint64_t* wbits;
  const int32_t* corr;
  uint64_t *packed, *cols;
  float *affined, *absmean, *kscale, *scratch, *out;
} op_t;

typedef struct {
  const op_t* op;
  const float* in;
  int64_t lo, hi;
} share_t;

typedef void (*share_fn)(share_t*);

typedef struct {
  share_fn fn;
  share_t share;
} task_t;

static void* run_task(void* arg) {
  task_t* t = (task_t*)arg;
  t->fn(&t->share);
  return NULL;
}

/* fn over [0, total) in `threads` contiguous shares that are multiples of `multiple`; the caller runs the first */
static void parallel(share_fn fn, const op_t* op, const float* in, int64_t total, int threads, int64_t multiple,
                     int64_t work, int64_t min_work) {
  if (threads > 16) threads = 16;
  if (threads <= 1 || work < min_work || total < 2 * multiple) {
    share_t s = {op, in, 0, total};
    fn(&s);
    return;
  }
  int64_t step = ((total + threads - 1) / threads + multiple - 1) / multiple * multiple;
  task_t tasks[16];
  pthread_t ids[16];
  int started = 0;
  for (int64_t lo = step; lo < total && started < 15; lo += step) {
    tasks[started].fn = fn;
    tasks[started].share = (share_t){op, in, lo, lo + step < total ? lo + step : total};
    if (pthread_create(&ids[started], NULL, run_task, &tasks[started]) != 0) {
      run_task(&tasks[started]);  /* no thread: run that share here */
      ids[started] = 0;
    }
    started++;
  }
  share_t first = {op, in, 0, step < total ? step : total};
  fn(&first);
  for (int i = 0; i < started; i++)
    if (ids[i]) pthread_join(ids[i], NULL);
}

/* ---------------------------------------------------------------- float conv / linear */
static void im2col_f32(const op_t* op, const float* x, float* colsT) {
  int64_t P = op->OH * op->OW, Ppad = op->Ppad, sw = op->sw;
  for (int64_t c = 0; c < op->C; c++)
    for (int64_t ky = 0; ky < op->kh; ky++)
      for (int64_t kx = 0; kx < op->kw; kx++) {
        float* row = colsT + ((c * op->kh + ky) * op->kw + kx) * Ppad;
        const float* plane = x + c * op->H * op->W;
        /* output columns whose tap kx falls inside the image: lo <= ox < hi */
        int64_t lo = op->pw > kx ? (op->pw - kx + sw - 1) / sw : 0;
        int64_t hi = (op->W - 1 + op->pw - kx) / sw + 1;
        if (hi > op->OW) hi = op->OW;
        if (hi < lo) hi = lo;
        for (int64_t oy = 0; oy < op->OH; oy++) {
          int64_t y = oy * op->sh + ky - op->ph;
          float* dst = row + oy * op->OW;
          if (y < 0 || y >= op->H) { memset(dst, 0, sizeof(float) * op->OW); continue; }
          const float* src = plane + y * op->W + kx - op->pw;
          for (int64_t ox = 0; ox < lo; ox++) dst[ox] = 0.0f;
          for (int64_t ox = lo; ox < hi; ox++) dst[ox] = src[ox * sw];
          for (int64_t ox = hi; ox < op->OW; ox++) dst[ox] = 0.0f;
        }
        memset(row + P, 0, sizeof(float) * (Ppad - P));
      }
}

/* acc[i][j] = sum_k w_i[k] colsT[k, p + j] for 4 filters x 32 pixels. AVX-512: 8 accumulators of 16 floats;
   AVX2 + FMA: two passes of 4 filters x 16 pixels (8 accumulators of 8 floats: enough independent FMAs to hide
   their latency in 16 registers); NEON: two passes of 4 x 16 (16 accumulators of 4 floats); else plain loops. */
static void conv_tile(const float* colsT, int64_t Ppad, int64_t K, const float* w0, int64_t p, float acc[4][32]) {
  const float *w1 = w0 + K, *w2 = w1 + K, *w3 = w2 + K;
#if defined(CCZ_AVX512)
  __m512 a00 = _mm512_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00, a31 = a00;
  for (int64_t k = 0; k < K; k++) {
    const float* c = colsT + k * Ppad + p;
    __m512 x0 = _mm512_loadu_ps(c), x1 = _mm512_loadu_ps(c + 16), w;
    w = _mm512_set1_ps(w0[k]); a00 = _mm512_fmadd_ps(w, x0, a00); a01 = _mm512_fmadd_ps(w, x1, a01);
    w = _mm512_set1_ps(w1[k]); a10 = _mm512_fmadd_ps(w, x0, a10); a11 = _mm512_fmadd_ps(w, x1, a11);
    w = _mm512_set1_ps(w2[k]); a20 = _mm512_fmadd_ps(w, x0, a20); a21 = _mm512_fmadd_ps(w, x1, a21);
    w = _mm512_set1_ps(w3[k]); a30 = _mm512_fmadd_ps(w, x0, a30); a31 = _mm512_fmadd_ps(w, x1, a31);
  }
  _mm512_storeu_ps(acc[0], a00); _mm512_storeu_ps(acc[0] + 16, a01);
  _mm512_storeu_ps(acc[1], a10); _mm512_storeu_ps(acc[1] + 16, a11);
  _mm512_storeu_ps(acc[2], a20); _mm512_storeu_ps(acc[2] + 16, a21);
  _mm512_storeu_ps(acc[3], a30); _mm512_storeu_ps(acc[3] + 16, a31);
#elif defined(CCZ_AVX2)
  for (int h = 0; h < 32; h += 16) {
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00, a31 = a00;
    for (int64_t k = 0; k < K; k++) {
      const float* c = colsT + k * Ppad + p + h;
      __m256 x0 = _mm256_loadu_ps(c), x1 = _mm256_loadu_ps(c + 8), w;
      w = _mm256_broadcast_ss(w0 + k); a00 = _mm256_fmadd_ps(w, x0, a00); a01 = _mm256_fmadd_ps(w, x1, a01);
      w = _mm256_broadcast_ss(w1 + k); a10 = _mm256_fmadd_ps(w, x0, a10); a11 = _mm256_fmadd_ps(w, x1, a11);
      w = _mm256_broadcast_ss(w2 + k); a20 = _mm256_fmadd_ps(w, x0, a20); a21 = _mm256_fmadd_ps(w, x1, a21);
      w = _mm256_broadcast_ss(w3 + k); a30 = _mm256_fmadd_ps(w, x0, a30); a31 = _mm256_fmadd_ps(w, x1, a31);
    }
    _mm256_storeu_ps(acc[0] + h, a00); _mm256_storeu_ps(acc[0] + h + 8, a01);
    _mm256_storeu_ps(acc[1] + h, a10); _mm256_storeu_ps(acc[1] + h + 8, a11);
    _mm256_storeu_ps(acc[2] + h, a20); _mm256_storeu_ps(acc[2] + h + 8, a21);
    _mm256_storeu_ps(acc[3] + h, a30); _mm256_storeu_ps(acc[3] + h + 8, a31);
  }
#elif defined(CCZ_NEON)
  for (int h = 0; h < 32; h += 16) {
    float32x4_t a[4][4];
    for (int i = 0; i < 4; i++)
      for (int j = 0; j < 4; j++) a[i][j] = vdupq_n_f32(0.0f);
    for (int64_t k = 0; k < K; k++) {
      const float* c = colsT + k * Ppad + p + h;
      float32x4_t x[4] = {vld1q_f32(c), vld1q_f32(c + 4), vld1q_f32(c + 8), vld1q_f32(c + 12)};
      float wk[4] = {w0[k], w1[k], w2[k], w3[k]};
      for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) a[i][j] = vfmaq_n_f32(a[i][j], x[j], wk[i]);
    }
    for (int i = 0; i < 4; i++)
      for (int j = 0; j < 4; j++) vst1q_f32(acc[i] + h + 4 * j, a[i][j]);
  }
#else
  memset(acc, 0, sizeof(float) * 4 * 32);
  for (int64_t k = 0; k < K; k++) {
    const float* c = colsT + k * Ppad + p;
    float b0 = w0[k], b1 = w1[k], b2 = w2[k], b3 = w3[k];
    for (int j = 0; j < 32; j++) {
      acc[0][j] += b0 * c[j];
      acc[1][j] += b1 * c[j];
      acc[2][j] += b2 * c[j];
      acc[3][j] += b3 * c[j];
    }
  }
#endif
}

/* filters [lo, hi) (multiples of 4; the weight rows are zero-padded to a multiple of 4) */
static void conv_share(share_t* s) {
  const op_t* op = s->op;
  int64_t K = op->K, P = op->OH * op->OW;
  for (int64_t p = 0; p < op->Ppad; p += 32)  /* pixels outer: a 32-pixel column block (K x 32) stays in L1 */
    for (int64_t o = s->lo; o < s->hi; o += 4) {
      float acc[4][32];
      conv_tile(op->scratch, op->Ppad, K, op->weight + o * K, p, acc);
      for (int i = 0; i < 4 && o + i < op->O; i++) {
        float b = op->bias ? op->bias[o + i] : 0.0f;
        float* dst = op->out + (o + i) * P;
        for (int j = 0; j < 32 && p + j < P; j++) {
          float v = acc[i][j] + b;
          dst[p + j] = op->relu && v < 0.0f ? 0.0f : v;
        }
      }
    }
}

/* sum_k w[k] x[k]: 2 (AVX2) / 4 (NEON) vector accumulators, then the lanes (the compiler does not reorder a
   float sum by itself); scalar: in order */
static float dot_f32(const float* w, const float* x, int64_t K) {
  int64_t k = 0;
  float acc = 0.0f;
#if defined(CCZ_AVX2)
  __m256 s0 = _mm256_setzero_ps(), s1 = s0;
  for (; k + 16 <= K; k += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k), _mm256_loadu_ps(x + k), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k + 8), _mm256_loadu_ps(x + k + 8), s1);
  }
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(_mm256_add_ps(s0, s1)), _mm256_extractf128_ps(_mm256_add_ps(s0, s1), 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  acc = _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
#elif defined(CCZ_NEON)
  float32x4_t s0 = vdupq_n_f32(0.0f), s1 = s0, s2 = s0, s3 = s0;
  for (; k + 16 <= K; k += 16) {
    s0 = vfmaq_f32(s0, vld1q_f32(w + k), vld1q_f32(x + k));
    s1 = vfmaq_f32(s1, vld1q_f32(w + k + 4), vld1q_f32(x + k + 4));
    s2 = vfmaq_f32(s2, vld1q_f32(w + k + 8), vld1q_f32(x + k + 8));
    s3 = vfmaq_f32(s3, vld1q_f32(w + k + 12), vld1q_f32(x + k + 12));
  }
  acc = vaddvq_f32(vaddq_f32(vaddq_f32(s0, s1), vaddq_f32(s2, s3)));
#endif
  for (; k < K; k++) acc += w[k] * x[k];
  return acc;
}

static void linear_share(share_t* s) {
  const op_t* op = s->op;
  for (int64_t o = s->lo; o < s->hi; o++) {
    const float* w = op->weight + o * op->K;
    float acc = dot_f32(w, s->in, op->K);
    float v = acc + (op->bias ? op->bias[o] : 0.0f);
    op->out[o] = op->relu && v < 0.0f ? 0.0f : v;
  }
}

/* ---------------------------------------------------------------- binary conv / linear */
static void xgemm_share(share_t* s) {
  const op_t* op = s->op;
  int64_t P = op->OH * op->OW, n = s->hi - s->lo;
  xnor_gemm(op->cols, (int)P, op->wbits + s->lo * op->Kw, (int)n, (int)op->Kw, (int)op->nbits,
            op->corr ? op->corr + s->lo * P : NULL, op->alpha + s->lo, op->input_scale ? op->kscale : NULL,
            op->bias ? op->bias + s->lo : NULL, op->out + s->lo * P, (long)P, 1L);
  if (op->relu)
    for (float *v = op->out + s->lo * P, *end = op->out + s->hi * P; v < end; v++) *v = *v < 0.0f ? 0.0f : *v;
}

static const float* fold_affine(const op_t* op, const float* x, int64_t C, int64_t HW) {
  if (!op->scale) return x;
  for (int64_t c = 0; c < C; c++) {
    float a = op->scale[c], b = op->shift[c];
    const float* src = x + c * HW;
    float* dst = op->affined + c * HW;
    for (int64_t p = 0; p < HW; p++) dst[p] = src[p] * a + b;
  }
  return op->affined;
}

/* K[p] = mean of absmean over the kernel window of output pixel p, zero padding counted (XNOR-Net's K) */
static void box_mean(const op_t* op) {
  float inv = 1.0f / (float)(op->kh * op->kw);
  for (int64_t oy = 0; oy < op->OH; oy++)
    for (int64_t ox = 0; ox < op->OW; ox++) {
      float sum = 0.0f;
      for (int64_t ky = 0; ky < op->kh; ky++) {
        int64_t y = oy * op->sh + ky - op->ph;
        if (y < 0 || y >= op->H) continue;
        for (int64_t kx = 0; kx < op->kw; kx++) {
          int64_t xx = ox * op->sw + kx - op->pw;
          if (xx >= 0 && xx < op->W) sum += op->absmean[y * op->W + xx];
        }
      }
      op->kscale[oy * op->OW + ox] = sum * inv;
    }
}

static void run_xconv(const op_t* op, const float* in, int threads, int64_t min_work) {
  int64_t HW = op->H * op->W, Cw = (op->C + 63) / 64;
  const float* x = fold_affine(op, in, op->C, HW);
  pack_chw(x, (int)op->C, (int)op->H, (int)op->W, (int)op->ph, (int)op->pw, (int)Cw, op->packed,
           op->input_scale ? op->absmean : NULL);
  im2col_bits(op->packed, (int)(op->H + 2 * op->ph), (int)(op->W + 2 * op->pw), (int)Cw, (int)op->kh, (int)op->kw,
              (int)op->sh, (int)op->sw, (int)op->OH, (int)op->OW, op->cols);
  if (op->input_scale) box_mean(op);
  int64_t P = op->OH * op->OW;
  parallel(xgemm_share, op, in, op->O, threads, 4, P * op->O * op->Kw, min_work);
}

static void xlinear_share(share_t* s) {
  const op_t* op = s->op;  /* M = 1 input row: out[o] at stride 1 */
  xnor_gemm(op->packed, 1, op->wbits + s->lo * op->Kw, (int)(s->hi - s->lo), (int)op->Kw, (int)op->nbits, NULL,
            op->alpha + s->lo, op->input_scale ? op->kscale : NULL, op->bias ? op->bias + s->lo : NULL,
            op->out + s->lo, 1L, 0L);
  if (op->relu)
    for (int64_t o = s->lo; o < s->hi; o++) op->out[o] = op->out[o] < 0.0f ? 0.0f : op->out[o];
}

static void run_xlinear(const op_t* op, const float* in, int threads, int64_t min_work) {
  const float* x = fold_affine(op, in, op->K, 1);
  pack_rows(x, 1, (int)op->K, (int)op->Kw, op->packed);
  if (op->input_scale) {
    float sum = 0.0f;
    for (int64_t k = 0; k < op->K; k++) sum += x[k] < 0 ? -x[k] : x[k];
    op->kscale[0] = sum / (float)op->K;
  }
  parallel(xlinear_share, op, in, op->O, threads, 4, op->O * op->Kw, min_work);
}

/* ---------------------------------------------------------------- float helpers */
static void pool_share(share_t* s) {
  const op_t* op = s->op;
  int64_t HW = op->H * op->W, P = op->OH * op->OW;
  maxpool_f32(s->in + s->lo * HW, (int)(s->hi - s->lo), (int)op->H, (int)op->W, (int)op->kh, (int)op->sh,
              (int)op->OH, (int)op->OW, op->out + s->lo * P);
}

static void lrn_share(share_t* s) {
  const op_t* op = s->op;
  int64_t HW = op->H * op->W;
  lrn_f32(s->in + s->lo, (int)op->C, (int)(s->hi - s->lo), (long)HW, (int)op->lrn_size, (float)op->lrn_alpha,
          (float)op->lrn_beta, (float)op->lrn_k, op->out + s->lo, op->scratch + s->lo);
}

static void run_op(const op_t* op, const float* in, int threads, int64_t min_work) {
  int64_t HW = op->H * op->W, n = op->O * op->OH * op->OW;
  switch (op->kind) {
    case OP_CONV:
      im2col_f32(op, in, op->scratch);
      parallel(conv_share, op, in, (op->O + 3) / 4 * 4, threads, 4, op->O * op->OH * op->OW * op->K, min_work);
      return;
    case OP_XCONV: run_xconv(op, in, threads, min_work); return;
    case OP_XLINEAR: run_xlinear(op, in, threads, min_work); return;
    case OP_LINEAR: parallel(linear_share, op, in, op->O, threads, 1, op->O * op->K, min_work); return;
    case OP_RELU:
      for (int64_t i = 0; i < n; i++) op->out[i] = in[i] < 0.0f ? 0.0f : in[i];
      return;
    case OP_AFFINE:
      for (int64_t c = 0; c < op->C; c++)
        for (int64_t p = 0; p < HW; p++) {
          float v = in[c * HW + p] * op->scale[c] + op->shift[c];
          op->out[c * HW + p] = op->relu && v < 0.0f ? 0.0f : v;
        }
      return;
    case OP_LRN: parallel(lrn_share, op, in, HW, threads, 16, op->C * HW * 8, min_work); return;
    case OP_MAXPOOL: parallel(pool_share, op, in, op->C, threads, 1, n * op->kh * op->kw, min_work); return;
  }
}

/* y[i] = ops[n-1](...ops[0](x[i])) for each of the `batch` images; the last op's output is copied to y */
void run_chain(const op_t* ops, int n_ops, const float* x, int batch, long in_size, float* y, long out_size,
               int threads, long min_work) {
  for (int i = 0; i < batch; i++) {
    const float* in = x + (size_t)i * in_size;
    for (int j = 0; j < n_ops; j++) {
      run_op(&ops[j], in, threads, min_work);
      in = ops[j].out;
    }
    memcpy(y + (size_t)i * out_size, in, sizeof(float) * (size_t)out_size);
  }
}

static atomic_int epilogue_out_of_memory;  /* set by a share that could not allocate its scratch rows */

/* The float stem's epilogue on a bf16 NHWC conv output (oneDNN's channels_last bf16 conv), one pooled output row
   at a time, never materialising the full-size float activation. The op's fields: input C, H, W; relu;
   lrn_size (0: no LRN), lrn_alpha, lrn_beta, lrn_k; pool kh (= kw) and sh (= sw) (1, 1: no pool); OH, OW;
   out (float NCHW, one image):
     v = float(src[y, x, c]) (exact), v = max(v, 0) if relu,
     v = v / (k + alpha/size * sum_{c' in [c - size/2, c + (size-1)/2]} v_c'^2)^beta   if lrn_size > 0,
     out[c, oy, ox] = max over rows [oy*sh, oy*sh + kh) and columns [ox*sh, ox*sh + kh), clipped to the image.
   Reference: the same PyTorch layers run one by one on src.float() (deploy/xnor.py Bf16Conv). */
static void epilogue_share(share_t* sh) {
  const op_t* op = sh->op;
  const uint16_t* s = (const uint16_t*)sh->in;
  int64_t C = op->C, W = op->W, H = op->H, OH = op->OH, OW = op->OW, pk = op->kh, ps = op->sh;
  int64_t size = op->lrn_size, lo = size / 2, hi = size > 0 ? (size - 1) / 2 : 0;
  float scale = size > 0 ? (float)op->lrn_alpha / (float)size : 0.0f, kk = (float)op->lrn_k;
  float beta = (float)op->lrn_beta;
  float* sq = calloc((size_t)(C + size + 1), sizeof(float));  /* v with zeros at both ends for the window */
  float* sum = malloc(sizeof(float) * (size_t)C);
  float* acc = malloc(sizeof(float) * (size_t)(OW * C));
  if (!sq || !sum || !acc) {  /* no scratch: this share's rows stay unwritten, the call reports it */
    atomic_store(&epilogue_out_of_memory, 1);
    free(sq);
    free(sum);
    free(acc);
    return;
  }
  float* v = sq + lo;
  for (int64_t oy = sh->lo; oy < sh->hi; oy++) {
    int64_t y0 = oy * ps, y1 = y0 + pk < H ? y0 + pk : H;
    for (int64_t i = 0; i < OW * C; i++) acc[i] = -INFINITY;
    for (int64_t y = y0; y < y1; y++)
      for (int64_t x = 0; x < W; x++) {
        const uint16_t* px = s + ((size_t)y * W + x) * C;
        for (int64_t c = 0; c < C; c++) {
          uint32_t bits = (uint32_t)px[c] << 16;
          float f;
          memcpy(&f, &bits, sizeof f);
          v[c] = op->relu && f < 0.0f ? 0.0f : f;
        }
        if (size > 0) {
          for (int64_t c = 0; c < C; c++) sum[c] = 0.0f;
          for (int64_t j = -lo; j <= hi; j++)
            for (int64_t c = 0; c < C; c++) sum[c] += v[c + j] * v[c + j];
          if (beta == 0.75f)
            lrn_apply_075(v, sum, (int)C, kk, scale, sum);  /* bitpack.c: d^-0.75 by rsqrt + Newton */
          else
            for (int64_t c = 0; c < C; c++) sum[c] = v[c] * powf(kk + scale * sum[c], -beta);
        } else {
          for (int64_t c = 0; c < C; c++) sum[c] = v[c];
        }
        int64_t ox0 = x - pk + 1 > 0 ? (x - pk + 1 + ps - 1) / ps : 0, ox1 = x / ps;
        for (int64_t ox = ox0; ox <= ox1 && ox < OW; ox++) {
          float* a = acc + ox * C;
          for (int64_t c = 0; c < C; c++) a[c] = sum[c] > a[c] ? sum[c] : a[c];
        }
      }
    for (int64_t c = 0; c < C; c++)
      for (int64_t ox = 0; ox < OW; ox++) op->out[(c * OH + oy) * OW + ox] = acc[ox * C + c];
  }
  free(sq);
  free(sum);
  free(acc);
}

/* `batch` images of src (bf16 NHWC, C*H*W each) -> dst (float NCHW, C*OH*OW each); the pooled rows of an image
   split over `threads` POSIX threads when the image holds at least min_work elements' work (8 per element). */
int stem_epilogue(const op_t* op, const uint16_t* src, long batch, float* dst, int threads, long min_work) {
  for (long n = 0; n < batch && !atomic_load(&epilogue_out_of_memory); n++) {
    op_t one = *op;
    one.out = dst + (size_t)n * op->C * op->OH * op->OW;
    parallel(epilogue_share, &one, (const float*)(src + (size_t)n * op->C * op->H * op->W), op->OH, threads, 1,
             op->C * op->H * op->W * 8, min_work);
  }
  return atomic_exchange(&epilogue_out_of_memory, 0);  /* 1: out of memory, dst incomplete */
}

int op_size(void) { return (int)sizeof(op_t); }
