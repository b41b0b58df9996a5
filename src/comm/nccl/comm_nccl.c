/* NCCL communicator: one rank per GPU, in one process (one thread per rank) or across processes
 * and machines (the unique id made by rank 0 reaches the others over the control channel).
 * Built only in a CUDA build where CMake found NCCL (QV_HAVE_NCCL).
 *
 * The communicator is created non-blocking (config.blocking = 0), so neither its creation nor a
 * collective can hang the caller: every wait polls ncclCommGetAsyncError and the stream and, at
 * the timeout, calls ncclCommAbort, which also unblocks kernels stuck waiting for a dead peer.
 * By default each rank owns one non-blocking CUDA stream; a collective is enqueued on it and
 * waited for before returning, so buffers are device pointers that are ready when the call
 * returns. With a borrowed stream (opts.stream: a tensor-parallel rank's backend stream) the
 * collectives are only enqueued, in order with the backend's kernels on that stream, and
 * qv_comm_sync waits for the stream under the same timeout and abort rule: one host wait per
 * model step instead of one per collective.
 * Every NCCL and CUDA call is checked; a failure names the call, file and line. */
#include <cuda_runtime_api.h>
#include <nccl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm/comm.h"
#include "comm/comm_impl.h"
#include "core/log.h"

_Static_assert(sizeof(ncclUniqueId) == QV_COMM_NCCL_ID_BYTES, "NCCL unique id size");

typedef struct nccl_comm {
  qv_comm base;
  ncclComm_t nc;       /* owned; NULL once aborted */
  cudaStream_t stream; /* owned when own_stream, else borrowed (opts.stream) */
  int own_stream;
  float *d_scratch;    /* owned device float for the barrier */
  int device;
  int aborted;
} nccl_comm;

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void nap(void) {
  struct timespec ts = {0, 20000};
  nanosleep(&ts, NULL);
}

#define CUDA_TRY(call, what)                                                                       \
  do {                                                                                             \
    cudaError_t e_ = (call);                                                                       \
    if (e_ != cudaSuccess) {                                                                       \
      QV_LOGE("comm nccl: %s failed at %s:%d: %s", #call, __FILE__, __LINE__,                      \
              cudaGetErrorString(e_));                                                             \
      return qv_error_set(err, QV_EDEVICE, "comm nccl %s: %s: %s", what, #call,                    \
                          cudaGetErrorString(e_));                                                 \
    }                                                                                              \
  } while (0)

static void abort_comm(nccl_comm *s) {
  if (s->nc) {
    ncclResult_t r = ncclCommAbort(s->nc);
    if (r != ncclSuccess) QV_LOGE("comm nccl: ncclCommAbort: %s", ncclGetErrorString(r));
    s->nc = NULL;
  }
  s->aborted = 1;
}

static int fail(nccl_comm *s, qv_error *err, const char *what, const char *call, ncclResult_t r,
                int line) {
  QV_LOGE("comm nccl: %s failed at %s:%d: %s", call, __FILE__, line, ncclGetErrorString(r));
  abort_comm(s);
  return qv_error_set(err, QV_EDEVICE, "comm nccl %s (rank %d of %d): %s: %s; communicator aborted",
                      what, s->base.rank, s->base.size, call, ncclGetErrorString(r));
}

/* Waits until the communicator has no operation in progress (init or enqueue). */
static int wait_ready(nccl_comm *s, double deadline, const char *what, qv_error *err) {
  for (;;) {
    ncclResult_t async = ncclSuccess;
    ncclResult_t r = ncclCommGetAsyncError(s->nc, &async);
    if (r != ncclSuccess) return fail(s, err, what, "ncclCommGetAsyncError", r, __LINE__);
    if (async == ncclSuccess) return 0;
    if (async != ncclInProgress)
      return fail(s, err, what, "asynchronous NCCL error", async, __LINE__);
    if (now_ms() >= deadline) {
      abort_comm(s);
      return qv_error_set(err, QV_EABORTED,
                          "comm nccl %s (rank %d of %d): timed out after %d ms; "
                          "communicator aborted",
                          what, s->base.rank, s->base.size, s->base.timeout_ms);
    }
    nap();
  }
}

/* Waits for the stream's work (the enqueued collective), watching for NCCL errors. */
static int wait_stream(nccl_comm *s, double deadline, const char *what, qv_error *err) {
  for (;;) {
    cudaError_t q = cudaStreamQuery(s->stream);
    if (q == cudaSuccess) return 0;
    if (q != cudaErrorNotReady) {
      QV_LOGE("comm nccl: cudaStreamQuery at %s:%d: %s", __FILE__, __LINE__, cudaGetErrorString(q));
      abort_comm(s);
      return qv_error_set(err, QV_EDEVICE, "comm nccl %s: cudaStreamQuery: %s", what,
                          cudaGetErrorString(q));
    }
    ncclResult_t async = ncclSuccess;
    ncclResult_t r = ncclCommGetAsyncError(s->nc, &async);
    if (r != ncclSuccess) return fail(s, err, what, "ncclCommGetAsyncError", r, __LINE__);
    if (async != ncclSuccess && async != ncclInProgress)
      return fail(s, err, what, "asynchronous NCCL error", async, __LINE__);
    if (now_ms() >= deadline) {
      abort_comm(s);
      return qv_error_set(err, QV_EABORTED,
                          "comm nccl %s (rank %d of %d): timed out after %d ms; "
                          "communicator aborted",
                          what, s->base.rank, s->base.size, s->base.timeout_ms);
    }
    nap();
  }
}

/* The common tail of a collective: r is what the enqueue call returned. On a borrowed stream the
 * collective is left in flight once NCCL has enqueued it (qv_comm_sync waits for it), unless
 * wait says the caller needs it complete (the barrier). */
static int finish(nccl_comm *s, ncclResult_t r, const char *call, double deadline, const char *what,
                  int wait, qv_error *err) {
  if (r != ncclSuccess && r != ncclInProgress) return fail(s, err, what, call, r, __LINE__);
  int rc = wait_ready(s, deadline, what, err);
  if (rc || (!s->own_stream && !wait)) return rc;
  return wait_stream(s, deadline, what, err);
}

static ncclDataType_t nccl_dtype(qv_comm_dtype d) {
  return d == QV_COMM_BF16 ? ncclBfloat16 : ncclFloat32;
}

static int nccl_all_reduce(qv_comm *c, void *buf, size_t count, qv_comm_dtype dtype,
                           qv_error *err) {
  nccl_comm *s = (nccl_comm *)c;
  double deadline = now_ms() + c->timeout_ms;
  CUDA_TRY(cudaSetDevice(s->device), "all_reduce");
  ncclResult_t r = ncclAllReduce(buf, buf, count, nccl_dtype(dtype), ncclSum, s->nc, s->stream);
  return finish(s, r, "ncclAllReduce", deadline, "all_reduce", 0, err);
}

static int nccl_all_gather(qv_comm *c, const void *send, void *recv, size_t count,
                           qv_comm_dtype dtype, qv_error *err) {
  nccl_comm *s = (nccl_comm *)c;
  double deadline = now_ms() + c->timeout_ms;
  CUDA_TRY(cudaSetDevice(s->device), "all_gather");
  ncclResult_t r = ncclAllGather(send, recv, count, nccl_dtype(dtype), s->nc, s->stream);
  return finish(s, r, "ncclAllGather", deadline, "all_gather", 0, err);
}

static int nccl_broadcast(qv_comm *c, void *buf, size_t n_bytes, int root, qv_error *err) {
  nccl_comm *s = (nccl_comm *)c;
  double deadline = now_ms() + c->timeout_ms;
  CUDA_TRY(cudaSetDevice(s->device), "broadcast");
  ncclResult_t r = ncclBroadcast(buf, buf, n_bytes, ncclUint8, root, s->nc, s->stream);
  return finish(s, r, "ncclBroadcast", deadline, "broadcast", 0, err);
}

static int nccl_barrier(qv_comm *c, qv_error *err) {
  nccl_comm *s = (nccl_comm *)c;
  double deadline = now_ms() + c->timeout_ms;
  CUDA_TRY(cudaSetDevice(s->device), "barrier");
  ncclResult_t r =
      ncclAllReduce(s->d_scratch, s->d_scratch, 1, ncclFloat32, ncclSum, s->nc, s->stream);
  return finish(s, r, "ncclAllReduce (barrier)", deadline, "barrier", 1, err);
}

/* Waits for everything on the stream: the collectives left in flight and, on a borrowed stream,
 * the owner's work queued with them (a peer that never arrives stalls both). */
static int nccl_sync(qv_comm *c, qv_error *err) {
  nccl_comm *s = (nccl_comm *)c;
  double deadline = now_ms() + c->timeout_ms;
  CUDA_TRY(cudaSetDevice(s->device), "sync");
  return wait_stream(s, deadline, "sync", err);
}

static int nccl_aborted(const qv_comm *c) { return ((const nccl_comm *)c)->aborted; }

static void nccl_destroy(qv_comm *c) {
  nccl_comm *s = (nccl_comm *)c;
  if (cudaSetDevice(s->device) != cudaSuccess)
    QV_LOGW("comm nccl: cudaSetDevice on destroy failed");
  if (s->nc) {
    /* Finalize (flushes and waits for global quiescence, polled against the timeout since the
     * communicator is non-blocking), then destroy; a peer that never finalizes, or any error,
     * ends in ncclCommAbort instead of a wait. */
    qv_error e = {0};
    ncclResult_t r = ncclCommFinalize(s->nc);
    int rc = (r == ncclSuccess || r == ncclInProgress)
                 ? wait_ready(s, now_ms() + s->base.timeout_ms, "destroy", &e)
                 : fail(s, &e, "destroy", "ncclCommFinalize", r, __LINE__);
    if (rc == 0 && s->nc) {
      r = ncclCommDestroy(s->nc);
      if (r != ncclSuccess) {
        QV_LOGW("comm nccl: ncclCommDestroy: %s; aborting", ncclGetErrorString(r));
        abort_comm(s);
      }
      s->nc = NULL;
    } else if (rc) {
      QV_LOGW("%s", e.msg);
    }
  }
  if (s->d_scratch) cudaFree(s->d_scratch);
  if (s->stream && s->own_stream) cudaStreamDestroy(s->stream);
  free(s);
}

static const qv_comm_ops nccl_ops = {
    .kind = "nccl",
    .all_reduce_sum = nccl_all_reduce,
    .all_gather = nccl_all_gather,
    .broadcast = nccl_broadcast,
    .barrier = nccl_barrier,
    .sync = nccl_sync,
    .aborted = nccl_aborted,
    .destroy = nccl_destroy,
};

int qv_comm_nccl_available(void) { return 1; }

int qv_comm_nccl_unique_id(uint8_t id[QV_COMM_NCCL_ID_BYTES], qv_error *err) {
  ncclUniqueId u;
  ncclResult_t r = ncclGetUniqueId(&u);
  if (r != ncclSuccess)
    return qv_error_set(err, QV_EDEVICE, "comm nccl: ncclGetUniqueId: %s", ncclGetErrorString(r));
  memcpy(id, &u, sizeof u);
  return 0;
}

int qv_comm_nccl_create(const qv_comm_nccl_opts *o, qv_comm **out, qv_error *err) {
  if (!out) return qv_error_set(err, QV_EINVAL, "comm nccl: no output handle");
  *out = NULL;
  if (!o || !o->unique_id || o->size < 1 || o->size > QV_COMM_MAX_RANKS || o->rank < 0 ||
      o->rank >= o->size || o->device < 0 || o->timeout_ms < 0)
    return qv_error_set(err, QV_EINVAL,
                        "comm nccl: needs a unique id, 0 <= rank < size <= %d, a "
                        "device >= 0 and a timeout >= 0",
                        QV_COMM_MAX_RANKS);
  nccl_comm *s = calloc(1, sizeof *s);
  if (!s) return qv_error_set(err, QV_ENOMEM, "comm nccl: out of memory");
  s->base.ops = &nccl_ops;
  s->base.rank = o->rank;
  s->base.size = o->size;
  s->base.timeout_ms = o->timeout_ms ? o->timeout_ms : QV_COMM_DEFAULT_TIMEOUT_MS;
  s->device = o->device;
  double deadline = now_ms() + s->base.timeout_ms;
  int rc = 0;
  do {
    cudaError_t e = cudaSetDevice(o->device);
    if (o->stream) {
      s->stream = (cudaStream_t)o->stream;
    } else if (e == cudaSuccess) {
      e = cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking);
      s->own_stream = e == cudaSuccess;
    }
    if (e == cudaSuccess) e = cudaMalloc((void **)&s->d_scratch, sizeof(float));
    if (e == cudaSuccess) e = cudaMemset(s->d_scratch, 0, sizeof(float));
    if (e != cudaSuccess) {
      QV_LOGE("comm nccl: device %d setup at %s:%d: %s", o->device, __FILE__, __LINE__,
              cudaGetErrorString(e));
      rc = qv_error_set(err, QV_EDEVICE, "comm nccl: device %d: %s", o->device,
                        cudaGetErrorString(e));
      break;
    }
    ncclUniqueId id;
    memcpy(&id, o->unique_id, sizeof id);
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclResult_t r = ncclCommInitRankConfig(&s->nc, o->size, id, o->rank, &config);
    if (r != ncclSuccess && r != ncclInProgress) {
      rc = fail(s, err, "init", "ncclCommInitRankConfig", r, __LINE__);
      break;
    }
    rc = wait_ready(s, deadline, "init", err);
  } while (0);
  if (rc) {
    nccl_destroy(&s->base);
    return rc;
  }
  *out = &s->base;
  return 0;
}
