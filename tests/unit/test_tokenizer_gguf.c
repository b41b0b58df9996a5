/* GGUF vocabularies: llama.cpp's test vectors for the Llama 2 (SentencePiece) and GPT-2
 * (byte-level) vocab-only GGUF files in ../shared/data/tokenizers must match exactly, and
 * truncated or corrupted GGUF files must fail cleanly at every cut point. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

#include "quiver/tokenizer.h"
#include "../test_util.h"

static char *shared_path(const char *rel) {
  const char *dir = getenv("QV_SHARED_DIR");
  const char *src = getenv("QV_SOURCE_DIR");
  char *p = malloc(4096);
  if (dir && *dir) snprintf(p, 4096, "%s/%s", dir, rel);
  else snprintf(p, 4096, "%s/../shared/%s", src ? src : ".", rel);
  return p;
}

static void check_vectors(const char *name) {
  char rel[256];
  snprintf(rel, sizeof rel, "data/tokenizers/%s", name);
  char *gguf = shared_path(rel);
  snprintf(rel, sizeof rel, "data/tokenizers/%s.inp", name);
  char *inp_path = shared_path(rel);
  snprintf(rel, sizeof rel, "data/tokenizers/%s.out", name);
  char *out_path = shared_path(rel);
  size_t inp_len = 0, out_len = 0;
  char *inp = test_slurp(inp_path, &inp_len), *out = test_slurp(out_path, &out_len);
  if (!inp || !out) {
    free(inp); free(out); free(gguf); free(inp_path); free(out_path);
    cr_skip_test("shared tokenizer data not found (set QV_SHARED_DIR)");
  }
  qv_error err = {0};
  qv_tokenizer *tok = NULL;
  cr_assert_eq(qv_tokenizer_load(gguf, &tok, &err), 0, "%s", err.msg);
  static const char sep[] = "\n__ggml_vocab_test__\n";
  char *p = inp, *o = out;
  int n_cases = 0;
  while (p < inp + inp_len) {
    char *end = strstr(p, sep);
    cr_assert(end, "unterminated case");
    char *eol = strchr(o, '\n');
    cr_assert(eol, "missing expected line");
    *eol = '\0';
    int32_t *ids;
    size_t n;
    cr_assert_eq(qv_tokenizer_encode(tok, p, (size_t)(end - p), 0, &ids, &n, &err), 0, "%s", err.msg);
    size_t k = 0;
    char *q = o;
    for (;;) {
      char *next;
      long v = strtol(q, &next, 10);
      if (next == q) break;
      cr_assert(k < n && ids[k] == v, "%s case %d (\"%.*s\"): id %zu differs", name, n_cases, (int)(end - p), p, k);
      k++;
      q = next;
    }
    cr_assert_eq(k, n, "%s case %d: %zu ids, expected %zu", name, n_cases, n, k);
    /* Byte-level BPE round-trips every input exactly. */
    char *text;
    size_t tl;
    cr_assert_eq(qv_tokenizer_decode(tok, ids, n, 0, &text, &tl, &err), 0);
    if (strstr(name, "gpt-2"))
      cr_assert(tl == (size_t)(end - p) && memcmp(text, p, tl) == 0, "%s case %d: decode(encode(x)) != x", name, n_cases);
    free(text);
    free(ids);
    n_cases++;
    p = end + sizeof sep - 1;
    o = eol + 1;
  }
  cr_assert_gt(n_cases, 10);
  qv_tokenizer_destroy(tok);
  free(inp); free(out); free(gguf); free(inp_path); free(out_path);
}

Test(tokenizer_gguf, llama_spm_vectors) { check_vectors("ggml-vocab-llama-spm.gguf"); }
Test(tokenizer_gguf, gpt2_vectors) { check_vectors("ggml-vocab-gpt-2.gguf"); }

/* Every prefix of a real GGUF and random byte corruptions load or fail, never crash. */
Test(tokenizer_gguf, truncated_and_corrupt) {
  char *path = shared_path("data/tokenizers/ggml-vocab-gpt-2.gguf");
  size_t len;
  char *data = test_slurp(path, &len);
  free(path);
  if (!data) cr_skip_test("shared tokenizer data not found");
  char tmpl[] = "/tmp/qv-gguf-XXXXXX";
  int fd = mkstemp(tmpl);
  cr_assert(fd >= 0);
  close(fd);
  char gpath[64];
  snprintf(gpath, sizeof gpath, "%s.gguf", tmpl);
  /* Cut points: dense over the header, sparse over the body. */
  size_t cuts[64];
  int n_cuts = 0;
  for (size_t c = 0; c < 400 && n_cuts < 40; c += 10) cuts[n_cuts++] = c;
  srand(11);
  while (n_cuts < 56) cuts[n_cuts++] = (size_t)rand() % len;
  for (int i = 0; i < n_cuts; i++) {
    FILE *f = fopen(gpath, "wb");
    fwrite(data, 1, cuts[i], f);
    fclose(f);
    qv_tokenizer *tok = NULL;
    qv_error err = {0};
    int rc = qv_tokenizer_load(gpath, &tok, &err);
    cr_assert_neq(rc, 0, "truncated at %zu loaded", cuts[i]);
    cr_assert(err.msg[0] != '\0');
  }
  for (int i = 0; i < 24; i++) {
    char *copy = malloc(len);
    memcpy(copy, data, len);
    size_t at = (size_t)rand() % 4096;
    for (int k = 0; k < 8; k++) copy[(at + (size_t)k) % len] = (char)(rand() & 0xFF);
    FILE *f = fopen(gpath, "wb");
    fwrite(copy, 1, len, f);
    fclose(f);
    free(copy);
    qv_tokenizer *tok = NULL;
    qv_error err = {0};
    if (qv_tokenizer_load(gpath, &tok, &err) == 0) {
      int32_t *ids;
      size_t n;
      if (qv_tokenizer_encode(tok, "Hello world", 11, 0, &ids, &n, &err) == 0) free(ids);
      qv_tokenizer_destroy(tok);
    }
  }
  remove(gpath);
  remove(tmpl);
  free(data);
}

Test(tokenizer_gguf, unknown_pre_is_an_error) {
  /* A minimal GGUF: model gpt2, pre "no-such-pre", 3 tokens and 1 merge. */
  unsigned char buf[512];
  size_t o = 0;
#define PUT(p, n) (memcpy(buf + o, (p), (n)), o += (n))
#define U32(v) do { uint32_t x_ = (v); PUT(&x_, 4); } while (0)
#define U64(v) do { uint64_t x_ = (v); PUT(&x_, 8); } while (0)
#define STR(s) do { U64(strlen(s)); PUT((s), strlen(s)); } while (0)
  PUT("GGUF", 4); U32(3); U64(0); U64(4);
  STR("tokenizer.ggml.model"); U32(8); STR("gpt2");
  STR("tokenizer.ggml.pre"); U32(8); STR("no-such-pre");
  STR("tokenizer.ggml.tokens"); U32(9); U32(8); U64(3); STR("a"); STR("b"); STR("ab");
  STR("tokenizer.ggml.merges"); U32(9); U32(8); U64(1); STR("a b");
  char path[] = "/tmp/qv-gguf-pre-XXXXXX";
  int fd = mkstemp(path);
  cr_assert(fd >= 0);
  cr_assert_eq(write(fd, buf, o), (ssize_t)o);
  close(fd);
  qv_tokenizer *tok = NULL;
  qv_error err = {0};
  cr_assert_eq(qv_tokenizer_load(path, &tok, &err), QV_EUNSUPPORTED, "%s", err.msg);
  cr_assert(strstr(err.msg, "no-such-pre"), "%s", err.msg);
  /* The same file with a known pre-tokenizer loads and merges "ab". */
  o = 0;
  PUT("GGUF", 4); U32(3); U64(0); U64(4);
  STR("tokenizer.ggml.model"); U32(8); STR("gpt2");
  STR("tokenizer.ggml.pre"); U32(8); STR("gpt-2");
  STR("tokenizer.ggml.tokens"); U32(9); U32(8); U64(3); STR("a"); STR("b"); STR("ab");
  STR("tokenizer.ggml.merges"); U32(9); U32(8); U64(1); STR("a b");
  fd = open(path, O_WRONLY | O_TRUNC);
  cr_assert_eq(write(fd, buf, o), (ssize_t)o);
  close(fd);
  cr_assert_eq(qv_tokenizer_load(path, &tok, &err), 0, "%s", err.msg);
  int32_t *ids;
  size_t n;
  cr_assert_eq(qv_tokenizer_encode(tok, "abba", 4, 0, &ids, &n, &err), 0);
  cr_assert_eq(n, 3);
  cr_assert(ids[0] == 2 && ids[1] == 1 && ids[2] == 0);
  free(ids);
  qv_tokenizer_destroy(tok);
  remove(path);
}

/* Every pre-tokenizer name the issue lists loads (its regexes compile under PCRE2) and encodes
 * mixed text; each writes a tiny gpt2 GGUF whose vocabulary is the 256 byte-level characters. */
Test(tokenizer_gguf, pre_tokenizer_families) {
  static const char *const names[] = {"default", "llama-bpe", "qwen2", "deepseek-llm", "deepseek-coder", "falcon",
                                      "mpt", "starcoder", "refact", "gpt-2", "phi-2", "command-r", "smollm", "gpt-4o",
                                      "chatglm4", "deepseek-v3", "tekken", "bloom", "viking"};
  static const char *const text = "Hello, World! It's 12345 \xe4\xbd\xa0\xe5\xa5\xbd \xd9\x85\xd8\xb1\xd8\xad\xd8\xa8\xd8\xa7  \n\n x";
  size_t cap = 1 << 16;
  unsigned char *buf = malloc(cap);
  for (size_t f = 0; f < sizeof names / sizeof *names; f++) {
    size_t o = 0;
#define PUTB(p, n) (memcpy(buf + o, (p), (n)), o += (n))
#define U32B(v) do { uint32_t x_ = (v); PUTB(&x_, 4); } while (0)
#define U64B(v) do { uint64_t x_ = (v); PUTB(&x_, 8); } while (0)
#define STRB(s, n) do { U64B(n); PUTB((s), (n)); } while (0)
    PUTB("GGUF", 4); U32B(3); U64B(0); U64B(4);
    STRB("tokenizer.ggml.model", 20); U32B(8); STRB("gpt2", 4);
    STRB("tokenizer.ggml.pre", 18); U32B(8); STRB(names[f], strlen(names[f]));
    STRB("tokenizer.ggml.tokens", 21); U32B(9); U32B(8); U64B(256);
    for (int b = 0; b < 256; b++) {
      /* GPT-2's byte -> character table, computed the same way as the reference. */
      int printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      unsigned cp = (unsigned)b;
      if (!printable) {
        unsigned n = 0;
        for (int k = 0; k < b; k++) n += !((k >= 0x21 && k <= 0x7E) || (k >= 0xA1 && k <= 0xAC) || k >= 0xAE);
        cp = 256 + n;
      }
      char enc[2];
      size_t el = cp < 0x80 ? 1 : 2;
      if (el == 1) enc[0] = (char)cp;
      else { enc[0] = (char)(0xC0 | (cp >> 6)); enc[1] = (char)(0x80 | (cp & 0x3F)); }
      STRB(enc, el);
    }
    STRB("tokenizer.ggml.merges", 21); U32B(9); U32B(8); U64B(0);
    char path[] = "/tmp/qv-gguf-fam-XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    cr_assert_eq(write(fd, buf, o), (ssize_t)o);
    close(fd);
    qv_tokenizer *tok = NULL;
    qv_error err = {0};
    cr_assert_eq(qv_tokenizer_load(path, &tok, &err), 0, "%s: %s", names[f], err.msg);
    int32_t *ids;
    size_t n;
    cr_assert_eq(qv_tokenizer_encode(tok, text, strlen(text), 0, &ids, &n, &err), 0, "%s: %s", names[f], err.msg);
    char *out;
    size_t ol;
    cr_assert_eq(n, strlen(text), "%s: no merges, so one id per byte", names[f]);
    cr_assert_eq(qv_tokenizer_decode(tok, ids, n, 0, &out, &ol, &err), 0);
    cr_assert(ol == strlen(text) && memcmp(out, text, ol) == 0, "%s: round trip", names[f]);
    free(out);
    free(ids);
    qv_tokenizer_destroy(tok);
    remove(path);
  }
  free(buf);
}

/* The container reader's tensor infos: shapes, types, aligned offsets, and bad infos rejected. */
#include "tokenizer/gguf.h"

Test(tokenizer_gguf, tensor_infos) {
  unsigned char buf[1024];
  for (int variant = 0; variant < 4; variant++) {
    size_t o = 0;
    memset(buf, 0, sizeof buf);
    PUT("GGUF", 4); U32(3); U64(2); U64(1);
    STR("general.alignment"); U32(4); U32(64);
    STR("tok_embd.weight"); U32(variant == 1 ? 5 : 2); U64(7); U64(3); U32(0); U64(0);
    STR("output.weight"); U32(1); U64(5); U32(1); U64(variant == 2 ? 70 : 128);
    size_t header = o;
    o = (header + 63) / 64 * 64 + (variant == 3 ? 64 : 256);
    gguf_ctx g;
    qv_error err = {0};
    int rc = gguf_parse(buf, o, &g, &err);
    if (variant == 0) {
      cr_assert_eq(rc, 0, "%s", err.msg);
      cr_assert_eq(g.n_tensors, 2);
      cr_assert_eq(g.alignment, 64);
      cr_assert(g.tensors[0].name_len == 15 && memcmp(g.tensors[0].name, "tok_embd.weight", 15) == 0);
      cr_assert(g.tensors[0].n_dims == 2 && g.tensors[0].dims[0] == 7 && g.tensors[0].dims[1] == 3 && g.tensors[0].dims[2] == 1);
      cr_assert(g.tensors[1].type == 1 && g.tensors[1].offset == 128);
      cr_assert_eq(g.data_offset % 64, 0);
      cr_assert_eq(g.data_offset + g.data_bytes, o);
      gguf_free(&g);
    } else {
      /* 5 dims; an offset not aligned to 64; an offset past the end of the file. */
      cr_assert_eq(rc, QV_EFORMAT, "variant %d parsed", variant);
      cr_assert(err.msg[0]);
    }
  }
}

/* The Llama 2 GGUF (SentencePiece merges ranked by score) and the Llama 2 tokenizer.json (merge
 * list) are two encodings of one vocabulary; on every corpus line they must agree. The JSON
 * export turned U+00A0 (token 30081) into a plain space, so lines with U+00A0 are left out. */
#include <cjson/cJSON.h>

Test(tokenizer_gguf, llama_gguf_equals_llama2_json_on_corpus) {
  char gguf[4096], json[4096];
  char *g = shared_path("data/tokenizers/ggml-vocab-llama-spm.gguf");
  char *j = shared_path("data/tokenizers/llama2.tokenizer.json");
  snprintf(gguf, sizeof gguf, "%s", g);
  snprintf(json, sizeof json, "%s", j);
  free(g);
  free(j);
  if (access(gguf, R_OK) || access(json, R_OK)) cr_skip_test("shared tokenizer data not found");
  const char *src = getenv("QV_SOURCE_DIR");
  char corpus_path[4096];
  snprintf(corpus_path, sizeof corpus_path, "%s/tests/fixtures/tokenizers/corpus.jsonl", src ? src : ".");
  size_t len;
  char *corpus = test_slurp(corpus_path, &len);
  cr_assert(corpus);
  qv_tokenizer *a, *b;
  qv_error err = {0};
  cr_assert_eq(qv_tokenizer_load(gguf, &a, &err), 0, "%s", err.msg);
  cr_assert_eq(qv_tokenizer_load(json, &b, &err), 0, "%s", err.msg);
  int compared = 0;
  for (char *p = corpus; *p;) {
    char *nl = strchr(p, '\n');
    if (nl) *nl = '\0';
    cJSON *line = cJSON_Parse(p);
    cr_assert(cJSON_IsString(line));
    const char *s = line->valuestring;
    if (!strstr(s, "\xc2\xa0")) {
      int32_t *ia, *ib;
      size_t na, nb;
      cr_assert_eq(qv_tokenizer_encode(a, s, strlen(s), QV_TOK_ADD_SPECIAL, &ia, &na, &err), 0);
      cr_assert_eq(qv_tokenizer_encode(b, s, strlen(s), QV_TOK_ADD_SPECIAL, &ib, &nb, &err), 0);
      cr_assert(na == nb && memcmp(ia, ib, na * sizeof *ia) == 0, "GGUF and JSON differ on \"%.60s\"", s);
      free(ia);
      free(ib);
      compared++;
    }
    cJSON_Delete(line);
    if (!nl) break;
    p = nl + 1;
  }
  cr_assert_gt(compared, 1000);
  free(corpus);
  qv_tokenizer_destroy(a);
  qv_tokenizer_destroy(b);
}
