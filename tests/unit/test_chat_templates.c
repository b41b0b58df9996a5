/* Byte-exact rendering of every real template in $QV_SHARED_DIR/data/chat-templates over the
 * committed conversation corpus (tests/fixtures/chat), against the renders Python's jinja2
 * produced under transformers' settings (scripts/make-chat-fixtures). Where jinja2 raised, we
 * must fail too: with the same message for raise_exception (TemplateError), with any template
 * error or limit for Python-level errors (TypeError, RecursionError, UndefinedError). */
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat/chat.h"
#include "../test_util.h"

static void paths(char *shared, char *fixtures, size_t n) {
  const char *src = getenv("QV_SOURCE_DIR");
  const char *sh = getenv("QV_SHARED_DIR");
  if (sh) snprintf(shared, n, "%s", sh);
  else snprintf(shared, n, "%s/../shared", src ? src : ".");
  snprintf(fixtures, n, "%s/tests/fixtures/chat", src ? src : ".");
}

/* Prints where two renders first differ. */
static void show_diff(const char *tpl, const char *id, const char *want, const char *got) {
  size_t i = 0;
  while (want[i] && want[i] == got[i]) i++;
  size_t from = i > 40 ? i - 40 : 0;
  fprintf(stderr, "MISMATCH %s / %s at byte %zu\n  want: %.80s\n  got:  %.80s\n", tpl, id, i,
          want + from, got + from);
}

Test(chat_templates, corpus_matches_jinja2_byte_for_byte) {
  char shared[1024], fixtures[1024], path[2048];
  paths(shared, fixtures, sizeof shared);
  snprintf(path, sizeof path, "%s/conversations.json", fixtures);
  char *text = test_slurp(path, NULL);
  cr_assert_not_null(text, "missing %s", path);
  cJSON *convs = cJSON_Parse(text);
  free(text);
  cr_assert(cJSON_IsArray(convs));
  cr_assert_geq(cJSON_GetArraySize(convs), 30);

  char tdir[1100];
  snprintf(tdir, sizeof tdir, "%s/data/chat-templates", shared);
  if (access(tdir, F_OK) != 0) {
    cJSON_Delete(convs);
    cr_skip_test("real chat templates not found at %s", tdir);
  }
  DIR *d = opendir(tdir);
  cr_assert_not_null(d, "missing %s", tdir);
  int n_templates = 0, n_checked = 0, n_renders = 0, n_failed = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    size_t len = strlen(e->d_name);
    if (len < 7 || strcmp(e->d_name + len - 6, ".jinja")) continue;
    n_templates++;
    snprintf(path, sizeof path, "%s/%s", tdir, e->d_name);
    qv_error err = {0};
    qv_chat_template *t = NULL;
    cr_assert_eq(qv_chat_template_load_path(path, &t, &err), 0, "%s: %s", e->d_name, err.msg);
    snprintf(path, sizeof path, "%s/expected/%.*s.json", fixtures, (int)(len - 6), e->d_name);
    char *etext = test_slurp(path, NULL);
    cr_assert_not_null(etext, "missing %s", path);
    cJSON *expected = cJSON_Parse(etext);
    free(etext);
    cr_assert_not_null(expected);
    const cJSON *c;
    cJSON_ArrayForEach(c, convs) {
      const char *id = cJSON_GetObjectItem(c, "id")->valuestring;
      const cJSON *exp = cJSON_GetObjectItem(expected, id);
      cr_assert_not_null(exp, "%s: no expectation for %s", e->d_name, id);
      char *out = NULL;
      size_t out_len = 0;
      int rc = qv_chat_template_render(t, cJSON_GetObjectItem(c, "vars"), &out, &out_len, &err);
      const cJSON *want = cJSON_GetObjectItem(exp, "text");
      n_checked++;
      if (want) {
        n_renders++;
        if (rc != 0) {
          fprintf(stderr, "FAILED %s / %s: %s\n", e->d_name, id, err.msg);
          n_failed++;
        } else if (out_len != strlen(want->valuestring) || strcmp(out, want->valuestring)) {
          show_diff(e->d_name, id, want->valuestring, out);
          n_failed++;
        }
      } else {
        const char *type = cJSON_GetObjectItem(exp, "error_type")->valuestring;
        const char *msg = cJSON_GetObjectItem(exp, "error")->valuestring;
        if (rc == 0) {
          fprintf(stderr, "SHOULD FAIL %s / %s (%s: %s)\n", e->d_name, id, type, msg);
          n_failed++;
        } else if (!strcmp(type, "TemplateError") && (rc != QV_ETEMPLATE || strcmp(err.msg, msg))) {
          fprintf(stderr, "WRONG ERROR %s / %s: want '%s', got '%s'\n", e->d_name, id, msg, err.msg);
          n_failed++;
        } else if (rc != QV_ETEMPLATE && rc != QV_ELIMIT) {
          fprintf(stderr, "WRONG CODE %s / %s: %d %s\n", e->d_name, id, rc, err.msg);
          n_failed++;
        }
      }
      free(out);
    }
    cJSON_Delete(expected);
    qv_chat_template_destroy(t);
  }
  closedir(d);
  cJSON_Delete(convs);
  fprintf(stderr, "chat corpus: %d templates, %d cases, %d byte-exact renders expected, %d failed\n",
          n_templates, n_checked, n_renders, n_failed);
  cr_assert_geq(n_templates, 8);
  cr_assert_eq(n_failed, 0, "%d of %d template/conversation cases differ from jinja2", n_failed, n_checked);
}
