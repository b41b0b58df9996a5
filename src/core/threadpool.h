/* A fixed pool of worker threads for data-parallel loops (the CPU backend's ops).
 * tp_run(pool, n_tasks, fn, ctx) calls fn(ctx, i) for every i in [0, n_tasks) across the
 * workers and the calling thread, and returns when all are done. Tasks must not depend on
 * which thread runs them (results stay deterministic). One caller at a time. */
#ifndef QV_CORE_THREADPOOL_H
#define QV_CORE_THREADPOOL_H

typedef struct tp_pool tp_pool;
typedef void (*tp_fn)(void *ctx, int task_idx);

/* n_threads total including the caller; 0 means one per online core. */
int tp_create(int n_threads, tp_pool **out);
void tp_destroy(tp_pool *p);
int tp_n_threads(const tp_pool *p);
void tp_run(tp_pool *p, int n_tasks, tp_fn fn, void *ctx);

#endif
