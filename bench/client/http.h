/* A small HTTP/1.1 client for the load generator: libuv TCP + llhttp, plain http:// only,
 * keep-alive connections reused across requests, streaming response bodies handed to the caller
 * as they arrive (with the arrival time, taken once per socket read).
 *
 * Single-threaded: every function must be called on the thread that runs the loop, and all
 * callbacks run from uv_run on that thread. */
#ifndef QV_BENCH_HTTP_H
#define QV_BENCH_HTTP_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "quiver/error.h"

typedef struct bench_http bench_http;

/* Callbacks of one request; arg is the caller's. All times are uv_hrtime() nanoseconds. */
typedef struct bench_http_cbs {
  /* Status line and headers parsed; is_sse: Content-Type is text/event-stream. */
  void (*on_headers)(void *arg, int status, int is_sse);
  /* A piece of the (de-chunked) body; data is borrowed for the call. */
  void (*on_body)(void *arg, const char *data, size_t len, uint64_t now_ns);
  /* The request ended: rc 0 when the whole response arrived, else a negative QV_E* code with a
   * message (connection refused, reset, malformed response...). Called exactly once; the
   * client forgets the request before calling it, so the callback may send new requests. */
  void (*on_done)(void *arg, int rc, const char *msg, uint64_t now_ns);
} bench_http_cbs;

/* Parses base_url ("http://host[:port][/prefix]"), resolves the host (blocking, once) and
 * creates a client on loop (borrowed; must outlive the client). api_key may be NULL; when set
 * every request carries "Authorization: Bearer <key>". */
int bench_http_create(uv_loop_t *loop, const char *base_url, const char *api_key, bench_http **out,
                      qv_error *err);
/* Closes every connection, runs the loop until they are closed and frees the client. Requests
 * still in flight end with on_done(QV_ECLOSED). Accepts NULL. */
void bench_http_destroy(bench_http *c);

/* One request: method and path (appended to base_url's prefix); body (JSON, body_len bytes)
 * may be NULL for GET. Borrowed for the send call, which copies what it needs. */
typedef struct bench_http_req {
  const char *method;
  const char *path;
  const char *body;
  size_t body_len;
} bench_http_req;

/* Starts req; cbs and arg (borrowed until on_done) receive its response. Reuses an idle
 * keep-alive connection when there is one, else connects. A request that fails on a reused
 * connection before any response byte arrived (the server closed it while idle) is retried once
 * on a new connection. */
int bench_http_send(bench_http *c, const bench_http_req *req, const bench_http_cbs *cbs, void *arg, qv_error *err);

/* Ends the request whose callback argument is arg (if it is in flight): its connection is
 * closed and on_done(rc, msg) is called before this returns. Returns 0, or QV_ENOTFOUND. */
int bench_http_cancel(bench_http *c, void *arg, int rc, const char *msg);

/* A whole response of bench_http_call. */
typedef struct bench_http_resp {
  int status;   /* HTTP status */
  char *body;   /* [len] NUL-terminated; owned by the caller (free) */
  size_t len;
} bench_http_resp;

/* Sends req and runs the loop until it is done (for setup calls: /v1/models, /tokenize). Returns
 * the transport result; on 0, *resp holds the status and the body. */
int bench_http_call(bench_http *c, const bench_http_req *req, bench_http_resp *resp, qv_error *err);

/* Connections opened so far (for the report). */
int64_t bench_http_n_connects(const bench_http *c);

#endif
