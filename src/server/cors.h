/* Cross-origin resource sharing for browser clients: which origins may call the API, the
 * headers added to answers to them, and the answer to a preflight (OPTIONS with
 * Access-Control-Request-Method). Off unless origins are configured (quiver serve
 * --allowed-origins), so a default server answers browsers exactly as before.
 *
 * Pure string work over the request's Origin header; the router (server.c) calls it. */
#ifndef QV_SERVER_CORS_H
#define QV_SERVER_CORS_H

#include <stddef.h>

#include "quiver/error.h"

#define CORS_MAX_ORIGINS 32

typedef struct cors_opts {
  char *origins[CORS_MAX_ORIGINS]; /* owned; "*" allows every origin */
  int n_origins;
  char *methods;                   /* owned, ", "-joined; NULL: GET, POST, OPTIONS */
  char *headers;                   /* owned, ", "-joined; NULL: "*" (any requested header) */
  int allow_credentials;           /* send Access-Control-Allow-Credentials: true */
} cors_opts;

void cors_opts_deinit(cors_opts *o);
/* Each takes a JSON list ('["https://a", "https://b"]', vLLM's form) or a comma-separated list
 * and adds to what was given before. Values must be printable ASCII without quotes or CR/LF. */
int cors_opts_add_origins(cors_opts *o, const char *list, qv_error *err);
int cors_opts_add_methods(cors_opts *o, const char *list, qv_error *err);
int cors_opts_add_headers(cors_opts *o, const char *list, qv_error *err);
/* 1 when any origin is configured. */
int cors_enabled(const cors_opts *o);

/* Header lines (CRLF-terminated) to add to an answer for a request with this Origin (NULL: no
 * header) into out[cap]; "" when CORS is off or the origin is not allowed. */
void cors_headers(const cors_opts *o, const char *origin, char *out, size_t cap);
/* For a preflight (origin and request_method non-NULL): the full header lines of the 204
 * answer into out[cap]. request_headers (Access-Control-Request-Headers, may be NULL) is
 * echoed as the allowed headers when none are configured. Returns 1 when the origin is
 * allowed, 0 otherwise (then out is ""). */
int cors_preflight(const cors_opts *o, const char *origin, const char *request_method,
                   const char *request_headers, char *out, size_t cap);

#endif
