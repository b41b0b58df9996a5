/* Helpers the C test programs share: where ../shared and the source tree are, and whole-file
 * reads (through core/util's reader). Static inline so each test program stays one file. */
#ifndef QV_TEST_UTIL_H
#define QV_TEST_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "core/util.h"

/* out = $QV_SHARED_DIR/rel, else $QV_SOURCE_DIR/../shared/rel; returns 1 when it exists. */
static inline int test_shared_path(char *out, size_t cap, const char *rel) {
  const char *dir = getenv("QV_SHARED_DIR");
  const char *src = getenv("QV_SOURCE_DIR");
  if (dir && *dir) snprintf(out, cap, "%s/%s", dir, rel);
  else snprintf(out, cap, "%s/../shared/%s", src ? src : ".", rel);
  return access(out, F_OK) == 0;
}

/* A whole file as a malloc'd NUL-terminated string (caller frees), or NULL. */
static inline char *test_slurp(const char *path, size_t *len) {
  return qv_read_file(path, (size_t)1 << 30, len, NULL);
}

#endif
