/* A tensor-parallel group over several processes (see model_tp.h): the control links between
 * node 0 and the other nodes, what travels on them, and the worker loop.
 *
 * Every message is a STEP frame of comm/ctrl.h (authenticated, sequenced, bounded) whose first
 * payload byte says what it is:
 *   'I' INIT  u32 size, nnodes, vocab, dim, n_layer, n_head, n_kv_head, ffn, comm | 32-char shm
 *             name | 128-byte NCCL unique id (zeros on cpu ranks); see tpm_init in model_tp.h
 *   'K' KV    u32 n_blocks, block_size
 *   'S' STEP  i32 n_tokens, n_seqs, n_logits, max_blocks | token_ids, positions, slot_mapping
 *             [n_tokens] | seq_q_start [n_seqs + 1] | seq_ctx_len [n_seqs] | block_tables
 *             [n_seqs][max_blocks] | logits_idx [n_logits]
 * Integers are little-endian. A payload whose length does not match its counts, or whose counts
 * exceed the model's limits, is refused (QV_EFORMAT) before anything of it is used; the backend's
 * set_batch then checks every index against the KV cache.
 *
 * Node 0's engine thread sends; a link thread polls every link every LINK_POLL_MS (which sends
 * heartbeats and reads the workers'), under one mutex per group. A worker is judged lost after
 * 30 s of silence (it polls only between steps), node 0 after 5 s (its link thread never stops). A lost link marks the group
 * lost (every later step fails at once), logs, and calls the on_lost hook once; a rank blocked
 * in a collective with the dead node is released by the shm communicator's dead-peer check. A
 * worker polls its one link between steps; it stops on SHUTDOWN (exit 0) and fails on a lost or
 * broken link (QV_ECLOSED), so neither side can hang on the other. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm/comm.h"
#include "comm/ctrl.h"
#include "core/log.h"
#include "models/model_tp.h"

enum {
  LINK_POLL_MS = 100,
  WORKER_POLL_MS = 250,
  NET_MAX_MSG = 16 << 20,
  /* A worker hears node 0's link thread every heartbeat, so it can judge node 0 lost after 5 s of
   * silence. A worker polls only between steps, and one step (a long prefill on a slow CPU) may
   * outlast that: node 0 waits as long as a collective may (the communicator's 30 s) before it
   * takes a silent worker for lost. A killed worker is seen at once either way (closed socket). */
  NET_PEER_TIMEOUT_MS = 5000,
  NET_WORKER_SILENCE_MS = QV_COMM_DEFAULT_TIMEOUT_MS,
  STEP_HEADER_WORDS = 4,
  MAX_BLOCK_ENTRIES = 1 << 24,
};

struct tpm_net {
  int32_t node_rank, nnodes;
  qv_ctrl_listener *lis;  /* node 0, owned */
  qv_ctrl **links;        /* node 0: [nnodes], links[r] to node r (links[0] NULL); else links[0]: to node 0 */
  int32_t n_links;
  pthread_mutex_t mu;     /* one thread at a time on the links */
  pthread_t th;
  int th_started;
  atomic_int stop, lost;
  void (*on_lost)(void *ud);
  void *on_lost_ud;
  uint8_t *tx;            /* grow-only encode buffer */
  size_t tx_cap;
};

static void put_u32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_u32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* ---- the batch on the wire ---- */

int tpm_batch_encode(const qv_batch *b, uint8_t **out, size_t *cap, size_t *n_bytes) {
  size_t words = STEP_HEADER_WORDS + 3 * (size_t)b->n_tokens + (size_t)b->n_seqs + 1 + (size_t)b->n_seqs +
                 (size_t)b->n_seqs * (size_t)b->max_blocks + (size_t)b->n_logits;
  size_t need = 1 + 4 * words;
  if (need > *cap) {
    uint8_t *p = realloc(*out, need);
    if (!p) return QV_ENOMEM;
    *out = p;
    *cap = need;
  }
  uint8_t *p = *out;
  *p++ = 'S';
  const int32_t head[STEP_HEADER_WORDS] = {b->n_tokens, b->n_seqs, b->n_logits, b->max_blocks};
  const struct {
    const int32_t *a;
    size_t n;
  } parts[] = {{head, STEP_HEADER_WORDS},
               {b->token_ids, (size_t)b->n_tokens},
               {b->positions, (size_t)b->n_tokens},
               {b->slot_mapping, (size_t)b->n_tokens},
               {b->seq_q_start, (size_t)b->n_seqs + 1},
               {b->seq_ctx_len, (size_t)b->n_seqs},
               {b->block_tables, (size_t)b->n_seqs * (size_t)b->max_blocks},
               {b->logits_idx, (size_t)b->n_logits}};
  for (size_t k = 0; k < sizeof parts / sizeof parts[0]; k++)
    for (size_t i = 0; i < parts[k].n; i++, p += 4) put_u32(p, (uint32_t)parts[k].a[i]);
  *n_bytes = need;
  return 0;
}

int tpm_batch_decode(const uint8_t *p, size_t n, int32_t max_tok, int32_t max_logits, tpm_batch_buf *out,
                     qv_error *err) {
  if (n < 1 + 4 * STEP_HEADER_WORDS || p[0] != 'S')
    return qv_error_set(err, QV_EFORMAT, "tp step: %zu bytes, not a step", n);
  int32_t nt = (int32_t)get_u32(p + 1), ns = (int32_t)get_u32(p + 5), nl = (int32_t)get_u32(p + 9);
  int32_t mb = (int32_t)get_u32(p + 13);
  if (nt < 1 || nt > max_tok || ns < 1 || ns > nt || nl < 0 || nl > max_logits || mb < 1 ||
      (int64_t)ns * mb > MAX_BLOCK_ENTRIES)
    return qv_error_set(err, QV_EFORMAT, "tp step: counts %d tokens, %d sequences, %d logits, %d blocks outside the limits",
                        nt, ns, nl, mb);
  size_t words = 3 * (size_t)nt + 2 * (size_t)ns + 1 + (size_t)ns * (size_t)mb + (size_t)nl;
  if (n != 1 + 4 * (STEP_HEADER_WORDS + words))
    return qv_error_set(err, QV_EFORMAT, "tp step: %zu bytes where its counts need %zu", n,
                        1 + 4 * (STEP_HEADER_WORDS + words));
  if (words > out->cap) {
    int32_t *b = realloc(out->buf, words * sizeof *b);
    if (!b) return qv_error_set(err, QV_ENOMEM, "out of memory");
    out->buf = b;
    out->cap = words;
  }
  const uint8_t *q = p + 1 + 4 * STEP_HEADER_WORDS;
  for (size_t i = 0; i < words; i++, q += 4) out->buf[i] = (int32_t)get_u32(q);
  int32_t *a = out->buf;
  qv_batch *b = &out->b;
  *b = (qv_batch){.n_tokens = nt, .n_seqs = ns, .n_logits = nl, .max_blocks = mb};
  b->token_ids = a, a += nt;
  b->positions = a, a += nt;
  b->slot_mapping = a, a += nt;
  b->seq_q_start = a, a += ns + 1;
  b->seq_ctx_len = a, a += ns;
  b->block_tables = a, a += (size_t)ns * mb;
  b->logits_idx = a;
  /* The layout the backend relies on: sequences tile the tokens in order. */
  if (b->seq_q_start[0] != 0 || b->seq_q_start[ns] != nt)
    return qv_error_set(err, QV_EFORMAT, "tp step: sequence starts do not cover the %d tokens", nt);
  for (int32_t s = 0; s < ns; s++)
    if (b->seq_q_start[s + 1] <= b->seq_q_start[s])
      return qv_error_set(err, QV_EFORMAT, "tp step: sequence %d is empty or out of order", s);
  for (int32_t i = 0; i < nl; i++)
    if (b->logits_idx[i] < 0 || b->logits_idx[i] >= nt)
      return qv_error_set(err, QV_EFORMAT, "tp step: logits row %d outside the %d tokens", b->logits_idx[i], nt);
  return 0;
}

/* ---- the links ---- */

static void ctrl_opts(const qv_tp_net_opts *o, int node_rank, qv_ctrl_opts *co) {
  *co = (qv_ctrl_opts){.token = o->token, .node_rank = node_rank, .max_msg_bytes = NET_MAX_MSG,
                       .peer_timeout_ms = node_rank == 0 ? NET_WORKER_SILENCE_MS : NET_PEER_TIMEOUT_MS};
}

void tpm_init_fill(const qv_model_config *c, int32_t size, int32_t nnodes, int32_t comm, tpm_init *out) {
  *out = (tpm_init){.size = size, .nnodes = nnodes, .vocab = c->vocab_size, .dim = c->dim, .n_layer = c->n_layer,
                    .n_head = c->n_head, .n_kv_head = c->n_kv_head, .ffn = c->ffn_dim, .comm = comm};
}

static void init_words(const tpm_init *in, int32_t w[TPM_INIT_WORDS]) {
  const int32_t v[TPM_INIT_WORDS] = {in->size,   in->nnodes,    in->vocab, in->dim, in->n_layer,
                                     in->n_head, in->n_kv_head, in->ffn,   in->comm};
  memcpy(w, v, sizeof v);
}

void tpm_init_encode(const tpm_init *in, uint8_t out[TPM_INIT_BYTES]) {
  int32_t w[TPM_INIT_WORDS];
  init_words(in, w);
  out[0] = 'I';
  for (int i = 0; i < TPM_INIT_WORDS; i++) put_u32(out + 1 + 4 * i, (uint32_t)w[i]);
  memcpy(out + 1 + 4 * TPM_INIT_WORDS, in->shm_name, 32);
  memcpy(out + 1 + 4 * TPM_INIT_WORDS + 32, in->nccl_id, QV_COMM_NCCL_ID_BYTES);
}

static const char *comm_name(int32_t comm) {
  return comm == TPM_COMM_SHM ? "cpu ranks (shm)" : comm == TPM_COMM_NCCL ? "cuda ranks (nccl)" : "unknown ranks";
}

int tpm_init_decode(const uint8_t *p, size_t n, const tpm_init *want, tpm_init *out, qv_error *err) {
  static const char *const names[TPM_INIT_WORDS] = {"tensor parallel size", "nodes", "vocabulary", "hidden size",
                                                    "layers", "attention heads", "KV heads", "intermediate size",
                                                    "communicator"};
  if (n != TPM_INIT_BYTES || p[0] != 'I')
    return qv_error_set(err, QV_EFORMAT, "tp: INIT of %zu bytes (want %d starting with 'I'); the nodes run different "
                                         "quiver versions?", n, (int)TPM_INIT_BYTES);
  int32_t have[TPM_INIT_WORDS], expect[TPM_INIT_WORDS];
  init_words(want, expect);
  for (int i = 0; i < TPM_INIT_WORDS; i++) have[i] = (int32_t)get_u32(p + 1 + 4 * i);
  if (have[8] != expect[8])
    return qv_error_set(err, QV_EINVAL, "tp: node 0 runs %s, this node %s; start every node with the same --device",
                        comm_name(have[8]), comm_name(expect[8]));
  for (int i = 0; i < TPM_INIT_WORDS; i++)
    if (have[i] != expect[i])
      return qv_error_set(err, QV_EINVAL,
                          "tp: node 0 runs another model or group shape (%s: %d, here %d); start every node with "
                          "the same model, --tp and --nnodes",
                          names[i], have[i], expect[i]);
  *out = *want;
  memcpy(out->shm_name, p + 1 + 4 * TPM_INIT_WORDS, 32);
  out->shm_name[32] = 0;
  memcpy(out->nccl_id, p + 1 + 4 * TPM_INIT_WORDS + 32, QV_COMM_NCCL_ID_BYTES);
  for (int i = 0; i < 32; i++) {
    char ch = out->shm_name[i];
    if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f')))
      return qv_error_set(err, QV_EFORMAT, "tp: INIT carries a malformed group name");
  }
  /* The NCCL id is opaque (NCCL checks it when the ranks meet); on cpu ranks it must be unused. */
  if (out->comm == TPM_COMM_SHM)
    for (int i = 0; i < QV_COMM_NCCL_ID_BYTES; i++)
      if (out->nccl_id[i]) return qv_error_set(err, QV_EFORMAT, "tp: INIT of a shm group carries an NCCL id");
  return 0;
}

static void lost(tpm_net *n, int32_t node, const char *why) {
  if (atomic_exchange(&n->lost, 1)) return;
  qv_log(QV_LOG_ERROR, "tp: node %d lost (%s): the group stops", node, why);
  pthread_mutex_lock(&n->mu);
  void (*fn)(void *) = n->on_lost;
  void *ud = n->on_lost_ud;
  pthread_mutex_unlock(&n->mu);
  if (fn) fn(ud);
}

static void *link_main(void *arg) {
  tpm_net *n = arg;
  while (!atomic_load(&n->stop) && !atomic_load(&n->lost)) {
    for (int32_t r = 1; r < n->nnodes; r++) {
      qv_ctrl_msg msg;
      qv_error e = {0};
      pthread_mutex_lock(&n->mu);
      int rc = qv_ctrl_poll(n->links[r], 0, &msg, &e);
      pthread_mutex_unlock(&n->mu);
      if (rc < 0) {
        lost(n, r, e.msg[0] ? e.msg : qv_strerror(rc));
        break;
      }
      if (rc > 0) qv_log(QV_LOG_WARN, "tp: node %d sent an unexpected message (type %d); dropped", r, (int)msg.type);
    }
    sleep_ms(LINK_POLL_MS);
  }
  return NULL;
}

/* Node 0: accepts nnodes - 1 authenticated links, one per node rank. */
static int accept_nodes(tpm_net *n, const qv_tp_net_opts *o, double deadline, qv_error *err) {
  qv_ctrl_opts co;
  ctrl_opts(o, 0, &co);
  int32_t n_have = 0;
  while (n_have < n->nnodes - 1) {
    int left = (int)(deadline - now_ms());
    if (left <= 0)
      return qv_error_set(err, QV_ECLOSED, "tp: %d of %d nodes joined %s:%d in time", n_have + 1, n->nnodes,
                          o->master_addr, o->master_port);
    qv_ctrl *c = NULL;
    qv_error e = {0};
    int rc = qv_ctrl_accept(n->lis, &co, left, &c, &e);
    if (rc) {
      qv_log(QV_LOG_WARN, "tp: a node failed to join: %s", e.msg);
      continue;
    }
    int32_t r = qv_ctrl_peer_rank(c);
    if (r < 1 || r >= n->nnodes || n->links[r]) {
      qv_log(QV_LOG_WARN, "tp: refused a link claiming node rank %d (of %d)", r, n->nnodes);
      qv_ctrl_close(c);
      continue;
    }
    n->links[r] = c;
    n_have++;
  }
  return 0;
}

/* Another node: connects to node 0 (retrying while it is not listening yet) and reads INIT. */
static int join_master(tpm_net *n, const qv_tp_net_opts *o, tpm_init *in, double deadline, qv_error *err) {
  qv_ctrl_opts co;
  ctrl_opts(o, n->node_rank, &co);
  int rc;
  for (;;) {
    int left = (int)(deadline - now_ms());
    if (left <= 0) return qv_error_set(err, QV_ECLOSED, "tp: node 0 at %s:%d did not answer in time", o->master_addr,
                                       o->master_port);
    qv_error e = {0};
    rc = qv_ctrl_connect(o->master_addr, o->master_port, &co, left, &n->links[0], &e);
    if (!rc) break;
    if (rc == QV_EAUTH) return qv_error_set(err, rc, "tp: %s", e.msg);
    sleep_ms(200);
  }
  for (;;) {
    if (now_ms() > deadline) return qv_error_set(err, QV_ECLOSED, "tp: no INIT from node 0 in time");
    qv_ctrl_msg msg;
    rc = qv_ctrl_poll(n->links[0], WORKER_POLL_MS, &msg, err);
    if (rc < 0) return rc;
    if (rc == 0) continue;
    if (msg.type != QV_CTRL_STEP || msg.n_bytes < 1 || msg.payload[0] != 'I') {
      qv_log(QV_LOG_WARN, "tp: dropped a message before INIT (type %d, %u bytes)", (int)msg.type, msg.n_bytes);
      continue;
    }
    tpm_init got;
    rc = tpm_init_decode(msg.payload, msg.n_bytes, in, &got, err);
    if (!rc) *in = got;
    return rc;
  }
}

int tpm_net_open(const qv_tp_net_opts *o, tpm_init *in, tpm_net **out, qv_error *err) {
  *out = NULL;
  if (!o->token || strlen(o->token) < QV_CTRL_TOKEN_MIN)
    return qv_error_set(err, QV_EINVAL, "tp: --nnodes %d needs a shared token of at least %d characters "
                                        "(--tp-token or QUIVER_TP_TOKEN)",
                        o->nnodes, QV_CTRL_TOKEN_MIN);
  if (!o->master_addr || o->master_port <= 0 || o->master_port > 65535)
    return qv_error_set(err, QV_EINVAL, "tp: --nnodes %d needs --master-addr and --master-port", o->nnodes);
  tpm_net *n = calloc(1, sizeof *n);
  if (!n) return qv_error_set(err, QV_ENOMEM, "out of memory");
  n->node_rank = o->node_rank;
  n->nnodes = o->nnodes;
  pthread_mutex_init(&n->mu, NULL);
  n->n_links = o->node_rank == 0 ? o->nnodes : 1;
  n->links = calloc((size_t)n->n_links, sizeof *n->links);
  int rc = n->links ? 0 : qv_error_set(err, QV_ENOMEM, "out of memory");
  double deadline = now_ms() + (o->timeout_ms > 0 ? o->timeout_ms : 120000);
  if (!rc && o->node_rank == 0) {
    rc = qv_ctrl_listen(o->master_addr, o->master_port, NULL, &n->lis, err);
    if (!rc) rc = accept_nodes(n, o, deadline, err);
    /* The group is complete: nobody else may connect. */
    qv_ctrl_listener_close(n->lis);
    n->lis = NULL;
    if (!rc) {
      uint8_t msg[TPM_INIT_BYTES];
      tpm_init_encode(in, msg);
      for (int32_t r = 1; r < n->nnodes && !rc; r++) rc = qv_ctrl_send(n->links[r], QV_CTRL_STEP, msg, sizeof msg, err);
    }
    if (!rc && pthread_create(&n->th, NULL, link_main, n) == 0) n->th_started = 1;
    else if (!rc) rc = qv_error_set(err, QV_ENOMEM, "tp: cannot start the link thread");
  } else if (!rc) {
    rc = join_master(n, o, in, deadline, err);
  }
  if (rc) {
    tpm_net_close(n);
    return rc;
  }
  *out = n;
  return 0;
}

static int send_all(tpm_net *n, const void *p, size_t len, qv_error *err) {
  if (atomic_load(&n->lost)) return qv_error_set(err, QV_ECLOSED, "tp: a node of the group was lost");
  int rc = 0;
  pthread_mutex_lock(&n->mu);
  for (int32_t r = 1; r < n->nnodes && !rc; r++) rc = qv_ctrl_send(n->links[r], QV_CTRL_STEP, p, len, err);
  pthread_mutex_unlock(&n->mu);
  return rc;
}

int tpm_net_send_step(tpm_net *n, const qv_batch *b, qv_error *err) {
  size_t len = 0;
  if (tpm_batch_encode(b, &n->tx, &n->tx_cap, &len)) return qv_error_set(err, QV_ENOMEM, "out of memory");
  if (len > NET_MAX_MSG) return qv_error_set(err, QV_ELIMIT, "tp: a step of %zu bytes exceeds the link's limit", len);
  return send_all(n, n->tx, len, err);
}

int tpm_net_send_kv(tpm_net *n, int32_t n_blocks, int32_t block_size, qv_error *err) {
  uint8_t msg[9];
  msg[0] = 'K';
  put_u32(msg + 1, (uint32_t)n_blocks);
  put_u32(msg + 5, (uint32_t)block_size);
  return send_all(n, msg, sizeof msg, err);
}

void tpm_net_close(tpm_net *n) {
  if (!n) return;
  atomic_store(&n->stop, 1);
  if (n->th_started) pthread_join(n->th, NULL);
  for (int32_t r = 0; r < n->n_links; r++) {
    if (!n->links[r]) continue;
    if (n->node_rank == 0 && !atomic_load(&n->lost)) {
      qv_error e = {0};
      qv_ctrl_send(n->links[r], QV_CTRL_SHUTDOWN, "stop", 4, &e);
    }
    qv_ctrl_close(n->links[r]);
  }
  qv_ctrl_listener_close(n->lis);
  pthread_mutex_destroy(&n->mu);
  free(n->links);
  free(n->tx);
  free(n);
}

/* ---- the public entry points ---- */

int qv_model_tp_on_lost(qv_model *m, void (*fn)(void *ud), void *ud) {
  tpm_net *n = tpm_group_net(m);
  if (!n || n->node_rank != 0) return QV_EINVAL;
  pthread_mutex_lock(&n->mu);
  n->on_lost = fn;
  n->on_lost_ud = ud;
  pthread_mutex_unlock(&n->mu);
  return 0;
}

int qv_model_tp_worker_run(qv_model *m, qv_error *err) {
  tpm_net *n = tpm_group_net(m);
  if (!n || n->node_rank == 0) return qv_error_set(err, QV_EINVAL, "tp: not a worker node");
  tpm_batch_buf bb = {0};
  int rc = 0;
  for (;;) {
    qv_ctrl_msg msg;
    rc = qv_ctrl_poll(n->links[0], WORKER_POLL_MS, &msg, err);
    if (rc < 0) {
      qv_error_prefix(err, "tp: the link to node 0 was lost");
      break;
    }
    if (rc == 0) continue;
    if (msg.type == QV_CTRL_SHUTDOWN) {
      rc = 0;
      break;
    }
    if (msg.type != QV_CTRL_STEP || msg.n_bytes < 1) {
      qv_log(QV_LOG_WARN, "tp: dropped a message of type %d", (int)msg.type);
      continue;
    }
    if (msg.payload[0] == 'K' && msg.n_bytes == 9) {
      rc = tpm_group_kv_init(m, (int32_t)get_u32(msg.payload + 1), (int32_t)get_u32(msg.payload + 5), err);
    } else if (msg.payload[0] == 'S') {
      /* A step that does not decode cannot be run, and skipping it would leave node 0's ranks
       * waiting in a collective: the worker stops, and node 0 sees it gone. */
      rc = tpm_batch_decode(msg.payload, msg.n_bytes, m->max_tok, m->max_logits, &bb, err);
      if (!rc) rc = m->kv_ready ? model_check_batch(m, &bb.b, m->cfg.vocab_size, err) : qv_error_set(err, QV_ESTATE, "tp: step before KV");
      if (!rc) rc = tpm_group_run(m->tp, &bb.b, NULL, err);
    } else {
      qv_log(QV_LOG_WARN, "tp: dropped an unknown message ('%c', %u bytes)", msg.payload[0], msg.n_bytes);
      continue;
    }
    if (rc) break;
  }
  free(bb.buf);
  return rc;
}
