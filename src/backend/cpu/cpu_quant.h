/* Quantized weights on the CPU backend (cpu_quant.c): matmul over block-quantized weight
 * tensors (QV_DTYPE_Q*), reached from cpu_ops.c by one dispatch line (embedding lookups of
 * quantized tables dequantize their rows in cpu_ops.c).
 *
 * Method: each task dequantizes a tile of weight rows into f32 scratch (SIMD dequantizers that
 * reproduce src/quant's reference bit for bit) and takes fused multiply-add dot products of every
 * activation row with them. Each output value is one dot product over k in a fixed lane layout
 * and a fixed horizontal reduction, whatever the batch rows, the tile or the thread: batch
 * invariant and thread-count invariant. The instruction set (AVX-512F, AVX2+FMA or portable C)
 * is chosen once per backend from cpuid, overridable with QUIVER_CPU_ISA=avx512|avx2|portable;
 * the lane count differs between them, so results are bit-identical within one ISA. */
#ifndef QV_BACKEND_CPU_QUANT_H
#define QV_BACKEND_CPU_QUANT_H

#include "backend/cpu/cpu.h"

int cpu_quant_matmul(qv_backend *be, qv_tensor *out, const qv_tensor *x, const qv_tensor *w, const qv_tensor *bias);
/* Frees the backend's quant scratch (cpu_destroy). */
void cpu_quant_free(cpu_backend *c);
/* The ISA in use: "avx512", "avx2" or "portable". */
const char *cpu_quant_isa(void);

#endif
