/* OpenAI's Responses API (POST /v1/responses; GET and DELETE /v1/responses/{id} in server.c)
 * as a dialect over the shared chat path.
 *
 * Decoding turns a Responses body into a chat-completions body: `instructions` becomes a
 * system message; `input` (a string, or message / function_call / function_call_output
 * items) becomes messages, after the stored conversation of previous_response_id when given;
 * function tools, tool_choice, text.format, max_output_tokens, reasoning.effort map onto their
 * chat fields. Encoding turns the finished choice, or the stream of shared deltas, into output
 * items (reasoning, message with output_text, function_call) and the Responses event
 * sequence, numbered by sequence_number. With store (the default) the response and its
 * conversation go into the server's bounded resp_store. Unknown fields are refused, as
 * OpenAI's API does. Only n = 1 exists in this API. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/log.h"
#include "server/server_int.h"

typedef struct resp_state {
  cJSON *in;           /* owned: the request body as sent (echoed fields) */
  cJSON *conv;         /* owned: the conversation without instructions, chat messages */
  int store;
  int32_t seq;         /* next sequence_number */
  /* Streaming: items are numbered in the order they open. */
  int32_t n_items;
  int open;            /* 0 none, 1 message, 2 reasoning */
  int32_t open_idx;    /* output_index of the open item */
  char *text, *reasoning; /* accumulated (owned) */
  size_t text_len, text_cap, reasoning_len, reasoning_cap;
  cJSON *calls;        /* owned: completed calls [{id, type, function}] in order */
  cJSON *done_items;   /* owned: streamed items once done, in output order */
  int closed;          /* bit k set: the item of kind k (1 message, 2 reasoning) was closed */
  int errored;
} resp_state;

static void state_free(void *p) {
  resp_state *st = p;
  if (!st) return;
  cJSON_Delete(st->in);
  cJSON_Delete(st->conv);
  cJSON_Delete(st->calls);
  cJSON_Delete(st->done_items);
  free(st->text);
  free(st->reasoning);
  free(st);
}

static const char *const fields[] = {
    "model", "input", "instructions", "tools", "tool_choice", "text", "max_output_tokens",
    "temperature", "top_p", "stream", "store", "previous_response_id", "reasoning", "metadata",
    "user", "parallel_tool_calls", "truncation", "service_tier", "include", "background",
    "prompt_cache_key", "safety_identifier", "stream_options", NULL};

static const cJSON *get(const cJSON *o, const char *k) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
  return v && !cJSON_IsNull(v) ? v : NULL;
}

#define OOM(r) qv_error_set(&(r)->work_err, QV_ENOMEM, "out of memory")

static const char *const text_parts[] = {"input_text", "output_text", "text", "refusal", NULL};

/* function_call items join the assistant message right before them when it only holds calls
 * (one assistant turn with several calls), else start one. */
static int add_call(srv_req *r, cJSON *msgs, const cJSON *item) {
  const cJSON *id = get(item, "call_id"), *name = get(item, "name"), *args = get(item, "arguments");
  if (!cJSON_IsString(id) || !cJSON_IsString(name) || !cJSON_IsString(args))
    return dialect_fail(r, QV_EINVAL, "input",
                        "function_call items need string call_id, name and arguments");
  cJSON *last = cJSON_GetArrayItem(msgs, cJSON_GetArraySize(msgs) - 1);
  cJSON *calls = cJSON_GetObjectItemCaseSensitive(last, "tool_calls");
  const cJSON *role = cJSON_GetObjectItemCaseSensitive(last, "role");
  if (!calls || !cJSON_IsString(role) || strcmp(role->valuestring, "assistant")) {
    cJSON *m = cJSON_CreateObject();
    if (!m || !cJSON_AddStringToObject(m, "role", "assistant") ||
        !cJSON_AddStringToObject(m, "content", "") ||
        !(calls = cJSON_AddArrayToObject(m, "tool_calls"))) {
      cJSON_Delete(m);
      return OOM(r);
    }
    cJSON_AddItemToArray(msgs, m);
  }
  cJSON *fn = NULL;
  cJSON *c = dialect_fn_object(id->valuestring, &fn);
  if (!c || !cJSON_AddStringToObject(fn, "name", name->valuestring) ||
      !cJSON_AddStringToObject(fn, "arguments", args->valuestring)) {
    cJSON_Delete(c);
    return OOM(r);
  }
  cJSON_AddItemToArray(calls, c);
  return 0;
}

static int convert_item(srv_req *r, cJSON *msgs, const cJSON *item) {
  if (!cJSON_IsObject(item))
    return dialect_fail(r, QV_EINVAL, "input", "input items must be objects");
  const cJSON *type = get(item, "type");
  if (type && !cJSON_IsString(type))
    return dialect_fail(r, QV_EINVAL, "input", "input item type must be a string");
  const char *t = type ? type->valuestring : "message";
  if (!strcmp(t, "message")) {
    const cJSON *role = get(item, "role");
    static const char *const roles[] = {"user", "system", "developer", "assistant", NULL};
    int ok = cJSON_IsString(role);
    if (ok) {
      ok = 0;
      for (const char *const *x = roles; *x && !ok; x++) ok = !strcmp(*x, role->valuestring);
    }
    if (!ok)
      return dialect_fail(r, QV_EINVAL, "input",
                          "message items need a role of user, system, developer or assistant");
    const char *bad = "";
    char *text = dialect_join_text(get(item, "content"), text_parts, &bad);
    if (!text) {
      if (bad[0])
        return dialect_fail(r, QV_EUNSUPPORTED, "input",
                            "content parts of type '%.60s' are not supported (text only)", bad);
      return dialect_fail(r, QV_EINVAL, "input",
                          "message content must be a string or an array of text parts");
    }
    int rc = dialect_add_msg(msgs, role->valuestring, text);
    free(text);
    return rc ? OOM(r) : 0;
  }
  if (!strcmp(t, "function_call")) return add_call(r, msgs, item);
  if (!strcmp(t, "function_call_output")) {
    const cJSON *id = get(item, "call_id"), *out = get(item, "output");
    const char *bad = "";
    char *text = out ? dialect_join_text(out, text_parts, &bad) : NULL;
    if (!cJSON_IsString(id) || !text) {
      free(text);
      return dialect_fail(r, QV_EINVAL, "input",
                          "function_call_output items need a string call_id and output");
    }
    cJSON *m = cJSON_CreateObject();
    int err = !m || !cJSON_AddStringToObject(m, "role", "tool") ||
              !cJSON_AddStringToObject(m, "tool_call_id", id->valuestring) ||
              !cJSON_AddStringToObject(m, "content", text);
    free(text);
    if (err) {
      cJSON_Delete(m);
      return OOM(r);
    }
    cJSON_AddItemToArray(msgs, m);
    return 0;
  }
  if (!strcmp(t, "reasoning")) return 0; /* earlier reasoning is not shown to the model again */
  return dialect_fail(r, QV_EUNSUPPORTED, "input", "input items of type '%.60s' are not supported",
                      t);
}

static int convert_tools(srv_req *r, cJSON *out, const cJSON *tools) {
  if (!cJSON_IsArray(tools)) return dialect_fail(r, QV_EINVAL, "tools", "tools must be an array");
  cJSON *arr = cJSON_AddArrayToObject(out, "tools");
  if (!arr) return OOM(r);
  const cJSON *t;
  cJSON_ArrayForEach(t, tools) {
    const cJSON *type = get(t, "type"), *name = get(t, "name"), *desc = get(t, "description");
    const cJSON *params = get(t, "parameters");
    if (!cJSON_IsObject(t) || !cJSON_IsString(type))
      return dialect_fail(r, QV_EINVAL, "tools", "tools must be objects with a type");
    if (strcmp(type->valuestring, "function"))
      return dialect_fail(r, QV_EUNSUPPORTED, "tools",
                          "tool type '%.60s' is not supported (function tools only)",
                          type->valuestring);
    if (!cJSON_IsString(name) || !name->valuestring[0] || (desc && !cJSON_IsString(desc)) ||
        (params && !cJSON_IsObject(params)))
      return dialect_fail(r, QV_EINVAL, "tools",
                          "function tools need a string name, optional string description and "
                          "object parameters");
    cJSON *fn = NULL;
    cJSON *ct = dialect_fn_object(NULL, &fn);
    if (!ct || !cJSON_AddStringToObject(fn, "name", name->valuestring) ||
        (desc && !cJSON_AddStringToObject(fn, "description", desc->valuestring)) ||
        (params && !cJSON_AddItemToObject(fn, "parameters", cJSON_Duplicate(params, 1)))) {
      cJSON_Delete(ct);
      return OOM(r);
    }
    cJSON_AddItemToArray(arr, ct);
  }
  return 0;
}

/* "auto" | "none" | "required" | {"type": "function", "name"} -> chat's tool_choice. */
static int convert_tool_choice(srv_req *r, cJSON *out, const cJSON *tc) {
  cJSON *v = NULL;
  if (cJSON_IsString(tc)) {
    if (strcmp(tc->valuestring, "auto") && strcmp(tc->valuestring, "none") &&
        strcmp(tc->valuestring, "required"))
      return dialect_fail(r, QV_EINVAL, "tool_choice",
                          "tool_choice must be auto, none, required or a function object");
    v = cJSON_CreateString(tc->valuestring);
  } else {
    const cJSON *type = get(tc, "type"), *name = get(tc, "name");
    if (!cJSON_IsString(type) || strcmp(type->valuestring, "function") || !cJSON_IsString(name))
      return dialect_fail(r, QV_EINVAL, "tool_choice",
                          "tool_choice must be auto, none, required or {\"type\": \"function\", "
                          "\"name\": ...}");
    cJSON *fn = NULL;
    v = dialect_fn_object(NULL, &fn);
    if (v && !cJSON_AddStringToObject(fn, "name", name->valuestring)) {
      cJSON_Delete(v);
      v = NULL;
    }
  }
  if (!v) return OOM(r);
  cJSON_AddItemToObject(out, "tool_choice", v);
  return 0;
}

/* text.format: text, or json_schema / json_object passed on as chat's response_format (which
 * refuses what constrained decoding does not implement). */
static int convert_text(srv_req *r, cJSON *out, const cJSON *text) {
  if (!cJSON_IsObject(text)) return dialect_fail(r, QV_EINVAL, "text", "text must be an object");
  const cJSON *fmt = get(text, "format");
  const cJSON *verb = get(text, "verbosity");
  if (verb && !cJSON_IsString(verb))
    return dialect_fail(r, QV_EINVAL, "text", "text.verbosity must be a string");
  if (!fmt) return 0;
  const cJSON *type = get(fmt, "type");
  if (!cJSON_IsObject(fmt) || !cJSON_IsString(type))
    return dialect_fail(r, QV_EINVAL, "text", "text.format must be an object with a type");
  if (!strcmp(type->valuestring, "text")) return 0;
  cJSON *rf = cJSON_CreateObject();
  if (!rf) return OOM(r);
  cJSON_AddStringToObject(rf, "type", type->valuestring);
  if (!strcmp(type->valuestring, "json_schema")) {
    cJSON *js = cJSON_AddObjectToObject(rf, "json_schema");
    static const char *const keys[] = {"name", "schema", "strict", "description", NULL};
    for (const char *const *k = keys; js && *k; k++) {
      const cJSON *v = get(fmt, *k);
      if (v) cJSON_AddItemToObject(js, *k, cJSON_Duplicate(v, 1));
    }
  }
  cJSON_AddItemToObject(out, "response_format", rf);
  return 0;
}

static int copy_field(srv_req *r, cJSON *out, const cJSON *in, const char *from, const char *to) {
  const cJSON *v = get(in, from);
  if (!v) return 0;
  cJSON *d = cJSON_Duplicate(v, 1);
  if (!d) return OOM(r);
  cJSON_AddItemToObject(out, to, d);
  return 0;
}

static int translate(srv_req *r, resp_state *st, const cJSON *in, cJSON *out) {
  const cJSON *it;
  cJSON_ArrayForEach(it, in) {
    int ok = 0;
    for (const char *const *a = fields; *a && !ok; a++) ok = !strcmp(*a, it->string);
    if (!ok)
      return dialect_fail(r, QV_EUNSUPPORTED, it->string,
                          "Unknown parameter: '%.60s' (not supported by quiver)", it->string);
  }
  const cJSON *model = get(in, "model");
  if (!cJSON_IsString(model) || !model->valuestring[0])
    return dialect_fail(r, QV_EINVAL, "model", "'model' must be a non-empty string");
  const cJSON *instr = get(in, "instructions"), *prev = get(in, "previous_response_id");
  const cJSON *input = get(in, "input"), *store = get(in, "store"), *bg = get(in, "background");
  const cJSON *reasoning = get(in, "reasoning"), *md = get(in, "metadata");
  const cJSON *trunc = get(in, "truncation"), *include = get(in, "include");
  if (instr && !cJSON_IsString(instr))
    return dialect_fail(r, QV_EINVAL, "instructions", "'instructions' must be a string");
  if (prev && !cJSON_IsString(prev))
    return dialect_fail(r, QV_EINVAL, "previous_response_id",
                        "'previous_response_id' must be a string");
  if (store && !cJSON_IsBool(store))
    return dialect_fail(r, QV_EINVAL, "store", "'store' must be a boolean");
  if (bg && !cJSON_IsBool(bg))
    return dialect_fail(r, QV_EINVAL, "background", "'background' must be a boolean");
  if (cJSON_IsTrue(bg))
    return dialect_fail(r, QV_EUNSUPPORTED, "background", "background responses are not supported");
  if (md && !cJSON_IsObject(md))
    return dialect_fail(r, QV_EINVAL, "metadata", "'metadata' must be an object");
  if (include && !cJSON_IsArray(include))
    return dialect_fail(r, QV_EINVAL, "include", "'include' must be an array");
  if (trunc && (!cJSON_IsString(trunc) || (strcmp(trunc->valuestring, "disabled") &&
                                           strcmp(trunc->valuestring, "auto"))))
    return dialect_fail(r, QV_EINVAL, "truncation", "'truncation' must be disabled or auto");
  if (reasoning && !cJSON_IsObject(reasoning))
    return dialect_fail(r, QV_EINVAL, "reasoning", "'reasoning' must be an object");
  const cJSON *effort = get(reasoning, "effort");
  if (effort && !cJSON_IsString(effort))
    return dialect_fail(r, QV_EINVAL, "reasoning", "'reasoning.effort' must be a string");
  if (!input && !prev) return dialect_fail(r, QV_EINVAL, "input", "'input' is required");
  st->store = !store || cJSON_IsTrue(store);

  /* The conversation: the stored one, then this input. */
  if (prev) {
    char *conv = NULL;
    int rc = resp_store_get(r->s->responses, prev->valuestring, (int64_t)time(NULL), NULL, &conv);
    if (rc == QV_ENOTFOUND) {
      r->fail_status = 404;
      r->fail_param = "previous_response_id";
      r->fail_code = "previous_response_not_found";
      return dialect_fail(r, QV_ENOTFOUND, "previous_response_id",
                          "Previous response with id '%.80s' not found.", prev->valuestring);
    }
    if (rc) return OOM(r);
    st->conv = cJSON_Parse(conv);
    free(conv);
    if (!cJSON_IsArray(st->conv)) return OOM(r);
  } else {
    st->conv = cJSON_CreateArray();
    if (!st->conv) return OOM(r);
  }
  if (cJSON_IsString(input)) {
    if (dialect_add_msg(st->conv, "user", input->valuestring)) return OOM(r);
  } else if (cJSON_IsArray(input)) {
    const cJSON *item;
    int rc;
    cJSON_ArrayForEach(item, input) if ((rc = convert_item(r, st->conv, item))) return rc;
  } else if (input) {
    return dialect_fail(r, QV_EINVAL, "input", "'input' must be a string or an array of items");
  }
  if (cJSON_GetArraySize(st->conv) == 0)
    return dialect_fail(r, QV_EINVAL, "input", "'input' holds no message");

  cJSON *msgs = cJSON_AddArrayToObject(out, "messages");
  if (!msgs) return OOM(r);
  if (instr && dialect_add_msg(msgs, "system", instr->valuestring)) return OOM(r);
  const cJSON *m;
  cJSON_ArrayForEach(m, st->conv) {
    cJSON *d = cJSON_Duplicate(m, 1);
    if (!d) return OOM(r);
    cJSON_AddItemToArray(msgs, d);
  }
  int rc;
  if ((rc = copy_field(r, out, in, "model", "model")) ||
      (rc = copy_field(r, out, in, "max_output_tokens", "max_tokens")) ||
      (rc = copy_field(r, out, in, "temperature", "temperature")) ||
      (rc = copy_field(r, out, in, "top_p", "top_p")) ||
      (rc = copy_field(r, out, in, "stream", "stream")) ||
      (rc = copy_field(r, out, in, "stream_options", "stream_options")) ||
      (rc = copy_field(r, out, in, "parallel_tool_calls", "parallel_tool_calls")) ||
      (rc = copy_field(r, out, in, "user", "user")) ||
      (rc = copy_field(r, out, in, "service_tier", "service_tier")) ||
      (rc = copy_field(r, out, in, "prompt_cache_key", "prompt_cache_key")) ||
      (rc = copy_field(r, out, in, "safety_identifier", "safety_identifier")))
    return rc;
  if (effort && !cJSON_AddStringToObject(out, "reasoning_effort", effort->valuestring))
    return OOM(r);
  const cJSON *tools = get(in, "tools"), *tc = get(in, "tool_choice"), *text = get(in, "text");
  if (tools && (rc = convert_tools(r, out, tools))) return rc;
  if (tc && (rc = convert_tool_choice(r, out, tc))) return rc;
  if (text && (rc = convert_text(r, out, text))) return rc;
  return 0;
}

static int resp_decode(srv_req *r, const char *body, size_t len) {
  resp_state *st = calloc(1, sizeof *st);
  if (!st) return OOM(r);
  r->dstate = st;
  int prc = oai_json_parse_strict(body, len, &st->in, &r->work_err);
  if (prc) return prc;
  if (!cJSON_IsObject(st->in))
    return dialect_fail(r, QV_EFORMAT, NULL, "request body must be a JSON object");
  cJSON *out = cJSON_CreateObject();
  if (!out) return OOM(r);
  int rc = translate(r, st, st->in, out);
  if (rc) {
    cJSON_Delete(out);
    return rc;
  }
  return oai_request_parse_root(OAI_CHAT, out, &r->o, &r->work_err);
}

/* ---- the response object ---- */

static void add_echo(cJSON *root, const cJSON *in, const char *k, cJSON *dflt) {
  const cJSON *v = get(in, k);
  if (v) {
    cJSON_AddItemToObject(root, k, cJSON_Duplicate(v, 1));
    cJSON_Delete(dflt);
  } else {
    cJSON_AddItemToObject(root, k, dflt);
  }
}

static cJSON *text_part(const char *type, const char *text) {
  cJSON *p = cJSON_CreateObject();
  cJSON_AddStringToObject(p, "type", type);
  cJSON_AddStringToObject(p, "text", text);
  if (!strcmp(type, "output_text")) {
    cJSON_AddArrayToObject(p, "annotations");
    cJSON_AddArrayToObject(p, "logprobs");
  }
  return p;
}

static cJSON *message_item(const srv_req *r, const char *text, const char *status) {
  char id[64];
  snprintf(id, sizeof id, "msg_%s", r->id + 5);
  cJSON *it = cJSON_CreateObject();
  cJSON_AddStringToObject(it, "id", id);
  cJSON_AddStringToObject(it, "type", "message");
  cJSON_AddStringToObject(it, "status", status);
  cJSON_AddStringToObject(it, "role", "assistant");
  cJSON *content = cJSON_AddArrayToObject(it, "content");
  if (text) cJSON_AddItemToArray(content, text_part("output_text", text));
  return it;
}

static cJSON *reasoning_item(const srv_req *r, const char *text, const char *status) {
  char id[64];
  snprintf(id, sizeof id, "rs_%s", r->id + 5);
  cJSON *it = cJSON_CreateObject();
  cJSON_AddStringToObject(it, "id", id);
  cJSON_AddStringToObject(it, "type", "reasoning");
  cJSON_AddArrayToObject(it, "summary");
  cJSON *content = cJSON_AddArrayToObject(it, "content");
  if (text) cJSON_AddItemToArray(content, text_part("reasoning_text", text));
  cJSON_AddStringToObject(it, "status", status);
  return it;
}

static cJSON *call_item(const cJSON *call, const char *status, int with_args) {
  const cJSON *fn = cJSON_GetObjectItemCaseSensitive(call, "function");
  const cJSON *id = cJSON_GetObjectItemCaseSensitive(call, "id");
  const cJSON *name = cJSON_GetObjectItemCaseSensitive(fn, "name");
  const cJSON *args = cJSON_GetObjectItemCaseSensitive(fn, "arguments");
  const char *cid = cJSON_IsString(id) ? id->valuestring : "call_0";
  char iid[160];
  snprintf(iid, sizeof iid, "fc_%.140s", cid);
  cJSON *it = cJSON_CreateObject();
  cJSON_AddStringToObject(it, "id", iid);
  cJSON_AddStringToObject(it, "type", "function_call");
  cJSON_AddStringToObject(it, "status", status);
  cJSON_AddStringToObject(it, "call_id", cid);
  cJSON_AddStringToObject(it, "name", cJSON_IsString(name) ? name->valuestring : "");
  cJSON_AddStringToObject(it, "arguments",
                          with_args && cJSON_IsString(args) ? args->valuestring : "");
  return it;
}

/* The response object; output may be NULL (no items yet). */
static cJSON *response_obj(srv_req *r, const char *status, const char *finish, cJSON *output,
                           int with_usage) {
  resp_state *st = r->dstate;
  const cJSON *in = st->in;
  cJSON *root = cJSON_CreateObject();
  cJSON_AddStringToObject(root, "id", r->id);
  cJSON_AddStringToObject(root, "object", "response");
  cJSON_AddNumberToObject(root, "created_at", (double)r->created);
  cJSON_AddStringToObject(root, "status", status);
  cJSON_AddFalseToObject(root, "background");
  cJSON_AddNullToObject(root, "error");
  if (finish && !strcmp(finish, "length")) {
    cJSON *d = cJSON_AddObjectToObject(root, "incomplete_details");
    cJSON_AddStringToObject(d, "reason", "max_output_tokens");
  } else {
    cJSON_AddNullToObject(root, "incomplete_details");
  }
  add_echo(root, in, "instructions", cJSON_CreateNull());
  add_echo(root, in, "max_output_tokens", cJSON_CreateNull());
  cJSON_AddStringToObject(root, "model", r->model_name);
  cJSON_AddItemToObject(root, "output", output ? output : cJSON_CreateArray());
  cJSON_AddBoolToObject(root, "parallel_tool_calls", r->o.parallel_tool_calls);
  add_echo(root, in, "previous_response_id", cJSON_CreateNull());
  cJSON *rs = cJSON_AddObjectToObject(root, "reasoning");
  const cJSON *effort = get(get(in, "reasoning"), "effort");
  if (effort) cJSON_AddStringToObject(rs, "effort", effort->valuestring);
  else cJSON_AddNullToObject(rs, "effort");
  cJSON_AddNullToObject(rs, "summary");
  cJSON_AddStringToObject(root, "service_tier", "default");
  cJSON_AddBoolToObject(root, "store", st->store);
  add_echo(root, in, "temperature", cJSON_CreateNumber(1.0));
  cJSON *text = cJSON_CreateObject();
  cJSON_AddStringToObject(cJSON_AddObjectToObject(text, "format"), "type", "text");
  add_echo(root, in, "text", text);
  add_echo(root, in, "tool_choice", cJSON_CreateString("auto"));
  add_echo(root, in, "tools", cJSON_CreateArray());
  add_echo(root, in, "top_p", cJSON_CreateNumber(1.0));
  add_echo(root, in, "truncation", cJSON_CreateString("disabled"));
  if (with_usage) {
    cJSON *u = cJSON_AddObjectToObject(root, "usage");
    cJSON_AddNumberToObject(u, "input_tokens", r->usage.prompt_tokens);
    cJSON_AddNumberToObject(cJSON_AddObjectToObject(u, "input_tokens_details"), "cached_tokens",
                            r->usage.cached_tokens);
    cJSON_AddNumberToObject(u, "output_tokens", r->usage.completion_tokens);
    cJSON_AddNumberToObject(cJSON_AddObjectToObject(u, "output_tokens_details"),
                            "reasoning_tokens", 0);
    cJSON_AddNumberToObject(u, "total_tokens",
                            r->usage.prompt_tokens + r->usage.completion_tokens);
  } else {
    cJSON_AddNullToObject(root, "usage");
  }
  add_echo(root, in, "user", cJSON_CreateNull());
  add_echo(root, in, "metadata", cJSON_CreateObject());
  return root;
}

/* A response, and its last item, is incomplete when max_output_tokens cut it. */
static const char *status_of(const char *finish) {
  return finish && !strcmp(finish, "length") ? "incomplete" : "completed";
}

/* The finished output: reasoning, message (when there is text or nothing else), calls. */
static cJSON *output_items(srv_req *r, const char *text, const char *reasoning,
                           const cJSON *calls, const char *finish) {
  cJSON *out = cJSON_CreateArray();
  int msg = (text && text[0]) || cJSON_GetArraySize(calls) == 0;
  if (reasoning && reasoning[0])
    cJSON_AddItemToArray(out, reasoning_item(r, reasoning, msg ? "completed" : status_of(finish)));
  if (msg) cJSON_AddItemToArray(out, message_item(r, text ? text : "", status_of(finish)));
  const cJSON *c;
  cJSON_ArrayForEach(c, calls) cJSON_AddItemToArray(out, call_item(c, "completed", 1));
  return out;
}

/* Stores the response and its conversation (the input plus the assistant's turn). */
static void store_response(srv_req *r, const cJSON *resp, const char *text, const cJSON *calls) {
  resp_state *st = r->dstate;
  if (!st->store) return;
  cJSON *conv = cJSON_Duplicate(st->conv, 1);
  cJSON *m = cJSON_CreateObject();
  if (conv && m) {
    cJSON_AddStringToObject(m, "role", "assistant");
    cJSON_AddStringToObject(m, "content", text ? text : "");
    if (cJSON_GetArraySize(calls) > 0) {
      cJSON *cs = cJSON_Duplicate(calls, 1);
      cJSON *c;
      cJSON_ArrayForEach(c, cs) cJSON_DeleteItemFromObjectCaseSensitive(c, "index");
      cJSON_AddItemToObject(m, "tool_calls", cs);
    }
    cJSON_AddItemToArray(conv, m);
    m = NULL;
  }
  char *cj = conv ? cJSON_PrintUnformatted(conv) : NULL;
  char *rj = cJSON_PrintUnformatted(resp);
  if (cj && rj && resp_store_put(r->s->responses, r->id, rj, cj, (int64_t)time(NULL)))
    QV_LOGW("serve: response %s not stored (larger than the store)", r->id);
  free(cj);
  free(rj);
  cJSON_Delete(conv);
  cJSON_Delete(m);
}

static char *resp_response_json(srv_req *r, const oai_choice *cs, int32_t n) {
  const oai_choice *c = &cs[0];
  char *text = malloc(c->text_len + 1);
  if (!text) return NULL;
  memcpy(text, c->text, c->text_len);
  text[c->text_len] = '\0';
  cJSON *root = response_obj(r, status_of(c->finish_reason), c->finish_reason,
                             output_items(r, text, c->reasoning, c->tool_calls, c->finish_reason),
                             1);
  store_response(r, root, text, c->tool_calls);
  free(text);
  char *s = cJSON_PrintUnformatted(root);
  cJSON_Delete(root);
  return s;
}

/* ---- streaming ---- */

static void send_event(srv_req *r, const char *type, cJSON *ev) {
  resp_state *st = r->dstate;
  if (!r->conn) {
    cJSON_Delete(ev);
    return;
  }
  cJSON_AddStringToObject(ev, "type", type);
  cJSON_AddNumberToObject(ev, "sequence_number", st->seq++);
  srv_stream_send(r, dialect_sse(type, ev));
}

static cJSON *at(int32_t output_index, const char *item_id) {
  cJSON *ev = cJSON_CreateObject();
  if (item_id) cJSON_AddStringToObject(ev, "item_id", item_id);
  cJSON_AddNumberToObject(ev, "output_index", output_index);
  return ev;
}

static void lifecycle(srv_req *r, const char *type, const char *status, const char *finish,
                      cJSON *output, int usage) {
  cJSON *ev = cJSON_CreateObject();
  cJSON_AddItemToObject(ev, "response", response_obj(r, status, finish, output, usage));
  send_event(r, type, ev);
}

static void resp_stream_begin(srv_req *r) {
  lifecycle(r, "response.created", "in_progress", NULL, NULL, 0);
  lifecycle(r, "response.in_progress", "in_progress", NULL, NULL, 0);
}

static const char *item_id_of(cJSON *item) {
  return cJSON_GetObjectItemCaseSensitive(item, "id")->valuestring;
}

static void item_added(srv_req *r, int32_t idx, cJSON *item) {
  cJSON *ev = at(idx, NULL);
  cJSON_AddItemToObject(ev, "item", item);
  send_event(r, "response.output_item.added", ev);
}

static void item_done(srv_req *r, int32_t idx, cJSON *item) {
  resp_state *st = r->dstate;
  cJSON_AddItemToArray(st->done_items, cJSON_Duplicate(item, 1));
  cJSON *ev = at(idx, NULL);
  cJSON_AddItemToObject(ev, "item", item);
  send_event(r, "response.output_item.done", ev);
}

/* Opens a message (1) or reasoning (2) item with its one content part. */
static void open_item(srv_req *r, resp_state *st, int kind);

static void close_item(srv_req *r, resp_state *st) {
  if (!st->open) return;
  int msg = st->open == 1;
  const char *text = msg ? (st->text ? st->text : "") : (st->reasoning ? st->reasoning : "");
  /* Closed at the end of the choice, the item is the last one: incomplete when cut. */
  const srv_choice *ch = &r->choices[0];
  const char *status = ch->finished ? status_of(ch->finish) : "completed";
  cJSON *item = msg ? message_item(r, text, status) : reasoning_item(r, text, status);
  const char *iid = item_id_of(item);
  cJSON *ev = at(st->open_idx, iid);
  cJSON_AddNumberToObject(ev, "content_index", 0);
  cJSON_AddStringToObject(ev, "text", text);
  if (msg) cJSON_AddArrayToObject(ev, "logprobs");
  send_event(r, msg ? "response.output_text.done" : "response.reasoning_text.done", ev);
  ev = at(st->open_idx, iid);
  cJSON_AddNumberToObject(ev, "content_index", 0);
  cJSON_AddItemToObject(ev, "part", text_part(msg ? "output_text" : "reasoning_text", text));
  send_event(r, "response.content_part.done", ev);
  item_done(r, st->open_idx, item);
  st->closed |= 1 << st->open;
  st->open = 0;
}

static void open_item(srv_req *r, resp_state *st, int kind) {
  if (st->open == kind) return;
  close_item(r, st);
  /* quiver's output has at most one message and one reasoning item (reasoning comes first);
   * a delta of a kind already closed (reasoning after the answer) is not streamed, since a
   * second item would repeat the first one's id. */
  st->open = kind;
  st->open_idx = st->n_items++;
  cJSON *item = kind == 1 ? message_item(r, NULL, "in_progress")
                          : reasoning_item(r, NULL, "in_progress");
  char iid[80];
  snprintf(iid, sizeof iid, "%s", item_id_of(item));
  item_added(r, st->open_idx, item);
  cJSON *ev = at(st->open_idx, iid);
  cJSON_AddNumberToObject(ev, "content_index", 0);
  cJSON_AddItemToObject(ev, "part", text_part(kind == 1 ? "output_text" : "reasoning_text", ""));
  send_event(r, "response.content_part.added", ev);
}

static void text_delta(srv_req *r, resp_state *st, int kind, const char *t, size_t n) {
  char **buf = kind == 1 ? &st->text : &st->reasoning;
  size_t *len = kind == 1 ? &st->text_len : &st->reasoning_len;
  size_t *cap = kind == 1 ? &st->text_cap : &st->reasoning_cap;
  if (dialect_append(buf, len, cap, t, n)) {
    srv_stream_send(r, NULL);
    return;
  }
  if (st->closed & (1 << kind)) return; /* see open_item */
  open_item(r, st, kind);
  char *d = malloc(n + 1);
  if (!d) {
    srv_stream_send(r, NULL);
    return;
  }
  memcpy(d, t, n);
  d[n] = '\0';
  char iid[80];
  snprintf(iid, sizeof iid, "%s_%s", kind == 1 ? "msg" : "rs", r->id + 5);
  cJSON *ev = at(st->open_idx, iid);
  cJSON_AddNumberToObject(ev, "content_index", 0);
  cJSON_AddStringToObject(ev, "delta", d);
  if (kind == 1) cJSON_AddArrayToObject(ev, "logprobs");
  free(d);
  send_event(r, kind == 1 ? "response.output_text.delta" : "response.reasoning_text.delta", ev);
}

static void resp_stream_delta(srv_req *r, int32_t ci, const srv_delta *d) {
  resp_state *st = r->dstate;
  if (!st->calls && !(st->calls = cJSON_CreateArray())) return;
  if (!st->done_items && !(st->done_items = cJSON_CreateArray())) return;
  if (d->reasoning_len > 0) text_delta(r, st, 2, d->reasoning, d->reasoning_len);
  if (d->text_len > 0) text_delta(r, st, 1, d->text, d->text_len);
  const cJSON *call;
  cJSON_ArrayForEach(call, d->tool_calls) {
    close_item(r, st);
    cJSON_AddItemToArray(st->calls, cJSON_Duplicate(call, 1));
    int32_t idx = st->n_items++;
    cJSON *item = call_item(call, "in_progress", 0);
    char iid[160];
    snprintf(iid, sizeof iid, "%s", item_id_of(item));
    item_added(r, idx, item);
    cJSON *done = call_item(call, "completed", 1);
    const char *args = cJSON_GetObjectItemCaseSensitive(done, "arguments")->valuestring;
    cJSON *ev = at(idx, iid);
    cJSON_AddStringToObject(ev, "delta", args);
    send_event(r, "response.function_call_arguments.delta", ev);
    ev = at(idx, iid);
    cJSON_AddStringToObject(ev, "arguments", args);
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(done, "name");
    cJSON_AddStringToObject(ev, "name", name->valuestring);
    send_event(r, "response.function_call_arguments.done", ev);
    item_done(r, idx, done);
  }
}

static void resp_stream_finish(srv_req *r, int32_t ci) {
  resp_state *st = r->dstate;
  if (!st->done_items && !(st->done_items = cJSON_CreateArray())) return;
  /* Nothing streamed: the output is one empty message, as in the non-streamed response. */
  if (st->n_items == 0 && cJSON_GetArraySize(st->calls) == 0) open_item(r, st, 1);
  close_item(r, st);
}

static void resp_stream_error(srv_req *r, int32_t ci, const char *message) {
  resp_state *st = r->dstate;
  st->errored = 1;
  cJSON *ev = cJSON_CreateObject();
  cJSON_AddStringToObject(ev, "code", "server_error");
  cJSON_AddStringToObject(ev, "message", message);
  cJSON_AddNullToObject(ev, "param");
  send_event(r, "error", ev);
}

static void resp_stream_end(srv_req *r) {
  resp_state *st = r->dstate;
  if (st->errored) return;
  const char *finish = r->choices[0].finish;
  cJSON *output = st->done_items ? cJSON_Duplicate(st->done_items, 1) : cJSON_CreateArray();
  cJSON *resp = response_obj(r, status_of(finish), finish, output, 1);
  store_response(r, resp, st->text, st->calls);
  cJSON *ev = cJSON_CreateObject();
  cJSON_AddItemToObject(ev, "response", resp);
  send_event(r, strcmp(status_of(finish), "completed") ? "response.incomplete"
                                                       : "response.completed", ev);
}

static const char *resp_id_prefix(const srv_req *r) { return "resp_"; }

const srv_dialect srv_dialect_responses = {
    .name = "responses",
    .decode = resp_decode,
    .error_json = oai_error_json,
    .stream_begin = resp_stream_begin,
    .stream_delta = resp_stream_delta,
    .stream_finish = resp_stream_finish,
    .stream_error = resp_stream_error,
    .stream_end = resp_stream_end,
    .response_json = resp_response_json,
    .count_json = NULL,
    .id_prefix = resp_id_prefix,
    .state_free = state_free,
};
