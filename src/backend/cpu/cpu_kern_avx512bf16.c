/* The opt-in bf16 dot-product matmul (AVX512_BF16 `vdpbf16ps`) for BF16 weights: activations
 * rounded to bf16 once per matmul call (round to nearest even, as torch's .to(bfloat16)), then
 * every output is one chain of dot-product instructions accumulating pairs of bf16 products in
 * f32. It does twice the multiply-adds of an f32 FMA per instruction and reads half the bytes of
 * x, which is what llama.cpp and transformers do for a bf16 model on such a CPU; it is not exact
 * (the activations lose 16 bits), so it is off unless asked for (cpu_kern_bf16.h).
 *
 * The reduction order, the same for every output whatever the tile, batch or thread count:
 *   acc[l] = 0 for the 16 lanes l;
 *   for each chunk c of 32 elements in increasing k (the last one zero-padded by masked loads):
 *     acc[l] = vdpbf16ps(acc, x[32c..], w[32c..])[l], i.e. per lane
 *       acc[l] = acc[l] + x[32c+2l+1]*w[32c+2l+1], then acc[l] = acc[l] + x[32c+2l]*w[32c+2l]
 *       (each step one rounding, RNE, denormal inputs read as 0 and denormal results flushed);
 *   value = the AVX-512 path's horizontal sum of the 16 lanes (cpu_kern_avx512.c) (+ bias).
 * A tile only interleaves independent chains, so its shape never changes a value.
 *
 * Compiled with AVX512_BF16 target flags (CMakeLists.txt); called only when the CPU has it. */
#if defined(__x86_64__)
#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>

#include "backend/cpu/cpu_hsum512.h"
#include "backend/cpu/cpu_kern_bf16.h"

#define BINLINE static inline __attribute__((always_inline))
#define BL 32      /* bf16 elements per chunk (16 f32 lanes x 2) */
#define BTR 6      /* GEMM tile: rows of x ... */
#define BTC 4      /* ... by weight rows: 24 accumulators + 6 x chunks of the 32 zmm registers */
#define BTC1 8     /* weight rows of the single-row GEMV tile */
#define B_L2_BUDGET (192 * 1024) /* the f32 kernels' cache blocking (cpu_kern_impl.h) */


BINLINE __m512bh bload(const uint16_t *p) { return (__m512bh)_mm512_loadu_si512((const void *)p); }
BINLINE __m512bh bload_n(const uint16_t *p, int64_t n) {
  return (__m512bh)_mm512_maskz_loadu_epi16((__mmask32)((1u << n) - 1), (const void *)p);
}
BINLINE __m512 bdot(__m512 acc, __m512bh x, __m512bh w) { return _mm512_dpbf16_ps(acc, x, w); }

/* One R x C tile: out[i0 + r][j0 + c]. R and C are constants at every call site. */
BINLINE void btile(const cpu_bf16_mm_args *a, int64_t i0, int64_t j0, const int R, const int C, int64_t pf_row) {
  const int64_t k = a->k, kmain = k - k % BL;
  const uint16_t *xr[BTR], *wr[BTC1];
  __m512 acc[BTR][BTC1];
  for (int r = 0; r < R; r++) xr[r] = a->x + (size_t)(i0 + r) * (size_t)k;
  for (int c = 0; c < C; c++) wr[c] = a->w + (size_t)(j0 + c) * (size_t)k;
  for (int r = 0; r < R; r++)
    for (int c = 0; c < C; c++) acc[r][c] = _mm512_setzero_ps();
  /* The GEMV tile prefetches the next tile's C weight rows (contiguous) into L2, as many bytes
   * per step as it reads, like the f32 GEMV tile (cpu_kern_impl.h). */
  const char *pf = NULL;
  if (R == 1 && C == BTC1 && j0 + 2 * C <= a->m) pf = (const char *)(a->w + (size_t)(j0 + C) * (size_t)k);
  /* And the first tile of x rows to meet a weight tile, as the f32 kernels do. */
  if (R > 1 && C == BTC && i0 == pf_row && j0 + 2 * C <= a->m) pf = (const char *)(a->w + (size_t)(j0 + C) * (size_t)k);
  for (int64_t kk = 0; kk < kmain; kk += BL) {
    if (pf) {
      for (int off = 0; off < C * BL * 2; off += 64) __builtin_prefetch(pf + off, 0, 2);
      pf += C * BL * 2;
    }
    /* Named registers, not an array (GCC keeps an array of vectors on the stack). */
    __m512bh x0 = bload(xr[0] + kk), x1 = x0, x2 = x0, x3 = x0, x4 = x0, x5 = x0;
    if (R > 1) x1 = bload(xr[1] + kk);
    if (R > 2) x2 = bload(xr[2] + kk);
    if (R > 3) x3 = bload(xr[3] + kk);
    if (R > 4) x4 = bload(xr[4] + kk);
    if (R > 5) x5 = bload(xr[5] + kk);
    for (int c = 0; c < C; c++) {
      __m512bh wv = bload(wr[c] + kk);
      acc[0][c] = bdot(acc[0][c], x0, wv);
      if (R > 1) acc[1][c] = bdot(acc[1][c], x1, wv);
      if (R > 2) acc[2][c] = bdot(acc[2][c], x2, wv);
      if (R > 3) acc[3][c] = bdot(acc[3][c], x3, wv);
      if (R > 4) acc[4][c] = bdot(acc[4][c], x4, wv);
      if (R > 5) acc[5][c] = bdot(acc[5][c], x5, wv);
    }
  }
  if (kmain < k) { /* the last chunk, zeros past k in both operands */
    for (int c = 0; c < C; c++) {
      __m512bh wv = bload_n(wr[c] + kmain, k - kmain);
      for (int r = 0; r < R; r++) acc[r][c] = bdot(acc[r][c], bload_n(xr[r] + kmain, k - kmain), wv);
    }
  }
  for (int r = 0; r < R; r++)
    for (int c = 0; c < C; c++) {
      float v = cpu_hsum512(acc[r][c]);
      if (a->bias) v += a->bias[j0 + c];
      a->out[(size_t)(i0 + r) * (size_t)a->ldo + (size_t)(j0 + c)] = v;
    }
}

/* One small function per tile shape, so each keeps its chains in registers (cpu_kern_impl.h). */
typedef void (*btile_fn)(const cpu_bf16_mm_args *a, int64_t i0, int64_t j0, int64_t pf_row);
#define BTILE_DEF(R, C, name)                                                                          \
  static __attribute__((noinline)) void name(const cpu_bf16_mm_args *a, int64_t i0, int64_t j0, int64_t pf_row) { \
    btile(a, i0, j0, R, C, pf_row);                                                                    \
  }
#define BTILE_ROWS(C, P) \
  BTILE_DEF(1, C, P##1) BTILE_DEF(2, C, P##2) BTILE_DEF(3, C, P##3) BTILE_DEF(4, C, P##4) BTILE_DEF(5, C, P##5) BTILE_DEF(6, C, P##6)
BTILE_ROWS(BTC, bt_c)
BTILE_ROWS(1, bt_one)
BTILE_DEF(1, BTC1, bt_gemv)
static const btile_fn bt_cols[BTR] = {bt_c1, bt_c2, bt_c3, bt_c4, bt_c5, bt_c6};
static const btile_fn bt_ones[BTR] = {bt_one1, bt_one2, bt_one3, bt_one4, bt_one5, bt_one6};

/* Rows [i0, i1) of x against the weight rows starting at j: full BTR tiles, then the rest. */
static void brows(const cpu_bf16_mm_args *a, int64_t i0, int64_t i1, int64_t j, const btile_fn *fns, int64_t pf_row) {
  int64_t i = i0;
  for (; i + BTR <= i1; i += BTR) fns[BTR - 1](a, i, j, pf_row);
  if (i < i1) fns[i1 - i - 1](a, i, j, pf_row);
}

/* The f32 kernels' blocking (kmatmul): weight rows in blocks that fit the L2 budget, x rows in
 * blocks of the same budget, a single row through the GEMV tile. */
void cpu_bf16_matmul(const cpu_bf16_mm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
  const int64_t k = a->k > 0 ? a->k : 1;
  int64_t jb = B_L2_BUDGET / (k * 2), ib = B_L2_BUDGET / (k * 2);
  jb = jb < BTC1 ? BTC1 : jb > 512 ? 512 : jb - jb % BTC1;
  ib = ib < BTR ? BTR : ib > 256 ? 256 : ib - ib % BTR;
  for (int64_t jj = j0; jj < j1; jj += jb) {
    int64_t je = jj + jb < j1 ? jj + jb : j1;
    for (int64_t ii = i0; ii < i1; ii += ib) {
      int64_t ie = ii + ib < i1 ? ii + ib : i1;
      const int64_t pf_row = ii == i0 ? ii : -1; /* the first pass over a weight block */
      int64_t j = jj;
      if (ie - ii == 1)
        for (; j + BTC1 <= je; j += BTC1) bt_gemv(a, ii, j, pf_row);
      for (; j + BTC <= je; j += BTC) brows(a, ii, ie, j, bt_cols, pf_row);
      for (; j < je; j++) brows(a, ii, ie, j, bt_ones, pf_row);
    }
  }
}

/* vcvtneps2bf16: round to nearest even; NaN stays NaN (quiet). Its denormal inputs become 0,
 * which changes nothing here: the dot-product instruction reads bf16 denormals as 0 anyway. */
void cpu_bf16_convert(uint16_t *dst, const float *src, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256((__m256i *)(dst + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(src + i)));
  if (i < n) {
    __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
    _mm256_mask_storeu_epi16(dst + i, m, (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, src + i)));
  }
}

int cpu_bf16_available(void) { return 1; }
#else
#include "backend/cpu/cpu_kern_bf16.h"
int cpu_bf16_available(void) { return 0; }
void cpu_bf16_matmul(const cpu_bf16_mm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
  (void)a, (void)i0, (void)i1, (void)j0, (void)j1;
}
void cpu_bf16_convert(uint16_t *dst, const float *src, int64_t n) { (void)dst, (void)src, (void)n; }
#endif
