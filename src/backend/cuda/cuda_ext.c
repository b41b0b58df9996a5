/* CUDA ops of the model families beyond Llama: shape and dtype checks, then the launchers of
 * kernels/moe.cu. bf16 activations and dense expert weights, F32 router logits, routing weights
 * and expert biases, I32 expert ids, U8 MXFP4 blocks and scales. */
#include "backend/cuda/cuda_internal.h"
#include "kernels/kernels.h"

#define EXT_BAD(be, ...) qv_error_set(&(be)->base.last_error, QV_EINVAL, __VA_ARGS__)

static int is_dt(const qv_tensor *t, qv_dtype dt) { return t && t->data && t->dtype == dt; }

int cuda_scale(qv_backend *b, qv_tensor *x, float s) {
  cuda_backend *be = (cuda_backend *)b;
  if (!is_dt(x, QV_DTYPE_BF16)) return EXT_BAD(be, "cuda scale: want a bf16 tensor");
  CUDA_CK(be, qv_cuda_scale(x->data, x->rows * x->cols, s, be->stream));
  return 0;
}

int cuda_gated_act(qv_backend *b, qv_tensor *out, const qv_tensor *gate, const qv_tensor *up, const qv_act *act) {
  cuda_backend *be = (cuda_backend *)b;
  if (!is_dt(out, QV_DTYPE_BF16) || !is_dt(gate, QV_DTYPE_BF16) || !is_dt(up, QV_DTYPE_BF16) ||
      out->rows * out->cols != gate->rows * gate->cols || up->rows * up->cols != gate->rows * gate->cols ||
      (int)act->kind < 0 || act->kind > QV_ACT_SWIGLU_OAI)
    return EXT_BAD(be, "cuda gated_act: want three bf16 tensors of equal size and a known activation");
  CUDA_CK(be, qv_cuda_gated_act(out->data, gate->data, up->data, out->rows * out->cols, (int)act->kind, act->alpha,
                                act->limit, be->stream));
  return 0;
}

int cuda_moe_route(qv_backend *b, const qv_tensor *logits, const qv_moe_route *r, qv_tensor *ids, qv_tensor *weights) {
  cuda_backend *be = (cuda_backend *)b;
  if (!is_dt(logits, QV_DTYPE_F32) || !is_dt(ids, QV_DTYPE_I32) || !is_dt(weights, QV_DTYPE_F32) || r->n_expert <= 0 ||
      r->n_expert > 4096 || r->k <= 0 || r->k > r->n_expert || r->k > 64 || logits->cols != r->n_expert ||
      ids->rows != logits->rows || ids->cols != r->k || weights->rows != logits->rows || weights->cols != r->k)
    return EXT_BAD(be, "cuda moe_route: want f32 logits [n][E], i32 ids and f32 weights [n][k], k <= 64");
  CUDA_CK(be, qv_cuda_moe_route(logits->data, (int32_t)logits->rows, r->n_expert, r->k, (int)r->kind, r->normalize,
                                ids->data, weights->data, be->stream));
  return 0;
}

int cuda_moe_matmul(qv_backend *b, qv_tensor *out, const qv_tensor *x, const qv_experts *w, const qv_tensor *ids) {
  cuda_backend *be = (cuda_backend *)b;
  int64_t n = ids ? ids->rows : 0, k = ids ? ids->cols : 0, E = w->n_expert, S = n * k;
  int bad = !is_dt(out, QV_DTYPE_BF16) || !is_dt(x, QV_DTYPE_BF16) || !is_dt(ids, QV_DTYPE_I32) || E <= 0 ||
            E > 4096 || k <= 0 || x->cols != w->cols || (x->rows != n && x->rows != S) || out->rows != S ||
            out->cols != w->rows;
  if (w->mxfp4)
    bad |= w->cols % 32 || !is_dt(&w->blocks, QV_DTYPE_U8) || !is_dt(&w->scales, QV_DTYPE_U8) ||
           w->blocks.rows != E * w->rows || w->blocks.cols != w->cols / 2 || w->scales.rows != E * w->rows ||
           w->scales.cols != w->cols / 32;
  else
    bad |= !is_dt(&w->w, QV_DTYPE_BF16) || w->w.rows != E * w->rows || w->w.cols != w->cols;
  if (w->bias.data) bad |= w->bias.dtype != QV_DTYPE_F32 || w->bias.rows * w->bias.cols != E * w->rows;
  if (bad) return EXT_BAD(be, "cuda moe_matmul: shape or dtype mismatch");
  size_t need = (size_t)(3 * E + 1 + S);
  if (need > be->moe_cap) { /* grow-only, like the argmax buffer */
    CUDA_CK(be, cudaStreamSynchronize(be->stream));
    cudaFree(be->moe_scratch);
    be->moe_scratch = NULL;
    be->moe_cap = 0;
    CUDA_CK(be, cudaMalloc((void **)&be->moe_scratch, need * sizeof(int32_t)));
    be->moe_cap = need;
  }
  /* Expert ids come from moe_route on the device; the kernels index with them unchecked, so the
   * route op is the only producer the model uses (ids are never uploaded from outside). */
  CUDA_CK(be, qv_cuda_moe_sort(ids->data, S, (int32_t)E, be->moe_scratch, be->stream));
  qv_cuda_moe_args a = {.out = out->data, .x = x->data, .per_slot = x->rows == S && k > 1, .k = (int32_t)k,
                        .w = w->mxfp4 ? NULL : w->w.data, .blocks = w->mxfp4 ? w->blocks.data : NULL,
                        .scales = w->mxfp4 ? w->scales.data : NULL, .bias = w->bias.data,
                        .scratch = be->moe_scratch, .n_expert = (int32_t)E, .rows = w->rows, .cols = w->cols};
  CUDA_CK(be, qv_cuda_moe_matmul(&a, be->stream));
  return 0;
}

int cuda_moe_combine(qv_backend *b, qv_tensor *out, const qv_tensor *y, const qv_tensor *weights) {
  cuda_backend *be = (cuda_backend *)b;
  if (!is_dt(out, QV_DTYPE_BF16) || !is_dt(y, QV_DTYPE_BF16) || !is_dt(weights, QV_DTYPE_F32) ||
      y->rows != weights->rows * weights->cols || out->rows != weights->rows || out->cols != y->cols)
    return EXT_BAD(be, "cuda moe_combine: want bf16 y [n*k][d], f32 weights [n][k], bf16 out [n][d]");
  CUDA_CK(be, qv_cuda_moe_combine(out->data, y->data, weights->data, weights->rows, (int32_t)weights->cols, y->cols,
                                  be->stream));
  return 0;
}
