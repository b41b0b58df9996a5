/* Normalizers: Unicode forms through utf8proc, Prepend, Replace (literal or regex), Strip and
 * Lowercase, applied in order to one piece of text between added tokens, as the reference
 * does. Offsets are not tracked: quiver only needs ids, never alignments. */
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "tokenizer/tok_internal.h"

static int replace_all(const tok_norm_step *st, tok_match_ctx *mc, const char *s, size_t n,
                       tok_buf *out) {
  size_t pos = 0;
  if (!st->re.code) {
    if (st->str_len == 0) return tok_buf_append(out, s, n);
    while (pos < n) {
      const char *hit = NULL;
      if (n - pos >= st->str_len) {
        const char *p = s + pos, *end = s + n - st->str_len;
        while (p <= end) {
          p = memchr(p, st->str[0], (size_t)(end - p) + 1);
          if (!p) break;
          if (memcmp(p, st->str, st->str_len) == 0) { hit = p; break; }
          p++;
        }
      }
      if (!hit) break;
      if (tok_buf_append(out, s + pos, (size_t)(hit - s) - pos) ||
          tok_buf_append(out, st->content, st->content_len))
        return QV_ENOMEM;
      pos = (size_t)(hit - s) + st->str_len;
    }
    return tok_buf_append(out, s + pos, n - pos);
  }
  size_t search = 0;
  while (search <= n) {
    size_t ms, me;
    int rc = tok_regex_next(&st->re, mc, s, n, search, &ms, &me);
    if (rc < 0) return rc;
    if (rc == 0) break;
    if (tok_buf_append(out, s + pos, ms - pos) || tok_buf_append(out, st->content, st->content_len))
      return QV_ENOMEM;
    pos = me;
    search = me;
    if (me == ms) { /* an empty match: step over one character */
      if (me >= n) break;
      size_t k = (size_t)tok_utf8_len((unsigned char)s[me]);
      if (tok_buf_append(out, s + me, k)) return QV_ENOMEM;
      pos = search = me + k;
    }
  }
  return tok_buf_append(out, s + pos, pos < n ? n - pos : 0);
}

/* Lowercase per character as the reference does (char::to_lowercase: no final-sigma context),
 * with the one multi-character mapping, U+0130 -> "i\u0307". */
static int lowercase(const char *s, size_t n, tok_buf *out) {
  const unsigned char *u = (const unsigned char *)s;
  for (size_t i = 0; i < n;) {
    uint32_t cp;
    int k = tok_utf8_decode(u + i, n - i, &cp);
    char enc[4];
    if (cp < 0x80) {
      char c = (char)(cp >= 'A' && cp <= 'Z' ? cp + 32 : cp);
      if (tok_buf_append(out, &c, 1)) return QV_ENOMEM;
    } else if (cp == 0x130) {
      if (tok_buf_append(out, "i\xCC\x87", 3)) return QV_ENOMEM;
    } else {
      uint32_t lc = (uint32_t)utf8proc_tolower((utf8proc_int32_t)cp);
      if (tok_buf_append(out, enc, (size_t)tok_utf8_encode(lc, enc))) return QV_ENOMEM;
    }
    i += (size_t)k;
  }
  return 0;
}

static int strip(const tok_norm_step *st, const char *s, size_t n, tok_buf *out) {
  const unsigned char *u = (const unsigned char *)s;
  size_t a = 0, b = n;
  if (st->strip_left) {
    while (a < b) {
      uint32_t cp;
      int k = tok_utf8_decode(u + a, b - a, &cp);
      if (!tok_is_whitespace(cp)) break;
      a += (size_t)k;
    }
  }
  if (st->strip_right) {
    while (b > a) {
      size_t c = b - 1;
      while (c > a && (u[c] & 0xC0) == 0x80) c--;
      uint32_t cp;
      tok_utf8_decode(u + c, b - c, &cp);
      if (!tok_is_whitespace(cp)) break;
      b = c;
    }
  }
  return tok_buf_append(out, s + a, b - a);
}

static int unicode_form(const char *s, size_t n, int options, tok_buf *out) {
  /* ASCII is invariant under all four forms: skip utf8proc's decompose/recompose passes. */
  size_t i = 0;
  while (i < n && (unsigned char)s[i] < 0x80) i++;
  if (i == n) return tok_buf_append(out, s, n);
  utf8proc_uint8_t *dst = NULL;
  utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &dst,
                                    (utf8proc_option_t)options);
  if (r < 0) {
    free(dst);
    return r == UTF8PROC_ERROR_NOMEM ? QV_ENOMEM : QV_EINVAL;
  }
  int rc = tok_buf_append(out, dst, (size_t)r);
  free(dst);
  return rc;
}

static int apply(const tok_norm_step *st, tok_match_ctx *mc, const char *s, size_t n, tok_buf *out) {
  switch (st->kind) {
    case TOK_NORM_NFC: return unicode_form(s, n, UTF8PROC_STABLE | UTF8PROC_COMPOSE, out);
    case TOK_NORM_NFKC:
      return unicode_form(s, n, UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT, out);
    case TOK_NORM_NFD: return unicode_form(s, n, UTF8PROC_STABLE | UTF8PROC_DECOMPOSE, out);
    case TOK_NORM_NFKD:
      return unicode_form(s, n, UTF8PROC_STABLE | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT, out);
    case TOK_NORM_PREPEND:
      if (n && tok_buf_append(out, st->str, st->str_len)) return QV_ENOMEM;
      return tok_buf_append(out, s, n);
    case TOK_NORM_REPLACE: return replace_all(st, mc, s, n, out);
    case TOK_NORM_STRIP: return strip(st, s, n, out);
    case TOK_NORM_LOWERCASE: return lowercase(s, n, out);
  }
  return QV_EINVAL;
}

int tok_normalize(const qv_tokenizer *tok, tok_match_ctx *mc, const char *s, size_t n, tok_buf *out) {
  out->len = 0;
  if (tok->n_norm == 0) return tok_buf_append(out, s, n);
  tok_buf tmp[2] = {{0}, {0}};
  const char *cur = s;
  size_t cur_len = n;
  int rc = 0;
  for (int i = 0; i < tok->n_norm && rc == 0; i++) {
    tok_buf *dst = (i == tok->n_norm - 1) ? out : &tmp[i & 1];
    dst->len = 0;
    rc = apply(&tok->norm[i], mc, cur, cur_len, dst);
    if (rc == 0 && !dst->data) rc = tok_buf_append(dst, "", 0);
    cur = dst->data;
    cur_len = dst->len;
  }
  tok_buf_free(&tmp[0]);
  tok_buf_free(&tmp[1]);
  return rc;
}
