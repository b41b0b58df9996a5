/* The tokenizer against the reference (`tokenizers` library) on the committed corpus: for each
 * tokenizer in tests/fixtures/tokenizers/manifest.json, every corpus line must encode to exactly
 * the expected ids, decode back to the text (or to the reference's decode where that differs),
 * stream-decode to the same text, and the chat-like special corpus must match with BOS/EOS
 * insertion and special-token parsing. Expected files come from scripts/make-tokenizer-fixtures. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quiver/tokenizer.h"
#include "../test_util.h"

static void fixture_path(char *out, size_t cap, const char *rel) {
  const char *src = getenv("QV_SOURCE_DIR");
  snprintf(out, cap, "%s/tests/fixtures/tokenizers/%s", src ? src : ".", rel);
}

/* Lines of a JSONL file of strings; each string malloc'd with its byte length. */
typedef struct lines { char **s; size_t *len; size_t n; } lines;

static lines read_jsonl(const char *rel) {
  char path[4096];
  fixture_path(path, sizeof path, rel);
  char *data = test_slurp(path, NULL);
  cr_assert(data, "missing fixture %s", path);
  lines l = {0};
  size_t cap = 0;
  for (char *p = data; *p;) {
    char *nl = strchr(p, '\n');
    if (nl) *nl = '\0';
    cJSON *j = cJSON_Parse(p);
    cr_assert(cJSON_IsString(j), "bad line in %s", rel);
    if (l.n == cap) {
      cap = cap ? cap * 2 : 1024;
      l.s = realloc(l.s, cap * sizeof *l.s);
      l.len = realloc(l.len, cap * sizeof *l.len);
    }
    l.len[l.n] = strlen(j->valuestring);
    l.s[l.n++] = strdup(j->valuestring);
    cJSON_Delete(j);
    if (!nl) break;
    p = nl + 1;
  }
  free(data);
  return l;
}

static void lines_free(lines *l) {
  for (size_t i = 0; i < l->n; i++) free(l->s[i]);
  free(l->s);
  free(l->len);
}

/* Parses one line of base-36 ids; returns the count. */
static size_t parse_ids(const char *line, int32_t *ids, size_t cap) {
  size_t n = 0;
  const char *p = line;
  while (*p && *p != '\n') {
    while (*p == ' ') p++;
    if (!*p || *p == '\n') break;
    char *end;
    long v = strtol(p, &end, 36);
    cr_assert(end != p && n < cap);
    ids[n++] = (int32_t)v;
    p = end;
  }
  return n;
}

static uint64_t fnv64(const char *s, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
  return h;
}

/* The pushes plus the flush of a streaming detokenizer equal the one-shot decode. */
static void check_stream_ids(const qv_tokenizer *tok, const int32_t *ids, size_t n, unsigned flags, const char *name,
                             size_t line) {
  char *text;
  size_t tl;
  qv_error err = {0};
  cr_assert_eq(qv_tokenizer_decode(tok, ids, n, flags, &text, &tl, &err), 0);
  qv_detok *d;
  cr_assert_eq(qv_detok_create(tok, flags, &d), 0);
  char *acc = malloc(tl + 64);
  size_t al = 0;
  for (size_t k = 0; k <= n; k++) {
    const char *piece;
    size_t pl;
    if (k < n) cr_assert_eq(qv_detok_push(d, ids[k], &piece, &pl), 0);
    else cr_assert_eq(qv_detok_flush(d, &piece, &pl), 0);
    cr_assert(al + pl <= tl, "%s line %zu: streaming emitted more than the decode", name, line);
    memcpy(acc + al, piece, pl);
    al += pl;
  }
  cr_assert(al == tl && memcmp(acc, text, tl) == 0, "%s line %zu: streaming != one-shot", name, line);
  free(acc);
  free(text);
  qv_detok_destroy(d);
}

static const cJSON *manifest_entry(cJSON *m, const char *name) {
  const cJSON *e;
  cJSON_ArrayForEach(e, cJSON_GetObjectItem(m, "tokenizers")) {
    if (strcmp(cJSON_GetObjectItem(e, "name")->valuestring, name) == 0) return e;
  }
  return NULL;
}

static void check_ids_file(const qv_tokenizer *tok, const char *name, const lines *corpus, const char *suffix,
                           unsigned flags, int check_decode) {
  char rel[256], path[4096];
  snprintf(rel, sizeof rel, "%s%s", name, suffix);
  fixture_path(path, sizeof path, rel);
  char *exp = test_slurp(path, NULL);
  cr_assert(exp, "missing %s", path);
  /* Reference decodes that differ from the input: line -> (length, hash). */
  size_t *dec_len = calloc(corpus->n, sizeof *dec_len);
  uint64_t *dec_hash = calloc(corpus->n, sizeof *dec_hash);
  char *dec_has = calloc(corpus->n, 1);
  if (check_decode) {
    snprintf(rel, sizeof rel, "%s.decoded.jsonl", name);
    fixture_path(path, sizeof path, rel);
    char *d = test_slurp(path, NULL);
    cr_assert(d);
    for (char *p = d; *p;) {
      char *nl = strchr(p, '\n');
      if (nl) *nl = '\0';
      cJSON *j = cJSON_Parse(p);
      cr_assert(cJSON_IsArray(j));
      size_t li = (size_t)cJSON_GetArrayItem(j, 0)->valuedouble;
      cr_assert(li < corpus->n);
      dec_has[li] = 1;
      dec_len[li] = (size_t)cJSON_GetArrayItem(j, 1)->valuedouble;
      dec_hash[li] = strtoull(cJSON_GetArrayItem(j, 2)->valuestring, NULL, 16);
      cJSON_Delete(j);
      if (!nl) break;
      p = nl + 1;
    }
    free(d);
  }
  size_t cap = 1 << 20;
  int32_t *want = malloc(cap * sizeof *want);
  char *line = exp;
  int mismatches = 0;
  size_t total_ids = 0;
  qv_error err = {0};
  for (size_t i = 0; i < corpus->n; i++) {
    char *nl = strchr(line, '\n');
    cr_assert(nl, "%s: fewer expected lines than corpus lines", name);
    size_t n_want = parse_ids(line, want, cap);
    line = nl + 1;
    total_ids += n_want;
    int32_t *ids;
    size_t n;
    cr_assert_eq(qv_tokenizer_encode(tok, corpus->s[i], corpus->len[i], flags, &ids, &n, &err), 0, "%s", err.msg);
    int same = n == n_want && memcmp(ids, want, n * sizeof *ids) == 0;
    if (!same && mismatches++ < 3) {
      size_t k = 0;
      while (k < n && k < n_want && ids[k] == want[k]) k++;
      cr_log_error("%s%s line %zu (\"%.60s\"): first difference at id %zu: got %d, want %d (n %zu vs %zu)", name,
                   suffix, i, corpus->s[i], k, k < n ? ids[k] : -1, k < n_want ? want[k] : -1, n, n_want);
    }
    free(ids);
    if (!check_decode) continue;
    char *text;
    size_t tl;
    cr_assert_eq(qv_tokenizer_decode(tok, want, n_want, 0, &text, &tl, &err), 0);
    if (dec_has[i]) {
      cr_assert(tl == dec_len[i] && fnv64(text, tl) == dec_hash[i], "%s line %zu: decode differs from the reference: \"%.80s\"",
                name, i, text);
    } else {
      cr_assert(tl == corpus->len[i] && memcmp(text, corpus->s[i], tl) == 0,
                "%s line %zu: decode(encode(x)) != x: \"%.80s\" vs \"%.80s\"", name, i, text, corpus->s[i]);
    }
    /* Streaming: the pushes plus the flush equal the one-shot decode (every 5th line). */
    if (i % 5 == 0) check_stream_ids(tok, want, n_want, 0, name, i);
    free(text);
  }
  cr_assert_eq(mismatches, 0, "%s%s: %d of %zu lines differ from the reference", name, suffix, mismatches, corpus->n);
  cr_assert_gt(total_ids, corpus->n / 2);
  free(want);
  free(exp);
  free(dec_len);
  free(dec_hash);
  free(dec_has);
}

/* Special mode decodes: with and without skip_special_tokens, against the reference's hashes. */
static void check_special_decode(const qv_tokenizer *tok, const char *name, const lines *special) {
  char rel[256], path[4096];
  snprintf(rel, sizeof rel, "%s.special.ids", name);
  fixture_path(path, sizeof path, rel);
  char *exp = test_slurp(path, NULL);
  snprintf(rel, sizeof rel, "%s.special.decoded.jsonl", name);
  fixture_path(path, sizeof path, rel);
  char *dec = test_slurp(path, NULL);
  cr_assert(exp && dec, "missing special fixtures for %s", name);
  int32_t want[65536];
  char *line = exp, *dl = dec;
  qv_error err = {0};
  for (size_t i = 0; i < special->n; i++) {
    char *nl = strchr(line, '\n'), *dnl = strchr(dl, '\n');
    cr_assert(nl && dnl);
    *dnl = '\0';
    size_t n = parse_ids(line, want, 65536);
    cJSON *j = cJSON_Parse(dl);
    cr_assert(cJSON_IsArray(j) && (size_t)cJSON_GetArrayItem(j, 0)->valuedouble == i);
    for (int skip = 0; skip < 2; skip++) {
      char *text;
      size_t tl;
      unsigned flags = skip ? QV_TOK_SKIP_SPECIAL : 0;
      cr_assert_eq(qv_tokenizer_decode(tok, want, n, flags, &text, &tl, &err), 0);
      size_t rl = (size_t)cJSON_GetArrayItem(j, 1 + 2 * skip)->valuedouble;
      uint64_t rh = strtoull(cJSON_GetArrayItem(j, 2 + 2 * skip)->valuestring, NULL, 16);
      cr_assert(tl == rl && fnv64(text, tl) == rh, "%s special line %zu (skip %d): decode \"%.100s\" differs", name, i,
                skip, text);
      free(text);
      if (i % 4 == 0) check_stream_ids(tok, want, n, flags, name, i);
    }
    cJSON_Delete(j);
    line = nl + 1;
    dl = dnl + 1;
  }
  free(exp);
  free(dec);
}

static void check_tokenizer(const char *name) {
  char path[4096];
  fixture_path(path, sizeof path, "manifest.json");
  char *mtext = test_slurp(path, NULL);
  cr_assert(mtext, "missing %s (run scripts/make-tokenizer-fixtures)", path);
  cJSON *m = cJSON_Parse(mtext);
  free(mtext);
  const cJSON *e = manifest_entry(m, name);
  cr_assert(e, "%s not in the manifest", name);
  const char *p = cJSON_GetObjectItem(e, "path")->valuestring;
  /* A tokenizer may be checked against another one's expected files (the GGUF form). */
  const cJSON *expect = cJSON_GetObjectItem(e, "expect");
  char expect_name[256];
  snprintf(expect_name, sizeof expect_name, "%s", cJSON_IsString(expect) ? expect->valuestring : name);
  if (strncmp(p, "shared:", 7) == 0) {
    if (!test_shared_path(path, sizeof path, p + 7)) {
      cJSON_Delete(m);
      cr_skip_test("shared data not found: %s (set QV_SHARED_DIR)", path);
    }
  } else {
    fixture_path(path, sizeof path, p + strlen("fixtures:"));
  }
  cJSON_Delete(m);
  qv_error err = {0};
  qv_tokenizer *tok = NULL;
  cr_assert_eq(qv_tokenizer_load(path, &tok, &err), 0, "%s", err.msg);
  lines corpus = read_jsonl("corpus.jsonl");
  size_t bytes = 0;
  for (size_t i = 0; i < corpus.n; i++) bytes += corpus.len[i];
  cr_assert_geq(bytes, 200000, "the corpus must hold at least 200 KB");
  check_ids_file(tok, expect_name, &corpus, ".ids", 0, 1);
  lines special = read_jsonl("special.jsonl");
  check_ids_file(tok, expect_name, &special, ".special.ids", QV_TOK_ADD_SPECIAL | QV_TOK_PARSE_SPECIAL, 0);
  check_special_decode(tok, expect_name, &special);
  lines_free(&corpus);
  lines_free(&special);
  qv_tokenizer_destroy(tok);
}

Test(tokenizer_corpus, llama2) { check_tokenizer("llama2"); }
Test(tokenizer_corpus, phi2) { check_tokenizer("phi-2"); }
Test(tokenizer_corpus, stories260K) { check_tokenizer("stories260K"); }
Test(tokenizer_corpus, llama3_style) { check_tokenizer("llama3-style"); }
Test(tokenizer_corpus, llama3_style_gguf) { check_tokenizer("llama3-style-gguf"); }
Test(tokenizer_corpus, qwen2_style) { check_tokenizer("qwen2-style"); }
Test(tokenizer_corpus, gpt2_prefix) { check_tokenizer("gpt2-prefix"); }
Test(tokenizer_corpus, metaspace_first) { check_tokenizer("metaspace-first"); }
Test(tokenizer_corpus, metaspace_split) { check_tokenizer("metaspace-split"); }
Test(tokenizer_corpus, metaspace_never) { check_tokenizer("metaspace-never"); }
Test(tokenizer_corpus, whitespace_digits_punct) { check_tokenizer("whitespace-digits-punct"); }
Test(tokenizer_corpus, split_behaviors) { check_tokenizer("split-behaviors"); }
