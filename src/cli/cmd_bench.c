/* quiver bench: placeholder until its subsystem lands (the command reports that plainly). */
#include <stdio.h>

#include "cli/cli.h"

int cli_bench(int argc, char **argv) {
  fprintf(stderr, "quiver bench: not available in this build yet\n");
  return 2;
}
