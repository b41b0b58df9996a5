/* Scheduler: each step spends a token budget on running sequences first (their decode tokens,
 * then the next chunks of prompts being prefilled), then admits waiting ones while blocks,
 * budget and max_num_seqs allow. There is no prefill or decode phase: a sequence is n_computed catching up with
 * n_tokens, in chunks of at most the remaining budget.
 *
 * When a running sequence needs a block and none is free, the lowest-priority newest running
 * sequence (the last of the ordered running set) is preempted: its blocks are released and it
 * goes back to waiting to be recomputed, keeping its generated tokens. Running short is never
 * an error, and because max_model_len never exceeds the pool, the first running sequence alone
 * always fits, so every step makes progress.
 *
 * On admission a sequence first takes what it can without computing: the blocks of its
 * leader (choice 0 of the same request, once the prompt is computed) for a request with n > 1,
 * else the longest run of full blocks found in the prefix cache. Either way at least the last
 * known token is recomputed, because its logits are needed.
 *
 * Under a shared memory budget the pool's granted size changes between steps: a shortfall
 * first asks the grow hook (the engine acquires blocks from the budget) and only then
 * preempts or leaves a sequence waiting. The engine keeps at least one max_model_len sequence
 * granted, so the progress argument above still holds. */
#include <stdlib.h>
#include <string.h>

#include "engine/engine_internal.h"

int sched_init(sched *s, int32_t n_blocks, int32_t block_size, uint64_t salt, int32_t max_model_len,
               int32_t max_num_seqs, int32_t max_batched, int32_t prefix_caching) {
  memset(s, 0, sizeof *s);
  int rc = kv_pool_init(&s->pool, n_blocks, block_size, salt);
  if (rc) return rc;
  s->block_size = block_size;
  s->max_model_len = max_model_len;
  s->max_blocks = (max_model_len + block_size - 1) / block_size;
  s->max_num_seqs = max_num_seqs;
  s->max_batched = max_batched;
  s->prefix_caching = prefix_caching;
  s->running = calloc((size_t)max_num_seqs, sizeof *s->running);
  s->scheduled = calloc((size_t)max_num_seqs, sizeof *s->scheduled);
  if (!s->running || !s->scheduled) {
    sched_deinit(s);
    return QV_ENOMEM;
  }
  return 0;
}

void sched_deinit(sched *s) {
  kv_pool_deinit(&s->pool);
  free(s->running);
  free(s->waiting);
  free(s->scheduled);
  memset(s, 0, sizeof *s);
}

/* Order of service: lower priority value first, then earlier arrival, then choice. */
static int before(const eng_seq *a, const eng_seq *b) {
  if (a->req->p.priority != b->req->p.priority) return a->req->p.priority < b->req->p.priority;
  if (a->req->arrival != b->req->arrival) return a->req->arrival < b->req->arrival;
  return a->choice < b->choice;
}

int sched_add(sched *s, eng_seq *q) {
  if (s->n_waiting == s->cap_waiting) {
    int32_t cap = s->cap_waiting ? s->cap_waiting * 2 : 64;
    eng_seq **w = realloc(s->waiting, (size_t)cap * sizeof *w);
    if (!w) return QV_ENOMEM;
    s->waiting = w;
    s->cap_waiting = cap;
  }
  q->state = SEQ_WAITING;
  s->waiting[s->n_waiting++] = q;
  return 0;
}

static void release_blocks(sched *s, eng_seq *q) {
  /* Last block first, so a cached prefix's first blocks are the last to be evicted. */
  for (int32_t i = q->n_blocks - 1; i >= 0; i--) kv_pool_unref(&s->pool, q->blocks[i]);
  q->n_blocks = 0;
  q->n_computed = 0;
  q->n_published = 0;
  q->last_hash = 0;
  q->n_sched = 0;
}

static void remove_at(eng_seq **arr, int32_t *n, int32_t i, int keep_order) {
  if (keep_order) memmove(arr + i, arr + i + 1, (size_t)(*n - i - 1) * sizeof *arr);
  else arr[i] = arr[*n - 1];
  (*n)--;
}

void sched_remove(sched *s, eng_seq *q) {
  for (int32_t i = 0; i < s->n_running; i++)
    if (s->running[i] == q) {
      remove_at(s->running, &s->n_running, i, 1);
      break;
    }
  for (int32_t i = 0; i < s->n_waiting; i++)
    if (s->waiting[i] == q) {
      remove_at(s->waiting, &s->n_waiting, i, 0);
      break;
    }
  for (int32_t i = 0; i < s->n_scheduled; i++)
    if (s->scheduled[i] == q) {
      remove_at(s->scheduled, &s->n_scheduled, i, 1);
      break;
    }
  release_blocks(s, q);
}

static void insert_running(sched *s, eng_seq *q) {
  int32_t i = s->n_running;
  while (i > 0 && before(q, s->running[i - 1])) i--;
  memmove(s->running + i + 1, s->running + i, (size_t)(s->n_running - i) * sizeof *s->running);
  s->running[i] = q;
  s->n_running++;
  q->state = SEQ_RUNNING;
}

/* Preempts the last running sequence back to waiting. sched_add cannot fail here in practice
 * (capacity grows in advance in sched_step), but if it did the sequence stays running. */
static int preempt_last(sched *s) {
  eng_seq *v = s->running[s->n_running - 1];
  if (sched_add(s, v)) return -1;
  s->n_running--;
  release_blocks(s, v);
  s->n_preemptions++;
  return 0;
}

/* 1 when need blocks are free, after asking the grow hook for the shortfall. */
static int have_blocks(sched *s, int32_t need) {
  int32_t n_free = kv_pool_n_free(&s->pool);
  if (need > n_free && s->grow) n_free += s->grow(s->grow_arg, need - n_free);
  return need <= n_free;
}

static inline int32_t blocks_for(const sched *s, int32_t n_tokens) {
  return (n_tokens + s->block_size - 1) / s->block_size;
}

/* Grows q's block table to cover n_tokens; the caller checked there are enough free blocks. */
static void grow_blocks(sched *s, eng_seq *q, int32_t n_tokens) {
  int32_t need = blocks_for(s, n_tokens);
  while (q->n_blocks < need) q->blocks[q->n_blocks++] = kv_pool_alloc(&s->pool);
}

/* A follower choice waits until its leader has computed the prompt (or ended). */
static int gated(const eng_seq *q) {
  if (q->choice == 0 || q->admitted) return 0;
  const eng_seq *lead = &q->req->seqs[0];
  return lead->state != SEQ_DONE && lead->n_computed < q->req->p.n_prompt;
}

/* Takes blocks that need no computing (see the file comment). */
static void take_free_prefix(sched *s, eng_seq *q) {
  int32_t bs = s->block_size;
  int32_t max_share = (q->n_tokens - 1) / bs; /* keep at least the last token to compute */
  const eng_seq *lead = &q->req->seqs[0];
  if (q->choice > 0 && lead->state == SEQ_RUNNING && lead->n_computed >= q->req->p.n_prompt) {
    int32_t n = (q->req->p.n_prompt - 1) / bs;
    if (n > max_share) n = max_share;
    for (int32_t i = 0; i < n; i++) {
      kv_pool_ref(&s->pool, lead->blocks[i]);
      q->blocks[q->n_blocks++] = lead->blocks[i];
    }
    q->n_computed = n * bs;
    return;
  }
  if (!s->prefix_caching) return;
  int count = !q->admitted && q->choice == 0;
  if (count) s->prefix_queries += q->req->p.n_prompt;
  uint64_t parent = 0;
  for (int32_t i = 0; i < max_share; i++) {
    const int32_t *t = q->tokens + (size_t)i * (size_t)bs;
    uint64_t h = kv_pool_hash(&s->pool, parent, t);
    int32_t id = kv_pool_lookup(&s->pool, h, parent, t);
    if (id < 0) break;
    kv_pool_ref(&s->pool, id);
    q->blocks[q->n_blocks++] = id;
    q->n_published = i + 1;
    q->last_hash = h;
    parent = h;
  }
  q->n_computed = q->n_blocks * bs;
  if (count) {
    int32_t hit = q->n_computed < q->req->p.n_prompt ? q->n_computed : q->req->p.n_prompt;
    s->prefix_hits += hit;
    q->req->cached_tokens = hit;
  }
}

static int32_t pick_waiting(const sched *s) {
  int32_t best = -1;
  for (int32_t i = 0; i < s->n_waiting; i++) {
    if (gated(s->waiting[i])) continue;
    if (best < 0 || before(s->waiting[i], s->waiting[best])) best = i;
  }
  return best;
}

int32_t sched_step(sched *s) {
  int32_t budget = s->max_batched;
  int preempted = 0;
  s->n_scheduled = 0;
  /* Preemption moves sequences to waiting; make room first so it cannot fail. */
  if (s->cap_waiting - s->n_waiting < s->n_running) {
    int32_t cap = s->cap_waiting ? s->cap_waiting : 64;
    while (cap - s->n_waiting < s->n_running) cap *= 2;
    eng_seq **w = realloc(s->waiting, (size_t)cap * sizeof *w);
    if (!w) return QV_ENOMEM;
    s->waiting = w;
    s->cap_waiting = cap;
  }
  /* Decodes first, then prefill chunks, so a long prompt never holds back other sequences'
   * next tokens; within each pass the service order (priority, arrival). */
  for (int32_t i = 0; i < s->n_running; i++) s->running[i]->n_sched = 0;
  for (int pass = 0; pass < 2; pass++) {
    for (int32_t i = 0; i < s->n_running && budget > 0;) {
      eng_seq *q = s->running[i];
      int32_t n_new = q->n_tokens - q->n_computed;
      if (q->n_sched || n_new <= 0 || (pass == 0) != (n_new == 1)) {
        i++;
        continue;
      }
      if (n_new > budget) n_new = budget;
      int32_t need = blocks_for(s, q->n_computed + n_new) - q->n_blocks;
      int self_preempted = 0;
      while (!have_blocks(s, need)) {
        eng_seq *v = s->running[s->n_running - 1];
        if (v->n_sched) { /* a decode scheduled in the first pass gives its token back */
          budget += v->n_sched;
          for (int32_t k = 0; k < s->n_scheduled; k++)
            if (s->scheduled[k] == v) {
              remove_at(s->scheduled, &s->n_scheduled, k, 1);
              break;
            }
        }
        if (preempt_last(s)) return QV_ENOMEM;
        preempted = 1;
        if (v == q) {
          self_preempted = 1;
          break;
        }
      }
      if (self_preempted) break;
      grow_blocks(s, q, q->n_computed + n_new);
      q->n_sched = n_new;
      budget -= n_new;
      s->scheduled[s->n_scheduled++] = q;
      i++;
    }
  }
  while (!preempted && budget > 0 && s->n_running < s->max_num_seqs && s->n_waiting > 0) {
    int32_t wi = pick_waiting(s);
    if (wi < 0) break;
    eng_seq *q = s->waiting[wi];
    if (q->n_blocks == 0) take_free_prefix(s, q);
    int32_t n_new = q->n_tokens - q->n_computed;
    if (n_new > budget) n_new = budget;
    int32_t need = blocks_for(s, q->n_computed + n_new) - q->n_blocks;
    if (!have_blocks(s, need)) {
      release_blocks(s, q);
      break;
    }
    grow_blocks(s, q, q->n_computed + n_new);
    remove_at(s->waiting, &s->n_waiting, wi, 0);
    insert_running(s, q);
    q->admitted = 1;
    q->n_sched = n_new;
    budget -= n_new;
    s->scheduled[s->n_scheduled++] = q;
  }
  return s->max_batched - budget;
}

void sched_commit(sched *s, eng_seq *q) {
  q->n_computed += q->n_sched;
  q->n_sched = 0;
  if (!s->prefix_caching) return;
  int32_t bs = s->block_size;
  int32_t full = q->n_computed / bs;
  while (q->n_published < full) {
    int32_t i = q->n_published;
    const int32_t *t = q->tokens + (size_t)i * (size_t)bs;
    uint64_t h = kv_pool_hash(&s->pool, q->last_hash, t);
    kv_pool_publish(&s->pool, q->blocks[i], h, q->last_hash, t);
    q->last_hash = h;
    q->n_published++;
  }
}
