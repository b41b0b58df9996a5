/* A second worker pool for the server's expensive jobs (tokenizing or rendering a large body,
 * serialising a large answer), apart from libuv's pool that prepares ordinary requests, so that
 * a few huge requests cannot make a trivial one wait behind them.
 *
 * Same contract as uv_queue_work: work runs on a pool thread, after runs on the loop thread
 * (status 0, or UV_ECANCELED for jobs still queued when the queue is destroyed). Completions
 * reach the loop through one uv_async_t (sends coalesce: the callback drains the whole list).
 * The async handle is unref'd so the queue never keeps uv_run alive by itself. */
#ifndef QV_SERVER_WORKQ_H
#define QV_SERVER_WORKQ_H

#include <uv.h>

typedef struct srv_workq srv_workq;

typedef struct srv_work {
  struct srv_work *next;                 /* owned by the queue while queued */
  void (*work)(struct srv_work *w);      /* pool thread */
  void (*after)(struct srv_work *w, int status); /* loop thread */
  void *data;
} srv_work;

/* n_threads >= 1. loop is borrowed and must outlive the queue. */
int workq_create(uv_loop_t *loop, int n_threads, srv_workq **out);
/* Loop thread. w (with work, after, data set) is borrowed until after has run. */
void workq_submit(srv_workq *q, srv_work *w);
/* Loop thread: stops the threads once running jobs end, then calls after(UV_ECANCELED) for the
 * queued ones and after(0) for finished ones not yet delivered; closes the async handle (the
 * queue is freed in its close callback). Accepts NULL. */
void workq_destroy(srv_workq *q);

#endif
