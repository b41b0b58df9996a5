/* Kernel benchmarks of the CUDA backend at Llama-3-8B shapes (hidden 4096, 32 heads, 8 KV heads,
 * head dim 128, FFN 14336, vocab 128256), for decode and prefill, through the backend ops the
 * model calls. Two measured peaks frame the numbers: a large device-to-device copy (GB/s) and a
 * large cuBLAS bf16 GEMM (TFLOP/s); each case reports its median time over timed repetitions
 * (CUDA events on the backend's stream), its achieved GB/s or TFLOP/s from the bytes it must
 * move or the FLOPs it must do, and that as a percentage of the matching peak.
 * Prints one JSON object on stdout. Usage: qv-bench-kernels [--reps N] [--quick]. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef QV_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "backend/backend.h"
#include "backend/cuda/cuda_backend.h"
#include "core/dtype.h"

enum { HID = 4096, NH = 32, NKV = 8, HD = 128, FFN = 14336, VOCAB = 128256, BS = 16 };

typedef struct bench {
  qv_backend *be;
  const qv_backend_ops *ops;
  cudaStream_t st;
  int reps;
  double peak_gbps, peak_tflops;
  int first;
  uint32_t rng; /* fill pattern generator state */
} bench;

#define CK(x)                                                                              \
  do {                                                                                     \
    if ((x) != 0) {                                                                        \
      fprintf(stderr, "qv-bench-kernels: %s failed at line %d: %s\n", #x, __LINE__, b->be->last_error.msg); \
      exit(1);                                                                             \
    }                                                                                      \
  } while (0)
#define CUCK(x)                                                                            \
  do {                                                                                     \
    cudaError_t e_ = (x);                                                                  \
    if (e_ != cudaSuccess) {                                                               \
      fprintf(stderr, "qv-bench-kernels: %s: %s (line %d)\n", #x, cudaGetErrorString(e_), __LINE__); \
      exit(1);                                                                             \
    }                                                                                      \
  } while (0)

static uint16_t rnd_bf16(bench *b) {
  b->rng = b->rng * 1664525u + 1013904223u;
  float f = ((float)(b->rng >> 8) / 16777216.0f - 0.5f) * 0.5f;
  if (f == 0.0f) f = 0.01f;
  return qv_f32_to_bf16(f);
}

/* Allocates and fills with random non-zero bf16 (a 1M-element pattern repeated). */
static qv_tensor tensor(bench *b, int64_t rows, int64_t cols) {
  qv_tensor t;
  CK(b->ops->alloc(b->be, QV_DTYPE_BF16, rows, cols, &t));
  const size_t chunk = (size_t)1 << 20, n = (size_t)(rows * cols);
  uint16_t *h = malloc(chunk * 2);
  for (size_t i = 0; i < chunk; i++) h[i] = rnd_bf16(b);
  for (size_t i = 0; i < n; i += chunk)
    CUCK(cudaMemcpy((uint16_t *)t.data + i, h, (n - i < chunk ? n - i : chunk) * 2, cudaMemcpyHostToDevice));
  free(h);
  return t;
}

static int cmp_f(const void *a, const void *c) {
  const float x = *(const float *)a, y = *(const float *)c;
  return (x > y) - (x < y);
}

typedef void (*bench_fn)(bench *b, void *ctx);

/* Median milliseconds of fn over b->reps timed runs after 3 warm-ups. */
static double time_ms(bench *b, bench_fn fn, void *ctx) {
  for (int i = 0; i < 3; i++) fn(b, ctx);
  CK(qv_cuda_backend_sync(b->be));
  float *ms = malloc(sizeof(float) * (size_t)b->reps);
  cudaEvent_t e0, e1;
  CUCK(cudaEventCreate(&e0));
  CUCK(cudaEventCreate(&e1));
  for (int i = 0; i < b->reps; i++) {
    CUCK(cudaEventRecord(e0, b->st));
    fn(b, ctx);
    CUCK(cudaEventRecord(e1, b->st));
    CUCK(cudaEventSynchronize(e1));
    CUCK(cudaEventElapsedTime(&ms[i], e0, e1));
  }
  qsort(ms, (size_t)b->reps, sizeof(float), cmp_f);
  const double med = b->reps % 2 ? ms[b->reps / 2] : 0.5 * (ms[b->reps / 2 - 1] + ms[b->reps / 2]);
  free(ms);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return med;
}

static void report(bench *b, const char *name, const char *shape, double ms, double bytes, double flops) {
  const double gbps = bytes / (ms * 1e-3) / 1e9, tflops = flops / (ms * 1e-3) / 1e12;
  printf("%s\n    {\"name\": \"%s\", \"shape\": \"%s\", \"median_ms\": %.4f", b->first ? "" : ",", name, shape, ms);
  if (bytes > 0) printf(", \"gbps\": %.1f, \"pct_of_peak_gbps\": %.1f", gbps, 100.0 * gbps / b->peak_gbps);
  if (flops > 0) printf(", \"tflops\": %.2f, \"pct_of_peak_tflops\": %.1f", tflops, 100.0 * tflops / b->peak_tflops);
  printf("}");
  fflush(stdout);
  b->first = 0;
}

/* ---- cases ---- */

typedef struct copy_ctx { void *dst; const void *src; size_t bytes; } copy_ctx;
static void run_copy(bench *b, void *c) {
  copy_ctx *x = c;
  CUCK(cudaMemcpyAsync(x->dst, x->src, x->bytes, cudaMemcpyDeviceToDevice, b->st));
}

typedef struct mm_ctx { qv_tensor out, x, w; } mm_ctx;
static void run_mm(bench *b, void *c) {
  mm_ctx *m = c;
  CK(b->ops->matmul(b->be, &m->out, &m->x, &m->w, NULL));
}

typedef struct ew_ctx { qv_tensor a, c, d, w; int op; qv_rope rope; } ew_ctx;
static void run_ew(bench *b, void *c) {
  ew_ctx *e = c;
  switch (e->op) {
  case 0: CK(b->ops->rmsnorm(b->be, &e->a, &e->c, &e->w, 1e-5f)); break;
  case 1: CK(b->ops->add_rmsnorm(b->be, &e->a, &e->c, &e->d, &e->w, 1e-5f)); break;
  case 2: CK(b->ops->silu_mul(b->be, &e->a, &e->c, &e->d)); break;
  case 3: CK(b->ops->rope(b->be, &e->a, NH, &e->c, NKV, &e->rope)); break;
  case 4: CK(b->ops->kv_write(b->be, 0, &e->a, &e->c)); break;
  case 5: CK(b->ops->embed(b->be, &e->a, &e->w)); break;
  }
}

/* The grouped expert matmul of a Qwen3-30B-A3B MoE layer (128 experts, top-8, hidden 2048,
 * expert ffn 768): gate projection for n tokens routed by random logits. Bytes: each selected
 * expert's weights once, plus the inputs and outputs; also reported per token against the
 * selected experts' bytes (what a per-token loop would read). */
typedef struct moe_ctx { qv_tensor out, x, ids; qv_experts w; } moe_ctx;
static void run_moe(bench *b, void *c) {
  moe_ctx *m = c;
  CK(b->ops->moe_matmul(b->be, &m->out, &m->x, &m->w, &m->ids));
}

static void bench_moe(bench *b, int32_t n) {
  enum { E = 128, K = 8, D = 2048, F = 768 };
  moe_ctx m;
  memset(&m, 0, sizeof m);
  m.w = (qv_experts){.n_expert = E, .rows = F, .cols = D};
  m.w.w = tensor(b, (int64_t)E * F, D);
  m.x = tensor(b, n, D);
  CK(b->ops->alloc(b->be, QV_DTYPE_BF16, (int64_t)n * K, F, &m.out));
  qv_tensor lg, wt;
  float *lv = malloc(sizeof(float) * (size_t)n * E), *idf = malloc(sizeof(float) * (size_t)n * K);
  for (int64_t i = 0; i < (int64_t)n * E; i++) {
    b->rng = b->rng * 1664525u + 1013904223u;
    lv[i] = (float)(b->rng >> 8) / 16777216.0f;
  }
  CK(b->ops->alloc(b->be, QV_DTYPE_F32, n, E, &lg));
  CK(b->ops->upload(b->be, &lg, lv, QV_DTYPE_F32));
  CK(b->ops->alloc(b->be, QV_DTYPE_I32, n, K, &m.ids));
  CK(b->ops->alloc(b->be, QV_DTYPE_F32, n, K, &wt));
  qv_moe_route r = {QV_ROUTE_SOFTMAX_TOPK, E, K, 1};
  CK(b->ops->moe_route(b->be, &lg, &r, &m.ids, &wt));
  CK(b->ops->download_f32(b->be, &m.ids, idf));
  char seen[E] = {0};
  int distinct = 0;
  for (int64_t i = 0; i < (int64_t)n * K; i++) seen[(int)idf[i]] = 1;
  for (int e = 0; e < E; e++) distinct += seen[e];
  const double ms = time_ms(b, run_moe, &m);
  const double expert = 2.0 * F * D, read = distinct * expert + 2.0 * n * D + 2.0 * n * K * F;
  char nm[64], shape[160];
  snprintf(nm, sizeof nm, "moe_grouped_gate_%dtok", n);
  snprintf(shape, sizeof shape, "%d tokens top-%d of %d experts [%d][%d] bf16; %d distinct; expert bytes/token %.0f vs selected %.0f",
           n, K, E, F, D, distinct, distinct * expert / n, K * expert);
  report(b, nm, shape, ms, read, 2.0 * n * K * F * D);
  free(lv);
  free(idf);
  qv_tensor *ts[] = {&m.w.w, &m.x, &m.out, &lg, &m.ids, &wt};
  for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) b->ops->free(b->be, ts[i]);
}

typedef struct attn_ctx { qv_tensor out, q; qv_attn_params p; } attn_ctx;
static void run_attn(bench *b, void *c) {
  attn_ctx *a = c;
  CK(b->ops->attention(b->be, &a->out, &a->q, &a->p));
}

/* Stages n_seqs sequences of n_q new tokens at context ctx each, in disjoint block ranges. */
static void stage(bench *b, int32_t n_seqs, int32_t n_q, int32_t ctx) {
  const int32_t n = n_seqs * n_q, mb = (ctx + BS - 1) / BS;
  int32_t *ids = malloc(sizeof(int32_t) * (size_t)n), *pos = malloc(sizeof(int32_t) * (size_t)n);
  int32_t *slots = malloc(sizeof(int32_t) * (size_t)n), *qs = malloc(sizeof(int32_t) * (size_t)(n_seqs + 1));
  int32_t *cl = malloc(sizeof(int32_t) * (size_t)n_seqs), *bt = malloc(sizeof(int32_t) * (size_t)n_seqs * (size_t)mb);
  int32_t *li = malloc(sizeof(int32_t) * (size_t)n_seqs);
  for (int32_t s = 0; s < n_seqs; s++) {
    qs[s] = s * n_q;
    cl[s] = ctx;
    li[s] = s * n_q + n_q - 1;
    for (int32_t i = 0; i < mb; i++) bt[s * mb + i] = s * mb + i;
    for (int32_t i = 0; i < n_q; i++) {
      const int32_t t = s * n_q + i, p = ctx - n_q + i;
      ids[t] = 1 + (t * 7919) % 32000; /* inside the benchmark's embedding table */
      pos[t] = p;
      slots[t] = bt[s * mb + p / BS] * BS + p % BS;
    }
  }
  qs[n_seqs] = n;
  qv_batch bt_ = {.n_tokens = n, .n_seqs = n_seqs, .n_logits = n_seqs, .token_ids = ids, .positions = pos,
                  .slot_mapping = slots, .seq_q_start = qs, .seq_ctx_len = cl, .block_tables = bt, .max_blocks = mb,
                  .logits_idx = li};
  CK(b->ops->set_batch(b->be, &bt_));
  free(ids); free(pos); free(slots); free(qs); free(cl); free(bt); free(li);
}

static void bench_matmul(bench *b, const char *name, int64_t n, int64_t m, int64_t k, int compute_bound) {
  mm_ctx c = {.x = tensor(b, n, k), .w = tensor(b, m, k)};
  CK(b->ops->alloc(b->be, QV_DTYPE_BF16, n, m, &c.out));
  const double ms = time_ms(b, run_mm, &c);
  char shape[96];
  snprintf(shape, sizeof shape, "n=%lld m=%lld k=%lld", (long long)n, (long long)m, (long long)k);
  const double bytes = 2.0 * (double)(m * k + n * k + n * m), flops = 2.0 * (double)n * (double)m * (double)k;
  report(b, name, shape, ms, compute_bound ? 0 : bytes, flops);
  b->ops->free(b->be, &c.x);
  b->ops->free(b->be, &c.w);
  b->ops->free(b->be, &c.out);
}

static void bench_elementwise(bench *b, int32_t T, const char *phase) {
  char name[64], shape[64];
  stage(b, 1, T, T);
  ew_ctx e = {.a = tensor(b, T, HID), .c = tensor(b, T, HID), .d = tensor(b, T, HID), .w = tensor(b, 1, HID)};
  snprintf(shape, sizeof shape, "[%d][%d]", T, HID);
  e.op = 0;
  snprintf(name, sizeof name, "rmsnorm_%s", phase);
  report(b, name, shape, time_ms(b, run_ew, &e), 2.0 * 2 * T * HID, 0);
  e.op = 1;
  snprintf(name, sizeof name, "add_rmsnorm_%s", phase);
  report(b, name, shape, time_ms(b, run_ew, &e), 2.0 * 4 * T * HID, 0);
  b->ops->free(b->be, &e.w);
  e.w = tensor(b, 128256 / 4, HID); /* an embedding table (quarter vocab keeps ids in range) */
  e.op = 5;
  snprintf(name, sizeof name, "embed_%s", phase);
  report(b, name, shape, time_ms(b, run_ew, &e), 2.0 * 2 * T * HID, 0);
  b->ops->free(b->be, &e.a); b->ops->free(b->be, &e.c); b->ops->free(b->be, &e.d); b->ops->free(b->be, &e.w);

  ew_ctx s = {.a = tensor(b, T, FFN), .c = tensor(b, T, FFN), .d = tensor(b, T, FFN), .op = 2};
  snprintf(shape, sizeof shape, "[%d][%d]", T, FFN);
  snprintf(name, sizeof name, "silu_mul_%s", phase);
  report(b, name, shape, time_ms(b, run_ew, &s), 2.0 * 3 * T * FFN, 0);
  b->ops->free(b->be, &s.a); b->ops->free(b->be, &s.c); b->ops->free(b->be, &s.d);

  ew_ctx r = {.a = tensor(b, T, NH * HD), .c = tensor(b, T, NKV * HD), .op = 3};
  qv_tensor inv;
  float fr[HD / 2];
  for (int i = 0; i < HD / 2; i++) fr[i] = 1.0f / (float)(1 << (i % 16));
  CK(b->ops->alloc(b->be, QV_DTYPE_F32, 1, HD / 2, &inv));
  CK(b->ops->upload(b->be, &inv, fr, QV_DTYPE_F32));
  r.rope = (qv_rope){.head_dim = HD, .rot_dim = HD, .neox = 1, .attn_factor = 1.0f, .inv_freq = &inv};
  snprintf(shape, sizeof shape, "q [%d][%d] k [%d][%d]", T, NH * HD, T, NKV * HD);
  snprintf(name, sizeof name, "rope_%s", phase);
  report(b, name, shape, time_ms(b, run_ew, &r), 2.0 * 2 * T * (NH + NKV) * HD, 0);
  b->ops->free(b->be, &r.a); b->ops->free(b->be, &r.c); b->ops->free(b->be, &inv);

  ew_ctx k = {.a = tensor(b, T, NKV * HD), .c = tensor(b, T, NKV * HD), .op = 4};
  snprintf(shape, sizeof shape, "k,v [%d][%d]", T, NKV * HD);
  snprintf(name, sizeof name, "kv_write_%s", phase);
  report(b, name, shape, time_ms(b, run_ew, &k), 2.0 * 4 * T * NKV * HD, 0);
  b->ops->free(b->be, &k.a); b->ops->free(b->be, &k.c);
}

/* Attention over n_seqs sequences of n_q new tokens at context ctx. Decode cases are judged by
 * the KV bytes they must read, prefill cases by their causal FLOPs. */
static void bench_attention(bench *b, const char *name, int32_t n_seqs, int32_t n_q, int32_t ctx) {
  stage(b, n_seqs, n_q, ctx);
  attn_ctx a = {.q = tensor(b, (int64_t)n_seqs * n_q, NH * HD),
                .p = {.layer = 0, .n_head = NH, .n_kv_head = NKV, .head_dim = HD, .scale = 0.08838834764f}};
  CK(b->ops->alloc(b->be, QV_DTYPE_BF16, (int64_t)n_seqs * n_q, NH * HD, &a.out));
  const double ms = time_ms(b, run_attn, &a);
  char shape[128];
  snprintf(shape, sizeof shape, "%d seqs x %d new tokens at context %d, splits %d", n_seqs, n_q, ctx,
           qv_cuda_backend_attn_splits(b->be));
  double pairs = 0; /* visible (query, key) pairs per head */
  for (int32_t i = 0; i < n_q; i++) pairs += (double)(ctx - n_q + i + 1);
  pairs *= n_seqs;
  const double flops = 4.0 * NH * HD * pairs;
  const double kv_bytes = 2.0 * 2 * NKV * HD * (double)ctx * n_seqs;
  if (n_q == 1) report(b, name, shape, ms, kv_bytes, flops);
  else report(b, name, shape, ms, 0, flops);
  b->ops->free(b->be, &a.q);
  b->ops->free(b->be, &a.out);
}

int main(int argc, char **argv) {
  bench bb = {.reps = 20, .first = 1, .rng = 12345u}, *b = &bb;
  int quick = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--reps") && i + 1 < argc) bb.reps = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--quick")) quick = 1;
    else {
      fprintf(stderr, "usage: qv-bench-kernels [--reps N] [--quick]\n");
      return 2;
    }
  }
  if (bb.reps < 1 || bb.reps > 10000) bb.reps = 20;
  qv_error err = {0};
  if (qv_backend_cuda_create(&(qv_backend_opts){0}, &bb.be, &err)) {
    printf("{\"skipped\": \"no CUDA GPU: %s\"}\n", err.msg);
    return 0;
  }
  bb.ops = bb.be->ops;
  bb.st = qv_cuda_backend_stream(bb.be);
  const int32_t kv_tokens = 32 * 4096 + 32768 + 4096;
  const qv_kv_desc kv = {.n_layer = 1, .n_blocks = kv_tokens / BS, .block_size = BS, .n_kv_head = NKV, .head_dim = HD};
  CK(bb.ops->kv_init(bb.be, &kv));

  printf("{\n  \"device\": \"%s\",\n  \"sms\": %d,\n  \"reps\": %d,\n", qv_cuda_backend_device_name(bb.be),
         qv_cuda_backend_n_sm(bb.be), bb.reps);
  /* Peaks. */
  const size_t copy_bytes = (size_t)1 << 30;
  copy_ctx cc = {.bytes = copy_bytes};
  CUCK(cudaMalloc(&cc.dst, copy_bytes));
  CUCK(cudaMalloc((void **)&cc.src, copy_bytes));
  CUCK(cudaMemset(cc.dst, 1, copy_bytes));
  CUCK(cudaMemset((void *)cc.src, 2, copy_bytes));
  const double copy_ms = time_ms(b, run_copy, &cc);
  bb.peak_gbps = 2.0 * (double)copy_bytes / (copy_ms * 1e-3) / 1e9; /* read + write */
  cudaFree(cc.dst);
  cudaFree((void *)cc.src);
  const int64_t G = 8192;
  mm_ctx g = {.x = tensor(b, G, G), .w = tensor(b, G, G)};
  CK(bb.ops->alloc(bb.be, QV_DTYPE_BF16, G, G, &g.out));
  const double gemm_ms = time_ms(b, run_mm, &g);
  bb.peak_tflops = 2.0 * (double)G * G * G / (gemm_ms * 1e-3) / 1e12;
  bb.ops->free(bb.be, &g.x);
  bb.ops->free(bb.be, &g.w);
  bb.ops->free(bb.be, &g.out);
  printf("  \"peaks\": {\"d2d_copy_gbps\": %.1f, \"d2d_copy_bytes\": %zu, \"d2d_copy_ms\": %.4f, "
         "\"gemm_bf16_tflops\": %.2f, \"gemm_shape\": \"%lldx%lldx%lld\", \"gemm_ms\": %.4f},\n",
         bb.peak_gbps, copy_bytes, copy_ms, bb.peak_tflops, (long long)G, (long long)G, (long long)G, gemm_ms);
  printf("  \"results\": [");

  /* Linear layers: decode (batch 1 and 64: weight-read bound) and prefill (2048 tokens). */
  const int32_t dec[2] = {1, 64};
  for (int i = 0; i < 2; i++) {
    char nm[64];
    snprintf(nm, sizeof nm, "matmul_qkv_decode%d", dec[i]);
    bench_matmul(b, nm, dec[i], (NH + 2 * NKV) * HD, HID, 0);
    snprintf(nm, sizeof nm, "matmul_o_decode%d", dec[i]);
    bench_matmul(b, nm, dec[i], HID, NH * HD, 0);
    snprintf(nm, sizeof nm, "matmul_gate_up_decode%d", dec[i]);
    bench_matmul(b, nm, dec[i], 2 * FFN, HID, 0);
    snprintf(nm, sizeof nm, "matmul_down_decode%d", dec[i]);
    bench_matmul(b, nm, dec[i], HID, FFN, 0);
    if (!quick) {
      snprintf(nm, sizeof nm, "matmul_lm_head_decode%d", dec[i]);
      bench_matmul(b, nm, dec[i], VOCAB, HID, 0);
    }
  }
  bench_matmul(b, "matmul_qkv_prefill2048", 2048, (NH + 2 * NKV) * HD, HID, 1);
  bench_matmul(b, "matmul_o_prefill2048", 2048, HID, NH * HD, 1);
  bench_matmul(b, "matmul_gate_up_prefill2048", 2048, 2 * FFN, HID, 1);
  bench_matmul(b, "matmul_down_prefill2048", 2048, HID, FFN, 1);

  bench_elementwise(b, 64, "decode64");
  bench_elementwise(b, 2048, "prefill2048");

  bench_attention(b, "attention_decode_32x4096", 32, 1, 4096);
  bench_attention(b, "attention_decode_1x32768_splitk", 1, 1, 32768);
  bench_attention(b, "attention_decode_1x4096", 1, 1, 4096);
  bench_attention(b, "attention_prefill_1x2048", 1, 2048, 2048);
  bench_attention(b, "attention_prefill_chunk512_at4096", 1, 512, 4096);

  bench_moe(b, 1);
  bench_moe(b, 16);
  bench_moe(b, 256);

  /* argmax over a batch of vocab rows */
  {
    qv_tensor lg = tensor(b, 64, VOCAB);
    int32_t ids[64];
    cudaEvent_t e0, e1;
    float *ms = malloc(sizeof(float) * (size_t)bb.reps);
    CUCK(cudaEventCreate(&e0));
    CUCK(cudaEventCreate(&e1));
    for (int i = 0; i < 3; i++) CK(bb.ops->argmax(bb.be, &lg, ids));
    for (int i = 0; i < bb.reps; i++) {
      CUCK(cudaEventRecord(e0, bb.st));
      CK(bb.ops->argmax(bb.be, &lg, ids)); /* includes the 256-byte D2H copy and sync */
      CUCK(cudaEventRecord(e1, bb.st));
      CUCK(cudaEventSynchronize(e1));
      CUCK(cudaEventElapsedTime(&ms[i], e0, e1));
    }
    qsort(ms, (size_t)bb.reps, sizeof(float), cmp_f);
    report(b, "argmax_64x128256", "[64][128256] bf16", ms[bb.reps / 2], 2.0 * 64 * VOCAB, 0);
    free(ms);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    bb.ops->free(bb.be, &lg);
  }
  printf("\n  ]\n}\n");
  qv_backend_destroy(bb.be);
  return 0;
}

#else

int main(void) {
  printf("{\"skipped\": \"no CUDA GPU: this build has no CUDA backend\"}\n");
  return 0;
}

#endif
