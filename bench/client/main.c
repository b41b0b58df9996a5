/* quiver-bench: a serving load generator for any OpenAI-compatible server (quiver, vLLM,
 * SGLang, llama-server, TGI), measuring what vLLM's `bench serve` measures so numbers compare.
 * This file parses the command line and runs the phases: discover the model, build the dataset,
 * warm up, run, report. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "bench.h"
#include "core/bench_rng.h"
#include "dataset.h"
#include "report.h"
#include "runner.h"
#include "tok.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: quiver-bench [options]\n"
          "\n"
          "target:\n"
          "  --base-url URL         server (default http://127.0.0.1:8000; http only)\n"
          "  --endpoint PATH        /v1/completions (default) or /v1/chat/completions\n"
          "  --model NAME           model to ask for (default: the first of GET /v1/models)\n"
          "  --api-key KEY          sent as 'Authorization: Bearer KEY'\n"
          "dataset:\n"
          "  --dataset NAME         random (default), sharegpt or jsonl\n"
          "  --dataset-path FILE    the ShareGPT JSON or JSONL file\n"
          "  --num-prompts N        requests to send (default 1000)\n"
          "  --input-len L          random: prompt tokens (default 1024)\n"
          "  --output-len M         random/jsonl: max_tokens (default 128); sharegpt: fixes the output length\n"
          "  --range-ratio R        random: lengths uniform in [L(1-R), L(1+R)] (default 0, R < 1)\n"
          "  --prefix-len P         random: P shared prefix tokens before each prompt (default 0)\n"
          "  --seed S               dataset and arrival RNG seed (default 0)\n"
          "  --ignore-eos           ask the server to ignore EOS (vLLM's ignore_eos)\n"
          "  --temperature T        sampling temperature (default 0: greedy)\n"
          "  --save-prompts FILE    write the built prompts as JSONL (replay them with --dataset jsonl)\n"
          "  --tokenizer PATH       count tokens with quiver's tokenizer (model dir, tokenizer.json,\n"
          "                         .gguf) instead of the server's /tokenize and /detokenize\n"
          "load:\n"
          "  --request-rate R       requests/s, or inf (default inf: all at once)\n"
          "  --burstiness B         gamma shape of the arrival gaps (default 1: Poisson)\n"
          "  --max-concurrency N    most requests in flight (default: unlimited)\n"
          "  --warmup N             N unmeasured requests first (default 0)\n"
          "  --timeout S            fail a request still running after S seconds (default: none)\n"
          "report:\n"
          "  --percentiles LIST     e.g. 50,90,99 (default 90,99)\n"
          "  --goodput SLOS         ttft:MS,tpot:MS,e2el:MS (any subset)\n"
          "  --result-file FILE     write settings, aggregates and per-request records as JSON\n"
          "  --save-text            keep generated text in the result file\n"
          "  --metadata KEY=VALUE   added to the result file (repeatable: machine, commit...)\n"
          "  --progress | --no-progress   live progress bar on stderr (default: when a terminal)\n"
          "\nRandom and ShareGPT prompts are measured with the server's /tokenize and /detokenize unless\n"
          "--tokenizer is given.\n");
}

static int parse_int(const char *s, long lo, long hi, int32_t *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (end == s || *end || errno || v < lo || v > hi) return -1;
  *out = (int32_t)v;
  return 0;
}

static int parse_num(const char *s, double lo, double hi, double *out) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (end == s || *end || errno || isnan(v) || v < lo || v > hi) return -1;
  *out = v;
  return 0;
}

/* Fills o from argv. Returns 0, 1 for --help, or -1 after printing the problem. */
static int parse_args(int argc, char **argv, bench_opts *o) {
  memset(o, 0, sizeof *o);
  o->base_url = "http://127.0.0.1:8000";
  o->endpoint = "/v1/completions";
  o->dataset = "random";
  o->num_prompts = 1000;
  o->input_len = 1024;
  o->output_len = 128;
  o->request_rate = INFINITY;
  o->burstiness = 1.0;
  o->progress = -1;
  o->pcts[0] = 90;
  o->pcts[1] = 99;
  o->n_pcts = 2;
  qv_error err = {0};
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) return 1;
    /* Flags without a value. */
    if (!strcmp(a, "--ignore-eos")) { o->ignore_eos = 1; continue; }
    if (!strcmp(a, "--save-text")) { o->save_text = 1; continue; }
    if (!strcmp(a, "--progress")) { o->progress = 1; continue; }
    if (!strcmp(a, "--no-progress")) { o->progress = 0; continue; }
    if (i + 1 >= argc || strncmp(a, "--", 2)) {
      fprintf(stderr, "quiver-bench: unknown option or missing value: '%s' (see --help)\n", a);
      return -1;
    }
    const char *v = argv[++i];
    int bad = 0;
    int64_t seed;
    if (!strcmp(a, "--base-url")) o->base_url = v;
    else if (!strcmp(a, "--endpoint")) o->endpoint = v;
    else if (!strcmp(a, "--model")) o->model = v;
    else if (!strcmp(a, "--api-key")) o->api_key = v;
    else if (!strcmp(a, "--dataset")) o->dataset = v;
    else if (!strcmp(a, "--dataset-path")) o->dataset_path = v;
    else if (!strcmp(a, "--tokenizer")) o->tokenizer = v;
    else if (!strcmp(a, "--num-prompts")) bad = parse_int(v, 1, 10000000, &o->num_prompts);
    else if (!strcmp(a, "--input-len")) bad = parse_int(v, 1, 10000000, &o->input_len);
    else if (!strcmp(a, "--output-len")) bad = parse_int(v, 1, 10000000, &o->output_len), o->output_len_set = 1;
    else if (!strcmp(a, "--prefix-len")) bad = parse_int(v, 0, 10000000, &o->prefix_len);
    else if (!strcmp(a, "--range-ratio")) bad = parse_num(v, 0, 0.999999, &o->range_ratio);
    else if (!strcmp(a, "--temperature")) bad = parse_num(v, 0, 100, &o->temperature);
    else if (!strcmp(a, "--seed")) {
      char *end;
      errno = 0;
      seed = strtoll(v, &end, 10);
      bad = end == v || *end || errno;
      o->seed = (uint64_t)seed;
    } else if (!strcmp(a, "--request-rate")) {
      if (!strcmp(v, "inf")) o->request_rate = INFINITY;
      else bad = parse_num(v, 1e-9, 1e9, &o->request_rate);
    } else if (!strcmp(a, "--burstiness")) bad = parse_num(v, 1e-3, 1e3, &o->burstiness);
    else if (!strcmp(a, "--max-concurrency")) bad = parse_int(v, 1, 1000000, &o->max_concurrency);
    else if (!strcmp(a, "--warmup")) bad = parse_int(v, 0, 1000000, &o->warmup);
    else if (!strcmp(a, "--timeout")) bad = parse_num(v, 1e-3, 1e7, &o->timeout_s);
    else if (!strcmp(a, "--percentiles")) {
      if (bench_parse_pcts(v, o->pcts, &o->n_pcts, &err)) {
        fprintf(stderr, "quiver-bench: --percentiles: %s\n", err.msg);
        return -1;
      }
    } else if (!strcmp(a, "--goodput")) {
      if (bench_parse_slo(v, &o->slo, &err)) {
        fprintf(stderr, "quiver-bench: --goodput: %s\n", err.msg);
        return -1;
      }
    } else if (!strcmp(a, "--result-file")) o->result_file = v;
    else if (!strcmp(a, "--save-prompts")) o->save_prompts = v;
    else if (!strcmp(a, "--metadata")) {
      const char *eq = strchr(v, '=');
      if (!eq || eq == v || eq - v >= 100 || o->n_metadata >= BENCH_MAX_METADATA) bad = 1;
      else o->metadata[o->n_metadata++] = v;
    } else {
      fprintf(stderr, "quiver-bench: unknown option '%s' (see --help)\n", a);
      return -1;
    }
    if (bad) {
      fprintf(stderr, "quiver-bench: bad value '%s' for %s\n", v, a);
      return -1;
    }
  }
  if (strcmp(o->dataset, "random") && strcmp(o->dataset, "sharegpt") && strcmp(o->dataset, "jsonl")) {
    fprintf(stderr, "quiver-bench: --dataset must be random, sharegpt or jsonl\n");
    return -1;
  }
  if (strcmp(o->dataset, "random") && !o->dataset_path) {
    fprintf(stderr, "quiver-bench: --dataset %s needs --dataset-path\n", o->dataset);
    return -1;
  }
  if (o->endpoint[0] != '/' || strpbrk(o->endpoint, " \r\n")) {
    fprintf(stderr, "quiver-bench: --endpoint must be a path such as /v1/completions\n");
    return -1;
  }
  return 0;
}

/* The first model id of GET /v1/models; *out malloc'd. */
static int discover_model(bench_http *http, char **out, qv_error *err) {
  bench_http_req req = {"GET", "/v1/models", NULL, 0};
  bench_http_resp resp;
  int rc = bench_http_call(http, &req, &resp, err);
  if (rc) return rc;
  cJSON *j = resp.status == 200 ? cJSON_ParseWithLength(resp.body, resp.len) : NULL;
  const cJSON *data = cJSON_GetObjectItemCaseSensitive(j, "data");
  const cJSON *id = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(data, 0), "id");
  if (cJSON_IsString(id)) *out = strdup(id->valuestring);
  else
    rc = qv_error_set(err, QV_EFORMAT, "GET /v1/models: HTTP %d, no model id (pass --model): %.200s", resp.status,
                      resp.body);
  if (!rc && !*out) rc = qv_error_set(err, QV_ENOMEM, "out of memory");
  cJSON_Delete(j);
  free(resp.body);
  return rc;
}

/* Writes prompts[n] as JSONL lines {"prompt": ..., "output_len": ...}. */
static int save_prompts(const char *path, const bench_prompt *p, size_t n, qv_error *err) {
  FILE *f = fopen(path, "w");
  if (!f) return qv_error_set(err, QV_EIO, "cannot write '%s'", path);
  int bad = 0;
  for (size_t i = 0; i < n && !bad; i++) {
    cJSON *j = cJSON_CreateObject();
    char *s = NULL;
    if (j && cJSON_AddStringToObject(j, "prompt", p[i].prompt) &&
        cJSON_AddNumberToObject(j, "output_len", p[i].output_len))
      s = cJSON_PrintUnformatted(j);
    bad = !s || fputs(s, f) < 0 || fputc('\n', f) == EOF;
    free(s);
    cJSON_Delete(j);
  }
  bad |= fclose(f) != 0;
  return bad ? qv_error_set(err, QV_EIO, "writing '%s' failed", path) : 0;
}

int main(int argc, char **argv) {
  bench_opts o;
  int pr = parse_args(argc, argv, &o);
  if (pr) {
    if (pr > 0) usage(stdout);
    return pr > 0 ? 0 : 2;
  }
  uv_loop_t loop;
  if (uv_loop_init(&loop)) {
    fprintf(stderr, "quiver-bench: cannot start the event loop\n");
    return 1;
  }
  qv_error err = {0};
  bench_http *http = NULL;
  char *model = NULL;
  bench_tok tok = {0};
  int have_tok = 0;
  bench_prompt *prompts = NULL;
  size_t n = 0;
  double *arrivals = NULL;
  bench_run_result warm = {0}, res = {0};
  int rc = bench_http_create(&loop, o.base_url, o.api_key, &http, &err);
  if (!rc) {
    if (o.model) model = strdup(o.model);
    else rc = discover_model(http, &model, &err);
    if (!rc && !model) rc = qv_error_set(&err, QV_ENOMEM, "out of memory");
  }
  if (!rc) {
    /* jsonl works without a tokenizer (lengths then come from usage); the others need one. */
    int trc = bench_tok_init(&tok, o.tokenizer, http, model, &err);
    if (!trc) have_tok = 1;
    else if (strcmp(o.dataset, "jsonl") || o.tokenizer) rc = trc;
    else qv_error_clear(&err);
  }
  if (!rc) {
    fprintf(stderr, "quiver-bench: model %s, building %d %s prompts\n", model, o.num_prompts, o.dataset);
    rc = bench_dataset_build(&o, have_tok ? &tok : NULL, &prompts, &n, &err);
    if (!rc && o.save_prompts) rc = save_prompts(o.save_prompts, prompts, n, &err);
  }
  if (!rc) {
    size_t nw = (size_t)o.warmup;
    arrivals = calloc((n > nw ? n : nw) + 1, sizeof *arrivals);
    if (!arrivals) rc = qv_error_set(&err, QV_ENOMEM, "out of memory");
    if (!rc && nw) {
      /* Warm-up: prompts from the dataset (cycled), all released at once under the same cap. */
      bench_prompt *wp = calloc(nw, sizeof *wp);
      if (!wp) rc = qv_error_set(&err, QV_ENOMEM, "out of memory");
      for (size_t i = 0; !rc && i < nw; i++) wp[i] = prompts[i % n];
      bench_run_spec spec = {&o, http, &loop, model, wp, arrivals, nw, "warmup"};
      if (!rc) rc = bench_run(&spec, &warm, &err);
      free(wp);
      size_t bad = 0;
      for (size_t i = 0; !rc && i < warm.n; i++) bad += !warm.records[i].success;
      if (bad) fprintf(stderr, "quiver-bench: %zu of %zu warm-up requests failed\n", bad, warm.n);
    }
  }
  if (!rc) {
    bench_rng rng;
    bench_rng_seed(&rng, o.seed ^ 0x5eed5eed5eedull);
    rc = bench_arrivals(&rng, n, o.request_rate, o.burstiness, arrivals, &err);
  }
  if (!rc) {
    bench_run_spec spec = {&o, http, &loop, model, prompts, arrivals, n, "benchmark"};
    rc = bench_run(&spec, &res, &err);
  }
  if (!rc) {
    bench_summary s;
    rc = bench_report_summarize(&o, &res, &s, &err);
    if (!rc) {
      bench_report_table(stdout, &o, model, &res, &s);
      fflush(stdout);
      if (o.result_file) rc = bench_report_write_json(o.result_file, &o, model, &res, &s, &err);
    }
  }
  if (rc) fprintf(stderr, "quiver-bench: %s\n", err.msg[0] ? err.msg : qv_strerror(rc));
  bench_records_free(res.records, res.n);
  bench_records_free(warm.records, warm.n);
  free(arrivals);
  bench_prompts_free(prompts, n);
  if (have_tok) bench_tok_deinit(&tok);
  free(model);
  bench_http_destroy(http);
  uv_run(&loop, UV_RUN_NOWAIT);
  uv_loop_close(&loop);
  return rc ? 1 : 0;
}
