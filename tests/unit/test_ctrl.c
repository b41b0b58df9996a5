/* The control channel over 127.0.0.1: a round trip of every caller message type; a wrong token
 * rejected on both sides; a stranger's bytes rejected at accept; oversized, truncated (closed
 * and stalled) frames close the link; a forged frame (bad tag) dropped while the next valid one
 * arrives; heartbeats keep an idle link alive; a silent or closed peer reported within the
 * stated timeout, also for a peer process that is killed or hung; the channel bootstraps a shm
 * group across two processes. Times are bounds on failure detection, not speed measurements. */
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "comm/comm.h"
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

static void server_start(server *s, const char *token, int hb_ms, int peer_to_ms,
                         uint32_t max_msg) {
  memset(s, 0, sizeof *s);
  qv_error e = {0};
  cr_assert_eq(qv_ctrl_listen("127.0.0.1", 0, &s->port, &s->l, &e), 0, "%s", e.msg);
  cr_assert_gt(s->port, 0);
  s->opts = (qv_ctrl_opts){.token = token,
                           .heartbeat_ms = hb_ms,
                           .peer_timeout_ms = peer_to_ms,
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
  qv_ctrl_opts co = {.token = TOKEN,
                     .node_rank = 3,
                     .heartbeat_ms = hb_ms,
                     .peer_timeout_ms = peer_to_ms,
                     .max_msg_bytes = max_msg};
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
  struct sockaddr_in a = {.sin_family = AF_INET,
                          .sin_port = htons((uint16_t)port),
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
  pair_open(&s, &c, 40, 400, 0);
  qv_error e = {0};
  qv_ctrl_msg m;
  /* 900 ms of idle polling on both sides (over 2 peer timeouts): no message, no loss. */
  double end = now_ms() + 900;
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

/* ---- a peer in another process ---- */

/* The child side: connects as node 1 and then polls until killed (heartbeating), or, with
 * shm_group set, receives a shm group token in a STEP, joins the group as rank 1, all-reduces
 * and says SHUTDOWN. Exit status 0 when all went right. */
static int child_node(int port, int hb_ms, int peer_to_ms, int shm_group) {
  qv_error e = {0};
  qv_ctrl *c = NULL;
  qv_ctrl_opts o = {
      .token = TOKEN, .node_rank = 1, .heartbeat_ms = hb_ms, .peer_timeout_ms = peer_to_ms};
  if (qv_ctrl_connect("127.0.0.1", port, &o, 5000, &c, &e)) return 10;
  qv_ctrl_msg m;
  if (!shm_group) {
    for (;;)
      if (qv_ctrl_poll(c, hb_ms, &m, &e) < 0) return 11;
  }
  if (qv_ctrl_poll(c, 5000, &m, &e) != 1 || m.type != QV_CTRL_STEP || m.n_bytes != 32) return 12;
  char tok[33];
  memcpy(tok, m.payload, 32);
  tok[32] = '\0';
  qv_comm *g = NULL;
  qv_comm_shm_opts so = {.token = tok, .rank = 1, .size = 2, .timeout_ms = 5000};
  if (qv_comm_shm_create(&so, &g, &e)) return 13;
  float x[4] = {10, 20, 30, 40};
  int rc = qv_comm_all_reduce_sum(g, x, 4, QV_COMM_F32, &e) ? 14 : 0;
  qv_comm_destroy(g);
  if (!rc && qv_ctrl_send(c, QV_CTRL_SHUTDOWN, x, sizeof x, &e)) rc = 15;
  qv_ctrl_close(c);
  return rc;
}

/* Forks the child before any thread exists (the parent accepts on its own thread of control:
 * the child's connect completes from the listen backlog). */
static pid_t fork_node(server *s, int hb_ms, int peer_to_ms, int shm_group) {
  memset(s, 0, sizeof *s);
  qv_error e = {0};
  cr_assert_eq(qv_ctrl_listen("127.0.0.1", 0, &s->port, &s->l, &e), 0, "%s", e.msg);
  fflush(NULL);
  pid_t pid = fork();
  cr_assert_geq(pid, 0);
  if (pid == 0) _exit(child_node(s->port, hb_ms, peer_to_ms, shm_group));
  qv_ctrl_opts o = {.token = TOKEN, .heartbeat_ms = hb_ms, .peer_timeout_ms = peer_to_ms};
  cr_assert_eq(qv_ctrl_accept(s->l, &o, 5000, &s->link, &e), 0, "%s", e.msg);
  cr_assert_eq(qv_ctrl_peer_rank(s->link), 1);
  return pid;
}

/* A killed node closes its socket (reported at once); a stopped one (hung, socket open) stops
 * heartbeating and is reported lost after peer_timeout_ms. */
Test(ctrl, killed_or_hung_process_detected) {
  for (int hang = 0; hang < 2; hang++) {
    server s;
    pid_t pid = fork_node(&s, 50, 800, 0);
    qv_error e = {0};
    qv_ctrl_msg m;
    double end = now_ms() + 300; /* healthy while the child heartbeats */
    while (now_ms() < end) cr_assert_eq(qv_ctrl_poll(s.link, 20, &m, &e), 0, "%s", e.msg);
    kill(pid, hang ? SIGSTOP : SIGKILL);
    double t0 = now_ms();
    cr_assert_eq(qv_ctrl_poll(s.link, 5000, &m, &e), QV_ECLOSED, "%s", e.msg);
    double dt = now_ms() - t0;
    cr_assert_lt(dt, 3000.0, "hang %d: reported after %.0f ms", hang, dt);
    if (hang) {
      cr_assert(strstr(e.msg, "peer lost"), "%s", e.msg);
      kill(pid, SIGKILL);
    }
    waitpid(pid, NULL, 0);
    server_stop(&s);
  }
}

/* The channel bootstraps a communicator: rank 0 sends the shm group token to node 1 in a STEP,
 * both join the group and all-reduce, node 1 reports its result and shuts down. */
Test(ctrl, bootstraps_shm_group_across_processes) {
  server s;
  pid_t pid = fork_node(&s, 1000, 5000, 1);
  qv_error e = {0};
  char tok[33];
  cr_assert_eq(qv_comm_shm_token(tok, &e), 0);
  cr_assert_eq(qv_ctrl_send(s.link, QV_CTRL_STEP, tok, 32, &e), 0, "%s", e.msg);
  qv_comm *g = NULL;
  qv_comm_shm_opts so = {.token = tok, .rank = 0, .size = 2, .timeout_ms = 5000};
  cr_assert_eq(qv_comm_shm_create(&so, &g, &e), 0, "%s", e.msg);
  float x[4] = {1, 2, 3, 4};
  cr_assert_eq(qv_comm_all_reduce_sum(g, x, 4, QV_COMM_F32, &e), 0, "%s", e.msg);
  cr_assert(x[0] == 11 && x[1] == 22 && x[2] == 33 && x[3] == 44);
  qv_comm_destroy(g);
  qv_ctrl_msg m;
  cr_assert_eq(qv_ctrl_poll(s.link, 5000, &m, &e), 1, "%s", e.msg);
  cr_assert_eq(m.type, QV_CTRL_SHUTDOWN);
  cr_assert_eq(m.n_bytes, sizeof x);
  cr_assert_eq(memcmp(m.payload, x, sizeof x), 0);
  int status = 0;
  cr_assert_eq(waitpid(pid, &status, 0), pid);
  cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child: %d", WEXITSTATUS(status));
  server_stop(&s);
}

/* Random frames after a valid handshake (valid or broken magic and version, any type, lengths
 * over and under the limit, payloads cut short, random tags), then the sender closes: the
 * receiver never crashes and never hands a forged message to the caller. */
Test(ctrl, random_frames_never_trusted) {
  unsigned seed = 12345;
  for (int it = 0; it < 30; it++) {
    server s;
    qv_ctrl *c = NULL;
    pair_open(&s, &c, 1000, 2000, 4096);
    uint8_t buf[QV_CTRL_HEADER_BYTES + 6000];
    seed = seed * 1103515245u + 12345u;
    uint32_t len = (seed >> 8) % 6000;
    header(buf, (seed & 1) ? QV_CTRL_VERSION : (int)(seed >> 20), (int)((seed >> 4) % 9),
           seed & 2 ? 0 : seed, (seed & 4) ? len : (seed ^ 0x5A5A5A5Au));
    if (seed & 8) buf[(seed >> 12) % 4] ^= 0x20; /* broken magic */
    fill(buf + QV_CTRL_HEADER_BYTES, len, seed);
    size_t n = QV_CTRL_HEADER_BYTES + ((seed & 16) ? len : len / 2);
    qv_error e = {0};
    cr_assert_eq(qv_ctrl_send_raw(c, buf, n, &e), 0, "%s", e.msg);
    qv_ctrl_close(c);
    qv_ctrl_msg m;
    int rc;
    while ((rc = qv_ctrl_poll(s.link, 2000, &m, &e)) == 0) {
    }
    cr_assert(rc == QV_EFORMAT || rc == QV_ELIMIT || rc == QV_ECLOSED, "iteration %d: rc %d (%s)",
              it, rc, e.msg);
    server_stop(&s);
  }
}

/* Random bytes (some starting with a plausible header) in place of a handshake: refused. */
Test(ctrl, random_handshakes_refused) {
  unsigned seed = 777;
  for (int it = 0; it < 20; it++) {
    server s;
    server_start(&s, TOKEN, 1000, 2000, 0);
    uint8_t buf[300];
    seed = seed * 1103515245u + 12345u;
    fill(buf, sizeof buf, seed);
    if (seed & 1) header(buf, QV_CTRL_VERSION, QV_CTRL_AUTH, 0, 68);
    int fd = raw_connect(s.port);
    size_t n = 1 + (seed >> 8) % sizeof buf;
    cr_assert_eq(write(fd, buf, n), (ssize_t)n);
    close(fd);
    server_join(&s);
    cr_assert(s.rc == QV_EFORMAT || s.rc == QV_EAUTH || s.rc == QV_ELIMIT,
              "iteration %d: rc %d (%s)", it, s.rc, s.msg);
    cr_assert_null(s.link);
    server_stop(&s);
  }
}

/* ---- a relay in the middle: replayed and reflected frames ---- */

typedef struct relay {
  int listen_fd, port;
  int to_client, to_server; /* sockets of the relay's two legs */
  pthread_mutex_t mu;       /* guards the logs and writes to to_server */
  uint8_t c2s[8192], s2c[8192];
  size_t n_c2s, n_s2c;
  volatile int stop;
  pthread_t th;
} relay;

/* Forwards bytes both ways and logs them, until stopped or a side closes. */
static void *relay_main(void *arg) {
  relay *r = arg;
  r->to_client = accept(r->listen_fd, NULL, NULL);
  while (!__atomic_load_n(&r->stop, __ATOMIC_ACQUIRE)) {
    struct pollfd p[2] = {{.fd = r->to_client, .events = POLLIN},
                          {.fd = r->to_server, .events = POLLIN}};
    if (poll(p, 2, 10) <= 0) continue;
    for (int k = 0; k < 2; k++) {
      if (!(p[k].revents & (POLLIN | POLLHUP))) continue;
      uint8_t buf[4096];
      ssize_t n = read(p[k].fd, buf, sizeof buf);
      if (n <= 0) return NULL;
      pthread_mutex_lock(&r->mu);
      uint8_t *log = k == 0 ? r->c2s : r->s2c;
      size_t *nl = k == 0 ? &r->n_c2s : &r->n_s2c;
      if (*nl + (size_t)n <= sizeof r->c2s) memcpy(log + *nl, buf, (size_t)n), *nl += (size_t)n;
      ssize_t w = write(k == 0 ? r->to_server : r->to_client, buf, (size_t)n);
      pthread_mutex_unlock(&r->mu);
      if (w != n) return NULL;
    }
  }
  return NULL;
}

static void relay_start(relay *r, int server_port) {
  memset(r, 0, sizeof *r);
  pthread_mutex_init(&r->mu, NULL);
  r->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  cr_assert_eq(bind(r->listen_fd, (struct sockaddr *)&a, sizeof a), 0);
  cr_assert_eq(listen(r->listen_fd, 1), 0);
  socklen_t sl = sizeof a;
  getsockname(r->listen_fd, (struct sockaddr *)&a, &sl);
  r->port = ntohs(a.sin_port);
  r->to_server = raw_connect(server_port);
  cr_assert_eq(pthread_create(&r->th, NULL, relay_main, r), 0);
}

static void relay_stop(relay *r) {
  __atomic_store_n(&r->stop, 1, __ATOMIC_RELEASE);
  pthread_join(r->th, NULL);
  close(r->to_client);
  close(r->to_server);
  close(r->listen_fd);
  pthread_mutex_destroy(&r->mu);
}

static void relay_inject(relay *r, const uint8_t *bytes, size_t n) {
  pthread_mutex_lock(&r->mu);
  cr_assert_eq(write(r->to_server, bytes, n), (ssize_t)n);
  pthread_mutex_unlock(&r->mu);
}

/* Waits until the relay logged at least n bytes in one direction. */
static void relay_wait(relay *r, const size_t *nl, size_t n) {
  for (int i = 0; i < 5000; i++) {
    pthread_mutex_lock(&r->mu);
    size_t have = *nl;
    pthread_mutex_unlock(&r->mu);
    if (have >= n) return;
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
  cr_assert_fail("relay saw %zu bytes, wanted %zu", *nl, n);
}

/* Frame sizes on the wire. */
enum {
  FRAME_OVERHEAD = QV_CTRL_HEADER_BYTES + QV_CTRL_TAG_BYTES,
  AUTH_FRAME = FRAME_OVERHEAD + 68,
  HELLO_FRAME = FRAME_OVERHEAD + 32,
  AUTH_OK_FRAME = FRAME_OVERHEAD + 32
};

Test(ctrl, replayed_and_reflected_frames_dropped) {
  server s;
  server_start(&s, TOKEN, 30000, 60000, 0); /* no heartbeat may shift the sequence numbers */
  relay r;
  relay_start(&r, s.port);
  qv_error e = {0};
  qv_ctrl *c = NULL;
  qv_ctrl_opts co = {
      .token = TOKEN, .node_rank = 2, .heartbeat_ms = 30000, .peer_timeout_ms = 60000};
  cr_assert_eq(qv_ctrl_connect("127.0.0.1", r.port, &co, 3000, &c, &e), 0, "%s", e.msg);
  server_join(&s);
  cr_assert_eq(s.rc, 0, "%s", s.msg);
  /* One frame up (client seq 0), two down (server seq 0 and 1) through the relay. */
  qv_ctrl_msg m;
  cr_assert_eq(qv_ctrl_send(c, QV_CTRL_STEP, "step-1", 6, &e), 0, "%s", e.msg);
  cr_assert_eq(qv_ctrl_poll(s.link, 2000, &m, &e), 1, "%s", e.msg);
  cr_assert_eq(qv_ctrl_send(s.link, QV_CTRL_STEP, "down-0", 6, &e), 0, "%s", e.msg);
  cr_assert_eq(qv_ctrl_send(s.link, QV_CTRL_STEP, "down-1", 6, &e), 0, "%s", e.msg);
  cr_assert_eq(qv_ctrl_poll(c, 2000, &m, &e), 1, "%s", e.msg);
  cr_assert_eq(qv_ctrl_poll(c, 2000, &m, &e), 1, "%s", e.msg);
  relay_wait(&r, &r.n_c2s, AUTH_FRAME + FRAME_OVERHEAD + 6);
  relay_wait(&r, &r.n_s2c, HELLO_FRAME + AUTH_OK_FRAME + 2 * (FRAME_OVERHEAD + 6));
  /* Replay the client's STEP (its tag is valid, its sequence number old), then reflect the
   * server's second STEP back at it: sequence 1 is what the server expects next, so only the
   * per-direction key stops it. Both are dropped; the next genuine frame arrives. */
  relay_inject(&r, r.c2s + AUTH_FRAME, FRAME_OVERHEAD + 6);
  relay_inject(&r, r.s2c + HELLO_FRAME + AUTH_OK_FRAME + FRAME_OVERHEAD + 6, FRAME_OVERHEAD + 6);
  cr_assert_eq(qv_ctrl_send(c, QV_CTRL_STEP, "step-2", 6, &e), 0, "%s", e.msg);
  cr_assert_eq(qv_ctrl_poll(s.link, 2000, &m, &e), 1, "%s", e.msg);
  cr_assert_eq(m.n_bytes, 6);
  cr_assert_eq(memcmp(m.payload, "step-2", 6), 0, "a replayed or reflected frame got through");
  cr_assert_eq(qv_ctrl_poll(s.link, 50, &m, &e), 0, "%s", e.msg);
  relay_stop(&r);
  qv_ctrl_close(c);
  server_stop(&s);
}
