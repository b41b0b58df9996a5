/* OpenAI response serialization (see oai_resp.h). Built with cJSON so escaping is always
 * right; printed unformatted, as the OpenAI API sends it. */
#include "server/oai_resp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "server/json_nul.h"

/* Text of n bytes as a JSON string; NUL bytes stay NUL characters (json_nul.h). */
static cJSON *str_n(const char *s, size_t n) { return jnul_string(s, n); }

static const char *error_type(int status) {
  switch (status) {
  case 401: return "authentication_error";
  case 403: return "permission_error";
  case 404: return "not_found_error";
  case 408: return "timeout_error";
  case 429: return "rate_limit_error";
  case 503: return "service_unavailable_error";
  default: return status >= 500 ? "server_error" : "invalid_request_error";
  }
}

char *oai_error_json(int status, const char *message, const char *param, const char *code) {
  cJSON *root = cJSON_CreateObject();
  cJSON *e = cJSON_AddObjectToObject(root, "error");
  cJSON_AddStringToObject(e, "message", message ? message : "");
  cJSON_AddStringToObject(e, "type", error_type(status));
  if (param && param[0]) cJSON_AddStringToObject(e, "param", param);
  else cJSON_AddNullToObject(e, "param");
  /* OpenAI's code is a string or null, never the HTTP status. */
  if (code) cJSON_AddStringToObject(e, "code", code);
  else cJSON_AddNullToObject(e, "code");
  char *s = cJSON_PrintUnformatted(root);
  cJSON_Delete(root);
  return s;
}

/* ---- logprobs ---- */

struct oai_logprobs {
  oai_kind kind;
  cJSON *root;
};

static cJSON *lp_new_root(oai_kind kind) {
  cJSON *r = cJSON_CreateObject();
  if (!r) return NULL;
  if (kind == OAI_CHAT) {
    cJSON_AddArrayToObject(r, "content");
  } else {
    cJSON_AddArrayToObject(r, "tokens");
    cJSON_AddArrayToObject(r, "token_logprobs");
    cJSON_AddArrayToObject(r, "top_logprobs");
    cJSON_AddArrayToObject(r, "text_offset");
  }
  return r;
}

oai_logprobs *oai_logprobs_create(oai_kind kind) {
  oai_logprobs *lp = calloc(1, sizeof *lp);
  if (!lp) return NULL;
  lp->kind = kind;
  lp->root = lp_new_root(kind);
  if (!lp->root) {
    free(lp);
    return NULL;
  }
  return lp;
}

void oai_logprobs_destroy(oai_logprobs *lp) {
  if (!lp) return;
  cJSON_Delete(lp->root);
  free(lp);
}

/* The bytes of a token's text: a NUL marker (json_nul.h) is the one byte 0. */
static cJSON *bytes_array(const char *s, size_t n) {
  cJSON *a = cJSON_CreateArray();
  for (size_t i = 0; a && i < n; i++) {
    int mark = (unsigned char)s[i] == 0xC0 && i + 1 < n && (unsigned char)s[i + 1] == 0x80;
    cJSON_AddItemToArray(a, cJSON_CreateNumber(mark ? 0 : (unsigned char)s[i]));
    i += (size_t)mark;
  }
  return a;
}

int oai_logprobs_add(oai_logprobs *lp, const char *tok, size_t tok_len, float logprob,
                     const qv_top_logprob *top, const char *const *top_strs, int32_t n_top,
                     size_t text_offset) {
  if (lp->kind == OAI_CHAT) {
    cJSON *e = cJSON_CreateObject();
    if (!e) return QV_ENOMEM;
    cJSON_AddItemToObject(e, "token", str_n(tok, tok_len));
    cJSON_AddNumberToObject(e, "logprob", logprob);
    cJSON_AddItemToObject(e, "bytes", bytes_array(tok, tok_len));
    cJSON *tl = cJSON_AddArrayToObject(e, "top_logprobs");
    for (int32_t i = 0; i < n_top; i++) {
      cJSON *t = cJSON_CreateObject();
      cJSON_AddStringToObject(t, "token", top_strs[i]);
      cJSON_AddNumberToObject(t, "logprob", top[i].logprob);
      cJSON_AddItemToObject(t, "bytes", bytes_array(top_strs[i], strlen(top_strs[i])));
      cJSON_AddItemToArray(tl, t);
    }
    cJSON_AddItemToArray(cJSON_GetObjectItem(lp->root, "content"), e);
    return 0;
  }
  cJSON_AddItemToArray(cJSON_GetObjectItem(lp->root, "tokens"), str_n(tok, tok_len));
  cJSON_AddItemToArray(cJSON_GetObjectItem(lp->root, "token_logprobs"),
                       cJSON_CreateNumber(logprob));
  cJSON *t = cJSON_CreateObject();
  for (int32_t i = 0; i < n_top; i++)
    if (!cJSON_GetObjectItemCaseSensitive(t, top_strs[i]))
      cJSON_AddNumberToObject(t, top_strs[i], top[i].logprob);
  cJSON_AddItemToArray(cJSON_GetObjectItem(lp->root, "top_logprobs"), t);
  cJSON_AddItemToArray(cJSON_GetObjectItem(lp->root, "text_offset"),
                       cJSON_CreateNumber((double)text_offset));
  return 0;
}

char *oai_token_key(const char *text, const char *raw, size_t raw_len) {
  int whole = 1;
  for (size_t i = 0; raw && i < raw_len && whole;) {
    utf8proc_int32_t cp;
    utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)raw + i,
                                          (utf8proc_ssize_t)(raw_len - i), &cp);
    if (k <= 0) whole = 0;
    else i += (size_t)k;
  }
  if (whole) return strdup(text);
  char *key = malloc(6 + 4 * raw_len + 1);
  if (!key) return NULL;
  memcpy(key, "bytes:", 6);
  for (size_t i = 0; i < raw_len; i++)
    snprintf(key + 6 + 4 * i, 5, "\\x%02x", (unsigned char)raw[i]);
  key[6 + 4 * raw_len] = '\0';
  return key;
}

int oai_distinct_keys(char **keys, const int32_t *ids, int32_t n) {
  for (int32_t i = 1; i < n; i++) {
    int32_t same_id = -1, taken = 0;
    for (int32_t j = 0; j < i; j++) {
      if (ids[j] == ids[i] && same_id < 0) same_id = j;
      if (ids[j] != ids[i] && !strcmp(keys[j], keys[i])) taken = 1;
    }
    char *k = NULL;
    if (same_id >= 0) {
      if (!strcmp(keys[same_id], keys[i])) continue;
      k = strdup(keys[same_id]);
    } else if (taken) {
      k = malloc(32);
      if (k) snprintf(k, 32, "token_id:%d", (int)ids[i]);
    } else {
      continue;
    }
    if (!k) return QV_ENOMEM;
    free(keys[i]);
    keys[i] = k;
  }
  return 0;
}

const cJSON *oai_logprobs_json(const oai_logprobs *lp) { return lp->root; }

cJSON *oai_logprobs_take(oai_logprobs *lp) {
  cJSON *out = lp->root;
  lp->root = lp_new_root(lp->kind);
  return out;
}

/* ---- responses ---- */

static cJSON *usage_json(const oai_usage *u) {
  cJSON *j = cJSON_CreateObject();
  cJSON_AddNumberToObject(j, "prompt_tokens", u->prompt_tokens);
  cJSON_AddNumberToObject(j, "completion_tokens", u->completion_tokens);
  cJSON_AddNumberToObject(j, "total_tokens", u->prompt_tokens + u->completion_tokens);
  cJSON *d = cJSON_AddObjectToObject(j, "prompt_tokens_details");
  cJSON_AddNumberToObject(d, "cached_tokens", u->cached_tokens);
  return j;
}

static cJSON *meta_json(const oai_meta *m, int chunk) {
  cJSON *root = cJSON_CreateObject();
  cJSON_AddStringToObject(root, "id", m->id);
  const char *obj = m->kind == OAI_CHAT ? (chunk ? "chat.completion.chunk" : "chat.completion")
                                        : "text_completion";
  cJSON_AddStringToObject(root, "object", obj);
  cJSON_AddNumberToObject(root, "created", (double)m->created);
  cJSON_AddStringToObject(root, "model", m->model);
  cJSON_AddNullToObject(root, "system_fingerprint");
  return root;
}

static void add_logprobs(cJSON *choice, const cJSON *lp) {
  if (lp) cJSON_AddItemToObject(choice, "logprobs", cJSON_Duplicate(lp, 1));
  else cJSON_AddNullToObject(choice, "logprobs");
}

static void add_opt_string(cJSON *o, const char *k, const char *v) {
  if (v) cJSON_AddStringToObject(o, k, v);
  else cJSON_AddNullToObject(o, k);
}

char *oai_response_json(const oai_meta *m, const oai_choice *choices, int32_t n_choices,
                        const oai_usage *usage) {
  cJSON *root = meta_json(m, 0);
  cJSON *arr = cJSON_AddArrayToObject(root, "choices");
  for (int32_t i = 0; i < n_choices; i++) {
    const oai_choice *c = &choices[i];
    cJSON *ch = cJSON_CreateObject();
    cJSON_AddNumberToObject(ch, "index", i);
    if (m->kind == OAI_CHAT) {
      cJSON *msg = cJSON_AddObjectToObject(ch, "message");
      cJSON_AddStringToObject(msg, "role", "assistant");
      int calls = c->tool_calls && cJSON_GetArraySize(c->tool_calls) > 0;
      if (calls && c->text_len == 0) cJSON_AddNullToObject(msg, "content");
      else cJSON_AddItemToObject(msg, "content", str_n(c->text, c->text_len));
      if (c->has_reasoning) add_opt_string(msg, "reasoning_content", c->reasoning);
      cJSON_AddNullToObject(msg, "refusal");
      if (calls) cJSON_AddItemToObject(msg, "tool_calls", cJSON_Duplicate(c->tool_calls, 1));
      else cJSON_AddArrayToObject(msg, "tool_calls");
      add_logprobs(ch, c->logprobs);
    } else {
      cJSON_AddItemToObject(ch, "text", str_n(c->text, c->text_len));
      add_logprobs(ch, c->logprobs);
    }
    add_opt_string(ch, "finish_reason", c->finish_reason);
    add_opt_string(ch, "stop_reason", c->stop_reason);
    cJSON_AddItemToArray(arr, ch);
  }
  cJSON_AddItemToObject(root, "usage", usage_json(usage));
  char *s = cJSON_PrintUnformatted(root);
  cJSON_Delete(root);
  return s;
}

static char *sse_wrap(cJSON *root) {
  char *j = cJSON_PrintUnformatted(root);
  cJSON_Delete(root);
  if (!j) return NULL;
  size_t n = strlen(j);
  char *s = malloc(n + 9);
  if (s) {
    memcpy(s, "data: ", 6);
    memcpy(s + 6, j, n);
    memcpy(s + 6 + n, "\n\n", 3);
  }
  free(j);
  return s;
}

char *oai_chunk_sse(const oai_meta *m, const oai_chunk *c) {
  cJSON *root = meta_json(m, 1);
  cJSON *arr = cJSON_AddArrayToObject(root, "choices");
  if (c->usage) {
    cJSON_AddItemToObject(root, "usage", usage_json(c->usage));
    return sse_wrap(root);
  }
  cJSON *ch = cJSON_CreateObject();
  cJSON_AddNumberToObject(ch, "index", c->index);
  if (m->kind == OAI_CHAT) {
    cJSON *d = cJSON_AddObjectToObject(ch, "delta");
    if (c->role_first) {
      cJSON_AddStringToObject(d, "role", "assistant");
      cJSON_AddStringToObject(d, "content", "");
    } else if (c->text_len || (!c->finish && !c->tool_calls && !c->reasoning_len)) {
      cJSON_AddItemToObject(d, "content", str_n(c->text ? c->text : "", c->text_len));
    }
    if (c->reasoning_len)
      cJSON_AddItemToObject(d, "reasoning_content", str_n(c->reasoning, c->reasoning_len));
    if (c->tool_calls) cJSON_AddItemToObject(d, "tool_calls", cJSON_Duplicate(c->tool_calls, 1));
  } else {
    cJSON_AddItemToObject(ch, "text", str_n(c->text ? c->text : "", c->text_len));
  }
  add_logprobs(ch, c->logprobs);
  add_opt_string(ch, "finish_reason", c->finish);
  if (c->finish) add_opt_string(ch, "stop_reason", c->stop_reason);
  cJSON_AddItemToArray(arr, ch);
  if (c->live_usage) cJSON_AddItemToObject(root, "usage", usage_json(c->live_usage));
  return sse_wrap(root);
}

static cJSON *model_obj(const char *name, const char *root, int32_t max_len, int64_t created) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "id", name);
  cJSON_AddStringToObject(o, "object", "model");
  cJSON_AddNumberToObject(o, "created", (double)created);
  cJSON_AddStringToObject(o, "owned_by", "quiver");
  cJSON_AddStringToObject(o, "root", root ? root : name);
  cJSON_AddNullToObject(o, "parent");
  cJSON_AddNumberToObject(o, "max_model_len", max_len);
  return o;
}

char *oai_models_json(const char *const *names, const char *const *roots,
                      const int32_t *max_model_len, int32_t n, int64_t created) {
  cJSON *root = cJSON_CreateObject();
  cJSON_AddStringToObject(root, "object", "list");
  cJSON *arr = cJSON_AddArrayToObject(root, "data");
  for (int32_t i = 0; i < n; i++)
    cJSON_AddItemToArray(arr, model_obj(names[i], roots[i], max_model_len[i], created));
  char *s = cJSON_PrintUnformatted(root);
  cJSON_Delete(root);
  return s;
}

char *oai_model_json(const char *name, const char *root_name, int32_t max_model_len,
                     int64_t created) {
  cJSON *o = model_obj(name, root_name, max_model_len, created);
  char *s = cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  return s;
}
