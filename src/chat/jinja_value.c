/* Jinja value model with Python semantics: arena allocation, lists and ordered dicts, truthiness,
 * equality and ordering, and the three ways a value becomes text (str(), repr(), json.dumps with
 * ensure_ascii=False), because templates print all three and the result must match CPython's
 * byte for byte (float repr, quote choice in repr, ", " / ": " separators in JSON). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <utf8proc.h>

#include "chat/jinja.h"
#include "core/util.h"

/* ---- arena ---------------------------------------------------------------------------------- */

struct jarena_chunk {
  jarena_chunk *next;
  size_t size, used;
  _Alignas(16) unsigned char data[];
};

void *jarena_alloc(jarena *a, size_t n) {
  n = (n + 15) & ~(size_t)15;
  if (n == 0) n = 16;
  if (a->cap_bytes && a->used_bytes + n > a->cap_bytes) return NULL;
  jarena_chunk *c = a->head;
  if (!c || c->size - c->used < n) {
    size_t size = n > 65536 ? n : 65536;
    c = malloc(sizeof(*c) + size);
    if (!c) return NULL;
    c->size = size;
    c->used = 0;
    c->next = a->head;
    a->head = c;
  }
  void *p = c->data + c->used;
  c->used += n;
  a->used_bytes += n;
  memset(p, 0, n);
  return p;
}

char *jarena_strndup(jarena *a, const char *s, size_t n) {
  char *p = jarena_alloc(a, n + 1);
  if (!p) return NULL;
  if (n) memcpy(p, s, n);
  p[n] = 0;
  return p;
}

void jarena_free(jarena *a) {
  jarena_chunk *c = a->head;
  while (c) {
    jarena_chunk *next = c->next;
    free(c);
    c = next;
  }
  a->head = NULL;
  a->used_bytes = 0;
}

/* ---- constructors and containers ------------------------------------------------------------ */

jv jv_undef(const char *name) { jv v = {.t = JV_UNDEF}; v.u.undef_name = name; return v; }
jv jv_none(void) { jv v = {.t = JV_NONE}; return v; }
jv jv_bool(bool b) { jv v = {.t = JV_BOOL}; v.u.b = b; return v; }
jv jv_int(int64_t i) { jv v = {.t = JV_INT}; v.u.i = i; return v; }
jv jv_float(double f) { jv v = {.t = JV_FLOAT}; v.u.f = f; return v; }
jv jv_str(const char *p, size_t n) { jv v = {.t = JV_STR}; v.u.s.p = p; v.u.s.n = n; return v; }
jv jv_cstr(const char *p) { return jv_str(p, strlen(p)); }

jlist *jlist_new(jarena *a, size_t cap) {
  jlist *l = jarena_alloc(a, sizeof(*l));
  if (!l) return NULL;
  if (cap) {
    l->v = jarena_alloc(a, cap * sizeof(jv));
    if (!l->v) return NULL;
    l->cap = cap;
  }
  return l;
}

int jlist_push(jarena *a, jlist *l, jv v) {
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 8;
    jv *nv = jarena_alloc(a, cap * sizeof(jv));
    if (!nv) return QV_ENOMEM;
    if (l->n) memcpy(nv, l->v, l->n * sizeof(jv));
    l->v = nv;
    l->cap = cap;
  }
  l->v[l->n++] = v;
  return 0;
}

jdict *jdict_new(jarena *a, size_t cap) {
  jdict *d = jarena_alloc(a, sizeof(*d));
  if (!d) return NULL;
  if (cap) {
    d->e = jarena_alloc(a, cap * sizeof(jdict_entry));
    if (!d->e) return NULL;
    d->cap = cap;
  }
  return d;
}

jv *jdict_get(const jdict *d, jv key) {
  for (size_t i = 0; i < d->n; i++)
    if (jv_equal(d->e[i].key, key)) return &d->e[i].val;
  return NULL;
}

jv *jdict_get_str(const jdict *d, const char *key, size_t n) {
  for (size_t i = 0; i < d->n; i++) {
    jv k = d->e[i].key;
    if (k.t == JV_STR && k.u.s.n == n && memcmp(k.u.s.p, key, n) == 0) return &d->e[i].val;
  }
  return NULL;
}

int jdict_set(jarena *a, jdict *d, jv key, jv val) {
  jv *slot = jdict_get(d, key);
  if (slot) {
    *slot = val;
    return 0;
  }
  return jdict_append(a, d, key, val);
}

int jdict_append(jarena *a, jdict *d, jv key, jv val) {
  if (d->n == d->cap) {
    size_t cap = d->cap ? d->cap * 2 : 4;
    jdict_entry *ne = jarena_alloc(a, cap * sizeof(*ne));
    if (!ne) return QV_ENOMEM;
    if (d->n) memcpy(ne, d->e, d->n * sizeof(*ne));
    d->e = ne;
    d->cap = cap;
  }
  d->e[d->n].key = key;
  d->e[d->n].val = val;
  d->n++;
  return 0;
}

/* ---- semantics ------------------------------------------------------------------------------ */

bool jv_truthy(jv v) {
  switch (v.t) {
    case JV_UNDEF: case JV_NONE: return false;
    case JV_BOOL: return v.u.b;
    case JV_INT: return v.u.i != 0;
    case JV_FLOAT: return v.u.f != 0.0;
    case JV_STR: return v.u.s.n != 0;
    case JV_LIST: return v.u.l->n != 0;
    case JV_DICT: return v.u.d->n != 0;
    default: return true;
  }
}

bool jv_is_number(jv v) { return v.t == JV_INT || v.t == JV_FLOAT || v.t == JV_BOOL; }

double jv_as_double(jv v) {
  if (v.t == JV_INT) return (double)v.u.i;
  if (v.t == JV_FLOAT) return v.u.f;
  if (v.t == JV_BOOL) return v.u.b ? 1.0 : 0.0;
  return 0.0;
}

static int64_t as_int(jv v) { return v.t == JV_BOOL ? (int64_t)v.u.b : v.u.i; }

/* Values nest at most this deep in comparisons and text forms; deeper ones (only a template
 * can build them, in a loop) compare unequal and fail to print, instead of exhausting the stack. */
#define MAX_VALUE_DEPTH 256

static bool equal_d(jv a, jv b, int depth) {
  if (depth > MAX_VALUE_DEPTH) return false;
  if (jv_is_number(a) && jv_is_number(b)) {
    if (a.t != JV_FLOAT && b.t != JV_FLOAT) return as_int(a) == as_int(b);
    return jv_as_double(a) == jv_as_double(b);
  }
  if (a.t != b.t) {
    return false;
  }
  switch (a.t) {
    case JV_UNDEF: case JV_NONE: return true;
    case JV_STR: return a.u.s.n == b.u.s.n && memcmp(a.u.s.p, b.u.s.p, a.u.s.n) == 0;
    case JV_LIST:
      if (a.u.l->n != b.u.l->n || a.u.l->is_tuple != b.u.l->is_tuple) return false;
      for (size_t i = 0; i < a.u.l->n; i++)
        if (!equal_d(a.u.l->v[i], b.u.l->v[i], depth + 1)) return false;
      return true;
    case JV_DICT: case JV_NS:
      if (a.u.d == b.u.d) return true;
      if (a.t == JV_NS || a.u.d->n != b.u.d->n) return false;
      for (size_t i = 0; i < a.u.d->n; i++) {
        jv *o = jdict_get(b.u.d, a.u.d->e[i].key);
        if (!o || !equal_d(a.u.d->e[i].val, *o, depth + 1)) return false;
      }
      return true;
    case JV_MACRO: return a.u.m == b.u.m;
    case JV_BUILTIN: return a.u.builtin == b.u.builtin;
    default: return false;
  }
}

bool jv_equal(jv a, jv b) { return equal_d(a, b, 0); }

static int compare_d(jv a, jv b, int *out, int depth) {
  if (depth > MAX_VALUE_DEPTH) return QV_ELIMIT;
  if (jv_is_number(a) && jv_is_number(b)) {
    if (a.t != JV_FLOAT && b.t != JV_FLOAT) {
      int64_t x = as_int(a), y = as_int(b);
      *out = x < y ? -1 : x > y;
    } else {
      double x = jv_as_double(a), y = jv_as_double(b);
      *out = x < y ? -1 : x > y;
    }
    return 0;
  }
  if (a.t == JV_STR && b.t == JV_STR) {
    size_t n = a.u.s.n < b.u.s.n ? a.u.s.n : b.u.s.n;
    int c = n ? memcmp(a.u.s.p, b.u.s.p, n) : 0;
    *out = c < 0 ? -1 : c > 0 ? 1 : (a.u.s.n < b.u.s.n ? -1 : a.u.s.n > b.u.s.n);
    return 0;
  }
  if (a.t == JV_LIST && b.t == JV_LIST) {
    size_t n = a.u.l->n < b.u.l->n ? a.u.l->n : b.u.l->n;
    for (size_t i = 0; i < n; i++) {
      if (equal_d(a.u.l->v[i], b.u.l->v[i], depth + 1)) continue;
      return compare_d(a.u.l->v[i], b.u.l->v[i], out, depth + 1);
    }
    *out = a.u.l->n < b.u.l->n ? -1 : a.u.l->n > b.u.l->n;
    return 0;
  }
  return QV_ETEMPLATE;
}

int jv_compare(jv a, jv b, int *out) { return compare_d(a, b, out, 0); }

const char *jv_type_name(jv v) {
  switch (v.t) {
    case JV_UNDEF: return "Undefined";
    case JV_NONE: return "NoneType";
    case JV_BOOL: return "bool";
    case JV_INT: return "int";
    case JV_FLOAT: return "float";
    case JV_STR: return "str";
    case JV_LIST: return v.u.l->is_tuple ? "tuple" : "list";
    case JV_DICT: return "dict";
    case JV_NS: return "Namespace";
    case JV_MACRO: return "Macro";
    case JV_LOOP: return "LoopContext";
    default: return "function";
  }
}

/* ---- buffers -------------------------------------------------------------------------------- */

int jbuf_put(jbuf *b, const char *s, size_t n) {
  if (b->max && b->n + n > b->max) return QV_ELIMIT;
  char *p = qv_grow(b->p, &b->cap, b->n + n + 1, 1, 256);
  if (!p) return QV_ENOMEM;
  b->p = p;
  if (n) memcpy(b->p + b->n, s, n);
  b->n += n;
  b->p[b->n] = 0;
  return 0;
}

int jbuf_putc(jbuf *b, char c) { return jbuf_put(b, &c, 1); }
int jbuf_puts(jbuf *b, const char *s) { return jbuf_put(b, s, strlen(s)); }

void jbuf_free(jbuf *b) {
  free(b->p);
  b->p = NULL;
  b->n = b->cap = 0;
}

/* ---- text forms ----------------------------------------------------------------------------- */

int jv_write_float(jbuf *b, double f) {
  if (isnan(f)) return jbuf_puts(b, "nan");
  if (isinf(f)) return jbuf_puts(b, f < 0 ? "-inf" : "inf");
  char tmp[64];
  int prec = 1;
  for (; prec <= 17; prec++) {
    snprintf(tmp, sizeof tmp, "%.*e", prec - 1, f);
    if (strtod(tmp, NULL) == f) break;
  }
  /* tmp is "[-]d.ddde[+-]XX": split into sign, digits and decimal exponent. */
  char digits[32];
  int nd = 0, neg = 0;
  const char *p = tmp;
  if (*p == '-') { neg = 1; p++; }
  for (; *p && *p != 'e'; p++)
    if (*p != '.') digits[nd++] = *p;
  int exp = *p == 'e' ? atoi(p + 1) : 0;
  while (nd > 1 && digits[nd - 1] == '0') nd--;
  char out[80];
  int o = 0;
  if (neg) out[o++] = '-';
  if (exp >= -4 && exp < 16) {
    if (exp < 0) {
      out[o++] = '0'; out[o++] = '.';
      for (int i = 0; i < -exp - 1; i++) out[o++] = '0';
      for (int i = 0; i < nd; i++) out[o++] = digits[i];
    } else {
      for (int i = 0; i <= exp; i++) out[o++] = i < nd ? digits[i] : '0';
      out[o++] = '.';
      if (nd > exp + 1)
        for (int i = exp + 1; i < nd; i++) out[o++] = digits[i];
      else
        out[o++] = '0';
    }
  } else {
    out[o++] = digits[0];
    if (nd > 1) {
      out[o++] = '.';
      for (int i = 1; i < nd; i++) out[o++] = digits[i];
    }
    o += snprintf(out + o, sizeof out - (size_t)o, "e%c%02d", exp < 0 ? '-' : '+', abs(exp));
  }
  return jbuf_put(b, out, (size_t)o);
}

static int write_int(jbuf *b, int64_t i) {
  char tmp[32];
  int n = snprintf(tmp, sizeof tmp, "%lld", (long long)i);
  return jbuf_put(b, tmp, (size_t)n);
}

/* Decodes the UTF-8 sequence at s[i] (n bytes left); invalid bytes decode as themselves. */
static uint32_t utf8_decode(const unsigned char *s, size_t n, size_t *len) {
  unsigned char c = s[0];
  int k = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
  if ((size_t)k > n) k = 1;
  uint32_t cp = k == 1 ? c : k == 2 ? (c & 0x1Fu) : k == 3 ? (c & 0x0Fu) : (c & 0x07u);
  for (int j = 1; j < k; j++) {
    if ((s[j] & 0xC0) != 0x80) {
      *len = 1;
      return c;
    }
    cp = (cp << 6) | (s[j] & 0x3Fu);
  }
  *len = (size_t)k;
  return cp;
}

/* repr of a str: single quotes unless the text has ' and no ", as CPython chooses. */
static int write_str_repr(jbuf *b, const char *s, size_t n) {
  bool has_sq = memchr(s, '\'', n) != NULL, has_dq = memchr(s, '"', n) != NULL;
  char q = (has_sq && !has_dq) ? '"' : '\'';
  int rc = jbuf_putc(b, q);
  for (size_t i = 0; i < n && rc == 0; i++) {
    unsigned char c = (unsigned char)s[i];
    char esc[8];
    if (c == (unsigned char)q || c == '\\') {
      esc[0] = '\\'; esc[1] = (char)c;
      rc = jbuf_put(b, esc, 2);
    } else if (c == '\n') rc = jbuf_put(b, "\\n", 2);
    else if (c == '\r') rc = jbuf_put(b, "\\r", 2);
    else if (c == '\t') rc = jbuf_put(b, "\\t", 2);
    else if (c < 0x20 || c == 0x7f) {
      snprintf(esc, sizeof esc, "\\x%02x", c);
      rc = jbuf_put(b, esc, 4);
    } else if (c >= 0x80) {
      /* CPython's repr escapes code points str.isprintable() rejects (controls, format
       * characters, separators other than the space, unassigned) */
      size_t len;
      uint32_t cp = utf8_decode((const unsigned char *)s + i, n - i, &len);
      utf8proc_category_t cat = utf8proc_category((utf8proc_int32_t)cp);
      bool printable = !(cat == UTF8PROC_CATEGORY_CC || cat == UTF8PROC_CATEGORY_CF ||
                         cat == UTF8PROC_CATEGORY_CS || cat == UTF8PROC_CATEGORY_CO ||
                         cat == UTF8PROC_CATEGORY_CN || cat == UTF8PROC_CATEGORY_ZL ||
                         cat == UTF8PROC_CATEGORY_ZP || cat == UTF8PROC_CATEGORY_ZS);
      if (printable || len == 1) {
        rc = jbuf_put(b, s + i, len);
      } else {
        char u[16];
        int k = cp < 0x100 ? snprintf(u, sizeof u, "\\x%02x", cp)
                : cp < 0x10000 ? snprintf(u, sizeof u, "\\u%04x", cp)
                : snprintf(u, sizeof u, "\\U%08x", cp);
        rc = jbuf_put(b, u, (size_t)k);
      }
      i += len - 1;
    } else rc = jbuf_putc(b, (char)c);
  }
  return rc ? rc : jbuf_putc(b, q);
}

static int write_repr_d(jbuf *b, jv v, int depth);

/* Python's str() of a list, tuple or dict: items in repr form. */
static int write_seq(jbuf *b, jv v, int depth) {
  if (depth > MAX_VALUE_DEPTH) return QV_ELIMIT;
  int rc = 0;
  if (v.t == JV_LIST) {
    rc = jbuf_putc(b, v.u.l->is_tuple ? '(' : '[');
    for (size_t i = 0; i < v.u.l->n && rc == 0; i++) {
      if (i) rc = jbuf_put(b, ", ", 2);
      if (rc == 0) rc = write_repr_d(b, v.u.l->v[i], depth + 1);
    }
    if (rc == 0 && v.u.l->is_tuple && v.u.l->n == 1) rc = jbuf_putc(b, ',');
    return rc ? rc : jbuf_putc(b, v.u.l->is_tuple ? ')' : ']');
  }
  rc = jbuf_putc(b, '{');
  for (size_t i = 0; i < v.u.d->n && rc == 0; i++) {
    if (i) rc = jbuf_put(b, ", ", 2);
    if (rc == 0) rc = write_repr_d(b, v.u.d->e[i].key, depth + 1);
    if (rc == 0) rc = jbuf_put(b, ": ", 2);
    if (rc == 0) rc = write_repr_d(b, v.u.d->e[i].val, depth + 1);
  }
  return rc ? rc : jbuf_putc(b, '}');
}

static int write_str_d(jbuf *b, jv v, int depth) {
  switch (v.t) {
    case JV_UNDEF: return 0;
    case JV_NONE: return jbuf_puts(b, "None");
    case JV_BOOL: return jbuf_puts(b, v.u.b ? "True" : "False");
    case JV_INT: return write_int(b, v.u.i);
    case JV_FLOAT: return jv_write_float(b, v.u.f);
    case JV_STR: return jbuf_put(b, v.u.s.p, v.u.s.n);
    case JV_LIST: case JV_DICT: return write_seq(b, v, depth);
    case JV_NS: return jbuf_puts(b, "<Namespace>");
    case JV_MACRO: return jbuf_puts(b, "<Macro>");
    case JV_LOOP: return jbuf_puts(b, "<LoopContext>");
    default: return jbuf_puts(b, "<built-in function>");
  }
}

int jv_write_str(jbuf *b, jv v) { return write_str_d(b, v, 0); }

static int write_repr_d(jbuf *b, jv v, int depth) {
  if (v.t == JV_STR) return write_str_repr(b, v.u.s.p, v.u.s.n);
  if (v.t == JV_UNDEF) return 0;
  return write_str_d(b, v, depth);
}

int jv_write_repr(jbuf *b, jv v) { return write_repr_d(b, v, 0); }

int jv_to_str(jarena *a, jv v, jv *out) {
  if (v.t == JV_STR) {
    *out = v;
    return 0;
  }
  jbuf b = {0};
  int rc = jv_write_str(&b, v);
  if (rc == 0) {
    char *p = jarena_strndup(a, b.p ? b.p : "", b.n);
    if (!p) rc = QV_ENOMEM;
    else *out = jv_str(p, b.n);
  }
  jbuf_free(&b);
  return rc;
}

static int write_json_str(jbuf *b, const char *s, size_t n, bool ascii) {
  int rc = jbuf_putc(b, '"');
  size_t run = 0;
  for (size_t i = 0; i < n && rc == 0; i++) {
    unsigned char c = (unsigned char)s[i];
    const char *esc = NULL;
    char tmp[16];
    if (ascii && c >= 0x80) {
      size_t len;
      uint32_t cp = utf8_decode((const unsigned char *)s + i, n - i, &len);
      if (cp >= 0x10000) {
        cp -= 0x10000;
        snprintf(tmp, sizeof tmp, "\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
      } else {
        snprintf(tmp, sizeof tmp, "\\u%04x", cp);
      }
      rc = jbuf_put(b, s + run, i - run);
      if (rc == 0) rc = jbuf_puts(b, tmp);
      i += len - 1;
      run = i + 1;
      continue;
    }
    switch (c) {
      case '"': esc = "\\\""; break;
      case '\\': esc = "\\\\"; break;
      case '\n': esc = "\\n"; break;
      case '\r': esc = "\\r"; break;
      case '\t': esc = "\\t"; break;
      case '\b': esc = "\\b"; break;
      case '\f': esc = "\\f"; break;
      default:
        if (c < 0x20) {
          snprintf(tmp, sizeof tmp, "\\u%04x", c);
          esc = tmp;
        }
    }
    if (esc) {
      rc = jbuf_put(b, s + run, i - run);
      if (rc == 0) rc = jbuf_puts(b, esc);
      run = i + 1;
    }
  }
  if (rc == 0) rc = jbuf_put(b, s + run, n - run);
  return rc ? rc : jbuf_putc(b, '"');
}

static int json_newline(jbuf *b, int indent, int level) {
  int rc = jbuf_putc(b, '\n');
  for (int i = 0; i < indent * level && rc == 0; i++) rc = jbuf_putc(b, ' ');
  return rc;
}

static int json_key(jbuf *b, jv k, bool ascii) {
  if (k.t == JV_STR) return write_json_str(b, k.u.s.p, k.u.s.n, ascii);
  jbuf tmp = {0};
  int rc;
  if (k.t == JV_BOOL) rc = jbuf_puts(&tmp, k.u.b ? "true" : "false");
  else if (k.t == JV_NONE) rc = jbuf_puts(&tmp, "null");
  else if (k.t == JV_INT || k.t == JV_FLOAT) rc = jv_write_str(&tmp, k);
  else rc = QV_ETEMPLATE;
  if (rc == 0) rc = write_json_str(b, tmp.p ? tmp.p : "", tmp.n, ascii);
  jbuf_free(&tmp);
  return rc;
}

static int cmp_entry_keys(const void *x, const void *y) {
  const jdict_entry *a = x, *b = y;
  int c = 0;
  if (jv_compare(a->key, b->key, &c) != 0) return 0;
  return c;
}

int jv_write_json(jbuf *b, jv v, const jjson_opts *o, int depth) {
  int indent = o->indent;
  if (depth > 512) return QV_ELIMIT;
  int rc = 0;
  switch (v.t) {
    case JV_NONE: return jbuf_puts(b, "null");
    case JV_BOOL: return jbuf_puts(b, v.u.b ? "true" : "false");
    case JV_INT: return write_int(b, v.u.i);
    case JV_FLOAT:
      if (isnan(v.u.f)) return jbuf_puts(b, "NaN");
      if (isinf(v.u.f)) return jbuf_puts(b, v.u.f < 0 ? "-Infinity" : "Infinity");
      return jv_write_float(b, v.u.f);
    case JV_STR: return write_json_str(b, v.u.s.p, v.u.s.n, o->ensure_ascii);
    case JV_LIST: {
      if (v.u.l->n == 0) return jbuf_puts(b, "[]");
      rc = jbuf_putc(b, '[');
      for (size_t i = 0; i < v.u.l->n && rc == 0; i++) {
        if (i) rc = jbuf_puts(b, o->item_sep);
        if (rc == 0 && indent >= 0) rc = json_newline(b, indent, depth + 1);
        if (rc == 0) rc = jv_write_json(b, v.u.l->v[i], o, depth + 1);
      }
      if (rc == 0 && indent >= 0) rc = json_newline(b, indent, depth);
      return rc ? rc : jbuf_putc(b, ']');
    }
    case JV_DICT: {
      if (v.u.d->n == 0) return jbuf_puts(b, "{}");
      jdict_entry *e = v.u.d->e;
      jdict_entry *sorted = NULL;
      if (o->sort_keys) {
        sorted = malloc(v.u.d->n * sizeof(*sorted));
        if (!sorted) return QV_ENOMEM;
        memcpy(sorted, e, v.u.d->n * sizeof(*sorted));
        qsort(sorted, v.u.d->n, sizeof(*sorted), cmp_entry_keys);
        e = sorted;
      }
      rc = jbuf_putc(b, '{');
      for (size_t i = 0; i < v.u.d->n && rc == 0; i++) {
        if (i) rc = jbuf_puts(b, o->item_sep);
        if (rc == 0 && indent >= 0) rc = json_newline(b, indent, depth + 1);
        if (rc == 0) rc = json_key(b, e[i].key, o->ensure_ascii);
        if (rc == 0) rc = jbuf_puts(b, o->key_sep);
        if (rc == 0) rc = jv_write_json(b, e[i].val, o, depth + 1);
      }
      free(sorted);
      if (rc == 0 && indent >= 0) rc = json_newline(b, indent, depth);
      return rc ? rc : jbuf_putc(b, '}');
    }
    default: return QV_ETEMPLATE;
  }
}

/* ---- JSON input ----------------------------------------------------------------------------- */

int jv_from_json(jarena *a, const cJSON *j, jv *out, int depth) {
  if (depth > 512) return QV_ELIMIT;
  if (cJSON_IsNull(j)) { *out = jv_none(); return 0; }
  if (cJSON_IsBool(j)) { *out = jv_bool(cJSON_IsTrue(j)); return 0; }
  if (cJSON_IsNumber(j)) {
    double d = j->valuedouble;
    /* cJSON keeps no int/float distinction: integral values within 2^53 read as Python ints. */
    if (isfinite(d) && d == floor(d) && fabs(d) <= 9007199254740992.0) *out = jv_int((int64_t)d);
    else *out = jv_float(d);
    return 0;
  }
  if (cJSON_IsString(j)) { *out = jv_cstr(j->valuestring ? j->valuestring : ""); return 0; }
  if (cJSON_IsArray(j)) {
    jlist *l = jlist_new(a, (size_t)cJSON_GetArraySize(j));
    if (!l) return QV_ENOMEM;
    for (const cJSON *c = j->child; c; c = c->next) {
      jv v;
      int rc = jv_from_json(a, c, &v, depth + 1);
      if (rc == 0) rc = jlist_push(a, l, v);
      if (rc) return rc;
    }
    out->t = JV_LIST;
    out->u.l = l;
    return 0;
  }
  if (cJSON_IsObject(j)) {
    jdict *d = jdict_new(a, (size_t)cJSON_GetArraySize(j));
    if (!d) return QV_ENOMEM;
    for (const cJSON *c = j->child; c; c = c->next) {
      jv v;
      int rc = jv_from_json(a, c, &v, depth + 1);
      /* Keys of a parsed object are unique in practice; checking each against all previous
       * ones is quadratic, so only small objects get Python's last-duplicate-wins rule. */
      if (rc == 0 && d->n < 64) rc = jdict_set(a, d, jv_cstr(c->string ? c->string : ""), v);
      else if (rc == 0) rc = jdict_append(a, d, jv_cstr(c->string ? c->string : ""), v);
      if (rc) return rc;
    }
    out->t = JV_DICT;
    out->u.d = d;
    return 0;
  }
  *out = jv_none();
  return 0;
}

/* ---- UTF-8 ---------------------------------------------------------------------------------- */

size_t utf8_len(const char *s, size_t n) {
  size_t k = 0;
  for (size_t i = 0; i < n; i++)
    if (((unsigned char)s[i] & 0xC0) != 0x80) k++;
  return k;
}

size_t utf8_offset(const char *s, size_t n, size_t idx) {
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    if (((unsigned char)s[i] & 0xC0) != 0x80) {
      if (k == idx) return i;
      k++;
    }
  }
  return n;
}
