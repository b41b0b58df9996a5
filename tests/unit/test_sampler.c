/* Sampler tests: every sampling parameter against an independent float64 reference of the
 * documented processing order (sampler.h), on random non-zero logits; greedy ties; raw
 * logprobs and top_logprobs; the empirical distribution of seeded draws; RNG determinism. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/sampler.h"

#define V 97

static void rand_logits(float *x, int n, unsigned *seed) {
  for (int i = 0; i < n; i++) x[i] = ((float)rand_r(seed) / (float)RAND_MAX) * 6.0f - 3.0f;
}

typedef struct ref_in {
  qv_sampling_params p;
  const int32_t *prompt, *output, *banned;
  int n_prompt, n_output, n_banned;
} ref_in;

static double g_vals[V];
static int cmp_desc(const void *a, const void *b) {
  int i = *(const int *)a, j = *(const int *)b;
  if (g_vals[i] != g_vals[j]) return g_vals[i] > g_vals[j] ? -1 : 1;
  return i - j;
}

/* Reference: straightforward float64, whole-vocabulary sorts. */
static void ref_probs(const float *logits, const ref_in *in, double *probs) {
  double x[V];
  for (int i = 0; i < V; i++) x[i] = logits[i];
  for (int i = 0; i < in->p.n_logit_bias; i++) x[in->p.logit_bias_ids[i]] += in->p.logit_bias_values[i];
  for (int i = 0; i < in->n_banned; i++) x[in->banned[i]] = -INFINITY;
  if (in->p.repetition_penalty != 1.0f) {
    int seen[V] = {0};
    for (int i = 0; i < in->n_prompt; i++) seen[in->prompt[i]] = 1;
    for (int i = 0; i < in->n_output; i++) seen[in->output[i]] = 1;
    for (int v = 0; v < V; v++)
      if (seen[v]) x[v] = x[v] > 0 ? x[v] / in->p.repetition_penalty : x[v] * in->p.repetition_penalty;
  }
  int cnt[V] = {0};
  for (int i = 0; i < in->n_output; i++) cnt[in->output[i]]++;
  for (int v = 0; v < V; v++)
    if (cnt[v]) x[v] -= in->p.frequency_penalty * cnt[v] + in->p.presence_penalty;
  memset(probs, 0, sizeof(double) * V);
  if (in->p.temperature < 1e-5f) {
    int best = 0;
    for (int v = 1; v < V; v++)
      if (x[v] > x[best]) best = v;
    probs[best] = 1;
    return;
  }
  for (int v = 0; v < V; v++) g_vals[v] = x[v] / in->p.temperature;
  int order[V];
  for (int v = 0; v < V; v++) order[v] = v;
  qsort(order, V, sizeof(int), cmp_desc);
  int n = 0;
  while (n < V && g_vals[order[n]] != -INFINITY) n++;
  if (in->p.top_k > 0 && in->p.top_k < n) n = in->p.top_k;
  double p[V], sum = 0;
  for (int i = 0; i < n; i++) sum += p[i] = exp(g_vals[order[i]] - g_vals[order[0]]);
  for (int i = 0; i < n; i++) p[i] /= sum;
  if (in->p.top_p < 1.0f) {
    double cum = 0;
    int keep = n;
    for (int i = 0; i < n; i++) {
      cum += p[i];
      if (cum >= in->p.top_p) {
        keep = i + 1;
        break;
      }
    }
    n = keep;
  }
  if (in->p.min_p > 0) {
    sum = 0;
    for (int i = 0; i < n; i++) sum += p[i];
    double thr = p[0] / sum * in->p.min_p;
    int m = 0;
    for (int i = 0; i < n; i++)
      if (p[i] / sum >= thr) p[m] = p[i], order[m] = order[i], m++;
    n = m;
  }
  sum = 0;
  for (int i = 0; i < n; i++) sum += p[i];
  for (int i = 0; i < n; i++) probs[order[i]] = p[i] / sum;
}

static void check_case(const ref_in *in, unsigned seed) {
  sampler s;
  cr_assert_eq(sampler_init(&s, V), 0);
  float logits[V];
  rand_logits(logits, V, &seed);
  sampler_input si = {&in->p, in->prompt, in->n_prompt, in->output, in->n_output, in->banned, in->n_banned, NULL};
  double got[V], want[V];
  cr_assert_eq(sampler_probs(&s, logits, &si, got), 0);
  ref_probs(logits, in, want);
  int nz = 0;
  for (int v = 0; v < V; v++) {
    cr_assert(fabs(got[v] - want[v]) < 1e-5, "token %d: got %g want %g", v, got[v], want[v]);
    nz += want[v] > 0;
  }
  cr_assert_gt(nz, 0);
  /* the scratch state is clean afterwards (counts and marks back to zero) */
  for (int v = 0; v < V; v++) cr_assert(s.counts[v] == 0 && s.seen[v] == 0);
  sampler_deinit(&s);
}

static ref_in base(void) {
  ref_in in;
  memset(&in, 0, sizeof in);
  qv_sampling_params_default(&in.p);
  return in;
}

static const int32_t PROMPT[] = {3, 5, 5, 9, 40, 41, 60};
static const int32_t OUTPUT[] = {5, 12, 12, 12, 33, 40, 90, 12};

Test(sampler, temperature) {
  for (int k = 0; k < 3; k++) {
    ref_in in = base();
    in.p.temperature = (float[]){0.3f, 1.0f, 2.5f}[k];
    check_case(&in, 100 + (unsigned)k);
  }
}

Test(sampler, greedy_is_argmax) {
  ref_in in = base();
  in.p.temperature = 0.0f;
  check_case(&in, 7);
  sampler s;
  sampler_init(&s, V);
  float logits[V];
  unsigned seed = 3;
  rand_logits(logits, V, &seed);
  logits[40] = 10.0f;
  logits[20] = 10.0f; /* tie: lowest id wins */
  sampler_input si = {.params = &in.p};
  sampler_result r;
  sampler_rng rng;
  sampler_rng_seed(&rng, 1);
  cr_assert_eq(sampler_sample(&s, logits, &si, &rng, 0, &r), 0);
  cr_assert_eq(r.id, 20);
  sampler_deinit(&s);
}

Test(sampler, top_k) {
  ref_in in = base();
  in.p.top_k = 5;
  check_case(&in, 11);
  in.p.top_k = V + 10; /* larger than the vocabulary: no-op */
  check_case(&in, 12);
  in.p.top_k = 1;
  check_case(&in, 13);
}

Test(sampler, top_p) {
  ref_in in = base();
  in.p.top_p = 0.6f;
  check_case(&in, 21);
  in.p.top_p = 0.05f;
  check_case(&in, 22);
  in.p.temperature = 0.7f;
  in.p.top_p = 0.9f;
  in.p.top_k = 20;
  check_case(&in, 23);
}

Test(sampler, min_p) {
  ref_in in = base();
  in.p.min_p = 0.1f;
  check_case(&in, 31);
  in.p.min_p = 0.5f;
  in.p.top_p = 0.8f;
  check_case(&in, 32);
}

Test(sampler, repetition_penalty) {
  ref_in in = base();
  in.prompt = PROMPT, in.n_prompt = 7, in.output = OUTPUT, in.n_output = 8;
  in.p.repetition_penalty = 1.3f;
  check_case(&in, 41);
  in.p.repetition_penalty = 0.7f;
  check_case(&in, 42);
}

Test(sampler, frequency_and_presence_penalties) {
  ref_in in = base();
  in.prompt = PROMPT, in.n_prompt = 7, in.output = OUTPUT, in.n_output = 8;
  in.p.frequency_penalty = 0.8f;
  check_case(&in, 51);
  in.p.frequency_penalty = 0;
  in.p.presence_penalty = 1.5f;
  check_case(&in, 52);
  in.p.frequency_penalty = -0.5f;
  in.p.presence_penalty = 0.5f;
  check_case(&in, 53);
}

Test(sampler, logit_bias_and_bans) {
  ref_in in = base();
  int32_t ids[3] = {4, 50, 96};
  float vals[3] = {5.0f, -100.0f, 2.5f};
  in.p.logit_bias_ids = ids;
  in.p.logit_bias_values = vals;
  in.p.n_logit_bias = 3;
  check_case(&in, 61);
  int32_t banned[2] = {2, 17};
  in.banned = banned, in.n_banned = 2;
  check_case(&in, 62);
  in.p.temperature = 0; /* a ban beats a huge logit under greedy too */
  vals[0] = 1000.0f;
  ids[0] = 17;
  check_case(&in, 63);
}

Test(sampler, everything_together) {
  ref_in in = base();
  int32_t ids[2] = {8, 9};
  float vals[2] = {1.0f, -1.0f};
  int32_t banned[1] = {2};
  in.prompt = PROMPT, in.n_prompt = 7, in.output = OUTPUT, in.n_output = 8;
  in.banned = banned, in.n_banned = 1;
  in.p.logit_bias_ids = ids, in.p.logit_bias_values = vals, in.p.n_logit_bias = 2;
  in.p.repetition_penalty = 1.2f, in.p.frequency_penalty = 0.3f, in.p.presence_penalty = 0.2f;
  in.p.temperature = 0.8f, in.p.top_k = 30, in.p.top_p = 0.85f, in.p.min_p = 0.05f;
  check_case(&in, 71);
}

Test(sampler, raw_logprobs_and_top) {
  sampler s;
  sampler_init(&s, V);
  float logits[V];
  unsigned seed = 81;
  rand_logits(logits, V, &seed);
  qv_sampling_params p;
  qv_sampling_params_default(&p);
  p.temperature = 0.5f;
  p.logprobs = 1;
  p.repetition_penalty = 2.0f; /* logprobs ignore processing: raw model distribution */
  sampler_input si = {.params = &p, .prompt = PROMPT, .n_prompt = 7};
  sampler_rng rng;
  sampler_rng_seed(&rng, 9);
  sampler_result r;
  cr_assert_eq(sampler_sample(&s, logits, &si, &rng, 5, &r), 0);
  double mx = -1e30, sum = 0;
  for (int v = 0; v < V; v++) mx = fmax(mx, logits[v]);
  for (int v = 0; v < V; v++) sum += exp(logits[v] - mx);
  double lse = mx + log(sum);
  cr_assert(fabs(r.logprob - (logits[r.id] - lse)) < 1e-5);
  cr_assert_eq(r.n_top, 5);
  /* top 5 by brute force */
  int used[V] = {0};
  for (int k = 0; k < 5; k++) {
    int best = -1;
    for (int v = 0; v < V; v++)
      if (!used[v] && (best < 0 || logits[v] > logits[best])) best = v;
    used[best] = 1;
    cr_assert_eq(r.top[k].id, best, "rank %d", k);
    cr_assert(fabs(r.top[k].logprob - (logits[best] - lse)) < 1e-5);
  }
  sampler_deinit(&s);
}

/* 40000 seeded draws follow the computed distribution (deterministic: fixed seed). */
Test(sampler, draws_follow_distribution) {
  sampler s;
  sampler_init(&s, V);
  float logits[V];
  unsigned seed = 91;
  rand_logits(logits, V, &seed);
  qv_sampling_params p;
  qv_sampling_params_default(&p);
  p.temperature = 0.8f;
  p.top_k = 12;
  p.top_p = 0.9f;
  sampler_input si = {.params = &p};
  double probs[V];
  sampler_probs(&s, logits, &si, probs);
  int counts[V] = {0};
  sampler_rng rng;
  sampler_rng_seed(&rng, 12345);
  enum { N = 40000 };
  for (int i = 0; i < N; i++) {
    sampler_result r;
    sampler_sample(&s, logits, &si, &rng, 0, &r);
    counts[r.id]++;
  }
  for (int v = 0; v < V; v++) {
    if (probs[v] == 0) cr_assert_eq(counts[v], 0, "token %d was filtered out but drawn", v);
    else cr_assert(fabs(counts[v] / (double)N - probs[v]) < 0.015, "token %d: %g vs %g", v, counts[v] / (double)N, probs[v]);
  }
  sampler_deinit(&s);
}

Test(sampler, rng_seeded_reproducible) {
  sampler_rng a, b, c;
  sampler_rng_seed(&a, 42);
  sampler_rng_seed(&b, 42);
  sampler_rng_seed(&c, 43);
  int diff = 0;
  for (int i = 0; i < 1000; i++) {
    double x = sampler_rng_uniform(&a), y = sampler_rng_uniform(&b), z = sampler_rng_uniform(&c);
    cr_assert(x >= 0.0 && x < 1.0);
    cr_assert_eq(x, y);
    diff += x != z;
  }
  cr_assert_gt(diff, 990);
}

Test(sampler, all_banned_sampled_path_errors) {
  sampler s;
  sampler_init(&s, 4);
  float logits[4] = {1, 2, 3, 4};
  int32_t banned[4] = {0, 1, 2, 3};
  qv_sampling_params p;
  qv_sampling_params_default(&p);
  sampler_input si = {.params = &p, .banned = banned, .n_banned = 4};
  sampler_rng rng;
  sampler_rng_seed(&rng, 1);
  sampler_result r;
  cr_assert_eq(sampler_sample(&s, logits, &si, &rng, 0, &r), QV_ERANGE);
  sampler_deinit(&s);
}

/* Large vocabulary: top-k and top-p select without sorting everything; the kept set and its
 * probabilities must equal a full-sort reference, including when the top-p head needs far more
 * than the first 64 candidates (flat logits). */
static const float *g_big;
static int cmp_big(const void *a, const void *b) {
  int i = *(const int *)a, j = *(const int *)b;
  if (g_big[i] != g_big[j]) return g_big[i] > g_big[j] ? -1 : 1;
  return i - j;
}

Test(sampler, large_vocab_top_k_top_p) {
  enum { BV = 5000 };
  float *logits = malloc(sizeof(float) * BV);
  double *got = malloc(sizeof(double) * BV), *want = malloc(sizeof(double) * BV);
  int *order = malloc(sizeof(int) * BV);
  sampler s;
  cr_assert_eq(sampler_init(&s, BV), 0);
  unsigned seed = 501;
  const struct { float spread, top_p; int top_k; } cases[] = {
      {1.0f, 0.95f, 0}, {8.0f, 0.9f, 0}, {2.0f, 0.5f, 300}, {2.0f, 1.0f, 17}, {0.01f, 0.99f, 0}};
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    for (int i = 0; i < BV; i++) logits[i] = ((float)rand_r(&seed) / (float)RAND_MAX * 2.0f - 1.0f) * cases[c].spread;
    logits[123] = logits[456]; /* a tie */
    qv_sampling_params p;
    qv_sampling_params_default(&p);
    p.temperature = 0.7f;
    p.top_p = cases[c].top_p;
    p.top_k = cases[c].top_k;
    sampler_input si = {.params = &p};
    cr_assert_eq(sampler_probs(&s, logits, &si, got), 0);
    /* reference: sort everything */
    for (int i = 0; i < BV; i++) order[i] = i;
    g_big = logits;
    qsort(order, BV, sizeof(int), cmp_big);
    int n = p.top_k > 0 ? p.top_k : BV;
    double mx = logits[order[0]] / 0.7, z = 0;
    for (int i = 0; i < n; i++) z += exp(logits[order[i]] / 0.7 - mx);
    int keep = n;
    if (p.top_p < 1.0f) {
      double cum = 0;
      for (int i = 0; i < n; i++) {
        cum += exp(logits[order[i]] / 0.7 - mx) / z;
        if (cum >= p.top_p) {
          keep = i + 1;
          break;
        }
      }
    }
    memset(want, 0, sizeof(double) * BV);
    double zk = 0;
    for (int i = 0; i < keep; i++) zk += exp(logits[order[i]] / 0.7 - mx);
    for (int i = 0; i < keep; i++) want[order[i]] = exp(logits[order[i]] / 0.7 - mx) / zk;
    int kept = 0;
    for (int i = 0; i < BV; i++) {
      cr_assert(fabs(got[i] - want[i]) < 1e-6, "case %zu token %d: %g vs %g", c, i, got[i], want[i]);
      kept += got[i] > 0;
    }
    cr_assert_eq(kept, keep, "case %zu", c);
    if (c == 0) cr_assert_gt(keep, 256, "the flat case must need more than the first head");
  }
  sampler_deinit(&s);
  free(logits);
  free(got);
  free(want);
  free(order);
}

/* Constrained decoding: with a mask, every mode's distribution is the unmasked computation on
 * logits with the masked-out ids at -inf, and no draw leaves the mask. */
Test(sampler, mask_every_mode) {
  sampler s;
  sampler_init(&s, V);
  float logits[V], masked[V];
  unsigned seed = 77;
  rand_logits(logits, V, &seed);
  uint32_t mask[(V + 31) / 32] = {0};
  for (int v = 0; v < V; v++)
    if (rand_r(&seed) % 3 == 0) mask[v >> 5] |= 1u << (v & 31);
  for (int v = 0; v < V; v++) masked[v] = (mask[v >> 5] >> (v & 31)) & 1u ? logits[v] : -INFINITY;
  static const int32_t bias_ids[] = {1, 2, 3, 4, 5};
  static const float bias_vals[] = {50, 50, 50, 50, 50};
  for (int mode = 0; mode < 7; mode++) {
    qv_sampling_params p;
    qv_sampling_params_default(&p);
    if (mode == 0) p.temperature = 0.0f;
    if (mode == 2) p.top_k = 5;
    if (mode == 3) p.top_p = 0.6f;
    if (mode == 4) p.min_p = 0.2f;
    if (mode == 5) p.repetition_penalty = 1.3f, p.frequency_penalty = 0.5f, p.presence_penalty = 0.3f;
    if (mode == 6) p.logit_bias_ids = bias_ids, p.logit_bias_values = bias_vals, p.n_logit_bias = 5;
    sampler_input with = {.params = &p, .prompt = PROMPT, .n_prompt = 7, .output = OUTPUT, .n_output = 8, .mask = mask};
    sampler_input ref = {.params = &p, .prompt = PROMPT, .n_prompt = 7, .output = OUTPUT, .n_output = 8};
    double pw[V], pr[V];
    cr_assert_eq(sampler_probs(&s, logits, &with, pw), 0);
    cr_assert_eq(sampler_probs(&s, masked, &ref, pr), 0);
    for (int v = 0; v < V; v++) cr_assert(fabs(pw[v] - pr[v]) < 1e-12, "mode %d token %d: %g vs %g", mode, v, pw[v], pr[v]);
    sampler_rng rng;
    sampler_rng_seed(&rng, (uint64_t)mode);
    for (int i = 0; i < 300; i++) {
      sampler_result r;
      cr_assert_eq(sampler_sample(&s, logits, &with, &rng, 2, &r), 0);
      cr_assert((mask[r.id >> 5] >> (r.id & 31)) & 1u, "mode %d drew %d outside the mask", mode, r.id);
    }
  }
  sampler_deinit(&s);
}
