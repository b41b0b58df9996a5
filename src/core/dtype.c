/* dtype sizes, names and IEEE half conversions. */
#include "core/dtype.h"

#include <math.h>

size_t qv_dtype_size(qv_dtype t) {
  switch (t) {
  case QV_DTYPE_F32: return 4;
  case QV_DTYPE_F16: return 2;
  case QV_DTYPE_BF16: return 2;
  case QV_DTYPE_I32: return 4;
  case QV_DTYPE_U8: return 1;
  default: return 0;
  }
}

const char *qv_dtype_name(qv_dtype t) {
  switch (t) {
  case QV_DTYPE_F32: return "F32";
  case QV_DTYPE_F16: return "F16";
  case QV_DTYPE_BF16: return "BF16";
  case QV_DTYPE_I32: return "I32";
  case QV_DTYPE_U8: return "U8";
  case QV_DTYPE_Q8_0: return "Q8_0";
  case QV_DTYPE_Q4_0: return "Q4_0";
  case QV_DTYPE_Q4_1: return "Q4_1";
  case QV_DTYPE_Q5_0: return "Q5_0";
  case QV_DTYPE_Q5_1: return "Q5_1";
  case QV_DTYPE_Q4_K: return "Q4_K";
  case QV_DTYPE_Q5_K: return "Q5_K";
  case QV_DTYPE_Q6_K: return "Q6_K";
  default: return "?";
  }
}

int qv_dtype_is_quant(qv_dtype t) { return t >= QV_DTYPE_Q8_0 && t < QV_DTYPE_COUNT; }

/* Block geometry of ggml's types (ggml-common.h): 32-element blocks with an f16 scale (and
 * min), 256-element K-quant super-blocks. */
int32_t qv_dtype_block_elems(qv_dtype t) {
  switch (t) {
  case QV_DTYPE_Q8_0: case QV_DTYPE_Q4_0: case QV_DTYPE_Q4_1: case QV_DTYPE_Q5_0: case QV_DTYPE_Q5_1: return 32;
  case QV_DTYPE_Q4_K: case QV_DTYPE_Q5_K: case QV_DTYPE_Q6_K: return 256;
  default: return qv_dtype_size(t) ? 1 : 0;
  }
}

size_t qv_dtype_block_bytes(qv_dtype t) {
  switch (t) {
  case QV_DTYPE_Q8_0: return 34;  /* f16 d, int8 qs[32] */
  case QV_DTYPE_Q4_0: return 18;  /* f16 d, nibbles[16] */
  case QV_DTYPE_Q4_1: return 20;  /* f16 d, f16 m, nibbles[16] */
  case QV_DTYPE_Q5_0: return 22;  /* f16 d, qh[4], nibbles[16] */
  case QV_DTYPE_Q5_1: return 24;  /* f16 d, f16 m, qh[4], nibbles[16] */
  case QV_DTYPE_Q4_K: return 144; /* f16 d, f16 dmin, scales[12], qs[128] */
  case QV_DTYPE_Q5_K: return 176; /* f16 d, f16 dmin, scales[12], qh[32], qs[128] */
  case QV_DTYPE_Q6_K: return 210; /* ql[128], qh[64], int8 scales[16], f16 d */
  default: return qv_dtype_size(t);
  }
}

size_t qv_dtype_row_bytes(qv_dtype t, int64_t cols) {
  int32_t be = qv_dtype_block_elems(t);
  if (be <= 0 || cols < 0 || cols % be) return 0;
  return (size_t)(cols / be) * qv_dtype_block_bytes(t);
}

float qv_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else { /* subnormal: value = man * 2^-24 */
      float f = ldexpf((float)man, -24);
      return sign ? -f : f;
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (man << 13);
  } else {
    u = sign | ((exp + 112) << 23) | (man << 13);
  }
  float f;
  memcpy(&f, &u, 4);
  return f;
}

uint16_t qv_f32_to_f16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  uint32_t sign = (u >> 16) & 0x8000u;
  float a = fabsf(f);
  if (isnan(f)) return (uint16_t)(sign | 0x7e00u);
  if (a >= 65520.0f) return (uint16_t)(sign | 0x7c00u); /* overflow rounds to inf */
  if (a < 6.103515625e-05f) {                          /* subnormal or zero */
    return (uint16_t)(sign | (uint32_t)lrintf(a * 16777216.0f));
  }
  uint32_t au = u & 0x7fffffffu;
  uint32_t mant = au & 0x7fffffu, exp = (au >> 23) - 112;
  uint32_t r = (exp << 10) | (mant >> 13);
  uint32_t rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (r & 1u))) r++;
  return (uint16_t)(sign | r);
}

/* src may be unaligned: safetensors data sits at 8 + header length bytes into the mapping and
 * the header need not be padded, so 16-bit elements are read with memcpy. */
static inline uint16_t load_u16(const unsigned char *p) {
  uint16_t v;
  memcpy(&v, p, 2);
  return v;
}

void qv_convert_to_f32(float *dst, const void *src, qv_dtype src_t, size_t n) {
  const unsigned char *h = src;
  switch (src_t) {
  case QV_DTYPE_F32: memcpy(dst, src, n * 4); break;
  case QV_DTYPE_BF16: for (size_t i = 0; i < n; i++) dst[i] = qv_bf16_to_f32(load_u16(h + 2 * i)); break;
  case QV_DTYPE_F16: for (size_t i = 0; i < n; i++) dst[i] = qv_f16_to_f32(load_u16(h + 2 * i)); break;
  default: memset(dst, 0, n * 4); break;
  }
}
