/* GEMMs of the CUDA backend through cuBLASLt: bf16 inputs, fp32 accumulation (compute type
 * 32F), bf16 or f32 output. The row-major product out[n][m] = x[n][k] . w[m][k]^T is the
 * column-major out^T (m x n) = op_T(w) (m x k) * x (k x n), the "TN" layout cuBLASLt serves
 * best. One plan (descriptors + heuristic algorithm) per exact shape and pointer alignment is
 * cached in an open-addressed table (plan.c chooses slots), so the heuristic runs once per
 * shape; a full probe window evicts. */
#include "backend/cuda/cuda_internal.h"

#include <stdio.h>
#include <string.h>

static void plan_destroy(cuda_gemm_plan *p) {
  if (p->op) cublasLtMatmulDescDestroy(p->op);
  if (p->lw) cublasLtMatrixLayoutDestroy(p->lw);
  if (p->lx) cublasLtMatrixLayoutDestroy(p->lx);
  if (p->lo) cublasLtMatrixLayoutDestroy(p->lo);
  memset(p, 0, sizeof *p);
}

void cuda_gemm_cache_clear(cuda_backend *be) {
  for (int i = 0; i < CUDA_GEMM_CACHE_CAP; i++) {
    if (be->gemm_used[i]) plan_destroy(&be->gemm_plans[i]);
    be->gemm_used[i] = 0;
  }
}

static int plan_make(cuda_backend *be, const cuda_gemm_key *key, cuda_gemm_plan *p) {
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  const cudaDataType_t ot = key->out_f32 ? CUDA_R_32F : CUDA_R_16BF;
  CUBLAS_CK(be, cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  CUBLAS_CK(be, cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
  CUBLAS_CK(be, cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
  CUBLAS_CK(be, cublasLtMatrixLayoutCreate(&p->lw, CUDA_R_16BF, (uint64_t)key->k, (uint64_t)key->m, key->k));
  CUBLAS_CK(be, cublasLtMatrixLayoutCreate(&p->lx, CUDA_R_16BF, (uint64_t)key->k, (uint64_t)key->n, key->k));
  CUBLAS_CK(be, cublasLtMatrixLayoutCreate(&p->lo, ot, (uint64_t)key->m, (uint64_t)key->n, key->m));

  cublasLtMatmulPreference_t pref = NULL;
  CUBLAS_CK(be, cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = CUDA_GEMM_WS_BYTES;
  const uint32_t aw = (uint32_t)key->align_w, ax = (uint32_t)key->align_x, ao = (uint32_t)key->align_out;
  cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aw, sizeof aw);
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ax, sizeof ax);
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ao, sizeof ao);
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ao, sizeof ao);
  cublasLtMatmulHeuristicResult_t res;
  int n_res = 0;
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasLtMatmulAlgoGetHeuristic(be->lt, p->op, p->lw, p->lx, p->lo, p->lo, pref, 1, &res, &n_res);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS)
    return cuda_fail(be, __FILE__, __LINE__, "cuBLASLt preference/heuristic", cublasLtGetStatusString(st));
  if (n_res < 1) {
    char what[160];
    snprintf(what, sizeof what, "cuBLASLt has no algorithm for m=%lld n=%lld k=%lld (alignments %d/%d/%d)",
             (long long)key->m, (long long)key->n, (long long)key->k, key->align_w, key->align_x, key->align_out);
    return cuda_fail(be, __FILE__, __LINE__, what, "no heuristic result");
  }
  p->algo = res.algo;
  be->gemm_plans_made++;
  return 0;
}

static int32_t min_align(int32_t a, int32_t b) { return a < b ? a : b; }

int cuda_gemm(cuda_backend *be, void *out, int out_f32, const void *x, const void *w, int64_t n,
              int64_t m, int64_t k) {
  /* The alignment cuBLASLt may assume: of the base pointer and of every row (row pitch bytes),
   * so that odd pitches such as stories260K's 172-wide FFN get kernels that allow them. */
  const int32_t row_in = min_align(cuda_plan_ptr_align((const void *)(uintptr_t)(k * 2)), 256);
  const int32_t row_out = cuda_plan_ptr_align((const void *)(uintptr_t)(m * (out_f32 ? 4 : 2)));
  const cuda_gemm_key key = {.m = m, .n = n, .k = k, .out_f32 = out_f32,
                             .align_w = min_align(cuda_plan_ptr_align(w), row_in),
                             .align_x = min_align(cuda_plan_ptr_align(x), row_in),
                             .align_out = min_align(cuda_plan_ptr_align(out), row_out)};
  int hit = 0;
  const int32_t slot = cuda_plan_gemm_slot(be->gemm_keys, be->gemm_used, CUDA_GEMM_CACHE_CAP, &key, &hit);
  cuda_gemm_plan *p = &be->gemm_plans[slot];
  if (!hit) {
    if (be->gemm_used[slot]) plan_destroy(p);
    be->gemm_used[slot] = 0;
    int rc = plan_make(be, &key, p);
    if (rc) {
      plan_destroy(p);
      return rc;
    }
    be->gemm_keys[slot] = key;
    be->gemm_used[slot] = 1;
  }
  const float alpha = 1.0f, beta = 0.0f;
  CUBLAS_CK(be, cublasLtMatmul(be->lt, p->op, &alpha, w, p->lw, x, p->lx, &beta, out, p->lo, out, p->lo,
                               &p->algo, be->gemm_ws, CUDA_GEMM_WS_BYTES, be->stream));
  return 0;
}
