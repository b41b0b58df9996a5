/* Tensor parallelism for the Llama family (models/model_tp.c): how a model splits over ranks
 * (the plan), the weight source that reads one rank's shard straight from the checkpoint, and the
 * rank group that runs every rank's forward in lockstep behind the ordinary qv_model interface.
 *
 * Megatron-style: q/k/v by heads and gate/up by intermediate rows (column-parallel), o_proj and
 * down_proj by their input columns (row-parallel, followed by an all-reduce sum), the embedding
 * and LM head by vocabulary rows (the embedding's zero rows are summed, the logits gathered).
 * Norms, rotary tables and the o/down biases (rank 0 only) are replicated. Ranks are cpu backends
 * joined by the shm communicator, or cuda backends (one device each) joined by the nccl one
 * (model_tp_gpu.c). Not a public header. */
#ifndef QV_MODELS_MODEL_TP_H
#define QV_MODELS_MODEL_TP_H

#include <stdint.h>

#include "comm/comm.h"
#include "models/model_impl.h"

struct qv_comm;

/* One rank's share. Heads split in whole KV groups (uneven when the KV heads do not divide:
 * SmolLM2's 3 KV heads over 2 ranks give 6 and 3 query heads); with fewer KV heads than ranks
 * each KV head is replicated on size / n_kv_head ranks, which split its query heads. */
typedef struct tpm_shard {
  int32_t rank, size;
  int32_t head0, n_head;   /* query heads [head0, head0 + n_head) */
  int32_t kv0, n_kv;       /* KV heads [kv0, kv0 + n_kv) */
  int32_t ffn0, n_ffn;     /* intermediate rows of gate/up, columns of down */
  int32_t vocab0, n_vocab; /* vocabulary rows of the embedding and the LM head */
  int32_t vocab_pad;       /* the most vocabulary rows any rank holds: the gather's row stride */
  int32_t vocab_full;
  struct qv_comm *comm;    /* borrowed from the group */
  float *send, *recv;      /* cpu ranks: logits gather scratch (host, owned) [chunk][vocab_pad],
                              [size][chunk][vocab_pad] */
  int32_t gpu;             /* 1: a cuda rank (nccl communicator on the backend's stream) */
  int32_t device;          /* gpu: the rank's CUDA device */
  qv_tensor d_send, d_recv;/* gpu: the same gather scratch in the rank backend's device memory, F32
                              [chunk][vocab_pad] (padding zeroed once) and [size*chunk][vocab_pad] */
  int32_t chunk;           /* logits rows per all-gather */
  int64_t n_comm;          /* collectives run, and seconds spent in them (qv_model_tp_stats) */
  double comm_s;
} tpm_shard;

/* Rank's part [*lo, *lo + *cnt) of n units split into size near-equal parts (vocabulary rows,
 * KV heads, intermediate blocks). */
void tpm_split(int64_t n, int32_t size, int32_t rank, int32_t *lo, int32_t *cnt);

/* Fills s with rank's share of cfg over size ranks (comm and scratch unset). ffn_block: the
 * elements per quantization block of down_proj (1 for float weights); the intermediate rows split
 * in whole blocks. A shape that does not split is QV_EUNSUPPORTED with the reason. */
int tpm_plan(const qv_model_config *cfg, int32_t size, int32_t rank, int32_t ffn_block, tpm_shard *s,
             qv_error *err);

/* Builds the tensor-parallel model for opts->tp_size ranks (also for 1 with opts->tp_force) on
 * be's kind of backend: cpu ranks (opts->n_threads / size threads each, the shm communicator) or
 * cuda ranks (local rank i on CUDA device i, the nccl communicator; QV_EUNSUPPORTED in a build
 * without NCCL). Each rank's shard is read through src, the rank threads started and the
 * communicator joined. be itself holds nothing of the model. The returned model answers
 * qv_model_forward, qv_model_kv_init and the accessors for the whole group. */
int tpm_build(const qv_model_config *cfg, model_weight_src *src, qv_backend *be, const qv_model_opts *opts,
              qv_model **out, qv_error *err);
/* Called by qv_model_destroy for a group model: stops the rank threads, frees every rank. */
void tpm_free(qv_model *m);
int tpm_forward(qv_model *m, const qv_batch *b, float *logits, qv_error *err);
int tpm_kv_init(qv_model *m, int32_t n_blocks, int32_t block_size, qv_error *err);
int64_t tpm_kv_bytes_per_token(const qv_model *m);

typedef struct tpm_group tpm_group;
/* Runs this process's ranks on b (rank 0's logits into logits; b NULL: join the communicator). */
int tpm_group_run(tpm_group *g, const qv_batch *b, float *logits, qv_error *err);
/* This process's ranks' KV caches. */
int tpm_group_kv_init(qv_model *m, int32_t n_blocks, int32_t block_size, qv_error *err);
/* Frees this process's ranks' KV caches (the fleet's sleep). Ranks on other nodes keep theirs:
 * a model split over several processes cannot sleep yet. */
void tpm_group_kv_deinit(qv_model *m);
struct tpm_net *tpm_group_net(const qv_model *m);
int32_t tpm_group_size(const tpm_group *g);

/* ---- several nodes (models/model_tp_net.c) ----
 * Node 0 listens on the master address, accepts one control link (comm/ctrl.h) per other node
 * and sends each an INIT (the communicator's kind and rendezvous: the shm group's name or the
 * NCCL unique id, and the model's shape, which the node checks against its own), then every KV
 * init and every step's batch before running its own ranks. A link thread keeps the links'
 * heartbeats and reports a lost node. */
typedef struct tpm_net tpm_net;

enum { TPM_COMM_SHM = 0, TPM_COMM_NCCL = 1 };

/* What INIT carries. On the wire: 'I' | u32 size, nnodes, vocab, dim, n_layer, n_head, n_kv_head,
 * ffn, comm | 32-char shm name | QV_COMM_NCCL_ID_BYTES NCCL id (zeros for shm), TPM_INIT_BYTES in
 * all, little-endian. */
typedef struct tpm_init {
  int32_t size, nnodes, vocab, dim, n_layer, n_head, n_kv_head, ffn;
  int32_t comm;                           /* TPM_COMM_* */
  char shm_name[33];                      /* 32 lowercase hex characters and a NUL */
  uint8_t nccl_id[QV_COMM_NCCL_ID_BYTES]; /* nccl: opaque, made by node 0 */
} tpm_init;
enum { TPM_INIT_WORDS = 9, TPM_INIT_BYTES = 1 + 4 * TPM_INIT_WORDS + 32 + QV_COMM_NCCL_ID_BYTES };
/* The INIT node 0 sends for cfg split over size ranks on nnodes nodes (rendezvous unset). */
void tpm_init_fill(const qv_model_config *cfg, int32_t size, int32_t nnodes, int32_t comm, tpm_init *out);
void tpm_init_encode(const tpm_init *in, uint8_t out[TPM_INIT_BYTES]);
/* Decodes an INIT payload into out and checks it against what this node expects (want: its own
 * shape and communicator kind): QV_EFORMAT for a payload of another length or a malformed
 * rendezvous, QV_EINVAL (naming the field) for another model, group shape or communicator kind. */
int tpm_init_decode(const uint8_t *p, size_t n, const tpm_init *want, tpm_init *out, qv_error *err);

/* Node 0: listen, accept, send INIT (in: the group's INIT, rendezvous set); other nodes: connect,
 * receive INIT and check it against in, whose rendezvous fields get node 0's. */
int tpm_net_open(const qv_tp_net_opts *o, tpm_init *in, tpm_net **out, qv_error *err);
int tpm_net_send_step(tpm_net *n, const qv_batch *b, qv_error *err);
int tpm_net_send_kv(tpm_net *n, int32_t n_blocks, int32_t block_size, qv_error *err);
/* Node 0 tells the other nodes to stop; every node closes its links. Accepts NULL. */
void tpm_net_close(tpm_net *n);

/* A step's batch on the wire: the decoded arrays point into buf (owned, grow-only). */
typedef struct tpm_batch_buf {
  qv_batch b;
  int32_t *buf;
  size_t cap; /* int32 elements */
} tpm_batch_buf;
/* Encodes b into out (grow-only); *n_bytes gets the payload size. */
int tpm_batch_encode(const qv_batch *b, uint8_t **out, size_t *cap, size_t *n_bytes);
/* Decodes and validates a payload (lengths consistent with the counts, counts within max_tok /
 * max_logits / max_blocks): QV_EFORMAT otherwise, nothing of it trusted. */
int tpm_batch_decode(const uint8_t *p, size_t n, int32_t max_tok, int32_t max_logits, tpm_batch_buf *out,
                     qv_error *err);

/* Inside a rank's forward (models/llama.c): the all-reduce after a row-parallel matmul, and the
 * vocab-parallel logits gathered into logits [n_logits][vocab_full] (NULL on ranks other than 0:
 * they take part in the gather and keep nothing). */
int tpm_all_reduce(qv_model *m, qv_tensor *t, qv_error *err);
int tpm_gather_logits(qv_model *m, const qv_tensor *lg, float *logits, qv_error *err);

/* ---- cuda ranks (models/model_tp_gpu.c: a CUDA build with NCCL; elsewhere every call returns
 * QV_EUNSUPPORTED and tpm_build refuses cuda ranks before reaching them) ---- */
/* Joins rank s->rank of the nccl group named by nccl_id on s->device, the collectives enqueued on
 * be's stream. Called on the rank's own thread (it also binds the thread to the device). */
int tpg_comm_create(tpm_shard *s, qv_backend *be, const uint8_t *nccl_id, qv_comm **out, qv_error *err);
/* The gather scratch s->d_send / s->d_recv on be for s->chunk rows. */
int tpg_gather_init(tpm_shard *s, qv_backend *be, qv_error *err);
/* The vocab-parallel logits of a cuda rank: lg (device F32 [n_logits][n_vocab]) packed into
 * vocab_pad rows, all-gathered on the device, and (logits not NULL) downloaded once per chunk
 * straight into logits [n_logits][vocab_full], each rank's columns at its vocabulary offset. */
int tpg_gather_logits(tpm_shard *s, qv_backend *be, const qv_tensor *lg, float *logits, qv_error *err);

#endif
