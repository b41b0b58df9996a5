/* quiver bench engine (src/cli/cmd_bench.c): the offline throughput benchmark must generate the
 * right tokens while it times them, through the engine and through the model path. With every
 * prompt set to the start of stories260K's greedy reference, each batched sequence must continue
 * it exactly; numbers in the result file must be consistent with the settings. */
#include <criterion/criterion.h>
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "../test_util.h"

static cJSON *run_bench(char **args, int n_args) {
  char path[] = "/tmp/qv-bench-engine-XXXXXX";
  int fd = mkstemp(path);
  cr_assert(fd >= 0);
  close(fd);
  char *argv[32] = {"bench", "engine", "--result-file", path, "--runs", "2"};
  int argc = 6;
  for (int i = 0; i < n_args; i++) argv[argc++] = args[i];
  int rc = cli_bench(argc, argv);
  cr_assert_eq(rc, 0);
  FILE *f = fopen(path, "r");
  cr_assert(f);
  static char buf[1 << 16];
  size_t len = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  unlink(path);
  buf[len] = '\0';
  cJSON *j = cJSON_Parse(buf);
  cr_assert(j, "result file is not JSON");
  return j;
}

static double num(const cJSON *j, const char *k) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, k);
  cr_assert(cJSON_IsNumber(v), "missing %s", k);
  return v->valuedouble;
}

static void check_reference(const char *path, const char *max_seqs) {
  char model[1024], ids_path[1100];
  test_shared_path(model, sizeof model, "models/stories260K");
  snprintf(ids_path, sizeof ids_path, "%s/greedy-256.ids", model);
  if (access(ids_path, R_OK)) cr_skip_test("stories260K not found at %s", model);
  /* 5 sequences of 21 prompt tokens with 16 tokens per forward: prompts split across steps and
   * several sequences share a step. */
  char *args[] = {"--path", (char *)path, "--max-num-seqs", (char *)max_seqs, "--model", model, "--prompt-file",
                  ids_path, "--num-prompts", "5", "--input-len", "21", "--output-len", "40",
                  "--max-batch-tokens", "16"};
  cJSON *j = run_bench(args, 16);
  FILE *f = fopen(ids_path, "r");
  int ref[300], n = 0;
  while (n < 300 && fscanf(f, "%d", &ref[n]) == 1) n++;
  fclose(f);
  cr_assert(n >= 61);
  const cJSON *out = cJSON_GetObjectItemCaseSensitive(j, "output_ids");
  cr_assert_eq(cJSON_GetArraySize(out), 40);
  for (int i = 0; i < 40; i++)
    cr_assert_eq(cJSON_GetArrayItem(out, i)->valueint, ref[21 + i], "token %d", i);
  cr_assert(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "outputs_identical")));
  cJSON_Delete(j);
}

Test(bench_engine, model_path_matches_stories260k_reference) { check_reference("model", "256"); }

/* Through the engine, with fewer running slots than sequences (queueing). */
Test(bench_engine, engine_path_matches_stories260k_reference) { check_reference("engine", "3"); }

Test(bench_engine, embedded_model_numbers_are_consistent) {
  char *args[] = {"--path", "model", "--num-prompts", "7", "--input-len", "13", "--output-len", "9",
                  "--max-batch-tokens", "32", "--seed", "11"};
  cJSON *j = run_bench(args, 12);
  double total = num(j, "median_total_s");
  cr_assert(total > 0);
  cr_assert_float_eq(num(j, "output_tokens_per_s") * total, 7.0 * 9.0, 1e-6);
  cr_assert_float_eq(num(j, "total_tokens_per_s") * total, 7.0 * 22.0, 1e-6);
  cr_assert_float_eq(num(j, "requests_per_s") * total, 7.0, 1e-9);
  const cJSON *runs = cJSON_GetObjectItemCaseSensitive(j, "runs");
  cr_assert_eq(cJSON_GetArraySize(runs), 2);
  /* Prefill: 91 tokens in steps of 32 -> 3 forwards; decode: 8 steps of 7 sequences. */
  cr_assert_eq(num(cJSON_GetArrayItem(runs, 0), "forward_steps"), 3 + 8);
  double p = num(cJSON_GetArrayItem(runs, 0), "prefill_s"), d = num(cJSON_GetArrayItem(runs, 0), "decode_s");
  cr_assert_float_eq(p + d, num(cJSON_GetArrayItem(runs, 0), "total_s"), 1e-9);
  cJSON_Delete(j);
}

Test(bench_engine, engine_path_numbers_are_consistent) {
  char *args[] = {"--num-prompts", "6", "--input-len", "11", "--output-len", "7", "--seed", "5"};
  cJSON *j = run_bench(args, 8);
  double total = num(j, "median_total_s");
  cr_assert(total > 0);
  cr_assert_float_eq(num(j, "output_tokens_per_s") * total, 6.0 * 7.0, 1e-6);
  cr_assert_float_eq(num(j, "total_tokens_per_s") * total, 6.0 * 18.0, 1e-6);
  cr_assert(num(j, "mean_ttft_ms") > 0 && num(j, "mean_ttft_ms") <= total * 1e3);
  const cJSON *runs = cJSON_GetObjectItemCaseSensitive(j, "runs");
  cr_assert_eq(cJSON_GetArraySize(runs), 2);
  /* At least one forward per output token. */
  cr_assert(num(cJSON_GetArrayItem(runs, 0), "forward_steps") >= 7);
  cr_assert(strstr(cJSON_GetObjectItemCaseSensitive(j, "path")->valuestring, "engine"));
  cJSON_Delete(j);
}

Test(bench_engine, bad_arguments_fail_cleanly) {
  char *a1[] = {"bench", "engine", "--num-prompts", "0"};
  cr_assert_eq(cli_bench(4, a1), 2);
  char *a2[] = {"bench", "engine", "--model", "/nonexistent/model", "--runs", "1"};
  cr_assert_eq(cli_bench(6, a2), 1);
  char *a3[] = {"bench", "nope"};
  cr_assert_eq(cli_bench(2, a3), 2);
  char *a4[] = {"bench", "engine", "--input-len", "4000000", "--output-len", "4000000", "--runs", "1"};
  cr_assert_eq(cli_bench(8, a4), 1); /* beyond quiver-tiny's positions */
  char *a5[] = {"bench", "engine", "--prompt-file", "/nonexistent", "--runs", "1"};
  cr_assert_eq(cli_bench(6, a5), 1);
  char *a6[] = {"bench", "engine", "--device", "tpu"};
  cr_assert_eq(cli_bench(4, a6), 2); /* a usage error since the shared option table checks it */
  char *a8[] = {"bench", "engine", "--max-model-len", "64"};
  cr_assert_eq(cli_bench(4, a8), 2); /* a shared option bench does not take: unknown here */
  char *a7[] = {"bench", "engine", "--path", "nope"};
  cr_assert_eq(cli_bench(4, a7), 2);
}
