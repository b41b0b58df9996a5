/* The CPU kernels written once against a small vector vocabulary; each cpu_kern_<isa>.c
 * defines the vocabulary and includes this file (compiled with its own target flags). The
 * reduction order is documented in cpu_kern.h; every function here keeps it.
 *
 * The including file defines:
 *   KVEC            the vector type, KL lanes of float
 *   K_ZERO()        all lanes 0
 *   K_LOAD(p)       KL floats from p (unaligned)
 *   K_LOAD_BF16(p)  KL bf16 (uint16_t) from p, widened to float
 *   K_LOAD_F16(p)   KL f16 (uint16_t) from p, widened to float
 *   K_STORE(p, v)   KL floats to p
 *   K_SET1(s)       all lanes s
 *   K_MUL(a, b)     a * b
 *   K_FMA(a, b, c)  a * b + c (fused where the path has it)
 *   K_SFMA(a, b, c) the scalar counterpart, for loop tails of elementwise kernels
 *   K_HSUM(v)       the sum of the lanes by the path's fixed tree
 *   KTR, KTC        GEMM tile: rows of x by rows of w (register budget of the path)
 *   KTC1            tile columns when only one row of x is left (GEMV: more weight streams)
 *   KISA            the qv_cpu_isa value; KTABLE the name of the table to define
 *
 * Not a public header: it defines functions and must be included exactly once per path. */
#include <string.h>

#define KINLINE static inline __attribute__((always_inline))
#define KMAXR 4
#define KMAXC 8

/* Cache blocking: a task walks its weight rows in blocks whose bytes fit this budget (so a
 * block is re-read from L2 for each block of x rows), and x rows in blocks of the same budget. */
#define K_L2_BUDGET (192 * 1024)

KINLINE KVEC kload_w(const void *w, qv_dtype wt, int64_t off) {
  if (wt == QV_DTYPE_BF16) return K_LOAD_BF16((const uint16_t *)w + off);
  if (wt == QV_DTYPE_F16) return K_LOAD_F16((const uint16_t *)w + off);
  return K_LOAD((const float *)w + off);
}

/* Widens the n < KL trailing weights at w + off into buf[KL], zero-padded. */
KINLINE void ktail_w(float *buf, const void *w, qv_dtype wt, int64_t off, int64_t n) {
  for (int l = 0; l < KL; l++) buf[l] = 0.0f;
  for (int64_t l = 0; l < n; l++) {
    if (wt == QV_DTYPE_BF16) buf[l] = qv_bf16_to_f32(((const uint16_t *)w)[off + l]);
    else if (wt == QV_DTYPE_F16) buf[l] = qv_f16_to_f32(((const uint16_t *)w)[off + l]);
    else buf[l] = ((const float *)w)[off + l];
  }
}

/* One R x C tile: out[i0 + r][j0 + c] for r < R, c < C. R, C and wt are constants at every call
 * site, so each instantiation keeps its R*C accumulator chains in registers. */
KINLINE void ktile(const cpu_mm_args *a, int64_t i0, int64_t j0, const int R, const int C, const qv_dtype wt) {
  const int64_t k = a->k, kmain = k - k % KL;
  const size_t es = wt == QV_DTYPE_F32 ? 4 : 2;
  const float *xr[KMAXR];
  const void *wr[KMAXC];
  KVEC acc[KMAXR][KMAXC];
  for (int r = 0; r < R; r++) xr[r] = a->x + (i0 + r) * a->ldx;
  for (int c = 0; c < C; c++) wr[c] = (const char *)a->w + (size_t)(j0 + c) * (size_t)k * es;
  for (int r = 0; r < R; r++)
    for (int c = 0; c < C; c++) acc[r][c] = K_ZERO();
  for (int64_t kk = 0; kk < kmain; kk += KL) {
    KVEC xv[KMAXR];
    for (int r = 0; r < R; r++) xv[r] = K_LOAD(xr[r] + kk);
    for (int c = 0; c < C; c++) {
      KVEC wv = kload_w(wr[c], wt, kk);
      for (int r = 0; r < R; r++) acc[r][c] = K_FMA(xv[r], wv, acc[r][c]);
    }
  }
  if (kmain < k) {
    float xb[KMAXR][KL], wb[KL];
    KVEC xv[KMAXR];
    for (int r = 0; r < R; r++) {
      for (int l = 0; l < KL; l++) xb[r][l] = kmain + l < k ? xr[r][kmain + l] : 0.0f;
      xv[r] = K_LOAD(xb[r]);
    }
    for (int c = 0; c < C; c++) {
      ktail_w(wb, wr[c], wt, kmain, k - kmain);
      KVEC wv = K_LOAD(wb);
      for (int r = 0; r < R; r++) acc[r][c] = K_FMA(xv[r], wv, acc[r][c]);
    }
  }
  for (int r = 0; r < R; r++)
    for (int c = 0; c < C; c++) {
      float v = K_HSUM(acc[r][c]);
      if (a->bias) v += a->bias[j0 + c];
      a->out[(i0 + r) * a->ldo + j0 + c] = v;
    }
}

/* Rows [i0, i1) of x against C weight rows starting at j: full KTR tiles, then the remainder. */
KINLINE void krows(const cpu_mm_args *a, int64_t i0, int64_t i1, int64_t j, const int C, const qv_dtype wt) {
  int64_t i = i0;
  for (; i + KTR <= i1; i += KTR) ktile(a, i, j, KTR, C, wt);
  switch (i1 - i) {
  case 1: ktile(a, i, j, 1, C, wt); break;
  case 2: if (KTR > 2) ktile(a, i, j, 2 < KTR ? 2 : 1, C, wt); break;
  case 3: if (KTR > 3) ktile(a, i, j, 3 < KTR ? 3 : 1, C, wt); break;
  default: break;
  }
}

KINLINE void kmatmul_wt(const cpu_mm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1, const qv_dtype wt) {
  const int64_t es = wt == QV_DTYPE_F32 ? 4 : 2, k = a->k > 0 ? a->k : 1;
  int64_t jb = K_L2_BUDGET / (k * es), ib = K_L2_BUDGET / (k * 4);
  jb = jb < KTC ? KTC : jb > 512 ? 512 : jb - jb % KTC;
  ib = ib < KTR ? KTR : ib > 256 ? 256 : ib - ib % KTR;
  for (int64_t jj = j0; jj < j1; jj += jb) {
    int64_t je = jj + jb < j1 ? jj + jb : j1;
    for (int64_t ii = i0; ii < i1; ii += ib) {
      int64_t ie = ii + ib < i1 ? ii + ib : i1;
      int64_t j = jj;
      if (ie - ii == 1) /* a single row: stream more weight rows at once */
        for (; j + KTC1 <= je; j += KTC1) ktile(a, ii, j, 1, KTC1, wt);
      for (; j + KTC <= je; j += KTC) krows(a, ii, ie, j, KTC, wt);
      for (; j < je; j++) krows(a, ii, ie, j, 1, wt);
    }
  }
}

static void kmatmul(const cpu_mm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
  switch (a->wt) {
  case QV_DTYPE_BF16: kmatmul_wt(a, i0, i1, j0, j1, QV_DTYPE_BF16); break;
  case QV_DTYPE_F16: kmatmul_wt(a, i0, i1, j0, j1, QV_DTYPE_F16); break;
  default: kmatmul_wt(a, i0, i1, j0, j1, QV_DTYPE_F32); break;
  }
}

/* The same chain as a 1 x 1 tile with f32 weights. */
static float kdot(const float *x, const float *y, int64_t n) {
  const int64_t nmain = n - n % KL;
  KVEC acc = K_ZERO();
  for (int64_t i = 0; i < nmain; i += KL) acc = K_FMA(K_LOAD(x + i), K_LOAD(y + i), acc);
  if (nmain < n) {
    float xb[KL], yb[KL];
    for (int l = 0; l < KL; l++) {
      xb[l] = nmain + l < n ? x[nmain + l] : 0.0f;
      yb[l] = nmain + l < n ? y[nmain + l] : 0.0f;
    }
    acc = K_FMA(K_LOAD(xb), K_LOAD(yb), acc);
  }
  return K_HSUM(acc);
}

static void kscale_axpy(float *y, float s, float a, const float *x, int64_t n) {
  const int64_t nmain = n - n % KL;
  KVEC vs = K_SET1(s), va = K_SET1(a);
  for (int64_t i = 0; i < nmain; i += KL) K_STORE(y + i, K_FMA(va, K_LOAD(x + i), K_MUL(K_LOAD(y + i), vs)));
  for (int64_t i = nmain; i < n; i++) y[i] = K_SFMA(a, x[i], y[i] * s);
}

const cpu_kernels KTABLE = {
    .isa = KISA,
    .lanes = KL,
    .matmul = kmatmul,
    .dot = kdot,
    .scale_axpy = kscale_axpy,
};
