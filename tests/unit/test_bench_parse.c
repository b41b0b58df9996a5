/* Benchmark client parsers: the incremental SSE parser (src/core/sse_parse.c) fed in random
 * splits, and dataset parsing and sampling rules (src/core/bench_dataset.c). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/bench_dataset.h"
#include "core/bench_rng.h"
#include "core/sse_parse.h"

typedef struct collected {
  int n;
  char events[16][32];
  char data[16][256];
  int stop_at; /* stop (return 7) when reaching this event number; -1 never */
} collected;

static int on_event(void *arg, const char *event, const char *data, size_t len) {
  collected *c = arg;
  cr_assert_eq(strlen(data), len);
  if (c->n == c->stop_at) return 7;
  if (c->n < 16) {
    snprintf(c->events[c->n], sizeof c->events[0], "%s", event);
    snprintf(c->data[c->n], sizeof c->data[0], "%s", data);
  }
  c->n++;
  return 0;
}

static const char *k_stream =
    ": keep-alive comment\r\n"
    "data: {\"a\":1}\r\n\r\n"
    "data:{\"b\":2}\n\n"
    "event: error\r"
    "data: line one\r"
    "data:  two spaces\r\r"
    "id: 5\n"
    "retry: 100\n"
    "data\n\n"
    "data: [DONE]\n\n";

static void check_stream(const collected *c) {
  cr_assert_eq(c->n, 5);
  cr_assert_str_eq(c->data[0], "{\"a\":1}");
  cr_assert_str_eq(c->events[0], "");
  cr_assert_str_eq(c->data[1], "{\"b\":2}");
  cr_assert_str_eq(c->events[2], "error");
  cr_assert_str_eq(c->data[2], "line one\n two spaces");
  cr_assert_str_eq(c->data[3], "");
  cr_assert_str_eq(c->events[3], "");
  cr_assert_str_eq(c->data[4], "[DONE]");
}

Test(bench_sse, whole_stream) {
  collected c = {.stop_at = -1};
  sse_parser p;
  sse_parser_init(&p, 0, on_event, &c);
  qv_error err = {0};
  cr_assert_eq(sse_parser_feed(&p, k_stream, strlen(k_stream), &err), 0);
  cr_assert_eq(sse_parser_finish(&p, &err), 0);
  check_stream(&c);
  sse_parser_deinit(&p);
}

Test(bench_sse, random_splits_give_the_same_events) {
  bench_rng r;
  bench_rng_seed(&r, 5);
  size_t len = strlen(k_stream);
  for (int trial = 0; trial < 300; trial++) {
    collected c = {.stop_at = -1};
    sse_parser p;
    sse_parser_init(&p, 0, on_event, &c);
    qv_error err = {0};
    size_t i = 0;
    while (i < len) {
      size_t n = (size_t)bench_rng_int(&r, 1, 9);
      if (n > len - i) n = len - i;
      cr_assert_eq(sse_parser_feed(&p, k_stream + i, n, &err), 0);
      i += n;
    }
    cr_assert_eq(sse_parser_finish(&p, &err), 0);
    check_stream(&c);
    sse_parser_deinit(&p);
  }
}

Test(bench_sse, pending_event_dispatched_at_finish_and_limits) {
  collected c = {.stop_at = -1};
  sse_parser p;
  sse_parser_init(&p, 32, on_event, &c);
  qv_error err = {0};
  cr_assert_eq(sse_parser_feed(&p, "data: tail", 10, &err), 0);
  cr_assert_eq(c.n, 0);
  cr_assert_eq(sse_parser_finish(&p, &err), 0);
  cr_assert_eq(c.n, 1);
  cr_assert_str_eq(c.data[0], "tail");
  char big[100];
  memset(big, 'x', sizeof big);
  cr_assert_eq(sse_parser_feed(&p, big, sizeof big, &err), QV_ELIMIT);
  sse_parser_deinit(&p);
  /* Many data lines that each fit but together pass the limit. */
  sse_parser_init(&p, 32, on_event, &c);
  const char *lines = "data: 0123456789\ndata: 0123456789\ndata: 0123456789\n";
  cr_assert_eq(sse_parser_feed(&p, lines, strlen(lines), &err), QV_ELIMIT);
  sse_parser_deinit(&p);
}

Test(bench_sse, callback_stops_the_parser) {
  collected c = {.stop_at = 1};
  sse_parser p;
  sse_parser_init(&p, 0, on_event, &c);
  qv_error err = {0};
  cr_assert_eq(sse_parser_feed(&p, k_stream, strlen(k_stream), &err), 7);
  cr_assert_eq(c.n, 1);
  sse_parser_deinit(&p);
}

Test(bench_dataset, sharegpt_first_two_turns) {
  const char *json =
      "[{\"id\":\"a\",\"conversations\":[{\"from\":\"human\",\"value\":\"Hello there\"},"
      "{\"from\":\"gpt\",\"value\":\"Hi!\"},{\"from\":\"human\",\"value\":\"ignored\"}]},"
      "{\"id\":\"b\",\"conversations\":[{\"from\":\"human\",\"value\":\"only one\"}]},"
      "{\"id\":\"c\"},"
      "{\"id\":\"d\",\"conversations\":[{\"from\":\"human\",\"value\":5},{\"value\":\"x\"}]},"
      "{\"id\":\"e\",\"conversations\":[{\"value\":\"Q2 \\u00e9\"},{\"value\":\"A2\"}]}]";
  bench_text *t;
  size_t n, skipped;
  qv_error err = {0};
  cr_assert_eq(bench_sharegpt_parse(json, strlen(json), &t, &n, &skipped, &err), 0, "%s", err.msg);
  cr_assert_eq(n, 2);
  cr_assert_eq(skipped, 3);
  cr_assert_str_eq(t[0].prompt, "Hello there");
  cr_assert_str_eq(t[0].completion, "Hi!");
  cr_assert_str_eq(t[1].prompt, "Q2 \xc3\xa9");
  cr_assert_eq(t[1].output_len, -1);
  bench_texts_free(t, n);
  cr_assert_eq(bench_sharegpt_parse("{\"a\":1}", 7, &t, &n, NULL, &err), QV_EFORMAT);
  cr_assert_eq(bench_sharegpt_parse("[{", 2, &t, &n, NULL, &err), QV_EFORMAT);
  cr_assert_eq(bench_sharegpt_parse("[]", 2, &t, &n, NULL, &err), 0);
  cr_assert_eq(n, 0);
  bench_texts_free(t, n);
}

Test(bench_dataset, jsonl_prompts) {
  const char *buf = "{\"prompt\":\"one\",\"output_len\":12}\r\n\n  \"two\"  \n{\"prompt\":\"three\",\"max_tokens\":3}";
  bench_text *t;
  size_t n;
  qv_error err = {0};
  cr_assert_eq(bench_jsonl_parse(buf, strlen(buf), &t, &n, &err), 0, "%s", err.msg);
  cr_assert_eq(n, 3);
  cr_assert_str_eq(t[0].prompt, "one");
  cr_assert_eq(t[0].output_len, 12);
  cr_assert_str_eq(t[1].prompt, "two");
  cr_assert_eq(t[1].output_len, -1);
  cr_assert_eq(t[2].output_len, 3);
  bench_texts_free(t, n);
  const char *bad[] = {"{\"prompt\":\"a\"}\n{\"text\":\"b\"}", "{\"prompt\":\"a\",\"output_len\":0}",
                       "{\"prompt\":\"a\",\"output_len\":1.5}", "[1,2]", "{\"prompt\":"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    cr_assert_eq(bench_jsonl_parse(bad[i], strlen(bad[i]), &t, &n, &err), QV_EFORMAT, "case %zu", i);
  cr_assert(strstr(err.msg, "line 1"));
  cr_assert_eq(bench_jsonl_parse(bad[0], strlen(bad[0]), &t, &n, &err), QV_EFORMAT);
  cr_assert(strstr(err.msg, "line 2"), "%s", err.msg);
}

Test(bench_dataset, sharegpt_filter_matches_vllm) {
  cr_assert(bench_sharegpt_keep(4, 4, 0));
  cr_assert(!bench_sharegpt_keep(3, 100, 0));
  cr_assert(!bench_sharegpt_keep(100, 3, 0));
  cr_assert(bench_sharegpt_keep(100, 3, 1)); /* fixed output length skips the output check */
  cr_assert(bench_sharegpt_keep(1024, 1024, 0));
  cr_assert(!bench_sharegpt_keep(1025, 10, 0));
  cr_assert(!bench_sharegpt_keep(1000, 1049, 0));
}

Test(bench_dataset, random_ranges) {
  bench_len_range r;
  qv_error err = {0};
  cr_assert_eq(bench_random_ranges(100, 50, 0.25, 1, &r, &err), 0);
  cr_assert_eq(r.in_lo, 74);  /* floor(99 * 0.75) */
  cr_assert_eq(r.in_hi, 124); /* ceil(99 * 1.25) */
  cr_assert_eq(r.out_lo, 37); /* floor(37.5) */
  cr_assert_eq(r.out_hi, 63); /* ceil(62.5) */
  cr_assert_eq(bench_random_ranges(10, 1, 0.9, 0, &r, &err), 0);
  cr_assert_eq(r.out_lo, 1);
  cr_assert_eq(r.out_hi, 2);
  cr_assert_eq(bench_random_ranges(10, 5, 1.0, 0, &r, &err), QV_EINVAL);
  cr_assert_eq(bench_random_ranges(1, 5, 0.0, 1, &r, &err), QV_EINVAL);
  cr_assert_eq(bench_random_ranges(0, 5, 0.0, 0, &r, &err), QV_EINVAL);
}
