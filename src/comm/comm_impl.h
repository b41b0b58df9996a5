/* What a communicator implementation provides: a vtable plus the common fields every handle
 * starts with. comm.c checks arguments and the aborted state before calling a slot, so an
 * implementation sees only valid calls on a live communicator. */
#ifndef QV_COMM_COMM_IMPL_H
#define QV_COMM_COMM_IMPL_H

#include "comm/comm.h"

typedef struct qv_comm_ops {
  const char *kind;
  int (*all_reduce_sum)(qv_comm *c, void *buf, size_t count, qv_comm_dtype dtype, qv_error *err);
  int (*all_gather)(qv_comm *c, const void *send, void *recv, size_t count, qv_comm_dtype dtype,
                    qv_error *err);
  int (*broadcast)(qv_comm *c, void *buf, size_t n_bytes, int root, qv_error *err);
  int (*barrier)(qv_comm *c, qv_error *err);
  int (*sync)(qv_comm *c, qv_error *err); /* optional: NULL when collectives complete on return */
  int (*aborted)(const qv_comm *c); /* the group-wide aborted state */
  void (*destroy)(qv_comm *c);
} qv_comm_ops;

struct qv_comm {
  const qv_comm_ops *ops;
  int rank, size;
  int timeout_ms;
};

#endif
