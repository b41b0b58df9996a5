/* The CPU backend's SIMD kernels: one table per instruction-set path (portable C, AVX2+FMA,
 * AVX-512, NEON), chosen once when the backend is created (core/cpu_features.h).
 *
 * The fixed reduction order, which is what makes results independent of the batch and of the
 * thread count: a path with L lanes computes every dot product over k the same way, whatever
 * the caller (GEMM tile of any shape, GEMV, attention):
 *   acc[l] = 0 for each lane l;
 *   for each full chunk c of L elements in increasing k: acc[l] = fma(x[cL+l], w[cL+l], acc[l])
 *     (portable: acc[l] = acc[l] + x*w, two roundings, as ISO C without contraction);
 *   the last partial chunk, zero-padded to L lanes, likewise;
 *   value = that path's fixed horizontal-sum tree over the L lanes (+ bias).
 * A GEMM tile only interleaves independent chains of different outputs, so the tile shape, the
 * split of rows or columns into tasks, and the other rows of the batch never change a value.
 * bf16 and f16 weights are widened to f32 in registers (exact), so their results equal those
 * of the same weights upcast to f32.
 *
 * Each path lives in cpu_kern_<isa>.c compiled with its own target flags and includes
 * cpu_kern_impl.h, which holds the algorithm once, written against a few vector macros. */
#ifndef QV_BACKEND_CPU_KERN_H
#define QV_BACKEND_CPU_KERN_H

#include <stdint.h>

#include "core/cpu_features.h"
#include "core/dtype.h"

/* out[i][j] = sum_k x[i][k] * w[j][k] (+ bias[j]). */
typedef struct cpu_mm_args {
  float *out;        /* [n][ldo] */
  const float *x;    /* [n][ldx], k used */
  const void *w;     /* [m][k] of dtype wt (F32, BF16 or F16), rows contiguous */
  const float *bias; /* [m] or NULL */
  qv_dtype wt;
  int64_t n, m, k;
  int64_t ldo, ldx;
} cpu_mm_args;

typedef struct cpu_kernels {
  qv_cpu_isa isa;
  int lanes; /* L in the reduction order above */
  /* out rows [i0, i1) x columns [j0, j1). Any partition of the output into calls gives the
   * same bits. */
  void (*matmul)(const cpu_mm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1);
  /* sum a[i]*b[i] in the path's order (the same as a matmul output with k = n). */
  float (*dot)(const float *a, const float *b, int64_t n);
  /* Attention over one tile of keys, for one query row. dots: sc[j] = dot(q, k[j]) * scale
   * (the dot chain above) for j < n. pv: o = o * s, then o += p[j] * v[j] for j < n in order
   * (fma where the path has it), element by element. */
  void (*dots)(float *sc, const float *q, const float *const *k, int64_t n, int64_t hd, float scale);
  void (*pv)(float *o, float s, const float *p, const float *const *v, int64_t n, int64_t hd);
} cpu_kernels;

/* The table of a path, or NULL when this build has none for it (a path for another
 * architecture). The caller checks that the CPU supports it (qv_cpu_isa_supported). */
const cpu_kernels *cpu_kernels_for(qv_cpu_isa isa);

extern const cpu_kernels cpu_kernels_portable;
#if defined(__x86_64__)
extern const cpu_kernels cpu_kernels_avx2;
extern const cpu_kernels cpu_kernels_avx512;
#endif
#if defined(__aarch64__)
extern const cpu_kernels cpu_kernels_neon;
#endif

#endif
