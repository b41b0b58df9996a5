/* Conformance of the loader + Llama-family model + CPU backend against Hugging Face transformers.
 *
 * Each folder of tests/fixtures/models/ (written by scripts/make-fixtures) is a tiny random-weight
 * HF checkpoint plus reference.json: float32 logits for every prompt position and for 8 greedy
 * decode steps, computed by transformers with its KV cache. For each fixture this test loads the
 * directory on the "cpu" backend and checks:
 *   - the parsed config (architecture, heads, window, biases, tying, rope scaling, eos list) and
 *     the parameter count transformers reports;
 *   - prefill: the 12-token prompt as one sequence in one qv_batch, logits for every row;
 *   - decode: 8 steps of one token each, feeding decode_ids, against decode_logits;
 *   - chunked prefill: the prompt as 5 + 7 tokens in two steps;
 *   - batch invariance: the same sequence next to a different one (a prefill beside it, then
 *     decodes and a prefill chunk beside its decodes) gives bit-identical logits to running alone
 *     (DESIGN.md: "the same result for a sequence whether it runs alone or in a batch");
 *   - the config transformers 5 itself wrote (config.transformers5.json: rope_parameters, dtype,
 *     layer_types) in place of the classic config.json parses the same and gives the same
 *     prefill logits.
 * KV blocks are deliberately scattered (non-contiguous, non-increasing block ids) so the paged
 * addressing is exercised too.
 *
 * Tolerance: for every logits row, max_j |quiver_j - hf_j| / max_j |hf_j| <= 1e-4. The
 * references are fp32 and quiver's CPU backend computes in fp32 on upcast weights, so the only
 * differences are summation order; 1e-4 leaves two orders of magnitude of headroom over what
 * that costs at these sizes while still catching any wrong formula (a wrong RoPE, window, bias or
 * norm moves logits by 1e-2 or more). The worst error per fixture is printed to stderr. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <dirent.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/backend.h"
#include "models/model.h"
#include "quiver/error.h"

#define TOL 1e-4
#define BLOCK_SIZE 4
#define N_BLOCKS 40
#define MAX_BLOCKS 8  /* row stride of the block tables; 8 * 4 = 32 tokens >= 12 + 8 + 1 */
#define N_DECODE 8
#define MAX_PROMPT 64

/* The reference of one fixture, as read from reference.json. */
typedef struct fx_ref {
  int32_t n_prompt;
  int32_t vocab;
  int64_t n_params;             /* as transformers counts them (tied embedding once) */
  int32_t prompt[MAX_PROMPT];   /* [n_prompt] */
  int32_t decode_ids[N_DECODE]; /* [N_DECODE] */
  float *prefill;               /* [n_prompt][vocab], owned (free) */
  float *decode;                /* [N_DECODE][vocab], owned (free) */
} fx_ref;

/* One sequence's share of a step: n tokens at positions start.. start+n-1. */
typedef struct seq_part {
  const int32_t *tokens; /* [n], borrowed */
  int32_t n;
  int32_t start;         /* position of tokens[0] == tokens already in the cache */
  const int32_t *blocks; /* [MAX_BLOCKS] block table of the sequence, borrowed */
} seq_part;

/* Expected parse of each fixture's config.json. */
typedef struct fx_expect {
  const char *name;
  const char *arch;
  int32_t n_head, n_kv_head, head_dim, sliding_window;
  int32_t tie, qkv_bias, o_bias, qk_norm;
  qv_rope_scaling_type rope;
  const char *weight_dtype;
  int32_t n_eos, eos0, eos1;
} fx_expect;

static const fx_expect EXPECT[] = {
    {"llama", "llama", 4, 2, 16, 0, 0, 0, 0, 0, QV_ROPE_SCALING_NONE, "F32", 2, 2, 7},
    {"llama-tied", "llama", 4, 4, 8, 0, 1, 0, 0, 0, QV_ROPE_SCALING_NONE, "F32", 1, 2, -1},
    {"llama-rope-llama3", "llama", 2, 1, 16, 0, 0, 0, 0, 0, QV_ROPE_SCALING_LLAMA3, "F32", 1, 2, -1},
    {"llama-rope-yarn", "llama", 2, 2, 16, 0, 0, 0, 0, 0, QV_ROPE_SCALING_YARN, "F32", 1, 2, -1},
    {"llama-rope-linear", "llama", 4, 2, 8, 0, 0, 0, 0, 0, QV_ROPE_SCALING_LINEAR, "F32", 1, 2, -1},
    {"llama-bf16", "llama", 4, 2, 8, 0, 0, 0, 0, 0, QV_ROPE_SCALING_NONE, "BF16", 1, 2, -1},
    {"llama-f16", "llama", 4, 2, 8, 0, 0, 0, 0, 0, QV_ROPE_SCALING_NONE, "F16", 1, 2, -1},
    {"llama-sharded", "llama", 4, 2, 8, 0, 0, 0, 0, 0, QV_ROPE_SCALING_NONE, "F32", 1, 2, -1},
    {"llama-bias", "llama", 4, 2, 8, 0, 0, 1, 1, 0, QV_ROPE_SCALING_NONE, "F32", 1, 2, -1},
    {"mistral-swa", "mistral", 4, 2, 8, 6, 0, 0, 0, 0, QV_ROPE_SCALING_NONE, "F32", 1, 2, -1},
    /* qwen2's config has sliding_window 8 with use_sliding_window false: no window. */
    {"qwen2", "qwen2", 4, 2, 8, 0, 1, 1, 0, 0, QV_ROPE_SCALING_NONE, "F32", 1, 3, -1},
    {"qwen3", "qwen3", 4, 2, 8, 0, 0, 0, 0, 1, QV_ROPE_SCALING_NONE, "F32", 1, 2, -1},
    /* Families (scripts/families_fixtures.py). */
    {"gemma2", "gemma2", 4, 2, 8, 4, 1, 0, 0, 0, QV_ROPE_SCALING_NONE, "F32", 1, 2, -1},
    {"gemma3", "gemma3_text", 4, 2, 8, 4, 1, 0, 0, 1, QV_ROPE_SCALING_LINEAR, "F32", 1, 2, -1},
    {"gemma3-multimodal", "gemma3", 4, 2, 8, 4, 1, 0, 0, 1, QV_ROPE_SCALING_LINEAR, "F32", 1, 2, -1},
    {"phi3-longrope-short", "phi3", 4, 2, 16, 5, 0, 0, 0, 0, QV_ROPE_SCALING_LONGROPE, "F32", 1, 2, -1},
    {"phi3-longrope-long", "phi3", 4, 2, 16, 0, 0, 0, 0, 0, QV_ROPE_SCALING_LONGROPE, "F32", 1, 2, -1},
    {"mixtral", "mixtral", 4, 2, 8, 0, 0, 0, 0, 0, QV_ROPE_SCALING_NONE, "F32", 1, 2, -1},
    {"qwen3-moe", "qwen3_moe", 4, 2, 8, 0, 0, 0, 0, 1, QV_ROPE_SCALING_NONE, "F32", 1, 2, -1},
    {"qwen3-moe-nonorm", "qwen3_moe", 4, 2, 8, 0, 0, 0, 0, 1, QV_ROPE_SCALING_NONE, "F32", 1, 2, -1},
    {"gpt-oss", "gpt_oss", 4, 2, 16, 4, 0, 1, 1, 0, QV_ROPE_SCALING_YARN, "F32", 1, 2, -1},
    {"gpt-oss-mxfp4", "gpt_oss", 4, 2, 16, 4, 0, 1, 1, 0, QV_ROPE_SCALING_YARN, "mixed", 1, 2, -1},
};

static void fixture_dir(const char *name, char *out, size_t cap) {
  const char *src = getenv("QV_SOURCE_DIR");
  snprintf(out, cap, "%s/tests/fixtures/models/%s", src ? src : ".", name);
}

static char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  char *buf = NULL;
  if (fseek(f, 0, SEEK_END) == 0) {
    long n = ftell(f);
    if (n >= 0 && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)n + 1))) {
      if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
      } else {
        buf[n] = 0;
        if (len) *len = (size_t)n;
      }
    }
  }
  fclose(f);
  return buf;
}

static int read_ints(const cJSON *arr, int32_t *out, int cap) {
  cr_assert(cJSON_IsArray(arr));
  int n = cJSON_GetArraySize(arr);
  cr_assert(n > 0 && n <= cap, "array of %d ints (cap %d)", n, cap);
  int i = 0;
  const cJSON *it;
  cJSON_ArrayForEach(it, arr) {
    cr_assert(cJSON_IsNumber(it));
    out[i++] = (int32_t)it->valuedouble;
  }
  return n;
}

/* rows x vocab floats from an array of arrays; returns malloc'd memory. */
static float *read_rows(const cJSON *arr, int rows, int *vocab) {
  cr_assert(cJSON_IsArray(arr) && cJSON_GetArraySize(arr) == rows, "want %d rows", rows);
  int v = cJSON_GetArraySize(cJSON_GetArrayItem(arr, 0));
  cr_assert(v > 0);
  if (*vocab == 0) *vocab = v;
  cr_assert_eq(v, *vocab);
  float *out = malloc(sizeof(float) * (size_t)rows * (size_t)v);
  cr_assert(out);
  int r = 0;
  const cJSON *row;
  cJSON_ArrayForEach(row, arr) {
    cr_assert(cJSON_IsArray(row) && cJSON_GetArraySize(row) == v);
    int j = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, row) {
      cr_assert(cJSON_IsNumber(x));
      out[(size_t)r * v + j++] = (float)x->valuedouble;
    }
    r++;
  }
  return out;
}

static void ref_load(const char *dir, fx_ref *ref) {
  char path[1100];
  snprintf(path, sizeof path, "%s/reference.json", dir);
  char *text = read_file(path, NULL);
  cr_assert(text, "cannot read %s (QV_SOURCE_DIR=%s)", path, getenv("QV_SOURCE_DIR"));
  cJSON *root = cJSON_Parse(text);
  free(text);
  cr_assert(root, "%s: bad JSON", path);
  memset(ref, 0, sizeof *ref);
  const cJSON *np = cJSON_GetObjectItem(root, "n_params");
  cr_assert(cJSON_IsNumber(np) && np->valuedouble > 0);
  ref->n_params = (int64_t)np->valuedouble;
  ref->n_prompt = read_ints(cJSON_GetObjectItem(root, "prompt_ids"), ref->prompt, MAX_PROMPT);
  cr_assert_eq(read_ints(cJSON_GetObjectItem(root, "decode_ids"), ref->decode_ids, N_DECODE),
               N_DECODE);
  ref->prefill = read_rows(cJSON_GetObjectItem(root, "prefill_logits"), ref->n_prompt, &ref->vocab);
  ref->decode = read_rows(cJSON_GetObjectItem(root, "decode_logits"), N_DECODE, &ref->vocab);
  cJSON_Delete(root);
}

/* max |a-b| / max |b| over one row of n. */
static double row_err(const float *a, const float *b, int n) {
  double d = 0, m = 0;
  for (int i = 0; i < n; i++) {
    d = fmax(d, fabs((double)a[i] - b[i]));
    m = fmax(m, fabs((double)b[i]));
  }
  return m > 0 ? d / m : d;
}

static int argmax_margin(const float *x, int n, double *margin) {
  int best = 0;
  for (int i = 1; i < n; i++)
    if (x[i] > x[best]) best = i;
  double second = -INFINITY, m = 0;
  for (int i = 0; i < n; i++) {
    if (i != best) second = fmax(second, x[i]);
    m = fmax(m, fabs(x[i]));
  }
  *margin = (x[best] - second) / (m > 0 ? m : 1);
  return best;
}

/* Compares rows of got against want; returns the worst row error, fails the test over TOL. */
static double check_rows(const char *fx, const char *what, const float *got, const float *want,
                         int rows, int vocab) {
  double worst = 0;
  for (int r = 0; r < rows; r++) {
    double e = row_err(got + (size_t)r * vocab, want + (size_t)r * vocab, vocab);
    cr_assert(isfinite(e), "%s %s row %d: non-finite logits", fx, what, r);
    cr_expect(e <= TOL, "%s %s row %d: rel err %.3g > %.0e (got[0]=%.6g want[0]=%.6g)", fx, what,
              r, e, TOL, got[(size_t)r * vocab], want[(size_t)r * vocab]);
    worst = fmax(worst, e);
  }
  return worst;
}

/* Runs one forward over the parts (in order) and returns the logits of every token row in
 * logits [total tokens][vocab]. */
static void run_step(qv_model *m, const seq_part *parts, int n_parts, float *logits) {
  int32_t ids[MAX_PROMPT], pos[MAX_PROMPT], slots[MAX_PROMPT], lidx[MAX_PROMPT];
  int32_t q_start[8], ctx[8], tables[8 * MAX_BLOCKS];
  cr_assert(n_parts < 8);
  int n = 0;
  q_start[0] = 0;
  for (int s = 0; s < n_parts; s++) {
    const seq_part *p = &parts[s];
    for (int i = 0; i < p->n; i++) {
      cr_assert(n < MAX_PROMPT);
      int32_t ps = p->start + i;
      cr_assert(ps / BLOCK_SIZE < MAX_BLOCKS && p->blocks[ps / BLOCK_SIZE] >= 0);
      ids[n] = p->tokens[i];
      pos[n] = ps;
      slots[n] = p->blocks[ps / BLOCK_SIZE] * BLOCK_SIZE + ps % BLOCK_SIZE;
      lidx[n] = n;
      n++;
    }
    q_start[s + 1] = n;
    ctx[s] = p->start + p->n;
    memcpy(tables + s * MAX_BLOCKS, p->blocks, sizeof(int32_t) * MAX_BLOCKS);
  }
  qv_batch b = {.n_tokens = n, .n_seqs = n_parts, .n_logits = n, .token_ids = ids,
                .positions = pos, .slot_mapping = slots, .seq_q_start = q_start,
                .seq_ctx_len = ctx, .block_tables = tables, .max_blocks = MAX_BLOCKS,
                .logits_idx = lidx};
  qv_error err = {0};
  int rc = qv_model_forward(m, &b, logits, &err);
  cr_assert_eq(rc, 0, "forward: %s (%s)", qv_strerror(rc), err.msg);
}

static void check_config(const fx_expect *x, const qv_model_config *c, int vocab) {
  cr_expect_str_eq(c->arch, x->arch, "%s: arch", x->name);
  cr_expect_eq(c->vocab_size, vocab, "%s: vocab %d", x->name, c->vocab_size);
  cr_expect_eq(c->n_layer, 2, "%s: n_layer", x->name);
  cr_expect_eq(c->n_head, x->n_head, "%s: n_head %d", x->name, c->n_head);
  cr_expect_eq(c->n_kv_head, x->n_kv_head, "%s: n_kv_head %d", x->name, c->n_kv_head);
  cr_expect_eq(c->head_dim, x->head_dim, "%s: head_dim %d", x->name, c->head_dim);
  cr_expect_eq(c->sliding_window, x->sliding_window, "%s: sliding_window %d", x->name,
               c->sliding_window);
  cr_expect_eq(!!c->tie_embeddings, x->tie, "%s: tie_embeddings", x->name);
  cr_expect_eq(!!c->qkv_bias, x->qkv_bias, "%s: qkv_bias", x->name);
  cr_expect_eq(!!c->o_bias, x->o_bias, "%s: o_bias", x->name);
  cr_expect_eq(!!c->qk_norm, x->qk_norm, "%s: qk_norm", x->name);
  cr_expect_eq(c->rope_scaling, x->rope, "%s: rope_scaling %d", x->name, (int)c->rope_scaling);
  cr_expect_str_eq(c->weight_dtype, x->weight_dtype, "%s: weight_dtype", x->name);
  cr_expect_eq(c->n_eos, x->n_eos, "%s: n_eos %d", x->name, c->n_eos);
  if (c->n_eos >= 1) cr_expect_eq(c->eos_ids[0], x->eos0, "%s: eos[0]", x->name);
  if (c->n_eos >= 2 && x->n_eos >= 2) cr_expect_eq(c->eos_ids[1], x->eos1, "%s: eos[1]", x->name);
}

static void run_fixture_v5_config(const char *name, const fx_expect *x, const fx_ref *ref);

static void run_fixture(const char *name) {
  const fx_expect *x = NULL;
  for (size_t i = 0; i < sizeof EXPECT / sizeof EXPECT[0]; i++)
    if (!strcmp(EXPECT[i].name, name)) x = &EXPECT[i];
  cr_assert(x, "no expectations for %s", name);

  char dir[1024];
  fixture_dir(name, dir, sizeof dir);
  fx_ref ref;
  ref_load(dir, &ref);
  const int V = ref.vocab, P = ref.n_prompt;
  cr_assert(P >= 8 && P + N_DECODE + 4 <= MAX_BLOCKS * BLOCK_SIZE);

  qv_error err = {0};
  qv_backend *be = NULL;
  /* Two workers: batch invariance must hold however the thread pool splits the rows. */
  qv_backend_opts bo = {.n_threads = 2};
  int rc = qv_backend_create("cpu", &bo, &be, &err);
  cr_assert_eq(rc, 0, "backend: %s", err.msg);
  qv_model *m = NULL;
  qv_model_opts mo = {.max_batch_tokens = MAX_PROMPT, .max_logits = MAX_PROMPT};
  rc = qv_model_load(dir, be, &mo, &m, &err);
  cr_assert_eq(rc, 0, "load %s: %s (%s)", dir, qv_strerror(rc), err.msg);
  check_config(x, qv_model_get_config(m), V);
  cr_expect_eq(qv_model_n_params(m), ref.n_params, "%s: %lld parameters, HF counts %lld", name,
               (long long)qv_model_n_params(m), (long long)ref.n_params);
  rc = qv_model_kv_init(m, N_BLOCKS, BLOCK_SIZE, &err);
  cr_assert_eq(rc, 0, "kv_init: %s", err.msg);

  /* Scattered block tables, disjoint between the runs; -1 marks unused entries. */
  const int32_t blk_solo[MAX_BLOCKS] = {7, 2, 9, 4, 11, 30, -1, -1};
  const int32_t blk_chunk[MAX_BLOCKS] = {13, 1, 15, 6, 17, 31, -1, -1};
  const int32_t blk_a[MAX_BLOCKS] = {0, 3, 5, 8, 10, 32, -1, -1};
  const int32_t blk_b[MAX_BLOCKS] = {12, 14, 16, 18, 19, 20, 33, -1};

  float *solo = malloc(sizeof(float) * (size_t)(P + N_DECODE) * V); /* [P + 8][V] */
  float *got = malloc(sizeof(float) * (size_t)MAX_PROMPT * V);      /* [<= 64][V] */
  cr_assert(solo && got);

  /* 1. Prefill as one sequence, then 8 single-token decode steps. */
  seq_part pre = {ref.prompt, P, 0, blk_solo};
  run_step(m, &pre, 1, solo);
  double e_prefill = check_rows(name, "prefill", solo, ref.prefill, P, V);
  double margin;
  int top = argmax_margin(solo + (size_t)(P - 1) * V, V, &margin);
  if (margin > 10 * TOL)
    cr_expect_eq(top, ref.decode_ids[0], "%s: greedy token after prefill %d, HF %d", name, top,
                 ref.decode_ids[0]);
  double e_decode = 0;
  for (int i = 0; i < N_DECODE; i++) {
    seq_part d = {&ref.decode_ids[i], 1, P + i, blk_solo};
    float *row = solo + (size_t)(P + i) * V;
    run_step(m, &d, 1, row);
    e_decode = fmax(e_decode, check_rows(name, "decode", row, ref.decode + (size_t)i * V, 1, V));
    top = argmax_margin(row, V, &margin);
    if (i + 1 < N_DECODE && margin > 10 * TOL)
      cr_expect_eq(top, ref.decode_ids[i + 1], "%s: greedy token at decode %d: %d, HF %d", name,
                   i, top, ref.decode_ids[i + 1]);
  }

  /* 2. Chunked prefill: 5 tokens, then the other P - 5 with the first 5 in the cache. */
  const int c1 = 5;
  seq_part ch1 = {ref.prompt, c1, 0, blk_chunk};
  run_step(m, &ch1, 1, got);
  seq_part ch2 = {ref.prompt + c1, P - c1, c1, blk_chunk};
  run_step(m, &ch2, 1, got + (size_t)c1 * V);
  double e_chunk = check_rows(name, "chunked prefill", got, ref.prefill, P, V);

  /* 3. Batch invariance: sequence B (different tokens) beside A in every step, in both orders,
   * with B sending a 3-token prefill chunk while A decodes. A's rows must equal the solo run. */
  int32_t b_tok[32];
  uint32_t s = 0x9e3779b9u ^ (uint32_t)V;
  for (int i = 0; i < 32; i++) {
    s = s * 1664525u + 1013904223u;
    b_tok[i] = (int32_t)((s >> 8) % (uint32_t)V);
  }
  int b_len = 7;
  seq_part both[2] = {{b_tok, b_len, 0, blk_b}, {ref.prompt, P, 0, blk_a}};
  run_step(m, both, 2, got);
  cr_expect(!memcmp(got + (size_t)b_len * V, solo, sizeof(float) * (size_t)P * V),
            "%s: prefill logits of A change when B runs beside it (rel err %.3g)", name,
            row_err(got + (size_t)b_len * V, solo, P * V));
  for (int i = 0; i < N_DECODE; i++) {
    int bn = (i == 3) ? 3 : 1;
    seq_part a = {&ref.decode_ids[i], 1, P + i, blk_a};
    seq_part b = {b_tok + b_len, bn, b_len, blk_b};
    b_len += bn;
    int a_first = i % 2 == 0;
    seq_part pair[2] = {a_first ? a : b, a_first ? b : a};
    run_step(m, pair, 2, got);
    const float *arow = got + (size_t)(a_first ? 0 : bn) * V;
    cr_expect(!memcmp(arow, solo + (size_t)(P + i) * V, sizeof(float) * V),
              "%s: decode %d logits of A change beside B (rel err %.3g)", name, i,
              row_err(arow, solo + (size_t)(P + i) * V, V));
  }

  fprintf(stderr, "fixture %-18s worst rel err: prefill %.2e decode %.2e chunked %.2e (tol %.0e)\n",
          name, e_prefill, e_decode, e_chunk, TOL);
  free(solo);
  free(got);
  qv_model_destroy(m);
  qv_backend_destroy(be);
  run_fixture_v5_config(name, x, &ref);
  free(ref.prefill);
  free(ref.decode);
}

/* The same weights with transformers 5's own config form: a temp dir of symlinks to the fixture's
 * files, config.json pointing at config.transformers5.json. Checks the parse and the prefill. */
static void run_fixture_v5_config(const char *name, const fx_expect *x, const fx_ref *ref) {
  char rel[1024], dir[PATH_MAX], tmp[256] = "/tmp/qv-fixture-v5-XXXXXX";
  fixture_dir(name, rel, sizeof rel);
  cr_assert(realpath(rel, dir), "realpath %s", rel);
  cr_assert(mkdtemp(tmp));
  DIR *d = opendir(dir);
  cr_assert(d);
  struct dirent *e;
  char from[PATH_MAX + 300], to[600];
  while ((e = readdir(d))) {
    const char *n = e->d_name;
    if (n[0] == '.' || !strcmp(n, "reference.json") || !strcmp(n, "config.json")) continue;
    snprintf(from, sizeof from, "%s/%s", dir, n);
    snprintf(to, sizeof to, "%s/%s", tmp,
             strcmp(n, "config.transformers5.json") ? n : "config.json");
    cr_assert_eq(symlink(from, to), 0, "symlink %s", to);
  }
  closedir(d);

  qv_error err = {0};
  qv_backend *be = NULL;
  cr_assert_eq(qv_backend_create("cpu", &(qv_backend_opts){.n_threads = 2}, &be, &err), 0);
  qv_model *m = NULL;
  qv_model_opts mo = {.max_batch_tokens = MAX_PROMPT, .max_logits = MAX_PROMPT};
  int rc = qv_model_load(tmp, be, &mo, &m, &err);
  cr_expect_eq(rc, 0, "%s with config.transformers5.json: %s", name, err.msg);
  double worst = -1;
  if (rc == 0) {
    check_config(x, qv_model_get_config(m), ref->vocab);
    cr_assert_eq(qv_model_kv_init(m, N_BLOCKS, BLOCK_SIZE, &err), 0, "%s", err.msg);
    const int32_t blk[MAX_BLOCKS] = {3, 0, 5, 1, -1, -1, -1, -1};
    float *got = malloc(sizeof(float) * (size_t)ref->n_prompt * ref->vocab);
    cr_assert(got);
    seq_part pre = {ref->prompt, ref->n_prompt, 0, blk};
    run_step(m, &pre, 1, got);
    worst = check_rows(name, "prefill (transformers 5 config)", got, ref->prefill, ref->n_prompt,
                       ref->vocab);
    free(got);
    qv_model_destroy(m);
  }
  qv_backend_destroy(be);
  d = opendir(tmp);
  cr_assert(d);
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    snprintf(to, sizeof to, "%s/%s", tmp, e->d_name);
    unlink(to);
  }
  closedir(d);
  cr_expect_eq(rmdir(tmp), 0);
  fprintf(stderr, "fixture %-18s transformers-5 config: prefill worst rel err %.2e\n", name, worst);
}

/* One Criterion test per fixture, so a failure names the variant. */
#define FIXTURE_TEST(id, name) \
  Test(model_fixtures, id, .timeout = 60) { run_fixture(name); }

FIXTURE_TEST(llama, "llama")
FIXTURE_TEST(llama_tied, "llama-tied")
FIXTURE_TEST(llama_rope_llama3, "llama-rope-llama3")
FIXTURE_TEST(llama_rope_yarn, "llama-rope-yarn")
FIXTURE_TEST(llama_rope_linear, "llama-rope-linear")
FIXTURE_TEST(llama_bf16, "llama-bf16")
FIXTURE_TEST(llama_f16, "llama-f16")
FIXTURE_TEST(llama_sharded, "llama-sharded")
FIXTURE_TEST(llama_bias, "llama-bias")
FIXTURE_TEST(mistral_swa, "mistral-swa")
FIXTURE_TEST(qwen2, "qwen2")
FIXTURE_TEST(qwen3, "qwen3")
FIXTURE_TEST(gemma2, "gemma2")
FIXTURE_TEST(gemma3, "gemma3")
FIXTURE_TEST(gemma3_multimodal, "gemma3-multimodal")
FIXTURE_TEST(phi3_longrope_short, "phi3-longrope-short")
FIXTURE_TEST(phi3_longrope_long, "phi3-longrope-long")
FIXTURE_TEST(mixtral, "mixtral")
FIXTURE_TEST(qwen3_moe, "qwen3-moe")
FIXTURE_TEST(qwen3_moe_nonorm, "qwen3-moe-nonorm")
FIXTURE_TEST(gpt_oss, "gpt-oss")
FIXTURE_TEST(gpt_oss_mxfp4, "gpt-oss-mxfp4")
