/* Communicator: the collectives a tensor-parallel group of ranks needs (all-reduce sum,
 * all-gather, broadcast, barrier) behind one opaque handle, with two implementations:
 *   shm  - CPU ranks on one host, threads of one process or separate processes, through one
 *          POSIX shared-memory segment per group (comm_shm.c). Host pointers.
 *   nccl - one GPU per rank (comm/nccl/comm_nccl.c, only in a CUDA build with NCCL). Device
 *          pointers, on the communicator's own stream (each collective waited for), or enqueued
 *          on a borrowed stream (the backend's) and waited for by qv_comm_sync.
 *
 * Every call returns 0 or a negative QV_E* code and fills the caller's qv_error. Every collective
 * is bounded by the communicator's timeout: a rank that does not arrive in time (a hung or dead
 * peer) makes the collective fail with QV_EABORTED and aborts the whole communicator; from then on
 * every call on any rank of the group fails at once, and the handle can only be destroyed.
 *
 * Collectives are called by every rank of the group in the same order with the same counts
 * (SPMD, as NCCL's). A rank's handle is used by one thread at a time. The timeout must exceed the
 * largest legitimate skew between ranks (raise it around slow phases such as weight loading).
 * Sharded model execution (--tp, models/model_tp.c) runs on the shm communicator on cpu ranks and
 * on the nccl communicator (borrowing each rank's backend stream) on cuda ranks. */
#ifndef QV_COMM_COMM_H
#define QV_COMM_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "quiver/error.h"

typedef struct qv_comm qv_comm;

typedef enum qv_comm_dtype {
  QV_COMM_F32 = 0,
  QV_COMM_BF16 = 1, /* raw uint16 bf16 bits (shm: summed in double, rounded to f32 then bf16) */
} qv_comm_dtype;

enum {
  QV_COMM_MAX_RANKS = 64,
  QV_COMM_TOKEN_MAX = 64, /* characters of a group token, [A-Za-z0-9_-] */
  QV_COMM_DEFAULT_TIMEOUT_MS = 30000,
};

/* The size in bytes of one element of dtype. */
size_t qv_comm_dtype_bytes(qv_comm_dtype dtype);

int qv_comm_rank(const qv_comm *comm);
int qv_comm_size(const qv_comm *comm);
/* "shm" or "nccl". */
const char *qv_comm_kind(const qv_comm *comm);

/* The timeout of every later collective on this rank, in milliseconds (> 0). */
int qv_comm_set_timeout(qv_comm *comm, int timeout_ms, qv_error *err);

/* buf[0..count) = the element-wise sum over ranks of every rank's buf, in place. The sum order
 * is fixed (shm: rank 0 + rank 1 + ... for every element, whoever computes it), so the result is
 * the same bits on every rank and on every run. */
int qv_comm_all_reduce_sum(qv_comm *comm, void *buf, size_t count, qv_comm_dtype dtype,
                           qv_error *err);

/* recv[r*count .. (r+1)*count) = rank r's send[0..count), on every rank. send and recv must not
 * overlap. recv holds size*count elements. */
int qv_comm_all_gather(qv_comm *comm, const void *send, void *recv, size_t count,
                       qv_comm_dtype dtype, qv_error *err);

/* buf[0..n_bytes) of rank root copied into buf on every other rank. */
int qv_comm_broadcast(qv_comm *comm, void *buf, size_t n_bytes, int root, qv_error *err);

/* Returns once every rank has entered it (or the timeout fails it). */
int qv_comm_barrier(qv_comm *comm, qv_error *err);

/* Returns once every collective this rank issued has completed, or fails after the timeout
 * (QV_EABORTED, the communicator aborted). Only an nccl communicator on a borrowed stream has
 * collectives in flight after they return (together with the stream owner's other work, which
 * this waits for too); for every other communicator it returns 0 at once. */
int qv_comm_sync(qv_comm *comm, qv_error *err);

/* 1 once the communicator is aborted (a timeout or a dead peer on any rank), else 0. */
int qv_comm_aborted(const qv_comm *comm);

/* Releases this rank's handle and its resources. Accepts NULL. Does not synchronise with the
 * other ranks. */
void qv_comm_destroy(qv_comm *comm);

/* ---- shm ---- */

typedef struct qv_comm_shm_opts {
  const char *token; /* borrowed: names the group; the same on every rank, unique per group */
  int rank, size;    /* 0 <= rank < size <= QV_COMM_MAX_RANKS */
  int timeout_ms;    /* per collective and for joining; 0 = QV_COMM_DEFAULT_TIMEOUT_MS */
  size_t slot_bytes; /* staging bytes per rank per buffer; 0 = 4 MiB. Larger messages go in
                            pieces. The same on every rank. */
} qv_comm_shm_opts;

/* Joins (rank 0: creates) the group named by opts->token and returns once all size ranks have
 * joined, or fails after the timeout. The segment's name is removed as soon as the group is
 * complete (and on any failure), so a crashed group leaves no name behind. */
int qv_comm_shm_create(const qv_comm_shm_opts *opts, qv_comm **out, qv_error *err);

/* A fresh random group token (32 hex characters and a NUL) in out. */
int qv_comm_shm_token(char out[33], qv_error *err);

/* ---- nccl (a CUDA build with NCCL; elsewhere every call returns QV_EUNSUPPORTED) ---- */

enum { QV_COMM_NCCL_ID_BYTES = 128 };

/* 1 when this build has the NCCL communicator. */
int qv_comm_nccl_available(void);

/* A new NCCL unique id (made once, by rank 0, and sent to every rank). */
int qv_comm_nccl_unique_id(uint8_t id[QV_COMM_NCCL_ID_BYTES], qv_error *err);

typedef struct qv_comm_nccl_opts {
  const uint8_t *unique_id; /* borrowed, QV_COMM_NCCL_ID_BYTES: the same on every rank */
  int rank, size;
  int device;     /* CUDA device of this rank */
  int timeout_ms; /* 0 = QV_COMM_DEFAULT_TIMEOUT_MS */
  /* NULL: the communicator makes its own stream and every collective returns once complete.
   * Else a cudaStream_t on opts->device, borrowed until destroy (the rank's backend stream):
   * collectives are enqueued on it behind the work already queued there, so they need no event
   * and no host round trip, and return once enqueued; their buffers must stay untouched until
   * qv_comm_sync returns (which the caller must reach before it reads the results on the host).
   * The barrier is always waited for. */
  void *stream;
} qv_comm_nccl_opts;

/* Creates this rank's NCCL communicator (non-blocking init, bounded by the timeout) and, unless
 * opts->stream is given, its own CUDA stream on opts->device. Ranks of one process call it from
 * one thread each, concurrently (NCCL's init waits for every rank). */
int qv_comm_nccl_create(const qv_comm_nccl_opts *opts, qv_comm **out, qv_error *err);

#endif
