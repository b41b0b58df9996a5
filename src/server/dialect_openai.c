/* The OpenAI chat/completions and completions dialect: encodes the shared path's deltas and
 * finished choices as chat.completion(.chunk) / text_completion objects (oai_resp.c builds the
 * JSON). Requests need no decoder: oai_request_parse reads these bodies directly. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/server_int.h"

static oai_meta meta_of(const srv_req *r) {
  return (oai_meta){r->o.kind, r->id, r->created, r->model_name};
}

/* stream_options.continuous_usage_stats (with include_usage, as vLLM reads it): every chunk
 * carries the usage so far. */
static const oai_usage *live_usage(const srv_req *r, oai_usage *u) {
  if (!r->o.include_usage || !r->o.continuous_usage) return NULL;
  u->prompt_tokens = srv_prompt_tokens(r);
  u->completion_tokens = r->live_tokens;
  u->cached_tokens = 0;
  return u;
}

static void oa_stream_begin(srv_req *r) {
  oai_meta meta = meta_of(r);
  int32_t n = srv_n_per_prompt(r);
  oai_usage u;
  for (int32_t c = 0; c < r->n_choices && r->conn; c++) {
    if (r->o.kind == OAI_CHAT) {
      oai_chunk k = {.index = c, .role_first = 1, .live_usage = live_usage(r, &u)};
      srv_stream_send(r, oai_chunk_sse(&meta, &k));
      r->choices[c].role_sent = 1;
    } else if (r->o.echo && r->ptext[c / n]) {
      int32_t pi = c / n;
      oai_chunk k = {.index = c, .text = r->ptext[pi], .text_len = r->ptext_len[pi],
                     .live_usage = live_usage(r, &u)};
      srv_stream_send(r, oai_chunk_sse(&meta, &k));
    }
  }
}

static void oa_stream_delta(srv_req *r, int32_t ci, const srv_delta *d) {
  oai_meta meta = meta_of(r);
  oai_usage u;
  oai_chunk k = {.index = ci, .text = d->text, .text_len = d->text_len,
                 .tool_calls = d->tool_calls, .reasoning = d->reasoning,
                 .reasoning_len = d->reasoning_len, .logprobs = d->logprobs,
                 .live_usage = live_usage(r, &u)};
  srv_stream_send(r, oai_chunk_sse(&meta, &k));
}

static void oa_stream_finish(srv_req *r, int32_t ci) {
  oai_meta meta = meta_of(r);
  oai_usage u;
  oai_chunk k = {.index = ci, .finish = r->choices[ci].finish,
                 .stop_reason = r->choices[ci].stop_reason, .live_usage = live_usage(r, &u)};
  srv_stream_send(r, oai_chunk_sse(&meta, &k));
}

static void oa_stream_error(srv_req *r, int32_t ci, const char *message) {
  char *e = oai_error_json(500, message, NULL, NULL);
  if (!e) {
    srv_stream_send(r, NULL);
    return;
  }
  size_t el = strlen(e);
  char *sse = malloc(el + 9);
  if (sse) snprintf(sse, el + 9, "data: %s\n\n", e);
  free(e);
  srv_stream_send(r, sse);
}

static void oa_stream_end(srv_req *r) {
  if (r->o.include_usage) {
    oai_meta meta = meta_of(r);
    oai_chunk k = {.usage = &r->usage};
    srv_stream_send(r, oai_chunk_sse(&meta, &k));
  }
  if (!r->conn) return;
  char *done = strdup("data: [DONE]\n\n");
  srv_stream_send(r, done);
}

static char *oa_response_json(srv_req *r, const oai_choice *cs, int32_t n) {
  oai_meta meta = meta_of(r);
  return oai_response_json(&meta, cs, n, &r->usage);
}

static const char *oa_id_prefix(const srv_req *r) {
  return r->o.kind == OAI_CHAT ? "chatcmpl-" : "cmpl-";
}

const srv_dialect srv_dialect_openai = {
    .name = "openai",
    .decode = NULL,
    .error_json = oai_error_json,
    .stream_begin = oa_stream_begin,
    .stream_delta = oa_stream_delta,
    .stream_finish = oa_stream_finish,
    .stream_error = oa_stream_error,
    .stream_end = oa_stream_end,
    .response_json = oa_response_json,
    .count_json = NULL,
    .id_prefix = oa_id_prefix,
    .state_free = NULL,
};
