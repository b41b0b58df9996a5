/* Decoding and streaming detokenization. Decoding maps ids to token strings and runs the
 * decoder chain of the reference (ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip) over
 * the list of strings; with no decoder the reference joins tokens with spaces, and so do we.
 * The streaming detokenizer decodes a short window of recent ids twice (with and without the
 * newest ids) and emits the difference once it ends in complete characters, so each push costs
 * O(window), and the final flush checks the emitted text against a one-shot decode. */
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_internal.h"

/* A list of strings stored as ranges of one buffer. */
typedef struct slist {
  tok_buf text;
  uint32_t *off, *len;
  size_t n, cap;
} slist;

static void slist_free(slist *l) {
  tok_buf_free(&l->text);
  free(l->off);
  free(l->len);
  memset(l, 0, sizeof *l);
}

static int slist_begin(slist *l) { /* starts a new string */
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 64;
    uint32_t *o = realloc(l->off, cap * sizeof *o);
    if (!o) return QV_ENOMEM;
    l->off = o;
    uint32_t *n = realloc(l->len, cap * sizeof *n);
    if (!n) return QV_ENOMEM;
    l->len = n;
    l->cap = cap;
  }
  if (l->text.len > UINT32_MAX / 2) return QV_ELIMIT;
  l->off[l->n] = (uint32_t)l->text.len;
  l->len[l->n] = 0;
  l->n++;
  return 0;
}

static int slist_add(slist *l, const char *s, size_t n) { /* appends to the current string */
  if (tok_buf_append(&l->text, s, n)) return QV_ENOMEM;
  l->len[l->n - 1] += (uint32_t)n;
  return 0;
}

static const char *sget(const slist *l, size_t i) { return l->text.data + l->off[i]; }

static int parse_byte_token(const char *s, size_t n) {
  if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
  int v = 0;
  for (int i = 3; i < 5; i++) {
    char c = s[i];
    int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}

static int replace_str(const tok_dec_step *st, tok_match_ctx *mc, const char *s, size_t n, slist *o) {
  size_t pos = 0;
  if (st->re.code) {
    size_t search = 0;
    while (search <= n) {
      size_t ms, me;
      int rc = tok_regex_next(&st->re, mc, s, n, search, &ms, &me);
      if (rc < 0) return rc;
      if (rc == 0) break;
      if (slist_add(o, s + pos, ms - pos) || slist_add(o, st->content, st->content_len)) return QV_ENOMEM;
      pos = search = me;
      if (me == ms) {
        if (me >= n) break;
        size_t k = (size_t)tok_utf8_len((unsigned char)s[me]);
        if (slist_add(o, s + me, k)) return QV_ENOMEM;
        pos = search = me + k;
      }
    }
    return slist_add(o, s + pos, pos < n ? n - pos : 0);
  }
  if (st->pattern_len == 0) return slist_add(o, s, n);
  while (pos + st->pattern_len <= n) {
    if (memcmp(s + pos, st->pattern, st->pattern_len) == 0) {
      if (slist_add(o, st->content, st->content_len)) return QV_ENOMEM;
      pos += st->pattern_len;
    } else {
      if (slist_add(o, s + pos, 1)) return QV_ENOMEM;
      pos++;
    }
  }
  return slist_add(o, s + pos, n - pos);
}

/* keep_bytes (QV_TOK_KEEP_BYTES): byte tokens that are not complete UTF-8 give their bytes, not
 * U+FFFD. */
static int dec_step(const tok_dec_step *st, tok_match_ctx *mc, const slist *in, slist *o,
                    int keep_bytes) {
  int rc = 0;
  switch (st->kind) {
    case TOK_DEC_BYTELEVEL: {
      /* Characters map back to bytes; a token with a character outside the table passes its
       * own UTF-8 bytes through. The joined bytes are then decoded lossily. */
      tok_buf bytes = {0};
      for (size_t i = 0; i < in->n && rc == 0; i++) {
        const unsigned char *s = (const unsigned char *)sget(in, i);
        size_t n = in->len[i], start = bytes.len;
        int ok = 1;
        for (size_t j = 0; j < n && rc == 0;) {
          uint32_t cp;
          int k = tok_utf8_decode(s + j, n - j, &cp);
          int b = tok_cp_to_byte(cp);
          if (b < 0) { ok = 0; break; }
          char c = (char)b;
          rc = tok_buf_append(&bytes, &c, 1);
          j += (size_t)k;
        }
        if (rc == 0 && !ok) {
          bytes.len = start;
          rc = tok_buf_append(&bytes, s, n);
        }
      }
      if (rc == 0) rc = slist_begin(o);
      if (rc == 0 && keep_bytes) {
        rc = slist_add(o, bytes.data ? bytes.data : "", bytes.len);
      } else if (rc == 0) {
        tok_buf fixed = {0};
        rc = tok_utf8_lossy_append(&fixed, bytes.data ? bytes.data : "", bytes.len);
        if (rc == 0) rc = slist_add(o, fixed.data ? fixed.data : "", fixed.len);
        tok_buf_free(&fixed);
      }
      tok_buf_free(&bytes);
      return rc;
    }
    case TOK_DEC_FUSE:
      if ((rc = slist_begin(o))) return rc;
      for (size_t i = 0; i < in->n && rc == 0; i++) rc = slist_add(o, sget(in, i), in->len[i]);
      return rc;
    case TOK_DEC_METASPACE: {
      char rep[4];
      int rl = tok_utf8_encode(st->replacement, rep);
      for (size_t i = 0; i < in->n && rc == 0; i++) {
        const char *s = sget(in, i);
        size_t n = in->len[i];
        if ((rc = slist_begin(o))) return rc;
        for (size_t j = 0; j < n && rc == 0;) {
          if (j + (size_t)rl <= n && memcmp(s + j, rep, (size_t)rl) == 0) {
            if (!(i == 0 && st->prepend != TOK_PREPEND_NEVER)) rc = slist_add(o, " ", 1);
            j += (size_t)rl;
          } else {
            rc = slist_add(o, s + j, 1);
            j++;
          }
        }
      }
      return rc;
    }
    case TOK_DEC_REPLACE:
      for (size_t i = 0; i < in->n && rc == 0; i++) {
        if ((rc = slist_begin(o))) return rc;
        /* kept bytes that are not UTF-8 never reach the (UTF-8) regex: they pass unchanged */
        size_t n = in->len[i];
        if (keep_bytes && st->re.code && tok_utf8_valid_prefix(sget(in, i), n) != n)
          rc = slist_add(o, sget(in, i), n);
        else
          rc = replace_str(st, mc, sget(in, i), n, o);
      }
      return rc;
    case TOK_DEC_BYTEFALLBACK: {
      /* A run of <0xXX> tokens becomes its bytes when they are valid UTF-8, otherwise one
       * U+FFFD per byte token. */
      tok_buf run = {0};
      size_t n_run = 0;
      for (size_t i = 0; i <= in->n && rc == 0; i++) {
        int b = i < in->n ? parse_byte_token(sget(in, i), in->len[i]) : -1;
        if (b >= 0) {
          char c = (char)b;
          rc = tok_buf_append(&run, &c, 1);
          n_run++;
          continue;
        }
        if (n_run) {
          if ((rc = slist_begin(o))) break;
          if (keep_bytes || tok_utf8_valid_prefix(run.data, run.len) == run.len) {
            rc = slist_add(o, run.data, run.len);
          } else if (st->lossy) {
            tok_buf fixed = {0};
            rc = tok_utf8_lossy_append(&fixed, run.data, run.len);
            if (rc == 0) rc = slist_add(o, fixed.data, fixed.len);
            tok_buf_free(&fixed);
          } else {
            for (size_t k = 0; k < n_run && rc == 0; k++) rc = slist_add(o, "\xEF\xBF\xBD", 3);
          }
          run.len = 0;
          n_run = 0;
        }
        if (i < in->n && rc == 0) {
          if ((rc = slist_begin(o))) break;
          rc = slist_add(o, sget(in, i), in->len[i]);
        }
      }
      tok_buf_free(&run);
      return rc;
    }
    case TOK_DEC_STRIP: {
      char ch[4];
      int cl = tok_utf8_encode(st->strip_char, ch);
      for (size_t i = 0; i < in->n && rc == 0; i++) {
        const char *s = sget(in, i);
        size_t a = 0, b = in->len[i];
        for (int k = 0; k < st->strip_start && b - a >= (size_t)cl && memcmp(s + a, ch, (size_t)cl) == 0; k++)
          a += (size_t)cl;
        for (int k = 0; k < st->strip_stop && b - a >= (size_t)cl && memcmp(s + b - cl, ch, (size_t)cl) == 0; k++)
          b -= (size_t)cl;
        if ((rc = slist_begin(o))) return rc;
        rc = slist_add(o, s + a, b - a);
      }
      return rc;
    }
  }
  return QV_EINVAL;
}

static int decode_into(const qv_tokenizer *tok, const int32_t *ids, size_t n_ids, unsigned flags,
                       tok_buf *out) {
  slist a = {0}, b = {0};
  tok_match_ctx mc = {0};
  int rc = 0;
  for (size_t i = 0; i < n_ids && rc == 0; i++) {
    int32_t id = ids[i];
    if (id < 0 || id >= tok->n_vocab || tok->tok_off[id] == UINT32_MAX) continue;
    uint8_t f = tok->tok_special[id];
    if ((flags & QV_TOK_SKIP_SPECIAL) && (f & TOK_FLAG_SKIP)) continue;
    const char *s = tok->tok_text.data + tok->tok_off[id];
    size_t sl = tok->tok_len[id];
    if (f & TOK_FLAG_NORM_TEXT) {
      for (uint32_t k = 0; k < tok->n_added; k++) {
        if (tok->added[k].id != id) continue;
        s = tok->added[k].content;
        sl = tok->added[k].len;
      }
    }
    rc = slist_begin(&a);
    if (rc == 0) rc = slist_add(&a, s, sl);
  }
  if (rc == 0 && !tok->has_decoder) {
    for (size_t i = 0; i < a.n && rc == 0; i++) {
      if (i && tok_buf_append(out, " ", 1)) rc = QV_ENOMEM;
      if (rc == 0) rc = tok_buf_append(out, sget(&a, i), a.len[i]);
    }
  } else if (rc == 0) {
    slist *cur = &a, *nxt = &b;
    for (int s = 0; s < tok->n_dec && rc == 0; s++) {
      nxt->text.len = 0;
      nxt->n = 0;
      rc = dec_step(&tok->dec[s], &mc, cur, nxt, (flags & QV_TOK_KEEP_BYTES) != 0);
      slist *t = cur;
      cur = nxt;
      nxt = t;
    }
    for (size_t i = 0; i < cur->n && rc == 0; i++) rc = tok_buf_append(out, sget(cur, i), cur->len[i]);
  }
  if (rc == 0 && !out->data) rc = tok_buf_append(out, "", 0);
  slist_free(&a);
  slist_free(&b);
  tok_match_ctx_free(&mc);
  return rc;
}

int qv_tokenizer_decode(const qv_tokenizer *tok, const int32_t *ids, size_t n_ids, unsigned flags,
                        char **text, size_t *len, qv_error *err) {
  if (!tok || !text || !len || (!ids && n_ids)) return qv_error_set(err, QV_EINVAL, "decode: bad arguments");
  *text = NULL;
  *len = 0;
  tok_buf out = {0};
  int rc = decode_into(tok, ids, n_ids, flags, &out);
  if (rc) {
    tok_buf_free(&out);
    return qv_error_set(err, rc, "decode failed: %s", qv_strerror(rc));
  }
  *text = out.data;
  *len = out.len;
  return 0;
}

/* ---- streaming ---- */

struct qv_detok {
  const qv_tokenizer *tok;
  unsigned flags;
  tok_ids ids;        /* every id pushed so far */
  size_t prefix, read;/* window: ids[prefix..read) already emitted context, ids[read..] pending */
  tok_buf emitted;    /* all text returned so far */
  tok_buf a, b;       /* scratch decodes */
  tok_buf ret;        /* text returned by the last call */
};

int qv_detok_create(const qv_tokenizer *tok, unsigned flags, qv_detok **out) {
  if (!tok || !out) return QV_EINVAL;
  qv_detok *d = calloc(1, sizeof *d);
  if (!d) return QV_ENOMEM;
  d->tok = tok;
  d->flags = flags;
  *out = d;
  return 0;
}

void qv_detok_destroy(qv_detok *d) {
  if (!d) return;
  free(d->ids.v);
  tok_buf_free(&d->emitted);
  tok_buf_free(&d->a);
  tok_buf_free(&d->b);
  tok_buf_free(&d->ret);
  free(d);
}

static int ends_incomplete(const tok_buf *t) {
  return t->len >= 3 && memcmp(t->data + t->len - 3, "\xEF\xBF\xBD", 3) == 0;
}

static int set_ret(qv_detok *d, const char *s, size_t n, const char **text, size_t *len) {
  d->ret.len = 0;
  if (tok_buf_append(&d->ret, s, n) || tok_buf_append(&d->emitted, s, n)) return QV_ENOMEM;
  *text = d->ret.data;
  *len = d->ret.len;
  return 0;
}

/* With the reference's ByteFallback, one invalid byte turns its whole run of byte tokens into
 * U+FFFDs, so the text of a run is only known when the run ends: is the last id that decoding
 * keeps a <0xXX> token under such a decoder? */
static int in_open_byte_run(const qv_detok *d) {
  const qv_tokenizer *tok = d->tok;
  int strict = 0;
  for (int s = 0; s < tok->n_dec; s++) strict |= tok->dec[s].kind == TOK_DEC_BYTEFALLBACK && !tok->dec[s].lossy;
  if (!strict) return 0;
  for (size_t i = d->ids.n; i-- > d->read;) {
    int32_t id = d->ids.v[i];
    if (id < 0 || id >= tok->n_vocab || tok->tok_off[id] == UINT32_MAX) continue;
    if ((d->flags & QV_TOK_SKIP_SPECIAL) && (tok->tok_special[id] & TOK_FLAG_SKIP)) continue;
    return parse_byte_token(tok->tok_text.data + tok->tok_off[id], tok->tok_len[id]) >= 0;
  }
  return 0;
}

int qv_detok_push(qv_detok *d, int32_t id, const char **text, size_t *len) {
  if (!d || !text || !len) return QV_EINVAL;
  *text = "";
  *len = 0;
  if (tok_ids_push(&d->ids, id)) return QV_ENOMEM;
  if (in_open_byte_run(d)) return 0;
  d->a.len = d->b.len = 0;
  int rc = decode_into(d->tok, d->ids.v + d->prefix, d->ids.n - d->prefix, d->flags, &d->a);
  if (rc == 0) rc = decode_into(d->tok, d->ids.v + d->prefix, d->read - d->prefix, d->flags, &d->b);
  if (rc) return rc;
  if (d->a.len <= d->b.len || ends_incomplete(&d->a) || memcmp(d->a.data, d->b.data, d->b.len) != 0)
    return 0;
  rc = set_ret(d, d->a.data + d->b.len, d->a.len - d->b.len, text, len);
  d->prefix = d->read;
  d->read = d->ids.n;
  return rc;
}

/* Ids of prompt context kept before the first new id when decoding a window: enough for the
 * decoders' position-dependent rules (leading-space strip) to see a non-initial token. */
#define DETOK_PRIME_CONTEXT 6

int qv_detok_prime(qv_detok *d, const int32_t *ids, size_t n_ids) {
  if (!d || (!ids && n_ids) || d->ids.n) return QV_EINVAL;
  for (size_t i = 0; i < n_ids; i++)
    if (tok_ids_push(&d->ids, ids[i])) return QV_ENOMEM;
  d->read = d->ids.n;
  d->prefix = d->read > DETOK_PRIME_CONTEXT ? d->read - DETOK_PRIME_CONTEXT : 0;
  /* The prompt's text counts as emitted, so a final flush returns only generated text. */
  d->emitted.len = 0;
  return decode_into(d->tok, d->ids.v, d->ids.n, d->flags, &d->emitted);
}

int qv_detok_flush(qv_detok *d, const char **text, size_t *len) {
  if (!d || !text || !len) return QV_EINVAL;
  *text = "";
  *len = 0;
  d->a.len = 0;
  int rc = decode_into(d->tok, d->ids.v, d->ids.n, d->flags, &d->a);
  if (rc) return rc;
  /* The one-shot decode is the truth; emit whatever of it has not been returned yet. */
  size_t e = d->emitted.len;
  if (d->a.len >= e && (e == 0 || memcmp(d->a.data, d->emitted.data, e) == 0))
    rc = set_ret(d, d->a.data + e, d->a.len - e, text, len);
  d->prefix = d->read = d->ids.n;
  return rc;
}
