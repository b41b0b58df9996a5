/* The shared-memory communicator: all-reduce / all-gather / broadcast / barrier against a float64
 * reference on random inputs for 2, 3 and 4 ranks as threads and 2 ranks as processes (fork);
 * bit-reproducibility across runs and arrival orders; a rank that never arrives (bounded
 * timeout, whole group aborted), a rank that left, a process that died; segment names removed.
 *
 * Tolerances: f32 all-reduce must equal the float64 sum in rank order rounded once to f32
 * (0 ulp: that is the implementation's contract); bf16 must equal that sum rounded to f32 then
 * bf16, and lie within 2^-8 relative of the float64 sum. Gather and broadcast are exact copies. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "comm/comm.h"
#include "core/dtype.h"

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* Random non-zero floats of mixed sign and magnitude, a stream per (seed, rank). */
static float rnd(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  float u = (float)(*s >> 40) / 16777216.0f; /* [0, 1) */
  float mag = powf(10.0f, (float)((*s >> 8) % 7) - 3.0f);
  float v = (u - 0.5f) * mag;
  return v == 0.0f ? 1e-3f : v;
}

static void fill(float *x, size_t n, int seed, int rank) {
  uint64_t s = 0x9E3779B97F4A7C15ull ^ ((uint64_t)seed << 20) ^ (uint64_t)(rank + 1) * 0x51ull;
  for (size_t i = 0; i < n; i++) x[i] = rnd(&s);
}

static void token(char out[33]) {
  qv_error e = {0};
  cr_assert_eq(qv_comm_shm_token(out, &e), 0, "%s", e.msg);
}

/* ---- a group of thread ranks running one scenario ---- */

enum { OP_REDUCE_F32, OP_REDUCE_BF16, OP_GATHER, OP_BCAST, OP_REPRO };

typedef struct group_case {
  const char *token;
  int size, op, seed, root;
  size_t count, slot_bytes;
  int delay_seed; /* > 0: each rank sleeps a rank-dependent 0..3 ms before each collective */
} group_case;

typedef struct rank_run {
  const group_case *gc;
  int rank, rc;
  char msg[512];
  void *out; /* owned by the test: what this rank ended with */
} rank_run;

static void maybe_delay(const group_case *gc, int rank, int iter) {
  if (gc->delay_seed) sleep_ms((rank * 7 + iter * 3 + gc->delay_seed) % 4);
}

static void *rank_main(void *arg) {
  rank_run *rr = arg;
  const group_case *gc = rr->gc;
  qv_error e = {0};
  qv_comm *c = NULL;
  qv_comm_shm_opts o = {.token = gc->token,
                        .rank = rr->rank,
                        .size = gc->size,
                        .timeout_ms = 20000,
                        .slot_bytes = gc->slot_bytes};
  rr->rc = qv_comm_shm_create(&o, &c, &e);
  if (rr->rc == 0) {
    size_t n = gc->count;
    float *x = malloc((n ? n : 1) * sizeof(float) * (size_t)gc->size);
    fill(x, n, gc->seed, rr->rank);
    switch (gc->op) {
    case OP_REDUCE_F32:
    case OP_REPRO:
      for (int it = 0; it < (gc->op == OP_REPRO ? 3 : 1) && rr->rc == 0; it++) {
        if (it) fill(x, n, gc->seed, rr->rank);
        maybe_delay(gc, rr->rank, it);
        rr->rc = qv_comm_all_reduce_sum(c, x, n, QV_COMM_F32, &e);
      }
      rr->out = x;
      x = NULL;
      break;
    case OP_REDUCE_BF16: {
      uint16_t *h = malloc((n ? n : 1) * sizeof(uint16_t));
      for (size_t i = 0; i < n; i++) h[i] = qv_f32_to_bf16(x[i]);
      rr->rc = qv_comm_all_reduce_sum(c, h, n, QV_COMM_BF16, &e);
      rr->out = h;
      break;
    }
    case OP_GATHER: {
      float *all = malloc((n ? n : 1) * sizeof(float) * (size_t)gc->size);
      for (size_t i = 0; i < n * (size_t)gc->size; i++) all[i] = NAN;
      rr->rc = qv_comm_all_gather(c, x, all, n, QV_COMM_F32, &e);
      rr->out = all;
      break;
    }
    case OP_BCAST:
      if (rr->rank != gc->root) memset(x, 0xAB, n * sizeof(float));
      rr->rc = qv_comm_broadcast(c, x, n * sizeof(float), gc->root, &e);
      if (rr->rc == 0) rr->rc = qv_comm_barrier(c, &e);
      rr->out = x;
      x = NULL;
      break;
    }
    free(x);
  }
  snprintf(rr->msg, sizeof rr->msg, "%s", e.msg);
  qv_comm_destroy(c);
  return NULL;
}

/* Runs gc on gc->size threads; runs[] receives each rank's result (caller frees out). */
static void run_group(const group_case *gc, rank_run *runs) {
  pthread_t th[QV_COMM_MAX_RANKS];
  for (int r = 0; r < gc->size; r++) {
    runs[r] = (rank_run){.gc = gc, .rank = r};
    cr_assert_eq(pthread_create(&th[r], NULL, rank_main, &runs[r]), 0);
  }
  for (int r = 0; r < gc->size; r++) pthread_join(th[r], NULL);
  for (int r = 0; r < gc->size; r++) cr_assert_eq(runs[r].rc, 0, "rank %d: %s", r, runs[r].msg);
}

static void free_runs(rank_run *runs, int size) {
  for (int r = 0; r < size; r++) free(runs[r].out);
}

/* The float64 sum over ranks in rank order. */
static double *reference_sum(size_t n, int size, int seed) {
  double *ref = calloc(n ? n : 1, sizeof(double));
  float *x = malloc((n ? n : 1) * sizeof(float));
  for (int r = 0; r < size; r++) {
    fill(x, n, seed, r);
    for (size_t i = 0; i < n; i++) ref[i] += x[i];
  }
  free(x);
  return ref;
}

static void check_reduce_f32(int size, size_t count, size_t slot_bytes, int seed) {
  char tok[33];
  token(tok);
  group_case gc = {.token = tok,
                   .size = size,
                   .op = OP_REDUCE_F32,
                   .seed = seed,
                   .count = count,
                   .slot_bytes = slot_bytes};
  rank_run runs[QV_COMM_MAX_RANKS];
  run_group(&gc, runs);
  double *ref = reference_sum(count, size, seed);
  for (int r = 0; r < size; r++) {
    const float *y = runs[r].out;
    for (size_t i = 0; i < count; i++)
      cr_assert_eq(y[i], (float)ref[i], "size %d count %zu rank %d [%zu]: %.9g vs reference %.17g",
                   size, count, r, i, y[i], ref[i]);
  }
  free(ref);
  free_runs(runs, size);
}

Test(comm_shm, all_reduce_f32_threads) {
  for (int size = 2; size <= 4; size++) {
    check_reduce_f32(size, 1, 0, 11);
    check_reduce_f32(size, 3, 0, 12);           /* fewer elements than some ranks' slices */
    check_reduce_f32(size, 896 * 7 + 5, 0, 13); /* 7 tokens of a 0.5B hidden state, odd tail */
    check_reduce_f32(size, 5000, 256, 14);      /* many pieces: 64 floats per slot */
  }
}

Test(comm_shm, all_reduce_bf16_threads) {
  for (int size = 2; size <= 4; size++) {
    char tok[33];
    token(tok);
    size_t n = 3001;
    group_case gc = {.token = tok,
                     .size = size,
                     .op = OP_REDUCE_BF16,
                     .seed = 21,
                     .count = n,
                     .slot_bytes = 1000};
    rank_run runs[QV_COMM_MAX_RANKS];
    run_group(&gc, runs);
    /* The reference sums the bf16-rounded inputs. */
    double *ref = calloc(n, sizeof(double));
    float *x = malloc(n * sizeof(float));
    for (int r = 0; r < size; r++) {
      fill(x, n, 21, r);
      for (size_t i = 0; i < n; i++) ref[i] += qv_bf16_to_f32(qv_f32_to_bf16(x[i]));
    }
    for (int r = 0; r < size; r++) {
      const uint16_t *y = runs[r].out;
      for (size_t i = 0; i < n; i++) {
        cr_assert_eq(y[i], qv_f32_to_bf16((float)ref[i]), "size %d rank %d [%zu]", size, r, i);
        double got = qv_bf16_to_f32(y[i]);
        cr_assert_leq(fabs(got - ref[i]), ldexp(fabs(ref[i]), -8) + 1e-30);
      }
    }
    free(x);
    free(ref);
    free_runs(runs, size);
  }
}

Test(comm_shm, all_gather_threads) {
  for (int size = 2; size <= 4; size++) {
    for (int k = 0; k < 2; k++) {
      char tok[33];
      token(tok);
      size_t n = k ? 2000 : 7;
      group_case gc = {.token = tok,
                       .size = size,
                       .op = OP_GATHER,
                       .seed = 31 + k,
                       .count = n,
                       .slot_bytes = k ? 512 : 0};
      rank_run runs[QV_COMM_MAX_RANKS];
      run_group(&gc, runs);
      float *want = malloc(n * sizeof(float));
      for (int r = 0; r < size; r++) {
        const float *all = runs[r].out;
        for (int src = 0; src < size; src++) {
          fill(want, n, 31 + k, src);
          cr_assert_eq(memcmp(all + (size_t)src * n, want, n * sizeof(float)), 0,
                       "size %d rank %d: block of rank %d differs", size, r, src);
        }
      }
      free(want);
      free_runs(runs, size);
    }
  }
}

Test(comm_shm, broadcast_threads) {
  for (int size = 2; size <= 4; size++) {
    char tok[33];
    token(tok);
    size_t n = 1500;
    group_case gc = {.token = tok,
                     .size = size,
                     .op = OP_BCAST,
                     .seed = 41,
                     .count = n,
                     .slot_bytes = 1024,
                     .root = size - 1};
    rank_run runs[QV_COMM_MAX_RANKS];
    run_group(&gc, runs);
    float *want = malloc(n * sizeof(float));
    fill(want, n, 41, size - 1);
    for (int r = 0; r < size; r++)
      cr_assert_eq(memcmp(runs[r].out, want, n * sizeof(float)), 0, "size %d rank %d", size, r);
    free(want);
    free_runs(runs, size);
  }
}

/* Same inputs, different arrival orders (rank-dependent sleeps before each collective, and
 * none): every rank of every run ends with the same bits. */
Test(comm_shm, all_reduce_bit_reproducible) {
  const int size = 4;
  const size_t n = 896 * 3 + 1;
  void *first = NULL;
  for (int run = 0; run < 4; run++) {
    char tok[33];
    token(tok);
    group_case gc = {.token = tok,
                     .size = size,
                     .op = OP_REPRO,
                     .seed = 51,
                     .count = n,
                     .slot_bytes = 4096,
                     .delay_seed = run};
    rank_run runs[QV_COMM_MAX_RANKS];
    run_group(&gc, runs);
    if (!first) {
      first = runs[0].out;
      runs[0].out = NULL;
    }
    for (int r = 0; r < size; r++)
      if (runs[r].out)
        cr_assert_eq(memcmp(runs[r].out, first, n * sizeof(float)), 0, "run %d rank %d differs",
                     run, r);
    free_runs(runs, size);
  }
  free(first);
}

/* ---- failures: timeouts, a rank that left, bad arguments, names ---- */

typedef struct lazy_rank {
  const char *token;
  int size, rank, timeout_ms, rc, late_rc, destroy_early;
  volatile int release; /* set by the test once rank 0 has failed */
  char msg[512];
} lazy_rank;

/* Joins, then never enters the collective until released, then tries one (or leaves early). */
static void *lazy_main(void *arg) {
  lazy_rank *l = arg;
  qv_error e = {0};
  qv_comm *c = NULL;
  qv_comm_shm_opts o = {
      .token = l->token, .rank = l->rank, .size = l->size, .timeout_ms = l->timeout_ms};
  l->rc = qv_comm_shm_create(&o, &c, &e);
  if (l->rc == 0 && !l->destroy_early) {
    while (!__atomic_load_n(&l->release, __ATOMIC_ACQUIRE)) sleep_ms(1);
    float x = 1.0f;
    l->late_rc = qv_comm_all_reduce_sum(c, &x, 1, QV_COMM_F32, &e);
  }
  snprintf(l->msg, sizeof l->msg, "%s", e.msg);
  qv_comm_destroy(c);
  return NULL;
}

Test(comm_shm, timeout_when_a_rank_never_arrives) {
  char tok[33];
  token(tok);
  lazy_rank l = {.token = tok, .size = 2, .rank = 1, .timeout_ms = 5000};
  pthread_t th;
  cr_assert_eq(pthread_create(&th, NULL, lazy_main, &l), 0);
  qv_error e = {0};
  qv_comm *c = NULL;
  qv_comm_shm_opts o = {.token = tok, .rank = 0, .size = 2, .timeout_ms = 5000};
  cr_assert_eq(qv_comm_shm_create(&o, &c, &e), 0, "%s", e.msg);
  cr_assert_eq(qv_comm_set_timeout(c, 200, &e), 0);
  float x[64];
  fill(x, 64, 1, 0);
  double t0 = now_ms();
  int rc = qv_comm_all_reduce_sum(c, x, 64, QV_COMM_F32, &e);
  double dt = now_ms() - t0;
  cr_assert_eq(rc, QV_EABORTED, "rc %d: %s", rc, e.msg);
  cr_assert(strstr(e.msg, "timed out after 200 ms"), "%s", e.msg);
  cr_assert_geq(dt, 190.0);
  cr_assert_lt(dt, 5000.0, "the timeout took %.0f ms", dt);
  cr_assert(qv_comm_aborted(c));
  /* The whole group is aborted: the late rank fails at once, and so does any later call here. */
  __atomic_store_n(&l.release, 1, __ATOMIC_RELEASE);
  pthread_join(th, NULL);
  cr_assert_eq(l.rc, 0, "%s", l.msg);
  cr_assert_eq(l.late_rc, QV_EABORTED, "late rank: %d %s", l.late_rc, l.msg);
  cr_assert_eq(qv_comm_barrier(c, &e), QV_EABORTED);
  qv_comm_destroy(c);
}

Test(comm_shm, peer_that_left_fails_fast) {
  char tok[33];
  token(tok);
  lazy_rank l = {.token = tok, .size = 2, .rank = 1, .timeout_ms = 5000, .destroy_early = 1};
  pthread_t th;
  cr_assert_eq(pthread_create(&th, NULL, lazy_main, &l), 0);
  qv_error e = {0};
  qv_comm *c = NULL;
  qv_comm_shm_opts o = {.token = tok, .rank = 0, .size = 2, .timeout_ms = 20000};
  cr_assert_eq(qv_comm_shm_create(&o, &c, &e), 0, "%s", e.msg);
  pthread_join(th, NULL);
  double t0 = now_ms();
  cr_assert_eq(qv_comm_barrier(c, &e), QV_EABORTED);
  cr_assert(strstr(e.msg, "rank 1 left the group"), "%s", e.msg);
  cr_assert_lt(now_ms() - t0, 5000.0);
  qv_comm_destroy(c);
}

static int shm_name_exists(const char *tok) {
  char name[128];
  snprintf(name, sizeof name, "/qv-comm-%s", tok);
  int fd = shm_open(name, O_RDONLY, 0);
  if (fd >= 0) close(fd);
  return fd >= 0;
}

Test(comm_shm, join_timeout_and_names_removed) {
  char tok[33];
  token(tok);
  qv_error e = {0};
  qv_comm *c = NULL;
  /* Rank 1 of a group whose rank 0 never comes. */
  qv_comm_shm_opts o1 = {.token = tok, .rank = 1, .size = 2, .timeout_ms = 150};
  cr_assert_eq(qv_comm_shm_create(&o1, &c, &e), QV_EABORTED);
  cr_assert_null(c);
  cr_assert(strstr(e.msg, "did not appear"), "%s", e.msg);
  /* Rank 0 of a group whose rank 1 never comes: fails, and leaves no name behind. */
  qv_comm_shm_opts o0 = {.token = tok, .rank = 0, .size = 2, .timeout_ms = 150};
  cr_assert_eq(qv_comm_shm_create(&o0, &c, &e), QV_EABORTED);
  cr_assert(strstr(e.msg, "only 1 of 2 ranks joined"), "%s", e.msg);
  cr_assert_not(shm_name_exists(tok));
  /* A complete group also removes its name as soon as everyone joined. */
  group_case gc = {.token = tok, .size = 2, .op = OP_REDUCE_F32, .seed = 3, .count = 10};
  rank_run runs[2];
  run_group(&gc, runs);
  free_runs(runs, 2);
  cr_assert_not(shm_name_exists(tok));
}

Test(comm_shm, bad_arguments) {
  qv_error e = {0};
  qv_comm *c = (qv_comm *)1;
  qv_comm_shm_opts o = {.token = "bad/token", .rank = 0, .size = 1};
  cr_assert_eq(qv_comm_shm_create(&o, &c, &e), QV_EINVAL);
  cr_assert_null(c);
  o.token = "";
  cr_assert_eq(qv_comm_shm_create(&o, &c, &e), QV_EINVAL);
  o.token = "ok";
  o.rank = 1;
  cr_assert_eq(qv_comm_shm_create(&o, &c, &e), QV_EINVAL);
  o.rank = 0;
  o.size = QV_COMM_MAX_RANKS + 1;
  cr_assert_eq(qv_comm_shm_create(&o, &c, &e), QV_EINVAL);
  o.size = 1;
  o.slot_bytes = 8;
  cr_assert_eq(qv_comm_shm_create(&o, &c, &e), QV_EINVAL);
  /* A group of one: collectives are identities; bad calls are rejected. */
  char tok[33];
  token(tok);
  o = (qv_comm_shm_opts){.token = tok, .rank = 0, .size = 1};
  cr_assert_eq(qv_comm_shm_create(&o, &c, &e), 0, "%s", e.msg);
  cr_assert_str_eq(qv_comm_kind(c), "shm");
  float x[3] = {1, 2, 3}, g[3];
  cr_assert_eq(qv_comm_all_reduce_sum(c, x, 3, QV_COMM_F32, &e), 0);
  cr_assert(x[0] == 1 && x[1] == 2 && x[2] == 3);
  cr_assert_eq(qv_comm_all_gather(c, x, g, 3, QV_COMM_F32, &e), 0);
  cr_assert_eq(memcmp(x, g, sizeof x), 0);
  cr_assert_eq(qv_comm_all_gather(c, x, x, 3, QV_COMM_F32, &e), QV_EINVAL);
  cr_assert_eq(qv_comm_broadcast(c, x, sizeof x, 1, &e), QV_EINVAL);
  cr_assert_eq(qv_comm_all_reduce_sum(c, NULL, 3, QV_COMM_F32, &e), QV_EINVAL);
  cr_assert_eq(qv_comm_all_reduce_sum(c, x, 3, (qv_comm_dtype)7, &e), QV_EINVAL);
  cr_assert_eq(qv_comm_set_timeout(c, 0, &e), QV_EINVAL);
  cr_assert_eq(qv_comm_all_reduce_sum(c, x, 0, QV_COMM_F32, &e), 0);
  qv_comm_destroy(c);
  qv_comm_destroy(NULL);
}

Test(comm_shm, token_in_use_is_refused) {
  char tok[33];
  token(tok);
  lazy_rank l = {.token = tok, .size = 2, .rank = 0, .timeout_ms = 10000, .destroy_early = 1};
  pthread_t th;
  cr_assert_eq(pthread_create(&th, NULL, lazy_main, &l), 0);
  /* Once the first group's segment exists, a second rank 0 with the same token is refused. */
  for (int i = 0; i < 5000 && !shm_name_exists(tok); i++) sleep_ms(1);
  qv_error e = {0};
  qv_comm *c = NULL;
  qv_comm_shm_opts o = {.token = tok, .rank = 0, .size = 2, .timeout_ms = 100};
  cr_assert_eq(qv_comm_shm_create(&o, &c, &e), QV_EBUSY, "%s", e.msg);
  cr_assert_null(c);
  /* The first group is untouched: its rank 1 can still join it. */
  o.rank = 1;
  o.timeout_ms = 5000;
  cr_assert_eq(qv_comm_shm_create(&o, &c, &e), 0, "%s", e.msg);
  pthread_join(th, NULL);
  cr_assert_eq(l.rc, 0, "%s", l.msg);
  qv_comm_destroy(c);
  cr_assert_not(shm_name_exists(tok));
}

/* ---- ranks as processes ---- */

/* Rank 1 in a child process: checks all-reduce and all-gather itself, exits 0 when right. */
static int child_rank(const char *tok, size_t n) {
  qv_error e = {0};
  qv_comm *c = NULL;
  qv_comm_shm_opts o = {
      .token = tok, .rank = 1, .size = 2, .timeout_ms = 20000, .slot_bytes = 4096};
  if (qv_comm_shm_create(&o, &c, &e)) return 10;
  float *x = malloc(n * sizeof(float)), *all = malloc(2 * n * sizeof(float));
  double *ref = reference_sum(n, 2, 61);
  fill(x, n, 61, 1);
  int bad = qv_comm_all_reduce_sum(c, x, n, QV_COMM_F32, &e) ? 11 : 0;
  for (size_t i = 0; !bad && i < n; i++)
    if (x[i] != (float)ref[i]) bad = 12;
  fill(x, n, 62, 1);
  if (!bad && qv_comm_all_gather(c, x, all, n, QV_COMM_F32, &e)) bad = 13;
  for (int r = 0; !bad && r < 2; r++) {
    fill(x, n, 62, r);
    if (memcmp(all + (size_t)r * n, x, n * sizeof(float))) bad = 14;
  }
  if (!bad && qv_comm_barrier(c, &e)) bad = 15;
  free(x);
  free(all);
  free(ref);
  qv_comm_destroy(c);
  return bad;
}

Test(comm_shm, two_processes) {
  char tok[33];
  token(tok);
  const size_t n = 3000;
  fflush(NULL);
  pid_t pid = fork();
  cr_assert_geq(pid, 0);
  if (pid == 0) _exit(child_rank(tok, n));
  qv_error e = {0};
  qv_comm *c = NULL;
  qv_comm_shm_opts o = {
      .token = tok, .rank = 0, .size = 2, .timeout_ms = 20000, .slot_bytes = 4096};
  cr_assert_eq(qv_comm_shm_create(&o, &c, &e), 0, "%s", e.msg);
  float *x = malloc(n * sizeof(float)), *all = malloc(2 * n * sizeof(float));
  double *ref = reference_sum(n, 2, 61);
  fill(x, n, 61, 0);
  cr_assert_eq(qv_comm_all_reduce_sum(c, x, n, QV_COMM_F32, &e), 0, "%s", e.msg);
  for (size_t i = 0; i < n; i++) cr_assert_eq(x[i], (float)ref[i], "[%zu]", i);
  fill(x, n, 62, 0);
  cr_assert_eq(qv_comm_all_gather(c, x, all, n, QV_COMM_F32, &e), 0, "%s", e.msg);
  for (int r = 0; r < 2; r++) {
    fill(x, n, 62, r);
    cr_assert_eq(memcmp(all + (size_t)r * n, x, n * sizeof(float)), 0, "block %d", r);
  }
  cr_assert_eq(qv_comm_barrier(c, &e), 0, "%s", e.msg);
  int status = 0;
  cr_assert_eq(waitpid(pid, &status, 0), pid);
  cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child rank failed with %d",
            WEXITSTATUS(status));
  free(x);
  free(all);
  free(ref);
  qv_comm_destroy(c);
  cr_assert_not(shm_name_exists(tok));
}

/* 1 once pid has exited but is not reaped yet (state Z in /proc/<pid>/stat). */
static int is_zombie(pid_t pid) {
  char path[64], comm[256], st = 0;
  int pd;
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  if (fscanf(f, "%d %255s %c", &pd, comm, &st) != 3) st = 0;
  fclose(f);
  return st == 'Z';
}

/* A child rank that joins and dies (no destroy). Reaped: its pid is gone and rank 0 notices
 * within a few ms although its timeout is long. Unreaped (a zombie still has its pid): the
 * timeout catches it. */
Test(comm_shm, process_death_detected) {
  for (int reap = 1; reap >= 0; reap--) {
    char tok[33];
    token(tok);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
      qv_comm *c = NULL;
      qv_comm_shm_opts o = {.token = tok, .rank = 1, .size = 2, .timeout_ms = 20000};
      _exit(qv_comm_shm_create(&o, &c, NULL) ? 1 : 0); /* dies holding its rank */
    }
    qv_error e = {0};
    qv_comm *c = NULL;
    qv_comm_shm_opts o = {.token = tok, .rank = 0, .size = 2, .timeout_ms = 20000};
    cr_assert_eq(qv_comm_shm_create(&o, &c, &e), 0, "%s", e.msg);
    if (!reap) cr_assert_eq(qv_comm_set_timeout(c, 200, &e), 0);
    int status = 0;
    if (reap)
      cr_assert_eq(waitpid(pid, &status, 0), pid);
    else
      while (!is_zombie(pid)) sleep_ms(1); /* exited, not reaped */
    float x[8];
    fill(x, 8, 1, 0);
    double t0 = now_ms();
    int rc = qv_comm_all_reduce_sum(c, x, 8, QV_COMM_F32, &e);
    double dt = now_ms() - t0;
    cr_assert_eq(rc, QV_EABORTED, "%s", e.msg);
    if (reap)
      cr_assert(strstr(e.msg, "rank 1's process died"), "%s", e.msg);
    else
      cr_assert(strstr(e.msg, "timed out"), "%s", e.msg);
    cr_assert_lt(dt, 5000.0, "took %.0f ms", dt);
    if (!reap) waitpid(pid, &status, 0);
    qv_comm_destroy(c);
  }
}

/* A build without NCCL answers every NCCL entry point with QV_EUNSUPPORTED and a reason (and a
 * NULL handle), so callers need no #ifdef; a build with NCCL says it has one. */
Test(comm_nccl, unsupported_without_nccl) {
  if (qv_comm_nccl_available()) cr_skip_test("this build has NCCL (tests/gpu/test_comm_nccl.c covers it)");
  uint8_t id[QV_COMM_NCCL_ID_BYTES] = {0};
  qv_error err = {0};
  cr_expect_eq(qv_comm_nccl_unique_id(id, &err), QV_EUNSUPPORTED);
  cr_expect(strstr(err.msg, "NCCL") != NULL, "%s", err.msg);
  qv_comm *c = (qv_comm *)&err; /* any non-NULL value: must come back NULL */
  qv_comm_nccl_opts o = {.unique_id = id, .rank = 0, .size = 1};
  err = (qv_error){0};
  cr_expect_eq(qv_comm_nccl_create(&o, &c, &err), QV_EUNSUPPORTED);
  cr_expect_null(c);
  cr_expect(strstr(err.msg, "NCCL") != NULL, "%s", err.msg);
}

/* qv_comm_sync: a shm communicator's collectives are complete when they return, so sync answers
 * at once; on an aborted communicator it fails like every other call; NULL is refused. */
Test(comm_shm, sync_is_immediate) {
  char tok[33];
  token(tok);
  qv_error e = {0};
  qv_comm *c = NULL;
  qv_comm_shm_opts o = {.token = tok, .rank = 0, .size = 1, .timeout_ms = 5000};
  cr_assert_eq(qv_comm_shm_create(&o, &c, &e), 0, "%s", e.msg);
  float x[8];
  fill(x, 8, 3, 0);
  cr_assert_eq(qv_comm_all_reduce_sum(c, x, 8, QV_COMM_F32, &e), 0, "%s", e.msg);
  cr_expect_eq(qv_comm_sync(c, &e), 0, "%s", e.msg);
  cr_expect_eq(qv_comm_sync(NULL, &e), QV_EINVAL);
  qv_comm_destroy(c);
}
