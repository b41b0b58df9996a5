/* The fleet's configuration: --memory-budget spellings (bytes with SI or binary suffixes, a
 * fraction of RAM) and rejections, --admin-key (never equal to a user key), and the per-model
 * config keys load, pin, keep_alive, min_kv, max_kv with their validation. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/serve_cfg.h"
#include "server/registry.h"

#define A(...) ((const char *const[]){__VA_ARGS__, NULL})

static int parse(const char *const *args, serve_cfg *c, qv_error *err) {
  char *argv[16] = {"serve"};
  int argc = 1;
  for (; args[argc - 1]; argc++) argv[argc] = (char *)args[argc - 1];
  return serve_cfg_parse(c, argc, argv, err);
}

Test(fleet_cfg, memory_budget_spellings) {
  unsetenv("QUIVER_API_KEY");
  const struct {
    const char *arg;
    int64_t bytes;
  } ok[] = {{"8G", 8000000000}, {"512Mi", 536870912}, {"600000000", 600000000}, {"1.5Gi", 1610612736},
            {"2K", 2000}};
  for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
    serve_cfg c;
    qv_error err = {0};
    cr_assert_eq(parse(A("--memory-budget", ok[i].arg), &c, &err), 0, "%s: %s", ok[i].arg, err.msg);
    cr_expect_eq(c.lo.memory_budget, ok[i].bytes, "%s -> %lld", ok[i].arg, (long long)c.lo.memory_budget);
    serve_cfg_deinit(&c);
  }
  serve_cfg c;
  qv_error err = {0};
  cr_assert_eq(parse(A("--memory-budget", "0.5"), &c, &err), 0, "%s", err.msg);
  double ram = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
  cr_expect((double)c.lo.memory_budget > 0.49 * ram && (double)c.lo.memory_budget < 0.51 * ram);
  serve_cfg_deinit(&c);
  const char *bad[] = {"0", "-1", "lots", "8X", "1e30", "0.5G0"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    qv_error e = {0};
    cr_expect_neq(parse(A("--memory-budget", bad[i]), &c, &e), 0, "%s accepted", bad[i]);
    cr_expect(strstr(e.msg, "--memory-budget"), "%s: %s", bad[i], e.msg);
    serve_cfg_deinit(&c);
  }
}

Test(fleet_cfg, admin_keys_differ_from_user_keys) {
  unsetenv("QUIVER_API_KEY");
  serve_cfg c;
  qv_error err = {0};
  cr_assert_eq(parse(A("--admin-key", "adm", "--api-key", "user"), &c, &err), 0, "%s", err.msg);
  cr_assert_eq(c.reg.n_admin_keys, 1);
  cr_assert_str_eq(c.reg.admin_keys[0], "adm");
  serve_cfg_deinit(&c);
  cr_assert_neq(parse(A("--admin-key", "same", "--api-key", "same"), &c, &err), 0);
  cr_assert(strstr(err.msg, "admin key must differ"), "%s", err.msg);
  serve_cfg_deinit(&c);
}

Test(fleet_cfg, model_keys) {
  registry g;
  registry_init(&g);
  qv_error err = {0};
  const char *cfg = "{\"admin_keys\": [\"a1\"], \"models\": ["
                    "{\"name\": \"x\", \"path\": \"/m/x\", \"load\": \"on_demand\", \"pin\": true,"
                    " \"keep_alive\": 30.5, \"min_kv\": 8, \"max_kv\": 64},"
                    "{\"name\": \"y\", \"path\": \"/m/y\"}]}";
  cr_assert_eq(registry_load_json(&g, cfg, strlen(cfg), &err), 0, "%s", err.msg);
  cr_assert_eq(g.n_admin_keys, 1);
  const reg_model *x = &g.models[0], *y = &g.models[1];
  cr_assert(x->on_demand && x->pin && x->keep_alive_s == 30.5 && x->min_kv == 8 && x->max_kv == 64);
  cr_assert(!y->on_demand && !y->pin && y->keep_alive_s == 0 && !y->min_kv && !y->max_kv);
  registry_deinit(&g);
  const struct {
    const char *cfg, *msg;
  } bad[] = {
      {"{\"models\": [{\"path\": \"/m\", \"load\": \"lazy\"}]}", "'load' must be"},
      {"{\"models\": [{\"path\": \"/m\", \"pin\": 1}]}", "'pin' must be"},
      {"{\"models\": [{\"path\": \"/m\", \"keep_alive\": -1}]}", "'keep_alive' must be"},
      {"{\"models\": [{\"path\": \"/m\", \"min_kv\": 9, \"max_kv\": 8}]}", "exceeds max_kv"},
      {"{\"models\": [{\"path\": \"/m\", \"max_kv\": 1.5}]}", "'max_kv' must be an integer"},
      {"{\"admin_keys\": \"k\"}", "'admin_keys' must be an array"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    registry_init(&g);
    qv_error e = {0};
    cr_expect_eq(registry_load_json(&g, bad[i].cfg, strlen(bad[i].cfg), &e), QV_EINVAL, "%s", bad[i].cfg);
    cr_expect(strstr(e.msg, bad[i].msg), "%s: got '%s'", bad[i].cfg, e.msg);
    registry_deinit(&g);
  }
}

static int never(void *arg, int32_t idx) { (void)arg; (void)idx; return 0; }
static int always(void *arg, int32_t idx) { (void)arg; (void)idx; return 1; }

/* The admin API's run-time add (registry_add_model_json): the config file's per-model keys,
 * strictly checked, a taken name refused, the fixed capacity enforced, nothing added on error. */
Test(fleet_cfg, add_model_json_validates_and_rolls_back) {
  registry r;
  registry_init(&r);
  qv_error err = {0};
  static const char cfg[] = "{\"models\": [{\"name\": \"a\", \"path\": \"quiver-tiny\", \"aliases\": [\"al\"]}]}";
  cr_assert_eq(registry_load_json(&r, cfg, strlen(cfg), &err), 0, "%s", err.msg);
  int32_t idx = -1;
  static const char ok[] = "{\"name\": \"s\", \"path\": \"/m/s\", \"load\": \"on_demand\", \"pin\": true, "
                           "\"keep_alive\": 30, \"min_kv\": 4, \"max_kv\": 64, \"max_model_len\": 256}";
  cr_assert_eq(registry_add_model_json(&r, ok, strlen(ok), NULL, NULL, &idx, &err), 0, "%s", err.msg);
  cr_assert_eq(idx, 1);
  const reg_model *m = &r.models[1];
  cr_expect_str_eq(m->name, "s");
  cr_expect_str_eq(m->path, "/m/s");
  cr_expect(m->on_demand && m->pin && m->keep_alive_s == 30 && m->min_kv == 4 && m->max_kv == 64 &&
            m->max_model_len == 256);
  const struct {
    const char *body;
    int rc;
  } bad[] = {{"{\"name\": \"x\", \"path\": \"/p\", \"colour\": 1}", QV_EINVAL},
             {"{\"name\": \"x\", \"path\": \"/p\", \"aliases\": [\"y\"]}", QV_EINVAL},
             {"{\"name\": \"has space\", \"path\": \"/p\"}", QV_EINVAL},
             {"{\"name\": \"x\"}", QV_EINVAL},
             {"{\"name\": \"x\", \"path\": \"\"}", QV_EINVAL},
             {"[1]", QV_EINVAL},
             {"{\"name\": \"x\", \"path\": \"/p\"", QV_EINVAL},
             {"{\"name\": \"x\", \"path\": \"/p\", \"min_kv\": 9, \"max_kv\": 2}", QV_EINVAL},
             {"{\"name\": \"x\", \"path\": \"/p\", \"device\": \"tpu\"}", QV_EINVAL},
             {"{\"name\": \"x\", \"path\": \"/p\", \"load\": \"later\"}", QV_EINVAL},
             {"{\"name\": \"a\", \"path\": \"/p\"}", QV_ESTATE},
             {"{\"name\": \"s\", \"path\": \"/p\"}", QV_ESTATE},
             {"{\"name\": \"al\", \"path\": \"/p\"}", QV_ESTATE}};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    qv_error e = {0};
    cr_expect_eq(registry_add_model_json(&r, bad[i].body, strlen(bad[i].body), NULL, NULL, &idx, &e), bad[i].rc,
                 "%s -> %s", bad[i].body, e.msg);
    cr_expect_eq(r.n_models, 2, "%s left a model behind", bad[i].body);
  }
  /* A removed model's name is free; adding it again takes its slot back once it is idle. */
  r.models[1].removed = 1;
  cr_expect_eq(registry_resolve(&r, "s", &idx, 1), 0, "a removed model resolves no more");
  static const char again[] = "{\"name\": \"s\", \"path\": \"/m/s2\"}";
  cr_expect_eq(registry_add_model_json(&r, again, strlen(again), never, NULL, &idx, &err), QV_EBUSY);
  static const char bad_pin[] = "{\"name\": \"s\", \"path\": \"/p\", \"pin\": 1}";
  cr_expect_eq(registry_add_model_json(&r, bad_pin, strlen(bad_pin), always, NULL, &idx, &err), QV_EINVAL,
               "a bad body leaves the slot alone");
  cr_expect(r.models[1].removed && !strcmp(r.models[1].path, "/m/s"));
  cr_assert_eq(registry_add_model_json(&r, again, strlen(again), always, NULL, &idx, &err), 0, "%s", err.msg);
  cr_expect_eq(idx, 1);
  cr_expect(!r.models[1].removed && r.models[1].added && !r.models[1].pin && !strcmp(r.models[1].path, "/m/s2"));
  cr_expect_eq(registry_resolve(&r, "s", &idx, 1), 1);
  cr_expect_eq(r.n_models, 2);
  char body[128];
  while (r.n_models < REG_MAX_MODELS) {
    snprintf(body, sizeof body, "{\"name\": \"m%d\", \"path\": \"/p\"}", (int)r.n_models);
    cr_assert_eq(registry_add_model_json(&r, body, strlen(body), NULL, NULL, &idx, &err), 0, "%s", err.msg);
  }
  snprintf(body, sizeof body, "{\"name\": \"one-more\", \"path\": \"/p\"}");
  cr_expect_eq(registry_add_model_json(&r, body, strlen(body), NULL, NULL, &idx, &err), QV_ELIMIT);
  cr_expect_eq(r.n_models, REG_MAX_MODELS);
  registry_deinit(&r);
}
