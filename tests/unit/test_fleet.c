/* The fleet's lifecycle over fake model ops: loads run on the loader thread (the caller never
 * blocks), startup vs on-demand models, sleep levels 1 and 2 and wake, unload, keep_alive, and
 * the memory budget: the least recently used idle unpinned model is evicted for room, a pinned
 * or busy one never is (a load waits for a busy one to drain), and a model that cannot fit
 * fails with the reason. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "fleet/fleet.h"

typedef struct fake_fleet {
  int depth[4];            /* what the fake holds per model */
  atomic_int gate;         /* 1: load_weights blocks until 0 */
  atomic_int n_changed;
  int fail_load;           /* model index whose load fails, or -1 */
} fake_fleet;

static int64_t ff_bytes(void *ctx, int32_t idx) { (void)ctx; (void)idx; return 100; }
static int ff_load(void *ctx, int32_t idx, qv_error *err) {
  fake_fleet *f = ctx;
  while (atomic_load(&f->gate)) {
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
  if (idx == f->fail_load) return qv_error_set(err, QV_EIO, "fake: cannot read model %d", idx);
  cr_assert_eq(f->depth[idx], 0);
  f->depth[idx] = 1;
  return 0;
}
static int ff_start(void *ctx, int32_t idx, qv_error *err) {
  (void)err;
  fake_fleet *f = ctx;
  cr_assert_eq(f->depth[idx], 1);
  f->depth[idx] = 2;
  return 0;
}
static void ff_stop(void *ctx, int32_t idx) {
  fake_fleet *f = ctx;
  cr_assert_eq(f->depth[idx], 2);
  f->depth[idx] = 1;
}
static void ff_drop(void *ctx, int32_t idx) {
  fake_fleet *f = ctx;
  cr_assert_eq(f->depth[idx], 1);
  f->depth[idx] = 0;
}
static void ff_changed(void *ctx, int32_t idx) { (void)idx; atomic_fetch_add(&((fake_fleet *)ctx)->n_changed, 1); }

static fake_fleet ff;

static fleet *mk(qv_budget *b, fleet_model_cfg *cfg, int n) {
  memset(&ff, 0, sizeof ff);
  ff.fail_load = -1;
  fleet_ops ops = {.ctx = &ff, .weight_bytes = ff_bytes, .load_weights = ff_load, .start_engine = ff_start,
                   .stop_engine = ff_stop, .drop_weights = ff_drop, .changed = ff_changed};
  fleet *f = NULL;
  qv_error err = {0};
  cr_assert_eq(fleet_create(&ops, b, cfg, n, &f, &err), 0, "%s", err.msg);
  return f;
}

static fleet_state state_of(fleet *f, int32_t i) {
  fleet_model_info in;
  fleet_get_info(f, i, &in);
  return in.state;
}

static void wait_ok(fleet *f, int32_t i) {
  qv_error err = {0};
  cr_assert_eq(fleet_wait(f, i, 5000, &err), 0, "%s", err.msg);
}

/* Waits until model i reaches state s (the loader works asynchronously). */
static void wait_state(fleet *f, int32_t i, fleet_state s) {
  for (int k = 0; k < 500 && state_of(f, i) != s; k++) {
    struct timespec ts = {0, 10000000};
    nanosleep(&ts, NULL);
  }
  cr_assert_eq(state_of(f, i), s, "model %d is %s, wanted %s", i, fleet_state_name(state_of(f, i)),
               fleet_state_name(s));
}

Test(fleet, startup_loads_off_the_caller_and_on_demand_waits) {
  fleet_model_cfg cfg[2] = {{.name = "a"}, {.name = "b", .on_demand = 1}};
  fleet *f = mk(NULL, cfg, 2);
  atomic_store(&ff.gate, 1);
  fleet_start(f); /* returns at once although the load is blocked */
  wait_state(f, 0, FLEET_LOADING);
  cr_assert_eq(fleet_startup_ready(f), 0);
  cr_assert_eq(fleet_enter(f, 0), 0, "a loading model takes no requests");
  atomic_store(&ff.gate, 0);
  wait_ok(f, 0);
  cr_assert_eq(fleet_startup_ready(f), 1, "on-demand models do not hold start-up back");
  cr_assert_eq(state_of(f, 1), FLEET_REGISTERED);
  cr_assert_eq(fleet_find(f, "b"), 1);
  cr_assert_eq(fleet_find(f, "zz"), -1);
  fleet_load(f, 1);
  wait_ok(f, 1);
  fleet_model_info in;
  fleet_get_info(f, 1, &in);
  cr_assert_eq(in.depth, 2);
  cr_assert_eq(in.n_loads, 1);
  cr_assert_gt(atomic_load(&ff.n_changed), 0);
  fleet_destroy(f);
  cr_assert_eq(ff.depth[0] + ff.depth[1], 0, "destroy drops everything");
}

Test(fleet, sleep_levels_wake_unload_and_busy_drain) {
  fleet_model_cfg cfg[1] = {{.name = "a"}};
  fleet *f = mk(NULL, cfg, 1);
  fleet_start(f);
  wait_ok(f, 0);
  fleet_sleep(f, 0, 1);
  wait_state(f, 0, FLEET_SLEEPING);
  fleet_model_info in;
  fleet_get_info(f, 0, &in);
  cr_assert_eq(in.level, 1);
  cr_assert_eq(ff.depth[0], 1, "level 1 keeps the weights");
  fleet_load(f, 0);
  wait_ok(f, 0);
  fleet_get_info(f, 0, &in);
  cr_assert_eq(in.n_wakes, 1);
  fleet_sleep(f, 0, 2);
  wait_state(f, 0, FLEET_SLEEPING);
  cr_assert_eq(ff.depth[0], 0, "level 2 drops the weights");
  fleet_load(f, 0);
  wait_ok(f, 0);
  /* A request in flight holds the model: the sleep waits for it. */
  cr_assert_eq(fleet_enter(f, 0), 1);
  fleet_sleep(f, 0, 1);
  struct timespec ts = {0, 150000000};
  nanosleep(&ts, NULL);
  cr_assert_eq(state_of(f, 0), FLEET_READY, "a busy model was put to sleep");
  cr_assert_eq(ff.depth[0], 2);
  fleet_leave(f, 0);
  wait_state(f, 0, FLEET_SLEEPING);
  fleet_unload(f, 0);
  wait_state(f, 0, FLEET_UNLOADED);
  cr_assert_eq(ff.depth[0], 0);
  qv_error err = {0};
  cr_assert_eq(fleet_wait(f, 0, 100, &err), QV_ESTATE);
  cr_assert(strstr(err.msg, "unloaded"), "%s", err.msg);
  fleet_destroy(f);
}

Test(fleet, budget_evicts_lru_never_pinned_or_busy) {
  qv_budget *b = NULL;
  qv_error err = {0};
  cr_assert_eq(qv_budget_create(250, &b, &err), 0); /* two models of 100 fit, three do not */
  fleet_model_cfg cfg[3] = {{.name = "a", .pin = 1}, {.name = "b", .on_demand = 1}, {.name = "c", .on_demand = 1}};
  fleet *f = mk(b, cfg, 3);
  fleet_start(f);
  wait_ok(f, 0);
  for (int round = 0; round < 4; round++) {
    int32_t want = round % 2 ? 1 : 2, other = round % 2 ? 2 : 1;
    fleet_load(f, want);
    wait_ok(f, want);
    cr_assert_eq(state_of(f, 0), FLEET_READY, "the pinned model was evicted");
    if (round > 0) {
      cr_assert_eq(state_of(f, other), FLEET_SLEEPING, "round %d", round);
      cr_assert_eq(ff.depth[other], 0);
    }
    qv_budget_stats st;
    qv_budget_get_stats(b, &st);
    cr_assert_leq(st.reserved_bytes, st.total_bytes);
  }
  fleet_model_info in;
  fleet_get_info(f, 1, &in);
  cr_assert_geq(in.n_evictions, 1);
  cr_assert_gt(in.swap_s_total, 0.0);
  /* b (loaded last) holds a request: loading c waits for it to drain (never evicts it) */
  cr_assert_eq(state_of(f, 1), FLEET_READY);
  cr_assert_eq(fleet_enter(f, 1), 1);
  fleet_load(f, 2);
  struct timespec ts = {0, 200000000};
  nanosleep(&ts, NULL);
  cr_assert_eq(state_of(f, 2), FLEET_LOADING);
  cr_assert_eq(state_of(f, 1), FLEET_READY, "a busy model was evicted");
  cr_assert_eq(ff.depth[1], 2);
  fleet_leave(f, 1);
  wait_ok(f, 2); /* once b is idle, c loads by evicting it */
  cr_assert_eq(state_of(f, 1), FLEET_SLEEPING);
  /* with every other model pinned nothing can make room: the load fails with the reason */
  fleet_set_pin(f, 2, 1);
  fleet_load(f, 1);
  cr_assert_eq(fleet_wait(f, 1, 5000, &err), QV_ESTATE);
  cr_assert(strstr(err.msg, "do not fit"), "%s", err.msg);
  fleet_destroy(f);
  qv_budget_stats st;
  qv_budget_get_stats(b, &st);
  cr_assert_eq(st.reserved_bytes, 0);
  qv_budget_destroy(b);
}

Test(fleet, keep_alive_and_failed_load) {
  fleet_model_cfg cfg[2] = {{.name = "a", .keep_alive_s = 0.2}, {.name = "b", .on_demand = 1}};
  fleet *f = mk(NULL, cfg, 2);
  ff.fail_load = 1;
  fleet_start(f);
  wait_ok(f, 0);
  wait_state(f, 0, FLEET_SLEEPING); /* idle past keep_alive */
  cr_assert_eq(ff.depth[0], 1);
  fleet_load(f, 1);
  qv_error err = {0};
  cr_assert_eq(fleet_wait(f, 1, 5000, &err), QV_ESTATE);
  cr_assert(strstr(err.msg, "cannot read model 1"), "%s", err.msg);
  fleet_model_info in;
  fleet_get_info(f, 1, &in);
  cr_assert_eq(in.state, FLEET_FAILED);
  cr_assert_eq(in.depth, 0);
  fleet_destroy(f);
}

/* A model added at run time (the admin API) gets the next index, loads at once unless on
 * demand, is found by name, and the fleet refuses models beyond FLEET_MAX_MODELS. */
Test(fleet, add_at_run_time) {
  fleet_model_cfg cfg[1] = {{.name = "a"}};
  fleet *f = mk(NULL, cfg, 1);
  fleet_start(f);
  wait_ok(f, 0);
  qv_error err = {0};
  fleet_model_cfg b = {.name = "b"}, c = {.name = "c", .on_demand = 1};
  cr_assert_eq(fleet_add(f, &b, &err), 1, "%s", err.msg);
  cr_assert_eq(fleet_add(f, &c, &err), 2, "%s", err.msg);
  cr_expect_eq(fleet_n_models(f), 3);
  cr_expect_eq(fleet_find(f, "c"), 2);
  wait_ok(f, 1);
  cr_expect_eq(ff.depth[1], 2, "a startup model added later is loaded at once");
  cr_expect_eq(state_of(f, 2), FLEET_REGISTERED, "an on-demand one waits for its first request");
  fleet_load(f, 2);
  wait_ok(f, 2);
  cr_expect_eq(state_of(f, 0), FLEET_READY, "adding never disturbs a loaded model");
  /* A removed model's slot serves its name again only once idle and unloaded. */
  cr_expect_eq(fleet_idle_unloaded(f, 2), 0);
  cr_expect_eq(fleet_readd(f, 2, &c, &err), QV_EBUSY);
  fleet_unload(f, 2);
  wait_state(f, 2, FLEET_UNLOADED);
  for (int k = 0; k < 500 && !fleet_idle_unloaded(f, 2); k++) {
    struct timespec ts = {0, 10000000};
    nanosleep(&ts, NULL);
  }
  fleet_model_cfg c2 = {.name = "c"};
  cr_assert_eq(fleet_readd(f, 2, &c2, &err), 0, "%s", err.msg);
  wait_ok(f, 2);
  fleet_model_info in;
  fleet_get_info(f, 2, &in);
  cr_expect_eq(in.n_loads, 1, "counters start afresh");
  cr_expect_eq(in.on_demand, 0);
  fleet_destroy(f);
  cr_expect_eq(ff.depth[1] + ff.depth[2], 0);
  fleet_model_cfg many[FLEET_MAX_MODELS];
  for (int i = 0; i < FLEET_MAX_MODELS; i++) many[i] = (fleet_model_cfg){.name = "x", .on_demand = 1};
  f = mk(NULL, many, FLEET_MAX_MODELS);
  cr_expect_eq(fleet_add(f, &c, &err), QV_ELIMIT);
  fleet_destroy(f);
}
