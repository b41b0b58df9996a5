#define _GNU_SOURCE
/* Tenants and route strategies: config parsing and its errors (bad types, unknown keys, huge
 * numbers, duplicate keys, nesting routes), constant-time key lookup, permissions, quota
 * arithmetic on a fake clock, weighted draws (distribution, determinism) and least_loaded
 * order; then the server over the fake engine: 403 in the OpenAI and Anthropic shapes, a
 * filtered /v1/models, 429 with Retry-After that recovers, and the per-tenant metrics. */
#include "server_harness.h"

#include "server/route.h"
#include "server/tenant.h"

/* ---- config ---- */

/* Loads two models, extra, and (unless extra has its own) the alias small -> lower and the
 * route r = [lower, upper]; finalizes. 0 or the error code (message in err). */
static int load(const char *extra, registry *g, qv_error *err) {
  char cfg[8192];
  snprintf(cfg, sizeof cfg,
           "{\"models\":[{\"name\":\"lower\",\"path\":\"/fake/a\"},{\"name\":\"upper\",\"path\":\"/fake/b\"}]"
           "%s%s%s%s}",
           strstr(extra, "\"aliases\"") ? "" : ",\"aliases\":{\"small\":\"lower\"}",
           strstr(extra, "\"routes\"") ? "" : ",\"routes\":{\"r\":[\"lower\",\"upper\"]}",
           extra[0] ? "," : "", extra);
  registry_init(g);
  int rc = registry_load_json(g, cfg, strlen(cfg), err);
  if (!rc) rc = registry_finalize(g, err);
  return rc;
}

static void expect_error(const char *extra, const char *needle) {
  registry g;
  qv_error err = {0};
  int rc = load(extra, &g, &err);
  cr_expect_neq(rc, 0, "accepted: %s", extra);
  cr_expect(strstr(err.msg, needle), "for %s: '%s' lacks '%s'", extra, err.msg, needle);
  cr_expect(!strstr(err.msg, "sk-secret"), "a key leaked into: %s", err.msg);
  registry_deinit(&g);
}

Test(tenant, config_parses) {
  registry g;
  qv_error err = {0};
  int rc = load("\"aliases\":{\"small\":\"lower\",\"auto\":\"r\"},\"api_keys\":[\"sk-admin\"],\"tenants\":[{\"name\":\"a\",\"keys\":[\"sk-a1\",\"sk-a2\"],"
                "\"models\":[\"small\",\"r\"],\"endpoints\":[\"/v1/chat/completions\",\"/v1/models\"],"
                "\"requests_per_minute\":3,\"tokens_per_minute\":1000,\"window_s\":0.5},"
                "{\"name\":\"b\",\"keys\":[\"sk-b\"]}]",
                &g, &err);
  cr_assert_eq(rc, 0, "%s", err.msg);
  const tenant_cfg *c = g.tenants;
  cr_assert_eq(tenant_count(c), 2);
  cr_assert_eq(c->t[0].rpm, 3);
  cr_assert_eq(c->t[0].tpm, 1000);
  cr_assert_float_eq(c->t[0].window_s, 0.5, 1e-12);
  cr_assert(c->t[1].all_models && c->t[1].all_endpoints);
  cr_assert_eq(c->t[1].rpm, 0);
  cr_assert_float_eq(c->t[1].window_s, 60, 1e-12);
  /* keys */
  cr_assert_eq(tenant_find_key(c, "sk-a2"), 0);
  cr_assert_eq(tenant_find_key(c, "sk-b"), 1);
  cr_assert_eq(tenant_find_key(c, "sk-b "), -1);
  cr_assert_eq(tenant_find_key(c, "sk-"), -1);
  cr_assert_eq(tenant_find_key(c, ""), -1);
  cr_assert_eq(tenant_find_key(c, NULL), -1);
  cr_assert_eq(tenant_find_key(c, "sk-admin"), -1); /* unrestricted: not a tenant */
  cr_assert_eq(tenant_find_key(NULL, "sk-b"), -1);
  /* names: listed ones, aliases of listed ones; not the route's models by their own names */
  cr_assert(tenant_allows_model(c, 0, &g, "small"));
  cr_assert(tenant_allows_model(c, 0, &g, "r"));
  cr_assert(tenant_allows_model(c, 0, &g, "auto")); /* alias of the allowed route */
  cr_assert(!tenant_allows_model(c, 0, &g, "lower"));
  cr_assert(!tenant_allows_model(c, 0, &g, "upper"));
  cr_assert(!tenant_allows_model(c, 0, &g, NULL));
  cr_assert(tenant_allows_model(c, 1, &g, "upper"));
  cr_assert(tenant_allows_model(c, -1, &g, "upper"));
  /* endpoints: exact or a sub-path */
  cr_assert(tenant_allows_endpoint(c, 0, "/v1/chat/completions"));
  cr_assert(tenant_allows_endpoint(c, 0, "/v1/models/small"));
  cr_assert(!tenant_allows_endpoint(c, 0, "/v1/completions"));
  cr_assert(!tenant_allows_endpoint(c, 0, "/v1/chat/completionsX"));
  cr_assert(tenant_allows_endpoint(c, 1, "/v1/completions"));
  registry_deinit(&g);
}

Test(tenant, config_errors) {
  expect_error("\"tenants\":{}", "'tenants' must be an array");
  expect_error("\"tenants\":[1]", "must be an object");
  expect_error("\"tenants\":[{\"keys\":[\"sk-secret\"]}]", "needs a 'name'");
  expect_error("\"tenants\":[{\"name\":\"a b\",\"keys\":[\"sk-secret\"]}]", "needs a 'name'");
  expect_error("\"tenants\":[{\"name\":\"a\"}]", "has no 'keys'");
  expect_error("\"tenants\":[{\"name\":\"a\",\"keys\":[]}]", "has no keys");
  expect_error("\"tenants\":[{\"name\":\"a\",\"keys\":\"sk-secret\"}]", "array of strings");
  expect_error("\"tenants\":[{\"name\":\"a\",\"keys\":[\"\"]}]", "non-empty strings");
  expect_error("\"tenants\":[{\"name\":\"a\",\"keys\":[7]}]", "non-empty strings");
  expect_error("\"tenants\":[{\"name\":\"a\",\"keys\":[\"sk-secret\"],\"rpm\":1}]", "unknown key 'rpm'");
  expect_error("\"tenants\":[{\"name\":\"a\",\"keys\":[\"sk-secret\"],\"models\":[\"ghost\"]}]",
               "unknown model, alias or route 'ghost'");
  expect_error("\"tenants\":[{\"name\":\"a\",\"keys\":[\"sk-secret\"],\"models\":\"lower\"}]",
               "array of strings");
  expect_error("\"tenants\":[{\"name\":\"a\",\"keys\":[\"sk-secret\"],\"endpoints\":[\"v1\"]}]",
               "must start with /");
  const char *bad_limits[] = {"0", "-1", "1.5", "1e13", "1e308", "\"5\"", "true", "null", "[]"};
  for (size_t i = 0; i < sizeof bad_limits / sizeof *bad_limits; i++) {
    char extra[256];
    snprintf(extra, sizeof extra,
             "\"tenants\":[{\"name\":\"a\",\"keys\":[\"sk-secret\"],\"tokens_per_minute\":%s}]",
             bad_limits[i]);
    expect_error(extra, "'tokens_per_minute' must be an integer");
    snprintf(extra, sizeof extra,
             "\"tenants\":[{\"name\":\"a\",\"keys\":[\"sk-secret\"],\"requests_per_minute\":%s}]",
             bad_limits[i]);
    expect_error(extra, "'requests_per_minute' must be an integer");
  }
  expect_error("\"tenants\":[{\"name\":\"a\",\"keys\":[\"sk-secret\"],\"window_s\":0}]", "window_s");
  expect_error("\"tenants\":[{\"name\":\"a\",\"keys\":[\"sk-secret\"],\"window_s\":1e9}]", "window_s");
  expect_error("\"tenants\":[{\"name\":\"a\",\"keys\":[\"sk-secret\"]},{\"name\":\"a\",\"keys\":[\"x\"]}]",
               "defined twice");
  expect_error("\"tenants\":[{\"name\":\"a\",\"keys\":[\"sk-secret\"]},{\"name\":\"b\",\"keys\":[\"sk-secret\"]}]",
               "key #1 is also key #1 of tenant 'a'");
  expect_error("\"tenants\":[{\"name\":\"a\",\"keys\":[\"sk-secret\",\"sk-secret\"]}]",
               "key #2 is also key #1 of tenant 'a'");
  expect_error("\"api_keys\":[\"sk-secret\"],\"tenants\":[{\"name\":\"a\",\"keys\":[\"sk-secret\"]}]",
               "also an unrestricted api key");
  /* too many of everything: bounded, clear */
  char big[8192];
  int n = snprintf(big, sizeof big, "\"tenants\":[{\"name\":\"a\",\"keys\":[");
  for (int i = 0; i < TENANT_MAX_KEYS + 1; i++) n += snprintf(big + n, sizeof big - (size_t)n, "%s\"k%d\"", i ? "," : "", i);
  snprintf(big + n, sizeof big - (size_t)n, "]}]");
  expect_error(big, "at most 16 keys");
  n = snprintf(big, sizeof big, "\"tenants\":[");
  for (int i = 0; i < TENANT_MAX + 1; i++)
    n += snprintf(big + n, sizeof big - (size_t)n, "%s{\"name\":\"t%d\",\"keys\":[\"k%d\"]}", i ? "," : "", i, i);
  snprintf(big + n, sizeof big - (size_t)n, "]");
  expect_error(big, "at most 64 tenants");
}

/* The HMAC index finds every key of the largest config and nothing near them; before
 * finalizing the lookup is the linear scan, with the same answers. */
Test(tenant, key_index_finds_every_key) {
  char cfg[1 << 16];
  int n = snprintf(cfg, sizeof cfg, "{\"models\":[{\"name\":\"m\",\"path\":\"/x\"}],\"tenants\":[");
  for (int t = 0; t < TENANT_MAX; t++) {
    n += snprintf(cfg + n, sizeof cfg - (size_t)n, "%s{\"name\":\"t%d\",\"keys\":[", t ? "," : "", t);
    for (int k = 0; k < TENANT_MAX_KEYS; k++)
      n += snprintf(cfg + n, sizeof cfg - (size_t)n, "%s\"sk-%d-%d\"", k ? "," : "", t, k);
    n += snprintf(cfg + n, sizeof cfg - (size_t)n, "]}");
  }
  n += snprintf(cfg + n, sizeof cfg - (size_t)n, "]}");
  for (int finalize = 0; finalize < 2; finalize++) {
    registry g;
    registry_init(&g);
    qv_error err = {0};
    cr_assert_eq(registry_load_json(&g, cfg, (size_t)n, &err), 0, "%s", err.msg);
    if (finalize) {
      cr_assert_eq(registry_finalize(&g, &err), 0, "%s", err.msg);
      cr_assert_eq(g.tenants->n_index, TENANT_MAX * TENANT_MAX_KEYS);
    } else {
      cr_assert_null(g.tenants->index);
    }
    char key[32];
    for (int t = 0; t < TENANT_MAX; t++)
      for (int k = 0; k < TENANT_MAX_KEYS; k++) {
        snprintf(key, sizeof key, "sk-%d-%d", t, k);
        cr_assert_eq(tenant_find_key(g.tenants, key), t, "%s", key);
        snprintf(key, sizeof key, "sk-%d-%dx", t, k);
        cr_assert_eq(tenant_find_key(g.tenants, key), -1, "%s", key);
        snprintf(key, sizeof key, " sk-%d-%d", t, k); /* leading spaces are skipped, as before */
        cr_assert_eq(tenant_find_key(g.tenants, key), t, "%s", key);
      }
    cr_assert_eq(tenant_find_key(g.tenants, "sk-1-"), -1);
    registry_deinit(&g);
  }
}

/* Seeded flips of a valid config never crash or leak (ASan) and never half-load. */
Test(tenant, config_fuzz) {
  const char *base = "{\"models\":[{\"name\":\"m\",\"path\":\"/x\"}],\"routes\":{\"w\":{\"strategy\":"
                     "\"weighted\",\"targets\":[{\"model\":\"m\",\"weight\":3}],\"seed\":1}},"
                     "\"tenants\":[{\"name\":\"t\",\"keys\":[\"k\"],\"models\":[\"w\"],"
                     "\"endpoints\":[\"/v1\"],\"requests_per_minute\":5,\"tokens_per_minute\":9,"
                     "\"window_s\":2}]}";
  size_t len = strlen(base);
  const char subst[] = "0123456789-.e\"[]{}:,xtn ";
  uint64_t st = 42;
  char buf[1024];
  for (int iter = 0; iter < 3000; iter++) {
    memcpy(buf, base, len + 1);
    int flips = 1 + (int)(qv_splitmix64(&st) % 3);
    for (int f = 0; f < flips; f++)
      buf[qv_splitmix64(&st) % len] = subst[qv_splitmix64(&st) % (sizeof subst - 1)];
    registry g;
    registry_init(&g);
    qv_error err = {0};
    if (!registry_load_json(&g, buf, len, &err)) (void)registry_finalize(&g, &err);
    registry_deinit(&g);
  }
}

/* Every new key with every kind of JSON value: each answers (0 or a clear error), never
 * crashes or leaks, and what is accepted is within bounds. */
Test(tenant, config_every_key_every_type) {
  static const char *const values[] = {
      "null", "true", "false", "0", "-1", "1", "1.5", "1e308", "-1e308", "9007199254740993",
      "1000000000000", "1000000000001", "\"\"", "\"x\"", "\"lower\"", "[]", "[1]", "[\"lower\"]",
      "[\"/v1\"]", "{}", "{\"a\":1}", "[null]", "[[]]", "\"/v1/chat/completions\""};
  static const char *const tenant_keys[] = {"models", "endpoints", "requests_per_minute",
                                            "tokens_per_minute", "window_s", "name", "keys"};
  static const char *const route_keys[] = {"strategy", "targets", "seed"};
  char cfg[1024];
  size_t nv = sizeof values / sizeof *values;
  for (size_t k = 0; k < sizeof tenant_keys / sizeof *tenant_keys; k++)
    for (size_t v = 0; v < nv; v++) {
      snprintf(cfg, sizeof cfg, "\"tenants\":[{%s%s\"%s\":%s}]",
               !strcmp(tenant_keys[k], "name") ? "" : "\"name\":\"t\",",
               !strcmp(tenant_keys[k], "keys") ? "" : "\"keys\":[\"k\"],", tenant_keys[k], values[v]);
      registry g;
      qv_error err = {0};
      if (load(cfg, &g, &err) == 0) {
        const tenant *t = &g.tenants->t[0];
        cr_assert(t->rpm >= 0 && t->rpm <= TENANT_MAX_LIMIT && t->tpm >= 0 && t->tpm <= TENANT_MAX_LIMIT);
        cr_assert(t->window_s >= 0.001 && t->window_s <= 86400, "%s", cfg);
        cr_assert(t->n_keys >= 1);
      } else {
        cr_assert(err.msg[0], "no message for %s", cfg);
      }
      registry_deinit(&g);
    }
  for (size_t k = 0; k < sizeof route_keys / sizeof *route_keys; k++)
    for (size_t v = 0; v < nv; v++)
      for (int strategy = 0; strategy < 3; strategy++) {
        static const char *const strategies[] = {"fallback", "weighted", "least_loaded"};
        /* the substituted key replaces its default (no duplicate keys) */
        char strat[64], targets[96];
        snprintf(strat, sizeof strat, "\"strategy\":\"%s\",", strategies[strategy]);
        snprintf(targets, sizeof targets, "\"targets\":[%s],",
                 strategy == 1 ? "{\"model\":\"lower\",\"weight\":1}" : "\"lower\"");
        snprintf(cfg, sizeof cfg, "\"routes\":{\"x\":{%s%s\"%s\":%s}}", k == 0 ? "" : strat,
                 k == 1 ? "" : targets, route_keys[k], values[v]);
        registry g;
        qv_error err = {0};
        if (load(cfg, &g, &err) == 0) {
          const reg_route *rt = registry_route_of(&g, "x");
          cr_assert(rt && rt->n >= 1 && rt->n <= REG_MAX_ROUTE_LEN, "%s", cfg);
          int32_t order[REG_MAX_ROUTE_LEN];
          int64_t load_[REG_MAX_MODELS] = {0};
          cr_assert_eq(route_order(rt, 99, load_, order), rt->n);
        } else {
          cr_assert(err.msg[0], "no message for %s", cfg);
        }
        registry_deinit(&g);
      }
}

/* ---- quotas on a fake clock ---- */

#define SEC 1000000000ull

Test(tenant, quota_requests_and_recovery) {
  tenant t = {.rpm = 3, .window_s = 60};
  tenant_quota q;
  uint64_t now = 1000 * SEC;
  tenant_quota_init(&q, &t, now);
  int64_t res = 0, retry = 0;
  for (int i = 0; i < 3; i++) cr_assert_eq(tenant_quota_admit(&q, now, 0, &res, &retry), TENANT_ADMIT_OK);
  /* the burst is spent; one request refills every 20 s */
  cr_assert_eq(tenant_quota_admit(&q, now, 0, &res, &retry), TENANT_ADMIT_REQUESTS);
  cr_assert_eq(retry, 20);
  cr_assert_eq(tenant_quota_peek_requests(&q, now), 20); /* what precheck answers, taking nothing */
  cr_assert_eq(tenant_quota_admit(&q, now + 5 * SEC, 0, &res, &retry), TENANT_ADMIT_REQUESTS);
  cr_assert_eq(retry, 15);
  cr_assert_eq(tenant_quota_admit(&q, now + 19 * SEC + SEC / 2, 0, &res, &retry), TENANT_ADMIT_REQUESTS);
  cr_assert_eq(retry, 1); /* 0.5 s rounds up, never 0 */
  cr_assert_eq(tenant_quota_peek_requests(&q, now + 20 * SEC), 0);
  cr_assert_eq(tenant_quota_admit(&q, now + 20 * SEC, 0, &res, &retry), TENANT_ADMIT_OK);
  /* a long pause refills to the limit, not beyond */
  int64_t rq, tk;
  tenant_quota_remaining(&q, now + 3600 * SEC, &rq, &tk);
  cr_assert_eq(rq, 3);
  cr_assert_eq(tk, -1);
  /* a clock that goes backwards refills nothing and does not crash */
  cr_assert_eq(tenant_quota_admit(&q, now, 0, &res, &retry), TENANT_ADMIT_OK);
}

Test(tenant, quota_tokens_reserve_and_refund) {
  tenant t = {.tpm = 1000, .window_s = 10}; /* 100 tokens per second */
  tenant_quota q;
  uint64_t now = 5 * SEC;
  tenant_quota_init(&q, &t, now);
  int64_t res = 600, retry = 0, rq, tk;
  cr_assert_eq(tenant_quota_admit(&q, now, 600, &res, &retry), TENANT_ADMIT_OK);
  cr_assert_eq(res, 600);
  res = 500;
  cr_assert_eq(tenant_quota_admit(&q, now, 500, &res, &retry), TENANT_ADMIT_TOKENS);
  cr_assert_eq(retry, 1); /* 100 short at 100/s */
  /* the first request used 150 of its 600: 450 come back */
  tenant_quota_settle(&q, now, 600, 150);
  tenant_quota_remaining(&q, now, &rq, &tk);
  cr_assert_eq(tk, 850);
  cr_assert_eq(rq, -1);
  res = 500;
  cr_assert_eq(tenant_quota_admit(&q, now, 500, &res, &retry), TENANT_ADMIT_OK);
  /* an implicit reservation (no max_tokens) is capped at the limit... */
  res = 5000;
  cr_assert_eq(tenant_quota_admit(&q, now, 100, &res, &retry), TENANT_ADMIT_TOKENS);
  cr_assert_eq(res, 1000);
  cr_assert_eq(retry, 7); /* 350 held, 1000 needed: 6.5 s */
  cr_assert_eq(tenant_quota_admit(&q, now + 7 * SEC, 100, &res, &retry), TENANT_ADMIT_OK);
  /* ...and using more than reserved is debt that delays the next request */
  tenant_quota_settle(&q, now + 7 * SEC, 1000, 1300);
  tenant_quota_remaining(&q, now + 7 * SEC, &rq, &tk);
  cr_assert_eq(tk, -300);
  res = 100;
  cr_assert_eq(tenant_quota_admit(&q, now + 7 * SEC, 100, &res, &retry), TENANT_ADMIT_TOKENS);
  cr_assert_eq(retry, 4);
  /* an explicit ask beyond the whole limit never fits */
  res = 1001;
  cr_assert_eq(tenant_quota_admit(&q, now + 100 * SEC, 1001, &res, &retry), TENANT_ADMIT_TOO_LARGE);
  cr_assert_eq(retry, 0);
}

Test(tenant, quota_both_limits_take_nothing_when_one_is_short) {
  tenant t = {.rpm = 10, .tpm = 100, .window_s = 1};
  tenant_quota q;
  tenant_quota_init(&q, &t, 0);
  int64_t res = 100, retry, rq, tk;
  cr_assert_eq(tenant_quota_admit(&q, 0, 100, &res, &retry), TENANT_ADMIT_OK);
  res = 50;
  cr_assert_eq(tenant_quota_admit(&q, 0, 50, &res, &retry), TENANT_ADMIT_TOKENS);
  tenant_quota_remaining(&q, 0, &rq, &tk);
  cr_assert_eq(rq, 9); /* the refused request took no request either */
  cr_assert_eq(tk, 0);
  /* unlimited tenant: always admitted, settle is a no-op */
  tenant u = {.window_s = 60};
  tenant_quota_init(&q, &u, 0);
  res = 1000000000;
  cr_assert_eq(tenant_quota_admit(&q, 0, res, &res, &retry), TENANT_ADMIT_OK);
  tenant_quota_settle(&q, 0, 5, 10);
}

/* ---- routes ---- */

Test(route, config_errors) {
  expect_error("\"routes\":{\"x\":{\"strategy\":\"random\",\"targets\":[\"lower\"]}}",
               "unknown strategy 'random'");
  expect_error("\"routes\":{\"x\":{\"targets\":[\"lower\"]}}", "needs a 'strategy'");
  expect_error("\"routes\":{\"x\":{\"strategy\":\"weighted\"}}", "has no 'targets'");
  expect_error("\"routes\":{\"x\":{\"strategy\":\"weighted\",\"targets\":[{\"model\":\"lower\",\"weight\":0},"
               "{\"model\":\"upper\",\"weight\":0}]}}",
               "weights sum to zero");
  expect_error("\"routes\":{\"x\":{\"strategy\":\"weighted\",\"targets\":[{\"model\":\"lower\",\"weight\":-1}]}}",
               "integer in [0, 1000000]");
  expect_error("\"routes\":{\"x\":{\"strategy\":\"weighted\",\"targets\":[{\"model\":\"lower\",\"weight\":1e12}]}}",
               "integer in [0, 1000000]");
  expect_error("\"routes\":{\"x\":{\"strategy\":\"weighted\",\"targets\":[{\"model\":\"lower\",\"weight\":0.5}]}}",
               "integer in [0, 1000000]");
  expect_error("\"routes\":{\"x\":{\"strategy\":\"weighted\",\"targets\":[\"lower\"]}}",
               "weighted targets are");
  expect_error("\"routes\":{\"x\":{\"strategy\":\"weighted\",\"targets\":[{\"model\":\"lower\",\"weight\":1,\"w\":2}]}}",
               "weighted targets are");
  expect_error("\"routes\":{\"x\":{\"strategy\":\"least_loaded\",\"targets\":[]}}", "1 to 8 models");
  expect_error("\"routes\":{\"x\":{\"strategy\":\"least_loaded\",\"targets\":[\"lower\"],\"seed\":3}}",
               "'seed' is for weighted routes");
  expect_error("\"routes\":{\"x\":{\"strategy\":\"fallback\",\"targets\":[\"lower\"],\"extra\":1}}",
               "unknown key 'extra'");
  expect_error("\"routes\":{\"x\":7}", "must be a list of models or an object");
  expect_error("\"routes\":{\"x\":[\"lower\",\"lower\"]}", "names model 'lower' twice");
  expect_error("\"routes\":{\"x\":[\"small\",\"lower\"]}", "names model 'lower' twice"); /* via alias */
  /* a route naming a route (itself, another, or through an alias): refused, so no cycle */
  expect_error("\"routes\":{\"x\":[\"x\"]}", "routes do not nest");
  expect_error("\"routes\":{\"x\":[\"lower\",\"y\"],\"y\":[\"x\"]}", "routes do not nest");
  expect_error("\"aliases\":{\"ax\":\"x\"},\"routes\":{\"x\":[\"ax\"]}", "routes do not nest");
}

static void route_of(const char *extra, const char *name, registry *g) {
  qv_error err = {0};
  cr_assert_eq(load(extra, g, &err), 0, "%s", err.msg);
  cr_assert(registry_route_of(g, name), "no route %s", name);
}

Test(route, weighted_distribution_and_determinism) {
  registry g;
  route_of("\"routes\":{\"w\":{\"strategy\":\"weighted\",\"targets\":[{\"model\":\"lower\",\"weight\":90},"
           "{\"model\":\"upper\",\"weight\":10}],\"seed\":7}},\"aliases\":{\"wa\":\"w\"}",
           "wa", &g);
  const reg_route *rt = registry_route_of(&g, "wa");
  cr_assert_eq(rt->strategy, REG_ROUTE_WEIGHTED);
  int32_t out[REG_MAX_ROUTE_LEN];
  int counts[2] = {0, 0};
  const int N = 20000;
  for (int i = 1; i <= N; i++) {
    cr_assert_eq(route_order(rt, qv_mix64((uint64_t)i), NULL, out), 2);
    cr_assert_neq(out[0], out[1]); /* the other target stays as the fallback */
    counts[out[0]]++;
  }
  /* 90/10: binomial sd = sqrt(N * 0.09) ~ 42; 5 sd */
  cr_assert(abs(counts[1] - N / 10) < 215, "upper drawn %d of %d", counts[1], N);
  /* the same request id, the same model; the seed changes the draw */
  char id[32];
  int same = 0, moved = 0;
  for (int i = 0; i < 200; i++) {
    snprintf(id, sizeof id, "req-%d", i);
    uint64_t d = route_draw_of_id(id);
    cr_assert_eq(d, route_draw_of_id(id));
    int32_t a[2], b[2];
    route_order(rt, d, NULL, a);
    route_order(rt, d, NULL, b);
    same += a[0] == b[0];
    reg_route other = *rt;
    other.seed = 8;
    route_order(&other, d, NULL, b);
    moved += a[0] != b[0];
  }
  cr_assert_eq(same, 200);
  cr_assert(moved > 0);
  registry_deinit(&g);
  /* a zero weight is never drawn first but stays a fallback */
  route_of("\"routes\":{\"w\":{\"strategy\":\"weighted\",\"targets\":[{\"model\":\"lower\",\"weight\":0},"
           "{\"model\":\"upper\",\"weight\":5}]}}",
           "w", &g);
  rt = registry_route_of(&g, "w");
  for (int i = 0; i < 1000; i++) {
    route_order(rt, qv_mix64((uint64_t)i), NULL, out);
    cr_assert_eq(out[0], 1);
    cr_assert_eq(out[1], 0);
  }
  registry_deinit(&g);
}

Test(route, least_loaded_and_fallback_order) {
  registry g;
  route_of("\"routes\":{\"p\":{\"strategy\":\"least_loaded\",\"targets\":[\"upper\",\"lower\"]},"
           "\"f\":{\"strategy\":\"fallback\",\"targets\":[\"upper\",\"lower\"]},"
           "\"r\":[\"lower\",\"upper\"]}",
           "p", &g);
  const reg_route *rt = registry_route_of(&g, "p");
  int32_t out[REG_MAX_ROUTE_LEN];
  int64_t load[2] = {0, 0}; /* [lower, upper] */
  route_order(rt, 0, load, out);
  cr_assert(out[0] == 1 && out[1] == 0, "ties keep the listed order");
  load[1] = 3;
  route_order(rt, 0, load, out);
  cr_assert(out[0] == 0 && out[1] == 1);
  load[0] = 4;
  route_order(rt, 0, load, out);
  cr_assert(out[0] == 1 && out[1] == 0);
  route_order(rt, 0, NULL, out);
  cr_assert(out[0] == 1 && out[1] == 0);
  rt = registry_route_of(&g, "f");
  route_order(rt, 12345, load, out);
  cr_assert(out[0] == 1 && out[1] == 0, "fallback ignores load and draw");
  /* the array form is the fallback strategy */
  rt = registry_route_of(&g, "r");
  cr_assert_eq(rt->strategy, REG_ROUTE_FALLBACK);
  registry_deinit(&g);
}

/* ---- the server with tenants (fake engine) ---- */

static const char *k_server_cfg =
    "{\"models\":[{\"name\":\"lower\",\"path\":\"/fake/a\"},{\"name\":\"upper\",\"path\":\"/fake/b\"}],"
    "\"aliases\":{\"small\":\"lower\"},"
    "\"routes\":{\"w\":{\"strategy\":\"weighted\",\"targets\":[{\"model\":\"lower\",\"weight\":1},"
    "{\"model\":\"upper\",\"weight\":1}]},"
    "\"ll\":{\"strategy\":\"least_loaded\",\"targets\":[\"lower\",\"upper\"]}},"
    "\"api_keys\":[\"sk-root\"],"
    "\"tenants\":[{\"name\":\"team-a\",\"keys\":[\"sk-a\"],\"models\":[\"small\"],"
    "\"requests_per_minute\":2,\"window_s\":4},"
    "{\"name\":\"team-t\",\"keys\":[\"sk-t\"],\"tokens_per_minute\":30},"
    "{\"name\":\"team-r\",\"keys\":[\"sk-r\"],\"tokens_per_minute\":30},"
    "{\"name\":\"chat-only\",\"keys\":[\"sk-c\"],\"endpoints\":[\"/v1/chat/completions\"]}]}";

static int count_names(const char *body) {
  cJSON *j = cJSON_Parse(body);
  int n = cJSON_GetArraySize(cJSON_GetObjectItem(j, "data"));
  cJSON_Delete(j);
  return n;
}

Test(tenant_server, permissions_in_both_dialects) {
  start(k_server_cfg, NULL, 0, 0);
  const char *ka = "Authorization: Bearer sk-a\r\n";
  resp r = request("GET", "/v1/models", NULL, ka);
  cr_assert_eq(r.status, 200);
  cr_assert_eq(count_names(r.body), 1, "%s", r.body);
  cr_assert(strstr(r.body, "\"id\":\"small\""), "%s", r.body);
  free(r.body);
  r = request("GET", "/v1/models/upper", NULL, ka);
  cr_assert_eq(r.status, 404);
  free(r.body);
  r = request("GET", "/v1/models", NULL, "Authorization: Bearer sk-root\r\n");
  cr_assert_eq(count_names(r.body), 5, "%s", r.body); /* unrestricted key: everything */
  free(r.body);
  /* allowed: the alias; its target by name is not */
  r = request("POST", "/v1/completions", "{\"model\":\"small\",\"prompt\":\"x\",\"max_tokens\":2}", ka);
  cr_assert_eq(r.status, 200, "%s", r.body);
  free(r.body);
  r = request("POST", "/v1/completions", "{\"model\":\"upper\",\"prompt\":\"x\"}", ka);
  cr_assert_eq(r.status, 403, "%s", r.body);
  cr_assert(strstr(r.body, "\"type\":\"permission_error\""), "%s", r.body);
  cr_assert(strstr(r.body, "\"code\":\"model_not_allowed\""), "%s", r.body);
  cr_assert(!strstr(r.body, "sk-a"), "%s", r.body);
  free(r.body);
  /* a 404 lists only what the key may use */
  r = request("POST", "/v1/completions", "{\"model\":\"ghost\",\"prompt\":\"x\"}", ka);
  cr_assert_eq(r.status, 404, "%s", r.body);
  cr_assert(strstr(r.body, "small") && !strstr(r.body, "upper"), "%s", r.body);
  free(r.body);
  /* Anthropic shape, keyed by x-api-key */
  r = request("POST", "/v1/messages",
              "{\"model\":\"upper\",\"max_tokens\":4,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
              "x-api-key: sk-a\r\n");
  cr_assert_eq(r.status, 403, "%s", r.body);
  cr_assert(strstr(r.body, "\"type\":\"error\"") && strstr(r.body, "\"type\":\"permission_error\""), "%s",
            r.body);
  free(r.body);
  /* no model named: the tenant's first allowed name */
  r = request("POST", "/v1/completions", "{\"prompt\":\"x\",\"max_tokens\":2}", ka);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cr_assert(strcasestr(r.head, "X-Quiver-Model: lower"), "%s", r.head);
  free(r.body);
  /* endpoint restriction: answered at the headers, in the route's dialect */
  r = request("POST", "/v1/completions", "{\"prompt\":\"x\"}", "Authorization: Bearer sk-c\r\n");
  cr_assert_eq(r.status, 403, "%s", r.body);
  cr_assert(strstr(r.body, "endpoint_not_allowed"), "%s", r.body);
  free(r.body);
  r = request("POST", "/v1/messages",
              "{\"model\":\"upper\",\"max_tokens\":4,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
              "x-api-key: sk-c\r\n");
  cr_assert_eq(r.status, 403, "%s", r.body);
  cr_assert(strstr(r.body, "\"type\":\"permission_error\""), "%s", r.body);
  free(r.body);
  r = request("POST", "/v1/chat/completions",
              "{\"model\":\"upper\",\"max_tokens\":2,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
              "Authorization: Bearer sk-c\r\n");
  cr_assert_eq(r.status, 200, "%s", r.body);
  free(r.body);
  /* wrong or missing keys are 401; /health stays open */
  r = request("POST", "/v1/completions", "{\"prompt\":\"x\"}", "Authorization: Bearer sk-\r\n");
  cr_assert_eq(r.status, 401);
  free(r.body);
  r = request("GET", "/health", NULL, NULL);
  cr_assert_eq(r.status, 200);
  free(r.body);
  /* per-tenant metrics: names, never keys */
  r = request("GET", "/metrics", NULL, "Authorization: Bearer sk-root\r\n");
  cr_assert_eq(r.status, 200);
  cr_assert(strstr(r.body, "quiver_tenant_requests_total{tenant=\"team-a\",status=\"403\"} 2"), "%s", r.body);
  cr_assert(strstr(r.body, "quiver_tenant_requests_total{tenant=\"chat-only\",status=\"403\"} 2"));
  cr_assert(strstr(r.body, "quiver_tenant_requests_total{tenant=\"team-a\",status=\"200\"} 3"));
  cr_assert(strstr(r.body, "quiver_requests_total{model=\"upper\",status=\"403\"} 2"), "%s", r.body);
  cr_assert(strstr(r.body, "quiver_tenant_request_duration_seconds_count{tenant=\"team-a\"}"));
  cr_assert(!strstr(r.body, "sk-a") && !strstr(r.body, "sk-c"));
  free(r.body);
  stop();
}

static int retry_after(const resp *r) {
  const char *h = strcasestr(r->head, "Retry-After: ");
  return h ? atoi(h + 13) : -1;
}

Test(tenant_server, quota_429_retry_after_and_recovery) {
  start(k_server_cfg, NULL, 0, 0);
  const char *ka = "Authorization: Bearer sk-a\r\n";
  const char *body = "{\"model\":\"small\",\"prompt\":\"x\",\"max_tokens\":2}";
  resp r;
  for (int i = 0; i < 2; i++) {
    r = request("POST", "/v1/completions", body, ka);
    cr_assert_eq(r.status, 200, "%s", r.body);
    cr_assert(strcasestr(r.head, "x-ratelimit-limit-requests: 2\r\n"), "%s", r.head);
    cr_assert(strcasestr(r.head, i ? "x-ratelimit-remaining-requests: 0\r\n"
                                   : "x-ratelimit-remaining-requests: 1\r\n"),
              "%s", r.head);
    cr_assert(!strcasestr(r.head, "x-ratelimit-limit-tokens"), "%s", r.head);
    free(r.body);
  }
  r = request("POST", "/v1/completions", body, ka);
  cr_assert_eq(r.status, 429, "%s", r.body);
  cr_assert(strstr(r.body, "rate_limit_exceeded") && strstr(r.body, "requests"), "%s", r.body);
  int ra = retry_after(&r); /* under 2 s to the next request, rounded up */
  cr_assert(ra == 1 || ra == 2, "%s", r.head);
  free(r.body);
  usleep(2100 * 1000);
  r = request("POST", "/v1/completions", body, ka);
  cr_assert_eq(r.status, 200, "recovers: %s", r.body);
  free(r.body);
  /* tokens: 30 per minute (0.5 per second). "x" is 2 prompt tokens; max_tokens 8 reserves 10
   * and the fake uses all of it. */
  const char *kt = "Authorization: Bearer sk-t\r\n";
  const char *tb = "{\"model\":\"lower\",\"prompt\":\"x\",\"max_tokens\":8}";
  for (int i = 0; i < 3; i++) {
    r = request("POST", "/v1/completions", tb, kt);
    cr_assert_eq(r.status, 200, "%d: %s", i, r.body);
    cr_assert(strcasestr(r.head, "x-ratelimit-limit-tokens: 30\r\n"), "%s", r.head);
    free(r.body);
  }
  r = request("POST", "/v1/completions", tb, kt);
  cr_assert_eq(r.status, 429, "%s", r.body);
  cr_assert(strstr(r.body, "on tokens"), "%s", r.body);
  ra = retry_after(&r);
  cr_assert(ra >= 15 && ra <= 20, "Retry-After %d", ra); /* 10 tokens at 0.5/s, minus refill */
  free(r.body);
  r = request("POST", "/v1/completions", "{\"model\":\"lower\",\"prompt\":\"x\",\"max_tokens\":29}", kt);
  cr_assert_eq(r.status, 429, "%s", r.body); /* 31 > 30: can never fit */
  cr_assert(strstr(r.body, "request_too_large"), "%s", r.body);
  cr_assert_eq(retry_after(&r), -1, "%s", r.head);
  free(r.body);
  /* Refunds: max_tokens 28 reserves 30, the stop string ends the answer after 2 letters
   * ("cd", then 'e' stops), so 26 come back and a request reserving 26 fits. */
  const char *kr = "Authorization: Bearer sk-r\r\n";
  r = request("POST", "/v1/completions",
              "{\"model\":\"lower\",\"prompt\":\"x\",\"max_tokens\":28,\"stop\":[\"e\"]}", kr);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cr_assert(strstr(r.body, "\"text\":\"cd\""), "%s", r.body);
  free(r.body);
  r = request("POST", "/v1/completions", "{\"model\":\"lower\",\"prompt\":\"x\",\"max_tokens\":24}", kr);
  cr_assert_eq(r.status, 200, "refunded: %s", r.body);
  free(r.body);
  r = request("POST", "/v1/completions", "{\"model\":\"lower\",\"prompt\":\"x\",\"max_tokens\":1}", kr);
  cr_assert_eq(r.status, 429, "spent: %s", r.body);
  free(r.body);
  r = request("GET", "/metrics", NULL, "Authorization: Bearer sk-root\r\n");
  cr_assert(strstr(r.body, "quiver_tenant_rate_limited_total{tenant=\"team-a\",limit=\"requests\"} 1"), "%s",
            r.body);
  cr_assert(strstr(r.body, "quiver_tenant_rate_limited_total{tenant=\"team-t\",limit=\"tokens\"} 2"));
  cr_assert(strstr(r.body, "quiver_tenant_prompt_tokens_total{tenant=\"team-t\"} 6"), "%s", r.body);
  cr_assert(strstr(r.body, "quiver_tenant_generation_tokens_total{tenant=\"team-t\"} 24"), "%s", r.body);
  cr_assert(strstr(r.body, "quiver_tenant_generation_tokens_total{tenant=\"team-r\"} 26"), "%s", r.body);
  free(r.body);
  stop();
}

Test(tenant_server, weighted_and_least_loaded_routes) {
  start(k_server_cfg, "sk-x", 0, 0);
  const char *auth = "Authorization: Bearer sk-x\r\n";
  const char *body = "{\"model\":\"w\",\"prompt\":\"x\",\"max_tokens\":1}";
  int upper = 0, lower = 0;
  for (int i = 0; i < 60; i++) {
    resp r = request("POST", "/v1/completions", body, auth);
    cr_assert_eq(r.status, 200, "%s", r.body);
    upper += strcasestr(r.head, "X-Quiver-Model: upper") != NULL;
    lower += strcasestr(r.head, "X-Quiver-Model: lower") != NULL;
    free(r.body);
  }
  cr_assert_eq(upper + lower, 60);
  cr_assert(upper >= 15 && lower >= 15, "50/50 split gave %d/%d", lower, upper);
  /* X-Request-Id pins the draw */
  char hdr[128];
  for (int i = 0; i < 5; i++) {
    snprintf(hdr, sizeof hdr, "%sX-Request-Id: pinned-%d\r\n", auth, i);
    resp a = request("POST", "/v1/completions", body, hdr);
    resp b = request("POST", "/v1/completions", body, hdr);
    const char *ma = strcasestr(a.head, "X-Quiver-Model: "), *mb = strcasestr(b.head, "X-Quiver-Model: ");
    cr_assert(ma && mb && ma[16] == mb[16], "%s / %s", a.head, b.head);
    free(a.body);
    free(b.body);
  }
  /* least_loaded: with lower busy (held), the next request goes to upper; idle: lower */
  resp r = request("POST", "/v1/completions", "{\"model\":\"ll\",\"prompt\":\"x\",\"max_tokens\":1}", auth);
  cr_assert(strcasestr(r.head, "X-Quiver-Model: lower"), "%s", r.head);
  free(r.body);
  fake_set_hold(&H.fakes[0], 1);
  client *c = client_open();
  const char *held = "{\"model\":\"lower\",\"prompt\":\"x\",\"max_tokens\":3}";
  char req[512];
  int n = snprintf(req, sizeof req,
                   "POST /v1/completions HTTP/1.1\r\n%sContent-Length: %zu\r\n\r\n%s", auth,
                   strlen(held), held);
  client_send(c, req, (size_t)n);
  for (int i = 0; i < 500 && fake_n_active(&H.fakes[0]) < 1; i++) usleep(10000);
  cr_assert_eq(fake_n_active(&H.fakes[0]), 1);
  r = request("POST", "/v1/completions", "{\"model\":\"ll\",\"prompt\":\"x\",\"max_tokens\":1}", auth);
  cr_assert_eq(r.status, 200, "%s", r.body);
  cr_assert(strcasestr(r.head, "X-Quiver-Model: upper"), "%s", r.head);
  free(r.body);
  fake_set_hold(&H.fakes[0], 0);
  resp r1;
  cr_assert(read_resp(c, &r1));
  cr_assert_eq(r1.status, 200);
  free(r1.body);
  client_close(c);
  stop();
}

/* A burst to a least_loaded route spreads: each pick counts until its request is submitted. */
Test(tenant_server, least_loaded_burst_spreads) {
  start(k_server_cfg, "sk-x", 0, 0);
  fake_set_hold(&H.fakes[0], 1);
  fake_set_hold(&H.fakes[1], 1);
  const char *body = "{\"model\":\"ll\",\"prompt\":\"x\",\"max_tokens\":2}";
  char req[512];
  int n = snprintf(req, sizeof req,
                   "POST /v1/completions HTTP/1.1\r\nAuthorization: Bearer sk-x\r\n"
                   "Content-Length: %zu\r\n\r\n%s",
                   strlen(body), body);
  client *cs[6];
  for (int i = 0; i < 6; i++) {
    cs[i] = client_open();
    client_send(cs[i], req, (size_t)n);
  }
  for (int i = 0; i < 500 && fake_n_active(&H.fakes[0]) + fake_n_active(&H.fakes[1]) < 6; i++)
    usleep(10000);
  cr_assert_eq(fake_n_active(&H.fakes[0]), 3);
  cr_assert_eq(fake_n_active(&H.fakes[1]), 3);
  fake_set_hold(&H.fakes[0], 0);
  fake_set_hold(&H.fakes[1], 0);
  for (int i = 0; i < 6; i++) {
    resp r;
    cr_assert(read_resp(cs[i], &r));
    cr_assert_eq(r.status, 200, "%s", r.body);
    free(r.body);
    client_close(cs[i]);
  }
  stop();
}
