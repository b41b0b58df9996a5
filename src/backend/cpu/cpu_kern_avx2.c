/* The AVX2 path (with FMA and F16C): 8 lanes, 3 x 4 GEMM tiles (12 accumulators, 3 x rows and
 * one weight vector in the 16 ymm registers), 1 x 8 for a single row. Compiled with AVX2
 * target flags (CMakeLists.txt) and called only when the CPU has them. */
#if defined(__x86_64__)
#include <immintrin.h>
#include <math.h>

#include "backend/cpu/cpu_kern.h"

#define KVEC __m256
#define KL 8
#define K_ZERO() _mm256_setzero_ps()
#define K_LOAD(p) _mm256_loadu_ps(p)
#define K_LOAD_BF16(p) \
  _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p))), 16))
#define K_LOAD_F16(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
#define K_STORE(p, v) _mm256_storeu_ps(p, v)
#define K_SET1(s) _mm256_set1_ps(s)
#define K_MUL(a, b) _mm256_mul_ps(a, b)
#define K_FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define K_HSUM(v) hsum256(v)
#define K_ADD(a, b) _mm256_add_ps(a, b)
#define K_SUB(a, b) _mm256_sub_ps(a, b)
#define K_DIV(a, b) _mm256_div_ps(a, b)
#define K_MAX(a, b) _mm256_max_ps(a, b)
#define K_MIN(a, b) _mm256_min_ps(a, b)
#define K_HMAX(v) hmax256(v)
#define K_EXP2I(e) _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(e), _mm256_set1_epi32(127)), 23))
#define K_LOADN(p, n) _mm256_maskload_ps(p, tail_mask(n))
#define K_STOREN(p, v, n) _mm256_maskstore_ps(p, tail_mask(n), v)
#define KTR 3
#define KTC 4
#define KTC1 8
#define KISA QV_CPU_ISA_AVX2
#define KTABLE cpu_kernels_avx2

/* Lanes [0, n) set: the sign bit selects in maskload/maskstore. */
static inline __attribute__((always_inline)) __m256i tail_mask(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* ((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7)). */
static inline __attribute__((always_inline)) float hsum256(__m256 v) {
  __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
  return _mm_cvtss_f32(s1);
}

static inline __attribute__((always_inline)) float hmax256(__m256 v) {
  __m128 s4 = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  __m128 s2 = _mm_max_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_max_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}

#include "backend/cpu/cpu_kern_impl.h"
#endif
