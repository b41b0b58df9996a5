/* Tokenizer access through the server under test or quiver's tokenizer library (see tok.h). */
#include "tok.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

/* Ordinary English prose: its tokens are plain text tokens in any vocabulary, so random prompts
 * built from them decode and re-encode cleanly. */
static const char k_corpus[] =
    "Once upon a time there was a little girl named Lily who loved to play outside in the sun. "
    "One day she saw a big red ball in the park and asked her mom if she could keep it. "
    "The quick brown fox jumps over the lazy dog while the farmer watches from his old wooden house. "
    "Scientists measure the weather every morning, and they write the numbers into a small green book. "
    "After dinner the children read stories about dragons, rivers, mountains, ships and friendly robots. "
    "Please remember to bring water, bread, apples, cheese and a warm coat for the long walk tomorrow. "
    "Numbers like 42, 1999 and 3.14 appear in many questions; people ask what, why, when and how.";

/* POSTs a JSON body to path and parses the JSON answer. */
static int post_json(bench_tok *t, const char *path, cJSON *body, cJSON **out, qv_error *err) {
  *out = NULL;
  char *s = cJSON_PrintUnformatted(body);
  if (!s) return qv_error_set(err, QV_ENOMEM, "out of memory");
  bench_http_req req = {"POST", path, s, strlen(s)};
  bench_http_resp resp;
  int rc = bench_http_call(t->http, &req, &resp, err);
  free(s);
  if (rc) return rc;
  if (resp.status != 200) {
    rc = qv_error_set(err, resp.status == 404 ? QV_EUNSUPPORTED : QV_EIO, "POST %s: HTTP %d: %.200s", path,
                      resp.status, resp.body);
    free(resp.body);
    return rc;
  }
  *out = cJSON_ParseWithLength(resp.body, resp.len);
  free(resp.body);
  if (!*out) return qv_error_set(err, QV_EFORMAT, "POST %s: the answer is not JSON", path);
  return 0;
}

int bench_tok_encode(bench_tok *t, const char *text, int add_special, int32_t **ids, size_t *n, qv_error *err) {
  *ids = NULL;
  *n = 0;
  if (t->lib) return qv_tokenizer_encode(t->lib, text, strlen(text), add_special ? QV_TOK_ADD_SPECIAL : 0, ids, n, err);
  cJSON *body = cJSON_CreateObject();
  if (!body || (t->model && !cJSON_AddStringToObject(body, "model", t->model)) ||
      !cJSON_AddStringToObject(body, "prompt", text) || !cJSON_AddBoolToObject(body, "add_special_tokens", add_special)) {
    cJSON_Delete(body);
    return qv_error_set(err, QV_ENOMEM, "out of memory");
  }
  cJSON *resp;
  int rc = post_json(t, "/tokenize", body, &resp, err);
  cJSON_Delete(body);
  if (rc) return rc;
  const cJSON *toks = cJSON_GetObjectItemCaseSensitive(resp, "tokens");
  if (!cJSON_IsArray(toks)) {
    cJSON_Delete(resp);
    return qv_error_set(err, QV_EFORMAT, "POST /tokenize: no \"tokens\" array in the answer");
  }
  int m = cJSON_GetArraySize(toks);
  int32_t *v = malloc((size_t)(m > 0 ? m : 1) * sizeof *v);
  if (!v) {
    cJSON_Delete(resp);
    return qv_error_set(err, QV_ENOMEM, "out of memory");
  }
  int k = 0;
  const cJSON *it;
  cJSON_ArrayForEach(it, toks) {
    /* llama-server may answer objects {"id":..,"piece":..}. */
    const cJSON *idv = cJSON_IsObject(it) ? cJSON_GetObjectItemCaseSensitive(it, "id") : it;
    if (!cJSON_IsNumber(idv) || idv->valuedouble < 0 || idv->valuedouble > 2147483647.0) {
      free(v);
      cJSON_Delete(resp);
      return qv_error_set(err, QV_EFORMAT, "POST /tokenize: token %d is not a valid id", k);
    }
    v[k++] = (int32_t)idv->valuedouble;
  }
  cJSON_Delete(resp);
  *ids = v;
  *n = (size_t)k;
  return 0;
}

int bench_tok_decode(bench_tok *t, const int32_t *ids, size_t n, char **text, qv_error *err) {
  *text = NULL;
  if (t->lib) {
    size_t len;
    return qv_tokenizer_decode(t->lib, ids, n, 0, text, &len, err);
  }
  cJSON *body = cJSON_CreateObject(), *arr = cJSON_CreateArray();
  if (!body || !arr || (t->model && !cJSON_AddStringToObject(body, "model", t->model))) {
    cJSON_Delete(body);
    cJSON_Delete(arr);
    return qv_error_set(err, QV_ENOMEM, "out of memory");
  }
  cJSON_AddItemToObject(body, "tokens", arr);
  for (size_t i = 0; i < n; i++) {
    cJSON *num = cJSON_CreateNumber(ids[i]);
    if (!num || !cJSON_AddItemToArray(arr, num)) {
      cJSON_Delete(num);
      cJSON_Delete(body);
      return qv_error_set(err, QV_ENOMEM, "out of memory");
    }
  }
  cJSON *resp;
  int rc = post_json(t, "/detokenize", body, &resp, err);
  cJSON_Delete(body);
  if (rc) return rc;
  const cJSON *s = cJSON_GetObjectItemCaseSensitive(resp, "prompt");
  if (!cJSON_IsString(s)) s = cJSON_GetObjectItemCaseSensitive(resp, "content");
  if (!cJSON_IsString(s)) s = cJSON_GetObjectItemCaseSensitive(resp, "text");
  if (!cJSON_IsString(s)) {
    cJSON_Delete(resp);
    return qv_error_set(err, QV_EFORMAT, "POST /detokenize: no \"prompt\" string in the answer");
  }
  size_t len = strlen(s->valuestring);
  *text = malloc(len + 1);
  if (*text) memcpy(*text, s->valuestring, len + 1);
  cJSON_Delete(resp);
  return *text ? 0 : qv_error_set(err, QV_ENOMEM, "out of memory");
}

static int cmp_i32(const void *a, const void *b) {
  int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
  return (x > y) - (x < y);
}

int bench_tok_init(bench_tok *t, const char *tokenizer_path, bench_http *http, const char *model, qv_error *err) {
  memset(t, 0, sizeof *t);
  t->http = http;
  t->model = model;
  int rc;
  if (tokenizer_path) {
    rc = qv_tokenizer_load(tokenizer_path, &t->lib, err);
    if (rc) {
      qv_error_prefix(err, "--tokenizer %s", tokenizer_path);
      return rc;
    }
  }
  int32_t *ids, *ids_sp;
  size_t n, n_sp;
  rc = bench_tok_encode(t, k_corpus, 0, &ids, &n, err);
  if (rc) {
    qv_error_prefix(err, t->lib ? "the tokenizer" : "the server's tokenizer endpoint");
    bench_tok_deinit(t);
    return rc;
  }
  rc = bench_tok_encode(t, k_corpus, 1, &ids_sp, &n_sp, err);
  if (rc) {
    free(ids);
    bench_tok_deinit(t);
    return rc;
  }
  t->n_special = n_sp > n ? (int32_t)(n_sp - n) : 0;
  free(ids_sp);
  qsort(ids, n, sizeof *ids, cmp_i32);
  size_t k = 0;
  for (size_t i = 0; i < n; i++)
    if (k == 0 || ids[k - 1] != ids[i]) ids[k++] = ids[i];
  if (k < 2) {
    free(ids);
    bench_tok_deinit(t);
    return qv_error_set(err, QV_EFORMAT, "the tokenizer gave fewer than 2 distinct tokens for a text");
  }
  t->allowed = ids;
  t->n_allowed = k;
  return 0;
}

void bench_tok_deinit(bench_tok *t) {
  qv_tokenizer_destroy(t->lib);
  t->lib = NULL;
  free(t->allowed);
  t->allowed = NULL;
  t->n_allowed = 0;
}

int bench_tok_exact_prompt(bench_tok *t, bench_rng *rng, const int32_t *ids, size_t n, size_t target,
                           char **text, size_t *got, qv_error *err) {
  *text = NULL;
  *got = 0;
  size_t cap = (target > n ? target : n) + 1;
  int32_t *cur = malloc(cap * sizeof *cur);
  if (!cur) return qv_error_set(err, QV_ENOMEM, "out of memory");
  memcpy(cur, ids, n * sizeof *ids);
  size_t cur_n = n;
  char *s = NULL;
  int rc = 0;
  for (int round = 0; round < 8; round++) {
    free(s);
    s = NULL;
    rc = bench_tok_decode(t, cur, cur_n, &s, err);
    if (rc) break;
    int32_t *re;
    size_t re_n;
    rc = bench_tok_encode(t, s, 0, &re, &re_n, err);
    if (rc) break;
    *got = re_n;
    if (re_n == target) {
      free(re);
      break;
    }
    /* Too long: keep the first target tokens; too short: append random allowed tokens. */
    size_t keep = re_n < target ? re_n : target;
    memcpy(cur, re, keep * sizeof *cur);
    free(re);
    for (size_t i = keep; i < target; i++) cur[i] = t->allowed[bench_rng_int(rng, 0, (int64_t)t->n_allowed - 1)];
    cur_n = target;
  }
  free(cur);
  if (rc) {
    free(s);
    return rc;
  }
  *text = s;
  return 0;
}
