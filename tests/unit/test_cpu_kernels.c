/* The CPU backend's SIMD paths (cpu_kern.h), each one this machine can run: matmul with F32,
 * BF16 and F16 weights against float64 on random inputs (odd sizes for every tail), and the
 * fixed reduction order: any partition of the output into kernel calls, the GEMV path for a
 * single row, and the backend with 1 or 2 threads give the same bits. Also the ISA selection
 * through QUIVER_CPU_ISA. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "backend/cpu/cpu_kern.h"
#include "core/cpu_features.h"

static double urand(unsigned *s) {
  *s = *s * 1103515245u + 12345u;
  return ((*s >> 8) & 0xffffff) / (double)0x1000000 * 2.0 - 1.0; /* [-1, 1) */
}

/* Random weights of dtype dt in w (raw), and their exact f32 values in wf. */
static void make_weights(qv_dtype dt, int64_t n, unsigned *s, void *w, float *wf) {
  for (int64_t i = 0; i < n; i++) {
    float v = (float)(urand(s) * 0.5);
    if (v == 0) v = 1e-3f;
    if (dt == QV_DTYPE_BF16) {
      ((uint16_t *)w)[i] = qv_f32_to_bf16(v);
      wf[i] = qv_bf16_to_f32(((uint16_t *)w)[i]);
    } else if (dt == QV_DTYPE_F16) {
      ((uint16_t *)w)[i] = qv_f32_to_f16(v);
      wf[i] = qv_f16_to_f32(((uint16_t *)w)[i]);
    } else {
      ((float *)w)[i] = v;
      wf[i] = v;
    }
  }
}

static void check_path(qv_cpu_isa isa, qv_dtype dt) {
  const cpu_kernels *kern = cpu_kernels_for(isa);
  cr_assert(kern, "no kernels for %s", qv_cpu_isa_name(isa));
  unsigned s = 11 + (unsigned)isa * 3 + (unsigned)dt;
  const int64_t n = 13, m = 37, k = 203; /* tails of every lane count and tile shape */
  float *x = malloc(sizeof(float) * n * k), *wf = malloc(sizeof(float) * m * k), *bias = malloc(sizeof(float) * m);
  void *w = malloc(sizeof(float) * m * k);
  float *o1 = malloc(sizeof(float) * n * m), *o2 = malloc(sizeof(float) * n * m);
  for (int64_t i = 0; i < n * k; i++) x[i] = (float)urand(&s) + 1e-3f;
  for (int64_t i = 0; i < m; i++) bias[i] = (float)urand(&s);
  make_weights(dt, m * k, &s, w, wf);
  for (int64_t i = 0; i < n * m; i++) o1[i] = o2[i] = NAN;
  cpu_mm_args a = {.out = o1, .x = x, .w = w, .bias = bias, .wt = dt, .n = n, .m = m, .k = k, .ldo = m, .ldx = k};
  kern->matmul(&a, 0, n, 0, m);
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j < m; j++) {
      double ref = bias[j];
      for (int64_t t = 0; t < k; t++) ref += (double)x[i * k + t] * wf[j * k + t];
      cr_assert(fabs(o1[i * m + j] - ref) <= 1e-5 * (1 + fabs(ref)), "%s %s (%lld,%lld): %g vs %g",
                qv_cpu_isa_name(isa), qv_dtype_name(dt), (long long)i, (long long)j, o1[i * m + j], ref);
    }
  /* Any partition gives the same bits: single rows (GEMV), odd row/column blocks. */
  a.out = o2;
  for (int64_t i = 0; i < n; i++) kern->matmul(&a, i, i + 1, 0, m);
  cr_assert_eq(memcmp(o1, o2, sizeof(float) * n * m), 0, "%s %s: GEMV rows differ from the GEMM",
               qv_cpu_isa_name(isa), qv_dtype_name(dt));
  for (int64_t i = 0; i < n * m; i++) o2[i] = NAN;
  static const int64_t cut_i[] = {0, 2, 7, 8, 13}, cut_j[] = {0, 1, 6, 19, 30, 37};
  for (int bi = 0; bi < 4; bi++)
    for (int bj = 0; bj < 5; bj++) kern->matmul(&a, cut_i[bi], cut_i[bi + 1], cut_j[bj], cut_j[bj + 1]);
  cr_assert_eq(memcmp(o1, o2, sizeof(float) * n * m), 0, "%s %s: blocked partition differs", qv_cpu_isa_name(isa),
               qv_dtype_name(dt));
  /* F32 weights holding the same values give the same bits (widening is exact). */
  if (dt != QV_DTYPE_F32) {
    for (int64_t i = 0; i < n * m; i++) o2[i] = NAN;
    a.w = wf;
    a.wt = QV_DTYPE_F32;
    kern->matmul(&a, 0, n, 0, m);
    cr_assert_eq(memcmp(o1, o2, sizeof(float) * n * m), 0, "%s %s: differs from the same weights in F32",
                 qv_cpu_isa_name(isa), qv_dtype_name(dt));
  }
  /* dot is the 1 x 1 chain with F32 weights. */
  float d = kern->dot(x, wf, k);
  a = (cpu_mm_args){.out = o2, .x = x, .w = wf, .wt = QV_DTYPE_F32, .n = 1, .m = 1, .k = k, .ldo = 1, .ldx = k};
  kern->matmul(&a, 0, 1, 0, 1);
  cr_assert_eq(memcmp(&d, o2, sizeof d), 0, "%s: dot differs from the matmul chain", qv_cpu_isa_name(isa));
  free(x), free(wf), free(bias), free(w), free(o1), free(o2);
}

Test(cpu_kernels, every_path_every_dtype) {
  int n_paths = 0;
  for (int isa = 0; isa < QV_CPU_ISA_COUNT; isa++) {
    if (!qv_cpu_isa_supported((qv_cpu_isa)isa)) continue;
    n_paths++;
    check_path((qv_cpu_isa)isa, QV_DTYPE_F32);
    check_path((qv_cpu_isa)isa, QV_DTYPE_BF16);
    check_path((qv_cpu_isa)isa, QV_DTYPE_F16);
  }
  cr_assert_geq(n_paths, 1);
  cr_log_info("checked %d SIMD paths", n_paths);
}

/* ulp distance between two non-negative floats (their bit patterns are ordered). */
static int64_t ulp_diff(float a, float b) {
  int32_t ia, ib;
  memcpy(&ia, &a, sizeof ia);
  memcpy(&ib, &b, sizeof ib);
  return ia > ib ? (int64_t)ia - ib : (int64_t)ib - ia;
}

/* The softmax's exp against libm's expf over its input range x <= 0: random inputs across
 * [-104, 0] and densely near 0, denormal results, and the edge cases. */
Test(cpu_kernels, softmax_exp_against_libm) {
  enum { N = 200000 };
  float *x = malloc(sizeof(float) * N), *y = malloc(sizeof(float) * N);
  for (int isa = 0; isa < QV_CPU_ISA_COUNT; isa++) {
    if (!qv_cpu_isa_supported((qv_cpu_isa)isa)) continue;
    const cpu_kernels *kern = cpu_kernels_for((qv_cpu_isa)isa);
    unsigned s = 77;
    for (int i = 0; i < N; i++) {
      double u = (urand(&s) + 1) / 2; /* [0, 1) */
      x[i] = (float)(i % 4 == 0 ? -104 * u : i % 4 == 1 ? -8 * u : i % 4 == 2 ? -u * 1e-3 : -87 - 17 * u);
    }
    static const float edge[] = {0.0f, -0.0f, -1e-30f, -1e-7f, -0.5f, -1.0f, -87.33654f, -87.34f, -100.0f, -103.28f,
                                 -103.98f, -104.0f, -150.0f, -1e30f};
    for (size_t i = 0; i < sizeof edge / sizeof edge[0]; i++) x[i] = edge[i];
    for (int i = 0; i < N; i++) y[i] = NAN;
    kern->exp(y, x, N - 3); /* odd n: the tail lanes too */
    kern->exp(y + N - 3, x + N - 3, 3);
    int64_t worst = 0;
    float worst_x = 0;
    for (int i = 0; i < N; i++) {
      int64_t d = ulp_diff(y[i], expf(x[i]));
      if (d > worst) worst = d, worst_x = x[i];
    }
    cr_assert_leq(worst, 2, "%s: exp %lld ulp from expf at x = %.9g", qv_cpu_isa_name((qv_cpu_isa)isa),
                  (long long)worst, worst_x);
    cr_log_info("%s: softmax exp within %lld ulp of expf", qv_cpu_isa_name((qv_cpu_isa)isa), (long long)worst);
    float e[4] = {0.0f, -INFINITY, NAN, -1e30f}, r[4];
    kern->exp(r, e, 4);
    cr_assert_eq(r[0], 1.0f, "%s: exp(0) = %g", qv_cpu_isa_name((qv_cpu_isa)isa), r[0]);
    cr_assert(r[1] == 0.0f && !signbit(r[1]) && r[3] == 0.0f, "%s: exp(-inf) = %g", qv_cpu_isa_name((qv_cpu_isa)isa), r[1]);
    cr_assert(isnan(r[2]), "%s: exp(NaN) = %g", qv_cpu_isa_name((qv_cpu_isa)isa), r[2]);
  }
  free(x), free(y);
}

/* silu_mul with that exp: close to the float64 formula over a wide range, every tail length,
 * and the limits (a very negative gate gives -0 as a / (1 + inf) does). */
Test(cpu_kernels, silu_mul) {
  enum { N = 1000 };
  float a[N], b[N], o[N];
  unsigned s = 3;
  for (int i = 0; i < N; i++) a[i] = (float)(urand(&s) * 40), b[i] = (float)urand(&s);
  a[0] = -200.0f, a[1] = 200.0f, a[2] = 0.0f;
  for (int isa = 0; isa < QV_CPU_ISA_COUNT; isa++) {
    if (!qv_cpu_isa_supported((qv_cpu_isa)isa)) continue;
    const cpu_kernels *kern = cpu_kernels_for((qv_cpu_isa)isa);
    for (int64_t n = N - 17; n <= N; n++) {
      for (int i = 0; i < N; i++) o[i] = NAN;
      kern->silu_mul(o, a, b, n);
      for (int64_t i = 0; i < N; i++) {
        if (i >= n) {
          cr_assert(isnan(o[i]), "%s: wrote past n", qv_cpu_isa_name((qv_cpu_isa)isa));
          continue;
        }
        double ref = a[i] / (1.0 + exp(-(double)a[i])) * b[i];
        cr_assert(fabs(o[i] - ref) <= 1e-6 * (1 + fabs(ref)), "%s [%lld]: %g vs %g", qv_cpu_isa_name((qv_cpu_isa)isa),
                  (long long)i, o[i], ref);
      }
      cr_assert(o[0] == 0.0f && signbit(o[0]) == signbit(-200.0f * b[0]), "%s: silu(-200) = %g",
                qv_cpu_isa_name((qv_cpu_isa)isa), o[0]);
    }
  }
}

/* The documented score chain for one key: acc = fma(q[d], k[d], acc) over d in order (the
 * portable path: acc + q*k with two roundings), then times scale. */
static float score_ref(qv_cpu_isa isa, const float *q, const float *k, int32_t hd, float scale) {
  float acc = 0.0f;
  for (int32_t d = 0; d < hd; d++) {
    if (isa == QV_CPU_ISA_PORTABLE) {
      float prod = q[d] * k[d];
      acc = acc + prod;
    } else {
      acc = fmaf(q[d], k[d], acc);
    }
  }
  return acc * scale;
}

/* Random K/V tile, n_rows query rows; kt its keys transposed. */
typedef struct tile_data {
  float *k, *v, *kt, *q; /* [KT][hd], [KT][hd], [hd][KT], [rows][hd] */
  const float *kp[CPU_ATTN_KT], *vp[CPU_ATTN_KT];
} tile_data;

static void tile_make(tile_data *t, int32_t hd, int rows, unsigned *s) {
  t->k = malloc(sizeof(float) * CPU_ATTN_KT * hd);
  t->v = malloc(sizeof(float) * CPU_ATTN_KT * hd);
  t->kt = malloc(sizeof(float) * CPU_ATTN_KT * hd);
  t->q = malloc(sizeof(float) * rows * hd);
  for (int32_t i = 0; i < CPU_ATTN_KT * hd; i++) t->k[i] = (float)urand(s), t->v[i] = (float)urand(s), t->kt[i] = NAN;
  for (int32_t i = 0; i < rows * hd; i++) t->q[i] = (float)urand(s) * 2;
  for (int j = 0; j < CPU_ATTN_KT; j++) t->kp[j] = t->k + j * hd, t->vp[j] = t->v + j * hd;
  for (int j = 0; j < CPU_ATTN_KT; j++) /* the transposed tile, as attention copies it from the cache */
    for (int32_t d = 0; d < hd; d++) t->kt[(int64_t)d * CPU_ATTN_KT + j] = t->kp[j][d];
}

static void tile_free(tile_data *t) { free(t->k), free(t->v), free(t->kt), free(t->q); }

/* Scores over the transposed tile equal the documented chain bit for bit, for every key of
 * the groups the range meets, at head sizes below, at and above every lane count. */
Test(cpu_kernels, attention_scores_fixed_order) {
  static const int32_t hds[] = {3, 8, 16, 64, 67, 80, 128, 256};
  for (int isa = 0; isa < QV_CPU_ISA_COUNT; isa++) {
    if (!qv_cpu_isa_supported((qv_cpu_isa)isa)) continue;
    const cpu_kernels *kern = cpu_kernels_for((qv_cpu_isa)isa);
    for (size_t h = 0; h < sizeof hds / sizeof hds[0]; h++) {
      int32_t hd = hds[h];
      unsigned s = 5 + (unsigned)hd;
      tile_data t;
      tile_make(&t, hd, 1, &s);
      static const int32_t ranges[][2] = {{0, 64}, {0, 1}, {5, 6}, {17, 40}, {63, 64}, {31, 33}};
      for (size_t r = 0; r < sizeof ranges / sizeof ranges[0]; r++) {
        float sc[CPU_ATTN_KT];
        for (int j = 0; j < CPU_ATTN_KT; j++) sc[j] = NAN;
        kern->attn_scores(sc, t.q, t.kt, ranges[r][0], ranges[r][1], hd, 0.125f);
        for (int32_t j = ranges[r][0]; j < ranges[r][1]; j++) {
          float ref = score_ref((qv_cpu_isa)isa, t.q, t.k + j * hd, hd, 0.125f);
          cr_assert_eq(memcmp(&ref, &sc[j], sizeof ref), 0, "%s hd %d key %d: %.9g vs %.9g",
                       qv_cpu_isa_name((qv_cpu_isa)isa), hd, j, sc[j], ref);
        }
      }
      tile_free(&t);
    }
  }
}

/* One tile step: rows alone or side by side with others give the same bits, and match the
 * softmax in double; then a second tile's step rescales the first correctly. */
Test(cpu_kernels, attention_tile_step) {
  static const int32_t hds[] = {3, 8, 16, 64, 80, 128, 256};
  enum { R = 7 };
  for (int isa = 0; isa < QV_CPU_ISA_COUNT; isa++) {
    if (!qv_cpu_isa_supported((qv_cpu_isa)isa)) continue;
    const cpu_kernels *kern = cpu_kernels_for((qv_cpu_isa)isa);
    for (size_t h = 0; h < sizeof hds / sizeof hds[0]; h++) {
      int32_t hd = hds[h];
      unsigned s = 9 + (unsigned)hd;
      tile_data t;
      tile_make(&t, hd, R, &s);
      float *o = malloc(sizeof(float) * R * hd), *o1 = malloc(sizeof(float) * R * hd), m[R], m1[R];
      double l[R], l1[R];
      int64_t rows[R], one;
      for (int r = 0; r < R; r++) rows[r] = R - 1 - r; /* any order */
      static const int32_t ranges[][2] = {{0, 64}, {3, 41}, {63, 64}, {0, 64}};
      for (size_t g = 0; g < 4; g++) {
        int32_t j0 = ranges[g][0], j1 = ranges[g][1];
        const float cap = g == 3 ? 1.5f : 0.0f; /* the last with a softcap */
        for (int r = 0; r < R; r++) m[r] = m1[r] = -INFINITY, l[r] = l1[r] = 0;
        memset(o, 0, sizeof(float) * R * hd);
        memset(o1, 0, sizeof(float) * R * hd);
        cpu_attn_tile at = {.kt = t.kt, .v = t.vp, .j0 = j0, .j1 = j1, .hd = hd, .scale = 0.3f, .softcap = cap,
                            .q = t.q, .o = o, .m = m, .l = l, .rows = rows, .n_rows = R};
        kern->attn_tile(&at);
        at.o = o1, at.m = m1, at.l = l1, at.rows = &one, at.n_rows = 1;
        for (one = 0; one < R; one++) kern->attn_tile(&at);
        cr_assert(!memcmp(o, o1, sizeof(float) * R * hd) && !memcmp(m, m1, sizeof m) && !memcmp(l, l1, sizeof l),
                  "%s hd %d: a row's bits depend on its neighbours", qv_cpu_isa_name((qv_cpu_isa)isa), hd);
        for (int r = 0; r < R; r++) {
          double sc[CPU_ATTN_KT], mx = -INFINITY, sum = 0;
          for (int32_t j = j0; j < j1; j++) {
            sc[j] = 0;
            for (int32_t d = 0; d < hd; d++) sc[j] += (double)t.q[r * hd + d] * t.k[j * hd + d];
            sc[j] *= 0.3;
            if (cap > 0) sc[j] = cap * tanh(sc[j] / cap);
            if (sc[j] > mx) mx = sc[j];
          }
          for (int32_t j = j0; j < j1; j++) sum += exp(sc[j] - mx);
          cr_assert(fabs(m[r] - mx) <= 1e-5 * (1 + fabs(mx)) && fabs(l[r] - sum) <= 1e-5 * sum, "%s hd %d: m/l",
                    qv_cpu_isa_name((qv_cpu_isa)isa), hd);
          for (int32_t d = 0; d < hd; d++) {
            double ref = 0;
            for (int32_t j = j0; j < j1; j++) ref += exp(sc[j] - mx) / sum * t.v[j * hd + d];
            cr_assert(fabs(o[r * hd + d] / l[r] - ref) <= 2e-5, "%s hd %d row %d [%d]: %g vs %g",
                      qv_cpu_isa_name((qv_cpu_isa)isa), hd, r, d, o[r * hd + d] / l[r], ref);
          }
        }
      }
      /* Two steps: keys [0, 64) then the same tile as keys [0, 30) with larger scores: the
       * result is the softmax over both (94 terms). */
      for (int r = 0; r < R; r++) m[r] = -INFINITY, l[r] = 0;
      memset(o, 0, sizeof(float) * R * hd);
      cpu_attn_tile at = {.kt = t.kt, .v = t.vp, .j0 = 0, .j1 = 64, .hd = hd, .scale = 0.3f, .q = t.q, .o = o,
                          .m = m, .l = l, .rows = rows, .n_rows = R};
      kern->attn_tile(&at);
      at.j1 = 30, at.scale = 0.6f;
      kern->attn_tile(&at);
      for (int r = 0; r < R; r++)
        for (int32_t d = 0; d < hd; d++) {
          double sc[94], mx = -INFINITY, sum = 0, ref = 0;
          for (int j = 0; j < 94; j++) {
            int kj = j < 64 ? j : j - 64;
            sc[j] = 0;
            for (int32_t e = 0; e < hd; e++) sc[j] += (double)t.q[r * hd + e] * t.k[kj * hd + e];
            sc[j] *= j < 64 ? 0.3 : 0.6;
            if (sc[j] > mx) mx = sc[j];
          }
          for (int j = 0; j < 94; j++) sum += exp(sc[j] - mx);
          for (int j = 0; j < 94; j++) ref += exp(sc[j] - mx) / sum * t.v[(j < 64 ? j : j - 64) * hd + d];
          cr_assert(fabs(o[r * hd + d] / l[r] - ref) <= 2e-5, "%s hd %d two tiles: %g vs %g",
                    qv_cpu_isa_name((qv_cpu_isa)isa), hd, o[r * hd + d] / l[r], ref);
        }
      free(o), free(o1);
      tile_free(&t);
    }
  }
}

/* Through the backend: the forced path is used, and 1 or 2 threads give the same bits. */
static void backend_matmul(const char *isa, int threads, const qv_tensor *xh, const void *wh, qv_dtype dt, float *out) {
  setenv("QUIVER_CPU_ISA", isa, 1);
  qv_backend *be;
  qv_error e = {0};
  cr_assert_eq(qv_backend_create("cpu", &(qv_backend_opts){.n_threads = threads}, &be, &e), 0, "%s", e.msg);
  qv_tensor x, w, o;
  cr_assert_eq(be->ops->alloc(be, QV_DTYPE_F32, xh->rows, xh->cols, &x), 0);
  cr_assert_eq(be->ops->alloc(be, dt, 300, xh->cols, &w), 0);
  cr_assert_eq(be->ops->alloc(be, QV_DTYPE_F32, xh->rows, 300, &o), 0);
  memcpy(x.data, xh->data, sizeof(float) * (size_t)(xh->rows * xh->cols));
  cr_assert_eq(be->ops->upload(be, &w, wh, dt), 0, "%s", be->last_error.msg);
  cr_assert_eq(be->ops->matmul(be, &o, &x, &w, NULL), 0, "%s", be->last_error.msg);
  cr_assert_eq(be->ops->download_f32(be, &o, out), 0);
  be->ops->free(be, &x), be->ops->free(be, &w), be->ops->free(be, &o);
  qv_backend_destroy(be);
}

Test(cpu_kernels, backend_threads_and_forced_paths) {
  unsigned s = 9;
  const int64_t n = 64, k = 129;
  float *xd = malloc(sizeof(float) * n * k), *wf = malloc(sizeof(float) * 300 * k);
  uint16_t *wh = malloc(sizeof(uint16_t) * 300 * k);
  for (int64_t i = 0; i < n * k; i++) xd[i] = (float)urand(&s);
  make_weights(QV_DTYPE_BF16, 300 * k, &s, wh, wf);
  qv_tensor xh = {.data = xd, .dtype = QV_DTYPE_F32, .rows = n, .cols = k};
  float *o1 = malloc(sizeof(float) * n * 300), *o2 = malloc(sizeof(float) * n * 300);
  for (int isa = 0; isa < QV_CPU_ISA_COUNT; isa++) {
    if (!qv_cpu_isa_supported((qv_cpu_isa)isa)) continue;
    const char *name = qv_cpu_isa_name((qv_cpu_isa)isa);
    backend_matmul(name, 1, &xh, wh, QV_DTYPE_BF16, o1);
    backend_matmul(name, 2, &xh, wh, QV_DTYPE_BF16, o2);
    cr_assert_eq(memcmp(o1, o2, sizeof(float) * n * 300), 0, "%s: 1 vs 2 threads", name);
    /* The forced path is the one used: the same as calling its kernel directly. */
    cpu_mm_args a = {.out = o2, .x = xd, .w = wh, .wt = QV_DTYPE_BF16, .n = n, .m = 300, .k = k, .ldo = 300, .ldx = k};
    cpu_kernels_for((qv_cpu_isa)isa)->matmul(&a, 0, n, 0, 300);
    cr_assert_eq(memcmp(o1, o2, sizeof(float) * n * 300), 0, "%s: backend did not use the forced path", name);
  }
  free(xd), free(wf), free(wh), free(o1), free(o2);
}

Test(cpu_kernels, isa_override_is_validated) {
  qv_backend *be = NULL;
  qv_error e = {0};
  setenv("QUIVER_CPU_ISA", "sse9", 1);
  cr_assert_eq(qv_backend_create("cpu", NULL, &be, &e), QV_EINVAL);
  cr_assert(strstr(e.msg, "QUIVER_CPU_ISA"), "%s", e.msg);
  for (int isa = 0; isa < QV_CPU_ISA_COUNT; isa++) {
    if (qv_cpu_isa_supported((qv_cpu_isa)isa)) continue;
    setenv("QUIVER_CPU_ISA", qv_cpu_isa_name((qv_cpu_isa)isa), 1);
    e = (qv_error){0};
    cr_assert_eq(qv_backend_create("cpu", NULL, &be, &e), QV_EINVAL, "%s accepted", qv_cpu_isa_name((qv_cpu_isa)isa));
  }
  setenv("QUIVER_CPU_ISA", "auto", 1);
  cr_assert_eq(qv_backend_create("cpu", NULL, &be, &e), 0, "%s", e.msg);
  qv_backend_destroy(be);
  char desc[256];
  qv_cpu_features_describe(desc, sizeof desc);
  cr_assert(strlen(desc) > 3);
}

/* Attention over many key tiles (300 cached positions in scattered 16-token blocks, GQA, with
 * and without a sliding window that cuts tiles): against float64, and each query row of a
 * 37-token prefill chunk bit-identical to the same token run alone as a decode. */
static void long_attention(int32_t window) {
  setenv("QUIVER_CPU_ISA", "auto", 1);
  qv_backend *be;
  qv_error e = {0};
  cr_assert_eq(qv_backend_create("cpu", &(qv_backend_opts){.n_threads = 2}, &be, &e), 0, "%s", e.msg);
  enum { CTX = 300, NKV = 2, NH = 6, HD = 64, BSZ = 16, NB = 64, MB = 19, NEW = 37 };
  cr_assert_eq(be->ops->kv_init(be, &(qv_kv_desc){1, NB, BSZ, NKV, HD}), 0);
  int32_t bt[MB];
  for (int i = 0; i < MB; i++) bt[i] = (i * 7 + 3) % NB;
  static int32_t ids[CTX], pos[CTX], slots[CTX];
  for (int p = 0; p < CTX; p++) ids[p] = 1, pos[p] = p, slots[p] = bt[p / BSZ] * BSZ + p % BSZ;
  int32_t q2[2] = {0, CTX}, ctx = CTX, li = 0;
  qv_batch all = {.n_tokens = CTX, .n_seqs = 1, .n_logits = 1, .token_ids = ids, .positions = pos,
                  .slot_mapping = slots, .seq_q_start = q2, .seq_ctx_len = &ctx, .block_tables = bt,
                  .max_blocks = MB, .logits_idx = &li};
  cr_assert_eq(be->ops->set_batch(be, &all), 0, "%s", be->last_error.msg);
  qv_tensor k, v, q, o, o1;
  cr_assert_eq(be->ops->alloc(be, QV_DTYPE_F32, CTX, NKV * HD, &k), 0);
  cr_assert_eq(be->ops->alloc(be, QV_DTYPE_F32, CTX, NKV * HD, &v), 0);
  unsigned s = 21;
  for (int64_t i = 0; i < CTX * NKV * HD; i++) ((float *)k.data)[i] = (float)urand(&s), ((float *)v.data)[i] = (float)urand(&s);
  cr_assert_eq(be->ops->kv_write(be, 0, &k, &v), 0);
  /* The chunk: the last NEW positions. */
  cr_assert_eq(be->ops->alloc(be, QV_DTYPE_F32, NEW, NH * HD, &q), 0);
  cr_assert_eq(be->ops->alloc(be, QV_DTYPE_F32, NEW, NH * HD, &o), 0);
  cr_assert_eq(be->ops->alloc(be, QV_DTYPE_F32, 1, NH * HD, &o1), 0);
  for (int64_t i = 0; i < NEW * NH * HD; i++) ((float *)q.data)[i] = (float)urand(&s) * 0.5f, ((float *)o.data)[i] = NAN;
  int32_t qn[2] = {0, NEW};
  qv_batch step = all;
  step.n_tokens = NEW, step.token_ids = ids + CTX - NEW, step.positions = pos + CTX - NEW;
  step.slot_mapping = slots + CTX - NEW, step.seq_q_start = qn;
  cr_assert_eq(be->ops->set_batch(be, &step), 0, "%s", be->last_error.msg);
  qv_attn_params ap = {.layer = 0, .n_head = NH, .n_kv_head = NKV, .head_dim = HD, .scale = 0.125f,
                       .sliding_window = window};
  cr_assert_eq(be->ops->attention(be, &o, &q, &ap), 0, "%s", be->last_error.msg);
  const float *K = k.data, *V = v.data, *Q = q.data, *O = o.data;
  static double sc[CTX];
  for (int t = 0; t < NEW; t++) {
    int p = CTX - NEW + t;
    for (int h = 0; h < NH; h++) {
      int kvh = h / (NH / NKV), j0 = window && p - window + 1 > 0 ? p - window + 1 : 0;
      double mx = -INFINITY, sum = 0;
      for (int j = j0; j <= p; j++) {
        double d = 0;
        for (int i = 0; i < HD; i++) d += (double)Q[(t * NH + h) * HD + i] * K[(j * NKV + kvh) * HD + i];
        sc[j] = d * 0.125;
        mx = fmax(mx, sc[j]);
      }
      for (int j = j0; j <= p; j++) sum += (sc[j] = exp(sc[j] - mx));
      for (int i = 0; i < HD; i++) {
        double ref = 0;
        for (int j = j0; j <= p; j++) ref += sc[j] / sum * V[(j * NKV + kvh) * HD + i];
        cr_assert(fabs(O[(t * NH + h) * HD + i] - ref) < 1e-5, "t%d h%d i%d: %g vs %g", t, h, i,
                  O[(t * NH + h) * HD + i], ref);
      }
    }
    /* The same token alone, as a decode at its position. */
    int32_t c1 = p + 1, q1[2] = {0, 1};
    qv_batch one = all;
    one.n_tokens = 1, one.token_ids = ids + p, one.positions = pos + p, one.slot_mapping = slots + p;
    one.seq_q_start = q1, one.seq_ctx_len = &c1;
    cr_assert_eq(be->ops->set_batch(be, &one), 0, "%s", be->last_error.msg);
    qv_tensor qt = {.data = (float *)q.data + (size_t)t * NH * HD, .dtype = QV_DTYPE_F32, .rows = 1, .cols = NH * HD};
    cr_assert_eq(be->ops->attention(be, &o1, &qt, &ap), 0, "%s", be->last_error.msg);
    cr_assert_eq(memcmp(o1.data, O + (size_t)t * NH * HD, sizeof(float) * NH * HD), 0, "token %d: alone != in chunk", p);
  }
  qv_tensor *ts[] = {&k, &v, &q, &o, &o1};
  for (int i = 0; i < 5; i++) be->ops->free(be, ts[i]);
  qv_backend_destroy(be);
}

Test(cpu_kernels, attention_long_full) { long_attention(0); }
Test(cpu_kernels, attention_long_window) { long_attention(100); }
