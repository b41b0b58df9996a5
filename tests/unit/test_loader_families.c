/* config.json of the families beyond Llama (src/loader/hf_families.c) and the checks every
 * config goes through: Gemma 3's multimodal wrapper and defaults, layer patterns, MoE layer
 * selection, longrope's per-model choice, dynamic rope, and clear refusals (non-causal
 * architectures, foreign quantization or one that does not match the weights, dynamic without
 * factor, unknown layer types). The
 * numerics of each family are tested against transformers in test_model_fixtures. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <dirent.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/backend.h"
#include "loader/hf_config.h"
#include "models/model_impl.h"
#include "../test_util.h"

static int parse(const char *json, qv_model_config *c, qv_error *e) {
  memset(e, 0, sizeof *e);
  return hf_config_parse(json, strlen(json), c, e);
}

#define BASE "\"vocab_size\": 100, \"hidden_size\": 64, \"num_hidden_layers\": 6, " \
             "\"num_attention_heads\": 8, \"intermediate_size\": 128"

Test(loader_families, gemma3_multimodal_text_config_and_defaults) {
  qv_model_config c;
  qv_error e;
  const char *j = "{\"model_type\": \"gemma3\", \"architectures\": [\"Gemma3ForConditionalGeneration\"], "
                  "\"eos_token_id\": [1, 106], \"text_config\": {\"model_type\": \"gemma3_text\", \"hidden_size\": 64, "
                  "\"intermediate_size\": 128, \"num_hidden_layers\": 12, \"rope_scaling\": {\"rope_type\": \"linear\", "
                  "\"factor\": 8.0}}}";
  cr_assert_eq(parse(j, &c, &e), 0, "%s", e.msg);
  cr_assert_eq(c.family, QV_FAMILY_GEMMA3);
  cr_assert_eq(c.vocab_size, 262208);
  cr_assert_eq(c.head_dim, 256);
  cr_assert_eq(c.n_kv_head, 4);
  cr_assert_eq(c.tie_embeddings, 1);
  cr_assert_eq(c.n_eos, 2);
  cr_assert_eq(c.eos_ids[1], 106);
  cr_assert_float_eq(c.attn_scale, 1.0f / 16.0f, 1e-7);
  cr_assert_float_eq(c.rope_theta, 1e6f, 1);
  cr_assert_float_eq(c.rope_local_theta, 1e4f, 1e-3);
  cr_assert_eq(c.rope_scaling, QV_ROPE_SCALING_LINEAR);
  cr_assert_eq(c.sliding_window, 4096);
  /* Pattern 6: layers 5 and 11 are global. */
  for (int l = 0; l < 12; l++) cr_assert_eq(!!(c.layer_flags[l] & QV_LAYER_SLIDING), (l + 1) % 6 != 0, "layer %d", l);
  cr_assert_float_eq(c.embed_scale, sqrtf(64.0f), 1e-6);
  cr_assert(c.norm_plus_one && c.sandwich_norm && c.qk_norm);
}

Test(loader_families, gemma2_pattern_and_softcaps) {
  qv_model_config c;
  qv_error e;
  cr_assert_eq(parse("{\"model_type\": \"gemma2\", " BASE ", \"hidden_activation\": \"gelu_pytorch_tanh\", "
                     "\"attn_logit_softcapping\": 50.0, \"final_logit_softcapping\": 30.0, \"query_pre_attn_scalar\": 144}",
                     &c, &e), 0, "%s", e.msg);
  cr_assert_float_eq(c.attn_softcap, 50.0f, 1e-6);
  cr_assert_float_eq(c.final_softcap, 30.0f, 1e-6);
  cr_assert_float_eq(c.attn_scale, 1.0f / 12.0f, 1e-7);
  for (int l = 0; l < 6; l++) cr_assert_eq(!!(c.layer_flags[l] & QV_LAYER_SLIDING), l % 2 == 0);
  cr_assert_eq(parse("{\"model_type\": \"gemma2\", " BASE ", \"hidden_activation\": \"relu\"}", &c, &e), QV_EUNSUPPORTED);
  cr_assert_eq(parse("{\"model_type\": \"gemma2\", " BASE ", \"layer_types\": [\"full_attention\"]}", &c, &e), QV_EFORMAT);
  cr_assert_eq(parse("{\"model_type\": \"gemma2\", " BASE ", \"layer_types\": [\"chunked_attention\", "
                     "\"full_attention\", \"full_attention\", \"full_attention\", \"full_attention\", "
                     "\"full_attention\"]}", &c, &e), QV_EUNSUPPORTED);
  cr_assert(strstr(e.msg, "chunked_attention"), "%s", e.msg);
  cr_assert_eq(parse("{\"model_type\": \"gemma3_text\", " BASE ", \"use_bidirectional_attention\": true}", &c, &e),
               QV_EUNSUPPORTED);
}

Test(loader_families, moe_layers) {
  qv_model_config c;
  qv_error e;
  cr_assert_eq(parse("{\"model_type\": \"qwen3_moe\", " BASE ", \"num_experts\": 16, \"num_experts_per_tok\": 4, "
                     "\"moe_intermediate_size\": 32, \"decoder_sparse_step\": 2, \"mlp_only_layers\": [3], "
                     "\"norm_topk_prob\": true}", &c, &e), 0, "%s", e.msg);
  /* MoE where (l + 1) % 2 == 0 and l not in mlp_only_layers: layers 1, 5. */
  for (int l = 0; l < 6; l++) cr_assert_eq(!!(c.layer_flags[l] & QV_LAYER_MOE), l == 1 || l == 5, "layer %d", l);
  cr_assert_eq(c.route_norm, 1);
  cr_assert_eq(c.moe_ffn_dim, 32);
  cr_assert_eq(parse("{\"model_type\": \"mixtral\", " BASE ", \"num_local_experts\": 8, \"num_experts_per_tok\": 9}",
                     &c, &e), QV_EFORMAT);
  cr_assert_eq(parse("{\"model_type\": \"mixtral\", " BASE ", \"num_local_experts\": 8, \"num_experts_per_tok\": 2}",
                     &c, &e), 0, "%s", e.msg);
  cr_assert_eq(c.route_kind, QV_ROUTE_SOFTMAX_TOPK);
  cr_assert_eq(c.route_norm, 1);
  cr_assert_eq(parse("{\"model_type\": \"gpt_oss\", " BASE ", \"num_local_experts\": 4, \"experts_per_token\": 2, "
                     "\"quantization_config\": {\"quant_method\": \"mxfp4\"}, \"rope_scaling\": {\"rope_type\": \"yarn\", "
                     "\"factor\": 32.0, \"original_max_position_embeddings\": 4096, \"truncate\": false}}", &c, &e), 0,
               "%s", e.msg);
  cr_assert_eq(c.experts_mxfp4, 1);
  cr_assert_eq(c.yarn_no_truncate, 1);
  cr_assert_eq(c.route_kind, QV_ROUTE_TOPK_SOFTMAX);
  cr_assert_eq(c.n_expert_used, 2);
  cr_assert(c.attn_sinks && c.qkv_bias && c.o_bias);
}

Test(loader_families, longrope_choice) {
  qv_model_config c;
  qv_error e;
  /* head_dim 8, partial 0.5: 2 factors. max_position_embeddings 4096 > original 1024: long. */
  const char *j = "{\"model_type\": \"phi3\", " BASE ", \"max_position_embeddings\": 4096, "
                  "\"original_max_position_embeddings\": 1024, \"partial_rotary_factor\": 0.5, "
                  "\"rope_scaling\": {\"type\": \"longrope\", \"short_factor\": [1.0, 2.0], \"long_factor\": [3.0, 5.0]}}";
  cr_assert_eq(parse(j, &c, &e), 0, "%s", e.msg);
  cr_assert_eq(c.rot_dim, 4);
  cr_assert_eq(c.rope_long, 1);
  cr_assert_float_eq(c.rope_ext[1], 5.0f, 1e-6);
  cr_assert_float_eq(c.rope_ext_attn, (float)sqrt(1 + log(4.0) / log(1024.0)), 1e-6);
  float inv[2], af;
  model_rope_inv_freq(&c, c.rot_dim, inv, &af);
  cr_assert_float_eq(inv[1], 1.0f / (5.0f * powf(10000.0f, 0.5f)), 1e-9);
  cr_assert_float_eq(af, c.rope_ext_attn, 1e-7);
  const char *s = "{\"model_type\": \"phi3\", " BASE ", \"max_position_embeddings\": 1024, "
                  "\"original_max_position_embeddings\": 1024, \"partial_rotary_factor\": 0.5, "
                  "\"rope_scaling\": {\"type\": \"longrope\", \"short_factor\": [1.0, 2.0], \"long_factor\": [3.0, 5.0]}}";
  cr_assert_eq(parse(s, &c, &e), 0, "%s", e.msg);
  cr_assert_eq(c.rope_long, 0);
  cr_assert_float_eq(c.rope_ext[1], 2.0f, 1e-6);
  cr_assert_float_eq(c.rope_ext_attn, 1.0f, 1e-7);
  const char *bad = "{\"model_type\": \"phi3\", " BASE ", \"original_max_position_embeddings\": 1024, "
                    "\"rope_scaling\": {\"type\": \"longrope\", \"short_factor\": [1.0], \"long_factor\": [3.0]}}";
  cr_assert_eq(parse(bad, &c, &e), QV_EFORMAT);
  cr_assert(strstr(e.msg, "factor"), "%s", e.msg);
}

Test(loader_families, refusals_and_dynamic) {
  qv_model_config c;
  qv_error e;
  cr_assert_eq(parse("{\"model_type\": \"llama\", " BASE ", \"architectures\": [\"LlamaForSequenceClassification\"]}",
                     &c, &e), QV_EUNSUPPORTED);
  cr_assert(strstr(e.msg, "LlamaForSequenceClassification"), "%s", e.msg);
  cr_assert_eq(parse("{\"model_type\": \"llama\", " BASE ", \"architectures\": [\"LlamaForCausalLM\"]}", &c, &e), 0);
  cr_assert_eq(parse("{\"model_type\": \"llama\", " BASE ", \"quantization_config\": {\"quant_method\": \"gptq\", "
                     "\"bits\": 4}}", &c, &e), QV_EUNSUPPORTED);
  cr_assert(strstr(e.msg, "gptq"), "%s", e.msg);
  cr_assert_eq(parse("{\"model_type\": \"llama\", " BASE ", \"quantization_config\": {\"quant_method\": \"mxfp4\"}}",
                     &c, &e), QV_EUNSUPPORTED);
  cr_assert_eq(parse("{\"model_type\": \"llama\", " BASE ", \"quantization_config\": 3}", &c, &e), QV_EFORMAT);
  cr_assert_eq(parse("{\"model_type\": \"llama\", " BASE ", \"rope_scaling\": {\"rope_type\": \"dynamic\"}}", &c, &e),
               QV_EFORMAT);
  cr_assert(strstr(e.msg, "factor"), "%s", e.msg);
  /* Dynamic with a factor: the unscaled table (transformers' within max_position_embeddings). */
  cr_assert_eq(parse("{\"model_type\": \"llama\", " BASE ", \"rope_scaling\": {\"rope_type\": \"dynamic\", "
                     "\"factor\": 4.0}}", &c, &e), 0, "%s", e.msg);
  float inv[4], af;
  model_rope_inv_freq(&c, 8, inv, &af);
  for (int i = 0; i < 4; i++) cr_assert_float_eq(inv[i], 1.0f / powf(10000.0f, (float)(2 * i) / 8.0f), 1e-9);
  cr_assert_float_eq(af, 1.0f, 0);
  cr_assert_eq(parse("{\"model_type\": \"bert\", " BASE "}", &c, &e), QV_EUNSUPPORTED);
  cr_assert(strstr(e.msg, "gpt_oss"), "the error lists the supported types: %s", e.msg);
}

/* A temp copy of a fixture (symlinks) whose config.json is the fixture's with `edit` applied. */

static void fixture_with_config(const char *name, void (*edit)(cJSON *), char *tmp) {
  char rel[1024], dir[PATH_MAX], from[PATH_MAX + 300], to[600];
  const char *src = getenv("QV_SOURCE_DIR");
  snprintf(rel, sizeof rel, "%s/tests/fixtures/models/%s", src ? src : ".", name);
  cr_assert(realpath(rel, dir), "realpath %s", rel);
  strcpy(tmp, "/tmp/qv-fam-XXXXXX");
  cr_assert(mkdtemp(tmp));
  DIR *d = opendir(dir);
  cr_assert(d);
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.' || !strcmp(e->d_name, "config.json")) continue;
    snprintf(from, sizeof from, "%s/%s", dir, e->d_name);
    snprintf(to, sizeof to, "%s/%s", tmp, e->d_name);
    cr_assert_eq(symlink(from, to), 0);
  }
  closedir(d);
  snprintf(from, sizeof from, "%s/config.json", dir);
  char *text = test_slurp(from, NULL);
  cr_assert(text);
  cJSON *root = cJSON_Parse(text);
  free(text);
  edit(root);
  char *out = cJSON_Print(root);
  cJSON_Delete(root);
  snprintf(to, sizeof to, "%s/config.json", tmp);
  FILE *f = fopen(to, "w");
  cr_assert(f);
  fputs(out, f);
  fclose(f);
  free(out);
}

static void remove_tmp(const char *tmp) {
  DIR *d = opendir(tmp);
  struct dirent *e;
  char p[600];
  while (d && (e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    snprintf(p, sizeof p, "%s/%s", tmp, e->d_name);
    unlink(p);
  }
  if (d) closedir(d);
  rmdir(tmp);
}

static int load_dir(const char *dir, qv_error *err) {
  qv_backend *be = NULL;
  cr_assert_eq(qv_backend_create("cpu", &(qv_backend_opts){.n_threads = 1}, &be, err), 0);
  qv_model *m = NULL;
  int rc = qv_model_load(dir, be, NULL, &m, err);
  qv_model_destroy(m);
  qv_backend_destroy(be);
  return rc;
}

static void drop_quant(cJSON *c) { cJSON_DeleteItemFromObject(c, "quantization_config"); }
static void add_mxfp4(cJSON *c) {
  cJSON *q = cJSON_AddObjectToObject(c, "quantization_config");
  cJSON_AddStringToObject(q, "quant_method", "mxfp4");
}

Test(loader_families, quantization_config_must_match_the_weights) {
  char tmp[64];
  qv_error e = {0};
  /* MXFP4 blocks in the file, no quantization_config: the dense experts are missing. */
  fixture_with_config("gpt-oss-mxfp4", drop_quant, tmp);
  int rc = load_dir(tmp, &e);
  remove_tmp(tmp);
  cr_assert_eq(rc, QV_ENOTFOUND, "%s", e.msg);
  cr_assert(strstr(e.msg, "experts.gate_up_proj"), "%s", e.msg);
  /* A quantization_config over dense experts: the blocks are missing. */
  memset(&e, 0, sizeof e);
  fixture_with_config("gpt-oss", add_mxfp4, tmp);
  rc = load_dir(tmp, &e);
  remove_tmp(tmp);
  cr_assert_eq(rc, QV_ENOTFOUND, "%s", e.msg);
  cr_assert(strstr(e.msg, "_blocks") && strstr(e.msg, "mxfp4"), "%s", e.msg);
}

/* ---- corrupted family checkpoints: every load fails with a message or runs a forward ---- */

static const char *g_key;      /* fixture_with_config edit: set g_key to g_val (NULL: delete) */
static const char *g_val;
static void set_key(cJSON *c) {
  cJSON_DeleteItemFromObject(c, g_key);
  if (g_val) {
    cJSON *v = cJSON_Parse(g_val);
    cr_assert(v, "bad test JSON %s", g_val);
    cJSON_AddItemToObject(c, g_key, v);
  }
}

/* Loads dir; on success runs one 3-token forward. Returns the load's code. */
static int load_and_run(const char *dir, qv_error *err) {
  qv_backend *be = NULL;
  cr_assert_eq(qv_backend_create("cpu", &(qv_backend_opts){.n_threads = 1}, &be, err), 0);
  qv_model *m = NULL;
  qv_model_opts mo = {.max_batch_tokens = 8, .max_logits = 8};
  int rc = qv_model_load(dir, be, &mo, &m, err);
  if (rc == 0) {
    cr_assert_eq(qv_model_kv_init(m, 4, 4, err), 0, "%s", err->msg);
    int32_t ids[3] = {3, 4, 5}, pos[3] = {0, 1, 2}, slots[3] = {0, 1, 2}, qs[2] = {0, 3}, ctx[1] = {3}, bt[1] = {0};
    int32_t li[1] = {2};
    qv_batch b = {.n_tokens = 3, .n_seqs = 1, .n_logits = 1, .token_ids = ids, .positions = pos,
                  .slot_mapping = slots, .seq_q_start = qs, .seq_ctx_len = ctx, .block_tables = bt,
                  .max_blocks = 1, .logits_idx = li};
    float *logits = malloc(sizeof(float) * (size_t)qv_model_get_config(m)->vocab_size);
    qv_error fe = {0};
    qv_model_forward(m, &b, logits, &fe); /* any result but a crash */
    free(logits);
  } else {
    cr_assert(err->msg[0], "load failed (%d) without a message", rc);
  }
  qv_model_destroy(m);
  qv_backend_destroy(be);
  return rc;
}

Test(loader_families, corrupted_family_configs, .timeout = 120) {
  static const struct {
    const char *fixture, *key, *val;
    int must_fail;
  } cases[] = {
      {"gpt-oss-mxfp4", "num_local_experts", "0", 1},
      {"gpt-oss-mxfp4", "num_local_experts", "100000", 1},
      {"gpt-oss-mxfp4", "num_local_experts", "\"4\"", 1},
      {"gpt-oss-mxfp4", "num_experts_per_tok", "9", 1},
      {"gpt-oss-mxfp4", "num_local_experts", "8", 1},        /* more experts than the file holds */
      {"gpt-oss-mxfp4", "intermediate_size", "48", 1},       /* blocks no longer match */
      {"gpt-oss-mxfp4", "layer_types", "[\"sliding_attention\"]", 1},
      {"gpt-oss-mxfp4", "layer_types", "[1, 2]", 1},
      {"gpt-oss-mxfp4", "sliding_window", "-4", 1},
      {"gpt-oss-mxfp4", "quantization_config", "{\"quant_method\": 7}", 1},
      {"gpt-oss-mxfp4", "quantization_config", "[]", 1},
      {"gpt-oss-mxfp4", "swiglu_limit", "-1", 1},
      {"gpt-oss-mxfp4", "sliding_window", "0", 1},           /* sliding layers without a window */
      {"gemma2", "query_pre_attn_scalar", "0", 1},
      {"gemma2", "attn_logit_softcapping", "\"x\"", 1},
      {"gemma2", "hidden_activation", "\"gelu\"", 1},
      {"gemma3-multimodal", "text_config", "3", 1},
      {"gemma3-multimodal", "text_config", "{}", 1},
      {"gemma3", "rope_local_base_freq", "-1", 1},
      {"gemma3", "sliding_window_pattern", "0", 1},
      {"phi3-longrope-long", "rope_scaling", "{\"type\": \"longrope\", \"short_factor\": [1, 2], \"long_factor\": [1]}", 1},
      {"phi3-longrope-long", "rope_scaling", "{\"type\": \"longrope\", \"short_factor\": [1, 1, 1, 1], "
                                             "\"long_factor\": [1, -1, 1, 1]}", 1},
      {"phi3-longrope-long", "partial_rotary_factor", "0.01", 1},
      {"qwen3-moe", "moe_intermediate_size", "0", 1},
      {"qwen3-moe", "mlp_only_layers", "[7]", 1},
      {"qwen3-moe", "mlp_only_layers", "[]", 1},             /* layer 1 becomes MoE: its experts are missing */
      {"qwen3-moe", "decoder_sparse_step", "0", 1},
      {"mixtral", "num_experts_per_tok", "0", 1},
      {"qwen3-moe-nonorm", "norm_topk_prob", "true", 0},     /* valid: just another routing */
  };
  char tmp[64];
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    g_key = cases[i].key;
    g_val = cases[i].val;
    fixture_with_config(cases[i].fixture, set_key, tmp);
    qv_error e = {0};
    int rc = load_and_run(tmp, &e);
    remove_tmp(tmp);
    if (cases[i].must_fail) cr_expect_neq(rc, 0, "%s with %s = %s loaded", cases[i].fixture, g_key, g_val);
    else cr_expect_eq(rc, 0, "%s with %s = %s: %s", cases[i].fixture, g_key, g_val, e.msg);
  }
}

/* Seeded byte flips over each family's model.safetensors (header and data). */
Test(loader_families, family_safetensors_byte_flips, .timeout = 240) {
  const char *fixtures[] = {"gpt-oss-mxfp4", "gemma3", "phi3-longrope-short", "qwen3-moe"};
  char tmp[64], path[700];
  int refused = 0, loaded = 0;
  for (size_t f = 0; f < sizeof fixtures / sizeof fixtures[0]; f++) {
    g_key = "unused_key";
    g_val = NULL;
    fixture_with_config(fixtures[f], set_key, tmp);
    snprintf(path, sizeof path, "%s/model.safetensors", tmp);
    size_t len = 0;
    char *orig = test_slurp(path, &len);
    cr_assert(orig && len > 64);
    uint64_t hdr = 0;
    memcpy(&hdr, orig, 8);
    char *buf = malloc(len);
    for (uint32_t seed = 1; seed <= 24; seed++) {
      memcpy(buf, orig, len);
      uint32_t s = seed * 2654435761u;
      size_t span = seed % 3 == 0 ? len : (size_t)(8 + hdr < len ? 8 + hdr : len);
      for (int k = 0; k < 4; k++) {
        s = s * 1664525u + 1013904223u;
        buf[(s >> 4) % span] ^= (char)(1 + (s >> 24) % 255);
      }
      unlink(path);
      FILE *o = fopen(path, "wb");
      cr_assert(o);
      cr_assert_eq(fwrite(buf, 1, len, o), len);
      fclose(o);
      qv_error e = {0};
      if (load_and_run(tmp, &e)) refused++;
      else loaded++;
    }
    free(buf);
    free(orig);
    remove_tmp(tmp);
  }
  fprintf(stderr, "family byte flips: %d refused, %d loaded and ran\n", refused, loaded);
  cr_expect_gt(refused, 0);
}
