/* Serving-benchmark metrics: pure math over per-request timelines, no I/O, so the exact
 * definitions can be unit-tested on synthetic timelines with known answers.
 *
 * Definitions follow vLLM's `bench serve` so numbers are comparable across servers:
 *   TTFT  time from sending the request to the first chunk that carries content;
 *   TPOT  (E2EL - TTFT) / (output_tokens - 1), only for requests with more than one token;
 *   ITL   gaps between consecutive content chunks, pooled over all requests;
 *   E2EL  time from sending the request to the end of its response;
 *   percentiles use numpy's default (linear interpolation between closest ranks);
 *   std is the population standard deviation (numpy's default ddof=0);
 *   goodput counts requests that meet every given SLO (a request with at most one output
 *   token has TPOT 0 for this purpose, as vLLM does), divided by the duration. */
#ifndef QV_CORE_BENCH_METRICS_H
#define QV_CORE_BENCH_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "quiver/error.h"

#define BENCH_MAX_PCTS 16

/* One request's measured timeline (all times in seconds). */
typedef struct bench_timeline {
  int success;             /* 0: failed (only counted as a failure) */
  double ttft_s;           /* send -> first content chunk */
  double e2el_s;           /* send -> end of response */
  const double *itl_s;     /* [n_itl] gaps between consecutive content chunks; borrowed */
  int32_t n_itl;
  int64_t prompt_tokens;   /* input tokens of the request */
  int64_t output_tokens;   /* output tokens (from the server's usage when it reports it) */
} bench_timeline;

/* Service-level objectives for goodput, in milliseconds; a value <= 0 means "not set". */
typedef struct bench_slo {
  double ttft_ms, tpot_ms, e2el_ms;
} bench_slo;

/* Distribution of one metric, in milliseconds. */
typedef struct bench_stat {
  int64_t n;                      /* samples */
  double mean, std, median, min, max;
  double pct[BENCH_MAX_PCTS];     /* [n_pcts] values at bench_summary.pcts */
} bench_stat;

typedef struct bench_summary {
  double duration_s;
  int64_t completed, failed;
  int64_t total_input_tokens, total_output_tokens;
  double request_throughput;      /* completed / duration */
  double output_throughput;       /* output tokens / duration */
  double total_token_throughput;  /* (input + output tokens) / duration */
  int has_goodput;
  int64_t good_completed;
  double request_goodput;         /* good_completed / duration */
  int32_t n_pcts;
  double pcts[BENCH_MAX_PCTS];    /* [n_pcts] percentiles in [0,100] */
  bench_stat ttft, tpot, itl, e2el;
} bench_summary;

/* Value at percentile p (0..100) of sorted[n] (ascending) with numpy's linear interpolation;
 * 0 when n is 0 (vLLM reports 0 for an empty metric). */
double bench_percentile(const double *sorted, size_t n, double p);

/* Fills st from values[n] (seconds; sorted in place) reported in milliseconds. QV_ENOMEM never
 * happens here; QV_EINVAL for a NaN or negative value. */
int bench_stat_compute(double *values, size_t n, const double *pcts, int32_t n_pcts, bench_stat *st,
                       qv_error *err);

/* Aggregates n timelines measured over duration_s seconds (> 0). slo may be NULL. pcts[n_pcts]
 * (n_pcts <= BENCH_MAX_PCTS, each in [0,100]). Allocates only temporaries. */
int bench_summarize(const bench_timeline *reqs, size_t n, double duration_s, const double *pcts,
                    int32_t n_pcts, const bench_slo *slo, bench_summary *out, qv_error *err);

/* TPOT of one request in seconds, 0 when it produced at most one token. */
double bench_tpot(const bench_timeline *r);

/* Parses a comma-separated percentile list such as "50,90,99" (each in [0,100]). */
int bench_parse_pcts(const char *s, double *pcts, int32_t *n_pcts, qv_error *err);
/* Parses "ttft:MS,tpot:MS,e2el:MS" (any subset, values > 0). */
int bench_parse_slo(const char *s, bench_slo *slo, qv_error *err);

#endif
