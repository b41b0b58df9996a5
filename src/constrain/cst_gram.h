/* The grammar IR every constraint compiles to, and its builder.
 *
 * Front ends (JSON Schema, regex, choice, GBNF, Lark) build expression trees over bytes:
 * byte sets, sequences, alternatives, bounded or unbounded repetition and references to named
 * rules (which may recurse). cst_gram_finish flattens them into the form the matcher runs:
 * rules made of alternatives, each a sequence of elements (a byte set or a rule reference)
 * ended by END, in one flat array. Repetition becomes right-recursive helper rules, which the
 * matcher runs in constant stack depth (a reference that ends its alternative is a tail call).
 * Left recursion is rejected (the matcher expands references eagerly).
 *
 * Everything is bytes: code-point classes are expanded into UTF-8 byte-range sequences, so a
 * token that ends inside a multi-byte character leaves the matcher inside that character. */
#ifndef QV_CONSTRAIN_CST_GRAM_H
#define QV_CONSTRAIN_CST_GRAM_H

#include <stdint.h>

#include "quiver/error.h"

/* A set of bytes: bit (b % 32) of word b / 32. */
typedef struct cst_bset {
  uint32_t w[8];
} cst_bset;

static inline int cst_bset_has(const cst_bset *s, unsigned b) { return (s->w[b >> 5] >> (b & 31)) & 1u; }
static inline void cst_bset_add(cst_bset *s, unsigned b) { s->w[b >> 5] |= 1u << (b & 31); }
void cst_bset_range(cst_bset *s, unsigned lo, unsigned hi);

/* Element encoding in cst_gram.elems: >= 0 a byte set index; CST_END ends an alternative;
 * <= CST_REF0 a reference to rule CST_REF0 - e. */
#define CST_END (-1)
#define CST_REF0 (-2)

/* The flattened grammar. Immutable after cst_gram_finish; all arrays owned. */
typedef struct cst_gram {
  int32_t *elems;      /* [n_elems] */
  int32_t n_elems;
  int32_t *alt_start;  /* [n_alts] index in elems of each alternative's first element */
  int32_t n_alts;
  int32_t *rule_alt0;  /* [n_rules] first alternative of each rule */
  int32_t *rule_nalt;  /* [n_rules] */
  int32_t n_rules;
  cst_bset *sets;      /* [n_sets] */
  int32_t n_sets;
  int32_t root;        /* start rule */
} cst_gram;

void cst_gram_free(cst_gram *g);

enum { EX_EMPTY = 0, EX_SET, EX_SEQ, EX_ALT, EX_REF, EX_REP };

typedef struct ex_node {
  uint8_t op;
  int32_t v;          /* SET: set index; REF: rule; REP: child */
  int32_t min, max;   /* REP: bounds, max -1 = unbounded */
  int32_t k0, nk;     /* SEQ/ALT: children kids[k0..k0+nk) */
} ex_node;

/* Builder. Every ex_* returns an expression id (>= 0), or -1 after a failure, which is
 * sticky: err holds the first message and later calls return -1 too, so front ends may chain
 * calls and check once. */
typedef struct cst_builder {
  ex_node *nodes; int32_t n_nodes, cap_nodes;
  int32_t *kids; int32_t n_kids, cap_kids;
  int32_t *rule_body; int32_t n_rules, cap_rules; /* expression of each rule, -1 = undefined */
  cst_bset *sets; int32_t n_sets, cap_sets;
  int32_t *set_hash; int32_t cap_set_hash;        /* open addressing over sets, -1 empty */
  qv_error *err;
  int failed;
  int64_t deadline_ns;                             /* compile time bound (monotonic clock) */
} cst_builder;

void cst_builder_init(cst_builder *b, qv_error *err);
void cst_builder_deinit(cst_builder *b);
/* Records a failure (first one wins); returns -1. */
int cst_fail(cst_builder *b, int code, const char *fmt, ...);
/* QV_ELIMIT once the compile deadline passed. */
int cst_check_time(cst_builder *b);

int32_t ex_empty(cst_builder *b);
int32_t ex_set(cst_builder *b, const cst_bset *s);
int32_t ex_byte(cst_builder *b, unsigned c);
int32_t ex_lit(cst_builder *b, const char *s, size_t n);
int32_t ex_str(cst_builder *b, const char *s); /* NUL-terminated literal */
int32_t ex_seq(cst_builder *b, const int32_t *xs, int32_t n);
int32_t ex_alt(cst_builder *b, const int32_t *xs, int32_t n);
int32_t ex_seq2(cst_builder *b, int32_t x, int32_t y);
int32_t ex_seq3(cst_builder *b, int32_t x, int32_t y, int32_t z);
int32_t ex_alt2(cst_builder *b, int32_t x, int32_t y);
int32_t ex_rep(cst_builder *b, int32_t x, int32_t min, int32_t max);
int32_t ex_ref(cst_builder *b, int32_t rule);
/* Union of code-point ranges [lo, hi] pairs (surrogates excluded) as UTF-8. */
int32_t ex_cps(cst_builder *b, const uint32_t *ranges, int32_t n_pairs);
/* Same, for the complement of the ranges within U+0000..U+10FFFF. */
int32_t ex_cps_not(cst_builder *b, const uint32_t *ranges, int32_t n_pairs);

/* A new rule with no body yet (for recursion); returns its id or -1. */
int32_t cst_rule_new(cst_builder *b);
int cst_rule_set(cst_builder *b, int32_t rule, int32_t expr);

/* Flattens the rules reachable from root into g. Checks undefined rules, left recursion and
 * QV_CST_MAX_ELEMS. */
int cst_gram_finish(cst_builder *b, int32_t root, cst_gram *g);

#endif
