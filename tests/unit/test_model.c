/* The model on the CPU backend: stories260K's exact greedy output (the reference from llama2.c),
 * batch invariance of logits, chunked prefill, and the embedded quiver-tiny model. */
#include <criterion/criterion.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/backend.h"
#include "models/model.h"
#include "../test_util.h"

typedef struct runner {
  qv_backend *be;
  qv_model *m;
  int32_t vocab;
} runner;

static void runner_open(runner *r, const char *path) {
  qv_error err = {0};
  cr_assert_eq(qv_backend_create("cpu", NULL, &r->be, &err), 0, "%s", err.msg);
  qv_model_opts o = {.max_batch_tokens = 512, .max_logits = 64};
  cr_assert_eq(qv_model_load(path, r->be, &o, &r->m, &err), 0, "%s", err.msg);
  cr_assert_eq(qv_model_kv_init(r->m, 128, 16, &err), 0, "%s", err.msg);
  r->vocab = qv_model_get_config(r->m)->vocab_size;
}

static void runner_close(runner *r) {
  qv_model_destroy(r->m);
  qv_backend_destroy(r->be);
}

/* Runs n tokens of one sequence occupying blocks [blk0, blk0+32) whose first token sits at
 * position pos0; returns the last row's logits. */
static void run_seq(runner *r, int32_t blk0, int32_t pos0, const int32_t *ids, int32_t n, float *logits) {
  int32_t pos[512], slots[512], q[2] = {0, n}, ctx = pos0 + n, bt[32], li = n - 1;
  for (int i = 0; i < 32; i++) bt[i] = blk0 + i;
  for (int i = 0; i < n; i++) {
    pos[i] = pos0 + i;
    slots[i] = bt[pos[i] / 16] * 16 + pos[i] % 16;
  }
  qv_batch b = {.n_tokens = n, .n_seqs = 1, .n_logits = 1, .token_ids = ids, .positions = pos, .slot_mapping = slots,
                .seq_q_start = q, .seq_ctx_len = &ctx, .block_tables = bt, .max_blocks = 32, .logits_idx = &li};
  qv_error err = {0};
  cr_assert_eq(qv_model_forward(r->m, &b, logits, &err), 0, "%s", err.msg);
}

static int32_t argmax(const float *l, int32_t n) {
  int32_t best = 0;
  for (int32_t i = 1; i < n; i++)
    if (l[i] > l[best]) best = i;
  return best;
}

Test(model, stories260k_greedy_256) {
  char dir[PATH_MAX], ids_path[PATH_MAX + 32];
  if (!test_shared_path(dir, sizeof dir, "models/stories260K")) cr_skip_test("stories260K not found at %s", dir);
  snprintf(ids_path, sizeof ids_path, "%s/greedy-256.ids", dir);
  FILE *f = fopen(ids_path, "r");
  cr_assert(f);
  int32_t want[300];
  int n = 0;
  while (n < 300 && fscanf(f, "%d", &want[n]) == 1) n++;
  fclose(f);
  cr_assert_eq(n, 257);
  runner r;
  runner_open(&r, dir);
  float *logits = malloc(sizeof(float) * (size_t)r.vocab);
  int32_t tok = want[0];
  for (int i = 1; i < n; i++) {
    run_seq(&r, 0, i - 1, &tok, 1, logits);
    tok = argmax(logits, r.vocab);
    cr_assert_eq(tok, want[i], "token %d: got %d want %d", i, tok, want[i]);
  }
  free(logits);
  runner_close(&r);
}

/* A sequence's logits are bit-identical whether it runs alone, in chunks, or beside another. */
Test(model, batch_invariance_and_chunking) {
  runner r;
  runner_open(&r, NULL);
  int32_t a[40], bb[25];
  srand(3);
  for (int i = 0; i < 40; i++) a[i] = 3 + rand() % 256;
  for (int i = 0; i < 25; i++) bb[i] = 3 + rand() % 256;
  float *alone = malloc(sizeof(float) * (size_t)r.vocab), *chunk = malloc(sizeof(float) * (size_t)r.vocab);
  run_seq(&r, 0, 0, a, 40, alone);
  run_seq(&r, 32, 0, a, 17, chunk);
  run_seq(&r, 32, 17, a + 17, 23, chunk);
  cr_assert_eq(memcmp(alone, chunk, sizeof(float) * (size_t)r.vocab), 0, "chunked prefill differs");
  /* Now a batch: sequence B (25 tokens, blocks 16..) then A's last token as a decode (blocks 0..). */
  int32_t ids[26], pos[26], slots[26], q[3] = {0, 25, 26}, ctx[2] = {25, 40}, bt[2][8], li[2] = {24, 25};
  for (int i = 0; i < 8; i++) {
    bt[0][i] = 64 + i;
    bt[1][i] = i;
  }
  for (int i = 0; i < 25; i++) {
    ids[i] = bb[i];
    pos[i] = i;
    slots[i] = bt[0][i / 16] * 16 + i % 16;
  }
  ids[25] = a[39];
  pos[25] = 39;
  slots[25] = bt[1][39 / 16] * 16 + 39 % 16;
  qv_batch b = {.n_tokens = 26, .n_seqs = 2, .n_logits = 2, .token_ids = ids, .positions = pos,
                .slot_mapping = slots, .seq_q_start = q, .seq_ctx_len = ctx, .block_tables = &bt[0][0],
                .max_blocks = 8, .logits_idx = li};
  float *both = malloc(sizeof(float) * 2 * (size_t)r.vocab);
  qv_error err = {0};
  cr_assert_eq(qv_model_forward(r.m, &b, both, &err), 0, "%s", err.msg);
  cr_assert_eq(memcmp(alone, both + r.vocab, sizeof(float) * (size_t)r.vocab), 0, "batched decode differs");
  float *b_alone = malloc(sizeof(float) * (size_t)r.vocab);
  run_seq(&r, 96, 0, bb, 25, b_alone);
  cr_assert_eq(memcmp(b_alone, both, sizeof(float) * (size_t)r.vocab), 0, "batched prefill differs");
  free(alone);
  free(chunk);
  free(both);
  free(b_alone);
  runner_close(&r);
}

Test(model, tiny_is_deterministic_and_nontrivial) {
  runner r1, r2;
  runner_open(&r1, NULL);
  runner_open(&r2, "quiver-tiny");
  const qv_model_config *c = qv_model_get_config(r1.m);
  cr_assert_str_eq(c->arch, "quiver-tiny");
  cr_assert_eq(c->vocab_size, 259);
  int32_t ids[5] = {1, 72, 105, 33, 10};
  float *l1 = malloc(sizeof(float) * (size_t)r1.vocab), *l2 = malloc(sizeof(float) * (size_t)r1.vocab);
  run_seq(&r1, 0, 0, ids, 5, l1);
  run_seq(&r2, 0, 0, ids, 5, l2);
  cr_assert_eq(memcmp(l1, l2, sizeof(float) * (size_t)r1.vocab), 0);
  float mn = l1[0], mx = l1[0];
  for (int i = 0; i < r1.vocab; i++) {
    cr_assert(isfinite(l1[i]));
    mn = fminf(mn, l1[i]);
    mx = fmaxf(mx, l1[i]);
  }
  cr_assert(mx - mn > 0.1f, "logits are flat (%g..%g)", mn, mx);
  cr_assert_gt(qv_model_n_params(r1.m), 100000);
  cr_assert_eq(qv_model_kv_bytes_per_token(r1.m), 2 * 2 * 2 * 16 * 4);
  free(l1);
  free(l2);
  runner_close(&r1);
  runner_close(&r2);
}

Test(model, forward_rejects_bad_batches) {
  runner r;
  runner_open(&r, NULL);
  float *logits = malloc(sizeof(float) * (size_t)r.vocab);
  int32_t id = 500, pos = 0, slot = 0, q[2] = {0, 1}, ctx = 1, bt = 0, li = 0;
  qv_batch b = {.n_tokens = 1, .n_seqs = 1, .n_logits = 1, .token_ids = &id, .positions = &pos, .slot_mapping = &slot,
                .seq_q_start = q, .seq_ctx_len = &ctx, .block_tables = &bt, .max_blocks = 1, .logits_idx = &li};
  qv_error err = {0};
  cr_assert_eq(qv_model_forward(r.m, &b, logits, &err), QV_ERANGE);
  id = 5;
  bt = 100000;
  cr_assert_neq(qv_model_forward(r.m, &b, logits, &err), 0);
  cr_assert(strstr(err.msg, "block"), "%s", err.msg);
  bt = 0;
  pos = 3;
  cr_assert_neq(qv_model_forward(r.m, &b, logits, &err), 0);
  pos = 0;
  cr_assert_eq(qv_model_forward(r.m, &b, logits, &err), 0, "%s", err.msg);
  free(logits);
  runner_close(&r);
}
