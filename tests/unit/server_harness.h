/* The server test harness: a fake engine thread behind srv_model_ops that produces
 * deterministic letters, a byte tokenizer and the default chat format; the server on its own
 * loop thread; a socket client with a read timeout on every read. Header-only because each test
 * file is its own executable (as engine_fake.h). Used by test_server.c and
 * test_server_dialects.c. */
#ifndef QV_TEST_SERVER_HARNESS_H
#define QV_TEST_SERVER_HARNESS_H

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "quiver/tokenizer.h"
#include "server/server.h"
#include "../test_util.h"

/* ---- fake engine ---- */

#define FAKE_MAX_N 8

typedef struct fake_req {
  uint64_t id;
  int32_t n, max_tokens, n_prompt, logprobs, n_top;
  int32_t produced[FAKE_MAX_N];
  int finished[FAKE_MAX_N];
  char stop[16][8];
  int32_t n_stop;
  int aborted;
  struct fake_req *next;
} fake_req;

typedef struct fake {
  pthread_mutex_t mu;
  pthread_t th;
  int running, hold, capacity, n_active;
  int burst;                 /* tokens per choice per step (1 unless a test floods) */
  int32_t default_max;       /* max_tokens when the request gives none */
  char base;                 /* first letter of generated text */
  const char *script;        /* when set, every choice generates exactly this text (one
                                character per token) and stops */
  const int32_t *top_ids;    /* when set: the logprobs alternatives (else 3 + 'a' + k) */
  const qv_tokenizer *tok;   /* when set: decode and token_bytes go through this real
                                tokenizer (ids 3 + b must be its byte tokens) */
  fake_req *active;
  qv_event **evq;
  int n_ev, cap_ev;
  void (*notify)(void *);
  void *arg;
  uint64_t next_id;
  int64_t n_aborted, n_submitted;
} fake;

static inline char fake_letter(const fake *f, const fake_req *r, int32_t choice, int32_t k) {
  return (char)(f->base + (k + choice + r->n_prompt) % 26);
}

static inline void post(fake *f, qv_event *ev) {
  if (f->n_ev == f->cap_ev) {
    f->cap_ev = f->cap_ev ? f->cap_ev * 2 : 64;
    f->evq = realloc(f->evq, sizeof *f->evq * (size_t)f->cap_ev);
  }
  f->evq[f->n_ev++] = ev;
}

static inline qv_event *new_event(qv_event_type t, fake_req *r, int32_t c) {
  qv_event *ev = calloc(1, sizeof *ev);
  ev->type = t;
  ev->req_id = r->id;
  ev->choice = c;
  ev->text = strdup("");
  ev->stop_token = -1;
  return ev;
}

static inline void finish(fake *f, fake_req *r, int32_t c, qv_finish_reason why, const char *stop) {
  qv_event *ev = new_event(QV_EVENT_FINISH, r, c);
  ev->finish = why;
  ev->stop_str = stop ? strdup(stop) : NULL;
  ev->prompt_tokens = r->n_prompt;
  ev->completion_tokens = r->produced[c];
  r->finished[c] = 1;
  post(f, ev);
}

/* One step under the lock: aborts always, tokens unless held. Returns 1 if it posted. */
static inline int fake_step(fake *f) {
  int before = f->n_ev;
  for (fake_req **pp = &f->active; *pp;) {
    fake_req *r = *pp;
    int done = 1;
    for (int32_t c = 0; c < r->n; c++) {
      if (r->finished[c]) continue;
      if (r->aborted) {
        finish(f, r, c, QV_FINISH_ABORT, NULL);
        continue;
      }
      if (f->hold) {
        done = 0;
        continue;
      }
      for (int b = 0; b < f->burst && !r->finished[c]; b++) {
      if (f->script && !f->script[r->produced[c]]) {
        finish(f, r, c, QV_FINISH_STOP, NULL);
        break;
      }
      char ch = f->script ? f->script[r->produced[c]] : fake_letter(f, r, c, r->produced[c]);
      const char *hit = NULL;
      for (int32_t s = 0; s < r->n_stop; s++)
        if (r->stop[s][0] == ch) hit = r->stop[s];
      if (hit) {
        finish(f, r, c, QV_FINISH_STOP, hit);
        break;
      }
      qv_event *ev = new_event(QV_EVENT_TOKENS, r, c);
      ev->n_tokens = 1;
      ev->token_ids = malloc(sizeof(int32_t));
      ev->token_ids[0] = 3 + (unsigned char)ch;
      free(ev->text);
      ev->text = malloc(2);
      ev->text[0] = ch;
      ev->text[1] = '\0';
      ev->text_len = 1;
      if (r->logprobs) {
        ev->logprobs = malloc(sizeof(float));
        ev->logprobs[0] = -0.5f;
        ev->n_top = r->n_top;
        if (r->n_top) {
          ev->top = calloc((size_t)r->n_top, sizeof *ev->top);
          for (int32_t k = 0; k < r->n_top; k++) {
            ev->top[k].id = f->top_ids ? f->top_ids[k] : 3 + 'a' + k;
            ev->top[k].logprob = -0.5f - (float)k;
          }
        }
      }
      post(f, ev);
      if (++r->produced[c] >= r->max_tokens) finish(f, r, c, QV_FINISH_LENGTH, NULL);
      }
      if (!r->finished[c]) done = 0;
    }
    if (done) {
      *pp = r->next;
      f->n_active--;
      free(r);
    } else {
      pp = &r->next;
    }
  }
  return f->n_ev > before;
}

static inline void *fake_thread(void *arg) {
  fake *f = arg;
  for (;;) {
    pthread_mutex_lock(&f->mu);
    if (!f->running) {
      pthread_mutex_unlock(&f->mu);
      break;
    }
    int posted = fake_step(f);
    void (*fn)(void *) = f->notify;
    void *a = f->arg;
    pthread_mutex_unlock(&f->mu);
    if (posted && fn) fn(a);
    usleep(300);
  }
  return NULL;
}

static inline int fake_submit(void *ctx, const qv_request_params *p, uint64_t *id, qv_error *err) {
  fake *f = ctx;
  pthread_mutex_lock(&f->mu);
  if (f->n_active >= f->capacity) {
    pthread_mutex_unlock(&f->mu);
    return qv_error_set(err, QV_EBUSY, "fake queue full");
  }
  fake_req *r = calloc(1, sizeof *r);
  r->id = ++f->next_id;
  r->n = p->n;
  r->max_tokens = p->max_tokens > 0 ? p->max_tokens : f->default_max;
  r->n_prompt = p->n_prompt;
  r->logprobs = p->sampling.logprobs;
  r->n_top = p->sampling.top_logprobs;
  for (int32_t s = 0; s < p->n_stop && s < 16; s++) snprintf(r->stop[s], 8, "%s", p->stop[s]);
  r->n_stop = p->n_stop;
  r->next = f->active;
  f->active = r;
  f->n_active++;
  f->n_submitted++;
  *id = r->id;
  pthread_mutex_unlock(&f->mu);
  return 0;
}

static inline void fake_abort(void *ctx, uint64_t id) {
  fake *f = ctx;
  pthread_mutex_lock(&f->mu);
  for (fake_req *r = f->active; r; r = r->next)
    if (r->id == id && !r->aborted) {
      r->aborted = 1;
      f->n_aborted++;
    }
  pthread_mutex_unlock(&f->mu);
}

static inline int fake_poll(void *ctx, qv_event **evs, int max) {
  fake *f = ctx;
  pthread_mutex_lock(&f->mu);
  int n = f->n_ev < max ? f->n_ev : max;
  memcpy(evs, f->evq, sizeof *evs * (size_t)n);
  memmove(f->evq, f->evq + n, sizeof *evs * (size_t)(f->n_ev - n));
  f->n_ev -= n;
  pthread_mutex_unlock(&f->mu);
  return n;
}

static inline void fake_set_notify(void *ctx, void (*fn)(void *), void *arg) {
  fake *f = ctx;
  pthread_mutex_lock(&f->mu);
  f->notify = fn;
  f->arg = arg;
  pthread_mutex_unlock(&f->mu);
}

static inline void fake_stats(void *ctx, qv_engine_stats *st) {
  fake *f = ctx;
  memset(st, 0, sizeof *st);
  pthread_mutex_lock(&f->mu);
  st->n_running = f->n_active;
  st->n_kv_blocks = 100;
  st->n_kv_blocks_used = f->n_active;
  pthread_mutex_unlock(&f->mu);
}

static inline void fake_event_free(qv_event *ev) {
  if (!ev) return;
  free(ev->token_ids);
  free(ev->logprobs);
  free(ev->top);
  free(ev->text);
  free(ev->stop_str);
  free(ev->error);
  free(ev);
}

static inline int fake_encode(void *ctx, const char *text, size_t len, int add_special, int parse_special,
                       int32_t **ids, size_t *n, qv_error *err) {
  *ids = malloc(sizeof **ids * (len + 1));
  size_t k = 0;
  if (add_special) (*ids)[k++] = 1;
  for (size_t i = 0; i < len; i++) (*ids)[k++] = 3 + (unsigned char)text[i];
  *n = k;
  return 0;
}

static inline int fake_decode(void *ctx, const int32_t *ids, size_t n, int skip_special, char **text,
                       size_t *len, qv_error *err) {
  *text = malloc(n + 1);
  size_t k = 0;
  for (size_t i = 0; i < n; i++)
    if (ids[i] >= 3 && ids[i] < 259) (*text)[k++] = (char)(ids[i] - 3);
  (*text)[k] = '\0';
  *len = k;
  return 0;
}

/* decode and token_bytes over a real tokenizer (fake.tok). */
static inline int fake_tok_decode(void *ctx, const int32_t *ids, size_t n, int skip_special, char **text,
                           size_t *len, qv_error *err) {
  return qv_tokenizer_decode(((fake *)ctx)->tok, ids, n, skip_special ? QV_TOK_SKIP_SPECIAL : 0u,
                             text, len, err);
}

static inline int fake_tok_bytes(void *ctx, int32_t id, char **bytes, size_t *len) {
  return qv_tokenizer_decode(((fake *)ctx)->tok, &id, 1, QV_TOK_KEEP_BYTES, bytes, len, NULL);
}

/* A stand-in tool-call parser: the whole text becomes one call to "f"; with '|' in it, each
 * '|'-separated part is one call (call_1, call_2, ...). */
static inline int fake_parse_tools(void *ctx, const char *text, size_t len, char **content,
                            cJSON **tool_calls, qv_error *err) {
  *content = strdup("");
  *tool_calls = cJSON_CreateArray();
  size_t start = 0;
  for (int k = 1; start <= len; k++) {
    size_t end = start;
    while (end < len && text[end] != '|') end++;
    cJSON *c = cJSON_CreateObject();
    char id[16];
    snprintf(id, sizeof id, "call_%d", k);
    cJSON_AddStringToObject(c, "id", id);
    cJSON_AddStringToObject(c, "type", "function");
    cJSON *fn = cJSON_AddObjectToObject(c, "function");
    cJSON_AddStringToObject(fn, "name", "f");
    char args[300];
    size_t n = end - start;
    snprintf(args, sizeof args, "{\"text\":\"%.*s\"}", (int)(n < 200 ? n : 200), text + start);
    cJSON_AddStringToObject(fn, "arguments", args);
    cJSON_AddItemToArray(*tool_calls, c);
    start = end + 1;
  }
  return 0;
}

/* Streamed: holds all text back and emits it as one call at the end. */
typedef struct fake_tstream {
  char buf[4096];
  size_t len;
} fake_tstream;

static inline void *fake_tstream_create(void *ctx) { return calloc(1, sizeof(fake_tstream)); }
static inline void fake_tstream_destroy(void *st) { free(st); }
static inline int fake_tstream_feed(void *st, const char *delta, size_t len, int finish, char **content,
                             cJSON **calls, qv_error *err) {
  fake_tstream *t = st;
  if (t->len + len < sizeof t->buf) {
    memcpy(t->buf + t->len, delta, len);
    t->len += len;
  }
  *content = NULL;
  *calls = NULL;
  if (finish) {
    char *c = NULL;
    fake_parse_tools(NULL, t->buf, t->len, &c, calls, err);
    free(c);
  }
  return 0;
}

static const srv_model_ops fake_ops = {
    .submit = fake_submit,
    .abort = fake_abort,
    .poll = fake_poll,
    .set_notify = fake_set_notify,
    .get_stats = fake_stats,
    .event_free = fake_event_free,
    .encode = fake_encode,
    .decode = fake_decode,
    .render_chat = NULL,
};

static const srv_model_ops fake_ops_tools = {
    .submit = fake_submit,
    .abort = fake_abort,
    .poll = fake_poll,
    .set_notify = fake_set_notify,
    .get_stats = fake_stats,
    .event_free = fake_event_free,
    .encode = fake_encode,
    .decode = fake_decode,
    .render_chat = NULL,
    .parse_tools = fake_parse_tools,
    .tool_stream_create = fake_tstream_create,
    .tool_stream_feed = fake_tstream_feed,
    .tool_stream_destroy = fake_tstream_destroy,
};

static const srv_model_ops fake_ops_tok = {
    .submit = fake_submit,
    .abort = fake_abort,
    .poll = fake_poll,
    .set_notify = fake_set_notify,
    .get_stats = fake_stats,
    .event_free = fake_event_free,
    .encode = fake_encode,
    .decode = fake_tok_decode,
    .render_chat = NULL,
    .token_bytes = fake_tok_bytes,
};

static inline int fake_n_active(fake *f) {
  pthread_mutex_lock(&f->mu);
  int n = f->n_active;
  pthread_mutex_unlock(&f->mu);
  return n;
}

static inline void fake_set_hold(fake *f, int hold) {
  pthread_mutex_lock(&f->mu);
  f->hold = hold;
  pthread_mutex_unlock(&f->mu);
}

/* ---- harness: the server on its loop thread ---- */

typedef struct harness {
  uv_loop_t loop;
  registry reg;
  fake fakes[2];
  srv_model models[2];
  server *srv;
  pthread_t th;
  int port;
  int first_failed;    /* set before start: model 0 failed to load */
  int max_connections; /* set before start: 0 keeps the default */
  const char *script;  /* set before start: the fakes' scripted output (see fake.script) */
  size_t max_total_output; /* set before start: 0 keeps the default */
  size_t max_buffered;     /* set before start: 0 keeps the default */
  const int32_t *top_ids;   /* set before start: see fake.top_ids */
  const qv_tokenizer *tok;  /* set before start: model 0 decodes with it (see fake.tok) */
} harness;

static harness H;

static inline void *loop_thread(void *arg) {
  uv_run(&H.loop, UV_RUN_DEFAULT);
  return NULL;
}

static inline void start(const char *cfg, const char *api_key, uint64_t header_timeout_ms,
                  uint64_t idle_timeout_ms) {
  signal(SIGPIPE, SIG_IGN); /* the server writes to sockets these tests close */
  int first_failed = H.first_failed, max_connections = H.max_connections;
  size_t max_total_output = H.max_total_output, max_buffered = H.max_buffered;
  const char *script = H.script;
  const int32_t *top_ids = H.top_ids;
  const qv_tokenizer *tok = H.tok;
  memset(&H, 0, sizeof H);
  uv_loop_init(&H.loop);
  registry_init(&H.reg);
  qv_error err = {0};
  if (!cfg) cfg = "{\"models\":[{\"name\":\"lower\",\"path\":\"/fake/a\"},"
                  "{\"name\":\"upper\",\"path\":\"/fake/b\"}],"
                  "\"aliases\":{\"small\":\"lower\",\"auto\":\"r\"},"
                  "\"routes\":{\"r\":[\"lower\",\"upper\"]}}";
  cr_assert_eq(registry_load_json(&H.reg, cfg, strlen(cfg), &err), 0, "%s", err.msg);
  if (api_key) cr_assert_eq(registry_add_api_key(&H.reg, api_key, &err), 0);
  cr_assert_eq(registry_finalize(&H.reg, &err), 0, "%s", err.msg);
  for (int i = 0; i < H.reg.n_models; i++) {
    fake *f = &H.fakes[i];
    pthread_mutex_init(&f->mu, NULL);
    f->running = 1;
    f->capacity = 1000;
    f->burst = 1;
    f->default_max = 8;
    f->base = i == 0 ? 'a' : 'A';
    f->script = script;
    f->top_ids = top_ids;
    f->tok = i == 0 ? tok : NULL;
    pthread_create(&f->th, NULL, fake_thread, f);
    H.models[i] = (srv_model){i == 1 ? &fake_ops_tools : f->tok ? &fake_ops_tok : &fake_ops, f, 64,
                              259, 1, "ready", H.reg.models[i].reasoning};
  }
  if (first_failed)
    H.models[0] = (srv_model){&fake_ops, &H.fakes[0], 64, 259, 0, "failed: test", REG_REASONING_UNSET};
  server_opts o;
  server_opts_default(&o);
  o.port = 0;
  o.handle_signals = 0;
  o.drain_timeout_ms = 5000;
  if (header_timeout_ms) o.limits.header_timeout_ms = header_timeout_ms;
  if (idle_timeout_ms) o.limits.idle_timeout_ms = idle_timeout_ms;
  if (max_connections) o.limits.max_connections = max_connections;
  if (max_total_output) o.limits.max_total_output_bytes = max_total_output;
  if (max_buffered) o.limits.max_buffered_body_bytes = max_buffered;
  o.limits.max_header_bytes = 4096;
  o.limits.max_body_bytes = 64 * 1024;
  o.max_stream_backlog_bytes = 256 * 1024;
  cr_assert_eq(server_create(&H.loop, &H.reg, H.models, &o, &H.srv, &err), 0, "%s", err.msg);
  H.port = server_port(H.srv);
  pthread_create(&H.th, NULL, loop_thread, NULL);
}

static inline void stop(void) {
  server_shutdown(H.srv);
  pthread_join(H.th, NULL);
  for (int i = 0; i < H.reg.n_models; i++) {
    fake *f = &H.fakes[i];
    pthread_mutex_lock(&f->mu);
    f->running = 0;
    pthread_mutex_unlock(&f->mu);
    pthread_join(f->th, NULL);
    while (f->active) {
      fake_req *r = f->active;
      f->active = r->next;
      free(r);
    }
    for (int k = 0; k < f->n_ev; k++) fake_event_free(f->evq[k]);
    free(f->evq);
    pthread_mutex_destroy(&f->mu);
  }
  server_destroy(H.srv);
  uv_loop_close(&H.loop);
  registry_deinit(&H.reg);
}

/* ---- client ---- */

typedef struct client {
  int fd;
  char buf[1 << 18];
  size_t len;
} client;

static inline client *client_open(void) {
  client *c = calloc(1, sizeof *c);
  c->fd = socket(AF_INET, SOCK_STREAM, 0);
  struct timeval tv = {10, 0};
  setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)H.port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  cr_assert_eq(connect(c->fd, (struct sockaddr *)&a, sizeof a), 0);
  return c;
}

static inline void client_close(client *c) {
  close(c->fd);
  free(c);
}

static inline void client_send(client *c, const char *s, size_t n) {
  while (n) {
    ssize_t k = send(c->fd, s, n, MSG_NOSIGNAL);
    cr_assert_gt(k, 0);
    s += k;
    n -= (size_t)k;
  }
}

/* Reads more bytes; 0 on EOF/timeout. */
static inline int client_fill(client *c) {
  if (c->len + 1 >= sizeof c->buf) return 0;
  ssize_t k = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len - 1, 0);
  if (k <= 0) return 0;
  c->len += (size_t)k;
  c->buf[c->len] = '\0';
  return 1;
}

static inline void consume(client *c, size_t n) {
  memmove(c->buf, c->buf + n, c->len - n);
  c->len -= n;
  c->buf[c->len] = '\0';
}

/* One response: status, body (malloc'd, chunked bodies decoded), and the header block. */
typedef struct resp {
  int status;
  char head[2048];
  char *body;
  size_t body_len;
} resp;

static inline int read_resp(client *c, resp *r) {
  memset(r, 0, sizeof *r);
  char *eoh;
  while (!(eoh = strstr(c->buf, "\r\n\r\n")))
    if (!client_fill(c)) return 0;
  size_t hl = (size_t)(eoh - c->buf) + 4;
  snprintf(r->head, sizeof r->head, "%.*s", (int)hl, c->buf);
  sscanf(r->head, "HTTP/1.1 %d", &r->status);
  consume(c, hl);
  if (r->status == 100) return read_resp(c, r);
  const char *cl = strcasestr(r->head, "content-length:");
  if (cl) {
    size_t n = strtoul(cl + 15, NULL, 10);
    while (c->len < n)
      if (!client_fill(c)) return 0;
    r->body = malloc(n + 1);
    memcpy(r->body, c->buf, n);
    r->body[n] = '\0';
    r->body_len = n;
    consume(c, n);
    return 1;
  }
  /* chunked */
  r->body = malloc(1);
  r->body[0] = '\0';
  for (;;) {
    char *eol;
    while (!(eol = strstr(c->buf, "\r\n")))
      if (!client_fill(c)) return 0;
    size_t n = strtoul(c->buf, NULL, 16);
    size_t ll = (size_t)(eol - c->buf) + 2;
    while (c->len < ll + n + 2)
      if (!client_fill(c)) return 0;
    r->body = realloc(r->body, r->body_len + n + 1);
    memcpy(r->body + r->body_len, c->buf + ll, n);
    r->body_len += n;
    r->body[r->body_len] = '\0';
    consume(c, ll + n + 2);
    if (n == 0) return 1;
  }
}

/* Holds model 0's fake, sends a completions body on a new connection and waits until the fake
 * holds it: a request in flight for drain, fallback and disconnect tests. */
static inline client *held_request(const char *body) {
  fake_set_hold(&H.fakes[0], 1);
  client *c = client_open();
  char req[512];
  int n = snprintf(req, sizeof req, "POST /v1/completions HTTP/1.1\r\nContent-Length: %zu\r\n\r\n%s",
                   strlen(body), body);
  client_send(c, req, (size_t)n);
  for (int i = 0; i < 500 && fake_n_active(&H.fakes[0]) < 1; i++) usleep(10000);
  return c;
}

static inline resp request(const char *method, const char *path, const char *body, const char *extra) {
  client *c = client_open();
  char head[1024];
  int n = snprintf(head, sizeof head,
                   "%s %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   "Content-Length: %zu\r\n%s\r\n",
                   method, path, body ? strlen(body) : 0, extra ? extra : "");
  client_send(c, head, (size_t)n);
  if (body) client_send(c, body, strlen(body));
  resp r;
  cr_assert(read_resp(c, &r), "no response to %s %s", method, path);
  client_close(c);
  return r;
}

static inline cJSON *json_of(const resp *r) {
  cJSON *j = cJSON_Parse(r->body);
  cr_assert_not_null(j, "not JSON: %s", r->body);
  return j;
}

/* The text the fake produces: choice c of a prompt of n_prompt tokens, k letters. */
static inline void expected(char base, int32_t n_prompt, int32_t c, int32_t k, char *out) {
  for (int32_t i = 0; i < k; i++) out[i] = (char)(base + (i + c + n_prompt) % 26);
  out[k] = '\0';
}

/* Concatenates "text" or delta content of each SSE chunk of choice idx; counts [DONE]. */
static inline void sse_collect(const char *body, int32_t idx, char *text, int *n_done, cJSON **usage,
                        const char **finish) {
  text[0] = '\0';
  *n_done = 0;
  for (const char *p = body; (p = strstr(p, "data: ")); p += 6) {
    const char *e = strstr(p, "\n\n");
    cr_assert_not_null(e);
    if (!strncmp(p + 6, "[DONE]", 6)) {
      (*n_done)++;
      continue;
    }
    cJSON *j = cJSON_ParseWithLength(p + 6, (size_t)(e - p - 6));
    cr_assert_not_null(j);
    cJSON *u = cJSON_GetObjectItem(j, "usage");
    if (usage && u && !cJSON_IsNull(u)) {
      cJSON_Delete(*usage);
      *usage = cJSON_Duplicate(u, 1);
    }
    cJSON *ch;
    cJSON_ArrayForEach(ch, cJSON_GetObjectItem(j, "choices")) {
      if (cJSON_GetObjectItem(ch, "index")->valueint != idx) continue;
      cJSON *t = cJSON_GetObjectItem(ch, "text");
      cJSON *d = cJSON_GetObjectItem(ch, "delta");
      if (d) t = cJSON_GetObjectItem(d, "content");
      if (cJSON_IsString(t)) strcat(text, t->valuestring);
      cJSON *f = cJSON_GetObjectItem(ch, "finish_reason");
      if (finish && cJSON_IsString(f)) *finish = strcmp(f->valuestring, "stop") ? "length" : "stop";
    }
    cJSON_Delete(j);
  }
}

#endif
