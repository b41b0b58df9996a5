/* The CUDA backend's state, shared by its host files (cuda_backend.c: memory, batch, ops;
 * cuda_gemm.c: cuBLASLt). Not a public header: only src/backend/cuda includes it. */
#ifndef QV_BACKEND_CUDA_INTERNAL_H
#define QV_BACKEND_CUDA_INTERNAL_H

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include "backend/backend.h"
#include "backend/cuda/plan.h"

#define CUDA_GEMM_CACHE_CAP 512 /* power of two */
#define CUDA_GEMM_WS_BYTES ((size_t)32 << 20)

typedef struct cuda_gemm_plan {
  cublasLtMatmulDesc_t op;
  cublasLtMatrixLayout_t lw, lx, lo; /* w [m][k] as col-major k x m; x as k x n; out as m x n */
  cublasLtMatmulAlgo_t algo;
} cuda_gemm_plan;

typedef struct cuda_backend {
  qv_backend base;
  int device;
  int n_sm;
  char dev_name[256];
  cudaStream_t stream; /* every op runs on it; owned */
  cublasLtHandle_t lt; /* owned */
  void *gemm_ws;       /* device [CUDA_GEMM_WS_BYTES]; owned */
  cuda_gemm_key gemm_keys[CUDA_GEMM_CACHE_CAP];
  uint8_t gemm_used[CUDA_GEMM_CACHE_CAP];
  cuda_gemm_plan gemm_plans[CUDA_GEMM_CACHE_CAP];
  int64_t gemm_plans_made; /* count of heuristic queries, for tests */

  void **allocs; /* device pointers handed out by alloc and not yet freed; owned */
  size_t n_allocs, cap_allocs;

  int kv_ready;
  qv_kv_desc kv;
  uint16_t *kv_mem;        /* device [n_layer][2 (K, V)][n_blocks*block_size][n_kv_head*head_dim] bf16 */
  int64_t kv_layer_elems;  /* n_blocks * block_size * n_kv_head * head_dim */
  float *part_o;           /* device [split_slots][n_kv_head][QV_ATTN_BLOCK_M][head_dim] */
  float *part_lse;         /* device [split_slots][n_kv_head][QV_ATTN_BLOCK_M] */
  int32_t split_slots;

  /* Per-step metadata: filled in stage_host (pinned), copied by one H2D copy to stage_dev. */
  void *stage_host, *stage_dev;
  size_t stage_cap;
  cudaEvent_t stage_done; /* the last copy out of stage_host finished */
  int batch_ready;
  int32_t n_tokens, n_seqs, n_logits, max_blocks;
  cuda_stage_layout lay;

  /* Attention work items of the current step: planned on first use, one H2D copy. */
  int attn_valid;
  int32_t attn_group, attn_window, attn_n_work, attn_n_reduce, attn_n_split_items;
  size_t attn_reduce_off;
  void *plan_host, *plan_dev;
  size_t plan_cap;
  cudaEvent_t plan_done;

  int32_t *d_ids; /* device [ids_cap] argmax output */
  size_t ids_cap;
  void *host_tmp; /* host scratch for dtype conversion in upload/download */
  size_t host_tmp_cap;
  int32_t *moe_scratch; /* device [moe_cap] expert grouping of one moe_matmul (cuda_ext.c) */
  size_t moe_cap;
  uint16_t *qscratch; /* device bf16 [m][k] of the largest quantized weight dequantized for a GEMM */
  size_t qscratch_cap;
} cuda_backend;

/* cuda_ext.c: the model families' ops (scale, gated_act, MoE routing, grouped matmul, combine). */
int cuda_scale(qv_backend *b, qv_tensor *x, float s);
int cuda_gated_act(qv_backend *b, qv_tensor *out, const qv_tensor *gate, const qv_tensor *up, const qv_act *act);
int cuda_moe_route(qv_backend *b, const qv_tensor *logits, const qv_moe_route *r, qv_tensor *ids, qv_tensor *weights);
int cuda_moe_matmul(qv_backend *b, qv_tensor *out, const qv_tensor *x, const qv_experts *w, const qv_tensor *ids);
int cuda_moe_combine(qv_backend *b, qv_tensor *out, const qv_tensor *y, const qv_tensor *weights);

/* Logs "file:line: what: <CUDA message>", records it in be->base.last_error and returns
 * QV_EDEVICE. */
int cuda_fail(cuda_backend *be, const char *file, int line, const char *what, const char *msg);

#define CUDA_CK(be, call)                                                                 \
  do {                                                                                    \
    cudaError_t e_ = (call);                                                              \
    if (e_ != cudaSuccess) return cuda_fail((be), __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
  } while (0)

#define CUBLAS_CK(be, call)                                                                 \
  do {                                                                                      \
    cublasStatus_t s_ = (call);                                                             \
    if (s_ != CUBLAS_STATUS_SUCCESS)                                                        \
      return cuda_fail((be), __FILE__, __LINE__, #call, cublasLtGetStatusString(s_));       \
  } while (0)

/* out[n][m] = x[n][k] . w[m][k]^T through a cached cuBLASLt plan (cuda_gemm.c). */
int cuda_gemm(cuda_backend *be, void *out, int out_f32, const void *x, const void *w, int64_t n,
              int64_t m, int64_t k);
void cuda_gemm_cache_clear(cuda_backend *be);

#endif
