/* Quantized weights on the CUDA backend (cuda_quant.c); reached from cuda_backend.c's matmul and
 * embed by one dispatch line each. */
#ifndef QV_BACKEND_CUDA_QUANT_H
#define QV_BACKEND_CUDA_QUANT_H

#include "backend/cuda/cuda_internal.h"

int cuda_quant_matmul(cuda_backend *be, qv_tensor *out, const qv_tensor *x, const qv_tensor *w, const qv_tensor *bias);
/* ids: the staged device token ids [n_tok]. row0: the table's first vocabulary row (0, or a
 * tensor-parallel rank's shard; ids outside the table's rows give zeros). */
int cuda_quant_embed(cuda_backend *be, qv_tensor *out, const qv_tensor *table, int32_t row0, const int32_t *ids,
                     int32_t n_tok);

#endif
