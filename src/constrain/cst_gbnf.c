/* Grammar texts -> grammar IR: llama.cpp's GBNF and the Lark/EBNF subset vLLM passes on.
 *
 * GBNF: `name ::= alternatives`, "literals" with \n \t \r \\ \" \xHH \uHHHH \UHHHHHHHH
 * escapes, [classes] (negation, ranges), `.` (any character), ( groups ), rule names, and the
 * postfix operators * + ? {m} {m,} {m,n}; # comments. The start rule is `root`. A rule ends
 * where the next `name ::=` begins, so line breaks may appear anywhere inside a rule.
 *
 * Lark: `name: alternatives` (a leading ? or ! is ignored), "literals", /regex/ (ECMAScript
 * subset, no flags), [optional], ( groups ), * + ?, `~ n` and `~ n..m`, terminal and rule
 * names, and `%import common.X` for WS, WS_INLINE, NUMBER, SIGNED_NUMBER, INT, SIGNED_INT,
 * DIGIT, LETTER, WORD, CNAME, ESCAPED_STRING, NEWLINE. The start rule is `start`. Not
 * supported (an error naming it): %declare, %override, templates, literal flags.
 * `%ignore X` (X a terminal name, "literal" or /regex/; several allowed) lets X repeat between
 * any two terminals of the rules (lowercase names) and around the whole text, as Lark's lexer
 * drops it: every terminal used in a rule is followed by the ignore rule (IGN*), and the start
 * by one more. Inside terminals (uppercase names) nothing is ignored. */
#include <stdlib.h>
#include <string.h>

#include "constrain/cst_internal.h"

int32_t cst_regex_expr(cst_builder *b, const char *pat, size_t len, int json_string, int search);

typedef struct gname {
  const char *s;
  size_t n;
  int32_t rule;
  int defined;
} gname;

typedef struct gp {
  cst_builder *b;
  const char *start, *p, *end;
  int lark;
  gname *names;
  int32_t n_names, cap_names;
  int depth;
  int32_t ign;        /* Lark: the ignore rule (IGN*), -1 without %ignore */
  int in_rule;        /* Lark: inside a rule (lowercase name), where terminals take IGN after */
  int32_t ign_x[16];  /* the %ignore terminals */
  int32_t n_ign;
} gp;

static int is_name_ch(char c, int lark) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || (!lark && c == '-');
}

static void skip_ws(gp *g) {
  while (g->p < g->end) {
    char c = *g->p;
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r') g->p++;
    else if (c == '#' || (g->lark && c == '/' && g->p + 1 < g->end && g->p[1] == '/')) {
      while (g->p < g->end && *g->p != '\n') g->p++;
    } else break;
  }
}

static int gfail(gp *g, const char *what) {
  return cst_fail(g->b, QV_EINVAL, "grammar: %s at offset %d", what, (int)(g->p - g->start));
}

static int32_t name_rule(gp *g, const char *s, size_t n, int define) {
  for (int32_t i = 0; i < g->n_names; i++)
    if (g->names[i].n == n && !memcmp(g->names[i].s, s, n)) {
      if (define && g->names[i].defined) return gfail(g, "rule defined twice");
      if (define) g->names[i].defined = 1;
      return g->names[i].rule;
    }
  if (g->n_names >= 4096) return cst_fail(g->b, QV_ELIMIT, "grammar with more than 4096 rules");
  if (g->n_names == g->cap_names) {
    int32_t cap = g->cap_names ? g->cap_names * 2 : 32;
    gname *a = realloc(g->names, (size_t)cap * sizeof *a);
    if (!a) return cst_fail(g->b, QV_ENOMEM, "out of memory");
    g->names = a;
    g->cap_names = cap;
  }
  int32_t r = cst_rule_new(g->b);
  if (r < 0) return -1;
  g->names[g->n_names++] = (gname){s, n, r, define};
  return r;
}

static int hexv(char c) {
  return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

static uint32_t utf8_next(gp *g) {
  const unsigned char *s = (const unsigned char *)g->p;
  uint32_t c = s[0];
  int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
  if (g->p + len > g->end) len = 1;
  if (len > 1) {
    c &= (uint32_t)(0x7F >> len);
    for (int i = 1; i < len; i++) c = (c << 6) | (s[i] & 0x3Fu);
  }
  g->p += len;
  return c;
}

/* One (possibly escaped) character of a literal or class; -1 on error. */
static int64_t gchar(gp *g) {
  if (g->p >= g->end) return gfail(g, "unexpected end"), -1;
  if (*g->p != '\\') return utf8_next(g);
  g->p++;
  if (g->p >= g->end) return gfail(g, "unexpected end"), -1;
  char c = *g->p++;
  int nhex = c == 'x' ? 2 : c == 'u' ? 4 : c == 'U' ? 8 : 0;
  if (nhex) {
    uint32_t v = 0;
    for (int i = 0; i < nhex; i++) {
      if (g->p >= g->end || hexv(*g->p) < 0) return gfail(g, "bad hex escape"), -1;
      v = v * 16 + (uint32_t)hexv(*g->p++);
    }
    if (v > 0x10FFFF) return gfail(g, "escape beyond U+10FFFF"), -1;
    return v;
  }
  switch (c) {
    case 'n': return '\n';
    case 't': return '\t';
    case 'r': return '\r';
    case '0': return 0;
    default: return (unsigned char)c;
  }
}

static int put_utf8(uint32_t cp, char *o) {
  if (cp < 0x80) { o[0] = (char)cp; return 1; }
  if (cp < 0x800) { o[0] = (char)(0xC0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
  if (cp < 0x10000) {
    o[0] = (char)(0xE0 | (cp >> 12)); o[1] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
  }
  o[0] = (char)(0xF0 | (cp >> 18)); o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
  o[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[3] = (char)(0x80 | (cp & 0x3F));
  return 4;
}

static int32_t literal(gp *g) {
  g->p++; /* opening quote */
  char *buf = malloc((size_t)(g->end - g->p) * 4 + 4);
  if (!buf) return cst_fail(g->b, QV_ENOMEM, "out of memory");
  size_t n = 0;
  while (g->p < g->end && *g->p != '"') {
    int64_t c = gchar(g);
    if (c < 0) {
      free(buf);
      return -1;
    }
    n += (size_t)put_utf8((uint32_t)c, buf + n);
  }
  if (g->p >= g->end) {
    free(buf);
    return gfail(g, "unterminated string");
  }
  g->p++;
  if (g->lark && g->p < g->end && *g->p == 'i') {
    free(buf);
    return cst_fail(g->b, QV_EUNSUPPORTED, "grammar: case-insensitive literals (\"...\"i) are not supported");
  }
  int32_t e = ex_lit(g->b, buf, n);
  free(buf);
  return e;
}

static int32_t char_class(gp *g) {
  g->p++; /* [ */
  int neg = 0;
  if (g->p < g->end && *g->p == '^') neg = 1, g->p++;
  uint32_t *r = NULL;
  int32_t n = 0, cap = 0;
  while (g->p < g->end && *g->p != ']') {
    int64_t lo = gchar(g), hi;
    if (lo < 0) break;
    hi = lo;
    if (g->p + 1 < g->end && *g->p == '-' && g->p[1] != ']') {
      g->p++;
      hi = gchar(g);
      if (hi < 0) break;
      if (hi < lo) {
        gfail(g, "class range out of order");
        break;
      }
    }
    if (n == cap) {
      cap = cap ? cap * 2 : 8;
      uint32_t *q = realloc(r, (size_t)cap * 2 * sizeof *q);
      if (!q || cap > 100000) {
        free(q ? q : r);
        return cst_fail(g->b, QV_ELIMIT, "character class too large");
      }
      r = q;
    }
    r[2 * n] = (uint32_t)lo;
    r[2 * n + 1] = (uint32_t)hi;
    n++;
  }
  if (g->b->failed) {
    free(r);
    return -1;
  }
  if (g->p >= g->end) {
    free(r);
    return gfail(g, "unterminated character class");
  }
  g->p++;
  int32_t e = neg ? ex_cps_not(g->b, r, n) : ex_cps(g->b, r, n);
  free(r);
  return e;
}

static int32_t alternatives(gp *g);

/* At a rule definition: `name ::=` (GBNF) or `name:` / `?name:` (Lark). */
static int at_definition(gp *g) {
  const char *q = g->p;
  if (g->lark && q < g->end && (*q == '?' || *q == '!')) q++;
  const char *s = q;
  while (q < g->end && is_name_ch(*q, g->lark)) q++;
  if (q == s) return 0;
  while (q < g->end && (*q == ' ' || *q == '\t')) q++;
  if (g->lark) return q < g->end && *q == ':';
  return g->end - q >= 3 && !memcmp(q, "::=", 3);
}

static int32_t common_terminal(gp *g, const char *s, size_t n);

static int32_t atom(gp *g, int *terminal);

/* An atom; in a Lark rule with %ignore, a terminal is followed by the ignore rule. */
static int32_t primary(gp *g) {
  int terminal = 0;
  int32_t e = atom(g, &terminal);
  if (e < 0 || g->ign < 0 || !g->in_rule || !terminal) return e;
  return ex_seq2(g->b, e, ex_ref(g->b, g->ign));
}

/* 1 for a Lark terminal name (uppercase, leading underscores aside). */
static int terminal_name(const char *s, size_t n) {
  size_t i = 0;
  while (i < n && s[i] == '_') i++;
  return i < n && s[i] >= 'A' && s[i] <= 'Z';
}

static int32_t atom(gp *g, int *terminal) {
  cst_builder *b = g->b;
  *terminal = 1;
  char c = *g->p;
  if (c == '"') return literal(g);
  if (c == '[' && !g->lark) return char_class(g);
  if (c == '.' && !g->lark) {
    g->p++;
    return ex_cps(b, (const uint32_t[]){0, 0x10FFFF}, 1);
  }
  if (c == '/' && g->lark) {
    const char *s = ++g->p;
    while (g->p < g->end && *g->p != '/') {
      if (*g->p == '\\' && g->p + 1 < g->end) g->p++;
      g->p++;
    }
    if (g->p >= g->end) return gfail(g, "unterminated /regex/");
    const char *e = g->p++;
    if (g->p < g->end && is_name_ch(*g->p, 1) && *g->p >= 'a' && *g->p <= 'z')
      return cst_fail(b, QV_EUNSUPPORTED, "grammar: regex flags are not supported");
    return cst_regex_expr(b, s, (size_t)(e - s), 0, 0);
  }
  if (c == '(' || (c == '[' && g->lark)) {
    *terminal = 0; /* its terminals carry their own IGN */
    char close = c == '(' ? ')' : ']';
    g->p++;
    if (++g->depth > QV_CST_MAX_DEPTH) return cst_fail(b, QV_ELIMIT, "grammar nested deeper than %d", QV_CST_MAX_DEPTH);
    int32_t e = alternatives(g);
    g->depth--;
    skip_ws(g);
    if (e < 0) return -1;
    if (g->p >= g->end || *g->p != close) return gfail(g, close == ')' ? "missing ')'" : "missing ']'");
    g->p++;
    return close == ']' ? ex_rep(b, e, 0, 1) : e;
  }
  if (is_name_ch(c, g->lark)) {
    const char *s = g->p;
    while (g->p < g->end && is_name_ch(*g->p, g->lark)) g->p++;
    *terminal = terminal_name(s, (size_t)(g->p - s));
    int32_t r = name_rule(g, s, (size_t)(g->p - s), 0);
    return r < 0 ? -1 : ex_ref(b, r);
  }
  return gfail(g, "unexpected character");
}

static int read_int(gp *g, int32_t *v) {
  int64_t n = 0;
  int d = 0;
  while (g->p < g->end && *g->p >= '0' && *g->p <= '9') {
    n = n * 10 + (*g->p++ - '0');
    if (n > 1000000) n = 1000000;
    d++;
  }
  *v = (int32_t)n;
  return d;
}

static int32_t postfix(gp *g) {
  int32_t e = primary(g);
  while (e >= 0 && g->p < g->end) {
    const char *save = g->p;
    if (g->lark) skip_ws(g);
    if (g->p >= g->end) break;
    char c = *g->p;
    int32_t mn, mx;
    if (c == '*') mn = 0, mx = -1, g->p++;
    else if (c == '+') mn = 1, mx = -1, g->p++;
    else if (c == '?') mn = 0, mx = 1, g->p++;
    else if (c == '{' && !g->lark) {
      g->p++;
      skip_ws(g);
      if (!read_int(g, &mn)) return gfail(g, "bad {m,n}");
      mx = mn;
      skip_ws(g);
      if (g->p < g->end && *g->p == ',') {
        g->p++;
        skip_ws(g);
        if (!read_int(g, &mx)) mx = -1;
      }
      skip_ws(g);
      if (g->p >= g->end || *g->p != '}') return gfail(g, "bad {m,n}");
      g->p++;
    } else if (c == '~' && g->lark) {
      g->p++;
      skip_ws(g);
      if (!read_int(g, &mn)) return gfail(g, "bad ~ n");
      mx = mn;
      if (g->end - g->p >= 2 && g->p[0] == '.' && g->p[1] == '.') {
        g->p += 2;
        if (!read_int(g, &mx)) return gfail(g, "bad ~ n..m");
      }
    } else {
      g->p = save;
      break;
    }
    e = ex_rep(g->b, e, mn, mx);
  }
  return e;
}

/* Elements collect into one flat sequence (nesting a pair per element would make flattening
 * recurse once per element of a long rule). */
static int32_t sequence(gp *g) {
  int32_t *xs = NULL, n = 0, cap = 0, out = -1;
  for (;;) {
    skip_ws(g);
    if (g->p >= g->end || *g->p == '|' || *g->p == ')' || *g->p == ']' || *g->p == '%' || at_definition(g)) break;
    if (cst_check_time(g->b)) goto done;
    int32_t e = postfix(g);
    if (e < 0) goto done;
    if (n == cap) {
      cap = cap ? cap * 2 : 16;
      int32_t *a = realloc(xs, (size_t)cap * sizeof *a);
      if (!a) {
        cst_fail(g->b, QV_ENOMEM, "out of memory");
        goto done;
      }
      xs = a;
    }
    xs[n++] = e;
  }
  out = ex_seq(g->b, xs, n);
done:
  free(xs);
  return out;
}

static int32_t alternatives(gp *g) {
  int32_t xs[512];
  int32_t n = 0;
  xs[n++] = sequence(g);
  skip_ws(g);
  while (g->p < g->end && *g->p == '|') {
    g->p++;
    if (n == 512) return cst_fail(g->b, QV_ELIMIT, "more than 512 alternatives in one rule");
    xs[n++] = sequence(g);
    skip_ws(g);
  }
  for (int32_t i = 0; i < n; i++)
    if (xs[i] < 0) return -1;
  return ex_alt(g->b, xs, n);
}

/* Lark's common terminals, as regexes. */
static int32_t common_terminal(gp *g, const char *s, size_t n) {
  static const struct { const char *name, *re; } tab[] = {
      {"WS", "[ \\t\\f\\r\\n]+"}, {"WS_INLINE", "[ \\t]+"}, {"DIGIT", "[0-9]"}, {"HEXDIGIT", "[0-9a-fA-F]"},
      {"INT", "[0-9]+"}, {"SIGNED_INT", "[+-]?[0-9]+"}, {"DECIMAL", "[0-9]+\\.[0-9]*|\\.[0-9]+"},
      {"NUMBER", "[0-9]+(\\.[0-9]*)?([eE][+-]?[0-9]+)?"},
      {"SIGNED_NUMBER", "[+-]?[0-9]+(\\.[0-9]*)?([eE][+-]?[0-9]+)?"},
      {"FLOAT", "[0-9]+\\.[0-9]*([eE][+-]?[0-9]+)?"}, {"SIGNED_FLOAT", "[+-]?[0-9]+\\.[0-9]*([eE][+-]?[0-9]+)?"},
      {"LETTER", "[a-zA-Z]"}, {"LCASE_LETTER", "[a-z]"}, {"UCASE_LETTER", "[A-Z]"}, {"WORD", "[a-zA-Z]+"},
      {"CNAME", "[a-zA-Z_][a-zA-Z0-9_]*"}, {"NEWLINE", "(\\r?\\n)+"}, {"CR", "\\r"}, {"LF", "\\n"},
      {"ESCAPED_STRING", "\"([^\"\\\\\\n]|\\\\[\"\\\\/bfnrtu])*\""}};
  for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++)
    if (strlen(tab[i].name) == n && !memcmp(tab[i].name, s, n)) return cst_regex_expr(g->b, tab[i].re, strlen(tab[i].re), 0, 0);
  return cst_fail(g->b, QV_EUNSUPPORTED, "grammar: %%import common.%.*s is not supported", (int)n, s);
}

static int directive(gp *g) {
  const char *s = g->p;
  if (g->end - s > 7 && !memcmp(s, "%ignore", 7) && (s[7] == ' ' || s[7] == '\t')) {
    g->p += 7;
    skip_ws(g);
    if (g->n_ign == (int32_t)(sizeof g->ign_x / sizeof g->ign_x[0]))
      return cst_fail(g->b, QV_ELIMIT, "grammar: more than 16 %%ignore directives");
    int in_rule = g->in_rule;
    g->in_rule = 0;
    int32_t e = g->p < g->end ? primary(g) : gfail(g, "%ignore needs a terminal");
    g->in_rule = in_rule;
    if (e < 0) return -1;
    g->ign_x[g->n_ign++] = e;
    return 0;
  }
  while (g->p < g->end && *g->p != '\n') g->p++;
  size_t n = (size_t)(g->p - s);
  const char *pre = "%import common.";
  size_t pn = strlen(pre);
  if (n > pn && !memcmp(s, pre, pn)) {
    const char *nm = s + pn, *e = nm;
    while (e < s + n && is_name_ch(*e, 1)) e++;
    int32_t r = name_rule(g, nm, (size_t)(e - nm), 1);
    if (r < 0) return -1;
    return cst_rule_set(g->b, r, common_terminal(g, nm, (size_t)(e - nm)));
  }
  const char *sp = memchr(s, ' ', n);
  return cst_fail(g->b, QV_EUNSUPPORTED, "grammar: directive '%.*s' is not supported", (int)(sp ? (size_t)(sp - s) : n), s);
}

static int parse_grammar(cst_builder *b, const char *text, size_t len, int lark, int32_t *root) {
  gp g = {.b = b, .start = text, .p = text, .end = text + len, .lark = lark, .ign = -1};
  int rc = 0;
  /* %ignore may come after the rules that it applies to: look for it first. */
  for (const char *q = text; lark && q + 7 <= text + len; q++)
    if ((q == text || q[-1] == '\n') && !memcmp(q, "%ignore", 7)) {
      g.ign = cst_rule_new(b);
      break;
    }
  for (;;) {
    skip_ws(&g);
    if (g.p >= g.end || b->failed) break;
    if (lark && *g.p == '%') {
      if (directive(&g)) break;
      continue;
    }
    if (!at_definition(&g)) {
      gfail(&g, lark ? "expected 'name:'" : "expected 'name ::='");
      break;
    }
    if (lark && (*g.p == '?' || *g.p == '!')) g.p++;
    const char *s = g.p;
    while (g.p < g.end && is_name_ch(*g.p, lark)) g.p++;
    int32_t r = name_rule(&g, s, (size_t)(g.p - s), 1);
    if (r < 0) break;
    g.in_rule = lark && !terminal_name(s, (size_t)(g.p - s));
    skip_ws(&g);
    g.p += lark ? 1 : 3;
    if (cst_rule_set(b, r, alternatives(&g))) break;
  }
  const char *start = lark ? "start" : "root";
  int32_t root_rule = -1;
  for (int32_t i = 0; !b->failed && i < g.n_names; i++) {
    if (!g.names[i].defined) {
      cst_fail(b, QV_EINVAL, "grammar: rule '%.*s' is used but not defined", (int)g.names[i].n, g.names[i].s);
      break;
    }
    if (g.names[i].n == strlen(start) && !memcmp(g.names[i].s, start, g.names[i].n)) root_rule = g.names[i].rule;
  }
  if (!b->failed && root_rule < 0) cst_fail(b, QV_EINVAL, "grammar: no '%s' rule", start);
  if (!b->failed && g.ign >= 0) { /* IGN = (x1 | x2 | ...)*; the text may start with it */
    int32_t any = g.n_ign ? ex_alt(b, g.ign_x, g.n_ign) : ex_empty(b);
    cst_rule_set(b, g.ign, g.n_ign ? ex_rep(b, any, 0, -1) : any);
  }
  if (!b->failed) *root = g.ign >= 0 ? ex_seq2(b, ex_ref(b, g.ign), ex_ref(b, root_rule)) : ex_ref(b, root_rule);
  free(g.names);
  rc = b->failed;
  return rc;
}

int cst_build_gbnf(cst_builder *b, const char *text, size_t len, int32_t *root) {
  return parse_grammar(b, text, len, 0, root);
}

int cst_build_lark(cst_builder *b, const char *text, size_t len, int32_t *root) {
  return parse_grammar(b, text, len, 1, root);
}
