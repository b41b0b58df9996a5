/* quiver bench engine: offline throughput of a model on a backend, without HTTP.
 *
 * N prompts of L random token ids each, greedy, EOS ignored so every sequence yields exactly M
 * tokens. Two paths:
 *   --path engine (default): every prompt is submitted to a qv_engine (continuous batching,
 *     chunked prefill, paged KV, sampler) and the events are drained until all finish: what the
 *     server's generation costs without HTTP. Prefix caching is off so repeated runs redo the
 *     same work.
 *   --path model: qv_model_forward is driven directly with a static batch (prompts packed into
 *     steps of at most --max-batch-tokens tokens, then one decode step for all sequences per
 *     output token, host argmax): the bound the scheduler can approach, and a reference for
 *     the engine's overhead.
 * Each of --runs repetitions is timed after one untimed warm-up run and the median is reported,
 * with every run in --result-file. --prompt-file gives every sequence the same known prompt, so
 * a test can check the generated ids against a reference. */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "backend/backend.h"
#include "cli/cli.h"
#include "cli/opts.h"
#include "core/bench_rng.h"
#include "models/model.h"
#include "quiver/engine.h"

typedef struct eb_opts {
  const char *model;        /* NULL: the embedded quiver-tiny */
  const char *device;       /* "cpu" or "cuda" */
  int path_engine;          /* 1: through qv_engine; 0: qv_model_forward directly */
  int32_t max_num_seqs;     /* engine: running sequences at once */
  int32_t num_prompts, input_len, output_len;
  int32_t max_batch_tokens; /* tokens per forward */
  int32_t block_size;
  int32_t threads;          /* cpu worker threads, 0: all cores */
  int32_t tp_size;          /* tensor parallel ranks (--tensor-parallel-size) */
  int32_t cpu_bf16_dot;     /* --cpu-bf16-dot */
  int32_t runs;
  uint64_t seed;
  const char *result_file;
  const char *prompt_file;  /* whitespace-separated ids; every prompt is its first input_len ids */
  const char *metadata[16]; /* "KEY=VALUE" copied into the result file */
  int32_t n_metadata;
  const char *dtype;        /* --dtype, checked against the backend (NULL: auto) */
} eb_opts;

/* One timed run. */
typedef struct eb_run {
  double prefill_s, decode_s, total_s; /* model path; the engine path has no phases */
  double mean_ttft_s;                  /* engine path: submit -> first token, mean */
  int64_t n_steps;
} eb_run;

enum {
  B_MODEL = 1,
  B_PATH,
  B_NUM_PROMPTS,
  B_INPUT_LEN,
  B_OUTPUT_LEN,
  B_RUNS,
  B_RESULT_FILE,
  B_PROMPT_FILE,
  B_METADATA,
};

static const cli_opt bench_opts[] = {
    {B_MODEL, CLI_OPT_STR, {"--model", "-m"}, 0, 0, "PATH",
     "Hugging Face model directory (also positional; default: the embedded quiver-tiny)"},
    {B_PATH, CLI_OPT_STR, {"--path"}, 0, 0, "engine|model",
     "through the engine (default) or the model's forward directly"},
    {B_NUM_PROMPTS, CLI_OPT_INT, {"--num-prompts"}, 1, 1 << 20, "N", "sequences (default 64)"},
    {B_INPUT_LEN, CLI_OPT_INT, {"--input-len"}, 1, 1 << 22, "L", "prompt tokens each (default 128)"},
    {B_OUTPUT_LEN, CLI_OPT_INT, {"--output-len"}, 1, 1 << 22, "M",
     "generated tokens each, EOS ignored (default 128)"},
    {B_RUNS, CLI_OPT_INT, {"--runs"}, 1, 1000, "R", "timed repetitions, the median is reported (default 3)"},
    {B_RESULT_FILE, CLI_OPT_STR, {"--result-file"}, 0, 0, "FILE",
     "write settings, every run and the generated ids as JSON"},
    {B_PROMPT_FILE, CLI_OPT_STR, {"--prompt-file"}, 0, 0, "FILE",
     "whitespace-separated token ids: every prompt is their first L ids\n"
     "(instead of random ids; checks batched greedy output)"},
    {B_METADATA, CLI_OPT_STR, {"--metadata"}, 0, 0, "KEY=VALUE",
     "added to the result file (repeatable: machine, commit...)"},
};

/* The shared rows bench uses (--seed seeds the random prompts here). */
static const int bench_common_ids[] = {CLI_E_DEVICE, CLI_E_THREADS, CLI_E_MAX_NUM_SEQS, CLI_E_MAX_BATCHED,
                                       CLI_E_BLOCK_SIZE, CLI_E_SEED, CLI_E_DTYPE, CLI_E_TP,
                                       CLI_E_CPU_BF16_DOT};

static cli_spec bench_spec(void) {
  return (cli_spec){.prog = "quiver bench engine",
                    .synopsis = "quiver bench engine [MODEL] [options]",
                    .own = bench_opts,
                    .n_own = (int)(sizeof bench_opts / sizeof bench_opts[0]),
                    .common = cli_engine_opts,
                    .n_common = cli_n_engine_opts,
                    .common_ids = bench_common_ids,
                    .n_common_ids = (int)(sizeof bench_common_ids / sizeof bench_common_ids[0]),
                    .positional_id = B_MODEL,
                    .first_arg = 2};
}

static void usage(FILE *f) {
  cli_spec s = bench_spec();
  cli_usage(&s, f);
  fprintf(f, "Defaults: --max-num-seqs 256, --max-num-batched-tokens 2048, --block-size 16, --seed 0;\n"
             "prefix caching is off so repeated runs redo the same work.\n");
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef struct bench_parse {
  eb_opts *o;
  cli_engine_cfg eng;
} bench_parse;

static int bench_opt(void *ud, const cli_opt *opt, const cli_value *v, qv_error *err) {
  bench_parse *p = ud;
  eb_opts *o = p->o;
  if (opt->id >= CLI_E_DEVICE) return cli_engine_apply(&p->eng, opt, v, err);
  switch (opt->id) {
  case B_MODEL: o->model = v->str; return 0;
  case B_PATH:
    if (strcmp(v->str, "engine") && strcmp(v->str, "model"))
      return qv_error_set(err, QV_EINVAL, "--path must be engine or model, got '%s'", v->str);
    o->path_engine = !strcmp(v->str, "engine");
    return 0;
  case B_NUM_PROMPTS: o->num_prompts = (int32_t)v->i; return 0;
  case B_INPUT_LEN: o->input_len = (int32_t)v->i; return 0;
  case B_OUTPUT_LEN: o->output_len = (int32_t)v->i; return 0;
  case B_RUNS: o->runs = (int32_t)v->i; return 0;
  case B_RESULT_FILE: o->result_file = v->str; return 0;
  case B_PROMPT_FILE: o->prompt_file = v->str; return 0;
  case B_METADATA: {
    const char *eq = strchr(v->str, '=');
    if (!eq || eq == v->str || eq - v->str >= 100 || o->n_metadata >= 16)
      return qv_error_set(err, QV_EINVAL, "bad value '%s' for --metadata (KEY=VALUE, at most 16)", v->str);
    o->metadata[o->n_metadata++] = v->str;
    return 0;
  }
  default: return qv_error_set(err, QV_EINVAL, "internal: unhandled option %s", opt->names[0]);
  }
}

/* 0: run; 1: --help; -1: a usage error (printed). */
static int parse_args(int argc, char **argv, eb_opts *o) {
  *o = (eb_opts){.device = "cpu", .path_engine = 1, .max_num_seqs = 256, .num_prompts = 64, .input_len = 128, .output_len = 128,
                 .max_batch_tokens = 2048, .block_size = 16, .runs = 3};
  bench_parse p = {.o = o};
  cli_engine_cfg_init(&p.eng);
  cli_spec spec = bench_spec();
  qv_error err = {0};
  int rc = cli_parse(&spec, argc, argv, bench_opt, &p, &err);
  if (rc == CLI_HELP) return 1;
  if (rc) {
    fprintf(stderr, "quiver bench engine: %s\n", err.msg);
    return -1;
  }
  const cli_engine_cfg *e = &p.eng;
  if (e->device) o->device = e->device;
  if (e->threads >= 0) o->threads = e->threads;
  o->tp_size = e->tp_size > 0 ? e->tp_size : 1;
  if (e->max_num_seqs) o->max_num_seqs = e->max_num_seqs;
  if (e->max_num_batched_tokens) o->max_batch_tokens = e->max_num_batched_tokens;
  if (e->block_size) o->block_size = e->block_size;
  if (e->has_seed) o->seed = e->seed;
  o->dtype = e->dtype;
  o->cpu_bf16_dot = e->cpu_bf16_dot;
  return 0;
}

/* Host buffers of one step, sized for the largest step. */
typedef struct eb_bufs {
  int32_t *tokens, *positions, *slots, *logits_idx; /* [max_tok] */
  int32_t *q_start;                                 /* [max_seqs + 1] */
  int32_t *ctx_len;                                 /* [max_seqs] */
  int32_t *tables;                                  /* [max_seqs][blocks_per_seq] */
  int32_t *batch_seq;                               /* [max_seqs] which sequence each batch row is */
  float *logits;                                    /* [max_logits][vocab] */
  int32_t *prompts;                                 /* [n][L] */
  int32_t *last;                                    /* [n] last sampled token */
  int32_t *out;                                     /* [n][M] generated ids */
  int32_t *n_out;                                   /* [n] engine: ids received so far */
  double *first_s;                                  /* [n] engine: time of the first token */
  uint64_t *req_ids;                                /* [n] engine: request id of each sequence */
} eb_bufs;

static void bufs_free(eb_bufs *b) {
  free(b->tokens);
  free(b->positions);
  free(b->slots);
  free(b->logits_idx);
  free(b->q_start);
  free(b->ctx_len);
  free(b->tables);
  free(b->batch_seq);
  free(b->logits);
  free(b->prompts);
  free(b->last);
  free(b->out);
  free(b->n_out);
  free(b->first_s);
  free(b->req_ids);
}

static int32_t argmax_row(const float *row, int32_t n) {
  int32_t best = 0;
  for (int32_t i = 1; i < n; i++)
    if (row[i] > row[best]) best = i;
  return best;
}

/* Wakes the benchmark thread when the engine posts events (the hook coalesces). */
typedef struct eb_wait {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int pending;
} eb_wait;

typedef struct eb_ctx {
  const eb_opts *o;
  qv_model *m;
  qv_engine *e;                /* engine path */
  eb_wait wait;
  int32_t vocab, bps;          /* vocabulary; KV blocks per sequence */
  int32_t max_seqs, max_logits;
  eb_bufs b;
} eb_ctx;

/* Runs the staged batch of n_tok tokens / n_seq sequences / n_log logits and samples. */
static int step(eb_ctx *c, int32_t n_tok, int32_t n_seq, int32_t n_log, qv_error *err) {
  eb_bufs *b = &c->b;
  b->q_start[0] = 0;
  for (int32_t s = 0; s < n_seq; s++) {
    int32_t seq = b->batch_seq[s];
    for (int32_t j = 0; j < c->bps; j++) b->tables[(size_t)s * c->bps + j] = seq * c->bps + j;
  }
  qv_batch batch = {.n_tokens = n_tok, .n_seqs = n_seq, .n_logits = n_log, .token_ids = b->tokens,
                    .positions = b->positions, .slot_mapping = b->slots, .seq_q_start = b->q_start,
                    .seq_ctx_len = b->ctx_len, .block_tables = b->tables, .max_blocks = c->bps,
                    .logits_idx = b->logits_idx};
  return qv_model_forward(c->m, &batch, b->logits, err);
}

static int32_t slot_of(const eb_ctx *c, int32_t seq, int32_t pos) {
  int32_t bs = c->o->block_size;
  return (seq * c->bps + pos / bs) * bs + pos % bs;
}

static int run_once(eb_ctx *c, eb_run *r, qv_error *err) {
  const eb_opts *o = c->o;
  eb_bufs *b = &c->b;
  int32_t T = o->max_batch_tokens, L = o->input_len, M = o->output_len, N = o->num_prompts;
  memset(r, 0, sizeof *r);
  double t0 = now_s();
  /* Prefill: walk the prompts in order, packing chunks into steps of at most T tokens. */
  int32_t seq = 0, off = 0;
  while (seq < N) {
    int32_t n_tok = 0, n_seq = 0, n_log = 0;
    while (seq < N && n_tok < T && n_seq < c->max_seqs && n_log < c->max_logits) {
      int32_t chunk = L - off < T - n_tok ? L - off : T - n_tok;
      b->batch_seq[n_seq] = seq;
      for (int32_t j = 0; j < chunk; j++) {
        int32_t pos = off + j;
        b->tokens[n_tok + j] = b->prompts[(size_t)seq * L + pos];
        b->positions[n_tok + j] = pos;
        b->slots[n_tok + j] = slot_of(c, seq, pos);
      }
      n_tok += chunk;
      off += chunk;
      b->ctx_len[n_seq] = off;
      b->q_start[n_seq + 1] = n_tok;
      n_seq++;
      if (off == L) {
        b->logits_idx[n_log++] = n_tok - 1;
        seq++;
        off = 0;
      }
    }
    int rc = step(c, n_tok, n_seq, n_log, err);
    if (rc) return rc;
    r->n_steps++;
    /* Sequences whose prompt completed in this step get their first token. */
    for (int32_t k = 0, s = 0; k < n_log; k++) {
      while (b->q_start[s + 1] - 1 != b->logits_idx[k]) s++;
      b->last[b->batch_seq[s]] = argmax_row(b->logits + (size_t)k * c->vocab, c->vocab);
      b->out[(size_t)b->batch_seq[s] * M] = b->last[b->batch_seq[s]];
    }
  }
  double t1 = now_s();
  /* Decode: every sequence advances one token per step, in groups of at most max_logits. */
  for (int32_t t = 1; t < M; t++) {
    for (int32_t first = 0; first < N; first += c->max_logits) {
      /* max_logits <= max_seqs <= T, so a decode group always fits one forward. */
      int32_t n = N - first < c->max_logits ? N - first : c->max_logits;
      for (int32_t s = 0; s < n; s++) {
        int32_t q = first + s, pos = L + t - 1;
        b->batch_seq[s] = q;
        b->tokens[s] = b->last[q];
        b->positions[s] = pos;
        b->slots[s] = slot_of(c, q, pos);
        b->ctx_len[s] = pos + 1;
        b->q_start[s + 1] = s + 1;
        b->logits_idx[s] = s;
      }
      int rc = step(c, n, n, n, err);
      if (rc) return rc;
      r->n_steps++;
      for (int32_t s = 0; s < n; s++) {
        b->last[first + s] = argmax_row(b->logits + (size_t)s * c->vocab, c->vocab);
        b->out[(size_t)(first + s) * M + t] = b->last[first + s];
      }
    }
  }
  double t2 = now_s();
  r->prefill_s = t1 - t0;
  r->decode_s = t2 - t1;
  r->total_s = t2 - t0;
  return 0;
}

static void eb_notify(void *arg) {
  eb_wait *w = arg;
  pthread_mutex_lock(&w->mu);
  w->pending = 1;
  pthread_cond_signal(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

/* Index of the sequence whose request id is id; ids are handed out in submit order, so a
 * binary search over req_ids (ascending) finds it. -1 if unknown. */
static int32_t seq_of(const eb_ctx *c, uint64_t id) {
  int32_t lo = 0, hi = c->o->num_prompts - 1;
  while (lo <= hi) {
    int32_t mid = lo + (hi - lo) / 2;
    if (c->b.req_ids[mid] == id) return mid;
    if (c->b.req_ids[mid] < id) lo = mid + 1;
    else hi = mid - 1;
  }
  return -1;
}

static int run_engine_once(eb_ctx *c, eb_run *r, qv_error *err) {
  const eb_opts *o = c->o;
  eb_bufs *b = &c->b;
  int32_t L = o->input_len, M = o->output_len, N = o->num_prompts;
  memset(r, 0, sizeof *r);
  memset(b->n_out, 0, (size_t)N * sizeof *b->n_out);
  qv_engine_stats st0, st1;
  qv_engine_get_stats(c->e, &st0);
  int rc = 0;
  int32_t submitted = 0, done = 0;
  double t0 = now_s();
  for (; submitted < N; submitted++) {
    qv_request_params p;
    qv_request_params_default(&p);
    p.prompt_ids = b->prompts + (size_t)submitted * L;
    p.n_prompt = L;
    p.max_tokens = M;
    p.ignore_eos = 1;
    p.detokenize = 0;
    p.sampling.temperature = 0.0f;
    rc = qv_engine_submit(c->e, &p, &b->req_ids[submitted], err);
    if (rc) break;
    if (submitted && b->req_ids[submitted] <= b->req_ids[submitted - 1]) {
      rc = qv_error_set(err, QV_ESTATE, "engine request ids are not increasing");
      submitted++;
      break;
    }
  }
  if (rc) {
    /* Abort what went in and drain it below; the first error is returned. */
    for (int32_t s = 0; s < submitted; s++) qv_engine_abort(c->e, b->req_ids[s]);
  }
  qv_event *evs[256];
  while (done < submitted) {
    pthread_mutex_lock(&c->wait.mu);
    while (!c->wait.pending) pthread_cond_wait(&c->wait.cv, &c->wait.mu);
    c->wait.pending = 0;
    pthread_mutex_unlock(&c->wait.mu);
    int n;
    while ((n = qv_engine_poll(c->e, evs, 256)) > 0) {
      double t = now_s() - t0;
      for (int i = 0; i < n; i++) {
        const qv_event *ev = evs[i];
        int32_t s = seq_of(c, ev->req_id);
        if (s >= 0 && ev->type == QV_EVENT_TOKENS && ev->n_tokens > 0) {
          if (b->n_out[s] == 0) b->first_s[s] = t;
          for (int32_t k = 0; k < ev->n_tokens && b->n_out[s] < M; k++) b->out[(size_t)s * M + b->n_out[s]++] = ev->token_ids[k];
        } else if (s >= 0 && ev->type == QV_EVENT_FINISH) {
          done++;
          if (!rc && ev->finish == QV_FINISH_ERROR)
            rc = qv_error_set(err, QV_EDEVICE, "engine: %s", ev->error ? ev->error : "request failed");
          else if (!rc && ev->completion_tokens != M)
            rc = qv_error_set(err, QV_ESTATE, "engine: a sequence finished (%s) with %d tokens, not %d",
                              qv_finish_reason_str(ev->finish), ev->completion_tokens, M);
        }
        qv_event_free(evs[i]);
      }
    }
  }
  double t1 = now_s();
  if (rc) return rc;
  qv_engine_get_stats(c->e, &st1);
  double sum = 0;
  for (int32_t s = 0; s < N; s++) sum += b->first_s[s];
  r->total_s = t1 - t0;
  r->mean_ttft_s = sum / N;
  r->n_steps = st1.n_steps - st0.n_steps;
  return 0;
}

static int run_one(eb_ctx *c, eb_run *r, qv_error *err) {
  return c->o->path_engine ? run_engine_once(c, r, err) : run_once(c, r, err);
}

static int cmp_run(const void *a, const void *b) {
  double x = ((const eb_run *)a)->total_s, y = ((const eb_run *)b)->total_s;
  return (x > y) - (x < y);
}

static int write_result(const eb_opts *o, const qv_model_config *cfg, const eb_run *runs, const eb_run *med,
                        const int32_t *out, const qv_tp_stats *tp, qv_error *err) {
  cJSON *root = cJSON_CreateObject();
  if (!root) return qv_error_set(err, QV_ENOMEM, "out of memory");
  double N = o->num_prompts, L = o->input_len, M = o->output_len;
  cJSON_AddStringToObject(root, "tool", "quiver bench engine");
  cJSON_AddStringToObject(root, "path", o->path_engine ? "engine (continuous batching, greedy, EOS ignored, no prefix cache)"
                                                       : "model (static batching, greedy, EOS ignored)");
  cJSON *meta = cJSON_AddObjectToObject(root, "metadata");
  for (int32_t i = 0; meta && i < o->n_metadata; i++) {
    const char *eq = strchr(o->metadata[i], '=');
    char key[128];
    snprintf(key, sizeof key, "%.*s", (int)(eq - o->metadata[i]), o->metadata[i]);
    cJSON_AddStringToObject(meta, key, eq + 1);
  }
  cJSON *s = cJSON_AddObjectToObject(root, "settings");
  cJSON_AddStringToObject(s, "model", o->model ? o->model : "quiver-tiny");
  cJSON_AddStringToObject(s, "arch", cfg->arch);
  cJSON_AddStringToObject(s, "device", o->device);
  cJSON_AddNumberToObject(s, "num_prompts", N);
  cJSON_AddNumberToObject(s, "input_len", L);
  cJSON_AddNumberToObject(s, "output_len", M);
  cJSON_AddNumberToObject(s, "max_batch_tokens", o->max_batch_tokens);
  if (o->path_engine) cJSON_AddNumberToObject(s, "max_num_seqs", o->max_num_seqs);
  cJSON_AddNumberToObject(s, "block_size", o->block_size);
  cJSON_AddNumberToObject(s, "threads", o->threads);
  cJSON_AddNumberToObject(s, "tensor_parallel_size", o->tp_size);
  cJSON_AddNumberToObject(s, "runs", o->runs);
  cJSON_AddNumberToObject(s, "seed", (double)o->seed);
  cJSON_AddNumberToObject(root, "median_total_s", med->total_s);
  cJSON_AddNumberToObject(root, "requests_per_s", N / med->total_s);
  cJSON_AddNumberToObject(root, "output_tokens_per_s", N * M / med->total_s);
  cJSON_AddNumberToObject(root, "total_tokens_per_s", N * (L + M) / med->total_s);
  if (o->path_engine) {
    cJSON_AddNumberToObject(root, "mean_ttft_ms", med->mean_ttft_s * 1e3);
  } else {
    cJSON_AddNumberToObject(root, "prefill_tokens_per_s", N * L / med->prefill_s);
    if (M > 1) cJSON_AddNumberToObject(root, "decode_tokens_per_s", N * (M - 1) / med->decode_s);
  }
  if (tp->n_steps > 0) {
    /* Rank 0's time inside all-reduces and logits gathers over the timed runs' forwards. */
    cJSON *t = cJSON_AddObjectToObject(root, "tensor_parallel");
    cJSON_AddNumberToObject(t, "steps", (double)tp->n_steps);
    cJSON_AddNumberToObject(t, "step_s", tp->step_s);
    cJSON_AddNumberToObject(t, "collectives_per_step", (double)tp->n_collectives / (double)tp->n_steps);
    cJSON_AddNumberToObject(t, "comm_s", tp->comm_s);
    cJSON_AddNumberToObject(t, "comm_share_of_step", tp->step_s > 0 ? tp->comm_s / tp->step_s : 0);
  }
  cJSON *arr = cJSON_AddArrayToObject(root, "runs");
  for (int32_t i = 0; arr && i < o->runs; i++) {
    cJSON *j = cJSON_CreateObject();
    if (!j || !cJSON_AddItemToArray(arr, j)) {
      cJSON_Delete(j);
      break;
    }
    if (o->path_engine) {
      cJSON_AddNumberToObject(j, "mean_ttft_s", runs[i].mean_ttft_s);
    } else {
      cJSON_AddNumberToObject(j, "prefill_s", runs[i].prefill_s);
      cJSON_AddNumberToObject(j, "decode_s", runs[i].decode_s);
    }
    cJSON_AddNumberToObject(j, "total_s", runs[i].total_s);
    cJSON_AddNumberToObject(j, "forward_steps", (double)runs[i].n_steps);
  }
  /* The last run's ids of sequence 0, and whether every sequence generated the same ids (they
   * must when all prompts are equal: a sequence's math never depends on its batch). */
  size_t M_ = (size_t)o->output_len;
  cJSON_AddItemToObject(root, "output_ids", cJSON_CreateIntArray(out, (int)M_));
  int same = 1;
  for (size_t q = 1; same && q < (size_t)o->num_prompts; q++) same = !memcmp(out, out + q * M_, M_ * sizeof *out);
  cJSON_AddBoolToObject(root, "outputs_identical", same);
  char *txt = cJSON_Print(root);
  cJSON_Delete(root);
  if (!txt) return qv_error_set(err, QV_ENOMEM, "out of memory");
  FILE *f = fopen(o->result_file, "w");
  int bad = !f || fputs(txt, f) < 0 || fputc('\n', f) == EOF;
  if (f) bad |= fclose(f) != 0;
  free(txt);
  return bad ? qv_error_set(err, QV_EIO, "cannot write '%s'", o->result_file) : 0;
}

/* Fills prompts[n][L] with the first L ids of o->prompt_file, for every sequence. */
static int read_prompt_file(const eb_opts *o, int32_t vocab, int32_t *prompts, qv_error *err) {
  FILE *f = fopen(o->prompt_file, "r");
  if (!f) return qv_error_set(err, QV_EIO, "cannot open '%s'", o->prompt_file);
  int32_t L = o->input_len, k = 0;
  long v;
  int rc = 0;
  while (k < L) {
    int got = fscanf(f, "%ld", &v);
    if (got != 1) {
      rc = qv_error_set(err, QV_EFORMAT, "%s: %s after %d ids (need %d)", o->prompt_file,
                        got == EOF ? "ends" : "not a token id", k, L);
      break;
    }
    if (v < 0 || v >= vocab) {
      rc = qv_error_set(err, QV_ERANGE, "%s: id %ld outside the vocabulary (%d)", o->prompt_file, v, vocab);
      break;
    }
    prompts[k++] = (int32_t)v;
  }
  fclose(f);
  for (int32_t s = 1; !rc && s < o->num_prompts; s++) memcpy(prompts + (size_t)s * L, prompts, (size_t)L * sizeof *prompts);
  return rc;
}

static void print_summary(const eb_opts *o, const eb_run *med) {
  double N = o->num_prompts, L = o->input_len, M = o->output_len;
  printf("============ Offline Engine Benchmark ============\n");
  printf("%-34s %s\n", "Model:", o->model ? o->model : "quiver-tiny (embedded)");
  printf("%-34s %s\n", "Device:", o->device);
  printf("%-34s %s\n", "Path:", o->path_engine ? "engine" : "model (static batching)");
  printf("%-34s %d x (%d in + %d out)\n", "Sequences:", o->num_prompts, o->input_len, o->output_len);
  printf("%-34s %d (median of %d)\n", "Runs:", o->runs, o->runs);
  printf("%-34s %.3f\n", "Elapsed (s):", med->total_s);
  printf("%-34s %.2f\n", "Requests/s:", N / med->total_s);
  printf("%-34s %.1f\n", "Output tokens/s:", N * M / med->total_s);
  printf("%-34s %.1f\n", "Total tokens/s:", N * (L + M) / med->total_s);
  if (o->path_engine) {
    printf("%-34s %.2f\n", "Mean time to first token (ms):", med->mean_ttft_s * 1e3);
  } else {
    printf("%-34s %.1f\n", "Prefill tokens/s:", N * L / med->prefill_s);
    if (M > 1) printf("%-34s %.1f\n", "Decode tokens/s:", N * (M - 1) / med->decode_s);
  }
  printf("%-34s %lld\n", "Forward steps per run:", (long long)med->n_steps);
  printf("==================================================\n");
}

/* Host buffers of the model path (the engine path needs none of them). */
static int alloc_model_bufs(eb_ctx *c, qv_error *err) {
  eb_bufs *b = &c->b;
  size_t T = (size_t)c->o->max_batch_tokens, S = (size_t)c->max_seqs;
  b->tokens = malloc(T * sizeof(int32_t));
  b->positions = malloc(T * sizeof(int32_t));
  b->slots = malloc(T * sizeof(int32_t));
  b->logits_idx = malloc(T * sizeof(int32_t));
  b->q_start = malloc((S + 1) * sizeof(int32_t));
  b->ctx_len = malloc(S * sizeof(int32_t));
  b->tables = malloc(S * (size_t)c->bps * sizeof(int32_t));
  b->batch_seq = malloc(S * sizeof(int32_t));
  b->logits = malloc((size_t)c->max_logits * (size_t)c->vocab * sizeof(float));
  b->last = calloc((size_t)c->o->num_prompts, sizeof(int32_t));
  if (!b->tokens || !b->positions || !b->slots || !b->logits_idx || !b->q_start || !b->ctx_len || !b->tables ||
      !b->batch_seq || !b->logits || !b->last)
    return qv_error_set(err, QV_ENOMEM, "out of memory for the benchmark buffers");
  return 0;
}

static int start_engine(eb_ctx *c, qv_error *err) {
  const eb_opts *o = c->o;
  qv_engine_opts eo;
  qv_engine_opts_default(&eo);
  eo.block_size = o->block_size;
  eo.n_kv_blocks = c->max_seqs * c->bps;
  eo.max_num_seqs = c->max_seqs;
  eo.max_num_batched_tokens = o->max_batch_tokens;
  eo.enable_prefix_caching = 0; /* repeated runs must redo the same work */
  eo.max_waiting = o->num_prompts + 1;
  int rc = qv_engine_create(c->m, NULL, &eo, &c->e, err);
  if (rc) return rc;
  qv_engine_set_notify(c->e, eb_notify, &c->wait);
  return 0;
}

static int bench_model(const eb_opts *o, qv_error *err) {
  qv_backend *be = NULL;
  qv_model *m = NULL;
  eb_ctx c = {.o = o};
  eb_run *runs = NULL;
  pthread_mutex_init(&c.wait.mu, NULL);
  pthread_cond_init(&c.wait.cv, NULL);
  qv_backend_opts bo = {.n_threads = o->threads, .cpu_bf16_dot = o->cpu_bf16_dot};
  int rc = qv_backend_create(o->device, &bo, &be, err);
  if (!rc) rc = qv_backend_check_dtype(be, o->dtype, err);
  int32_t T = o->max_batch_tokens, N = o->num_prompts;
  if (o->path_engine) {
    c.max_seqs = N < o->max_num_seqs ? N : o->max_num_seqs;
    c.max_logits = c.max_seqs; /* the engine samples every running sequence in one step */
  } else {
    c.max_seqs = T < N ? T : N;
    c.max_logits = c.max_seqs < 512 ? c.max_seqs : 512;
  }
  qv_model_opts mo = {.max_batch_tokens = T, .max_logits = c.max_logits, .tp_size = o->tp_size,
                      .n_threads = o->threads, .cpu_bf16_dot = o->cpu_bf16_dot};
  if (!rc) rc = qv_model_load(o->model, be, &mo, &m, err);
  if (!rc) {
    const qv_model_config *cfg = qv_model_get_config(m);
    c.m = m;
    c.vocab = cfg->vocab_size;
    int64_t ctx = (int64_t)o->input_len + o->output_len;
    if (ctx > cfg->max_pos)
      rc = qv_error_set(err, QV_ERANGE, "input + output length %lld exceeds the model's %d positions", (long long)ctx,
                        cfg->max_pos);
    c.bps = (int32_t)((ctx + o->block_size - 1) / o->block_size);
    if (!rc && (int64_t)c.bps * N > INT32_MAX / o->block_size)
      rc = qv_error_set(err, QV_ERANGE, "too many KV slots for %d sequences of %lld tokens", N, (long long)ctx);
  }
  if (!rc) {
    eb_bufs *b = &c.b;
    b->prompts = malloc((size_t)N * (size_t)o->input_len * sizeof(int32_t));
    b->out = calloc((size_t)N * (size_t)o->output_len, sizeof(int32_t));
    b->n_out = calloc((size_t)N, sizeof(int32_t));
    b->first_s = calloc((size_t)N, sizeof(double));
    b->req_ids = calloc((size_t)N, sizeof(uint64_t));
    runs = calloc((size_t)o->runs, sizeof *runs);
    if (!b->prompts || !b->out || !b->n_out || !b->first_s || !b->req_ids || !runs)
      rc = qv_error_set(err, QV_ENOMEM, "out of memory for the benchmark buffers");
  }
  if (!rc) {
    if (o->path_engine) {
      rc = start_engine(&c, err);
    } else {
      rc = qv_model_kv_init(m, c.bps * N, o->block_size, err);
      if (!rc) rc = alloc_model_bufs(&c, err);
    }
  }
  if (!rc) {
    if (o->prompt_file) {
      rc = read_prompt_file(o, c.vocab, c.b.prompts, err);
    } else {
      bench_rng rng;
      bench_rng_seed(&rng, o->seed);
      for (size_t i = 0; i < (size_t)N * (size_t)o->input_len; i++)
        c.b.prompts[i] = (int32_t)bench_rng_int(&rng, 0, c.vocab - 1);
    }
  }
  if (!rc) {
    /* One untimed run warms caches, thread pools and (on a GPU) kernels. */
    eb_run warm;
    rc = run_one(&c, &warm, err);
  }
  qv_tp_stats tp0 = {0}, tp1 = {0};
  if (m) qv_model_tp_stats(m, &tp0);
  for (int32_t i = 0; !rc && i < o->runs; i++) rc = run_one(&c, &runs[i], err);
  if (m) qv_model_tp_stats(m, &tp1);
  qv_tp_stats tp = {tp1.n_steps - tp0.n_steps, tp1.step_s - tp0.step_s, tp1.n_collectives - tp0.n_collectives,
                    tp1.comm_s - tp0.comm_s};
  if (!rc && tp.n_steps > 0)
    printf("%-34s %.1f%% of step time (%.1f collectives per step)\n", "TP all-reduce + gather (rank 0):",
           100.0 * tp.comm_s / tp.step_s, (double)tp.n_collectives / (double)tp.n_steps);
  if (!rc) {
    eb_run *sorted = malloc((size_t)o->runs * sizeof *sorted);
    if (!sorted) rc = qv_error_set(err, QV_ENOMEM, "out of memory");
    else {
      memcpy(sorted, runs, (size_t)o->runs * sizeof *sorted);
      qsort(sorted, (size_t)o->runs, sizeof *sorted, cmp_run);
      eb_run med = sorted[o->runs / 2];
      free(sorted);
      print_summary(o, &med);
      if (o->result_file) rc = write_result(o, qv_model_get_config(m), runs, &med, c.b.out, &tp, err);
    }
  }
  qv_engine_destroy(c.e);
  free(runs);
  bufs_free(&c.b);
  qv_model_destroy(m);
  qv_backend_destroy(be);
  pthread_cond_destroy(&c.wait.cv);
  pthread_mutex_destroy(&c.wait.mu);
  return rc;
}

int cli_bench(int argc, char **argv) {
  if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
    FILE *f = argc < 2 ? stderr : stdout;
    fprintf(f, "usage: quiver bench engine [options]   (offline throughput; see --help of the subcommand)\n"
               "For serving benchmarks over HTTP use the quiver-bench program (bench/README.md).\n");
    if (argc >= 2) usage(stdout);
    return argc < 2 ? 2 : 0;
  }
  if (strcmp(argv[1], "engine")) {
    fprintf(stderr, "quiver bench: unknown benchmark '%s' (expected: engine)\n", argv[1]);
    return 2;
  }
  eb_opts o;
  int pr = parse_args(argc, argv, &o);
  if (pr) {
    if (pr > 0) usage(stdout);
    return pr > 0 ? 0 : 2;
  }
  qv_error err = {0};
  int rc = bench_model(&o, &err);
  if (rc) {
    fprintf(stderr, "quiver bench engine: %s\n", err.msg[0] ? err.msg : qv_strerror(rc));
    return 1;
  }
  return 0;
}
