/* quiver-tiny: the embedded default model. A small Llama whose weights are generated in-process
 * from a fixed seed (deterministic on every machine), with the byte-level tokenizer of
 * qv_tokenizer_create_bytes. It exists so a fresh install answers at once with nothing
 * downloaded; its text is meaningless. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "models/model_impl.h"

void tiny_config(qv_model_config *c) {
  memset(c, 0, sizeof *c);
  strcpy(c->arch, "quiver-tiny");
  c->vocab_size = 259; /* <unk>, <s>, </s>, then the 256 byte values */
  c->dim = 64;
  c->n_layer = 2;
  c->n_head = 4;
  c->n_kv_head = 2;
  c->head_dim = 16;
  c->ffn_dim = 160;
  c->max_pos = 4096;
  c->norm_eps = 1e-5f;
  c->rope_theta = 10000.0f;
  c->rope_factor = 1.0f;
  c->rope_orig_max_pos = c->max_pos;
  c->tie_embeddings = 1;
  c->bos_id = 1;
  c->eos_ids[0] = 2;
  c->n_eos = 1;
  strcpy(c->weight_dtype, "F32");
}

typedef struct tiny_src {
  float *buf;
  size_t cap;
} tiny_src;

static const void *tiny_get(model_weight_src *src, const char *name, int64_t rows, int64_t cols, qv_dtype *dtype,
                            qv_error *err) {
  tiny_src *t = src->ctx;
  /* Only what a tied, bias-free Llama needs exists. */
  if (strstr(name, ".bias") || strstr(name, "q_norm") || strstr(name, "k_norm") || !strcmp(name, "lm_head.weight"))
    return NULL;
  size_t n = (size_t)rows * (size_t)cols;
  if (n > t->cap) {
    float *b = realloc(t->buf, n * sizeof *b);
    if (!b) {
      qv_error_set(err, QV_ENOMEM, "quiver-tiny: out of memory");
      return NULL;
    }
    t->buf = b;
    t->cap = n;
  }
  uint64_t seed = 0x717569766572ull; /* "quiver" */
  for (const char *p = name; *p; p++) seed = seed * 131 + (unsigned char)*p;
  int is_norm = strstr(name, "norm") != NULL;
  float scale = is_norm ? 0.1f : 1.7f / sqrtf((float)cols);
  for (size_t i = 0; i < n; i++) {
    float r = (float)(qv_splitmix64(&seed) >> 40) / (float)(1ull << 24) * 2.0f - 1.0f; /* [-1, 1) */
    t->buf[i] = is_norm ? 1.0f + scale * r : scale * r;
  }
  *dtype = QV_DTYPE_F32;
  return t->buf;
}

int tiny_weight_src_init(model_weight_src *src) {
  tiny_src *t = calloc(1, sizeof *t);
  if (!t) return QV_ENOMEM;
  src->get = tiny_get;
  src->ctx = t;
  return 0;
}

void tiny_weight_src_deinit(model_weight_src *src) {
  tiny_src *t = src->ctx;
  if (t) free(t->buf);
  free(t);
  src->ctx = NULL;
}
