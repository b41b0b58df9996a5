/* Regular expressions -> grammar: the ECMAScript subset JSON Schema `pattern` uses.
 *
 * Supported: literals and escapes (\n \t \r \f \v \0 \xHH \uHHHH \u{H..}, escaped
 * metacharacters), ., classes [...] with ranges, negation and \d \w \s \D \W \S inside or
 * outside, groups (...), (?:...), (?<name>...), alternation, quantifiers * + ? {n} {n,}
 * {n,m} (lazy forms generate the same language), ^ at the start and $ at the end. Not
 * supported (an error naming it): backreferences, lookaround, \b \B, ^/$ elsewhere, flags.
 * There is no backtracking: the pattern becomes a grammar, so "catastrophic" patterns cost
 * nothing at match time; expansion of counted repetition is bounded by the element limit.
 *
 * json_string mode builds the body of a JSON string: a '"' or '\' the pattern allows is
 * generated as its escape (\" \\), control characters only as \n \t \r escapes. search mode
 * (JSON Schema semantics) lets text surround the match unless the pattern is anchored. */
#include <stdlib.h>
#include <string.h>

#include "constrain/cst_internal.h"

typedef struct cps {
  uint32_t *r; /* [n][2] ranges */
  int32_t n, cap;
} cps;

typedef struct rx {
  cst_builder *b;
  const char *start, *p, *end;
  int json;
  int depth;
} rx;

static int cps_add(rx *x, cps *s, uint32_t lo, uint32_t hi) {
  if (s->n == s->cap) {
    int32_t cap = s->cap ? s->cap * 2 : 8;
    if (cap > 100000) return cst_fail(x->b, QV_ELIMIT, "regex character class too large");
    uint32_t *r = realloc(s->r, (size_t)cap * 2 * sizeof *r);
    if (!r) return cst_fail(x->b, QV_ENOMEM, "out of memory");
    s->r = r;
    s->cap = cap;
  }
  s->r[2 * s->n] = lo;
  s->r[2 * s->n + 1] = hi;
  s->n++;
  return 0;
}

static int rx_fail(rx *x, const char *what) {
  return cst_fail(x->b, QV_EUNSUPPORTED, "regex: %s (at offset %d)", what, (int)(x->p - x->start));
}

static int cmp_pair(const void *a, const void *b) {
  const uint32_t *u = a, *v = b;
  return u[0] < v[0] ? -1 : u[0] > v[0];
}

/* An expression for a code-point set, in plain or JSON-string form. */
static int32_t set_expr(rx *x, cps *s, int negate) {
  cst_builder *b = x->b;
  if (negate) {
    /* complement: reuse ex_cps_not but JSON mode needs the positive list, so compute it */
    qsort(s->r, (size_t)s->n, 2 * sizeof *s->r, cmp_pair);
    cps o = {0};
    uint32_t next = 0;
    for (int32_t i = 0; i < s->n; i++) {
      if (s->r[2 * i] > next) cps_add(x, &o, next, s->r[2 * i] - 1);
      if (s->r[2 * i + 1] + 1 > next) next = s->r[2 * i + 1] + 1;
    }
    if (next <= 0x10FFFF) cps_add(x, &o, next, 0x10FFFF);
    int32_t e = set_expr(x, &o, 0);
    free(o.r);
    return e;
  }
  if (!x->json) return ex_cps(b, s->r, s->n);
  /* Remove '"', '\' and controls; add their escapes where the set had them. */
  cps o = {0};
  int has_q = 0, has_bs = 0, has_n = 0, has_t = 0, has_r = 0;
  for (int32_t i = 0; i < s->n; i++) {
    uint32_t lo = s->r[2 * i], hi = s->r[2 * i + 1];
#define IN(c) (lo <= (uint32_t)(c) && (uint32_t)(c) <= hi)
    has_q |= IN('"');
    has_bs |= IN('\\');
    has_n |= IN('\n');
    has_t |= IN('\t');
    has_r |= IN('\r');
#undef IN
    uint32_t cuts[] = {0, 0x1F, '"', '"', '\\', '\\'};
    /* subtract the three excluded ranges from [lo, hi] */
    uint32_t a = lo;
    while (a <= hi) {
      int moved = 0;
      for (int k = 0; k < 3; k++)
        if (a >= cuts[2 * k] && a <= cuts[2 * k + 1]) {
          a = cuts[2 * k + 1] + 1;
          moved = 1;
        }
      if (moved) continue;
      uint32_t z = hi;
      for (int k = 0; k < 3; k++)
        if (cuts[2 * k] > a && cuts[2 * k] - 1 < z) z = cuts[2 * k] - 1;
      cps_add(x, &o, a, z);
      if (z == 0xFFFFFFFFu) break;
      a = z + 1;
    }
  }
  int32_t alts[6];
  int k = 0;
  if (o.n) alts[k++] = ex_cps(b, o.r, o.n);
  if (has_q) alts[k++] = ex_str(b, "\\\"");
  if (has_bs) alts[k++] = ex_str(b, "\\\\");
  if (has_n) alts[k++] = ex_str(b, "\\n");
  if (has_t) alts[k++] = ex_str(b, "\\t");
  if (has_r) alts[k++] = ex_str(b, "\\r");
  free(o.r);
  return ex_alt(b, alts, k);
}

static int class_escape(rx *x, char c, cps *s, int *negated) {
  *negated = c == 'D' || c == 'W' || c == 'S';
  switch (c) {
    case 'd': case 'D': return cps_add(x, s, '0', '9');
    case 'w': case 'W':
      return cps_add(x, s, 'a', 'z') | cps_add(x, s, 'A', 'Z') | cps_add(x, s, '0', '9') | cps_add(x, s, '_', '_');
    case 's': case 'S': {
      static const uint32_t ws[] = {9, 13, ' ', ' ', 0xA0, 0xA0, 0x1680, 0x1680, 0x2000, 0x200A, 0x2028, 0x2029,
                                    0x202F, 0x202F, 0x205F, 0x205F, 0x3000, 0x3000, 0xFEFF, 0xFEFF};
      int rc = 0;
      for (int i = 0; i < 10; i++) rc |= cps_add(x, s, ws[2 * i], ws[2 * i + 1]);
      return rc;
    }
  }
  return -2;
}

static int hexval(char c) {
  return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* Decodes one UTF-8 character of the pattern. */
static uint32_t next_cp(rx *x) {
  const unsigned char *s = (const unsigned char *)x->p;
  size_t n = (size_t)(x->end - x->p);
  uint32_t c = s[0];
  int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
  if ((size_t)len > n) len = 1;
  if (len > 1) {
    c &= (uint32_t)(0x7F >> len);
    for (int i = 1; i < len; i++) c = (c << 6) | (s[i] & 0x3Fu);
  }
  x->p += len;
  return c;
}

/* An escape after '\' that denotes one character; -1 when it is not one. */
static int64_t char_escape(rx *x) {
  if (x->p >= x->end) return rx_fail(x, "pattern ends with '\\'"), -2;
  char c = *x->p++;
  switch (c) {
    case 'n': return '\n';
    case 't': return '\t';
    case 'r': return '\r';
    case 'f': return '\f';
    case 'v': return '\v';
    case '0': return 0;
    case 'x': {
      if (x->end - x->p < 2 || hexval(x->p[0]) < 0 || hexval(x->p[1]) < 0) return rx_fail(x, "bad \\x escape"), -2;
      int v = hexval(x->p[0]) * 16 + hexval(x->p[1]);
      x->p += 2;
      return v;
    }
    case 'u': {
      uint32_t v = 0;
      if (x->p < x->end && *x->p == '{') {
        x->p++;
        int n = 0;
        while (x->p < x->end && *x->p != '}' && n < 7) {
          if (hexval(*x->p) < 0) return rx_fail(x, "bad \\u{} escape"), -2;
          v = v * 16 + (uint32_t)hexval(*x->p++);
          n++;
        }
        if (x->p >= x->end || *x->p != '}' || n == 0 || v > 0x10FFFF) return rx_fail(x, "bad \\u{} escape"), -2;
        x->p++;
        return v;
      }
      if (x->end - x->p < 4) return rx_fail(x, "bad \\u escape"), -2;
      for (int i = 0; i < 4; i++) {
        if (hexval(x->p[i]) < 0) return rx_fail(x, "bad \\u escape"), -2;
        v = v * 16 + (uint32_t)hexval(x->p[i]);
      }
      x->p += 4;
      return v;
    }
    case 'b': case 'B': return rx_fail(x, "word boundaries (\\b, \\B) are not supported"), -2;
    case 'k': return rx_fail(x, "named backreferences are not supported"), -2;
    case 'p': case 'P': return rx_fail(x, "Unicode property escapes are not supported"), -2;
    case 'c': return rx_fail(x, "control escapes (\\c) are not supported"), -2;
    default:
      if (c >= '1' && c <= '9') return rx_fail(x, "backreferences are not supported"), -2;
      if ((unsigned char)c >= 0x80) {
        x->p--;
        return next_cp(x);
      }
      return (unsigned char)c; /* escaped metacharacter or identity escape */
  }
}

static int32_t parse_class(rx *x) {
  cps s = {0};
  int neg = 0;
  if (x->p < x->end && *x->p == '^') neg = 1, x->p++;
  int first = 1;
  cps negs = {0}; /* \D \W \S inside a class: added as their complements */
  while (x->p < x->end && (*x->p != ']' || first)) {
    first = 0;
    int64_t lo;
    if (*x->p == '\\') {
      x->p++;
      if (x->p < x->end) {
        int ng;
        cps tmp = {0};
        int rc = class_escape(x, *x->p, &tmp, &ng);
        if (rc != -2) {
          x->p++;
          if (ng) {
            qsort(tmp.r, (size_t)tmp.n, 2 * sizeof *tmp.r, cmp_pair);
            uint32_t next = 0;
            for (int32_t i = 0; i < tmp.n; i++) {
              if (tmp.r[2 * i] > next) cps_add(x, &s, next, tmp.r[2 * i] - 1);
              next = tmp.r[2 * i + 1] + 1;
            }
            cps_add(x, &s, next, 0x10FFFF);
          } else {
            for (int32_t i = 0; i < tmp.n; i++) cps_add(x, &s, tmp.r[2 * i], tmp.r[2 * i + 1]);
          }
          free(tmp.r);
          continue;
        }
        free(tmp.r);
        if (*x->p == 'b') {
          x->p++;
          lo = 8;
        } else {
          lo = char_escape(x);
        }
      } else {
        lo = -2;
      }
    } else {
      lo = next_cp(x);
    }
    if (lo < 0) {
      free(s.r);
      free(negs.r);
      return -1;
    }
    int64_t hi = lo;
    if (x->p + 1 < x->end && *x->p == '-' && x->p[1] != ']') {
      x->p++;
      if (*x->p == '\\') {
        x->p++;
        hi = char_escape(x);
      } else {
        hi = next_cp(x);
      }
      if (hi < 0 || hi < lo) {
        free(s.r);
        free(negs.r);
        return hi < 0 ? -1 : cst_fail(x->b, QV_EINVAL, "regex: class range out of order");
      }
    }
    cps_add(x, &s, (uint32_t)lo, (uint32_t)hi);
  }
  free(negs.r);
  if (x->p >= x->end) {
    free(s.r);
    return cst_fail(x->b, QV_EINVAL, "regex: unterminated character class");
  }
  x->p++; /* ] */
  int32_t e = set_expr(x, &s, neg);
  free(s.r);
  return e;
}

static int32_t parse_alt(rx *x);

static int32_t parse_atom(rx *x) {
  cst_builder *b = x->b;
  char c = *x->p;
  if (c == '(') {
    x->p++;
    if (x->p < x->end && *x->p == '?') {
      if (x->end - x->p >= 2 && x->p[1] == ':') x->p += 2;
      else if (x->end - x->p >= 2 && x->p[1] == '<' && x->end - x->p >= 3 && x->p[2] != '=' && x->p[2] != '!') {
        const char *q = memchr(x->p, '>', (size_t)(x->end - x->p));
        if (!q) return cst_fail(b, QV_EINVAL, "regex: bad group name");
        x->p = q + 1;
      } else {
        return rx_fail(x, "lookaround and inline flags are not supported");
      }
    }
    if (++x->depth > QV_CST_MAX_DEPTH) return cst_fail(b, QV_ELIMIT, "regex nested deeper than %d", QV_CST_MAX_DEPTH);
    int32_t e = parse_alt(x);
    x->depth--;
    if (e < 0) return -1;
    if (x->p >= x->end || *x->p != ')') return cst_fail(b, QV_EINVAL, "regex: missing ')'");
    x->p++;
    return e;
  }
  if (c == '[') {
    x->p++;
    return parse_class(x);
  }
  if (c == '.') {
    x->p++;
    cps s = {0};
    static const uint32_t nl[] = {'\n', '\n', '\r', '\r', 0x2028, 0x2029};
    for (int i = 0; i < 3; i++) cps_add(x, &s, nl[2 * i], nl[2 * i + 1]);
    int32_t e = set_expr(x, &s, 1);
    free(s.r);
    return e;
  }
  if (c == '\\') {
    x->p++;
    if (x->p < x->end) {
      cps s = {0};
      int ng;
      if (class_escape(x, *x->p, &s, &ng) != -2) {
        x->p++;
        int32_t e = set_expr(x, &s, ng);
        free(s.r);
        return e;
      }
      free(s.r);
    }
    int64_t v = char_escape(x);
    if (v < 0) return -1;
    cps s = {0};
    cps_add(x, &s, (uint32_t)v, (uint32_t)v);
    int32_t e = set_expr(x, &s, 0);
    free(s.r);
    return e;
  }
  if (c == '^' || c == '$') return rx_fail(x, "anchors (^, $) are supported only at the start and end");
  if (c == '*' || c == '+' || c == '?' || c == '{') return cst_fail(b, QV_EINVAL, "regex: nothing to repeat");
  if (c == ')' ) return cst_fail(b, QV_EINVAL, "regex: unbalanced ')'");
  uint32_t cp = next_cp(x);
  cps s = {0};
  cps_add(x, &s, cp, cp);
  int32_t e = set_expr(x, &s, 0);
  free(s.r);
  return e;
}

static int parse_int(rx *x, int32_t *v) {
  int64_t n = 0;
  int digits = 0;
  while (x->p < x->end && *x->p >= '0' && *x->p <= '9') {
    n = n * 10 + (*x->p++ - '0');
    if (n > 1000000) n = 1000000;
    digits++;
  }
  *v = (int32_t)n;
  return digits;
}

static int32_t parse_piece(rx *x) {
  int32_t e = parse_atom(x);
  while (e >= 0 && x->p < x->end) {
    char c = *x->p;
    int32_t mn, mx;
    if (c == '*') mn = 0, mx = -1, x->p++;
    else if (c == '+') mn = 1, mx = -1, x->p++;
    else if (c == '?') mn = 0, mx = 1, x->p++;
    else if (c == '{') {
      const char *save = x->p;
      x->p++;
      if (!parse_int(x, &mn)) { /* a literal '{' */
        x->p = save;
        break;
      }
      mx = mn;
      if (x->p < x->end && *x->p == ',') {
        x->p++;
        if (!parse_int(x, &mx)) mx = -1;
      }
      if (x->p >= x->end || *x->p != '}') {
        x->p = save;
        break;
      }
      x->p++;
    } else {
      break;
    }
    if (x->p < x->end && *x->p == '?') x->p++; /* lazy: same language */
    e = ex_rep(x->b, e, mn, mx);
  }
  return e;
}

static int32_t parse_seq(rx *x) {
  int32_t *xs = NULL, n = 0, cap = 0, out = -1;
  while (x->p < x->end && *x->p != '|' && *x->p != ')') {
    if (*x->p == '$' && x->p + 1 == x->end) break;
    int32_t e = parse_piece(x);
    if (e < 0) goto done;
    if (n == cap) {
      cap = cap ? cap * 2 : 16;
      int32_t *a = realloc(xs, (size_t)cap * sizeof *a);
      if (!a) {
        cst_fail(x->b, QV_ENOMEM, "out of memory");
        goto done;
      }
      xs = a;
    }
    xs[n++] = e;
  }
  out = ex_seq(x->b, xs, n);
done:
  free(xs);
  return out;
}

static int32_t parse_alt(rx *x) {
  int32_t xs[256];
  int32_t n = 0;
  xs[n++] = parse_seq(x);
  while (x->p < x->end && *x->p == '|') {
    x->p++;
    if (n == 256) return cst_fail(x->b, QV_ELIMIT, "regex with more than 256 alternatives in one group");
    xs[n++] = parse_seq(x);
  }
  for (int32_t i = 0; i < n; i++)
    if (xs[i] < 0) return -1;
  return ex_alt(x->b, xs, n);
}

int32_t cst_regex_expr(cst_builder *b, const char *pat, size_t len, int json_string, int search) {
  rx x = {.b = b, .start = pat, .p = pat, .end = pat + len, .json = json_string};
  int anchored_start = 0, anchored_end = 0;
  if (x.p < x.end && *x.p == '^') anchored_start = 1, x.p++;
  int32_t body = parse_alt(&x);
  if (body < 0) return -1;
  if (x.p < x.end && *x.p == '$' && x.p + 1 == x.end) anchored_end = 1, x.p++;
  if (x.p != x.end) return cst_fail(b, QV_EINVAL, "regex: unexpected '%c' at offset %d", *x.p, (int)(x.p - pat));
  if (!search) return body;
  int32_t any = -1;
  if (!anchored_start || !anchored_end) {
    cps s = {0};
    cps_add(&x, &s, 0, 0x10FFFF);
    any = ex_rep(b, set_expr(&x, &s, 0), 0, -1);
    free(s.r);
  }
  return ex_seq3(b, anchored_start ? ex_empty(b) : any, body, anchored_end ? ex_empty(b) : any);
}

int cst_build_regex(cst_builder *b, const char *pat, size_t len, int32_t *root) {
  *root = cst_regex_expr(b, pat, len, 0, 0);
  return b->failed;
}

int cst_build_choice(cst_builder *b, const char *const *choices, int32_t n, int32_t *root) {
  if (n <= 0) return cst_fail(b, QV_EINVAL, "choice needs at least one string");
  int32_t *xs = malloc((size_t)n * sizeof *xs);
  if (!xs) return cst_fail(b, QV_ENOMEM, "out of memory");
  for (int32_t i = 0; i < n; i++) xs[i] = ex_str(b, choices[i]);
  *root = ex_alt(b, xs, n);
  free(xs);
  return b->failed;
}
