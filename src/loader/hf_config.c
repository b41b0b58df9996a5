/* Hugging Face model configuration; see hf_config.h. Accepts both the classic keys real
 * checkpoints ship (rope_theta, rope_scaling) and transformers 5's rope_parameters. */
#include "loader/hf_config.h"

#include "core/util.h"
#include "loader/hf_families.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CFG_FILE "config.json"

/* Reads an integer field. Absent or null: *out = def and 0. Present but not a whole number in
 * [lo, hi]: an error naming the field. */
static int get_int(const cJSON *o, const char *key, int64_t def, int64_t lo, int64_t hi, int32_t *out,
                   qv_error *err) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!v || cJSON_IsNull(v)) {
    *out = (int32_t)def;
    return 0;
  }
  if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < (double)lo ||
      v->valuedouble > (double)hi)
    return qv_error_set(err, QV_EFORMAT, CFG_FILE ": \"%s\" must be an integer in [%lld, %lld]", key,
                        (long long)lo, (long long)hi);
  *out = (int32_t)v->valuedouble;
  return 0;
}

static int get_float(const cJSON *o, const char *key, double def, double lo, double hi, float *out,
                     qv_error *err) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!v || cJSON_IsNull(v)) {
    *out = (float)def;
    return 0;
  }
  if (!cJSON_IsNumber(v) || !(v->valuedouble >= lo && v->valuedouble <= hi))
    return qv_error_set(err, QV_EFORMAT, CFG_FILE ": \"%s\" must be a number in [%g, %g]", key, lo, hi);
  *out = (float)v->valuedouble;
  return 0;
}

static int get_bool(const cJSON *o, const char *key, int def, int32_t *out, qv_error *err) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!v || cJSON_IsNull(v)) {
    *out = def;
    return 0;
  }
  if (!cJSON_IsBool(v)) return qv_error_set(err, QV_EFORMAT, CFG_FILE ": \"%s\" must be true or false", key);
  *out = cJSON_IsTrue(v);
  return 0;
}

/* eos_token_id: an integer or a list of integers. */
static int get_eos(const cJSON *o, qv_model_config *c, const char *file, qv_error *err) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "eos_token_id");
  if (!v || cJSON_IsNull(v)) return 0;
  c->n_eos = 0;
  const cJSON *it = cJSON_IsArray(v) ? v->child : v;
  for (; it; it = cJSON_IsArray(v) ? it->next : NULL) {
    if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble >= c->vocab_size ||
        it->valuedouble != floor(it->valuedouble))
      return qv_error_set(err, QV_EFORMAT, "%s: \"eos_token_id\" must be token ids below vocab_size %d", file,
                          c->vocab_size);
    if (c->n_eos == QV_MAX_EOS) return qv_error_set(err, QV_ELIMIT, "%s: more than %d eos ids", file, QV_MAX_EOS);
    c->eos_ids[c->n_eos++] = (int32_t)it->valuedouble;
  }
  return 0;
}

static int parse_rope(const cJSON *root, qv_model_config *c, qv_error *err) {
  /* transformers 5 folds rope_theta into rope_parameters; classic configs have rope_scaling. */
  const cJSON *rp = cJSON_GetObjectItemCaseSensitive(root, "rope_parameters");
  const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
  int rc = get_float(root, "rope_theta", 10000.0, 1.0, 1e12, &c->rope_theta, err);
  if (rc) return rc;
  const cJSON *s = NULL;
  if (cJSON_IsObject(rs)) s = rs;
  else if (rs && !cJSON_IsNull(rs)) return qv_error_set(err, QV_EFORMAT, CFG_FILE ": \"rope_scaling\" must be an object or null");
  if (!s && cJSON_IsObject(rp)) {
    s = rp;
    if ((rc = get_float(rp, "rope_theta", c->rope_theta, 1.0, 1e12, &c->rope_theta, err))) return rc;
  }
  c->rope_scaling = QV_ROPE_SCALING_NONE;
  c->rope_factor = 1.0f;
  c->rope_orig_max_pos = c->max_pos;
  if (!s) return 0;
  const cJSON *t = cJSON_GetObjectItemCaseSensitive(s, "rope_type");
  if (!t) t = cJSON_GetObjectItemCaseSensitive(s, "type");
  /* A type that is present but not a string is an error, not "no scaling": ignoring it would
   * load the model with silently wrong positions. */
  if (t && !cJSON_IsString(t))
    return qv_error_set(err, QV_EFORMAT, CFG_FILE ": rope_scaling \"rope_type\" must be a string");
  const char *type = t ? t->valuestring : "default";
  if (!strcmp(type, "default")) return 0;
  if (!strcmp(type, "longrope") || !strcmp(type, "su")) { /* "su": Phi-3's early name for it */
    /* Factors and the long/short choice are read by hf_family_parse (needs the rotary dims). */
    c->rope_scaling = QV_ROPE_SCALING_LONGROPE;
    return 0;
  }
  if (!strcmp(type, "dynamic") && !cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(s, "factor")))
    return qv_error_set(err, QV_EFORMAT, CFG_FILE ": dynamic rope_scaling needs a numeric \"factor\"");
  if ((rc = get_float(s, "factor", 1.0, 1e-3, 1e6, &c->rope_factor, err))) return rc;
  if ((rc = get_int(s, "original_max_position_embeddings", c->max_pos, 1, 1 << 26, &c->rope_orig_max_pos, err)))
    return rc;
  if (!strcmp(type, "linear")) {
    c->rope_scaling = QV_ROPE_SCALING_LINEAR;
  } else if (!strcmp(type, "dynamic")) {
    c->rope_scaling = QV_ROPE_SCALING_DYNAMIC;
  } else if (!strcmp(type, "llama3")) {
    c->rope_scaling = QV_ROPE_SCALING_LLAMA3;
    if ((rc = get_float(s, "low_freq_factor", 1.0, 1e-6, 1e6, &c->rope_low_freq_factor, err)) ||
        (rc = get_float(s, "high_freq_factor", 4.0, 1e-6, 1e6, &c->rope_high_freq_factor, err)))
      return rc;
    if (c->rope_high_freq_factor <= c->rope_low_freq_factor)
      return qv_error_set(err, QV_EFORMAT, CFG_FILE ": llama3 rope_scaling needs high_freq_factor > low_freq_factor");
  } else if (!strcmp(type, "yarn")) {
    c->rope_scaling = QV_ROPE_SCALING_YARN;
    if ((rc = get_float(s, "beta_fast", 32.0, 1e-6, 1e6, &c->yarn_beta_fast, err)) ||
        (rc = get_float(s, "beta_slow", 1.0, 1e-6, 1e6, &c->yarn_beta_slow, err)) ||
        (rc = get_float(s, "mscale", 0.0, 0.0, 1e6, &c->yarn_mscale, err)) ||
        (rc = get_float(s, "mscale_all_dim", 0.0, 0.0, 1e6, &c->yarn_mscale_all_dim, err)) ||
        (rc = get_float(s, "attention_factor", 0.0, 0.0, 1e6, &c->yarn_attn_factor, err)))
      return rc;
    /* truncate=false (gpt-oss): the correction range keeps its fractional bounds. */
    c->yarn_no_truncate = cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(s, "truncate"));
  } else {
    return qv_error_set(err, QV_EUNSUPPORTED, CFG_FILE ": rope_scaling type '%.32s' is not supported "
                        "(supported: linear, dynamic, llama3, yarn, longrope)", type);
  }
  return 0;
}

int hf_config_parse(const char *text, size_t len, qv_model_config *c, qv_error *err) {
  memset(c, 0, sizeof *c);
  cJSON *root = cJSON_ParseWithLength(text, len);
  if (!root || !cJSON_IsObject(root)) {
    cJSON_Delete(root);
    return qv_error_set(err, QV_EFORMAT, CFG_FILE ": not a JSON object");
  }
  int rc = 0;
  const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
  if (!cJSON_IsString(mt)) {
    rc = qv_error_set(err, QV_EFORMAT, CFG_FILE ": missing \"model_type\"");
    goto out;
  }
  static const char *archs[] = {"llama", "mistral", "qwen2", "qwen3"};
  int known = 0;
  for (size_t i = 0; i < sizeof archs / sizeof archs[0]; i++) known |= !strcmp(mt->valuestring, archs[i]);
  int family = hf_family_lookup(mt->valuestring);
  if (!known && family < 0) {
    rc = qv_error_set(err, QV_EUNSUPPORTED, CFG_FILE ": model_type '%.40s' is not supported (supported: llama, "
                      "mistral, qwen2, qwen3, gemma2, gemma3, gemma3_text, phi3, mixtral, qwen3_moe, gpt_oss)",
                      mt->valuestring);
    goto out;
  }
  snprintf(c->arch, sizeof c->arch, "%s", mt->valuestring);
  if (family > 0) {
    c->family = family;
    if ((rc = hf_family_prepare(&root, family, err))) goto out;
  }
  const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "hidden_act");
  if (!family && cJSON_IsString(act) && strcmp(act->valuestring, "silu")) {
    rc = qv_error_set(err, QV_EUNSUPPORTED, CFG_FILE ": hidden_act '%.32s' is not supported (silu only)", act->valuestring);
    goto out;
  }
  /* Bounds: generous for real models, small enough that products cannot overflow. */
  if ((rc = get_int(root, "vocab_size", -1, 1, 1 << 22, &c->vocab_size, err)) ||
      (rc = get_int(root, "hidden_size", -1, 1, 1 << 16, &c->dim, err)) ||
      (rc = get_int(root, "num_hidden_layers", -1, 1, 1024, &c->n_layer, err)) ||
      (rc = get_int(root, "num_attention_heads", -1, 1, 1024, &c->n_head, err)) ||
      (rc = get_int(root, "intermediate_size", -1, 1, 1 << 18, &c->ffn_dim, err)) ||
      (rc = get_int(root, "max_position_embeddings", 2048, 1, 1 << 24, &c->max_pos, err)) ||
      (rc = get_float(root, "rms_norm_eps", 1e-6, 0.0, 1.0, &c->norm_eps, err)))
    goto out;
  if (c->vocab_size < 0 || c->dim < 0 || c->n_layer < 0 || c->n_head < 0 || c->ffn_dim < 0) {
    rc = qv_error_set(err, QV_EFORMAT, CFG_FILE ": vocab_size, hidden_size, num_hidden_layers, "
                      "num_attention_heads and intermediate_size are required");
    goto out;
  }
  if ((rc = get_int(root, "num_key_value_heads", c->n_head, 1, 1024, &c->n_kv_head, err)) ||
      (rc = get_int(root, "head_dim", c->dim / c->n_head, 1, 1024, &c->head_dim, err)))
    goto out;
  if (c->head_dim == 0 || c->n_head % c->n_kv_head) {
    rc = qv_error_set(err, QV_EFORMAT, CFG_FILE ": num_attention_heads %d is not a multiple of num_key_value_heads %d "
                      "(or head_dim is 0)", c->n_head, c->n_kv_head);
    goto out;
  }
  if (c->head_dim % 2) {
    rc = qv_error_set(err, QV_EFORMAT, CFG_FILE ": head_dim %d must be even for rotary embeddings", c->head_dim);
    goto out;
  }
  if ((rc = parse_rope(root, c, err))) goto out;
  int is_qwen2 = !strcmp(c->arch, "qwen2"), is_qwen3 = !strcmp(c->arch, "qwen3");
  if ((rc = get_bool(root, "tie_word_embeddings", 0, &c->tie_embeddings, err))) goto out;
  int32_t attn_bias = 0;
  if ((rc = get_bool(root, "attention_bias", 0, &attn_bias, err)) ||
      (rc = get_bool(root, "mlp_bias", 0, &c->mlp_bias, err)))
    goto out;
  c->qkv_bias = is_qwen2 ? 1 : attn_bias;
  c->o_bias = is_qwen2 ? 0 : attn_bias;
  c->qk_norm = is_qwen3;
  /* Sliding window: Mistral applies it to every layer; Qwen2/3 only with use_sliding_window,
   * and then only from max_window_layers on, which quiver does not split per layer yet. */
  int32_t sw = 0, use_sw = 1;
  if ((rc = get_int(root, "sliding_window", 0, 0, INT32_MAX, &sw, err))) goto out;
  if (is_qwen2 || is_qwen3) {
    if ((rc = get_bool(root, "use_sliding_window", 0, &use_sw, err))) goto out;
    if (use_sw && sw) {
      rc = qv_error_set(err, QV_EUNSUPPORTED, CFG_FILE ": use_sliding_window with Qwen layer ranges is not supported");
      goto out;
    }
  }
  if (!strcmp(c->arch, "llama")) use_sw = 0;
  /* transformers' MistralConfig defaults sliding_window to 4096 when the key is absent. */
  if (!strcmp(c->arch, "mistral") && !cJSON_GetObjectItemCaseSensitive(root, "sliding_window")) sw = 4096;
  c->sliding_window = use_sw ? sw : 0;
  int32_t bos = -1;
  if ((rc = get_int(root, "bos_token_id", -1, -1, c->vocab_size - 1, &bos, err))) goto out;
  c->bos_id = bos;
  if ((rc = get_eos(root, c, CFG_FILE, err))) goto out;
  const cJSON *dt = cJSON_GetObjectItemCaseSensitive(root, "torch_dtype");
  if (!cJSON_IsString(dt)) dt = cJSON_GetObjectItemCaseSensitive(root, "dtype");
  snprintf(c->weight_dtype, sizeof c->weight_dtype, "%s", cJSON_IsString(dt) ? dt->valuestring : "?");
  if (c->family && (rc = hf_family_parse(root, c, err))) goto out;
  if (c->rope_scaling == QV_ROPE_SCALING_LONGROPE && c->family != QV_FAMILY_PHI3) {
    rc = qv_error_set(err, QV_EUNSUPPORTED, CFG_FILE ": rope_scaling type 'longrope' is supported for phi3 only");
    goto out;
  }
  if ((rc = hf_config_check_common(root, c, err))) goto out;
out:
  cJSON_Delete(root);
  return rc;
}

int hf_generation_config_parse(const char *text, size_t len, qv_model_config *c, qv_error *err) {
  cJSON *root = cJSON_ParseWithLength(text, len);
  if (!root || !cJSON_IsObject(root)) {
    cJSON_Delete(root);
    return qv_error_set(err, QV_EFORMAT, "generation_config.json: not a JSON object");
  }
  int rc = get_eos(root, c, "generation_config.json", err);
  const cJSON *b = cJSON_GetObjectItemCaseSensitive(root, "bos_token_id");
  if (!rc && cJSON_IsNumber(b) && b->valuedouble >= 0 && b->valuedouble < c->vocab_size) c->bos_id = (int32_t)b->valuedouble;
  cJSON_Delete(root);
  return rc;
}

int hf_config_load(const char *dir, qv_model_config *c, qv_error *err) {
  char path[PATH_MAX];
  size_t len;
  snprintf(path, sizeof path, "%s/config.json", dir);
  char *text = qv_read_file(path, 4u << 20, &len, err);
  if (!text) return err ? err->code : QV_EIO;
  int rc = hf_config_parse(text, len, c, err);
  free(text);
  if (rc) return rc;
  snprintf(path, sizeof path, "%s/generation_config.json", dir);
  qv_error e2 = {0};
  text = qv_read_file(path, 1u << 20, &len, &e2);
  if (!text) return e2.code == QV_ENOTFOUND ? 0 : qv_error_set(err, e2.code, "%s", e2.msg);
  rc = hf_generation_config_parse(text, len, c, err);
  free(text);
  return rc;
}
