/* Generation endpoints (completions, chat completions) and tokenize/detokenize.
 *
 * A request goes: routed on the loop (server.c) -> parsed, validated, resolved to a model and
 * prepared on the libuv thread pool (template rendering, tokenizing, echo text) -> checked and
 * submitted to the chosen model's engine on
 * the loop (never blocking: a full queue is QV_EBUSY, which falls to the next model of a route
 * or answers 429) -> engine events stream back as SSE chunks or accumulate into one JSON
 * response. A disconnect aborts every engine request of the HTTP request; the request object
 * lives until the engine has acknowledged each choice with a FINISH event. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "core/util.h"
#include "fleet/fleet.h"
#include "server/json_nul.h"
#include "server/route.h"
#include "server/server_int.h"

static srv_model *model_of(srv_req *r) { return &r->s->models[r->model]; }

static int32_t n_per_prompt(const srv_req *r) { return r->o.params.n > 0 ? r->o.params.n : 1; }

int32_t srv_n_per_prompt(const srv_req *r) { return n_per_prompt(r); }

int32_t srv_prompt_tokens(const srv_req *r) {
  int32_t n = 0;
  for (int32_t i = 0; i < r->n_subs && r->pn; i++) n += r->pn[i];
  return n;
}

/* Tool calls are parsed out of chat output when the request offered tools (and did not say
 * tool_choice "none") and the model knows a tool-call format, whole or streamed. */
static int wants_tools(srv_req *r) {
  if (r->o.kind != OAI_CHAT || !r->o.tools || !model_of(r)->ops->parse_tools) return 0;
  const cJSON *tc = r->o.tool_choice;
  return !(cJSON_IsString(tc) && !strcmp(tc->valuestring, "none"));
}

/* Reasoning is split off chat output when the serving model has a reasoning parser. The text
 * starts inside the reasoning for DeepSeek-R1 (its template opens <think> in the prompt, and
 * vLLM's parser assumes so even when it does not) or when the prompt opened one. */
static int wants_reasoning(srv_req *r) {
  reg_reasoning rp = model_of(r)->reasoning;
  return r->o.kind == OAI_CHAT && rp != REG_REASONING_UNSET && rp != REG_REASONING_NONE;
}

static bool started_in_think(srv_req *r) {
  return model_of(r)->reasoning == REG_REASONING_DEEPSEEK_R1 || r->think_opened;
}

/* ---- freeing ---- */

static void free_prep(srv_req *r) {
  qv_constraint_release(r->constraint);
  r->constraint = NULL;
  free(r->tools_text);
  r->tools_text = NULL;
  int32_t np = r->n_prep;
  for (int32_t i = 0; r->pids && i < np; i++) free(r->pids[i]);
  for (int32_t i = 0; r->ptext && i < np; i++) free(r->ptext[i]);
  free(r->pids);
  free(r->pn);
  free(r->ptext);
  free(r->ptext_len);
  free(r->detok_text);
  r->pids = NULL;
  r->pn = NULL;
  r->ptext = NULL;
  r->ptext_len = NULL;
  r->detok_text = NULL;
  r->n_prep = 0;
}

static void free_choices(srv_req *r) {
  for (int32_t i = 0; i < r->n_choices; i++) {
    if (r->choices[i].tstream) r->choices[i].tstream_destroy(r->choices[i].tstream);
    qv_chat_reasoning_stream_destroy(r->choices[i].rstream);
    free(r->choices[i].text);
    free(r->choices[i].stop_reason);
    oai_logprobs_destroy(r->choices[i].lp);
  }
  free(r->choices);
  free(r->subs);
  r->choices = NULL;
  r->subs = NULL;
  r->n_choices = r->n_subs = 0;
  r->n_choices_done = 0;
}

static void release_model(srv_req *r);

/* Gives back the least_loaded pick's provisional count (see held_model). */
static void release_hold(srv_req *r) {
  if (r->held_model < 0) return;
  r->s->live_seqs[r->held_model] -= srv_n_per_prompt(r);
  r->held_model = -1;
}

void srv_gen_free(srv_req *r) {
  if (r->wait_load == 2) r->s->n_wait_load--;
  r->wait_load = 0;
  release_model(r);
  release_hold(r);
  free_prep(r);
  free_choices(r);
  free(r->body);
  r->body = NULL;
  free(r->resp_json);
  r->resp_json = NULL;
  if (r->dstate && r->dialect && r->dialect->state_free) r->dialect->state_free(r->dstate);
  r->dstate = NULL;
}

/* ---- preparation on the thread pool ---- */

static int render_prompt(srv_req *r, char **text, size_t *len, int *add_special) {
  srv_model *m = model_of(r);
  if (m->ops->render_chat) {
    *add_special = 0;
    return m->ops->render_chat(m->ctx, r->o.messages, r->o.tools, r->o.tool_choice,
                               r->o.template_kwargs, r->o.add_generation_prompt, text, len,
                               &r->work_err);
  }
  *add_special = 1;
  return oai_chat_default_render(r->o.messages, r->o.add_generation_prompt, text, len,
                                 &r->work_err);
}

/* Gives back the model the request entered (fleet), if any. Any thread. */
static void release_model(srv_req *r) {
  if (!r->held) return;
  srv_model *m = &r->s->models[r->held - 1];
  r->held = 0;
  if (m->ops->leave) m->ops->leave(m->ctx);
}

/* Enters model idx: 1 when it is ready (and now held for this request). */
static int enter_model(srv_req *r, int32_t idx) {
  srv_model *m = &r->s->models[idx];
  if (!m->ready) return 0;
  if (m->ops->enter) {
    if (!m->ops->enter(m->ctx)) return 0;
    r->held = idx + 1;
  }
  r->model = idx;
  return 1;
}

/* Moves to the next ready model of the route; 0 when there is none. */
static int next_model(srv_req *r) {
  release_model(r);
  while (r->route_pos < r->n_route) {
    if (enter_model(r, r->route[r->route_pos])) return 1;
    r->route_pos++;
  }
  return 0;
}

static int work_fail(srv_req *r, int status, const char *param, const char *code) {
  r->fail_status = status;
  r->fail_param = param;
  r->fail_code = code;
  return -1;
}

/* Worker side of the first pass: JSON parsing and validation, then name -> models (the
 * registry and the models' ready flags are immutable while serving). */
static int parse_and_resolve(srv_req *r) {
  server *s = r->s;
  int rc = r->dialect->decode ? r->dialect->decode(r, r->body, r->body_len)
                              : oai_request_parse(r->kind, r->body, r->body_len, &r->o,
                                                  &r->work_err);
  free(r->body);
  r->body = NULL;
  if (rc && r->fail_status) return -1;
  if (rc)
    return work_fail(r, rc == QV_ENOMEM ? 500 : 400, r->o.err_param[0] ? r->o.err_param : NULL,
                     rc == QV_EUNSUPPORTED ? "unsupported" : NULL);
  /* A tenant limited to some names gets the first of them when it names no model. */
  const tenant_cfg *tc = s->reg->tenants;
  const char *want = r->o.model;
  if (!want && r->tenant >= 0 && !tc->t[r->tenant].all_models && tc->t[r->tenant].n_models > 0)
    want = tc->t[r->tenant].models[0];
  if (want) {
    r->n_route = registry_resolve(s->reg, want, r->route, REG_MAX_ROUTE_LEN);
    r->model_name = want;
  } else {
    r->route[0] = 0;
    r->n_route = 1;
    r->model_name = s->reg->models[0].name;
  }
  if (r->n_route == 0) {
    char *msg = r->work_err.msg;
    size_t cap = sizeof r->work_err.msg;
    int n = snprintf(msg, cap, "The model '%.200s' does not exist. Available:", r->o.model);
    const registry *g = s->reg;
    const char *names[REG_MAX_MODELS + 2 * REG_MAX_NAMES];
    int32_t nn = 0;
    for (int32_t i = 0; i < g->n_models; i++) names[nn++] = g->models[i].name;
    for (int32_t i = 0; i < g->n_aliases; i++) names[nn++] = g->aliases[i].name;
    for (int32_t i = 0; i < g->n_routes; i++) names[nn++] = g->routes[i].name;
    for (int32_t i = 0; i < nn && n < 400; i++) /* a tenant sees only what it may use */
      if (tenant_allows_model(tc, r->tenant, g, names[i]))
        n += snprintf(msg + n, cap - (size_t)n, " %.60s", names[i]);
    return work_fail(r, 404, "model", "model_not_found");
  }
  if (!tenant_allows_model(tc, r->tenant, s->reg, r->model_name)) {
    r->model = r->route[0]; /* counted for the model it asked for */
    qv_error_set(&r->work_err, QV_EINVAL, "this API key may not use the model '%.200s'",
                 r->model_name);
    return work_fail(r, 403, "model", "model_not_allowed");
  }
  /* Route strategies (route.h): a weighted draw is pure and happens here; least_loaded reads
   * the loop's load counts, so it is ordered back on the loop before preparing. */
  const reg_route *rt = registry_route_of(s->reg, r->model_name);
  if (rt && rt->strategy == REG_ROUTE_WEIGHTED) route_order(rt, r->draw, NULL, r->route);
  if (rt && rt->strategy == REG_ROUTE_LEAST_LOADED &&
      (r->o.kind == OAI_CHAT || r->o.kind == OAI_COMPLETION))
    r->pick_pending = 1;
  int64_t n_seqs = (int64_t)(r->o.kind == OAI_CHAT ? 1 : r->o.n_prompts) * n_per_prompt(r);
  if ((r->o.kind == OAI_COMPLETION || r->o.kind == OAI_CHAT) && n_seqs > s->opts.max_request_seqs) {
    qv_error_set(&r->work_err, QV_EINVAL,
                 "this request asks for %lld sequences (prompts x n); at most %d are served per "
                 "request",
                 (long long)n_seqs, s->opts.max_request_seqs);
    return work_fail(r, 400, "n", "too_many_sequences");
  }
  r->route_pos = 0;
  if (!next_model(r)) {
    r->model = r->route[0];
    /* None is loaded: the first one that can be (on demand, asleep) is asked for, and the
     * request waits for it on the loop (srv_gen_check_waiting). */
    for (int32_t i = 0; i < r->n_route; i++) {
      srv_model *m = &s->models[r->route[i]];
      if (m->ready && m->ops->want) {
        r->model = r->route[i];
        r->route_pos = i;
        m->ops->want(m->ctx);
        r->wait_load = 1;
        return 0;
      }
    }
    qv_error_set(&r->work_err, QV_EUNSUPPORTED, "the requested model is not available");
    return work_fail(r, 503, "model", "model_unavailable");
  }
  int32_t vocab = model_of(r)->vocab_size;
  for (int32_t i = 0; vocab > 0 && r->o.kind == OAI_DETOKENIZE && i < r->o.n_detok_ids; i++)
    if (r->o.detok_ids[i] >= vocab) {
      qv_error_set(&r->work_err, QV_EINVAL, "token id %d is out of the vocabulary (%d)",
                   r->o.detok_ids[i], vocab);
      return work_fail(r, 400, "tokens", NULL);
    }
  return 0;
}

static void prep_inputs(srv_req *r);

/* Tokenize and detokenize answers are built here, on the worker (a 8 MiB prompt makes a
 * 30 MB answer: never on the loop). */
static void build_token_answer(srv_req *r) {
  if (r->fail_status || r->work_rc) return;
  if (r->o.kind == OAI_TOKENIZE) {
    /* Printed directly: a cJSON tree would cost ~100 bytes per token on top of the text. */
    size_t n = (size_t)r->pn[0], cap = 96 + 12 * n, len = 0;
    char *j = malloc(cap);
    if (!j) return;
    len += (size_t)snprintf(j, cap, "{\"count\":%d,\"max_model_len\":%d,\"tokens\":[", r->pn[0],
                            model_of(r)->max_model_len);
    for (size_t i = 0; i < n; i++)
      len += (size_t)snprintf(j + len, cap - len, i ? ",%d" : "%d", r->pids[0][i]);
    snprintf(j + len, cap - len, "]}");
    r->resp_json = j;
    return;
  }
  cJSON *root = cJSON_CreateObject();
  cJSON_AddStringToObject(root, "prompt", r->detok_text ? r->detok_text : ""); /* NULs marked */
  r->resp_json = cJSON_PrintUnformatted(root);
  cJSON_Delete(root);
}

/* tool_choice "required" or {"type": "function", "function": {"name"}} with tools: the
 * output is constrained to a call in the model's format. *name: the forced tool or NULL. */
static int forced_tool_call(srv_req *r, const char **name) {
  const cJSON *tc = r->o.tool_choice;
  *name = NULL;
  if (r->o.kind != OAI_CHAT || !r->o.tools || !tc) return 0;
  if (cJSON_IsString(tc)) return !strcmp(tc->valuestring, "required");
  const cJSON *fn = cJSON_GetObjectItemCaseSensitive(tc, "function");
  const cJSON *nm = cJSON_GetObjectItemCaseSensitive(fn, "name");
  if (!cJSON_IsString(nm)) return 0;
  *name = nm->valuestring;
  return 1;
}

/* Compiles the request's structured-output constraint (or forced tool call) for the chosen
 * model. 0, or -1 after work_fail. */
static int prep_constraint(srv_req *r) {
  srv_model *m = model_of(r);
  qv_cst_spec spec = r->o.cst;
  const char *param = r->o.cst_param;
  const char *tool_name = NULL;
  if (spec.kind == QV_CST_NONE && forced_tool_call(r, &tool_name)) {
    if (!m->ops->tool_format || !m->ops->parse_tools) return 0; /* not enforceable: as before */
    r->tools_text = cJSON_PrintUnformatted(r->o.tools);
    if (!r->tools_text) {
      qv_error_set(&r->work_err, QV_ENOMEM, "out of memory");
      return work_fail(r, 500, NULL, NULL);
    }
    /* "required" with parallel_tool_calls: true (said, not defaulted) lets the output hold
     * several calls; a named function is called once. */
    int parallel = !tool_name && cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r->o.root, "parallel_tool_calls"));
    spec = (qv_cst_spec){.kind = QV_CST_TOOL_CALL, .text = r->tools_text, .text_len = strlen(r->tools_text),
                         .tool_name = tool_name, .tool_format = m->ops->tool_format(m->ctx),
                         .max_tool_calls = parallel ? QV_CST_MAX_TOOL_CALLS : 1};
    param = "tool_choice";
  }
  if (spec.kind == QV_CST_NONE) return 0;
  if (!m->ops->compile_constraint) {
    qv_error_set(&r->work_err, QV_EUNSUPPORTED, "the model '%s' does not support structured output", r->model_name);
    return work_fail(r, 400, param, "unsupported");
  }
  int rc = m->ops->compile_constraint(m->ctx, &spec, &r->constraint, &r->work_err);
  if (rc) return work_fail(r, rc == QV_ENOMEM ? 500 : 400, param, rc == QV_EUNSUPPORTED ? "unsupported" : NULL);
  return 0;
}

/* Prompt text (NULs as markers, json_nul.h) to token ids: the tokenizer gets the real bytes. */
static int encode_text(srv_req *r, const char *text, size_t len, int add_special, int32_t **ids,
                       size_t *n) {
  srv_model *m = model_of(r);
  if (!jnul_has(text, len))
    return m->ops->encode(m->ctx, text, len, add_special, 0, ids, n, &r->work_err);
  char *bytes = malloc(len + 1);
  if (!bytes) return qv_error_set(&r->work_err, QV_ENOMEM, "out of memory");
  memcpy(bytes, text, len);
  len = jnul_decode(bytes, len);
  int rc = m->ops->encode(m->ctx, bytes, len, add_special, 0, ids, n, &r->work_err);
  free(bytes);
  return rc;
}

/* Token ids to text with NUL bytes as markers: *text malloc'd, NUL-terminated, *len bytes. */
static int decode_marked(srv_model *m, const int32_t *ids, size_t n_ids, char **text, size_t *len,
                         qv_error *err) {
  char *raw = NULL;
  size_t n = 0;
  *text = NULL;
  *len = 0;
  int rc = m->ops->decode(m->ctx, ids, n_ids, 0, &raw, &n, err);
  if (rc) return rc;
  if (!memchr(raw, 0, n)) {
    *text = raw;
    *len = n;
    return 0;
  }
  *text = jnul_encode(raw, n, len);
  free(raw);
  return *text ? 0 : qv_error_set(err, QV_ENOMEM, "out of memory");
}

static void prep_work(uv_work_t *w) {
  srv_req *r = w->data;
  prep_inputs(r);
  if (r->wait_load) return;
  if (r->o.kind == OAI_TOKENIZE || r->o.kind == OAI_DETOKENIZE) build_token_answer(r);
}

static void prep_inputs(srv_req *r) {
  if (!r->parsed) {
    r->parsed = 1;
    if (parse_and_resolve(r) || r->wait_load || r->pick_pending) return;
  }
  srv_model *m = model_of(r);
  const srv_model_ops *ops = m->ops;
  int32_t np = r->o.kind == OAI_CHAT || (r->o.kind == OAI_TOKENIZE && r->o.messages)
                   ? 1
                   : r->o.n_prompts;
  r->work_rc = 0;
  if ((r->o.kind == OAI_CHAT || r->o.kind == OAI_COMPLETION) && prep_constraint(r)) return;
  if (r->o.kind == OAI_DETOKENIZE) {
    r->work_rc = decode_marked(m, r->o.detok_ids, (size_t)r->o.n_detok_ids, &r->detok_text,
                               &r->detok_len, &r->work_err);
    return;
  }
  r->pids = calloc((size_t)np, sizeof *r->pids);
  r->pn = calloc((size_t)np, sizeof *r->pn);
  r->ptext = calloc((size_t)np, sizeof *r->ptext);
  r->ptext_len = calloc((size_t)np, sizeof *r->ptext_len);
  if (!r->pids || !r->pn || !r->ptext || !r->ptext_len) {
    r->work_rc = qv_error_set(&r->work_err, QV_ENOMEM, "out of memory");
    return;
  }
  r->n_prep = np;
  if (r->o.messages) {
    char *text = NULL;
    size_t len = 0;
    int add_special = 1;
    r->work_rc = render_prompt(r, &text, &len, &add_special);
    if (r->work_rc) return;
    r->think_opened = r->o.kind == OAI_CHAT && qv_chat_prompt_opens_think(text, len);
    if (r->o.kind == OAI_TOKENIZE && cJSON_GetObjectItem(r->o.root, "add_special_tokens"))
      add_special = r->o.add_special_tokens;
    len = jnul_decode(text, len); /* the tokenizer sees the real NUL bytes (json_nul.h) */
    size_t n = 0;
    r->work_rc = ops->encode(m->ctx, text, len, add_special, 1, &r->pids[0], &n, &r->work_err);
    free(text);
    r->pn[0] = (int32_t)n;
    return;
  }
  for (int32_t i = 0; i < np; i++) {
    const oai_prompt *p = &r->o.prompts[i];
    if (p->text) {
      size_t n = 0;
      int add_special = r->o.kind == OAI_TOKENIZE ? r->o.add_special_tokens : 1;
      r->work_rc = encode_text(r, p->text, p->text_len, add_special, &r->pids[i], &n);
      if (r->work_rc) return;
      r->pn[i] = (int32_t)n;
      if (r->o.echo) {
        r->ptext[i] = malloc(p->text_len + 1);
        if (!r->ptext[i]) {
          r->work_rc = qv_error_set(&r->work_err, QV_ENOMEM, "out of memory");
          return;
        }
        memcpy(r->ptext[i], p->text, p->text_len + 1);
        r->ptext_len[i] = p->text_len;
      }
    } else {
      r->pids[i] = malloc(sizeof *r->pids[i] * (size_t)p->n_ids);
      if (!r->pids[i]) {
        r->work_rc = qv_error_set(&r->work_err, QV_ENOMEM, "out of memory");
        return;
      }
      memcpy(r->pids[i], p->ids, sizeof *p->ids * (size_t)p->n_ids);
      r->pn[i] = p->n_ids;
      if (r->o.echo) {
        r->work_rc = decode_marked(m, p->ids, (size_t)p->n_ids, &r->ptext[i], &r->ptext_len[i],
                                   &r->work_err);
        if (r->work_rc) return;
      }
    }
  }
}

static void after_prep(uv_work_t *w, int status);

static void heavy_prep_work(srv_work *w) { prep_work(&((srv_req *)w->data)->work); }
static void heavy_after_prep(srv_work *w, int status) {
  after_prep(&((srv_req *)w->data)->work, status);
}

static void start_prep(srv_req *r) {
  free_prep(r);
  r->work.data = r;
  r->in_work = 1;
  if (r->heavy && r->s->heavy) {
    r->hwork.data = r;
    r->hwork.work = heavy_prep_work;
    r->hwork.after = heavy_after_prep;
    workq_submit(r->s->heavy, &r->hwork);
    return;
  }
  int rc = uv_queue_work(r->s->loop, &r->work, prep_work, after_prep);
  if (rc) {
    r->in_work = 0;
    srv_send_error(r, 500, "cannot queue work", NULL, NULL);
    srv_req_maybe_free(r);
  }
}


void srv_gen_start(srv_req *r, oai_kind kind, const char *body, size_t body_len) {
  r->kind = kind;
  r->heavy = body_len > r->s->opts.heavy_body_bytes;
  r->body = malloc(body_len + 1);
  if (!r->body) {
    srv_send_error(r, 500, "out of memory", NULL, NULL);
    srv_req_maybe_free(r);
    return;
  }
  memcpy(r->body, body, body_len);
  r->body[body_len] = '\0';
  r->body_len = body_len;
  start_prep(r);
}

/* ---- responses for tokenize/detokenize ---- */

/* Names the model that actually served (a route or alias may hide it from the body). */
/* With a tenant quota, also what is left of it, in OpenAI's header names. */
static void served_header(const srv_req *r, char *out, size_t cap) {
  int n = snprintf(out, cap, "X-Quiver-Model: %.128s\r\n", r->s->reg->models[r->model].name);
  if (r->tenant < 0 || n < 0 || (size_t)n >= cap) return;
  const tenant *t = &r->s->reg->tenants->t[r->tenant];
  int64_t req, tok;
  tenant_quota_remaining(&r->s->quotas[r->tenant], uv_hrtime(), &req, &tok);
  if (t->rpm > 0)
    n += snprintf(out + n, cap - (size_t)n,
                  "x-ratelimit-limit-requests: %lld\r\nx-ratelimit-remaining-requests: %lld\r\n",
                  (long long)t->rpm, (long long)(req > 0 ? req : 0));
  if (t->tpm > 0 && n > 0 && (size_t)n < cap)
    snprintf(out + n, cap - (size_t)n,
             "x-ratelimit-limit-tokens: %lld\r\nx-ratelimit-remaining-tokens: %lld\r\n",
             (long long)t->tpm, (long long)(tok > 0 ? tok : 0));
}

/* Sends json (taken: written without a copy). */
static void respond_body(srv_req *r, int status, char *json) {
  if (!json) {
    srv_send_error(r, 500, "out of memory", NULL, NULL);
    return;
  }
  if (!r->conn) {
    free(json);
    return;
  }
  http_conn *c = r->conn;
  r->conn = NULL;
  http_conn_set_ctx(c, NULL);
  srv_count(r, status);
  char extra[512];
  served_header(r, extra, sizeof extra);
  size_t len = strlen(json), wlen = 0;
  int oom = 0;
  char *wire = jnul_wire(json, len, &wlen, &oom);
  if (oom) {
    free(json);
    http_conn_kill(c);
    return;
  }
  if (wire) { /* NUL markers written as \u0000 (json_nul.h) */
    free(json);
    json = wire;
    len = wlen;
  }
  http_respond_take(c, status, "application/json", extra, json, len);
}

/* Tokenize and detokenize: the answer was built on the worker (a dialect's token count is a
 * few bytes, built here). */
static void respond_tokens(srv_req *r) {
  char *j = r->resp_json;
  r->resp_json = NULL;
  if (r->o.kind == OAI_TOKENIZE && r->dialect->count_json) {
    free(j);
    j = r->dialect->count_json(r);
  }
  respond_body(r, 200, j);
}

/* ---- submission ---- */

static void abort_subs(srv_req *r, int remove) {
  srv_model *m = model_of(r);
  for (int32_t i = 0; i < r->n_subs; i++) {
    srv_sub *sub = &r->subs[i];
    if (!sub->in_table) continue;
    m->ops->abort(m->ctx, sub->eid);
    if (remove) srv_table_remove(r->s, r->model, sub);
  }
}

static int alloc_choices(srv_req *r, int32_t n_subs) {
  free_choices(r);
  int32_t n = n_per_prompt(r);
  r->subs = calloc((size_t)n_subs, sizeof *r->subs);
  r->choices = calloc((size_t)(n_subs * n), sizeof *r->choices);
  if (!r->subs || !r->choices) return QV_ENOMEM;
  r->n_subs = n_subs;
  r->n_choices = n_subs * n;
  if (r->o.want_logprobs)
    for (int32_t i = 0; i < r->n_choices; i++) {
      r->choices[i].lp = oai_logprobs_create(r->o.kind);
      if (!r->choices[i].lp) return QV_ENOMEM;
    }
  const srv_model_ops *ops = model_of(r)->ops;
  for (int32_t i = 0; i < r->n_choices; i++) {
    int32_t pi = i / n;
    r->choices[i].last_token = r->pn[pi] > 0 ? r->pids[pi][r->pn[pi] - 1] : -1;
    if (r->o.stream && wants_tools(r) && ops->tool_stream_create) {
      r->choices[i].tstream = ops->tool_stream_create(model_of(r)->ctx);
      if (!r->choices[i].tstream) return QV_ENOMEM;
      r->choices[i].tstream_destroy = ops->tool_stream_destroy;
    }
    if (r->o.stream && wants_reasoning(r) &&
        qv_chat_reasoning_stream_create(started_in_think(r), &r->choices[i].rstream, NULL))
      return QV_ENOMEM;
  }
  memset(&r->usage, 0, sizeof r->usage);
  return 0;
}

/* Checks lengths and ids against the model, then submits every prompt. */
static void submit_all(srv_req *r) {
  srv_model *m = model_of(r);
  int32_t np = r->o.kind == OAI_CHAT ? 1 : r->o.n_prompts;
  int32_t max_len = m->max_model_len;
  char msg[400];
  for (int32_t i = 0; i < np; i++) {
    int64_t want = (int64_t)r->pn[i] + (r->o.max_tokens_given ? r->o.params.max_tokens : 0);
    if (r->pn[i] == 0) {
      srv_send_error(r, 400, "the prompt is empty after tokenization", "prompt", NULL);
      return;
    }
    if (max_len > 0 && (r->pn[i] >= max_len || want > max_len)) {
      snprintf(msg, sizeof msg,
               "This model's maximum context length is %d tokens. However, you requested %lld "
               "tokens (%d in the prompt, %d for the completion). Please reduce the prompt or "
               "max_tokens.",
               max_len, (long long)(r->o.max_tokens_given ? want : r->pn[i]), r->pn[i],
               r->o.max_tokens_given ? r->o.params.max_tokens : 0);
      srv_send_error(r, 400, msg, r->o.kind == OAI_CHAT ? "messages" : "prompt",
                     "context_length_exceeded");
      return;
    }
    for (int32_t k = 0; m->vocab_size > 0 && k < r->pn[i]; k++)
      if (r->pids[i][k] >= m->vocab_size) {
        srv_send_error(r, 400, "prompt token id out of the vocabulary", "prompt", NULL);
        return;
      }
  }
  for (int32_t k = 0; m->vocab_size > 0 && k < r->o.n_bias; k++)
    if (r->o.bias_ids[k] >= m->vocab_size) {
      srv_send_error(r, 400, "logit_bias token id out of the vocabulary", "logit_bias", NULL);
      return;
    }
  for (int32_t k = 0; m->vocab_size > 0 && k < r->o.params.n_stop_token_ids; k++)
    if (r->o.stop_token_ids[k] >= m->vocab_size) {
      srv_send_error(r, 400, "stop_token_ids holds an id out of the vocabulary", "stop_token_ids",
                     NULL);
      return;
    }
  if (alloc_choices(r, np)) {
    srv_send_error(r, 500, "out of memory", NULL, NULL);
    return;
  }
  for (int32_t i = 0; i < np; i++) {
    qv_request_params p = r->o.params;
    p.constraint = r->constraint;
    p.prompt_ids = r->pids[i];
    p.n_prompt = r->pn[i];
    qv_error err = {0};
    uint64_t eid = 0;
    int rc = m->ops->submit(m->ctx, &p, &eid, &err);
    if (rc == QV_EBUSY) {
      abort_subs(r, 1);
      r->route_pos++;
      if (next_model(r)) {
        QV_LOGI("serve: %s queue full, falling back to %s", r->s->reg->models[r->route[r->route_pos - 1]].name,
                r->s->reg->models[r->model].name);
        start_prep(r);
        return;
      }
      srv_send_error(r, 429, "the server is busy (request queue full); retry later", NULL,
                     "queue_full");
      return;
    }
    if (rc) {
      abort_subs(r, 1);
      int status = rc == QV_EINVAL || rc == QV_ERANGE || rc == QV_EUNSUPPORTED ? 400 : 500;
      srv_send_error(r, status, err.msg[0] ? err.msg : qv_strerror(rc), NULL, NULL);
      return;
    }
    r->subs[i].eid = eid;
    r->subs[i].req = r;
    r->subs[i].prompt_idx = i;
    srv_table_insert(r->s, r->model, &r->subs[i]);
  }
  snprintf(r->id, sizeof r->id, "%s%llx%012llx", r->dialect->id_prefix(r),
           (unsigned long long)r->s->started & 0xffffff, (unsigned long long)++r->s->next_id);
  if (r->o.stream) {
    srv_count(r, 200);
    char extra[512];
    served_header(r, extra, sizeof extra);
    http_stream_begin(r->conn, 200, "text/event-stream", extra);
    r->stream_started = 1;
    r->dialect->stream_begin(r);
  }
}

/* Unknown request fields are ignored; each name is logged once per server (bounded). */
static void log_ignored(srv_req *r) {
  server *s = r->s;
  for (int32_t i = 0; i < r->o.n_ignored; i++) {
    int seen = 0;
    for (int32_t k = 0; k < s->n_ignored_logged && !seen; k++)
      seen = !strcmp(s->ignored_logged[k], r->o.ignored[i]);
    if (seen || s->n_ignored_logged >= 256) continue;
    char **grown = realloc(s->ignored_logged, sizeof *grown * (size_t)(s->n_ignored_logged + 1));
    if (!grown) return;
    s->ignored_logged = grown;
    char name[65];
    snprintf(name, sizeof name, "%s", r->o.ignored[i]);
    if (!(grown[s->n_ignored_logged] = strdup(name))) return;
    s->n_ignored_logged++;
    QV_LOGW("serve: ignoring unknown request field '%s' (logged once)", name);
  }
}

/* Orders a least_loaded route by the models' live sequences (loop thread), counts the pick
 * until submission and prepares the request for it. */
static void pick_least_loaded(srv_req *r) {
  r->pick_pending = 0;
  const reg_route *rt = registry_route_of(r->s->reg, r->model_name);
  if (rt) route_order(rt, r->draw, r->s->live_seqs, r->route);
  r->route_pos = 0;
  if (!next_model(r)) {
    srv_send_error(r, 503, "the requested model is not available", "model", "model_unavailable");
    return;
  }
  r->held_model = r->model;
  r->s->live_seqs[r->model] += srv_n_per_prompt(r);
  start_prep(r);
}

/* The tenant's quota (tenant.h): 1 when the request may go on (admitted now or before a route
 * fallback, or no quota applies); 0 after answering 429. */
static int admit_quota(srv_req *r) {
  server *s = r->s;
  if (r->tenant < 0 || r->admitted) return 1;
  const tenant *t = &s->reg->tenants->t[r->tenant];
  if (t->rpm == 0 && t->tpm == 0) return 1;
  int32_t np = r->o.kind == OAI_CHAT ? 1 : r->o.n_prompts, n = n_per_prompt(r);
  /* max_tokens as the engine will see it: given, or completions' default 16; chat without it
   * may run to the end of the context (the implicit part). */
  int32_t max_len = model_of(r)->max_model_len, mt = r->o.params.max_tokens;
  int64_t prompt = 0, implicit = 0;
  for (int32_t i = 0; i < np; i++) {
    prompt += r->pn[i];
    if (mt <= 0 && max_len > r->pn[i]) implicit += (int64_t)(max_len - r->pn[i]) * n;
  }
  int64_t must = prompt + (mt > 0 ? (int64_t)mt * n * np : 0);
  int64_t reserve = must + implicit, retry = 0;
  tenant_admit_rc rc = tenant_quota_admit(&s->quotas[r->tenant], uv_hrtime(), must, &reserve, &retry);
  if (rc == TENANT_ADMIT_OK) {
    r->admitted = 1;
    r->reserved = reserve;
    return 1;
  }
  char msg[400], extra[64] = "";
  tenant_limit_message(t, rc, must, retry, msg, sizeof msg);
  if (rc != TENANT_ADMIT_TOO_LARGE) snprintf(extra, sizeof extra, "Retry-After: %lld\r\n", (long long)retry);
  metrics_tenant_limited(&s->met, r->tenant, rc != TENANT_ADMIT_REQUESTS);
  srv_send_error_hdr(r, 429, msg, NULL,
                     rc == TENANT_ADMIT_TOO_LARGE ? "request_too_large" : "rate_limit_exceeded",
                     extra);
  return 0;
}

static void after_prep(uv_work_t *w, int status) {
  srv_req *r = w->data;
  r->in_work = 0;
  if (!r->conn || status == UV_ECANCELED) {
    srv_req_maybe_free(r);
    return;
  }
  r->pins++;
  log_ignored(r);
  if (r->wait_load && !r->fail_status) {
    server *s = r->s;
    if (s->n_wait_load >= s->opts.max_wait_load) {
      r->wait_load = 0;
      srv_send_error(r, 503, "too many requests are waiting for models to load; retry later", "model",
                     "model_loading");
    } else {
      s->n_wait_load++;
      r->wait_load = 2; /* counted in n_wait_load */
      r->wait_deadline_ns = uv_hrtime() + s->opts.load_timeout_ms * 1000000ull;
    }
  } else if (r->fail_status) {
    srv_send_error(r, r->fail_status, r->work_err.msg, r->fail_param, r->fail_code);
  } else if (r->pick_pending) {
    pick_least_loaded(r);
  } else if (r->work_rc) {
    int st = r->work_rc == QV_ENOMEM || r->work_rc == QV_EIO ? 500 : 400;
    srv_send_error(r, st, r->work_err.msg[0] ? r->work_err.msg : qv_strerror(r->work_rc),
                   r->o.messages ? "messages" : NULL,
                   r->work_rc == QV_ETEMPLATE ? "template_error" : NULL);
  } else if (r->o.kind == OAI_TOKENIZE || r->o.kind == OAI_DETOKENIZE) {
    respond_tokens(r);
  } else {
    release_hold(r);
    if (admit_quota(r)) submit_all(r);
  }
  r->pins--;
  srv_req_maybe_free(r);
}

/* ---- events ---- */

/* Writes one SSE event (taking ownership of sse) and cuts off a client that fell too far
 * behind, aborting its engine requests. */
void srv_stream_send(srv_req *r, char *sse) {
  if (!r->conn) {
    free(sse);
    return;
  }
  if (!sse) {
    abort_subs(r, 0);
    http_conn *c = r->conn;
    r->conn = NULL;
    http_conn_kill(c);
    return;
  }
  size_t len = strlen(sse), wlen = 0;
  int oom = 0;
  char *wire = jnul_wire(sse, len, &wlen, &oom);
  if (oom) { /* as when the event itself could not be built */
    free(sse);
    srv_stream_send(r, NULL);
    return;
  }
  http_stream_write(r->conn, wire ? wire : sse, wire ? wlen : len);
  free(wire);
  free(sse);
  if (http_conn_pending_bytes(r->conn) > r->s->opts.max_stream_backlog_bytes) {
    QV_LOGW("serve: %s: client too slow (%zu bytes queued); closing", r->id,
            http_conn_pending_bytes(r->conn));
    abort_subs(r, 0);
    http_conn *c = r->conn;
    r->conn = NULL;
    http_conn_kill(c);
  }
}

static int append_text(srv_choice *c, const char *t, size_t n) {
  char *nt = qv_grow(c->text, &c->cap, c->len + n + 1, 1, 256);
  if (!nt) return QV_ENOMEM;
  c->text = nt;
  memcpy(c->text + c->len, t, n);
  c->len += n;
  c->text[c->len] = '\0';
  return 0;
}

/* Token text for logprobs. Decoders drop a leading space at the start of a text
 * (SentencePiece), so a token is decoded after its predecessor and the predecessor's text is
 * cut off: the same text the token adds inside the sequence. Lookup-sized work, fine on the
 * loop. NUL bytes come back as markers (json_nul.h). */
static char *token_str(srv_model *m, int32_t prev, int32_t id) {
  char *t = NULL, *p = NULL;
  size_t n = 0, pn = 0;
  if (prev >= 0) {
    int32_t two[2] = {prev, id};
    if (!m->ops->decode(m->ctx, two, 2, 0, &t, &n, NULL) &&
        !m->ops->decode(m->ctx, &prev, 1, 0, &p, &pn, NULL) && pn <= n && !memcmp(t, p, pn)) {
      char *own = jnul_encode(t + pn, n - pn, NULL);
      free(t);
      free(p);
      return own ? own : strdup("");
    }
    free(t);
    free(p);
    t = NULL;
  }
  if (m->ops->decode(m->ctx, &id, 1, 0, &t, &n, NULL)) return strdup("");
  char *own = jnul_encode(t, n, NULL);
  free(t);
  return own ? own : strdup("");
}

/* The completions name of a token whose text is text (owned; replaced): oai_token_key over the
 * token's own bytes. NULL only when out of memory. */
static char *token_key(srv_model *m, int32_t id, char *text) {
  char *raw = NULL;
  size_t rn = 0;
  if (m->ops->token_bytes && m->ops->token_bytes(m->ctx, id, &raw, &rn)) raw = NULL;
  char *key = oai_token_key(text ? text : "", raw, rn);
  free(raw);
  free(text);
  return key;
}

static void add_logprobs(srv_req *r, srv_choice *ch, const qv_event *ev) {
  if (!ch->lp || !ev->logprobs) return;
  srv_model *m = model_of(r);
  size_t off = ch->text_offset; /* echo with logprobs is refused, so no prompt text precedes */
  for (int32_t t = 0; t < ev->n_tokens; t++) {
    int32_t prev = ch->last_token;
    char *tok = token_str(m, prev, ev->token_ids[t]);
    /* text_offset counts text bytes, whatever the names (a NUL marker is one byte) */
    size_t tok_len = tok ? jnul_bytes(tok, strlen(tok)) : 0;
    const qv_top_logprob *top = ev->top ? &ev->top[(size_t)t * (size_t)ev->n_top] : NULL;
    int32_t n_top = ev->top ? (ev->n_top < OAI_MAX_TOP_LOGPROBS ? ev->n_top : OAI_MAX_TOP_LOGPROBS) : 0;
    /* names[0] is the sampled token's, names[1 + k] its alternatives' */
    char *names[1 + OAI_MAX_TOP_LOGPROBS];
    int32_t ids[1 + OAI_MAX_TOP_LOGPROBS];
    names[0] = tok;
    ids[0] = ev->token_ids[t];
    for (int32_t k = 0; k < n_top; k++) {
      ids[1 + k] = top[k].id;
      names[1 + k] = token_str(m, prev, top[k].id);
    }
    /* Completions key top_logprobs by name, so distinct tokens get distinct names; chat
     * entries keep their text and carry bytes. */
    if (r->o.kind == OAI_COMPLETION) {
      int ok = 1;
      for (int32_t k = 0; k <= n_top; k++) {
        names[k] = token_key(m, ids[k], names[k]);
        if (!names[k]) ok = 0;
      }
      /* out of memory: the names stay as they are (an entry may then be missing) */
      if (ok) (void)oai_distinct_keys(names, ids, 1 + n_top);
    }
    const char *tops[OAI_MAX_TOP_LOGPROBS];
    for (int32_t k = 0; k < n_top; k++) tops[k] = names[1 + k] ? names[1 + k] : "";
    oai_logprobs_add(ch->lp, names[0] ? names[0] : "", names[0] ? strlen(names[0]) : 0,
                     ev->logprobs[t], top, tops, n_top, off);
    off += tok_len;
    for (int32_t k = 0; k <= n_top; k++) free(names[k]);
    ch->last_token = ev->token_ids[t];
  }
}

static const char *finish_str(qv_finish_reason f) {
  switch (f) {
  case QV_FINISH_STOP: return "stop";
  case QV_FINISH_LENGTH: return "length";
  case QV_FINISH_ABORT: return "abort";
  default: return "error";
  }
}

static char *response_json(srv_req *r);
static void heavy_response_work(srv_work *w);
static void heavy_response_after(srv_work *w, int status);

/* Keeps only the first tool call when the request said parallel_tool_calls false. */
static void limit_calls(const srv_req *r, cJSON *calls) {
  while (!r->o.parallel_tool_calls && cJSON_GetArraySize(calls) > 1)
    cJSON_DeleteItemFromArray(calls, cJSON_GetArraySize(calls) - 1);
}

static void finish_response(srv_req *r) {
  if (r->stream_started) {
    r->dialect->stream_end(r);
    if (!r->conn) return;
    http_conn *c = r->conn;
    r->conn = NULL;
    http_conn_set_ctx(c, NULL);
    http_stream_end(c);
    return;
  }
  for (int32_t i = 0; i < r->n_choices; i++)
    if (!strcmp(r->choices[i].finish, "error")) {
      srv_send_error(r, 500, "generation failed", NULL, NULL);
      return;
    }
  /* A large answer (many choices, logprobs, long texts) is serialised on the heavy pool. */
  size_t text_bytes = 0;
  for (int32_t i = 0; i < r->n_choices; i++) text_bytes += r->choices[i].len;
  if (r->s->heavy && (r->o.want_logprobs || r->n_choices > 8 || text_bytes > (64u << 10))) {
    r->in_work = 1;
    r->hwork.data = r;
    r->hwork.work = heavy_response_work;
    r->hwork.after = heavy_response_after;
    workq_submit(r->s->heavy, &r->hwork);
    return;
  }
  respond_body(r, 200, response_json(r));
}

/* The whole non-streamed answer of r (malloc'd, NULL when out of memory). Touches only r, so it
 * may run on a worker while r is kept alive by in_work. */
static char *response_json(srv_req *r) {
  oai_choice *cs = calloc((size_t)r->n_choices, sizeof *cs);
  char **texts = calloc((size_t)r->n_choices, sizeof *texts);
  char **reasons = calloc((size_t)r->n_choices, sizeof *reasons);
  cJSON **calls = calloc((size_t)r->n_choices, sizeof *calls);
  if (!cs || !texts || !reasons || !calls) {
    free(cs);
    free(texts);
    free(reasons);
    free(calls);
    return NULL;
  }
  int32_t n = n_per_prompt(r);
  for (int32_t i = 0; i < r->n_choices; i++) {
    srv_choice *ch = &r->choices[i];
    int32_t pi = i / n;
    if (r->o.echo && r->ptext && r->ptext[pi]) {
      texts[i] = malloc(r->ptext_len[pi] + ch->len + 1);
      if (texts[i]) {
        memcpy(texts[i], r->ptext[pi], r->ptext_len[pi]);
        if (ch->len) memcpy(texts[i] + r->ptext_len[pi], ch->text, ch->len);
        texts[i][r->ptext_len[pi] + ch->len] = '\0';
        cs[i].text = texts[i];
        cs[i].text_len = r->ptext_len[pi] + ch->len;
      }
    } else {
      cs[i].text = ch->text ? ch->text : "";
      cs[i].text_len = ch->len;
    }
    cs[i].finish_reason = ch->finish;
    cs[i].stop_reason = ch->stop_reason;
    cs[i].logprobs = ch->lp ? oai_logprobs_json(ch->lp) : NULL;
    /* Reasoning first; the tool-call parser sees only the content after it. */
    if (wants_reasoning(r) && !texts[i]) {
      cs[i].has_reasoning = 1;
      if (!qv_chat_reasoning_split(cs[i].text, cs[i].text_len, started_in_think(r), &reasons[i],
                                   &texts[i], NULL)) {
        cs[i].reasoning = reasons[i];
        cs[i].text = texts[i];
        cs[i].text_len = strlen(texts[i]);
      }
    }
    if (wants_tools(r) && (!texts[i] || cs[i].has_reasoning)) {
      srv_model *m = model_of(r);
      char *content = NULL;
      if (!m->ops->parse_tools(m->ctx, cs[i].text, cs[i].text_len, &content, &calls[i], NULL) &&
          content) {
        limit_calls(r, calls[i]);
        free(texts[i]);
        texts[i] = content;
        cs[i].text = texts[i];
        cs[i].text_len = strlen(texts[i]);
        cs[i].tool_calls = calls[i];
        if (calls[i] && cJSON_GetArraySize(calls[i]) > 0 && !strcmp(ch->finish, "stop"))
          cs[i].finish_reason = "tool_calls";
      }
    }
  }
  char *j = r->dialect->response_json(r, cs, r->n_choices);
  for (int32_t i = 0; i < r->n_choices; i++) {
    free(texts[i]);
    free(reasons[i]);
    cJSON_Delete(calls[i]);
  }
  free(texts);
  free(reasons);
  free(calls);
  free(cs);
  return j;
}

static void heavy_response_work(srv_work *w) {
  srv_req *r = w->data;
  r->resp_json = response_json(r);
}

static void heavy_response_after(srv_work *w, int status) {
  srv_req *r = w->data;
  r->in_work = 0;
  char *j = r->resp_json;
  r->resp_json = NULL;
  if (r->conn && status == 0) {
    r->pins++;
    respond_body(r, 200, j);
    r->pins--;
  } else {
    free(j);
  }
  srv_req_maybe_free(r);
}

/* Feeds content to choice ch's tool-call parser; with finish, also flushes it, joining what
 * both calls return. On success *content (malloc'd or NULL) and *calls (or NULL) are the
 * caller's. */
static int tool_feed(srv_req *r, srv_choice *ch, const char *text, size_t len, int finish,
                     char **content, cJSON **calls) {
  const srv_model_ops *ops = model_of(r)->ops;
  *content = NULL;
  *calls = NULL;
  if (!finish || len > 0) {
    int rc = ops->tool_stream_feed(ch->tstream, text ? text : "", len, 0, content, calls, NULL);
    if (rc || !finish) return rc;
  }
  char *tail = NULL;
  cJSON *more = NULL;
  int rc = ops->tool_stream_feed(ch->tstream, "", 0, 1, &tail, &more, NULL);
  if (rc) {
    free(*content);
    cJSON_Delete(*calls);
    *content = NULL;
    *calls = NULL;
    return rc;
  }
  if (tail && *content) {
    size_t a = strlen(*content), b = strlen(tail);
    char *joined = realloc(*content, a + b + 1);
    if (joined) {
      memcpy(joined + a, tail, b + 1);
      *content = joined;
    }
    free(tail);
  } else if (tail) {
    *content = tail;
  }
  if (more && *calls) {
    while (cJSON_GetArraySize(more) > 0)
      cJSON_AddItemToArray(*calls, cJSON_DetachItemFromArray(more, 0));
    cJSON_Delete(more);
  } else if (more) {
    *calls = more;
  }
  return 0;
}

/* Streams a text delta of choice ci: through the reasoning parser when there is one (its
 * reasoning goes out as delta.reasoning_content), then its content through the tool-call
 * parser when there is one. finish flushes both. */
static void stream_delta(srv_req *r, int32_t ci, const char *text, size_t len, int finish,
                         const cJSON *lp) {
  srv_choice *ch = &r->choices[ci];
  char *reasoning = NULL, *rcontent = NULL, *content = NULL;
  cJSON *calls = NULL;
  if (ch->rstream) {
    int rc = finish ? qv_chat_reasoning_stream_finish(ch->rstream, &reasoning, &rcontent, NULL)
                    : qv_chat_reasoning_stream_feed(ch->rstream, text ? text : "", len,
                                                    &reasoning, &rcontent, NULL);
    if (rc == 0) {
      text = rcontent;
      len = rcontent ? strlen(rcontent) : 0;
    } else {
      free(reasoning);
      free(rcontent);
      reasoning = rcontent = NULL;
    }
  }
  if (ch->tstream && tool_feed(r, ch, text, len, finish, &content, &calls) == 0) {
    text = content;
    len = content ? strlen(content) : 0;
    if (!r->o.parallel_tool_calls) /* only the first call of the whole choice survives */
      while (cJSON_GetArraySize(calls) > (ch->n_calls > 0 ? 0 : 1))
        cJSON_DeleteItemFromArray(calls, cJSON_GetArraySize(calls) - 1);
    cJSON *c;
    cJSON_ArrayForEach(c, calls) cJSON_AddNumberToObject(c, "index", ch->n_calls++);
    if (calls && cJSON_GetArraySize(calls) == 0) {
      cJSON_Delete(calls);
      calls = NULL;
    }
  }
  size_t rlen = reasoning ? strlen(reasoning) : 0;
  if (len > 0 || rlen > 0 || lp || calls) {
    srv_delta d = {.text = text, .text_len = len, .reasoning = reasoning, .reasoning_len = rlen,
                   .tool_calls = calls, .logprobs = lp};
    r->dialect->stream_delta(r, ci, &d);
  }
  free(reasoning);
  free(rcontent);
  free(content);
  cJSON_Delete(calls);
}

static void on_event(server *s, int32_t model, srv_sub *sub, qv_event *ev);

void srv_gen_on_event(server *s, int32_t model, qv_event *ev) {
  srv_sub *sub = srv_table_find(s, model, ev->req_id);
  if (!sub) return; /* a request already given up (fallback or shutdown) */
  srv_req *r = sub->req;
  r->pins++;
  on_event(s, model, sub, ev);
  r->pins--;
  srv_req_maybe_free(r);
}

/* The vLLM-named request metrics of one finished engine request (its last FINISH event). */
static void observe_finish(server *s, int32_t model, const srv_req *r, const qv_event *ev,
                           uint64_t now) {
  metrics_finish f = {
      .reason = ev->finish == QV_FINISH_STOP     ? METRICS_FINISH_STOP
                : ev->finish == QV_FINISH_LENGTH ? METRICS_FINISH_LENGTH
                : ev->finish == QV_FINISH_ABORT  ? METRICS_FINISH_ABORT
                                                 : METRICS_FINISH_ERROR,
      .e2e_s = (double)(now - r->t_start) / 1e9,
      .queue_s = ev->queue_s,
      .prefill_s = ev->prefill_s,
      .decode_s = ev->decode_s,
      .prompt_tokens = ev->prompt_tokens,
      .generation_tokens = ev->total_completion_tokens,
  };
  metrics_observe_finish(&s->met, model, &f);
}

static void on_event(server *s, int32_t model, srv_sub *sub, qv_event *ev) {
  srv_req *r = sub->req;
  int32_t n = n_per_prompt(r);
  if (ev->choice < 0 || ev->choice >= n) return;
  int32_t ci = sub->prompt_idx * n + ev->choice;
  srv_choice *ch = &r->choices[ci];
  uint64_t now = uv_hrtime();
  if (ev->n_tokens > 0) {
    if (!r->t_first) {
      r->t_first = now;
      metrics_observe_ttft(&s->met, model, (double)(now - r->t_start) / 1e9);
    } else {
      double per = (double)(now - r->t_last) / 1e9 / ev->n_tokens;
      for (int32_t t = 0; t < ev->n_tokens; t++) metrics_observe_itl(&s->met, model, per);
    }
    r->t_last = now;
  }
  r->live_tokens += ev->n_tokens;
  /* Generated text goes on with NUL bytes as markers (json_nul.h): the parsers and encoders
   * after this point treat text as C strings. */
  const char *etext = ev->text ? ev->text : "";
  size_t elen = ev->text_len;
  char *marked = NULL;
  if (elen > 0 && memchr(etext, 0, elen)) {
    if (!(marked = jnul_encode(etext, elen, &elen))) {
      abort_subs(r, 0);
      srv_send_error(r, 500, "out of memory", NULL, NULL);
      return;
    }
    etext = marked;
  }
  if (r->conn && (ev->n_tokens > 0 || ev->text_len > 0)) {
    if (r->stream_started) {
      cJSON *lp = NULL;
      if (ch->lp) {
        add_logprobs(r, ch, ev);
        lp = oai_logprobs_take(ch->lp);
      }
      stream_delta(r, ci, etext, elen, 0, lp);
      cJSON_Delete(lp);
    } else {
      add_logprobs(r, ch, ev);
      if (append_text(ch, etext, elen)) {
        abort_subs(r, 0);
        srv_send_error(r, 500, "out of memory", NULL, NULL);
      }
    }
    ch->text_offset += ev->text_len;
  }
  free(marked);
  if (ev->type != QV_EVENT_FINISH || ch->finished) return;
  ch->finished = 1;
  ch->finish = finish_str(ev->finish);
  if (ev->stop_str) ch->stop_reason = strdup(ev->stop_str);
  r->n_choices_done++;
  sub->n_finished++;
  if (!sub->usage_counted) {
    sub->usage_counted = 1;
    r->usage.prompt_tokens += ev->prompt_tokens;
    r->usage.cached_tokens += ev->cached_tokens;
  }
  r->usage.completion_tokens += ev->completion_tokens;
  metrics_add_tokens(&s->met, model, sub->n_finished == 1 ? ev->prompt_tokens : 0,
                     ev->completion_tokens);
  if (r->conn && r->stream_started) {
    if (ev->finish == QV_FINISH_ERROR) {
      r->dialect->stream_error(r, ci, ev->error ? ev->error : "generation failed");
    } else {
      if (ch->tstream || ch->rstream) {
        stream_delta(r, ci, NULL, 0, 1, NULL);
        if (ch->n_calls > 0 && ev->finish == QV_FINISH_STOP) ch->finish = "tool_calls";
      }
      if (r->conn) r->dialect->stream_finish(r, ci);
    }
  }
  if (sub->n_finished >= n) {
    observe_finish(s, model, r, ev, now);
    srv_table_remove(s, model, sub);
  }
  if (r->n_choices_done == r->n_choices && r->conn) finish_response(r);
}

void srv_gen_on_disconnect(srv_req *r) {
  if (r->model >= 0 && r->n_live_subs > 0) abort_subs(r, 0);
}

void srv_gen_abort_all(server *s) {
  for (srv_req *r = s->reqs, *next; r; r = next) {
    next = r->next;
    if (!r->conn) continue;
    r->pins++;
    if (r->model >= 0 && r->n_live_subs > 0) abort_subs(r, 1);
    if (r->stream_started) {
      char *e = oai_error_json(503, "the server is shutting down: request aborted", NULL,
                               "aborted");
      if (e) {
        http_stream_write(r->conn, "data: ", 6);
        http_stream_write(r->conn, e, strlen(e));
        http_stream_write(r->conn, "\n\n", 2);
        free(e);
      }
      http_conn *c = r->conn;
      if (c) {
        r->conn = NULL;
        http_conn_set_ctx(c, NULL);
        http_stream_end(c);
      }
    } else {
      srv_send_error(r, 503, "the server is shutting down: request aborted", NULL, "aborted");
    }
    r->pins--;
    srv_req_maybe_free(r);
  }
}

/* ---- waiting for a model to load ---- */

void srv_gen_check_waiting(server *s) {
  if (!s->n_wait_load || !s->opts.fleet) return;
  uint64_t now = uv_hrtime();
  for (srv_req *r = s->reqs, *next; r; r = next) {
    next = r->next;
    if (r->in_work || r->wait_load != 2) continue; /* in_work first: the worker writes wait_load */
    fleet_model_info in;
    fleet_get_info(s->opts.fleet, r->model, &in);
    int ready = in.state == FLEET_READY && enter_model(r, r->model);
    int failed = !ready && in.state == FLEET_FAILED && !in.pending;
    if (!ready && !failed && now < r->wait_deadline_ns) {
      /* Asleep again (evicted before this request got in) or unloaded: ask once more. */
      srv_model *m = &s->models[r->model];
      if (in.state != FLEET_LOADING && m->ops->want) m->ops->want(m->ctx);
      continue;
    }
    r->wait_load = 0;
    s->n_wait_load--;
    if (ready) {
      if (!r->conn) {
        srv_req_maybe_free(r);
        continue;
      }
      r->pick_pending = 0; /* the model is chosen: the one it waited for */
      start_prep(r); /* parsed: goes straight to tokenizing with the loaded model */
      continue;
    }
    char msg[700];
    if (failed)
      snprintf(msg, sizeof msg, "model '%s' is not available (%s%s%.500s)", s->reg->models[r->model].name,
               fleet_state_name(in.state), in.error[0] ? ": " : "", in.error);
    else
      snprintf(msg, sizeof msg, "model '%s' did not load within %.1f s (%s); retry later",
               s->reg->models[r->model].name, (double)s->opts.load_timeout_ms / 1000.0,
               fleet_state_name(in.state));
    r->pins++;
    srv_send_error(r, 503, msg, "model", failed ? "model_unavailable" : "model_loading");
    r->pins--;
    srv_req_maybe_free(r);
  }
}
