/* quiver tokenize: placeholder until its subsystem lands (the command reports that plainly). */
#include <stdio.h>

#include "cli/cli.h"

int cli_tokenize(int argc, char **argv) {
  fprintf(stderr, "quiver tokenize: not available in this build yet\n");
  return 2;
}
