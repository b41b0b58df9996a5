/* The aarch64 Advanced SIMD path: 4 lanes, 4 x 4 GEMM tiles in the 32 q registers, 1 x 8 for
 * a single row. Built only when the compiler targets aarch64 (NEON is part of the base ISA). */
#if defined(__aarch64__)
#include <arm_neon.h>
#include <math.h>

#include "backend/cpu/cpu_kern.h"

static inline float32x4_t kn_load_f16(const uint16_t *p) {
  return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p)));
}
/* (l0+l2) + (l1+l3). */
static inline float kn_hsum(float32x4_t v) {
  float32x2_t s = vadd_f32(vget_low_f32(v), vget_high_f32(v));
  return vget_lane_f32(s, 0) + vget_lane_f32(s, 1);
}
/* x86's rule, b when either is NaN (vmaxq_f32 would answer NaN either way). */
static inline float32x4_t kn_max(float32x4_t a, float32x4_t b) { return vbslq_f32(vcgtq_f32(a, b), a, b); }
static inline float32x4_t kn_min(float32x4_t a, float32x4_t b) { return vbslq_f32(vcltq_f32(a, b), a, b); }

#define KVEC float32x4_t
#define KL 4
#define K_ZERO() vdupq_n_f32(0.0f)
#define K_LOAD(p) vld1q_f32(p)
#define K_LOAD_BF16(p) vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16))
#define K_LOAD_F16(p) kn_load_f16(p)
#define K_STORE(p, v) vst1q_f32(p, v)
#define K_SET1(s) vdupq_n_f32(s)
#define K_MUL(a, b) vmulq_f32(a, b)
#define K_FMA(a, b, c) vfmaq_f32(c, a, b)
#define K_HSUM(v) kn_hsum(v)
#define K_ADD(a, b) vaddq_f32(a, b)
#define K_SUB(a, b) vsubq_f32(a, b)
#define K_DIV(a, b) vdivq_f32(a, b)
#define K_MAX(a, b) kn_max(a, b)
#define K_MIN(a, b) kn_min(a, b)
#define K_HMAX(v) vmaxvq_f32(v)
#define K_EXP2I(e) vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(vcvtnq_s32_f32(e), vdupq_n_s32(127)), 23))
#define KTR 4
#define KTC 4
#define KTC1 8
#define KISA QV_CPU_ISA_NEON
#define KTABLE cpu_kernels_neon

#include "backend/cpu/cpu_kern_impl.h"
#endif
