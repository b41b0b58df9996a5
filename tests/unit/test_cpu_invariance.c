/* Batch invariance on every SIMD path this machine can run (forced through QUIVER_CPU_ISA):
 * one sequence's logits, at the end of its prefill and at a decode step, must be bit-identical
 * whether the step carries it alone or beside other sequences' rows (batches of 1, 7 and 64
 * rows at the decode step, the same fillers beside the prefill), with 1 or 2 threads. Models:
 * the embedded quiver-tiny, stories260K (F32, FFN 172: every lane tail) and the BF16 and F16
 * fixtures (weights used in place from the mapping). Also: those weights are views of the
 * file, kept in their dtype. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "core/cpu_features.h"
#include "models/model_impl.h"
#include "../test_util.h"

enum { PROMPT = 20, BS = 16, MAXB = 16, MAX_FILL = 63 };

typedef struct result {
  float *prefill, *decode; /* [vocab] each */
} result;

/* Adds a filler sequence of n fresh tokens (positions 0..n-1) in blocks starting at blk0. */
typedef struct batch_b {
  int32_t ids[128], pos[128], slots[128], q[64], ctx[64], bt[64][MAXB], li[64];
  int32_t n_tok, n_seq, n_log;
} batch_b;

static void add_seq(batch_b *b, const int32_t *ids, int32_t n, int32_t pos0, int32_t blk0) {
  int32_t s = b->n_seq++;
  b->q[s] = b->n_tok;
  for (int i = 0; i < MAXB; i++) b->bt[s][i] = blk0 + i;
  for (int32_t i = 0; i < n; i++) {
    int32_t t = b->n_tok++, p = pos0 + i;
    b->ids[t] = ids[i];
    b->pos[t] = p;
    b->slots[t] = b->bt[s][p / BS] * BS + p % BS;
  }
  b->ctx[s] = pos0 + n;
  b->q[s + 1] = b->n_tok;
  b->li[b->n_log++] = b->n_tok - 1;
}

/* Fillers of n_rows tokens in total: sequences of 1..9 tokens, each in its own blocks. */
static void add_fillers(batch_b *b, int32_t n_rows, int32_t *next_blk, unsigned *seed) {
  int32_t ids[16];
  while (n_rows > 0) {
    *seed = *seed * 1103515245u + 12345u;
    int32_t n = 1 + (int32_t)((*seed >> 16) % 9);
    if (n > n_rows) n = n_rows;
    for (int i = 0; i < n; i++) ids[i] = 3 + (int32_t)((*seed >> (i % 8)) % 100);
    add_seq(b, ids, n, 0, *next_blk);
    *next_blk += 1;
    n_rows -= n;
  }
}

static void forward(qv_model *m, batch_b *b, float *logits) {
  qv_batch qb = {.n_tokens = b->n_tok, .n_seqs = b->n_seq, .n_logits = b->n_log, .token_ids = b->ids,
                 .positions = b->pos, .slot_mapping = b->slots, .seq_q_start = b->q, .seq_ctx_len = b->ctx,
                 .block_tables = &b->bt[0][0], .max_blocks = MAXB, .logits_idx = b->li};
  qv_error err = {0};
  cr_assert_eq(qv_model_forward(m, &qb, logits, &err), 0, "%s", err.msg);
}

/* The target sequence's prefill, then one decode, each step with `rows - 1` filler rows split
 * around it; its logits go to r. */
static void run_case(const char *path, const char *isa, int threads, int32_t rows, result *r, int32_t vocab) {
  setenv("QUIVER_CPU_ISA", isa, 1);
  qv_backend *be;
  qv_error err = {0};
  cr_assert_eq(qv_backend_create("cpu", &(qv_backend_opts){.n_threads = threads}, &be, &err), 0, "%s", err.msg);
  qv_model *m;
  qv_model_opts o = {.max_batch_tokens = 128, .max_logits = 64};
  cr_assert_eq(qv_model_load(path, be, &o, &m, &err), 0, "%s", err.msg);
  cr_assert_eq(qv_model_kv_init(m, 512, BS, &err), 0, "%s", err.msg);
  int32_t prompt[PROMPT + 1];
  for (int i = 0; i <= PROMPT; i++) prompt[i] = 3 + (i * 37 + 11) % 150;
  unsigned seed = 77;
  int32_t blk = 64;
  float *lg = malloc(sizeof(float) * 64 * (size_t)vocab);
  for (int step = 0; step < 2; step++) {
    batch_b b = {0};
    int32_t before = (rows - 1) / 3;
    add_fillers(&b, before, &blk, &seed);
    int32_t target_row = b.n_log;
    if (step == 0) add_seq(&b, prompt, PROMPT, 0, 0);
    else add_seq(&b, prompt + PROMPT, 1, PROMPT, 0);
    add_fillers(&b, rows - 1 - before, &blk, &seed);
    forward(m, &b, lg);
    memcpy(step == 0 ? r->prefill : r->decode, lg + (size_t)target_row * (size_t)vocab, sizeof(float) * (size_t)vocab);
  }
  free(lg);
  qv_model_destroy(m);
  qv_backend_destroy(be);
}

static void check_model(const char *path) {
  qv_model_desc d;
  qv_error err = {0};
  cr_assert_eq(qv_model_describe(path, &d, &err), 0, "%s", err.msg);
  int32_t vocab = d.cfg.vocab_size;
  size_t bytes = sizeof(float) * (size_t)vocab;
  result ref = {malloc(bytes), malloc(bytes)}, got = {malloc(bytes), malloc(bytes)};
  static const int32_t sizes[] = {1, 7, 64};
  int n_paths = 0;
  for (int isa = 0; isa < QV_CPU_ISA_COUNT; isa++) {
    if (!qv_cpu_isa_supported((qv_cpu_isa)isa)) continue;
    const char *name = qv_cpu_isa_name((qv_cpu_isa)isa);
    n_paths++;
    run_case(path, name, 1, 1, &ref, vocab);
    for (int threads = 1; threads <= 2; threads++)
      for (int si = 0; si < 3; si++) {
        run_case(path, name, threads, sizes[si], &got, vocab);
        cr_assert_eq(memcmp(ref.prefill, got.prefill, bytes), 0, "%s %s: prefill differs with %d rows, %d threads",
                     path ? path : "quiver-tiny", name, sizes[si], threads);
        cr_assert_eq(memcmp(ref.decode, got.decode, bytes), 0, "%s %s: decode differs with %d rows, %d threads",
                     path ? path : "quiver-tiny", name, sizes[si], threads);
      }
  }
  cr_assert_geq(n_paths, 1);
  free(ref.prefill), free(ref.decode), free(got.prefill), free(got.decode);
}

Test(cpu_invariance, tiny) { check_model(NULL); }

Test(cpu_invariance, stories260k) {
  char p[4096];
  if (!test_shared_path(p, sizeof p, "models/stories260K")) cr_skip_test("stories260K not in ../shared");
  check_model(p);
}

static void fixture(char *out, size_t cap, const char *name) {
  const char *src = getenv("QV_SOURCE_DIR");
  snprintf(out, cap, "%s/tests/fixtures/models/%s", src ? src : ".", name);
}

Test(cpu_invariance, bf16_fixture) {
  char p[4096];
  fixture(p, sizeof p, "llama-bf16");
  check_model(p);
}

/* The opt-in bf16 dot-product matmul (cpu_kern_bf16.h) keeps invariance too: on the avx512
 * path of a CPU with avx512_bf16 the BF16 matmuls use it; the other paths stay exact. */
Test(cpu_invariance, bf16_fixture_bf16dot) {
  char p[4096];
  fixture(p, sizeof p, "llama-bf16");
  if (!qv_cpu_features_get()->avx512_bf16) cr_skip_test("no avx512_bf16: the mode falls back to the exact path");
  setenv("QUIVER_CPU_BF16_DOT", "1", 1);
  check_model(p);
  unsetenv("QUIVER_CPU_BF16_DOT");
}

Test(cpu_invariance, f16_fixture) {
  char p[4096];
  fixture(p, sizeof p, "llama-f16");
  check_model(p);
}

/* Matrices of a half-precision checkpoint stay in its dtype as views of the mapped file. */
Test(cpu_invariance, weights_are_views_in_file_dtype) {
  char p[4096];
  fixture(p, sizeof p, "llama-bf16");
  qv_backend *be;
  qv_error err = {0};
  cr_assert_eq(qv_backend_create("cpu", NULL, &be, &err), 0, "%s", err.msg);
  qv_model *m;
  cr_assert_eq(qv_model_load(p, be, NULL, &m, &err), 0, "%s", err.msg);
  cr_assert_eq(m->tok_emb.dtype, QV_DTYPE_BF16);
  cr_assert(m->tok_emb.flags & QV_TENSOR_BORROWED);
  cr_assert_eq(m->layers[0].wq.dtype, QV_DTYPE_BF16);
  cr_assert(m->layers[0].w_down.flags & QV_TENSOR_BORROWED);
  cr_assert_eq(m->layers[0].attn_norm.dtype, QV_DTYPE_F32, "vectors are converted");
  /* 2 layers x 7 matrices + embedding + lm_head */
  cr_assert_eq(m->n_borrowed, 2 * 7 + 2);
  cr_assert_lt(qv_model_weight_bytes(m), qv_model_n_params(m) * 3, "weights were upcast");
  qv_model_destroy(m);
  qv_backend_destroy(be);
}
