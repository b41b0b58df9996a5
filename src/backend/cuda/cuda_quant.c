/* Quantized weights on the CUDA backend: matmul and embedding over QV_DTYPE_Q* weight tensors
 * (raw ggml blocks in device memory, as the file has them). Decode-sized batches (up to
 * QV_CUDA_QGEMV_MAX_N rows) run the dequantizing GEMV, which reads each weight byte once; larger
 * batches dequantize the weight into a grow-only bf16 scratch and run the cuBLASLt GEMM on
 * tensor cores. Untested on hardware so far (no GPU where it was written): tests/gpu/test_cuda_quant.c
 * checks both paths against the CPU reference on random blocks of every type. */
#include "backend/cuda/cuda_quant.h"

#include "kernels/kernels.h"

#define BAD(be, ...) qv_error_set(&(be)->base.last_error, QV_EINVAL, __VA_ARGS__)

int cuda_quant_matmul(cuda_backend *be, qv_tensor *out, const qv_tensor *x, const qv_tensor *w, const qv_tensor *bias) {
  if (!x || x->dtype != QV_DTYPE_BF16 || !out || (out->dtype != QV_DTYPE_BF16 && out->dtype != QV_DTYPE_F32) ||
      x->cols != w->cols || out->rows != x->rows || out->cols != w->rows || !qv_dtype_row_bytes(w->dtype, w->cols))
    return BAD(be, "cuda quant matmul: x bf16 [%lld][%lld], %s w [%lld][%lld], out [%lld][%lld]",
               (long long)(x ? x->rows : 0), (long long)(x ? x->cols : 0), qv_dtype_name(w->dtype), (long long)w->rows,
               (long long)w->cols, (long long)(out ? out->rows : 0), (long long)(out ? out->cols : 0));
  if (bias && (bias->rows * bias->cols != w->rows || (bias->dtype != QV_DTYPE_BF16 && bias->dtype != QV_DTYPE_F32)))
    return BAD(be, "cuda quant matmul: bias must be [1][%lld] bf16 or f32", (long long)w->rows);
  if (x->rows == 0 || w->rows == 0) return 0;
  const int64_t rb = (int64_t)qv_dtype_row_bytes(w->dtype, w->cols);
  CUDA_CK(be, cudaSetDevice(be->device));
  if (x->rows <= QV_CUDA_QGEMV_MAX_N) {
    qv_cuda_qmm_args a = {.out = out->data, .out_f32 = out->dtype == QV_DTYPE_F32, .x = x->data, .w = w->data,
                          .qtype = (int32_t)w->dtype, .n = (int32_t)x->rows, .m = w->rows, .k = w->cols,
                          .row_bytes = rb, .bias = bias ? bias->data : NULL,
                          .bias_f32 = bias && bias->dtype == QV_DTYPE_F32};
    CUDA_CK(be, qv_cuda_quant_gemv(&a, be->stream));
    return 0;
  }
  const size_t need = (size_t)w->rows * (size_t)w->cols * sizeof(uint16_t);
  if (need > be->qscratch_cap) {
    /* Grow-only: the previous GEMM reading the old scratch was issued on the same stream. */
    CUDA_CK(be, cudaStreamSynchronize(be->stream));
    cudaFree(be->qscratch);
    be->qscratch = NULL;
    be->qscratch_cap = 0;
    CUDA_CK(be, cudaMalloc((void **)&be->qscratch, need));
    be->qscratch_cap = need;
  }
  CUDA_CK(be, qv_cuda_quant_dequant_bf16(be->qscratch, w->data, (int32_t)w->dtype, w->rows, w->cols, rb, be->stream));
  int rc = cuda_gemm(be, out->data, out->dtype == QV_DTYPE_F32, x->data, be->qscratch, x->rows, w->rows, x->cols);
  if (rc) return rc;
  if (bias)
    CUDA_CK(be, qv_cuda_add_bias(out->data, out->dtype == QV_DTYPE_F32, bias->data, bias->dtype == QV_DTYPE_F32,
                                 out->rows, out->cols, be->stream));
  return 0;
}

int cuda_quant_embed(cuda_backend *be, qv_tensor *out, const qv_tensor *table, int32_t row0, const int32_t *ids,
                     int32_t n_tok) {
  if (!out || out->dtype != QV_DTYPE_BF16 || out->rows != n_tok || out->cols != table->cols ||
      table->rows > INT32_MAX || table->cols > INT32_MAX || !qv_dtype_row_bytes(table->dtype, table->cols))
    return BAD(be, "cuda quant embed: want bf16 out [%d][%lld]", n_tok, (long long)table->cols);
  CUDA_CK(be, qv_cuda_quant_embed(out->data, table->data, (int32_t)table->dtype, ids, n_tok, row0, (int32_t)table->rows,
                                  (int32_t)table->cols, (int64_t)qv_dtype_row_bytes(table->dtype, table->cols),
                                  be->stream));
  return 0;
}
