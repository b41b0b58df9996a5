/* The dialect decoders on their own (dialect_anthropic.c, dialect_responses.c): valid bodies
 * become the expected chat-completions request, and thousands of seeded mutations of them
 * (bytes flipped, dropped, inserted; NULs, invalid UTF-8, huge strings) either decode or fail
 * with a message, never crash or leak (this runs under ASan/UBSan). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/server_int.h"

static struct server fake_server;

static void setup(void) {
  resp_store_limits l;
  resp_store_limits_default(&l);
  cr_assert_eq(resp_store_create(&l, &fake_server.responses), 0);
}

static void teardown(void) { resp_store_destroy(fake_server.responses); }

/* Decodes body with dialect d into a fresh request; frees everything; returns the code. */
static int decode(const srv_dialect *d, oai_kind kind, const char *body, size_t len,
                  char *param_out, cJSON **messages_out) {
  srv_req r;
  memset(&r, 0, sizeof r);
  r.s = &fake_server;
  r.kind = kind;
  r.dialect = d;
  int rc = d->decode(&r, body, len);
  if (rc) cr_assert(r.work_err.msg[0] != '\0', "rc %d with no message for %.*s", rc, (int)len, body);
  if (param_out) snprintf(param_out, 64, "%s", r.o.err_param);
  if (messages_out) *messages_out = rc ? NULL : cJSON_Duplicate(r.o.messages, 1);
  oai_request_free(&r.o);
  if (r.dstate && d->state_free) d->state_free(r.dstate);
  return rc;
}

static const char *const anth_valid =
    "{\"model\":\"m\",\"max_tokens\":2048,\"system\":[{\"type\":\"text\",\"text\":\"S\"}],"
    "\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"},"
    "{\"role\":\"assistant\",\"content\":[{\"type\":\"thinking\",\"thinking\":\"t\",\"signature\":\"\"},"
    "{\"type\":\"text\",\"text\":\"A\"},{\"type\":\"tool_use\",\"id\":\"u1\",\"name\":\"f\","
    "\"input\":{\"x\":1}}]},{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\","
    "\"tool_use_id\":\"u1\",\"content\":[{\"type\":\"text\",\"text\":\"R\"}],\"is_error\":true},"
    "{\"type\":\"text\",\"text\":\"more\"}]}],\"tools\":[{\"name\":\"f\",\"description\":\"d\","
    "\"input_schema\":{\"type\":\"object\"}}],\"tool_choice\":{\"type\":\"any\","
    "\"disable_parallel_tool_use\":true},\"stop_sequences\":[\"x\"],\"temperature\":0.5,"
    "\"top_k\":3,\"stream\":true,\"thinking\":{\"type\":\"enabled\",\"budget_tokens\":1024},"
    "\"metadata\":{\"user_id\":\"u\"},\"output_config\":{\"effort\":\"low\"}}";

static const char *const resp_valid =
    "{\"model\":\"m\",\"instructions\":\"I\",\"input\":[{\"role\":\"user\",\"content\":[{\"type\":"
    "\"input_text\",\"text\":\"Hi\"}]},{\"type\":\"function_call\",\"call_id\":\"c1\",\"name\":\"f\","
    "\"arguments\":\"{}\"},{\"type\":\"function_call\",\"call_id\":\"c2\",\"name\":\"g\","
    "\"arguments\":\"{}\"},{\"type\":\"function_call_output\",\"call_id\":\"c1\",\"output\":\"R\"},"
    "{\"type\":\"reasoning\",\"id\":\"rs\",\"summary\":[]}],\"tools\":[{\"type\":\"function\","
    "\"name\":\"f\",\"parameters\":{\"type\":\"object\"}}],\"tool_choice\":{\"type\":\"function\","
    "\"name\":\"f\"},\"max_output_tokens\":5,\"temperature\":0,\"top_p\":0.9,\"stream\":true,"
    "\"store\":false,\"reasoning\":{\"effort\":\"high\"},\"metadata\":{},\"truncation\":\"auto\","
    "\"parallel_tool_calls\":false,\"text\":{\"format\":{\"type\":\"text\"}}}";

Test(dialects, anthropic_translation, .init = setup, .fini = teardown) {
  cJSON *msgs = NULL;
  cr_assert_eq(decode(&srv_dialect_anthropic, OAI_CHAT, anth_valid, strlen(anth_valid), NULL, &msgs), 0);
  char *s = cJSON_PrintUnformatted(msgs);
  cr_assert_str_eq(s,
      "[{\"role\":\"system\",\"content\":\"S\"},{\"role\":\"user\",\"content\":\"Hi\"},"
      "{\"role\":\"assistant\",\"content\":\"A\",\"tool_calls\":[{\"id\":\"u1\",\"type\":\"function\","
      "\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"x\\\":1}\"}}],\"reasoning_content\":\"t\"},"
      "{\"role\":\"tool\",\"tool_call_id\":\"u1\",\"content\":\"Error: R\"},"
      "{\"role\":\"user\",\"content\":\"more\"}]");
  free(s);
  cJSON_Delete(msgs);
  /* The same conversation counted: no sampling fields, no tool_choice. */
  const char *count = "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],"
                      "\"tool_choice\":{\"type\":\"auto\"},\"tools\":[]}";
  cr_assert_eq(decode(&srv_dialect_anthropic, OAI_TOKENIZE, count, strlen(count), NULL, NULL), 0);
  char param[64];
  const char *bad = "{\"model\":\"m\",\"max_tokens\":1,\"messages\":[{\"role\":\"user\",\"content\":"
                    "[{\"type\":\"image\",\"source\":{}}]}]}";
  cr_assert_eq(decode(&srv_dialect_anthropic, OAI_CHAT, bad, strlen(bad), param, NULL), QV_EUNSUPPORTED);
  cr_assert_str_eq(param, "messages");
  bad = "{\"model\":\"m\",\"max_tokens\":1,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"n\":2}";
  cr_assert_eq(decode(&srv_dialect_anthropic, OAI_CHAT, bad, strlen(bad), param, NULL), QV_EUNSUPPORTED);
  cr_assert_str_eq(param, "n");
  /* thinking.budget_tokens as Anthropic validates it: an integer >= 1024, below max_tokens
   * (count_tokens has no max_tokens to compare with). */
  const char *th[] = {"1023", "1024.5", "\"2000\"", "4096", "2048"};
  for (size_t i = 0; i < sizeof th / sizeof th[0]; i++) {
    char b[200];
    snprintf(b, sizeof b, "{\"model\":\"m\",\"max_tokens\":2048,\"messages\":[{\"role\":\"user\","
             "\"content\":\"x\"}],\"thinking\":{\"type\":\"enabled\",\"budget_tokens\":%s}}", th[i]);
    cr_expect_eq(decode(&srv_dialect_anthropic, OAI_CHAT, b, strlen(b), param, NULL), QV_EINVAL, "%s", th[i]);
    cr_expect_str_eq(param, "thinking");
  }
  const char *ok = "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                   "\"thinking\":{\"type\":\"enabled\",\"budget_tokens\":4096}}";
  cr_assert_eq(decode(&srv_dialect_anthropic, OAI_TOKENIZE, ok, strlen(ok), NULL, NULL), 0);
}

Test(dialects, responses_translation, .init = setup, .fini = teardown) {
  cJSON *msgs = NULL;
  cr_assert_eq(decode(&srv_dialect_responses, OAI_CHAT, resp_valid, strlen(resp_valid), NULL, &msgs), 0);
  char *s = cJSON_PrintUnformatted(msgs);
  cr_assert_str_eq(s,
      "[{\"role\":\"system\",\"content\":\"I\"},{\"role\":\"user\",\"content\":\"Hi\"},"
      "{\"role\":\"assistant\",\"content\":\"\",\"tool_calls\":[{\"id\":\"c1\",\"type\":\"function\","
      "\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}},{\"id\":\"c2\",\"type\":\"function\","
      "\"function\":{\"name\":\"g\",\"arguments\":\"{}\"}}]},"
      "{\"role\":\"tool\",\"tool_call_id\":\"c1\",\"content\":\"R\"}]");
  free(s);
  cJSON_Delete(msgs);
  /* previous_response_id: the stored conversation comes first; unknown ids fail. */
  cr_assert_eq(resp_store_put(fake_server.responses, "resp_1", "{}",
                              "[{\"role\":\"user\",\"content\":\"A\"},{\"role\":\"assistant\",\"content\":\"B\"}]",
                              (int64_t)time(NULL)), 0);
  const char *next = "{\"model\":\"m\",\"input\":\"C\",\"previous_response_id\":\"resp_1\"}";
  cr_assert_eq(decode(&srv_dialect_responses, OAI_CHAT, next, strlen(next), NULL, &msgs), 0);
  cr_assert_eq(cJSON_GetArraySize(msgs), 3);
  cJSON_Delete(msgs);
  char param[64];
  next = "{\"model\":\"m\",\"input\":\"C\",\"previous_response_id\":\"resp_2\"}";
  cr_assert_eq(decode(&srv_dialect_responses, OAI_CHAT, next, strlen(next), param, NULL), QV_ENOTFOUND);
  cr_assert_str_eq(param, "previous_response_id");
}

static uint64_t rng_next(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

/* Seeded mutations of a valid body (bytes changed, dropped or inserted, \u0000 escapes
 * inserted): every one decodes or fails cleanly (ASan checks the rest). */
static void fuzz(const srv_dialect *d, oai_kind kind, const char *valid, uint64_t seed, int n) {
  static const char inserts[] = "{}[]\",:0-9eE\\ \x00\xff\xc3\xed";
  size_t vlen = strlen(valid);
  char *buf = malloc(vlen + 64);
  int ok = 0;
  for (int i = 0; i < n; i++) {
    memcpy(buf, valid, vlen);
    size_t len = vlen;
    int muts = 1 + (int)(rng_next(&seed) % 4);
    for (int m = 0; m < muts && len > 1; m++) {
      size_t pos = rng_next(&seed) % len;
      uint64_t op = rng_next(&seed) % 4;
      if (op == 3) { /* a NUL escape anywhere: text keeps it, keys and names refuse it */
        memmove(buf + pos + 6, buf + pos, len - pos);
        memcpy(buf + pos, "\\u0000", 6);
        len += 6;
      } else if (op == 0) {
        buf[pos] = (char)(rng_next(&seed) & 0xff);
      } else if (op == 1) {
        memmove(buf + pos, buf + pos + 1, len - pos - 1);
        len--;
      } else {
        memmove(buf + pos + 1, buf + pos, len - pos);
        buf[pos] = inserts[rng_next(&seed) % (sizeof inserts - 1)];
        len++;
      }
    }
    ok += decode(d, kind, buf, len, NULL, NULL) == 0;
  }
  free(buf);
  cr_assert_lt(ok, n, "no mutation was rejected");
}

Test(dialects, fuzz_anthropic, .init = setup, .fini = teardown) {
  fuzz(&srv_dialect_anthropic, OAI_CHAT, anth_valid, 0x1234567ull, 3000);
  fuzz(&srv_dialect_anthropic, OAI_TOKENIZE, anth_valid, 0x7654321ull, 1000);
}

Test(dialects, fuzz_responses, .init = setup, .fini = teardown) {
  cr_assert_eq(resp_store_put(fake_server.responses, "resp_1", "{}", "[]", (int64_t)time(NULL)), 0);
  fuzz(&srv_dialect_responses, OAI_CHAT, resp_valid, 0xabcdefull, 3000);
}

/* Huge inputs: a 1 MiB text and 10,000 blocks decode (limits are the HTTP layer's). */
Test(dialects, huge_inputs, .init = setup, .fini = teardown) {
  size_t n = 1 << 20;
  char *body = malloc(n + 200);
  int k = snprintf(body, 200, "{\"model\":\"m\",\"max_tokens\":1,\"messages\":[{\"role\":\"user\",\"content\":\"");
  memset(body + k, 'a', n);
  strcpy(body + k + n, "\"}]}");
  cr_assert_eq(decode(&srv_dialect_anthropic, OAI_CHAT, body, strlen(body), NULL, NULL), 0);
  free(body);
  size_t cap = 10000 * 40 + 200;
  body = malloc(cap);
  size_t o = (size_t)snprintf(body, cap, "{\"model\":\"m\",\"input\":[");
  for (int i = 0; i < 10000; i++)
    o += (size_t)snprintf(body + o, cap - o, "%s{\"role\":\"user\",\"content\":\"x\"}", i ? "," : "");
  snprintf(body + o, cap - o, "]}");
  cr_assert_eq(decode(&srv_dialect_responses, OAI_CHAT, body, strlen(body), NULL, NULL), 0);
  free(body);
}
