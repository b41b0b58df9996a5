/* Plain-C work descriptors shared by the attention kernels (kernels/attention.cu) and the host
 * planner that fills them (src/backend/cuda/plan.c). Kept free of CUDA headers so the planner
 * and its CPU tests build without the toolkit.
 *
 * The attention grid runs one CTA per (work item, KV head). A work item is a tile of at most
 * QV_ATTN_BLOCK_M "rows" of one sequence, where the rows of a sequence are its query tokens
 * times the query heads sharing one KV head (row R = token_in_seq * group + head_in_group), so
 * a GQA decode packs its whole head group into one tile and reads each KV block once. */
#ifndef QV_KERNELS_ATTN_TYPES_H
#define QV_KERNELS_ATTN_TYPES_H

#include <stdint.h>

#define QV_ATTN_BLOCK_M 64  /* rows per work item (4 warps x 16 rows of mma.m16n8k16) */
#define QV_ATTN_MAX_SPLITS 64

typedef struct qv_cuda_attn_work {
  int32_t seq;       /* sequence index in the staged batch */
  int32_t row0;      /* first row of the tile within the sequence's n_q * group rows */
  int32_t n_rows;    /* rows in the tile, 1..QV_ATTN_BLOCK_M */
  int32_t kv_begin;  /* key positions [kv_begin, kv_end) this item visits */
  int32_t kv_end;
  int32_t part_slot; /* -1: write the output directly; else the split-K partial slot */
} qv_cuda_attn_work;

/* One split tile to merge: its n_splits partials live in slots [slot0, slot0 + n_splits). */
typedef struct qv_cuda_attn_reduce {
  int32_t seq;
  int32_t row0;
  int32_t n_rows;
  int32_t n_splits;
  int32_t slot0;
  int32_t pad_;
} qv_cuda_attn_reduce;

#endif
