/* Model loading and the architecture-independent parts of qv_model: picking the family,
 * the safetensors weight source, rotary tables, accessors. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#include "loader/gguf_model.h"
#include "loader/hf_config.h"
#include "loader/safetensors.h"
#include "models/model_impl.h"
#include "models/model_tp.h"

/* ---- rotary tables ---- */

static double yarn_correction_dim(double n_rot, int32_t dim, double base, double max_pos) {
  return (dim * log(max_pos / (n_rot * 2.0 * M_PI))) / (2.0 * log(base));
}

static double yarn_get_mscale(double scale, double mscale) {
  return scale <= 1.0 ? 1.0 : 0.1 * mscale * log(scale) + 1.0;
}

void model_rope_inv_freq(const qv_model_config *c, int32_t rot_dim, float *inv, float *attn_factor) {
  int32_t half = rot_dim / 2;
  double base = c->rope_theta, factor = c->rope_factor;
  *attn_factor = 1.0f;
  /* Dynamic NTK: transformers keeps the unscaled table while a sequence is within
   * max_position_embeddings and rescales per call beyond it, which would leave cached keys
   * rotated with another table and make logits depend on the batch. quiver uses the unscaled
   * table and serves at most max_position_embeddings positions (the engine's max_model_len
   * bound), where it equals transformers exactly. */
  for (int32_t i = 0; i < half; i++) {
    /* transformers computes base ** (2i/d) in float32 and inverts it in float32. */
    float pf = powf((float)base, (float)(2 * i) / (float)rot_dim);
    float f = 1.0f / pf;
    switch (c->rope_scaling) {
    case QV_ROPE_SCALING_LINEAR: f = f / (float)factor; break;
    case QV_ROPE_SCALING_LLAMA3: {
      double low_wl = c->rope_orig_max_pos / c->rope_low_freq_factor;
      double high_wl = c->rope_orig_max_pos / c->rope_high_freq_factor;
      double wl = 2.0 * M_PI / f;
      if (wl > low_wl) {
        f = f / (float)factor;
      } else if (wl >= high_wl) {
        double smooth = (c->rope_orig_max_pos / wl - c->rope_low_freq_factor) /
                        (c->rope_high_freq_factor - c->rope_low_freq_factor);
        f = (float)((1.0 - smooth) * f / factor + smooth * f);
      }
      break;
    }
    case QV_ROPE_SCALING_YARN: {
      double lo = yarn_correction_dim(c->yarn_beta_fast, rot_dim, base, c->rope_orig_max_pos);
      double hi = yarn_correction_dim(c->yarn_beta_slow, rot_dim, base, c->rope_orig_max_pos);
      if (!c->yarn_no_truncate) {
        lo = floor(lo);
        hi = ceil(hi);
      }
      if (lo < 0) lo = 0;
      if (hi > rot_dim - 1) hi = rot_dim - 1;
      if (lo == hi) hi += 0.001;
      double ramp = ((double)i - lo) / (hi - lo);
      ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
      float extra = 1.0f - (float)ramp;
      float interp = 1.0f / ((float)factor * pf);
      f = interp * (1.0f - extra) + f * extra;
      break;
    }
    case QV_ROPE_SCALING_LONGROPE: f = 1.0f / (c->rope_ext[i] * pf); break;
    default: break;
    }
    inv[i] = f;
  }
  if (c->rope_scaling == QV_ROPE_SCALING_YARN) {
    if (c->yarn_attn_factor > 0) *attn_factor = c->yarn_attn_factor;
    else if (c->yarn_mscale > 0 && c->yarn_mscale_all_dim > 0)
      *attn_factor = (float)(yarn_get_mscale(factor, c->yarn_mscale) / yarn_get_mscale(factor, c->yarn_mscale_all_dim));
    else *attn_factor = (float)yarn_get_mscale(factor, 1.0);
  }
  if (c->rope_scaling == QV_ROPE_SCALING_LONGROPE) *attn_factor = c->rope_ext_attn;
}

/* ---- safetensors weight source ---- */

static const void *st_src_get(model_weight_src *src, const char *name, int64_t rows, int64_t cols, qv_dtype *dtype,
                              qv_error *err) {
  const st_tensor *t = st_find(src->ctx, name);
  if (!t) return NULL;
  /* 3-D and larger (stacked experts, MXFP4 blocks) are seen as [product of leading dims][last]. */
  int64_t r = 1, c = t->n_dims >= 1 ? t->shape[t->n_dims - 1] : -1;
  for (int i = 0; i + 1 < t->n_dims; i++) r *= t->shape[i];
  if (t->n_dims < 1 || t->n_dims > (src->max_dims ? src->max_dims : 2) || r != rows || c != cols) {
    char shape[96] = "";
    for (int i = 0, n = 0; i < t->n_dims && n < (int)sizeof shape - 24; i++)
      n += snprintf(shape + n, sizeof shape - (size_t)n, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    qv_error_set(err, QV_EFORMAT, "%s: tensor '%s' has shape [%s], expected [%lld, %lld]", t->file, name, shape,
                 (long long)rows, (long long)cols);
    return NULL;
  }
  if (src->want_u8 ? t->dtype != QV_DTYPE_U8
                   : (t->dtype != QV_DTYPE_F32 && t->dtype != QV_DTYPE_F16 && t->dtype != QV_DTYPE_BF16)) {
    qv_error_set(err, QV_EUNSUPPORTED, "%s: tensor '%s' has dtype %s (supported: %s)", t->file, name, t->dtype_str,
                 src->want_u8 ? "U8" : "F32, F16, BF16");
    return NULL;
  }
  *dtype = (qv_dtype)t->dtype;
  return t->data;
}

static void st_src_close(model_weight_src *src) {
  st_close(src->ctx);
  src->ctx = NULL;
}

/* Names the weight files of a set for error messages: the one file all tensors are in, or the
 * index of a sharded checkpoint. */
static const char *describe_files(const st_set *s) {
  const char *first = st_count(s) > 0 ? st_at(s, 0)->file : "model.safetensors";
  for (int i = 1; i < st_count(s); i++)
    if (strcmp(first, st_at(s, i)->file)) return "model.safetensors.index.json";
  return first;
}

/* Describes the dtypes of a set's tensors: one name, or "mixed". */
static void describe_dtypes(const st_set *s, char *out, size_t cap) {
  const char *first = NULL;
  for (int i = 0; i < st_count(s); i++) {
    const st_tensor *t = st_at(s, i);
    if (!first) first = t->dtype_str;
    else if (strcmp(first, t->dtype_str)) {
      snprintf(out, cap, "mixed");
      return;
    }
  }
  snprintf(out, cap, "%s", first ? first : "?");
}

int qv_model_load(const char *path, qv_backend *be, const qv_model_opts *opts, qv_model **out, qv_error *err) {
  *out = NULL;
  qv_model_opts def = {.max_batch_tokens = 2048, .max_logits = 0};
  if (!opts) opts = &def;
  if (opts->max_batch_tokens <= 0 || opts->max_batch_tokens > (1 << 20) || opts->max_logits < 0)
    return qv_error_set(err, QV_EINVAL, "model options: max_batch_tokens must be in [1, 1048576]");
  if (opts->tp_size < 0 || opts->tp_size > QV_TP_MAX_SIZE)
    return qv_error_set(err, QV_EINVAL, "tensor parallel size %d outside 1..%d", opts->tp_size, QV_TP_MAX_SIZE);
  qv_model_config cfg;
  model_weight_src src = {0};
  int rc;
  if (!path || !strcmp(path, "quiver-tiny")) {
    tiny_config(&cfg);
    if ((rc = tiny_weight_src_init(&src))) return qv_error_set(err, rc, "quiver-tiny: out of memory");
    rc = model_build(&cfg, &src, be, opts, out, err);
    tiny_weight_src_deinit(&src);
    return rc;
  }
  if (gguf_model_is_path(path)) {
    rc = gguf_model_load(path, be, opts, out, err);
    if (rc) return rc;
    goto set_path;
  }
  struct stat sb;
  if (stat(path, &sb))
    return qv_error_set(err, errno == ENOENT ? QV_ENOTFOUND : QV_EIO,
                        "%s: %s (a model is a Hugging Face directory with config.json, or a GGUF file)",
                        path, strerror(errno));
  if (!S_ISDIR(sb.st_mode))
    return qv_error_set(err, QV_EFORMAT,
                        "%s: neither a GGUF file nor a directory (a model is a Hugging Face directory with "
                        "config.json, or a GGUF file)",
                        path);
  if ((rc = hf_config_load(path, &cfg, err))) {
    qv_error_prefix(err, "%s", path);
    return rc;
  }
  st_set *set = NULL;
  if ((rc = st_open_dir(path, &set, err))) {
    qv_error_prefix(err, "%s", path);
    return rc;
  }
  char dt[sizeof cfg.weight_dtype];
  describe_dtypes(set, dt, sizeof dt);
  memcpy(cfg.weight_dtype, dt, sizeof dt);
  src.get = st_src_get;
  src.ctx = set;
  src.persistent = 1;
  rc = model_build(&cfg, &src, be, opts, out, err);
  /* A missing tensor is in no file: say which files were searched. */
  if (rc == QV_ENOTFOUND) qv_error_prefix(err, "%s", describe_files(set));
  if (!rc && (*out)->n_borrowed > 0) {
    /* Weights are views of the mapping: the model keeps it open until it is destroyed. */
    src.close = st_src_close;
    (*out)->wsrc = src;
  } else {
    st_close(set);
  }
  if (rc) {
    qv_error_prefix(err, "%s", path);
    return rc;
  }
set_path:
  (*out)->path = strdup(path);
  if (!(*out)->path) {
    qv_model_destroy(*out);
    *out = NULL;
    return qv_error_set(err, QV_ENOMEM, "out of memory");
  }
  return 0;
}

int model_build(const qv_model_config *cfg, model_weight_src *src, qv_backend *be, const qv_model_opts *opts,
                qv_model **out, qv_error *err) {
  if (opts->tp_size > 1 || (opts->tp_force && opts->tp_size == 1)) return tpm_build(cfg, src, be, opts, out, err);
  return cfg->family ? families_build(cfg, src, be, opts, out, err) : llama_build(cfg, src, be, opts, out, err);
}

int model_check_batch(const qv_model *m, const qv_batch *b, int32_t vocab, qv_error *err) {
  if (b->n_tokens <= 0 || b->n_tokens > m->max_tok || b->n_logits < 0 || b->n_logits > m->max_logits)
    return qv_error_set(err, QV_EINVAL, "forward: %d tokens / %d logits exceed the model's limits %d / %d",
                        b->n_tokens, b->n_logits, m->max_tok, m->max_logits);
  for (int32_t i = 0; vocab > 0 && i < b->n_tokens; i++)
    if (b->token_ids[i] < 0 || b->token_ids[i] >= vocab)
      return qv_error_set(err, QV_ERANGE, "forward: token id %d outside the vocabulary (%d)", b->token_ids[i], vocab);
  return 0;
}

const qv_model_config *qv_model_get_config(const qv_model *m) { return &m->cfg; }
int64_t qv_model_n_params(const qv_model *m) { return m->n_params; }
int64_t qv_model_weight_bytes(const qv_model *m) { return m->weight_bytes; }
const char *qv_model_path(const qv_model *m) { return m->path; }
qv_backend *qv_model_backend(const qv_model *m) { return m->be; }

int64_t qv_model_kv_bytes_per_token(const qv_model *m) {
  if (m->tp) return tpm_kv_bytes_per_token(m);
  return 2 * (int64_t)m->cfg.n_layer * m->cfg.n_kv_head * m->cfg.head_dim *
         (int64_t)qv_dtype_size(m->be->ops->act_dtype);
}

int qv_model_kv_init(qv_model *m, int32_t n_blocks, int32_t block_size, qv_error *err) {
  if (m->kv_ready) return qv_error_set(err, QV_ESTATE, "KV cache already allocated");
  if (n_blocks <= 0 || block_size <= 0 || block_size > 1024)
    return qv_error_set(err, QV_EINVAL, "KV cache: %d blocks of %d tokens", n_blocks, block_size);
  if (m->tp) return tpm_kv_init(m, n_blocks, block_size, err);
  qv_kv_desc d = {m->cfg.n_layer, n_blocks, block_size, m->cfg.n_kv_head, m->cfg.head_dim};
  int rc = m->be->ops->kv_init(m->be, &d);
  if (rc) return qv_error_set(err, rc, "%s", m->be->last_error.msg);
  m->kv_ready = 1;
  return 0;
}

void qv_model_kv_deinit(qv_model *m) {
  if (!m || !m->kv_ready) return;
  if (m->tp) tpm_group_kv_deinit(m);
  else m->be->ops->kv_deinit(m->be);
  m->kv_ready = 0;
}

int64_t qv_model_config_n_params(const qv_model_config *c) {
  if (c->family) return families_n_params(c);
  int64_t qd = (int64_t)c->n_head * c->head_dim, kd = (int64_t)c->n_kv_head * c->head_dim, d = c->dim;
  int64_t per_layer = 2 * d + d * qd + 2 * d * kd + qd * d + 3 * d * (int64_t)c->ffn_dim;
  if (c->qkv_bias) per_layer += qd + 2 * kd;
  if (c->o_bias) per_layer += d;
  if (c->qk_norm) per_layer += 2 * (int64_t)c->head_dim;
  if (c->mlp_bias) per_layer += 2 * (int64_t)c->ffn_dim + d;
  int64_t emb = (int64_t)c->vocab_size * d;
  return emb * (c->tie_embeddings ? 1 : 2) + d + per_layer * c->n_layer;
}

int qv_model_describe(const char *path, qv_model_desc *out, qv_error *err) {
  memset(out, 0, sizeof *out);
  if (!path || !strcmp(path, "quiver-tiny")) {
    tiny_config(&out->cfg);
    out->n_params = qv_model_config_n_params(&out->cfg);
    return 0;
  }
  if (gguf_model_is_path(path)) return gguf_model_describe(path, out, err);
  int rc = hf_config_load(path, &out->cfg, err);
  st_set *set = NULL;
  if (!rc) rc = st_open_dir(path, &set, err);
  if (rc) {
    qv_error_prefix(err, "%s", path);
    return rc;
  }
  describe_dtypes(set, out->cfg.weight_dtype, sizeof out->cfg.weight_dtype);
  out->n_file_tensors = st_count(set);
  for (int i = 0; i < st_count(set); i++) out->file_bytes += (int64_t)st_at(set, i)->n_bytes;
  out->n_params = qv_model_config_n_params(&out->cfg);
  st_close(set);
  return 0;
}
