// Device helpers shared by quiver's kernels: bf16 <-> f32, warp and block reductions, launch
// geometry. Everything here is inline; kernels include it and nothing else of each other.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "kernels.h"

namespace qv {

__device__ __forceinline__ float bf2f(uint16_t h) {
  return __uint_as_float(static_cast<uint32_t>(h) << 16);
}

// Round to nearest even (NaN stays NaN), as qv_f32_to_bf16 on the host.
__device__ __forceinline__ uint16_t f2bf(float f) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(f));
}

// Loads element i of a tensor that is f32 when is_f32, else bf16.
__device__ __forceinline__ float load_f(const void *p, int is_f32, int64_t i) {
  return is_f32 ? static_cast<const float *>(p)[i] : bf2f(static_cast<const uint16_t *>(p)[i]);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over a block of NT threads (a multiple of 32); every thread gets the result. scratch holds
// NT/32 floats; the call begins with a barrier so scratch may be reused by consecutive calls.
template <int NT>
__device__ __forceinline__ float block_sum(float v, float *scratch) {
  v = warp_sum(v);
  if (NT == 32) return v;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float t = lane < NT / 32 ? scratch[lane] : 0.0f;
  return warp_sum(t);
}

// Blocks for n independent items of `per_block` each, capped so the grid's x stays legal.
__host__ __forceinline__ unsigned grid_for(int64_t n, int per_block) {
  int64_t g = (n + per_block - 1) / per_block;
  if (g < 1) g = 1;
  if (g > 1048576) g = 1048576; // kernels loop grid-stride past this
  return static_cast<unsigned>(g);
}

} // namespace qv
