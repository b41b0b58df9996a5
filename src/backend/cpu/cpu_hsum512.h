/* The AVX-512 path's horizontal sum of 16 lanes: (lanes 0-7 + lanes 8-15), then the AVX2
 * path's tree over the 8 sums. One definition for every AVX-512 kernel whose outputs must equal
 * the f32 kernel's bit for bit (cpu_kern_avx512.c, the fused quantized GEMVs in cpu_quant.c, the
 * bf16 dot product in cpu_kern_avx512bf16.c). x86-64 only; not a public header. */
#ifndef QV_BACKEND_CPU_HSUM512_H
#define QV_BACKEND_CPU_HSUM512_H

#include <immintrin.h>

static inline __attribute__((always_inline, target("avx512f,avx512vl,avx2"))) float cpu_hsum512(__m512 v) {
  __m256 lo = _mm512_castps512_ps256(v);
  __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
  __m256 s8 = _mm256_add_ps(lo, hi);
  __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
  return _mm_cvtss_f32(s1);
}

#endif
