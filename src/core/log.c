/* stderr logger; see log.h. The threshold is read once from the environment. */
#include "core/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int log_threshold(void) {
  /* Read on every call: cheap, and it avoids a mutable global. */
  const char *s = getenv("QUIVER_LOG");
  if (!s || !*s) return QV_LOG_INFO;
  if (!strcmp(s, "error")) return QV_LOG_ERROR;
  if (!strcmp(s, "warn")) return QV_LOG_WARN;
  if (!strcmp(s, "debug")) return QV_LOG_DEBUG;
  return QV_LOG_INFO;
}

int qv_log_enabled(int level) { return level <= log_threshold(); }

void qv_log(int level, const char *fmt, ...) {
  if (!qv_log_enabled(level)) return;
  static const char *names[] = {"error", "warn", "info", "debug"};
  char line[2048];
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  int n = snprintf(line, sizeof line, "%02d:%02d:%02d.%03ld quiver %s: ", tm.tm_hour, tm.tm_min,
                   tm.tm_sec, ts.tv_nsec / 1000000, names[level < 0 ? 0 : level > 3 ? 3 : level]);
  va_list ap;
  va_start(ap, fmt);
  if (n > 0 && (size_t)n < sizeof line) vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
  va_end(ap);
  fprintf(stderr, "%s\n", line);
}
