/* The admin API: the fleet's models managed at run time, behind admin keys that are never user
 * keys (registry_finalize refuses a key that is both).
 *
 *   GET    /admin/v1/models                 every model: state, memory, load times, counters
 *   POST   /admin/v1/models                 add a model: {"name", "path", per-model config keys}
 *                                           (201; 400 bad body, 409 name taken, 507 full)
 *   GET    /admin/v1/models/{name}          one model
 *   POST   /admin/v1/models/{name}/load     load or wake (also: /wake)
 *   POST   /admin/v1/models/{name}/sleep    {"level": 1 | 2} (default 1)
 *   POST   /admin/v1/models/{name}/unload   drain its requests, then unload
 *   DELETE /admin/v1/models/{name}          unload; a model added at run time is also removed
 *                                           (its name is free; adding it again reuses its slot)
 *   POST   /admin/v1/models/{name}/pin      never evicted for room (/unpin undoes it)
 *
 * Actions are queued to the fleet's loader thread and answered at once with 202 and the state
 * at that moment; GET shows when they are done. Loop thread only. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>

#include "fleet/budget.h"
#include "fleet/fleet.h"
#include "server/auth.h"
#include "server/server_int.h"

int srv_admin_is_path(const char *path) { return !strncmp(path, "/admin/", 7) || !strcmp(path, "/admin"); }

static cJSON *model_json(server *s, int32_t i) {
  fleet_model_info fi;
  fleet_get_info(s->opts.fleet, i, &fi);
  const reg_model *rm = &s->reg->models[i];
  cJSON *m = cJSON_CreateObject();
  cJSON_AddStringToObject(m, "name", rm->name);
  cJSON_AddStringToObject(m, "path", rm->path);
  cJSON_AddStringToObject(m, "state", fleet_state_name(fi.state));
  if (fi.state == FLEET_SLEEPING) cJSON_AddNumberToObject(m, "level", fi.level);
  cJSON_AddStringToObject(m, "load", fi.on_demand ? "on_demand" : "startup");
  cJSON_AddBoolToObject(m, "pinned", fi.pin);
  cJSON_AddNumberToObject(m, "keep_alive", rm->keep_alive_s);
  cJSON_AddNumberToObject(m, "weight_bytes", (double)(fi.depth ? fi.weight_bytes : 0));
  qv_engine_stats st = {0};
  if (fi.depth == 2 && s->models[i].ops->get_stats) s->models[i].ops->get_stats(s->models[i].ctx, &st);
  cJSON_AddNumberToObject(m, "kv_blocks", st.n_kv_blocks);
  cJSON_AddNumberToObject(m, "kv_blocks_used", st.n_kv_blocks_used);
  cJSON_AddNumberToObject(m, "running", st.n_running);
  cJSON_AddNumberToObject(m, "waiting", st.n_waiting);
  cJSON_AddNumberToObject(m, "last_load_seconds", fi.last_load_s);
  cJSON_AddNumberToObject(m, "last_sleep_seconds", fi.last_sleep_s);
  cJSON_AddNumberToObject(m, "loads", (double)fi.n_loads);
  cJSON_AddNumberToObject(m, "wakes", (double)fi.n_wakes);
  cJSON_AddNumberToObject(m, "sleeps", (double)fi.n_sleeps);
  cJSON_AddNumberToObject(m, "evictions", (double)fi.n_evictions);
  cJSON_AddNumberToObject(m, "swap_seconds_total", fi.swap_s_total);
  if (fi.error[0]) cJSON_AddStringToObject(m, "error", fi.error);
  return m;
}

static void answer(srv_req *r, int status, cJSON *root) {
  char *j = root ? cJSON_PrintUnformatted(root) : NULL;
  cJSON_Delete(root);
  srv_respond_json(r, status, j);
  cJSON_free(j);
}

static void list_models(srv_req *r) {
  server *s = r->s;
  cJSON *root = cJSON_CreateObject();
  cJSON *arr = cJSON_AddArrayToObject(root, "models");
  for (int32_t i = 0; i < s->n_models; i++)
    if (!s->reg->models[i].removed) cJSON_AddItemToArray(arr, model_json(s, i));
  if (s->opts.budget) {
    qv_budget_stats bs;
    qv_budget_get_stats(s->opts.budget, &bs);
    cJSON *b = cJSON_AddObjectToObject(root, "memory_budget");
    cJSON_AddNumberToObject(b, "total_bytes", (double)bs.total_bytes);
    cJSON_AddNumberToObject(b, "weight_bytes", (double)bs.reserved_bytes);
    cJSON_AddNumberToObject(b, "kv_bytes", (double)bs.kv_bytes);
    cJSON_AddNumberToObject(b, "free_bytes", (double)(bs.total_bytes - bs.reserved_bytes - bs.kv_bytes));
  }
  answer(r, 200, root);
}

/* "level" of a sleep body: 1 (default) or 2; 0 when invalid. */
static int sleep_level(const http_request *req) {
  if (!req->body || !req->body_len) return 1;
  cJSON *j = cJSON_ParseWithLength(req->body, req->body_len);
  if (!j) return 0;
  const cJSON *lv = cJSON_GetObjectItem(j, "level");
  int level = !lv ? 1 : cJSON_IsNumber(lv) && (lv->valuedouble == 1 || lv->valuedouble == 2) ? (int)lv->valuedouble : 0;
  cJSON_Delete(j);
  return level;
}

_Static_assert(FLEET_MAX_MODELS >= REG_MAX_MODELS, "the fleet holds every registry model");

/* POST /admin/v1/models: registry, server tables, then the fleet (which loads it unless
 * "load": "on_demand"); a bad path shows as state failed with the loader's error. */
static void add_model(srv_req *r, const http_request *req) {
  server *s = r->s;
  if (!s->opts.add_model || !s->opts.fleet) {
    srv_send_error(r, 405, "this server cannot add models at run time", NULL, "method_not_allowed");
    return;
  }
  int32_t idx = -1;
  qv_error err = {0};
  int rc = s->opts.add_model(s->opts.add_model_arg, req->body ? req->body : "", req->body ? req->body_len : 0,
                             &idx, &err);
  if (!rc) rc = server_model_added(s, idx, &err);
  if (rc) {
    int status = rc == QV_ESTATE || rc == QV_EBUSY ? 409 : rc == QV_ELIMIT ? 507 : rc == QV_ENOMEM ? 500 : 400;
    srv_send_error(r, status, err.msg[0] ? err.msg : qv_strerror(rc), NULL,
                   status == 409 ? "model_exists" : status == 507 ? "too_many_models" : NULL);
    return;
  }
  const reg_model *rm = &s->reg->models[idx];
  fleet_model_cfg cfg = {.name = rm->name, .on_demand = rm->on_demand, .pin = rm->pin,
                         .keep_alive_s = rm->keep_alive_s};
  if (idx < fleet_n_models(s->opts.fleet)) fleet_readd(s->opts.fleet, idx, &cfg, &err); /* idle: checked */
  else fleet_add(s->opts.fleet, &cfg, &err); /* cannot be full: FLEET_MAX_MODELS >= REG_MAX_MODELS */
  answer(r, 201, model_json(s, idx));
}

void srv_admin_handle(srv_req *r, const http_request *req) {
  server *s = r->s;
  const registry *g = s->reg;
  if (g->n_admin_keys == 0) {
    srv_send_error(r, 404, "the admin API is off (start quiver serve with --admin-key)", NULL, "not_found");
    return;
  }
  const char *authz = http_request_header(req, "authorization");
  if (!auth_check((const char *const *)g->admin_keys, g->n_admin_keys, authz)) {
    int user = g->n_api_keys > 0 && auth_check((const char *const *)g->api_keys, g->n_api_keys, authz);
    if (user) srv_send_error(r, 403, "this key may not use the admin API", NULL, "permission_denied");
    else srv_send_error(r, 401, "invalid or missing admin key (Authorization: Bearer <admin key>)", NULL, "invalid_api_key");
    return;
  }
  const char *p = req->path, *method = req->method_str;
  int get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
  if (!strcmp(p, "/admin/v1/models")) {
    if (get) list_models(r);
    else if (!strcmp(method, "POST")) add_model(r, req);
    else srv_send_error(r, 405, "use GET or POST", NULL, "method_not_allowed");
    return;
  }
  if (strncmp(p, "/admin/v1/models/", 17)) {
    srv_send_error(r, 404, "no such admin path (see /admin/v1/models)", NULL, "not_found");
    return;
  }
  char name[256];
  const char *rest = p + 17, *slash = strchr(rest, '/');
  size_t len = slash ? (size_t)(slash - rest) : strlen(rest);
  if (len == 0 || len >= sizeof name) {
    srv_send_error(r, 404, "no such model", "model", "model_not_found");
    return;
  }
  memcpy(name, rest, len);
  name[len] = 0;
  int32_t idx = fleet_find(s->opts.fleet, name);
  if (idx < 0 || s->reg->models[idx].removed) {
    char msg[320];
    snprintf(msg, sizeof msg, "The model '%.200s' does not exist.", name);
    srv_send_error(r, 404, msg, "model", "model_not_found");
    return;
  }
  const char *action = slash ? slash + 1 : "";
  if (!*action) {
    if (get) answer(r, 200, model_json(s, idx));
    else if (!strcmp(method, "DELETE")) {
      /* An added model is removed: no new request resolves it, its name is free at once, and
       * its slot is taken again when the name is added again (once its unload is done). A
       * model of the configuration stays registered (routes and aliases may point at it). */
      fleet_unload(s->opts.fleet, idx);
      cJSON *m = model_json(s, idx);
      /* The registry is the caller's writable one (opts.add_model writes it too; loop thread). */
      if (s->reg->models[idx].added) ((reg_model *)&s->reg->models[idx])->removed = 1;
      cJSON_AddBoolToObject(m, "removed", s->reg->models[idx].removed);
      answer(r, 202, m);
    } else srv_send_error(r, 405, "use GET or DELETE", NULL, "method_not_allowed");
    return;
  }
  if (strcmp(method, "POST")) {
    srv_send_error(r, 405, "admin actions use POST", NULL, "method_not_allowed");
    return;
  }
  fleet *f = s->opts.fleet;
  if (!strcmp(action, "load") || !strcmp(action, "wake")) fleet_load(f, idx);
  else if (!strcmp(action, "unload")) fleet_unload(f, idx);
  else if (!strcmp(action, "pin") || !strcmp(action, "unpin")) fleet_set_pin(f, idx, !strcmp(action, "pin"));
  else if (!strcmp(action, "sleep")) {
    int level = sleep_level(req);
    if (!level) {
      srv_send_error(r, 400, "sleep takes {\"level\": 1 or 2}", "level", NULL);
      return;
    }
    fleet_sleep(f, idx, level);
  } else {
    srv_send_error(r, 404, "unknown action (load, wake, sleep, unload, pin, unpin)", NULL, "not_found");
    return;
  }
  answer(r, 202, model_json(s, idx));
}
