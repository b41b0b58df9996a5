/* quiver chat-template: renders a model's chat template offline, so a prompt can be checked
 * byte for byte against Python's jinja2 (see scripts/make-chat-fixtures).
 *
 *   quiver chat-template --template PATH --input FILE.json
 *
 * PATH is a .jinja file, a tokenizer_config.json or a model directory. FILE holds the template
 * variables ({"messages": [...], "tools": [...], "add_generation_prompt": true, ...}). The prompt
 * is written to stdout exactly (no newline added). Exit status: 0 ok, 1 template error, 2 usage
 * or input error. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "chat/chat.h"
#include "cli/cli.h"

static void usage(void) {
  fprintf(stderr,
          "usage: quiver chat-template --template PATH --input FILE.json\n"
          "  PATH: a .jinja file, a tokenizer_config.json or a model directory\n"
          "  FILE: {\"messages\": [...], \"tools\": [...], \"add_generation_prompt\": bool,\n"
          "         \"bos_token\": \"...\", \"eos_token\": \"...\", ...extra variables}\n"
          "  --tool-format: also print which tool-call format the template implies (stderr)\n");
}

static char *slurp(const char *path, qv_error *err) {
  FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
  if (!f) {
    qv_error_set(err, QV_EIO, "cannot open %s", path);
    return NULL;
  }
  size_t n = 0, cap = 4096;
  char *buf = malloc(cap);
  while (buf) {
    if (n + 4096 + 1 > cap) {
      char *nb = realloc(buf, cap * 2);
      if (!nb) {
        free(buf);
        buf = NULL;
        break;
      }
      buf = nb;
      cap *= 2;
    }
    size_t k = fread(buf + n, 1, 4096, f);
    n += k;
    if (k < 4096) break;
    if (n > (64u << 20)) {
      free(buf);
      buf = NULL;
      qv_error_set(err, QV_ELIMIT, "%s: larger than 64 MiB", path);
      break;
    }
  }
  if (f != stdin) fclose(f);
  if (buf) buf[n] = 0;
  else if (!err->code) qv_error_set(err, QV_ENOMEM, "out of memory");
  return buf;
}

int cli_chat_template(int argc, char **argv) {
  const char *tpl_path = NULL, *input_path = NULL;
  int show_format = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--template") && i + 1 < argc) tpl_path = argv[++i];
    else if (!strcmp(argv[i], "--input") && i + 1 < argc) input_path = argv[++i];
    else if (!strcmp(argv[i], "--tool-format")) show_format = 1;
    else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
      usage();
      return 0;
    } else {
      fprintf(stderr, "quiver chat-template: unknown argument '%s'\n", argv[i]);
      usage();
      return 2;
    }
  }
  if (!tpl_path || !input_path) {
    usage();
    return 2;
  }
  qv_error err = {0};
  qv_chat_template *t = NULL;
  if (qv_chat_template_load_path(tpl_path, &t, &err)) {
    fprintf(stderr, "quiver chat-template: %s\n", err.msg);
    return 2;
  }
  char *text = slurp(input_path, &err);
  if (!text) {
    fprintf(stderr, "quiver chat-template: %s\n", err.msg);
    qv_chat_template_destroy(t);
    return 2;
  }
  cJSON *vars = cJSON_Parse(text);
  free(text);
  if (!cJSON_IsObject(vars)) {
    fprintf(stderr, "quiver chat-template: %s is not a JSON object\n", input_path);
    cJSON_Delete(vars);
    qv_chat_template_destroy(t);
    return 2;
  }
  if (show_format)
    fprintf(stderr, "tool-call format: %s\n", qv_chat_tool_format_name(qv_chat_tool_format_detect(t)));
  char *out = NULL;
  size_t n = 0;
  int rc = qv_chat_template_render(t, vars, &out, &n, &err);
  int status = 0;
  if (rc) {
    fprintf(stderr, "quiver chat-template: %s\n", err.msg);
    status = rc == QV_ETEMPLATE || rc == QV_ELIMIT ? 1 : 2;
  } else if (fwrite(out, 1, n, stdout) != n) {
    status = 2;
  }
  free(out);
  cJSON_Delete(vars);
  qv_chat_template_destroy(t);
  return status;
}
