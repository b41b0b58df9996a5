/* qv-bench-engine: engine overhead per step with a model that does no math.
 *
 * The model's forward copies a precomputed logits row per requested row (no arithmetic), so
 * what is timed is the engine itself: scheduling, block bookkeeping, batch staging, sampling
 * over the vocabulary, stop checks and event creation. The forward's own time is measured
 * separately and subtracted. n_seqs sequences are brought to steady-state decoding first, then
 * each of --steps steps is timed; the median and p90 microseconds per step are reported, for
 * each vocabulary size asked for (the sampler's share grows with it).
 *
 * usage: qv-bench-engine [--seqs N] [--steps N] [--vocab V[,V...]] [--temperature T] [--out FILE] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine/engine_internal.h"

typedef struct nomath {
  int32_t vocab;
  float *table; /* [64][vocab] precomputed rows */
  double fwd_ns;
} nomath;

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int nm_forward(void *ctx, const qv_batch *b, float *logits, qv_error *err) {
  nomath *m = ctx;
  double t0 = now_ns();
  for (int32_t l = 0; l < b->n_logits; l++) {
    int32_t row = b->logits_idx[l];
    uint32_t k = (uint32_t)(b->token_ids[row] * 2654435761u + (uint32_t)b->positions[row]) % 64u;
    memcpy(logits + (size_t)l * (size_t)m->vocab, m->table + (size_t)k * (size_t)m->vocab, sizeof(float) * (size_t)m->vocab);
  }
  m->fwd_ns += now_ns() - t0;
  return 0;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

typedef struct result {
  int32_t vocab;
  double median_us, p90_us, mean_fwd_us;
} result;

static int run(int32_t n_seqs, int32_t steps, int32_t vocab, float temperature, result *res) {
  nomath m = {.vocab = vocab};
  m.table = malloc(sizeof(float) * 64 * (size_t)vocab);
  unsigned seed = 1;
  for (size_t i = 0; i < 64 * (size_t)vocab; i++) m.table[i] = (float)rand_r(&seed) / (float)RAND_MAX * 8.0f - 4.0f;
  int32_t prompt_len = 32;
  engine_model_ops ops = {.ctx = &m, .vocab_size = vocab, .max_pos = 8192, .n_eos = 1, .forward = nm_forward};
  ops.eos_ids[0] = 2;
  qv_engine_opts o;
  qv_engine_opts_default(&o);
  o.max_num_seqs = n_seqs;
  o.max_num_batched_tokens = n_seqs * prompt_len;
  o.max_model_len = prompt_len + steps + 64;
  o.n_kv_blocks = n_seqs * ((o.max_model_len + 15) / 16);
  qv_engine *e;
  qv_error err = {0};
  if (engine_create_ops(&ops, NULL, &o, 1, &e, &err)) {
    fprintf(stderr, "engine: %s\n", err.msg);
    return 1;
  }
  int32_t *pr = malloc(sizeof(int32_t) * (size_t)prompt_len);
  for (int32_t s = 0; s < n_seqs; s++) {
    for (int32_t i = 0; i < prompt_len; i++) pr[i] = 3 + (int32_t)(rand_r(&seed) % (unsigned)(vocab - 3));
    qv_request_params p;
    qv_request_params_default(&p);
    p.prompt_ids = pr;
    p.n_prompt = prompt_len;
    p.max_tokens = steps + 32;
    p.ignore_eos = 1;
    p.sampling.temperature = temperature;
    p.sampling.top_p = temperature > 0 ? 0.95f : 1.0f;
    if (qv_engine_submit(e, &p, NULL, &err)) {
      fprintf(stderr, "submit: %s\n", err.msg);
      return 1;
    }
  }
  qv_event *evs[1024];
  for (int i = 0; i < 4; i++) { /* prefill, then reach steady decoding */
    engine_step(e);
    int n;
    while ((n = qv_engine_poll(e, evs, 1024)) > 0)
      for (int k = 0; k < n; k++) qv_event_free(evs[k]);
  }
  double *t = malloc(sizeof(double) * (size_t)steps), fwd_total = 0;
  for (int32_t i = 0; i < steps; i++) {
    m.fwd_ns = 0;
    double t0 = now_ns();
    engine_step(e);
    double dt = now_ns() - t0;
    t[i] = (dt - m.fwd_ns) / 1e3;
    fwd_total += m.fwd_ns;
    int n;
    while ((n = qv_engine_poll(e, evs, 1024)) > 0)
      for (int k = 0; k < n; k++) qv_event_free(evs[k]);
  }
  qv_engine_stats st;
  qv_engine_get_stats(e, &st);
  if (st.n_running != n_seqs) fprintf(stderr, "warning: %d sequences running, not %d\n", st.n_running, n_seqs);
  qsort(t, (size_t)steps, sizeof *t, cmp_d);
  res->vocab = vocab;
  res->median_us = t[steps / 2];
  res->p90_us = t[(steps * 9) / 10];
  res->mean_fwd_us = fwd_total / steps / 1e3;
  free(t);
  free(pr);
  qv_engine_destroy(e);
  free(m.table);
  return 0;
}

static void cpu_name(char *buf, size_t n) {
  snprintf(buf, n, "unknown");
  FILE *f = fopen("/proc/cpuinfo", "r");
  if (!f) return;
  char line[512];
  while (fgets(line, sizeof line, f))
    if (!strncmp(line, "model name", 10)) {
      char *c = strchr(line, ':');
      if (c) {
        c += 2;
        c[strcspn(c, "\n")] = 0;
        snprintf(buf, n, "%s", c);
      }
      break;
    }
  fclose(f);
}

int main(int argc, char **argv) {
  int32_t n_seqs = 256, steps = 2000;
  float temperature = 0.0f;
  const char *vocabs = "8,512,32000", *out = NULL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--seqs") && i + 1 < argc) n_seqs = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--vocab") && i + 1 < argc) vocabs = argv[++i];
    else if (!strcmp(argv[i], "--temperature") && i + 1 < argc) temperature = (float)atof(argv[++i]);
    else if (!strcmp(argv[i], "--out") && i + 1 < argc) out = argv[++i];
    else {
      fprintf(stderr, "usage: qv-bench-engine [--seqs N] [--steps N] [--vocab V,V] [--temperature T] [--out FILE]\n");
      return 2;
    }
  }
  if (n_seqs < 1 || n_seqs > 4096 || steps < 10 || steps > 1000000) {
    fprintf(stderr, "qv-bench-engine: --seqs 1..4096, --steps 10..1000000\n");
    return 2;
  }
  result res[8];
  int nr = 0;
  char vbuf[256];
  snprintf(vbuf, sizeof vbuf, "%s", vocabs);
  for (char *tok = strtok(vbuf, ","); tok && nr < 8; tok = strtok(NULL, ",")) {
    int32_t v = atoi(tok);
    if (v < 8 || v > 1 << 20) {
      fprintf(stderr, "qv-bench-engine: vocab %s out of range (8..1048576)\n", tok);
      return 2;
    }
    if (run(n_seqs, steps, v, temperature, &res[nr])) return 1;
    printf("vocab %6d: %8.1f us/step median, %8.1f p90 (engine only; no-math forward %.1f us)\n", v,
           res[nr].median_us, res[nr].p90_us, res[nr].mean_fwd_us);
    nr++;
  }
  if (out) {
    FILE *f = fopen(out, "w");
    if (!f) {
      perror(out);
      return 1;
    }
    char cpu[256], commit[64] = "unknown";
    cpu_name(cpu, sizeof cpu);
    FILE *g = popen("git rev-parse --short HEAD 2>/dev/null", "r");
    if (g) {
      if (fgets(commit, sizeof commit, g)) commit[strcspn(commit, "\n")] = 0;
      pclose(g);
    }
    time_t now = time(NULL);
    char date[32];
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    fprintf(f, "{\n  \"benchmark\": \"engine overhead per step (no-math model)\",\n");
    double load[3] = {0, 0, 0};
    FILE *la = fopen("/proc/loadavg", "r");
    if (la) {
      if (fscanf(la, "%lf %lf %lf", &load[0], &load[1], &load[2]) != 3) load[0] = load[1] = load[2] = 0;
      fclose(la);
    }
    fprintf(f, "  \"machine\": {\"cpu\": \"%s\", \"threads_used\": 1, \"online_cpus\": %ld, \"loadavg_1m\": %.2f},\n",
            cpu, sysconf(_SC_NPROCESSORS_ONLN), load[0]);
    fprintf(f, "  \"commit\": \"%s\",\n  \"date\": \"%s\",\n", commit, date);
    fprintf(f, "  \"settings\": {\"running_seqs\": %d, \"steps\": %d, \"prompt_len\": 32, \"block_size\": 16, "
               "\"temperature\": %g, \"top_p\": %g, \"prefix_caching\": true, \"detokenize\": false, "
               "\"logits\": \"64 precomputed rows, uniform in [-4, 4): flat, the worst case for top-p\"},\n",
            n_seqs, steps, temperature, temperature > 0 ? 0.95 : 1.0);
    fprintf(f, "  \"target_us_per_step\": 50,\n  \"results\": [\n");
    for (int i = 0; i < nr; i++)
      fprintf(f, "    {\"vocab\": %d, \"median_us_per_step\": %.2f, \"p90_us_per_step\": %.2f, \"median_us_per_seq\": %.3f}%s\n",
              res[i].vocab, res[i].median_us, res[i].p90_us, res[i].median_us / n_seqs, i + 1 < nr ? "," : "");
    fprintf(f, "  ]\n}\n");
    fclose(f);
  }
  return 0;
}
