/* The portable path: plain ISO C (no contraction, so a*b+c rounds twice), 8 lanes held in a
 * struct the compiler may map to whatever vector unit the baseline target has. Its reduction
 * order is the one the CPU backend always had (8 interleaved partial sums, combined as
 * ((0+4)+(1+5))+((2+6)+(3+7))), and it runs on any CPU. */
#include <string.h>

#include "backend/cpu/cpu_kern.h"

typedef struct kvec8 {
  float v[8];
} kvec8;

static inline kvec8 k8_zero(void) { return (kvec8){{0}}; }
static inline kvec8 k8_load(const float *p) {
  kvec8 r;
  memcpy(r.v, p, sizeof r.v);
  return r;
}
static inline kvec8 k8_load_bf16(const uint16_t *p) {
  kvec8 r;
  for (int l = 0; l < 8; l++) r.v[l] = qv_bf16_to_f32(p[l]);
  return r;
}
static inline kvec8 k8_load_f16(const uint16_t *p) {
  kvec8 r;
  for (int l = 0; l < 8; l++) r.v[l] = qv_f16_to_f32(p[l]);
  return r;
}
static inline void k8_store(float *p, kvec8 v) { memcpy(p, v.v, sizeof v.v); }
static inline kvec8 k8_set1(float s) {
  kvec8 r;
  for (int l = 0; l < 8; l++) r.v[l] = s;
  return r;
}
static inline kvec8 k8_mul(kvec8 a, kvec8 b) {
  for (int l = 0; l < 8; l++) a.v[l] *= b.v[l];
  return a;
}
static inline kvec8 k8_fma(kvec8 a, kvec8 b, kvec8 c) {
  for (int l = 0; l < 8; l++) c.v[l] += a.v[l] * b.v[l];
  return c;
}
static inline float k8_hsum(kvec8 a) {
  return ((a.v[0] + a.v[4]) + (a.v[1] + a.v[5])) + ((a.v[2] + a.v[6]) + (a.v[3] + a.v[7]));
}
static inline kvec8 k8_add(kvec8 a, kvec8 b) {
  for (int l = 0; l < 8; l++) a.v[l] += b.v[l];
  return a;
}
static inline kvec8 k8_sub(kvec8 a, kvec8 b) {
  for (int l = 0; l < 8; l++) a.v[l] -= b.v[l];
  return a;
}
static inline kvec8 k8_div(kvec8 a, kvec8 b) {
  for (int l = 0; l < 8; l++) a.v[l] /= b.v[l];
  return a;
}
/* x86's rule: b when either is NaN. */
static inline kvec8 k8_max(kvec8 a, kvec8 b) {
  for (int l = 0; l < 8; l++) a.v[l] = a.v[l] > b.v[l] ? a.v[l] : b.v[l];
  return a;
}
static inline kvec8 k8_min(kvec8 a, kvec8 b) {
  for (int l = 0; l < 8; l++) a.v[l] = a.v[l] < b.v[l] ? a.v[l] : b.v[l];
  return a;
}
/* 2^e through the exponent bits; a NaN lane gives 1 (the caller's other factor is NaN). */
static inline kvec8 k8_exp2i(kvec8 e) {
  for (int l = 0; l < 8; l++) {
    uint32_t bits = (uint32_t)((e.v[l] == e.v[l] ? (int32_t)e.v[l] : 0) + 127) << 23;
    memcpy(&e.v[l], &bits, sizeof bits);
  }
  return e;
}

#define KVEC kvec8
#define KL 8
#define K_ZERO() k8_zero()
#define K_LOAD(p) k8_load(p)
#define K_LOAD_BF16(p) k8_load_bf16(p)
#define K_LOAD_F16(p) k8_load_f16(p)
#define K_STORE(p, v) k8_store(p, v)
#define K_SET1(s) k8_set1(s)
#define K_MUL(a, b) k8_mul(a, b)
#define K_FMA(a, b, c) k8_fma(a, b, c)
#define K_HSUM(v) k8_hsum(v)
#define K_ADD(a, b) k8_add(a, b)
#define K_SUB(a, b) k8_sub(a, b)
#define K_DIV(a, b) k8_div(a, b)
#define K_MAX(a, b) k8_max(a, b)
#define K_MIN(a, b) k8_min(a, b)
#define K_EXP2I(e) k8_exp2i(e)
#define KTR 2
#define KTC 2
#define KTC1 4
#define KISA QV_CPU_ISA_PORTABLE
#define KTABLE cpu_kernels_portable

#include "backend/cpu/cpu_kern_impl.h"

const cpu_kernels *cpu_kernels_for(qv_cpu_isa isa) {
  switch (isa) {
  case QV_CPU_ISA_PORTABLE: return &cpu_kernels_portable;
#if defined(__x86_64__)
  case QV_CPU_ISA_AVX2: return &cpu_kernels_avx2;
  case QV_CPU_ISA_AVX512: return &cpu_kernels_avx512;
#endif
#if defined(__aarch64__)
  case QV_CPU_ISA_NEON: return &cpu_kernels_neon;
#endif
  default: return NULL;
  }
}
