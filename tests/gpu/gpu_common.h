/* Helpers of the GPU tests (tests/gpu/test_*.c, one Criterion program each): open the CUDA
 * backend next to the CPU reference or skip, mirror random bf16-representable data into both,
 * poison outputs, and compare with explicit tolerances. Header-only (static functions) because
 * each test file is its own executable. */
#ifndef QV_TESTS_GPU_COMMON_H
#define QV_TESTS_GPU_COMMON_H

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "core/dtype.h"

typedef struct gpu_pair {
  qv_backend *cpu, *gpu;
  int dry; /* QV_GPU_TEST_DRYRUN=1: "gpu" is a second CPU backend (checks the harness only) */
} gpu_pair;

/* Opens both backends, or marks the test skipped: a build without CUDA, or no GPU. With
 * QV_GPU_TEST_DRYRUN=1 the "gpu" side is a second CPU backend, which exercises the harness
 * (batches, poisoning, tolerances) on a machine without a GPU; it says nothing of the GPU. */
static inline void gpu_pair_open(gpu_pair *p) {
  memset(p, 0, sizeof *p);
  const char *dry = getenv("QV_GPU_TEST_DRYRUN");
  if (dry && !strcmp(dry, "1")) {
    qv_error e = {0};
    qv_backend_opts o = {.n_threads = 1};
    p->dry = 1;
    cr_assert_eq(qv_backend_create("cpu", &o, &p->cpu, &e), 0, "%s", e.msg);
    cr_assert_eq(qv_backend_create("cpu", &o, &p->gpu, &e), 0, "%s", e.msg);
    return;
  }
#ifndef QV_HAVE_CUDA
  cr_skip_test("no CUDA GPU: this build has no CUDA backend");
#else
  qv_error err = {0};
  qv_backend_opts opts = {.n_threads = 2, .device = 0};
  if (qv_backend_create("cuda", &opts, &p->gpu, &err) != 0) cr_skip_test("no CUDA GPU: %s", err.msg);
  cr_assert_eq(qv_backend_create("cpu", &opts, &p->cpu, &err), 0, "cpu backend: %s", err.msg);
#endif
}

static inline void gpu_pair_close(gpu_pair *p) {
  qv_backend_destroy(p->gpu);
  qv_backend_destroy(p->cpu);
}

static inline uint32_t g_rng(uint32_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 17;
  *s ^= *s << 5;
  return *s;
}

/* Uniform in [lo, hi), never exactly 0, rounded to bf16 so both backends see the same value. */
static inline float g_uniform(uint32_t *s, float lo, float hi) {
  float f;
  do {
    f = lo + (hi - lo) * (float)(g_rng(s) >> 8) / 16777216.0f;
    f = qv_bf16_to_f32(qv_f32_to_bf16(f));
  } while (f == 0.0f);
  return f;
}

static inline float *g_random(uint32_t *s, size_t n, float lo, float hi) {
  float *v = malloc(n * sizeof *v);
  for (size_t i = 0; i < n; i++) v[i] = g_uniform(s, lo, hi);
  return v;
}

/* A tensor mirrored on both backends. */
typedef struct mirror {
  qv_tensor c, g;
} mirror;

static inline void mirror_alloc(gpu_pair *p, mirror *m, qv_dtype cpu_t, qv_dtype gpu_t, int64_t rows, int64_t cols) {
  cr_assert_eq(p->cpu->ops->alloc(p->cpu, cpu_t, rows, cols, &m->c), 0);
  cr_assert_eq(p->gpu->ops->alloc(p->gpu, gpu_t, rows, cols, &m->g), 0, "%s", p->gpu->last_error.msg);
}

/* Activation (cpu act dtype / bf16) filled with v. */
static inline void mirror_act(gpu_pair *p, mirror *m, int64_t rows, int64_t cols, const float *v) {
  mirror_alloc(p, m, p->cpu->ops->act_dtype, p->gpu->ops->act_dtype, rows, cols);
  cr_assert_eq(p->cpu->ops->upload(p->cpu, &m->c, v, QV_DTYPE_F32), 0);
  cr_assert_eq(p->gpu->ops->upload(p->gpu, &m->g, v, QV_DTYPE_F32), 0, "%s", p->gpu->last_error.msg);
}

static inline void mirror_weight(gpu_pair *p, mirror *m, int64_t rows, int64_t cols, const float *v) {
  mirror_alloc(p, m, p->cpu->ops->weight_dtype, p->gpu->ops->weight_dtype, rows, cols);
  cr_assert_eq(p->cpu->ops->upload(p->cpu, &m->c, v, QV_DTYPE_F32), 0);
  cr_assert_eq(p->gpu->ops->upload(p->gpu, &m->g, v, QV_DTYPE_F32), 0, "%s", p->gpu->last_error.msg);
}

/* Fills both sides with NaN so an element an op forgets to write fails the comparison. */
static inline void mirror_poison(gpu_pair *p, mirror *m) {
  const size_t n = (size_t)(m->c.rows * m->c.cols);
  float *v = malloc((n ? n : 1) * sizeof *v);
  for (size_t i = 0; i < n; i++) v[i] = NAN;
  cr_assert_eq(p->cpu->ops->upload(p->cpu, &m->c, v, QV_DTYPE_F32), 0);
  cr_assert_eq(p->gpu->ops->upload(p->gpu, &m->g, v, QV_DTYPE_F32), 0);
  free(v);
}

static inline void mirror_free(gpu_pair *p, mirror *m) {
  p->cpu->ops->free(p->cpu, &m->c);
  p->gpu->ops->free(p->gpu, &m->g);
}

/* |gpu - cpu| <= rtol * |cpu| + atol * rms(cpu) for every element, NaN failing. */
static inline void mirror_expect_close(gpu_pair *p, const mirror *m, double rtol, double atol, const char *what) {
  const size_t n = (size_t)(m->c.rows * m->c.cols);
  float *a = malloc((n ? n : 1) * sizeof *a), *b = malloc((n ? n : 1) * sizeof *b);
  cr_assert_eq(p->cpu->ops->download_f32(p->cpu, &m->c, a), 0);
  cr_assert_eq(p->gpu->ops->download_f32(p->gpu, &m->g, b), 0, "%s", p->gpu->last_error.msg);
  double ss = 0.0;
  for (size_t i = 0; i < n; i++) ss += (double)a[i] * a[i];
  const double rms = n ? sqrt(ss / (double)n) : 0.0;
  cr_assert(rms > 0.0, "%s: reference output is all zeros (test input too weak)", what);
  double worst = 0.0;
  size_t worst_i = 0;
  for (size_t i = 0; i < n; i++) {
    const double d = fabs((double)b[i] - a[i]), tol = rtol * fabs(a[i]) + atol * rms;
    if (!(d <= tol)) cr_assert_fail("%s: element %zu of %zu: gpu %g cpu %g (tol %g)", what, i, n, b[i], a[i], tol);
    if (d > worst) {
      worst = d;
      worst_i = i;
    }
  }
  cr_log_info("%s: %zu elements, max |diff| %.3g at %zu (rms %.3g)", what, n, worst, worst_i, rms);
  free(a);
  free(b);
}

#endif
