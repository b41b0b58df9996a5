/* All-reduce of the shared-memory communicator at the sizes tensor parallelism sends for a 0.5B
 * model (Qwen2.5-0.5B: hidden 896): tokens x 896 floats for 1..512 tokens, ranks as threads of
 * this process. Each size is run in batches of back-to-back all-reduces (after a barrier); the
 * median batch gives the latency per all-reduce, the algorithm bandwidth (bytes of one rank's
 * buffer / time) and the bus bandwidth (algbw x 2(n-1)/n, NCCL's convention, comparable across
 * rank counts). Prints one JSON object on stdout.
 * --procs runs ranks 1..N-1 as fork()ed processes instead of threads (the same shm code).
 * Usage: qv-bench-comm [--ranks N] [--batches N] [--procs] [--commit SHA] */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "comm/comm.h"

enum { HIDDEN = 896, N_SIZES = 10, MAX_BATCHES = 64 };
static const int TOKENS[N_SIZES] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512};

typedef struct bench {
  const char *token;
  int size, batches;
  double batch_us[N_SIZES][MAX_BATCHES]; /* rank 0's per-all-reduce time of each batch */
  int reps[N_SIZES];
  int failed;
  char msg[512];
} bench;

typedef struct rank_arg {
  bench *b;
  int rank;
} rank_arg;

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

/* Fewer repetitions for larger messages, so every size takes a similar time. */
static int reps_for(int tokens) { return tokens <= 8 ? 200 : tokens <= 64 ? 50 : 10; }

static void *rank_main(void *arg) {
  rank_arg *ra = arg;
  bench *b = ra->b;
  qv_error e = {0};
  qv_comm *c = NULL;
  qv_comm_shm_opts o = {.token = b->token, .rank = ra->rank, .size = b->size, .timeout_ms = 60000};
  float *x = NULL;
  if (qv_comm_shm_create(&o, &c, &e)) goto fail;
  x = malloc((size_t)TOKENS[N_SIZES - 1] * HIDDEN * sizeof(float));
  if (!x) goto fail;
  for (int s = 0; s < N_SIZES; s++) {
    size_t n = (size_t)TOKENS[s] * HIDDEN;
    for (size_t i = 0; i < n; i++) x[i] = (float)((i * 7 + (size_t)ra->rank) % 13) * 0.125f - 0.75f;
    int reps = reps_for(TOKENS[s]);
    b->reps[s] = reps;
    for (int w = 0; w < 5; w++)
      if (qv_comm_all_reduce_sum(c, x, n, QV_COMM_F32, &e)) goto fail;
    for (int k = 0; k < b->batches; k++) {
      if (qv_comm_barrier(c, &e)) goto fail;
      double t0 = now_us();
      for (int r = 0; r < reps; r++)
        if (qv_comm_all_reduce_sum(c, x, n, QV_COMM_F32, &e)) goto fail;
      if (ra->rank == 0) b->batch_us[s][k] = (now_us() - t0) / reps;
    }
  }
  free(x);
  qv_comm_destroy(c);
  return NULL;
fail:
  b->failed = 1;
  snprintf(b->msg, sizeof b->msg, "rank %d: %.400s", ra->rank, e.msg);
  free(x);
  qv_comm_destroy(c);
  return NULL;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static void cpu_model(char *out, size_t cap) {
  snprintf(out, cap, "unknown");
  FILE *f = fopen("/proc/cpuinfo", "r");
  if (!f) return;
  char line[512];
  while (fgets(line, sizeof line, f)) {
    if (!strncmp(line, "model name", 10)) {
      char *p = strchr(line, ':');
      if (p) {
        p += 2;
        p[strcspn(p, "\n")] = '\0';
        snprintf(out, cap, "%s", p);
      }
      break;
    }
  }
  fclose(f);
}

int main(int argc, char **argv) {
  bench *b = calloc(1, sizeof *b);
  if (!b) return 1;
  b->size = 2;
  b->batches = 15;
  const char *commit = "unknown";
  int procs = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--ranks") && i + 1 < argc)
      b->size = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--batches") && i + 1 < argc)
      b->batches = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--commit") && i + 1 < argc)
      commit = argv[++i];
    else if (!strcmp(argv[i], "--procs"))
      procs = 1;
    else {
      fprintf(stderr, "usage: qv-bench-comm [--ranks N] [--batches N] [--procs] [--commit SHA]\n");
      return 2;
    }
  }
  if (b->size < 2 || b->size > 16 || b->batches < 1 || b->batches > MAX_BATCHES) {
    fprintf(stderr, "qv-bench-comm: --ranks 2..16, --batches 1..%d\n", MAX_BATCHES);
    return 2;
  }
  char tok[33];
  qv_error e = {0};
  if (qv_comm_shm_token(tok, &e)) {
    fprintf(stderr, "qv-bench-comm: %s\n", e.msg);
    return 1;
  }
  b->token = tok;
  pthread_t th[16];
  rank_arg ra[16];
  int child_failed = 0;
  if (procs) {
    pid_t pids[16] = {0};
    fflush(NULL);
    for (int r = 1; r < b->size; r++) {
      pids[r] = fork();
      if (pids[r] == 0) {
        rank_arg me = {b, r};
        rank_main(&me);
        _exit(b->failed ? 1 : 0);
      }
    }
    ra[0] = (rank_arg){b, 0};
    rank_main(&ra[0]);
    for (int r = 1; r < b->size; r++) {
      int st = 0;
      if (pids[r] < 0 || waitpid(pids[r], &st, 0) != pids[r] || !WIFEXITED(st) || WEXITSTATUS(st))
        child_failed = 1;
    }
  } else {
    for (int r = 0; r < b->size; r++) {
      ra[r] = (rank_arg){b, r};
      pthread_create(&th[r], NULL, rank_main, &ra[r]);
    }
    for (int r = 0; r < b->size; r++) pthread_join(th[r], NULL);
  }
  if (child_failed && !b->failed) {
    b->failed = 1;
    snprintf(b->msg, sizeof b->msg, "a rank process failed");
  }
  if (b->failed) {
    fprintf(stderr, "qv-bench-comm: %s\n", b->msg);
    return 1;
  }
  char cpu[256], date[32];
  cpu_model(cpu, sizeof cpu);
  double load = 0;
  FILE *lf = fopen("/proc/loadavg", "r");
  if (lf) {
    if (fscanf(lf, "%lf", &load) != 1) load = 0;
    fclose(lf);
  }
  time_t t = time(NULL);
  strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&t));
  printf("{\n  \"benchmark\": \"shm communicator all-reduce (f32 sum, ranks as %s)\",\n",
         procs ? "processes" : "threads");
  printf("  \"machine\": {\"cpu\": \"%s\", \"online_cpus\": %ld, \"loadavg_1m\": %.2f},\n", cpu,
         sysconf(_SC_NPROCESSORS_ONLN), load);
  printf("  \"commit\": \"%s\",\n  \"date\": \"%s\",\n", commit, date);
  printf("  \"settings\": {\"ranks\": %d, \"ranks_as\": \"%s\", \"hidden\": %d, \"batches\": %d, "
         "\"dtype\": \"f32\", \"slot_bytes\": 4194304},\n  \"results\": [\n",
         b->size, procs ? "processes" : "threads", HIDDEN, b->batches);
  for (int s = 0; s < N_SIZES; s++) {
    double v[MAX_BATCHES];
    memcpy(v, b->batch_us[s], sizeof(double) * (size_t)b->batches);
    qsort(v, (size_t)b->batches, sizeof(double), cmp_double);
    double med = v[b->batches / 2],
           p90 = v[(b->batches * 9) / 10 < b->batches ? (b->batches * 9) / 10 : b->batches - 1];
    double bytes = (double)TOKENS[s] * HIDDEN * 4.0;
    double algbw = bytes / (med * 1e3); /* GB/s: bytes per ns */
    double busbw = algbw * 2.0 * (b->size - 1) / b->size;
    printf("    {\"tokens\": %d, \"bytes\": %.0f, \"reps_per_batch\": %d, \"median_us\": %.2f, "
           "\"p90_us\": %.2f, \"algbw_gbps\": %.3f, \"busbw_gbps\": %.3f}%s\n",
           TOKENS[s], bytes, b->reps[s], med, p90, algbw, busbw, s + 1 < N_SIZES ? "," : "");
  }
  printf("  ]\n}\n");
  free(b);
  return 0;
}
