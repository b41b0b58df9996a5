/* Internal interface of quiver's Jinja engine (src/chat/jinja_*.c).
 *
 * The engine is split by stage: jinja_lex.c turns source into tokens (applying jinja2's
 * whitespace rules: `-` markers, trim_blocks, lstrip_blocks, dropped trailing newline),
 * jinja_parse.c builds an AST, jinja_eval.c walks it, jinja_builtins.c holds filters, tests,
 * methods and globals, jinja_value.c the value model (Python semantics: str(), repr(), JSON).
 *
 * Memory: a parsed template lives in one arena (freed by jinja_template_destroy). A render uses a
 * second arena for every value it creates, freed at the end of the render, so values never need
 * reference counting; the arena has a byte cap that turns runaway templates into QV_ELIMIT. */
#ifndef QV_CHAT_JINJA_H
#define QV_CHAT_JINJA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "quiver/error.h"

/* ---- arena ---------------------------------------------------------------------------------- */

typedef struct jarena_chunk jarena_chunk;
typedef struct jarena {
  jarena_chunk *head;  /* owned chain of chunks */
  size_t used_bytes;   /* total bytes handed out */
  size_t cap_bytes;    /* 0 = unbounded; beyond it jarena_alloc returns NULL */
} jarena;

void *jarena_alloc(jarena *a, size_t n);  /* zeroed, 16-byte aligned; NULL when out of memory/cap */
char *jarena_strndup(jarena *a, const char *s, size_t n);
void jarena_free(jarena *a);

/* ---- values --------------------------------------------------------------------------------- */

typedef enum jv_type {
  JV_UNDEF = 0, JV_NONE, JV_BOOL, JV_INT, JV_FLOAT, JV_STR, JV_LIST, JV_DICT, JV_NS,
  JV_MACRO, JV_BUILTIN, JV_METHOD, JV_LOOP,
} jv_type;

typedef struct jlist jlist;
typedef struct jdict jdict;
typedef struct jmacro jmacro;
typedef struct jmethod jmethod;
typedef struct jloop jloop;

typedef struct jv {
  jv_type t;
  union {
    bool b;
    int64_t i;
    double f;
    struct { const char *p; size_t n; } s; /* bytes (UTF-8), borrowed from an arena */
    jlist *l;
    jdict *d;        /* JV_DICT and JV_NS */
    jmacro *m;
    int builtin;     /* JV_BUILTIN: a global function id */
    jmethod *meth;   /* JV_METHOD: a method bound to its object */
    jloop *loop;     /* JV_LOOP: the `loop` variable of a for loop */
    const char *undef_name; /* JV_UNDEF: what was missing (for messages), may be NULL */
  } u;
} jv;

struct jlist {
  jv *v;
  size_t n, cap;
  bool is_tuple;
  bool is_group; /* a (grouper, list) pair from groupby: .grouper and .list name the items */
};
typedef struct jdict_entry { jv key, val; } jdict_entry;
struct jdict { jdict_entry *e; size_t n, cap; };
struct jmethod { jv self; const char *name; };
struct jloop { jlist *items; size_t i; }; /* fields are computed on access */

jv jv_undef(const char *name);
jv jv_none(void);
jv jv_bool(bool b);
jv jv_int(int64_t i);
jv jv_float(double f);
jv jv_str(const char *p, size_t n);  /* borrows p */
jv jv_cstr(const char *p);           /* borrows p */

jlist *jlist_new(jarena *a, size_t cap);
int jlist_push(jarena *a, jlist *l, jv v);  /* QV_ENOMEM when the arena refuses */
jdict *jdict_new(jarena *a, size_t cap);
int jdict_set(jarena *a, jdict *d, jv key, jv val);
int jdict_append(jarena *a, jdict *d, jv key, jv val); /* no duplicate check */
jv *jdict_get(const jdict *d, jv key);         /* NULL when absent */
jv *jdict_get_str(const jdict *d, const char *key, size_t n);

bool jv_truthy(jv v);
bool jv_equal(jv a, jv b);
/* Python ordering of numbers, strings and sequences; returns QV_ETEMPLATE for other types. */
int jv_compare(jv a, jv b, int *out);
const char *jv_type_name(jv v);   /* Python's names: 'str', 'int', 'dict', ... */
bool jv_is_number(jv v);          /* int, float or bool (Python's Number) */
double jv_as_double(jv v);

/* A growable byte buffer with a size cap (0 = unbounded). */
typedef struct jbuf { char *p; size_t n, cap, max; } jbuf;
int jbuf_put(jbuf *b, const char *s, size_t n); /* QV_ELIMIT past max, QV_ENOMEM */
int jbuf_putc(jbuf *b, char c);
int jbuf_puts(jbuf *b, const char *s);
void jbuf_free(jbuf *b);

/* str(v) appended to b (Python's str: None, True, 1.5, ['a'], {'k': 1}; Undefined is ""). */
int jv_write_str(jbuf *b, jv v);
/* repr(v) appended to b. */
int jv_write_repr(jbuf *b, jv v);
/* Options of json.dumps as transformers' tojson exposes them. */
typedef struct jjson_opts {
  int indent;           /* < 0: no indent (one line) */
  bool sort_keys;
  bool ensure_ascii;    /* escape non-ASCII as \uXXXX (surrogate pairs above U+FFFF) */
  const char *item_sep; /* ", " (or "," with indent) unless overridden */
  const char *key_sep;  /* ": " */
} jjson_opts;

/* json.dumps(v, ...) appended to b. QV_ETEMPLATE for values JSON cannot hold. */
int jv_write_json(jbuf *b, jv v, const jjson_opts *o, int depth);
/* Python float repr (shortest round-trip). */
int jv_write_float(jbuf *b, double f);
/* str(v) as an arena string. */
int jv_to_str(jarena *a, jv v, jv *out);

/* Converts JSON into values (strings borrowed from the cJSON tree, which must outlive them). */
int jv_from_json(jarena *a, const cJSON *j, jv *out, int depth);

/* UTF-8 helpers: number of code points, and byte offset of code point idx (clamped). */
size_t utf8_len(const char *s, size_t n);
size_t utf8_offset(const char *s, size_t n, size_t idx);

/* ---- AST ------------------------------------------------------------------------------------ */

typedef enum jnode_kind {
  /* statements */
  JN_TEXT, JN_OUTPUT, JN_IF, JN_FOR, JN_SET, JN_SET_BLOCK, JN_MACRO, JN_CALL_BLOCK,
  JN_FILTER_BLOCK, JN_BREAK, JN_CONTINUE, JN_DO, JN_BODY,
  /* expressions */
  JN_CONST, JN_NAME, JN_GETATTR, JN_GETITEM, JN_SLICE, JN_CALL, JN_FILTER, JN_TEST,
  JN_BINOP, JN_NEG, JN_POS, JN_NOT, JN_AND, JN_OR, JN_COMPARE, JN_COND, JN_LIST, JN_TUPLE,
  JN_DICT, JN_CONCAT,
} jnode_kind;

typedef enum jop {
  JOP_ADD, JOP_SUB, JOP_MUL, JOP_DIV, JOP_FLOORDIV, JOP_MOD, JOP_POW,
  JOP_EQ, JOP_NE, JOP_LT, JOP_LE, JOP_GT, JOP_GE, JOP_IN, JOP_NOTIN,
} jop;

typedef struct jnode jnode;
struct jnode {
  jnode_kind kind;
  int line, col;
  jv value;           /* JN_CONST; JN_TEXT (string) */
  const char *name;   /* JN_NAME, JN_GETATTR, JN_FILTER, JN_TEST, JN_MACRO, JN_SET(_BLOCK) */
  jop op;             /* JN_BINOP; JN_COMPARE (ops[] below) */
  bool negated;       /* JN_TEST: `is not` */
  jnode *a, *b, *c;   /* children: operands / target / iter / condition / slice parts */
  jnode **items;      /* [n_items]: body statements, list items, call args, dict keys/values
                       * interleaved, compare operands, tuple items, macro defaults */
  int n_items;
  jnode **items2;     /* [n_items2]: else body, kwarg values, compare ops (as JN_CONST ints) */
  int n_items2;
  const char **names; /* [n_names]: kwarg names, macro params, for/set targets */
  int n_names;
  jnode *body, *else_body; /* JN_BODY nodes */
};

typedef struct jinja_template {
  jarena arena;  /* owns every node and string below */
  jnode *root;   /* JN_BODY */
  char *source;  /* normalised source (owned by arena) */
} jinja_template;

/* ---- lexer and parser ----------------------------------------------------------------------- */

typedef enum jtok_kind {
  JT_EOF, JT_TEXT, JT_VAR_BEGIN, JT_VAR_END, JT_BLOCK_BEGIN, JT_BLOCK_END, JT_NAME, JT_STRING,
  JT_INT, JT_FLOAT, JT_OP,
} jtok_kind;

typedef struct jtok {
  jtok_kind kind;
  int line, col;
  const char *s;  /* JT_TEXT, JT_NAME, JT_STRING (unescaped), JT_OP: NUL-terminated, in arena */
  size_t n;       /* byte length of s */
  int64_t i;      /* JT_INT */
  double f;       /* JT_FLOAT */
} jtok;

/* Tokenises src into *toks (arena-allocated array of *n_toks, ending with JT_EOF). QV_EFORMAT
 * with "line L, column C" on a lexical error. */
int jinja_lex(jarena *a, const char *src, size_t n, jtok **toks, int *n_toks, qv_error *err);

/* Parses src (copied) into a template owned by the caller (jinja_template_destroy). */
int jinja_template_parse(const char *src, size_t n, jinja_template **out, qv_error *err);
void jinja_template_destroy(jinja_template *t);

/* Whether a filter / test of that name exists (checked at parse time, as jinja2 does). */
bool jinja_filter_exists(const char *name);
bool jinja_test_exists(const char *name);

/* ---- rendering ------------------------------------------------------------------------------ */

typedef struct jinja_limits {
  int max_depth;
  long max_loop_iters;
  size_t max_output_bytes;
  size_t max_arena_bytes;
} jinja_limits;

/* Renders t with the variables of the JSON object vars (borrowed). *out is malloc'd and owned by
 * the caller. */
int jinja_render(const jinja_template *t, const cJSON *vars, const jinja_limits *lim, char **out,
                 size_t *out_len, qv_error *err);

#endif
