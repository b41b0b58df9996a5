/* Anthropic's Messages API (POST /v1/messages, /v1/messages/count_tokens) as a dialect over
 * the shared chat path.
 *
 * Decoding turns a Messages body into a chat-completions body: `system` becomes a system
 * message; user blocks become user text plus one tool message per tool_result; assistant
 * blocks become content, tool_calls (tool_use, input serialized as arguments) and
 * reasoning_content (thinking); tools/tool_choice/stop_sequences/thinking map onto tools,
 * tool_choice (any -> required, tool -> a named function), stop and the template's
 * enable_thinking. Encoding maps the shared deltas onto content blocks (thinking, text,
 * tool_use) and Anthropic's event sequence. Unknown top-level fields are refused, as
 * Anthropic's API does. Only n = 1 exists in this API. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/server_int.h"

/* Per-request streaming state. */
typedef struct anth_state {
  int32_t n_blocks;  /* content blocks started so far (the next block's index) */
  int open;          /* the open block: 0 none, 1 text, 2 thinking */
  int errored;       /* an error event was sent: no message_delta / message_stop after it */
} anth_state;

/* Accepted fields. Among them metadata, service_tier, cache_control (quiver's prefix cache
 * works without markers), inference_geo, speed, diagnostics, user_profile_id and workspace_id
 * change nothing quiver computes: type-checked loosely, then ignored. Everything else
 * (container, mcp_servers, context_management, ...) is refused by name. */
static const char *const message_fields[] = {
    "model", "max_tokens", "messages", "system", "stop_sequences", "temperature", "top_p",
    "top_k", "stream", "tools", "tool_choice", "thinking", "metadata", "service_tier",
    "output_config", "output_format", "cache_control", "inference_geo", "speed", "diagnostics",
    "user_profile_id", "workspace_id", NULL};
static const char *const count_fields[] = {
    "model", "messages", "system", "tools", "tool_choice", "thinking", "output_config",
    "output_format", "cache_control", "speed", "user_profile_id", "workspace_id", NULL};

/* JSON null counts as absent. */
static const cJSON *get(const cJSON *o, const char *k) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
  return v && !cJSON_IsNull(v) ? v : NULL;
}

static const char *const text_only[] = {"text", NULL};

/* A tool_result's content: a string or text blocks. is_error prefixes "Error: " so the model
 * sees the failure (chat templates have no error flag). */
static int tool_result(srv_req *r, cJSON *msgs, const cJSON *b) {
  const cJSON *id = get(b, "tool_use_id");
  const cJSON *content = get(b, "content");
  const cJSON *is_error = get(b, "is_error");
  if (!cJSON_IsString(id))
    return dialect_fail(r, QV_EINVAL, "messages", "tool_result blocks need a string tool_use_id");
  if (is_error && !cJSON_IsBool(is_error))
    return dialect_fail(r, QV_EINVAL, "messages", "tool_result.is_error must be a boolean");
  const char *bad = "";
  char *text = content ? dialect_join_text(content, text_only, &bad) : strdup("");
  if (!text) {
    if (bad[0])
      return dialect_fail(r, QV_EUNSUPPORTED, "messages",
                          "tool_result content blocks of type '%.60s' are not supported (text "
                          "only)", bad);
    return dialect_fail(r, QV_EINVAL, "messages",
                        "tool_result content must be a string or text blocks");
  }
  cJSON *m = cJSON_CreateObject();
  int err = !m || !cJSON_AddStringToObject(m, "role", "tool") ||
            !cJSON_AddStringToObject(m, "tool_call_id", id->valuestring);
  if (!err) {
    size_t n = strlen(text) + 8;
    char *c = malloc(n);
    if (c) snprintf(c, n, "%s%s", cJSON_IsTrue(is_error) ? "Error: " : "", text);
    err = !c || !cJSON_AddStringToObject(m, "content", c);
    free(c);
  }
  free(text);
  if (err) {
    cJSON_Delete(m);
    return qv_error_set(&r->work_err, QV_ENOMEM, "out of memory");
  }
  cJSON_AddItemToArray(msgs, m);
  return 0;
}

/* One Anthropic message -> one or more chat messages appended to msgs. */
static int convert_message(srv_req *r, cJSON *msgs, const cJSON *m) {
  const cJSON *role = get(m, "role");
  if (!cJSON_IsObject(m) || !cJSON_IsString(role) ||
      (strcmp(role->valuestring, "user") && strcmp(role->valuestring, "assistant")))
    return dialect_fail(r, QV_EINVAL, "messages",
                        "messages must be objects with role 'user' or 'assistant'");
  int user = !strcmp(role->valuestring, "user");
  const cJSON *content = get(m, "content");
  if (cJSON_IsString(content)) return dialect_add_msg(msgs, role->valuestring, content->valuestring);
  if (!cJSON_IsArray(content))
    return dialect_fail(r, QV_EINVAL, "messages", "content must be a string or an array of blocks");
  char *text = NULL, *thinking = NULL;
  size_t tl = 0, tc = 0, kl = 0, kc = 0;
  cJSON *calls = NULL;
  int rc = dialect_append(&text, &tl, &tc, "", 0);
  int n_results = 0;
  const cJSON *b;
  cJSON_ArrayForEach(b, content) {
    if (rc) break;
    const cJSON *type = get(b, "type");
    if (!cJSON_IsObject(b) || !cJSON_IsString(type)) {
      rc = dialect_fail(r, QV_EINVAL, "messages", "content blocks must be objects with a 'type'");
      break;
    }
    const char *t = type->valuestring;
    if (!strcmp(t, "text")) {
      const cJSON *s = get(b, "text");
      if (!cJSON_IsString(s))
        rc = dialect_fail(r, QV_EINVAL, "messages", "text blocks need a string 'text'");
      else rc = dialect_append(&text, &tl, &tc, s->valuestring, strlen(s->valuestring));
    } else if (user && !strcmp(t, "tool_result")) {
      rc = tool_result(r, msgs, b);
      n_results++;
    } else if (!user && !strcmp(t, "tool_use")) {
      const cJSON *id = get(b, "id"), *name = get(b, "name"), *input = get(b, "input");
      if (!cJSON_IsString(id) || !cJSON_IsString(name) || !cJSON_IsObject(input)) {
        rc = dialect_fail(r, QV_EINVAL, "messages",
                          "tool_use blocks need a string id and name and an object input");
        break;
      }
      char *args = cJSON_PrintUnformatted(input);
      cJSON *fn = NULL;
      cJSON *call = dialect_fn_object(id->valuestring, &fn);
      if (!calls) calls = cJSON_CreateArray();
      if (!args || !calls || !call || !cJSON_AddStringToObject(fn, "name", name->valuestring) ||
          !cJSON_AddStringToObject(fn, "arguments", args)) {
        cJSON_Delete(call);
        rc = qv_error_set(&r->work_err, QV_ENOMEM, "out of memory");
      } else {
        cJSON_AddItemToArray(calls, call);
      }
      free(args);
    } else if (!user && !strcmp(t, "thinking")) {
      const cJSON *s = get(b, "thinking");
      if (!cJSON_IsString(s))
        rc = dialect_fail(r, QV_EINVAL, "messages", "thinking blocks need a string 'thinking'");
      else rc = dialect_append(&thinking, &kl, &kc, s->valuestring, strlen(s->valuestring));
    } else if (!user && !strcmp(t, "redacted_thinking")) {
      /* Encrypted reasoning of another provider: nothing a template could show. */
    } else {
      rc = dialect_fail(r, QV_EUNSUPPORTED, "messages",
                        "content blocks of type '%.60s' are not supported in %s messages", t,
                        role->valuestring);
    }
  }
  /* A user turn that only returns tool results adds no empty user message. */
  if (!rc && (!user || tl > 0 || n_results == 0)) {
    cJSON *nm = cJSON_CreateObject();
    if (!nm || !cJSON_AddStringToObject(nm, "role", role->valuestring) ||
        !cJSON_AddStringToObject(nm, "content", text)) {
      cJSON_Delete(nm);
      rc = qv_error_set(&r->work_err, QV_ENOMEM, "out of memory");
    } else {
      if (calls) {
        cJSON_AddItemToObject(nm, "tool_calls", calls);
        calls = NULL;
      }
      if (thinking) cJSON_AddStringToObject(nm, "reasoning_content", thinking);
      cJSON_AddItemToArray(msgs, nm);
    }
  }
  cJSON_Delete(calls);
  free(text);
  free(thinking);
  return rc;
}

static int convert_tools(srv_req *r, cJSON *out, const cJSON *tools) {
  if (!cJSON_IsArray(tools)) return dialect_fail(r, QV_EINVAL, "tools", "tools must be an array");
  cJSON *arr = cJSON_AddArrayToObject(out, "tools");
  if (!arr) return qv_error_set(&r->work_err, QV_ENOMEM, "out of memory");
  const cJSON *t;
  cJSON_ArrayForEach(t, tools) {
    const cJSON *type = get(t, "type"), *name = get(t, "name"), *desc = get(t, "description");
    const cJSON *schema = get(t, "input_schema");
    if (cJSON_IsString(type) && strcmp(type->valuestring, "custom"))
      return dialect_fail(r, QV_EUNSUPPORTED, "tools",
                          "tool type '%.60s' is not supported (client tools only)",
                          type->valuestring);
    if (!cJSON_IsObject(t) || !cJSON_IsString(name) || !name->valuestring[0] ||
        !cJSON_IsObject(schema) || (desc && !cJSON_IsString(desc)))
      return dialect_fail(r, QV_EINVAL, "tools",
                          "tools need a string name, an object input_schema and an optional "
                          "string description");
    cJSON *fn = NULL;
    cJSON *ct = dialect_fn_object(NULL, &fn);
    cJSON *params = cJSON_Duplicate(schema, 1);
    if (!ct || !params || !cJSON_AddStringToObject(fn, "name", name->valuestring) ||
        (desc && !cJSON_AddStringToObject(fn, "description", desc->valuestring))) {
      cJSON_Delete(ct);
      cJSON_Delete(params);
      return qv_error_set(&r->work_err, QV_ENOMEM, "out of memory");
    }
    cJSON_AddItemToObject(fn, "parameters", params);
    cJSON_AddItemToArray(arr, ct);
  }
  return 0;
}

/* tool_choice {type: auto | any | tool (name) | none, disable_parallel_tool_use} -> chat's
 * tool_choice (auto, required, {"type":"function","function":{"name"}}, none) and
 * parallel_tool_calls. */
static int convert_tool_choice(srv_req *r, cJSON *out, const cJSON *tc) {
  const cJSON *type = get(tc, "type"), *name = get(tc, "name");
  const cJSON *dp = get(tc, "disable_parallel_tool_use");
  if (!cJSON_IsObject(tc) || !cJSON_IsString(type) || (dp && !cJSON_IsBool(dp)))
    return dialect_fail(r, QV_EINVAL, "tool_choice",
                        "tool_choice must be an object with a type of auto, any, tool or none");
  const char *t = type->valuestring;
  cJSON *v = NULL;
  if (!strcmp(t, "auto")) v = cJSON_CreateString("auto");
  else if (!strcmp(t, "any")) v = cJSON_CreateString("required");
  else if (!strcmp(t, "none")) v = cJSON_CreateString("none");
  else if (!strcmp(t, "tool")) {
    if (!cJSON_IsString(name))
      return dialect_fail(r, QV_EINVAL, "tool_choice", "tool_choice of type tool needs a name");
    cJSON *fn = NULL;
    v = dialect_fn_object(NULL, &fn);
    if (v && !cJSON_AddStringToObject(fn, "name", name->valuestring)) {
      cJSON_Delete(v);
      v = NULL;
    }
  } else {
    return dialect_fail(r, QV_EINVAL, "tool_choice",
                        "tool_choice type must be auto, any, tool or none");
  }
  if (!v) return qv_error_set(&r->work_err, QV_ENOMEM, "out of memory");
  cJSON_AddItemToObject(out, "tool_choice", v);
  if (cJSON_IsTrue(dp)) cJSON_AddFalseToObject(out, "parallel_tool_calls");
  return 0;
}

/* thinking {type: enabled, budget_tokens} | adaptive | disabled -> the template's
 * enable_thinking (Qwen3 and others read it); the reasoning comes back as thinking blocks from
 * models with a reasoning parser. budget_tokens is validated as Anthropic's API does (an
 * integer >= 1024 and below max_tokens; count_tokens has no max_tokens) but not enforced: the
 * model ends its reasoning when it does, and max_tokens bounds reasoning and text together
 * (stop_reason max_tokens, possibly inside the thinking block). */
#define ANTH_MIN_THINKING_BUDGET 1024

static int convert_thinking(srv_req *r, cJSON *kw, const cJSON *th, const cJSON *max_tokens) {
  const cJSON *type = get(th, "type"), *budget = get(th, "budget_tokens");
  if (!cJSON_IsObject(th) || !cJSON_IsString(type) ||
      (strcmp(type->valuestring, "enabled") && strcmp(type->valuestring, "disabled") &&
       strcmp(type->valuestring, "adaptive")))
    return dialect_fail(r, QV_EINVAL, "thinking",
                        "thinking must be {\"type\": \"enabled\", \"budget_tokens\": N}, "
                        "{\"type\": \"adaptive\"} or {\"type\": \"disabled\"}");
  int on = strcmp(type->valuestring, "disabled") != 0;
  if (!strcmp(type->valuestring, "enabled") &&
      (!cJSON_IsNumber(budget) || budget->valuedouble < ANTH_MIN_THINKING_BUDGET ||
       budget->valuedouble > 1e9 ||
       budget->valuedouble != (double)(int64_t)budget->valuedouble))
    return dialect_fail(r, QV_EINVAL, "thinking",
                        "thinking.budget_tokens must be an integer >= %d",
                        ANTH_MIN_THINKING_BUDGET);
  if (!strcmp(type->valuestring, "enabled") && cJSON_IsNumber(max_tokens) &&
      budget->valuedouble >= max_tokens->valuedouble)
    return dialect_fail(r, QV_EINVAL, "thinking",
                        "thinking.budget_tokens must be less than max_tokens");
  if (!cJSON_AddBoolToObject(kw, "enable_thinking", on))
    return qv_error_set(&r->work_err, QV_ENOMEM, "out of memory");
  return 0;
}

/* output_config {effort, format} and the beta output_format: effort reaches the template as
 * reasoning_effort; a json_schema format becomes chat's response_format (enforced by
 * constrained decoding where it exists, else refused there by name). */
static int convert_output(srv_req *r, cJSON *out, cJSON *kw, const cJSON *in) {
  const cJSON *oc = get(in, "output_config"), *of = get(in, "output_format");
  if (oc && !cJSON_IsObject(oc))
    return dialect_fail(r, QV_EINVAL, "output_config", "output_config must be an object");
  const cJSON *effort = get(oc, "effort"), *fmt = of ? of : get(oc, "format");
  if (effort && !cJSON_IsNull(effort)) {
    if (!cJSON_IsString(effort))
      return dialect_fail(r, QV_EINVAL, "output_config", "output_config.effort must be a string");
    if (!cJSON_AddStringToObject(kw, "reasoning_effort", effort->valuestring))
      return qv_error_set(&r->work_err, QV_ENOMEM, "out of memory");
  }
  if (!fmt || cJSON_IsNull(fmt)) return 0;
  const cJSON *type = get(fmt, "type"), *schema = get(fmt, "schema");
  if (!cJSON_IsObject(fmt) || !cJSON_IsString(type) || strcmp(type->valuestring, "json_schema") ||
      !cJSON_IsObject(schema))
    return dialect_fail(r, QV_EINVAL, of ? "output_format" : "output_config",
                        "the output format must be {\"type\": \"json_schema\", \"schema\": {...}}");
  cJSON *rf = cJSON_AddObjectToObject(out, "response_format");
  cJSON *js = rf ? cJSON_AddObjectToObject(rf, "json_schema") : NULL;
  if (!js || !cJSON_AddStringToObject(rf, "type", "json_schema") ||
      !cJSON_AddStringToObject(js, "name", "output") ||
      !cJSON_AddItemToObject(js, "schema", cJSON_Duplicate(schema, 1)))
    return qv_error_set(&r->work_err, QV_ENOMEM, "out of memory");
  return 0;
}

static int copy_field(srv_req *r, cJSON *out, const cJSON *in, const char *from, const char *to) {
  const cJSON *v = get(in, from);
  if (!v) return 0;
  cJSON *d = cJSON_Duplicate(v, 1);
  if (!d) return qv_error_set(&r->work_err, QV_ENOMEM, "out of memory");
  cJSON_AddItemToObject(out, to, d);
  return 0;
}

/* Messages body -> chat body. */
static int translate(srv_req *r, const cJSON *in, int count, cJSON *out) {
  const cJSON *it;
  cJSON_ArrayForEach(it, in) {
    const char *const *allowed = count ? count_fields : message_fields;
    int ok = 0;
    for (const char *const *a = allowed; *a && !ok; a++) ok = !strcmp(*a, it->string);
    if (!ok)
      return dialect_fail(r, QV_EUNSUPPORTED, it->string,
                          "%.60s: extra inputs are not permitted (not supported by quiver)",
                          it->string);
  }
  const cJSON *model = get(in, "model");
  if (!cJSON_IsString(model) || !model->valuestring[0])
    return dialect_fail(r, QV_EINVAL, "model", "model: a non-empty string is required");
  const cJSON *mt = get(in, "max_tokens");
  if (!count && !cJSON_IsNumber(mt))
    return dialect_fail(r, QV_EINVAL, "max_tokens", "max_tokens: an integer is required");
  const cJSON *msgs = get(in, "messages");
  if (!cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) == 0)
    return dialect_fail(r, QV_EINVAL, "messages", "messages: a non-empty array is required");
  const cJSON *stop = get(in, "stop_sequences");
  if (stop) {
    const cJSON *s;
    int ok = cJSON_IsArray(stop);
    cJSON_ArrayForEach(s, stop) ok &= cJSON_IsString(s) && s->valuestring[0];
    if (!ok)
      return dialect_fail(r, QV_EINVAL, "stop_sequences",
                          "stop_sequences must be an array of non-empty strings");
  }
  const cJSON *md = get(in, "metadata");
  if (md && !cJSON_IsObject(md))
    return dialect_fail(r, QV_EINVAL, "metadata", "metadata must be an object");
  const cJSON *tier = get(in, "service_tier");
  if (tier && !cJSON_IsString(tier))
    return dialect_fail(r, QV_EINVAL, "service_tier", "service_tier must be a string");
  int rc;
  if ((rc = copy_field(r, out, in, "model", "model")) ||
      (!count && ((rc = copy_field(r, out, in, "max_tokens", "max_tokens")) ||
                  (rc = copy_field(r, out, in, "temperature", "temperature")) ||
                  (rc = copy_field(r, out, in, "top_p", "top_p")) ||
                  (rc = copy_field(r, out, in, "top_k", "top_k")) ||
                  (rc = copy_field(r, out, in, "stream", "stream")) ||
                  (rc = copy_field(r, out, in, "stop_sequences", "stop")))))
    return rc;
  cJSON *cm = cJSON_AddArrayToObject(out, "messages");
  if (!cm) return qv_error_set(&r->work_err, QV_ENOMEM, "out of memory");
  const cJSON *sys = get(in, "system");
  if (sys) {
    const char *bad = "";
    char *text = dialect_join_text(sys, text_only, &bad);
    if (!text)
      return dialect_fail(r, bad[0] ? QV_EUNSUPPORTED : QV_EINVAL, "system",
                          "system must be a string or an array of text blocks");
    rc = dialect_add_msg(cm, "system", text);
    free(text);
    if (rc) return qv_error_set(&r->work_err, rc, "out of memory");
  }
  const cJSON *m;
  cJSON_ArrayForEach(m, msgs) if ((rc = convert_message(r, cm, m))) return rc;
  const cJSON *tools = get(in, "tools");
  if (tools && (rc = convert_tools(r, out, tools))) return rc;
  const cJSON *tc = get(in, "tool_choice");
  if (tc && !count && (rc = convert_tool_choice(r, out, tc))) return rc;
  cJSON *kw = cJSON_CreateObject();
  if (!kw) return qv_error_set(&r->work_err, QV_ENOMEM, "out of memory");
  const cJSON *th = get(in, "thinking");
  if ((th && (rc = convert_thinking(r, kw, th, get(in, "max_tokens")))) || (rc = convert_output(r, out, kw, in))) {
    cJSON_Delete(kw);
    return rc;
  }
  if (cJSON_GetArraySize(kw) > 0) cJSON_AddItemToObject(out, "chat_template_kwargs", kw);
  else cJSON_Delete(kw);
  if (count) cJSON_DeleteItemFromObjectCaseSensitive(out, "response_format");
  return 0;
}

static int anth_decode(srv_req *r, const char *body, size_t len) {
  cJSON *in = NULL;
  int prc = oai_json_parse_strict(body, len, &in, &r->work_err);
  if (prc) return prc;
  cJSON *out = cJSON_CreateObject();
  int count = r->kind == OAI_TOKENIZE;
  int rc = !out ? qv_error_set(&r->work_err, QV_ENOMEM, "out of memory")
           : !cJSON_IsObject(in)
               ? dialect_fail(r, QV_EFORMAT, NULL, "request body must be a JSON object")
               : translate(r, in, count, out);
  cJSON_Delete(in);
  if (rc) {
    cJSON_Delete(out);
    return rc;
  }
  r->dstate = calloc(1, sizeof(anth_state));
  if (!r->dstate) {
    cJSON_Delete(out);
    return qv_error_set(&r->work_err, QV_ENOMEM, "out of memory");
  }
  return oai_request_parse_root(r->kind, out, &r->o, &r->work_err);
}

/* ---- errors ---- */

static const char *error_type(int status) {
  switch (status) {
  case 401: return "authentication_error";
  case 403: return "permission_error";
  case 404: return "not_found_error";
  case 413: return "request_too_large";
  case 429: return "rate_limit_error";
  case 503: case 529: return "overloaded_error";
  default: return status >= 500 ? "api_error" : "invalid_request_error";
  }
}

static cJSON *error_obj(int status, const char *message) {
  cJSON *root = cJSON_CreateObject();
  cJSON_AddStringToObject(root, "type", "error");
  cJSON *e = cJSON_AddObjectToObject(root, "error");
  cJSON_AddStringToObject(e, "type", error_type(status));
  cJSON_AddStringToObject(e, "message", message ? message : "");
  return root;
}

static char *anth_error_json(int status, const char *message, const char *param,
                             const char *code) {
  cJSON *root = error_obj(status, message);
  char *s = cJSON_PrintUnformatted(root);
  cJSON_Delete(root);
  return s;
}

/* ---- responses ---- */

static const char *stop_reason(const char *finish, const char *stop_str) {
  if (!finish) return "end_turn";
  if (!strcmp(finish, "tool_calls")) return "tool_use";
  if (!strcmp(finish, "length")) return "max_tokens";
  if (stop_str) return "stop_sequence";
  return "end_turn";
}

static cJSON *usage_obj(const srv_req *r, int32_t prompt, int32_t cached, int32_t output) {
  cJSON *u = cJSON_CreateObject();
  cJSON_AddNumberToObject(u, "input_tokens", prompt - cached);
  cJSON_AddNumberToObject(u, "cache_creation_input_tokens", 0);
  cJSON_AddNumberToObject(u, "cache_read_input_tokens", cached);
  cJSON_AddNumberToObject(u, "output_tokens", output);
  return u;
}

/* A tool call's arguments as the input object (a model's arguments that are not a JSON object
 * come back wrapped, so the block always has an object). */
static cJSON *call_input(const cJSON *call) {
  const cJSON *fn = get(call, "function");
  const cJSON *args = get(fn, "arguments");
  cJSON *in = cJSON_IsString(args) ? cJSON_Parse(args->valuestring) : NULL;
  if (cJSON_IsObject(in)) return in;
  cJSON_Delete(in);
  in = cJSON_CreateObject();
  if (cJSON_IsString(args)) cJSON_AddStringToObject(in, "arguments", args->valuestring);
  return in;
}

static cJSON *tool_use_block(const cJSON *call, int empty_input) {
  const cJSON *fn = get(call, "function");
  const cJSON *id = get(call, "id"), *name = get(fn, "name");
  cJSON *b = cJSON_CreateObject();
  cJSON_AddStringToObject(b, "type", "tool_use");
  cJSON_AddStringToObject(b, "id", cJSON_IsString(id) ? id->valuestring : "toolu_0");
  cJSON_AddStringToObject(b, "name", cJSON_IsString(name) ? name->valuestring : "");
  cJSON_AddItemToObject(b, "input", empty_input ? cJSON_CreateObject() : call_input(call));
  return b;
}

static cJSON *message_obj(const srv_req *r) {
  cJSON *root = cJSON_CreateObject();
  cJSON_AddStringToObject(root, "id", r->id);
  cJSON_AddStringToObject(root, "type", "message");
  cJSON_AddStringToObject(root, "role", "assistant");
  cJSON_AddStringToObject(root, "model", r->model_name);
  return root;
}

static char *anth_response_json(srv_req *r, const oai_choice *cs, int32_t n) {
  const oai_choice *c = &cs[0];
  cJSON *root = message_obj(r);
  cJSON *content = cJSON_AddArrayToObject(root, "content");
  if (c->reasoning && c->reasoning[0]) {
    cJSON *b = cJSON_CreateObject();
    cJSON_AddStringToObject(b, "type", "thinking");
    cJSON_AddStringToObject(b, "thinking", c->reasoning);
    cJSON_AddStringToObject(b, "signature", "");
    cJSON_AddItemToArray(content, b);
  }
  int n_calls = cJSON_GetArraySize(c->tool_calls);
  if (c->text_len > 0) {
    cJSON *b = cJSON_CreateObject();
    cJSON_AddStringToObject(b, "type", "text");
    char *t = malloc(c->text_len + 1);
    if (t) {
      memcpy(t, c->text, c->text_len);
      t[c->text_len] = '\0';
    }
    cJSON_AddStringToObject(b, "text", t ? t : "");
    free(t);
    cJSON_AddItemToArray(content, b);
  }
  const cJSON *call;
  cJSON_ArrayForEach(call, c->tool_calls) cJSON_AddItemToArray(content, tool_use_block(call, 0));
  const char *finish = n_calls > 0 && !strcmp(c->finish_reason, "stop") ? "tool_calls"
                                                                         : c->finish_reason;
  const char *sr = stop_reason(finish, c->stop_reason);
  cJSON_AddStringToObject(root, "stop_reason", sr);
  if (!strcmp(sr, "stop_sequence")) cJSON_AddStringToObject(root, "stop_sequence", c->stop_reason);
  else cJSON_AddNullToObject(root, "stop_sequence");
  cJSON_AddItemToObject(root, "usage", usage_obj(r, r->usage.prompt_tokens,
                                                 r->usage.cached_tokens,
                                                 r->usage.completion_tokens));
  char *s = cJSON_PrintUnformatted(root);
  cJSON_Delete(root);
  return s;
}

static char *anth_count_json(srv_req *r) {
  cJSON *root = cJSON_CreateObject();
  cJSON_AddNumberToObject(root, "input_tokens", r->pn ? r->pn[0] : 0);
  char *s = cJSON_PrintUnformatted(root);
  cJSON_Delete(root);
  return s;
}

/* ---- streaming ---- */

static void send_event(srv_req *r, const char *name, cJSON *obj) {
  if (!r->conn) {
    cJSON_Delete(obj);
    return;
  }
  srv_stream_send(r, dialect_sse(name, obj));
}

static cJSON *typed(const char *type) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "type", type);
  return o;
}

static void anth_stream_begin(srv_req *r) {
  cJSON *ev = typed("message_start");
  cJSON *msg = message_obj(r);
  cJSON_AddArrayToObject(msg, "content");
  cJSON_AddNullToObject(msg, "stop_reason");
  cJSON_AddNullToObject(msg, "stop_sequence");
  cJSON_AddItemToObject(msg, "usage", usage_obj(r, srv_prompt_tokens(r), 0, 0));
  cJSON_AddItemToObject(ev, "message", msg);
  send_event(r, "message_start", ev);
  send_event(r, "ping", typed("ping"));
}

static void close_block(srv_req *r, anth_state *st) {
  if (!st->open) return;
  cJSON *ev = typed("content_block_stop");
  cJSON_AddNumberToObject(ev, "index", st->n_blocks - 1);
  send_event(r, "content_block_stop", ev);
  st->open = 0;
}

/* Opens a text (1) or thinking (2) block unless it is the open one. */
static void open_block(srv_req *r, anth_state *st, int kind) {
  if (st->open == kind) return;
  close_block(r, st);
  cJSON *ev = typed("content_block_start");
  cJSON_AddNumberToObject(ev, "index", st->n_blocks++);
  cJSON *b = typed(kind == 1 ? "text" : "thinking");
  if (kind == 1) {
    cJSON_AddStringToObject(b, "text", "");
  } else {
    cJSON_AddStringToObject(b, "thinking", "");
    cJSON_AddStringToObject(b, "signature", "");
  }
  cJSON_AddItemToObject(ev, "content_block", b);
  send_event(r, "content_block_start", ev);
  st->open = kind;
}

static void block_delta(srv_req *r, anth_state *st, const char *dtype, const char *key,
                        const char *text, size_t len) {
  char *t = malloc(len + 1);
  if (!t) {
    srv_stream_send(r, NULL);
    return;
  }
  memcpy(t, text, len);
  t[len] = '\0';
  cJSON *ev = typed("content_block_delta");
  cJSON_AddNumberToObject(ev, "index", st->n_blocks - 1);
  cJSON *d = typed(dtype);
  cJSON_AddStringToObject(d, key, t);
  cJSON_AddItemToObject(ev, "delta", d);
  free(t);
  send_event(r, "content_block_delta", ev);
}

static void anth_stream_delta(srv_req *r, int32_t ci, const srv_delta *d) {
  anth_state *st = r->dstate;
  if (d->reasoning_len > 0) {
    open_block(r, st, 2);
    block_delta(r, st, "thinking_delta", "thinking", d->reasoning, d->reasoning_len);
  }
  if (d->text_len > 0) {
    open_block(r, st, 1);
    block_delta(r, st, "text_delta", "text", d->text, d->text_len);
  }
  const cJSON *call;
  cJSON_ArrayForEach(call, d->tool_calls) {
    close_block(r, st);
    cJSON *ev = typed("content_block_start");
    cJSON_AddNumberToObject(ev, "index", st->n_blocks++);
    cJSON_AddItemToObject(ev, "content_block", tool_use_block(call, 1));
    send_event(r, "content_block_start", ev);
    cJSON *input = call_input(call);
    char *json = input ? cJSON_PrintUnformatted(input) : NULL;
    cJSON_Delete(input);
    block_delta(r, st, "input_json_delta", "partial_json", json ? json : "{}",
                json ? strlen(json) : 2);
    free(json);
    st->open = 3;
    close_block(r, st);
  }
}

static void anth_stream_finish(srv_req *r, int32_t ci) { close_block(r, r->dstate); }

static void anth_stream_error(srv_req *r, int32_t ci, const char *message) {
  anth_state *st = r->dstate;
  st->errored = 1;
  send_event(r, "error", error_obj(500, message));
}

static void anth_stream_end(srv_req *r) {
  anth_state *st = r->dstate;
  if (st->errored) return;
  const srv_choice *c = &r->choices[0];
  const char *sr = stop_reason(c->finish, c->stop_reason);
  cJSON *ev = typed("message_delta");
  cJSON *d = cJSON_AddObjectToObject(ev, "delta");
  cJSON_AddStringToObject(d, "stop_reason", sr);
  if (!strcmp(sr, "stop_sequence")) cJSON_AddStringToObject(d, "stop_sequence", c->stop_reason);
  else cJSON_AddNullToObject(d, "stop_sequence");
  cJSON_AddItemToObject(ev, "usage", usage_obj(r, r->usage.prompt_tokens, r->usage.cached_tokens,
                                               r->usage.completion_tokens));
  send_event(r, "message_delta", ev);
  send_event(r, "message_stop", typed("message_stop"));
}

static const char *anth_id_prefix(const srv_req *r) { return "msg_"; }

const srv_dialect srv_dialect_anthropic = {
    .name = "anthropic",
    .decode = anth_decode,
    .error_json = anth_error_json,
    .stream_begin = anth_stream_begin,
    .stream_delta = anth_stream_delta,
    .stream_finish = anth_stream_finish,
    .stream_error = anth_stream_error,
    .stream_end = anth_stream_end,
    .response_json = anth_response_json,
    .count_json = anth_count_json,
    .id_prefix = anth_id_prefix,
    .state_free = free,
};
