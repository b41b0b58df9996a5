/* NUL characters carried as the marker C0 80 (src/server/json_nul.h): the conversions at each
 * boundary, and the request parser keeping NULs in text while refusing them in names. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "server/json_nul.h"
#include "server/oai_req.h"

/* \u0000 escapes become the marker; an escaped backslash before u0000 is text, not a NUL. */
Test(json_nul, unescape) {
  char *out = NULL;
  size_t n = 0;
  cr_assert_eq(jnul_unescape("{\"a\":\"x\"}", 9, &out, &n), 0);
  cr_assert_null(out, "no escape: the body is used as it is");
  const char *b = "[\"a\\u0000b\",\"\\\\u0000\",\"\\u0000\\u0000\",\"\\u00001\"]";
  cr_assert_eq(jnul_unescape(b, strlen(b), &out, &n), 0);
  const char want[] = "[\"a\xC0\x80" "b\",\"\\\\u0000\",\"\xC0\x80\xC0\x80\",\"\xC0\x80" "1\"]";
  cr_assert_eq(n, sizeof want - 1);
  cr_assert_eq(memcmp(out, want, n), 0, "%s", out);
  cr_assert_eq(out[n], '\0');
  free(out);
  /* A truncated escape at the end is left for the JSON parser to refuse. */
  cr_assert_eq(jnul_unescape("\"\\u000", 6, &out, &n), 0);
  cr_assert_null(out);
}

/* decode / encode / bytes round trip; wire writes \u0000; jnul_string keeps NULs as markers. */
Test(json_nul, round_trip) {
  const char bytes[] = {'a', 0, 'b', 0, 0, 'c'};
  size_t n = 0;
  char *t = jnul_encode(bytes, sizeof bytes, &n);
  cr_assert_not_null(t);
  cr_assert_eq(n, 9);
  cr_assert_eq(strlen(t), 9, "no NUL byte inside");
  cr_assert(jnul_has(t, n));
  cr_assert(!jnul_has("a\xC0" "b\x80", 4), "C0 and 80 apart are no marker");
  cr_assert_eq(jnul_bytes(t, n), sizeof bytes);
  char *j = NULL;
  cJSON *s = jnul_string(bytes, sizeof bytes);
  cr_assert_str_eq(s->valuestring, t);
  j = cJSON_PrintUnformatted(s);
  size_t wl = 0;
  int oom = 0;
  char *w = jnul_wire(j, strlen(j), &wl, &oom);
  cr_assert_not_null(w);
  cr_assert_str_eq(w, "\"a\\u0000b\\u0000\\u0000c\"");
  cr_assert_eq(wl, strlen(w));
  cr_assert_null(jnul_wire("{\"a\":\"\xC3\xA9\"}", 10, &wl, &oom), "nothing to write");
  cr_assert(!oom);
  cr_assert_eq(jnul_decode(t, n), sizeof bytes);
  cr_assert_eq(memcmp(t, bytes, sizeof bytes), 0);
  free(w);
  free(j);
  free(t);
  cJSON_Delete(s);
}

/* The parser keeps NULs of text as markers (prompt bytes include them; messages too), and
 * refuses a raw NUL byte and the marker sent as raw bytes (invalid UTF-8). */
Test(json_nul, request_parse) {
  oai_request r;
  qv_error err = {0};
  const char *b = "{\"prompt\":\"Once upon\\u0000 a time\"}";
  cr_assert_eq(oai_request_parse(OAI_COMPLETION, b, strlen(b), &r, &err), 0, "%s", err.msg);
  cr_assert_eq(r.prompts[0].text_len, 18);
  cr_assert_eq(memcmp(r.prompts[0].text, "Once upon\xC0\x80 a time", 18), 0);
  oai_request_free(&r);
  b = "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"\\u0000\"},"
      "{\"type\":\"text\",\"text\":\"x\"}]}]}";
  cr_assert_eq(oai_request_parse(OAI_CHAT, b, strlen(b), &r, &err), 0, "%s", err.msg);
  const cJSON *c = cJSON_GetObjectItem(cJSON_GetArrayItem(r.messages, 0), "content");
  cr_assert_str_eq(c->valuestring, "\xC0\x80x");
  oai_request_free(&r);
  const char raw[] = "{\"prompt\":\"a\0b\"}";
  cr_assert_eq(oai_request_parse(OAI_COMPLETION, raw, sizeof raw - 1, &r, &err), QV_EFORMAT);
  cr_assert(strstr(err.msg, "NUL"), "%s", err.msg);
  oai_request_free(&r);
  b = "{\"prompt\":\"\xC0\x80\"}";
  cr_assert_eq(oai_request_parse(OAI_COMPLETION, b, strlen(b), &r, &err), QV_EFORMAT);
  oai_request_free(&r);
}
