/* Byte buffers, UTF-8 helpers and the two hash maps of the tokenizer (see tok_util.h). The maps
 * use open addressing with linear probing and a power-of-two table kept under 50% full, which
 * keeps lookups to one or two cache lines on the encode hot path. */
#include "tokenizer/tok_util.h"

#include <stdlib.h>
#include <string.h>

#include "quiver/error.h"

int tok_buf_reserve(tok_buf *b, size_t extra) {
  if (b->len + extra + 1 <= b->cap) return 0;
  size_t cap = b->cap ? b->cap : 64;
  while (cap < b->len + extra + 1) {
    if (cap > SIZE_MAX / 2) return QV_ENOMEM;
    cap *= 2;
  }
  char *p = realloc(b->data, cap);
  if (!p) return QV_ENOMEM;
  b->data = p;
  b->cap = cap;
  return 0;
}

int tok_buf_append(tok_buf *b, const void *p, size_t n) {
  if (tok_buf_reserve(b, n)) return QV_ENOMEM;
  if (n) memcpy(b->data + b->len, p, n);
  b->len += n;
  b->data[b->len] = '\0';
  return 0;
}

void tok_buf_free(tok_buf *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

int tok_utf8_encode(uint32_t cp, char out[4]) {
  if (cp < 0x80) { out[0] = (char)cp; return 1; }
  if (cp < 0x800) {
    out[0] = (char)(0xC0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    out[0] = (char)(0xE0 | (cp >> 12));
    out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
  }
  out[0] = (char)(0xF0 | (cp >> 18));
  out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
  out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
  out[3] = (char)(0x80 | (cp & 0x3F));
  return 4;
}

/* Length of the valid UTF-8 character at s[0..n), or -(bytes of its maximal invalid subpart). */
static int utf8_step(const unsigned char *s, size_t n) {
  unsigned c = s[0];
  if (c < 0x80) return 1;
  int need;
  unsigned lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) need = 2;
  else if (c >= 0xE0 && c <= 0xEF) {
    need = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    need = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return -1;
  }
  for (int k = 1; k < need; k++) {
    if ((size_t)k >= n) return -k;
    unsigned d = s[k];
    if (k == 1 ? (d < lo || d > hi) : (d < 0x80 || d > 0xBF)) return -k;
  }
  return need;
}

size_t tok_utf8_valid_prefix(const char *s, size_t n) {
  const unsigned char *u = (const unsigned char *)s;
  size_t i = 0;
  while (i < n) {
    if (u[i] < 0x80) { i++; continue; }
    int k = utf8_step(u + i, n - i);
    if (k < 0) return i;
    i += (size_t)k;
  }
  return n;
}

int tok_utf8_lossy_append(tok_buf *out, const char *s, size_t n) {
  const unsigned char *u = (const unsigned char *)s;
  size_t i = 0, run = 0;
  while (i < n) {
    int k = u[i] < 0x80 ? 1 : utf8_step(u + i, n - i);
    if (k > 0) { i += (size_t)k; continue; }
    if (tok_buf_append(out, s + run, i - run)) return QV_ENOMEM;
    if (tok_buf_append(out, "\xEF\xBF\xBD", 3)) return QV_ENOMEM;
    i += (size_t)(-k);
    run = i;
  }
  return tok_buf_append(out, s + run, n - run);
}

int tok_is_whitespace(uint32_t c) {
  if (c <= 0x20) return c == 0x20 || (c >= 0x09 && c <= 0x0D);
  if (c < 0x85) return 0;
  return c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
         c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* FNV-1a folded with a final avalanche; strings are short so this is cheap enough. */
uint32_t tok_hash(const void *p, size_t n) {
  const unsigned char *s = p;
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; i++) {
    h ^= s[i];
    h *= 0x100000001b3ull;
  }
  h ^= h >> 29;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 32;
  return (uint32_t)h;
}

int tok_strmap_init(tok_strmap *m, uint32_t expect) {
  memset(m, 0, sizeof *m);
  uint32_t cap = 16;
  while (cap < expect * 2u + 2u && cap < (1u << 30)) cap *= 2;
  m->slots = calloc(cap, sizeof *m->slots);
  if (!m->slots) return QV_ENOMEM;
  m->cap = cap;
  return 0;
}

void tok_strmap_free(tok_strmap *m) {
  free(m->slots);
  free(m->key_off);
  free(m->key_len);
  free(m->vals);
  free(m->hashes);
  tok_buf_free(&m->arena);
  memset(m, 0, sizeof *m);
}

static int strmap_grow(tok_strmap *m) {
  uint32_t cap = m->cap * 2;
  uint32_t *slots = calloc(cap, sizeof *slots);
  if (!slots) return QV_ENOMEM;
  for (uint32_t e = 0; e < m->n; e++) {
    uint32_t i = m->hashes[e] & (cap - 1);
    while (slots[i]) i = (i + 1) & (cap - 1);
    slots[i] = e + 1;
  }
  free(m->slots);
  m->slots = slots;
  m->cap = cap;
  return 0;
}

int32_t tok_strmap_get(const tok_strmap *m, const char *key, size_t len) {
  if (!m->cap) return -1;
  uint32_t h = tok_hash(key, len), mask = m->cap - 1, i = h & mask;
  for (;;) {
    uint32_t s = m->slots[i];
    if (!s) return -1;
    uint32_t e = s - 1;
    if (m->hashes[e] == h && m->key_len[e] == len && memcmp(m->arena.data + m->key_off[e], key, len) == 0)
      return m->vals[e];
    i = (i + 1) & mask;
  }
}

int tok_strmap_put(tok_strmap *m, const char *key, size_t len, int32_t val) {
  if (len > UINT32_MAX / 2 || m->arena.len > UINT32_MAX / 2) return QV_ELIMIT;
  if ((m->n + 1) * 2 > m->cap && strmap_grow(m)) return QV_ENOMEM;
  uint32_t h = tok_hash(key, len), mask = m->cap - 1, i = h & mask;
  for (;;) {
    uint32_t s = m->slots[i];
    if (!s) break;
    uint32_t e = s - 1;
    if (m->hashes[e] == h && m->key_len[e] == len && memcmp(m->arena.data + m->key_off[e], key, len) == 0)
      return 1;
    i = (i + 1) & mask;
  }
  if (m->n == m->n_alloc) {
    uint32_t na = m->n_alloc ? m->n_alloc * 2 : 64;
    uint32_t *ko = realloc(m->key_off, na * sizeof *ko);
    if (!ko) return QV_ENOMEM;
    m->key_off = ko;
    uint32_t *kl = realloc(m->key_len, na * sizeof *kl);
    if (!kl) return QV_ENOMEM;
    m->key_len = kl;
    int32_t *v = realloc(m->vals, na * sizeof *v);
    if (!v) return QV_ENOMEM;
    m->vals = v;
    uint32_t *hs = realloc(m->hashes, na * sizeof *hs);
    if (!hs) return QV_ENOMEM;
    m->hashes = hs;
    m->n_alloc = na;
  }
  uint32_t off = (uint32_t)m->arena.len;
  if (tok_buf_append(&m->arena, key, len) || tok_buf_append(&m->arena, "", 1)) return QV_ENOMEM;
  uint32_t e = m->n++;
  m->key_off[e] = off;
  m->key_len[e] = (uint32_t)len;
  m->vals[e] = val;
  m->hashes[e] = h;
  m->slots[i] = e + 1;
  return 0;
}

int tok_pairmap_init(tok_pairmap *m, uint32_t expect) {
  memset(m, 0, sizeof *m);
  uint32_t cap = 16;
  while (cap < expect * 2u + 2u && cap < (1u << 30)) cap *= 2;
  m->e = calloc(cap, sizeof *m->e);
  if (!m->e) return QV_ENOMEM;
  m->cap = cap;
  return 0;
}

void tok_pairmap_free(tok_pairmap *m) {
  free(m->e);
  memset(m, 0, sizeof *m);
}

int tok_pairmap_put(tok_pairmap *m, int32_t left, int32_t right, int32_t rank, int32_t merged) {
  if ((m->n + 1) * 2 > m->cap) {
    tok_pairmap g;
    if (tok_pairmap_init(&g, m->cap)) return QV_ENOMEM;
    for (uint32_t i = 0; i < m->cap; i++) {
      if (!m->e[i].key) continue;
      uint64_t k = m->e[i].key - 1;
      tok_pairmap_put(&g, (int32_t)(k >> 32), (int32_t)(uint32_t)k, m->e[i].rank, m->e[i].merged);
    }
    tok_pairmap_free(m);
    *m = g;
  }
  uint64_t key = (((uint64_t)(uint32_t)left << 32) | (uint32_t)right) + 1;
  uint64_t h = key * 0x9E3779B97F4A7C15ull;
  uint32_t mask = m->cap - 1, i = (uint32_t)(h >> 32) & mask;
  while (m->e[i].key) {
    if (m->e[i].key == key) return 1;
    i = (i + 1) & mask;
  }
  m->e[i] = (tok_pair_entry){key, rank, merged};
  m->n++;
  return 0;
}
