/* qv_engine_create: the adapter from the engine's internal ops tables to a loaded qv_model and
 * a qv_tokenizer. Kept in its own file so the engine core (and its tests with fake models)
 * links without the model and tokenizer code. */
#include <string.h>
#include "engine/engine_internal.h"
#include "models/model.h"

static int model_kv_init(void *ctx, int32_t n_blocks, int32_t block_size, qv_error *err) {
  return qv_model_kv_init(ctx, n_blocks, block_size, err);
}

static int model_forward(void *ctx, const qv_batch *b, float *logits, qv_error *err) {
  return qv_model_forward(ctx, b, logits, err);
}

static int detok_create(void *ctx, int skip_special, void **out) {
  qv_detok *d = NULL;
  int rc = qv_detok_create(ctx, skip_special ? QV_TOK_SKIP_SPECIAL : 0, &d);
  *out = d;
  return rc;
}

static int detok_push(void *d, int32_t id, const char **text, size_t *len) {
  return qv_detok_push(d, id, text, len);
}

static int detok_flush(void *d, const char **text, size_t *len) { return qv_detok_flush(d, text, len); }

static int detok_prime(void *d, const int32_t *ids, size_t n_ids) { return qv_detok_prime(d, ids, n_ids); }

static void detok_destroy(void *d) { qv_detok_destroy(d); }

int qv_engine_create(struct qv_model *model, const qv_tokenizer *tok, const qv_engine_opts *opts,
                     qv_engine **out, qv_error *err) {
  if (!model || !out) return qv_error_set(err, QV_EINVAL, "engine: no model");
  const qv_model_config *c = qv_model_get_config(model);
  engine_model_ops m = {
      .ctx = model,
      .vocab_size = c->vocab_size,
      .max_pos = c->max_pos,
      .n_eos = c->n_eos < ENGINE_MAX_EOS ? c->n_eos : ENGINE_MAX_EOS,
      .kv_bytes_per_token = qv_model_kv_bytes_per_token(model),
      .kv_init = model_kv_init,
      .forward = model_forward,
  };
  for (int32_t i = 0; i < m.n_eos; i++) m.eos_ids[i] = c->eos_ids[i];
  /* A backend with its own memory sizes the KV pool from what is free there after the weights. */
  qv_backend *be = qv_model_backend(model);
  size_t free_b = 0, total_b = 0;
  if (strcmp(be->ops->name, "cpu") && be->ops->mem_info && be->ops->mem_info(be, &free_b, &total_b) == 0)
    m.dev_free_bytes = (int64_t)free_b;
  /* Tensor-parallel GPU ranks each keep their share of a token's KV on their own device: the pool
   * is as large as the fullest rank's device allows. The free memory measured is device 0's
   * (rank 0's, with its weights loaded), taken as what every rank's device has free. */
  int64_t kv_rank_max = 0, w_r = 0, kv_r = 0;
  for (int32_t r = 0; m.dev_free_bytes > 0 && r < qv_model_tp_size(model); r++)
    if (qv_model_tp_rank_bytes(model, r, &w_r, &kv_r) == 0 && kv_r > kv_rank_max) kv_rank_max = kv_r;
  if (kv_rank_max > 0 && m.kv_bytes_per_token > kv_rank_max)
    m.dev_free_bytes = (int64_t)((double)m.dev_free_bytes * (double)m.kv_bytes_per_token / (double)kv_rank_max);
  engine_text_ops t = {
      .ctx = (void *)tok,
      .detok_create = detok_create,
      .detok_push = detok_push,
      .detok_flush = detok_flush,
      .detok_destroy = detok_destroy,
      .detok_prime = detok_prime,
  };
  return engine_create_ops(&m, tok ? &t : NULL, opts, 0, out, err);
}
