/* Jinja lexer: source text -> tokens, applying jinja2's whitespace rules as Hugging Face
 * configures them (trim_blocks and lstrip_blocks on, keep_trailing_newline off).
 *
 * The rules mirror jinja2's regex lexer so that renders match byte for byte:
 *   - `{%-` / `{{-` / `{#-` strip all whitespace before the tag; `-%}` / `-}}` / `-#}` after it.
 *   - trim_blocks: one newline right after `%}` or `#}` is dropped (not after `}}`, and not after
 *     `+%}`).
 *   - lstrip_blocks: spaces/tabs between the start of a line and `{%` or `{#` are dropped (not
 *     before `{{`, and not for `{%+`).
 *   - `{% raw %}...{% endraw %}` is emitted as text.
 *   - The caller has already normalised newlines to "\n" and removed one trailing newline.
 * Inside tags, `}}` closes the tag only outside brackets, so dict literals work. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat/jinja.h"

typedef struct lexer {
  jarena *a;
  const char *s;
  size_t n, pos;
  jtok *toks; /* [n_toks] malloc'd while lexing, copied into the arena at the end */
  int n_toks, cap;
  qv_error *err;
  bool line_starting;
  /* incremental line/column tracking: position lc_pos is at line lc_line, column lc_col */
  size_t lc_pos;
  int lc_line, lc_col;
} lexer;

static void linecol(lexer *L, size_t pos, int *line, int *col) {
  if (pos < L->lc_pos) { /* rare (errors point back at a tag start): rescan */
    L->lc_pos = 0;
    L->lc_line = 1;
    L->lc_col = 1;
  }
  for (; L->lc_pos < pos && L->lc_pos < L->n; L->lc_pos++) {
    unsigned char c = (unsigned char)L->s[L->lc_pos];
    if (c == '\n') {
      L->lc_line++;
      L->lc_col = 1;
    } else if ((c & 0xC0) != 0x80) {
      L->lc_col++; /* columns count code points */
    }
  }
  *line = L->lc_line;
  *col = L->lc_col;
}

static int lex_error(lexer *L, size_t pos, const char *msg) {
  int line, col;
  linecol(L, pos, &line, &col);
  return qv_error_set(L->err, QV_EFORMAT, "template syntax error at line %d, column %d: %s", line,
                      col, msg);
}

static jtok *push(lexer *L, jtok_kind kind, size_t pos) {
  if (L->n_toks == L->cap) {
    int cap = L->cap ? L->cap * 2 : 256;
    jtok *t = realloc(L->toks, (size_t)cap * sizeof(*t));
    if (!t) return NULL;
    L->toks = t;
    L->cap = cap;
  }
  jtok *t = &L->toks[L->n_toks++];
  memset(t, 0, sizeof(*t));
  t->kind = kind;
  linecol(L, pos, &t->line, &t->col);
  return t;
}

static bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
static bool is_digit(char c) { return c >= '0' && c <= '9'; }
static bool is_name_start(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}
static bool is_name_char(char c) { return is_name_start(c) || is_digit(c); }

static bool starts(const lexer *L, size_t pos, const char *lit) {
  size_t k = strlen(lit);
  return pos + k <= L->n && memcmp(L->s + pos, lit, k) == 0;
}

static int emit_text(lexer *L, size_t from, size_t to) {
  if (to <= from) return 0;
  jtok *t = push(L, JT_TEXT, from);
  if (!t) return QV_ENOMEM;
  t->s = jarena_strndup(L->a, L->s + from, to - from);
  if (!t->s) return QV_ENOMEM;
  t->n = to - from;
  return 0;
}

/* After a tag's closing delimiter at pos (just past it): applies `-` (strip all whitespace) or
 * trim_blocks (one newline, when trim is set) and records line_starting. */
static void after_tag_end(lexer *L, char sign, bool trim) {
  size_t start = L->pos;
  if (sign == '-') {
    while (L->pos < L->n && is_ws(L->s[L->pos])) L->pos++;
  } else if (sign != '+' && trim && L->pos < L->n && L->s[L->pos] == '\n') {
    L->pos++;
  }
  L->line_starting = L->pos > start && L->s[L->pos - 1] == '\n';
}

/* Appends the UTF-8 encoding of cp. */
static int put_utf8(jbuf *b, unsigned long cp) {
  char o[4];
  size_t k;
  if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) cp = 0xFFFD;
  if (cp < 0x80) { o[0] = (char)cp; k = 1; }
  else if (cp < 0x800) { o[0] = (char)(0xC0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 0x3F)); k = 2; }
  else if (cp < 0x10000) {
    o[0] = (char)(0xE0 | (cp >> 12)); o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[2] = (char)(0x80 | (cp & 0x3F)); k = 3;
  } else {
    o[0] = (char)(0xF0 | (cp >> 18)); o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[3] = (char)(0x80 | (cp & 0x3F)); k = 4;
  }
  return jbuf_put(b, o, k);
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* A quoted string starting at L->pos; unescapes as Python's unicode-escape does. */
static int lex_string(lexer *L) {
  size_t start = L->pos;
  char q = L->s[L->pos++];
  jbuf b = {0};
  int rc = 0;
  for (;;) {
    if (L->pos >= L->n) {
      jbuf_free(&b);
      return lex_error(L, start, "unterminated string literal");
    }
    char c = L->s[L->pos];
    if (c == q) { L->pos++; break; }
    if (c != '\\') {
      rc = jbuf_putc(&b, c);
      L->pos++;
    } else {
      if (L->pos + 1 >= L->n) {
        jbuf_free(&b);
        return lex_error(L, start, "unterminated string literal");
      }
      char e = L->s[L->pos + 1];
      L->pos += 2;
      int nhex = 0;
      switch (e) {
        case 'n': rc = jbuf_putc(&b, '\n'); break;
        case 't': rc = jbuf_putc(&b, '\t'); break;
        case 'r': rc = jbuf_putc(&b, '\r'); break;
        case 'b': rc = jbuf_putc(&b, '\b'); break;
        case 'f': rc = jbuf_putc(&b, '\f'); break;
        case 'v': rc = jbuf_putc(&b, '\v'); break;
        case 'a': rc = jbuf_putc(&b, '\a'); break;
        case '\\': case '\'': case '"': rc = jbuf_putc(&b, e); break;
        case '\n': break;
        case 'x': nhex = 2; break;
        case 'u': nhex = 4; break;
        case 'U': nhex = 8; break;
        default:
          if (e >= '0' && e <= '7') {
            unsigned long v = (unsigned long)(e - '0');
            for (int k = 0; k < 2 && L->pos < L->n && L->s[L->pos] >= '0' && L->s[L->pos] <= '7'; k++)
              v = v * 8 + (unsigned long)(L->s[L->pos++] - '0');
            rc = put_utf8(&b, v);
          } else {
            rc = jbuf_putc(&b, '\\');
            if (rc == 0) rc = jbuf_putc(&b, e);
          }
      }
      if (nhex) {
        unsigned long v = 0;
        for (int k = 0; k < nhex; k++) {
          int h = L->pos < L->n ? hexval(L->s[L->pos]) : -1;
          if (h < 0) {
            jbuf_free(&b);
            return lex_error(L, start, "truncated \\x/\\u escape in string literal");
          }
          v = v * 16 + (unsigned long)h;
          L->pos++;
        }
        rc = put_utf8(&b, v);
      }
    }
    if (rc) {
      jbuf_free(&b);
      return rc;
    }
  }
  jtok *t = push(L, JT_STRING, start);
  char *s = t ? jarena_strndup(L->a, b.p ? b.p : "", b.n) : NULL;
  size_t len = b.n;
  jbuf_free(&b);
  if (!s) return QV_ENOMEM;
  t->s = s;
  t->n = len;
  return 0;
}

static int lex_number(lexer *L) {
  size_t start = L->pos;
  char buf[128];
  size_t k = 0;
  bool is_float = false;
  while (L->pos < L->n && (is_digit(L->s[L->pos]) || L->s[L->pos] == '_')) {
    if (L->s[L->pos] != '_' && k < sizeof buf - 1) buf[k++] = L->s[L->pos];
    L->pos++;
  }
  bool after_dot = start > 0 && L->s[start - 1] == '.';
  if (!after_dot && L->pos + 1 < L->n && L->s[L->pos] == '.' && is_digit(L->s[L->pos + 1])) {
    is_float = true;
    if (k < sizeof buf - 1) buf[k++] = '.';
    L->pos++;
    while (L->pos < L->n && (is_digit(L->s[L->pos]) || L->s[L->pos] == '_')) {
      if (L->s[L->pos] != '_' && k < sizeof buf - 1) buf[k++] = L->s[L->pos];
      L->pos++;
    }
  }
  if (!after_dot && L->pos < L->n && (L->s[L->pos] == 'e' || L->s[L->pos] == 'E')) {
    size_t p = L->pos + 1;
    if (p < L->n && (L->s[p] == '+' || L->s[p] == '-')) p++;
    if (p < L->n && is_digit(L->s[p])) {
      is_float = true;
      while (L->pos < p && k < sizeof buf - 1) buf[k++] = L->s[L->pos++];
      while (L->pos < L->n && is_digit(L->s[L->pos]) && k < sizeof buf - 1) buf[k++] = L->s[L->pos++];
    }
  }
  buf[k] = 0;
  jtok *t = push(L, is_float ? JT_FLOAT : JT_INT, start);
  if (!t) return QV_ENOMEM;
  if (is_float) {
    t->f = strtod(buf, NULL);
  } else {
    if (k > 18) return lex_error(L, start, "integer literal too large");
    t->i = strtoll(buf, NULL, 10);
  }
  return 0;
}

static const char *const OPS[] = {"//", "**", "==", "!=", ">=", "<=", "+", "-", "/", "*", "%",
                                   "~", "[", "]", "(", ")", "{", "}", "<", ">", "=", ".", ":",
                                   "|", ",", ";"};

/* Tokens inside {{ }} or {% %} until the closing delimiter. */
static int lex_tag(lexer *L, bool is_block, size_t tag_pos) {
  int depth = 0;
  for (;;) {
    while (L->pos < L->n && is_ws(L->s[L->pos])) L->pos++;
    if (L->pos >= L->n)
      return lex_error(L, tag_pos, is_block ? "unexpected end of template, expected '%}'"
                                            : "unexpected end of template, expected '}}'");
    if (depth == 0) {
      char sign = 0;
      size_t p = L->pos;
      if (L->s[p] == '-' || (is_block && L->s[p] == '+')) sign = L->s[p++];
      if (starts(L, p, is_block ? "%}" : "}}")) {
        jtok *t = push(L, is_block ? JT_BLOCK_END : JT_VAR_END, L->pos);
        if (!t) return QV_ENOMEM;
        L->pos = p + 2;
        after_tag_end(L, sign, is_block);
        return 0;
      }
    }
    char c = L->s[L->pos];
    int rc;
    if (c == '\'' || c == '"') {
      rc = lex_string(L);
    } else if (is_digit(c)) {
      rc = lex_number(L);
    } else if (is_name_start(c)) {
      size_t start = L->pos;
      while (L->pos < L->n && is_name_char(L->s[L->pos])) L->pos++;
      jtok *t = push(L, JT_NAME, start);
      if (!t) return QV_ENOMEM;
      t->s = jarena_strndup(L->a, L->s + start, L->pos - start);
      t->n = L->pos - start;
      rc = t->s ? 0 : QV_ENOMEM;
    } else {
      const char *op = NULL;
      for (size_t k = 0; k < sizeof OPS / sizeof OPS[0]; k++)
        if (starts(L, L->pos, OPS[k])) { op = OPS[k]; break; }
      if (!op) {
        char msg[64];
        snprintf(msg, sizeof msg, "unexpected character '%c'", (c >= 32 && c < 127) ? c : '?');
        return lex_error(L, L->pos, msg);
      }
      if (op[0] == '(' || op[0] == '[' || op[0] == '{') depth++;
      if ((op[0] == ')' || op[0] == ']' || op[0] == '}') && op[1] == 0) {
        if (depth == 0) return lex_error(L, L->pos, "unexpected closing bracket");
        depth--;
      }
      jtok *t = push(L, JT_OP, L->pos);
      if (!t) return QV_ENOMEM;
      t->s = op;
      t->n = strlen(op);
      L->pos += t->n;
      rc = 0;
    }
    if (rc) return rc;
  }
}

/* At "{%" (pos), is this `{% raw %}`? Sets *end to just past its "%}" and *sign to its end sign. */
static bool is_raw_begin(lexer *L, size_t pos, size_t *end, char *sign) {
  size_t p = pos + 2;
  if (p < L->n && (L->s[p] == '-' || L->s[p] == '+')) p++;
  while (p < L->n && is_ws(L->s[p])) p++;
  if (!starts(L, p, "raw")) return false;
  p += 3;
  if (p < L->n && is_name_char(L->s[p])) return false;
  while (p < L->n && is_ws(L->s[p])) p++;
  *sign = 0;
  if (starts(L, p, "-%}")) { *sign = '-'; p++; }
  else if (!starts(L, p, "%}")) return false;
  *end = p + 2;
  return true;
}

static int lex_raw(lexer *L, size_t tag_pos) {
  size_t body = L->pos;
  for (size_t p = body; p + 1 < L->n; p++) {
    if (L->s[p] != '{' || L->s[p + 1] != '%') continue;
    size_t q = p + 2;
    char bsign = 0;
    if (q < L->n && (L->s[q] == '-' || L->s[q] == '+')) bsign = L->s[q++];
    while (q < L->n && is_ws(L->s[q])) q++;
    if (!starts(L, q, "endraw")) continue;
    q += 6;
    while (q < L->n && is_ws(L->s[q])) q++;
    char esign = 0;
    if (q < L->n && (L->s[q] == '-' || L->s[q] == '+')) esign = L->s[q++];
    if (!starts(L, q, "%}")) continue;
    size_t text_end = p;
    if (bsign == '-')
      while (text_end > body && is_ws(L->s[text_end - 1])) text_end--;
    int rc = emit_text(L, body, text_end);
    if (rc) return rc;
    L->pos = q + 2;
    after_tag_end(L, esign, true);
    return 0;
  }
  return lex_error(L, tag_pos, "missing {% endraw %}");
}

int jinja_lex(jarena *a, const char *src, size_t n, jtok **toks, int *n_toks, qv_error *err) {
  lexer L = {.a = a, .s = src, .n = n, .err = err, .line_starting = true, .lc_line = 1, .lc_col = 1};
  int rc = 0;
  while (L.pos < L.n && rc == 0) {
    /* next tag start */
    size_t idx = L.pos;
    while (idx + 1 < L.n && !(L.s[idx] == '{' && (L.s[idx + 1] == '{' || L.s[idx + 1] == '%' ||
                                                  L.s[idx + 1] == '#')))
      idx++;
    if (idx + 1 >= L.n) {
      rc = emit_text(&L, L.pos, L.n);
      L.pos = L.n;
      break;
    }
    char kind = L.s[idx + 1];
    char sign = (idx + 2 < L.n && (L.s[idx + 2] == '-' || L.s[idx + 2] == '+')) ? L.s[idx + 2] : 0;
    if (kind == '{' && sign == '+') sign = 0; /* `{{+` is not a marker */
    size_t text_end = idx;
    if (sign == '-') {
      while (text_end > L.pos && is_ws(L.s[text_end - 1])) text_end--;
    } else if (sign != '+' && kind != '{') {
      size_t l_pos = idx;
      while (l_pos > L.pos && L.s[l_pos - 1] != '\n') l_pos--;
      bool has_nl = l_pos > L.pos;
      if (has_nl || L.line_starting) {
        bool only_blank = true;
        for (size_t p = l_pos; p < idx; p++)
          if (L.s[p] != ' ' && L.s[p] != '\t') { only_blank = false; break; }
        if (only_blank) text_end = l_pos;
      }
    }
    rc = emit_text(&L, L.pos, text_end);
    if (rc) break;
    if (kind == '#') {
      size_t body = idx + 2 + (sign ? 1 : 0);
      size_t q = body;
      while (q + 1 < L.n && !(L.s[q] == '#' && L.s[q + 1] == '}')) q++;
      if (q + 1 >= L.n) {
        rc = lex_error(&L, idx, "missing end of comment tag");
        break;
      }
      char esign = (q > body && (L.s[q - 1] == '-' || L.s[q - 1] == '+')) ? L.s[q - 1] : 0;
      L.pos = q + 2;
      after_tag_end(&L, esign, true);
      continue;
    }
    size_t raw_end;
    char raw_sign;
    if (kind == '%' && is_raw_begin(&L, idx, &raw_end, &raw_sign)) {
      L.pos = raw_end;
      if (raw_sign == '-')
        while (L.pos < L.n && is_ws(L.s[L.pos])) L.pos++;
      rc = lex_raw(&L, idx);
      continue;
    }
    jtok *t = push(&L, kind == '%' ? JT_BLOCK_BEGIN : JT_VAR_BEGIN, idx);
    if (!t) { rc = QV_ENOMEM; break; }
    L.pos = idx + 2 + (sign ? 1 : 0);
    rc = lex_tag(&L, kind == '%', idx);
  }
  if (rc == 0 && !push(&L, JT_EOF, L.n)) rc = QV_ENOMEM;
  if (rc == 0) {
    *toks = jarena_alloc(a, (size_t)L.n_toks * sizeof(jtok));
    if (!*toks) rc = QV_ENOMEM;
    else {
      memcpy(*toks, L.toks, (size_t)L.n_toks * sizeof(jtok));
      *n_toks = L.n_toks;
    }
  }
  if (rc == QV_ENOMEM) qv_error_set(err, rc, "out of memory while lexing template");
  free(L.toks);
  return rc;
}
