/* Host launchers of quiver's CUDA kernels, callable from C (src/backend/cuda). Each launcher
 * enqueues its kernel(s) on `stream` and returns the launch status (cudaGetLastError); it never
 * synchronises. Pointers are device memory borrowed for the duration of the kernel. bf16 data is
 * passed as uint16_t (the bit pattern of __nv_bfloat16), so this header needs no cuda_bf16.h.
 *
 * Index arrays are validated on the host (src/backend/cuda/plan.c) before they are staged; the
 * kernels still bound-check token ids and row indices so that a bad index yields zeros, never an
 * out-of-bounds read. */
#ifndef QV_KERNELS_H
#define QV_KERNELS_H

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "attn_types.h"

#ifdef __cplusplus
extern "C" {
#endif

/* out[n_tok][dim] = table[ids[t] - row0] (zeros where ids[t] is outside [row0, row0 + n_vocab)).
 * bf16. table holds vocabulary rows [row0, row0 + n_vocab): row0 is 0 for the whole table and a
 * tensor-parallel rank's first row for its shard (the ranks' outputs are then summed). */
cudaError_t qv_cuda_embed(uint16_t *out, const uint16_t *table, const int32_t *ids, int32_t n_tok,
                          int32_t row0, int32_t n_vocab, int32_t dim, cudaStream_t stream);

/* Row-wise RMSNorm of x [rows][cols] (bf16) with weight w [cols] (bf16); out may alias x.
 * With delta != NULL first x += delta (x rewritten, rounded to bf16) and the sum is normalised. */
cudaError_t qv_cuda_rmsnorm(uint16_t *out, uint16_t *x, const uint16_t *delta, const uint16_t *w,
                            int64_t rows, int32_t cols, float eps, cudaStream_t stream);

/* Rotates q [n_tok][n_head*head_dim] and k [n_tok][n_kv_head*head_dim] (bf16) in place.
 * inv_freq: f32 [rot_dim/2]. positions: [n_tok]. */
typedef struct qv_cuda_rope_args {
  uint16_t *q;
  uint16_t *k;
  const int32_t *positions;
  const float *inv_freq;
  int32_t n_tok, n_head, n_kv_head, head_dim, rot_dim, neox;
  float attn_factor;
} qv_cuda_rope_args;
cudaError_t qv_cuda_rope(const qv_cuda_rope_args *a, cudaStream_t stream);

/* Elementwise over n elements of bf16: out = silu(gate) * up (out may alias gate); x += y. */
cudaError_t qv_cuda_silu_mul(uint16_t *out, const uint16_t *gate, const uint16_t *up, int64_t n,
                             cudaStream_t stream);
cudaError_t qv_cuda_add(uint16_t *x, const uint16_t *y, int64_t n, cudaStream_t stream);

/* out[rows][cols] += bias[cols]; out_f32 / bias_f32 say whether each is f32 (else bf16). */
cudaError_t qv_cuda_add_bias(void *out, int out_f32, const void *bias, int bias_f32, int64_t rows,
                             int64_t cols, cudaStream_t stream);

/* out[n_idx][cols] = x[idx[i]] for elements of elem_bytes (2 or 4); zeros where idx[i] is outside
 * [0, n_rows). */
cudaError_t qv_cuda_gather_rows(void *out, const void *x, const int32_t *idx, int32_t n_idx,
                                int64_t n_rows, int64_t cols, int32_t elem_bytes,
                                cudaStream_t stream);

/* Copies k and v [n_tok][n_kv_head*head_dim] (bf16) to the cache rows slot_mapping[t] of the
 * layer's caches [n_slots][n_kv_head*head_dim]; tokens with a slot outside [0, n_slots) are
 * skipped. */
cudaError_t qv_cuda_kv_write(uint16_t *k_cache, uint16_t *v_cache, const uint16_t *k,
                             const uint16_t *v, const int32_t *slot_mapping, int32_t n_tok,
                             int64_t n_slots, int32_t row_elems, cudaStream_t stream);

/* ids[r] = index of the largest value of x[r][:] (lowest index on ties; NaN never wins).
 * x is f32 when x_f32, else bf16. */
cudaError_t qv_cuda_argmax(int32_t *ids, const void *x, int x_f32, int64_t rows, int64_t cols,
                           cudaStream_t stream);

/* Paged attention over the staged batch. See attn_types.h for the work items. */
typedef struct qv_cuda_attn_args {
  const uint16_t *q;       /* [n_tok][n_head*head_dim] */
  uint16_t *out;           /* [n_tok][n_head*head_dim] */
  const uint16_t *k_cache; /* this layer's [n_blocks][block_size][n_kv_head][head_dim] */
  const uint16_t *v_cache;
  const int32_t *seq_q_start;  /* [n_seqs+1] */
  const int32_t *seq_ctx_len;  /* [n_seqs] */
  const int32_t *block_tables; /* [n_seqs][max_blocks] */
  int32_t n_tok, n_seqs, max_blocks, block_size;
  int32_t n_head, n_kv_head, head_dim;
  float scale;
  float softcap;           /* 0: none */
  int32_t window;          /* 0: full causal */
  const qv_cuda_attn_work *work; /* [n_work] */
  int32_t n_work;
  const qv_cuda_attn_reduce *reduce; /* [n_reduce] split tiles to merge */
  int32_t n_reduce;
  float *part_o;   /* [slots][n_kv_head][QV_ATTN_BLOCK_M][head_dim] split partial outputs */
  float *part_lse; /* [slots][n_kv_head][QV_ATTN_BLOCK_M] their log2-sum-exp */
  const float *sinks; /* NULL, or f32 [n_head] logits joining the softmax denominator (generic kernel only) */
} qv_cuda_attn_args;

/* 1 when the tensor-core kernel serves head_dim (64, 128, 256). */
int qv_cuda_attention_mma_supported(int32_t head_dim);
/* Raises the dynamic shared memory limit of the tensor-core kernels; call once per device. */
cudaError_t qv_cuda_attention_init(void);
/* Tensor-core FlashAttention-2 path (work items + split-K reduction). q, out, caches 16-byte
 * aligned and head_dim supported. */
cudaError_t qv_cuda_attention_mma(const qv_cuda_attn_args *a, cudaStream_t stream);
/* Any head_dim <= 256 (CUDA cores, one warp per token and head); ignores the work items; the
 * only path that applies sinks. */
cudaError_t qv_cuda_attention_generic(const qv_cuda_attn_args *a, cudaStream_t stream);

/* moe.cu: the model families' kernels. kind: 0 silu, 1 gelu-tanh, 2 gpt-oss clamped SwiGLU. */
cudaError_t qv_cuda_scale(uint16_t *x, int64_t n, float s, cudaStream_t stream);
cudaError_t qv_cuda_gated_act(uint16_t *out, const uint16_t *gate, const uint16_t *up, int64_t n, int kind,
                              float alpha, float limit, cudaStream_t stream);
/* kind: 0 softmax then top-k, 1 top-k then softmax, 2 sigmoid then top-k. */
cudaError_t qv_cuda_moe_route(const float *logits, int32_t n, int32_t E, int32_t k, int kind, int normalize,
                              int32_t *ids, float *w, cudaStream_t stream);
/* Groups the S slots of ids by expert into scratch ([3E + 1 + S] ints: counts, offsets, cursors,
 * slot order); qv_cuda_moe_matmul reads the grouping. */
cudaError_t qv_cuda_moe_sort(const int32_t *ids, int64_t S, int32_t E, int32_t *scratch, cudaStream_t stream);
/* One expert-grouped matmul: out[slot] = x[slot / k or slot] . W[ids[slot]]^T + bias. */
typedef struct qv_cuda_moe_args {
  uint16_t *out;           /* [S][rows] bf16 */
  const uint16_t *x;       /* [n][cols] (per_slot 0) or [S][cols] (per_slot 1) bf16 */
  int per_slot;
  int32_t k;               /* experts per token */
  const uint16_t *w;       /* dense: [E*rows][cols] bf16, or NULL */
  const uint8_t *blocks;   /* MXFP4: [E*rows][cols/2], or NULL */
  const uint8_t *scales;   /* MXFP4: [E*rows][cols/32] */
  const float *bias;       /* [E][rows] or NULL */
  const int32_t *scratch;  /* grouping written by qv_cuda_moe_sort */
  int32_t n_expert;
  int64_t rows, cols;
} qv_cuda_moe_args;
cudaError_t qv_cuda_moe_matmul(const qv_cuda_moe_args *a, cudaStream_t stream);
cudaError_t qv_cuda_moe_combine(uint16_t *out, const uint16_t *y, const float *w, int64_t n, int32_t k, int64_t d,
                                cudaStream_t stream);

/* Block-quantized weights (kernels/quant.cu). qtype is the weight's qv_dtype (QV_DTYPE_Q8_0 ..
 * QV_DTYPE_Q6_K), row_bytes the bytes of one weight row of k elements. Dequantization equals the
 * CPU reference (src/quant) bit for bit. */
#define QV_CUDA_QGEMV_MAX_N 8
typedef struct qv_cuda_qmm_args {
  void *out;          /* [n][m], f32 when out_f32 else bf16 */
  int32_t out_f32;
  const uint16_t *x;  /* [n][k] bf16 */
  const void *w;      /* [m] rows of row_bytes */
  int32_t qtype;
  int32_t n;          /* 1..QV_CUDA_QGEMV_MAX_N */
  int64_t m, k, row_bytes;
  const void *bias;   /* [m] or NULL; f32 when bias_f32 else bf16 */
  int32_t bias_f32;
} qv_cuda_qmm_args;
/* out = x . dequant(w)^T (+ bias) for decode-sized n: each weight byte is read once. */
cudaError_t qv_cuda_quant_gemv(const qv_cuda_qmm_args *a, cudaStream_t stream);
/* out[m][k] = dequant(w) as bf16 (prefill: then a tensor-core GEMM), or as f32 (tests). */
cudaError_t qv_cuda_quant_dequant_bf16(uint16_t *out, const void *w, int32_t qtype, int64_t m, int64_t k,
                                       int64_t row_bytes, cudaStream_t stream);
cudaError_t qv_cuda_quant_dequant_f32(float *out, const void *w, int32_t qtype, int64_t m, int64_t k,
                                      int64_t row_bytes, cudaStream_t stream);
/* out[n_tok][dim] = dequant(w[ids[t] - row0]) as bf16 (zeros for ids outside [row0, row0 + n_vocab);
 * row0 as in qv_cuda_embed). */
cudaError_t qv_cuda_quant_embed(uint16_t *out, const void *w, int32_t qtype, const int32_t *ids, int32_t n_tok,
                                int32_t row0, int32_t n_vocab, int32_t dim, int64_t row_bytes, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
