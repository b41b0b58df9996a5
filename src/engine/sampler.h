/* Sampler: turns one row of logits into the next token under a request's sampling parameters,
 * and computes logprobs.
 *
 * Processing order (fixed, documented because it changes results):
 *   0. a constrained-decoding mask sets every id outside it to -inf;
 *   1. logit_bias is added; banned ids (EOS/stop tokens before min_tokens) are set to -inf;
 *   2. repetition_penalty over every distinct token of prompt+output (logit>0: /r, else *r);
 *   3. frequency_penalty * count + presence_penalty * (count>0) subtracted, output tokens only;
 *   4. temperature 0 (below 1e-5): argmax, lowest id on ties;
 *      else divide by temperature, keep the top_k largest, then the smallest set of highest
 *      probabilities whose sum reaches top_p, then those with p >= min_p * p_max, and draw from
 *      what is left, renormalised, with one uniform number from the request's own RNG.
 * Logprobs are those of the raw model logits (log_softmax before any of the above), as vLLM
 * reports by default; top_logprobs lists the most likely raw tokens, highest first.
 *
 * Each request carries its own RNG (xoshiro256**, seeded from its seed and choice index) and
 * draws exactly one number per sampled token, so seeded output never depends on what else is
 * in the batch. The scratch buffers belong to the sampler, one per engine thread. */
#ifndef QV_ENGINE_SAMPLER_H
#define QV_ENGINE_SAMPLER_H

#include <stdint.h>

#include "quiver/engine.h"

#define SAMPLER_MAX_TOP 20

typedef struct sampler_rng {
  uint64_t s[4];
} sampler_rng;

void sampler_rng_seed(sampler_rng *r, uint64_t seed);
/* Uniform in [0, 1), 53 random bits. */
double sampler_rng_uniform(sampler_rng *r);

/* A candidate token during top-k/top-p selection. */
typedef struct cand_val {
  float v;    /* processed logit */
  int32_t id;
  double w;   /* unnormalised probability (top-p) */
} cand_val;

typedef struct sampler {
  int32_t vocab;
  float *x;         /* [vocab] processed logits of the current row */
  int32_t *cand;    /* [vocab] candidate ids */
  int32_t *counts;  /* [vocab] output-token counts, all zero between calls */
  uint8_t *seen;    /* [vocab] repetition marks, all zero between calls */
  double *p;        /* [vocab] candidate probabilities */
  cand_val *cv;      /* [vocab] (logit, id) pairs for top-k/top-p selection */
} sampler;

/* What one sampling call reads; every pointer is borrowed for the call. */
typedef struct sampler_input {
  const qv_sampling_params *params; /* logit_bias arrays included */
  const int32_t *prompt;            /* [n_prompt] */
  int32_t n_prompt;
  const int32_t *output;            /* [n_output] tokens generated so far */
  int32_t n_output;
  const int32_t *banned;            /* [n_banned] ids that may not be drawn now */
  int32_t n_banned;
  const uint32_t *mask;             /* [(vocab + 31) / 32] constrained decoding: bit (id % 32)
                                     * of word id / 32 set for ids that may be drawn; NULL: all */
} sampler_input;

typedef struct sampler_result {
  int32_t id;
  float logprob;                         /* raw logprob of id */
  int32_t n_top;
  qv_top_logprob top[SAMPLER_MAX_TOP];   /* [n_top], highest first */
} sampler_result;

int sampler_init(sampler *s, int32_t vocab);
void sampler_deinit(sampler *s);

/* Samples from logits [vocab]. n_top (0..20) raw top logprobs are reported. */
int sampler_sample(sampler *s, const float *logits, const sampler_input *in, sampler_rng *rng,
                   int32_t n_top, sampler_result *out);

/* The final distribution step 4 draws from, probs [vocab] (zeros for removed ids; one-hot for
 * greedy). For tests that compare against a reference computation. */
int sampler_probs(sampler *s, const float *logits, const sampler_input *in, double *probs);

#endif
