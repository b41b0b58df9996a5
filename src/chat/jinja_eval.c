/* Jinja evaluator: walks the AST of jinja_parse.c with Python/jinja2 semantics.
 *
 * Scoping follows jinja2: `set` writes the current scope; every for-loop iteration and every
 * macro call opens a child scope (so a `set` inside a loop does not leak out, which is why
 * templates use namespace() objects); `if` opens none. Undefined values print as "", iterate as
 * empty and are falsy, but using them in arithmetic or taking their attributes is an error, as
 * with jinja2's default Undefined. Every render is bounded: nesting depth, total loop
 * iterations, output bytes and arena bytes each fail with QV_ELIMIT and a message. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat/jinja_rt.h"

struct jmacro {
  const jnode *def;   /* JN_MACRO, or JN_CALL_BLOCK for a `caller` */
  jscope *closure;    /* scope the macro was defined in */
  jv caller;          /* the caller macro for call blocks, else undefined */
};

static int eval(jctx *c, jscope *s, const jnode *n, jv *out);
static int exec_body(jctx *c, jscope *s, const jnode *body);
static int loop_attr(jctx *c, jv lv, const char *name, jv *out);

/* ---- context helpers ------------------------------------------------------------------------ */

int jctx_fail(jctx *c, const char *fmt, ...) {
  char msg[400];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return qv_error_set(c->err, QV_ETEMPLATE, "template error (line %d): %s", c->line, msg);
}

int jctx_limit(jctx *c, const char *what) {
  return qv_error_set(c->err, QV_ELIMIT, "template error (line %d): %s", c->line, what);
}

int jctx_oom(jctx *c) {
  if (c->a->cap_bytes && c->a->used_bytes + 65536 >= c->a->cap_bytes)
    return jctx_limit(c, "render memory limit exceeded");
  return qv_error_set(c->err, QV_ENOMEM, "out of memory while rendering template");
}

int jctx_undefined(jctx *c, jv u) {
  return jctx_fail(c, "%s", u.u.undef_name ? u.u.undef_name : "value is undefined");
}

int jctx_tick(jctx *c, long n) {
  c->iters += n;
  if (c->iters > c->lim.max_loop_iters) return jctx_limit(c, "loop iteration limit exceeded");
  return 0;
}

int jctx_str(jctx *c, const char *s, size_t n, jv *out) {
  char *p = jarena_strndup(c->a, s, n);
  if (!p) return jctx_oom(c);
  *out = jv_str(p, n);
  return 0;
}

bool jargs_get(const jargs *a, int i, const char *name, jv *out) {
  if (i >= 0 && i < a->n_pos) {
    *out = a->pos[i];
    return true;
  }
  for (int k = 0; name && k < a->n_kw; k++)
    if (!strcmp(a->kw_names[k], name)) {
      *out = a->kw[k];
      return true;
    }
  return false;
}

static int out_put(jctx *c, const char *s, size_t n) {
  int rc = jbuf_put(c->out, s, n);
  if (rc == QV_ELIMIT) return jctx_limit(c, "output size limit exceeded");
  if (rc) return jctx_oom(c);
  return 0;
}

static int undef_msg(jctx *c, jv *out, const char *fmt, const char *a, const char *b) {
  char msg[300];
  snprintf(msg, sizeof msg, fmt, a, b);
  char *p = jarena_strndup(c->a, msg, strlen(msg));
  if (!p) return jctx_oom(c);
  *out = jv_undef(p);
  return 0;
}

/* ---- scopes --------------------------------------------------------------------------------- */

static jscope *scope_new(jctx *c, jscope *parent) {
  jscope *s = jarena_alloc(c->a, sizeof(*s));
  if (!s) return NULL;
  s->parent = parent;
  s->vars = jdict_new(c->a, 0);
  return s->vars ? s : NULL;
}

static jv *scope_find(jscope *s, const char *name) {
  size_t n = strlen(name);
  for (; s; s = s->parent) {
    jv *v = jdict_get_str(s->vars, name, n);
    if (v) return v;
  }
  return NULL;
}

static int scope_set(jctx *c, jscope *s, const char *name, jv v) {
  if (jdict_set(c->a, s->vars, jv_cstr(name), v)) return jctx_oom(c);
  return 0;
}

/* ---- attribute / item access ---------------------------------------------------------------- */

static int make_method(jctx *c, jv self, const char *name, jv *out) {
  jmethod *m = jarena_alloc(c->a, sizeof(*m));
  if (!m) return jctx_oom(c);
  m->self = self;
  m->name = name;
  out->t = JV_METHOD;
  out->u.meth = m;
  return 0;
}

int jrt_getattr(jctx *c, jv obj, const char *name, size_t n, jv *out) {
  switch (obj.t) {
    case JV_UNDEF: return jctx_undefined(c, obj);
    case JV_DICT: case JV_STR: case JV_LIST:
      if (obj.t == JV_LIST && obj.u.l->is_group &&
          (!strcmp(name, "grouper") || !strcmp(name, "list"))) {
        *out = obj.u.l->v[name[0] == 'l'];
        return 0;
      }
      if (jb_has_method(obj, name)) return make_method(c, obj, name, out);
      if (obj.t == JV_DICT) {
        jv *v = jdict_get_str(obj.u.d, name, n);
        if (v) {
          *out = *v;
          return 0;
        }
      }
      break;
    case JV_LOOP:
      return loop_attr(c, obj, name, out);
    case JV_NS: {
      jv *v = jdict_get_str(obj.u.d, name, n);
      if (v) {
        *out = *v;
        return 0;
      }
      break;
    }
    default: break;
  }
  char tname[64];
  snprintf(tname, sizeof tname, "%s", jv_type_name(obj));
  return undef_msg(c, out, "'%s object' has no attribute '%s'", tname, name);
}

int jrt_getitem(jctx *c, jv obj, jv key, jv *out) {
  if (obj.t == JV_UNDEF) return jctx_undefined(c, obj);
  if (obj.t == JV_DICT || obj.t == JV_NS) {
    jv *v = jdict_get(obj.u.d, key);
    if (v) {
      *out = *v;
      return 0;
    }
  } else if ((obj.t == JV_LIST || obj.t == JV_STR) && (key.t == JV_INT || key.t == JV_BOOL)) {
    int64_t i = key.t == JV_BOOL ? key.u.b : key.u.i;
    size_t len = obj.t == JV_LIST ? obj.u.l->n : utf8_len(obj.u.s.p, obj.u.s.n);
    if (i < 0) i += (int64_t)len;
    if (i >= 0 && (uint64_t)i < len) {
      if (obj.t == JV_LIST) {
        *out = obj.u.l->v[i];
      } else {
        size_t a = utf8_offset(obj.u.s.p, obj.u.s.n, (size_t)i);
        size_t b = utf8_offset(obj.u.s.p, obj.u.s.n, (size_t)i + 1);
        *out = jv_str(obj.u.s.p + a, b - a);
      }
      return 0;
    }
  }
  if (key.t == JV_STR && obj.t != JV_NS) {
    char *name = jarena_strndup(c->a, key.u.s.p, key.u.s.n);
    if (!name) return jctx_oom(c);
    if (obj.t != JV_DICT) return jrt_getattr(c, obj, name, key.u.s.n, out);
    if (jb_has_method(obj, name)) return make_method(c, obj, name, out);
    return undef_msg(c, out, "'%s object' has no attribute '%s'", "dict", name);
  }
  return undef_msg(c, out, "'%s object' has no item %s", jv_type_name(obj), "(index)");
}

/* Python slice index normalisation (CPython's PySlice_AdjustIndices). */
static int slice_indices(jctx *c, const jnode *n, jscope *s, int64_t len, int64_t *start,
                         int64_t *stop, int64_t *step) {
  jv parts[3];
  for (int k = 0; k < 3; k++) {
    parts[k] = jv_none();
    if (n->items[k]) {
      int rc = eval(c, s, n->items[k], &parts[k]);
      if (rc) return rc;
      if (parts[k].t != JV_NONE && parts[k].t != JV_INT && parts[k].t != JV_BOOL)
        return jctx_fail(c, "slice indices must be integers or None");
    }
  }
  *step = parts[2].t == JV_NONE ? 1 : (parts[2].t == JV_BOOL ? parts[2].u.b : parts[2].u.i);
  if (*step == 0) return jctx_fail(c, "slice step cannot be zero");
  int64_t lo = *step < 0 ? -1 : 0, hi = *step < 0 ? len - 1 : len;
  for (int k = 0; k < 2; k++) {
    int64_t *dst = k == 0 ? start : stop;
    if (parts[k].t == JV_NONE) {
      *dst = (k == 0) == (*step > 0) ? lo : hi;
      continue;
    }
    int64_t v = parts[k].t == JV_BOOL ? parts[k].u.b : parts[k].u.i;
    if (v < 0) {
      v += len;
      if (v < 0) v = lo;
    } else if (v > hi) {
      v = hi;
    }
    *dst = v;
  }
  return 0;
}

static int eval_slice(jctx *c, jscope *s, const jnode *n, jv *out) {
  jv obj;
  int rc = eval(c, s, n->a, &obj);
  if (rc) return rc;
  if (obj.t == JV_UNDEF) return jctx_undefined(c, obj);
  if (obj.t != JV_LIST && obj.t != JV_STR)
    return jctx_fail(c, "'%s' object is not subscriptable", jv_type_name(obj));
  size_t *offs = NULL;
  int64_t len;
  if (obj.t == JV_LIST) {
    len = (int64_t)obj.u.l->n;
  } else {
    len = (int64_t)utf8_len(obj.u.s.p, obj.u.s.n);
    offs = jarena_alloc(c->a, ((size_t)len + 1) * sizeof(size_t));
    if (!offs) return jctx_oom(c);
    size_t k = 0;
    for (size_t i = 0; i < obj.u.s.n; i++)
      if (((unsigned char)obj.u.s.p[i] & 0xC0) != 0x80) offs[k++] = i;
    offs[k] = obj.u.s.n;
  }
  int64_t start = 0, stop = 0, step = 1;
  rc = slice_indices(c, n, s, len, &start, &stop, &step);
  if (rc) return rc;
  if (obj.t == JV_STR && step == 1) {
    if (stop < start) stop = start;
    *out = jv_str(obj.u.s.p + offs[start], offs[stop] - offs[start]);
    return 0;
  }
  jlist *l = obj.t == JV_LIST ? jlist_new(c->a, 0) : NULL;
  jbuf b = {0};
  for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
    if (obj.t == JV_LIST) {
      if (jlist_push(c->a, l, obj.u.l->v[i])) return jctx_oom(c);
    } else if (jbuf_put(&b, obj.u.s.p + offs[i], offs[i + 1] - offs[i])) {
      jbuf_free(&b);
      return jctx_oom(c);
    }
  }
  if (obj.t == JV_LIST) {
    if (!l) return jctx_oom(c);
    l->is_tuple = obj.u.l->is_tuple;
    out->t = JV_LIST;
    out->u.l = l;
    return 0;
  }
  rc = jctx_str(c, b.p ? b.p : "", b.n, out);
  jbuf_free(&b);
  return rc;
}

/* ---- calls ---------------------------------------------------------------------------------- */

static int eval_args(jctx *c, jscope *s, const jnode *n, jargs *a) {
  memset(a, 0, sizeof(*a));
  if (n->n_items) {
    a->pos = jarena_alloc(c->a, (size_t)n->n_items * sizeof(jv));
    if (!a->pos) return jctx_oom(c);
  }
  if (n->n_items2) {
    a->kw = jarena_alloc(c->a, (size_t)n->n_items2 * sizeof(jv));
    if (!a->kw) return jctx_oom(c);
  }
  for (int i = 0; i < n->n_items; i++) {
    int rc = eval(c, s, n->items[i], &a->pos[i]);
    if (rc) return rc;
  }
  for (int i = 0; i < n->n_items2; i++) {
    int rc = eval(c, s, n->items2[i], &a->kw[i]);
    if (rc) return rc;
  }
  a->n_pos = n->n_items;
  a->n_kw = n->n_items2;
  a->kw_names = n->names;
  return 0;
}

static int call_macro(jctx *c, jmacro *m, const jargs *a, jv *out) {
  const jnode *def = m->def;
  if (++c->depth > c->lim.max_depth) {
    c->depth--;
    return jctx_limit(c, "macro recursion depth limit exceeded");
  }
  jscope *s = scope_new(c, m->closure);
  if (!s) return jctx_oom(c);
  if (a->n_pos > def->n_names)
    return jctx_fail(c, "macro '%s' takes not more than %d argument(s)",
                     def->name ? def->name : "caller", def->n_names);
  for (int k = 0; k < a->n_kw; k++) {
    bool known = false;
    for (int i = 0; i < def->n_names; i++)
      if (!strcmp(def->names[i], a->kw_names[k])) known = true;
    if (!known)
      return jctx_fail(c, "macro '%s' takes no keyword argument '%s'",
                       def->name ? def->name : "caller", a->kw_names[k]);
  }
  for (int i = 0; i < def->n_names; i++) {
    jv v;
    int rc = 0;
    if (!jargs_get(a, i, def->names[i], &v)) {
      if (def->items[i]) rc = eval(c, s, def->items[i], &v);
      else {
        rc = undef_msg(c, &v, "'%s' is undefined%s", def->names[i], "");
      }
    }
    if (rc == 0) rc = scope_set(c, s, def->names[i], v);
    if (rc) return rc;
  }
  if (m->caller.t == JV_MACRO) {
    int rc = scope_set(c, s, "caller", m->caller);
    if (rc) return rc;
  }
  jbuf buf = {.max = c->lim.max_output_bytes};
  jbuf *saved = c->out;
  c->out = &buf;
  int rc = exec_body(c, s, def->body);
  c->out = saved;
  c->ctrl = 0;
  if (rc == 0) rc = jctx_str(c, buf.p ? buf.p : "", buf.n, out);
  jbuf_free(&buf);
  c->depth--;
  return rc;
}

static int eval_call(jctx *c, jscope *s, const jnode *n, jv caller, jv *out) {
  jv fn;
  int rc = eval(c, s, n->a, &fn);
  if (rc) return rc;
  jargs a;
  rc = eval_args(c, s, n, &a);
  if (rc) return rc;
  c->line = n->line;
  switch (fn.t) {
    case JV_MACRO: {
      jmacro m = *fn.u.m;
      m.caller = caller;
      return call_macro(c, &m, &a, out);
    }
    case JV_BUILTIN: return jb_global_call(c, fn.u.builtin, &a, out);
    case JV_METHOD: return jb_method(c, fn.u.meth->self, fn.u.meth->name, &a, out);
    case JV_UNDEF: return jctx_undefined(c, fn);
    default: return jctx_fail(c, "'%s' object is not callable", jv_type_name(fn));
  }
}

/* ---- operators ------------------------------------------------------------------------------ */

static int64_t ival(jv v) { return v.t == JV_BOOL ? (int64_t)v.u.b : v.u.i; }
static bool is_intlike(jv v) { return v.t == JV_INT || v.t == JV_BOOL; }

static int repeat(jctx *c, jv seq, int64_t times, jv *out) {
  if (times < 0) times = 0;
  if (seq.t == JV_STR) {
    if (seq.u.s.n && (uint64_t)times > c->lim.max_output_bytes / seq.u.s.n)
      return jctx_limit(c, "string repetition exceeds the output size limit");
    jbuf b = {0};
    for (int64_t i = 0; i < times; i++)
      if (jbuf_put(&b, seq.u.s.p, seq.u.s.n)) {
        jbuf_free(&b);
        return jctx_oom(c);
      }
    int rc = jctx_str(c, b.p ? b.p : "", b.n, out);
    jbuf_free(&b);
    return rc;
  }
  if (seq.u.l->n && (uint64_t)times > (uint64_t)c->lim.max_loop_iters / seq.u.l->n)
    return jctx_limit(c, "list repetition exceeds the loop iteration limit");
  jlist *l = jlist_new(c->a, 0);
  if (!l) return jctx_oom(c);
  for (int64_t i = 0; i < times; i++)
    for (size_t k = 0; k < seq.u.l->n; k++)
      if (jlist_push(c->a, l, seq.u.l->v[k])) return jctx_oom(c);
  out->t = JV_LIST;
  out->u.l = l;
  return 0;
}

static int type_error(jctx *c, const char *op, jv a, jv b) {
  return jctx_fail(c, "unsupported operand type(s) for %s: '%s' and '%s'", op, jv_type_name(a),
                   jv_type_name(b));
}

int jrt_binop(jctx *c, jop op, jv a, jv b, jv *out) {
  static const char *const names[] = {"+", "-", "*", "/", "//", "%", "**"};
  if (op <= JOP_POW) {
    if (a.t == JV_UNDEF) return jctx_undefined(c, a);
    if (b.t == JV_UNDEF) return jctx_undefined(c, b);
  }
  bool num = jv_is_number(a) && jv_is_number(b);
  bool ints = is_intlike(a) && is_intlike(b);
  int64_t r;
  switch (op) {
    case JOP_ADD:
      if (ints) {
        if (__builtin_add_overflow(ival(a), ival(b), &r)) return jctx_fail(c, "integer overflow");
        *out = jv_int(r);
        return 0;
      }
      if (num) { *out = jv_float(jv_as_double(a) + jv_as_double(b)); return 0; }
      if (a.t == JV_STR && b.t == JV_STR) {
        if (a.u.s.n + b.u.s.n > c->lim.max_output_bytes)
          return jctx_limit(c, "string exceeds the output size limit");
        char *p = jarena_alloc(c->a, a.u.s.n + b.u.s.n + 1);
        if (!p) return jctx_oom(c);
        memcpy(p, a.u.s.p, a.u.s.n);
        memcpy(p + a.u.s.n, b.u.s.p, b.u.s.n);
        *out = jv_str(p, a.u.s.n + b.u.s.n);
        return 0;
      }
      if (a.t == JV_LIST && b.t == JV_LIST && a.u.l->is_tuple == b.u.l->is_tuple) {
        jlist *l = jlist_new(c->a, a.u.l->n + b.u.l->n);
        if (!l) return jctx_oom(c);
        for (size_t i = 0; i < a.u.l->n; i++) l->v[l->n++] = a.u.l->v[i];
        for (size_t i = 0; i < b.u.l->n; i++) l->v[l->n++] = b.u.l->v[i];
        l->is_tuple = a.u.l->is_tuple;
        out->t = JV_LIST;
        out->u.l = l;
        return 0;
      }
      if (a.t == JV_STR || b.t == JV_STR)
        return jctx_fail(c, "can only concatenate str (not \"%s\") to str",
                         jv_type_name(a.t == JV_STR ? b : a));
      return type_error(c, "+", a, b);
    case JOP_SUB:
      if (ints) {
        if (__builtin_sub_overflow(ival(a), ival(b), &r)) return jctx_fail(c, "integer overflow");
        *out = jv_int(r);
        return 0;
      }
      if (num) { *out = jv_float(jv_as_double(a) - jv_as_double(b)); return 0; }
      return type_error(c, "-", a, b);
    case JOP_MUL:
      if (ints) {
        if (__builtin_mul_overflow(ival(a), ival(b), &r)) return jctx_fail(c, "integer overflow");
        *out = jv_int(r);
        return 0;
      }
      if (num) { *out = jv_float(jv_as_double(a) * jv_as_double(b)); return 0; }
      if ((a.t == JV_STR || a.t == JV_LIST) && is_intlike(b)) return repeat(c, a, ival(b), out);
      if ((b.t == JV_STR || b.t == JV_LIST) && is_intlike(a)) return repeat(c, b, ival(a), out);
      return type_error(c, "*", a, b);
    case JOP_DIV:
      if (!num) return type_error(c, "/", a, b);
      if (jv_as_double(b) == 0.0) return jctx_fail(c, "division by zero");
      *out = jv_float(jv_as_double(a) / jv_as_double(b));
      return 0;
    case JOP_FLOORDIV: case JOP_MOD:
      if (!num) {
        if (op == JOP_MOD && a.t == JV_STR) return jb_percent_format(c, a, b, out);
        return type_error(c, names[op], a, b);
      }
      if (ints) {
        int64_t x = ival(a), y = ival(b);
        if (y == 0) return jctx_fail(c, "integer division or modulo by zero");
        if (x == INT64_MIN && y == -1) return jctx_fail(c, "integer overflow");
        int64_t q = x / y, m = x % y;
        if (m != 0 && ((m < 0) != (y < 0))) { q--; m += y; }
        *out = jv_int(op == JOP_FLOORDIV ? q : m);
        return 0;
      } else {
        double x = jv_as_double(a), y = jv_as_double(b);
        if (y == 0.0) return jctx_fail(c, "float division by zero");
        double m = fmod(x, y);
        if (m != 0 && ((m < 0) != (y < 0))) m += y;
        *out = jv_float(op == JOP_FLOORDIV ? floor(x / y) : m);
        return 0;
      }
    case JOP_POW:
      if (!num) return type_error(c, "** or pow()", a, b);
      if (ints && ival(b) >= 0) {
        int64_t base = ival(a), e = ival(b), acc = 1;
        for (int64_t i = 0; i < e; i++) {
          if (__builtin_mul_overflow(acc, base, &acc)) return jctx_fail(c, "integer overflow");
          if (acc == 0 || acc == 1) break;
          if (acc == -1 && base == -1) { acc = ((e - i - 1) % 2) ? 1 : -1; break; }
        }
        *out = jv_int(acc);
        return 0;
      }
      *out = jv_float(pow(jv_as_double(a), jv_as_double(b)));
      return 0;
    case JOP_EQ: *out = jv_bool(jv_equal(a, b)); return 0;
    case JOP_NE: *out = jv_bool(!jv_equal(a, b)); return 0;
    case JOP_LT: case JOP_LE: case JOP_GT: case JOP_GE: {
      static const char *const cmp_names[] = {"<", "<=", ">", ">="};
      int cmp;
      if (a.t == JV_UNDEF) return jctx_undefined(c, a);
      if (b.t == JV_UNDEF) return jctx_undefined(c, b);
      if (jv_compare(a, b, &cmp))
        return jctx_fail(c, "'%s' not supported between instances of '%s' and '%s'",
                         cmp_names[op - JOP_LT], jv_type_name(a), jv_type_name(b));
      bool res = op == JOP_LT ? cmp < 0 : op == JOP_LE ? cmp <= 0 : op == JOP_GT ? cmp > 0 : cmp >= 0;
      *out = jv_bool(res);
      return 0;
    }
    case JOP_IN: case JOP_NOTIN: {
      bool found = false;
      if (b.t == JV_STR) {
        if (a.t != JV_STR)
          return jctx_fail(c, "'in <string>' requires string as left operand, not %s", jv_type_name(a));
        if (a.u.s.n == 0) found = true;
        for (size_t i = 0; !found && a.u.s.n <= b.u.s.n && i + a.u.s.n <= b.u.s.n; i++)
          if (memcmp(b.u.s.p + i, a.u.s.p, a.u.s.n) == 0) found = true;
      } else if (b.t == JV_LIST) {
        for (size_t i = 0; i < b.u.l->n && !found; i++) found = jv_equal(a, b.u.l->v[i]);
      } else if (b.t == JV_DICT) {
        found = jdict_get(b.u.d, a) != NULL;
      } else if (b.t != JV_UNDEF) {
        return jctx_fail(c, "argument of type '%s' is not iterable", jv_type_name(b));
      }
      *out = jv_bool(op == JOP_IN ? found : !found);
      return 0;
    }
  }
  return jctx_fail(c, "unknown operator");
}

int jrt_iterate(jctx *c, jv v, jlist **out) {
  jlist *l = NULL;
  switch (v.t) {
    case JV_UNDEF:
      l = jlist_new(c->a, 0);
      break;
    case JV_LIST:
      *out = v.u.l;
      return 0;
    case JV_DICT:
      l = jlist_new(c->a, v.u.d->n);
      if (!l) return jctx_oom(c);
      for (size_t i = 0; i < v.u.d->n; i++) l->v[l->n++] = v.u.d->e[i].key;
      break;
    case JV_STR: {
      l = jlist_new(c->a, utf8_len(v.u.s.p, v.u.s.n));
      if (!l) return jctx_oom(c);
      size_t i = 0;
      while (i < v.u.s.n) {
        size_t j = i + 1;
        while (j < v.u.s.n && ((unsigned char)v.u.s.p[j] & 0xC0) == 0x80) j++;
        l->v[l->n++] = jv_str(v.u.s.p + i, j - i);
        i = j;
      }
      break;
    }
    default:
      return jctx_fail(c, "'%s' object is not iterable", jv_type_name(v));
  }
  if (!l) return jctx_oom(c);
  *out = l;
  return 0;
}

/* ---- expressions ---------------------------------------------------------------------------- */

static int eval_filter_node(jctx *c, jscope *s, const jnode *n, jv input_for_null, jv *out) {
  jv in = input_for_null;
  int rc = n->a ? eval(c, s, n->a, &in) : 0;
  if (rc) return rc;
  jargs a;
  rc = eval_args(c, s, n, &a);
  if (rc) return rc;
  c->line = n->line;
  if (n->kind == JN_TEST) {
    bool r;
    rc = jb_test(c, n->name, in, &a, &r);
    if (rc == 0) *out = jv_bool(n->negated ? !r : r);
    return rc;
  }
  return jb_filter(c, n->name, in, &a, out);
}

/* Applies a filter chain whose innermost input slot is NULL to value. */
static int apply_chain(jctx *c, jscope *s, const jnode *chain, jv value, jv *out) {
  if (!chain) {
    *out = value;
    return 0;
  }
  jv in = value;
  if (chain->a) {
    int rc = apply_chain(c, s, chain->a, value, &in);
    if (rc) return rc;
  }
  jnode tmp = *chain;
  tmp.a = NULL;
  return eval_filter_node(c, s, &tmp, in, out);
}

static int make_seq(jctx *c, jscope *s, const jnode *n, bool tuple, jv *out) {
  jlist *l = jlist_new(c->a, (size_t)n->n_items);
  if (!l) return jctx_oom(c);
  for (int i = 0; i < n->n_items; i++) {
    int rc = eval(c, s, n->items[i], &l->v[i]);
    if (rc) return rc;
  }
  l->n = (size_t)n->n_items;
  l->is_tuple = tuple;
  out->t = JV_LIST;
  out->u.l = l;
  return 0;
}

/* Expression evaluation shares the nesting budget with statements and macro calls: a long
 * operator chain (`a + b + ...`) or filter chain is as deep as nested parentheses. */
static int eval_node(jctx *c, jscope *s, const jnode *n, jv *out);

static int eval(jctx *c, jscope *s, const jnode *n, jv *out) {
  if (++c->depth > c->lim.max_depth) {
    c->depth--;
    return jctx_limit(c, "expression nesting depth limit exceeded");
  }
  int rc = eval_node(c, s, n, out);
  c->depth--;
  return rc;
}

static int eval_node(jctx *c, jscope *s, const jnode *n, jv *out) {
  int rc = 0;
  jv a, b;
  switch (n->kind) {
    case JN_CONST:
      *out = n->value;
      return 0;
    case JN_NAME: {
      jv *v = scope_find(s, n->name);
      if (v) {
        *out = *v;
        return 0;
      }
      int id = jb_global_lookup(n->name);
      if (id >= 0) {
        out->t = JV_BUILTIN;
        out->u.builtin = id;
        return 0;
      }
      return undef_msg(c, out, "'%s' is undefined%s", n->name, "");
    }
    case JN_GETATTR:
      rc = eval(c, s, n->a, &a);
      c->line = n->line;
      return rc ? rc : jrt_getattr(c, a, n->name, strlen(n->name), out);
    case JN_GETITEM:
      rc = eval(c, s, n->a, &a);
      if (rc == 0) rc = eval(c, s, n->b, &b);
      c->line = n->line;
      return rc ? rc : jrt_getitem(c, a, b, out);
    case JN_SLICE:
      return eval_slice(c, s, n, out);
    case JN_CALL:
      return eval_call(c, s, n, jv_undef(NULL), out);
    case JN_FILTER: case JN_TEST:
      return eval_filter_node(c, s, n, jv_undef(NULL), out);
    case JN_BINOP:
      rc = eval(c, s, n->a, &a);
      if (rc == 0) rc = eval(c, s, n->b, &b);
      c->line = n->line;
      return rc ? rc : jrt_binop(c, n->op, a, b, out);
    case JN_NEG: case JN_POS:
      rc = eval(c, s, n->a, &a);
      if (rc) return rc;
      c->line = n->line;
      if (a.t == JV_UNDEF) return jctx_undefined(c, a);
      if (!jv_is_number(a))
        return jctx_fail(c, "bad operand type for unary %c: '%s'", n->kind == JN_NEG ? '-' : '+',
                         jv_type_name(a));
      if (n->kind == JN_POS) *out = a.t == JV_BOOL ? jv_int(a.u.b) : a;
      else if (a.t == JV_FLOAT) *out = jv_float(-a.u.f);
      else if (ival(a) == INT64_MIN) return jctx_fail(c, "integer overflow");
      else *out = jv_int(-ival(a));
      return 0;
    case JN_NOT:
      rc = eval(c, s, n->a, &a);
      if (rc == 0) *out = jv_bool(!jv_truthy(a));
      return rc;
    case JN_AND: case JN_OR:
      rc = eval(c, s, n->a, &a);
      if (rc) return rc;
      if (jv_truthy(a) == (n->kind == JN_OR)) {
        *out = a;
        return 0;
      }
      return eval(c, s, n->b, out);
    case JN_COND:
      rc = eval(c, s, n->a, &a);
      if (rc) return rc;
      if (jv_truthy(a)) return eval(c, s, n->b, out);
      if (n->c) return eval(c, s, n->c, out);
      *out = jv_undef("the inline if-expression evaluated to false and no else section was defined");
      return 0;
    case JN_LIST: case JN_TUPLE:
      return make_seq(c, s, n, n->kind == JN_TUPLE, out);
    case JN_DICT: {
      jdict *d = jdict_new(c->a, (size_t)n->n_items / 2);
      if (!d) return jctx_oom(c);
      for (int i = 0; i + 1 < n->n_items; i += 2) {
        rc = eval(c, s, n->items[i], &a);
        if (rc == 0) rc = eval(c, s, n->items[i + 1], &b);
        if (rc) return rc;
        if (jdict_set(c->a, d, a, b)) return jctx_oom(c);
      }
      out->t = JV_DICT;
      out->u.d = d;
      return 0;
    }
    case JN_CONCAT: {
      jbuf buf = {.max = c->lim.max_output_bytes};
      for (int i = 0; i < n->n_items && rc == 0; i++) {
        rc = eval(c, s, n->items[i], &a);
        if (rc == 0 && jv_write_str(&buf, a)) rc = jctx_limit(c, "string exceeds the output size limit");
      }
      if (rc == 0) rc = jctx_str(c, buf.p ? buf.p : "", buf.n, out);
      jbuf_free(&buf);
      return rc;
    }
    default:
      return jctx_fail(c, "internal error: statement used as expression");
  }
}

/* ---- statements ----------------------------------------------------------------------------- */

static int assign(jctx *c, jscope *s, const jnode *target, jv v) {
  if (target->kind == JN_NAME) return scope_set(c, s, target->name, v);
  if (target->kind == JN_GETATTR) {
    jv ns;
    int rc = eval(c, s, target->a, &ns);
    if (rc) return rc;
    if (ns.t != JV_NS) return jctx_fail(c, "cannot assign attribute on non-namespace object");
    if (target->name[0] == '_') return jctx_fail(c, "namespace attributes cannot start with an underscore");
    if (jdict_set(c->a, ns.u.d, jv_cstr(target->name), v)) return jctx_oom(c);
    return 0;
  }
  /* tuple unpacking */
  if (v.t != JV_LIST && v.t != JV_STR && v.t != JV_DICT)
    return jctx_fail(c, "cannot unpack non-iterable %s object", jv_type_name(v));
  jlist *l;
  int rc = jrt_iterate(c, v, &l);
  if (rc) return rc;
  if ((int)l->n != target->n_items)
    return jctx_fail(c, "cannot unpack %zu values into %d names", l->n, target->n_items);
  for (int i = 0; i < target->n_items && rc == 0; i++) rc = assign(c, s, target->items[i], l->v[i]);
  return rc;
}

static int render_body_to_str(jctx *c, jscope *s, const jnode *body, jv *out) {
  jbuf buf = {.max = c->lim.max_output_bytes};
  jbuf *saved = c->out;
  c->out = &buf;
  int rc = exec_body(c, s, body);
  c->out = saved;
  if (rc == 0) rc = jctx_str(c, buf.p ? buf.p : "", buf.n, out);
  jbuf_free(&buf);
  return rc;
}

static int loop_var(jctx *c, jlist *items, size_t i, jv *out) {
  jloop *l = jarena_alloc(c->a, sizeof(*l));
  if (!l) return jctx_oom(c);
  l->items = items;
  l->i = i;
  out->t = JV_LOOP;
  out->u.loop = l;
  return 0;
}

/* Attributes of the `loop` variable, computed from the iterated items and the position. */
static int loop_attr(jctx *c, jv lv, const char *name, jv *out) {
  const jloop *l = lv.u.loop;
  size_t n = l->items->n, i = l->i;
  if (!strcmp(name, "index")) *out = jv_int((int64_t)i + 1);
  else if (!strcmp(name, "index0")) *out = jv_int((int64_t)i);
  else if (!strcmp(name, "revindex")) *out = jv_int((int64_t)(n - i));
  else if (!strcmp(name, "revindex0")) *out = jv_int((int64_t)(n - i - 1));
  else if (!strcmp(name, "first")) *out = jv_bool(i == 0);
  else if (!strcmp(name, "last")) *out = jv_bool(i + 1 == n);
  else if (!strcmp(name, "length")) *out = jv_int((int64_t)n);
  else if (!strcmp(name, "depth")) *out = jv_int(1);
  else if (!strcmp(name, "depth0")) *out = jv_int(0);
  else if (!strcmp(name, "previtem")) *out = i > 0 ? l->items->v[i - 1] : jv_undef("there is no previous item");
  else if (!strcmp(name, "nextitem")) *out = i + 1 < n ? l->items->v[i + 1] : jv_undef("there is no next item");
  else if (!strcmp(name, "cycle")) return make_method(c, lv, "cycle", out);
  else return undef_msg(c, out, "'%s object' has no attribute '%s'", "LoopContext", name);
  return 0;
}

static int exec_for(jctx *c, jscope *s, const jnode *n) {
  jv seq;
  int rc = eval(c, s, n->b, &seq);
  if (rc) return rc;
  c->line = n->line;
  jlist *items;
  rc = jrt_iterate(c, seq, &items);
  if (rc) return rc;
  if (n->c) { /* loop filter: `for x in xs if cond` */
    jlist *kept = jlist_new(c->a, 0);
    if (!kept) return jctx_oom(c);
    for (size_t i = 0; i < items->n; i++) {
      if ((rc = jctx_tick(c, 1))) return rc;
      jscope *fs = scope_new(c, s);
      if (!fs) return jctx_oom(c);
      jv cond;
      rc = assign(c, fs, n->a, items->v[i]);
      if (rc == 0) rc = eval(c, fs, n->c, &cond);
      if (rc) return rc;
      if (jv_truthy(cond) && jlist_push(c->a, kept, items->v[i])) return jctx_oom(c);
    }
    items = kept;
  }
  for (size_t i = 0; i < items->n; i++) {
    if ((rc = jctx_tick(c, 1))) return rc;
    jscope *ls = scope_new(c, s);
    if (!ls) return jctx_oom(c);
    jv loop;
    rc = loop_var(c, items, i, &loop);
    if (rc == 0) rc = scope_set(c, ls, "loop", loop);
    if (rc == 0) rc = assign(c, ls, n->a, items->v[i]);
    if (rc == 0) rc = exec_body(c, ls, n->body);
    if (rc) return rc;
    int ctrl = c->ctrl;
    c->ctrl = 0;
    if (ctrl == CTRL_BREAK) break;
  }
  if (items->n == 0 && n->else_body) return exec_body(c, s, n->else_body);
  return 0;
}

static int exec_stmt(jctx *c, jscope *s, const jnode *n) {
  int rc = 0;
  jv v;
  c->line = n->line;
  /* total work bound: statements executed, so nested loops and branching recursion stop too */
  if (++c->steps > c->lim.max_loop_iters * 10) return jctx_limit(c, "template step limit exceeded");
  switch (n->kind) {
    case JN_TEXT:
      return out_put(c, n->value.u.s.p, n->value.u.s.n);
    case JN_OUTPUT: {
      rc = eval(c, s, n->a, &v);
      if (rc) return rc;
      int wr = jv_write_str(c->out, v);
      if (wr == QV_ELIMIT) return jctx_limit(c, "output size or value nesting limit exceeded");
      return wr ? jctx_oom(c) : 0;
    }
    case JN_IF:
      rc = eval(c, s, n->a, &v);
      if (rc) return rc;
      if (jv_truthy(v)) return exec_body(c, s, n->body);
      return n->else_body ? exec_body(c, s, n->else_body) : 0;
    case JN_FOR:
      return exec_for(c, s, n);
    case JN_SET:
      rc = eval(c, s, n->b, &v);
      return rc ? rc : assign(c, s, n->a, v);
    case JN_SET_BLOCK: {
      jv body;
      rc = render_body_to_str(c, s, n->body, &body);
      if (rc == 0) rc = apply_chain(c, s, n->c, body, &v);
      return rc ? rc : assign(c, s, n->a, v);
    }
    case JN_MACRO: {
      jmacro *m = jarena_alloc(c->a, sizeof(*m));
      if (!m) return jctx_oom(c);
      m->def = n;
      m->closure = s;
      m->caller = jv_undef(NULL);
      v.t = JV_MACRO;
      v.u.m = m;
      return scope_set(c, s, n->name, v);
    }
    case JN_CALL_BLOCK: {
      jmacro *caller = jarena_alloc(c->a, sizeof(*caller));
      if (!caller) return jctx_oom(c);
      caller->def = n;
      caller->closure = s;
      caller->caller = jv_undef(NULL);
      jv cv = {.t = JV_MACRO};
      cv.u.m = caller;
      rc = eval_call(c, s, n->a, cv, &v);
      if (rc) return rc;
      int wr = jv_write_str(c->out, v);
      if (wr == QV_ELIMIT) return jctx_limit(c, "output size or value nesting limit exceeded");
      return wr ? jctx_oom(c) : 0;
    }
    case JN_FILTER_BLOCK: {
      jv body;
      rc = render_body_to_str(c, s, n->body, &body);
      if (rc == 0) rc = apply_chain(c, s, n->c, body, &v);
      if (rc) return rc;
      int wr = jv_write_str(c->out, v);
      if (wr == QV_ELIMIT) return jctx_limit(c, "output size or value nesting limit exceeded");
      return wr ? jctx_oom(c) : 0;
    }
    case JN_BREAK:
      c->ctrl = CTRL_BREAK;
      return 0;
    case JN_CONTINUE:
      c->ctrl = CTRL_CONTINUE;
      return 0;
    case JN_DO:
      return eval(c, s, n->a, &v);
    case JN_BODY:
      return exec_body(c, s, n);
    default:
      return jctx_fail(c, "internal error: expression used as statement");
  }
}

static int exec_body(jctx *c, jscope *s, const jnode *body) {
  if (!body) return 0;
  if (++c->depth > c->lim.max_depth) {
    c->depth--;
    return jctx_limit(c, "template nesting depth limit exceeded");
  }
  int rc = 0;
  for (int i = 0; i < body->n_items && rc == 0 && c->ctrl == 0; i++)
    rc = exec_stmt(c, s, body->items[i]);
  c->depth--;
  return rc;
}

int jinja_render(const jinja_template *t, const cJSON *vars, const jinja_limits *lim, char **out,
                 size_t *out_len, qv_error *err) {
  *out = NULL;
  jarena arena = {.cap_bytes = lim->max_arena_bytes};
  jbuf buf = {.max = lim->max_output_bytes};
  jctx c = {.a = &arena, .err = err, .lim = *lim, .out = &buf, .line = 1};
  int rc = 0;
  jscope *root = scope_new(&c, NULL);
  if (!root) rc = jctx_oom(&c);
  if (rc == 0 && vars) {
    if (!cJSON_IsObject(vars)) {
      rc = qv_error_set(err, QV_EINVAL, "template variables must be a JSON object");
    } else {
      for (const cJSON *j = vars->child; j && rc == 0; j = j->next) {
        jv v;
        rc = jv_from_json(&arena, j, &v, 0);
        if (rc == QV_ELIMIT) rc = qv_error_set(err, rc, "template variables nested too deeply");
        else if (rc) rc = jctx_oom(&c);
        else rc = scope_set(&c, root, j->string ? j->string : "", v);
      }
    }
  }
  if (rc == 0) rc = exec_body(&c, root, t->root);
  if (rc == 0) {
    *out = buf.p ? buf.p : strdup("");
    if (!*out) rc = qv_error_set(err, QV_ENOMEM, "out of memory");
    else if (out_len) *out_len = buf.n;
    buf.p = NULL;
  }
  jbuf_free(&buf);
  jarena_free(&arena);
  return rc;
}
