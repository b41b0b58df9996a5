/* OpenAI request parsing/validation, response serialization, the model registry and its config
 * file, Prometheus metrics and API-key checks: the server's pure parts, without sockets. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/auth.h"
#include "server/metrics.h"
#include "server/oai_req.h"
#include "server/oai_resp.h"
#include "server/registry.h"

static int parse(oai_kind k, const char *body, oai_request *r, qv_error *err) {
  return oai_request_parse(k, body, strlen(body), r, err);
}

Test(openai_req, completion_full) {
  oai_request r;
  qv_error err = {0};
  const char *body =
      "{\"model\":\"m\",\"prompt\":\"Once upon\",\"max_tokens\":17,\"temperature\":0.7,"
      "\"top_p\":0.9,\"top_k\":40,\"min_p\":0.05,\"n\":3,\"stop\":[\"\\n\",\"end\"],\"seed\":1234,"
      "\"presence_penalty\":0.5,\"frequency_penalty\":-0.25,\"repetition_penalty\":1.1,"
      "\"logit_bias\":{\"42\":-100,\"7\":3.5},\"logprobs\":4,\"echo\":false,\"stream\":true,"
      "\"stream_options\":{\"include_usage\":true},\"ignore_eos\":true,\"min_tokens\":2,"
      "\"skip_special_tokens\":false,\"user\":\"u1\"}";
  cr_assert_eq(parse(OAI_COMPLETION, body, &r, &err), 0, "%s", err.msg);
  cr_assert_str_eq(r.model, "m");
  cr_assert_eq(r.n_prompts, 1);
  cr_assert_str_eq(r.prompts[0].text, "Once upon");
  cr_assert_eq(r.params.max_tokens, 17);
  cr_assert(r.max_tokens_given);
  cr_assert_float_eq(r.params.sampling.temperature, 0.7f, 1e-6);
  cr_assert_float_eq(r.params.sampling.top_p, 0.9f, 1e-6);
  cr_assert_eq(r.params.sampling.top_k, 40);
  cr_assert_float_eq(r.params.sampling.min_p, 0.05f, 1e-6);
  cr_assert_eq(r.params.n, 3);
  cr_assert_eq(r.params.n_stop, 2);
  cr_assert_str_eq(r.params.stop[1], "end");
  cr_assert(r.params.sampling.has_seed);
  cr_assert_eq(r.params.sampling.seed, 1234u);
  cr_assert_float_eq(r.params.sampling.presence_penalty, 0.5f, 1e-6);
  cr_assert_float_eq(r.params.sampling.frequency_penalty, -0.25f, 1e-6);
  cr_assert_float_eq(r.params.sampling.repetition_penalty, 1.1f, 1e-6);
  cr_assert_eq(r.params.sampling.n_logit_bias, 2);
  cr_assert_eq(r.params.sampling.logit_bias_ids[0], 42);
  cr_assert_float_eq(r.params.sampling.logit_bias_values[1], 3.5f, 1e-6);
  cr_assert_eq(r.params.sampling.logprobs, 1);
  cr_assert_eq(r.params.sampling.top_logprobs, 4);
  cr_assert(!r.echo && r.stream && r.include_usage);
  cr_assert_eq(r.params.ignore_eos, 1);
  cr_assert_eq(r.params.min_tokens, 2);
  cr_assert_eq(r.params.skip_special_tokens, 0);
  cr_assert_str_eq(r.user, "u1");
  oai_request_free(&r);
}

Test(openai_req, completion_defaults_and_prompt_forms) {
  oai_request r;
  qv_error err = {0};
  cr_assert_eq(parse(OAI_COMPLETION, "{\"prompt\":[5,9,300]}", &r, &err), 0, "%s", err.msg);
  cr_assert_null(r.model);
  cr_assert_eq(r.n_prompts, 1);
  cr_assert_eq(r.prompts[0].n_ids, 3);
  cr_assert_eq(r.prompts[0].ids[2], 300);
  cr_assert_eq(r.params.n, 1);
  cr_assert_eq(r.params.max_tokens, 16); /* OpenAI's completions default */
  cr_assert_float_eq(r.params.sampling.temperature, 1.0f, 1e-6);
  cr_assert_eq(r.params.skip_special_tokens, 1);
  oai_request_free(&r);
  cr_assert_eq(parse(OAI_COMPLETION, "{\"prompt\":[\"ab\",[7,8],\"c\"]}", &r, &err), 0, "%s",
               err.msg);
  cr_assert_eq(r.n_prompts, 3);
  cr_assert_str_eq(r.prompts[0].text, "ab");
  cr_assert_eq(r.prompts[1].n_ids, 2);
  cr_assert_str_eq(r.prompts[2].text, "c");
  oai_request_free(&r);
}

Test(openai_req, rejects_bad_fields) {
  static const struct {
    oai_kind kind;
    const char *body;
    const char *param;
    int code;
  } cases[] = {
      {OAI_COMPLETION, "not json", "", QV_EFORMAT},
      {OAI_COMPLETION, "[1,2]", "", QV_EFORMAT},
      {OAI_COMPLETION, "{}", "prompt", QV_EINVAL},
      {OAI_COMPLETION, "{\"prompt\":\"\"}", "prompt", QV_EINVAL},
      {OAI_COMPLETION, "{\"prompt\":3}", "prompt", QV_EINVAL},
      {OAI_COMPLETION, "{\"prompt\":[-1]}", "prompt", QV_EINVAL},
      {OAI_COMPLETION, "{\"prompt\":\"a\",\"temperature\":2.5}", "temperature", QV_EINVAL},
      {OAI_COMPLETION, "{\"prompt\":\"a\",\"temperature\":\"hot\"}", "temperature", QV_EINVAL},
      {OAI_COMPLETION, "{\"prompt\":\"a\",\"top_p\":0}", "top_p", QV_EINVAL},
      {OAI_COMPLETION, "{\"prompt\":\"a\",\"n\":0}", "n", QV_EINVAL},
      {OAI_COMPLETION, "{\"prompt\":\"a\",\"n\":1.5}", "n", QV_EINVAL},
      {OAI_COMPLETION, "{\"prompt\":\"a\",\"max_tokens\":0}", "max_tokens", QV_EINVAL},
      {OAI_COMPLETION, "{\"prompt\":\"a\",\"logprobs\":21}", "logprobs", QV_EINVAL},
      {OAI_COMPLETION, "{\"prompt\":\"a\",\"stop\":[\"\"]}", "stop", QV_EINVAL},
      {OAI_COMPLETION, "{\"prompt\":\"a\",\"stop\":[1]}", "stop", QV_EINVAL},
      {OAI_COMPLETION, "{\"prompt\":\"a\",\"logit_bias\":{\"x\":1}}", "logit_bias", QV_EINVAL},
      {OAI_COMPLETION, "{\"prompt\":\"a\",\"logit_bias\":{\"3\":101}}", "logit_bias", QV_EINVAL},
      {OAI_COMPLETION, "{\"prompt\":\"a\",\"stream_options\":{\"include_usage\":true}}",
       "stream_options", QV_EINVAL},
      {OAI_COMPLETION, "{\"prompt\":\"a\",\"best_of\":3}", "best_of", QV_EUNSUPPORTED},
      {OAI_COMPLETION, "{\"prompt\":\"a\",\"suffix\":\"z\"}", "suffix", QV_EUNSUPPORTED},
      {OAI_COMPLETION, "{\"prompt\":\"a\",\"echo\":true,\"logprobs\":0}", "echo", QV_EUNSUPPORTED},
      {OAI_COMPLETION, "{\"prompt\":\"a\",\"prediction\":{}}", "prediction", QV_EUNSUPPORTED},
      {OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"store\":1}",
       "store", QV_EINVAL},
      {OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"metadata\":[]}",
       "metadata", QV_EINVAL},
      {OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"reasoning_effort\":1}",
       "reasoning_effort", QV_EINVAL},
      {OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream\":true,"
       "\"stream_options\":{\"continuous_usage_stats\":\"yes\"}}", "continuous_usage_stats", QV_EINVAL},
      {OAI_TOKENIZE, "{\"prompt\":\"a\",\"frobnicate\":1}", "frobnicate", QV_EUNSUPPORTED},
      {OAI_COMPLETION, "{\"prompt\":\"a\",\"max_tokens\":3,\"min_tokens\":4}", "min_tokens",
       QV_EINVAL},
      {OAI_CHAT, "{\"messages\":[]}", "messages", QV_EINVAL},
      {OAI_CHAT, "{\"messages\":[{\"role\":\"wizard\",\"content\":\"x\"}]}", "messages", QV_EINVAL},
      {OAI_CHAT, "{\"messages\":[{\"role\":\"user\"}]}", "messages", QV_EINVAL},
      {OAI_CHAT,
       "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{}}]}]}",
       "messages", QV_EUNSUPPORTED},
      {OAI_CHAT,
       "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"response_format\":{\"type\":"
       "\"json_schema\"}}",
       "response_format", QV_EINVAL},
      {OAI_CHAT,
       "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"response_format\":{\"type\":"
       "\"xml\"}}",
       "response_format", QV_EUNSUPPORTED},
      {OAI_COMPLETION, "{\"prompt\":\"a\",\"guided_choice\":[]}", "guided_choice", QV_EINVAL},
      {OAI_COMPLETION, "{\"prompt\":\"a\",\"guided_regex\":\"a\",\"guided_choice\":[\"b\"]}", "guided_choice",
       QV_EINVAL},
      {OAI_COMPLETION, "{\"prompt\":\"a\",\"structured_outputs\":{\"structural_tag\":1}}",
       "structured_outputs", QV_EUNSUPPORTED},
      {OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_logprobs\":2}",
       "top_logprobs", QV_EINVAL},
      {OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{}]}", "tools",
       QV_EINVAL},
      {OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"echo\":true}", "echo",
       QV_EUNSUPPORTED},
      {OAI_TOKENIZE, "{\"model\":\"m\"}", "prompt", QV_EINVAL},
      {OAI_DETOKENIZE, "{\"tokens\":[1,\"a\"]}", "tokens", QV_EINVAL},
      /* Strictness (issue 13): data after the value, a second value, duplicate keys (also
       * nested), logit_bias keys that strtol alone would take, NUL and invalid UTF-8. */
      {OAI_COMPLETION, "{\"prompt\":\"a\"} x", "", QV_EFORMAT},
      {OAI_COMPLETION, "{\"prompt\":\"a\"}{\"prompt\":\"b\"}", "", QV_EFORMAT},
      {OAI_COMPLETION, "{\"prompt\":\"a\",\"prompt\":\"b\"}", "", QV_EINVAL},
      {OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"role\":\"user\",\"content\":\"x\"}]}", "",
       QV_EINVAL},
      {OAI_COMPLETION, "{\"prompt\":\"a\",\"logit_bias\":{\" 5\":1}}", "logit_bias", QV_EINVAL},
      {OAI_COMPLETION, "{\"prompt\":\"a\",\"logit_bias\":{\"+5\":1}}", "logit_bias", QV_EINVAL},
      /* NUL is text (json_nul.h), but not in stop strings, model names or keys; raw, not JSON */
      {OAI_COMPLETION, "{\"prompt\":\"a\",\"stop\":[\"x\\u0000\"]}", "stop", QV_EINVAL},
      {OAI_COMPLETION, "{\"prompt\":\"a\",\"model\":\"m\\u0000\"}", "model", QV_EINVAL},
      {OAI_DETOKENIZE, "{\"tokens\":[1],\"model\":\"\\u0000\"}", "model", QV_EINVAL},
      {OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\",\"\\u0000\":1}]}", "",
       QV_EINVAL},
      {OAI_COMPLETION, "{\"prompt\":\"caf\xe9\"}", "", QV_EFORMAT},
      {OAI_COMPLETION, "{\"prompt\":\"\xc0\x80\"}", "", QV_EFORMAT}, /* the marker itself */
      {OAI_COMPLETION, "{\"prompt\":\"a\",\"\xc3\x28\":1}", "", QV_EFORMAT},
      {OAI_COMPLETION, "{\"prompt\":\"\xed\xa0\x80\"}", "", QV_EFORMAT},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    oai_request r;
    qv_error err = {0};
    int rc = parse(cases[i].kind, cases[i].body, &r, &err);
    cr_expect_eq(rc, cases[i].code, "case %zu (%s): rc %d msg %s", i, cases[i].body, rc, err.msg);
    cr_expect_str_eq(r.err_param, cases[i].param, "case %zu: param '%s'", i, r.err_param);
    cr_expect(err.msg[0] != '\0', "case %zu has no message", i);
    oai_request_free(&r);
  }
}

/* Metadata is accepted, unknown fields are ignored and remembered, reasoning_effort reaches
 * the template kwargs (an explicit kwarg wins), continuous usage and parallel_tool_calls. */
Test(openai_req, extra_fields) {
  oai_request r;
  qv_error err = {0};
  const char *body =
      "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"store\":true,"
      "\"metadata\":{\"a\":\"b\"},\"service_tier\":\"auto\",\"user\":\"u\",\"frobnicate\":1,"
      "\"zap\":[],\"reasoning_effort\":\"low\",\"parallel_tool_calls\":false,\"stream\":true,"
      "\"stream_options\":{\"include_usage\":true,\"continuous_usage_stats\":true}}";
  cr_assert_eq(parse(OAI_CHAT, body, &r, &err), 0, "%s", err.msg);
  cr_assert_eq(r.n_ignored, 2);
  cr_assert_str_eq(r.ignored[0], "frobnicate");
  cr_assert_str_eq(r.ignored[1], "zap");
  cr_assert_str_eq(cJSON_GetObjectItem(r.template_kwargs, "reasoning_effort")->valuestring, "low");
  cr_assert_eq(r.parallel_tool_calls, 0);
  cr_assert_eq(r.continuous_usage, 1);
  cr_assert_eq(r.include_usage, 1);
  oai_request_free(&r);
  body = "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"reasoning_effort\":\"low\","
         "\"chat_template_kwargs\":{\"reasoning_effort\":\"high\",\"k\":1}}";
  cr_assert_eq(parse(OAI_CHAT, body, &r, &err), 0, "%s", err.msg);
  cr_assert_str_eq(cJSON_GetObjectItem(r.template_kwargs, "reasoning_effort")->valuestring, "high");
  cr_assert_eq(r.parallel_tool_calls, 1);
  cr_assert_eq(r.n_ignored, 0);
  oai_request_free(&r);
  body = "{\"prompt\":\"a\",\"frobnicate\":1}";
  cr_assert_eq(parse(OAI_COMPLETION, body, &r, &err), 0, "%s", err.msg);
  cr_assert_eq(r.n_ignored, 1);
  oai_request_free(&r);
}

Test(openai_req, chat_messages_normalized) {
  oai_request r;
  qv_error err = {0};
  const char *body =
      "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},"
      "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"Hello \"},"
      "{\"type\":\"text\",\"text\":\"there\"}]},"
      "{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"c1\",\"type\":\"function\","
      "\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]},"
      "{\"role\":\"tool\",\"tool_call_id\":\"c1\",\"content\":\"42\"}],"
      "\"max_completion_tokens\":9,\"logprobs\":true,\"top_logprobs\":3,"
      "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],\"tool_choice\":\"auto\"}";
  cr_assert_eq(parse(OAI_CHAT, body, &r, &err), 0, "%s", err.msg);
  cr_assert_eq(cJSON_GetArraySize(r.messages), 4);
  cJSON *u = cJSON_GetArrayItem(r.messages, 1);
  cr_assert_str_eq(cJSON_GetObjectItem(u, "content")->valuestring, "Hello there");
  cJSON *a = cJSON_GetArrayItem(r.messages, 2);
  cr_assert_str_eq(cJSON_GetObjectItem(a, "content")->valuestring, "");
  cr_assert_not_null(cJSON_GetObjectItem(a, "tool_calls"));
  cr_assert_eq(r.params.max_tokens, 9);
  cr_assert_eq(r.params.sampling.top_logprobs, 3);
  cr_assert_not_null(r.tools);
  cr_assert_str_eq(r.tool_choice->valuestring, "auto");
  char *out = NULL;
  size_t len = 0;
  cr_assert_eq(oai_chat_default_render(r.messages, 1, &out, &len, &err), 0);
  cr_assert_str_eq(out, "<|system|>\nBe brief.\n<|user|>\nHello there\n<|assistant|>\n\n"
                        "<|tool|>\n42\n<|assistant|>\n");
  cr_assert_eq(len, strlen(out));
  free(out);
  oai_request_free(&r);
}

Test(openai_req, chat_defaults) {
  oai_request r;
  qv_error err = {0};
  cr_assert_eq(parse(OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", &r, &err), 0);
  cr_assert_eq(r.params.max_tokens, -1); /* until the context is full */
  cr_assert_eq(r.add_generation_prompt, 1);
  cr_assert_eq(r.want_logprobs, 0);
  oai_request_free(&r);
}

Test(openai_req, tokenize_and_detokenize) {
  oai_request r;
  qv_error err = {0};
  cr_assert_eq(parse(OAI_TOKENIZE, "{\"prompt\":\"hi\",\"add_special_tokens\":false}", &r, &err), 0);
  cr_assert_eq(r.add_special_tokens, 0);
  cr_assert_str_eq(r.prompts[0].text, "hi");
  oai_request_free(&r);
  cr_assert_eq(parse(OAI_DETOKENIZE, "{\"model\":\"x\",\"tokens\":[72,105]}", &r, &err), 0);
  cr_assert_eq(r.n_detok_ids, 2);
  cr_assert_eq(r.detok_ids[1], 105);
  oai_request_free(&r);
}

Test(openai_resp, completion_and_chat_shapes) {
  oai_meta m = {OAI_COMPLETION, "cmpl-1", 1700000000, "tiny"};
  oai_logprobs *lp = oai_logprobs_create(OAI_COMPLETION);
  qv_top_logprob top[2] = {{5, -0.25f}, {9, -1.75f}};
  const char *tops[2] = {"a", "b"};
  cr_assert_eq(oai_logprobs_add(lp, "a", 1, -0.25f, top, tops, 2, 0), 0);
  oai_choice c = {.text = "hello", .text_len = 5, .finish_reason = "length",
                  .logprobs = oai_logprobs_json(lp)};
  oai_usage u = {7, 5, 3};
  char *s = oai_response_json(&m, &c, 1, &u);
  cJSON *j = cJSON_Parse(s);
  cr_assert_not_null(j);
  cr_assert_str_eq(cJSON_GetObjectItem(j, "object")->valuestring, "text_completion");
  cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
  cr_assert_str_eq(cJSON_GetObjectItem(ch, "text")->valuestring, "hello");
  cr_assert_str_eq(cJSON_GetObjectItem(ch, "finish_reason")->valuestring, "length");
  cJSON *l = cJSON_GetObjectItem(ch, "logprobs");
  cr_assert_float_eq(cJSON_GetArrayItem(cJSON_GetObjectItem(l, "token_logprobs"), 0)->valuedouble,
                     -0.25, 1e-6);
  cJSON *t0 = cJSON_GetArrayItem(cJSON_GetObjectItem(l, "top_logprobs"), 0);
  cr_assert_float_eq(cJSON_GetObjectItem(t0, "b")->valuedouble, -1.75, 1e-6);
  cJSON *us = cJSON_GetObjectItem(j, "usage");
  cr_assert_eq(cJSON_GetObjectItem(us, "total_tokens")->valueint, 12);
  cr_assert_eq(
      cJSON_GetObjectItem(cJSON_GetObjectItem(us, "prompt_tokens_details"), "cached_tokens")->valueint,
      3);
  cJSON_Delete(j);
  free(s);
  oai_logprobs_destroy(lp);

  oai_meta mc = {OAI_CHAT, "chatcmpl-2", 1700000001, "tiny"};
  oai_chunk k1 = {.index = 1, .role_first = 1};
  s = oai_chunk_sse(&mc, &k1);
  cr_assert(!strncmp(s, "data: {", 7));
  cr_assert(!strcmp(s + strlen(s) - 2, "\n\n"));
  j = cJSON_Parse(s + 6);
  cr_assert_str_eq(cJSON_GetObjectItem(j, "object")->valuestring, "chat.completion.chunk");
  ch = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
  cr_assert_eq(cJSON_GetObjectItem(ch, "index")->valueint, 1);
  cr_assert_str_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(ch, "delta"), "role")->valuestring,
                   "assistant");
  cr_assert(cJSON_IsNull(cJSON_GetObjectItem(ch, "finish_reason")));
  cJSON_Delete(j);
  free(s);
  oai_chunk k2 = {.usage = &u};
  s = oai_chunk_sse(&mc, &k2);
  j = cJSON_Parse(s + 6);
  cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(j, "choices")), 0);
  cr_assert_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "usage"), "prompt_tokens")->valueint, 7);
  cJSON_Delete(j);
  free(s);
}

Test(openai_resp, chat_reasoning_fields) {
  oai_meta m = {OAI_CHAT, "chatcmpl-3", 1700000002, "tiny"};
  oai_usage u = {1, 2, 0};
  oai_choice cs[2] = {{.text = "ok", .text_len = 2, .finish_reason = "stop", .has_reasoning = 1,
                       .reasoning = "plan"},
                      {.text = "ok", .text_len = 2, .finish_reason = "stop", .has_reasoning = 1}};
  char *s = oai_response_json(&m, cs, 2, &u);
  cJSON *j = cJSON_Parse(s);
  cJSON *m0 = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0), "message");
  cJSON *m1 = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 1), "message");
  cr_assert_str_eq(cJSON_GetObjectItem(m0, "reasoning_content")->valuestring, "plan");
  cr_assert(cJSON_IsNull(cJSON_GetObjectItem(m1, "reasoning_content")));
  cJSON_Delete(j);
  free(s);
  /* A reasoning-only delta carries no content key. */
  oai_chunk k = {.index = 0, .reasoning = "pl", .reasoning_len = 2};
  s = oai_chunk_sse(&m, &k);
  j = cJSON_Parse(s + 6);
  cJSON *d = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0), "delta");
  cr_assert_str_eq(cJSON_GetObjectItem(d, "reasoning_content")->valuestring, "pl");
  cr_assert_null(cJSON_GetObjectItem(d, "content"));
  cJSON_Delete(j);
  free(s);
}

Test(registry, reasoning_parser) {
  registry g;
  registry_init(&g);
  qv_error err = {0};
  const char *cfg = "{\"models\":[{\"name\":\"a\",\"path\":\"/a\",\"reasoning_parser\":\"deepseek_r1\"},"
                    "{\"name\":\"b\",\"path\":\"/b\",\"reasoning_parser\":\"qwen3\"},"
                    "{\"name\":\"c\",\"path\":\"/c\"}]}";
  cr_assert_eq(registry_load_json(&g, cfg, strlen(cfg), &err), 0, "%s", err.msg);
  cr_assert_eq(g.models[0].reasoning, REG_REASONING_DEEPSEEK_R1);
  cr_assert_eq(g.models[1].reasoning, REG_REASONING_QWEN3);
  cr_assert_eq(g.models[2].reasoning, REG_REASONING_UNSET);
  registry_deinit(&g);
  reg_reasoning rp = REG_REASONING_UNSET;
  cr_assert_eq(registry_reasoning_parse("none", &rp, &err), 0);
  cr_assert_eq(rp, REG_REASONING_NONE);
  cr_assert_eq(registry_reasoning_parse("deepseek-r1", &rp, &err), QV_EINVAL);
  cr_assert(strstr(err.msg, "unknown reasoning parser 'deepseek-r1'"), "%s", err.msg);
  cr_assert(strstr(err.msg, "deepseek_r1, qwen3"), "%s", err.msg);
  static const char *bad[] = {
      "{\"models\":[{\"path\":\"/a\",\"reasoning_parser\":\"granite\"}]}",
      "{\"models\":[{\"path\":\"/a\",\"reasoning_parser\":1}]}",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    registry_init(&g);
    err = (qv_error){0};
    cr_expect_eq(registry_load_json(&g, bad[i], strlen(bad[i]), &err), QV_EINVAL, "config %zu", i);
    cr_expect(strstr(err.msg, "reasoning_parser") || strstr(err.msg, "reasoning parser"), "%s",
              err.msg);
    registry_deinit(&g);
  }
}

Test(openai_resp, chat_logprobs_bytes_and_errors) {
  oai_logprobs *lp = oai_logprobs_create(OAI_CHAT);
  qv_top_logprob top[1] = {{3, -0.5f}};
  const char *tops[1] = {"\xc3\xa9"};
  oai_logprobs_add(lp, "\xc3\xa9", 2, -0.5f, top, tops, 1, 0);
  cJSON *taken = oai_logprobs_take(lp);
  cJSON *e = cJSON_GetArrayItem(cJSON_GetObjectItem(taken, "content"), 0);
  cJSON *bytes = cJSON_GetObjectItem(e, "bytes");
  cr_assert_eq(cJSON_GetArraySize(bytes), 2);
  cr_assert_eq(cJSON_GetArrayItem(bytes, 0)->valueint, 0xc3);
  cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(oai_logprobs_json(lp), "content")), 0);
  cJSON_Delete(taken);
  oai_logprobs_destroy(lp);

  char *s = oai_error_json(404, "The model 'x' does not exist.", "model", "model_not_found");
  cJSON *j = cJSON_Parse(s);
  cJSON *er = cJSON_GetObjectItem(j, "error");
  cr_assert_str_eq(cJSON_GetObjectItem(er, "type")->valuestring, "not_found_error");
  cr_assert_str_eq(cJSON_GetObjectItem(er, "param")->valuestring, "model");
  cJSON_Delete(j);
  free(s);
  /* Without a code: null, as OpenAI sends (never the HTTP status as a number). */
  s = oai_error_json(400, "bad", NULL, NULL);
  j = cJSON_Parse(s);
  cr_assert(cJSON_IsNull(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "error"), "code")), "%s", s);
  cJSON_Delete(j);
  free(s);
}

/* The NUL check reads escapes: an escaped backslash followed by u0000 is the text "\u0000",
 * not a NUL, and parses; valid multi-byte UTF-8 and trailing whitespace are accepted. */
Test(openai_req, escaped_backslash_is_not_nul) {
  oai_request r;
  qv_error err = {0};
  cr_assert_eq(parse(OAI_COMPLETION, "{\"prompt\":\"a\\\\u0000b\"}", &r, &err), 0, "%s", err.msg);
  cr_assert_str_eq(r.prompts[0].text, "a\\u0000b");
  cr_assert_eq(r.prompts[0].text_len, 8);
  oai_request_free(&r);
  cr_assert_eq(parse(OAI_COMPLETION, "{\"prompt\":\"caf\xc3\xa9 \xf0\x9f\x98\x80\"} \n", &r, &err), 0,
               "%s", err.msg);
  oai_request_free(&r);
}

/* Completions logprobs names: text, "bytes:\xNN..." for a token that is not complete UTF-8, and
 * "token_id:<id>" for a later token whose name an earlier, different token holds. */
Test(openai_resp, completion_token_keys_distinct) {
  char *k = oai_token_key("\xEF\xBF\xBD", "\xE4", 1);
  cr_assert_str_eq(k, "bytes:\\xe4");
  free(k);
  k = oai_token_key("\xEF\xBF\xBD", " \xF0\x9F\x98", 4);
  cr_assert_str_eq(k, "bytes:\\x20\\xf0\\x9f\\x98");
  free(k);
  k = oai_token_key(" caf\xC3\xA9", "caf\xC3\xA9", 5); /* complete: the text, leading space kept */
  cr_assert_str_eq(k, " caf\xC3\xA9");
  free(k);
  k = oai_token_key("\xEF\xBF\xBD", "\xED\xA0\x80", 3); /* a surrogate is not UTF-8 */
  cr_assert_str_eq(k, "bytes:\\xed\\xa0\\x80");
  free(k);
  k = oai_token_key("x", NULL, 0);
  cr_assert_str_eq(k, "x");
  free(k);
  /* sampled 7 ("A"); alternatives 9 ("A", another token), 7 (itself), 4 ("b"), 5 ("b") */
  const char *in[] = {"A", "A", "A", "b", "b"};
  int32_t ids[] = {7, 9, 7, 4, 5};
  char *keys[5];
  for (int i = 0; i < 5; i++) keys[i] = strdup(in[i]);
  cr_assert_eq(oai_distinct_keys(keys, ids, 5), 0);
  const char *want[] = {"A", "token_id:9", "A", "b", "token_id:5"};
  for (int i = 0; i < 5; i++) {
    cr_assert_str_eq(keys[i], want[i], "key %d", i);
    free(keys[i]);
  }
  /* Through the completions shape: five alternatives, five entries. */
  oai_logprobs *lp = oai_logprobs_create(OAI_COMPLETION);
  qv_top_logprob top[4] = {{9, -0.5f}, {7, -1.0f}, {4, -2.0f}, {5, -3.0f}};
  const char *tops[4] = {"token_id:9", "A", "b", "token_id:5"};
  cr_assert_eq(oai_logprobs_add(lp, "A", 1, -1.0f, top, tops, 4, 0), 0);
  cJSON *t0 = cJSON_GetArrayItem(cJSON_GetObjectItem(oai_logprobs_json(lp), "top_logprobs"), 0);
  cr_assert_eq(cJSON_GetArraySize(t0), 4);
  cr_assert_float_eq(cJSON_GetObjectItem(t0, "A")->valuedouble, -1.0, 1e-6);
  oai_logprobs_destroy(lp);
}

Test(registry, cli_config_resolve) {
  registry g;
  registry_init(&g);
  qv_error err = {0};
  cr_assert_eq(registry_add_model_arg(&g, "/data/models/stories260K/", &err), 0);
  cr_assert_str_eq(g.models[0].name, "stories260K");
  cr_assert_eq(registry_add_model_arg(&g, "tiny=quiver-tiny", &err), 0);
  cr_assert_eq(registry_add_alias_arg(&g, "fast=tiny", &err), 0);
  const char *cfg = "{\"port\":8123,\"api_keys\":[\"k1\"],"
                    "\"models\":[{\"name\":\"big\",\"path\":\"/x\",\"max_num_seqs\":4,"
                    "\"aliases\":[\"b\"]}],"
                    "\"routes\":{\"auto\":[\"big\",\"tiny\"]},\"aliases\":{\"default\":\"auto\"}}";
  cr_assert_eq(registry_load_json(&g, cfg, strlen(cfg), &err), 0, "%s", err.msg);
  cr_assert_eq(registry_finalize(&g, &err), 0, "%s", err.msg);
  cr_assert_eq(g.port, 8123);
  cr_assert_eq(g.models[2].max_num_seqs, 4);
  int32_t idx[8];
  cr_assert_eq(registry_resolve(&g, "tiny", idx, 8), 1);
  cr_assert_eq(idx[0], 1);
  cr_assert_eq(registry_resolve(&g, "fast", idx, 8), 1);
  cr_assert_eq(idx[0], 1);
  cr_assert_eq(registry_resolve(&g, "b", idx, 8), 1);
  cr_assert_eq(idx[0], 2);
  cr_assert_eq(registry_resolve(&g, "default", idx, 8), 2);
  cr_assert_eq(idx[0], 2);
  cr_assert_eq(idx[1], 1);
  cr_assert_eq(registry_resolve(&g, "nope", idx, 8), 0);
  cr_assert(registry_is_open_path(&g, "/health"));
  cr_assert(!registry_is_open_path(&g, "/metrics"));
  registry_deinit(&g);
}

Test(registry, rejects_bad_configs) {
  static const char *bad[] = {
      "{", "[]", "{\"models\":[{\"name\":\"a\"}]}", "{\"unknown\":1}",
      "{\"models\":[{\"path\":\"/a\",\"max_num_seqs\":-3}]}",
      "{\"models\":[{\"path\":\"/a\",\"device\":\"tpu\"}]}", "{\"routes\":{\"r\":[]}}",
      "{\"port\":70000}", "{\"models\":[{\"name\":\"has space\",\"path\":\"/a\"}]}",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    registry g;
    registry_init(&g);
    qv_error err = {0};
    cr_expect_neq(registry_load_json(&g, bad[i], strlen(bad[i]), &err), 0, "config %zu accepted", i);
    registry_deinit(&g);
  }
  static const char *bad_final[] = {
      "{\"models\":[{\"name\":\"a\",\"path\":\"/a\"},{\"name\":\"a\",\"path\":\"/b\"}]}",
      "{\"models\":[{\"name\":\"a\",\"path\":\"/a\"}],\"aliases\":{\"x\":\"zz\"}}",
      "{\"models\":[{\"name\":\"a\",\"path\":\"/a\"}],\"routes\":{\"r\":[\"a\",\"q\"]}}",
      "{\"models\":[{\"name\":\"a\",\"path\":\"/a\"}],\"aliases\":{\"a\":\"a\"}}",
  };
  for (size_t i = 0; i < sizeof bad_final / sizeof bad_final[0]; i++) {
    registry g;
    registry_init(&g);
    qv_error err = {0};
    cr_assert_eq(registry_load_json(&g, bad_final[i], strlen(bad_final[i]), &err), 0, "%s", err.msg);
    cr_expect_neq(registry_finalize(&g, &err), 0, "final config %zu accepted", i);
    registry_deinit(&g);
  }
  registry g;
  registry_init(&g);
  qv_error err = {0};
  cr_assert_eq(registry_finalize(&g, &err), 0);
  cr_assert_eq(g.n_models, 1);
  cr_assert_str_eq(g.models[0].path, "quiver-tiny");
  registry_deinit(&g);
}

Test(metrics, prometheus_text) {
  metrics m;
  const char *names[2] = {"a", "b\"q"};
  cr_assert_eq(metrics_init(&m, names, 2), 0);
  metrics_count_request(&m, 0, 200);
  metrics_count_request(&m, 0, 200);
  metrics_count_request(&m, 1, 429);
  metrics_count_request(&m, -1, 404);
  metrics_add_tokens(&m, 0, 11, 23);
  metrics_observe_ttft(&m, 0, 0.003);
  metrics_observe_ttft(&m, 0, 0.3);
  metrics_observe_itl(&m, 1, 0.02);
  qv_engine_stats st = {0};
  st.n_running = 3;
  st.n_kv_blocks = 64;
  st.n_kv_blocks_used = 10;
  st.prefix_queries = 8;
  st.prefix_hits = 2;
  metrics_model_state states[2] = {{&st, 1}, {NULL, 0}};
  size_t len = 0;
  char *t = metrics_render(&m, states, &len);
  cr_assert_not_null(t);
  cr_assert_eq(strlen(t), len);
  cr_assert(strstr(t, "quiver_requests_total{model=\"a\",status=\"200\"} 2\n"));
  cr_assert(strstr(t, "quiver_requests_total{model=\"b\\\"q\",status=\"429\"} 1\n"));
  cr_assert(strstr(t, "quiver_requests_total{model=\"\",status=\"404\"} 1\n"));
  cr_assert(strstr(t, "quiver_generation_tokens_total{model=\"a\"} 23\n"));
  cr_assert(strstr(t, "quiver_time_to_first_token_seconds_bucket{model=\"a\",le=\"0.005\"} 1\n"));
  cr_assert(strstr(t, "quiver_time_to_first_token_seconds_bucket{model=\"a\",le=\"0.5\"} 2\n"));
  cr_assert(strstr(t, "quiver_time_to_first_token_seconds_count{model=\"a\"} 2\n"));
  cr_assert(strstr(t, "quiver_requests_running{model=\"a\"} 3\n"));
  cr_assert(strstr(t, "quiver_kv_blocks_used{model=\"a\"} 10\n"));
  cr_assert(strstr(t, "quiver_prefix_cache_hit_rate{model=\"a\"} 0.25\n"));
  cr_assert(strstr(t, "quiver_model_ready{model=\"b\\\"q\"} 0\n"));
  cr_assert(strstr(t, "# TYPE quiver_inter_token_latency_seconds histogram\n"));
  free(t);
  metrics_deinit(&m);
}

Test(auth, bearer_keys) {
  const char *keys[2] = {"sk-alpha", "sk-beta-longer"};
  cr_assert(auth_check(keys, 2, "Bearer sk-alpha"));
  cr_assert(auth_check(keys, 2, "bearer sk-beta-longer"));
  cr_assert(!auth_check(keys, 2, "Bearer sk-alph"));
  cr_assert(!auth_check(keys, 2, "Bearer sk-alphaa"));
  cr_assert(!auth_check(keys, 2, "Basic sk-alpha"));
  cr_assert(!auth_check(keys, 2, "Bearer "));
  cr_assert(!auth_check(keys, 2, NULL));
  cr_assert(auth_check(keys, 0, NULL));
  cr_assert(auth_equal("abc", 3, "abc", 3));
  cr_assert(!auth_equal("abc", 3, "abd", 3));
  cr_assert(!auth_equal("abc", 3, "ab", 2));
}
