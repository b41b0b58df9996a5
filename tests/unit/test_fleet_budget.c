/* The fleet's shared memory budget (fleet/budget.h), the block pool's park/unpark (kv_pool_grow
 * and kv_pool_shrink) and two engines sharing one budget: the busy engine grows into blocks
 * the idle one does not use and gives them back when the idle one gets traffic, with every
 * output still the fake model's exact greedy continuation (engine_fake.h). */
#include <criterion/criterion.h>
#include <stdlib.h>

#include "engine_fake.h"
#include "engine/kv_pool.h"
#include "fleet/budget.h"

#define VOCAB 64
#define BB 1024 /* the fake model's 64 bytes per token x 16-token blocks */

static int n_pokes[2];
static void count_poke(void *arg) { n_pokes[(intptr_t)arg]++; }

Test(budget, grant_cap_demand_and_reclaim) {
  qv_budget *b = NULL;
  qv_error err = {0};
  cr_assert_eq(qv_budget_create(0, &b, &err), QV_EINVAL);
  cr_assert_eq(qv_budget_create(20 * BB, &b, &err), 0);
  qv_budget_client_opts o = {.block_bytes = BB, .min_blocks = 4, .max_blocks = 12, .poke = count_poke,
                             .poke_arg = (void *)(intptr_t)0};
  int32_t a, c;
  cr_assert_eq(qv_budget_join(b, &o, &a, &err), 0);
  o.poke_arg = (void *)(intptr_t)1;
  cr_assert_eq(qv_budget_join(b, &o, &c, &err), 0);
  cr_assert_eq(qv_budget_client_blocks(b, a), 4, "the minimum is granted at join");
  /* a grows to its maximum (12), then 4 remain free */
  cr_assert_eq(qv_budget_acquire(b, a, 100), 8);
  cr_assert_eq(qv_budget_client_blocks(b, a), 12);
  cr_assert_eq(qv_budget_reclaim_wanted(b, a), 0, "nobody asks");
  /* c wants 6: 4 free are granted, 2 recorded as demand, a is poked and owes 2 */
  n_pokes[0] = 0;
  cr_assert_eq(qv_budget_acquire(b, c, 6), 4);
  cr_assert_eq(n_pokes[0], 1);
  cr_assert_eq(qv_budget_reclaim_wanted(b, a), 2);
  cr_assert_eq(qv_budget_reclaim_wanted(b, c), 0, "the asker owes nothing");
  /* a gives back 2; it may not take them again before c does */
  qv_budget_release(b, a, 2);
  cr_assert_eq(qv_budget_acquire(b, a, 2), 0, "blocks given back go to the asker");
  cr_assert_eq(qv_budget_acquire(b, c, 2), 2);
  qv_budget_clear_demand(b, c);
  qv_budget_clear_demand(b, a);
  /* a reservation (weights) that does not fit records demand above the minima */
  cr_assert_eq(qv_budget_reserve(b, 3 * BB, 7), QV_ENOMEM);
  cr_assert_gt(qv_budget_reclaim_wanted(b, a) + qv_budget_reclaim_wanted(b, c), 0);
  qv_budget_release(b, a, 3);
  cr_assert_eq(qv_budget_reserve(b, 3 * BB, 7), 0);
  qv_budget_stats st;
  qv_budget_get_stats(b, &st);
  cr_assert_eq(st.reserved_bytes, 3 * BB);
  cr_assert_eq(st.demand_bytes, 0, "a met reservation drops its demand");
  cr_assert_eq(st.kv_bytes, (int64_t)(qv_budget_client_blocks(b, a) + qv_budget_client_blocks(b, c)) * BB);
  cr_assert_leq(st.reserved_bytes + st.kv_bytes, st.total_bytes);
  /* a minimum that does not fit is refused with a message */
  o.min_blocks = 12;
  int32_t d;
  cr_assert_eq(qv_budget_join(b, &o, &d, &err), QV_ENOMEM);
  cr_assert(strstr(err.msg, "does not fit"));
  qv_budget_leave(b, a);
  qv_budget_leave(b, c);
  qv_budget_unreserve(b, 3 * BB);
  qv_budget_get_stats(b, &st);
  cr_assert_eq(st.kv_bytes + st.reserved_bytes, 0);
  qv_budget_destroy(b);
}

Test(kv_pool, shrink_parks_uncached_first_then_oldest_cached) {
  kv_pool p;
  cr_assert_eq(kv_pool_init(&p, 6, 4, 3), 0);
  int32_t t[2][4] = {{5, 6, 7, 8}, {9, 10, 11, 12}};
  int32_t c0 = kv_pool_alloc(&p), c1 = kv_pool_alloc(&p), held = kv_pool_alloc(&p);
  uint64_t h0 = kv_pool_hash(&p, 0, t[0]), h1 = kv_pool_hash(&p, h0, t[1]);
  kv_pool_publish(&p, c0, h0, 0, t[0]);
  kv_pool_publish(&p, c1, h1, h0, t[1]);
  kv_pool_unref(&p, c0);
  kv_pool_unref(&p, c1);
  /* free: 3 uncached + 2 cached (c0 older); held stays held */
  cr_assert_eq(kv_pool_shrink(&p, 4), 4);
  cr_assert_eq(kv_pool_n_active(&p), 2);
  cr_assert_eq(kv_pool_n_used(&p), 1);
  cr_assert_eq(kv_pool_lookup(&p, h0, 0, t[0]), -1, "the oldest cached prefix left the cache");
  cr_assert_eq(kv_pool_lookup(&p, h1, h0, t[1]), c1, "the newer one survives");
  cr_assert_eq(kv_pool_shrink(&p, 10), 1, "only free blocks are parked");
  cr_assert_eq(kv_pool_lookup(&p, h1, h0, t[1]), -1);
  cr_assert_eq(kv_pool_alloc(&p), -1, "parked blocks are never handed out");
  cr_assert_eq(kv_pool_grow(&p, 3), 3);
  cr_assert_eq(kv_pool_n_free(&p), 3);
  cr_assert_eq(kv_pool_grow(&p, 10), 2);
  cr_assert_eq(kv_pool_n_active(&p), 6);
  kv_pool_unref(&p, held);
  cr_assert_eq(kv_pool_n_used(&p), 0);
  kv_pool_deinit(&p);
}

typedef struct side {
  fake_model fm;
  qv_engine *e;
  run_out *out;
  int32_t (*prompts)[48];
  int32_t *lens;
  int n, n_done;
  int32_t peak_blocks;
} side;

static void side_start(side *s, qv_budget *b, int n, unsigned seed) {
  engine_model_ops m = fake_ops(&s->fm, VOCAB, 128); /* 8 blocks per full sequence */
  qv_engine_opts o;
  qv_engine_opts_default(&o);
  o.n_kv_blocks = 56;
  o.kv_min_blocks = 8;
  o.kv_budget = b;
  qv_error err = {0};
  cr_assert_eq(engine_create_ops(&m, NULL, &o, 1, &s->e, &err), 0, "%s", err.msg);
  s->n = n;
  s->out = calloc((size_t)n, sizeof *s->out);
  s->prompts = calloc((size_t)n, sizeof *s->prompts);
  s->lens = calloc((size_t)n, sizeof *s->lens);
  for (int i = 0; i < n; i++) s->lens[i] = 30 + (int32_t)(rand_r(&seed) % 18);
  for (int i = 0; i < n; i++) fill_random(s->prompts[i], s->lens[i], VOCAB, &seed);
}

static void side_submit(side *s) {
  for (int i = 0; i < s->n; i++) {
    qv_request_params p;
    qv_request_params_default(&p);
    p.prompt_ids = s->prompts[i];
    p.n_prompt = s->lens[i];
    p.max_tokens = 40;
    p.sampling.temperature = 0.0f;
    qv_error err = {0};
    cr_assert_eq(qv_engine_submit(s->e, &p, &s->out[i].id, &err), 0, "%s", err.msg);
  }
}

static int32_t side_step(side *s) {
  cr_assert_geq(engine_step(s->e), 0);
  s->n_done += collect(s->e, s->out, s->n);
  qv_engine_stats st;
  qv_engine_get_stats(s->e, &st);
  if (st.n_kv_blocks > s->peak_blocks) s->peak_blocks = st.n_kv_blocks;
  return st.n_kv_blocks;
}

static void side_check_and_free(side *s) {
  for (int i = 0; i < s->n; i++) {
    int32_t exp[64];
    int32_t ne = fake_expected_greedy(&s->fm, s->prompts[i], s->lens[i], 40, exp);
    cr_assert_eq(s->out[i].n_tokens, ne);
    for (int32_t k = 0; k < ne; k++) cr_assert_eq(s->out[i].tokens[k], exp[k], "req %d token %d", i, k);
  }
  assert_no_leak(s->e);
  qv_engine_destroy(s->e);
  fake_model_free(&s->fm);
  free(s->out);
  free(s->prompts);
  free(s->lens);
}

Test(budget, busy_engine_grows_then_gives_back) {
  qv_budget *b = NULL;
  qv_error err = {0};
  cr_assert_eq(qv_budget_create(64 * BB, &b, &err), 0);
  side busy = {0}, idle = {0};
  side_start(&busy, b, 16, 5);
  side_start(&idle, b, 6, 9);
  cr_assert_eq(qv_budget_client_blocks(b, 0) + qv_budget_client_blocks(b, 1), 16, "two minima of 8");
  /* Only the busy engine has traffic: it grows past a static half (32) into the idle one's
   * share, up to what the budget has (64 - the idle engine's 8). */
  side_submit(&busy);
  for (int i = 0; i < 12; i++) side_step(&busy);
  cr_assert_gt(busy.peak_blocks, 32, "busy engine stayed at %d blocks", busy.peak_blocks);
  cr_assert_leq(busy.peak_blocks, 56);
  int32_t busy_before = side_step(&busy);
  /* The idle engine gets traffic: six sequences need ~6 blocks each, more than its 8. The busy
   * engine gives blocks back as they free up; both finish with exact outputs. */
  side_submit(&idle);
  int32_t busy_min_after = busy_before;
  for (int iter = 0; busy.n_done < busy.n || idle.n_done < idle.n; iter++) {
    cr_assert_lt(iter, 100000, "no progress");
    int32_t nb = side_step(&busy);
    if (idle.n_done < idle.n && nb < busy_min_after) busy_min_after = nb;
    side_step(&idle);
    qv_budget_stats st;
    qv_budget_get_stats(b, &st);
    cr_assert_leq(st.kv_bytes, st.total_bytes, "the budget was overdrawn");
  }
  cr_assert_gt(idle.peak_blocks, 8, "the idle engine never grew past its minimum");
  cr_assert_lt(busy_min_after, busy_before, "the busy engine never gave blocks back");
  side_check_and_free(&busy);
  side_check_and_free(&idle);
  qv_budget_stats st;
  qv_budget_get_stats(b, &st);
  cr_assert_eq(st.kv_bytes, 0, "every block returned when the engines left");
  qv_budget_destroy(b);
}
