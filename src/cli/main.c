/* quiver: the command-line entry point; dispatches to one subcommand. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

static const struct {
  const char *name;
  int (*fn)(int, char **);
  const char *help;
} commands[] = {
    {"serve", cli_serve, "serve models over an OpenAI-compatible HTTP API"},
    {"generate", cli_generate, "generate text offline from prompts"},
    {"tokenize", cli_tokenize, "encode text to token ids, or decode ids to text"},
    {"info", cli_info, "describe a model: architecture, parameters, memory"},
    {"chat-template", cli_chat_template, "render a chat template for a conversation"},
    {"bench", cli_bench, "offline engine throughput benchmark"},
    {"constrain", cli_constrain, "random-walk or check a decoding constraint over a tokenizer"},
    {"version", cli_version, "print the version, git commit, build and backends"},
    {"logits", cli_logits, "print the logits of a prompt's rows (one prefill, CPU)"},
};

static void usage(FILE *f) {
  fprintf(f, "usage: quiver <command> [options]\n\ncommands:\n");
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    fprintf(f, "  %-14s %s\n", commands[i].name, commands[i].help);
  fprintf(f, "\n`quiver <command> --help` describes each command's options.\n");
}

int main(int argc, char **argv) {
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
    usage(stdout);
    return 0;
  }
  if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V")) return cli_version(1, argv + 1);
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    if (!strcmp(argv[1], commands[i].name)) return commands[i].fn(argc - 1, argv + 1);
  fprintf(stderr, "quiver: unknown command '%s'\n\n", argv[1]);
  usage(stderr);
  return 2;
}
