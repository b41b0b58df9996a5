/* KV block pool tests: allocation until exhaustion, refcounts, the LRU order of the free list
 * (uncached blocks reused before cached ones, cached ones oldest first), verified prefix
 * lookup (a forged hash never matches different tokens), duplicate publishes. */
#include <criterion/criterion.h>
#include <stdlib.h>

#include "engine/kv_pool.h"
#include "quiver/error.h"

Test(kv_pool, alloc_until_exhausted_and_free) {
  kv_pool p;
  cr_assert_eq(kv_pool_init(&p, 8, 4, 0), 0);
  int32_t ids[8];
  int seen[8] = {0};
  for (int i = 0; i < 8; i++) {
    ids[i] = kv_pool_alloc(&p);
    cr_assert(ids[i] >= 0 && ids[i] < 8);
    cr_assert_eq(seen[ids[i]]++, 0, "block handed out twice");
  }
  cr_assert_eq(kv_pool_alloc(&p), -1);
  cr_assert_eq(kv_pool_n_free(&p), 0);
  cr_assert_eq(kv_pool_n_used(&p), 8);
  kv_pool_ref(&p, ids[3]);
  kv_pool_unref(&p, ids[3]);
  cr_assert_eq(kv_pool_n_free(&p), 0, "still held once");
  kv_pool_unref(&p, ids[3]);
  cr_assert_eq(kv_pool_n_free(&p), 1);
  cr_assert_eq(kv_pool_alloc(&p), ids[3]);
  for (int i = 0; i < 8; i++) kv_pool_unref(&p, ids[i]);
  cr_assert_eq(kv_pool_n_used(&p), 0);
  kv_pool_unref(&p, ids[0]); /* extra unref is ignored, not corrupting */
  cr_assert_eq(kv_pool_n_free(&p), 8);
  kv_pool_deinit(&p);
  cr_assert_eq(kv_pool_init(&p, 0, 4, 0), QV_EINVAL);
}

Test(kv_pool, prefix_publish_lookup_and_lru) {
  kv_pool p;
  cr_assert_eq(kv_pool_init(&p, 4, 4, 77), 0);
  int32_t t[3][4] = {{5, 6, 7, 8}, {9, 10, 11, 12}, {13, 14, 15, 16}};
  int32_t b[4];
  uint64_t h[3], parent = 0;
  for (int i = 0; i < 3; i++) {
    b[i] = kv_pool_alloc(&p);
    h[i] = kv_pool_hash(&p, parent, t[i]);
    kv_pool_publish(&p, b[i], h[i], parent, t[i]);
    parent = h[i];
  }
  cr_assert_eq(p.n_cached, 3);
  cr_assert_eq(kv_pool_lookup(&p, h[1], h[0], t[1]), b[1]);
  /* same tokens under another parent, or another salt, hash differently */
  cr_assert_neq(kv_pool_hash(&p, 0, t[1]), h[1]);
  kv_pool q;
  kv_pool_init(&q, 1, 4, 78);
  cr_assert_neq(kv_pool_hash(&q, 0, t[0]), h[0]);
  kv_pool_deinit(&q);
  /* a lookup with the right hash but other tokens (a forged collision) misses */
  int32_t other[4] = {9, 10, 11, 99};
  cr_assert_eq(kv_pool_lookup(&p, h[1], h[0], other), -1);
  cr_assert_eq(kv_pool_lookup(&p, h[1], 12345, t[1]), -1);
  /* release in reverse (as a finished sequence does): block 0 becomes most recently used */
  for (int i = 2; i >= 0; i--) kv_pool_unref(&p, b[i]);
  cr_assert_eq(kv_pool_n_free(&p), 4);
  /* cached blocks stay findable while free */
  cr_assert_eq(kv_pool_lookup(&p, h[0], 0, t[0]), b[0]);
  /* the uncached fourth block goes first, then the least recently freed cached block (b[2]) */
  b[3] = kv_pool_alloc(&p);
  cr_assert(b[3] != b[0] && b[3] != b[1] && b[3] != b[2]);
  cr_assert_eq(p.n_cached, 3);
  int32_t x = kv_pool_alloc(&p);
  cr_assert_eq(x, b[2]);
  cr_assert_eq(p.n_cached, 2, "evicted block is unpublished");
  cr_assert_eq(kv_pool_lookup(&p, h[2], h[1], t[2]), -1);
  /* taking a free cached block back by ref removes it from the free list */
  kv_pool_ref(&p, b[0]);
  cr_assert_eq(kv_pool_n_free(&p), 1);
  int32_t y = kv_pool_alloc(&p);
  cr_assert_eq(y, b[1]);
  cr_assert_eq(kv_pool_alloc(&p), -1);
  kv_pool_deinit(&p);
}

Test(kv_pool, duplicate_publish_keeps_first) {
  kv_pool p;
  kv_pool_init(&p, 4, 2, 0);
  int32_t t[2] = {3, 4};
  int32_t a = kv_pool_alloc(&p), b = kv_pool_alloc(&p);
  uint64_t h = kv_pool_hash(&p, 0, t);
  kv_pool_publish(&p, a, h, 0, t);
  kv_pool_publish(&p, b, h, 0, t);
  cr_assert_eq(p.n_cached, 1);
  cr_assert_eq(kv_pool_lookup(&p, h, 0, t), a);
  kv_pool_unref(&p, b);
  kv_pool_unref(&p, a);
  cr_assert_eq(kv_pool_alloc(&p) == a, 0, "uncached blocks are reused before cached ones");
  kv_pool_deinit(&p);
}

/* Random churn: the free count always equals the number of blocks with ref 0 and every held
 * block is distinct. */
Test(kv_pool, random_churn_invariants) {
  kv_pool p;
  kv_pool_init(&p, 64, 4, 1);
  int32_t held[256];
  int n = 0;
  unsigned seed = 17;
  for (int step = 0; step < 20000; step++) {
    int op = rand_r(&seed) % 3;
    if ((op == 0 || n == 0) && n < 256) {
      int32_t id = kv_pool_alloc(&p);
      if (id >= 0) {
        held[n++] = id;
        if (rand_r(&seed) % 2) {
          int32_t t[4] = {rand_r(&seed) % 5, 1, 2, 3};
          kv_pool_publish(&p, id, kv_pool_hash(&p, 0, t), 0, t);
        }
      }
    } else if (op == 1 && n < 256) {
      int32_t id = held[rand_r(&seed) % n];
      kv_pool_ref(&p, id);
      held[n++] = id;
    } else {
      int k = rand_r(&seed) % n;
      kv_pool_unref(&p, held[k]);
      held[k] = held[--n];
    }
    int zero = 0;
    for (int i = 0; i < 64; i++) zero += p.blocks[i].ref == 0;
    cr_assert_eq(kv_pool_n_free(&p), zero);
  }
  while (n) kv_pool_unref(&p, held[--n]);
  cr_assert_eq(kv_pool_n_used(&p), 0);
  kv_pool_deinit(&p);
}
