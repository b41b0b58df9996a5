/* Quantized weights on the CPU backend (cpu_quant.c): matmul over block-quantized weight
 * tensors (QV_DTYPE_Q*), reached from cpu_ops.c by one dispatch line (embedding lookups of
 * quantized tables dequantize their rows in cpu_ops.c).
 *
 * Method: each task walks its weight rows in blocks (8 rows for decode-sized batches, up to 64
 * rows / ~128 KiB otherwise), dequantizes a block into f32 scratch (SIMD dequantizers that
 * reproduce src/quant's reference bit for bit) and runs the backend's f32 kernel (cpu_kern.h:
 * register-tiled GEMM, GEMV for one row) of every activation row against it. Each output value
 * is therefore one dot chain of the kernel path, whatever the batch rows, the block or the
 * thread: batch invariant and thread-count invariant, and equal to the f32 path on the
 * dequantized weights. The path is the backend's (core/cpu_features: cpuid once, or
 * QUIVER_CPU_ISA); paths differ in rounding, each is bit-reproducible. */
#ifndef QV_BACKEND_CPU_QUANT_H
#define QV_BACKEND_CPU_QUANT_H

#include "backend/cpu/cpu.h"

int cpu_quant_matmul(qv_backend *be, qv_tensor *out, const qv_tensor *x, const qv_tensor *w, const qv_tensor *bias);
/* Frees the backend's quant scratch (cpu_destroy). */
void cpu_quant_free(cpu_backend *c);

#endif
