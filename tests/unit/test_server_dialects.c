#define _GNU_SOURCE
/* The API dialects end to end over real sockets on the fake engine (server_harness.h):
 * Anthropic Messages and OpenAI Responses (dialect_anthropic.c, dialect_responses.c), the extra
 * chat-completions fields and parallel_tool_calls. */
#include "server_harness.h"

/* The "event: NAME" lines of an SSE body, joined with commas. */
static void sse_events(const char *body, char *out, size_t cap) {
  out[0] = '\0';
  size_t n = 0;
  for (const char *p = body; (p = strstr(p, "event: ")); p += 7) {
    const char *e = strchr(p, '\n');
    cr_assert_not_null(e);
    n += (size_t)snprintf(out + n, cap - n, "%s%.*s", n ? "," : "", (int)(e - p - 7), p + 7);
    cr_assert_lt(n, cap);
  }
}

/* Anthropic Messages on the tool-calling fake: the text becomes one tool_use block (stop_reason
 * tool_use), streamed as content_block_start + input_json_delta + content_block_stop; the same
 * request without tools is plain text, and stop_sequences name the sequence that stopped. */
Test(server, anthropic_messages) {
  start(NULL, "k1", 0, 0);
  const char *key = "x-api-key: k1\r\nanthropic-version: 2023-06-01\r\n";
  char want[8];
  expected('A', 27, 0, 3, want); /* B C D, then E stops */
  const char *tools = "\"tools\":[{\"name\":\"f\",\"input_schema\":{\"type\":\"object\"}}]";
  char body[600];
  snprintf(body, sizeof body,
           "{\"model\":\"upper\",\"max_tokens\":9,\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],"
           "\"stop_sequences\":[\"E\"],%s}", tools);
  resp r = request("POST", "/v1/messages", body, key);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cJSON *j = json_of(&r);
  cr_assert_str_eq(cJSON_GetObjectItem(j, "type")->valuestring, "message");
  cr_assert_str_eq(cJSON_GetObjectItem(j, "stop_reason")->valuestring, "tool_use");
  cJSON *b = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "content"), 0);
  cr_assert_str_eq(cJSON_GetObjectItem(b, "type")->valuestring, "tool_use");
  cr_assert_str_eq(cJSON_GetObjectItem(b, "name")->valuestring, "f");
  cr_assert_str_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(b, "input"), "text")->valuestring, want);
  cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(j, "content")), 1);
  cJSON *u = cJSON_GetObjectItem(j, "usage");
  cr_assert_eq(cJSON_GetObjectItem(u, "input_tokens")->valueint, 27);
  cr_assert_eq(cJSON_GetObjectItem(u, "output_tokens")->valueint, 3);
  cJSON_Delete(j);
  free(r.body);
  snprintf(body, sizeof body,
           "{\"model\":\"upper\",\"max_tokens\":9,\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],"
           "\"stop_sequences\":[\"E\"],\"stream\":true,%s}", tools);
  r = request("POST", "/v1/messages", body, key);
  cr_assert_eq(r.status, 200, "%s", r.body);
  char ev[1024];
  sse_events(r.body, ev, sizeof ev);
  cr_assert_str_eq(ev, "message_start,ping,content_block_start,content_block_delta,"
                       "content_block_stop,message_delta,message_stop");
  char frag[128];
  snprintf(frag, sizeof frag, "\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"text\\\":\\\"%s\\\"}\"", want);
  cr_assert(strstr(r.body, frag), "%s", r.body);
  cr_assert(strstr(r.body, "\"content_block\":{\"type\":\"tool_use\",\"id\":\"call_1\",\"name\":\"f\",\"input\":{}}"), "%s", r.body);
  cr_assert(strstr(r.body, "\"stop_reason\":\"tool_use\""), "%s", r.body);
  free(r.body);
  /* No tools: text, stopped by a stop sequence. */
  r = request("POST", "/v1/messages",
              "{\"model\":\"upper\",\"max_tokens\":9,\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],"
              "\"stop_sequences\":[\"E\"],\"stream\":true}", key);
  cr_assert_eq(r.status, 200, "%s", r.body);
  sse_events(r.body, ev, sizeof ev);
  cr_assert_str_eq(ev, "message_start,ping,content_block_start,content_block_delta,"
                       "content_block_delta,content_block_delta,content_block_stop,message_delta,"
                       "message_stop");
  cr_assert(strstr(r.body, "\"stop_reason\":\"stop_sequence\",\"stop_sequence\":\"E\""), "%s", r.body);
  free(r.body);
  /* Errors are Anthropic error objects, auth by x-api-key or Bearer. */
  r = request("POST", "/v1/messages", "{\"model\":\"upper\",\"max_tokens\":2,\"messages\":[]}", NULL);
  cr_assert_eq(r.status, 401);
  cr_assert(strstr(r.body, "{\"type\":\"error\",\"error\":{\"type\":\"authentication_error\""), "%s", r.body);
  free(r.body);
  r = request("POST", "/v1/messages", "{\"model\":\"nope\",\"max_tokens\":2,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
              "Authorization: Bearer k1\r\n");
  cr_assert_eq(r.status, 404);
  cr_assert(strstr(r.body, "\"type\":\"not_found_error\""), "%s", r.body);
  free(r.body);
  r = request("POST", "/v1/messages/count_tokens",
              "{\"model\":\"upper\",\"system\":\"S\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}", key);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cr_assert_str_eq(r.body, "{\"input_tokens\":40}"); /* "<|system|>\nS\n" adds 13 bytes */
  free(r.body);
  r = request("GET", "/v1/models", NULL, "x-api-key: k2\r\n");
  cr_assert_eq(r.status, 401);
  free(r.body);
  stop();
}

/* Responses API: a function_call output item (streamed: added, arguments delta/done, done),
 * stored responses (GET, DELETE, previous_response_id), store false, an unknown id is a 404. */
Test(server, responses_api) {
  start(NULL, NULL, 0, 0);
  char want[16], args[64];
  expected('A', 27, 0, 9, want); /* no stop: max_output_tokens ends it (incomplete) */
  snprintf(args, sizeof args, "{\"text\":\"%s\"}", want);
  const char *req = "{\"model\":\"upper\",\"input\":\"Hi\",\"max_output_tokens\":9,"
                    "\"tools\":[{\"type\":\"function\",\"name\":\"f\"}]%s}";
  char body[400];
  snprintf(body, sizeof body, req, "");
  resp r = request("POST", "/v1/responses", body, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cJSON *j = json_of(&r);
  cJSON *out = cJSON_GetObjectItem(j, "output");
  cJSON *it = cJSON_GetArrayItem(out, 0);
  cr_assert_eq(cJSON_GetArraySize(out), 1, "%s", r.body);
  cr_assert_str_eq(cJSON_GetObjectItem(it, "type")->valuestring, "function_call");
  cr_assert_str_eq(cJSON_GetObjectItem(it, "call_id")->valuestring, "call_1");
  cr_assert_str_eq(cJSON_GetObjectItem(it, "name")->valuestring, "f");
  char id[64];
  snprintf(id, sizeof id, "%s", cJSON_GetObjectItem(j, "id")->valuestring);
  cr_assert_str_eq(cJSON_GetObjectItem(it, "arguments")->valuestring, args);
  cr_assert_str_eq(cJSON_GetObjectItem(j, "status")->valuestring, "incomplete");
  cr_assert_str_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "incomplete_details"), "reason")->valuestring,
                   "max_output_tokens");
  cJSON_Delete(j);
  free(r.body);
  snprintf(body, sizeof body, req, ",\"stream\":true");
  r = request("POST", "/v1/responses", body, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  char ev[1024];
  sse_events(r.body, ev, sizeof ev);
  cr_assert_str_eq(ev, "response.created,response.in_progress,response.output_item.added,"
                       "response.function_call_arguments.delta,"
                       "response.function_call_arguments.done,response.output_item.done,"
                       "response.incomplete");
  cr_assert(strstr(r.body, "\"sequence_number\":6"), "%s", r.body);
  free(r.body);
  /* Stored: GET returns it, previous_response_id continues it, DELETE forgets it. */
  char path[100];
  snprintf(path, sizeof path, "/v1/responses/%s", id);
  r = request("GET", path, NULL, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cr_assert(strstr(r.body, id));
  free(r.body);
  snprintf(body, sizeof body,
           "{\"model\":\"lower\",\"input\":[{\"type\":\"function_call_output\",\"call_id\":\"call_1\","
           "\"output\":\"42\"}],\"previous_response_id\":\"%s\",\"max_output_tokens\":2}", id);
  r = request("POST", "/v1/responses", body, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cr_assert(strstr(r.body, "\"output_text\""), "%s", r.body);
  free(r.body);
  r = request("DELETE", path, NULL, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cr_assert(strstr(r.body, "\"deleted\":true"));
  free(r.body);
  r = request("GET", path, NULL, NULL);
  cr_assert_eq(r.status, 404);
  free(r.body);
  r = request("POST", "/v1/responses", body, NULL);
  cr_assert_eq(r.status, 404, "%s", r.body);
  cr_assert(strstr(r.body, "previous_response_id"));
  free(r.body);
  r = request("POST", "/v1/responses",
              "{\"model\":\"lower\",\"input\":\"Hi\",\"store\":false,\"max_output_tokens\":2}", NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  j = json_of(&r);
  snprintf(path, sizeof path, "/v1/responses/%s", cJSON_GetObjectItem(j, "id")->valuestring);
  cJSON_Delete(j);
  free(r.body);
  r = request("GET", path, NULL, NULL);
  cr_assert_eq(r.status, 404);
  free(r.body);
  r = request("PUT", path, NULL, NULL);
  cr_assert_eq(r.status, 405);
  free(r.body);
  stop();
}

/* Chat: metadata and unknown fields accepted; continuous usage in every chunk. */
Test(server, chat_extra_fields) {
  start(NULL, NULL, 0, 0);
  resp r = request("POST", "/v1/chat/completions",
                   "{\"model\":\"lower\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],"
                   "\"max_tokens\":3,\"stream\":true,\"store\":true,\"metadata\":{},\"whatever\":1,"
                   "\"stream_options\":{\"include_usage\":true,\"continuous_usage_stats\":true}}",
                   NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  int chunks = 0, with_usage = 0;
  for (const char *p = r.body; (p = strstr(p, "data: {")); p += 6) {
    chunks++;
    const char *e = strstr(p, "\n\n");
    with_usage += memmem(p, (size_t)(e - p), "\"usage\":{", 9) != NULL;
  }
  cr_assert_eq(chunks, 6, "%s", r.body); /* role, 3 tokens, finish, usage */
  cr_assert_eq(with_usage, chunks, "%s", r.body);
  cr_assert(strstr(r.body, "\"completion_tokens\":2,"), "%s", r.body);
  free(r.body);
  stop();
}

/* parallel_tool_calls false keeps the first of several calls, whole or streamed; Anthropic's
 * disable_parallel_tool_use maps onto it. */
Test(server, parallel_tool_calls) {
  H.script = "ab|cd";
  start(NULL, NULL, 0, 0);
  const char *base = "{\"model\":\"upper\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],"
                     "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]%s}";
  char body[400];
  snprintf(body, sizeof body, base, "");
  resp r = request("POST", "/v1/chat/completions", body, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cr_assert(strstr(r.body, "\"call_1\"") && strstr(r.body, "\"call_2\""), "%s", r.body);
  free(r.body);
  snprintf(body, sizeof body, base, ",\"parallel_tool_calls\":false");
  r = request("POST", "/v1/chat/completions", body, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cr_assert(strstr(r.body, "\"call_1\"") && !strstr(r.body, "\"call_2\""), "%s", r.body);
  free(r.body);
  snprintf(body, sizeof body, base, ",\"parallel_tool_calls\":false,\"stream\":true");
  r = request("POST", "/v1/chat/completions", body, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cr_assert(strstr(r.body, "\"call_1\"") && !strstr(r.body, "\"call_2\""), "%s", r.body);
  cr_assert(strstr(r.body, "\"finish_reason\":\"tool_calls\""), "%s", r.body);
  free(r.body);
  const char *ant = "{\"model\":\"upper\",\"max_tokens\":9,\"messages\":[{\"role\":\"user\","
                    "\"content\":\"Hi\"}],\"tools\":[{\"name\":\"f\",\"input_schema\":{}}]%s}";
  snprintf(body, sizeof body, ant, ",\"stream\":true");
  r = request("POST", "/v1/messages", body, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  char ev[1024];
  sse_events(r.body, ev, sizeof ev);
  cr_assert_str_eq(ev, "message_start,ping,content_block_start,content_block_delta,"
                       "content_block_stop,content_block_start,content_block_delta,"
                       "content_block_stop,message_delta,message_stop");
  cr_assert(strstr(r.body, "\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"call_2\""),
            "%s", r.body);
  free(r.body);
  snprintf(body, sizeof body, ant,
           ",\"tool_choice\":{\"type\":\"auto\",\"disable_parallel_tool_use\":true}");
  r = request("POST", "/v1/messages", body, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cJSON *j = json_of(&r);
  cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(j, "content")), 1, "%s", r.body);
  cJSON_Delete(j);
  free(r.body);
  stop();
  H.script = NULL;
}


/* The number at "key": in body (first occurrence), or -1. */
static int num_after(const char *body, const char *key) {
  const char *p = strstr(body, key);
  return p ? atoi(p + strlen(key)) : -1;
}

/* NUL characters (\u0000) on the fake's byte tokenizer (id = 3 + byte): a prompt's NUL is id 3
 * on /tokenize; token-id prompts echo it and /detokenize gives it back as \u0000; a
 * conversation with NULs counts the same tokens on chat tokenize, Messages count_tokens and
 * Responses usage, and a message without them differs (the NUL is not dropped). */
Test(server, nul_characters) {
  start(NULL, NULL, 0, 0);
  resp r = request("POST", "/tokenize",
                   "{\"model\":\"lower\",\"prompt\":\"a\\u0000b\",\"add_special_tokens\":false}", NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cr_assert(strstr(r.body, "\"tokens\":[100,3,101]"), "%s", r.body);
  free(r.body);
  r = request("POST", "/v1/completions",
              "{\"model\":\"lower\",\"prompt\":[100,3,101],\"max_tokens\":1,\"echo\":true}", NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cr_assert(strstr(r.body, "\"text\":\"a\\u0000b"), "%s", r.body);
  free(r.body);
  r = request("POST", "/detokenize", "{\"model\":\"lower\",\"tokens\":[100,3,3,101]}", NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cr_assert(strstr(r.body, "\"prompt\":\"a\\u0000\\u0000b\""), "%s", r.body);
  free(r.body);
  const char *msgs = "\"messages\":[{\"role\":\"user\",\"content\":\"a\\u0000\\u0000b\"}]";
  char body[300];
  snprintf(body, sizeof body, "{\"model\":\"lower\",%s}", msgs);
  r = request("POST", "/tokenize", body, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cr_assert(strstr(r.body, ",100,3,3,101,"), "%s", r.body);
  int want = num_after(r.body, "\"count\":");
  free(r.body);
  snprintf(body, sizeof body, "{\"model\":\"lower\",%s}", msgs);
  r = request("POST", "/v1/messages/count_tokens", body, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cr_assert_eq(num_after(r.body, "\"input_tokens\":"), want, "%s", r.body);
  free(r.body);
  r = request("POST", "/v1/responses",
              "{\"model\":\"lower\",\"max_output_tokens\":2,\"input\":\"a\\u0000\\u0000b\"}", NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cr_assert_eq(num_after(r.body, "\"input_tokens\":"), want, "%s", r.body);
  free(r.body);
  r = request("POST", "/v1/messages/count_tokens",
              "{\"model\":\"lower\",\"messages\":[{\"role\":\"user\",\"content\":\"ab\"}]}", NULL);
  cr_assert_eq(num_after(r.body, "\"input_tokens\":"), want - 2, "%s", r.body);
  free(r.body);
  /* unsafe places: the dialect's own error shape */
  r = request("POST", "/v1/messages",
              "{\"model\":\"lo\\u0000wer\",\"max_tokens\":2,\"messages\":[{\"role\":\"user\","
              "\"content\":\"x\"}]}", NULL);
  cr_assert_eq(r.status, 400, "%s", r.body);
  cr_assert(strstr(r.body, "\"type\":\"invalid_request_error\"") && strstr(r.body, "NUL"), "%s", r.body);
  free(r.body);
  stop();
}

/* One raw request on its own connection: the answer's status and Anthropic error type ("" when
 * the body is not an Anthropic error object). */
static int raw_anthropic(const char *req, size_t len, char *type, size_t cap) {
  client *c = client_open();
  client_send(c, req, len);
  resp r;
  cr_assert(read_resp(c, &r), "no answer to %.80s", req);
  client_close(c);
  type[0] = '\0';
  cJSON *j = cJSON_Parse(r.body);
  const cJSON *t = cJSON_GetObjectItem(j, "type");
  const cJSON *e = cJSON_GetObjectItem(j, "error");
  if (cJSON_IsString(t) && !strcmp(t->valuestring, "error") && cJSON_IsString(cJSON_GetObjectItem(e, "type")) &&
      cJSON_IsString(cJSON_GetObjectItem(e, "message")))
    snprintf(type, cap, "%s", cJSON_GetObjectItem(e, "type")->valuestring);
  cJSON_Delete(j);
  free(r.body);
  return r.status;
}

/* Errors answered before routing (auth, unknown path, method, 413, 431, malformed, transfer
 * coding, HTTP version, timeout, drain) on /v1/messages* are Anthropic error objects with
 * Anthropic's types; other paths keep the OpenAI shape. */
Test(server, anthropic_early_errors) {
  start(NULL, "k1", 300, 0);
  char big[6000];
  memset(big, 'a', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  char req[8000];
  const char *key = "x-api-key: k1\r\n";
  struct {
    const char *head; /* request line and headers, without the final blank line */
    int status;
    const char *type;
  } cases[] = {
      {"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 2", 401, "authentication_error"},
      {"POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: nope\r\nContent-Length: 2", 401,
       "authentication_error"},
      {"POST /v1/messages/nope HTTP/1.1\r\nHost: x\r\n%sContent-Length: 2", 404, "not_found_error"},
      {"GET /v1/messages?beta=true HTTP/1.1\r\nHost: x\r\n%s", 405, "invalid_request_error"},
      {"POST /v1/messages HTTP/1.1\r\nHost: x\r\n%sContent-Length: 99999999", 413, "request_too_large"},
      {"POST /v1/messages/count_tokens HTTP/1.1\r\nHost: x\r\n%sX-Big: %s", 431, "invalid_request_error"},
      {"POST /v1/messages HTTP/1.1\r\nHost: x\r\n%sTransfer-Encoding: gzip", 501, "api_error"},
      {"POST /v1/messages HTTP/2.0\r\nHost: x\r\n%sContent-Length: 2", 505, "api_error"},
      {"POST /v1/messages HTTP/1.1\r\nHost: x\r\n%sContent-Length: x", 400, "invalid_request_error"},
      {"POST /v1/messages HTTP/1.1\r\nHost: x\r\n%s", 400, "invalid_request_error"}, /* no body */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    int n = snprintf(req, sizeof req, cases[i].head, key, big);
    n += snprintf(req + n, sizeof req - (size_t)n, "\r\n\r\n%s", strstr(cases[i].head, "Length: 2") ? "{}" : "");
    char type[64];
    int st = raw_anthropic(req, (size_t)n, type, sizeof type);
    cr_expect_eq(st, cases[i].status, "case %zu: %d", i, st);
    cr_expect_str_eq(type, cases[i].type, "case %zu", i);
  }
  /* a chunk past the body limit (64 KiB here), and a header section that never ends (408) */
  int n = snprintf(req, sizeof req, "POST /v1/messages HTTP/1.1\r\nHost: x\r\n%sTransfer-Encoding: "
                   "chunked\r\n\r\n100000\r\n", key);
  char type[64];
  cr_expect_eq(raw_anthropic(req, (size_t)n, type, sizeof type), 413);
  cr_expect_str_eq(type, "request_too_large");
  n = snprintf(req, sizeof req, "POST /v1/messages HTTP/1.1\r\nHost: x\r\n");
  cr_expect_eq(raw_anthropic(req, (size_t)n, type, sizeof type), 408);
  cr_expect_str_eq(type, "invalid_request_error");
  /* other paths keep the OpenAI shape */
  n = snprintf(req, sizeof req, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n%sContent-Length: 99999999\r\n\r\n", key);
  resp r;
  client *c = client_open();
  client_send(c, req, (size_t)n);
  cr_assert(read_resp(c, &r));
  client_close(c);
  cr_expect_eq(r.status, 413);
  cr_expect(strstr(r.body, "{\"error\":{\"message\":"), "%s", r.body);
  free(r.body);
  stop();
}

/* While draining, a new /v1/messages request gets 503 as an Anthropic overloaded_error (the
 * in-flight request still finishes). */
Test(server, anthropic_drain_error) {
  start(NULL, NULL, 0, 0);
  client *c = held_request("{\"model\":\"lower\",\"prompt\":\"x\",\"max_tokens\":2}");
  server_shutdown(H.srv);
  usleep(50000);
  const char *mb = "{\"model\":\"lower\",\"max_tokens\":2,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}";
  char req[512];
  int n = snprintf(req, sizeof req, "POST /v1/messages HTTP/1.1\r\nContent-Length: %zu\r\n\r\n%s",
               strlen(mb), mb);
  char type[64];
  cr_expect_eq(raw_anthropic(req, (size_t)n, type, sizeof type), 503);
  cr_expect_str_eq(type, "overloaded_error");
  fake_set_hold(&H.fakes[0], 0);
  resp r;
  cr_assert(read_resp(c, &r));
  cr_assert_eq(r.status, 200);
  free(r.body);
  client_close(c);
  stop();
}
