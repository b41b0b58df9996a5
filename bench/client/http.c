/* HTTP/1.1 client over libuv + llhttp for the load generator (see http.h).
 *
 * Each connection carries at most one request at a time (no pipelining: servers handle
 * pipelined streaming responses poorly and vLLM's client does not pipeline either). A finished
 * keep-alive connection goes back to the idle set; requests pick an idle one before opening a
 * new one, so --max-concurrency N settles on N connections. */
#include "http.h"

#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef struct conn conn;

struct bench_http {
  uv_loop_t *loop;                 /* borrowed */
  struct sockaddr_storage addr;    /* the resolved server address */
  char host_hdr[300];              /* value of the Host header */
  char prefix[512];                /* path prefix from base_url, no trailing '/' */
  char *auth;                      /* "Authorization: Bearer <key>\r\n" or NULL; owned */
  llhttp_settings_t settings;
  conn *all;                       /* every open connection (doubly linked) */
  conn *idle;                      /* idle keep-alive connections, most recent first */
  int64_t n_connects;
  int destroying;
};

struct conn {
  uv_tcp_t tcp;
  uv_connect_t connect_req;
  llhttp_t parser;
  bench_http *client;
  conn *prev, *next;               /* in bench_http.all */
  conn *idle_next;                 /* in bench_http.idle while idle */
  int connected, closing, idle;
  /* The request in flight (busy) */
  int busy;
  char *req;                       /* [req_len] request bytes; owned while busy */
  size_t req_len;
  bench_http_cbs cbs;
  void *arg;
  int reused;                      /* sent on a connection that served an earlier request */
  int got_bytes;                   /* a response byte arrived */
  int retried;
  int msg_done, keep_alive;
  uint64_t now_ns;                 /* time of the read being parsed */
  char hdr_name[32];
  size_t hdr_name_len;
  int hdr_is_ct;
  char ct[96];                     /* Content-Type value, truncated */
  size_t ct_len;
  char rbuf[65536];                /* socket read buffer */
};

static void conn_close(conn *k);
static void conn_fail(conn *k, int rc, const char *msg, uint64_t now);
static int conn_connect(bench_http *c, conn **out, qv_error *err);

/* ---- llhttp callbacks ---- */

static int on_header_field(llhttp_t *p, const char *at, size_t len) {
  conn *k = p->data;
  size_t room = sizeof k->hdr_name - 1 - k->hdr_name_len;
  size_t n = len < room ? len : room;
  memcpy(k->hdr_name + k->hdr_name_len, at, n);
  k->hdr_name_len += n;
  k->hdr_name[k->hdr_name_len] = '\0';
  return 0;
}

static int on_header_field_complete(llhttp_t *p) {
  conn *k = p->data;
  k->hdr_is_ct = !strcasecmp(k->hdr_name, "content-type");
  if (k->hdr_is_ct) k->ct_len = 0;
  k->hdr_name_len = 0;
  return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len) {
  conn *k = p->data;
  if (!k->hdr_is_ct) return 0;
  size_t room = sizeof k->ct - 1 - k->ct_len;
  size_t n = len < room ? len : room;
  memcpy(k->ct + k->ct_len, at, n);
  k->ct_len += n;
  k->ct[k->ct_len] = '\0';
  return 0;
}

static int on_header_value_complete(llhttp_t *p) {
  conn *k = p->data;
  k->hdr_is_ct = 0;
  return 0;
}

static int on_headers_complete(llhttp_t *p) {
  conn *k = p->data;
  k->ct[k->ct_len] = '\0';
  int is_sse = strstr(k->ct, "text/event-stream") != NULL;
  if (k->cbs.on_headers) k->cbs.on_headers(k->arg, (int)p->status_code, is_sse);
  return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len) {
  conn *k = p->data;
  if (k->cbs.on_body) k->cbs.on_body(k->arg, at, len, k->now_ns);
  return 0;
}

static int on_message_complete(llhttp_t *p) {
  conn *k = p->data;
  k->msg_done = 1;
  k->keep_alive = llhttp_should_keep_alive(p);
  return HPE_PAUSED; /* nothing after the response belongs to us */
}

/* ---- connection life ---- */

static void close_cb(uv_handle_t *h) {
  conn *k = h->data;
  bench_http *c = k->client;
  if (k->prev) k->prev->next = k->next;
  else c->all = k->next;
  if (k->next) k->next->prev = k->prev;
  free(k->req);
  free(k);
}

static void idle_remove(conn *k) {
  if (!k->idle) return;
  for (conn **p = &k->client->idle; *p; p = &(*p)->idle_next)
    if (*p == k) {
      *p = k->idle_next;
      break;
    }
  k->idle = 0;
  k->idle_next = NULL;
}

static void conn_close(conn *k) {
  if (k->closing) return;
  k->closing = 1;
  idle_remove(k);
  uv_close((uv_handle_t *)&k->tcp, close_cb);
}

/* Ends the request on k with rc and hands it to its owner; k goes idle or closes. */
static void conn_finish(conn *k, int rc, const char *msg, uint64_t now) {
  bench_http_cbs cbs = k->cbs;
  void *arg = k->arg;
  k->busy = 0;
  free(k->req);
  k->req = NULL;
  if (rc == 0 && k->keep_alive && !k->client->destroying && !k->closing) {
    llhttp_reset(&k->parser);
    k->idle = 1;
    k->idle_next = k->client->idle;
    k->client->idle = k;
  } else {
    conn_close(k);
  }
  if (cbs.on_done) cbs.on_done(arg, rc, msg, now);
}

/* One uv_write with its own copy of the bytes: the response can end the request (and free
 * k->req) before the write completes, e.g. a server answering 4xx while still receiving. */
typedef struct conn_write_req {
  uv_write_t w;
  conn *k;
  char buf[]; /* the request bytes */
} conn_write_req;

static void write_cb(uv_write_t *w, int status) {
  conn_write_req *wr = (conn_write_req *)w;
  conn *k = wr->k;
  free(wr);
  if (status < 0 && k->busy && !k->closing) {
    char msg[160];
    snprintf(msg, sizeof msg, "sending the request: %s", uv_strerror(status));
    conn_fail(k, QV_EIO, msg, uv_hrtime());
  }
}

static void conn_write(conn *k) {
  conn_write_req *wr = malloc(sizeof *wr + k->req_len);
  if (!wr) {
    conn_fail(k, QV_ENOMEM, "out of memory sending the request", uv_hrtime());
    return;
  }
  wr->k = k;
  memcpy(wr->buf, k->req, k->req_len);
  uv_buf_t b = uv_buf_init(wr->buf, (unsigned)k->req_len);
  int rc = uv_write(&wr->w, (uv_stream_t *)&k->tcp, &b, 1, write_cb);
  if (rc < 0) {
    free(wr);
    char msg[160];
    snprintf(msg, sizeof msg, "sending the request: %s", uv_strerror(rc));
    conn_fail(k, QV_EIO, msg, uv_hrtime());
  }
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  conn *k = h->data;
  *buf = uv_buf_init(k->rbuf, sizeof k->rbuf);
}

/* The request on k failed. A request that died on a reused connection before any response byte
 * (the server closed the idle connection as we wrote) is retried once on a fresh connection. */
static void conn_fail(conn *k, int rc, const char *msg, uint64_t now) {
  if (!k->busy) {
    conn_close(k);
    return;
  }
  if (k->reused && !k->got_bytes && !k->retried && !k->client->destroying) {
    conn *n;
    if (conn_connect(k->client, &n, NULL) == 0) {
      n->busy = 1;
      n->req = k->req;
      n->req_len = k->req_len;
      n->cbs = k->cbs;
      n->arg = k->arg;
      n->retried = 1;
      k->req = NULL;
      k->busy = 0;
      conn_close(k);
      return;
    }
  }
  conn_finish(k, rc, msg, now);
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  conn *k = s->data;
  uint64_t now = uv_hrtime();
  if (nread == 0) return;
  if (nread < 0) {
    if (!k->busy) {
      conn_close(k);
      return;
    }
    if (nread == UV_EOF && k->got_bytes) {
      /* A body delimited by the end of the connection ends here. */
      k->now_ns = now;
      llhttp_errno_t e = llhttp_finish(&k->parser);
      if (k->msg_done || e == HPE_PAUSED) {
        k->keep_alive = 0;
        conn_finish(k, 0, NULL, now);
        return;
      }
    }
    char msg[200];
    snprintf(msg, sizeof msg, "connection %s before the response completed",
             nread == UV_EOF ? "closed by the server" : uv_strerror((int)nread));
    conn_fail(k, QV_EIO, msg, now);
    return;
  }
  if (!k->busy) { /* bytes nobody asked for */
    conn_close(k);
    return;
  }
  k->got_bytes = 1;
  k->now_ns = now;
  llhttp_errno_t e = llhttp_execute(&k->parser, buf->base, (size_t)nread);
  if (k->msg_done) {
    conn_finish(k, 0, NULL, now);
  } else if (e != HPE_OK) {
    char msg[200];
    snprintf(msg, sizeof msg, "malformed HTTP response: %s", llhttp_get_error_reason(&k->parser));
    k->keep_alive = 0;
    conn_finish(k, QV_EFORMAT, msg, now);
  }
}

static void connect_cb(uv_connect_t *r, int status) {
  conn *k = r->data;
  if (k->closing) return;
  if (status < 0) {
    char msg[400];
    snprintf(msg, sizeof msg, "connecting to %s: %s", k->client->host_hdr, uv_strerror(status));
    k->retried = 1; /* a fresh connection is not retried */
    conn_fail(k, QV_EIO, msg, uv_hrtime());
    return;
  }
  k->connected = 1;
  uv_tcp_nodelay(&k->tcp, 1);
  int rc = uv_read_start((uv_stream_t *)&k->tcp, alloc_cb, read_cb);
  if (rc < 0) {
    char msg[400];
    snprintf(msg, sizeof msg, "reading from %s: %s", k->client->host_hdr, uv_strerror(rc));
    conn_fail(k, QV_EIO, msg, uv_hrtime());
    return;
  }
  if (k->busy) conn_write(k);
}

static int conn_connect(bench_http *c, conn **out, qv_error *err) {
  conn *k = calloc(1, sizeof *k);
  if (!k) return qv_error_set(err, QV_ENOMEM, "out of memory for a connection");
  k->client = c;
  int rc = uv_tcp_init(c->loop, &k->tcp);
  if (rc < 0) {
    free(k);
    return qv_error_set(err, QV_EIO, "creating a socket: %s", uv_strerror(rc));
  }
  k->tcp.data = k;
  llhttp_init(&k->parser, HTTP_RESPONSE, &c->settings);
  k->parser.data = k;
  k->next = c->all;
  if (c->all) c->all->prev = k;
  c->all = k;
  k->connect_req.data = k;
  rc = uv_tcp_connect(&k->connect_req, &k->tcp, (const struct sockaddr *)&c->addr, connect_cb);
  if (rc < 0) {
    conn_close(k);
    return qv_error_set(err, QV_EIO, "connecting to %s: %s", c->host_hdr, uv_strerror(rc));
  }
  c->n_connects++;
  *out = k;
  return 0;
}

/* ---- public API ---- */

static int parse_url(const char *url, char *host, size_t host_cap, int *port, char *prefix, size_t prefix_cap,
                     qv_error *err) {
  if (!strncmp(url, "https://", 8))
    return qv_error_set(err, QV_EUNSUPPORTED, "https is not supported (use http://, e.g. through a local TLS proxy)");
  if (strncmp(url, "http://", 7))
    return qv_error_set(err, QV_EINVAL, "base URL '%s' must start with http://", url);
  const char *p = url + 7, *h_end;
  if (*p == '[') {
    h_end = strchr(p, ']');
    if (!h_end) return qv_error_set(err, QV_EINVAL, "bad IPv6 address in '%s'", url);
    p++;
  } else {
    h_end = p + strcspn(p, ":/");
  }
  size_t hlen = (size_t)(h_end - p);
  if (hlen == 0 || hlen >= host_cap) return qv_error_set(err, QV_EINVAL, "bad host in base URL '%s'", url);
  memcpy(host, p, hlen);
  host[hlen] = '\0';
  p = h_end + (*h_end == ']');
  *port = 80;
  if (*p == ':') {
    char *end;
    long v = strtol(p + 1, &end, 10);
    if (end == p + 1 || v < 1 || v > 65535 || (*end && *end != '/'))
      return qv_error_set(err, QV_EINVAL, "bad port in base URL '%s'", url);
    *port = (int)v;
    p = end;
  }
  size_t plen = strlen(p);
  while (plen && p[plen - 1] == '/') plen--;
  if (plen >= prefix_cap) return qv_error_set(err, QV_EINVAL, "base URL path too long");
  memcpy(prefix, p, plen);
  prefix[plen] = '\0';
  return 0;
}

int bench_http_create(uv_loop_t *loop, const char *base_url, const char *api_key, bench_http **out,
                      qv_error *err) {
  *out = NULL;
  char host[256];
  int port = 80;
  bench_http *c = calloc(1, sizeof *c);
  if (!c) return qv_error_set(err, QV_ENOMEM, "out of memory");
  int rc = parse_url(base_url, host, sizeof host, &port, c->prefix, sizeof c->prefix, err);
  if (rc) {
    free(c);
    return rc;
  }
  c->loop = loop;
  if (strchr(host, ':')) snprintf(c->host_hdr, sizeof c->host_hdr, "[%s]:%d", host, port);
  else snprintf(c->host_hdr, sizeof c->host_hdr, "%s:%d", host, port);
  if (api_key && *api_key) {
    if (strpbrk(api_key, "\r\n")) {
      free(c);
      return qv_error_set(err, QV_EINVAL, "the API key must not contain line breaks");
    }
    size_t n = strlen(api_key) + 32;
    c->auth = malloc(n);
    if (!c->auth) {
      free(c);
      return qv_error_set(err, QV_ENOMEM, "out of memory");
    }
    snprintf(c->auth, n, "Authorization: Bearer %s\r\n", api_key);
  }
  char port_s[16];
  snprintf(port_s, sizeof port_s, "%d", port);
  uv_getaddrinfo_t gai;
  struct addrinfo hints = {0};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  rc = uv_getaddrinfo(loop, &gai, NULL, host, port_s, &hints);
  if (rc < 0 || !gai.addrinfo) {
    free(c->auth);
    free(c);
    return qv_error_set(err, QV_EIO, "resolving '%s': %s", host, rc < 0 ? uv_strerror(rc) : "no address");
  }
  memcpy(&c->addr, gai.addrinfo->ai_addr, gai.addrinfo->ai_addrlen);
  uv_freeaddrinfo(gai.addrinfo);
  llhttp_settings_init(&c->settings);
  c->settings.on_header_field = on_header_field;
  c->settings.on_header_field_complete = on_header_field_complete;
  c->settings.on_header_value = on_header_value;
  c->settings.on_header_value_complete = on_header_value_complete;
  c->settings.on_headers_complete = on_headers_complete;
  c->settings.on_body = on_body;
  c->settings.on_message_complete = on_message_complete;
  *out = c;
  return 0;
}

void bench_http_destroy(bench_http *c) {
  if (!c) return;
  c->destroying = 1;
  for (conn *k = c->all; k; k = k->next)
    if (k->busy) conn_finish(k, QV_ECLOSED, "the client shut down", uv_hrtime());
  for (conn *k = c->all; k; k = k->next) conn_close(k);
  while (c->all) uv_run(c->loop, UV_RUN_ONCE);
  free(c->auth);
  free(c);
}

int64_t bench_http_n_connects(const bench_http *c) { return c->n_connects; }

int bench_http_cancel(bench_http *c, void *arg, int rc, const char *msg) {
  for (conn *k = c->all; k; k = k->next)
    if (k->busy && k->arg == arg) {
      k->keep_alive = 0; /* the rest of its response must not reach the next request */
      conn_finish(k, rc, msg, uv_hrtime());
      return 0;
    }
  return QV_ENOTFOUND;
}

int bench_http_send(bench_http *c, const bench_http_req *r, const bench_http_cbs *cbs, void *arg, qv_error *err) {
  const char *method = r->method, *path = r->path, *body = r->body;
  size_t body_len = r->body_len;
  if (c->destroying) return qv_error_set(err, QV_ECLOSED, "the client is shutting down");
  if (!body) body_len = 0;
  char head[1400];
  int hn = snprintf(head, sizeof head,
                    "%s %s%s HTTP/1.1\r\nHost: %s\r\nUser-Agent: quiver-bench\r\nAccept: */*\r\n"
                    "Connection: keep-alive\r\n%s%sContent-Length: %zu\r\n\r\n",
                    method, c->prefix, path, c->host_hdr, c->auth ? c->auth : "",
                    body ? "Content-Type: application/json\r\n" : "", body_len);
  if (hn < 0 || (size_t)hn >= sizeof head) return qv_error_set(err, QV_EINVAL, "request path too long");
  char *req = malloc((size_t)hn + body_len);
  if (!req) return qv_error_set(err, QV_ENOMEM, "out of memory for a request");
  memcpy(req, head, (size_t)hn);
  if (body_len) memcpy(req + hn, body, body_len);
  conn *k = c->idle; /* closing connections leave the idle list at once */
  if (k) {
    c->idle = k->idle_next;
    k->idle_next = NULL;
  }
  int reused = k != NULL;
  if (!k) {
    int rc = conn_connect(c, &k, err);
    if (rc) {
      free(req);
      return rc;
    }
  }
  k->idle = 0;
  k->busy = 1;
  k->req = req;
  k->req_len = (size_t)hn + body_len;
  k->cbs = *cbs;
  k->arg = arg;
  k->reused = reused;
  k->got_bytes = k->retried = k->msg_done = k->keep_alive = 0;
  k->hdr_name_len = k->ct_len = 0;
  k->ct[0] = '\0';
  if (k->connected) conn_write(k);
  return 0;
}

/* ---- synchronous helper ---- */

typedef struct sync_call {
  int done, rc, status;
  char *buf;
  size_t len, cap;
  int oom;
  char msg[256];
} sync_call;

static void sync_headers(void *arg, int status, int is_sse) { ((sync_call *)arg)->status = status; }

static void sync_body(void *arg, const char *data, size_t len, uint64_t now) {
  sync_call *s = arg;
  if (s->oom) return;
  if (s->len + len + 1 > s->cap) {
    size_t nc = s->cap ? s->cap : 4096;
    while (nc < s->len + len + 1) nc *= 2;
    char *nb = realloc(s->buf, nc);
    if (!nb) {
      s->oom = 1;
      return;
    }
    s->buf = nb;
    s->cap = nc;
  }
  memcpy(s->buf + s->len, data, len);
  s->len += len;
  s->buf[s->len] = '\0';
}

static void sync_done(void *arg, int rc, const char *msg, uint64_t now) {
  sync_call *s = arg;
  s->done = 1;
  s->rc = rc;
  if (msg) snprintf(s->msg, sizeof s->msg, "%s", msg);
}

int bench_http_call(bench_http *c, const bench_http_req *req, bench_http_resp *resp, qv_error *err) {
  sync_call s = {0};
  memset(resp, 0, sizeof *resp);
  static const bench_http_cbs cbs = {sync_headers, sync_body, sync_done};
  int rc = bench_http_send(c, req, &cbs, &s, err);
  if (rc) return rc;
  while (!s.done) uv_run(c->loop, UV_RUN_ONCE);
  if (s.rc) {
    free(s.buf);
    return qv_error_set(err, s.rc, "%s %s: %s", req->method, req->path, s.msg);
  }
  if (s.oom) {
    free(s.buf);
    return qv_error_set(err, QV_ENOMEM, "out of memory reading the response of %s", req->path);
  }
  if (!s.buf) {
    s.buf = calloc(1, 1);
    if (!s.buf) return qv_error_set(err, QV_ENOMEM, "out of memory");
  }
  resp->status = s.status;
  resp->body = s.buf;
  resp->len = s.len;
  return 0;
}
