/* GGUF models: the weight source over a gguf_model (src/loader/gguf_model.c) that hands the
 * Llama-family builder its tensors by Hugging Face name, and the describe path for `quiver info`.
 *
 * Matrices in a quantized type are handed over as raw blocks when the backend keeps quantized
 * weights (opts->dequantize unset); otherwise, and always for vectors (norms, biases), they are
 * dequantized once into a host buffer with the reference dequantizer (src/quant), so the exact
 * fp32 path computes on exactly the weights transformers dequantizes.
 *
 * Gemma 3 files go to the families builder (models/families.c). llama.cpp's converter stores
 * Gemma's norm weights as 1 + w; transformers subtracts the 1 in fp32 when it loads the file and
 * adds it back in the norm, so this source hands out w_file - 1 (fp32) and the builder's
 * (1 + w) gives the same bits transformers multiplies by. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loader/gguf_model.h"
#include "models/model_impl.h"
#include "quant/quant.h"

typedef struct gguf_src {
  gguf_model *g;
  const gguf_wt *last; /* handed out by the previous get(), released at the next */
  int keep_quant;
  int sandwich;   /* Gemma's four norms per layer (tensor names) */
  int norm_shift; /* norm weights are stored as 1 + w: hand out w */
  float *buf; /* dequantization scratch, grown */
  size_t cap;
} gguf_src;

static const void *gguf_src_get(model_weight_src *src, const char *name, int64_t rows, int64_t cols, qv_dtype *dtype,
                                qv_error *err) {
  gguf_src *s = src->ctx;
  char gname[128];
  if (gguf_model_hf_name(name, s->sandwich, gname, sizeof gname)) return NULL;
  const gguf_wt *w = gguf_model_find(s->g, gname);
  if (!w) return NULL;
  int ok = rows == 1 ? (w->n_dims == 1 && w->dims[0] == cols)
                     : (w->n_dims == 2 && w->dims[0] == cols && w->dims[1] == rows);
  if (!ok) {
    qv_error_set(err, QV_EFORMAT, "%s: tensor '%s' has shape [%lld, %lld, %lld, %lld] (ggml order), expected [%lld, %lld]",
                 w->file, gname, (long long)w->dims[0], (long long)w->dims[1], (long long)w->dims[2],
                 (long long)w->dims[3], (long long)cols, (long long)rows);
    return NULL;
  }
  s->last = NULL;
  size_t nl = strlen(name);
  int shift = s->norm_shift && rows == 1 && nl >= 11 && !strcmp(name + nl - 11, "norm.weight");
  if (!shift && (!qv_dtype_is_quant(w->dtype) || (s->keep_quant && rows > 1))) {
    s->last = w;
    *dtype = w->dtype;
    return w->data;
  }
  size_t n = (size_t)rows * (size_t)cols;
  if (n > s->cap) {
    float *b = realloc(s->buf, n * sizeof *b);
    if (!b) {
      qv_error_set(err, QV_ENOMEM, "out of memory dequantizing '%s'", gname);
      return NULL;
    }
    s->buf = b;
    s->cap = n;
  }
  size_t rb = qv_dtype_row_bytes(w->dtype, cols);
  for (int64_t r = 0; r < rows; r++) {
    const uint8_t *from = (const uint8_t *)w->data + (size_t)r * rb;
    float *to = s->buf + (size_t)r * (size_t)cols;
    if (qv_dtype_is_quant(w->dtype)) quant_dequant_row(w->dtype, from, to, cols);
    else qv_convert_to_f32(to, from, w->dtype, (size_t)cols);
  }
  if (shift)
    for (size_t i = 0; i < n; i++) s->buf[i] -= 1.0f;
  *dtype = QV_DTYPE_F32;
  return s->buf;
}

/* The builder copied [p, p + n): drop those file pages so peak memory stays near the resident
 * weights instead of weights + file. Only ranges inside the mapping (not the dequantization
 * buffer) are released. */
static void gguf_src_release(model_weight_src *src, const void *p, size_t n) {
  gguf_src *s = src->ctx;
  if (s->last && (const char *)p >= (const char *)s->last->data &&
      (const char *)p + n <= (const char *)s->last->data + s->last->n_bytes)
    gguf_model_release(p, n);
}

static int env_dequantize(void) {
  const char *e = getenv("QUIVER_DEQUANTIZE");
  return e && *e && strcmp(e, "0");
}

int gguf_model_load(const char *path, qv_backend *be, const qv_model_opts *opts, qv_model **out, qv_error *err) {
  gguf_model *g = NULL;
  int rc = gguf_model_open(path, &g, err);
  if (rc) return rc;
  qv_model_config cfg;
  if ((rc = gguf_model_config(g, &cfg, err))) {
    qv_error_prefix(err, "%s", gguf_model_file(g));
    gguf_model_close(g);
    return rc;
  }
  gguf_src s = {.g = g, .keep_quant = be->ops->quant_weights && !opts->dequantize && !env_dequantize(),
                .sandwich = cfg.sandwich_norm, .norm_shift = cfg.norm_plus_one};
  model_weight_src src = {.get = gguf_src_get, .release = gguf_src_release, .ctx = &s};
  rc = model_build(&cfg, &src, be, opts, out, err);
  if (rc == QV_ENOTFOUND) qv_error_prefix(err, "%s", gguf_model_file(g));
  free(s.buf);
  gguf_model_close(g);
  return rc;
}

int gguf_model_describe(const char *path, qv_model_desc *out, qv_error *err) {
  gguf_model *g = NULL;
  int rc = gguf_model_open(path, &g, err);
  if (rc) return rc;
  if ((rc = gguf_model_config(g, &out->cfg, err))) {
    qv_error_prefix(err, "%s", gguf_model_file(g));
    gguf_model_close(g);
    return rc;
  }
  out->n_file_tensors = gguf_model_n_tensors(g);
  for (int i = 0; i < out->n_file_tensors; i++) {
    const gguf_wt *w = gguf_model_tensor_at(g, i);
    out->file_bytes += (int64_t)w->n_bytes;
    if ((int)w->dtype < QV_DTYPE_COUNT) {
      out->type_bytes[w->dtype] += (int64_t)w->n_bytes;
      out->type_count[w->dtype]++;
    }
  }
  out->is_gguf = 1;
  char *tpl = NULL;
  qv_error e = {0};
  out->has_chat_template = gguf_model_chat_template(path, &tpl, &e) == 0;
  free(tpl);
  out->n_params = qv_model_config_n_params(&out->cfg);
  gguf_model_close(g);
  return 0;
}
