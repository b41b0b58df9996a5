/* Tool-call and reasoning parsing: each format (Hermes/Qwen, Llama 3, Mistral) in one shot and
 * streamed in random chunk sizes, where the streamed result must equal the batch one, content
 * deltas must never leak call markup, and calls appear only once complete. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat/chat.h"

static qv_chat_parsed parse(qv_chat_tool_format fmt, const char *text) {
  qv_chat_parsed p;
  qv_error err = {0};
  cr_assert_eq(qv_chat_tools_parse(fmt, text, strlen(text), &p, &err), 0, "%s", err.msg);
  return p;
}

static void expect_call(const qv_chat_parsed *p, int i, const char *name, const char *args) {
  cr_assert_lt(i, p->n_calls);
  cr_assert_str_eq(p->calls[i].name, name);
  cr_assert_str_eq(p->calls[i].arguments, args);
  cr_assert_not_null(p->calls[i].id);
}

Test(chat_tools, hermes_batch) {
  qv_chat_parsed p = parse(QV_CHAT_TOOLS_HERMES,
                           "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 3}}\n</tool_call>\n"
                           "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>");
  cr_assert_str_eq(p.content, "Let me check.");
  cr_assert_eq(p.n_calls, 2);
  expect_call(&p, 0, "get_weather", "{\"city\":\"Paris\",\"days\":3}");
  expect_call(&p, 1, "get_time", "{}");
  cr_assert_eq(strncmp(p.calls[0].id, "call_", 5), 0);
  cr_assert_eq(strlen(p.calls[0].id), 29);
  cr_assert_str_neq(p.calls[0].id, p.calls[1].id);
  qv_chat_parsed_deinit(&p);

  /* malformed JSON stays content; plain text untouched; unterminated but complete JSON is a call */
  p = parse(QV_CHAT_TOOLS_HERMES, "<tool_call>{\"name\": broken}</tool_call> tail");
  cr_assert_eq(p.n_calls, 0);
  cr_assert_str_eq(p.content, "<tool_call>{\"name\": broken}</tool_call> tail");
  qv_chat_parsed_deinit(&p);
  p = parse(QV_CHAT_TOOLS_HERMES, "  just text, no <tool_ call  ");
  cr_assert_eq(p.n_calls, 0);
  cr_assert_str_eq(p.content, "  just text, no <tool_ call  ");
  qv_chat_parsed_deinit(&p);
  p = parse(QV_CHAT_TOOLS_HERMES, "<tool_call>\n{\"name\": \"f\", \"arguments\": \"{\\\"a\\\": 1}\"}\n");
  cr_assert_eq(p.n_calls, 1);
  expect_call(&p, 0, "f", "{\"a\": 1}");
  cr_assert_str_eq(p.content, "");
  qv_chat_parsed_deinit(&p);
}

Test(chat_tools, llama3_batch) {
  qv_chat_parsed p = parse(QV_CHAT_TOOLS_LLAMA3, "{\"name\": \"get_weather\", \"parameters\": {\"location\": \"Zürich\"}}");
  cr_assert_eq(p.n_calls, 1);
  expect_call(&p, 0, "get_weather", "{\"location\":\"Zürich\"}");
  cr_assert_str_eq(p.content, "");
  qv_chat_parsed_deinit(&p);
  p = parse(QV_CHAT_TOOLS_LLAMA3, "<|python_tag|>{\"name\": \"a\", \"parameters\": {\"x\": 1}}; {\"name\": \"b\", \"parameters\": {}}");
  cr_assert_eq(p.n_calls, 2);
  expect_call(&p, 0, "a", "{\"x\":1}");
  expect_call(&p, 1, "b", "{}");
  qv_chat_parsed_deinit(&p);
  /* JSON that is not a call, and JSON after prose, are content */
  p = parse(QV_CHAT_TOOLS_LLAMA3, "{\"answer\": 42}");
  cr_assert_eq(p.n_calls, 0);
  cr_assert_str_eq(p.content, "{\"answer\": 42}");
  qv_chat_parsed_deinit(&p);
  p = parse(QV_CHAT_TOOLS_LLAMA3, "Here: {\"name\": \"a\", \"parameters\": {}}");
  cr_assert_eq(p.n_calls, 0);
  qv_chat_parsed_deinit(&p);
}

Test(chat_tools, mistral_batch) {
  qv_chat_parsed p = parse(QV_CHAT_TOOLS_MISTRAL,
                           "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Nice\"}}, {\"name\": \"get_time\", \"arguments\": {}}]");
  cr_assert_eq(p.n_calls, 2);
  expect_call(&p, 0, "get_weather", "{\"city\":\"Nice\"}");
  expect_call(&p, 1, "get_time", "{}");
  cr_assert_eq(strlen(p.calls[0].id), 9); /* Mistral's template requires 9-character ids */
  cr_assert_str_eq(p.content, "");
  qv_chat_parsed_deinit(&p);
  p = parse(QV_CHAT_TOOLS_MISTRAL, "Sure. [TOOL_CALLS]get_weather[ARGS]{\"city\": \"Lyon\"}");
  cr_assert_eq(p.n_calls, 1);
  expect_call(&p, 0, "get_weather", "{\"city\":\"Lyon\"}");
  cr_assert_str_eq(p.content, "Sure.");
  qv_chat_parsed_deinit(&p);
  p = parse(QV_CHAT_TOOLS_MISTRAL, "[TOOL_CALLS][{\"name\": ");
  cr_assert_eq(p.n_calls, 0);
  cr_assert_str_eq(p.content, "[TOOL_CALLS][{\"name\": ");
  qv_chat_parsed_deinit(&p);
}

Test(chat_tools, format_names) {
  qv_chat_tool_format f;
  cr_assert_eq(qv_chat_tool_format_parse("qwen", &f), 0);
  cr_assert_eq(f, QV_CHAT_TOOLS_HERMES);
  cr_assert_eq(qv_chat_tool_format_parse("mistral", &f), 0);
  cr_assert_str_eq(qv_chat_tool_format_name(f), "mistral");
  cr_assert_eq(qv_chat_tool_format_parse("bogus", &f), QV_EINVAL);
  qv_chat_parsed p = parse(QV_CHAT_TOOLS_NONE, "<tool_call>{\"name\": \"f\"}</tool_call>");
  cr_assert_eq(p.n_calls, 0);
  qv_chat_parsed_deinit(&p);
}

static unsigned long long rs = 88172645463325252ull;
static unsigned rnd(void) {
  rs ^= rs << 13;
  rs ^= rs >> 7;
  rs ^= rs << 17;
  return (unsigned)(rs >> 32);
}

/* Streams text in random chunks and checks the result against the batch parse. */
static void stream_matches_batch(qv_chat_tool_format fmt, const char *text, const char *forbidden) {
  qv_chat_parsed want = parse(fmt, text);
  size_t len = strlen(text);
  for (int round = 0; round < 40; round++) {
    qv_chat_tool_stream *s = NULL;
    qv_error err = {0};
    cr_assert_eq(qv_chat_tool_stream_create(fmt, &s, &err), 0);
    char *content = calloc(len + 1, 1);
    size_t cn = 0;
    int n_calls = 0;
    qv_chat_tool_call got[8];
    size_t pos = 0;
    bool finished = false;
    while (!finished) {
      qv_chat_parsed d = {0};
      if (pos < len) {
        size_t k = 1 + rnd() % (round < 20 ? 3 : 17);
        if (k > len - pos) k = len - pos;
        cr_assert_eq(qv_chat_tool_stream_feed(s, text + pos, k, &d, &err), 0, "%s", err.msg);
        pos += k;
        /* a call only appears once its text is complete */
        for (int i = 0; i < d.n_calls; i++) cr_assert(pos > 0);
      } else {
        cr_assert_eq(qv_chat_tool_stream_finish(s, &d, &err), 0);
        finished = true;
      }
      memcpy(content + cn, d.content, strlen(d.content));
      cn += strlen(d.content);
      for (int i = 0; i < d.n_calls; i++) {
        cr_assert_lt(n_calls, 8);
        got[n_calls].name = strdup(d.calls[i].name);
        got[n_calls].arguments = strdup(d.calls[i].arguments);
        got[n_calls].id = strdup(d.calls[i].id);
        n_calls++;
      }
      qv_chat_parsed_deinit(&d);
    }
    cr_assert_eq(qv_chat_tool_stream_n_calls(s), n_calls);
    qv_chat_tool_stream_destroy(s);
    content[cn] = 0;
    if (forbidden) cr_assert_null(strstr(content, forbidden), "markup leaked into content: %s", content);
    /* batch trims whitespace around calls; compare trimmed */
    char *a = content;
    size_t an = cn;
    if (want.n_calls) {
      while (an && strchr(" \n\t\r", a[0])) { a++; an--; }
      while (an && strchr(" \n\t\r", a[an - 1])) an--;
    }
    cr_assert_eq(an, strlen(want.content), "round %d: content '%.*s' vs '%s'", round, (int)an, a, want.content);
    cr_assert_eq(memcmp(a, want.content, an), 0);
    cr_assert_eq(n_calls, want.n_calls, "round %d", round);
    for (int i = 0; i < n_calls; i++) {
      cr_assert_str_eq(got[i].name, want.calls[i].name);
      cr_assert_str_eq(got[i].arguments, want.calls[i].arguments);
      cr_assert_str_eq(got[i].id, want.calls[i].id);
      free(got[i].name);
      free(got[i].arguments);
      free(got[i].id);
    }
    free(content);
  }
  qv_chat_parsed_deinit(&want);
}

Test(chat_tools, hermes_streaming) {
  stream_matches_batch(QV_CHAT_TOOLS_HERMES,
                       "I'll look that up <b>now</b>.\n<tool_call>\n{\"name\": \"search\", \"arguments\": {\"q\": \"<tool_call> in a string\", \"n\": [1, 2]}}\n</tool_call>\n"
                       "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>",
                       "<tool_call>\n{");
  stream_matches_batch(QV_CHAT_TOOLS_HERMES, "No tools here, only <tool text and </tool_call> noise.", NULL);
}

Test(chat_tools, llama3_streaming) {
  stream_matches_batch(QV_CHAT_TOOLS_LLAMA3, "  {\"name\": \"get_weather\", \"parameters\": {\"location\": \"東京\", \"unit\": \"celsius\"}}", "\"name\"");
  stream_matches_batch(QV_CHAT_TOOLS_LLAMA3, "<|python_tag|>{\"name\": \"a\", \"parameters\": {\"x\": [1, {\"y\": null}]}}", "python_tag");
  stream_matches_batch(QV_CHAT_TOOLS_LLAMA3, "The answer is 4. {not json", NULL);
}

Test(chat_tools, mistral_streaming) {
  stream_matches_batch(QV_CHAT_TOOLS_MISTRAL,
                       "Calling now.[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Nice\"}}, {\"name\": \"t\", \"arguments\": {}}]",
                       "TOOL_CALLS");
  stream_matches_batch(QV_CHAT_TOOLS_MISTRAL, "[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Lyon\"}", "ARGS");
}

Test(chat_tools, stream_holds_partial_marker) {
  qv_chat_tool_stream *s = NULL;
  qv_error err = {0};
  cr_assert_eq(qv_chat_tool_stream_create(QV_CHAT_TOOLS_HERMES, &s, &err), 0);
  qv_chat_parsed d = {0};
  cr_assert_eq(qv_chat_tool_stream_feed(s, "Hi <tool_", 9, &d, &err), 0);
  cr_assert_str_eq(d.content, "Hi "); /* "<tool_" might start a call: held back */
  cr_assert_eq(qv_chat_tool_stream_feed(s, "call>{\"name\": \"f\", \"arguments\": {}}", 35, &d, &err), 0);
  cr_assert_str_eq(d.content, "");
  cr_assert_eq(d.n_calls, 0); /* not closed yet */
  cr_assert_eq(qv_chat_tool_stream_feed(s, "</tool_call>", 12, &d, &err), 0);
  cr_assert_eq(d.n_calls, 1);
  cr_assert_str_eq(d.calls[0].name, "f");
  cr_assert_eq(qv_chat_tool_stream_finish(s, &d, &err), 0);
  cr_assert_eq(d.n_calls, 0);
  qv_chat_parsed_deinit(&d);
  qv_chat_tool_stream_destroy(s);
}

Test(chat_tools, random_bytes_never_crash) {
  static const char *const frags[] = {"<tool_call>", "</tool_call>", "[TOOL_CALLS]", "[ARGS]",
                                      "<|python_tag|>", "{", "}", "[", "]", "\"name\"", ":", ",",
                                      "\"arguments\"", "\"f\"", "1", " ", "\n", ";", "\\", "\"", "é"};
  char text[256];
  for (int i = 0; i < 3000; i++) {
    size_t k = 0;
    int n = 1 + (int)(rnd() % 20);
    for (int j = 0; j < n; j++) {
      const char *f = frags[rnd() % (sizeof frags / sizeof frags[0])];
      if (k + strlen(f) >= sizeof text) break;
      memcpy(text + k, f, strlen(f));
      k += strlen(f);
    }
    text[k] = 0;
    for (int fmt = QV_CHAT_TOOLS_NONE; fmt <= QV_CHAT_TOOLS_MISTRAL; fmt++) {
      qv_chat_parsed p;
      qv_error err = {0};
      cr_assert_eq(qv_chat_tools_parse((qv_chat_tool_format)fmt, text, k, &p, &err), 0);
      qv_chat_parsed_deinit(&p);
      qv_chat_tool_stream *s = NULL;
      qv_chat_tool_stream_create((qv_chat_tool_format)fmt, &s, &err);
      qv_chat_parsed d = {0};
      for (size_t pos = 0; pos < k; pos += 5)
        cr_assert_eq(qv_chat_tool_stream_feed(s, text + pos, k - pos < 5 ? k - pos : 5, &d, &err), 0);
      cr_assert_eq(qv_chat_tool_stream_finish(s, &d, &err), 0);
      qv_chat_parsed_deinit(&d);
      qv_chat_tool_stream_destroy(s);
    }
  }
}

/* ---- reasoning ---------------------------------------------------------------------------- */

static void split(const char *text, bool started, const char *want_r, const char *want_c) {
  char *r = NULL, *c = NULL;
  qv_error err = {0};
  cr_assert_eq(qv_chat_reasoning_split(text, strlen(text), started, &r, &c, &err), 0);
  if (want_r) cr_assert_str_eq(r ? r : "(null)", want_r);
  else cr_assert_null(r, "unexpected reasoning '%s'", r);
  cr_assert_str_eq(c, want_c);
  /* streamed in random chunks: same split */
  for (int round = 0; round < 30; round++) {
    qv_chat_reasoning_stream *s = NULL;
    cr_assert_eq(qv_chat_reasoning_stream_create(started, &s, &err), 0);
    size_t len = strlen(text), pos = 0;
    char rb[512] = "", cb[512] = "";
    for (;;) {
      char *dr, *dc;
      if (pos < len) {
        size_t k = 1 + rnd() % 5;
        if (k > len - pos) k = len - pos;
        cr_assert_eq(qv_chat_reasoning_stream_feed(s, text + pos, k, &dr, &dc, &err), 0);
        pos += k;
      } else {
        cr_assert_eq(qv_chat_reasoning_stream_finish(s, &dr, &dc, &err), 0);
      }
      cr_assert_null(strstr(dc, "</think"), "tag leaked into content");
      strncat(rb, dr, sizeof rb - strlen(rb) - 1);
      strncat(cb, dc, sizeof cb - strlen(cb) - 1);
      free(dr);
      free(dc);
      if (pos >= len && round >= 0) {
        char *fr, *fc;
        cr_assert_eq(qv_chat_reasoning_stream_finish(s, &fr, &fc, &err), 0);
        strncat(rb, fr, sizeof rb - strlen(rb) - 1);
        strncat(cb, fc, sizeof cb - strlen(cb) - 1);
        free(fr);
        free(fc);
        break;
      }
    }
    qv_chat_reasoning_stream_destroy(s);
    cr_assert_str_eq(rb, want_r ? want_r : "");
    cr_assert_str_eq(cb, want_c);
  }
  free(r);
  free(c);
}

Test(chat_reasoning, deepseek_r1_started_in_prompt) {
  split("The user wants 2+2.\nIt is 4.\n</think>\n\nThe answer is 4.", true,
        "The user wants 2+2.\nIt is 4.\n", "The answer is 4.");
  split("still thinking, cut off", true, "still thinking, cut off", "");
  split("<think>\nre-opened</think>ok", true, "\nre-opened", "ok");
}

Test(chat_reasoning, qwen3_tags_in_output) {
  split("<think>\nLet me think.\n</think>\n\nParis.", false, "\nLet me think.\n", "Paris.");
  split("\n<think></think>Direct", false, "", "Direct");
  split("No reasoning at all, <think> later is content", false, NULL,
        "No reasoning at all, <think> later is content");
  split("<think>unterminated", false, "unterminated", "");
  split("<thin", false, NULL, "<thin");
  split("Ünïcode <b>", false, NULL, "Ünïcode <b>");
}

Test(chat_reasoning, prompt_opens_think) {
  const char *p1 = "<｜Assistant｜><think>\n";
  const char *p2 = "<|im_start|>assistant\n<think>\n\n</think>\n\n";
  cr_assert(qv_chat_prompt_opens_think(p1, strlen(p1)));
  cr_assert_not(qv_chat_prompt_opens_think(p2, strlen(p2)));
  cr_assert_not(qv_chat_prompt_opens_think("", 0));
}

/* ---- request -> variables ------------------------------------------------------------------ */

Test(chat_request, openai_request_to_vars) {
  qv_error err = {0};
  qv_chat_template *t = NULL;
  cr_assert_eq(qv_chat_template_load_string(
                   "{% for m in messages %}{{ m.content }}|{% if m.tool_calls %}{{ m.tool_calls[0].function.arguments | tojson }}{% endif %}{% endfor %}{{ add_generation_prompt }}{{ enable_thinking }}[{{ bos_token }}]",
                   NULL, &t, &err), 0);
  cJSON *req = cJSON_Parse(
      "{\"model\": \"m\", \"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"a\"}, {\"type\": \"text\", \"text\": \"b\"}]},"
      " {\"role\": \"assistant\", \"content\": null, \"tool_calls\": [{\"id\": \"x\", \"type\": \"function\", \"function\": {\"name\": \"f\", \"arguments\": \"{\\\"k\\\": 1}\"}}]}],"
      " \"chat_template_kwargs\": {\"enable_thinking\": false, \"messages\": \"ignored\"}}");
  cJSON *vars = NULL;
  cr_assert_eq(qv_chat_request_vars(t, req, &vars, &err), 0, "%s", err.msg);
  char *out = NULL;
  cr_assert_eq(qv_chat_template_render(t, vars, &out, NULL, &err), 0, "%s", err.msg);
  cr_assert_str_eq(out, "a\nb|None|{\"k\": 1}TrueFalse[]");
  free(out);
  cJSON_Delete(vars);
  cJSON_Delete(req);
  const char *bad[] = {"[]", "{}", "{\"messages\": {}}", "{\"messages\": [1]}",
                       "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\"}]}]}",
                       "{\"messages\": [], \"tools\": 3}", "{\"messages\": [], \"chat_template_kwargs\": []}"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    req = cJSON_Parse(bad[i]);
    cr_assert_eq(qv_chat_request_vars(t, req, &vars, &err), QV_EINVAL, "%s", bad[i]);
    cr_assert_null(vars);
    cJSON_Delete(req);
  }
  qv_chat_template_destroy(t);
}

Test(chat_tools, stream_releases_undecided_text_promptly) {
  qv_error err = {0};
  qv_chat_tool_stream *s = NULL;
  qv_chat_parsed d = {0};
  cr_assert_eq(qv_chat_tool_stream_create(QV_CHAT_TOOLS_HERMES, &s, &err), 0);
  cr_assert_eq(qv_chat_tool_stream_feed(s, "Hi <tool_", 9, &d, &err), 0);
  cr_assert_str_eq(d.content, "Hi ");
  cr_assert_eq(qv_chat_tool_stream_feed(s, "s are great", 11, &d, &err), 0);
  cr_assert_str_eq(d.content, "<tool_s are great"); /* not a marker after all: released now */
  qv_chat_tool_stream_destroy(s);
  cr_assert_eq(qv_chat_tool_stream_create(QV_CHAT_TOOLS_LLAMA3, &s, &err), 0);
  cr_assert_eq(qv_chat_tool_stream_feed(s, "  ", 2, &d, &err), 0);
  cr_assert_str_eq(d.content, "");
  cr_assert_eq(qv_chat_tool_stream_feed(s, "Hello", 5, &d, &err), 0);
  cr_assert_str_eq(d.content, "  Hello");
  qv_chat_tool_stream_destroy(s);
  /* a long call streamed one byte at a time completes exactly once */
  cr_assert_eq(qv_chat_tool_stream_create(QV_CHAT_TOOLS_HERMES, &s, &err), 0);
  char *big = malloc(70000);
  size_t k = (size_t)sprintf(big, "<tool_call>{\"name\": \"w\", \"arguments\": {\"text\": \"");
  for (int i = 0; i < 60000; i++) big[k++] = (char)('a' + i % 26);
  k += (size_t)sprintf(big + k, "\"}}</tool_call>");
  int calls = 0;
  for (size_t i = 0; i < k; i++) {
    cr_assert_eq(qv_chat_tool_stream_feed(s, big + i, 1, &d, &err), 0);
    cr_assert_str_eq(d.content, "");
    calls += d.n_calls;
  }
  cr_assert_eq(calls, 1);
  cr_assert_eq(strlen(d.calls[0].arguments), 60000 + strlen("{\"text\":\"\"}"));
  qv_chat_parsed_deinit(&d);
  qv_chat_tool_stream_destroy(s);
  free(big);
}

/* Small Qwen models answer with the bare call object, without <tool_call> tags: a message that
 * is only {"name": string, "arguments": object} is a call; other JSON stays content. */
Test(chat_tools, hermes_bare_object) {
  qv_chat_parsed p = parse(QV_CHAT_TOOLS_HERMES, " {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n");
  cr_assert_eq(p.n_calls, 1);
  expect_call(&p, 0, "get_weather", "{\"city\":\"Paris\"}");
  qv_chat_parsed_deinit(&p);
  p = parse(QV_CHAT_TOOLS_HERMES, "{\"name\": \"Bob\", \"age\": 3}");
  cr_assert_eq(p.n_calls, 0);
  qv_chat_parsed_deinit(&p);
  p = parse(QV_CHAT_TOOLS_HERMES, "Sure: {\"name\": \"f\", \"arguments\": {}}");
  cr_assert_eq(p.n_calls, 0);
  qv_chat_parsed_deinit(&p);
  stream_matches_batch(QV_CHAT_TOOLS_HERMES, "{\"name\": \"f\", \"arguments\": {\"a\": [1, 2]}}", "\"name\"");
}
