/* quiver info: placeholder until the model code lands. */
#include <stdio.h>

#include "cli/cli.h"

int cli_info(int argc, char **argv) {
  fprintf(stderr, "quiver info: not available in this build yet\n");
  return 2;
}
