/* Tensor parallelism on CPU ranks (models/model_tp.c): every Llama-family fixture at TP 2 and 4
 * (where its heads split) against TP 1 on random prompts (logits max|a-b|/max|b| <= 1e-5, greedy
 * continuations identical), batch invariance and run-to-run reproducibility within TP 2, the
 * per-rank weight and KV split, the clear refusals (shapes that do not split, other families,
 * sizes out of range), and the step encoding node 0 sends to other nodes. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "core/util.h"
#include "models/model.h"
#include "models/model_tp.h"
#include "quiver/error.h"

#define TOL 1e-5
#define BS 4          /* tokens per KV block */
#define NB 64         /* KV blocks */
#define MAXB 16       /* block table stride */
#define MAXT 48       /* tokens per forward */
#define PROMPT 12
#define N_DECODE 6

typedef struct tp_model {
  qv_backend *be;
  qv_model *m;
  int32_t vocab;
} tp_model;

static void fixture_dir(const char *name, char *out, size_t cap) {
  const char *src = getenv("QV_SOURCE_DIR");
  if (!strcmp(name, "quiver-tiny")) snprintf(out, cap, "quiver-tiny");
  else snprintf(out, cap, "%s/tests/fixtures/models/%s", src ? src : ".", name);
}

static int try_open(const char *name, int tp, tp_model *t, qv_error *err) {
  char dir[1024];
  fixture_dir(name, dir, sizeof dir);
  memset(t, 0, sizeof *t);
  qv_backend_opts bo = {.n_threads = 1};
  int rc = qv_backend_create("cpu", &bo, &t->be, err);
  if (rc) return rc;
  qv_model_opts mo = {.max_batch_tokens = MAXT, .max_logits = MAXT, .tp_size = tp, .n_threads = tp};
  rc = qv_model_load(dir, t->be, &mo, &t->m, err);
  if (!rc) rc = qv_model_kv_init(t->m, NB, BS, err);
  if (rc) {
    qv_model_destroy(t->m);
    qv_backend_destroy(t->be);
    memset(t, 0, sizeof *t);
    return rc;
  }
  t->vocab = qv_model_get_config(t->m)->vocab_size;
  return 0;
}

static void open_tp(const char *name, int tp, tp_model *t) {
  qv_error err = {0};
  int rc = try_open(name, tp, t, &err);
  cr_assert_eq(rc, 0, "%s tp %d: %s (%s)", name, tp, qv_strerror(rc), err.msg);
}

static void close_tp(tp_model *t) {
  qv_model_destroy(t->m);
  qv_backend_destroy(t->be);
}

/* One sequence's part of a step: tokens ids[0..n) at positions start.., its KV blocks. */
typedef struct part {
  const int32_t *ids;
  int32_t n, start;
  const int32_t *blocks; /* [MAXB] */
} part;

/* One forward over the parts; logits of every token row, [total][vocab]. */
static void step(tp_model *t, const part *ps, int n_parts, float *logits) {
  int32_t ids[MAXT], pos[MAXT], slots[MAXT], lidx[MAXT], qs[9], ctx[8], tables[8 * MAXB];
  int n = 0;
  qs[0] = 0;
  for (int s = 0; s < n_parts; s++) {
    for (int i = 0; i < ps[s].n; i++) {
      int32_t p = ps[s].start + i;
      ids[n] = ps[s].ids[i];
      pos[n] = p;
      slots[n] = ps[s].blocks[p / BS] * BS + p % BS;
      lidx[n] = n;
      n++;
    }
    qs[s + 1] = n;
    ctx[s] = ps[s].start + ps[s].n;
    memcpy(tables + s * MAXB, ps[s].blocks, sizeof(int32_t) * MAXB);
  }
  qv_batch b = {.n_tokens = n, .n_seqs = n_parts, .n_logits = n, .token_ids = ids, .positions = pos,
                .slot_mapping = slots, .seq_q_start = qs, .seq_ctx_len = ctx, .block_tables = tables,
                .max_blocks = MAXB, .logits_idx = lidx};
  qv_error err = {0};
  int rc = qv_model_forward(t->m, &b, logits, &err);
  cr_assert_eq(rc, 0, "forward: %s (%s)", qv_strerror(rc), err.msg);
}

static int32_t argmax(const float *x, int32_t n) {
  int32_t best = 0;
  for (int32_t i = 1; i < n; i++)
    if (x[i] > x[best]) best = i;
  return best;
}

/* A prompt prefill then greedy decodes: logits of every prompt row and of each decode step,
 * [PROMPT + N_DECODE][vocab], and the greedy tokens. */
static void run_greedy(tp_model *t, const int32_t *prompt, float *logits, int32_t *gen) {
  int32_t blocks[MAXB];
  for (int i = 0; i < MAXB; i++) blocks[i] = 3 + 2 * i; /* not 0..: tables are honoured */
  part p = {prompt, PROMPT, 0, blocks};
  step(t, &p, 1, logits);
  int32_t tok = argmax(logits + (size_t)(PROMPT - 1) * t->vocab, t->vocab);
  for (int d = 0; d < N_DECODE; d++) {
    gen[d] = tok;
    part q = {&gen[d], 1, PROMPT + d, blocks};
    float *row = logits + (size_t)(PROMPT + d) * t->vocab;
    step(t, &q, 1, row);
    tok = argmax(row, t->vocab);
  }
}

static void random_prompt(int32_t *ids, int n, int32_t vocab, uint64_t seed) {
  for (int i = 0; i < n; i++) ids[i] = (int32_t)(qv_splitmix64(&seed) % (uint64_t)vocab);
}

static double rel_err(const float *a, const float *b, int32_t n) {
  double d = 0, m = 0;
  for (int32_t i = 0; i < n; i++) {
    d = fmax(d, fabs((double)a[i] - b[i]));
    m = fmax(m, fabs((double)b[i]));
  }
  return d / (m > 0 ? m : 1);
}

/* TP size against TP 1: every row within TOL, the greedy tokens identical. */
static void check_against_tp1(const char *name, int tp) {
  tp_model one, many;
  open_tp(name, 1, &one);
  open_tp(name, tp, &many);
  cr_assert_eq(qv_model_tp_size(many.m), tp);
  int32_t V = one.vocab, prompt[PROMPT], g1[N_DECODE], gn[N_DECODE];
  random_prompt(prompt, PROMPT, V, 0x5eed0000u + (uint64_t)tp);
  size_t rows = PROMPT + N_DECODE;
  float *l1 = malloc(rows * V * sizeof *l1), *ln = malloc(rows * V * sizeof *ln);
  cr_assert(l1 && ln);
  run_greedy(&one, prompt, l1, g1);
  run_greedy(&many, prompt, ln, gn);
  for (size_t r = 0; r < rows; r++) {
    double e = rel_err(ln + r * V, l1 + r * V, V);
    cr_expect(e <= TOL, "%s tp %d row %zu: rel err %.3g > %.0e", name, tp, r, e, TOL);
  }
  cr_expect_arr_eq(gn, g1, sizeof g1, "%s tp %d: greedy continuation differs", name, tp);
  free(l1);
  free(ln);
  close_tp(&one);
  close_tp(&many);
}

#define FIXTURE_TP(id, name, tp) \
  Test(model_tp, id, .timeout = 120) { check_against_tp1(name, tp); }

FIXTURE_TP(llama_tp2, "llama", 2)
FIXTURE_TP(llama_tp4, "llama", 4)
FIXTURE_TP(llama_bf16_tp2, "llama-bf16", 2)
FIXTURE_TP(llama_bf16_tp4, "llama-bf16", 4)
FIXTURE_TP(llama_f16_tp2, "llama-f16", 2)
FIXTURE_TP(llama_f16_tp4, "llama-f16", 4)
FIXTURE_TP(llama_bias_tp2, "llama-bias", 2)
FIXTURE_TP(llama_bias_tp4, "llama-bias", 4)
FIXTURE_TP(llama_tied_tp2, "llama-tied", 2)
FIXTURE_TP(llama_tied_tp4, "llama-tied", 4)
FIXTURE_TP(llama_sharded_tp2, "llama-sharded", 2)
FIXTURE_TP(llama_sharded_tp4, "llama-sharded", 4)
FIXTURE_TP(rope_linear_tp2, "llama-rope-linear", 2)
FIXTURE_TP(rope_linear_tp4, "llama-rope-linear", 4)
FIXTURE_TP(rope_llama3_tp2, "llama-rope-llama3", 2) /* 1 KV head: replicated on both ranks */
FIXTURE_TP(rope_yarn_tp2, "llama-rope-yarn", 2)     /* 2 heads: TP 4 is refused (see refusals) */
FIXTURE_TP(mistral_swa_tp2, "mistral-swa", 2)
FIXTURE_TP(mistral_swa_tp4, "mistral-swa", 4)
FIXTURE_TP(qwen2_tp2, "qwen2", 2)
FIXTURE_TP(qwen2_tp4, "qwen2", 4)
FIXTURE_TP(qwen3_tp2, "qwen3", 2)
FIXTURE_TP(qwen3_tp4, "qwen3", 4)
FIXTURE_TP(tiny_tp2, "quiver-tiny", 2) /* vocabulary 259: uneven shards, padded gather */
FIXTURE_TP(tiny_tp4, "quiver-tiny", 4)

/* Batch invariance within TP 2: a sequence's logits are the same bits alone and batched with
 * another sequence, and two separately loaded TP 2 groups give the same bits (the shm
 * communicator's fixed reduction order). */
Test(model_tp, batch_invariance_and_reproducible, .timeout = 120) {
  tp_model a, b;
  open_tp("qwen2", 2, &a);
  open_tp("qwen2", 2, &b);
  int32_t V = a.vocab, pa[PROMPT], pb[PROMPT];
  random_prompt(pa, PROMPT, V, 11);
  random_prompt(pb, PROMPT, V, 12);
  int32_t blk_a[MAXB], blk_b[MAXB], blk_c[MAXB];
  for (int i = 0; i < MAXB; i++) blk_a[i] = i, blk_b[i] = 20 + i, blk_c[i] = 40 + i;
  float *alone = malloc(sizeof(float) * PROMPT * V), *mixed = malloc(sizeof(float) * 2 * PROMPT * V);
  float *other = malloc(sizeof(float) * PROMPT * V);
  cr_assert(alone && mixed && other);
  part p_alone = {pa, PROMPT, 0, blk_a};
  step(&a, &p_alone, 1, alone);
  part ps[2] = {{pb, PROMPT, 0, blk_b}, {pa, PROMPT, 0, blk_c}}; /* a second, after another */
  step(&a, ps, 2, mixed);
  cr_expect_arr_eq(mixed + (size_t)PROMPT * V, alone, sizeof(float) * PROMPT * V,
                   "tp 2: a sequence's logits depend on the batch");
  step(&b, &p_alone, 1, other);
  cr_expect_arr_eq(other, alone, sizeof(float) * PROMPT * V, "tp 2: two runs differ");
  free(alone);
  free(mixed);
  free(other);
  close_tp(&a);
  close_tp(&b);
}

/* Each rank holds its share: the sharded bytes split (within 10% of an even share) and the
 * replicated ones (norms) repeated; the KV heads split, or replicated when fewer than ranks. */
Test(model_tp, per_rank_bytes, .timeout = 120) {
  tp_model one, two;
  open_tp("llama", 1, &one);
  open_tp("llama", 2, &two);
  const qv_model_config *c = qv_model_get_config(one.m);
  int64_t w1, kv1, sum = 0;
  cr_assert_eq(qv_model_tp_rank_bytes(one.m, 0, &w1, &kv1), 0);
  int64_t replicated = (int64_t)(2 * c->n_layer + 1) * c->dim * 4; /* F32 norms */
  double share = (double)(w1 - replicated) / 2 + (double)replicated;
  for (int r = 0; r < 2; r++) {
    int64_t w, kv;
    cr_assert_eq(qv_model_tp_rank_bytes(two.m, r, &w, &kv), 0);
    cr_expect(fabs((double)w - share) <= 0.1 * share, "rank %d: %lld weight bytes, expected about %.0f", r,
              (long long)w, share);
    cr_expect_eq(kv * 2, kv1, "rank %d: KV bytes per token %lld of %lld", r, (long long)kv, (long long)kv1);
    sum += w;
  }
  cr_expect_eq(sum, w1 + replicated, "the ranks hold %lld bytes, TP 1 %lld + replicated %lld", (long long)sum,
               (long long)w1, (long long)replicated);
  int64_t w, kv;
  cr_expect_eq(qv_model_tp_rank_bytes(two.m, 2, &w, &kv), QV_EINVAL);
  close_tp(&one);
  close_tp(&two);
  /* One KV head over two ranks: each rank keeps a copy. */
  open_tp("llama-rope-llama3", 1, &one);
  open_tp("llama-rope-llama3", 2, &two);
  cr_assert_eq(qv_model_tp_rank_bytes(one.m, 0, &w1, &kv1), 0);
  cr_assert_eq(qv_model_tp_rank_bytes(two.m, 1, &w, &kv), 0);
  cr_expect_eq(kv, kv1, "a replicated KV head is a full copy per rank");
  close_tp(&one);
  close_tp(&two);
}

static void expect_refused(const char *name, int tp, int code, const char *needle) {
  tp_model t;
  qv_error err = {0};
  int rc = try_open(name, tp, &t, &err);
  cr_expect_eq(rc, code, "%s tp %d: rc %d (%s)", name, tp, rc, err.msg);
  cr_expect(strstr(err.msg, needle) != NULL, "%s tp %d: message '%s' lacks '%s'", name, tp, err.msg, needle);
  if (!rc) close_tp(&t);
}

Test(model_tp, refusals) {
  expect_refused("llama-rope-llama3", 4, QV_EUNSUPPORTED, "does not split 2 attention heads");
  expect_refused("llama-rope-yarn", 4, QV_EUNSUPPORTED, "does not split 2 attention heads");
  expect_refused("quiver-tiny", 3, QV_EUNSUPPORTED, "does not split 4 attention heads over 2 KV heads");
  expect_refused("gemma2", 2, QV_EUNSUPPORTED, "Llama family");
  expect_refused("llama", 65, QV_EINVAL, "outside 1..64");
  expect_refused("llama", -1, QV_EINVAL, "outside 1..64");
}

/* A step on the wire: a valid batch round-trips; every truncation, any count beyond the limits
 * and any inconsistent layout is refused (QV_EFORMAT) without reading past the payload. */
Test(model_tp, step_encoding_refuses_malformed) {
  int32_t ids[5] = {1, 2, 3, 4, 5}, pos[5] = {0, 1, 2, 0, 1}, slots[5] = {0, 1, 2, 8, 9};
  int32_t qs[3] = {0, 3, 5}, ctx[2] = {3, 2}, tables[2 * 2] = {0, 1, 2, 3}, lidx[2] = {2, 4};
  qv_batch b = {.n_tokens = 5, .n_seqs = 2, .n_logits = 2, .token_ids = ids, .positions = pos,
                .slot_mapping = slots, .seq_q_start = qs, .seq_ctx_len = ctx, .block_tables = tables,
                .max_blocks = 2, .logits_idx = lidx};
  uint8_t *buf = NULL;
  size_t cap = 0, n = 0;
  cr_assert_eq(tpm_batch_encode(&b, &buf, &cap, &n), 0);
  tpm_batch_buf d = {0};
  qv_error err = {0};
  cr_assert_eq(tpm_batch_decode(buf, n, 8, 8, &d, &err), 0, "%s", err.msg);
  cr_expect_eq(d.b.n_tokens, 5);
  cr_expect_arr_eq(d.b.slot_mapping, slots, sizeof slots);
  cr_expect_arr_eq(d.b.block_tables, tables, sizeof tables);
  cr_expect_arr_eq(d.b.logits_idx, lidx, sizeof lidx);
  /* Every truncation (and one byte too many). */
  uint8_t *copy = malloc(n + 1);
  cr_assert(copy);
  for (size_t k = 0; k <= n + 1; k++) {
    if (k == n) continue;
    memcpy(copy, buf, n < k ? n : k);
    if (k == n + 1) copy[n] = 0;
    err = (qv_error){0};
    cr_expect_eq(tpm_batch_decode(copy, k, 8, 8, &d, &err), QV_EFORMAT, "%zu of %zu bytes accepted", k, n);
  }
  /* Limits: more tokens or logits than the model takes. */
  cr_expect_eq(tpm_batch_decode(buf, n, 4, 8, &d, &err), QV_EFORMAT);
  cr_expect_eq(tpm_batch_decode(buf, n, 8, 1, &d, &err), QV_EFORMAT);
  /* Seeded flips of single bytes: refused or decoded into a consistent layout, never a crash. */
  uint64_t seed = 42;
  for (int t = 0; t < 2000; t++) {
    memcpy(copy, buf, n);
    size_t at = (size_t)(qv_splitmix64(&seed) % n);
    copy[at] ^= (uint8_t)(1u + qv_splitmix64(&seed) % 255u);
    err = (qv_error){0};
    int rc = tpm_batch_decode(copy, n, 8, 8, &d, &err);
    cr_assert(rc == 0 || rc == QV_EFORMAT, "rc %d", rc);
    if (!rc) {
      cr_assert_eq(d.b.seq_q_start[0], 0);
      cr_assert_eq(d.b.seq_q_start[d.b.n_seqs], d.b.n_tokens);
      for (int32_t i = 0; i < d.b.n_logits; i++) cr_assert(d.b.logits_idx[i] >= 0 && d.b.logits_idx[i] < d.b.n_tokens);
    }
  }
  /* Inconsistent layouts. */
  int32_t bad_qs[3] = {0, 5, 5}, bad_l[2] = {2, 5};
  qv_batch c = b;
  c.seq_q_start = bad_qs;
  cr_assert_eq(tpm_batch_encode(&c, &buf, &cap, &n), 0);
  cr_expect_eq(tpm_batch_decode(buf, n, 8, 8, &d, &err), QV_EFORMAT);
  c = b;
  c.logits_idx = bad_l;
  cr_assert_eq(tpm_batch_encode(&c, &buf, &cap, &n), 0);
  cr_expect_eq(tpm_batch_decode(buf, n, 8, 8, &d, &err), QV_EFORMAT);
  free(copy);
  free(buf);
  free(d.buf);
}

/* A rank group of one (opts.tp_force: what the GPU test runs through NCCL) is the plain model:
 * its embedding shard is the whole table, the sum over one rank and the gather copy every value
 * unchanged, so the logits are the same bits. */
Test(model_tp, tp1_group_is_the_plain_model, .timeout = 120) {
  const char *names[] = {"quiver-tiny", "llama", "qwen2"};
  for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
    char dir[1024];
    fixture_dir(names[k], dir, sizeof dir);
    tp_model plain, group;
    open_tp(names[k], 1, &plain);
    qv_error err = {0};
    qv_backend_opts bo = {.n_threads = 1};
    memset(&group, 0, sizeof group);
    cr_assert_eq(qv_backend_create("cpu", &bo, &group.be, &err), 0);
    qv_model_opts mo = {.max_batch_tokens = MAXT, .max_logits = MAXT, .tp_size = 1, .tp_force = 1, .n_threads = 1};
    cr_assert_eq(qv_model_load(dir, group.be, &mo, &group.m, &err), 0, "%s: %s", names[k], err.msg);
    cr_assert_eq(qv_model_kv_init(group.m, NB, BS, &err), 0, "%s", err.msg);
    group.vocab = plain.vocab;
    int32_t V = plain.vocab, prompt[PROMPT], g1[N_DECODE], g2[N_DECODE];
    random_prompt(prompt, PROMPT, V, 77 + k);
    size_t rows = PROMPT + N_DECODE;
    float *l1 = malloc(rows * V * sizeof *l1), *l2 = malloc(rows * V * sizeof *l2);
    cr_assert(l1 && l2);
    run_greedy(&plain, prompt, l1, g1);
    run_greedy(&group, prompt, l2, g2);
    cr_expect_arr_eq(l2, l1, rows * V * sizeof *l1, "%s: a TP 1 group differs from the plain model", names[k]);
    cr_expect_arr_eq(g2, g1, sizeof g1);
    int64_t w1, kv1, w2, kv2;
    cr_assert_eq(qv_model_tp_rank_bytes(plain.m, 0, &w1, &kv1), 0);
    cr_assert_eq(qv_model_tp_rank_bytes(group.m, 0, &w2, &kv2), 0);
    cr_expect_eq(w2, w1);
    cr_expect_eq(kv2, kv1);
    free(l1);
    free(l2);
    close_tp(&plain);
    close_tp(&group);
  }
}

/* A backend of another kind than the ranks can be: only its name is read before the refusal. */
static void expect_backend_refused(const char *backend_name, const char *needle) {
  qv_backend_ops ops = {.name = backend_name};
  qv_backend fake = {.ops = &ops};
  qv_model *m = NULL;
  qv_error err = {0};
  qv_model_opts mo = {.max_batch_tokens = MAXT, .tp_size = 2, .n_threads = 2};
  int rc = qv_model_load(NULL, &fake, &mo, &m, &err);
  cr_expect_eq(rc, QV_EUNSUPPORTED, "%s: rc %d (%s)", backend_name, rc, err.msg);
  cr_expect(strstr(err.msg, needle) != NULL, "%s: message '%s' lacks '%s'", backend_name, err.msg, needle);
  cr_expect_null(m);
}

/* cuda ranks need the NCCL communicator: a build without it refuses them by name, before any
 * backend is made; a backend that is neither cpu nor cuda is refused too. */
Test(model_tp, backend_kinds_refused_clearly) {
  if (!qv_comm_nccl_available()) expect_backend_refused("cuda", "without NCCL");
  expect_backend_refused("vulkan", "cpu or cuda ranks, not vulkan");
}

/* INIT, node 0's first message: both communicator kinds round-trip; every other length, another
 * model or group shape, another communicator kind (a cpu node joining cuda ranks), a malformed
 * shm name, and an NCCL id in a shm group are refused without trusting the payload. */
Test(model_tp, init_encoding_round_trip_and_refusals) {
  qv_model_config cfg = {0};
  cfg.vocab_size = 259, cfg.dim = 64, cfg.n_layer = 2, cfg.n_head = 4, cfg.n_kv_head = 2, cfg.ffn_dim = 128;
  for (int comm = TPM_COMM_SHM; comm <= TPM_COMM_NCCL; comm++) {
    tpm_init want, sent, got;
    tpm_init_fill(&cfg, 4, 2, comm, &want);
    sent = want;
    memcpy(sent.shm_name, "0123456789abcdef0123456789abcdef", 33);
    if (comm == TPM_COMM_NCCL)
      for (int i = 0; i < QV_COMM_NCCL_ID_BYTES; i++) sent.nccl_id[i] = (uint8_t)(i * 37 + 1);
    uint8_t buf[TPM_INIT_BYTES + 1];
    tpm_init_encode(&sent, buf);
    qv_error err = {0};
    cr_assert_eq(tpm_init_decode(buf, TPM_INIT_BYTES, &want, &got, &err), 0, "%s", err.msg);
    cr_expect_str_eq(got.shm_name, sent.shm_name);
    cr_expect_arr_eq(got.nccl_id, sent.nccl_id, QV_COMM_NCCL_ID_BYTES);
    cr_expect_eq(got.comm, comm);
    /* Every truncation, and one byte too many. */
    buf[TPM_INIT_BYTES] = 0;
    for (size_t k = 0; k <= TPM_INIT_BYTES + 1; k++) {
      if (k == TPM_INIT_BYTES) continue;
      cr_expect_eq(tpm_init_decode(buf, k, &want, &got, &err), QV_EFORMAT, "%zu bytes accepted", k);
    }
    /* Another tag byte. */
    uint8_t copy[TPM_INIT_BYTES];
    memcpy(copy, buf, sizeof copy);
    copy[0] = 'S';
    cr_expect_eq(tpm_init_decode(copy, sizeof copy, &want, &got, &err), QV_EFORMAT);
    /* Another shape: each field in turn. */
    for (int f = 0; f < TPM_INIT_WORDS - 1; f++) {
      memcpy(copy, buf, sizeof copy);
      copy[1 + 4 * f] ^= 1;
      cr_expect_eq(tpm_init_decode(copy, sizeof copy, &want, &got, &err), QV_EINVAL, "field %d", f);
      cr_expect(strstr(err.msg, "another model or group shape") != NULL, "%s", err.msg);
    }
    /* The other communicator kind: a cpu node in a cuda group, or the reverse. */
    tpm_init other = want;
    other.comm = comm == TPM_COMM_SHM ? TPM_COMM_NCCL : TPM_COMM_SHM;
    err = (qv_error){0};
    cr_expect_eq(tpm_init_decode(buf, TPM_INIT_BYTES, &other, &got, &err), QV_EINVAL);
    cr_expect(strstr(err.msg, "--device") != NULL, "%s", err.msg);
    /* A group name that is not 32 lowercase hex characters. */
    memcpy(copy, buf, sizeof copy);
    copy[1 + 4 * TPM_INIT_WORDS + 5] = '/';
    cr_expect_eq(tpm_init_decode(copy, sizeof copy, &want, &got, &err), QV_EFORMAT);
    /* Seeded single-byte flips: refused or decoded, never a crash; the shape is always checked. */
    uint64_t seed = 7 + (uint64_t)comm;
    for (int t = 0; t < 2000; t++) {
      memcpy(copy, buf, sizeof copy);
      size_t at = (size_t)(qv_splitmix64(&seed) % sizeof copy);
      copy[at] ^= (uint8_t)(1u + qv_splitmix64(&seed) % 255u);
      int rc = tpm_init_decode(copy, sizeof copy, &want, &got, &err);
      cr_assert(rc == 0 || rc == QV_EFORMAT || rc == QV_EINVAL, "rc %d", rc);
      if (!rc) cr_assert(at > 4 * TPM_INIT_WORDS, "a flip of byte %zu in the header was accepted", at);
    }
  }
  /* A shm group's INIT must not carry an NCCL id. */
  tpm_init want, got;
  tpm_init_fill(&cfg, 2, 2, TPM_COMM_SHM, &want);
  tpm_init sent = want;
  memcpy(sent.shm_name, "ffffffffffffffffffffffffffffffff", 33);
  sent.nccl_id[17] = 1;
  uint8_t buf[TPM_INIT_BYTES];
  tpm_init_encode(&sent, buf);
  qv_error err = {0};
  cr_expect_eq(tpm_init_decode(buf, sizeof buf, &want, &got, &err), QV_EFORMAT);
}
