/* Server metrics in the Prometheus text exposition format (version 0.0.4).
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

typedef struct metrics_hist {
  int64_t counts[20]; /* [n_buckets] cumulative at render time, stored per bucket here */
  int64_t count;
  double sum;
} metrics_hist;

typedef struct metrics_model {
  char *name;                                /* owned */
  int32_t status_codes[METRICS_MAX_STATUS];  /* distinct statuses seen */
  int64_t status_counts[METRICS_MAX_STATUS];
  int32_t n_status;
  int64_t prompt_tokens;
  int64_t generation_tokens;
  metrics_hist ttft;  /* seconds from request arrival to first token */
  metrics_hist itl;   /* seconds between tokens of a stream */
} metrics_model;

typedef struct metrics {
  metrics_model *models; /* [n_models + 1]: the last one (name "") takes requests no model
                            was resolved for (401, 404, bad JSON) */
  int32_t n_models;
} metrics;

int metrics_init(metrics *m, const char *const *model_names, int32_t n_models);
void metrics_deinit(metrics *m);

/* model_idx -1 means "no model". */
void metrics_count_request(metrics *m, int32_t model_idx, int status);
void metrics_add_tokens(metrics *m, int32_t model_idx, int64_t prompt, int64_t generated);
void metrics_observe_ttft(metrics *m, int32_t model_idx, double seconds);
void metrics_observe_itl(metrics *m, int32_t model_idx, double seconds);

/* Per-model state for rendering: stats may be NULL for a model not loaded. */
typedef struct metrics_model_state {
  const qv_engine_stats *stats;
  int ready;
} metrics_model_state;

/* The exposition text, malloc'd (caller frees); NULL when out of memory. */
char *metrics_render(const metrics *m, const metrics_model_state *states, size_t *len);

#endif
