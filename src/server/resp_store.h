/* A bounded in-memory store of Responses API responses (store: true), for
 * previous_response_id, GET /v1/responses/{id} and DELETE.
 *
 * Each entry keeps two JSON texts: the response object as it was answered, and the
 * conversation that led to it in chat-completions message form (the request's messages plus
 * the assistant's output), which a follow-up request with previous_response_id continues.
 * Bounds: a count, a byte total (both texts and the id) and a time to live; adding past a
 * bound drops the oldest entries first, and an expired entry is gone at the next access.
 * Thread-safe (one mutex): requests are decoded on the thread pool and answered on the loop. */
#ifndef QV_SERVER_RESP_STORE_H
#define QV_SERVER_RESP_STORE_H

#include <stddef.h>
#include <stdint.h>

typedef struct resp_store resp_store;

typedef struct resp_store_limits {
  int32_t max_count;     /* entries */
  size_t max_bytes;      /* sum of entry sizes */
  int64_t ttl_s;         /* seconds after which an entry is dropped; <= 0: never */
} resp_store_limits;

/* Defaults: 1024 entries, 64 MiB, one hour. */
void resp_store_limits_default(resp_store_limits *l);

int resp_store_create(const resp_store_limits *l, resp_store **out);
void resp_store_destroy(resp_store *s); /* accepts NULL */

/* Copies id, response and conversation in (replacing an entry of the same id). An entry
 * larger than max_bytes alone is not stored (QV_ELIMIT). now: unix seconds. */
int resp_store_put(resp_store *s, const char *id, const char *response, const char *conversation,
                   int64_t now);
/* Copies the entry's texts out (malloc'd, caller frees; either pointer may be NULL when not
 * wanted). QV_ENOTFOUND when absent or expired. */
int resp_store_get(resp_store *s, const char *id, int64_t now, char **response,
                   char **conversation);
/* QV_ENOTFOUND when absent. */
int resp_store_delete(resp_store *s, const char *id);

int32_t resp_store_count(resp_store *s);
size_t resp_store_bytes(resp_store *s);

#endif
