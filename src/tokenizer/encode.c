/* Encoding: the reference pipeline for one input text.
 *   1. added tokens with normalized=false are cut out of the raw text (leftmost-longest, with
 *      their single_word / lstrip / rstrip rules; special ones only with QV_TOK_PARSE_SPECIAL),
 *   2. each remaining piece is normalized, then added tokens with normalized=true are cut out,
 *   3. each piece is pre-tokenized into words and every word goes through BPE,
 *   4. the post-processor adds BOS/EOS ids when QV_TOK_ADD_SPECIAL is given.
 * A per-call cache maps repeated words to their ids (text repeats words a lot; BPE is the cost). */
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "tokenizer/tok_internal.h"

enum { CACHE_MAX_WORD = 96, CACHE_MAX_ENTRIES = 1 << 16 };

typedef struct enc_ctx {
  const qv_tokenizer *tok;
  unsigned flags;
  tok_match_ctx mc;
  tok_bpe_scratch *bpe;
  tok_buf norm;        /* normalized text of the current piece */
  tok_buf arena;       /* pre-tokenizer arena */
  tok_pieces words, tmp;
  tok_ids out;
  tok_strmap cache;    /* word -> index into cache_spans */
  int cache_on;
  uint32_t *cache_spans; /* [2 * entries] start in cache_ids, count */
  size_t cache_spans_cap;
  tok_ids cache_ids;
} enc_ctx;

/* One segment of the input: either an added token or a text range. */
typedef struct seg { int32_t id; uint32_t off, len; } seg;
typedef struct segs { seg *v; size_t n, cap; } segs;

static int segs_push(segs *s, int32_t id, size_t off, size_t len) {
  if (s->n == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 16;
    seg *v = realloc(s->v, cap * sizeof *v);
    if (!v) return QV_ENOMEM;
    s->v = v;
    s->cap = cap;
  }
  s->v[s->n++] = (seg){id, (uint32_t)off, (uint32_t)len};
  return 0;
}

static int is_word_char(uint32_t cp) {
  if (cp < 0x80) return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || cp == '_';
  utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
  return (c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_LO) ||
         (c >= UTF8PROC_CATEGORY_ND && c <= UTF8PROC_CATEGORY_NO);
}

static size_t prev_char(const unsigned char *s, size_t i) {
  size_t b = i - 1;
  while (b > 0 && (s[b] & 0xC0) == 0x80) b--;
  return b;
}

/* Finds added tokens of set in s[0..n) and appends segments (text ranges offset by base). */
static int split_added(const qv_tokenizer *tok, const tok_added_set *set, unsigned flags,
                       const char *s, size_t n, size_t base, segs *out) {
  const unsigned char *u = (const unsigned char *)s;
  size_t start_offset = 0, pos = 0;
  if (set->n) {
    while (pos < n) {
      if (!set->first[u[pos]]) { pos++; continue; }
      const tok_added *hit = NULL;
      for (uint32_t k = 0; k < set->n; k++) {
        const tok_added *t = &tok->added[set->idx[k]];
        if (t->len <= n - pos && memcmp(s + pos, t->content, t->len) == 0) { hit = t; break; }
      }
      if (!hit) { pos++; continue; }
      size_t ms = pos, me = pos + hit->len;
      pos = me;
      if (hit->special && !(flags & QV_TOK_PARSE_SPECIAL)) continue;
      if (hit->single_word) {
        uint32_t cp;
        int start_ok = ms == 0, stop_ok = me == n;
        if (!start_ok) {
          size_t b = prev_char(u, ms);
          tok_utf8_decode(u + b, n - b, &cp);
          start_ok = !is_word_char(cp);
        }
        if (!stop_ok) {
          tok_utf8_decode(u + me, n - me, &cp);
          stop_ok = !is_word_char(cp);
        }
        if (!start_ok || !stop_ok) continue;
      }
      if (hit->lstrip) {
        size_t b = ms;
        while (b > 0) {
          size_t c = prev_char(u, b);
          uint32_t cp;
          tok_utf8_decode(u + c, n - c, &cp);
          if (!tok_is_whitespace(cp)) break;
          b = c;
        }
        ms = b > start_offset ? b : start_offset;
      }
      if (hit->rstrip) {
        while (me < n) {
          uint32_t cp;
          int k = tok_utf8_decode(u + me, n - me, &cp);
          if (!tok_is_whitespace(cp)) break;
          me += (size_t)k;
        }
      }
      if (ms < start_offset) ms = start_offset;
      if (start_offset < ms && segs_push(out, -1, base + start_offset, ms - start_offset)) return QV_ENOMEM;
      if (segs_push(out, hit->id, 0, 0)) return QV_ENOMEM;
      start_offset = me;
      if (pos < me) pos = me;
    }
  }
  if (start_offset < n && segs_push(out, -1, base + start_offset, n - start_offset)) return QV_ENOMEM;
  return 0;
}

static int encode_word(enc_ctx *c, const char *w, size_t n) {
  if (!c->cache_on || n > CACHE_MAX_WORD) return tok_bpe_word(c->tok, &c->bpe, w, n, &c->out);
  int32_t e = tok_strmap_get(&c->cache, w, n);
  if (e >= 0) {
    uint32_t start = c->cache_spans[2 * e], cnt = c->cache_spans[2 * e + 1];
    for (uint32_t i = 0; i < cnt; i++)
      if (tok_ids_push(&c->out, c->cache_ids.v[start + i])) return QV_ENOMEM;
    return 0;
  }
  size_t before = c->out.n;
  int rc = tok_bpe_word(c->tok, &c->bpe, w, n, &c->out);
  if (rc || c->cache.n >= CACHE_MAX_ENTRIES) return rc;
  uint32_t idx = c->cache.n;
  if ((size_t)(idx + 1) * 2 > c->cache_spans_cap) {
    size_t cap = c->cache_spans_cap ? c->cache_spans_cap * 2 : 1024;
    uint32_t *v = realloc(c->cache_spans, cap * sizeof *v);
    if (!v) return QV_ENOMEM;
    c->cache_spans = v;
    c->cache_spans_cap = cap;
  }
  c->cache_spans[2 * idx] = (uint32_t)c->cache_ids.n;
  c->cache_spans[2 * idx + 1] = (uint32_t)(c->out.n - before);
  for (size_t i = before; i < c->out.n; i++)
    if (tok_ids_push(&c->cache_ids, c->out.v[i])) return QV_ENOMEM;
  return tok_strmap_put(&c->cache, w, n, (int32_t)idx) < 0 ? QV_ENOMEM : 0;
}

/* Cuts a word before each "▁" that follows another character (see spm_split) and encodes the
 * pieces; with SentencePiece vocabularies this turns one long word into cacheable pieces. */
static int encode_word_split(enc_ctx *c, const char *w, size_t n) {
  if (!c->tok->spm_split) return encode_word(c, w, n);
  size_t start = 0;
  for (size_t i = 3; i + 3 <= n; i++) {
    if (w[i] != '\xe2' || memcmp(w + i, "\xe2\x96\x81", 3) != 0) continue;
    if (memcmp(w + i - 3, "\xe2\x96\x81", 3) == 0) continue;
    int rc = encode_word(c, w + start, i - start);
    if (rc) return rc;
    start = i;
  }
  return encode_word(c, w + start, n - start);
}

/* Normalized text piece in c->arena[0..len): pre-tokenize and BPE. */
static int encode_piece(enc_ctx *c, const char *s, size_t n, int at_start) {
  c->arena.len = 0;
  if (tok_buf_append(&c->arena, s, n)) return QV_ENOMEM;
  c->words.n = 0;
  int rc = tok_pretokenize(c->tok, &c->mc, &c->arena, (tok_piece){0, (uint32_t)n, (uint8_t)at_start},
                           &c->words, &c->tmp);
  for (size_t i = 0; rc == 0 && i < c->words.n; i++)
    rc = encode_word_split(c, c->arena.data + c->words.v[i].off, c->words.v[i].len);
  return rc;
}

static int encode_text(enc_ctx *c, const char *text, size_t len) {
  const qv_tokenizer *tok = c->tok;
  segs raw = {0}, sub = {0};
  int rc = split_added(tok, &tok->set_raw, c->flags, text, len, 0, &raw);
  for (size_t i = 0; rc == 0 && i < raw.n; i++) {
    seg g = raw.v[i];
    if (g.id >= 0) {
      rc = tok_ids_push(&c->out, g.id);
      continue;
    }
    rc = tok_normalize(tok, &c->mc, text + g.off, g.len, &c->norm);
    if (rc) break;
    sub.n = 0;
    rc = split_added(tok, &tok->set_norm, c->flags, c->norm.data, c->norm.len, 0, &sub);
    for (size_t j = 0; rc == 0 && j < sub.n; j++) {
      seg h = sub.v[j];
      if (h.id >= 0) rc = tok_ids_push(&c->out, h.id);
      else rc = encode_piece(c, c->norm.data + h.off, h.len, g.off == 0 && h.off == 0);
    }
  }
  free(raw.v);
  free(sub.v);
  return rc;
}

int qv_tokenizer_encode(const qv_tokenizer *tok, const char *text, size_t len, unsigned flags,
                        int32_t **ids, size_t *n_ids, qv_error *err) {
  if (!tok || !ids || !n_ids || (!text && len)) return qv_error_set(err, QV_EINVAL, "encode: bad arguments");
  *ids = NULL;
  *n_ids = 0;
  if (len > (size_t)1 << 30) return qv_error_set(err, QV_ELIMIT, "encode: text of %zu bytes is too long", len);
  enc_ctx c = {.tok = tok, .flags = flags};
  tok_buf fixed = {0};
  int rc = 0;
  /* Invalid UTF-8 cannot reach the reference (Python str); repair it to U+FFFD like a lossy
   * decode would, so every later stage sees valid text. */
  if (len && tok_utf8_valid_prefix(text, len) != len) {
    rc = tok_utf8_lossy_append(&fixed, text, len);
    text = fixed.data;
    len = fixed.len;
  }
  if (rc == 0 && len > 2048) {
    c.cache_on = 1;
    rc = tok_strmap_init(&c.cache, 4096);
  }
  for (int i = 0; rc == 0 && (flags & QV_TOK_ADD_SPECIAL) && i < tok->n_post_pre; i++)
    rc = tok_ids_push(&c.out, tok->post_pre[i]);
  if (rc == 0 && len) rc = encode_text(&c, text ? text : "", len);
  for (int i = 0; rc == 0 && (flags & QV_TOK_ADD_SPECIAL) && i < tok->n_post_post; i++)
    rc = tok_ids_push(&c.out, tok->post_post[i]);
  tok_buf_free(&fixed);
  tok_match_ctx_free(&c.mc);
  tok_bpe_scratch_free(c.bpe);
  tok_buf_free(&c.norm);
  tok_buf_free(&c.arena);
  free(c.words.v);
  free(c.tmp.v);
  tok_strmap_free(&c.cache);
  free(c.cache_spans);
  free(c.cache_ids.v);
  if (rc) {
    free(c.out.v);
    if (rc == QV_ELIMIT) return qv_error_set(err, rc, "encode: regex match limit reached");
    return qv_error_set(err, rc, "encode failed: %s", qv_strerror(rc));
  }
  if (!c.out.v) {
    c.out.v = malloc(sizeof *c.out.v);
    if (!c.out.v) return qv_error_set(err, QV_ENOMEM, "out of memory");
  }
  *ids = c.out.v;
  *n_ids = c.out.n;
  return 0;
}
