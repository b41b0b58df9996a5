/* Host-side planning of the CUDA backend, on the CPU: batch validation, the staging layout,
 * the attention work items (tiling and split-K) checked by emulating the kernels' math in
 * double precision from the plan alone, and the cuBLASLt plan-cache slots. In builds without
 * CUDA, quiver_core lacks src/backend/cuda, so this test compiles plan.c itself. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifndef QV_HAVE_CUDA
#include "backend/cuda/plan.c"
#else
#include "backend/cuda/plan.h"
#endif

/* A random batch of n_seqs sequences (decodes and prefill chunks) with a consistent layout. */
typedef struct rb {
  qv_batch b;
  int32_t ids[512], pos[512], slots[512], qs[33], ctx[32], bt[32 * 64], lidx[32];
} rb;

static uint32_t rng_next(uint32_t *s) {
  *s = *s * 1664525u + 1013904223u;
  return *s >> 8;
}

static void make_batch(rb *r, uint32_t seed, int32_t n_seqs, const qv_kv_desc *kv) {
  memset(r, 0, sizeof *r);
  uint32_t s = seed;
  int32_t t = 0;
  r->qs[0] = 0;
  for (int32_t i = 0; i < n_seqs; i++) {
    const int32_t n_q = (rng_next(&s) % 3 == 0) ? 1 + (int32_t)(rng_next(&s) % 12) : 1;
    const int32_t ctx = n_q + (int32_t)(rng_next(&s) % 700);
    for (int32_t j = 0; j < n_q; j++) {
      r->ids[t] = 1 + (int32_t)(rng_next(&s) % 100);
      r->pos[t] = ctx - n_q + j;
      r->slots[t] = (int32_t)(rng_next(&s) % (uint32_t)(kv->n_blocks * kv->block_size));
      t++;
    }
    r->qs[i + 1] = t;
    r->ctx[i] = ctx;
    for (int32_t j = 0; j < 64; j++) r->bt[i * 64 + j] = (int32_t)(rng_next(&s) % (uint32_t)kv->n_blocks);
    r->lidx[i] = t - 1;
  }
  r->b = (qv_batch){.n_tokens = t, .n_seqs = n_seqs, .n_logits = n_seqs, .token_ids = r->ids, .positions = r->pos,
                    .slot_mapping = r->slots, .seq_q_start = r->qs, .seq_ctx_len = r->ctx, .block_tables = r->bt,
                    .max_blocks = 64, .logits_idx = r->lidx};
}

static const qv_kv_desc kKv = {.n_layer = 2, .n_blocks = 100, .block_size = 16, .n_kv_head = 2, .head_dim = 64};

Test(cuda_plan, batch_check_accepts_and_rejects) {
  rb r;
  qv_error e = {0};
  make_batch(&r, 11, 8, &kKv);
  cr_assert_eq(cuda_plan_check_batch(&r.b, &kKv, &e), 0, "%s", e.msg);

  make_batch(&r, 11, 8, &kKv);
  r.qs[2] = r.b.n_tokens + 50; /* a later offset past the end: must not index positions by it */
  cr_assert_eq(cuda_plan_check_batch(&r.b, &kKv, &e), QV_EINVAL);

  make_batch(&r, 11, 8, &kKv);
  r.pos[0] += 1;
  cr_assert_eq(cuda_plan_check_batch(&r.b, &kKv, &e), QV_EINVAL);
  cr_assert(strstr(e.msg, "position") != NULL, "%s", e.msg);

  make_batch(&r, 11, 8, &kKv);
  r.bt[0] = kKv.n_blocks;
  cr_assert_eq(cuda_plan_check_batch(&r.b, &kKv, &e), QV_EINVAL);
  cr_assert_eq(cuda_plan_check_batch(&r.b, NULL, &e), 0, "without a KV cache block ids are not checked");

  make_batch(&r, 11, 8, &kKv);
  r.slots[3] = kKv.n_blocks * kKv.block_size;
  cr_assert_eq(cuda_plan_check_batch(&r.b, &kKv, &e), QV_EINVAL);

  make_batch(&r, 11, 8, &kKv);
  r.lidx[1] = r.b.n_tokens;
  cr_assert_eq(cuda_plan_check_batch(&r.b, &kKv, &e), QV_EINVAL);

  make_batch(&r, 11, 8, &kKv);
  r.ctx[0] = 2000; /* needs 125 blocks of 16, the table holds 64 */
  for (int32_t t = r.qs[0]; t < r.qs[1]; t++) r.pos[t] = 2000 - (r.qs[1] - r.qs[0]) + (t - r.qs[0]);
  cr_assert_eq(cuda_plan_check_batch(&r.b, &kKv, &e), QV_EINVAL);
  cr_assert(strstr(e.msg, "blocks") != NULL, "%s", e.msg);

  make_batch(&r, 11, 8, &kKv);
  r.ids[0] = -3;
  cr_assert_eq(cuda_plan_check_batch(&r.b, &kKv, &e), QV_EINVAL);
}

Test(cuda_plan, stage_layout_aligned_disjoint_and_filled) {
  for (uint32_t seed = 1; seed < 40; seed++) {
    rb r;
    make_batch(&r, seed, 1 + (int32_t)(seed % 30), &kKv);
    cuda_stage_layout l;
    cuda_plan_stage_layout(&r.b, &l);
    const size_t off[7] = {l.token_ids, l.positions, l.slot_mapping, l.seq_q_start, l.seq_ctx_len, l.block_tables, l.logits_idx};
    const size_t len[7] = {(size_t)r.b.n_tokens, (size_t)r.b.n_tokens, (size_t)r.b.n_tokens, (size_t)r.b.n_seqs + 1,
                           (size_t)r.b.n_seqs, (size_t)r.b.n_seqs * 64, (size_t)r.b.n_logits};
    const int32_t *src[7] = {r.ids, r.pos, r.slots, r.qs, r.ctx, r.bt, r.lidx};
    for (int i = 0; i < 7; i++) {
      cr_assert_eq(off[i] % 16, 0);
      const size_t end = off[i] + len[i] * 4;
      cr_assert_leq(end, i < 6 ? off[i + 1] : l.total_bytes, "array %d overlaps the next", i);
    }
    char *buf = malloc(l.total_bytes);
    memset(buf, 0xAB, l.total_bytes);
    cuda_plan_stage_fill(&r.b, &l, buf);
    for (int i = 0; i < 7; i++) cr_assert_eq(memcmp(buf + off[i], src[i], len[i] * 4), 0, "array %d", i);
    free(buf);
  }
}

/* Emulates the kernels for one KV head on random scores: for every row of every tile, softmax
 * over the tile's key range(s) with the row's causal/window mask; split tiles are merged by the
 * reduce kernel's formula. Returns the largest difference from a direct softmax per row. */
static double emulate(const cuda_attn_plan_in *in, const cuda_attn_plan *p, uint32_t seed) {
  double worst = 0.0;
  const int D = 4;
  /* coverage[s][row]: how many outputs each row received */
  for (int32_t s = 0; s < in->n_seqs; s++) {
    const int32_t n_q = in->seq_q_start[s + 1] - in->seq_q_start[s], ctx = in->seq_ctx_len[s];
    const int32_t rows = n_q * in->group;
    double *score = malloc(sizeof(double) * (size_t)(rows ? rows : 1) * (size_t)ctx);
    double *v = malloc(sizeof(double) * (size_t)ctx * D);
    double *out = calloc((size_t)(rows ? rows : 1) * D, sizeof(double));
    int *cover = calloc((size_t)(rows ? rows : 1), sizeof(int));
    uint32_t st = seed + (uint32_t)s;
    for (int64_t i = 0; i < (int64_t)rows * ctx; i++) score[i] = (double)(rng_next(&st) % 2000) / 300.0 - 3.0;
    for (int64_t i = 0; i < (int64_t)ctx * D; i++) v[i] = (double)(rng_next(&st) % 2000) / 1000.0 - 1.0;
    /* partial (o, lse) of a row over keys [b, e) with the mask, as attn_mma_kernel writes it */
    for (int32_t wi = 0; wi < p->n_work; wi++) {
      const qv_cuda_attn_work *w = &p->work[wi];
      if (w->seq != s) continue;
      cr_assert(w->kv_begin >= 0 && w->kv_end <= ctx && w->n_rows >= 1 && w->n_rows <= QV_ATTN_BLOCK_M);
      if (w->part_slot >= 0) continue;
      for (int32_t r = w->row0; r < w->row0 + w->n_rows; r++) {
        const int32_t pos = ctx - n_q + r / in->group;
        double mx = -INFINITY, l = 0.0, o[4] = {0};
        for (int32_t j = w->kv_begin; j < w->kv_end; j++)
          if (j <= pos && (in->window <= 0 || j > pos - in->window)) mx = fmax(mx, score[(int64_t)r * ctx + j]);
        for (int32_t j = w->kv_begin; j < w->kv_end; j++)
          if (j <= pos && (in->window <= 0 || j > pos - in->window)) {
            const double e = exp(score[(int64_t)r * ctx + j] - mx);
            l += e;
            for (int d = 0; d < D; d++) o[d] += e * v[(int64_t)j * D + d];
          }
        for (int d = 0; d < D; d++) out[(int64_t)r * D + d] = l > 0 ? o[d] / l : 0.0;
        cover[r]++;
      }
    }
    for (int32_t ri = 0; ri < p->n_reduce; ri++) {
      const qv_cuda_attn_reduce *rd = &p->reduce[ri];
      if (rd->seq != s) continue;
      /* the split items of this tile must tile its key range contiguously */
      int32_t expect_begin = -1, last_end = -1;
      for (int32_t k = 0; k < rd->n_splits; k++) {
        const qv_cuda_attn_work *w = NULL;
        for (int32_t wi = 0; wi < p->n_work; wi++)
          if (p->work[wi].part_slot == rd->slot0 + k) w = &p->work[wi];
        cr_assert_not_null(w, "slot %d has no work item", rd->slot0 + k);
        cr_assert_eq(w->seq, s);
        cr_assert_eq(w->row0, rd->row0);
        if (k > 0) cr_assert_eq(w->kv_begin, expect_begin, "splits must be contiguous");
        cr_assert_lt(w->kv_begin, w->kv_end);
        expect_begin = w->kv_end;
        last_end = w->kv_end;
      }
      (void)last_end;
      for (int32_t r = rd->row0; r < rd->row0 + rd->n_rows; r++) {
        const int32_t pos = ctx - n_q + r / in->group;
        double lse[QV_ATTN_MAX_SPLITS], po[QV_ATTN_MAX_SPLITS][4];
        for (int32_t k = 0; k < rd->n_splits; k++) {
          const qv_cuda_attn_work *w = NULL;
          for (int32_t wi = 0; wi < p->n_work; wi++)
            if (p->work[wi].part_slot == rd->slot0 + k) w = &p->work[wi];
          double mx = -INFINITY, l = 0.0, o[4] = {0};
          for (int32_t j = w->kv_begin; j < w->kv_end; j++)
            if (j <= pos && (in->window <= 0 || j > pos - in->window)) mx = fmax(mx, score[(int64_t)r * ctx + j]);
          for (int32_t j = w->kv_begin; j < w->kv_end; j++)
            if (j <= pos && (in->window <= 0 || j > pos - in->window)) {
              const double e = exp(score[(int64_t)r * ctx + j] - mx);
              l += e;
              for (int d = 0; d < D; d++) o[d] += e * v[(int64_t)j * D + d];
            }
          lse[k] = l > 0 ? mx + log(l) : -INFINITY;
          for (int d = 0; d < D; d++) po[k][d] = l > 0 ? o[d] / l : 0.0;
        }
        double mx = -INFINITY;
        for (int32_t k = 0; k < rd->n_splits; k++) mx = fmax(mx, lse[k]);
        double num[4] = {0}, den = 0.0;
        for (int32_t k = 0; k < rd->n_splits; k++) {
          const double wgt = mx == -INFINITY ? 0.0 : exp(lse[k] - mx);
          den += wgt;
          for (int d = 0; d < D; d++) num[d] += wgt * po[k][d];
        }
        for (int d = 0; d < D; d++) out[(int64_t)r * D + d] = den > 0 ? num[d] / den : 0.0;
        cover[r]++;
      }
    }
    /* direct softmax per row over its whole visible range */
    for (int32_t r = 0; r < rows; r++) {
      cr_assert_eq(cover[r], 1, "sequence %d row %d covered %d times", s, r, cover[r]);
      const int32_t pos = ctx - n_q + r / in->group;
      const int32_t lo = in->window > 0 && pos - in->window + 1 > 0 ? pos - in->window + 1 : 0;
      double mx = -INFINITY, l = 0.0, o[4] = {0};
      for (int32_t j = lo; j <= pos; j++) mx = fmax(mx, score[(int64_t)r * ctx + j]);
      for (int32_t j = lo; j <= pos; j++) {
        const double e = exp(score[(int64_t)r * ctx + j] - mx);
        l += e;
        for (int d = 0; d < D; d++) o[d] += e * v[(int64_t)j * D + d];
      }
      for (int d = 0; d < D; d++) worst = fmax(worst, fabs(o[d] / l - out[(int64_t)r * D + d]));
    }
    free(score);
    free(v);
    free(out);
    free(cover);
  }
  return worst;
}

static void plan_and_check(const rb *r, int32_t group, int32_t window, int32_t n_sm, int32_t slots, int32_t *n_split_out) {
  cuda_attn_plan_in in = {.n_seqs = r->b.n_seqs, .seq_q_start = r->qs, .seq_ctx_len = r->ctx, .group = group,
                          .n_kv_head = 2, .window = window, .n_sm = n_sm, .split_slots = slots, .min_split_keys = 128};
  const int64_t tiles = cuda_plan_attn_tiles(&in);
  cuda_attn_plan p = {.cap_work = (int32_t)(tiles + slots), .cap_reduce = (int32_t)tiles};
  p.work = calloc((size_t)p.cap_work, sizeof *p.work);
  p.reduce = calloc((size_t)(tiles ? tiles : 1), sizeof *p.reduce);
  cr_assert_eq(cuda_plan_attn(&in, &p), 0);
  cr_assert_leq(p.n_slots_used, slots);
  cr_assert_eq(p.n_work, tiles + p.n_slots_used - p.n_reduce);
  const double err = emulate(&in, &p, 1234u + (uint32_t)group);
  cr_assert_lt(err, 1e-9, "plan emulation differs from direct softmax by %g", err);
  *n_split_out = p.n_reduce;
  free(p.work);
  free(p.reduce);
}

Test(cuda_plan, attention_plan_covers_every_row_and_splits_merge_exactly) {
  for (uint32_t seed = 1; seed <= 12; seed++) {
    rb r;
    make_batch(&r, seed * 77u, 1 + (int32_t)(seed % 6), &kKv);
    const int32_t groups[3] = {1, 4, 7}, windows[3] = {0, 100, 1};
    for (int gi = 0; gi < 3; gi++) {
      int32_t n_split = 0;
      /* many SMs and slots: small batches split; no slots: never */
      plan_and_check(&r, groups[gi], windows[seed % 3], 132, 64, &n_split);
      plan_and_check(&r, groups[gi], windows[seed % 3], 132, 0, &n_split);
      cr_assert_eq(n_split, 0);
    }
  }
}

Test(cuda_plan, split_k_only_when_the_gpu_would_idle) {
  rb r;
  make_batch(&r, 5, 1, &kKv);
  r.qs[1] = 1;
  r.ctx[0] = 4000;
  r.b.n_tokens = 1;
  int32_t n_split = 0;
  plan_and_check(&r, 4, 0, 132, 64, &n_split);
  cr_assert_eq(n_split, 1, "one long decode on 132 SMs must split");
  plan_and_check(&r, 4, 0, 1, 64, &n_split);
  cr_assert_eq(n_split, 0, "a single-SM device is already full");
  r.ctx[0] = 100;
  plan_and_check(&r, 4, 0, 132, 64, &n_split);
  cr_assert_eq(n_split, 0, "short contexts are not split");
}

Test(cuda_plan, gemm_cache_slots) {
  enum { CAP = 16 };
  cuda_gemm_key keys[CAP];
  uint8_t used[CAP] = {0};
  int hit = 0;
  cr_assert_eq(cuda_plan_ptr_align((void *)(uintptr_t)0x1000), 256);
  cr_assert_eq(cuda_plan_ptr_align((void *)(uintptr_t)0x1006), 2);
  cr_assert_eq(cuda_plan_ptr_align((void *)(uintptr_t)0x1030), 16);
  cuda_gemm_key k[40];
  int32_t slot_of[40];
  for (int i = 0; i < 40; i++) {
    k[i] = (cuda_gemm_key){.m = 4096, .n = 1 + i, .k = 4096, .out_f32 = 0, .align_w = 256, .align_x = 256, .align_out = 256};
  }
  /* fill 12 distinct keys: each lands in its own slot and is found again */
  for (int i = 0; i < 12; i++) {
    slot_of[i] = cuda_plan_gemm_slot(keys, used, CAP, &k[i], &hit);
    cr_assert_eq(hit, 0);
    keys[slot_of[i]] = k[i];
    used[slot_of[i]] = 1;
  }
  for (int i = 0; i < 12; i++) {
    cr_assert_eq(cuda_plan_gemm_slot(keys, used, CAP, &k[i], &hit), slot_of[i]);
    cr_assert_eq(hit, 1);
    for (int j = 0; j < i; j++) cr_assert_neq(slot_of[i], slot_of[j]);
  }
  /* a key differing only in alignment or output type is a different plan */
  cuda_gemm_key k2 = k[0];
  k2.align_x = 2;
  cuda_plan_gemm_slot(keys, used, CAP, &k2, &hit);
  cr_assert_eq(hit, 0);
  k2 = k[0];
  k2.out_f32 = 1;
  cr_assert_neq(cuda_plan_gemm_hash(&k2), cuda_plan_gemm_hash(&k[0]));
  /* a full table still answers with a slot inside it (the caller evicts) */
  for (int i = 0; i < CAP; i++) used[i] = 1;
  const int32_t s = cuda_plan_gemm_slot(keys, used, CAP, &k[39], &hit);
  cr_assert(s >= 0 && s < CAP);
}
