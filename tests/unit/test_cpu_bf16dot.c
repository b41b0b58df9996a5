/* The opt-in bf16 dot-product matmul (cpu_kern_bf16.h), on CPUs with avx512_bf16 (skipped,
 * and reported so, elsewhere):
 *  - the kernel bit-exact against a scalar model of `vdpbf16ps` as Intel documents it (per f32
 *    lane: acc += odd pair product, then acc += even pair product, each one RNE rounding of the
 *    exact value, bf16 denormal inputs read as 0, denormal results flushed), the 16 lanes summed
 *    by the AVX-512 path's tree; random inputs of varied magnitude, never zero, shapes with
 *    k % 32 != 0 and m % 8 != 0; and the activation rounding against a scalar RNE;
 *  - invariance: through the backend, each row alone equals the same row inside batches of 1,
 *    7 and 64 rows, with 1 and 2 threads; any partition of the output gives the same bits;
 *  - the switch: off by default (the exact kernels' bits), on by option or environment, only
 *    for BF16 weights, and ignored on a forced narrower path;
 *  - model level on the BF16 fixture: the mode's logits close to the exact path's, the same
 *    greedy tokens over a short run (batch invariance of the whole model in the mode:
 *    test_cpu_invariance.c); and stories260K (../shared) converted to bf16 here: the mode's
 *    greedy run from BOS reproduces the float32 reference ids. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/backend.h"
#include "backend/cpu/cpu_kern.h"
#include "backend/cpu/cpu_kern_bf16.h"
#include "core/cpu_features.h"
#include "core/dtype.h"
#include "quiver/engine.h"
#include "models/model_impl.h"
#include "../test_util.h"

static int have_bf16(void) { return cpu_bf16_available() && qv_cpu_features_get()->avx512_bf16; }
#define NEED_BF16()                                                                          \
  do {                                                                                       \
    if (!have_bf16()) cr_skip_test("this CPU (or build) has no avx512_bf16: kernel not run"); \
  } while (0)

static double urand(unsigned *s) {
  *s = *s * 1103515245u + 12345u;
  return ((*s >> 8) & 0xffffff) / (double)0x1000000 * 2.0 - 1.0; /* [-1, 1) */
}

/* Never zero, magnitudes 2^-6 .. 2^6 so the accumulations round in every way. */
static float rand_val(unsigned *s) {
  double v = urand(s);
  if (fabs(v) < 1e-3) v = v < 0 ? -1e-3 : 1e-3;
  *s = *s * 1103515245u + 12345u;
  return (float)ldexp(v, (int)((*s >> 16) % 13) - 6);
}

/* ---- the scalar model of the instructions ---- */

static float ftz(float v) { return fpclassify(v) == FP_SUBNORMAL ? copysignf(0.0f, v) : v; }
static float bf_in(uint16_t b) { return ftz(qv_bf16_to_f32(b)); } /* DAZ */

/* vcvtneps2bf16: RNE, NaN -> quiet NaN, denormal inputs -> signed 0. */
static uint16_t ref_to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
  if ((u & 0x7f800000u) == 0) return (uint16_t)((u >> 16) & 0x8000);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

/* cpu_kern_avx512.c's hsum512 tree. */
static float ref_hsum(const float *a) {
  float s8[8], s4[4];
  for (int i = 0; i < 8; i++) s8[i] = a[i] + a[i + 8];
  for (int i = 0; i < 4; i++) s4[i] = s8[i] + s8[i + 4];
  float s2_0 = s4[0] + s4[2], s2_1 = s4[1] + s4[3];
  return s2_0 + s2_1;
}

/* One output: x and w bf16 rows of k. fmaf rounds a*b + acc once; a bf16 product is exact in
 * f32 unless it underflows, which these magnitudes never do. */
static float ref_dot(const uint16_t *x, const uint16_t *w, int64_t k) {
  float acc[16] = {0};
  for (int64_t c = 0; c < k; c += 32)
    for (int l = 0; l < 16; l++) {
      int64_t i1 = c + 2 * l + 1, i0 = c + 2 * l;
      float x1 = i1 < k ? bf_in(x[i1]) : 0.0f, w1 = i1 < k ? bf_in(w[i1]) : 0.0f;
      float x0 = i0 < k ? bf_in(x[i0]) : 0.0f, w0 = i0 < k ? bf_in(w[i0]) : 0.0f;
      acc[l] = ftz(fmaf(x1, w1, acc[l]));
      acc[l] = ftz(fmaf(x0, w0, acc[l]));
    }
  return ref_hsum(acc);
}

static void fill_bf16(uint16_t *p, int64_t n, unsigned *s) {
  for (int64_t i = 0; i < n; i++) p[i] = ref_to_bf16(rand_val(s));
}

Test(cpu_bf16dot, kernel_matches_the_instruction_model) {
  NEED_BF16();
  static const int64_t shapes[][3] = {{13, 37, 203}, {1, 19, 33}, {7, 8, 32}, {64, 45, 96}, {6, 13, 1000}, {2, 3, 5}};
  for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
    int64_t n = shapes[si][0], m = shapes[si][1], k = shapes[si][2];
    unsigned s = 3 + (unsigned)si;
    uint16_t *x = malloc(2 * (size_t)(n * k)), *w = malloc(2 * (size_t)(m * k));
    float *bias = malloc(sizeof(float) * (size_t)m), *o1 = malloc(sizeof(float) * (size_t)(n * m)),
          *o2 = malloc(sizeof(float) * (size_t)(n * m));
    fill_bf16(x, n * k, &s);
    fill_bf16(w, m * k, &s);
    for (int64_t j = 0; j < m; j++) bias[j] = rand_val(&s);
    for (int64_t i = 0; i < n * m; i++) o1[i] = o2[i] = NAN;
    cpu_bf16_mm_args a = {.out = o1, .x = x, .w = w, .bias = si % 2 ? bias : NULL, .n = n, .m = m, .k = k, .ldo = m};
    cpu_bf16_matmul(&a, 0, n, 0, m);
    for (int64_t i = 0; i < n; i++)
      for (int64_t j = 0; j < m; j++) {
        float ref = ref_dot(x + i * k, w + j * k, k);
        if (a.bias) ref += bias[j];
        cr_assert_eq(memcmp(&ref, &o1[i * m + j], 4), 0, "[%lld][%lld][%lld] (%lld,%lld): %.9g vs reference %.9g",
                     (long long)n, (long long)m, (long long)k, (long long)i, (long long)j, o1[i * m + j], ref);
      }
    /* Single rows (the GEMV tile), and an odd partition of rows and columns. */
    a.out = o2;
    for (int64_t i = 0; i < n; i++) cpu_bf16_matmul(&a, i, i + 1, 0, m);
    cr_assert_eq(memcmp(o1, o2, sizeof(float) * (size_t)(n * m)), 0, "shape %zu: GEMV rows differ", si);
    for (int64_t i = 0; i < n * m; i++) o2[i] = NAN;
    for (int64_t i0 = 0; i0 < n; i0 += 5)
      for (int64_t j0 = 0; j0 < m; j0 += 7)
        cpu_bf16_matmul(&a, i0, i0 + 5 < n ? i0 + 5 : n, j0, j0 + 7 < m ? j0 + 7 : m);
    cr_assert_eq(memcmp(o1, o2, sizeof(float) * (size_t)(n * m)), 0, "shape %zu: partition differs", si);
    free(x), free(w), free(bias), free(o1), free(o2);
  }
}

Test(cpu_bf16dot, activation_rounding_is_rne) {
  NEED_BF16();
  unsigned s = 17;
  enum { N = 1000 + 13 };
  float f[N];
  uint16_t got[N + 1];
  for (int i = 0; i < N; i++) f[i] = rand_val(&s) * 3.3f;
  /* Exact ties both ways, NaN, infinities, a denormal. */
  uint32_t special[] = {0x3f808000u, 0x3f818000u, 0xbf808000u, 0x7fc00001u, 0x7f800000u, 0xff800000u, 0x00000005u};
  for (int i = 0; i < 7; i++) memcpy(&f[i], &special[i], 4);
  got[N] = 0xabcd;
  cpu_bf16_convert(got, f, N);
  for (int i = 0; i < N; i++) cr_assert_eq(got[i], ref_to_bf16(f[i]), "[%d] %a: %#x vs %#x", i, f[i], got[i], ref_to_bf16(f[i]));
  cr_assert_eq(got[N], 0xabcd, "wrote past n");
  cr_assert_eq(got[0], 0x3f80);
  cr_assert_eq(got[1], 0x3f82);
}

/* ---- through the backend ---- */

static qv_backend *make_backend(const char *isa, int threads, int bf16dot) {
  setenv("QUIVER_CPU_ISA", isa, 1);
  unsetenv("QUIVER_CPU_BF16_DOT");
  qv_backend *be;
  qv_error e = {0};
  cr_assert_eq(qv_backend_create("cpu", &(qv_backend_opts){.n_threads = threads, .cpu_bf16_dot = bf16dot}, &be, &e), 0,
               "%s", e.msg);
  return be;
}

/* out[rows][m] = x[rows][k] . w^T through be. */
static void be_matmul(qv_backend *be, const float *xh, int64_t rows, int64_t k, const void *wh, qv_dtype dt, int64_t m,
                      float *out) {
  qv_tensor x, w, o;
  cr_assert_eq(be->ops->alloc(be, QV_DTYPE_F32, rows, k, &x), 0);
  cr_assert_eq(be->ops->alloc(be, dt, m, k, &w), 0);
  cr_assert_eq(be->ops->alloc(be, QV_DTYPE_F32, rows, m, &o), 0);
  memcpy(x.data, xh, sizeof(float) * (size_t)(rows * k));
  cr_assert_eq(be->ops->upload(be, &w, wh, dt), 0, "%s", be->last_error.msg);
  cr_assert_eq(be->ops->matmul(be, &o, &x, &w, NULL), 0, "%s", be->last_error.msg);
  cr_assert_eq(be->ops->download_f32(be, &o, out), 0);
  be->ops->free(be, &x), be->ops->free(be, &w), be->ops->free(be, &o);
}

enum { BK = 200, BM = 300, BN = 64 };

Test(cpu_bf16dot, rows_alone_equal_rows_in_batches) {
  NEED_BF16();
  unsigned s = 23;
  float *x = malloc(sizeof(float) * BN * BK), *alone = malloc(sizeof(float) * BN * BM),
        *got = malloc(sizeof(float) * BN * BM);
  uint16_t *w = malloc(2 * BM * BK);
  for (int i = 0; i < BN * BK; i++) x[i] = rand_val(&s);
  fill_bf16(w, BM * BK, &s);
  qv_backend *be1 = make_backend("avx512", 1, 1);
  for (int r = 0; r < BN; r++) be_matmul(be1, x + r * BK, 1, BK, w, QV_DTYPE_BF16, BM, alone + r * BM);
  /* Row r of each batch is the row r of x: the batch of 1 is row 0, 7 rows 0-6, 64 all. */
  static const int sizes[] = {1, 7, 64};
  for (int threads = 1; threads <= 2; threads++) {
    qv_backend *be = threads == 1 ? be1 : make_backend("avx512", 2, 1);
    for (int si = 0; si < 3; si++) {
      for (int i = 0; i < BN * BM; i++) got[i] = NAN;
      be_matmul(be, x, sizes[si], BK, w, QV_DTYPE_BF16, BM, got);
      cr_assert_eq(memcmp(got, alone, sizeof(float) * (size_t)(sizes[si] * BM)), 0,
                   "batch of %d rows, %d threads: a row differs from the same row alone", sizes[si], threads);
    }
    if (be != be1) qv_backend_destroy(be);
  }
  /* And it is the mode's kernel: the same as the kernel on the rounded rows. */
  uint16_t *xb = malloc(2 * BN * BK);
  cpu_bf16_convert(xb, x, BN * BK);
  cpu_bf16_mm_args a = {.out = got, .x = xb, .w = w, .n = BN, .m = BM, .k = BK, .ldo = BM};
  cpu_bf16_matmul(&a, 0, BN, 0, BM);
  cr_assert_eq(memcmp(got, alone, sizeof(float) * BN * BM), 0, "the backend did not use the bf16-dot kernel");
  qv_backend_destroy(be1);
  free(x), free(alone), free(got), free(w), free(xb);
}

/* Off by default: the exact avx512 kernel's bits; the environment turns it on; F32 and F16
 * weights never change; a forced avx2 path stays exact. */
Test(cpu_bf16dot, switch_default_env_and_dtypes) {
  unsigned s = 31;
  float *x = malloc(sizeof(float) * 7 * BK), *wf = malloc(sizeof(float) * BM * BK), *o1 = malloc(sizeof(float) * 7 * BM),
        *o2 = malloc(sizeof(float) * 7 * BM);
  uint16_t *w = malloc(2 * BM * BK), *wh = malloc(2 * BM * BK);
  for (int i = 0; i < 7 * BK; i++) x[i] = rand_val(&s);
  fill_bf16(w, BM * BK, &s);
  for (int i = 0; i < BM * BK; i++) wf[i] = qv_bf16_to_f32(w[i]), wh[i] = qv_f32_to_f16(wf[i]);
  const char *best = qv_cpu_isa_name(qv_cpu_isa_best());
  qv_backend *be = make_backend(best, 1, 0);
  be_matmul(be, x, 7, BK, w, QV_DTYPE_BF16, BM, o1);
  qv_backend_destroy(be);
  cpu_mm_args a = {.out = o2, .x = x, .w = w, .wt = QV_DTYPE_BF16, .n = 7, .m = BM, .k = BK, .ldo = BM, .ldx = BK};
  cpu_kernels_for(qv_cpu_isa_best())->matmul(&a, 0, 7, 0, BM);
  cr_assert_eq(memcmp(o1, o2, sizeof(float) * 7 * BM), 0, "default: not the exact kernel");
  if (!have_bf16()) {
    free(x), free(wf), free(o1), free(o2), free(w), free(wh);
    cr_skip_test("no avx512_bf16: only the default was checked");
  }
  /* The environment variable alone turns it on. */
  setenv("QUIVER_CPU_ISA", "avx512", 1);
  setenv("QUIVER_CPU_BF16_DOT", "1", 1);
  qv_error e = {0};
  cr_assert_eq(qv_backend_create("cpu", &(qv_backend_opts){.n_threads = 1}, &be, &e), 0, "%s", e.msg);
  be_matmul(be, x, 7, BK, w, QV_DTYPE_BF16, BM, o2);
  qv_backend_destroy(be);
  unsetenv("QUIVER_CPU_BF16_DOT");
  cr_assert_neq(memcmp(o1, o2, sizeof(float) * 7 * BM), 0, "QUIVER_CPU_BF16_DOT=1 did not change the path");
  /* F32 and F16 weights: the exact bits with the mode on. */
  static const qv_dtype dts[] = {QV_DTYPE_F32, QV_DTYPE_F16};
  for (int d = 0; d < 2; d++) {
    const void *wd = dts[d] == QV_DTYPE_F32 ? (const void *)wf : (const void *)wh;
    be = make_backend("avx512", 1, 0);
    be_matmul(be, x, 7, BK, wd, dts[d], BM, o1);
    qv_backend_destroy(be);
    be = make_backend("avx512", 1, 1);
    be_matmul(be, x, 7, BK, wd, dts[d], BM, o2);
    qv_backend_destroy(be);
    cr_assert_eq(memcmp(o1, o2, sizeof(float) * 7 * BM), 0, "%s weights changed by the mode", qv_dtype_name(dts[d]));
  }
  /* A forced avx2 path ignores the option. */
  be = make_backend("avx2", 1, 0);
  be_matmul(be, x, 7, BK, w, QV_DTYPE_BF16, BM, o1);
  qv_backend_destroy(be);
  be = make_backend("avx2", 1, 1);
  be_matmul(be, x, 7, BK, w, QV_DTYPE_BF16, BM, o2);
  qv_backend_destroy(be);
  cr_assert_eq(memcmp(o1, o2, sizeof(float) * 7 * BM), 0, "avx2 path changed by the option");
  free(x), free(wf), free(o1), free(o2), free(w), free(wh);
}

/* ---- model level: the BF16 fixture ---- */

enum { PROMPT = 12, GEN = 8, BSZ = 16, MAXB = 16 };

static void fixture(char *out, size_t cap, const char *name) {
  const char *src = getenv("QV_SOURCE_DIR");
  snprintf(out, cap, "%s/tests/fixtures/models/%s", src ? src : ".", name);
}

/* One sequence: the prompt's prefill, then GEN greedy steps; logits of every step into lg
 * ([GEN + 1][vocab]), the greedy tokens into ids. */
static void greedy_at(const char *path, int32_t n_prompt, int32_t n_gen, int bf16dot, float *lg, int32_t *ids,
                      int32_t vocab);

static void greedy(int bf16dot, float *lg, int32_t *ids, int32_t vocab) {
  char path[4096];
  fixture(path, sizeof path, "llama-bf16");
  greedy_at(path, PROMPT, GEN, bf16dot, lg, ids, vocab);
}

/* The prompt (n_prompt ids; 1 = BOS alone), then n_gen greedy steps; logits of each step into lg
 * ([n_gen + 1][vocab]) when lg is not NULL, the greedy ids into ids[n_gen + 1]. */
static void greedy_at(const char *path, int32_t n_prompt, int32_t n_gen, int bf16dot, float *lg, int32_t *ids,
                      int32_t vocab) {
  qv_backend *be = make_backend("auto", 2, bf16dot);
  qv_model *m;
  qv_error err = {0};
  qv_model_opts o = {.max_batch_tokens = 64, .max_logits = 4};
  cr_assert_eq(qv_model_load(path, be, &o, &m, &err), 0, "%s", err.msg);
  cr_assert_eq(qv_model_kv_init(m, MAXB, BSZ, &err), 0, "%s", err.msg);
  cr_assert_leq(n_prompt + n_gen, MAXB * BSZ);
  int32_t tok[MAXB * BSZ], pos[MAXB * BSZ], slots[MAXB * BSZ], bt[MAXB];
  float *l1 = malloc(sizeof(float) * (size_t)vocab);
  for (int i = 0; i < MAXB; i++) bt[i] = i;
  for (int i = 0; i < n_prompt; i++) tok[i] = n_prompt == 1 ? 1 : 3 + (i * 37 + 11) % 150;
  int32_t n = n_prompt;
  for (int step = 0; step <= n_gen; step++) {
    int32_t t0 = step == 0 ? 0 : n - 1, nt = n - t0;
    for (int32_t t = t0; t < n; t++) pos[t] = t, slots[t] = bt[t / BSZ] * BSZ + t % BSZ;
    int32_t q[2] = {0, nt}, ctx = n, li = nt - 1;
    qv_batch b = {.n_tokens = nt, .n_seqs = 1, .n_logits = 1, .token_ids = tok + t0, .positions = pos + t0,
                  .slot_mapping = slots + t0, .seq_q_start = q, .seq_ctx_len = &ctx, .block_tables = bt,
                  .max_blocks = MAXB, .logits_idx = &li};
    float *l = lg ? lg + (size_t)step * (size_t)vocab : l1;
    cr_assert_eq(qv_model_forward(m, &b, l, &err), 0, "%s", err.msg);
    int32_t best = 0;
    for (int32_t j = 1; j < vocab; j++)
      if (l[j] > l[best]) best = j;
    ids[step] = best;
    if (step < n_gen) tok[n++] = best;
  }
  free(l1);
  qv_model_destroy(m);
  qv_backend_destroy(be);
}

Test(cpu_bf16dot, model_close_to_exact_and_same_greedy) {
  NEED_BF16();
  char path[4096];
  fixture(path, sizeof path, "llama-bf16");
  qv_model_desc d;
  qv_error err = {0};
  cr_assert_eq(qv_model_describe(path, &d, &err), 0, "%s", err.msg);
  int32_t vocab = d.cfg.vocab_size;
  size_t bytes = sizeof(float) * (size_t)vocab * (GEN + 1);
  float *ex = malloc(bytes), *bd = malloc(bytes);
  int32_t ids_ex[GEN + 1], ids_bd[GEN + 1];
  greedy(0, ex, ids_ex, vocab);
  greedy(1, bd, ids_bd, vocab);
  /* Error relative to the logits' scale (the largest magnitude of the step). */
  double worst = 0;
  for (int step = 0; step <= GEN; step++) {
    const float *a = ex + (size_t)step * (size_t)vocab, *b = bd + (size_t)step * (size_t)vocab;
    double scale = 0, err_max = 0;
    for (int32_t j = 0; j < vocab; j++) {
      if (fabs(a[j]) > scale) scale = fabs(a[j]);
      if (fabs((double)a[j] - b[j]) > err_max) err_max = fabs((double)a[j] - b[j]);
    }
    if (err_max / scale > worst) worst = err_max / scale;
  }
  cr_log_info("bf16-dot vs exact on llama-bf16: max |diff| / max |logit| = %.3g over %d steps", worst, GEN + 1);
  cr_assert_lt(worst, 2e-2, "logits too far from the exact path: %g", worst);
  cr_assert_gt(worst, 0, "the mode changed nothing: was it used?");
  for (int i = 0; i <= GEN; i++) cr_assert_eq(ids_ex[i], ids_bd[i], "greedy token %d: %d vs %d", i, ids_bd[i], ids_ex[i]);
  free(ex), free(bd);
}

/* dir/model.safetensors with every F32 tensor rounded to BF16 (RNE), the rest copied; returns
 * 0 when done. The header keeps its keys; offsets are recomputed. */
static int st_to_bf16(const char *src_file, const char *dst_file) {
  size_t len = 0;
  char *buf = test_slurp(src_file, &len);
  if (!buf || len < 8) return -1;
  uint64_t hl = 0;
  memcpy(&hl, buf, 8);
  cJSON *h = cJSON_ParseWithLength(buf + 8, (size_t)hl);
  const char *data = buf + 8 + hl;
  size_t out_cap = len, off = 0;
  char *out = malloc(out_cap);
  cJSON *t;
  cJSON_ArrayForEach(t, h) {
    if (!strcmp(t->string, "__metadata__")) continue;
    cJSON *dt = cJSON_GetObjectItem(t, "dtype"), *offs = cJSON_GetObjectItem(t, "data_offsets");
    size_t b = (size_t)cJSON_GetArrayItem(offs, 0)->valuedouble, e = (size_t)cJSON_GetArrayItem(offs, 1)->valuedouble;
    size_t nb = e - b;
    if (!strcmp(dt->valuestring, "F32")) {
      for (size_t i = 0; i < nb / 4; i++) {
        float f;
        memcpy(&f, data + b + 4 * i, 4);
        uint16_t v = qv_f32_to_bf16(f);
        memcpy(out + off + 2 * i, &v, 2);
      }
      nb /= 2;
      cJSON_SetValuestring(dt, "BF16");
    } else {
      memcpy(out + off, data + b, nb);
    }
    cJSON_ReplaceItemInObject(t, "data_offsets", cJSON_CreateIntArray((const int[]){(int)off, (int)(off + nb)}, 2));
    off += nb;
  }
  char *hs = cJSON_PrintUnformatted(h);
  uint64_t nhl = strlen(hs);
  FILE *f = fopen(dst_file, "wb");
  int rc = !f || fwrite(&nhl, 8, 1, f) != 1 || fwrite(hs, 1, nhl, f) != nhl || fwrite(out, 1, off, f) != off;
  if (f) fclose(f);
  free(hs), free(out), free(buf);
  cJSON_Delete(h);
  return rc ? -1 : 0;
}

Test(cpu_bf16dot, stories260k_bf16_greedy_matches_the_f32_reference) {
  NEED_BF16();
  char src[4096], file[4200], dir[] = "/tmp/qv_bf16dot_XXXXXX", dst[4200];
  if (!test_shared_path(src, sizeof src, "models/stories260K")) cr_skip_test("stories260K not in ../shared");
  cr_assert(mkdtemp(dir));
  snprintf(file, sizeof file, "%s/model.safetensors", src);
  snprintf(dst, sizeof dst, "%s/model.safetensors", dir);
  cr_assert_eq(st_to_bf16(file, dst), 0);
  snprintf(file, sizeof file, "%s/config.json", src);
  size_t len = 0;
  char *cfg = test_slurp(file, &len);
  snprintf(dst, sizeof dst, "%s/config.json", dir);
  FILE *f = fopen(dst, "wb");
  cr_assert(cfg && f && fwrite(cfg, 1, len, f) == len);
  fclose(f);
  free(cfg);
  /* The reference: BOS, then 256 greedy ids of the float32 model. */
  snprintf(file, sizeof file, "%s/greedy-256.ids", src);
  char *ref_txt = test_slurp(file, &len);
  cr_assert(ref_txt);
  enum { N = 200 };
  int32_t ref[N + 2], got[N + 1];
  char *p = ref_txt;
  for (int i = 0; i < N + 2; i++) ref[i] = (int32_t)strtol(p, &p, 10);
  free(ref_txt);
  greedy_at(dir, 1, N, 1, NULL, got, 512);
  int agree = 0;
  while (agree <= N && got[agree] == ref[agree + 1]) agree++;
  cr_log_info("stories260K in bf16, bf16-dot: greedy agrees with the float32 reference on %d of %d tokens", agree,
              N + 1);
  cr_assert_geq(agree, 64, "diverged from the float32 reference after %d tokens", agree);
  snprintf(dst, sizeof dst, "%s/model.safetensors", dir);
  unlink(dst);
  snprintf(dst, sizeof dst, "%s/config.json", dir);
  unlink(dst);
  rmdir(dir);
}
