/* Robustness of the template engine: syntax errors carry line and column, random and truncated
 * templates never crash (ASan/UBSan run these), and runaway templates hit clear limits
 * (nesting depth, loop iterations, output size) instead of exhausting the machine. Also the
 * template sources: tokenizer_config.json with a string or a list of named templates, model
 * directories, bos/eos pick-up. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chat/chat.h"
#include "../test_util.h"

static int render_str(const char *src, const char *vars_json, char **out, qv_error *err) {
  qv_chat_template *t = NULL;
  *out = NULL;
  int rc = qv_chat_template_load_string(src, "test", &t, err);
  if (rc) return rc;
  cJSON *vars = vars_json ? cJSON_Parse(vars_json) : cJSON_CreateObject();
  rc = qv_chat_template_render(t, vars, out, NULL, err);
  cJSON_Delete(vars);
  qv_chat_template_destroy(t);
  return rc;
}

/* The shared folder holding data/chat-templates; skips the calling test when it is absent. */
static const char *shared_dir(char *buf, size_t n) {
  if (!test_shared_path(buf, n, "data/chat-templates")) cr_skip_test("real chat templates not found at %s", buf);
  test_shared_path(buf, n, ".");
  return buf;
}

Test(jinja_robust, syntax_error_line_and_column) {
  struct { const char *src; const char *where; } cases[] = {
      {"line one\n{{ 1 + }}", "line 2, column 8"},
      {"{% if x %}\n  ok\n", "line 2, column 5: unexpected end of template, expected 'endif'"},
      {"ab\n  {% for x in %}", "line 2, column 15"},
      {"{{ 'unterminated }}", "line 1, column 4"},
      {"{% endfor %}", "line 1, column 4"},
      {"x\ny\n{{ a | nosuch }}", "line 3, column 8"},
      {"{% foo %}", "line 1, column 4"},
      {"{{ a.}}", "line 1, column 6"},
      {"{# never closed", "line 1, column 1"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    qv_error err = {0};
    qv_chat_template *t = NULL;
    int rc = qv_chat_template_load_string(cases[i].src, NULL, &t, &err);
    cr_assert_eq(rc, QV_EFORMAT, "case %zu: rc %d", i, rc);
    cr_assert_null(t);
    cr_assert(strstr(err.msg, cases[i].where), "case %zu: '%s' lacks '%s'", i, err.msg, cases[i].where);
  }
}

Test(jinja_robust, raise_exception_is_distinct_error) {
  qv_error err = {0};
  char *out;
  int rc = render_str("a{{ raise_exception('Roles must alternate: ' ~ n) }}", "{\"n\": 3}", &out, &err);
  cr_assert_eq(rc, QV_ETEMPLATE);
  cr_assert_str_eq(err.msg, "Roles must alternate: 3");
  cr_assert_null(out);
}

Test(jinja_robust, loop_iteration_limit) {
  qv_error err = {0};
  char *out;
  int rc = render_str("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                      NULL, &out, &err);
  cr_assert_eq(rc, QV_ELIMIT, "%s", err.msg);
  cr_assert(strstr(err.msg, "loop iteration limit") || strstr(err.msg, "memory limit"), "%s", err.msg);
  rc = render_str("{{ range(100000000) | length }}", NULL, &out, &err);
  cr_assert_eq(rc, QV_ELIMIT, "%s", err.msg);
}

Test(jinja_robust, recursion_depth_limit) {
  qv_error err = {0};
  char *out;
  int rc = render_str("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", NULL, &out, &err);
  cr_assert_eq(rc, QV_ELIMIT, "%s", err.msg);
  cr_assert(strstr(err.msg, "depth"), "%s", err.msg);
}

Test(jinja_robust, branching_recursion_hits_step_limit) {
  /* 2^60 calls if unbounded: the statement budget stops it */
  qv_error err = {0};
  qv_chat_template *t = NULL;
  cr_assert_eq(qv_chat_template_load_string(
                   "{% macro f(n) %}{% if n < 60 %}{{ f(n + 1) }}{{ f(n + 1) }}{% endif %}{% endmacro %}{{ f(0) }}",
                   NULL, &t, &err), 0);
  qv_chat_limits lim = {.max_loop_iters = 10000};
  qv_chat_template_set_limits(t, &lim);
  char *out = NULL;
  int rc = qv_chat_template_render(t, NULL, &out, NULL, &err);
  cr_assert_eq(rc, QV_ELIMIT, "%s", err.msg);
  cr_assert(strstr(err.msg, "step limit"), "%s", err.msg);
  qv_chat_template_destroy(t);
}

Test(jinja_robust, output_size_limit) {
  qv_error err = {0};
  qv_chat_template *t = NULL;
  cr_assert_eq(qv_chat_template_load_string("{% for i in range(1000) %}{{ s }}{% endfor %}", NULL, &t, &err), 0);
  qv_chat_limits lim = {.max_output_bytes = 4096};
  qv_chat_template_set_limits(t, &lim);
  cJSON *vars = cJSON_Parse("{\"s\": \"0123456789\"}");
  char *out = NULL;
  int rc = qv_chat_template_render(t, vars, &out, NULL, &err);
  cr_assert_eq(rc, QV_ELIMIT, "%s", err.msg);
  cr_assert(strstr(err.msg, "output size"), "%s", err.msg);
  /* string doubling grows exponentially: must stop at the limit too */
  qv_chat_template_destroy(t);
  cr_assert_eq(qv_chat_template_load_string(
                   "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s | length }}",
                   NULL, &t, &err), 0);
  qv_chat_template_set_limits(t, &lim);
  rc = qv_chat_template_render(t, vars, &out, NULL, &err);
  cr_assert_eq(rc, QV_ELIMIT, "%s", err.msg);
  cJSON_Delete(vars);
  qv_chat_template_destroy(t);
}

Test(jinja_robust, deep_nesting_at_parse) {
  /* 10,000 nested parentheses / lists / ifs fail cleanly at load */
  size_t n = 10000;
  char *src = malloc(4 * n + 64);
  size_t k = 0;
  k += (size_t)sprintf(src + k, "{{ ");
  for (size_t i = 0; i < n; i++) src[k++] = '[';
  for (size_t i = 0; i < n; i++) src[k++] = ']';
  k += (size_t)sprintf(src + k, " }}");
  src[k] = 0;
  qv_error err = {0};
  qv_chat_template *t = NULL;
  cr_assert_eq(qv_chat_template_load_string(src, NULL, &t, &err), QV_EFORMAT);
  cr_assert(strstr(err.msg, "too deep"), "%s", err.msg);
  k = 0;
  for (size_t i = 0; i < 2000; i++) k += (size_t)sprintf(src + k, "{%% if 1 %%}");
  src[k] = 0;
  cr_assert_eq(qv_chat_template_load_string(src, NULL, &t, &err), QV_EFORMAT);
  k = 0;
  k += (size_t)sprintf(src + k, "{{ ");
  for (size_t i = 0; i < 5000; i++) k += (size_t)sprintf(src + k, "not ");
  k += (size_t)sprintf(src + k, "1 }}");
  cr_assert_eq(qv_chat_template_load_string(src, NULL, &t, &err), QV_EFORMAT);
  free(src);
}

Test(jinja_robust, deep_json_variables) {
  size_t n = 5000;
  char *js = malloc(2 * n + 32);
  size_t k = (size_t)sprintf(js, "{\"x\": ");
  for (size_t i = 0; i < n; i++) js[k++] = '[';
  for (size_t i = 0; i < n; i++) js[k++] = ']';
  js[k++] = '}';
  js[k] = 0;
  cJSON *vars = cJSON_Parse(js); /* cJSON itself caps nesting at 1000 */
  qv_error err = {0};
  qv_chat_template *t = NULL;
  cr_assert_eq(qv_chat_template_load_string("{{ x | tojson }}", NULL, &t, &err), 0);
  char *out = NULL;
  if (vars) {
    int rc = qv_chat_template_render(t, vars, &out, NULL, &err);
    cr_assert(rc == 0 || rc == QV_ELIMIT);
    free(out);
  }
  cJSON_Delete(vars);
  qv_chat_template_destroy(t);
  free(js);
}

/* Small budgets keep thousands of fuzz renders fast; the limits themselves are tested above. */
static const qv_chat_limits FUZZ_LIMITS = {.max_depth = 48, .max_loop_iters = 2000, .max_output_bytes = 1 << 16};

/* Deterministic xorshift so failures reproduce. */
static unsigned long long rng_state = 0x9E3779B97F4A7C15ull;
static unsigned rnd(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (unsigned)(rng_state >> 32);
}

static const char *VARS =
    "{\"messages\": [{\"role\": \"system\", \"content\": \"s\"}, {\"role\": \"user\", \"content\": \"héllo\"},"
    " {\"role\": \"assistant\", \"content\": null, \"tool_calls\": [{\"id\": \"abcdefghi\", \"function\": {\"name\": \"f\", \"arguments\": {\"a\": 1}}}]},"
    " {\"role\": \"tool\", \"tool_call_id\": \"abcdefghi\", \"content\": \"r\"}],"
    " \"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\", \"description\": \"d\", \"parameters\": {\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"integer\"}}}}}],"
    " \"add_generation_prompt\": true, \"bos_token\": \"<s>\", \"eos_token\": \"</s>\"}";

Test(jinja_robust, truncated_real_templates_never_crash) {
  char sh[1024], dir[1100], path[2300];
  snprintf(dir, sizeof dir, "%s/data/chat-templates", shared_dir(sh, sizeof sh));
  DIR *d = opendir(dir);
  cr_assert_not_null(d);
  cJSON *vars = cJSON_Parse(VARS);
  struct dirent *e;
  int n_tpl = 0, n_runs = 0, n_ok = 0;
  while ((e = readdir(d))) {
    if (!strstr(e->d_name, ".jinja")) continue;
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    char *src = test_slurp(path, NULL);
    cr_assert_not_null(src);
    size_t len = strlen(src);
    n_tpl++;
    /* every 7th prefix, plus random single-byte mutations */
    for (size_t cut = 0; cut <= len; cut += 7) {
      char saved = src[cut];
      src[cut] = 0;
      qv_error err = {0};
      qv_chat_template *t = NULL;
      if (qv_chat_template_load_string(src, NULL, &t, &err) == 0) {
        qv_chat_template_set_limits(t, &FUZZ_LIMITS);
        char *out = NULL;
        if (qv_chat_template_render(t, vars, &out, NULL, &err) == 0) n_ok++;
        free(out);
        qv_chat_template_destroy(t);
      } else {
        cr_assert_eq(err.code, QV_EFORMAT, "%s cut %zu: %s", e->d_name, cut, err.msg);
      }
      src[cut] = saved;
      n_runs++;
    }
    static const char junk[] = "{}%#-+|()[]'\"\\.,:~ \nxa0";
    for (int m = 0; m < 150; m++) {
      size_t pos = rnd() % len;
      char saved = src[pos];
      src[pos] = junk[rnd() % (sizeof junk - 1)];
      qv_error err = {0};
      qv_chat_template *t = NULL;
      if (qv_chat_template_load_string(src, NULL, &t, &err) == 0) {
        qv_chat_template_set_limits(t, &FUZZ_LIMITS);
        char *out = NULL;
        qv_chat_template_render(t, vars, &out, NULL, &err);
        free(out);
        qv_chat_template_destroy(t);
      }
      src[pos] = saved;
      n_runs++;
    }
    free(src);
  }
  closedir(d);
  cJSON_Delete(vars);
  cr_assert_geq(n_tpl, 8);
  cr_assert_gt(n_ok, 0);
  cr_assert_gt(n_runs, 1000);
}

Test(jinja_robust, random_token_soup_never_crashes) {
  static const char *const pieces[] = {
      "{{", "}}", "{%", "%}", "{#", "#}", "{%-", "-%}", "if", "for", "in", "else", "endif", "endfor",
      "set", "=", "x", "messages", "loop.index", "(", ")", "[", "]", "{", "}", ",", ":", "|", "trim",
      "length", "is", "not", "defined", "'s'", "1", "2.5", "+", "-", "*", "//", "%", "~", ".",
      "macro", "endmacro", "raw", "endraw", "namespace(", "ns.a", " ", "\n", "and", "or", "none",
      "tojson", "[::-1]", "items", "call", "endcall", "caller()", "filter", "endfilter", "upper",
      "range(", "10", ")", "\"", "\\", "é", "{{ x }}", "{% if x %}", "{% endif %}"};
  size_t np = sizeof pieces / sizeof pieces[0];
  cJSON *vars = cJSON_Parse(VARS);
  char src[512];
  int parsed = 0;
  for (int i = 0; i < 4000; i++) {
    size_t k = 0;
    int n = 1 + (int)(rnd() % 24);
    for (int j = 0; j < n; j++) {
      const char *p = pieces[rnd() % np];
      size_t l = strlen(p);
      if (k + l + 1 >= sizeof src) break;
      memcpy(src + k, p, l);
      k += l;
    }
    src[k] = 0;
    qv_error err = {0};
    qv_chat_template *t = NULL;
    int rc = qv_chat_template_load_string(src, NULL, &t, &err);
    if (rc == 0) {
      parsed++;
      qv_chat_template_set_limits(t, &FUZZ_LIMITS);
      char *out = NULL;
      rc = qv_chat_template_render(t, vars, &out, NULL, &err);
      cr_assert(rc == 0 || rc == QV_ETEMPLATE || rc == QV_ELIMIT, "rc %d for %s: %s", rc, src, err.msg);
      free(out);
      qv_chat_template_destroy(t);
    } else {
      cr_assert_eq(rc, QV_EFORMAT, "rc %d for %s", rc, src);
    }
  }
  cJSON_Delete(vars);
  cr_assert_gt(parsed, 100);
}

static void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  cr_assert_not_null(f);
  fputs(text, f);
  fclose(f);
}

Test(jinja_robust, config_sources_and_named_templates) {
  char dir[] = "/tmp/qv-chat-XXXXXX";
  cr_assert_not_null(mkdtemp(dir));
  char path[256];
  snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
  write_file(path,
             "{\"bos_token\": {\"content\": \"<B>\"}, \"eos_token\": \"<E>\", \"chat_template\": ["
             "{\"name\": \"default\", \"template\": \"D{{ messages | length }}\"},"
             "{\"name\": \"tool_use\", \"template\": \"T{{ tools | length }}\"}]}");
  qv_error err = {0};
  qv_chat_template *t = NULL;
  cr_assert_eq(qv_chat_template_load_path(dir, &t, &err), 0, "%s", err.msg);
  cr_assert_str_eq(qv_chat_template_bos(t), "<B>");
  cr_assert_str_eq(qv_chat_template_eos(t), "<E>");
  char *out = NULL;
  cJSON *v1 = cJSON_Parse("{\"messages\": [1, 2, 3]}");
  cJSON *v2 = cJSON_Parse("{\"messages\": [], \"tools\": [{}, {}]}");
  cJSON *v3 = cJSON_Parse("{\"messages\": [], \"tools\": []}");
  cr_assert_eq(qv_chat_template_render(t, v1, &out, NULL, &err), 0);
  cr_assert_str_eq(out, "D3");
  free(out);
  cr_assert_eq(qv_chat_template_render(t, v2, &out, NULL, &err), 0);
  cr_assert_str_eq(out, "T2");
  free(out);
  cr_assert_eq(qv_chat_template_render(t, v3, &out, NULL, &err), 0);
  cr_assert_str_eq(out, "D0");
  free(out);
  qv_chat_template_destroy(t);
  /* chat_template.jinja wins over tokenizer_config.json */
  snprintf(path, sizeof path, "%s/chat_template.jinja", dir);
  write_file(path, "J{{ bos_token }}\n");
  cr_assert_eq(qv_chat_template_load_path(dir, &t, &err), 0, "%s", err.msg);
  cr_assert_eq(qv_chat_template_render(t, v1, &out, NULL, &err), 0);
  cr_assert_str_eq(out, "J"); /* trailing newline dropped as jinja2 does; bos undefined here */
  cr_assert_str_eq(qv_chat_template_bos(t), "<B>");
  free(out);
  qv_chat_template_destroy(t);
  cr_assert_eq(qv_chat_template_load_path(path, &t, &err), 0);
  qv_chat_template_destroy(t);
  /* errors: syntax error inside a named template, bad JSON, missing file */
  snprintf(path, sizeof path, "%s/bad.json", dir);
  write_file(path, "{\"chat_template\": [{\"name\": \"default\", \"template\": \"{% if %}\"}]}");
  cr_assert_eq(qv_chat_template_load_path(path, &t, &err), QV_EFORMAT);
  cr_assert(strstr(err.msg, "line 1"), "%s", err.msg);
  write_file(path, "{not json");
  cr_assert_eq(qv_chat_template_load_path(path, &t, &err), QV_EFORMAT);
  write_file(path, "{\"chat_template\": 5}");
  cr_assert_eq(qv_chat_template_load_path(path, &t, &err), QV_EFORMAT);
  cr_assert_eq(qv_chat_template_load_path("/nonexistent/x.jinja", &t, &err), QV_ENOTFOUND);
  cJSON_Delete(v1);
  cJSON_Delete(v2);
  cJSON_Delete(v3);
  unlink(path);
  snprintf(path, sizeof path, "%s/chat_template.jinja", dir);
  unlink(path);
  snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
  unlink(path);
  rmdir(dir);
}

Test(jinja_robust, render_rejects_non_object_vars) {
  qv_error err = {0};
  qv_chat_template *t = NULL;
  cr_assert_eq(qv_chat_template_load_string("x", NULL, &t, &err), 0);
  cJSON *arr = cJSON_Parse("[1]");
  char *out = NULL;
  cr_assert_eq(qv_chat_template_render(t, arr, &out, NULL, &err), QV_EINVAL);
  cJSON_Delete(arr);
  cr_assert_eq(qv_chat_template_render(t, NULL, &out, NULL, &err), 0);
  cr_assert_str_eq(out, "x");
  free(out);
  qv_chat_template_destroy(t);
}

Test(jinja_robust, tool_format_detection) {
  char sh[1024], path[1300];
  struct { const char *file; qv_chat_tool_format fmt; } cases[] = {
      {"Qwen-Qwen2.5-7B-Instruct.jinja", QV_CHAT_TOOLS_HERMES},
      {"NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja", QV_CHAT_TOOLS_HERMES},
      {"meta-llama-Llama-3.1-8B-Instruct.jinja", QV_CHAT_TOOLS_LLAMA3},
      {"mistralai-Mistral-Nemo-Instruct-2407.jinja", QV_CHAT_TOOLS_MISTRAL},
      {"google-gemma-2-2b-it.jinja", QV_CHAT_TOOLS_NONE},
  };
  shared_dir(sh, sizeof sh);
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    snprintf(path, sizeof path, "%s/data/chat-templates/%s", sh, cases[i].file);
    qv_error err = {0};
    qv_chat_template *t = NULL;
    cr_assert_eq(qv_chat_template_load_path(path, &t, &err), 0, "%s", err.msg);
    cr_assert_eq(qv_chat_tool_format_detect(t), cases[i].fmt, "%s", cases[i].file);
    qv_chat_template_destroy(t);
  }
}

Test(jinja_robust, large_conversation_and_wide_objects) {
  /* 5,000 messages through a real template, and a tool schema with 50,000 properties: both
   * render (no quadratic blow-up), with output sizes that follow from the input. */
  char sh[1024], path[1300];
  snprintf(path, sizeof path, "%s/data/chat-templates/Qwen-Qwen2.5-7B-Instruct.jinja", shared_dir(sh, sizeof sh));
  qv_error err = {0};
  qv_chat_template *t = NULL;
  cr_assert_eq(qv_chat_template_load_path(path, &t, &err), 0, "%s", err.msg);
  cJSON *vars = cJSON_CreateObject();
  cJSON *msgs = cJSON_AddArrayToObject(vars, "messages");
  for (int i = 0; i < 5000; i++) {
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "role", i % 2 ? "assistant" : "user");
    char text[32];
    snprintf(text, sizeof text, "message %d", i);
    cJSON_AddStringToObject(m, "content", text);
    cJSON_AddItemToArray(msgs, m);
  }
  cJSON *tools = cJSON_AddArrayToObject(vars, "tools");
  cJSON *tool = cJSON_CreateObject();
  cJSON *props = cJSON_CreateObject();
  for (int i = 0; i < 50000; i++) {
    char key[32];
    snprintf(key, sizeof key, "p%d", i);
    cJSON_AddNumberToObject(props, key, i);
  }
  cJSON_AddItemToObject(tool, "properties", props);
  cJSON_AddItemToArray(tools, tool);
  cJSON_AddBoolToObject(vars, "add_generation_prompt", 1);
  char *out = NULL;
  size_t n = 0;
  cr_assert_eq(qv_chat_template_render(t, vars, &out, &n, &err), 0, "%s", err.msg);
  cr_assert(strstr(out, "message 4999<|im_end|>\n<|im_start|>assistant\n"));
  cr_assert(strstr(out, "\"p49999\": 49999}"));
  cr_assert_gt(n, 5000 * 30);
  free(out);
  cJSON_Delete(vars);
  qv_chat_template_destroy(t);
}

Test(jinja_robust, long_chains_and_deep_values_hit_limits) {
  /* 30,000-term operator and filter chains parse (iteratively) but would recurse that deep when
   * evaluated; a loop can build a list nested 100,000 deep. All must end in QV_ELIMIT. */
  size_t n = 30000;
  char *src = malloc(8 * n + 64);
  size_t k = (size_t)sprintf(src, "{{ 1");
  for (size_t i = 0; i < n; i++) k += (size_t)sprintf(src + k, " + 1");
  sprintf(src + k, " }}");
  char *out = NULL;
  qv_error err = {0};
  cr_assert_eq(render_str(src, NULL, &out, &err), QV_ELIMIT, "%s", err.msg);
  k = (size_t)sprintf(src, "{{ 'x'");
  for (size_t i = 0; i < n; i++) k += (size_t)sprintf(src + k, "|trim");
  sprintf(src + k, " }}");
  cr_assert_eq(render_str(src, NULL, &out, &err), QV_ELIMIT, "%s", err.msg);
  free(src);
  const char *nest =
      "{% set ns = namespace(x=[]) %}{% for i in range(100000) %}{% set ns.x = [ns.x] %}{% endfor %}";
  char buf[256];
  snprintf(buf, sizeof buf, "%s{{ ns.x }}", nest);
  cr_assert_eq(render_str(buf, NULL, &out, &err), QV_ELIMIT, "%s", err.msg);
  snprintf(buf, sizeof buf, "%s{{ ns.x | tojson }}", nest);
  cr_assert_eq(render_str(buf, NULL, &out, &err), QV_ELIMIT, "%s", err.msg);
  snprintf(buf, sizeof buf, "%s{{ ns.x == ns.x }}|{{ [ns.x] | sort | length }}", nest);
  int rc = render_str(buf, NULL, &out, &err);
  cr_assert(rc == 0 || rc == QV_ETEMPLATE || rc == QV_ELIMIT, "%d %s", rc, err.msg);
  free(out);
  /* within the limit, a moderately long chain is fine */
  cr_assert_eq(render_str("{{ 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1 }}", NULL, &out, &err), 0);
  cr_assert_str_eq(out, "10");
  free(out);
}
