/* quiver generate: placeholder until the model code lands. */
#include <stdio.h>

#include "cli/cli.h"

int cli_generate(int argc, char **argv) {
  fprintf(stderr, "quiver generate: not available in this build yet\n");
  return 2;
}
