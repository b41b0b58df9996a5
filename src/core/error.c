/* Error codes and messages: the table lives in include/quiver/error.h. */
#include "quiver/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *qv_strerror(int code) {
  switch (code) {
  case 0: return "success";
#define QV_ERRNO_STR_(name, val, msg) case (val): return msg;
    QV_ERRNO_MAP(QV_ERRNO_STR_)
#undef QV_ERRNO_STR_
  default: return "unknown error";
  }
}

int qv_error_set(qv_error *err, int code, const char *fmt, ...) {
  if (!err) return code;
  err->code = code;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err->msg, sizeof err->msg, fmt, ap);
  va_end(ap);
  return code;
}

void qv_error_prefix(qv_error *err, const char *fmt, ...) {
  if (!err) return;
  char prefix[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(prefix, sizeof prefix, fmt, ap);
  va_end(ap);
  /* Exactly one ": " joins the two, however the caller spelled them: a separator at the end of
   * the prefix or at the start of the message is dropped. */
  size_t pl = strlen(prefix);
  while (pl && (prefix[pl - 1] == ' ' || prefix[pl - 1] == ':')) pl--;
  prefix[pl] = '\0';
  const char *old = err->msg;
  if (old[0] == ':') {
    old++;
    while (*old == ' ') old++;
  }
  /* A message that already starts with the prefix (the path an inner error named) keeps it
   * once; an empty prefix adds nothing. */
  if (!pl || (!strncmp(old, prefix, pl) && (old[pl] == '\0' || old[pl] == ':' || old[pl] == '/'))) {
    memmove(err->msg, old, strlen(old) + 1);
    return;
  }
  char tmp[sizeof err->msg];
  size_t cap = sizeof tmp - 1, n = pl < cap ? pl : cap, ol = strlen(old);
  memcpy(tmp, prefix, n);
  if (ol && n + 2 <= cap) {
    memcpy(tmp + n, ": ", 2);
    n += 2;
    if (ol > cap - n) ol = cap - n;
    memcpy(tmp + n, old, ol);
    n += ol;
  }
  tmp[n] = '\0';
  memcpy(err->msg, tmp, n + 1);
}

void qv_error_clear(qv_error *err) {
  if (!err) return;
  err->code = 0;
  err->msg[0] = '\0';
}
