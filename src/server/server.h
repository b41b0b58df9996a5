/* The quiver HTTP server: OpenAI-compatible endpoints over the HTTP layer (http.h), one entry
 * per served model, routing by name/alias/route (registry.h), metrics, auth and graceful drain.
 *
 * The server talks to each model through srv_model_ops, a small vtable over the engine, the
 * tokenizer and the chat template. server_models.c implements it over the real qv_engine /
 * qv_tokenizer / chat code; tests implement it with fakes so the whole HTTP path (streaming,
 * disconnects, queue-full fallback) is tested without a model.
 *
 * Threads: everything here runs on the loop thread except srv_model_ops.encode/decode/
 * render_chat, which run on libuv's thread pool (tokenizing and template rendering never run
 * on the loop), and the notify hook, which the engine calls on its own thread (it only does
 * uv_async_send). */
#ifndef QV_SERVER_SERVER_H
#define QV_SERVER_SERVER_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "quiver/constrain.h"
#include "quiver/engine.h"
#include "quiver/error.h"
#include "server/http.h"
#include "server/registry.h"

typedef struct srv_model_ops {
  /* Engine (loop thread, except that notify fn is called on the engine thread). */
  int (*submit)(void *ctx, const qv_request_params *p, uint64_t *req_id, qv_error *err);
  void (*abort)(void *ctx, uint64_t req_id);
  int (*poll)(void *ctx, qv_event **evs, int max);
  void (*set_notify)(void *ctx, void (*fn)(void *arg), void *arg);
  void (*get_stats)(void *ctx, qv_engine_stats *st);
  void (*event_free)(qv_event *ev);
  /* Tokenizer and template (thread pool; must be thread-safe). *ids / *text / *out are
   * malloc'd, caller frees. */
  int (*encode)(void *ctx, const char *text, size_t len, int add_special, int parse_special,
                int32_t **ids, size_t *n_ids, qv_error *err);
  int (*decode)(void *ctx, const int32_t *ids, size_t n_ids, int skip_special, char **text,
                size_t *len, qv_error *err);
  /* Renders messages (normalized: string contents) to a prompt. NULL: the model has no
   * template and the server uses oai_chat_default_render. QV_ETEMPLATE: the template raised
   * (message in err) and the client gets a 400. */
  int (*render_chat)(void *ctx, const cJSON *messages, const cJSON *tools,
                     const cJSON *tool_choice, const cJSON *template_kwargs,
                     int add_generation_prompt, char **out, size_t *len, qv_error *err);
  /* Splits a finished generation into content (*content malloc'd) and OpenAI tool calls
   * (*tool_calls: a cJSON array [{id, type, function: {name, arguments}}] the caller deletes,
   * or NULL when there are none). NULL op: the model has no tool-call format. Runs on the loop
   * thread once per choice; linear in the text. */
  int (*parse_tools)(void *ctx, const char *text, size_t len, char **content, cJSON **tool_calls,
                     qv_error *err);
  /* The same for a stream (all NULL when parse_tools is): create a parser state; feed a text
   * delta (finish 1: end of text, flush what is held) getting the content that became final
   * (*content malloc'd) and the calls completed by it (*calls as above, or NULL). */
  void *(*tool_stream_create)(void *ctx);
  int (*tool_stream_feed)(void *st, const char *delta, size_t len, int finish, char **content,
                          cJSON **calls, qv_error *err);
  void (*tool_stream_destroy)(void *st);
  /* Structured output (thread pool; thread-safe). Compiles a constraint against the model's
   * vocabulary (*out: one reference, caller releases). NULL op: the model cannot constrain
   * and such requests get a 400. */
  int (*compile_constraint)(void *ctx, const qv_cst_spec *spec, struct qv_constraint **out,
                            qv_error *err);
  /* The tool-call format enforced for tool_choice required/named ("hermes", "llama3",
   * "mistral"); NULL op: tool calls are not enforced. */
  const char *(*tool_format)(void *ctx);
  /* The bytes of one token as they are, also when they are not complete UTF-8 (a byte token:
   * decode gives U+FFFD), for completions logprobs keys (oai_token_key). *bytes malloc'd.
   * Loop thread (a lookup-sized decode). NULL op: keys come from the text alone. */
  int (*token_bytes)(void *ctx, int32_t id, char **bytes, size_t *len);
  /* Fleet (fleet/fleet.h; all NULL: the model is always loaded). enter: any thread; 1 when the
   * model is loaded and now held for a request until leave, 0 when it is not loaded. want:
   * asks for it to be loaded (on-demand models, sleeping ones). */
  int (*enter)(void *ctx);
  void (*leave)(void *ctx);
  void (*want)(void *ctx);
} srv_model_ops;

/* One served model. The server borrows ops and ctx; they must outlive it. */
typedef struct srv_model {
  const srv_model_ops *ops;
  void *ctx;
  int32_t max_model_len;
  int32_t vocab_size;
  int ready;           /* 0: failed to load (requests fall to the next model of a route) */
  const char *state;   /* "ready", "failed: ..." (borrowed) */
  reg_reasoning reasoning; /* NONE or UNSET: chat output is not split into reasoning */
} srv_model;

typedef struct server_opts {
  const char *host;              /* default "127.0.0.1" */
  int port;                      /* 0: any free port */
  http_limits limits;
  uint64_t drain_timeout_ms;     /* SIGINT/SIGTERM: wait this long for in-flight requests */
  size_t max_stream_backlog_bytes; /* a streaming client this far behind is cut off */
  int32_t max_request_seqs;      /* prompts x n of one request (default 256) -> 400 */
  size_t heavy_body_bytes;       /* bodies above this are prepared on the heavy pool (64 KiB) */
  int heavy_threads;             /* heavy pool threads (0: half the cores, at least 1) */
  int handle_signals;            /* install SIGINT/SIGTERM handlers that drain */
  const struct cors_opts *cors;  /* borrowed or NULL: no CORS (server/cors.h) */
  const struct tls_opts *tls;    /* borrowed or NULL: plain HTTP (server/tls.h) */
  /* Responses API store (resp_store.h); 0 keeps the defaults (1024, 64 MiB, 3600 s; a
   * negative TTL never expires). */
  int32_t responses_max_count;
  size_t responses_max_bytes;
  int64_t responses_ttl_s;
  /* The fleet behind the models (fleet/fleet.h; borrowed) or NULL: every model is always
   * loaded. With one, /health, /v1/models and /metrics show each model's state, the admin API
   * works (with the registry's admin keys), and a request for a model that is not loaded waits
   * for its load (at most max_wait_load requests, each up to load_timeout_ms; beyond: 503). */
  struct fleet *fleet;
  struct qv_budget *budget;      /* the fleet's memory budget (borrowed) or NULL */
  /* POST /admin/v1/models (NULL: adding models is off): registers a model from the body
   * (registry_add_model_json's rules and codes) and readies its srv_model slot
   * (srv_models_add); *idx is its index. Loop thread. */
  int (*add_model)(void *arg, const char *body, size_t len, int32_t *idx, qv_error *err);
  void *add_model_arg;
  int32_t max_wait_load;         /* default 1024 */
  uint64_t load_timeout_ms;      /* default 120000 */
} server_opts;

void server_opts_default(server_opts *o);

typedef struct server server;

/* Starts listening. reg (names, aliases, routes, keys) and models[reg->n_models] are
 * borrowed and must outlive the server. Call on the loop thread before uv_run. */
int server_create(uv_loop_t *loop, const registry *reg, srv_model *models,
                  const server_opts *opts, server **out, qv_error *err);
int server_port(const server *s);
/* Thread-safe: starts a graceful drain (as SIGTERM does). Once drained (or the deadline
 * passes) every handle the server owns is closed and uv_run returns. */
void server_shutdown(server *s);
/* 1 when a second signal aborted in-flight requests (the process should exit non-zero). */
int server_aborted(const server *s);
/* The hook the fleet calls (loader thread) when a model's state changed, so waiting requests
 * resume: pass it to srv_models_set_changed after server_create. */
void server_fleet_hook(server *s, void (**fn)(void *arg, int32_t idx), void **arg);
/* After opts.add_model registered model idx (the registry's last): the server's per-model
 * tables (sized for REG_MAX_MODELS from the start) take it; the caller then joins it to the
 * fleet. Loop thread. */
int server_model_added(server *s, int32_t idx, qv_error *err);
/* Frees the server after uv_run returned. Accepts NULL. */
void server_destroy(server *s);

#endif
