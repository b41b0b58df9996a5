/* quiver version (also quiver --version / -V): the version, git commit, build and backends. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "core/build_info.h"

int cli_version(int argc, char **argv) {
  const qv_build_info *b = qv_build_info_get();
  if (argc > 1 && strcmp(argv[1], "--json")) {
    fprintf(stderr, "usage: quiver version [--json]\n");
    return 2;
  }
  if (argc > 1) {
    printf("{\"version\":\"%s\",\"commit\":\"%s\",\"build_type\":\"%s\",\"backends\":\"%s\"}\n",
           b->version, b->commit, b->build_type, b->backends);
    return 0;
  }
  printf("quiver %s (commit %s)\nbuild: %s, %s%s\nbackends: %s\n", b->version, b->commit,
         b->build_type, b->compiler, strcmp(b->sanitize, "ON") ? "" : ", ASan+UBSan", b->backends);
  return 0;
}
