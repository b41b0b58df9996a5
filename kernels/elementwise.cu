// Memory-bound row and element kernels: embedding lookup, SiLU gate multiply, residual add, bias
// add, row gather (logits rows), and the paged KV write. All are grid-stride loops over int64
// element indices, so any shape runs with a capped grid; they do fp32 math on bf16 storage.
#include "common.cuh"

namespace {

constexpr int kThreads = 256;

__global__ void embed_kernel(uint16_t *out, const uint16_t *table, const int32_t *ids,
                             int32_t n_tok, int32_t row0, int32_t n_vocab, int32_t dim) {
  const int64_t n = static_cast<int64_t>(n_tok) * dim;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t t = i / dim, c = i % dim;
    const int64_t id = (int64_t)ids[t] - row0; /* int64: no overflow for any id and row0 */
    out[i] = (id >= 0 && id < n_vocab) ? table[(int64_t)id * dim + c] : (uint16_t)0;
  }
}

__global__ void silu_mul_kernel(uint16_t *out, const uint16_t *gate, const uint16_t *up, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const float g = qv::bf2f(gate[i]);
    const float s = g / (1.0f + expf(-g));
    out[i] = qv::f2bf(s * qv::bf2f(up[i]));
  }
}

__global__ void add_kernel(uint16_t *x, const uint16_t *y, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    x[i] = qv::f2bf(qv::bf2f(x[i]) + qv::bf2f(y[i]));
}

__global__ void add_bias_kernel(void *out, int out_f32, const void *bias, int bias_f32,
                                int64_t rows, int64_t cols) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const float v = qv::load_f(out, out_f32, i) + qv::load_f(bias, bias_f32, i % cols);
    if (out_f32) static_cast<float *>(out)[i] = v;
    else static_cast<uint16_t *>(out)[i] = qv::f2bf(v);
  }
}

template <typename T>
__global__ void gather_rows_kernel(T *out, const T *x, const int32_t *idx, int32_t n_idx,
                                   int64_t n_rows, int64_t cols) {
  const int64_t n = (int64_t)n_idx * cols;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = i / cols, c = i % cols;
    const int32_t src = idx[r];
    out[i] = (src >= 0 && src < n_rows) ? x[src * cols + c] : (T)0;
  }
}

__global__ void kv_write_kernel(uint16_t *k_cache, uint16_t *v_cache, const uint16_t *k,
                                const uint16_t *v, const int32_t *slot_mapping, int32_t n_tok,
                                int64_t n_slots, int32_t row_elems) {
  const int64_t n = (int64_t)n_tok * row_elems;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t t = i / row_elems, c = i % row_elems;
    const int64_t slot = slot_mapping[t];
    if (slot < 0 || slot >= n_slots) continue;
    k_cache[slot * row_elems + c] = k[i];
    v_cache[slot * row_elems + c] = v[i];
  }
}

} // namespace

extern "C" cudaError_t qv_cuda_embed(uint16_t *out, const uint16_t *table, const int32_t *ids,
                                     int32_t n_tok, int32_t row0, int32_t n_vocab, int32_t dim,
                                     cudaStream_t stream) {
  const int64_t n = (int64_t)n_tok * dim;
  if (n <= 0) return cudaSuccess;
  embed_kernel<<<qv::grid_for(n, kThreads), kThreads, 0, stream>>>(out, table, ids, n_tok, row0, n_vocab,
                                                                    dim);
  return cudaGetLastError();
}

extern "C" cudaError_t qv_cuda_silu_mul(uint16_t *out, const uint16_t *gate, const uint16_t *up,
                                        int64_t n, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  silu_mul_kernel<<<qv::grid_for(n, kThreads), kThreads, 0, stream>>>(out, gate, up, n);
  return cudaGetLastError();
}

extern "C" cudaError_t qv_cuda_add(uint16_t *x, const uint16_t *y, int64_t n, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  add_kernel<<<qv::grid_for(n, kThreads), kThreads, 0, stream>>>(x, y, n);
  return cudaGetLastError();
}

extern "C" cudaError_t qv_cuda_add_bias(void *out, int out_f32, const void *bias, int bias_f32,
                                        int64_t rows, int64_t cols, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return cudaSuccess;
  add_bias_kernel<<<qv::grid_for(rows * cols, kThreads), kThreads, 0, stream>>>(
      out, out_f32, bias, bias_f32, rows, cols);
  return cudaGetLastError();
}

extern "C" cudaError_t qv_cuda_gather_rows(void *out, const void *x, const int32_t *idx,
                                           int32_t n_idx, int64_t n_rows, int64_t cols,
                                           int32_t elem_bytes, cudaStream_t stream) {
  const int64_t n = (int64_t)n_idx * cols;
  if (n <= 0) return cudaSuccess;
  const unsigned g = qv::grid_for(n, kThreads);
  if (elem_bytes == 4)
    gather_rows_kernel<uint32_t><<<g, kThreads, 0, stream>>>(
        static_cast<uint32_t *>(out), static_cast<const uint32_t *>(x), idx, n_idx, n_rows, cols);
  else if (elem_bytes == 2)
    gather_rows_kernel<uint16_t><<<g, kThreads, 0, stream>>>(
        static_cast<uint16_t *>(out), static_cast<const uint16_t *>(x), idx, n_idx, n_rows, cols);
  else
    return cudaErrorInvalidValue;
  return cudaGetLastError();
}

extern "C" cudaError_t qv_cuda_kv_write(uint16_t *k_cache, uint16_t *v_cache, const uint16_t *k,
                                        const uint16_t *v, const int32_t *slot_mapping,
                                        int32_t n_tok, int64_t n_slots, int32_t row_elems,
                                        cudaStream_t stream) {
  const int64_t n = (int64_t)n_tok * row_elems;
  if (n <= 0) return cudaSuccess;
  kv_write_kernel<<<qv::grid_for(n, kThreads), kThreads, 0, stream>>>(
      k_cache, v_cache, k, v, slot_mapping, n_tok, n_slots, row_elems);
  return cudaGetLastError();
}
