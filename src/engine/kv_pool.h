/* KV block pool: the bookkeeping side of the paged KV cache (the memory itself lives on the
 * backend). Fixed-size blocks, refcounts, and automatic prefix caching.
 *
 * A full block can be published under a hash chained over (parent block's hash, the block's
 * token ids, a model/adapter salt), so a later sequence with the same prefix finds it. Blocks
 * whose refcount drops to zero go to one LRU free list: blocks that carry no hash are put at
 * the head (taken first), cached blocks at the tail (evicted last, oldest first), so cached
 * prefixes survive until the memory is really needed. Allocation takes the head and, when the
 * block was cached, unpublishes it.
 *
 * The pool stores each published block's parent hash and token ids and verifies them on
 * lookup, so a 64-bit hash collision can never hand a sequence the wrong KV contents.
 *
 * Under a shared memory budget (src/fleet/budget.h) a pool can hold fewer blocks than its
 * capacity: blocks it has not been granted are parked (off the free list, never handed out,
 * never found by lookup). kv_pool_grow unparks blocks; kv_pool_shrink parks free ones, taking
 * them in free-list order, so uncached blocks go first and then the oldest cached prefixes
 * (which are unpublished). A pool that never shrinks behaves exactly as before.
 * Single-threaded: only the engine thread touches it. */
#ifndef QV_ENGINE_KV_POOL_H
#define QV_ENGINE_KV_POOL_H

#include <stdint.h>

typedef struct kv_block {
  int32_t ref;        /* sequences holding it; 0: on the free list */
  int32_t cached;     /* 1: published in the hash table */
  uint64_t hash;      /* chained hash when cached */
  uint64_t parent;    /* parent block's chained hash (0 for the first block) */
  int32_t prev, next; /* free-list links (-1 ends) */
  int32_t hnext;      /* hash-bucket chain (-1 ends) */
} kv_block;

typedef struct kv_pool {
  int32_t n_blocks;
  int32_t block_size;
  uint64_t salt;
  kv_block *blocks;   /* [n_blocks], owned */
  int32_t *tokens;    /* [n_blocks][block_size] token ids of published blocks, owned */
  int32_t *buckets;   /* [n_buckets] first block of each hash chain (-1 empty), owned */
  int32_t n_buckets;  /* power of two */
  int32_t head, tail; /* free list: take from head */
  int32_t n_free;     /* blocks with ref == 0 (cached or not) */
  int32_t n_cached;   /* published blocks (any refcount) */
  int32_t *parked;    /* [n_blocks] stack of parked block ids, owned */
  int32_t n_parked;   /* blocks not granted to this pool (neither free nor held) */
} kv_pool;

/* Sets up a pool of n_blocks blocks of block_size tokens, all free. Returns 0 or QV_ENOMEM /
 * QV_EINVAL. The pool owns its arrays; release them with kv_pool_deinit. */
int kv_pool_init(kv_pool *p, int32_t n_blocks, int32_t block_size, uint64_t salt);
void kv_pool_deinit(kv_pool *p);

/* Takes a free block (evicting the least recently used cached one if needed) with ref 1.
 * Returns its id, or -1 when every block is held (not an error: the caller preempts). */
int32_t kv_pool_alloc(kv_pool *p);
/* Adds a holder to block id (taking it off the free list when its ref was 0). */
void kv_pool_ref(kv_pool *p, int32_t id);
/* Drops a holder; at 0 the block joins the free list (cached blocks stay findable). */
void kv_pool_unref(kv_pool *p, int32_t id);

/* Chained hash of one full block: tokens [block_size]. */
uint64_t kv_pool_hash(const kv_pool *p, uint64_t parent, const int32_t *tokens);
/* Finds the published block with this hash, parent and tokens [block_size]; -1 if none. Does
 * not change refcounts. */
int32_t kv_pool_lookup(const kv_pool *p, uint64_t hash, uint64_t parent, const int32_t *tokens);
/* Publishes a full, held block under hash. A block already published under the same hash (an
 * identical prefix computed twice) keeps the entry; this one stays private. */
void kv_pool_publish(kv_pool *p, int32_t id, uint64_t hash, uint64_t parent, const int32_t *tokens);

/* Unparks up to n blocks onto the head of the free list; returns how many. */
int32_t kv_pool_grow(kv_pool *p, int32_t n);
/* Parks up to n free blocks (uncached ones first, then the least recently used cached ones,
 * which leave the prefix cache); held blocks are never touched. Returns how many. */
int32_t kv_pool_shrink(kv_pool *p, int32_t n);

/* Blocks that kv_pool_alloc could still hand out. */
static inline int32_t kv_pool_n_free(const kv_pool *p) { return p->n_free; }
/* Blocks held by at least one sequence. */
static inline int32_t kv_pool_n_used(const kv_pool *p) { return p->n_blocks - p->n_parked - p->n_free; }
/* Blocks granted to the pool (held or free): the capacity less the parked ones. */
static inline int32_t kv_pool_n_active(const kv_pool *p) { return p->n_blocks - p->n_parked; }

#endif
