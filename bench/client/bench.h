/* quiver-bench: shared types of the load generator's modules (options, prompts, per-request
 * records). The metric math lives in src/core/bench_metrics.c so unit tests can reach it. */
#ifndef QV_BENCH_BENCH_H
#define QV_BENCH_BENCH_H

#include <stddef.h>
#include <stdint.h>

#include "core/bench_metrics.h"
#include "http.h"
#include "quiver/error.h"

#define BENCH_MAX_METADATA 16

typedef struct bench_opts {
  const char *base_url;      /* borrowed from argv */
  const char *endpoint;      /* "/v1/completions" or "/v1/chat/completions" */
  const char *model;         /* NULL: the first of /v1/models */
  const char *api_key;
  const char *dataset;       /* "random", "sharegpt" or "jsonl" */
  const char *dataset_path;
  const char *tokenizer;     /* NULL: the server's /tokenize and /detokenize */
  int32_t num_prompts;
  int32_t input_len, output_len, prefix_len;
  int output_len_set;        /* --output-len given (fixes ShareGPT output lengths) */
  double range_ratio;
  uint64_t seed;
  int ignore_eos;
  double temperature;
  double request_rate;       /* <= 0 or inf: all at once */
  double burstiness;
  int32_t max_concurrency;   /* 0: unlimited */
  int32_t warmup;
  double timeout_s;          /* per request; 0: none */
  double pcts[BENCH_MAX_PCTS];
  int32_t n_pcts;
  bench_slo slo;
  const char *result_file;
  const char *save_prompts;  /* JSONL file to write the built prompts to, or NULL */
  int progress;              /* -1 auto (a terminal), 0 off, 1 on */
  int save_text;             /* keep generated text in the result file */
  const char *metadata[BENCH_MAX_METADATA]; /* "KEY=VALUE" */
  int32_t n_metadata;
} bench_opts;

/* One request to send. */
typedef struct bench_prompt {
  char *prompt;              /* owned */
  int32_t prompt_len;        /* tokens as the dataset measured them; -1 unknown */
  int32_t output_len;        /* max_tokens to ask for */
} bench_prompt;

void bench_prompts_free(bench_prompt *p, size_t n); /* accepts NULL */

/* What one request did. */
typedef struct bench_record {
  int success;
  char *error;               /* owned; NULL on success */
  int http_status;
  double start_s;            /* send time, from the start of the run */
  double ttft_s, e2el_s;
  double *itl;               /* [n_itl] owned */
  int32_t n_itl, itl_cap;
  int32_t n_chunks;          /* content chunks received */
  int usage_reported;        /* the server sent usage; else output_tokens counts chunks */
  int64_t prompt_tokens;     /* usage.prompt_tokens, else the dataset's length, else 0 */
  int64_t output_tokens;
  char *text;                /* [text_len] generated text, owned */
  size_t text_len, text_cap;
} bench_record;

void bench_records_free(bench_record *r, size_t n); /* accepts NULL */

#endif
