/* Quantized matmul and embedding on the CPU backend; the method is described in cpu_quant.h.
 *
 * Dequantizers: Q4_0, Q4_1, Q5_0 and Q8_0 have AVX2 versions written with intrinsics (multiply
 * then add, never fused, so the bits equal the reference's); the other types run the reference
 * dequantizer (src/quant/quant.c). Dot products: 8 (AVX2) or 16 (AVX-512) lanes of FMA
 * accumulators per weight row, reduced by a fixed tree; portable: 8 interleaved partial sums
 * combined as the fp32 matmul does. */
#include "backend/cpu/cpu_quant.h"

#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define QV_X86 1
#endif

#include "quant/quant.h"

#define QM_TILE 8 /* weight rows dequantized per tile */

typedef void (*dq_row_fn)(qv_dtype t, const void *src, float *dst, int64_t n);
/* out[r] = dot(x, w[r]) for r < nw (1..4), w rows of k floats; k a multiple of 32. */
typedef void (*dot_fn)(const float *x, const float *const *w, int nw, int64_t k, float *out);

typedef struct quant_isa {
  const char *name;
  dq_row_fn dequant;
  dot_fn dot;
} quant_isa;

typedef struct cpu_quant_ctx {
  const quant_isa *isa;
  float *scratch; /* [n_slots][QM_TILE][k] */
  size_t cap;     /* floats */
} cpu_quant_ctx;

/* ---- portable ---- */

static void dot_portable(const float *x, const float *const *w, int nw, int64_t k, float *out) {
  for (int r = 0; r < nw; r++) {
    const float *b = w[r];
    float acc[8] = {0};
    for (int64_t i = 0; i < k; i += 8)
      for (int l = 0; l < 8; l++) acc[l] += x[i + l] * b[i + l];
    out[r] = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  }
}

static const quant_isa isa_portable = {"portable", quant_dequant_row, dot_portable};

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
  default: dequant_ref_avx2(t, src, y, n); return;
  }
}

static AVX2 inline float hsum8_avx2(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

static AVX2 void dot_avx2(const float *x, const float *const *w, int nw, int64_t k, float *out) {
  if (nw == 4) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t i = 0; i < k; i += 8) {
      __m256 xv = _mm256_loadu_ps(x + i);
      a0 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w[0] + i), a0);
      a1 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w[1] + i), a1);
      a2 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w[2] + i), a2);
      a3 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w[3] + i), a3);
    }
    out[0] = hsum8_avx2(a0), out[1] = hsum8_avx2(a1), out[2] = hsum8_avx2(a2), out[3] = hsum8_avx2(a3);
    return;
  }
  for (int r = 0; r < nw; r++) {
    __m256 a = _mm256_setzero_ps();
    for (int64_t i = 0; i < k; i += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(w[r] + i), a);
    out[r] = hsum8_avx2(a);
  }
}

static const quant_isa isa_avx2 = {"avx2", dequant_avx2, dot_avx2};

/* ---- AVX-512F: AVX2 dequantizers, 16-lane dots (k is a multiple of 32) ---- */

#define AVX512 __attribute__((target("avx512f,avx2,fma,f16c")))

static AVX512 inline float hsum16_avx512(__m512 v) {
  __m256 s = _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  __m128 t = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  t = _mm_add_ps(t, _mm_movehl_ps(t, t));
  t = _mm_add_ss(t, _mm_movehdup_ps(t));
  return _mm_cvtss_f32(t);
}

static AVX512 void dot_avx512(const float *x, const float *const *w, int nw, int64_t k, float *out) {
  if (nw == 4) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t i = 0; i < k; i += 16) {
      __m512 xv = _mm512_loadu_ps(x + i);
      a0 = _mm512_fmadd_ps(xv, _mm512_loadu_ps(w[0] + i), a0);
      a1 = _mm512_fmadd_ps(xv, _mm512_loadu_ps(w[1] + i), a1);
      a2 = _mm512_fmadd_ps(xv, _mm512_loadu_ps(w[2] + i), a2);
      a3 = _mm512_fmadd_ps(xv, _mm512_loadu_ps(w[3] + i), a3);
    }
    out[0] = hsum16_avx512(a0), out[1] = hsum16_avx512(a1), out[2] = hsum16_avx512(a2), out[3] = hsum16_avx512(a3);
    return;
  }
  for (int r = 0; r < nw; r++) {
    __m512 a = _mm512_setzero_ps();
    for (int64_t i = 0; i < k; i += 16) a = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(w[r] + i), a);
    out[r] = hsum16_avx512(a);
  }
}

static const quant_isa isa_avx512 = {"avx512", dequant_avx2, dot_avx512};
#endif

/* The ISA for this machine, or the one QUIVER_CPU_ISA names when the machine has it. */
static const quant_isa *pick_isa(void) {
  const char *want = getenv("QUIVER_CPU_ISA");
#ifdef QV_X86
  __builtin_cpu_init();
  int has2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  int has512 = has2 && __builtin_cpu_supports("avx512f");
  if (want && !strcmp(want, "portable")) return &isa_portable;
  if (want && !strcmp(want, "avx2")) return has2 ? &isa_avx2 : &isa_portable;
  if (has512 && (!want || !strcmp(want, "avx512"))) return &isa_avx512;
  if (has2) return &isa_avx2;
#endif
  (void)want;
  return &isa_portable;
}

static cpu_quant_ctx *get_ctx(cpu_backend *c) {
  if (!c->quant) {
    cpu_quant_ctx *q = calloc(1, sizeof *q);
    if (!q) return NULL;
    q->isa = pick_isa();
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

const char *cpu_quant_isa(void) { return pick_isa()->name; }

/* ---- matmul ---- */

typedef struct qmm_ctx {
  const quant_isa *isa;
  float *out;
  const float *x, *bias;
  const uint8_t *w;
  qv_dtype wt;
  size_t row_bytes;
  int64_t n, m, k;
  int64_t tiles_per_task;
  float *scratch; /* [n_tasks][QM_TILE][k] */
} qmm_ctx;

static void qmm_task(void *arg, int task) {
  const qmm_ctx *c = arg;
  float *buf = c->scratch + (size_t)task * QM_TILE * (size_t)c->k;
  int64_t n_tiles = (c->m + QM_TILE - 1) / QM_TILE;
  int64_t t0 = (int64_t)task * c->tiles_per_task, t1 = t0 + c->tiles_per_task;
  if (t1 > n_tiles) t1 = n_tiles;
  for (int64_t t = t0; t < t1; t++) {
    int64_t j0 = t * QM_TILE, nj = c->m - j0 < QM_TILE ? c->m - j0 : QM_TILE;
    for (int64_t r = 0; r < nj; r++)
      c->isa->dequant(c->wt, c->w + (size_t)(j0 + r) * c->row_bytes, buf + (size_t)r * (size_t)c->k, c->k);
    for (int64_t i = 0; i < c->n; i++) {
      const float *xi = c->x + i * c->k;
      float *oi = c->out + i * c->m + j0;
      for (int64_t r = 0; r < nj; r += 4) {
        const float *wr[4];
        int nw = nj - r < 4 ? (int)(nj - r) : 4;
        for (int q = 0; q < nw; q++) wr[q] = buf + (size_t)(r + q) * (size_t)c->k;
        c->isa->dot(xi, wr, nw, c->k, oi + r);
      }
      if (c->bias)
        for (int64_t r = 0; r < nj; r++) oi[r] += c->bias[j0 + r];
    }
  }
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
  int64_t n_tiles = (w->rows + QM_TILE - 1) / QM_TILE;
  /* Contiguous ranges of tiles, a few per thread for balance; each task owns one scratch slot.
   * How rows are split among tasks never changes how a value is computed. */
  int64_t want = (int64_t)tp_n_threads(cb->pool) * 4;
  int64_t per = (n_tiles + want - 1) / want;
  int n_tasks = (int)((n_tiles + per - 1) / per);
  size_t need = (size_t)n_tasks * QM_TILE * (size_t)w->cols;
  if (need > q->cap) {
    float *s = realloc(q->scratch, need * sizeof *s);
    if (!s) return qv_error_set(&be->last_error, QV_ENOMEM, "cpu quant matmul: out of memory (%zu floats)", need);
    q->scratch = s;
    q->cap = need;
  }
  qmm_ctx c = {q->isa, out->data, x->data, bias ? bias->data : NULL, w->data, w->dtype,
               qv_dtype_row_bytes(w->dtype, w->cols), x->rows, w->rows, w->cols, per, q->scratch};
  if (2 * c.n * c.m * c.k < (1 << 15)) {
    for (int i = 0; i < n_tasks; i++) qmm_task(&c, i);
  } else {
    tp_run(cb->pool, n_tasks, qmm_task, &c);
  }
  return 0;
}
