/* Benchmark metric math (src/core/bench_metrics.c) and the arrival schedule (bench_rng.c) on
 * synthetic timelines with known answers. Reference numbers for percentiles come from
 * numpy.percentile (default linear method) and numpy.std (ddof=0). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>

#include "core/bench_metrics.h"
#include "core/bench_rng.h"

#define NEAR(a, b, tol) cr_assert(fabs((a) - (b)) <= (tol), "%s = %.12g, expected %.12g", #a, (double)(a), (double)(b))

Test(bench_metrics, percentile_matches_numpy) {
  double a[] = {0.31, 0.12, 0.77, 0.05, 0.5, 0.91, 0.42};
  double pcts[] = {0, 25, 50, 90, 99, 99.9, 100};
  double want[] = {0.05, 0.215, 0.42, 0.826, 0.9016, 0.90916, 0.91};
  bench_stat st;
  qv_error err = {0};
  cr_assert_eq(bench_stat_compute(a, 7, pcts, 7, &st, &err), 0, "%s", err.msg);
  for (int i = 0; i < 7; i++) NEAR(st.pct[i], want[i] * 1e3, 1e-9);
  NEAR(st.mean, 440.0, 1e-9);
  NEAR(st.std, 294.0359550414589, 1e-9);
  NEAR(st.median, 420.0, 1e-9);
  NEAR(st.min, 50.0, 1e-9);
  NEAR(st.max, 910.0, 1e-9);
  cr_assert_eq(st.n, 7);
}

Test(bench_metrics, percentile_of_random_arithmetic_sequence) {
  /* For a_i = c + d*i (i = 0..n-1) the linear-interpolation percentile is c + d*p/100*(n-1). */
  bench_rng r;
  bench_rng_seed(&r, 1234);
  for (int trial = 0; trial < 200; trial++) {
    size_t n = (size_t)bench_rng_int(&r, 1, 300);
    double c = bench_rng_uniform(&r) * 5 + 0.01, d = bench_rng_uniform(&r) * 2 + 0.001;
    double *a = malloc(n * sizeof *a);
    for (size_t i = 0; i < n; i++) a[i] = c + d * (double)i;
    double p = bench_rng_uniform(&r) * 100;
    NEAR(bench_percentile(a, n, p), c + d * p / 100.0 * (double)(n - 1), 1e-9);
    free(a);
  }
  cr_assert_eq(bench_percentile(NULL, 0, 50), 0.0);
}

Test(bench_metrics, stat_rejects_negative_and_nan) {
  double a[] = {0.1, -0.2};
  double p = 50;
  bench_stat st;
  qv_error err = {0};
  cr_assert_eq(bench_stat_compute(a, 2, &p, 1, &st, &err), QV_EINVAL);
  double b[] = {0.1, NAN};
  cr_assert_eq(bench_stat_compute(b, 2, &p, 1, &st, &err), QV_EINVAL);
}

/* Builds the timeline of a request that sends its first content after ttft and then one token
 * per gap, one token per chunk. itl must hold n_tokens-1 entries. */
static bench_timeline steady(double ttft, double gap, int n_tokens, int prompt, double *itl) {
  bench_timeline t = {0};
  t.success = 1;
  t.ttft_s = ttft;
  t.e2el_s = ttft + gap * (n_tokens - 1);
  for (int i = 0; i < n_tokens - 1; i++) itl[i] = gap;
  t.itl_s = itl;
  t.n_itl = n_tokens - 1;
  t.prompt_tokens = prompt;
  t.output_tokens = n_tokens;
  return t;
}

Test(bench_metrics, summary_of_known_timelines) {
  double itl0[9], itl1[3], itl2[1];
  bench_timeline reqs[5];
  reqs[0] = steady(0.100, 0.020, 10, 32, itl0); /* e2el 0.28, tpot 0.02 */
  reqs[1] = steady(0.300, 0.050, 4, 17, itl1);  /* e2el 0.45, tpot 0.05 */
  reqs[2] = steady(0.050, 0.0, 1, 8, itl2);     /* one token: no tpot sample, e2el 0.05 */
  reqs[3] = (bench_timeline){0};                /* failed */
  reqs[4] = steady(0.200, 0.010, 2, 5, itl2);   /* e2el 0.21, tpot 0.01 */
  double pcts[] = {50, 90, 99};
  bench_slo slo = {.ttft_ms = 250, .tpot_ms = 30};
  bench_summary s;
  qv_error err = {0};
  cr_assert_eq(bench_summarize(reqs, 5, 2.0, pcts, 3, &slo, &s, &err), 0, "%s", err.msg);
  cr_assert_eq(s.completed, 4);
  cr_assert_eq(s.failed, 1);
  cr_assert_eq(s.total_input_tokens, 32 + 17 + 8 + 5);
  cr_assert_eq(s.total_output_tokens, 10 + 4 + 1 + 2);
  NEAR(s.request_throughput, 2.0, 1e-12);
  NEAR(s.output_throughput, 17 / 2.0, 1e-12);
  NEAR(s.total_token_throughput, (62 + 17) / 2.0, 1e-12);
  /* TTFT samples 0.05, 0.1, 0.2, 0.3 */
  NEAR(s.ttft.mean, 162.5, 1e-9);
  NEAR(s.ttft.median, 150.0, 1e-9);
  NEAR(s.ttft.pct[1], 270.0, 1e-9); /* p90: rank 2.7 -> 200 + 0.7*100 */
  /* TPOT samples 0.01, 0.02, 0.05 (the one-token request has none) */
  cr_assert_eq(s.tpot.n, 3);
  NEAR(s.tpot.mean, 80.0 / 3.0, 1e-9);
  NEAR(s.tpot.median, 20.0, 1e-9);
  /* ITL pooled: 9 x 0.02, 3 x 0.05, 1 x 0.01 */
  cr_assert_eq(s.itl.n, 13);
  NEAR(s.itl.mean, (9 * 20.0 + 3 * 50.0 + 10.0) / 13.0, 1e-9);
  NEAR(s.itl.median, 20.0, 1e-9);
  /* E2EL samples 0.05, 0.21, 0.28, 0.45 */
  NEAR(s.e2el.median, 245.0, 1e-9);
  NEAR(s.e2el.max, 450.0, 1e-9);
  /* Goodput: ttft <= 250 ms and tpot <= 30 ms: requests 0, 2 (tpot counts as 0), 4 -> 3. */
  cr_assert(s.has_goodput);
  cr_assert_eq(s.good_completed, 3);
  NEAR(s.request_goodput, 1.5, 1e-12);
}

Test(bench_metrics, random_steady_streams_recover_their_parameters) {
  /* Requests that stream at a constant gap must report exactly that TPOT and ITL. */
  bench_rng r;
  bench_rng_seed(&r, 99);
  enum { N = 50 };
  bench_timeline reqs[N];
  double *itls[N];
  double gap_sum = 0, tok_sum = 0;
  for (int i = 0; i < N; i++) {
    int n_tok = (int)bench_rng_int(&r, 2, 40);
    double gap = 0.001 + bench_rng_uniform(&r) * 0.05;
    itls[i] = malloc((size_t)n_tok * sizeof(double));
    reqs[i] = steady(0.01 + bench_rng_uniform(&r), gap, n_tok, (int)bench_rng_int(&r, 1, 100), itls[i]);
    NEAR(bench_tpot(&reqs[i]), gap, 1e-12);
    gap_sum += gap * (n_tok - 1);
    tok_sum += n_tok - 1;
  }
  double p = 50, dur = 3.7;
  bench_summary s;
  qv_error err = {0};
  cr_assert_eq(bench_summarize(reqs, N, dur, &p, 1, NULL, &s, &err), 0, "%s", err.msg);
  NEAR(s.itl.mean, gap_sum / tok_sum * 1e3, 1e-9);
  cr_assert(!s.has_goodput);
  NEAR(s.output_throughput * dur, (double)s.total_output_tokens, 1e-9);
  for (int i = 0; i < N; i++) {
    cr_assert(s.ttft.min <= reqs[i].ttft_s * 1e3 + 1e-9);
    free(itls[i]);
  }
}

Test(bench_metrics, summary_rejects_bad_input) {
  double itl[1];
  bench_timeline t = steady(0.5, 0.1, 2, 3, itl);
  bench_summary s;
  qv_error err = {0};
  double p = 50;
  cr_assert_eq(bench_summarize(&t, 1, 0.0, &p, 1, NULL, &s, &err), QV_EINVAL);
  t.e2el_s = 0.2; /* ends before its first token */
  cr_assert_eq(bench_summarize(&t, 1, 1.0, &p, 1, NULL, &s, &err), QV_EINVAL);
  /* No requests at all is a valid (empty) summary. */
  cr_assert_eq(bench_summarize(NULL, 0, 1.0, &p, 1, NULL, &s, &err), 0);
  cr_assert_eq(s.completed, 0);
  cr_assert_eq(s.ttft.median, 0.0);
}

Test(bench_metrics, parse_percentiles_and_slo) {
  double p[BENCH_MAX_PCTS];
  int32_t n;
  qv_error err = {0};
  cr_assert_eq(bench_parse_pcts("50,90,99.9", p, &n, &err), 0);
  cr_assert_eq(n, 3);
  NEAR(p[2], 99.9, 1e-12);
  cr_assert_eq(bench_parse_pcts("50,,90", p, &n, &err), QV_EINVAL);
  cr_assert_eq(bench_parse_pcts("101", p, &n, &err), QV_EINVAL);
  cr_assert_eq(bench_parse_pcts("nan", p, &n, &err), QV_EINVAL);
  cr_assert_eq(bench_parse_pcts("", p, &n, &err), QV_EINVAL);
  bench_slo slo;
  cr_assert_eq(bench_parse_slo("ttft:200,e2el:1500.5", &slo, &err), 0);
  NEAR(slo.ttft_ms, 200, 0);
  NEAR(slo.e2el_ms, 1500.5, 0);
  cr_assert_eq(slo.tpot_ms, 0.0);
  cr_assert_eq(bench_parse_slo("ttft:-1", &slo, &err), QV_EINVAL);
  cr_assert_eq(bench_parse_slo("itl:5", &slo, &err), QV_EINVAL);
  cr_assert_eq(bench_parse_slo("ttft", &slo, &err), QV_EINVAL);
  cr_assert_eq(bench_parse_slo("ttft:5;", &slo, &err), QV_EINVAL);
}

Test(bench_rng, arrivals_poisson_and_gamma_have_the_right_mean_and_variance) {
  enum { N = 20000 };
  static double t[N];
  bench_rng r;
  qv_error err = {0};
  double rates[] = {4.0, 25.0}, bursts[] = {1.0, 0.25, 3.0};
  for (int a = 0; a < 2; a++)
    for (int b = 0; b < 3; b++) {
      bench_rng_seed(&r, 7 + (uint64_t)(a * 3 + b));
      cr_assert_eq(bench_arrivals(&r, N, rates[a], bursts[b], t, &err), 0);
      cr_assert_eq(t[0], 0.0);
      /* Gaps are Gamma(k, 1/(rate k)): mean 1/rate, variance 1/(k rate^2). */
      double sum = 0, sq = 0;
      for (int i = 1; i < N; i++) {
        double g = t[i] - t[i - 1];
        cr_assert(g >= 0);
        sum += g;
        sq += g * g;
      }
      double mean = sum / (N - 1), var = sq / (N - 1) - mean * mean;
      double want_mean = 1 / rates[a], want_var = 1 / (bursts[b] * rates[a] * rates[a]);
      cr_assert(fabs(mean - want_mean) < 0.05 * want_mean, "mean %g want %g", mean, want_mean);
      cr_assert(fabs(var - want_var) < 0.15 * want_var, "var %g want %g", var, want_var);
    }
  /* Infinite rate: everything at t = 0. */
  bench_rng_seed(&r, 1);
  cr_assert_eq(bench_arrivals(&r, 100, INFINITY, 1.0, t, &err), 0);
  for (int i = 0; i < 100; i++) cr_assert_eq(t[i], 0.0);
  cr_assert_eq(bench_arrivals(&r, 10, 1.0, 0.0, t, &err), QV_EINVAL);
}

Test(bench_rng, seeded_streams_are_reproducible_and_ints_in_range) {
  bench_rng a, b;
  bench_rng_seed(&a, 42);
  bench_rng_seed(&b, 42);
  for (int i = 0; i < 1000; i++) cr_assert_eq(bench_rng_next(&a), bench_rng_next(&b));
  bench_rng_seed(&b, 43);
  cr_assert_neq(bench_rng_next(&a), bench_rng_next(&b));
  int seen[7] = {0};
  for (int i = 0; i < 7000; i++) {
    int64_t v = bench_rng_int(&a, -3, 3);
    cr_assert(v >= -3 && v <= 3);
    seen[v + 3]++;
  }
  for (int i = 0; i < 7; i++) cr_assert(seen[i] > 800 && seen[i] < 1200, "bucket %d: %d", i, seen[i]);
  size_t idx[50];
  for (size_t i = 0; i < 50; i++) idx[i] = i;
  bench_rng_shuffle(&a, idx, 50);
  int sum = 0, moved = 0;
  for (size_t i = 0; i < 50; i++) sum += (int)idx[i], moved += idx[i] != i;
  cr_assert_eq(sum, 49 * 50 / 2);
  cr_assert(moved > 10);
}
