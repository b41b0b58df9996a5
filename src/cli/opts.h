/* Command-line options as tables: one parser for every subcommand, so each concept has one
 * canonical spelling (vLLM's where vLLM has one) and its other spellings (quiver's older names,
 * llama.cpp's short forms) are aliases in the same row, and `--flag value`, `--flag=value` and a
 * positional model path all work the same way everywhere.
 *
 * The options every engine-running command shares (model sizing, device, threads, dtype, seed,
 * prefix caching...) live in one table, cli_engine_opts, applied to one struct, cli_engine_cfg;
 * each command adds a table of its own and maps the shared struct onto its own configuration.
 * The parser only splits and validates (integer and number ranges); meaning belongs to the
 * callback. Nothing here exits: every error is a message in a qv_error naming the flag. */
#ifndef QV_CLI_OPTS_H
#define QV_CLI_OPTS_H

#include <stdint.h>
#include <stdio.h>

#include "quiver/error.h"

typedef enum cli_opt_kind {
  CLI_OPT_FLAG = 0, /* takes no value */
  CLI_OPT_STR,      /* any string (may be empty) */
  CLI_OPT_INT,      /* an integer in [lo, hi] */
  CLI_OPT_NUM,      /* a finite number in [lo, hi] */
} cli_opt_kind;

#define CLI_MAX_NAMES 6

typedef struct cli_opt {
  int id;                            /* the concept, from the command's own enum */
  cli_opt_kind kind;
  const char *names[CLI_MAX_NAMES];  /* names[0] is the canonical spelling; the rest aliases */
  double lo, hi;                     /* INT and NUM bounds */
  const char *arg;                   /* value placeholder for help ("N", "PATH"), NULL for FLAG */
  const char *help;                  /* one line (may contain \n for continuation lines) */
} cli_opt;

typedef struct cli_value {
  const char *str; /* the value as given (borrowed from argv), NULL for FLAG */
  int64_t i;       /* INT */
  double num;      /* NUM (and INT, converted) */
} cli_value;

/* Called once per option in command-line order with the matched row (the positional argument
 * comes with the row whose id is spec->positional_id). Returns 0, or an error with err set. */
typedef int (*cli_opt_fn)(void *ud, const cli_opt *opt, const cli_value *v, qv_error *err);

typedef struct cli_spec {
  const char *prog;      /* "quiver serve": prefixes messages */
  const char *synopsis;  /* first usage line after "usage: " */
  const cli_opt *own;    /* [n_own] the command's table */
  int n_own;
  const cli_opt *common; /* [n_common] shared rows (cli_engine_opts) or NULL */
  int n_common;
  const int *common_ids; /* [n_common_ids] the shared rows this command takes; NULL: all */
  int n_common_ids;
  int positional_id;     /* the id a bare argument maps to (its row must take a value); -1: none */
  int first_arg;         /* index of the first option in argv (1 after the subcommand name) */
} cli_spec;

#define CLI_HELP 1

/* Parses argv[spec->first_arg..argc). Returns 0, CLI_HELP when -h/--help was given (nothing
 * after it is parsed), or a negative code with the message in err: an unknown option names
 * itself, a bad value names the flag and the range. A lone "--" ends the options: what follows
 * is positional. */
int cli_parse(const cli_spec *spec, int argc, char **argv, cli_opt_fn fn, void *ud, qv_error *err);
/* Finds the row an argument spells (with or without "=value"), or NULL. */
const cli_opt *cli_find(const cli_spec *spec, const char *arg);
/* Prints "usage: ..." and every row with all its spellings. */
void cli_usage(const cli_spec *spec, FILE *f);

/* ---- the options shared by serve, generate and bench ---- */

enum {
  CLI_E_DEVICE = 1000,
  CLI_E_THREADS,
  CLI_E_MAX_MODEL_LEN,
  CLI_E_MAX_NUM_SEQS,
  CLI_E_MAX_BATCHED,
  CLI_E_BLOCK_SIZE,
  CLI_E_KV_BLOCKS,
  CLI_E_GPU_MEM,
  CLI_E_PREFIX_ON,
  CLI_E_PREFIX_OFF,
  CLI_E_DTYPE,
  CLI_E_SEED,
  CLI_E_TP,
  CLI_E_CPU_BF16_DOT,
};

/* Every field 0 / NULL / -1 means "not given": the command's default applies. */
typedef struct cli_engine_cfg {
  const char *device;             /* "cpu" or "cuda" (borrowed from argv) */
  int32_t threads;                /* -1: not given; 0: all cores */
  int32_t max_model_len;
  int32_t max_num_seqs;
  int32_t max_num_batched_tokens;
  int32_t block_size;
  int32_t n_kv_blocks;
  double kv_mem_fraction;
  int32_t prefix_caching;         /* -1 not given, 0 off, 1 on */
  const char *dtype;              /* "auto", "float32", "bfloat16", "float16" (normalized) */
  int32_t has_seed;
  uint64_t seed;
  int32_t tp_size;                /* --tensor-parallel-size; 0: not given (1) */
  int32_t cpu_bf16_dot;           /* --cpu-bf16-dot: 1 given, 0 not */
} cli_engine_cfg;

extern const cli_opt cli_engine_opts[];
extern const int cli_n_engine_opts;

void cli_engine_cfg_init(cli_engine_cfg *c);
/* Applies one shared row (ids CLI_E_*); QV_EINVAL with a message for values the build cannot
 * honour (an unknown dtype or device). */
int cli_engine_apply(cli_engine_cfg *c, const cli_opt *opt, const cli_value *v, qv_error *err);

#endif
