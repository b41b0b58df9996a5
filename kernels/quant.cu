// Block-quantized weights (ggml's Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K; layouts in
// src/quant/quant.h) on the GPU: an element-wise dequantizer that reproduces the CPU reference
// bit for bit (explicit round-to-nearest multiplies and adds, never contracted into FMAs), used by
//   - quant_gemv_kernel: decode-sized batches (n <= QV_CUDA_QGEMV_MAX_N rows of x). One warp per
//     weight row; each lane dequantizes its elements once and multiplies them with every row of
//     x, so each weight byte is read once per step (memory bound, as decode is);
//   - dequant_bf16_kernel: prefill; the weight is dequantized into a bf16 scratch that the
//     backend hands to its cuBLASLt GEMM (tensor cores);
//   - quant_embed_kernel: embedding rows of a quantized table.
// Known limit: the element-wise dequantizer re-reads a block's scales for each element (cached
// in L1); a tile-wise version that loads each block once into shared memory is the next step.
#include "common.cuh"
#include "core/dtype.h"

namespace {

constexpr int kThreads = 256;

// qv_dtype values of the quantized types.
enum : int32_t {
  T_Q8_0 = QV_DTYPE_Q8_0, T_Q4_0 = QV_DTYPE_Q4_0, T_Q4_1 = QV_DTYPE_Q4_1, T_Q5_0 = QV_DTYPE_Q5_0,
  T_Q5_1 = QV_DTYPE_Q5_1, T_Q4_K = QV_DTYPE_Q4_K, T_Q5_K = QV_DTYPE_Q5_K, T_Q6_K = QV_DTYPE_Q6_K
};

__device__ __forceinline__ float f16_at(const uint8_t *p) {
  return __half2float(__ushort_as_half(static_cast<uint16_t>(p[0] | (p[1] << 8))));
}

__device__ __forceinline__ float mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float add(float a, float b) { return __fadd_rn(a, b); }

__device__ __forceinline__ void k_scale_min(int j, const uint8_t *q, int *sc, int *mn) {
  if (j < 4) {
    *sc = q[j] & 63;
    *mn = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Element i of a row of type t (row: the row's first block).
__device__ float dq_elem(int32_t t, const uint8_t *row, int64_t i) {
  switch (t) {
  case T_Q8_0: {
    const uint8_t *b = row + (i / 32) * 34;
    return mul(f16_at(b), static_cast<float>(static_cast<int8_t>(b[2 + i % 32])));
  }
  case T_Q4_0: case T_Q4_1: {
    const int j = static_cast<int>(i % 32);
    const uint8_t *b = row + (i / 32) * (t == T_Q4_0 ? 18 : 20);
    const uint8_t q = (t == T_Q4_0 ? b + 2 : b + 4)[j % 16];
    const int v = j < 16 ? (q & 0xF) : (q >> 4);
    if (t == T_Q4_0) return mul(f16_at(b), static_cast<float>(v - 8));
    return add(mul(f16_at(b), static_cast<float>(v)), f16_at(b + 2));
  }
  case T_Q5_0: case T_Q5_1: {
    const int j = static_cast<int>(i % 32);
    const uint8_t *b = row + (i / 32) * (t == T_Q5_0 ? 22 : 24);
    const uint8_t *qhp = t == T_Q5_0 ? b + 2 : b + 4;
    const uint32_t qh = qhp[0] | (qhp[1] << 8) | (qhp[2] << 16) | (static_cast<uint32_t>(qhp[3]) << 24);
    const uint8_t q = (qhp + 4)[j % 16];
    const int v = (j < 16 ? (q & 0xF) : (q >> 4)) | (static_cast<int>((qh >> j) & 1) << 4);
    if (t == T_Q5_0) return mul(f16_at(b), static_cast<float>(v - 16));
    return add(mul(f16_at(b), static_cast<float>(v)), f16_at(b + 2));
  }
  case T_Q4_K: case T_Q5_K: {
    const int j = static_cast<int>(i % 256);
    const uint8_t *b = row + (i / 256) * (t == T_Q4_K ? 144 : 176);
    const int sub = j / 32, l = j % 32, pair = sub / 2;
    int sc, mn;
    k_scale_min(sub, b + 4, &sc, &mn);
    const uint8_t *qs = (t == T_Q4_K ? b + 16 : b + 48) + pair * 32;
    int v = (sub % 2 == 0) ? (qs[l] & 0xF) : (qs[l] >> 4);
    if (t == T_Q5_K) v += ((b[16 + l] >> sub) & 1) << 4;
    return add(mul(mul(f16_at(b), static_cast<float>(sc)), static_cast<float>(v)),
               -mul(f16_at(b + 2), static_cast<float>(mn)));
  }
  case T_Q6_K: {
    const int j = static_cast<int>(i % 256);
    const uint8_t *b = row + (i / 256) * 210;
    const int half = j / 128, r = j % 128, quarter = r / 32, l = r % 32;
    const uint8_t *ql = b + half * 64, *qh = b + 128 + half * 32;
    const int8_t *sc = reinterpret_cast<const int8_t *>(b + 192) + half * 8;
    // quarters 0..3 take ql[l] low, ql[l+32] low, ql[l] high, ql[l+32] high nibbles
    const uint8_t qlb = ql[l + (quarter % 2) * 32];
    const int lo = quarter < 2 ? (qlb & 0xF) : (qlb >> 4);
    const int hi = (qh[l] >> (2 * quarter)) & 3;
    const int q = (lo | (hi << 4)) - 32;
    return mul(mul(f16_at(b + 208), static_cast<float>(sc[l / 16 + 2 * quarter])), static_cast<float>(q));
  }
  default: return 0.0f;
  }
}

__global__ void quant_gemv_kernel(void *out, int out_f32, const uint16_t *x, const uint8_t *w, int32_t t, int32_t n,
                                  int64_t m, int64_t k, int64_t row_bytes, const void *bias, int bias_f32) {
  const int64_t j = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (j >= m) return;
  const uint8_t *row = w + j * row_bytes;
  float acc[QV_CUDA_QGEMV_MAX_N];
#pragma unroll
  for (int r = 0; r < QV_CUDA_QGEMV_MAX_N; r++) acc[r] = 0.0f;
  for (int64_t i = lane; i < k; i += 32) {
    const float wv = dq_elem(t, row, i);
#pragma unroll
    for (int r = 0; r < QV_CUDA_QGEMV_MAX_N; r++)
      if (r < n) acc[r] += wv * qv::bf2f(x[r * k + i]);
  }
#pragma unroll
  for (int r = 0; r < QV_CUDA_QGEMV_MAX_N; r++) {
    if (r >= n) break;
    float s = qv::warp_sum(acc[r]);
    if (lane == 0) {
      if (bias) s += qv::load_f(bias, bias_f32, j);
      if (out_f32) static_cast<float *>(out)[r * m + j] = s;
      else static_cast<uint16_t *>(out)[r * m + j] = qv::f2bf(s);
    }
  }
}

__global__ void dequant_bf16_kernel(uint16_t *out, const uint8_t *w, int32_t t, int64_t m, int64_t k, int64_t row_bytes) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= m * k) return;
  const int64_t r = e / k, i = e % k;
  out[e] = qv::f2bf(dq_elem(t, w + r * row_bytes, i));
}

__global__ void quant_embed_kernel(uint16_t *out, const uint8_t *w, int32_t t, const int32_t *ids, int32_t n_tok,
                                   int32_t row0, int32_t n_vocab, int32_t dim, int64_t row_bytes) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= static_cast<int64_t>(n_tok) * dim) return;
  const int32_t tok = static_cast<int32_t>(e / dim), i = static_cast<int32_t>(e % dim);
  const int64_t id = static_cast<int64_t>(ids[tok]) - row0;
  out[e] = (id < 0 || id >= n_vocab) ? 0 : qv::f2bf(dq_elem(t, w + id * row_bytes, i));
}

__global__ void dequant_f32_kernel(float *out, const uint8_t *w, int32_t t, int64_t m, int64_t k, int64_t row_bytes) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= m * k) return;
  out[e] = dq_elem(t, w + (e / k) * row_bytes, e % k);
}

}  // namespace

extern "C" cudaError_t qv_cuda_quant_gemv(const qv_cuda_qmm_args *a, cudaStream_t stream) {
  if (a->n <= 0 || a->m <= 0) return cudaSuccess;
  if (a->n > QV_CUDA_QGEMV_MAX_N) return cudaErrorInvalidValue;
  const int64_t threads = a->m * 32;
  quant_gemv_kernel<<<qv::grid_for(threads, kThreads), kThreads, 0, stream>>>(
      a->out, a->out_f32, a->x, static_cast<const uint8_t *>(a->w), a->qtype, a->n, a->m, a->k, a->row_bytes, a->bias,
      a->bias_f32);
  return cudaGetLastError();
}

extern "C" cudaError_t qv_cuda_quant_dequant_bf16(uint16_t *out, const void *w, int32_t qtype, int64_t m, int64_t k,
                                                  int64_t row_bytes, cudaStream_t stream) {
  if (m <= 0 || k <= 0) return cudaSuccess;
  dequant_bf16_kernel<<<qv::grid_for(m * k, kThreads), kThreads, 0, stream>>>(out, static_cast<const uint8_t *>(w), qtype,
                                                                             m, k, row_bytes);
  return cudaGetLastError();
}

extern "C" cudaError_t qv_cuda_quant_dequant_f32(float *out, const void *w, int32_t qtype, int64_t m, int64_t k,
                                                 int64_t row_bytes, cudaStream_t stream) {
  if (m <= 0 || k <= 0) return cudaSuccess;
  dequant_f32_kernel<<<qv::grid_for(m * k, kThreads), kThreads, 0, stream>>>(out, static_cast<const uint8_t *>(w), qtype,
                                                                            m, k, row_bytes);
  return cudaGetLastError();
}

extern "C" cudaError_t qv_cuda_quant_embed(uint16_t *out, const void *w, int32_t qtype, const int32_t *ids,
                                           int32_t n_tok, int32_t row0, int32_t n_vocab, int32_t dim,
                                           int64_t row_bytes, cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(n_tok) * dim;
  if (n <= 0) return cudaSuccess;
  quant_embed_kernel<<<qv::grid_for(n, kThreads), kThreads, 0, stream>>>(out, static_cast<const uint8_t *>(w), qtype, ids,
                                                                         n_tok, row0, n_vocab, dim, row_bytes);
  return cudaGetLastError();
}
