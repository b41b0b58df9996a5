/* The AVX-512 path (F, BW, VL; FMA and F16C for the widening): 16 lanes, 4 x 4 GEMM tiles
 * (16 accumulators of the 32 zmm registers), 1 x 8 for a single row. Compiled with AVX-512
 * target flags (CMakeLists.txt) and called only when the CPU has them. */
#if defined(__x86_64__)
#include <immintrin.h>

#include "backend/cpu/cpu_hsum512.h"
#include "backend/cpu/cpu_kern.h"

#define KVEC __m512
#define KL 16
#define K_ZERO() _mm512_setzero_ps()
#define K_LOAD(p) _mm512_loadu_ps(p)
#define K_LOAD_BF16(p) \
  _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p))), 16))
#define K_LOAD_F16(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p)))
#define K_STORE(p, v) _mm512_storeu_ps(p, v)
#define K_SET1(s) _mm512_set1_ps(s)
#define K_MUL(a, b) _mm512_mul_ps(a, b)
#define K_FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define K_HSUM(v) cpu_hsum512(v)
#define K_ADD(a, b) _mm512_add_ps(a, b)
#define K_SUB(a, b) _mm512_sub_ps(a, b)
#define K_DIV(a, b) _mm512_div_ps(a, b)
#define K_MAX(a, b) _mm512_max_ps(a, b)
#define K_MIN(a, b) _mm512_min_ps(a, b)
#define K_HMAX(v) _mm512_reduce_max_ps(v)
#define K_SCALE2(p, n) _mm512_scalef_ps(p, n)
#define KHVEC __m256
#define KHL 8
#define KH_LOADN(p, n) _mm256_maskz_loadu_ps((__mmask8)((1u << (n)) - 1), p)
#define KH_STOREN(p, v, n) _mm256_mask_storeu_ps(p, (__mmask8)((1u << (n)) - 1), v)
#define KH_SET1(s) _mm256_set1_ps(s)
#define KH_MUL(a, b) _mm256_mul_ps(a, b)
#define KH_FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define K_EXP2I(e) _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(e), _mm512_set1_epi32(127)), 23))
#define K_LOADN(p, n) _mm512_maskz_loadu_ps((__mmask16)((1u << (n)) - 1), p)
#define K_STOREN(p, v, n) _mm512_mask_storeu_ps(p, (__mmask16)((1u << (n)) - 1), v)
#define KTR 6
#define KTC 4
#define KTC1 8
#define KISA QV_CPU_ISA_AVX512
#define KTABLE cpu_kernels_avx512

#include <math.h>


#include "backend/cpu/cpu_kern_impl.h"
#endif
