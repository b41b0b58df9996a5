/* Seeded RNG and request-arrival schedule for the benchmark client (see bench_rng.h). */
#include "core/bench_rng.h"

#include <math.h>

#include "core/util.h"

void bench_rng_seed(bench_rng *r, uint64_t seed) {
  uint64_t x = seed;
  for (int i = 0; i < 4; i++) r->s[i] = qv_splitmix64(&x);
}

uint64_t bench_rng_next(bench_rng *r) {
  return qv_xoshiro256ss(r->s);
}

double bench_rng_uniform(bench_rng *r) { return (double)(bench_rng_next(r) >> 11) * 0x1.0p-53; }

int64_t bench_rng_int(bench_rng *r, int64_t lo, int64_t hi) {
  if (hi <= lo) return lo;
  uint64_t span = (uint64_t)(hi - lo) + 1;
  if (span == 0) return (int64_t)bench_rng_next(r); /* the full 64-bit range */
  /* Rejection sampling keeps the result unbiased. */
  uint64_t limit = UINT64_MAX - UINT64_MAX % span, v;
  do v = bench_rng_next(r);
  while (v >= limit);
  return lo + (int64_t)(v % span);
}

static double normal(bench_rng *r) {
  double u1 = bench_rng_uniform(r), u2 = bench_rng_uniform(r);
  if (u1 < 1e-300) u1 = 1e-300;
  return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

double bench_rng_gamma(bench_rng *r, double shape, double scale) {
  if (shape < 1.0) {
    /* Gamma(a) = Gamma(a + 1) * U^(1/a). */
    double u = bench_rng_uniform(r);
    if (u < 1e-300) u = 1e-300;
    return bench_rng_gamma(r, shape + 1.0, scale) * pow(u, 1.0 / shape);
  }
  double d = shape - 1.0 / 3.0, c = 1.0 / sqrt(9.0 * d);
  for (;;) {
    double x = normal(r), v = 1.0 + c * x;
    if (v <= 0) continue;
    v = v * v * v;
    double u = bench_rng_uniform(r);
    if (u < 1.0 - 0.0331 * x * x * x * x) return d * v * scale;
    if (u > 0 && log(u) < 0.5 * x * x + d * (1.0 - v + log(v))) return d * v * scale;
  }
}

void bench_rng_shuffle(bench_rng *r, size_t *idx, size_t n) {
  for (size_t i = n; i > 1; i--) {
    size_t j = (size_t)bench_rng_int(r, 0, (int64_t)i - 1);
    size_t t = idx[i - 1];
    idx[i - 1] = idx[j];
    idx[j] = t;
  }
}

int bench_arrivals(bench_rng *r, size_t n, double rate, double burstiness, double *out, qv_error *err) {
  if (isnan(rate)) return qv_error_set(err, QV_EINVAL, "request rate is NaN");
  if (!(burstiness > 0) || !isfinite(burstiness))
    return qv_error_set(err, QV_EINVAL, "burstiness must be a finite number > 0");
  double t = 0;
  int inf = !(rate > 0) || isinf(rate);
  for (size_t i = 0; i < n; i++) {
    out[i] = t;
    if (!inf) t += bench_rng_gamma(r, burstiness, 1.0 / (rate * burstiness));
  }
  return 0;
}
