/* Robustness of qv_model_load against corrupted model directories.
 *
 * A model directory is untrusted input: whatever bytes it holds, loading must return a negative
 * QV_E* code with a message that names the offending file (and the tensor, where one is
 * involved), and must never crash, read out of bounds, overflow a size computation or leak
 * (this runs under ASan/UBSan with leak detection). Each test copies a valid fixture from
 * tests/fixtures/models/ into a mkdtemp() directory, rewrites one file at a time with a
 * corruption, tries to load, restores the file, and removes the directory at the end.
 *
 * Corruptions: safetensors truncated at many lengths, a header length past the end of the file,
 * garbage header JSON, data_offsets past the data / overlapping / reversed, byte sizes that do
 * not match shape x dtype, unknown dtypes, missing tensors, wrong shapes; an index.json naming a
 * missing shard; config.json truncated, garbage, with wrong value types, an unsupported
 * model_type, zero/negative/absurd sizes, heads not divisible by kv heads; and seeded random
 * byte flips in the safetensors header and in config.json (bounded counts: the whole file runs
 * in a few seconds under ASan). A flipped file may still load; then it must also run a forward
 * step without crashing. Conversely, valid files whose header is not padded to 8 bytes (so
 * tensor data is unaligned) must load. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/backend.h"
#include "models/model.h"
#include "quiver/error.h"

#define BASE_FIXTURE "llama-rope-linear" /* single file, F32, untied, GQA (k_proj is 16 x 32) */
#define SHARD_FIXTURE "llama-sharded"
#define ST "model.safetensors"
#define CFG "config.json"
#define INDEX "model.safetensors.index.json"
#define K_PROJ "model.layers.0.self_attn.k_proj.weight"
#define UP_PROJ "model.layers.1.mlp.up_proj.weight"
#define GATE_PROJ "model.layers.1.mlp.gate_proj.weight"
#define N_FLIP_SEEDS 1500    /* safetensors header flips */
#define N_CFG_FLIP_SEEDS 600 /* config.json flips */

/* A temp copy of one fixture directory. */
typedef struct fz {
  char src[1024]; /* the fixture, read-only */
  char dir[256];  /* the copy (mkdtemp), removed by fz_close */
  int n_fail;     /* loads that failed as expected */
} fz;

static char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  cr_assert(f, "cannot open %s", path);
  cr_assert_eq(fseek(f, 0, SEEK_END), 0);
  long n = ftell(f);
  cr_assert(n >= 0);
  cr_assert_eq(fseek(f, 0, SEEK_SET), 0);
  char *buf = malloc((size_t)n + 1);
  cr_assert(buf);
  cr_assert_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
  buf[n] = 0;
  fclose(f);
  *len = (size_t)n;
  return buf;
}

static void fz_write(fz *z, const char *name, const void *buf, size_t len) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", z->dir, name);
  FILE *f = fopen(path, "wb");
  cr_assert(f, "cannot write %s", path);
  cr_assert_eq(fwrite(buf, 1, len, f), len);
  cr_assert_eq(fclose(f), 0);
}

/* Original bytes of one fixture file (malloc'd; the caller frees). */
static char *fz_orig(fz *z, const char *name, size_t *len) {
  char path[1400];
  snprintf(path, sizeof path, "%s/%s", z->src, name);
  return slurp(path, len);
}

static void fz_restore(fz *z, const char *name) {
  size_t len;
  char *buf = fz_orig(z, name, &len);
  fz_write(z, name, buf, len);
  free(buf);
}

static void fz_open(fz *z, const char *fixture) {
  memset(z, 0, sizeof *z);
  const char *src = getenv("QV_SOURCE_DIR");
  snprintf(z->src, sizeof z->src, "%s/tests/fixtures/models/%s", src ? src : ".", fixture);
  const char *tmp = getenv("TMPDIR");
  snprintf(z->dir, sizeof z->dir, "%s/qv-loader-fuzz-XXXXXX", tmp && *tmp ? tmp : "/tmp");
  cr_assert(mkdtemp(z->dir), "mkdtemp %s", z->dir);
  DIR *d = opendir(z->src);
  cr_assert(d, "fixture %s missing (QV_SOURCE_DIR=%s)", z->src, src ? src : "(unset)");
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.' || !strcmp(e->d_name, "reference.json")) continue;
    fz_restore(z, e->d_name);
  }
  closedir(d);
}

static void fz_close(fz *z) {
  DIR *d = opendir(z->dir);
  if (d) {
    struct dirent *e;
    char path[600];
    while ((e = readdir(d))) {
      if (e->d_name[0] == '.') continue;
      snprintf(path, sizeof path, "%s/%s", z->dir, e->d_name);
      unlink(path);
    }
    closedir(d);
  }
  cr_expect_eq(rmdir(z->dir), 0, "temp dir %s not removed", z->dir);
}

/* Whatever a corrupted directory loaded as must also run: a 6-token step over 2 KV blocks of 4
 * must either work or fail with a message (a config that loads but, say,
 * claims a tiny max_position_embeddings must not crash the forward). */
static void smoke_forward(qv_model *m) {
  const qv_model_config *c = qv_model_get_config(m);
  qv_error err = {0};
  int rc = qv_model_kv_init(m, 2, 4, &err);
  cr_assert(rc == 0 || err.msg[0], "kv_init failed without a message");
  if (rc) return;
  int32_t ids[6], pos[6], slots[6], lidx[1] = {5}, q_start[2] = {0, 6}, ctx[1] = {6};
  int32_t table[2] = {1, 0};
  for (int i = 0; i < 6; i++) {
    ids[i] = (int32_t)((i * 37 + 11) % c->vocab_size);
    pos[i] = i;
    slots[i] = table[i / 4] * 4 + i % 4;
  }
  qv_batch b = {.n_tokens = 6, .n_seqs = 1, .n_logits = 1, .token_ids = ids, .positions = pos,
                .slot_mapping = slots, .seq_q_start = q_start, .seq_ctx_len = ctx,
                .block_tables = table, .max_blocks = 2, .logits_idx = lidx};
  float *logits = malloc(sizeof(float) * (size_t)c->vocab_size);
  cr_assert(logits);
  rc = qv_model_forward(m, &b, logits, &err);
  cr_expect(rc == 0 || err.msg[0], "forward failed without a message");
  free(logits);
}

/* Loads the copy on a fresh CPU backend; returns the code, frees everything. */
static int fz_load(fz *z, qv_error *err) {
  qv_backend *be = NULL;
  qv_error berr = {0};
  int rc = qv_backend_create("cpu", &(qv_backend_opts){.n_threads = 1}, &be, &berr);
  cr_assert_eq(rc, 0, "backend: %s", berr.msg);
  qv_model *m = NULL;
  qv_error_clear(err);
  rc = qv_model_load(z->dir, be, &(qv_model_opts){.max_batch_tokens = 16}, &m, err);
  if (rc == 0) {
    cr_assert(m != NULL);
    smoke_forward(m);
    qv_model_destroy(m);
  } else {
    cr_expect(m == NULL, "failed load left a model behind");
  }
  qv_backend_destroy(be);
  return rc;
}

/* The load must fail with a message naming file (and tensor when not NULL). */
static void fz_expect_fail(fz *z, const char *what, const char *file, const char *tensor) {
  qv_error err = {0};
  int rc = fz_load(z, &err);
  cr_expect(rc < 0, "%s: load succeeded (rc %d)", what, rc);
  if (rc >= 0) return;
  z->n_fail++;
  cr_expect(err.msg[0] != 0, "%s: empty error message (%s)", what, qv_strerror(rc));
  cr_expect(strstr(err.msg, file) != NULL, "%s: message does not name %s: \"%s\"", what, file,
            err.msg);
  if (tensor)
    cr_expect(strstr(err.msg, tensor) != NULL, "%s: message does not name tensor %s: \"%s\"",
              what, tensor, err.msg);
}

/* The load may succeed or fail, but a failure must name file (or alt, when not NULL). */
static int fz_expect_no_crash2(fz *z, const char *what, const char *file, const char *alt) {
  qv_error err = {0};
  int rc = fz_load(z, &err);
  if (rc < 0)
    cr_expect(strstr(err.msg, file) != NULL || (alt && strstr(err.msg, alt) != NULL),
              "%s: message names neither %s nor %s: \"%s\"", what, file, alt ? alt : "-",
              err.msg);
  return rc;
}

static int fz_expect_no_crash(fz *z, const char *what, const char *file) {
  return fz_expect_no_crash2(z, what, file, NULL);
}

/* Flips 1-3 bytes (never to the same value) of buf[0, span), the choice driven by seed. */
static void flip_bytes(char *buf, size_t span, uint32_t seed) {
  uint32_t r = seed * 2654435761u;
  int flips = 1 + (int)(seed % 3);
  for (int k = 0; k < flips; k++) {
    r = r * 1664525u + 1013904223u;
    size_t at = (r >> 8) % span;
    r = r * 1664525u + 1013904223u;
    buf[at] ^= (char)(1 + (r >> 24) % 255);
  }
}

/* ---- safetensors surgery ------------------------------------------------------------------ */

/* A parsed copy of a valid safetensors file. */
typedef struct st_file {
  char *raw;          /* whole file, owned */
  size_t raw_len;
  uint64_t hdr_len;   /* bytes of header JSON after the 8-byte length */
  cJSON *hdr;         /* parsed header, owned */
  const char *data;   /* raw + 8 + hdr_len */
  size_t data_len;
} st_file;

static void st_open(fz *z, const char *name, st_file *s) {
  s->raw = fz_orig(z, name, &s->raw_len);
  cr_assert(s->raw_len >= 8);
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--) n = (n << 8) | (uint8_t)s->raw[i];
  cr_assert(n + 8 <= s->raw_len);
  s->hdr_len = n;
  s->hdr = cJSON_ParseWithLength(s->raw + 8, (size_t)n);
  cr_assert(s->hdr, "fixture header does not parse");
  s->data = s->raw + 8 + n;
  s->data_len = s->raw_len - 8 - (size_t)n;
}

static void st_close(st_file *s) {
  cJSON_Delete(s->hdr);
  free(s->raw);
}

/* Writes name = [u64 len][header text][data], the length field set to len_field. */
static void st_write_raw(fz *z, const char *name, const char *hdr, uint64_t len_field,
                         const char *data, size_t data_len) {
  size_t hl = strlen(hdr);
  char *buf = malloc(8 + hl + data_len);
  cr_assert(buf);
  for (int i = 0; i < 8; i++) buf[i] = (char)(len_field >> (8 * i));
  memcpy(buf + 8, hdr, hl);
  if (data_len) memcpy(buf + 8 + hl, data, data_len);
  fz_write(z, name, buf, 8 + hl + data_len);
  free(buf);
}

/* Writes name with header hdr (a JSON text) and the given data; correct length field. */
static void st_write_text(fz *z, const char *name, const char *hdr, const char *data,
                          size_t data_len) {
  st_write_raw(z, name, hdr, strlen(hdr), data, data_len);
}

static void st_write_json(fz *z, const char *name, const cJSON *hdr, const char *data,
                          size_t data_len) {
  char *text = cJSON_PrintUnformatted(hdr);
  cr_assert(text);
  st_write_text(z, name, text, data, data_len);
  free(text);
}

static size_t dtype_bytes(const char *dt) {
  if (!strcmp(dt, "F32")) return 4;
  if (!strcmp(dt, "F16") || !strcmp(dt, "BF16")) return 2;
  return 1;
}

/* Writes name with header hdr, laying the tensors out afresh in header order so every entry's
 * byte size matches its (possibly edited) shape and dtype: each tensor keeps the leading bytes
 * of its original data_offsets range (zero padded), so the file is self-consistent. */
static void st_write_repacked(fz *z, const char *name, cJSON *hdr, const st_file *orig) {
  size_t cap = orig->data_len * 2 + 4096, off = 0;
  char *data = calloc(1, cap);
  cr_assert(data);
  cJSON *t;
  cJSON_ArrayForEach(t, hdr) {
    if (!strcmp(t->string, "__metadata__")) continue;
    size_t n = dtype_bytes(cJSON_GetObjectItem(t, "dtype")->valuestring);
    const cJSON *d;
    cJSON_ArrayForEach(d, cJSON_GetObjectItem(t, "shape")) n *= (size_t)d->valuedouble;
    cJSON *offs = cJSON_GetObjectItem(t, "data_offsets");
    size_t b = (size_t)cJSON_GetArrayItem(offs, 0)->valuedouble;
    size_t e = (size_t)cJSON_GetArrayItem(offs, 1)->valuedouble;
    cr_assert(off + n <= cap);
    memcpy(data + off, orig->data + b, n < e - b ? n : e - b);
    cJSON_ReplaceItemInArray(offs, 0, cJSON_CreateNumber((double)off));
    cJSON_ReplaceItemInArray(offs, 1, cJSON_CreateNumber((double)(off + n)));
    off += n;
  }
  st_write_json(z, name, hdr, data, off);
  free(data);
}

static cJSON *st_hdr_copy(const st_file *s) { return cJSON_Duplicate(s->hdr, 1); }

static void set_offsets(cJSON *hdr, const char *tensor, double b, double e) {
  cJSON *offs = cJSON_GetObjectItem(cJSON_GetObjectItem(hdr, tensor), "data_offsets");
  cr_assert(offs);
  cJSON_ReplaceItemInArray(offs, 0, cJSON_CreateNumber(b));
  cJSON_ReplaceItemInArray(offs, 1, cJSON_CreateNumber(e));
}

static double get_offset(const cJSON *hdr, const char *tensor, int i) {
  const cJSON *offs = cJSON_GetObjectItem(cJSON_GetObjectItem(hdr, tensor), "data_offsets");
  return cJSON_GetArrayItem(offs, i)->valuedouble;
}

static void set_field(cJSON *hdr, const char *tensor, const char *key, cJSON *value) {
  cJSON *t = cJSON_GetObjectItem(hdr, tensor);
  cr_assert(t);
  cJSON_ReplaceItemInObject(t, key, value);
}

static cJSON *shape2(double a, double b) {
  cJSON *s = cJSON_CreateArray();
  cJSON_AddItemToArray(s, cJSON_CreateNumber(a));
  cJSON_AddItemToArray(s, cJSON_CreateNumber(b));
  return s;
}

/* ---- the tests ---------------------------------------------------------------------------- */

Test(loader_fuzz, fixture_loads_unchanged) {
  /* The corruptions below are only meaningful if the untouched copy loads. */
  fz z;
  fz_open(&z, BASE_FIXTURE);
  qv_error err = {0};
  cr_expect_eq(fz_load(&z, &err), 0, "%s", err.msg);
  fz_close(&z);
  fz_open(&z, SHARD_FIXTURE);
  cr_expect_eq(fz_load(&z, &err), 0, "%s", err.msg);
  fz_close(&z);
}

Test(loader_fuzz, safetensors_unaligned_header_loads) {
  /* The format does not require the header to be padded to 8 bytes, so every tensor of a valid
   * file may start at an odd address in the mapping; reading it must not rely on alignment
   * (UBSan reports misaligned loads). Checked for F32 and BF16 weights and header lengths that
   * leave the data 1, 2 and 3 bytes off alignment. */
  const char *fixtures[] = {BASE_FIXTURE, "llama-bf16"};
  for (size_t f = 0; f < 2; f++) {
    fz z;
    fz_open(&z, fixtures[f]);
    st_file s;
    st_open(&z, ST, &s);
    char *text = cJSON_PrintUnformatted(s.hdr);
    cr_assert(text);
    size_t tl = strlen(text);
    for (size_t pad = 0; pad < 8; pad++) {
      if ((8 + tl + pad) % 4 == 0) continue;
      char *hdr = malloc(tl + pad + 1);
      cr_assert(hdr);
      memcpy(hdr, text, tl);
      memset(hdr + tl, ' ', pad);
      hdr[tl + pad] = 0;
      st_write_text(&z, ST, hdr, s.data, s.data_len);
      free(hdr);
      qv_error err = {0};
      cr_expect_eq(fz_load(&z, &err), 0, "%s with a %zu-byte header: %s", fixtures[f], tl + pad,
                   err.msg);
    }
    free(text);
    st_close(&s);
    fz_close(&z);
  }
}

Test(loader_fuzz, safetensors_truncated, .timeout = 120) {
  fz z;
  fz_open(&z, BASE_FIXTURE);
  st_file s;
  st_open(&z, ST, &s);
  size_t lens[160], n = 0;
  for (size_t l = 0; l <= 16; l++) lens[n++] = l;                      /* inside the length */
  for (size_t l = 17; l < 8 + s.hdr_len; l += 61) lens[n++] = l;       /* inside the header */
  lens[n++] = 8 + s.hdr_len - 1;
  lens[n++] = 8 + s.hdr_len;                                           /* header, no data */
  lens[n++] = 8 + s.hdr_len + 1;
  for (size_t k = 1; k < 40; k++) lens[n++] = 8 + s.hdr_len + s.data_len * k / 40;
  lens[n++] = s.raw_len - 4;
  lens[n++] = s.raw_len - 1;
  cr_assert(n <= sizeof lens / sizeof lens[0]);
  char what[64];
  for (size_t i = 0; i < n; i++) {
    fz_write(&z, ST, s.raw, lens[i]);
    snprintf(what, sizeof what, "truncated to %zu of %zu bytes", lens[i], s.raw_len);
    fz_expect_fail(&z, what, ST, NULL);
  }
  cr_expect_eq(z.n_fail, (int)n);
  st_close(&s);
  fz_close(&z);
}

Test(loader_fuzz, safetensors_header_length) {
  fz z;
  fz_open(&z, BASE_FIXTURE);
  st_file s;
  st_open(&z, ST, &s);
  char *hdr = malloc(s.hdr_len + 1);
  cr_assert(hdr);
  memcpy(hdr, s.raw + 8, s.hdr_len);
  hdr[s.hdr_len] = 0;
  const uint64_t bad[] = {s.raw_len - 7, s.raw_len, s.raw_len + 1, (uint64_t)1 << 32,
                          (uint64_t)1 << 62, UINT64_MAX, UINT64_MAX - 7, 0, 1};
  char what[80];
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    st_write_raw(&z, ST, hdr, bad[i], s.data, s.data_len);
    snprintf(what, sizeof what, "header length %llu (file %zu)", (unsigned long long)bad[i],
             s.raw_len);
    fz_expect_fail(&z, what, ST, NULL);
  }
  free(hdr);
  st_close(&s);
  fz_close(&z);
}

Test(loader_fuzz, safetensors_header_garbage) {
  fz z;
  fz_open(&z, BASE_FIXTURE);
  st_file s;
  st_open(&z, ST, &s);
  static const char *garbage[] = {
      "",
      " ",
      "{",
      "}",
      "[]",
      "null",
      "42",
      "\"model.norm.weight\"",
      "{\"a\":",
      "{\"model.norm.weight\": 5}",
      "{\"model.norm.weight\": {}}",
      "{\"model.norm.weight\": {\"dtype\": \"F32\"}}",
      "{\"model.norm.weight\": {\"dtype\": \"F32\", \"shape\": [32]}}",
      "{\"model.norm.weight\": {\"dtype\": \"F32\", \"shape\": \"32\", \"data_offsets\": [0, 128]}}",
      "{\"model.norm.weight\": {\"dtype\": \"F32\", \"shape\": [32], \"data_offsets\": [0]}}",
      "{\"model.norm.weight\": {\"dtype\": \"F32\", \"shape\": [32], \"data_offsets\": [0, 128, 256]}}",
      "{\"model.norm.weight\": {\"dtype\": \"F32\", \"shape\": [32], \"data_offsets\": [0.5, 128.5]}}",
      "{\"model.norm.weight\": {\"dtype\": \"F32\", \"shape\": [32], \"data_offsets\": [-128, 0]}}",
      "{\"model.norm.weight\": {\"dtype\": \"F32\", \"shape\": [-32], \"data_offsets\": [0, 128]}}",
      "{\"model.norm.weight\": {\"dtype\": \"F32\", \"shape\": [1e30], \"data_offsets\": [0, 128]}}",
      "{\"model.norm.weight\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296, 4294967296],"
      " \"data_offsets\": [0, 0]}}",
      "{\"model.norm.weight\": {\"dtype\": \"F32\", \"shape\": [32],"
      " \"data_offsets\": [0, 18446744073709551615]}}",
      "{\"model.norm.weight\": {\"dtype\": null, \"shape\": [32], \"data_offsets\": [0, 128]}}",
      "\x01\x02\x03\xff\xfe",
      "{\"\xff\xfe\": {\"dtype\": \"F32\", \"shape\": [32], \"data_offsets\": [0, 128]}}",
  };
  char what[96];
  for (size_t i = 0; i < sizeof garbage / sizeof garbage[0]; i++) {
    st_write_text(&z, ST, garbage[i], s.data, s.data_len);
    snprintf(what, sizeof what, "header garbage #%zu \"%.40s\"", i, garbage[i]);
    fz_expect_fail(&z, what, ST, NULL);
  }
  /* Deep nesting must be refused without recursing off the stack. */
  size_t depth = 100000;
  char *deep = malloc(2 * depth + 1);
  cr_assert(deep);
  memset(deep, '[', depth);
  memset(deep + depth, ']', depth);
  deep[2 * depth] = 0;
  st_write_text(&z, ST, deep, s.data, s.data_len);
  fz_expect_fail(&z, "header nested 100000 deep", ST, NULL);
  free(deep);
  /* A NUL inside the header. */
  char *buf = malloc(s.raw_len);
  cr_assert(buf);
  memcpy(buf, s.raw, s.raw_len);
  buf[8 + s.hdr_len / 2] = 0;
  fz_write(&z, ST, buf, s.raw_len);
  fz_expect_fail(&z, "NUL byte inside the header", ST, NULL);
  free(buf);
  st_close(&s);
  fz_close(&z);
}

Test(loader_fuzz, safetensors_bad_offsets) {
  fz z;
  fz_open(&z, BASE_FIXTURE);
  st_file s;
  st_open(&z, ST, &s);
  double kb = get_offset(s.hdr, K_PROJ, 0), ke = get_offset(s.hdr, K_PROJ, 1);
  double ub = get_offset(s.hdr, UP_PROJ, 0), ue = get_offset(s.hdr, UP_PROJ, 1);
  double gb = get_offset(s.hdr, GATE_PROJ, 0), ge = get_offset(s.hdr, GATE_PROJ, 1);
  double dl = (double)s.data_len;
  struct {
    const char *what, *tensor;
    double b, e;
  } cases[] = {
      {"end past the data", K_PROJ, dl - (ke - kb) + 4, dl + 4},
      {"begin and end past the data", K_PROJ, dl + 64, dl + 64 + (ke - kb)},
      {"far past the data", K_PROJ, 1e15, 1e15 + (ke - kb)},
      {"reversed", K_PROJ, ke, kb},
      {"reversed, right size", K_PROJ, kb + (ke - kb) * 2, kb + (ke - kb)},
      {"empty range", K_PROJ, kb, kb},
      {"overlapping the previous tensor", UP_PROJ, ub - 4, ue - 4},
      {"same range as another tensor", UP_PROJ, gb, ge},
      {"range shifted by one byte", UP_PROJ, ub + 1, ue + 1},
  };
  char what[96];
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    cJSON *h = st_hdr_copy(&s);
    set_offsets(h, cases[i].tensor, cases[i].b, cases[i].e);
    st_write_json(&z, ST, h, s.data, s.data_len);
    cJSON_Delete(h);
    snprintf(what, sizeof what, "data_offsets %s", cases[i].what);
    /* An overlap may be reported on either tensor of the pair; require the file and accept
     * either tensor name there. */
    if (!strcmp(cases[i].tensor, UP_PROJ)) {
      qv_error err = {0};
      int rc = fz_load(&z, &err);
      cr_expect(rc < 0, "%s: load succeeded", what);
      cr_expect(rc >= 0 || (strstr(err.msg, ST) &&
                            (strstr(err.msg, UP_PROJ) || strstr(err.msg, GATE_PROJ) ||
                             strstr(err.msg, "model.layers.1.mlp.down_proj.weight") ||
                             strstr(err.msg, "model.layers.1.post_attention_layernorm.weight"))),
                "%s: message names neither the file nor a tensor involved: \"%s\"", what,
                err.msg);
    } else {
      fz_expect_fail(&z, what, ST, cases[i].tensor);
    }
  }
  st_close(&s);
  fz_close(&z);
}

Test(loader_fuzz, safetensors_size_and_dtype) {
  fz z;
  fz_open(&z, BASE_FIXTURE);
  st_file s;
  st_open(&z, ST, &s);
  /* Shape or dtype edited, data_offsets kept: the byte size no longer matches. */
  struct {
    const char *what, *key;
    cJSON *value; /* moved into the header copy */
  } cases[] = {
      {"shape one column wider than the bytes", "shape", shape2(16, 33)},
      {"dtype BF16 over F32 bytes", "dtype", cJSON_CreateString("BF16")},
      {"unknown dtype F33", "dtype", cJSON_CreateString("F33")},
      {"unknown dtype Q4_K", "dtype", cJSON_CreateString("Q4_K")},
      {"empty dtype", "dtype", cJSON_CreateString("")},
      {"numeric dtype", "dtype", cJSON_CreateNumber(1)},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    cJSON *h = st_hdr_copy(&s);
    set_field(h, K_PROJ, cases[i].key, cases[i].value);
    st_write_json(&z, ST, h, s.data, s.data_len);
    cJSON_Delete(h);
    fz_expect_fail(&z, cases[i].what, ST, K_PROJ);
  }
  /* Unknown dtypes again, in a self-consistent file (byte sizes match the shape). */
  const char *dts[] = {"F33", "I4", "U8", "F64"};
  for (size_t i = 0; i < sizeof dts / sizeof dts[0]; i++) {
    cJSON *h = st_hdr_copy(&s);
    set_field(h, K_PROJ, "dtype", cJSON_CreateString(dts[i]));
    st_write_repacked(&z, ST, h, &s);
    cJSON_Delete(h);
    char what[64];
    snprintf(what, sizeof what, "dtype %s with matching byte size", dts[i]);
    fz_expect_fail(&z, what, ST, K_PROJ);
  }
  st_close(&s);
  fz_close(&z);
}

Test(loader_fuzz, safetensors_missing_and_wrong_shape) {
  fz z;
  fz_open(&z, BASE_FIXTURE);
  st_file s;
  st_open(&z, ST, &s);
  const char *missing[] = {"model.layers.1.mlp.down_proj.weight", "model.norm.weight",
                           "model.embed_tokens.weight", "lm_head.weight",
                           "model.layers.0.input_layernorm.weight", K_PROJ};
  char what[128];
  for (size_t i = 0; i < sizeof missing / sizeof missing[0]; i++) {
    cJSON *h = st_hdr_copy(&s);
    cJSON_DeleteItemFromObject(h, missing[i]);
    st_write_repacked(&z, ST, h, &s);
    cJSON_Delete(h);
    snprintf(what, sizeof what, "missing %s", missing[i]);
    fz_expect_fail(&z, what, ST, missing[i]);
  }
  /* Wrong shapes whose byte sizes are consistent with the (wrong) shape. */
  struct {
    const char *tensor;
    cJSON *shape;
  } wrong[] = {
      {K_PROJ, shape2(32, 16)},                       /* transposed, same bytes */
      {K_PROJ, shape2(16, 31)},
      {"model.embed_tokens.weight", shape2(161, 32)}, /* vocab + 1 */
      {"lm_head.weight", shape2(160, 64)},
      {"model.layers.0.mlp.down_proj.weight", shape2(64, 32)},
      {"model.layers.0.self_attn.q_proj.weight", cJSON_CreateIntArray((int[]){1024}, 1)},
      {"model.layers.0.self_attn.o_proj.weight", cJSON_CreateIntArray((int[]){2, 16, 32}, 3)},
      {"model.norm.weight", cJSON_CreateIntArray((int[]){0}, 1)},
  };
  for (size_t i = 0; i < sizeof wrong / sizeof wrong[0]; i++) {
    cJSON *h = st_hdr_copy(&s);
    char *shape = cJSON_PrintUnformatted(wrong[i].shape);
    set_field(h, wrong[i].tensor, "shape", wrong[i].shape);
    st_write_repacked(&z, ST, h, &s);
    cJSON_Delete(h);
    snprintf(what, sizeof what, "%s with shape %s", wrong[i].tensor, shape);
    free(shape);
    fz_expect_fail(&z, what, ST, wrong[i].tensor);
  }
  /* A norm weight stored as [1, 32] instead of [32] holds the same numbers; the loader may take
   * it (quiver keeps 1-D weights as [1][n]) but must not crash. */
  cJSON *h = st_hdr_copy(&s);
  set_field(h, "model.norm.weight", "shape", shape2(1, 32));
  st_write_repacked(&z, ST, h, &s);
  cJSON_Delete(h);
  fz_expect_no_crash(&z, "model.norm.weight with shape [1,32]", ST);
  st_close(&s);
  fz_close(&z);
}

Test(loader_fuzz, safetensors_header_byte_flips, .timeout = 120) {
  fz z;
  fz_open(&z, BASE_FIXTURE);
  st_file s;
  st_open(&z, ST, &s);
  char *buf = malloc(s.raw_len);
  cr_assert(buf);
  size_t span = 8 + (size_t)s.hdr_len;
  int n_ok = 0, n_err = 0;
  char what[64];
  for (uint32_t seed = 1; seed <= N_FLIP_SEEDS; seed++) {
    memcpy(buf, s.raw, s.raw_len);
    flip_bytes(buf, span, seed);
    fz_write(&z, ST, buf, s.raw_len);
    snprintf(what, sizeof what, "header byte flips, seed %u", seed);
    if (fz_expect_no_crash(&z, what, ST) == 0)
      n_ok++;
    else
      n_err++;
  }
  /* Most flips land in tensor names, shapes or offsets and must be refused. */
  fprintf(stderr, "loader_fuzz: %d header flip seeds: %d refused, %d loaded\n", N_FLIP_SEEDS,
          n_err, n_ok);
  cr_expect(n_err > N_FLIP_SEEDS / 2, "only %d of %d corrupted headers were refused", n_err,
            N_FLIP_SEEDS);
  free(buf);
  st_close(&s);
  fz_close(&z);
}

Test(loader_fuzz, sharded_index) {
  fz z;
  fz_open(&z, SHARD_FIXTURE);
  size_t len;
  char *orig = fz_orig(&z, INDEX, &len);
  cJSON *idx = cJSON_Parse(orig);
  cr_assert(idx);
  cJSON *map = cJSON_GetObjectItem(idx, "weight_map");
  cr_assert(cJSON_IsObject(map));
  const char *t = "model.layers.1.mlp.up_proj.weight";
  const char *shard2 = cJSON_GetObjectItem(map, t)->valuestring;
  cr_assert(shard2);
  char shard2_name[128];
  snprintf(shard2_name, sizeof shard2_name, "%s", shard2);

  /* A shard that does not exist. */
  cJSON *h = cJSON_Duplicate(idx, 1);
  cJSON_ReplaceItemInObject(cJSON_GetObjectItem(h, "weight_map"), t,
                            cJSON_CreateString("model-00003-of-00002.safetensors"));
  char *text = cJSON_Print(h);
  fz_write(&z, INDEX, text, strlen(text));
  free(text);
  cJSON_Delete(h);
  fz_expect_fail(&z, "index names a missing shard", "model-00003-of-00002.safetensors", NULL);

  /* A shard path leaving the directory. */
  h = cJSON_Duplicate(idx, 1);
  cJSON_ReplaceItemInObject(cJSON_GetObjectItem(h, "weight_map"), t,
                            cJSON_CreateString("../../../../../../etc/passwd"));
  text = cJSON_Print(h);
  fz_write(&z, INDEX, text, strlen(text));
  free(text);
  cJSON_Delete(h);
  fz_expect_fail(&z, "index names a shard outside the directory", INDEX, t);

  /* The index maps a tensor to the wrong (existing) shard. */
  h = cJSON_Duplicate(idx, 1);
  cJSON_ReplaceItemInObject(cJSON_GetObjectItem(h, "weight_map"), t,
                            cJSON_CreateString("model-00001-of-00002.safetensors"));
  text = cJSON_Print(h);
  fz_write(&z, INDEX, text, strlen(text));
  free(text);
  cJSON_Delete(h);
  fz_expect_fail(&z, "index maps a tensor to a shard without it", "safetensors", t);

  /* A tensor missing from the index. */
  h = cJSON_Duplicate(idx, 1);
  cJSON_DeleteItemFromObject(cJSON_GetObjectItem(h, "weight_map"), "model.norm.weight");
  text = cJSON_Print(h);
  fz_write(&z, INDEX, text, strlen(text));
  free(text);
  cJSON_Delete(h);
  fz_expect_no_crash(&z, "tensor missing from the index", INDEX);

  /* Garbage and wrong types in the index. */
  const char *bad[] = {"", "{", "[]", "null", "{\"weight_map\": 5}", "{\"weight_map\": []}",
                       "{\"weight_map\": {\"model.norm.weight\": 7}}", "{\"metadata\": {}}"};
  char what[96];
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    fz_write(&z, INDEX, bad[i], strlen(bad[i]));
    snprintf(what, sizeof what, "index garbage \"%s\"", bad[i]);
    fz_expect_fail(&z, what, INDEX, NULL);
  }
  fz_restore(&z, INDEX);

  /* A shard deleted, then a shard truncated. */
  char path[600];
  snprintf(path, sizeof path, "%s/%s", z.dir, shard2_name);
  cr_assert_eq(unlink(path), 0);
  fz_expect_fail(&z, "shard file deleted", shard2_name, NULL);
  size_t slen;
  char *sbuf = fz_orig(&z, shard2_name, &slen);
  fz_write(&z, shard2_name, sbuf, slen / 2);
  fz_expect_fail(&z, "shard file truncated", shard2_name, NULL);
  free(sbuf);

  cJSON_Delete(idx);
  free(orig);
  fz_close(&z);
}

Test(loader_fuzz, missing_files) {
  fz z;
  fz_open(&z, BASE_FIXTURE);
  char path[600];
  snprintf(path, sizeof path, "%s/%s", z.dir, CFG);
  cr_assert_eq(unlink(path), 0);
  fz_expect_fail(&z, "config.json deleted", CFG, NULL);
  fz_restore(&z, CFG);
  snprintf(path, sizeof path, "%s/%s", z.dir, ST);
  cr_assert_eq(unlink(path), 0);
  fz_expect_fail(&z, "model.safetensors deleted", "safetensors", NULL);
  fz_restore(&z, ST);
  /* generation_config.json is optional; garbage in it may be refused or ignored, not crash. */
  fz_write(&z, "generation_config.json", "{\"eos_token_id\": [", 18);
  fz_expect_no_crash(&z, "generation_config.json garbage", "generation_config.json");
  fz_write(&z, "generation_config.json", "{\"eos_token_id\": [1,2,3,4,5,6,7,8,9,10,11,12]}", 46);
  fz_expect_no_crash(&z, "generation_config.json with 12 eos ids", "generation_config.json");
  fz_write(&z, "generation_config.json", "{\"eos_token_id\": \"x\"}", 21);
  fz_expect_no_crash(&z, "generation_config.json eos of the wrong type", "generation_config.json");
  fz_close(&z);

  qv_backend *be = NULL;
  qv_error err = {0};
  cr_assert_eq(qv_backend_create("cpu", NULL, &be, &err), 0);
  qv_model *m = NULL;
  int rc = qv_model_load("/nonexistent/qv-model-dir", be, &(qv_model_opts){.max_batch_tokens = 16},
                         &m, &err);
  cr_expect(rc < 0 && m == NULL, "a missing directory loaded");
  cr_expect(strstr(err.msg, "/nonexistent/qv-model-dir") != NULL, "message: \"%s\"", err.msg);
  qv_backend_destroy(be);
}

/* ---- config.json ------------------------------------------------------------------------- */

/* Rewrites config.json with key set to value (NULL: key removed), then expects a failure. */
static void cfg_case(fz *z, const cJSON *orig, const char *key, cJSON *value, const char *what) {
  cJSON *c = cJSON_Duplicate(orig, 1);
  if (value) {
    if (cJSON_GetObjectItem(c, key))
      cJSON_ReplaceItemInObject(c, key, value);
    else
      cJSON_AddItemToObject(c, key, value);
  } else {
    cJSON_DeleteItemFromObject(c, key);
  }
  char *text = cJSON_Print(c);
  cJSON_Delete(c);
  fz_write(z, CFG, text, strlen(text));
  char msg[160];
  snprintf(msg, sizeof msg, "config %s: %s", key, what);
  fz_expect_fail(z, msg, CFG, NULL);
  free(text);
}

Test(loader_fuzz, config_truncated_and_garbage) {
  fz z;
  fz_open(&z, BASE_FIXTURE);
  size_t len;
  char *orig = fz_orig(&z, CFG, &len);
  char what[64];
  for (size_t k = 0; k < 12; k++) {
    size_t l = len * k / 12;
    fz_write(&z, CFG, orig, l);
    snprintf(what, sizeof what, "config.json truncated to %zu of %zu", l, len);
    fz_expect_fail(&z, what, CFG, NULL);
  }
  fz_write(&z, CFG, orig, len - 2);
  fz_expect_fail(&z, "config.json missing its closing brace", CFG, NULL);
  static const struct {
    const char *s;
    size_t n;
  } bad[] = {{"not json", 8}, {"[]", 2},  {"null", 4},       {"7", 1},
             {"\"llama\"", 7}, {"{}", 2}, {"\xff\xfe\x00\x01", 4}, {"{\"model_type\": \"llama\"}", 23}};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    fz_write(&z, CFG, bad[i].s, bad[i].n);
    snprintf(what, sizeof what, "config.json garbage #%zu", i);
    fz_expect_fail(&z, what, CFG, NULL);
  }
  free(orig);
  fz_close(&z);
}

Test(loader_fuzz, config_bad_values, .timeout = 120) {
  fz z;
  fz_open(&z, BASE_FIXTURE);
  size_t len;
  char *text = fz_orig(&z, CFG, &len);
  cJSON *c = cJSON_Parse(text);
  free(text);
  cr_assert(c);

  /* Wrong types. */
  cfg_case(&z, c, "hidden_size", cJSON_CreateString("32"), "string");
  cfg_case(&z, c, "num_hidden_layers", cJSON_CreateString("2"), "string");
  cfg_case(&z, c, "vocab_size", cJSON_CreateTrue(), "bool");
  cfg_case(&z, c, "num_attention_heads", cJSON_CreateArray(), "array");
  cfg_case(&z, c, "num_key_value_heads", cJSON_CreateObject(), "object");
  cfg_case(&z, c, "intermediate_size", cJSON_CreateNull(), "null");
  cfg_case(&z, c, "hidden_size", cJSON_CreateNumber(32.5), "fraction");
  cfg_case(&z, c, "head_dim", cJSON_CreateNumber(8.25), "fraction");
  cfg_case(&z, c, "rms_norm_eps", cJSON_CreateString("1e-5"), "string");
  cfg_case(&z, c, "rope_theta", cJSON_CreateString("10000"), "string");
  cfg_case(&z, c, "rope_scaling", cJSON_CreateNumber(5), "number");
  cfg_case(&z, c, "rope_scaling", cJSON_CreateString("linear"), "string");
  cfg_case(&z, c, "model_type", cJSON_CreateNumber(1), "number");
  {
    cJSON *rs = cJSON_CreateObject();
    cJSON_AddNumberToObject(rs, "rope_type", 5);
    cfg_case(&z, c, "rope_scaling", rs, "rope_type number");
    rs = cJSON_CreateObject();
    cJSON_AddStringToObject(rs, "rope_type", "linear");
    cJSON_AddStringToObject(rs, "factor", "2");
    cfg_case(&z, c, "rope_scaling", rs, "factor string");
    rs = cJSON_CreateObject();
    cJSON_AddStringToObject(rs, "rope_type", "linear");
    cJSON_AddNumberToObject(rs, "factor", 0);
    cfg_case(&z, c, "rope_scaling", rs, "factor 0");
    rs = cJSON_CreateObject();
    cJSON_AddStringToObject(rs, "rope_type", "linear");
    cJSON_AddNumberToObject(rs, "factor", -2);
    cfg_case(&z, c, "rope_scaling", rs, "factor -2");
    rs = cJSON_CreateObject();
    cJSON_AddStringToObject(rs, "rope_type", "no-such-rope");
    cJSON_AddNumberToObject(rs, "factor", 2);
    cfg_case(&z, c, "rope_scaling", rs, "unknown rope_type");
  }

  /* Unsupported or missing architecture. */
  cfg_case(&z, c, "model_type", cJSON_CreateString("gpt2"), "unsupported");
  cfg_case(&z, c, "model_type", cJSON_CreateString(""), "empty");
  cfg_case(&z, c, "model_type", cJSON_CreateString("llama\xff"), "invalid UTF-8");
  {
    cJSON *c2 = cJSON_Duplicate(c, 1);
    cJSON_DeleteItemFromObject(c2, "architectures");
    cfg_case(&z, c2, "model_type", NULL, "missing (and no architectures)");
    cJSON_Delete(c2);
  }

  /* Required sizes missing, zero, negative. */
  const char *sizes[] = {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                         "intermediate_size"};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    cfg_case(&z, c, sizes[i], NULL, "missing");
    cfg_case(&z, c, sizes[i], cJSON_CreateNumber(0), "zero");
    cfg_case(&z, c, sizes[i], cJSON_CreateNumber(-1), "negative");
    cfg_case(&z, c, sizes[i], cJSON_CreateNumber(-2147483648.0), "INT32_MIN");
  }
  cfg_case(&z, c, "num_key_value_heads", cJSON_CreateNumber(0), "zero");
  cfg_case(&z, c, "num_key_value_heads", cJSON_CreateNumber(-2), "negative");
  cfg_case(&z, c, "head_dim", cJSON_CreateNumber(0), "zero");
  cfg_case(&z, c, "head_dim", cJSON_CreateNumber(-8), "negative");
  cfg_case(&z, c, "max_position_embeddings", cJSON_CreateNumber(0), "zero");
  cfg_case(&z, c, "max_position_embeddings", cJSON_CreateNumber(-1), "negative");
  cfg_case(&z, c, "rms_norm_eps", cJSON_CreateNumber(-1e-5), "negative");
  cfg_case(&z, c, "rope_theta", cJSON_CreateNumber(0), "zero");
  cfg_case(&z, c, "rope_theta", cJSON_CreateNumber(-10000), "negative");

  /* Heads not divisible by kv heads, more kv heads than heads. */
  cfg_case(&z, c, "num_key_value_heads", cJSON_CreateNumber(3), "4 heads over 3 kv heads");
  cfg_case(&z, c, "num_key_value_heads", cJSON_CreateNumber(8), "more kv heads than heads");

  /* Absurd sizes: must be refused before any allocation of that size. */
  const double huge[] = {2147483647.0, 2147483648.0, 1e12, 1e300};
  const char *big[] = {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                       "num_key_value_heads", "intermediate_size", "head_dim",
                       "max_position_embeddings"};
  for (size_t i = 0; i < sizeof big / sizeof big[0]; i++)
    for (size_t j = 0; j < sizeof huge / sizeof huge[0]; j++) {
      /* A context length of INT32_MAX is only a number (nothing is sized by it); past int32
       * it cannot be represented and must be refused. */
      if (!strcmp(big[i], "max_position_embeddings") && j == 0) continue;
      char what[48];
      snprintf(what, sizeof what, "absurd %g", huge[j]);
      cfg_case(&z, c, big[i], cJSON_CreateNumber(huge[j]), what);
    }
  cfg_case(&z, c, "num_hidden_layers", cJSON_CreateNumber(100000), "100000 layers");
  cfg_case(&z, c, "hidden_size", cJSON_CreateNumber(1 << 20), "2^20 hidden");
  cfg_case(&z, c, "vocab_size", cJSON_CreateNumber(1 << 28), "2^28 vocab");

  cJSON_Delete(c);
  fz_close(&z);
}

Test(loader_fuzz, config_byte_flips, .timeout = 120) {
  /* A flipped config.json may still load (a flip inside a key nobody reads), fail on its own
   * ("config.json: ...") or describe a model the weights do not match (an error naming
   * model.safetensors and a tensor); it must never crash or allocate what it claims. */
  fz z;
  fz_open(&z, BASE_FIXTURE);
  size_t len;
  char *orig = fz_orig(&z, CFG, &len);
  char *buf = malloc(len);
  cr_assert(buf);
  int n_err = 0;
  char what[64];
  for (uint32_t seed = 1; seed <= N_CFG_FLIP_SEEDS; seed++) {
    memcpy(buf, orig, len);
    flip_bytes(buf, len, seed ^ 0x5bd1e995u);
    fz_write(&z, CFG, buf, len);
    snprintf(what, sizeof what, "config.json byte flips, seed %u", seed);
    if (fz_expect_no_crash2(&z, what, CFG, ST) < 0) n_err++;
  }
  fprintf(stderr, "loader_fuzz: %d config.json flip seeds: %d refused, %d loaded\n",
          N_CFG_FLIP_SEEDS, n_err, N_CFG_FLIP_SEEDS - n_err);
  cr_expect(n_err > N_CFG_FLIP_SEEDS / 4, "only %d of %d corrupted configs were refused", n_err,
            N_CFG_FLIP_SEEDS);
  free(buf);
  free(orig);
  fz_close(&z);
}
