/* The fleet's memory budget (see budget.h): byte arithmetic under one mutex. Demand is kept
 * per client and per reservation so a retry replaces its own record instead of adding to it;
 * what other clients are asked to give back is the total unmet demand less what is already
 * free, so a budget with room asks nobody for anything. */
#include "fleet/budget.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define BUDGET_MAX_WANTS 64

typedef struct budget_client {
  int in_use;
  int64_t block_bytes;
  int32_t min_blocks, max_blocks;
  int32_t granted;           /* blocks held */
  int64_t demand_bytes;      /* unmet: asked for and refused */
  void (*poke)(void *);
  void *poke_arg;
} budget_client;

typedef struct budget_want {
  uint64_t id;               /* 0: free slot */
  int64_t bytes;
} budget_want;

struct qv_budget {
  pthread_mutex_t mu;
  int64_t total, reserved, kv;
  budget_client c[QV_BUDGET_MAX_CLIENTS];
  budget_want w[BUDGET_MAX_WANTS];
};

int qv_budget_create(int64_t total_bytes, qv_budget **out, qv_error *err) {
  *out = NULL;
  if (total_bytes <= 0) return qv_error_set(err, QV_EINVAL, "memory budget must be positive");
  qv_budget *b = calloc(1, sizeof *b);
  if (!b) return qv_error_set(err, QV_ENOMEM, "out of memory");
  pthread_mutex_init(&b->mu, NULL);
  b->total = total_bytes;
  *out = b;
  return 0;
}

void qv_budget_destroy(qv_budget *b) {
  if (!b) return;
  pthread_mutex_destroy(&b->mu);
  free(b);
}

static int64_t free_bytes(const qv_budget *b) { return b->total - b->reserved - b->kv; }

static int64_t demand_total(const qv_budget *b) {
  int64_t d = 0;
  for (int i = 0; i < QV_BUDGET_MAX_CLIENTS; i++) d += b->c[i].in_use ? b->c[i].demand_bytes : 0;
  for (int i = 0; i < BUDGET_MAX_WANTS; i++) d += b->w[i].id ? b->w[i].bytes : 0;
  return d;
}

/* The demand client id yields to: every reservation's, and that of clients holding fewer bytes
 * than it (ties by index). The smallest asker yields to no other client, so two clients that
 * both want more can never wait on each other; a big client gives way to a small one. */
static int64_t demand_before(const qv_budget *b, int32_t id) {
  const budget_client *me = &b->c[id];
  int64_t mine = me->block_bytes * me->granted, d = 0;
  for (int32_t i = 0; i < QV_BUDGET_MAX_CLIENTS; i++) {
    const budget_client *c = &b->c[i];
    if (i == id || !c->in_use || !c->demand_bytes) continue;
    int64_t theirs = c->block_bytes * c->granted;
    if (theirs < mine || (theirs == mine && i < id)) d += c->demand_bytes;
  }
  for (int i = 0; i < BUDGET_MAX_WANTS; i++) d += b->w[i].id ? b->w[i].bytes : 0;
  return d;
}

/* Collects the pokes of clients (other than skip) holding blocks above their minimum; the
 * caller calls them after unlocking. Returns how many. */
static int collect_pokes(qv_budget *b, int32_t skip, void (**fn)(void *), void **arg) {
  int n = 0;
  for (int32_t i = 0; i < QV_BUDGET_MAX_CLIENTS; i++) {
    budget_client *c = &b->c[i];
    if (i == skip || !c->in_use || !c->poke || c->granted <= c->min_blocks) continue;
    fn[n] = c->poke;
    arg[n++] = c->poke_arg;
  }
  return n;
}

static void call_pokes(int n, void (**fn)(void *), void **arg) {
  for (int i = 0; i < n; i++) fn[i](arg[i]);
}

static void set_want(qv_budget *b, uint64_t id, int64_t bytes) {
  int slot = -1;
  for (int i = 0; i < BUDGET_MAX_WANTS; i++) {
    if (b->w[i].id == id) { slot = i; break; }
    if (slot < 0 && !b->w[i].id) slot = i;
  }
  if (slot < 0) return; /* more concurrent reservations than slots: the retry still works */
  b->w[slot].id = bytes > 0 ? id : 0;
  b->w[slot].bytes = bytes > 0 ? bytes : 0;
}

int qv_budget_reserve(qv_budget *b, int64_t bytes, uint64_t want_id) {
  void (*fn[QV_BUDGET_MAX_CLIENTS])(void *);
  void *arg[QV_BUDGET_MAX_CLIENTS];
  int n = 0, rc = 0;
  pthread_mutex_lock(&b->mu);
  if (bytes <= free_bytes(b)) {
    b->reserved += bytes;
    set_want(b, want_id, 0);
  } else {
    set_want(b, want_id, bytes - free_bytes(b));
    n = collect_pokes(b, -1, fn, arg);
    rc = QV_ENOMEM;
  }
  pthread_mutex_unlock(&b->mu);
  call_pokes(n, fn, arg);
  return rc;
}

void qv_budget_unreserve(qv_budget *b, int64_t bytes) {
  pthread_mutex_lock(&b->mu);
  b->reserved -= bytes < b->reserved ? bytes : b->reserved;
  pthread_mutex_unlock(&b->mu);
}

void qv_budget_cancel_demand(qv_budget *b, uint64_t want_id) {
  pthread_mutex_lock(&b->mu);
  set_want(b, want_id, 0);
  pthread_mutex_unlock(&b->mu);
}

int qv_budget_join(qv_budget *b, const qv_budget_client_opts *o, int32_t *id, qv_error *err) {
  if (!o || o->block_bytes <= 0 || o->min_blocks < 0 || o->max_blocks < o->min_blocks)
    return qv_error_set(err, QV_EINVAL, "budget: bad client options");
  pthread_mutex_lock(&b->mu);
  int32_t slot = -1;
  for (int32_t i = 0; i < QV_BUDGET_MAX_CLIENTS && slot < 0; i++)
    if (!b->c[i].in_use) slot = i;
  int64_t need = o->block_bytes * o->min_blocks, avail = free_bytes(b);
  int rc = slot < 0 ? QV_ELIMIT : need > avail ? QV_ENOMEM : 0;
  void (*fn[QV_BUDGET_MAX_CLIENTS])(void *);
  void *arg[QV_BUDGET_MAX_CLIENTS];
  int np = 0;
  set_want(b, BUDGET_JOIN_WANT, rc == QV_ENOMEM ? need - avail : 0);
  if (rc == QV_ENOMEM) np = collect_pokes(b, -1, fn, arg);
  if (!rc) {
    budget_client *c = &b->c[slot];
    memset(c, 0, sizeof *c);
    c->in_use = 1;
    c->block_bytes = o->block_bytes;
    c->min_blocks = o->min_blocks;
    c->max_blocks = o->max_blocks;
    c->granted = o->min_blocks;
    c->poke = o->poke;
    c->poke_arg = o->poke_arg;
    b->kv += need;
    *id = slot;
  }
  pthread_mutex_unlock(&b->mu);
  call_pokes(np, fn, arg);
  if (rc == QV_ELIMIT) return qv_error_set(err, rc, "budget: more than %d engines", QV_BUDGET_MAX_CLIENTS);
  if (rc)
    return qv_error_set(err, rc, "memory budget: the reserved KV minimum (%lld bytes) does not fit in the %lld bytes free",
                        (long long)need, (long long)avail);
  return 0;
}

void qv_budget_leave(qv_budget *b, int32_t id) {
  if (!b || id < 0 || id >= QV_BUDGET_MAX_CLIENTS) return;
  pthread_mutex_lock(&b->mu);
  budget_client *c = &b->c[id];
  if (c->in_use) b->kv -= c->block_bytes * c->granted;
  memset(c, 0, sizeof *c);
  pthread_mutex_unlock(&b->mu);
}

int32_t qv_budget_acquire(qv_budget *b, int32_t id, int32_t n) {
  void (*fn[QV_BUDGET_MAX_CLIENTS])(void *);
  void *arg[QV_BUDGET_MAX_CLIENTS];
  int np = 0;
  pthread_mutex_lock(&b->mu);
  budget_client *c = &b->c[id];
  int32_t room = c->max_blocks - c->granted;
  int32_t want = n < room ? n : room;
  /* What others wait for is not up for grabs: a client that just gave blocks back must not
   * take them again before the asker does. */
  int64_t fit = (free_bytes(b) - demand_before(b, id)) / c->block_bytes;
  int32_t got = want < fit ? want : (int32_t)(fit > 0 ? fit : 0);
  c->granted += got;
  b->kv += c->block_bytes * got;
  c->demand_bytes = (int64_t)(want - got) * c->block_bytes;
  if (want > got) np = collect_pokes(b, id, fn, arg);
  pthread_mutex_unlock(&b->mu);
  call_pokes(np, fn, arg);
  return got;
}

void qv_budget_release(qv_budget *b, int32_t id, int32_t n) {
  pthread_mutex_lock(&b->mu);
  budget_client *c = &b->c[id];
  if (n > c->granted) n = c->granted;
  c->granted -= n;
  b->kv -= c->block_bytes * n;
  pthread_mutex_unlock(&b->mu);
}

int32_t qv_budget_reclaim_wanted(qv_budget *b, int32_t id) {
  pthread_mutex_lock(&b->mu);
  budget_client *c = &b->c[id];
  int64_t short_bytes = demand_before(b, id) - free_bytes(b);
  int32_t n = 0;
  if (short_bytes > 0 && c->granted > c->min_blocks) {
    int64_t blocks = (short_bytes + c->block_bytes - 1) / c->block_bytes;
    int32_t spare = c->granted - c->min_blocks;
    n = blocks < spare ? (int32_t)blocks : spare;
  }
  pthread_mutex_unlock(&b->mu);
  return n;
}

void qv_budget_clear_demand(qv_budget *b, int32_t id) {
  pthread_mutex_lock(&b->mu);
  b->c[id].demand_bytes = 0;
  pthread_mutex_unlock(&b->mu);
}

int32_t qv_budget_client_blocks(qv_budget *b, int32_t id) {
  pthread_mutex_lock(&b->mu);
  int32_t n = b->c[id].granted;
  pthread_mutex_unlock(&b->mu);
  return n;
}

void qv_budget_get_stats(qv_budget *b, qv_budget_stats *st) {
  pthread_mutex_lock(&b->mu);
  st->total_bytes = b->total;
  st->reserved_bytes = b->reserved;
  st->kv_bytes = b->kv;
  st->demand_bytes = demand_total(b);
  st->n_clients = 0;
  for (int i = 0; i < QV_BUDGET_MAX_CLIENTS; i++) st->n_clients += b->c[i].in_use;
  pthread_mutex_unlock(&b->mu);
}

int64_t qv_budget_reclaimable(qv_budget *b) {
  int64_t n = 0;
  pthread_mutex_lock(&b->mu);
  for (int i = 0; i < QV_BUDGET_MAX_CLIENTS; i++)
    if (b->c[i].in_use) n += b->c[i].block_bytes * (b->c[i].granted - b->c[i].min_blocks);
  pthread_mutex_unlock(&b->mu);
  return n;
}
