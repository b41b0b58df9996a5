/* quiver error codes and the error-with-context object every fallible call can fill.
 *
 * Functions return int: 0 on success or a negative QV_E* code. When the caller passes a
 * qv_error, the callee also writes a human-readable message with context (file, tensor,
 * line/column, field) into it. One X-macro table gives both the codes and qv_strerror(). */
#ifndef QUIVER_ERROR_H
#define QUIVER_ERROR_H

#include <stddef.h>

#define QV_ERRNO_MAP(X)                                              \
  X(INVAL,       -1,  "invalid argument")                           \
  X(NOMEM,       -2,  "out of memory")                              \
  X(IO,          -3,  "I/O error")                                  \
  X(FORMAT,      -4,  "malformed input")                            \
  X(UNSUPPORTED, -5,  "unsupported")                                \
  X(NOTFOUND,    -6,  "not found")                                  \
  X(RANGE,       -7,  "value out of range")                         \
  X(BUSY,        -8,  "queue full")                                 \
  X(ABORTED,     -9,  "aborted")                                    \
  X(LIMIT,       -10, "limit exceeded")                             \
  X(TEMPLATE,    -11, "template error")                             \
  X(DEVICE,      -12, "device error")                               \
  X(STATE,       -13, "invalid state")                              \
  X(AUTH,        -14, "unauthorized")                               \
  X(CLOSED,      -15, "closed")

typedef enum qv_errno {
  QV_OK = 0,
#define QV_ERRNO_ENUM_(name, val, msg) QV_E##name = (val),
  QV_ERRNO_MAP(QV_ERRNO_ENUM_)
#undef QV_ERRNO_ENUM_
} qv_errno;

/* An error with context. Callers own it (usually on the stack); callees fill it. */
typedef struct qv_error {
  int code;       /* 0 or a QV_E* code */
  char msg[512];  /* NUL-terminated message with context; "" when code is 0 */
} qv_error;

/* The fixed description of an error code ("unknown error" for codes outside the table). */
const char *qv_strerror(int code);

/* Records code and a printf-style message in err (which may be NULL) and returns code, so
 * that `return qv_error_set(err, QV_EFORMAT, "...")` reads naturally. A message already in err
 * is replaced. */
int qv_error_set(qv_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prefixes the message already in err with more context ("loading x: <old message>"). Exactly
 * one ": " separates them: a prefix is written without a trailing separator (one there is
 * dropped), and a prefix the message already starts with (a path that the inner error named,
 * followed by ':' or '/') is not repeated. */
void qv_error_prefix(qv_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Clears err to success. */
void qv_error_clear(qv_error *err);

#endif
