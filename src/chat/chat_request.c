/* OpenAI chat request -> template variables.
 *
 * Templates are written for transformers' message dicts, which differ from what OpenAI clients
 * send in two ways this file smooths over (as vLLM does): content may be a list of parts (text
 * parts are joined with "\n"), and tool-call arguments arrive as a JSON string while templates
 * such as Llama 3.1's apply `| tojson` to them (they are parsed back into an object when valid).
 * Everything else passes through untouched, so templates see exactly what the client sent. */
#include <string.h>

#include "chat/chat.h"

/* Frees the partly built variables and reports a malformed request. */
static int fail(cJSON *vars, qv_error *err, const char *what, int msg_idx) {
  cJSON_Delete(vars);
  if (msg_idx >= 0) return qv_error_set(err, QV_EINVAL, "messages[%d]: %s", msg_idx, what);
  return qv_error_set(err, QV_EINVAL, "%s", what);
}

/* Joins text parts; NULL (with *bad) when a part is not text. Returns a new cJSON string. */
static cJSON *join_parts(const cJSON *parts, bool *bad) {
  size_t total = 0;
  const cJSON *p;
  cJSON_ArrayForEach(p, parts) {
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(p, "type");
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(p, "text");
    if (!cJSON_IsString(type) || strcmp(type->valuestring, "text") || !cJSON_IsString(text)) {
      *bad = true;
      return NULL;
    }
    total += strlen(text->valuestring) + 1;
  }
  char *buf = cJSON_malloc(total + 1);
  if (!buf) return NULL;
  size_t k = 0;
  cJSON_ArrayForEach(p, parts) {
    const char *t = cJSON_GetObjectItemCaseSensitive(p, "text")->valuestring;
    if (k) buf[k++] = '\n';
    size_t n = strlen(t);
    memcpy(buf + k, t, n);
    k += n;
  }
  buf[k] = 0;
  cJSON *s = cJSON_CreateString(buf);
  cJSON_free(buf);
  return s;
}

int qv_chat_request_vars(const qv_chat_template *t, const cJSON *request, cJSON **out,
                         qv_error *err) {
  *out = NULL;
  if (!cJSON_IsObject(request)) return qv_error_set(err, QV_EINVAL, "request must be a JSON object");
  const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(request, "messages");
  if (!cJSON_IsArray(msgs)) return qv_error_set(err, QV_EINVAL, "'messages' must be an array");
  cJSON *vars = cJSON_CreateObject();
  cJSON *list = cJSON_Duplicate(msgs, 1);
  if (!vars || !list || !cJSON_AddItemToObject(vars, "messages", list)) {
    cJSON_Delete(list);
    cJSON_Delete(vars);
    return qv_error_set(err, QV_ENOMEM, "out of memory");
  }
  int idx = 0;
  cJSON *m;
  cJSON_ArrayForEach(m, list) {
    const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
    if (!cJSON_IsObject(m) || !cJSON_IsString(role))
      return fail(vars, err, "needs a string 'role'", idx);
    cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
    if (cJSON_IsArray(content)) {
      bool bad = false;
      cJSON *joined = join_parts(content, &bad);
      if (!joined) return fail(vars, err, bad ? "only text content parts are supported" : "out of memory", idx);
      cJSON_ReplaceItemInObjectCaseSensitive(m, "content", joined);
    }
    cJSON *calls = cJSON_GetObjectItemCaseSensitive(m, "tool_calls");
    cJSON *call;
    cJSON_ArrayForEach(call, calls) {
      cJSON *fn = cJSON_GetObjectItemCaseSensitive(call, "function");
      cJSON *args = cJSON_GetObjectItemCaseSensitive(fn, "arguments");
      if (cJSON_IsString(args)) {
        cJSON *parsed = cJSON_Parse(args->valuestring);
        if (cJSON_IsObject(parsed)) cJSON_ReplaceItemInObjectCaseSensitive(fn, "arguments", parsed);
        else cJSON_Delete(parsed);
      }
    }
    idx++;
  }
  const cJSON *tools = cJSON_GetObjectItemCaseSensitive(request, "tools");
  if (tools && !cJSON_IsNull(tools)) {
    if (!cJSON_IsArray(tools)) return fail(vars, err, "'tools' must be an array", -1);
    cJSON_AddItemToObject(vars, "tools", cJSON_Duplicate(tools, 1));
  }
  const cJSON *agp = cJSON_GetObjectItemCaseSensitive(request, "add_generation_prompt");
  cJSON_AddBoolToObject(vars, "add_generation_prompt", agp ? cJSON_IsTrue(agp) : true);
  const char *bos = qv_chat_template_bos(t), *eos = qv_chat_template_eos(t);
  cJSON_AddStringToObject(vars, "bos_token", bos ? bos : "");
  cJSON_AddStringToObject(vars, "eos_token", eos ? eos : "");
  const cJSON *kw = cJSON_GetObjectItemCaseSensitive(request, "chat_template_kwargs");
  if (kw && !cJSON_IsNull(kw)) {
    if (!cJSON_IsObject(kw)) return fail(vars, err, "'chat_template_kwargs' must be an object", -1);
    const cJSON *e;
    cJSON_ArrayForEach(e, kw) {
      if (!strcmp(e->string, "messages") || !strcmp(e->string, "tools")) continue;
      cJSON *dup = cJSON_Duplicate(e, 1);
      if (!dup) return fail(vars, err, "out of memory", -1);
      if (cJSON_GetObjectItemCaseSensitive(vars, e->string))
        cJSON_ReplaceItemInObjectCaseSensitive(vars, e->string, dup);
      else
        cJSON_AddItemToObject(vars, e->string, dup);
    }
  }
  *out = vars;
  return 0;
}
