/* Block-quantized weight formats (ggml's Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K), read
 * from GGUF files and kept quantized in backend memory. This module owns the formats: the
 * mapping from ggml type ids, and the scalar reference dequantization that every faster path
 * (the CPU's SIMD matmul, the CUDA kernels) must reproduce bit for bit.
 *
 * Layouts (ggml-common.h; little-endian, blocks packed without padding):
 *   Q8_0  32 elems, 34 B: f16 d, int8 q[32]                       x = d*q
 *   Q4_0  32 elems, 18 B: f16 d, u8 qs[16]                        x = d*(nib-8)
 *   Q4_1  32 elems, 20 B: f16 d, f16 m, u8 qs[16]                 x = d*nib + m
 *   Q5_0  32 elems, 22 B: f16 d, u32 qh, u8 qs[16]                x = d*((nib|hbit<<4)-16)
 *   Q5_1  32 elems, 24 B: f16 d, f16 m, u32 qh, u8 qs[16]         x = d*(nib|hbit<<4) + m
 *     element j < 16 is the low nibble of qs[j], element j+16 the high nibble; hbit of element
 *     i is bit i of qh.
 *   Q4_K  256 elems, 144 B: f16 d, f16 dmin, u8 scales[12] (8 x 6-bit scale + 6-bit min),
 *         u8 qs[128]; x = d*sc*nib - dmin*mn per 32-element sub-block
 *   Q5_K  256 elems, 176 B: as Q4_K plus u8 qh[32] (the fifth bit), before qs
 *   Q6_K  256 elems, 210 B: u8 ql[128], u8 qh[64], int8 scales[16], f16 d; x = d*sc*(q6-32)
 */
#ifndef QV_QUANT_H
#define QV_QUANT_H

#include <stdint.h>

#include "core/dtype.h"

/* ggml type ids as stored in GGUF tensor infos. */
enum {
  GGML_TYPE_F32 = 0, GGML_TYPE_F16 = 1, GGML_TYPE_Q4_0 = 2, GGML_TYPE_Q4_1 = 3, GGML_TYPE_Q5_0 = 6,
  GGML_TYPE_Q5_1 = 7, GGML_TYPE_Q8_0 = 8, GGML_TYPE_Q4_K = 12, GGML_TYPE_Q5_K = 13, GGML_TYPE_Q6_K = 14,
  GGML_TYPE_BF16 = 30,
};

/* The qv_dtype of a ggml type id; -1 when quiver does not support it. */
int quant_dtype_from_ggml(uint32_t ggml_type, qv_dtype *out);
/* The name ggml gives a type id ("Q4_K", "IQ2_XS", ...), or "type <n>" for unknown ids; used in
 * messages. Returns a static string or writes buf. */
const char *quant_ggml_type_name(uint32_t ggml_type, char *buf, int cap);

/* Reference dequantization of one row: n elements (a whole number of blocks) of type t at src
 * (any alignment) to floats. t may also be F32, F16 or BF16. */
void quant_dequant_row(qv_dtype t, const void *src, float *dst, int64_t n);

/* Fills n_blocks blocks of t with random bytes from seed, then writes every f16 scale (d, m,
 * dmin) as a finite value of magnitude <= 2^-4: random but valid blocks for tests (every
 * quant bit pattern occurs). */
void quant_fill_random(qv_dtype t, void *dst, int64_t n_blocks, uint64_t seed);

#endif
