#define _GNU_SOURCE
/* The server end to end over real sockets, with fake models behind srv_model_ops: a fake
 * engine thread that produces deterministic letters, a byte tokenizer and the default chat
 * format. Covers the OpenAI endpoints (streamed and not), errors, auth, keep-alive and
 * pipelining, malformed and oversized requests, chunked bodies, timeouts, client disconnects
 * (which must abort the engine request), route fallback on a full queue, and graceful drain.
 * Every socket read has a timeout and every wait loop a bound. */
#include "server_harness.h"

/* ---- tests ---- */

Test(server, health_models_metrics) {
  start(NULL, NULL, 0, 0);
  resp r = request("GET", "/health", NULL, NULL);
  cr_assert_eq(r.status, 200);
  cr_assert(strstr(r.body, "\"status\":\"ok\""), "%s", r.body);
  free(r.body);
  r = request("GET", "/v1/models", NULL, NULL);
  cr_assert_eq(r.status, 200);
  cJSON *j = json_of(&r);
  cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(j, "data")), 5); /* 2 models, 2 aliases, 1 route */
  cJSON_Delete(j);
  free(r.body);
  r = request("GET", "/v1/models/small", NULL, NULL);
  cr_assert_eq(r.status, 200);
  cr_assert(strstr(r.body, "\"root\":\"lower\""), "%s", r.body);
  free(r.body);
  r = request("GET", "/v1/models/nope", NULL, NULL);
  cr_assert_eq(r.status, 404);
  free(r.body);
  r = request("POST", "/v1/completions", "{\"model\":\"lower\",\"prompt\":\"Hi\",\"max_tokens\":3}", NULL);
  cr_assert_eq(r.status, 200);
  free(r.body);
  r = request("GET", "/metrics", NULL, NULL);
  cr_assert_eq(r.status, 200);
  cr_assert(strstr(r.body, "quiver_requests_total{model=\"lower\",status=\"200\"} 1"), "%s", r.body);
  cr_assert(strstr(r.body, "quiver_generation_tokens_total{model=\"lower\"} 3"), "%s", r.body);
  cr_assert(strstr(r.body, "quiver_time_to_first_token_seconds_count{model=\"lower\"} 1"));
  free(r.body);
  stop();
}

/* Completions top_logprobs is keyed by token name: with stories260K's tokenizer, three byte
 * tokens that each decode to U+FFFD and two tokens that both read "a" are five alternatives, so
 * five distinct keys (bytes:\xNN for the partial UTF-8 ones, token_id:<id> for the later "a"),
 * streamed or not; tokens[] names the sampled token the same way. Chat logprobs keep the text
 * (U+FFFD) and carry the bytes. */
Test(server, completion_top_logprobs_distinct_keys) {
  char dir[4096];
  if (!test_shared_path(dir, sizeof dir, "models/stories260K/tokenizer.json"))
    cr_skip_test("stories260K not found");
  qv_tokenizer *tok;
  qv_error err = {0};
  cr_assert_eq(qv_tokenizer_load(dir, &tok, &err), 0, "%s", err.msg);
  int32_t e4 = qv_tokenizer_token_id(tok, "<0xE4>"), e5 = qv_tokenizer_token_id(tok, "<0xE5>");
  int32_t e6 = qv_tokenizer_token_id(tok, "<0xE6>"), byte_a = qv_tokenizer_token_id(tok, "<0x61>");
  int32_t piece_a = qv_tokenizer_token_id(tok, "a");
  cr_assert(byte_a == 3 + 'a' && e4 == 3 + 0xE4 && e5 > 0 && e6 > 0 && piece_a > 258,
            "stories260K's byte tokens are ids 3 + b");
  int32_t top[5] = {e4, e5, byte_a, piece_a, e6};
  H.tok = tok;
  H.top_ids = top;
  H.script = "a";
  start(NULL, NULL, 0, 0);
  char want_id[32];
  snprintf(want_id, sizeof want_id, "token_id:%d", piece_a);
  for (int stream = 0; stream < 2; stream++) {
    char body[200];
    snprintf(body, sizeof body,
             "{\"model\":\"lower\",\"prompt\":\"Hi\",\"max_tokens\":1,\"logprobs\":5%s}",
             stream ? ",\"stream\":true" : "");
    resp r = request("POST", "/v1/completions", body, NULL);
    cr_assert_eq(r.status, 200, "%s", r.body);
    const char *js = stream ? strstr(r.body, "data: {") + 6 : r.body;
    cJSON *j = cJSON_Parse(js);
    cr_assert_not_null(j, "%s", r.body);
    cJSON *lp = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0), "logprobs");
    cJSON *top0 = cJSON_GetArrayItem(cJSON_GetObjectItem(lp, "top_logprobs"), 0);
    cr_assert_eq(cJSON_GetArraySize(top0), 5, "%s", r.body);
    const char *keys[5] = {"bytes:\\xe4", "bytes:\\xe5", "a", want_id, "bytes:\\xe6"};
    for (int k = 0; k < 5; k++) {
      cJSON *v = cJSON_GetObjectItem(top0, keys[k]);
      cr_assert(cJSON_IsNumber(v), "no key %s in %s", keys[k], r.body);
      cr_assert_float_eq(v->valuedouble, -0.5 - k, 1e-6, "key %s", keys[k]);
    }
    cr_assert_str_eq(cJSON_GetArrayItem(cJSON_GetObjectItem(lp, "tokens"), 0)->valuestring, "a");
    cJSON_Delete(j);
    free(r.body);
  }
  resp r = request("POST", "/v1/chat/completions",
                   "{\"model\":\"lower\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],"
                   "\"max_tokens\":1,\"logprobs\":true,\"top_logprobs\":5}",
                   NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cJSON *j = json_of(&r);
  cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(cJSON_GetObjectItem(
      cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0), "logprobs"), "content"), 0);
  cJSON *tl = cJSON_GetObjectItem(c0, "top_logprobs");
  cr_assert_eq(cJSON_GetArraySize(tl), 5);
  cJSON *t0 = cJSON_GetArrayItem(tl, 0);
  cr_assert_str_eq(cJSON_GetObjectItem(t0, "token")->valuestring, "\xEF\xBF\xBD");
  cJSON *b = cJSON_GetObjectItem(t0, "bytes");
  cr_assert(cJSON_GetArraySize(b) == 3 && cJSON_GetArrayItem(b, 0)->valueint == 0xEF);
  cr_assert_str_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(tl, 3), "token")->valuestring, "a");
  cJSON_Delete(j);
  free(r.body);
  stop();
  H.tok = NULL;
  H.top_ids = NULL;
  H.script = NULL;
  qv_tokenizer_destroy(tok);
}

Test(server, completion_not_streamed_n2_echo_logprobs) {
  start(NULL, NULL, 0, 0);
  resp r = request("POST", "/v1/completions",
                   "{\"model\":\"lower\",\"prompt\":\"Hi\",\"max_tokens\":5,\"n\":2,"
                   "\"logprobs\":2}",
                   NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cJSON *j = json_of(&r);
  cJSON *choices = cJSON_GetObjectItem(j, "choices");
  cr_assert_eq(cJSON_GetArraySize(choices), 2);
  for (int c = 0; c < 2; c++) {
    char want[64];
    expected('a', 3, c, 5, want); /* BOS + 2 bytes */
    cJSON *ch = cJSON_GetArrayItem(choices, c);
    cr_assert_str_eq(cJSON_GetObjectItem(ch, "text")->valuestring, want);
    cr_assert_str_eq(cJSON_GetObjectItem(ch, "finish_reason")->valuestring, "length");
    cJSON *lp = cJSON_GetObjectItem(ch, "logprobs");
    cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(lp, "tokens")), 5);
    cJSON *top0 = cJSON_GetArrayItem(cJSON_GetObjectItem(lp, "top_logprobs"), 0);
    cr_assert_eq(cJSON_GetArraySize(top0), 2);
    cr_assert_float_eq(cJSON_GetObjectItem(top0, "b")->valuedouble, -1.5, 1e-6);
  }
  cJSON *u = cJSON_GetObjectItem(j, "usage");
  cr_assert_eq(cJSON_GetObjectItem(u, "prompt_tokens")->valueint, 3);
  cr_assert_eq(cJSON_GetObjectItem(u, "completion_tokens")->valueint, 10);
  cJSON_Delete(j);
  free(r.body);
  /* echo prepends the prompt. */
  r = request("POST", "/v1/completions",
              "{\"model\":\"lower\",\"prompt\":\"Hi\",\"max_tokens\":4,\"echo\":true}", NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  char echoed[16] = "Hi";
  expected('a', 3, 0, 4, echoed + 2);
  char needle[40];
  snprintf(needle, sizeof needle, "\"text\":\"%s\"", echoed);
  cr_assert(strstr(r.body, needle), "%s", r.body);
  free(r.body);
  /* Two prompts, a stop string: choices are prompt-major. */
  r = request("POST", "/v1/completions",
              "{\"model\":\"lower\",\"prompt\":[\"a\",[70,71,72]],\"max_tokens\":6,\"stop\":[\"h\"]}",
              NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  j = json_of(&r);
  choices = cJSON_GetObjectItem(j, "choices");
  cr_assert_eq(cJSON_GetArraySize(choices), 2);
  /* prompt 0: 2 tokens -> letters start at 'c': c d e f g (h stops) */
  cr_assert_str_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(choices, 0), "text")->valuestring, "cdefg");
  cr_assert_str_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(choices, 0), "finish_reason")->valuestring, "stop");
  cr_assert_str_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(choices, 0), "stop_reason")->valuestring, "h");
  cr_assert_str_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(choices, 1), "text")->valuestring, "defg");
  cJSON_Delete(j);
  free(r.body);
  stop();
}

Test(server, streamed_completion_and_chat) {
  start(NULL, NULL, 0, 0);
  resp r = request("POST", "/v1/completions",
                   "{\"model\":\"small\",\"prompt\":\"Hey\",\"max_tokens\":7,\"stream\":true,"
                   "\"stream_options\":{\"include_usage\":true}}",
                   NULL);
  cr_assert_eq(r.status, 200);
  cr_assert(strcasestr(r.head, "text/event-stream"));
  char text[256], want[64];
  int n_done = 0;
  cJSON *usage = NULL;
  const char *fin = NULL;
  sse_collect(r.body, 0, text, &n_done, &usage, &fin);
  expected('a', 4, 0, 7, want);
  cr_assert_str_eq(text, want);
  cr_assert_eq(n_done, 1);
  cr_assert_str_eq(fin, "length");
  cr_assert_not_null(usage);
  cr_assert_eq(cJSON_GetObjectItem(usage, "completion_tokens")->valueint, 7);
  cJSON_Delete(usage);
  cr_assert(!strcmp(r.body + r.body_len - 14, "data: [DONE]\n\n"));
  free(r.body);

  r = request("POST", "/v1/chat/completions",
              "{\"model\":\"upper\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],"
              "\"max_tokens\":4,\"stream\":true}",
              NULL);
  cr_assert_eq(r.status, 200);
  cr_assert(strstr(r.body, "\"role\":\"assistant\""));
  sse_collect(r.body, 0, text, &n_done, NULL, NULL);
  /* "<|user|>\nHi\n<|assistant|>\n" is 26 bytes + BOS = 27 tokens. */
  expected('A', 27, 0, 4, want);
  cr_assert_str_eq(text, want);
  cr_assert(strstr(r.body, "chat.completion.chunk"));
  free(r.body);

  r = request("POST", "/v1/chat/completions",
              "{\"model\":\"upper\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],"
              "\"max_tokens\":4,\"logprobs\":true,\"top_logprobs\":1}",
              NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cJSON *j = json_of(&r);
  cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
  cr_assert_str_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(ch, "message"), "content")->valuestring, want);
  cJSON *content = cJSON_GetObjectItem(cJSON_GetObjectItem(ch, "logprobs"), "content");
  cr_assert_eq(cJSON_GetArraySize(content), 4);
  cJSON_Delete(j);
  free(r.body);
  stop();
}

Test(server, errors_and_auth) {
  start(NULL, "sk-test-1", 0, 0);
  const char *auth = "Authorization: Bearer sk-test-1\r\n";
  resp r = request("POST", "/v1/completions", "{\"prompt\":\"x\"}", NULL);
  cr_assert_eq(r.status, 401);
  cr_assert(strstr(r.body, "authentication_error"));
  free(r.body);
  r = request("POST", "/v1/completions", "{\"prompt\":\"x\"}", "Authorization: Bearer nope\r\n");
  cr_assert_eq(r.status, 401);
  free(r.body);
  r = request("GET", "/health", NULL, NULL); /* open by default */
  cr_assert_eq(r.status, 200);
  free(r.body);
  r = request("POST", "/v1/completions", "{\"model\":\"ghost\",\"prompt\":\"x\"}", auth);
  cr_assert_eq(r.status, 404);
  cr_assert(strstr(r.body, "lower") && strstr(r.body, "upper") && strstr(r.body, "auto"), "%s", r.body);
  free(r.body);
  r = request("POST", "/v1/completions", "{\"prompt\":", auth);
  cr_assert_eq(r.status, 400);
  free(r.body);
  r = request("POST", "/v1/chat/completions",
              "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"response_format\":"
              "{\"type\":\"json_schema\"}}",
              auth);
  cr_assert_eq(r.status, 400);
  cr_assert(strstr(r.body, "response_format"));
  free(r.body);
  char big[256];
  memset(big, 'z', 100);
  big[100] = '\0';
  char body[400];
  snprintf(body, sizeof body, "{\"prompt\":\"%s\"}", big);
  r = request("POST", "/v1/completions", body, auth);
  cr_assert_eq(r.status, 400); /* 101 tokens > max_model_len 64 */
  cr_assert(strstr(r.body, "maximum context length"), "%s", r.body);
  free(r.body);
  r = request("POST", "/v1/completions", "{\"prompt\":\"ab\",\"max_tokens\":62}", auth);
  cr_assert_eq(r.status, 400, "%s", r.body); /* 3 + 62 > 64 */
  free(r.body);
  r = request("GET", "/v1/completions", NULL, auth);
  cr_assert_eq(r.status, 405);
  cr_assert(strcasestr(r.head, "Allow: POST"));
  free(r.body);
  r = request("GET", "/nowhere", NULL, auth);
  cr_assert_eq(r.status, 404);
  free(r.body);
  r = request("POST", "/detokenize", "{\"tokens\":[75,108,1000]}", auth);
  cr_assert_eq(r.status, 400);
  free(r.body);
  r = request("POST", "/detokenize", "{\"tokens\":[75,108]}", auth);
  cr_assert_eq(r.status, 200);
  cr_assert(strstr(r.body, "\"prompt\":\"Hi\""), "%s", r.body);
  free(r.body);
  r = request("POST", "/tokenize", "{\"prompt\":\"Hi\"}", auth);
  cr_assert_eq(r.status, 200);
  cr_assert(strstr(r.body, "\"tokens\":[1,75,108]"), "%s", r.body);
  free(r.body);
  stop();
}

Test(server, keepalive_pipelining_chunked) {
  start(NULL, NULL, 0, 0);
  client *c = client_open();
  const char *two =
      "GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
      "POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
      "a\r\n{\"prompt\":\r\n14\r\n\"Yo\",\"max_tokens\":2}\r\n0\r\n\r\n"
      "GET /v1/models/upper HTTP/1.1\r\nHost: x\r\n\r\n";
  client_send(c, two, strlen(two));
  resp r;
  cr_assert(read_resp(c, &r));
  cr_assert_eq(r.status, 200);
  cr_assert(strstr(r.body, "\"status\""));
  free(r.body);
  cr_assert(read_resp(c, &r));
  cr_assert_eq(r.status, 200, "%s", r.body);
  char want[8];
  expected('a', 3, 0, 2, want);
  cr_assert(strstr(r.body, want), "%s", r.body);
  free(r.body);
  cr_assert(read_resp(c, &r));
  cr_assert_eq(r.status, 200);
  cr_assert(strstr(r.body, "\"id\":\"upper\""));
  free(r.body);
  /* Same connection stays usable. */
  const char *again = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
  client_send(c, again, strlen(again));
  cr_assert(read_resp(c, &r));
  cr_assert_eq(r.status, 200);
  free(r.body);
  client_close(c);
  stop();
}

Test(server, malformed_and_oversized) {
  start(NULL, NULL, 0, 0);
  static const struct {
    const char *raw;
    int status;
  } cases[] = {
      {"GARBAGE\r\n\r\n", 400},
      {"GET /health HTTP/9.9\r\n\r\n", 400},
      {"GET /health HTTP/1.1\r\nBad Header\r\n\r\n", 400},
      {"POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400},
      {"POST /v1/completions HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n", 413},
      {"POST /v1/completions HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", 400},
      /* Strictness (issue 13). */
      {"GET /health\r\n\r\n", 400},
      {"GET /health HTTP/2.0\r\n\r\n", 505},
      {"GET /health HTTP/0.9\r\n\r\n", 505},
      {"GET /health HTTP/1.1\r\n: v\r\n\r\n", 400},
      {"GET /health HTTP/1.1\r\nX-A: b\r\n  c\r\n\r\n", 400},
      {"POST /tokenize HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501},
      {"POST /tokenize HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nfffffffff\r\n", 413},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    client *c = client_open();
    client_send(c, cases[i].raw, strlen(cases[i].raw));
    resp r;
    cr_assert(read_resp(c, &r), "case %zu: no response", i);
    cr_expect_eq(r.status, cases[i].status, "case %zu: got %d", i, r.status);
    cr_expect(strcasestr(r.head, "Connection: close"), "case %zu keeps the connection", i);
    free(r.body);
    client_close(c);
  }
  /* Headers over the 4 KiB limit. */
  client *c = client_open();
  char *big = malloc(8192);
  int n = snprintf(big, 8192, "GET /health HTTP/1.1\r\nX-Big: ");
  memset(big + n, 'q', 6000);
  memcpy(big + n + 6000, "\r\n\r\n", 5);
  client_send(c, big, strlen(big));
  resp r;
  cr_assert(read_resp(c, &r));
  cr_assert_eq(r.status, 431);
  free(r.body);
  free(big);
  client_close(c);
  /* A chunked body over the 64 KiB limit. */
  c = client_open();
  const char *h = "POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
  client_send(c, h, strlen(h));
  char chunk[8200];
  n = snprintf(chunk, sizeof chunk, "2000\r\n");
  memset(chunk + n, 'x', 8192);
  memcpy(chunk + n + 8192, "\r\n", 2);
  for (int k = 0; k < 9; k++) {
    ssize_t sent = send(c->fd, chunk, (size_t)n + 8194, MSG_NOSIGNAL);
    if (sent <= 0) break;
  }
  cr_assert(read_resp(c, &r));
  cr_assert_eq(r.status, 413);
  free(r.body);
  client_close(c);
  r = request("GET", "/health", NULL, NULL);
  cr_assert_eq(r.status, 200);
  free(r.body);
  stop();
}

Test(server, header_timeout) {
  start(NULL, NULL, 300, 0);
  client *c = client_open();
  const char *part = "GET /health HTTP/1.1\r\nHost: x\r\n"; /* never finished */
  client_send(c, part, strlen(part));
  resp r;
  cr_assert(read_resp(c, &r));
  cr_assert_eq(r.status, 408);
  free(r.body);
  client_close(c);
  r = request("GET", "/health", NULL, NULL);
  cr_assert_eq(r.status, 200);
  free(r.body);
  stop();
}

Test(server, disconnect_aborts) {
  start(NULL, NULL, 0, 0);
  fake_set_hold(&H.fakes[0], 1);
  client *c = client_open();
  const char *body = "{\"model\":\"lower\",\"prompt\":\"x\",\"max_tokens\":50,\"stream\":true,\"n\":2}";
  char req[512];
  int n = snprintf(req, sizeof req, "POST /v1/completions HTTP/1.1\r\nContent-Length: %zu\r\n\r\n%s",
                   strlen(body), body);
  client_send(c, req, (size_t)n);
  /* Wait for the stream to start (headers and the first bytes). */
  while (!strstr(c->buf, "\r\n\r\n")) cr_assert(client_fill(c));
  cr_assert_eq(fake_n_active(&H.fakes[0]), 1);
  client_close(c);
  for (int i = 0; i < 500 && fake_n_active(&H.fakes[0]) > 0; i++) usleep(10000);
  cr_assert_eq(fake_n_active(&H.fakes[0]), 0);
  cr_assert_eq(H.fakes[0].n_aborted, 1);
  fake_set_hold(&H.fakes[0], 0);
  resp r = request("GET", "/health", NULL, NULL);
  cr_assert_eq(r.status, 200);
  free(r.body);
  stop();
}

Test(server, route_falls_back_when_queue_full) {
  start(NULL, NULL, 0, 0);
  H.fakes[0].capacity = 1;
  const char *body = "{\"model\":\"auto\",\"prompt\":\"x\",\"max_tokens\":3}";
  client *c = held_request(body);
  cr_assert_eq(fake_n_active(&H.fakes[0]), 1);
  /* The route's first model is full: the second serves (upper-case letters). */
  resp r = request("POST", "/v1/completions", body, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  char want[8];
  expected('A', 2, 0, 3, want);
  cr_assert(strstr(r.body, want), "%s", r.body);
  cr_assert(strstr(r.body, "\"model\":\"auto\""));
  cr_assert(strcasestr(r.head, "X-Quiver-Model: upper"), "%s", r.head);
  free(r.body);
  /* No route: a full queue is a 429. */
  r = request("POST", "/v1/completions", "{\"model\":\"lower\",\"prompt\":\"x\"}", NULL);
  cr_assert_eq(r.status, 429, "%s", r.body);
  free(r.body);
  fake_set_hold(&H.fakes[0], 0);
  resp r1;
  cr_assert(read_resp(c, &r1));
  cr_assert_eq(r1.status, 200);
  expected('a', 2, 0, 3, want);
  cr_assert(strstr(r1.body, want), "%s", r1.body);
  free(r1.body);
  client_close(c);
  stop();
}

Test(server, drain_finishes_in_flight) {
  start(NULL, NULL, 0, 0);
  client *c = held_request("{\"model\":\"lower\",\"prompt\":\"x\",\"max_tokens\":4,\"stream\":true}");
  server_shutdown(H.srv);
  usleep(50000);
  fake_set_hold(&H.fakes[0], 0);
  resp r;
  cr_assert(read_resp(c, &r));
  cr_assert_eq(r.status, 200);
  cr_assert(strstr(r.body, "data: [DONE]"), "%s", r.body);
  cr_assert_eq(client_fill(c), 0); /* then the server closes the connection */
  free(r.body);
  client_close(c);
  stop(); /* a second shutdown request is harmless */
}

Test(server, slow_reader_is_cut_off) {
  start(NULL, NULL, 0, 0);
  H.fakes[0].burst = 64;
  H.fakes[0].default_max = 1 << 30; /* until aborted */
  client *c = calloc(1, sizeof *c);
  c->fd = socket(AF_INET, SOCK_STREAM, 0);
  int small = 4096;
  setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)H.port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  cr_assert_eq(connect(c->fd, (struct sockaddr *)&a, sizeof a), 0);
  /* Chat: no max_tokens means the rest of the context (the fake then runs until aborted). */
  const char *body = "{\"model\":\"lower\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                     "\"stream\":true}";
  char req[512];
  int n = snprintf(req, sizeof req,
                   "POST /v1/chat/completions HTTP/1.1\r\nContent-Length: %zu\r\n\r\n%s",
                   strlen(body), body);
  client_send(c, req, (size_t)n);
  /* Never read: the server must give up on this client and abort its request. */
  for (int i = 0; i < 3000 && (fake_n_active(&H.fakes[0]) > 0 || H.fakes[0].n_aborted == 0); i++)
    usleep(10000);
  cr_assert_eq(H.fakes[0].n_aborted, 1);
  cr_assert_eq(fake_n_active(&H.fakes[0]), 0);
  client_close(c);
  resp r = request("GET", "/health", NULL, NULL);
  cr_assert_eq(r.status, 200);
  free(r.body);
  stop();
}

Test(server, chat_tool_calls) {
  start(NULL, NULL, 0, 0);
  const char *tools = "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]";
  char body[512];
  snprintf(body, sizeof body,
           "{\"model\":\"upper\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],"
           "\"max_tokens\":9,\"stop\":[\"E\"],%s}", tools);
  resp r = request("POST", "/v1/chat/completions", body, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cJSON *j = json_of(&r);
  cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
  cr_assert_str_eq(cJSON_GetObjectItem(ch, "finish_reason")->valuestring, "tool_calls");
  cJSON *msg = cJSON_GetObjectItem(ch, "message");
  cr_assert(cJSON_IsNull(cJSON_GetObjectItem(msg, "content")));
  cJSON *call = cJSON_GetArrayItem(cJSON_GetObjectItem(msg, "tool_calls"), 0);
  char want[8], args[64];
  expected('A', 27, 0, 3, want); /* B C D, then E stops */
  snprintf(args, sizeof args, "{\"text\":\"%s\"}", want);
  cr_assert_str_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(call, "function"), "arguments")->valuestring, args);
  cJSON_Delete(j);
  free(r.body);
  /* Streamed: the call arrives as delta.tool_calls with an index; finish_reason tool_calls. */
  snprintf(body, sizeof body,
           "{\"model\":\"upper\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],"
           "\"max_tokens\":9,\"stop\":[\"E\"],\"stream\":true,%s}", tools);
  r = request("POST", "/v1/chat/completions", body, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cr_assert(strstr(r.body, "\"tool_calls\":[{\"id\":\"call_1\""), "%s", r.body);
  cr_assert(strstr(r.body, "\"index\":0}]"), "%s", r.body);
  cr_assert(strstr(r.body, "\"finish_reason\":\"tool_calls\""), "%s", r.body);
  cr_assert(strstr(r.body, args + 0) || strstr(r.body, "BCD"), "%s", r.body);
  free(r.body);
  /* tool_choice none, or no tools: plain content. */
  snprintf(body, sizeof body,
           "{\"model\":\"upper\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],"
           "\"max_tokens\":3,%s,\"tool_choice\":\"none\"}", tools);
  r = request("POST", "/v1/chat/completions", body, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cr_assert(strstr(r.body, "\"finish_reason\":\"length\""), "%s", r.body);
  cr_assert(strstr(r.body, want), "%s", r.body);
  free(r.body);
  stop();
}

/* Concatenates delta.reasoning_content and delta.content of a chat stream's choice 0, and
 * checks that no reasoning arrives after content. */
static void sse_reasoning(const char *body, char *reasoning, char *content) {
  reasoning[0] = content[0] = '\0';
  for (const char *p = body; (p = strstr(p, "data: {")); p += 6) {
    const char *e = strstr(p, "\n\n");
    cr_assert_not_null(e);
    cJSON *j = cJSON_ParseWithLength(p + 6, (size_t)(e - p - 6));
    cr_assert_not_null(j);
    cJSON *d = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0), "delta");
    cJSON *rc = cJSON_GetObjectItem(d, "reasoning_content"), *c = cJSON_GetObjectItem(d, "content");
    if (cJSON_IsString(rc)) {
      cr_assert_eq(content[0], '\0', "reasoning after content: %s", body);
      strcat(reasoning, rc->valuestring);
    }
    if (cJSON_IsString(c)) strcat(content, c->valuestring);
    cJSON_Delete(j);
  }
}

static const char reasoning_cfg[] =
    "{\"models\":[{\"name\":\"lower\",\"path\":\"/fake/a\",\"reasoning_parser\":\"qwen3\"},"
    "{\"name\":\"upper\",\"path\":\"/fake/b\",\"reasoning_parser\":\"deepseek_r1\"}]}";

/* Qwen3 shape: the output opens and closes <think> itself. */
Test(server, chat_reasoning) {
  H.script = "<think>plan</think>\n\nok";
  start(reasoning_cfg, NULL, 0, 0);
  H.script = NULL;
  const char *body = "{\"model\":\"lower\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],"
                     "\"max_tokens\":30}";
  resp r = request("POST", "/v1/chat/completions", body, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cJSON *j = json_of(&r);
  cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
  cJSON *msg = cJSON_GetObjectItem(ch, "message");
  cr_assert_str_eq(cJSON_GetObjectItem(msg, "reasoning_content")->valuestring, "plan");
  cr_assert_str_eq(cJSON_GetObjectItem(msg, "content")->valuestring, "ok");
  cr_assert_str_eq(cJSON_GetObjectItem(ch, "finish_reason")->valuestring, "stop");
  cJSON_Delete(j);
  free(r.body);
  /* Streamed one character per chunk, so the tags arrive split across deltas. */
  body = "{\"model\":\"lower\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],"
         "\"max_tokens\":30,\"stream\":true}";
  r = request("POST", "/v1/chat/completions", body, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  char reasoning[256], content[256];
  sse_reasoning(r.body, reasoning, content);
  cr_assert_str_eq(reasoning, "plan", "%s", r.body);
  cr_assert_str_eq(content, "ok", "%s", r.body);
  cr_assert(strstr(r.body, "\"finish_reason\":\"stop\""), "%s", r.body);
  cr_assert(strstr(r.body, "data: [DONE]"), "%s", r.body);
  free(r.body);
  /* Completions are not parsed. */
  r = request("POST", "/v1/completions", "{\"model\":\"lower\",\"prompt\":\"Hi\",\"max_tokens\":30}",
              NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  j = json_of(&r);
  ch = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
  cr_assert_str_eq(cJSON_GetObjectItem(ch, "text")->valuestring, "<think>plan</think>\n\nok");
  cJSON_Delete(j);
  free(r.body);
  stop();
}

/* DeepSeek-R1 shape (the output starts inside the reasoning) with tool calls: the tool-call
 * parser sees only the content after </think>. */
Test(server, chat_reasoning_tool_calls) {
  H.script = "plan</think>\n{x}";
  start(reasoning_cfg, NULL, 0, 0);
  H.script = NULL;
  const char *body =
      "{\"model\":\"upper\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":30,"
      "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]}";
  resp r = request("POST", "/v1/chat/completions", body, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cJSON *j = json_of(&r);
  cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
  cJSON *msg = cJSON_GetObjectItem(ch, "message");
  cr_assert_str_eq(cJSON_GetObjectItem(ch, "finish_reason")->valuestring, "tool_calls");
  cr_assert_str_eq(cJSON_GetObjectItem(msg, "reasoning_content")->valuestring, "plan");
  cr_assert(cJSON_IsNull(cJSON_GetObjectItem(msg, "content")), "%s", r.body);
  cJSON *call = cJSON_GetArrayItem(cJSON_GetObjectItem(msg, "tool_calls"), 0);
  cr_assert_str_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(call, "function"), "arguments")->valuestring,
                   "{\"text\":\"{x}\"}");
  cJSON_Delete(j);
  free(r.body);
  /* Streamed: reasoning deltas, then the call built from the content alone. */
  body = "{\"model\":\"upper\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":30,"
         "\"stream\":true,\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]}";
  r = request("POST", "/v1/chat/completions", body, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  char reasoning[256], content[256];
  sse_reasoning(r.body, reasoning, content);
  cr_assert_str_eq(reasoning, "plan", "%s", r.body);
  cr_assert_str_eq(content, "", "%s", r.body);
  cr_assert(strstr(r.body, "\"arguments\":\"{\\\"text\\\":\\\"{x}\\\"}\""), "%s", r.body);
  cr_assert(strstr(r.body, "\"finish_reason\":\"tool_calls\""), "%s", r.body);
  free(r.body);
  /* Without tools, a deepseek_r1 output that never closes </think> is all reasoning. */
  pthread_mutex_lock(&H.fakes[1].mu);
  H.fakes[1].script = "still thinking";
  pthread_mutex_unlock(&H.fakes[1].mu);
  body = "{\"model\":\"upper\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":30}";
  r = request("POST", "/v1/chat/completions", body, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  j = json_of(&r);
  msg = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0), "message");
  cr_assert_str_eq(cJSON_GetObjectItem(msg, "reasoning_content")->valuestring, "still thinking");
  cr_assert_str_eq(cJSON_GetObjectItem(msg, "content")->valuestring, "");
  cJSON_Delete(j);
  free(r.body);
  stop();
}

/* Without a reasoning parser the <think> text stays content and no reasoning field appears. */
Test(server, chat_reasoning_off) {
  H.script = "<think>plan</think>ok";
  start(NULL, NULL, 0, 0);
  H.script = NULL;
  const char *body = "{\"model\":\"lower\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],"
                     "\"max_tokens\":30}";
  resp r = request("POST", "/v1/chat/completions", body, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cJSON *j = json_of(&r);
  cJSON *msg = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0), "message");
  cr_assert_null(cJSON_GetObjectItem(msg, "reasoning_content"));
  cr_assert_str_eq(cJSON_GetObjectItem(msg, "content")->valuestring, "<think>plan</think>ok");
  cJSON_Delete(j);
  free(r.body);
  body = "{\"model\":\"lower\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],"
         "\"max_tokens\":30,\"stream\":true}";
  r = request("POST", "/v1/chat/completions", body, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cr_assert_null(strstr(r.body, "reasoning_content"), "%s", r.body);
  free(r.body);
  stop();
}

Test(server, expect_continue_and_http10) {
  start(NULL, NULL, 0, 0);
  client *c = client_open();
  const char *body = "{\"model\":\"lower\",\"prompt\":\"Hi\",\"max_tokens\":2}";
  char head[256];
  int n = snprintf(head, sizeof head,
                   "POST /v1/completions HTTP/1.1\r\nContent-Length: %zu\r\nExpect: 100-continue\r\n\r\n",
                   strlen(body));
  client_send(c, head, (size_t)n);
  /* The interim answer comes before the body is sent. */
  while (!strstr(c->buf, "\r\n\r\n")) cr_assert(client_fill(c));
  cr_assert(!strncmp(c->buf, "HTTP/1.1 100 Continue\r\n\r\n", 25), "%s", c->buf);
  client_send(c, body, strlen(body));
  resp r;
  cr_assert(read_resp(c, &r)); /* read_resp skips the 100 */
  cr_assert_eq(r.status, 200, "%s", r.body);
  free(r.body);
  client_close(c);
  /* HTTP/1.0 without keep-alive: the answer says close and the server closes. */
  c = client_open();
  const char *old = "GET /health HTTP/1.0\r\n\r\n";
  client_send(c, old, strlen(old));
  cr_assert(read_resp(c, &r));
  cr_assert_eq(r.status, 200);
  cr_assert(strcasestr(r.head, "Connection: close"));
  free(r.body);
  cr_assert_eq(client_fill(c), 0);
  client_close(c);
  stop();
}

Test(server, idle_keepalive_connection_closed) {
  start(NULL, NULL, 0, 300);
  client *c = client_open();
  const char *get = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
  client_send(c, get, strlen(get));
  resp r;
  cr_assert(read_resp(c, &r));
  cr_assert_eq(r.status, 200);
  cr_assert(strcasestr(r.head, "Connection: keep-alive"));
  free(r.body);
  /* Nothing more is sent: the server closes the idle connection, so recv sees EOF (0) rather
   * than its own 10 s receive timeout (-1). */
  char b;
  cr_assert_eq(recv(c->fd, &b, 1, 0), 0);
  client_close(c);
  stop();
}

Test(server, unavailable_model_falls_back_and_health_says_so) {
  H.first_failed = 1;
  start(NULL, NULL, 0, 0);
  resp r = request("GET", "/health", NULL, NULL);
  cr_assert_eq(r.status, 503);
  cr_assert(strstr(r.body, "\"state\":\"failed: test\""), "%s", r.body);
  free(r.body);
  r = request("POST", "/v1/completions", "{\"model\":\"auto\",\"prompt\":\"x\",\"max_tokens\":2}", NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cr_assert(strcasestr(r.head, "X-Quiver-Model: upper"));
  free(r.body);
  r = request("POST", "/v1/completions", "{\"model\":\"lower\",\"prompt\":\"x\",\"max_tokens\":2}", NULL);
  cr_assert_eq(r.status, 503, "%s", r.body);
  free(r.body);
  stop();
}

Test(server, connection_limit) {
  H.max_connections = 2;
  start(NULL, NULL, 0, 0);
  client *c[3];
  const char *get = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
  for (int i = 0; i < 2; i++) {
    c[i] = client_open();
    client_send(c[i], get, strlen(get));
    resp r;
    cr_assert(read_resp(c[i], &r));
    cr_assert_eq(r.status, 200);
    free(r.body);
  }
  /* Over the limit, a connection is a probe slot: /health is served, anything else gets 503
   * with Connection: close (not a silent reset). */
  const char *models = "GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n";
  c[2] = client_open();
  client_send(c[2], models, strlen(models));
  resp r;
  cr_assert(read_resp(c[2], &r));
  cr_assert_eq(r.status, 503, "%s", r.body);
  cr_assert(strcasestr(r.head, "Connection: close"));
  free(r.body);
  client_close(c[2]);
  c[2] = client_open();
  client_send(c[2], get, strlen(get));
  cr_assert(read_resp(c[2], &r));
  cr_assert_eq(r.status, 200);
  free(r.body);
  client_close(c[2]);
  /* Past the probe reserve too: 503 at once, before any request. */
  client *extra[9];
  for (int i = 0; i < 9; i++) extra[i] = client_open();
  cr_assert(read_resp(extra[8], &r));
  cr_assert_eq(r.status, 503);
  free(r.body);
  for (int i = 0; i < 9; i++) client_close(extra[i]);
  /* Once one closes, a new one is served. */
  client_close(c[0]);
  int ok = 0;
  for (int attempt = 0; attempt < 100 && !ok; attempt++) {
    client *d = client_open();
    /* Until the server has seen the close, this one may still be refused: no asserts here. */
    if (send(d->fd, models, strlen(models), MSG_NOSIGNAL) == (ssize_t)strlen(models) &&
        read_resp(d, &r)) {
      ok = r.status == 200;
      free(r.body);
    }
    client_close(d);
    if (!ok) usleep(20000);
  }
  cr_assert(ok);
  client_close(c[1]);
  stop();
}

/* Invalid UTF-8 in an answer is replaced by U+FFFD; valid text is left alone (NULL). */
Test(http, utf8_repair) {
  size_t n = 0;
  cr_assert_null(http_utf8_repair("caf\xc3\xa9 \xf0\x9f\x98\x80", 10, &n));
  char *r = http_utf8_repair("a\xff" "b\xed\xa0\x80" "c\xc3", 8, &n);
  cr_assert_not_null(r);
  cr_assert_str_eq(r, "a\xef\xbf\xbd" "b\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd" "c\xef\xbf\xbd");
  cr_assert_eq(n, strlen(r));
  free(r);
}

/* Issue 13: auth before the body (and before 100 Continue), trailers never authenticate, HEAD,
 * 414, a half-closed client still answered, the fan-out cap. */
Test(server, hardening) {
  start(NULL, "sk-h", 0, 0);
  /* No key, Expect: the first answer is the 401, not 100 Continue. */
  client *c = client_open();
  const char *h = "POST /v1/completions HTTP/1.1\r\nContent-Length: 100000\r\n"
                  "Expect: 100-continue\r\n\r\n";
  client_send(c, h, strlen(h));
  while (!strstr(c->buf, "\r\n\r\n")) cr_assert(client_fill(c));
  cr_assert(!strncmp(c->buf, "HTTP/1.1 401", 12), "%s", c->buf);
  cr_assert(strcasestr(c->buf, "Connection: close"));
  client_close(c);
  /* The key in a chunked trailer does not count. */
  c = client_open();
  const char *t = "POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                  "e\r\n{\"prompt\":\"Hi\"}\r\n0\r\nAuthorization: Bearer sk-h\r\n\r\n";
  client_send(c, t, strlen(t));
  resp r;
  cr_assert(read_resp(c, &r));
  cr_assert_eq(r.status, 401, "%s", r.body);
  free(r.body);
  client_close(c);
  /* HEAD of a GET route: the head only. */
  c = client_open();
  const char *hd = "HEAD /health HTTP/1.1\r\n\r\nGET /health HTTP/1.1\r\n\r\n";
  client_send(c, hd, strlen(hd));
  while (!strstr(c->buf, "\r\n\r\n")) cr_assert(client_fill(c));
  cr_assert(!strncmp(c->buf, "HTTP/1.1 200", 12), "%s", c->buf);
  char *second = strstr(c->buf, "\r\n\r\n") + 4;
  while (strncmp(second, "HTTP/1.1 200", 12)) {
    cr_assert(strlen(second) < 12 || !strncmp(second, "HTTP/1.1", 8), "HEAD sent a body: %s", second);
    cr_assert(client_fill(c));
    second = strstr(c->buf, "\r\n\r\n") + 4;
  }
  client_close(c);
  /* A target longer than the header limit: 414. */
  c = client_open();
  char *big = malloc(8192);
  int n = snprintf(big, 8192, "GET /");
  memset(big + n, 'a', 6000);
  snprintf(big + n + 6000, 100, " HTTP/1.1\r\n\r\n");
  client_send(c, big, strlen(big));
  cr_assert(read_resp(c, &r));
  cr_assert_eq(r.status, 414);
  free(r.body);
  free(big);
  client_close(c);
  /* Half-closed after a complete request: still answered. */
  c = client_open();
  const char *body = "{\"model\":\"lower\",\"prompt\":\"Hi\",\"max_tokens\":3}";
  char req[512];
  n = snprintf(req, sizeof req,
               "POST /v1/completions HTTP/1.1\r\nAuthorization: Bearer sk-h\r\n"
               "Content-Length: %zu\r\n\r\n%s", strlen(body), body);
  client_send(c, req, (size_t)n);
  shutdown(c->fd, SHUT_WR);
  cr_assert(read_resp(c, &r));
  cr_assert_eq(r.status, 200, "%s", r.body);
  free(r.body);
  client_close(c);
  /* 64 prompts x n 8 = 512 sequences > 256. */
  char fan[1024];
  n = snprintf(fan, sizeof fan, "{\"model\":\"lower\",\"n\":8,\"max_tokens\":1,\"prompt\":[");
  for (int i = 0; i < 64; i++) n += snprintf(fan + n, sizeof fan - (size_t)n, "%s\"a\"", i ? "," : "");
  snprintf(fan + n, sizeof fan - (size_t)n, "]}");
  r = request("POST", "/v1/completions", fan, "Authorization: Bearer sk-h\r\n");
  cr_assert_eq(r.status, 400, "%s", r.body);
  cr_assert(strstr(r.body, "\"code\":\"too_many_sequences\""), "%s", r.body);
  free(r.body);
  stop();
}

/* A large answer that would pass the server-wide unsent-output budget becomes a small 503. */
Test(server, output_budget) {
  H.max_total_output = 8192;
  start(NULL, NULL, 0, 0);
  char body[8000];
  int n = snprintf(body, sizeof body, "{\"model\":\"lower\",\"prompt\":\"");
  memset(body + n, 'x', 5000);
  snprintf(body + n + 5000, 100, "\"}");
  resp r = request("POST", "/tokenize", body, NULL);
  cr_assert_eq(r.status, 503, "%d", r.status);
  cr_assert(strstr(r.body, "\"code\":\"output_budget\""), "%s", r.body);
  free(r.body);
  r = request("POST", "/tokenize", "{\"prompt\":\"Hi\"}", NULL);
  cr_assert_eq(r.status, 200);
  free(r.body);
  stop();
}

/* Bodies held by the whole server are bounded: past the budget a request gets 503, not memory;
 * a body within it is served once the others are gone. */
Test(server, body_budget) {
  H.max_buffered = 48 * 1024;
  start(NULL, NULL, 0, 0);
  /* One connection holds a 40 KB body open (headers and part of the body sent). */
  client *a = client_open();
  const char *ha = "POST /tokenize HTTP/1.1\r\nContent-Length: 40000\r\n\r\n{\"prompt\":\"";
  client_send(a, ha, strlen(ha));
  usleep(100000);
  /* A second 40 KB body does not fit beside it. */
  client *b = client_open();
  const char *hb = "POST /tokenize HTTP/1.1\r\nContent-Length: 40000\r\n\r\n";
  client_send(b, hb, strlen(hb));
  resp r;
  cr_assert(read_resp(b, &r));
  cr_assert_eq(r.status, 503, "%s", r.body);
  cr_assert(strcasestr(r.head, "Connection: close"));
  free(r.body);
  client_close(b);
  client_close(a);
  /* Once the first is gone its budget is back. */
  char body[20000];
  int n = snprintf(body, sizeof body, "{\"prompt\":\"");
  memset(body + n, 'y', 15000);
  snprintf(body + n + 15000, 10, "\"}");
  int ok = 0;
  for (int i = 0; i < 50 && !ok; i++) {
    r = request("POST", "/tokenize", body, NULL);
    ok = r.status == 200;
    free(r.body);
    if (!ok) usleep(20000);
  }
  cr_assert(ok);
  stop();
}
