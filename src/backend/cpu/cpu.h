/* CPU backend internals shared by its files: cpu_backend.c (memory, KV cache, batch staging,
 * the ops table), cpu_ops.c (the math), cpu_kern_*.c (the SIMD kernels of each instruction-set
 * path, cpu_kern.h). fp32 activations; matmul weights stay in their file dtype (F32, BF16,
 * F16) and are widened in registers. Ops parallelise across the thread pool over independent
 * output elements, so every value is computed by the same sequence of operations whatever the
 * batch or thread count: a sequence's results do not depend on what else is in the batch. */
#ifndef QV_BACKEND_CPU_H
#define QV_BACKEND_CPU_H

#include "backend/backend.h"
#include "backend/cpu/cpu_kern.h"
#include "backend/cpu/cpu_kern_bf16.h"
#include "core/threadpool.h"

typedef struct cpu_backend {
  qv_backend base;
  tp_pool *pool;
  const cpu_kernels *kern; /* the SIMD path chosen at creation (QUIVER_CPU_ISA or the best) */
  qv_kv_desc kv;       /* geometry; n_layer == 0 until kv_init */
  float *kv_mem;       /* [n_layer][2] caches (cpu_kv_layer), owned */
  /* Staged batch: grow-only copies of the qv_batch arrays (owned). */
  qv_batch b;
  int32_t *b_mem;
  size_t b_cap;        /* int32 elements in b_mem */
  void *scratch;       /* grow-only per-op scratch (attention row state, task lists), owned */
  size_t scratch_bytes;
  void *quant;         /* cpu_quant.c's context (ISA, dequantization scratch), owned; lazily made */
  int bf16_dot;        /* BF16-weight matmuls use the bf16 dot-product kernel (cpu_kern_bf16.h) */
  uint16_t *xb;        /* [n][k] bf16 activations of the current bf16-dot matmul, grow-only, owned */
  size_t xb_cap;       /* elements in xb */
} cpu_backend;

/* K (which = 0) or V (which = 1) of one layer. V: [n_blocks][block_size][n_kv_head][head_dim],
 * a position's row per head. K is stored transposed within each block,
 * [n_blocks][n_kv_head][head_dim][block_size]: attention reads a tile's keys one lane per key
 * (cpu_kern.h), which the block then holds as is, instead of transposing every tile at every
 * step. */
static inline float *cpu_kv_layer(cpu_backend *c, int32_t layer, int which) {
  size_t per = (size_t)c->kv.n_blocks * c->kv.block_size * c->kv.n_kv_head * c->kv.head_dim;
  return c->kv_mem + ((size_t)layer * 2 + (size_t)which) * per;
}

int cpu_embed(qv_backend *be, qv_tensor *out, const qv_tensor *table);
int cpu_embed_shard(qv_backend *be, qv_tensor *out, const qv_tensor *table, int64_t row0);
int cpu_rmsnorm(qv_backend *be, qv_tensor *out, const qv_tensor *x, const qv_tensor *w, float eps);
int cpu_add_rmsnorm(qv_backend *be, qv_tensor *out, qv_tensor *x, const qv_tensor *delta, const qv_tensor *w,
                    float eps);
int cpu_matmul(qv_backend *be, qv_tensor *out, const qv_tensor *x, const qv_tensor *w, const qv_tensor *bias);
int cpu_add(qv_backend *be, qv_tensor *x, const qv_tensor *y);
int cpu_rope(qv_backend *be, qv_tensor *q, int32_t n_head, qv_tensor *k, int32_t n_kv_head, const qv_rope *rope);
int cpu_kv_write(qv_backend *be, int32_t layer, const qv_tensor *k, const qv_tensor *v);
int cpu_attention(qv_backend *be, qv_tensor *out, const qv_tensor *q, const qv_attn_params *p);
int cpu_silu_mul(qv_backend *be, qv_tensor *out, const qv_tensor *gate, const qv_tensor *up);
int cpu_gather_rows(qv_backend *be, qv_tensor *out, const qv_tensor *x);
int cpu_argmax(qv_backend *be, const qv_tensor *logits, int32_t *ids);
/* cpu_ops_ext.c: the model families' ops (Gemma, Phi-3, MoE). */
int cpu_scale(qv_backend *be, qv_tensor *x, float s);
int cpu_gated_act(qv_backend *be, qv_tensor *out, const qv_tensor *gate, const qv_tensor *up, const qv_act *act);
int cpu_moe_route(qv_backend *be, const qv_tensor *logits, const qv_moe_route *r, qv_tensor *ids, qv_tensor *weights);
int cpu_moe_matmul(qv_backend *be, qv_tensor *out, const qv_tensor *x, const qv_experts *w, const qv_tensor *ids);
int cpu_moe_combine(qv_backend *be, qv_tensor *out, const qv_tensor *y, const qv_tensor *weights);

#endif
