/* HashedNets expand and its gradient (cnncompress): the fast twins of kernels/hashed.py's reference_expand.

   Loaded by cnncompress/kernels/hashed.py through kernels/native.py (compiled at first use with
   -O3 -march=native, or the flags of a path forced by $CNNCOMPRESS_ISA). Slots follow kernels/hashed.py:
   slot = h(e) + K * [xi(e) = -1], so

       gather:  out[e]        = (slot < K) ? w[slot] : -w[slot - K]
       scatter: grad_w[h(e)] += xi(e) * grad_out[e]      (for e in [start, stop))
       linear:  the scatter of G^T x for a hashed linear layer, one output row at a time (never the dense G^T x)

   Both work on a range so that Python threads can split one call (ctypes drops the GIL). The sign is applied by
   flipping the float's sign bit, without a branch (a random sign mispredicts half the time: 3-4x slower), and
   the bucket PREFETCH elements ahead is prefetched (a table of millions of buckets lives in L3, not L1). */
#include <stdint.h>

#define PREFETCH 64

/* The target this library was compiled for (hashed.kernel_path() prefixes "c-"). No hand-written SIMD here: a
   random gather/scatter over a table in L3 is bound by its loads (AVX2's vpgatherdd is no faster on AMD than 8
   scalar loads); the compiler vectorises what it can (the row build of hashed_linear_grad) for that target. */
const char* kernel_isa(void) {
#if defined(CNNCOMPRESS_FORCE_SCALAR)
  return "scalar";
#elif defined(__AVX512F__)
  return "avx512";
#elif defined(__AVX2__) && defined(__FMA__)
  return "avx2";
#elif defined(__ARM_NEON) && defined(__aarch64__)
  return "neon";
#else
  return "scalar";
#endif
}

/* the bucket a slot points at: slot - K for the negated half of the table */
static inline uint32_t bucket(uint32_t slot, uint32_t k) { return slot - (slot >= k) * k; }

void hashed_gather(const float *w, const int32_t *slots, long start, long stop, int32_t k, float *out) {
    const uint32_t *table = (const uint32_t *)w;
    uint32_t *bits = (uint32_t *)out;
    const uint32_t kk = (uint32_t)k;
    for (long e = start; e < stop; e++) {
        if (e + PREFETCH < stop) __builtin_prefetch(table + bucket((uint32_t)slots[e + PREFETCH], kk), 0, 3);
        uint32_t s = (uint32_t)slots[e];
        bits[e] = table[bucket(s, kk)] ^ ((uint32_t)(s >= kk) << 31);
    }
}

/* grad_w[h(e)] += xi(e) * grad[e] for e in [0, n) (grad_w, k floats, is accumulated into) */
static inline void scatter(const float *grad, const int32_t *slots, long n, uint32_t kk, float *grad_w) {
    const uint32_t *bits = (const uint32_t *)grad;
    for (long e = 0; e < n; e++) {
        if (e + PREFETCH < n) __builtin_prefetch(grad_w + bucket((uint32_t)slots[e + PREFETCH], kk), 1, 3);
        uint32_t s = (uint32_t)slots[e];
        union { uint32_t u; float f; } v;
        v.u = bits[e] ^ ((uint32_t)(s >= kk) << 31);
        grad_w[bucket(s, kk)] += v.f;
    }
}

void hashed_scatter(const float *grad, const int32_t *slots, long start, long stop, int32_t k, float *grad_w) {
    scatter(grad + start, slots + start, stop - start, (uint32_t)k, grad_w);
}

/* The bucket gradient of a hashed linear layer y = x V^T without the dense dL/dV = G^T x (out x in floats):
   for each output row o in [o_start, o_stop), row[i] = sum_b G[b, o] * x[b, i] is built in `row` (in floats,
   stays in L1) and scattered into grad_w at once. G is (batch, out), x (batch, in), row-major; a row whose
   G[:, o] is all zero (ReLU after the layer) costs nothing. */
void hashed_linear_grad(const float *g, const float *x, long batch, long out, long in, const int32_t *slots,
                        long o_start, long o_stop, int32_t k, float *row, float *grad_w) {
    for (long o = o_start; o < o_stop; o++) {
        int any = 0;
        for (long b = 0; b < batch; b++) {
            const float a = g[b * out + o];
            if (a == 0.0f) continue;
            const float *xb = x + b * in;
            if (!any) {
                for (long i = 0; i < in; i++) row[i] = a * xb[i];
                any = 1;
            } else {
                for (long i = 0; i < in; i++) row[i] += a * xb[i];
            }
        }
        if (any) scatter(row, slots + o * in, in, (uint32_t)k, grad_w);
    }
}
