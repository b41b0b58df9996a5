/* Tokenizer lifecycle: loading from a model directory, a tokenizer.json or a .gguf file, the
 * built-in byte tokenizer of quiver-tiny, the vocabulary helpers shared by the loaders, and the
 * read-only accessors of include/quiver/tokenizer.h. Encoding lives in encode.c, decoding and
 * streaming in decode.c. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "loader/gguf_model.h"
#include "tokenizer/tok_internal.h"

#define TOK_MAX_FILE_BYTES ((size_t)1 << 30)

int tok_vocab_alloc(qv_tokenizer *tok, int32_t n_vocab) {
  if (n_vocab < 0 || n_vocab > TOK_MAX_ID) return QV_ELIMIT;
  if (n_vocab <= tok->n_vocab) return 0;
  uint32_t *off = realloc(tok->tok_off, (size_t)n_vocab * sizeof *off);
  if (!off) return QV_ENOMEM;
  tok->tok_off = off;
  uint32_t *len = realloc(tok->tok_len, (size_t)n_vocab * sizeof *len);
  if (!len) return QV_ENOMEM;
  tok->tok_len = len;
  uint8_t *sp = realloc(tok->tok_special, (size_t)n_vocab);
  if (!sp) return QV_ENOMEM;
  tok->tok_special = sp;
  for (int32_t i = tok->n_vocab; i < n_vocab; i++) {
    off[i] = UINT32_MAX;
    len[i] = 0;
    sp[i] = 0;
  }
  tok->n_vocab = n_vocab;
  return 0;
}

int tok_vocab_set(qv_tokenizer *tok, int32_t id, const char *s, size_t len) {
  if (id < 0 || id >= TOK_MAX_ID) return QV_ERANGE;
  if (id >= tok->n_vocab) {
    int32_t n = tok->n_vocab ? tok->n_vocab : 256;
    while (n <= id) n *= 2;
    if (n > TOK_MAX_ID) n = TOK_MAX_ID;
    int rc = tok_vocab_alloc(tok, n);
    if (rc) return rc;
  }
  if (tok->tok_text.len + len + 1 > UINT32_MAX / 2) return QV_ELIMIT;
  uint32_t off = (uint32_t)tok->tok_text.len;
  if (tok_buf_append(&tok->tok_text, s, len) || tok_buf_append(&tok->tok_text, "", 1)) return QV_ENOMEM;
  tok->tok_off[id] = off;
  tok->tok_len[id] = (uint32_t)len;
  return 0;
}

int tok_add_token(qv_tokenizer *tok, const tok_added *t) {
  if (t->len == 0) return QV_EFORMAT;
  if (tok->n_added % 16 == 0) {
    tok_added *v = realloc(tok->added, (tok->n_added + 16) * sizeof *v);
    if (!v) return QV_ENOMEM;
    tok->added = v;
  }
  char *c = malloc(t->len + 1);
  if (!c) return QV_ENOMEM;
  memcpy(c, t->content, t->len);
  c[t->len] = '\0';
  tok_added *a = &tok->added[tok->n_added++];
  *a = *t;
  a->content = c;
  int rc = tok_vocab_set(tok, t->id, t->content, t->len);
  if (rc == 0 && t->special) tok->tok_special[t->id] = TOK_FLAG_SPECIAL | TOK_FLAG_SKIP;
  return rc;
}

static int build_set(qv_tokenizer *tok, tok_added_set *set, int normalized) {
  set->n = 0;
  memset(set->first, 0, sizeof set->first);
  free(set->idx);
  set->idx = malloc((tok->n_added + 1) * sizeof *set->idx);
  if (!set->idx) return QV_ENOMEM;
  for (uint32_t i = 0; i < tok->n_added; i++) {
    if (!!tok->added[i].normalized != !!normalized || tok->added[i].len == 0) continue;
    /* Insertion sort by decreasing length keeps leftmost-longest matching a linear scan. */
    uint32_t j = set->n++;
    while (j > 0 && tok->added[set->idx[j - 1]].len < tok->added[i].len) {
      set->idx[j] = set->idx[j - 1];
      j--;
    }
    set->idx[j] = i;
    set->first[(unsigned char)tok->added[i].content[0]] = 1;
  }
  return 0;
}

int tok_finish(qv_tokenizer *tok, qv_error *err) {
  for (int b = 0; b < 256; b++) {
    char name[8];
    snprintf(name, sizeof name, "<0x%02X>", b);
    tok->byte_ids[b] = tok_strmap_get(&tok->vocab, name, 6);
  }
  for (int b = 0; b < 128; b++) {
    char c = (char)b;
    tok->char_ids[b] = tok_strmap_get(&tok->vocab, &c, 1);
  }
  /* Can words be cut before "▁"? Only if "▁" is a token and none has it after another char. */
  static const char meta[] = "\xe2\x96\x81";
  /* (A word prefix or suffix marks word ends, which cutting would move: no cuts then.) */
  tok->spm_split = tok_strmap_get(&tok->vocab, meta, 3) >= 0 && !tok->cont_prefix && !tok->eow_suffix;
  for (uint32_t e = 0; tok->spm_split && e < tok->vocab.n; e++) {
    const char *k = tok_strmap_key(&tok->vocab, e);
    uint32_t kl = tok->vocab.key_len[e];
    for (uint32_t i = 1; i + 3 <= kl; i++) {
      if (memcmp(k + i, meta, 3) != 0) continue;
      if (i < 3 || memcmp(k + i - 3, meta, 3) != 0) {
        tok->spm_split = 0;
        break;
      }
    }
  }
  if (build_set(tok, &tok->set_raw, 0) || build_set(tok, &tok->set_norm, 1))
    return qv_error_set(err, QV_ENOMEM, "out of memory");
  if (tok->n_vocab == 0) return qv_error_set(err, QV_EFORMAT, "empty vocabulary");
  if (tok->bos_id >= tok->n_vocab) tok->bos_id = -1;
  if (tok->eos_id >= tok->n_vocab) tok->eos_id = -1;
  return 0;
}

static void steps_free(qv_tokenizer *tok) {
  for (int i = 0; i < tok->n_norm; i++) {
    free(tok->norm[i].str);
    free(tok->norm[i].content);
    tok_regex_free(&tok->norm[i].re);
  }
  for (int i = 0; i < tok->n_pre; i++) tok_regex_free(&tok->pre[i].re);
  for (int i = 0; i < tok->n_dec; i++) {
    free(tok->dec[i].pattern);
    free(tok->dec[i].content);
    tok_regex_free(&tok->dec[i].re);
  }
  free(tok->norm);
  free(tok->pre);
  free(tok->dec);
}

void qv_tokenizer_destroy(qv_tokenizer *tok) {
  if (!tok) return;
  steps_free(tok);
  free(tok->tok_off);
  free(tok->tok_len);
  free(tok->tok_special);
  tok_buf_free(&tok->tok_text);
  tok_strmap_free(&tok->vocab);
  tok_pairmap_free(&tok->merges);
  free(tok->spm_rank);
  free(tok->cont_prefix);
  free(tok->eow_suffix);
  free(tok->post_pre);
  free(tok->post_post);
  for (uint32_t i = 0; i < tok->n_added; i++) free(tok->added[i].content);
  free(tok->added);
  free(tok->set_raw.idx);
  free(tok->set_norm.idx);
  free(tok);
}

static qv_tokenizer *tok_new(void) {
  qv_tokenizer *tok = calloc(1, sizeof *tok);
  if (!tok) return NULL;
  tok->unk_id = tok->bos_id = tok->eos_id = -1;
  for (int b = 0; b < 128; b++) tok->char_ids[b] = -2;
  return tok;
}

/* Reads a whole (regular, bounded) file; *data is malloc'd and NUL-terminated. */
static int read_file(const char *path, char **data, size_t *len, qv_error *err) {
  FILE *f = fopen(path, "rb");
  if (!f) return qv_error_set(err, errno == ENOENT ? QV_ENOTFOUND : QV_EIO, "%s: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
    fclose(f);
    return qv_error_set(err, QV_EIO, "%s: not a regular file", path);
  }
  if ((size_t)st.st_size > TOK_MAX_FILE_BYTES) {
    fclose(f);
    return qv_error_set(err, QV_ELIMIT, "%s: file too large", path);
  }
  size_t n = (size_t)st.st_size;
  char *buf = malloc(n + 1);
  if (!buf) {
    fclose(f);
    return qv_error_set(err, QV_ENOMEM, "out of memory");
  }
  size_t got = fread(buf, 1, n, f);
  fclose(f);
  if (got != n) {
    free(buf);
    return qv_error_set(err, QV_EIO, "%s: short read", path);
  }
  buf[n] = '\0';
  *data = buf;
  *len = n;
  return 0;
}

static int load_gguf_file(qv_tokenizer *tok, const char *path, qv_error *err) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) return qv_error_set(err, errno == ENOENT ? QV_ENOTFOUND : QV_EIO, "%s: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size <= 0) {
    close(fd);
    return qv_error_set(err, QV_EFORMAT, "%s: not a readable GGUF file", path);
  }
  void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (map == MAP_FAILED) return qv_error_set(err, QV_EIO, "%s: mmap failed", path);
  int rc = tok_load_gguf(tok, map, (size_t)st.st_size, err);
  munmap(map, (size_t)st.st_size);
  if (rc) qv_error_prefix(err, "%s", path);
  return rc;
}

static int has_suffix(const char *s, const char *suf) {
  size_t n = strlen(s), m = strlen(suf);
  return n >= m && strcmp(s + n - m, suf) == 0;
}

static int is_gguf_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return 0;
  char magic[4] = {0};
  size_t got = fread(magic, 1, 4, f);
  fclose(f);
  return got == 4 && memcmp(magic, "GGUF", 4) == 0;
}

int qv_tokenizer_load(const char *path, qv_tokenizer **out, qv_error *err) {
  if (!path || !out) return qv_error_set(err, QV_EINVAL, "tokenizer path is missing");
  *out = NULL;
  qv_tokenizer *tok = tok_new();
  if (!tok) return qv_error_set(err, QV_ENOMEM, "out of memory");
  struct stat st;
  int rc;
  if (stat(path, &st) != 0) {
    qv_tokenizer_destroy(tok);
    return qv_error_set(err, QV_ENOTFOUND, "%s: %s", path, strerror(errno));
  }
  char *gguf = NULL;
  if (S_ISDIR(st.st_mode) && gguf_model_is_path(path)) {
    /* A directory holding a GGUF model (and no config.json): the vocabulary is in the file. */
    rc = gguf_model_resolve(path, &gguf, err);
    if (rc == 0) rc = load_gguf_file(tok, gguf, err);
    free(gguf);
  } else if (S_ISDIR(st.st_mode)) {
    size_t pl = strlen(path);
    char *tj = malloc(pl + 32), *tc = malloc(pl + 32);
    if (!tj || !tc) {
      free(tj);
      free(tc);
      qv_tokenizer_destroy(tok);
      return qv_error_set(err, QV_ENOMEM, "out of memory");
    }
    snprintf(tj, pl + 32, "%s/tokenizer.json", path);
    snprintf(tc, pl + 32, "%s/tokenizer_config.json", path);
    char *json = NULL, *cfg = NULL;
    size_t jl = 0, cl = 0;
    rc = read_file(tj, &json, &jl, err);
    if (rc == 0) {
      qv_error cerr = {0};
      if (read_file(tc, &cfg, &cl, &cerr) != 0) cfg = NULL; /* the config is optional */
      rc = tok_load_json(tok, json, jl, cfg, cl, err);
      if (rc) qv_error_prefix(err, "%s", tj);
    }
    free(json);
    free(cfg);
    free(tj);
    free(tc);
  } else if (has_suffix(path, ".gguf") || is_gguf_file(path)) {
    rc = load_gguf_file(tok, path, err);
  } else {
    char *json = NULL;
    size_t jl = 0;
    rc = read_file(path, &json, &jl, err);
    if (rc == 0) {
      rc = tok_load_json(tok, json, jl, NULL, 0, err);
      if (rc) qv_error_prefix(err, "%s", path);
    }
    free(json);
  }
  if (rc == 0) rc = tok_finish(tok, err);
  if (rc) {
    qv_tokenizer_destroy(tok);
    return rc;
  }
  *out = tok;
  return 0;
}

/* quiver-tiny: 0 <unk>, 1 <s>, 2 </s>, 3 + b for byte b. Every character falls back to its
 * bytes (no character is in the vocabulary as text), the post-processor adds <s> like Llama's,
 * and decoding concatenates the bytes with each maximal invalid UTF-8 subsequence replaced by
 * U+FFFD (a lossy variant of ByteFallback: the reference's decoder would turn a whole run of
 * byte tokens into U+FFFDs when any byte in it is invalid, which makes a small random model's
 * output unreadable). */
int qv_tokenizer_create_bytes(qv_tokenizer **out, qv_error *err) {
  if (!out) return qv_error_set(err, QV_EINVAL, "out is NULL");
  *out = NULL;
  qv_tokenizer *tok = tok_new();
  if (!tok) return qv_error_set(err, QV_ENOMEM, "out of memory");
  int rc = tok_vocab_alloc(tok, 259);
  if (rc == 0) rc = tok_strmap_init(&tok->vocab, 300);
  static const char *const specials[3] = {"<unk>", "<s>", "</s>"};
  for (int i = 0; i < 3 && rc == 0; i++) {
    tok_added a = {.id = i, .content = (char *)specials[i], .len = strlen(specials[i]), .special = 1};
    rc = tok_strmap_put(&tok->vocab, specials[i], a.len, i);
    if (rc == 0) rc = tok_add_token(tok, &a);
  }
  for (int b = 0; b < 256 && rc == 0; b++) {
    char name[8];
    snprintf(name, sizeof name, "<0x%02X>", b);
    rc = tok_vocab_set(tok, 3 + b, name, 6);
    if (rc == 0) rc = tok_strmap_put(&tok->vocab, name, 6, 3 + b);
  }
  if (rc == 0) {
    tok->unk_id = 0;
    tok->bos_id = 1;
    tok->eos_id = 2;
    tok->byte_fallback = 1;
    tok->fuse_unk = 1;
    tok->has_decoder = 1;
    tok->dec = calloc(2, sizeof *tok->dec);
    tok->post_pre = malloc(sizeof *tok->post_pre);
    if (!tok->dec || !tok->post_pre) rc = QV_ENOMEM;
  }
  if (rc == 0) {
    tok->dec[0].kind = TOK_DEC_BYTEFALLBACK;
    tok->dec[0].lossy = 1;
    tok->dec[1].kind = TOK_DEC_FUSE;
    tok->n_dec = 2;
    tok->post_pre[0] = 1;
    tok->n_post_pre = 1;
    rc = tok_finish(tok, err);
  }
  if (rc) {
    qv_tokenizer_destroy(tok);
    return err && err->code ? rc : qv_error_set(err, rc, "creating the byte tokenizer failed");
  }
  *out = tok;
  return 0;
}

int32_t qv_tokenizer_vocab_size(const qv_tokenizer *tok) { return tok ? tok->n_vocab : 0; }
int32_t qv_tokenizer_bos_id(const qv_tokenizer *tok) { return tok ? tok->bos_id : -1; }
int32_t qv_tokenizer_eos_id(const qv_tokenizer *tok) { return tok ? tok->eos_id : -1; }

const char *qv_tokenizer_token_str(const qv_tokenizer *tok, int32_t id) {
  if (!tok || id < 0 || id >= tok->n_vocab || tok->tok_off[id] == UINT32_MAX) return "";
  return tok->tok_text.data + tok->tok_off[id];
}

int qv_tokenizer_is_special(const qv_tokenizer *tok, int32_t id) {
  return tok && id >= 0 && id < tok->n_vocab && (tok->tok_special[id] & TOK_FLAG_SPECIAL);
}

int32_t qv_tokenizer_token_id(const qv_tokenizer *tok, const char *str) {
  if (!tok || !str) return -1;
  size_t n = strlen(str);
  /* Added tokens first, by their original text (normalized ones match normalized text). */
  for (uint32_t i = 0; i < tok->n_added; i++) {
    int32_t id = tok->added[i].id;
    if (tok->tok_len[id] == n && memcmp(tok->tok_text.data + tok->tok_off[id], str, n) == 0) return id;
  }
  return tok_strmap_get(&tok->vocab, str, n);
}
