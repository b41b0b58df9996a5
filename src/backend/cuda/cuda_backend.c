/* The CUDA backend (backend.h) on one NVIDIA GPU: bf16 weights and activations, fp32
 * accumulation, every op enqueued on one stream and checked (file:line in the log and in
 * last_error). Memory is allocated by lifetime: tensors (weights, activation buffers) when the
 * model asks, the KV pool and the split-K partials once in kv_init, the staging buffers and
 * plans grown only when a step is larger than any before, so the per-token path never calls
 * cudaMalloc. A step's metadata goes to the device in one H2D copy (set_batch); the attention
 * work items in one more, on the step's first attention call (they depend on the GQA group).
 * The math lives in kernels/ and cuda_gemm.c; this file validates shapes and dispatches. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_internal.h"
#include "backend/cuda/cuda_quant.h"
#include "core/log.h"
#include "kernels/kernels.h"

#define CONVERT_CHUNK ((size_t)1 << 22) /* elements converted per host pass in upload/download */
#define SPLIT_BUDGET_BYTES ((size_t)64 << 20)
#define SPLIT_MAX_SLOTS 512
#define SPLIT_MIN_KEYS 512

int cuda_fail(cuda_backend *be, const char *file, int line, const char *what, const char *msg) {
  const char *base = strrchr(file, '/');
  QV_LOGE("cuda: %s:%d: %s: %s", base ? base + 1 : file, line, what, msg);
  return qv_error_set(&be->base.last_error, QV_EDEVICE, "%s:%d: %s: %s", base ? base + 1 : file, line, what, msg);
}

#define BAD(be, ...) qv_error_set(&(be)->base.last_error, QV_EINVAL, __VA_ARGS__)
#define LAUNCH(be, call) CUDA_CK(be, call)

static cuda_backend *cb(qv_backend *b) { return (cuda_backend *)b; }

static int64_t numel(const qv_tensor *t) { return t->rows * t->cols; }

/* ---- memory ---------------------------------------------------------------------------- */

static int track(cuda_backend *be, void *p) {
  if (be->n_allocs == be->cap_allocs) {
    size_t cap = be->cap_allocs ? be->cap_allocs * 2 : 64;
    void **n = realloc(be->allocs, cap * sizeof *n);
    if (!n) return qv_error_set(&be->base.last_error, QV_ENOMEM, "cuda: out of host memory");
    be->allocs = n;
    be->cap_allocs = cap;
  }
  be->allocs[be->n_allocs++] = p;
  return 0;
}

static int cuda_alloc(qv_backend *b, qv_dtype dtype, int64_t rows, int64_t cols, qv_tensor *out) {
  cuda_backend *be = cb(b);
  memset(out, 0, sizeof *out);
  const size_t es = qv_dtype_block_bytes(dtype), rb = qv_dtype_row_bytes(dtype, cols); /* quant: whole blocks */
  if (!es || rows < 0 || cols < 0 || (cols && !rb))
    return BAD(be, "cuda alloc: bad dtype or shape [%lld][%lld]", (long long)rows, (long long)cols);
  if (cols && rows > (int64_t)(SIZE_MAX / 4 / es) / cols)
    return BAD(be, "cuda alloc: [%lld][%lld] overflows", (long long)rows, (long long)cols);
  out->dtype = dtype;
  out->rows = rows;
  out->cols = cols;
  const size_t bytes = (size_t)rows * rb;
  if (!bytes) return 0;
  CUDA_CK(be, cudaSetDevice(be->device));
  void *p = NULL;
  cudaError_t e = cudaMalloc(&p, bytes);
  if (e != cudaSuccess) {
    (void)cudaGetLastError(); /* clear the sticky-free allocation error */
    return qv_error_set(&be->base.last_error, QV_ENOMEM, "cuda: cannot allocate %zu bytes on device %d: %s",
                        bytes, be->device, cudaGetErrorString(e));
  }
  int rc = track(be, p);
  if (rc) {
    cudaFree(p);
    return rc;
  }
  out->data = p;
  return 0;
}

static void cuda_free_tensor(qv_backend *b, qv_tensor *t) {
  cuda_backend *be = cb(b);
  if (!t || !t->data) return;
  for (size_t i = 0; i < be->n_allocs; i++) {
    if (be->allocs[i] == t->data) {
      cudaSetDevice(be->device);
      cudaError_t e = cudaFree(t->data);
      if (e != cudaSuccess) QV_LOGE("cuda: cudaFree: %s", cudaGetErrorString(e));
      be->allocs[i] = be->allocs[--be->n_allocs];
      break;
    }
  }
  t->data = NULL;
}

static int cuda_mem_info(qv_backend *b, size_t *free_bytes, size_t *total_bytes) {
  cuda_backend *be = cb(b);
  CUDA_CK(be, cudaSetDevice(be->device));
  CUDA_CK(be, cudaMemGetInfo(free_bytes, total_bytes));
  return 0;
}

static int host_tmp(cuda_backend *be, size_t bytes) {
  if (bytes <= be->host_tmp_cap) return 0;
  void *p = realloc(be->host_tmp, bytes);
  if (!p) return qv_error_set(&be->base.last_error, QV_ENOMEM, "cuda: out of host memory (%zu bytes)", bytes);
  be->host_tmp = p;
  be->host_tmp_cap = bytes;
  return 0;
}

/* Converts n elements from src (src_t) to dst (dst_t) on the host. Both F32/F16/BF16. */
static void convert(void *dst, qv_dtype dst_t, const void *src, qv_dtype src_t, size_t n, float *f32_tmp) {
  float *f = dst_t == QV_DTYPE_F32 ? dst : f32_tmp;
  qv_convert_to_f32(f, src, src_t, n);
  uint16_t *h = dst;
  if (dst_t == QV_DTYPE_BF16)
    for (size_t i = 0; i < n; i++) h[i] = qv_f32_to_bf16(f[i]);
  else if (dst_t == QV_DTYPE_F16)
    for (size_t i = 0; i < n; i++) h[i] = qv_f32_to_f16(f[i]);
}

static int is_float(qv_dtype t) { return t == QV_DTYPE_F32 || t == QV_DTYPE_F16 || t == QV_DTYPE_BF16; }

static int cuda_upload(qv_backend *b, qv_tensor *dst, const void *src, qv_dtype src_dtype) {
  cuda_backend *be = cb(b);
  const size_t n = (size_t)numel(dst);
  if (!n) return 0;
  if (!src || !dst->data) return BAD(be, "cuda upload: NULL source or destination");
  const int same = src_dtype == dst->dtype;
  if (!same && !(is_float(src_dtype) && is_float(dst->dtype)))
    return qv_error_set(&be->base.last_error, QV_EUNSUPPORTED, "cuda upload: %s -> %s",
                        qv_dtype_name(src_dtype), qv_dtype_name(dst->dtype));
  CUDA_CK(be, cudaSetDevice(be->device));
  if (same && qv_dtype_is_quant(dst->dtype)) { /* raw blocks */
    CUDA_CK(be, cudaMemcpyAsync(dst->data, src, (size_t)dst->rows * qv_dtype_row_bytes(dst->dtype, dst->cols),
                                cudaMemcpyHostToDevice, be->stream));
    CUDA_CK(be, cudaStreamSynchronize(be->stream));
    return 0;
  }
  const size_t des = qv_dtype_size(dst->dtype);
  if (same) {
    CUDA_CK(be, cudaMemcpyAsync(dst->data, src, n * des, cudaMemcpyHostToDevice, be->stream));
    CUDA_CK(be, cudaStreamSynchronize(be->stream));
    return 0;
  }
  /* host_tmp: [CONVERT_CHUNK] converted elements, then [CONVERT_CHUNK] f32 staging. */
  int rc = host_tmp(be, CONVERT_CHUNK * (des + sizeof(float)));
  if (rc) return rc;
  const size_t ses = qv_dtype_size(src_dtype);
  for (size_t i = 0; i < n; i += CONVERT_CHUNK) {
    const size_t c = n - i < CONVERT_CHUNK ? n - i : CONVERT_CHUNK;
    char *conv = be->host_tmp;
    convert(conv, dst->dtype, (const char *)src + i * ses, src_dtype, c, (float *)(conv + CONVERT_CHUNK * des));
    CUDA_CK(be, cudaMemcpyAsync((char *)dst->data + i * des, conv, c * des, cudaMemcpyHostToDevice, be->stream));
    CUDA_CK(be, cudaStreamSynchronize(be->stream)); /* conv is reused by the next chunk */
  }
  return 0;
}

static int cuda_download_f32(qv_backend *b, const qv_tensor *src, float *dst) {
  cuda_backend *be = cb(b);
  const size_t n = (size_t)numel(src);
  if (!n) return 0;
  if (!dst || !src->data) return BAD(be, "cuda download: NULL source or destination");
  CUDA_CK(be, cudaSetDevice(be->device));
  if (src->dtype == QV_DTYPE_F32) {
    CUDA_CK(be, cudaMemcpyAsync(dst, src->data, n * sizeof(float), cudaMemcpyDeviceToHost, be->stream));
    CUDA_CK(be, cudaStreamSynchronize(be->stream));
    return 0;
  }
  const size_t ses = qv_dtype_size(src->dtype);
  int rc = host_tmp(be, CONVERT_CHUNK * ses);
  if (rc) return rc;
  for (size_t i = 0; i < n; i += CONVERT_CHUNK) {
    const size_t c = n - i < CONVERT_CHUNK ? n - i : CONVERT_CHUNK;
    CUDA_CK(be, cudaMemcpyAsync(be->host_tmp, (const char *)src->data + i * ses, c * ses, cudaMemcpyDeviceToHost, be->stream));
    CUDA_CK(be, cudaStreamSynchronize(be->stream));
    if (src->dtype == QV_DTYPE_I32) {
      const int32_t *v = be->host_tmp;
      for (size_t j = 0; j < c; j++) dst[i + j] = (float)v[j];
    } else {
      qv_convert_to_f32(dst + i, be->host_tmp, src->dtype, c);
    }
  }
  return 0;
}

/* ---- KV cache ------------------------------------------------------------------------- */

static void cuda_kv_deinit(qv_backend *b) {
  cuda_backend *be = cb(b);
  cudaSetDevice(be->device);
  cudaStreamSynchronize(be->stream);
  cudaFree(be->kv_mem);
  cudaFree(be->part_o);
  cudaFree(be->part_lse);
  be->kv_mem = NULL;
  be->part_o = be->part_lse = NULL;
  be->split_slots = 0;
  be->kv_ready = 0;
  be->attn_valid = 0;
  be->batch_ready = 0; /* a staged batch was validated against the old pool */
}

static int cuda_kv_init(qv_backend *b, const qv_kv_desc *d) {
  cuda_backend *be = cb(b);
  if (be->kv_ready) return qv_error_set(&be->base.last_error, QV_ESTATE, "cuda kv_init: KV cache already allocated");
  if (!d || d->n_layer <= 0 || d->n_blocks <= 0 || d->block_size <= 0 || d->n_kv_head <= 0 || d->head_dim <= 0 ||
      d->head_dim % 2)
    return BAD(be, "cuda kv_init: bad KV geometry");
  const int64_t slots = (int64_t)d->n_blocks * d->block_size;
  if (slots > INT32_MAX) return BAD(be, "cuda kv_init: %lld slots exceed the int32 slot ids", (long long)slots);
  const int64_t layer = slots * d->n_kv_head * d->head_dim;
  if (layer > (INT64_MAX / 4) / d->n_layer) return BAD(be, "cuda kv_init: KV size overflows");
  const size_t bytes = (size_t)layer * (size_t)d->n_layer * 2 * sizeof(uint16_t);
  CUDA_CK(be, cudaSetDevice(be->device));
  void *p = NULL;
  cudaError_t e = cudaMalloc(&p, bytes);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return qv_error_set(&be->base.last_error, QV_ENOMEM, "cuda kv_init: cannot allocate %zu bytes of KV cache: %s",
                        bytes, cudaGetErrorString(e));
  }
  be->kv_mem = p;
  be->kv = *d;
  be->kv_layer_elems = layer;
  /* Zeroed once so a slot never written reads as 0, not as NaN garbage. */
  CUDA_CK(be, cudaMemsetAsync(p, 0, bytes, be->stream));
  if (qv_cuda_attention_mma_supported(d->head_dim)) {
    const size_t per_slot = (size_t)d->n_kv_head * QV_ATTN_BLOCK_M * ((size_t)d->head_dim + 1) * sizeof(float);
    size_t n = SPLIT_BUDGET_BYTES / per_slot;
    if (n > SPLIT_MAX_SLOTS) n = SPLIT_MAX_SLOTS;
    if (n >= 2) {
      e = cudaMalloc((void **)&be->part_o, n * (size_t)d->n_kv_head * QV_ATTN_BLOCK_M * d->head_dim * sizeof(float));
      if (e == cudaSuccess) e = cudaMalloc((void **)&be->part_lse, n * (size_t)d->n_kv_head * QV_ATTN_BLOCK_M * sizeof(float));
      if (e != cudaSuccess) {
        (void)cudaGetLastError();
        QV_LOGW("cuda: no memory for split-K partials (%s); long decodes run unsplit", cudaGetErrorString(e));
        cudaFree(be->part_o);
        cudaFree(be->part_lse);
        be->part_o = be->part_lse = NULL;
        n = 0;
      }
      be->split_slots = (int32_t)n;
    }
  }
  CUDA_CK(be, cudaStreamSynchronize(be->stream));
  be->kv_ready = 1;
  be->batch_ready = 0; /* batches are checked against the pool: stage again */
  return 0;
}

static uint16_t *kv_k(cuda_backend *be, int32_t layer) { return be->kv_mem + (int64_t)layer * 2 * be->kv_layer_elems; }
static uint16_t *kv_v(cuda_backend *be, int32_t layer) { return kv_k(be, layer) + be->kv_layer_elems; }

/* ---- batch staging -------------------------------------------------------------------- */

/* Grows a pinned host buffer and its device twin to at least bytes (waiting for their users). */
static int grow_pair(cuda_backend *be, void **host, void **dev, size_t *cap, size_t bytes) {
  if (bytes <= *cap) return 0;
  size_t n = *cap ? *cap : 4096;
  while (n < bytes) n *= 2;
  CUDA_CK(be, cudaStreamSynchronize(be->stream));
  cudaFreeHost(*host);
  cudaFree(*dev);
  *host = *dev = NULL;
  *cap = 0;
  CUDA_CK(be, cudaMallocHost(host, n));
  CUDA_CK(be, cudaMalloc(dev, n));
  *cap = n;
  return 0;
}

static int cuda_set_batch(qv_backend *b, const qv_batch *batch) {
  cuda_backend *be = cb(b);
  be->batch_ready = 0;
  be->attn_valid = 0;
  int rc = cuda_plan_check_batch(batch, be->kv_ready ? &be->kv : NULL, &be->base.last_error);
  if (rc) return rc;
  CUDA_CK(be, cudaSetDevice(be->device));
  cuda_plan_stage_layout(batch, &be->lay);
  rc = grow_pair(be, &be->stage_host, &be->stage_dev, &be->stage_cap, be->lay.total_bytes);
  if (rc) return rc;
  CUDA_CK(be, cudaEventSynchronize(be->stage_done)); /* the previous step's copy has read it */
  cuda_plan_stage_fill(batch, &be->lay, be->stage_host);
  CUDA_CK(be, cudaMemcpyAsync(be->stage_dev, be->stage_host, be->lay.total_bytes, cudaMemcpyHostToDevice, be->stream));
  CUDA_CK(be, cudaEventRecord(be->stage_done, be->stream));
  be->n_tokens = batch->n_tokens;
  be->n_seqs = batch->n_seqs;
  be->n_logits = batch->n_logits;
  be->max_blocks = batch->max_blocks;
  be->batch_ready = 1;
  return 0;
}

static const int32_t *staged(cuda_backend *be, size_t off) {
  return (const int32_t *)((const char *)be->stage_dev + off);
}

static const int32_t *staged_host(cuda_backend *be, size_t off) {
  return (const int32_t *)((const char *)be->stage_host + off);
}

/* ---- ops ------------------------------------------------------------------------------ */

static int need_batch(cuda_backend *be, const char *op) {
  if (!be->batch_ready) return qv_error_set(&be->base.last_error, QV_ESTATE, "cuda %s: no batch staged (set_batch)", op);
  return 0;
}

static int is_bf16(const qv_tensor *t) { return t && t->dtype == QV_DTYPE_BF16; }

/* out = the rows of table (vocabulary rows [row0, row0 + table->rows)) of the staged ids, zeros
 * for ids outside them: the whole table (row0 0) or a tensor-parallel rank's shard. */
static int embed_rows(cuda_backend *be, qv_tensor *out, const qv_tensor *table, int64_t row0, const char *op) {
  int rc = need_batch(be, op);
  if (rc) return rc;
  if (!table || row0 < 0 || row0 > INT32_MAX || table->rows > INT32_MAX - row0)
    return BAD(be, "cuda %s: no table, or vocabulary rows from %lld out of range", op, (long long)row0);
  if (qv_dtype_is_quant(table->dtype))
    return cuda_quant_embed(be, out, table, (int32_t)row0, staged(be, be->lay.token_ids), be->n_tokens);
  if (!is_bf16(out) || !is_bf16(table) || out->rows != be->n_tokens || out->cols != table->cols ||
      table->cols > INT32_MAX)
    return BAD(be, "cuda %s: want bf16 out [%d][%lld] and table [vocab][%lld]", op, be->n_tokens,
               (long long)table->cols, (long long)table->cols);
  LAUNCH(be, qv_cuda_embed(out->data, table->data, staged(be, be->lay.token_ids), be->n_tokens, (int32_t)row0,
                           (int32_t)table->rows, (int32_t)table->cols, be->stream));
  return 0;
}

static int cuda_embed(qv_backend *b, qv_tensor *out, const qv_tensor *table) {
  return embed_rows(cb(b), out, table, 0, "embed");
}

static int cuda_embed_shard(qv_backend *b, qv_tensor *out, const qv_tensor *table, int64_t row0) {
  return embed_rows(cb(b), out, table, row0, "embed_shard");
}

static int norm_common(cuda_backend *be, qv_tensor *out, qv_tensor *x, const qv_tensor *delta, const qv_tensor *w,
                       float eps, const char *op) {
  if (!is_bf16(out) || !is_bf16(x) || !is_bf16(w) || (delta && !is_bf16(delta)))
    return BAD(be, "cuda %s: tensors must be bf16", op);
  if (numel(out) != numel(x) || numel(w) != x->cols || (delta && numel(delta) != numel(x)) || x->cols > INT32_MAX)
    return BAD(be, "cuda %s: shape mismatch (x [%lld][%lld], w %lld elements)", op, (long long)x->rows,
               (long long)x->cols, (long long)numel(w));
  LAUNCH(be, qv_cuda_rmsnorm(out->data, x->data, delta ? delta->data : NULL, w->data, x->rows, (int32_t)x->cols, eps,
                             be->stream));
  return 0;
}

static int cuda_rmsnorm(qv_backend *b, qv_tensor *out, const qv_tensor *x, const qv_tensor *w, float eps) {
  /* Without delta the kernel only reads x. */
  return norm_common(cb(b), out, (qv_tensor *)x, NULL, w, eps, "rmsnorm");
}

static int cuda_add_rmsnorm(qv_backend *b, qv_tensor *out, qv_tensor *x, const qv_tensor *delta, const qv_tensor *w,
                            float eps) {
  if (!delta) return BAD(cb(b), "cuda add_rmsnorm: delta is NULL");
  return norm_common(cb(b), out, x, delta, w, eps, "add_rmsnorm");
}

static int cuda_matmul(qv_backend *b, qv_tensor *out, const qv_tensor *x, const qv_tensor *w, const qv_tensor *bias) {
  cuda_backend *be = cb(b);
  if (w && qv_dtype_is_quant(w->dtype)) return cuda_quant_matmul(be, out, x, w, bias);
  if (!is_bf16(x) || !is_bf16(w) || !out || (out->dtype != QV_DTYPE_BF16 && out->dtype != QV_DTYPE_F32))
    return BAD(be, "cuda matmul: x and w must be bf16, out bf16 or f32");
  if (x->cols != w->cols || out->rows != x->rows || out->cols != w->rows)
    return BAD(be, "cuda matmul: out [%lld][%lld] != x [%lld][%lld] . w [%lld][%lld]^T", (long long)out->rows,
               (long long)out->cols, (long long)x->rows, (long long)x->cols, (long long)w->rows, (long long)w->cols);
  if (bias && (numel(bias) != w->rows || (bias->dtype != QV_DTYPE_BF16 && bias->dtype != QV_DTYPE_F32)))
    return BAD(be, "cuda matmul: bias must be [1][%lld] bf16 or f32", (long long)w->rows);
  if (x->rows == 0 || w->rows == 0) return 0;
  if (x->cols == 0) return BAD(be, "cuda matmul: empty inner dimension");
  int rc = cuda_gemm(be, out->data, out->dtype == QV_DTYPE_F32, x->data, w->data, x->rows, w->rows, x->cols);
  if (rc) return rc;
  if (bias)
    LAUNCH(be, qv_cuda_add_bias(out->data, out->dtype == QV_DTYPE_F32, bias->data, bias->dtype == QV_DTYPE_F32,
                                out->rows, out->cols, be->stream));
  return 0;
}

static int cuda_add(qv_backend *b, qv_tensor *x, const qv_tensor *y) {
  cuda_backend *be = cb(b);
  if (!is_bf16(x) || !is_bf16(y) || numel(x) != numel(y)) return BAD(be, "cuda add: want two bf16 tensors of equal size");
  LAUNCH(be, qv_cuda_add(x->data, y->data, numel(x), be->stream));
  return 0;
}

static int cuda_rope(qv_backend *b, qv_tensor *q, int32_t n_head, qv_tensor *k, int32_t n_kv_head, const qv_rope *r) {
  cuda_backend *be = cb(b);
  int rc = need_batch(be, "rope");
  if (rc) return rc;
  if (!k) n_kv_head = 0;
  if (!r || !r->inv_freq || r->inv_freq->dtype != QV_DTYPE_F32 || r->head_dim <= 0 || r->rot_dim <= 0 ||
      r->rot_dim % 2 || r->rot_dim > r->head_dim || numel(r->inv_freq) < r->rot_dim / 2)
    return BAD(be, "cuda rope: bad rope description (rot_dim, head_dim or f32 inv_freq)");
  if (!is_bf16(q) || n_head <= 0 || n_kv_head < 0 || numel(q) != (int64_t)be->n_tokens * n_head * r->head_dim ||
      (k && (!is_bf16(k) || numel(k) != (int64_t)be->n_tokens * n_kv_head * r->head_dim)))
    return BAD(be, "cuda rope: q/k must be bf16 [%d tokens][heads * %d]", be->n_tokens, r->head_dim);
  const qv_cuda_rope_args a = {.q = q->data, .k = k ? k->data : NULL, .positions = staged(be, be->lay.positions),
                               .inv_freq = r->inv_freq->data, .n_tok = be->n_tokens, .n_head = n_head,
                               .n_kv_head = n_kv_head, .head_dim = r->head_dim, .rot_dim = r->rot_dim,
                               .neox = r->neox, .attn_factor = r->attn_factor};
  LAUNCH(be, qv_cuda_rope(&a, be->stream));
  return 0;
}

static int need_kv(cuda_backend *be, int32_t layer, const char *op) {
  if (!be->kv_ready) return qv_error_set(&be->base.last_error, QV_ESTATE, "cuda %s: no KV cache (kv_init)", op);
  if (layer < 0 || layer >= be->kv.n_layer) return BAD(be, "cuda %s: layer %d outside 0..%d", op, layer, be->kv.n_layer - 1);
  return need_batch(be, op);
}

static int cuda_kv_write(qv_backend *b, int32_t layer, const qv_tensor *k, const qv_tensor *v) {
  cuda_backend *be = cb(b);
  int rc = need_kv(be, layer, "kv_write");
  if (rc) return rc;
  const int64_t row = (int64_t)be->kv.n_kv_head * be->kv.head_dim;
  if (!is_bf16(k) || !is_bf16(v) || numel(k) != be->n_tokens * row || numel(v) != numel(k))
    return BAD(be, "cuda kv_write: k and v must be bf16 [%d][%lld]", be->n_tokens, (long long)row);
  LAUNCH(be, qv_cuda_kv_write(kv_k(be, layer), kv_v(be, layer), k->data, v->data, staged(be, be->lay.slot_mapping),
                              be->n_tokens, (int64_t)be->kv.n_blocks * be->kv.block_size, (int32_t)row, be->stream));
  return 0;
}

/* Plans the step's attention work items for this GQA group and window, once per step. */
static int attn_plan(cuda_backend *be, int32_t group, int32_t window) {
  if (be->attn_valid && be->attn_group == group && be->attn_window == window) return 0;
  cuda_attn_plan_in in = {.n_seqs = be->n_seqs, .seq_q_start = staged_host(be, be->lay.seq_q_start),
                          .seq_ctx_len = staged_host(be, be->lay.seq_ctx_len), .group = group,
                          .n_kv_head = be->kv.n_kv_head, .window = window, .n_sm = be->n_sm,
                          .split_slots = be->split_slots, .min_split_keys = SPLIT_MIN_KEYS};
  const int64_t tiles = cuda_plan_attn_tiles(&in);
  const int64_t cap_work = tiles + be->split_slots, cap_reduce = tiles > 0 ? tiles : 1;
  if (cap_work > INT32_MAX / 2) return BAD(be, "cuda attention: batch too large (%lld tiles)", (long long)tiles);
  const size_t reduce_off = ((size_t)cap_work * sizeof(qv_cuda_attn_work) + 15) & ~(size_t)15;
  const size_t bytes = reduce_off + (size_t)cap_reduce * sizeof(qv_cuda_attn_reduce);
  int rc = grow_pair(be, &be->plan_host, &be->plan_dev, &be->plan_cap, bytes);
  if (rc) return rc;
  CUDA_CK(be, cudaEventSynchronize(be->plan_done));
  cuda_attn_plan p = {.work = be->plan_host, .reduce = (qv_cuda_attn_reduce *)((char *)be->plan_host + reduce_off),
                      .cap_work = (int32_t)cap_work, .cap_reduce = (int32_t)cap_reduce};
  rc = cuda_plan_attn(&in, &p);
  if (rc) return qv_error_set(&be->base.last_error, rc, "cuda attention: planning failed (%s)", qv_strerror(rc));
  CUDA_CK(be, cudaMemcpyAsync(be->plan_dev, be->plan_host, bytes, cudaMemcpyHostToDevice, be->stream));
  CUDA_CK(be, cudaEventRecord(be->plan_done, be->stream));
  be->attn_valid = 1;
  be->attn_group = group;
  be->attn_window = window;
  be->attn_n_work = p.n_work;
  be->attn_n_reduce = p.n_reduce;
  be->attn_n_split_items = p.n_slots_used;
  be->attn_reduce_off = reduce_off;
  return 0;
}

static int cuda_attention(qv_backend *b, qv_tensor *out, const qv_tensor *q, const qv_attn_params *p) {
  cuda_backend *be = cb(b);
  if (!p) return BAD(be, "cuda attention: no parameters");
  if (p->sinks && (p->sinks->dtype != QV_DTYPE_F32 || !p->sinks->data || numel(p->sinks) != p->n_head))
    return BAD(be, "cuda attention: sinks must be f32 [n_head]");
  int rc = need_kv(be, p->layer, "attention");
  if (rc) return rc;
  if (p->n_head <= 0 || p->n_kv_head != be->kv.n_kv_head || p->head_dim != be->kv.head_dim ||
      p->n_head % p->n_kv_head || p->sliding_window < 0 || !(p->softcap >= 0.0f))
    return BAD(be, "cuda attention: heads %d/%d, head_dim %d do not match the KV cache (%d kv heads, head_dim %d)",
               p->n_head, p->n_kv_head, p->head_dim, be->kv.n_kv_head, be->kv.head_dim);
  const int64_t n = (int64_t)be->n_tokens * p->n_head * p->head_dim;
  if (!is_bf16(q) || !is_bf16(out) || numel(q) != n || numel(out) != n)
    return BAD(be, "cuda attention: q and out must be bf16 [%d][%d]", be->n_tokens, p->n_head * p->head_dim);
  if (be->n_tokens == 0) return 0;
  qv_cuda_attn_args a = {.q = q->data, .out = out->data, .k_cache = kv_k(be, p->layer), .v_cache = kv_v(be, p->layer),
                         .seq_q_start = staged(be, be->lay.seq_q_start), .seq_ctx_len = staged(be, be->lay.seq_ctx_len),
                         .block_tables = staged(be, be->lay.block_tables), .n_tok = be->n_tokens, .n_seqs = be->n_seqs,
                         .max_blocks = be->max_blocks, .block_size = be->kv.block_size, .n_head = p->n_head,
                         .n_kv_head = p->n_kv_head, .head_dim = p->head_dim, .scale = p->scale, .softcap = p->softcap,
                         .window = p->sliding_window, .part_o = be->part_o, .part_lse = be->part_lse,
                         .sinks = p->sinks ? p->sinks->data : NULL};
  const int aligned = cuda_plan_ptr_align(q->data) >= 16 && cuda_plan_ptr_align(out->data) >= 16;
  /* Sinks (gpt-oss) run on the generic kernel, which folds them into its softmax. */
  if (qv_cuda_attention_mma_supported(p->head_dim) && aligned && !p->sinks) {
    rc = attn_plan(be, p->n_head / p->n_kv_head, p->sliding_window);
    if (rc) return rc;
    a.work = be->plan_dev;
    a.n_work = be->attn_n_work;
    a.reduce = (const qv_cuda_attn_reduce *)((const char *)be->plan_dev + be->attn_reduce_off);
    a.n_reduce = be->attn_n_reduce;
    LAUNCH(be, qv_cuda_attention_mma(&a, be->stream));
    return 0;
  }
  if (p->head_dim > 256)
    return qv_error_set(&be->base.last_error, QV_EUNSUPPORTED, "cuda attention: head_dim %d > 256", p->head_dim);
  LAUNCH(be, qv_cuda_attention_generic(&a, be->stream));
  return 0;
}

static int cuda_silu_mul(qv_backend *b, qv_tensor *out, const qv_tensor *gate, const qv_tensor *up) {
  cuda_backend *be = cb(b);
  if (!is_bf16(out) || !is_bf16(gate) || !is_bf16(up) || numel(out) != numel(gate) || numel(up) != numel(gate))
    return BAD(be, "cuda silu_mul: want three bf16 tensors of equal size");
  LAUNCH(be, qv_cuda_silu_mul(out->data, gate->data, up->data, numel(out), be->stream));
  return 0;
}

static int cuda_gather_rows(qv_backend *b, qv_tensor *out, const qv_tensor *x) {
  cuda_backend *be = cb(b);
  int rc = need_batch(be, "gather_rows");
  if (rc) return rc;
  if (!out || !x || out->dtype != x->dtype || (x->dtype != QV_DTYPE_BF16 && x->dtype != QV_DTYPE_F32) ||
      out->rows != be->n_logits || out->cols != x->cols)
    return BAD(be, "cuda gather_rows: want out [%d][x.cols] of x's dtype (bf16 or f32)", be->n_logits);
  LAUNCH(be, qv_cuda_gather_rows(out->data, x->data, staged(be, be->lay.logits_idx), be->n_logits, x->rows, x->cols,
                                 (int32_t)qv_dtype_size(x->dtype), be->stream));
  return 0;
}

static int cuda_argmax(qv_backend *b, const qv_tensor *logits, int32_t *ids) {
  cuda_backend *be = cb(b);
  if (!logits || !ids || (logits->dtype != QV_DTYPE_BF16 && logits->dtype != QV_DTYPE_F32) || logits->cols <= 0)
    return BAD(be, "cuda argmax: want bf16 or f32 logits with columns and an ids array");
  if (logits->rows == 0) return 0;
  if ((size_t)logits->rows > be->ids_cap) {
    CUDA_CK(be, cudaStreamSynchronize(be->stream));
    cudaFree(be->d_ids);
    be->d_ids = NULL;
    be->ids_cap = 0;
    CUDA_CK(be, cudaMalloc((void **)&be->d_ids, (size_t)logits->rows * sizeof(int32_t)));
    be->ids_cap = (size_t)logits->rows;
  }
  LAUNCH(be, qv_cuda_argmax(be->d_ids, logits->data, logits->dtype == QV_DTYPE_F32, logits->rows, logits->cols, be->stream));
  CUDA_CK(be, cudaMemcpyAsync(ids, be->d_ids, (size_t)logits->rows * sizeof(int32_t), cudaMemcpyDeviceToHost, be->stream));
  CUDA_CK(be, cudaStreamSynchronize(be->stream));
  return 0;
}

/* ---- lifecycle ------------------------------------------------------------------------ */

static void cuda_destroy(qv_backend *b) {
  cuda_backend *be = cb(b);
  if (!be) return;
  cudaSetDevice(be->device);
  if (be->stream) cudaStreamSynchronize(be->stream);
  cuda_kv_deinit(b);
  cuda_gemm_cache_clear(be);
  for (size_t i = 0; i < be->n_allocs; i++) cudaFree(be->allocs[i]);
  free(be->allocs);
  cudaFreeHost(be->stage_host);
  cudaFree(be->stage_dev);
  cudaFreeHost(be->plan_host);
  cudaFree(be->plan_dev);
  cudaFree(be->d_ids);
  cudaFree(be->moe_scratch);
  cudaFree(be->gemm_ws);
  cudaFree(be->qscratch);
  free(be->host_tmp);
  if (be->stage_done) cudaEventDestroy(be->stage_done);
  if (be->plan_done) cudaEventDestroy(be->plan_done);
  if (be->lt) cublasLtDestroy(be->lt);
  if (be->stream) cudaStreamDestroy(be->stream);
  free(be);
}

static const qv_backend_ops cuda_ops = {
    .name = "cuda",
    .destroy = cuda_destroy,
    .alloc = cuda_alloc,
    .free = cuda_free_tensor,
    .mem_info = cuda_mem_info,
    .upload = cuda_upload,
    .download_f32 = cuda_download_f32,
    .weight_dtype = QV_DTYPE_BF16,
    .act_dtype = QV_DTYPE_BF16,
    .quant_weights = 1,
    .kv_init = cuda_kv_init,
    .kv_deinit = cuda_kv_deinit,
    .set_batch = cuda_set_batch,
    .embed = cuda_embed,
    .embed_shard = cuda_embed_shard,
    .rmsnorm = cuda_rmsnorm,
    .add_rmsnorm = cuda_add_rmsnorm,
    .matmul = cuda_matmul,
    .add = cuda_add,
    .rope = cuda_rope,
    .kv_write = cuda_kv_write,
    .attention = cuda_attention,
    .silu_mul = cuda_silu_mul,
    .gather_rows = cuda_gather_rows,
    .argmax = cuda_argmax,
    .scale = cuda_scale,
    .gated_act = cuda_gated_act,
    .moe_route = cuda_moe_route,
    .moe_matmul = cuda_moe_matmul,
    .moe_combine = cuda_moe_combine,
};

/* Creates the device-side resources of be (zeroed, ops set); on failure the caller destroys it. */
static int setup(cuda_backend *be) {
  CUDA_CK(be, cudaSetDevice(be->device));
  struct cudaDeviceProp prop;
  CUDA_CK(be, cudaGetDeviceProperties(&prop, be->device));
  snprintf(be->dev_name, sizeof be->dev_name, "%s", prop.name);
  be->n_sm = prop.multiProcessorCount;
  if (prop.major < 9)
    return qv_error_set(&be->base.last_error, QV_EUNSUPPORTED,
                        "cuda: %s is compute capability %d.%d; quiver's kernels are built for 9.0 and newer",
                        prop.name, prop.major, prop.minor);
  CUDA_CK(be, cudaStreamCreateWithFlags(&be->stream, cudaStreamNonBlocking));
  CUDA_CK(be, cudaEventCreateWithFlags(&be->stage_done, cudaEventDisableTiming));
  CUDA_CK(be, cudaEventCreateWithFlags(&be->plan_done, cudaEventDisableTiming));
  CUBLAS_CK(be, cublasLtCreate(&be->lt));
  CUDA_CK(be, cudaMalloc(&be->gemm_ws, CUDA_GEMM_WS_BYTES));
  CUDA_CK(be, qv_cuda_attention_init());
  return 0;
}

int qv_backend_cuda_create(const qv_backend_opts *opts, qv_backend **out, qv_error *err) {
  *out = NULL;
  int n_dev = 0;
  cudaError_t e = cudaGetDeviceCount(&n_dev);
  if (e != cudaSuccess || n_dev == 0) {
    (void)cudaGetLastError();
    return qv_error_set(err, QV_EUNSUPPORTED, "no CUDA GPU available (%s)",
                        e != cudaSuccess ? cudaGetErrorString(e) : "no device");
  }
  const int dev = opts ? opts->device : 0;
  if (dev < 0 || dev >= n_dev)
    return qv_error_set(err, QV_EINVAL, "CUDA device %d does not exist (%d device%s)", dev, n_dev, n_dev == 1 ? "" : "s");
  cuda_backend *be = calloc(1, sizeof *be);
  if (!be) return qv_error_set(err, QV_ENOMEM, "cuda: out of host memory");
  be->base.ops = &cuda_ops;
  be->device = dev;
  int rc = setup(be);
  if (rc) {
    qv_error_set(err, rc, "%s", be->base.last_error.msg);
    cuda_destroy(&be->base);
    return rc;
  }
  QV_LOGI("cuda: device %d: %s, %d SMs", dev, be->dev_name, be->n_sm);
  *out = &be->base;
  return 0;
}

cudaStream_t qv_cuda_backend_stream(qv_backend *b) { return cb(b)->stream; }

int qv_cuda_backend_sync(qv_backend *b) {
  cuda_backend *be = cb(b);
  CUDA_CK(be, cudaStreamSynchronize(be->stream));
  return 0;
}

const char *qv_cuda_backend_device_name(qv_backend *b) { return cb(b)->dev_name; }
int qv_cuda_backend_n_sm(qv_backend *b) { return cb(b)->n_sm; }
int64_t qv_cuda_backend_gemm_plans_made(qv_backend *b) { return cb(b)->gemm_plans_made; }
int32_t qv_cuda_backend_attn_splits(qv_backend *b) { return cb(b)->attn_valid ? cb(b)->attn_n_split_items : 0; }
