/* KV block pool: refcounted blocks, an LRU free list and a verified prefix-hash table (see
 * kv_pool.h for the policy). All operations are O(1) except lookup/publish, which walk one
 * hash chain. */
#include "engine/kv_pool.h"
#include "core/util.h"

#include <stdlib.h>
#include <string.h>

#include "quiver/error.h"

int kv_pool_init(kv_pool *p, int32_t n_blocks, int32_t block_size, uint64_t salt) {
  memset(p, 0, sizeof *p);
  if (n_blocks <= 0 || block_size <= 0 || block_size > 4096) return QV_EINVAL;
  p->n_blocks = n_blocks;
  p->block_size = block_size;
  p->salt = salt;
  p->n_buckets = 1;
  while (p->n_buckets < n_blocks * 2) p->n_buckets <<= 1;
  p->blocks = calloc((size_t)n_blocks, sizeof *p->blocks);
  p->tokens = malloc((size_t)n_blocks * (size_t)block_size * sizeof *p->tokens);
  p->buckets = malloc((size_t)p->n_buckets * sizeof *p->buckets);
  p->parked = malloc((size_t)n_blocks * sizeof *p->parked);
  if (!p->blocks || !p->tokens || !p->buckets || !p->parked) {
    kv_pool_deinit(p);
    return QV_ENOMEM;
  }
  for (int32_t i = 0; i < p->n_buckets; i++) p->buckets[i] = -1;
  for (int32_t i = 0; i < n_blocks; i++) {
    p->blocks[i].prev = i - 1;
    p->blocks[i].next = i + 1 < n_blocks ? i + 1 : -1;
    p->blocks[i].hnext = -1;
  }
  p->head = 0;
  p->tail = n_blocks - 1;
  p->n_free = n_blocks;
  return 0;
}

void kv_pool_deinit(kv_pool *p) {
  free(p->blocks);
  free(p->tokens);
  free(p->buckets);
  free(p->parked);
  memset(p, 0, sizeof *p);
}

static void list_remove(kv_pool *p, int32_t id) {
  kv_block *b = &p->blocks[id];
  if (b->prev >= 0) p->blocks[b->prev].next = b->next; else p->head = b->next;
  if (b->next >= 0) p->blocks[b->next].prev = b->prev; else p->tail = b->prev;
  b->prev = b->next = -1;
  p->n_free--;
}

static void list_push_head(kv_pool *p, int32_t id) {
  kv_block *b = &p->blocks[id];
  b->prev = -1;
  b->next = p->head;
  if (p->head >= 0) p->blocks[p->head].prev = id; else p->tail = id;
  p->head = id;
  p->n_free++;
}

static void list_push_tail(kv_pool *p, int32_t id) {
  kv_block *b = &p->blocks[id];
  b->next = -1;
  b->prev = p->tail;
  if (p->tail >= 0) p->blocks[p->tail].next = id; else p->head = id;
  p->tail = id;
  p->n_free++;
}

static void unpublish(kv_pool *p, int32_t id) {
  kv_block *b = &p->blocks[id];
  int32_t *link = &p->buckets[b->hash & (uint64_t)(p->n_buckets - 1)];
  while (*link >= 0 && *link != id) link = &p->blocks[*link].hnext;
  if (*link == id) *link = b->hnext;
  b->hnext = -1;
  b->cached = 0;
  p->n_cached--;
}

int32_t kv_pool_alloc(kv_pool *p) {
  int32_t id = p->head;
  if (id < 0) return -1;
  list_remove(p, id);
  if (p->blocks[id].cached) unpublish(p, id);
  p->blocks[id].ref = 1;
  return id;
}

void kv_pool_ref(kv_pool *p, int32_t id) {
  if (p->blocks[id].ref++ == 0) list_remove(p, id);
}

void kv_pool_unref(kv_pool *p, int32_t id) {
  kv_block *b = &p->blocks[id];
  if (b->ref <= 0) return; /* programmer error; keep the pool consistent rather than corrupt it */
  if (--b->ref == 0) {
    if (b->cached) list_push_tail(p, id);
    else list_push_head(p, id);
  }
}

uint64_t kv_pool_hash(const kv_pool *p, uint64_t parent, const int32_t *tokens) {
  uint64_t h = qv_mix64(parent ^ qv_mix64(p->salt));
  for (int32_t i = 0; i < p->block_size; i++) h = qv_mix64(h ^ (uint32_t)tokens[i]);
  return h ? h : 1; /* 0 means "no parent" */
}

int32_t kv_pool_lookup(const kv_pool *p, uint64_t hash, uint64_t parent, const int32_t *tokens) {
  for (int32_t id = p->buckets[hash & (uint64_t)(p->n_buckets - 1)]; id >= 0; id = p->blocks[id].hnext) {
    const kv_block *b = &p->blocks[id];
    if (b->hash == hash && b->parent == parent &&
        !memcmp(p->tokens + (size_t)id * (size_t)p->block_size, tokens,
                (size_t)p->block_size * sizeof *tokens))
      return id;
  }
  return -1;
}

void kv_pool_publish(kv_pool *p, int32_t id, uint64_t hash, uint64_t parent, const int32_t *tokens) {
  kv_block *b = &p->blocks[id];
  if (b->cached || kv_pool_lookup(p, hash, parent, tokens) >= 0) return;
  b->cached = 1;
  b->hash = hash;
  b->parent = parent;
  memcpy(p->tokens + (size_t)id * (size_t)p->block_size, tokens, (size_t)p->block_size * sizeof *tokens);
  int32_t *bucket = &p->buckets[hash & (uint64_t)(p->n_buckets - 1)];
  b->hnext = *bucket;
  *bucket = id;
  p->n_cached++;
}

int32_t kv_pool_grow(kv_pool *p, int32_t n) {
  int32_t k = 0;
  for (; k < n && p->n_parked > 0; k++) list_push_head(p, p->parked[--p->n_parked]);
  return k;
}

int32_t kv_pool_shrink(kv_pool *p, int32_t n) {
  int32_t k = 0;
  for (; k < n && p->head >= 0; k++) {
    int32_t id = p->head;
    list_remove(p, id);
    if (p->blocks[id].cached) unpublish(p, id);
    p->parked[p->n_parked++] = id;
  }
  return k;
}
