/* The table-driven option parser and the shared engine options (see opts.h). */
#include "cli/opts.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

const cli_opt cli_engine_opts[] = {
    {CLI_E_DEVICE, CLI_OPT_STR, {"--device"}, 0, 0, "cpu|cuda", "backend (default cpu)"},
    {CLI_E_THREADS, CLI_OPT_INT, {"--threads", "-t"}, 0, 1024, "N",
     "CPU backend threads (default: all cores)"},
    {CLI_E_MAX_MODEL_LEN, CLI_OPT_INT, {"--max-model-len", "-c", "--ctx-size"}, 1, 1 << 24, "N",
     "context length limit per sequence (default: the model's)"},
    {CLI_E_MAX_NUM_SEQS, CLI_OPT_INT, {"--max-num-seqs", "-np", "--parallel"}, 1, 65536, "N",
     "sequences running at once (default 256)"},
    {CLI_E_MAX_BATCHED, CLI_OPT_INT,
     {"--max-num-batched-tokens", "--max-batch-tokens", "-b", "--batch-size"}, 1, 1 << 20, "N",
     "tokens in one engine step (default 2048)"},
    {CLI_E_BLOCK_SIZE, CLI_OPT_INT, {"--block-size"}, 1, 1024, "N",
     "KV cache block size in tokens (default 16)"},
    {CLI_E_KV_BLOCKS, CLI_OPT_INT, {"--num-kv-blocks", "--n-kv-blocks", "--num-gpu-blocks-override"},
     1, 1 << 26, "N", "KV cache blocks (default: sized from memory)"},
    {CLI_E_GPU_MEM, CLI_OPT_NUM, {"--gpu-memory-utilization"}, 1e-6, 1.0, "F",
     "share (0, 1] of the free memory after the weights given to the KV cache\n"
     "(default 0.9 on cuda, 0.25 of RAM on cpu)"},
    {CLI_E_PREFIX_ON, CLI_OPT_FLAG, {"--enable-prefix-caching"}, 0, 0, NULL,
     "reuse KV blocks of shared prompt prefixes (the default)"},
    {CLI_E_PREFIX_OFF, CLI_OPT_FLAG, {"--no-enable-prefix-caching", "--no-prefix-caching"}, 0, 0,
     NULL, "turn prefix caching off"},
    {CLI_E_DTYPE, CLI_OPT_STR, {"--dtype"}, 0, 0, "T",
     "auto|float32|bfloat16|float16 (also float, half): the compute type; the cpu backend\n"
     "computes in float32, the cuda backend in bfloat16; others are refused (default auto)"},
    {CLI_E_SEED, CLI_OPT_INT, {"--seed", "-s"}, 0, 9223372036854775807.0, "S",
     "random seed for requests that give none (default: from the clock)"},
    {CLI_E_TP, CLI_OPT_INT, {"--tensor-parallel-size", "--tp", "-tp"}, 1, 64, "N",
     "ranks a model is sharded over (default 1): CPU ranks of this process, one thread each\n"
     "with --threads / N worker threads; Llama-family models (llama, mistral, qwen2, qwen3)"},
    {CLI_E_CPU_BF16_DOT, CLI_OPT_FLAG, {"--cpu-bf16-dot"}, 0, 0, NULL,
     "cpu: matmuls with BF16 weights round the activations to bf16 and use the AVX512_BF16\n"
     "dot product (about 1.5-2x prefill; not exact, logits within ~1e-2). Off by default;\n"
     "also QUIVER_CPU_BF16_DOT=1. Ignored, with a log line, without avx512_bf16"},
};
const int cli_n_engine_opts = (int)(sizeof cli_engine_opts / sizeof cli_engine_opts[0]);

void cli_engine_cfg_init(cli_engine_cfg *c) {
  memset(c, 0, sizeof *c);
  c->threads = -1;
  c->prefix_caching = -1;
}

int cli_engine_apply(cli_engine_cfg *c, const cli_opt *opt, const cli_value *v, qv_error *err) {
  switch (opt->id) {
  case CLI_E_DEVICE:
    if (strcmp(v->str, "cpu") && strcmp(v->str, "cuda"))
      return qv_error_set(err, QV_EINVAL, "--device must be cpu or cuda, got '%s'", v->str);
    c->device = v->str;
    return 0;
  case CLI_E_THREADS: c->threads = (int32_t)v->i; return 0;
  case CLI_E_MAX_MODEL_LEN: c->max_model_len = (int32_t)v->i; return 0;
  case CLI_E_MAX_NUM_SEQS: c->max_num_seqs = (int32_t)v->i; return 0;
  case CLI_E_MAX_BATCHED: c->max_num_batched_tokens = (int32_t)v->i; return 0;
  case CLI_E_BLOCK_SIZE: c->block_size = (int32_t)v->i; return 0;
  case CLI_E_KV_BLOCKS: c->n_kv_blocks = (int32_t)v->i; return 0;
  case CLI_E_GPU_MEM: c->kv_mem_fraction = v->num; return 0;
  case CLI_E_PREFIX_ON: c->prefix_caching = 1; return 0;
  case CLI_E_PREFIX_OFF: c->prefix_caching = 0; return 0;
  case CLI_E_DTYPE: {
    static const char *const map[][2] = {{"auto", "auto"},         {"float32", "float32"},
                                         {"float", "float32"},     {"bfloat16", "bfloat16"},
                                         {"float16", "float16"},   {"half", "float16"}};
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
      if (!strcmp(v->str, map[i][0])) {
        c->dtype = map[i][1];
        return 0;
      }
    return qv_error_set(err, QV_EINVAL,
                        "--dtype must be auto, float32, bfloat16 or float16, got '%s'", v->str);
  }
  case CLI_E_SEED:
    c->has_seed = 1;
    c->seed = (uint64_t)v->i;
    return 0;
  case CLI_E_TP: c->tp_size = (int32_t)v->i; return 0;
  case CLI_E_CPU_BF16_DOT: c->cpu_bf16_dot = 1; return 0;
  default: return qv_error_set(err, QV_EINVAL, "internal: unknown shared option %d", opt->id);
  }
}

/* ---- parsing ---- */

/* The spelling of arg without any "=value" matches name. */
static int spells(const char *arg, const char *name) {
  size_t n = strlen(name);
  return !strncmp(arg, name, n) && (arg[n] == '\0' || arg[n] == '=');
}

/* Whether a shared row is one this command takes. */
static int takes_common(const cli_spec *spec, int id) {
  if (!spec->common_ids) return 1;
  for (int i = 0; i < spec->n_common_ids; i++)
    if (spec->common_ids[i] == id) return 1;
  return 0;
}

static const cli_opt *find_in(const cli_spec *spec, const cli_opt *t, int n, int common,
                              const char *arg) {
  for (int i = 0; i < n; i++) {
    if (common && !takes_common(spec, t[i].id)) continue;
    for (int k = 0; k < CLI_MAX_NAMES && t[i].names[k]; k++)
      if (spells(arg, t[i].names[k])) return &t[i];
  }
  return NULL;
}

const cli_opt *cli_find(const cli_spec *spec, const char *arg) {
  const cli_opt *o = find_in(spec, spec->own, spec->n_own, 0, arg);
  return o ? o : (spec->common ? find_in(spec, spec->common, spec->n_common, 1, arg) : NULL);
}

static const cli_opt *find_id(const cli_spec *spec, int id) {
  for (int i = 0; i < spec->n_own; i++)
    if (spec->own[i].id == id) return &spec->own[i];
  for (int i = 0; spec->common && i < spec->n_common; i++)
    if (spec->common[i].id == id && takes_common(spec, id)) return &spec->common[i];
  return NULL;
}

static int convert(const cli_spec *spec, const cli_opt *o, const char *flag, const char *s,
                   cli_value *v, qv_error *err) {
  v->str = s;
  if (o->kind == CLI_OPT_STR) return 0;
  char *end = NULL;
  errno = 0;
  if (o->kind == CLI_OPT_INT) {
    long long x = strtoll(s, &end, 10);
    if (!*s || *end || errno || (double)x < o->lo || (double)x > o->hi)
      return qv_error_set(err, QV_EINVAL, "%s expects an integer in [%.0f, %.0f], got '%s'", flag,
                          o->lo, o->hi, s);
    v->i = x;
    v->num = (double)x;
    return 0;
  }
  double x = strtod(s, &end);
  if (!*s || *end || errno || !isfinite(x) || x < o->lo || x > o->hi)
    return qv_error_set(err, QV_EINVAL, "%s expects a number in [%g, %g], got '%s'", flag, o->lo,
                        o->hi, s);
  v->num = x;
  (void)spec;
  return 0;
}

int cli_parse(const cli_spec *spec, int argc, char **argv, cli_opt_fn fn, void *ud, qv_error *err) {
  int only_positional = 0;
  for (int i = spec->first_arg; i < argc; i++) {
    const char *a = argv[i];
    const cli_opt *o = NULL;
    const char *val = NULL;
    char flag[64];
    if (!only_positional && !strcmp(a, "--")) {
      only_positional = 1;
      continue;
    }
    if (!only_positional && (!strcmp(a, "--help") || !strcmp(a, "-h"))) return CLI_HELP;
    if (only_positional || a[0] != '-' || a[1] == '\0') {
      if (spec->positional_id < 0 || !(o = find_id(spec, spec->positional_id)))
        return qv_error_set(err, QV_EINVAL, "unexpected argument '%s' (options start with --)", a);
      snprintf(flag, sizeof flag, "%s", o->names[0]);
      val = a;
    } else {
      o = cli_find(spec, a);
      if (!o) {
        const char *eq = strchr(a, '=');
        int n = eq ? (int)(eq - a) : (int)strlen(a);
        return qv_error_set(err, QV_EINVAL, "unknown option '%.*s' (see %s --help)", n > 200 ? 200 : n,
                            a, spec->prog);
      }
      const char *eq = strchr(a, '=');
      snprintf(flag, sizeof flag, "%.*s", (int)(eq ? eq - a : (long)strlen(a)), a);
      if (o->kind == CLI_OPT_FLAG) {
        if (eq) return qv_error_set(err, QV_EINVAL, "%s takes no value", flag);
      } else if (eq) {
        val = eq + 1;
      } else if (i + 1 < argc) {
        val = argv[++i];
      } else {
        return qv_error_set(err, QV_EINVAL, "%s needs a value (%s)", flag, o->arg ? o->arg : "?");
      }
    }
    cli_value v = {0};
    int rc = o->kind == CLI_OPT_FLAG ? 0 : convert(spec, o, flag, val, &v, err);
    if (!rc) rc = fn(ud, o, &v, err);
    if (rc) return rc < 0 ? rc : QV_EINVAL;
  }
  return 0;
}

static void usage_rows(const cli_spec *spec, const cli_opt *t, int n, int common, FILE *f) {
  for (int i = 0; i < n; i++) {
    if (common && !takes_common(spec, t[i].id)) continue;
    char line[256];
    int len = 0;
    for (int k = 0; k < CLI_MAX_NAMES && t[i].names[k]; k++)
      len += snprintf(line + len, sizeof line - (size_t)len, "%s%s", k ? ", " : "", t[i].names[k]);
    if (t[i].arg) snprintf(line + len, sizeof line - (size_t)len, " %s", t[i].arg);
    fprintf(f, "  %s\n", line);
    const char *h = t[i].help;
    while (h && *h) {
      const char *nl = strchr(h, '\n');
      int w = nl ? (int)(nl - h) : (int)strlen(h);
      fprintf(f, "        %.*s\n", w, h);
      h = nl ? nl + 1 : h + w;
    }
  }
}

void cli_usage(const cli_spec *spec, FILE *f) {
  fprintf(f, "usage: %s\n\n", spec->synopsis);
  usage_rows(spec, spec->own, spec->n_own, 0, f);
  if (spec->common) usage_rows(spec, spec->common, spec->n_common, 1, f);
  fprintf(f, "\nEvery option also takes the --flag=value form.\n");
}
