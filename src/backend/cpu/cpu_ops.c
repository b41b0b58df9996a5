/* CPU backend math: the fp32 reference every other backend is checked against.
 *
 * Each op splits its output into independent tasks (rows, column ranges, (token, head) pairs)
 * on the thread pool. Within a task every output value is produced by one fixed sequence of
 * float operations (dot products accumulate in 8 interleaved partial sums combined in a fixed
 * order), so results are bit-identical whatever the batch composition or thread count. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cpu/cpu.h"
#include "backend/cpu/cpu_quant.h"

/* Work smaller than this runs on the calling thread: waking workers costs more. */
#define CPU_PAR_MIN_FLOPS (1 << 15)

static float dot_f32(const float *a, const float *b, int64_t n) {
  float acc[8] = {0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; l++) acc[l] += a[i + l] * b[i + l];
  for (int l = 0; i < n; i++, l++) acc[l] += a[i] * b[i];
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

static int check_f32(qv_backend *be, const char *op, const qv_tensor *t) {
  if (!t || t->dtype != QV_DTYPE_F32 || !t->data)
    return qv_error_set(&be->last_error, QV_EINVAL, "cpu %s: expected an F32 tensor", op);
  return 0;
}

static void run(cpu_backend *c, int64_t flops, int n_tasks, tp_fn fn, void *ctx) {
  if (flops < CPU_PAR_MIN_FLOPS) {
    for (int i = 0; i < n_tasks; i++) fn(ctx, i);
  } else {
    tp_run(c->pool, n_tasks, fn, ctx);
  }
}

/* ---- embedding ---- */

int cpu_embed(qv_backend *be, qv_tensor *out, const qv_tensor *table) {
  cpu_backend *c = (cpu_backend *)be;
  if (table && qv_dtype_is_quant(table->dtype)) return cpu_quant_embed(be, out, table);
  if (check_f32(be, "embed", out) || check_f32(be, "embed", table)) return QV_EINVAL;
  if (out->rows != c->b.n_tokens || out->cols != table->cols)
    return qv_error_set(&be->last_error, QV_EINVAL, "cpu embed: shape mismatch");
  float *o = out->data;
  const float *t = table->data;
  for (int32_t i = 0; i < c->b.n_tokens; i++) {
    int32_t id = c->b.token_ids[i];
    if (id < 0 || id >= table->rows)
      return qv_error_set(&be->last_error, QV_ERANGE, "cpu embed: token id %d outside vocab %lld", id,
                          (long long)table->rows);
    memcpy(o + (size_t)i * out->cols, t + (size_t)id * table->cols, (size_t)out->cols * sizeof(float));
  }
  return 0;
}

/* ---- norms ---- */

static void rmsnorm_row(float *o, const float *x, const float *w, int64_t n, float eps) {
  /* Sum of squares in double: the reference should not be the least accurate party. */
  double ss = 0;
  for (int64_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
  float inv = (float)(1.0 / sqrt(ss / (double)n + (double)eps));
  for (int64_t i = 0; i < n; i++) o[i] = (x[i] * inv) * w[i];
}

int cpu_rmsnorm(qv_backend *be, qv_tensor *out, const qv_tensor *x, const qv_tensor *w, float eps) {
  if (check_f32(be, "rmsnorm", out) || check_f32(be, "rmsnorm", x) || check_f32(be, "rmsnorm", w)) return QV_EINVAL;
  if (out->rows != x->rows || out->cols != x->cols || w->rows * w->cols != x->cols)
    return qv_error_set(&be->last_error, QV_EINVAL, "cpu rmsnorm: shape mismatch");
  for (int64_t r = 0; r < x->rows; r++)
    rmsnorm_row((float *)out->data + r * out->cols, (const float *)x->data + r * x->cols, w->data, x->cols, eps);
  return 0;
}

int cpu_add_rmsnorm(qv_backend *be, qv_tensor *out, qv_tensor *x, const qv_tensor *delta, const qv_tensor *w,
                    float eps) {
  if (check_f32(be, "add_rmsnorm", delta) || delta->rows != x->rows || delta->cols != x->cols)
    return qv_error_set(&be->last_error, QV_EINVAL, "cpu add_rmsnorm: shape mismatch");
  int rc = cpu_add(be, x, delta);
  return rc ? rc : cpu_rmsnorm(be, out, x, w, eps);
}

int cpu_add(qv_backend *be, qv_tensor *x, const qv_tensor *y) {
  if (check_f32(be, "add", x) || check_f32(be, "add", y)) return QV_EINVAL;
  if (x->rows != y->rows || x->cols != y->cols) return qv_error_set(&be->last_error, QV_EINVAL, "cpu add: shape mismatch");
  float *a = x->data;
  const float *b = y->data;
  size_t n = (size_t)x->rows * (size_t)x->cols;
  for (size_t i = 0; i < n; i++) a[i] += b[i];
  return 0;
}

/* ---- matmul: out[n][m] = x[n][k] . w[m][k]^T + bias ---- */

#define MM_COLS_PER_TASK 16

typedef struct mm_ctx {
  float *out;
  const float *x, *w, *bias;
  int64_t n, m, k;
} mm_ctx;

static void mm_task(void *arg, int task) {
  const mm_ctx *c = arg;
  int64_t j0 = (int64_t)task * MM_COLS_PER_TASK, j1 = j0 + MM_COLS_PER_TASK;
  if (j1 > c->m) j1 = c->m;
  for (int64_t j = j0; j < j1; j++) {
    const float *wr = c->w + j * c->k;
    float b = c->bias ? c->bias[j] : 0.0f;
    for (int64_t i = 0; i < c->n; i++) c->out[i * c->m + j] = dot_f32(c->x + i * c->k, wr, c->k) + b;
  }
}

int cpu_matmul(qv_backend *be, qv_tensor *out, const qv_tensor *x, const qv_tensor *w, const qv_tensor *bias) {
  if (w && qv_dtype_is_quant(w->dtype)) return cpu_quant_matmul(be, out, x, w, bias);
  if (check_f32(be, "matmul", out) || check_f32(be, "matmul", x) || check_f32(be, "matmul", w)) return QV_EINVAL;
  if (x->cols != w->cols || out->rows != x->rows || out->cols != w->rows ||
      (bias && (check_f32(be, "matmul", bias) || bias->rows * bias->cols != w->rows)))
    return qv_error_set(&be->last_error, QV_EINVAL, "cpu matmul: shapes [%lld][%lld] x [%lld][%lld]^T -> [%lld][%lld]",
                        (long long)x->rows, (long long)x->cols, (long long)w->rows, (long long)w->cols,
                        (long long)out->rows, (long long)out->cols);
  mm_ctx c = {out->data, x->data, w->data, bias ? bias->data : NULL, x->rows, w->rows, x->cols};
  int n_tasks = (int)((w->rows + MM_COLS_PER_TASK - 1) / MM_COLS_PER_TASK);
  run((cpu_backend *)be, 2 * c.n * c.m * c.k, n_tasks, mm_task, &c);
  return 0;
}

/* ---- RoPE ---- */

static void rope_rows(float *x, int64_t n_tok, int32_t n_head, const int32_t *pos, const qv_rope *r) {
  const float *inv = r->inv_freq->data;
  int32_t half = r->rot_dim / 2;
  for (int64_t t = 0; t < n_tok; t++) {
    for (int32_t i = 0; i < half; i++) {
      float ang = (float)pos[t] * inv[i];
      float cs = cosf(ang) * r->attn_factor, sn = sinf(ang) * r->attn_factor;
      for (int32_t h = 0; h < n_head; h++) {
        float *v = x + (t * n_head + h) * (int64_t)r->head_dim;
        int32_t a = r->neox ? i : 2 * i, b = r->neox ? i + half : 2 * i + 1;
        float x0 = v[a], x1 = v[b];
        v[a] = x0 * cs - x1 * sn;
        v[b] = x1 * cs + x0 * sn;
      }
    }
  }
}

int cpu_rope(qv_backend *be, qv_tensor *q, int32_t n_head, qv_tensor *k, int32_t n_kv_head, const qv_rope *rope) {
  cpu_backend *c = (cpu_backend *)be;
  if (check_f32(be, "rope", q) || check_f32(be, "rope", k) || check_f32(be, "rope", rope->inv_freq)) return QV_EINVAL;
  if (q->rows != c->b.n_tokens || k->rows != c->b.n_tokens || q->cols != (int64_t)n_head * rope->head_dim ||
      k->cols != (int64_t)n_kv_head * rope->head_dim || rope->rot_dim > rope->head_dim || rope->rot_dim % 2 ||
      rope->inv_freq->rows * rope->inv_freq->cols < rope->rot_dim / 2)
    return qv_error_set(&be->last_error, QV_EINVAL, "cpu rope: shape mismatch");
  rope_rows(q->data, q->rows, n_head, c->b.positions, rope);
  rope_rows(k->data, k->rows, n_kv_head, c->b.positions, rope);
  return 0;
}

/* ---- paged KV ---- */

int cpu_kv_write(qv_backend *be, int32_t layer, const qv_tensor *k, const qv_tensor *v) {
  cpu_backend *c = (cpu_backend *)be;
  int64_t row = (int64_t)c->kv.n_kv_head * c->kv.head_dim;
  if (check_f32(be, "kv_write", k) || check_f32(be, "kv_write", v)) return QV_EINVAL;
  if (layer < 0 || layer >= c->kv.n_layer || k->cols != row || v->cols != row || k->rows != c->b.n_tokens ||
      v->rows != c->b.n_tokens)
    return qv_error_set(&be->last_error, QV_EINVAL, "cpu kv_write: shape mismatch");
  float *kc = cpu_kv_layer(c, layer, 0), *vc = cpu_kv_layer(c, layer, 1);
  for (int32_t t = 0; t < c->b.n_tokens; t++) {
    size_t slot = (size_t)c->b.slot_mapping[t];
    memcpy(kc + slot * (size_t)row, (const float *)k->data + (size_t)t * (size_t)row, (size_t)row * sizeof(float));
    memcpy(vc + slot * (size_t)row, (const float *)v->data + (size_t)t * (size_t)row, (size_t)row * sizeof(float));
  }
  return 0;
}

/* ---- attention: one task per (token, head) ---- */

typedef struct attn_ctx {
  cpu_backend *c;
  float *out;
  const float *q;
  const float *kc, *vc;
  const int32_t *tok_seq; /* [n_tokens] sequence of each token */
  const qv_attn_params *p;
  float *scratch;         /* [n_threads-agnostic: n_tokens*n_head][max_ctx] scores */
  int32_t max_ctx;
} attn_ctx;

static void attn_task(void *arg, int task) {
  const attn_ctx *a = arg;
  const qv_attn_params *p = a->p;
  const qv_batch *b = &a->c->b;
  int32_t t = task / p->n_head, h = task % p->n_head;
  int32_t s = a->tok_seq[t];
  int32_t pos = b->positions[t];
  int32_t kvh = h / (p->n_head / p->n_kv_head);
  int32_t hd = p->head_dim, bs = a->c->kv.block_size;
  int64_t kv_row = (int64_t)p->n_kv_head * hd;
  int32_t j0 = p->sliding_window > 0 && pos - p->sliding_window + 1 > 0 ? pos - p->sliding_window + 1 : 0;
  const int32_t *bt = b->block_tables + (size_t)s * (size_t)b->max_blocks;
  const float *qv = a->q + ((int64_t)t * p->n_head + h) * hd;
  float *sc = a->scratch + (size_t)task * (size_t)a->max_ctx;
  float mx = -INFINITY;
  for (int32_t j = j0; j <= pos; j++) {
    int64_t slot = (int64_t)bt[j / bs] * bs + j % bs;
    float x = dot_f32(qv, a->kc + slot * kv_row + (int64_t)kvh * hd, hd) * p->scale;
    if (p->softcap > 0) x = p->softcap * tanhf(x / p->softcap);
    sc[j - j0] = x;
    if (x > mx) mx = x;
  }
  float sink = p->sinks ? ((const float *)p->sinks->data)[h] : -INFINITY;
  if (sink > mx) mx = sink;
  double sum = p->sinks ? expf(sink - mx) : 0.0;
  for (int32_t j = j0; j <= pos; j++) {
    float e = expf(sc[j - j0] - mx);
    sc[j - j0] = e;
    sum += e;
  }
  float inv = (float)(1.0 / sum);
  float *o = a->out + ((int64_t)t * p->n_head + h) * hd;
  for (int32_t d = 0; d < hd; d++) o[d] = 0.0f;
  for (int32_t j = j0; j <= pos; j++) {
    int64_t slot = (int64_t)bt[j / bs] * bs + j % bs;
    const float *vv = a->vc + slot * kv_row + (int64_t)kvh * hd;
    float w = sc[j - j0] * inv;
    for (int32_t d = 0; d < hd; d++) o[d] += w * vv[d];
  }
}

int cpu_attention(qv_backend *be, qv_tensor *out, const qv_tensor *q, const qv_attn_params *p) {
  cpu_backend *c = (cpu_backend *)be;
  const qv_batch *b = &c->b;
  if (check_f32(be, "attention", out) || check_f32(be, "attention", q)) return QV_EINVAL;
  if (p->n_head <= 0 || p->n_kv_head <= 0 || p->n_head % p->n_kv_head || p->head_dim != c->kv.head_dim ||
      p->n_kv_head != c->kv.n_kv_head || p->layer < 0 || p->layer >= c->kv.n_layer || q->rows != b->n_tokens ||
      q->cols != (int64_t)p->n_head * p->head_dim || out->rows != q->rows || out->cols != q->cols ||
      (p->sinks && (check_f32(be, "attention", p->sinks) || p->sinks->rows * p->sinks->cols != p->n_head)))
    return qv_error_set(&be->last_error, QV_EINVAL, "cpu attention: shape mismatch");
  int32_t max_ctx = 0;
  for (int32_t s = 0; s < b->n_seqs; s++)
    if (b->seq_ctx_len[s] > max_ctx) max_ctx = b->seq_ctx_len[s];
  size_t n_tasks = (size_t)b->n_tokens * (size_t)p->n_head;
  /* Scratch: scores per task, plus the token -> sequence map. Per call; the CPU reference
   * favours clarity over the no-malloc rule the GPU path follows. */
  float *scratch = malloc(n_tasks * (size_t)max_ctx * sizeof(float) + (size_t)b->n_tokens * sizeof(int32_t));
  if (!scratch) return qv_error_set(&be->last_error, QV_ENOMEM, "cpu attention: out of memory");
  int32_t *tok_seq = (int32_t *)(scratch + n_tasks * (size_t)max_ctx);
  for (int32_t s = 0; s < b->n_seqs; s++)
    for (int32_t t = b->seq_q_start[s]; t < b->seq_q_start[s + 1]; t++) tok_seq[t] = s;
  attn_ctx a = {c, out->data, q->data, cpu_kv_layer(c, p->layer, 0), cpu_kv_layer(c, p->layer, 1), tok_seq, p,
                scratch, max_ctx};
  run(c, (int64_t)n_tasks * max_ctx * p->head_dim * 4, (int)n_tasks, attn_task, &a);
  free(scratch);
  return 0;
}

/* ---- elementwise and gathers ---- */

int cpu_silu_mul(qv_backend *be, qv_tensor *out, const qv_tensor *gate, const qv_tensor *up) {
  if (check_f32(be, "silu_mul", out) || check_f32(be, "silu_mul", gate) || check_f32(be, "silu_mul", up)) return QV_EINVAL;
  if (gate->rows != up->rows || gate->cols != up->cols || out->rows != gate->rows || out->cols != gate->cols)
    return qv_error_set(&be->last_error, QV_EINVAL, "cpu silu_mul: shape mismatch");
  float *o = out->data;
  const float *g = gate->data, *u = up->data;
  size_t n = (size_t)gate->rows * (size_t)gate->cols;
  for (size_t i = 0; i < n; i++) o[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
  return 0;
}

int cpu_gather_rows(qv_backend *be, qv_tensor *out, const qv_tensor *x) {
  cpu_backend *c = (cpu_backend *)be;
  if (check_f32(be, "gather_rows", out) || check_f32(be, "gather_rows", x)) return QV_EINVAL;
  if (out->rows != c->b.n_logits || out->cols != x->cols || x->rows != c->b.n_tokens)
    return qv_error_set(&be->last_error, QV_EINVAL, "cpu gather_rows: shape mismatch");
  for (int32_t i = 0; i < c->b.n_logits; i++)
    memcpy((float *)out->data + (size_t)i * (size_t)x->cols,
           (const float *)x->data + (size_t)c->b.logits_idx[i] * (size_t)x->cols, (size_t)x->cols * sizeof(float));
  return 0;
}

int cpu_argmax(qv_backend *be, const qv_tensor *logits, int32_t *ids) {
  if (check_f32(be, "argmax", logits)) return QV_EINVAL;
  for (int64_t r = 0; r < logits->rows; r++) {
    const float *l = (const float *)logits->data + r * logits->cols;
    int64_t best = 0;
    for (int64_t j = 1; j < logits->cols; j++)
      if (l[j] > l[best]) best = j;
    ids[r] = (int32_t)best;
  }
  return 0;
}
