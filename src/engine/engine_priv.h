/* The engine object itself and the helpers its files share (engine.c, engine_step.c,
 * engine_req.c). Not a public header. */
#ifndef QV_ENGINE_PRIV_H
#define QV_ENGINE_PRIV_H

#include <pthread.h>

#include "engine/engine_internal.h"

/* Limits fixed at creation that request handling needs. */
typedef struct engine_cfg {
  int32_t vocab;
  int32_t max_model_len;
  int32_t max_num_seqs;
  int32_t max_blocks;
  int32_t eos_ids[ENGINE_MAX_EOS]; /* [n_eos] */
  int32_t n_eos;
} engine_cfg;

/* A growable FIFO of event pointers (owned until handed out by poll). */
typedef struct ev_queue {
  qv_event **items; /* [cap] ring */
  int32_t head, n, cap;
} ev_queue;

struct qv_engine {
  engine_model_ops model;
  engine_text_ops text;
  int has_text;
  qv_engine_opts opts;
  engine_cfg cfg;
  int manual;

  /* Engine-thread state. */
  sched sc;
  sampler smp;
  eng_req **reqs;          /* [cap_reqs] live requests (owned) */
  int32_t n_reqs, cap_reqs;
  qv_event **step_evs;     /* [cap_step_evs] events of the current step, posted together */
  int32_t n_step_evs, cap_step_evs;
  eng_seq **finished;      /* [max_num_seqs] choices that ended this step */
  int32_t n_finished;
  int32_t *banned;         /* [n_eos + ...] scratch for min_tokens bans */
  int32_t cap_banned;
  /* Batch staging, sized once: tokens [max_batched], per-sequence [max_num_seqs(+1)]. */
  int32_t *b_tokens, *b_pos, *b_slots;
  int32_t *b_qstart, *b_ctx, *b_tables, *b_logits_idx;
  float *logits;           /* [max_num_seqs][vocab] */
  uint32_t *cmask;         /* [cap_cmask] allowed-token bits of a constrained choice, words
                            * for ids below vocab first; allocated on first use */
  int32_t cap_cmask;
  int64_t n_steps, prompt_tokens_total, generation_tokens_total;

  /* Shared with other threads, under mu. */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  pthread_t thread;
  int thread_started;
  int stopping;
  eng_req **incoming;      /* [cap_incoming] submitted, not yet seen by the engine thread */
  int32_t n_incoming, cap_incoming;
  uint64_t *aborts;        /* [cap_aborts] */
  int32_t n_aborts, cap_aborts;
  ev_queue events;
  void (*notify)(void *);
  void *notify_arg;
  uint64_t next_id;
  uint64_t seed_state;     /* seeds for requests without a seed */
  qv_engine_stats stats;   /* snapshot after each step */

  /* Shared memory budget (opts.kv_budget) or NULL. budget_id: this engine's client id;
   * kv_short: a step asked for more than it got (engine thread); kv_poke: the budget wants
   * blocks back (under mu, wakes an idle engine thread). */
  struct qv_budget *budget;
  int32_t budget_id;
  int kv_short;
  int kv_poke;
};

/* engine_req.c */
int req_create(const engine_cfg *cfg, const engine_text_ops *text, const qv_request_params *p, uint64_t seed,
               eng_req **out, qv_error *err);
void req_free(eng_req *r, const engine_text_ops *text);
/* Creates and primes the choices' detokenizers (engine thread: priming a long prompt is work
 * the submitting thread, often an event loop, should not do). */
int req_start_text(const engine_text_ops *text, eng_req *r);
int seq_is_eos(const engine_cfg *cfg, const eng_req *r, int32_t id);
/* Applies a sampled token to q: appends it, checks stops, computes the text delta. *tok_ev
 * receives the TOKENS event (owned by the caller); q->finish is set when the choice ended. */
int seq_on_token(const engine_cfg *cfg, const engine_text_ops *text, eng_seq *q, const sampler_result *res,
                 qv_event **tok_ev);
/* Allocates one event in a single block (qv_event_free frees it); s1 becomes stop_str, s2 error. */
qv_event *event_new(qv_event_type type, const eng_seq *q, int32_t n_tokens, int with_lp, int32_t n_top,
                    const char *text, size_t text_len, const char *s1, const char *s2);

/* engine_step.c */
int engine_run_step(qv_engine *e);

/* engine_budget.c (only with opts.kv_budget). The most blocks a budget of this size could
 * grant at block_bytes each (the pool's default size under a budget). */
int32_t engine_budget_pool_cap(const qv_engine_opts *o, int64_t block_bytes);
/* Joins the budget with the reserved minimum and parks the rest of the pool. */
int engine_budget_join(qv_engine *e, int64_t block_bytes, qv_error *err);
void engine_budget_leave(qv_engine *e);
/* Gives back the free blocks the budget wants (start of a step). */
void engine_budget_begin_step(qv_engine *e);
/* Drops this engine's recorded demand when its step was not short (end of a step). */
void engine_budget_end_step(qv_engine *e);

#endif
