/* Scheduler tests on hand-made sequences (no model): the token budget, max_num_seqs,
 * chunked prefill, priority and FCFS order, preemption of the lowest-priority newest sequence
 * with its blocks returned, and admission that waits for blocks. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine_internal.h"

typedef struct fixture {
  eng_req reqs[16];
  eng_seq seqs[16];
  int32_t toks[16][512];
  int32_t blocks[16][64];
} fixture;

static eng_seq *mkseq(fixture *f, int i, int32_t n_prompt, int32_t priority) {
  eng_req *r = &f->reqs[i];
  eng_seq *q = &f->seqs[i];
  memset(r, 0, sizeof *r);
  memset(q, 0, sizeof *q);
  r->arrival = (uint64_t)i + 1;
  r->p.priority = priority;
  r->p.n = 1;
  r->p.n_prompt = n_prompt;
  r->seqs = q;
  for (int32_t t = 0; t < n_prompt; t++) f->toks[i][t] = 3 + (i * 31 + t * 7) % 50;
  q->req = r;
  q->tokens = f->toks[i];
  q->n_tokens = n_prompt;
  q->cap_tokens = 512;
  q->blocks = f->blocks[i];
  return q;
}

/* Simulates a forward: commits every scheduled sequence, and a finished prefill "samples". */
static void commit_all(sched *s) {
  for (int32_t i = 0; i < s->n_scheduled; i++) {
    eng_seq *q = s->scheduled[i];
    sched_commit(s, q);
    if (q->n_computed == q->n_tokens) q->tokens[q->n_tokens++] = 7;
  }
}

Test(sched, budget_chunks_and_max_seqs) {
  sched s;
  fixture *f = calloc(1, sizeof *f);
  cr_assert_eq(sched_init(&s, 64, 16, 0, 512, 3, 100, 1), 0);
  for (int i = 0; i < 4; i++) sched_add(&s, mkseq(f, i, 70, 0));
  int32_t n = sched_step(&s);
  cr_assert_eq(n, 100, "the budget is spent");
  cr_assert_eq(s.n_scheduled, 2);
  cr_assert_eq(s.scheduled[0]->n_sched, 70);
  cr_assert_eq(s.scheduled[1]->n_sched, 30, "second prompt is chunked");
  commit_all(&s);
  n = sched_step(&s);
  /* running first: one decode for seq 0, the rest of seq 1 (40), then seq 2 admitted for 59 */
  cr_assert_eq(s.scheduled[0], &f->seqs[0]);
  cr_assert_eq(f->seqs[0].n_sched, 1);
  cr_assert_eq(f->seqs[1].n_sched, 40);
  cr_assert_eq(f->seqs[2].n_sched, 59);
  cr_assert_eq(n, 100);
  commit_all(&s);
  sched_step(&s);
  cr_assert_eq(s.n_running, 3, "max_num_seqs");
  cr_assert_eq(f->seqs[3].state, SEQ_WAITING);
  for (int i = 0; i < 4; i++) sched_remove(&s, &f->seqs[i]);
  cr_assert_eq(kv_pool_n_used(&s.pool), 0);
  sched_deinit(&s);
  free(f);
}

Test(sched, priority_then_fcfs) {
  sched s;
  fixture *f = calloc(1, sizeof *f);
  sched_init(&s, 64, 16, 0, 512, 1, 1000, 0);
  sched_add(&s, mkseq(f, 0, 10, 5));
  sched_add(&s, mkseq(f, 1, 10, 1));
  sched_add(&s, mkseq(f, 2, 10, 1));
  sched_step(&s);
  cr_assert_eq(s.scheduled[0], &f->seqs[1], "lowest priority value, then earliest");
  sched_remove(&s, &f->seqs[1]);
  sched_step(&s);
  cr_assert_eq(s.scheduled[0], &f->seqs[2]);
  for (int i = 0; i < 3; i++) sched_remove(&s, &f->seqs[i]);
  sched_deinit(&s);
  free(f);
}

Test(sched, preempts_newest_lowest_priority) {
  sched s;
  fixture *f = calloc(1, sizeof *f);
  /* 6 blocks of 4 tokens; three sequences of 7 tokens take 2 blocks each, then grow. */
  sched_init(&s, 6, 4, 0, 24, 8, 1000, 0);
  sched_add(&s, mkseq(f, 0, 7, 0));
  sched_add(&s, mkseq(f, 1, 7, -1)); /* higher priority than 0 */
  sched_add(&s, mkseq(f, 2, 7, 0));
  sched_step(&s);
  cr_assert_eq(s.n_running, 3);
  cr_assert_eq(kv_pool_n_free(&s.pool), 0);
  commit_all(&s); /* each now has 8 tokens, 7 computed: the next decode fits in block 2 */
  sched_step(&s);
  cr_assert_eq(s.n_scheduled, 3);
  commit_all(&s); /* 9 tokens: each needs a third block, none free */
  sched_step(&s);
  /* service order is 1, 0, 2: seq 1 needs a block, so seq 2 (newest, lowest priority) is
   * preempted, and its two blocks serve seq 1 and seq 0 */
  cr_assert_eq(s.n_preemptions, 1);
  cr_assert_eq(f->seqs[2].state, SEQ_WAITING);
  cr_assert_eq(f->seqs[2].n_blocks, 0);
  cr_assert_eq(f->seqs[2].n_computed, 0, "preempted sequences are recomputed");
  cr_assert_eq(f->seqs[2].n_tokens, 9, "generated tokens are kept");
  cr_assert_eq(s.n_scheduled, 2);
  cr_assert_eq(f->seqs[1].n_blocks, 3);
  cr_assert_eq(f->seqs[0].n_blocks, 3);
  /* while something was preempted this step, nothing was admitted */
  for (int i = 0; i < 3; i++) sched_remove(&s, &f->seqs[i]);
  cr_assert_eq(kv_pool_n_used(&s.pool), 0);
  sched_deinit(&s);
  free(f);
}

Test(sched, admission_waits_for_blocks) {
  sched s;
  fixture *f = calloc(1, sizeof *f);
  sched_init(&s, 4, 4, 0, 16, 8, 1000, 0);
  sched_add(&s, mkseq(f, 0, 12, 0)); /* 3 blocks */
  sched_add(&s, mkseq(f, 1, 8, 0));  /* 2 blocks: does not fit beside */
  sched_step(&s);
  cr_assert_eq(s.n_running, 1);
  cr_assert_eq(s.n_waiting, 1);
  cr_assert_eq(kv_pool_n_used(&s.pool), 3, "a failed admission returns what it took");
  sched_remove(&s, &f->seqs[0]);
  sched_step(&s);
  cr_assert_eq(s.n_running, 1);
  cr_assert_eq(s.scheduled[0], &f->seqs[1]);
  sched_remove(&s, &f->seqs[1]);
  cr_assert_eq(kv_pool_n_used(&s.pool), 0);
  sched_deinit(&s);
  free(f);
}

/* Decodes are scheduled before prefill chunks: an older sequence with a long prompt still
 * being prefilled does not take the budget from a younger one that is decoding. */
Test(sched, decodes_before_prefill_chunks) {
  sched s;
  fixture *f = calloc(1, sizeof *f);
  sched_init(&s, 64, 16, 0, 512, 8, 64, 0);
  eng_seq *b = mkseq(f, 1, 5, 0);
  sched_add(&s, b);
  sched_step(&s);
  commit_all(&s); /* b is decoding now */
  eng_seq *a = mkseq(f, 0, 300, 0);
  f->reqs[0].arrival = 0; /* older than b: first in service order */
  sched_add(&s, a);
  sched_step(&s);
  cr_assert_eq(b->n_sched, 1);
  cr_assert_eq(a->n_sched, 63);
  commit_all(&s);
  sched_step(&s);
  cr_assert_eq(s.running[0], a, "a is first in service order");
  cr_assert_eq(b->n_sched, 1, "the decode is not starved by a's prefill");
  cr_assert_eq(a->n_sched, 63);
  sched_remove(&s, a);
  sched_remove(&s, b);
  cr_assert_eq(kv_pool_n_used(&s.pool), 0);
  sched_deinit(&s);
  free(f);
}
