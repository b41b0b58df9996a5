/* Grammar IR builder and flattener (see cst_gram.h). */
#include "constrain/cst_gram.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "quiver/constrain.h"

#define CST_MAX_NODES (1 << 20)

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

void cst_bset_range(cst_bset *s, unsigned lo, unsigned hi) {
  for (unsigned c = lo; c <= hi && c < 256; c++) cst_bset_add(s, c);
}

void cst_gram_free(cst_gram *g) {
  if (!g) return;
  free(g->elems);
  free(g->alt_start);
  free(g->rule_alt0);
  free(g->rule_nalt);
  free(g->sets);
  memset(g, 0, sizeof *g);
}

void cst_builder_init(cst_builder *b, qv_error *err) {
  memset(b, 0, sizeof *b);
  b->err = err;
  b->deadline_ns = now_ns() + 2000000000LL; /* 2 s: far above any sane schema */
}

void cst_builder_deinit(cst_builder *b) {
  free(b->nodes);
  free(b->kids);
  free(b->rule_body);
  free(b->sets);
  free(b->set_hash);
  memset(b, 0, sizeof *b);
}

int cst_fail(cst_builder *b, int code, const char *fmt, ...) {
  if (!b->failed) {
    b->failed = code ? code : QV_EINVAL;
    if (b->err) {
      char msg[sizeof b->err->msg];
      va_list ap;
      va_start(ap, fmt);
      vsnprintf(msg, sizeof msg, fmt, ap);
      va_end(ap);
      qv_error_set(b->err, b->failed, "%s", msg);
    }
  }
  return -1;
}

int cst_check_time(cst_builder *b) {
  if (b->failed) return -1;
  if (now_ns() > b->deadline_ns) return cst_fail(b, QV_ELIMIT, "constraint compilation took too long");
  return 0;
}

static int grow(void **p, int32_t *cap, int32_t need, size_t elt) {
  if (need <= *cap) return 0;
  int32_t c = *cap ? *cap : 64;
  while (c < need) c *= 2;
  void *q = realloc(*p, (size_t)c * elt);
  if (!q) return -1;
  *p = q;
  *cap = c;
  return 0;
}

static int32_t new_node(cst_builder *b, ex_node n) {
  if (b->failed) return -1;
  if (b->n_nodes >= CST_MAX_NODES)
    return cst_fail(b, QV_ELIMIT, "constraint too large (more than %d grammar nodes)", CST_MAX_NODES);
  if (grow((void **)&b->nodes, &b->cap_nodes, b->n_nodes + 1, sizeof *b->nodes))
    return cst_fail(b, QV_ENOMEM, "out of memory");
  b->nodes[b->n_nodes] = n;
  return b->n_nodes++;
}

int32_t ex_empty(cst_builder *b) { return new_node(b, (ex_node){.op = EX_EMPTY}); }

static uint32_t set_hash(const cst_bset *s) {
  uint32_t h = 2166136261u;
  for (int i = 0; i < 8; i++) h = (h ^ s->w[i]) * 16777619u;
  return h;
}

/* Interns a byte set; returns its index. */
static int32_t intern_set(cst_builder *b, const cst_bset *s) {
  if (b->n_sets * 2 >= b->cap_set_hash) {
    int32_t cap = b->cap_set_hash ? b->cap_set_hash * 2 : 256;
    int32_t *h = malloc((size_t)cap * sizeof *h);
    if (!h) return cst_fail(b, QV_ENOMEM, "out of memory");
    for (int32_t i = 0; i < cap; i++) h[i] = -1;
    for (int32_t i = 0; i < b->n_sets; i++) {
      uint32_t k = set_hash(&b->sets[i]) & (uint32_t)(cap - 1);
      while (h[k] >= 0) k = (k + 1) & (uint32_t)(cap - 1);
      h[k] = i;
    }
    free(b->set_hash);
    b->set_hash = h;
    b->cap_set_hash = cap;
  }
  uint32_t k = set_hash(s) & (uint32_t)(b->cap_set_hash - 1);
  while (b->set_hash[k] >= 0) {
    if (!memcmp(&b->sets[b->set_hash[k]], s, sizeof *s)) return b->set_hash[k];
    k = (k + 1) & (uint32_t)(b->cap_set_hash - 1);
  }
  if (grow((void **)&b->sets, &b->cap_sets, b->n_sets + 1, sizeof *b->sets))
    return cst_fail(b, QV_ENOMEM, "out of memory");
  b->sets[b->n_sets] = *s;
  b->set_hash[k] = b->n_sets;
  return b->n_sets++;
}

int32_t ex_set(cst_builder *b, const cst_bset *s) {
  if (b->failed) return -1;
  int32_t i = intern_set(b, s);
  if (i < 0) return -1;
  return new_node(b, (ex_node){.op = EX_SET, .v = i});
}

int32_t ex_byte(cst_builder *b, unsigned c) {
  cst_bset s = {{0}};
  cst_bset_add(&s, c & 255u);
  return ex_set(b, &s);
}

static int32_t list_node(cst_builder *b, uint8_t op, const int32_t *xs, int32_t n) {
  if (b->failed) return -1;
  for (int32_t i = 0; i < n; i++)
    if (xs[i] < 0) return cst_fail(b, QV_EINVAL, "internal: bad expression");
  if (n == 1) return xs[0];
  if (n == 0 && op == EX_SEQ) return ex_empty(b);
  if (grow((void **)&b->kids, &b->cap_kids, b->n_kids + n, sizeof *b->kids))
    return cst_fail(b, QV_ENOMEM, "out of memory");
  int32_t k0 = b->n_kids;
  memcpy(b->kids + k0, xs, (size_t)n * sizeof *xs);
  b->n_kids += n;
  return new_node(b, (ex_node){.op = op, .k0 = k0, .nk = n});
}

int32_t ex_seq(cst_builder *b, const int32_t *xs, int32_t n) { return list_node(b, EX_SEQ, xs, n); }
int32_t ex_alt(cst_builder *b, const int32_t *xs, int32_t n) { return list_node(b, EX_ALT, xs, n); }
int32_t ex_seq2(cst_builder *b, int32_t x, int32_t y) { return ex_seq(b, (int32_t[]){x, y}, 2); }
int32_t ex_seq3(cst_builder *b, int32_t x, int32_t y, int32_t z) { return ex_seq(b, (int32_t[]){x, y, z}, 3); }
int32_t ex_alt2(cst_builder *b, int32_t x, int32_t y) { return ex_alt(b, (int32_t[]){x, y}, 2); }

int32_t ex_lit(cst_builder *b, const char *s, size_t n) {
  if (b->failed) return -1;
  if (n > QV_CST_MAX_ELEMS) return cst_fail(b, QV_ELIMIT, "literal too long");
  if (n == 0) return ex_empty(b);
  if (n == 1) return ex_byte(b, (unsigned char)s[0]);
  int32_t *xs = malloc(n * sizeof *xs);
  if (!xs) return cst_fail(b, QV_ENOMEM, "out of memory");
  for (size_t i = 0; i < n; i++) xs[i] = ex_byte(b, (unsigned char)s[i]);
  int32_t r = ex_seq(b, xs, (int32_t)n);
  free(xs);
  return r;
}

int32_t ex_str(cst_builder *b, const char *s) { return ex_lit(b, s, strlen(s)); }

int32_t ex_rep(cst_builder *b, int32_t x, int32_t min, int32_t max) {
  if (b->failed || x < 0) return -1;
  if (min < 0 || (max >= 0 && max < min)) return cst_fail(b, QV_EINVAL, "invalid repetition bounds {%d,%d}", min, max);
  if (min > QV_CST_MAX_REPEAT || max > QV_CST_MAX_REPEAT)
    return cst_fail(b, QV_ELIMIT, "repetition bound over %d", QV_CST_MAX_REPEAT);
  if (min == 1 && max == 1) return x;
  if (b->nodes[x].op == EX_EMPTY) return x;
  if (max == 0) return ex_empty(b);
  return new_node(b, (ex_node){.op = EX_REP, .v = x, .min = min, .max = max});
}

int32_t ex_ref(cst_builder *b, int32_t rule) {
  if (b->failed) return -1;
  if (rule < 0 || rule >= b->n_rules) return cst_fail(b, QV_EINVAL, "internal: bad rule");
  return new_node(b, (ex_node){.op = EX_REF, .v = rule});
}

int32_t cst_rule_new(cst_builder *b) {
  if (b->failed) return -1;
  if (b->n_rules >= CST_MAX_NODES / 4) return cst_fail(b, QV_ELIMIT, "too many grammar rules");
  if (grow((void **)&b->rule_body, &b->cap_rules, b->n_rules + 1, sizeof *b->rule_body))
    return cst_fail(b, QV_ENOMEM, "out of memory");
  b->rule_body[b->n_rules] = -1;
  return b->n_rules++;
}

int cst_rule_set(cst_builder *b, int32_t rule, int32_t expr) {
  if (b->failed || expr < 0) return -1;
  b->rule_body[rule] = expr;
  return 0;
}

/* ---- UTF-8 ranges ---- */

static int utf8_enc(uint32_t cp, uint8_t *o) {
  if (cp < 0x80) { o[0] = (uint8_t)cp; return 1; }
  if (cp < 0x800) { o[0] = (uint8_t)(0xC0 | (cp >> 6)); o[1] = (uint8_t)(0x80 | (cp & 0x3F)); return 2; }
  if (cp < 0x10000) {
    o[0] = (uint8_t)(0xE0 | (cp >> 12)); o[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    o[2] = (uint8_t)(0x80 | (cp & 0x3F));
    return 3;
  }
  o[0] = (uint8_t)(0xF0 | (cp >> 18)); o[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
  o[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F)); o[3] = (uint8_t)(0x80 | (cp & 0x3F));
  return 4;
}

typedef struct idlist { int32_t *v; int32_t n, cap; } idlist;

static int idlist_push(cst_builder *b, idlist *l, int32_t x) {
  if (x < 0) return -1;
  if (grow((void **)&l->v, &l->cap, l->n + 1, sizeof *l->v)) return cst_fail(b, QV_ENOMEM, "out of memory");
  l->v[l->n++] = x;
  return 0;
}

/* Adds the byte-range sequences of [lo, hi] (same encoded length) to alts: split until every
 * continuation position spans a full or aligned range (the classic utf8-ranges construction). */
static int utf8_split(cst_builder *b, uint32_t lo, uint32_t hi, idlist *alts) {
  if (b->failed) return -1;
  static const uint32_t lim[] = {0x7F, 0x7FF, 0xFFFF};
  for (int i = 0; i < 3; i++)
    if (lo <= lim[i] && hi > lim[i])
      return utf8_split(b, lo, lim[i], alts) | utf8_split(b, lim[i] + 1, hi, alts);
  if (hi <= 0x7F) {
    cst_bset s = {{0}};
    cst_bset_range(&s, lo, hi);
    return idlist_push(b, alts, ex_set(b, &s));
  }
  for (int i = 1; i < 4; i++) {
    uint32_t m = (1u << (6 * i)) - 1;
    if ((lo & ~m) != (hi & ~m)) {
      if ((lo & m) != 0) return utf8_split(b, lo, lo | m, alts) | utf8_split(b, (lo | m) + 1, hi, alts);
      if ((hi & m) != m) return utf8_split(b, lo, (hi & ~m) - 1, alts) | utf8_split(b, hi & ~m, hi, alts);
    }
  }
  uint8_t a[4], z[4];
  int n = utf8_enc(lo, a);
  utf8_enc(hi, z);
  int32_t xs[4];
  for (int i = 0; i < n; i++) {
    cst_bset s = {{0}};
    cst_bset_range(&s, a[i], z[i]);
    xs[i] = ex_set(b, &s);
  }
  return idlist_push(b, alts, ex_seq(b, xs, n));
}

int32_t ex_cps(cst_builder *b, const uint32_t *r, int32_t n_pairs) {
  if (b->failed) return -1;
  idlist alts = {0};
  /* ASCII parts merge into one set; the rest split by encoded length. */
  cst_bset ascii = {{0}};
  int any_ascii = 0;
  for (int32_t i = 0; i < n_pairs; i++) {
    uint32_t lo = r[2 * i], hi = r[2 * i + 1];
    if (hi > 0x10FFFF) hi = 0x10FFFF;
    if (lo > hi) continue;
    if (lo < 0x80) {
      cst_bset_range(&ascii, lo, hi < 0x7F ? hi : 0x7F);
      any_ascii = 1;
      lo = 0x80;
      if (lo > hi) continue;
    }
    /* Surrogates are not characters. */
    if (lo <= 0xDFFF && hi >= 0xD800) {
      if (lo < 0xD800) utf8_split(b, lo, 0xD7FF, &alts);
      if (hi > 0xDFFF) utf8_split(b, 0xE000, hi, &alts);
    } else {
      utf8_split(b, lo, hi, &alts);
    }
  }
  if (any_ascii) idlist_push(b, &alts, ex_set(b, &ascii));
  int32_t x = b->failed ? -1 : alts.n ? ex_alt(b, alts.v, alts.n) : ex_alt(b, NULL, 0);
  free(alts.v);
  return x;
}

static int cmp_u32pair(const void *a, const void *b) {
  const uint32_t *x = a, *y = b;
  return x[0] < y[0] ? -1 : x[0] > y[0];
}

int32_t ex_cps_not(cst_builder *b, const uint32_t *r, int32_t n_pairs) {
  if (b->failed) return -1;
  uint32_t *s = malloc((size_t)(n_pairs + 1) * 2 * sizeof *s);
  uint32_t *o = malloc((size_t)(n_pairs + 1) * 2 * sizeof *o);
  if (!s || !o) {
    free(s);
    free(o);
    return cst_fail(b, QV_ENOMEM, "out of memory");
  }
  memcpy(s, r, (size_t)n_pairs * 2 * sizeof *s);
  qsort(s, (size_t)n_pairs, 2 * sizeof *s, cmp_u32pair);
  int32_t n = 0;
  uint32_t next = 0;
  for (int32_t i = 0; i < n_pairs; i++) {
    if (s[2 * i] > next) {
      o[2 * n] = next;
      o[2 * n + 1] = s[2 * i] - 1;
      n++;
    }
    if (s[2 * i + 1] + 1 > next) next = s[2 * i + 1] + 1;
  }
  if (next <= 0x10FFFF) {
    o[2 * n] = next;
    o[2 * n + 1] = 0x10FFFF;
    n++;
  }
  int32_t x = ex_cps(b, o, n);
  free(s);
  free(o);
  return x;
}

/* ---- flattening ---- */

typedef struct flat {
  cst_builder *b;
  cst_gram *g;
  int32_t cap_elems, cap_alts, cap_rules;
  int32_t *rule_of;     /* [builder rules] -> flat rule, -1 not yet */
  int32_t *todo_expr;   /* flat rule -> expression to flatten */
  int32_t n_todo_done;
} flat;

static int flat_new_rule(flat *f, int32_t expr) {
  cst_gram *g = f->g;
  if (grow((void **)&g->rule_alt0, &f->cap_rules, g->n_rules + 1, sizeof *g->rule_alt0)) return -1;
  int32_t cap = f->cap_rules;
  int32_t *a = realloc(g->rule_nalt, (size_t)cap * sizeof *a);
  if (!a) return -1;
  g->rule_nalt = a;
  int32_t *t = realloc(f->todo_expr, (size_t)cap * sizeof *t);
  if (!t) return -1;
  f->todo_expr = t;
  g->rule_alt0[g->n_rules] = -1;
  g->rule_nalt[g->n_rules] = 0;
  f->todo_expr[g->n_rules] = expr;
  return g->n_rules++;
}

static int push_elem(flat *f, int32_t e) {
  cst_gram *g = f->g;
  if (g->n_elems >= QV_CST_MAX_ELEMS)
    return cst_fail(f->b, QV_ELIMIT, "constraint too large (more than %d grammar elements)", QV_CST_MAX_ELEMS);
  if (grow((void **)&g->elems, &f->cap_elems, g->n_elems + 1, sizeof *g->elems))
    return cst_fail(f->b, QV_ENOMEM, "out of memory");
  g->elems[g->n_elems++] = e;
  return 0;
}

static int ref_rule(flat *f, int32_t brule) {
  cst_builder *b = f->b;
  if (b->rule_body[brule] < 0) return cst_fail(b, QV_EINVAL, "grammar rule %d is used but never defined", brule);
  if (f->rule_of[brule] < 0) {
    int32_t r = flat_new_rule(f, b->rule_body[brule]);
    if (r < 0) return cst_fail(b, QV_ENOMEM, "out of memory");
    f->rule_of[brule] = r;
  }
  return push_elem(f, CST_REF0 - f->rule_of[brule]);
}

static int anon_rule(flat *f, int32_t expr) {
  int32_t r = flat_new_rule(f, expr);
  if (r < 0) return cst_fail(f->b, QV_ENOMEM, "out of memory");
  return push_elem(f, CST_REF0 - r);
}

/* Repetition helper rules are described by synthetic expressions: a REP node with min 0 is
 * flattened as a rule "x R | ()" (unbounded) or a chain of optional tails (bounded). */
static int emit(flat *f, int32_t x);

static int emit_rep(flat *f, const ex_node *n, int32_t self) {
  cst_builder *b = f->b;
  int32_t child = n->v;
  int simple = b->nodes[child].op == EX_SET || b->nodes[child].op == EX_REF;
  if (b->nodes[child].op == EX_EMPTY) return 0;
  for (int32_t i = 0; i < n->min; i++)
    if (simple ? emit(f, child) : anon_rule(f, child)) return -1;
  if (n->max == n->min) return 0;
  /* The optional part: a rule flattened from the node itself with min 0, max max-min; the
   * rule's alternatives are built in flatten_rule (it recognises REP with min 0). */
  int32_t tail;
  if (n->min == 0) {
    tail = self;
  } else {
    tail = new_node(b, (ex_node){.op = EX_REP, .v = child, .min = 0, .max = n->max < 0 ? -1 : n->max - n->min});
    if (tail < 0) return -1;
  }
  return anon_rule(f, tail);
}

static int emit(flat *f, int32_t x) {
  cst_builder *b = f->b;
  if (b->failed) return -1;
  if (cst_check_time(b)) return -1;
  const ex_node n = b->nodes[x]; /* a copy: emitting may grow b->nodes */
  switch (n.op) {
    case EX_EMPTY: return 0;
    case EX_SET: return push_elem(f, n.v);
    case EX_REF: return ref_rule(f, n.v);
    case EX_SEQ:
      for (int32_t i = 0; i < n.nk; i++)
        if (emit(f, b->kids[n.k0 + i])) return -1;
      return 0;
    case EX_ALT: return anon_rule(f, x);
    case EX_REP: return emit_rep(f, &n, x);
  }
  return cst_fail(b, QV_EINVAL, "internal: bad node");
}

static int begin_alt(flat *f) {
  cst_gram *g = f->g;
  if (g->n_alts >= QV_CST_MAX_ELEMS) return cst_fail(f->b, QV_ELIMIT, "constraint too large");
  if (grow((void **)&g->alt_start, &f->cap_alts, g->n_alts + 1, sizeof *g->alt_start))
    return cst_fail(f->b, QV_ENOMEM, "out of memory");
  g->alt_start[g->n_alts++] = g->n_elems;
  return 0;
}

static int flatten_rule(flat *f, int32_t r) {
  cst_builder *b = f->b;
  cst_gram *g = f->g;
  int32_t x = f->todo_expr[r];
  const ex_node n = b->nodes[x];
  g->rule_alt0[r] = g->n_alts;
  if (n.op == EX_REP && n.min == 0) {
    /* x R | () for unbounded; x R' | () with R' the same with max-1 for bounded. */
    int simple = b->nodes[n.v].op == EX_SET || b->nodes[n.v].op == EX_REF;
    if (begin_alt(f)) return -1;
    if (simple ? emit(f, n.v) : anon_rule(f, n.v)) return -1;
    if (n.max < 0) {
      if (push_elem(f, CST_REF0 - r)) return -1;
    } else if (n.max > 1) {
      int32_t t = new_node(b, (ex_node){.op = EX_REP, .v = n.v, .min = 0, .max = n.max - 1});
      if (t < 0 || anon_rule(f, t)) return -1;
    }
    if (push_elem(f, CST_END) || begin_alt(f) || push_elem(f, CST_END)) return -1;
    g->rule_nalt[r] = 2;
    return 0;
  }
  if (n.op == EX_ALT) {
    for (int32_t i = 0; i < n.nk; i++) {
      if (begin_alt(f) || emit(f, b->kids[n.k0 + i]) || push_elem(f, CST_END)) return -1;
    }
    g->rule_nalt[r] = n.nk;
    return 0;
  }
  if (begin_alt(f) || emit(f, x) || push_elem(f, CST_END)) return -1;
  g->rule_nalt[r] = 1;
  return 0;
}

/* Left recursion: an edge A -> B when B can start A after nullable elements only. */
static int check_left_recursion(cst_builder *b, cst_gram *g) {
  int32_t R = g->n_rules;
  uint8_t *nullable = calloc((size_t)R, 1);
  uint8_t *color = calloc((size_t)R, 1);
  int32_t *stk = malloc((size_t)R * 2 * sizeof *stk);
  if (!nullable || !color || !stk) {
    free(nullable); free(color); free(stk);
    return cst_fail(b, QV_ENOMEM, "out of memory");
  }
  for (int changed = 1; changed;) {
    changed = 0;
    for (int32_t r = 0; r < R; r++) {
      if (nullable[r]) continue;
      for (int32_t a = 0; a < g->rule_nalt[r] && !nullable[r]; a++) {
        int32_t p = g->alt_start[g->rule_alt0[r] + a];
        while (g->elems[p] <= CST_REF0 && nullable[CST_REF0 - g->elems[p]]) p++;
        if (g->elems[p] == CST_END) nullable[r] = 1, changed = 1;
      }
    }
  }
  /* Left-corner edges in CSR form, then an iterative DFS looking for a back edge. */
  int32_t n_e = 0, cap_e = 0, *edges = NULL;
  int32_t *e0 = malloc((size_t)(R + 1) * sizeof *e0);
  int rc = e0 ? 0 : cst_fail(b, QV_ENOMEM, "out of memory");
  for (int32_t r = 0; r < R && !rc; r++) {
    e0[r] = n_e;
    for (int32_t a = 0; a < g->rule_nalt[r] && !rc; a++)
      for (int32_t p = g->alt_start[g->rule_alt0[r] + a]; g->elems[p] <= CST_REF0; p++) {
        int32_t t = CST_REF0 - g->elems[p];
        if (grow((void **)&edges, &cap_e, n_e + 1, sizeof *edges)) {
          rc = cst_fail(b, QV_ENOMEM, "out of memory");
          break;
        }
        edges[n_e++] = t;
        if (!nullable[t]) break;
      }
  }
  if (e0) e0[R] = n_e;
  for (int32_t s = 0; s < R && !rc; s++) {
    if (color[s]) continue;
    int32_t sp = 0;
    stk[sp++] = s;
    stk[sp++] = e0[s];
    color[s] = 1;
    while (sp > 0 && !rc) {
      int32_t r = stk[sp - 2], k = stk[sp - 1];
      if (k >= e0[r + 1]) {
        color[r] = 2;
        sp -= 2;
        continue;
      }
      stk[sp - 1] = k + 1;
      int32_t t = edges[k];
      if (color[t] == 1) rc = cst_fail(b, QV_EUNSUPPORTED, "grammar is left-recursive (a rule can start with itself)");
      else if (color[t] == 0) {
        color[t] = 1;
        stk[sp++] = t;
        stk[sp++] = e0[t];
      }
    }
  }
  free(edges);
  free(e0);
  free(nullable);
  free(color);
  free(stk);
  return rc;
}

int cst_gram_finish(cst_builder *b, int32_t root, cst_gram *g) {
  memset(g, 0, sizeof *g);
  if (b->failed || root < 0) return b->failed ? b->failed : QV_EINVAL;
  flat f = {.b = b, .g = g};
  f.rule_of = malloc((size_t)(b->n_rules ? b->n_rules : 1) * sizeof *f.rule_of);
  if (!f.rule_of) return cst_fail(b, QV_ENOMEM, "out of memory"), b->failed;
  for (int32_t i = 0; i < b->n_rules; i++) f.rule_of[i] = -1;
  int32_t r0 = flat_new_rule(&f, b->nodes[root].op == EX_REF ? b->rule_body[b->nodes[root].v] : root);
  if (r0 < 0 || (b->nodes[root].op == EX_REF && b->rule_body[b->nodes[root].v] < 0))
    cst_fail(b, QV_EINVAL, "the start rule is not defined");
  if (!b->failed && b->nodes[root].op == EX_REF) f.rule_of[b->nodes[root].v] = r0;
  for (int32_t r = 0; !b->failed && r < g->n_rules; r++) flatten_rule(&f, r);
  g->root = 0;
  free(f.rule_of);
  free(f.todo_expr);
  if (!b->failed) {
    g->sets = malloc((size_t)(b->n_sets ? b->n_sets : 1) * sizeof *g->sets);
    if (!g->sets) cst_fail(b, QV_ENOMEM, "out of memory");
    else if (b->n_sets) memcpy(g->sets, b->sets, (size_t)b->n_sets * sizeof *g->sets);
    g->n_sets = b->n_sets;
  }
  if (!b->failed) check_left_recursion(b, g);
  if (b->failed) {
    cst_gram_free(g);
    return b->failed;
  }
  return 0;
}
