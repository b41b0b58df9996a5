/* quiver serve across several processes (serve_tp.c): the worker node's loop and node 0's watch
 * for a lost node. */
#ifndef QV_CLI_SERVE_TP_H
#define QV_CLI_SERVE_TP_H

#include <uv.h>

#include "cli/serve_cfg.h"
#include "server/models.h"
#include "server/server.h"

/* Node rank > 0: loads this node's ranks of the one configured model, runs node 0's steps until
 * it stops them; the process exit status (0: stopped by node 0, 1: failed or lost node 0). */
int serve_tp_worker(const serve_cfg *c);

typedef struct serve_tp_watch serve_tp_watch;
/* Node 0: on a lost node, marks models[0..n_models) unavailable and shuts srv down after a grace
 * period. Call on the loop thread after server_create. */
int serve_tp_watch_start(uv_loop_t *loop, server *srv, srv_models *loaded, srv_model *models, int32_t n_models,
                         serve_tp_watch **out);
/* 1 once a node was lost (the process should exit non-zero). */
int serve_tp_watch_lost(const serve_tp_watch *w);
/* Closes the watch's handles (after the models are destroyed: no link thread calls it any more);
 * run the loop once more to finish. Accepts NULL. */
void serve_tp_watch_close(serve_tp_watch *w);

#endif
