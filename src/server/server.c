/* The quiver server: routing, auth, the simple endpoints (/health, /metrics, /v1/models),
 * error answers, engine event dispatch and graceful drain. Generation endpoints live in
 * server_gen.c.
 *
 * Engine events reach the loop through one uv_async_t per model (the engine thread's notify
 * hook only calls uv_async_send); the callback drains the whole queue because sends coalesce.
 * Those async handles are unref'd so they never keep uv_run alive: the loop ends once the HTTP
 * listener, connections, signals and drain timer are closed. */
#include "server/server.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/build_info.h"
#include "core/log.h"
#include "fleet/fleet.h"
#include "core/util.h"
#include "server/auth.h"
#include "server/cors.h"
#include "server/json_nul.h"
#include "server/route.h"
#include "server/server_int.h"
#include "server/tls.h"

void server_opts_default(server_opts *o) {
  memset(o, 0, sizeof *o);
  o->host = "127.0.0.1";
  o->port = 8000;
  http_limits_default(&o->limits);
  o->drain_timeout_ms = 30000;
  o->max_stream_backlog_bytes = 4u << 20;
  o->max_request_seqs = 256;
  o->heavy_body_bytes = 64u << 10;
  o->handle_signals = 1;
  o->max_wait_load = 1024;
  o->load_timeout_ms = 120000;
}

/* ---- engine id -> request table ---- */

static size_t bucket_of(uint64_t eid) { return (size_t)((eid * 0x9E3779B97F4A7C15ull) >> 54); }

void srv_table_insert(server *s, int32_t model, srv_sub *sub) {
  srv_sub **b = &s->buckets[(size_t)model * SRV_HASH_BUCKETS + bucket_of(sub->eid)];
  sub->hnext = *b;
  *b = sub;
  sub->in_table = 1;
  sub->req->n_live_subs++;
  s->live_seqs[model] += srv_n_per_prompt(sub->req);
}

void srv_table_remove(server *s, int32_t model, srv_sub *sub) {
  if (!sub->in_table) return;
  srv_sub **b = &s->buckets[(size_t)model * SRV_HASH_BUCKETS + bucket_of(sub->eid)];
  for (; *b; b = &(*b)->hnext)
    if (*b == sub) {
      *b = sub->hnext;
      break;
    }
  sub->in_table = 0;
  sub->req->n_live_subs--;
  s->live_seqs[model] -= srv_n_per_prompt(sub->req);
}

srv_sub *srv_table_find(server *s, int32_t model, uint64_t eid) {
  srv_sub *b = s->buckets[(size_t)model * SRV_HASH_BUCKETS + bucket_of(eid)];
  for (; b; b = b->hnext)
    if (b->eid == eid) return b;
  return NULL;
}

/* ---- requests ---- */

static srv_req *req_new(server *s, http_conn *c) {
  srv_req *r = calloc(1, sizeof *r);
  if (!r) return NULL;
  r->s = s;
  r->conn = c;
  r->model = -1;
  r->tenant = -1;
  r->held_model = -1;
  r->t_start = uv_hrtime();
  r->created = (int64_t)time(NULL);
  r->dialect = &srv_dialect_openai;
  r->next = s->reqs;
  if (s->reqs) s->reqs->prev = r;
  s->reqs = r;
  http_conn_set_ctx(c, r);
  return r;
}

/* Settles an admitted request's token reservation with what it used, and counts it for its
 * tenant. */
static void quota_settle(srv_req *r) {
  if (!r->admitted) return;
  r->admitted = 0;
  int64_t gen = r->usage.completion_tokens > r->live_tokens ? r->usage.completion_tokens
                                                             : r->live_tokens;
  uint64_t now = uv_hrtime();
  tenant_quota_settle(&r->s->quotas[r->tenant], now, r->reserved, r->usage.prompt_tokens + gen);
  metrics_tenant_finish(&r->s->met, r->tenant, r->usage.prompt_tokens, gen,
                        (double)(now - r->t_start) / 1e9);
}

static void req_free(srv_req *r) {
  server *s = r->s;
  quota_settle(r);
  if (r->prev) r->prev->next = r->next;
  else s->reqs = r->next;
  if (r->next) r->next->prev = r->prev;
  srv_gen_free(r);
  oai_request_free(&r->o);
  free(r);
}

void srv_req_maybe_free(srv_req *r) {
  if (!r->conn && !r->in_work && r->n_live_subs == 0 && r->pins == 0) req_free(r);
}

void srv_count(srv_req *r, int status) {
  metrics_tenant_count(&r->s->met, r->tenant, status);
  if (r->utility) metrics_count_utility(&r->s->met, status);
  else metrics_count_request(&r->s->met, r->model, status);
}

static void respond_json(srv_req *r, int status, const char *json, const char *extra) {
  if (!r->conn) return;
  srv_count(r, status);
  http_conn *c = r->conn;
  r->conn = NULL;
  http_conn_set_ctx(c, NULL);
  if (!json) {
    static const char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\","
                              "\"param\":null,\"code\":null}}";
    http_respond(c, 500, "application/json", extra, oom, sizeof oom - 1);
    return;
  }
  size_t len = strlen(json), wlen = 0;
  int oom = 0;
  char *wire = jnul_wire(json, len, &wlen, &oom); /* NUL markers as \u0000 (json_nul.h) */
  if (oom) {
    http_conn_kill(c);
    return;
  }
  http_respond(c, status, "application/json", extra, wire ? wire : json, wire ? wlen : len);
  free(wire);
}

void srv_send_error_hdr(srv_req *r, int status, const char *msg, const char *param,
                        const char *code, const char *extra) {
  if (!r->conn) return;
  char *j = r->dialect->error_json(status, msg, param, code);
  respond_json(r, status, j, extra);
  free(j);
}

void srv_respond_json(srv_req *r, int status, const char *json) { respond_json(r, status, json, ""); }

void srv_send_error(srv_req *r, int status, const char *msg, const char *param,
                    const char *code) {
  srv_send_error_hdr(r, status, msg, param, code,
                     status == 401 ? "WWW-Authenticate: Bearer\r\n" : "");
}

/* ---- simple endpoints ---- */

static void handle_health(srv_req *r) {
  server *s = r->s;
  cJSON *root = cJSON_CreateObject();
  int all_ready = 1;
  cJSON *arr = cJSON_AddArrayToObject(root, "models");
  for (int32_t i = 0; i < s->n_models; i++) {
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "name", s->reg->models[i].name);
    fleet_model_info fi;
    if (s->opts.fleet) fleet_get_info(s->opts.fleet, i, &fi);
    cJSON_AddStringToObject(m, "state",
                            s->opts.fleet ? fleet_state_name(fi.state)
                            : s->models[i].state ? s->models[i].state
                                                 : (s->models[i].ready ? "ready" : "unavailable"));
    if (s->models[i].ready && s->models[i].ops->get_stats) {
      qv_engine_stats st;
      s->models[i].ops->get_stats(s->models[i].ctx, &st);
      cJSON_AddNumberToObject(m, "running", st.n_running);
      cJSON_AddNumberToObject(m, "waiting", st.n_waiting);
      cJSON_AddNumberToObject(m, "kv_blocks_used", st.n_kv_blocks_used);
      cJSON_AddNumberToObject(m, "kv_blocks_total", st.n_kv_blocks);
    }
    /* Under a fleet only the startup models make /health fail; on-demand ones load later. */
    if (s->opts.fleet) all_ready &= s->models[i].ready && (fi.on_demand || fi.state == FLEET_READY);
    else all_ready &= s->models[i].ready != 0;
    cJSON_AddItemToArray(arr, m);
  }
  cJSON_AddStringToObject(root, "status",
                          s->draining ? "draining" : (all_ready ? "ok" : "unavailable"));
  char *j = cJSON_PrintUnformatted(root);
  cJSON_Delete(root);
  respond_json(r, all_ready && !s->draining ? 200 : 503, j, "");
  free(j);
}

/* Appends the fleet's gauges and counters (per model state, loads, wakes, sleeps, evictions,
 * swap seconds, weight bytes; the budget) to the Prometheus text (taking text; NULL on OOM). */
static char *srv_fleet_metrics(server *s, char *text, size_t *len) {
  size_t cap = *len + 4096 + (size_t)s->n_models * 2048;
  char *out = realloc(text, cap);
  if (!out) {
    free(text);
    return NULL;
  }
  size_t n = *len;
  static const char *const names[][3] = {
      {"quiver_model_state", "gauge", "1 for the model's current fleet state, 0 for the others."},
      {"quiver_model_weight_bytes", "gauge", "Bytes the loaded model holds in the memory budget besides its KV."},
      {"quiver_model_loads_total", "counter", "Loads of the model from nothing."},
      {"quiver_model_wakes_total", "counter", "Wakes of the model from sleep."},
      {"quiver_model_sleeps_total", "counter", "Sleeps, evictions and unloads of the model."},
      {"quiver_model_evictions_total", "counter", "Times the model was put to sleep to make room."},
      {"quiver_model_swap_seconds_total", "counter", "Seconds spent loading, waking and putting the model to sleep."},
      {"quiver_model_last_load_seconds", "gauge", "Duration of the model's last load or wake."},
  };
  for (size_t g = 0; g < sizeof names / sizeof *names; g++) {
    n += (size_t)snprintf(out + n, cap - n, "# HELP %s %s\n# TYPE %s %s\n", names[g][0], names[g][2],
                          names[g][0], names[g][1]);
    for (int32_t i = 0; i < s->n_models; i++) {
      fleet_model_info fi;
      fleet_get_info(s->opts.fleet, i, &fi);
      const char *nm = s->reg->models[i].name; /* registry names are validated: no quotes */
      if (g == 0) {
        for (int st = FLEET_REGISTERED; st <= FLEET_FAILED; st++)
          n += (size_t)snprintf(out + n, cap - n, "%s{model=\"%s\",state=\"%s\"} %d\n", names[g][0], nm,
                                fleet_state_name((fleet_state)st), fi.state == (fleet_state)st);
        continue;
      }
      double v = g == 1 ? (double)(fi.depth ? fi.weight_bytes : 0) : g == 2 ? (double)fi.n_loads
                 : g == 3 ? (double)fi.n_wakes : g == 4 ? (double)fi.n_sleeps
                 : g == 5 ? (double)fi.n_evictions : g == 6 ? fi.swap_s_total : fi.last_load_s;
      n += (size_t)snprintf(out + n, cap - n, "%s{model=\"%s\"} %.6g\n", names[g][0], nm, v);
    }
  }
  *len = n < cap ? n : cap - 1;
  return out;
}

static void handle_metrics(srv_req *r) {
  server *s = r->s;
  qv_engine_stats *stats = calloc((size_t)s->n_models, sizeof *stats);
  metrics_model_state *states = calloc((size_t)s->n_models, sizeof *states);
  char *text = NULL;
  size_t len = 0;
  if (stats && states) {
    for (int32_t i = 0; i < s->n_models; i++) {
      states[i].ready = s->models[i].ready;
      if (s->opts.fleet) {
        fleet_model_info fi;
        fleet_get_info(s->opts.fleet, i, &fi);
        states[i].ready = fi.state == FLEET_READY;
      }
      if (s->models[i].ready && s->models[i].ops->get_stats) {
        s->models[i].ops->get_stats(s->models[i].ctx, &stats[i]);
        states[i].stats = &stats[i];
      }
    }
    text = metrics_render(&s->met, states, &len);
    if (text && s->opts.fleet) text = srv_fleet_metrics(s, text, &len);
  }
  free(stats);
  free(states);
  if (!text) {
    srv_send_error(r, 500, "out of memory", NULL, NULL);
    return;
  }
  srv_count(r, 200);
  http_conn *c = r->conn;
  r->conn = NULL;
  http_conn_set_ctx(c, NULL);
  http_respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", "", text, len);
  free(text);
}

/* What this server binary is (core/build_info.h), for fleet inventories and bug reports. */
static void handle_version(srv_req *r) {
  const qv_build_info *b = qv_build_info_get();
  cJSON *root = cJSON_CreateObject();
  cJSON_AddStringToObject(root, "version", b->version);
  cJSON_AddStringToObject(root, "commit", b->commit);
  cJSON_AddStringToObject(root, "build_type", b->build_type);
  cJSON_AddStringToObject(root, "compiler", b->compiler);
  cJSON_AddStringToObject(root, "c_flags", b->c_flags);
  cJSON_AddBoolToObject(root, "sanitizers", !strcmp(b->sanitize, "ON"));
  cJSON *be = cJSON_AddArrayToObject(root, "backends");
  char list[64];
  snprintf(list, sizeof list, "%s", b->backends);
  for (char *save = NULL, *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save))
    cJSON_AddItemToArray(be, cJSON_CreateString(t));
  cJSON_AddBoolToObject(root, "tls", r->s->tls != NULL);
  char *j = cJSON_PrintUnformatted(root);
  cJSON_Delete(root);
  respond_json(r, 200, j, "");
  free(j);
}

/* Adds each entry's fleet state ("ready", "sleeping", ...: of its root model) to a /v1/models
 * answer (taking j; NULL on OOM). */
static char *models_add_state(server *s, char *j) {
  cJSON *root = cJSON_Parse(j);
  free(j);
  if (!root) return NULL;
  cJSON *data = cJSON_GetObjectItem(root, "data");
  cJSON *it = data ? data->child : root;
  for (; it; it = data ? it->next : NULL) {
    const cJSON *rt = cJSON_GetObjectItem(it, "root");
    int32_t idx[REG_MAX_ROUTE_LEN];
    if (cJSON_IsString(rt) && registry_resolve(s->reg, rt->valuestring, idx, REG_MAX_ROUTE_LEN) > 0) {
      fleet_model_info fi;
      fleet_get_info(s->opts.fleet, idx[0], &fi);
      cJSON_AddStringToObject(it, "state", fleet_state_name(fi.state));
    }
  }
  char *out = cJSON_PrintUnformatted(root);
  cJSON_Delete(root);
  return out;
}

/* Every name a client may use: models, aliases, routes (for a tenant: those it may use; one it
 * may not is "not found", as OpenAI answers). The root is the model served. */
static void handle_models(srv_req *r, const char *one) {
  server *s = r->s;
  const registry *g = s->reg;
  int32_t cap = g->n_models + g->n_aliases + g->n_routes;
  const char **names = calloc((size_t)cap + 1, sizeof *names);
  const char **roots = calloc((size_t)cap + 1, sizeof *roots);
  int32_t *lens = calloc((size_t)cap + 1, sizeof *lens);
  int32_t n = 0;
  if (names && roots && lens) {
    for (int32_t i = 0; i < g->n_models; i++) {
      if (g->models[i].removed) continue;
      names[n] = g->models[i].name;
      roots[n] = g->models[i].name;
      lens[n++] = s->models[i].max_model_len;
    }
    for (int32_t i = 0; i < g->n_aliases; i++) {
      int32_t idx[REG_MAX_ROUTE_LEN];
      if (registry_resolve(g, g->aliases[i].name, idx, REG_MAX_ROUTE_LEN) < 1) continue;
      names[n] = g->aliases[i].name;
      roots[n] = g->models[idx[0]].name;
      lens[n++] = s->models[idx[0]].max_model_len;
    }
    for (int32_t i = 0; i < g->n_routes; i++) {
      names[n] = g->routes[i].name;
      roots[n] = g->models[g->routes[i].models[0]].name;
      lens[n++] = s->models[g->routes[i].models[0]].max_model_len;
    }
    int32_t kept = 0;
    for (int32_t i = 0; i < n; i++) {
      if (!tenant_allows_model(g->tenants, r->tenant, g, names[i])) continue;
      names[kept] = names[i];
      roots[kept] = roots[i];
      lens[kept++] = lens[i];
    }
    n = kept;
  }
  char *j = NULL;
  int found = !one;
  if (one) {
    for (int32_t i = 0; i < n; i++)
      if (!strcmp(names[i], one)) {
        j = oai_model_json(names[i], roots[i], lens[i], s->started);
        found = 1;
        break;
      }
  } else {
    j = oai_models_json(names, roots, lens, n, s->started);
  }
  free(names);
  free(roots);
  free(lens);
  if (!found) {
    char msg[300];
    snprintf(msg, sizeof msg, "The model '%.200s' does not exist.", one);
    srv_send_error(r, 404, msg, "model", "model_not_found");
    return;
  }
  if (j && s->opts.fleet) j = models_add_state(s, j);
  respond_json(r, 200, j, "");
  free(j);
}

/* ---- routing ---- */

/* GET /v1/responses/{id}: the stored response; DELETE: forgets it. */
static void handle_stored_response(srv_req *r, const char *method, const char *id) {
  server *s = r->s;
  char msg[200];
  snprintf(msg, sizeof msg, "Response with id '%.100s' not found.", id);
  if (!strcmp(method, "DELETE")) {
    if (resp_store_delete(s->responses, id)) {
      srv_send_error(r, 404, msg, "response_id", "not_found");
      return;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", id);
    cJSON_AddStringToObject(o, "object", "response");
    cJSON_AddTrueToObject(o, "deleted");
    char *j = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    respond_json(r, 200, j, "");
    free(j);
    return;
  }
  char *json = NULL;
  int rc = resp_store_get(s->responses, id, (int64_t)time(NULL), &json, NULL);
  if (rc == QV_ENOTFOUND) srv_send_error(r, 404, msg, "response_id", "not_found");
  else if (rc) srv_send_error(r, 500, "out of memory", NULL, NULL);
  else respond_json(r, 200, json, "");
  free(json);
}

/* ---- routing ---- */

typedef struct route_entry {
  const char *path;
  const char *method; /* allowed method */
  int kind;           /* 0 simple endpoint, else oai_kind */
  const srv_dialect *dialect; /* NULL: OpenAI */
} route_entry;

static const route_entry routes[] = {
    {"/v1/completions", "POST", OAI_COMPLETION, NULL},
    {"/v1/chat/completions", "POST", OAI_CHAT, NULL},
    {"/v1/messages", "POST", OAI_CHAT, &srv_dialect_anthropic},
    {"/v1/messages/count_tokens", "POST", OAI_TOKENIZE, &srv_dialect_anthropic},
    {"/v1/responses", "POST", OAI_CHAT, &srv_dialect_responses},
    {"/tokenize", "POST", OAI_TOKENIZE, NULL},
    {"/v1/tokenize", "POST", OAI_TOKENIZE, NULL},
    {"/detokenize", "POST", OAI_DETOKENIZE, NULL},
    {"/v1/detokenize", "POST", OAI_DETOKENIZE, NULL},
    {"/v1/models", "GET", 0, NULL},
    {"/health", "GET", 0, NULL},
    {"/metrics", "GET", 0, NULL},
    {"/version", "GET", 0, NULL},
};

/* CORS (server/cors.h): answers a preflight and returns 1, or adds the allow headers to the
 * coming answer and returns 0. Preflights carry no credentials, so this runs before auth. */
static int cors_hook(server *s, http_conn *c, const http_request *req) {
  const char *origin = http_request_header(req, "origin");
  if (!origin) return 0;
  char h[1024];
  const char *want = http_request_header(req, "access-control-request-method");
  if (!strcmp(req->method_str, "OPTIONS") && want) {
    cors_preflight(s->opts.cors, origin, want,
                   http_request_header(req, "access-control-request-headers"), h, sizeof h);
    metrics_count_utility(&s->met, 204);
    http_respond(c, 204, "text/plain", h, "", 0);
    return 1;
  }
  cors_headers(s->opts.cors, origin, h, sizeof h);
  if (h[0]) http_conn_add_headers(c, h);
  return 0;
}

/* Endpoints that generate nothing are counted apart in the metrics. */
static int is_utility(const route_entry *hit) {
  return !hit || hit->kind == 0 || hit->kind == OAI_TOKENIZE || hit->kind == OAI_DETOKENIZE;
}

/* The route of path; *model_id / *response_id point into path for the prefix routes. */
static const route_entry *route_find(const char *path, const char **model_id,
                                     const char **response_id) {
  static const route_entry model_route = {"/v1/models/", "GET", 0, NULL};
  static const route_entry response_route = {"/v1/responses/", "GET", 0, NULL};
  *model_id = NULL;
  *response_id = NULL;
  for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
    if (!strcmp(path, routes[i].path)) return &routes[i];
  if (!strncmp(path, "/v1/models/", 11) && path[11]) {
    *model_id = path + 11;
    return &model_route;
  }
  if (!strncmp(path, "/v1/responses/", 14) && path[14] && !strchr(path + 14, '/')) {
    *response_id = path + 14;
    return &response_route;
  }
  return NULL;
}

/* The dialect whose error shape a path gets before (or without) a route: Anthropic's for
 * /v1/messages and everything under it (an unknown /v1/messages/x is still an Anthropic client),
 * OpenAI's otherwise. */
static const srv_dialect *path_dialect(const char *path) {
  if (path && !strncmp(path, "/v1/messages", 12) && (path[12] == '\0' || path[12] == '/'))
    return &srv_dialect_anthropic;
  return &srv_dialect_openai;
}

/* http_handler.error_body: errors the HTTP layer answers itself (413, 408, 431, malformed...)
 * in the path's dialect; NULL keeps the HTTP layer's OpenAI-shaped body. */
static char *on_error_body(void *ud, const char *path, int status, const char *message) {
  (void)ud;
  const srv_dialect *d = path_dialect(path);
  return d == &srv_dialect_openai ? NULL : d->error_json(status, message, NULL, NULL);
}

typedef struct route_match {
  const route_entry *hit;
  const char *model_id, *response_id;
  const srv_dialect *dialect;
  int32_t tenant;             /* the key's tenant, or -1 */
} route_match;

/* 1 when the request carries a valid key; *tenant is its tenant (-1: an unrestricted key, or
 * none). Both the bearer and the x-api-key headers are checked, every key compared. */
static int check_key(server *s, const http_request *req, int32_t *tenant) {
  const registry *g = s->reg;
  const char *auth = http_request_header(req, "authorization");
  const char *xkey = http_request_header(req, "x-api-key");
  int32_t tb = -1, tx = tenant_find_key(g->tenants, xkey);
  if (auth && !strncasecmp(auth, "Bearer ", 7)) tb = tenant_find_key(g->tenants, auth + 7);
  *tenant = tb >= 0 ? tb : tx;
  if (*tenant >= 0) return 1;
  if (g->n_api_keys <= 0) return 0;
  const char *const *keys = (const char *const *)g->api_keys;
  return auth_check(keys, g->n_api_keys, auth) | auth_check_key(keys, g->n_api_keys, xkey);
}

/* Route, method and API key: checked when the headers are complete (before any body byte is
 * buffered) and again for the complete request. Returns 0, or the error status with *json
 * (malloc'd, in the route's dialect) and extra headers filled. */
static int precheck(server *s, const http_request *req, route_match *m, char **json,
                    char *extra, size_t extra_cap) {
  const char *path = req->path;
  const route_entry *hit = route_find(path, &m->model_id, &m->response_id);
  m->hit = hit;
  m->tenant = -1;
  m->dialect = hit && hit->dialect ? hit->dialect : path_dialect(path);
  *json = NULL;
  extra[0] = '\0';
  if (!hit) {
    char msg[300];
    snprintf(msg, sizeof msg, "no route for %s %.200s", req->method_str, path);
    *json = m->dialect->error_json(404, msg, NULL, "not_found");
    return 404;
  }
  int is_get = !strcmp(hit->method, "GET");
  int method_ok = !strcmp(req->method_str, hit->method) ||
                  (is_get && !strcmp(req->method_str, "HEAD")) ||
                  (m->response_id && !strcmp(req->method_str, "DELETE"));
  if (!method_ok) {
    char msg[128];
    snprintf(msg, sizeof msg, "method %s not allowed here (use %s)", req->method_str,
             hit->method);
    snprintf(extra, extra_cap, "Allow: %s\r\n",
             m->response_id ? "GET, HEAD, DELETE" : is_get ? "GET, HEAD" : hit->method);
    *json = m->dialect->error_json(405, msg, NULL, "method_not_allowed");
    return 405;
  }
  int keyed = s->reg->n_api_keys > 0 || tenant_count(s->reg->tenants) > 0;
  int key_ok = keyed && check_key(s, req, &m->tenant);
  if (keyed && !registry_is_open_path(s->reg, path) && !key_ok) {
    *json = m->dialect->error_json(
        401, "invalid or missing API key (send Authorization: Bearer <key> or x-api-key)", NULL,
        "invalid_api_key");
    snprintf(extra, extra_cap, "WWW-Authenticate: Bearer\r\n");
    return 401;
  }
  if (!registry_is_open_path(s->reg, path) &&
      !tenant_allows_endpoint(s->reg->tenants, m->tenant, path)) {
    char msg[300];
    snprintf(msg, sizeof msg, "this API key may not call %.200s", path);
    *json = m->dialect->error_json(403, msg, NULL, "endpoint_not_allowed");
    return 403;
  }
  /* A tenant out of requests is refused here, before its body is read or tokenized (the token
   * quota needs the prompt's count and is checked at submission, server_gen.c). */
  if ((hit->kind == OAI_CHAT || hit->kind == OAI_COMPLETION) && m->tenant >= 0 && !s->draining) {
    int64_t retry = tenant_quota_peek_requests(&s->quotas[m->tenant], uv_hrtime());
    if (retry > 0) {
      char msg[300];
      tenant_limit_message(&s->reg->tenants->t[m->tenant], TENANT_ADMIT_REQUESTS, 0, retry, msg,
                           sizeof msg);
      *json = m->dialect->error_json(429, msg, NULL, "rate_limit_exceeded");
      snprintf(extra, extra_cap, "Retry-After: %lld\r\n", (long long)retry);
      metrics_tenant_limited(&s->met, m->tenant, 0);
      return 429;
    }
  }
  if (hit->kind != 0 && s->draining) {
    *json = m->dialect->error_json(503, "server is shutting down", NULL, "shutting_down");
    return 503;
  }
  return 0;
}

static int on_head(void *ud, const http_request *req, http_early *out) {
  server *s = ud;
  /* A CORS preflight is answered by on_request (cors_hook), before route, method and key. */
  if (s->opts.cors && !strcmp(req->method_str, "OPTIONS") && http_request_header(req, "origin") &&
      http_request_header(req, "access-control-request-method"))
    return 0;
  if (s->opts.fleet && srv_admin_is_path(req->path)) return 0; /* admin.c checks its own key */
  route_match m;
  int st = precheck(s, req, &m, &out->body, out->extra, sizeof out->extra);
  if (!st) return 0;
  if (is_utility(m.hit)) metrics_count_utility(&s->met, st);
  else metrics_count_request(&s->met, -1, st);
  metrics_tenant_count(&s->met, m.tenant, st);
  if (s->opts.cors) { /* so that a browser can read the error */
    size_t n = strlen(out->extra);
    cors_headers(s->opts.cors, http_request_header(req, "origin"), out->extra + n,
                 sizeof out->extra - n);
  }
  return st;
}

static void on_request(void *ud, http_conn *c, const http_request *req) {
  server *s = ud;
  if (s->opts.cors && cors_hook(s, c, req)) return;
  srv_req *r = req_new(s, c);
  if (!r) {
    static const char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\","
                              "\"param\":null,\"code\":null}}";
    http_respond(c, 500, "application/json", "", oom, sizeof oom - 1);
    return;
  }
  if (s->opts.fleet && srv_admin_is_path(req->path)) {
    r->utility = 1;
    srv_admin_handle(r, req);
    srv_req_maybe_free(r);
    return;
  }
  route_match m;
  char *j = NULL, extra[160];
  int st = precheck(s, req, &m, &j, extra, sizeof extra);
  r->dialect = m.dialect;
  r->utility = is_utility(m.hit);
  r->tenant = m.tenant;
  /* Weighted routes draw from the request id when the client sends one (a retry lands on the
   * same model), else from the server's sequence (reproducible for a given arrival order). */
  const char *rid = http_request_header(req, "x-request-id");
  r->draw = rid ? route_draw_of_id(rid) : qv_mix64(++s->n_draws);
  if (st) {
    respond_json(r, st, j, extra);
    free(j);
    srv_req_maybe_free(r);
    return;
  }
  const route_entry *hit = m.hit;
  if (hit->kind == 0) {
    if (m.response_id) handle_stored_response(r, req->method_str, m.response_id);
    else if (!strcmp(hit->path, "/health")) handle_health(r);
    else if (!strcmp(hit->path, "/metrics")) handle_metrics(r);
    else if (!strcmp(hit->path, "/version")) handle_version(r);
    else handle_models(r, m.model_id);
    srv_req_maybe_free(r);
    return;
  }
  /* Parsing, model resolution and tokenizing all happen on the thread pool (server_gen.c);
   * the body is copied because the connection may drop (and free it) meanwhile. */
  srv_gen_start(r, (oai_kind)hit->kind, req->body, req->body_len);
}

static void on_abort(void *ud, http_conn *c, void *ctx) {
  srv_req *r = ctx;
  if (!r) return;
  r->conn = NULL;
  srv_gen_on_disconnect(r);
  srv_req_maybe_free(r);
}

/* ---- engine events ---- */

static void notify_fn(void *arg) { uv_async_send(&((srv_notify *)arg)->async); }

static void on_notify(uv_async_t *a) {
  srv_notify *n = a->data;
  server *s = n->s;
  srv_model *m = &s->models[n->model];
  qv_event *evs[64];
  int k;
  while ((k = m->ops->poll(m->ctx, evs, 64)) > 0) {
    for (int i = 0; i < k; i++) {
      srv_gen_on_event(s, n->model, evs[i]);
      m->ops->event_free(evs[i]);
    }
  }
}

/* ---- drain and shutdown ---- */

static void close_all(server *s) {
  if (s->closed) return;
  s->closed = 1;
  http_server_close(s->http);
  s->http = NULL;
  /* After the connections: requests of jobs still queued see no connection and are freed. */
  workq_destroy(s->heavy);
  s->heavy = NULL;
  uv_close((uv_handle_t *)&s->stop_async, NULL);
  uv_close((uv_handle_t *)&s->drain_timer, NULL);
  if (s->opts.fleet) uv_close((uv_handle_t *)&s->fleet_timer, NULL);
  if (s->opts.handle_signals) {
    uv_close((uv_handle_t *)&s->sig_int, NULL);
    uv_close((uv_handle_t *)&s->sig_term, NULL);
  }
}

static void on_drain_timer(uv_timer_t *t) {
  server *s = t->data;
  int busy = http_server_n_busy(s->http);
  if (busy == 0 || uv_hrtime() >= s->drain_deadline_ns) {
    if (busy) QV_LOGW("serve: drain deadline passed with %d requests in flight; aborting them", busy);
    else QV_LOGI("serve: drained");
    close_all(s);
  }
}

static void begin_drain(server *s) {
  if (s->draining || s->closed) return;
  s->draining = 1;
  QV_LOGI("serve: draining (up to %.1f s)", (double)s->opts.drain_timeout_ms / 1000.0);
  s->drain_deadline_ns = uv_hrtime() + s->opts.drain_timeout_ms * 1000000ull;
  http_server_drain(s->http);
  uv_timer_start(&s->drain_timer, on_drain_timer, 0, 20);
}

static void on_stop_async(uv_async_t *a) { begin_drain(a->data); }

static void on_fleet_async(uv_async_t *a) { srv_gen_check_waiting(a->data); }
static void on_fleet_timer(uv_timer_t *t) { srv_gen_check_waiting(t->data); }
/* The fleet's loader thread: a model's state changed. */
static void fleet_changed(void *arg, int32_t idx) {
  (void)idx;
  uv_async_send(&((server *)arg)->fleet_async);
}

void server_fleet_hook(server *s, void (**fn)(void *arg, int32_t idx), void **arg) {
  *fn = fleet_changed;
  *arg = s;
}
/* The first SIGINT/SIGTERM drains; a second one aborts what is in flight (each open stream
 * gets an error event and ends, other requests a 503), lets those last bytes go out for up to
 * a second, and the process exits non-zero (server_aborted). */
static void on_signal(uv_signal_t *h, int signum) {
  server *s = h->data;
  if (s->draining) {
    if (s->aborted) return;
    QV_LOGW("serve: second signal: aborting in-flight requests");
    s->aborted = 1;
    srv_gen_abort_all(s);
    uint64_t soon = uv_hrtime() + 1000000000ull;
    if (soon < s->drain_deadline_ns) s->drain_deadline_ns = soon;
    return;
  }
  begin_drain(s);
}

int server_aborted(const server *s) { return s->aborted; }

void server_shutdown(server *s) { uv_async_send(&s->stop_async); }

static void init_notify(server *s, int32_t i) {
  srv_notify *n = &s->notify[i];
  n->s = s;
  n->model = i;
  uv_async_init(s->loop, &n->async, on_notify);
  n->async.data = n;
  uv_unref((uv_handle_t *)&n->async);
  if (s->models[i].ready && s->models[i].ops->set_notify)
    s->models[i].ops->set_notify(s->models[i].ctx, notify_fn, n);
}

int server_model_added(server *s, int32_t idx, qv_error *err) {
  if (idx >= 0 && idx < s->n_models) return 0; /* a slot taken again: same name, tables kept */
  if (idx != s->n_models || idx >= REG_MAX_MODELS || idx >= s->reg->n_models)
    return qv_error_set(err, QV_ESTATE, "model %d is not the registry's next model", idx);
  if (metrics_add_model(&s->met, s->reg->models[idx].name))
    return qv_error_set(err, QV_ENOMEM, "out of memory");
  init_notify(s, idx);
  s->n_models = idx + 1;
  return 0;
}

int server_create(uv_loop_t *loop, const registry *reg, srv_model *models,
                  const server_opts *opts, server **out, qv_error *err) {
  server *s = calloc(1, sizeof *s);
  if (!s) return qv_error_set(err, QV_ENOMEM, "out of memory");
  s->loop = loop;
  s->reg = reg;
  s->models = models;
  s->n_models = reg->n_models;
  s->opts = *opts;
  s->started = (int64_t)time(NULL);
  resp_store_limits rl;
  resp_store_limits_default(&rl);
  if (opts->responses_max_count > 0) rl.max_count = opts->responses_max_count;
  if (opts->responses_max_bytes > 0) rl.max_bytes = opts->responses_max_bytes;
  if (opts->responses_ttl_s != 0) rl.ttl_s = opts->responses_ttl_s;
  if (resp_store_create(&rl, &s->responses)) {
    free(s);
    return qv_error_set(err, QV_ENOMEM, "out of memory");
  }
  const char *names[REG_MAX_MODELS];
  for (int32_t i = 0; i < s->n_models; i++) names[i] = reg->models[i].name;
  int32_t n_tenants = tenant_count(reg->tenants);
  const char *tnames[TENANT_MAX];
  s->quotas = calloc((size_t)n_tenants + 1, sizeof *s->quotas);
  s->live_seqs = calloc(REG_MAX_MODELS, sizeof *s->live_seqs); /* room for models added later */
  for (int32_t i = 0; i < n_tenants && s->quotas; i++) {
    tenant_quota_init(&s->quotas[i], &reg->tenants->t[i], uv_hrtime());
    tnames[i] = reg->tenants->t[i].name;
  }
  /* Room for models added at run time (server_model_added): these tables never move. */
  s->notify = calloc(REG_MAX_MODELS, sizeof *s->notify);
  s->buckets = calloc((size_t)REG_MAX_MODELS * SRV_HASH_BUCKETS, sizeof *s->buckets);
  int n_heavy = opts->heavy_threads > 0 ? opts->heavy_threads : (int)uv_available_parallelism() / 2;
  if (n_heavy < 1) n_heavy = 1;
  if (!s->notify || !s->buckets || !s->quotas || !s->live_seqs ||
      metrics_init(&s->met, names, s->n_models) ||
      metrics_init_tenants(&s->met, tnames, n_tenants) || workq_create(loop, n_heavy, &s->heavy)) {
    metrics_deinit(&s->met);
    free(s->quotas);
    free(s->live_seqs);
    workq_destroy(s->heavy); /* its handle closes when the caller runs the loop */
    resp_store_destroy(s->responses);
    free(s->notify);
    free(s->buckets);
    free(s);
    return qv_error_set(err, QV_ENOMEM, "out of memory");
  }
  http_handler h = {.ud = s, .on_head = on_head, .on_request = on_request, .on_abort = on_abort,
                    .error_body = on_error_body};
  int rc = opts->tls ? tls_ctx_create(opts->tls, &s->tls, err) : 0;
  if (!rc)
    rc = http_server_create(loop, opts->host ? opts->host : "127.0.0.1", opts->port,
                            &opts->limits, &h, &s->http, err);
  if (!rc && s->tls) http_server_use_tls(s->http, s->tls);
  if (rc) {
    tls_ctx_destroy(s->tls);
    workq_destroy(s->heavy);
    metrics_deinit(&s->met);
    resp_store_destroy(s->responses);
    free(s->quotas);
    free(s->live_seqs);
    free(s->notify);
    free(s->buckets);
    free(s);
    return rc;
  }
  for (int32_t i = 0; i < s->n_models; i++) init_notify(s, i);
  uv_async_init(loop, &s->stop_async, on_stop_async);
  s->stop_async.data = s;
  if (opts->fleet) {
    uv_async_init(loop, &s->fleet_async, on_fleet_async);
    s->fleet_async.data = s;
    uv_unref((uv_handle_t *)&s->fleet_async);
    uv_timer_init(loop, &s->fleet_timer);
    s->fleet_timer.data = s;
    uv_timer_start(&s->fleet_timer, on_fleet_timer, 100, 100);
    uv_unref((uv_handle_t *)&s->fleet_timer);
  }
  uv_timer_init(loop, &s->drain_timer);
  s->drain_timer.data = s;
  if (opts->handle_signals) {
    uv_signal_init(loop, &s->sig_int);
    uv_signal_init(loop, &s->sig_term);
    s->sig_int.data = s;
    s->sig_term.data = s;
    uv_signal_start(&s->sig_int, on_signal, SIGINT);
    uv_signal_start(&s->sig_term, on_signal, SIGTERM);
  }
  *out = s;
  return 0;
}

int server_port(const server *s) { return s->http ? http_server_port(s->http) : 0; }

static void noop_close(uv_handle_t *h) {}

void server_destroy(server *s) {
  if (!s) return;
  /* The engines are gone by now (their owners destroy them after uv_run returns), so no
   * notify can race with closing the async handles. */
  close_all(s);
  for (int32_t i = 0; i < s->n_models; i++) uv_close((uv_handle_t *)&s->notify[i].async, noop_close);
  if (s->opts.fleet) uv_close((uv_handle_t *)&s->fleet_async, noop_close);
  uv_run(s->loop, UV_RUN_DEFAULT);
  while (s->reqs) {
    srv_req *r = s->reqs;
    for (int32_t i = 0; i < r->n_subs; i++)
      if (r->subs[i].in_table) srv_table_remove(s, r->model, &r->subs[i]);
    r->conn = NULL;
    req_free(r);
  }
  metrics_deinit(&s->met);
  tls_ctx_destroy(s->tls);
  resp_store_destroy(s->responses);
  for (int32_t i = 0; i < s->n_ignored_logged; i++) free(s->ignored_logged[i]);
  free(s->ignored_logged);
  free(s->quotas);
  free(s->live_seqs);
  free(s->notify);
  free(s->buckets);
  free(s);
}
