/* Quantized matmul and embedding on the CPU backend; the method is described in cpu_quant.h.
 *
 * Dequantizers: every type has an AVX2 version written with intrinsics (multiply then add or
 * subtract, never fused, so the bits equal the reference's, src/quant/quant.c); the portable and
 * NEON paths run the reference. Dot products: the backend's f32 kernel table (cpu_kern.h) over
 * the dequantized rows, so the quantized path has the f32 GEMM's register and cache blocking
 * and its fixed reduction order per ISA. */
#include "backend/cpu/cpu_quant.h"

#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define QV_X86 1
#include "backend/cpu/cpu_hsum512.h"
#endif

#include "quant/quant.h"

typedef void (*dq_row_fn)(qv_dtype t, const void *src, float *dst, int64_t n);

typedef struct cpu_quant_ctx {
  float *scratch; /* [n_tasks][rows per block][k] */
  size_t cap;     /* floats */
} cpu_quant_ctx;

#ifdef QV_X86
/* ---- AVX2 + FMA ---- */

#define AVX2 __attribute__((target("avx2,fma,f16c")))

static AVX2 inline float f16_at_avx2(const uint8_t *p) {
  uint16_t h;
  memcpy(&h, p, 2);
  return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h)));
}

/* 32 nibble values of a 16-byte qs: low nibbles are elements 0..15, high 16..31; each group of 8
 * becomes (float)(v + bias) * d + m (m omitted when has_m is 0). */
static AVX2 inline void nib32_avx2(const uint8_t *qs, __m256i bias, __m256 d, __m256 m, int has_m, const __m256i *hi5,
                                   float *y) {
  __m128i q = _mm_loadu_si128((const __m128i *)qs), mask = _mm_set1_epi8(0x0F);
  __m128i lo = _mm_and_si128(q, mask), hi = _mm_and_si128(_mm_srli_epi16(q, 4), mask);
  __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
  for (int p = 0; p < 4; p++) {
    __m256i v = _mm256_cvtepu8_epi32(parts[p]);
    if (hi5) v = _mm256_or_si256(v, hi5[p]);
    v = _mm256_add_epi32(v, bias);
    __m256 f = _mm256_mul_ps(d, _mm256_cvtepi32_ps(v));
    if (has_m) f = _mm256_add_ps(f, m);
    _mm256_storeu_ps(y + 8 * p, f);
  }
}

/* The fifth bits of Q5 blocks, as 0 or 16 per element, for elements 8p..8p+7. */
static AVX2 inline void q5_high_avx2(uint32_t qh, __m256i out[4]) {
  __m256i v = _mm256_set1_epi32((int)qh), one = _mm256_set1_epi32(1);
  for (int p = 0; p < 4; p++) {
    __m256i sh = _mm256_setr_epi32(8 * p, 8 * p + 1, 8 * p + 2, 8 * p + 3, 8 * p + 4, 8 * p + 5, 8 * p + 6, 8 * p + 7);
    out[p] = _mm256_slli_epi32(_mm256_and_si256(_mm256_srlv_epi32(v, sh), one), 4);
  }
}

/* Types without a SIMD version use the reference with this ISA's code generation. */
static AVX2 void dequant_ref_avx2(qv_dtype t, const void *src, float *dst, int64_t n) { quant_dequant_row(t, src, dst, n); }

/* 8 bytes at p widened to 8 int32 lanes. */
static AVX2 inline __m256i u8x8_avx2(const uint8_t *p) { return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)); }

/* The 6-bit scale and min of sub-block j of a Q4_K/Q5_K super-block (as src/quant's k_scale_min). */
static inline void kq_scale_min(int j, const uint8_t *q, int *sc, int *mn) {
  if (j < 4) {
    *sc = q[j] & 63;
    *mn = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

/* One Q4_K (hb == NULL) or Q5_K super-block of 256: sub-block j of 32 is d*sc_j * q - dmin*m_j,
 * q the low (even j) or high (odd j) nibbles of 32 bytes, plus 16 * bit j of qh in Q5_K. */
static AVX2 void dq_k45_avx2(const uint8_t *b, const uint8_t *qh, const uint8_t *q, float *y) {
  float d = f16_at_avx2(b), dmin = f16_at_avx2(b + 2);
  const __m256i m4 = _mm256_set1_epi32(0xF), one = _mm256_set1_epi32(1);
  for (int j = 0; j < 8; j++) {
    int sc, mn;
    kq_scale_min(j, b + 4, &sc, &mn);
    __m256 dv = _mm256_set1_ps(d * (float)sc), nv = _mm256_set1_ps(dmin * (float)mn);
    const uint8_t *qq = q + 32 * (j / 2);
    for (int p = 0; p < 4; p++) {
      __m256i v = u8x8_avx2(qq + 8 * p);
      v = (j & 1) ? _mm256_srli_epi32(v, 4) : _mm256_and_si256(v, m4);
      if (qh) v = _mm256_add_epi32(v, _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(u8x8_avx2(qh + 8 * p), j), one), 4));
      _mm256_storeu_ps(y + 32 * j + 8 * p, _mm256_sub_ps(_mm256_mul_ps(dv, _mm256_cvtepi32_ps(v)), nv));
    }
  }
}

/* One Q6_K super-block of 256: two halves of 128; in a half, element l + 32 s (s < 4, l < 32) is
 * (d * sc[l / 16 + 2 s]) * (q - 32), q 4 bits of ql (low nibbles of bytes l and l + 32 for s 0,
 * 1, high nibbles for s 2, 3) and 2 bits (2 s) of qh[l]. */
static AVX2 void dq_q6k_avx2(const uint8_t *b, float *y) {
  const uint8_t *ql = b, *qh = b + 128;
  const int8_t *sc = (const int8_t *)(b + 192);
  float d = f16_at_avx2(b + 208);
  const __m256i m4 = _mm256_set1_epi32(0xF), m2 = _mm256_set1_epi32(3), off = _mm256_set1_epi32(32);
  for (int h = 0; h < 2; h++, ql += 64, qh += 32, sc += 8, y += 128)
    for (int s = 0; s < 4; s++)
      for (int p = 0; p < 4; p++) {
        int l = 8 * p;
        __m256i lo = u8x8_avx2(ql + l + 32 * (s & 1));
        lo = s < 2 ? _mm256_and_si256(lo, m4) : _mm256_srli_epi32(lo, 4);
        __m256i hi = _mm256_and_si256(_mm256_srli_epi32(u8x8_avx2(qh + l), 2 * s), m2);
        __m256i v = _mm256_sub_epi32(_mm256_or_si256(lo, _mm256_slli_epi32(hi, 4)), off);
        __m256 dv = _mm256_set1_ps(d * (float)sc[l / 16 + 2 * s]);
        _mm256_storeu_ps(y + l + 32 * s, _mm256_mul_ps(dv, _mm256_cvtepi32_ps(v)));
      }
}

static AVX2 void dequant_avx2(qv_dtype t, const void *src, float *y, int64_t n) {
  const uint8_t *b = src;
  __m256 zero = _mm256_setzero_ps();
  switch (t) {
  case QV_DTYPE_Q8_0:
    for (int64_t i = 0; i < n; i += 32, b += 34) {
      __m256 d = _mm256_set1_ps(f16_at_avx2(b));
      for (int p = 0; p < 4; p++) {
        __m256i v = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b + 2 + 8 * p)));
        _mm256_storeu_ps(y + i + 8 * p, _mm256_mul_ps(d, _mm256_cvtepi32_ps(v)));
      }
    }
    return;
  case QV_DTYPE_Q4_0:
    for (int64_t i = 0; i < n; i += 32, b += 18)
      nib32_avx2(b + 2, _mm256_set1_epi32(-8), _mm256_set1_ps(f16_at_avx2(b)), zero, 0, NULL, y + i);
    return;
  case QV_DTYPE_Q4_1:
    for (int64_t i = 0; i < n; i += 32, b += 20)
      nib32_avx2(b + 4, _mm256_setzero_si256(), _mm256_set1_ps(f16_at_avx2(b)), _mm256_set1_ps(f16_at_avx2(b + 2)), 1,
                 NULL, y + i);
    return;
  case QV_DTYPE_Q5_0:
    for (int64_t i = 0; i < n; i += 32, b += 22) {
      uint32_t qh;
      memcpy(&qh, b + 2, 4);
      __m256i h[4];
      q5_high_avx2(qh, h);
      nib32_avx2(b + 6, _mm256_set1_epi32(-16), _mm256_set1_ps(f16_at_avx2(b)), zero, 0, h, y + i);
    }
    return;
  case QV_DTYPE_Q5_1:
    for (int64_t i = 0; i < n; i += 32, b += 24) {
      uint32_t qh;
      memcpy(&qh, b + 4, 4);
      __m256i h[4];
      q5_high_avx2(qh, h);
      nib32_avx2(b + 8, _mm256_setzero_si256(), _mm256_set1_ps(f16_at_avx2(b)), _mm256_set1_ps(f16_at_avx2(b + 2)), 1, h,
                 y + i);
    }
    return;
  case QV_DTYPE_Q4_K:
    for (int64_t i = 0; i < n; i += 256, b += 144) dq_k45_avx2(b, NULL, b + 16, y + i);
    return;
  case QV_DTYPE_Q5_K:
    for (int64_t i = 0; i < n; i += 256, b += 176) dq_k45_avx2(b, b + 16, b + 48, y + i);
    return;
  case QV_DTYPE_Q6_K:
    for (int64_t i = 0; i < n; i += 256, b += 210) dq_q6k_avx2(b, y + i);
    return;
  default: dequant_ref_avx2(t, src, y, n); return;
  }
}


/* ---- AVX-512: fused single-row GEMV for the 32-element types ----
 * For one activation row (decode), a block of 32 weights is decoded straight into two 16-lane
 * registers and multiplied into the accumulators: no scratch round trip and half the
 * instructions of the 8-lane dequantizer. The chain is the AVX-512 f32 kernel's (16 lanes,
 * acc = fma(x, w, acc) over k in increasing order, the same horizontal tree, then + bias), and
 * the decoded values are the reference's bits (multiply, then add, never fused), so a row
 * computed here equals the same row inside a batch (tests/unit/test_quant.c checks it). */

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))

static AVX512 inline __attribute__((always_inline)) float f16_at_avx512(const uint8_t *p) {
  uint16_t h;
  memcpy(&h, p, 2);
  return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h)));
}

/* The fifth bits of a Q5 block as 0 or 16, for elements 16 h .. 16 h + 15. */
static AVX512 inline __attribute__((always_inline)) __m512i q5_high_avx512(uint32_t qh, int h) {
  __m512i sh = _mm512_add_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(16 * h));
  return _mm512_slli_epi32(_mm512_and_si512(_mm512_srlv_epi32(_mm512_set1_epi32((int)qh), sh), _mm512_set1_epi32(1)), 4);
}

/* Block b of type T as elements 0..15 (*lo) and 16..31 (*hi), bit-exact with src/quant. */
static AVX512 inline __attribute__((always_inline)) void blk32_avx512(const qv_dtype T, const uint8_t *b, __m512 *lo, __m512 *hi) {
  const __m512i m4 = _mm512_set1_epi32(0xF);
  if (T == QV_DTYPE_Q8_0) {
    __m512 d = _mm512_set1_ps(f16_at_avx512(b));
    *lo = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b + 2)))));
    *hi = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b + 18)))));
    return;
  }
  const int has_m = T == QV_DTYPE_Q4_1 || T == QV_DTYPE_Q5_1, five = T == QV_DTYPE_Q5_0 || T == QV_DTYPE_Q5_1;
  const uint8_t *qs = b + 2 + 2 * has_m + 4 * five;
  __m512 d = _mm512_set1_ps(f16_at_avx512(b)), m = _mm512_set1_ps(has_m ? f16_at_avx512(b + 2) : 0.0f);
  __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)qs));
  __m512i vl = _mm512_and_si512(q, m4), vh = _mm512_srli_epi32(q, 4);
  if (five) {
    uint32_t qh;
    memcpy(&qh, b + 2 + 2 * has_m, 4);
    vl = _mm512_or_si512(vl, q5_high_avx512(qh, 0));
    vh = _mm512_or_si512(vh, q5_high_avx512(qh, 1));
  }
  if (!has_m) {
    __m512i off = _mm512_set1_epi32(five ? 16 : 8);
    vl = _mm512_sub_epi32(vl, off);
    vh = _mm512_sub_epi32(vh, off);
  }
  *lo = _mm512_mul_ps(d, _mm512_cvtepi32_ps(vl));
  *hi = _mm512_mul_ps(d, _mm512_cvtepi32_ps(vh));
  if (has_m) {
    *lo = _mm512_add_ps(*lo, m);
    *hi = _mm512_add_ps(*hi, m);
  }
}


/* out[j] = dot(x, w[j]) (+ bias[j]) for R consecutive weight rows from j. pf (or NULL): the
 * next R rows, prefetched into L2 while these are read, as many bytes per block as are read:
 * quantized rows are a few hundred bytes, far too short for the hardware prefetcher to start. */
static AVX512 inline __attribute__((always_inline)) void gemv_rows_avx512(const float *x, const uint8_t *w, size_t row_bytes, size_t blk_bytes,
                                           int64_t k, const float *bias, float *out, const int R, const qv_dtype T,
                                           const uint8_t *pf) {
  __m512 acc[4];
  for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
  for (int64_t i = 0; i < k; i += 32) {
    if (pf) {
      for (size_t off = 0; off < (size_t)R * blk_bytes; off += 64) _mm_prefetch((const char *)pf + off, _MM_HINT_T1);
      pf += (size_t)R * blk_bytes;
    }
    __m512 xl = _mm512_loadu_ps(x + i), xh = _mm512_loadu_ps(x + i + 16);
    const uint8_t *b = w + (size_t)(i / 32) * blk_bytes;
    for (int r = 0; r < R; r++) {
      __m512 lo, hi;
      blk32_avx512(T, b + (size_t)r * row_bytes, &lo, &hi);
      acc[r] = _mm512_fmadd_ps(xl, lo, acc[r]);
      acc[r] = _mm512_fmadd_ps(xh, hi, acc[r]);
    }
  }
  for (int r = 0; r < R; r++) {
    float v = cpu_hsum512(acc[r]);
    if (bias) v += bias[r];
    out[r] = v;
  }
}

#define GEMV_DEF(T, name)                                                                                             \
  static AVX512 void name(const float *x, const uint8_t *w, size_t rb, size_t bb, int64_t k, const float *bias,      \
                          float *out, int64_t nrows) {                                                               \
    int64_t j = 0;                                                                                                    \
    for (; j + 4 <= nrows; j += 4)                                                                                    \
      gemv_rows_avx512(x, w + (size_t)j * rb, rb, bb, k, bias ? bias + j : NULL, out + j, 4, T,                       \
                       j + 8 <= nrows ? w + (size_t)(j + 4) * rb : NULL);                                            \
    for (; j < nrows; j++)                                                                                            \
      gemv_rows_avx512(x, w + (size_t)j * rb, rb, bb, k, bias ? bias + j : NULL, out + j, 1, T, NULL);                \
  }
GEMV_DEF(QV_DTYPE_Q8_0, gemv_q8_0_avx512)
GEMV_DEF(QV_DTYPE_Q4_0, gemv_q4_0_avx512)
GEMV_DEF(QV_DTYPE_Q4_1, gemv_q4_1_avx512)
GEMV_DEF(QV_DTYPE_Q5_0, gemv_q5_0_avx512)
GEMV_DEF(QV_DTYPE_Q5_1, gemv_q5_1_avx512)

/* ---- AVX-512: fused single-row GEMV for Q4_K and Q6_K (super-blocks of 256) ----
 * The same chain as above (16 lanes, fma over k in increasing order, the same tree, + bias);
 * each 16-element piece is decoded as dq_k45_avx2 / dq_q6k_avx2 decode it (the scale products
 * in float, multiply then subtract, never fused), so the bits equal the dequantizing path's. */

/* 16 bytes at p widened to 16 int32 lanes. */
static AVX512 inline __attribute__((always_inline)) __m512i u8x16_avx512(const uint8_t *p) {
  return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
}

/* Elements 16 t .. 16 t + 15 of sub-block j (of 32) of a Q4_K super-block b. */
static AVX512 inline __attribute__((always_inline)) __m512 q4k16_avx512(const uint8_t *b, float d, float dmin, int j,
                                                                       int t) {
  int sc, mn;
  kq_scale_min(j, b + 4, &sc, &mn);
  __m512i v = u8x16_avx512(b + 16 + 32 * (j / 2) + 16 * t);
  v = (j & 1) ? _mm512_srli_epi32(v, 4) : _mm512_and_si512(v, _mm512_set1_epi32(0xF));
  return _mm512_sub_ps(_mm512_mul_ps(_mm512_set1_ps(d * (float)sc), _mm512_cvtepi32_ps(v)), _mm512_set1_ps(dmin * (float)mn));
}

/* Elements 128 h + 32 s + 16 t .. + 15 of a Q6_K super-block b (see dq_q6k_avx2's layout). */
static AVX512 inline __attribute__((always_inline)) __m512 q6k16_avx512(const uint8_t *b, float d, int h, int s, int t) {
  const uint8_t *ql = b + 64 * h, *qh = b + 128 + 32 * h;
  const int8_t *sc = (const int8_t *)(b + 192) + 8 * h;
  int l = 16 * t;
  __m512i lo = u8x16_avx512(ql + l + 32 * (s & 1));
  lo = s < 2 ? _mm512_and_si512(lo, _mm512_set1_epi32(0xF)) : _mm512_srli_epi32(lo, 4);
  __m512i hi = _mm512_and_si512(_mm512_srli_epi32(u8x16_avx512(qh + l), 2 * s), _mm512_set1_epi32(3));
  __m512i v = _mm512_sub_epi32(_mm512_or_si512(lo, _mm512_slli_epi32(hi, 4)), _mm512_set1_epi32(32));
  return _mm512_mul_ps(_mm512_set1_ps(d * (float)sc[t + 2 * s]), _mm512_cvtepi32_ps(v));
}

/* out[j] = dot(x, w[j]) (+ bias[j]) for R consecutive rows of Q4_K or Q6_K; pf as in
 * gemv_rows_avx512. */
static AVX512 inline __attribute__((always_inline)) void gemv_rows_k_avx512(const float *x, const uint8_t *w,
                                                                           size_t row_bytes, int64_t k,
                                                                           const float *bias, float *out, const int R,
                                                                           const qv_dtype T, const uint8_t *pf) {
  const size_t bb = T == QV_DTYPE_Q4_K ? 144 : 210;
  __m512 acc[4];
  for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
  for (int64_t i = 0; i < k; i += 256) {
    if (pf) {
      for (size_t off = 0; off < (size_t)R * bb; off += 64) _mm_prefetch((const char *)pf + off, _MM_HINT_T1);
      pf += (size_t)R * bb;
    }
    const uint8_t *b0 = w + (size_t)(i / 256) * bb;
    float d[4], dm[4];
    for (int r = 0; r < R; r++) {
      d[r] = f16_at_avx512(b0 + (size_t)r * row_bytes + (T == QV_DTYPE_Q4_K ? 0 : 208));
      dm[r] = T == QV_DTYPE_Q4_K ? f16_at_avx512(b0 + (size_t)r * row_bytes + 2) : 0.0f;
    }
    for (int e = 0; e < 256; e += 16) { /* elements i + e .. i + e + 15, in order */
      __m512 xv = _mm512_loadu_ps(x + i + e);
      for (int r = 0; r < R; r++) {
        const uint8_t *b = b0 + (size_t)r * row_bytes;
        __m512 wv = T == QV_DTYPE_Q4_K ? q4k16_avx512(b, d[r], dm[r], e / 32, (e / 16) & 1)
                                       : q6k16_avx512(b, d[r], e / 128, (e / 32) & 3, (e / 16) & 1);
        acc[r] = _mm512_fmadd_ps(xv, wv, acc[r]);
      }
    }
  }
  for (int r = 0; r < R; r++) {
    float v = cpu_hsum512(acc[r]);
    if (bias) v += bias[r];
    out[r] = v;
  }
}

#define GEMV_K_DEF(T, name)                                                                                       \
  static AVX512 void name(const float *x, const uint8_t *w, size_t rb, size_t bb, int64_t k, const float *bias,  \
                          float *out, int64_t nrows) {                                                           \
    (void)bb;                                                                                                     \
    int64_t j = 0;                                                                                                \
    for (; j + 4 <= nrows; j += 4)                                                                                \
      gemv_rows_k_avx512(x, w + (size_t)j * rb, rb, k, bias ? bias + j : NULL, out + j, 4, T,                     \
                         j + 8 <= nrows ? w + (size_t)(j + 4) * rb : NULL);                                      \
    for (; j < nrows; j++)                                                                                        \
      gemv_rows_k_avx512(x, w + (size_t)j * rb, rb, k, bias ? bias + j : NULL, out + j, 1, T, NULL);              \
  }
GEMV_K_DEF(QV_DTYPE_Q4_K, gemv_q4_k_avx512)
GEMV_K_DEF(QV_DTYPE_Q6_K, gemv_q6_k_avx512)
#endif

/* The dequantizer of a kernel path: AVX2's on x86 paths with AVX2 (AVX-512 implies it), else the
 * reference. Both give the same bits. */
typedef void (*gemv_fn)(const float *x, const uint8_t *w, size_t rb, size_t bb, int64_t k, const float *bias, float *out,
                        int64_t nrows);

/* The fused single-row GEMV of a kernel path and weight type, or NULL (then the row goes through
 * dequantization and the f32 kernel, the same bits). */
static gemv_fn fused_gemv(qv_cpu_isa isa, qv_dtype t) {
#ifdef QV_X86
  if (isa == QV_CPU_ISA_AVX512) switch (t) {
    case QV_DTYPE_Q8_0: return gemv_q8_0_avx512;
    case QV_DTYPE_Q4_0: return gemv_q4_0_avx512;
    case QV_DTYPE_Q4_1: return gemv_q4_1_avx512;
    case QV_DTYPE_Q5_0: return gemv_q5_0_avx512;
    case QV_DTYPE_Q5_1: return gemv_q5_1_avx512;
    case QV_DTYPE_Q4_K: return gemv_q4_k_avx512;
    case QV_DTYPE_Q6_K: return gemv_q6_k_avx512;
    default: break;
    }
#endif
  (void)isa, (void)t;
  return NULL;
}

static dq_row_fn dequantizer(qv_cpu_isa isa) {
#ifdef QV_X86
  if (isa == QV_CPU_ISA_AVX2 || isa == QV_CPU_ISA_AVX512) return dequant_avx2;
#endif
  (void)isa;
  return quant_dequant_row;
}

static cpu_quant_ctx *get_ctx(cpu_backend *c) {
  if (!c->quant) {
    cpu_quant_ctx *q = calloc(1, sizeof *q);
    if (!q) return NULL;
    c->quant = q;
  }
  return c->quant;
}

void cpu_quant_free(cpu_backend *c) {
  cpu_quant_ctx *q = c->quant;
  if (q) free(q->scratch);
  free(q);
  c->quant = NULL;
}

/* ---- matmul ---- */

typedef struct qmm_ctx {
  const cpu_kernels *kern;
  dq_row_fn dequant;
  gemv_fn gemv; /* the fused single-row path, used when n == 1 (NULL: none) */
  float *out;
  const float *x, *bias;
  const uint8_t *w;
  qv_dtype wt;
  size_t row_bytes;
  int64_t n, m, k;
  int64_t rows_per_task, rows_per_block;
  float *scratch; /* [n_tasks][rows_per_block][k] */
} qmm_ctx;

/* A task's weight rows, a block at a time: dequantize the block into the task's scratch, then
 * the f32 kernel computes every activation row against it (a block is decoded once per call,
 * whatever the number of rows). */
static void qmm_task(void *arg, int task) {
  const qmm_ctx *c = arg;
  float *buf = c->scratch + (size_t)task * (size_t)c->rows_per_block * (size_t)c->k;
  int64_t j0 = (int64_t)task * c->rows_per_task, j1 = j0 + c->rows_per_task;
  if (j1 > c->m) j1 = c->m;
  if (c->gemv && c->n == 1) {
    c->gemv(c->x, c->w + (size_t)j0 * c->row_bytes, c->row_bytes, qv_dtype_row_bytes(c->wt, 32), c->k,
            c->bias ? c->bias + j0 : NULL, c->out + j0, j1 - j0);
    return;
  }
  for (int64_t jb = j0; jb < j1; jb += c->rows_per_block) {
    int64_t nj = j1 - jb < c->rows_per_block ? j1 - jb : c->rows_per_block;
    for (int64_t r = 0; r < nj; r++) {
      /* The row a block later, into L2 (rows are too short for the hardware prefetcher). */
      if (jb + nj + r < j1) {
        const char *nx = (const char *)c->w + (size_t)(jb + nj + r) * c->row_bytes;
        for (size_t off = 0; off < c->row_bytes; off += 64) __builtin_prefetch(nx + off, 0, 2);
      }
      c->dequant(c->wt, c->w + (size_t)(jb + r) * c->row_bytes, buf + (size_t)r * (size_t)c->k, c->k);
    }
    cpu_mm_args a = {.out = c->out + jb, .x = c->x, .w = buf, .bias = c->bias ? c->bias + jb : NULL,
                     .wt = QV_DTYPE_F32, .n = c->n, .m = nj, .k = c->k, .ldo = c->m, .ldx = c->k};
    c->kern->matmul(&a, 0, c->n, 0, nj);
  }
}

/* Weight rows dequantized at once: 8 for a few activation rows (the block stays in L1 next to
 * the GEMV), else as many as fit ~128 KiB of L2 (up to 64), so the activation rows are streamed
 * once per block. A multiple of 8 (the kernels' GEMV tile). */
static int64_t rows_per_block(int64_t n, int64_t k) {
  if (n < 4) return 8;
  int64_t r = (128 * 1024) / (k * (int64_t)sizeof(float));
  r -= r % 8;
  return r < 8 ? 8 : r > 64 ? 64 : r;
}

int cpu_quant_matmul(qv_backend *be, qv_tensor *out, const qv_tensor *x, const qv_tensor *w, const qv_tensor *bias) {
  cpu_backend *cb = (cpu_backend *)be;
  if (!qv_dtype_is_quant(w->dtype) || !w->data || !x || x->dtype != QV_DTYPE_F32 || !out || out->dtype != QV_DTYPE_F32 ||
      x->cols != w->cols || out->rows != x->rows || out->cols != w->rows || w->cols % 32 ||
      (bias && (bias->dtype != QV_DTYPE_F32 || bias->rows * bias->cols != w->rows)))
    return qv_error_set(&be->last_error, QV_EINVAL, "cpu quant matmul: shapes [%lld][%lld] x %s [%lld][%lld]^T -> [%lld][%lld]",
                        (long long)x->rows, (long long)x->cols, qv_dtype_name(w->dtype), (long long)w->rows,
                        (long long)w->cols, (long long)out->rows, (long long)out->cols);
  cpu_quant_ctx *q = get_ctx(cb);
  if (!q) return qv_error_set(&be->last_error, QV_ENOMEM, "cpu quant matmul: out of memory");
  int64_t blk = rows_per_block(x->rows, w->cols);
  /* Contiguous ranges of whole 8-row groups, a few per thread for balance; each task owns one
   * scratch slot. How rows are split among tasks and blocks never changes how a value is
   * computed (each output is one chain of the kernel path). */
  int64_t groups = (w->rows + 7) / 8, want = (int64_t)tp_n_threads(cb->pool) * 4;
  int64_t per = 8 * ((groups + want - 1) / want);
  int n_tasks = (int)((w->rows + per - 1) / per);
  if (blk > per) blk = per;
  size_t need = (size_t)n_tasks * (size_t)blk * (size_t)w->cols;
  if (need > q->cap) {
    float *s = realloc(q->scratch, need * sizeof *s);
    if (!s) return qv_error_set(&be->last_error, QV_ENOMEM, "cpu quant matmul: out of memory (%zu floats)", need);
    q->scratch = s;
    q->cap = need;
  }
  qmm_ctx c = {cb->kern, dequantizer(cb->kern->isa), fused_gemv(cb->kern->isa, w->dtype), out->data, x->data, bias ? bias->data : NULL, w->data, w->dtype,
               qv_dtype_row_bytes(w->dtype, w->cols), x->rows, w->rows, w->cols, per, blk, q->scratch};
  if (2 * c.n * c.m * c.k < (1 << 15)) {
    for (int i = 0; i < n_tasks; i++) qmm_task(&c, i);
  } else {
    tp_run(cb->pool, n_tasks, qmm_task, &c);
  }
  return 0;
}
