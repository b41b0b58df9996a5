/* quiver chat-template: placeholder until its subsystem lands (the command reports that plainly). */
#include <stdio.h>

#include "cli/cli.h"

int cli_chat_template(int argc, char **argv) {
  fprintf(stderr, "quiver chat-template: not available in this build yet\n");
  return 2;
}
