/* Tokenizer unit tests: the built-in byte tokenizer, a real model directory (stories260K with
 * tokenizer_config.json), streaming detokenization on random splits, and malformed
 * tokenizer.json files (each must fail with a clear message; truncations and byte flips of a
 * valid file must never crash or leak). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "quiver/tokenizer.h"
#include "../test_util.h"

/* Random valid UTF-8 mixing ASCII, 2-, 3- and 4-byte characters. */
static size_t random_utf8(char *buf, size_t max_chars, unsigned *seed) {
  size_t n = 0, k = 1 + (size_t)rand_r(seed) % max_chars;
  for (size_t i = 0; i < k; i++) {
    unsigned r = (unsigned)rand_r(seed), cls = r % 4;
    uint32_t cp = cls == 0 ? 0x20 + r % 0x5F : cls == 1 ? 0x80 + r % 0x780 : cls == 2 ? 0x4E00 + r % 0x5000 : 0x1F300 + r % 0x300;
    if (cp < 0x80) buf[n++] = (char)cp;
    else if (cp < 0x800) { buf[n++] = (char)(0xC0 | (cp >> 6)); buf[n++] = (char)(0x80 | (cp & 0x3F)); }
    else if (cp < 0x10000) { buf[n++] = (char)(0xE0 | (cp >> 12)); buf[n++] = (char)(0x80 | ((cp >> 6) & 0x3F)); buf[n++] = (char)(0x80 | (cp & 0x3F)); }
    else { buf[n++] = (char)(0xF0 | (cp >> 18)); buf[n++] = (char)(0x80 | ((cp >> 12) & 0x3F)); buf[n++] = (char)(0x80 | ((cp >> 6) & 0x3F)); buf[n++] = (char)(0x80 | (cp & 0x3F)); }
  }
  buf[n] = '\0';
  return n;
}

/* Streams ids through a detokenizer and checks the concatenation equals the one-shot decode. */
static void check_stream(const qv_tokenizer *tok, const int32_t *ids, size_t n, unsigned flags) {
  char *want;
  size_t wl;
  qv_error err = {0};
  cr_assert_eq(qv_tokenizer_decode(tok, ids, n, flags, &want, &wl, &err), 0);
  qv_detok *d;
  cr_assert_eq(qv_detok_create(tok, flags, &d), 0);
  char *acc = malloc(wl + 16);
  size_t al = 0;
  for (size_t i = 0; i <= n; i++) {
    const char *t;
    size_t tl;
    if (i < n) cr_assert_eq(qv_detok_push(d, ids[i], &t, &tl), 0);
    else cr_assert_eq(qv_detok_flush(d, &t, &tl), 0);
    cr_assert(al + tl <= wl);
    /* Every piece is whole UTF-8 characters. */
    for (size_t k = 0; k < tl;) {
      unsigned char c = (unsigned char)t[k];
      size_t cl = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
      cr_assert(c < 0x80 || c >= 0xC0, "piece starts inside a character");
      cr_assert(k + cl <= tl, "piece ends inside a character");
      k += cl;
    }
    memcpy(acc + al, t, tl);
    al += tl;
  }
  cr_assert(al == wl && memcmp(acc, want, wl) == 0, "stream \"%.*s\" != \"%s\"", (int)al, acc, want);
  free(acc);
  free(want);
  qv_detok_destroy(d);
}

Test(tokenizer, bytes_tokenizer) {
  qv_tokenizer *tok;
  qv_error err = {0};
  cr_assert_eq(qv_tokenizer_create_bytes(&tok, &err), 0, "%s", err.msg);
  cr_assert_eq(qv_tokenizer_vocab_size(tok), 259);
  cr_assert_eq(qv_tokenizer_bos_id(tok), 1);
  cr_assert_eq(qv_tokenizer_eos_id(tok), 2);
  cr_assert(qv_tokenizer_is_special(tok, 2) && !qv_tokenizer_is_special(tok, 3 + 'a'));
  cr_assert_str_eq(qv_tokenizer_token_str(tok, 1), "<s>");
  cr_assert_eq(qv_tokenizer_token_id(tok, "</s>"), 2);
  int32_t *ids;
  size_t n;
  const char *text = "h\xC3\xA9<s>";
  cr_assert_eq(qv_tokenizer_encode(tok, text, strlen(text), QV_TOK_ADD_SPECIAL, &ids, &n, &err), 0);
  int32_t want[] = {1, 3 + 'h', 3 + 0xC3, 3 + 0xA9, 3 + '<', 3 + 's', 3 + '>'};
  cr_assert_eq(n, 7);
  cr_assert_arr_eq(ids, want, sizeof want);
  free(ids);
  cr_assert_eq(qv_tokenizer_encode(tok, text, strlen(text), QV_TOK_PARSE_SPECIAL, &ids, &n, &err), 0);
  cr_assert_eq(n, 4);
  cr_assert_eq(ids[3], 1);
  free(ids);
  /* Invalid UTF-8 decodes to one U+FFFD per maximal invalid subsequence (E4 B8 is one). */
  int32_t bad[] = {3 + 'a', 3 + 0xE4, 3 + 0xB8, 3 + 'b', 2};
  char *out;
  size_t ol;
  cr_assert_eq(qv_tokenizer_decode(tok, bad, 5, 0, &out, &ol, &err), 0);
  cr_assert_str_eq(out, "a\xEF\xBF\xBD" "b</s>");
  free(out);
  cr_assert_eq(qv_tokenizer_decode(tok, bad, 5, QV_TOK_SKIP_SPECIAL, &out, &ol, &err), 0);
  cr_assert_str_eq(out, "a\xEF\xBF\xBD" "b");
  free(out);
  check_stream(tok, bad, 5, 0);
  /* Random text round-trips and streams. */
  unsigned seed = 1234;
  char buf[1024];
  for (int it = 0; it < 200; it++) {
    size_t len = random_utf8(buf, 100, &seed);
    cr_assert_eq(qv_tokenizer_encode(tok, buf, len, 0, &ids, &n, &err), 0);
    cr_assert_eq(n, len);
    cr_assert_eq(qv_tokenizer_decode(tok, ids, n, 0, &out, &ol, &err), 0);
    cr_assert(ol == len && memcmp(out, buf, len) == 0);
    free(out);
    check_stream(tok, ids, n, 0);
    free(ids);
  }
  qv_tokenizer_destroy(tok);
}

Test(tokenizer, invalid_utf8_input_is_repaired) {
  qv_tokenizer *tok;
  qv_error err = {0};
  cr_assert_eq(qv_tokenizer_create_bytes(&tok, &err), 0);
  int32_t *ids;
  size_t n;
  /* 0xFF is invalid, 0xE4 0xB8 is a truncated 3-byte character: each maximal invalid part
   * becomes U+FFFD (EF BF BD) before tokenizing. */
  cr_assert_eq(qv_tokenizer_encode(tok, "a\xFF" "b\xE4\xB8", 5, 0, &ids, &n, &err), 0);
  int32_t want[] = {3 + 'a', 3 + 0xEF, 3 + 0xBF, 3 + 0xBD, 3 + 'b', 3 + 0xEF, 3 + 0xBF, 3 + 0xBD};
  cr_assert_eq(n, 8);
  cr_assert_arr_eq(ids, want, sizeof want);
  free(ids);
  cr_assert_eq(qv_tokenizer_encode(tok, "", 0, QV_TOK_ADD_SPECIAL, &ids, &n, &err), 0);
  cr_assert(n == 1 && ids[0] == 1);
  free(ids);
  cr_assert_neq(qv_tokenizer_encode(NULL, "x", 1, 0, &ids, &n, &err), 0);
  qv_tokenizer_destroy(tok);
}

Test(tokenizer, stories260K_directory) {
  char dir[4096], ids_path[4096], txt_path[4096];
  if (!test_shared_path(dir, sizeof dir, "models/stories260K/tokenizer.json")) cr_skip_test("stories260K not found");
  test_shared_path(dir, sizeof dir, "models/stories260K");
  test_shared_path(ids_path, sizeof ids_path, "models/stories260K/greedy-256.ids");
  test_shared_path(txt_path, sizeof txt_path, "models/stories260K/greedy-256.txt");
  qv_tokenizer *tok;
  qv_error err = {0};
  cr_assert_eq(qv_tokenizer_load(dir, &tok, &err), 0, "%s", err.msg);
  cr_assert_eq(qv_tokenizer_vocab_size(tok), 512);
  cr_assert_eq(qv_tokenizer_bos_id(tok), 1);
  cr_assert_eq(qv_tokenizer_eos_id(tok), 2);
  char *ids_text = test_slurp(ids_path, NULL), *want = test_slurp(txt_path, NULL);
  cr_assert(ids_text && want);
  int32_t ids[600];
  size_t n = 0;
  for (char *p = ids_text, *end; n < 600; p = end) {
    long v = strtol(p, &end, 10);
    if (end == p) break;
    ids[n++] = (int32_t)v;
  }
  cr_assert_eq(n, 257);
  char *out;
  size_t ol;
  cr_assert_eq(qv_tokenizer_decode(tok, ids, n, QV_TOK_SKIP_SPECIAL, &out, &ol, &err), 0);
  size_t wl = strlen(want);
  while (wl && want[wl - 1] == '\n') wl--;
  cr_assert(ol == wl && memcmp(out, want, wl) == 0, "decode: \"%s\"", out);
  check_stream(tok, ids, n, QV_TOK_SKIP_SPECIAL);
  check_stream(tok, ids, n, 0);
  /* The first sentence re-encodes (with BOS from tokenizer_config) to the model's own ids. */
  const char *first = "Once upon a time, there was a little girl named Lily.";
  int32_t *enc;
  size_t en;
  cr_assert_eq(qv_tokenizer_encode(tok, first, strlen(first), QV_TOK_ADD_SPECIAL, &enc, &en, &err), 0);
  cr_assert_geq(n, en);
  cr_assert_arr_eq(enc, ids, en * sizeof *enc);
  free(enc);
  free(out);
  free(ids_text);
  free(want);
  qv_tokenizer_destroy(tok);
}

/* QV_TOK_KEEP_BYTES: a byte token that is not complete UTF-8 decodes to its own bytes instead of
 * U+FFFD (what completions logprobs key such tokens by), with byte fallback (stories260K, the
 * byte tokenizer) and byte-level BPE; complete text is the same either way. */
static void check_keep_bytes(const qv_tokenizer *tok, int32_t id, const char *want_bytes) {
  char *out;
  size_t ol;
  qv_error err = {0};
  cr_assert_eq(qv_tokenizer_decode(tok, &id, 1, 0, &out, &ol, &err), 0, "%s", err.msg);
  cr_assert_str_eq(out, "\xEF\xBF\xBD");
  free(out);
  cr_assert_eq(qv_tokenizer_decode(tok, &id, 1, QV_TOK_KEEP_BYTES, &out, &ol, &err), 0);
  cr_assert(ol == strlen(want_bytes) && !memcmp(out, want_bytes, ol), "id %d kept %zu bytes", id, ol);
  free(out);
}

Test(tokenizer, keep_bytes_decode) {
  qv_tokenizer *tok;
  qv_error err = {0};
  cr_assert_eq(qv_tokenizer_create_bytes(&tok, &err), 0);
  check_keep_bytes(tok, 3 + 0xE4, "\xE4");
  int32_t pair[] = {3 + 'a', 3 + 0xE4, 3 + 0xB8, 3 + 'b'}, whole[] = {3 + 0xE4, 3 + 0xB8, 3 + 0xAD};
  char *out;
  size_t ol;
  cr_assert_eq(qv_tokenizer_decode(tok, pair, 4, QV_TOK_KEEP_BYTES, &out, &ol, &err), 0);
  cr_assert(ol == 4 && !memcmp(out, "a\xE4\xB8" "b", 4));
  free(out);
  cr_assert_eq(qv_tokenizer_decode(tok, whole, 3, QV_TOK_KEEP_BYTES, &out, &ol, &err), 0);
  cr_assert_str_eq(out, "\xE4\xB8\xAD");
  free(out);
  qv_tokenizer_destroy(tok);

  char dir[4096];
  if (test_shared_path(dir, sizeof dir, "models/stories260K/tokenizer.json")) {
    cr_assert_eq(qv_tokenizer_load(dir, &tok, &err), 0, "%s", err.msg);
    int32_t e4 = qv_tokenizer_token_id(tok, "<0xE4>"), e5 = qv_tokenizer_token_id(tok, "<0xE5>");
    cr_assert(e4 > 0 && e5 > 0);
    check_keep_bytes(tok, e4, "\xE4");
    check_keep_bytes(tok, e5, "\xE5");
    int32_t once = qv_tokenizer_token_id(tok, "\xE2\x96\x81Once");
    cr_assert_gt(once, 0);
    cr_assert_eq(qv_tokenizer_decode(tok, &once, 1, QV_TOK_KEEP_BYTES, &out, &ol, &err), 0);
    cr_assert_str_eq(out, "Once");
    free(out);
    qv_tokenizer_destroy(tok);
  }

  const char *src = getenv("QV_SOURCE_DIR");
  snprintf(dir, sizeof dir, "%s/tests/fixtures/tokenizers/qwen2-style/tokenizer.json", src ? src : ".");
  cr_assert_eq(qv_tokenizer_load(dir, &tok, &err), 0, "%s", err.msg);
  int32_t a_umlaut = qv_tokenizer_token_id(tok, "\xC3\xA4"); /* byte-level 'ä' is the byte E4 */
  cr_assert_gt(a_umlaut, 0);
  check_keep_bytes(tok, a_umlaut, "\xE4");
  qv_tokenizer_destroy(tok);
}

/* Writes text to a temporary file and tries to load it; returns the error code. */
static int load_text(const char *text, size_t len, qv_error *err) {
  char path[] = "/tmp/qv-tokjson-XXXXXX";
  int fd = mkstemp(path);
  cr_assert(fd >= 0);
  cr_assert_eq(write(fd, text, len), (ssize_t)len);
  close(fd);
  qv_tokenizer *tok = NULL;
  memset(err, 0, sizeof *err);
  int rc = qv_tokenizer_load(path, &tok, err);
  if (rc == 0) {
    int32_t *ids;
    size_t n;
    if (qv_tokenizer_encode(tok, "Hello world <s> 123", 19, QV_TOK_PARSE_SPECIAL, &ids, &n, err) == 0) {
      char *out;
      size_t ol;
      if (qv_tokenizer_decode(tok, ids, n, 0, &out, &ol, err) == 0) free(out);
      free(ids);
    }
    qv_tokenizer_destroy(tok);
  }
  remove(path);
  return rc;
}

#define MINI_HEAD "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2, \"<s>\": 3}, "
static const struct { const char *json, *expect; } BAD[] = {
    {"{ \"model\": ", "invalid JSON"},
    {"[1, 2, 3]", "not an object"},
    {"{}", "model"},
    {MINI_HEAD "\"merges\": [\"a c\"]}}", "not in the vocabulary"},
    {MINI_HEAD "\"merges\": [\"b b\"]}}", "merged token is not in the vocabulary"},
    {MINI_HEAD "\"merges\": [\"ab\"]}}", "left right"},
    {MINI_HEAD "\"merges\": [7]}}", "merges[0]"},
    {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\xFF\": 0}, \"merges\": []}}", "UTF-8"},
    {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -4}, \"merges\": []}}", "non-negative"},
    {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": \"x\"}, \"merges\": []}}", "non-negative"},
    {"{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}", "not supported"},
    {MINI_HEAD "\"merges\": []}, \"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"(unclosed\"}, \"behavior\": \"Isolated\"}}", "bad regex"},
    {MINI_HEAD "\"merges\": []}, \"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"a\"}, \"behavior\": \"Sideways\"}}", "behavior"},
    {MINI_HEAD "\"merges\": []}, \"normalizer\": {\"type\": \"Precompiled\"}}", "not supported"},
    {MINI_HEAD "\"merges\": []}, \"decoder\": {\"type\": \"Strip\", \"content\": \" \", \"start\": -1, \"stop\": 0}}", "Strip"},
    {MINI_HEAD "\"merges\": []}, \"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": [{\"SpecialToken\": {\"id\": \"<s>\"}}], \"special_tokens\": {}}}", "no ids"},
    {MINI_HEAD "\"merges\": []}, \"added_tokens\": [{\"id\": 9, \"content\": \"\"}]}", "empty"},
    {MINI_HEAD "\"merges\": [], \"unk_token\": \"<nope>\"}}", "unk_token"},
    {MINI_HEAD "\"merges\": [], \"dropout\": 0.5}}", "dropout"},
};

Test(tokenizer, malformed_json_files) {
  for (size_t i = 0; i < sizeof BAD / sizeof *BAD; i++) {
    qv_error err;
    int rc = load_text(BAD[i].json, strlen(BAD[i].json), &err);
    cr_assert_neq(rc, 0, "case %zu loaded", i);
    cr_assert(strstr(err.msg, BAD[i].expect), "case %zu: message \"%s\" lacks \"%s\"", i, err.msg, BAD[i].expect);
  }
  qv_error err;
  cr_assert_eq(qv_tokenizer_load("/nonexistent/tokenizer.json", &(qv_tokenizer *){NULL}, &err), QV_ENOTFOUND);
  cr_assert_neq(qv_tokenizer_load("/tmp", &(qv_tokenizer *){NULL}, &err), 0);
}

/* Every truncation and random byte flips of a small valid tokenizer.json: no crash, no leak. */
Test(tokenizer, truncated_and_flipped_json) {
  const char *good = MINI_HEAD "\"merges\": [\"a b\"], \"unk_token\": \"a\", \"byte_fallback\": false}, "
                     "\"normalizer\": {\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"NFKC\"}, {\"type\": \"Prepend\", \"prepend\": \"b\"}]},"
                     "\"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": {\"Regex\": \"\\\\s+\"}, \"behavior\": \"Removed\"}, {\"type\": \"Metaspace\"}]},"
                     "\"decoder\": {\"type\": \"Sequence\", \"decoders\": [{\"type\": \"Replace\", \"pattern\": {\"String\": \"a\"}, \"content\": \" \"}, {\"type\": \"Fuse\"}]},"
                     "\"added_tokens\": [{\"id\": 3, \"content\": \"<s>\", \"special\": true}]}";
  size_t len = strlen(good);
  qv_error err;
  cr_assert_eq(load_text(good, len, &err), 0, "%s", err.msg);
  for (size_t cut = 0; cut < len; cut += 3) cr_assert_neq(load_text(good, cut, &err), 0, "prefix %zu loaded", cut);
  unsigned seed = 99;
  char *copy = malloc(len);
  for (int it = 0; it < 150; it++) {
    memcpy(copy, good, len);
    for (int k = 0; k < 3; k++) copy[(size_t)rand_r(&seed) % len] = (char)(rand_r(&seed) & 0xFF);
    load_text(copy, len, &err);
  }
  free(copy);
}

/* One tokenizer shared by four threads gives every thread the single-threaded ids. */
#include <pthread.h>

typedef struct thread_job {
  const qv_tokenizer *tok;
  const char *text;
  size_t len;
  int32_t *ids;
  size_t n;
  int rc;
} thread_job;

static void *encode_job(void *arg) {
  thread_job *j = arg;
  qv_error err = {0};
  for (int it = 0; it < 3 && j->rc == 0; it++) {
    free(j->ids);
    j->ids = NULL;
    j->rc = qv_tokenizer_encode(j->tok, j->text, j->len, 0, &j->ids, &j->n, &err);
  }
  return NULL;
}

Test(tokenizer, shared_between_threads) {
  const char *src = getenv("QV_SOURCE_DIR");
  char path[4096], corpus_path[4096];
  snprintf(path, sizeof path, "%s/tests/fixtures/tokenizers/qwen2-style/tokenizer.json", src ? src : ".");
  snprintf(corpus_path, sizeof corpus_path, "%s/tests/fixtures/tokenizers/corpus.jsonl", src ? src : ".");
  size_t len;
  char *text = test_slurp(corpus_path, &len);
  cr_assert(text);
  len = len > 60000 ? 60000 : len;
  while (len > 0 && ((unsigned char)text[len] & 0xC0) == 0x80) len--; /* cut on a character */
  qv_tokenizer *tok;
  qv_error err = {0};
  cr_assert_eq(qv_tokenizer_load(path, &tok, &err), 0, "%s", err.msg);
  int32_t *ref;
  size_t n_ref;
  cr_assert_eq(qv_tokenizer_encode(tok, text, len, 0, &ref, &n_ref, &err), 0);
  thread_job jobs[4];
  pthread_t th[4];
  for (int i = 0; i < 4; i++) {
    jobs[i] = (thread_job){tok, text, len, NULL, 0, 0};
    cr_assert_eq(pthread_create(&th[i], NULL, encode_job, &jobs[i]), 0);
  }
  for (int i = 0; i < 4; i++) {
    pthread_join(th[i], NULL);
    cr_assert_eq(jobs[i].rc, 0);
    cr_assert(jobs[i].n == n_ref && memcmp(jobs[i].ids, ref, n_ref * sizeof *ref) == 0, "thread %d differs", i);
    free(jobs[i].ids);
  }
  free(ref);
  free(text);
  qv_tokenizer_destroy(tok);
}

/* Random id sequences (any token, specials and byte tokens included) stream to exactly the
 * one-shot decode, with and without skip-special, for every decoder family in the fixtures. */
Test(tokenizer, streaming_random_ids) {
  static const char *const names[] = {"llama3-style", "metaspace-first", "metaspace-split", "metaspace-never",
                                      "whitespace-digits-punct", "split-behaviors"};
  const char *src = getenv("QV_SOURCE_DIR");
  unsigned seed = 4242;
  for (size_t t = 0; t < sizeof names / sizeof *names + 1; t++) {
    char path[4096];
    if (t < sizeof names / sizeof *names)
      snprintf(path, sizeof path, "%s/tests/fixtures/tokenizers/%s/tokenizer.json", src ? src : ".", names[t]);
    else if (!test_shared_path(path, sizeof path, "data/tokenizers/llama2.tokenizer.json"))
      break;
    qv_tokenizer *tok;
    qv_error err = {0};
    cr_assert_eq(qv_tokenizer_load(path, &tok, &err), 0, "%s", err.msg);
    int32_t nv = qv_tokenizer_vocab_size(tok);
    int32_t ids[64];
    for (int it = 0; it < 150; it++) {
      size_t n = 1 + (size_t)rand_r(&seed) % 64;
      for (size_t k = 0; k < n; k++) {
        unsigned r = (unsigned)rand_r(&seed);
        /* Bias towards low ids: specials and byte tokens live there. */
        ids[k] = (int32_t)(r % 3 == 0 ? r % 300 % (unsigned)nv : r % (unsigned)nv);
      }
      check_stream(tok, ids, n, 0);
      check_stream(tok, ids, n, QV_TOK_SKIP_SPECIAL);
    }
    qv_tokenizer_destroy(tok);
  }
}

/* Random bytes (mostly invalid UTF-8), long runs and special-token fragments encode without
 * error on every fixture tokenizer, with every flag combination, and decode again. */
Test(tokenizer, encode_random_bytes) {
  static const char *const names[] = {"llama3-style", "qwen2-style", "gpt2-prefix", "metaspace-first", "metaspace-split",
                                      "metaspace-never", "whitespace-digits-punct", "split-behaviors"};
  static const char *const frags[] = {"<|im_start|>", "<|im_", "<s>", " ", "\n", "\xe2\x96\x81", "\xc4\xa0", "word", "9"};
  const char *src = getenv("QV_SOURCE_DIR");
  unsigned seed = 77;
  char buf[4096];
  for (size_t t = 0; t < sizeof names / sizeof *names; t++) {
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/fixtures/tokenizers/%s/tokenizer.json", src ? src : ".", names[t]);
    qv_tokenizer *tok;
    qv_error err = {0};
    cr_assert_eq(qv_tokenizer_load(path, &tok, &err), 0, "%s", err.msg);
    for (int it = 0; it < 60; it++) {
      size_t n = 0, target = (size_t)rand_r(&seed) % 2000;
      while (n < target) {
        unsigned r = (unsigned)rand_r(&seed);
        if (r % 4 == 0) {
          const char *f = frags[r / 4 % (sizeof frags / sizeof *frags)];
          size_t fl = strlen(f), reps = 1 + r / 64 % 40;
          for (size_t k = 0; k < reps && n + fl < sizeof buf; k++, n += fl) memcpy(buf + n, f, fl);
        } else {
          buf[n++] = (char)(r >> 8);
        }
        if (n >= sizeof buf - 64) break;
      }
      unsigned flags = (unsigned)it % 4; /* ADD_SPECIAL and PARSE_SPECIAL combinations */
      int32_t *ids;
      size_t n_ids;
      cr_assert_eq(qv_tokenizer_encode(tok, buf, n, flags, &ids, &n_ids, &err), 0, "%s: %s", names[t], err.msg);
      char *out;
      size_t ol;
      cr_assert_eq(qv_tokenizer_decode(tok, ids, n_ids, QV_TOK_SKIP_SPECIAL, &out, &ol, &err), 0);
      free(out);
      free(ids);
    }
    qv_tokenizer_destroy(tok);
  }
}

/* `quiver tokenize` (cli_tokenize in the library): encode, decode and error exits, with stdout
 * captured in a temporary file. */
#include <fcntl.h>

#include "cli/cli.h"

static int run_cli(char **argv, int argc, char *out, size_t cap) {
  char path[] = "/tmp/qv-cli-XXXXXX";
  int fd = mkstemp(path);
  cr_assert(fd >= 0);
  fflush(stdout);
  int saved = dup(1);
  dup2(fd, 1);
  int rc = cli_tokenize(argc, argv);
  fflush(stdout);
  dup2(saved, 1);
  close(saved);
  lseek(fd, 0, SEEK_SET);
  ssize_t n = read(fd, out, cap - 1);
  out[n > 0 ? n : 0] = '\0';
  close(fd);
  remove(path);
  return rc;
}

Test(tokenizer, cli_tokenize) {
  char dir[4096], out[4096];
  if (!test_shared_path(dir, sizeof dir, "models/stories260K/tokenizer.json")) cr_skip_test("stories260K not found");
  test_shared_path(dir, sizeof dir, "models/stories260K");
  char *enc[] = {"tokenize", "--tokenizer", dir, "--add-special", "--text", "Once upon a time", NULL};
  cr_assert_eq(run_cli(enc, 6, out, sizeof out), 0);
  cr_assert_str_eq(out, "[1, 403, 407, 261, 378]\n");
  char *dec[] = {"tokenize", "--tokenizer", dir, "--decode", "--skip-special", "--text", "[1, 403, 407, 261, 378]", NULL};
  cr_assert_eq(run_cli(dec, 7, out, sizeof out), 0);
  cr_assert_str_eq(out, "Once upon a time\n");
  char *bad_ids[] = {"tokenize", "--tokenizer", dir, "--decode", "--text", "[1, 100000]", NULL};
  cr_assert_eq(run_cli(bad_ids, 6, out, sizeof out), 1);
  char *bad_json[] = {"tokenize", "--tokenizer", dir, "--decode", "--text", "[1, ", NULL};
  cr_assert_eq(run_cli(bad_json, 6, out, sizeof out), 1);
  char *no_tok[] = {"tokenize", "--text", "x", NULL};
  cr_assert_eq(run_cli(no_tok, 3, out, sizeof out), 1);
  char *missing[] = {"tokenize", "--tokenizer", "/nonexistent/dir", "--text", "x", NULL};
  cr_assert_eq(run_cli(missing, 5, out, sizeof out), 1);
}

/* A bare tokenizer.json (no tokenizer_config.json): BOS comes from the post-processor, EOS from
 * the special added tokens; accessors answer by the tokens' original text. */
Test(tokenizer, llama2_json_accessors) {
  char path[4096];
  if (!test_shared_path(path, sizeof path, "data/tokenizers/llama2.tokenizer.json")) cr_skip_test("llama2 tokenizer not found");
  qv_tokenizer *tok;
  qv_error err = {0};
  cr_assert_eq(qv_tokenizer_load(path, &tok, &err), 0, "%s", err.msg);
  cr_assert_eq(qv_tokenizer_vocab_size(tok), 32000);
  cr_assert_eq(qv_tokenizer_bos_id(tok), 1);
  cr_assert_eq(qv_tokenizer_eos_id(tok), 2);
  cr_assert_eq(qv_tokenizer_token_id(tok, "<s>"), 1);
  cr_assert_eq(qv_tokenizer_token_id(tok, "</s>"), 2);
  cr_assert_eq(qv_tokenizer_token_id(tok, "\xe2\x96\x81the"), 278);
  cr_assert_eq(qv_tokenizer_token_id(tok, "no such token"), -1);
  cr_assert_str_eq(qv_tokenizer_token_str(tok, 2), "</s>");
  cr_assert_str_eq(qv_tokenizer_token_str(tok, 32000), "");
  cr_assert(qv_tokenizer_is_special(tok, 0) && qv_tokenizer_is_special(tok, 2) && !qv_tokenizer_is_special(tok, 278));
  int32_t *ids;
  size_t n;
  cr_assert_eq(qv_tokenizer_encode(tok, "the", 3, QV_TOK_ADD_SPECIAL, &ids, &n, &err), 0);
  cr_assert(n == 2 && ids[0] == 1 && ids[1] == 278);
  free(ids);
  qv_tokenizer_destroy(tok);
}

/* tokenizer_config.json: add_bos_token / add_eos_token rebuild their side of the template; an
 * absent flag keeps the tokenizer.json's behaviour; a broken config is a load error. */
static int load_dir_with_config(const char *tok_json, const char *config, qv_tokenizer **tok, qv_error *err) {
  char dir[] = "/tmp/qv-tokdir-XXXXXX";
  cr_assert(mkdtemp(dir));
  char p1[256], p2[256];
  snprintf(p1, sizeof p1, "%s/tokenizer.json", dir);
  snprintf(p2, sizeof p2, "%s/tokenizer_config.json", dir);
  FILE *f = fopen(p1, "wb");
  fputs(tok_json, f);
  fclose(f);
  f = fopen(p2, "wb");
  fputs(config, f);
  fclose(f);
  int rc = qv_tokenizer_load(dir, tok, err);
  remove(p1);
  remove(p2);
  rmdir(dir);
  return rc;
}

Test(tokenizer, config_bos_eos_flags) {
  char path[4096];
  if (!test_shared_path(path, sizeof path, "models/stories260K/tokenizer.json")) cr_skip_test("stories260K not found");
  char *json = test_slurp(path, NULL);
  struct { const char *config; int32_t first, last; size_t extra; } cases[] = {
      {"{\"bos_token\": \"<s>\", \"eos_token\": \"</s>\", \"add_bos_token\": false, \"add_eos_token\": true}", 403, 2, 1},
      {"{\"eos_token\": {\"content\": \"</s>\"}, \"add_eos_token\": true}", 1, 2, 2},
      {"{\"add_eos_token\": false}", 1, 407, 1},
      {"{\"add_bos_token\": false}", 403, 407, 0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    qv_tokenizer *tok;
    qv_error err = {0};
    cr_assert_eq(load_dir_with_config(json, cases[i].config, &tok, &err), 0, "case %zu: %s", i, err.msg);
    int32_t *ids;
    size_t n;
    cr_assert_eq(qv_tokenizer_encode(tok, "Once upon", 9, QV_TOK_ADD_SPECIAL, &ids, &n, &err), 0);
    cr_assert_eq(n, 2 + cases[i].extra, "case %zu: %zu ids", i, n);
    cr_assert(ids[0] == cases[i].first && ids[n - 1] == cases[i].last, "case %zu: %d .. %d", i, ids[0], ids[n - 1]);
    free(ids);
    qv_tokenizer_destroy(tok);
  }
  qv_tokenizer *tok;
  qv_error err = {0};
  cr_assert_neq(load_dir_with_config(json, "{\"add_bos_token\": tru", &tok, &err), 0);
  cr_assert(strstr(err.msg, "tokenizer_config.json"), "%s", err.msg);
  cr_assert_neq(load_dir_with_config(json, "{\"bos_token\": \"<nope>\", \"add_bos_token\": true}", &tok, &err), 0);
  free(json);
}

/* After priming with a prompt, the stream returns exactly the text the generated ids add to the
 * one-shot decode of prompt + generation, and never text held back from the prompt. */
static void check_primed(const qv_tokenizer *tok, const int32_t *ids, size_t n_prompt, size_t n) {
  char *all, *pre;
  size_t al, pl;
  qv_error err = {0};
  cr_assert_eq(qv_tokenizer_decode(tok, ids, n, 0, &all, &al, &err), 0);
  cr_assert_eq(qv_tokenizer_decode(tok, ids, n_prompt, 0, &pre, &pl, &err), 0);
  /* Only where the prompt's text is a prefix of the whole (a prompt ending inside a UTF-8
   * character is not) is "the generated text" well defined. */
  if (pl <= al && memcmp(all, pre, pl) == 0 && !(pl >= 3 && !memcmp(pre + pl - 3, "\xEF\xBF\xBD", 3))) {
    qv_detok *d;
    cr_assert_eq(qv_detok_create(tok, 0, &d), 0);
    cr_assert_eq(qv_detok_prime(d, ids, n_prompt), 0);
    char *acc = malloc(al + 16);
    size_t cl = 0;
    for (size_t i = n_prompt; i <= n; i++) {
      const char *t;
      size_t tl;
      if (i < n) cr_assert_eq(qv_detok_push(d, ids[i], &t, &tl), 0);
      else cr_assert_eq(qv_detok_flush(d, &t, &tl), 0);
      cr_assert(cl + tl <= al - pl, "stream longer than the generated text");
      memcpy(acc + cl, t, tl);
      cl += tl;
    }
    cr_assert(cl == al - pl && memcmp(acc, all + pl, cl) == 0, "primed stream \"%.*s\" != \"%s\"", (int)cl, acc,
              all + pl);
    free(acc);
    qv_detok_destroy(d);
  }
  free(all);
  free(pre);
}

Test(tokenizer, streaming_after_prime) {
  char path[4096];
  unsigned seed = 777;
  const char *src = getenv("QV_SOURCE_DIR");
  static const char *const names[] = {"llama3-style", "metaspace-first", "metaspace-split"};
  for (size_t t = 0; t < sizeof names / sizeof *names + 1; t++) {
    if (t < sizeof names / sizeof *names)
      snprintf(path, sizeof path, "%s/tests/fixtures/tokenizers/%s/tokenizer.json", src ? src : ".", names[t]);
    else if (!test_shared_path(path, sizeof path, "models/stories260K"))
      break;
    qv_tokenizer *tok;
    qv_error err = {0};
    cr_assert_eq(qv_tokenizer_load(path, &tok, &err), 0, "%s", err.msg);
    int32_t nv = qv_tokenizer_vocab_size(tok), ids[48];
    for (int it = 0; it < 100; it++) {
      size_t n = 2 + (size_t)rand_r(&seed) % 46, np = 1 + (size_t)rand_r(&seed) % (n - 1);
      for (size_t k = 0; k < n; k++) {
        unsigned r = (unsigned)rand_r(&seed);
        ids[k] = (int32_t)(r % 3 == 0 ? 3 + r % 300 % (unsigned)(nv - 3) : 3 + r % (unsigned)(nv - 3));
      }
      check_primed(tok, ids, np, n);
    }
    if (t == sizeof names / sizeof *names) {
      /* stories260K: a prompt ending in the byte token <0x0A> ("\n") must not leak it. */
      int32_t nl = qv_tokenizer_token_id(tok, "<0x0A>");
      cr_assert_geq(nl, 0);
      int32_t p[4] = {1, 403, nl, 407};
      qv_detok *d;
      cr_assert_eq(qv_detok_create(tok, 0, &d), 0);
      cr_assert_eq(qv_detok_prime(d, p, 3), 0);
      const char *txt;
      size_t tl;
      cr_assert_eq(qv_detok_push(d, p[3], &txt, &tl), 0);
      cr_assert(tl == 0 || txt[0] != '\n', "prompt newline leaked into the first chunk");
      qv_detok_destroy(d);
      check_primed(tok, p, 3, 4);
    }
    qv_tokenizer_destroy(tok);
  }
}
