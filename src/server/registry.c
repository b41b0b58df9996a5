/* The served-model registry (see registry.h). */
#include "server/registry.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/route.h"
#include "server/tenant.h"

void registry_init(registry *r) { memset(r, 0, sizeof *r); }

void registry_deinit(registry *r) {
  for (int32_t i = 0; i < r->n_models; i++) {
    free(r->models[i].name);
    free(r->models[i].path);
    free(r->models[i].device);
  }
  for (int32_t i = 0; i < r->n_aliases; i++) {
    free(r->aliases[i].name);
    free(r->aliases[i].target);
  }
  for (int32_t i = 0; i < r->n_routes; i++) {
    free(r->routes[i].name);
    for (int32_t j = 0; j < r->routes[i].n; j++) free(r->routes[i].targets[j]);
  }
  for (int32_t i = 0; i < r->n_api_keys; i++) free(r->api_keys[i]);
  for (int32_t i = 0; i < r->n_admin_keys; i++) free(r->admin_keys[i]);
  for (int32_t i = 0; i < r->n_open_paths; i++) free(r->open_paths[i]);
  tenant_cfg_destroy(r->tenants);
  free(r->host);
  memset(r, 0, sizeof *r);
}

/* Names appear in URLs (/v1/models/{id}) and metric labels: keep them printable, no spaces. */
static int valid_name(const char *s) {
  if (!s || !*s || strlen(s) > 128) return 0;
  for (const unsigned char *p = (const unsigned char *)s; *p; p++)
    if (*p <= ' ' || *p == '"' || *p == '\\' || *p >= 0x7f) return 0;
  return 1;
}

int registry_valid_name(const char *s) { return valid_name(s); }

static int add_model(registry *r, const char *name, const char *path, qv_error *err) {
  if (r->n_models >= REG_MAX_MODELS)
    return qv_error_set(err, QV_ELIMIT, "too many models (at most %d)", REG_MAX_MODELS);
  if (!valid_name(name)) return qv_error_set(err, QV_EINVAL, "invalid model name '%s'", name);
  if (!path || !*path) return qv_error_set(err, QV_EINVAL, "model '%s' has no path", name);
  reg_model *m = &r->models[r->n_models];
  memset(m, 0, sizeof *m);
  m->name = strdup(name);
  m->path = strdup(path);
  if (!m->name || !m->path) {
    free(m->name);
    free(m->path);
    return qv_error_set(err, QV_ENOMEM, "out of memory");
  }
  r->n_models++;
  return 0;
}

int registry_add_model_arg(registry *r, const char *arg, qv_error *err) {
  const char *eq = strchr(arg, '=');
  if (eq) {
    char name[160];
    size_t n = (size_t)(eq - arg);
    if (n == 0 || n >= sizeof name)
      return qv_error_set(err, QV_EINVAL, "--model '%s': bad NAME=PATH", arg);
    memcpy(name, arg, n);
    name[n] = '\0';
    return add_model(r, name, eq + 1, err);
  }
  /* The name is the last non-empty path component. */
  char buf[1024];
  snprintf(buf, sizeof buf, "%s", arg);
  size_t l = strlen(buf);
  while (l > 1 && buf[l - 1] == '/') buf[--l] = '\0';
  const char *slash = strrchr(buf, '/');
  return add_model(r, slash ? slash + 1 : buf, arg, err);
}

static int add_alias(registry *r, const char *name, const char *target, qv_error *err) {
  if (r->n_aliases >= REG_MAX_NAMES) return qv_error_set(err, QV_ELIMIT, "too many aliases");
  if (!valid_name(name) || !valid_name(target))
    return qv_error_set(err, QV_EINVAL, "invalid alias '%s' -> '%s'", name, target);
  reg_alias *a = &r->aliases[r->n_aliases];
  a->name = strdup(name);
  a->target = strdup(target);
  if (!a->name || !a->target) {
    free(a->name);
    free(a->target);
    return qv_error_set(err, QV_ENOMEM, "out of memory");
  }
  r->n_aliases++;
  return 0;
}

int registry_add_alias_arg(registry *r, const char *arg, qv_error *err) {
  const char *eq = strchr(arg, '=');
  char name[160];
  size_t n = eq ? (size_t)(eq - arg) : 0;
  if (!eq || n == 0 || n >= sizeof name)
    return qv_error_set(err, QV_EINVAL, "--alias '%s': expected ALIAS=NAME", arg);
  memcpy(name, arg, n);
  name[n] = '\0';
  return add_alias(r, name, eq + 1, err);
}

static int add_string(char **arr, int32_t *n, const char *s, const char *what, qv_error *err) {
  if (*n >= REG_MAX_NAMES) return qv_error_set(err, QV_ELIMIT, "too many %s", what);
  if (!s || !*s) return qv_error_set(err, QV_EINVAL, "empty %s", what);
  arr[*n] = strdup(s);
  if (!arr[*n]) return qv_error_set(err, QV_ENOMEM, "out of memory");
  (*n)++;
  return 0;
}

int registry_add_api_key(registry *r, const char *key, qv_error *err) {
  return add_string(r->api_keys, &r->n_api_keys, key, "API keys", err);
}

int registry_add_admin_key(registry *r, const char *key, qv_error *err) {
  return add_string(r->admin_keys, &r->n_admin_keys, key, "admin keys", err);
}

int registry_add_open_path(registry *r, const char *path, qv_error *err) {
  r->open_paths_set = 1;
  if (path[0] != '/') return qv_error_set(err, QV_EINVAL, "open path '%s' must start with /", path);
  return add_string(r->open_paths, &r->n_open_paths, path, "open paths", err);
}

int registry_reasoning_parse(const char *name, reg_reasoning *out, qv_error *err) {
  static const struct {
    const char *name;
    reg_reasoning r;
  } known[] = {{"none", REG_REASONING_NONE},
               {"deepseek_r1", REG_REASONING_DEEPSEEK_R1},
               {"qwen3", REG_REASONING_QWEN3}};
  for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
    if (!strcmp(name, known[i].name)) {
      *out = known[i].r;
      return 0;
    }
  return qv_error_set(err, QV_EINVAL,
                      "unknown reasoning parser '%.100s' (known: deepseek_r1, qwen3, none)", name);
}

static int json_int(const cJSON *o, const char *k, int32_t lo, int32_t hi, int32_t *out,
                    qv_error *err) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
  if (!v) return 0;
  if (!cJSON_IsNumber(v) || v->valuedouble != (double)(int64_t)v->valuedouble ||
      v->valuedouble < lo || v->valuedouble > hi)
    return qv_error_set(err, QV_EINVAL, "config: '%s' must be an integer in [%d, %d]", k, lo, hi);
  *out = (int32_t)v->valuedouble;
  return 0;
}

/* A model's fleet keys: "load", "pin", "keep_alive", "min_kv", "max_kv". */
static int load_fleet_opts(const cJSON *m, reg_model *rm, qv_error *err) {
  const cJSON *ld = cJSON_GetObjectItemCaseSensitive(m, "load");
  if (ld) {
    if (!cJSON_IsString(ld) || (strcmp(ld->valuestring, "startup") && strcmp(ld->valuestring, "on_demand")))
      return qv_error_set(err, QV_EINVAL, "config: model 'load' must be \"startup\" or \"on_demand\"");
    rm->on_demand = !strcmp(ld->valuestring, "on_demand");
  }
  const cJSON *pin = cJSON_GetObjectItemCaseSensitive(m, "pin");
  if (pin) {
    if (!cJSON_IsBool(pin)) return qv_error_set(err, QV_EINVAL, "config: model 'pin' must be true or false");
    rm->pin = cJSON_IsTrue(pin);
  }
  const cJSON *ka = cJSON_GetObjectItemCaseSensitive(m, "keep_alive");
  if (ka) {
    if (!cJSON_IsNumber(ka) || !(ka->valuedouble >= 0 && ka->valuedouble <= 1e9))
      return qv_error_set(err, QV_EINVAL, "config: model 'keep_alive' must be seconds >= 0 (0: forever)");
    rm->keep_alive_s = ka->valuedouble;
  }
  int rc;
  if ((rc = json_int(m, "min_kv", 0, 1 << 26, &rm->min_kv, err))) return rc;
  if ((rc = json_int(m, "max_kv", 0, 1 << 26, &rm->max_kv, err))) return rc;
  if (rm->max_kv && rm->min_kv > rm->max_kv)
    return qv_error_set(err, QV_EINVAL, "config: model '%s': min_kv %d exceeds max_kv %d", rm->name,
                        rm->min_kv, rm->max_kv);
  return 0;
}

/* A model's per-model keys besides name, path and aliases (config file and admin API). */
static int load_model_opts(const cJSON *m, reg_model *rm, qv_error *err) {
  int rc;
  const cJSON *dev = cJSON_GetObjectItemCaseSensitive(m, "device");
  if (dev) {
    if (!cJSON_IsString(dev) || (strcmp(dev->valuestring, "cpu") && strcmp(dev->valuestring, "cuda")))
      return qv_error_set(err, QV_EINVAL, "config: model device must be \"cpu\" or \"cuda\"");
    rm->device = strdup(dev->valuestring);
    if (!rm->device) return qv_error_set(err, QV_ENOMEM, "out of memory");
  }
  if ((rc = json_int(m, "max_model_len", 1, 1 << 24, &rm->max_model_len, err))) return rc;
  if ((rc = json_int(m, "max_num_seqs", 1, 1 << 16, &rm->max_num_seqs, err))) return rc;
  if ((rc = json_int(m, "tensor_parallel_size", 1, 64, &rm->tp_size, err))) return rc;
  if ((rc = json_int(m, "max_waiting", 1, 1 << 20, &rm->max_waiting, err))) return rc;
  if ((rc = json_int(m, "n_kv_blocks", 0, 1 << 26, &rm->n_kv_blocks, err))) return rc;
  if ((rc = load_fleet_opts(m, rm, err))) return rc;
  const cJSON *bd = cJSON_GetObjectItemCaseSensitive(m, "cpu_bf16_dot");
  if (bd) {
    if (!cJSON_IsBool(bd)) return qv_error_set(err, QV_EINVAL, "config: model 'cpu_bf16_dot' must be true or false");
    rm->cpu_bf16_dot = cJSON_IsTrue(bd) ? 1 : -1;
  }
  const cJSON *rp = cJSON_GetObjectItemCaseSensitive(m, "reasoning_parser");
  if (rp) {
    if (!cJSON_IsString(rp))
      return qv_error_set(err, QV_EINVAL, "config: model 'reasoning_parser' must be a string");
    if ((rc = registry_reasoning_parse(rp->valuestring, &rm->reasoning, err))) {
      qv_error_prefix(err, "config: model '%s'", rm->name);
      return rc;
    }
  }
  return 0;
}

static int load_models(registry *r, const cJSON *models, qv_error *err) {
  if (!cJSON_IsArray(models)) return qv_error_set(err, QV_EINVAL, "config: 'models' must be an array");
  const cJSON *m;
  cJSON_ArrayForEach(m, models) {
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(m, "name");
    const cJSON *path = cJSON_GetObjectItemCaseSensitive(m, "path");
    if (!cJSON_IsObject(m) || !cJSON_IsString(path))
      return qv_error_set(err, QV_EINVAL, "config: each model needs a string 'path'");
    if (name && !cJSON_IsString(name))
      return qv_error_set(err, QV_EINVAL, "config: model 'name' must be a string");
    int rc;
    if (name) rc = add_model(r, name->valuestring, path->valuestring, err);
    else rc = registry_add_model_arg(r, path->valuestring, err);
    if (rc) return rc;
    reg_model *rm = &r->models[r->n_models - 1];
    if ((rc = load_model_opts(m, rm, err))) return rc;
    const cJSON *al = cJSON_GetObjectItemCaseSensitive(m, "aliases");
    if (al) {
      if (!cJSON_IsArray(al)) return qv_error_set(err, QV_EINVAL, "config: model 'aliases' must be an array");
      const cJSON *a;
      cJSON_ArrayForEach(a, al) {
        if (!cJSON_IsString(a)) return qv_error_set(err, QV_EINVAL, "config: aliases must be strings");
        if ((rc = add_alias(r, a->valuestring, rm->name, err))) return rc;
      }
    }
  }
  return 0;
}

static int load_routes(registry *r, const cJSON *routes, qv_error *err) {
  if (!cJSON_IsObject(routes)) return qv_error_set(err, QV_EINVAL, "config: 'routes' must be an object");
  const cJSON *rt;
  cJSON_ArrayForEach(rt, routes) {
    if (r->n_routes >= REG_MAX_NAMES) return qv_error_set(err, QV_ELIMIT, "too many routes");
    if (!valid_name(rt->string)) return qv_error_set(err, QV_EINVAL, "invalid route name '%s'", rt->string);
    reg_route *route = &r->routes[r->n_routes];
    memset(route, 0, sizeof *route);
    route->name = strdup(rt->string);
    if (!route->name) return qv_error_set(err, QV_ENOMEM, "out of memory");
    r->n_routes++;
    int rc = route_parse_json(route, rt, err);
    if (rc) return rc;
  }
  return 0;
}

int registry_load_json(registry *r, const char *text, size_t len, qv_error *err) {
  cJSON *root = cJSON_ParseWithLength(text, len);
  if (!root) return qv_error_set(err, QV_EFORMAT, "config: not valid JSON");
  int rc = 0;
  if (!cJSON_IsObject(root)) {
    rc = qv_error_set(err, QV_EFORMAT, "config: must be a JSON object");
    goto done;
  }
  static const char *const known[] = {"host", "port", "api_keys", "open_paths", "models", "aliases", "routes",
                                      "tenants", "admin_keys", NULL};
  const cJSON *it;
  cJSON_ArrayForEach(it, root) {
    int ok = 0;
    for (const char *const *k = known; *k; k++) ok |= !strcmp(*k, it->string);
    if (!ok) {
      rc = qv_error_set(err, QV_EINVAL, "config: unknown key '%s'", it->string);
      goto done;
    }
  }
  const cJSON *host = cJSON_GetObjectItemCaseSensitive(root, "host");
  if (host) {
    if (!cJSON_IsString(host)) {
      rc = qv_error_set(err, QV_EINVAL, "config: 'host' must be a string");
      goto done;
    }
    free(r->host);
    r->host = strdup(host->valuestring);
    if (!r->host) {
      rc = qv_error_set(err, QV_ENOMEM, "out of memory");
      goto done;
    }
  }
  if ((rc = json_int(root, "port", 0, 65535, &r->port, err))) goto done;
  const char *lists[] = {"api_keys", "open_paths", "admin_keys"};
  for (int l = 0; l < 3; l++) {
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(root, lists[l]);
    if (!a) continue;
    if (!cJSON_IsArray(a)) {
      rc = qv_error_set(err, QV_EINVAL, "config: '%s' must be an array of strings", lists[l]);
      goto done;
    }
    if (l == 1) r->open_paths_set = 1;
    cJSON_ArrayForEach(it, a) {
      if (!cJSON_IsString(it)) {
        rc = qv_error_set(err, QV_EINVAL, "config: '%s' must be an array of strings", lists[l]);
        goto done;
      }
      rc = l == 0   ? registry_add_api_key(r, it->valuestring, err)
           : l == 1 ? registry_add_open_path(r, it->valuestring, err)
                    : registry_add_admin_key(r, it->valuestring, err);
      if (rc) goto done;
    }
  }
  const cJSON *models = cJSON_GetObjectItemCaseSensitive(root, "models");
  if (models && (rc = load_models(r, models, err))) goto done;
  const cJSON *aliases = cJSON_GetObjectItemCaseSensitive(root, "aliases");
  if (aliases) {
    if (!cJSON_IsObject(aliases)) {
      rc = qv_error_set(err, QV_EINVAL, "config: 'aliases' must be an object");
      goto done;
    }
    cJSON_ArrayForEach(it, aliases) {
      if (!cJSON_IsString(it)) {
        rc = qv_error_set(err, QV_EINVAL, "config: alias '%s' must map to a name", it->string);
        goto done;
      }
      if ((rc = add_alias(r, it->string, it->valuestring, err))) goto done;
    }
  }
  const cJSON *routes = cJSON_GetObjectItemCaseSensitive(root, "routes");
  if (routes && (rc = load_routes(r, routes, err))) goto done;
  const cJSON *tenants = cJSON_GetObjectItemCaseSensitive(root, "tenants");
  if (tenants && (rc = tenant_cfg_load_json(&r->tenants, tenants, err))) goto done;
done:
  cJSON_Delete(root);
  return rc;
}

int registry_load_file(registry *r, const char *path, qv_error *err) {
  FILE *f = fopen(path, "rb");
  if (!f) return qv_error_set(err, QV_EIO, "config: cannot open '%s'", path);
  char *buf = NULL;
  size_t len = 0, cap = 0;
  for (;;) {
    if (len + 4096 > cap) {
      if (cap > (16u << 20)) {
        free(buf);
        fclose(f);
        return qv_error_set(err, QV_ELIMIT, "config: '%s' is too large", path);
      }
      cap = cap ? cap * 2 : 8192;
      char *nb = realloc(buf, cap);
      if (!nb) {
        free(buf);
        fclose(f);
        return qv_error_set(err, QV_ENOMEM, "out of memory");
      }
      buf = nb;
    }
    size_t n = fread(buf + len, 1, cap - len, f);
    len += n;
    if (n == 0) break;
  }
  fclose(f);
  int rc = registry_load_json(r, buf ? buf : "", len, err);
  free(buf);
  if (rc) qv_error_prefix(err, "%s", path);
  return rc;
}

static int find_model(const registry *r, const char *name) {
  for (int32_t i = 0; i < r->n_models; i++)
    if (!r->models[i].removed && !strcmp(r->models[i].name, name)) return i;
  return -1;
}

static int find_route(const registry *r, const char *name) {
  for (int32_t i = 0; i < r->n_routes; i++)
    if (!strcmp(r->routes[i].name, name)) return i;
  return -1;
}

static int find_alias(const registry *r, const char *name) {
  for (int32_t i = 0; i < r->n_aliases; i++)
    if (!strcmp(r->aliases[i].name, name)) return i;
  return -1;
}

int registry_finalize(registry *r, qv_error *err) {
  if (r->n_models == 0) {
    int rc = add_model(r, "quiver-tiny", "quiver-tiny", err);
    if (rc) return rc;
  }
  /* An admin key is never also a user key: whoever holds a user key must not manage models. */
  for (int32_t i = 0; i < r->n_admin_keys; i++)
    for (int32_t j = 0; j < r->n_api_keys; j++)
      if (!strcmp(r->admin_keys[i], r->api_keys[j]))
        return qv_error_set(err, QV_EINVAL, "an admin key must differ from every API key");
  /* Every name once across models, aliases and routes. */
  const char *names[REG_MAX_MODELS + 2 * REG_MAX_NAMES];
  int n = 0;
  for (int32_t i = 0; i < r->n_models; i++) names[n++] = r->models[i].name;
  for (int32_t i = 0; i < r->n_aliases; i++) names[n++] = r->aliases[i].name;
  for (int32_t i = 0; i < r->n_routes; i++) names[n++] = r->routes[i].name;
  for (int i = 0; i < n; i++)
    for (int j = i + 1; j < n; j++)
      if (!strcmp(names[i], names[j]))
        return qv_error_set(err, QV_EINVAL, "name '%s' is defined twice", names[i]);
  /* A route's targets are models, or aliases of models. A target naming a route (directly or
   * through an alias) is refused: routes do not nest, so no cycle can form. */
  for (int32_t i = 0; i < r->n_routes; i++) {
    reg_route *rt = &r->routes[i];
    for (int32_t j = 0; j < rt->n; j++) {
      const char *t = rt->targets[j];
      int a = find_alias(r, t);
      if (a >= 0) t = r->aliases[a].target;
      int m = find_model(r, t);
      if (m < 0 && find_route(r, t) >= 0)
        return qv_error_set(err, QV_EINVAL,
                            "route '%s' names route '%s': a route's targets must be models "
                            "(routes do not nest, so cycles cannot form)",
                            rt->name, rt->targets[j]);
      if (m < 0)
        return qv_error_set(err, QV_EINVAL, "route '%s' names unknown model '%s'", rt->name,
                            rt->targets[j]);
      for (int32_t k = 0; k < j; k++)
        if (rt->models[k] == m)
          return qv_error_set(err, QV_EINVAL, "route '%s' names model '%s' twice", rt->name, t);
      rt->models[j] = m;
    }
  }
  for (int32_t i = 0; i < r->n_aliases; i++)
    if (find_model(r, r->aliases[i].target) < 0 && find_route(r, r->aliases[i].target) < 0)
      return qv_error_set(err, QV_EINVAL, "alias '%s' points to unknown model or route '%s'",
                          r->aliases[i].name, r->aliases[i].target);
  if (!r->open_paths_set) {
    int rc = registry_add_open_path(r, "/health", err);
    if (rc) return rc;
  }
  return tenant_cfg_finalize(r->tenants, r, err);
}

int32_t registry_resolve(const registry *r, const char *name, int32_t *out, int32_t cap) {
  if (!name || cap < 1) return 0;
  int a = find_alias(r, name);
  if (a >= 0) name = r->aliases[a].target;
  int m = find_model(r, name);
  if (m >= 0) {
    out[0] = m;
    return 1;
  }
  int rt = find_route(r, name);
  if (rt < 0) return 0;
  int32_t n = 0;
  for (int32_t i = 0; i < r->routes[rt].n && n < cap; i++) out[n++] = r->routes[rt].models[i];
  return n;
}

const reg_route *registry_route_of(const registry *r, const char *name) {
  if (!name) return NULL;
  int a = find_alias(r, name);
  if (a >= 0) name = r->aliases[a].target;
  int rt = find_route(r, name);
  return rt >= 0 ? &r->routes[rt] : NULL;
}

int registry_is_open_path(const registry *r, const char *path) {
  for (int32_t i = 0; i < r->n_open_paths; i++)
    if (!strcmp(r->open_paths[i], path)) return 1;
  return 0;
}

/* The keys an admin API body may carry: the config file's per-model keys but "aliases" (an
 * alias outlives a removed model's name, so aliases stay config-only). */
static const char *const add_keys[] = {"name", "path", "device", "max_model_len", "max_num_seqs",
                                       "tensor_parallel_size", "max_waiting", "n_kv_blocks",
                                       "reasoning_parser", "load", "pin", "keep_alive", "min_kv",
                                       "max_kv", "cpu_bf16_dot"};

static int name_taken(const registry *r, const char *name) {
  for (int32_t i = 0; i < r->n_models; i++)
    if (!r->models[i].removed && !strcmp(r->models[i].name, name)) return 1;
  for (int32_t i = 0; i < r->n_aliases; i++)
    if (!strcmp(r->aliases[i].name, name)) return 1;
  for (int32_t i = 0; i < r->n_routes; i++)
    if (!strcmp(r->routes[i].name, name)) return 1;
  return 0;
}

static int check_add_body(const registry *r, const cJSON *j, qv_error *err) {
  if (!cJSON_IsObject(j)) return qv_error_set(err, QV_EINVAL, "the body must be a JSON object");
  const cJSON *it;
  cJSON_ArrayForEach(it, j) {
    size_t k = 0, n = sizeof add_keys / sizeof *add_keys;
    while (k < n && strcmp(it->string, add_keys[k])) k++;
    if (k == n) return qv_error_set(err, QV_EINVAL, "unknown model option '%.100s'", it->string);
  }
  const cJSON *name = cJSON_GetObjectItemCaseSensitive(j, "name");
  const cJSON *path = cJSON_GetObjectItemCaseSensitive(j, "path");
  if (!cJSON_IsString(name) || !valid_name(name->valuestring))
    return qv_error_set(err, QV_EINVAL, "'name' must be 1-128 printable bytes without spaces or quotes");
  if (!cJSON_IsString(path) || !*path->valuestring || strlen(path->valuestring) > 4000)
    return qv_error_set(err, QV_EINVAL, "'path' must be a non-empty string");
  if (name_taken(r, name->valuestring))
    return qv_error_set(err, QV_ESTATE, "the name '%s' is already a model, alias or route", name->valuestring);
  return 0;
}

/* The removed slot of this name, or -1. */
static int32_t removed_slot(const registry *r, const char *name) {
  for (int32_t i = 0; i < r->n_models; i++)
    if (r->models[i].removed && !strcmp(r->models[i].name, name)) return i;
  return -1;
}

/* A removed model's slot taken again: options parsed into a copy first, so a bad body leaves
 * the slot as it was. The name string stays (equal, and other threads may be comparing it). */
static int reuse_slot(reg_model *rm, const char *path, const cJSON *j, qv_error *err) {
  reg_model t = {.name = rm->name, .added = 1};
  int rc = (t.path = strdup(path)) ? load_model_opts(j, &t, err) : qv_error_set(err, QV_ENOMEM, "out of memory");
  if (rc) {
    free(t.path);
    free(t.device);
    return rc;
  }
  free(rm->path);
  free(rm->device);
  *rm = t;
  return 0;
}

int registry_add_model_json(registry *r, const char *text, size_t len,
                            int (*reusable)(void *arg, int32_t idx), void *arg, int32_t *idx,
                            qv_error *err) {
  cJSON *j = cJSON_ParseWithLength(text, len);
  if (!j) return qv_error_set(err, QV_EINVAL, "the body is not valid JSON");
  int rc = check_add_body(r, j, err);
  const char *name = rc ? NULL : cJSON_GetObjectItemCaseSensitive(j, "name")->valuestring;
  const char *path = rc ? NULL : cJSON_GetObjectItemCaseSensitive(j, "path")->valuestring;
  int32_t slot = rc ? -1 : removed_slot(r, name);
  if (slot >= 0) {
    if (!reusable || !reusable(arg, slot))
      rc = qv_error_set(err, QV_EBUSY, "the model '%s' is still being removed; try again", name);
    else if (!(rc = reuse_slot(&r->models[slot], path, j, err))) *idx = slot;
  } else if (!rc && r->n_models >= REG_MAX_MODELS) {
    rc = qv_error_set(err, QV_ELIMIT, "no room for another model (at most %d)", REG_MAX_MODELS);
  } else if (!rc && !(rc = add_model(r, name, path, err))) {
    reg_model *rm = &r->models[r->n_models - 1];
    if ((rc = load_model_opts(j, rm, err))) {
      free(rm->name);
      free(rm->path);
      free(rm->device);
      memset(rm, 0, sizeof *rm);
      r->n_models--;
    } else {
      rm->added = 1;
      *idx = r->n_models - 1;
    }
  }
  cJSON_Delete(j);
  return rc;
}
