/* Hugging Face config.json and generation_config.json -> qv_model_config, validated: every
 * size positive and bounded, heads divisible, a supported model_type and rope_scaling. */
#ifndef QV_LOADER_HF_CONFIG_H
#define QV_LOADER_HF_CONFIG_H

#include "models/model.h"
#include "quiver/error.h"

/* Reads <dir>/config.json and, when present, <dir>/generation_config.json (whose eos ids win). */
int hf_config_load(const char *dir, qv_model_config *cfg, qv_error *err);

/* Parses config.json text (len bytes); exposed for tests. */
int hf_config_parse(const char *text, size_t len, qv_model_config *cfg, qv_error *err);
/* Applies generation_config.json text to cfg; exposed for tests. */
int hf_generation_config_parse(const char *text, size_t len, qv_model_config *cfg, qv_error *err);


#endif
