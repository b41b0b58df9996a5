/* The Llama family: Llama 2/3, Mistral (sliding window), Qwen2 (q/k/v bias), Qwen3 (per-head
 * q/k RMSNorm), and the embedded quiver-tiny (a Llama with synthetic weights); and the one
 * decoder layer loop every family runs (families.c loads the others and adds their pieces).
 *
 * Pre-norm decoder: x = embed(ids) [* embed_scale]; per layer h = norm(x); a = o(attn(rope(q(h)),
 * rope(k(h)), v(h))) [; a = post_norm(a)]; x += a; h = norm(x); f = down(act(gate(h)) * up(h)) or
 * moe(h) [; f = post_ffn_norm(f)]; x += f; logits = lm_head(norm(x)) for the rows asked for
 * [, soft-capped]. Written only against the backend interface. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/model_impl.h"
#include "models/model_tp.h"

#define BE_CALL(m, call)                                                   \
  do {                                                                     \
    int rc_ = (call);                                                      \
    if (rc_) return qv_error_set(err, rc_, "%s", (m)->be->last_error.msg); \
  } while (0)

int model_load_tensor(qv_model *m, model_weight_src *src, const char *name, int64_t rows, int64_t cols, int required,
                      qv_tensor *t, qv_error *err) {
  qv_error e = {0};
  qv_dtype dt;
  const void *data = src->get(src, name, rows, cols, &dt, &e);
  if (!data) {
    if (e.code) return qv_error_set(err, e.code, "%s", e.msg);
    if (required) return qv_error_set(err, QV_ENOTFOUND, "missing tensor '%s' [%lld, %lld]", name, (long long)rows, (long long)cols);
    return 0;
  }
  qv_backend *be = m->be;
  /* Quantized blocks stay quantized: a source only hands them to a backend that keeps them.
   * Other matrices (matmul weights, embedding tables) stay in the file's dtype on a backend that
   * can compute on them (one with weight_view), in place when the source's memory persists (the
   * mapped safetensors: zero-copy), else copied unchanged. Vectors (norms, biases) are small
   * and always converted to the backend's weight dtype. */
  int quant = qv_dtype_is_quant(dt);
  int keep = rows > 1 && be->ops->weight_view != NULL;
  if (!quant && keep && src->persistent && !src->transient && be->ops->weight_view(be, data, dt, rows, cols, t) == 0) {
    m->n_borrowed++;
  } else {
    qv_dtype wdt = quant || keep ? dt : be->ops->weight_dtype;
    BE_CALL(m, be->ops->alloc(be, wdt, rows, cols, t));
    if (!src->release) {
      BE_CALL(m, be->ops->upload(be, t, data, dt));
    } else {
      /* Row chunks of at most 16 MiB of source, each released once copied: peak memory is the
       * resident weights plus one chunk, not plus the largest tensor. */
      size_t src_rb = qv_dtype_row_bytes(dt, cols), dst_rb = qv_dtype_row_bytes(wdt, cols);
      int64_t step = src_rb ? (int64_t)(((size_t)16 << 20) / src_rb) : rows;
      if (step < 1) step = 1;
      for (int64_t r0 = 0; r0 < rows; r0 += step) {
        int64_t nr = rows - r0 < step ? rows - r0 : step;
        qv_tensor part = *t;
        part.data = (char *)t->data + (size_t)r0 * dst_rb;
        part.rows = nr;
        const char *from = (const char *)data + (size_t)r0 * src_rb;
        BE_CALL(m, be->ops->upload(be, &part, from, dt));
        src->release(src, from, (size_t)nr * src_rb);
      }
    }
  }
  m->n_params += rows * cols;
  m->weight_bytes += rows * (int64_t)qv_dtype_row_bytes(t->dtype, cols);
  return 0;
}

static int load_layer(qv_model *m, model_weight_src *src, int32_t l, qv_error *err) {
  const qv_model_config *c = &m->cfg;
  llama_layer *L = &m->layers[l];
  int64_t qd = (int64_t)c->n_head * c->head_dim, kd = (int64_t)c->n_kv_head * c->head_dim;
  char name[128];
  int rc;
#define LOAD_(field, suffix, rows, cols, req)                                       \
  snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix);                     \
  if ((rc = model_load_tensor(m, src, name, rows, cols, req, &L->field, err))) return rc;
  LOAD_(attn_norm, "input_layernorm.weight", 1, c->dim, 1)
  LOAD_(wq, "self_attn.q_proj.weight", qd, c->dim, 1)
  LOAD_(wk, "self_attn.k_proj.weight", kd, c->dim, 1)
  LOAD_(wv, "self_attn.v_proj.weight", kd, c->dim, 1)
  LOAD_(wo, "self_attn.o_proj.weight", c->dim, qd, 1)
  LOAD_(bq, "self_attn.q_proj.bias", 1, qd, c->qkv_bias)
  LOAD_(bk, "self_attn.k_proj.bias", 1, kd, c->qkv_bias)
  LOAD_(bv, "self_attn.v_proj.bias", 1, kd, c->qkv_bias)
  /* A tensor-parallel rank other than 0 holds no o/down bias: rank 0 adds it once. */
  int bias_here = !m->shard || m->shard->rank == 0;
  LOAD_(bo, "self_attn.o_proj.bias", 1, c->dim, c->o_bias && bias_here)
  LOAD_(q_norm, "self_attn.q_norm.weight", 1, c->head_dim, c->qk_norm)
  LOAD_(k_norm, "self_attn.k_norm.weight", 1, c->head_dim, c->qk_norm)
  LOAD_(ffn_norm, "post_attention_layernorm.weight", 1, c->dim, 1)
  LOAD_(w_gate, "mlp.gate_proj.weight", c->ffn_dim, c->dim, 1)
  LOAD_(w_up, "mlp.up_proj.weight", c->ffn_dim, c->dim, 1)
  LOAD_(w_down, "mlp.down_proj.weight", c->dim, c->ffn_dim, 1)
  LOAD_(b_gate, "mlp.gate_proj.bias", 1, c->ffn_dim, c->mlp_bias)
  LOAD_(b_up, "mlp.up_proj.bias", 1, c->ffn_dim, c->mlp_bias)
  LOAD_(b_down, "mlp.down_proj.bias", 1, c->dim, c->mlp_bias && bias_here)
#undef LOAD_
  return 0;
}

static int alloc_act(qv_model *m, int64_t rows, int64_t cols, qv_tensor *t, qv_error *err) {
  BE_CALL(m, m->be->ops->alloc(m->be, m->be->ops->act_dtype, rows, cols, t));
  return 0;
}

qv_model *model_new(const qv_model_config *cfg, qv_backend *be, const qv_model_opts *opts) {
  qv_model *m = calloc(1, sizeof *m);
  if (!m) return NULL;
  m->cfg = *cfg;
  m->be = be;
  m->shard = opts->shard;
  m->max_tok = opts->max_batch_tokens;
  m->max_logits = opts->max_logits > 0 ? opts->max_logits : opts->max_batch_tokens;
  m->layers = calloc((size_t)cfg->n_layer, sizeof *m->layers);
  if (!m->layers) {
    free(m);
    return NULL;
  }
  return m;
}

int model_rope_table(qv_model *m, const qv_model_config *rc_cfg, qv_tensor *t, qv_rope *r, qv_error *err) {
  const qv_model_config *c = &m->cfg;
  int32_t rot = c->rot_dim > 0 ? c->rot_dim : c->head_dim, half = rot / 2;
  float *inv = malloc((size_t)half * sizeof *inv);
  if (!inv) return qv_error_set(err, QV_ENOMEM, "out of memory");
  float af;
  model_rope_inv_freq(rc_cfg, rot, inv, &af);
  int rc = m->be->ops->alloc(m->be, QV_DTYPE_F32, 1, half, t);
  if (!rc) rc = m->be->ops->upload(m->be, t, inv, QV_DTYPE_F32);
  free(inv);
  if (rc) return qv_error_set(err, rc, "%s", m->be->last_error.msg);
  *r = (qv_rope){.head_dim = c->head_dim, .rot_dim = rot, .neox = !c->rope_interleaved, .attn_factor = af, .inv_freq = t};
  return 0;
}

int model_alloc_acts(qv_model *m, qv_error *err) {
  const qv_model_config *c = &m->cfg;
  int64_t qd = (int64_t)c->n_head * c->head_dim, kd = (int64_t)c->n_kv_head * c->head_dim, T = m->max_tok;
  int rc;
  if ((rc = alloc_act(m, T, c->dim, &m->x, err)) || (rc = alloc_act(m, T, c->dim, &m->h, err)) ||
      (rc = alloc_act(m, T, qd, &m->q, err)) || (rc = alloc_act(m, T, qd, &m->att, err)) ||
      (rc = alloc_act(m, T, kd, &m->k, err)) || (rc = alloc_act(m, T, kd, &m->v, err)) ||
      (rc = alloc_act(m, T, c->dim, &m->o, err)) || (rc = alloc_act(m, T, c->ffn_dim, &m->g, err)) ||
      (rc = alloc_act(m, T, c->ffn_dim, &m->u, err)) || (rc = alloc_act(m, m->max_logits, c->dim, &m->sel, err)))
    return rc;
  /* Logits stay F32 on every backend: two candidates closer than a bf16 step must not tie. */
  BE_CALL(m, m->be->ops->alloc(m->be, QV_DTYPE_F32, m->max_logits, c->vocab_size, &m->logits));
  return 0;
}

int llama_build(const qv_model_config *cfg, model_weight_src *src, qv_backend *be, const qv_model_opts *opts,
                qv_model **out, qv_error *err) {
  *out = NULL;
  qv_model *m = model_new(cfg, be, opts);
  if (!m) return qv_error_set(err, QV_ENOMEM, "out of memory");
  const qv_model_config *c = &m->cfg;
  int rc = 0;
  if ((rc = model_load_tensor(m, src, "model.embed_tokens.weight", c->vocab_size, c->dim, 1, &m->tok_emb, err))) goto fail;
  for (int32_t l = 0; l < c->n_layer; l++)
    if ((rc = load_layer(m, src, l, err))) goto fail;
  if ((rc = model_load_tensor(m, src, "model.norm.weight", 1, c->dim, 1, &m->final_norm, err))) goto fail;
  /* Mistral's window covers every layer (the layer loop reads the per-layer flags). */
  for (int32_t l = 0; l < c->n_layer && c->sliding_window; l++) m->cfg.layer_flags[l] |= QV_LAYER_SLIDING;
  if (c->tie_embeddings) {
    m->lm_head = m->tok_emb;
  } else if ((rc = model_load_tensor(m, src, "lm_head.weight", c->vocab_size, c->dim, 1, &m->lm_head, err))) {
    goto fail;
  }
  if ((rc = model_rope_table(m, c, &m->inv_freq, &m->rope, err)) || (rc = model_alloc_acts(m, err))) goto fail;
  *out = m;
  return 0;
fail:
  qv_model_destroy(m);
  return rc;
}

void qv_model_destroy(qv_model *m) {
  if (!m) return;
  if (m->tp) {
    /* A group model: its ranks hold every tensor (and views of wsrc's mapping). */
    tpm_free(m);
    if (m->wsrc.close) m->wsrc.close(&m->wsrc);
    free(m->path);
    free(m);
    return;
  }
  qv_backend *be = m->be;
  families_free(m);
  if (m->kv_ready) be->ops->kv_deinit(be);
  qv_tensor *acts[] = {&m->x, &m->h, &m->q, &m->att, &m->k, &m->v, &m->o, &m->g, &m->u, &m->sel, &m->logits,
                       &m->inv_freq, &m->final_norm};
  for (size_t i = 0; i < sizeof acts / sizeof acts[0]; i++) be->ops->free(be, acts[i]);
  if (m->lm_head.data != m->tok_emb.data) be->ops->free(be, &m->lm_head);
  be->ops->free(be, &m->tok_emb);
  if (m->layers) {
    for (int32_t l = 0; l < m->cfg.n_layer; l++) {
      llama_layer *L = &m->layers[l];
      qv_tensor *ts[] = {&L->attn_norm, &L->wq, &L->wk, &L->wv, &L->wo, &L->bq, &L->bk, &L->bv, &L->bo,
                         &L->q_norm, &L->k_norm, &L->ffn_norm, &L->w_gate, &L->w_up, &L->w_down, &L->b_gate,
                         &L->b_up, &L->b_down, &L->post_attn_norm, &L->post_ffn_norm, &L->sinks, &L->router,
                         &L->router_b};
      for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) be->ops->free(be, ts[i]);
    }
  }
  free(m->layers);
  if (m->wsrc.close) m->wsrc.close(&m->wsrc);
  free(m->path);
  free(m);
}

/* The first rows of an activation buffer, as a tensor of rows x t->cols. */
static qv_tensor rows_of(const qv_tensor *t, int64_t rows) {
  qv_tensor v = *t;
  v.rows = rows;
  return v;
}

/* The same memory seen as [rows*cols/group][group] (per-head views). */
static qv_tensor regroup(const qv_tensor *t, int64_t group) {
  qv_tensor v = *t;
  v.rows = t->rows * t->cols / group;
  v.cols = group;
  return v;
}

static const qv_tensor *opt(const qv_tensor *t) { return t->data ? t : NULL; }

/* A tensor-parallel rank sums a row-parallel result over the group (no-op without TP). */
#define TP_REDUCE(t)                                      \
  do {                                                    \
    if (m->shard) {                                       \
      int rc_ = tpm_all_reduce(m, (t), err);              \
      if (rc_) return rc_;                                \
    }                                                     \
  } while (0)

int qv_model_forward(qv_model *m, const qv_batch *b, float *logits, qv_error *err) {
  const qv_model_config *c = &m->cfg;
  const qv_backend_ops *ops = m->be->ops;
  qv_backend *be = m->be;
  if (m->tp) return tpm_forward(m, b, logits, err);
  if (!m->kv_ready) return qv_error_set(err, QV_ESTATE, "forward: KV cache not allocated");
  /* A rank's vocabulary is its shard: the group checked the ids against the full one. */
  int rc_chk = model_check_batch(m, b, m->shard ? 0 : c->vocab_size, err);
  if (rc_chk) return rc_chk;
  BE_CALL(m, ops->set_batch(be, b));
  int64_t n = b->n_tokens;
  qv_tensor x = rows_of(&m->x, n), h = rows_of(&m->h, n), q = rows_of(&m->q, n), att = rows_of(&m->att, n);
  qv_tensor k = rows_of(&m->k, n), v = rows_of(&m->v, n), o = rows_of(&m->o, n);
  qv_tensor g = rows_of(&m->g, n), u = rows_of(&m->u, n);
  qv_act act = {.kind = (qv_act_kind)c->act, .alpha = c->swiglu_alpha, .limit = c->swiglu_limit};
  if (m->shard) {
    /* Vocab-parallel: each rank embeds the ids in its rows (zeros elsewhere); the sum is exact. */
    BE_CALL(m, ops->embed_shard(be, &x, &m->tok_emb, m->shard->vocab0));
    TP_REDUCE(&x);
  } else {
    BE_CALL(m, ops->embed(be, &x, &m->tok_emb));
  }
  if (c->embed_scale) {
    /* transformers casts the normalizer to the embedding's dtype before multiplying: bf16 on a
     * bf16 backend (sqrt(640) = 25.298 becomes 25.25), exact fp32 on the CPU. */
    float es = c->embed_scale;
    if (ops->weight_dtype == QV_DTYPE_BF16) es = qv_bf16_to_f32(qv_f32_to_bf16(es));
    else if (ops->weight_dtype == QV_DTYPE_F16) es = qv_f16_to_f32(qv_f32_to_f16(es));
    BE_CALL(m, ops->scale(be, &x, es));
  }
  for (int32_t l = 0; l < c->n_layer; l++) {
    const llama_layer *L = &m->layers[l];
    int sliding = c->layer_flags[l] & QV_LAYER_SLIDING;
    qv_attn_params ap = {.layer = l, .n_head = c->n_head, .n_kv_head = c->n_kv_head, .head_dim = c->head_dim,
                         .scale = c->attn_scale > 0 ? c->attn_scale : 1.0f / sqrtf((float)c->head_dim),
                         .sliding_window = sliding ? c->sliding_window : 0, .softcap = c->attn_softcap,
                         .sinks = opt(&L->sinks)};
    /* The residual add of the previous layer's MLP is fused into this layer's first norm. */
    if (l == 0) BE_CALL(m, ops->rmsnorm(be, &h, &x, &L->attn_norm, c->norm_eps));
    else BE_CALL(m, ops->add_rmsnorm(be, &h, &x, &o, &L->attn_norm, c->norm_eps));
    BE_CALL(m, ops->matmul(be, &q, &h, &L->wq, opt(&L->bq)));
    BE_CALL(m, ops->matmul(be, &k, &h, &L->wk, opt(&L->bk)));
    BE_CALL(m, ops->matmul(be, &v, &h, &L->wv, opt(&L->bv)));
    if (c->qk_norm) {
      qv_tensor qh = regroup(&q, c->head_dim), kh = regroup(&k, c->head_dim);
      BE_CALL(m, ops->rmsnorm(be, &qh, &qh, &L->q_norm, c->norm_eps));
      BE_CALL(m, ops->rmsnorm(be, &kh, &kh, &L->k_norm, c->norm_eps));
    }
    const qv_rope *rope = sliding && m->fam ? families_layer_rope(m, l) : NULL;
    BE_CALL(m, ops->rope(be, &q, c->n_head, &k, c->n_kv_head, rope ? rope : &m->rope));
    BE_CALL(m, ops->kv_write(be, l, &k, &v));
    BE_CALL(m, ops->attention(be, &att, &q, &ap));
    BE_CALL(m, ops->matmul(be, &o, &att, &L->wo, opt(&L->bo)));
    TP_REDUCE(&o);
    if (c->sandwich_norm) BE_CALL(m, ops->rmsnorm(be, &o, &o, &L->post_attn_norm, c->norm_eps));
    BE_CALL(m, ops->add_rmsnorm(be, &h, &x, &o, &L->ffn_norm, c->norm_eps));
    if (c->layer_flags[l] & QV_LAYER_MOE) {
      int rc = families_moe(m, L, &o, &h, n, err);
      if (rc) return rc;
    } else {
      BE_CALL(m, ops->matmul(be, &g, &h, &L->w_gate, opt(&L->b_gate)));
      BE_CALL(m, ops->matmul(be, &u, &h, &L->w_up, opt(&L->b_up)));
      if (c->act == QV_ACT_SILU) BE_CALL(m, ops->silu_mul(be, &g, &g, &u));
      else BE_CALL(m, ops->gated_act(be, &g, &g, &u, &act));
      BE_CALL(m, ops->matmul(be, &o, &g, &L->w_down, opt(&L->b_down)));
      TP_REDUCE(&o);
    }
    if (c->sandwich_norm) BE_CALL(m, ops->rmsnorm(be, &o, &o, &L->post_ffn_norm, c->norm_eps));
  }
  if (b->n_logits == 0) return 0;
  /* Only the rows whose logits are wanted go through the final norm and the LM head. */
  BE_CALL(m, ops->add(be, &x, &o));
  qv_tensor sel = rows_of(&m->sel, b->n_logits), lg = rows_of(&m->logits, b->n_logits);
  BE_CALL(m, ops->gather_rows(be, &sel, &x));
  BE_CALL(m, ops->rmsnorm(be, &sel, &sel, &m->final_norm, c->norm_eps));
  BE_CALL(m, ops->matmul(be, &lg, &sel, &m->lm_head, NULL));
  if (m->shard) return tpm_gather_logits(m, &lg, logits, err);
  BE_CALL(m, ops->download_f32(be, &lg, logits));
  if (c->final_softcap > 0) {
    /* Gemma 2: logits = cap * tanh(logits / cap), on the host floats (same on every backend). */
    size_t cnt = (size_t)b->n_logits * (size_t)c->vocab_size;
    for (size_t i = 0; i < cnt; i++) logits[i] = tanhf(logits[i] / c->final_softcap) * c->final_softcap;
  }
  return 0;
}
