#define _GNU_SOURCE
/* The server end to end over real sockets, with fake models behind srv_model_ops: a fake
 * engine thread that produces deterministic letters, a byte tokenizer and the default chat
 * format. Covers the OpenAI endpoints (streamed and not), errors, auth, keep-alive and
 * pipelining, malformed and oversized requests, chunked bodies, timeouts, client disconnects
 * (which must abort the engine request), route fallback on a full queue, and graceful drain.
 * Every socket read has a timeout and every wait loop a bound. */
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

static char fake_letter(const fake *f, const fake_req *r, int32_t choice, int32_t k) {
  return (char)(f->base + (k + choice + r->n_prompt) % 26);
}

static void post(fake *f, qv_event *ev) {
  if (f->n_ev == f->cap_ev) {
    f->cap_ev = f->cap_ev ? f->cap_ev * 2 : 64;
    f->evq = realloc(f->evq, sizeof *f->evq * (size_t)f->cap_ev);
  }
  f->evq[f->n_ev++] = ev;
}

static qv_event *new_event(qv_event_type t, fake_req *r, int32_t c) {
  qv_event *ev = calloc(1, sizeof *ev);
  ev->type = t;
  ev->req_id = r->id;
  ev->choice = c;
  ev->text = strdup("");
  ev->stop_token = -1;
  return ev;
}

static void finish(fake *f, fake_req *r, int32_t c, qv_finish_reason why, const char *stop) {
  qv_event *ev = new_event(QV_EVENT_FINISH, r, c);
  ev->finish = why;
  ev->stop_str = stop ? strdup(stop) : NULL;
  ev->prompt_tokens = r->n_prompt;
  ev->completion_tokens = r->produced[c];
  r->finished[c] = 1;
  post(f, ev);
}

/* One step under the lock: aborts always, tokens unless held. Returns 1 if it posted. */
static int fake_step(fake *f) {
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

static void *fake_thread(void *arg) {
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

static int fake_submit(void *ctx, const qv_request_params *p, uint64_t *id, qv_error *err) {
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

static void fake_abort(void *ctx, uint64_t id) {
  fake *f = ctx;
  pthread_mutex_lock(&f->mu);
  for (fake_req *r = f->active; r; r = r->next)
    if (r->id == id && !r->aborted) {
      r->aborted = 1;
      f->n_aborted++;
    }
  pthread_mutex_unlock(&f->mu);
}

static int fake_poll(void *ctx, qv_event **evs, int max) {
  fake *f = ctx;
  pthread_mutex_lock(&f->mu);
  int n = f->n_ev < max ? f->n_ev : max;
  memcpy(evs, f->evq, sizeof *evs * (size_t)n);
  memmove(f->evq, f->evq + n, sizeof *evs * (size_t)(f->n_ev - n));
  f->n_ev -= n;
  pthread_mutex_unlock(&f->mu);
  return n;
}

static void fake_set_notify(void *ctx, void (*fn)(void *), void *arg) {
  fake *f = ctx;
  pthread_mutex_lock(&f->mu);
  f->notify = fn;
  f->arg = arg;
  pthread_mutex_unlock(&f->mu);
}

static void fake_stats(void *ctx, qv_engine_stats *st) {
  fake *f = ctx;
  memset(st, 0, sizeof *st);
  pthread_mutex_lock(&f->mu);
  st->n_running = f->n_active;
  st->n_kv_blocks = 100;
  st->n_kv_blocks_used = f->n_active;
  pthread_mutex_unlock(&f->mu);
}

static void fake_event_free(qv_event *ev) {
  if (!ev) return;
  free(ev->token_ids);
  free(ev->logprobs);
  free(ev->top);
  free(ev->text);
  free(ev->stop_str);
  free(ev->error);
  free(ev);
}

static int fake_encode(void *ctx, const char *text, size_t len, int add_special, int parse_special,
                       int32_t **ids, size_t *n, qv_error *err) {
  *ids = malloc(sizeof **ids * (len + 1));
  size_t k = 0;
  if (add_special) (*ids)[k++] = 1;
  for (size_t i = 0; i < len; i++) (*ids)[k++] = 3 + (unsigned char)text[i];
  *n = k;
  return 0;
}

static int fake_decode(void *ctx, const int32_t *ids, size_t n, int skip_special, char **text,
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
static int fake_tok_decode(void *ctx, const int32_t *ids, size_t n, int skip_special, char **text,
                           size_t *len, qv_error *err) {
  return qv_tokenizer_decode(((fake *)ctx)->tok, ids, n, skip_special ? QV_TOK_SKIP_SPECIAL : 0u,
                             text, len, err);
}

static int fake_tok_bytes(void *ctx, int32_t id, char **bytes, size_t *len) {
  return qv_tokenizer_decode(((fake *)ctx)->tok, &id, 1, QV_TOK_KEEP_BYTES, bytes, len, NULL);
}

/* A stand-in tool-call parser: the whole text becomes one call to "f"; with '|' in it, each
 * '|'-separated part is one call (call_1, call_2, ...). */
static int fake_parse_tools(void *ctx, const char *text, size_t len, char **content,
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

static void *fake_tstream_create(void *ctx) { return calloc(1, sizeof(fake_tstream)); }
static void fake_tstream_destroy(void *st) { free(st); }
static int fake_tstream_feed(void *st, const char *delta, size_t len, int finish, char **content,
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

static int fake_n_active(fake *f) {
  pthread_mutex_lock(&f->mu);
  int n = f->n_active;
  pthread_mutex_unlock(&f->mu);
  return n;
}

static void fake_set_hold(fake *f, int hold) {
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
  const int32_t *top_ids;   /* set before start: see fake.top_ids */
  const qv_tokenizer *tok;  /* set before start: model 0 decodes with it (see fake.tok) */
} harness;

static harness H;

static void *loop_thread(void *arg) {
  uv_run(&H.loop, UV_RUN_DEFAULT);
  return NULL;
}

static void start(const char *cfg, const char *api_key, uint64_t header_timeout_ms,
                  uint64_t idle_timeout_ms) {
  signal(SIGPIPE, SIG_IGN); /* the server writes to sockets these tests close */
  int first_failed = H.first_failed, max_connections = H.max_connections;
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
  o.limits.max_header_bytes = 4096;
  o.limits.max_body_bytes = 64 * 1024;
  o.max_stream_backlog_bytes = 256 * 1024;
  cr_assert_eq(server_create(&H.loop, &H.reg, H.models, &o, &H.srv, &err), 0, "%s", err.msg);
  H.port = server_port(H.srv);
  pthread_create(&H.th, NULL, loop_thread, NULL);
}

static void stop(void) {
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

static client *client_open(void) {
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

static void client_close(client *c) {
  close(c->fd);
  free(c);
}

static void client_send(client *c, const char *s, size_t n) {
  while (n) {
    ssize_t k = send(c->fd, s, n, MSG_NOSIGNAL);
    cr_assert_gt(k, 0);
    s += k;
    n -= (size_t)k;
  }
}

/* Reads more bytes; 0 on EOF/timeout. */
static int client_fill(client *c) {
  if (c->len + 1 >= sizeof c->buf) return 0;
  ssize_t k = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len - 1, 0);
  if (k <= 0) return 0;
  c->len += (size_t)k;
  c->buf[c->len] = '\0';
  return 1;
}

static void consume(client *c, size_t n) {
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

static int read_resp(client *c, resp *r) {
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

static resp request(const char *method, const char *path, const char *body, const char *extra) {
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

static cJSON *json_of(const resp *r) {
  cJSON *j = cJSON_Parse(r->body);
  cr_assert_not_null(j, "not JSON: %s", r->body);
  return j;
}

/* The text the fake produces: choice c of a prompt of n_prompt tokens, k letters. */
static void expected(char base, int32_t n_prompt, int32_t c, int32_t k, char *out) {
  for (int32_t i = 0; i < k; i++) out[i] = (char)(base + (i + c + n_prompt) % 26);
  out[k] = '\0';
}

/* Concatenates "text" or delta content of each SSE chunk of choice idx; counts [DONE]. */
static void sse_collect(const char *body, int32_t idx, char *text, int *n_done, cJSON **usage,
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

/* ---- tests ---- */

Test(server, health_models_metrics) {
  start(NULL, NULL, 0, 0);
  resp r = request("GET", "/health", NULL, NULL);
  cr_assert_eq(r.status, 200);
  cr_assert(strstr(r.body, "\"status\":\"ok\""), "%s", r.body);
  free(r.body);
  r = request("GET", "/v1/models", NULL, NULL);
  cr_assert_eq(r.status, 200);
  cJSON *j = json_of(&r);
  cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(j, "data")), 5); /* 2 models, 2 aliases, 1 route */
  cJSON_Delete(j);
  free(r.body);
  r = request("GET", "/v1/models/small", NULL, NULL);
  cr_assert_eq(r.status, 200);
  cr_assert(strstr(r.body, "\"root\":\"lower\""), "%s", r.body);
  free(r.body);
  r = request("GET", "/v1/models/nope", NULL, NULL);
  cr_assert_eq(r.status, 404);
  free(r.body);
  r = request("POST", "/v1/completions", "{\"model\":\"lower\",\"prompt\":\"Hi\",\"max_tokens\":3}", NULL);
  cr_assert_eq(r.status, 200);
  free(r.body);
  r = request("GET", "/metrics", NULL, NULL);
  cr_assert_eq(r.status, 200);
  cr_assert(strstr(r.body, "quiver_requests_total{model=\"lower\",status=\"200\"} 1"), "%s", r.body);
  cr_assert(strstr(r.body, "quiver_generation_tokens_total{model=\"lower\"} 3"), "%s", r.body);
  cr_assert(strstr(r.body, "quiver_time_to_first_token_seconds_count{model=\"lower\"} 1"));
  free(r.body);
  stop();
}

/* Completions top_logprobs is keyed by token name: with stories260K's tokenizer, three byte
 * tokens that each decode to U+FFFD and two tokens that both read "a" are five alternatives, so
 * five distinct keys (bytes:\xNN for the partial UTF-8 ones, token_id:<id> for the later "a"),
 * streamed or not; tokens[] names the sampled token the same way. Chat logprobs keep the text
 * (U+FFFD) and carry the bytes. */
Test(server, completion_top_logprobs_distinct_keys) {
  char dir[4096];
  if (!test_shared_path(dir, sizeof dir, "models/stories260K/tokenizer.json"))
    cr_skip_test("stories260K not found");
  qv_tokenizer *tok;
  qv_error err = {0};
  cr_assert_eq(qv_tokenizer_load(dir, &tok, &err), 0, "%s", err.msg);
  int32_t e4 = qv_tokenizer_token_id(tok, "<0xE4>"), e5 = qv_tokenizer_token_id(tok, "<0xE5>");
  int32_t e6 = qv_tokenizer_token_id(tok, "<0xE6>"), byte_a = qv_tokenizer_token_id(tok, "<0x61>");
  int32_t piece_a = qv_tokenizer_token_id(tok, "a");
  cr_assert(byte_a == 3 + 'a' && e4 == 3 + 0xE4 && e5 > 0 && e6 > 0 && piece_a > 258,
            "stories260K's byte tokens are ids 3 + b");
  int32_t top[5] = {e4, e5, byte_a, piece_a, e6};
  H.tok = tok;
  H.top_ids = top;
  H.script = "a";
  start(NULL, NULL, 0, 0);
  char want_id[32];
  snprintf(want_id, sizeof want_id, "token_id:%d", piece_a);
  for (int stream = 0; stream < 2; stream++) {
    char body[200];
    snprintf(body, sizeof body,
             "{\"model\":\"lower\",\"prompt\":\"Hi\",\"max_tokens\":1,\"logprobs\":5%s}",
             stream ? ",\"stream\":true" : "");
    resp r = request("POST", "/v1/completions", body, NULL);
    cr_assert_eq(r.status, 200, "%s", r.body);
    const char *js = stream ? strstr(r.body, "data: {") + 6 : r.body;
    cJSON *j = cJSON_Parse(js);
    cr_assert_not_null(j, "%s", r.body);
    cJSON *lp = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0), "logprobs");
    cJSON *top0 = cJSON_GetArrayItem(cJSON_GetObjectItem(lp, "top_logprobs"), 0);
    cr_assert_eq(cJSON_GetArraySize(top0), 5, "%s", r.body);
    const char *keys[5] = {"bytes:\\xe4", "bytes:\\xe5", "a", want_id, "bytes:\\xe6"};
    for (int k = 0; k < 5; k++) {
      cJSON *v = cJSON_GetObjectItem(top0, keys[k]);
      cr_assert(cJSON_IsNumber(v), "no key %s in %s", keys[k], r.body);
      cr_assert_float_eq(v->valuedouble, -0.5 - k, 1e-6, "key %s", keys[k]);
    }
    cr_assert_str_eq(cJSON_GetArrayItem(cJSON_GetObjectItem(lp, "tokens"), 0)->valuestring, "a");
    cJSON_Delete(j);
    free(r.body);
  }
  resp r = request("POST", "/v1/chat/completions",
                   "{\"model\":\"lower\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],"
                   "\"max_tokens\":1,\"logprobs\":true,\"top_logprobs\":5}",
                   NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cJSON *j = json_of(&r);
  cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(cJSON_GetObjectItem(
      cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0), "logprobs"), "content"), 0);
  cJSON *tl = cJSON_GetObjectItem(c0, "top_logprobs");
  cr_assert_eq(cJSON_GetArraySize(tl), 5);
  cJSON *t0 = cJSON_GetArrayItem(tl, 0);
  cr_assert_str_eq(cJSON_GetObjectItem(t0, "token")->valuestring, "\xEF\xBF\xBD");
  cJSON *b = cJSON_GetObjectItem(t0, "bytes");
  cr_assert(cJSON_GetArraySize(b) == 3 && cJSON_GetArrayItem(b, 0)->valueint == 0xEF);
  cr_assert_str_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(tl, 3), "token")->valuestring, "a");
  cJSON_Delete(j);
  free(r.body);
  stop();
  H.tok = NULL;
  H.top_ids = NULL;
  H.script = NULL;
  qv_tokenizer_destroy(tok);
}

Test(server, completion_not_streamed_n2_echo_logprobs) {
  start(NULL, NULL, 0, 0);
  resp r = request("POST", "/v1/completions",
                   "{\"model\":\"lower\",\"prompt\":\"Hi\",\"max_tokens\":5,\"n\":2,"
                   "\"logprobs\":2}",
                   NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cJSON *j = json_of(&r);
  cJSON *choices = cJSON_GetObjectItem(j, "choices");
  cr_assert_eq(cJSON_GetArraySize(choices), 2);
  for (int c = 0; c < 2; c++) {
    char want[64];
    expected('a', 3, c, 5, want); /* BOS + 2 bytes */
    cJSON *ch = cJSON_GetArrayItem(choices, c);
    cr_assert_str_eq(cJSON_GetObjectItem(ch, "text")->valuestring, want);
    cr_assert_str_eq(cJSON_GetObjectItem(ch, "finish_reason")->valuestring, "length");
    cJSON *lp = cJSON_GetObjectItem(ch, "logprobs");
    cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(lp, "tokens")), 5);
    cJSON *top0 = cJSON_GetArrayItem(cJSON_GetObjectItem(lp, "top_logprobs"), 0);
    cr_assert_eq(cJSON_GetArraySize(top0), 2);
    cr_assert_float_eq(cJSON_GetObjectItem(top0, "b")->valuedouble, -1.5, 1e-6);
  }
  cJSON *u = cJSON_GetObjectItem(j, "usage");
  cr_assert_eq(cJSON_GetObjectItem(u, "prompt_tokens")->valueint, 3);
  cr_assert_eq(cJSON_GetObjectItem(u, "completion_tokens")->valueint, 10);
  cJSON_Delete(j);
  free(r.body);
  /* echo prepends the prompt. */
  r = request("POST", "/v1/completions",
              "{\"model\":\"lower\",\"prompt\":\"Hi\",\"max_tokens\":4,\"echo\":true}", NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  char echoed[16] = "Hi";
  expected('a', 3, 0, 4, echoed + 2);
  char needle[40];
  snprintf(needle, sizeof needle, "\"text\":\"%s\"", echoed);
  cr_assert(strstr(r.body, needle), "%s", r.body);
  free(r.body);
  /* Two prompts, a stop string: choices are prompt-major. */
  r = request("POST", "/v1/completions",
              "{\"model\":\"lower\",\"prompt\":[\"a\",[70,71,72]],\"max_tokens\":6,\"stop\":[\"h\"]}",
              NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  j = json_of(&r);
  choices = cJSON_GetObjectItem(j, "choices");
  cr_assert_eq(cJSON_GetArraySize(choices), 2);
  /* prompt 0: 2 tokens -> letters start at 'c': c d e f g (h stops) */
  cr_assert_str_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(choices, 0), "text")->valuestring, "cdefg");
  cr_assert_str_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(choices, 0), "finish_reason")->valuestring, "stop");
  cr_assert_str_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(choices, 0), "stop_reason")->valuestring, "h");
  cr_assert_str_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(choices, 1), "text")->valuestring, "defg");
  cJSON_Delete(j);
  free(r.body);
  stop();
}

Test(server, streamed_completion_and_chat) {
  start(NULL, NULL, 0, 0);
  resp r = request("POST", "/v1/completions",
                   "{\"model\":\"small\",\"prompt\":\"Hey\",\"max_tokens\":7,\"stream\":true,"
                   "\"stream_options\":{\"include_usage\":true}}",
                   NULL);
  cr_assert_eq(r.status, 200);
  cr_assert(strcasestr(r.head, "text/event-stream"));
  char text[256], want[64];
  int n_done = 0;
  cJSON *usage = NULL;
  const char *fin = NULL;
  sse_collect(r.body, 0, text, &n_done, &usage, &fin);
  expected('a', 4, 0, 7, want);
  cr_assert_str_eq(text, want);
  cr_assert_eq(n_done, 1);
  cr_assert_str_eq(fin, "length");
  cr_assert_not_null(usage);
  cr_assert_eq(cJSON_GetObjectItem(usage, "completion_tokens")->valueint, 7);
  cJSON_Delete(usage);
  cr_assert(!strcmp(r.body + r.body_len - 14, "data: [DONE]\n\n"));
  free(r.body);

  r = request("POST", "/v1/chat/completions",
              "{\"model\":\"upper\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],"
              "\"max_tokens\":4,\"stream\":true}",
              NULL);
  cr_assert_eq(r.status, 200);
  cr_assert(strstr(r.body, "\"role\":\"assistant\""));
  sse_collect(r.body, 0, text, &n_done, NULL, NULL);
  /* "<|user|>\nHi\n<|assistant|>\n" is 26 bytes + BOS = 27 tokens. */
  expected('A', 27, 0, 4, want);
  cr_assert_str_eq(text, want);
  cr_assert(strstr(r.body, "chat.completion.chunk"));
  free(r.body);

  r = request("POST", "/v1/chat/completions",
              "{\"model\":\"upper\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],"
              "\"max_tokens\":4,\"logprobs\":true,\"top_logprobs\":1}",
              NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cJSON *j = json_of(&r);
  cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
  cr_assert_str_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(ch, "message"), "content")->valuestring, want);
  cJSON *content = cJSON_GetObjectItem(cJSON_GetObjectItem(ch, "logprobs"), "content");
  cr_assert_eq(cJSON_GetArraySize(content), 4);
  cJSON_Delete(j);
  free(r.body);
  stop();
}

Test(server, errors_and_auth) {
  start(NULL, "sk-test-1", 0, 0);
  const char *auth = "Authorization: Bearer sk-test-1\r\n";
  resp r = request("POST", "/v1/completions", "{\"prompt\":\"x\"}", NULL);
  cr_assert_eq(r.status, 401);
  cr_assert(strstr(r.body, "authentication_error"));
  free(r.body);
  r = request("POST", "/v1/completions", "{\"prompt\":\"x\"}", "Authorization: Bearer nope\r\n");
  cr_assert_eq(r.status, 401);
  free(r.body);
  r = request("GET", "/health", NULL, NULL); /* open by default */
  cr_assert_eq(r.status, 200);
  free(r.body);
  r = request("POST", "/v1/completions", "{\"model\":\"ghost\",\"prompt\":\"x\"}", auth);
  cr_assert_eq(r.status, 404);
  cr_assert(strstr(r.body, "lower") && strstr(r.body, "upper") && strstr(r.body, "auto"), "%s", r.body);
  free(r.body);
  r = request("POST", "/v1/completions", "{\"prompt\":", auth);
  cr_assert_eq(r.status, 400);
  free(r.body);
  r = request("POST", "/v1/chat/completions",
              "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"response_format\":"
              "{\"type\":\"json_schema\"}}",
              auth);
  cr_assert_eq(r.status, 400);
  cr_assert(strstr(r.body, "response_format"));
  free(r.body);
  char big[256];
  memset(big, 'z', 100);
  big[100] = '\0';
  char body[400];
  snprintf(body, sizeof body, "{\"prompt\":\"%s\"}", big);
  r = request("POST", "/v1/completions", body, auth);
  cr_assert_eq(r.status, 400); /* 101 tokens > max_model_len 64 */
  cr_assert(strstr(r.body, "maximum context length"), "%s", r.body);
  free(r.body);
  r = request("POST", "/v1/completions", "{\"prompt\":\"ab\",\"max_tokens\":62}", auth);
  cr_assert_eq(r.status, 400, "%s", r.body); /* 3 + 62 > 64 */
  free(r.body);
  r = request("GET", "/v1/completions", NULL, auth);
  cr_assert_eq(r.status, 405);
  cr_assert(strcasestr(r.head, "Allow: POST"));
  free(r.body);
  r = request("GET", "/nowhere", NULL, auth);
  cr_assert_eq(r.status, 404);
  free(r.body);
  r = request("POST", "/detokenize", "{\"tokens\":[75,108,1000]}", auth);
  cr_assert_eq(r.status, 400);
  free(r.body);
  r = request("POST", "/detokenize", "{\"tokens\":[75,108]}", auth);
  cr_assert_eq(r.status, 200);
  cr_assert(strstr(r.body, "\"prompt\":\"Hi\""), "%s", r.body);
  free(r.body);
  r = request("POST", "/tokenize", "{\"prompt\":\"Hi\"}", auth);
  cr_assert_eq(r.status, 200);
  cr_assert(strstr(r.body, "\"tokens\":[1,75,108]"), "%s", r.body);
  free(r.body);
  stop();
}

Test(server, keepalive_pipelining_chunked) {
  start(NULL, NULL, 0, 0);
  client *c = client_open();
  const char *two =
      "GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
      "POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
      "a\r\n{\"prompt\":\r\n14\r\n\"Yo\",\"max_tokens\":2}\r\n0\r\n\r\n"
      "GET /v1/models/upper HTTP/1.1\r\nHost: x\r\n\r\n";
  client_send(c, two, strlen(two));
  resp r;
  cr_assert(read_resp(c, &r));
  cr_assert_eq(r.status, 200);
  cr_assert(strstr(r.body, "\"status\""));
  free(r.body);
  cr_assert(read_resp(c, &r));
  cr_assert_eq(r.status, 200, "%s", r.body);
  char want[8];
  expected('a', 3, 0, 2, want);
  cr_assert(strstr(r.body, want), "%s", r.body);
  free(r.body);
  cr_assert(read_resp(c, &r));
  cr_assert_eq(r.status, 200);
  cr_assert(strstr(r.body, "\"id\":\"upper\""));
  free(r.body);
  /* Same connection stays usable. */
  const char *again = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
  client_send(c, again, strlen(again));
  cr_assert(read_resp(c, &r));
  cr_assert_eq(r.status, 200);
  free(r.body);
  client_close(c);
  stop();
}

Test(server, malformed_and_oversized) {
  start(NULL, NULL, 0, 0);
  static const struct {
    const char *raw;
    int status;
  } cases[] = {
      {"GARBAGE\r\n\r\n", 400},
      {"GET /health HTTP/9.9\r\n\r\n", 400},
      {"GET /health HTTP/1.1\r\nBad Header\r\n\r\n", 400},
      {"POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400},
      {"POST /v1/completions HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n", 413},
      {"POST /v1/completions HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", 400},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    client *c = client_open();
    client_send(c, cases[i].raw, strlen(cases[i].raw));
    resp r;
    cr_assert(read_resp(c, &r), "case %zu: no response", i);
    cr_expect_eq(r.status, cases[i].status, "case %zu: got %d", i, r.status);
    cr_expect(strcasestr(r.head, "Connection: close"), "case %zu keeps the connection", i);
    free(r.body);
    client_close(c);
  }
  /* Headers over the 4 KiB limit. */
  client *c = client_open();
  char *big = malloc(8192);
  int n = snprintf(big, 8192, "GET /health HTTP/1.1\r\nX-Big: ");
  memset(big + n, 'q', 6000);
  memcpy(big + n + 6000, "\r\n\r\n", 5);
  client_send(c, big, strlen(big));
  resp r;
  cr_assert(read_resp(c, &r));
  cr_assert_eq(r.status, 431);
  free(r.body);
  free(big);
  client_close(c);
  /* A chunked body over the 64 KiB limit. */
  c = client_open();
  const char *h = "POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
  client_send(c, h, strlen(h));
  char chunk[8200];
  n = snprintf(chunk, sizeof chunk, "2000\r\n");
  memset(chunk + n, 'x', 8192);
  memcpy(chunk + n + 8192, "\r\n", 2);
  for (int k = 0; k < 9; k++) {
    ssize_t sent = send(c->fd, chunk, (size_t)n + 8194, MSG_NOSIGNAL);
    if (sent <= 0) break;
  }
  cr_assert(read_resp(c, &r));
  cr_assert_eq(r.status, 413);
  free(r.body);
  client_close(c);
  r = request("GET", "/health", NULL, NULL);
  cr_assert_eq(r.status, 200);
  free(r.body);
  stop();
}

Test(server, header_timeout) {
  start(NULL, NULL, 300, 0);
  client *c = client_open();
  const char *part = "GET /health HTTP/1.1\r\nHost: x\r\n"; /* never finished */
  client_send(c, part, strlen(part));
  resp r;
  cr_assert(read_resp(c, &r));
  cr_assert_eq(r.status, 408);
  free(r.body);
  client_close(c);
  r = request("GET", "/health", NULL, NULL);
  cr_assert_eq(r.status, 200);
  free(r.body);
  stop();
}

Test(server, disconnect_aborts) {
  start(NULL, NULL, 0, 0);
  fake_set_hold(&H.fakes[0], 1);
  client *c = client_open();
  const char *body = "{\"model\":\"lower\",\"prompt\":\"x\",\"max_tokens\":50,\"stream\":true,\"n\":2}";
  char req[512];
  int n = snprintf(req, sizeof req, "POST /v1/completions HTTP/1.1\r\nContent-Length: %zu\r\n\r\n%s",
                   strlen(body), body);
  client_send(c, req, (size_t)n);
  /* Wait for the stream to start (headers and the first bytes). */
  while (!strstr(c->buf, "\r\n\r\n")) cr_assert(client_fill(c));
  cr_assert_eq(fake_n_active(&H.fakes[0]), 1);
  client_close(c);
  for (int i = 0; i < 500 && fake_n_active(&H.fakes[0]) > 0; i++) usleep(10000);
  cr_assert_eq(fake_n_active(&H.fakes[0]), 0);
  cr_assert_eq(H.fakes[0].n_aborted, 1);
  fake_set_hold(&H.fakes[0], 0);
  resp r = request("GET", "/health", NULL, NULL);
  cr_assert_eq(r.status, 200);
  free(r.body);
  stop();
}

Test(server, route_falls_back_when_queue_full) {
  start(NULL, NULL, 0, 0);
  H.fakes[0].capacity = 1;
  fake_set_hold(&H.fakes[0], 1);
  client *c = client_open();
  const char *body = "{\"model\":\"auto\",\"prompt\":\"x\",\"max_tokens\":3}";
  char req[512];
  int n = snprintf(req, sizeof req, "POST /v1/completions HTTP/1.1\r\nContent-Length: %zu\r\n\r\n%s",
                   strlen(body), body);
  client_send(c, req, (size_t)n);
  for (int i = 0; i < 500 && fake_n_active(&H.fakes[0]) < 1; i++) usleep(10000);
  cr_assert_eq(fake_n_active(&H.fakes[0]), 1);
  /* The route's first model is full: the second serves (upper-case letters). */
  resp r = request("POST", "/v1/completions", body, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  char want[8];
  expected('A', 2, 0, 3, want);
  cr_assert(strstr(r.body, want), "%s", r.body);
  cr_assert(strstr(r.body, "\"model\":\"auto\""));
  cr_assert(strcasestr(r.head, "X-Quiver-Model: upper"), "%s", r.head);
  free(r.body);
  /* No route: a full queue is a 429. */
  r = request("POST", "/v1/completions", "{\"model\":\"lower\",\"prompt\":\"x\"}", NULL);
  cr_assert_eq(r.status, 429, "%s", r.body);
  free(r.body);
  fake_set_hold(&H.fakes[0], 0);
  resp r1;
  cr_assert(read_resp(c, &r1));
  cr_assert_eq(r1.status, 200);
  expected('a', 2, 0, 3, want);
  cr_assert(strstr(r1.body, want), "%s", r1.body);
  free(r1.body);
  client_close(c);
  stop();
}

Test(server, drain_finishes_in_flight) {
  start(NULL, NULL, 0, 0);
  fake_set_hold(&H.fakes[0], 1);
  client *c = client_open();
  const char *body = "{\"model\":\"lower\",\"prompt\":\"x\",\"max_tokens\":4,\"stream\":true}";
  char req[512];
  int n = snprintf(req, sizeof req, "POST /v1/completions HTTP/1.1\r\nContent-Length: %zu\r\n\r\n%s",
                   strlen(body), body);
  client_send(c, req, (size_t)n);
  for (int i = 0; i < 500 && fake_n_active(&H.fakes[0]) < 1; i++) usleep(10000);
  server_shutdown(H.srv);
  usleep(50000);
  fake_set_hold(&H.fakes[0], 0);
  resp r;
  cr_assert(read_resp(c, &r));
  cr_assert_eq(r.status, 200);
  cr_assert(strstr(r.body, "data: [DONE]"), "%s", r.body);
  cr_assert_eq(client_fill(c), 0); /* then the server closes the connection */
  free(r.body);
  client_close(c);
  stop(); /* a second shutdown request is harmless */
}

Test(server, slow_reader_is_cut_off) {
  start(NULL, NULL, 0, 0);
  H.fakes[0].burst = 64;
  H.fakes[0].default_max = 1 << 30; /* until aborted */
  client *c = calloc(1, sizeof *c);
  c->fd = socket(AF_INET, SOCK_STREAM, 0);
  int small = 4096;
  setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)H.port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  cr_assert_eq(connect(c->fd, (struct sockaddr *)&a, sizeof a), 0);
  /* Chat: no max_tokens means the rest of the context (the fake then runs until aborted). */
  const char *body = "{\"model\":\"lower\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                     "\"stream\":true}";
  char req[512];
  int n = snprintf(req, sizeof req,
                   "POST /v1/chat/completions HTTP/1.1\r\nContent-Length: %zu\r\n\r\n%s",
                   strlen(body), body);
  client_send(c, req, (size_t)n);
  /* Never read: the server must give up on this client and abort its request. */
  for (int i = 0; i < 3000 && (fake_n_active(&H.fakes[0]) > 0 || H.fakes[0].n_aborted == 0); i++)
    usleep(10000);
  cr_assert_eq(H.fakes[0].n_aborted, 1);
  cr_assert_eq(fake_n_active(&H.fakes[0]), 0);
  client_close(c);
  resp r = request("GET", "/health", NULL, NULL);
  cr_assert_eq(r.status, 200);
  free(r.body);
  stop();
}

Test(server, chat_tool_calls) {
  start(NULL, NULL, 0, 0);
  const char *tools = "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]";
  char body[512];
  snprintf(body, sizeof body,
           "{\"model\":\"upper\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],"
           "\"max_tokens\":9,\"stop\":[\"E\"],%s}", tools);
  resp r = request("POST", "/v1/chat/completions", body, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cJSON *j = json_of(&r);
  cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
  cr_assert_str_eq(cJSON_GetObjectItem(ch, "finish_reason")->valuestring, "tool_calls");
  cJSON *msg = cJSON_GetObjectItem(ch, "message");
  cr_assert(cJSON_IsNull(cJSON_GetObjectItem(msg, "content")));
  cJSON *call = cJSON_GetArrayItem(cJSON_GetObjectItem(msg, "tool_calls"), 0);
  char want[8], args[64];
  expected('A', 27, 0, 3, want); /* B C D, then E stops */
  snprintf(args, sizeof args, "{\"text\":\"%s\"}", want);
  cr_assert_str_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(call, "function"), "arguments")->valuestring, args);
  cJSON_Delete(j);
  free(r.body);
  /* Streamed: the call arrives as delta.tool_calls with an index; finish_reason tool_calls. */
  snprintf(body, sizeof body,
           "{\"model\":\"upper\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],"
           "\"max_tokens\":9,\"stop\":[\"E\"],\"stream\":true,%s}", tools);
  r = request("POST", "/v1/chat/completions", body, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cr_assert(strstr(r.body, "\"tool_calls\":[{\"id\":\"call_1\""), "%s", r.body);
  cr_assert(strstr(r.body, "\"index\":0}]"), "%s", r.body);
  cr_assert(strstr(r.body, "\"finish_reason\":\"tool_calls\""), "%s", r.body);
  cr_assert(strstr(r.body, args + 0) || strstr(r.body, "BCD"), "%s", r.body);
  free(r.body);
  /* tool_choice none, or no tools: plain content. */
  snprintf(body, sizeof body,
           "{\"model\":\"upper\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],"
           "\"max_tokens\":3,%s,\"tool_choice\":\"none\"}", tools);
  r = request("POST", "/v1/chat/completions", body, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cr_assert(strstr(r.body, "\"finish_reason\":\"length\""), "%s", r.body);
  cr_assert(strstr(r.body, want), "%s", r.body);
  free(r.body);
  stop();
}

/* Concatenates delta.reasoning_content and delta.content of a chat stream's choice 0, and
 * checks that no reasoning arrives after content. */
static void sse_reasoning(const char *body, char *reasoning, char *content) {
  reasoning[0] = content[0] = '\0';
  for (const char *p = body; (p = strstr(p, "data: {")); p += 6) {
    const char *e = strstr(p, "\n\n");
    cr_assert_not_null(e);
    cJSON *j = cJSON_ParseWithLength(p + 6, (size_t)(e - p - 6));
    cr_assert_not_null(j);
    cJSON *d = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0), "delta");
    cJSON *rc = cJSON_GetObjectItem(d, "reasoning_content"), *c = cJSON_GetObjectItem(d, "content");
    if (cJSON_IsString(rc)) {
      cr_assert_eq(content[0], '\0', "reasoning after content: %s", body);
      strcat(reasoning, rc->valuestring);
    }
    if (cJSON_IsString(c)) strcat(content, c->valuestring);
    cJSON_Delete(j);
  }
}

static const char reasoning_cfg[] =
    "{\"models\":[{\"name\":\"lower\",\"path\":\"/fake/a\",\"reasoning_parser\":\"qwen3\"},"
    "{\"name\":\"upper\",\"path\":\"/fake/b\",\"reasoning_parser\":\"deepseek_r1\"}]}";

/* Qwen3 shape: the output opens and closes <think> itself. */
Test(server, chat_reasoning) {
  H.script = "<think>plan</think>\n\nok";
  start(reasoning_cfg, NULL, 0, 0);
  H.script = NULL;
  const char *body = "{\"model\":\"lower\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],"
                     "\"max_tokens\":30}";
  resp r = request("POST", "/v1/chat/completions", body, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cJSON *j = json_of(&r);
  cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
  cJSON *msg = cJSON_GetObjectItem(ch, "message");
  cr_assert_str_eq(cJSON_GetObjectItem(msg, "reasoning_content")->valuestring, "plan");
  cr_assert_str_eq(cJSON_GetObjectItem(msg, "content")->valuestring, "ok");
  cr_assert_str_eq(cJSON_GetObjectItem(ch, "finish_reason")->valuestring, "stop");
  cJSON_Delete(j);
  free(r.body);
  /* Streamed one character per chunk, so the tags arrive split across deltas. */
  body = "{\"model\":\"lower\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],"
         "\"max_tokens\":30,\"stream\":true}";
  r = request("POST", "/v1/chat/completions", body, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  char reasoning[256], content[256];
  sse_reasoning(r.body, reasoning, content);
  cr_assert_str_eq(reasoning, "plan", "%s", r.body);
  cr_assert_str_eq(content, "ok", "%s", r.body);
  cr_assert(strstr(r.body, "\"finish_reason\":\"stop\""), "%s", r.body);
  cr_assert(strstr(r.body, "data: [DONE]"), "%s", r.body);
  free(r.body);
  /* Completions are not parsed. */
  r = request("POST", "/v1/completions", "{\"model\":\"lower\",\"prompt\":\"Hi\",\"max_tokens\":30}",
              NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  j = json_of(&r);
  ch = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
  cr_assert_str_eq(cJSON_GetObjectItem(ch, "text")->valuestring, "<think>plan</think>\n\nok");
  cJSON_Delete(j);
  free(r.body);
  stop();
}

/* DeepSeek-R1 shape (the output starts inside the reasoning) with tool calls: the tool-call
 * parser sees only the content after </think>. */
Test(server, chat_reasoning_tool_calls) {
  H.script = "plan</think>\n{x}";
  start(reasoning_cfg, NULL, 0, 0);
  H.script = NULL;
  const char *body =
      "{\"model\":\"upper\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":30,"
      "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]}";
  resp r = request("POST", "/v1/chat/completions", body, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cJSON *j = json_of(&r);
  cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
  cJSON *msg = cJSON_GetObjectItem(ch, "message");
  cr_assert_str_eq(cJSON_GetObjectItem(ch, "finish_reason")->valuestring, "tool_calls");
  cr_assert_str_eq(cJSON_GetObjectItem(msg, "reasoning_content")->valuestring, "plan");
  cr_assert(cJSON_IsNull(cJSON_GetObjectItem(msg, "content")), "%s", r.body);
  cJSON *call = cJSON_GetArrayItem(cJSON_GetObjectItem(msg, "tool_calls"), 0);
  cr_assert_str_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(call, "function"), "arguments")->valuestring,
                   "{\"text\":\"{x}\"}");
  cJSON_Delete(j);
  free(r.body);
  /* Streamed: reasoning deltas, then the call built from the content alone. */
  body = "{\"model\":\"upper\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":30,"
         "\"stream\":true,\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]}";
  r = request("POST", "/v1/chat/completions", body, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  char reasoning[256], content[256];
  sse_reasoning(r.body, reasoning, content);
  cr_assert_str_eq(reasoning, "plan", "%s", r.body);
  cr_assert_str_eq(content, "", "%s", r.body);
  cr_assert(strstr(r.body, "\"arguments\":\"{\\\"text\\\":\\\"{x}\\\"}\""), "%s", r.body);
  cr_assert(strstr(r.body, "\"finish_reason\":\"tool_calls\""), "%s", r.body);
  free(r.body);
  /* Without tools, a deepseek_r1 output that never closes </think> is all reasoning. */
  pthread_mutex_lock(&H.fakes[1].mu);
  H.fakes[1].script = "still thinking";
  pthread_mutex_unlock(&H.fakes[1].mu);
  body = "{\"model\":\"upper\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":30}";
  r = request("POST", "/v1/chat/completions", body, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  j = json_of(&r);
  msg = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0), "message");
  cr_assert_str_eq(cJSON_GetObjectItem(msg, "reasoning_content")->valuestring, "still thinking");
  cr_assert_str_eq(cJSON_GetObjectItem(msg, "content")->valuestring, "");
  cJSON_Delete(j);
  free(r.body);
  stop();
}

/* Without a reasoning parser the <think> text stays content and no reasoning field appears. */
Test(server, chat_reasoning_off) {
  H.script = "<think>plan</think>ok";
  start(NULL, NULL, 0, 0);
  H.script = NULL;
  const char *body = "{\"model\":\"lower\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],"
                     "\"max_tokens\":30}";
  resp r = request("POST", "/v1/chat/completions", body, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cJSON *j = json_of(&r);
  cJSON *msg = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0), "message");
  cr_assert_null(cJSON_GetObjectItem(msg, "reasoning_content"));
  cr_assert_str_eq(cJSON_GetObjectItem(msg, "content")->valuestring, "<think>plan</think>ok");
  cJSON_Delete(j);
  free(r.body);
  body = "{\"model\":\"lower\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],"
         "\"max_tokens\":30,\"stream\":true}";
  r = request("POST", "/v1/chat/completions", body, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cr_assert_null(strstr(r.body, "reasoning_content"), "%s", r.body);
  free(r.body);
  stop();
}

Test(server, expect_continue_and_http10) {
  start(NULL, NULL, 0, 0);
  client *c = client_open();
  const char *body = "{\"model\":\"lower\",\"prompt\":\"Hi\",\"max_tokens\":2}";
  char head[256];
  int n = snprintf(head, sizeof head,
                   "POST /v1/completions HTTP/1.1\r\nContent-Length: %zu\r\nExpect: 100-continue\r\n\r\n",
                   strlen(body));
  client_send(c, head, (size_t)n);
  /* The interim answer comes before the body is sent. */
  while (!strstr(c->buf, "\r\n\r\n")) cr_assert(client_fill(c));
  cr_assert(!strncmp(c->buf, "HTTP/1.1 100 Continue\r\n\r\n", 25), "%s", c->buf);
  client_send(c, body, strlen(body));
  resp r;
  cr_assert(read_resp(c, &r)); /* read_resp skips the 100 */
  cr_assert_eq(r.status, 200, "%s", r.body);
  free(r.body);
  client_close(c);
  /* HTTP/1.0 without keep-alive: the answer says close and the server closes. */
  c = client_open();
  const char *old = "GET /health HTTP/1.0\r\n\r\n";
  client_send(c, old, strlen(old));
  cr_assert(read_resp(c, &r));
  cr_assert_eq(r.status, 200);
  cr_assert(strcasestr(r.head, "Connection: close"));
  free(r.body);
  cr_assert_eq(client_fill(c), 0);
  client_close(c);
  stop();
}

Test(server, idle_keepalive_connection_closed) {
  start(NULL, NULL, 0, 300);
  client *c = client_open();
  const char *get = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
  client_send(c, get, strlen(get));
  resp r;
  cr_assert(read_resp(c, &r));
  cr_assert_eq(r.status, 200);
  cr_assert(strcasestr(r.head, "Connection: keep-alive"));
  free(r.body);
  /* Nothing more is sent: the server closes the idle connection, so recv sees EOF (0) rather
   * than its own 10 s receive timeout (-1). */
  char b;
  cr_assert_eq(recv(c->fd, &b, 1, 0), 0);
  client_close(c);
  stop();
}

Test(server, unavailable_model_falls_back_and_health_says_so) {
  H.first_failed = 1;
  start(NULL, NULL, 0, 0);
  resp r = request("GET", "/health", NULL, NULL);
  cr_assert_eq(r.status, 503);
  cr_assert(strstr(r.body, "\"state\":\"failed: test\""), "%s", r.body);
  free(r.body);
  r = request("POST", "/v1/completions", "{\"model\":\"auto\",\"prompt\":\"x\",\"max_tokens\":2}", NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cr_assert(strcasestr(r.head, "X-Quiver-Model: upper"));
  free(r.body);
  r = request("POST", "/v1/completions", "{\"model\":\"lower\",\"prompt\":\"x\",\"max_tokens\":2}", NULL);
  cr_assert_eq(r.status, 503, "%s", r.body);
  free(r.body);
  stop();
}

Test(server, connection_limit) {
  H.max_connections = 2;
  start(NULL, NULL, 0, 0);
  client *c[3];
  const char *get = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
  for (int i = 0; i < 2; i++) {
    c[i] = client_open();
    client_send(c[i], get, strlen(get));
    resp r;
    cr_assert(read_resp(c[i], &r));
    cr_assert_eq(r.status, 200);
    free(r.body);
  }
  /* A third connection is closed at once. */
  c[2] = client_open();
  char b;
  cr_assert_eq(recv(c[2]->fd, &b, 1, 0), 0);
  client_close(c[2]);
  /* Once one closes, a new one is served. */
  client_close(c[0]);
  resp r;
  int ok = 0;
  for (int attempt = 0; attempt < 100 && !ok; attempt++) {
    client *d = client_open();
    /* Until the server has seen the close, this one may still be refused: no asserts here. */
    if (send(d->fd, get, strlen(get), MSG_NOSIGNAL) == (ssize_t)strlen(get) && read_resp(d, &r)) {
      ok = r.status == 200;
      free(r.body);
    }
    client_close(d);
    if (!ok) usleep(20000);
  }
  cr_assert(ok);
  client_close(c[1]);
  stop();
}

/* ---- API dialects (dialect_anthropic.c, dialect_responses.c) ---- */

/* The "event: NAME" lines of an SSE body, joined with commas. */
static void sse_events(const char *body, char *out, size_t cap) {
  out[0] = '\0';
  size_t n = 0;
  for (const char *p = body; (p = strstr(p, "event: ")); p += 7) {
    const char *e = strchr(p, '\n');
    cr_assert_not_null(e);
    n += (size_t)snprintf(out + n, cap - n, "%s%.*s", n ? "," : "", (int)(e - p - 7), p + 7);
    cr_assert_lt(n, cap);
  }
}

/* Anthropic Messages on the tool-calling fake: the text becomes one tool_use block (stop_reason
 * tool_use), streamed as content_block_start + input_json_delta + content_block_stop; the same
 * request without tools is plain text, and stop_sequences name the sequence that stopped. */
Test(server, anthropic_messages) {
  start(NULL, "k1", 0, 0);
  const char *key = "x-api-key: k1\r\nanthropic-version: 2023-06-01\r\n";
  char want[8];
  expected('A', 27, 0, 3, want); /* B C D, then E stops */
  const char *tools = "\"tools\":[{\"name\":\"f\",\"input_schema\":{\"type\":\"object\"}}]";
  char body[600];
  snprintf(body, sizeof body,
           "{\"model\":\"upper\",\"max_tokens\":9,\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],"
           "\"stop_sequences\":[\"E\"],%s}", tools);
  resp r = request("POST", "/v1/messages", body, key);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cJSON *j = json_of(&r);
  cr_assert_str_eq(cJSON_GetObjectItem(j, "type")->valuestring, "message");
  cr_assert_str_eq(cJSON_GetObjectItem(j, "stop_reason")->valuestring, "tool_use");
  cJSON *b = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "content"), 0);
  cr_assert_str_eq(cJSON_GetObjectItem(b, "type")->valuestring, "tool_use");
  cr_assert_str_eq(cJSON_GetObjectItem(b, "name")->valuestring, "f");
  cr_assert_str_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(b, "input"), "text")->valuestring, want);
  cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(j, "content")), 1);
  cJSON *u = cJSON_GetObjectItem(j, "usage");
  cr_assert_eq(cJSON_GetObjectItem(u, "input_tokens")->valueint, 27);
  cr_assert_eq(cJSON_GetObjectItem(u, "output_tokens")->valueint, 3);
  cJSON_Delete(j);
  free(r.body);
  snprintf(body, sizeof body,
           "{\"model\":\"upper\",\"max_tokens\":9,\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],"
           "\"stop_sequences\":[\"E\"],\"stream\":true,%s}", tools);
  r = request("POST", "/v1/messages", body, key);
  cr_assert_eq(r.status, 200, "%s", r.body);
  char ev[1024];
  sse_events(r.body, ev, sizeof ev);
  cr_assert_str_eq(ev, "message_start,ping,content_block_start,content_block_delta,"
                       "content_block_stop,message_delta,message_stop");
  char frag[128];
  snprintf(frag, sizeof frag, "\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"text\\\":\\\"%s\\\"}\"", want);
  cr_assert(strstr(r.body, frag), "%s", r.body);
  cr_assert(strstr(r.body, "\"content_block\":{\"type\":\"tool_use\",\"id\":\"call_1\",\"name\":\"f\",\"input\":{}}"), "%s", r.body);
  cr_assert(strstr(r.body, "\"stop_reason\":\"tool_use\""), "%s", r.body);
  free(r.body);
  /* No tools: text, stopped by a stop sequence. */
  r = request("POST", "/v1/messages",
              "{\"model\":\"upper\",\"max_tokens\":9,\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],"
              "\"stop_sequences\":[\"E\"],\"stream\":true}", key);
  cr_assert_eq(r.status, 200, "%s", r.body);
  sse_events(r.body, ev, sizeof ev);
  cr_assert_str_eq(ev, "message_start,ping,content_block_start,content_block_delta,"
                       "content_block_delta,content_block_delta,content_block_stop,message_delta,"
                       "message_stop");
  cr_assert(strstr(r.body, "\"stop_reason\":\"stop_sequence\",\"stop_sequence\":\"E\""), "%s", r.body);
  free(r.body);
  /* Errors are Anthropic error objects, auth by x-api-key or Bearer. */
  r = request("POST", "/v1/messages", "{\"model\":\"upper\",\"max_tokens\":2,\"messages\":[]}", NULL);
  cr_assert_eq(r.status, 401);
  cr_assert(strstr(r.body, "{\"type\":\"error\",\"error\":{\"type\":\"authentication_error\""), "%s", r.body);
  free(r.body);
  r = request("POST", "/v1/messages", "{\"model\":\"nope\",\"max_tokens\":2,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
              "Authorization: Bearer k1\r\n");
  cr_assert_eq(r.status, 404);
  cr_assert(strstr(r.body, "\"type\":\"not_found_error\""), "%s", r.body);
  free(r.body);
  r = request("POST", "/v1/messages/count_tokens",
              "{\"model\":\"upper\",\"system\":\"S\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}", key);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cr_assert_str_eq(r.body, "{\"input_tokens\":40}"); /* "<|system|>\nS\n" adds 13 bytes */
  free(r.body);
  r = request("GET", "/v1/models", NULL, "x-api-key: k2\r\n");
  cr_assert_eq(r.status, 401);
  free(r.body);
  stop();
}

/* Responses API: a function_call output item (streamed: added, arguments delta/done, done),
 * stored responses (GET, DELETE, previous_response_id), store false, an unknown id is a 404. */
Test(server, responses_api) {
  start(NULL, NULL, 0, 0);
  char want[16], args[64];
  expected('A', 27, 0, 9, want); /* no stop: max_output_tokens ends it (incomplete) */
  snprintf(args, sizeof args, "{\"text\":\"%s\"}", want);
  const char *req = "{\"model\":\"upper\",\"input\":\"Hi\",\"max_output_tokens\":9,"
                    "\"tools\":[{\"type\":\"function\",\"name\":\"f\"}]%s}";
  char body[400];
  snprintf(body, sizeof body, req, "");
  resp r = request("POST", "/v1/responses", body, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cJSON *j = json_of(&r);
  cJSON *out = cJSON_GetObjectItem(j, "output");
  cJSON *it = cJSON_GetArrayItem(out, 0);
  cr_assert_eq(cJSON_GetArraySize(out), 1, "%s", r.body);
  cr_assert_str_eq(cJSON_GetObjectItem(it, "type")->valuestring, "function_call");
  cr_assert_str_eq(cJSON_GetObjectItem(it, "call_id")->valuestring, "call_1");
  cr_assert_str_eq(cJSON_GetObjectItem(it, "name")->valuestring, "f");
  char id[64];
  snprintf(id, sizeof id, "%s", cJSON_GetObjectItem(j, "id")->valuestring);
  cr_assert_str_eq(cJSON_GetObjectItem(it, "arguments")->valuestring, args);
  cr_assert_str_eq(cJSON_GetObjectItem(j, "status")->valuestring, "incomplete");
  cr_assert_str_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "incomplete_details"), "reason")->valuestring,
                   "max_output_tokens");
  cJSON_Delete(j);
  free(r.body);
  snprintf(body, sizeof body, req, ",\"stream\":true");
  r = request("POST", "/v1/responses", body, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  char ev[1024];
  sse_events(r.body, ev, sizeof ev);
  cr_assert_str_eq(ev, "response.created,response.in_progress,response.output_item.added,"
                       "response.function_call_arguments.delta,"
                       "response.function_call_arguments.done,response.output_item.done,"
                       "response.incomplete");
  cr_assert(strstr(r.body, "\"sequence_number\":6"), "%s", r.body);
  free(r.body);
  /* Stored: GET returns it, previous_response_id continues it, DELETE forgets it. */
  char path[100];
  snprintf(path, sizeof path, "/v1/responses/%s", id);
  r = request("GET", path, NULL, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cr_assert(strstr(r.body, id));
  free(r.body);
  snprintf(body, sizeof body,
           "{\"model\":\"lower\",\"input\":[{\"type\":\"function_call_output\",\"call_id\":\"call_1\","
           "\"output\":\"42\"}],\"previous_response_id\":\"%s\",\"max_output_tokens\":2}", id);
  r = request("POST", "/v1/responses", body, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cr_assert(strstr(r.body, "\"output_text\""), "%s", r.body);
  free(r.body);
  r = request("DELETE", path, NULL, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cr_assert(strstr(r.body, "\"deleted\":true"));
  free(r.body);
  r = request("GET", path, NULL, NULL);
  cr_assert_eq(r.status, 404);
  free(r.body);
  r = request("POST", "/v1/responses", body, NULL);
  cr_assert_eq(r.status, 404, "%s", r.body);
  cr_assert(strstr(r.body, "previous_response_id"));
  free(r.body);
  r = request("POST", "/v1/responses",
              "{\"model\":\"lower\",\"input\":\"Hi\",\"store\":false,\"max_output_tokens\":2}", NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  j = json_of(&r);
  snprintf(path, sizeof path, "/v1/responses/%s", cJSON_GetObjectItem(j, "id")->valuestring);
  cJSON_Delete(j);
  free(r.body);
  r = request("GET", path, NULL, NULL);
  cr_assert_eq(r.status, 404);
  free(r.body);
  r = request("PUT", path, NULL, NULL);
  cr_assert_eq(r.status, 405);
  free(r.body);
  stop();
}

/* Chat: metadata and unknown fields accepted; continuous usage in every chunk. */
Test(server, chat_extra_fields) {
  start(NULL, NULL, 0, 0);
  resp r = request("POST", "/v1/chat/completions",
                   "{\"model\":\"lower\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],"
                   "\"max_tokens\":3,\"stream\":true,\"store\":true,\"metadata\":{},\"whatever\":1,"
                   "\"stream_options\":{\"include_usage\":true,\"continuous_usage_stats\":true}}",
                   NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  int chunks = 0, with_usage = 0;
  for (const char *p = r.body; (p = strstr(p, "data: {")); p += 6) {
    chunks++;
    const char *e = strstr(p, "\n\n");
    with_usage += memmem(p, (size_t)(e - p), "\"usage\":{", 9) != NULL;
  }
  cr_assert_eq(chunks, 6, "%s", r.body); /* role, 3 tokens, finish, usage */
  cr_assert_eq(with_usage, chunks, "%s", r.body);
  cr_assert(strstr(r.body, "\"completion_tokens\":2,"), "%s", r.body);
  free(r.body);
  stop();
}

/* parallel_tool_calls false keeps the first of several calls, whole or streamed; Anthropic's
 * disable_parallel_tool_use maps onto it. */
Test(server, parallel_tool_calls) {
  H.script = "ab|cd";
  start(NULL, NULL, 0, 0);
  const char *base = "{\"model\":\"upper\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],"
                     "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]%s}";
  char body[400];
  snprintf(body, sizeof body, base, "");
  resp r = request("POST", "/v1/chat/completions", body, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cr_assert(strstr(r.body, "\"call_1\"") && strstr(r.body, "\"call_2\""), "%s", r.body);
  free(r.body);
  snprintf(body, sizeof body, base, ",\"parallel_tool_calls\":false");
  r = request("POST", "/v1/chat/completions", body, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cr_assert(strstr(r.body, "\"call_1\"") && !strstr(r.body, "\"call_2\""), "%s", r.body);
  free(r.body);
  snprintf(body, sizeof body, base, ",\"parallel_tool_calls\":false,\"stream\":true");
  r = request("POST", "/v1/chat/completions", body, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cr_assert(strstr(r.body, "\"call_1\"") && !strstr(r.body, "\"call_2\""), "%s", r.body);
  cr_assert(strstr(r.body, "\"finish_reason\":\"tool_calls\""), "%s", r.body);
  free(r.body);
  const char *ant = "{\"model\":\"upper\",\"max_tokens\":9,\"messages\":[{\"role\":\"user\","
                    "\"content\":\"Hi\"}],\"tools\":[{\"name\":\"f\",\"input_schema\":{}}]%s}";
  snprintf(body, sizeof body, ant, ",\"stream\":true");
  r = request("POST", "/v1/messages", body, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  char ev[1024];
  sse_events(r.body, ev, sizeof ev);
  cr_assert_str_eq(ev, "message_start,ping,content_block_start,content_block_delta,"
                       "content_block_stop,content_block_start,content_block_delta,"
                       "content_block_stop,message_delta,message_stop");
  cr_assert(strstr(r.body, "\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"call_2\""),
            "%s", r.body);
  free(r.body);
  snprintf(body, sizeof body, ant,
           ",\"tool_choice\":{\"type\":\"auto\",\"disable_parallel_tool_use\":true}");
  r = request("POST", "/v1/messages", body, NULL);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cJSON *j = json_of(&r);
  cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(j, "content")), 1, "%s", r.body);
  cJSON_Delete(j);
  free(r.body);
  stop();
  H.script = NULL;
}
