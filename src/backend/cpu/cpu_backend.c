/* CPU backend: memory is host memory; activations are F32; matmul weights and embedding tables
 * stay in their file dtype (F32, BF16, F16), used in place from the mapped file when aligned
 * (weight_view) or copied unchanged; the KV cache is one allocation. See cpu.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/cpu/cpu.h"
#include "core/log.h"
#include "backend/cpu/cpu_quant.h"

static void cpu_destroy(qv_backend *be) {
  cpu_backend *c = (cpu_backend *)be;
  tp_destroy(c->pool);
  cpu_quant_free(c);
  free(c->kv_mem);
  free(c->b_mem);
  free(c->scratch);
  free(c->xb);
  free(c);
}

static int cpu_alloc(qv_backend *be, qv_dtype dtype, int64_t rows, int64_t cols, qv_tensor *out) {
  size_t rb = qv_dtype_row_bytes(dtype, cols); /* whole blocks for the quantized dtypes */
  if ((!rb && cols) || rows < 0 || cols < 0 || (cols && (uint64_t)rows > ((uint64_t)1 << 40) / (uint64_t)cols))
    return qv_error_set(&be->last_error, QV_EINVAL, "cpu alloc: bad shape [%lld][%lld] for %s", (long long)rows,
                        (long long)cols, qv_dtype_name(dtype));
  size_t bytes = (size_t)rows * rb;
  void *p = malloc(bytes ? bytes : 1);
  if (!p) return qv_error_set(&be->last_error, QV_ENOMEM, "cpu alloc: out of memory (%zu bytes)", bytes);
  *out = (qv_tensor){.data = p, .dtype = dtype, .rows = rows, .cols = cols};
  return 0;
}

static void cpu_free(qv_backend *be, qv_tensor *t) {
  if (!t) return;
  if (!(t->flags & QV_TENSOR_BORROWED)) free(t->data);
  t->data = NULL;
  t->flags = 0;
}

/* Weights in their file dtype, in place: the matmul and embed kernels read F32, BF16 and F16
 * directly (unaligned SIMD loads), so only the element alignment C itself needs is checked. */
static int cpu_weight_view(qv_backend *be, const void *data, qv_dtype dtype, int64_t rows, int64_t cols,
                           qv_tensor *out) {
  size_t es = qv_dtype_size(dtype);
  if ((dtype != QV_DTYPE_F32 && dtype != QV_DTYPE_BF16 && dtype != QV_DTYPE_F16) || !data ||
      (uintptr_t)data % es || rows < 0 || cols < 0)
    return QV_EUNSUPPORTED;
  *out = (qv_tensor){.data = (void *)(uintptr_t)data, .dtype = dtype, .rows = rows, .cols = cols,
                     .flags = QV_TENSOR_BORROWED};
  return 0;
}

static int cpu_mem_info(qv_backend *be, size_t *free_bytes, size_t *total_bytes) {
  long pages = sysconf(_SC_PHYS_PAGES), avail = sysconf(_SC_AVPHYS_PAGES), ps = sysconf(_SC_PAGESIZE);
  *total_bytes = pages > 0 && ps > 0 ? (size_t)pages * (size_t)ps : 0;
  *free_bytes = avail > 0 && ps > 0 ? (size_t)avail * (size_t)ps : 0;
  return 0;
}

static int cpu_upload(qv_backend *be, qv_tensor *dst, const void *src, qv_dtype src_dtype) {
  size_t n = (size_t)dst->rows * (size_t)dst->cols;
  if (dst->dtype == QV_DTYPE_F32 && src_dtype != QV_DTYPE_I32) {
    qv_convert_to_f32(dst->data, src, src_dtype, n);
    return 0;
  }
  if (dst->dtype == src_dtype) {
    memcpy(dst->data, src, (size_t)dst->rows * qv_dtype_row_bytes(src_dtype, dst->cols));
    return 0;
  }
  return qv_error_set(&be->last_error, QV_EUNSUPPORTED, "cpu upload: %s -> %s", qv_dtype_name(src_dtype),
                      qv_dtype_name(dst->dtype));
}

static int cpu_download_f32(qv_backend *be, const qv_tensor *src, float *dst) {
  if (src->dtype == QV_DTYPE_I32)
    return qv_error_set(&be->last_error, QV_EUNSUPPORTED, "cpu download: %s", qv_dtype_name(src->dtype));
  qv_convert_to_f32(dst, src->data, src->dtype, (size_t)src->rows * (size_t)src->cols);
  return 0;
}

static int cpu_kv_init(qv_backend *be, const qv_kv_desc *d) {
  cpu_backend *c = (cpu_backend *)be;
  if (c->kv_mem) return qv_error_set(&be->last_error, QV_ESTATE, "cpu kv_init: already initialised");
  if (d->n_layer <= 0 || d->n_blocks <= 0 || d->block_size <= 0 || d->n_kv_head <= 0 || d->head_dim <= 0)
    return qv_error_set(&be->last_error, QV_EINVAL, "cpu kv_init: bad geometry");
  size_t n = (size_t)d->n_layer * 2 * (size_t)d->n_blocks * (size_t)d->block_size * (size_t)d->n_kv_head *
             (size_t)d->head_dim;
  c->kv_mem = calloc(n, sizeof(float));
  if (!c->kv_mem)
    return qv_error_set(&be->last_error, QV_ENOMEM, "cpu kv_init: out of memory (%zu bytes)", n * sizeof(float));
  c->kv = *d;
  return 0;
}

static void cpu_kv_deinit(qv_backend *be) {
  cpu_backend *c = (cpu_backend *)be;
  free(c->kv_mem);
  c->kv_mem = NULL;
  memset(&c->kv, 0, sizeof c->kv);
}

/* Copies the batch arrays into one grow-only buffer and checks every index the ops will use,
 * so the ops themselves can trust it. */
static int cpu_set_batch(qv_backend *be, const qv_batch *b) {
  cpu_backend *c = (cpu_backend *)be;
  qv_error *err = &be->last_error;
  if (b->n_tokens <= 0 || b->n_seqs <= 0 || b->n_logits < 0 || b->max_blocks <= 0 || b->n_seqs > b->n_tokens)
    return qv_error_set(err, QV_EINVAL, "batch: bad counts");
  if (!c->kv_mem) return qv_error_set(err, QV_ESTATE, "batch: KV cache not initialised");
  size_t nt = (size_t)b->n_tokens, ns = (size_t)b->n_seqs;
  size_t need = 3 * nt + (ns + 1) + ns + ns * (size_t)b->max_blocks + (size_t)b->n_logits;
  if (need > c->b_cap) {
    int32_t *m = realloc(c->b_mem, need * sizeof *m);
    if (!m) return qv_error_set(err, QV_ENOMEM, "batch: out of memory");
    c->b_mem = m;
    c->b_cap = need;
  }
  int32_t *p = c->b_mem;
  qv_batch s = *b;
#define STAGE_(field, count)                                   \
  memcpy(p, b->field, (count) * sizeof(int32_t));              \
  s.field = p;                                                 \
  p += (count);
  STAGE_(token_ids, nt)
  STAGE_(positions, nt)
  STAGE_(slot_mapping, nt)
  STAGE_(seq_q_start, ns + 1)
  STAGE_(seq_ctx_len, ns)
  STAGE_(block_tables, ns * (size_t)b->max_blocks)
  STAGE_(logits_idx, (size_t)b->n_logits)
#undef STAGE_
  int64_t n_slots = (int64_t)c->kv.n_blocks * c->kv.block_size;
  if (s.seq_q_start[0] != 0 || s.seq_q_start[ns] != b->n_tokens) return qv_error_set(err, QV_EINVAL, "batch: bad seq_q_start");
  for (size_t i = 0; i < ns; i++) {
    int32_t q0 = s.seq_q_start[i], q1 = s.seq_q_start[i + 1], ctx = s.seq_ctx_len[i];
    if (q1 <= q0 || ctx < q1 - q0 || ctx > (int64_t)b->max_blocks * c->kv.block_size)
      return qv_error_set(err, QV_EINVAL, "batch: sequence %zu has bad bounds", i);
    for (int32_t j = 0; j < (ctx + c->kv.block_size - 1) / c->kv.block_size; j++) {
      int32_t blk = s.block_tables[i * (size_t)b->max_blocks + (size_t)j];
      if (blk < 0 || blk >= c->kv.n_blocks) return qv_error_set(err, QV_EINVAL, "batch: block id %d out of range", blk);
    }
    for (int32_t t = q0; t < q1; t++)
      if (s.positions[t] != ctx - (q1 - t)) return qv_error_set(err, QV_EINVAL, "batch: positions of sequence %zu", i);
  }
  for (size_t t = 0; t < nt; t++)
    if (s.slot_mapping[t] < 0 || s.slot_mapping[t] >= n_slots) return qv_error_set(err, QV_EINVAL, "batch: slot out of range");
  for (int32_t i = 0; i < b->n_logits; i++)
    if (s.logits_idx[i] < 0 || s.logits_idx[i] >= b->n_tokens) return qv_error_set(err, QV_EINVAL, "batch: logits_idx out of range");
  c->b = s;
  return 0;
}

static const qv_backend_ops cpu_ops = {
    .name = "cpu",
    .destroy = cpu_destroy,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .mem_info = cpu_mem_info,
    .weight_view = cpu_weight_view,
    .upload = cpu_upload,
    .download_f32 = cpu_download_f32,
    .weight_dtype = QV_DTYPE_F32,
    .act_dtype = QV_DTYPE_F32,
    .quant_weights = 1,
    .kv_init = cpu_kv_init,
    .kv_deinit = cpu_kv_deinit,
    .set_batch = cpu_set_batch,
    .embed = cpu_embed,
    .embed_shard = cpu_embed_shard,
    .rmsnorm = cpu_rmsnorm,
    .add_rmsnorm = cpu_add_rmsnorm,
    .matmul = cpu_matmul,
    .add = cpu_add,
    .rope = cpu_rope,
    .kv_write = cpu_kv_write,
    .attention = cpu_attention,
    .silu_mul = cpu_silu_mul,
    .gather_rows = cpu_gather_rows,
    .argmax = cpu_argmax,
    .scale = cpu_scale,
    .gated_act = cpu_gated_act,
    .moe_route = cpu_moe_route,
    .moe_matmul = cpu_moe_matmul,
    .moe_combine = cpu_moe_combine,
};

/* The bf16 dot-product mode (cpu_kern_bf16.h): asked for by the option or QUIVER_CPU_BF16_DOT=1,
 * granted where the build has the kernel, the CPU has avx512_bf16 and the chosen path is avx512
 * (a forced narrower path means the exact kernels of that path). Returns the log's words. */
static const char *bf16_dot_choose(cpu_backend *c, const qv_backend_opts *opts, qv_cpu_isa isa) {
  const char *env = getenv("QUIVER_CPU_BF16_DOT");
  int want = (opts && opts->cpu_bf16_dot) || (env && !strcmp(env, "1"));
  if (!want) return "exact (widened to f32)";
  const char *why = qv_cpu_bf16_dot_unusable(isa);
  if (!why && !cpu_bf16_available()) why = "no bf16 kernel in this build";
  if (why) {
    QV_LOGW("cpu backend: bf16 dot product asked for but %s (%s kernels); the exact path runs", why,
            qv_cpu_isa_name(isa));
    return "exact (widened to f32; bf16-dot unavailable)";
  }
  c->bf16_dot = 1;
  return "bf16-dot (avx512_bf16, activations rounded to bf16)";
}

int qv_backend_cpu_create(const qv_backend_opts *opts, qv_backend **out, qv_error *err) {
  cpu_backend *c = calloc(1, sizeof *c);
  if (!c) return qv_error_set(err, QV_ENOMEM, "out of memory");
  c->base.ops = &cpu_ops;
  qv_cpu_isa isa;
  int rc = qv_cpu_isa_select(&isa, err);
  if (rc || !(c->kern = cpu_kernels_for(isa))) {
    free(c);
    return rc ? rc : qv_error_set(err, QV_EUNSUPPORTED, "cpu backend: no %s kernels in this build", qv_cpu_isa_name(isa));
  }
  int n = opts ? opts->n_threads : 0;
  if (tp_create(n, &c->pool)) {
    free(c);
    return qv_error_set(err, QV_ENOMEM, "cpu backend: cannot start threads");
  }
  const char *bf16 = bf16_dot_choose(c, opts, isa);
  char desc[256];
  qv_cpu_features_describe(desc, sizeof desc);
  QV_LOGI("cpu backend: %d threads, %s kernels (%d lanes), bf16 weights: %s; cpu %s", tp_n_threads(c->pool),
          qv_cpu_isa_name(isa), c->kern->lanes, bf16, desc);
  *out = &c->base;
  return 0;
}
