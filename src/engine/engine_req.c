/* Requests: validation and copying at submit, and what happens to one choice when a token is
 * sampled (stop conditions, text deltas with stop-string hold-back, events). Runs on the
 * submitting thread (req_create) and on the engine thread (everything else). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine_priv.h"
#include "quiver/constrain.h"

#define REQ_MAX_N 128
#define REQ_MAX_STOPS 64
#define REQ_MAX_STOP_LEN 1024
#define REQ_MAX_BIAS 4096

void qv_sampling_params_default(qv_sampling_params *p) {
  memset(p, 0, sizeof *p);
  p->temperature = 1.0f;
  p->top_p = 1.0f;
  p->top_k = 0;
  p->repetition_penalty = 1.0f;
}

void qv_request_params_default(qv_request_params *p) {
  memset(p, 0, sizeof *p);
  qv_sampling_params_default(&p->sampling);
  p->max_tokens = 16;
  p->n = 1;
  p->skip_special_tokens = 1;
  p->detokenize = 1;
}

const char *qv_finish_reason_str(qv_finish_reason r) {
  switch (r) {
  case QV_FINISH_STOP: return "stop";
  case QV_FINISH_LENGTH: return "length";
  case QV_FINISH_ABORT: return "abort";
  case QV_FINISH_ERROR: return "error";
  default: return "none";
  }
}

void qv_event_free(qv_event *ev) { free(ev); }

qv_event *event_new(qv_event_type type, const eng_seq *q, int32_t n_tokens, int with_lp, int32_t n_top,
                    const char *text, size_t text_len, const char *s1, const char *s2) {
  size_t off = (sizeof(qv_event) + 15) & ~(size_t)15;
  size_t o_ids = off;
  off += (size_t)n_tokens * sizeof(int32_t);
  size_t o_lp = off = (off + 7) & ~(size_t)7;
  if (with_lp) off += (size_t)n_tokens * sizeof(float);
  size_t o_top = off = (off + 7) & ~(size_t)7;
  if (with_lp) off += (size_t)n_tokens * (size_t)n_top * sizeof(qv_top_logprob);
  size_t l1 = s1 ? strlen(s1) + 1 : 0, l2 = s2 ? strlen(s2) + 1 : 0;
  size_t o_text = off;
  off += text_len + 1;
  size_t o_s1 = off;
  off += l1;
  size_t o_s2 = off;
  off += l2;
  char *mem = calloc(1, off);
  if (!mem) return NULL;
  qv_event *ev = (qv_event *)mem;
  ev->type = type;
  ev->req_id = q->req->id;
  ev->choice = q->choice;
  ev->n_tokens = n_tokens;
  ev->token_ids = (int32_t *)(mem + o_ids);
  if (with_lp) {
    ev->logprobs = (float *)(mem + o_lp);
    ev->n_top = n_top;
    ev->top = n_top ? (qv_top_logprob *)(mem + o_top) : NULL;
  }
  ev->text = mem + o_text;
  if (text_len) memcpy(ev->text, text, text_len);
  ev->text_len = text_len;
  if (s1) ev->stop_str = memcpy(mem + o_s1, s1, l1);
  if (s2) ev->error = memcpy(mem + o_s2, s2, l2);
  ev->stop_token = -1;
  return ev;
}

void req_free(eng_req *r, const engine_text_ops *text) {
  if (!r) return;
  for (int32_t c = 0; r->seqs && c < r->p.n; c++) {
    eng_seq *q = &r->seqs[c];
    free(q->tokens);
    free(q->blocks);
    if (q->detok && text) text->detok_destroy(q->detok);
    qv_matcher_destroy(q->matcher);
    stop_text_deinit(&q->text);
  }
  for (int32_t c = 0; r->finish_evs && c < r->p.n; c++) free(r->finish_evs[c]);
  for (int32_t i = 0; r->stop && i < r->p.n_stop; i++) free(r->stop[i]);
  free(r->stop);
  free(r->finish_evs);
  free(r->seqs);
  free(r->prompt);
  free(r->bias_ids);
  free(r->bias_vals);
  free(r->stop_ids);
  free(r);
}

static int validate(const engine_cfg *cfg, int has_text, const qv_request_params *p, qv_error *err) {
  const qv_sampling_params *s = &p->sampling;
  if (!p->prompt_ids || p->n_prompt <= 0) return qv_error_set(err, QV_EINVAL, "the prompt is empty");
  if (p->n_prompt > cfg->max_model_len)
    return qv_error_set(err, QV_ERANGE, "the prompt has %d tokens, more than max_model_len %d", p->n_prompt,
                        cfg->max_model_len);
  for (int32_t i = 0; i < p->n_prompt; i++)
    if (p->prompt_ids[i] < 0 || p->prompt_ids[i] >= cfg->vocab)
      return qv_error_set(err, QV_EINVAL, "prompt token %d at position %d is outside the vocabulary (%d)",
                          p->prompt_ids[i], i, cfg->vocab);
  if (p->max_tokens < -1) return qv_error_set(err, QV_EINVAL, "max_tokens must be >= 0 (or -1: no limit)");
  if (p->min_tokens < 0 || (p->max_tokens >= 0 && p->min_tokens > p->max_tokens))
    return qv_error_set(err, QV_EINVAL, "min_tokens must be between 0 and max_tokens");
  if (p->n < 1 || p->n > REQ_MAX_N) return qv_error_set(err, QV_EINVAL, "n must be between 1 and %d", REQ_MAX_N);
  if (p->n > cfg->max_num_seqs)
    return qv_error_set(err, QV_EINVAL, "n (%d) exceeds max_num_seqs (%d)", p->n, cfg->max_num_seqs);
  if (!isfinite(s->temperature) || s->temperature < 0.0f)
    return qv_error_set(err, QV_EINVAL, "temperature must be a finite number >= 0");
  if (!(s->top_p > 0.0f && s->top_p <= 1.0f)) return qv_error_set(err, QV_EINVAL, "top_p must be in (0, 1]");
  if (s->top_k < -1) return qv_error_set(err, QV_EINVAL, "top_k must be -1, 0 (off) or positive");
  if (!(s->min_p >= 0.0f && s->min_p <= 1.0f)) return qv_error_set(err, QV_EINVAL, "min_p must be in [0, 1]");
  if (!(s->repetition_penalty > 0.0f) || !isfinite(s->repetition_penalty))
    return qv_error_set(err, QV_EINVAL, "repetition_penalty must be a finite number > 0");
  if (!isfinite(s->presence_penalty) || !isfinite(s->frequency_penalty))
    return qv_error_set(err, QV_EINVAL, "presence_penalty and frequency_penalty must be finite");
  if (s->top_logprobs < 0 || s->top_logprobs > SAMPLER_MAX_TOP)
    return qv_error_set(err, QV_EINVAL, "top_logprobs must be between 0 and %d", SAMPLER_MAX_TOP);
  if (s->n_logit_bias < 0 || s->n_logit_bias > REQ_MAX_BIAS ||
      (s->n_logit_bias && (!s->logit_bias_ids || !s->logit_bias_values)))
    return qv_error_set(err, QV_EINVAL, "logit_bias: at most %d entries", REQ_MAX_BIAS);
  for (int32_t i = 0; i < s->n_logit_bias; i++) {
    if (s->logit_bias_ids[i] < 0 || s->logit_bias_ids[i] >= cfg->vocab)
      return qv_error_set(err, QV_EINVAL, "logit_bias token %d is outside the vocabulary", s->logit_bias_ids[i]);
    if (!isfinite(s->logit_bias_values[i]))
      return qv_error_set(err, QV_EINVAL, "logit_bias value for token %d is not finite", s->logit_bias_ids[i]);
  }
  if (p->n_stop < 0 || p->n_stop > REQ_MAX_STOPS || (p->n_stop && !p->stop))
    return qv_error_set(err, QV_EINVAL, "stop: at most %d strings", REQ_MAX_STOPS);
  if (p->n_stop && !has_text)
    return qv_error_set(err, QV_EINVAL, "stop strings need a tokenizer, and this engine has none");
  for (int32_t i = 0; i < p->n_stop; i++) {
    size_t L = p->stop[i] ? strlen(p->stop[i]) : 0;
    if (L == 0 || L > REQ_MAX_STOP_LEN)
      return qv_error_set(err, QV_EINVAL, "stop strings must be 1 to %d bytes", REQ_MAX_STOP_LEN);
  }
  if (p->n_stop_token_ids < 0 || p->n_stop_token_ids > REQ_MAX_BIAS || (p->n_stop_token_ids && !p->stop_token_ids))
    return qv_error_set(err, QV_EINVAL, "stop_token_ids: at most %d ids", REQ_MAX_BIAS);
  for (int32_t i = 0; i < p->n_stop_token_ids; i++)
    if (p->stop_token_ids[i] < 0 || p->stop_token_ids[i] >= cfg->vocab)
      return qv_error_set(err, QV_EINVAL, "stop token %d is outside the vocabulary", p->stop_token_ids[i]);
  return 0;
}

static void *dup_mem(const void *src, size_t n, int *fail) {
  if (!n) return NULL;
  void *d = malloc(n);
  if (!d) {
    *fail = 1;
    return NULL;
  }
  return memcpy(d, src, n);
}

int req_create(const engine_cfg *cfg, const engine_text_ops *text, const qv_request_params *p, uint64_t seed,
               eng_req **out, qv_error *err) {
  *out = NULL;
  int rc = validate(cfg, text != NULL, p, err);
  if (rc) return rc;
  eng_req *r = calloc(1, sizeof *r);
  if (!r) return qv_error_set(err, QV_ENOMEM, "out of memory");
  int fail = 0;
  r->p = *p;
  r->prompt = dup_mem(p->prompt_ids, (size_t)p->n_prompt * sizeof(int32_t), &fail);
  r->bias_ids = dup_mem(p->sampling.logit_bias_ids, (size_t)p->sampling.n_logit_bias * sizeof(int32_t), &fail);
  r->bias_vals = dup_mem(p->sampling.logit_bias_values, (size_t)p->sampling.n_logit_bias * sizeof(float), &fail);
  r->stop_ids = dup_mem(p->stop_token_ids, (size_t)p->n_stop_token_ids * sizeof(int32_t), &fail);
  r->p.n_stop = 0; /* counts the copied strings so req_free frees exactly those */
  if (p->n_stop) {
    r->stop = calloc((size_t)p->n_stop, sizeof *r->stop);
    if (!r->stop) fail = 1;
    for (int32_t i = 0; !fail && i < p->n_stop; i++) {
      r->stop[i] = strdup(p->stop[i]);
      if (!r->stop[i]) fail = 1;
      else r->p.n_stop++;
      size_t L = strlen(p->stop[i]);
      if (L > r->max_stop_len) r->max_stop_len = L;
    }
  }
  r->p.constraint = NULL; /* the matchers hold the references */
  r->p.n = 0; /* likewise for the choices */
  r->seqs = calloc((size_t)p->n, sizeof *r->seqs);
  r->finish_evs = calloc((size_t)p->n, sizeof *r->finish_evs);
  if (!r->seqs || !r->finish_evs) fail = 1;
  r->p.prompt_ids = r->prompt;
  r->p.sampling.logit_bias_ids = r->bias_ids;
  r->p.sampling.logit_bias_values = r->bias_vals;
  r->p.stop = (const char *const *)r->stop;
  r->p.stop_token_ids = r->stop_ids;
  if (!p->sampling.has_seed) r->p.sampling.seed = seed;
  for (int32_t c = 0; !fail && c < p->n; c++) {
    eng_seq *q = &r->seqs[c];
    r->p.n++;
    q->req = r;
    q->choice = c;
    q->stop_idx = -1;
    q->stop_token = -1;
    stop_text_init(&q->text);
    q->cap_tokens = p->n_prompt + 16;
    q->tokens = malloc((size_t)q->cap_tokens * sizeof *q->tokens);
    q->blocks = malloc((size_t)cfg->max_blocks * sizeof *q->blocks);
    if (!q->tokens || !q->blocks) {
      fail = 1;
      break;
    }
    memcpy(q->tokens, p->prompt_ids, (size_t)p->n_prompt * sizeof *q->tokens);
    q->n_tokens = p->n_prompt;
    if (p->constraint && qv_matcher_create(p->constraint, &q->matcher)) {
      fail = 1;
      break;
    }
    /* Choice c draws from its own stream of the request's seed. */
    sampler_rng_seed(&q->rng, r->p.sampling.seed + (uint64_t)c * 0x9e3779b97f4a7c15ull);
  }
  if (fail) {
    req_free(r, text);
    return qv_error_set(err, QV_ENOMEM, "out of memory copying the request");
  }
  *out = r;
  return 0;
}

int req_start_text(const engine_text_ops *text, eng_req *r) {
  if (!text || !(r->p.detokenize || r->p.n_stop)) return 0;
  for (int32_t c = 0; c < r->p.n; c++) {
    eng_seq *q = &r->seqs[c];
    int rc = text->detok_create(text->ctx, r->p.skip_special_tokens, &q->detok);
    if (rc) return rc;
    /* Prime with the prompt so the first output token decodes in context (a SentencePiece
     * leading space is kept, as when the whole sequence is decoded); prompt text is dropped. */
    if (text->detok_prime) {
      if ((rc = text->detok_prime(q->detok, r->prompt, (size_t)r->p.n_prompt))) return rc;
      continue;
    }
    for (int32_t i = 0; i < r->p.n_prompt; i++) {
      const char *t;
      size_t n;
      if ((rc = text->detok_push(q->detok, r->prompt[i], &t, &n))) return rc;
    }
  }
  return 0;
}

int seq_is_eos(const engine_cfg *cfg, const eng_req *r, int32_t id) {
  if (r->p.ignore_eos) return 0;
  for (int32_t i = 0; i < cfg->n_eos; i++)
    if (cfg->eos_ids[i] == id) return 1;
  return 0;
}

static int is_stop_token(const eng_req *r, int32_t id) {
  for (int32_t i = 0; i < r->p.n_stop_token_ids; i++)
    if (r->stop_ids[i] == id) return 1;
  return 0;
}

/* Appends decoded text and applies stop strings; returns QV_ENOMEM or 0. */
static int push_text(eng_seq *q, const char *t, size_t n, int check) {
  eng_req *r = q->req;
  int m = stop_text_append(&q->text, t, n, r->stop, r->p.n_stop, r->max_stop_len, r->p.include_stop_str, check);
  if (m < 0 && m != -1) return m;
  if (m >= 0) {
    q->finish = QV_FINISH_STOP;
    q->stop_idx = m;
  }
  return 0;
}

int seq_on_token(const engine_cfg *cfg, const engine_text_ops *text, eng_seq *q, const sampler_result *res,
                 qv_event **tok_ev) {
  eng_req *r = q->req;
  *tok_ev = NULL;
  if (q->n_tokens == q->cap_tokens) {
    int32_t cap = q->cap_tokens * 2;
    int32_t *t = realloc(q->tokens, (size_t)cap * sizeof *t);
    if (!t) return QV_ENOMEM;
    q->tokens = t;
    q->cap_tokens = cap;
  }
  int32_t id = res->id;
  q->tokens[q->n_tokens++] = id;
  int32_t n_out = q->n_tokens - r->p.n_prompt;
  int check = n_out >= r->p.min_tokens;
  int rc = 0;
  if (seq_is_eos(cfg, r, id) || is_stop_token(r, id)) {
    q->finish = QV_FINISH_STOP;
    q->stop_token = id;
  } else if (q->detok) {
    const char *t;
    size_t n;
    if ((rc = text->detok_push(q->detok, id, &t, &n))) return rc;
    if ((rc = push_text(q, t, n, check))) return rc;
  }
  if (!q->finish && ((r->p.max_tokens >= 0 && n_out >= r->p.max_tokens) || q->n_tokens >= cfg->max_model_len))
    q->finish = QV_FINISH_LENGTH;
  if (q->finish && q->stop_idx < 0 && q->detok) {
    const char *t;
    size_t n;
    if ((rc = text->detok_flush(q->detok, &t, &n))) return rc;
    if ((rc = push_text(q, t, n, check))) return rc;
    if (q->stop_idx >= 0) q->stop_token = -1; /* the stop string is what ended it */
  }
  size_t end = stop_text_safe_end(&q->text, r->stop, r->p.n_stop, q->finish != QV_FINISH_NONE);
  const char *delta = "";
  size_t dlen = 0;
  if (r->p.detokenize && q->detok && q->text.buf) {
    delta = q->text.buf + q->text.emitted;
    dlen = end - q->text.emitted;
  }
  q->text.emitted = end;
  int with_lp = r->p.sampling.logprobs || r->p.sampling.top_logprobs > 0;
  qv_event *ev = event_new(QV_EVENT_TOKENS, q, 1, with_lp, r->p.sampling.top_logprobs, delta, dlen, NULL, NULL);
  if (!ev) return QV_ENOMEM;
  ev->token_ids[0] = id;
  if (with_lp) {
    ev->logprobs[0] = res->logprob;
    for (int32_t k = 0; k < res->n_top && k < ev->n_top; k++) ev->top[k] = res->top[k];
    ev->n_top = res->n_top < ev->n_top ? res->n_top : ev->n_top;
  }
  *tok_ev = ev;
  return 0;
}
