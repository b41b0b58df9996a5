/* TLS for the HTTP server through OpenSSL, as a transport layer between the libuv stream and the
 * HTTP parser: every connection gets an SSL object over two memory BIOs, so encryption runs on
 * the loop thread with the same non-blocking reads and writes as plain HTTP and the HTTP layer
 * (http.c) keeps its limits and timers. http.c hands received bytes to tls_conn_feed, which
 * returns the plaintext and any bytes to send back (handshake records), and passes every
 * response through tls_conn_encrypt.
 *
 * A client CA file turns on mutual TLS: a client without a certificate signed by it fails the
 * handshake. A failed handshake (plain HTTP to the TLS port, a bad certificate) is a negative
 * return: the caller closes the connection. */
#ifndef QV_SERVER_TLS_H
#define QV_SERVER_TLS_H

#include <stddef.h>

#include "quiver/error.h"

typedef struct tls_opts {
  const char *certfile; /* PEM certificate chain (borrowed) */
  const char *keyfile;  /* PEM private key (borrowed) */
  const char *ca_certs; /* PEM CAs for client certificates, or NULL: no client certificate */
} tls_opts;

typedef struct tls_ctx tls_ctx;
typedef struct tls_conn tls_conn;

/* Loads the certificate and key (checked to match) and the client CAs. */
int tls_ctx_create(const tls_opts *o, tls_ctx **out, qv_error *err);
void tls_ctx_destroy(tls_ctx *ctx); /* accepts NULL */

/* Where tls_conn_feed puts its results; both called zero or more times per feed. */
typedef struct tls_io {
  void *ud;
  int (*plain)(void *ud, const char *data, size_t len); /* decrypted bytes; nonzero (out of
                                                           memory): the feed fails */
  void (*send)(void *ud, const char *data, size_t len); /* bytes to write to the peer */
} tls_io;

/* A server-side connection (ctx borrowed, must outlive it). NULL when out of memory. */
tls_conn *tls_conn_create(tls_ctx *ctx);
void tls_conn_destroy(tls_conn *t); /* accepts NULL */
/* Received bytes in; plaintext and handshake replies out through io. Negative on a fatal TLS
 * error (the reason goes to the debug log): close the connection. */
int tls_conn_feed(tls_conn *t, const char *data, size_t len, const tls_io *io);
/* Encrypts a then b (b may be NULL) into one malloc'd buffer *out[*out_len] for the caller to
 * write and free. Negative on failure (including a handshake not yet complete). */
int tls_conn_encrypt(tls_conn *t, const char *a, size_t alen, const char *b, size_t blen,
                     char **out, size_t *out_len);
/* The close_notify alert as bytes to send (malloc'd; *out NULL when there is nothing). */
void tls_conn_close_notify(tls_conn *t, char **out, size_t *out_len);
/* 1 once the handshake is complete. */
int tls_conn_ready(const tls_conn *t);

#endif
