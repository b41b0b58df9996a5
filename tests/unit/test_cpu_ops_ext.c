/* The model families' CPU ops (cpu_ops_ext.c) and attention sinks against float64 formulas on
 * random inputs (outputs poisoned first), plus their batch and thread-count invariance:
 *   gated_act (silu, gelu-tanh, gpt-oss clamped SwiGLU)   rel 1e-5
 *   moe_route (softmax-topk +-norm, topk-softmax, sigmoid) ids exact, weights 1e-6
 *   moe_matmul dense                                       rel 1e-5 (dot of 64..96 terms)
 *   moe_matmul MXFP4 == dense on the dequantized weights   bit-identical
 *   moe_matmul slot row == matmul(token, expert, bias)      bit-identical (the same SIMD kernel)
 *   moe_combine                                            1e-6
 *   attention with sinks                                   1e-5 */
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

static qv_backend *cpu(int threads) {
  qv_backend *be;
  qv_error e = {0};
  cr_assert_eq(qv_backend_create("cpu", &(qv_backend_opts){.n_threads = threads}, &be, &e), 0, "%s", e.msg);
  return be;
}

static qv_tensor mk(qv_backend *be, qv_dtype dt, int64_t r, int64_t c) {
  qv_tensor t;
  cr_assert_eq(be->ops->alloc(be, dt, r, c, &t), 0);
  return t;
}

#define F(t) ((float *)(t).data)

Test(cpu_ops_ext, gated_act_vs_f64) {
  qv_backend *be = cpu(2);
  unsigned s = 7;
  qv_tensor g = mk(be, QV_DTYPE_F32, 5, 37), u = mk(be, QV_DTYPE_F32, 5, 37), o = mk(be, QV_DTYPE_F32, 5, 37);
  fill(&g, &s, 4), fill(&u, &s, 4);
  const qv_act acts[] = {{QV_ACT_SILU, 0, 0}, {QV_ACT_GELU_TANH, 0, 0}, {QV_ACT_SWIGLU_OAI, 1.702f, 1.5f}};
  for (int a = 0; a < 3; a++) {
    poison(&o);
    cr_assert_eq(be->ops->gated_act(be, &o, &g, &u, &acts[a]), 0);
    for (int64_t i = 0; i < 5 * 37; i++) {
      double x = F(g)[i], y = F(u)[i], ref;
      if (a == 0) ref = x / (1 + exp(-x)) * y;
      else if (a == 1) ref = 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x))) * y;
      else {
        double gg = fmin(x, 1.5), uu = fmax(-1.5, fmin(y, 1.5));
        ref = (uu + 1) * gg / (1 + exp(-1.702 * gg));
      }
      cr_assert(fabs(F(o)[i] - ref) <= 1e-5 * (1 + fabs(ref)), "act %d [%lld]: %g vs %g", a, (long long)i, F(o)[i], ref);
    }
  }
  be->ops->free(be, &g), be->ops->free(be, &u), be->ops->free(be, &o);
  qv_backend_destroy(be);
}

Test(cpu_ops_ext, moe_route_every_kind) {
  qv_backend *be = cpu(2);
  unsigned s = 11;
  const int n = 9, E = 8, k = 3;
  qv_tensor l = mk(be, QV_DTYPE_F32, n, E), ids = mk(be, QV_DTYPE_I32, n, k), w = mk(be, QV_DTYPE_F32, n, k);
  fill(&l, &s, 3);
  const qv_moe_route rs[] = {{QV_ROUTE_SOFTMAX_TOPK, E, k, 0}, {QV_ROUTE_SOFTMAX_TOPK, E, k, 1},
                             {QV_ROUTE_TOPK_SOFTMAX, E, k, 0}, {QV_ROUTE_SIGMOID_TOPK, E, k, 1}};
  for (int v = 0; v < 4; v++) {
    poison(&w);
    cr_assert_eq(be->ops->moe_route(be, &l, &rs[v], &ids, &w), 0);
    for (int t = 0; t < n; t++) {
      const float *x = F(l) + t * E;
      double p[8], mx = -INFINITY, sum = 0;
      for (int e = 0; e < E; e++) mx = fmax(mx, x[e]);
      for (int e = 0; e < E; e++) sum += exp(x[e] - mx);
      for (int e = 0; e < E; e++)
        p[e] = rs[v].kind == QV_ROUTE_SOFTMAX_TOPK ? exp(x[e] - mx) / sum
               : rs[v].kind == QV_ROUTE_SIGMOID_TOPK ? 1 / (1 + exp(-x[e])) : x[e];
      /* Reference top-k by repeated max. */
      int sel[3];
      double ws[3], tot = 0;
      for (int j = 0; j < k; j++) {
        int b = -1;
        for (int e = 0; e < E; e++) {
          int used = 0;
          for (int i = 0; i < j; i++) used |= sel[i] == e;
          if (!used && (b < 0 || p[e] > p[b])) b = e;
        }
        sel[j] = b;
        ws[j] = p[b];
      }
      if (rs[v].kind == QV_ROUTE_TOPK_SOFTMAX) {
        double m0 = ws[0];
        for (int j = 0; j < k; j++) tot += (ws[j] = exp(ws[j] - m0));
        for (int j = 0; j < k; j++) ws[j] /= tot;
      } else if (rs[v].normalize) {
        for (int j = 0; j < k; j++) tot += ws[j];
        for (int j = 0; j < k; j++) ws[j] /= tot;
      }
      for (int j = 0; j < k; j++) {
        cr_assert_eq(((int32_t *)ids.data)[t * k + j], sel[j], "kind %d token %d slot %d", v, t, j);
        cr_assert(fabs(F(w)[t * k + j] - ws[j]) <= 1e-6, "kind %d token %d slot %d: %g vs %g", v, t, j,
                  F(w)[t * k + j], ws[j]);
      }
    }
  }
  qv_moe_route bad = {QV_ROUTE_SOFTMAX_TOPK, E, E + 1, 0};
  cr_assert_neq(be->ops->moe_route(be, &l, &bad, &ids, &w), 0);
  be->ops->free(be, &l), be->ops->free(be, &ids), be->ops->free(be, &w);
  qv_backend_destroy(be);
}

/* Random MXFP4 experts and their dequantized dense copy. */
static void make_experts(qv_backend *be, unsigned *s, int E, int64_t rows, int64_t cols, qv_experts *q,
                         qv_experts *d) {
  static const float lut[16] = {0, .5f, 1, 1.5f, 2, 3, 4, 6, -0.f, -.5f, -1, -1.5f, -2, -3, -4, -6};
  *q = (qv_experts){.n_expert = E, .rows = rows, .cols = cols, .mxfp4 = 1};
  *d = (qv_experts){.n_expert = E, .rows = rows, .cols = cols};
  q->blocks = mk(be, QV_DTYPE_U8, E * rows, cols / 2);
  q->scales = mk(be, QV_DTYPE_U8, E * rows, cols / 32);
  d->w = mk(be, QV_DTYPE_F32, E * rows, cols);
  q->bias = mk(be, QV_DTYPE_F32, E, rows);
  fill(&q->bias, s, 0.5);
  d->bias = mk(be, QV_DTYPE_F32, E, rows);
  memcpy(d->bias.data, q->bias.data, sizeof(float) * (size_t)(E * rows));
  uint8_t *b = q->blocks.data, *sc = q->scales.data;
  for (int64_t i = 0; i < E * rows * cols / 2; i++) b[i] = (uint8_t)((urand(s) + 1) * 128);
  for (int64_t i = 0; i < E * rows * cols / 32; i++) sc[i] = (uint8_t)(121 + (int)((urand(s) + 1) * 2));
  for (int64_t r = 0; r < E * rows; r++)
    for (int64_t c = 0; c < cols; c++) {
      uint8_t byte = b[r * cols / 2 + c / 2];
      F(d->w)[r * cols + c] = lut[c % 2 ? byte >> 4 : byte & 15] * ldexpf(1, sc[r * cols / 32 + c / 32] - 127);
    }
}

static void free_experts(qv_backend *be, qv_experts *x) {
  be->ops->free(be, &x->w), be->ops->free(be, &x->blocks), be->ops->free(be, &x->scales), be->ops->free(be, &x->bias);
}

Test(cpu_ops_ext, moe_matmul_dense_mxfp4_and_invariance) {
  qv_backend *be = cpu(2), *be1 = cpu(1);
  unsigned s = 23;
  const int E = 6, k = 2, n = 11;
  const int64_t rows = 40, cols = 96;
  qv_experts q, d;
  make_experts(be, &s, E, rows, cols, &q, &d);
  qv_tensor x = mk(be, QV_DTYPE_F32, n, cols), ids = mk(be, QV_DTYPE_I32, n, k);
  qv_tensor o1 = mk(be, QV_DTYPE_F32, n * k, rows), o2 = mk(be, QV_DTYPE_F32, n * k, rows);
  fill(&x, &s, 1);
  int32_t *id = ids.data;
  for (int t = 0; t < n; t++) {
    id[t * k] = (int32_t)((urand(&s) + 1) * 3) % E;
    id[t * k + 1] = (id[t * k] + 1 + (t % (E - 1))) % E;
  }
  poison(&o1), poison(&o2);
  cr_assert_eq(be->ops->moe_matmul(be, &o1, &x, &d, &ids), 0, "%s", be->last_error.msg);
  cr_assert_eq(be->ops->moe_matmul(be, &o2, &x, &q, &ids), 0, "%s", be->last_error.msg);
  /* Exact dequantization and the same summation order: MXFP4 equals dense bit for bit. */
  cr_assert(!memcmp(o1.data, o2.data, sizeof(float) * (size_t)(n * k * rows)), "mxfp4 differs from dense");
  /* The grouped matmul runs the backend's SIMD matmul kernel: each slot's row equals the plain
   * matmul of its token with the selected expert's weights and bias, bit for bit. */
  for (int i = 0; i < n * k; i += 5) {
    int e = id[i];
    qv_tensor xr = x, we = d.w, be_ = d.bias, orow = mk(be, QV_DTYPE_F32, 1, rows);
    xr.data = F(x) + (i / k) * cols, xr.rows = 1;
    we.data = F(d.w) + e * rows * cols, we.rows = rows;
    be_.data = F(d.bias) + e * rows, be_.rows = 1, be_.cols = rows;
    poison(&orow);
    cr_assert_eq(be->ops->matmul(be, &orow, &xr, &we, &be_), 0, "%s", be->last_error.msg);
    cr_assert(!memcmp(orow.data, F(o1) + i * rows, sizeof(float) * (size_t)rows), "slot %d differs from matmul", i);
    be->ops->free(be, &orow);
  }
  for (int t = 0; t < n; t++)
    for (int j = 0; j < k; j++)
      for (int64_t r = 0; r < rows; r++) {
        int e = id[t * k + j];
        double ref = F(d.bias)[e * rows + r];
        for (int64_t c = 0; c < cols; c++) ref += (double)F(x)[t * cols + c] * F(d.w)[(e * rows + r) * cols + c];
        double got = F(o1)[(t * k + j) * rows + r];
        cr_assert(fabs(got - ref) <= 1e-5 * (1 + fabs(ref)), "token %d slot %d row %lld: %g vs %g", t, j, (long long)r,
                  got, ref);
      }
  /* Per-slot input (the down projection): x2 [n*k][cols]. */
  qv_tensor x2 = mk(be, QV_DTYPE_F32, n * k, cols), o3 = mk(be, QV_DTYPE_F32, n * k, rows);
  fill(&x2, &s, 1), poison(&o3);
  cr_assert_eq(be->ops->moe_matmul(be, &o3, &x2, &q, &ids), 0);
  for (int i = 0; i < n * k; i++) {
    int e = id[i];
    double ref = F(d.bias)[e * rows + 3];
    for (int64_t c = 0; c < cols; c++) ref += (double)F(x2)[i * cols + c] * F(d.w)[(e * rows + 3) * cols + c];
    cr_assert(fabs(F(o3)[i * rows + 3] - ref) <= 1e-5 * (1 + fabs(ref)));
  }
  /* Batch and thread invariance: token 4 alone, on one thread, gives the same bits. */
  qv_tensor x1 = x, ids1 = ids, o4 = mk(be1, QV_DTYPE_F32, k, rows);
  x1.data = F(x) + 4 * cols, x1.rows = 1;
  ids1.data = id + 4 * k, ids1.rows = 1;
  cr_assert_eq(be1->ops->moe_matmul(be1, &o4, &x1, &q, &ids1), 0);
  cr_assert(!memcmp(o4.data, F(o1) + 4 * k * rows, sizeof(float) * (size_t)(k * rows)), "token 4 alone differs");
  /* A bad expert id is an error, not a read out of bounds. */
  id[3] = E;
  cr_assert_eq(be->ops->moe_matmul(be, &o1, &x, &q, &ids), QV_ERANGE);
  free_experts(be, &q), free_experts(be, &d);
  qv_tensor *ts[] = {&x, &ids, &o1, &o2, &x2, &o3};
  for (int i = 0; i < 6; i++) be->ops->free(be, ts[i]);
  be1->ops->free(be1, &o4);
  qv_backend_destroy(be), qv_backend_destroy(be1);
}

Test(cpu_ops_ext, moe_combine_vs_f64) {
  qv_backend *be = cpu(2);
  unsigned s = 5;
  const int n = 4, k = 3, dd = 21;
  qv_tensor y = mk(be, QV_DTYPE_F32, n * k, dd), w = mk(be, QV_DTYPE_F32, n, k), o = mk(be, QV_DTYPE_F32, n, dd);
  fill(&y, &s, 2), fill(&w, &s, 1), poison(&o);
  cr_assert_eq(be->ops->moe_combine(be, &o, &y, &w), 0);
  for (int t = 0; t < n; t++)
    for (int c = 0; c < dd; c++) {
      double ref = 0;
      for (int j = 0; j < k; j++) ref += (double)F(w)[t * k + j] * F(y)[(t * k + j) * dd + c];
      cr_assert(fabs(F(o)[t * dd + c] - ref) <= 1e-6 * (1 + fabs(ref)));
    }
  be->ops->free(be, &y), be->ops->free(be, &w), be->ops->free(be, &o);
  qv_backend_destroy(be);
}

Test(cpu_ops_ext, attention_sinks_vs_f64) {
  qv_backend *be = cpu(2);
  unsigned s = 3;
  const int H = 4, KV = 2, hd = 8, n = 6, bs = 4;
  qv_kv_desc kd = {1, 4, bs, KV, hd};
  cr_assert_eq(be->ops->kv_init(be, &kd), 0);
  int32_t ids[6] = {0}, pos[6], slots[6], qs[2] = {0, n}, ctx[1] = {n}, bt[2] = {3, 1}, li[1] = {0};
  for (int i = 0; i < n; i++) pos[i] = i, slots[i] = bt[i / bs] * bs + i % bs;
  qv_batch b = {.n_tokens = n, .n_seqs = 1, .n_logits = 1, .token_ids = ids, .positions = pos, .slot_mapping = slots,
                .seq_q_start = qs, .seq_ctx_len = ctx, .block_tables = bt, .max_blocks = 2, .logits_idx = li};
  cr_assert_eq(be->ops->set_batch(be, &b), 0, "%s", be->last_error.msg);
  qv_tensor q = mk(be, QV_DTYPE_F32, n, H * hd), k = mk(be, QV_DTYPE_F32, n, KV * hd), v = mk(be, QV_DTYPE_F32, n, KV * hd);
  qv_tensor o = mk(be, QV_DTYPE_F32, n, H * hd), sk = mk(be, QV_DTYPE_F32, 1, H);
  fill(&q, &s, 1), fill(&k, &s, 1), fill(&v, &s, 1), fill(&sk, &s, 2), poison(&o);
  cr_assert_eq(be->ops->kv_write(be, 0, &k, &v), 0);
  qv_attn_params p = {.layer = 0, .n_head = H, .n_kv_head = KV, .head_dim = hd, .scale = 0.4f, .sliding_window = 3,
                      .sinks = &sk};
  cr_assert_eq(be->ops->attention(be, &o, &q, &p), 0, "%s", be->last_error.msg);
  for (int t = 0; t < n; t++)
    for (int h = 0; h < H; h++) {
      int kh = h / (H / KV), j0 = t - 2 > 0 ? t - 2 : 0;
      double sc[6], mx = F(sk)[h], den;
      for (int j = j0; j <= t; j++) {
        double d = 0;
        for (int c = 0; c < hd; c++) d += (double)F(q)[t * H * hd + h * hd + c] * F(k)[j * KV * hd + kh * hd + c];
        sc[j] = d * 0.4;
        mx = fmax(mx, sc[j]);
      }
      den = exp(F(sk)[h] - mx);
      for (int j = j0; j <= t; j++) den += exp(sc[j] - mx);
      for (int c = 0; c < hd; c++) {
        double ref = 0;
        for (int j = j0; j <= t; j++) ref += exp(sc[j] - mx) / den * F(v)[j * KV * hd + kh * hd + c];
        cr_assert(fabs(F(o)[t * H * hd + h * hd + c] - ref) <= 1e-5, "t %d h %d c %d", t, h, c);
      }
    }
  qv_tensor *ts[] = {&q, &k, &v, &o, &sk};
  for (int i = 0; i < 5; i++) be->ops->free(be, ts[i]);
  qv_backend_destroy(be);
}
