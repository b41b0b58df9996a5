/* Runtime state shared by the Jinja evaluator (jinja_eval.c) and its builtins
 * (jinja_builtins.c): the render context, call arguments, and the builtin entry points. */
#ifndef QV_CHAT_JINJA_RT_H
#define QV_CHAT_JINJA_RT_H

#include "chat/jinja.h"

/* Variables of one scope; a lookup walks parents (loop bodies and macros open a scope). */
typedef struct jscope {
  struct jscope *parent; /* borrowed (same render arena); NULL at the root */
  jdict *vars;
} jscope;

typedef struct jctx {
  jarena *a;             /* render arena: every value created during the render */
  qv_error *err;         /* borrowed */
  jinja_limits lim;
  int depth;             /* macro-call / statement nesting */
  long iters;            /* loop iterations so far (all loops) */
  long steps;            /* statements executed so far (bounded by 10 x max_loop_iters) */
  jbuf *out;             /* where output goes now (macros and block sets swap it) */
  int ctrl;              /* pending loop control: 0, CTRL_BREAK or CTRL_CONTINUE */
  int line;              /* line of the node being evaluated, for messages */
} jctx;

enum { CTRL_BREAK = 1, CTRL_CONTINUE = 2 };

/* Arguments of a call, filter, test or method (all borrowed). */
typedef struct jargs {
  jv *pos;             /* [n_pos] positional */
  int n_pos;
  const char **kw_names; /* [n_kw] */
  jv *kw;              /* [n_kw] */
  int n_kw;
} jargs;

/* Argument i (positional) or named name (keyword); false when absent. */
bool jargs_get(const jargs *a, int i, const char *name, jv *out);

/* QV_ETEMPLATE with "template error (line N): <message>"; returns the code. */
int jctx_fail(jctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* QV_ELIMIT with a message naming the limit. */
int jctx_limit(jctx *c, const char *what);
/* QV_ENOMEM with a message. */
int jctx_oom(jctx *c);
/* Error for using an undefined value (jinja2's UndefinedError). */
int jctx_undefined(jctx *c, jv u);
/* Counts one loop iteration against the limit. */
int jctx_tick(jctx *c, long n);

/* An arena string from a NUL-terminated C string or bytes. */
int jctx_str(jctx *c, const char *s, size_t n, jv *out);

/* Builtins. Each returns 0 or a QV_E* code with the error set. */
int jb_filter(jctx *c, const char *name, jv in, const jargs *args, jv *out);
int jb_test(jctx *c, const char *name, jv in, const jargs *args, bool *out);
bool jb_has_method(jv self, const char *name);
int jb_method(jctx *c, jv self, const char *name, const jargs *args, jv *out);
int jb_global_lookup(const char *name);  /* builtin id or -1 */
int jb_global_call(jctx *c, int id, const jargs *args, jv *out);
/* Python's `fmt % args` for strings. */
int jb_percent_format(jctx *c, jv fmt, jv args, jv *out);

/* The attribute and item access of jinja2's environment (getattr, then item; or the reverse). */
int jrt_getattr(jctx *c, jv obj, const char *name, size_t n, jv *out);
int jrt_getitem(jctx *c, jv obj, jv key, jv *out);
/* Python binary operators on values. */
int jrt_binop(jctx *c, jop op, jv a, jv b, jv *out);
/* Iteration: items of a list, keys of a dict, characters of a string (into a new list). */
int jrt_iterate(jctx *c, jv v, jlist **out);

#endif
