/* quiver serve: loads the configured models (or the embedded quiver-tiny), starts one engine
 * thread per model and serves the OpenAI-compatible HTTP API on one libuv loop until SIGINT or
 * SIGTERM, which drain in-flight requests up to a deadline and exit 0.
 *
 * The options (serve_cfg.c) build a registry (src/server/registry.h); a --config file is merged
 * first so that flags given on the command line add to it and override its host, port and
 * limits. */
#include <signal.h>
#include <stdio.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "cli/cli.h"
#include "cli/serve_cfg.h"
#include "cli/serve_tp.h"
#include "core/log.h"
#include "fleet/fleet.h"
#include "server/models.h"
#include "server/registry.h"
#include "server/server.h"

/* The admin API's run-time add (server_opts.add_model): the registry, then the model's slot. */
typedef struct serve_adder {
  registry *reg;
  srv_models *loaded;
} serve_adder;

static int serve_reusable(void *arg, int32_t idx) {
  return fleet_idle_unloaded(srv_models_fleet(((serve_adder *)arg)->loaded), idx);
}

static int serve_add_model(void *arg, const char *body, size_t len, int32_t *idx, qv_error *err) {
  serve_adder *a = arg;
  int rc = registry_add_model_json(a->reg, body, len, serve_reusable, a, idx, err);
  return rc ? rc : srv_models_add(a->loaded, *idx, err);
}

int cli_serve(int argc, char **argv) {
  serve_cfg c;
  qv_error err = {0};
  int rc = serve_cfg_parse(&c, argc, argv, &err);
  if (rc == CLI_HELP) {
    serve_cfg_usage(stdout);
    serve_cfg_deinit(&c);
    return 0;
  }
  if (rc) {
    fprintf(stderr, "quiver serve: %s\n", err.msg);
    serve_cfg_deinit(&c);
    return 2;
  }
  /* The logger reads its threshold from the environment on every call (no global state). */
  if (c.log_level) setenv("QUIVER_LOG", c.log_level, 1);
  registry *reg = &c.reg;
  server_opts so = c.so;

  /* A peer that vanishes mid-write must not kill the process. */
  signal(SIGPIPE, SIG_IGN);
#ifdef __GLIBC__
  /* Large request and answer buffers (bodies, tokenize answers) come and go: serve them from
   * mmap at a fixed threshold (glibc would otherwise raise it after each free and keep them in
   * the heap), and give freed heap back to the system, so the resident set stays flat. */
  mallopt(M_MMAP_THRESHOLD, 256 * 1024);
  mallopt(M_TRIM_THRESHOLD, 1024 * 1024);
#endif
  /* libuv's pool prepares ordinary requests (parsing, tokenizing, templates); large ones go to
   * the server's own heavy pool. Sized from the machine unless the user set it. */
  if (!getenv("UV_THREADPOOL_SIZE")) {
    char n[16];
    unsigned cores = uv_available_parallelism();
    snprintf(n, sizeof n, "%u", cores < 4 ? 4 : cores > 64 ? 64 : cores);
    setenv("UV_THREADPOOL_SIZE", n, 1);
  }

  if (c.tp_net.nnodes > 1 && c.tp_net.node_rank > 0) {
    /* A tensor-parallel worker node: no HTTP, node 0's steps only. */
    rc = serve_tp_worker(&c);
    serve_cfg_deinit(&c);
    return rc;
  }
  srv_models *loaded = NULL;
  srv_model *models = NULL;
  if (srv_models_load(reg, &c.lo, &loaded, &models, &err)) {
    fprintf(stderr, "quiver serve: %s\n", err.msg);
    serve_cfg_deinit(&c);
    return 1;
  }
  uv_loop_t loop;
  uv_loop_init(&loop);
  server *srv = NULL;
  so.fleet = srv_models_fleet(loaded);
  so.budget = srv_models_budget(loaded);
  serve_adder adder = {.reg = reg, .loaded = loaded};
  if (c.tp_net.nnodes <= 1) { /* a multi-node model set is fixed at start */
    so.add_model = serve_add_model;
    so.add_model_arg = &adder;
  }
  if (server_create(&loop, reg, models, &so, &srv, &err)) {
    fprintf(stderr, "quiver serve: %s\n", err.msg);
    uv_run(&loop, UV_RUN_DEFAULT); /* close what was opened */
    uv_loop_close(&loop);
    srv_models_destroy(loaded);
    serve_cfg_deinit(&c);
    return 1;
  }
  void (*changed)(void *, int32_t);
  void *changed_arg;
  server_fleet_hook(srv, &changed, &changed_arg);
  srv_models_set_changed(loaded, changed, changed_arg);
  serve_tp_watch *tpw = NULL;
  if (c.tp_net.nnodes > 1) serve_tp_watch_start(&loop, srv, loaded, models, reg->n_models, &tpw);
  /* The one line tools wait for: the address actually bound. */
  fprintf(stderr, "quiver serve: listening on %s://%s:%d (%d model%s)\n",
          so.tls ? "https" : "http", so.host, server_port(srv), reg->n_models,
          reg->n_models == 1 ? "" : "s");
  fflush(stderr);
  uv_run(&loop, UV_RUN_DEFAULT);
  int aborted = server_aborted(srv), lost = serve_tp_watch_lost(tpw);
  srv_models_stop(loaded);
  server_destroy(srv);
  srv_models_destroy(loaded);
  serve_tp_watch_close(tpw);
  uv_run(&loop, UV_RUN_DEFAULT); /* the watch's close callbacks */
  uv_loop_close(&loop);
  serve_cfg_deinit(&c);
  fprintf(stderr, "quiver serve: stopped%s\n", lost ? " (a tensor-parallel node was lost)"
                                               : aborted ? " (requests aborted)" : "");
  return aborted || lost ? 1 : 0;
}
