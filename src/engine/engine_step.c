/* One engine step: take in new requests and aborts, let the scheduler pick the work, stage it
 * as a qv_batch (flat token arrays plus per-sequence offsets, context lengths and block
 * tables), run the forward pass, sample each sequence whose known tokens are now all computed,
 * apply stops, and post the step's events in one batch before calling the notify hook. */
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "engine/engine_priv.h"
#include "quiver/constrain.h"

static int push_step_ev(qv_engine *e, qv_event *ev) {
  if (e->n_step_evs == e->cap_step_evs) {
    int32_t cap = e->cap_step_evs ? e->cap_step_evs * 2 : 64;
    qv_event **a = realloc(e->step_evs, (size_t)cap * sizeof *a);
    if (!a) {
      qv_event_free(ev);
      return QV_ENOMEM;
    }
    e->step_evs = a;
    e->cap_step_evs = cap;
  }
  e->step_evs[e->n_step_evs++] = ev;
  return 0;
}

static void remove_req(qv_engine *e, eng_req *r) {
  for (int32_t i = 0; i < e->n_reqs; i++)
    if (e->reqs[i] == r) {
      e->reqs[i] = e->reqs[--e->n_reqs];
      break;
    }
  req_free(r, e->has_text ? &e->text : NULL);
}

/* Ends one choice: releases its blocks, records its FINISH event, and when it was the request's
 * last choice posts all the FINISH events (so each carries the whole request's usage) and
 * frees the request. msg: error text for QV_FINISH_ERROR. */
static void seq_finish(qv_engine *e, eng_seq *q, qv_finish_reason why, const char *msg) {
  eng_req *r = q->req;
  if (q->state == SEQ_DONE) return;
  sched_remove(&e->sc, q);
  q->state = SEQ_DONE;
  q->finish = why;
  const char *stop_str = q->stop_idx >= 0 && why == QV_FINISH_STOP ? r->stop[q->stop_idx] : NULL;
  qv_event *ev = event_new(QV_EVENT_FINISH, q, 0, 0, 0, "", 0, stop_str, why == QV_FINISH_ERROR ? msg : NULL);
  if (ev) {
    ev->finish = why;
    ev->stop_token = why == QV_FINISH_STOP ? q->stop_token : -1;
    ev->prompt_tokens = r->p.n_prompt;
    ev->completion_tokens = q->n_tokens - r->p.n_prompt;
  } else {
    QV_LOGE("engine: out of memory for a finish event (request %llu)", (unsigned long long)r->id);
  }
  r->finish_evs[q->choice] = ev;
  if (++r->n_done < r->p.n) return;
  int32_t total = 0;
  for (int32_t c = 0; c < r->p.n; c++) total += r->seqs[c].n_tokens - r->p.n_prompt;
  uint64_t t_end = engine_now_ns();
  uint64_t t_sched = r->t_sched_ns ? r->t_sched_ns : t_end;
  uint64_t t_first = r->t_first_ns ? r->t_first_ns : t_end;
  double queue_s = (double)(t_sched - r->t_submit_ns) / 1e9;
  double prefill_s = r->t_sched_ns ? (double)(t_first - t_sched) / 1e9 : 0.0;
  double decode_s = r->t_first_ns ? (double)(t_end - t_first) / 1e9 : 0.0;
  for (int32_t c = 0; c < r->p.n; c++) {
    qv_event *f = r->finish_evs[c];
    r->finish_evs[c] = NULL;
    if (!f) continue;
    f->total_completion_tokens = total;
    f->cached_tokens = r->cached_tokens;
    f->queue_s = queue_s;
    f->prefill_s = prefill_s;
    f->decode_s = decode_s;
    push_step_ev(e, f);
  }
  remove_req(e, r);
}

static void take_incoming(qv_engine *e) {
  pthread_mutex_lock(&e->mu);
  eng_req **in = e->incoming;
  int32_t n_in = e->n_incoming;
  e->incoming = NULL;
  e->n_incoming = e->cap_incoming = 0;
  uint64_t ab[64];
  int32_t n_ab = e->n_aborts < 64 ? e->n_aborts : 64;
  if (n_ab) {
    memcpy(ab, e->aborts, (size_t)n_ab * sizeof *ab);
    memmove(e->aborts, e->aborts + n_ab, (size_t)(e->n_aborts - n_ab) * sizeof *ab);
    e->n_aborts -= n_ab;
  }
  pthread_mutex_unlock(&e->mu);

  for (int32_t i = 0; i < n_in; i++) {
    eng_req *r = in[i];
    if (e->n_reqs == e->cap_reqs) {
      int32_t cap = e->cap_reqs ? e->cap_reqs * 2 : 64;
      eng_req **a = realloc(e->reqs, (size_t)cap * sizeof *a);
      if (!a) { /* give the request back an error rather than lose it silently */
        QV_LOGE("engine: out of memory admitting request %llu", (unsigned long long)r->id);
        for (int32_t k = i; k < n_in; k++) req_free(in[k], e->has_text ? &e->text : NULL);
        break;
      }
      e->reqs = a;
      e->cap_reqs = cap;
    }
    e->reqs[e->n_reqs++] = r;
    e->prompt_tokens_total += r->p.n_prompt;
    int32_t n = r->p.n;
    if (req_start_text(e->has_text ? &e->text : NULL, r)) {
      for (int32_t c = 0; c < n; c++) {
        r->seqs[c].state = SEQ_RUNNING; /* never queued; seq_finish only releases */
        seq_finish(e, &r->seqs[c], QV_FINISH_ERROR, "engine: cannot start the detokenizer"); /* frees r last */
      }
      continue;
    }
    for (int32_t c = 0; c < n; c++) {
      eng_seq *q = &r->seqs[c];
      if (r->p.max_tokens == 0) {
        q->state = SEQ_RUNNING; /* never queued; seq_finish only releases */
        seq_finish(e, q, QV_FINISH_LENGTH, NULL); /* frees r with its last choice */
        continue;
      }
      if (sched_add(&e->sc, q)) seq_finish(e, q, QV_FINISH_ERROR, "out of memory queueing the request");
    }
  }
  free(in);
  for (int32_t i = 0; i < n_ab; i++)
    for (int32_t k = 0; k < e->n_reqs; k++)
      if (e->reqs[k]->id == ab[i]) {
        eng_req *r = e->reqs[k];
        int32_t n = r->p.n;
        for (int32_t c = 0; c < n; c++) {
          if (r->seqs[c].state == SEQ_DONE) continue;
          int last = r->n_done + 1 == n;
          seq_finish(e, &r->seqs[c], QV_FINISH_ABORT, NULL);
          if (last) break; /* r is freed */
        }
        break;
      }
}

/* Stages the scheduled work. Returns the number of logits rows requested. */
static int32_t build_batch(qv_engine *e, qv_batch *b) {
  sched *s = &e->sc;
  int32_t bs = s->block_size, mb = e->cfg.max_blocks;
  int32_t nt = 0, nl = 0;
  for (int32_t i = 0; i < s->n_scheduled; i++) {
    eng_seq *q = s->scheduled[i];
    e->b_qstart[i] = nt;
    for (int32_t j = 0; j < q->n_sched; j++, nt++) {
      int32_t pos = q->n_computed + j;
      e->b_tokens[nt] = q->tokens[pos];
      e->b_pos[nt] = pos;
      e->b_slots[nt] = q->blocks[pos / bs] * bs + pos % bs;
    }
    e->b_ctx[i] = q->n_computed + q->n_sched;
    memcpy(e->b_tables + (size_t)i * (size_t)mb, q->blocks, (size_t)q->n_blocks * sizeof(int32_t));
    if (q->n_computed + q->n_sched == q->n_tokens) e->b_logits_idx[nl++] = nt - 1;
  }
  e->b_qstart[s->n_scheduled] = nt;
  *b = (qv_batch){.n_tokens = nt,
                  .n_seqs = s->n_scheduled,
                  .n_logits = nl,
                  .token_ids = e->b_tokens,
                  .positions = e->b_pos,
                  .slot_mapping = e->b_slots,
                  .seq_q_start = e->b_qstart,
                  .seq_ctx_len = e->b_ctx,
                  .block_tables = e->b_tables,
                  .max_blocks = mb,
                  .logits_idx = e->b_logits_idx};
  return nl;
}

/* Ids a choice may not draw yet: EOS (unless ignored) and stop tokens before min_tokens. */
static int32_t banned_for(qv_engine *e, const eng_seq *q) {
  const eng_req *r = q->req;
  if (q->n_tokens - r->p.n_prompt >= r->p.min_tokens) return 0;
  /* A finished constraint allows nothing but EOS: the constraint wins over min_tokens. */
  if (q->matcher && qv_matcher_is_dead(q->matcher)) return 0;
  int32_t need = e->cfg.n_eos + r->p.n_stop_token_ids;
  if (need > e->cap_banned) {
    int32_t *a = realloc(e->banned, (size_t)need * sizeof *a);
    if (!a) return 0;
    e->banned = a;
    e->cap_banned = need;
  }
  int32_t n = 0;
  if (!r->p.ignore_eos)
    for (int32_t i = 0; i < e->cfg.n_eos; i++) e->banned[n++] = e->cfg.eos_ids[i];
  for (int32_t i = 0; i < r->p.n_stop_token_ids; i++) e->banned[n++] = r->stop_ids[i];
  return n;
}

static int is_eos_id(const engine_cfg *cfg, int32_t id) {
  for (int32_t i = 0; i < cfg->n_eos; i++)
    if (cfg->eos_ids[i] == id) return 1;
  return 0;
}

/* The constrained-decoding mask of q into e->cmask: the matcher's tokens, plus every EOS id
 * once the constraint is complete. 1 when some token is allowed, 0 when none is (the
 * vocabulary cannot continue the constraint), negative on failure. */
static int constraint_mask(qv_engine *e, eng_seq *q) {
  /* The tokenizer's vocabulary may be smaller (padded embeddings) or larger than the logits
   * row; the buffer covers both and only ids below cfg.vocab are read. */
  int32_t words = (e->cfg.vocab + 31) / 32, mw = qv_matcher_mask_words(q->matcher);
  int32_t need = mw > words ? mw : words;
  if (need > e->cap_cmask) {
    uint32_t *a = realloc(e->cmask, (size_t)need * sizeof *a);
    if (!a) return QV_ENOMEM;
    e->cmask = a;
    e->cap_cmask = need;
  }
  if (words > mw) memset(e->cmask + mw, 0, (size_t)(words - mw) * sizeof *e->cmask);
  int rc = qv_matcher_fill_mask(q->matcher, e->cmask);
  if (rc) return rc;
  if (qv_matcher_is_complete(q->matcher))
    for (int32_t i = 0; i < e->cfg.n_eos; i++) {
      int32_t id = e->cfg.eos_ids[i];
      if (id >= 0 && id < e->cfg.vocab) e->cmask[id >> 5] |= 1u << (id & 31);
    }
  if (e->cfg.vocab % 32) e->cmask[words - 1] &= (1u << (e->cfg.vocab % 32)) - 1u;
  uint32_t any = 0;
  for (int32_t w = 0; w < words; w++) any |= e->cmask[w];
  return any != 0;
}

static void post_events(qv_engine *e) {
  pthread_mutex_lock(&e->mu);
  ev_queue *qu = &e->events;
  if (qu->n + e->n_step_evs > qu->cap) {
    int32_t cap = qu->cap ? qu->cap : 256;
    while (cap < qu->n + e->n_step_evs) cap *= 2;
    qv_event **a = malloc((size_t)cap * sizeof *a);
    if (!a) {
      pthread_mutex_unlock(&e->mu);
      QV_LOGE("engine: out of memory posting events; retrying next step");
      return;
    }
    for (int32_t i = 0; i < qu->n; i++) a[i] = qu->items[(qu->head + i) % qu->cap];
    free(qu->items);
    qu->items = a;
    qu->head = 0;
    qu->cap = cap;
  }
  for (int32_t i = 0; i < e->n_step_evs; i++) qu->items[(qu->head + qu->n++) % qu->cap] = e->step_evs[i];
  int posted = e->n_step_evs;
  e->n_step_evs = 0;
  e->stats.n_running = e->sc.n_running;
  e->stats.n_waiting = e->sc.n_waiting;
  e->stats.n_kv_blocks = kv_pool_n_active(&e->sc.pool);
  e->stats.n_kv_blocks_used = kv_pool_n_used(&e->sc.pool);
  e->stats.prefix_queries = e->sc.prefix_queries;
  e->stats.prefix_hits = e->sc.prefix_hits;
  e->stats.n_preemptions = e->sc.n_preemptions;
  e->stats.n_steps = e->n_steps;
  e->stats.prompt_tokens_total = e->prompt_tokens_total;
  e->stats.generation_tokens_total = e->generation_tokens_total;
  void (*fn)(void *) = e->notify;
  void *arg = e->notify_arg;
  pthread_mutex_unlock(&e->mu);
  if (posted && fn) fn(arg);
}

int engine_run_step(qv_engine *e) {
  take_incoming(e);
  engine_budget_begin_step(e);
  int32_t n_tok = sched_step(&e->sc);
  int did = n_tok > 0;
  if (n_tok < 0) {
    QV_LOGE("engine: scheduler out of memory");
    n_tok = 0;
  }
  if (n_tok == 0 && e->sc.n_running == 0 && e->sc.n_waiting > 0) {
    /* Cannot happen by construction (see sched.c); never spin or hang if it somehow does. */
    while (e->sc.n_waiting > 0) seq_finish(e, e->sc.waiting[0], QV_FINISH_ERROR, "engine: request could not be scheduled");
  }
  if (n_tok > 0) {
    uint64_t t_step = engine_now_ns();
    for (int32_t i = 0; i < e->sc.n_scheduled; i++)
      if (!e->sc.scheduled[i]->req->t_sched_ns) e->sc.scheduled[i]->req->t_sched_ns = t_step;
    qv_batch b;
    int32_t nl = build_batch(e, &b);
    qv_error err = {0};
    int rc = e->model.forward(e->model.ctx, &b, e->logits, &err);
    e->n_steps++;
    sched *s = &e->sc;
    e->n_finished = 0;
    if (rc) {
      QV_LOGE("engine: forward failed: %s", err.msg);
      for (int32_t i = 0; i < s->n_scheduled; i++) e->finished[e->n_finished++] = s->scheduled[i];
      for (int32_t i = 0; i < e->n_finished; i++) seq_finish(e, e->finished[i], QV_FINISH_ERROR, err.msg);
    } else {
      int32_t row = 0;
      uint64_t t_sampled = engine_now_ns();
      for (int32_t i = 0; i < s->n_scheduled; i++) {
        eng_seq *q = s->scheduled[i];
        sched_commit(s, q);
        if (q->n_computed < q->n_tokens) continue;
        const float *lg = e->logits + (size_t)row++ * (size_t)e->cfg.vocab;
        eng_req *r = q->req;
        sampler_input in = {.params = &r->p.sampling,
                            .prompt = q->tokens,
                            .n_prompt = r->p.n_prompt,
                            .output = q->tokens + r->p.n_prompt,
                            .n_output = q->n_tokens - r->p.n_prompt};
        in.n_banned = banned_for(e, q);
        in.banned = e->banned;
        sampler_result res;
        qv_event *ev = NULL;
        int src = 0;
        if (q->matcher) {
          src = constraint_mask(e, q);
          if (src == 0) {
            q->finish = QV_FINISH_ERROR;
            q->cst_error = "the constraint cannot be continued with this model's vocabulary";
            e->finished[e->n_finished++] = q;
            continue;
          }
          src = src < 0 ? src : 0;
          in.mask = e->cmask;
        }
        if (!src) src = sampler_sample(&e->smp, lg, &in, &q->rng, r->p.sampling.top_logprobs, &res);
        /* The matcher follows every token but EOS, which ends the choice. */
        if (!src && q->matcher && !is_eos_id(&e->cfg, res.id)) src = qv_matcher_accept(q->matcher, res.id);
        if (!src) src = seq_on_token(&e->cfg, e->has_text ? &e->text : NULL, q, &res, &ev);
        if (src) {
          q->finish = QV_FINISH_ERROR;
        } else {
          e->generation_tokens_total++;
          if (!r->t_first_ns) r->t_first_ns = t_sampled;
          push_step_ev(e, ev);
        }
        if (q->finish) e->finished[e->n_finished++] = q;
      }
      if (row != nl) /* programmer invariant: one logits row per sampled sequence */
        QV_LOGE("engine: %d logits rows requested, %d sampled", nl, row);
      for (int32_t i = 0; i < e->n_finished; i++) {
        eng_seq *q = e->finished[i];
        seq_finish(e, q, q->finish, q->finish != QV_FINISH_ERROR ? NULL
                                    : q->cst_error ? q->cst_error
                                                   : "engine: sampling failed (out of memory or no candidate token)");
      }
    }
  }
  engine_budget_end_step(e);
  post_events(e);
  return did;
}
