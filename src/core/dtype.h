/* Element types of tensors in model files and backend memory, with the scalar conversions the
 * loaders and the CPU backend need (round-to-nearest-even for float -> bf16/f16). */
#ifndef QV_CORE_DTYPE_H
#define QV_CORE_DTYPE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef enum qv_dtype {
  QV_DTYPE_F32 = 0,
  QV_DTYPE_F16 = 1,
  QV_DTYPE_BF16 = 2,
  QV_DTYPE_I32 = 3,
  QV_DTYPE_U8 = 4,   /* raw bytes (MXFP4 blocks and scales of MoE experts) */
  /* Block-quantized weight types (GGUF/ggml layouts, see src/quant/quant.h): a row of cols
   * elements is cols / block_elems blocks of block_bytes. qv_dtype_size() is 0 for them. */
  QV_DTYPE_Q8_0 = 5,
  QV_DTYPE_Q4_0,
  QV_DTYPE_Q4_1,
  QV_DTYPE_Q5_0,
  QV_DTYPE_Q5_1,
  QV_DTYPE_Q4_K,
  QV_DTYPE_Q5_K,
  QV_DTYPE_Q6_K,
  QV_DTYPE_COUNT
} qv_dtype;

size_t qv_dtype_size(qv_dtype t);
const char *qv_dtype_name(qv_dtype t);
/* 1 for the block-quantized types. */
int qv_dtype_is_quant(qv_dtype t);
/* Elements per block (1 for scalar types) and bytes per block (the element size for scalars). */
int32_t qv_dtype_block_elems(qv_dtype t);
size_t qv_dtype_block_bytes(qv_dtype t);
/* Bytes of one row of cols elements; 0 when cols is not a whole number of blocks or t unknown. */
size_t qv_dtype_row_bytes(qv_dtype t, int64_t cols);

static inline float qv_bf16_to_f32(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static inline uint16_t qv_f32_to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

float qv_f16_to_f32(uint16_t h);
uint16_t qv_f32_to_f16(float f);

/* Converts n elements of type src_t at src to float at dst. src_t is F32, F16 or BF16. */
void qv_convert_to_f32(float *dst, const void *src, qv_dtype src_t, size_t n);

#endif
