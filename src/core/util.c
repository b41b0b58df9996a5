/* Whole-file reads; see util.h. */
#include "core/util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

char *qv_read_file(const char *path, size_t max_bytes, size_t *len, qv_error *err) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    qv_error_set(err, errno == ENOENT ? QV_ENOTFOUND : QV_EIO, "%s: cannot open: %s", path, strerror(errno));
    return NULL;
  }
  char *buf = NULL;
  size_t n = 0, cap = 0;
  for (;;) {
    if (n + 65536 + 1 > cap) {
      size_t ncap = cap ? cap * 2 : 65536 * 2;
      char *nb = realloc(buf, ncap);
      if (!nb) {
        qv_error_set(err, QV_ENOMEM, "%s: out of memory", path);
        goto fail;
      }
      buf = nb;
      cap = ncap;
    }
    size_t k = fread(buf + n, 1, 65536, f);
    n += k;
    if (n > max_bytes) {
      qv_error_set(err, QV_ELIMIT, "%s: larger than %zu bytes", path, max_bytes);
      goto fail;
    }
    if (k < 65536) {
      if (ferror(f)) {
        qv_error_set(err, QV_EIO, "%s: read error", path);
        goto fail;
      }
      break;
    }
  }
  fclose(f);
  buf[n] = '\0';
  if (len) *len = n;
  return buf;
fail:
  fclose(f);
  free(buf);
  return NULL;
}

void *qv_grow(void *p, size_t *cap, size_t need, size_t elem_size, size_t min_cap) {
  if (need <= *cap && p) return p;
  size_t ncap = *cap ? *cap : (min_cap ? min_cap : 16);
  while (ncap < need) {
    if (ncap > SIZE_MAX / 2 / elem_size) return NULL;
    ncap *= 2;
  }
  void *np = realloc(p, ncap * elem_size);
  if (!np) return NULL;
  *cap = ncap;
  return np;
}
