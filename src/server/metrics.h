/* Server metrics in the Prometheus text exposition format (version 0.0.4).
 *
 * Two sets over the same counts: quiver's own names (quiver_*, label model) and the names vLLM
 * exports (vllm:*, label model_name), so dashboards, autoscalers and the Gateway API Inference
 * Extension's endpoint picker written for vLLM read quiver unchanged. Generation requests
 * (completions, chat) are counted per model; utility endpoints (health, metrics, models,
 * tokenize, version, CORS preflights, unknown routes) apart, in quiver_utility_requests_total.
 *
 * Counters and histograms live in one struct owned by the server and touched only on the loop
 * thread, so no locks. Engine-side gauges (running/waiting requests, KV blocks, prefix cache)
 * are read from qv_engine_get_stats at scrape time and passed to metrics_render. */
#ifndef QV_SERVER_METRICS_H
#define QV_SERVER_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "quiver/engine.h"

#define METRICS_MAX_STATUS 16
#define METRICS_N_TTFT_BUCKETS 16
#define METRICS_N_ITL_BUCKETS 14
#define METRICS_N_REQ_BUCKETS 21 /* request phase latencies (e2e, queue, prefill, decode) */
#define METRICS_N_TOK_BUCKETS 16 /* tokens per request (prompt, generation) */
#define METRICS_MAX_BUCKETS 24

typedef struct metrics_hist {
  int64_t counts[METRICS_MAX_BUCKETS + 1]; /* [n_buckets + 1] per bucket (cumulated when
                                              rendered); the last one is only in +Inf */
  int64_t count;
  double sum;
} metrics_hist;

/* How an engine request ended, for vllm:request_success_total{finished_reason}. */
enum { METRICS_FINISH_STOP, METRICS_FINISH_LENGTH, METRICS_FINISH_ABORT, METRICS_FINISH_ERROR, METRICS_N_FINISH };

/* One finished engine request (all its choices). */
typedef struct metrics_finish {
  int reason;                 /* METRICS_FINISH_* */
  double e2e_s;               /* HTTP arrival to the last FINISH */
  double queue_s, prefill_s, decode_s; /* the engine's phases (qv_event) */
  int64_t prompt_tokens, generation_tokens;
} metrics_finish;

typedef struct metrics_model {
  char *name;                                /* owned */
  int32_t status_codes[METRICS_MAX_STATUS];  /* distinct statuses seen */
  int64_t status_counts[METRICS_MAX_STATUS];
  int32_t n_status;
  int64_t prompt_tokens;
  int64_t generation_tokens;
  metrics_hist ttft;  /* seconds from request arrival to first token */
  metrics_hist itl;   /* seconds between tokens of a stream */
  metrics_hist e2e, queue, prefill, decode;   /* seconds per finished engine request */
  metrics_hist req_prompt, req_gen;           /* tokens per finished engine request */
  int64_t finished[METRICS_N_FINISH];
  int64_t rate_limited[2];  /* tenants: 429s from the request / the token quota */
} metrics_model;

typedef struct metrics {
  metrics_model *models; /* [n_models + 1]: the last one (name "") takes requests no model
                            was resolved for (401, 404, bad JSON) */
  int32_t n_models;
  int32_t util_codes[METRICS_MAX_STATUS]; /* utility endpoint answers by status */
  int64_t util_counts[METRICS_MAX_STATUS];
  int32_t n_util;
  metrics_model *tenants; /* [n_tenants] per tenant (server/tenant.h); its name, never a key */
  int32_t n_tenants;
} metrics;

int metrics_init(metrics *m, const char *const *model_names, int32_t n_models);
/* A model added at run time gets the next index (QV_ENOMEM: nothing changed). Loop thread. */
int metrics_add_model(metrics *m, const char *name);
void metrics_deinit(metrics *m);

/* model_idx -1 means "no model". */
void metrics_count_request(metrics *m, int32_t model_idx, int status);
void metrics_add_tokens(metrics *m, int32_t model_idx, int64_t prompt, int64_t generated);
void metrics_observe_ttft(metrics *m, int32_t model_idx, double seconds);
void metrics_observe_itl(metrics *m, int32_t model_idx, double seconds);
/* A utility endpoint's answer (no model). */
void metrics_count_utility(metrics *m, int status);
/* An engine request of a model finished. */
void metrics_observe_finish(metrics *m, int32_t model_idx, const metrics_finish *f);

/* Per-tenant series (quiver_tenant_*): answers by status, tokens, quota 429s and request
 * durations. Tenant indices outside [0, n_tenants) are ignored. */
int metrics_init_tenants(metrics *m, const char *const *names, int32_t n_tenants);
void metrics_tenant_count(metrics *m, int32_t tenant, int status);
void metrics_tenant_finish(metrics *m, int32_t tenant, int64_t prompt, int64_t generated,
                           double seconds);
/* which: 0 the request quota, 1 the token quota. */
void metrics_tenant_limited(metrics *m, int32_t tenant, int which);

/* Per-model state for rendering: stats may be NULL for a model not loaded. */
typedef struct metrics_model_state {
  const qv_engine_stats *stats;
  int ready;
} metrics_model_state;

/* The exposition text, malloc'd (caller frees); NULL when out of memory. */
char *metrics_render(const metrics *m, const metrics_model_state *states, size_t *len);

#endif
