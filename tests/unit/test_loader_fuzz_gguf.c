/* Robustness of qv_model_load against corrupted GGUF files (the GGUF half of the loader fuzz
 * tests; test_loader_fuzz.c covers safetensors directories).
 *
 * The fixture tests/fixtures/gguf/tiny-llama.gguf (scripts/make-gguf-fixtures) is a 1-layer
 * Llama whose tensors use every supported type. Each case writes a corrupted copy into a
 * mkdtemp() directory and loads it: the load must fail with a message naming the file (and the
 * tensor or metadata key where one is involved), or, for seeded random byte flips, may succeed
 * but must then run a forward step. Fields are located by parsing the pristine file with the
 * container reader, so each corruption hits exactly the field it means to.
 *
 * Corruptions: truncation at many lengths, bad magic and version, absurd counts, a tensor type
 * quiver does not support, rows that are not whole blocks, shapes that run past the file,
 * offsets past the end or overlapping another tensor, a duplicated tensor name, a missing
 * tensor, a transposed shape, out-of-range metadata (heads, sizes, architecture), a directory
 * with two models; and seeded byte flips over the header. Valid inputs: the file itself, a
 * directory holding it, the same model as a split set (same logits, bit for bit), and the
 * quantized path against the dequantized (exact) path. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../test_util.h"
#include "backend/backend.h"
#include "models/model.h"
#include "tokenizer/gguf.h"

#define N_FLIP_SEEDS 400

typedef struct gz {
  char *orig;      /* the pristine file */
  size_t len;
  gguf_ctx ctx;    /* parsed pristine file (pointers into orig) */
  char dir[256];   /* mkdtemp */
  char path[512];  /* dir/model.gguf */
} gz;

static void gz_open(gz *z) {
  char p[4096];
  snprintf(p, sizeof p, "%s/tests/fixtures/gguf/tiny-llama.gguf", getenv("QV_SOURCE_DIR") ? getenv("QV_SOURCE_DIR") : ".");
  z->orig = test_slurp(p, &z->len);
  cr_assert(z->orig, "cannot read %s", p);
  qv_error e = {0};
  cr_assert_eq(gguf_parse(z->orig, z->len, &z->ctx, &e), 0, "%s", e.msg);
  snprintf(z->dir, sizeof z->dir, "/tmp/qv-gguf-fuzz-XXXXXX");
  cr_assert(mkdtemp(z->dir));
  snprintf(z->path, sizeof z->path, "%s/model.gguf", z->dir);
}

static void gz_close(gz *z) {
  unlink(z->path);
  rmdir(z->dir);
  gguf_free(&z->ctx);
  free(z->orig);
}

static void write_file(const char *path, const void *buf, size_t len) {
  FILE *f = fopen(path, "wb");
  cr_assert(f, "cannot write %s", path);
  cr_assert_eq(fwrite(buf, 1, len, f), len);
  cr_assert_eq(fclose(f), 0);
}

/* A writable copy of the pristine bytes (caller frees). */
static char *copy(const gz *z) {
  char *b = malloc(z->len);
  cr_assert(b);
  memcpy(b, z->orig, z->len);
  return b;
}

/* Byte offset of a tensor info's fields: name string (u64 len + bytes), n_dims, dims, type, offset. */
typedef struct tinfo {
  size_t name, n_dims, dims, type, offset;
} tinfo;

static tinfo find_tensor(const gz *z, const char *name) {
  for (size_t i = 0; i < z->ctx.n_tensors; i++) {
    const gguf_tensor *t = &z->ctx.tensors[i];
    if (t->name_len == strlen(name) && !memcmp(t->name, name, t->name_len)) {
      tinfo r;
      r.name = (size_t)(t->name - z->orig) - 8;
      r.n_dims = r.name + 8 + t->name_len;
      r.dims = r.n_dims + 4;
      r.type = r.dims + 8 * t->n_dims;
      r.offset = r.type + 4;
      return r;
    }
  }
  cr_assert_fail("tensor %s not in the fixture", name);
  return (tinfo){0};
}

/* Offset of a metadata key's value bytes. */
static size_t find_kv(const gz *z, const char *key) {
  const gguf_kv *kv = gguf_find(&z->ctx, key);
  cr_assert(kv, "key %s not in the fixture", key);
  return (size_t)((const char *)kv->val - z->orig);
}

static void smoke_forward(qv_model *m) {
  const qv_model_config *c = qv_model_get_config(m);
  qv_error err = {0};
  int rc = qv_model_kv_init(m, 2, 4, &err);
  cr_assert(rc == 0 || err.msg[0], "kv_init failed without a message");
  if (rc) return;
  int32_t ids[6], pos[6], slots[6], lidx[1] = {5}, q_start[2] = {0, 6}, ctx[1] = {6}, table[2] = {1, 0};
  for (int i = 0; i < 6; i++) ids[i] = (int32_t)((i * 37 + 11) % c->vocab_size), pos[i] = i, slots[i] = table[i / 4] * 4 + i % 4;
  qv_batch b = {.n_tokens = 6, .n_seqs = 1, .n_logits = 1, .token_ids = ids, .positions = pos, .slot_mapping = slots,
                .seq_q_start = q_start, .seq_ctx_len = ctx, .block_tables = table, .max_blocks = 2, .logits_idx = lidx};
  float *logits = malloc(sizeof(float) * (size_t)c->vocab_size);
  rc = qv_model_forward(m, &b, logits, &err);
  cr_expect(rc == 0 || err.msg[0], "forward failed without a message");
  free(logits);
}

/* Loads path; on success runs a forward and returns 0. */
static int load(const char *path, int dequantize, qv_error *err) {
  qv_backend *be = NULL;
  qv_error berr = {0};
  cr_assert_eq(qv_backend_create("cpu", &(qv_backend_opts){.n_threads = 1}, &be, &berr), 0, "%s", berr.msg);
  qv_model *m = NULL;
  qv_error_clear(err);
  int rc = qv_model_load(path, be, &(qv_model_opts){.max_batch_tokens = 16, .dequantize = dequantize}, &m, err);
  if (rc == 0) {
    smoke_forward(m);
    qv_model_destroy(m);
  }
  qv_backend_destroy(be);
  return rc;
}

/* Writes buf as the model file and requires a failure whose message names the file and, when
 * given, the tensor or key. */
static void expect_fail(gz *z, const char *buf, size_t len, const char *what, const char *needle) {
  write_file(z->path, buf, len);
  qv_error err = {0};
  int rc = load(z->path, 0, &err);
  cr_assert_lt(rc, 0, "%s: loaded a corrupt file", what);
  cr_assert(strstr(err.msg, "model.gguf"), "%s: message does not name the file: %s", what, err.msg);
  if (needle) cr_assert(strstr(err.msg, needle), "%s: message does not name '%s': %s", what, needle, err.msg);
}

static void put_u32(char *b, size_t off, uint32_t v) { memcpy(b + off, &v, 4); }
static void put_u64(char *b, size_t off, uint64_t v) { memcpy(b + off, &v, 8); }

Test(loader_fuzz_gguf, valid_file_directory_and_split) {
  gz z;
  gz_open(&z);
  char p[4096];
  snprintf(p, sizeof p, "%s/tests/fixtures/gguf/tiny-llama.gguf", getenv("QV_SOURCE_DIR") ? getenv("QV_SOURCE_DIR") : ".");
  qv_error err = {0};
  cr_assert_eq(load(p, 0, &err), 0, "%s", err.msg);
  write_file(z.path, z.orig, z.len);
  cr_assert_eq(load(z.dir, 0, &err), 0, "directory: %s", err.msg);
  /* Two models in one directory: ambiguous, a clear error. */
  char other[600];
  snprintf(other, sizeof other, "%s/b.gguf", z.dir);
  write_file(other, z.orig, z.len);
  cr_assert_lt(load(z.dir, 0, &err), 0);
  cr_assert(strstr(err.msg, "2 GGUF models"), "%s", err.msg);
  unlink(other);
  gz_close(&z);
}

/* The split set and the single file give the same logits; the quantized and dequantized paths
 * agree closely (the dequantization is exact; only the summation order differs). */
static void logits_of(const char *path, int dequantize, float *out, int32_t *vocab) {
  qv_backend *be = NULL;
  qv_error err = {0};
  cr_assert_eq(qv_backend_create("cpu", &(qv_backend_opts){.n_threads = 2}, &be, &err), 0);
  qv_model *m = NULL;
  cr_assert_eq(qv_model_load(path, be, &(qv_model_opts){.max_batch_tokens = 8, .dequantize = dequantize}, &m, &err), 0,
               "%s: %s", path, err.msg);
  *vocab = qv_model_get_config(m)->vocab_size;
  cr_assert_eq(qv_model_kv_init(m, 2, 4, &err), 0);
  int32_t ids[5] = {3, 17, 42, 8, 60}, pos[5] = {0, 1, 2, 3, 4}, slots[5] = {0, 1, 2, 3, 4}, lidx[2] = {2, 4};
  int32_t qs[2] = {0, 5}, ctx = 5, table[2] = {0, 1};
  qv_batch b = {.n_tokens = 5, .n_seqs = 1, .n_logits = 2, .token_ids = ids, .positions = pos, .slot_mapping = slots,
                .seq_q_start = qs, .seq_ctx_len = &ctx, .block_tables = table, .max_blocks = 2, .logits_idx = lidx};
  cr_assert_eq(qv_model_forward(m, &b, out, &err), 0, "%s", err.msg);
  qv_model_destroy(m);
  qv_backend_destroy(be);
}

Test(loader_fuzz_gguf, split_set_and_paths_agree) {
  const char *src = getenv("QV_SOURCE_DIR") ? getenv("QV_SOURCE_DIR") : ".";
  char one[4096], split[4096];
  snprintf(one, sizeof one, "%s/tests/fixtures/gguf/tiny-llama.gguf", src);
  snprintf(split, sizeof split, "%s/tests/fixtures/gguf/split/tiny-llama-00001-of-00002.gguf", src);
  float a[2 * 64], b[2 * 64], c[2 * 64];
  int32_t v;
  logits_of(one, 0, a, &v);
  cr_assert_eq(v, 64);
  logits_of(split, 0, b, &v);
  cr_assert(!memcmp(a, b, sizeof a), "split set and single file differ");
  logits_of(one, 1, c, &v);
  double mx = 0, err = 0;
  for (int i = 0; i < 2 * 64; i++) {
    cr_assert(isfinite(a[i]) && isfinite(c[i]));
    mx = fmax(mx, fabs(c[i]));
    err = fmax(err, fabs(a[i] - c[i]));
  }
  cr_assert(err <= 1e-4 * mx, "quantized vs dequantized: %g (max %g)", err, mx);
  /* Naming a later split is an error that says which file to name. */
  char second[4096];
  snprintf(second, sizeof second, "%s/tests/fixtures/gguf/split/tiny-llama-00002-of-00002.gguf", src);
  qv_error e = {0};
  cr_assert_lt(load(second, 0, &e), 0);
  cr_assert(strstr(e.msg, "first split"), "%s", e.msg);
}

Test(loader_fuzz_gguf, truncation) {
  gz z;
  gz_open(&z);
  size_t lens[] = {0, 3, 4, 8, 16, 23, 24, 40, 100, 333, 1000, 2000, z.ctx.data_offset - 1, z.ctx.data_offset,
                   z.ctx.data_offset + 100, z.len / 2, z.len - 1000, z.len - 1};
  for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
    char what[64];
    snprintf(what, sizeof what, "truncated to %zu", lens[i]);
    expect_fail(&z, z.orig, lens[i], what, NULL);
  }
  /* Every 97th length through the header. */
  for (size_t n = 5; n < z.ctx.data_offset; n += 97) expect_fail(&z, z.orig, n, "truncated header", NULL);
  gz_close(&z);
}

Test(loader_fuzz_gguf, header_fields) {
  gz z;
  gz_open(&z);
  char *b = copy(&z);
  memcpy(b, "GGUX", 4);
  expect_fail(&z, b, z.len, "bad magic", "GGUF");
  memcpy(b, z.orig, 8);
  put_u32(b, 4, 1);
  expect_fail(&z, b, z.len, "version 1", "version");
  put_u32(b, 4, 99);
  expect_fail(&z, b, z.len, "version 99", "version");
  memcpy(b, z.orig, z.len);
  put_u64(b, 8, (uint64_t)1 << 60);
  expect_fail(&z, b, z.len, "huge tensor count", NULL);
  memcpy(b, z.orig, z.len);
  put_u64(b, 16, (uint64_t)1 << 62);
  expect_fail(&z, b, z.len, "huge kv count", NULL);
  free(b);
  gz_close(&z);
}

Test(loader_fuzz_gguf, tensor_infos) {
  gz z;
  gz_open(&z);
  char *b = copy(&z);
  tinfo q = find_tensor(&z, "blk.0.attn_q.weight"), k = find_tensor(&z, "blk.0.attn_k.weight");
  tinfo up = find_tensor(&z, "blk.0.ffn_up.weight");
  put_u32(b, q.type, 16); /* IQ2_XXS */
  expect_fail(&z, b, z.len, "unsupported type", "blk.0.attn_q.weight");
  put_u32(b, q.type, 4000);
  expect_fail(&z, b, z.len, "unknown type", "type 4000");
  memcpy(b, z.orig, z.len);
  put_u64(b, q.dims, 255); /* Q4_K rows must be whole 256-element blocks */
  expect_fail(&z, b, z.len, "partial block", "blk.0.attn_q.weight");
  memcpy(b, z.orig, z.len);
  put_u64(b, q.dims + 8, (uint64_t)1 << 39);
  expect_fail(&z, b, z.len, "rows past the end", "blk.0.attn_q.weight");
  memcpy(b, z.orig, z.len);
  put_u64(b, q.offset, (uint64_t)z.len * 4 / 32 * 32);
  expect_fail(&z, b, z.len, "offset past the end", "blk.0.attn_q.weight");
  memcpy(b, z.orig, z.len);
  uint64_t koff;
  memcpy(&koff, z.orig + k.offset, 8);
  put_u64(b, q.offset, koff);
  expect_fail(&z, b, z.len, "overlapping tensors", "overlap");
  memcpy(b, z.orig, z.len);
  memcpy(b + k.name + 8, "blk.0.attn_q.weight", 19); /* same length as attn_k's name */
  expect_fail(&z, b, z.len, "duplicate name", "appears twice");
  memcpy(b, z.orig, z.len);
  memcpy(b + up.name + 8 + 9, "uX", 2); /* blk.0.ffn_uX.weight */
  expect_fail(&z, b, z.len, "missing tensor", "up_proj");
  memcpy(b, z.orig, z.len);
  put_u64(b, k.dims, 128), put_u64(b, k.dims + 8, 256); /* transposed k: [128][256] elements */
  expect_fail(&z, b, z.len, "wrong shape", "blk.0.attn_k.weight");
  memcpy(b, z.orig, z.len);
  put_u32(b, k.n_dims, 0);
  expect_fail(&z, b, z.len, "zero dims", NULL);
  free(b);
  gz_close(&z);
}

Test(loader_fuzz_gguf, metadata_values) {
  gz z;
  gz_open(&z);
  char *b = copy(&z);
  struct {
    const char *key;
    uint32_t val;
    const char *needle;
  } cases[] = {
      {"llama.attention.head_count", 0, "llama.attention.head_count"},
      {"llama.attention.head_count_kv", 3, "KV heads"},
      {"llama.embedding_length", 255, "head size"},
      {"llama.embedding_length", 0, "llama.embedding_length"},
      {"llama.block_count", 1000, "missing tensor"},
      {"llama.block_count", 0, "llama.block_count"},
      {"llama.feed_forward_length", 100, "ffn"},
      {"llama.rope.dimension_count", 10, "rope.dimension_count"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    memcpy(b, z.orig, z.len);
    put_u32(b, find_kv(&z, cases[i].key), cases[i].val);
    expect_fail(&z, b, z.len, cases[i].key, cases[i].needle);
  }
  /* Another architecture's name of the same length ("llama" -> "gemma"). */
  memcpy(b, z.orig, z.len);
  memcpy(b + find_kv(&z, "general.architecture") + 8, "gemma", 5);
  expect_fail(&z, b, z.len, "architecture", "gemma");
  free(b);
  gz_close(&z);
}

Test(loader_fuzz_gguf, seeded_header_flips) {
  gz z;
  gz_open(&z);
  char *b = malloc(z.len);
  int n_loaded = 0;
  for (uint32_t seed = 1; seed <= N_FLIP_SEEDS; seed++) {
    memcpy(b, z.orig, z.len);
    uint64_t s = seed;
    int n = 1 + (int)(qv_splitmix64(&s) % 4);
    for (int i = 0; i < n; i++) {
      size_t at = (size_t)(qv_splitmix64(&s) % z.ctx.data_offset);
      b[at] = (char)(qv_splitmix64(&s) >> 56);
    }
    write_file(z.path, b, z.len);
    qv_error err = {0};
    int rc = load(z.path, 0, &err);
    if (rc == 0) n_loaded++;
    else cr_assert(err.msg[0], "seed %u: failed without a message", seed);
  }
  cr_log_info("gguf header flips: %d of %d still loaded", n_loaded, N_FLIP_SEEDS);
  free(b);
  gz_close(&z);
}
