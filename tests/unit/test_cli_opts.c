/* The table-driven option parser (src/cli/opts.c) and quiver serve's configuration
 * (src/cli/serve_cfg.c): every spelling of an option (quiver's, vLLM's, llama.cpp's, --flag=value,
 * the positional model) must give the same configuration as the canonical one, and unknown or
 * malformed options must fail with a message that names them. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/opts.h"
#include "cli/serve_cfg.h"

#define MAX_ARGS 16

/* Everything a serve configuration decides, as one comparable string. */
static void describe(const serve_cfg *c, char *out, size_t cap) {
  int n = snprintf(out, cap, "host=%s port=%d models=", c->so.host, c->so.port);
  for (int32_t i = 0; i < c->reg.n_models; i++)
    n += snprintf(out + n, cap - (size_t)n, "%s:%s,", c->reg.models[i].name, c->reg.models[i].path);
  n += snprintf(out + n, cap - (size_t)n, " aliases=");
  for (int32_t i = 0; i < c->reg.n_aliases; i++)
    n += snprintf(out + n, cap - (size_t)n, "%s>%s,", c->reg.aliases[i].name, c->reg.aliases[i].target);
  const srv_load_opts *l = &c->lo;
  n += snprintf(out + n, cap - (size_t)n,
                " dev=%s thr=%d mml=%d seqs=%d wait=%d batched=%d bs=%d kvb=%d mem=%g pc=%d dtype=%s"
                " seed=%d:%llu tmpl=%s tools=%d reason=%d",
                l->device ? l->device : "-", l->n_threads, l->max_model_len, l->max_num_seqs,
                l->max_waiting, l->max_num_batched_tokens, l->block_size, l->n_kv_blocks,
                l->kv_mem_fraction, l->prefix_caching, l->dtype ? l->dtype : "-", l->has_seed,
                (unsigned long long)l->seed, l->chat_template ? l->chat_template : "-",
                l->tool_parser, (int)l->reasoning);
  const http_limits *h = &c->so.limits;
  n += snprintf(out + n, cap - (size_t)n,
                " body=%zu hdr=%zu hto=%llu bto=%llu ito=%llu conns=%d drain=%llu log=%d level=%s",
                h->max_body_bytes, h->max_header_bytes, (unsigned long long)h->header_timeout_ms,
                (unsigned long long)h->body_timeout_ms, (unsigned long long)h->idle_timeout_ms,
                h->max_connections, (unsigned long long)c->so.drain_timeout_ms, h->access_log,
                c->log_level ? c->log_level : "-");
  n += snprintf(out + n, cap - (size_t)n, " cors=%s", c->so.cors ? "on:" : "off");
  for (int i = 0; c->so.cors && i < c->cors.n_origins; i++)
    n += snprintf(out + n, cap - (size_t)n, "%s,", c->cors.origins[i]);
  snprintf(out + n, cap - (size_t)n, " tls=%s:%s:%s", c->tls.certfile ? c->tls.certfile : "-",
           c->tls.keyfile ? c->tls.keyfile : "-", c->tls.ca_certs ? c->tls.ca_certs : "-");
}

/* Parses a NULL-terminated list of arguments (after "serve"); returns the parse result. */
static int parse(const char *const *args, serve_cfg *c, qv_error *err) {
  char *argv[MAX_ARGS + 1] = {"serve"};
  int argc = 1;
  for (; args[argc - 1]; argc++) argv[argc] = (char *)args[argc - 1];
  return serve_cfg_parse(c, argc, argv, err);
}

static void expect_same(const char *const *canon, const char *const *alias) {
  serve_cfg a, b;
  qv_error ea = {0}, eb = {0};
  int ra = parse(canon, &a, &ea), rb = parse(alias, &b, &eb);
  cr_assert_eq(ra, 0, "canonical %s ...: %s", canon[0], ea.msg);
  cr_assert_eq(rb, 0, "alias %s ...: %s", alias[0], eb.msg);
  char da[2048], db[2048];
  describe(&a, da, sizeof da);
  describe(&b, db, sizeof db);
  cr_assert_str_eq(da, db, "%s differs from %s", alias[0], canon[0]);
  /* And the option changed something: a spelling that parses to the default proves nothing. */
  serve_cfg d;
  static const char *const none[] = {NULL};
  cr_assert_eq(parse(none, &d, &ea), 0);
  char dd[2048];
  describe(&d, dd, sizeof dd);
  cr_assert_str_neq(da, dd, "%s changed nothing", canon[0]);
  serve_cfg_deinit(&a);
  serve_cfg_deinit(&b);
  serve_cfg_deinit(&d);
}

#define A(...) ((const char *const[]){__VA_ARGS__, NULL})

Test(cli_opts, every_serve_spelling_matches_the_canonical_one) {
  unsetenv("QUIVER_API_KEY");
  const struct {
    const char *const *canon, *const *alias;
  } cases[] = {
      /* positional model, short and --flag=value forms */
      {A("--model", "/m/llama"), A("/m/llama")},
      {A("--model", "/m/llama"), A("-m", "/m/llama")},
      {A("--model", "/m/llama"), A("--model=/m/llama")},
      {A("--model", "x=/m/llama"), A("/m/llama", "--served-model-name", "x")},
      {A("--model", "x=/m/llama"), A("-m", "/m/llama", "-a", "x")},
      {A("--model", "x=/m/llama"), A("-m", "/m/llama", "--alias", "x")},
      {A("--model", "x=/m/llama", "--alias", "y=x"),
       A("/m/llama", "--served-model-name", "x", "--served-model-name=y")},
      {A("--host", "0.0.0.0", "--port", "9000"), A("--host=0.0.0.0", "--port=9000")},
      /* shared engine options: vLLM, quiver-old and llama.cpp spellings */
      {A("--max-model-len", "512"), A("-c", "512")},
      {A("--max-model-len", "512"), A("--ctx-size", "512")},
      {A("--max-model-len", "512"), A("--max-model-len=512")},
      {A("--max-num-seqs", "8"), A("-np", "8")},
      {A("--max-num-seqs", "8"), A("--parallel", "8")},
      {A("--max-num-batched-tokens", "256"), A("--max-batch-tokens", "256")},
      {A("--max-num-batched-tokens", "256"), A("-b", "256")},
      {A("--max-num-batched-tokens", "256"), A("--batch-size=256")},
      {A("--num-kv-blocks", "100"), A("--n-kv-blocks", "100")},
      {A("--num-kv-blocks", "100"), A("--num-gpu-blocks-override", "100")},
      {A("--threads", "3"), A("-t", "3")},
      {A("--block-size", "32"), A("--block-size=32")},
      {A("--gpu-memory-utilization", "0.5"), A("--gpu-memory-utilization=0.5")},
      {A("--no-enable-prefix-caching"), A("--no-prefix-caching")},
      {A("--enable-prefix-caching"), A("--enable-prefix-caching", "--tensor-parallel-size", "1")},
      {A("--dtype", "float32"), A("--dtype", "float")},
      {A("--dtype", "float16"), A("--dtype=half")},
      {A("--seed", "42"), A("-s", "42")},
      {A("--device", "cpu"), A("--device=cpu", "-tp", "1")},
      /* serving options */
      {A("--chat-template", "/t.jinja"), A("--chat-template-file", "/t.jinja")},
      {A("--tool-call-parser", "llama3_json"), A("--tool-call-parser", "llama3")},
      {A("--tool-call-parser", "hermes"), A("--tool-call-parser=hermes", "--enable-auto-tool-choice")},
      {A("--log-level", "warning"), A("--log-level", "warn")},
      {A("--log-level", "debug"), A("--uvicorn-log-level=debug")},
      {A("--disable-log-requests"), A("--no-enable-log-requests", "--metrics")},
      {A("--allowed-origins", "[\"http://a\", \"http://b\"]"), A("--allowed-origins", "http://a,http://b")},
      {A("--ssl-certfile", "c.pem", "--ssl-keyfile", "k.pem"), A("--ssl-cert-file=c.pem", "--ssl-key-file", "k.pem")},
      {A("--reasoning-parser", "qwen3"), A("--reasoning-parser=qwen3")},
      {A("--header-timeout", "3", "--max-connections", "5"), A("--header-timeout=3", "--max-connections=5")},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) expect_same(cases[i].canon, cases[i].alias);
}

Test(cli_opts, values_land_where_they_should) {
  unsetenv("QUIVER_API_KEY");
  serve_cfg c;
  qv_error err = {0};
  cr_assert_eq(parse(A("/m/x", "--served-model-name", "meta/X", "-c", "4096", "-np", "4", "--seed=7",
                       "--no-enable-prefix-caching", "--disable-log-requests", "--log-level", "error"),
                     &c, &err),
               0, "%s", err.msg);
  cr_assert_eq(c.reg.n_models, 1);
  cr_assert_str_eq(c.reg.models[0].name, "meta/X");
  cr_assert_str_eq(c.reg.models[0].path, "/m/x");
  cr_assert_eq(c.lo.max_model_len, 4096);
  cr_assert_eq(c.lo.max_num_seqs, 4);
  cr_assert_eq(c.lo.has_seed, 1);
  cr_assert_eq(c.lo.seed, 7);
  cr_assert_eq(c.lo.prefix_caching, 0);
  cr_assert_eq(c.so.limits.access_log, 0);
  cr_assert_str_eq(c.log_level, "error");
  cr_assert_eq(c.so.port, 8000);
  cr_assert_null(c.so.tls);
  cr_assert_null(c.so.cors);
  serve_cfg_deinit(&c);
}

/* Each failing argument list and a piece of its message. */
Test(cli_opts, bad_arguments_fail_with_a_clear_message) {
  unsetenv("QUIVER_API_KEY");
  const struct {
    const char *const *args;
    const char *msg;
  } bad[] = {
      {A("--bogus"), "unknown option '--bogus'"},
      {A("--bogus=3"), "unknown option '--bogus'"},
      {A("-x"), "unknown option '-x'"},
      {A("--port"), "--port needs a value"},
      {A("--port", "70000"), "--port expects an integer in [0, 65535]"},
      {A("--port=abc"), "--port expects an integer"},
      {A("-c", "0"), "-c expects an integer in [1,"},
      {A("--gpu-memory-utilization", "1.5"), "--gpu-memory-utilization expects a number"},
      {A("--tensor-parallel-size", "65"), "--tensor-parallel-size expects an integer in [1, 64]"},
      {A("--tp", "0"), "--tp expects an integer in [1, 64]"},
      {A("--dtype", "int8"), "--dtype must be auto, float32, bfloat16 or float16"},
      {A("--device", "tpu"), "--device must be cpu or cuda"},
      {A("--disable-log-requests=1"), "takes no value"},
      {A("--log-level", "loud"), "--log-level must be"},
      {A("--tool-call-parser", "pythonic"), "--tool-call-parser 'pythonic'"},
      {A("/a", "/b", "--served-model-name", "x"), "exactly one model"},
      {A("--ssl-certfile", "c.pem"), "go together"},
      {A("--ssl-ca-certs", "ca.pem"), "--ssl-ca-certs needs"},
      {A("--allowed-methods", "GET"), "need --allowed-origins"},
      {A("--allowed-origins", "[1]"), "must be strings"},
      {A("--allowed-origins", "http://a\"b"), "bad origin"},
      {A("--chat-template", ""), "--chat-template is empty"},
      {A("/a", "--served-model-name", ""), "a model name is not empty"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    serve_cfg c;
    qv_error err = {0};
    int rc = parse(bad[i].args, &c, &err);
    cr_expect_neq(rc, 0, "%s should fail", bad[i].args[0]);
    cr_expect_not_null(strstr(err.msg, bad[i].msg), "%s: got '%s', expected '%s'", bad[i].args[0],
                       err.msg, bad[i].msg);
    serve_cfg_deinit(&c);
  }
}

Test(cli_opts, help_and_double_dash) {
  unsetenv("QUIVER_API_KEY");
  serve_cfg c;
  qv_error err = {0};
  cr_assert_eq(parse(A("--port", "1", "-h", "--bogus"), &c, &err), CLI_HELP);
  serve_cfg_deinit(&c);
  /* After "--" everything is positional, even what looks like a flag. */
  cr_assert_eq(parse(A("--", "-odd-dir"), &c, &err), 0, "%s", err.msg);
  cr_assert_str_eq(c.reg.models[0].path, "-odd-dir");
  serve_cfg_deinit(&c);
}

/* The shared rows alone, through a minimal spec: what generate and bench see. */
typedef struct seen {
  cli_engine_cfg e;
  int n_pos;
  const char *pos;
} seen;

static int on_shared(void *ud, const cli_opt *o, const cli_value *v, qv_error *err) {
  seen *s = ud;
  if (o->id == 1) {
    s->n_pos++;
    s->pos = v->str;
    return 0;
  }
  return cli_engine_apply(&s->e, o, v, err);
}

Test(cli_opts, shared_engine_rows) {
  static const cli_opt own[] = {{1, CLI_OPT_STR, {"--model"}, 0, 0, "PATH", "model"}};
  cli_spec spec = {.prog = "t", .synopsis = "t", .own = own, .n_own = 1, .common = cli_engine_opts,
                   .n_common = cli_n_engine_opts, .positional_id = 1, .first_arg = 0};
  char *argv[] = {"dir", "--max-num-seqs=3", "-b", "64", "--dtype", "half", "--seed", "9",
                  "--no-prefix-caching", "-t", "2"};
  seen s = {0};
  cli_engine_cfg_init(&s.e);
  qv_error err = {0};
  cr_assert_eq(cli_parse(&spec, 11, argv, on_shared, &s, &err), 0, "%s", err.msg);
  cr_assert_eq(s.n_pos, 1);
  cr_assert_str_eq(s.pos, "dir");
  cr_assert_eq(s.e.max_num_seqs, 3);
  cr_assert_eq(s.e.max_num_batched_tokens, 64);
  cr_assert_str_eq(s.e.dtype, "float16");
  cr_assert_eq(s.e.has_seed, 1);
  cr_assert_eq(s.e.seed, 9);
  cr_assert_eq(s.e.prefix_caching, 0);
  cr_assert_eq(s.e.threads, 2);
  /* Every spelling of every shared row is distinct across the table (no clashes). */
  for (int i = 0; i < cli_n_engine_opts; i++)
    for (int k = 0; k < CLI_MAX_NAMES && cli_engine_opts[i].names[k]; k++) {
      const cli_opt *o = cli_find(&spec, cli_engine_opts[i].names[k]);
      cr_assert_eq(o, &cli_engine_opts[i], "%s is ambiguous", cli_engine_opts[i].names[k]);
    }
}

/* --cpu-bf16-dot (issue 12): a flag of serve, generate and bench engine, off unless given,
 * listed in --help; a model of the config file may set "cpu_bf16_dot" itself. */
Test(cli_opts, cpu_bf16_dot_flag_and_config_key) {
  unsetenv("QUIVER_API_KEY");
  serve_cfg c;
  qv_error err = {0};
  cr_assert_eq(parse(A("/m/x"), &c, &err), 0, "%s", err.msg);
  cr_assert_eq(c.lo.cpu_bf16_dot, 0, "on by default");
  serve_cfg_deinit(&c);
  cr_assert_eq(parse(A("/m/x", "--cpu-bf16-dot"), &c, &err), 0, "%s", err.msg);
  cr_assert_eq(c.lo.cpu_bf16_dot, 1);
  serve_cfg_deinit(&c);
  err = (qv_error){0};
  cr_assert_eq(parse(A("/m/x", "--cpu-bf16-dot=1"), &c, &err), QV_EINVAL);
  cr_assert(strstr(err.msg, "--cpu-bf16-dot takes no value"), "%s", err.msg);
  serve_cfg_deinit(&c);
  /* The shared table (generate, bench engine) and its help text. */
  static const cli_opt own[] = {{1, CLI_OPT_STR, {"--model"}, 0, 0, "PATH", "model"}};
  cli_spec spec = {.prog = "t", .synopsis = "t", .own = own, .n_own = 1, .common = cli_engine_opts,
                   .n_common = cli_n_engine_opts, .positional_id = 1, .first_arg = 0};
  char *argv[] = {"--cpu-bf16-dot"};
  seen s = {0};
  cli_engine_cfg_init(&s.e);
  cr_assert_eq(s.e.cpu_bf16_dot, 0);
  cr_assert_eq(cli_parse(&spec, 1, argv, on_shared, &s, &err), 0, "%s", err.msg);
  cr_assert_eq(s.e.cpu_bf16_dot, 1);
  char *help = NULL;
  size_t help_len = 0;
  FILE *f = open_memstream(&help, &help_len);
  cli_usage(&spec, f);
  fclose(f);
  cr_assert(strstr(help, "--cpu-bf16-dot") && strstr(help, "QUIVER_CPU_BF16_DOT"), "%s", help);
  free(help);
  /* Per model in the config file: true, false, absent; anything else is refused. */
  registry g;
  registry_init(&g);
  const char *cfg = "{\"models\": [{\"name\": \"a\", \"path\": \"/m/a\", \"cpu_bf16_dot\": true},"
                    "{\"name\": \"b\", \"path\": \"/m/b\", \"cpu_bf16_dot\": false}, {\"name\": \"c\", \"path\": \"/m/c\"}]}";
  cr_assert_eq(registry_load_json(&g, cfg, strlen(cfg), &err), 0, "%s", err.msg);
  cr_assert_eq(g.models[0].cpu_bf16_dot, 1);
  cr_assert_eq(g.models[1].cpu_bf16_dot, -1);
  cr_assert_eq(g.models[2].cpu_bf16_dot, 0);
  registry_deinit(&g);
  registry_init(&g);
  const char *bad = "{\"models\": [{\"path\": \"/m\", \"cpu_bf16_dot\": 1}]}";
  cr_assert_eq(registry_load_json(&g, bad, strlen(bad), &err), QV_EINVAL);
  cr_assert(strstr(err.msg, "'cpu_bf16_dot' must be true or false"), "%s", err.msg);
  registry_deinit(&g);
}
