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
  size_t cap = sizeof err->msg - 1, pl = strlen(prefix) + 2, ol = strlen(err->msg);
  if (pl > cap) pl = cap;
  if (ol > cap - pl) ol = cap - pl;
  memmove(err->msg + pl, err->msg, ol);
  memcpy(err->msg, prefix, pl - 2);
  memcpy(err->msg + pl - 2, ": ", 2);
  err->msg[pl + ol] = '\0';
}

void qv_error_clear(qv_error *err) {
  if (!err) return;
  err->code = 0;
  err->msg[0] = '\0';
}
