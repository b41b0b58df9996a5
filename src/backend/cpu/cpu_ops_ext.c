/* CPU ops of the model families beyond Llama (Gemma, Phi-3, mixture of experts): scale, gated
 * activations, MoE routing, the expert-grouped matmul (dense F32 or MXFP4 experts) and the
 * weighted combine. Same rules as cpu_ops.c: fp32, each output value produced by one fixed
 * sequence of float operations whatever the batch or thread count (batch invariance). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cpu/cpu.h"

#define EXT_PAR_MIN_FLOPS (1 << 15)
#define EXT_ROWS_PER_TASK 16

static int ext_check(qv_backend *be, const char *op, const qv_tensor *t, qv_dtype dt) {
  if (!t || t->dtype != dt || !t->data)
    return qv_error_set(&be->last_error, QV_EINVAL, "cpu %s: expected a %s tensor", op, qv_dtype_name(dt));
  return 0;
}

static void ext_run(cpu_backend *c, int64_t flops, int n_tasks, tp_fn fn, void *ctx) {
  if (flops < EXT_PAR_MIN_FLOPS || n_tasks <= 1) {
    for (int i = 0; i < n_tasks; i++) fn(ctx, i);
  } else {
    tp_run(c->pool, n_tasks, fn, ctx);
  }
}

/* e2m1 code -> value (OCP MX FP4). */
static const float FP4_E2M1[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                   -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

/* ---- scale ---- */

int cpu_scale(qv_backend *be, qv_tensor *x, float s) {
  if (ext_check(be, "scale", x, QV_DTYPE_F32)) return QV_EINVAL;
  float *a = x->data;
  size_t n = (size_t)x->rows * (size_t)x->cols;
  for (size_t i = 0; i < n; i++) a[i] *= s;
  return 0;
}

/* ---- gated activations ---- */

static float gelu_tanh(float x) {
  const float beta = 0.7978845608028654f, kappa = 0.044715f; /* sqrt(2/pi) */
  float inner = beta * (x + kappa * x * x * x);
  return 0.5f * x * (1.0f + tanhf(inner));
}

int cpu_gated_act(qv_backend *be, qv_tensor *out, const qv_tensor *gate, const qv_tensor *up, const qv_act *act) {
  if (ext_check(be, "gated_act", out, QV_DTYPE_F32) || ext_check(be, "gated_act", gate, QV_DTYPE_F32) ||
      ext_check(be, "gated_act", up, QV_DTYPE_F32))
    return QV_EINVAL;
  if (gate->rows != up->rows || gate->cols != up->cols || out->rows != gate->rows || out->cols != gate->cols)
    return qv_error_set(&be->last_error, QV_EINVAL, "cpu gated_act: shape mismatch");
  float *o = out->data;
  const float *g = gate->data, *u = up->data;
  size_t n = (size_t)gate->rows * (size_t)gate->cols;
  switch (act->kind) {
  case QV_ACT_SILU:
    ((cpu_backend *)be)->kern->silu_mul(o, g, u, (int64_t)n); /* the same values as silu_mul */
    break;
  case QV_ACT_GELU_TANH:
    for (size_t i = 0; i < n; i++) o[i] = gelu_tanh(g[i]) * u[i];
    break;
  case QV_ACT_SWIGLU_OAI:
    for (size_t i = 0; i < n; i++) {
      float gg = fminf(g[i], act->limit), uu = fminf(fmaxf(u[i], -act->limit), act->limit);
      float glu = gg / (1.0f + expf(-gg * act->alpha));
      o[i] = (uu + 1.0f) * glu;
    }
    break;
  default:
    return qv_error_set(&be->last_error, QV_EINVAL, "cpu gated_act: unknown activation %d", (int)act->kind);
  }
  return 0;
}

/* ---- MoE routing ---- */

int cpu_moe_route(qv_backend *be, const qv_tensor *logits, const qv_moe_route *r, qv_tensor *ids, qv_tensor *weights) {
  if (ext_check(be, "moe_route", logits, QV_DTYPE_F32) || ext_check(be, "moe_route", ids, QV_DTYPE_I32) ||
      ext_check(be, "moe_route", weights, QV_DTYPE_F32))
    return QV_EINVAL;
  int32_t E = r->n_expert, k = r->k;
  if (E <= 0 || E > 4096 || k <= 0 || k > E || logits->cols != E || ids->rows != logits->rows || ids->cols != k ||
      weights->rows != logits->rows || weights->cols != k)
    return qv_error_set(&be->last_error, QV_EINVAL, "cpu moe_route: shape mismatch");
  float p[4096];
  for (int64_t t = 0; t < logits->rows; t++) {
    const float *l = (const float *)logits->data + t * E;
    int32_t *id = (int32_t *)ids->data + t * k;
    float *w = (float *)weights->data + t * k;
    if (r->kind == QV_ROUTE_SOFTMAX_TOPK) {
      float mx = -INFINITY;
      for (int32_t e = 0; e < E; e++) mx = fmaxf(mx, l[e]);
      double sum = 0;
      for (int32_t e = 0; e < E; e++) sum += (p[e] = expf(l[e] - mx));
      float inv = (float)(1.0 / sum);
      for (int32_t e = 0; e < E; e++) p[e] *= inv;
    } else if (r->kind == QV_ROUTE_SIGMOID_TOPK) {
      for (int32_t e = 0; e < E; e++) p[e] = 1.0f / (1.0f + expf(-l[e]));
    } else {
      memcpy(p, l, (size_t)E * sizeof(float));
    }
    /* Top-k, largest first; ties go to the lower expert id. NaN never wins. */
    for (int32_t j = 0; j < k; j++) {
      int32_t best = -1;
      for (int32_t e = 0; e < E; e++) {
        int taken = 0;
        for (int32_t i = 0; i < j; i++) taken |= id[i] == e;
        if (taken) continue;
        if (best < 0 || p[e] > p[best] || (isnan(p[best]) && !isnan(p[e]))) best = e;
      }
      id[j] = best;
      w[j] = p[best];
    }
    if (r->kind == QV_ROUTE_TOPK_SOFTMAX) {
      float mx = w[0];
      double sum = 0;
      for (int32_t j = 0; j < k; j++) sum += (w[j] = expf(w[j] - mx));
      float inv = (float)(1.0 / sum);
      for (int32_t j = 0; j < k; j++) w[j] *= inv;
    } else if (r->normalize) {
      float sum = 0;
      for (int32_t j = 0; j < k; j++) sum += w[j];
      for (int32_t j = 0; j < k; j++) w[j] /= sum;
    }
  }
  return 0;
}

/* ---- expert-grouped matmul ----
 * The slots (token, choice) are grouped by expert; each expert's input rows are gathered into
 * one contiguous block and multiplied by that expert's weights with the backend's SIMD matmul
 * kernel (cpu_kern.h: the same fixed reduction order as every other matmul, so a value never
 * depends on the other rows, the tile or the thread count), then scattered back to slot order.
 * A task is one expert's block of EXT_ROWS_PER_TASK weight rows: the expert's weights are read
 * once per call. MXFP4 rows are decoded into a stack buffer, exactly (a 2-bit mantissa times a
 * power of two is an fp32 value), a few rows at a time, then go through the same kernel: an
 * MXFP4 result equals the dense result on the dequantized weights bit for bit. */

#define MOE_DQ_FLOATS 16384 /* per-task MXFP4 decode buffer (64 KiB of stack) */

typedef struct moe_task {
  int32_t expert;
  int32_t row0;          /* first output row of the expert this task computes */
} moe_task;

typedef struct moe_ctx {
  const cpu_kernels *kern;
  const qv_experts *w;
  const float *xg;       /* [S][cols]: input rows grouped by expert */
  float *og;             /* [S][rows]: outputs in the same grouped order */
  const int32_t *offs;   /* [n_expert + 1] */
  const moe_task *tasks;
} moe_ctx;

/* n rows of MXFP4 weights (blocks, scales) decoded to dst[n][cols]. */
static void mxfp4_decode(float *dst, const uint8_t *qb, const uint8_t *qs, int64_t n, int64_t cols) {
  for (int64_t r = 0; r < n; r++)
    for (int64_t g = 0; g < cols / 32; g++) {
      float s = ldexpf(1.0f, (int)qs[r * (cols / 32) + g] - 127);
      const uint8_t *b = qb + r * (cols / 2) + g * 16;
      float *v = dst + r * cols + g * 32;
      for (int i = 0; i < 16; i++) {
        v[2 * i] = FP4_E2M1[b[i] & 15] * s;
        v[2 * i + 1] = FP4_E2M1[b[i] >> 4] * s;
      }
    }
}

static void moe_task_fn(void *arg, int ti) {
  const moe_ctx *c = arg;
  const qv_experts *w = c->w;
  const moe_task *tk = &c->tasks[ti];
  int64_t e = tk->expert, i0 = c->offs[e], cnt = c->offs[e + 1] - i0;
  int64_t r1 = tk->row0 + EXT_ROWS_PER_TASK < w->rows ? tk->row0 + EXT_ROWS_PER_TASK : w->rows;
  cpu_mm_args a = {.out = c->og + i0 * w->rows, .x = c->xg + i0 * w->cols,
                   .bias = w->bias.data ? (const float *)w->bias.data + e * w->rows : NULL, .wt = QV_DTYPE_F32,
                   .n = cnt, .m = w->rows, .k = w->cols, .ldo = w->rows, .ldx = w->cols};
  if (!w->mxfp4) {
    a.w = (const float *)w->w.data + e * w->rows * w->cols;
    c->kern->matmul(&a, 0, cnt, tk->row0, r1);
    return;
  }
  /* Decoded rows [r, r + nr) as a matrix of nr rows writing output columns from r. */
  float dq[MOE_DQ_FLOATS];
  int64_t step = MOE_DQ_FLOATS / w->cols;
  float *out0 = (float *)a.out;
  const float *bias0 = a.bias;
  for (int64_t r = tk->row0; r < r1; r += step) {
    int64_t nr = r1 - r < step ? r1 - r : step, wr = e * w->rows + r;
    mxfp4_decode(dq, (const uint8_t *)w->blocks.data + wr * (w->cols / 2),
                 (const uint8_t *)w->scales.data + wr * (w->cols / 32), nr, w->cols);
    a.w = dq;
    a.m = nr;
    a.out = out0 + r;
    a.bias = bias0 ? bias0 + r : NULL;
    c->kern->matmul(&a, 0, cnt, 0, nr);
  }
}

int cpu_moe_matmul(qv_backend *be, qv_tensor *out, const qv_tensor *x, const qv_experts *w, const qv_tensor *ids) {
  cpu_backend *cb = (cpu_backend *)be;
  if (ext_check(be, "moe_matmul", out, QV_DTYPE_F32) || ext_check(be, "moe_matmul", x, QV_DTYPE_F32) ||
      ext_check(be, "moe_matmul", ids, QV_DTYPE_I32))
    return QV_EINVAL;
  int64_t n = ids->rows, k = ids->cols, E = w->n_expert;
  int bad = E <= 0 || k <= 0 || w->rows <= 0 || w->cols <= 0 || x->cols != w->cols ||
            (x->rows != n && x->rows != n * k) || out->rows != n * k || out->cols != w->rows;
  if (w->mxfp4)
    bad |= w->cols % 32 || w->cols > MOE_DQ_FLOATS || ext_check(be, "moe_matmul", &w->blocks, QV_DTYPE_U8) ||
           ext_check(be, "moe_matmul", &w->scales, QV_DTYPE_U8) || w->blocks.rows != E * w->rows ||
           w->blocks.cols != w->cols / 2 || w->scales.rows != E * w->rows || w->scales.cols != w->cols / 32;
  else
    bad |= ext_check(be, "moe_matmul", &w->w, QV_DTYPE_F32) || w->w.rows != E * w->rows || w->w.cols != w->cols;
  if (w->bias.data) bad |= w->bias.dtype != QV_DTYPE_F32 || w->bias.rows * w->bias.cols != E * w->rows;
  if (bad) return qv_error_set(&be->last_error, QV_EINVAL, "cpu moe_matmul: shape mismatch");
  const int32_t *id = ids->data;
  int64_t S = n * k;
  for (int64_t i = 0; i < S; i++)
    if (id[i] < 0 || id[i] >= E) return qv_error_set(&be->last_error, QV_ERANGE, "cpu moe_matmul: expert id %d", id[i]);
  int64_t tasks_per_expert = (w->rows + EXT_ROWS_PER_TASK - 1) / EXT_ROWS_PER_TASK;
  /* xg[S][cols] + og[S][rows] floats, then order[S] + offs[E+1] + cursor[E] ints and the tasks. */
  size_t floats = (size_t)S * (size_t)(w->cols + w->rows), ints = (size_t)S + 2 * (size_t)E + 1;
  void *mem = malloc(floats * sizeof(float) + ints * sizeof(int32_t) +
                     (size_t)(E * tasks_per_expert) * sizeof(moe_task) + 16);
  if (!mem) return qv_error_set(&be->last_error, QV_ENOMEM, "cpu moe_matmul: out of memory");
  float *xg = mem, *og = xg + (size_t)S * (size_t)w->cols;
  int32_t *order = (int32_t *)(og + (size_t)S * (size_t)w->rows), *offs = order + S, *cur = offs + E + 1;
  moe_task *tasks = (moe_task *)(((uintptr_t)(cur + E) + 15) & ~(uintptr_t)15);
  memset(offs, 0, (size_t)(E + 1) * sizeof(int32_t));
  for (int64_t i = 0; i < S; i++) offs[id[i] + 1]++;
  for (int64_t e = 0; e < E; e++) offs[e + 1] += offs[e];
  memcpy(cur, offs, (size_t)E * sizeof(int32_t));
  for (int64_t i = 0; i < S; i++) order[cur[id[i]]++] = (int32_t)i;
  /* x has one row per token (gate/up) or one per slot (down). */
  int per_slot = x->rows == S && k > 1;
  for (int64_t p = 0; p < S; p++) {
    int64_t src = per_slot ? order[p] : order[p] / k;
    memcpy(xg + p * w->cols, (const float *)x->data + src * w->cols, (size_t)w->cols * sizeof(float));
  }
  int n_tasks = 0;
  for (int64_t e = 0; e < E; e++)
    if (offs[e + 1] > offs[e])
      for (int64_t t = 0; t < tasks_per_expert; t++)
        tasks[n_tasks++] = (moe_task){(int32_t)e, (int32_t)(t * EXT_ROWS_PER_TASK)};
  moe_ctx c = {cb->kern, w, xg, og, offs, tasks};
  ext_run(cb, 2 * S * w->rows * w->cols, n_tasks, moe_task_fn, &c);
  for (int64_t p = 0; p < S; p++)
    memcpy((float *)out->data + (int64_t)order[p] * w->rows, og + p * w->rows, (size_t)w->rows * sizeof(float));
  free(mem);
  return 0;
}

/* ---- combine ---- */

int cpu_moe_combine(qv_backend *be, qv_tensor *out, const qv_tensor *y, const qv_tensor *weights) {
  if (ext_check(be, "moe_combine", out, QV_DTYPE_F32) || ext_check(be, "moe_combine", y, QV_DTYPE_F32) ||
      ext_check(be, "moe_combine", weights, QV_DTYPE_F32))
    return QV_EINVAL;
  int64_t n = weights->rows, k = weights->cols, d = y->cols;
  if (y->rows != n * k || out->rows != n || out->cols != d)
    return qv_error_set(&be->last_error, QV_EINVAL, "cpu moe_combine: shape mismatch");
  const float *w = weights->data, *yy = y->data;
  float *o = out->data;
  for (int64_t t = 0; t < n; t++)
    for (int64_t c = 0; c < d; c++) {
      float acc = w[t * k] * yy[(t * k) * d + c];
      for (int64_t j = 1; j < k; j++) acc += w[t * k + j] * yy[(t * k + j) * d + c];
      o[t * d + c] = acc;
    }
  return 0;
}
