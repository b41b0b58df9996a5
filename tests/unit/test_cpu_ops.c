/* CPU backend ops against straightforward float64 formulas on random inputs (never zeros),
 * with outputs poisoned first. Tolerances are stated per test; the CPU backend is the
 * reference for the GPU, so it is itself checked against the math here. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"

static double urand(unsigned *s) {
  *s = *s * 1103515245u + 12345u;
  return ((*s >> 8) & 0xffffff) / (double)0x1000000 * 2.0 - 1.0; /* [-1, 1) */
}

static void fill(qv_tensor *t, unsigned *s, double scale) {
  float *p = t->data;
  for (int64_t i = 0; i < t->rows * t->cols; i++) {
    double v = urand(s) * scale;
    p[i] = (float)(v == 0 ? 1e-3 : v);
  }
}

static void poison(qv_tensor *t) {
  float *p = t->data;
  for (int64_t i = 0; i < t->rows * t->cols; i++) p[i] = NAN;
}

static qv_backend *cpu(void) {
  qv_backend *be;
  qv_error e = {0};
  cr_assert_eq(qv_backend_create("cpu", &(qv_backend_opts){.n_threads = 2}, &be, &e), 0, "%s", e.msg);
  return be;
}

static qv_tensor mk(qv_backend *be, int64_t r, int64_t c) {
  qv_tensor t;
  cr_assert_eq(be->ops->alloc(be, QV_DTYPE_F32, r, c, &t), 0);
  return t;
}

Test(cpu_ops, matmul_bias_vs_f64) {
  qv_backend *be = cpu();
  unsigned s = 1;
  int64_t n = 7, m = 300, k = 129; /* odd sizes exercise the tails */
  qv_tensor x = mk(be, n, k), w = mk(be, m, k), b = mk(be, 1, m), o = mk(be, n, m);
  fill(&x, &s, 1), fill(&w, &s, 0.1), fill(&b, &s, 1), poison(&o);
  cr_assert_eq(be->ops->matmul(be, &o, &x, &w, &b), 0);
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j < m; j++) {
      double ref = ((float *)b.data)[j];
      for (int64_t t = 0; t < k; t++) ref += (double)((float *)x.data)[i * k + t] * ((float *)w.data)[j * k + t];
      cr_assert(fabs(((float *)o.data)[i * m + j] - ref) <= 1e-5 * (1 + fabs(ref)), "(%lld,%lld)", (long long)i, (long long)j);
    }
  qv_tensor *ts[] = {&x, &w, &b, &o};
  for (int i = 0; i < 4; i++) be->ops->free(be, ts[i]);
  qv_backend_destroy(be);
}

Test(cpu_ops, rmsnorm_and_fused_add) {
  qv_backend *be = cpu();
  unsigned s = 2;
  qv_tensor x = mk(be, 5, 96), d = mk(be, 5, 96), w = mk(be, 1, 96), o = mk(be, 5, 96);
  fill(&x, &s, 3), fill(&d, &s, 1), fill(&w, &s, 1), poison(&o);
  float x0[5 * 96];
  memcpy(x0, x.data, sizeof x0);
  cr_assert_eq(be->ops->add_rmsnorm(be, &o, &x, &d, &w, 1e-5f), 0);
  for (int r = 0; r < 5; r++) {
    double ss = 0, v[96];
    for (int i = 0; i < 96; i++) {
      v[i] = (double)x0[r * 96 + i] + ((float *)d.data)[r * 96 + i];
      ss += v[i] * v[i];
      cr_assert_float_eq(((float *)x.data)[r * 96 + i], v[i], 1e-6);
    }
    double inv = 1 / sqrt(ss / 96 + 1e-5);
    for (int i = 0; i < 96; i++)
      cr_assert(fabs(((float *)o.data)[r * 96 + i] - v[i] * inv * ((float *)w.data)[i]) < 1e-5);
  }
  qv_tensor *ts[] = {&x, &d, &w, &o};
  for (int i = 0; i < 4; i++) be->ops->free(be, ts[i]);
  qv_backend_destroy(be);
}

/* Paged attention over a mixed batch (a 9-token prefill chunk continuing a cached prefix, and
 * a decode), scattered blocks, GQA, sliding window, softcap: against float64 over the same
 * K/V laid out contiguously. */
static void attention_case(int32_t window, float softcap) {
  qv_backend *be = cpu();
  unsigned s = 3 + (unsigned)window;
  const int32_t n_layer = 2, bs = 4, nkv = 2, nh = 6, hd = 16, n_blocks = 32, max_blocks = 8;
  cr_assert_eq(be->ops->kv_init(be, &(qv_kv_desc){n_layer, n_blocks, bs, nkv, hd}), 0);
  /* Sequence 0: 20 tokens in the cache after the step (11 cached + 9 new); sequence 1: 14
   * (13 cached + 1 new). Blocks deliberately out of order. */
  int32_t ctx[2] = {20, 14}, newn[2] = {9, 1};
  int32_t bt[2][8] = {{7, 3, 12, 0, 25, 9, 30, 31}, {5, 18, 2, 22, 1, 4, 6, 8}};
  int32_t total = ctx[0] + ctx[1];
  /* Write every position's K/V through kv_write as one batch of "all tokens". */
  int32_t ids[64], pos[64], slots[64], qs[3] = {0, ctx[0], total}, li = 0;
  for (int sq = 0, t = 0; sq < 2; sq++)
    for (int p = 0; p < ctx[sq]; p++, t++) {
      ids[t] = 1;
      pos[t] = p;
      slots[t] = bt[sq][p / bs] * bs + p % bs;
    }
  qv_batch all = {.n_tokens = total, .n_seqs = 2, .n_logits = 1, .token_ids = ids, .positions = pos,
                  .slot_mapping = slots, .seq_q_start = qs, .seq_ctx_len = ctx, .block_tables = &bt[0][0],
                  .max_blocks = max_blocks, .logits_idx = &li};
  cr_assert_eq(be->ops->set_batch(be, &all), 0, "%s", be->last_error.msg);
  qv_tensor k = mk(be, total, nkv * hd), v = mk(be, total, nkv * hd);
  fill(&k, &s, 1), fill(&v, &s, 1);
  cr_assert_eq(be->ops->kv_write(be, 1, &k, &v), 0);
  /* The step: the last newn[s] tokens of each sequence. */
  int32_t n_tok = newn[0] + newn[1];
  int32_t sids[16], spos[16], sslots[16], sqs[3] = {0, newn[0], n_tok};
  for (int sq = 0, t = 0; sq < 2; sq++)
    for (int p = ctx[sq] - newn[sq]; p < ctx[sq]; p++, t++) {
      sids[t] = 1;
      spos[t] = p;
      sslots[t] = bt[sq][p / bs] * bs + p % bs;
    }
  qv_batch step = all;
  step.n_tokens = n_tok, step.token_ids = sids, step.positions = spos, step.slot_mapping = sslots;
  step.seq_q_start = sqs;
  cr_assert_eq(be->ops->set_batch(be, &step), 0, "%s", be->last_error.msg);
  qv_tensor q = mk(be, n_tok, nh * hd), o = mk(be, n_tok, nh * hd);
  fill(&q, &s, 2), poison(&o);
  qv_attn_params ap = {.layer = 1, .n_head = nh, .n_kv_head = nkv, .head_dim = hd, .scale = 0.25f,
                       .sliding_window = window, .softcap = softcap};
  cr_assert_eq(be->ops->attention(be, &o, &q, &ap), 0, "%s", be->last_error.msg);
  const float *K = k.data, *V = v.data, *Q = q.data, *O = o.data;
  for (int sq = 0, t = 0; sq < 2; sq++) {
    int base = sq ? ctx[0] : 0; /* row of this sequence's position 0 in k/v */
    for (int p = ctx[sq] - newn[sq]; p < ctx[sq]; p++, t++)
      for (int h = 0; h < nh; h++) {
        int kvh = h / (nh / nkv), j0 = window && p - window + 1 > 0 ? p - window + 1 : 0;
        double sc[64], mx = -INFINITY, sum = 0;
        for (int j = j0; j <= p; j++) {
          double d = 0;
          for (int i = 0; i < hd; i++) d += (double)Q[(t * nh + h) * hd + i] * K[((base + j) * nkv + kvh) * hd + i];
          d *= 0.25;
          if (softcap > 0) d = softcap * tanh(d / softcap);
          sc[j] = d;
          mx = fmax(mx, d);
        }
        for (int j = j0; j <= p; j++) sum += (sc[j] = exp(sc[j] - mx));
        for (int i = 0; i < hd; i++) {
          double ref = 0;
          for (int j = j0; j <= p; j++) ref += sc[j] / sum * V[((base + j) * nkv + kvh) * hd + i];
          cr_assert(fabs(O[(t * nh + h) * hd + i] - ref) < 2e-6, "t%d h%d i%d: %g vs %g", t, h, i,
                    O[(t * nh + h) * hd + i], ref);
        }
      }
  }
  qv_tensor *ts[] = {&k, &v, &q, &o};
  for (int i = 0; i < 4; i++) be->ops->free(be, ts[i]);
  qv_backend_destroy(be);
}

Test(cpu_ops, paged_attention_causal_gqa) { attention_case(0, 0); }
Test(cpu_ops, paged_attention_sliding_window) { attention_case(5, 0); }
Test(cpu_ops, paged_attention_softcap) { attention_case(0, 1.5f); }

Test(cpu_ops, rope_neox_and_interleaved) {
  qv_backend *be = cpu();
  unsigned s = 9;
  cr_assert_eq(be->ops->kv_init(be, &(qv_kv_desc){1, 4, 8, 1, 8}), 0);
  int32_t ids[3] = {1, 1, 1}, pos[3] = {3, 4, 5}, slots[3] = {3, 4, 5}, qs[2] = {0, 3}, ctx = 6, bt = 0, li = 0;
  qv_batch b = {.n_tokens = 3, .n_seqs = 1, .n_logits = 1, .token_ids = ids, .positions = pos, .slot_mapping = slots,
                .seq_q_start = qs, .seq_ctx_len = &ctx, .block_tables = &bt, .max_blocks = 1, .logits_idx = &li};
  cr_assert_eq(be->ops->set_batch(be, &b), 0, "%s", be->last_error.msg);
  qv_tensor inv = mk(be, 1, 4);
  float invf[4] = {1.0f, 0.3f, 0.05f, 0.001f};
  memcpy(inv.data, invf, sizeof invf);
  for (int neox = 0; neox <= 1; neox++) {
    qv_tensor q = mk(be, 3, 16), k = mk(be, 3, 8);
    fill(&q, &s, 1), fill(&k, &s, 1);
    float q0[48];
    memcpy(q0, q.data, sizeof q0);
    qv_rope r = {.head_dim = 8, .rot_dim = 8, .neox = neox, .attn_factor = 1.25f, .inv_freq = &inv};
    cr_assert_eq(be->ops->rope(be, &q, 2, &k, 1, &r), 0);
    for (int t = 0; t < 3; t++)
      for (int h = 0; h < 2; h++)
        for (int i = 0; i < 4; i++) {
          int a = neox ? i : 2 * i, c = neox ? i + 4 : 2 * i + 1;
          double ang = (double)pos[t] * invf[i], x0 = q0[(t * 2 + h) * 8 + a], x1 = q0[(t * 2 + h) * 8 + c];
          double ra = 1.25 * (x0 * cos(ang) - x1 * sin(ang)), rc = 1.25 * (x1 * cos(ang) + x0 * sin(ang));
          cr_assert(fabs(((float *)q.data)[(t * 2 + h) * 8 + a] - ra) < 1e-5);
          cr_assert(fabs(((float *)q.data)[(t * 2 + h) * 8 + c] - rc) < 1e-5);
        }
    be->ops->free(be, &q);
    be->ops->free(be, &k);
  }
  be->ops->free(be, &inv);
  qv_backend_destroy(be);
}

Test(cpu_ops, silu_mul_embed_gather_argmax) {
  qv_backend *be = cpu();
  unsigned s = 5;
  cr_assert_eq(be->ops->kv_init(be, &(qv_kv_desc){1, 4, 8, 1, 8}), 0);
  int32_t ids[3] = {4, 0, 9}, pos[3] = {0, 1, 2}, slots[3] = {0, 1, 2}, qs[2] = {0, 3}, ctx = 3, bt = 0, li[2] = {2, 0};
  qv_batch b = {.n_tokens = 3, .n_seqs = 1, .n_logits = 2, .token_ids = ids, .positions = pos, .slot_mapping = slots,
                .seq_q_start = qs, .seq_ctx_len = &ctx, .block_tables = &bt, .max_blocks = 1, .logits_idx = li};
  cr_assert_eq(be->ops->set_batch(be, &b), 0);
  qv_tensor tab = mk(be, 10, 6), e = mk(be, 3, 6), g = mk(be, 3, 6), u = mk(be, 3, 6), sel = mk(be, 2, 6);
  fill(&tab, &s, 1), fill(&g, &s, 4), fill(&u, &s, 1), poison(&e), poison(&sel);
  cr_assert_eq(be->ops->embed(be, &e, &tab), 0);
  for (int t = 0; t < 3; t++) cr_assert_eq(memcmp((float *)e.data + t * 6, (float *)tab.data + ids[t] * 6, 24), 0);
  float g0[18];
  memcpy(g0, g.data, sizeof g0);
  cr_assert_eq(be->ops->silu_mul(be, &g, &g, &u), 0);
  for (int i = 0; i < 18; i++)
    cr_assert(fabs(((float *)g.data)[i] - g0[i] / (1 + exp(-(double)g0[i])) * ((float *)u.data)[i]) < 1e-5);
  cr_assert_eq(be->ops->gather_rows(be, &sel, &e), 0);
  cr_assert_eq(memcmp(sel.data, (float *)e.data + 12, 24), 0);
  cr_assert_eq(memcmp((float *)sel.data + 6, e.data, 24), 0);
  int32_t am[10];
  cr_assert_eq(be->ops->argmax(be, &tab, am), 0);
  for (int r = 0; r < 10; r++) {
    const float *row = (float *)tab.data + r * 6;
    for (int j = 0; j < 6; j++) cr_assert(row[j] <= row[am[r]]);
  }
  qv_tensor *ts[] = {&tab, &e, &g, &u, &sel};
  for (int i = 0; i < 5; i++) be->ops->free(be, ts[i]);
  qv_backend_destroy(be);
}
