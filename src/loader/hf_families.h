/* config.json of the model families beyond Llama (Gemma 2/3, Phi-3, Mixtral, Qwen3-MoE,
 * gpt-oss), called by hf_config_parse; and the checks every config goes through. */
#ifndef QV_LOADER_HF_FAMILIES_H
#define QV_LOADER_HF_FAMILIES_H

#include <cjson/cJSON.h>

#include "models/model.h"
#include "quiver/error.h"

/* The qv_family of a model_type, or -1 when it is none of these families. */
int hf_family_lookup(const char *model_type);
/* Before the common parse: may replace *root (Gemma 3's multimodal config -> its text_config;
 * owned, the old root freed) and fills the defaults of transformers' config classes for keys
 * real checkpoints omit, and rewrites transformers 5's per-layer-type rope into classic keys. */
int hf_family_prepare(cJSON **root, int family, qv_error *err);
/* After the common parse (sizes, rope, biases): the family's own fields. */
int hf_family_parse(const cJSON *root, qv_model_config *c, qv_error *err);
/* Every config: "architectures" must be causal LMs; a quantization_config must be one quiver
 * reads (mxfp4 for gpt_oss; sets experts_mxfp4). */
int hf_config_check_common(const cJSON *root, qv_model_config *c, qv_error *err);

#endif
