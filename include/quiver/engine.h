/* The engine: continuous batching of many requests over one loaded model, on its own thread.
 *
 * Each step schedules a token budget of work mixing decode tokens and prefill chunks over a
 * paged KV cache with prefix caching, runs one forward pass, samples, checks stops and posts
 * events. Callers on other threads submit and abort requests and drain events; the engine
 * calls the notify hook (e.g. one that does uv_async_send) after posting, and since such hooks
 * coalesce, a consumer must drain the whole queue each time it is woken. */
#ifndef QUIVER_ENGINE_H
#define QUIVER_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "quiver/error.h"
#include "quiver/tokenizer.h"

typedef struct qv_engine qv_engine;
struct qv_model;  /* models/model.h */
struct qv_budget; /* fleet/budget.h */

typedef struct qv_engine_opts {
  int32_t block_size;             /* tokens per KV block (default 16) */
  int32_t n_kv_blocks;            /* 0: size the pool from kv_mem_fraction */
  double kv_mem_fraction;         /* with n_kv_blocks 0: fraction of available memory for KV (0: 0.25 of
                                   * available RAM); the pool never exceeds max_num_seqs full sequences */
  int32_t max_num_seqs;           /* running sequences at once (default 256; lowered to max_num_batched_tokens) */
  int32_t max_num_batched_tokens; /* tokens per step (default 2048) */
  int32_t max_model_len;          /* 0: the model's max positions */
  int32_t enable_prefix_caching;  /* default 1 */
  int32_t max_waiting;            /* bounded waiting queue; submit returns QV_EBUSY when full (default 1024) */
  uint64_t cache_salt;            /* mixed into prefix hashes (model/adapter identity) */
  int32_t has_seed;               /* 1: requests without a seed get seeds drawn from `seed` (a
                                   * reproducible run, vLLM's --seed); 0: from the clock */
  uint64_t seed;
  /* A shared memory budget (borrowed; must outlive the engine) or NULL: a fixed pool as above.
   * With one, the pool's size (n_kv_blocks or the default sizing) is the most it may hold,
   * kv_min_blocks (raised to one full max_model_len sequence) is reserved at creation, and
   * blocks between the two are acquired when a step runs short and given back when other
   * engines of the budget want them (fleet/budget.h). */
  struct qv_budget *kv_budget;
  int32_t kv_min_blocks;
} qv_engine_opts;

void qv_engine_opts_default(qv_engine_opts *o);

typedef struct qv_sampling_params {
  float temperature;        /* 0: greedy */
  float top_p;              /* 1: off */
  int32_t top_k;            /* 0 or -1: off */
  float min_p;              /* 0: off */
  float presence_penalty;   /* 0: off */
  float frequency_penalty;  /* 0: off */
  float repetition_penalty; /* 1: off */
  int32_t has_seed;
  uint64_t seed;
  const int32_t *logit_bias_ids;  /* [n_logit_bias], borrowed for the submit call */
  const float *logit_bias_values; /* [n_logit_bias] */
  int32_t n_logit_bias;
  int32_t logprobs;      /* 1: report the sampled token's logprob */
  int32_t top_logprobs;  /* 0..20 alternatives per position. Logprobs are the raw model's
                          * (log-softmax before penalties, temperature and filters). */
} qv_sampling_params;

void qv_sampling_params_default(qv_sampling_params *p);

typedef struct qv_request_params {
  const int32_t *prompt_ids;  /* [n_prompt], borrowed for the submit call */
  int32_t n_prompt;
  qv_sampling_params sampling;
  int32_t max_tokens;         /* -1: until max_model_len; 0: finish at once (default 16) */
  int32_t min_tokens;
  int32_t ignore_eos;
  const char *const *stop;    /* [n_stop] stop strings, borrowed for the submit call */
  int32_t n_stop;
  const int32_t *stop_token_ids; /* [n_stop_token_ids] */
  int32_t n_stop_token_ids;
  int32_t include_stop_str;   /* keep the matched stop string in the text (default 0) */
  int32_t n;                  /* choices sharing the prompt (default 1) */
  int32_t priority;           /* lower value is served first (vLLM convention); default 0 */
  int32_t skip_special_tokens;/* default 1 */
  int32_t detokenize;         /* produce text deltas (default 1) */
  struct qv_constraint *constraint; /* constrained decoding (quiver/constrain.h), compiled
                               * against this engine's vocabulary, or NULL. The engine takes
                               * its own reference; each choice gets a matcher. */
} qv_request_params;

void qv_request_params_default(qv_request_params *p);

typedef enum qv_finish_reason {
  QV_FINISH_NONE = 0,
  QV_FINISH_STOP,    /* EOS, stop token or stop string */
  QV_FINISH_LENGTH,  /* max_tokens or max_model_len */
  QV_FINISH_ABORT,   /* qv_engine_abort or engine shutdown */
  QV_FINISH_ERROR,   /* an internal failure; message in the event */
} qv_finish_reason;

const char *qv_finish_reason_str(qv_finish_reason r); /* "stop", "length", "abort", "error" */

typedef struct qv_top_logprob {
  int32_t id;
  float logprob;
} qv_top_logprob;

typedef enum qv_event_type { QV_EVENT_TOKENS = 1, QV_EVENT_FINISH = 2 } qv_event_type;

/* One event. TOKENS carries the tokens sampled for one choice since its last event and the
 * text that became final (stop-string lookahead is held back). FINISH ends a choice and carries
 * no tokens (the last ones came in a TOKENS event before it); a request with n choices gets n
 * FINISH events, posted together once every choice ended, and the usage in each covers the
 * whole request. token_ids, logprobs, top, text, stop_str and error all live in the event's
 * own allocation: valid until qv_event_free. */
typedef struct qv_event {
  qv_event_type type;
  uint64_t req_id;
  int32_t choice;              /* 0..n-1 */
  int32_t n_tokens;
  int32_t *token_ids;          /* [n_tokens] */
  float *logprobs;             /* [n_tokens] or NULL when not requested */
  int32_t n_top;               /* top_logprobs per token */
  qv_top_logprob *top;         /* [n_tokens][n_top] or NULL */
  char *text;                  /* NUL-terminated delta; "" when nothing new */
  size_t text_len;
  /* FINISH only */
  qv_finish_reason finish;
  char *stop_str;              /* the stop string that matched, or NULL */
  int32_t stop_token;          /* the stop/EOS token that matched, or -1 */
  int32_t prompt_tokens;
  int32_t completion_tokens;   /* this choice's */
  int32_t total_completion_tokens; /* all choices of the request */
  int32_t cached_tokens;       /* prompt tokens served from the prefix cache */
  char *error;                 /* QV_FINISH_ERROR: message */
  /* FINISH only, the whole request's phases on the engine's clock (seconds): submit -> first
   * scheduled (queue), -> first token sampled (prefill), -> finish (decode). A phase never
   * reached is 0. */
  double queue_s, prefill_s, decode_s;
} qv_event;

void qv_event_free(qv_event *ev); /* accepts NULL */

typedef struct qv_engine_stats {
  int32_t n_running;
  int32_t n_waiting;
  int32_t n_kv_blocks;
  int32_t n_kv_blocks_used;       /* held by sequences (not counting evictable cached blocks) */
  int64_t prefix_queries;         /* prompt tokens looked up in the prefix cache */
  int64_t prefix_hits;            /* of which served from it */
  int64_t n_preemptions;
  int64_t n_steps;
  int64_t prompt_tokens_total;
  int64_t generation_tokens_total;
} qv_engine_stats;

/* Creates an engine over a loaded model (borrowed; must outlive the engine) and its tokenizer
 * (borrowed; may be NULL, then no text is produced and stop strings are rejected). Sizes and
 * allocates the KV cache and starts the engine thread. The model must have been loaded with
 * qv_model_opts.max_batch_tokens >= max_num_batched_tokens and max_logits >= max_num_seqs
 * (a forward beyond them fails and its requests finish with QV_FINISH_ERROR). */
int qv_engine_create(struct qv_model *model, const qv_tokenizer *tok, const qv_engine_opts *opts,
                     qv_engine **out, qv_error *err);
/* Stops the thread (aborting what is in flight), frees everything. Accepts NULL. */
void qv_engine_destroy(qv_engine *e);

/* Sets the hook called (on the engine thread) after events are posted. Call before submitting. */
void qv_engine_set_notify(qv_engine *e, void (*fn)(void *arg), void *arg);

/* Queues a request; copies everything it needs from p. On success *req_id names it.
 * QV_EINVAL / QV_ERANGE (prompt longer than max_model_len) / QV_EBUSY (waiting queue full). */
int qv_engine_submit(qv_engine *e, const qv_request_params *p, uint64_t *req_id, qv_error *err);
/* Aborts a request at whatever stage; its blocks are freed at the next step and a FINISH
 * (abort) event follows for each unfinished choice. Unknown ids are ignored. */
void qv_engine_abort(qv_engine *e, uint64_t req_id);

/* Moves up to max pending events into evs (caller frees each with qv_event_free); returns how
 * many. Never blocks. */
int qv_engine_poll(qv_engine *e, qv_event **evs, int max);

void qv_engine_get_stats(qv_engine *e, qv_engine_stats *st);
/* Limits in force (after defaults and model clamps). */
int32_t qv_engine_max_model_len(const qv_engine *e);

#endif
