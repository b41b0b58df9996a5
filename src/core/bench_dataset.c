/* Benchmark dataset parsing and sampling rules (see bench_dataset.h). */
#include "core/bench_dataset.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void bench_texts_free(bench_text *t, size_t n) {
  if (!t) return;
  for (size_t i = 0; i < n; i++) {
    free(t[i].prompt);
    free(t[i].completion);
  }
  free(t);
}

static char *dup_str(const char *s) {
  size_t n = strlen(s);
  char *d = malloc(n + 1);
  if (d) memcpy(d, s, n + 1);
  return d;
}

int bench_sharegpt_parse(const char *json, size_t len, bench_text **out, size_t *n, size_t *n_skipped,
                         qv_error *err) {
  *out = NULL;
  *n = 0;
  if (n_skipped) *n_skipped = 0;
  cJSON *root = cJSON_ParseWithLength(json, len);
  if (!root) return qv_error_set(err, QV_EFORMAT, "not valid JSON (near byte %zu)",
                                 cJSON_GetErrorPtr() ? (size_t)(cJSON_GetErrorPtr() - json) : (size_t)0);
  if (!cJSON_IsArray(root)) {
    cJSON_Delete(root);
    return qv_error_set(err, QV_EFORMAT, "a ShareGPT file is a JSON array of conversations");
  }
  int total = cJSON_GetArraySize(root);
  bench_text *t = calloc(total > 0 ? (size_t)total : 1, sizeof *t);
  if (!t) {
    cJSON_Delete(root);
    return qv_error_set(err, QV_ENOMEM, "out of memory reading %d conversations", total);
  }
  size_t k = 0, skipped = 0;
  const cJSON *entry;
  cJSON_ArrayForEach(entry, root) {
    const cJSON *conv = cJSON_GetObjectItemCaseSensitive(entry, "conversations");
    const cJSON *v0 = NULL, *v1 = NULL;
    if (cJSON_IsArray(conv) && cJSON_GetArraySize(conv) >= 2) {
      v0 = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(conv, 0), "value");
      v1 = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(conv, 1), "value");
    }
    if (!cJSON_IsString(v0) || !cJSON_IsString(v1)) {
      skipped++;
      continue;
    }
    t[k].prompt = dup_str(v0->valuestring);
    t[k].completion = dup_str(v1->valuestring);
    t[k].output_len = -1;
    k++;
    if (!t[k - 1].prompt || !t[k - 1].completion) {
      bench_texts_free(t, k);
      cJSON_Delete(root);
      return qv_error_set(err, QV_ENOMEM, "out of memory copying conversations");
    }
  }
  cJSON_Delete(root);
  *out = t;
  *n = k;
  if (n_skipped) *n_skipped = skipped;
  return 0;
}

int bench_jsonl_parse(const char *buf, size_t len, bench_text **out, size_t *n, qv_error *err) {
  *out = NULL;
  *n = 0;
  size_t cap = 0, k = 0, line_no = 0;
  bench_text *t = NULL;
  size_t i = 0;
  int rc = 0;
  while (i < len) {
    size_t j = i;
    while (j < len && buf[j] != '\n') j++;
    line_no++;
    size_t a = i, b = j;
    while (a < b && (buf[a] == ' ' || buf[a] == '\t' || buf[a] == '\r')) a++;
    while (b > a && (buf[b - 1] == ' ' || buf[b - 1] == '\t' || buf[b - 1] == '\r')) b--;
    i = j + 1;
    if (a == b) continue;
    cJSON *v = cJSON_ParseWithLength(buf + a, b - a);
    const char *prompt = NULL;
    int32_t olen = -1;
    if (cJSON_IsString(v)) {
      prompt = v->valuestring;
    } else if (cJSON_IsObject(v)) {
      const cJSON *p = cJSON_GetObjectItemCaseSensitive(v, "prompt");
      const cJSON *o = cJSON_GetObjectItemCaseSensitive(v, "output_len");
      if (!o) o = cJSON_GetObjectItemCaseSensitive(v, "max_tokens");
      if (cJSON_IsString(p)) prompt = p->valuestring;
      if (o) {
        double d = cJSON_IsNumber(o) ? o->valuedouble : -1;
        if (!(d >= 1 && d <= 1e9 && d == floor(d))) {
          cJSON_Delete(v);
          rc = qv_error_set(err, QV_EFORMAT, "line %zu: output_len must be an integer >= 1", line_no);
          goto fail;
        }
        olen = (int32_t)d;
      }
    }
    if (!prompt) {
      cJSON_Delete(v);
      rc = qv_error_set(err, QV_EFORMAT, "line %zu: expected a JSON string or an object with a string \"prompt\"",
                        line_no);
      goto fail;
    }
    if (k == cap) {
      size_t nc = cap ? cap * 2 : 64;
      bench_text *nt = realloc(t, nc * sizeof *nt);
      if (!nt) {
        cJSON_Delete(v);
        rc = qv_error_set(err, QV_ENOMEM, "out of memory reading prompts");
        goto fail;
      }
      t = nt;
      cap = nc;
    }
    t[k].prompt = dup_str(prompt);
    t[k].completion = NULL;
    t[k].output_len = olen;
    cJSON_Delete(v);
    if (!t[k].prompt) {
      rc = qv_error_set(err, QV_ENOMEM, "out of memory reading prompts");
      goto fail;
    }
    k++;
  }
  *out = t;
  *n = k;
  return 0;
fail:
  bench_texts_free(t, k);
  return rc;
}

int bench_sharegpt_keep(int64_t prompt_len, int64_t output_len, int fixed_output_len) {
  if (prompt_len < 4) return 0;
  if (!fixed_output_len && output_len < 4) return 0;
  if (prompt_len > 1024) return 0;
  if (prompt_len + output_len > 2048) return 0;
  return 1;
}

int bench_random_ranges(int32_t input_len, int32_t output_len, double range_ratio, int32_t n_special,
                        bench_len_range *out, qv_error *err) {
  if (!(range_ratio >= 0 && range_ratio < 1)) return qv_error_set(err, QV_EINVAL, "--range-ratio must be in [0, 1)");
  if (input_len < 1 || output_len < 1) return qv_error_set(err, QV_EINVAL, "--input-len and --output-len must be >= 1");
  if (n_special < 0) n_special = 0;
  double real_in = input_len > n_special ? (double)(input_len - n_special) : 0.0;
  out->in_lo = (int32_t)floor(real_in * (1 - range_ratio));
  out->in_hi = (int32_t)ceil(real_in * (1 + range_ratio));
  double lo = floor((double)output_len * (1 - range_ratio)), hi = ceil((double)output_len * (1 + range_ratio));
  out->out_lo = lo < 1 ? 1 : (int32_t)lo;
  out->out_hi = hi < 1 ? 1 : (int32_t)hi;
  if (out->in_hi < 1) return qv_error_set(err, QV_EINVAL, "--input-len leaves no room after %d special tokens", n_special);
  if (out->in_lo < 1) out->in_lo = 1;
  return 0;
}
