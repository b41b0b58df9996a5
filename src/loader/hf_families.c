/* config.json of the families beyond Llama (Gemma 2/3, Phi-3, Mixtral, Qwen3-MoE, gpt-oss), and
 * the checks every config goes through (architectures, quantization_config). See
 * hf_families.h. */
#include "loader/hf_families.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "backend/backend.h"

#define CFG_FILE "config.json"

static const struct {
  const char *name;
  qv_family family;
} FAMILIES[] = {
    {"gemma2", QV_FAMILY_GEMMA2},   {"gemma3_text", QV_FAMILY_GEMMA3},    {"gemma3", QV_FAMILY_GEMMA3},
    {"phi3", QV_FAMILY_PHI3},       {"mixtral", QV_FAMILY_MIXTRAL},       {"qwen3_moe", QV_FAMILY_QWEN3_MOE},
    {"gpt_oss", QV_FAMILY_GPT_OSS},
};

int hf_family_lookup(const char *model_type) {
  for (size_t i = 0; i < sizeof FAMILIES / sizeof FAMILIES[0]; i++)
    if (!strcmp(model_type, FAMILIES[i].name)) return FAMILIES[i].family;
  return -1;
}

static const cJSON *item(const cJSON *o, const char *k) { return cJSON_GetObjectItemCaseSensitive(o, k); }

static void set_default_num(cJSON *o, const char *k, double v) {
  const cJSON *x = item(o, k);
  if (!x || cJSON_IsNull(x)) {
    cJSON_DeleteItemFromObjectCaseSensitive(o, k);
    cJSON_AddNumberToObject(o, k, v);
  }
}

static void set_default_bool(cJSON *o, const char *k, int v) {
  if (!item(o, k)) cJSON_AddBoolToObject(o, k, v);
}

/* transformers 5 writes Gemma 3's rope as {"full_attention": {...}, "sliding_attention": {...}};
 * rewrite it into the classic keys (rope_theta, rope_scaling, rope_local_base_freq). */
static int gemma3_classic_rope(cJSON *o, qv_error *err) {
  cJSON *rp = cJSON_GetObjectItemCaseSensitive(o, "rope_parameters");
  if (!cJSON_IsObject(rp) || !item(rp, "full_attention")) return 0;
  const cJSON *full = item(rp, "full_attention"), *slid = item(rp, "sliding_attention");
  if (!cJSON_IsObject(full) || (slid && !cJSON_IsObject(slid)))
    return qv_error_set(err, QV_EFORMAT, CFG_FILE ": rope_parameters per layer type must be objects");
  const cJSON *th = item(full, "rope_theta");
  if (cJSON_IsNumber(th) && !item(o, "rope_theta")) cJSON_AddNumberToObject(o, "rope_theta", th->valuedouble);
  const cJSON *lt = slid ? item(slid, "rope_theta") : NULL;
  if (cJSON_IsNumber(lt) && !item(o, "rope_local_base_freq"))
    cJSON_AddNumberToObject(o, "rope_local_base_freq", lt->valuedouble);
  const cJSON *st = slid ? item(slid, "rope_type") : NULL;
  if (st && (!cJSON_IsString(st) || strcmp(st->valuestring, "default")))
    return qv_error_set(err, QV_EUNSUPPORTED, CFG_FILE ": Gemma 3 sliding-layer rope scaling is not supported");
  const cJSON *ft = item(full, "rope_type");
  if (!item(o, "rope_scaling") && cJSON_IsString(ft) && strcmp(ft->valuestring, "default")) {
    cJSON *dup = cJSON_Duplicate(full, 1);
    if (!dup) return qv_error_set(err, QV_ENOMEM, "out of memory");
    cJSON_AddItemToObject(o, "rope_scaling", dup);
  }
  cJSON_DeleteItemFromObjectCaseSensitive(o, "rope_parameters");
  return 0;
}

int hf_family_prepare(cJSON **root, int family, qv_error *err) {
  cJSON *src = *root;
  const cJSON *mt = item(src, "model_type");
  if (family == QV_FAMILY_GEMMA3 && cJSON_IsString(mt) && !strcmp(mt->valuestring, "gemma3")) {
    /* The multimodal Gemma 3 config: quiver serves its text model. */
    const cJSON *tc = item(src, "text_config");
    if (!cJSON_IsObject(tc)) return qv_error_set(err, QV_EFORMAT, CFG_FILE ": gemma3 config without a \"text_config\" object");
    cJSON *t = cJSON_Duplicate(tc, 1);
    if (!t) return qv_error_set(err, QV_ENOMEM, "out of memory");
    /* Token ids and dtype live at the top level of the multimodal config. */
    const char *keep[] = {"bos_token_id", "eos_token_id", "torch_dtype", "dtype", "architectures",
                          "quantization_config"};
    for (size_t i = 0; i < sizeof keep / sizeof keep[0]; i++) {
      const cJSON *v = item(src, keep[i]);
      if (v && !item(t, keep[i])) cJSON_AddItemToObject(t, keep[i], cJSON_Duplicate(v, 1));
    }
    cJSON_Delete(src);
    *root = src = t;
  }
  /* Defaults of transformers' config classes for the keys real checkpoints leave out. */
  if (family == QV_FAMILY_GEMMA3) {
    set_default_num(src, "vocab_size", 262208);
    set_default_num(src, "num_attention_heads", 8);
    set_default_num(src, "num_key_value_heads", 4);
    set_default_num(src, "head_dim", 256);
    set_default_num(src, "max_position_embeddings", 131072);
    set_default_num(src, "rms_norm_eps", 1e-6);
    set_default_num(src, "query_pre_attn_scalar", 256);
    set_default_num(src, "sliding_window", 4096);
    set_default_bool(src, "tie_word_embeddings", 1);
    int rc = gemma3_classic_rope(src, err);
    if (rc) return rc;
    set_default_num(src, "rope_theta", 1000000.0);
  } else if (family == QV_FAMILY_GEMMA2) {
    set_default_num(src, "head_dim", 256);
    set_default_num(src, "query_pre_attn_scalar", 256);
    set_default_num(src, "sliding_window", 4096);
    set_default_num(src, "max_position_embeddings", 8192);
    set_default_num(src, "rms_norm_eps", 1e-6);
    set_default_bool(src, "tie_word_embeddings", 1);
  } else if (family == QV_FAMILY_GPT_OSS) {
    set_default_num(src, "head_dim", 64);
    set_default_num(src, "sliding_window", 128);
    set_default_num(src, "rope_theta", 150000.0);
  }
  return 0;
}

static int num(const cJSON *o, const char *k, double def, double lo, double hi, double *out, qv_error *err) {
  const cJSON *v = item(o, k);
  if (!v || cJSON_IsNull(v)) {
    *out = def;
    return 0;
  }
  if (!cJSON_IsNumber(v) || !(v->valuedouble >= lo && v->valuedouble <= hi))
    return qv_error_set(err, QV_EFORMAT, CFG_FILE ": \"%s\" must be a number in [%g, %g]", k, lo, hi);
  *out = v->valuedouble;
  return 0;
}

static int whole(const cJSON *o, const char *k, double def, double lo, double hi, int32_t *out, qv_error *err) {
  double d = 0;
  int rc = num(o, k, def, lo, hi, &d, err);
  if (rc) return rc;
  if (d != floor(d)) return qv_error_set(err, QV_EFORMAT, CFG_FILE ": \"%s\" must be an integer", k);
  *out = (int32_t)d;
  return 0;
}

static int boolean(const cJSON *o, const char *k, int def, int32_t *out, qv_error *err) {
  const cJSON *v = item(o, k);
  if (!v || cJSON_IsNull(v)) {
    *out = def;
    return 0;
  }
  if (!cJSON_IsBool(v)) return qv_error_set(err, QV_EFORMAT, CFG_FILE ": \"%s\" must be true or false", k);
  *out = cJSON_IsTrue(v);
  return 0;
}

/* The rope dict that holds longrope's factors: rope_scaling, or transformers 5's rope_parameters. */
static const cJSON *rope_dict(const cJSON *root) {
  const cJSON *rs = item(root, "rope_scaling");
  return cJSON_IsObject(rs) ? rs : item(root, "rope_parameters");
}

/* layer_types (a list of "sliding_attention" / "full_attention") or, without it, every
 * pattern-th layer global: layer i slides iff (i + 1) % pattern != 0. */
static int layer_types(const cJSON *root, qv_model_config *c, int32_t pattern, qv_error *err) {
  const cJSON *lt = item(root, "layer_types");
  if (lt && !cJSON_IsNull(lt)) {
    if (!cJSON_IsArray(lt) || cJSON_GetArraySize(lt) != c->n_layer)
      return qv_error_set(err, QV_EFORMAT, CFG_FILE ": \"layer_types\" must list num_hidden_layers (%d) entries",
                          c->n_layer);
    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, lt) {
      if (!cJSON_IsString(it)) return qv_error_set(err, QV_EFORMAT, CFG_FILE ": \"layer_types\" entries must be strings");
      if (!strcmp(it->valuestring, "sliding_attention")) c->layer_flags[i] |= QV_LAYER_SLIDING;
      else if (strcmp(it->valuestring, "full_attention"))
        return qv_error_set(err, QV_EUNSUPPORTED, CFG_FILE ": layer type '%.40s' is not supported", it->valuestring);
      i++;
    }
    return 0;
  }
  for (int32_t i = 0; i < c->n_layer; i++)
    if (pattern <= 0 || (i + 1) % pattern) c->layer_flags[i] |= QV_LAYER_SLIDING;
  return 0;
}

static int factors(const cJSON *s, const char *key, float *out, int32_t half, qv_error *err) {
  const cJSON *a = item(s, key);
  if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) != half)
    return qv_error_set(err, QV_EFORMAT, CFG_FILE ": longrope \"%s\" must list rotary_dim/2 = %d numbers", key, half);
  int i = 0;
  const cJSON *it;
  cJSON_ArrayForEach(it, a) {
    if (!cJSON_IsNumber(it) || !(it->valuedouble > 0 && it->valuedouble < 1e9))
      return qv_error_set(err, QV_EFORMAT, CFG_FILE ": longrope \"%s\" must hold positive numbers", key);
    out[i++] = (float)it->valuedouble;
  }
  return 0;
}

/* longrope (Phi-3): transformers picks the long factors per forward call when the longest
 * position + 1 exceeds original_max_position_embeddings, which would leave the cached K of a
 * sequence rotated with the other set and make a sequence's logits depend on its batch. quiver
 * chooses once per model, as vLLM does: the long factors when the model serves positions beyond
 * original_max_position_embeddings (max_position_embeddings > original), else the short ones.
 * Within that choice the math equals transformers' exactly. */
static int parse_longrope(const cJSON *root, qv_model_config *c, qv_error *err) {
  const cJSON *s = rope_dict(root);
  int32_t half = c->rot_dim / 2;
  if (!cJSON_IsObject(s)) return qv_error_set(err, QV_EFORMAT, CFG_FILE ": longrope without its parameters");
  int32_t orig = 0;
  int rc = whole(s, "original_max_position_embeddings", -1, -1, 1 << 26, &orig, err);
  if (!rc && orig <= 0) rc = whole(root, "original_max_position_embeddings", -1, 1, 1 << 26, &orig, err);
  if (rc) return rc;
  if (orig <= 0) return qv_error_set(err, QV_EFORMAT, CFG_FILE ": longrope needs original_max_position_embeddings");
  c->rope_orig_max_pos = orig;
  double factor = 1, af = -1;
  if ((rc = num(s, "factor", (double)c->max_pos / orig, 1e-6, 1e6, &factor, err))) return rc;
  if ((rc = num(s, "attention_factor", -1, -1, 1e6, &af, err))) return rc;
  if (af < 0) af = factor <= 1.0 ? 1.0 : sqrt(1.0 + log(factor) / log((double)orig));
  c->rope_long = c->max_pos > orig;
  c->rope_ext_attn = (float)af;
  c->rope_factor = (float)factor;
  return factors(s, c->rope_long ? "long_factor" : "short_factor", c->rope_ext, half, err);
}

static int parse_moe(const cJSON *root, qv_model_config *c, const char *n_key, const char *k_key, int32_t ffn,
                     qv_error *err) {
  int rc;
  if ((rc = whole(root, n_key, -1, 1, 4096, &c->n_expert, err)) ||
      (rc = whole(root, k_key, -1, 1, 4096, &c->n_expert_used, err)))
    return rc;
  if (c->n_expert <= 0 || c->n_expert_used <= 0 || c->n_expert_used > c->n_expert)
    return qv_error_set(err, QV_EFORMAT, CFG_FILE ": \"%s\" and \"%s\" must satisfy 1 <= experts per token <= experts",
                        n_key, k_key);
  c->moe_ffn_dim = ffn;
  return 0;
}

int hf_family_parse(const cJSON *root, qv_model_config *c, qv_error *err) {
  int rc = 0;
  const cJSON *act = item(root, "hidden_activation");
  if (!cJSON_IsString(act)) act = item(root, "hidden_act");
  const char *act_name = cJSON_IsString(act) ? act->valuestring : NULL;
  c->rot_dim = c->head_dim;
  for (int32_t i = 0; i < c->n_layer; i++) c->layer_flags[i] = 0;
  int32_t sw = 0;
  if ((rc = whole(root, "sliding_window", 0, 0, 1 << 30, &sw, err))) return rc;
  switch ((qv_family)c->family) {
  case QV_FAMILY_GEMMA2:
  case QV_FAMILY_GEMMA3: {
    if (act_name && strcmp(act_name, "gelu_pytorch_tanh") && strcmp(act_name, "gelu_tanh"))
      return qv_error_set(err, QV_EUNSUPPORTED, CFG_FILE ": Gemma hidden_activation '%.32s' is not supported "
                          "(gelu_pytorch_tanh)", act_name);
    int32_t bidi = 0;
    if ((rc = boolean(root, "use_bidirectional_attention", 0, &bidi, err))) return rc;
    if (bidi) return qv_error_set(err, QV_EUNSUPPORTED, CFG_FILE ": use_bidirectional_attention is not supported");
    c->act = QV_ACT_GELU_TANH;
    c->norm_plus_one = 1;
    c->sandwich_norm = 1;
    c->embed_scale = (float)sqrt((double)c->dim);
    double qpas = 0, asc = 0, fsc = 0;
    if ((rc = num(root, "query_pre_attn_scalar", c->head_dim, 1e-6, 1e9, &qpas, err)) ||
        (rc = num(root, "attn_logit_softcapping", 0, 0, 1e9, &asc, err)) ||
        (rc = num(root, "final_logit_softcapping", 0, 0, 1e9, &fsc, err)))
      return rc;
    c->attn_scale = (float)pow(qpas, -0.5);
    c->attn_softcap = (float)asc;
    c->final_softcap = (float)fsc;
    if (c->family == QV_FAMILY_GEMMA3) {
      c->qk_norm = 1;
      double local = 0;
      int32_t pattern = 0;
      if ((rc = num(root, "rope_local_base_freq", 10000.0, 1.0, 1e12, &local, err)) ||
          (rc = whole(root, "sliding_window_pattern", 6, 1, 1 << 20, &pattern, err)))
        return rc;
      c->rope_local_theta = (float)local;
      rc = layer_types(root, c, pattern, err);
    } else {
      rc = layer_types(root, c, 2, err);
    }
    if (rc) return rc;
    c->sliding_window = sw;
    break;
  }
  case QV_FAMILY_PHI3: {
    double prf = 1;
    /* Classic configs have it at the top level, transformers 5 inside rope_parameters. */
    const cJSON *rd = rope_dict(root);
    const cJSON *where = item(root, "partial_rotary_factor") || !cJSON_IsObject(rd) ? root : rd;
    if ((rc = num(where, "partial_rotary_factor", 1.0, 1e-6, 1.0, &prf, err))) return rc;
    c->rot_dim = (int32_t)(c->head_dim * prf);
    if (c->rot_dim < 2 || c->rot_dim % 2)
      return qv_error_set(err, QV_EFORMAT, CFG_FILE ": partial_rotary_factor gives %d rotary dims (must be even)",
                          c->rot_dim);
    c->sliding_window = sw;
    for (int32_t i = 0; i < c->n_layer && sw; i++) c->layer_flags[i] |= QV_LAYER_SLIDING;
    break;
  }
  case QV_FAMILY_MIXTRAL:
    if ((rc = parse_moe(root, c, "num_local_experts", "num_experts_per_tok", c->ffn_dim, err))) return rc;
    c->route_kind = QV_ROUTE_SOFTMAX_TOPK;
    c->route_norm = 1;
    c->sliding_window = sw;
    for (int32_t i = 0; i < c->n_layer; i++) c->layer_flags[i] = (uint8_t)(QV_LAYER_MOE | (sw ? QV_LAYER_SLIDING : 0));
    break;
  case QV_FAMILY_QWEN3_MOE: {
    int32_t ffn = 0, step = 1, use_sw = 0;
    if ((rc = whole(root, "moe_intermediate_size", -1, 1, 1 << 18, &ffn, err))) return rc;
    if (ffn <= 0) return qv_error_set(err, QV_EFORMAT, CFG_FILE ": qwen3_moe needs \"moe_intermediate_size\"");
    const char *nk = item(root, "num_experts") ? "num_experts" : "num_local_experts";
    if ((rc = parse_moe(root, c, nk, "num_experts_per_tok", ffn, err)) ||
        (rc = whole(root, "decoder_sparse_step", 1, 1, 1 << 20, &step, err)) ||
        (rc = boolean(root, "norm_topk_prob", 0, &c->route_norm, err)) ||
        (rc = boolean(root, "use_sliding_window", 0, &use_sw, err)))
      return rc;
    if (use_sw && sw) return qv_error_set(err, QV_EUNSUPPORTED, CFG_FILE ": use_sliding_window is not supported for qwen3_moe");
    c->sliding_window = 0;
    c->qk_norm = 1;
    c->route_kind = QV_ROUTE_SOFTMAX_TOPK;
    for (int32_t i = 0; i < c->n_layer; i++)
      if ((i + 1) % step == 0) c->layer_flags[i] |= QV_LAYER_MOE;
    const cJSON *only = item(root, "mlp_only_layers");
    if (only && !cJSON_IsNull(only)) {
      if (!cJSON_IsArray(only)) return qv_error_set(err, QV_EFORMAT, CFG_FILE ": \"mlp_only_layers\" must be a list");
      const cJSON *it;
      cJSON_ArrayForEach(it, only) {
        if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble >= c->n_layer || it->valuedouble != floor(it->valuedouble))
          return qv_error_set(err, QV_EFORMAT, CFG_FILE ": \"mlp_only_layers\" must hold layer indices");
        c->layer_flags[(int)it->valuedouble] &= (uint8_t)~QV_LAYER_MOE;
      }
    }
    break;
  }
  case QV_FAMILY_GPT_OSS: {
    const char *kk = item(root, "num_experts_per_tok") ? "num_experts_per_tok" : "experts_per_token";
    if ((rc = parse_moe(root, c, "num_local_experts", kk, c->ffn_dim, err))) return rc;
    double alpha = 0, limit = 0;
    if ((rc = num(root, "swiglu_alpha", 1.702, 1e-6, 1e6, &alpha, err)) ||
        (rc = num(root, "swiglu_limit", 7.0, 1e-6, 1e9, &limit, err)))
      return rc;
    c->act = QV_ACT_SWIGLU_OAI;
    c->swiglu_alpha = (float)alpha;
    c->swiglu_limit = (float)limit;
    c->route_kind = QV_ROUTE_TOPK_SOFTMAX;
    c->attn_sinks = 1;
    c->qkv_bias = c->o_bias = 1;
    if ((rc = layer_types(root, c, 2, err))) return rc;
    for (int32_t i = 0; i < c->n_layer; i++) c->layer_flags[i] |= QV_LAYER_MOE;
    c->sliding_window = sw;
    break;
  }
  default:
    return qv_error_set(err, QV_EINVAL, "unknown family %d", c->family);
  }
  if (c->family != QV_FAMILY_GEMMA2 && c->family != QV_FAMILY_GEMMA3 && c->family != QV_FAMILY_GPT_OSS &&
      act_name && strcmp(act_name, "silu"))
    return qv_error_set(err, QV_EUNSUPPORTED, CFG_FILE ": hidden_act '%.32s' is not supported (silu only)", act_name);
  if (c->rope_scaling == QV_ROPE_SCALING_LONGROPE && (rc = parse_longrope(root, c, err))) return rc;
  if (c->rot_dim / 2 > QV_MAX_ROPE_HALF) return qv_error_set(err, QV_ELIMIT, CFG_FILE ": head_dim too large");
  int any_sliding = 0;
  for (int32_t i = 0; i < c->n_layer; i++) any_sliding |= c->layer_flags[i] & QV_LAYER_SLIDING;
  if (any_sliding && c->sliding_window <= 0)
    return qv_error_set(err, QV_EFORMAT, CFG_FILE ": sliding-window layers need a positive \"sliding_window\"");
  if (!any_sliding) c->sliding_window = 0;
  return 0;
}

int hf_config_check_common(const cJSON *root, qv_model_config *c, qv_error *err) {
  /* architectures: quiver runs causal language models only. */
  const cJSON *ar = item(root, "architectures");
  if (ar && !cJSON_IsNull(ar)) {
    if (!cJSON_IsArray(ar)) return qv_error_set(err, QV_EFORMAT, CFG_FILE ": \"architectures\" must be a list");
    const cJSON *it;
    cJSON_ArrayForEach(it, ar) {
      if (!cJSON_IsString(it)) return qv_error_set(err, QV_EFORMAT, CFG_FILE ": \"architectures\" must list strings");
      const char *a = it->valuestring;
      size_t n = strlen(a);
      int lm = n >= 11 && !strcmp(a + n - 11, "ForCausalLM");
      /* Gemma 3's multimodal checkpoints: quiver serves the text model inside. */
      int mm = c->family == QV_FAMILY_GEMMA3 && !strcmp(a, "Gemma3ForConditionalGeneration");
      if (!lm && !mm)
        return qv_error_set(err, QV_EUNSUPPORTED, CFG_FILE ": architecture '%.60s' is not a causal language model "
                            "(quiver runs *ForCausalLM models)", a);
    }
  }
  /* quantization_config: only gpt-oss's MXFP4 experts are understood; anything else would load
   * packed integers as if they were weights. */
  const cJSON *q = item(root, "quantization_config");
  if (q && !cJSON_IsNull(q)) {
    const cJSON *m = cJSON_IsObject(q) ? item(q, "quant_method") : NULL;
    if (!cJSON_IsString(m))
      return qv_error_set(err, QV_EFORMAT, CFG_FILE ": \"quantization_config\" without a \"quant_method\"");
    if (!strcmp(m->valuestring, "mxfp4") && c->family == QV_FAMILY_GPT_OSS) {
      c->experts_mxfp4 = 1;
    } else {
      return qv_error_set(err, QV_EUNSUPPORTED, CFG_FILE ": quantization_config quant_method '%.32s' is not supported "
                          "for %s (supported: mxfp4 for gpt_oss)", m->valuestring, c->arch);
    }
  }
  return 0;
}
