/* qv-bench-moe: one mixture-of-experts MLP layer on the CPU backend, as models/families.c runs
 * it (router matmul, moe_route, expert-grouped gate/up matmuls, gated activation, grouped down
 * matmul, moe_combine), for steps of 1, 16 and 256 tokens.
 *
 *   qv-bench-moe [--hidden 2048] [--experts 128] [--topk 8] [--ffn 768] [--format f32|mxfp4]
 *                [--tokens 1,16,256] [--reps 3] [--threads 0] [--label TEXT]
 *
 * Defaults are Qwen3-30B-A3B's MoE layer. Prints one JSON object: settings and, per token count,
 * the median step time, tokens/s, the distinct experts the step selected, the expert weight
 * bytes the grouped matmul read (each selected expert once per step) per token, against the
 * bytes of the k experts each token selected (what a per-token loop would read). Random router
 * weights spread tokens over experts about uniformly. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/backend.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float frand(void) { /* [-1, 1) */
  rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
  return (float)((rng >> 40) / (double)(1 << 24) * 2.0 - 1.0);
}

static int alloc_fill(qv_backend *be, qv_dtype dt, int64_t r, int64_t c, float scale, qv_tensor *t) {
  if (be->ops->alloc(be, dt, r, c, t)) return 1;
  size_t n = (size_t)r * (size_t)c;
  if (dt == QV_DTYPE_F32)
    for (size_t i = 0; i < n; i++) ((float *)t->data)[i] = frand() * scale;
  else if (dt == QV_DTYPE_U8)
    for (size_t i = 0; i < n; i++) ((uint8_t *)t->data)[i] = (uint8_t)((frand() + 1) * 127.99);
  return 0;
}

/* Stacked experts of rows x cols each, in the format asked for. */
static int make_experts(qv_backend *be, int E, int64_t rows, int64_t cols, int mxfp4, qv_experts *x) {
  *x = (qv_experts){.n_expert = E, .rows = rows, .cols = cols, .mxfp4 = mxfp4};
  if (!mxfp4) return alloc_fill(be, QV_DTYPE_F32, E * rows, cols, 1.0f / sqrtf((float)cols), &x->w);
  if (alloc_fill(be, QV_DTYPE_U8, E * rows, cols / 2, 0, &x->blocks) ||
      be->ops->alloc(be, QV_DTYPE_U8, E * rows, cols / 32, &x->scales))
    return 1;
  memset(x->scales.data, 120, (size_t)(E * rows * (cols / 32)));
  return 0;
}

static int64_t expert_bytes(const qv_experts *x) {
  return x->mxfp4 ? x->rows * (x->cols / 2 + x->cols / 32) : x->rows * x->cols * 4;
}

int main(int argc, char **argv) {
  int hidden = 2048, E = 128, k = 8, ffn = 768, reps = 3, threads = 0, mxfp4 = 0;
  const char *tokens_arg = "1,16,256", *label = "";
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!v) goto usage;
    if (!strcmp(a, "--hidden")) hidden = atoi(v);
    else if (!strcmp(a, "--experts")) E = atoi(v);
    else if (!strcmp(a, "--topk")) k = atoi(v);
    else if (!strcmp(a, "--ffn")) ffn = atoi(v);
    else if (!strcmp(a, "--reps")) reps = atoi(v);
    else if (!strcmp(a, "--threads")) threads = atoi(v);
    else if (!strcmp(a, "--tokens")) tokens_arg = v;
    else if (!strcmp(a, "--label")) label = v;
    else if (!strcmp(a, "--format") && (!strcmp(v, "f32") || !strcmp(v, "mxfp4"))) mxfp4 = !strcmp(v, "mxfp4");
    else goto usage;
    i++;
  }
  if (hidden < 32 || hidden > 16384 || E < 1 || E > 1024 || k < 1 || k > E || ffn < 32 || ffn > 65536 || reps < 1 ||
      reps > 100 || (mxfp4 && (hidden % 32 || ffn % 32)))
    goto usage;
  int ns[8], n_ns = 0;
  for (const char *p = tokens_arg; *p && n_ns < 8;) {
    ns[n_ns] = atoi(p);
    if (ns[n_ns] < 1 || ns[n_ns] > 4096) goto usage;
    n_ns++;
    p = strchr(p, ',');
    if (!p) break;
    p++;
  }
  qv_backend *be;
  qv_error err = {0};
  if (qv_backend_create("cpu", &(qv_backend_opts){.n_threads = threads}, &be, &err)) {
    fprintf(stderr, "qv-bench-moe: %s\n", err.msg);
    return 1;
  }
  int max_n = 0;
  for (int i = 0; i < n_ns; i++) max_n = ns[i] > max_n ? ns[i] : max_n;
  qv_tensor router, h, rl, ids, wts, eg, eu, ey, out;
  qv_experts gate, up, down;
  if (alloc_fill(be, QV_DTYPE_F32, E, hidden, 2.0f / sqrtf((float)hidden), &router) ||
      alloc_fill(be, QV_DTYPE_F32, max_n, hidden, 1.0f, &h) || be->ops->alloc(be, QV_DTYPE_F32, max_n, E, &rl) ||
      be->ops->alloc(be, QV_DTYPE_I32, max_n, k, &ids) || be->ops->alloc(be, QV_DTYPE_F32, max_n, k, &wts) ||
      be->ops->alloc(be, QV_DTYPE_F32, (int64_t)max_n * k, ffn, &eg) ||
      be->ops->alloc(be, QV_DTYPE_F32, (int64_t)max_n * k, ffn, &eu) ||
      be->ops->alloc(be, QV_DTYPE_F32, (int64_t)max_n * k, hidden, &ey) ||
      be->ops->alloc(be, QV_DTYPE_F32, max_n, hidden, &out) || make_experts(be, E, ffn, hidden, mxfp4, &gate) ||
      make_experts(be, E, ffn, hidden, mxfp4, &up) || make_experts(be, E, hidden, ffn, mxfp4, &down)) {
    fprintf(stderr, "qv-bench-moe: out of memory (%s)\n", be->last_error.msg);
    return 1;
  }
  int64_t per_expert = expert_bytes(&gate) + expert_bytes(&up) + expert_bytes(&down);
  qv_moe_route r = {QV_ROUTE_SOFTMAX_TOPK, E, k, 1};
  qv_act act = {QV_ACT_SILU, 0, 0};
  printf("{\n \"tool\": \"qv-bench-moe\",\n \"label\": \"%s\",\n", label);
  printf(" \"settings\": {\"hidden\": %d, \"experts\": %d, \"topk\": %d, \"expert_ffn\": %d, \"format\": \"%s\", "
         "\"reps\": %d, \"threads\": %d, \"expert_bytes\": %lld},\n \"results\": [\n",
         hidden, E, k, ffn, mxfp4 ? "mxfp4" : "f32", reps, threads, (long long)per_expert);
  for (int t = 0; t < n_ns; t++) {
    int n = ns[t];
    qv_tensor hv = h, rlv = rl, idv = ids, wv = wts, egv = eg, euv = eu, eyv = ey, ov = out;
    hv.rows = rlv.rows = idv.rows = wv.rows = ov.rows = n;
    egv.rows = euv.rows = eyv.rows = (int64_t)n * k;
    double *secs = malloc(sizeof(double) * (size_t)reps);
    int distinct = 0;
    for (int rep = 0; rep <= reps; rep++) { /* rep 0 warms up */
      double t0 = now_s();
      int rc = be->ops->matmul(be, &rlv, &hv, &router, NULL) || be->ops->moe_route(be, &rlv, &r, &idv, &wv) ||
               be->ops->moe_matmul(be, &egv, &hv, &gate, &idv) || be->ops->moe_matmul(be, &euv, &hv, &up, &idv) ||
               be->ops->gated_act(be, &egv, &egv, &euv, &act) || be->ops->moe_matmul(be, &eyv, &egv, &down, &idv) ||
               be->ops->moe_combine(be, &ov, &eyv, &wv);
      if (rc) {
        fprintf(stderr, "qv-bench-moe: %s\n", be->last_error.msg);
        return 1;
      }
      if (rep) secs[rep - 1] = now_s() - t0;
    }
    char *seen = calloc((size_t)E, 1);
    for (int i = 0; i < n * k; i++) seen[((int32_t *)ids.data)[i]] = 1;
    for (int e = 0; e < E; e++) distinct += seen[e];
    free(seen);
    qsort(secs, (size_t)reps, sizeof *secs, cmp_double);
    double med = secs[reps / 2];
    double read_per_tok = (double)distinct * per_expert / n, selected_per_tok = (double)k * per_expert;
    printf("  {\"tokens\": %d, \"median_s\": %.6f, \"tokens_per_s\": %.2f, \"distinct_experts\": %d, "
           "\"expert_bytes_read_per_token\": %.0f, \"selected_expert_bytes_per_token\": %.0f, "
           "\"read_over_selected\": %.4f}%s\n",
           n, med, n / med, distinct, read_per_tok, selected_per_tok, read_per_tok / selected_per_tok,
           t + 1 < n_ns ? "," : "");
    fflush(stdout);
    free(secs);
  }
  printf(" ]\n}\n");
  qv_backend_destroy(be);
  return 0;
usage:
  fprintf(stderr, "usage: qv-bench-moe [--hidden N] [--experts N] [--topk K] [--ffn N] [--format f32|mxfp4] "
                  "[--tokens 1,16,256] [--reps N] [--threads N] [--label TEXT]\n");
  return 2;
}
