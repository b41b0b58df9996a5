/* Pre-tokenizers: Split (regex or literal, five behaviours, invert), ByteLevel, Metaspace,
 * Digits, Punctuation, Whitespace and WhitespaceSplit, applied one after another to every piece
 * the previous one produced, exactly like the reference's PreTokenizedString. Pieces are
 * (offset, length) ranges into one arena buffer; steps that rewrite text (ByteLevel, Metaspace)
 * append the new text to the arena, so no piece owns memory. */
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "tokenizer/tok_internal.h"

int tok_pieces_push(tok_pieces *p, uint32_t off, uint32_t len, int at_start) {
  if (p->n == p->cap) {
    size_t cap = p->cap ? p->cap * 2 : 32;
    tok_piece *v = realloc(p->v, cap * sizeof *v);
    if (!v) return QV_ENOMEM;
    p->v = v;
    p->cap = cap;
  }
  p->v[p->n++] = (tok_piece){off, len, (uint8_t)(at_start ? 1 : 0)};
  return 0;
}

/* GPT-2's reversible byte <-> printable-character table: printable Latin-1 bytes map to
 * themselves, the other 68 bytes to U+0100 upwards in byte order (generated, constant). */
static const uint16_t BYTE_CP[256] = {
    0x100, 0x101, 0x102, 0x103, 0x104, 0x105, 0x106, 0x107, 0x108, 0x109, 0x10A, 0x10B, 0x10C, 0x10D, 0x10E, 0x10F,
    0x110, 0x111, 0x112, 0x113, 0x114, 0x115, 0x116, 0x117, 0x118, 0x119, 0x11A, 0x11B, 0x11C, 0x11D, 0x11E, 0x11F,
    0x120, 0x021, 0x022, 0x023, 0x024, 0x025, 0x026, 0x027, 0x028, 0x029, 0x02A, 0x02B, 0x02C, 0x02D, 0x02E, 0x02F,
    0x030, 0x031, 0x032, 0x033, 0x034, 0x035, 0x036, 0x037, 0x038, 0x039, 0x03A, 0x03B, 0x03C, 0x03D, 0x03E, 0x03F,
    0x040, 0x041, 0x042, 0x043, 0x044, 0x045, 0x046, 0x047, 0x048, 0x049, 0x04A, 0x04B, 0x04C, 0x04D, 0x04E, 0x04F,
    0x050, 0x051, 0x052, 0x053, 0x054, 0x055, 0x056, 0x057, 0x058, 0x059, 0x05A, 0x05B, 0x05C, 0x05D, 0x05E, 0x05F,
    0x060, 0x061, 0x062, 0x063, 0x064, 0x065, 0x066, 0x067, 0x068, 0x069, 0x06A, 0x06B, 0x06C, 0x06D, 0x06E, 0x06F,
    0x070, 0x071, 0x072, 0x073, 0x074, 0x075, 0x076, 0x077, 0x078, 0x079, 0x07A, 0x07B, 0x07C, 0x07D, 0x07E, 0x121,
    0x122, 0x123, 0x124, 0x125, 0x126, 0x127, 0x128, 0x129, 0x12A, 0x12B, 0x12C, 0x12D, 0x12E, 0x12F, 0x130, 0x131,
    0x132, 0x133, 0x134, 0x135, 0x136, 0x137, 0x138, 0x139, 0x13A, 0x13B, 0x13C, 0x13D, 0x13E, 0x13F, 0x140, 0x141,
    0x142, 0x0A1, 0x0A2, 0x0A3, 0x0A4, 0x0A5, 0x0A6, 0x0A7, 0x0A8, 0x0A9, 0x0AA, 0x0AB, 0x0AC, 0x143, 0x0AE, 0x0AF,
    0x0B0, 0x0B1, 0x0B2, 0x0B3, 0x0B4, 0x0B5, 0x0B6, 0x0B7, 0x0B8, 0x0B9, 0x0BA, 0x0BB, 0x0BC, 0x0BD, 0x0BE, 0x0BF,
    0x0C0, 0x0C1, 0x0C2, 0x0C3, 0x0C4, 0x0C5, 0x0C6, 0x0C7, 0x0C8, 0x0C9, 0x0CA, 0x0CB, 0x0CC, 0x0CD, 0x0CE, 0x0CF,
    0x0D0, 0x0D1, 0x0D2, 0x0D3, 0x0D4, 0x0D5, 0x0D6, 0x0D7, 0x0D8, 0x0D9, 0x0DA, 0x0DB, 0x0DC, 0x0DD, 0x0DE, 0x0DF,
    0x0E0, 0x0E1, 0x0E2, 0x0E3, 0x0E4, 0x0E5, 0x0E6, 0x0E7, 0x0E8, 0x0E9, 0x0EA, 0x0EB, 0x0EC, 0x0ED, 0x0EE, 0x0EF,
    0x0F0, 0x0F1, 0x0F2, 0x0F3, 0x0F4, 0x0F5, 0x0F6, 0x0F7, 0x0F8, 0x0F9, 0x0FA, 0x0FB, 0x0FC, 0x0FD, 0x0FE, 0x0FF,
};

uint32_t tok_byte_to_cp(unsigned char b) { return BYTE_CP[b]; }

int tok_cp_to_byte(uint32_t cp) {
  if (cp < 256) {
    if ((cp >= 0x21 && cp <= 0x7E) || (cp >= 0xA1 && cp <= 0xAC) || cp >= 0xAE) return (int)cp;
    return -1;
  }
  if (cp >= 256 + 68) return -1;
  for (unsigned b = 0; b < 256; b++)
    if (BYTE_CP[b] == cp) return (int)b;
  return -1;
}

/* One candidate split: [s, e) and whether it was a match. */
typedef struct span { uint32_t s, e; uint8_t m; } span;
typedef struct spans { span *v; size_t n, cap; } spans;

static int spans_push(spans *sp, size_t s, size_t e, int m) {
  if (sp->n == sp->cap) {
    size_t cap = sp->cap ? sp->cap * 2 : 64;
    span *v = realloc(sp->v, cap * sizeof *v);
    if (!v) return QV_ENOMEM;
    sp->v = v;
    sp->cap = cap;
  }
  sp->v[sp->n++] = (span){(uint32_t)s, (uint32_t)e, (uint8_t)m};
  return 0;
}

static int regex_spans(const tok_regex *re, tok_match_ctx *mc, const char *s, size_t n, spans *sp) {
  size_t prev = 0, search = 0;
  while (search <= n) {
    size_t ms, me;
    int rc = tok_regex_next(re, mc, s, n, search, &ms, &me);
    if (rc < 0) return rc;
    if (rc == 0) break;
    if (prev != ms && spans_push(sp, prev, ms, 0)) return QV_ENOMEM;
    if (spans_push(sp, ms, me, 1)) return QV_ENOMEM;
    prev = me;
    if (me == ms) {
      if (me >= n) break;
      search = me + (size_t)tok_utf8_len((unsigned char)s[me]);
    } else {
      search = me;
    }
  }
  if (prev != n && spans_push(sp, prev, n, 0)) return QV_ENOMEM;
  return 0;
}

static int is_punct(uint32_t cp) {
  if (cp < 0x80) return (cp >= 0x21 && cp <= 0x2F) || (cp >= 0x3A && cp <= 0x40) ||
                        (cp >= 0x5B && cp <= 0x60) || (cp >= 0x7B && cp <= 0x7E);
  utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
  return c == UTF8PROC_CATEGORY_PC || c == UTF8PROC_CATEGORY_PD || c == UTF8PROC_CATEGORY_PS ||
         c == UTF8PROC_CATEGORY_PE || c == UTF8PROC_CATEGORY_PI || c == UTF8PROC_CATEGORY_PF ||
         c == UTF8PROC_CATEGORY_PO;
}

/* Rust's char::is_numeric: general categories Nd, Nl and No. */
static int is_numeric(uint32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
  return c == UTF8PROC_CATEGORY_ND || c == UTF8PROC_CATEGORY_NL || c == UTF8PROC_CATEGORY_NO;
}

enum { PRED_WS, PRED_PUNCT, PRED_DIGIT, PRED_CHAR };

/* Char-predicate split: every matching character is its own match. */
static int char_spans(int pred, uint32_t want, const char *s, size_t n, spans *sp) {
  const unsigned char *u = (const unsigned char *)s;
  size_t last = 0;
  for (size_t i = 0; i < n;) {
    uint32_t cp;
    int k = tok_utf8_decode(u + i, n - i, &cp);
    int hit = pred == PRED_WS      ? tok_is_whitespace(cp)
              : pred == PRED_PUNCT ? is_punct(cp)
              : pred == PRED_DIGIT ? is_numeric(cp)
                                   : cp == want;
    if (hit) {
      if (last < i && spans_push(sp, last, i, 0)) return QV_ENOMEM;
      if (spans_push(sp, i, i + (size_t)k, 1)) return QV_ENOMEM;
      last = i + (size_t)k;
    }
    i += (size_t)k;
  }
  if (last < n && spans_push(sp, last, n, 0)) return QV_ENOMEM;
  return 0;
}

/* Applies invert and the behaviour to the spans in place (the reference's split semantics). */
static void apply_behavior(spans *sp, tok_split_behavior b, int invert) {
  if (invert)
    for (size_t i = 0; i < sp->n; i++) sp->v[i].m = !sp->v[i].m;
  size_t w = 0;
  switch (b) {
    case TOK_SPLIT_ISOLATED: return;
    case TOK_SPLIT_REMOVED:
      for (size_t i = 0; i < sp->n; i++)
        if (!sp->v[i].m) sp->v[w++] = sp->v[i];
      sp->n = w;
      return;
    case TOK_SPLIT_MERGED_PREV: {
      int prev_match = 0;
      for (size_t i = 0; i < sp->n; i++) {
        span x = sp->v[i];
        if (x.m && !prev_match && w > 0) {
          sp->v[w - 1].e = x.e;
        } else {
          sp->v[w++] = x;
        }
        prev_match = x.m;
      }
      sp->n = w;
      return;
    }
    case TOK_SPLIT_MERGED_NEXT: {
      /* Walk backwards, merging a match into the piece after it. */
      int prev_match = 0;
      size_t r = sp->n; /* write position from the end */
      for (size_t i = sp->n; i-- > 0;) {
        span x = sp->v[i];
        if (x.m && !prev_match && r < sp->n) {
          sp->v[r].s = x.s;
        } else {
          sp->v[--r] = x;
        }
        prev_match = x.m;
      }
      memmove(sp->v, sp->v + r, (sp->n - r) * sizeof *sp->v);
      sp->n -= r;
      return;
    }
    case TOK_SPLIT_CONTIGUOUS: {
      for (size_t i = 0; i < sp->n; i++) {
        if (w > 0 && sp->v[w - 1].m == sp->v[i].m) {
          sp->v[w - 1].e = sp->v[i].e;
        } else {
          sp->v[w++] = sp->v[i];
        }
      }
      sp->n = w;
      return;
    }
  }
}

/* Appends arena[off..off+len) (or nothing) plus extra text to the arena; returns the new offset. */
static int arena_reserve(tok_buf *arena, size_t n, uint32_t *off) {
  if (arena->len + n > UINT32_MAX - 16) return QV_ELIMIT;
  if (tok_buf_reserve(arena, n)) return QV_ENOMEM;
  *off = (uint32_t)arena->len;
  return 0;
}

static int bytelevel_map(tok_buf *arena, tok_piece p, tok_pieces *out) {
  uint32_t off;
  int rc = arena_reserve(arena, (size_t)p.len * 2, &off);
  if (rc) return rc;
  const unsigned char *src = (const unsigned char *)arena->data + p.off;
  char *dst = arena->data + off;
  size_t w = 0;
  for (uint32_t i = 0; i < p.len; i++) {
    uint32_t cp = tok_byte_to_cp(src[i]);
    if (cp < 0x80) {
      dst[w++] = (char)cp;
    } else {
      dst[w++] = (char)(0xC0 | (cp >> 6));
      dst[w++] = (char)(0x80 | (cp & 0x3F));
    }
  }
  arena->len += w;
  arena->data[arena->len] = '\0';
  return tok_pieces_push(out, off, (uint32_t)w, p.at_start);
}

/* Metaspace: spaces become the replacement, maybe prefixed; returns the rewritten piece. */
static int metaspace_rewrite(const tok_pre_step *st, tok_buf *arena, tok_piece p, tok_piece *res) {
  char rep[4];
  int rl = tok_utf8_encode(st->replacement, rep);
  size_t n_sp = 0;
  for (uint32_t i = 0; i < p.len; i++) n_sp += arena->data[p.off + i] == ' ';
  uint32_t off;
  int rc = arena_reserve(arena, p.len + (n_sp + 1) * (size_t)rl, &off);
  if (rc) return rc;
  const char *src = arena->data + p.off;
  char *dst = arena->data + off;
  size_t w = 0;
  int starts_with_rep = 0;
  if (p.len > 0) {
    if (src[0] == ' ') starts_with_rep = 1;
    else if (p.len >= (uint32_t)rl && memcmp(src, rep, (size_t)rl) == 0) starts_with_rep = 1;
  }
  int prepend = (st->prepend == TOK_PREPEND_ALWAYS && !starts_with_rep) ||
                (st->prepend == TOK_PREPEND_FIRST && !starts_with_rep && p.at_start);
  if (prepend) {
    memcpy(dst, rep, (size_t)rl);
    w += (size_t)rl;
  }
  for (uint32_t i = 0; i < p.len; i++) {
    if (src[i] == ' ') {
      memcpy(dst + w, rep, (size_t)rl);
      w += (size_t)rl;
    } else {
      dst[w++] = src[i];
    }
  }
  arena->len += w;
  arena->data[arena->len] = '\0';
  *res = (tok_piece){off, (uint32_t)w, p.at_start};
  return 0;
}

static int push_spans(const spans *sp, tok_piece p, tok_pieces *out) {
  for (size_t i = 0; i < sp->n; i++) {
    if (sp->v[i].e <= sp->v[i].s) continue;
    int rc = tok_pieces_push(out, p.off + sp->v[i].s, sp->v[i].e - sp->v[i].s,
                             p.at_start && sp->v[i].s == 0);
    if (rc) return rc;
  }
  return 0;
}

static int step_piece(const tok_pre_step *st, tok_match_ctx *mc, tok_buf *arena, tok_piece p,
                      spans *sp, tok_pieces *out) {
  sp->n = 0;
  int rc = 0;
  switch (st->kind) {
    case TOK_PRE_SPLIT:
    case TOK_PRE_WHITESPACE:
      rc = regex_spans(&st->re, mc, arena->data + p.off, p.len, sp);
      if (rc) return rc;
      apply_behavior(sp, st->behavior, st->invert);
      return push_spans(sp, p, out);
    case TOK_PRE_WSPLIT:
    case TOK_PRE_PUNCT:
    case TOK_PRE_DIGITS: {
      int pred = st->kind == TOK_PRE_WSPLIT ? PRED_WS : st->kind == TOK_PRE_PUNCT ? PRED_PUNCT : PRED_DIGIT;
      tok_split_behavior b = st->kind == TOK_PRE_WSPLIT ? TOK_SPLIT_REMOVED
                             : st->kind == TOK_PRE_PUNCT ? st->behavior
                             : st->individual_digits ? TOK_SPLIT_ISOLATED
                                                     : TOK_SPLIT_CONTIGUOUS;
      rc = char_spans(pred, 0, arena->data + p.off, p.len, sp);
      if (rc) return rc;
      apply_behavior(sp, b, 0);
      return push_spans(sp, p, out);
    }
    case TOK_PRE_METASPACE: {
      tok_piece q;
      rc = metaspace_rewrite(st, arena, p, &q);
      if (rc) return rc;
      if (!st->split) return q.len ? tok_pieces_push(out, q.off, q.len, q.at_start) : 0;
      rc = char_spans(PRED_CHAR, st->replacement, arena->data + q.off, q.len, sp);
      if (rc) return rc;
      apply_behavior(sp, TOK_SPLIT_MERGED_NEXT, 0);
      return push_spans(sp, q, out);
    }
    case TOK_PRE_BYTELEVEL: {
      tok_piece q = p;
      if (st->add_prefix_space && (p.len == 0 || arena->data[p.off] != ' ')) {
        uint32_t off;
        rc = arena_reserve(arena, (size_t)p.len + 1, &off);
        if (rc) return rc;
        arena->data[off] = ' ';
        memcpy(arena->data + off + 1, arena->data + p.off, p.len);
        arena->len += (size_t)p.len + 1;
        arena->data[arena->len] = '\0';
        q = (tok_piece){off, p.len + 1, p.at_start};
      }
      if (!st->use_regex) return q.len ? bytelevel_map(arena, q, out) : 0;
      rc = regex_spans(&st->re, mc, arena->data + q.off, q.len, sp);
      if (rc) return rc;
      for (size_t i = 0; i < sp->n; i++) {
        if (sp->v[i].e <= sp->v[i].s) continue;
        tok_piece w = {q.off + sp->v[i].s, sp->v[i].e - sp->v[i].s, (uint8_t)(q.at_start && sp->v[i].s == 0)};
        rc = bytelevel_map(arena, w, out);
        if (rc) return rc;
      }
      return 0;
    }
  }
  return QV_EINVAL;
}

int tok_pretokenize(const qv_tokenizer *tok, tok_match_ctx *mc, tok_buf *arena, tok_piece piece,
                    tok_pieces *out, tok_pieces *tmp) {
  if (tok->n_pre == 0) return piece.len ? tok_pieces_push(out, piece.off, piece.len, piece.at_start) : 0;
  spans sp = {0};
  int rc = 0;
  /* cur holds the input of a step; the last step appends straight to out. */
  tmp->n = 0;
  if ((rc = tok_pieces_push(tmp, piece.off, piece.len, piece.at_start))) return rc;
  tok_pieces next = {0};
  for (int s = 0; s < tok->n_pre && rc == 0; s++) {
    tok_pieces *dst = (s == tok->n_pre - 1) ? out : &next;
    if (dst == &next) next.n = 0;
    for (size_t i = 0; i < tmp->n && rc == 0; i++) {
      if (tmp->v[i].len == 0) continue;
      rc = step_piece(&tok->pre[s], mc, arena, tmp->v[i], &sp, dst);
    }
    if (dst == &next) {
      tok_pieces t = *tmp;
      *tmp = next;
      next = t;
    }
  }
  free(next.v);
  free(sp.v);
  return rc;
}
