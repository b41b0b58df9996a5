// Paged attention for a mixed batch of prefill chunks and decodes, FlashAttention-2 style.
//
// Grid: one CTA (4 warps) per (work item, KV head). A work item (attn_types.h) is a tile of up
// to 64 rows of one sequence; row R is query token R / group of the sequence, query head
// kvh * group + R % group. Each warp owns 16 rows and keeps their output accumulator in
// registers (mma.m16n8k16 C fragments). The CTA walks the item's key range in tiles of BN keys:
// the K and V rows are gathered from the paged cache (block table lookup per key) into shared
// memory, S = Q K^T on tensor cores, causal / sliding-window masking, softcap, an online
// softmax in fp32 (base-2 exponentials), then O += P V on tensor cores with P rounded to bf16.
//
// Split-K (flash-decoding): when the host planner splits a long key range over several items,
// each writes its normalised fp32 partial and log2-sum-exp to a slot, and attn_reduce_kernel
// merges the slots of a tile. Keys outside [kv_begin, kv_end) or a row's visible window read
// as -inf; tiles past the end load zeros so that 0 * garbage never produces NaN.
//
// Shared memory rows are padded by 8 bf16 (16 bytes) so the ldmatrix row addresses of one 8x8
// matrix fall in distinct banks. Instantiated for head_dim 64, 128 (64-key tiles) and 256
// (32-key tiles, to bound registers: 128 accumulator floats per thread).
#include "common.cuh"

namespace {

constexpr int BM = QV_ATTN_BLOCK_M;
constexpr int kWarps = BM / 16;
constexpr int kThreads = kWarps * 32;
constexpr float kLog2e = 1.4426950408889634f;

template <int D, int BN>
constexpr int smem_bytes() {
  return (BM + 2 * BN) * (D + 8) * 2;
}

__device__ __forceinline__ uint32_t smem_addr(const void *p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void *p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void *p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// c[4] += a[4] (16x16 bf16, row) * b[2] (16x8 bf16, col), fp32 accumulate.
__device__ __forceinline__ void mma_bf16(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
  asm(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  return static_cast<uint32_t>(qv::f2bf(lo)) | (static_cast<uint32_t>(qv::f2bf(hi)) << 16);
}

// Gathers keys [kv0, kv0 + BN) of one KV head from the paged cache into s[BN][D + 8]; keys at or
// past kv_end become zeros.
template <int D, int BN>
__device__ __forceinline__ void load_kv_tile(uint16_t *s, const uint16_t *cache,
                                             const int32_t *btab, int kv0, int kv_end,
                                             const qv_cuda_attn_args &a, int kvh) {
  constexpr int kChunks = D / 8; // 16-byte chunks per row
  for (int c = threadIdx.x; c < BN * kChunks; c += kThreads) {
    const int r = c / kChunks, cc = c % kChunks;
    const int j = kv0 + r;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (j < kv_end) {
      const int64_t blk = btab[j / a.block_size];
      const int64_t slot = blk * a.block_size + j % a.block_size;
      v = *reinterpret_cast<const uint4 *>(cache + (slot * a.n_kv_head + kvh) * D + cc * 8);
    }
    *reinterpret_cast<uint4 *>(s + r * (D + 8) + cc * 8) = v;
  }
}

template <int D, int BN>
__global__ void __launch_bounds__(kThreads) attn_mma_kernel(const qv_cuda_attn_args a) {
  constexpr int LD = D + 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  uint16_t *sQ = reinterpret_cast<uint16_t *>(smem_raw); // [BM][LD]
  uint16_t *sK = sQ + BM * LD;                           // [BN][LD]
  uint16_t *sV = sK + BN * LD;                           // [BN][LD]

  const qv_cuda_attn_work w = a.work[blockIdx.x];
  const int kvh = blockIdx.y;
  const int group = a.n_head / a.n_kv_head;
  const int q_start = a.seq_q_start[w.seq];
  const int n_q = a.seq_q_start[w.seq + 1] - q_start;
  const int pos0 = a.seq_ctx_len[w.seq] - n_q; // position of the sequence's first query
  const int32_t *btab = a.block_tables + (int64_t)w.seq * a.max_blocks;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, tq = lane & 3;

  // Q tile, rows past n_rows zero-filled.
  constexpr int kChunks = D / 8;
  for (int c = threadIdx.x; c < BM * kChunks; c += kThreads) {
    const int r = c / kChunks, cc = c % kChunks;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (r < w.n_rows) {
      const int R = w.row0 + r;
      const int64_t tok = q_start + R / group;
      const int head = kvh * group + R % group;
      v = *reinterpret_cast<const uint4 *>(a.q + (tok * a.n_head + head) * D + cc * 8);
    }
    *reinterpret_cast<uint4 *>(sQ + r * LD + cc * 8) = v;
  }

  // The two rows this thread accumulates: warp*16 + g and warp*16 + g + 8.
  int qpos[2];
  bool rvalid[2];
#pragma unroll
  for (int h = 0; h < 2; h++) {
    const int rl = warp * 16 + g + h * 8;
    rvalid[h] = rl < w.n_rows;
    qpos[h] = pos0 + (w.row0 + rl) / group;
  }

  float o[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

  for (int kv0 = w.kv_begin; kv0 < w.kv_end; kv0 += BN) {
    __syncthreads(); // the previous tile's readers are done (and Q is stored on the first pass)
    load_kv_tile<D, BN>(sK, a.k_cache, btab, kv0, w.kv_end, a, kvh);
    load_kv_tile<D, BN>(sV, a.v_cache, btab, kv0, w.kv_end, a, kvh);
    __syncthreads();
    // A warp whose 16 rows are all padding (a decode tile holds only `group` rows) helps load
    // but skips the math; the condition is warp-uniform, so the warp-collective ops stay legal.
    if (warp * 16 >= w.n_rows) continue;

    // S = Q K^T for this warp's 16 rows: [16][BN] as BN/8 C fragments.
    float s[BN / 8][4];
#pragma unroll
    for (int i = 0; i < BN / 8; i++) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
      uint32_t qa[4];
      ldmatrix_x4(qa, sQ + (warp * 16 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8);
#pragma unroll
      for (int nn = 0; nn < BN / 16; nn++) {
        uint32_t kb[4];
        const int key = nn * 16 + (lane & 7) + ((lane >> 4) << 3);
        ldmatrix_x4(kb, sK + key * LD + kk * 16 + ((lane >> 3) & 1) * 8);
        mma_bf16(s[2 * nn], qa, kb[0], kb[1]);
        mma_bf16(s[2 * nn + 1], qa, kb[2], kb[3]);
      }
    }

    // Scale, softcap, mask; base-2 logits.
#pragma unroll
    for (int nt = 0; nt < BN / 8; nt++) {
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const int h = e >> 1;
        const int j = kv0 + nt * 8 + 2 * tq + (e & 1);
        float x = s[nt][e] * a.scale;
        if (a.softcap > 0.0f) x = a.softcap * tanhf(x / a.softcap);
        const bool vis = rvalid[h] && j < w.kv_end && j <= qpos[h] &&
                         (a.window <= 0 || j > qpos[h] - a.window);
        s[nt][e] = vis ? x * kLog2e : -INFINITY;
      }
    }

    // Online softmax: row max over the 4 threads of a quad, rescale what was accumulated.
#pragma unroll
    for (int h = 0; h < 2; h++) {
      float mx = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < BN / 8; nt++) mx = fmaxf(mx, fmaxf(s[nt][2 * h], s[nt][2 * h + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m[h], mx);
      const float m_use = m_new == -INFINITY ? 0.0f : m_new;
      const float alpha = exp2f(m[h] - m_use);
      float sum = 0.0f;
#pragma unroll
      for (int nt = 0; nt < BN / 8; nt++) {
        s[nt][2 * h] = exp2f(s[nt][2 * h] - m_use);
        s[nt][2 * h + 1] = exp2f(s[nt][2 * h + 1] - m_use);
        sum += s[nt][2 * h] + s[nt][2 * h + 1];
      }
      l[h] = l[h] * alpha + sum; // per-thread partial; the quad is summed at the end
      m[h] = m_new;
#pragma unroll
      for (int dt = 0; dt < D / 8; dt++) {
        o[dt][2 * h] *= alpha;
        o[dt][2 * h + 1] *= alpha;
      }
    }

    // O += P V: P from the S fragments (two key tiles make one A fragment), V via ldmatrix.trans.
#pragma unroll
    for (int kk = 0; kk < BN / 16; kk++) {
      uint32_t pa[4];
      pa[0] = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
      pa[1] = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
      pa[2] = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      pa[3] = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
      for (int dn = 0; dn < D / 16; dn++) {
        uint32_t vb[4];
        ldmatrix_x4_trans(vb, sV + (kk * 16 + (lane & 15)) * LD + dn * 16 + (lane >> 4) * 8);
        mma_bf16(o[2 * dn], pa, vb[0], vb[1]);
        mma_bf16(o[2 * dn + 1], pa, vb[2], vb[3]);
      }
    }
  }

#pragma unroll
  for (int h = 0; h < 2; h++) {
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
  }

#pragma unroll
  for (int h = 0; h < 2; h++) {
    if (!rvalid[h]) continue;
    const int rl = warp * 16 + g + h * 8;
    const float inv = l[h] > 0.0f ? 1.0f / l[h] : 0.0f;
    if (w.part_slot < 0) {
      const int R = w.row0 + rl;
      const int64_t tok = q_start + R / group;
      const int head = kvh * group + R % group;
      uint16_t *dst = a.out + (tok * a.n_head + head) * D;
#pragma unroll
      for (int dt = 0; dt < D / 8; dt++)
        *reinterpret_cast<uint32_t *>(dst + dt * 8 + 2 * tq) =
            pack_bf16(o[dt][2 * h] * inv, o[dt][2 * h + 1] * inv);
    } else {
      const int64_t base = ((int64_t)w.part_slot * a.n_kv_head + kvh) * BM + rl;
      float *dst = a.part_o + base * D;
#pragma unroll
      for (int dt = 0; dt < D / 8; dt++)
        *reinterpret_cast<float2 *>(dst + dt * 8 + 2 * tq) =
            make_float2(o[dt][2 * h] * inv, o[dt][2 * h + 1] * inv);
      if (tq == 0) a.part_lse[base] = l[h] > 0.0f ? m[h] + log2f(l[h]) : -INFINITY;
    }
  }
}

// Merges the split partials of one tile (blockIdx.x) for one KV head (blockIdx.y):
// out = sum_i 2^(lse_i - max) * o_i / sum_i 2^(lse_i - max). A tile whose every split saw no key
// (impossible for a causal query, which sees itself) writes zeros.
__global__ void __launch_bounds__(128) attn_reduce_kernel(const qv_cuda_attn_args a) {
  const qv_cuda_attn_reduce rd = a.reduce[blockIdx.x];
  const int kvh = blockIdx.y;
  const int D = a.head_dim;
  const int group = a.n_head / a.n_kv_head;
  const int q_start = a.seq_q_start[rd.seq];
  for (int idx = threadIdx.x; idx < rd.n_rows * D; idx += blockDim.x) {
    const int rl = idx / D, d = idx % D;
    float mx = -INFINITY;
    for (int sp = 0; sp < rd.n_splits; sp++)
      mx = fmaxf(mx, a.part_lse[((int64_t)(rd.slot0 + sp) * a.n_kv_head + kvh) * BM + rl]);
    float num = 0.0f, den = 0.0f;
    if (mx != -INFINITY) {
      for (int sp = 0; sp < rd.n_splits; sp++) {
        const int64_t base = ((int64_t)(rd.slot0 + sp) * a.n_kv_head + kvh) * BM + rl;
        const float wgt = exp2f(a.part_lse[base] - mx);
        num += wgt * a.part_o[base * D + d];
        den += wgt;
      }
    }
    const int R = rd.row0 + rl;
    const int64_t tok = q_start + R / group;
    const int head = kvh * group + R % group;
    a.out[(tok * a.n_head + head) * D + d] = qv::f2bf(den > 0.0f ? num / den : 0.0f);
  }
}

template <int D, int BN>
cudaError_t launch_mma(const qv_cuda_attn_args *a, cudaStream_t stream) {
  static_assert(D % 16 == 0 && BN % 16 == 0, "mma tiles are 16 wide");
  // 99 KiB is the opt-in per-block limit of sm_120 (sm_90/sm_100 allow 227 KiB).
  static_assert(smem_bytes<D, BN>() <= 101376, "shared memory tile too large for sm_120");
  const dim3 grid(static_cast<unsigned>(a->n_work), static_cast<unsigned>(a->n_kv_head));
  attn_mma_kernel<D, BN><<<grid, kThreads, smem_bytes<D, BN>(), stream>>>(*a);
  return cudaGetLastError();
}

template <int D, int BN>
cudaError_t set_smem() {
  return cudaFuncSetAttribute(attn_mma_kernel<D, BN>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              smem_bytes<D, BN>());
}

} // namespace

extern "C" int qv_cuda_attention_mma_supported(int32_t head_dim) {
  return head_dim == 64 || head_dim == 128 || head_dim == 256;
}

extern "C" cudaError_t qv_cuda_attention_init(void) {
  cudaError_t e;
  if ((e = set_smem<64, 64>()) != cudaSuccess) return e;
  if ((e = set_smem<128, 64>()) != cudaSuccess) return e;
  return set_smem<256, 32>();
}

extern "C" cudaError_t qv_cuda_attention_mma(const qv_cuda_attn_args *a, cudaStream_t stream) {
  if (a->n_work <= 0) return cudaSuccess;
  if (a->n_kv_head <= 0 || a->n_kv_head > 65535) return cudaErrorInvalidValue;
  cudaError_t e;
  switch (a->head_dim) {
  case 64: e = launch_mma<64, 64>(a, stream); break;
  case 128: e = launch_mma<128, 64>(a, stream); break;
  case 256: e = launch_mma<256, 32>(a, stream); break;
  default: return cudaErrorInvalidValue;
  }
  if (e != cudaSuccess || a->n_reduce <= 0) return e;
  const dim3 grid(static_cast<unsigned>(a->n_reduce), static_cast<unsigned>(a->n_kv_head));
  attn_reduce_kernel<<<grid, 128, 0, stream>>>(*a);
  return cudaGetLastError();
}
