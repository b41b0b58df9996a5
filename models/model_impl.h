/* Internals shared by the model files: the qv_model struct, the weight source the loaders
 * hand to an architecture's builder, and the rotary table helper. Not a public header. */
#ifndef QV_MODEL_IMPL_H
#define QV_MODEL_IMPL_H

#include "models/model.h"

/* Where weights come from: a safetensors set or the synthetic generator of quiver-tiny.
 * get() finds a tensor by its Hugging Face name and checks its shape: rows x cols (rows == 1
 * for vectors). It returns a host pointer valid until the next get() call (or, when persistent,
 * until close), or NULL when the tensor is absent (*err untouched) or unusable (*err set,
 * returns NULL with err->code != 0). */
typedef struct model_weight_src {
  const void *(*get)(struct model_weight_src *src, const char *name, int64_t rows, int64_t cols, qv_dtype *dtype,
                     qv_error *err);
  void (*close)(struct model_weight_src *src); /* NULL when the owner closes ctx itself */
  /* Optional: the builder has copied bytes [p, p + n) of the tensor get() returned last (the
   * GGUF source drops those file pages, so loading never holds the weights twice). */
  void (*release)(struct model_weight_src *src, const void *p, size_t n);
  void *ctx;
  int persistent; /* get()'s pointers stay valid and unchanged until close (a read-only mapping):
                     the backend may use them in place (weight_view) and the model then keeps the
                     source open for its life */
  int max_dims; /* 0: 2-D and vectors only; else tensors up to this rank, seen as [prod][last] */
  int want_u8;  /* 1: only U8 tensors (MXFP4 blocks/scales), else only F32/F16/BF16 */
  int transient; /* set by get(): 1 when its pointer is scratch (a tensor-parallel column slice)
                    that must be copied even from a persistent source */
} model_weight_src;

/* One decoder layer of every family (models/llama.c runs them all); fields a family lacks keep
 * data NULL. */
typedef struct llama_layer {
  qv_tensor attn_norm;           /* [1][dim] */
  qv_tensor wq, wk, wv, wo;      /* [n_head*hd][dim], [n_kv*hd][dim] x2, [dim][n_head*hd] */
  qv_tensor bq, bk, bv, bo;      /* biases, data NULL when absent */
  qv_tensor q_norm, k_norm;      /* [1][hd] (Qwen3, Gemma 3), data NULL when absent */
  qv_tensor ffn_norm;            /* [1][dim] (Gemma: pre_feedforward_layernorm) */
  qv_tensor w_gate, w_up, w_down;/* [ffn][dim], [ffn][dim], [dim][ffn] */
  qv_tensor b_gate, b_up, b_down;/* mlp_bias, data NULL when absent */
  /* ---- families.c ---- */
  qv_tensor post_attn_norm, post_ffn_norm; /* [1][dim] Gemma's sandwich norms */
  qv_tensor sinks;               /* [1][n_head] F32, gpt-oss */
  qv_tensor router, router_b;    /* [E][dim], [1][E]: MoE layers */
  qv_experts e_gate, e_up, e_down;
} llama_layer;

struct qv_model {
  qv_model_config cfg;
  qv_backend *be;          /* borrowed */
  char *path;              /* owned; NULL for the embedded model */
  qv_tensor tok_emb;       /* [vocab][dim] */
  qv_tensor lm_head;       /* [vocab][dim]; shares tok_emb's data when tied */
  qv_tensor final_norm;    /* [1][dim] */
  llama_layer *layers;     /* [n_layer], owned */
  qv_tensor inv_freq;      /* [1][head_dim/2] F32 */
  qv_rope rope;
  int64_t n_params;
  int64_t weight_bytes;    /* bytes of the weights as the backend holds them (views included) */
  int32_t n_borrowed;      /* weights that are views of wsrc's memory */
  model_weight_src wsrc;   /* owned once n_borrowed > 0: the mapping those views read; closed
                              after every tensor is freed */
  int32_t max_tok, max_logits;
  int kv_ready;
  /* Activations, each allocated for max_tok rows (max_logits for sel/logits); a step uses
   * views of its first n_tokens rows. */
  qv_tensor x;             /* [max_tok][dim] residual stream */
  qv_tensor h;             /* [max_tok][dim] normed input of a sublayer */
  qv_tensor q, att;        /* [max_tok][n_head*hd] */
  qv_tensor k, v;          /* [max_tok][n_kv*hd] */
  qv_tensor o;             /* [max_tok][dim] sublayer output */
  qv_tensor g, u;          /* [max_tok][ffn] */
  qv_tensor sel;           /* [max_logits][dim] */
  qv_tensor logits;        /* [max_logits][vocab], always F32 */
  struct fam_state *fam;   /* families.c's state (local rope, MoE buffers); NULL for the Llama family */
  /* Tensor parallelism (models/model_tp.c). A group model has tp (owned: its ranks, threads and
   * communicator) and no weights of its own; a rank's model has shard (borrowed from its group):
   * its share, and the communicator its forward all-reduces through. Both NULL otherwise. */
  struct tpm_group *tp;
  struct tpm_shard *shard;
};

/* models/families.c: Gemma 2/3, Phi-3, Mixtral, Qwen3-MoE, gpt-oss: loading, and the pieces
 * of the forward pass only they have (the shared layer loop is qv_model_forward, llama.c). */
int families_build(const qv_model_config *cfg, model_weight_src *src, qv_backend *be, const qv_model_opts *opts,
                   qv_model **out, qv_error *err);
/* out = moe(h) for n tokens through layer L's router and experts. */
int families_moe(qv_model *m, const llama_layer *L, qv_tensor *out, const qv_tensor *h, int64_t n, qv_error *err);
/* The rope of layer l: Gemma 3's sliding layers have their own; NULL means the model's. */
const qv_rope *families_layer_rope(const qv_model *m, int32_t l);
void families_free(qv_model *m); /* the families' tensors in m->layers and m->fam */
int64_t families_n_params(const qv_model_config *cfg);

/* Loads tensor `name` [rows][cols] into *t: matrices stay in the file's dtype (quantized
 * blocks too) where the backend computes on it, zero-copy from a persistent source; vectors
 * are converted to the backend's weight dtype. Absent and not required: 0 with t->data NULL. */
int model_load_tensor(qv_model *m, model_weight_src *src, const char *name, int64_t rows, int64_t cols, int required,
                      qv_tensor *t, qv_error *err);

/* The pieces every builder shares (models/llama.c). model_new: the model struct with cfg, be,
 * the batch limits and zeroed layers (NULL when out of memory; free with qv_model_destroy).
 * model_rope_table: the rotary table of rc_cfg's theta and scaling over the model's rotary dims
 * into *t and *r. model_alloc_acts: the activation buffers x..sel and the F32 logits. */
qv_model *model_new(const qv_model_config *cfg, qv_backend *be, const qv_model_opts *opts);
int model_rope_table(qv_model *m, const qv_model_config *rc_cfg, qv_tensor *t, qv_rope *r, qv_error *err);
int model_alloc_acts(qv_model *m, qv_error *err);

/* Builds the model cfg describes from src on be: a family's builder, or with opts->tp_size > 1
 * the tensor-parallel group (model_tp.c). */
int model_build(const qv_model_config *cfg, model_weight_src *src, qv_backend *be, const qv_model_opts *opts,
                qv_model **out, qv_error *err);

/* What every forward checks first: token and logits counts within the model's limits, and (vocab
 * > 0) every token id in [0, vocab). */
int model_check_batch(const qv_model *m, const qv_batch *b, int32_t vocab, qv_error *err);

/* Builds a Llama-family model on be from cfg and weights; on failure frees what it made. */
int llama_build(const qv_model_config *cfg, model_weight_src *src, qv_backend *be, const qv_model_opts *opts,
                qv_model **out, qv_error *err);

/* GGUF models (models/model_gguf.c): loading through the Llama-family builder, and describe. */
int gguf_model_load(const char *path, qv_backend *be, const qv_model_opts *opts, qv_model **out, qv_error *err);
int gguf_model_describe(const char *path, qv_model_desc *out, qv_error *err);

/* The quiver-tiny configuration and its synthetic weight source (models/tiny.c). */
void tiny_config(qv_model_config *cfg);
int tiny_weight_src_init(model_weight_src *src);
void tiny_weight_src_deinit(model_weight_src *src);

/* Fills inv_freq[rot_dim/2] and *attn_factor from the config's rope_theta and rope_scaling,
 * as Hugging Face transformers computes them. */
void model_rope_inv_freq(const qv_model_config *cfg, int32_t rot_dim, float *inv_freq, float *attn_factor);

#endif
