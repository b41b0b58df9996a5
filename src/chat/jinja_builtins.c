/* Jinja builtins: filters, tests, methods of str/dict/list, and the globals Hugging Face adds
 * (raise_exception, strftime_now) next to jinja2's own (range, dict, namespace).
 *
 * Each one reproduces the Python behaviour templates rely on: str.strip() strips Unicode
 * whitespace, split() without a separator splits on runs of whitespace, sort is stable and
 * case-insensitive by default, tojson is transformers' json.dumps(ensure_ascii=False), title is
 * jinja2's word-splitting title (not str.title). Unknown names fail with a clear message. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <utf8proc.h>

#include "chat/jinja_rt.h"

/* ---- small helpers -------------------------------------------------------------------------- */

static int ret_list(jlist *l, jv *out) {
  out->t = JV_LIST;
  out->u.l = l;
  return 0;
}

static bool want_str(jctx *c, jv v, const char *what, int *rc) {
  if (v.t == JV_STR) return true;
  *rc = jctx_fail(c, "%s expects a string, got '%s'", what, jv_type_name(v));
  return false;
}

/* Decodes one code point at s[i] (invalid bytes map to themselves); returns its byte length. */
static size_t cp_at(const char *s, size_t n, size_t i, int32_t *cp) {
  utf8proc_int32_t c;
  utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &c);
  if (k <= 0) {
    *cp = (unsigned char)s[i];
    return 1;
  }
  *cp = c;
  return (size_t)k;
}

static bool py_space(int32_t c) {
  return (c >= 9 && c <= 13) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 ||
         c == 0x202f || c == 0x205f || c == 0x3000;
}

static bool in_chars(int32_t c, jv chars) {
  for (size_t i = 0; i < chars.u.s.n;) {
    int32_t d;
    i += cp_at(chars.u.s.p, chars.u.s.n, i, &d);
    if (d == c) return true;
  }
  return false;
}

/* str.strip family: which = 1 left, 2 right, 3 both; chars NONE/UNDEF = whitespace. */
static int do_strip(jctx *c, jv s, jv chars, int which, jv *out) {
  int rc = 0;
  if (!want_str(c, s, "strip", &rc)) return rc;
  bool ws = chars.t != JV_STR;
  size_t a = 0, b = s.u.s.n;
  if (which & 1) {
    while (a < b) {
      int32_t cp;
      size_t k = cp_at(s.u.s.p, b, a, &cp);
      if (!(ws ? py_space(cp) : in_chars(cp, chars))) break;
      a += k;
    }
  }
  if (which & 2) {
    while (b > a) {
      size_t st = b - 1;
      while (st > a && ((unsigned char)s.u.s.p[st] & 0xC0) == 0x80) st--;
      int32_t cp;
      cp_at(s.u.s.p, b, st, &cp);
      if (!(ws ? py_space(cp) : in_chars(cp, chars))) break;
      b = st;
    }
  }
  *out = jv_str(s.u.s.p + a, b - a);
  return 0;
}

/* mode: 0 lower, 1 upper, 2 capitalize (first upper, rest lower), 3 jinja title, 4 str.title */
static int do_case(jctx *c, jv s, int mode, jv *out) {
  jbuf b = {0};
  bool start = true;
  int rc = 0;
  for (size_t i = 0; i < s.u.s.n && rc == 0;) {
    int32_t cp;
    size_t k = cp_at(s.u.s.p, s.u.s.n, i, &cp);
    int32_t o;
    if (mode == 0) o = utf8proc_tolower(cp);
    else if (mode == 1) o = utf8proc_toupper(cp);
    else {
      o = start ? utf8proc_toupper(cp) : utf8proc_tolower(cp);
      if (mode == 2) start = false;
      else if (mode == 3) start = py_space(cp) || cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<';
      else {
        utf8proc_category_t cat = utf8proc_category(cp);
        bool cased = cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL || cat == UTF8PROC_CATEGORY_LT;
        start = !cased;
      }
    }
    if (o < 0 || (uint32_t)cp == (uint32_t)o) {
      rc = jbuf_put(&b, s.u.s.p + i, k);
    } else {
      utf8proc_uint8_t enc[4];
      utf8proc_ssize_t e = utf8proc_encode_char(o, enc);
      rc = jbuf_put(&b, (const char *)enc, (size_t)e);
    }
    i += k;
  }
  if (rc == 0) rc = jctx_str(c, b.p ? b.p : "", b.n, out);
  else rc = jctx_oom(c);
  jbuf_free(&b);
  return rc;
}

static int do_replace(jctx *c, jv s, jv old, jv new, int64_t count, jv *out) {
  if (s.t != JV_STR || old.t != JV_STR || new.t != JV_STR)
    return jctx_fail(c, "replace() arguments must be strings");
  jbuf b = {.max = c->lim.max_output_bytes};
  int rc = 0;
  size_t i = 0;
  int64_t done = 0;
  if (old.u.s.n == 0) {
    /* Python inserts new between every character (and at both ends) */
    for (size_t k = 0; k <= s.u.s.n && rc == 0; ) {
      if (count < 0 || done < count) { rc = jbuf_put(&b, new.u.s.p, new.u.s.n); done++; }
      if (k == s.u.s.n) break;
      int32_t cp;
      size_t len = cp_at(s.u.s.p, s.u.s.n, k, &cp);
      if (rc == 0) rc = jbuf_put(&b, s.u.s.p + k, len);
      k += len;
    }
  } else {
    while (rc == 0 && i < s.u.s.n) {
      if ((count < 0 || done < count) && i + old.u.s.n <= s.u.s.n &&
          memcmp(s.u.s.p + i, old.u.s.p, old.u.s.n) == 0) {
        rc = jbuf_put(&b, new.u.s.p, new.u.s.n);
        i += old.u.s.n;
        done++;
      } else {
        rc = jbuf_putc(&b, s.u.s.p[i++]);
      }
    }
  }
  if (rc == QV_ELIMIT) rc = jctx_limit(c, "replace() result exceeds the output size limit");
  else if (rc) rc = jctx_oom(c);
  else rc = jctx_str(c, b.p ? b.p : "", b.n, out);
  jbuf_free(&b);
  return rc;
}

static int do_split(jctx *c, jv s, jv sep, int64_t maxsplit, jv *out) {
  jlist *l = jlist_new(c->a, 0);
  if (!l) return jctx_oom(c);
  const char *p = s.u.s.p;
  size_t n = s.u.s.n, i = 0;
  int64_t splits = 0;
  if (sep.t != JV_STR) {
    while (i < n) {
      int32_t cp;
      while (i < n) {
        size_t k = cp_at(p, n, i, &cp);
        if (!py_space(cp)) break;
        i += k;
      }
      if (i >= n) break;
      size_t st = i;
      if (maxsplit >= 0 && splits >= maxsplit) {
        size_t e = n;
        while (e > st) {
          size_t b = e - 1;
          while (b > st && ((unsigned char)p[b] & 0xC0) == 0x80) b--;
          cp_at(p, e, b, &cp);
          if (!py_space(cp)) break;
          e = b;
        }
        if (jlist_push(c->a, l, jv_str(p + st, e - st))) return jctx_oom(c);
        break;
      }
      while (i < n) {
        size_t k = cp_at(p, n, i, &cp);
        if (py_space(cp)) break;
        i += k;
      }
      if (jlist_push(c->a, l, jv_str(p + st, i - st))) return jctx_oom(c);
      splits++;
    }
    return ret_list(l, out);
  }
  if (sep.u.s.n == 0) return jctx_fail(c, "empty separator");
  size_t st = 0;
  while (i + sep.u.s.n <= n) {
    if ((maxsplit < 0 || splits < maxsplit) && memcmp(p + i, sep.u.s.p, sep.u.s.n) == 0) {
      if (jlist_push(c->a, l, jv_str(p + st, i - st))) return jctx_oom(c);
      i += sep.u.s.n;
      st = i;
      splits++;
    } else {
      i++;
    }
  }
  if (jlist_push(c->a, l, jv_str(p + st, n - st))) return jctx_oom(c);
  return ret_list(l, out);
}

static int do_join(jctx *c, jv seq, jv sep, jv attr, jv *out) {
  jlist *l;
  int rc = jrt_iterate(c, seq, &l);
  if (rc) return rc;
  jbuf b = {.max = c->lim.max_output_bytes};
  for (size_t i = 0; i < l->n && rc == 0; i++) {
    jv item = l->v[i];
    if (attr.t == JV_STR) rc = jrt_getitem(c, item, attr, &item);
    if (rc == 0 && i && sep.t == JV_STR) rc = jbuf_put(&b, sep.u.s.p, sep.u.s.n);
    if (rc == 0) rc = jv_write_str(&b, item);
    if (rc == QV_ELIMIT) rc = jctx_limit(c, "join() result exceeds the output size limit");
  }
  if (rc == 0) rc = jctx_str(c, b.p ? b.p : "", b.n, out);
  jbuf_free(&b);
  return rc;
}

/* Stable merge sort of v[0..n) by keys k (parallel array); errors on incomparable keys. */
static int sort_vals(jctx *c, jv *v, jv *k, size_t n, bool reverse) {
  if (n < 2) return 0;
  jv *tv = jarena_alloc(c->a, n * sizeof(jv)), *tk = jarena_alloc(c->a, n * sizeof(jv));
  if (!tv || !tk) return jctx_oom(c);
  for (size_t w = 1; w < n; w *= 2) {
    for (size_t lo = 0; lo < n; lo += 2 * w) {
      size_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
      size_t i = lo, j = mid, o = lo;
      while (i < mid || j < hi) {
        bool take_left;
        if (i >= mid) take_left = false;
        else if (j >= hi) take_left = true;
        else {
          int cmp;
          if (jv_compare(k[j], k[i], &cmp))
            return jctx_fail(c, "'<' not supported between instances of '%s' and '%s'",
                             jv_type_name(k[j]), jv_type_name(k[i]));
          take_left = reverse ? cmp <= 0 : cmp >= 0;
        }
        if (take_left) { tv[o] = v[i]; tk[o++] = k[i++]; }
        else { tv[o] = v[j]; tk[o++] = k[j++]; }
      }
    }
    memcpy(v, tv, n * sizeof(jv));
    memcpy(k, tk, n * sizeof(jv));
  }
  return 0;
}

/* jinja2's attribute getter: a dotted path ("a.b", "items.0") or an integer index into item;
 * def (unless none) replaces an undefined step, as jinja2's `default=` does. */
static int attr_path(jctx *c, jv item, jv attr, jv def, jv *out) {
  int rc = 0;
  if (attr.t == JV_INT) {
    rc = jrt_getitem(c, item, attr, &item);
    if (rc == 0 && item.t == JV_UNDEF && def.t != JV_NONE) item = def;
  } else if (attr.t == JV_STR) {
    const char *p = attr.u.s.p, *end = p + attr.u.s.n;
    while (rc == 0 && p < end) {
      const char *dot = memchr(p, '.', (size_t)(end - p));
      size_t len = dot ? (size_t)(dot - p) : (size_t)(end - p);
      jv key = jv_str(p, len);
      if (len && p[0] >= '0' && p[0] <= '9') key = jv_int(strtoll(p, NULL, 10));
      rc = jrt_getitem(c, item, key, &item);
      if (rc == 0 && item.t == JV_UNDEF && def.t != JV_NONE) item = def;
      p += len + (dot ? 1 : 0);
    }
  }
  *out = item;
  return rc;
}

/* Sort key of an item: optional attribute, lowercased when not case-sensitive. */
static int sort_key(jctx *c, jv item, jv attr, bool case_sensitive, jv *out) {
  int rc = attr.t == JV_STR ? attr_path(c, item, attr, jv_none(), &item) : 0;
  if (rc == 0 && !case_sensitive && item.t == JV_STR) rc = do_case(c, item, 0, &item);
  *out = item;
  return rc;
}

static int to_int(jctx *c, jv v, jv def, jv *out) {
  switch (v.t) {
    case JV_INT: *out = v; return 0;
    case JV_BOOL: *out = jv_int(v.u.b); return 0;
    case JV_FLOAT:
      if (!isfinite(v.u.f) || fabs(v.u.f) >= 9.2e18) { *out = def; return 0; }
      *out = jv_int((int64_t)v.u.f);
      return 0;
    case JV_STR: {
      char buf[64];
      size_t n = v.u.s.n < sizeof buf - 1 ? v.u.s.n : sizeof buf - 1;
      memcpy(buf, v.u.s.p, n);
      buf[n] = 0;
      char *end;
      long long i = strtoll(buf, &end, 10);
      while (*end == ' ' || *end == '\n' || *end == '\t') end++;
      if (end != buf && *end == 0) { *out = jv_int(i); return 0; }
      double d = strtod(buf, &end);
      while (*end == ' ' || *end == '\n' || *end == '\t') end++;
      if (end != buf && *end == 0 && isfinite(d) && fabs(d) < 9.2e18) { *out = jv_int((int64_t)d); return 0; }
      *out = def;
      return 0;
    }
    default: *out = def; return 0;
  }
}

static int to_float(jv v, jv def, jv *out) {
  if (jv_is_number(v)) { *out = jv_float(jv_as_double(v)); return 0; }
  if (v.t == JV_STR) {
    char buf[64];
    size_t n = v.u.s.n < sizeof buf - 1 ? v.u.s.n : sizeof buf - 1;
    memcpy(buf, v.u.s.p, n);
    buf[n] = 0;
    char *end;
    double d = strtod(buf, &end);
    while (*end == ' ' || *end == '\n' || *end == '\t') end++;
    if (end != buf && *end == 0) { *out = jv_float(d); return 0; }
  }
  *out = def;
  return 0;
}

static int do_tojson(jctx *c, jv v, const jargs *a, jv *out) {
  jv indent = jv_none(), sort = jv_bool(false), seps = jv_none(), ascii = jv_bool(false);
  jargs_get(a, 0, "ensure_ascii", &ascii);
  jargs_get(a, 1, "indent", &indent);
  jargs_get(a, 2, "separators", &seps);
  jargs_get(a, 3, "sort_keys", &sort);
  int ind = -1;
  if (indent.t == JV_INT) ind = indent.u.i < 0 ? 0 : indent.u.i > 64 ? 64 : (int)indent.u.i;
  else if (indent.t != JV_NONE && indent.t != JV_UNDEF) return jctx_fail(c, "tojson indent must be an integer");
  const char *item_sep = ind >= 0 ? "," : ", ", *key_sep = ": ";
  char seps_buf[2][32];
  if (seps.t == JV_LIST && seps.u.l->n == 2 && seps.u.l->v[0].t == JV_STR && seps.u.l->v[1].t == JV_STR) {
    for (int k = 0; k < 2; k++) {
      jv s = seps.u.l->v[k];
      size_t n = s.u.s.n < 31 ? s.u.s.n : 31;
      memcpy(seps_buf[k], s.u.s.p, n);
      seps_buf[k][n] = 0;
    }
    item_sep = seps_buf[0];
    key_sep = seps_buf[1];
  }
  jbuf b = {.max = c->lim.max_output_bytes};
  jjson_opts o = {.indent = ind, .sort_keys = jv_truthy(sort), .ensure_ascii = jv_truthy(ascii),
                  .item_sep = item_sep, .key_sep = key_sep};
  int rc = jv_write_json(&b, v, &o, 0);
  if (rc == QV_ETEMPLATE) rc = jctx_fail(c, "Object of type %s is not JSON serializable", jv_type_name(v));
  else if (rc == QV_ELIMIT) rc = jctx_limit(c, "tojson output exceeds the size limit");
  else if (rc) rc = jctx_oom(c);
  else rc = jctx_str(c, b.p ? b.p : "", b.n, out);
  jbuf_free(&b);
  return rc;
}

static int do_indent(jctx *c, jv s, const jargs *a, jv *out) {
  jv width = jv_int(4), first = jv_bool(false), blank = jv_bool(false);
  jargs_get(a, 0, "width", &width);
  jargs_get(a, 1, "first", &first);
  jargs_get(a, 2, "blank", &blank);
  jbuf pad = {0}, b = {.max = c->lim.max_output_bytes};
  int rc = 0;
  if (width.t == JV_STR) rc = jbuf_put(&pad, width.u.s.p, width.u.s.n);
  else for (int64_t i = 0; i < (width.t == JV_INT ? width.u.i : 4) && i < 256 && rc == 0; i++) rc = jbuf_putc(&pad, ' ');
  const char *p = s.u.s.p;
  size_t n = s.u.s.n, i = 0;
  bool first_line = true;
  while (rc == 0 && i <= n) {
    const char *nl = memchr(p + i, '\n', n - i);
    size_t e = nl ? (size_t)(nl - p) : n;
    bool empty = e == i;
    bool do_pad = first_line ? jv_truthy(first) : (!empty || jv_truthy(blank));
    if (do_pad && pad.n) rc = jbuf_put(&b, pad.p, pad.n);
    if (rc == 0) rc = jbuf_put(&b, p + i, e - i);
    if (!nl) break;
    if (rc == 0) rc = jbuf_putc(&b, '\n');
    i = e + 1;
    first_line = false;
  }
  if (rc == QV_ELIMIT) rc = jctx_limit(c, "indent() result exceeds the output size limit");
  else if (rc) rc = jctx_oom(c);
  else rc = jctx_str(c, b.p ? b.p : "", b.n, out);
  jbuf_free(&pad);
  jbuf_free(&b);
  return rc;
}

/* select/reject/selectattr/rejectattr/map share the "rest of the arguments" of a test/filter. */
static jargs rest_args(const jargs *a, int skip) {
  jargs r = *a;
  r.pos = a->n_pos > skip ? a->pos + skip : NULL;
  r.n_pos = a->n_pos > skip ? a->n_pos - skip : 0;
  return r;
}

/* select/reject/selectattr/rejectattr and map iterate nothing when the value is falsy (none,
 * undefined, 0, false, ""), before looking at their arguments, as jinja2's do: a template may
 * filter `tools` that it set to none. */
static int do_select(jctx *c, jv seq, const jargs *a, bool by_attr, bool keep, jv *out) {
  jlist *l, *res = jlist_new(c->a, 0);
  if (!res) return jctx_oom(c);
  if (!jv_truthy(seq)) return ret_list(res, out);
  int rc = jrt_iterate(c, seq, &l);
  if (rc) return rc;
  jv attr = jv_undef(NULL), test = jv_undef(NULL);
  int skip = 0;
  if (by_attr) {
    if (!jargs_get(a, 0, NULL, &attr) || attr.t != JV_STR)
      return jctx_fail(c, "selectattr/rejectattr need an attribute name");
    skip = 1;
  }
  bool has_test = jargs_get(a, skip, NULL, &test);
  if (has_test && test.t != JV_STR) return jctx_fail(c, "test name must be a string");
  jargs ta = rest_args(a, skip + 1);
  ta.n_kw = 0;
  char name[64] = "";
  if (has_test) snprintf(name, sizeof name, "%.*s", (int)test.u.s.n, test.u.s.p);
  for (size_t i = 0; i < l->n; i++) {
    if ((rc = jctx_tick(c, 1))) return rc;
    jv v = l->v[i];
    if (by_attr && (rc = sort_key(c, v, attr, true, &v))) return rc;
    bool r;
    if (has_test) rc = jb_test(c, name, v, &ta, &r);
    else r = jv_truthy(v);
    if (rc) return rc;
    if (r == keep && jlist_push(c->a, res, l->v[i])) return jctx_oom(c);
  }
  return ret_list(res, out);
}

static int do_map(jctx *c, jv seq, const jargs *a, jv *out) {
  jlist *l, *res = jlist_new(c->a, 0);
  if (!res) return jctx_oom(c);
  if (!jv_truthy(seq)) return ret_list(res, out);
  int rc = jrt_iterate(c, seq, &l);
  if (rc) return rc;
  jv attr, fname, def = jv_undef(NULL);
  bool by_attr = jargs_get(a, -1, "attribute", &attr);
  jargs_get(a, -1, "default", &def);
  if (!by_attr && (!jargs_get(a, 0, NULL, &fname) || fname.t != JV_STR))
    return jctx_fail(c, "map() needs a filter name or attribute=");
  char name[64] = "";
  if (!by_attr) snprintf(name, sizeof name, "%.*s", (int)fname.u.s.n, fname.u.s.p);
  jargs fa = rest_args(a, 1);
  for (size_t i = 0; i < l->n; i++) {
    if ((rc = jctx_tick(c, 1))) return rc;
    jv v;
    if (by_attr) {
      rc = sort_key(c, l->v[i], attr, true, &v);
      if (rc == 0 && v.t == JV_UNDEF && def.t != JV_UNDEF) v = def;
    } else {
      rc = jb_filter(c, name, l->v[i], &fa, &v);
    }
    if (rc) return rc;
    if (jlist_push(c->a, res, v)) return jctx_oom(c);
  }
  return ret_list(res, out);
}

static int do_sort(jctx *c, jv seq, const jargs *a, jv *out) {
  jv reverse = jv_bool(false), cs = jv_bool(false), attr = jv_none();
  jargs_get(a, 0, "reverse", &reverse);
  jargs_get(a, 1, "case_sensitive", &cs);
  jargs_get(a, 2, "attribute", &attr);
  jlist *l;
  int rc = jrt_iterate(c, seq, &l);
  if (rc) return rc;
  jlist *res = jlist_new(c->a, l->n);
  jv *keys = jarena_alloc(c->a, (l->n + 1) * sizeof(jv));
  if (!res || !keys) return jctx_oom(c);
  for (size_t i = 0; i < l->n; i++) {
    res->v[i] = l->v[i];
    if ((rc = sort_key(c, l->v[i], attr, jv_truthy(cs), &keys[i]))) return rc;
  }
  res->n = l->n;
  rc = sort_vals(c, res->v, keys, res->n, jv_truthy(reverse));
  return rc ? rc : ret_list(res, out);
}

static int items_of(jctx *c, jv d, jv *out) {
  jlist *l = jlist_new(c->a, d.t == JV_DICT || d.t == JV_NS ? d.u.d->n : 0);
  if (!l) return jctx_oom(c);
  if (d.t == JV_DICT || d.t == JV_NS) {
    for (size_t i = 0; i < d.u.d->n; i++) {
      jlist *pair = jlist_new(c->a, 2);
      if (!pair) return jctx_oom(c);
      pair->v[0] = d.u.d->e[i].key;
      pair->v[1] = d.u.d->e[i].val;
      pair->n = 2;
      pair->is_tuple = true;
      l->v[l->n].t = JV_LIST;
      l->v[l->n++].u.l = pair;
    }
  } else if (d.t != JV_UNDEF) {
    return jctx_fail(c, "Can only get item pairs from a mapping.");
  }
  return ret_list(l, out);
}

static int do_dictsort(jctx *c, jv d, const jargs *a, jv *out) {
  jv cs = jv_bool(false), by = jv_cstr("key"), reverse = jv_bool(false);
  jargs_get(a, 0, "case_sensitive", &cs);
  jargs_get(a, 1, "by", &by);
  jargs_get(a, 2, "reverse", &reverse);
  if (d.t == JV_UNDEF) return jctx_undefined(c, d);
  if (d.t != JV_DICT) return jctx_fail(c, "'%s' object has no attribute 'items'", jv_type_name(d));
  jv items;
  int rc = items_of(c, d, &items);
  if (rc) return rc;
  int idx = (by.t == JV_STR && by.u.s.n == 5 && !memcmp(by.u.s.p, "value", 5)) ? 1 : 0;
  jv *keys = jarena_alloc(c->a, (items.u.l->n + 1) * sizeof(jv));
  if (!keys) return jctx_oom(c);
  for (size_t i = 0; i < items.u.l->n; i++)
    if ((rc = sort_key(c, items.u.l->v[i].u.l->v[idx], jv_none(), jv_truthy(cs), &keys[i]))) return rc;
  rc = sort_vals(c, items.u.l->v, keys, items.u.l->n, jv_truthy(reverse));
  if (rc == 0) *out = items;
  return rc;
}

static int do_unique(jctx *c, jv seq, const jargs *a, jv *out) {
  jv cs = jv_bool(false), attr = jv_none();
  jargs_get(a, 0, "case_sensitive", &cs);
  jargs_get(a, 1, "attribute", &attr);
  jlist *l, *res = jlist_new(c->a, 0), *seen = jlist_new(c->a, 0);
  if (!res || !seen) return jctx_oom(c);
  int rc = jrt_iterate(c, seq, &l);
  for (size_t i = 0; rc == 0 && i < l->n; i++) {
    if ((rc = jctx_tick(c, 1 + (long)seen->n))) return rc; /* quadratic: count comparisons */
    jv k;
    if ((rc = sort_key(c, l->v[i], attr, jv_truthy(cs), &k))) return rc;
    bool dup = false;
    for (size_t j = 0; j < seen->n && !dup; j++) dup = jv_equal(seen->v[j], k);
    if (!dup && (jlist_push(c->a, seen, k) || jlist_push(c->a, res, l->v[i]))) return jctx_oom(c);
  }
  return rc ? rc : ret_list(res, out);
}

static int do_minmax(jctx *c, jv seq, const jargs *a, bool is_max, jv *out) {
  jv cs = jv_bool(false), attr = jv_none();
  jargs_get(a, 0, "case_sensitive", &cs);
  jargs_get(a, 1, "attribute", &attr);
  jlist *l;
  int rc = jrt_iterate(c, seq, &l);
  if (rc) return rc;
  *out = jv_undef("No aggregated item, sequence was empty.");
  jv best_key = jv_none();
  for (size_t i = 0; i < l->n; i++) {
    jv k;
    if ((rc = sort_key(c, l->v[i], attr, jv_truthy(cs), &k))) return rc;
    int cmp = 0;
    if (i && jv_compare(k, best_key, &cmp)) return jctx_fail(c, "values are not comparable");
    if (i == 0 || (is_max ? cmp > 0 : cmp < 0)) {
      *out = l->v[i];
      best_key = k;
    }
  }
  return 0;
}

static int do_round(jctx *c, jv v, const jargs *a, jv *out) {
  jv prec = jv_int(0), method = jv_cstr("common");
  jargs_get(a, 0, "precision", &prec);
  jargs_get(a, 1, "method", &method);
  if (!jv_is_number(v)) return jctx_fail(c, "round expects a number");
  double x = jv_as_double(v), m = pow(10.0, (double)(prec.t == JV_INT ? prec.u.i : 0));
  double r;
  if (method.t == JV_STR && method.u.s.n == 4 && !memcmp(method.u.s.p, "ceil", 4)) r = ceil(x * m) / m;
  else if (method.t == JV_STR && method.u.s.n == 5 && !memcmp(method.u.s.p, "floor", 5)) r = floor(x * m) / m;
  else r = nearbyint(x * m) / m; /* Python's round() rounds half to even */
  *out = jv_float(r);
  return 0;
}

static int do_batch(jctx *c, jv seq, const jargs *a, jv *out) {
  jv size, fill = jv_none();
  if (!jargs_get(a, 0, "linecount", &size) || size.t != JV_INT || size.u.i <= 0)
    return jctx_fail(c, "batch() needs a positive size");
  bool has_fill = jargs_get(a, 1, "fill_with", &fill) && fill.t != JV_NONE;
  jlist *l, *res = jlist_new(c->a, 0), *cur = NULL;
  int rc = jrt_iterate(c, seq, &l);
  if (rc || !res) return rc ? rc : jctx_oom(c);
  for (size_t i = 0; i < l->n; i++) {
    if (!cur) {
      cur = jlist_new(c->a, 0);
      jv cv = {.t = JV_LIST};
      cv.u.l = cur;
      if (!cur || jlist_push(c->a, res, cv)) return jctx_oom(c);
    }
    if (jlist_push(c->a, cur, l->v[i])) return jctx_oom(c);
    if ((int64_t)cur->n == size.u.i) cur = NULL;
  }
  while (cur && has_fill && (int64_t)cur->n < size.u.i)
    if (jlist_push(c->a, cur, fill)) return jctx_oom(c);
  return ret_list(res, out);
}

/* groupby(attribute, default=none, case_sensitive=false): the items sorted by the attribute
 * (lowercased unless case_sensitive), then each run of equal keys as a (grouper, list) tuple
 * whose .grouper is the first item's own value (not lowercased) and .list its items. */
static int do_groupby(jctx *c, jv seq, const jargs *a, jv *out) {
  jv attr, def = jv_none(), cs = jv_bool(false);
  if (!jargs_get(a, 0, "attribute", &attr) || (attr.t != JV_STR && attr.t != JV_INT))
    return jctx_fail(c, "groupby() needs an attribute name or index");
  jargs_get(a, 1, "default", &def);
  jargs_get(a, 2, "case_sensitive", &cs);
  jlist *l;
  int rc = jrt_iterate(c, seq, &l);
  if (rc) return rc;
  size_t n = l->n;
  jv *vals = jarena_alloc(c->a, (n + 1) * sizeof(jv));
  jv *keys = jarena_alloc(c->a, (n + 1) * sizeof(jv));
  jlist *res = jlist_new(c->a, 0);
  if (!vals || !keys || !res) return jctx_oom(c);
  for (size_t i = 0; i < n; i++) {
    if ((rc = jctx_tick(c, 1))) return rc;
    vals[i] = l->v[i];
    if ((rc = attr_path(c, l->v[i], attr, def, &keys[i]))) return rc;
    if (!jv_truthy(cs) && keys[i].t == JV_STR && (rc = do_case(c, keys[i], 0, &keys[i]))) return rc;
  }
  if ((rc = sort_vals(c, vals, keys, n, false))) return rc;
  jlist *items = NULL;
  for (size_t i = 0; i < n; i++) {
    if (!items || !jv_equal(keys[i], keys[i - 1])) {
      jlist *pair = jlist_new(c->a, 2);
      items = jlist_new(c->a, 0);
      if (!pair || !items) return jctx_oom(c);
      jv grouper = keys[i];
      if (!jv_truthy(cs) && (rc = attr_path(c, vals[i], attr, def, &grouper))) return rc;
      pair->v[0] = grouper;
      pair->v[1].t = JV_LIST;
      pair->v[1].u.l = items;
      pair->n = 2;
      pair->is_tuple = pair->is_group = true;
      jv pv = {.t = JV_LIST};
      pv.u.l = pair;
      if (jlist_push(c->a, res, pv)) return jctx_oom(c);
    }
    if (jlist_push(c->a, items, vals[i])) return jctx_oom(c);
  }
  return ret_list(res, out);
}

static int length_of(jctx *c, jv v, jv *out) {
  switch (v.t) {
    case JV_STR: *out = jv_int((int64_t)utf8_len(v.u.s.p, v.u.s.n)); return 0;
    case JV_LIST: *out = jv_int((int64_t)v.u.l->n); return 0;
    case JV_DICT: case JV_NS: *out = jv_int((int64_t)v.u.d->n); return 0;
    case JV_UNDEF: *out = jv_int(0); return 0;
    default: return jctx_fail(c, "object of type '%s' has no len()", jv_type_name(v));
  }
}

static int escape_html(jctx *c, jv v, jv *out) {
  jbuf b = {0}, s = {0};
  int rc = jv_write_str(&s, v);
  for (size_t i = 0; i < s.n && rc == 0; i++) {
    const char *r = NULL;
    switch (s.p[i]) {
      case '&': r = "&amp;"; break;
      case '<': r = "&lt;"; break;
      case '>': r = "&gt;"; break;
      case '"': r = "&#34;"; break;
      case '\'': r = "&#39;"; break;
    }
    rc = r ? jbuf_puts(&b, r) : jbuf_putc(&b, s.p[i]);
  }
  if (rc == 0) rc = jctx_str(c, b.p ? b.p : "", b.n, out);
  else rc = jctx_oom(c);
  jbuf_free(&b);
  jbuf_free(&s);
  return rc;
}

/* Python's printf-style `fmt % args` (the `format` filter and the `%` operator on strings):
 * %s %r %d %i %f %F %e %g %x %X %o %c %% with flags, width, precision and %(name)s keys. */
int jb_percent_format(jctx *c, jv fmt, jv args, jv *out) {
  jbuf b = {.max = c->lim.max_output_bytes};
  int rc = 0;
  size_t next = 0;
  bool mapping = args.t == JV_DICT;
  bool seq = args.t == JV_LIST && args.u.l->is_tuple;
  const char *p = fmt.u.s.p;
  size_t n = fmt.u.s.n;
  for (size_t i = 0; i < n && rc == 0; i++) {
    if (p[i] != '%') {
      rc = jbuf_putc(&b, p[i]);
      continue;
    }
    if (++i >= n) { rc = jctx_fail(c, "incomplete format"); break; }
    jv v = jv_undef(NULL);
    bool have = false;
    if (p[i] == '(') {
      const char *close = memchr(p + i, ')', n - i);
      if (!close || !mapping) { rc = jctx_fail(c, "format requires a mapping"); break; }
      jv *f = jdict_get_str(args.u.d, p + i + 1, (size_t)(close - p) - i - 1);
      if (!f) { rc = jctx_fail(c, "format key not found"); break; }
      v = *f;
      have = true;
      i = (size_t)(close - p) + 1;
    }
    char spec[32];
    size_t k = 0;
    spec[k++] = '%';
    while (i < n && strchr("-+ #0", p[i]) && k < 8) spec[k++] = p[i++];
    /* width and precision stay small: the C formatter would pad or print digits for as long
     * as asked */
    size_t digits = 0;
    while (i < n && p[i] >= '0' && p[i] <= '9' && digits++ < 4) spec[k++] = p[i++];
    if (i < n && p[i] == '.') {
      spec[k++] = p[i++];
      digits = 0;
      while (i < n && p[i] >= '0' && p[i] <= '9' && digits++ < 3) spec[k++] = p[i++];
    }
    if (i < n && p[i] >= '0' && p[i] <= '9') { rc = jctx_fail(c, "format width or precision too large"); break; }
    if (i >= n) { rc = jctx_fail(c, "incomplete format"); break; }
    char conv = p[i];
    if (conv == '%') { rc = jbuf_putc(&b, '%'); continue; }
    if (!have) {
      if (seq) {
        if (next >= args.u.l->n) { rc = jctx_fail(c, "not enough arguments for format string"); break; }
        v = args.u.l->v[next++];
      } else if (next++ == 0) {
        v = args;
      } else {
        rc = jctx_fail(c, "not enough arguments for format string");
        break;
      }
    }
    char tmp[512];
    int len;
    if (conv == 's' || conv == 'r') {
      jbuf sb = {0};
      rc = conv == 's' ? jv_write_str(&sb, v) : jv_write_repr(&sb, v);
      spec[k++] = 's';
      spec[k] = 0;
      if (rc == 0) {
        /* width/precision apply to the text: format it with the C spec on a NUL-free copy */
        char *text = sb.p ? sb.p : "";
        size_t tl = sb.n;
        if (k > 2 && tl < 4096) {
          len = snprintf(tmp, sizeof tmp, spec, text);
          rc = jbuf_put(&b, tmp, len < 0 ? 0 : (size_t)len < sizeof tmp ? (size_t)len : sizeof tmp - 1);
        } else {
          rc = jbuf_put(&b, text, tl);
        }
      }
      jbuf_free(&sb);
    } else if (strchr("diouxXc", conv)) {
      if (!jv_is_number(v)) { rc = jctx_fail(c, "%%%c format: a number is required, not %s", conv, jv_type_name(v)); break; }
      long long x = v.t == JV_FLOAT ? (long long)v.u.f : v.t == JV_BOOL ? v.u.b : (long long)v.u.i;
      if (conv == 'c') { spec[k++] = 'c'; spec[k] = 0; len = snprintf(tmp, sizeof tmp, spec, (int)x); }
      else {
        spec[k++] = 'l'; spec[k++] = 'l'; spec[k++] = conv == 'i' || conv == 'u' ? 'd' : conv; spec[k] = 0;
        len = snprintf(tmp, sizeof tmp, spec, x);
      }
      rc = jbuf_put(&b, tmp, len < 0 ? 0 : (size_t)len < sizeof tmp ? (size_t)len : sizeof tmp - 1);
    } else if (strchr("eEfFgG", conv)) {
      if (!jv_is_number(v)) { rc = jctx_fail(c, "must be real number, not %s", jv_type_name(v)); break; }
      spec[k++] = conv;
      spec[k] = 0;
      len = snprintf(tmp, sizeof tmp, spec, jv_as_double(v));
      rc = jbuf_put(&b, tmp, len < 0 ? 0 : (size_t)len < sizeof tmp ? (size_t)len : sizeof tmp - 1);
    } else {
      rc = jctx_fail(c, "unsupported format character '%c'", conv);
    }
  }
  if (rc == 0 && seq && next < args.u.l->n) rc = jctx_fail(c, "not all arguments converted during string formatting");
  if (rc == 0) rc = jctx_str(c, b.p ? b.p : "", b.n, out);
  else if (rc == QV_ELIMIT) rc = jctx_limit(c, "format result exceeds the output size limit");
  else if (rc == QV_ENOMEM) rc = jctx_oom(c);
  jbuf_free(&b);
  return rc;
}

/* ---- filters -------------------------------------------------------------------------------- */

static const char *const FILTERS[] = {
    "tojson", "safe", "string", "length", "count", "default", "d", "items", "list", "first",
    "last", "reverse", "join", "map", "select", "reject", "selectattr", "rejectattr", "sort",
    "dictsort", "unique", "min", "max", "batch", "int", "float", "abs", "round", "sum", "attr",
    "escape", "e", "forceescape", "trim", "upper", "lower", "capitalize", "title", "replace",
    "indent", "wordcount", "center", "format", "truncate", "slice", "groupby",
    /* jinja2 filters quiver knows by name but does not implement: a template that mentions one
     * still loads (as with jinja2) and fails only if it is actually applied */
    "filesizeformat", "pprint", "random", "striptags", "urlencode", "urlize",
    "wordwrap", "xmlattr", NULL};
static const char *const TESTS[] = {
    "defined", "undefined", "none", "string", "number", "integer", "float", "boolean", "true",
    "false", "mapping", "iterable", "sequence", "callable", "lower", "upper", "odd", "even",
    "divisibleby", "equalto", "eq", "==", "sameas", "ne", "!=", "lt", "le", "gt", "ge",
    "lessthan", "greaterthan", "in", "escaped", "filter", "test", NULL};

static bool in_table(const char *const *tab, const char *name) {
  for (int i = 0; tab[i]; i++)
    if (!strcmp(tab[i], name)) return true;
  return false;
}

bool jinja_filter_exists(const char *name) { return in_table(FILTERS, name); }
bool jinja_test_exists(const char *name) { return in_table(TESTS, name); }

#define IS(x) (!strcmp(name, x))

int jb_filter(jctx *c, const char *name, jv in, const jargs *a, jv *out) {
  jv x = jv_undef(NULL), y = jv_undef(NULL);
  int rc = 0;
  if (IS("tojson")) return do_tojson(c, in, a, out);
  if (IS("safe")) { *out = in; return 0; }
  if (IS("string")) return jv_to_str(c->a, in, out) ? jctx_oom(c) : 0;
  if (IS("length") || IS("count")) return length_of(c, in, out);
  if (IS("default") || IS("d")) {
    jv def = jv_cstr(""), boolean = jv_bool(false);
    jargs_get(a, 0, "default_value", &def);
    jargs_get(a, 1, "boolean", &boolean);
    *out = (in.t == JV_UNDEF || (jv_truthy(boolean) && !jv_truthy(in))) ? def : in;
    return 0;
  }
  if (IS("items")) return items_of(c, in, out);
  if (IS("list")) {
    jlist *l;
    if ((rc = jrt_iterate(c, in, &l))) return rc;
    jlist *copy = jlist_new(c->a, l->n);
    if (!copy) return jctx_oom(c);
    if (l->n) memcpy(copy->v, l->v, l->n * sizeof(jv));
    copy->n = l->n;
    return ret_list(copy, out);
  }
  if (IS("first") || IS("last")) {
    jlist *l;
    if (IS("last") && in.t != JV_LIST && in.t != JV_STR && in.t != JV_DICT && in.t != JV_UNDEF)
      return jctx_fail(c, "'%s' object is not reversible", jv_type_name(in));
    if ((rc = jrt_iterate(c, in, &l))) return rc;
    if (l->n == 0)
      *out = jv_undef(IS("first") ? "No first item, sequence was empty."
                                  : "No last item, sequence was empty.");
    else *out = IS("first") ? l->v[0] : l->v[l->n - 1];
    return 0;
  }
  if (IS("reverse")) {
    if (in.t == JV_STR) {
      jbuf b = {0};
      for (size_t e = in.u.s.n; e > 0 && rc == 0;) {
        size_t st = e - 1;
        while (st > 0 && ((unsigned char)in.u.s.p[st] & 0xC0) == 0x80) st--;
        rc = jbuf_put(&b, in.u.s.p + st, e - st);
        e = st;
      }
      if (rc == 0) rc = jctx_str(c, b.p ? b.p : "", b.n, out);
      jbuf_free(&b);
      return rc;
    }
    jlist *l;
    if (in.t != JV_LIST && in.t != JV_DICT && in.t != JV_UNDEF)
      return jctx_fail(c, "argument must be iterable");
    if ((rc = jrt_iterate(c, in, &l))) return rc;
    jlist *r = jlist_new(c->a, l->n);
    if (!r) return jctx_oom(c);
    for (size_t i = 0; i < l->n; i++) r->v[i] = l->v[l->n - 1 - i];
    r->n = l->n;
    return ret_list(r, out);
  }
  if (IS("join")) {
    jv sep = jv_cstr(""), attr = jv_none();
    jargs_get(a, 0, "d", &sep);
    jargs_get(a, 1, "attribute", &attr);
    return do_join(c, in, sep, attr, out);
  }
  if (IS("map")) return do_map(c, in, a, out);
  if (IS("select") || IS("reject")) return do_select(c, in, a, false, IS("select"), out);
  if (IS("selectattr") || IS("rejectattr")) return do_select(c, in, a, true, IS("selectattr"), out);
  if (IS("sort")) return do_sort(c, in, a, out);
  if (IS("dictsort")) return do_dictsort(c, in, a, out);
  if (IS("unique")) return do_unique(c, in, a, out);
  if (IS("min") || IS("max")) return do_minmax(c, in, a, IS("max"), out);
  if (IS("batch")) return do_batch(c, in, a, out);
  if (IS("groupby")) return do_groupby(c, in, a, out);
  if (IS("int")) {
    jv def = jv_int(0);
    jargs_get(a, 0, "default", &def);
    return to_int(c, in, def, out);
  }
  if (IS("float")) {
    jv def = jv_float(0.0);
    jargs_get(a, 0, "default", &def);
    return to_float(in, def, out);
  }
  if (IS("abs")) {
    if (in.t == JV_INT) {
      if (in.u.i == INT64_MIN) return jctx_fail(c, "integer overflow");
      *out = jv_int(in.u.i < 0 ? -in.u.i : in.u.i);
    } else if (in.t == JV_FLOAT) *out = jv_float(fabs(in.u.f));
    else if (in.t == JV_BOOL) *out = jv_int(in.u.b);
    else return jctx_fail(c, "bad operand type for abs(): '%s'", jv_type_name(in));
    return 0;
  }
  if (IS("round")) return do_round(c, in, a, out);
  if (IS("sum")) {
    jv attr = jv_none(), acc = jv_int(0);
    jargs_get(a, 0, "attribute", &attr);
    jargs_get(a, 1, "start", &acc);
    jlist *l;
    if ((rc = jrt_iterate(c, in, &l))) return rc;
    for (size_t i = 0; i < l->n && rc == 0; i++) {
      jv v;
      rc = sort_key(c, l->v[i], attr, true, &v);
      if (rc == 0) rc = jrt_binop(c, JOP_ADD, acc, v, &acc);
    }
    *out = acc;
    return rc;
  }
  if (IS("attr")) {
    if (!jargs_get(a, 0, "name", &x) || x.t != JV_STR) return jctx_fail(c, "attr() needs a name");
    char *nm = jarena_strndup(c->a, x.u.s.p, x.u.s.n);
    return nm ? jrt_getattr(c, in, nm, x.u.s.n, out) : jctx_oom(c);
  }
  if (IS("escape") || IS("e") || IS("forceescape")) return escape_html(c, in, out);
  if (IS("slice")) {
    jv slices, fill = jv_none();
    if (!jargs_get(a, 0, "slices", &slices) || slices.t != JV_INT || slices.u.i <= 0 || slices.u.i > 100000)
      return jctx_fail(c, "slice() needs a positive number of slices");
    jargs_get(a, 1, "fill_with", &fill);
    jlist *l;
    if ((rc = jrt_iterate(c, in, &l))) return rc;
    size_t k = (size_t)slices.u.i, per = l->n / k, extra = l->n % k, offset = 0;
    jlist *res = jlist_new(c->a, k);
    if (!res) return jctx_oom(c);
    for (size_t i = 0; i < k; i++) {
      size_t start = offset + i * per;
      if (i < extra) offset++;
      size_t end = offset + (i + 1) * per;
      jlist *part = jlist_new(c->a, end - start + 1);
      if (!part) return jctx_oom(c);
      for (size_t j = start; j < end; j++) part->v[part->n++] = l->v[j];
      if (fill.t != JV_NONE && fill.t != JV_UNDEF && i >= extra) part->v[part->n++] = fill;
      res->v[res->n].t = JV_LIST;
      res->v[res->n++].u.l = part;
    }
    return ret_list(res, out);
  }
  /* the rest work on str(value) */
  jv s;
  if (in.t == JV_UNDEF && !IS("wordcount")) in = jv_cstr("");
  if ((rc = jv_to_str(c->a, in, &s))) return jctx_oom(c);
  if (IS("trim")) {
    jargs_get(a, 0, "chars", &x);
    return do_strip(c, s, x, 3, out);
  }
  if (IS("upper")) return do_case(c, s, 1, out);
  if (IS("lower")) return do_case(c, s, 0, out);
  if (IS("capitalize")) return do_case(c, s, 2, out);
  if (IS("title")) return do_case(c, s, 3, out);
  if (IS("replace")) {
    jv count = jv_none();
    if (!jargs_get(a, 0, "old", &x) || !jargs_get(a, 1, "new", &y))
      return jctx_fail(c, "replace() needs old and new");
    jargs_get(a, 2, "count", &count);
    return do_replace(c, s, x, y, count.t == JV_INT ? count.u.i : -1, out);
  }
  if (IS("indent")) return do_indent(c, s, a, out);
  if (IS("truncate")) {
    jv length = jv_int(255), killwords = jv_bool(false), end = jv_cstr("..."), leeway = jv_int(5);
    jargs_get(a, 0, "length", &length);
    jargs_get(a, 1, "killwords", &killwords);
    jargs_get(a, 2, "end", &end);
    jargs_get(a, 3, "leeway", &leeway);
    if (length.t != JV_INT || end.t != JV_STR || (leeway.t != JV_INT && leeway.t != JV_NONE))
      return jctx_fail(c, "truncate() arguments have the wrong types");
    int64_t n = (int64_t)utf8_len(s.u.s.p, s.u.s.n), endn = (int64_t)utf8_len(end.u.s.p, end.u.s.n);
    int64_t lw = leeway.t == JV_INT ? leeway.u.i : 5;
    if (length.u.i < endn) return jctx_fail(c, "expected length >= %lld, got %lld", (long long)endn, (long long)length.u.i);
    if (n <= length.u.i + lw) { *out = s; return 0; }
    size_t cut = utf8_offset(s.u.s.p, s.u.s.n, (size_t)(length.u.i - endn));
    if (!jv_truthy(killwords)) {
      size_t sp = cut;
      while (sp > 0 && s.u.s.p[sp - 1] != ' ') sp--;
      if (sp > 0) cut = sp - 1; /* rsplit(" ", 1)[0] drops the last partial word and its space */
    }
    jbuf b = {0};
    rc = jbuf_put(&b, s.u.s.p, cut);
    if (rc == 0) rc = jbuf_put(&b, end.u.s.p, end.u.s.n);
    if (rc == 0) rc = jctx_str(c, b.p ? b.p : "", b.n, out);
    else rc = jctx_oom(c);
    jbuf_free(&b);
    return rc;
  }
  if (IS("format")) {
    jv args;
    if (a->n_kw) {
      jdict *d = jdict_new(c->a, (size_t)a->n_kw);
      if (!d) return jctx_oom(c);
      for (int i = 0; i < a->n_kw; i++)
        if (jdict_set(c->a, d, jv_cstr(a->kw_names[i]), a->kw[i])) return jctx_oom(c);
      args.t = JV_DICT;
      args.u.d = d;
    } else {
      jlist *l = jlist_new(c->a, (size_t)a->n_pos);
      if (!l) return jctx_oom(c);
      for (int i = 0; i < a->n_pos; i++) l->v[l->n++] = a->pos[i];
      l->is_tuple = true;
      args.t = JV_LIST;
      args.u.l = l;
    }
    return jb_percent_format(c, s, args, out);
  }
  if (IS("wordcount")) {
    int64_t words = 0;
    bool in_word = false;
    for (size_t i = 0; i < s.u.s.n;) {
      int32_t cp;
      i += cp_at(s.u.s.p, s.u.s.n, i, &cp);
      utf8proc_category_t cat = utf8proc_category(cp);
      bool w = cp == '_' || (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_NO);
      if (w && !in_word) words++;
      in_word = w;
    }
    *out = jv_int(words);
    return 0;
  }
  if (IS("center")) {
    jv width = jv_int(80);
    jargs_get(a, 0, "width", &width);
    int64_t len = (int64_t)utf8_len(s.u.s.p, s.u.s.n), w = width.t == JV_INT ? width.u.i : 80;
    if (w > 4096) w = 4096;
    if (w <= len) { *out = s; return 0; }
    int64_t total = w - len, left = total / 2 + (total & w & 1);
    jbuf b = {0};
    for (int64_t i = 0; i < left && rc == 0; i++) rc = jbuf_putc(&b, ' ');
    if (rc == 0) rc = jbuf_put(&b, s.u.s.p, s.u.s.n);
    for (int64_t i = 0; i < total - left && rc == 0; i++) rc = jbuf_putc(&b, ' ');
    if (rc == 0) rc = jctx_str(c, b.p ? b.p : "", b.n, out);
    jbuf_free(&b);
    return rc;
  }
  if (jinja_filter_exists(name)) return jctx_fail(c, "the '%s' filter is not supported", name);
  return jctx_fail(c, "no filter named '%s'", name);
}

/* ---- tests ---------------------------------------------------------------------------------- */

int jb_test(jctx *c, const char *name, jv v, const jargs *a, bool *out) {
  jv x = jv_undef(NULL);
  bool has = jargs_get(a, 0, NULL, &x);
  if (IS("defined")) *out = v.t != JV_UNDEF;
  else if (IS("undefined")) *out = v.t == JV_UNDEF;
  else if (IS("none")) *out = v.t == JV_NONE;
  else if (IS("string")) *out = v.t == JV_STR;
  else if (IS("number")) *out = jv_is_number(v);
  else if (IS("integer")) *out = v.t == JV_INT;
  else if (IS("float")) *out = v.t == JV_FLOAT;
  else if (IS("boolean")) *out = v.t == JV_BOOL;
  else if (IS("true")) *out = v.t == JV_BOOL && v.u.b;
  else if (IS("false")) *out = v.t == JV_BOOL && !v.u.b;
  else if (IS("mapping")) *out = v.t == JV_DICT;
  else if (IS("iterable")) *out = v.t == JV_LIST || v.t == JV_DICT || v.t == JV_STR || v.t == JV_UNDEF;
  /* jinja2's Undefined has __len__, __iter__ and __call__: a sequence and callable */
  else if (IS("sequence"))
    *out = v.t == JV_LIST || v.t == JV_DICT || v.t == JV_STR || v.t == JV_UNDEF;
  else if (IS("callable"))
    *out = v.t == JV_MACRO || v.t == JV_BUILTIN || v.t == JV_METHOD || v.t == JV_UNDEF;
  else if (IS("lower") || IS("upper")) {
    /* str(value).islower() / .isupper(), for any value (undefined is "") */
    if (v.t != JV_STR && jv_to_str(c->a, v, &v)) return jctx_oom(c);
    jv conv;
    int rc = do_case(c, v, IS("upper") ? 1 : 0, &conv);
    if (rc) return rc;
    bool has_cased = false;
    for (size_t i = 0; i < v.u.s.n;) {
      int32_t cp;
      i += cp_at(v.u.s.p, v.u.s.n, i, &cp);
      if (utf8proc_toupper(cp) != utf8proc_tolower(cp)) has_cased = true;
    }
    *out = has_cased && jv_equal(conv, v);
  } else if (IS("odd") || IS("even")) {
    /* value % 2 == 1 (odd) or == 0 (even), Python's % for any value */
    if (v.t == JV_UNDEF) return jctx_undefined(c, v);
    jv r;
    int rc = jrt_binop(c, JOP_MOD, v, jv_int(2), &r);
    if (rc) return rc;
    *out = jv_equal(r, jv_int(IS("odd") ? 1 : 0));
  } else if (IS("divisibleby")) {
    if (v.t == JV_UNDEF) return jctx_undefined(c, v);
    if (!has || !jv_is_number(x) || !jv_is_number(v)) return jctx_fail(c, "divisibleby needs numbers");
    jv r;
    int rc = jrt_binop(c, JOP_MOD, v, x, &r);
    if (rc) return rc;
    *out = jv_as_double(r) == 0.0;
  } else if (IS("equalto") || IS("eq") || IS("==") || IS("sameas")) {
    if (!has) return jctx_fail(c, "test '%s' needs an argument", name);
    *out = IS("sameas") ? (v.t == x.t && jv_equal(v, x)) : jv_equal(v, x);
  } else if (IS("ne") || IS("!=")) {
    *out = !jv_equal(v, x);
  } else if (IS("lt") || IS("le") || IS("gt") || IS("ge") || IS("lessthan") || IS("greaterthan")) {
    jop op = (IS("lt") || IS("lessthan")) ? JOP_LT : IS("le") ? JOP_LE : (IS("gt") || IS("greaterthan")) ? JOP_GT : JOP_GE;
    jv r;
    int rc = jrt_binop(c, op, v, x, &r);
    if (rc) return rc;
    *out = r.u.b;
  } else if (IS("escaped")) {
    *out = false; /* no autoescaping, so no Markup values */
  } else if (IS("filter") || IS("test")) {
    if (v.t != JV_STR) { *out = false; return 0; }
    char nm[64];
    snprintf(nm, sizeof nm, "%.*s", (int)(v.u.s.n < 63 ? v.u.s.n : 63), v.u.s.p);
    *out = IS("filter") ? jinja_filter_exists(nm) : jinja_test_exists(nm);
  } else if (IS("in")) {
    jv r;
    int rc = jrt_binop(c, JOP_IN, v, x, &r);
    if (rc) return rc;
    *out = r.u.b;
  } else {
    return jctx_fail(c, "no test named '%s'", name);
  }
  return 0;
}

/* ---- methods -------------------------------------------------------------------------------- */

static const char *const STR_METHODS[] = {"strip", "lstrip", "rstrip", "split", "startswith",
                                          "endswith", "replace", "upper", "lower", "title",
                                          "capitalize", "format", "find", "count", "join",
                                          "isdigit", "isspace", "isalpha", "isalnum", NULL};
static const char *const DICT_METHODS[] = {"items", "keys", "values", "get", NULL};
static const char *const LIST_METHODS[] = {"append", "index", "count", NULL};

bool jb_has_method(jv self, const char *name) {
  const char *const *tab = self.t == JV_STR ? STR_METHODS : self.t == JV_DICT ? DICT_METHODS
                           : self.t == JV_LIST ? LIST_METHODS : NULL;
  for (int i = 0; tab && tab[i]; i++)
    if (!strcmp(tab[i], name)) return true;
  return false;
}

static int str_format(jctx *c, jv fmt, const jargs *a, jv *out) {
  jbuf b = {.max = c->lim.max_output_bytes};
  int rc = 0, auto_idx = 0;
  const char *p = fmt.u.s.p;
  size_t n = fmt.u.s.n;
  for (size_t i = 0; i < n && rc == 0; i++) {
    if (p[i] == '{' && i + 1 < n && p[i + 1] == '{') { rc = jbuf_putc(&b, '{'); i++; continue; }
    if (p[i] == '}' && i + 1 < n && p[i + 1] == '}') { rc = jbuf_putc(&b, '}'); i++; continue; }
    if (p[i] != '{') { rc = jbuf_putc(&b, p[i]); continue; }
    const char *close = memchr(p + i, '}', n - i);
    if (!close) { rc = jctx_fail(c, "Single '{' encountered in format string"); break; }
    size_t fl = (size_t)(close - (p + i + 1));
    char field[64];
    snprintf(field, sizeof field, "%.*s", (int)(fl < 63 ? fl : 63), p + i + 1);
    jv v;
    bool ok;
    if (field[0] == 0) ok = jargs_get(a, auto_idx++, NULL, &v);
    else if (field[0] >= '0' && field[0] <= '9') ok = jargs_get(a, atoi(field), NULL, &v);
    else ok = jargs_get(a, -1, field, &v);
    if (!ok) { rc = jctx_fail(c, "format(): missing argument for {%s}", field); break; }
    rc = jv_write_str(&b, v);
    i += fl + 1;
  }
  if (rc == 0) rc = jctx_str(c, b.p ? b.p : "", b.n, out);
  else if (rc == QV_ELIMIT) rc = jctx_limit(c, "format() result exceeds the output size limit");
  else if (rc != QV_ETEMPLATE) rc = jctx_oom(c);
  jbuf_free(&b);
  return rc;
}

static bool prefix_match(jv s, jv pre, bool suffix) {
  if (pre.t != JV_STR || pre.u.s.n > s.u.s.n) return false;
  const char *at = suffix ? s.u.s.p + s.u.s.n - pre.u.s.n : s.u.s.p;
  return memcmp(at, pre.u.s.p, pre.u.s.n) == 0;
}

static int str_method(jctx *c, jv s, const char *name, const jargs *a, jv *out) {
  jv x = jv_none(), y = jv_none(), z = jv_none();
  jargs_get(a, 0, NULL, &x);
  jargs_get(a, 1, NULL, &y);
  jargs_get(a, 2, NULL, &z);
  if (IS("strip")) return do_strip(c, s, x, 3, out);
  if (IS("lstrip")) return do_strip(c, s, x, 1, out);
  if (IS("rstrip")) return do_strip(c, s, x, 2, out);
  if (IS("upper")) return do_case(c, s, 1, out);
  if (IS("lower")) return do_case(c, s, 0, out);
  if (IS("title")) return do_case(c, s, 4, out);
  if (IS("capitalize")) return do_case(c, s, 2, out);
  if (IS("format")) return str_format(c, s, a, out);
  if (IS("split")) {
    jargs_get(a, 0, "sep", &x);
    jv maxs = jv_int(-1);
    jargs_get(a, 1, "maxsplit", &maxs);
    return do_split(c, s, x, maxs.t == JV_INT ? maxs.u.i : -1, out);
  }
  if (IS("startswith") || IS("endswith")) {
    bool suffix = IS("endswith"), r = false;
    if (x.t == JV_LIST) {
      for (size_t i = 0; i < x.u.l->n && !r; i++) r = prefix_match(s, x.u.l->v[i], suffix);
    } else if (x.t == JV_STR) {
      r = prefix_match(s, x, suffix);
    } else {
      return jctx_fail(c, "%s first arg must be str or a tuple of str", name);
    }
    *out = jv_bool(r);
    return 0;
  }
  if (IS("replace")) return do_replace(c, s, x, y, z.t == JV_INT ? z.u.i : -1, out);
  if (IS("find") || IS("count")) {
    if (x.t != JV_STR) return jctx_fail(c, "%s() argument must be str", name);
    int64_t found = -1, cnt = 0;
    for (size_t i = 0; i + x.u.s.n <= s.u.s.n; i++) {
      if (memcmp(s.u.s.p + i, x.u.s.p, x.u.s.n) == 0) {
        if (found < 0) found = (int64_t)utf8_len(s.u.s.p, i);
        cnt++;
        if (x.u.s.n) i += x.u.s.n - 1;
      }
    }
    *out = jv_int(IS("find") ? found : cnt);
    return 0;
  }
  if (IS("join")) return do_join(c, x, s, jv_none(), out);
  if (IS("isdigit") || IS("isspace") || IS("isalpha") || IS("isalnum")) {
    bool r = s.u.s.n > 0;
    for (size_t i = 0; i < s.u.s.n && r;) {
      int32_t cp;
      i += cp_at(s.u.s.p, s.u.s.n, i, &cp);
      utf8proc_category_t cat = utf8proc_category(cp);
      bool alpha = cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO;
      bool digit = cat == UTF8PROC_CATEGORY_ND;
      if (IS("isdigit")) r = digit;
      else if (IS("isspace")) r = py_space(cp);
      else if (IS("isalpha")) r = alpha;
      else r = alpha || digit || cat == UTF8PROC_CATEGORY_NL || cat == UTF8PROC_CATEGORY_NO;
    }
    *out = jv_bool(r);
    return 0;
  }
  return jctx_fail(c, "'str' object has no attribute '%s'", name);
}

int jb_method(jctx *c, jv self, const char *name, const jargs *a, jv *out) {
  if (self.t == JV_STR) return str_method(c, self, name, a, out);
  if (self.t == JV_LOOP && IS("cycle")) {
    if (a->n_pos == 0) return jctx_fail(c, "no items for cycling given");
    *out = a->pos[self.u.loop->i % (size_t)a->n_pos];
    return 0;
  }
  jv x = jv_none(), y = jv_none();
  jargs_get(a, 0, NULL, &x);
  jargs_get(a, 1, NULL, &y);
  if (self.t == JV_DICT) {
    if (IS("items")) return items_of(c, self, out);
    if (IS("keys") || IS("values")) {
      jlist *l = jlist_new(c->a, self.u.d->n);
      if (!l) return jctx_oom(c);
      for (size_t i = 0; i < self.u.d->n; i++)
        l->v[l->n++] = IS("keys") ? self.u.d->e[i].key : self.u.d->e[i].val;
      return ret_list(l, out);
    }
    if (IS("get")) {
      jv *v = jdict_get(self.u.d, x);
      *out = v ? *v : y;
      return 0;
    }
  }
  if (self.t == JV_LIST) {
    if (IS("append")) /* transformers renders in jinja2's immutable sandbox */
      return jctx_fail(c, "access to attribute 'append' of 'list' object is unsafe.");
    if (IS("index") || IS("count")) {
      int64_t cnt = 0, idx = -1;
      for (size_t i = 0; i < self.u.l->n; i++)
        if (jv_equal(self.u.l->v[i], x)) {
          if (idx < 0) idx = (int64_t)i;
          cnt++;
        }
      if (IS("index") && idx < 0) return jctx_fail(c, "value is not in list");
      *out = jv_int(IS("index") ? idx : cnt);
      return 0;
    }
  }
  return jctx_fail(c, "'%s' object has no attribute '%s'", jv_type_name(self), name);
}

/* ---- globals -------------------------------------------------------------------------------- */

enum { G_RANGE, G_DICT, G_NAMESPACE, G_RAISE, G_STRFTIME, G_COUNT };
static const char *const GLOBALS[G_COUNT] = {"range", "dict", "namespace", "raise_exception",
                                             "strftime_now"};

int jb_global_lookup(const char *name) {
  for (int i = 0; i < G_COUNT; i++)
    if (!strcmp(GLOBALS[i], name)) return i;
  return -1;
}

int jb_global_call(jctx *c, int id, const jargs *a, jv *out) {
  switch (id) {
    case G_RANGE: {
      int64_t v[3] = {0, 0, 1};
      if (a->n_pos < 1 || a->n_pos > 3) return jctx_fail(c, "range expected 1 to 3 arguments");
      for (int i = 0; i < a->n_pos; i++) {
        if (a->pos[i].t != JV_INT && a->pos[i].t != JV_BOOL)
          return jctx_fail(c, "'%s' object cannot be interpreted as an integer", jv_type_name(a->pos[i]));
      }
      if (a->n_pos == 1) v[1] = a->pos[0].u.i;
      else for (int i = 0; i < a->n_pos; i++) v[i] = a->pos[i].t == JV_BOOL ? a->pos[i].u.b : a->pos[i].u.i;
      if (v[2] == 0) return jctx_fail(c, "range() arg 3 must not be zero");
      double count = ceil(((double)v[1] - (double)v[0]) / (double)v[2]);
      if (count < 0) count = 0;
      if (count > (double)c->lim.max_loop_iters) return jctx_limit(c, "range() exceeds the loop iteration limit");
      jlist *l = jlist_new(c->a, (size_t)count);
      if (!l) return jctx_oom(c);
      for (int64_t x = v[0]; v[2] > 0 ? x < v[1] : x > v[1]; x += v[2]) {
        l->v[l->n++] = jv_int(x);
        if (l->n >= (size_t)count) break;
      }
      return ret_list(l, out);
    }
    case G_DICT: case G_NAMESPACE: {
      jdict *d = jdict_new(c->a, 0);
      if (!d) return jctx_oom(c);
      for (int i = 0; i < a->n_pos; i++) {
        if (a->pos[i].t != JV_DICT) return jctx_fail(c, "%s() positional argument must be a mapping", GLOBALS[id]);
        for (size_t k = 0; k < a->pos[i].u.d->n; k++)
          if (jdict_set(c->a, d, a->pos[i].u.d->e[k].key, a->pos[i].u.d->e[k].val)) return jctx_oom(c);
      }
      for (int i = 0; i < a->n_kw; i++)
        if (jdict_set(c->a, d, jv_cstr(a->kw_names[i]), a->kw[i])) return jctx_oom(c);
      /* transformers' namespace refuses underscore-prefixed attributes */
      for (size_t k = 0; id == G_NAMESPACE && k < d->n; k++)
        if (d->e[k].key.t == JV_STR && d->e[k].key.u.s.n && d->e[k].key.u.s.p[0] == '_')
          return jctx_fail(c, "namespace attributes cannot start with an underscore");
      out->t = id == G_DICT ? JV_DICT : JV_NS;
      out->u.d = d;
      return 0;
    }
    case G_RAISE: {
      jbuf b = {.max = 400};
      jv msg = jv_cstr("");
      jargs_get(a, 0, NULL, &msg);
      jv_write_str(&b, msg);
      int rc = qv_error_set(c->err, QV_ETEMPLATE, "%s", b.p ? b.p : "");
      jbuf_free(&b);
      return rc;
    }
    case G_STRFTIME: {
      jv fmt;
      if (!jargs_get(a, 0, NULL, &fmt) || fmt.t != JV_STR) return jctx_fail(c, "strftime_now needs a format string");
      char f[128], buf[256];
      snprintf(f, sizeof f, "%.*s", (int)(fmt.u.s.n < 127 ? fmt.u.s.n : 127), fmt.u.s.p);
      time_t now = time(NULL);
      struct tm tm;
      localtime_r(&now, &tm);
      size_t n = strftime(buf, sizeof buf, f, &tm);
      return jctx_str(c, buf, n, out);
    }
  }
  return jctx_fail(c, "unknown global function");
}
