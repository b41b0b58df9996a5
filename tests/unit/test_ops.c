/* The operations layer's pure parts: CORS headers and preflights (server/cors.c), the TLS layer
 * over memory BIOs driven by an in-process OpenSSL client (server/tls.c), and the vLLM-named
 * metrics (server/metrics.c). */
#include <criterion/criterion.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "server/cors.h"
#include "server/metrics.h"
#include "server/tls.h"

/* ---- CORS ---- */

Test(ops_cors, headers_and_preflight) {
  cors_opts o = {0};
  qv_error err = {0};
  char h[1024];
  cr_assert_eq(cors_enabled(&o), 0);
  cors_headers(&o, "http://a", h, sizeof h);
  cr_assert_str_eq(h, "");
  cr_assert_eq(cors_opts_add_origins(&o, "[\"http://a\", \"https://b.example\"]", &err), 0, "%s", err.msg);
  cr_assert_eq(cors_opts_add_origins(&o, "http://c, http://d", &err), 0, "%s", err.msg);
  cr_assert_eq(o.n_origins, 4);
  cors_headers(&o, "https://b.example", h, sizeof h);
  cr_assert_str_eq(h, "Access-Control-Allow-Origin: https://b.example\r\nVary: Origin\r\n");
  cors_headers(&o, "http://d", h, sizeof h);
  cr_assert(strstr(h, "http://d"));
  cors_headers(&o, "http://evil", h, sizeof h);
  cr_assert_str_eq(h, "");
  cors_headers(&o, NULL, h, sizeof h);
  cr_assert_str_eq(h, "");
  /* An origin that could split the header block is never echoed. */
  cors_headers(&o, "http://a\r\nX-Injected: 1", h, sizeof h);
  cr_assert_str_eq(h, "");
  cr_assert_eq(cors_preflight(&o, "http://a", "POST", "authorization", h, sizeof h), 1);
  cr_assert(strstr(h, "Access-Control-Allow-Methods: GET, POST, OPTIONS\r\n"));
  cr_assert(strstr(h, "Access-Control-Allow-Headers: authorization\r\n"));
  /* Requested headers with odd characters are not echoed: the default list is sent. */
  cr_assert_eq(cors_preflight(&o, "http://a", "POST", "x\r\ny", h, sizeof h), 1);
  cr_assert(strstr(h, "Access-Control-Allow-Headers: Authorization, Content-Type\r\n"));
  cr_assert_eq(cors_preflight(&o, "http://evil", "POST", NULL, h, sizeof h), 0);
  cr_assert_str_eq(h, "");
  cors_opts_deinit(&o);

  /* "*" with credentials echoes the origin (browsers refuse "*" with credentials). */
  cr_assert_eq(cors_opts_add_origins(&o, "*", &err), 0);
  cors_headers(&o, "http://x", h, sizeof h);
  cr_assert_str_eq(h, "Access-Control-Allow-Origin: *\r\n");
  o.allow_credentials = 1;
  cr_assert_eq(cors_opts_add_methods(&o, "[\"GET\"]", &err), 0);
  cr_assert_eq(cors_opts_add_headers(&o, "X-A,X-B", &err), 0);
  cr_assert_eq(cors_preflight(&o, "http://x", "GET", "whatever", h, sizeof h), 1);
  cr_assert(strstr(h, "Access-Control-Allow-Origin: http://x\r\nAccess-Control-Allow-Credentials: true\r\n"));
  cr_assert(strstr(h, "Access-Control-Allow-Methods: GET\r\nAccess-Control-Allow-Headers: X-A, X-B\r\n"));
  cors_opts_deinit(&o);

  const char *bad[] = {"[1]", "[\"a\"", "http://a\"b", "[\"\\r\"]"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    cr_expect_neq(cors_opts_add_origins(&o, bad[i], &err), 0, "%s", bad[i]);
    cors_opts_deinit(&o);
  }
}

/* ---- TLS ---- */

typedef struct sink {
  char *data;
  size_t len;
} sink;

static void sink_add(sink *s, const char *d, size_t n) {
  s->data = realloc(s->data, s->len + n + 1);
  memcpy(s->data + s->len, d, n);
  s->len += n;
  s->data[s->len] = '\0';
}

static int on_plain(void *ud, const char *d, size_t n) {
  sink_add(((sink **)ud)[0], d, n);
  return 0;
}
static void on_send(void *ud, const char *d, size_t n) { sink_add(((sink **)ud)[1], d, n); }

/* Moves what the client's write BIO holds into the server and the server's replies back. */
static int pump(SSL *cli, BIO *c_in, BIO *c_out, tls_conn *t, sink *plain) {
  sink wire = {0};
  sink *uds[2] = {plain, &wire};
  tls_io io = {.ud = uds, .plain = on_plain, .send = on_send};
  char buf[16384];
  int n, rc = 0;
  while ((n = BIO_read(c_out, buf, sizeof buf)) > 0)
    if ((rc = tls_conn_feed(t, buf, (size_t)n, &io))) break;
  if (wire.len) BIO_write(c_in, wire.data, (int)wire.len);
  free(wire.data);
  (void)cli;
  return rc;
}

static int make_cert(const char *dir) {
  char cmd[1024];
  snprintf(cmd, sizeof cmd,
           "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout %s/k.pem "
           "-out %s/c.pem -days 1 -subj /CN=localhost >/dev/null 2>&1",
           dir, dir);
  return system(cmd);
}

Test(ops_tls, handshake_roundtrip_and_failures) {
  char dir[] = "/tmp/qv-tls-XXXXXX";
  cr_assert_not_null(mkdtemp(dir));
  if (make_cert(dir) != 0) cr_skip_test("openssl CLI not available");
  char cert[300], key[300];
  snprintf(cert, sizeof cert, "%s/c.pem", dir);
  snprintf(key, sizeof key, "%s/k.pem", dir);
  qv_error err = {0};
  tls_ctx *ctx = NULL;
  tls_opts bad = {.certfile = "/nonexistent.pem", .keyfile = key};
  cr_assert_neq(tls_ctx_create(&bad, &ctx, &err), 0);
  cr_assert(strstr(err.msg, "cannot load certificate"));
  tls_opts swapped = {.certfile = cert, .keyfile = cert}; /* a certificate is not a key */
  cr_assert_neq(tls_ctx_create(&swapped, &ctx, &err), 0);
  tls_opts o = {.certfile = cert, .keyfile = key};
  cr_assert_eq(tls_ctx_create(&o, &ctx, &err), 0, "%s", err.msg);

  /* A client over memory BIOs talking to a tls_conn. */
  SSL_CTX *cctx = SSL_CTX_new(TLS_client_method());
  SSL *cli = SSL_new(cctx);
  BIO *c_in = BIO_new(BIO_s_mem()), *c_out = BIO_new(BIO_s_mem());
  BIO_set_mem_eof_return(c_in, -1);
  SSL_set_bio(cli, c_in, c_out);
  SSL_set_connect_state(cli);
  tls_conn *t = tls_conn_create(ctx);
  cr_assert_not_null(t);
  char *enc = NULL;
  size_t enc_len = 0;
  cr_assert_neq(tls_conn_encrypt(t, "x", 1, NULL, 0, &enc, &enc_len), 0); /* not ready yet */
  free(enc);
  sink plain = {0};
  for (int i = 0; i < 10 && !(SSL_is_init_finished(cli) && tls_conn_ready(t)); i++) {
    SSL_do_handshake(cli);
    cr_assert_eq(pump(cli, c_in, c_out, t, &plain), 0);
  }
  cr_assert(SSL_is_init_finished(cli) && tls_conn_ready(t));
  /* Client -> server plaintext, in two records. */
  SSL_write(cli, "GET / HTTP/1.1\r\n", 16);
  SSL_write(cli, "\r\n", 2);
  cr_assert_eq(pump(cli, c_in, c_out, t, &plain), 0);
  cr_assert_eq(plain.len, 18);
  cr_assert_eq(memcmp(plain.data, "GET / HTTP/1.1\r\n\r\n", 18), 0);
  /* Server -> client: two parts encrypted into one buffer. */
  cr_assert_eq(tls_conn_encrypt(t, "hello ", 6, "world", 5, &enc, &enc_len), 0);
  BIO_write(c_in, enc, (int)enc_len);
  free(enc);
  char got[64] = {0};
  int have = 0, n;
  while (have < 11 && (n = SSL_read(cli, got + have, (int)sizeof got - 1 - have)) > 0) have += n;
  cr_assert_eq(have, 11); /* one record per part: a read may return either */
  cr_assert_str_eq(got, "hello world");
  /* close_notify reaches the client as a clean shutdown. */
  tls_conn_close_notify(t, &enc, &enc_len);
  cr_assert_not_null(enc);
  BIO_write(c_in, enc, (int)enc_len);
  free(enc);
  cr_assert_eq(SSL_read(cli, got, sizeof got), 0);
  cr_assert_eq(SSL_get_error(cli, 0), SSL_ERROR_ZERO_RETURN);
  tls_conn_destroy(t);
  SSL_free(cli);
  SSL_CTX_free(cctx);

  /* Plain HTTP and random bytes fail the handshake (negative), and stay failed. */
  const char *junk[] = {"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", "\x07\x01\x02\x03\x04\x05\x06\x07\x08"};
  for (size_t i = 0; i < 2; i++) {
    t = tls_conn_create(ctx);
    sink p2 = {0}, w2 = {0};
    sink *uds[2] = {&p2, &w2};
    tls_io io = {.ud = uds, .plain = on_plain, .send = on_send};
    cr_assert_lt(tls_conn_feed(t, junk[i], strlen(junk[i]), &io), 0, "junk %zu", i);
    cr_assert_lt(tls_conn_feed(t, "x", 1, &io), 0);
    cr_assert_eq(p2.len, 0);
    free(p2.data);
    free(w2.data);
    tls_conn_destroy(t);
  }
  /* A partial ClientHello is not an error: more bytes may come (the header timer ends it). */
  t = tls_conn_create(ctx);
  sink p3 = {0}, w3 = {0};
  sink *uds3[2] = {&p3, &w3};
  tls_io io3 = {.ud = uds3, .plain = on_plain, .send = on_send};
  cr_assert_eq(tls_conn_feed(t, "\x16\x03\x01\x02\x00\x01", 6, &io3), 0);
  cr_assert_eq(tls_conn_ready(t), 0);
  tls_conn_destroy(t);
  free(plain.data);
  tls_ctx_destroy(ctx);
  char cmd[400];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  cr_assert_eq(system(cmd), 0);
}

/* ---- metrics ---- */

/* The value of the sample line that starts with prefix, or -1. */
static double sample(const char *text, const char *prefix) {
  const char *p = strstr(text, prefix);
  return p ? atof(p + strlen(prefix)) : -1;
}

Test(ops_metrics, vllm_families) {
  metrics m;
  const char *names[] = {"a\"b"};
  cr_assert_eq(metrics_init(&m, names, 1), 0);
  metrics_count_request(&m, 0, 200);
  metrics_count_utility(&m, 200);
  metrics_count_utility(&m, 200);
  metrics_count_utility(&m, 404);
  metrics_add_tokens(&m, 0, 7, 5);
  metrics_observe_ttft(&m, 0, 0.003);
  metrics_observe_itl(&m, 0, 0.002);
  metrics_finish f = {.reason = METRICS_FINISH_LENGTH, .e2e_s = 0.9, .queue_s = 0.1, .prefill_s = 0.2,
                      .decode_s = 0.6, .prompt_tokens = 7, .generation_tokens = 5};
  metrics_observe_finish(&m, 0, &f);
  f.reason = METRICS_FINISH_STOP;
  f.e2e_s = 100.0;
  metrics_observe_finish(&m, 0, &f);
  qv_engine_stats st = {.n_running = 2, .n_waiting = 3, .n_kv_blocks = 8, .n_kv_blocks_used = 2,
                        .prefix_queries = 40, .prefix_hits = 16, .n_preemptions = 4};
  metrics_model_state s = {.stats = &st, .ready = 1};
  size_t len = 0;
  char *t = metrics_render(&m, &s, &len);
  cr_assert_not_null(t);
  cr_assert_eq(strlen(t), len);
  const char *L = "{model_name=\"a\\\"b\"} ";
  char k[256];
#define V(name) (snprintf(k, sizeof k, "%s%s", name, L), sample(t, k))
  cr_assert_float_eq(V("vllm:kv_cache_usage_perc"), 0.25, 1e-9);
  cr_assert_float_eq(V("vllm:num_requests_running"), 2, 0);
  cr_assert_float_eq(V("vllm:num_requests_waiting"), 3, 0);
  cr_assert_float_eq(V("vllm:num_preemptions_total"), 4, 0);
  cr_assert_float_eq(V("vllm:prefix_cache_queries_total"), 40, 0);
  cr_assert_float_eq(V("vllm:prefix_cache_hits_total"), 16, 0);
  cr_assert_float_eq(V("vllm:prompt_tokens_total"), 7, 0);
  cr_assert_float_eq(V("vllm:generation_tokens_total"), 5, 0);
  cr_assert_float_eq(V("vllm:e2e_request_latency_seconds_count"), 2, 0);
  cr_assert_float_eq(V("vllm:e2e_request_latency_seconds_sum"), 100.9, 1e-6);
  cr_assert_float_eq(V("vllm:request_queue_time_seconds_sum"), 0.2, 1e-6);
  cr_assert_float_eq(V("vllm:request_generation_tokens_sum"), 10, 0);
  cr_assert_float_eq(V("vllm:time_to_first_token_seconds_count"), 1, 0);
#undef V
  /* Buckets are cumulative: 0.9 s is in le=1, 100 s only from le=120. */
  cr_assert_float_eq(sample(t, "vllm:e2e_request_latency_seconds_bucket{model_name=\"a\\\"b\",le=\"0.8\"} "), 0, 0);
  cr_assert_float_eq(sample(t, "vllm:e2e_request_latency_seconds_bucket{model_name=\"a\\\"b\",le=\"1\"} "), 1, 0);
  cr_assert_float_eq(sample(t, "vllm:e2e_request_latency_seconds_bucket{model_name=\"a\\\"b\",le=\"60\"} "), 1, 0);
  cr_assert_float_eq(sample(t, "vllm:e2e_request_latency_seconds_bucket{model_name=\"a\\\"b\",le=\"120\"} "), 2, 0);
  cr_assert_float_eq(sample(t, "vllm:request_success_total{model_name=\"a\\\"b\",finished_reason=\"length\"} "), 1, 0);
  cr_assert_float_eq(sample(t, "vllm:request_success_total{model_name=\"a\\\"b\",finished_reason=\"stop\"} "), 1, 0);
  cr_assert_float_eq(sample(t, "vllm:request_success_total{model_name=\"a\\\"b\",finished_reason=\"abort\"} "), 0, 0);
  cr_assert_float_eq(sample(t, "quiver_utility_requests_total{status=\"200\"} "), 2, 0);
  cr_assert_float_eq(sample(t, "quiver_utility_requests_total{status=\"404\"} "), 1, 0);
  cr_assert_null(strstr(t, "quiver_requests_total{model=\"\""));
  cr_assert_null(strstr(t, "quiver_kv_blocks_total"));
  /* Every family has HELP and TYPE once, before its samples. */
  cr_assert(strstr(t, "# TYPE vllm:kv_cache_usage_perc gauge\n"));
  cr_assert(strstr(t, "# TYPE vllm:request_prefill_time_seconds histogram\n"));
  cr_assert(strstr(t, "# TYPE vllm:num_preemptions_total counter\n"));
  free(t);
  /* No engine stats (a model not loaded): usage 0, never a division by zero. */
  metrics_model_state none = {.stats = NULL, .ready = 0};
  t = metrics_render(&m, &none, &len);
  cr_assert_float_eq(sample(t, "vllm:kv_cache_usage_perc{model_name=\"a\\\"b\"} "), 0, 0);
  free(t);
  metrics_deinit(&m);
}
