/* Test helpers for the engine tests: a fake deterministic model and a fake detokenizer behind
 * the engine's internal ops tables, plus a runner that drives a manual engine and gathers
 * each request's output.
 *
 * The fake model keeps a real paged "KV cache": each slot stores the (token, position) written
 * to it, and a logits row is a pseudo-random function of the whole context read back through
 * the block table. So any scheduling mistake (a wrong slot, a shared block overwritten, a stale
 * prefix-cache hit, a position off by one) changes the output or fails the forward, while the
 * correct output can be computed without the engine (fake_expected_greedy). Header-only
 * because each test file is its own executable. */
#ifndef QV_TEST_ENGINE_FAKE_H
#define QV_TEST_ENGINE_FAKE_H

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine_internal.h"

#define FAKE_EOS 2

typedef struct fake_model {
  int32_t vocab;
  int32_t n_blocks, block_size;
  int32_t *kv_tok;   /* [n_blocks * block_size] token written to each slot, -1 never */
  int32_t *kv_pos;   /* [n_blocks * block_size] its position */
  int32_t eos_boost; /* 0: EOS never wins; else EOS logit gets this added */
  int64_t n_forward, n_tokens_computed;
} fake_model;

static inline uint64_t fake_mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

/* logits [vocab] from the context hash: values in [-4, 4). */
static inline void fake_logits(const fake_model *f, uint64_t h, float *out) {
  for (int32_t v = 0; v < f->vocab; v++) {
    uint64_t r = fake_mix(h ^ ((uint64_t)v << 32));
    out[v] = (float)((double)(r >> 11) / 9007199254740992.0 * 8.0 - 4.0);
  }
  out[0] = -10.0f; /* <unk>, <s> never generated */
  out[1] = -10.0f;
  out[FAKE_EOS] = f->eos_boost ? out[FAKE_EOS] + (float)f->eos_boost : -10.0f;
}

static inline uint64_t fake_ctx_hash(const int32_t *toks, int32_t n) {
  uint64_t h = 0x1234;
  for (int32_t i = 0; i < n; i++) h = fake_mix(h ^ (uint64_t)(uint32_t)toks[i]);
  return h;
}

static inline int fake_kv_init(void *ctx, int32_t n_blocks, int32_t block_size, qv_error *err) {
  fake_model *f = ctx;
  free(f->kv_tok);
  free(f->kv_pos);
  f->n_blocks = n_blocks;
  f->block_size = block_size;
  size_t n = (size_t)n_blocks * (size_t)block_size;
  f->kv_tok = malloc(n * sizeof(int32_t));
  f->kv_pos = malloc(n * sizeof(int32_t));
  if (!f->kv_tok || !f->kv_pos) return qv_error_set(err, QV_ENOMEM, "fake kv");
  for (size_t i = 0; i < n; i++) f->kv_tok[i] = -1, f->kv_pos[i] = -1;
  return 0;
}

static inline int fake_forward(void *ctx, const qv_batch *b, float *logits, qv_error *err) {
  fake_model *f = ctx;
  int32_t nslots = f->n_blocks * f->block_size;
  f->n_forward++;
  f->n_tokens_computed += b->n_tokens;
  for (int32_t s = 0; s < b->n_seqs; s++) {
    int32_t q0 = b->seq_q_start[s], q1 = b->seq_q_start[s + 1];
    if (q1 <= q0) return qv_error_set(err, QV_EINVAL, "fake: empty sequence in batch");
    if (b->positions[q1 - 1] != b->seq_ctx_len[s] - 1)
      return qv_error_set(err, QV_EINVAL, "fake: positions do not end at ctx_len-1");
    for (int32_t t = q0; t < q1; t++) {
      int32_t pos = b->positions[t];
      int32_t blk = b->block_tables[(size_t)s * (size_t)b->max_blocks + (size_t)(pos / f->block_size)];
      int32_t slot = blk * f->block_size + pos % f->block_size;
      if (slot != b->slot_mapping[t] || slot < 0 || slot >= nslots)
        return qv_error_set(err, QV_EINVAL, "fake: slot mapping disagrees with block table");
      f->kv_tok[slot] = b->token_ids[t];
      f->kv_pos[slot] = pos;
    }
  }
  int32_t *ctx_toks = malloc(sizeof(int32_t) * 65536);
  for (int32_t l = 0; l < b->n_logits; l++) {
    int32_t row = b->logits_idx[l], s = 0;
    while (!(row >= b->seq_q_start[s] && row < b->seq_q_start[s + 1])) s++;
    int32_t n = b->positions[row] + 1;
    for (int32_t p = 0; p < n; p++) {
      int32_t blk = b->block_tables[(size_t)s * (size_t)b->max_blocks + (size_t)(p / f->block_size)];
      int32_t slot = blk * f->block_size + p % f->block_size;
      if (f->kv_pos[slot] != p) {
        free(ctx_toks);
        return qv_error_set(err, QV_EINVAL, "fake: KV slot %d holds position %d, wanted %d", slot, f->kv_pos[slot], p);
      }
      ctx_toks[p] = f->kv_tok[slot];
    }
    fake_logits(f, fake_ctx_hash(ctx_toks, n), logits + (size_t)l * (size_t)f->vocab);
  }
  free(ctx_toks);
  return 0;
}

/* Greedy continuation computed without the engine. out [max_tokens]; returns how many (stops
 * after EOS, which is included). */
static inline int32_t fake_expected_greedy(const fake_model *f, const int32_t *prompt, int32_t n_prompt,
                                           int32_t max_tokens, int32_t *out) {
  int32_t *t = malloc(sizeof(int32_t) * (size_t)(n_prompt + max_tokens));
  float *lg = malloc(sizeof(float) * (size_t)f->vocab);
  memcpy(t, prompt, sizeof(int32_t) * (size_t)n_prompt);
  int32_t n = 0;
  while (n < max_tokens) {
    fake_logits(f, fake_ctx_hash(t, n_prompt + n), lg);
    int32_t best = 0;
    for (int32_t v = 1; v < f->vocab; v++)
      if (lg[v] > lg[best]) best = v;
    t[n_prompt + n] = best;
    out[n++] = best;
    if (best == FAKE_EOS) break;
  }
  free(t);
  free(lg);
  return n;
}

static inline engine_model_ops fake_ops(fake_model *f, int32_t vocab, int32_t max_pos) {
  memset(f, 0, sizeof *f);
  f->vocab = vocab;
  engine_model_ops m = {.ctx = f, .vocab_size = vocab, .max_pos = max_pos, .n_eos = 1,
                        .kv_bytes_per_token = 64, .kv_init = fake_kv_init, .forward = fake_forward};
  m.eos_ids[0] = FAKE_EOS;
  return m;
}

static inline void fake_model_free(fake_model *f) {
  free(f->kv_tok);
  free(f->kv_pos);
}

/* Fake detokenizer: ids 0..2 are special (no text when skipped, "<s>"-like otherwise), id t>=3
 * is one letter 'a' + (t-3) % 26, and ids divisible by 7 are two letters ("xy" style) so text
 * and tokens do not align. */
typedef struct fake_detok {
  int skip;
  char buf[8];
} fake_detok;

static inline int fdt_create(void *ctx, int skip, void **out) {
  fake_detok *d = calloc(1, sizeof *d);
  if (!d) return QV_ENOMEM;
  d->skip = skip;
  *out = d;
  return 0;
}

static inline size_t fake_token_text(int32_t id, char *buf, int skip) {
  if (id < 3) {
    if (skip) return 0;
    buf[0] = '<', buf[1] = (char)('0' + id), buf[2] = '>';
    return 3;
  }
  buf[0] = (char)('a' + (id - 3) % 26);
  if (id % 7 == 0) {
    buf[1] = (char)('a' + (id * 3) % 26);
    return 2;
  }
  return 1;
}

static inline int fdt_push(void *dd, int32_t id, const char **text, size_t *len) {
  fake_detok *d = dd;
  *len = fake_token_text(id, d->buf, d->skip);
  *text = d->buf;
  return 0;
}

static inline int fdt_flush(void *dd, const char **text, size_t *len) {
  (void)dd;
  *text = "";
  *len = 0;
  return 0;
}

static inline void fdt_destroy(void *d) { free(d); }

static const engine_text_ops fake_text_ops = {NULL, fdt_create, fdt_push, fdt_flush, fdt_destroy, NULL};

/* Output gathered for one request. */
typedef struct run_out {
  uint64_t id;
  int32_t n_tokens;
  int32_t tokens[4096];
  char text[8192];
  size_t text_len;
  int32_t n_events;
  int32_t n_finish;
  qv_finish_reason finish;
  int32_t prompt_tokens, completion_tokens, cached_tokens, stop_token;
  char stop_str[64];
  float logprobs[4096];
} run_out;

/* Collects events into outs (matched by req id). Returns FINISH events seen. */
static inline int collect(qv_engine *e, run_out *outs, int n_outs) {
  qv_event *evs[64];
  int n, fin = 0;
  while ((n = qv_engine_poll(e, evs, 64)) > 0) {
    for (int i = 0; i < n; i++) {
      qv_event *ev = evs[i];
      run_out *o = NULL;
      for (int k = 0; k < n_outs; k++)
        if (outs[k].id == ev->req_id) o = &outs[k];
      cr_assert(o, "event for unknown request %llu", (unsigned long long)ev->req_id);
      o->n_events++;
      cr_assert_not_null(ev->text);
      if (ev->type == QV_EVENT_TOKENS) {
        cr_assert_eq(o->n_finish, 0, "tokens after finish");
        for (int32_t t = 0; t < ev->n_tokens; t++) {
          if (ev->logprobs) o->logprobs[o->n_tokens] = ev->logprobs[t];
          o->tokens[o->n_tokens++] = ev->token_ids[t];
        }
        memcpy(o->text + o->text_len, ev->text, ev->text_len);
        o->text_len += ev->text_len;
        o->text[o->text_len] = 0;
      } else {
        o->n_finish++;
        fin++;
        o->finish = ev->finish;
        o->prompt_tokens = ev->prompt_tokens;
        o->completion_tokens = ev->completion_tokens;
        o->cached_tokens = ev->cached_tokens;
        o->stop_token = ev->stop_token;
        if (ev->stop_str) snprintf(o->stop_str, sizeof o->stop_str, "%s", ev->stop_str);
      }
      qv_event_free(ev);
    }
  }
  return fin;
}

/* Steps a manual engine until every one of n_outs requests (single choice) finished. */
static inline void run_until_done(qv_engine *e, run_out *outs, int n_outs) {
  int done = 0;
  for (int iter = 0; done < n_outs; iter++) {
    cr_assert(iter < 1000000, "engine made no progress");
    int rc = engine_step(e);
    cr_assert(rc >= 0, "engine_step failed: %d", rc);
    done += collect(e, outs, n_outs);
  }
}

/* Every test ends here: nothing running or waiting, no block held. */
static inline void assert_no_leak(qv_engine *e) {
  engine_step(e);
  qv_engine_stats st;
  qv_engine_get_stats(e, &st);
  cr_assert_eq(st.n_running, 0);
  cr_assert_eq(st.n_waiting, 0);
  cr_assert_eq(st.n_kv_blocks_used, 0, "%d KV blocks leaked", st.n_kv_blocks_used);
}

static inline void fill_random(int32_t *t, int32_t n, int32_t vocab, unsigned *seed) {
  for (int32_t i = 0; i < n; i++) t[i] = 3 + (int32_t)(rand_r(seed) % (unsigned)(vocab - 3));
}

#endif
