// Kernels of the model families beyond Llama: scale, gated activations (GELU-tanh, gpt-oss's
// clamped SwiGLU), mixture-of-experts routing, the expert-grouped matmul (bf16 or MXFP4 experts)
// and the weighted combine. bf16 activations, fp32 math. Each output value is one fixed sequence
// of operations (a slot's dot product does not depend on which other tokens chose its expert),
// so results are batch invariant like the CPU backend's.
#include "common.cuh"

namespace {

constexpr int kThreads = 256;
constexpr int kRowsPerBlock = 8; // grouped matmul: one warp per weight row

__global__ void scale_kernel(uint16_t *x, int64_t n, float s) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    x[i] = qv::f2bf(qv::bf2f(x[i]) * s);
}

__device__ __forceinline__ float gelu_tanh(float x) {
  const float beta = 0.7978845608028654f, kappa = 0.044715f;
  return 0.5f * x * (1.0f + tanhf(beta * (x + kappa * x * x * x)));
}

__global__ void gated_act_kernel(uint16_t *out, const uint16_t *gate, const uint16_t *up, int64_t n, int kind,
                                 float alpha, float limit) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const float g = qv::bf2f(gate[i]), u = qv::bf2f(up[i]);
    float r;
    if (kind == 1) {
      r = gelu_tanh(g) * u;
    } else if (kind == 2) {
      const float gg = fminf(g, limit), uu = fminf(fmaxf(u, -limit), limit);
      r = (uu + 1.0f) * (gg / (1.0f + expf(-gg * alpha)));
    } else {
      r = g / (1.0f + expf(-g)) * u;
    }
    out[i] = qv::f2bf(r);
  }
}

// One thread per token. Selection runs on the logits (softmax and sigmoid are monotonic), largest
// first, ties to the lower expert id, as the CPU backend.
__global__ void route_kernel(const float *logits, int32_t n, int32_t E, int32_t k, int kind, int normalize,
                             int32_t *ids, float *w) {
  const int32_t t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= n) return;
  const float *l = logits + (int64_t)t * E;
  int32_t *id = ids + (int64_t)t * k;
  float *wt = w + (int64_t)t * k;
  for (int32_t j = 0; j < k; j++) {
    int32_t best = -1;
    for (int32_t e = 0; e < E; e++) {
      bool taken = false;
      for (int32_t i = 0; i < j; i++) taken |= id[i] == e;
      if (!taken && (best < 0 || l[e] > l[best])) best = e;
    }
    id[j] = best;
    wt[j] = l[best];
  }
  if (kind == 0) { // softmax over all experts, then the selected probabilities
    float mx = -INFINITY;
    for (int32_t e = 0; e < E; e++) mx = fmaxf(mx, l[e]);
    double sum = 0;
    for (int32_t e = 0; e < E; e++) sum += expf(l[e] - mx);
    const float inv = (float)(1.0 / sum);
    for (int32_t j = 0; j < k; j++) wt[j] = expf(wt[j] - mx) * inv;
  } else if (kind == 2) {
    for (int32_t j = 0; j < k; j++) wt[j] = 1.0f / (1.0f + expf(-wt[j]));
  }
  if (kind == 1) { // softmax over the k selected logits
    const float mx = wt[0];
    double sum = 0;
    for (int32_t j = 0; j < k; j++) sum += (wt[j] = expf(wt[j] - mx));
    const float inv = (float)(1.0 / sum);
    for (int32_t j = 0; j < k; j++) wt[j] *= inv;
  } else if (normalize) {
    float sum = 0;
    for (int32_t j = 0; j < k; j++) sum += wt[j];
    for (int32_t j = 0; j < k; j++) wt[j] /= sum;
  }
}

__global__ void count_kernel(const int32_t *ids, int64_t S, int32_t *counts) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < S; i += (int64_t)gridDim.x * blockDim.x)
    atomicAdd(&counts[ids[i]], 1);
}

// offs[0] = 0, offs[e+1] = offs[e] + counts[e]; cursor = offs. One thread: E <= 4096.
__global__ void scan_kernel(const int32_t *counts, int32_t E, int32_t *offs, int32_t *cursor) {
  if (threadIdx.x || blockIdx.x) return;
  int32_t acc = 0;
  for (int32_t e = 0; e < E; e++) {
    offs[e] = acc;
    cursor[e] = acc;
    acc += counts[e];
  }
  offs[E] = acc;
}

// Slot order within an expert is whatever the atomics give: each slot's output is computed on its
// own, so the order changes nothing.
__global__ void scatter_kernel(const int32_t *ids, int64_t S, int32_t *cursor, int32_t *order) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < S; i += (int64_t)gridDim.x * blockDim.x)
    order[atomicAdd(&cursor[ids[i]], 1)] = (int32_t)i;
}

__constant__ float kFp4[16] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f,
                               -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

// grid (ceil(rows / 8), E); one warp per weight row of expert blockIdx.y, looping over the slots
// routed to it: the expert's rows are fetched from DRAM once per step and re-read from cache.
__global__ void grouped_matmul_kernel(uint16_t *out, const uint16_t *x, int per_slot, int32_t k, const uint16_t *w,
                                      const uint8_t *blocks, const uint8_t *scales, const float *bias,
                                      const int32_t *offs, const int32_t *order, int64_t rows, int64_t cols) {
  const int32_t e = blockIdx.y;
  const int32_t s0 = offs[e], s1 = offs[e + 1];
  if (s0 == s1) return;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t r = (int64_t)blockIdx.x * kRowsPerBlock + warp;
  if (r >= rows) return;
  const int64_t wr = (int64_t)e * rows + r;
  const float b = bias ? bias[wr] : 0.0f;
  for (int32_t i = s0; i < s1; i++) {
    const int32_t slot = order[i];
    const uint16_t *xr = x + (int64_t)(per_slot ? slot : slot / k) * cols;
    float acc = 0.0f;
    if (blocks) {
      const uint8_t *qb = blocks + wr * (cols / 2);
      const uint8_t *qs = scales + wr * (cols / 32);
      for (int64_t c = 2 * lane; c < cols; c += 64) { // each lane takes one byte: two values
        const uint8_t byte = qb[c / 2];
        const float s = exp2f((float)qs[c / 32] - 127.0f);
        acc += qv::bf2f(xr[c]) * (kFp4[byte & 15] * s) + qv::bf2f(xr[c + 1]) * (kFp4[byte >> 4] * s);
      }
    } else {
      const uint16_t *wrow = w + wr * cols;
      for (int64_t c = lane; c < cols; c += 32) acc += qv::bf2f(xr[c]) * qv::bf2f(wrow[c]);
    }
    acc = qv::warp_sum(acc);
    if (lane == 0) out[(int64_t)slot * rows + r] = qv::f2bf(acc + b);
  }
}

__global__ void combine_kernel(uint16_t *out, const uint16_t *y, const float *w, int64_t n, int32_t k, int64_t d) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n * d; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t t = i / d, c = i % d;
    float acc = w[t * k] * qv::bf2f(y[(t * k) * d + c]);
    for (int32_t j = 1; j < k; j++) acc += w[t * k + j] * qv::bf2f(y[(t * k + j) * d + c]);
    out[i] = qv::f2bf(acc);
  }
}

} // namespace

extern "C" cudaError_t qv_cuda_scale(uint16_t *x, int64_t n, float s, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  scale_kernel<<<qv::grid_for(n, kThreads), kThreads, 0, stream>>>(x, n, s);
  return cudaGetLastError();
}

extern "C" cudaError_t qv_cuda_gated_act(uint16_t *out, const uint16_t *gate, const uint16_t *up, int64_t n, int kind,
                                         float alpha, float limit, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  gated_act_kernel<<<qv::grid_for(n, kThreads), kThreads, 0, stream>>>(out, gate, up, n, kind, alpha, limit);
  return cudaGetLastError();
}

extern "C" cudaError_t qv_cuda_moe_route(const float *logits, int32_t n, int32_t E, int32_t k, int kind,
                                         int normalize, int32_t *ids, float *w, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  route_kernel<<<(n + 127) / 128, 128, 0, stream>>>(logits, n, E, k, kind, normalize, ids, w);
  return cudaGetLastError();
}

extern "C" cudaError_t qv_cuda_moe_sort(const int32_t *ids, int64_t S, int32_t E, int32_t *scratch,
                                        cudaStream_t stream) {
  int32_t *counts = scratch, *offs = counts + E, *cursor = offs + E + 1, *order = cursor + E;
  cudaError_t rc = cudaMemsetAsync(counts, 0, (size_t)E * sizeof(int32_t), stream);
  if (rc != cudaSuccess) return rc;
  count_kernel<<<qv::grid_for(S, kThreads), kThreads, 0, stream>>>(ids, S, counts);
  scan_kernel<<<1, 1, 0, stream>>>(counts, E, offs, cursor);
  scatter_kernel<<<qv::grid_for(S, kThreads), kThreads, 0, stream>>>(ids, S, cursor, order);
  return cudaGetLastError();
}

extern "C" cudaError_t qv_cuda_moe_matmul(const qv_cuda_moe_args *a, cudaStream_t stream) {
  const int32_t E = a->n_expert;
  const int32_t *offs = a->scratch + E, *order = a->scratch + 3 * E + 1;
  dim3 grid((unsigned)((a->rows + kRowsPerBlock - 1) / kRowsPerBlock), (unsigned)E);
  grouped_matmul_kernel<<<grid, 32 * kRowsPerBlock, 0, stream>>>(a->out, a->x, a->per_slot, a->k, a->w, a->blocks,
                                                                 a->scales, a->bias, offs, order, a->rows, a->cols);
  return cudaGetLastError();
}

extern "C" cudaError_t qv_cuda_moe_combine(uint16_t *out, const uint16_t *y, const float *w, int64_t n, int32_t k,
                                           int64_t d, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  combine_kernel<<<qv::grid_for(n * d, kThreads), kThreads, 0, stream>>>(out, y, w, n, k, d);
  return cudaGetLastError();
}
