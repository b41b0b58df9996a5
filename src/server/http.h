/* HTTP/1.1 over libuv + llhttp: accepting connections, parsing requests (keep-alive,
 * pipelining, chunked request bodies), enforcing header/body/time limits, writing fixed-length
 * and chunked (streamed) responses, and one access-log line per request.
 *
 * Everything here runs on the libuv loop thread. A connection serves one request at a time:
 * bytes of pipelined requests that arrive meanwhile are buffered (up to a bound, then reading
 * pauses) and parsed once the current response is finished, so responses keep request order.
 * Writes are queued with uv_write; the bytes not yet written are counted so a caller streaming
 * to a slow reader can see the backlog (http_conn_pending_bytes) and give up instead of
 * buffering without bound, and so that a connection whose peer does not read stops being read
 * (no new request is parsed while its unsent output is over max_conn_output_bytes).
 *
 * Memory per connection and per server is bounded by the limits below: the application sees
 * each request twice, once when its headers are complete (on_head: auth, route, method and
 * length are checked there, before any body byte is buffered or 100 Continue is sent) and once
 * complete (on_request). Error answers to a request whose body is not read end with a lingering
 * close: the write side is shut, and what the client still sends is read and dropped for up
 * to linger_ms, so that clients which send the whole body before reading (Python's
 * http.client) read the status instead of a reset. */
#ifndef QV_SERVER_HTTP_H
#define QV_SERVER_HTTP_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "quiver/error.h"

typedef struct http_server http_server;
typedef struct http_conn http_conn;

typedef struct http_limits {
  size_t max_header_bytes;   /* request line + headers (default 16 KiB) -> 431 */
  int32_t max_headers;       /* header count (default 100) -> 431 */
  size_t max_body_bytes;     /* decoded body (default 8 MiB) -> 413 */
  uint64_t header_timeout_ms;/* first byte to end of headers (default 10 s) -> 408 */
  uint64_t body_timeout_ms;  /* end of headers to end of body (default 30 s) -> 408 */
  uint64_t idle_timeout_ms;  /* keep-alive idle time before closing (default 60 s) */
  int32_t max_connections;   /* open connections (default 1024); beyond it a few more are
                                accepted for probe_path only, the rest get 503 and close */
  int32_t max_connections_per_client; /* open connections per peer address (default 256) -> 503 */
  size_t max_conn_output_bytes;  /* unsent bytes per connection before it stops being read
                                    (default 1 MiB; one response may exceed it) */
  size_t max_pipeline_bytes;     /* unparsed bytes buffered per connection (default 256 KiB) */
  size_t max_total_output_bytes; /* unsent bytes of the whole server (default 1 GiB): an answer
                                    that would pass it is replaced by a 503 */
  size_t max_buffered_body_bytes;/* request bodies held by the whole server (default 256 MiB)
                                    -> 503 */
  uint64_t linger_ms;        /* lingering close after an error answer (default 2 s) */
  const char *probe_path;    /* served on the reserved connections (default "/health") */
  int32_t probe_connections; /* connections kept beyond max_connections for it (default 8) */
  int32_t access_log;        /* 1: one log line per request (default); 0: none */
} http_limits;

void http_limits_default(http_limits *l);

typedef struct http_header {
  const char *name;  /* NUL-terminated, as sent (compare case-insensitively) */
  const char *value; /* NUL-terminated, surrounding whitespace trimmed */
} http_header;

typedef struct http_request {
  int method;              /* llhttp_method_t */
  const char *method_str;  /* "GET", "POST", ... */
  const char *url;         /* request target as sent, NUL-terminated */
  const char *path;        /* target without the query string, NUL-terminated */
  const http_header *headers; /* [n_headers] */
  int32_t n_headers;
  const char *body;        /* [body_len] decoded body, NUL-terminated ("" when none); NULL in
                              on_head */
  size_t body_len;         /* in on_head: the Content-Length (0 when chunked or none) */
  int keep_alive;
  uint64_t start_ns;       /* uv_hrtime() when the first byte arrived */
} http_request;

/* An answer given when the headers are complete (see http_handler.on_head). */
typedef struct http_early {
  char *body;        /* malloc'd JSON, owned by the HTTP layer once on_head returns */
  char extra[512];   /* "" or CRLF-terminated header lines */
} http_early;

/* Application callbacks; all are called on the loop thread. */
typedef struct http_handler {
  void *ud;
  /* Optional. The request's headers are complete and its body is not read yet: returns 0 to go
   * on, or an HTTP status answered with out (then the body is never buffered: the connection is
   * closed with a lingering close when one follows, or stays open when there is none). req is
   * valid during the call only; its body is NULL. */
  int (*on_head)(void *ud, const http_request *req, http_early *out);
  /* A complete request. The handler answers it (now or later) with exactly one of
   * http_respond or http_stream_begin..http_stream_end. req is owned by the connection and
   * valid until that answer is finished or on_abort is called. */
  void (*on_request)(void *ud, http_conn *c, const http_request *req);
  /* The connection dropped (or hit a write error) while its request was unanswered: the
   * handler must forget c, which is invalid once this returns. req_ctx is what the handler
   * stored with http_conn_set_ctx. */
  void (*on_abort)(void *ud, http_conn *c, void *req_ctx);
  /* Optional. The JSON body of an error the HTTP layer answers by itself (400 malformed, 408,
   * 413, 414, 431, 501, 503 busy or full, 505) for a request whose path is path (NULL when
   * the request line was not read that far): malloc'd, or NULL for the default
   * {"error": {"message", "type", "param", "code"}} body. So a dialect (Anthropic's
   * /v1/messages) keeps its own error shape even before routing. */
  char *(*error_body)(void *ud, const char *path, int status, const char *message);
} http_handler;

/* Creates the server on loop (borrowed) and starts listening on host:port (port 0 picks a free
 * one; see http_server_port). handler is copied. */
int http_server_create(uv_loop_t *loop, const char *host, int port, const http_limits *limits,
                       const http_handler *handler, http_server **out, qv_error *err);
/* The bound port. */
int http_server_port(const http_server *s);
/* Graceful drain: closes idle connections and marks the rest to close after their current
 * response (a request pipelined behind it still gets one answer, with Connection: close). The
 * listener stays open (so probes can see the drain) until http_server_close. */
void http_server_drain(http_server *s);
/* Connections with an unanswered request or a last response still being flushed. */
int http_server_n_busy(const http_server *s);
/* Closes every connection (aborting busy ones through on_abort) and the listener; the server
 * is freed once the loop has run the close callbacks. Accepts NULL. */
void http_server_close(http_server *s);

/* Per-request context for the handler (e.g. its request object); cleared after each answer. */
void http_conn_set_ctx(http_conn *c, void *ctx);
void *http_conn_get_ctx(const http_conn *c);
/* Bytes queued for writing that the peer has not taken yet. */
size_t http_conn_pending_bytes(const http_conn *c);
/* Header value by case-insensitive name, or NULL. */
const char *http_request_header(const http_request *req, const char *name);

/* A whole response. extra_headers is "" or CRLF-terminated header lines. Copies body. A JSON
 * or SSE body that is not valid UTF-8 is repaired (U+FFFD) so that every answer parses. A HEAD
 * request gets the head only. After
 * it returns the request is finished (c stays valid only for pipelined requests that follow,
 * which arrive through on_request again). */
void http_respond(http_conn *c, int status, const char *content_type, const char *extra_headers,
                  const char *body, size_t body_len);
/* The same, taking ownership of body (malloc'd): no copy of a large answer. */
void http_respond_take(http_conn *c, int status, const char *content_type,
                       const char *extra_headers, char *body, size_t body_len);
/* A streamed response with chunked transfer encoding. */
void http_stream_begin(http_conn *c, int status, const char *content_type,
                       const char *extra_headers);
void http_stream_write(http_conn *c, const char *data, size_t len);
void http_stream_end(http_conn *c);
/* Ends an unfinished response by closing the connection (e.g. when a streaming client falls
 * too far behind). The request counts as finished; on_abort is not called. */
void http_conn_kill(http_conn *c);

/* Header lines (CRLF-terminated, copied) added to the answer of the current request, e.g.
 * CORS headers decided by the router; cleared after each answer. */
void http_conn_add_headers(http_conn *c, const char *lines);

/* Serves TLS on every connection accepted from now on (ctx borrowed, must outlive the server;
 * see tls.h). Call right after http_server_create. */
struct tls_ctx;
void http_server_use_tls(http_server *s, struct tls_ctx *ctx);

/* Replaces invalid UTF-8 in s[0, len) by U+FFFD. Returns NULL when s is valid (nothing to do),
 * else a malloc'd repaired copy and its length in *out_len. */
char *http_utf8_repair(const char *s, size_t len, size_t *out_len);

/* Reason phrase for a status code ("Unknown" for codes not listed). */
const char *http_status_text(int status);

#endif
