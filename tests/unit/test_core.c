/* Core helpers: error table and messages, dtype conversions. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <stdint.h>
#include <unistd.h>

#include "core/dtype.h"
#include "core/util.h"
#include "quiver/error.h"

Test(core, strerror_table) {
  cr_assert_str_eq(qv_strerror(0), "success");
  cr_assert_str_eq(qv_strerror(QV_EINVAL), "invalid argument");
  cr_assert_str_eq(qv_strerror(QV_EBUSY), "queue full");
  cr_assert_str_eq(qv_strerror(12345), "unknown error");
}

Test(core, error_set_and_prefix) {
  qv_error e = {0};
  int rc = qv_error_set(&e, QV_EFORMAT, "tensor %s has %d dims", "w", 3);
  cr_assert_eq(rc, QV_EFORMAT);
  cr_assert_eq(e.code, QV_EFORMAT);
  cr_assert_str_eq(e.msg, "tensor w has 3 dims");
  qv_error_prefix(&e, "model.safetensors");
  cr_assert_str_eq(e.msg, "model.safetensors: tensor w has 3 dims");
  cr_assert_eq(qv_error_set(NULL, QV_EIO, "x"), QV_EIO);
  qv_error_clear(&e);
  cr_assert_eq(e.code, 0);
}

/* One ": " between a prefix and the message, however the caller spelled the prefix, and a
 * prefix the message already starts with (a path the inner error named) is not repeated. */
Test(core, error_prefix_one_separator) {
  qv_error e = {0};
  qv_error_set(&e, QV_EINVAL, "max_model_len 9 exceeds the model's 4 positions");
  qv_error_prefix(&e, "model '%s' (%s): ", "m", "/p");
  cr_assert_str_eq(e.msg, "model 'm' (/p): max_model_len 9 exceeds the model's 4 positions");
  qv_error_set(&e, QV_EINVAL, "config: not valid JSON");
  qv_error_prefix(&e, "%s:", "c.json");
  cr_assert_str_eq(e.msg, "c.json: config: not valid JSON");
  qv_error_set(&e, QV_EINVAL, ": starts with a separator");
  qv_error_prefix(&e, "ctx");
  cr_assert_str_eq(e.msg, "ctx: starts with a separator");
  qv_error_set(&e, QV_ENOTFOUND, "/m/config.json: cannot open: No such file or directory");
  qv_error_prefix(&e, "%s", "/m");
  cr_assert_str_eq(e.msg, "/m/config.json: cannot open: No such file or directory");
  qv_error_set(&e, QV_EFORMAT, "/m: bad");
  qv_error_prefix(&e, "%s", "/m");
  cr_assert_str_eq(e.msg, "/m: bad");
  qv_error_set(&e, QV_EFORMAT, "/mx: bad"); /* a longer name is another name */
  qv_error_prefix(&e, "%s", "/m");
  cr_assert_str_eq(e.msg, "/m: /mx: bad");
  qv_error_set(&e, QV_EFORMAT, "%s", "");
  qv_error_prefix(&e, "only context: ");
  cr_assert_str_eq(e.msg, "only context");
  /* No ": : " anywhere after a chain of prefixes. */
  qv_error_set(&e, QV_EINVAL, "unknown reasoning parser 'x'");
  qv_error_prefix(&e, "config: model '%s': ", "m");
  qv_error_prefix(&e, "%s: ", "cfg.json");
  cr_assert_str_eq(e.msg, "cfg.json: config: model 'm': unknown reasoning parser 'x'");
}

Test(core, bf16_roundtrip_random) {
  srand(7);
  for (int i = 0; i < 100000; i++) {
    float f = ((float)rand() / RAND_MAX - 0.5f) * powf(2.0f, (float)(rand() % 40 - 20));
    float g = qv_bf16_to_f32(qv_f32_to_bf16(f));
    cr_assert(fabsf(f - g) <= fabsf(f) * (1.0f / 256.0f), "%g -> %g", f, g);
  }
  cr_assert_eq(qv_f32_to_bf16(1.0f), 0x3f80);
  cr_assert(isnan(qv_bf16_to_f32(qv_f32_to_bf16(NAN))));
}

Test(core, f16_roundtrip_random) {
  srand(11);
  for (int i = 0; i < 100000; i++) {
    float f = ((float)rand() / RAND_MAX - 0.5f) * powf(2.0f, (float)(rand() % 28 - 14));
    float g = qv_f16_to_f32(qv_f32_to_f16(f));
    cr_assert(fabsf(f - g) <= fmaxf(fabsf(f) * (1.0f / 1024.0f), 6e-8f), "%g -> %g", f, g);
  }
  cr_assert_eq(qv_f32_to_f16(1.0f), 0x3c00);
  cr_assert_eq(qv_f32_to_f16(-2.0f), 0xc000);
  cr_assert_eq(qv_f16_to_f32(0x7bff), 65504.0f);
  cr_assert(isinf(qv_f16_to_f32(qv_f32_to_f16(1e6f))));
}

Test(core, grow_and_read_file) {
  size_t cap = 0;
  char *p = qv_grow(NULL, &cap, 100, 1, 64);
  cr_assert(p);
  cr_assert_eq(cap, 128);
  memset(p, 'x', 100);
  char *q = qv_grow(p, &cap, 90, 1, 64);
  cr_assert_eq(q, p, "no realloc when it already fits");
  q = qv_grow(p, &cap, 1000, 4, 64);
  cr_assert(q);
  cr_assert_eq(cap, 1024);
  cr_assert_eq(q[99], 'x', "contents kept");
  size_t big = 8;
  cr_assert_null(qv_grow(q, &big, SIZE_MAX / 2, 8, 8), "overflow is refused");
  cr_assert_eq(big, 8);
  free(q);

  char path[] = "/tmp/qv-core-XXXXXX";
  int fd = mkstemp(path);
  cr_assert(fd >= 0);
  cr_assert_eq(write(fd, "hello\0world", 11), 11);
  close(fd);
  size_t len = 0;
  qv_error err = {0};
  char *t = qv_read_file(path, 64, &len, &err);
  cr_assert(t);
  cr_assert_eq(len, 11);
  cr_assert_eq(memcmp(t, "hello\0world", 12), 0, "NUL-terminated copy");
  free(t);
  cr_assert_null(qv_read_file(path, 10, &len, &err));
  cr_assert_eq(err.code, QV_ELIMIT);
  unlink(path);
  cr_assert_null(qv_read_file(path, 64, &len, &err));
  cr_assert_eq(err.code, QV_ENOTFOUND);
}

/* ---- thread pool: every task of every job runs exactly once, whether the workers are
 * polling (jobs back to back) or asleep (a pause between jobs longer than the poll) ---- */

#include <stdatomic.h>

#include "core/threadpool.h"

typedef struct pool_job {
  atomic_int *hits; /* [n_tasks] */
  atomic_int sum;
} pool_job;

static void pool_task(void *ctx, int i) {
  pool_job *j = ctx;
  atomic_fetch_add(&j->hits[i], 1);
  atomic_fetch_add(&j->sum, i + 1);
}

static void pool_round(tp_pool *p, int n_jobs, int pause_us, unsigned seed) {
  enum { MAX_TASKS = 97 };
  atomic_int hits[MAX_TASKS];
  for (int job = 0; job < n_jobs; job++) {
    seed = seed * 1664525u + 1013904223u;
    int n = 1 + (int)((seed >> 8) % MAX_TASKS);
    pool_job j;
    for (int i = 0; i < n; i++) atomic_init(&hits[i], 0);
    j.hits = hits;
    atomic_init(&j.sum, 0);
    tp_run(p, n, pool_task, &j);
    /* tp_run returned: every task has run, once. */
    for (int i = 0; i < n; i++) cr_assert_eq(atomic_load(&hits[i]), 1, "job %d task %d ran %d times", job, i, atomic_load(&hits[i]));
    cr_assert_eq(atomic_load(&j.sum), n * (n + 1) / 2);
    if (pause_us) usleep((useconds_t)pause_us);
  }
}

Test(core, threadpool_every_task_once_polling_and_sleeping) {
  for (int threads = 2; threads <= 5; threads++) {
    tp_pool *p = NULL;
    cr_assert_eq(tp_create(threads, &p), 0);
    cr_assert_eq(tp_n_threads(p), threads);
    pool_round(p, 3000, 0, (unsigned)threads);        /* back to back: workers never sleep */
    pool_round(p, 40, 300, 77u + (unsigned)threads);  /* > the poll: workers sleep between jobs */
    pool_round(p, 200, 40, 991u + (unsigned)threads); /* around the poll: both paths race */
    tp_destroy(p);
  }
  /* Created and destroyed with no job, and while the workers may still be polling. */
  tp_pool *p = NULL;
  cr_assert_eq(tp_create(3, &p), 0);
  tp_destroy(p);
  cr_assert_eq(tp_create(3, &p), 0);
  pool_round(p, 1, 0, 5u);
  tp_destroy(p);
}
