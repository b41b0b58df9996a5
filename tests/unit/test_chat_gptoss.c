/* gpt-oss's real Harmony chat template (tests/fixtures/chat/templates, kept in the repository)
 * rendered by quiver's template engine over the project's conversation corpus, byte for byte
 * against Python jinja2 under transformers' settings (expected/openai-gpt-oss-120b.json, written
 * by scripts/make-chat-fixtures). The template prints strftime_now("%Y-%m-%d"), so the 10
 * characters after "Current date: " are masked on both sides. Where jinja2 raised, quiver must
 * fail: with the same message for raise_exception. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat/chat.h"
#include "../test_util.h"

#define TEMPLATE "openai-gpt-oss-120b"

/* Overwrites every date after "Current date: " with YYYY-MM-DD. */
static void mask_date(char *s) {
  static const char key[] = "Current date: ";
  for (char *p = strstr(s, key); p; p = strstr(p + 1, key)) {
    char *d = p + sizeof key - 1;
    for (int i = 0; i < 10 && d[i]; i++) d[i] = "YYYY-MM-DD"[i];
  }
}

Test(chat_gptoss, harmony_template_matches_jinja2) {
  const char *src = getenv("QV_SOURCE_DIR");
  char path[2048];
  snprintf(path, sizeof path, "%s/tests/fixtures/chat/conversations.json", src ? src : ".");
  char *text = test_slurp(path, NULL);
  cr_assert_not_null(text, "missing %s", path);
  cJSON *convs = cJSON_Parse(text);
  free(text);
  snprintf(path, sizeof path, "%s/tests/fixtures/chat/expected/" TEMPLATE ".json", src ? src : ".");
  text = test_slurp(path, NULL);
  cr_assert_not_null(text, "missing %s", path);
  cJSON *expected = cJSON_Parse(text);
  free(text);
  cr_assert(cJSON_IsArray(convs) && cJSON_IsObject(expected));
  snprintf(path, sizeof path, "%s/tests/fixtures/chat/templates/" TEMPLATE ".jinja", src ? src : ".");
  qv_error err = {0};
  qv_chat_template *t = NULL;
  cr_assert_eq(qv_chat_template_load_path(path, &t, &err), 0, "%s: %s", path, err.msg);
  int n = 0, renders = 0, failed = 0;
  const cJSON *c;
  cJSON_ArrayForEach(c, convs) {
    const char *id = cJSON_GetObjectItem(c, "id")->valuestring;
    const cJSON *exp = cJSON_GetObjectItem(expected, id);
    cr_assert_not_null(exp, "no expectation for %s", id);
    char *out = NULL;
    size_t out_len = 0;
    int rc = qv_chat_template_render(t, cJSON_GetObjectItem(c, "vars"), &out, &out_len, &err);
    const cJSON *want = cJSON_GetObjectItem(exp, "text");
    n++;
    if (want) {
      renders++;
      char *w = strdup(want->valuestring);
      cr_assert_not_null(w);
      if (rc) {
        fprintf(stderr, "FAILED %s: %s\n", id, err.msg);
        failed++;
      } else {
        mask_date(w);
        mask_date(out);
        if (strcmp(w, out)) {
          size_t i = 0;
          while (w[i] && w[i] == out[i]) i++;
          fprintf(stderr, "MISMATCH %s at byte %zu\n  want: %.80s\n  got:  %.80s\n", id, i, w + (i > 40 ? i - 40 : 0),
                  out + (i > 40 ? i - 40 : 0));
          failed++;
        }
      }
      free(w);
    } else {
      const char *type = cJSON_GetObjectItem(exp, "error_type")->valuestring;
      const char *msg = cJSON_GetObjectItem(exp, "error")->valuestring;
      if (rc == 0 || (!strcmp(type, "TemplateError") && strcmp(err.msg, msg)) ||
          (rc != QV_ETEMPLATE && rc != QV_ELIMIT)) {
        fprintf(stderr, "WRONG OUTCOME %s: jinja2 raised %s '%s'; quiver rc %d '%s'\n", id, type, msg, rc,
                rc ? err.msg : "");
        failed++;
      }
    }
    free(out);
  }
  fprintf(stderr, "gpt-oss template: %d conversations, %d renders, %d failed\n", n, renders, failed);
  cr_assert_geq(renders, 20);
  cr_assert_eq(failed, 0, "%d of %d conversations differ from jinja2", failed, n);
  qv_chat_template_destroy(t);
  cJSON_Delete(expected);
  cJSON_Delete(convs);
}
