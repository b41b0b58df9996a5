/* Thread pool: workers claim task indices from an atomic counter, so uneven tasks balance
 * themselves. Between jobs a worker first polls the job counter for a short while (decode runs
 * hundreds of small jobs per token, back to back: a futex wake-up per job costs more than the
 * job), then sleeps on a condition variable; the caller waits for the last worker the same way.
 * The spin is bounded in time, so an idle or oversubscribed pool costs little CPU.
 *
 * Sleeping without a lost wake-up: a sleeper announces itself (n_sleep), then rechecks the
 * generation under the mutex before waiting; the caller bumps the generation, then reads
 * n_sleep and broadcasts under the mutex when anyone may sleep. Both sides use sequentially
 * consistent atomics, so at least one of them sees the other's write. The same holds for the
 * caller sleeping on the last worker (caller_sleeps / n_busy). */
#include "core/threadpool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define TP_PAUSE() _mm_pause()
#elif defined(__aarch64__)
#define TP_PAUSE() __asm__ __volatile__("yield")
#else
#define TP_PAUSE() ((void)0)
#endif

#include "quiver/error.h"

/* How long a worker polls for the next job, and the caller for the last worker, before
 * sleeping. Decode's gaps between jobs are a few microseconds; between steps, longer. */
#define TP_SPIN_NS 50000

struct tp_pool {
  int n_threads;      /* including the caller */
  pthread_t *threads; /* [n_threads - 1] */
  pthread_mutex_t mu;
  pthread_cond_t wake, done;
  atomic_uint_fast64_t generation; /* bumped per job (after the job's fields are set) */
  atomic_int stop;
  atomic_int n_busy;        /* workers still in the current job */
  atomic_int n_sleep;       /* workers asleep (or about to be) on wake */
  atomic_int caller_sleeps; /* the caller asleep (or about to be) on done */
  tp_fn fn;
  void *ctx;
  int n_tasks;
  atomic_int next;
};

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void run_tasks(tp_pool *p) {
  for (;;) {
    int i = atomic_fetch_add(&p->next, 1);
    if (i >= p->n_tasks) break;
    p->fn(p->ctx, i);
  }
}

/* Polls until cond(p, arg) holds or the spin budget is spent; returns whether it holds. */
static int spin_until(tp_pool *p, int (*cond)(tp_pool *, uint64_t), uint64_t arg) {
  uint64_t t0 = 0;
  for (unsigned it = 0;; it++) {
    if (cond(p, arg)) return 1;
    TP_PAUSE();
    if ((it & 63) == 63) {
      uint64_t t = now_ns();
      if (!t0) t0 = t;
      else if (t - t0 > TP_SPIN_NS) return 0;
    }
  }
}

static int job_ready(tp_pool *p, uint64_t seen) {
  return atomic_load(&p->stop) || atomic_load(&p->generation) != seen;
}

static int job_done(tp_pool *p, uint64_t unused) {
  (void)unused;
  return atomic_load(&p->n_busy) == 0;
}

static void *worker(void *arg) {
  tp_pool *p = arg;
  uint64_t seen = 0;
  for (;;) {
    if (!spin_until(p, job_ready, seen)) {
      pthread_mutex_lock(&p->mu);
      atomic_fetch_add(&p->n_sleep, 1);
      while (!job_ready(p, seen)) pthread_cond_wait(&p->wake, &p->mu);
      atomic_fetch_sub(&p->n_sleep, 1);
      pthread_mutex_unlock(&p->mu);
    }
    if (atomic_load(&p->stop)) break;
    seen = atomic_load(&p->generation);
    run_tasks(p);
    if (atomic_fetch_sub(&p->n_busy, 1) == 1 && atomic_load(&p->caller_sleeps)) {
      pthread_mutex_lock(&p->mu);
      pthread_cond_signal(&p->done);
      pthread_mutex_unlock(&p->mu);
    }
  }
  return NULL;
}

int tp_create(int n_threads, tp_pool **out) {
  if (n_threads <= 0) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    n_threads = n > 0 ? (int)n : 1;
  }
  if (n_threads > 256) n_threads = 256;
  tp_pool *p = calloc(1, sizeof *p);
  if (!p) return QV_ENOMEM;
  p->n_threads = n_threads;
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->wake, NULL);
  pthread_cond_init(&p->done, NULL);
  atomic_init(&p->generation, 0);
  atomic_init(&p->stop, 0);
  atomic_init(&p->n_busy, 0);
  atomic_init(&p->n_sleep, 0);
  atomic_init(&p->caller_sleeps, 0);
  atomic_init(&p->next, 0);
  p->threads = calloc((size_t)n_threads, sizeof *p->threads);
  if (!p->threads) {
    tp_destroy(p);
    return QV_ENOMEM;
  }
  for (int i = 0; i < n_threads - 1; i++) {
    if (pthread_create(&p->threads[i], NULL, worker, p) != 0) {
      p->n_threads = i + 1; /* the ones started, plus the caller */
      break;
    }
  }
  *out = p;
  return 0;
}

void tp_destroy(tp_pool *p) {
  if (!p) return;
  pthread_mutex_lock(&p->mu);
  atomic_store(&p->stop, 1);
  pthread_cond_broadcast(&p->wake);
  pthread_mutex_unlock(&p->mu);
  if (p->threads)
    for (int i = 0; i < p->n_threads - 1; i++) pthread_join(p->threads[i], NULL);
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->wake);
  pthread_cond_destroy(&p->done);
  free(p->threads);
  free(p);
}

int tp_n_threads(const tp_pool *p) { return p->n_threads; }

void tp_run(tp_pool *p, int n_tasks, tp_fn fn, void *ctx) {
  if (n_tasks <= 0) return;
  if (p->n_threads == 1 || n_tasks == 1) {
    for (int i = 0; i < n_tasks; i++) fn(ctx, i);
    return;
  }
  p->fn = fn;
  p->ctx = ctx;
  p->n_tasks = n_tasks;
  atomic_store(&p->next, 0);
  atomic_store(&p->n_busy, p->n_threads - 1);
  atomic_fetch_add(&p->generation, 1);
  if (atomic_load(&p->n_sleep) > 0) {
    pthread_mutex_lock(&p->mu);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
  }
  run_tasks(p);
  if (!spin_until(p, job_done, 0)) {
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->caller_sleeps, 1);
    while (atomic_load(&p->n_busy) > 0) pthread_cond_wait(&p->done, &p->mu);
    atomic_store(&p->caller_sleeps, 0);
    pthread_mutex_unlock(&p->mu);
  }
}
