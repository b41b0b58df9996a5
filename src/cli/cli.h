/* Subcommands of the `quiver` program. Each takes the arguments after its name (argv[0] is the
 * subcommand) and returns the process exit status. */
#ifndef QV_CLI_H
#define QV_CLI_H

int cli_serve(int argc, char **argv);
int cli_generate(int argc, char **argv);
int cli_tokenize(int argc, char **argv);
int cli_info(int argc, char **argv);
int cli_chat_template(int argc, char **argv);
int cli_bench(int argc, char **argv);
int cli_constrain(int argc, char **argv);
int cli_version(int argc, char **argv);
int cli_logits(int argc, char **argv);

#endif
