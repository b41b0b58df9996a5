/* CPU backend math: the fp32 reference every other backend is checked against.
 *
 * Each op splits its output into independent tasks (rows, column ranges, (token, head) pairs)
 * on the thread pool. Within a task every output value is produced by one fixed sequence of
 * float operations (dot products accumulate in 8 interleaved partial sums combined in a fixed
 * order), so results are bit-identical whatever the batch composition or thread count. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cpu/cpu.h"
#include "backend/cpu/cpu_quant.h"
#include "quant/quant.h"

/* Work smaller than this runs on the calling thread: waking workers costs more. */
#define CPU_PAR_MIN_FLOPS (1 << 15)

static int check_f32(qv_backend *be, const char *op, const qv_tensor *t) {
  if (!t || t->dtype != QV_DTYPE_F32 || !t->data)
    return qv_error_set(&be->last_error, QV_EINVAL, "cpu %s: expected an F32 tensor", op);
  return 0;
}

static int is_weight_dtype(qv_dtype t) { return t == QV_DTYPE_F32 || t == QV_DTYPE_BF16 || t == QV_DTYPE_F16; }

static void run(cpu_backend *c, int64_t flops, int n_tasks, tp_fn fn, void *ctx) {
  if (flops < CPU_PAR_MIN_FLOPS) {
    for (int i = 0; i < n_tasks; i++) fn(ctx, i);
  } else {
    tp_run(c->pool, n_tasks, fn, ctx);
  }
}

/* ---- embedding ---- */

/* Rows of table for the staged token ids: ids in [row0, row0 + table.rows) are looked up, the
 * others are out of range (shard 0: an error; a vocab-parallel shard: a zero row). */
static int embed_rows(qv_backend *be, qv_tensor *out, const qv_tensor *table, int64_t row0, int shard) {
  cpu_backend *c = (cpu_backend *)be;
  int quant = table && qv_dtype_is_quant(table->dtype);
  if (check_f32(be, "embed", out)) return QV_EINVAL;
  if (!table || !table->data || !(quant || is_weight_dtype(table->dtype)))
    return qv_error_set(&be->last_error, QV_EINVAL, "cpu embed: table must be F32, BF16, F16 or quantized");
  if (out->rows != c->b.n_tokens || out->cols != table->cols || (quant && table->cols % 32) || row0 < 0)
    return qv_error_set(&be->last_error, QV_EINVAL, "cpu embed: shape mismatch");
  float *o = out->data;
  size_t row_bytes = qv_dtype_row_bytes(table->dtype, table->cols);
  for (int32_t i = 0; i < c->b.n_tokens; i++) {
    int64_t id = (int64_t)c->b.token_ids[i] - row0;
    float *dst = o + (size_t)i * out->cols;
    if (id < 0 || id >= table->rows) {
      if (!shard)
        return qv_error_set(&be->last_error, QV_ERANGE, "cpu embed: token id %d outside vocab %lld",
                            c->b.token_ids[i], (long long)table->rows);
      memset(dst, 0, (size_t)out->cols * sizeof *dst);
      continue;
    }
    const void *src = (const char *)table->data + (size_t)id * row_bytes;
    if (quant) quant_dequant_row(table->dtype, src, dst, out->cols);
    else qv_convert_to_f32(dst, src, table->dtype, (size_t)out->cols);
  }
  return 0;
}

int cpu_embed(qv_backend *be, qv_tensor *out, const qv_tensor *table) { return embed_rows(be, out, table, 0, 0); }

int cpu_embed_shard(qv_backend *be, qv_tensor *out, const qv_tensor *table, int64_t row0) {
  return embed_rows(be, out, table, row0, 1);
}

/* ---- elementwise work split into tasks ----
 * Row-wise ops (norms) split rows, flat ops (add, silu_mul) split the elements into ranges;
 * each element is computed by the same expression whatever the split, so the split only sets
 * how the work spreads over threads. Small steps (a decode) stay on the calling thread. */

typedef struct ew_ctx {
  const cpu_kernels *kern;
  float *o, *x;       /* output; in-out residual for the fused add */
  const float *a, *b; /* inputs */
  const float *w;     /* norm weight [cols] */
  float eps;
  int64_t rows, cols; /* row-wise ops */
  int64_t n, per;     /* flat ops: elements, and elements (or rows) per task */
} ew_ctx;

/* The task count for `units` of work split into pieces of at least min_per, about four pieces
 * per thread; sets c->per. */
static int ew_split(cpu_backend *cb, ew_ctx *c, int64_t units, int64_t min_per) {
  int64_t want = 4 * (int64_t)tp_n_threads(cb->pool), per = (units + want - 1) / want;
  c->per = per < min_per ? min_per : per;
  return (int)((units + c->per - 1) / c->per);
}

static void rmsnorm_row(float *o, const float *x, const float *w, int64_t n, float eps) {
  /* Sum of squares in double: the reference should not be the least accurate party. */
  double ss = 0;
  for (int64_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
  float inv = (float)(1.0 / sqrt(ss / (double)n + (double)eps));
  for (int64_t i = 0; i < n; i++) o[i] = (x[i] * inv) * w[i];
}

static void rmsnorm_task(void *arg, int task) {
  const ew_ctx *c = arg;
  int64_t r0 = (int64_t)task * c->per, r1 = r0 + c->per < c->rows ? r0 + c->per : c->rows;
  for (int64_t r = r0; r < r1; r++) {
    if (c->b) /* fused residual: x += delta first */
      for (int64_t i = 0; i < c->cols; i++) c->x[r * c->cols + i] += c->b[r * c->cols + i];
    rmsnorm_row(c->o + r * c->cols, c->x + r * c->cols, c->w, c->cols, c->eps);
  }
}

static int rmsnorm_run(qv_backend *be, qv_tensor *out, qv_tensor *x, const qv_tensor *delta, const qv_tensor *w,
                       float eps) {
  cpu_backend *cb = (cpu_backend *)be;
  if (check_f32(be, "rmsnorm", out) || check_f32(be, "rmsnorm", x) || check_f32(be, "rmsnorm", w)) return QV_EINVAL;
  if (out->rows != x->rows || out->cols != x->cols || w->rows * w->cols != x->cols)
    return qv_error_set(&be->last_error, QV_EINVAL, "cpu rmsnorm: shape mismatch");
  ew_ctx c = {.o = out->data, .x = x->data, .b = delta ? delta->data : NULL, .w = w->data, .eps = eps,
              .rows = x->rows, .cols = x->cols};
  int n_tasks = ew_split(cb, &c, x->rows, 1);
  run(cb, x->rows * x->cols * 4, n_tasks, rmsnorm_task, &c);
  return 0;
}

int cpu_rmsnorm(qv_backend *be, qv_tensor *out, const qv_tensor *x, const qv_tensor *w, float eps) {
  /* x is only read when no delta is given. */
  return rmsnorm_run(be, out, (qv_tensor *)x, NULL, w, eps);
}

int cpu_add_rmsnorm(qv_backend *be, qv_tensor *out, qv_tensor *x, const qv_tensor *delta, const qv_tensor *w,
                    float eps) {
  if (check_f32(be, "add_rmsnorm", delta) || !x || delta->rows != x->rows || delta->cols != x->cols)
    return qv_error_set(&be->last_error, QV_EINVAL, "cpu add_rmsnorm: shape mismatch");
  return rmsnorm_run(be, out, x, delta, w, eps);
}

static void add_task(void *arg, int task) {
  const ew_ctx *c = arg;
  int64_t i0 = (int64_t)task * c->per, i1 = i0 + c->per < c->n ? i0 + c->per : c->n;
  for (int64_t i = i0; i < i1; i++) c->x[i] += c->a[i];
}

int cpu_add(qv_backend *be, qv_tensor *x, const qv_tensor *y) {
  cpu_backend *cb = (cpu_backend *)be;
  if (check_f32(be, "add", x) || check_f32(be, "add", y)) return QV_EINVAL;
  if (x->rows != y->rows || x->cols != y->cols) return qv_error_set(&be->last_error, QV_EINVAL, "cpu add: shape mismatch");
  ew_ctx c = {.x = x->data, .a = y->data, .n = x->rows * x->cols};
  int n_tasks = ew_split(cb, &c, c.n, 4096);
  run(cb, c.n, n_tasks, add_task, &c);
  return 0;
}

/* ---- matmul: out[n][m] = x[n][k] . w[m][k]^T + bias ----
 * The path's kernel (cpu_kern.h) does the blocking and keeps each output's reduction order
 * fixed; here the weight rows are cut into column ranges (mm_split) that the atomic task
 * counter hands out, largest first. Weights are F32, BF16 or F16 (widened in registers). */

#define MM_MAX_TASKS 64

typedef struct mm_ctx {
  const cpu_kernels *kern;
  cpu_mm_args a;
  cpu_bf16_mm_args ab; /* the bf16 dot-product kernel's arguments when ab.x != NULL */
  int64_t bounds[MM_MAX_TASKS + 1]; /* task t: columns [bounds[t], bounds[t + 1]) */
  int64_t rows_per_task;             /* the bf16 mode's conversion of x */
} mm_ctx;

static void mm_task(void *arg, int task) {
  const mm_ctx *c = arg;
  if (c->ab.x) cpu_bf16_matmul(&c->ab, 0, c->a.n, c->bounds[task], c->bounds[task + 1]);
  else c->kern->matmul(&c->a, 0, c->a.n, c->bounds[task], c->bounds[task + 1]);
}

/* Column ranges of whole 16-column groups, largest first: each takes a (2 * threads)th of the
 * columns still unassigned, down to a floor (1/(16 * threads) of all, at least 1/32 of all and
 * one group), so the task counter hands the small ones out last and the threads finish within a
 * small range of each other (equal ranges left one thread idle for up to a range whenever the
 * two ran at different speeds; the VM's do). Every range holds at least 1/32 of the groups, so
 * there are at most 32 (MM_MAX_TASKS bounds it again); returns their number. */
static int mm_split(int64_t m, int64_t n_thr, int64_t *bounds) {
  const int64_t groups = (m + 15) / 16;
  int64_t floor_g = groups / (16 * n_thr), done = 0;
  if (floor_g < (groups + 31) / 32) floor_g = (groups + 31) / 32;
  if (floor_g < 1) floor_g = 1;
  int n = 0;
  bounds[0] = 0;
  while (done < groups) {
    int64_t g = (groups - done + 2 * n_thr - 1) / (2 * n_thr);
    if (g < floor_g) g = floor_g;
    if (n == MM_MAX_TASKS - 1 || done + g > groups) g = groups - done;
    done += g;
    bounds[++n] = done * 16 < m ? done * 16 : m;
  }
  return n;
}

static void mm_convert_task(void *arg, int task) {
  const mm_ctx *c = arg;
  int64_t r0 = (int64_t)task * c->rows_per_task, r1 = r0 + c->rows_per_task < c->a.n ? r0 + c->rows_per_task : c->a.n;
  for (int64_t i = r0; i < r1; i++)
    cpu_bf16_convert((uint16_t *)c->ab.x + (size_t)i * (size_t)c->a.k, c->a.x + (size_t)i * (size_t)c->a.ldx, c->a.k);
}

/* The bf16 dot-product mode: x rounded to bf16 once (rows split over the pool), into the
 * backend's grow-only buffer. */
static int mm_bf16_args(cpu_backend *cb, mm_ctx *c) {
  size_t need = (size_t)c->a.n * (size_t)c->a.k;
  if (need > cb->xb_cap) {
    uint16_t *p = realloc(cb->xb, need * sizeof *p);
    if (!p) return qv_error_set(&cb->base.last_error, QV_ENOMEM, "cpu matmul: out of memory");
    cb->xb = p;
    cb->xb_cap = need;
  }
  c->ab.x = cb->xb;
  ew_ctx split = {0};
  int n_tasks = ew_split(cb, &split, c->a.n, 1);
  c->rows_per_task = split.per;
  run(cb, c->a.n * c->a.k, n_tasks, mm_convert_task, c);
  c->ab = (cpu_bf16_mm_args){.out = c->a.out, .x = cb->xb, .w = c->a.w, .bias = c->a.bias, .n = c->a.n,
                             .m = c->a.m, .k = c->a.k, .ldo = c->a.ldo};
  return 0;
}

int cpu_matmul(qv_backend *be, qv_tensor *out, const qv_tensor *x, const qv_tensor *w, const qv_tensor *bias) {
  if (w && qv_dtype_is_quant(w->dtype)) return cpu_quant_matmul(be, out, x, w, bias);
  cpu_backend *cb = (cpu_backend *)be;
  if (check_f32(be, "matmul", out) || check_f32(be, "matmul", x)) return QV_EINVAL;
  if (!w || !w->data || !is_weight_dtype(w->dtype))
    return qv_error_set(&be->last_error, QV_EINVAL, "cpu matmul: weight dtype %s (expected F32, BF16 or F16)",
                        w ? qv_dtype_name(w->dtype) : "none");
  if (x->cols != w->cols || out->rows != x->rows || out->cols != w->rows ||
      (bias && (check_f32(be, "matmul", bias) || bias->rows * bias->cols != w->rows)))
    return qv_error_set(&be->last_error, QV_EINVAL, "cpu matmul: shapes [%lld][%lld] x [%lld][%lld]^T -> [%lld][%lld]",
                        (long long)x->rows, (long long)x->cols, (long long)w->rows, (long long)w->cols,
                        (long long)out->rows, (long long)out->cols);
  mm_ctx c = {.kern = cb->kern,
              .a = {.out = out->data, .x = x->data, .w = w->data, .bias = bias ? bias->data : NULL, .wt = w->dtype,
                    .n = x->rows, .m = w->rows, .k = x->cols, .ldo = out->cols, .ldx = x->cols}};
  int n_tasks = mm_split(w->rows, tp_n_threads(cb->pool), c.bounds);
  if (cb->bf16_dot && w->dtype == QV_DTYPE_BF16 && mm_bf16_args(cb, &c)) return QV_ENOMEM;
  run(cb, 2 * c.a.n * c.a.m * c.a.k, n_tasks, mm_task, &c);
  return 0;
}

/* ---- RoPE ---- */

static void rope_rows(float *x, int64_t t0, int64_t t1, int32_t n_head, const int32_t *pos, const qv_rope *r) {
  const float *inv = r->inv_freq->data;
  int32_t half = r->rot_dim / 2;
  for (int64_t t = t0; t < t1; t++) {
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

typedef struct rope_ctx {
  float *q, *k;
  int32_t n_head, n_kv_head;
  const int32_t *pos;
  const qv_rope *rope;
  int64_t n_tok, per; /* tokens, tokens per task */
} rope_ctx;

static void rope_task(void *arg, int task) {
  const rope_ctx *r = arg;
  int64_t t0 = (int64_t)task * r->per, t1 = t0 + r->per < r->n_tok ? t0 + r->per : r->n_tok;
  rope_rows(r->q, t0, t1, r->n_head, r->pos, r->rope);
  rope_rows(r->k, t0, t1, r->n_kv_head, r->pos, r->rope);
}

int cpu_rope(qv_backend *be, qv_tensor *q, int32_t n_head, qv_tensor *k, int32_t n_kv_head, const qv_rope *rope) {
  cpu_backend *c = (cpu_backend *)be;
  if (check_f32(be, "rope", q) || check_f32(be, "rope", k) || check_f32(be, "rope", rope->inv_freq)) return QV_EINVAL;
  if (q->rows != c->b.n_tokens || k->rows != c->b.n_tokens || q->cols != (int64_t)n_head * rope->head_dim ||
      k->cols != (int64_t)n_kv_head * rope->head_dim || rope->rot_dim > rope->head_dim || rope->rot_dim % 2 ||
      rope->inv_freq->rows * rope->inv_freq->cols < rope->rot_dim / 2)
    return qv_error_set(&be->last_error, QV_EINVAL, "cpu rope: shape mismatch");
  rope_ctx r = {q->data, k->data, n_head, n_kv_head, c->b.positions, rope, q->rows, 0};
  ew_ctx split = {0};
  int n_tasks = ew_split(c, &split, q->rows, 1);
  r.per = split.per;
  run(c, q->rows * (q->cols + k->cols) * 4, n_tasks, rope_task, &r);
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
  const size_t bs = (size_t)c->kv.block_size;
  for (int32_t t = 0; t < c->b.n_tokens; t++) {
    size_t slot = (size_t)c->b.slot_mapping[t];
    const float *kr = (const float *)k->data + (size_t)t * (size_t)row;
    /* K transposed within the block: element (head h, d) of the slot at block + (h*hd + d)*bs. */
    float *kb = kc + slot / bs * bs * (size_t)row + slot % bs;
    for (int64_t e = 0; e < row; e++) kb[(size_t)e * bs] = kr[e];
    memcpy(vc + slot * (size_t)row, (const float *)v->data + (size_t)t * (size_t)row, (size_t)row * sizeof(float));
  }
  return 0;
}

/* ---- attention: flash-style tiles over the paged cache ----
 * A task is (sequence, KV head, a block of up to ATTN_QB of its query tokens): the query rows
 * are those tokens times the heads of the GQA group, and it walks the sequence's keys in tiles
 * of CPU_ATTN_KT positions aligned to absolute position 0. Each tile's keys are copied once
 * from the cache's transposed blocks (one lane per key, so a score needs no horizontal sum)
 * and, with its values, serve every row of the task while they are in L1/L2. Each row keeps
 * an online softmax: running max m, running sum l (double), and its output accumulated in
 * place.
 *
 * The fixed order (cpu_kern.h): for a row, the tiles, the keys within a tile, the max, the
 * rescaling and the sums depend only on the row's position, the window and the cached K/V,
 * never on which other rows share its task or its kernel call, the batch, chunked prefill or
 * the thread count. Rows of the task that see the same keys of a tile (a token's GQA group;
 * every token once the tile is wholly in their past) go to the kernel together, which only
 * interleaves their independent chains. An attention-sink logit (gpt-oss) is one more term of
 * the denominator, folded into the final rescale. */

#define ATTN_QB 16 /* query tokens per task */
#define ATTN_ROWS 64 /* rows per kernel call */

typedef struct attn_task_desc {
  int32_t seq, q0, q1, kvh;
} attn_task_desc;

typedef struct attn_ctx {
  cpu_backend *c;
  float *out;
  const float *q;
  const float *kc, *vc;
  const qv_attn_params *p;
  const attn_task_desc *tasks;
  int n_tasks;
  float *row_max;  /* [n_tokens * n_head] running max per row */
  double *row_sum; /* [n_tokens * n_head] running sum per row */
} attn_ctx;

/* The key positions [j0, pos + 1) row position pos sees. */
static int32_t attn_first_key(const qv_attn_params *p, int32_t pos) {
  return p->sliding_window > 0 && pos - p->sliding_window + 1 > 0 ? pos - p->sliding_window + 1 : 0;
}

static void attn_task(void *arg, int task_idx) {
  const attn_ctx *a = arg;
  const qv_attn_params *p = a->p;
  const qv_batch *b = &a->c->b;
  const cpu_kernels *kern = a->c->kern;
  /* The tasks are listed by sequence and first token; the pool takes them in index order, so
   * the last listed (the longest causal rows) go first and the short ones fill in the end. */
  const attn_task_desc *td = &a->tasks[a->n_tasks - 1 - task_idx];
  const int32_t group = p->n_head / p->n_kv_head, hd = p->head_dim, bs = a->c->kv.block_size;
  const int64_t kv_row = (int64_t)p->n_kv_head * hd;
  const int32_t *bt = b->block_tables + (size_t)td->seq * (size_t)b->max_blocks;
  int32_t lo = INT32_MAX, hi = 0; /* key positions any row of the task sees */
  for (int32_t t = td->q0; t < td->q1; t++) {
    int32_t pos = b->positions[t], j0 = attn_first_key(p, pos);
    if (j0 < lo) lo = j0;
    if (pos + 1 > hi) hi = pos + 1;
    for (int32_t g = 0; g < group; g++) {
      int64_t row = (int64_t)t * p->n_head + (int64_t)td->kvh * group + g;
      a->row_max[row] = -INFINITY;
      a->row_sum[row] = 0;
      memset(a->out + row * hd, 0, (size_t)hd * sizeof(float));
    }
  }
  float kt[CPU_ATTN_MAX_HD * CPU_ATTN_KT]; /* [hd][CPU_ATTN_KT] */
  const float *vp[CPU_ATTN_KT]; /* value rows of the tile's positions */
  int64_t rows[ATTN_ROWS];
  cpu_attn_tile at = {.kt = kt, .v = vp, .hd = hd, .scale = p->scale, .softcap = p->softcap, .q = a->q,
                      .o = a->out, .m = a->row_max, .l = a->row_sum, .rows = rows};
  /* This head's keys in a block: [hd][bs], one row of bs positions per d. */
  const int64_t kblk = (int64_t)bs * kv_row, khead = (int64_t)td->kvh * hd * bs;
  int first = 1;
  for (int32_t tile = lo / CPU_ATTN_KT * CPU_ATTN_KT; tile < hi; tile += CPU_ATTN_KT) {
    int32_t tile_end = tile + CPU_ATTN_KT < hi ? tile + CPU_ATTN_KT : hi, fill = tile > lo ? tile : lo;
    for (int32_t j = fill; j < tile_end;) { /* block by block through the block table */
      int32_t blk = j / bs, off = j % bs, n = bs - off < tile_end - j ? bs - off : tile_end - j;
      const float *k0 = a->kc + (int64_t)bt[blk] * kblk + khead + off;
      const float *v0 = a->vc + ((int64_t)bt[blk] * bs + off) * kv_row + (int64_t)td->kvh * hd;
      float *kd = kt + (j - tile);
      if (n == 16) /* the default block size: a fixed-size copy the compiler turns into vector moves */
        for (int32_t d = 0; d < hd; d++) memcpy(kd + (int64_t)d * CPU_ATTN_KT, k0 + (int64_t)d * bs, 16 * sizeof(float));
      else
        for (int32_t d = 0; d < hd; d++)
          for (int32_t i = 0; i < n; i++) kd[(int64_t)d * CPU_ATTN_KT + i] = k0[(int64_t)d * bs + i];
      for (int32_t i = 0; i < n; i++, j++) vp[j - tile] = v0 + i * kv_row;
    }
    /* The next tile's keys and values, into L2 while this tile runs: a decode step reads the
     * whole context's K and V from memory for one token's GQA group, and without this each
     * line arrives one miss at a time (3,900 keys: a tenth of the step). */
    for (int32_t j = tile_end, ne = tile_end + CPU_ATTN_KT < hi ? tile_end + CPU_ATTN_KT : hi; j < ne;) {
      int32_t blk = j / bs, off = j % bs, n = bs - off < ne - j ? bs - off : ne - j;
      const char *kb = (const char *)(a->kc + (int64_t)bt[blk] * kblk + khead);
      for (int64_t b = 0; b < (int64_t)hd * bs * (int64_t)sizeof(float); b += 64) __builtin_prefetch(kb + b, 0, 2);
      for (int32_t i = 0; i < n; i++, j++) {
        const float *vr = a->vc + ((int64_t)bt[blk] * bs + off + i) * kv_row + (int64_t)td->kvh * hd;
        for (int32_t d = 0; d < hd; d += 16) __builtin_prefetch(vr + d, 0, 2);
      }
    }
    if (first && (fill > tile || tile_end < tile + CPU_ATTN_KT)) {
      /* columns no key fills hold zeros (later tiles leave earlier keys there: finite) */
      for (int32_t d = 0; d < hd; d++) {
        float *col = kt + (int64_t)d * CPU_ATTN_KT;
        memset(col, 0, (size_t)(fill - tile) * sizeof(float));
        memset(col + (tile_end - tile), 0, (size_t)(tile + CPU_ATTN_KT - tile_end) * sizeof(float));
      }
    }
    first = 0;
    at.n_rows = 0;
    for (int32_t t = td->q0; t < td->q1; t++) {
      int32_t pos = b->positions[t], j0 = attn_first_key(p, pos);
      int32_t ks = (tile > j0 ? tile : j0) - tile, ke = (tile_end < pos + 1 ? tile_end : pos + 1) - tile;
      if (ks >= ke) continue;
      if (at.n_rows && (ks != at.j0 || ke != at.j1)) {
        kern->attn_tile(&at);
        at.n_rows = 0;
      }
      at.j0 = ks, at.j1 = ke;
      for (int32_t g = 0; g < group; g++) {
        if (at.n_rows == ATTN_ROWS) {
          kern->attn_tile(&at);
          at.n_rows = 0;
        }
        rows[at.n_rows++] = (int64_t)t * p->n_head + (int64_t)td->kvh * group + g;
      }
    }
    if (at.n_rows) kern->attn_tile(&at);
  }
  for (int32_t t = td->q0; t < td->q1; t++)
    for (int32_t g = 0; g < group; g++) {
      int64_t row = (int64_t)t * p->n_head + (int64_t)td->kvh * group + g;
      float inv = (float)(1.0 / a->row_sum[row]);
      if (p->sinks) { /* the head's sink logit joins the denominator only */
        float sink = ((const float *)p->sinks->data)[td->kvh * group + g], m = a->row_max[row];
        float mx = sink > m ? sink : m, corr = expf(m - mx);
        inv = (float)(corr / (a->row_sum[row] * corr + expf(sink - mx)));
      }
      float *o = a->out + row * hd;
      for (int32_t d = 0; d < hd; d++) o[d] *= inv;
    }
}

/* Grow-only per-backend scratch (no allocation once the largest step has run). */
static void *scratch(cpu_backend *c, size_t bytes) {
  if (bytes > c->scratch_bytes) {
    void *p = realloc(c->scratch, bytes);
    if (!p) return NULL;
    c->scratch = p;
    c->scratch_bytes = bytes;
  }
  return c->scratch;
}

int cpu_attention(qv_backend *be, qv_tensor *out, const qv_tensor *q, const qv_attn_params *p) {
  cpu_backend *c = (cpu_backend *)be;
  const qv_batch *b = &c->b;
  if (check_f32(be, "attention", out) || check_f32(be, "attention", q)) return QV_EINVAL;
  if (p->n_head <= 0 || p->n_kv_head <= 0 || p->n_head % p->n_kv_head || p->head_dim != c->kv.head_dim ||
      p->n_kv_head != c->kv.n_kv_head || p->layer < 0 || p->layer >= c->kv.n_layer || q->rows != b->n_tokens ||
      q->cols != (int64_t)p->n_head * p->head_dim || out->rows != q->rows || out->cols != q->cols ||
      out->data == q->data ||
      (p->sinks && (check_f32(be, "attention", p->sinks) || p->sinks->rows * p->sinks->cols != p->n_head)))
    return qv_error_set(&be->last_error, QV_EINVAL, "cpu attention: shape mismatch");
  if (p->head_dim > CPU_ATTN_MAX_HD)
    return qv_error_set(&be->last_error, QV_ELIMIT, "cpu attention: head_dim %d above the CPU limit %d", p->head_dim,
                        CPU_ATTN_MAX_HD);
  size_t n_rows = (size_t)b->n_tokens * (size_t)p->n_head, n_tasks = 0;
  for (int32_t s = 0; s < b->n_seqs; s++)
    n_tasks += (size_t)((b->seq_q_start[s + 1] - b->seq_q_start[s] + ATTN_QB - 1) / ATTN_QB) * (size_t)p->n_kv_head;
  char *mem = scratch(c, n_rows * (sizeof(double) + sizeof(float)) + n_tasks * sizeof(attn_task_desc));
  if (!mem) return qv_error_set(&be->last_error, QV_ENOMEM, "cpu attention: out of memory");
  attn_ctx a = {.c = c, .out = out->data, .q = q->data, .kc = cpu_kv_layer(c, p->layer, 0),
                .vc = cpu_kv_layer(c, p->layer, 1), .p = p};
  a.row_sum = (double *)mem;
  a.row_max = (float *)(mem + n_rows * sizeof(double));
  attn_task_desc *tasks = (attn_task_desc *)(mem + n_rows * (sizeof(double) + sizeof(float)));
  a.tasks = tasks;
  a.n_tasks = (int)n_tasks;
  int64_t flops = 0;
  size_t n = 0;
  for (int32_t s = 0; s < b->n_seqs; s++) {
    for (int32_t q0 = b->seq_q_start[s]; q0 < b->seq_q_start[s + 1]; q0 += ATTN_QB) {
      int32_t q1 = q0 + ATTN_QB < b->seq_q_start[s + 1] ? q0 + ATTN_QB : b->seq_q_start[s + 1];
      for (int32_t h = 0; h < p->n_kv_head; h++) tasks[n++] = (attn_task_desc){s, q0, q1, h};
      flops += (int64_t)(q1 - q0) * b->seq_ctx_len[s] * p->n_head * p->head_dim * 4;
    }
  }
  run(c, flops, (int)n_tasks, attn_task, &a);
  return 0;
}

/* ---- elementwise and gathers ---- */

static void silu_mul_task(void *arg, int task) {
  const ew_ctx *c = arg;
  int64_t i0 = (int64_t)task * c->per, i1 = i0 + c->per < c->n ? i0 + c->per : c->n;
  if (i1 > i0) c->kern->silu_mul(c->o + i0, c->a + i0, c->b + i0, i1 - i0);
}

int cpu_silu_mul(qv_backend *be, qv_tensor *out, const qv_tensor *gate, const qv_tensor *up) {
  cpu_backend *cb = (cpu_backend *)be;
  if (check_f32(be, "silu_mul", out) || check_f32(be, "silu_mul", gate) || check_f32(be, "silu_mul", up)) return QV_EINVAL;
  if (gate->rows != up->rows || gate->cols != up->cols || out->rows != gate->rows || out->cols != gate->cols)
    return qv_error_set(&be->last_error, QV_EINVAL, "cpu silu_mul: shape mismatch");
  ew_ctx c = {.kern = cb->kern, .o = out->data, .a = gate->data, .b = up->data, .n = gate->rows * gate->cols};
  int n_tasks = ew_split(cb, &c, c.n, 4096);
  run(cb, c.n * 4, n_tasks, silu_mul_task, &c);
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
