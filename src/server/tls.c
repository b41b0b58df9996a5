/* TLS over memory BIOs (see tls.h). Received ciphertext is written into the SSL object's read
 * BIO; SSL_read then yields plaintext (running the handshake first when it is not done), and
 * whatever OpenSSL wants to send (handshake records, alerts, encrypted application data)
 * collects in the write BIO, which is drained after every call. No socket is ever given to
 * OpenSSL, so nothing here blocks and libuv keeps owning the connection. */
#include "server/tls.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"

struct tls_ctx {
  SSL_CTX *ssl;
};

struct tls_conn {
  SSL *ssl;
  BIO *rbio; /* network -> SSL (owned by ssl) */
  BIO *wbio; /* SSL -> network (owned by ssl) */
  int failed;
};

/* The first queued OpenSSL error as text (and the queue cleared). */
static const char *ssl_reason(char *buf, size_t cap) {
  unsigned long e = ERR_get_error();
  if (!e) snprintf(buf, cap, "unknown TLS error");
  else ERR_error_string_n(e, buf, cap);
  ERR_clear_error();
  return buf;
}

/* A passphrase-protected key must not make OpenSSL prompt on the terminal (a service has none):
 * no passphrase is given, so loading such a key fails with a message. */
static int no_passphrase(char *buf, int size, int rwflag, void *ud) {
  (void)buf, (void)size, (void)rwflag, (void)ud;
  return 0;
}

int tls_ctx_create(const tls_opts *o, tls_ctx **out, qv_error *err) {
  char why[256];
  tls_ctx *c = calloc(1, sizeof *c);
  if (!c) return qv_error_set(err, QV_ENOMEM, "out of memory");
  c->ssl = SSL_CTX_new(TLS_server_method());
  if (!c->ssl) {
    free(c);
    return qv_error_set(err, QV_ENOMEM, "TLS: %s", ssl_reason(why, sizeof why));
  }
  SSL_CTX_set_min_proto_version(c->ssl, TLS1_2_VERSION);
  SSL_CTX_set_default_passwd_cb(c->ssl, no_passphrase);
  /* Partial writes and moving buffers are fine with memory BIOs; no renegotiation. */
  SSL_CTX_set_mode(c->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  SSL_CTX_set_options(c->ssl, SSL_OP_NO_RENEGOTIATION);
  int rc = 0;
  if (SSL_CTX_use_certificate_chain_file(c->ssl, o->certfile) != 1)
    rc = qv_error_set(err, QV_EIO, "TLS: cannot load certificate '%s': %s", o->certfile,
                      ssl_reason(why, sizeof why));
  else if (SSL_CTX_use_PrivateKey_file(c->ssl, o->keyfile, SSL_FILETYPE_PEM) != 1)
    rc = qv_error_set(err, QV_EIO, "TLS: cannot load private key '%s': %s", o->keyfile,
                      ssl_reason(why, sizeof why));
  else if (SSL_CTX_check_private_key(c->ssl) != 1)
    rc = qv_error_set(err, QV_EINVAL, "TLS: the key '%s' does not match the certificate '%s'",
                      o->keyfile, o->certfile);
  else if (o->ca_certs) {
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(o->ca_certs);
    if (SSL_CTX_load_verify_locations(c->ssl, o->ca_certs, NULL) != 1 || !names) {
      sk_X509_NAME_pop_free(names, X509_NAME_free);
      rc = qv_error_set(err, QV_EIO, "TLS: cannot load client CAs '%s': %s", o->ca_certs,
                        ssl_reason(why, sizeof why));
    } else {
      SSL_CTX_set_client_CA_list(c->ssl, names); /* takes ownership */
      SSL_CTX_set_verify(c->ssl, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    }
  }
  if (rc) {
    tls_ctx_destroy(c);
    return rc;
  }
  *out = c;
  return 0;
}

void tls_ctx_destroy(tls_ctx *c) {
  if (!c) return;
  SSL_CTX_free(c->ssl);
  free(c);
}

tls_conn *tls_conn_create(tls_ctx *ctx) {
  tls_conn *t = calloc(1, sizeof *t);
  if (!t) return NULL;
  t->ssl = SSL_new(ctx->ssl);
  t->rbio = BIO_new(BIO_s_mem());
  t->wbio = BIO_new(BIO_s_mem());
  if (!t->ssl || !t->rbio || !t->wbio) {
    SSL_free(t->ssl);
    BIO_free(t->rbio);
    BIO_free(t->wbio);
    free(t);
    return NULL;
  }
  /* An empty read BIO means "try again later", not end of file. */
  BIO_set_mem_eof_return(t->rbio, -1);
  SSL_set_bio(t->ssl, t->rbio, t->wbio); /* ssl owns both now */
  SSL_set_accept_state(t->ssl);
  return t;
}

void tls_conn_destroy(tls_conn *t) {
  if (!t) return;
  SSL_free(t->ssl);
  free(t);
}

int tls_conn_ready(const tls_conn *t) { return SSL_is_init_finished(t->ssl); }

/* Hands everything OpenSSL queued for the peer to io->send. */
static void drain(tls_conn *t, const tls_io *io) {
  char buf[16384];
  int n;
  while ((n = BIO_read(t->wbio, buf, sizeof buf)) > 0)
    if (io && io->send) io->send(io->ud, buf, (size_t)n);
}

int tls_conn_feed(tls_conn *t, const char *data, size_t len, const tls_io *io) {
  if (t->failed) return QV_EIO;
  while (len > 0) {
    int w = BIO_write(t->rbio, data, len > (1u << 30) ? 1 << 30 : (int)len);
    if (w <= 0) {
      t->failed = 1;
      return QV_ENOMEM;
    }
    data += w;
    len -= (size_t)w;
  }
  char buf[16384];
  for (;;) {
    int n = SSL_read(t->ssl, buf, sizeof buf);
    if (n > 0) {
      drain(t, io); /* a handshake that just finished may have records to send */
      if (io->plain(io->ud, buf, (size_t)n)) {
        t->failed = 1;
        return QV_ENOMEM;
      }
      continue;
    }
    int e = SSL_get_error(t->ssl, n);
    drain(t, io); /* handshake replies, or the alert of a failed handshake */
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return 0;
    if (e == SSL_ERROR_ZERO_RETURN) return QV_ECLOSED; /* the peer's close_notify */
    if (qv_log_enabled(QV_LOG_DEBUG)) {
      char why[256];
      QV_LOGD("tls: connection failed: %s", ssl_reason(why, sizeof why));
    }
    ERR_clear_error();
    t->failed = 1;
    return QV_EIO;
  }
}

int tls_conn_encrypt(tls_conn *t, const char *a, size_t alen, const char *b, size_t blen,
                     char **out, size_t *out_len) {
  *out = NULL;
  *out_len = 0;
  if (t->failed || !SSL_is_init_finished(t->ssl)) return QV_ESTATE;
  const char *parts[2] = {a, b};
  size_t lens[2] = {alen, b ? blen : 0};
  for (int i = 0; i < 2; i++) {
    size_t off = 0;
    while (off < lens[i]) {
      size_t chunk = lens[i] - off > (1u << 20) ? (1u << 20) : lens[i] - off;
      int n = SSL_write(t->ssl, parts[i] + off, (int)chunk);
      if (n <= 0) {
        ERR_clear_error();
        t->failed = 1;
        return QV_EIO;
      }
      off += (size_t)n;
    }
  }
  size_t pending = BIO_ctrl_pending(t->wbio);
  char *buf = malloc(pending ? pending : 1);
  if (!buf) return QV_ENOMEM;
  int n = pending ? BIO_read(t->wbio, buf, (int)pending) : 0;
  if (n < 0) n = 0;
  *out = buf;
  *out_len = (size_t)n;
  return 0;
}

void tls_conn_close_notify(tls_conn *t, char **out, size_t *out_len) {
  *out = NULL;
  *out_len = 0;
  if (t->failed || !SSL_is_init_finished(t->ssl)) return;
  SSL_shutdown(t->ssl);
  ERR_clear_error();
  size_t pending = BIO_ctrl_pending(t->wbio);
  if (!pending) return;
  char *buf = malloc(pending);
  if (!buf) return;
  int n = BIO_read(t->wbio, buf, (int)pending);
  if (n <= 0) {
    free(buf);
    return;
  }
  *out = buf;
  *out_len = (size_t)n;
}
