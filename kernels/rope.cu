// Rotary position embedding in place on q and k, for both pair layouts the model files use:
// neox (rotate-half: dims i and i + rot_dim/2, as HF Llama) and interleaved (dims 2i, 2i+1).
// The frequencies come precomputed (inv_freq, with the model's rope scaling already applied),
// so scaling variants need no kernel change. One thread per (token, head, pair); the angle is
// pos * inv_freq in fp32 with full-precision sincosf, as the CPU reference computes it (this
// file must not be built with fast-math intrinsics: __sinf loses accuracy at large angles).
#include "common.cuh"

namespace {

__global__ void rope_kernel(qv_cuda_rope_args a) {
  const int half = a.rot_dim / 2;
  const int heads = a.n_head + a.n_kv_head;
  const int64_t n = (int64_t)a.n_tok * heads * half;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int p = (int)(i % half);
    const int64_t th = i / half;
    const int h = (int)(th % heads);
    const int64_t t = th / heads;
    uint16_t *row = h < a.n_head ? a.q + (t * a.n_head + h) * a.head_dim
                                 : a.k + (t * a.n_kv_head + (h - a.n_head)) * a.head_dim;
    const float ang = (float)a.positions[t] * a.inv_freq[p];
    float s, c;
    sincosf(ang, &s, &c);
    c *= a.attn_factor;
    s *= a.attn_factor;
    const int i0 = a.neox ? p : 2 * p;
    const int i1 = a.neox ? p + half : 2 * p + 1;
    const float x0 = qv::bf2f(row[i0]), x1 = qv::bf2f(row[i1]);
    row[i0] = qv::f2bf(x0 * c - x1 * s);
    row[i1] = qv::f2bf(x0 * s + x1 * c);
  }
}

} // namespace

extern "C" cudaError_t qv_cuda_rope(const qv_cuda_rope_args *a, cudaStream_t stream) {
  const int64_t n = (int64_t)a->n_tok * (a->n_head + a->n_kv_head) * (a->rot_dim / 2);
  if (n <= 0) return cudaSuccess;
  rope_kernel<<<qv::grid_for(n, 256), 256, 0, stream>>>(*a);
  return cudaGetLastError();
}
