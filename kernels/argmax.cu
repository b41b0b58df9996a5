// Greedy argmax over logits rows: one 256-thread block per row, each thread scans a strided
// slice, then a shared-memory tree keeps (value, index) with the lowest index on ties, so the
// answer is the same as a sequential scan's. NaN never wins (it compares false); a row of NaN
// answers 0.
#include "common.cuh"

namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ bool better(float v, int32_t i, float bv, int32_t bi) {
  return v > bv || (v == bv && i < bi);
}

__global__ void __launch_bounds__(kThreads) argmax_kernel(int32_t *ids, const void *x, int x_f32,
                                                          int64_t cols) {
  __shared__ float sv[kThreads];
  __shared__ int32_t si[kThreads];
  const int64_t row = blockIdx.x;
  float bv = -INFINITY;
  int32_t bi = 0x7fffffff;
  for (int64_t c = threadIdx.x; c < cols; c += kThreads) {
    const float v = qv::load_f(x, x_f32, row * cols + c);
    if (better(v, (int32_t)c, bv, bi)) { bv = v; bi = (int32_t)c; }
  }
  sv[threadIdx.x] = bv;
  si[threadIdx.x] = bi;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s && better(sv[threadIdx.x + s], si[threadIdx.x + s], sv[threadIdx.x], si[threadIdx.x])) {
      sv[threadIdx.x] = sv[threadIdx.x + s];
      si[threadIdx.x] = si[threadIdx.x + s];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) ids[row] = si[0] == 0x7fffffff ? 0 : si[0];
}

} // namespace

extern "C" cudaError_t qv_cuda_argmax(int32_t *ids, const void *x, int x_f32, int64_t rows,
                                      int64_t cols, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return cudaSuccess;
  if (rows > 0x7fffffffLL || cols > 0x7fffffffLL) return cudaErrorInvalidValue;
  argmax_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(ids, x, x_f32, cols);
  return cudaGetLastError();
}
