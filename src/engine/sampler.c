/* Sampler implementation (see sampler.h for the processing order and why it is fixed). The
 * greedy path touches the row once; the filtered path sorts only the candidates it keeps. */
#include "engine/sampler.h"
#include "core/util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void sampler_rng_seed(sampler_rng *r, uint64_t seed) {
  for (int i = 0; i < 4; i++) r->s[i] = qv_splitmix64(&seed);
}

double sampler_rng_uniform(sampler_rng *r) {
  return (double)(qv_xoshiro256ss(r->s) >> 11) * (1.0 / 9007199254740992.0);
}

int sampler_init(sampler *s, int32_t vocab) {
  memset(s, 0, sizeof *s);
  if (vocab <= 0) return QV_EINVAL;
  s->vocab = vocab;
  s->x = malloc((size_t)vocab * sizeof *s->x);
  s->cand = malloc((size_t)vocab * sizeof *s->cand);
  s->counts = calloc((size_t)vocab, sizeof *s->counts);
  s->seen = calloc((size_t)vocab, 1);
  s->p = malloc((size_t)vocab * sizeof *s->p);
  s->cv = malloc((size_t)vocab * sizeof *s->cv);
  if (!s->x || !s->cand || !s->counts || !s->seen || !s->p || !s->cv) {
    sampler_deinit(s);
    return QV_ENOMEM;
  }
  return 0;
}

void sampler_deinit(sampler *s) {
  free(s->x);
  free(s->cand);
  free(s->counts);
  free(s->seen);
  free(s->p);
  free(s->cv);
  memset(s, 0, sizeof *s);
}

static inline int valid_id(const sampler *s, int32_t id) { return id >= 0 && id < s->vocab; }

/* Steps 1-3 of sampler.h into s->x. Returns 1 when the row needs no change at all (then s->x
 * is not written and the caller reads logits directly). */
static int process(sampler *s, const float *logits, const sampler_input *in) {
  const qv_sampling_params *p = in->params;
  int rep = p->repetition_penalty > 0.0f && p->repetition_penalty != 1.0f;
  int freq = p->frequency_penalty != 0.0f || p->presence_penalty != 0.0f;
  if (!p->n_logit_bias && !in->n_banned && !rep && !(freq && in->n_output) && !in->mask) return 1;
  memcpy(s->x, logits, (size_t)s->vocab * sizeof *s->x);
  if (in->mask) {
    for (int32_t w = 0; w * 32 < s->vocab; w++) {
      uint32_t bits = in->mask[w];
      if (bits == 0xFFFFFFFFu) continue;
      int32_t end = w * 32 + 32 < s->vocab ? w * 32 + 32 : s->vocab;
      for (int32_t i = w * 32; i < end; i++)
        if (!((bits >> (i & 31)) & 1u)) s->x[i] = -INFINITY;
    }
  }
  for (int32_t i = 0; i < p->n_logit_bias; i++)
    if (valid_id(s, p->logit_bias_ids[i])) s->x[p->logit_bias_ids[i]] += p->logit_bias_values[i];
  for (int32_t i = 0; i < in->n_banned; i++)
    if (valid_id(s, in->banned[i])) s->x[in->banned[i]] = -INFINITY;
  if (rep) {
    float r = p->repetition_penalty;
    for (int pass = 0; pass < 2; pass++) {
      const int32_t *t = pass ? in->output : in->prompt;
      int32_t n = pass ? in->n_output : in->n_prompt;
      for (int32_t i = 0; i < n; i++) {
        int32_t id = t[i];
        if (!valid_id(s, id) || s->seen[id]) continue;
        s->seen[id] = 1;
        s->x[id] = s->x[id] > 0.0f ? s->x[id] / r : s->x[id] * r;
      }
    }
    for (int pass = 0; pass < 2; pass++) {
      const int32_t *t = pass ? in->output : in->prompt;
      int32_t n = pass ? in->n_output : in->n_prompt;
      for (int32_t i = 0; i < n; i++)
        if (valid_id(s, t[i])) s->seen[t[i]] = 0;
    }
  }
  if (freq) {
    for (int32_t i = 0; i < in->n_output; i++)
      if (valid_id(s, in->output[i])) s->counts[in->output[i]]++;
    for (int32_t i = 0; i < in->n_output; i++) {
      int32_t id = in->output[i];
      if (!valid_id(s, id) || !s->counts[id]) continue;
      s->x[id] -= p->frequency_penalty * (float)s->counts[id] + p->presence_penalty;
      s->counts[id] = 0;
    }
  }
  return 0;
}

/* Index of the largest value, lowest index on ties (NaN never wins). Two passes: a max over
 * 8 independent lanes, which compilers vectorise, then the first index holding it. */
static int32_t argmax(const float *x, int32_t n) {
  float lane[8];
  int32_t i = 0;
  for (int j = 0; j < 8; j++) lane[j] = -INFINITY;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; j++) lane[j] = x[i + j] > lane[j] ? x[i + j] : lane[j];
  float m = -INFINITY;
  for (int j = 0; j < 8; j++) m = lane[j] > m ? lane[j] : m;
  for (; i < n; i++) m = x[i] > m ? x[i] : m;
  for (i = 0; i < n; i++)
    if (x[i] == m) return i;
  return 0; /* all -inf or NaN */
}

/* Strict total order of candidates: higher logit first, lower id on ties. */
static inline int ahead(cand_val a, cand_val b) { return a.v > b.v || (a.v == b.v && a.id < b.id); }

static int cmp_desc(const void *a, const void *b) {
  const cand_val *x = a, *y = b;
  return ahead(*x, *y) ? -1 : ahead(*y, *x) ? 1 : 0;
}

/* Reorders a[0..n) so that a[0..m) are the m first in `ahead` order (in any order): an
 * iterative quickselect, O(n) expected, so top-k and top-p need not sort the vocabulary. */
static void select_top(cand_val *a, int32_t n, int32_t m) {
  int32_t lo = 0, hi = n - 1, k = m - 1;
  while (lo < hi) {
    int32_t mid = lo + (hi - lo) / 2;
    /* median of three as pivot, moved to hi */
    if (ahead(a[mid], a[lo])) { cand_val t = a[mid]; a[mid] = a[lo]; a[lo] = t; }
    if (ahead(a[hi], a[lo])) { cand_val t = a[hi]; a[hi] = a[lo]; a[lo] = t; }
    if (ahead(a[mid], a[hi])) { cand_val t = a[mid]; a[mid] = a[hi]; a[hi] = t; }
    cand_val piv = a[hi];
    int32_t st = lo;
    for (int32_t i = lo; i < hi; i++)
      if (ahead(a[i], piv)) { cand_val t = a[i]; a[i] = a[st]; a[st] = t; st++; }
    cand_val t = a[st]; a[st] = a[hi]; a[hi] = t;
    if (st == k) return;
    if (st < k) lo = st + 1;
    else hi = st - 1;
  }
}

/* Bin of a candidate d >= 0 nats below the best: monotone in d, the last bin open-ended. */
static inline int bin_of(float d, float scale, int nbin) {
  float b = d * scale;
  return b < (float)(nbin - 1) ? (int)b : nbin - 1;
}

/* Builds the filtered distribution (step 4, sampled path): s->cand[0..*n) with s->p. The order
 * of the candidates (which the draw walks) depends only on the logits and parameters. */
static int filter(sampler *s, const float *x, const qv_sampling_params *p, int32_t *n_out) {
  int32_t V = s->vocab;
  float inv_t = 1.0f / p->temperature;
  int32_t n = 0;
  cand_val *cv = s->cv;
  int use_p = p->top_p > 0.0f && p->top_p < 1.0f, use_k = p->top_k > 0;
  if (use_k || use_p) { /* candidates go straight into (logit, id) pairs */
    for (int32_t i = 0; i < V; i++)
      if (x[i] != -INFINITY && !isnan(x[i])) cv[n++] = (cand_val){x[i], i, 0.0};
  } else {
    for (int32_t i = 0; i < V; i++)
      if (x[i] != -INFINITY && !isnan(x[i])) s->cand[n++] = i;
  }
  if (n == 0) return QV_ERANGE;
  if (use_k && p->top_k >= n) { /* top_k keeps everything: back to the plain id list */
    use_k = 0;
    if (!use_p)
      for (int32_t i = 0; i < n; i++) s->cand[i] = cv[i].id;
  }
  if (use_k || use_p) {
    if (use_k) {
      select_top(cv, n, p->top_k);
      n = p->top_k;
    }
    int32_t keep = n;
    if (use_p) {
      /* The smallest head (in `ahead` order) holding top_p of the mass, without sorting the
       * vocabulary: candidates are binned by their distance below the best logit (a monotone
       * map, so every candidate of a nearer bin is ahead of every one of a farther bin), the
       * bin where the cumulative mass crosses top_p is found, and only that bin is sorted.
       * Two linear passes; the head's order depends only on the logits. */
      enum { NBIN = 128 };
      const float bin_scale = (float)NBIN / 32.0f; /* 32 nats: beyond, weights are < 1.3e-14 */
      float fmx = -INFINITY;
      for (int32_t i = 0; i < n; i++) fmx = cv[i].v * inv_t > fmx ? cv[i].v * inv_t : fmx;
      double mass[NBIN] = {0}, z = 0.0;
      for (int32_t i = 0; i < n; i++) {
        float d = fmx - cv[i].v * inv_t;
        /* expf: single precision is ample for sampling weights and several times faster */
        z += cv[i].w = (double)expf(-d);
        mass[bin_of(d, bin_scale, NBIN)] += cv[i].w;
      }
      double need = (double)p->top_p * z, acc = 0.0;
      int cross = 0;
      while (cross < NBIN - 1 && acc + mass[cross] < need) acc += mass[cross++];
      /* Partition: the bins before `cross` first, then the crossing bin, then the rest. */
      int32_t seg0 = 0, head;
      for (int32_t i = 0; i < n; i++)
        if (bin_of(fmx - cv[i].v * inv_t, bin_scale, NBIN) < cross) {
          cand_val t = cv[i]; cv[i] = cv[seg0]; cv[seg0] = t;
          seg0++;
        }
      head = seg0;
      for (int32_t i = seg0; i < n; i++)
        if (bin_of(fmx - cv[i].v * inv_t, bin_scale, NBIN) == cross) {
          cand_val t = cv[i]; cv[i] = cv[head]; cv[head] = t;
          head++;
        }
      qsort(cv + seg0, (size_t)(head - seg0), sizeof *cv, cmp_desc);
      keep = head;
      for (int32_t i = seg0; i < head; i++) {
        acc += cv[i].w;
        if (acc >= need) {
          keep = i + 1;
          break;
        }
      }
    } else {
      qsort(cv, (size_t)n, sizeof *cv, cmp_desc);
    }
    n = keep;
    for (int32_t i = 0; i < n; i++) s->cand[i] = cv[i].id;
  }
  double sum = 0.0;
  if (use_p) { /* the weights are already computed (relative to the global max) */
    for (int32_t i = 0; i < n; i++) sum += s->p[i] = s->cv[i].w;
  } else {
    double mx = -INFINITY;
    for (int32_t i = 0; i < n; i++) mx = fmax(mx, (double)x[s->cand[i]] * inv_t);
    for (int32_t i = 0; i < n; i++) sum += s->p[i] = (double)expf(x[s->cand[i]] * inv_t - (float)mx);
  }
  for (int32_t i = 0; i < n; i++) s->p[i] /= sum;
  if (p->min_p > 0.0f) {
    double pmax = 0.0;
    for (int32_t i = 0; i < n; i++) pmax = fmax(pmax, s->p[i]);
    double thr = pmax * (double)p->min_p;
    int32_t m = 0;
    sum = 0.0;
    for (int32_t i = 0; i < n; i++)
      if (s->p[i] >= thr) {
        s->cand[m] = s->cand[i];
        sum += s->p[m++] = s->p[i];
      }
    n = m;
    for (int32_t i = 0; i < n; i++) s->p[i] /= sum;
  }
  *n_out = n;
  return 0;
}

static inline int is_greedy(const qv_sampling_params *p) { return !(p->temperature >= 1e-5f); }

int sampler_probs(sampler *s, const float *logits, const sampler_input *in, double *probs) {
  const float *x = process(s, logits, in) ? logits : s->x;
  memset(probs, 0, (size_t)s->vocab * sizeof *probs);
  if (is_greedy(in->params)) {
    probs[argmax(x, s->vocab)] = 1.0;
    return 0;
  }
  int32_t n;
  int rc = filter(s, x, in->params, &n);
  if (rc) return rc;
  for (int32_t i = 0; i < n; i++) probs[s->cand[i]] = s->p[i];
  return 0;
}

/* Raw logprobs: log_softmax of logits at id, and the n_top largest. */
static void raw_logprobs(const sampler *s, const float *logits, int32_t n_top, sampler_result *out) {
  int32_t V = s->vocab;
  float mx = logits[argmax(logits, V)];
  double sum = 0.0;
  for (int32_t i = 0; i < V; i++) sum += exp((double)(logits[i] - mx));
  double lse = (double)mx + log(sum);
  out->logprob = (float)((double)logits[out->id] - lse);
  out->n_top = 0;
  if (n_top > SAMPLER_MAX_TOP) n_top = SAMPLER_MAX_TOP;
  if (n_top > V) n_top = V;
  /* Insertion into a small sorted array; most ids fail the first comparison. */
  for (int32_t i = 0; n_top > 0 && i < V; i++) {
    int32_t k = out->n_top;
    if (k == n_top && !(logits[i] > logits[out->top[k - 1].id])) continue;
    if (k < n_top) out->n_top++;
    else k--;
    while (k > 0 && logits[i] > logits[out->top[k - 1].id]) {
      out->top[k] = out->top[k - 1];
      k--;
    }
    out->top[k].id = i;
  }
  for (int32_t i = 0; i < out->n_top; i++)
    out->top[i].logprob = (float)((double)logits[out->top[i].id] - lse);
}

int sampler_sample(sampler *s, const float *logits, const sampler_input *in, sampler_rng *rng,
                   int32_t n_top, sampler_result *out) {
  const float *x = process(s, logits, in) ? logits : s->x;
  if (is_greedy(in->params)) {
    out->id = argmax(x, s->vocab);
  } else {
    int32_t n;
    int rc = filter(s, x, in->params, &n);
    if (rc) return rc;
    double u = sampler_rng_uniform(rng), cum = 0.0;
    out->id = s->cand[n - 1];
    for (int32_t i = 0; i < n; i++) {
      cum += s->p[i];
      if (u < cum) {
        out->id = s->cand[i];
        break;
      }
    }
  }
  out->logprob = 0.0f;
  out->n_top = 0;
  if (in->params->logprobs || n_top > 0) raw_logprobs(s, logits, n_top, out);
  return 0;
}
