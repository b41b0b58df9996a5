/* Summary table and result JSON of the load generator (see report.h). */
#include "report.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int bench_report_summarize(const bench_opts *o, const bench_run_result *res, bench_summary *s, qv_error *err) {
  bench_timeline *t = calloc(res->n + 1, sizeof *t);
  if (!t) return qv_error_set(err, QV_ENOMEM, "out of memory");
  for (size_t i = 0; i < res->n; i++) {
    const bench_record *r = &res->records[i];
    t[i].success = r->success;
    t[i].ttft_s = r->ttft_s;
    t[i].e2el_s = r->e2el_s;
    t[i].itl_s = r->itl;
    t[i].n_itl = r->n_itl;
    t[i].prompt_tokens = r->prompt_tokens;
    t[i].output_tokens = r->output_tokens;
  }
  /* An instant run (e.g. every request refused at once) still gets a positive duration. */
  double dur = res->duration_s > 0 ? res->duration_s : 1e-9;
  int rc = bench_summarize(t, res->n, dur, o->pcts, o->n_pcts, &o->slo, s, err);
  free(t);
  return rc;
}

/* "p99" or "p99.9", as vLLM names percentile keys. */
static void pct_name(double p, char *buf, size_t cap) {
  if (p == floor(p)) snprintf(buf, cap, "p%d", (int)p);
  else snprintf(buf, cap, "p%g", p);
}

static void table_stat(FILE *f, const char *title, const char *abbr, const bench_stat *st, const bench_summary *s) {
  char line[64], key[64], pn[16];
  int pad = (50 - (int)strlen(title) - 2) / 2;
  memset(line, '-', sizeof line);
  fprintf(f, "%.*s %s %.*s\n", pad, line, title, 50 - pad - (int)strlen(title) - 2, line);
  snprintf(key, sizeof key, "Mean %s (ms):", abbr);
  fprintf(f, "%-40s %-10.2f\n", key, st->mean);
  snprintf(key, sizeof key, "Median %s (ms):", abbr);
  fprintf(f, "%-40s %-10.2f\n", key, st->median);
  for (int32_t i = 0; i < s->n_pcts; i++) {
    pct_name(s->pcts[i], pn, sizeof pn);
    pn[0] = 'P';
    snprintf(key, sizeof key, "%s %s (ms):", pn, abbr);
    fprintf(f, "%-40s %-10.2f\n", key, st->pct[i]);
  }
}

void bench_report_table(FILE *f, const bench_opts *o, const char *model, const bench_run_result *res,
                        const bench_summary *s) {
  fprintf(f, "============ Serving Benchmark Result ============\n");
  fprintf(f, "%-40s %s\n", "Model:", model);
  fprintf(f, "%-40s %s\n", "Endpoint:", o->endpoint);
  fprintf(f, "%-40s %lld\n", "Successful requests:", (long long)s->completed);
  fprintf(f, "%-40s %lld\n", "Failed requests:", (long long)s->failed);
  if (o->max_concurrency > 0) fprintf(f, "%-40s %d\n", "Maximum request concurrency:", o->max_concurrency);
  if (o->request_rate > 0 && isfinite(o->request_rate))
    fprintf(f, "%-40s %.2f (burstiness %.2f)\n", "Request rate (req/s):", o->request_rate, o->burstiness);
  else
    fprintf(f, "%-40s inf\n", "Request rate (req/s):");
  fprintf(f, "%-40s %-10.2f\n", "Benchmark duration (s):", s->duration_s);
  fprintf(f, "%-40s %lld\n", "Total input tokens:", (long long)s->total_input_tokens);
  fprintf(f, "%-40s %lld\n", "Total generated tokens:", (long long)s->total_output_tokens);
  fprintf(f, "%-40s %-10.2f\n", "Request throughput (req/s):", s->request_throughput);
  if (s->has_goodput) fprintf(f, "%-40s %-10.2f\n", "Request goodput (req/s):", s->request_goodput);
  fprintf(f, "%-40s %-10.2f\n", "Output token throughput (tok/s):", s->output_throughput);
  fprintf(f, "%-40s %-10.2f\n", "Total token throughput (tok/s):", s->total_token_throughput);
  table_stat(f, "Time to First Token", "TTFT", &s->ttft, s);
  table_stat(f, "Time per Output Token (excl. 1st token)", "TPOT", &s->tpot, s);
  table_stat(f, "Inter-token Latency", "ITL", &s->itl, s);
  table_stat(f, "End-to-end Latency", "E2EL", &s->e2el, s);
  fprintf(f, "==================================================\n");
  /* Distinct errors, most frequent first (a few). */
  size_t shown = 0;
  for (size_t i = 0; i < res->n && shown < 5; i++) {
    const char *e = res->records[i].error;
    if (!e) continue;
    int seen = 0;
    for (size_t j = 0; j < i && !seen; j++) seen = res->records[j].error && !strcmp(res->records[j].error, e);
    if (seen) continue;
    size_t count = 0;
    for (size_t j = i; j < res->n; j++) count += res->records[j].error && !strcmp(res->records[j].error, e);
    if (shown++ == 0) fprintf(f, "Errors:\n");
    fprintf(f, "  %zu x %s\n", count, e);
  }
  size_t no_usage = 0;
  for (size_t i = 0; i < res->n; i++) no_usage += res->records[i].success && !res->records[i].usage_reported;
  if (no_usage)
    fprintf(f, "Note: %zu responses carried no usage; their output tokens are counted as content chunks.\n", no_usage);
}

static cJSON *num_array(const double *v, size_t n) {
  cJSON *a = cJSON_CreateArray();
  for (size_t i = 0; a && i < n; i++) {
    cJSON *x = cJSON_CreateNumber(v[i]);
    if (!x || !cJSON_AddItemToArray(a, x)) {
      cJSON_Delete(x);
      cJSON_Delete(a);
      return NULL;
    }
  }
  return a;
}

static void add_stat(cJSON *root, const char *name, const bench_stat *st, const bench_summary *s) {
  char key[64], pn[16];
  snprintf(key, sizeof key, "mean_%s_ms", name);
  cJSON_AddNumberToObject(root, key, st->mean);
  snprintf(key, sizeof key, "median_%s_ms", name);
  cJSON_AddNumberToObject(root, key, st->median);
  snprintf(key, sizeof key, "std_%s_ms", name);
  cJSON_AddNumberToObject(root, key, st->std);
  for (int32_t i = 0; i < s->n_pcts; i++) {
    pct_name(s->pcts[i], pn, sizeof pn);
    snprintf(key, sizeof key, "%s_%s_ms", pn, name);
    cJSON_AddNumberToObject(root, key, st->pct[i]);
  }
}

static cJSON *settings_json(const bench_opts *o, const char *model) {
  cJSON *s = cJSON_CreateObject();
  if (!s) return NULL;
  cJSON_AddStringToObject(s, "base_url", o->base_url);
  cJSON_AddStringToObject(s, "endpoint", o->endpoint);
  cJSON_AddStringToObject(s, "model", model);
  cJSON_AddStringToObject(s, "dataset", o->dataset);
  if (o->dataset_path) cJSON_AddStringToObject(s, "dataset_path", o->dataset_path);
  cJSON_AddStringToObject(s, "tokenizer", o->tokenizer ? o->tokenizer : "server:/tokenize");
  cJSON_AddNumberToObject(s, "num_prompts", o->num_prompts);
  cJSON_AddNumberToObject(s, "input_len", o->input_len);
  cJSON_AddNumberToObject(s, "output_len", o->output_len);
  cJSON_AddBoolToObject(s, "output_len_set", o->output_len_set);
  cJSON_AddNumberToObject(s, "prefix_len", o->prefix_len);
  cJSON_AddNumberToObject(s, "range_ratio", o->range_ratio);
  cJSON_AddNumberToObject(s, "seed", (double)o->seed);
  cJSON_AddBoolToObject(s, "ignore_eos", o->ignore_eos);
  cJSON_AddNumberToObject(s, "temperature", o->temperature);
  if (o->request_rate > 0 && isfinite(o->request_rate)) cJSON_AddNumberToObject(s, "request_rate", o->request_rate);
  else cJSON_AddStringToObject(s, "request_rate", "inf");
  cJSON_AddNumberToObject(s, "burstiness", o->burstiness);
  if (o->max_concurrency > 0) cJSON_AddNumberToObject(s, "max_concurrency", o->max_concurrency);
  else cJSON_AddNullToObject(s, "max_concurrency");
  cJSON_AddNumberToObject(s, "warmup", o->warmup);
  if (o->timeout_s > 0) cJSON_AddNumberToObject(s, "timeout_s", o->timeout_s);
  else cJSON_AddNullToObject(s, "timeout_s");
  cJSON_AddItemToObject(s, "percentiles", num_array(o->pcts, (size_t)o->n_pcts));
  cJSON *g = cJSON_AddObjectToObject(s, "goodput");
  if (g && o->slo.ttft_ms > 0) cJSON_AddNumberToObject(g, "ttft_ms", o->slo.ttft_ms);
  if (g && o->slo.tpot_ms > 0) cJSON_AddNumberToObject(g, "tpot_ms", o->slo.tpot_ms);
  if (g && o->slo.e2el_ms > 0) cJSON_AddNumberToObject(g, "e2el_ms", o->slo.e2el_ms);
  return s;
}

int bench_report_write_json(const char *path, const bench_opts *o, const char *model, const bench_run_result *res,
                            const bench_summary *s, qv_error *err) {
  cJSON *root = cJSON_CreateObject();
  if (!root) return qv_error_set(err, QV_ENOMEM, "out of memory");
  char date[32];
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", &tm);
  cJSON_AddStringToObject(root, "date", date);
  cJSON_AddStringToObject(root, "tool", "quiver-bench");
  cJSON_AddStringToObject(root, "backend", strstr(o->endpoint, "chat") ? "openai-chat" : "openai");
  cJSON_AddStringToObject(root, "model_id", model);
  cJSON *meta = cJSON_AddObjectToObject(root, "metadata");
  for (int32_t i = 0; meta && i < o->n_metadata; i++) {
    const char *eq = strchr(o->metadata[i], '=');
    char key[128];
    snprintf(key, sizeof key, "%.*s", (int)(eq - o->metadata[i]), o->metadata[i]);
    cJSON_AddStringToObject(meta, key, eq + 1);
  }
  cJSON_AddItemToObject(root, "settings", settings_json(o, model));
  cJSON_AddNumberToObject(root, "num_prompts", (double)res->n);
  cJSON_AddNumberToObject(root, "duration", s->duration_s);
  cJSON_AddNumberToObject(root, "completed", (double)s->completed);
  cJSON_AddNumberToObject(root, "failed", (double)s->failed);
  cJSON_AddNumberToObject(root, "max_in_flight", res->max_in_flight);
  cJSON_AddNumberToObject(root, "connections_opened", (double)res->n_connects);
  cJSON_AddNumberToObject(root, "total_input_tokens", (double)s->total_input_tokens);
  cJSON_AddNumberToObject(root, "total_output_tokens", (double)s->total_output_tokens);
  cJSON_AddNumberToObject(root, "request_throughput", s->request_throughput);
  if (s->has_goodput) cJSON_AddNumberToObject(root, "request_goodput", s->request_goodput);
  else cJSON_AddNullToObject(root, "request_goodput");
  cJSON_AddNumberToObject(root, "output_throughput", s->output_throughput);
  cJSON_AddNumberToObject(root, "total_token_throughput", s->total_token_throughput);
  add_stat(root, "ttft", &s->ttft, s);
  add_stat(root, "tpot", &s->tpot, s);
  add_stat(root, "itl", &s->itl, s);
  add_stat(root, "e2el", &s->e2el, s);
  cJSON *reqs = cJSON_AddArrayToObject(root, "requests");
  for (size_t i = 0; reqs && i < res->n; i++) {
    const bench_record *r = &res->records[i];
    cJSON *j = cJSON_CreateObject();
    if (!j || !cJSON_AddItemToArray(reqs, j)) {
      cJSON_Delete(j);
      break;
    }
    cJSON_AddBoolToObject(j, "success", r->success);
    if (r->error) cJSON_AddStringToObject(j, "error", r->error);
    cJSON_AddNumberToObject(j, "http_status", r->http_status);
    cJSON_AddNumberToObject(j, "start_s", r->start_s);
    cJSON_AddNumberToObject(j, "ttft_s", r->ttft_s);
    cJSON_AddNumberToObject(j, "e2el_s", r->e2el_s);
    cJSON_AddNumberToObject(j, "prompt_tokens", (double)r->prompt_tokens);
    cJSON_AddNumberToObject(j, "output_tokens", (double)r->output_tokens);
    cJSON_AddBoolToObject(j, "usage_reported", r->usage_reported);
    cJSON_AddNumberToObject(j, "chunks", r->n_chunks);
    cJSON_AddItemToObject(j, "itl_s", num_array(r->itl, (size_t)r->n_itl));
    if (o->save_text) cJSON_AddStringToObject(j, "text", r->text ? r->text : "");
  }
  char *txt = cJSON_Print(root);
  cJSON_Delete(root);
  if (!txt) return qv_error_set(err, QV_ENOMEM, "out of memory printing the result file");
  FILE *f = fopen(path, "w");
  if (!f) {
    free(txt);
    return qv_error_set(err, QV_EIO, "cannot write '%s'", path);
  }
  int bad = fputs(txt, f) < 0 || fputc('\n', f) == EOF;
  bad |= fclose(f) != 0;
  free(txt);
  return bad ? qv_error_set(err, QV_EIO, "writing '%s' failed", path) : 0;
}
