/* Control channel: the TCP link between rank 0's node (the listener: HTTP server and scheduler)
 * and every other node of a tensor-parallel group. It carries each step's batch description, the
 * NCCL unique id, heartbeats and shutdown; the tensors themselves go through the communicator.
 *
 * Wire format (all integers big-endian), one frame per message:
 *   magic "QVC1" (4) | version u16 | type u16 | seq u64 | payload_len u32 | payload | tag[32]
 * tag = HMAC-SHA256(key, header | payload). During the handshake key is the shared token; after
 * it, a session key derived from the token and both nonces. seq counts each direction's frames
 * from 0, so a replayed, reordered or forged frame fails its tag.
 * Handshake: server HELLO(server nonce) -> client AUTH(client nonce, node rank, proof) -> server
 * AUTH_OK(proof): proofs are HMACs of both nonces under the token, checked in constant time, so
 * each side proves it knows the token without sending it, and neither can be replayed.
 *
 * Trust: a frame with a bad magic, version or length (over max_msg_bytes), or one cut short,
 * desynchronises the stream: it is logged and the connection is closed (QV_EFORMAT / QV_ELIMIT).
 * A well-framed frame with a bad tag, a bad sequence number or an unknown type is logged and
 * dropped; the connection stays. Nothing of a dropped frame reaches the caller.
 *
 * Heartbeats: qv_ctrl_poll sends a HEARTBEAT when heartbeat_ms passed since this side last sent
 * anything, and fails with QV_ECLOSED when nothing (not even a heartbeat) arrived from the peer
 * for peer_timeout_ms. A side must therefore call qv_ctrl_poll at least every heartbeat_ms (with
 * a timeout no longer than that) while the link is idle; a closed socket is reported at once.
 * A qv_ctrl is used by one thread at a time. */
#ifndef QV_COMM_CTRL_H
#define QV_COMM_CTRL_H

#include <stddef.h>
#include <stdint.h>

#include "quiver/error.h"

typedef struct qv_ctrl qv_ctrl;
typedef struct qv_ctrl_listener qv_ctrl_listener;

typedef enum qv_ctrl_type {
  QV_CTRL_HELLO = 1,     /* server nonce (handshake only) */
  QV_CTRL_AUTH = 2,      /* client nonce, node rank, proof (handshake only) */
  QV_CTRL_AUTH_OK = 3,   /* server proof (handshake only) */
  QV_CTRL_STEP = 4,      /* opaque batch description bytes */
  QV_CTRL_HEARTBEAT = 5, /* empty; consumed by qv_ctrl_poll */
  QV_CTRL_SHUTDOWN = 6,  /* orderly stop; optional reason text */
  QV_CTRL_NCCL_ID = 7,   /* the NCCL unique id bytes */
} qv_ctrl_type;

enum {
  QV_CTRL_VERSION = 2, /* 2: the tensor-parallel INIT carries the communicator kind and NCCL id */
  QV_CTRL_HEADER_BYTES = 20,
  QV_CTRL_TAG_BYTES = 32,
  QV_CTRL_TOKEN_MIN = 16,            /* shortest accepted token, bytes */
  QV_CTRL_DEFAULT_MAX_MSG = 1 << 20, /* payload bytes */
  QV_CTRL_HARD_MAX_MSG = 64 << 20,
  QV_CTRL_DEFAULT_HEARTBEAT_MS = 1000,
  QV_CTRL_DEFAULT_PEER_TIMEOUT_MS = 5000, /* a peer silent this long is lost */
};

typedef struct qv_ctrl_opts {
  const char *token;      /* borrowed during the call: the shared secret, >= 16 bytes */
  int node_rank;          /* the connecting node's rank (client side); ignored by accept */
  uint32_t max_msg_bytes; /* largest payload accepted or sent; 0 = 1 MiB, at most 64 MiB */
  int heartbeat_ms;       /* 0 = 1000 */
  int peer_timeout_ms;    /* 0 = 5000; must exceed heartbeat_ms */
} qv_ctrl_opts;

/* A received message, valid until the next qv_ctrl_poll or qv_ctrl_close on the same link. */
typedef struct qv_ctrl_msg {
  qv_ctrl_type type;
  const uint8_t *payload; /* borrowed from the link's receive buffer */
  uint32_t n_bytes;
} qv_ctrl_msg;

/* Listens on host:port (port 0 = any free port; *bound_port gets the port). */
int qv_ctrl_listen(const char *host, int port, int *bound_port, qv_ctrl_listener **out,
                   qv_error *err);
void qv_ctrl_listener_close(qv_ctrl_listener *l);

/* Accepts one connection and runs the server side of the handshake, all within timeout_ms. A
 * peer that fails to authenticate is logged and closed, and the call returns QV_EAUTH (or
 * QV_EFORMAT for a malformed frame); the listener stays usable. */
int qv_ctrl_accept(qv_ctrl_listener *l, const qv_ctrl_opts *opts, int timeout_ms, qv_ctrl **out,
                   qv_error *err);

/* Connects to host:port and runs the client side of the handshake within timeout_ms. */
int qv_ctrl_connect(const char *host, int port, const qv_ctrl_opts *opts, int timeout_ms,
                    qv_ctrl **out, qv_error *err);

/* The peer's node rank (as it stated in AUTH, on the server side), or 0 on the client side. */
int qv_ctrl_peer_rank(const qv_ctrl *c);

/* Sends one message (type STEP, SHUTDOWN or NCCL_ID; n_bytes <= max_msg_bytes). */
int qv_ctrl_send(qv_ctrl *c, qv_ctrl_type type, const void *payload, size_t n_bytes, qv_error *err);

/* Waits up to timeout_ms for one message, sending heartbeats when due and consuming the peer's.
 * Returns 1 with *msg filled, 0 when the time passed with nothing for the caller (the peer is
 * still alive), or a negative code: QV_ECLOSED (peer closed, or lost: silent longer than
 * peer_timeout_ms), QV_EFORMAT / QV_ELIMIT (malformed frame; the link is closed), QV_EIO. */
int qv_ctrl_poll(qv_ctrl *c, int timeout_ms, qv_ctrl_msg *msg, qv_error *err);

/* Closes the link. Accepts NULL. */
void qv_ctrl_close(qv_ctrl *c);

/* Test hook: writes raw bytes to the link's socket (to inject malformed frames). */
int qv_ctrl_send_raw(qv_ctrl *c, const void *bytes, size_t n_bytes, qv_error *err);

#endif
