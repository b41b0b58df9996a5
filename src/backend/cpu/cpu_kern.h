/* The CPU backend's SIMD kernels: one table per instruction-set path (portable C, AVX2+FMA,
 * AVX-512, NEON), chosen once when the backend is created (core/cpu_features.h).
 *
 * The fixed reduction order, which is what makes results independent of the batch and of the
 * thread count: a path with L lanes computes every dot product over k the same way, whatever
 * the caller (GEMM tile of any shape, GEMV; attention has its own order, below):
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
  int64_t pf_row; /* set by the kernel's blocking: tiles starting at this x row prefetch the next
                   * weight tile (callers leave it 0) */
} cpu_mm_args;

/* Attention (cpu_ops.c walks the paged cache in tiles of CPU_ATTN_KT key positions aligned to
 * position 0; every row's values depend only on its own keys, never on the rows it is grouped
 * with). The fixed order, on every path, for one query row and one tile whose keys [j0, j1) the
 * row sees (its causal and sliding-window range within the tile):
 *   score s[j] = acc * scale, acc the chain over d = 0 .. hd-1 in order of
 *     acc = fma(q[d], k[j][d], acc) from acc = 0 (portable: acc + q*k, two roundings): one lane
 *     per key over a transposed tile, so no horizontal sum; then softcap * tanhf(s / softcap)
 *     when a softcap is set;
 *   the tile max over [j0, j1), m' = max(m, tile max); corr = exp(m - m') (0 for the first tile);
 *   p[j] = exp(s[j] - m') by the path's exp below;
 *   the row sum l' = l * corr + T in double, T the float tile sum: lane i of KL lanes adds, in
 *     increasing chunk order, p at the tile offsets c*KL + i in [j0, j1) (0 elsewhere), and
 *     the lanes are combined by the path's horizontal-sum tree (K_HSUM);
 *   the output o = o * corr, then o = fma(p[j], v[j], o) for j = j0 .. j1-1 in order, element
 *     by element (portable: two roundings).
 * exp(x): x clamped to [-104, 89]; n = round-to-nearest-even(x * log2 e) (fma on fma paths);
 * r = x - n * 0.693359375 - n * (-2.12194440e-4) (Cody-Waite, the first product exact); p the
 * degree-7 Taylor polynomial of e^r by Horner; result (p * 2^e1) * 2^(n - e1), e1 = round(n/2),
 * so denormal results round once. Within 2 ulp of libm's expf for x <= 0 (tests), exp(0) = 1,
 * exp(-inf) = 0, exp(x > 88.73) = inf, NaN stays NaN. */
#define CPU_ATTN_KT 64      /* key positions per tile, a multiple of 4 * every path's lanes */
#define CPU_ATTN_MAX_HD 512 /* the transposed tile lives on the task's stack */

typedef struct cpu_attn_tile {
  const float *kt;       /* [hd][CPU_ATTN_KT] the tile's keys transposed; every column finite */
  const float *const *v; /* [CPU_ATTN_KT] value rows (hd floats each); those in [j0, j1) read */
  int32_t j0, j1, hd;    /* keys [j0, j1) of the tile, 0 <= j0 < j1 <= CPU_ATTN_KT */
  float scale, softcap;  /* softcap 0: none */
  const float *q;        /* query rows: row r at q + rows[r] * hd */
  float *o;              /* output rows likewise, updated in place */
  float *m;              /* [rows[r]] running max, updated */
  double *l;             /* [rows[r]] running sum, updated */
  const int64_t *rows;   /* [n_rows] row indices, borrowed */
  int n_rows;
} cpu_attn_tile;

typedef struct cpu_kernels {
  qv_cpu_isa isa;
  int lanes; /* L in the reduction order above */
  /* out rows [i0, i1) x columns [j0, j1). Any partition of the output into calls gives the
   * same bits. */
  void (*matmul)(const cpu_mm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1);
  /* sum a[i]*b[i] in the path's order (the same as a matmul output with k = n). */
  float (*dot)(const float *a, const float *b, int64_t n);
  /* exp(x) lane by lane for n values (the softmax's exp, order and accuracy below). */
  void (*exp)(float *y, const float *x, int64_t n);
  /* o[i] = a[i] / (1 + exp(-a[i])) * b[i] (SiLU(gate) * up) with that exp, element by element. */
  void (*silu_mul)(float *o, const float *a, const float *b, int64_t n);
  /* Attention over one tile of CPU_ATTN_KT keys (cpu_attn_tile below; the caller lays the
   * keys out as kt[d][j] = k[j][d], copied from the cache's transposed blocks). scores writes
   * sc[j] = score(q, key j) for every j of the key groups (KL * 4 lanes, aligned in the tile)
   * that meet [j0, j1); tile does one online-softmax step for rows that all see keys [j0, j1)
   * of the tile. */
  void (*attn_scores)(float *sc, const float *q, const float *kt, int32_t j0, int32_t j1, int32_t hd, float scale);
  void (*attn_tile)(const struct cpu_attn_tile *t);
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
