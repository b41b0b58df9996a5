/* Small building blocks shared by the tokenizer files: a growable byte buffer, UTF-8 helpers
 * (decode one character, Rust-compatible lossy repair, White_Space test) and two open-addressing
 * hash maps (byte string -> int32 and (left id, right id) -> merge). Kept apart from the
 * tokenizer logic so each piece stays small and testable. Nothing here keeps global state. */
#ifndef QV_TOK_UTIL_H
#define QV_TOK_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* A growable byte buffer; owned by whoever declared it, freed with tok_buf_free. */
typedef struct tok_buf {
  char *data; /* [cap] bytes, NUL-terminated after len when non-NULL */
  size_t len;
  size_t cap;
} tok_buf;

int tok_buf_reserve(tok_buf *b, size_t extra); /* 0 or QV_ENOMEM */
int tok_buf_append(tok_buf *b, const void *p, size_t n);
void tok_buf_free(tok_buf *b);

/* Decodes one UTF-8 character of valid text at s (n > 0 bytes left); returns its byte length
 * and stores the code point. The text must already be valid UTF-8. */
static inline int tok_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp) {
  unsigned c = s[0];
  if (c < 0x80 || n < 2) { *cp = c; return 1; }
  if (c < 0xE0) { *cp = ((c & 0x1Fu) << 6) | (s[1] & 0x3Fu); return 2; }
  if (c < 0xF0 || n < 4) {
    if (n < 3) { *cp = c; return 1; }
    *cp = ((c & 0x0Fu) << 12) | ((s[1] & 0x3Fu) << 6) | (s[2] & 0x3Fu);
    return 3;
  }
  *cp = ((c & 0x07u) << 18) | ((s[1] & 0x3Fu) << 12) | ((s[2] & 0x3Fu) << 6) | (s[3] & 0x3Fu);
  return 4;
}

/* Length of the UTF-8 character starting with byte c (1 for continuation/invalid bytes). */
static inline int tok_utf8_len(unsigned char c) {
  return c < 0xC0 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
}

int tok_utf8_encode(uint32_t cp, char out[4]); /* returns 1..4 */

/* Length of the longest valid UTF-8 prefix of s[0..n). */
size_t tok_utf8_valid_prefix(const char *s, size_t n);
/* Appends s[0..n) to out replacing each maximal invalid subsequence by U+FFFD, exactly as
 * Rust's String::from_utf8_lossy does (the reference's byte-level decoder uses it). */
int tok_utf8_lossy_append(tok_buf *out, const char *s, size_t n);
/* Rust char::is_whitespace (the Unicode White_Space property). */
int tok_is_whitespace(uint32_t cp);

/* String -> int32 map. Keys are copied into the map's own arena. */
typedef struct tok_strmap {
  uint32_t *slots;     /* [cap] entry index + 1, 0 = empty */
  uint32_t *key_off;   /* [n] offset of key in arena */
  uint32_t *key_len;   /* [n] */
  int32_t *vals;       /* [n] */
  uint32_t *hashes;    /* [n] */
  tok_buf arena;       /* key bytes */
  uint32_t n, cap, n_alloc;
} tok_strmap;

uint32_t tok_hash(const void *p, size_t n);
int tok_strmap_init(tok_strmap *m, uint32_t expect);
void tok_strmap_free(tok_strmap *m);
/* Inserts key -> val; when the key is already there, keeps the old value and returns 1. */
int tok_strmap_put(tok_strmap *m, const char *key, size_t len, int32_t val);
/* Returns the value or -1. */
int32_t tok_strmap_get(const tok_strmap *m, const char *key, size_t len);
/* Key text of entry i (borrowed). */
static inline const char *tok_strmap_key(const tok_strmap *m, uint32_t i) {
  return m->arena.data + m->key_off[i];
}

/* (left, right) -> (rank, merged id) for BPE merges: one 16-byte entry per slot so a probe
 * touches one cache line. */
typedef struct tok_pair_entry {
  uint64_t key;    /* (left << 32 | right) + 1; 0 = empty */
  int32_t rank;
  int32_t merged;
} tok_pair_entry;

typedef struct tok_pairmap {
  tok_pair_entry *e; /* [cap] */
  uint32_t cap, n;
} tok_pairmap;

int tok_pairmap_init(tok_pairmap *m, uint32_t expect);
void tok_pairmap_free(tok_pairmap *m);
/* Inserts; an existing pair keeps its first (lowest) rank. */
int tok_pairmap_put(tok_pairmap *m, int32_t left, int32_t right, int32_t rank, int32_t merged);
/* Returns the entry or NULL. */
static inline const tok_pair_entry *tok_pairmap_find(const tok_pairmap *m, int32_t left, int32_t right) {
  if (m->cap == 0) return NULL;
  uint64_t key = (((uint64_t)(uint32_t)left << 32) | (uint32_t)right) + 1;
  uint64_t h = key * 0x9E3779B97F4A7C15ull;
  uint32_t mask = m->cap - 1, i = (uint32_t)(h >> 32) & mask;
  for (;;) {
    const tok_pair_entry *e = &m->e[i];
    if (e->key == key) return e;
    if (e->key == 0) return NULL;
    i = (i + 1) & mask;
  }
}

#endif
