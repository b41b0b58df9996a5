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
 *   K_HSUM(v)       the sum of the lanes by the path's fixed tree
 *   K_ADD, K_SUB, K_DIV  a + b, a - b, a / b
 *   K_MAX(a, b), K_MIN(a, b)  lane max/min, answering b when either is NaN (x86's rule)
 *   K_EXP2I(e)      2^e for integer-valued lanes e in [-126, 127]
 *   K_HMAX(v)       optional: the largest lane
 *   KHVEC, KHL, KH_LOADN, KH_STOREN, KH_SET1, KH_MUL, KH_FMA  optional: a half-width vector
 *                   for small heads (the same operations lane by lane)
 *   K_SCALE2(p, n)  optional: p * 2^n rounded once, for integer-valued n (AVX-512's scalef);
 *                   without it two exact-then-rounding products give the same value
 *   K_LOADN(p, n), K_STOREN(p, v, n)  optional: the first n < KL lanes (the rest read as 0),
 *                   masked; without them tails go through a zero-padded buffer (same values)
 *   KTR, KTC        GEMM tile: rows of x by rows of w (register budget of the path)
 *   KTC1            tile columns when only one row of x is left (GEMV: more weight streams)
 *   KISA            the qv_cpu_isa value; KTABLE the name of the table to define
 *
 * Not a public header: it defines functions and must be included exactly once per path. */
#include <math.h>
#include <string.h>

#define KINLINE static inline __attribute__((always_inline))
#define KMAXR 6
#define KMAXC 8

/* Cache blocking: a task walks its weight rows in blocks whose bytes fit this budget (so a
 * block is re-read from L2 for each block of x rows), and x rows in blocks of the same budget. */
#define K_L2_BUDGET (192 * 1024)

/* The first n < KL floats at p, the other lanes 0. */
KINLINE KVEC kload_n(const float *p, int64_t n) {
#ifdef K_LOADN
  return K_LOADN(p, n);
#else
  float b[KL];
  for (int l = 0; l < KL; l++) b[l] = l < n ? p[l] : 0.0f;
  return K_LOAD(b);
#endif
}

KINLINE void kstore_n(float *p, KVEC v, int64_t n) {
#ifdef K_STOREN
  K_STOREN(p, v, n);
#else
  float b[KL];
  K_STORE(b, v);
  for (int64_t l = 0; l < n; l++) p[l] = b[l];
#endif
}

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
  /* The single-row GEMV tile reads C weight rows side by side. Rows of a few KiB (k = 896 in
   * f16 is 28 cache lines) are too short for the hardware prefetcher, which restarts on every
   * row of every tile; so this tile prefetches the next one (the C rows that follow, contiguous
   * in memory) into L2, spread evenly over its own loop: as many bytes per step as it reads. */
  const char *pf = NULL;
  if (R == 1 && C == KTC1 && j0 + 2 * C <= a->m) pf = (const char *)a->w + (size_t)(j0 + C) * (size_t)k * es;
  /* Likewise the first tile of x rows to meet a weight tile (a->pf_row, the blocking's first
   * pass over a weight block; later passes find the block in L2): without it, that tile waits
   * on memory for every weight line (32-row batched decode: a quarter slower). */
  if (R > 1 && C == KTC && i0 == a->pf_row && j0 + 2 * C <= a->m)
    pf = (const char *)a->w + (size_t)(j0 + C) * (size_t)k * es;
  for (int64_t kk = 0; kk < kmain; kk += KL) {
    if (pf) {
      for (size_t off = 0; off < (size_t)C * KL * es; off += 64) __builtin_prefetch(pf + off, 0, 2);
      pf += (size_t)C * KL * es;
    }
    /* Named registers, not an array: GCC keeps an array of vectors on the stack here. */
    KVEC x0 = K_LOAD(xr[0] + kk), x1 = x0, x2 = x0, x3 = x0, x4 = x0, x5 = x0;
    if (R > 1) x1 = K_LOAD(xr[1] + kk);
    if (R > 2) x2 = K_LOAD(xr[2] + kk);
    if (R > 3) x3 = K_LOAD(xr[3] + kk);
    if (R > 4) x4 = K_LOAD(xr[4] + kk);
    if (R > 5) x5 = K_LOAD(xr[5] + kk);
    for (int c = 0; c < C; c++) {
      KVEC wv = kload_w(wr[c], wt, kk);
      acc[0][c] = K_FMA(x0, wv, acc[0][c]);
      if (R > 1) acc[1][c] = K_FMA(x1, wv, acc[1][c]);
      if (R > 2) acc[2][c] = K_FMA(x2, wv, acc[2][c]);
      if (R > 3) acc[3][c] = K_FMA(x3, wv, acc[3][c]);
      if (R > 4) acc[4][c] = K_FMA(x4, wv, acc[4][c]);
      if (R > 5) acc[5][c] = K_FMA(x5, wv, acc[5][c]);
    }
  }
  if (kmain < k) {
    float wb[KL];
    KVEC xv[KMAXR];
    for (int r = 0; r < R; r++) xv[r] = kload_n(xr[r] + kmain, k - kmain);
    for (int c = 0; c < C; c++) {
      KVEC wv;
      if (wt == QV_DTYPE_F32) {
        wv = kload_n((const float *)wr[c] + kmain, k - kmain);
      } else {
        ktail_w(wb, wr[c], wt, kmain, k - kmain);
        wv = K_LOAD(wb);
      }
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

/* Each tile shape is its own small function (one per R x C x dtype): inlined into one big
 * driver, GCC spills the x vectors; alone, every chain stays in a register. */
typedef void (*ktile_fn)(const cpu_mm_args *a, int64_t i0, int64_t j0);
#define KTILE_DEF(R, C, WT, name) \
  static __attribute__((noinline)) void name(const cpu_mm_args *a, int64_t i0, int64_t j0) { ktile(a, i0, j0, R, C, WT); }
#define KTILE_ROWS(C, WT, P)                                                                                  \
  KTILE_DEF(1, C, WT, P##1) KTILE_DEF(2, C, WT, P##2) KTILE_DEF(3, C, WT, P##3) KTILE_DEF(4, C, WT, P##4)     \
  KTILE_DEF(5, C, WT, P##5) KTILE_DEF(6, C, WT, P##6)
#define KTILE_DTYPE(WT, P) KTILE_ROWS(KTC, WT, P##_c) KTILE_ROWS(1, WT, P##_one) KTILE_DEF(1, KTC1, WT, P##_gemv)
KTILE_DTYPE(QV_DTYPE_F32, kt_f32)
KTILE_DTYPE(QV_DTYPE_BF16, kt_bf16)
KTILE_DTYPE(QV_DTYPE_F16, kt_f16)

/* Tiles of one weight dtype: [0] KTC columns by R = index + 1 rows, [1] one column, and the
 * single-row GEMV tile of KTC1 columns. */
typedef struct ktiles {
  ktile_fn cols[KMAXR], one[KMAXR], gemv;
} ktiles;
#define KTILES(P) {{P##_c1, P##_c2, P##_c3, P##_c4, P##_c5, P##_c6}, {P##_one1, P##_one2, P##_one3, P##_one4, P##_one5, P##_one6}, P##_gemv}
static const ktiles kt_table[3] = {KTILES(kt_f32), KTILES(kt_bf16), KTILES(kt_f16)};

/* Rows [i0, i1) of x against the weight rows starting at j: full KTR tiles, then the rest. */
static void krows(const cpu_mm_args *a, int64_t i0, int64_t i1, int64_t j, const ktile_fn *fns) {
  int64_t i = i0;
  for (; i + KTR <= i1; i += KTR) fns[KTR - 1](a, i, j);
  if (i < i1) fns[i1 - i - 1](a, i, j);
}

static void kmatmul(const cpu_mm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
  const ktiles *t = &kt_table[a->wt == QV_DTYPE_BF16 ? 1 : a->wt == QV_DTYPE_F16 ? 2 : 0];
  const int64_t es = a->wt == QV_DTYPE_F32 ? 4 : 2, k = a->k > 0 ? a->k : 1;
  int64_t jb = K_L2_BUDGET / (k * es), ib = K_L2_BUDGET / (k * 4);
  /* Weight blocks in whole GEMV tiles (KTC1 is a multiple of KTC on every path). */
  jb = jb < KTC1 ? KTC1 : jb > 512 ? 512 : jb - jb % KTC1;
  ib = ib < KTR ? KTR : ib > 256 ? 256 : ib - ib % KTR;
  cpu_mm_args b = *a;
  a = &b;
  for (int64_t jj = j0; jj < j1; jj += jb) {
    int64_t je = jj + jb < j1 ? jj + jb : j1;
    for (int64_t ii = i0; ii < i1; ii += ib) {
      int64_t ie = ii + ib < i1 ? ii + ib : i1;
      int64_t j = jj;
      b.pf_row = ii == i0 ? ii : -1; /* the first pass over a weight block brings it in */
      if (ie - ii == 1) /* a single row: stream more weight rows at once */
        for (; j + KTC1 <= je; j += KTC1) t->gemv(a, ii, j);
      for (; j + KTC <= je; j += KTC) krows(a, ii, ie, j, t->cols);
      for (; j < je; j++) krows(a, ii, ie, j, t->one);
    }
  }
}

/* The same chain as a 1 x 1 tile with f32 weights. */
static float kdot(const float *x, const float *y, int64_t n) {
  const int64_t nmain = n - n % KL;
  KVEC acc = K_ZERO();
  for (int64_t i = 0; i < nmain; i += KL) acc = K_FMA(K_LOAD(x + i), K_LOAD(y + i), acc);
  if (nmain < n) acc = K_FMA(kload_n(x + nmain, n - nmain), kload_n(y + nmain, n - nmain), acc);
  return K_HSUM(acc);
}

/* ---- attention (order and accuracy documented in cpu_kern.h) ---- */

/* round-to-nearest-even of x for |x| < 2^22: adding and removing 1.5 * 2^23 leaves no
 * fraction bits. */
#define KROUND_MAGIC 12582912.0f

KINLINE KVEC kexp(KVEC x) {
  /* max/min keep a NaN in x: the path's K_MAX(a, b) answers b when either is NaN. */
  x = K_MIN(K_SET1(89.0f), K_MAX(K_SET1(-104.0f), x));
  KVEC n = K_SUB(K_FMA(x, K_SET1(1.44269504088896341f), K_SET1(KROUND_MAGIC)), K_SET1(KROUND_MAGIC));
  KVEC r = K_FMA(n, K_SET1(-0.693359375f), x);
  r = K_FMA(n, K_SET1(2.12194440e-4f), r);
  KVEC p = K_SET1(1.0f / 5040.0f);
  p = K_FMA(p, r, K_SET1(1.0f / 720.0f));
  p = K_FMA(p, r, K_SET1(1.0f / 120.0f));
  p = K_FMA(p, r, K_SET1(1.0f / 24.0f));
  p = K_FMA(p, r, K_SET1(1.0f / 6.0f));
  p = K_FMA(p, r, K_SET1(0.5f));
  p = K_FMA(p, r, K_SET1(1.0f));
  p = K_FMA(p, r, K_SET1(1.0f));
  /* n in [-150, 128]: two factors each in [-75, 64], so p * 2^e1 is exact and only the last
   * product rounds (into a denormal, or to 0 or inf). */
#ifdef K_SCALE2
  return K_SCALE2(p, n);
#else
  KVEC e1 = K_SUB(K_ADD(K_MUL(n, K_SET1(0.5f)), K_SET1(KROUND_MAGIC)), K_SET1(KROUND_MAGIC));
  return K_MUL(K_MUL(p, K_EXP2I(e1)), K_EXP2I(K_SUB(n, e1)));
#endif
}

/* o = a / (1 + exp(-a)) * b element by element, exp the softmax's. */
static void ksilu_mul(float *o, const float *a, const float *b, int64_t n) {
  const KVEC one = K_SET1(1.0f);
  int64_t i = 0;
  for (; i + KL <= n; i += KL) {
    const KVEC x = K_LOAD(a + i);
    K_STORE(o + i, K_MUL(K_DIV(x, K_ADD(one, kexp(K_SUB(K_ZERO(), x)))), K_LOAD(b + i)));
  }
  if (i < n) {
    const KVEC x = kload_n(a + i, n - i);
    kstore_n(o + i, K_MUL(K_DIV(x, K_ADD(one, kexp(K_SUB(K_ZERO(), x)))), kload_n(b + i, n - i)), n - i);
  }
}

/* The largest lane (max is exact, so any tree gives the same value; NaN lanes aside). */
KINLINE float khmax(KVEC v) {
#ifdef K_HMAX
  return K_HMAX(v);
#else
  float b[KL], mx;
  K_STORE(b, v);
  mx = b[0];
  for (int l = 1; l < KL; l++) mx = b[l] > mx ? b[l] : mx;
  return mx;
#endif
}

static void kexp_n(float *y, const float *x, int64_t n) {
  int64_t i = 0;
  for (; i + KL <= n; i += KL) K_STORE(y + i, kexp(K_LOAD(x + i)));
  if (i < n) kstore_n(y + i, kexp(kload_n(x + i, n - i)), n - i);
}

/* The key groups of 4 * KL lanes that meet [j0, j1), for R = 1 or 2 query rows: each lane's
 * chain runs over d in order, four chains per row in flight (one per chunk) for the FMA
 * latency, the rows sharing each load of the transposed keys. */
KINLINE void kattn_scores_rows(float *const *sc, const float *const *q, const float *kt, int32_t j0, int32_t j1,
                               int32_t hd, float scale, const int R) {
  const KVEC vs = K_SET1(scale);
  for (int32_t g = j0 / (4 * KL) * (4 * KL); g < j1; g += 4 * KL) {
    const float *kp = kt + g;
    KVEC a0 = K_ZERO(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    for (int32_t d = 0; d < hd; d++, kp += CPU_ATTN_KT) {
      const KVEC k0 = K_LOAD(kp), k1 = K_LOAD(kp + KL), k2 = K_LOAD(kp + 2 * KL), k3 = K_LOAD(kp + 3 * KL);
      const KVEC qa = K_SET1(q[0][d]);
      a0 = K_FMA(qa, k0, a0);
      a1 = K_FMA(qa, k1, a1);
      a2 = K_FMA(qa, k2, a2);
      a3 = K_FMA(qa, k3, a3);
      if (R > 1) {
        const KVEC qb = K_SET1(q[1][d]);
        b0 = K_FMA(qb, k0, b0);
        b1 = K_FMA(qb, k1, b1);
        b2 = K_FMA(qb, k2, b2);
        b3 = K_FMA(qb, k3, b3);
      }
    }
    K_STORE(sc[0] + g, K_MUL(a0, vs));
    K_STORE(sc[0] + g + KL, K_MUL(a1, vs));
    K_STORE(sc[0] + g + 2 * KL, K_MUL(a2, vs));
    K_STORE(sc[0] + g + 3 * KL, K_MUL(a3, vs));
    if (R > 1) {
      K_STORE(sc[1] + g, K_MUL(b0, vs));
      K_STORE(sc[1] + g + KL, K_MUL(b1, vs));
      K_STORE(sc[1] + g + 2 * KL, K_MUL(b2, vs));
      K_STORE(sc[1] + g + 3 * KL, K_MUL(b3, vs));
    }
  }
}

static void kattn_scores(float *sc, const float *q, const float *kt, int32_t j0, int32_t j1, int32_t hd, float scale) {
  kattn_scores_rows(&sc, &q, kt, j0, j1, hd, scale, 1);
}

static __attribute__((noinline)) void kattn_scores2(float *const *sc, const float *const *q, const float *kt, int32_t j0,
                                                    int32_t j1, int32_t hd, float scale) {
  kattn_scores_rows(sc, q, kt, j0, j1, hd, scale, 2);
}

/* o_r = o_r * corr_r, then o_r = fma(p_r[j], v[j], o_r) for j in [j0, j1), for R rows side by
 * side (independent chains sharing each value load); w < KL lanes of the last chunk. */
#ifdef KHVEC
/* kpv_rows for hd <= KHL in half-width vectors: the same element-wise operations (so the same
 * bits), and on CPUs that split a full-width FMA in two (Zen 4) twice the rate. */
KINLINE void kpv_rows_half(float *const *o, const float *corr, const float (*p)[CPU_ATTN_KT], const float *const *v,
                           int32_t j0, int32_t j1, int32_t hd, const int R) {
  KHVEC o0 = KH_MUL(KH_LOADN(o[0], hd), KH_SET1(corr[0])), o1 = o0, o2 = o0, o3 = o0;
  if (R > 1) o1 = KH_MUL(KH_LOADN(o[1], hd), KH_SET1(corr[1]));
  if (R > 2) o2 = KH_MUL(KH_LOADN(o[2], hd), KH_SET1(corr[2]));
  if (R > 3) o3 = KH_MUL(KH_LOADN(o[3], hd), KH_SET1(corr[3]));
  for (int32_t j = j0; j < j1; j++) {
    const KHVEC vv = KH_LOADN(v[j], hd);
    o0 = KH_FMA(KH_SET1(p[0][j]), vv, o0);
    if (R > 1) o1 = KH_FMA(KH_SET1(p[1][j]), vv, o1);
    if (R > 2) o2 = KH_FMA(KH_SET1(p[2][j]), vv, o2);
    if (R > 3) o3 = KH_FMA(KH_SET1(p[3][j]), vv, o3);
  }
  KH_STOREN(o[0], o0, hd);
  if (R > 1) KH_STOREN(o[1], o1, hd);
  if (R > 2) KH_STOREN(o[2], o2, hd);
  if (R > 3) KH_STOREN(o[3], o3, hd);
}
#endif

KINLINE void kpv_rows(float *const *o, const float *corr, const float (*p)[CPU_ATTN_KT], const float *const *v,
                      int32_t j0, int32_t j1, int32_t hd, const int R) {
#ifdef KHVEC
  if (hd <= KHL) {
    kpv_rows_half(o, corr, p, v, j0, j1, hd, R);
    return;
  }
#endif
  for (int32_t c = 0; c < hd; c += KL) {
    const int32_t w = hd - c < KL ? hd - c : KL;
    KVEC o0 = K_MUL(w == KL ? K_LOAD(o[0] + c) : kload_n(o[0] + c, w), K_SET1(corr[0])), o1 = o0, o2 = o0, o3 = o0;
    if (R > 1) o1 = K_MUL(w == KL ? K_LOAD(o[1] + c) : kload_n(o[1] + c, w), K_SET1(corr[1]));
    if (R > 2) o2 = K_MUL(w == KL ? K_LOAD(o[2] + c) : kload_n(o[2] + c, w), K_SET1(corr[2]));
    if (R > 3) o3 = K_MUL(w == KL ? K_LOAD(o[3] + c) : kload_n(o[3] + c, w), K_SET1(corr[3]));
    for (int32_t j = j0; j < j1; j++) {
      const KVEC vv = w == KL ? K_LOAD(v[j] + c) : kload_n(v[j] + c, w);
      o0 = K_FMA(K_SET1(p[0][j]), vv, o0);
      if (R > 1) o1 = K_FMA(K_SET1(p[1][j]), vv, o1);
      if (R > 2) o2 = K_FMA(K_SET1(p[2][j]), vv, o2);
      if (R > 3) o3 = K_FMA(K_SET1(p[3][j]), vv, o3);
    }
    if (w == KL) {
      K_STORE(o[0] + c, o0);
      if (R > 1) K_STORE(o[1] + c, o1);
      if (R > 2) K_STORE(o[2] + c, o2);
      if (R > 3) K_STORE(o[3] + c, o3);
    } else {
      kstore_n(o[0] + c, o0, w);
      if (R > 1) kstore_n(o[1] + c, o1, w);
      if (R > 2) kstore_n(o[2] + c, o2, w);
      if (R > 3) kstore_n(o[3] + c, o3, w);
    }
  }
}

/* One online-softmax step over a tile for rows that see the same keys, four rows at a time. */
static void kattn_tile(const cpu_attn_tile *t) {
  float p[4][CPU_ATTN_KT], corr[KL], mdiff[KL], tsum[4];
  float *o[4];
  const int32_t j0 = t->j0, j1 = t->j1, hd = t->hd;
  /* The chunks of KL lanes that meet [j0, j1) (inside the scored groups). */
  const int32_t c0 = j0 / KL * KL, c1 = (j1 + KL - 1) / KL * KL;
  for (int rb = 0; rb < t->n_rows; rb += 4) {
    const int nr = t->n_rows - rb < 4 ? t->n_rows - rb : 4;
    for (int r = 0; r < nr; r += 2) {
      float *sc2[2] = {p[r], p[r + 1]};
      const float *q2[2] = {t->q + t->rows[rb + r] * hd, NULL};
      if (r + 1 < nr) {
        q2[1] = t->q + t->rows[rb + r + 1] * hd;
        kattn_scores2(sc2, q2, t->kt, j0, j1, hd, t->scale);
      } else {
        kattn_scores(sc2[0], q2[0], t->kt, j0, j1, hd, t->scale);
      }
    }
    for (int r = 0; r < nr; r++) {
      const int64_t row = t->rows[rb + r];
      float *sc = p[r];
      if (t->softcap > 0)
        for (int32_t j = j0; j < j1; j++) sc[j] = t->softcap * tanhf(sc[j] / t->softcap);
      for (int32_t j = c0; j < j0; j++) sc[j] = -INFINITY;
      for (int32_t j = j1; j < c1; j++) sc[j] = -INFINITY;
      KVEC mv = K_LOAD(sc + c0);
      for (int32_t c = c0 + KL; c < c1; c += KL) mv = K_MAX(mv, K_LOAD(sc + c));
      const float m_old = t->m[row], tmax = khmax(mv), mx = tmax > m_old ? tmax : m_old;
      mdiff[r] = m_old == -INFINITY ? -INFINITY : m_old - mx; /* corr = exp(mdiff): 0 for the first tile */
      const KVEC vm = K_SET1(mx);
      KVEC acc = K_ZERO();
      for (int32_t c = c0; c < c1; c += KL) {
        KVEC e = kexp(K_SUB(K_LOAD(sc + c), vm));
        K_STORE(sc + c, e);
        acc = K_ADD(acc, e);
      }
      tsum[r] = K_HSUM(acc);
      t->m[row] = mx;
      o[r] = t->o + row * hd;
    }
    /* The rows' corrections in one exp (every path has at least 4 lanes), then l * corr + T. */
    for (int r = nr; r < KL; r++) mdiff[r] = 0.0f;
    K_STORE(corr, kexp(K_LOAD(mdiff)));
    for (int r = 0; r < nr; r++) {
      const int64_t row = t->rows[rb + r];
      t->l[row] = t->l[row] * corr[r] + (double)tsum[r];
    }
    switch (nr) {
    case 1: kpv_rows(o, corr, (const float(*)[CPU_ATTN_KT])p, t->v, j0, j1, hd, 1); break;
    case 2: kpv_rows(o, corr, (const float(*)[CPU_ATTN_KT])p, t->v, j0, j1, hd, 2); break;
    case 3: kpv_rows(o, corr, (const float(*)[CPU_ATTN_KT])p, t->v, j0, j1, hd, 3); break;
    default: kpv_rows(o, corr, (const float(*)[CPU_ATTN_KT])p, t->v, j0, j1, hd, 4); break;
    }
  }
}

const cpu_kernels KTABLE = {
    .isa = KISA,
    .lanes = KL,
    .matmul = kmatmul,
    .dot = kdot,
    .exp = kexp_n,
    .silu_mul = ksilu_mul,
    .attn_scores = kattn_scores,
    .attn_tile = kattn_tile,
};
