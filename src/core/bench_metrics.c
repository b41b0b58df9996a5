/* Serving-benchmark metric math (see bench_metrics.h for the definitions). Pure functions: the
 * load generator (bench/client) and the unit tests share them. */
#include "core/bench_metrics.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

double bench_percentile(const double *sorted, size_t n, double p) {
  if (n == 0) return 0.0;
  if (p <= 0) return sorted[0];
  if (p >= 100) return sorted[n - 1];
  double rank = p / 100.0 * (double)(n - 1);
  size_t lo = (size_t)floor(rank);
  size_t hi = lo + 1 < n ? lo + 1 : n - 1;
  double frac = rank - (double)lo;
  return sorted[lo] + (sorted[hi] - sorted[lo]) * frac;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int bench_stat_compute(double *values, size_t n, const double *pcts, int32_t n_pcts, bench_stat *st,
                       qv_error *err) {
  memset(st, 0, sizeof *st);
  if (n_pcts < 0 || n_pcts > BENCH_MAX_PCTS)
    return qv_error_set(err, QV_EINVAL, "too many percentiles (%d, at most %d)", n_pcts, BENCH_MAX_PCTS);
  st->n = (int64_t)n;
  if (n == 0) return 0;
  double sum = 0;
  for (size_t i = 0; i < n; i++) {
    if (!(values[i] >= 0)) return qv_error_set(err, QV_EINVAL, "metric sample %zu is negative or NaN", i);
    sum += values[i];
  }
  qsort(values, n, sizeof *values, cmp_double);
  double mean = sum / (double)n, var = 0;
  for (size_t i = 0; i < n; i++) var += (values[i] - mean) * (values[i] - mean);
  st->mean = mean * 1e3;
  st->std = sqrt(var / (double)n) * 1e3;
  st->median = bench_percentile(values, n, 50) * 1e3;
  st->min = values[0] * 1e3;
  st->max = values[n - 1] * 1e3;
  for (int32_t i = 0; i < n_pcts; i++) st->pct[i] = bench_percentile(values, n, pcts[i]) * 1e3;
  return 0;
}

double bench_tpot(const bench_timeline *r) {
  if (r->output_tokens <= 1) return 0.0;
  return (r->e2el_s - r->ttft_s) / (double)(r->output_tokens - 1);
}

int bench_summarize(const bench_timeline *reqs, size_t n, double duration_s, const double *pcts,
                    int32_t n_pcts, const bench_slo *slo, bench_summary *out, qv_error *err) {
  memset(out, 0, sizeof *out);
  if (!(duration_s > 0)) return qv_error_set(err, QV_EINVAL, "benchmark duration must be > 0");
  if (n_pcts < 0 || n_pcts > BENCH_MAX_PCTS)
    return qv_error_set(err, QV_EINVAL, "too many percentiles (%d, at most %d)", n_pcts, BENCH_MAX_PCTS);
  out->duration_s = duration_s;
  out->n_pcts = n_pcts;
  if (n_pcts) memcpy(out->pcts, pcts, (size_t)n_pcts * sizeof *pcts);

  size_t n_itl = 0;
  for (size_t i = 0; i < n; i++)
    if (reqs[i].success && reqs[i].n_itl > 0) n_itl += (size_t)reqs[i].n_itl;
  /* One allocation: ttft[n] | tpot[n] | e2el[n] | itl[n_itl]. */
  double *buf = malloc((3 * n + n_itl + 1) * sizeof *buf);
  if (!buf) return qv_error_set(err, QV_ENOMEM, "out of memory summarizing %zu requests", n);
  double *ttft = buf, *tpot = buf + n, *e2el = buf + 2 * n, *itl = buf + 3 * n;
  size_t n_ok = 0, n_tpot = 0, k = 0;
  int has_slo = slo && (slo->ttft_ms > 0 || slo->tpot_ms > 0 || slo->e2el_ms > 0);
  for (size_t i = 0; i < n; i++) {
    const bench_timeline *r = &reqs[i];
    if (!r->success) {
      out->failed++;
      continue;
    }
    if (!(r->ttft_s >= 0) || !(r->e2el_s >= r->ttft_s) || r->output_tokens < 0 || r->prompt_tokens < 0) {
      free(buf);
      return qv_error_set(err, QV_EINVAL, "request %zu has an inconsistent timeline (ttft %g s, e2el %g s)", i,
                          r->ttft_s, r->e2el_s);
    }
    out->completed++;
    out->total_input_tokens += r->prompt_tokens;
    out->total_output_tokens += r->output_tokens;
    ttft[n_ok] = r->ttft_s;
    e2el[n_ok] = r->e2el_s;
    n_ok++;
    double t = bench_tpot(r);
    if (r->output_tokens > 1) tpot[n_tpot++] = t;
    for (int32_t j = 0; j < r->n_itl; j++) itl[k++] = r->itl_s[j];
    if (has_slo) {
      int good = 1;
      if (slo->ttft_ms > 0 && r->ttft_s * 1e3 > slo->ttft_ms) good = 0;
      if (slo->tpot_ms > 0 && t * 1e3 > slo->tpot_ms) good = 0;
      if (slo->e2el_ms > 0 && r->e2el_s * 1e3 > slo->e2el_ms) good = 0;
      out->good_completed += good;
    }
  }
  out->request_throughput = (double)out->completed / duration_s;
  out->output_throughput = (double)out->total_output_tokens / duration_s;
  out->total_token_throughput = (double)(out->total_input_tokens + out->total_output_tokens) / duration_s;
  out->has_goodput = has_slo;
  out->request_goodput = has_slo ? (double)out->good_completed / duration_s : 0.0;
  int rc = bench_stat_compute(ttft, n_ok, pcts, n_pcts, &out->ttft, err);
  if (!rc) rc = bench_stat_compute(tpot, n_tpot, pcts, n_pcts, &out->tpot, err);
  if (!rc) rc = bench_stat_compute(itl, k, pcts, n_pcts, &out->itl, err);
  if (!rc) rc = bench_stat_compute(e2el, n_ok, pcts, n_pcts, &out->e2el, err);
  free(buf);
  return rc;
}

static int parse_double(const char *s, char **end, double *v) {
  errno = 0;
  *v = strtod(s, end);
  return (*end == s || errno || !isfinite(*v)) ? -1 : 0;
}

int bench_parse_pcts(const char *s, double *pcts, int32_t *n_pcts, qv_error *err) {
  *n_pcts = 0;
  const char *p = s;
  if (!s || !*s) return qv_error_set(err, QV_EINVAL, "empty percentile list");
  for (;;) {
    char *end;
    double v;
    if (parse_double(p, &end, &v) || v < 0 || v > 100)
      return qv_error_set(err, QV_EINVAL, "bad percentile list '%s' (expected numbers in [0,100] like 50,90,99)", s);
    if (*n_pcts >= BENCH_MAX_PCTS) return qv_error_set(err, QV_EINVAL, "at most %d percentiles", BENCH_MAX_PCTS);
    pcts[(*n_pcts)++] = v;
    if (*end == '\0') return 0;
    if (*end != ',') return qv_error_set(err, QV_EINVAL, "bad percentile list '%s'", s);
    p = end + 1;
  }
}

int bench_parse_slo(const char *s, bench_slo *slo, qv_error *err) {
  memset(slo, 0, sizeof *slo);
  if (!s || !*s) return qv_error_set(err, QV_EINVAL, "empty goodput SLO list");
  const char *p = s;
  for (;;) {
    const char *colon = strchr(p, ':');
    if (!colon) return qv_error_set(err, QV_EINVAL, "bad goodput SLO '%s' (expected ttft:MS,tpot:MS,e2el:MS)", s);
    size_t klen = (size_t)(colon - p);
    double *dst = NULL;
    if (klen == 4 && !strncmp(p, "ttft", 4)) dst = &slo->ttft_ms;
    else if (klen == 4 && !strncmp(p, "tpot", 4)) dst = &slo->tpot_ms;
    else if (klen == 4 && !strncmp(p, "e2el", 4)) dst = &slo->e2el_ms;
    if (!dst) return qv_error_set(err, QV_EINVAL, "unknown goodput metric in '%s' (ttft, tpot or e2el)", s);
    char *end;
    double v;
    if (parse_double(colon + 1, &end, &v) || !(v > 0))
      return qv_error_set(err, QV_EINVAL, "goodput SLO values must be milliseconds > 0 in '%s'", s);
    *dst = v;
    if (*end == '\0') return 0;
    if (*end != ',') return qv_error_set(err, QV_EINVAL, "bad goodput SLO '%s'", s);
    p = end + 1;
  }
}
