/* The raw bytes a token contributes to decoded text, for constrained decoding: each token's
 * vocabulary string taken through the per-token part of the decoder chain (byte-level
 * characters back to bytes, <0xXX> byte-fallback tokens to their byte, the Metaspace/Replace
 * "▁" to a space). Context-dependent decoder steps (Strip of the first character, Metaspace's
 * dropped leading space at the start of a text) do not apply inside a generation. */
#include <string.h>

#include "tokenizer/tok_internal.h"
#include "tokenizer/tok_util.h"

static int byte_token(const char *s, size_t n) {
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

/* Replaces every occurrence of code point cp in buf[0..*n) by the bytes rep[0..rn). */
static int replace_cp(char *buf, size_t *n, size_t cap, const char *pat, size_t pn, const char *rep, size_t rn) {
  char tmp[1024];
  size_t o = 0;
  for (size_t i = 0; i < *n;) {
    if (pn && i + pn <= *n && !memcmp(buf + i, pat, pn)) {
      if (o + rn > sizeof tmp) return -1;
      memcpy(tmp + o, rep, rn);
      o += rn;
      i += pn;
    } else {
      if (o + 1 > sizeof tmp) return -1;
      tmp[o++] = buf[i++];
    }
  }
  if (o > cap) return -1;
  memcpy(buf, tmp, o);
  *n = o;
  return 0;
}

int qv_tokenizer_token_bytes(const qv_tokenizer *tok, int32_t id, char *out, size_t cap, size_t *len) {
  *len = 0;
  if (!tok || id < 0 || id >= tok->n_vocab || tok->tok_off[id] == UINT32_MAX) return -1;
  const char *s = tok->tok_text.data + tok->tok_off[id];
  size_t n = tok->tok_len[id];
  /* Byte-fallback tokens stand for their byte even when a tokenizer.json lists them among
   * the (special) added tokens, as trained SentencePiece-style exports often do. */
  int has_bf = tok->byte_fallback;
  for (int i = 0; i < tok->n_dec; i++) has_bf |= tok->dec[i].kind == TOK_DEC_BYTEFALLBACK;
  if (has_bf && byte_token(s, n) >= 0) {
    out[0] = (char)byte_token(s, n);
    *len = 1;
    return 0;
  }
  if (tok->tok_special[id] & TOK_FLAG_SPECIAL) return -1;
  if (n > cap || n > 1024) return -1;
  memcpy(out, s, n);
  if (tok->tok_special[id]) { /* a non-special added token: its text as is */
    *len = n;
    return 0;
  }
  for (int i = 0; i < tok->n_dec; i++) {
    const tok_dec_step *st = &tok->dec[i];
    switch (st->kind) {
      case TOK_DEC_BYTEFALLBACK: {
        int b = byte_token(out, n);
        if (b >= 0) {
          out[0] = (char)b;
          *len = 1;
          return 0; /* later steps see a byte, not text */
        }
        break;
      }
      case TOK_DEC_BYTELEVEL: {
        size_t o = 0;
        int ok = 1;
        for (size_t j = 0; j < n;) {
          uint32_t cp;
          int k = tok_utf8_decode((const unsigned char *)out + j, n - j, &cp);
          int b = tok_cp_to_byte(cp);
          if (b < 0 || k <= 0) { ok = 0; break; }
          out[o++] = (char)b; /* o <= j: writing behind the reader */
          j += (size_t)k;
        }
        if (ok) n = o;
        break;
      }
      case TOK_DEC_METASPACE: {
        char pat[4];
        int pn = tok_utf8_encode(st->replacement, pat);
        if (replace_cp(out, &n, cap, pat, (size_t)pn, " ", 1)) return -1;
        break;
      }
      case TOK_DEC_REPLACE:
        if (!st->re.code && st->pattern &&
            replace_cp(out, &n, cap, st->pattern, st->pattern_len, st->content, st->content_len))
          return -1;
        break;
      default:
        break;
    }
  }
  /* Without a decoder chain the byte tokenizer's <0xXX> names still mean bytes. */
  if (tok->n_dec == 0 && tok->byte_fallback) {
    int b = byte_token(out, n);
    if (b >= 0) {
      out[0] = (char)b;
      n = 1;
    }
  }
  *len = n;
  return 0;
}
