// Paged attention on CUDA cores for head sizes the tensor-core kernel does not serve (any
// head_dim <= 256, e.g. 8 in stories260K, 80 or 96 in some models). One warp per (token, query
// head): lanes score 32 keys at a time, the warp keeps one online-softmax state, and each lane
// accumulates the output dims lane, lane + 32, ... (at most 8). Same masking and numerics as
// attention.cu (fp32, base-2 exponentials); slow but simple, and independent of the work items.
#include "common.cuh"

namespace {

constexpr int kWarps = 4;
constexpr int kMaxDim = 256;
constexpr float kLog2e = 1.4426950408889634f;

// One (token, head) row gw by one warp; sq is the warp's [head_dim] staging of q.
__device__ void attn_generic_row(const qv_cuda_attn_args &a, int64_t gw, float *sq) {
  const int lane = threadIdx.x & 31;
  const int D = a.head_dim;
  const int tok = (int)(gw / a.n_head), head = (int)(gw % a.n_head);
  const int kvh = head / (a.n_head / a.n_kv_head);

  // The sequence of this token: the last s with seq_q_start[s] <= tok.
  int lo_s = 0, hi_s = a.n_seqs - 1;
  while (lo_s < hi_s) {
    const int mid = (lo_s + hi_s + 1) / 2;
    if (a.seq_q_start[mid] <= tok) lo_s = mid;
    else hi_s = mid - 1;
  }
  const int seq = lo_s;
  const int q_start = a.seq_q_start[seq];
  const int n_q = a.seq_q_start[seq + 1] - q_start;
  const int pos = a.seq_ctx_len[seq] - n_q + (tok - q_start);
  const int32_t *btab = a.block_tables + (int64_t)seq * a.max_blocks;

  const uint16_t *qr = a.q + ((int64_t)tok * a.n_head + head) * D;
  for (int d = lane; d < D; d += 32) sq[d] = qv::bf2f(qr[d]);
  __syncwarp();

  const int kv_lo = a.window > 0 ? max(0, pos - a.window + 1) : 0;
  const int kv_hi = pos + 1;
  float m = -INFINITY, l = 0.0f;
  float acc[kMaxDim / 32];
#pragma unroll
  for (int i = 0; i < kMaxDim / 32; i++) acc[i] = 0.0f;

  for (int kv0 = kv_lo; kv0 < kv_hi; kv0 += 32) {
    const int j = kv0 + lane;
    float s = -INFINITY;
    if (j < kv_hi) {
      const int64_t slot = (int64_t)btab[j / a.block_size] * a.block_size + j % a.block_size;
      const uint16_t *kr = a.k_cache + (slot * a.n_kv_head + kvh) * D;
      float dot = 0.0f;
      for (int d = 0; d < D; d++) dot += sq[d] * qv::bf2f(kr[d]);
      float x = dot * a.scale;
      if (a.softcap > 0.0f) x = a.softcap * tanhf(x / a.softcap);
      s = x * kLog2e;
    }
    const float m_new = fmaxf(m, qv::warp_max(s)); // finite: key kv0 is always visible
    const float alpha = exp2f(m - m_new);
    const float p = j < kv_hi ? exp2f(s - m_new) : 0.0f;
    l = l * alpha + qv::warp_sum(p);
    m = m_new;
#pragma unroll
    for (int i = 0; i < kMaxDim / 32; i++) acc[i] *= alpha;
    const int nk = min(32, kv_hi - kv0);
    for (int jj = 0; jj < nk; jj++) {
      const float pj = __shfl_sync(0xffffffffu, p, jj);
      const int key = kv0 + jj;
      const int64_t slot = (int64_t)btab[key / a.block_size] * a.block_size + key % a.block_size;
      const uint16_t *vr = a.v_cache + (slot * a.n_kv_head + kvh) * D;
#pragma unroll
      for (int i = 0; i < kMaxDim / 32; i++) {
        const int d = lane + 32 * i;
        if (d < D) acc[i] += pj * qv::bf2f(vr[d]);
      }
    }
  }

  if (a.sinks) { // gpt-oss: exp(sink) joins the denominator only
    const float sk = a.sinks[head] * kLog2e, m_new = fmaxf(m, sk), alpha = exp2f(m - m_new);
    l = l * alpha + exp2f(sk - m_new);
#pragma unroll
    for (int i = 0; i < kMaxDim / 32; i++) acc[i] *= alpha;
  }
  uint16_t *orow = a.out + ((int64_t)tok * a.n_head + head) * D;
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
  for (int i = 0; i < kMaxDim / 32; i++) {
    const int d = lane + 32 * i;
    if (d < D) orow[d] = qv::f2bf(acc[i] * inv);
  }
  __syncwarp(); // sq is rewritten by the warp's next row
}

__global__ void __launch_bounds__(kWarps * 32) attn_generic_kernel(const qv_cuda_attn_args a) {
  __shared__ float sq[kWarps][kMaxDim];
  const int warp = threadIdx.x >> 5;
  const int64_t n = (int64_t)a.n_tok * a.n_head;
  // Warp-uniform loop; only warp-level synchronisation inside.
  for (int64_t gw = (int64_t)blockIdx.x * kWarps + warp; gw < n; gw += (int64_t)gridDim.x * kWarps)
    attn_generic_row(a, gw, sq[warp]);
}

} // namespace

extern "C" cudaError_t qv_cuda_attention_generic(const qv_cuda_attn_args *a, cudaStream_t stream) {
  if (a->head_dim <= 0 || a->head_dim > kMaxDim) return cudaErrorInvalidValue;
  const int64_t n = (int64_t)a->n_tok * a->n_head;
  if (n <= 0 || a->n_seqs <= 0) return cudaSuccess;
  attn_generic_kernel<<<qv::grid_for(n, kWarps), kWarps * 32, 0, stream>>>(*a);
  return cudaGetLastError();
}
