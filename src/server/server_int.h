/* Internal structures shared by server.c (connections, routing, simple endpoints, drain) and
 * server_gen.c (completions, chat, tokenize: thread-pool preparation, engine submission,
 * events, responses). Not part of any public interface. */
#ifndef QV_SERVER_SERVER_INT_H
#define QV_SERVER_SERVER_INT_H

#include "chat/chat.h"
#include "server/dialect.h"
#include "server/metrics.h"
#include "server/oai_req.h"
#include "server/oai_resp.h"
#include "server/resp_store.h"
#include "server/server.h"
#include "server/tenant.h"
#include "server/workq.h"

#define SRV_HASH_BUCKETS 1024

typedef struct srv_req srv_req;

/* One engine request: a prompt of a request with its n choices. Linked in its model's hash
 * table (by engine id) while the engine may still send events for it. */
typedef struct srv_sub {
  uint64_t eid;
  srv_req *req;
  int32_t prompt_idx;
  int32_t n_finished;     /* choices finished */
  int in_table;
  int usage_counted;
  struct srv_sub *hnext;
} srv_sub;

typedef struct srv_choice {
  char *text;             /* [len] accumulated text (non-streamed responses) */
  size_t len, cap;
  size_t text_offset;     /* bytes produced so far (logprobs text_offset) */
  const char *finish;     /* static string */
  char *stop_reason;      /* owned or NULL */
  oai_logprobs *lp;       /* owned or NULL */
  int32_t last_token;     /* previous token (logprob token texts are decoded after it) */
  void *tstream;          /* streamed tool-call parser or NULL */
  void (*tstream_destroy)(void *st);
  int32_t n_calls;        /* tool calls streamed so far */
  qv_chat_reasoning_stream *rstream; /* streamed reasoning parser (owned) or NULL */
  int role_sent;
  int finished;
} srv_choice;

/* The per-model notify target: the engine thread calls notify_fn which does uv_async_send. */
typedef struct srv_notify {
  uv_async_t async;
  struct server *s;
  int32_t model;
} srv_notify;

struct server {
  uv_loop_t *loop;            /* borrowed */
  const registry *reg;        /* borrowed */
  srv_model *models;          /* [n_models] borrowed */
  int32_t n_models;
  server_opts opts;
  http_server *http;
  metrics met;
  srv_notify *notify;         /* [n_models] */
  srv_sub **buckets;          /* [n_models][SRV_HASH_BUCKETS] */
  srv_req *reqs;              /* every live request (doubly linked) */
  uv_async_t stop_async;
  uv_signal_t sig_int, sig_term;
  uv_timer_t drain_timer;
  srv_workq *heavy;           /* large bodies and large answers (see workq.h) */
  int draining, closed;
  int aborted;                /* a second signal aborted requests: exit non-zero */
  uint64_t drain_deadline_ns;
  uint64_t next_id;
  int64_t started;            /* unix seconds */
  struct tls_ctx *tls;        /* owned or NULL: plain HTTP */
  resp_store *responses;      /* stored Responses API responses (owned) */
  char **ignored_logged;      /* [n_ignored_logged] unknown request fields already logged */
  int32_t n_ignored_logged;
  /* Fleet (opts.fleet): requests waiting for a model to load are rechecked when a model's
   * state changes (fleet_async, sent from the loader thread) and every 100 ms (fleet_timer,
   * for their deadline). */
  uv_async_t fleet_async;
  uv_timer_t fleet_timer;
  int32_t n_wait_load;        /* requests waiting for a load (bounded by opts.max_wait_load) */
  tenant_quota *quotas;       /* [tenant_count(reg->tenants)] quota buckets (owned) */
  int64_t *live_seqs;         /* [REG_MAX_MODELS] sequences submitted and not finished (queued +
                                 running as the server sees them: least_loaded routes) */
  uint64_t n_draws;           /* route draws handed out (requests without X-Request-Id) */
};

struct srv_req {
  struct server *s;
  srv_req *prev, *next;
  http_conn *conn;            /* NULL once answered or disconnected */
  oai_request o;
  const char *model_name;     /* the requested name, or the default model's name */
  int32_t route[REG_MAX_ROUTE_LEN];
  int32_t n_route, route_pos;
  int32_t model;              /* index of the model being tried */
  int utility;                /* an endpoint that generates nothing (metrics count it apart) */

  uv_work_t work;             /* libuv pool: ordinary requests */
  srv_work hwork;             /* heavy pool: large bodies, large answers */
  int heavy;                  /* the body is large: prepare on the heavy pool */
  char *resp_json;            /* answer built on a worker (owned) */
  int in_work;
  int work_rc;
  qv_error work_err;
  oai_kind kind;
  const srv_dialect *dialect; /* never NULL (srv_dialect_openai by default) */
  void *dstate;               /* the dialect's state (owned, dialect->state_free) */
  char *body;                 /* [body_len] copy of the request body until parsed */
  size_t body_len;
  int parsed;                 /* body parsed and the model resolved (done once) */
  int fail_status;            /* set by the worker: answer this error */
  const char *fail_param, *fail_code;
  int32_t n_prep;             /* prompts prepared (entries of pids/pn/ptext) */
  int32_t **pids;             /* [n_prep][pn[i]] prompt token ids (owned) */
  int32_t *pn;                /* [n_prompts] */
  char **ptext;               /* [n_prompts] prompt text for echo (owned) or NULL */
  size_t *ptext_len;
  char *detok_text;           /* detokenize result (owned) */
  size_t detok_len;
  struct qv_constraint *constraint; /* structured output compiled for the current model, owned */
  char *tools_text;           /* the tools array printed for a forced tool call, owned */
  int think_opened;           /* the rendered chat prompt ends inside an opened <think> */

  srv_sub *subs;              /* [n_subs] */
  int32_t n_subs;
  int32_t n_live_subs;        /* subs in the hash table */
  srv_choice *choices;        /* [n_subs * n] */
  int32_t n_choices, n_choices_done;
  int stream_started;
  int pins;                   /* > 0 while a handler is using r: a disconnect reported from
                                 inside a write (on_abort) must not free it under that handler */
  uint64_t t_start, t_first, t_last;
  char id[48];
  int64_t created;
  oai_usage usage;
  int32_t live_tokens;        /* completion tokens streamed so far, all choices */
  int32_t held;               /* 1 + the model entered through ops.enter (released when the
                                 request moves on or is freed); 0: none */
  int wait_load;              /* waiting for models[model] to load (on-demand, sleeping): 1 set
                                 by the worker, 2 once counted in server.n_wait_load (loop) */
  uint64_t wait_deadline_ns;
  int32_t tenant;             /* the caller's tenant (server/tenant.h) or -1: unrestricted */
  uint64_t draw;              /* weighted route draw (server/route.h) */
  int pick_pending;           /* a least_loaded route: order it on the loop, then prepare */
  int32_t held_model;         /* the least_loaded pick counted in live_seqs until submission
                                 (-1: none), so a burst does not all pick the same model */
  int admitted;               /* the tenant's quota took this request (settled when freed) */
  int64_t reserved;           /* tokens reserved by the quota at admission */
};

/* server.c */
/* Counts an answer in the metrics: per model for generation, apart for utility endpoints. */
void srv_count(srv_req *r, int status);
void srv_send_error(srv_req *r, int status, const char *msg, const char *param, const char *code);
/* Answers json (borrowed; NULL: a 500 out of memory). */
void srv_respond_json(srv_req *r, int status, const char *json);
/* The same with extra response headers ("Name: value\r\n" lines). */
void srv_send_error_hdr(srv_req *r, int status, const char *msg, const char *param,
                        const char *code, const char *extra);
void srv_req_maybe_free(srv_req *r);
void srv_table_insert(struct server *s, int32_t model, srv_sub *sub);
void srv_table_remove(struct server *s, int32_t model, srv_sub *sub);
srv_sub *srv_table_find(struct server *s, int32_t model, uint64_t eid);

/* server_gen.c */
/* Writes one SSE event of a stream (taking ownership of sse; NULL means out of memory) and
 * cuts off a client that fell too far behind. */
void srv_stream_send(srv_req *r, char *sse);
/* Number of choices per prompt (the request's n). */
int32_t srv_n_per_prompt(const srv_req *r);
/* Prompt tokens of the request (every prompt once), known after preparation. */
int32_t srv_prompt_tokens(const srv_req *r);
/* Parses, resolves and prepares body (copied) on the thread pool, then submits. */
void srv_gen_start(srv_req *r, oai_kind kind, const char *body, size_t body_len);
void srv_gen_on_event(struct server *s, int32_t model, qv_event *ev);
void srv_gen_on_disconnect(srv_req *r);
void srv_gen_free(srv_req *r);                  /* frees generation state of r */
/* Second signal: every open stream gets an error event and ends; other requests get 503. */
void srv_gen_abort_all(struct server *s);
/* Requests waiting for a model load: the ready ones resume, the failed or expired ones get a
 * 503 (loop thread). */
void srv_gen_check_waiting(struct server *s);

/* admin.c: the admin API (/admin/v1/...). 1 when path is one of its paths. */
int srv_admin_is_path(const char *path);
/* Answers an admin request (auth with the admin keys included). */
void srv_admin_handle(srv_req *r, const http_request *req);

#endif
