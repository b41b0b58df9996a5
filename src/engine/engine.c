/* The engine object: creation and sizing, the engine thread, and the thread-safe boundary
 * (submit, abort, poll, stats, notify). Everything that crosses threads goes through the one
 * mutex here: submissions and aborts are queued for the engine thread, events are queued for
 * the consumer, and the notify hook is called after each batch of events is posted (hooks such
 * as uv_async_send coalesce, so consumers drain with qv_engine_poll until it returns 0). The
 * per-step work itself is in engine_step.c. */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/util.h"
#include "core/log.h"
#include "engine/engine_priv.h"

void qv_engine_opts_default(qv_engine_opts *o) {
  memset(o, 0, sizeof *o);
  o->block_size = 16;
  o->n_kv_blocks = 0;
  o->kv_mem_fraction = 0.0; /* 0: 0.9 of free memory on cuda, 0.25 of available RAM on cpu */
  o->max_num_seqs = 256;
  o->max_num_batched_tokens = 2048;
  o->max_model_len = 0;
  o->enable_prefix_caching = 1;
  o->max_waiting = 1024;
  o->cache_salt = 0;
}

static void *thread_main(void *arg);

uint64_t engine_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Pool size when the caller gave none: enough for max_num_seqs full-length sequences, capped
 * by a fraction (kv_mem_fraction; default 0.9 of a GPU's free memory, 0.25 of available RAM)
 * of the memory available now, after the weights. */
static int64_t default_n_blocks(const engine_model_ops *m, const qv_engine_opts *o, int32_t max_len) {
  int64_t bs = o->block_size;
  int64_t want = (int64_t)o->max_num_seqs * ((max_len + bs - 1) / bs);
  if (m->kv_bytes_per_token > 0) {
    double frac = o->kv_mem_fraction > 0.0 ? o->kv_mem_fraction : m->dev_free_bytes > 0 ? 0.9 : 0.25;
    long pages = sysconf(_SC_AVPHYS_PAGES), psize = sysconf(_SC_PAGESIZE);
    double avail = m->dev_free_bytes > 0 ? (double)m->dev_free_bytes
                   : pages > 0 && psize > 0 ? (double)pages * (double)psize : 0.0;
    if (avail > 0) {
      double bytes = avail * frac;
      int64_t by_mem = (int64_t)(bytes / ((double)m->kv_bytes_per_token * (double)bs));
      if (by_mem < want) want = by_mem;
    }
  }
  return want;
}

int engine_create_ops(const engine_model_ops *m, const engine_text_ops *text, const qv_engine_opts *opts,
                      int manual, qv_engine **out, qv_error *err) {
  *out = NULL;
  qv_engine_opts o;
  if (opts) o = *opts;
  else qv_engine_opts_default(&o);
  if (!m || !m->forward || m->vocab_size <= 0 || m->max_pos <= 0)
    return qv_error_set(err, QV_EINVAL, "engine: the model interface is incomplete");
  if (o.block_size < 1 || o.block_size > 1024)
    return qv_error_set(err, QV_EINVAL, "block_size must be between 1 and 1024 (got %d)", o.block_size);
  if (o.max_num_seqs < 1 || o.max_num_seqs > 65536)
    return qv_error_set(err, QV_EINVAL, "max_num_seqs must be between 1 and 65536 (got %d)", o.max_num_seqs);
  if (o.max_num_batched_tokens < 1 || o.max_num_batched_tokens > (1 << 24))
    return qv_error_set(err, QV_EINVAL, "max_num_batched_tokens must be between 1 and 16777216");
  if (o.max_model_len < 0 || o.n_kv_blocks < 0 || o.max_waiting < 0 || o.kv_mem_fraction < 0 ||
      o.kv_mem_fraction > 1.0)
    return qv_error_set(err, QV_EINVAL, "engine options out of range");
  if (o.max_model_len > m->max_pos)
    return qv_error_set(err, QV_EINVAL, "max_model_len %d exceeds the model's %d positions", o.max_model_len,
                        m->max_pos);
  if (o.max_num_seqs > o.max_num_batched_tokens) {
    /* Every running sequence needs at least one token per step; with fewer tokens than
     * sequences the last ones would wait for the first to finish. */
    QV_LOGW("engine: max_num_seqs lowered from %d to max_num_batched_tokens %d", o.max_num_seqs,
            o.max_num_batched_tokens);
    o.max_num_seqs = o.max_num_batched_tokens;
  }
  int32_t max_len = o.max_model_len ? o.max_model_len : m->max_pos;
  int64_t n_blocks = o.n_kv_blocks ? o.n_kv_blocks : default_n_blocks(m, &o, max_len);
  int64_t block_bytes = m->kv_bytes_per_token * o.block_size;
  if (o.kv_budget && !o.n_kv_blocks) {
    /* Under a budget the pool may grow to max_num_seqs full sequences or the whole budget. */
    int64_t want = (int64_t)o.max_num_seqs * ((max_len + o.block_size - 1) / o.block_size);
    int64_t cap = block_bytes > 0 ? engine_budget_pool_cap(&o, block_bytes) : want;
    n_blocks = want < cap ? want : cap;
  }
  if (n_blocks > INT32_MAX / o.block_size) n_blocks = INT32_MAX / o.block_size;
  if (n_blocks * o.block_size < max_len) {
    if (o.max_model_len)
      return qv_error_set(err, QV_ERANGE, "the KV pool (%lld blocks of %d) cannot hold one sequence of max_model_len %d",
                          (long long)n_blocks, o.block_size, max_len);
    if (n_blocks < 1)
      return qv_error_set(err, QV_ENOMEM, "no memory for even one KV block");
    max_len = (int32_t)(n_blocks * o.block_size);
    QV_LOGW("engine: max_model_len lowered to %d to fit the KV pool", max_len);
  }
  o.n_kv_blocks = (int32_t)n_blocks;
  o.max_model_len = max_len;
  if (!o.max_waiting) o.max_waiting = 1024;

  qv_engine *e = calloc(1, sizeof *e);
  if (!e) return qv_error_set(err, QV_ENOMEM, "out of memory");
  e->model = *m;
  if (text) {
    e->text = *text;
    e->has_text = 1;
  }
  e->opts = o;
  e->manual = manual;
  e->cfg.vocab = m->vocab_size;
  e->cfg.max_model_len = max_len;
  e->cfg.max_num_seqs = o.max_num_seqs;
  e->cfg.max_blocks = (max_len + o.block_size - 1) / o.block_size;
  e->cfg.n_eos = m->n_eos < ENGINE_MAX_EOS ? m->n_eos : ENGINE_MAX_EOS;
  memcpy(e->cfg.eos_ids, m->eos_ids, sizeof e->cfg.eos_ids);
  e->next_id = 1;
  e->seed_state = o.has_seed ? o.seed : (uint64_t)time(NULL) ^ ((uint64_t)(uintptr_t)e << 16);
  pthread_mutex_init(&e->mu, NULL);
  pthread_cond_init(&e->cv, NULL);

  int rc = sched_init(&e->sc, o.n_kv_blocks, o.block_size, o.cache_salt, max_len, o.max_num_seqs,
                      o.max_num_batched_tokens, o.enable_prefix_caching);
  if (!rc) rc = sampler_init(&e->smp, m->vocab_size);
  size_t nt = (size_t)o.max_num_batched_tokens, ns = (size_t)o.max_num_seqs;
  if (!rc) {
    e->b_tokens = malloc(nt * sizeof(int32_t));
    e->b_pos = malloc(nt * sizeof(int32_t));
    e->b_slots = malloc(nt * sizeof(int32_t));
    e->b_qstart = malloc((ns + 1) * sizeof(int32_t));
    e->b_ctx = malloc(ns * sizeof(int32_t));
    e->b_tables = calloc(ns * (size_t)e->cfg.max_blocks, sizeof(int32_t));
    e->b_logits_idx = malloc(ns * sizeof(int32_t));
    e->logits = malloc(ns * (size_t)m->vocab_size * sizeof(float));
    e->finished = malloc(ns * sizeof *e->finished);
    if (!e->b_tokens || !e->b_pos || !e->b_slots || !e->b_qstart || !e->b_ctx || !e->b_tables ||
        !e->b_logits_idx || !e->logits || !e->finished)
      rc = QV_ENOMEM;
  }
  if (rc) {
    qv_engine_destroy(e);
    return qv_error_set(err, rc, "engine: out of memory for a pool of %lld blocks", (long long)n_blocks);
  }
  if (m->kv_init && (rc = m->kv_init(m->ctx, o.n_kv_blocks, o.block_size, err))) {
    qv_error_prefix(err, "engine: allocating %d KV blocks", o.n_kv_blocks);
    qv_engine_destroy(e);
    return rc;
  }
  if (o.kv_budget && (rc = engine_budget_join(e, block_bytes, err))) {
    qv_engine_destroy(e);
    return rc;
  }
  e->stats.n_kv_blocks = kv_pool_n_active(&e->sc.pool);
  if (!manual) {
    if (pthread_create(&e->thread, NULL, thread_main, e)) {
      qv_engine_destroy(e);
      return qv_error_set(err, QV_ENOMEM, "engine: cannot start the engine thread");
    }
    e->thread_started = 1;
  }
  QV_LOGI("engine: %d KV blocks of %d tokens, max_model_len %d, max_num_seqs %d, %d tokens per step, prefix caching %s",
          o.n_kv_blocks, o.block_size, max_len, o.max_num_seqs, o.max_num_batched_tokens,
          o.enable_prefix_caching ? "on" : "off");
  *out = e;
  return 0;
}

void qv_engine_destroy(qv_engine *e) {
  if (!e) return;
  if (e->thread_started) {
    pthread_mutex_lock(&e->mu);
    e->stopping = 1;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    pthread_join(e->thread, NULL);
  }
  engine_budget_leave(e);
  const engine_text_ops *t = e->has_text ? &e->text : NULL;
  for (int32_t i = 0; i < e->n_reqs; i++) req_free(e->reqs[i], t);
  for (int32_t i = 0; i < e->n_incoming; i++) req_free(e->incoming[i], t);
  for (int32_t i = 0; i < e->n_step_evs; i++) qv_event_free(e->step_evs[i]);
  for (int32_t i = 0; i < e->events.n; i++) qv_event_free(e->events.items[(e->events.head + i) % e->events.cap]);
  free(e->events.items);
  free(e->reqs);
  free(e->incoming);
  free(e->aborts);
  free(e->step_evs);
  free(e->finished);
  free(e->banned);
  free(e->cmask);
  free(e->b_tokens);
  free(e->b_pos);
  free(e->b_slots);
  free(e->b_qstart);
  free(e->b_ctx);
  free(e->b_tables);
  free(e->b_logits_idx);
  free(e->logits);
  sched_deinit(&e->sc);
  sampler_deinit(&e->smp);
  pthread_mutex_destroy(&e->mu);
  pthread_cond_destroy(&e->cv);
  free(e);
}

void qv_engine_set_notify(qv_engine *e, void (*fn)(void *arg), void *arg) {
  pthread_mutex_lock(&e->mu);
  e->notify = fn;
  e->notify_arg = arg;
  pthread_mutex_unlock(&e->mu);
}

int qv_engine_submit(qv_engine *e, const qv_request_params *p, uint64_t *req_id, qv_error *err) {
  if (!e || !p) return qv_error_set(err, QV_EINVAL, "engine submit: missing argument");
  pthread_mutex_lock(&e->mu);
  uint64_t seed = qv_splitmix64(&e->seed_state);
  int busy = e->n_incoming + e->stats.n_waiting >= e->opts.max_waiting;
  pthread_mutex_unlock(&e->mu);
  if (busy) return qv_error_set(err, QV_EBUSY, "the engine's waiting queue is full (%d)", e->opts.max_waiting);
  eng_req *r;
  int rc = req_create(&e->cfg, e->has_text ? &e->text : NULL, p, seed, &r, err);
  if (rc) return rc;
  pthread_mutex_lock(&e->mu);
  if (e->n_incoming == e->cap_incoming) {
    int32_t cap = e->cap_incoming ? e->cap_incoming * 2 : 16;
    eng_req **a = realloc(e->incoming, (size_t)cap * sizeof *a);
    if (!a) {
      pthread_mutex_unlock(&e->mu);
      req_free(r, e->has_text ? &e->text : NULL);
      return qv_error_set(err, QV_ENOMEM, "out of memory");
    }
    e->incoming = a;
    e->cap_incoming = cap;
  }
  r->id = e->next_id++;
  r->arrival = r->id;
  r->t_submit_ns = engine_now_ns();
  e->incoming[e->n_incoming++] = r;
  if (req_id) *req_id = r->id;
  pthread_cond_signal(&e->cv);
  pthread_mutex_unlock(&e->mu);
  return 0;
}

void qv_engine_abort(qv_engine *e, uint64_t req_id) {
  if (!e) return;
  pthread_mutex_lock(&e->mu);
  if (e->n_aborts == e->cap_aborts) {
    int32_t cap = e->cap_aborts ? e->cap_aborts * 2 : 16;
    uint64_t *a = realloc(e->aborts, (size_t)cap * sizeof *a);
    if (!a) { /* cannot queue it: the request runs to its end, which is safe */
      pthread_mutex_unlock(&e->mu);
      QV_LOGE("engine: out of memory queueing an abort");
      return;
    }
    e->aborts = a;
    e->cap_aborts = cap;
  }
  e->aborts[e->n_aborts++] = req_id;
  pthread_cond_signal(&e->cv);
  pthread_mutex_unlock(&e->mu);
}

int qv_engine_poll(qv_engine *e, qv_event **evs, int max) {
  if (!e || !evs || max <= 0) return 0;
  pthread_mutex_lock(&e->mu);
  int n = 0;
  while (n < max && e->events.n > 0) {
    evs[n++] = e->events.items[e->events.head];
    e->events.head = (e->events.head + 1) % e->events.cap;
    e->events.n--;
  }
  pthread_mutex_unlock(&e->mu);
  return n;
}

void qv_engine_get_stats(qv_engine *e, qv_engine_stats *st) {
  pthread_mutex_lock(&e->mu);
  *st = e->stats;
  pthread_mutex_unlock(&e->mu);
}

int32_t qv_engine_max_model_len(const qv_engine *e) { return e->cfg.max_model_len; }

static void *thread_main(void *arg) {
  qv_engine *e = arg;
  int idle = 1;
  for (;;) {
    pthread_mutex_lock(&e->mu);
    while (!e->stopping && idle && e->n_incoming == 0 && e->n_aborts == 0 && !e->kv_poke)
      pthread_cond_wait(&e->cv, &e->mu);
    int stop = e->stopping;
    pthread_mutex_unlock(&e->mu);
    if (stop) break;
    int rc = engine_run_step(e);
    idle = rc <= 0 && e->sc.n_running == 0 && e->sc.n_waiting == 0;
  }
  return NULL;
}

int engine_step(qv_engine *e) {
  if (!e->manual) return QV_ESTATE;
  return engine_run_step(e);
}
