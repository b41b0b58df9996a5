/* The tokenizer's internal model: a vocabulary, a BPE model, and the pipeline stages of the
 * Hugging Face `tokenizers` library (normalizer, pre-tokenizer, post-processor, decoder), each
 * stored as a flat array of steps (a JSON "Sequence" is flattened at load time). Loaders
 * (load_json.c, load_gguf.c, tokenizer.c for the byte tokenizer) fill this struct; encode.c and
 * decode.c only read it, which is why a loaded tokenizer can be shared between threads. */
#ifndef QV_TOK_INTERNAL_H
#define QV_TOK_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdint.h>

#include "quiver/tokenizer.h"
#include "tokenizer/tok_util.h"

/* A compiled regex (PCRE2, UTF + Unicode properties, JIT when available). Owned by its step. */
typedef struct tok_regex {
  pcre2_code *code;
} tok_regex;

/* Compiles an Oniguruma-flavoured pattern (the reference's regex engine) with PCRE2; \s, \S,
 * \w and \W are rewritten to Oniguruma's Unicode definitions. literal: escape the whole text. */
int tok_regex_compile(tok_regex *re, const char *pat, size_t len, int literal, qv_error *err);
void tok_regex_free(tok_regex *re);

/* Per-call regex scratch (match data and a JIT stack grown on demand). */
typedef struct tok_match_ctx {
  pcre2_match_data *md;
  pcre2_match_context *mctx;
  pcre2_jit_stack *jit_stack;
} tok_match_ctx;
void tok_match_ctx_free(tok_match_ctx *m);
/* Finds the next match of re in s[0..n) at or after start. Returns 1 with [*ms, *me), 0 when none
 * is left, or a negative QV_E* code. */
int tok_regex_next(const tok_regex *re, tok_match_ctx *m, const char *s, size_t n, size_t start,
                   size_t *ms, size_t *me);

/* ---- normalizers ---- */
typedef enum {
  TOK_NORM_NFC, TOK_NORM_NFKC, TOK_NORM_NFD, TOK_NORM_NFKD, TOK_NORM_PREPEND,
  TOK_NORM_REPLACE, TOK_NORM_STRIP, TOK_NORM_LOWERCASE,
} tok_norm_kind;

typedef struct tok_norm_step {
  tok_norm_kind kind;
  char *str;            /* PREPEND: text; REPLACE: literal pattern (when !re.code); owned */
  size_t str_len;
  char *content;        /* REPLACE: replacement; owned */
  size_t content_len;
  tok_regex re;         /* REPLACE with a regex pattern */
  int strip_left, strip_right; /* STRIP */
} tok_norm_step;

/* ---- pre-tokenizers ---- */
typedef enum {
  TOK_PRE_SPLIT, TOK_PRE_BYTELEVEL, TOK_PRE_METASPACE, TOK_PRE_DIGITS, TOK_PRE_PUNCT,
  TOK_PRE_WHITESPACE, TOK_PRE_WSPLIT,
} tok_pre_kind;

typedef enum {
  TOK_SPLIT_REMOVED, TOK_SPLIT_ISOLATED, TOK_SPLIT_MERGED_PREV, TOK_SPLIT_MERGED_NEXT,
  TOK_SPLIT_CONTIGUOUS,
} tok_split_behavior;

typedef enum { TOK_PREPEND_ALWAYS, TOK_PREPEND_FIRST, TOK_PREPEND_NEVER } tok_prepend_scheme;

typedef struct tok_pre_step {
  tok_pre_kind kind;
  tok_regex re;                /* SPLIT, WHITESPACE, BYTELEVEL with use_regex */
  tok_split_behavior behavior; /* SPLIT, PUNCT */
  int invert;                  /* SPLIT */
  int add_prefix_space;        /* BYTELEVEL */
  int use_regex;               /* BYTELEVEL */
  uint32_t replacement;        /* METASPACE: code point (U+2581 by default) */
  tok_prepend_scheme prepend;  /* METASPACE */
  int split;                   /* METASPACE */
  int individual_digits;       /* DIGITS */
} tok_pre_step;

/* ---- decoders ---- */
typedef enum {
  TOK_DEC_BYTELEVEL, TOK_DEC_METASPACE, TOK_DEC_REPLACE, TOK_DEC_BYTEFALLBACK, TOK_DEC_FUSE,
  TOK_DEC_STRIP,
} tok_dec_kind;

typedef struct tok_dec_step {
  tok_dec_kind kind;
  char *pattern; size_t pattern_len; /* REPLACE: literal pattern (when !re.code); owned */
  tok_regex re;                      /* REPLACE with a regex pattern */
  char *content; size_t content_len; /* REPLACE: replacement; owned */
  uint32_t replacement;              /* METASPACE */
  tok_prepend_scheme prepend;        /* METASPACE */
  uint32_t strip_char; int strip_start, strip_stop; /* STRIP */
  int lossy;                         /* BYTEFALLBACK: repair invalid runs per maximal invalid
                                      * subsequence instead of one U+FFFD per byte token */
} tok_dec_step;

/* An added token (special or not), matched in raw or normalized text before the model runs. */
typedef struct tok_added {
  int32_t id;
  char *content; size_t len;   /* owned; the text matched (normalized form when normalized) */
  uint8_t special, lstrip, rstrip, single_word, normalized;
} tok_added;

/* A set of added tokens to match leftmost-longest; indexes into tok->added. */
typedef struct tok_added_set {
  uint32_t *idx;             /* [n] sorted by decreasing length */
  uint32_t n;
  uint8_t first[256];        /* first[b]: some token starts with byte b */
} tok_added_set;

enum { TOK_MODEL_BPE = 0, TOK_MODEL_SPM_SCORES = 1 };

/* Largest token id accepted from a file (real vocabularies stay under 300K; the cap keeps a
 * hostile id from turning into a multi-gigabyte allocation). */
#define TOK_MAX_ID (1 << 22)

/* Per-id flags of added tokens. The reference (tokenizers 0.23) decodes a normalized added token
 * as its normalized content (e.g. "▁<s>" under a Prepend normalizer) and then no longer knows
 * it as special, so skip_special_tokens keeps it: TOK_FLAG_SKIP and TOK_FLAG_NORM_TEXT model
 * exactly that, while TOK_FLAG_SPECIAL keeps answering qv_tokenizer_is_special truthfully. */
enum { TOK_FLAG_SPECIAL = 1, TOK_FLAG_SKIP = 2, TOK_FLAG_NORM_TEXT = 4 };

struct qv_tokenizer {
  /* Vocabulary: token id -> string. Ids may have holes (empty, absent). */
  int32_t n_vocab;             /* max id + 1 */
  uint32_t *tok_off;           /* [n_vocab] offset into tok_text, UINT32_MAX when absent */
  uint32_t *tok_len;           /* [n_vocab] */
  uint8_t *tok_special;        /* [n_vocab] TOK_FLAG_* bits of added tokens */
  tok_buf tok_text;            /* all token strings, NUL-separated */
  tok_strmap vocab;            /* model vocabulary: string -> id */

  /* BPE model. */
  int model_kind;              /* TOK_MODEL_* */
  tok_pairmap merges;          /* (left, right) -> rank, merged id (TOK_MODEL_BPE) */
  int32_t *spm_rank;           /* [n_vocab] merge priority by score (TOK_MODEL_SPM_SCORES) */
  int32_t unk_id;              /* -1 if none */
  int byte_fallback, fuse_unk, ignore_merges;
  int spm_split;               /* words may be cut before each "▁" that follows another character:
                                * no vocabulary token contains such a pair, so no merge can span
                                * the cut and BPE per piece gives the same ids (set by tok_finish) */
  int32_t byte_ids[256];       /* byte_fallback: id of <0xXX>, -1 when absent */
  int32_t char_ids[128];       /* id of each one-byte vocabulary string (-1 absent), a hash-free
                                * path for ASCII symbols; -2 before tok_finish */
  char *cont_prefix; size_t cont_prefix_len; /* continuing_subword_prefix; owned, may be NULL */
  char *eow_suffix; size_t eow_suffix_len;   /* end_of_word_suffix; owned, may be NULL */

  /* Pipeline. */
  tok_norm_step *norm; int n_norm;   /* owned arrays */
  tok_pre_step *pre; int n_pre;
  tok_dec_step *dec; int n_dec;
  int has_decoder;                   /* 0: decode joins tokens with " " (the reference default) */

  /* Post-processor: ids before and after the sequence when QV_TOK_ADD_SPECIAL is given. */
  int32_t *post_pre; int n_post_pre;   /* owned */
  int32_t *post_post; int n_post_post; /* owned */

  /* Added tokens. */
  tok_added *added; uint32_t n_added;  /* owned */
  tok_added_set set_raw;               /* tokens with normalized = false */
  tok_added_set set_norm;              /* tokens with normalized = true */

  int32_t bos_id, eos_id;
};

/* Loaders (each fills a zeroed tokenizer; on failure the caller destroys it). */
int tok_load_json(qv_tokenizer *tok, const char *json, size_t len, const char *config_json,
                  size_t config_len, qv_error *err);
int tok_load_gguf(qv_tokenizer *tok, const void *data, size_t len, qv_error *err);

/* Shared load helpers (tokenizer.c). */
int tok_vocab_alloc(qv_tokenizer *tok, int32_t n_vocab);
int tok_vocab_set(qv_tokenizer *tok, int32_t id, const char *s, size_t len); /* one string per id */
int tok_add_token(qv_tokenizer *tok, const tok_added *t); /* copies content */
int tok_finish(qv_tokenizer *tok, qv_error *err); /* byte ids, added-token sets, checks */

/* Pipeline pieces. */
int tok_normalize(const qv_tokenizer *tok, tok_match_ctx *mc, const char *s, size_t n, tok_buf *out);

/* One pre-tokenized piece of text inside an arena buffer. */
typedef struct tok_piece {
  uint32_t off, len;
  uint8_t at_start; /* begins at offset 0 of the original input (Metaspace "first") */
} tok_piece;

typedef struct tok_pieces {
  tok_piece *v; size_t n, cap;
} tok_pieces;
int tok_pieces_push(tok_pieces *p, uint32_t off, uint32_t len, int at_start);

/* Splits the piece in arena into words (appending to out), applying every pre-tokenizer. */
int tok_pretokenize(const qv_tokenizer *tok, tok_match_ctx *mc, tok_buf *arena, tok_piece piece,
                    tok_pieces *out, tok_pieces *tmp);

/* BPE-encodes one word (valid UTF-8), appending ids. */
typedef struct tok_ids { int32_t *v; size_t n, cap; } tok_ids;
int tok_ids_push(tok_ids *ids, int32_t id);
typedef struct tok_bpe_scratch tok_bpe_scratch;
int tok_bpe_word(const qv_tokenizer *tok, tok_bpe_scratch **scratch, const char *w, size_t n,
                 tok_ids *out);
void tok_bpe_scratch_free(tok_bpe_scratch *s);

/* The GPT-2 byte <-> unicode mapping used by byte-level BPE. */
uint32_t tok_byte_to_cp(unsigned char b);
int tok_cp_to_byte(uint32_t cp); /* -1 when cp is not a byte-level character */

#endif
