/* Host-side planning for the CUDA backend (see plan.h): batch validation, staging layout,
 * attention work items with split-K, cuBLASLt plan-cache slots. Plain C with no CUDA types so
 * that CPU-only builds test it. */
#include "backend/cuda/plan.h"

#include <string.h>

int cuda_plan_check_batch(const qv_batch *b, const qv_kv_desc *kv, qv_error *err) {
  if (!b) return qv_error_set(err, QV_EINVAL, "batch is NULL");
  if (b->n_tokens < 0 || b->n_seqs < 0 || b->n_logits < 0 || b->max_blocks < 0)
    return qv_error_set(err, QV_EINVAL, "batch has a negative count (tokens %d, seqs %d, logits %d, max_blocks %d)",
                        b->n_tokens, b->n_seqs, b->n_logits, b->max_blocks);
  if (b->n_tokens > 0 && (!b->token_ids || !b->positions || !b->slot_mapping))
    return qv_error_set(err, QV_EINVAL, "batch of %d tokens lacks token_ids, positions or slot_mapping", b->n_tokens);
  if (!b->seq_q_start || (b->n_seqs > 0 && !b->seq_ctx_len))
    return qv_error_set(err, QV_EINVAL, "batch lacks seq_q_start or seq_ctx_len");
  if (b->n_logits > 0 && !b->logits_idx) return qv_error_set(err, QV_EINVAL, "batch lacks logits_idx");
  if (b->n_seqs > 0 && b->max_blocks > 0 && !b->block_tables)
    return qv_error_set(err, QV_EINVAL, "batch lacks block_tables");
  if (b->seq_q_start[0] != 0 || b->seq_q_start[b->n_seqs] != b->n_tokens)
    return qv_error_set(err, QV_EINVAL, "seq_q_start must run from 0 to n_tokens (%d), got %d..%d",
                        b->n_tokens, b->seq_q_start[0], b->seq_q_start[b->n_seqs]);
  /* Monotone offsets first: the loops below index positions by them. */
  for (int32_t s = 0; s < b->n_seqs; s++)
    if (b->seq_q_start[s + 1] < b->seq_q_start[s])
      return qv_error_set(err, QV_EINVAL, "seq_q_start decreases at sequence %d", s);
  for (int32_t s = 0; s < b->n_seqs; s++) {
    const int32_t q0 = b->seq_q_start[s], n_q = b->seq_q_start[s + 1] - q0, ctx = b->seq_ctx_len[s];
    if (ctx < n_q) return qv_error_set(err, QV_EINVAL, "sequence %d: context %d shorter than its %d new tokens", s, ctx, n_q);
    for (int32_t i = 0; i < n_q; i++)
      if (b->positions[q0 + i] != ctx - n_q + i)
        return qv_error_set(err, QV_EINVAL, "sequence %d: token %d has position %d, expected %d (positions must end at ctx_len-1)",
                            s, q0 + i, b->positions[q0 + i], ctx - n_q + i);
    if (kv && n_q > 0) {
      const int64_t need = ((int64_t)ctx + kv->block_size - 1) / kv->block_size;
      if (need > b->max_blocks)
        return qv_error_set(err, QV_EINVAL, "sequence %d: context %d needs %lld blocks, block table has %d",
                            s, ctx, (long long)need, b->max_blocks);
      const int32_t *bt = b->block_tables + (int64_t)s * b->max_blocks;
      for (int64_t i = 0; i < need; i++)
        if (bt[i] < 0 || bt[i] >= kv->n_blocks)
          return qv_error_set(err, QV_EINVAL, "sequence %d: block table entry %lld is %d, pool has %d blocks",
                              s, (long long)i, bt[i], kv->n_blocks);
    }
  }
  for (int32_t t = 0; t < b->n_tokens; t++) {
    if (b->token_ids[t] < 0) return qv_error_set(err, QV_EINVAL, "token %d has id %d", t, b->token_ids[t]);
    if (kv && (b->slot_mapping[t] < -1 || (int64_t)b->slot_mapping[t] >= (int64_t)kv->n_blocks * kv->block_size))
      return qv_error_set(err, QV_EINVAL, "token %d has KV slot %d outside the pool", t, b->slot_mapping[t]);
  }
  for (int32_t i = 0; i < b->n_logits; i++)
    if (b->logits_idx[i] < 0 || b->logits_idx[i] >= b->n_tokens)
      return qv_error_set(err, QV_EINVAL, "logits_idx[%d] = %d outside the %d tokens", i, b->logits_idx[i], b->n_tokens);
  return 0;
}

static size_t align16(size_t x) { return (x + 15) & ~(size_t)15; }

void cuda_plan_stage_layout(const qv_batch *b, cuda_stage_layout *out) {
  const size_t i4 = sizeof(int32_t);
  size_t off = 0;
  out->token_ids = off;    off = align16(off + (size_t)b->n_tokens * i4);
  out->positions = off;    off = align16(off + (size_t)b->n_tokens * i4);
  out->slot_mapping = off; off = align16(off + (size_t)b->n_tokens * i4);
  out->seq_q_start = off;  off = align16(off + ((size_t)b->n_seqs + 1) * i4);
  out->seq_ctx_len = off;  off = align16(off + (size_t)b->n_seqs * i4);
  out->block_tables = off; off = align16(off + (size_t)b->n_seqs * (size_t)b->max_blocks * i4);
  out->logits_idx = off;   off = align16(off + (size_t)b->n_logits * i4);
  out->total_bytes = off;
}

static void put(char *dst, size_t off, const int32_t *src, size_t n) {
  if (n && src) memcpy(dst + off, src, n * sizeof(int32_t));
}

void cuda_plan_stage_fill(const qv_batch *b, const cuda_stage_layout *lay, void *dst) {
  char *d = dst;
  put(d, lay->token_ids, b->token_ids, (size_t)b->n_tokens);
  put(d, lay->positions, b->positions, (size_t)b->n_tokens);
  put(d, lay->slot_mapping, b->slot_mapping, (size_t)b->n_tokens);
  put(d, lay->seq_q_start, b->seq_q_start, (size_t)b->n_seqs + 1);
  put(d, lay->seq_ctx_len, b->seq_ctx_len, (size_t)b->n_seqs);
  put(d, lay->block_tables, b->block_tables, (size_t)b->n_seqs * (size_t)b->max_blocks);
  put(d, lay->logits_idx, b->logits_idx, (size_t)b->n_logits);
}

int64_t cuda_plan_attn_tiles(const cuda_attn_plan_in *in) {
  int64_t tiles = 0;
  for (int32_t s = 0; s < in->n_seqs; s++) {
    const int64_t rows = (int64_t)(in->seq_q_start[s + 1] - in->seq_q_start[s]) * in->group;
    tiles += (rows + QV_ATTN_BLOCK_M - 1) / QV_ATTN_BLOCK_M;
  }
  return tiles;
}

int cuda_plan_attn(const cuda_attn_plan_in *in, cuda_attn_plan *p) {
  p->n_work = p->n_reduce = p->n_slots_used = 0;
  if (in->group <= 0 || in->n_kv_head <= 0) return QV_EINVAL;
  /* One direct item per row tile; its key range is what its first and last rows can see. */
  for (int32_t s = 0; s < in->n_seqs; s++) {
    const int32_t n_q = in->seq_q_start[s + 1] - in->seq_q_start[s];
    const int32_t pos0 = in->seq_ctx_len[s] - n_q;
    const int64_t rows = (int64_t)n_q * in->group;
    for (int64_t r0 = 0; r0 < rows; r0 += QV_ATTN_BLOCK_M) {
      if (p->n_work >= p->cap_work) return QV_ELIMIT;
      const int64_t n_rows = rows - r0 < QV_ATTN_BLOCK_M ? rows - r0 : QV_ATTN_BLOCK_M;
      const int32_t first = pos0 + (int32_t)(r0 / in->group);
      const int32_t last = pos0 + (int32_t)((r0 + n_rows - 1) / in->group);
      int32_t begin = 0;
      if (in->window > 0 && first - in->window + 1 > 0) begin = first - in->window + 1;
      p->work[p->n_work++] = (qv_cuda_attn_work){.seq = s, .row0 = (int32_t)r0, .n_rows = (int32_t)n_rows,
                                                 .kv_begin = begin, .kv_end = last + 1, .part_slot = -1};
    }
  }
  /* Split-K only when the tiles alone leave the GPU mostly idle (fewer CTAs than 2 waves). */
  const int64_t ctas = (int64_t)p->n_work * in->n_kv_head;
  const int64_t target = 2 * (int64_t)(in->n_sm > 0 ? in->n_sm : 1);
  const int32_t min_keys = in->min_split_keys > 64 ? in->min_split_keys : 64;
  if (in->split_slots <= 0 || ctas == 0 || ctas >= target) return 0;
  int64_t want = (target + ctas - 1) / ctas;
  if (want > QV_ATTN_MAX_SPLITS) want = QV_ATTN_MAX_SPLITS;
  const int32_t n_direct = p->n_work;
  for (int32_t i = 0; i < n_direct; i++) {
    qv_cuda_attn_work *w = &p->work[i];
    const int32_t span = w->kv_end - w->kv_begin;
    int64_t n_split = want;
    if (n_split > span / min_keys) n_split = span / min_keys;
    if (n_split > in->split_slots - p->n_slots_used) n_split = in->split_slots - p->n_slots_used;
    if (n_split < 2) continue;
    int32_t chunk = (int32_t)((span + n_split - 1) / n_split);
    chunk = (chunk + 63) / 64 * 64;
    n_split = (span + chunk - 1) / chunk;
    if (n_split < 2) continue;
    if (p->n_work + n_split - 1 > p->cap_work || p->n_reduce >= p->cap_reduce) return QV_ELIMIT;
    const int32_t slot0 = p->n_slots_used, begin = w->kv_begin, end = w->kv_end;
    p->reduce[p->n_reduce++] = (qv_cuda_attn_reduce){.seq = w->seq, .row0 = w->row0, .n_rows = w->n_rows,
                                                     .n_splits = (int32_t)n_split, .slot0 = slot0};
    for (int32_t k = 0; k < n_split; k++) {
      qv_cuda_attn_work piece = *w;
      piece.kv_begin = begin + k * chunk;
      piece.kv_end = begin + (k + 1) * chunk < end ? begin + (k + 1) * chunk : end;
      piece.part_slot = slot0 + k;
      if (k == 0) *w = piece;
      else p->work[p->n_work++] = piece;
    }
    p->n_slots_used += (int32_t)n_split;
  }
  return 0;
}

int32_t cuda_plan_ptr_align(const void *p) {
  uintptr_t a = (uintptr_t)p;
  int32_t al = 256;
  while (al > 1 && (a & (uintptr_t)(al - 1))) al >>= 1;
  return al;
}

static uint64_t fnv(uint64_t h, int64_t v) {
  for (int i = 0; i < 8; i++) {
    h ^= (uint64_t)(v >> (8 * i)) & 0xffu;
    h *= 1099511628211ull;
  }
  return h;
}

uint64_t cuda_plan_gemm_hash(const cuda_gemm_key *k) {
  uint64_t h = 1469598103934665603ull;
  h = fnv(h, k->m);
  h = fnv(h, k->n);
  h = fnv(h, k->k);
  h = fnv(h, k->out_f32);
  h = fnv(h, k->align_w);
  h = fnv(h, k->align_x);
  h = fnv(h, k->align_out);
  return h;
}

static int key_eq(const cuda_gemm_key *a, const cuda_gemm_key *b) {
  return a->m == b->m && a->n == b->n && a->k == b->k && a->out_f32 == b->out_f32 &&
         a->align_w == b->align_w && a->align_x == b->align_x && a->align_out == b->align_out;
}

int32_t cuda_plan_gemm_slot(const cuda_gemm_key *keys, const uint8_t *used, int32_t cap,
                            const cuda_gemm_key *key, int *hit) {
  const int32_t home = (int32_t)(cuda_plan_gemm_hash(key) & (uint64_t)(cap - 1));
  int32_t empty = -1;
  *hit = 0;
  for (int32_t i = 0; i < 8 && i < cap; i++) {
    const int32_t s = (home + i) & (cap - 1);
    if (used[s]) {
      if (key_eq(&keys[s], key)) {
        *hit = 1;
        return s;
      }
    } else if (empty < 0) {
      empty = s;
    }
  }
  return empty >= 0 ? empty : home;
}
