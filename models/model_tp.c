/* Tensor-parallel execution of the Llama family on CPU or GPU ranks (see model_tp.h for the split).
 *
 * A group model is an ordinary qv_model whose forward runs every rank: rank 0 on the calling
 * thread (the engine thread), ranks 1..size-1 on one thread each, all in lockstep on one step's
 * batch. Each rank is a complete Llama-family qv_model of the local shape (its heads, its
 * intermediate rows, its vocabulary rows) on its own CPU backend with its own thread pool and
 * its own KV cache (its KV heads); models/llama.c calls back into this file for the
 * all-reduces and the logits gather. With several processes (--nnodes, model_tp_net.c) each
 * runs its own consecutive ranks the same way. CPU ranks talk through one shm communicator whose
 * sums run in a fixed order, so a run at a given size is reproducible bit for bit, and batch
 * invariance carries over from the ops. GPU ranks are the same models on cuda backends, local
 * rank i on CUDA device i, joined by the nccl communicator: each collective is enqueued on the
 * rank backend's own stream behind the kernels that produced its input, and a rank waits for its
 * stream once, at the end of its step (qv_comm_sync, under the communicator's timeout), so a
 * dead peer aborts the group instead of hanging it (model_tp_gpu.c holds the device code).
 *
 * Weights come through a wrapping weight source that asks the checkpoint for the full tensor's
 * mapping and hands the builder only this rank's slice: rows of a mapped tensor are a pointer
 * into the mapping (zero-copy views stay zero-copy), columns (o_proj, down_proj) are copied row
 * by row into a shard-sized scratch, for quantized types on block boundaries only. A rank never
 * holds the full tensor. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "comm/comm.h"
#include "core/log.h"
#include "models/model_tp.h"

/* ---- the plan ---- */

void tpm_split(int64_t n, int32_t size, int32_t rank, int32_t *lo, int32_t *cnt) {
  int64_t a = n * rank / size, b = n * (rank + 1) / size;
  *lo = (int32_t)a;
  *cnt = (int32_t)(b - a);
}

int tpm_plan(const qv_model_config *c, int32_t size, int32_t rank, int32_t ffn_block, tpm_shard *s, qv_error *err) {
  memset(s, 0, sizeof *s);
  if (size < 1 || size > QV_COMM_MAX_RANKS || rank < 0 || rank >= size)
    return qv_error_set(err, QV_EINVAL, "tensor parallel size %d (rank %d) outside 1..%d", size, rank,
                        QV_COMM_MAX_RANKS);
  if (c->family != QV_FAMILY_LLAMA)
    return qv_error_set(err, QV_EUNSUPPORTED,
                        "tensor parallelism covers the Llama family (llama, mistral, qwen2, qwen3); %s runs "
                        "with --tensor-parallel-size 1",
                        c->arch);
  s->rank = rank;
  s->size = size;
  int32_t group = c->n_head / c->n_kv_head; /* query heads per KV head */
  if (c->n_kv_head >= size) {
    tpm_split(c->n_kv_head, size, rank, &s->kv0, &s->n_kv);
    s->head0 = s->kv0 * group;
    s->n_head = s->n_kv * group;
  } else {
    int32_t rep = size / c->n_kv_head;
    if (size % c->n_kv_head || group % rep)
      return qv_error_set(err, QV_EUNSUPPORTED,
                          "tensor parallel size %d does not split %d attention heads over %d KV heads (with fewer "
                          "KV heads than ranks, the ranks must be a multiple of the KV heads and divide each "
                          "KV head's %d query heads)",
                          size, c->n_head, c->n_kv_head, group);
    s->kv0 = rank / rep;
    s->n_kv = 1;
    s->n_head = group / rep;
    s->head0 = s->kv0 * group + (rank % rep) * s->n_head;
  }
  /* Intermediate rows in whole blocks of down_proj's quantization (its columns), so each rank's
   * slice of a quantized down_proj starts and ends on a block boundary. */
  int32_t unit = ffn_block > 0 ? ffn_block : 1;
  if (c->ffn_dim % unit || c->ffn_dim / unit < size)
    return qv_error_set(err, QV_EUNSUPPORTED,
                        "tensor parallel size %d does not split the intermediate size %d in blocks of %d", size,
                        c->ffn_dim, unit);
  tpm_split(c->ffn_dim / unit, size, rank, &s->ffn0, &s->n_ffn);
  s->ffn0 *= unit;
  s->n_ffn *= unit;
  if (c->vocab_size < size)
    return qv_error_set(err, QV_EUNSUPPORTED, "tensor parallel size %d exceeds the vocabulary %d", size,
                        c->vocab_size);
  tpm_split(c->vocab_size, size, rank, &s->vocab0, &s->n_vocab);
  s->vocab_pad = (int32_t)(((int64_t)c->vocab_size + size - 1) / size);
  s->vocab_full = c->vocab_size;
  return 0;
}

/* The configuration a rank's model is built with: the local heads, rows and vocabulary. */
static qv_model_config local_config(const qv_model_config *c, const tpm_shard *s) {
  qv_model_config l = *c;
  l.n_head = s->n_head;
  l.n_kv_head = s->n_kv;
  l.ffn_dim = s->n_ffn;
  l.vocab_size = s->n_vocab;
  return l;
}

/* ---- the sharding weight source ---- */

typedef enum { SL_ALL = 0, SL_ROWS, SL_COLS, SL_SKIP } slice_kind;

typedef struct shard_src {
  model_weight_src *inner;   /* borrowed: the checkpoint's source */
  const qv_model_config *cfg;/* the full configuration */
  const tpm_shard *s;
  char *scratch;             /* column slices, grown; owned */
  size_t cap;
} shard_src;

static int ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n >= k && !strcmp(s + n - k, suffix);
}

/* What part of tensor `name` this rank holds: kind, and the element range [*lo, *lo + *n) of
 * the sliced dimension, whose full length is *full. */
static slice_kind slice_of(const shard_src *ss, const char *name, int64_t *lo, int64_t *n, int64_t *full) {
  const qv_model_config *c = ss->cfg;
  const tpm_shard *s = ss->s;
  int64_t hd = c->head_dim;
  if (!strcmp(name, "model.embed_tokens.weight") || !strcmp(name, "lm_head.weight")) {
    *lo = s->vocab0, *n = s->n_vocab, *full = c->vocab_size;
    return SL_ROWS;
  }
  if (ends_with(name, "q_proj.weight") || ends_with(name, "q_proj.bias")) {
    *lo = s->head0 * hd, *n = s->n_head * hd, *full = c->n_head * hd;
    return SL_ROWS;
  }
  if (ends_with(name, "k_proj.weight") || ends_with(name, "k_proj.bias") || ends_with(name, "v_proj.weight") ||
      ends_with(name, "v_proj.bias")) {
    *lo = s->kv0 * hd, *n = s->n_kv * hd, *full = c->n_kv_head * hd;
    return SL_ROWS;
  }
  if (ends_with(name, "o_proj.weight")) {
    *lo = s->head0 * hd, *n = s->n_head * hd, *full = c->n_head * hd;
    return SL_COLS;
  }
  if (ends_with(name, "gate_proj.weight") || ends_with(name, "gate_proj.bias") || ends_with(name, "up_proj.weight") ||
      ends_with(name, "up_proj.bias")) {
    *lo = s->ffn0, *n = s->n_ffn, *full = c->ffn_dim;
    return SL_ROWS;
  }
  if (ends_with(name, "down_proj.weight")) {
    *lo = s->ffn0, *n = s->n_ffn, *full = c->ffn_dim;
    return SL_COLS;
  }
  /* Biases after a row-parallel matmul are added once, by rank 0. */
  if (ends_with(name, "o_proj.bias") || ends_with(name, "down_proj.bias")) return s->rank ? SL_SKIP : SL_ALL;
  return SL_ALL;
}

static const void *shard_src_get(model_weight_src *src, const char *name, int64_t rows, int64_t cols,
                                 qv_dtype *dtype, qv_error *err) {
  shard_src *ss = src->ctx;
  model_weight_src *in = ss->inner;
  src->transient = 0;
  int64_t lo = 0, n = 0, full = 0;
  slice_kind k = slice_of(ss, name, &lo, &n, &full);
  if (k == SL_SKIP) return NULL;
  if (k == SL_ALL) {
    const void *p = in->get(in, name, rows, cols, dtype, err);
    src->transient = in->transient;
    return p;
  }
  int vec = rows == 1 && k == SL_ROWS && !strstr(name, ".weight");
  if (k == SL_ROWS) {
    /* A matrix's rows, or a bias vector's elements: a pointer into the full tensor. */
    const void *p = vec ? in->get(in, name, 1, full, dtype, err) : in->get(in, name, full, cols, dtype, err);
    if (!p) return NULL;
    src->transient = in->transient;
    size_t off = vec ? (size_t)lo * qv_dtype_size(*dtype) : (size_t)lo * qv_dtype_row_bytes(*dtype, cols);
    return (const char *)p + off;
  }
  /* Columns [lo, lo + n) of every row, copied into scratch. */
  const void *p = in->get(in, name, rows, full, dtype, err);
  if (!p) return NULL;
  size_t full_rb = qv_dtype_row_bytes(*dtype, full), rb = qv_dtype_row_bytes(*dtype, n);
  size_t off = qv_dtype_row_bytes(*dtype, lo);
  if (qv_dtype_is_quant(*dtype) && (!rb || (!off && lo) || off + rb > full_rb ||
                                    qv_dtype_row_bytes(*dtype, lo + n) != off + rb)) {
    qv_error_set(err, QV_EUNSUPPORTED,
                 "tensor '%s' (%s): columns [%lld, %lld) of %lld do not fall on quantization block boundaries; "
                 "choose another tensor parallel size",
                 name, qv_dtype_name(*dtype), (long long)lo, (long long)(lo + n), (long long)full);
    return NULL;
  }
  size_t need = (size_t)rows * rb;
  if (need > ss->cap) {
    char *b = realloc(ss->scratch, need);
    if (!b) {
      qv_error_set(err, QV_ENOMEM, "out of memory slicing '%s'", name);
      return NULL;
    }
    ss->scratch = b;
    ss->cap = need;
  }
  for (int64_t r = 0; r < rows; r++)
    memcpy(ss->scratch + (size_t)r * rb, (const char *)p + (size_t)r * full_rb + off, rb);
  src->transient = 1;
  return ss->scratch;
}

static void shard_src_release(model_weight_src *src, const void *p, size_t n) {
  shard_src *ss = src->ctx;
  if (ss->inner->release) ss->inner->release(ss->inner, p, n);
}

/* ---- the rank group ---- */

/* This process runs global ranks [r0, r0 + n_local); arrays are indexed by local rank. */
struct tpm_group {
  int32_t size, r0, n_local;
  qv_backend **be;     /* [n_local], owned */
  qv_model **rank;     /* [n_local], owned */
  tpm_shard *shard;    /* [n_local] */
  qv_comm **comm;      /* [n_local], owned */
  pthread_t *th;       /* [n_local]; th[0] unused (local rank 0 is the caller) */
  int32_t n_started;   /* threads started (local ranks 1..n_started) */
  int gpu;             /* 1: cuda ranks and the nccl communicator; 0: cpu ranks and shm */
  tpm_init init;       /* the group's rendezvous: init.shm_name (shm) or init.nccl_id (nccl), made
                          here or by node 0 and received over the control channel */
  pthread_mutex_t mu;
  pthread_cond_t go, done;
  uint64_t gen;        /* bumped per job */
  int32_t n_done;
  int stop;
  /* The job: a forward of b (or, with b NULL, joining the communicator). */
  const qv_batch *b;
  int *rc;             /* [n_local] */
  qv_error *errs;      /* [n_local] */
  struct tpm_net *net; /* owned; NULL when every rank is in this process */
  int64_t *rss_bytes;  /* [n_local]: resident bytes the process grew by loading each rank */
  int64_t n_steps;     /* forwards run, and their wall seconds (qv_model_tp_stats) */
  double step_s;
};

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

typedef struct rank_arg {
  tpm_group *g;
  int32_t i;
} rank_arg;

static int join_comm(tpm_group *g, int32_t i, qv_error *err) {
  int rc;
  if (g->gpu) {
    rc = tpg_comm_create(&g->shard[i], g->be[i], g->init.nccl_id, &g->comm[i], err);
  } else {
    qv_comm_shm_opts o = {.token = g->init.shm_name, .rank = g->r0 + i, .size = g->size};
    rc = qv_comm_shm_create(&o, &g->comm[i], err);
  }
  if (!rc) g->shard[i].comm = g->comm[i];
  return rc;
}

/* One rank's part of a step. A GPU rank's collectives are still in flight when its forward
 * returns: it waits for its stream here, under the communicator's timeout (shm: a no-op). */
static int rank_forward(tpm_group *g, int32_t i, const qv_batch *b, float *logits, qv_error *err) {
  int rc = qv_model_forward(g->rank[i], b, logits, err);
  return rc ? rc : qv_comm_sync(g->comm[i], err);
}

static void *rank_main(void *arg) {
  rank_arg *a = arg;
  tpm_group *g = a->g;
  int32_t i = a->i;
  free(a);
  uint64_t seen = 0;
  for (;;) {
    pthread_mutex_lock(&g->mu);
    while (!g->stop && g->gen == seen) pthread_cond_wait(&g->go, &g->mu);
    if (g->stop) {
      pthread_mutex_unlock(&g->mu);
      return NULL;
    }
    seen = g->gen;
    const qv_batch *b = g->b;
    pthread_mutex_unlock(&g->mu);
    qv_error e = {0};
    int rc = b ? rank_forward(g, i, b, NULL, &e) : join_comm(g, i, &e);
    pthread_mutex_lock(&g->mu);
    g->rc[i] = rc;
    g->errs[i] = e;
    g->n_done++;
    pthread_cond_signal(&g->done);
    pthread_mutex_unlock(&g->mu);
  }
}

int tpm_group_run(tpm_group *g, const qv_batch *b, float *logits, qv_error *err) {
  double t0 = now_s();
  pthread_mutex_lock(&g->mu);
  g->b = b;
  g->n_done = 0;
  g->gen++;
  pthread_cond_broadcast(&g->go);
  pthread_mutex_unlock(&g->mu);
  qv_error e0 = {0};
  int rc0 = b ? rank_forward(g, 0, b, g->r0 == 0 ? logits : NULL, &e0) : join_comm(g, 0, &e0);
  pthread_mutex_lock(&g->mu);
  while (g->n_done < g->n_local - 1) pthread_cond_wait(&g->done, &g->mu);
  pthread_mutex_unlock(&g->mu);
  if (b) {
    g->n_steps++;
    g->step_s += now_s() - t0;
  }
  if (rc0) return qv_error_set(err, rc0, "tp rank %d: %s", g->r0, e0.msg);
  for (int32_t i = 1; i < g->n_local; i++)
    if (g->rc[i]) return qv_error_set(err, g->rc[i], "tp rank %d: %s", g->r0 + i, g->errs[i].msg);
  return 0;
}

static void group_free(tpm_group *g) {
  if (!g) return;
  tpm_net_close(g->net);
  if (g->n_started) {
    pthread_mutex_lock(&g->mu);
    g->stop = 1;
    pthread_cond_broadcast(&g->go);
    pthread_mutex_unlock(&g->mu);
    for (int32_t i = 1; i <= g->n_started; i++) pthread_join(g->th[i], NULL);
  }
  pthread_mutex_destroy(&g->mu);
  pthread_cond_destroy(&g->go);
  pthread_cond_destroy(&g->done);
  for (int32_t i = 0; i < g->n_local; i++) {
    if (g->rank && g->rank[i]) qv_model_destroy(g->rank[i]);
    /* The nccl communicator borrows the backend's stream: it goes first. */
    if (g->comm && g->comm[i]) qv_comm_destroy(g->comm[i]);
    if (g->shard) {
      free(g->shard[i].send);
      free(g->shard[i].recv);
      if (g->be && g->be[i]) {
        g->be[i]->ops->free(g->be[i], &g->shard[i].d_send);
        g->be[i]->ops->free(g->be[i], &g->shard[i].d_recv);
      }
    }
    if (g->be && g->be[i]) qv_backend_destroy(g->be[i]);
  }
  free(g->be);
  free(g->rank);
  free(g->shard);
  free(g->comm);
  free(g->th);
  free(g->rc);
  free(g->errs);
  free(g->rss_bytes);
  free(g);
}

void tpm_free(qv_model *m) {
  group_free(m->tp);
  m->tp = NULL;
}

/* Logits rows per all-gather: about 1 MiB of floats per rank in host memory, about 64 MiB of
 * gathered floats in device memory (usually every row of a step at once). */
static int32_t gather_chunk(const tpm_shard *s, int32_t max_logits) {
  int64_t c = s->gpu ? ((int64_t)1 << 24) / ((int64_t)s->size * s->vocab_pad) : ((int64_t)1 << 18) / s->vocab_pad;
  if (c < 1) c = 1;
  return (int32_t)(c < max_logits ? c : max_logits);
}

/* The process's anonymous resident memory (RssAnon of /proc/self/status: what a rank's copied
 * weights occupy, without the checkpoint mapping's file pages, which readahead and the loader's
 * page release move between ranks), -1 where it cannot be read. */
static int64_t rss_now(void) {
  FILE *f = fopen("/proc/self/status", "r");
  if (!f) return -1;
  char line[256];
  long long kb = -1;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "RssAnon: %lld kB", &kb) == 1) break;
  fclose(f);
  return kb < 0 ? -1 : (int64_t)kb * 1024;
}

static long n_cores(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? n : 1;
}

/* down_proj's dtype sets the unit the intermediate rows split in (its quantization block). */
static int probe_ffn_block(const qv_model_config *cfg, model_weight_src *src, int32_t *block, qv_error *err) {
  qv_dtype dt;
  qv_error e = {0};
  *block = 1;
  if (src->get(src, "model.layers.0.mlp.down_proj.weight", cfg->dim, cfg->ffn_dim, &dt, &e))
    *block = qv_dtype_block_elems(dt);
  else if (e.code)
    return qv_error_set(err, e.code, "%s", e.msg);
  return 0;
}

/* Loads local rank i's shard on its own backend (a GPU rank: on CUDA device i). */
static int load_rank(tpm_group *g, int32_t i, const qv_model_config *cfg, model_weight_src *src, int32_t ffn_block,
                     const qv_backend_opts *bo, const qv_model_opts *opts, qv_error *err) {
  tpm_shard *s = &g->shard[i];
  int32_t r = g->r0 + i;
  int rc = tpm_plan(cfg, g->size, r, ffn_block, s, err);
  if (rc) return rc;
  s->gpu = g->gpu;
  s->device = g->gpu ? i : -1;
  qv_backend_opts rbo = *bo;
  rbo.device = s->device > 0 ? s->device : 0;
  if ((rc = qv_backend_create(g->gpu ? "cuda" : "cpu", &rbo, &g->be[i], err))) {
    qv_error_prefix(err, "tp rank %d of %d%s", r, g->size, g->gpu ? " (its CUDA device is the node's local rank)" : "");
    return rc;
  }
  qv_model_config lc = local_config(cfg, s);
  shard_src ss = {.inner = src, .cfg = cfg, .s = s};
  model_weight_src wrap = {.get = shard_src_get, .release = src->release ? shard_src_release : NULL, .ctx = &ss,
                           .persistent = src->persistent, .max_dims = src->max_dims, .want_u8 = src->want_u8};
  qv_model_opts ro = *opts;
  ro.tp_size = 1;
  ro.shard = s;
  rc = llama_build(&lc, &wrap, g->be[i], &ro, &g->rank[i], err);
  free(ss.scratch);
  if (rc) {
    qv_error_prefix(err, "tp rank %d of %d", r, g->size);
    return rc;
  }
  s->chunk = gather_chunk(s, g->rank[i]->max_logits);
  if (g->gpu) return tpg_gather_init(s, g->be[i], err);
  s->send = malloc((size_t)s->chunk * (size_t)s->vocab_pad * sizeof(float));
  s->recv = malloc((size_t)g->size * (size_t)s->chunk * (size_t)s->vocab_pad * sizeof(float));
  if (!s->send || !s->recv) return qv_error_set(err, QV_ENOMEM, "out of memory");
  return 0;
}

static int group_alloc(tpm_group *g) {
  size_t n = (size_t)g->n_local;
  pthread_mutex_init(&g->mu, NULL);
  pthread_cond_init(&g->go, NULL);
  pthread_cond_init(&g->done, NULL);
  g->be = calloc(n, sizeof *g->be);
  g->rank = calloc(n, sizeof *g->rank);
  g->shard = calloc(n, sizeof *g->shard);
  g->comm = calloc(n, sizeof *g->comm);
  g->th = calloc(n, sizeof *g->th);
  g->rc = calloc(n, sizeof *g->rc);
  g->errs = calloc(n, sizeof *g->errs);
  g->rss_bytes = calloc(n, sizeof *g->rss_bytes);
  return g->be && g->rank && g->shard && g->comm && g->th && g->rc && g->errs && g->rss_bytes ? 0 : QV_ENOMEM;
}

int tpm_build(const qv_model_config *cfg, model_weight_src *src, qv_backend *be, const qv_model_opts *opts,
              qv_model **out, qv_error *err) {
  *out = NULL;
  int32_t size = opts->tp_size;
  const qv_tp_net_opts *net = opts->tp_net;
  int32_t nnodes = net ? net->nnodes : 1, node = net ? net->node_rank : 0;
  int gpu = !strcmp(be->ops->name, "cuda");
  if (!gpu && strcmp(be->ops->name, "cpu"))
    return qv_error_set(err, QV_EUNSUPPORTED,
                        "tensor parallel size %d: sharded execution runs on cpu or cuda ranks, not %s", size,
                        be->ops->name);
  if (gpu && !qv_comm_nccl_available())
    return qv_error_set(err, QV_EUNSUPPORTED,
                        "tensor parallel size %d on cuda needs the NCCL communicator, and this quiver was built "
                        "without NCCL (a CUDA build where CMake finds nccl.h and libnccl)",
                        size);
  if (nnodes < 1 || size % nnodes || node < 0 || node >= nnodes)
    return qv_error_set(err, QV_EINVAL, "--nnodes %d must divide the tensor parallel size %d (node rank %d)", nnodes,
                        size, node);
  int32_t ffn_block;
  tpm_shard probe;
  int rc = probe_ffn_block(cfg, src, &ffn_block, err);
  if (!rc) rc = tpm_plan(cfg, size, 0, ffn_block, &probe, err);
  if (rc) return rc;
  qv_model *m = calloc(1, sizeof *m);
  tpm_group *g = calloc(1, sizeof *g);
  if (!m || !g) {
    free(m);
    free(g);
    return qv_error_set(err, QV_ENOMEM, "out of memory");
  }
  m->cfg = *cfg;
  m->be = be;
  m->tp = g;
  m->max_tok = opts->max_batch_tokens;
  m->max_logits = opts->max_logits > 0 ? opts->max_logits : opts->max_batch_tokens;
  m->n_params = qv_model_config_n_params(cfg);
  g->size = size;
  g->n_local = size / nnodes;
  g->r0 = node * g->n_local;
  g->gpu = gpu;
  if (group_alloc(g)) {
    rc = qv_error_set(err, QV_ENOMEM, "out of memory");
    goto fail;
  }
  long threads = opts->n_threads > 0 ? opts->n_threads : n_cores();
  qv_backend_opts bo = {.n_threads = threads / g->n_local > 0 ? (int)(threads / g->n_local) : 1,
                        .cpu_bf16_dot = opts->cpu_bf16_dot};
  /* Ranks load one after another through the one checkpoint source. */
  for (int32_t i = 0; i < g->n_local; i++) {
    int64_t rss0 = rss_now();
    if ((rc = load_rank(g, i, cfg, src, ffn_block, &bo, opts, err))) goto fail;
    int64_t rss1 = rss_now();
    g->rss_bytes[i] = rss0 < 0 || rss1 < 0 ? -1 : rss1 - rss0;
    m->weight_bytes += g->rank[i]->weight_bytes;
    m->n_borrowed += g->rank[i]->n_borrowed;
  }
  /* The group's rendezvous (the shm name, or the NCCL unique id): made here, or by node 0 and
   * received over the control channel. */
  tpm_init_fill(cfg, size, nnodes, gpu ? TPM_COMM_NCCL : TPM_COMM_SHM, &g->init);
  if (g->r0 == 0) {
    rc = gpu ? qv_comm_nccl_unique_id(g->init.nccl_id, err) : qv_comm_shm_token(g->init.shm_name, err);
    /* A shm name is always sent (checked on receipt); an NCCL group carries a fixed one. */
    if (!rc && gpu) memset(g->init.shm_name, '0', 32);
    if (rc) goto fail;
  }
  if (net && (rc = tpm_net_open(net, &g->init, &g->net, err))) goto fail;
  for (int32_t i = 1; i < g->n_local; i++) {
    rank_arg *a = malloc(sizeof *a);
    if (!a) {
      rc = qv_error_set(err, QV_ENOMEM, "out of memory");
      goto fail;
    }
    *a = (rank_arg){g, i};
    if (pthread_create(&g->th[i], NULL, rank_main, a)) {
      free(a);
      rc = qv_error_set(err, QV_ENOMEM, "tp: cannot start the thread of rank %d", g->r0 + i);
      goto fail;
    }
    g->n_started = i;
  }
  /* The first job joins every rank to the communicator. */
  if ((rc = tpm_group_run(g, NULL, NULL, err))) goto fail;
  if (gpu)
    QV_LOGI("tp: %s sharded over %d cuda ranks (ranks %d..%d here on CUDA devices 0..%d, nccl), %.1f MiB of "
            "weights here",
            cfg->arch, size, g->r0, g->r0 + g->n_local - 1, g->n_local - 1, (double)m->weight_bytes / 1048576.0);
  else
    QV_LOGI("tp: %s sharded over %d ranks (ranks %d..%d here, %d threads each), %.1f MiB of weights here", cfg->arch,
            size, g->r0, g->r0 + g->n_local - 1, bo.n_threads, (double)m->weight_bytes / 1048576.0);
  *out = m;
  return 0;
fail:
  qv_model_destroy(m);
  return rc;
}

int tpm_forward(qv_model *m, const qv_batch *b, float *logits, qv_error *err) {
  if (!m->kv_ready) return qv_error_set(err, QV_ESTATE, "forward: KV cache not allocated");
  if (m->tp->r0 != 0) return qv_error_set(err, QV_ESTATE, "forward: this node runs worker ranks only");
  /* Every rank must fail or succeed together: what only the full model can check is checked
   * here, before any rank enters a collective. */
  int rc = model_check_batch(m, b, m->cfg.vocab_size, err);
  if (!rc && m->tp->net) rc = tpm_net_send_step(m->tp->net, b, err);
  if (rc) return rc;
  return tpm_group_run(m->tp, b, logits, err);
}

int tpm_group_kv_init(qv_model *m, int32_t n_blocks, int32_t block_size, qv_error *err) {
  tpm_group *g = m->tp;
  for (int32_t i = 0; i < g->n_local; i++) {
    int rc = qv_model_kv_init(g->rank[i], n_blocks, block_size, err);
    if (rc) {
      qv_error_prefix(err, "tp rank %d", g->r0 + i);
      return rc;
    }
  }
  m->kv_ready = 1;
  return 0;
}

void tpm_group_kv_deinit(qv_model *m) {
  tpm_group *g = m->tp;
  for (int32_t i = 0; i < g->n_local; i++) qv_model_kv_deinit(g->rank[i]);
}

int tpm_kv_init(qv_model *m, int32_t n_blocks, int32_t block_size, qv_error *err) {
  if (m->tp->net && m->tp->r0 == 0) {
    int rc = tpm_net_send_kv(m->tp->net, n_blocks, block_size, err);
    if (rc) return rc;
  }
  return tpm_group_kv_init(m, n_blocks, block_size, err);
}

int64_t tpm_kv_bytes_per_token(const qv_model *m) {
  /* Every rank's share (a node's own when the group spans nodes, times the nodes: the split is
   * the same on each). */
  int64_t n = 0;
  for (int32_t i = 0; i < m->tp->n_local; i++) n += qv_model_kv_bytes_per_token(m->tp->rank[i]);
  return n;
}

struct tpm_net *tpm_group_net(const qv_model *m) { return m->tp ? m->tp->net : NULL; }
int32_t tpm_group_size(const tpm_group *g) { return g->size; }

int tpm_all_reduce(qv_model *m, qv_tensor *t, qv_error *err) {
  double t0 = now_s();
  /* In the activations' dtype: f32 on cpu ranks, bf16 on cuda ranks (summed by NCCL in bf16). */
  if (t->dtype != QV_DTYPE_F32 && t->dtype != QV_DTYPE_BF16)
    return qv_error_set(err, QV_EUNSUPPORTED, "tp all-reduce: activations of dtype %s", qv_dtype_name(t->dtype));
  qv_comm_dtype dt = t->dtype == QV_DTYPE_BF16 ? QV_COMM_BF16 : QV_COMM_F32;
  int rc = qv_comm_all_reduce_sum(m->shard->comm, t->data, (size_t)(t->rows * t->cols), dt, err);
  m->shard->n_comm++;
  m->shard->comm_s += now_s() - t0;
  return rc;
}

/* Gemma 2's final soft cap, as the unsharded forward applies it after its download. */
static void final_softcap(const qv_model *m, int64_t rows, float *logits) {
  float cap = m->cfg.final_softcap;
  if (!(cap > 0) || !logits) return;
  size_t cnt = (size_t)rows * (size_t)m->shard->vocab_full;
  for (size_t i = 0; i < cnt; i++) logits[i] = tanhf(logits[i] / cap) * cap;
}

int tpm_gather_logits(qv_model *m, const qv_tensor *lg, float *logits, qv_error *err) {
  tpm_shard *s = m->shard;
  double t0 = now_s();
  if (s->gpu) {
    int rc = tpg_gather_logits(s, m->be, lg, logits, err);
    s->comm_s += now_s() - t0;
    if (!rc) final_softcap(m, lg->rows, logits);
    return rc;
  }
  const float *local = lg->data; /* [n_logits][n_vocab], host memory on the cpu backend */
  for (int64_t r0 = 0; r0 < lg->rows; r0 += s->chunk) {
    int64_t nr = lg->rows - r0 < s->chunk ? lg->rows - r0 : s->chunk;
    for (int64_t i = 0; i < nr; i++) {
      float *row = s->send + (size_t)i * s->vocab_pad;
      memcpy(row, local + (size_t)(r0 + i) * s->n_vocab, (size_t)s->n_vocab * sizeof *row);
      if (s->n_vocab < s->vocab_pad) memset(row + s->n_vocab, 0, (size_t)(s->vocab_pad - s->n_vocab) * sizeof *row);
    }
    int rc = qv_comm_all_gather(s->comm, s->send, s->recv, (size_t)nr * (size_t)s->vocab_pad, QV_COMM_F32, err);
    s->n_comm++;
    if (rc) return rc;
    if (!logits) continue;
    for (int32_t r = 0; r < s->size; r++) {
      int32_t v0, nv;
      tpm_split(s->vocab_full, s->size, r, &v0, &nv);
      const float *from = s->recv + (size_t)r * (size_t)nr * s->vocab_pad;
      for (int64_t i = 0; i < nr; i++)
        memcpy(logits + (size_t)(r0 + i) * s->vocab_full + v0, from + (size_t)i * s->vocab_pad,
               (size_t)nv * sizeof *logits);
    }
  }
  s->comm_s += now_s() - t0;
  final_softcap(m, lg->rows, logits);
  return 0;
}

/* ---- what `quiver info --tp` and the tests read ---- */

int32_t qv_model_tp_size(const qv_model *m) { return m->tp ? m->tp->size : 1; }

int64_t qv_model_tp_rank_rss(const qv_model *m, int32_t rank) {
  int32_t i = m->tp ? rank - m->tp->r0 : -1;
  return i < 0 || i >= m->tp->n_local ? -1 : m->tp->rss_bytes[i];
}

void qv_model_tp_stats(const qv_model *m, qv_tp_stats *out) {
  memset(out, 0, sizeof *out);
  if (!m->tp) return;
  out->n_steps = m->tp->n_steps;
  out->step_s = m->tp->step_s;
  out->n_collectives = m->tp->shard[0].n_comm;
  out->comm_s = m->tp->shard[0].comm_s;
}

int qv_model_tp_rank_bytes(const qv_model *m, int32_t rank, int64_t *weight_bytes, int64_t *kv_bytes_per_token) {
  if (!m->tp) {
    if (rank) return QV_EINVAL;
    *weight_bytes = m->weight_bytes;
    *kv_bytes_per_token = qv_model_kv_bytes_per_token(m);
    return 0;
  }
  int32_t i = rank - m->tp->r0;
  if (i < 0 || i >= m->tp->n_local) return QV_EINVAL;
  *weight_bytes = m->tp->rank[i]->weight_bytes;
  *kv_bytes_per_token = qv_model_kv_bytes_per_token(m->tp->rank[i]);
  return 0;
}
