/* HTTP/1.1 connections over libuv + llhttp (see http.h for the contract).
 *
 * Per connection: an input buffer of received bytes not yet parsed, an llhttp parser that
 * pauses at each message end (so one request is served at a time and pipelined ones wait in
 * the buffer), the current request copied out of the parser callbacks (llhttp hands out
 * fragments that may span reads), one timer for header/body/idle timeouts, and a counter of
 * bytes handed to uv_write but not yet written. A connection is freed when both its TCP handle
 * and its timer have been closed. */
#include "server/http.h"

#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/log.h"
#include "server/tls.h"

/* A read buffer or body buffer larger than this is freed when its request ends. */
#define HTTP_KEEP_BUF_BYTES (64u * 1024u)
/* TLS: ciphertext read per uv read callback (the plaintext lands in the input buffer). */
#define HTTP_TLS_READ_BYTES 65536u

enum conn_state {
  CONN_IDLE = 0, /* waiting for the first byte of a request */
  CONN_READING,  /* inside a request's headers or body */
  CONN_BUSY,     /* request complete, handler answering */
  CONN_DONE,     /* last response queued; closing once it is written */
  CONN_LINGER,   /* error answer queued, write side shut: reading and dropping until EOF or
                    linger_ms */
  CONN_CLOSING,  /* handles closing: nothing more happens */
};

struct http_server {
  uv_loop_t *loop;       /* borrowed */
  uv_tcp_t listener;
  http_limits limits;
  http_handler handler;
  http_conn *conns;      /* doubly linked list of open connections */
  int32_t n_conns;
  int32_t n_linger;      /* connections in CONN_LINGER (not counted against the caps) */
  size_t body_bytes;     /* capacity of every connection's body buffer */
  size_t pending_bytes;  /* unsent bytes of every connection */
  int port;
  int draining;
  int closing;           /* http_server_close called: free when the last handle closes */
  int listener_open;
  tls_ctx *tls;          /* borrowed or NULL: plain HTTP */
};

struct http_conn {
  http_server *srv;
  http_conn *prev, *next;
  uv_tcp_t tcp;
  uv_timer_t timer;
  int n_handles_open;    /* tcp + timer; freed at 0 */
  llhttp_t parser;
  enum conn_state state;
  char peer[64];
  int overflow;          /* accepted beyond max_connections: probe_path only */

  char *in;              /* [in_cap] received bytes; [in_off, in_len) not parsed yet */
  size_t in_len, in_cap, in_off;
  int reading;           /* uv_read_start is active */
  int in_process;        /* conn_process is on the stack (trampoline guard) */
  const char *exec_start;/* start of the bytes given to the current llhttp_execute */
  int hdr_armed;         /* the header timeout of the coming request runs */
  int peer_eof;          /* the peer shut its write side: answer what is buffered, then close */
  int drain_answered;    /* a request pipelined behind a drain got its answer */

  /* The request being read: url and headers as NUL-separated strings in hbuf, with offsets. */
  char *hbuf;            /* [hbuf_cap] */
  size_t hbuf_len, hbuf_cap;
  size_t *hoff;          /* [2 * hoff_cap]: name offset, value offset per header */
  int32_t n_hdr, hoff_cap;
  int last_was_value;    /* header callback state: 1 after a value fragment */
  int value_frags;       /* fragments of the current header value */
  int got_version;       /* the request line carried an HTTP version */
  int in_trailers;       /* headers complete: later fields are chunked trailers (ignored) */
  int expect_sent;       /* 100 Continue sent for this request */
  int is_head;           /* HEAD: answer without the body */
  int chunk_line;        /* paused before a chunk-size line (see chunk_line_fix) */
  int last_chunk;        /* the chunk being read is the last (size 0) */
  size_t url_off, url_bytes;
  int url_done;          /* the request target is complete (NUL-terminated at hbuf + url_off) */
  size_t header_bytes;   /* counted against max_header_bytes */
  char *body;            /* [body_cap] */
  size_t body_len, body_cap;
  int reject_status;     /* set by a parser callback that refused the request */
  const char *reject_msg;/* its message (static) or NULL */
  int early_status;      /* on_head refused a request: answer early_body (owned) */
  http_early early;
  http_header *headers;  /* [n_hdr] built at message end */
  char *path;            /* malloc'd copy of the path without the query */
  http_request req;

  void *ctx;             /* handler's per-request context */
  int streaming;         /* chunked response started */
  int sse;               /* ... and it is text/event-stream */
  int n_probes;          /* liveness probes written after the peer's EOF */
  int status;            /* status of the response being written */
  size_t resp_bytes;     /* bytes of the current response */
  size_t pending_bytes;  /* queued in uv_write, not yet completed */
  int close_after;       /* close once the current response is written */
  int linger;            /* ... with a lingering close (an error answer, body maybe unread) */
  int counted_linger;    /* counted in srv->n_linger */
  int write_failed;
  char *extra_headers;   /* owned or NULL: header lines added to the current response */
  tls_conn *tls;         /* owned or NULL: the TLS layer between the socket and the parser */
  char *tls_in;          /* [HTTP_TLS_READ_BYTES] ciphertext read buffer, owned */
};

typedef struct write_req {
  uv_write_t req;
  http_conn *c;
  size_t len;            /* bytes in data + ext */
  char *ext;             /* [ext_len] owned second buffer (a taken body) or NULL */
  size_t ext_len;
  char data[];           /* [len - ext_len] */
} write_req;

void http_limits_default(http_limits *l) {
  l->max_header_bytes = 16 * 1024;
  l->max_headers = 100;
  l->max_body_bytes = 8u * 1024 * 1024;
  l->header_timeout_ms = 10000;
  l->body_timeout_ms = 30000;
  l->idle_timeout_ms = 60000;
  l->max_connections = 1024;
  l->max_connections_per_client = 256;
  l->max_conn_output_bytes = 1u << 20;
  l->max_pipeline_bytes = 256u * 1024;
  l->max_total_output_bytes = (size_t)1 << 30;
  l->max_buffered_body_bytes = 256u << 20;
  l->linger_ms = 2000;
  l->probe_path = "/health";
  l->probe_connections = 8;
  l->access_log = 1;
}

const char *http_status_text(int status) {
  switch (status) {
  case 100: return "Continue";
  case 200: return "OK";
  case 204: return "No Content";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 408: return "Request Timeout";
  case 413: return "Content Too Large";
  case 414: return "URI Too Long";
  case 415: return "Unsupported Media Type";
  case 417: return "Expectation Failed";
  case 429: return "Too Many Requests";
  case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error";
  case 501: return "Not Implemented";
  case 503: return "Service Unavailable";
  case 505: return "HTTP Version Not Supported";
  default: return "Unknown";
  }
}

/* ---- buffers ---- */

static int buf_reserve(char **buf, size_t *cap, size_t need) {
  if (need <= *cap) return 0;
  size_t ncap = *cap ? *cap : 256;
  while (ncap < need) ncap *= 2;
  char *nb = realloc(*buf, ncap);
  if (!nb) return QV_ENOMEM;
  *buf = nb;
  *cap = ncap;
  return 0;
}

/* The body buffer, counted against the server-wide max_buffered_body_bytes. */
static int body_reserve(http_conn *c, size_t need) {
  if (need <= c->body_cap) return 0;
  size_t ncap = c->body_cap ? c->body_cap : 256;
  while (ncap < need) ncap *= 2;
  if (ncap > c->srv->limits.max_body_bytes + 1) ncap = need;
  http_server *s = c->srv;
  if (s->body_bytes - c->body_cap + ncap > s->limits.max_buffered_body_bytes) return QV_EBUSY;
  char *nb = realloc(c->body, ncap);
  if (!nb) return QV_ENOMEM;
  s->body_bytes = s->body_bytes - c->body_cap + ncap;
  c->body = nb;
  c->body_cap = ncap;
  return 0;
}

static void body_release(http_conn *c) {
  c->srv->body_bytes -= c->body_cap;
  free(c->body);
  c->body = NULL;
  c->body_cap = 0;
}

static int hbuf_append(http_conn *c, const char *at, size_t len) {
  if (buf_reserve(&c->hbuf, &c->hbuf_cap, c->hbuf_len + len + 1)) return -1;
  memcpy(c->hbuf + c->hbuf_len, at, len);
  c->hbuf_len += len;
  c->hbuf[c->hbuf_len] = '\0';
  return 0;
}

/* Terminates the string being accumulated (the NUL already sits at hbuf_len). */
static int hbuf_end(http_conn *c) {
  if (buf_reserve(&c->hbuf, &c->hbuf_cap, c->hbuf_len + 2)) return -1;
  c->hbuf[c->hbuf_len++] = '\0';
  c->hbuf[c->hbuf_len] = '\0';
  return 0;
}

/* ---- parser callbacks ---- */

static http_conn *conn_of(llhttp_t *p) { return (http_conn *)p->data; }

static int count_header_bytes(http_conn *c, size_t len) {
  c->header_bytes += len;
  if (c->header_bytes > c->srv->limits.max_header_bytes) {
    c->reject_status = 431;
    return HPE_USER;
  }
  return 0;
}

static void request_reset(http_conn *c) {
  c->hbuf_len = 0;
  c->n_hdr = 0;
  c->last_was_value = 0;
  c->value_frags = 0;
  c->got_version = 0;
  c->in_trailers = 0;
  c->expect_sent = 0;
  c->is_head = 0;
  c->chunk_line = 0;
  c->last_chunk = 0;
  c->n_probes = 0;
  c->url_off = 0;
  c->url_bytes = 0;
  c->url_done = 0;
  c->header_bytes = 0;
  c->body_len = 0;
  /* A large body buffer is not kept for the next request (nor counted against the server). */
  if (c->body_cap > HTTP_KEEP_BUF_BYTES) body_release(c);
  c->reject_status = 0;
  c->reject_msg = NULL;
  c->early_status = 0;
  free(c->early.body);
  memset(&c->early, 0, sizeof c->early);
  free(c->headers);
  c->headers = NULL;
  free(c->path);
  c->path = NULL;
  free(c->extra_headers);
  c->extra_headers = NULL;
  memset(&c->req, 0, sizeof c->req);
}

static void timer_arm(http_conn *c, uint64_t ms);

static int reject_with(http_conn *c, int status, const char *msg) {
  c->reject_status = status;
  c->reject_msg = msg;
  return HPE_USER;
}

static int on_message_begin(llhttp_t *p) {
  http_conn *c = conn_of(p);
  request_reset(c);
  c->state = CONN_READING;
  c->req.start_ns = uv_hrtime();
  /* The header timeout runs from accept (or the end of the previous answer's idle wait) and is
   * never re-armed by the bytes of the same request. */
  if (!c->hdr_armed) {
    c->hdr_armed = 1;
    timer_arm(c, c->srv->limits.header_timeout_ms);
  }
  return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len) {
  http_conn *c = conn_of(p);
  c->url_bytes += len;
  if (c->url_bytes > c->srv->limits.max_header_bytes)
    return reject_with(c, 414, "request target too long");
  if (count_header_bytes(c, len)) return HPE_USER;
  return hbuf_append(c, at, len) ? HPE_USER : 0;
}

static int on_version(llhttp_t *p, const char *at, size_t len) {
  conn_of(p)->got_version = 1;
  return 0;
}

static int on_url_complete(llhttp_t *p) {
  http_conn *c = conn_of(p);
  if (hbuf_end(c)) return HPE_USER;
  c->url_done = 1;
  return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len) {
  http_conn *c = conn_of(p);
  if (count_header_bytes(c, len + 4)) return HPE_USER;
  if (c->in_trailers) return 0; /* trailer fields never reach the request */
  if (c->last_was_value || c->n_hdr == 0) {
    /* A new header starts (fields can arrive in fragments: only the first opens one). */
    if (c->n_hdr >= c->srv->limits.max_headers) {
      c->reject_status = 431;
      return HPE_USER;
    }
    if (c->n_hdr >= c->hoff_cap) {
      int32_t ncap = c->hoff_cap ? c->hoff_cap * 2 : 16;
      size_t *n = realloc(c->hoff, sizeof *n * 2 * (size_t)ncap);
      if (!n) return HPE_USER;
      c->hoff = n;
      c->hoff_cap = ncap;
    }
    c->hoff[2 * c->n_hdr] = c->hbuf_len;
    c->hoff[2 * c->n_hdr + 1] = (size_t)-1;
    c->n_hdr++;
    c->last_was_value = 0;
    c->value_frags = 0;
  }
  return hbuf_append(c, at, len) ? HPE_USER : 0;
}

static int on_header_field_complete(llhttp_t *p) {
  http_conn *c = conn_of(p);
  if (c->in_trailers) return 0;
  if (c->n_hdr == 0 || c->hbuf_len == c->hoff[2 * (c->n_hdr - 1)])
    return reject_with(c, 400, "empty header name");
  if (hbuf_end(c)) return HPE_USER;
  c->hoff[2 * (c->n_hdr - 1) + 1] = c->hbuf_len;
  return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len) {
  http_conn *c = conn_of(p);
  if (count_header_bytes(c, len)) return HPE_USER;
  if (c->in_trailers) return 0;
  /* A second fragment that does not start where a read started follows a line break inside
   * the value: obsolete line folding, which RFC 9112 lets a server reject. */
  if (c->value_frags++ > 0 && at > c->exec_start && (at[-1] == '\n' || at[-1] == '\r'))
    return reject_with(c, 400, "obsolete header line folding");
  c->last_was_value = 1;
  return hbuf_append(c, at, len) ? HPE_USER : 0;
}

static int on_header_value_complete(llhttp_t *p) {
  http_conn *c = conn_of(p);
  if (c->in_trailers) return 0;
  c->last_was_value = 1;
  return hbuf_end(c) ? HPE_USER : 0;
}

static void write_raw(http_conn *c, const char *a, size_t alen, const char *b, size_t blen);

/* Builds the header array and the path (the request's view) once the header section ends. */
static int build_request(http_conn *c, llhttp_t *p) {
  c->headers = calloc((size_t)(c->n_hdr ? c->n_hdr : 1), sizeof *c->headers);
  if (!c->headers) return QV_ENOMEM;
  int32_t n = 0;
  for (int32_t i = 0; i < c->n_hdr; i++) {
    size_t vo = c->hoff[2 * i + 1];
    if (vo == (size_t)-1) continue;
    char *v = c->hbuf + vo;
    while (*v == ' ' || *v == '\t') v++;
    size_t vl = strlen(v);
    while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t')) v[--vl] = '\0';
    c->headers[n].name = c->hbuf + c->hoff[2 * i];
    c->headers[n].value = v;
    n++;
  }
  const char *url = c->hbuf + c->url_off;
  size_t plen = strcspn(url, "?#");
  c->path = malloc(plen + 1);
  if (!c->path) return QV_ENOMEM;
  memcpy(c->path, url, plen);
  c->path[plen] = '\0';
  c->req.method = llhttp_get_method(p);
  c->req.method_str = llhttp_method_name((llhttp_method_t)c->req.method);
  c->req.url = url;
  c->req.path = c->path;
  c->req.headers = c->headers;
  c->req.n_headers = n;
  c->req.keep_alive = llhttp_should_keep_alive(p);
  return 0;
}

static int on_headers_complete(llhttp_t *p) {
  http_conn *c = conn_of(p);
  http_server *s = c->srv;
  c->in_trailers = 1;
  if (build_request(c, p)) return HPE_USER;
  if (!c->got_version) return reject_with(c, 400, "the request line has no HTTP version");
  if (p->http_major != 1) return reject_with(c, 505, "only HTTP/1.0 and HTTP/1.1 are served");
  c->is_head = c->req.method == HTTP_HEAD;
  /* No protocol switch is offered: the request is served as a plain one and the connection
   * keeps parsing HTTP/1.1 (llhttp would otherwise stop at the end of the message). */
  p->upgrade = 0;
  const char *te = http_request_header(&c->req, "transfer-encoding");
  if (te && strcasecmp(te, "chunked"))
    return reject_with(c, 501, "only the chunked transfer coding is supported");
  int has_body = (p->flags & F_CHUNKED) || ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0);
  c->req.body = NULL;
  c->req.body_len = (p->flags & F_CONTENT_LENGTH) ? (size_t)p->content_length : 0;
  if (c->overflow && strcmp(c->path, s->limits.probe_path))
    return reject_with(c, 503, "too many connections; retry later");
  if (s->handler.on_head) {
    int st = s->handler.on_head(s->handler.ud, &c->req, &c->early);
    if (st) {
      c->early_status = st;
      /* Nothing to skip: the answer goes out when the message ends, keeping the connection. */
      if (!has_body) return 0;
      c->reject_status = st;
      return HPE_USER;
    }
  }
  if (p->flags & F_CONTENT_LENGTH && p->content_length > s->limits.max_body_bytes)
    return reject_with(c, 413, "request body too large");
  if ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0) {
    int rc = body_reserve(c, (size_t)p->content_length + 1);
    if (rc == QV_EBUSY) return reject_with(c, 503, "server busy: too many request bytes buffered");
    if (rc) return HPE_USER;
  }
  /* Clients that wait for permission before sending a body (curl does above 1 KiB): once,
   * however many Expect fields were sent, and only for a request that will be read. */
  for (int32_t i = 0; has_body && !c->expect_sent && i < c->req.n_headers; i++)
    if (!strcasecmp(c->req.headers[i].name, "expect") &&
        !strcasecmp(c->req.headers[i].value, "100-continue") && p->http_minor >= 1) {
      static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
      write_raw(c, cont, sizeof cont - 1, NULL, 0);
      c->expect_sent = 1;
    }
  timer_arm(c, s->limits.body_timeout_ms);
  /* A chunked body: pause before each chunk-size line (see chunk_line_fix). */
  if (p->flags & F_CHUNKED) {
    c->chunk_line = 1;
    return HPE_PAUSED;
  }
  return 0;
}

static int on_chunk_complete(llhttp_t *p) {
  http_conn *c = conn_of(p);
  if (c->last_chunk) return 0;
  c->chunk_line = 1;
  return HPE_PAUSED;
}

/* An absurd chunk size is refused before a byte of it is read. */
static int on_chunk_header(llhttp_t *p) {
  http_conn *c = conn_of(p);
  c->last_chunk = p->content_length == 0;
  if (p->content_length > c->srv->limits.max_body_bytes ||
      c->body_len + p->content_length > c->srv->limits.max_body_bytes)
    return reject_with(c, 413, "request body too large");
  return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len) {
  http_conn *c = conn_of(p);
  if (c->body_len + len > c->srv->limits.max_body_bytes)
    return reject_with(c, 413, "request body too large");
  int rc = body_reserve(c, c->body_len + len + 1);
  if (rc == QV_EBUSY) return reject_with(c, 503, "server busy: too many request bytes buffered");
  if (rc) return HPE_USER;
  memcpy(c->body + c->body_len, at, len);
  c->body_len += len;
  return 0;
}

static int on_message_complete(llhttp_t *p) {
  http_conn *c = conn_of(p);
  int rc = body_reserve(c, c->body_len + 1);
  if (rc == QV_EBUSY) return reject_with(c, 503, "server busy: too many request bytes buffered");
  if (rc) return HPE_USER;
  c->body[c->body_len] = '\0';
  c->req.body = c->body;
  c->req.body_len = c->body_len;
  return HPE_PAUSED;
}

static const llhttp_settings_t http_parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_url_complete = on_url_complete,
    .on_version = on_version,
    .on_header_field = on_header_field,
    .on_header_field_complete = on_header_field_complete,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_chunk_header = on_chunk_header,
    .on_chunk_complete = on_chunk_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---- connection lifecycle ---- */

static void conn_free(http_conn *c) {
  http_server *s = c->srv;
  if (c->prev) c->prev->next = c->next;
  else s->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  s->n_conns--;
  if (c->counted_linger) s->n_linger--;
  request_reset(c);
  free(c->in);
  free(c->hbuf);
  free(c->hoff);
  body_release(c);
  tls_conn_destroy(c->tls);
  free(c->tls_in);
  free(c);
  if (s->closing && s->n_conns == 0 && !s->listener_open) free(s);
}

static void on_conn_handle_closed(uv_handle_t *h) {
  http_conn *c = h->data;
  if (--c->n_handles_open == 0) conn_free(c);
}

/* Closes the connection now. A request still unanswered is reported through on_abort. */
static void conn_close(http_conn *c) {
  if (c->state == CONN_CLOSING) return;
  int was_busy = c->state == CONN_BUSY;
  c->state = CONN_CLOSING;
  if (was_busy && c->srv->handler.on_abort) {
    void *ctx = c->ctx;
    c->ctx = NULL;
    c->srv->handler.on_abort(c->srv->handler.ud, c, ctx);
  }
  if (!uv_is_closing((uv_handle_t *)&c->tcp)) uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
  if (!uv_is_closing((uv_handle_t *)&c->timer))
    uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
}

static void write_raw(http_conn *c, const char *a, size_t alen, const char *b, size_t blen);
static void on_timer(uv_timer_t *t);
static char *error_body(http_conn *c, int status, const char *msg, const char *code);

/* After EOF while a request is being answered the peer either shut only its write side (and
 * waits for the answer) or is gone; only a write can tell (a gone peer answers it with a reset,
 * and the write after that fails, which aborts the request). The probe is an SSE comment in
 * an event stream, else an interim 100 Continue, which HTTP/1.1 clients must accept. */
static int conn_probe(http_conn *c) {
  static const char ping[] = "8\r\n: ping\n\n\r\n";
  static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
  if (c->streaming && c->sse) write_raw(c, ping, sizeof ping - 1, NULL, 0);
  else if (!c->streaming && c->parser.http_minor >= 1) write_raw(c, cont, sizeof cont - 1, NULL, 0);
  else return -1;
  if (c->state != CONN_BUSY) return 0;
  static const uint64_t next_ms[] = {100, 1000};
  if (c->n_probes < 2) uv_timer_start(&c->timer, on_timer, next_ms[c->n_probes], 0);
  c->n_probes++;
  return 0;
}

static void on_timer(uv_timer_t *t) {
  http_conn *c = t->data;
  if (c->state == CONN_BUSY && c->peer_eof) {
    conn_probe(c);
  } else if (c->state == CONN_READING) {
    /* A request that did not arrive in time: answer 408 and close. */
    c->state = CONN_BUSY;
    c->req.method_str = c->req.method_str ? c->req.method_str : "-";
    c->close_after = 1;
    char *body = error_body(c, 408, "request timed out", "timeout");
    if (!body) conn_close(c);
    else http_respond_take(c, 408, "application/json", "", body, strlen(body));
  } else if (c->state == CONN_IDLE || c->state == CONN_DONE || c->state == CONN_LINGER) {
    conn_close(c);
  }
}

static void timer_arm(http_conn *c, uint64_t ms) {
  if (c->state == CONN_CLOSING) return;
  uv_timer_start(&c->timer, on_timer, ms, 0);
}

static void conn_process(http_conn *c);
static void reading_update(http_conn *c);

static void on_write_done(uv_write_t *w, int status) {
  write_req *wr = (write_req *)w;
  http_conn *c = wr->c;
  c->pending_bytes -= wr->len;
  c->srv->pending_bytes -= wr->len;
  free(wr->ext);
  free(wr);
  if (status < 0) c->write_failed = 1;
  if (c->state == CONN_CLOSING) return;
  if (status < 0) {
    conn_close(c);
    return;
  }
  /* The peer took output: pipelined requests held back by the output bound may go on. */
  if (c->pending_bytes <= c->srv->limits.max_conn_output_bytes) {
    if (c->state == CONN_IDLE || c->state == CONN_READING) conn_process(c);
    else reading_update(c);
  }
}

/* Queues a + b as one write to the socket (b may be NULL); with take, b is a malloc'd buffer that the
 * write owns (not copied). */
static void write_wire_buf(http_conn *c, const char *a, size_t alen, char *b, size_t blen, int take) {
  if (c->state == CONN_CLOSING || c->state == CONN_DONE || c->state == CONN_LINGER) {
    if (take) free(b);
    return;
  }
  size_t copy = take ? alen : alen + blen;
  write_req *wr = malloc(sizeof *wr + copy);
  if (!wr) {
    if (take) free(b);
    conn_close(c);
    return;
  }
  wr->c = c;
  wr->len = alen + blen;
  wr->ext = take ? b : NULL;
  wr->ext_len = take ? blen : 0;
  memcpy(wr->data, a, alen);
  if (blen && !take) memcpy(wr->data + alen, b, blen);
  uv_buf_t bufs[2] = {uv_buf_init(wr->data, (unsigned)copy), uv_buf_init(b, (unsigned)blen)};
  c->pending_bytes += wr->len;
  c->srv->pending_bytes += wr->len;
  c->resp_bytes += wr->len;
  int rc = uv_write(&wr->req, (uv_stream_t *)&c->tcp, bufs, take && blen ? 2 : 1, on_write_done);
  if (rc < 0) {
    c->pending_bytes -= wr->len;
    c->srv->pending_bytes -= wr->len;
    free(wr->ext);
    free(wr);
    c->write_failed = 1;
    conn_close(c);
  }
}

/* The same, encrypted first on a TLS connection (tls.c). */
static void write_buf(http_conn *c, const char *a, size_t alen, char *b, size_t blen, int take) {
  if (!c->tls) {
    write_wire_buf(c, a, alen, b, blen, take);
    return;
  }
  char *enc = NULL;
  size_t n = 0;
  int rc = c->state == CONN_CLOSING || c->state == CONN_DONE || c->state == CONN_LINGER
               ? 1
               : tls_conn_encrypt(c->tls, a, alen, b, blen, &enc, &n);
  if (take) free(b);
  if (rc) {
    free(enc);
    if (c->state != CONN_CLOSING && c->state != CONN_DONE && c->state != CONN_LINGER) {
      c->write_failed = 1;
      conn_close(c);
    }
    return;
  }
  write_wire_buf(c, "", 0, enc, n, 1);
}

static void write_raw(http_conn *c, const char *a, size_t alen, const char *b, size_t blen) {
  write_buf(c, a, alen, (char *)b, blen, 0);
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  http_conn *c = h->data;
  if (c->tls) {
    *buf = uv_buf_init(c->tls_in, HTTP_TLS_READ_BYTES);
    return;
  }
  if (c->state == CONN_LINGER) c->in_len = c->in_off = 0; /* dropped as they come */
  /* Compact parsed bytes away first so the buffer only holds what is still unparsed (the
   * parser keeps no pointers into it between calls: callbacks copy what they need). */
  if (c->in_off) {
    memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
    c->in_len -= c->in_off;
    c->in_off = 0;
  }
  if (buf_reserve(&c->in, &c->in_cap, c->in_len + 65536)) {
    *buf = uv_buf_init(NULL, 0);
    return;
  }
  *buf = uv_buf_init(c->in + c->in_len, (unsigned)(c->in_cap - c->in_len));
}

/* Reads while the connection can take input: not past the unparsed-bytes bound, not while its
 * unsent output is over the output bound (a peer that does not read is not read either). */
static void reading_update(http_conn *c) {
  if (c->state == CONN_CLOSING || c->state == CONN_DONE) return;
  const http_limits *l = &c->srv->limits;
  int want = c->state == CONN_LINGER ||
             (!c->peer_eof && c->in_len - c->in_off <= l->max_pipeline_bytes &&
              c->pending_bytes <= l->max_conn_output_bytes);
  if (want && !c->reading) {
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0) c->reading = 1;
  } else if (!want && c->reading) {
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = 0;
  }
}

/* The body of an error the HTTP layer answers itself: the handler's (in the dialect of the
 * path, when it knows one) or the default OpenAI-shaped one. malloc'd; NULL when out of
 * memory. */
static char *error_body(http_conn *c, int status, const char *msg, const char *code) {
  const http_handler *h = &c->srv->handler;
  const char *path = c->path;
  char tmp[256];
  if (!path && c->url_done) { /* the headers are not complete: the path from the raw target */
    const char *url = c->hbuf + c->url_off;
    snprintf(tmp, sizeof tmp, "%.*s", (int)strcspn(url, "?#"), url);
    path = tmp;
  }
  char *b = h->error_body ? h->error_body(h->ud, path, status, msg) : NULL;
  if (b) return b;
  size_t cap = strlen(msg) + 160;
  if (!(b = malloc(cap))) return NULL;
  snprintf(b, cap,
           "{\"error\":{\"message\":\"%s\",\"type\":\"%s\",\"param\":null,\"code\":%s%s%s}}",
           msg, status >= 500 ? "server_error" : "invalid_request_error", code ? "\"" : "",
           code ? code : "null", code ? "\"" : "");
  return b;
}

static void reject(http_conn *c, int status, const char *msg) {
  char *early = c->early.body;
  c->early.body = NULL;
  c->state = CONN_BUSY;
  if (!c->req.method_str) c->req.method_str = "-";
  c->close_after = 1;
  c->linger = 1;
  char extra[sizeof c->early.extra] = "";
  if (early) memcpy(extra, c->early.extra, sizeof extra);
  else early = error_body(c, status, msg, NULL);
  if (!early) {
    conn_close(c);
    return;
  }
  http_respond_take(c, status, "application/json", extra, early, strlen(early));
}

static const char *reject_text(int status) {
  switch (status) {
  case 413: return "request body too large";
  case 414: return "request target too long";
  case 431: return "request headers too large";
  default: return "request refused";
  }
}

/* Ends the connection once what is queued is written: the write side is shut (the peer reads
 * EOF after the answer) and the handles close when the shutdown completes. */
static void conn_end(http_conn *c);

static int is_tchar(unsigned char ch) {
  return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
         (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

/* The chunk-size line at in_off, before llhttp reads it. llhttp 8 refuses some valid chunk
 * extensions (a quoted-pair inside a quoted value, whitespace before ';'), and quiver uses
 * none, so they are checked here against RFC 9112's grammar
 *   chunk-size *( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] ) CRLF
 * and cut out of the buffer. Returns 0 when the line is ready for llhttp, 1 when it is not
 * complete yet, -1 when it is malformed. */
static int chunk_line_fix(http_conn *c) {
  char *b = c->in + c->in_off;
  size_t n = c->in_len - c->in_off, eol = 0;
  while (eol + 1 < n && !(b[eol] == '\r' && b[eol + 1] == '\n')) eol++;
  if (eol + 1 >= n) return n > 4096 ? -1 : 1;
  size_t i = 0;
  while (i < eol && ((b[i] >= '0' && b[i] <= '9') || ((b[i] | 0x20) >= 'a' && (b[i] | 0x20) <= 'f')))
    i++;
  if (i == 0 || i == eol) return 0; /* no extension: llhttp judges the size */
  size_t ext = i, j = i;
#define BWS() while (j < eol && (b[j] == ' ' || b[j] == '\t')) j++
  while (j < eol) {
    BWS();
    if (j >= eol || b[j] != ';') return -1;
    j++;
    BWS();
    size_t t = j;
    while (j < eol && is_tchar((unsigned char)b[j])) j++;
    if (j == t) return -1;
    BWS();
    if (j < eol && b[j] == '=') {
      j++;
      BWS();
      if (j < eol && b[j] == '"') {
        for (j++;; j++) {
          if (j >= eol) return -1;
          unsigned char ch = (unsigned char)b[j];
          if (ch == '"') break;
          if (ch == '\\') {
            if (++j >= eol || ((unsigned char)b[j] < 0x20 && b[j] != '\t') || b[j] == 0x7f) return -1;
          } else if ((ch < 0x20 && ch != '\t') || ch == 0x7f) {
            return -1;
          }
        }
        j++;
      } else {
        t = j;
        while (j < eol && is_tchar((unsigned char)b[j])) j++;
        if (j == t) return -1;
      }
    }
  }
#undef BWS
  memmove(b + ext, b + eol, n - eol);
  c->in_len -= eol - ext;
  return 0;
}

/* Parses buffered bytes while no request is being answered; dispatches complete requests. */
static void conn_process(http_conn *c) {
  if (c->in_process) return;
  c->in_process = 1;
  while ((c->state == CONN_IDLE || c->state == CONN_READING) &&
         c->pending_bytes <= c->srv->limits.max_conn_output_bytes) {
    if (c->in_off >= c->in_len) break;
    if (c->chunk_line) {
      int fix = chunk_line_fix(c);
      if (fix > 0) break; /* wait for the rest of the line */
      if (fix < 0) {
        reject(c, 400, "malformed chunk extension");
        break;
      }
      c->chunk_line = 0;
    }
    const char *start = c->in + c->in_off;
    c->exec_start = start;
    llhttp_errno_t e = llhttp_execute(&c->parser, start, c->in_len - c->in_off);
    if (e == HPE_OK) {
      c->in_off = c->in_len;
      break;
    }
    if (e == HPE_PAUSED) {
      const char *pos = llhttp_get_error_pos(&c->parser);
      c->in_off = (size_t)(pos - c->in);
      llhttp_resume(&c->parser);
      if (c->chunk_line) continue; /* before a chunk-size line, not at a message end */
      uv_timer_stop(&c->timer);
      c->state = CONN_BUSY;
      c->resp_bytes = 0;
      if (!c->req.keep_alive || c->srv->draining || (c->peer_eof && c->in_off >= c->in_len))
        c->close_after = 1;
      if (c->early_status) {
        char *b = c->early.body;
        c->early.body = NULL;
        char extra[sizeof c->early.extra];
        memcpy(extra, c->early.extra, sizeof extra);
        if (b) http_respond_take(c, c->early_status, "application/json", extra, b, strlen(b));
        else http_respond(c, c->early_status, "application/json", extra, "{}", 2);
      } else {
        c->srv->handler.on_request(c->srv->handler.ud, c, &c->req);
      }
      continue; /* answered synchronously: go on with pipelined bytes */
    }
    if (c->reject_status) {
      reject(c, c->reject_status, c->reject_msg ? c->reject_msg : reject_text(c->reject_status));
    } else {
      char msg[160];
      snprintf(msg, sizeof msg, "malformed HTTP request: %s", llhttp_errno_name(e));
      reject(c, 400, msg);
    }
    break;
  }
  /* Nothing complete is left: shrink an emptied read buffer so idle connections hold none. */
  if (c->in_off >= c->in_len && c->in_cap > 0 && c->state != CONN_CLOSING) {
    free(c->in);
    c->in = NULL;
    c->in_cap = c->in_len = c->in_off = 0;
  }
  c->in_process = 0;
  /* A half-closed peer gets the answers to what it sent, then the connection ends (a request
   * it left unfinished never will be). */
  if (c->peer_eof && (c->state == CONN_IDLE || c->state == CONN_READING) &&
      (c->in_off >= c->in_len || c->chunk_line)) {
    conn_end(c);
    return;
  }
  reading_update(c);
}

/* ---- TLS hooks (the layer itself is tls.c) ---- */

static int tls_plain(void *ud, const char *data, size_t len) {
  http_conn *c = ud;
  if (c->in_off) { /* as on_alloc: keep only unparsed bytes */
    memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
    c->in_len -= c->in_off;
    c->in_off = 0;
  }
  if (buf_reserve(&c->in, &c->in_cap, c->in_len + len)) return -1;
  memcpy(c->in + c->in_len, data, len);
  c->in_len += len;
  return 0;
}

static void tls_send(void *ud, const char *data, size_t len) {
  write_wire_buf(ud, data, len, NULL, 0, 0);
}

/* Ciphertext in, plaintext on to the parser as plain bytes go. The header timeout armed at
 * accept covers the handshake too (handshake records never re-arm it), so a stalled handshake
 * is closed like a stalled request line. */
static void tls_on_read(http_conn *c, const char *data, size_t len) {
  size_t before = c->in_len - c->in_off;
  tls_io io = {.ud = c, .plain = tls_plain, .send = tls_send};
  int rc = tls_conn_feed(c->tls, data, len, &io);
  if (rc || c->state == CONN_CLOSING) {
    conn_close(c);
    return;
  }
  if (c->in_len - c->in_off == before) return;
  if (c->state == CONN_IDLE && !c->hdr_armed) {
    c->hdr_armed = 1;
    timer_arm(c, c->srv->limits.header_timeout_ms);
  }
  conn_process(c);
}

static void tls_send_close_notify(http_conn *c) {
  char *out = NULL;
  size_t n = 0;
  tls_conn_close_notify(c->tls, &out, &n);
  if (out) write_wire_buf(c, out, n, NULL, 0, 0);
  free(out);
}

void http_server_use_tls(http_server *s, tls_ctx *ctx) { s->tls = ctx; }

void http_conn_add_headers(http_conn *c, const char *lines) {
  size_t old = c->extra_headers ? strlen(c->extra_headers) : 0, n = strlen(lines);
  char *h = realloc(c->extra_headers, old + n + 1);
  if (!h) return; /* the answer goes out without them */
  memcpy(h + old, lines, n + 1);
  c->extra_headers = h;
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  http_conn *c = st->data;
  if (c->state == CONN_LINGER) {
    c->in_len = c->in_off = 0;
    if (nread < 0) conn_close(c);
    return;
  }
  if (nread < 0) {
    /* EOF after complete requests (a client that shut its write side) still gets the answers;
     * a reset, or EOF inside a request, drops the connection (an unanswered request is
     * aborted). */
    int pending_work = c->state == CONN_BUSY || c->in_off < c->in_len;
    if (nread == UV_EOF && pending_work) {
      c->peer_eof = 1;
      if (c->reading) {
        uv_read_stop(st);
        c->reading = 0;
      }
      if (c->state != CONN_BUSY) conn_process(c);
      else if (conn_probe(c)) conn_close(c);
      return;
    }
    conn_close(c);
    return;
  }
  if (nread == 0) return;
  if (c->tls) {
    tls_on_read(c, buf->base, (size_t)nread);
    return;
  }
  c->in_len += (size_t)nread;
  if (c->state == CONN_IDLE && !c->hdr_armed) {
    c->hdr_armed = 1;
    timer_arm(c, c->srv->limits.header_timeout_ms);
  }
  conn_process(c);
}

static int count_peer(const http_server *s, const char *peer) {
  int n = 0;
  for (const http_conn *c = s->conns; c; c = c->next)
    n += c->state != CONN_CLOSING && c->state != CONN_LINGER && !strcmp(c->peer, peer);
  return n;
}

static void on_connection(uv_stream_t *ls, int status) {
  http_server *s = ls->data;
  if (status < 0) return;
  http_conn *c = calloc(1, sizeof *c);
  if (!c) return;
  c->srv = s;
  uv_tcp_init(s->loop, &c->tcp);
  uv_timer_init(s->loop, &c->timer);
  c->tcp.data = c;
  c->timer.data = c;
  c->n_handles_open = 2;
  snprintf(c->peer, sizeof c->peer, "-");
  if (uv_accept(ls, (uv_stream_t *)&c->tcp) != 0) {
    c->state = CONN_CLOSING;
    c->n_handles_open = 2;
    c->srv->n_conns++; /* conn_free counts it out */
    c->next = s->conns;
    if (s->conns) s->conns->prev = c;
    s->conns = c;
    uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  struct sockaddr_storage sa;
  int salen = sizeof sa;
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&sa, &salen) == 0) {
    if (sa.ss_family == AF_INET) uv_ip4_name((struct sockaddr_in *)&sa, c->peer, sizeof c->peer);
    else if (sa.ss_family == AF_INET6)
      uv_ip6_name((struct sockaddr_in6 *)&sa, c->peer, sizeof c->peer);
  }
  int same_peer = count_peer(s, c->peer);
  c->next = s->conns;
  if (s->conns) s->conns->prev = c;
  s->conns = c;
  s->n_conns++;
  llhttp_init(&c->parser, HTTP_REQUEST, &http_parser_settings);
  c->parser.data = c;
  c->state = CONN_IDLE;
  if (s->tls && (!(c->tls = tls_conn_create(s->tls)) || !(c->tls_in = malloc(HTTP_TLS_READ_BYTES)))) {
    conn_close(c);
    return;
  }
  /* A new connection must deliver a request's headers within the header timeout. */
  c->hdr_armed = 1;
  timer_arm(c, s->limits.header_timeout_ms);
  int32_t n_open = s->n_conns - s->n_linger;
  if (n_open > s->limits.max_connections + s->limits.probe_connections ||
      same_peer >= s->limits.max_connections_per_client) {
    /* Full: say so (503, Connection: close) rather than resetting the connection. */
    reject(c, 503, same_peer >= s->limits.max_connections_per_client
                       ? "too many connections from this address; retry later"
                       : "too many connections; retry later");
    if (c->state == CONN_LINGER) reading_update(c);
    return;
  }
  /* Over the limit but within the reserve: only the probe path is served. */
  c->overflow = n_open > s->limits.max_connections;
  reading_update(c);
}

/* ---- responses ---- */

static void on_shutdown(uv_shutdown_t *req, int status) {
  http_conn *c = req->data;
  free(req);
  /* A lingering connection stays open for reading until EOF or its timer. */
  if (c->state == CONN_LINGER && status == 0) return;
  conn_close(c);
}

static void conn_end(http_conn *c) {
  if (c->tls) tls_send_close_notify(c);
  int linger = c->linger && !c->peer_eof;
  c->state = linger ? CONN_LINGER : CONN_DONE;
  if (linger && !c->counted_linger) {
    c->counted_linger = 1;
    c->srv->n_linger++;
  }
  c->in_off = c->in_len;
  if (!linger && c->reading) {
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = 0;
  }
  /* A peer that never reads is cut off by the timer. */
  timer_arm(c, linger ? c->srv->limits.linger_ms : c->srv->limits.idle_timeout_ms);
  uv_shutdown_t *sh = malloc(sizeof *sh);
  if (!sh) {
    conn_close(c);
    return;
  }
  sh->data = c;
  if (uv_shutdown(sh, (uv_stream_t *)&c->tcp, on_shutdown) < 0) {
    free(sh);
    conn_close(c);
    return;
  }
  if (linger) reading_update(c);
}

static void finish_request(http_conn *c) {
  double ms = (double)(uv_hrtime() - c->req.start_ns) / 1e6;
  if (c->srv->limits.access_log)
    qv_log(QV_LOG_INFO, "access %s \"%s %s\" %d %zu %.1fms", c->peer,
           c->req.method_str ? c->req.method_str : "-", c->req.url ? c->req.url : "-", c->status,
           c->resp_bytes, c->req.start_ns ? ms : 0.0);
  c->ctx = NULL;
  c->streaming = 0;
  c->sse = 0;
  /* A keep-alive request pipelined behind the one answered when the drain began gets one
   * answer (with Connection: close) instead of vanishing. */
  int drain_next = c->close_after && c->srv->draining && c->req.keep_alive && !c->linger &&
                   !c->peer_eof && !c->drain_answered && c->in_off < c->in_len;
  if (c->close_after && !drain_next) {
    conn_end(c);
    return;
  }
  if (drain_next) {
    c->drain_answered = 1;
    c->close_after = 0;
  }
  c->state = CONN_IDLE;
  request_reset(c);
  /* The next request's header timeout starts with its first byte (or now, when pipelined bytes
   * are already buffered and may be parsed); until then the idle timeout runs, also while a
   * peer that does not read holds the next request back. */
  c->hdr_armed = c->in_off < c->in_len && c->pending_bytes <= c->srv->limits.max_conn_output_bytes;
  timer_arm(c, c->hdr_armed ? c->srv->limits.header_timeout_ms : c->srv->limits.idle_timeout_ms);
  conn_process(c);
}

static int header_block(char *out, size_t cap, http_conn *c, int status, const char *ctype,
                        const char *extra, const char *length_line) {
  return snprintf(out, cap,
                  "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n%sConnection: %s\r\n%s%s\r\n", status,
                  http_status_text(status), ctype, length_line,
                  c->close_after ? "close" : "keep-alive", extra ? extra : "",
                  c->extra_headers ? c->extra_headers : "");
}

/* ---- UTF-8 repair ---- */

/* Length of the valid UTF-8 sequence at s (n bytes available), or 0 when invalid. */
static size_t utf8_seq(const unsigned char *s, size_t n) {
  unsigned char b = s[0];
  if (b < 0x80) return 1;
  size_t len;
  unsigned lo = 0x80, hi = 0xBF;
  if (b >= 0xC2 && b <= 0xDF) len = 2;
  else if (b >= 0xE0 && b <= 0xEF) {
    len = 3;
    if (b == 0xE0) lo = 0xA0;
    if (b == 0xED) hi = 0x9F; /* no surrogates */
  } else if (b >= 0xF0 && b <= 0xF4) {
    len = 4;
    if (b == 0xF0) lo = 0x90;
    if (b == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (n < len) return 0;
  if (s[1] < lo || s[1] > hi) return 0;
  for (size_t i = 2; i < len; i++)
    if (s[i] < 0x80 || s[i] > 0xBF) return 0;
  return len;
}

char *http_utf8_repair(const char *str, size_t len, size_t *out_len) {
  const unsigned char *s = (const unsigned char *)str;
  size_t i = 0, bad = 0;
  while (i < len) {
    /* ASCII eight bytes at a time: a 30 MB tokenize answer is checked in a few ms. */
    if (i + 8 <= len) {
      uint64_t w;
      memcpy(&w, s + i, 8);
      if (!(w & 0x8080808080808080ull)) {
        i += 8;
        continue;
      }
    }
    if (s[i] < 0x80) {
      i++;
      continue;
    }
    size_t k = utf8_seq(s + i, len - i);
    if (!k) {
      bad++;
      k = 1;
    }
    i += k;
  }
  if (!bad) return NULL;
  char *out = malloc(len + 2 * bad + 1);
  if (!out) return NULL;
  size_t o = 0;
  for (i = 0; i < len;) {
    size_t k = s[i] < 0x80 ? 1 : utf8_seq(s + i, len - i);
    if (!k) {
      memcpy(out + o, "\xEF\xBF\xBD", 3);
      o += 3;
      i++;
      continue;
    }
    memcpy(out + o, s + i, k);
    o += k;
    i += k;
  }
  out[o] = '\0';
  *out_len = o;
  return out;
}

static int is_text_type(const char *ctype) {
  return strstr(ctype, "json") || strstr(ctype, "event-stream");
}

void http_respond_take(http_conn *c, int status, const char *content_type,
                       const char *extra_headers, char *body, size_t body_len) {
  if (c->state != CONN_BUSY) {
    free(body);
    return;
  }
  if (c->srv->draining) c->close_after = 1;
  /* Clients that do not read their large answers must not hold the server's memory without
   * bound: past the server-wide budget a large answer becomes a small 503. */
  if (body_len > 4096 && c->srv->pending_bytes + body_len > c->srv->limits.max_total_output_bytes) {
    free(body);
    body = error_body(c, 503, "server busy: too many unsent answer bytes; retry later",
                      "output_budget");
    if (!body) {
      conn_close(c);
      return;
    }
    body_len = strlen(body);
    status = 503;
    content_type = "application/json";
    extra_headers = "";
  }
  if (is_text_type(content_type)) {
    size_t fixed_len = 0;
    char *fixed = http_utf8_repair(body, body_len, &fixed_len);
    if (fixed) {
      free(body);
      body = fixed;
      body_len = fixed_len;
    }
  }
  c->status = status;
  char len_line[64];
  snprintf(len_line, sizeof len_line, "Content-Length: %zu\r\n", body_len);
  size_t extra_len = (extra_headers ? strlen(extra_headers) : 0) +
                     (c->extra_headers ? strlen(c->extra_headers) : 0);
  size_t cap = 256 + strlen(content_type) + extra_len;
  char *head = malloc(cap);
  if (!head) {
    free(body);
    conn_close(c);
    return;
  }
  int n = header_block(head, cap, c, status, content_type, extra_headers, len_line);
  if (c->is_head) {
    free(body);
    body = NULL;
    body_len = 0;
  }
  write_buf(c, head, (size_t)n, body, body_len, 1);
  free(head);
  if (c->state == CONN_CLOSING) return;
  finish_request(c);
}

void http_respond(http_conn *c, int status, const char *content_type, const char *extra_headers,
                  const char *body, size_t body_len) {
  if (c->state != CONN_BUSY) return;
  char *copy = malloc(body_len + 1);
  if (!copy) {
    conn_close(c);
    return;
  }
  memcpy(copy, body, body_len);
  copy[body_len] = '\0';
  http_respond_take(c, status, content_type, extra_headers, copy, body_len);
}

void http_stream_begin(http_conn *c, int status, const char *content_type,
                       const char *extra_headers) {
  if (c->state != CONN_BUSY || c->streaming) return;
  if (c->srv->draining) c->close_after = 1;
  c->status = status;
  c->streaming = 1;
  c->sse = strstr(content_type, "event-stream") != NULL;
  size_t extra_len = (extra_headers ? strlen(extra_headers) : 0) +
                     (c->extra_headers ? strlen(c->extra_headers) : 0);
  size_t cap = 256 + strlen(content_type) + extra_len;
  char *head = malloc(cap);
  if (!head) {
    conn_close(c);
    return;
  }
  int n = header_block(head, cap, c, status, content_type, extra_headers,
                       "Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n");
  write_raw(c, head, (size_t)n, NULL, 0);
  free(head);
}

void http_stream_write(http_conn *c, const char *data, size_t len) {
  if (c->state != CONN_BUSY || !c->streaming || len == 0) return;
  size_t fixed_len = 0;
  char *fixed = http_utf8_repair(data, len, &fixed_len);
  if (fixed) {
    data = fixed;
    len = fixed_len;
  }
  char pre[32];
  int n = snprintf(pre, sizeof pre, "%zx\r\n", len);
  char *tmp = malloc((size_t)n + len + 2);
  if (!tmp) {
    free(fixed);
    conn_close(c);
    return;
  }
  memcpy(tmp, pre, (size_t)n);
  memcpy(tmp + n, data, len);
  memcpy(tmp + n + len, "\r\n", 2);
  write_raw(c, tmp, (size_t)n + len + 2, NULL, 0);
  free(tmp);
  free(fixed);
}

void http_stream_end(http_conn *c) {
  if (c->state != CONN_BUSY || !c->streaming) return;
  write_raw(c, "0\r\n\r\n", 5, NULL, 0);
  if (c->state == CONN_CLOSING) return;
  finish_request(c);
}

void http_conn_kill(http_conn *c) {
  if (c->state == CONN_CLOSING || c->state == CONN_DONE || c->state == CONN_LINGER) return;
  c->status = c->status ? c->status : 499;
  c->ctx = NULL;
  c->state = CONN_IDLE; /* finished from the handler's point of view: no on_abort */
  conn_close(c);
}

void http_conn_set_ctx(http_conn *c, void *ctx) { c->ctx = ctx; }
void *http_conn_get_ctx(const http_conn *c) { return c->ctx; }
size_t http_conn_pending_bytes(const http_conn *c) { return c->pending_bytes; }

const char *http_request_header(const http_request *req, const char *name) {
  for (int32_t i = 0; i < req->n_headers; i++)
    if (!strcasecmp(req->headers[i].name, name)) return req->headers[i].value;
  return NULL;
}

/* ---- server ---- */

int http_server_create(uv_loop_t *loop, const char *host, int port, const http_limits *limits,
                       const http_handler *handler, http_server **out, qv_error *err) {
  http_server *s = calloc(1, sizeof *s);
  if (!s) return qv_error_set(err, QV_ENOMEM, "http: out of memory");
  s->loop = loop;
  s->limits = *limits;
  s->handler = *handler;
  struct sockaddr_storage sa;
  int rc;
  if (strchr(host, ':')) rc = uv_ip6_addr(host, port, (struct sockaddr_in6 *)&sa);
  else rc = uv_ip4_addr(host, port, (struct sockaddr_in *)&sa);
  if (rc) {
    free(s);
    return qv_error_set(err, QV_EINVAL, "http: bad listen address '%s'", host);
  }
  uv_tcp_init(loop, &s->listener);
  s->listener.data = s;
  s->listener_open = 1;
  rc = uv_tcp_bind(&s->listener, (struct sockaddr *)&sa, 0);
  if (!rc) rc = uv_listen((uv_stream_t *)&s->listener, 511, on_connection);
  if (rc) {
    s->closing = 1;
    http_server_close(s);
    return qv_error_set(err, QV_EIO, "http: cannot listen on %s:%d: %s", host, port,
                        uv_strerror(rc));
  }
  struct sockaddr_storage bound;
  int blen = sizeof bound;
  uv_tcp_getsockname(&s->listener, (struct sockaddr *)&bound, &blen);
  s->port = bound.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&bound)->sin6_port)
                                        : ntohs(((struct sockaddr_in *)&bound)->sin_port);
  *out = s;
  return 0;
}

int http_server_port(const http_server *s) { return s->port; }

static void on_listener_closed(uv_handle_t *h) {
  http_server *s = h->data;
  s->listener_open = 0;
  if (s->closing && s->n_conns == 0) free(s);
}

static void listener_close(http_server *s) {
  if (!uv_is_closing((uv_handle_t *)&s->listener))
    uv_close((uv_handle_t *)&s->listener, on_listener_closed);
}

void http_server_drain(http_server *s) {
  if (s->draining) return;
  s->draining = 1;
  for (http_conn *c = s->conns, *next; c; c = next) {
    next = c->next;
    if (c->state == CONN_IDLE) conn_close(c);
    else c->close_after = 1;
  }
}

int http_server_n_busy(const http_server *s) {
  int n = 0;
  /* A connection still flushing its last response counts: closing it would cut that off. */
  for (const http_conn *c = s->conns; c; c = c->next)
    n += c->state == CONN_BUSY || c->state == CONN_DONE;
  return n;
}

void http_server_close(http_server *s) {
  if (!s) return;
  s->closing = 1;
  s->draining = 1;
  for (http_conn *c = s->conns, *next; c; c = next) {
    next = c->next;
    conn_close(c);
  }
  if (!s->listener_open && s->n_conns == 0) free(s); /* all callbacks already ran */
  else listener_close(s);
}
