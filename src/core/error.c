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
  char prefix[256], old[sizeof err->msg];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(prefix, sizeof prefix, fmt, ap);
  va_end(ap);
  memcpy(old, err->msg, sizeof old);
  snprintf(err->msg, sizeof err->msg, "%s: %s", prefix, old);
}

void qv_error_clear(qv_error *err) {
  if (!err) return;
  err->code = 0;
  err->msg[0] = '\0';
}
