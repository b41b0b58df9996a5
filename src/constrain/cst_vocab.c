/* The vocabulary index (token byte strings and their trie), the compile cache, and
 * qv_constraint_compile's dispatch to the front ends. */
#include <stdlib.h>
#include <string.h>

#include "constrain/cst_internal.h"

typedef struct sort_ctx {
  const char *bytes;
  const uint32_t *off, *len;
} sort_ctx;

static int cmp_tok(const sort_ctx *s, int32_t x, int32_t y) {
  uint32_t lx = s->len[x], ly = s->len[y];
  int c = memcmp(s->bytes + s->off[x], s->bytes + s->off[y], lx < ly ? lx : ly);
  if (c) return c;
  if (lx != ly) return lx < ly ? -1 : 1;
  return x < y ? -1 : x > y;
}

/* Bottom-up merge sort of ids by their bytes (qsort has no context argument in C11). */
static int sort_ids(int32_t *ids, int32_t n, const sort_ctx *s) {
  int32_t *tmp = malloc((size_t)(n ? n : 1) * sizeof *tmp);
  if (!tmp) return QV_ENOMEM;
  int32_t *a = ids, *t = tmp;
  for (int32_t w = 1; w < n; w *= 2) {
    for (int32_t lo = 0; lo < n; lo += 2 * w) {
      int32_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
      int32_t i = lo, j = mid, k = lo;
      while (i < mid && j < hi) t[k++] = cmp_tok(s, a[i], a[j]) <= 0 ? a[i++] : a[j++];
      while (i < mid) t[k++] = a[i++];
      while (j < hi) t[k++] = a[j++];
    }
    int32_t *x = a;
    a = t;
    t = x;
  }
  if (a != ids) memcpy(ids, a, (size_t)n * sizeof *ids);
  free(tmp);
  return 0;
}

/* Classifies a token for the text chain (see cst_internal.h): TOK_TEXT when it is text (valid
 * UTF-8 characters, the ASCII ones plain), possibly ending inside a character, which counts as
 * one more character (the state after it is alive exactly when that character may follow);
 * TOK_TEXTX when text is followed by an x_byte at a character boundary; TOK_OTHER else.
 * *chars: characters of the text part. */
enum { TOK_OTHER = 0, TOK_TEXT, TOK_TEXTX };
static int token_class(const uint8_t *s, uint32_t n, int *chars) {
  *chars = 0;
  for (uint32_t i = 0; i < n;) {
    uint8_t c = s[i];
    uint32_t k, lo = 0x80, hi = 0xBF;
    if (c < 0x80 && cst_plain_byte(c)) {
      i++;
      ++*chars;
      continue;
    }
    if (cst_x_byte(c)) return TOK_TEXTX;
    if (c >= 0xC2 && c <= 0xDF) k = 1;
    else if (c >= 0xE0 && c <= 0xEF) k = 2, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
    else if (c >= 0xF0 && c <= 0xF4) k = 3, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
    else return TOK_OTHER; /* '"' or '\\' */
    for (uint32_t j = 1; j <= k; j++) {
      if (i + j >= n) { /* ends inside the character */
        ++*chars;
        return TOK_TEXT;
      }
      uint8_t d = s[i + j];
      if (d < (j == 1 ? lo : 0x80) || d > (j == 1 ? hi : 0xBF)) return TOK_OTHER;
    }
    i += k + 1;
    ++*chars;
  }
  return TOK_TEXT;
}

/* Characters of a text token, or -1. */
static int text_chars(const uint8_t *s, uint32_t n) {
  int ch;
  return token_class(s, n, &ch) == TOK_TEXT ? ch : -1;
}

static void trie_free(cst_trie *t) {
  free(t->tfirst_nt);
  free(t->tnext_nt);
  free(t->xfirst_nt);
  free(t->xnext_nt);
  free(t->text);
  free(t->tx);
  free(t->maxc);
  free(t->plain);
  free(t->depth);
  free(t->maxd);
  free(t->tbyte);
  free(t->tend);
  free(t->tok_first);
  free(t->tok_next);
  memset(t, 0, sizeof *t);
}

/* Sibling links that jump over the children whose subtree has skip[] set (a node has at most
 * 256 children): first[node] is its first other child, next[child] the next other sibling;
 * tend[node] when there is none. */
static void skip_links(const cst_trie *t, const uint8_t *skip, int32_t *first, int32_t *next) {
  for (int32_t p = 0; p < t->n_nodes; p++) {
    int32_t kids[256], k = 0;
    for (int32_t c = p + 1; c < t->tend[p] && k < 256; c = t->tend[c]) kids[k++] = c;
    int32_t nxt = t->tend[p];
    for (int32_t i = k - 1; i >= 0; i--) {
      next[kids[i]] = nxt;
      if (!skip[kids[i]]) nxt = kids[i];
    }
    first[p] = nxt;
  }
}

/* The byte classes of the class chains (cst_internal.h), besides ASCII letters: none (letters
 * alone are uniform in \w, [A-Za-z0-9-] and most identifier or hostname classes), and the
 * characters of an email's local part (digits and ._%+-). */
static const char *const cls_extra[CST_N_CLS] = {"", "0123456789._%+-"};

static void cls_free(cst_cls *cl) {
  free(cl->sub);
  free(cl->first_n);
  free(cl->next_n);
  free(cl->upto);
  memset(cl, 0, sizeof *cl);
}

/* Subtrees made only of class bytes (within CST_CLS_MAX of the root), their skip links, and
 * class tokens by length. A prefix count of the nodes that break the class decides each
 * subtree [n, tend[n]) at once. */
static int cls_build(qv_cst_vocab *v, int k) {
  const cst_trie *t = &v->trie;
  cst_cls *cl = &v->cls[k];
  int32_t nn = t->n_nodes;
  cst_bset_range(&cl->bytes, 'A', 'Z');
  cst_bset_range(&cl->bytes, 'a', 'z');
  for (const char *p = cls_extra[k]; *p; p++) cst_bset_add(&cl->bytes, (unsigned char)*p);
  int32_t *bad = malloc(((size_t)nn + 1) * sizeof *bad);
  cl->sub = malloc((size_t)nn);
  cl->first_n = malloc((size_t)nn * sizeof *cl->first_n);
  cl->next_n = malloc((size_t)nn * sizeof *cl->next_n);
  if (!bad || !cl->sub || !cl->first_n || !cl->next_n) {
    free(bad);
    return QV_ENOMEM;
  }
  bad[0] = 0;
  for (int32_t n = 0; n < nn; n++)
    bad[n + 1] = bad[n] + (n > 0 && (!cst_bset_has(&cl->bytes, t->tbyte[n]) || t->depth[n] > CST_CLS_MAX));
  for (int32_t n = 0; n < nn; n++) cl->sub[n] = n > 0 && bad[t->tend[n]] == bad[n];
  free(bad);
  skip_links(t, cl->sub, cl->first_n, cl->next_n);
  /* Class tokens: every byte in the class, at most CST_CLS_MAX long. */
  cl->lim = 0;
  for (int pass = 0; pass < 2; pass++) {
    for (int32_t id = 0; id < v->n_vocab; id++) {
      uint32_t len = v->len[id], j = 0;
      if (len == UINT32_MAX || len == 0 || len > CST_CLS_MAX) continue;
      const uint8_t *b = (const uint8_t *)v->bytes + v->off[id];
      while (j < len && cst_bset_has(&cl->bytes, b[j])) j++;
      if (j < len) continue;
      if (pass == 0 && (int32_t)len > cl->lim) cl->lim = (int32_t)len;
      for (int32_t l = (int32_t)len; pass == 1 && l <= cl->lim; l++)
        cl->upto[(size_t)l * (size_t)v->words + (size_t)(id >> 5)] |= 1u << (id & 31);
    }
    if (pass == 0 && !(cl->upto = calloc((size_t)(cl->lim + 1) * (size_t)v->words, sizeof *cl->upto))) return QV_ENOMEM;
  }
  return 0;
}

/* Inserting the tokens in byte order creates the trie's nodes in preorder. */
static int trie_build(qv_cst_vocab *v) {
  cst_trie *t = &v->trie;
  int32_t n = 0;
  int32_t *ids = malloc((size_t)(v->n_vocab ? v->n_vocab : 1) * sizeof *ids);
  if (!ids) return QV_ENOMEM;
  size_t total = 1;
  for (int32_t i = 0; i < v->n_vocab; i++)
    if (v->len[i] != UINT32_MAX) {
      ids[n++] = i;
      total += v->len[i];
    }
  sort_ctx sc = {v->bytes, v->off, v->len};
  if (sort_ids(ids, n, &sc)) {
    free(ids);
    return QV_ENOMEM;
  }
  t->tbyte = malloc(total);
  t->tend = malloc(total * sizeof *t->tend);
  t->tok_first = malloc(total * sizeof *t->tok_first);
  t->tok_next = malloc((size_t)(v->n_vocab ? v->n_vocab : 1) * sizeof *t->tok_next);
  int32_t *path = malloc((size_t)1026 * sizeof *path); /* node at each depth */
  /* plain tokens by length */
  v->words = (v->n_vocab + 31) / 32;
  v->plain_upto = calloc((size_t)(CST_PLAIN_MAX + 1) * (size_t)v->words, sizeof *v->plain_upto);
  if (!v->plain_upto) {
    free(ids);
    free(path);
    return QV_ENOMEM;
  }
  v->text_lim = 0;
  for (int32_t k = 0; k < n; k++) {
    int ch, cls = token_class((const uint8_t *)v->bytes + v->off[ids[k]], v->len[ids[k]], &ch);
    if (cls != TOK_OTHER && ch <= CST_TEXT_MAX && ch > v->text_lim) v->text_lim = ch;
  }
  v->text_upto = calloc((size_t)(v->text_lim + 1) * (size_t)v->words, sizeof *v->text_upto);
  if (!v->text_upto) {
    free(ids);
    free(path);
    return QV_ENOMEM;
  }
  for (int32_t k = 0; k < n; k++) {
    int32_t id = ids[k];
    int ch = text_chars((const uint8_t *)v->bytes + v->off[id], v->len[id]);
    for (int l = ch; ch > 0 && l <= v->text_lim; l++)
      v->text_upto[(size_t)l * (size_t)v->words + (size_t)(id >> 5)] |= 1u << (id & 31);
  }
  for (int32_t k = 0; k < n; k++) {
    int32_t id = ids[k];
    uint32_t len = v->len[id];
    if (len > CST_PLAIN_MAX) continue;
    const uint8_t *s = (const uint8_t *)v->bytes + v->off[id];
    uint32_t j = 0;
    while (j < len && cst_plain_byte(s[j])) j++;
    if (j < len) continue;
    for (uint32_t l = len; l <= CST_PLAIN_MAX; l++) v->plain_upto[(size_t)l * (size_t)v->words + (size_t)(id >> 5)] |= 1u << (id & 31);
  }
  if (!t->tbyte || !t->tend || !t->tok_first || !t->tok_next || !path) {
    free(ids);
    free(path);
    return QV_ENOMEM;
  }
  for (int32_t i = 0; i < v->n_vocab; i++) t->tok_next[i] = -1;
  int32_t nn = 1, depth = 0;
  t->tbyte[0] = 0;
  t->tok_first[0] = -1;
  path[0] = 0;
  const char *prev = NULL;
  uint32_t prev_len = 0;
  int32_t *last_tok = malloc(total * sizeof *last_tok);
  if (!last_tok) {
    free(ids);
    free(path);
    return QV_ENOMEM;
  }
  last_tok[0] = -1;
  for (int32_t k = 0; k < n; k++) {
    int32_t id = ids[k];
    const char *s = v->bytes + v->off[id];
    uint32_t len = v->len[id];
    uint32_t lcp = 0;
    while (prev && lcp < prev_len && lcp < len && s[lcp] == prev[lcp]) lcp++;
    while ((uint32_t)depth > lcp) t->tend[path[depth--]] = nn; /* close subtrees */
    for (uint32_t j = lcp; j < len; j++) {
      t->tbyte[nn] = (uint8_t)s[j];
      t->tok_first[nn] = -1;
      last_tok[nn] = -1;
      path[++depth] = nn++;
    }
    int32_t node = path[depth];
    if (last_tok[node] < 0) t->tok_first[node] = id;
    else t->tok_next[last_tok[node]] = id;
    last_tok[node] = id;
    prev = s;
    prev_len = len;
  }
  while (depth > 0) t->tend[path[depth--]] = nn;
  t->tend[0] = nn;
  t->n_nodes = nn;
  /* Plain subtrees, depths: children follow their parent in preorder, so a reverse pass
   * sees every child before its parent; the parent of node n is the nearest earlier node whose
   * subtree contains n (found with a stack in a forward pass). */
  t->plain = malloc((size_t)nn);
  t->depth = malloc((size_t)nn);
  t->maxd = malloc((size_t)nn);
  int32_t *parent = malloc((size_t)nn * sizeof *parent);
  if (!t->plain || !t->depth || !t->maxd || !parent) {
    free(parent);
    free(last_tok);
    free(ids);
    free(path);
    return QV_ENOMEM;
  }
  int32_t sp = 0;
  path[0] = 0;
  t->depth[0] = 0;
  parent[0] = -1;
  for (int32_t n = 1; n < nn; n++) {
    while (t->tend[path[sp]] <= n) sp--;
    parent[n] = path[sp];
    t->depth[n] = (uint8_t)(t->depth[path[sp]] < 255 ? t->depth[path[sp]] + 1 : 255);
    path[++sp] = n;
  }
  for (int32_t n = 0; n < nn; n++) {
    t->plain[n] = n > 0 && cst_plain_byte(t->tbyte[n]) && t->depth[n] <= CST_PLAIN_MAX;
    t->maxd[n] = t->depth[n];
  }
  for (int32_t n = nn - 1; n > 0; n--) {
    int32_t p = parent[n];
    if (!t->plain[n]) t->plain[p] = 0;
    if (t->maxd[n] > t->maxd[p]) t->maxd[p] = t->maxd[n];
  }
  /* Text subtrees: every token at or below is a text token of <= CST_TEXT_MAX characters. */
  t->text = malloc((size_t)nn);
  t->tx = malloc((size_t)nn);
  t->maxc = calloc((size_t)nn, 1);
  if (!t->text || !t->tx || !t->maxc) {
    free(parent);
    free(last_tok);
    free(ids);
    free(path);
    return QV_ENOMEM;
  }
  for (int32_t n = 0; n < nn; n++) {
    t->text[n] = t->tx[n] = n > 0;
    for (int32_t id = t->tok_first[n]; id >= 0 && t->tx[n]; id = t->tok_next[id]) {
      int ch, cls = token_class((const uint8_t *)v->bytes + v->off[id], v->len[id], &ch);
      if (cls == TOK_OTHER || ch > CST_TEXT_MAX) t->text[n] = t->tx[n] = 0;
      else if (cls == TOK_TEXTX) t->text[n] = 0;
      else if (ch > t->maxc[n]) t->maxc[n] = (uint8_t)ch;
    }
  }
  for (int32_t n = nn - 1; n > 0; n--) {
    int32_t p = parent[n];
    if (!t->text[n]) t->text[p] = 0;
    if (!t->tx[n]) t->tx[p] = 0;
    if (t->maxc[n] > t->maxc[p]) t->maxc[p] = t->maxc[n];
  }
  free(parent);
  /* Sibling links that skip text subtrees (a node has at most 256 children). */
  t->tfirst_nt = malloc((size_t)nn * sizeof *t->tfirst_nt);
  t->tnext_nt = malloc((size_t)nn * sizeof *t->tnext_nt);
  t->xfirst_nt = malloc((size_t)nn * sizeof *t->xfirst_nt);
  t->xnext_nt = malloc((size_t)nn * sizeof *t->xnext_nt);
  if (!t->tfirst_nt || !t->tnext_nt || !t->xfirst_nt || !t->xnext_nt) {
    free(last_tok);
    free(ids);
    free(path);
    return QV_ENOMEM;
  }
  skip_links(t, t->text, t->tfirst_nt, t->tnext_nt);
  skip_links(t, t->tx, t->xfirst_nt, t->xnext_nt);
  free(last_tok);
  free(ids);
  free(path);
  return 0;
}

static int vocab_alloc(qv_cst_vocab **out, int32_t n_vocab, size_t total) {
  qv_cst_vocab *v = calloc(1, sizeof *v);
  if (!v) return QV_ENOMEM;
  v->n_vocab = n_vocab;
  v->eos_id = -1;
  v->bytes = malloc(total ? total : 1);
  v->off = calloc((size_t)(n_vocab ? n_vocab : 1), sizeof *v->off);
  v->len = malloc((size_t)(n_vocab ? n_vocab : 1) * sizeof *v->len);
  if (!v->bytes || !v->off || !v->len || pthread_mutex_init(&v->mu, NULL)) {
    free(v->bytes);
    free(v->off);
    free(v->len);
    free(v);
    return QV_ENOMEM;
  }
  *out = v;
  return 0;
}

int qv_cst_vocab_create_raw(const char *const *tokens, const size_t *lens, int32_t n_vocab,
                            int32_t eos_id, qv_cst_vocab **out, qv_error *err) {
  *out = NULL;
  if (n_vocab <= 0 || n_vocab > (1 << 22)) return qv_error_set(err, QV_EINVAL, "bad vocabulary size %d", n_vocab);
  size_t total = 0;
  for (int32_t i = 0; i < n_vocab; i++)
    if (tokens[i] && lens[i] > 0 && lens[i] <= 1024) total += lens[i];
  qv_cst_vocab *v;
  if (vocab_alloc(&v, n_vocab, total)) return qv_error_set(err, QV_ENOMEM, "out of memory");
  size_t o = 0;
  for (int32_t i = 0; i < n_vocab; i++) {
    if (tokens[i] && lens[i] > 0 && lens[i] <= 1024) {
      memcpy(v->bytes + o, tokens[i], lens[i]);
      v->off[i] = (uint32_t)o;
      v->len[i] = (uint32_t)lens[i];
      o += lens[i];
    } else {
      v->len[i] = UINT32_MAX;
    }
  }
  v->eos_id = eos_id;
  if (eos_id >= 0 && eos_id < n_vocab) v->len[eos_id] = UINT32_MAX;
  int rc = trie_build(v);
  for (int k = 0; !rc && k < CST_N_CLS; k++) rc = cls_build(v, k);
  if (rc) {
    qv_cst_vocab_destroy(v);
    return qv_error_set(err, QV_ENOMEM, "out of memory");
  }
  *out = v;
  return 0;
}

int qv_cst_vocab_create(const qv_tokenizer *tok, qv_cst_vocab **out, qv_error *err) {
  *out = NULL;
  int32_t n = qv_tokenizer_vocab_size(tok);
  if (n <= 0) return qv_error_set(err, QV_EINVAL, "empty vocabulary");
  char **toks = calloc((size_t)n, sizeof *toks);
  size_t *lens = calloc((size_t)n, sizeof *lens);
  char *buf = malloc((size_t)n * 64 + 4096);
  size_t cap = (size_t)n * 64 + 4096, used = 0;
  int rc = (!toks || !lens || !buf) ? QV_ENOMEM : 0;
  for (int32_t i = 0; i < n && !rc; i++) {
    char tmp[1024];
    size_t len = 0;
    if (qv_tokenizer_token_bytes(tok, i, tmp, sizeof tmp, &len) || len == 0) continue;
    if (used + len > cap) {
      /* Pointers into buf are offsets until the end (buf may move). */
      size_t nc = cap * 2 + len;
      char *nb = realloc(buf, nc);
      if (!nb) { rc = QV_ENOMEM; break; }
      buf = nb;
      cap = nc;
    }
    memcpy(buf + used, tmp, len);
    toks[i] = (char *)(uintptr_t)(used + 1); /* offset + 1; 0 means absent */
    lens[i] = len;
    used += len;
  }
  for (int32_t i = 0; i < n && !rc; i++)
    if (toks[i]) toks[i] = buf + ((uintptr_t)toks[i] - 1);
  if (!rc) rc = qv_cst_vocab_create_raw((const char *const *)toks, lens, n, qv_tokenizer_eos_id(tok), out, err);
  else qv_error_set(err, QV_ENOMEM, "out of memory");
  free(toks);
  free(lens);
  free(buf);
  return rc;
}

void qv_cst_vocab_destroy(qv_cst_vocab *v) {
  if (!v) return;
  for (int i = 0; i < CST_COMPILE_CACHE; i++) qv_constraint_release(v->cache[i]);
  pthread_mutex_destroy(&v->mu);
  trie_free(&v->trie);
  for (int k = 0; k < CST_N_CLS; k++) cls_free(&v->cls[k]);
  free(v->plain_upto);
  free(v->text_upto);
  free(v->bytes);
  free(v->off);
  free(v->len);
  free(v);
}

int32_t qv_cst_vocab_size(const qv_cst_vocab *v) { return v ? v->n_vocab : 0; }

const char *qv_cst_vocab_token(const qv_cst_vocab *v, int32_t id, size_t *len) {
  if (!v || id < 0 || id >= v->n_vocab || v->len[id] == UINT32_MAX) {
    *len = 0;
    return NULL;
  }
  *len = v->len[id];
  return v->bytes + v->off[id];
}

/* ---- compile ---- */

static uint64_t fnv(const void *p, size_t n, uint64_t h) {
  const uint8_t *s = p;
  for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 1099511628211ULL;
  return h;
}

/* The canonical spec bytes: kind, flags and every string, length-prefixed. */
static int spec_key(const qv_cst_spec *s, char **out, size_t *out_len) {
  size_t n = 64 + s->text_len;
  for (int32_t i = 0; i < s->n_choices; i++) n += strlen(s->choices[i]) + 16;
  if (s->tool_name) n += strlen(s->tool_name) + 16;
  if (s->tool_format) n += strlen(s->tool_format) + 16;
  char *k = malloc(n);
  if (!k) return QV_ENOMEM;
  size_t o = 0;
#define PUT(p, len)                          \
  do {                                       \
    uint64_t l_ = (uint64_t)(len);           \
    memcpy(k + o, &l_, sizeof l_);           \
    o += sizeof l_;                          \
    if (l_) memcpy(k + o, (p), (size_t)l_);  \
    o += (size_t)l_;                         \
  } while (0)
  int32_t hdr[3] = {(int32_t)s->kind, s->any_whitespace, s->max_tool_calls};
  memcpy(k + o, hdr, sizeof hdr);
  o += sizeof hdr;
  PUT(s->text, s->text ? s->text_len : 0);
  for (int32_t i = 0; i < s->n_choices; i++) PUT(s->choices[i], strlen(s->choices[i]));
  PUT(s->tool_name, s->tool_name ? strlen(s->tool_name) : 0);
  PUT(s->tool_format, s->tool_format ? strlen(s->tool_format) : 0);
#undef PUT
  *out = k;
  *out_len = o;
  return 0;
}

static qv_constraint *cache_get(qv_cst_vocab *v, const char *key, size_t len, uint64_t h) {
  qv_constraint *c = NULL;
  pthread_mutex_lock(&v->mu);
  for (int i = 0; i < CST_COMPILE_CACHE; i++) {
    qv_constraint *e = v->cache[i];
    if (e && e->key_hash == h && e->key_len == len && !memcmp(e->key, key, len)) {
      c = qv_constraint_retain(e);
      v->cache_use[i] = ++v->cache_tick;
      break;
    }
  }
  pthread_mutex_unlock(&v->mu);
  return c;
}

static void cache_put(qv_cst_vocab *v, qv_constraint *c) {
  pthread_mutex_lock(&v->mu);
  int slot = 0;
  for (int i = 0; i < CST_COMPILE_CACHE; i++) {
    if (!v->cache[i]) {
      slot = i;
      break;
    }
    if (v->cache_use[i] < v->cache_use[slot]) slot = i;
  }
  qv_constraint *old = v->cache[slot];
  v->cache[slot] = qv_constraint_retain(c);
  v->cache_use[slot] = ++v->cache_tick;
  pthread_mutex_unlock(&v->mu);
  qv_constraint_release(old);
}

static int build(cst_builder *b, const qv_cst_spec *s, int32_t *root) {
  switch (s->kind) {
    case QV_CST_JSON:
      return cst_build_json_any(b, s->text && s->text_len == 6 && !memcmp(s->text, "object", 6),
                                s->any_whitespace, root);
    case QV_CST_JSON_SCHEMA: return cst_build_json_schema(b, s->text, s->text_len, s->any_whitespace, root);
    case QV_CST_REGEX: return cst_build_regex(b, s->text, s->text_len, root);
    case QV_CST_CHOICE: return cst_build_choice(b, s->choices, s->n_choices, root);
    case QV_CST_GBNF: return cst_build_gbnf(b, s->text, s->text_len, root);
    case QV_CST_LARK: return cst_build_lark(b, s->text, s->text_len, root);
    case QV_CST_TOOL_CALL:
      return cst_build_tool_call(b, s->text, s->text_len, s->tool_name, s->tool_format, s->max_tool_calls, root);
    default: return cst_fail(b, QV_EINVAL, "unknown constraint kind %d", (int)s->kind);
  }
}

int qv_constraint_compile(qv_cst_vocab *v, const qv_cst_spec *spec, qv_constraint **out,
                          qv_error *err) {
  *out = NULL;
  if (!v || !spec) return qv_error_set(err, QV_EINVAL, "no vocabulary or spec");
  if (spec->text_len > QV_CST_MAX_SPEC_BYTES)
    return qv_error_set(err, QV_ELIMIT, "constraint text over %d bytes", QV_CST_MAX_SPEC_BYTES);
  if (spec->n_choices > QV_CST_MAX_ENUM)
    return qv_error_set(err, QV_ELIMIT, "more than %d choices", QV_CST_MAX_ENUM);
  char *key;
  size_t key_len;
  if (spec_key(spec, &key, &key_len)) return qv_error_set(err, QV_ENOMEM, "out of memory");
  uint64_t h = fnv(key, key_len, 1469598103934665603ULL);
  qv_constraint *c = cache_get(v, key, key_len, h);
  if (c) {
    free(key);
    *out = c;
    return 0;
  }
  c = calloc(1, sizeof *c);
  if (!c) {
    free(key);
    return qv_error_set(err, QV_ENOMEM, "out of memory");
  }
  atomic_init(&c->refs, 1);
  c->vocab = v;
  c->key = key;
  c->key_len = key_len;
  c->key_hash = h;
  c->words = (v->n_vocab + 31) / 32;
  cst_builder b;
  cst_builder_init(&b, err);
  int32_t root = -1;
  int rc = build(&b, spec, &root);
  if (!rc && !b.failed) rc = cst_gram_finish(&b, root, &c->g);
  if (b.failed) rc = b.failed;
  cst_builder_deinit(&b);
  if (rc) {
    qv_constraint_release(c);
    return rc;
  }
  cache_put(v, c);
  *out = c;
  return 0;
}

qv_constraint *qv_constraint_retain(qv_constraint *c) {
  if (c) atomic_fetch_add(&c->refs, 1);
  return c;
}

void qv_constraint_release(qv_constraint *c) {
  if (!c || atomic_fetch_sub(&c->refs, 1) != 1) return;
  cst_gram_free(&c->g);
  free(c->key);
  free(c->cache_key);
  free(c->cache_use);
  free(c->cache_mask);
  free(c);
}

void cst_constraint_stats(const qv_constraint *c, int64_t *hits, int64_t *misses) {
  *hits = c->n_hits;
  *misses = c->n_misses;
}
