/* Internal engine types shared by the engine's files (engine.c: thread, queues, events;
 * sched.c: scheduling and KV blocks; engine_req.c: requests, sampling and stops;
 * engine_qv.c: the adapter to qv_model and qv_tokenizer).
 *
 * The engine reaches the model and the detokenizer only through the two small ops tables
 * below, so tests can drive it with a fake deterministic model and bench/engine with a model
 * that does no math, and so the engine core links without the model and tokenizer code. */
#ifndef QV_ENGINE_INTERNAL_H
#define QV_ENGINE_INTERNAL_H

#include <stdint.h>

#include "backend/backend.h"
#include "engine/kv_pool.h"
#include "engine/sampler.h"
#include "engine/stop_text.h"
#include "quiver/engine.h"

#define ENGINE_MAX_EOS 8

/* The model as the engine sees it. ctx is borrowed and must outlive the engine. */
typedef struct engine_model_ops {
  void *ctx;
  int32_t vocab_size;
  int32_t max_pos;                 /* longest sequence the model supports */
  int32_t eos_ids[ENGINE_MAX_EOS]; /* [n_eos] */
  int32_t n_eos;
  int64_t kv_bytes_per_token;      /* for sizing the pool; 0: unknown */
  int64_t dev_free_bytes;          /* >0: the backend has its own memory (a GPU) with this much free; 0: host RAM */
  /* Allocates the paged KV cache (n_blocks x block_size tokens). */
  int (*kv_init)(void *ctx, int32_t n_blocks, int32_t block_size, qv_error *err);
  /* One step: logits [b->n_logits][vocab_size] into caller memory. */
  int (*forward)(void *ctx, const qv_batch *b, float *logits, qv_error *err);
} engine_model_ops;

/* Streaming detokenizer (qv_detok semantics). ctx (the tokenizer) is borrowed. */
typedef struct engine_text_ops {
  void *ctx;
  int (*detok_create)(void *ctx, int skip_special, void **out);
  int (*detok_push)(void *d, int32_t id, const char **text, size_t *len);
  int (*detok_flush)(void *d, const char **text, size_t *len);
  void (*detok_destroy)(void *d);
  /* Optional (NULL: the prompt is pushed and its text dropped): feeds the prompt as context. */
  int (*detok_prime)(void *d, const int32_t *ids, size_t n_ids);
} engine_text_ops;

enum { SEQ_WAITING = 0, SEQ_RUNNING = 1, SEQ_DONE = 2 };

typedef struct eng_req eng_req;

/* One choice of a request: a sequence of known tokens (prompt then output) whose first
 * n_computed have their K/V in the cache. */
typedef struct eng_seq {
  eng_req *req;
  int32_t choice;
  int32_t state;        /* SEQ_* */
  int32_t *tokens;      /* [cap_tokens] prompt then generated ids, owned */
  int32_t n_tokens, cap_tokens;
  int32_t n_computed;   /* tokens whose K/V are in the cache */
  int32_t *blocks;      /* [max_blocks] KV block ids covering the first n_computed(+scheduled) tokens, owned */
  int32_t n_blocks;
  int32_t n_published;  /* leading blocks already offered to the prefix cache */
  uint64_t last_hash;   /* chained hash of block n_published-1 (0 when none) */
  int32_t n_sched;      /* tokens scheduled in the current step */
  int32_t admitted;     /* admitted at least once (cached_tokens counted once) */
  sampler_rng rng;
  /* Output and stop state. */
  void *detok;          /* engine_text_ops detokenizer or NULL, owned */
  stop_text text;
  qv_finish_reason finish;
  int32_t stop_idx;     /* matched stop string or -1 */
  int32_t stop_token;   /* matched stop/EOS token or -1 */
  struct qv_matcher *matcher; /* constrained decoding state, owned, or NULL */
  const char *cst_error;      /* static message when the constraint ended the choice */
} eng_seq;

/* One submitted request with its n choices; everything borrowed at submit is copied here. */
struct eng_req {
  uint64_t id;
  uint64_t arrival;     /* submit order, for FCFS */
  qv_request_params p;  /* pointers inside point at the owned copies below */
  int32_t *prompt;      /* [n_prompt] owned */
  int32_t *bias_ids;    /* [n_logit_bias] owned */
  float *bias_vals;     /* [n_logit_bias] owned */
  char **stop;          /* [n_stop] owned strings */
  size_t max_stop_len;
  int32_t *stop_ids;    /* [n_stop_token_ids] owned */
  eng_seq *seqs;        /* [n] owned */
  int32_t n_done;
  int32_t cached_tokens;
  qv_event **finish_evs; /* [n] FINISH events held until every choice ends, owned */
  /* Monotonic nanoseconds (0: not yet): submitted, first scheduled, first token sampled. */
  uint64_t t_submit_ns, t_sched_ns, t_first_ns;
};

/* Monotonic clock in nanoseconds (request phase timing; a vDSO call, once per step). */
uint64_t engine_now_ns(void);

/* Scheduler state: the block pool and the waiting and running sets. The sets hold borrowed
 * pointers to sequences owned by their requests (eng_req.seqs); the arrays are owned. */
typedef struct sched {
  kv_pool pool;
  int32_t block_size;
  int32_t max_blocks;      /* blocks per sequence at max_model_len */
  int32_t max_model_len;
  int32_t max_num_seqs;
  int32_t max_batched;
  int32_t prefix_caching;
  eng_seq **running;       /* [max_num_seqs] ordered by (priority, arrival, choice) */
  int32_t n_running;
  eng_seq **waiting;       /* [cap_waiting] any order; the best is picked each time */
  int32_t n_waiting, cap_waiting;
  eng_seq **scheduled;     /* [max_num_seqs] this step's work */
  int32_t n_scheduled;
  int64_t n_preemptions, prefix_queries, prefix_hits;
  /* Optional (NULL: the pool is fixed): asks for n more blocks when a step runs short, before
   * preempting or leaving a sequence waiting; returns how many were added to the pool. */
  int32_t (*grow)(void *arg, int32_t n);
  void *grow_arg;
} sched;

int sched_init(sched *s, int32_t n_blocks, int32_t block_size, uint64_t salt, int32_t max_model_len,
               int32_t max_num_seqs, int32_t max_batched, int32_t prefix_caching);
void sched_deinit(sched *s);
/* Queues a sequence (state WAITING, no blocks). QV_ENOMEM on failure. */
int sched_add(sched *s, eng_seq *q);
/* Takes a sequence out of whichever set holds it and releases its blocks. */
void sched_remove(sched *s, eng_seq *q);
/* Plans one step: fills s->scheduled with the sequences to run and each one's n_sched, and
 * reserves their blocks; preempts (recompute) when blocks run short. Returns the number of
 * tokens scheduled (0 when idle). */
int32_t sched_step(sched *s);
/* After the forward pass: advances n_computed by n_sched and offers newly full blocks to the
 * prefix cache. */
void sched_commit(sched *s, eng_seq *q);

/* Creates an engine over the ops tables (copied; their ctx borrowed). text may be NULL (no
 * text). manual != 0 starts no thread: the caller drives it with engine_step (tests, bench). */
int engine_create_ops(const engine_model_ops *m, const engine_text_ops *text, const qv_engine_opts *o,
                      int manual, qv_engine **out, qv_error *err);
/* Runs one step on the caller's thread (manual engines only). Returns 1 if work was done, 0 if
 * idle, or a negative error. */
int engine_step(qv_engine *e);

#endif
