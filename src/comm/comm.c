/* The communicator's public entry points: argument checks shared by every implementation, then
 * the implementation's slot. The NCCL entry points live here as stubs in a build without NCCL,
 * so callers need no #ifdef. */
#include "comm/comm.h"

#include "comm/comm_impl.h"

size_t qv_comm_dtype_bytes(qv_comm_dtype dtype) {
  switch (dtype) {
  case QV_COMM_F32: return 4;
  case QV_COMM_BF16: return 2;
  }
  return 0;
}

int qv_comm_rank(const qv_comm *comm) { return comm->rank; }
int qv_comm_size(const qv_comm *comm) { return comm->size; }
const char *qv_comm_kind(const qv_comm *comm) { return comm->ops->kind; }

int qv_comm_set_timeout(qv_comm *comm, int timeout_ms, qv_error *err) {
  if (!comm || timeout_ms <= 0)
    return qv_error_set(err, QV_EINVAL, "comm: timeout must be > 0 ms (got %d)", timeout_ms);
  comm->timeout_ms = timeout_ms;
  return 0;
}

int qv_comm_aborted(const qv_comm *comm) { return comm && comm->ops->aborted(comm); }

/* Common preconditions: a handle, a live group. */
static int check_live(const qv_comm *comm, const char *what, qv_error *err) {
  if (!comm) return qv_error_set(err, QV_EINVAL, "comm %s: no communicator", what);
  if (comm->ops->aborted(comm))
    return qv_error_set(err, QV_EABORTED,
                        "comm %s: the communicator was aborted (a rank timed out "
                        "or died); destroy it",
                        what);
  return 0;
}

int qv_comm_all_reduce_sum(qv_comm *comm, void *buf, size_t count, qv_comm_dtype dtype,
                           qv_error *err) {
  int rc = check_live(comm, "all_reduce", err);
  if (rc) return rc;
  if (!qv_comm_dtype_bytes(dtype))
    return qv_error_set(err, QV_EINVAL, "comm all_reduce: unknown dtype %d", (int)dtype);
  if (count && !buf) return qv_error_set(err, QV_EINVAL, "comm all_reduce: NULL buffer");
  return comm->ops->all_reduce_sum(comm, buf, count, dtype, err);
}

int qv_comm_all_gather(qv_comm *comm, const void *send, void *recv, size_t count,
                       qv_comm_dtype dtype, qv_error *err) {
  int rc = check_live(comm, "all_gather", err);
  if (rc) return rc;
  size_t es = qv_comm_dtype_bytes(dtype);
  if (!es) return qv_error_set(err, QV_EINVAL, "comm all_gather: unknown dtype %d", (int)dtype);
  if (count && (!send || !recv))
    return qv_error_set(err, QV_EINVAL, "comm all_gather: NULL buffer");
  const char *s = send, *r = recv;
  size_t sb = count * es, rb = sb * (size_t)comm->size;
  if (count && s < r + rb && r < s + sb)
    return qv_error_set(err, QV_EINVAL, "comm all_gather: send and recv overlap");
  return comm->ops->all_gather(comm, send, recv, count, dtype, err);
}

int qv_comm_broadcast(qv_comm *comm, void *buf, size_t n_bytes, int root, qv_error *err) {
  int rc = check_live(comm, "broadcast", err);
  if (rc) return rc;
  if (root < 0 || root >= comm->size)
    return qv_error_set(err, QV_EINVAL, "comm broadcast: root %d outside 0..%d", root,
                        comm->size - 1);
  if (n_bytes && !buf) return qv_error_set(err, QV_EINVAL, "comm broadcast: NULL buffer");
  return comm->ops->broadcast(comm, buf, n_bytes, root, err);
}

int qv_comm_barrier(qv_comm *comm, qv_error *err) {
  int rc = check_live(comm, "barrier", err);
  if (rc) return rc;
  return comm->ops->barrier(comm, err);
}

int qv_comm_sync(qv_comm *comm, qv_error *err) {
  int rc = check_live(comm, "sync", err);
  if (rc) return rc;
  return comm->ops->sync ? comm->ops->sync(comm, err) : 0;
}

void qv_comm_destroy(qv_comm *comm) {
  if (comm) comm->ops->destroy(comm);
}

#ifndef QV_HAVE_NCCL
int qv_comm_nccl_available(void) { return 0; }

int qv_comm_nccl_unique_id(uint8_t id[QV_COMM_NCCL_ID_BYTES], qv_error *err) {
  (void)id;
  return qv_error_set(err, QV_EUNSUPPORTED, "comm: this build has no NCCL (CUDA build only)");
}

int qv_comm_nccl_create(const qv_comm_nccl_opts *opts, qv_comm **out, qv_error *err) {
  (void)opts;
  if (out) *out = NULL;
  return qv_error_set(err, QV_EUNSUPPORTED, "comm: this build has no NCCL (CUDA build only)");
}
#endif
