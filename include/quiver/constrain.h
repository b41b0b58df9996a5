/* Constrained decoding: JSON, JSON Schema, regex, choice and grammar constraints compiled once
 * into a byte-level context-free grammar, and per-sequence matchers that give, at each step,
 * the set of vocabulary tokens that keep the output inside the constraint (a packed bitmask).
 *
 * Lifecycle: a qv_cst_vocab is built once per tokenizer (token byte strings in a trie); a
 * qv_constraint is compiled from a spec against a vocab (immutable grammar plus a mask cache;
 * reference counted, so n choices and the compile cache share it); each sequence owns a
 * qv_matcher. Threads: compiling and the vocab's compile cache are thread-safe; a constraint's
 * mask cache and its matchers are used by one thread at a time (the engine thread). */
#ifndef QUIVER_CONSTRAIN_H
#define QUIVER_CONSTRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "quiver/error.h"
#include "quiver/tokenizer.h"

typedef struct qv_cst_vocab qv_cst_vocab;
typedef struct qv_constraint qv_constraint;
typedef struct qv_matcher qv_matcher;

typedef enum qv_cst_kind {
  QV_CST_NONE = 0,
  QV_CST_JSON,        /* any JSON value; text "object" restricts it to an object (json_object) */
  QV_CST_JSON_SCHEMA, /* text: a JSON Schema document */
  QV_CST_REGEX,       /* text: an ECMAScript-style pattern, matched whole */
  QV_CST_CHOICE,      /* choices: exactly one of the strings */
  QV_CST_GBNF,        /* text: a llama.cpp GBNF grammar with a `root` rule */
  QV_CST_LARK,        /* text: a Lark/EBNF grammar with a `start` rule (the subset vLLM uses) */
  QV_CST_TOOL_CALL,   /* text: the request's tools array (JSON); tool_name: the forced tool or
                       * NULL for any; tool_format: "hermes", "llama3" or "mistral" */
} qv_cst_kind;

typedef struct qv_cst_spec {
  qv_cst_kind kind;
  const char *text;            /* borrowed for the compile call */
  size_t text_len;
  const char *const *choices;  /* [n_choices] QV_CST_CHOICE */
  int32_t n_choices;
  const char *tool_name;
  const char *tool_format;
  int32_t any_whitespace;      /* JSON: allow whitespace between tokens (default 0: compact,
                                * one space after ':' and ',' as json.dumps writes) */
  int32_t max_tool_calls;      /* QV_CST_TOOL_CALL with tool_name NULL: calls in a row the output
                                * may hold, 1..QV_CST_MAX_TOOL_CALLS (0: 1); llama3 takes one */
} qv_cst_spec;

/* Limits of compilation; exceeding one is QV_ELIMIT naming it. */
#define QV_CST_MAX_SPEC_BYTES (256 * 1024)
#define QV_CST_MAX_DEPTH 32         /* schema / regex / grammar nesting */
#define QV_CST_MAX_ENUM 1024        /* enum values, choices */
#define QV_CST_MAX_ELEMS (1 << 19)  /* grammar elements after expansion */
#define QV_CST_MAX_REPEAT 1000      /* {m,n}, minLength, maxItems bounds that get expanded */
#define QV_CST_MAX_STACK 128        /* grammar stack depth while matching */
#define QV_CST_MAX_TOOL_CALLS 8     /* parallel forced tool calls */

/* Builds the token index of a tokenizer (O(vocab), a few MB for 150k tokens). Special tokens
 * other than EOS are never allowed; EOS is allowed only where the constraint is complete. */
int qv_cst_vocab_create(const qv_tokenizer *tok, qv_cst_vocab **out, qv_error *err);
/* From raw byte strings: tokens[i] of lens[i] bytes (NULL: never allowed), and the EOS id. */
int qv_cst_vocab_create_raw(const char *const *tokens, const size_t *lens, int32_t n_vocab,
                            int32_t eos_id, qv_cst_vocab **out, qv_error *err);
void qv_cst_vocab_destroy(qv_cst_vocab *v);
int32_t qv_cst_vocab_size(const qv_cst_vocab *v);
/* The bytes of token id (borrowed), or NULL for a token never allowed. */
const char *qv_cst_vocab_token(const qv_cst_vocab *v, int32_t id, size_t *len);

/* Compiles a spec. The vocab is borrowed and must outlive the constraint. Identical specs
 * compiled against one vocab share the result (a small cache). Errors: QV_EINVAL (malformed
 * input), QV_EUNSUPPORTED (a feature that cannot be expressed, named in err), QV_ELIMIT. */
int qv_constraint_compile(qv_cst_vocab *v, const qv_cst_spec *spec, qv_constraint **out,
                          qv_error *err);
qv_constraint *qv_constraint_retain(qv_constraint *c);
void qv_constraint_release(qv_constraint *c); /* accepts NULL */

int qv_matcher_create(qv_constraint *c, qv_matcher **out); /* takes a reference on c */
void qv_matcher_destroy(qv_matcher *m);                    /* accepts NULL */
/* Words of the mask: (vocab + 31) / 32. */
int32_t qv_matcher_mask_words(const qv_matcher *m);
/* Fills mask [mask_words] with bit (id % 32) of word id / 32 set for each allowed token. */
int qv_matcher_fill_mask(qv_matcher *m, uint32_t *mask);
/* Advances on a sampled token. QV_EINVAL when the token is not allowed (state unchanged). */
int qv_matcher_accept(qv_matcher *m, int32_t id);
/* Advances on raw bytes (tests, jump-forward); QV_EINVAL when they leave the language. */
int qv_matcher_accept_bytes(qv_matcher *m, const char *s, size_t n);
/* Undoes the last n accepted tokens. */
int qv_matcher_rollback(qv_matcher *m, int32_t n);
int qv_matcher_is_complete(const qv_matcher *m); /* the output so far is a whole match */
int qv_matcher_is_dead(const qv_matcher *m);     /* only EOS (or nothing) may follow */
int32_t qv_matcher_n_accepted(const qv_matcher *m);

#endif
