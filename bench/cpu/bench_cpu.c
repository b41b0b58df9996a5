/* CPU backend micro-benchmarks: the machine's read bandwidth (a STREAM-style sum over a buffer
 * far larger than the caches, all threads), the thread pool's wake-up cost, and the backend's
 * matmul at 0.5B-Llama shapes (hidden 896, FFN 4864) for each weight dtype and each SIMD path
 * this CPU can run, as GFLOP/s and weight GB/s. Medians over repetitions.
 * With --load MODEL instead: the time to load a model directory whose files are in the page
 * cache (backend creation, qv_model_load, KV allocation, one 1-token forward), median over
 * --reps loads, and the resident memory after them.
 * Prints one JSON object on stdout.
 * --quant: the quantized weight types (Q8_0, Q4_1, Q4_K, Q6_K) instead of f32/bf16/f16 (cpu_ms:
 * CPU seconds of the process, steadier than wall time on a shared machine).
 * --attn: the attention tile kernels alone (one thread): per head size and SIMD path, the
 * nanoseconds of one row's step over a full tile of 64 keys (32 rows per call, as a prefill task
 * of 16 tokens x a GQA group of 2 makes; the keys already transposed, as the cache holds them),
 * best of --reps in thread CPU time.
 * BF16 weights are also timed with the opt-in bf16 dot product ("isa": "avx512+bf16dot") where
 * the CPU has avx512_bf16.
 * --gemv: batch-1 decode's matmuls alone: single-row matmuls through a chain of weight matrices
 * (the FFN's 4864 x 896 and 896 x 4864, in turn) of --mib MiB in all, far beyond the caches, for
 * each weight dtype on the best path, as weight GB/s against the read bandwidth measured just
 * before each (the decode roofline's share the kernel reaches).
 * --bandwidth: the read bandwidth, the f32 FMA peak and the pool's wake-up only.
 * fma_peak_gflops (always printed): the f32 multiply-add peak of all threads on the best path's
 * widest vectors (12 independent chains per thread, beyond the FMA latency times its ports), the
 * compute limit of the exact matmul, against which prefill GFLOP/s is quoted.
 * Usage: qv-bench-cpu [--threads N] [--reps N] [--mib N] [--quick] [--quant] [--isa NAME] [--load MODEL] [--attn]
 *                     [--gemv [--bf16-dot]] [--bandwidth] */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/backend.h"
#include "backend/cpu/cpu_kern.h"
#include "core/cpu_features.h"
#include "core/threadpool.h"
#include "models/model.h"
#include "quant/quant.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* CPU seconds of the whole process (all threads): on a shared machine, a steadier figure than
 * wall time for single-threaded kernel comparisons. */
static double cpu_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_d);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* ---- read bandwidth: each task sums a slice with the best path's dot kernel ---- */

typedef struct bw_ctx {
  const cpu_kernels *kern;
  const float *buf;
  int64_t n, per;
  float sums[256];
} bw_ctx;

static void bw_task(void *arg, int t) {
  bw_ctx *c = arg;
  int64_t i0 = (int64_t)t * c->per, i1 = i0 + c->per < c->n ? i0 + c->per : c->n;
  const float *p = c->buf + i0;
  c->sums[t] = c->kern->dot(p, p, i1 - i0);
}

static double read_bandwidth(tp_pool *pool, int64_t bytes, int reps) {
  int64_t n = bytes / 4;
  float *buf = malloc((size_t)n * sizeof *buf);
  if (!buf) return 0;
  for (int64_t i = 0; i < n; i++) buf[i] = (float)(i % 7) * 0.25f;
  bw_ctx c = {.kern = cpu_kernels_for(qv_cpu_isa_best()), .buf = buf, .n = n};
  int tasks = tp_n_threads(pool);
  c.per = (n + tasks - 1) / tasks;
  double *t = malloc((size_t)reps * sizeof *t);
  tp_run(pool, tasks, bw_task, &c); /* warm: page faults */
  for (int r = 0; r < reps; r++) {
    double t0 = now_s();
    tp_run(pool, tasks, bw_task, &c);
    t[r] = now_s() - t0;
  }
  double gbps = (double)n * 4 / median(t, reps) / 1e9;
  free(t);
  free(buf);
  return gbps;
}

/* ---- f32 FMA peak: each task runs independent multiply-add chains in registers ---- */

#define FMA_CHAINS 12
#define FMA_ITERS 4000000L

typedef struct fma_ctx {
  qv_cpu_isa isa;
  float sink[256];
} fma_ctx;

#if defined(__x86_64__)
#include <immintrin.h>
__attribute__((target("avx512f"))) static float fma_avx512(void) {
  __m512 a[FMA_CHAINS], b = _mm512_set1_ps(0.999f), c = _mm512_set1_ps(1e-4f);
  for (int i = 0; i < FMA_CHAINS; i++) a[i] = _mm512_set1_ps((float)i * 1e-3f);
  for (long n = 0; n < FMA_ITERS; n++)
    for (int i = 0; i < FMA_CHAINS; i++) a[i] = _mm512_fmadd_ps(a[i], b, c);
  for (int i = 1; i < FMA_CHAINS; i++) a[0] = _mm512_add_ps(a[0], a[i]);
  return _mm512_reduce_add_ps(a[0]);
}
__attribute__((target("avx2,fma"))) static float fma_avx2(void) {
  __m256 a[FMA_CHAINS], b = _mm256_set1_ps(0.999f), c = _mm256_set1_ps(1e-4f);
  for (int i = 0; i < FMA_CHAINS; i++) a[i] = _mm256_set1_ps((float)i * 1e-3f);
  for (long n = 0; n < FMA_ITERS; n++)
    for (int i = 0; i < FMA_CHAINS; i++) a[i] = _mm256_fmadd_ps(a[i], b, c);
  float l[8], s = 0;
  for (int i = 1; i < FMA_CHAINS; i++) a[0] = _mm256_add_ps(a[0], a[i]);
  _mm256_storeu_ps(l, a[0]);
  for (int i = 0; i < 8; i++) s += l[i];
  return s;
}
#elif defined(__aarch64__)
#include <arm_neon.h>
static float fma_neon(void) {
  float32x4_t a[FMA_CHAINS], b = vdupq_n_f32(0.999f), c = vdupq_n_f32(1e-4f);
  for (int i = 0; i < FMA_CHAINS; i++) a[i] = vdupq_n_f32((float)i * 1e-3f);
  for (long n = 0; n < FMA_ITERS; n++)
    for (int i = 0; i < FMA_CHAINS; i++) a[i] = vfmaq_f32(c, a[i], b);
  for (int i = 1; i < FMA_CHAINS; i++) a[0] = vaddq_f32(a[0], a[i]);
  return vaddvq_f32(a[0]);
}
#endif

static float fma_portable(void) {
  float a[FMA_CHAINS];
  for (int i = 0; i < FMA_CHAINS; i++) a[i] = (float)i * 1e-3f;
  for (long n = 0; n < FMA_ITERS; n++)
    for (int i = 0; i < FMA_CHAINS; i++) a[i] = a[i] * 0.999f + 1e-4f;
  float s = 0;
  for (int i = 0; i < FMA_CHAINS; i++) s += a[i];
  return s;
}

/* Lanes per chain of the path fma_task runs for isa. */
static int fma_lanes(qv_cpu_isa isa) {
#if defined(__x86_64__)
  if (isa == QV_CPU_ISA_AVX512) return 16;
  if (isa == QV_CPU_ISA_AVX2) return 8;
#elif defined(__aarch64__)
  if (isa == QV_CPU_ISA_NEON) return 4;
#endif
  (void)isa;
  return 1;
}

static void fma_task(void *arg, int t) {
  fma_ctx *c = arg;
  float r;
#if defined(__x86_64__)
  if (c->isa == QV_CPU_ISA_AVX512) r = fma_avx512();
  else if (c->isa == QV_CPU_ISA_AVX2) r = fma_avx2();
  else r = fma_portable();
#elif defined(__aarch64__)
  r = c->isa == QV_CPU_ISA_NEON ? fma_neon() : fma_portable();
#else
  r = fma_portable();
#endif
  c->sink[t % 256] = r;
}

/* GFLOP/s (a multiply-add counts 2) of all the pool's threads at once, median of reps. */
static double fma_peak(tp_pool *pool, int reps) {
  fma_ctx c = {.isa = qv_cpu_isa_best()};
  double *t = malloc((size_t)reps * sizeof *t);
  if (!t) return 0;
  for (int r = 0; r < reps; r++) {
    double t0 = now_s();
    tp_run(pool, tp_n_threads(pool), fma_task, &c);
    t[r] = now_s() - t0;
  }
  double flops = 2.0 * fma_lanes(c.isa) * FMA_CHAINS * (double)FMA_ITERS * tp_n_threads(pool);
  double g = flops / median(t, reps) / 1e9;
  free(t);
  return g;
}

/* ---- pool wake-up: a job of one empty task per thread ---- */

static void nop_task(void *arg, int t) {
  (void)arg;
  (void)t;
}

static double pool_wake_us(tp_pool *pool, int reps) {
  double *t = malloc((size_t)reps * sizeof *t);
  for (int r = 0; r < reps; r++) {
    double t0 = now_s();
    for (int i = 0; i < 100; i++) tp_run(pool, tp_n_threads(pool), nop_task, NULL);
    t[r] = (now_s() - t0) / 100 * 1e6;
  }
  double us = median(t, reps);
  free(t);
  return us;
}

/* ---- matmul through the backend ---- */

static void fill_weights(qv_backend *be, qv_tensor *w, qv_dtype dt, unsigned seed) {
  size_t n = (size_t)w->rows * (size_t)w->cols;
  float *f = malloc(n * sizeof *f);
  for (size_t i = 0; i < n; i++) {
    seed = seed * 1664525u + 1013904223u;
    f[i] = ((float)(seed >> 8) / 16777216.0f - 0.5f) * 0.1f;
  }
  if (qv_dtype_is_quant(dt)) {
    size_t rb = qv_dtype_row_bytes(dt, w->cols);
    uint8_t *q = malloc(rb * (size_t)w->rows);
    quant_fill_random(dt, q, w->rows * w->cols / qv_dtype_block_elems(dt), seed);
    be->ops->upload(be, w, q, dt);
    free(q);
  } else if (dt == QV_DTYPE_F32) {
    be->ops->upload(be, w, f, QV_DTYPE_F32);
  } else {
    uint16_t *h = malloc(n * sizeof *h);
    for (size_t i = 0; i < n; i++) h[i] = dt == QV_DTYPE_BF16 ? qv_f32_to_bf16(f[i]) : qv_f32_to_f16(f[i]);
    be->ops->upload(be, w, h, dt);
    free(h);
  }
  free(f);
}

static void bench_matmul(qv_backend *be, const char *isa, qv_dtype dt, int64_t n, int64_t m, int64_t k, int reps,
                         int first) {
  qv_tensor x, w, o;
  if (be->ops->alloc(be, QV_DTYPE_F32, n, k, &x) || be->ops->alloc(be, dt, m, k, &w) ||
      be->ops->alloc(be, QV_DTYPE_F32, n, m, &o)) {
    fprintf(stderr, "qv-bench-cpu: alloc failed\n");
    exit(1);
  }
  float *xf = x.data;
  for (int64_t i = 0; i < n * k; i++) xf[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
  fill_weights(be, &w, dt, 7);
  double *t = malloc((size_t)reps * sizeof *t), *tc = malloc((size_t)reps * sizeof *tc);
  be->ops->matmul(be, &o, &x, &w, NULL);
  for (int r = 0; r < reps; r++) {
    double t0 = now_s(), c0 = cpu_s();
    be->ops->matmul(be, &o, &x, &w, NULL);
    t[r] = now_s() - t0;
    tc[r] = cpu_s() - c0;
  }
  double s = median(t, reps), sc = median(tc, reps);
  double wbytes = (double)qv_dtype_row_bytes(dt, k) * (double)m;
  printf("%s    {\"isa\": \"%s\", \"wdtype\": \"%s\", \"n\": %lld, \"m\": %lld, \"k\": %lld, \"ms\": %.4f, "
         "\"cpu_ms\": %.4f, \"gflops\": %.2f, \"weight_gbps\": %.2f}",
         first ? "" : ",\n", isa, qv_dtype_name(dt), (long long)n, (long long)m, (long long)k, s * 1e3, sc * 1e3,
         2.0 * n * m * k / s / 1e9, wbytes / s / 1e9);
  free(tc);
  fflush(stdout);
  free(t);
  be->ops->free(be, &x);
  be->ops->free(be, &w);
  be->ops->free(be, &o);
}

/* ---- single-row matmuls over weights far beyond the caches (batch-1 decode) ---- */

static int bench_gemv(int threads, int reps, int64_t mib, int cpu_bf16_dot) {
  tp_pool *pool;
  if (tp_create(threads, &pool)) return 1;
  qv_backend *be;
  qv_error err = {0};
  if (qv_backend_create("cpu", &(qv_backend_opts){.n_threads = threads, .cpu_bf16_dot = cpu_bf16_dot}, &be, &err)) {
    fprintf(stderr, "qv-bench-cpu: %s\n", err.msg);
    return 1;
  }
  static const qv_dtype dts[] = {QV_DTYPE_F32, QV_DTYPE_BF16, QV_DTYPE_F16};
  printf("{\n  \"gemv\": [");
  for (size_t d = 0; d < sizeof dts / sizeof dts[0]; d++) {
    const int64_t h = 896, f = 4864;
    const size_t mat_bytes = qv_dtype_row_bytes(dts[d], h) * (size_t)f;
    int n_mats = (int)((double)(mib << 20) / (double)mat_bytes);
    n_mats = n_mats < 2 ? 2 : n_mats - n_mats % 2;
    /* One buffer, matrices back to back, as in a model file. */
    char *buf = malloc(mat_bytes * (size_t)n_mats);
    qv_tensor *w = calloc((size_t)n_mats, sizeof *w), x[2], o[2];
    if (!buf || !w) return 1;
    for (int i = 0; i < 2; i++) {
      if (be->ops->alloc(be, QV_DTYPE_F32, 1, i ? f : h, &x[i]) || be->ops->alloc(be, QV_DTYPE_F32, 1, i ? h : f, &o[i]))
        return 1;
      for (int64_t e = 0; e < x[i].cols; e++) ((float *)x[i].data)[e] = (float)((e * 2654435761u) % 1000) / 1000.0f - 0.5f;
    }
    for (int i = 0; i < n_mats; i++) {
      qv_tensor tmp;
      if (be->ops->alloc(be, dts[d], i % 2 ? h : f, i % 2 ? f : h, &tmp)) return 1;
      fill_weights(be, &tmp, dts[d], 7u + (unsigned)i);
      memcpy(buf + mat_bytes * (size_t)i, tmp.data, mat_bytes);
      w[i] = tmp;
      w[i].data = buf + mat_bytes * (size_t)i;
      be->ops->free(be, &tmp);
    }
    double *t = malloc((size_t)reps * sizeof *t), *bw = malloc((size_t)reps * sizeof *bw);
    for (int r = -1; r < reps; r++) { /* rep -1 warms up; the bandwidth is taken just before each */
      double b = read_bandwidth(pool, mib << 20, 1), t0 = now_s();
      for (int i = 0; i < n_mats; i++) be->ops->matmul(be, &o[i % 2], &x[i % 2], &w[i], NULL);
      if (r >= 0) t[r] = now_s() - t0, bw[r] = b;
    }
    const double gbps = (double)mat_bytes * n_mats / median(t, reps) / 1e9, rb = median(bw, reps);
    printf("%s\n    {\"wdtype\": \"%s\", \"bf16_dot\": %s, \"weight_mib\": %.0f, \"weight_gbps\": %.2f, "
           "\"read_gbps\": %.2f, \"of_read\": %.3f}",
           d ? "," : "", qv_dtype_name(dts[d]), cpu_bf16_dot && dts[d] == QV_DTYPE_BF16 ? "true" : "false",
           (double)mat_bytes * n_mats / 1048576.0, gbps, rb, gbps / rb);
    fflush(stdout);
    for (int i = 0; i < 2; i++) be->ops->free(be, &x[i]), be->ops->free(be, &o[i]);
    free(buf), free(w), free(t), free(bw);
  }
  printf("\n  ]\n}\n");
  qv_backend_destroy(be);
  tp_destroy(pool);
  return 0;
}

/* VmRSS or VmHWM of this process in KiB. */
static long proc_status_kb(const char *key) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  long v = -1;
  size_t n = strlen(key);
  while (f && fgets(line, sizeof line, f))
    if (!strncmp(line, key, n) && line[n] == ':') v = atol(line + n + 1);
  if (f) fclose(f);
  return v;
}

static int bench_load(const char *path, int threads, int reps) {
  double *t_load = malloc((size_t)reps * sizeof(double)), *t_first = malloc((size_t)reps * sizeof(double));
  long rss = 0;
  for (int r = 0; r < reps; r++) {
    qv_error err = {0};
    double t0 = now_s();
    qv_backend *be;
    qv_model *m;
    if (qv_backend_create("cpu", &(qv_backend_opts){.n_threads = threads}, &be, &err) ||
        qv_model_load(path, be, &(qv_model_opts){.max_batch_tokens = 512, .max_logits = 1}, &m, &err) ||
        qv_model_kv_init(m, 64, 16, &err)) {
      fprintf(stderr, "qv-bench-cpu: %s\n", err.msg);
      return 1;
    }
    double t1 = now_s();
    int32_t id = 1, pos = 0, slot = 0, q[2] = {0, 1}, ctx = 1, bt = 0, li = 0;
    qv_batch b = {.n_tokens = 1, .n_seqs = 1, .n_logits = 1, .token_ids = &id, .positions = &pos, .slot_mapping = &slot,
                  .seq_q_start = q, .seq_ctx_len = &ctx, .block_tables = &bt, .max_blocks = 1, .logits_idx = &li};
    float *logits = malloc(sizeof(float) * (size_t)qv_model_get_config(m)->vocab_size);
    if (qv_model_forward(m, &b, logits, &err)) {
      fprintf(stderr, "qv-bench-cpu: %s\n", err.msg);
      return 1;
    }
    t_load[r] = t1 - t0;
    t_first[r] = now_s() - t0;
    rss = proc_status_kb("VmRSS");
    free(logits);
    qv_model_destroy(m);
    qv_backend_destroy(be);
  }
  char desc[256];
  qv_cpu_features_describe(desc, sizeof desc);
  printf("{\"cpu\": \"%s\", \"model\": \"%s\", \"threads\": %d, \"reps\": %d, \"load_s\": %.4f, "
         "\"load_and_first_token_s\": %.4f, \"rss_after_load_kb\": %ld, \"peak_rss_kb\": %ld}\n",
         desc, path, threads, reps, median(t_load, reps), median(t_first, reps), rss, proc_status_kb("VmHWM"));
  free(t_load);
  free(t_first);
  return 0;
}

static double thread_cpu_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int bench_attn(int reps, const char *only_isa) {
  enum { ROWS = 32, ITERS = 200 };
  static const int32_t hds[] = {8, 64, 128, 256};
  printf("{\n  \"attn_tile_ns_per_row\": [");
  int first = 1;
  for (int isa = QV_CPU_ISA_COUNT - 1; isa >= 0; isa--) {
    const cpu_kernels *kern = cpu_kernels_for((qv_cpu_isa)isa);
    if (!qv_cpu_isa_supported((qv_cpu_isa)isa) || !kern) continue;
    if (only_isa && strcmp(only_isa, qv_cpu_isa_name((qv_cpu_isa)isa))) continue;
    for (size_t h = 0; h < sizeof hds / sizeof hds[0]; h++) {
      int32_t hd = hds[h];
      float *k = malloc(sizeof(float) * CPU_ATTN_KT * hd), *v = malloc(sizeof(float) * CPU_ATTN_KT * hd);
      float *kt = malloc(sizeof(float) * CPU_ATTN_KT * hd), *q = malloc(sizeof(float) * ROWS * hd);
      float *o = calloc((size_t)ROWS * hd, sizeof(float)), m[ROWS];
      double l[ROWS];
      int64_t rows[ROWS];
      const float *kp[CPU_ATTN_KT], *vp[CPU_ATTN_KT];
      unsigned seed = 1;
      for (int32_t i = 0; i < CPU_ATTN_KT * hd; i++) {
        seed = seed * 1103515245u + 12345u;
        k[i] = ((seed >> 9) & 0xffff) / 65536.0f - 0.5f;
        v[i] = -k[i];
      }
      for (int32_t i = 0; i < ROWS * hd; i++) q[i] = k[i % (CPU_ATTN_KT * hd)];
      for (int j = 0; j < CPU_ATTN_KT; j++) kp[j] = k + j * hd, vp[j] = v + j * hd;
      for (int j = 0; j < CPU_ATTN_KT; j++) /* the keys as the cache's transposed blocks give them */
        for (int32_t d = 0; d < hd; d++) kt[(int64_t)d * CPU_ATTN_KT + j] = kp[j][d];
      for (int r = 0; r < ROWS; r++) rows[r] = r, m[r] = -INFINITY, l[r] = 0;
      cpu_attn_tile at = {.kt = kt, .v = vp, .j0 = 0, .j1 = CPU_ATTN_KT, .hd = hd, .scale = 0.125f, .q = q,
                          .o = o, .m = m, .l = l, .rows = rows, .n_rows = ROWS};
      double best = 1e30;
      for (int rep = 0; rep < reps; rep++) {
        double t0 = thread_cpu_s();
        for (int it = 0; it < ITERS; it++) kern->attn_tile(&at);
        double t = (thread_cpu_s() - t0) / ITERS / ROWS * 1e9;
        if (t < best) best = t;
      }
      printf("%s\n    {\"isa\": \"%s\", \"head_dim\": %d, \"ns\": %.1f}", first ? "" : ",",
             qv_cpu_isa_name((qv_cpu_isa)isa), hd, best);
      first = 0;
      free(k), free(v), free(kt), free(q), free(o);
    }
  }
  printf("\n  ]\n}\n");
  return 0;
}

int main(int argc, char **argv) {
  int threads = 2, reps = 9, quick = 0, quant = 0;
  const char *only_isa = NULL;
  int64_t mib = 1024;
  const char *load = NULL;
  int attn = 0, gemv = 0, bf16_dot = 0, bw_only = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--mib") && i + 1 < argc) mib = atoll(argv[++i]);
    else if (!strcmp(argv[i], "--quick")) quick = 1;
    else if (!strcmp(argv[i], "--quant")) quant = 1;
    else if (!strcmp(argv[i], "--isa") && i + 1 < argc) only_isa = argv[++i];
    else if (!strcmp(argv[i], "--load") && i + 1 < argc) load = argv[++i];
    else if (!strcmp(argv[i], "--attn")) attn = 1;
    else if (!strcmp(argv[i], "--gemv")) gemv = 1;
    else if (!strcmp(argv[i], "--bandwidth")) bw_only = 1;
    else if (!strcmp(argv[i], "--bf16-dot")) bf16_dot = 1;
    else {
      fprintf(stderr, "usage: qv-bench-cpu [--threads N] [--reps N] [--mib N] [--quick] [--quant] [--isa NAME] [--load MODEL] [--attn] [--gemv [--bf16-dot]] [--bandwidth]\n");
      return 2;
    }
  }
  if (threads < 1 || reps < 1 || mib < 1) return 2;
  if (load) return bench_load(load, threads, reps);
  if (attn) return bench_attn(reps, only_isa);
  if (gemv) return bench_gemv(threads, reps, mib, bf16_dot);
  tp_pool *pool;
  if (tp_create(threads, &pool)) return 1;
  char desc[256];
  qv_cpu_features_describe(desc, sizeof desc);
  printf("{\n  \"cpu\": \"%s\",\n  \"threads\": %d,\n  \"best_isa\": \"%s\",\n", desc, threads,
         qv_cpu_isa_name(qv_cpu_isa_best()));
  printf("  \"read_gbps\": %.2f,\n", read_bandwidth(pool, mib << 20, reps));
  printf("  \"fma_peak_gflops\": %.1f,\n", fma_peak(pool, reps));
  printf("  \"pool_wake_us\": %.2f%s\n", pool_wake_us(pool, reps), bw_only ? "\n}" : ",");
  tp_destroy(pool);
  if (bw_only) return 0;
  printf("  \"matmul\": [\n");
  static const int64_t shapes[][3] = {{1, 4864, 896}, {1, 896, 4864}, {32, 4864, 896}, {512, 4864, 896}, {512, 896, 4864}};
  static const qv_dtype fdts[] = {QV_DTYPE_F32, QV_DTYPE_BF16, QV_DTYPE_F16};
  static const qv_dtype qdts[] = {QV_DTYPE_Q8_0, QV_DTYPE_Q4_1, QV_DTYPE_Q4_K, QV_DTYPE_Q6_K};
  const qv_dtype *dts = quant ? qdts : fdts;
  const size_t n_dts = quant ? 4 : 3;
  int first = 1;
  for (int isa = QV_CPU_ISA_COUNT - 1; isa >= 0; isa--) {
    if (!qv_cpu_isa_supported((qv_cpu_isa)isa) || !cpu_kernels_for((qv_cpu_isa)isa)) continue;
    if (only_isa && strcmp(only_isa, qv_cpu_isa_name((qv_cpu_isa)isa))) continue;
    setenv("QUIVER_CPU_ISA", qv_cpu_isa_name((qv_cpu_isa)isa), 1);
    qv_backend *be;
    qv_error err = {0};
    if (qv_backend_create("cpu", &(qv_backend_opts){.n_threads = threads}, &be, &err)) {
      fprintf(stderr, "qv-bench-cpu: %s\n", err.msg);
      return 1;
    }
    for (size_t d = 0; d < n_dts; d++)
      for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        if (quick && shapes[s][0] == 512 && isa == QV_CPU_ISA_PORTABLE) continue;
        if (shapes[s][2] % qv_dtype_block_elems(dts[d])) continue; /* K-quants need k % 256 == 0 */
        bench_matmul(be, qv_cpu_isa_name((qv_cpu_isa)isa), dts[d], shapes[s][0], shapes[s][1], shapes[s][2],
                     quick ? 3 : reps, first);
        first = 0;
      }
    qv_backend_destroy(be);
  }
  /* The opt-in bf16 dot product (--cpu-bf16-dot) on BF16 weights, as "avx512+bf16dot". */
  if (!quant && (!only_isa || !strcmp(only_isa, "avx512")) && !qv_cpu_bf16_dot_unusable(QV_CPU_ISA_AVX512)) {
    setenv("QUIVER_CPU_ISA", "avx512", 1);
    qv_backend *be;
    qv_error err = {0};
    if (qv_backend_create("cpu", &(qv_backend_opts){.n_threads = threads, .cpu_bf16_dot = 1}, &be, &err)) {
      fprintf(stderr, "qv-bench-cpu: %s\n", err.msg);
      return 1;
    }
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
      bench_matmul(be, "avx512+bf16dot", QV_DTYPE_BF16, shapes[s][0], shapes[s][1], shapes[s][2], quick ? 3 : reps,
                   first);
      first = 0;
    }
    qv_backend_destroy(be);
  }
  printf("\n  ]\n}\n");
  return 0;
}
