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

/* What to run; everything is borrowed for the call. */
typedef struct bench_run_spec {
  const bench_opts *o;
  bench_http *http;
  uv_loop_t *loop;            /* the loop http runs on */
  const char *model;          /* the model name to send */
  const bench_prompt *prompts; /* [n] */
  const double *arrivals;     /* [n] release times, seconds from the start, non-decreasing */
  size_t n;
  const char *label;          /* prefixes the progress bar ("warmup", "benchmark") */
} bench_run_spec;

int bench_run(const bench_run_spec *spec, bench_run_result *out, qv_error *err);

#endif
