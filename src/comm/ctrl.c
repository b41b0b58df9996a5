/* Control channel over TCP (see ctrl.h for the wire format, the handshake and what is trusted).
 * Sockets are non-blocking and every wait is a poll() against a deadline, so no peer can make a
 * call block past its timeout (a frame's bytes must all arrive within peer_timeout_ms of its
 * first byte). HMAC-SHA256 and random nonces come from OpenSSL's libcrypto. */
#include "comm/ctrl.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"

enum { NONCE_BYTES = 32, KEY_BYTES = 32, AUTH_PAYLOAD = NONCE_BYTES + 4 + 32 };

struct qv_ctrl_listener {
  int fd;
};

struct qv_ctrl {
  int fd;     /* owned; -1 once closed */
  int broken; /* a framing error or loss closed the link */
  int peer_rank;
  uint32_t max_msg;
  int heartbeat_ms, peer_timeout_ms;
  uint8_t tx_key[KEY_BYTES], rx_key[KEY_BYTES];
  size_t tx_key_len, rx_key_len;
  uint8_t token[256]; /* handshake key: the shared token */
  size_t token_len;
  uint64_t tx_seq, rx_seq; /* next sequence number per direction */
  double last_tx, last_rx; /* monotonic ms of the last frame sent / valid frame received */
  uint8_t *rx_buf;         /* owned, [payload + tag] of the last frame, rx_cap bytes */
  size_t rx_cap;
};

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void put_u16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)(v >> 8);
  p[1] = (uint8_t)v;
}
static void put_u32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (24 - 8 * i));
}
static void put_u64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (56 - 8 * i));
}
static uint16_t get_u16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t get_u32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static uint64_t get_u64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v = v << 8 | p[i];
  return v;
}

/* out = HMAC-SHA256(key, part[0] | part[1] | ...). */
typedef struct span {
  const void *p;
  size_t n;
} span;

static int hmac(const uint8_t *key, size_t key_len, const span *parts, int n_parts, uint8_t out[32],
                qv_error *err) {
  EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
  EVP_MAC_CTX *ctx = mac ? EVP_MAC_CTX_new(mac) : NULL;
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
                         OSSL_PARAM_construct_end()};
  int ok = ctx && EVP_MAC_init(ctx, key, key_len, params);
  for (int i = 0; ok && i < n_parts; i++)
    if (parts[i].n) ok = EVP_MAC_update(ctx, parts[i].p, parts[i].n);
  size_t out_len = 0;
  ok = ok && EVP_MAC_final(ctx, out, &out_len, 32) && out_len == 32;
  EVP_MAC_CTX_free(ctx);
  EVP_MAC_free(mac);
  return ok ? 0 : qv_error_set(err, QV_EIO, "ctrl: HMAC-SHA256 failed (libcrypto)");
}

static int set_socket_opts(int fd, qv_error *err) {
  int one = 1;
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
    return qv_error_set(err, QV_EIO, "ctrl: fcntl: %s", strerror(errno));
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one,
             sizeof one); /* latency only; failure is harmless */
  return 0;
}

/* Waits for events on fd until deadline: 1 ready, 0 timed out, < 0 error. A deadline already
 * past still looks once, so what has arrived is never mistaken for silence. */
static int wait_fd(int fd, short events, double deadline, qv_error *err) {
  for (;;) {
    double left = deadline - now_ms();
    struct pollfd p = {.fd = fd, .events = events};
    int rc = poll(&p, 1, left > 0 ? (int)(left + 0.999) : 0);
    if (rc > 0) return 1;
    if (rc == 0 && left <= 0) return 0;
    if (rc < 0 && errno != EINTR)
      return qv_error_set(err, QV_EIO, "ctrl: poll: %s", strerror(errno));
    if (now_ms() >= deadline) return 0;
  }
}

static int write_all(int fd, const void *buf, size_t n, double deadline, qv_error *err) {
  const uint8_t *p = buf;
  while (n) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w > 0) {
      p += w;
      n -= (size_t)w;
      continue;
    }
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      int rc = wait_fd(fd, POLLOUT, deadline, err);
      if (rc < 0) return rc;
      if (rc == 0) return qv_error_set(err, QV_ECLOSED, "ctrl: peer not reading (send timed out)");
      continue;
    }
    return qv_error_set(err, QV_ECLOSED, "ctrl: send: %s", w < 0 ? strerror(errno) : "closed");
  }
  return 0;
}

/* Reads exactly n bytes by deadline. started says whether part of a frame was already read,
 * which turns an end of stream into a truncated frame. */
static int read_exact(int fd, void *buf, size_t n, double deadline, int started, qv_error *err) {
  uint8_t *p = buf;
  size_t got = 0;
  while (got < n) {
    ssize_t r = recv(fd, p + got, n - got, 0);
    if (r > 0) {
      got += (size_t)r;
      continue;
    }
    if (r == 0) {
      if (started || got)
        return qv_error_set(err, QV_EFORMAT,
                            "ctrl: truncated frame (peer closed after %zu of %zu bytes)",
                            got, n);
      return qv_error_set(err, QV_ECLOSED, "ctrl: peer closed the connection");
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      int rc = wait_fd(fd, POLLIN, deadline, err);
      if (rc < 0) return rc;
      if (rc == 0)
        return qv_error_set(err, (started || got) ? QV_EFORMAT : QV_ECLOSED,
                            "ctrl: %s (%zu of %zu bytes by the deadline)",
                            (started || got) ? "truncated frame" : "nothing received", got, n);
      continue;
    }
    return qv_error_set(err, QV_ECLOSED, "ctrl: recv: %s", strerror(errno));
  }
  return 0;
}

static int send_frame(qv_ctrl *c, const uint8_t *key, size_t key_len, int type, const void *payload,
                      size_t n, double deadline, qv_error *err) {
  uint8_t hdr[QV_CTRL_HEADER_BYTES], tag[QV_CTRL_TAG_BYTES];
  memcpy(hdr, "QVC1", 4);
  put_u16(hdr + 4, QV_CTRL_VERSION);
  put_u16(hdr + 6, (uint16_t)type);
  put_u64(hdr + 8, c->tx_seq);
  put_u32(hdr + 16, (uint32_t)n);
  span parts[] = {{hdr, sizeof hdr}, {payload, n}};
  int rc = hmac(key, key_len, parts, 2, tag, err);
  if (!rc) rc = write_all(c->fd, hdr, sizeof hdr, deadline, err);
  if (!rc && n) rc = write_all(c->fd, payload, n, deadline, err);
  if (!rc) rc = write_all(c->fd, tag, sizeof tag, deadline, err);
  if (rc) return rc;
  c->tx_seq++;
  c->last_tx = now_ms();
  return 0;
}

/* Reads one frame: 1 valid (type and payload in *msg), 0 dropped (bad tag or sequence; logged),
 * or a negative code for a framing error or a closed peer (the caller closes the link). The
 * first byte must arrive by deadline; the rest within peer_timeout_ms after it. */
static int recv_frame(qv_ctrl *c, const uint8_t *key, size_t key_len, double deadline,
                      qv_ctrl_msg *msg, qv_error *err) {
  uint8_t hdr[QV_CTRL_HEADER_BYTES];
  int rc = read_exact(c->fd, hdr, 1, deadline, 0, err);
  if (rc) return rc;
  double frame_deadline = now_ms() + c->peer_timeout_ms;
  rc = read_exact(c->fd, hdr + 1, sizeof hdr - 1, frame_deadline, 1, err);
  if (rc) return rc;
  if (memcmp(hdr, "QVC1", 4) != 0) {
    QV_LOGW("ctrl: dropping connection: bad frame magic");
    return qv_error_set(err, QV_EFORMAT, "ctrl: bad frame magic (not a quiver control stream)");
  }
  uint16_t version = get_u16(hdr + 4), type = get_u16(hdr + 6);
  uint64_t seq = get_u64(hdr + 8);
  uint32_t len = get_u32(hdr + 16);
  if (version != QV_CTRL_VERSION) {
    QV_LOGW("ctrl: dropping connection: protocol version %u (this side speaks %d)", version,
            QV_CTRL_VERSION);
    return qv_error_set(err, QV_EFORMAT, "ctrl: protocol version %u, expected %d", version,
                        QV_CTRL_VERSION);
  }
  if (len > c->max_msg) {
    QV_LOGW("ctrl: dropping connection: frame of %u bytes exceeds the %u-byte limit", len,
            c->max_msg);
    return qv_error_set(err, QV_ELIMIT, "ctrl: frame of %u bytes exceeds the %u-byte limit", len,
                        c->max_msg);
  }
  size_t need = (size_t)len + QV_CTRL_TAG_BYTES;
  if (need > c->rx_cap) {
    uint8_t *nb = realloc(c->rx_buf, need);
    if (!nb) return qv_error_set(err, QV_ENOMEM, "ctrl: out of memory for a %u-byte frame", len);
    c->rx_buf = nb;
    c->rx_cap = need;
  }
  rc = read_exact(c->fd, c->rx_buf, need, frame_deadline, 1, err);
  if (rc) return rc;
  uint8_t tag[QV_CTRL_TAG_BYTES];
  span parts[] = {{hdr, sizeof hdr}, {c->rx_buf, len}};
  rc = hmac(key, key_len, parts, 2, tag, err);
  if (rc) return rc;
  if (CRYPTO_memcmp(tag, c->rx_buf + len, sizeof tag) != 0) {
    QV_LOGW("ctrl: dropped a frame (type %u, %u bytes) with a bad authentication tag", type, len);
    return 0;
  }
  if (seq != c->rx_seq) {
    QV_LOGW("ctrl: dropped a frame with sequence %llu (expected %llu): replayed or reordered",
            (unsigned long long)seq, (unsigned long long)c->rx_seq);
    return 0;
  }
  c->rx_seq++;
  c->last_rx = now_ms();
  msg->type = (qv_ctrl_type)type;
  msg->payload = c->rx_buf;
  msg->n_bytes = len;
  return 1;
}

static int opts_check(const qv_ctrl_opts *o, qv_error *err) {
  if (!o || !o->token || strlen(o->token) < QV_CTRL_TOKEN_MIN || strlen(o->token) > 255)
    return qv_error_set(err, QV_EINVAL, "ctrl: the shared token must be %d..255 bytes",
                        QV_CTRL_TOKEN_MIN);
  if (o->max_msg_bytes > QV_CTRL_HARD_MAX_MSG)
    return qv_error_set(err, QV_EINVAL, "ctrl: max_msg_bytes %u exceeds %d", o->max_msg_bytes,
                        QV_CTRL_HARD_MAX_MSG);
  int hb = o->heartbeat_ms ? o->heartbeat_ms : QV_CTRL_DEFAULT_HEARTBEAT_MS;
  int to = o->peer_timeout_ms ? o->peer_timeout_ms : QV_CTRL_DEFAULT_PEER_TIMEOUT_MS;
  if (hb < 0 || to <= hb)
    return qv_error_set(err, QV_EINVAL, "ctrl: peer_timeout_ms (%d) must exceed heartbeat_ms (%d)",
                        to, hb);
  return 0;
}

static qv_ctrl *link_new(int fd, const qv_ctrl_opts *o) {
  qv_ctrl *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->fd = fd;
  c->max_msg = o->max_msg_bytes ? o->max_msg_bytes : QV_CTRL_DEFAULT_MAX_MSG;
  /* Handshake frames are small whatever the configured limit. */
  c->heartbeat_ms = o->heartbeat_ms ? o->heartbeat_ms : QV_CTRL_DEFAULT_HEARTBEAT_MS;
  c->peer_timeout_ms = o->peer_timeout_ms ? o->peer_timeout_ms : QV_CTRL_DEFAULT_PEER_TIMEOUT_MS;
  c->token_len = strlen(o->token);
  memcpy(c->token, o->token, c->token_len);
  c->last_tx = c->last_rx = now_ms();
  return c;
}

/* Session keys, one per direction, so a frame reflected back at its sender never verifies. */
static int derive_keys(qv_ctrl *c, const uint8_t *sn, const uint8_t *cn, int is_server,
                       qv_error *err) {
  uint8_t c2s[KEY_BYTES], s2c[KEY_BYTES];
  span a[] = {{"qv-ctrl c2s", 11}, {sn, NONCE_BYTES}, {cn, NONCE_BYTES}};
  span b[] = {{"qv-ctrl s2c", 11}, {sn, NONCE_BYTES}, {cn, NONCE_BYTES}};
  int rc = hmac(c->token, c->token_len, a, 3, c2s, err);
  if (!rc) rc = hmac(c->token, c->token_len, b, 3, s2c, err);
  if (rc) return rc;
  memcpy(c->tx_key, is_server ? s2c : c2s, KEY_BYTES);
  memcpy(c->rx_key, is_server ? c2s : s2c, KEY_BYTES);
  c->tx_key_len = c->rx_key_len = KEY_BYTES;
  c->tx_seq = c->rx_seq = 0;
  OPENSSL_cleanse(c->token, sizeof c->token);
  c->token_len = 0;
  c->last_tx = c->last_rx = now_ms();
  return 0;
}

static int client_proof(const qv_ctrl *c, const uint8_t *sn, const uint8_t *cn,
                        const uint8_t rank[4], uint8_t out[32], qv_error *err) {
  span p[] = {{"qv-ctrl client", 14}, {sn, NONCE_BYTES}, {cn, NONCE_BYTES}, {rank, 4}};
  return hmac(c->token, c->token_len, p, 4, out, err);
}

static int server_proof(const qv_ctrl *c, const uint8_t *sn, const uint8_t *cn, uint8_t out[32],
                        qv_error *err) {
  span p[] = {{"qv-ctrl server", 14}, {cn, NONCE_BYTES}, {sn, NONCE_BYTES}};
  return hmac(c->token, c->token_len, p, 3, out, err);
}

static int server_handshake(qv_ctrl *c, double deadline, qv_error *err) {
  uint8_t sn[NONCE_BYTES], cn[NONCE_BYTES], proof[32];
  if (RAND_bytes(sn, sizeof sn) != 1) return qv_error_set(err, QV_EIO, "ctrl: no random nonce");
  int rc = send_frame(c, c->token, c->token_len, QV_CTRL_HELLO, sn, sizeof sn, deadline, err);
  if (rc == QV_ECLOSED)
    return qv_error_set(err, QV_EAUTH, "ctrl: the peer left before the handshake");
  if (rc) return rc;
  qv_ctrl_msg m;
  uint32_t saved = c->max_msg;
  c->max_msg = AUTH_PAYLOAD;
  rc = recv_frame(c, c->token, c->token_len, deadline, &m, err);
  c->max_msg = saved;
  if (rc == QV_ECLOSED)
    return qv_error_set(err, QV_EAUTH,
                        "ctrl: the peer left or went silent during the handshake");
  if (rc < 0) return rc;
  if (rc == 0) return qv_error_set(err, QV_EAUTH, "ctrl: peer's AUTH frame failed authentication");
  if (m.type != QV_CTRL_AUTH || m.n_bytes != AUTH_PAYLOAD)
    return qv_error_set(err, QV_EAUTH, "ctrl: expected AUTH (%d bytes), got type %d of %u bytes",
                        AUTH_PAYLOAD, (int)m.type, m.n_bytes);
  memcpy(cn, m.payload, NONCE_BYTES);
  const uint8_t *rank = m.payload + NONCE_BYTES;
  rc = client_proof(c, sn, cn, rank, proof, err);
  if (rc) return rc;
  if (CRYPTO_memcmp(proof, m.payload + NONCE_BYTES + 4, 32) != 0)
    return qv_error_set(err, QV_EAUTH, "ctrl: peer's proof of the token is wrong");
  uint32_t r = get_u32(rank);
  if (r > 65535) return qv_error_set(err, QV_EAUTH, "ctrl: peer states node rank %u", r);
  c->peer_rank = (int)r;
  rc = server_proof(c, sn, cn, proof, err);
  if (!rc) rc = send_frame(c, c->token, c->token_len, QV_CTRL_AUTH_OK, proof, 32, deadline, err);
  return rc ? rc : derive_keys(c, sn, cn, 1, err);
}

static int client_handshake(qv_ctrl *c, int node_rank, double deadline, qv_error *err) {
  qv_ctrl_msg m;
  uint32_t saved = c->max_msg;
  c->max_msg = 64;
  int rc = recv_frame(c, c->token, c->token_len, deadline, &m, err);
  if (rc == 0)
    rc = qv_error_set(err, QV_EAUTH,
                      "ctrl: server's HELLO failed authentication (token mismatch?)");
  if (rc < 0) {
    c->max_msg = saved;
    return rc;
  }
  if (m.type != QV_CTRL_HELLO || m.n_bytes != NONCE_BYTES) {
    c->max_msg = saved;
    return qv_error_set(err, QV_EAUTH, "ctrl: expected HELLO, got type %d", (int)m.type);
  }
  uint8_t sn[NONCE_BYTES], cn[NONCE_BYTES], payload[AUTH_PAYLOAD], proof[32];
  memcpy(sn, m.payload, NONCE_BYTES);
  if (RAND_bytes(cn, sizeof cn) != 1) return qv_error_set(err, QV_EIO, "ctrl: no random nonce");
  memcpy(payload, cn, NONCE_BYTES);
  put_u32(payload + NONCE_BYTES, (uint32_t)node_rank);
  rc = client_proof(c, sn, cn, payload + NONCE_BYTES, payload + NONCE_BYTES + 4, err);
  if (!rc)
    rc =
        send_frame(c, c->token, c->token_len, QV_CTRL_AUTH, payload, sizeof payload, deadline, err);
  if (!rc) rc = recv_frame(c, c->token, c->token_len, deadline, &m, err);
  c->max_msg = saved;
  if (rc == 0) return qv_error_set(err, QV_EAUTH, "ctrl: server's AUTH_OK failed authentication");
  if (rc == QV_ECLOSED)
    return qv_error_set(err, QV_EAUTH,
                        "ctrl: the server closed the connection "
                        "during the handshake (token rejected?)");
  if (rc < 0) return rc;
  if (m.type != QV_CTRL_AUTH_OK || m.n_bytes != 32)
    return qv_error_set(err, QV_EAUTH, "ctrl: expected AUTH_OK, got type %d", (int)m.type);
  rc = server_proof(c, sn, cn, proof, err);
  if (rc) return rc;
  if (CRYPTO_memcmp(proof, m.payload, 32) != 0)
    return qv_error_set(err, QV_EAUTH, "ctrl: the server's proof of the token is wrong");
  return derive_keys(c, sn, cn, 0, err);
}

int qv_ctrl_listen(const char *host, int port, int *bound_port, qv_ctrl_listener **out,
                   qv_error *err) {
  if (!out || port < 0 || port > 65535)
    return qv_error_set(err, QV_EINVAL, "ctrl: bad listen port %d", port);
  *out = NULL;
  struct addrinfo hints = {
      .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
  struct addrinfo *res = NULL;
  char ps[16];
  snprintf(ps, sizeof ps, "%d", port);
  int g = getaddrinfo(host, ps, &hints, &res);
  if (g)
    return qv_error_set(err, QV_EINVAL, "ctrl: resolving %s: %s", host ? host : "*",
                        gai_strerror(g));
  int fd = -1, e = 0;
  for (struct addrinfo *a = res; a; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      e = errno;
      continue;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, 16) == 0) break;
    e = errno;
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  if (fd < 0)
    return qv_error_set(err, QV_EIO, "ctrl: listening on %s:%d: %s", host ? host : "*", port,
                        strerror(e));
  if (set_socket_opts(fd, err)) {
    close(fd);
    return err ? err->code : QV_EIO;
  }
  if (bound_port) {
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    getsockname(fd, (struct sockaddr *)&ss, &sl);
    *bound_port = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                           : ntohs(((struct sockaddr_in *)&ss)->sin_port);
  }
  qv_ctrl_listener *l = malloc(sizeof *l);
  if (!l) {
    close(fd);
    return qv_error_set(err, QV_ENOMEM, "ctrl: out of memory");
  }
  l->fd = fd;
  *out = l;
  return 0;
}

void qv_ctrl_listener_close(qv_ctrl_listener *l) {
  if (!l) return;
  close(l->fd);
  free(l);
}

int qv_ctrl_accept(qv_ctrl_listener *l, const qv_ctrl_opts *opts, int timeout_ms, qv_ctrl **out,
                   qv_error *err) {
  if (!l || !out) return qv_error_set(err, QV_EINVAL, "ctrl: accept needs a listener");
  *out = NULL;
  int rc = opts_check(opts, err);
  if (rc) return rc;
  double deadline = now_ms() + timeout_ms;
  int fd;
  for (;;) {
    fd = accept(l->fd, NULL, NULL);
    if (fd >= 0) break;
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED)
      return qv_error_set(err, QV_EIO, "ctrl: accept: %s", strerror(errno));
    rc = wait_fd(l->fd, POLLIN, deadline, err);
    if (rc < 0) return rc;
    if (rc == 0)
      return qv_error_set(err, QV_ECLOSED, "ctrl: no node connected within %d ms", timeout_ms);
  }
  rc = set_socket_opts(fd, err);
  qv_ctrl *c = rc ? NULL : link_new(fd, opts);
  if (!c) {
    close(fd);
    return rc ? rc : qv_error_set(err, QV_ENOMEM, "ctrl: out of memory");
  }
  rc = server_handshake(c, deadline, err);
  if (rc) {
    QV_LOGW("ctrl: rejected a connection: %s", err ? err->msg : qv_strerror(rc));
    qv_ctrl_close(c);
    return rc;
  }
  *out = c;
  return 0;
}

int qv_ctrl_connect(const char *host, int port, const qv_ctrl_opts *opts, int timeout_ms,
                    qv_ctrl **out, qv_error *err) {
  if (!out || !host || port <= 0 || port > 65535)
    return qv_error_set(err, QV_EINVAL, "ctrl: connect needs a host and a port 1..65535");
  *out = NULL;
  int rc = opts_check(opts, err);
  if (rc) return rc;
  if (opts->node_rank < 0 || opts->node_rank > 65535)
    return qv_error_set(err, QV_EINVAL, "ctrl: node rank %d outside 0..65535", opts->node_rank);
  double deadline = now_ms() + timeout_ms;
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
  struct addrinfo *res = NULL;
  char ps[16];
  snprintf(ps, sizeof ps, "%d", port);
  int g = getaddrinfo(host, ps, &hints, &res);
  if (g) return qv_error_set(err, QV_EINVAL, "ctrl: resolving %s: %s", host, gai_strerror(g));
  int fd = -1;
  rc = qv_error_set(err, QV_ECLOSED, "ctrl: no address for %s", host);
  for (struct addrinfo *a = res; a; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    rc = set_socket_opts(fd, err);
    if (!rc && connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
      if (errno != EINPROGRESS) {
        rc = qv_error_set(err, QV_ECLOSED, "ctrl: connecting to %s:%d: %s", host, port,
                          strerror(errno));
      } else {
        rc = wait_fd(fd, POLLOUT, deadline, err);
        int soerr = 0;
        socklen_t sl = sizeof soerr;
        if (rc == 1) getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
        if (rc == 0)
          rc = qv_error_set(err, QV_ECLOSED, "ctrl: connecting to %s:%d timed out", host, port);
        else if (rc == 1 && soerr)
          rc = qv_error_set(err, QV_ECLOSED, "ctrl: connecting to %s:%d: %s", host, port,
                            strerror(soerr));
        else if (rc == 1)
          rc = 0;
      }
    }
    if (!rc) break;
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  if (fd < 0) return rc;
  qv_ctrl *c = link_new(fd, opts);
  if (!c) {
    close(fd);
    return qv_error_set(err, QV_ENOMEM, "ctrl: out of memory");
  }
  rc = client_handshake(c, opts->node_rank, deadline, err);
  if (rc) {
    qv_ctrl_close(c);
    return rc;
  }
  *out = c;
  return 0;
}

int qv_ctrl_peer_rank(const qv_ctrl *c) { return c->peer_rank; }

static int broken(qv_ctrl *c, int rc) {
  c->broken = 1;
  if (c->fd >= 0) shutdown(c->fd, SHUT_RDWR);
  return rc;
}

int qv_ctrl_send(qv_ctrl *c, qv_ctrl_type type, const void *payload, size_t n, qv_error *err) {
  if (!c) return qv_error_set(err, QV_EINVAL, "ctrl: no link");
  if (c->broken) return qv_error_set(err, QV_ECLOSED, "ctrl: the link is closed");
  if (type != QV_CTRL_STEP && type != QV_CTRL_SHUTDOWN && type != QV_CTRL_NCCL_ID)
    return qv_error_set(err, QV_EINVAL, "ctrl: type %d cannot be sent by the caller", (int)type);
  if (n > c->max_msg)
    return qv_error_set(err, QV_ELIMIT, "ctrl: message of %zu bytes exceeds the %u-byte limit", n,
                        c->max_msg);
  if (n && !payload) return qv_error_set(err, QV_EINVAL, "ctrl: NULL payload");
  int rc =
      send_frame(c, c->tx_key, c->tx_key_len, type, payload, n, now_ms() + c->peer_timeout_ms, err);
  return rc ? broken(c, rc) : 0;
}

int qv_ctrl_poll(qv_ctrl *c, int timeout_ms, qv_ctrl_msg *msg, qv_error *err) {
  if (!c || !msg || timeout_ms < 0)
    return qv_error_set(err, QV_EINVAL, "ctrl: poll needs a link and a message");
  if (c->broken) return qv_error_set(err, QV_ECLOSED, "ctrl: the link is closed");
  double deadline = now_ms() + timeout_ms;
  for (;;) {
    double t = now_ms();
    if (t - c->last_tx >= c->heartbeat_ms) {
      int rc = send_frame(c, c->tx_key, c->tx_key_len, QV_CTRL_HEARTBEAT, NULL, 0,
                          t + c->peer_timeout_ms, err);
      if (rc) return broken(c, rc);
    }
    double lost_at = c->last_rx + c->peer_timeout_ms;
    double until = deadline;
    if (c->last_tx + c->heartbeat_ms < until) until = c->last_tx + c->heartbeat_ms;
    if (lost_at < until) until = lost_at;
    int ready = wait_fd(c->fd, POLLIN, until, err);
    if (ready < 0) return broken(c, ready);
    if (ready) {
      int rc = recv_frame(c, c->rx_key, c->rx_key_len, now_ms() + c->peer_timeout_ms, msg, err);
      if (rc < 0) return broken(c, rc);
      if (rc == 1) {
        if (msg->type == QV_CTRL_STEP || msg->type == QV_CTRL_SHUTDOWN ||
            msg->type == QV_CTRL_NCCL_ID)
          return 1;
        if (msg->type != QV_CTRL_HEARTBEAT)
          QV_LOGW("ctrl: dropped an authenticated frame of unexpected type %d", (int)msg->type);
      }
    }
    /* The peer's silence is judged after reading what has arrived (a valid frame refreshes
     * last_rx; dropped frames do not, so a flood of forged ones cannot keep a lost link up). */
    t = now_ms();
    if (t >= c->last_rx + c->peer_timeout_ms) {
      QV_LOGE("ctrl: peer lost: nothing received for %d ms", c->peer_timeout_ms);
      return broken(c, qv_error_set(err, QV_ECLOSED,
                                    "ctrl: peer lost: nothing received for %d ms "
                                    "(heartbeat every %d ms)",
                                    c->peer_timeout_ms, c->heartbeat_ms));
    }
    if (t >= deadline) return 0;
  }
}

int qv_ctrl_send_raw(qv_ctrl *c, const void *bytes, size_t n, qv_error *err) {
  if (!c || c->fd < 0) return qv_error_set(err, QV_EINVAL, "ctrl: no link");
  return write_all(c->fd, bytes, n, now_ms() + 1000, err);
}

void qv_ctrl_close(qv_ctrl *c) {
  if (!c) return;
  if (c->fd >= 0) close(c->fd);
  OPENSSL_cleanse(c->token, sizeof c->token);
  OPENSSL_cleanse(c->tx_key, sizeof c->tx_key);
  OPENSSL_cleanse(c->rx_key, sizeof c->rx_key);
  free(c->rx_buf);
  free(c);
}
