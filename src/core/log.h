/* Logging to stderr with a level threshold taken from QUIVER_LOG (error|warn|info|debug). One
 * fprintf per line, so lines from several threads do not interleave. */
#ifndef QV_CORE_LOG_H
#define QV_CORE_LOG_H

enum { QV_LOG_ERROR = 0, QV_LOG_WARN = 1, QV_LOG_INFO = 2, QV_LOG_DEBUG = 3 };

void qv_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int qv_log_enabled(int level);

#define QV_LOGE(...) qv_log(QV_LOG_ERROR, __VA_ARGS__)
#define QV_LOGW(...) qv_log(QV_LOG_WARN, __VA_ARGS__)
#define QV_LOGI(...) qv_log(QV_LOG_INFO, __VA_ARGS__)
#define QV_LOGD(...) qv_log(QV_LOG_DEBUG, __VA_ARGS__)

#endif
