/* The fleet's table and loader thread (see fleet.h). Each model carries a target (load, sleep
 * 1 or 2, unload) that the loader thread works towards, one model at a time, so requests for
 * the same model coalesce and an unload queued behind a load simply follows it.
 *
 * In-flight requests hold the model through an atomic counter. A request increments it and
 * then checks the state under the mutex; the loader sets the state under the mutex and then
 * reads the counter, so either the request sees the model leaving or the loader sees the
 * request (and puts the model back to READY and retries later). */
#include "fleet/fleet.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/log.h"

enum { TGT_NONE = 0, TGT_LOAD, TGT_SLEEP1, TGT_SLEEP2, TGT_UNLOAD };

/* How long a load waits for room (busy models draining, engines giving KV back). */
#define FLEET_LOAD_WAIT_MS 120000
/* A model used (or loaded) this recently is not evicted: the requests that waited for its load
 * get to enter it before another load can take it away again. */
#define FLEET_EVICT_GRACE_MS 500

typedef struct fleet_model {
  fleet_model_cfg cfg;
  fleet_model_info info;
  int target;
  atomic_int users;
  uint64_t last_used_ns;
} fleet_model;

struct fleet {
  fleet_ops ops;
  qv_budget *budget;
  fleet_model m[FLEET_MAX_MODELS];
  _Atomic int32_t n;          /* models in m; grows (fleet_add) after the entry is written */
  pthread_mutex_t mu;
  pthread_cond_t work_cv;    /* loader: a target was set or stop */
  pthread_cond_t change_cv;  /* waiters: a state changed */
  pthread_t thread;
  int thread_started;
  atomic_int stopping;        /* read by the loader between waits */
};

static const char *state_names[] = {"registered", "loading", "ready", "sleeping", "unloaded", "failed"};

const char *fleet_state_name(fleet_state s) {
  return (unsigned)s < sizeof state_names / sizeof *state_names ? state_names[s] : "unknown";
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double secs_since(uint64_t t0) { return (double)(now_ns() - t0) / 1e9; }

/* Under mu: a new state; waiters are woken. The changed op is called by the caller unlocked. */
static void set_state(fleet *f, fleet_model *m, fleet_state s) {
  m->info.state = s;
  pthread_cond_broadcast(&f->change_cv);
}

static void notify(fleet *f, int32_t idx) {
  if (f->ops.changed) f->ops.changed(f->ops.ctx, idx);
}

/* Takes a READY model out of service for a sleep/unload: 1 when nothing is in flight (the state
 * is then `to`), 0 when a request holds it (the state stays READY). */
static int take_out(fleet *f, int32_t idx, fleet_state to, int32_t level) {
  fleet_model *m = &f->m[idx];
  pthread_mutex_lock(&f->mu);
  fleet_state was = m->info.state;
  m->info.level = level;
  set_state(f, m, to);
  pthread_mutex_unlock(&f->mu);
  if (atomic_load(&m->users) == 0) return 1;
  pthread_mutex_lock(&f->mu);
  m->info.level = 0;
  set_state(f, m, was);
  pthread_mutex_unlock(&f->mu);
  return 0;
}

/* Only the loader thread writes depth; readers copy it under mu. */
static void set_depth(fleet *f, fleet_model *m, int32_t depth) {
  pthread_mutex_lock(&f->mu);
  m->info.depth = depth;
  pthread_mutex_unlock(&f->mu);
}

/* Loader thread: brings a model down to depth 0 or 1. Returns the seconds it took. */
static double drop_to(fleet *f, int32_t idx, int32_t depth) {
  fleet_model *m = &f->m[idx];
  uint64_t t0 = now_ns();
  if (m->info.depth == 2 && depth < 2) {
    f->ops.stop_engine(f->ops.ctx, idx);
    set_depth(f, m, 1);
  }
  if (m->info.depth == 1 && depth < 1) {
    f->ops.drop_weights(f->ops.ctx, idx);
    if (f->budget) qv_budget_unreserve(f->budget, m->info.weight_bytes);
    set_depth(f, m, 0);
  }
  return secs_since(t0);
}

/* Puts the least recently used idle, unpinned model other than skip to sleep at level 2.
 * Returns 1 when one was evicted. */
static int evict_one(fleet *f, int32_t skip) {
  for (;;) {
    int32_t best = -1;
    uint64_t recent = now_ns() - FLEET_EVICT_GRACE_MS * 1000000ull;
    pthread_mutex_lock(&f->mu);
    for (int32_t i = 0; i < f->n; i++) {
      fleet_model *m = &f->m[i];
      if (i == skip || m->cfg.pin || m->info.depth == 0 || atomic_load(&m->users) > 0) continue;
      if (m->last_used_ns > recent) continue;
      if (m->info.state != FLEET_READY && m->info.state != FLEET_SLEEPING) continue;
      if (best < 0 || m->last_used_ns < f->m[best].last_used_ns) best = i;
    }
    pthread_mutex_unlock(&f->mu);
    if (best < 0) return 0;
    fleet_model *m = &f->m[best];
    if (m->info.state == FLEET_READY && !take_out(f, best, FLEET_SLEEPING, 2)) continue;
    double dt = drop_to(f, best, 0);
    pthread_mutex_lock(&f->mu);
    m->info.level = 2;
    m->info.n_evictions++;
    m->info.n_sleeps++;
    m->info.last_sleep_s = dt;
    m->info.swap_s_total += dt;
    set_state(f, m, FLEET_SLEEPING);
    pthread_mutex_unlock(&f->mu);
    QV_LOGI("fleet: evicted '%s' (sleep level 2) to make room", m->cfg.name);
    notify(f, best);
    return 1;
  }
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* 1 when room could still appear for idx: a model other than idx that is loaded and not pinned
 * (idle now or once its requests drain), or an engine holding KV above its minimum. */
static int room_possible(fleet *f, int32_t idx) {
  int yes = 0;
  pthread_mutex_lock(&f->mu);
  for (int32_t i = 0; i < f->n && !yes; i++)
    yes = i != idx && !f->m[i].cfg.pin && f->m[i].info.depth > 0;
  pthread_mutex_unlock(&f->mu);
  if (!yes && f->budget) yes = qv_budget_reclaimable(f->budget) > 0;
  return yes;
}

/* Reserves the weights of idx: evicts least recently used idle models and waits for busy ones
 * to drain and for engines to give back KV they do not use, until it fits, nothing could ever
 * make room, or FLEET_LOAD_WAIT_MS passed. */
static int reserve_weights(fleet *f, int32_t idx, int64_t bytes, qv_error *err) {
  if (!f->budget) return 0;
  uint64_t want_id = (uint64_t)idx + 1, deadline = now_ns() + FLEET_LOAD_WAIT_MS * 1000000ull;
  while (!f->stopping && now_ns() < deadline) {
    if (qv_budget_reserve(f->budget, bytes, want_id) == 0) return 0;
    if (evict_one(f, idx)) continue;
    if (!room_possible(f, idx)) break;
    sleep_ms(10);
  }
  qv_budget_cancel_demand(f->budget, want_id);
  qv_budget_stats st;
  qv_budget_get_stats(f->budget, &st);
  return qv_error_set(err, QV_ENOMEM,
                      "memory budget: %lld bytes of weights do not fit (budget %lld, weights of "
                      "other models %lld, KV %lld; no idle unpinned model left to evict)",
                      (long long)bytes, (long long)st.total_bytes, (long long)st.reserved_bytes,
                      (long long)st.kv_bytes);
}

/* The engine's KV minimum did not fit and nothing was idle: 1 after a short wait when room
 * could still appear before the deadline (then the caller retries), 0 when it cannot. */
static int wait_room(fleet *f, int32_t idx, uint64_t deadline) {
  if (f->stopping || now_ns() >= deadline || !room_possible(f, idx)) return 0;
  sleep_ms(10);
  return 1;
}

static void do_load(fleet *f, int32_t idx) {
  fleet_model *m = &f->m[idx];
  pthread_mutex_lock(&f->mu);
  int waking = m->info.state == FLEET_SLEEPING;
  set_state(f, m, FLEET_LOADING);
  pthread_mutex_unlock(&f->mu);
  notify(f, idx);
  uint64_t t0 = now_ns();
  qv_error err = {0};
  int rc = 0;
  if (m->info.depth == 0) {
    int64_t bytes = f->ops.weight_bytes(f->ops.ctx, idx);
    rc = reserve_weights(f, idx, bytes, &err);
    if (!rc) {
      rc = f->ops.load_weights(f->ops.ctx, idx, &err);
      if (rc && f->budget) qv_budget_unreserve(f->budget, bytes);
    }
    /* The loaded model's real footprint replaces the estimate (more room made if needed). */
    int64_t real = !rc && f->ops.loaded_bytes ? f->ops.loaded_bytes(f->ops.ctx, idx) : bytes;
    if (!rc && real > bytes) {
      if (!(rc = reserve_weights(f, idx, real - bytes, &err))) bytes = real;
      else {
        f->ops.drop_weights(f->ops.ctx, idx);
        if (f->budget) qv_budget_unreserve(f->budget, bytes);
      }
    } else if (!rc && real < bytes) {
      if (f->budget) qv_budget_unreserve(f->budget, bytes - real);
      bytes = real;
    }
    if (!rc) {
      pthread_mutex_lock(&f->mu);
      m->info.weight_bytes = bytes;
      m->info.depth = 1;
      pthread_mutex_unlock(&f->mu);
    }
  }
  uint64_t deadline = now_ns() + FLEET_LOAD_WAIT_MS * 1000000ull;
  while (!rc && m->info.depth == 1) {
    rc = f->ops.start_engine(f->ops.ctx, idx, &err);
    if (!rc) set_depth(f, m, 2);
    /* The engine's reserved KV minimum did not fit (the budget recorded the shortfall as
     * demand, so engines above their minimum give blocks back): make room and try again. */
    else if (rc == QV_ENOMEM && f->budget && (evict_one(f, idx) || wait_room(f, idx, deadline))) rc = 0;
  }
  if (f->budget) qv_budget_cancel_demand(f->budget, BUDGET_JOIN_WANT);
  double dt = secs_since(t0);
  if (rc) drop_to(f, idx, 0);
  pthread_mutex_lock(&f->mu);
  if (rc) {
    snprintf(m->info.error, sizeof m->info.error, "%s", err.msg[0] ? err.msg : qv_strerror(rc));
    set_state(f, m, FLEET_FAILED);
  } else {
    m->info.error[0] = 0;
    m->info.level = 0;
    m->info.last_load_s = dt;
    m->info.swap_s_total += dt;
    if (waking) m->info.n_wakes++;
    else m->info.n_loads++;
    m->last_used_ns = now_ns();
    set_state(f, m, FLEET_READY);
  }
  pthread_mutex_unlock(&f->mu);
  if (rc) QV_LOGE("fleet: loading '%s' failed: %s", m->cfg.name, m->info.error);
  else QV_LOGI("fleet: '%s' %s in %.3f s", m->cfg.name, waking ? "woke" : "loaded", dt);
  notify(f, idx);
}

/* Sleep (level 1, 2) or unload. Returns 0 when done, 1 when the model is busy (retry later). */
static int do_sleep(fleet *f, int32_t idx, int target) {
  fleet_model *m = &f->m[idx];
  fleet_state to = target == TGT_UNLOAD ? FLEET_UNLOADED : FLEET_SLEEPING;
  int32_t depth = target == TGT_SLEEP1 ? 1 : 0;
  if (m->info.depth == 0 && to == FLEET_SLEEPING) return 0; /* nothing loaded: nothing to do */
  if (m->info.state == FLEET_READY && !take_out(f, idx, to, target == TGT_SLEEP1 ? 1 : 2)) return 1;
  double dt = drop_to(f, idx, depth);
  pthread_mutex_lock(&f->mu);
  if (m->info.state == FLEET_SLEEPING || m->info.state == FLEET_READY || to == FLEET_UNLOADED) {
    m->info.level = target == TGT_SLEEP1 ? 1 : 2;
    m->info.n_sleeps++;
    m->info.last_sleep_s = dt;
    m->info.swap_s_total += dt;
    set_state(f, m, to);
  }
  pthread_mutex_unlock(&f->mu);
  QV_LOGI("fleet: '%s' %s in %.3f s", m->cfg.name, to == FLEET_UNLOADED ? "unloaded" : "asleep", dt);
  notify(f, idx);
  return 0;
}

/* Under mu: ready models idle past their keep_alive get a level-1 sleep target. */
static void expire_idle(fleet *f) {
  uint64_t t = now_ns();
  for (int32_t i = 0; i < f->n; i++) {
    fleet_model *m = &f->m[i];
    if (m->cfg.keep_alive_s > 0 && m->info.state == FLEET_READY && m->target == TGT_NONE &&
        atomic_load(&m->users) == 0 && (double)(t - m->last_used_ns) / 1e9 > m->cfg.keep_alive_s)
      m->target = TGT_SLEEP1;
  }
}

static void *loader_main(void *arg) {
  fleet *f = arg;
  pthread_mutex_lock(&f->mu);
  while (!f->stopping) {
    expire_idle(f);
    int32_t idx = -1;
    for (int32_t i = 0; i < f->n && idx < 0; i++)
      if (f->m[i].target != TGT_NONE) idx = i;
    if (idx < 0) {
      struct timespec ts;
      clock_gettime(CLOCK_REALTIME, &ts);
      ts.tv_nsec += 200000000L;
      if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
      pthread_cond_timedwait(&f->work_cv, &f->mu, &ts);
      continue;
    }
    fleet_model *m = &f->m[idx];
    int target = m->target;
    m->target = TGT_NONE;
    pthread_mutex_unlock(&f->mu);
    int retry = 0;
    if (target == TGT_LOAD) {
      if (m->info.state != FLEET_READY) do_load(f, idx);
    } else {
      retry = do_sleep(f, idx, target);
    }
    pthread_mutex_lock(&f->mu);
    if (retry && m->target == TGT_NONE) {
      m->target = target; /* busy: try again once its requests drained */
      pthread_mutex_unlock(&f->mu);
      sleep_ms(20);
      pthread_mutex_lock(&f->mu);
    }
  }
  pthread_mutex_unlock(&f->mu);
  return NULL;
}

int fleet_create(const fleet_ops *ops, qv_budget *budget, const fleet_model_cfg *models,
                 int32_t n_models, fleet **out, qv_error *err) {
  *out = NULL;
  if (!ops || !ops->weight_bytes || !ops->load_weights || !ops->start_engine || !ops->stop_engine ||
      !ops->drop_weights)
    return qv_error_set(err, QV_EINVAL, "fleet: incomplete ops");
  if (n_models < 0 || n_models > FLEET_MAX_MODELS)
    return qv_error_set(err, QV_ELIMIT, "fleet: at most %d models", FLEET_MAX_MODELS);
  fleet *f = calloc(1, sizeof *f);
  if (!f) return qv_error_set(err, QV_ENOMEM, "out of memory");
  f->ops = *ops;
  f->budget = budget;
  f->n = n_models;
  for (int32_t i = 0; i < n_models; i++) {
    f->m[i].cfg = models[i];
    f->m[i].info.pin = models[i].pin;
    f->m[i].info.on_demand = models[i].on_demand;
    atomic_init(&f->m[i].users, 0);
  }
  pthread_mutex_init(&f->mu, NULL);
  pthread_cond_init(&f->work_cv, NULL);
  pthread_cond_init(&f->change_cv, NULL);
  if (pthread_create(&f->thread, NULL, loader_main, f)) {
    fleet_destroy(f);
    return qv_error_set(err, QV_ENOMEM, "fleet: cannot start the loader thread");
  }
  f->thread_started = 1;
  *out = f;
  return 0;
}

void fleet_destroy(fleet *f) {
  if (!f) return;
  if (f->thread_started) {
    pthread_mutex_lock(&f->mu);
    f->stopping = 1;
    pthread_cond_broadcast(&f->work_cv);
    pthread_mutex_unlock(&f->mu);
    pthread_join(f->thread, NULL);
  }
  for (int32_t i = 0; i < f->n; i++) drop_to(f, i, 0);
  pthread_mutex_destroy(&f->mu);
  pthread_cond_destroy(&f->work_cv);
  pthread_cond_destroy(&f->change_cv);
  free(f);
}

/* Under mu: slot idx (new, or idle and unloaded) takes cfg and, unless on demand, a load. */
static void fill_slot(fleet *f, int32_t idx, const fleet_model_cfg *cfg) {
  fleet_model *m = &f->m[idx];
  memset(&m->info, 0, sizeof m->info);
  m->cfg = *cfg;
  m->info.pin = cfg->pin;
  m->info.on_demand = cfg->on_demand;
  m->target = cfg->on_demand ? TGT_NONE : TGT_LOAD;
  m->last_used_ns = 0;
  pthread_cond_signal(&f->work_cv);
}

int32_t fleet_add(fleet *f, const fleet_model_cfg *cfg, qv_error *err) {
  pthread_mutex_lock(&f->mu);
  int32_t idx = f->n;
  if (idx >= FLEET_MAX_MODELS) {
    pthread_mutex_unlock(&f->mu);
    return qv_error_set(err, QV_ELIMIT, "fleet: full (at most %d models)", FLEET_MAX_MODELS);
  }
  atomic_init(&f->m[idx].users, 0);
  fill_slot(f, idx, cfg);
  f->n = idx + 1; /* atomic: readers without the mutex see the written entry */
  pthread_mutex_unlock(&f->mu);
  return idx;
}

/* Under mu: nothing loaded, queued or in flight. */
static int idle_unloaded(fleet *f, int32_t idx) {
  const fleet_model *m = &f->m[idx];
  fleet_state st = m->info.state;
  return (st == FLEET_UNLOADED || st == FLEET_FAILED || st == FLEET_REGISTERED) && m->info.depth == 0 &&
         m->target == TGT_NONE && atomic_load(&m->users) == 0;
}

int fleet_idle_unloaded(fleet *f, int32_t idx) {
  if (idx < 0 || idx >= f->n) return 0;
  pthread_mutex_lock(&f->mu);
  int yes = idle_unloaded(f, idx);
  pthread_mutex_unlock(&f->mu);
  return yes;
}

int fleet_readd(fleet *f, int32_t idx, const fleet_model_cfg *cfg, qv_error *err) {
  if (idx < 0 || idx >= f->n) return qv_error_set(err, QV_EINVAL, "fleet: no model %d", idx);
  pthread_mutex_lock(&f->mu);
  int ok = idle_unloaded(f, idx);
  if (ok) fill_slot(f, idx, cfg);
  pthread_mutex_unlock(&f->mu);
  return ok ? 0 : qv_error_set(err, QV_EBUSY, "fleet: model %d is not idle and unloaded", idx);
}

static void set_target(fleet *f, int32_t idx, int target) {
  if (idx < 0 || idx >= f->n) return;
  pthread_mutex_lock(&f->mu);
  f->m[idx].target = target;
  pthread_cond_signal(&f->work_cv);
  pthread_mutex_unlock(&f->mu);
}

void fleet_start(fleet *f) {
  for (int32_t i = 0; i < f->n; i++)
    if (!f->m[i].cfg.on_demand) set_target(f, i, TGT_LOAD);
}

void fleet_load(fleet *f, int32_t idx) {
  if (idx < 0 || idx >= f->n) return;
  pthread_mutex_lock(&f->mu);
  fleet_model *m = &f->m[idx];
  if (m->info.state != FLEET_READY && m->info.state != FLEET_LOADING) {
    m->target = TGT_LOAD;
    pthread_cond_signal(&f->work_cv);
  }
  pthread_mutex_unlock(&f->mu);
}

void fleet_sleep(fleet *f, int32_t idx, int32_t level) { set_target(f, idx, level >= 2 ? TGT_SLEEP2 : TGT_SLEEP1); }
void fleet_unload(fleet *f, int32_t idx) { set_target(f, idx, TGT_UNLOAD); }

void fleet_set_pin(fleet *f, int32_t idx, int pin) {
  if (idx < 0 || idx >= f->n) return;
  pthread_mutex_lock(&f->mu);
  f->m[idx].cfg.pin = f->m[idx].info.pin = pin != 0;
  pthread_mutex_unlock(&f->mu);
}

int fleet_enter(fleet *f, int32_t idx) {
  if (idx < 0 || idx >= f->n) return 0;
  fleet_model *m = &f->m[idx];
  atomic_fetch_add(&m->users, 1);
  pthread_mutex_lock(&f->mu);
  int ok = m->info.state == FLEET_READY;
  if (ok) m->last_used_ns = now_ns();
  pthread_mutex_unlock(&f->mu);
  if (!ok) atomic_fetch_sub(&m->users, 1);
  return ok;
}

void fleet_leave(fleet *f, int32_t idx) {
  if (idx < 0 || idx >= f->n) return;
  fleet_model *m = &f->m[idx];
  pthread_mutex_lock(&f->mu);
  m->last_used_ns = now_ns();
  pthread_mutex_unlock(&f->mu);
  atomic_fetch_sub(&m->users, 1);
}

int fleet_wait(fleet *f, int32_t idx, int64_t timeout_ms, qv_error *err) {
  if (idx < 0 || idx >= f->n) return qv_error_set(err, QV_EINVAL, "fleet: no model %d", idx);
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += (time_t)(timeout_ms / 1000);
  ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
  if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
  fleet_model *m = &f->m[idx];
  int rc = 0;
  pthread_mutex_lock(&f->mu);
  for (;;) {
    fleet_state s = m->info.state;
    if (s == FLEET_READY && m->target != TGT_LOAD) break;
    if ((s == FLEET_FAILED || s == FLEET_UNLOADED) && m->target == TGT_NONE) {
      rc = qv_error_set(err, QV_ESTATE, "model '%s' is %s%s%s", m->cfg.name, fleet_state_name(s),
                        m->info.error[0] ? ": " : "", m->info.error);
      break;
    }
    if (pthread_cond_timedwait(&f->change_cv, &f->mu, &ts)) {
      rc = qv_error_set(err, QV_EBUSY, "model '%s' did not become ready within %lld ms (%s)", m->cfg.name,
                        (long long)timeout_ms, fleet_state_name(m->info.state));
      break;
    }
  }
  pthread_mutex_unlock(&f->mu);
  return rc;
}

int fleet_startup_ready(fleet *f) {
  int ok = 1;
  pthread_mutex_lock(&f->mu);
  for (int32_t i = 0; i < f->n; i++)
    if (!f->m[i].cfg.on_demand) ok &= f->m[i].info.state == FLEET_READY;
  pthread_mutex_unlock(&f->mu);
  return ok;
}

void fleet_get_info(fleet *f, int32_t idx, fleet_model_info *out) {
  memset(out, 0, sizeof *out);
  if (idx < 0 || idx >= f->n) return;
  pthread_mutex_lock(&f->mu);
  *out = f->m[idx].info;
  out->pending = f->m[idx].target != TGT_NONE;
  pthread_mutex_unlock(&f->mu);
}

int32_t fleet_n_models(const fleet *f) { return f->n; }

int32_t fleet_find(const fleet *f, const char *name) {
  for (int32_t i = 0; i < f->n; i++)
    if (!strcmp(f->m[i].cfg.name, name)) return i;
  return -1;
}
