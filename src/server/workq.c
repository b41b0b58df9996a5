/* The server's heavy-job pool (see workq.h): a mutex-protected FIFO of jobs, a FIFO of
 * finished ones, n threads, one uv_async_t. */
#include "server/workq.h"

#include <pthread.h>
#include <stdlib.h>

struct srv_workq {
  uv_async_t async;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  srv_work *todo_head, *todo_tail; /* queued jobs */
  srv_work *done;                  /* finished jobs, newest first */
  pthread_t *threads;              /* [n_threads] */
  int n_threads;
  int stop;
};

static void *worker(void *arg) {
  srv_workq *q = arg;
  pthread_mutex_lock(&q->mu);
  for (;;) {
    while (!q->stop && !q->todo_head) pthread_cond_wait(&q->cv, &q->mu);
    if (q->stop) break;
    srv_work *w = q->todo_head;
    q->todo_head = w->next;
    if (!q->todo_head) q->todo_tail = NULL;
    pthread_mutex_unlock(&q->mu);
    w->work(w);
    pthread_mutex_lock(&q->mu);
    w->next = q->done;
    q->done = w;
    uv_async_send(&q->async);
  }
  pthread_mutex_unlock(&q->mu);
  return NULL;
}

/* Delivers finished jobs in completion order. */
static void deliver(srv_workq *q, int status_queued) {
  pthread_mutex_lock(&q->mu);
  srv_work *done = q->done, *todo = status_queued ? q->todo_head : NULL;
  q->done = NULL;
  if (status_queued) q->todo_head = q->todo_tail = NULL;
  pthread_mutex_unlock(&q->mu);
  srv_work *rev = NULL;
  while (done) {
    srv_work *n = done->next;
    done->next = rev;
    rev = done;
    done = n;
  }
  while (rev) {
    srv_work *n = rev->next;
    rev->after(rev, 0);
    rev = n;
  }
  while (todo) {
    srv_work *n = todo->next;
    todo->after(todo, UV_ECANCELED);
    todo = n;
  }
}

static void on_async(uv_async_t *a) { deliver(a->data, 0); }

int workq_create(uv_loop_t *loop, int n_threads, srv_workq **out) {
  srv_workq *q = calloc(1, sizeof *q);
  if (!q) return UV_ENOMEM;
  q->threads = calloc((size_t)n_threads, sizeof *q->threads);
  if (!q->threads) {
    free(q);
    return UV_ENOMEM;
  }
  pthread_mutex_init(&q->mu, NULL);
  pthread_cond_init(&q->cv, NULL);
  uv_async_init(loop, &q->async, on_async);
  q->async.data = q;
  uv_unref((uv_handle_t *)&q->async);
  for (int i = 0; i < n_threads; i++) {
    if (pthread_create(&q->threads[i], NULL, worker, q)) break;
    q->n_threads++;
  }
  *out = q;
  if (q->n_threads == 0) {
    workq_destroy(q);
    *out = NULL;
    return UV_EAGAIN;
  }
  return 0;
}

void workq_submit(srv_workq *q, srv_work *w) {
  w->next = NULL;
  pthread_mutex_lock(&q->mu);
  if (q->todo_tail) q->todo_tail->next = w;
  else q->todo_head = w;
  q->todo_tail = w;
  pthread_cond_signal(&q->cv);
  pthread_mutex_unlock(&q->mu);
}

static void on_closed(uv_handle_t *h) {
  srv_workq *q = h->data;
  pthread_mutex_destroy(&q->mu);
  pthread_cond_destroy(&q->cv);
  free(q->threads);
  free(q);
}

void workq_destroy(srv_workq *q) {
  if (!q) return;
  pthread_mutex_lock(&q->mu);
  q->stop = 1;
  pthread_cond_broadcast(&q->cv);
  pthread_mutex_unlock(&q->mu);
  for (int i = 0; i < q->n_threads; i++) pthread_join(q->threads[i], NULL);
  deliver(q, 1);
  uv_close((uv_handle_t *)&q->async, on_closed);
}
