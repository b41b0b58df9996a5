/* quiver serve's option table and its mapping onto the server's configuration (serve_cfg.h).
 *
 * Two passes over argv: the first only loads --config files, so that flags given on the command
 * line add to a config file and override its host, port and limits wherever they appear. */
#include "cli/serve_cfg.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chat/chat.h"

enum {
  S_MODEL = 1,
  S_SERVED_NAME,
  S_ALIAS,
  S_CONFIG,
  S_HOST,
  S_PORT,
  S_API_KEY,
  S_OPEN_PATH,
  S_REASONING,
  S_CHAT_TEMPLATE,
  S_TOOL_PARSER,
  S_AUTO_TOOL,
  S_LOG_LEVEL,
  S_NO_LOG_REQUESTS,
  S_LOG_REQUESTS,
  S_METRICS,
  S_MAX_WAITING,
  S_MAX_BODY,
  S_MAX_HEADER,
  S_HEADER_TIMEOUT,
  S_BODY_TIMEOUT,
  S_IDLE_TIMEOUT,
  S_MAX_CONNS,
  S_DRAIN_TIMEOUT,
  S_ORIGINS,
  S_METHODS,
  S_HEADERS,
  S_CREDENTIALS,
  S_SSL_CERT,
  S_SSL_KEY,
  S_SSL_CA,
  S_MAX_CONNS_CLIENT,
  S_MAX_BUFFERED_BODY,
  S_MAX_OUTPUT_BACKLOG,
  S_MAX_REQUEST_SEQS,
  S_MAX_TOTAL_OUTPUT,
  S_LINGER_TIMEOUT,
  S_MAX_PIPELINE,
  S_PROBE_CONNS,
  S_MEMORY_BUDGET,
  S_ADMIN_KEY,
  S_NNODES,
  S_NODE_RANK,
  S_MASTER_ADDR,
  S_MASTER_PORT,
  S_TP_TOKEN,
};

static const cli_opt serve_opts[] = {
    {S_MODEL, CLI_OPT_STR, {"--model", "-m"}, 0, 0, "[NAME=]PATH",
     "serve a model directory (repeatable; also the positional argument). NAME defaults to\n"
     "the directory name; PATH quiver-tiny is the embedded model (the default)"},
    {S_SERVED_NAME, CLI_OPT_STR, {"--served-model-name", "-a"}, 0, 0, "NAME",
     "the name clients use for the one model given (repeatable: later names are aliases)"},
    {S_ALIAS, CLI_OPT_STR, {"--alias"}, 0, 0, "ALIAS=NAME",
     "another name for a model or route (repeatable); without '=' (llama.cpp's form) the\n"
     "same as --served-model-name"},
    {S_CONFIG, CLI_OPT_STR, {"--config"}, 0, 0, "FILE",
     "JSON config: models, aliases, routes, keys (see README)"},
    {S_HOST, CLI_OPT_STR, {"--host"}, 0, 0, "ADDR", "listen address (default 127.0.0.1)"},
    {S_PORT, CLI_OPT_INT, {"--port"}, 0, 65535, "N", "listen port (default 8000; 0 picks a free one)"},
    {S_API_KEY, CLI_OPT_STR, {"--api-key"}, 0, 0, "KEY",
     "require 'Authorization: Bearer KEY' (repeatable; also QUIVER_API_KEY)"},
    {S_OPEN_PATH, CLI_OPT_STR, {"--open-path"}, 0, 0, "PATH",
     "serve PATH without a key (repeatable; default /health; add /metrics for Prometheus)"},
    {S_REASONING, CLI_OPT_STR, {"--reasoning-parser"}, 0, 0, "NAME",
     "split <think> reasoning off chat output into reasoning_content: deepseek_r1, qwen3 or\n"
     "none (default); a config model's \"reasoning_parser\" wins"},
    {S_CHAT_TEMPLATE, CLI_OPT_STR, {"--chat-template", "--chat-template-file"}, 0, 0, "FILE|TEXT",
     "a Jinja chat template file, or the template text itself, replacing the models' own"},
    {S_TOOL_PARSER, CLI_OPT_STR, {"--tool-call-parser"}, 0, 0, "NAME",
     "tool-call format of chat output: hermes, llama3_json (llama3), mistral, none\n"
     "(default: detected from the chat template)"},
    {S_AUTO_TOOL, CLI_OPT_FLAG, {"--enable-auto-tool-choice"}, 0, 0, NULL,
     "accepted for vLLM compatibility: quiver always parses tool calls of a known format"},
    {S_LOG_LEVEL, CLI_OPT_STR, {"--log-level", "--uvicorn-log-level"}, 0, 0, "LEVEL",
     "debug, info (default), warning or error (sets QUIVER_LOG)"},
    {S_NO_LOG_REQUESTS, CLI_OPT_FLAG, {"--disable-log-requests", "--no-enable-log-requests"}, 0, 0,
     NULL, "no access-log line per request"},
    {S_LOG_REQUESTS, CLI_OPT_FLAG, {"--enable-log-requests"}, 0, 0, NULL,
     "one access-log line per request (the default)"},
    {S_METRICS, CLI_OPT_FLAG, {"--metrics"}, 0, 0, NULL,
     "accepted for llama.cpp compatibility: /metrics is always served"},
    {S_MAX_WAITING, CLI_OPT_INT, {"--max-waiting"}, 1, 1 << 20, "N",
     "queued requests per model before 429 / route fallback"},
    {S_MAX_BODY, CLI_OPT_INT, {"--max-body-bytes"}, 1024, 1 << 30, "N",
     "request body limit (default 8 MiB) -> 413"},
    {S_MAX_HEADER, CLI_OPT_INT, {"--max-header-bytes"}, 1024, 1 << 20, "N",
     "request line + headers limit (default 16 KiB) -> 431"},
    {S_HEADER_TIMEOUT, CLI_OPT_INT, {"--header-timeout"}, 1, 3600, "S",
     "seconds to receive the headers, TLS handshake included (default 10) -> 408"},
    {S_BODY_TIMEOUT, CLI_OPT_INT, {"--body-timeout"}, 1, 3600, "S",
     "seconds to receive the body (default 30) -> 408"},
    {S_IDLE_TIMEOUT, CLI_OPT_INT, {"--idle-timeout"}, 1, 86400, "S",
     "keep-alive idle seconds (default 60)"},
    {S_MAX_CONNS, CLI_OPT_INT, {"--max-connections"}, 1, 1 << 20, "N",
     "open connections at most (default 1024; 8 more are kept for /health; beyond: 503 and\n"
     "close)"},
    {S_MAX_CONNS_CLIENT, CLI_OPT_INT, {"--max-connections-per-client"}, 1, 1 << 20, "N",
     "open connections per client address (default 256)"},
    {S_MAX_BUFFERED_BODY, CLI_OPT_INT, {"--max-buffered-body-bytes"}, 1 << 20, 1099511627776.0, "N",
     "request bodies held by the server at once (default 256 MiB) -> 503"},
    {S_MAX_OUTPUT_BACKLOG, CLI_OPT_INT, {"--max-output-backlog-bytes"}, 4096, 4294967296.0, "N",
     "unsent bytes per connection before it is no longer read (default 1 MiB)"},
    {S_MAX_REQUEST_SEQS, CLI_OPT_INT, {"--max-request-sequences"}, 1, 1 << 20, "N",
     "prompts x n of one request (default 256) -> 400"},
    {S_MAX_TOTAL_OUTPUT, CLI_OPT_INT, {"--max-total-output-bytes"}, 1 << 20, 17592186044416.0, "N",
     "unsent answer bytes of the server (default 1 GiB); a large answer past it becomes a 503"},
    {S_LINGER_TIMEOUT, CLI_OPT_INT, {"--linger-timeout"}, 0, 60, "S",
     "read and drop a refused request's body this long (default 2)"},
    {S_MAX_PIPELINE, CLI_OPT_INT, {"--max-pipeline-bytes"}, 4096, 1073741824.0, "N",
     "pipelined request bytes buffered per connection (default 256 KiB)"},
    {S_MEMORY_BUDGET, CLI_OPT_STR, {"--memory-budget"}, 0, 0, "BYTES|FRACTION",
     "one memory budget for the weights and KV of every model: bytes (suffix K, M, G, or\n"
     "Ki, Mi, Gi) or a fraction of RAM such as 0.5; idle models are evicted for room"},
    {S_ADMIN_KEY, CLI_OPT_STR, {"--admin-key"}, 0, 0, "KEY",
     "enable the admin API (/admin/v1/...) for 'Authorization: Bearer KEY' (repeatable;\n"
     "must differ from every --api-key)"},
    {S_NNODES, CLI_OPT_INT, {"--nnodes"}, 1, 64, "M",
     "tensor parallelism over M processes (nodes): each runs --tp / M ranks, node 0 serves\n"
     "HTTP and schedules, the others run their ranks; cpu ranks on this host (shm), cuda\n"
     "ranks on several machines (NCCL, local rank i on CUDA device i) (default 1)"},
    {S_NODE_RANK, CLI_OPT_INT, {"--node-rank"}, 0, 63, "R", "this process's node, 0..M-1 (default 0)"},
    {S_MASTER_ADDR, CLI_OPT_STR, {"--master-addr"}, 0, 0, "HOST",
     "node 0's control-channel address (default 127.0.0.1)"},
    {S_MASTER_PORT, CLI_OPT_INT, {"--master-port"}, 1, 65535, "P", "node 0's control-channel port"},
    {S_TP_TOKEN, CLI_OPT_STR, {"--tp-token"}, 0, 0, "TOKEN",
     "shared secret (>= 16 characters) authenticating the nodes' control links (also\n"
     "QUIVER_TP_TOKEN)"},
    {S_PROBE_CONNS, CLI_OPT_INT, {"--probe-connections"}, 0, 1 << 16, "N",
     "connections kept for /health beyond --max-connections (default 8)"},
    {S_DRAIN_TIMEOUT, CLI_OPT_INT, {"--drain-timeout"}, 0, 3600, "S",
     "on SIGINT/SIGTERM, wait this long for requests (default 30)"},
    {S_ORIGINS, CLI_OPT_STR, {"--allowed-origins"}, 0, 0, "LIST",
     "CORS: origins allowed to call the API, a JSON list or comma-separated (\"*\": any);\n"
     "off by default"},
    {S_METHODS, CLI_OPT_STR, {"--allowed-methods"}, 0, 0, "LIST",
     "CORS: methods a preflight allows (default GET, POST, OPTIONS)"},
    {S_HEADERS, CLI_OPT_STR, {"--allowed-headers"}, 0, 0, "LIST",
     "CORS: request headers a preflight allows (default: those requested)"},
    {S_CREDENTIALS, CLI_OPT_FLAG, {"--allow-credentials"}, 0, 0, NULL,
     "CORS: send Access-Control-Allow-Credentials: true"},
    {S_SSL_CERT, CLI_OPT_STR, {"--ssl-certfile", "--ssl-cert-file"}, 0, 0, "FILE",
     "serve HTTPS with this PEM certificate chain (needs --ssl-keyfile)"},
    {S_SSL_KEY, CLI_OPT_STR, {"--ssl-keyfile", "--ssl-key-file"}, 0, 0, "FILE",
     "the PEM private key of --ssl-certfile"},
    {S_SSL_CA, CLI_OPT_STR, {"--ssl-ca-certs"}, 0, 0, "FILE",
     "mutual TLS: require client certificates signed by these PEM CAs"},
};

static const cli_spec serve_spec = {
    .prog = "quiver serve",
    .synopsis = "quiver serve [MODEL] [options]",
    .own = serve_opts,
    .n_own = (int)(sizeof serve_opts / sizeof serve_opts[0]),
    .common = cli_engine_opts,
    .n_common = 0, /* set at run time from cli_n_engine_opts */
    .positional_id = S_MODEL,
    .first_arg = 1,
};

static cli_spec spec_of(void) {
  cli_spec s = serve_spec;
  s.n_common = cli_n_engine_opts;
  return s;
}

void serve_cfg_usage(FILE *f) {
  cli_spec s = spec_of();
  cli_usage(&s, f);
  fprintf(f, "With no model and no config models: the embedded quiver-tiny.\n");
}

typedef struct pass_ctx {
  serve_cfg *c;
  int pass; /* 0: --config only; 1: everything else */
} pass_ctx;

/* --memory-budget: "8G", "512Mi", "1000000" (bytes) or "0.5" (a fraction of the machine's
 * RAM). The CPU backend's weights and KV live in RAM, so RAM is what the budget divides. */
static int parse_memory_budget(const char *s, srv_load_opts *lo, qv_error *err) {
  char *end = NULL;
  double v = strtod(s, &end);
  if (end == s || !(v > 0))
    return qv_error_set(err, QV_EINVAL, "--memory-budget '%s': expected bytes (e.g. 8G) or a fraction (0.5)", s);
  static const struct {
    const char *suffix;
    double mul;
  } units[] = {{"", 1},         {"K", 1e3},       {"M", 1e6},       {"G", 1e9},       {"T", 1e12},
               {"Ki", 1024.0}, {"Mi", 1048576.0}, {"Gi", 1073741824.0}, {"Ti", 1099511627776.0}};
  for (size_t i = 0; i < sizeof units / sizeof *units; i++) {
    if (strcmp(end, units[i].suffix)) continue;
    if (!*end && v <= 1.0) { /* a fraction of RAM (here) or of device memory (at load, cuda) */
      long pages = sysconf(_SC_PHYS_PAGES), psize = sysconf(_SC_PAGESIZE);
      lo->memory_budget_fraction = v;
      v *= (double)pages * (double)psize;
    } else {
      lo->memory_budget_fraction = 0;
      v *= units[i].mul;
    }
    if (v < 1 || v > 9e18) break;
    lo->memory_budget = (int64_t)v;
    return 0;
  }
  return qv_error_set(err, QV_EINVAL, "--memory-budget '%s': expected bytes (e.g. 8G, 512Mi) or a fraction (0.5)", s);
}

static int on_opt(void *ud, const cli_opt *o, const cli_value *v, qv_error *err) {
  pass_ctx *p = ud;
  serve_cfg *c = p->c;
  if (p->pass == 0) return o->id == S_CONFIG ? registry_load_file(&c->reg, v->str, err) : 0;
  if (o->id >= CLI_E_DEVICE) return cli_engine_apply(&c->eng, o, v, err);
  uint64_t ms = (uint64_t)v->i * 1000u;
  switch (o->id) {
  case S_CONFIG: return 0;
  case S_MODEL:
    if (c->n_models == SERVE_MAX_CLI_MODELS)
      return qv_error_set(err, QV_ELIMIT, "too many models (at most %d)", SERVE_MAX_CLI_MODELS);
    c->models[c->n_models++] = v->str;
    return 0;
  case S_ALIAS:
    if (strchr(v->str, '=')) return registry_add_alias_arg(&c->reg, v->str, err);
    /* llama.cpp's --alias NAME names the model */
    __attribute__((fallthrough));
  case S_SERVED_NAME:
    if (c->n_served == REG_MAX_NAMES) return qv_error_set(err, QV_ELIMIT, "too many served names");
    if (!*v->str || strchr(v->str, '='))
      return qv_error_set(err, QV_EINVAL, "%s '%s': a model name is not empty and has no '='",
                          o->names[0], v->str);
    c->served[c->n_served++] = v->str;
    return 0;
  case S_HOST: c->host = v->str; return 0;
  case S_PORT: c->port = (int32_t)v->i; return 0;
  case S_API_KEY: return registry_add_api_key(&c->reg, v->str, err);
  case S_OPEN_PATH: return registry_add_open_path(&c->reg, v->str, err);
  case S_REASONING: return registry_reasoning_parse(v->str, &c->lo.reasoning, err);
  case S_CHAT_TEMPLATE:
    if (!*v->str) return qv_error_set(err, QV_EINVAL, "--chat-template is empty");
    c->lo.chat_template = v->str;
    return 0;
  case S_TOOL_PARSER: {
    /* vLLM's parser names over quiver's formats. */
    static const struct {
      const char *name;
      qv_chat_tool_format fmt;
    } map[] = {{"llama3_json", QV_CHAT_TOOLS_LLAMA3}, {"llama4_json", QV_CHAT_TOOLS_LLAMA3},
               {"qwen", QV_CHAT_TOOLS_HERMES},         {"qwen2_5", QV_CHAT_TOOLS_HERMES}};
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
      if (!strcmp(v->str, map[i].name)) {
        c->lo.tool_parser = (int32_t)map[i].fmt;
        return 0;
      }
    qv_chat_tool_format f;
    if (qv_chat_tool_format_parse(v->str, &f))
      return qv_error_set(err, QV_EINVAL,
                          "--tool-call-parser '%s': expected hermes, llama3_json, mistral or none",
                          v->str);
    c->lo.tool_parser = (int32_t)f;
    return 0;
  }
  case S_AUTO_TOOL: return 0;
  case S_METRICS: return 0;
  case S_LOG_LEVEL: {
    static const char *const map[][2] = {{"debug", "debug"}, {"trace", "debug"},
                                         {"info", "info"},   {"warning", "warn"},
                                         {"warn", "warn"},   {"error", "error"},
                                         {"critical", "error"}};
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
      if (!strcmp(v->str, map[i][0])) {
        c->log_level = map[i][1];
        return 0;
      }
    return qv_error_set(err, QV_EINVAL, "--log-level must be debug, info, warning or error, got '%s'",
                        v->str);
  }
  case S_NO_LOG_REQUESTS: c->so.limits.access_log = 0; return 0;
  case S_LOG_REQUESTS: c->so.limits.access_log = 1; return 0;
  case S_MAX_WAITING: c->lo.max_waiting = (int32_t)v->i; return 0;
  case S_MAX_BODY: c->so.limits.max_body_bytes = (size_t)v->i; return 0;
  case S_MAX_HEADER: c->so.limits.max_header_bytes = (size_t)v->i; return 0;
  case S_HEADER_TIMEOUT: c->so.limits.header_timeout_ms = ms; return 0;
  case S_BODY_TIMEOUT: c->so.limits.body_timeout_ms = ms; return 0;
  case S_IDLE_TIMEOUT: c->so.limits.idle_timeout_ms = ms; return 0;
  case S_MAX_CONNS: c->so.limits.max_connections = (int32_t)v->i; return 0;
  case S_DRAIN_TIMEOUT: c->so.drain_timeout_ms = ms; return 0;
  case S_MAX_CONNS_CLIENT: c->so.limits.max_connections_per_client = (int32_t)v->i; return 0;
  case S_MAX_BUFFERED_BODY: c->so.limits.max_buffered_body_bytes = (size_t)v->i; return 0;
  case S_MAX_OUTPUT_BACKLOG: c->so.limits.max_conn_output_bytes = (size_t)v->i; return 0;
  case S_MAX_REQUEST_SEQS: c->so.max_request_seqs = (int32_t)v->i; return 0;
  case S_MAX_TOTAL_OUTPUT: c->so.limits.max_total_output_bytes = (size_t)v->i; return 0;
  case S_LINGER_TIMEOUT: c->so.limits.linger_ms = ms; return 0;
  case S_MAX_PIPELINE: c->so.limits.max_pipeline_bytes = (size_t)v->i; return 0;
  case S_PROBE_CONNS: c->so.limits.probe_connections = (int32_t)v->i; return 0;
  case S_MEMORY_BUDGET: return parse_memory_budget(v->str, &c->lo, err);
  case S_ADMIN_KEY: return registry_add_admin_key(&c->reg, v->str, err);
  case S_NNODES: c->tp_net.nnodes = (int32_t)v->i; return 0;
  case S_NODE_RANK: c->tp_net.node_rank = (int32_t)v->i; return 0;
  case S_MASTER_ADDR: c->tp_net.master_addr = v->str; return 0;
  case S_MASTER_PORT: c->tp_net.master_port = (int32_t)v->i; return 0;
  case S_TP_TOKEN: c->tp_net.token = v->str; return 0;
  case S_ORIGINS: return cors_opts_add_origins(&c->cors, v->str, err);
  case S_METHODS: return cors_opts_add_methods(&c->cors, v->str, err);
  case S_HEADERS: return cors_opts_add_headers(&c->cors, v->str, err);
  case S_CREDENTIALS: c->cors.allow_credentials = 1; return 0;
  case S_SSL_CERT: c->tls.certfile = v->str; return 0;
  case S_SSL_KEY: c->tls.keyfile = v->str; return 0;
  case S_SSL_CA: c->tls.ca_certs = v->str; return 0;
  default: return qv_error_set(err, QV_EINVAL, "internal: unhandled option %s", o->names[0]);
  }
}

/* The command-line models go into the registry; --served-model-name renames the one given. */
static int add_models(serve_cfg *c, qv_error *err) {
  if (c->n_served > 0 && c->n_models != 1)
    return qv_error_set(err, QV_EINVAL,
                        "--served-model-name names exactly one model given on the command line "
                        "(got %d); use NAME=PATH or --alias for several",
                        (int)c->n_models);
  for (int32_t i = 0; i < c->n_models; i++) {
    const char *arg = c->models[i];
    if (c->n_served == 0) {
      int rc = registry_add_model_arg(&c->reg, arg, err);
      if (rc) return rc;
      continue;
    }
    const char *eq = strchr(arg, '=');
    const char *path = eq && eq != arg ? eq + 1 : arg;
    size_t need = strlen(c->served[0]) + strlen(path) + 2;
    char *joined = malloc(need);
    if (!joined) return qv_error_set(err, QV_ENOMEM, "out of memory");
    snprintf(joined, need, "%s=%s", c->served[0], path);
    int rc = registry_add_model_arg(&c->reg, joined, err);
    free(joined);
    if (rc) return rc;
  }
  for (int32_t i = 1; i < c->n_served; i++) {
    size_t need = strlen(c->served[i]) + strlen(c->served[0]) + 2;
    char *a = malloc(need);
    if (!a) return qv_error_set(err, QV_ENOMEM, "out of memory");
    snprintf(a, need, "%s=%s", c->served[i], c->served[0]);
    int rc = registry_add_alias_arg(&c->reg, a, err);
    free(a);
    if (rc) return rc;
  }
  return 0;
}

/* --nnodes and its companions: a group over several processes needs its tensor parallel size
 * to split over the nodes, one model, a port and a token. */
static int check_tp_net(serve_cfg *c, qv_error *err) {
  qv_tp_net_opts *t = &c->tp_net;
  if (t->nnodes <= 1) {
    if (t->node_rank || t->master_port || t->master_addr || t->token)
      return qv_error_set(err, QV_EINVAL, "--node-rank, --master-addr, --master-port and --tp-token need --nnodes > 1");
    return 0;
  }
  if (!t->token) t->token = getenv("QUIVER_TP_TOKEN");
  if (!t->master_addr) t->master_addr = "127.0.0.1";
  int32_t tp = c->eng.tp_size;
  if (tp < t->nnodes || tp % t->nnodes)
    return qv_error_set(err, QV_EINVAL, "--nnodes %d must divide --tensor-parallel-size (%d)", t->nnodes, tp);
  if (t->node_rank >= t->nnodes)
    return qv_error_set(err, QV_EINVAL, "--node-rank %d outside 0..%d", t->node_rank, t->nnodes - 1);
  if (!t->master_port) return qv_error_set(err, QV_EINVAL, "--nnodes %d needs --master-port", t->nnodes);
  if (!t->token || strlen(t->token) < 16)
    return qv_error_set(err, QV_EINVAL, "--nnodes %d needs --tp-token or QUIVER_TP_TOKEN of at least 16 characters",
                        t->nnodes);
  if (c->reg.n_models != 1)
    return qv_error_set(err, QV_EINVAL, "--nnodes %d serves exactly one model (%d configured)", t->nnodes,
                        c->reg.n_models);
  c->lo.tp_net = t;
  return 0;
}

int serve_cfg_parse(serve_cfg *c, int argc, char **argv, qv_error *err) {
  memset(c, 0, sizeof *c);
  registry_init(&c->reg);
  server_opts_default(&c->so);
  srv_load_opts_default(&c->lo);
  cli_engine_cfg_init(&c->eng);
  c->port = -1;
  cli_spec spec = spec_of();
  pass_ctx p = {c, 0};
  int rc = cli_parse(&spec, argc, argv, on_opt, &p, err);
  if (rc) return rc;
  p.pass = 1;
  if ((rc = cli_parse(&spec, argc, argv, on_opt, &p, err))) return rc;
  if ((rc = add_models(c, err))) return rc;
  const char *env_key = getenv("QUIVER_API_KEY");
  if (env_key && *env_key && (rc = registry_add_api_key(&c->reg, env_key, err))) return rc;
  if ((rc = registry_finalize(&c->reg, err))) return rc;
  if (!c->host) c->host = c->reg.host ? c->reg.host : "127.0.0.1";
  if (c->port < 0) c->port = c->reg.port ? c->reg.port : 8000;
  c->so.host = c->host;
  c->so.port = c->port;
  if (!!c->tls.certfile != !!c->tls.keyfile)
    return qv_error_set(err, QV_EINVAL, "--ssl-certfile and --ssl-keyfile go together");
  if (c->tls.ca_certs && !c->tls.certfile)
    return qv_error_set(err, QV_EINVAL, "--ssl-ca-certs needs --ssl-certfile and --ssl-keyfile");
  if ((c->cors.methods || c->cors.headers || c->cors.allow_credentials) && !cors_enabled(&c->cors))
    return qv_error_set(err, QV_EINVAL, "--allowed-methods/--allowed-headers/--allow-credentials "
                                        "need --allowed-origins");
  c->so.cors = cors_enabled(&c->cors) ? &c->cors : NULL;
  c->so.tls = c->tls.certfile ? &c->tls : NULL;
  /* The shared engine options as per-model defaults. */
  const cli_engine_cfg *e = &c->eng;
  c->lo.device = e->device;
  if (e->threads >= 0) c->lo.n_threads = e->threads;
  c->lo.max_model_len = e->max_model_len;
  c->lo.max_num_seqs = e->max_num_seqs;
  c->lo.max_num_batched_tokens = e->max_num_batched_tokens;
  c->lo.block_size = e->block_size;
  c->lo.n_kv_blocks = e->n_kv_blocks;
  c->lo.kv_mem_fraction = e->kv_mem_fraction;
  c->lo.prefix_caching = e->prefix_caching;
  c->lo.dtype = e->dtype;
  c->lo.tp_size = e->tp_size;
  c->lo.cpu_bf16_dot = e->cpu_bf16_dot;
  if ((rc = check_tp_net(c, err))) return rc;
  c->lo.has_seed = e->has_seed;
  c->lo.seed = e->seed;
  return 0;
}

void serve_cfg_deinit(serve_cfg *c) {
  registry_deinit(&c->reg);
  cors_opts_deinit(&c->cors);
}
