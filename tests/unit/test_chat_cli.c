/* `quiver chat-template`: prints exactly the render (no added newline) and maps failures to exit
 * codes (1 template error, 2 syntax/usage/input error). */
#include <criterion/criterion.h>
#include <criterion/redirect.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"

static void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  cr_assert_not_null(f);
  fputs(text, f);
  fclose(f);
}

static int run(const char *tpl, const char *input) {
  char *argv[] = {"chat-template", "--template", (char *)tpl, "--input", (char *)input, NULL};
  return cli_chat_template(5, argv);
}

Test(chat_cli, prints_render_exactly, .init = cr_redirect_stdout) {
  char tpl[] = "/tmp/qv-cli-XXXXXX";
  int fd = mkstemp(tpl);
  cr_assert_geq(fd, 0);
  close(fd);
  write_file(tpl, "{%- for m in messages %}<{{ m.role }}>{{ m.content | trim }}\n{% endfor %}"
                  "{%- if add_generation_prompt %}<assistant>{% endif %}\n");
  char in[] = "/tmp/qv-cli-in-XXXXXX";
  fd = mkstemp(in);
  close(fd);
  write_file(in, "{\"messages\": [{\"role\": \"user\", \"content\": \" héllo \"}], \"add_generation_prompt\": true}");
  cr_assert_eq(run(tpl, in), 0);
  fflush(stdout);
  cr_assert_stdout_eq_str("<user>héllo\n<assistant>");
  unlink(tpl);
  unlink(in);
}

Test(chat_cli, exit_codes) {
  char tpl[] = "/tmp/qv-cli-XXXXXX";
  int fd = mkstemp(tpl);
  close(fd);
  char in[] = "/tmp/qv-cli-in-XXXXXX";
  fd = mkstemp(in);
  close(fd);
  write_file(in, "{\"messages\": []}");
  write_file(tpl, "{{ raise_exception('no messages') if not messages }}");
  cr_assert_eq(run(tpl, in), 1);
  write_file(tpl, "{% if %}");
  cr_assert_eq(run(tpl, in), 2);
  write_file(tpl, "ok");
  write_file(in, "[1, 2]");
  cr_assert_eq(run(tpl, in), 2);
  cr_assert_eq(run("/nonexistent.jinja", in), 2);
  char *argv[] = {"chat-template", "--template", tpl, NULL};
  cr_assert_eq(cli_chat_template(3, argv), 2);
  unlink(tpl);
  unlink(in);
}
