/* Thread pool: workers sleep on a condition variable between jobs and claim task indices
 * from an atomic counter, so uneven tasks balance themselves. */
#include "core/threadpool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include "quiver/error.h"

struct tp_pool {
  int n_threads;       /* including the caller */
  pthread_t *threads;  /* [n_threads - 1] */
  pthread_mutex_t mu;
  pthread_cond_t wake, done;
  uint64_t generation; /* bumped per job */
  int stop;
  int n_busy;          /* workers still in the current job */
  tp_fn fn;
  void *ctx;
  int n_tasks;
  atomic_int next;
};

static void run_tasks(tp_pool *p) {
  for (;;) {
    int i = atomic_fetch_add(&p->next, 1);
    if (i >= p->n_tasks) break;
    p->fn(p->ctx, i);
  }
}

static void *worker(void *arg) {
  tp_pool *p = arg;
  uint64_t seen = 0;
  pthread_mutex_lock(&p->mu);
  for (;;) {
    while (!p->stop && p->generation == seen) pthread_cond_wait(&p->wake, &p->mu);
    if (p->stop) break;
    seen = p->generation;
    pthread_mutex_unlock(&p->mu);
    run_tasks(p);
    pthread_mutex_lock(&p->mu);
    if (--p->n_busy == 0) pthread_cond_signal(&p->done);
  }
  pthread_mutex_unlock(&p->mu);
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
  p->stop = 1;
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
  pthread_mutex_lock(&p->mu);
  p->fn = fn;
  p->ctx = ctx;
  p->n_tasks = n_tasks;
  atomic_store(&p->next, 0);
  p->n_busy = p->n_threads - 1;
  p->generation++;
  pthread_cond_broadcast(&p->wake);
  pthread_mutex_unlock(&p->mu);
  run_tasks(p);
  pthread_mutex_lock(&p->mu);
  while (p->n_busy > 0) pthread_cond_wait(&p->done, &p->mu);
  pthread_mutex_unlock(&p->mu);
}
