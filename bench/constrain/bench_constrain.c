/* qv-bench-constrain: constrained-decoding costs, written as one JSON object.
 *
 *   mask:       per-step mask time per sequence for a 20-property JSON schema over several
 *               vocabularies: 64 random walks (tokens drawn uniformly among the allowed ones,
 *               the way a sampler would see the mask), every fill_mask call timed; mean, p50,
 *               p90, p99, cache hit rate, and the cold (first walk) vs warm means.
 *   compile:    compile time of the 20-property schema (cache bypassed by varying its title).
 *   throughput: 64 constrained vs 64 unconstrained sequences through the CPU engine with a
 *               real model (ignore_eos, the same max_tokens, so both generate the same count).
 *
 * Vocabularies come from --vocab NAME=PATH (a GGUF model file or a tokenizer.json: the real
 * ones of Qwen2.5 (151,936 ids), SmolLM2 (49,152) and Llama 2 (32,000) in bench/README.md's
 * command), else ../shared's Llama 2, GPT-2 and Phi-2 tokenizers. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/backend.h"
#include "constrain/cst_internal.h"
#include "models/model.h"
#include "quiver/constrain.h"
#include "quiver/engine.h"
#include "quiver/tokenizer.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Mask and compile times are this thread's CPU time: the shared build machine is often
 * oversubscribed, and wall time would charge other processes' work to the mask. */
static double cpu_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t rng_next(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* A 20-property schema of the usual kinds: strings, bounded strings, enums, integers with
 * ranges, numbers, booleans, a date, an email, arrays of strings and of small objects. */
static void schema_20(char *out, size_t cap, int variant) {
  snprintf(out, cap,
           "{\"title\":\"Order%d\",\"type\":\"object\",\"properties\":{"
           "\"id\":{\"type\":\"string\",\"format\":\"uuid\"},\"customer\":{\"type\":\"string\",\"maxLength\":40},"
           "\"email\":{\"type\":\"string\",\"format\":\"email\"},\"age\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":130},"
           "\"status\":{\"enum\":[\"pending\",\"paid\",\"shipped\",\"cancelled\"]},\"total\":{\"type\":\"number\"},"
           "\"currency\":{\"type\":\"string\",\"pattern\":\"^[A-Z]{3}$\"},\"paid\":{\"type\":\"boolean\"},"
           "\"created\":{\"type\":\"string\",\"format\":\"date\"},\"notes\":{\"type\":\"string\"},"
           "\"items\":{\"type\":\"array\",\"items\":{\"type\":\"object\",\"properties\":{\"sku\":{\"type\":\"string\",\"maxLength\":12},"
           "\"qty\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":99}},\"required\":[\"sku\",\"qty\"]},\"maxItems\":3},"
           "\"tags\":{\"type\":\"array\",\"items\":{\"type\":\"string\",\"maxLength\":16},\"maxItems\":4},"
           "\"priority\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":5},\"gift\":{\"type\":\"boolean\"},"
           "\"coupon\":{\"anyOf\":[{\"type\":\"string\",\"maxLength\":10},{\"type\":\"null\"}]},"
           "\"country\":{\"type\":\"string\",\"minLength\":2,\"maxLength\":2},\"city\":{\"type\":\"string\",\"maxLength\":30},"
           "\"zip\":{\"type\":\"string\",\"pattern\":\"^[0-9]{5}$\"},\"score\":{\"type\":\"number\",\"minimum\":0,\"maximum\":1},"
           "\"channel\":{\"enum\":[\"web\",\"app\",\"phone\"]}},"
           "\"required\":[\"id\",\"customer\",\"status\",\"total\",\"items\",\"paid\",\"created\",\"country\"]}",
           variant);
}

/* ---- vocabularies ---- */

static qv_cst_vocab *vocab_of_tokenizer(const char *path, int32_t *n_out) {
  qv_tokenizer *tok = NULL;
  qv_cst_vocab *v = NULL;
  qv_error err = {0};
  if (qv_tokenizer_load(path, &tok, &err) || qv_cst_vocab_create(tok, &v, &err)) {
    fprintf(stderr, "bench: %s: %s\n", path, err.msg);
    qv_tokenizer_destroy(tok);
    return NULL;
  }
  *n_out = qv_tokenizer_vocab_size(tok);
  qv_tokenizer_destroy(tok);
  return v;
}

/* ---- mask timing ---- */

static void bench_mask(FILE *out, const char *name, qv_cst_vocab *v, int32_t n_vocab, int n_seqs, int max_steps,
                       int first) {
  char schema[8192];
  schema_20(schema, sizeof schema, 0);
  qv_cst_spec spec = {.kind = QV_CST_JSON_SCHEMA, .text = schema, .text_len = strlen(schema)};
  qv_constraint *c = NULL;
  qv_error err = {0};
  double t0 = cpu_s();
  if (qv_constraint_compile(v, &spec, &c, &err)) {
    fprintf(stderr, "bench: compile: %s\n", err.msg);
    return;
  }
  double compile_s = cpu_s() - t0;
  int32_t words = (n_vocab + 31) / 32;
  uint32_t *mask = malloc((size_t)words * sizeof *mask);
  int32_t *ids = malloc((size_t)n_vocab * sizeof *ids);
  size_t cap_t = (size_t)n_seqs * (size_t)max_steps;
  double *times = malloc(cap_t * sizeof *times);
  size_t nt = 0, n_first = 0;
  double first_sum = 0;
  int n_complete = 0;
  uint64_t rng = 99;
  int32_t eos = -1;
  for (int32_t i = 0; i < n_vocab; i++) {
    size_t len;
    if (!qv_cst_vocab_token(v, i, &len) && ((struct qv_cst_vocab *)v)->eos_id == i) eos = i;
  }
  for (int s = 0; s < n_seqs; s++) {
    qv_matcher *m;
    qv_matcher_create(c, &m);
    char text[8192];
    size_t tlen = 0;
    for (int step = 0; step < max_steps; step++) {
      double a = cpu_s();
      qv_matcher_fill_mask(m, mask);
      double dt = cpu_s() - a;
      if (getenv("QV_BENCH_SLOW_US") && dt * 1e6 > atof(getenv("QV_BENCH_SLOW_US")))
        fprintf(stderr, "slow mask %.0f us at step %d of walk %d: ...%.*s\n", dt * 1e6, step, s,
                (int)(tlen < 80 ? tlen : 80), text + (tlen < 80 ? 0 : tlen - 80));
      times[nt++] = dt;
      if (s == 0) first_sum += dt, n_first++;
      int32_t k = 0;
      for (int32_t id = 0; id < n_vocab; id++)
        if ((mask[id >> 5] >> (id & 31)) & 1u) ids[k++] = id;
      if (!k) break;
      int32_t pick = ids[rng_next(&rng) % (uint64_t)k];
      if (step > max_steps / 2) { /* close: prefer EOS, then short closing tokens */
        for (int32_t i = 0; i < k; i++) {
          size_t len;
          const char *t = qv_cst_vocab_token(v, ids[i], &len);
          if (ids[i] == eos || (t && len == 1 && (t[0] == '"' || t[0] == '}' || t[0] == ']'))) {
            pick = ids[i];
            if (ids[i] == eos) break;
          }
        }
      }
      if (pick == eos) {
        n_complete++;
        break;
      }
      qv_matcher_accept(m, pick);
      size_t len;
      const char *tt = qv_cst_vocab_token(v, pick, &len);
      if (tt && tlen + len < sizeof text) memcpy(text + tlen, tt, len), tlen += len;
    }
    qv_matcher_destroy(m);
  }
  int64_t hits, misses;
  cst_constraint_stats(c, &hits, &misses);
  double sum = 0;
  for (size_t i = 0; i < nt; i++) sum += times[i];
  double *sorted = malloc(nt * sizeof *sorted);
  memcpy(sorted, times, nt * sizeof *sorted);
  qsort(sorted, nt, sizeof *sorted, cmp_d);
  double warm = nt > n_first ? (sum - first_sum) / (double)(nt - n_first) : 0;
  fprintf(out,
          "%s    {\"vocab\": \"%s\", \"n_vocab\": %d, \"sequences\": %d, \"steps\": %zu, \"completed\": %d,\n"
          "     \"compile_ms\": %.3f, \"mask_us_mean\": %.1f, \"mask_us_p50\": %.1f, \"mask_us_p90\": %.1f,\n"
          "     \"mask_us_p99\": %.1f, \"mask_us_max\": %.1f, \"first_walk_us_mean\": %.1f, \"later_walks_us_mean\": %.1f,\n"
          "     \"cache_hit_rate\": %.4f}",
          first ? "" : ",\n", name, n_vocab, n_seqs, nt, n_complete, compile_s * 1e3, sum / (double)nt * 1e6,
          sorted[nt / 2] * 1e6, sorted[nt * 9 / 10] * 1e6, sorted[nt * 99 / 100] * 1e6, sorted[nt - 1] * 1e6,
          n_first ? first_sum / (double)n_first * 1e6 : 0, warm * 1e6, (double)hits / (double)(hits + misses));
  fflush(out);
  free(sorted);
  free(times);
  free(ids);
  free(mask);
  qv_constraint_release(c);
}

static void bench_compile(FILE *out, qv_cst_vocab *v, int reps) {
  double *t = malloc((size_t)reps * sizeof *t), sum = 0;
  char schema[8192];
  for (int i = 0; i < reps; i++) {
    schema_20(schema, sizeof schema, 1000 + i); /* a new title each time: no cache hit */
    qv_cst_spec spec = {.kind = QV_CST_JSON_SCHEMA, .text = schema, .text_len = strlen(schema)};
    qv_constraint *c = NULL;
    qv_error err = {0};
    double a = cpu_s();
    qv_constraint_compile(v, &spec, &c, &err);
    t[i] = cpu_s() - a;
    sum += t[i];
    qv_constraint_release(c);
  }
  qsort(t, (size_t)reps, sizeof *t, cmp_d);
  fprintf(out, "  \"compile_20_properties\": {\"reps\": %d, \"ms_mean\": %.3f, \"ms_p50\": %.3f, \"ms_max\": %.3f},\n",
          reps, sum / reps * 1e3, t[reps / 2] * 1e3, t[reps - 1] * 1e3);
  free(t);
}

/* ---- engine throughput ---- */

typedef struct waiter {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int flag;
} waiter;

static void notify(void *arg) {
  waiter *w = arg;
  pthread_mutex_lock(&w->mu);
  w->flag = 1;
  pthread_cond_signal(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

static double run_engine(qv_engine *e, waiter *w, int n, int out_len, qv_constraint *c, int32_t vocab, int64_t *tokens) {
  qv_request_params p;
  qv_request_params_default(&p);
  int32_t prompt[8];
  *tokens = 0;
  double t0 = now_s();
  for (int i = 0; i < n; i++) {
    for (int k = 0; k < 8; k++) prompt[k] = 1 + (int32_t)((i * 131 + k * 17) % (vocab - 1));
    prompt[0] = 1;
    p.prompt_ids = prompt;
    p.n_prompt = 8;
    p.max_tokens = out_len;
    p.ignore_eos = 1;
    p.detokenize = 0;
    p.sampling.temperature = 1.0f;
    p.sampling.has_seed = 1;
    p.sampling.seed = (uint64_t)i;
    p.constraint = c;
    uint64_t id;
    qv_error err = {0};
    if (qv_engine_submit(e, &p, &id, &err)) fprintf(stderr, "bench: submit: %s\n", err.msg);
  }
  int done = 0;
  while (done < n) {
    pthread_mutex_lock(&w->mu);
    while (!w->flag) pthread_cond_wait(&w->cv, &w->mu);
    w->flag = 0;
    pthread_mutex_unlock(&w->mu);
    qv_event *evs[256];
    int k;
    while ((k = qv_engine_poll(e, evs, 256)) > 0)
      for (int i = 0; i < k; i++) {
        if (evs[i]->type == QV_EVENT_TOKENS) *tokens += evs[i]->n_tokens;
        else done++;
        qv_event_free(evs[i]);
      }
  }
  return now_s() - t0;
}

static void bench_engine(FILE *out, const char *model_dir, int n, int out_len, int threads) {
  qv_backend *be = NULL;
  qv_model *m = NULL;
  qv_tokenizer *tok = NULL;
  qv_cst_vocab *v = NULL;
  qv_engine *e = NULL;
  qv_error err = {0};
  qv_backend_opts bo = {.n_threads = threads};
  qv_model_opts mo = {.max_batch_tokens = 2048, .max_logits = n};
  if (qv_backend_create("cpu", &bo, &be, &err) || qv_model_load(model_dir, be, &mo, &m, &err) ||
      qv_tokenizer_load(model_dir, &tok, &err) || qv_cst_vocab_create(tok, &v, &err)) {
    fprintf(stderr, "bench: engine setup: %s\n", err.msg);
    goto out;
  }
  qv_engine_opts eo;
  qv_engine_opts_default(&eo);
  eo.max_num_seqs = n;
  eo.enable_prefix_caching = 0;
  eo.n_kv_blocks = n * ((8 + out_len + 15) / 16 + 1);
  if (qv_engine_create(m, tok, &eo, &e, &err)) {
    fprintf(stderr, "bench: engine: %s\n", err.msg);
    goto out;
  }
  waiter w = {.flag = 0};
  pthread_mutex_init(&w.mu, NULL);
  pthread_cond_init(&w.cv, NULL);
  qv_engine_set_notify(e, notify, &w);
  char schema[8192];
  schema_20(schema, sizeof schema, 0);
  qv_cst_spec spec = {.kind = QV_CST_JSON_SCHEMA, .text = schema, .text_len = strlen(schema)};
  qv_constraint *c = NULL;
  if (qv_constraint_compile(v, &spec, &c, &err)) {
    fprintf(stderr, "bench: compile: %s\n", err.msg);
    goto out;
  }
  int32_t vocab = qv_model_get_config(m)->vocab_size;
  int64_t tok_u, tok_c;
  run_engine(e, &w, n, 16, NULL, vocab, &tok_u); /* warm-up */
  double tu = run_engine(e, &w, n, out_len, NULL, vocab, &tok_u);
  double tc = run_engine(e, &w, n, out_len, c, vocab, &tok_c);
  double tu2 = run_engine(e, &w, n, out_len, NULL, vocab, &tok_u);
  double tc2 = run_engine(e, &w, n, out_len, c, vocab, &tok_c);
  double ru = (double)tok_u / ((tu + tu2) / 2), rc = (double)tok_c / ((tc + tc2) / 2);
  fprintf(out,
          "  \"engine_throughput\": {\"model\": \"%s\", \"n_vocab\": %d, \"sequences\": %d, \"output_len\": %d,\n"
          "     \"threads\": %d, \"unconstrained_tok_s\": %.1f, \"constrained_tok_s\": %.1f, \"ratio\": %.3f},\n",
          model_dir, vocab, n, out_len, threads, ru, rc, rc / ru);
  qv_constraint_release(c);
out:
  qv_engine_destroy(e);
  qv_cst_vocab_destroy(v);
  qv_tokenizer_destroy(tok);
  qv_model_destroy(m);
  qv_backend_destroy(be);
}

int main(int argc, char **argv) {
  const char *shared = getenv("QV_SHARED_DIR") ? getenv("QV_SHARED_DIR") : "../shared";
  const char *outp = NULL, *model = NULL;
  int seqs = 64, steps = 200, quick = 0, threads = 1, n_vocabs = 0, out_len = 0;
  enum { MAX_VOCABS = 8 };
  const char *vocabs[MAX_VOCABS][2];
  char *vocab_args[MAX_VOCABS] = {0};
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--out") && i + 1 < argc) outp = argv[++i];
    else if (!strcmp(argv[i], "--shared") && i + 1 < argc) shared = argv[++i];
    else if (!strcmp(argv[i], "--model") && i + 1 < argc) model = argv[++i];
    else if (!strcmp(argv[i], "--seqs") && i + 1 < argc) seqs = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--quick")) quick = 1;
    else if (!strcmp(argv[i], "--out-len") && i + 1 < argc) out_len = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--vocab") && i + 1 < argc && n_vocabs < MAX_VOCABS && strchr(argv[i + 1], '=')) {
      char *a = vocab_args[n_vocabs] = strdup(argv[++i]), *eq = strchr(a, '=');
      *eq = 0;
      vocabs[n_vocabs][0] = a;
      vocabs[n_vocabs++][1] = eq + 1;
    }
    else {
      fprintf(stderr, "usage: qv-bench-constrain [--out FILE] [--shared DIR] [--model DIR] [--seqs N] [--steps N] [--threads N] [--quick] [--out-len N]\n"
                      "       [--vocab NAME=TOKENIZER]... (GGUF or tokenizer.json; default: ../shared's)\n");
      return 2;
    }
  }
  if (quick) seqs = 8, steps = 60;
  FILE *out = outp ? fopen(outp, "w") : stdout;
  if (!out) return 1;
  static char paths[3][4096];
  static const char *const defaults[][2] = {{"llama2 (SentencePiece, byte fallback)", "data/tokenizers/llama2.tokenizer.json"},
                                            {"gpt-2 (byte-level BPE)", "data/tokenizers/ggml-vocab-gpt-2.gguf"},
                                            {"phi-2 (byte-level BPE)", "data/tokenizers/phi-2.tokenizer.json"}};
  for (int i = 0; !n_vocabs && i < 3; i++) {
    snprintf(paths[i], sizeof paths[i], "%s/%s", shared, defaults[i][1]);
    vocabs[i][0] = defaults[i][0];
    vocabs[i][1] = paths[i];
    if (i == 2) n_vocabs = 3;
  }
  char host[256] = "unknown";
  FILE *hf = fopen("/proc/sys/kernel/hostname", "r");
  if (hf) {
    if (fgets(host, sizeof host, hf)) host[strcspn(host, "\n")] = 0;
    fclose(hf);
  }
  char cpu[256] = "unknown";
  FILE *ci = fopen("/proc/cpuinfo", "r");
  if (ci) {
    char line[512];
    while (fgets(line, sizeof line, ci))
      if (!strncmp(line, "model name", 10)) {
        char *p = strchr(line, ':');
        if (p) snprintf(cpu, sizeof cpu, "%s", p + 2);
        cpu[strcspn(cpu, "\n")] = 0;
        break;
      }
    fclose(ci);
  }
  fprintf(out, "{\n  \"benchmark\": \"constrain\", \"host\": \"%s\", \"cpu\": \"%s\", \"commit\": \"%s\",\n", host, cpu,
          getenv("QV_COMMIT") ? getenv("QV_COMMIT") : "unknown");
  double load[3] = {0, 0, 0};
  if (getloadavg(load, 3) < 0) load[0] = load[1] = load[2] = -1;
  fprintf(out, "  \"settings\": {\"sequences\": %d, \"max_steps\": %d, \"schema\": \"20 properties\", \"threads\": %d},\n",
          seqs, steps, threads);
  fprintf(out, "  \"loadavg_at_start\": [%.2f, %.2f, %.2f],\n", load[0], load[1], load[2]);
  int32_t n;
  qv_cst_vocab *v = NULL;
  if (n_vocabs) { /* the first --vocab also serves the compile timing */
    v = vocab_of_tokenizer(vocabs[0][1], &n);
    if (v) bench_compile(out, v, quick ? 5 : 30);
    qv_cst_vocab_destroy(v);
  }
  if (model) bench_engine(out, model, 64, out_len > 0 ? out_len : quick ? 32 : 128, threads);
  fprintf(out, "  \"mask\": [\n");
  for (int i = 0; i < n_vocabs; i++) {
    v = vocab_of_tokenizer(vocabs[i][1], &n);
    if (!v) continue;
    bench_mask(out, vocabs[i][0], v, n, seqs, steps, i == 0);
    qv_cst_vocab_destroy(v);
  }
  if (getloadavg(load, 3) < 0) load[0] = load[1] = load[2] = -1;
  fprintf(out, "\n  ],\n  \"loadavg_at_end\": [%.2f, %.2f, %.2f]\n}\n", load[0], load[1], load[2]);
  if (outp) fclose(out);
  for (int i = 0; i < MAX_VOCABS; i++) free(vocab_args[i]);
  return 0;
}
