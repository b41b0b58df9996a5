/* config.json / generation_config.json parsing: the fields each architecture uses, rope
 * scaling variants (classic and transformers-5 keys), and clear errors on bad input. */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "loader/hf_config.h"
#include "models/model_impl.h"

static int parse(const char *json, qv_model_config *c, qv_error *e) {
  return hf_config_parse(json, strlen(json), c, e);
}

#define BASE "\"vocab_size\": 100, \"hidden_size\": 64, \"num_hidden_layers\": 2, " \
             "\"num_attention_heads\": 8, \"intermediate_size\": 128"

Test(loader_config, llama_defaults) {
  qv_model_config c;
  qv_error e = {0};
  cr_assert_eq(parse("{\"model_type\": \"llama\", " BASE ", \"num_key_value_heads\": 2, \"eos_token_id\": [5, 7]}", &c, &e), 0, "%s", e.msg);
  cr_assert_str_eq(c.arch, "llama");
  cr_assert_eq(c.head_dim, 8);
  cr_assert_eq(c.n_kv_head, 2);
  cr_assert_eq(c.n_eos, 2);
  cr_assert_eq(c.eos_ids[1], 7);
  cr_assert_eq(c.sliding_window, 0);
  cr_assert_eq(c.rope_scaling, QV_ROPE_SCALING_NONE);
  cr_assert_float_eq(c.rope_theta, 10000.0f, 1e-3);
  cr_assert_eq(c.qkv_bias, 0);
  cr_assert_eq(c.tie_embeddings, 0);
}

Test(loader_config, qwen_and_mistral_flags) {
  qv_model_config c;
  qv_error e = {0};
  cr_assert_eq(parse("{\"model_type\": \"qwen2\", " BASE ", \"sliding_window\": 32, \"use_sliding_window\": false, \"tie_word_embeddings\": true}", &c, &e), 0, "%s", e.msg);
  cr_assert_eq(c.qkv_bias, 1);
  cr_assert_eq(c.o_bias, 0);
  cr_assert_eq(c.sliding_window, 0);
  cr_assert_eq(c.tie_embeddings, 1);
  cr_assert_eq(parse("{\"model_type\": \"qwen3\", " BASE ", \"head_dim\": 16}", &c, &e), 0, "%s", e.msg);
  cr_assert_eq(c.qk_norm, 1);
  cr_assert_eq(c.head_dim, 16);
  cr_assert_eq(parse("{\"model_type\": \"mistral\", " BASE ", \"sliding_window\": 24}", &c, &e), 0, "%s", e.msg);
  cr_assert_eq(c.sliding_window, 24);
  cr_assert_eq(parse("{\"model_type\": \"mistral\", " BASE ", \"sliding_window\": null}", &c, &e), 0, "%s", e.msg);
  cr_assert_eq(c.sliding_window, 0);
  cr_assert_eq(parse("{\"model_type\": \"mistral\", " BASE "}", &c, &e), 0, "%s", e.msg);
  cr_assert_eq(c.sliding_window, 4096);
}

Test(loader_config, rope_scaling_variants) {
  qv_model_config c;
  qv_error e = {0};
  cr_assert_eq(parse("{\"model_type\": \"llama\", " BASE ", \"rope_theta\": 500000.0, \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0, "
                     "\"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192}}", &c, &e), 0, "%s", e.msg);
  cr_assert_eq(c.rope_scaling, QV_ROPE_SCALING_LLAMA3);
  cr_assert_eq(c.rope_orig_max_pos, 8192);
  float inv[4], af;
  model_rope_inv_freq(&c, 8, inv, &af);
  cr_assert_float_eq(af, 1.0f, 1e-6);
  /* Highest frequency (wavelength 2*pi) is kept; the lowest is divided by the factor. */
  cr_assert_float_eq(inv[0], 1.0f, 1e-6);
  cr_assert_float_eq(inv[3], powf(500000.0f, -6.0f / 8.0f) / 8.0f, 1e-9);
  cr_assert_eq(parse("{\"model_type\": \"llama\", " BASE ", \"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0}}", &c, &e), 0, "%s", e.msg);
  model_rope_inv_freq(&c, 8, inv, &af);
  cr_assert_float_eq(inv[1], powf(10000.0f, -2.0f / 8.0f) / 2.0f, 1e-7);
  cr_assert_eq(parse("{\"model_type\": \"qwen2\", " BASE ", \"rope_parameters\": {\"rope_type\": \"yarn\", \"rope_theta\": 1000.0, \"factor\": 4.0, "
                     "\"original_max_position_embeddings\": 64}}", &c, &e), 0, "%s", e.msg);
  cr_assert_eq(c.rope_scaling, QV_ROPE_SCALING_YARN);
  cr_assert_float_eq(c.rope_theta, 1000.0f, 1e-3);
  model_rope_inv_freq(&c, 8, inv, &af);
  cr_assert_float_eq(af, (float)(0.1 * log(4.0) + 1.0), 1e-6);
}

Test(loader_config, errors_are_clear) {
  qv_model_config c;
  qv_error e = {0};
  cr_assert_eq(parse("{\"model_type\": \"gpt2\", " BASE "}", &c, &e), QV_EUNSUPPORTED);
  cr_assert(strstr(e.msg, "gpt2"), "%s", e.msg);
  cr_assert_eq(parse("{\"model_type\": \"llama\", " BASE ", \"num_key_value_heads\": 3}", &c, &e), QV_EFORMAT);
  cr_assert(strstr(e.msg, "num_key_value_heads"), "%s", e.msg);
  cr_assert_eq(parse("{\"model_type\": \"llama\", \"vocab_size\": -4}", &c, &e), QV_EFORMAT);
  cr_assert(strstr(e.msg, "vocab_size"), "%s", e.msg);
  cr_assert_eq(parse("{\"model_type\": \"llama\", " BASE ", \"rope_scaling\": {\"rope_type\": \"longrope\"}}", &c, &e), QV_EUNSUPPORTED);
  cr_assert_eq(parse("{\"model_type\": \"llama\", " BASE ", \"eos_token_id\": \"x\"}", &c, &e), QV_EFORMAT);
  cr_assert_eq(parse("{\"model_type\": \"llama\", \"vocab_size\": 100, \"hidden_size\": 1e30, \"num_hidden_layers\": 2, "
                     "\"num_attention_heads\": 8, \"intermediate_size\": 128}", &c, &e), QV_EFORMAT);
  cr_assert_eq(parse("[1,2]", &c, &e), QV_EFORMAT);
  cr_assert_eq(parse("{\"model_type\": \"llama\", " BASE, &c, &e), QV_EFORMAT);
  cr_assert_eq(parse("", &c, &e), QV_EFORMAT);
}

Test(loader_config, generation_config_overrides_eos) {
  qv_model_config c;
  qv_error e = {0};
  cr_assert_eq(parse("{\"model_type\": \"llama\", " BASE ", \"eos_token_id\": 2}", &c, &e), 0);
  const char *g = "{\"eos_token_id\": [3, 4, 9], \"bos_token_id\": 1}";
  cr_assert_eq(hf_generation_config_parse(g, strlen(g), &c, &e), 0, "%s", e.msg);
  cr_assert_eq(c.n_eos, 3);
  cr_assert_eq(c.eos_ids[2], 9);
  cr_assert_eq(c.bos_id, 1);
  const char *bad = "{\"eos_token_id\": [3, 400]}";
  cr_assert_eq(hf_generation_config_parse(bad, strlen(bad), &c, &e), QV_EFORMAT);
}
