/* Extra entry points of the CUDA backend for its own tests and benchmarks (tests/gpu,
 * bench/kernels), which need the stream to time work and a way to wait for it. Only for
 * builds with QV_HAVE_CUDA; be must come from qv_backend_cuda_create. */
#ifndef QV_BACKEND_CUDA_BACKEND_H
#define QV_BACKEND_CUDA_BACKEND_H

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "backend/backend.h"

/* The stream every op of be runs on (borrowed; valid until be is destroyed). */
cudaStream_t qv_cuda_backend_stream(qv_backend *be);
/* Waits for all work queued on be. Returns 0 or QV_EDEVICE. */
int qv_cuda_backend_sync(qv_backend *be);
/* Device name (borrowed static storage of be), multiprocessor count. */
const char *qv_cuda_backend_device_name(qv_backend *be);
int qv_cuda_backend_n_sm(qv_backend *be);
/* cuBLASLt heuristic queries made so far (one per new GEMM shape). */
int64_t qv_cuda_backend_gemm_plans_made(qv_backend *be);
/* Number of split-K work items in the current step's attention plan (0 before attention ran). */
int32_t qv_cuda_backend_attn_splits(qv_backend *be);

#endif
