/* Scalar reference dequantization of ggml's block formats (layouts in quant.h). Each function
 * computes exactly the float expression the comment in quant.h gives, in that order and without
 * fused multiply-adds (the build is ISO C, so the compiler does not contract), which is also
 * what gguf-py's numpy dequantizer and hence transformers compute. */
#include "quant/quant.h"

#include <stdio.h>
#include <string.h>

#include "core/util.h"

int quant_dtype_from_ggml(uint32_t g, qv_dtype *out) {
  switch (g) {
  case GGML_TYPE_F32: *out = QV_DTYPE_F32; return 0;
  case GGML_TYPE_F16: *out = QV_DTYPE_F16; return 0;
  case GGML_TYPE_BF16: *out = QV_DTYPE_BF16; return 0;
  case GGML_TYPE_Q8_0: *out = QV_DTYPE_Q8_0; return 0;
  case GGML_TYPE_Q4_0: *out = QV_DTYPE_Q4_0; return 0;
  case GGML_TYPE_Q4_1: *out = QV_DTYPE_Q4_1; return 0;
  case GGML_TYPE_Q5_0: *out = QV_DTYPE_Q5_0; return 0;
  case GGML_TYPE_Q5_1: *out = QV_DTYPE_Q5_1; return 0;
  case GGML_TYPE_Q4_K: *out = QV_DTYPE_Q4_K; return 0;
  case GGML_TYPE_Q5_K: *out = QV_DTYPE_Q5_K; return 0;
  case GGML_TYPE_Q6_K: *out = QV_DTYPE_Q6_K; return 0;
  default: return -1;
  }
}

const char *quant_ggml_type_name(uint32_t g, char *buf, int cap) {
  static const char *names[] = {"F32",  "F16",    "Q4_0",   "Q4_1",  "Q4_2", "Q4_3",  "Q5_0",  "Q5_1",
                                "Q8_0", "Q8_1",   "Q2_K",   "Q3_K",  "Q4_K", "Q5_K",  "Q6_K",  "Q8_K",
                                "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS",
                                "I8",   "I16",    "I32",    "I64",   "F64",  "IQ1_M", "BF16"};
  if (g < sizeof names / sizeof names[0]) return names[g];
  snprintf(buf, (size_t)cap, "type %u", g);
  return buf;
}

static inline float f16_at(const uint8_t *p) {
  uint16_t h;
  memcpy(&h, p, 2);
  return qv_f16_to_f32(h);
}

/* The 6-bit scale and min of sub-block j of a Q4_K/Q5_K super-block (ggml's packing: the
 * first four pairs in the low 6 bits of bytes 0..7, the last four split over bytes 8..11 and
 * the top 2 bits of bytes 0..7). */
static inline void k_scale_min(int j, const uint8_t *q, int *sc, int *mn) {
  if (j < 4) {
    *sc = q[j] & 63;
    *mn = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

static void dq_q8_0(const uint8_t *b, float *y) {
  float d = f16_at(b);
  for (int j = 0; j < 32; j++) y[j] = d * (float)(int8_t)b[2 + j];
}

static void dq_q4_0(const uint8_t *b, float *y) {
  float d = f16_at(b);
  const uint8_t *qs = b + 2;
  for (int j = 0; j < 16; j++) {
    y[j] = d * (float)((qs[j] & 0xF) - 8);
    y[j + 16] = d * (float)((qs[j] >> 4) - 8);
  }
}

static void dq_q4_1(const uint8_t *b, float *y) {
  float d = f16_at(b), m = f16_at(b + 2);
  const uint8_t *qs = b + 4;
  for (int j = 0; j < 16; j++) {
    y[j] = d * (float)(qs[j] & 0xF) + m;
    y[j + 16] = d * (float)(qs[j] >> 4) + m;
  }
}

static void dq_q5_0(const uint8_t *b, float *y) {
  float d = f16_at(b);
  uint32_t qh;
  memcpy(&qh, b + 2, 4);
  const uint8_t *qs = b + 6;
  for (int j = 0; j < 16; j++) {
    int h0 = (int)((qh >> j) & 1) << 4, h1 = (int)((qh >> (j + 16)) & 1) << 4;
    y[j] = d * (float)(((qs[j] & 0xF) | h0) - 16);
    y[j + 16] = d * (float)(((qs[j] >> 4) | h1) - 16);
  }
}

static void dq_q5_1(const uint8_t *b, float *y) {
  float d = f16_at(b), m = f16_at(b + 2);
  uint32_t qh;
  memcpy(&qh, b + 4, 4);
  const uint8_t *qs = b + 8;
  for (int j = 0; j < 16; j++) {
    int h0 = (int)((qh >> j) & 1) << 4, h1 = (int)((qh >> (j + 16)) & 1) << 4;
    y[j] = d * (float)((qs[j] & 0xF) | h0) + m;
    y[j + 16] = d * (float)((qs[j] >> 4) | h1) + m;
  }
}

static void dq_q4_k(const uint8_t *b, float *y) {
  float d = f16_at(b), dmin = f16_at(b + 2);
  const uint8_t *sc = b + 4, *q = b + 16;
  for (int j = 0; j < 8; j += 2) {
    int s0, m0, s1, m1;
    k_scale_min(j, sc, &s0, &m0);
    k_scale_min(j + 1, sc, &s1, &m1);
    float d0 = d * (float)s0, n0 = dmin * (float)m0, d1 = d * (float)s1, n1 = dmin * (float)m1;
    for (int l = 0; l < 32; l++) y[l] = d0 * (float)(q[l] & 0xF) - n0;
    for (int l = 0; l < 32; l++) y[32 + l] = d1 * (float)(q[l] >> 4) - n1;
    y += 64;
    q += 32;
  }
}

static void dq_q5_k(const uint8_t *b, float *y) {
  float d = f16_at(b), dmin = f16_at(b + 2);
  const uint8_t *sc = b + 4, *qh = b + 16, *ql = b + 48;
  for (int j = 0, sh = 0; j < 8; j += 2, sh += 2) {
    int s0, m0, s1, m1;
    k_scale_min(j, sc, &s0, &m0);
    k_scale_min(j + 1, sc, &s1, &m1);
    float d0 = d * (float)s0, n0 = dmin * (float)m0, d1 = d * (float)s1, n1 = dmin * (float)m1;
    for (int l = 0; l < 32; l++) y[l] = d0 * (float)((ql[l] & 0xF) + (((qh[l] >> sh) & 1) << 4)) - n0;
    for (int l = 0; l < 32; l++) y[32 + l] = d1 * (float)((ql[l] >> 4) + (((qh[l] >> (sh + 1)) & 1) << 4)) - n1;
    y += 64;
    ql += 32;
  }
}

static void dq_q6_k(const uint8_t *b, float *y) {
  const uint8_t *ql = b, *qh = b + 128;
  const int8_t *sc = (const int8_t *)(b + 192);
  float d = f16_at(b + 208);
  for (int n = 0; n < 2; n++) {
    for (int l = 0; l < 32; l++) {
      int is = l / 16;
      int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = (d * (float)sc[is + 0]) * (float)q1;
      y[l + 32] = (d * (float)sc[is + 2]) * (float)q2;
      y[l + 64] = (d * (float)sc[is + 4]) * (float)q3;
      y[l + 96] = (d * (float)sc[is + 6]) * (float)q4;
    }
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}

void quant_dequant_row(qv_dtype t, const void *src, float *dst, int64_t n) {
  if (!qv_dtype_is_quant(t)) {
    qv_convert_to_f32(dst, src, t, (size_t)n);
    return;
  }
  const uint8_t *b = src;
  int32_t be = qv_dtype_block_elems(t);
  size_t bb = qv_dtype_block_bytes(t);
  void (*fn)(const uint8_t *, float *) = NULL;
  switch (t) {
  case QV_DTYPE_Q8_0: fn = dq_q8_0; break;
  case QV_DTYPE_Q4_0: fn = dq_q4_0; break;
  case QV_DTYPE_Q4_1: fn = dq_q4_1; break;
  case QV_DTYPE_Q5_0: fn = dq_q5_0; break;
  case QV_DTYPE_Q5_1: fn = dq_q5_1; break;
  case QV_DTYPE_Q4_K: fn = dq_q4_k; break;
  case QV_DTYPE_Q5_K: fn = dq_q5_k; break;
  case QV_DTYPE_Q6_K: fn = dq_q6_k; break;
  default: return;
  }
  for (int64_t i = 0; i < n / be; i++) fn(b + (size_t)i * bb, dst + i * be);
}

/* Offsets of the f16 scale fields inside a block, -1 terminated. */
static const int *scale_offsets(qv_dtype t) {
  static const int d0[] = {0, -1}, dm[] = {0, 2, -1}, q6[] = {208, -1};
  switch (t) {
  case QV_DTYPE_Q8_0: case QV_DTYPE_Q4_0: case QV_DTYPE_Q5_0: return d0;
  case QV_DTYPE_Q4_1: case QV_DTYPE_Q5_1: case QV_DTYPE_Q4_K: case QV_DTYPE_Q5_K: return dm;
  case QV_DTYPE_Q6_K: return q6;
  default: return d0 + 1;
  }
}

void quant_fill_random(qv_dtype t, void *dst, int64_t n_blocks, uint64_t seed) {
  size_t bb = qv_dtype_block_bytes(t);
  uint8_t *p = dst;
  uint64_t s = seed;
  for (size_t i = 0; i < (size_t)n_blocks * bb; i++) p[i] = (uint8_t)(qv_splitmix64(&s) >> 56);
  const int *off = scale_offsets(t);
  for (int64_t b = 0; b < n_blocks; b++)
    for (int k = 0; off[k] >= 0; k++) {
      /* uniform in (-1, 1) times 2^-4, as f16 */
      double u = (double)(qv_splitmix64(&s) >> 11) / 9007199254740992.0 * 2.0 - 1.0;
      uint16_t h = qv_f32_to_f16((float)(u / 16.0));
      memcpy(p + (size_t)b * bb + (size_t)off[k], &h, 2);
    }
}
