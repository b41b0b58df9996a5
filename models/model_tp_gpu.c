/* The device side of tensor-parallel GPU ranks (see model_tp.c): joining the nccl communicator
 * on the rank backend's stream, and the vocab-parallel logits gather in device memory. The only
 * file of models/ that talks to CUDA directly; it exists only in a CUDA build with NCCL (the
 * stubs at the end answer QV_EUNSUPPORTED elsewhere, and tpm_build refuses cuda ranks first).
 *
 * Ordering: every copy here and every collective is enqueued on the backend's one stream, in
 * order with the kernels that produced lg, so no event is needed between them. The host waits
 * only through qv_comm_sync (polled, bounded by the communicator's timeout, which aborts the
 * communicator when a peer never arrives) before it copies gathered logits into pageable host
 * memory: a pageable device-to-host copy blocks the host, and must never wait on a collective.
 *
 * Written and compiled without a GPU: none of this has run yet (tests/gpu/test_tp_nccl.c checks
 * it where GPUs exist). */
#include "models/model_tp.h"

#ifdef QV_HAVE_NCCL

#include <cuda_runtime_api.h>

#include "backend/cuda/cuda_backend.h"
#include "core/log.h"

#define GPU_CK(call)                                                                                           \
  do {                                                                                                         \
    cudaError_t e_ = (call);                                                                                   \
    if (e_ != cudaSuccess) {                                                                                   \
      QV_LOGE("tp gpu: %s:%d: %s: %s", __FILE__, __LINE__, #call, cudaGetErrorString(e_));                     \
      return qv_error_set(err, QV_EDEVICE, "tp rank %d (CUDA device %d): %s: %s", s->rank, s->device, #call,   \
                          cudaGetErrorString(e_));                                                             \
    }                                                                                                          \
  } while (0)

int tpg_comm_create(tpm_shard *s, qv_backend *be, const uint8_t *nccl_id, qv_comm **out, qv_error *err) {
  /* The rank's thread is bound to its device before anything else runs on it (the backend's
   * ops set it too; NCCL's init relies on the current device). */
  GPU_CK(cudaSetDevice(s->device));
  qv_comm_nccl_opts o = {.unique_id = nccl_id, .rank = s->rank, .size = s->size, .device = s->device,
                         .stream = (void *)qv_cuda_backend_stream(be)};
  return qv_comm_nccl_create(&o, out, err);
}

int tpg_gather_init(tpm_shard *s, qv_backend *be, qv_error *err) {
  const qv_backend_ops *ops = be->ops;
  if (ops->alloc(be, QV_DTYPE_F32, s->chunk, s->vocab_pad, &s->d_send) ||
      ops->alloc(be, QV_DTYPE_F32, (int64_t)s->size * s->chunk, s->vocab_pad, &s->d_recv))
    return qv_error_set(err, be->last_error.code ? be->last_error.code : QV_ENOMEM, "tp rank %d: logits gather: %s",
                        s->rank, be->last_error.msg);
  /* The padding columns [n_vocab, vocab_pad) of every send row stay zero: the packing copy
   * writes only the first n_vocab columns. */
  GPU_CK(cudaSetDevice(s->device));
  cudaStream_t st = qv_cuda_backend_stream(be);
  GPU_CK(cudaMemsetAsync(s->d_send.data, 0, (size_t)s->chunk * (size_t)s->vocab_pad * sizeof(float), st));
  GPU_CK(cudaStreamSynchronize(st)); /* at load: no collective is in flight */
  return 0;
}

int tpg_gather_logits(tpm_shard *s, qv_backend *be, const qv_tensor *lg, float *logits, qv_error *err) {
  if (lg->dtype != QV_DTYPE_F32 || lg->cols != s->n_vocab || !s->d_send.data || !s->d_recv.data)
    return qv_error_set(err, QV_EINVAL, "tp rank %d: logits [%lld][%lld] %s, want f32 [n][%d]", s->rank,
                        (long long)lg->rows, (long long)lg->cols, qv_dtype_name(lg->dtype), s->n_vocab);
  GPU_CK(cudaSetDevice(s->device));
  cudaStream_t st = qv_cuda_backend_stream(be);
  const size_t fs = sizeof(float), pad_b = (size_t)s->vocab_pad * fs, local_b = (size_t)s->n_vocab * fs;
  for (int64_t r0 = 0; r0 < lg->rows; r0 += s->chunk) {
    const int64_t nr = lg->rows - r0 < s->chunk ? lg->rows - r0 : s->chunk;
    /* send[i][0..n_vocab) = lg[r0 + i] (rows of n_vocab become rows of vocab_pad). */
    GPU_CK(cudaMemcpy2DAsync(s->d_send.data, pad_b, (const char *)lg->data + (size_t)r0 * local_b, local_b, local_b,
                             (size_t)nr, cudaMemcpyDeviceToDevice, st));
    int rc = qv_comm_all_gather(s->comm, s->d_send.data, s->d_recv.data, (size_t)nr * (size_t)s->vocab_pad,
                                QV_COMM_F32, err);
    s->n_comm++;
    if (rc) return rc;
    if (!logits) continue; /* the next chunk's copies queue behind this gather on the stream */
    /* recv[r][i][0..nv_r) holds rank r's columns [v0_r, v0_r + nv_r) of row r0 + i. */
    if ((rc = qv_comm_sync(s->comm, err))) return rc;
    for (int32_t r = 0; r < s->size; r++) {
      int32_t v0, nv;
      tpm_split(s->vocab_full, s->size, r, &v0, &nv);
      const char *from = (const char *)s->d_recv.data + (size_t)r * (size_t)nr * pad_b;
      GPU_CK(cudaMemcpy2DAsync(logits + (size_t)r0 * (size_t)s->vocab_full + v0, (size_t)s->vocab_full * fs, from,
                               pad_b, (size_t)nv * fs, (size_t)nr, cudaMemcpyDeviceToHost, st));
    }
    /* The stream holds only these copies now; still waited for under the timeout. */
    if ((rc = qv_comm_sync(s->comm, err))) return rc;
  }
  return 0;
}

#else

int tpg_comm_create(tpm_shard *s, qv_backend *be, const uint8_t *nccl_id, qv_comm **out, qv_error *err) {
  (void)s, (void)be, (void)nccl_id;
  *out = NULL;
  return qv_error_set(err, QV_EUNSUPPORTED, "tp: cuda ranks need a CUDA build with NCCL");
}

int tpg_gather_init(tpm_shard *s, qv_backend *be, qv_error *err) {
  (void)s, (void)be;
  return qv_error_set(err, QV_EUNSUPPORTED, "tp: cuda ranks need a CUDA build with NCCL");
}

int tpg_gather_logits(tpm_shard *s, qv_backend *be, const qv_tensor *lg, float *logits, qv_error *err) {
  (void)s, (void)be, (void)lg, (void)logits;
  return qv_error_set(err, QV_EUNSUPPORTED, "tp: cuda ranks need a CUDA build with NCCL");
}

#endif
