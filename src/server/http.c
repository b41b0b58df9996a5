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

/* Pipelined bytes buffered while a request is being answered before reading pauses. */
#define HTTP_MAX_INBUF_BUSY (256u * 1024u)
/* TLS: ciphertext read per uv read callback (the plaintext lands in the input buffer). */
#define HTTP_TLS_READ_BYTES 65536u

enum conn_state {
  CONN_IDLE = 0, /* waiting for the first byte of a request */
  CONN_READING,  /* inside a request's headers or body */
  CONN_BUSY,     /* request complete, handler answering */
  CONN_DONE,     /* last response queued; closing once it is written */
  CONN_CLOSING,  /* handles closing: nothing more happens */
};

struct http_server {
  uv_loop_t *loop;       /* borrowed */
  uv_tcp_t listener;
  http_limits limits;
  http_handler handler;
  http_conn *conns;      /* doubly linked list of open connections */
  int32_t n_conns;
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

  char *in;              /* [in_cap] received bytes; [in_off, in_len) not parsed yet */
  size_t in_len, in_cap, in_off;
  int reading;           /* uv_read_start is active */
  int in_process;        /* conn_process is on the stack (trampoline guard) */

  /* The request being read: url and headers as NUL-separated strings in hbuf, with offsets. */
  char *hbuf;            /* [hbuf_cap] */
  size_t hbuf_len, hbuf_cap;
  size_t *hoff;          /* [2 * hoff_cap]: name offset, value offset per header */
  int32_t n_hdr, hoff_cap;
  int last_was_value;    /* header callback state: 1 after a value fragment */
  size_t url_off;
  size_t header_bytes;   /* counted against max_header_bytes */
  char *body;            /* [body_cap] */
  size_t body_len, body_cap;
  int reject_status;     /* set by a parser callback that refused the request (413/431) */
  http_header *headers;  /* [n_hdr] built at message end */
  char *path;            /* malloc'd copy of the path without the query */
  http_request req;

  void *ctx;             /* handler's per-request context */
  int streaming;         /* chunked response started */
  int status;            /* status of the response being written */
  size_t resp_bytes;     /* bytes of the current response */
  size_t pending_bytes;  /* queued in uv_write, not yet completed */
  int close_after;       /* close once the current response is written */
  int write_failed;
  char *extra_headers;   /* owned or NULL: header lines added to the current response */
  tls_conn *tls;         /* owned or NULL: the TLS layer between the socket and the parser */
  char *tls_in;          /* [HTTP_TLS_READ_BYTES] ciphertext read buffer, owned */
  int tls_hs_armed;      /* 1: the handshake's deadline (the header timeout, from its first
                            byte) runs and also covers the first request's headers; 2: used */
};

typedef struct write_req {
  uv_write_t req;
  http_conn *c;
  size_t len;
  char data[];           /* [len] */
} write_req;

void http_limits_default(http_limits *l) {
  l->max_header_bytes = 16 * 1024;
  l->max_headers = 100;
  l->max_body_bytes = 8u * 1024 * 1024;
  l->header_timeout_ms = 10000;
  l->body_timeout_ms = 30000;
  l->idle_timeout_ms = 60000;
  l->max_connections = 1024;
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
  case 415: return "Unsupported Media Type";
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
  c->url_off = 0;
  c->header_bytes = 0;
  c->body_len = 0;
  c->reject_status = 0;
  free(c->headers);
  c->headers = NULL;
  free(c->path);
  c->path = NULL;
  free(c->extra_headers);
  c->extra_headers = NULL;
  memset(&c->req, 0, sizeof c->req);
}

static void timer_arm(http_conn *c, uint64_t ms);

static int on_message_begin(llhttp_t *p) {
  http_conn *c = conn_of(p);
  request_reset(c);
  c->state = CONN_READING;
  c->req.start_ns = uv_hrtime();
  /* A TLS connection's first request shares the deadline its handshake started. */
  if (c->tls_hs_armed == 1) c->tls_hs_armed = 2;
  else timer_arm(c, c->srv->limits.header_timeout_ms);
  return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len) {
  http_conn *c = conn_of(p);
  if (count_header_bytes(c, len)) return HPE_USER;
  return hbuf_append(c, at, len) ? HPE_USER : 0;
}

static int on_url_complete(llhttp_t *p) { return hbuf_end(conn_of(p)) ? HPE_USER : 0; }

static int on_header_field(llhttp_t *p, const char *at, size_t len) {
  http_conn *c = conn_of(p);
  if (count_header_bytes(c, len + 4)) return HPE_USER;
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
  }
  return hbuf_append(c, at, len) ? HPE_USER : 0;
}

static int on_header_field_complete(llhttp_t *p) {
  http_conn *c = conn_of(p);
  if (hbuf_end(c)) return HPE_USER;
  c->hoff[2 * (c->n_hdr - 1) + 1] = c->hbuf_len;
  return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len) {
  http_conn *c = conn_of(p);
  if (count_header_bytes(c, len)) return HPE_USER;
  c->last_was_value = 1;
  return hbuf_append(c, at, len) ? HPE_USER : 0;
}

static int on_header_value_complete(llhttp_t *p) {
  http_conn *c = conn_of(p);
  c->last_was_value = 1;
  return hbuf_end(c) ? HPE_USER : 0;
}

static void write_raw(http_conn *c, const char *a, size_t alen, const char *b, size_t blen);

static int on_headers_complete(llhttp_t *p) {
  http_conn *c = conn_of(p);
  if (p->flags & F_CONTENT_LENGTH && p->content_length > c->srv->limits.max_body_bytes) {
    c->reject_status = 413;
    return HPE_USER;
  }
  /* Clients that wait for permission before sending a body (curl does above 1 KiB). */
  for (int32_t i = 0; i < c->n_hdr; i++) {
    size_t vo = c->hoff[2 * i + 1];
    if (vo == (size_t)-1) continue;
    if (!strcasecmp(c->hbuf + c->hoff[2 * i], "expect") &&
        !strcasecmp(c->hbuf + vo, "100-continue")) {
      static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
      write_raw(c, cont, sizeof cont - 1, NULL, 0);
    }
  }
  timer_arm(c, c->srv->limits.body_timeout_ms);
  return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len) {
  http_conn *c = conn_of(p);
  if (c->body_len + len > c->srv->limits.max_body_bytes) {
    c->reject_status = 413;
    return HPE_USER;
  }
  if (buf_reserve(&c->body, &c->body_cap, c->body_len + len + 1)) return HPE_USER;
  memcpy(c->body + c->body_len, at, len);
  c->body_len += len;
  return 0;
}

static int on_message_complete(llhttp_t *p) {
  http_conn *c = conn_of(p);
  if (buf_reserve(&c->body, &c->body_cap, c->body_len + 1)) return HPE_USER;
  c->body[c->body_len] = '\0';
  c->headers = calloc((size_t)(c->n_hdr ? c->n_hdr : 1), sizeof *c->headers);
  if (!c->headers) return HPE_USER;
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
  if (!c->path) return HPE_USER;
  memcpy(c->path, url, plen);
  c->path[plen] = '\0';
  c->req.method = llhttp_get_method(p);
  c->req.method_str = llhttp_method_name((llhttp_method_t)c->req.method);
  c->req.url = url;
  c->req.path = c->path;
  c->req.headers = c->headers;
  c->req.n_headers = n;
  c->req.body = c->body;
  c->req.body_len = c->body_len;
  c->req.keep_alive = llhttp_should_keep_alive(p);
  return HPE_PAUSED;
}

static const llhttp_settings_t http_parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_url_complete = on_url_complete,
    .on_header_field = on_header_field,
    .on_header_field_complete = on_header_field_complete,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
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
  request_reset(c);
  free(c->in);
  free(c->hbuf);
  free(c->hoff);
  free(c->body);
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

static void on_timer(uv_timer_t *t) {
  http_conn *c = t->data;
  if (c->state == CONN_READING) {
    /* A request that did not arrive in time: answer 408 and close. */
    static const char body[] =
        "{\"error\":{\"message\":\"request timed out\",\"type\":\"invalid_request_error\","
        "\"param\":null,\"code\":\"timeout\"}}";
    c->state = CONN_BUSY;
    c->req.method_str = c->req.method_str ? c->req.method_str : "-";
    c->close_after = 1;
    http_respond(c, 408, "application/json", "", body, sizeof body - 1);
  } else if (c->state == CONN_IDLE || c->state == CONN_DONE) {
    conn_close(c);
  }
}

static void timer_arm(http_conn *c, uint64_t ms) {
  if (c->state == CONN_CLOSING) return;
  uv_timer_start(&c->timer, on_timer, ms, 0);
}

static void on_write_done(uv_write_t *w, int status) {
  write_req *wr = (write_req *)w;
  http_conn *c = wr->c;
  c->pending_bytes -= wr->len;
  free(wr);
  if (status < 0) c->write_failed = 1;
  if (c->state == CONN_CLOSING) return;
  if (status < 0) conn_close(c);
}

/* Queues a + b as one write to the socket (b may be NULL). */
static void write_wire(http_conn *c, const char *a, size_t alen, const char *b, size_t blen) {
  if (c->state == CONN_CLOSING || c->state == CONN_DONE) return;
  write_req *wr = malloc(sizeof *wr + alen + blen);
  if (!wr) {
    conn_close(c);
    return;
  }
  wr->c = c;
  wr->len = alen + blen;
  memcpy(wr->data, a, alen);
  if (blen) memcpy(wr->data + alen, b, blen);
  uv_buf_t buf = uv_buf_init(wr->data, (unsigned)wr->len);
  c->pending_bytes += wr->len;
  c->resp_bytes += wr->len;
  int rc = uv_write(&wr->req, (uv_stream_t *)&c->tcp, &buf, 1, on_write_done);
  if (rc < 0) {
    c->pending_bytes -= wr->len;
    free(wr);
    c->write_failed = 1;
    conn_close(c);
  }
}

/* Queues a + b as one write, encrypted first on a TLS connection. */
static void write_raw(http_conn *c, const char *a, size_t alen, const char *b, size_t blen) {
  if (!c->tls) {
    write_wire(c, a, alen, b, blen);
    return;
  }
  if (c->state == CONN_CLOSING || c->state == CONN_DONE) return;
  char *enc = NULL;
  size_t n = 0;
  if (tls_conn_encrypt(c->tls, a, alen, b, blen, &enc, &n)) {
    free(enc);
    c->write_failed = 1;
    conn_close(c);
    return;
  }
  write_wire(c, enc, n, NULL, 0);
  free(enc);
}

static void conn_process(http_conn *c);
static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  http_conn *c = h->data;
  if (c->tls) {
    *buf = uv_buf_init(c->tls_in, HTTP_TLS_READ_BYTES);
    return;
  }
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

static void reading_update(http_conn *c) {
  if (c->state == CONN_CLOSING || c->state == CONN_DONE) return;
  int want = !(c->state == CONN_BUSY && c->in_len - c->in_off > HTTP_MAX_INBUF_BUSY);
  if (want && !c->reading) {
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0) c->reading = 1;
  } else if (!want && c->reading) {
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = 0;
  }
}

static void reject(http_conn *c, int status, const char *msg) {
  char body[256];
  int n = snprintf(body, sizeof body,
                   "{\"error\":{\"message\":\"%s\",\"type\":\"invalid_request_error\","
                   "\"param\":null,\"code\":null}}",
                   msg);
  c->state = CONN_BUSY;
  if (!c->req.method_str) c->req.method_str = "-";
  c->close_after = 1;
  http_respond(c, status, "application/json", "", body, (size_t)n);
}

/* Parses buffered bytes while no request is being answered; dispatches complete requests. */
static void conn_process(http_conn *c) {
  if (c->in_process) return;
  c->in_process = 1;
  while (c->state == CONN_IDLE || c->state == CONN_READING) {
    if (c->in_off >= c->in_len) break;
    const char *start = c->in + c->in_off;
    llhttp_errno_t e = llhttp_execute(&c->parser, start, c->in_len - c->in_off);
    if (e == HPE_OK) {
      c->in_off = c->in_len;
      break;
    }
    if (e == HPE_PAUSED) {
      const char *pos = llhttp_get_error_pos(&c->parser);
      c->in_off = (size_t)(pos - c->in);
      llhttp_resume(&c->parser);
      uv_timer_stop(&c->timer);
      c->state = CONN_BUSY;
      c->resp_bytes = 0;
      if (!c->req.keep_alive || c->srv->draining) c->close_after = 1;
      c->srv->handler.on_request(c->srv->handler.ud, c, &c->req);
      continue; /* answered synchronously: go on with pipelined bytes */
    }
    if (c->reject_status) {
      reject(c, c->reject_status,
             c->reject_status == 413 ? "request body too large" : "request headers too large");
    } else {
      char msg[160];
      snprintf(msg, sizeof msg, "malformed HTTP request: %s", llhttp_errno_name(e));
      reject(c, 400, msg);
    }
    break;
  }
  c->in_process = 0;
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

static void tls_send(void *ud, const char *data, size_t len) { write_wire(ud, data, len, NULL, 0); }

/* Ciphertext in: the handshake and the first request's headers must arrive within one header
 * timeout from the handshake's first byte (not re-armed by later records); plaintext goes on to
 * the parser as plain bytes do. */
static void tls_on_read(http_conn *c, const char *data, size_t len) {
  int handshaking = !tls_conn_ready(c->tls);
  if (handshaking && !c->tls_hs_armed) {
    c->tls_hs_armed = 1;
    timer_arm(c, c->srv->limits.header_timeout_ms);
  }
  size_t before = c->in_len - c->in_off;
  tls_io io = {.ud = c, .plain = tls_plain, .send = tls_send};
  int rc = tls_conn_feed(c->tls, data, len, &io);
  if (rc || c->state == CONN_CLOSING) {
    conn_close(c);
    return;
  }
  if (c->in_len - c->in_off == before) return;
  if (c->state == CONN_IDLE && c->tls_hs_armed != 1) timer_arm(c, c->srv->limits.header_timeout_ms);
  conn_process(c);
}

static void tls_send_close_notify(http_conn *c) {
  char *out = NULL;
  size_t n = 0;
  tls_conn_close_notify(c->tls, &out, &n);
  if (out) write_wire(c, out, n, NULL, 0);
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
  if (nread < 0) {
    /* EOF or reset: a partial request is dropped and an unanswered one aborted. Half-closed
     * clients are treated as gone: a request needs its reader. */
    conn_close(c);
    return;
  }
  if (nread == 0) return;
  if (c->tls) {
    tls_on_read(c, buf->base, (size_t)nread);
    return;
  }
  c->in_len += (size_t)nread;
  if (c->state == CONN_IDLE) timer_arm(c, c->srv->limits.header_timeout_ms);
  conn_process(c);
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
  c->next = s->conns;
  if (s->conns) s->conns->prev = c;
  s->conns = c;
  s->n_conns++;
  if (uv_accept(ls, (uv_stream_t *)&c->tcp) != 0 || s->draining ||
      s->n_conns > s->limits.max_connections) {
    c->state = CONN_CLOSING;
    uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  struct sockaddr_storage sa;
  int salen = sizeof sa;
  snprintf(c->peer, sizeof c->peer, "-");
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&sa, &salen) == 0) {
    if (sa.ss_family == AF_INET) uv_ip4_name((struct sockaddr_in *)&sa, c->peer, sizeof c->peer);
    else if (sa.ss_family == AF_INET6)
      uv_ip6_name((struct sockaddr_in6 *)&sa, c->peer, sizeof c->peer);
  }
  llhttp_init(&c->parser, HTTP_REQUEST, &http_parser_settings);
  c->parser.data = c;
  c->state = CONN_IDLE;
  if (s->tls && (!(c->tls = tls_conn_create(s->tls)) || !(c->tls_in = malloc(HTTP_TLS_READ_BYTES)))) {
    conn_close(c);
    return;
  }
  timer_arm(c, s->limits.idle_timeout_ms);
  reading_update(c);
}

/* ---- responses ---- */

static void on_shutdown(uv_shutdown_t *req, int status) {
  http_conn *c = req->data;
  free(req);
  conn_close(c);
}

static void finish_request(http_conn *c) {
  double ms = (double)(uv_hrtime() - c->req.start_ns) / 1e6;
  if (c->srv->limits.access_log)
    qv_log(QV_LOG_INFO, "access %s \"%s %s\" %d %zu %.1fms", c->peer,
           c->req.method_str ? c->req.method_str : "-", c->req.url ? c->req.url : "-", c->status,
           c->resp_bytes, c->req.start_ns ? ms : 0.0);
  c->ctx = NULL;
  c->streaming = 0;
  if (c->close_after) {
    /* Let the queued bytes reach the peer, then close; pipelined bytes are dropped. A peer
     * that never reads is cut off by the idle timer. */
    if (c->tls) tls_send_close_notify(c);
    c->state = CONN_DONE;
    c->in_off = c->in_len;
    if (c->reading) {
      uv_read_stop((uv_stream_t *)&c->tcp);
      c->reading = 0;
    }
    timer_arm(c, c->srv->limits.idle_timeout_ms);
    uv_shutdown_t *sh = malloc(sizeof *sh);
    if (!sh) {
      conn_close(c);
      return;
    }
    sh->data = c;
    if (uv_shutdown(sh, (uv_stream_t *)&c->tcp, on_shutdown) < 0) {
      free(sh);
      conn_close(c);
    }
    return;
  }
  c->state = CONN_IDLE;
  request_reset(c);
  timer_arm(c, c->srv->limits.idle_timeout_ms);
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

void http_respond(http_conn *c, int status, const char *content_type, const char *extra_headers,
                  const char *body, size_t body_len) {
  if (c->state != CONN_BUSY) return;
  if (c->srv->draining) c->close_after = 1;
  c->status = status;
  char len_line[64];
  snprintf(len_line, sizeof len_line, "Content-Length: %zu\r\n", body_len);
  size_t extra_len = (extra_headers ? strlen(extra_headers) : 0) +
                     (c->extra_headers ? strlen(c->extra_headers) : 0);
  size_t cap = 256 + strlen(content_type) + extra_len;
  char *head = malloc(cap);
  if (!head) {
    conn_close(c);
    return;
  }
  int n = header_block(head, cap, c, status, content_type, extra_headers, len_line);
  write_raw(c, head, (size_t)n, body, body_len);
  free(head);
  if (c->state == CONN_CLOSING) return;
  finish_request(c);
}

void http_stream_begin(http_conn *c, int status, const char *content_type,
                       const char *extra_headers) {
  if (c->state != CONN_BUSY || c->streaming) return;
  if (c->srv->draining) c->close_after = 1;
  c->status = status;
  c->streaming = 1;
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
  char pre[32];
  int n = snprintf(pre, sizeof pre, "%zx\r\n", len);
  char *tmp = malloc((size_t)n + len + 2);
  if (!tmp) {
    conn_close(c);
    return;
  }
  memcpy(tmp, pre, (size_t)n);
  memcpy(tmp + n, data, len);
  memcpy(tmp + n + len, "\r\n", 2);
  write_raw(c, tmp, (size_t)n + len + 2, NULL, 0);
  free(tmp);
}

void http_stream_end(http_conn *c) {
  if (c->state != CONN_BUSY || !c->streaming) return;
  write_raw(c, "0\r\n\r\n", 5, NULL, 0);
  if (c->state == CONN_CLOSING) return;
  finish_request(c);
}

void http_conn_kill(http_conn *c) {
  if (c->state == CONN_CLOSING || c->state == CONN_DONE) return;
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
  listener_close(s);
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
