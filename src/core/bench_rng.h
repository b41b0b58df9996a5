/* Seeded pseudo-random numbers for the benchmark client: dataset sampling and request arrival
 * times must be reproducible from --seed alone, on every platform, so this is a self-contained
 * generator (xoshiro256** seeded through splitmix64) rather than rand(). The caller owns the
 * state (usually on the stack). */
#ifndef QV_CORE_BENCH_RNG_H
#define QV_CORE_BENCH_RNG_H

#include <stddef.h>
#include <stdint.h>

#include "quiver/error.h"

typedef struct bench_rng {
  uint64_t s[4];
} bench_rng;

void bench_rng_seed(bench_rng *r, uint64_t seed);
uint64_t bench_rng_next(bench_rng *r);
/* Uniform in [0, 1). */
double bench_rng_uniform(bench_rng *r);
/* Uniform integer in [lo, hi] (inclusive); lo when hi < lo. */
int64_t bench_rng_int(bench_rng *r, int64_t lo, int64_t hi);
/* Gamma(shape, scale) with shape > 0, scale > 0 (Marsaglia-Tsang). */
double bench_rng_gamma(bench_rng *r, double shape, double scale);
/* Fisher-Yates shuffle of idx[n]. */
void bench_rng_shuffle(bench_rng *r, size_t *idx, size_t n);

/* Arrival offsets (seconds from the start, non-decreasing) of n requests, as vLLM schedules
 * them: rate = inf (rate <= 0 or infinite) sends all at t = 0; otherwise the gaps are drawn
 * from Gamma(shape = burstiness, scale = 1 / (rate * burstiness)), which is a Poisson process
 * for burstiness 1 and burstier below 1. The first request goes at t = 0. out[n]. */
int bench_arrivals(bench_rng *r, size_t n, double rate, double burstiness, double *out, qv_error *err);

#endif
