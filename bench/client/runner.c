/* The load loop (see runner.h). Everything runs on one libuv loop: a timer releases requests at
 * their arrival times, a counter caps the requests in flight, and each response is parsed as it
 * arrives (SSE events -> JSON chunks -> content timestamps). Request bodies are built before
 * the clock starts so JSON printing stays off the measured path. */
#include "runner.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/sse_parse.h"

void bench_records_free(bench_record *r, size_t n) {
  if (!r) return;
  for (size_t i = 0; i < n; i++) {
    free(r[i].error);
    free(r[i].itl);
    free(r[i].text);
  }
  free(r);
}

typedef struct run_ctx run_ctx;

/* One request in flight. */
typedef struct req_ctx {
  run_ctx *run;
  size_t idx;
  uint64_t t_send, t_last;      /* uv_hrtime */
  int status, is_sse, done_marker, got_first;
  int in_flight;
  sse_parser sse;
  char *err;                    /* first error seen in the stream; owned */
  char *body;                   /* [body_len] non-SSE body (errors, non-streamed answers); owned */
  size_t body_len, body_cap;
} req_ctx;

struct run_ctx {
  const bench_opts *o;
  bench_http *http;
  uv_loop_t *loop;
  const double *arrivals;       /* [n] seconds from t0 */
  const bench_prompt *prompts;  /* [n] borrowed */
  char **bodies;                /* [n] request JSON; owned */
  req_ctx *reqs;                /* [n] */
  bench_record *rec;            /* [n] */
  size_t n, next_arrival, next_send, n_done, n_failed;
  int in_flight, max_in_flight;
  uint64_t t0, t_end;           /* start of the run; time of the last completion */
  uint64_t t_read;              /* time of the socket read being parsed */
  uv_timer_t arrival_timer, progress_timer, timeout_timer;
  int show_progress;
  const char *label;
  int fatal;                    /* a send could not even start */
  qv_error *err;
};

static double secs(uint64_t a, uint64_t b) { return (double)(b - a) * 1e-9; }

static void set_error(req_ctx *q, const char *fmt, const char *detail) {
  if (q->err) return;
  size_t n = strlen(fmt) + (detail ? strlen(detail) : 0) + 1;
  q->err = malloc(n);
  if (q->err) snprintf(q->err, n, fmt, detail ? detail : "");
}

static int append(char **buf, size_t *len, size_t *cap, const char *s, size_t n, size_t limit) {
  if (*len + n > limit) n = limit > *len ? limit - *len : 0;
  if (*len + n + 1 > *cap) {
    size_t c = *cap ? *cap : 256;
    while (c < *len + n + 1) c *= 2;
    char *nb = realloc(*buf, c);
    if (!nb) return -1;
    *buf = nb;
    *cap = c;
  }
  memcpy(*buf + *len, s, n);
  *len += n;
  (*buf)[*len] = '\0';
  return 0;
}

/* A piece of generated text arrived at now. */
static void on_content(req_ctx *q, const char *text, uint64_t now) {
  bench_record *r = &q->run->rec[q->idx];
  if (!q->got_first) {
    q->got_first = 1;
    r->ttft_s = secs(q->t_send, now);
  } else {
    if (r->n_itl == r->itl_cap) {
      int32_t c = r->itl_cap ? r->itl_cap * 2 : 64;
      double *ni = realloc(r->itl, (size_t)c * sizeof *ni);
      if (!ni) {
        set_error(q, "out of memory recording the stream%s", NULL);
        return;
      }
      r->itl = ni;
      r->itl_cap = c;
    }
    r->itl[r->n_itl++] = secs(q->t_last, now);
  }
  q->t_last = now;
  r->n_chunks++;
  if (q->run->o->save_text) append(&r->text, &r->text_len, &r->text_cap, text, strlen(text), (size_t)64 << 20);
}

static const char *chunk_text(const cJSON *choice) {
  const cJSON *t = cJSON_GetObjectItemCaseSensitive(choice, "text");
  if (cJSON_IsString(t)) return t->valuestring;
  const cJSON *d = cJSON_GetObjectItemCaseSensitive(choice, "delta");
  if (!cJSON_IsObject(d)) d = cJSON_GetObjectItemCaseSensitive(choice, "message");
  static const char *keys[] = {"content", "reasoning_content", "reasoning"};
  for (size_t i = 0; i < 3; i++) {
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(d, keys[i]);
    if (cJSON_IsString(c) && c->valuestring[0]) return c->valuestring;
  }
  return "";
}

/* One JSON object of the response (an SSE chunk, or a whole non-streamed answer). */
static void on_json(req_ctx *q, const cJSON *j, uint64_t now) {
  bench_record *r = &q->run->rec[q->idx];
  const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
  if (e && !cJSON_IsNull(e)) {
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(e, "message");
    set_error(q, "error in the stream: %s", cJSON_IsString(m) ? m->valuestring : cJSON_IsString(e) ? e->valuestring : "?");
    return;
  }
  const cJSON *choices = cJSON_GetObjectItemCaseSensitive(j, "choices");
  const cJSON *c0 = cJSON_IsArray(choices) ? cJSON_GetArrayItem(choices, 0) : NULL;
  if (c0) {
    const char *text = chunk_text(c0);
    if (text[0]) on_content(q, text, now);
  }
  const cJSON *u = cJSON_GetObjectItemCaseSensitive(j, "usage");
  if (cJSON_IsObject(u)) {
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(u, "completion_tokens");
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(u, "prompt_tokens");
    /* Bounded before the conversion: a hostile number must not overflow int64. */
    if (cJSON_IsNumber(ct) && ct->valuedouble >= 0 && ct->valuedouble <= 1e15) {
      r->usage_reported = 1;
      r->output_tokens = (int64_t)ct->valuedouble;
    }
    if (cJSON_IsNumber(pt) && pt->valuedouble >= 0 && pt->valuedouble <= 1e15) r->prompt_tokens = (int64_t)pt->valuedouble;
  }
}

static int on_sse_event(void *arg, const char *event, const char *data, size_t len) {
  req_ctx *q = arg;
  if (!strcmp(data, "[DONE]")) {
    q->done_marker = 1;
    return 0;
  }
  if (q->done_marker) return 0;
  cJSON *j = cJSON_ParseWithLength(data, len);
  if (!j) {
    set_error(q, "malformed JSON in an SSE event: %.100s", data);
    return 0;
  }
  if (!strcmp(event, "error") && !cJSON_GetObjectItemCaseSensitive(j, "error")) set_error(q, "error event: %.200s", data);
  else on_json(q, j, q->run->t_read);
  cJSON_Delete(j);
  return 0;
}

static void cb_headers(void *arg, int status, int is_sse) {
  req_ctx *q = arg;
  q->status = status;
  q->is_sse = is_sse && status == 200;
}

static void cb_body(void *arg, const char *data, size_t len, uint64_t now) {
  req_ctx *q = arg;
  if (q->is_sse) {
    q->run->t_read = now; /* seen by on_sse_event */
    qv_error e = {0};
    if (sse_parser_feed(&q->sse, data, len, &e)) set_error(q, "%s", e.msg);
  } else if (append(&q->body, &q->body_len, &q->body_cap, data, len, (size_t)16 << 20)) {
    set_error(q, "out of memory reading the response%s", NULL);
  }
}

static void pump(run_ctx *r);

static void finish_request(req_ctx *q, int rc, const char *msg, uint64_t now) {
  run_ctx *run = q->run;
  bench_record *r = &run->rec[q->idx];
  r->http_status = q->status;
  if (rc == 0 && q->is_sse) {
    run->t_read = now;
    qv_error e = {0};
    if (sse_parser_finish(&q->sse, &e)) set_error(q, "%s", e.msg);
  } else if (rc == 0 && q->status == 200 && q->body) {
    /* The server ignored "stream": one JSON answer; its content arrived with the body. */
    cJSON *j = cJSON_ParseWithLength(q->body, q->body_len);
    if (j) on_json(q, j, now);
    else set_error(q, "the answer is neither SSE nor JSON%s", NULL);
    cJSON_Delete(j);
  }
  r->e2el_s = secs(q->t_send, now);
  char buf[400];
  if (rc) {
    set_error(q, "%s", msg ? msg : "transport error");
  } else if (q->status != 200) {
    snprintf(buf, sizeof buf, "HTTP %d: %.300s", q->status, q->body ? q->body : "");
    set_error(q, "%s", buf);
  } else if (!q->got_first && !q->err) {
    set_error(q, "the response carried no content%s", NULL);
  }
  if (r->prompt_tokens < 0) r->prompt_tokens = run->prompts[q->idx].prompt_len > 0 ? run->prompts[q->idx].prompt_len : 0;
  if (q->err) {
    r->success = 0;
    r->error = q->err;
    q->err = NULL;
    run->n_failed++;
  } else {
    r->success = 1;
    if (!r->usage_reported) r->output_tokens = r->n_chunks;
    /* E2EL can never be shorter than TTFT: both come from the same clock. */
    if (r->e2el_s < r->ttft_s) r->e2el_s = r->ttft_s;
  }
  sse_parser_deinit(&q->sse);
  free(q->body);
  q->body = NULL;
  q->in_flight = 0;
  run->n_done++;
  run->in_flight--;
  if (run->n_done == run->n) run->t_end = now;
  pump(run);
}

static void cb_done(void *arg, int rc, const char *msg, uint64_t now) { finish_request(arg, rc, msg, now); }

static const bench_http_cbs k_cbs = {cb_headers, cb_body, cb_done};

static void send_one(run_ctx *run, size_t i) {
  req_ctx *q = &run->reqs[i];
  memset(q, 0, sizeof *q);
  q->run = run;
  q->idx = i;
  sse_parser_init(&q->sse, 0, on_sse_event, q);
  q->in_flight = 1;
  q->t_send = uv_hrtime();
  run->rec[i].start_s = secs(run->t0, q->t_send);
  run->rec[i].prompt_tokens = -1; /* until usage reports it */
  run->in_flight++;
  if (run->in_flight > run->max_in_flight) run->max_in_flight = run->in_flight;
  qv_error e = {0};
  bench_http_req req = {"POST", run->o->endpoint, run->bodies[i], strlen(run->bodies[i])};
  if (bench_http_send(run->http, &req, &k_cbs, q, &e))
    finish_request(q, e.code ? e.code : QV_EIO, e.msg, uv_hrtime());
}

static void arrival_cb(uv_timer_t *t) { pump(t->data); }

/* Releases arrived requests up to the concurrency cap and arms the timer for the next one. */
static void pump(run_ctx *run) {
  double now = secs(run->t0, uv_hrtime());
  while (run->next_arrival < run->n && run->arrivals[run->next_arrival] <= now) run->next_arrival++;
  while (run->next_send < run->next_arrival &&
         (run->o->max_concurrency <= 0 || run->in_flight < run->o->max_concurrency))
    send_one(run, run->next_send++);
  if (run->next_arrival < run->n && !uv_is_active((uv_handle_t *)&run->arrival_timer)) {
    double wait = run->arrivals[run->next_arrival] - now;
    uint64_t ms = wait > 0 ? (uint64_t)ceil(wait * 1e3) : 0;
    uv_timer_start(&run->arrival_timer, arrival_cb, ms, 0);
  }
  if (run->n_done == run->n) {
    uv_timer_stop(&run->arrival_timer);
    uv_timer_stop(&run->progress_timer);
    uv_timer_stop(&run->timeout_timer);
  }
}

/* Ends requests that have run longer than --timeout. */
static void timeout_cb(uv_timer_t *t) {
  run_ctx *run = t->data;
  uint64_t now = uv_hrtime();
  char msg[96];
  snprintf(msg, sizeof msg, "timed out after %g s", run->o->timeout_s);
  for (size_t i = 0; i < run->next_send; i++) {
    req_ctx *q = &run->reqs[i];
    if (q->in_flight && secs(q->t_send, now) > run->o->timeout_s) bench_http_cancel(run->http, q, QV_ELIMIT, msg);
  }
}

static void draw_progress(run_ctx *run, int final) {
  double el = secs(run->t0, uv_hrtime());
  int width = 30, fill = run->n ? (int)((double)run->n_done / (double)run->n * width) : width;
  char bar[64];
  for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
  bar[width] = '\0';
  fprintf(stderr, "\r%s [%s] %zu/%zu done, %zu failed, %d in flight, %.1fs%s", run->label, bar, run->n_done, run->n,
          run->n_failed, run->in_flight, el, final ? "\n" : "  ");
  fflush(stderr);
}

static void progress_cb(uv_timer_t *t) { draw_progress(t->data, 0); }

static int build_body(const bench_opts *o, const char *model, const bench_prompt *p, char **out) {
  cJSON *b = cJSON_CreateObject();
  int chat = strstr(o->endpoint, "chat") != NULL;
  int ok = b && cJSON_AddStringToObject(b, "model", model);
  if (ok && chat) {
    cJSON *msgs = cJSON_AddArrayToObject(b, "messages"), *m = cJSON_CreateObject();
    ok = msgs && m && cJSON_AddItemToArray(msgs, m) && cJSON_AddStringToObject(m, "role", "user") &&
         cJSON_AddStringToObject(m, "content", p->prompt);
    if (!ok && m && !msgs) cJSON_Delete(m);
  } else if (ok) {
    ok = cJSON_AddStringToObject(b, "prompt", p->prompt) != NULL;
  }
  ok = ok && cJSON_AddNumberToObject(b, "max_tokens", p->output_len) &&
       cJSON_AddNumberToObject(b, "temperature", o->temperature) && cJSON_AddTrueToObject(b, "stream");
  cJSON *so = ok ? cJSON_AddObjectToObject(b, "stream_options") : NULL;
  ok = ok && so && cJSON_AddTrueToObject(so, "include_usage");
  if (ok && o->ignore_eos) ok = cJSON_AddTrueToObject(b, "ignore_eos") != NULL;
  *out = ok ? cJSON_PrintUnformatted(b) : NULL;
  cJSON_Delete(b);
  return *out ? 0 : QV_ENOMEM;
}

int bench_run(const bench_run_spec *spec, bench_run_result *out, qv_error *err) {
  const bench_opts *o = spec->o;
  bench_http *http = spec->http;
  uv_loop_t *loop = spec->loop;
  const char *model = spec->model;
  const bench_prompt *prompts = spec->prompts;
  size_t n = spec->n;
  memset(out, 0, sizeof *out);
  run_ctx run = {0};
  run.o = o;
  run.http = http;
  run.loop = loop;
  run.arrivals = spec->arrivals;
  run.prompts = prompts;
  run.n = n;
  run.label = spec->label;
  run.err = err;
  run.show_progress = o->progress < 0 ? isatty(2) : o->progress;
  run.bodies = calloc(n + 1, sizeof *run.bodies);
  run.reqs = calloc(n + 1, sizeof *run.reqs);
  run.rec = calloc(n + 1, sizeof *run.rec);
  int rc = (run.bodies && run.reqs && run.rec) ? 0 : qv_error_set(err, QV_ENOMEM, "out of memory for %zu requests", n);
  for (size_t i = 0; i < n && !rc; i++)
    if (build_body(o, model, &prompts[i], &run.bodies[i])) rc = qv_error_set(err, QV_ENOMEM, "out of memory");
  if (!rc) {
    uv_timer_init(loop, &run.arrival_timer);
    uv_timer_init(loop, &run.progress_timer);
    uv_timer_init(loop, &run.timeout_timer);
    run.arrival_timer.data = run.progress_timer.data = run.timeout_timer.data = &run;
    int64_t connects0 = bench_http_n_connects(http);
    run.t0 = uv_hrtime();
    run.t_end = run.t_read = run.t0;
    if (run.show_progress) uv_timer_start(&run.progress_timer, progress_cb, 200, 200);
    if (o->timeout_s > 0) uv_timer_start(&run.timeout_timer, timeout_cb, 100, 100);
    if (n) pump(&run);
    while (run.n_done < n) uv_run(loop, UV_RUN_ONCE);
    uint64_t t_end = run.t_end;
    uv_timer_stop(&run.arrival_timer);
    uv_timer_stop(&run.progress_timer);
    uv_timer_stop(&run.timeout_timer);
    uv_close((uv_handle_t *)&run.arrival_timer, NULL);
    uv_close((uv_handle_t *)&run.progress_timer, NULL);
    uv_close((uv_handle_t *)&run.timeout_timer, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    if (run.show_progress) draw_progress(&run, 1);
    /* vLLM's duration: from the start of the run to the last completion. */
    out->duration_s = secs(run.t0, t_end);
    out->records = run.rec;
    run.rec = NULL;
    out->n = n;
    out->max_in_flight = run.max_in_flight;
    out->n_connects = bench_http_n_connects(http) - connects0;
  }
  for (size_t i = 0; i < n && run.bodies; i++) free(run.bodies[i]);
  free(run.bodies);
  free(run.reqs);
  bench_records_free(run.rec, n);
  return rc;
}
