/* The BPE model: one pre-tokenized word -> ids. Characters become initial symbols (or byte
 * tokens with byte_fallback, or <unk>), then the best-ranked adjacent pair is merged until none
 * is left, with ties going to the leftmost pair: a binary heap with lazy invalidation, as the
 * reference's Word::merge_all does. Two rank sources: the merges table of tokenizer.json
 * (TOK_MODEL_BPE) or, for SentencePiece GGUF vocabularies, the score of the merged token
 * (TOK_MODEL_SPM_SCORES). Scratch arrays live in a caller-held struct so a word costs no malloc. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_internal.h"

typedef struct sym {
  int32_t id;
  int32_t prev, next;  /* linked list over live symbols, -1 at the ends */
  uint32_t off, len;   /* bytes of the word this symbol covers; len 0 once merged away */
  uint8_t fixed;       /* a byte-fallback symbol: never merged by score */
} sym;

typedef struct heap_item { int32_t rank, pos, new_id; } heap_item;

enum { SCAN_MAX_SYMS = 24 };

struct tok_bpe_scratch {
  sym *syms; size_t syms_cap;
  heap_item *heap; size_t heap_n, heap_cap;
};

void tok_bpe_scratch_free(tok_bpe_scratch *s) {
  if (!s) return;
  free(s->syms);
  free(s->heap);
  free(s);
}

int tok_ids_push(tok_ids *ids, int32_t id) {
  if (ids->n == ids->cap) {
    size_t cap = ids->cap ? ids->cap * 2 : 64;
    int32_t *v = realloc(ids->v, cap * sizeof *v);
    if (!v) return QV_ENOMEM;
    ids->v = v;
    ids->cap = cap;
  }
  ids->v[ids->n++] = id;
  return 0;
}

static int heap_less(heap_item a, heap_item b) {
  return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos);
}

static int heap_push(tok_bpe_scratch *s, heap_item it) {
  if (s->heap_n == s->heap_cap) {
    size_t cap = s->heap_cap ? s->heap_cap * 2 : 64;
    heap_item *h = realloc(s->heap, cap * sizeof *h);
    if (!h) return QV_ENOMEM;
    s->heap = h;
    s->heap_cap = cap;
  }
  size_t i = s->heap_n++;
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (!heap_less(it, s->heap[p])) break;
    s->heap[i] = s->heap[p];
    i = p;
  }
  s->heap[i] = it;
  return 0;
}

static heap_item heap_pop(tok_bpe_scratch *s) {
  heap_item top = s->heap[0], last = s->heap[--s->heap_n];
  size_t i = 0, n = s->heap_n;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= n) break;
    if (c + 1 < n && heap_less(s->heap[c + 1], s->heap[c])) c++;
    if (!heap_less(s->heap[c], last)) break;
    s->heap[i] = s->heap[c];
    i = c;
  }
  if (n) s->heap[i] = last;
  return top;
}

/* Rank and merged id of the pair (a, b), or 0 when they do not merge. */
static int pair_rank(const qv_tokenizer *tok, const char *w, const sym *a, const sym *b,
                     int32_t *rank, int32_t *new_id) {
  if (tok->model_kind == TOK_MODEL_BPE) {
    const tok_pair_entry *e = tok_pairmap_find(&tok->merges, a->id, b->id);
    if (!e) return 0;
    *rank = e->rank;
    *new_id = e->merged;
    return 1;
  }
  if (a->fixed || b->fixed) return 0;
  int32_t id = tok_strmap_get(&tok->vocab, w + a->off, (size_t)a->len + b->len);
  if (id < 0) return 0;
  *rank = tok->spm_rank[id];
  *new_id = id;
  return *rank >= 0;
}

static int push_pair(const qv_tokenizer *tok, tok_bpe_scratch *s, const char *w, int32_t pos) {
  sym *a = &s->syms[pos];
  if (a->next < 0) return 0;
  int32_t rank, new_id;
  if (!pair_rank(tok, w, a, &s->syms[a->next], &rank, &new_id)) return 0;
  return heap_push(s, (heap_item){rank, pos, new_id});
}

int tok_bpe_word(const qv_tokenizer *tok, tok_bpe_scratch **scratch, const char *w, size_t n,
                 tok_ids *out) {
  if (n == 0) return 0;
  if (tok->ignore_merges) {
    int32_t id = tok_strmap_get(&tok->vocab, w, n);
    if (id >= 0) return tok_ids_push(out, id);
  }
  if (!*scratch) {
    *scratch = calloc(1, sizeof **scratch);
    if (!*scratch) return QV_ENOMEM;
  }
  tok_bpe_scratch *s = *scratch;
  /* At most one symbol per byte, plus prefix/suffix bytes under byte fallback. */
  size_t need = n * (1 + tok->cont_prefix_len + tok->eow_suffix_len) + 2;
  if (need > s->syms_cap) {
    sym *v = realloc(s->syms, need * sizeof *v);
    if (!v) return QV_ENOMEM;
    s->syms = v;
    s->syms_cap = need;
  }
  size_t n_sym = 0;
  int32_t unk_pending = -1; /* fused unk waiting to be emitted: its byte offset */
  uint32_t unk_off = 0, unk_len = 0;
  char stack_buf[64];
  const unsigned char *u = (const unsigned char *)w;
  for (size_t i = 0; i < n;) {
    size_t k = (size_t)tok_utf8_len(u[i]);
    if (k > n - i) k = n - i;
    int is_first = i == 0, is_last = i + k == n;
    const char *key = w + i;
    size_t key_len = k;
    char *heap_buf = NULL;
    if ((!is_first && tok->cont_prefix) || (is_last && tok->eow_suffix)) {
      size_t pl = !is_first && tok->cont_prefix ? tok->cont_prefix_len : 0;
      size_t sl = is_last && tok->eow_suffix ? tok->eow_suffix_len : 0;
      char *buf = stack_buf;
      if (pl + k + sl > sizeof stack_buf) {
        heap_buf = malloc(pl + k + sl);
        if (!heap_buf) return QV_ENOMEM;
        buf = heap_buf;
      }
      if (pl) memcpy(buf, tok->cont_prefix, pl);
      memcpy(buf + pl, w + i, k);
      if (sl) memcpy(buf + pl + k, tok->eow_suffix, sl);
      key = buf;
      key_len = pl + k + sl;
    }
    int32_t id = key_len == 1 && (unsigned char)key[0] < 0x80 && tok->char_ids[(unsigned char)key[0]] != -2
                     ? tok->char_ids[(unsigned char)key[0]]
                     : tok_strmap_get(&tok->vocab, key, key_len);
    int done = 0;
    if (id >= 0) {
      if (unk_pending >= 0) {
        s->syms[n_sym++] = (sym){unk_pending, -1, -1, unk_off, unk_len, 1};
        unk_pending = -1;
      }
      s->syms[n_sym++] = (sym){id, -1, -1, (uint32_t)i, (uint32_t)k, 0};
      done = 1;
    } else if (tok->byte_fallback) {
      int all = 1;
      for (size_t b = 0; b < key_len; b++) all &= tok->byte_ids[(unsigned char)key[b]] >= 0;
      if (all) {
        /* The reference adds byte tokens without flushing a pending <unk> first. */
        for (size_t b = 0; b < key_len; b++)
          s->syms[n_sym++] = (sym){tok->byte_ids[(unsigned char)key[b]], -1, -1, (uint32_t)i, 1, 1};
        done = 1;
      }
    }
    if (!done && tok->unk_id >= 0) {
      if (unk_pending >= 0 && tok->fuse_unk) {
        unk_len += (uint32_t)k;
      } else {
        if (unk_pending >= 0) s->syms[n_sym++] = (sym){unk_pending, -1, -1, unk_off, unk_len, 1};
        unk_pending = tok->unk_id;
        unk_off = (uint32_t)i;
        unk_len = (uint32_t)k;
      }
    }
    free(heap_buf);
    i += k;
  }
  if (unk_pending >= 0) s->syms[n_sym++] = (sym){unk_pending, -1, -1, unk_off, unk_len, 1};
  if (n_sym == 0) return 0;
  for (size_t i = 0; i < n_sym; i++) {
    s->syms[i].prev = (int32_t)i - 1;
    s->syms[i].next = i + 1 < n_sym ? (int32_t)i + 1 : -1;
  }
  int rc = 0;
  if (n_sym <= SCAN_MAX_SYMS) {
    /* Short words: a linear scan for the best (rank, position) pair beats heap upkeep, and picks
     * exactly the pair the heap would. pr[i] / pm[i]: rank and merged id of (i, next(i)). */
    int32_t pr[SCAN_MAX_SYMS], pm[SCAN_MAX_SYMS];
    for (size_t i = 0; i < n_sym; i++) {
      pr[i] = INT32_MAX;
      if (i + 1 < n_sym && !pair_rank(tok, w, &s->syms[i], &s->syms[i + 1], &pr[i], &pm[i])) pr[i] = INT32_MAX;
    }
    for (;;) {
      int32_t best = -1, best_rank = INT32_MAX;
      for (int32_t i = 0; i >= 0; i = s->syms[i].next)
        if (pr[i] < best_rank) { best_rank = pr[i]; best = i; }
      if (best < 0) break;
      sym *a = &s->syms[best], *b = &s->syms[a->next];
      a->id = pm[best];
      a->len += b->len;
      a->fixed = 0;
      a->next = b->next;
      if (b->next >= 0) s->syms[b->next].prev = best;
      b->id = -1;
      b->len = 0;
      if (a->next < 0 || !pair_rank(tok, w, a, &s->syms[a->next], &pr[best], &pm[best])) pr[best] = INT32_MAX;
      if (a->prev >= 0 && !pair_rank(tok, w, &s->syms[a->prev], a, &pr[a->prev], &pm[a->prev])) pr[a->prev] = INT32_MAX;
    }
    for (int32_t i = 0; rc == 0 && i >= 0; i = s->syms[i].next) rc = tok_ids_push(out, s->syms[i].id);
    return rc;
  }
  s->heap_n = 0;
  for (size_t i = 0; i + 1 < n_sym && rc == 0; i++) rc = push_pair(tok, s, w, (int32_t)i);
  while (rc == 0 && s->heap_n > 0) {
    heap_item top = heap_pop(s);
    sym *a = &s->syms[top.pos];
    if (a->len == 0 && a->id < 0) continue;
    if (a->next < 0 || a->id < 0) continue;
    sym *b = &s->syms[a->next];
    int32_t rank, new_id;
    if (!pair_rank(tok, w, a, b, &rank, &new_id) || new_id != top.new_id || rank != top.rank) continue;
    a->id = new_id;
    a->len += b->len;
    a->fixed = 0;
    a->next = b->next;
    if (b->next >= 0) s->syms[b->next].prev = top.pos;
    b->id = -1;
    b->len = 0;
    if (a->prev >= 0) rc = push_pair(tok, s, w, a->prev);
    if (rc == 0) rc = push_pair(tok, s, w, top.pos);
  }
  for (int32_t i = 0; rc == 0 && i >= 0; i = s->syms[i].next) rc = tok_ids_push(out, s->syms[i].id);
  return rc;
}
