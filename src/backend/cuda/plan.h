/* Host-side planning of the CUDA backend, in plain C so it builds and is tested on machines
 * without CUDA (tests/unit/test_cuda_plan.c compiles plan.c itself when quiver_core has no CUDA):
 *  - validation of a staged batch against the KV geometry (the boundary before device indices),
 *  - the layout of the one staging buffer that carries a step's metadata in one H2D copy,
 *  - attention work items: row tiles per sequence, and the split-K (flash-decoding) partition
 *    of long key ranges when the batch alone would not fill the GPU,
 *  - the keying and slot choice of the cuBLASLt plan cache. */
#ifndef QV_BACKEND_CUDA_PLAN_H
#define QV_BACKEND_CUDA_PLAN_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/attn_types.h"
#include "backend/backend.h"
#include "quiver/error.h"

/* Checks b for internal consistency (sequence offsets, context lengths, logits rows) and, when
 * kv is not NULL, that every slot and every block table entry a sequence uses is inside the
 * pool. Returns 0 or QV_EINVAL with the first problem in err. */
int cuda_plan_check_batch(const qv_batch *b, const qv_kv_desc *kv, qv_error *err);

/* Byte offsets of each array of a batch in the staging buffer; each starts 16-byte aligned. */
typedef struct cuda_stage_layout {
  size_t token_ids, positions, slot_mapping, seq_q_start, seq_ctx_len, block_tables, logits_idx;
  size_t total_bytes;
} cuda_stage_layout;

void cuda_plan_stage_layout(const qv_batch *b, cuda_stage_layout *out);
/* Copies b's arrays into host memory dst laid out as lay (dst holds lay->total_bytes). */
void cuda_plan_stage_fill(const qv_batch *b, const cuda_stage_layout *lay, void *dst);

/* Inputs of the attention planner. seq_q_start/seq_ctx_len: host copies of the staged batch. */
typedef struct cuda_attn_plan_in {
  int32_t n_seqs;
  const int32_t *seq_q_start; /* [n_seqs + 1] */
  const int32_t *seq_ctx_len; /* [n_seqs] */
  int32_t group;              /* query heads per KV head */
  int32_t n_kv_head;
  int32_t window;             /* 0: full causal */
  int32_t n_sm;               /* multiprocessors of the device */
  int32_t split_slots;        /* partial slots available for split-K (0: never split) */
  int32_t min_split_keys;     /* smallest key range worth a split (multiple of 64) */
} cuda_attn_plan_in;

typedef struct cuda_attn_plan {
  qv_cuda_attn_work *work;     /* [cap_work], caller's memory */
  qv_cuda_attn_reduce *reduce; /* [cap_reduce], caller's memory */
  int32_t cap_work, cap_reduce;
  int32_t n_work, n_reduce, n_slots_used;
} cuda_attn_plan;

/* Row tiles the batch needs (each one work item before splitting). The planner needs at most
 * tiles + split_slots work items and tiles reduce items. */
int64_t cuda_plan_attn_tiles(const cuda_attn_plan_in *in);
/* Fills p (n_work, n_reduce, n_slots_used). Returns QV_ELIMIT when the capacities are short. */
int cuda_plan_attn(const cuda_attn_plan_in *in, cuda_attn_plan *p);

/* cuBLASLt plan cache. One plan per exact GEMM shape and pointer alignment. */
typedef struct cuda_gemm_key {
  int64_t m, n, k;     /* out[n][m] = x[n][k] . w[m][k]^T */
  int32_t out_f32;     /* 1: f32 output, 0: bf16 */
  int32_t align_w, align_x, align_out; /* pointer alignment in bytes, capped at 256 */
} cuda_gemm_key;

/* Alignment (power of two, <= 256) of an address. */
int32_t cuda_plan_ptr_align(const void *p);
uint64_t cuda_plan_gemm_hash(const cuda_gemm_key *k);
/* Slot for key in a table of cap slots (cap a power of two) probing at most 8 slots: a slot
 * holding the key (*hit = 1), else the first empty one, else the home slot, which the caller
 * evicts (*hit = 0). used[i] says whether slot i holds keys[i]. */
int32_t cuda_plan_gemm_slot(const cuda_gemm_key *keys, const uint8_t *used, int32_t cap,
                            const cuda_gemm_key *key, int *hit);

#endif
