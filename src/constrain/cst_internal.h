/* Internal types of the constrain module: the vocabulary index, compiled constraints and
 * matchers (see include/quiver/constrain.h for the lifecycle). */
#ifndef QV_CONSTRAIN_CST_INTERNAL_H
#define QV_CONSTRAIN_CST_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include "constrain/cst_gram.h"
#include "quiver/constrain.h"

/* The vocabulary as byte strings and a trie over them, nodes in preorder: node 0 is the empty
 * prefix, a node's first child is the next node, and its subtree ends at tend[node], where
 * its next sibling starts. */
/* Plain tokens: every byte printable ASCII other than '"' and '\\' (the bytes a JSON string
 * or free text takes as themselves), at most CST_PLAIN_MAX long. A state that treats all of
 * them alike (each stack top has all of them or none) moves the same way on any of them, so
 * every plain token of length l leads to one state S_l: masks then take all plain tokens of
 * the lengths whose S_l is alive from plain_upto[] at once, and the trie walk skips subtrees
 * made only of plain bytes. */
#define CST_PLAIN_MAX 32

static inline int cst_plain_byte(unsigned b) { return b >= 0x20 && b < 0x7F && b != '"' && b != '\\'; }
/* Bytes that never start a character of text and are neither '"' nor '\\': control bytes, DEL,
 * and bytes no valid UTF-8 character starts with. */
static inline int cst_x_byte(unsigned b) { return b < 0x20 || b == 0x7F || (b >= 0x80 && b < 0xC2) || b > 0xF4; }

/* Text tokens extend plain tokens to UTF-8: complete, valid characters, the ASCII ones plain.
 * A state whose every character (ASCII or not) leads to one state S_{l+1} takes all text tokens
 * of up to L characters at once (text_upto[]), and the walk skips subtrees holding only text
 * tokens. The chain goes up to the vocabulary's longest text token (text_lim, at most
 * CST_TEXT_MAX characters: Qwen2's longest is 128), so a bounded string (maxLength) decides
 * every text token without walking; its levels are remembered per constraint. */
#define CST_TEXT_MAX 160

/* A text token may end inside a character (byte-level BPE splits CJK characters): that partial
 * character counts as one more, since the state after it is alive exactly when a character may
 * follow there. A "text-x" token is text followed by a byte no character starts with (a control
 * byte such as '\n', DEL, a stray continuation byte): when every state of the chain rejects
 * those bytes (as inside a JSON string), text-x tokens are all dead and their subtrees skipped
 * too (tx, xfirst_nt/xnext_nt). */
typedef struct cst_trie {
  int32_t n_nodes;
  uint8_t *text;      /* [n_nodes] 1: every token in the subtree is a text token of <= CST_TEXT_MAX chars */
  uint8_t *tx;        /* [n_nodes] 1: every token in the subtree is text or text-x (<= CST_TEXT_MAX chars) */
  int32_t *tfirst_nt; /* [n_nodes] first child whose subtree is not text, or tend[node] */
  int32_t *tnext_nt;  /* [n_nodes] next sibling whose subtree is not text, or the parent's tend */
  int32_t *xfirst_nt; /* [n_nodes] first child whose subtree is not tx, or tend[node] */
  int32_t *xnext_nt;  /* [n_nodes] next sibling whose subtree is not tx, or the parent's tend */
  uint8_t *maxc;      /* [n_nodes] most characters of a token in the subtree (text subtrees; <= CST_TEXT_MAX) */
  uint8_t *plain;     /* [n_nodes] 1: the node and its subtree hold only plain bytes, depth <= CST_PLAIN_MAX */
  uint8_t *depth;     /* [n_nodes] node depth (capped at 255) */
  uint8_t *maxd;      /* [n_nodes] deepest depth in the subtree (capped at 255) */
  uint8_t *tbyte;     /* [n_nodes] the byte on the edge into the node */
  int32_t *tend;      /* [n_nodes] one past the node's last descendant */
  int32_t *tok_first; /* [n_nodes] first token id ending here, -1 none */
  int32_t *tok_next;  /* [n_vocab] next token id with the same bytes, -1 none */
} cst_trie;

/* Class chains, for states that are not uniform over text but are over a class of ASCII bytes
 * (a regex class like \w+, an email's local part, where '@' or '.' differ from letters): if
 * every stack top takes all of the class's bytes or none, every class byte leads to one state,
 * so class tokens (made only of its bytes) of the live lengths come from upto[] at once and the
 * walk skips class subtrees, as the plain chain does, with links like the text chain's. */
#define CST_N_CLS 2
#define CST_CLS_MAX 64

typedef struct cst_cls {
  cst_bset bytes;    /* the class: ASCII letters and maybe more (cst_vocab.c) */
  uint8_t *sub;      /* [n_nodes] 1: the node's byte and every byte below are in the class, depth <= CST_CLS_MAX */
  int32_t *first_n;  /* [n_nodes] first child whose subtree is not sub, or tend[node] */
  int32_t *next_n;   /* [n_nodes] next sibling whose subtree is not sub, or the parent's tend */
  uint32_t *upto;    /* [lim + 1][words] class tokens of length <= l */
  int32_t lim;       /* longest class token */
} cst_cls;

#define CST_COMPILE_CACHE 8

struct qv_cst_vocab {
  int32_t n_vocab;
  int32_t eos_id;      /* -1 none */
  char *bytes;         /* all token bytes, owned */
  uint32_t *off;       /* [n_vocab] */
  uint32_t *len;       /* [n_vocab]; UINT32_MAX: never allowed (special, absent, empty) */
  cst_trie trie;
  uint32_t *plain_upto; /* [CST_PLAIN_MAX + 1][words]: plain tokens of length <= l */
  uint32_t *text_upto;  /* [text_lim + 1][words]: text tokens of <= l characters */
  int32_t text_lim;     /* characters of the longest text or text-x token (<= CST_TEXT_MAX) */
  cst_cls cls[CST_N_CLS];
  int32_t words;
  pthread_mutex_t mu;  /* guards the compile cache */
  qv_constraint *cache[CST_COMPILE_CACHE]; /* one reference each */
  uint64_t cache_use[CST_COMPILE_CACHE];
  uint64_t cache_tick;
};

#define CST_MASK_CACHE_BYTES (32u << 20) /* per constraint, grown as used */

struct qv_constraint {
  atomic_int refs;
  qv_cst_vocab *vocab;  /* borrowed */
  cst_gram g;
  char *key;            /* canonical spec bytes for the compile cache, owned */
  size_t key_len;
  uint64_t key_hash;
  int32_t words;        /* mask words */
  /* Mask cache by matcher state hash (engine thread only). */
  int32_t n_cache, cap_cache;
  uint64_t *cache_key;  /* [cap_cache] */
  uint64_t *cache_use;  /* [cap_cache] */
  uint32_t *cache_mask; /* [cap_cache][words] */
  uint64_t tick;
  int64_t n_hits, n_misses;
  /* Text-chain levels by state hash (see cst_match.c), a direct-mapped cache. */
  struct cst_tmemo {
    uint64_t key, next;
    uint8_t status;
    uint8_t xrej;       /* the state rejects every byte no character starts with */
  } tmemo[4096], cmemo[CST_N_CLS][1024]; /* cmemo: class-chain levels (xrej unused) */
};

/* Builds the grammar of a spec (one front end per kind). */
int cst_build_json_schema(cst_builder *b, const char *text, size_t len, int any_ws, int32_t *root);
int cst_build_json_any(cst_builder *b, int object_only, int any_ws, int32_t *root);
int cst_build_regex(cst_builder *b, const char *pat, size_t len, int32_t *root);
int cst_build_choice(cst_builder *b, const char *const *choices, int32_t n, int32_t *root);
int cst_build_gbnf(cst_builder *b, const char *text, size_t len, int32_t *root);
int cst_build_lark(cst_builder *b, const char *text, size_t len, int32_t *root);
int cst_build_tool_call(cst_builder *b, const char *tools_json, size_t len, const char *name,
                        const char *format, int32_t max_calls, int32_t *root);

/* Mask cache statistics (bench). */
void cst_constraint_stats(const qv_constraint *c, int64_t *hits, int64_t *misses);

#endif
