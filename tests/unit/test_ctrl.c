/* The control channel over 127.0.0.1: a round trip of every caller message type; a wrong token
 * rejected on both sides; a stranger's bytes rejected at accept; oversized, truncated (closed
 * and stalled) frames close the link; a forged frame (bad tag) dropped while the next valid one
 * arrives; heartbeats keep an idle link alive; a silent or closed peer reported within the
 * stated timeout. Times are bounds on failure detection, not speed measurements. */
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "comm/ctrl.h"

static const char *TOKEN = "test-token-0123456789abcdef";

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

typedef struct server {
  qv_ctrl_listener *l;
  int port;
  qv_ctrl_opts opts;
  qv_ctrl *link; /* accepted link, or NULL */
  int rc;
  char msg[512];
  pthread_t th;
} server;

static void *accept_main(void *arg) {
  server *s = arg;
  qv_error e = {0};
  s->rc = qv_ctrl_accept(s->l, &s->opts, 3000, &s->link, &e);
  snprintf(s->msg, sizeof s->msg, "%s", e.msg);
  return NULL;
}

static void server_start(server *s, const char *token, int hb_ms, int peer_to_ms, uint32_t max_msg) {
  memset(s, 0, sizeof *s);
  qv_error e = {0};
  cr_assert_eq(qv_ctrl_listen("127.0.0.1", 0, &s->port, &s->l, &e), 0, "%s", e.msg);
  cr_assert_gt(s->port, 0);
  s->opts = (qv_ctrl_opts){.token = token, .heartbeat_ms = hb_ms, .peer_timeout_ms = peer_to_ms,
                           .max_msg_bytes = max_msg};
  cr_assert_eq(pthread_create(&s->th, NULL, accept_main, s), 0);
}

static void server_join(server *s) { pthread_join(s->th, NULL); }

static void server_stop(server *s) {
  qv_ctrl_close(s->link);
  qv_ctrl_listener_close(s->l);
}

/* A connected, authenticated pair. */
static void pair_open(server *s, qv_ctrl **client, int hb_ms, int peer_to_ms, uint32_t max_msg) {
  server_start(s, TOKEN, hb_ms, peer_to_ms, max_msg);
  qv_error e = {0};
  qv_ctrl_opts co = {.token = TOKEN, .node_rank = 3, .heartbeat_ms = hb_ms,
                     .peer_timeout_ms = peer_to_ms, .max_msg_bytes = max_msg};
  cr_assert_eq(qv_ctrl_connect("127.0.0.1", s->port, &co, 3000, client, &e), 0, "%s", e.msg);
  server_join(s);
  cr_assert_eq(s->rc, 0, "%s", s->msg);
  cr_assert_eq(qv_ctrl_peer_rank(s->link), 3);
}

static void fill(uint8_t *p, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; i++) {
    seed = seed * 1103515245u + 12345u;
    p[i] = (uint8_t)(seed >> 16);
  }
}

Test(ctrl, round_trip) {
  server s;
  qv_ctrl *c = NULL;
  pair_open(&s, &c, 1000, 5000, 0);
  qv_error e = {0};
  uint8_t step[1000], id[128];
  fill(step, sizeof step, 1);
  fill(id, sizeof id, 2);
  cr_assert_eq(qv_ctrl_send(s.link, QV_CTRL_STEP, step, sizeof step, &e), 0, "%s", e.msg);
  cr_assert_eq(qv_ctrl_send(s.link, QV_CTRL_NCCL_ID, id, sizeof id, &e), 0, "%s", e.msg);
  cr_assert_eq(qv_ctrl_send(s.link, QV_CTRL_STEP, NULL, 0, &e), 0, "%s", e.msg);
  qv_ctrl_msg m;
  cr_assert_eq(qv_ctrl_poll(c, 2000, &m, &e), 1, "%s", e.msg);
  cr_assert_eq(m.type, QV_CTRL_STEP);
  cr_assert_eq(m.n_bytes, sizeof step);
  cr_assert_eq(memcmp(m.payload, step, sizeof step), 0);
  cr_assert_eq(qv_ctrl_poll(c, 2000, &m, &e), 1, "%s", e.msg);
  cr_assert_eq(m.type, QV_CTRL_NCCL_ID);
  cr_assert_eq(memcmp(m.payload, id, sizeof id), 0);
  cr_assert_eq(qv_ctrl_poll(c, 2000, &m, &e), 1, "%s", e.msg);
  cr_assert_eq(m.type, QV_CTRL_STEP);
  cr_assert_eq(m.n_bytes, 0);
  /* And back the other way. */
  cr_assert_eq(qv_ctrl_send(c, QV_CTRL_SHUTDOWN, "bye", 3, &e), 0, "%s", e.msg);
  cr_assert_eq(qv_ctrl_poll(s.link, 2000, &m, &e), 1, "%s", e.msg);
  cr_assert_eq(m.type, QV_CTRL_SHUTDOWN);
  cr_assert_eq(m.n_bytes, 3);
  cr_assert_eq(memcmp(m.payload, "bye", 3), 0);
  /* Nothing pending: 0, not an error. */
  cr_assert_eq(qv_ctrl_poll(s.link, 20, &m, &e), 0, "%s", e.msg);
  /* Caller-sendable types only; bounded size. */
  cr_assert_eq(qv_ctrl_send(c, QV_CTRL_HEARTBEAT, NULL, 0, &e), QV_EINVAL);
  cr_assert_eq(qv_ctrl_send(c, QV_CTRL_AUTH, NULL, 0, &e), QV_EINVAL);
  uint8_t *big = calloc(1, QV_CTRL_DEFAULT_MAX_MSG + 1);
  cr_assert_eq(qv_ctrl_send(c, QV_CTRL_STEP, big, QV_CTRL_DEFAULT_MAX_MSG + 1, &e), QV_ELIMIT);
  free(big);
  qv_ctrl_close(c);
  server_stop(&s);
}

Test(ctrl, forged_token_rejected) {
  server s;
  server_start(&s, TOKEN, 1000, 5000, 0);
  qv_error e = {0};
  qv_ctrl *c = NULL;
  qv_ctrl_opts co = {.token = "not-the-token-0123456789"};
  cr_assert_eq(qv_ctrl_connect("127.0.0.1", s.port, &co, 3000, &c, &e), QV_EAUTH, "%s", e.msg);
  cr_assert_null(c);
  server_join(&s);
  cr_assert_eq(s.rc, QV_EAUTH, "server: %d %s", s.rc, s.msg);
  cr_assert_null(s.link);
  /* The listener still works for an honest node. */
  cr_assert_eq(pthread_create(&s.th, NULL, accept_main, &s), 0);
  co.token = TOKEN;
  cr_assert_eq(qv_ctrl_connect("127.0.0.1", s.port, &co, 3000, &c, &e), 0, "%s", e.msg);
  server_join(&s);
  cr_assert_eq(s.rc, 0, "%s", s.msg);
  qv_ctrl_close(c);
  server_stop(&s);
  /* Short tokens are refused outright. */
  co.token = "short";
  cr_assert_eq(qv_ctrl_connect("127.0.0.1", 1, &co, 100, &c, &e), QV_EINVAL);
}

static int raw_connect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
  return fd;
}

Test(ctrl, stranger_rejected_at_accept) {
  server s;
  server_start(&s, TOKEN, 1000, 5000, 0);
  int fd = raw_connect(s.port);
  const char *junk = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  cr_assert_eq(write(fd, junk, strlen(junk)), (ssize_t)strlen(junk));
  server_join(&s);
  cr_assert(s.rc == QV_EFORMAT || s.rc == QV_EAUTH, "rc %d: %s", s.rc, s.msg);
  cr_assert_null(s.link);
  close(fd);
  server_stop(&s);
}

/* A frame header: magic, version, type, seq, length. */
static void header(uint8_t *h, int version, int type, uint64_t seq, uint32_t len) {
  memcpy(h, "QVC1", 4);
  h[4] = (uint8_t)(version >> 8), h[5] = (uint8_t)version;
  h[6] = (uint8_t)(type >> 8), h[7] = (uint8_t)type;
  for (int i = 0; i < 8; i++) h[8 + i] = (uint8_t)(seq >> (56 - 8 * i));
  for (int i = 0; i < 4; i++) h[16 + i] = (uint8_t)(len >> (24 - 8 * i));
}

Test(ctrl, oversized_frame_closes_link) {
  server s;
  qv_ctrl *c = NULL;
  pair_open(&s, &c, 1000, 5000, 4096);
  qv_error e = {0};
  uint8_t h[QV_CTRL_HEADER_BYTES];
  header(h, QV_CTRL_VERSION, QV_CTRL_STEP, 0, 4097);
  cr_assert_eq(qv_ctrl_send_raw(c, h, sizeof h, &e), 0, "%s", e.msg);
  qv_ctrl_msg m;
  cr_assert_eq(qv_ctrl_poll(s.link, 2000, &m, &e), QV_ELIMIT, "%s", e.msg);
  cr_assert_eq(qv_ctrl_poll(s.link, 10, &m, &e), QV_ECLOSED);
  cr_assert_eq(qv_ctrl_send(s.link, QV_CTRL_STEP, "x", 1, &e), QV_ECLOSED);
  qv_ctrl_close(c);
  server_stop(&s);
}

Test(ctrl, bad_version_closes_link) {
  server s;
  qv_ctrl *c = NULL;
  pair_open(&s, &c, 1000, 5000, 0);
  qv_error e = {0};
  uint8_t h[QV_CTRL_HEADER_BYTES];
  header(h, QV_CTRL_VERSION + 1, QV_CTRL_STEP, 0, 0);
  cr_assert_eq(qv_ctrl_send_raw(c, h, sizeof h, &e), 0);
  qv_ctrl_msg m;
  cr_assert_eq(qv_ctrl_poll(s.link, 2000, &m, &e), QV_EFORMAT, "%s", e.msg);
  qv_ctrl_close(c);
  server_stop(&s);
}

Test(ctrl, truncated_frame_rejected) {
  for (int stall = 0; stall < 2; stall++) {
    server s;
    qv_ctrl *c = NULL;
    pair_open(&s, &c, 100, 300, 0);
    qv_error e = {0};
    uint8_t f[QV_CTRL_HEADER_BYTES + 10];
    header(f, QV_CTRL_VERSION, QV_CTRL_STEP, 0, 100);
    memset(f + QV_CTRL_HEADER_BYTES, 7, 10);
    cr_assert_eq(qv_ctrl_send_raw(c, f, sizeof f, &e), 0);
    if (!stall) {
      qv_ctrl_close(c); /* cut short by a closed connection */
      c = NULL;
    }
    qv_ctrl_msg m;
    double t0 = now_ms();
    cr_assert_eq(qv_ctrl_poll(s.link, 2000, &m, &e), QV_EFORMAT, "stall %d: %s", stall, e.msg);
    cr_assert(strstr(e.msg, "truncated"), "%s", e.msg);
    cr_assert_lt(now_ms() - t0, 2000.0);
    qv_ctrl_close(c);
    server_stop(&s);
  }
}

Test(ctrl, forged_frame_dropped) {
  server s;
  qv_ctrl *c = NULL;
  pair_open(&s, &c, 1000, 5000, 0);
  qv_error e = {0};
  /* Well framed, claims the next sequence number, but its tag is not under the session key. */
  uint8_t f[QV_CTRL_HEADER_BYTES + 5 + QV_CTRL_TAG_BYTES];
  header(f, QV_CTRL_VERSION, QV_CTRL_STEP, 0, 5);
  memcpy(f + QV_CTRL_HEADER_BYTES, "evil!", 5);
  fill(f + QV_CTRL_HEADER_BYTES + 5, QV_CTRL_TAG_BYTES, 9);
  cr_assert_eq(qv_ctrl_send_raw(c, f, sizeof f, &e), 0);
  cr_assert_eq(qv_ctrl_send(c, QV_CTRL_STEP, "good", 4, &e), 0, "%s", e.msg);
  qv_ctrl_msg m;
  cr_assert_eq(qv_ctrl_poll(s.link, 2000, &m, &e), 1, "%s", e.msg);
  cr_assert_eq(m.n_bytes, 4);
  cr_assert_eq(memcmp(m.payload, "good", 4), 0);
  /* The link is intact in both directions. */
  cr_assert_eq(qv_ctrl_send(s.link, QV_CTRL_STEP, "ok", 2, &e), 0, "%s", e.msg);
  cr_assert_eq(qv_ctrl_poll(c, 2000, &m, &e), 1, "%s", e.msg);
  qv_ctrl_close(c);
  server_stop(&s);
}

Test(ctrl, heartbeats_keep_idle_link_alive) {
  server s;
  qv_ctrl *c = NULL;
  pair_open(&s, &c, 40, 200, 0);
  qv_error e = {0};
  qv_ctrl_msg m;
  /* 600 ms of idle polling on both sides (3 peer timeouts): no message, no loss. */
  double end = now_ms() + 600;
  while (now_ms() < end) {
    cr_assert_eq(qv_ctrl_poll(c, 10, &m, &e), 0, "client: %s", e.msg);
    cr_assert_eq(qv_ctrl_poll(s.link, 10, &m, &e), 0, "server: %s", e.msg);
  }
  qv_ctrl_close(c);
  server_stop(&s);
}

Test(ctrl, lost_peer_detected) {
  /* Silent (no heartbeats: the client never polls): reported after peer_timeout_ms. */
  server s;
  qv_ctrl *c = NULL;
  pair_open(&s, &c, 50, 200, 0);
  qv_error e = {0};
  qv_ctrl_msg m;
  double t0 = now_ms();
  int rc = qv_ctrl_poll(s.link, 5000, &m, &e);
  double dt = now_ms() - t0;
  cr_assert_eq(rc, QV_ECLOSED, "%s", e.msg);
  cr_assert(strstr(e.msg, "peer lost"), "%s", e.msg);
  cr_assert_lt(dt, 1500.0, "loss reported after %.0f ms", dt);
  qv_ctrl_close(c);
  server_stop(&s);
  /* Closed (a killed process): reported at once. */
  pair_open(&s, &c, 1000, 5000, 0);
  qv_ctrl_close(c);
  t0 = now_ms();
  cr_assert_eq(qv_ctrl_poll(s.link, 5000, &m, &e), QV_ECLOSED, "%s", e.msg);
  cr_assert_lt(now_ms() - t0, 1000.0);
  server_stop(&s);
}

Test(ctrl, accept_and_connect_time_out) {
  server s;
  memset(&s, 0, sizeof s);
  qv_error e = {0};
  cr_assert_eq(qv_ctrl_listen("127.0.0.1", 0, &s.port, &s.l, &e), 0, "%s", e.msg);
  qv_ctrl_opts o = {.token = TOKEN};
  qv_ctrl *c = NULL;
  cr_assert_eq(qv_ctrl_accept(s.l, &o, 50, &c, &e), QV_ECLOSED);
  /* A listener that never answers the handshake: connect gives up at its timeout. */
  double t0 = now_ms();
  cr_assert_neq(qv_ctrl_connect("127.0.0.1", s.port, &o, 200, &c, &e), 0);
  cr_assert_lt(now_ms() - t0, 2000.0);
  cr_assert_null(c);
  qv_ctrl_listener_close(s.l);
}
