/* The engine's side of a shared memory budget (fleet/budget.h): joining with a reserved
 * minimum, growing the block pool when a step runs short (the scheduler's grow hook), and
 * giving free blocks back at the start of a step when other engines want them. All of it runs
 * on the engine thread except the poke, which only sets a flag under the engine mutex and wakes
 * the thread, so an idle engine answers a reclaim as promptly as a busy one. */
#include "core/log.h"
#include "engine/engine_priv.h"
#include "fleet/budget.h"

static void budget_poke(void *arg) {
  qv_engine *e = arg;
  pthread_mutex_lock(&e->mu);
  e->kv_poke = 1;
  pthread_cond_signal(&e->cv);
  pthread_mutex_unlock(&e->mu);
}

static int32_t budget_grow(void *arg, int32_t n) {
  qv_engine *e = arg;
  int32_t got = qv_budget_acquire(e->budget, e->budget_id, n);
  if (got < n) e->kv_short = 1;
  return kv_pool_grow(&e->sc.pool, got);
}

int32_t engine_budget_pool_cap(const qv_engine_opts *o, int64_t block_bytes) {
  qv_budget_stats st;
  qv_budget_get_stats(o->kv_budget, &st);
  int64_t n = block_bytes > 0 ? st.total_bytes / block_bytes : 0;
  return n > INT32_MAX ? INT32_MAX : (int32_t)n;
}

int engine_budget_join(qv_engine *e, int64_t block_bytes, qv_error *err) {
  e->budget = e->opts.kv_budget;
  e->budget_id = -1;
  int32_t cap = e->sc.pool.n_blocks;
  int32_t min = e->opts.kv_min_blocks > e->cfg.max_blocks ? e->opts.kv_min_blocks : e->cfg.max_blocks;
  if (min > cap) min = cap;
  qv_budget_client_opts bo = {.block_bytes = block_bytes > 0 ? block_bytes : 1, .min_blocks = min,
                              .max_blocks = cap, .poke = budget_poke, .poke_arg = e};
  int rc = qv_budget_join(e->budget, &bo, &e->budget_id, err);
  if (rc) {
    e->budget = NULL;
    return rc;
  }
  kv_pool_shrink(&e->sc.pool, cap - min);
  e->sc.grow = budget_grow;
  e->sc.grow_arg = e;
  QV_LOGI("engine: shared KV budget: %d blocks reserved, up to %d (%lld bytes each)", min, cap,
          (long long)bo.block_bytes);
  return 0;
}

void engine_budget_leave(qv_engine *e) {
  if (e->budget) qv_budget_leave(e->budget, e->budget_id);
  e->budget = NULL;
}

void engine_budget_begin_step(qv_engine *e) {
  if (!e->budget) return;
  pthread_mutex_lock(&e->mu);
  e->kv_poke = 0;
  pthread_mutex_unlock(&e->mu);
  e->kv_short = 0;
  int32_t want = qv_budget_reclaim_wanted(e->budget, e->budget_id);
  if (want > 0) qv_budget_release(e->budget, e->budget_id, kv_pool_shrink(&e->sc.pool, want));
}

void engine_budget_end_step(qv_engine *e) {
  if (e->budget && !e->kv_short) qv_budget_clear_demand(e->budget, e->budget_id);
}
