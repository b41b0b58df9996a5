/* The Responses API store (src/server/resp_store.c): count, byte and TTL bounds evict the
 * oldest entries first, replace and delete, copies out, and a concurrent writer/reader pair
 * (the store is used from the thread pool and the loop). */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quiver/error.h"
#include "server/resp_store.h"

static int has(resp_store *s, const char *id, int64_t now) {
  char *a = NULL, *b = NULL;
  int rc = resp_store_get(s, id, now, &a, &b);
  if (!rc) {
    cr_assert_not_null(a);
    cr_assert_not_null(b);
  }
  free(a);
  free(b);
  return rc == 0;
}

Test(resp_store, count_bound_evicts_oldest) {
  resp_store_limits l = {3, 1 << 20, 0};
  resp_store *s;
  cr_assert_eq(resp_store_create(&l, &s), 0);
  char id[16];
  for (int i = 0; i < 5; i++) {
    snprintf(id, sizeof id, "r%d", i);
    cr_assert_eq(resp_store_put(s, id, "{}", "[]", 100 + i), 0);
  }
  cr_assert_eq(resp_store_count(s), 3);
  cr_assert(!has(s, "r0", 200) && !has(s, "r1", 200));
  cr_assert(has(s, "r2", 200) && has(s, "r3", 200) && has(s, "r4", 200));
  /* Replacing keeps one entry per id. */
  cr_assert_eq(resp_store_put(s, "r3", "{\"a\":1}", "[1]", 300), 0);
  cr_assert_eq(resp_store_count(s), 3);
  char *resp = NULL, *conv = NULL;
  cr_assert_eq(resp_store_get(s, "r3", 300, &resp, &conv), 0);
  cr_assert_str_eq(resp, "{\"a\":1}");
  cr_assert_str_eq(conv, "[1]");
  free(resp);
  free(conv);
  cr_assert_eq(resp_store_delete(s, "r3"), 0);
  cr_assert_eq(resp_store_delete(s, "r3"), QV_ENOTFOUND);
  cr_assert_eq(resp_store_get(s, "r3", 300, &resp, NULL), QV_ENOTFOUND);
  cr_assert_null(resp);
  cr_assert_eq(resp_store_count(s), 2);
  resp_store_destroy(s);
  resp_store_destroy(NULL);
}

Test(resp_store, byte_bound_and_ttl) {
  resp_store_limits l = {100, 4096, 10};
  resp_store *s;
  cr_assert_eq(resp_store_create(&l, &s), 0);
  char big[1500];
  memset(big, 'x', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  cr_assert_eq(resp_store_put(s, "a", big, "[]", 0), 0);
  cr_assert_eq(resp_store_put(s, "b", big, "[]", 1), 0);
  cr_assert_eq(resp_store_put(s, "c", big, "[]", 2), 0); /* over 4096: a goes */
  cr_assert(!has(s, "a", 3) && has(s, "b", 3) && has(s, "c", 3));
  cr_assert_leq(resp_store_bytes(s), 4096);
  /* An entry larger than the whole store is refused and evicts nothing. */
  char huge[5000];
  memset(huge, 'y', sizeof huge - 1);
  huge[sizeof huge - 1] = '\0';
  cr_assert_eq(resp_store_put(s, "h", huge, "[]", 3), QV_ELIMIT);
  cr_assert_eq(resp_store_count(s), 2);
  /* TTL 10 s: b (t=1) is gone at t=11, c (t=2) at t=12. */
  cr_assert(!has(s, "b", 11) && has(s, "c", 11));
  cr_assert(!has(s, "c", 12));
  cr_assert_eq(resp_store_count(s), 0);
  cr_assert_eq(resp_store_bytes(s), 0);
  resp_store_destroy(s);
}

static void *writer(void *arg) {
  resp_store *s = arg;
  char id[16];
  for (int i = 0; i < 2000; i++) {
    snprintf(id, sizeof id, "w%d", i);
    resp_store_put(s, id, "{\"x\":1}", "[]", i);
  }
  return NULL;
}

Test(resp_store, concurrent_use) {
  resp_store_limits l = {50, 1 << 20, 0};
  resp_store *s;
  cr_assert_eq(resp_store_create(&l, &s), 0);
  pthread_t th;
  pthread_create(&th, NULL, writer, s);
  char id[16];
  for (int i = 0; i < 2000; i++) {
    snprintf(id, sizeof id, "w%d", i);
    char *r = NULL;
    if (!resp_store_get(s, id, i, &r, NULL)) cr_assert_str_eq(r, "{\"x\":1}");
    free(r);
  }
  pthread_join(th, NULL);
  cr_assert_eq(resp_store_count(s), 50);
  cr_assert(has(s, "w1999", 0));
  resp_store_destroy(s);
}
