/* Route strategies: parsing and per-request ordering (see route.h). */
#include "server/route.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"

static int add_target(reg_route *rt, const char *name, qv_error *err) {
  if (rt->n >= REG_MAX_ROUTE_LEN)
    return qv_error_set(err, QV_EINVAL, "config: route '%s' must list 1 to %d models", rt->name,
                        REG_MAX_ROUTE_LEN);
  if (!(rt->targets[rt->n] = strdup(name))) return qv_error_set(err, QV_ENOMEM, "out of memory");
  rt->n++;
  return 0;
}

static int parse_targets(reg_route *rt, const cJSON *a, int weighted, qv_error *err) {
  int cnt = cJSON_GetArraySize(a);
  if (!cJSON_IsArray(a) || cnt < 1 || cnt > REG_MAX_ROUTE_LEN)
    return qv_error_set(err, QV_EINVAL, "config: route '%s' must list 1 to %d models", rt->name,
                        REG_MAX_ROUTE_LEN);
  int64_t sum = 0;
  const cJSON *t;
  cJSON_ArrayForEach(t, a) {
    if (!weighted) {
      if (!cJSON_IsString(t))
        return qv_error_set(err, QV_EINVAL, "config: route '%s' must list model names", rt->name);
      int rc = add_target(rt, t->valuestring, err);
      if (rc) return rc;
      continue;
    }
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(t, "model");
    const cJSON *w = cJSON_GetObjectItemCaseSensitive(t, "weight");
    if (!cJSON_IsObject(t) || !cJSON_IsString(m) || cJSON_GetArraySize(t) != 2 || !cJSON_IsNumber(w) ||
        w->valuedouble != floor(w->valuedouble) || w->valuedouble < 0 ||
        w->valuedouble > ROUTE_MAX_WEIGHT)
      return qv_error_set(err, QV_EINVAL,
                          "config: route '%s': weighted targets are {\"model\": NAME, \"weight\": "
                          "an integer in [0, %d]}",
                          rt->name, ROUTE_MAX_WEIGHT);
    rt->weights[rt->n] = (int32_t)w->valuedouble;
    sum += rt->weights[rt->n];
    int rc = add_target(rt, m->valuestring, err);
    if (rc) return rc;
  }
  if (weighted && sum <= 0)
    return qv_error_set(err, QV_EINVAL, "config: route '%s': the weights sum to zero", rt->name);
  return 0;
}

int route_parse_json(reg_route *rt, const cJSON *v, qv_error *err) {
  if (cJSON_IsArray(v)) return parse_targets(rt, v, 0, err);
  if (!cJSON_IsObject(v))
    return qv_error_set(err, QV_EINVAL,
                        "config: route '%s' must be a list of models or an object with "
                        "'strategy' and 'targets'",
                        rt->name);
  const cJSON *it;
  cJSON_ArrayForEach(it, v) {
    if (strcmp(it->string, "strategy") && strcmp(it->string, "targets") && strcmp(it->string, "seed"))
      return qv_error_set(err, QV_EINVAL, "config: route '%s': unknown key '%.64s'", rt->name,
                          it->string);
  }
  const cJSON *st = cJSON_GetObjectItemCaseSensitive(v, "strategy");
  if (!cJSON_IsString(st))
    return qv_error_set(err, QV_EINVAL, "config: route '%s' needs a 'strategy' string", rt->name);
  static const struct {
    const char *name;
    reg_route_strategy s;
  } known[] = {{"fallback", REG_ROUTE_FALLBACK},
               {"weighted", REG_ROUTE_WEIGHTED},
               {"least_loaded", REG_ROUTE_LEAST_LOADED}};
  size_t k = 0;
  while (k < sizeof known / sizeof known[0] && strcmp(known[k].name, st->valuestring)) k++;
  if (k == sizeof known / sizeof known[0])
    return qv_error_set(err, QV_EINVAL,
                        "config: route '%s': unknown strategy '%.64s' (known: fallback, weighted, "
                        "least_loaded)",
                        rt->name, st->valuestring);
  rt->strategy = known[k].s;
  const cJSON *seed = cJSON_GetObjectItemCaseSensitive(v, "seed");
  if (seed) {
    if (rt->strategy != REG_ROUTE_WEIGHTED || !cJSON_IsNumber(seed) ||
        seed->valuedouble != floor(seed->valuedouble) || seed->valuedouble < 0 ||
        seed->valuedouble > 9007199254740992.0)
      return qv_error_set(err, QV_EINVAL,
                          "config: route '%s': 'seed' is for weighted routes, an integer in [0, "
                          "2^53]",
                          rt->name);
    rt->seed = (uint64_t)seed->valuedouble;
  }
  const cJSON *targets = cJSON_GetObjectItemCaseSensitive(v, "targets");
  if (!targets) return qv_error_set(err, QV_EINVAL, "config: route '%s' has no 'targets'", rt->name);
  return parse_targets(rt, targets, rt->strategy == REG_ROUTE_WEIGHTED, err);
}

uint64_t route_draw_of_id(const char *id) {
  /* FNV-1a over the bytes, then splitmix64's mix so close ids spread. */
  uint64_t h = 0xcbf29ce484222325ull;
  for (const unsigned char *p = (const unsigned char *)id; *p; p++) h = (h ^ *p) * 0x100000001b3ull;
  return qv_mix64(h);
}

int32_t route_order(const reg_route *rt, uint64_t draw, const int64_t *load, int32_t *out) {
  int32_t n = rt->n;
  for (int32_t i = 0; i < n; i++) out[i] = rt->models[i];
  if (rt->strategy == REG_ROUTE_WEIGHTED) {
    uint64_t sum = 0;
    for (int32_t i = 0; i < n; i++) sum += (uint64_t)rt->weights[i];
    if (sum == 0) return n;
    /* sum <= 8e6, so the modulo bias is below 1e-12. */
    uint64_t x = qv_mix64(draw ^ qv_mix64(rt->seed)) % sum;
    int32_t pick = 0;
    while (pick < n - 1 && x >= (uint64_t)rt->weights[pick]) x -= (uint64_t)rt->weights[pick++];
    /* The drawn target first, the others keep their listed order behind it. */
    for (int32_t i = pick; i > 0; i--) out[i] = out[i - 1];
    out[0] = rt->models[pick];
  } else if (rt->strategy == REG_ROUTE_LEAST_LOADED && load) {
    /* Insertion sort by load, stable (ties keep the listed order); n <= REG_MAX_ROUTE_LEN. */
    for (int32_t i = 1; i < n; i++) {
      int32_t m = out[i], j = i;
      while (j > 0 && load[out[j - 1]] > load[m]) {
        out[j] = out[j - 1];
        j--;
      }
      out[j] = m;
    }
  }
  return n;
}
