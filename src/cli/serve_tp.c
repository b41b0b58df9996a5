/* quiver serve across several processes (--nnodes): the worker side (node rank > 0: load this
 * node's ranks, run the steps node 0 sends, no HTTP) and node 0's reaction to a lost node.
 *
 * A lost node cannot be recovered (its ranks held a share of every layer): node 0 marks every
 * model unavailable (/health answers 503, requests are refused), waits SERVE_TP_LOST_GRACE_MS so
 * probes can see it, then drains and exits with status 1. A closed link is seen at the link
 * thread's next poll (100 ms); a silent one after 30 s (the communicator's timeout: a worker
 * polls only between steps); the stop then takes the grace + --drain-timeout. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "cli/serve_tp.h"
#include "core/log.h"
#include "models/model.h"
#include "quiver/engine.h"

enum { SERVE_TP_LOST_GRACE_MS = 2000 };

int serve_tp_worker(const serve_cfg *c) {
  const reg_model *rm = &c->reg.models[0];
  int tiny = !strcmp(rm->path, "quiver-tiny");
  /* The same activation limits as node 0's engine, so every step it sends fits. */
  qv_engine_opts eo;
  qv_engine_opts_default(&eo);
  if (c->lo.max_num_batched_tokens) eo.max_num_batched_tokens = c->lo.max_num_batched_tokens;
  qv_model_opts mo = {.max_batch_tokens = eo.max_num_batched_tokens, .max_logits = 0,
                      .tp_size = rm->tp_size ? rm->tp_size : c->lo.tp_size, .n_threads = c->lo.n_threads,
                      .tp_net = &c->tp_net};
  qv_error err = {0};
  qv_backend *be = NULL;
  qv_model *m = NULL;
  /* The group's backend kind (node 0 checks it is the same as its own in INIT); the ranks make
   * their own backends, so this one holds nothing. */
  const char *device = rm->device ? rm->device : (c->lo.device ? c->lo.device : "cpu");
  qv_backend_opts bo = {.n_threads = 1};
  int rc = qv_backend_create(device, &bo, &be, &err);
  if (!rc) rc = qv_model_load(tiny ? NULL : rm->path, be, &mo, &m, &err);
  if (!rc) {
    fprintf(stderr, "quiver serve: node %d of %d running tensor parallel ranks for node 0 at %s:%d\n",
            c->tp_net.node_rank, c->tp_net.nnodes, c->tp_net.master_addr, c->tp_net.master_port);
    fflush(stderr);
    rc = qv_model_tp_worker_run(m, &err);
  }
  if (rc) fprintf(stderr, "quiver serve: node %d: %s\n", c->tp_net.node_rank, err.msg);
  else fprintf(stderr, "quiver serve: node %d stopped by node 0\n", c->tp_net.node_rank);
  qv_model_destroy(m);
  qv_backend_destroy(be);
  return rc ? 1 : 0;
}

struct serve_tp_watch {
  uv_async_t async;
  uv_timer_t timer;
  server *srv;
  srv_model *models;
  int32_t n_models;
  atomic_int lost;
};

/* Link thread: only flags and wakes the loop. */
static void on_lost(void *ud) {
  serve_tp_watch *w = ud;
  atomic_store(&w->lost, 1);
  uv_async_send(&w->async);
}

static void on_grace(uv_timer_t *t) {
  serve_tp_watch *w = t->data;
  server_shutdown(w->srv);
}

/* Loop thread: every model unavailable, then the drain after the grace period. */
static void on_async(uv_async_t *a) {
  serve_tp_watch *w = a->data;
  if (!atomic_load(&w->lost)) return;
  for (int32_t i = 0; i < w->n_models; i++) {
    w->models[i].ready = 0;
    w->models[i].state = "failed: a tensor-parallel node was lost";
  }
  fprintf(stderr, "quiver serve: a tensor-parallel node was lost; stopping in %d ms\n", SERVE_TP_LOST_GRACE_MS);
  uv_timer_start(&w->timer, on_grace, SERVE_TP_LOST_GRACE_MS, 0);
}

int serve_tp_watch_start(uv_loop_t *loop, server *srv, srv_models *loaded, srv_model *models, int32_t n_models,
                         serve_tp_watch **out) {
  *out = NULL;
  serve_tp_watch *w = calloc(1, sizeof *w);
  if (!w) return QV_ENOMEM;
  w->srv = srv;
  w->models = models;
  w->n_models = n_models;
  uv_async_init(loop, &w->async, on_async);
  uv_timer_init(loop, &w->timer);
  w->async.data = w->timer.data = w;
  /* Neither handle keeps the loop alive: the server's own handles do. */
  uv_unref((uv_handle_t *)&w->async);
  uv_unref((uv_handle_t *)&w->timer);
  for (int32_t i = 0; i < n_models; i++) {
    qv_model *m = srv_models_model(loaded, i);
    if (m && qv_model_tp_size(m) > 1) qv_model_tp_on_lost(m, on_lost, w);
  }
  *out = w;
  return 0;
}

int serve_tp_watch_lost(const serve_tp_watch *w) { return w && atomic_load(&w->lost); }

static void free_on_close(uv_handle_t *h) {
  serve_tp_watch *w = h->data;
  if (h == (uv_handle_t *)&w->timer) free(w);
}

void serve_tp_watch_close(serve_tp_watch *w) {
  if (!w) return;
  uv_close((uv_handle_t *)&w->async, NULL);
  uv_close((uv_handle_t *)&w->timer, free_on_close);
}
