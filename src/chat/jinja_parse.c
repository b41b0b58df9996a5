/* Jinja parser: tokens -> AST (jnode), following jinja2's grammar and operator precedence:
 *   cond-expr < or < and < not < comparisons/in < + - < ~ < * / // % < ** < unary - +
 *   < filters `|` and tests `is` < postfix (.attr, [item], [a:b:c], call()).
 * Statements: if/elif/else, for (target tuple, `if` filter, else), set (expression, block form,
 * namespace attribute), macro, call blocks, filter blocks, break/continue, do, and the
 * `generation` block of transformers (transparent). Errors carry line and column. Recursion is
 * bounded so a deeply nested input fails cleanly instead of overflowing the stack. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat/jinja.h"

#define MAX_PARSE_DEPTH 200

typedef struct parser {
  jarena *a;
  jtok *t;     /* [n] tokens, ending with JT_EOF */
  int n, pos;
  int depth;   /* current recursion depth */
  int loop_depth;
  qv_error *err;
} parser;

static jtok *cur(parser *p) { return &p->t[p->pos]; }
static jtok *peek(parser *p, int k) {
  int i = p->pos + k;
  return &p->t[i < p->n ? i : p->n - 1];
}
static void advance(parser *p) {
  if (p->pos < p->n - 1) p->pos++;
}

static int perr(parser *p, jtok *at, const char *fmt, const char *arg) {
  char msg[256];
  snprintf(msg, sizeof msg, fmt, arg ? arg : "");
  return qv_error_set(p->err, QV_EFORMAT, "template syntax error at line %d, column %d: %s",
                      at->line, at->col, msg);
}

static const char *tok_desc(jtok *t) {
  switch (t->kind) {
    case JT_EOF: return "end of template";
    case JT_TEXT: return "template data";
    case JT_VAR_BEGIN: return "'{{'";
    case JT_VAR_END: return "'}}'";
    case JT_BLOCK_BEGIN: return "'{%'";
    case JT_BLOCK_END: return "'%}'";
    case JT_STRING: return "string";
    case JT_INT: case JT_FLOAT: return "number";
    default: return t->s;
  }
}

static bool is_op(parser *p, const char *op) {
  return cur(p)->kind == JT_OP && strcmp(cur(p)->s, op) == 0;
}
static bool is_name(parser *p, const char *name) {
  return cur(p)->kind == JT_NAME && strcmp(cur(p)->s, name) == 0;
}

static int expect_op(parser *p, const char *op) {
  if (!is_op(p, op)) {
    char msg[96];
    snprintf(msg, sizeof msg, "expected '%s', got %s", op, tok_desc(cur(p)));
    return perr(p, cur(p), "%s", msg);
  }
  advance(p);
  return 0;
}

static int expect_kind(parser *p, jtok_kind k, const char *what) {
  if (cur(p)->kind != k) {
    char msg[96];
    snprintf(msg, sizeof msg, "expected %s, got %s", what, tok_desc(cur(p)));
    return perr(p, cur(p), "%s", msg);
  }
  advance(p);
  return 0;
}

static jnode *mk(parser *p, jnode_kind kind, jtok *at) {
  jnode *n = jarena_alloc(p->a, sizeof(*n));
  if (!n) {
    qv_error_set(p->err, QV_ENOMEM, "out of memory while parsing template");
    return NULL;
  }
  n->kind = kind;
  n->line = at->line;
  n->col = at->col;
  return n;
}

/* A growable node list used while parsing (malloc'd, then copied into the arena). */
typedef struct nvec { jnode **v; int n, cap; const char **names; } nvec;

static int nvec_push(nvec *v, jnode *n, const char *name) {
  if (v->n == v->cap) {
    int cap = v->cap ? v->cap * 2 : 8;
    jnode **nv = realloc(v->v, (size_t)cap * sizeof(*nv));
    if (!nv) return QV_ENOMEM;
    v->v = nv;
    const char **nn = realloc(v->names, (size_t)cap * sizeof(*nn));
    if (!nn) return QV_ENOMEM;
    v->names = nn;
    v->cap = cap;
  }
  v->v[v->n] = n;
  v->names[v->n] = name;
  v->n++;
  return 0;
}

static void nvec_free(nvec *v) {
  free(v->v);
  free(v->names);
}

static int nvec_move(parser *p, nvec *v, jnode ***items, int *n_items, const char ***names) {
  *n_items = v->n;
  *items = NULL;
  if (v->n) {
    *items = jarena_alloc(p->a, (size_t)v->n * sizeof(jnode *));
    if (!*items) goto oom;
    memcpy(*items, v->v, (size_t)v->n * sizeof(jnode *));
    if (names) {
      *names = jarena_alloc(p->a, (size_t)v->n * sizeof(char *));
      if (!*names) goto oom;
      memcpy(*names, v->names, (size_t)v->n * sizeof(char *));
    }
  }
  nvec_free(v);
  return 0;
oom:
  nvec_free(v);
  return qv_error_set(p->err, QV_ENOMEM, "out of memory while parsing template");
}

static int parse_expr(parser *p, bool with_cond, jnode **out);
static int parse_unary(parser *p, bool with_filter, jnode **out);
static int parse_primary(parser *p, jnode **out);
static int parse_postfix(parser *p, jnode **node);

static int enter(parser *p) {
  if (++p->depth > MAX_PARSE_DEPTH)
    return perr(p, cur(p), "%s", "expression or block nesting too deep (limit 200)");
  return 0;
}

/* Call arguments after '(' up to ')': positional into args, keyword into kw (names set). */
static int parse_args(parser *p, jnode *call) {
  nvec args = {0}, kw = {0};
  int rc = expect_op(p, "(");
  while (rc == 0 && !is_op(p, ")")) {
    if (args.n + kw.n > 0) {
      rc = expect_op(p, ",");
      if (rc || is_op(p, ")")) break;
    }
    if (is_op(p, "*") || is_op(p, "**")) {
      rc = perr(p, cur(p), "%s", "*args and **kwargs in calls are not supported");
      break;
    }
    jnode *e = NULL;
    if (cur(p)->kind == JT_NAME && peek(p, 1)->kind == JT_OP && strcmp(peek(p, 1)->s, "=") == 0) {
      const char *name = cur(p)->s;
      advance(p);
      advance(p);
      rc = parse_expr(p, true, &e);
      if (rc == 0) rc = nvec_push(&kw, e, name);
    } else {
      if (kw.n) {
        rc = perr(p, cur(p), "%s", "positional argument follows keyword argument");
        break;
      }
      rc = parse_expr(p, true, &e);
      if (rc == 0) rc = nvec_push(&args, e, NULL);
    }
  }
  if (rc == 0) rc = expect_op(p, ")");
  if (rc) {
    nvec_free(&args);
    nvec_free(&kw);
    return rc == QV_ENOMEM ? qv_error_set(p->err, rc, "out of memory") : rc;
  }
  rc = nvec_move(p, &args, &call->items, &call->n_items, NULL);
  if (rc == 0) rc = nvec_move(p, &kw, &call->items2, &call->n_items2, &call->names);
  else nvec_free(&kw);
  call->n_names = call->n_items2;
  return rc;
}

/* Filter/test arguments: a parenthesised list, or for tests one bare primary (`is divisibleby 3`). */
static int parse_filter_or_test(parser *p, jnode **node, bool is_test) {
  jtok *at = cur(p);
  bool negated = false;
  if (is_test && is_name(p, "not")) {
    negated = true;
    advance(p);
  }
  if (cur(p)->kind != JT_NAME)
    return perr(p, cur(p), is_test ? "expected a test name, got %s" : "expected a filter name, got %s",
                tok_desc(cur(p)));
  jnode *f = mk(p, is_test ? JN_TEST : JN_FILTER, at);
  if (!f) return QV_ENOMEM;
  f->name = cur(p)->s;
  f->negated = negated;
  f->a = *node;
  advance(p);
  while (!is_test && is_op(p, ".") && peek(p, 1)->kind == JT_NAME) {
    /* dotted filter names (`|a.b`) are not used by real templates; keep the last part */
    advance(p);
    f->name = cur(p)->s;
    advance(p);
  }
  if (is_test ? !jinja_test_exists(f->name) : !jinja_filter_exists(f->name))
    return perr(p, at, is_test ? "no test named '%s'" : "no filter named '%s'", f->name);
  int rc = 0;
  if (is_op(p, "(")) {
    rc = parse_args(p, f);
  } else if (is_test) {
    jtok *c = cur(p);
    bool starts_arg = c->kind == JT_STRING || c->kind == JT_INT || c->kind == JT_FLOAT ||
                      (c->kind == JT_NAME && strcmp(c->s, "else") && strcmp(c->s, "or") &&
                       strcmp(c->s, "and") && strcmp(c->s, "if") && strcmp(c->s, "in") &&
                       strcmp(c->s, "is") && strcmp(c->s, "not")) ||
                      (c->kind == JT_OP && (!strcmp(c->s, "[") || !strcmp(c->s, "{") ||
                                            !strcmp(c->s, "(")));
    if (starts_arg) {
      jnode *arg = NULL;
      rc = parse_primary(p, &arg);
      if (rc == 0) rc = parse_postfix(p, &arg);
      if (rc == 0) {
        f->items = jarena_alloc(p->a, sizeof(jnode *));
        if (!f->items) return qv_error_set(p->err, QV_ENOMEM, "out of memory");
        f->items[0] = arg;
        f->n_items = 1;
      }
    }
  }
  *node = f;
  return rc;
}

static int parse_postfix(parser *p, jnode **node) {
  for (;;) {
    jtok *at = cur(p);
    int rc = 0;
    if (is_op(p, ".")) {
      advance(p);
      if (cur(p)->kind == JT_NAME) {
        jnode *g = mk(p, JN_GETATTR, at);
        if (!g) return QV_ENOMEM;
        g->a = *node;
        g->name = cur(p)->s;
        advance(p);
        *node = g;
      } else if (cur(p)->kind == JT_INT) {
        jnode *g = mk(p, JN_GETITEM, at), *k = mk(p, JN_CONST, at);
        if (!g || !k) return QV_ENOMEM;
        k->value = jv_int(cur(p)->i);
        g->a = *node;
        g->b = k;
        advance(p);
        *node = g;
      } else {
        return perr(p, cur(p), "expected an attribute name after '.', got %s", tok_desc(cur(p)));
      }
    } else if (is_op(p, "[")) {
      advance(p);
      jnode *parts[3] = {NULL, NULL, NULL};
      bool is_slice = false;
      for (int k = 0; k < 3 && rc == 0; k++) {
        if (!is_op(p, ":") && !is_op(p, "]")) rc = parse_expr(p, true, &parts[k]);
        if (rc == 0 && k < 2 && is_op(p, ":")) {
          is_slice = true;
          advance(p);
        } else {
          break;
        }
      }
      if (rc == 0) rc = expect_op(p, "]");
      if (rc) return rc;
      if (!is_slice && !parts[0]) return perr(p, at, "%s", "empty subscript");
      jnode *g = mk(p, is_slice ? JN_SLICE : JN_GETITEM, at);
      if (!g) return QV_ENOMEM;
      g->a = *node;
      if (is_slice) {
        g->items = jarena_alloc(p->a, 3 * sizeof(jnode *));
        if (!g->items) return qv_error_set(p->err, QV_ENOMEM, "out of memory");
        memcpy(g->items, parts, sizeof parts);
        g->n_items = 3;
      } else {
        g->b = parts[0];
      }
      *node = g;
    } else if (is_op(p, "(")) {
      jnode *c = mk(p, JN_CALL, at);
      if (!c) return QV_ENOMEM;
      c->a = *node;
      rc = parse_args(p, c);
      if (rc) return rc;
      *node = c;
    } else {
      return 0;
    }
  }
}

/* Filters and tests after a unary expression; calls after them too (jinja2's filter_expr). */
static int parse_filter_expr(parser *p, jnode **node) {
  for (;;) {
    int rc;
    if (is_op(p, "|")) {
      advance(p);
      rc = parse_filter_or_test(p, node, false);
    } else if (is_name(p, "is")) {
      advance(p);
      rc = parse_filter_or_test(p, node, true);
    } else if (is_op(p, "(")) {
      jnode *c = mk(p, JN_CALL, cur(p));
      if (!c) return QV_ENOMEM;
      c->a = *node;
      rc = parse_args(p, c);
      *node = c;
    } else {
      return 0;
    }
    if (rc) return rc;
  }
}

/* '(' already consumed. Parenthesised expression or tuple. */
static int parse_paren(parser *p, jtok *at, jnode **out) {
  nvec items = {0};
  bool trailing_comma = false;
  int rc = 0;
  while (!is_op(p, ")")) {
    jnode *e = NULL;
    rc = parse_expr(p, true, &e);
    if (rc == 0) rc = nvec_push(&items, e, NULL);
    if (rc) break;
    trailing_comma = false;
    if (!is_op(p, ",")) break;
    advance(p);
    trailing_comma = true;
  }
  if (rc == 0) rc = expect_op(p, ")");
  if (rc) {
    nvec_free(&items);
    return rc;
  }
  if (items.n == 1 && !trailing_comma) {
    *out = items.v[0];
    nvec_free(&items);
    return 0;
  }
  jnode *t = mk(p, JN_TUPLE, at);
  if (!t) {
    nvec_free(&items);
    return QV_ENOMEM;
  }
  *out = t;
  return nvec_move(p, &items, &t->items, &t->n_items, NULL);
}

static int parse_primary(parser *p, jnode **out) {
  int rc = enter(p);
  if (rc) return rc;
  jtok *at = cur(p);
  jnode *n = NULL;
  switch (at->kind) {
    case JT_NAME: {
      const char *s = at->s;
      n = mk(p, JN_CONST, at);
      if (!n) return QV_ENOMEM;
      if (!strcmp(s, "true") || !strcmp(s, "True")) n->value = jv_bool(true);
      else if (!strcmp(s, "false") || !strcmp(s, "False")) n->value = jv_bool(false);
      else if (!strcmp(s, "none") || !strcmp(s, "None")) n->value = jv_none();
      else {
        n->kind = JN_NAME;
        n->name = s;
      }
      advance(p);
      break;
    }
    case JT_STRING: {
      /* adjacent string literals concatenate */
      jbuf b = {0};
      while (cur(p)->kind == JT_STRING) {
        if (jbuf_put(&b, cur(p)->s, cur(p)->n)) {
          jbuf_free(&b);
          return qv_error_set(p->err, QV_ENOMEM, "out of memory");
        }
        advance(p);
      }
      n = mk(p, JN_CONST, at);
      char *s = n ? jarena_strndup(p->a, b.p ? b.p : "", b.n) : NULL;
      size_t len = b.n;
      jbuf_free(&b);
      if (!s) return qv_error_set(p->err, QV_ENOMEM, "out of memory");
      n->value = jv_str(s, len);
      break;
    }
    case JT_INT: case JT_FLOAT:
      n = mk(p, JN_CONST, at);
      if (!n) return QV_ENOMEM;
      n->value = at->kind == JT_INT ? jv_int(at->i) : jv_float(at->f);
      advance(p);
      break;
    case JT_OP:
      if (!strcmp(at->s, "(")) {
        advance(p);
        rc = parse_paren(p, at, &n);
      } else if (!strcmp(at->s, "[") || !strcmp(at->s, "{")) {
        bool is_dict = at->s[0] == '{';
        advance(p);
        nvec items = {0};
        const char *close = is_dict ? "}" : "]";
        while (rc == 0 && !is_op(p, close)) {
          if (items.n) {
            rc = expect_op(p, ",");
            if (rc || is_op(p, close)) break;
          }
          jnode *e = NULL;
          rc = parse_expr(p, true, &e);
          if (rc == 0) rc = nvec_push(&items, e, NULL);
          if (rc == 0 && is_dict) {
            rc = expect_op(p, ":");
            if (rc == 0) rc = parse_expr(p, true, &e);
            if (rc == 0) rc = nvec_push(&items, e, NULL);
          }
        }
        if (rc == 0) rc = expect_op(p, close);
        if (rc) {
          nvec_free(&items);
          break;
        }
        n = mk(p, is_dict ? JN_DICT : JN_LIST, at);
        if (!n) {
          nvec_free(&items);
          return QV_ENOMEM;
        }
        rc = nvec_move(p, &items, &n->items, &n->n_items, NULL);
      } else {
        rc = perr(p, at, "unexpected %s", tok_desc(at));
      }
      break;
    default:
      rc = perr(p, at, "unexpected %s", tok_desc(at));
  }
  p->depth--;
  if (rc == 0) *out = n;
  return rc;
}

static int parse_unary(parser *p, bool with_filter, jnode **out) {
  int rc = enter(p);
  if (rc) return rc;
  jtok *at = cur(p);
  jnode *n = NULL;
  if (is_op(p, "-") || is_op(p, "+")) {
    bool neg = is_op(p, "-");
    advance(p);
    jnode *inner = NULL;
    rc = parse_unary(p, false, &inner);
    if (rc == 0) {
      n = mk(p, neg ? JN_NEG : JN_POS, at);
      if (!n) rc = QV_ENOMEM;
      else n->a = inner;
    }
  } else {
    rc = parse_primary(p, &n);
  }
  if (rc == 0) rc = parse_postfix(p, &n);
  if (rc == 0 && with_filter) rc = parse_filter_expr(p, &n);
  p->depth--;
  if (rc == 0) *out = n;
  return rc;
}

static int binop(parser *p, jtok *at, jop op, jnode *l, jnode *r, jnode **out) {
  jnode *n = mk(p, JN_BINOP, at);
  if (!n) return QV_ENOMEM;
  n->op = op;
  n->a = l;
  n->b = r;
  *out = n;
  return 0;
}

static int parse_pow(parser *p, jnode **out) {
  int rc = parse_unary(p, true, out);
  while (rc == 0 && is_op(p, "**")) {
    jtok *at = cur(p);
    advance(p);
    jnode *r = NULL;
    rc = parse_unary(p, true, &r);
    if (rc == 0) rc = binop(p, at, JOP_POW, *out, r, out);
  }
  return rc;
}

static int parse_math2(parser *p, jnode **out) {
  int rc = parse_pow(p, out);
  for (;;) {
    if (rc) return rc;
    jop op;
    if (is_op(p, "*")) op = JOP_MUL;
    else if (is_op(p, "/")) op = JOP_DIV;
    else if (is_op(p, "//")) op = JOP_FLOORDIV;
    else if (is_op(p, "%")) op = JOP_MOD;
    else return 0;
    jtok *at = cur(p);
    advance(p);
    jnode *r = NULL;
    rc = parse_pow(p, &r);
    if (rc == 0) rc = binop(p, at, op, *out, r, out);
  }
}

static int parse_concat(parser *p, jnode **out) {
  int rc = parse_math2(p, out);
  if (rc || !is_op(p, "~")) return rc;
  nvec items = {0};
  jtok *at = cur(p);
  rc = nvec_push(&items, *out, NULL);
  while (rc == 0 && is_op(p, "~")) {
    advance(p);
    jnode *r = NULL;
    rc = parse_math2(p, &r);
    if (rc == 0) rc = nvec_push(&items, r, NULL);
  }
  jnode *n = rc ? NULL : mk(p, JN_CONCAT, at);
  if (!n) {
    nvec_free(&items);
    return rc ? rc : QV_ENOMEM;
  }
  *out = n;
  return nvec_move(p, &items, &n->items, &n->n_items, NULL);
}

static int parse_math1(parser *p, jnode **out) {
  int rc = parse_concat(p, out);
  while (rc == 0 && (is_op(p, "+") || is_op(p, "-"))) {
    jop op = is_op(p, "+") ? JOP_ADD : JOP_SUB;
    jtok *at = cur(p);
    advance(p);
    jnode *r = NULL;
    rc = parse_concat(p, &r);
    if (rc == 0) rc = binop(p, at, op, *out, r, out);
  }
  return rc;
}

static int parse_compare(parser *p, jnode **out) {
  jnode *left = NULL;
  int rc = parse_math1(p, &left);
  jnode *result = left;
  bool chained = false;
  while (rc == 0) {
    jop op;
    jtok *at = cur(p);
    if (is_op(p, "==")) op = JOP_EQ;
    else if (is_op(p, "!=")) op = JOP_NE;
    else if (is_op(p, "<")) op = JOP_LT;
    else if (is_op(p, "<=")) op = JOP_LE;
    else if (is_op(p, ">")) op = JOP_GT;
    else if (is_op(p, ">=")) op = JOP_GE;
    else if (is_name(p, "in")) op = JOP_IN;
    else if (is_name(p, "not") && peek(p, 1)->kind == JT_NAME && !strcmp(peek(p, 1)->s, "in")) {
      op = JOP_NOTIN;
      advance(p);
    } else break;
    advance(p);
    jnode *right = NULL, *cmp = NULL;
    rc = parse_math1(p, &right);
    if (rc == 0) rc = binop(p, at, op, left, right, &cmp);
    if (rc) break;
    if (!chained && result == left) {
      result = cmp;
    } else {
      jnode *and = mk(p, JN_AND, at);
      if (!and) return QV_ENOMEM;
      and->a = result;
      and->b = cmp;
      result = and;
    }
    chained = true;
    left = right;
  }
  if (rc == 0) *out = result;
  return rc;
}

static int parse_not(parser *p, jnode **out) {
  if (is_name(p, "not")) {
    jtok *at = cur(p);
    advance(p);
    int rc = enter(p);
    jnode *inner = NULL;
    if (rc == 0) rc = parse_not(p, &inner);
    p->depth--;
    if (rc) return rc;
    jnode *n = mk(p, JN_NOT, at);
    if (!n) return QV_ENOMEM;
    n->a = inner;
    *out = n;
    return 0;
  }
  return parse_compare(p, out);
}

static int parse_logic(parser *p, bool is_or, jnode **out) {
  int rc = is_or ? parse_logic(p, false, out) : parse_not(p, out);
  while (rc == 0 && is_name(p, is_or ? "or" : "and")) {
    jtok *at = cur(p);
    advance(p);
    jnode *r = NULL;
    rc = is_or ? parse_logic(p, false, &r) : parse_not(p, &r);
    if (rc) break;
    jnode *n = mk(p, is_or ? JN_OR : JN_AND, at);
    if (!n) return QV_ENOMEM;
    n->a = *out;
    n->b = r;
    *out = n;
  }
  return rc;
}

static int parse_expr(parser *p, bool with_cond, jnode **out) {
  int rc = enter(p);
  if (rc == 0) rc = parse_logic(p, true, out);
  while (rc == 0 && with_cond && is_name(p, "if")) {
    jtok *at = cur(p);
    advance(p);
    jnode *cond = NULL, *other = NULL;
    rc = parse_logic(p, true, &cond);
    if (rc == 0 && is_name(p, "else")) {
      advance(p);
      rc = parse_expr(p, true, &other);
    }
    if (rc) break;
    jnode *n = mk(p, JN_COND, at);
    if (!n) return QV_ENOMEM;
    n->a = cond;
    n->b = *out;
    n->c = other;
    *out = n;
  }
  p->depth--;
  return rc;
}

/* ---- statements ----------------------------------------------------------------------------- */

static int parse_body(parser *p, const char *const *ends, jnode **out);

/* A tuple of plain names (for-loop and set targets), or a single name / ns.attr. */
static int parse_target(parser *p, bool allow_attr, jnode **out) {
  nvec names = {0};
  jtok *at = cur(p);
  int rc = 0;
  for (;;) {
    if (cur(p)->kind != JT_NAME) {
      rc = perr(p, cur(p), "expected a variable name, got %s", tok_desc(cur(p)));
      break;
    }
    jnode *n = mk(p, JN_NAME, cur(p));
    if (!n) { rc = QV_ENOMEM; break; }
    n->name = cur(p)->s;
    advance(p);
    if (allow_attr && names.n == 0 && is_op(p, ".")) {
      advance(p);
      if (cur(p)->kind != JT_NAME) {
        rc = perr(p, cur(p), "expected an attribute name, got %s", tok_desc(cur(p)));
        break;
      }
      jnode *g = mk(p, JN_GETATTR, cur(p));
      if (!g) { rc = QV_ENOMEM; break; }
      g->a = n;
      g->name = cur(p)->s;
      advance(p);
      nvec_free(&names);
      *out = g;
      return 0;
    }
    rc = nvec_push(&names, n, NULL);
    if (rc || !is_op(p, ",")) break;
    advance(p);
  }
  if (rc) {
    nvec_free(&names);
    return rc;
  }
  if (names.n == 1) {
    *out = names.v[0];
    nvec_free(&names);
    return 0;
  }
  jnode *t = mk(p, JN_TUPLE, at);
  if (!t) {
    nvec_free(&names);
    return QV_ENOMEM;
  }
  *out = t;
  return nvec_move(p, &names, &t->items, &t->n_items, NULL);
}

/* Parses "name" ... up to and including '%}' of the closing tag named end. */
static int expect_end(parser *p, const char *end) {
  if (!is_name(p, end)) return perr(p, cur(p), "expected '%s'", end);
  advance(p);
  return expect_kind(p, JT_BLOCK_END, "'%}'");
}

/* macro parameter list, or caller parameters of a call block: ( name [= default], ... ) */
static int parse_params(parser *p, jnode *n) {
  nvec params = {0};
  int rc = expect_op(p, "(");
  while (rc == 0 && !is_op(p, ")")) {
    if (params.n) {
      rc = expect_op(p, ",");
      if (rc || is_op(p, ")")) break;
    }
    if (cur(p)->kind != JT_NAME) {
      rc = perr(p, cur(p), "expected a parameter name, got %s", tok_desc(cur(p)));
      break;
    }
    const char *name = cur(p)->s;
    advance(p);
    jnode *def = NULL;
    if (is_op(p, "=")) {
      advance(p);
      rc = parse_expr(p, true, &def);
    }
    if (rc == 0) rc = nvec_push(&params, def, name);
  }
  if (rc == 0) rc = expect_op(p, ")");
  if (rc) {
    nvec_free(&params);
    return rc;
  }
  rc = nvec_move(p, &params, &n->items, &n->n_items, &n->names);
  n->n_names = n->n_items;
  return rc;
}

static int parse_if(parser *p, jtok *at, jnode **out) {
  jnode *n = mk(p, JN_IF, at);
  if (!n) return QV_ENOMEM;
  int rc = parse_expr(p, true, &n->a);
  if (rc == 0) rc = expect_kind(p, JT_BLOCK_END, "'%}'");
  static const char *const ends[] = {"elif", "else", "endif", NULL};
  if (rc == 0) rc = parse_body(p, ends, &n->body);
  if (rc) return rc;
  *out = n;
  if (is_name(p, "elif")) {
    jtok *eat = cur(p);
    advance(p);
    jnode *inner = NULL;
    rc = enter(p);
    if (rc == 0) rc = parse_if(p, eat, &inner);
    p->depth--;
    if (rc) return rc;
    n->else_body = mk(p, JN_BODY, eat);
    if (!n->else_body) return QV_ENOMEM;
    n->else_body->items = jarena_alloc(p->a, sizeof(jnode *));
    if (!n->else_body->items) return qv_error_set(p->err, QV_ENOMEM, "out of memory");
    n->else_body->items[0] = inner;
    n->else_body->n_items = 1;
    return 0; /* the inner if consumed endif */
  }
  if (is_name(p, "else")) {
    advance(p);
    rc = expect_kind(p, JT_BLOCK_END, "'%}'");
    static const char *const ends2[] = {"endif", NULL};
    if (rc == 0) rc = parse_body(p, ends2, &n->else_body);
    if (rc) return rc;
  }
  return expect_end(p, "endif");
}

static int parse_for(parser *p, jtok *at, jnode **out) {
  jnode *n = mk(p, JN_FOR, at);
  if (!n) return QV_ENOMEM;
  int rc = parse_target(p, false, &n->a);
  if (rc == 0 && !is_name(p, "in")) rc = perr(p, cur(p), "expected 'in', got %s", tok_desc(cur(p)));
  if (rc) return rc;
  advance(p);
  rc = parse_expr(p, false, &n->b);
  if (rc == 0 && is_name(p, "if")) {
    advance(p);
    rc = parse_expr(p, true, &n->c);
  }
  if (rc == 0 && is_name(p, "recursive"))
    rc = perr(p, cur(p), "%s", "recursive for loops are not supported");
  if (rc == 0) rc = expect_kind(p, JT_BLOCK_END, "'%}'");
  static const char *const ends[] = {"else", "endfor", NULL};
  p->loop_depth++;
  if (rc == 0) rc = parse_body(p, ends, &n->body);
  p->loop_depth--;
  if (rc) return rc;
  if (is_name(p, "else")) {
    advance(p);
    rc = expect_kind(p, JT_BLOCK_END, "'%}'");
    static const char *const ends2[] = {"endfor", NULL};
    if (rc == 0) rc = parse_body(p, ends2, &n->else_body);
    if (rc) return rc;
  }
  *out = n;
  return expect_end(p, "endfor");
}

/* filter chain of a block set or filter block: | f(args) | g ... with a NULL input slot */
static int parse_filter_chain(parser *p, jnode **chain, bool required) {
  *chain = NULL;
  if (required) {
    int rc = parse_filter_or_test(p, chain, false);
    if (rc) return rc;
  }
  while (is_op(p, "|")) {
    advance(p);
    int rc = parse_filter_or_test(p, chain, false);
    if (rc) return rc;
  }
  return 0;
}

static int parse_stmt(parser *p, jnode **out) {
  advance(p); /* {% */
  jtok *at = cur(p);
  if (at->kind != JT_NAME) return perr(p, at, "expected a statement name, got %s", tok_desc(at));
  const char *kw = at->s;
  advance(p);
  int rc = enter(p);
  if (rc) return rc;
  if (!strcmp(kw, "if")) {
    rc = parse_if(p, at, out);
  } else if (!strcmp(kw, "for")) {
    rc = parse_for(p, at, out);
  } else if (!strcmp(kw, "set")) {
    jnode *target = NULL;
    rc = parse_target(p, true, &target);
    if (rc == 0 && is_op(p, "=")) {
      advance(p);
      jnode *n = mk(p, JN_SET, at);
      if (!n) return QV_ENOMEM;
      n->a = target;
      /* `set a = 1, 2` assigns a tuple */
      jnode *e = NULL;
      rc = parse_expr(p, true, &e);
      if (rc == 0 && is_op(p, ",")) {
        nvec items = {0};
        rc = nvec_push(&items, e, NULL);
        while (rc == 0 && is_op(p, ",")) {
          advance(p);
          if (cur(p)->kind == JT_BLOCK_END) break;
          rc = parse_expr(p, true, &e);
          if (rc == 0) rc = nvec_push(&items, e, NULL);
        }
        jnode *t = rc ? NULL : mk(p, JN_TUPLE, at);
        if (!t) {
          nvec_free(&items);
          return rc ? rc : QV_ENOMEM;
        }
        rc = nvec_move(p, &items, &t->items, &t->n_items, NULL);
        e = t;
      }
      n->b = e;
      if (rc == 0) rc = expect_kind(p, JT_BLOCK_END, "'%}'");
      *out = n;
    } else if (rc == 0) {
      if (target->kind != JN_NAME) return perr(p, at, "%s", "a block set needs a single name");
      jnode *n = mk(p, JN_SET_BLOCK, at);
      if (!n) return QV_ENOMEM;
      n->a = target;
      rc = parse_filter_chain(p, &n->c, false);
      if (rc == 0) rc = expect_kind(p, JT_BLOCK_END, "'%}'");
      static const char *const ends[] = {"endset", NULL};
      if (rc == 0) rc = parse_body(p, ends, &n->body);
      if (rc == 0) rc = expect_end(p, "endset");
      *out = n;
    }
  } else if (!strcmp(kw, "macro")) {
    jnode *n = mk(p, JN_MACRO, at);
    if (!n) return QV_ENOMEM;
    if (cur(p)->kind != JT_NAME) return perr(p, cur(p), "expected a macro name, got %s", tok_desc(cur(p)));
    n->name = cur(p)->s;
    advance(p);
    rc = parse_params(p, n);
    if (rc == 0) rc = expect_kind(p, JT_BLOCK_END, "'%}'");
    static const char *const ends[] = {"endmacro", NULL};
    int saved = p->loop_depth;
    p->loop_depth = 0;
    if (rc == 0) rc = parse_body(p, ends, &n->body);
    p->loop_depth = saved;
    if (rc == 0) rc = expect_end(p, "endmacro");
    *out = n;
  } else if (!strcmp(kw, "call")) {
    jnode *n = mk(p, JN_CALL_BLOCK, at);
    if (!n) return QV_ENOMEM;
    if (is_op(p, "(")) rc = parse_params(p, n);
    if (rc == 0) rc = parse_expr(p, true, &n->a);
    if (rc == 0 && n->a->kind != JN_CALL) rc = perr(p, at, "%s", "expected a call after 'call'");
    if (rc == 0) rc = expect_kind(p, JT_BLOCK_END, "'%}'");
    static const char *const ends[] = {"endcall", NULL};
    if (rc == 0) rc = parse_body(p, ends, &n->body);
    if (rc == 0) rc = expect_end(p, "endcall");
    *out = n;
  } else if (!strcmp(kw, "filter")) {
    jnode *n = mk(p, JN_FILTER_BLOCK, at);
    if (!n) return QV_ENOMEM;
    rc = parse_filter_chain(p, &n->c, true);
    if (rc == 0) rc = expect_kind(p, JT_BLOCK_END, "'%}'");
    static const char *const ends[] = {"endfilter", NULL};
    if (rc == 0) rc = parse_body(p, ends, &n->body);
    if (rc == 0) rc = expect_end(p, "endfilter");
    *out = n;
  } else if (!strcmp(kw, "break") || !strcmp(kw, "continue")) {
    if (p->loop_depth == 0) rc = perr(p, at, "'%s' outside of a loop", kw);
    jnode *n = rc ? NULL : mk(p, kw[0] == 'b' ? JN_BREAK : JN_CONTINUE, at);
    if (rc == 0 && !n) rc = QV_ENOMEM;
    if (rc == 0) rc = expect_kind(p, JT_BLOCK_END, "'%}'");
    *out = n;
  } else if (!strcmp(kw, "do")) {
    jnode *n = mk(p, JN_DO, at);
    if (!n) return QV_ENOMEM;
    rc = parse_expr(p, true, &n->a);
    if (rc == 0) rc = expect_kind(p, JT_BLOCK_END, "'%}'");
    *out = n;
  } else if (!strcmp(kw, "generation")) {
    rc = expect_kind(p, JT_BLOCK_END, "'%}'");
    static const char *const ends[] = {"endgeneration", NULL};
    if (rc == 0) rc = parse_body(p, ends, out);
    if (rc == 0) rc = expect_end(p, "endgeneration");
  } else {
    rc = perr(p, at, "unknown or unexpected tag '%s'", kw);
  }
  p->depth--;
  return rc;
}

/* Statements until a `{% <end> ` tag for one of ends (left at the end's name) or EOF (ends NULL). */
static int parse_body(parser *p, const char *const *ends, jnode **out) {
  jnode *body = mk(p, JN_BODY, cur(p));
  if (!body) return QV_ENOMEM;
  nvec items = {0};
  int rc = 0;
  for (;;) {
    jtok *t = cur(p);
    jnode *n = NULL;
    if (t->kind == JT_EOF) {
      if (ends) {
        int last = 0;
        while (ends[last + 1]) last++;
        rc = perr(p, t, "unexpected end of template, expected '%s'", ends[last]);
      }
      break;
    }
    if (t->kind == JT_TEXT) {
      n = mk(p, JN_TEXT, t);
      if (!n) { rc = QV_ENOMEM; break; }
      n->value = jv_str(t->s, t->n);
      advance(p);
    } else if (t->kind == JT_VAR_BEGIN) {
      n = mk(p, JN_OUTPUT, t);
      if (!n) { rc = QV_ENOMEM; break; }
      advance(p);
      rc = parse_expr(p, true, &n->a);
      if (rc == 0) rc = expect_kind(p, JT_VAR_END, "'}}'");
    } else if (t->kind == JT_BLOCK_BEGIN) {
      jtok *name = peek(p, 1);
      bool is_end = false;
      if (name->kind == JT_NAME)
        for (int k = 0; ends && ends[k]; k++)
          if (!strcmp(name->s, ends[k])) is_end = true;
      if (is_end) {
        advance(p);
        break;
      }
      if (name->kind == JT_NAME && (!strncmp(name->s, "end", 3) || !strcmp(name->s, "else") ||
                                    !strcmp(name->s, "elif"))) {
        rc = perr(p, name, "unexpected '%s'", name->s);
        break;
      }
      rc = parse_stmt(p, &n);
    } else {
      rc = perr(p, t, "unexpected %s", tok_desc(t));
    }
    if (rc) break;
    rc = nvec_push(&items, n, NULL);
    if (rc) break;
  }
  if (rc) {
    nvec_free(&items);
    if (rc == QV_ENOMEM) qv_error_set(p->err, rc, "out of memory while parsing template");
    return rc;
  }
  *out = body;
  return nvec_move(p, &items, &body->items, &body->n_items, NULL);
}

int jinja_template_parse(const char *src, size_t n, jinja_template **out, qv_error *err) {
  *out = NULL;
  jinja_template *t = calloc(1, sizeof(*t));
  if (!t) return qv_error_set(err, QV_ENOMEM, "out of memory");
  /* Normalise newlines to \n and drop one trailing newline, as jinja2's lexer does. */
  char *s = jarena_alloc(&t->arena, n + 1);
  if (!s) {
    free(t);
    return qv_error_set(err, QV_ENOMEM, "out of memory");
  }
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    if (src[i] == '\r') {
      s[k++] = '\n';
      if (i + 1 < n && src[i + 1] == '\n') i++;
    } else {
      s[k++] = src[i];
    }
  }
  if (k > 0 && s[k - 1] == '\n') k--;
  s[k] = 0;
  t->source = s;
  jtok *toks = NULL;
  int n_toks = 0;
  int rc = jinja_lex(&t->arena, s, k, &toks, &n_toks, err);
  if (rc == 0) {
    parser p = {.a = &t->arena, .t = toks, .n = n_toks, .err = err};
    rc = parse_body(&p, NULL, &t->root);
  }
  if (rc) {
    jinja_template_destroy(t);
    return rc;
  }
  *out = t;
  return 0;
}

void jinja_template_destroy(jinja_template *t) {
  if (!t) return;
  jarena_free(&t->arena);
  free(t);
}
