/* quiver serve's configuration as parsed from the command line (and the --config file it
 * names), apart from running it, so tests can check that every spelling of an option (quiver's,
 * vLLM's, llama.cpp's) yields the same configuration. */
#ifndef QV_CLI_SERVE_CFG_H
#define QV_CLI_SERVE_CFG_H

#include "cli/opts.h"
#include "models/model.h"
#include "server/cors.h"
#include "server/models.h"
#include "server/registry.h"
#include "server/server.h"
#include "server/tls.h"

#define SERVE_MAX_CLI_MODELS REG_MAX_MODELS

typedef struct serve_cfg {
  registry reg;                 /* models, aliases, routes, keys (config file, then flags) */
  server_opts so;               /* limits, timeouts; so.cors / so.tls point into this struct */
  srv_load_opts lo;             /* per-model engine defaults */
  cli_engine_cfg eng;           /* the shared engine options as given */
  cors_opts cors;
  tls_opts tls;
  const char *host;             /* borrowed from argv or reg; NULL: default */
  int32_t port;                 /* -1: not given */
  const char *models[SERVE_MAX_CLI_MODELS]; /* --model / positional arguments, borrowed */
  int32_t n_models;
  const char *served[REG_MAX_NAMES]; /* --served-model-name: [0] names the model, the rest are
                                        aliases */
  int32_t n_served;
  const char *log_level;        /* "error" | "warn" | "info" | "debug" (normalized) or NULL */
  qv_tp_net_opts tp_net;        /* --nnodes, --node-rank, --master-addr/-port, --tp-token; lo.tp_net
                                   points here when nnodes > 1 */
} serve_cfg;

/* Parses argv (argv[0] is "serve") into c, which it initializes. Returns 0, CLI_HELP, or a
 * negative code with err set; c must be freed with serve_cfg_deinit in every case. The result
 * is final: the registry is finalized (the embedded model added when none is named). */
int serve_cfg_parse(serve_cfg *c, int argc, char **argv, qv_error *err);
void serve_cfg_deinit(serve_cfg *c);
/* Prints the usage of quiver serve. */
void serve_cfg_usage(FILE *f);

#endif
