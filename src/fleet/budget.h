/* One memory budget shared by every model of a fleet: the weights of loaded models are
 * reserved in bytes, and the rest is handed out as KV blocks to engines ("clients") that each
 * declare their block size in bytes, so models with different KV shapes share one pool.
 *
 * Each client has a reserved minimum (granted at join, never taken away) and a maximum. Above
 * its minimum a client grows by asking (qv_budget_acquire); when the budget is short, the
 * asker's unmet demand is recorded and every other client holding blocks above its minimum is
 * poked; at its next step each such client gives back free blocks (qv_budget_reclaim_wanted:
 * uncached ones first, then its oldest cached prefixes), and blocks still held by running
 * sequences follow as those sequences finish. So a busy model grows into what idle ones do not
 * use and gives it back when they get traffic, and no request fails because another model holds
 * memory: its own minimum always fits one full sequence (the engine guarantees that).
 *
 * Thread-safe: one mutex, held only for arithmetic; pokes are called after it is released.
 * Physical memory is not moved: on the CPU backend an engine's KV array covers its maximum as
 * lazily committed pages, and the budget accounts for granted blocks (see ARCHITECTURE.md). */
#ifndef QV_FLEET_BUDGET_H
#define QV_FLEET_BUDGET_H

#include <stdint.h>

#include "quiver/error.h"

#define QV_BUDGET_MAX_CLIENTS 64

typedef struct qv_budget qv_budget;

typedef struct qv_budget_client_opts {
  int64_t block_bytes;       /* bytes of one KV block of this client (> 0) */
  int32_t min_blocks;        /* reserved at join */
  int32_t max_blocks;        /* never granted more (>= min_blocks) */
  void (*poke)(void *arg);   /* called (any thread, no lock held) when blocks are wanted back */
  void *poke_arg;
} qv_budget_client_opts;

typedef struct qv_budget_stats {
  int64_t total_bytes;
  int64_t reserved_bytes;    /* weights */
  int64_t kv_bytes;          /* blocks granted to all clients, in bytes */
  int64_t demand_bytes;      /* unmet demand (clients and reservations) */
  int32_t n_clients;
} qv_budget_stats;

/* total_bytes > 0. The budget owns nothing but itself; free with qv_budget_destroy after every
 * client left. */
int qv_budget_create(int64_t total_bytes, qv_budget **out, qv_error *err);
void qv_budget_destroy(qv_budget *b); /* accepts NULL */

/* Reserves bytes (model weights). When they do not fit, records the shortfall as demand (so
 * clients give back what they do not use) and returns QV_ENOMEM; the caller retries or evicts.
 * want_id identifies the reservation's demand (any stable nonzero number, e.g. a model index
 * plus one) so a retry replaces it rather than adding to it. */
int qv_budget_reserve(qv_budget *b, int64_t bytes, uint64_t want_id);
void qv_budget_unreserve(qv_budget *b, int64_t bytes);
/* Drops a reservation's recorded demand (the caller gave up or succeeded elsewhere). */
void qv_budget_cancel_demand(qv_budget *b, uint64_t want_id);

/* The demand id under which a refused join records its shortfall (cancel it when giving up). */
#define BUDGET_JOIN_WANT UINT64_MAX

/* Joins with min_blocks granted at once. QV_ENOMEM (message in err) when they do not fit in
 * what is free: the shortfall is then recorded as demand (BUDGET_JOIN_WANT) and the clients
 * above their minimum are poked, so a retry can succeed; QV_ELIMIT when QV_BUDGET_MAX_CLIENTS
 * are in. */
int qv_budget_join(qv_budget *b, const qv_budget_client_opts *o, int32_t *id, qv_error *err);
/* Gives back everything the client holds. */
void qv_budget_leave(qv_budget *b, int32_t id);
/* Grants up to n more blocks (capped by the maximum and what is free); returns how many. A
 * shortfall is recorded as the client's demand and the others are poked. */
int32_t qv_budget_acquire(qv_budget *b, int32_t id, int32_t n);
/* Returns n blocks the client held. */
void qv_budget_release(qv_budget *b, int32_t id, int32_t n);
/* Blocks the client should give back now to meet the others' demand (never below its minimum). */
int32_t qv_budget_reclaim_wanted(qv_budget *b, int32_t id);
/* The client no longer needs more (its step was not short). */
void qv_budget_clear_demand(qv_budget *b, int32_t id);
/* Bytes all clients hold above their minimum (what reclaiming could free). */
int64_t qv_budget_reclaimable(qv_budget *b);
/* Blocks the client holds now. */
int32_t qv_budget_client_blocks(qv_budget *b, int32_t id);

void qv_budget_get_stats(qv_budget *b, qv_budget_stats *st);

#endif
