/* The opt-in bf16 dot-product matmul for BF16 weights (cpu_kern_avx512bf16.c): x rounded to
 * bf16 once per call, products of bf16 pairs accumulated in f32 by AVX512_BF16 `vdpbf16ps`.
 * Its fixed reduction order (in that file) keeps batch and thread invariance, but the values
 * differ from the exact f32 path (the activations lose 16 bits), so the backend uses it only
 * when asked (qv_backend_opts.cpu_bf16_dot or QUIVER_CPU_BF16_DOT=1), the CPU has avx512_bf16
 * and the chosen path is avx512. */
#ifndef QV_BACKEND_CPU_KERN_BF16_H
#define QV_BACKEND_CPU_KERN_BF16_H

#include <stdint.h>

/* out[i][j] = sum_k x[i][k] * w[j][k] (+ bias[j]), x and w bf16. */
typedef struct cpu_bf16_mm_args {
  float *out;        /* [n][ldo] */
  const uint16_t *x; /* [n][k] bf16 (cpu_bf16_convert's output) */
  const uint16_t *w; /* [m][k] bf16, rows contiguous */
  const float *bias; /* [m] or NULL */
  int64_t n, m, k, ldo;
} cpu_bf16_mm_args;

/* Whether this build has the kernel (x86-64); the caller also checks the CPU's avx512_bf16. */
int cpu_bf16_available(void);
/* Out rows [i0, i1) x columns [j0, j1); any partition into calls gives the same bits. */
void cpu_bf16_matmul(const cpu_bf16_mm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1);
/* dst[i] = src[i] rounded to bf16 (nearest even; NaN stays NaN, denormals become 0), i < n. */
void cpu_bf16_convert(uint16_t *dst, const float *src, int64_t n);

#endif
