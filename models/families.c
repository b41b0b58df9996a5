/* Decoder families beyond Llama, one configurable pre-norm decoder:
 *   Gemma 2 / Gemma 3: embeddings * sqrt(hidden), RMSNorm with (1 + w) (folded into w at load),
 *     norms before and after attention and MLP, GELU-tanh gated MLP, query_pre_attn_scalar,
 *     interleaved sliding-window and global layers (Gemma 3: own rope base for sliding layers,
 *     q/k norms; Gemma 2: attention and final-logit soft-capping).
 *   Phi-3: fused qkv_proj and gate_up_proj (split into q/k/v and gate/up at load: the same
 *     values), partial rotary, longrope.
 *   Mixtral, Qwen3-MoE, gpt-oss: a mixture-of-experts MLP (router -> moe_route -> expert-grouped
 *     matmuls -> moe_combine); gpt-oss adds q/k/v/o biases, attention sinks, alternating
 *     sliding/full layers, YaRN, its clamped SwiGLU and MXFP4 experts kept 4-bit.
 * The layer loop is the Llama family's (qv_model_forward in llama.c, which reads the flags the
 * configuration sets); this file loads the weights into the same llama_layer and adds the MoE
 * block and Gemma 3's local rope. Matrices load through model_load_tensor, as Llama's do (file
 * dtype kept, quantized GGUF blocks too); norms that need (1 + w), the fused Phi-3 matrices and
 * the experts are converted here. Ops a backend lacks are named at load. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/model_impl.h"

#define BE_CALL(m, call)                                                   \
  do {                                                                     \
    int rc_ = (call);                                                      \
    if (rc_) return qv_error_set(err, rc_, "%s", (m)->be->last_error.msg); \
  } while (0)

struct fam_state {
  qv_tensor inv_freq_local;     /* Gemma 3 sliding layers */
  qv_rope rope_local;
  qv_tensor rl;                 /* [max_tok][E] router logits */
  qv_tensor ids, wts;           /* [max_tok][k] I32 / F32 */
  qv_tensor eg, eu;             /* [max_tok*k][moe_ffn] */
  qv_tensor ey;                 /* [max_tok*k][dim] */
};

/* ---- loading ---- */

enum { LD_REQ = 1, LD_PLUS_ONE = 2, LD_F32 = 4 /* keep F32 on every backend (sinks) */ };

static int upload_host(qv_model *m, const void *data, qv_dtype dt, int64_t rows, int64_t cols, qv_dtype want,
                       qv_tensor *t, qv_error *err) {
  qv_backend *be = m->be;
  BE_CALL(m, be->ops->alloc(be, want, rows, cols, t));
  BE_CALL(m, be->ops->upload(be, t, data, dt));
  m->weight_bytes += rows * cols * (int64_t)qv_dtype_size(want);
  return 0;
}

/* Loads rows [row0, row0 + n) of tensor `name` (shape [rows][cols]); n == rows for all of it.
 * LD_PLUS_ONE: Gemma's (1 + w), computed in fp32 exactly as transformers does before the multiply. */
static int load_rows(qv_model *m, model_weight_src *src, const char *name, int64_t rows, int64_t cols, int64_t row0,
                     int64_t n, int flags, qv_tensor *t, qv_error *err) {
  qv_error e = {0};
  qv_dtype dt;
  const void *data = src->get(src, name, rows, cols, &dt, &e);
  if (!data) {
    if (e.code) return qv_error_set(err, e.code, "%s", e.msg);
    if (flags & LD_REQ)
      return qv_error_set(err, QV_ENOTFOUND, "missing tensor '%s' [%lld, %lld]", name, (long long)rows, (long long)cols);
    return 0;
  }
  const char *p = (const char *)data + (size_t)row0 * (size_t)cols * qv_dtype_size(dt);
  int rc;
  if (flags & LD_PLUS_ONE) {
    size_t cnt = (size_t)n * (size_t)cols;
    float *f = malloc(cnt * sizeof *f);
    if (!f) return qv_error_set(err, QV_ENOMEM, "out of memory");
    qv_convert_to_f32(f, p, dt, cnt);
    for (size_t i = 0; i < cnt; i++) f[i] = 1.0f + f[i];
    rc = upload_host(m, f, QV_DTYPE_F32, n, cols, m->be->ops->weight_dtype, t, err);
    free(f);
  } else {
    rc = upload_host(m, p, dt, n, cols, flags & LD_F32 ? QV_DTYPE_F32 : m->be->ops->weight_dtype, t, err);
  }
  if (!rc) m->n_params += n * cols;
  return rc;
}

static int load(qv_model *m, model_weight_src *src, const char *name, int64_t rows, int64_t cols, int flags,
                qv_tensor *t, qv_error *err) {
  if (!(flags & (LD_PLUS_ONE | LD_F32))) return model_load_tensor(m, src, name, rows, cols, flags & LD_REQ, t, err);
  return load_rows(m, src, name, rows, cols, 0, rows, flags, t, err);
}

/* Per-expert tensors (Mixtral w1/w3/w2, Qwen3-MoE gate/up/down_proj) stacked into one. */
static int load_experts_split(qv_model *m, model_weight_src *src, int32_t l, const char *fmt, int64_t rows,
                              int64_t cols, qv_experts *x, qv_error *err) {
  const qv_model_config *c = &m->cfg;
  qv_backend *be = m->be;
  qv_dtype wd = be->ops->weight_dtype;
  *x = (qv_experts){.n_expert = c->n_expert, .rows = rows, .cols = cols};
  BE_CALL(m, be->ops->alloc(be, wd, (int64_t)c->n_expert * rows, cols, &x->w));
  m->weight_bytes += (int64_t)c->n_expert * rows * cols * (int64_t)qv_dtype_size(wd);
  char name[160];
  for (int32_t e = 0; e < c->n_expert; e++) {
    snprintf(name, sizeof name, fmt, l, e);
    qv_error e2 = {0};
    qv_dtype dt;
    const void *data = src->get(src, name, rows, cols, &dt, &e2);
    if (!data) {
      if (e2.code) return qv_error_set(err, e2.code, "%s", e2.msg);
      return qv_error_set(err, QV_ENOTFOUND, "missing tensor '%s' [%lld, %lld]", name, (long long)rows, (long long)cols);
    }
    qv_tensor view = x->w;
    view.data = (char *)x->w.data + (size_t)e * (size_t)rows * (size_t)cols * qv_dtype_size(wd);
    view.rows = rows;
    BE_CALL(m, be->ops->upload(be, &view, data, dt));
    m->n_params += rows * cols;
  }
  return 0;
}

/* gpt-oss's fused gate_up ([E][2f] outputs interleaved gate, up, gate, up...) and down. Dense
 * checkpoints (as transformers saves them) are [E][in][out] and are transposed; MXFP4 ones are
 * blocks [E][out][in/32][16] + scales [E][out][in/32], kept as they are. `part` 0 takes gate
 * rows (even), 1 up rows (odd), -1 every row (down). */
static int load_experts_oss(qv_model *m, model_weight_src *src, int32_t l, const char *base, int64_t out_rows,
                            int64_t in_cols, int part, qv_experts *x, qv_error *err) {
  const qv_model_config *c = &m->cfg;
  int64_t E = c->n_expert, rows = part < 0 ? out_rows : out_rows / 2;
  *x = (qv_experts){.n_expert = (int32_t)E, .rows = rows, .cols = in_cols, .mxfp4 = c->experts_mxfp4};
  char name[160];
  qv_error e2 = {0};
  qv_dtype dt;
  int rc = 0;
  if (c->experts_mxfp4) {
    if (in_cols % 32)
      return qv_error_set(err, QV_EFORMAT, "%s: MXFP4 experts need a multiple of 32 inputs", base);
    int64_t nb = in_cols / 32;
    uint8_t *tmp = malloc((size_t)(E * rows * nb * 17));
    if (!tmp) return qv_error_set(err, QV_ENOMEM, "out of memory");
    uint8_t *tb = tmp, *ts = tmp + E * rows * nb * 16;
    src->max_dims = 4;
    src->want_u8 = 1;
    snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%s_blocks", l, base);
    const uint8_t *blk = src->get(src, name, E * out_rows * nb, 16, &dt, &e2);
    if (blk) {
      for (int64_t e = 0; e < E; e++)
        for (int64_t r = 0; r < rows; r++) {
          int64_t sr = part < 0 ? r : 2 * r + part;
          memcpy(tb + (e * rows + r) * nb * 16, blk + (e * out_rows + sr) * nb * 16, (size_t)nb * 16);
        }
      snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%s_scales", l, base);
      const uint8_t *sc = src->get(src, name, E * out_rows, nb, &dt, &e2);
      if (sc)
        for (int64_t e = 0; e < E; e++)
          for (int64_t r = 0; r < rows; r++) {
            int64_t sr = part < 0 ? r : 2 * r + part;
            memcpy(ts + (e * rows + r) * nb, sc + (e * out_rows + sr) * nb, (size_t)nb);
          }
      if (!sc && !e2.code)
        rc = qv_error_set(err, QV_ENOTFOUND, "missing tensor '%s' [%lld, %lld, %lld]", name, (long long)E,
                          (long long)out_rows, (long long)nb);
    } else if (!e2.code) {
      rc = qv_error_set(err, QV_ENOTFOUND, "missing tensor '%s' (quantization_config says mxfp4) [%lld, %lld, %lld, 16]",
                        name, (long long)E, (long long)out_rows, (long long)nb);
    }
    src->max_dims = 0;
    src->want_u8 = 0;
    if (!rc && e2.code) rc = qv_error_set(err, e2.code, "%s", e2.msg);
    if (!rc) rc = upload_host(m, tb, QV_DTYPE_U8, E * rows, in_cols / 2, QV_DTYPE_U8, &x->blocks, err);
    if (!rc) rc = upload_host(m, ts, QV_DTYPE_U8, E * rows, nb, QV_DTYPE_U8, &x->scales, err);
    free(tmp);
    if (rc) return rc;
    m->n_params += E * rows * in_cols;
  } else {
    snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%s", l, base);
    src->max_dims = 3;
    const void *data = src->get(src, name, E * in_cols, out_rows, &dt, &e2);
    src->max_dims = 0;
    if (!data) {
      if (e2.code) return qv_error_set(err, e2.code, "%s", e2.msg);
      return qv_error_set(err, QV_ENOTFOUND, "missing tensor '%s' [%lld, %lld, %lld] (or its MXFP4 _blocks with a "
                          "quantization_config)", name, (long long)E, (long long)in_cols, (long long)out_rows);
    }
    float *f = malloc((size_t)(E * in_cols * out_rows) * sizeof *f), *tr = malloc((size_t)(E * rows * in_cols) * sizeof *tr);
    if (!f || !tr) {
      free(f);
      free(tr);
      return qv_error_set(err, QV_ENOMEM, "out of memory");
    }
    qv_convert_to_f32(f, data, dt, (size_t)(E * in_cols * out_rows));
    for (int64_t e = 0; e < E; e++)
      for (int64_t r = 0; r < rows; r++) {
        int64_t sr = part < 0 ? r : 2 * r + part;
        for (int64_t i = 0; i < in_cols; i++) tr[(e * rows + r) * in_cols + i] = f[(e * in_cols + i) * out_rows + sr];
      }
    rc = upload_host(m, tr, QV_DTYPE_F32, E * rows, in_cols, m->be->ops->weight_dtype, &x->w, err);
    free(f);
    free(tr);
    if (rc) return rc;
    m->n_params += E * rows * in_cols;
  }
  /* Biases [E][out_rows], the same rows picked. */
  snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%s_bias", l, base);
  e2 = (qv_error){0};
  const void *bd = src->get(src, name, E, out_rows, &dt, &e2);
  if (!bd) {
    if (e2.code) return qv_error_set(err, e2.code, "%s", e2.msg);
    return qv_error_set(err, QV_ENOTFOUND, "missing tensor '%s' [%lld, %lld]", name, (long long)E, (long long)out_rows);
  }
  float *f = malloc((size_t)(E * out_rows) * sizeof *f), *b = malloc((size_t)(E * rows) * sizeof *b);
  if (!f || !b) {
    free(f);
    free(b);
    return qv_error_set(err, QV_ENOMEM, "out of memory");
  }
  qv_convert_to_f32(f, bd, dt, (size_t)(E * out_rows));
  for (int64_t e = 0; e < E; e++)
    for (int64_t r = 0; r < rows; r++) b[e * rows + r] = f[e * out_rows + (part < 0 ? r : 2 * r + part)];
  rc = upload_host(m, b, QV_DTYPE_F32, E, rows, QV_DTYPE_F32, &x->bias, err);
  free(f);
  free(b);
  if (!rc) m->n_params += E * rows;
  return rc;
}

static int load_layer(qv_model *m, model_weight_src *src, int32_t l, qv_error *err) {
  const qv_model_config *c = &m->cfg;
  llama_layer *L = &m->layers[l];
  int64_t qd = (int64_t)c->n_head * c->head_dim, kd = (int64_t)c->n_kv_head * c->head_dim, d = c->dim;
  int gem = c->norm_plus_one ? LD_PLUS_ONE : 0;
  char name[160];
  int rc;
#define NAME_(suffix) (snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix), name)
  if ((rc = load(m, src, NAME_("input_layernorm.weight"), 1, d, LD_REQ | gem, &L->attn_norm, err))) return rc;
  if (c->sandwich_norm) {
    if ((rc = load(m, src, NAME_("post_attention_layernorm.weight"), 1, d, LD_REQ | gem, &L->post_attn_norm, err)) ||
        (rc = load(m, src, NAME_("pre_feedforward_layernorm.weight"), 1, d, LD_REQ | gem, &L->ffn_norm, err)) ||
        (rc = load(m, src, NAME_("post_feedforward_layernorm.weight"), 1, d, LD_REQ | gem, &L->post_ffn_norm, err)))
      return rc;
  } else if ((rc = load(m, src, NAME_("post_attention_layernorm.weight"), 1, d, LD_REQ, &L->ffn_norm, err))) {
    return rc;
  }
  if (c->family == QV_FAMILY_PHI3) {
    const char *n = NAME_("self_attn.qkv_proj.weight");
    int64_t all = qd + 2 * kd;
    if ((rc = load_rows(m, src, n, all, d, 0, qd, LD_REQ, &L->wq, err)) ||
        (rc = load_rows(m, src, n, all, d, qd, kd, LD_REQ, &L->wk, err)) ||
        (rc = load_rows(m, src, n, all, d, qd + kd, kd, LD_REQ, &L->wv, err)))
      return rc;
  } else if ((rc = load(m, src, NAME_("self_attn.q_proj.weight"), qd, d, LD_REQ, &L->wq, err)) ||
             (rc = load(m, src, NAME_("self_attn.k_proj.weight"), kd, d, LD_REQ, &L->wk, err)) ||
             (rc = load(m, src, NAME_("self_attn.v_proj.weight"), kd, d, LD_REQ, &L->wv, err))) {
    return rc;
  }
  if ((rc = load(m, src, NAME_("self_attn.o_proj.weight"), d, qd, LD_REQ, &L->wo, err))) return rc;
  int qb = c->qkv_bias ? LD_REQ : 0, ob = c->o_bias ? LD_REQ : 0;
  if ((qb && ((rc = load(m, src, NAME_("self_attn.q_proj.bias"), 1, qd, qb, &L->bq, err)) ||
              (rc = load(m, src, NAME_("self_attn.k_proj.bias"), 1, kd, qb, &L->bk, err)) ||
              (rc = load(m, src, NAME_("self_attn.v_proj.bias"), 1, kd, qb, &L->bv, err)))) ||
      (ob && (rc = load(m, src, NAME_("self_attn.o_proj.bias"), 1, d, ob, &L->bo, err))))
    return rc;
  if (c->qk_norm && ((rc = load(m, src, NAME_("self_attn.q_norm.weight"), 1, c->head_dim, LD_REQ | gem, &L->q_norm, err)) ||
                     (rc = load(m, src, NAME_("self_attn.k_norm.weight"), 1, c->head_dim, LD_REQ | gem, &L->k_norm, err))))
    return rc;
  if (c->attn_sinks && (rc = load(m, src, NAME_("self_attn.sinks"), 1, c->n_head, LD_REQ | LD_F32, &L->sinks, err))) return rc;
  int64_t f = c->moe_ffn_dim, E = c->n_expert;
  if (!(c->layer_flags[l] & QV_LAYER_MOE)) {
    if (c->family == QV_FAMILY_PHI3) {
      const char *n = NAME_("mlp.gate_up_proj.weight");
      if ((rc = load_rows(m, src, n, 2 * c->ffn_dim, d, 0, c->ffn_dim, LD_REQ, &L->w_gate, err)) ||
          (rc = load_rows(m, src, n, 2 * c->ffn_dim, d, c->ffn_dim, c->ffn_dim, LD_REQ, &L->w_up, err)))
        return rc;
    } else if ((rc = load(m, src, NAME_("mlp.gate_proj.weight"), c->ffn_dim, d, LD_REQ, &L->w_gate, err)) ||
               (rc = load(m, src, NAME_("mlp.up_proj.weight"), c->ffn_dim, d, LD_REQ, &L->w_up, err))) {
      return rc;
    }
    return load(m, src, NAME_("mlp.down_proj.weight"), d, c->ffn_dim, LD_REQ, &L->w_down, err);
  }
  switch (c->family) {
  case QV_FAMILY_MIXTRAL:
    if ((rc = load(m, src, NAME_("block_sparse_moe.gate.weight"), E, d, LD_REQ, &L->router, err)) ||
        (rc = load_experts_split(m, src, l, "model.layers.%d.block_sparse_moe.experts.%d.w1.weight", f, d, &L->e_gate, err)) ||
        (rc = load_experts_split(m, src, l, "model.layers.%d.block_sparse_moe.experts.%d.w3.weight", f, d, &L->e_up, err)) ||
        (rc = load_experts_split(m, src, l, "model.layers.%d.block_sparse_moe.experts.%d.w2.weight", d, f, &L->e_down, err)))
      return rc;
    break;
  case QV_FAMILY_QWEN3_MOE:
    if ((rc = load(m, src, NAME_("mlp.gate.weight"), E, d, LD_REQ, &L->router, err)) ||
        (rc = load_experts_split(m, src, l, "model.layers.%d.mlp.experts.%d.gate_proj.weight", f, d, &L->e_gate, err)) ||
        (rc = load_experts_split(m, src, l, "model.layers.%d.mlp.experts.%d.up_proj.weight", f, d, &L->e_up, err)) ||
        (rc = load_experts_split(m, src, l, "model.layers.%d.mlp.experts.%d.down_proj.weight", d, f, &L->e_down, err)))
      return rc;
    break;
  case QV_FAMILY_GPT_OSS: {
    if ((rc = load(m, src, NAME_("mlp.router.weight"), E, d, LD_REQ, &L->router, err)) ||
        (rc = load(m, src, NAME_("mlp.router.bias"), 1, E, LD_REQ, &L->router_b, err)) ||
        (rc = load_experts_oss(m, src, l, "gate_up_proj", 2 * f, d, 0, &L->e_gate, err)) ||
        (rc = load_experts_oss(m, src, l, "gate_up_proj", 2 * f, d, 1, &L->e_up, err)) ||
        (rc = load_experts_oss(m, src, l, "down_proj", d, f, -1, &L->e_down, err)))
      return rc;
    break;
  }
  default:
    return qv_error_set(err, QV_EINVAL, "layer %d: MoE in a dense family", l);
  }
#undef NAME_
  return 0;
}

static int alloc_act(qv_model *m, qv_dtype dt, int64_t rows, int64_t cols, qv_tensor *t, qv_error *err) {
  BE_CALL(m, m->be->ops->alloc(m->be, dt, rows, cols, t));
  return 0;
}

/* The ops this configuration needs beyond the Llama set, checked before anything is loaded. */
static int check_ops(const qv_model_config *c, const qv_backend_ops *ops, qv_error *err) {
  const char *missing = NULL;
  int moe = 0;
  for (int32_t l = 0; l < c->n_layer; l++) moe |= c->layer_flags[l] & QV_LAYER_MOE;
  if (c->embed_scale && !ops->scale) missing = "scale";
  if (c->act != QV_ACT_SILU && !ops->gated_act) missing = "gated_act";
  if (moe && (!ops->moe_route || !ops->moe_matmul || !ops->moe_combine || !ops->gated_act)) missing = "moe_route/moe_matmul/moe_combine";
  if (missing)
    return qv_error_set(err, QV_EUNSUPPORTED, "%s models need the backend op %s, which the %s backend does not "
                        "implement yet", c->arch, missing, ops->name);
  return 0;
}

/* Gemma 3's multimodal checkpoints keep the text model under another prefix: a weight source
 * that maps "model.X" to "<prefix>X" over the real one. */
typedef struct prefix_src {
  model_weight_src *inner;
  const char *prefix;
} prefix_src;

static const void *prefix_get(model_weight_src *src, const char *name, int64_t rows, int64_t cols, qv_dtype *dtype,
                              qv_error *err) {
  prefix_src *p = src->ctx;
  char mapped[256];
  if (!strncmp(name, "model.", 6)) {
    snprintf(mapped, sizeof mapped, "%s%s", p->prefix, name + 6);
    name = mapped;
  }
  p->inner->max_dims = src->max_dims;
  p->inner->want_u8 = src->want_u8;
  return p->inner->get(p->inner, name, rows, cols, dtype, err);
}

static int families_build_from(const qv_model_config *cfg, model_weight_src *src, qv_backend *be,
                               const qv_model_opts *opts, qv_model **out, qv_error *err);

int families_build(const qv_model_config *cfg, model_weight_src *src, qv_backend *be, const qv_model_opts *opts,
                   qv_model **out, qv_error *err) {
  *out = NULL;
  int rc = check_ops(cfg, be->ops, err);
  if (rc) return rc;
  if (cfg->family == QV_FAMILY_GEMMA3) {
    static const char *const prefixes[] = {"model.language_model.", "language_model.model."};
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++) {
      char probe[96];
      qv_error e = {0};
      qv_dtype dt;
      snprintf(probe, sizeof probe, "%sembed_tokens.weight", prefixes[i]);
      if (src->get(src, "model.embed_tokens.weight", cfg->vocab_size, cfg->dim, &dt, &e) || e.code) break;
      e = (qv_error){0};
      if (src->get(src, probe, cfg->vocab_size, cfg->dim, &dt, &e) || e.code) {
        prefix_src ps = {src, prefixes[i]};
        model_weight_src wrapped = {.get = prefix_get, .ctx = &ps};
        return families_build_from(cfg, &wrapped, be, opts, out, err);
      }
    }
  }
  return families_build_from(cfg, src, be, opts, out, err);
}

static int families_build_from(const qv_model_config *cfg, model_weight_src *src, qv_backend *be,
                               const qv_model_opts *opts, qv_model **out, qv_error *err) {
  int rc;
  qv_model *m = model_new(cfg, be, opts);
  if (!m) return qv_error_set(err, QV_ENOMEM, "out of memory");
  const qv_model_config *c = &m->cfg;
  if (!(m->fam = calloc(1, sizeof *m->fam))) {
    rc = qv_error_set(err, QV_ENOMEM, "out of memory");
    goto fail;
  }
  struct fam_state *F = m->fam;
  if ((rc = load(m, src, "model.embed_tokens.weight", c->vocab_size, c->dim, LD_REQ, &m->tok_emb, err))) goto fail;
  for (int32_t l = 0; l < c->n_layer; l++)
    if ((rc = load_layer(m, src, l, err))) goto fail;
  if ((rc = load(m, src, "model.norm.weight", 1, c->dim, LD_REQ | (c->norm_plus_one ? LD_PLUS_ONE : 0), &m->final_norm,
                 err)))
    goto fail;
  if (c->tie_embeddings) m->lm_head = m->tok_emb;
  else if ((rc = load(m, src, "lm_head.weight", c->vocab_size, c->dim, LD_REQ, &m->lm_head, err))) goto fail;
  if ((rc = model_rope_table(m, c, &m->inv_freq, &m->rope, err))) goto fail;
  if (c->rope_local_theta > 0) {
    /* Gemma 3's sliding layers: their own base, never scaled. */
    qv_model_config lc = *c;
    lc.rope_theta = c->rope_local_theta;
    lc.rope_scaling = QV_ROPE_SCALING_NONE;
    if ((rc = model_rope_table(m, &lc, &F->inv_freq_local, &F->rope_local, err))) goto fail;
  }
  if ((rc = model_alloc_acts(m, err))) goto fail;
  qv_dtype ad = be->ops->act_dtype;
  int64_t T = m->max_tok;
  if (c->n_expert) {
    int64_t k = c->n_expert_used;
    if ((rc = alloc_act(m, QV_DTYPE_F32, T, c->n_expert, &F->rl, err)) ||
        (rc = alloc_act(m, QV_DTYPE_I32, T, k, &F->ids, err)) || (rc = alloc_act(m, QV_DTYPE_F32, T, k, &F->wts, err)) ||
        (rc = alloc_act(m, ad, T * k, c->moe_ffn_dim, &F->eg, err)) ||
        (rc = alloc_act(m, ad, T * k, c->moe_ffn_dim, &F->eu, err)) ||
        (rc = alloc_act(m, ad, T * k, c->dim, &F->ey, err)))
      goto fail;
  }
  *out = m;
  return 0;
fail:
  qv_model_destroy(m);
  return rc;
}

static void free_experts(qv_backend *be, qv_experts *x) {
  be->ops->free(be, &x->w);
  be->ops->free(be, &x->blocks);
  be->ops->free(be, &x->scales);
  be->ops->free(be, &x->bias);
}

void families_free(qv_model *m) {
  struct fam_state *F = m->fam;
  if (!F) return;
  qv_backend *be = m->be;
  for (int32_t l = 0; m->layers && l < m->cfg.n_layer; l++) {
    llama_layer *L = &m->layers[l];
    free_experts(be, &L->e_gate);
    free_experts(be, &L->e_up);
    free_experts(be, &L->e_down);
  }
  qv_tensor *ts[] = {&F->inv_freq_local, &F->rl, &F->ids, &F->wts, &F->eg, &F->eu, &F->ey};
  for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) be->ops->free(be, ts[i]);
  free(F);
  m->fam = NULL;
}

int64_t families_n_params(const qv_model_config *c) {
  int64_t qd = (int64_t)c->n_head * c->head_dim, kd = (int64_t)c->n_kv_head * c->head_dim, d = c->dim;
  int64_t total = (int64_t)c->vocab_size * d * (c->tie_embeddings ? 1 : 2) + d;
  for (int32_t l = 0; l < c->n_layer; l++) {
    int64_t p = d * qd + 2 * d * kd + qd * d + (c->sandwich_norm ? 4 : 2) * d;
    if (c->qkv_bias) p += qd + 2 * kd;
    if (c->o_bias) p += d;
    if (c->qk_norm) p += 2 * (int64_t)c->head_dim;
    if (c->attn_sinks) p += c->n_head;
    if (c->layer_flags[l] & QV_LAYER_MOE) {
      int64_t E = c->n_expert, f = c->moe_ffn_dim;
      p += E * d + E * 3 * d * f;
      if (c->family == QV_FAMILY_GPT_OSS) p += E + E * (2 * f + d);
    } else {
      p += 3 * d * (int64_t)c->ffn_dim;
    }
    total += p;
  }
  return total;
}

/* ---- forward pieces (the layer loop is qv_model_forward, llama.c) ---- */

static qv_tensor rows_of(const qv_tensor *t, int64_t rows) {
  qv_tensor v = *t;
  v.rows = rows;
  return v;
}

static const qv_tensor *opt(const qv_tensor *t) { return t->data ? t : NULL; }

const qv_rope *families_layer_rope(const qv_model *m, int32_t l) {
  return m->fam->inv_freq_local.data && (m->cfg.layer_flags[l] & QV_LAYER_SLIDING) ? &m->fam->rope_local : NULL;
}

int families_moe(qv_model *m, const llama_layer *L, qv_tensor *out, const qv_tensor *h, int64_t n, qv_error *err) {
  const qv_model_config *c = &m->cfg;
  const qv_backend_ops *ops = m->be->ops;
  qv_backend *be = m->be;
  struct fam_state *F = m->fam;
  int64_t k = c->n_expert_used;
  qv_tensor rl = rows_of(&F->rl, n), ids = rows_of(&F->ids, n), wts = rows_of(&F->wts, n);
  qv_tensor eg = rows_of(&F->eg, n * k), eu = rows_of(&F->eu, n * k), ey = rows_of(&F->ey, n * k);
  qv_moe_route r = {.kind = (qv_route_kind)c->route_kind, .n_expert = c->n_expert, .k = (int32_t)k,
                    .normalize = c->route_norm};
  qv_act act = {.kind = (qv_act_kind)c->act, .alpha = c->swiglu_alpha, .limit = c->swiglu_limit};
  BE_CALL(m, ops->matmul(be, &rl, h, &L->router, opt(&L->router_b)));
  BE_CALL(m, ops->moe_route(be, &rl, &r, &ids, &wts));
  BE_CALL(m, ops->moe_matmul(be, &eg, h, &L->e_gate, &ids));
  BE_CALL(m, ops->moe_matmul(be, &eu, h, &L->e_up, &ids));
  BE_CALL(m, ops->gated_act(be, &eg, &eg, &eu, &act));
  BE_CALL(m, ops->moe_matmul(be, &ey, &eg, &L->e_down, &ids));
  BE_CALL(m, ops->moe_combine(be, out, &ey, &wts));
  return 0;
}
