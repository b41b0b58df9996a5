/* Sends the prompts under the load shape (--request-rate, --burstiness, --max-concurrency),
 * streams every response (SSE), times it and records the outcome. */
#ifndef QV_BENCH_RUNNER_H
#define QV_BENCH_RUNNER_H

#include "bench.h"

typedef struct bench_run_result {
  bench_record *records;  /* [n] owned (bench_records_free) */
  size_t n;
  double duration_s;      /* first send to last completion */
  double max_in_flight;   /* the most requests seen in flight at once */
  int64_t n_connects;     /* TCP connections opened during the run */
} bench_run_result;

/* Runs prompts[n] (model: the name to send) against http. label ("warmup" or "benchmark")
 * prefixes the progress bar. */
int bench_run(const bench_opts *o, bench_http *http, uv_loop_t *loop, const char *model, const bench_prompt *prompts,
              size_t n, const double *arrivals, const char *label, bench_run_result *out, qv_error *err);

#endif
