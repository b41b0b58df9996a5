// RMSNorm, optionally fused with the residual add that precedes it in every pre-norm block:
// x += delta (stored back as bf16), out = x / sqrt(mean(x^2) + eps) * w. The statistic is taken
// over the rounded bf16 x, which is exactly what the next layer reads. fp32 accumulation.
//
// Short rows (per-head q/k norms, small models) get one warp per row so a block does 4 rows;
// long rows (hidden sizes) get a 256-thread block per row. Each thread touches the same columns
// in both passes, so out may alias x without a barrier.
#include "common.cuh"

namespace {

template <int TPR, int NT>
__global__ void __launch_bounds__(NT) rmsnorm_kernel(uint16_t *out, uint16_t *x,
                                                     const uint16_t *delta, const uint16_t *w,
                                                     int64_t rows, int32_t cols, float eps) {
  __shared__ float scratch[NT / 32];
  constexpr int kRowsPerBlock = NT / TPR;
  const int64_t row = (int64_t)blockIdx.x * kRowsPerBlock + threadIdx.x / TPR;
  const int t = threadIdx.x % TPR;
  // With one row per block the row is always in range, so no thread skips the block barrier.
  if (row >= rows) return;
  uint16_t *xr = x + row * cols;
  uint16_t *orow = out + row * cols;
  float ss = 0.0f;
  if (delta) {
    const uint16_t *dr = delta + row * cols;
    for (int c = t; c < cols; c += TPR) {
      const uint16_t s = qv::f2bf(qv::bf2f(xr[c]) + qv::bf2f(dr[c]));
      xr[c] = s;
      const float v = qv::bf2f(s);
      ss += v * v;
    }
  } else {
    for (int c = t; c < cols; c += TPR) {
      const float v = qv::bf2f(xr[c]);
      ss += v * v;
    }
  }
  ss = (TPR == 32) ? qv::warp_sum(ss) : qv::block_sum<NT>(ss, scratch);
  const float inv = rsqrtf(ss / (float)cols + eps);
  for (int c = t; c < cols; c += TPR) orow[c] = qv::f2bf(qv::bf2f(xr[c]) * inv * qv::bf2f(w[c]));
}

} // namespace

extern "C" cudaError_t qv_cuda_rmsnorm(uint16_t *out, uint16_t *x, const uint16_t *delta,
                                       const uint16_t *w, int64_t rows, int32_t cols, float eps,
                                       cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return cudaSuccess;
  if (rows > 0x7fffffffLL) return cudaErrorInvalidValue;
  if (cols <= 1024) {
    const unsigned g = static_cast<unsigned>((rows + 3) / 4);
    rmsnorm_kernel<32, 128><<<g, 128, 0, stream>>>(out, x, delta, w, rows, cols, eps);
  } else {
    rmsnorm_kernel<256, 256><<<static_cast<unsigned>(rows), 256, 0, stream>>>(out, x, delta, w,
                                                                              rows, cols, eps);
  }
  return cudaGetLastError();
}
