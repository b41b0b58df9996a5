/* The fleet: every served model's lifecycle in one place, between the server and the engines.
 *
 *   registered -> loading -> ready <-> sleeping -> unloaded;   failed (with the error)
 *
 * A model is loaded in two depths: its weights (with tokenizer and template), then its engine
 * (KV pool and thread). Sleep level 1 stops the engine (its KV blocks return to the budget and
 * its prefix cache is dropped, so no stale hash can ever match) and keeps the weights; level 2
 * also drops the weights, and waking reloads them from the file (through the page cache).
 * Unload is level 2 for good: the model stays registered and can be loaded again.
 *
 * All loading, sleeping and waking runs on the fleet's one loader thread, never on the
 * caller's (an event loop stays responsive, other models keep serving). When the memory budget
 * cannot take a model's weights, the least recently used model that is not pinned and has no
 * request in flight (nor used in the last 500 ms, so the requests that waited for its load get
 * to run) is put to sleep at level 2, then the next, until it fits; while only busy
 * models could make room the load waits for them to drain (up to 120 s); a model that cannot
 * fit whatever happens fails at once with the reason. Models idle longer than their keep_alive sleep on
 * their own. Nothing in flight is ever dropped: a busy model is never evicted, and a sleep or
 * unload asked for a busy model waits (on the loader thread) until its requests drained.
 *
 * The work itself (loading a model, starting an engine) goes through fleet_ops, which the
 * server implements over the real loader and engine (server/models.c) and tests implement with
 * fakes. Thread-safe: one mutex guards the table; ops are called without it. */
#ifndef QV_FLEET_FLEET_H
#define QV_FLEET_FLEET_H

#include <stdint.h>

#include "fleet/budget.h"
#include "quiver/error.h"

#define FLEET_MAX_MODELS 64

typedef enum fleet_state {
  FLEET_REGISTERED = 0, /* known, never loaded */
  FLEET_LOADING,        /* the loader thread is loading or waking it */
  FLEET_READY,
  FLEET_SLEEPING,       /* level 1 or 2 (fleet_model_info.level) */
  FLEET_UNLOADED,
  FLEET_FAILED,         /* the last load failed (fleet_model_info.error) */
} fleet_state;

const char *fleet_state_name(fleet_state s); /* "registered", "loading", ... */

typedef struct fleet_ops {
  void *ctx;
  /* Bytes the model's weights will take (the budget is reserved before loading). */
  int64_t (*weight_bytes)(void *ctx, int32_t idx);
  /* Optional: after load_weights, what the loaded model really takes besides its KV (weights
   * plus activation scratch); the fleet reserves the difference to weight_bytes. */
  int64_t (*loaded_bytes)(void *ctx, int32_t idx);
  /* Loader thread, fleet unlocked. Weights, tokenizer, template (depth 0 -> 1). */
  int (*load_weights)(void *ctx, int32_t idx, qv_error *err);
  /* Engine over the loaded weights, joined to the budget (depth 1 -> 2). */
  int (*start_engine)(void *ctx, int32_t idx, qv_error *err);
  void (*stop_engine)(void *ctx, int32_t idx);  /* depth 2 -> 1 */
  void (*drop_weights)(void *ctx, int32_t idx); /* depth 1 -> 0 */
  /* Optional: called on the loader thread after a model's state changed (e.g. uv_async_send). */
  void (*changed)(void *ctx, int32_t idx);
} fleet_ops;

typedef struct fleet_model_cfg {
  const char *name;      /* borrowed for the fleet's life */
  int on_demand;         /* 0: loaded at start; 1: on the first request */
  int pin;               /* never evicted or put to sleep for room */
  double keep_alive_s;   /* > 0: idle this long -> sleep (level 1); 0: never */
} fleet_model_cfg;

typedef struct fleet_model_info {
  fleet_state state;
  int32_t level;         /* sleeping: 1 or 2 */
  int32_t depth;         /* 0 nothing, 1 weights, 2 weights and engine */
  int pin;
  int on_demand;
  int64_t weight_bytes;  /* reserved in the budget while the weights are loaded */
  double last_load_s;    /* duration of the last load or wake (seconds) */
  double last_sleep_s;
  int64_t n_loads, n_wakes, n_sleeps, n_evictions;
  double swap_s_total;   /* all loads, wakes and sleeps */
  char error[512];       /* FAILED: why */
  int pending;           /* a load, sleep or unload is queued for the loader thread */
} fleet_model_info;

typedef struct fleet fleet;

/* Starts the loader thread. ops copied, budget borrowed (may be NULL: no limit), models
 * [n_models] copied (names borrowed). Loads nothing yet: see fleet_start. */
int fleet_create(const fleet_ops *ops, qv_budget *budget, const fleet_model_cfg *models,
                 int32_t n_models, fleet **out, qv_error *err);
/* Stops the loader thread, then stops and drops every loaded model. Accepts NULL. */
void fleet_destroy(fleet *f);

/* Adds a model at run time (the admin API): its index (the next one; indices never move), or
 * QV_ELIMIT once FLEET_MAX_MODELS are registered. cfg is copied (name borrowed for the fleet's
 * life); a model that is not on_demand is queued for loading at once. The caller must have
 * made everything ops reads for this index ready before calling. */
int32_t fleet_add(fleet *f, const fleet_model_cfg *cfg, qv_error *err);
/* 1 when idx has nothing loaded, queued or in flight (unloaded, failed or never loaded). */
int fleet_idle_unloaded(fleet *f, int32_t idx);
/* Slot idx, idle and unloaded, serves another model (a removed model's name added again):
 * state and counters start afresh; QV_EBUSY when it is not idle and unloaded. */
int fleet_readd(fleet *f, int32_t idx, const fleet_model_cfg *cfg, qv_error *err);
/* Queues the loads of the startup models. */
void fleet_start(fleet *f);
/* Queues a load (or wake) of idx; a model already ready or loading is left as it is. */
void fleet_load(fleet *f, int32_t idx);
/* Queues a sleep (level 1 or 2) or an unload; it happens once the model is idle. */
void fleet_sleep(fleet *f, int32_t idx, int32_t level);
void fleet_unload(fleet *f, int32_t idx);
void fleet_set_pin(fleet *f, int32_t idx, int pin);
/* A request starts using idx: 1 when the model is READY (the model then cannot be put to sleep,
 * evicted or unloaded until the matching fleet_leave), 0 when it is not (nothing to leave).
 * Also marks idx as used now (least recently used order, keep_alive). Any thread. */
int fleet_enter(fleet *f, int32_t idx);
void fleet_leave(fleet *f, int32_t idx);
/* Blocks until idx is READY (0) or FAILED/UNLOADED (QV_ESTATE, message in err) or timeout_ms
 * passes (QV_EBUSY). For tests and start-up; never call it on an event loop. */
int fleet_wait(fleet *f, int32_t idx, int64_t timeout_ms, qv_error *err);
/* 1 when every startup model is READY. */
int fleet_startup_ready(fleet *f);

void fleet_get_info(fleet *f, int32_t idx, fleet_model_info *out);
int32_t fleet_n_models(const fleet *f);
/* Index of the model with this name, or -1 (the router's lookup by name). */
int32_t fleet_find(const fleet *f, const char *name);

#endif
