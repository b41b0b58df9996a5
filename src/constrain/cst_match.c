/* The matcher: a set of grammar stacks advanced byte by byte, and token masks.
 *
 * A stack is a chain of nodes (pos, parent): pos is the next element of an alternative, the
 * parent is where to continue when that alternative ends. A matcher state is the set of
 * stacks whose top is a byte set (its "leaves") plus an accept flag (some stack emptied: the
 * output so far is a complete match). Reading a byte keeps the leaves whose set has it, moves
 * each past it and closes over references (push every alternative) and ends (pop), with
 * dedup by a structural hash of (pos, parent chain), so equal stacks merge and states compare
 * by hash. A reference that ends its alternative is a tail call (no new frame), so repetition
 * runs in constant depth; stacks deeper than QV_CST_MAX_STACK are dropped.
 *
 * Masks walk the vocabulary trie depth first, advancing the state one byte per edge and
 * pruning dead subtrees; nodes made during the walk are scratch above a watermark. Results are
 * cached per constraint by state hash (LRU, bounded bytes), so the many steps that revisit a
 * state (inside a string, between properties of the same shape) cost one copy. Nodes of
 * accepted tokens are compacted when the pool grows; rollback replays the accepted tokens. */
#include <stdlib.h>
#include <string.h>

#include "constrain/cst_internal.h"

typedef struct cst_node {
  int32_t pos, parent, depth;
  uint64_t hash;
} cst_node;

typedef struct walk_frame {
  int32_t tnode, cursor;  /* trie node and its next child to try */
  int32_t lv0, nlv;       /* the frame's leaves in m->lv */
  uint64_t hash;          /* their state hash */
  int32_t chain;          /* 1: reached from the root over plain bytes only, within the plain chain */
  int32_t tchain;         /* 1: reached over text characters only, within the text chain */
  int32_t skip;           /* SKIP_TEXT / SKIP_CLASS: every text / class child is decided (visit only the others) */
  int32_t kchain;         /* 1: reached over class bytes only, within the class chain */
  int32_t tpend;          /* continuation bytes still due in the current character */
  int32_t tchars;         /* complete characters on the path */
  uint8_t tlo, thi;       /* range of the next continuation byte */
  cst_bset first;         /* bytes some leaf accepts */
} walk_frame;

enum { SKIP_NONE = 0, SKIP_TEXT, SKIP_CLASS };

typedef struct memo_ent memo_ent;

struct qv_matcher {
  qv_constraint *c;
  cst_node *nodes; int32_t n_nodes, cap_nodes;
  int32_t *lv; int32_t n_lv, cap_lv;   /* leaves: [0, n_leaves) the state, scratch after */
  int32_t n_leaves;
  int accept;
  int32_t *hist; int32_t n_hist, cap_hist;
  int32_t live_after_gc;
  /* Closure scratch: a visited set with generation stamps, and a work list of (pos, parent). */
  uint64_t *vis_key; uint32_t *vis_gen; uint32_t gen; int32_t cap_vis, n_vis;
  int32_t *work; int32_t cap_work;
  walk_frame *frames; int32_t cap_frames;
  memo_ent *memo; int32_t cap_memo, n_memo; /* walk transition memo (power-of-two capacity) */
  uint32_t memo_gen;
  int oom;
};

static int grow(void **p, int32_t *cap, int32_t need, size_t elt) {
  if (need <= *cap) return 0;
  int32_t c = *cap ? *cap : 64;
  while (c < need) c *= 2;
  void *q = realloc(*p, (size_t)c * elt);
  if (!q) return -1;
  *p = q;
  *cap = c;
  return 0;
}

static inline uint64_t mix(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

static inline uint64_t node_hash(const qv_matcher *m, int32_t pos, int32_t parent) {
  uint64_t ph = parent < 0 ? 0x5bd1e995ULL : m->nodes[parent].hash;
  return mix(ph * 0x9E3779B97F4A7C15ULL + (uint64_t)(uint32_t)pos + 1);
}

static int32_t node_new(qv_matcher *m, int32_t pos, int32_t parent, uint64_t h) {
  if (grow((void **)&m->nodes, &m->cap_nodes, m->n_nodes + 1, sizeof *m->nodes)) {
    m->oom = 1;
    return -1;
  }
  cst_node *n = &m->nodes[m->n_nodes];
  n->pos = pos;
  n->parent = parent;
  n->depth = parent < 0 ? 0 : m->nodes[parent].depth + 1;
  n->hash = h;
  return m->n_nodes++;
}

/* Visited set: returns 1 when h was already seen in this generation. */
static int visit(qv_matcher *m, uint64_t h) {
  if (m->n_vis * 2 >= m->cap_vis) {
    int32_t cap = m->cap_vis ? m->cap_vis * 2 : 256;
    uint64_t *k = malloc((size_t)cap * sizeof *k);
    uint32_t *g = calloc((size_t)cap, sizeof *g);
    if (!k || !g) {
      free(k);
      free(g);
      m->oom = 1;
      return 1;
    }
    for (int32_t i = 0; i < m->cap_vis; i++)
      if (m->vis_gen[i] == m->gen) {
        uint32_t j = (uint32_t)m->vis_key[i] & (uint32_t)(cap - 1);
        while (g[j] == m->gen) j = (j + 1) & (uint32_t)(cap - 1);
        k[j] = m->vis_key[i];
        g[j] = m->gen;
      }
    free(m->vis_key);
    free(m->vis_gen);
    m->vis_key = k;
    m->vis_gen = g;
    m->cap_vis = cap;
  }
  uint32_t j = (uint32_t)h & (uint32_t)(m->cap_vis - 1);
  while (m->vis_gen[j] == m->gen) {
    if (m->vis_key[j] == h) return 1;
    j = (j + 1) & (uint32_t)(m->cap_vis - 1);
  }
  m->vis_key[j] = h;
  m->vis_gen[j] = m->gen;
  m->n_vis++;
  return 0;
}

static void new_generation(qv_matcher *m) {
  m->n_vis = 0;
  if (++m->gen == 0) { /* wrapped: clear stamps */
    if (m->vis_gen) memset(m->vis_gen, 0, (size_t)m->cap_vis * sizeof *m->vis_gen);
    m->gen = 1;
  }
}

static int lv_push(qv_matcher *m, int32_t node) {
  if (grow((void **)&m->lv, &m->cap_lv, m->n_lv + 1, sizeof *m->lv)) {
    m->oom = 1;
    return -1;
  }
  m->lv[m->n_lv++] = node;
  return 0;
}

/* Closes (pos, parent) over references and ends, appending leaves to m->lv. Uses the current
 * visited generation (the caller starts one per state being built). */
static void closure(qv_matcher *m, int32_t pos0, int32_t parent0, int *accept) {
  const cst_gram *g = &m->c->g;
  int32_t nw = 0;
  if (grow((void **)&m->work, &m->cap_work, 2, sizeof *m->work)) {
    m->oom = 1;
    return;
  }
  m->work[nw++] = pos0;
  m->work[nw++] = parent0;
  while (nw > 0) {
    int32_t parent = m->work[--nw], pos = m->work[--nw];
    uint64_t h = node_hash(m, pos, parent);
    if (visit(m, h)) continue;
    int32_t e = g->elems[pos];
    if (e >= 0) {
      int32_t n = node_new(m, pos, parent, h);
      if (n >= 0) lv_push(m, n);
    } else if (e == CST_END) {
      if (parent < 0) *accept = 1;
      else {
        if (grow((void **)&m->work, &m->cap_work, nw + 2, sizeof *m->work)) {
          m->oom = 1;
          return;
        }
        m->work[nw++] = m->nodes[parent].pos;
        m->work[nw++] = m->nodes[parent].parent;
      }
    } else {
      int32_t r = CST_REF0 - e, cont = parent;
      if (g->elems[pos + 1] != CST_END) {
        if (parent >= 0 && m->nodes[parent].depth + 1 >= QV_CST_MAX_STACK) continue;
        cont = node_new(m, pos + 1, parent, node_hash(m, pos + 1, parent));
        if (cont < 0) return;
      }
      int32_t na = g->rule_nalt[r];
      if (grow((void **)&m->work, &m->cap_work, nw + 2 * na, sizeof *m->work)) {
        m->oom = 1;
        return;
      }
      for (int32_t a = na - 1; a >= 0; a--) {
        m->work[nw++] = g->alt_start[g->rule_alt0[r] + a];
        m->work[nw++] = cont;
      }
    }
  }
}

/* Advances leaves lv[from, from+n) on byte c; the new leaves are appended to m->lv starting
 * at the returned index, *n_out of them. */
static int32_t advance(qv_matcher *m, int32_t from, int32_t n, unsigned c, int32_t *n_out, int *accept) {
  const cst_gram *g = &m->c->g;
  int32_t start = m->n_lv;
  *accept = 0;
  new_generation(m);
  for (int32_t i = 0; i < n; i++) {
    const cst_node *nd = &m->nodes[m->lv[from + i]];
    if (!cst_bset_has(&g->sets[g->elems[nd->pos]], c)) continue;
    closure(m, nd->pos + 1, nd->parent, accept);
  }
  *n_out = m->n_lv - start;
  return start;
}

static void set_initial(qv_matcher *m) {
  const cst_gram *g = &m->c->g;
  m->n_nodes = 0;
  m->n_lv = 0;
  m->accept = 0;
  new_generation(m);
  int32_t r = g->root;
  for (int32_t a = 0; a < g->rule_nalt[r]; a++) closure(m, g->alt_start[g->rule_alt0[r] + a], -1, &m->accept);
  m->n_leaves = m->n_lv;
  m->live_after_gc = m->n_nodes;
}

int qv_matcher_create(qv_constraint *c, qv_matcher **out) {
  *out = NULL;
  qv_matcher *m = calloc(1, sizeof *m);
  if (!m) return QV_ENOMEM;
  m->c = qv_constraint_retain(c);
  set_initial(m);
  if (m->oom) {
    qv_matcher_destroy(m);
    return QV_ENOMEM;
  }
  *out = m;
  return 0;
}

void qv_matcher_destroy(qv_matcher *m) {
  if (!m) return;
  qv_constraint_release(m->c);
  free(m->nodes);
  free(m->lv);
  free(m->hist);
  free(m->vis_key);
  free(m->vis_gen);
  free(m->work);
  free(m->frames);
  free(m->memo);
  free(m);
}

int32_t qv_matcher_mask_words(const qv_matcher *m) { return m->c->words; }
int qv_matcher_is_complete(const qv_matcher *m) { return m->accept; }
int qv_matcher_is_dead(const qv_matcher *m) { return m->n_leaves == 0; }
int32_t qv_matcher_n_accepted(const qv_matcher *m) { return m->n_hist; }

/* Keeps only the nodes the current leaves reach. Parents always precede children in the
 * pool, so one forward pass renumbers. */
static void compact(qv_matcher *m) {
  int32_t n = m->n_nodes;
  int32_t *map = malloc((size_t)(n ? n : 1) * sizeof *map);
  if (!map) return; /* keep the larger pool */
  for (int32_t i = 0; i < n; i++) map[i] = -1;
  for (int32_t i = 0; i < m->n_leaves; i++)
    for (int32_t k = m->lv[i]; k >= 0 && map[k] == -1; k = m->nodes[k].parent) map[k] = -2;
  int32_t o = 0;
  for (int32_t i = 0; i < n; i++) {
    if (map[i] == -1) continue;
    cst_node nd = m->nodes[i];
    if (nd.parent >= 0) nd.parent = map[nd.parent];
    map[i] = o;
    m->nodes[o++] = nd;
  }
  for (int32_t i = 0; i < m->n_leaves; i++) m->lv[i] = map[m->lv[i]];
  m->n_nodes = o;
  m->live_after_gc = o;
  free(map);
}

/* Moves the state over bytes; on a dead end restores it and returns QV_EINVAL. */
static int feed(qv_matcher *m, const uint8_t *s, size_t n) {
  int32_t wm_nodes = m->n_nodes;
  int32_t from = 0, cnt = m->n_leaves;
  int acc = m->accept;
  for (size_t i = 0; i < n; i++) {
    if (cnt == 0) {
      m->n_nodes = wm_nodes;
      m->n_lv = m->n_leaves;
      return QV_EINVAL;
    }
    from = advance(m, from, cnt, s[i], &cnt, &acc);
    if (m->oom) {
      m->n_nodes = wm_nodes;
      m->n_lv = m->n_leaves;
      return QV_ENOMEM;
    }
    if (cnt == 0 && !acc) {
      m->n_nodes = wm_nodes;
      m->n_lv = m->n_leaves;
      return QV_EINVAL;
    }
  }
  memmove(m->lv, m->lv + from, (size_t)cnt * sizeof *m->lv);
  m->n_leaves = m->n_lv = cnt;
  m->accept = acc;
  if (m->n_nodes > 4096 && m->n_nodes > 4 * m->live_after_gc) compact(m);
  return 0;
}

int qv_matcher_accept_bytes(qv_matcher *m, const char *s, size_t n) {
  return feed(m, (const uint8_t *)s, n);
}

int qv_matcher_accept(qv_matcher *m, int32_t id) {
  const qv_cst_vocab *v = m->c->vocab;
  if (id < 0 || id >= v->n_vocab) return QV_EINVAL;
  int rc;
  if (id == v->eos_id) {
    if (!m->accept) return QV_EINVAL;
    m->n_leaves = m->n_lv = 0; /* finished: nothing may follow */
    rc = 0;
  } else {
    if (v->len[id] == UINT32_MAX) return QV_EINVAL;
    rc = feed(m, (const uint8_t *)v->bytes + v->off[id], v->len[id]);
  }
  if (rc) return rc;
  if (grow((void **)&m->hist, &m->cap_hist, m->n_hist + 1, sizeof *m->hist)) return QV_ENOMEM;
  m->hist[m->n_hist++] = id;
  return 0;
}

int qv_matcher_rollback(qv_matcher *m, int32_t n) {
  if (n < 0 || n > m->n_hist) return QV_EINVAL;
  if (n == 0) return 0;
  int32_t keep = m->n_hist - n;
  int32_t *h = m->hist;
  m->hist = NULL;
  m->n_hist = m->cap_hist = 0;
  set_initial(m);
  int rc = 0;
  for (int32_t i = 0; i < keep && !rc; i++) rc = qv_matcher_accept(m, h[i]);
  free(h);
  return rc;
}

/* ---- masks ---- */

static uint64_t state_hash(const qv_matcher *m) {
  uint64_t h = m->accept ? 0x2545F4914F6CDD1DULL : 0;
  for (int32_t i = 0; i < m->n_leaves; i++) h += mix(m->nodes[m->lv[i]].hash);
  return mix(h ^ (uint64_t)m->n_leaves);
}

static void first_bytes(const qv_matcher *m, int32_t from, int32_t n, cst_bset *out) {
  const cst_gram *g = &m->c->g;
  memset(out, 0, sizeof *out);
  for (int32_t i = 0; i < n; i++) {
    const cst_bset *s = &g->sets[g->elems[m->nodes[m->lv[from + i]].pos]];
    for (int k = 0; k < 8; k++) out->w[k] |= s->w[k];
  }
}

/* Hash of the leaves lv[from, from+n) as a state (order-independent; leaves are distinct). */
static uint64_t leaves_hash(const qv_matcher *m, int32_t from, int32_t n, int acc) {
  uint64_t h = acc ? 0x2545F4914F6CDD1DULL : 0;
  for (int32_t i = 0; i < n; i++) h += mix(m->nodes[m->lv[from + i]].hash);
  return mix(h ^ (uint64_t)n);
}

/* Walk-local transition memo: (state hash, byte) -> the leaves computed the first time. The
 * walk keeps every node it makes until it ends, so a memoised segment stays valid, and most
 * trie edges (the same state reading the same byte under many prefixes) cost one lookup. */
typedef struct memo_ent {
  uint64_t state, next;  /* state hash; hash of the resulting state */
  int32_t lv0, nlv;      /* resulting leaves in m->lv */
  uint32_t gen;          /* valid when equal to the walk's generation */
  uint8_t byte, acc;
  cst_bset first;        /* bytes the resulting leaves accept */
} memo_ent;

static memo_ent *memo_slot(qv_matcher *m, uint64_t state, unsigned byte, int *found) {
  uint32_t mask = (uint32_t)m->cap_memo - 1;
  uint32_t j = (uint32_t)mix(state ^ ((uint64_t)byte << 56)) & mask;
  while (m->memo[j].gen == m->memo_gen) {
    if (m->memo[j].state == state && m->memo[j].byte == byte) {
      *found = 1;
      return &m->memo[j];
    }
    j = (j + 1) & mask;
  }
  *found = 0;
  return &m->memo[j];
}

static int memo_reset(qv_matcher *m) {
  if (!m->memo) {
    m->cap_memo = 1 << 12;
    m->memo = calloc((size_t)m->cap_memo, sizeof *m->memo);
    if (!m->memo) return QV_ENOMEM;
  }
  m->n_memo = 0;
  if (++m->memo_gen == 0) {
    memset(m->memo, 0, (size_t)m->cap_memo * sizeof *m->memo);
    m->memo_gen = 1;
  }
  return 0;
}

/* Doubles the memo when half full (entries of this walk rehashed). */
static int memo_grow(qv_matcher *m) {
  if (m->n_memo * 2 < m->cap_memo) return 0;
  int32_t cap = m->cap_memo * 2;
  memo_ent *a = calloc((size_t)cap, sizeof *a);
  if (!a) return QV_ENOMEM;
  for (int32_t i = 0; i < m->cap_memo; i++) {
    if (m->memo[i].gen != m->memo_gen) continue;
    uint32_t j = (uint32_t)mix(m->memo[i].state ^ ((uint64_t)m->memo[i].byte << 56)) & (uint32_t)(cap - 1);
    while (a[j].gen == m->memo_gen) j = (j + 1) & (uint32_t)(cap - 1);
    a[j] = m->memo[i];
  }
  free(m->memo);
  m->memo = a;
  m->cap_memo = cap;
  return 0;
}

/* The plain chain from S_L = lv[from, from+n) (see CST_PLAIN_MAX): the largest L such that every
 * plain string of length <= L keeps the state alive, all such strings of one length leading
 * to one state. *closed: plain strings longer than L are known dead (or longer than any plain
 * token); else the chain stopped where plain bytes are not treated alike. */
static int32_t plain_chain(qv_matcher *m, int32_t from, int32_t n, int32_t L, int *closed) {
  const cst_gram *g = &m->c->g;
  cst_bset plain = {{0}};
  for (unsigned b = 0; b < 256; b++)
    if (cst_plain_byte(b)) cst_bset_add(&plain, b);
  *closed = 0;
  while (L < CST_PLAIN_MAX) {
    int any_full = 0;
    for (int32_t i = 0; i < n; i++) {
      const cst_bset *s = &g->sets[g->elems[m->nodes[m->lv[from + i]].pos]];
      int none = 1, all = 1;
      for (int k = 0; k < 8; k++) {
        uint32_t in = s->w[k] & plain.w[k];
        none &= in == 0;
        all &= in == plain.w[k];
      }
      if (!none && !all) return L; /* not uniform */
      any_full |= all;
    }
    if (!any_full) break; /* no plain byte is accepted: longer plain strings are dead */
    int acc;
    int32_t nn;
    int32_t s = advance(m, from, n, 'a', &nn, &acc);
    if (m->oom) return 0;
    if (nn == 0 && !acc) break;
    L++;
    from = s;
    n = nn;
  }
  *closed = 1;
  return L;
}

/* 1 when every leaf's set holds all of [lo, hi] or none of it (all bytes there move alike). */
static int uniform_range(const qv_matcher *m, int32_t from, int32_t n, unsigned lo, unsigned hi) {
  const cst_gram *g = &m->c->g;
  for (int32_t i = 0; i < n; i++) {
    const cst_bset *s = &g->sets[g->elems[m->nodes[m->lv[from + i]].pos]];
    int has = cst_bset_has(s, lo);
    for (unsigned b = lo + 1; b <= hi; b++)
      if (cst_bset_has(s, b) != has) return 0;
  }
  return 1;
}

/* Status of a text-chain level, remembered per constraint by state hash (cst_tmemo): the level
 * fails, goes on, is a fixed point, takes no text character at all, or ends a chain at the
 * vocabulary's text_lim (kept only for its xrej bit). */
enum { TM_FAIL = 1, TM_OK = 2, TM_FIXED = 3, TM_DEAD = 4, TM_END = 5 };

/* One level of the text chain from the state lv[from, from+n) (hash h): TM_FAIL when some
 * character is not treated like 'a' or kills the state; else the state after 'a' in *nfrom,
 * *nn, *nacc, *nh, and TM_FIXED when it is the same state (a fixed point). */
static int text_level(qv_matcher *m, int32_t from, int32_t n, uint64_t h, int32_t *nfrom, int32_t *nn, int *nacc,
                      uint64_t *nh) {
  static const uint8_t fam[8][4][2] = {
      {{0xC2, 0xDF}, {0x80, 0xBF}}, {{0xE0, 0xE0}, {0xA0, 0xBF}, {0x80, 0xBF}},
      {{0xE1, 0xEC}, {0x80, 0xBF}, {0x80, 0xBF}}, {{0xED, 0xED}, {0x80, 0x9F}, {0x80, 0xBF}},
      {{0xEE, 0xEF}, {0x80, 0xBF}, {0x80, 0xBF}}, {{0xF0, 0xF0}, {0x90, 0xBF}, {0x80, 0xBF}, {0x80, 0xBF}},
      {{0xF1, 0xF3}, {0x80, 0xBF}, {0x80, 0xBF}, {0x80, 0xBF}}, {{0xF4, 0xF4}, {0x80, 0x8F}, {0x80, 0xBF}, {0x80, 0xBF}}};
  static const int fam_len[8] = {2, 3, 3, 3, 3, 4, 4, 4};
  static const uint8_t reps[] = {0x20, 0x23, 0x5D, 0x7E};
  /* plain ASCII: uniform over each run of plain bytes, and every run lands where 'a' does */
  if (!uniform_range(m, from, n, 0x20, 0x21) || !uniform_range(m, from, n, 0x23, 0x5B) ||
      !uniform_range(m, from, n, 0x5D, 0x7E))
    return TM_FAIL;
  int acc;
  int32_t na;
  int32_t sa = advance(m, from, n, 'a', &na, &acc);
  if (m->oom || (na == 0 && !acc)) return TM_FAIL;
  uint64_t ha = leaves_hash(m, sa, na, acc);
  for (int r = 0; r < 4; r++) {
    int a2;
    int32_t n2;
    int32_t s2 = advance(m, from, n, reps[r], &n2, &a2);
    if (m->oom || leaves_hash(m, s2, n2, a2) != ha) return TM_FAIL;
  }
  for (int f = 0; f < 8; f++) {
    int32_t cf = from, cn = n;
    int a2 = 0;
    for (int k = 0; k < fam_len[f]; k++) {
      if (!uniform_range(m, cf, cn, fam[f][k][0], fam[f][k][1])) return TM_FAIL;
      int32_t n2;
      int32_t s2 = advance(m, cf, cn, fam[f][k][0], &n2, &a2);
      if (m->oom || (n2 == 0 && (k + 1 < fam_len[f] || !a2))) return TM_FAIL;
      cf = s2;
      cn = n2;
    }
    if (leaves_hash(m, cf, cn, a2) != ha) return TM_FAIL;
  }
  *nfrom = sa;
  *nn = na;
  *nacc = acc;
  *nh = ha;
  return ha == h ? TM_FIXED : TM_OK;
}

/* 1 when no leaf of lv[from, from+n) accepts a byte that starts a text character: every text
 * token longer than the chain so far is dead. */
static int text_dead(const qv_matcher *m, int32_t from, int32_t n) {
  cst_bset first, start = {{0}};
  for (unsigned b = 0; b < 256; b++)
    if (cst_plain_byte(b) || (b >= 0xC2 && b <= 0xF4)) cst_bset_add(&start, b);
  first_bytes(m, from, n, &first);
  for (int k = 0; k < 8; k++)
    if (first.w[k] & start.w[k]) return 0;
  return 1;
}

/* 1 when no leaf of lv[from, from+n) accepts a byte no character starts with (cst_x_byte). */
static int x_rejected(const qv_matcher *m, int32_t from, int32_t n) {
  cst_bset first;
  first_bytes(m, from, n, &first);
  for (unsigned b = 0; b < 256; b++)
    if (cst_x_byte(b) && cst_bset_has(&first, b)) return 0;
  return 1;
}

/* The text chain: the largest L (<= the vocabulary's text_lim) such that from the state every
 * character (plain ASCII or any valid non-ASCII one) leads to one state, level by level, alive
 * up to L. Each level checks every UTF-8 lead/continuation range for uniformity and that each
 * family of characters ends in the state 'a' leads to. *closed: the chain reached a fixed point
 * (S_{l+1} = S_l), so it goes on forever. *all: every text token is decided by text_upto[L]
 * (closed; or S_L takes no text character at all, as at the end of a bounded string, so longer
 * text tokens are dead; or L reached text_lim, the longest text token). Levels are remembered
 * per constraint by state hash, so the chain of the next position in a bounded string costs
 * one new level. *xrej (with *all): every state S_0..S_L rejects the bytes no character starts
 * with, so every text-x token is dead. */
static int32_t text_chain(qv_matcher *m, int *closed, int *all, int *xrej, int32_t *end_from, int32_t *end_n) {
  struct cst_tmemo *tm = m->c->tmemo;
  enum { TMN = (int)(sizeof m->c->tmemo / sizeof m->c->tmemo[0]) };
  const int32_t lim = m->c->vocab->text_lim;
  int32_t from = 0, n = m->n_leaves;
  int acc = m->accept;
  uint64_t h = leaves_hash(m, from, n, acc);
  *closed = 0;
  *all = 0;
  *end_from = -1; /* set when the leaves of S_L were computed */
  *end_n = 0;
  int xr = 1;
  /* Levels already known: follow them by hash. */
  int32_t L = 0;
  uint64_t hh = h;
  while (L < lim) {
    const struct cst_tmemo *e = &tm[hh & (TMN - 1)];
    if (e->key != hh || !e->status || e->status == TM_END) break;
    xr &= e->xrej;
    if (e->status == TM_FAIL) return L;
    if (e->status == TM_DEAD) {
      *all = 1;
      *xrej = xr;
      return L;
    }
    L++;
    if (e->status == TM_FIXED) {
      *closed = *all = 1;
      *xrej = xr;
      return lim;
    }
    hh = e->next;
  }
  if (L == lim) {
    const struct cst_tmemo *e = &tm[hh & (TMN - 1)];
    if (e->key == hh && e->status == TM_END) {
      *all = 1;
      *xrej = xr & e->xrej;
      return L;
    }
  }
  for (int32_t i = 0; i < L; i++) { /* the leaves of S_L */
    from = advance(m, from, n, 'a', &n, &acc);
    if (m->oom) return 0;
  }
  h = leaves_hash(m, from, n, acc);
  while (L < lim) {
    int32_t nfrom = 0, nn = 0;
    int nacc = 0;
    uint64_t nh = 0;
    int xb = x_rejected(m, from, n);
    int st = text_dead(m, from, n) ? TM_DEAD : text_level(m, from, n, h, &nfrom, &nn, &nacc, &nh);
    if (m->oom) return 0;
    struct cst_tmemo *e = &tm[h & (TMN - 1)];
    e->key = h;
    e->next = nh;
    e->status = (uint8_t)st;
    e->xrej = (uint8_t)xb;
    xr &= xb;
    *end_from = from;
    *end_n = n;
    if (st == TM_FAIL) return L;
    if (st == TM_DEAD) {
      *all = 1;
      *xrej = xr;
      return L;
    }
    L++;
    if (st == TM_FIXED) {
      *closed = *all = 1;
      *xrej = xr;
      return lim;
    }
    from = nfrom;
    n = nn;
    acc = nacc;
    h = nh;
    *end_from = from;
    *end_n = n;
  }
  /* S_lim: the end of the chain, remembered for its xrej bit. */
  struct cst_tmemo *e = &tm[h & (TMN - 1)];
  e->key = h;
  e->next = 0;
  e->status = TM_END;
  e->xrej = (uint8_t)x_rejected(m, from, n);
  *all = 1;
  *xrej = xr & e->xrej;
  return L;
}

/* A walk over a large vocabulary may grow the node pool, leaves and memo to megabytes; a
 * matcher keeps only modest scratch between steps so many live sequences stay cheap. */
static void trim_scratch(qv_matcher *m) {
  enum { KEEP = 1 << 14 };
  if (m->cap_memo > KEEP) {
    free(m->memo);
    m->memo = NULL;
    m->cap_memo = 0;
  }
  if (m->cap_nodes > KEEP && m->cap_nodes > 4 * m->n_nodes) {
    int32_t cap = m->n_nodes > KEEP / 2 ? m->n_nodes * 2 : KEEP;
    cst_node *a = realloc(m->nodes, (size_t)cap * sizeof *a);
    if (a) m->nodes = a, m->cap_nodes = cap;
  }
  if (m->cap_lv > KEEP && m->cap_lv > 4 * m->n_lv) {
    int32_t cap = m->n_lv > KEEP / 2 ? m->n_lv * 2 : KEEP;
    int32_t *a = realloc(m->lv, (size_t)cap * sizeof *a);
    if (a) m->lv = a, m->cap_lv = cap;
  }
  if (m->cap_vis > KEEP) {
    free(m->vis_key);
    free(m->vis_gen);
    m->vis_key = NULL;
    m->vis_gen = NULL;
    m->cap_vis = 0;
    m->n_vis = 0;
  }
}

/* One level of class chain k from the state lv[from, from+n) (hash h): TM_FAIL when some leaf
 * takes part of the class; TM_DEAD when no leaf takes it or 'a' kills the state (longer class
 * tokens are dead); else the state after 'a' (where every class byte leads) and TM_OK, or
 * TM_FIXED when it is the same state. */
static int class_level(qv_matcher *m, const cst_bset *cls, int32_t from, int32_t n, uint64_t h, int32_t *nfrom,
                       int32_t *nn, uint64_t *nh) {
  const cst_gram *g = &m->c->g;
  int any_full = 0;
  for (int32_t i = 0; i < n; i++) {
    const cst_bset *s = &g->sets[g->elems[m->nodes[m->lv[from + i]].pos]];
    int none = 1, all = 1;
    for (int k = 0; k < 8; k++) {
      uint32_t in = s->w[k] & cls->w[k];
      none &= in == 0;
      all &= in == cls->w[k];
    }
    if (!none && !all) return TM_FAIL;
    any_full |= all;
  }
  if (!any_full) return TM_DEAD;
  int acc;
  *nfrom = advance(m, from, n, 'a', nn, &acc);
  if (m->oom || (*nn == 0 && !acc)) return TM_DEAD;
  *nh = leaves_hash(m, *nfrom, *nn, acc);
  return *nh == h ? TM_FIXED : TM_OK;
}

/* Class chain k (see cst_cls): the largest L such that every class string of length <= L
 * keeps the state alive, all of one length leading to one state. *all: class tokens longer
 * than L are dead, or L reached the longest class token, or a fixed point makes every length
 * alive; so class subtrees are decided. Levels are remembered per constraint by state hash. */
static int32_t class_chain(qv_matcher *m, int k, int *all) {
  const cst_cls *cl = &m->c->vocab->cls[k];
  struct cst_tmemo *tm = m->c->cmemo[k];
  enum { CMN = (int)(sizeof m->c->cmemo[0] / sizeof m->c->cmemo[0][0]) };
  int32_t from = 0, n = m->n_leaves, L = 0;
  uint64_t h = leaves_hash(m, from, n, m->accept), hh = h;
  *all = 0;
  while (L < cl->lim) {
    const struct cst_tmemo *e = &tm[hh & (CMN - 1)];
    if (e->key != hh || !e->status) break;
    if (e->status == TM_FAIL) return L;
    *all = e->status != TM_OK;
    if (e->status == TM_DEAD) return L;
    L++;
    if (e->status == TM_FIXED) return cl->lim;
    hh = e->next;
  }
  if (L == cl->lim) {
    *all = 1;
    return L;
  }
  int acc = m->accept;
  for (int32_t i = 0; i < L; i++) { /* the leaves of S_L */
    from = advance(m, from, n, 'a', &n, &acc);
    if (m->oom) return 0;
  }
  h = hh;
  while (L < cl->lim) {
    int32_t nfrom = 0, nn = 0;
    uint64_t nh = 0;
    int st = class_level(m, &cl->bytes, from, n, h, &nfrom, &nn, &nh);
    if (m->oom) return 0;
    struct cst_tmemo *e = &tm[h & (CMN - 1)];
    e->key = h;
    e->next = nh;
    e->status = (uint8_t)st;
    if (st == TM_FAIL) return L;
    *all = st != TM_OK;
    if (st == TM_DEAD) return L;
    L++;
    if (st == TM_FIXED) return cl->lim;
    from = nfrom;
    n = nn;
    h = nh;
  }
  *all = 1;
  return L;
}

static int walk(qv_matcher *m, uint32_t *mask) {
  const qv_cst_vocab *v = m->c->vocab;
  const cst_trie *t = &v->trie;
  int32_t wm0 = m->n_nodes, lv0 = m->n_lv;
  /* The text chain first; a text level implies a plain one (every plain byte lands in one
   * live state), so the plain chain goes on from where the text chain stopped. */
  int closed, tclosed, tall, xrej = 0;
  int32_t ef, en, L;
  int32_t TL = text_chain(m, &tclosed, &tall, &xrej, &ef, &en);
  /* xall: text-x tokens are dead too, so whole tx subtrees are decided. */
  const int xall = tall && xrej;
  const int32_t *skip_first = xall ? t->xfirst_nt : t->tfirst_nt, *skip_next = xall ? t->xnext_nt : t->tnext_nt;
  const uint8_t *decided = xall ? t->tx : t->text;
  if (tclosed) L = CST_PLAIN_MAX, closed = 1;
  else if (tall) L = TL < CST_PLAIN_MAX ? TL : CST_PLAIN_MAX, closed = 1; /* plain tokens are text */
  else if (ef >= 0 && !m->oom) L = plain_chain(m, ef, en, TL, &closed);
  else L = plain_chain(m, 0, m->n_leaves, 0, &closed);
  m->n_nodes = wm0;
  m->n_lv = lv0;
  /* Where text is not decided, the first class chain that runs (kc; KL levels, kall). */
  int kc = -1, kall = 0;
  int32_t KL = 0;
  for (int k = CST_N_CLS - 1; k >= 0 && !tall && kc < 0 && !m->oom; k--) {
    KL = class_chain(m, k, &kall);
    m->n_nodes = wm0;
    m->n_lv = lv0;
    if (KL > 0) kc = k;
  }
  const cst_cls *cl = kc >= 0 ? &v->cls[kc] : NULL;
  if (cl) {
    const uint32_t *pm = cl->upto + (size_t)KL * (size_t)v->words;
    for (int32_t w = 0; w < v->words; w++) mask[w] |= pm[w];
  }
  if (L > 0) {
    const uint32_t *pm = v->plain_upto + (size_t)L * (size_t)v->words;
    for (int32_t w = 0; w < v->words; w++) mask[w] |= pm[w];
  }
  if (TL > 0) {
    const uint32_t *pm = v->text_upto + (size_t)TL * (size_t)v->words;
    for (int32_t w = 0; w < v->words; w++) mask[w] |= pm[w];
  }
  int32_t sp = 0;
  if (grow((void **)&m->frames, &m->cap_frames, 1, sizeof *m->frames) || memo_reset(m)) return QV_ENOMEM;
  walk_frame *f = &m->frames[sp++];
  f->tnode = 0;
  f->cursor = 1;
  f->chain = 1;
  f->tchain = TL > 0 || tall;
  f->tpend = 0;
  f->tchars = 0;
  f->kchain = cl != NULL;
  f->skip = tall ? SKIP_TEXT : cl && kall ? SKIP_CLASS : SKIP_NONE;
  if (f->skip == SKIP_TEXT) f->cursor = skip_first[0];
  else if (f->skip == SKIP_CLASS) f->cursor = cl->first_n[0];
  f->lv0 = 0;
  f->nlv = m->n_leaves;
  f->hash = leaves_hash(m, 0, m->n_leaves, m->accept);
  first_bytes(m, 0, m->n_leaves, &f->first);
  while (sp > 0) {
    f = &m->frames[sp - 1];
    if (f->cursor >= t->tend[f->tnode]) {
      sp--;
      continue;
    }
    int32_t c = f->cursor;
    f->cursor = f->skip == SKIP_TEXT ? skip_next[c] : f->skip == SKIP_CLASS ? cl->next_n[c] : t->tend[c];
    unsigned byte = t->tbyte[c];
    if (!cst_bset_has(&f->first, byte)) continue;
    /* A plain subtree under the chain is decided by plain_upto[L]. */
    if (f->chain && t->plain[c] && (closed || t->maxd[c] <= L)) continue;
    /* Likewise a text subtree at a character boundary of the text chain. */
    if (f->tchain && f->tpend == 0 && decided[c] && (tall || t->maxc[c] <= TL)) continue;
    /* And a class subtree on the class chain. */
    if (f->kchain && cl->sub[c] && (kall || t->maxd[c] <= KL)) continue;
    int child_kchain = f->kchain && cst_bset_has(&cl->bytes, byte) && t->depth[c] <= KL;
    int child_chain = f->chain && cst_plain_byte(byte) && t->depth[c] <= L;
    /* Track the child's place in the text chain (strict UTF-8). */
    int ct = f->tchain, cpend = 0, cchars = f->tchars;
    uint8_t clo = 0x80, chi = 0xBF;
    if (ct) {
      if (f->tpend > 0) {
        if (byte < f->tlo || byte > f->thi) ct = 0;
        else if ((cpend = f->tpend - 1) == 0) cchars++;
      } else if (byte < 0x80) {
        ct = cst_plain_byte(byte);
        cchars++;
      } else if (byte >= 0xC2 && byte <= 0xDF) {
        cpend = 1;
      } else if (byte >= 0xE0 && byte <= 0xEF) {
        cpend = 2, clo = byte == 0xE0 ? 0xA0 : 0x80, chi = byte == 0xED ? 0x9F : 0xBF;
      } else if (byte >= 0xF0 && byte <= 0xF4) {
        cpend = 3, clo = byte == 0xF0 ? 0x90 : 0x80, chi = byte == 0xF4 ? 0x8F : 0xBF;
      } else {
        ct = 0;
      }
      if (cchars > TL) ct = 0;
    }
    if (memo_grow(m)) {
      m->oom = 1;
      break;
    }
    int found;
    uint64_t fh = f->hash;
    int32_t flv0 = f->lv0, fnlv = f->nlv;
    memo_ent *e = memo_slot(m, fh, byte, &found);
    if (!found) {
      int acc;
      int32_t n;
      int32_t s = advance(m, flv0, fnlv, byte, &n, &acc);
      if (m->oom) break;
      e->state = fh;
      e->byte = (uint8_t)byte;
      e->gen = m->memo_gen;
      e->lv0 = s;
      e->nlv = n;
      e->acc = (uint8_t)acc;
      e->next = leaves_hash(m, s, n, acc);
      first_bytes(m, s, n, &e->first);
      m->n_memo++;
    }
    if (e->nlv == 0 && !e->acc) continue;
    for (int32_t id = t->tok_first[c]; id >= 0; id = t->tok_next[id]) mask[id >> 5] |= 1u << (id & 31);
    if (e->nlv > 0 && c + 1 < t->tend[c]) {
      int32_t nlv0 = e->lv0, nn = e->nlv;
      uint64_t nh = e->next;
      cst_bset nfirst = e->first;
      if (grow((void **)&m->frames, &m->cap_frames, sp + 1, sizeof *m->frames)) {
        m->oom = 1;
        break;
      }
      walk_frame *nf = &m->frames[sp++];
      nf->tnode = c;
      nf->cursor = c + 1;
      nf->lv0 = nlv0;
      nf->nlv = nn;
      nf->hash = nh;
      nf->chain = child_chain;
      nf->tchain = ct;
      nf->kchain = child_kchain;
      nf->skip = ct && cpend == 0 && tall ? SKIP_TEXT : child_kchain && kall ? SKIP_CLASS : SKIP_NONE;
      if (nf->skip == SKIP_TEXT) nf->cursor = skip_first[c];
      else if (nf->skip == SKIP_CLASS) nf->cursor = cl->first_n[c];
      nf->tpend = cpend;
      nf->tchars = cchars;
      nf->tlo = clo;
      nf->thi = chi;
      nf->first = nfirst;
    }
  }
  m->n_nodes = wm0;
  m->n_lv = lv0;
  trim_scratch(m);
  if (m->oom) {
    m->oom = 0;
    return QV_ENOMEM;
  }
  return 0;
}

static uint32_t *cache_find(qv_constraint *c, uint64_t key) {
  for (int32_t i = 0; i < c->n_cache; i++)
    if (c->cache_key[i] == key) {
      c->cache_use[i] = ++c->tick;
      return c->cache_mask + (size_t)i * (size_t)c->words;
    }
  return NULL;
}

/* The cache grows by doubling up to CST_MASK_CACHE_BYTES (at most 2048 masks), then replaces
 * the least recently used entry. */
static void cache_store(qv_constraint *c, uint64_t key, const uint32_t *mask) {
  size_t per = (size_t)c->words * sizeof(uint32_t);
  if (c->n_cache == c->cap_cache) {
    int32_t max = (int32_t)(CST_MASK_CACHE_BYTES / per);
    if (max > 2048) max = 2048;
    if (max < 4) max = 4;
    if (c->cap_cache < max) {
      int32_t cap = c->cap_cache ? c->cap_cache * 2 : 16;
      if (cap > max) cap = max;
      uint64_t *k = realloc(c->cache_key, (size_t)cap * sizeof *k);
      if (k) c->cache_key = k;
      uint64_t *u = realloc(c->cache_use, (size_t)cap * sizeof *u);
      if (u) c->cache_use = u;
      uint32_t *mk = realloc(c->cache_mask, (size_t)cap * per);
      if (mk) c->cache_mask = mk;
      if (k && u && mk) c->cap_cache = cap;
    }
    if (!c->cap_cache) return;
  }
  int32_t slot = c->n_cache;
  if (slot == c->cap_cache) {
    slot = 0;
    for (int32_t i = 1; i < c->n_cache; i++)
      if (c->cache_use[i] < c->cache_use[slot]) slot = i;
  } else {
    c->n_cache++;
  }
  c->cache_key[slot] = key;
  c->cache_use[slot] = ++c->tick;
  memcpy(c->cache_mask + (size_t)slot * (size_t)c->words, mask, (size_t)c->words * sizeof *mask);
}

int qv_matcher_fill_mask(qv_matcher *m, uint32_t *mask) {
  qv_constraint *c = m->c;
  const qv_cst_vocab *v = c->vocab;
  uint64_t key = state_hash(m);
  const uint32_t *hit = cache_find(c, key);
  if (hit) {
    c->n_hits++;
    memcpy(mask, hit, (size_t)c->words * sizeof *mask);
  } else {
    c->n_misses++;
    memset(mask, 0, (size_t)c->words * sizeof *mask);
    if (m->n_leaves > 0) {
      int rc = walk(m, mask);
      if (rc) return rc;
    }
    cache_store(c, key, mask);
  }
  if (m->accept && v->eos_id >= 0) mask[v->eos_id >> 5] |= 1u << (v->eos_id & 31);
  return 0;
}
