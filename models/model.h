/* A loaded model: its configuration and weights on a backend, and the forward pass over a
 * qv_batch. Architecture families live one per file (llama.c: Llama, Mistral, Qwen2, Qwen3;
 * tiny.c: the embedded quiver-tiny); the engine only sees this interface. */
#ifndef QV_MODEL_H
#define QV_MODEL_H

#include <stdint.h>

#include "backend/backend.h"
#include "quiver/error.h"

#define QV_MAX_EOS 8
#define QV_TP_MAX_SIZE 64 /* tensor parallel ranks, QV_COMM_MAX_RANKS */

typedef enum qv_rope_scaling_type {
  QV_ROPE_SCALING_NONE = 0,
  QV_ROPE_SCALING_LINEAR,
  QV_ROPE_SCALING_DYNAMIC,
  QV_ROPE_SCALING_LLAMA3,
  QV_ROPE_SCALING_YARN,
  QV_ROPE_SCALING_LONGROPE,
} qv_rope_scaling_type;

/* Architecture families. LLAMA (0) runs models/llama.c; the others models/families.c. */
typedef enum qv_family {
  QV_FAMILY_LLAMA = 0, /* llama, mistral, qwen2, qwen3, quiver-tiny */
  QV_FAMILY_GEMMA2,
  QV_FAMILY_GEMMA3,    /* gemma3_text, and gemma3's text_config */
  QV_FAMILY_PHI3,
  QV_FAMILY_MIXTRAL,
  QV_FAMILY_QWEN3_MOE,
  QV_FAMILY_GPT_OSS,
} qv_family;

#define QV_MAX_LAYERS 1024
#define QV_MAX_ROPE_HALF 512
#define QV_LAYER_SLIDING 1 /* layer_flags: this layer attends through the sliding window */
#define QV_LAYER_MOE 2     /* layer_flags: this layer's MLP is the mixture of experts */

typedef struct qv_model_config {
  char arch[32];           /* "llama", "mistral", "qwen2", "qwen3", "quiver-tiny" */
  int32_t vocab_size;
  int32_t dim;             /* hidden_size */
  int32_t n_layer;
  int32_t n_head;
  int32_t n_kv_head;
  int32_t head_dim;
  int32_t ffn_dim;         /* intermediate_size */
  int32_t max_pos;         /* max_position_embeddings */
  float norm_eps;
  float rope_theta;
  qv_rope_scaling_type rope_scaling;
  float rope_factor;
  float rope_low_freq_factor, rope_high_freq_factor; /* llama3 */
  int32_t rope_orig_max_pos;                         /* llama3, yarn, dynamic */
  float yarn_beta_fast, yarn_beta_slow, yarn_mscale, yarn_mscale_all_dim;
  float yarn_attn_factor;                            /* explicit attention_factor, 0 if absent */
  int32_t yarn_no_truncate;                          /* yarn truncate=false (gpt-oss) */
  int32_t sliding_window;  /* 0: none */
  int32_t tie_embeddings;
  int32_t qkv_bias;        /* Qwen2, attention_bias */
  int32_t o_bias;          /* attention_bias also on o_proj (Llama's flag) */
  int32_t mlp_bias;
  int32_t qk_norm;         /* Qwen3 per-head q/k RMSNorm */
  int32_t rope_interleaved;/* 1: q/k rows in rotary pairs (2i, 2i+1), as llama.cpp's converter
                            * permutes Llama weights in GGUF files; 0: rotate-half (HF) */
  int32_t bos_id;          /* -1 if none */
  int32_t eos_ids[QV_MAX_EOS];
  int32_t n_eos;
  char weight_dtype[16];    /* dtype of the file's weights ("F32", "BF16", "F16", "mixed") */

  /* ---- families beyond Llama (models/families.c); all zero for the Llama family ---- */
  int32_t family;           /* qv_family */
  int32_t act;              /* qv_act_kind of the MLP */
  float swiglu_alpha, swiglu_limit;  /* gpt-oss */
  int32_t norm_plus_one;    /* Gemma: norms scale by (1 + w); folded into w at load in fp32 */
  int32_t sandwich_norm;    /* Gemma 2/3: post-attention, pre- and post-feedforward norms */
  float embed_scale;        /* 0: none; Gemma: sqrt(hidden_size) rounded to fp32 */
  float attn_scale;         /* 0: 1/sqrt(head_dim); Gemma: query_pre_attn_scalar^-1/2 */
  float attn_softcap;       /* Gemma 2; 0: none */
  float final_softcap;      /* Gemma 2 final_logit_softcapping; 0: none */
  float rope_local_theta;   /* Gemma 3: rope theta of sliding-window layers (unscaled); 0: none */
  int32_t rot_dim;          /* rotated dims per head (partial_rotary_factor); 0: head_dim */
  int32_t rope_long;        /* longrope: 1 when the long factors are in use */
  float rope_ext[QV_MAX_ROPE_HALF]; /* longrope: factors in use [rot_dim / 2] */
  float rope_ext_attn;      /* longrope attention factor (cos/sin scale) */
  int32_t attn_sinks;       /* gpt-oss: per-head sink logits */
  int32_t n_expert, n_expert_used, moe_ffn_dim;
  int32_t route_kind;       /* qv_route_kind */
  int32_t route_norm;       /* renormalise the selected weights (norm_topk_prob) */
  int32_t experts_mxfp4;    /* quantization_config quant_method mxfp4 (gpt-oss experts) */
  uint8_t layer_flags[QV_MAX_LAYERS]; /* QV_LAYER_* per layer */
} qv_model_config;

typedef struct qv_model qv_model;

/* A tensor-parallel group over several processes (nodes): on one host with cpu ranks (the shm
 * communicator), or on several machines with cuda ranks (the nccl communicator, its unique id
 * sent by node 0); node 0 runs the scheduler and sends every step to the others over the
 * control channel. */
typedef struct qv_tp_net_opts {
  int32_t nnodes;          /* processes in the group; tp_size % nnodes == 0 */
  int32_t node_rank;       /* 0: the master (HTTP and scheduler); else a worker */
  const char *master_addr; /* node 0 listens here, the others connect */
  int32_t master_port;
  const char *token;       /* shared secret (>= 16 bytes) that authenticates the control links */
  int32_t timeout_ms;      /* for the nodes to meet; 0: 120000 */
} qv_tp_net_opts;

typedef struct qv_model_opts {
  int32_t max_batch_tokens; /* most tokens one forward may carry (activation buffers sized for it) */
  int32_t max_logits;       /* most rows of logits one forward may return (0: max_batch_tokens) */
  int32_t dequantize;       /* GGUF: 1 dequantizes quantized weights to the backend's weight dtype
                             * at load (the exact reference path); 0 keeps them quantized where the
                             * backend can (also forced by env QUIVER_DEQUANTIZE=1) */
  int32_t tp_size;          /* tensor parallel ranks (0 or 1: none); > 1 shards a Llama-family model
                             * over that many ranks of be's kind: cpu ranks in this process, or cuda
                             * ranks with local rank i on CUDA device i (models/model_tp.h) */
  int32_t tp_force;         /* 1: build the rank group (communicator included) also at tp_size 1;
                             * tests compare TP 1 through the communicator with the plain model */
  int32_t n_threads;        /* CPU threads the ranks share (0: one per core); each rank gets
                             * n_threads / tp_size. Read only when tp_size > 1. */
  int32_t cpu_bf16_dot;     /* the ranks' backends get qv_backend_opts.cpu_bf16_dot. Read only when
                             * tp_size > 1 (otherwise the caller's backend decides). */
  const qv_tp_net_opts *tp_net;  /* NULL: every rank in this process */
  struct tpm_shard *shard;  /* internal: set by the tensor-parallel builder for one rank */
} qv_model_opts;

/* Loads a Hugging Face model directory (config.json, *.safetensors, generation_config.json)
 * or a GGUF model (a .gguf file, a directory holding one, the first of a split set) onto be;
 * path NULL or "quiver-tiny" gives the embedded model. The model borrows be, which
 * must outlive it. */
int qv_model_load(const char *path, qv_backend *be, const qv_model_opts *opts, qv_model **out,
                  qv_error *err);
void qv_model_destroy(qv_model *m);

/* Configuration; valid until qv_model_destroy. */
const qv_model_config *qv_model_get_config(const qv_model *m);
/* Parameters in the model (embedding counted once when tied). */
int64_t qv_model_n_params(const qv_model *m);
/* Bytes of KV cache one token takes on the model's backend (all layers, K and V). */
int64_t qv_model_kv_bytes_per_token(const qv_model *m);
/* Bytes of weights as placed on the backend. */
int64_t qv_model_weight_bytes(const qv_model *m);
/* The backend the model lives on (borrowed from the loader's caller). */
qv_backend *qv_model_backend(const qv_model *m);
/* Directory the model was loaded from (NULL for the embedded model). */
const char *qv_model_path(const qv_model *m);

/* Allocates the model's paged KV cache on its backend: n_blocks blocks of block_size tokens. */
int qv_model_kv_init(qv_model *m, int32_t n_blocks, int32_t block_size, qv_error *err);
/* Frees the KV cache (the fleet's sleep: the engine over it is gone); kv_init may follow. */
void qv_model_kv_deinit(qv_model *m);

/* Runs one step: writes the batch's K/V into the cache and returns the logits of the rows in
 * b->logits_idx as host floats, logits [b->n_logits][vocab_size] (caller's memory). A
 * sequence's logits do not depend on what else is in the batch. */
int qv_model_forward(qv_model *m, const qv_batch *b, float *logits, qv_error *err);


/* Tensor parallel ranks of m (1 without tensor parallelism). */
int32_t qv_model_tp_size(const qv_model *m);
/* Bytes of weights rank holds and bytes of KV cache one token takes on it; QV_EINVAL for a rank
 * outside 0..qv_model_tp_size(m)-1. */
int qv_model_tp_rank_bytes(const qv_model *m, int32_t rank, int64_t *weight_bytes, int64_t *kv_bytes_per_token);

/* Measured: bytes the process's anonymous resident memory grew by while rank's shard loaded (ranks
 * load one after another; RssAnon of /proc/self/status), or -1 (no tensor parallelism, another
 * node's rank, no /proc).
 * Weights copied at load (GGUF quantized, unaligned or converted tensors) count; zero-copy views
 * of a mapped safetensors file count only once touched. */
int64_t qv_model_tp_rank_rss(const qv_model *m, int32_t rank);

/* Where a tensor-parallel model's step time goes, on this process's first rank (the engine's
 * thread on node 0), accumulated since load: zeros without tensor parallelism. */
typedef struct qv_tp_stats {
  int64_t n_steps;       /* forwards */
  double step_s;         /* wall time of those forwards */
  int64_t n_collectives; /* all-reduces and logits gathers */
  double comm_s;         /* time inside them, waiting for slower ranks included */
} qv_tp_stats;
void qv_model_tp_stats(const qv_model *m, qv_tp_stats *out);

/* A worker node (tp_net->node_rank > 0): runs the steps node 0 sends until it says stop (0) or
 * the link is lost (QV_ECLOSED) or broken. */
int qv_model_tp_worker_run(qv_model *m, qv_error *err);
/* Node 0: fn(ud) is called once, from the link thread, when a worker node is lost (its link
 * closed or silent past the peer timeout); every later forward fails. */
int qv_model_tp_on_lost(qv_model *m, void (*fn)(void *ud), void *ud);

/* What `quiver info` reports, computed from config.json and the safetensors headers alone
 * (no weights are read or converted). */
typedef struct qv_model_desc {
  qv_model_config cfg;
  int64_t n_params;        /* parameters the architecture uses (embedding once when tied) */
  int64_t file_bytes;      /* bytes of tensor data in the safetensors files */
  int32_t n_file_tensors;
  /* GGUF files only (is_gguf): bytes and tensor count per qv_dtype, chat template present. */
  int32_t is_gguf;
  int32_t has_chat_template;
  int64_t type_bytes[QV_DTYPE_COUNT];
  int32_t type_count[QV_DTYPE_COUNT];
} qv_model_desc;

/* path NULL or "quiver-tiny": the embedded model. */
int qv_model_describe(const char *path, qv_model_desc *out, qv_error *err);
/* Parameters of a Llama-family architecture from its configuration. */
int64_t qv_model_config_n_params(const qv_model_config *cfg);

#endif
