/* The backend interface: a table of function pointers plus a context, which model files call
 * to run a forward pass. Two implementations: cpu/ (fp32 reference, the numerical ground truth)
 * and cuda/ (bf16 weights and activations on NVIDIA GPUs).
 *
 * One backend instance serves one loaded model: it owns that model's weights, activations and
 * its paged KV cache. All ops are issued from one thread (the model's engine thread); they may
 * run asynchronously (CUDA stream) until a download or sync.
 *
 * Tensors are 2-D, row-major, contiguous: [rows][cols]. A "view" is a qv_tensor sharing the
 * data of another with different rows/cols (same element count), e.g. q as [n_tok*n_head][hd].
 *
 * Per-step token metadata (ids, positions, KV slots, sequence boundaries, block tables) is
 * staged once per forward with set_batch(); embed, rope, kv_write, attention and gather_rows
 * read it from there. */
#ifndef QV_BACKEND_H
#define QV_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "core/dtype.h"
#include "quiver/error.h"

/* qv_tensor.flags */
#define QV_TENSOR_BORROWED 1u /* data is memory the backend does not own (a view of a mapped weight
                                 file, from weight_view): free() releases nothing */

typedef struct qv_tensor {
  void *data;     /* backend memory (host for cpu, device for cuda); owned by the backend
                     unless flags has QV_TENSOR_BORROWED */
  qv_dtype dtype; /* element type */
  int64_t rows;   /* [rows][cols], row-major, contiguous */
  int64_t cols;
  uint32_t flags; /* QV_TENSOR_*; 0 for tensors from alloc */
} qv_tensor;

/* One forward step's token layout. Sequences are contiguous runs of tokens; sequence s owns
 * tokens [seq_q_start[s], seq_q_start[s+1]) whose positions are consecutive and end at
 * seq_ctx_len[s]-1 (a decode is a run of 1, a prefill chunk a longer run). All arrays are host
 * memory borrowed for the duration of set_batch(); the backend copies what it needs. */
typedef struct qv_batch {
  int32_t n_tokens;
  int32_t n_seqs;
  int32_t n_logits;
  const int32_t *token_ids;    /* [n_tokens] */
  const int32_t *positions;    /* [n_tokens] position of each token in its sequence */
  const int32_t *slot_mapping; /* [n_tokens] KV slot: block_id * block_size + offset */
  const int32_t *seq_q_start;  /* [n_seqs + 1] token offsets, seq_q_start[0] == 0 */
  const int32_t *seq_ctx_len;  /* [n_seqs] tokens in the KV cache for s once this step ran */
  const int32_t *block_tables; /* [n_seqs][max_blocks] KV block ids of each sequence */
  int32_t max_blocks;          /* row stride of block_tables */
  const int32_t *logits_idx;   /* [n_logits] token rows whose logits are wanted */
} qv_batch;

/* Geometry of the paged KV cache: per layer, K and V each [n_blocks][block_size][n_kv_head][head_dim]
 * elements (the layout inside is the backend's: only kv_write and attention touch it). */
typedef struct qv_kv_desc {
  int32_t n_layer;
  int32_t n_blocks;
  int32_t block_size;
  int32_t n_kv_head;
  int32_t head_dim;
} qv_kv_desc;

/* Rotary embedding of one model. inv_freq already includes the model's rope_scaling (linear,
 * llama3, yarn, dynamic) as computed by the model file; attn_factor scales cos and sin (yarn's
 * mscale, 1 otherwise). */
typedef struct qv_rope {
  int32_t head_dim;        /* per-head size of q and k */
  int32_t rot_dim;         /* leading dims rotated (== head_dim unless partial rotary) */
  int32_t neox;            /* 1: rotate-half pairs (i, i+rot_dim/2) as HF Llama; 0: interleaved (2i, 2i+1) */
  float attn_factor;       /* multiplies cos and sin */
  const qv_tensor *inv_freq; /* F32 [1][rot_dim/2], backend memory */
} qv_rope;

typedef struct qv_attn_params {
  int32_t layer;
  int32_t n_head;
  int32_t n_kv_head;       /* n_head % n_kv_head == 0 (GQA) */
  int32_t head_dim;
  float scale;             /* usually 1/sqrt(head_dim) */
  int32_t sliding_window;  /* 0: full causal; else a query at p sees keys in (p - window, p] */
  float softcap;           /* 0: none; else scores = softcap * tanh(scores / softcap) */
  /* NULL: none. Else F32 [1][n_head] backend memory: a learned logit per head that joins the
   * softmax denominator only (gpt-oss "attention sinks"): p_j = exp(s_j) / (exp(sink) + sum exp). */
  const struct qv_tensor *sinks;
} qv_attn_params;

/* Gated activations of the MLP: out = act(gate) * up (see gated_act). */
typedef enum qv_act_kind {
  QV_ACT_SILU = 0,       /* silu(g) * u (Llama) */
  QV_ACT_GELU_TANH,      /* gelu_tanh(g) * u (Gemma: gelu_pytorch_tanh) */
  QV_ACT_SWIGLU_OAI,     /* g' = min(g, limit), u' = clamp(u, -limit, limit): (u' + 1) * g' * sigmoid(alpha g') */
} qv_act_kind;

typedef struct qv_act {
  qv_act_kind kind;
  float alpha, limit;    /* QV_ACT_SWIGLU_OAI */
} qv_act;

/* How a mixture-of-experts router turns logits [n][n_expert] into k (expert, weight) pairs. */
typedef enum qv_route_kind {
  QV_ROUTE_SOFTMAX_TOPK = 0, /* p = softmax(all logits); the k largest p (Mixtral, Qwen3-MoE) */
  QV_ROUTE_TOPK_SOFTMAX,     /* the k largest logits; weights = softmax over those k (gpt-oss) */
  QV_ROUTE_SIGMOID_TOPK,     /* p = sigmoid(logits); the k largest p */
} qv_route_kind;

typedef struct qv_moe_route {
  qv_route_kind kind;
  int32_t n_expert;
  int32_t k;              /* experts per token, 1 <= k <= n_expert */
  int32_t normalize;      /* weights /= sum of the k selected weights */
} qv_moe_route;

/* The weights of every expert of one MoE projection, stacked: expert e owns output rows
 * [e*rows, (e+1)*rows). Dense: w is [n_expert*rows][cols] in the backend's weight dtype.
 * MXFP4 (OCP microscaling FP4, as gpt-oss ships it): blocks U8 [n_expert*rows][cols/2] (two
 * e2m1 values a byte, low nibble first) and scales U8 [n_expert*rows][cols/32] (E8M0: value =
 * e2m1 * 2^(scale - 127)), dequantized on the fly. bias: [n_expert][rows] or data NULL. */
typedef struct qv_experts {
  int32_t n_expert;
  int64_t rows, cols;
  int32_t mxfp4;
  struct qv_tensor w;      /* dense */
  struct qv_tensor blocks, scales; /* mxfp4 */
  struct qv_tensor bias;
} qv_experts;

typedef struct qv_backend qv_backend;

typedef struct qv_backend_ops {
  const char *name; /* "cpu", "cuda" */

  void (*destroy)(qv_backend *be); /* frees every tensor and the KV cache too */

  /* Memory. alloc returns uninitialised memory of dtype [rows][cols]; free accepts a tensor
   * whose data is NULL. mem_info reports free/total bytes of the memory the backend allocates
   * from (host RAM for cpu). */
  int (*alloc)(qv_backend *be, qv_dtype dtype, int64_t rows, int64_t cols, qv_tensor *out);
  void (*free)(qv_backend *be, qv_tensor *t);
  int (*mem_info)(qv_backend *be, size_t *free_bytes, size_t *total_bytes);

  /* Optional (NULL if absent): a matmul weight or embedding table used in place, in its file
   * dtype, with no copy (zero-copy loading from a mapped file). Makes *out a QV_TENSOR_BORROWED
   * view of host memory `data`: [rows][cols] of dtype, which the caller keeps valid and
   * unchanged until *out is freed. QV_EUNSUPPORTED when the backend cannot compute on that
   * memory in place (dtype, alignment); the caller then allocs weight_dtype and uploads. The
   * cpu backend takes F32, BF16 and F16 aligned to their element size. */
  int (*weight_view)(qv_backend *be, const void *data, qv_dtype dtype, int64_t rows, int64_t cols, qv_tensor *out);

  /* Copies rows*cols elements of src_dtype from host memory into dst, converting to dst->dtype.
   * src_dtype is F32, F16 or BF16 (or I32 when dst is I32). */
  int (*upload)(qv_backend *be, qv_tensor *dst, const void *src, qv_dtype src_dtype);
  /* Copies src to host floats (converting), waiting for pending work. dst: [rows][cols]. */
  int (*download_f32)(qv_backend *be, const qv_tensor *src, float *dst);

  /* dtype the backend wants for weights and for activations (cpu: F32/F32, cuda: BF16/BF16). */
  qv_dtype weight_dtype;
  qv_dtype act_dtype;
  /* 1 when alloc, upload (same dtype: raw blocks), matmul (as w) and embed (as the table)
   * accept the block-quantized dtypes (QV_DTYPE_Q*), so GGUF weights stay quantized. */
  int quant_weights;

  /* KV cache: allocated once; kv_init may be called again only after kv_deinit. */
  int (*kv_init)(qv_backend *be, const qv_kv_desc *desc);
  void (*kv_deinit)(qv_backend *be);

  /* Stages one step's batch (see qv_batch). */
  int (*set_batch)(qv_backend *be, const qv_batch *b);

  /* out[n_tokens][dim] = table[token_ids[i]] (cpu: table F32, BF16 or F16) */
  int (*embed)(qv_backend *be, qv_tensor *out, const qv_tensor *table);
  /* Optional (NULL if absent): the vocab-parallel embedding of a tensor-parallel rank. table
   * holds vocabulary rows [row0, row0 + table.rows); out[i] = table[token_ids[i] - row0] for ids
   * in that range and 0 for the others (the ranks' outputs are then summed). */
  int (*embed_shard)(qv_backend *be, qv_tensor *out, const qv_tensor *table, int64_t row0);
  /* out = x / rms(x) * w row by row (rows of x are normalised groups; views allow per-head
   * norms). w: [1][x.cols]. out may alias x. */
  int (*rmsnorm)(qv_backend *be, qv_tensor *out, const qv_tensor *x, const qv_tensor *w, float eps);
  /* Fused residual: x += delta; out = rmsnorm(x) * w. */
  int (*add_rmsnorm)(qv_backend *be, qv_tensor *out, qv_tensor *x, const qv_tensor *delta,
                     const qv_tensor *w, float eps);
  /* out[n][m] = x[n][k] . w[m][k]^T (+ bias[1][m] when bias is not NULL). cpu: w F32, BF16 or
   * F16 (widened in registers; each output's reduction order is fixed, see cpu/cpu_kern.h). */
  int (*matmul)(qv_backend *be, qv_tensor *out, const qv_tensor *x, const qv_tensor *w,
                const qv_tensor *bias);
  /* x += y, same shapes. */
  int (*add)(qv_backend *be, qv_tensor *x, const qv_tensor *y);
  /* Rotates q [n_tokens][n_head*head_dim] and k [n_tokens][n_kv_head*head_dim] in place at the
   * staged positions. */
  int (*rope)(qv_backend *be, qv_tensor *q, int32_t n_head, qv_tensor *k, int32_t n_kv_head,
              const qv_rope *rope);
  /* Writes k and v ([n_tokens][n_kv_head*head_dim]) of layer into the staged KV slots. */
  int (*kv_write)(qv_backend *be, int32_t layer, const qv_tensor *k, const qv_tensor *v);
  /* out[n_tokens][n_head*head_dim]: causal attention of each token over its sequence's
   * cached keys/values (positions 0..its own), GQA, optional sliding window and softcap. */
  int (*attention)(qv_backend *be, qv_tensor *out, const qv_tensor *q, const qv_attn_params *p);
  /* out = silu(gate) * up, elementwise; out may alias gate. */
  int (*silu_mul)(qv_backend *be, qv_tensor *out, const qv_tensor *gate, const qv_tensor *up);
  /* out[n_logits][cols] = x[logits_idx[i]] */
  int (*gather_rows)(qv_backend *be, qv_tensor *out, const qv_tensor *x);
  /* Optional (NULL if absent): ids[i] = argmax of logits row i, written to host memory. */
  int (*argmax)(qv_backend *be, const qv_tensor *logits, int32_t *ids);

  /* ---- model families (Gemma, Phi-3, MoE). NULL where a backend lacks them: a model that
   * needs one refuses to load on that backend with the op's name. ---- */
  /* x *= s elementwise. */
  int (*scale)(qv_backend *be, qv_tensor *x, float s);
  /* out = act(gate) * up elementwise (see qv_act); out may alias gate. */
  int (*gated_act)(qv_backend *be, qv_tensor *out, const qv_tensor *gate, const qv_tensor *up,
                   const qv_act *act);
  /* Routing: logits F32 [n][n_expert] -> ids I32 [n][k] (largest first) and weights F32 [n][k]. */
  int (*moe_route)(qv_backend *be, const qv_tensor *logits, const qv_moe_route *r, qv_tensor *ids,
                   qv_tensor *weights);
  /* Expert-grouped matmul: for slot i = t*k + j, out[i] = x[t or i] . W[ids[i]]^T + bias[ids[i]].
   * x is [n][cols] (one row per token, shared by its k slots) or [n*k][cols] (one per slot);
   * ids I32 [n][k]; out [n*k][rows]. Tokens are grouped by expert, so each selected expert's
   * weights are read once per call. */
  int (*moe_matmul)(qv_backend *be, qv_tensor *out, const qv_tensor *x, const qv_experts *w,
                    const qv_tensor *ids);
  /* out[t] = sum_j weights[t][j] * y[t*k + j] (j in order); y [n*k][d], weights [n][k]. */
  int (*moe_combine)(qv_backend *be, qv_tensor *out, const qv_tensor *y, const qv_tensor *weights);
} qv_backend_ops;

/* Every backend struct starts with this header so generic code can reach the ops. */
struct qv_backend {
  const qv_backend_ops *ops;
  qv_error last_error; /* detail of the last failed op */
};

typedef struct qv_backend_opts {
  int n_threads;       /* cpu: worker threads (0: all cores) */
  int device;          /* cuda: device ordinal */
  int cpu_bf16_dot;    /* cpu: 1 = BF16-weight matmuls round the activations to bf16 and use the
                          AVX512_BF16 dot product (faster, not exact; cpu_kern_bf16.h); also set
                          by QUIVER_CPU_BF16_DOT=1. Ignored, with one log line, where the CPU or
                          the chosen SIMD path cannot run it. 0: the exact f32 path */
} qv_backend_opts;

/* Creates a backend by name ("cpu" or "cuda"). Returns QV_EUNSUPPORTED for "cuda" in a build
 * without CUDA or on a machine without a GPU, with the reason in err. */
int qv_backend_create(const char *name, const qv_backend_opts *opts, qv_backend **out, qv_error *err);
void qv_backend_destroy(qv_backend *be);

/* Checks a requested compute dtype ("auto", "float32", "bfloat16", "float16"; NULL is "auto")
 * against what the backend computes in; QV_EUNSUPPORTED with a message naming both otherwise
 * (backend_dtype.c). */
int qv_backend_check_dtype(const qv_backend *be, const char *dtype, qv_error *err);

int qv_backend_cpu_create(const qv_backend_opts *opts, qv_backend **out, qv_error *err);
int qv_backend_cuda_create(const qv_backend_opts *opts, qv_backend **out, qv_error *err);

#endif
