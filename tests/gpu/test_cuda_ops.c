/* Every op of the CUDA backend against the CPU reference through the backend interface, on
 * random non-zero inputs with outputs poisoned (NaN) first. Tolerances: bf16 storage gives
 * ~0.4% per rounding, so elementwise ops and norms use rtol 1e-2; GEMMs and attention (several
 * roundings, P in bf16) use rtol 2e-2 plus an absolute term of 1e-2 of the output's rms for
 * elements near zero. Skipped (not passed) without a CUDA build or a GPU. */
#include "gpu_common.h"

#ifdef QV_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

/* A staged batch (both backends get the same). */
typedef struct tb {
  qv_batch b;
  int32_t *ids, *pos, *slots, *qs, *ctx, *bt, *lidx;
} tb;

static void tb_free(tb *t) {
  free(t->ids);
  free(t->pos);
  free(t->slots);
  free(t->qs);
  free(t->ctx);
  free(t->bt);
  free(t->lidx);
}

/* Sequences with n_q[s] new tokens each ending at ctx[s]; block tables are a shuffled
 * permutation of the pool so that pages are never contiguous. */
static void tb_make(tb *t, int32_t n_seqs, const int32_t *n_q, const int32_t *ctx, int32_t block_size,
                    int32_t n_blocks, int32_t vocab, uint32_t *rng) {
  memset(t, 0, sizeof *t);
  int32_t n_tok = 0, max_blocks = 1;
  for (int32_t s = 0; s < n_seqs; s++) {
    n_tok += n_q[s];
    const int32_t nb = (ctx[s] + block_size - 1) / block_size;
    if (nb > max_blocks) max_blocks = nb;
  }
  t->ids = calloc((size_t)n_tok + 1, 4);
  t->pos = calloc((size_t)n_tok + 1, 4);
  t->slots = calloc((size_t)n_tok + 1, 4);
  t->qs = calloc((size_t)n_seqs + 1, 4);
  t->ctx = calloc((size_t)n_seqs + 1, 4);
  t->bt = calloc((size_t)n_seqs * max_blocks + 1, 4);
  t->lidx = calloc((size_t)n_seqs + 1, 4);
  int32_t *perm = malloc((size_t)n_blocks * 4);
  for (int32_t i = 0; i < n_blocks; i++) perm[i] = i;
  for (int32_t i = n_blocks - 1; i > 0; i--) {
    const int32_t j = (int32_t)(g_rng(rng) % (uint32_t)(i + 1)), x = perm[i];
    perm[i] = perm[j];
    perm[j] = x;
  }
  int32_t used = 0, tok = 0;
  for (int32_t s = 0; s < n_seqs; s++) {
    const int32_t nb = (ctx[s] + block_size - 1) / block_size;
    cr_assert_leq(used + nb, n_blocks, "test pool too small");
    for (int32_t i = 0; i < nb; i++) t->bt[s * max_blocks + i] = perm[used + i];
    used += nb;
    t->qs[s] = tok;
    t->ctx[s] = ctx[s];
    for (int32_t i = 0; i < n_q[s]; i++, tok++) {
      const int32_t p = ctx[s] - n_q[s] + i;
      t->ids[tok] = 1 + (int32_t)(g_rng(rng) % (uint32_t)(vocab - 1));
      t->pos[tok] = p;
      t->slots[tok] = t->bt[s * max_blocks + p / block_size] * block_size + p % block_size;
    }
    t->lidx[s] = tok - 1;
  }
  t->qs[n_seqs] = tok;
  free(perm);
  t->b = (qv_batch){.n_tokens = n_tok, .n_seqs = n_seqs, .n_logits = n_seqs, .token_ids = t->ids,
                    .positions = t->pos, .slot_mapping = t->slots, .seq_q_start = t->qs, .seq_ctx_len = t->ctx,
                    .block_tables = t->bt, .max_blocks = max_blocks, .logits_idx = t->lidx};
}

static void both_set_batch(gpu_pair *p, const qv_batch *b) {
  cr_assert_eq(p->cpu->ops->set_batch(p->cpu, b), 0, "%s", p->cpu->last_error.msg);
  cr_assert_eq(p->gpu->ops->set_batch(p->gpu, b), 0, "%s", p->gpu->last_error.msg);
}

/* The CPU backend stages a batch only once a KV cache exists; ops that need none get a small one. */
static void both_small_kv(gpu_pair *p, int32_t n_blocks) {
  const qv_kv_desc kv = {.n_layer = 1, .n_blocks = n_blocks, .block_size = 16, .n_kv_head = 1, .head_dim = 8};
  cr_assert_eq(p->cpu->ops->kv_init(p->cpu, &kv), 0, "%s", p->cpu->last_error.msg);
  cr_assert_eq(p->gpu->ops->kv_init(p->gpu, &kv), 0, "%s", p->gpu->last_error.msg);
}

static void both_kv_deinit(gpu_pair *p) {
  p->cpu->ops->kv_deinit(p->cpu);
  p->gpu->ops->kv_deinit(p->gpu);
}

#define BOTH(p, call_cpu, call_gpu)                                                   \
  do {                                                                                \
    cr_assert_eq((call_cpu), 0, "cpu: %s", (p)->cpu->last_error.msg);                 \
    cr_assert_eq((call_gpu), 0, "gpu: %s", (p)->gpu->last_error.msg);                 \
  } while (0)

Test(cuda_ops, upload_download_roundtrip) {
  gpu_pair p;
  gpu_pair_open(&p);
  if (p.dry) cr_skip_test("dry run: bf16 rounding is the CUDA backend's");
  uint32_t rng = 0x1234u;
  const size_t n = 5000;
  float *v = malloc(n * 4), *back = malloc(n * 4);
  for (size_t i = 0; i < n; i++) v[i] = ((float)(g_rng(&rng) % 100000) - 50000.0f) / 777.0f + 0.001f;
  qv_tensor t;
  cr_assert_eq(p.gpu->ops->alloc(p.gpu, QV_DTYPE_BF16, 50, 100, &t), 0);
  cr_assert_eq(p.gpu->ops->upload(p.gpu, &t, v, QV_DTYPE_F32), 0);
  for (size_t i = 0; i < n; i++) back[i] = NAN;
  cr_assert_eq(p.gpu->ops->download_f32(p.gpu, &t, back), 0);
  for (size_t i = 0; i < n; i++) cr_assert_eq(back[i], qv_bf16_to_f32(qv_f32_to_bf16(v[i])), "element %zu", i);
  uint16_t *h = malloc(n * 2); /* f16 source */
  for (size_t i = 0; i < n; i++) h[i] = qv_f32_to_f16(v[i] / 100.0f);
  cr_assert_eq(p.gpu->ops->upload(p.gpu, &t, h, QV_DTYPE_F16), 0);
  cr_assert_eq(p.gpu->ops->download_f32(p.gpu, &t, back), 0);
  for (size_t i = 0; i < n; i++) cr_assert_eq(back[i], qv_bf16_to_f32(qv_f32_to_bf16(qv_f16_to_f32(h[i]))));
  qv_tensor f;
  cr_assert_eq(p.gpu->ops->alloc(p.gpu, QV_DTYPE_F32, 1, (int64_t)n, &f), 0);
  cr_assert_eq(p.gpu->ops->upload(p.gpu, &f, v, QV_DTYPE_F32), 0);
  cr_assert_eq(p.gpu->ops->download_f32(p.gpu, &f, back), 0);
  cr_assert_eq(memcmp(back, v, n * 4), 0);
  size_t fr = 0, tot = 0;
  cr_assert_eq(p.gpu->ops->mem_info(p.gpu, &fr, &tot), 0);
  cr_assert(fr > 0 && tot >= fr);
  p.gpu->ops->free(p.gpu, &t);
  p.gpu->ops->free(p.gpu, &f);
  free(v);
  free(back);
  free(h);
  gpu_pair_close(&p);
}

Test(cuda_ops, embed_rmsnorm_add_silu_gather) {
  gpu_pair p;
  gpu_pair_open(&p);
  uint32_t rng = 0xbeefu;
  const int32_t vocab = 300;
  const int32_t cols_set[3] = {96, 1000, 5000}; /* warp-per-row and block-per-row norms */
  both_small_kv(&p, 16);
  for (int ci = 0; ci < 3; ci++) {
    const int32_t dim = cols_set[ci];
    int32_t n_q[3] = {5, 1, 9}, ctx[3] = {5, 20, 30};
    tb t;
    tb_make(&t, 3, n_q, ctx, 16, 16, vocab, &rng);
    both_set_batch(&p, &t.b);
    const int64_t n = (int64_t)t.b.n_tokens;
    float *tab = g_random(&rng, (size_t)vocab * dim, -1.0f, 1.0f);
    float *wv = g_random(&rng, (size_t)dim, 0.5f, 1.5f);
    float *dv = g_random(&rng, (size_t)(n * dim), -2.0f, 2.0f);
    mirror table, w, x, out, delta, gate;
    mirror_weight(&p, &table, vocab, dim, tab);
    mirror_weight(&p, &w, 1, dim, wv);
    mirror_act(&p, &delta, n, dim, dv);
    mirror_alloc(&p, &x, p.cpu->ops->act_dtype, p.gpu->ops->act_dtype, n, dim);
    mirror_alloc(&p, &out, p.cpu->ops->act_dtype, p.gpu->ops->act_dtype, n, dim);
    mirror_poison(&p, &x);
    BOTH(&p, p.cpu->ops->embed(p.cpu, &x.c, &table.c), p.gpu->ops->embed(p.gpu, &x.g, &table.g));
    mirror_expect_close(&p, &x, 0.0, 0.0, "embed");

    mirror_poison(&p, &out);
    BOTH(&p, p.cpu->ops->rmsnorm(p.cpu, &out.c, &x.c, &w.c, 1e-5f), p.gpu->ops->rmsnorm(p.gpu, &out.g, &x.g, &w.g, 1e-5f));
    mirror_expect_close(&p, &out, 1e-2, 1e-3, "rmsnorm");

    mirror_poison(&p, &out);
    BOTH(&p, p.cpu->ops->add_rmsnorm(p.cpu, &out.c, &x.c, &delta.c, &w.c, 1e-6f),
         p.gpu->ops->add_rmsnorm(p.gpu, &out.g, &x.g, &delta.g, &w.g, 1e-6f));
    mirror_expect_close(&p, &out, 1e-2, 1e-3, "add_rmsnorm out");
    mirror_expect_close(&p, &x, 1e-2, 1e-3, "add_rmsnorm residual");

    /* in place: out aliases x */
    BOTH(&p, p.cpu->ops->rmsnorm(p.cpu, &x.c, &x.c, &w.c, 1e-5f), p.gpu->ops->rmsnorm(p.gpu, &x.g, &x.g, &w.g, 1e-5f));
    mirror_expect_close(&p, &x, 1e-2, 1e-3, "rmsnorm in place");

    BOTH(&p, p.cpu->ops->add(p.cpu, &x.c, &delta.c), p.gpu->ops->add(p.gpu, &x.g, &delta.g));
    mirror_expect_close(&p, &x, 1e-2, 2e-2, "add"); /* x was rounded before: absolute error near cancellation */

    float *gv = g_random(&rng, (size_t)(n * dim), -4.0f, 4.0f);
    mirror_act(&p, &gate, n, dim, gv);
    mirror_poison(&p, &out);
    BOTH(&p, p.cpu->ops->silu_mul(p.cpu, &out.c, &gate.c, &delta.c), p.gpu->ops->silu_mul(p.gpu, &out.g, &gate.g, &delta.g));
    mirror_expect_close(&p, &out, 1e-2, 1e-3, "silu_mul");
    BOTH(&p, p.cpu->ops->silu_mul(p.cpu, &gate.c, &gate.c, &delta.c), p.gpu->ops->silu_mul(p.gpu, &gate.g, &gate.g, &delta.g));
    mirror_expect_close(&p, &gate, 1e-2, 1e-3, "silu_mul in place");

    mirror rows;
    mirror_alloc(&p, &rows, p.cpu->ops->act_dtype, p.gpu->ops->act_dtype, t.b.n_logits, dim);
    mirror_poison(&p, &rows);
    BOTH(&p, p.cpu->ops->gather_rows(p.cpu, &rows.c, &out.c), p.gpu->ops->gather_rows(p.gpu, &rows.g, &out.g));
    mirror_expect_close(&p, &rows, 1e-2, 1e-3, "gather_rows"); /* the gathered rows are bf16 on the GPU */

    mirror_free(&p, &rows);
    mirror_free(&p, &gate);
    mirror_free(&p, &table);
    mirror_free(&p, &w);
    mirror_free(&p, &x);
    mirror_free(&p, &out);
    mirror_free(&p, &delta);
    free(tab);
    free(wv);
    free(dv);
    free(gv);
    tb_free(&t);
  }
  both_kv_deinit(&p);
  gpu_pair_close(&p);
}

Test(cuda_ops, per_head_norm_view) {
  gpu_pair p;
  gpu_pair_open(&p);
  uint32_t rng = 77u;
  float *xv = g_random(&rng, 13 * 8 * 128, -3.0f, 3.0f), *wv = g_random(&rng, 128, 0.2f, 2.0f);
  mirror x, w, out;
  mirror_act(&p, &x, 13 * 8, 128, xv); /* [n_tok * n_head][head_dim], a qk-norm view */
  mirror_weight(&p, &w, 1, 128, wv);
  mirror_alloc(&p, &out, p.cpu->ops->act_dtype, p.gpu->ops->act_dtype, 13 * 8, 128);
  mirror_poison(&p, &out);
  BOTH(&p, p.cpu->ops->rmsnorm(p.cpu, &out.c, &x.c, &w.c, 1e-6f), p.gpu->ops->rmsnorm(p.gpu, &out.g, &x.g, &w.g, 1e-6f));
  mirror_expect_close(&p, &out, 1e-2, 1e-3, "rmsnorm per head");
  mirror_free(&p, &x);
  mirror_free(&p, &w);
  mirror_free(&p, &out);
  free(xv);
  free(wv);
  gpu_pair_close(&p);
}

static void check_matmul(gpu_pair *p, uint32_t *rng, int64_t n, int64_t m, int64_t k, int with_bias, int out_f32) {
  float *xv = g_random(rng, (size_t)(n * k), -1.0f, 1.0f), *wv = g_random(rng, (size_t)(m * k), -1.0f, 1.0f);
  float *bv = g_random(rng, (size_t)m, -1.0f, 1.0f);
  mirror x, w, b, out;
  mirror_act(p, &x, n, k, xv);
  mirror_weight(p, &w, m, k, wv);
  mirror_weight(p, &b, 1, m, bv);
  mirror_alloc(p, &out, p->cpu->ops->act_dtype, out_f32 ? QV_DTYPE_F32 : p->gpu->ops->act_dtype, n, m);
  mirror_poison(p, &out);
  BOTH(p, p->cpu->ops->matmul(p->cpu, &out.c, &x.c, &w.c, with_bias ? &b.c : NULL),
       p->gpu->ops->matmul(p->gpu, &out.g, &x.g, &w.g, with_bias ? &b.g : NULL));
  char what[96];
  snprintf(what, sizeof what, "matmul n=%lld m=%lld k=%lld bias=%d f32=%d", (long long)n, (long long)m, (long long)k,
           with_bias, out_f32);
  mirror_expect_close(p, &out, 2e-2, 1e-2, what);
  mirror_free(p, &x);
  mirror_free(p, &w);
  mirror_free(p, &b);
  mirror_free(p, &out);
  free(xv);
  free(wv);
  free(bv);
}

Test(cuda_ops, matmul_shapes) {
  gpu_pair p;
  gpu_pair_open(&p);
  uint32_t rng = 4242u;
  check_matmul(&p, &rng, 1, 96, 64, 0, 0);
  check_matmul(&p, &rng, 37, 172, 64, 1, 0);  /* odd row pitch (stories260K's FFN) */
  check_matmul(&p, &rng, 5, 64, 172, 0, 0);
  check_matmul(&p, &rng, 128, 512, 256, 1, 1);
  check_matmul(&p, &rng, 300, 1024, 4096, 0, 0);
#ifdef QV_HAVE_CUDA
  /* the same shape again reuses its cached plan */
  if (!p.dry) {
  const int64_t made = qv_cuda_backend_gemm_plans_made(p.gpu);
  check_matmul(&p, &rng, 300, 1024, 4096, 0, 0);
  cr_assert_eq(qv_cuda_backend_gemm_plans_made(p.gpu), made, "a repeated GEMM shape must hit the plan cache");
  }
#endif
  gpu_pair_close(&p);
}

static void check_rope(gpu_pair *p, uint32_t *rng, int32_t head_dim, int32_t rot_dim, int neox, float attn_factor) {
  const int32_t n_head = 4, n_kv = 2;
  int32_t n_q[2] = {6, 1}, ctx[2] = {6, 5000};
  tb t;
  both_small_kv(p, 400);
  tb_make(&t, 2, n_q, ctx, 16, 400, 100, rng);
  both_set_batch(p, &t.b);
  const int64_t n = t.b.n_tokens;
  float *qv = g_random(rng, (size_t)(n * n_head * head_dim), -2.0f, 2.0f);
  float *kv = g_random(rng, (size_t)(n * n_kv * head_dim), -2.0f, 2.0f);
  float *fr = malloc((size_t)rot_dim / 2 * 4);
  for (int32_t i = 0; i < rot_dim / 2; i++) fr[i] = powf(10000.0f, -2.0f * (float)i / (float)rot_dim) * 0.9f;
  mirror q, k, f;
  mirror_act(p, &q, n, n_head * head_dim, qv);
  mirror_act(p, &k, n, n_kv * head_dim, kv);
  mirror_alloc(p, &f, QV_DTYPE_F32, QV_DTYPE_F32, 1, rot_dim / 2);
  BOTH(p, p->cpu->ops->upload(p->cpu, &f.c, fr, QV_DTYPE_F32), p->gpu->ops->upload(p->gpu, &f.g, fr, QV_DTYPE_F32));
  const qv_rope rc = {.head_dim = head_dim, .rot_dim = rot_dim, .neox = neox, .attn_factor = attn_factor, .inv_freq = &f.c};
  const qv_rope rg = {.head_dim = head_dim, .rot_dim = rot_dim, .neox = neox, .attn_factor = attn_factor, .inv_freq = &f.g};
  BOTH(p, p->cpu->ops->rope(p->cpu, &q.c, n_head, &k.c, n_kv, &rc), p->gpu->ops->rope(p->gpu, &q.g, n_head, &k.g, n_kv, &rg));
  mirror_expect_close(p, &q, 1e-2, 2e-3, neox ? "rope q neox" : "rope q interleaved");
  mirror_expect_close(p, &k, 1e-2, 2e-3, neox ? "rope k neox" : "rope k interleaved");
  mirror_free(p, &q);
  mirror_free(p, &k);
  mirror_free(p, &f);
  free(qv);
  free(kv);
  free(fr);
  tb_free(&t);
  both_kv_deinit(p);
}

Test(cuda_ops, rope_variants) {
  gpu_pair p;
  gpu_pair_open(&p);
  uint32_t rng = 99u;
  check_rope(&p, &rng, 128, 128, 1, 1.0f);
  check_rope(&p, &rng, 64, 64, 0, 1.0f);
  check_rope(&p, &rng, 128, 64, 1, 1.2f); /* partial rotary, yarn-style attn_factor */
  check_rope(&p, &rng, 8, 8, 1, 1.0f);
  gpu_pair_close(&p);
}

Test(cuda_ops, argmax_rows) {
  gpu_pair p;
  gpu_pair_open(&p);
  if (!p.gpu->ops->argmax) cr_assert_fail("the cuda backend must implement argmax");
  uint32_t rng = 5u;
  const int64_t rows = 7, cols = 32000;
  float *v = g_random(&rng, (size_t)(rows * cols), -10.0f, 10.0f);
  int32_t want[7];
  for (int64_t r = 0; r < rows; r++) {
    const int64_t at = (int64_t)(g_rng(&rng) % (uint32_t)cols);
    v[r * cols + at] = 20.0f + (float)r; /* a unique maximum */
    want[r] = (int32_t)at;
  }
  v[3 * cols + 5] = 23.0f; /* tie with the planted maximum of row 3 at a lower index */
  if (want[3] > 5) want[3] = 5;
  for (int f32 = p.dry; f32 < 2; f32++) { /* the CPU backend holds f32 only */
    qv_tensor t;
    cr_assert_eq(p.gpu->ops->alloc(p.gpu, f32 ? QV_DTYPE_F32 : QV_DTYPE_BF16, rows, cols, &t), 0);
    cr_assert_eq(p.gpu->ops->upload(p.gpu, &t, v, QV_DTYPE_F32), 0);
    int32_t ids[7] = {-1, -1, -1, -1, -1, -1, -1};
    cr_assert_eq(p.gpu->ops->argmax(p.gpu, &t, ids), 0, "%s", p.gpu->last_error.msg);
    for (int64_t r = 0; r < rows; r++) cr_assert_eq(ids[r], want[r], "row %lld (f32=%d)", (long long)r, f32);
    p.gpu->ops->free(p.gpu, &t);
  }
  free(v);
  gpu_pair_close(&p);
}

typedef struct attn_case {
  int32_t n_head, n_kv_head, head_dim, window;
  float softcap;
  int32_t n_seqs;
  int32_t n_q[4], ctx[4];
  int expect_split;
} attn_case;

/* Fills the KV cache for every sequence's earlier positions (one prefill step writing only KV),
 * then runs the test step: kv_write of its own tokens and attention, compared with the CPU. */
static void check_attention(gpu_pair *p, uint32_t *rng, const attn_case *c) {
  const int32_t bs = 16, n_blocks = 1024;
  const qv_kv_desc kv = {.n_layer = 2, .n_blocks = n_blocks, .block_size = bs, .n_kv_head = c->n_kv_head, .head_dim = c->head_dim};
  BOTH(p, p->cpu->ops->kv_init(p->cpu, &kv), p->gpu->ops->kv_init(p->gpu, &kv));
  tb t;
  tb_make(&t, c->n_seqs, c->n_q, c->ctx, bs, n_blocks, 100, rng);
  const int64_t kvw = (int64_t)c->n_kv_head * c->head_dim, qw = (int64_t)c->n_head * c->head_dim;
  /* step 1: the history, same block tables, as a prefill of ctx - n_q tokens of each sequence
   * that has any (the CPU backend takes no empty sequences) */
  {
    int32_t hctx[4], hs[4], n_hs = 0, n_hist = 0;
    for (int32_t s = 0; s < c->n_seqs; s++) {
      if (c->ctx[s] - c->n_q[s] <= 0) continue;
      hs[n_hs] = s;
      hctx[n_hs++] = c->ctx[s] - c->n_q[s];
      n_hist += c->ctx[s] - c->n_q[s];
    }
    if (n_hist > 0) {
      const int32_t mb = t.b.max_blocks;
      int32_t *slots = malloc((size_t)n_hist * 4), *pos = malloc((size_t)n_hist * 4), *ids = calloc((size_t)n_hist, 4);
      int32_t *bt = malloc((size_t)n_hs * (size_t)mb * 4), qs[5], no_logits = 0;
      int32_t tok = 0;
      for (int32_t i = 0; i < n_hs; i++) {
        memcpy(bt + i * mb, t.bt + hs[i] * mb, (size_t)mb * 4);
        qs[i] = tok;
        for (int32_t j = 0; j < hctx[i]; j++, tok++) {
          pos[tok] = j;
          ids[tok] = 1;
          slots[tok] = bt[i * mb + j / bs] * bs + j % bs;
        }
      }
      qs[n_hs] = tok;
      qv_batch h = {.n_tokens = n_hist, .n_seqs = n_hs, .n_logits = 0, .token_ids = ids, .positions = pos,
                    .slot_mapping = slots, .seq_q_start = qs, .seq_ctx_len = hctx, .block_tables = bt,
                    .max_blocks = mb, .logits_idx = &no_logits};
      both_set_batch(p, &h);
      float *kh = g_random(rng, (size_t)(n_hist * kvw), -1.0f, 1.0f), *vh = g_random(rng, (size_t)(n_hist * kvw), -1.0f, 1.0f);
      for (int32_t layer = 0; layer < 2; layer++) {
        mirror km, vm;
        mirror_act(p, &km, n_hist, kvw, kh);
        mirror_act(p, &vm, n_hist, kvw, vh);
        BOTH(p, p->cpu->ops->kv_write(p->cpu, layer, &km.c, &vm.c), p->gpu->ops->kv_write(p->gpu, layer, &km.g, &vm.g));
        mirror_free(p, &km);
        mirror_free(p, &vm);
      }
      free(kh);
      free(vh);
      free(slots);
      free(pos);
      free(ids);
      free(bt);
    }
  }
  both_set_batch(p, &t.b);
  const int64_t n = t.b.n_tokens;
  float *qv = g_random(rng, (size_t)(n * qw), -2.0f, 2.0f);
  float *kv_ = g_random(rng, (size_t)(n * kvw), -1.0f, 1.0f), *vv = g_random(rng, (size_t)(n * kvw), -1.0f, 1.0f);
  mirror q, k, v, out;
  mirror_act(p, &q, n, qw, qv);
  mirror_act(p, &k, n, kvw, kv_);
  mirror_act(p, &v, n, kvw, vv);
  mirror_alloc(p, &out, p->cpu->ops->act_dtype, p->gpu->ops->act_dtype, n, qw);
  const int32_t layer = 1;
  BOTH(p, p->cpu->ops->kv_write(p->cpu, layer, &k.c, &v.c), p->gpu->ops->kv_write(p->gpu, layer, &k.g, &v.g));
  const qv_attn_params ap = {.layer = layer, .n_head = c->n_head, .n_kv_head = c->n_kv_head, .head_dim = c->head_dim,
                             .scale = 1.0f / sqrtf((float)c->head_dim), .sliding_window = c->window, .softcap = c->softcap};
  mirror_poison(p, &out);
  BOTH(p, p->cpu->ops->attention(p->cpu, &out.c, &q.c, &ap), p->gpu->ops->attention(p->gpu, &out.g, &q.g, &ap));
  char what[128];
  snprintf(what, sizeof what, "attention heads %d/%d dim %d window %d softcap %g seqs %d", c->n_head, c->n_kv_head,
           c->head_dim, c->window, (double)c->softcap, c->n_seqs);
  mirror_expect_close(p, &out, 2e-2, 1e-2, what);
#ifdef QV_HAVE_CUDA
  if (c->expect_split && !p->dry) cr_assert_gt(qv_cuda_backend_attn_splits(p->gpu), 0, "%s: expected the split-K path", what);
#endif
  mirror_free(p, &q);
  mirror_free(p, &k);
  mirror_free(p, &v);
  mirror_free(p, &out);
  free(qv);
  free(kv_);
  free(vv);
  tb_free(&t);
  p->cpu->ops->kv_deinit(p->cpu);
  p->gpu->ops->kv_deinit(p->gpu);
}

Test(cuda_ops, attention_mixed_batches) {
  gpu_pair p;
  gpu_pair_open(&p);
  uint32_t rng = 31337u;
  const attn_case cases[] = {
      /* decodes and prefill chunks mixed, GQA 4, the three tensor-core head sizes */
      {8, 2, 128, 0, 0.0f, 4, {1, 37, 1, 80}, {300, 100, 1, 80}, 0},
      {8, 2, 64, 0, 0.0f, 3, {1, 20, 5}, {65, 20, 200}, 0},
      {4, 4, 256, 0, 0.0f, 2, {3, 1}, {70, 129}, 0},
      /* group 7 (rows not a multiple of a warp tile), sliding window, softcap */
      {14, 2, 128, 50, 0.0f, 2, {30, 1}, {130, 400}, 0},
      {8, 8, 64, 0, 30.0f, 2, {17, 1}, {17, 90}, 0},
      /* one long decode: split-K with the reduction kernel */
      {32, 8, 128, 0, 0.0f, 1, {1}, {3000}, 1},
      {8, 2, 64, 2000, 0.0f, 1, {2}, {5000}, 1}, /* window leaves 2001 keys: 3 splits */
      /* head sizes the tensor-core kernel does not serve (stories260K: 8) */
      {8, 4, 8, 0, 0.0f, 3, {1, 12, 3}, {40, 12, 9}, 0},
      {6, 2, 80, 16, 0.0f, 2, {9, 1}, {40, 33}, 0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check_attention(&p, &rng, &cases[i]);
  gpu_pair_close(&p);
}

Test(cuda_ops, bad_inputs_are_errors) {
  gpu_pair p;
  gpu_pair_open(&p);
  if (p.dry) cr_skip_test("dry run: these are the CUDA backend's answers");
  qv_tensor a, b, c;
  cr_assert_eq(p.gpu->ops->alloc(p.gpu, QV_DTYPE_BF16, 4, 8, &a), 0);
  cr_assert_eq(p.gpu->ops->alloc(p.gpu, QV_DTYPE_BF16, 4, 9, &b), 0);
  cr_assert_eq(p.gpu->ops->alloc(p.gpu, QV_DTYPE_BF16, 4, 4, &c), 0);
  cr_assert_eq(p.gpu->ops->matmul(p.gpu, &c, &a, &b, NULL), QV_EINVAL);
  cr_assert_eq(p.gpu->ops->add(p.gpu, &a, &b), QV_EINVAL);
  cr_assert_eq(p.gpu->ops->silu_mul(p.gpu, &a, &a, &b), QV_EINVAL);
  cr_assert_neq(p.gpu->ops->embed(p.gpu, &a, &b), 0); /* no batch staged yet */
  int32_t qs[2] = {0, 5}, ctx[1] = {3}, ids[1] = {0}, pos[1] = {0}, slots[1] = {0};
  qv_batch bad = {.n_tokens = 1, .n_seqs = 1, .token_ids = ids, .positions = pos, .slot_mapping = slots,
                  .seq_q_start = qs, .seq_ctx_len = ctx};
  cr_assert_eq(p.gpu->ops->set_batch(p.gpu, &bad), QV_EINVAL);
  const qv_kv_desc kv = {.n_layer = 1, .n_blocks = 0, .block_size = 16, .n_kv_head = 1, .head_dim = 8};
  cr_assert_eq(p.gpu->ops->kv_init(p.gpu, &kv), QV_EINVAL);
  qv_tensor huge;
  cr_assert_neq(p.gpu->ops->alloc(p.gpu, QV_DTYPE_BF16, (int64_t)1 << 40, (int64_t)1 << 20, &huge), 0);
  p.gpu->ops->free(p.gpu, &a);
  p.gpu->ops->free(p.gpu, &b);
  p.gpu->ops->free(p.gpu, &c);
  gpu_pair_close(&p);
}
