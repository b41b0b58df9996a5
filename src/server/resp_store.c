/* Bounded response store (see resp_store.h). Entries form one list in insertion order, oldest
 * first, so eviction and expiry both walk from the head; lookups are linear, which the count
 * bound keeps cheap next to a generation. */
#include "server/resp_store.h"

#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "quiver/error.h"

typedef struct entry {
  struct entry *prev, *next;
  char *id, *response, *conversation; /* owned */
  size_t bytes;
  int64_t created;
} entry;

struct resp_store {
  uv_mutex_t mu;
  resp_store_limits lim;
  entry *head, *tail; /* oldest .. newest */
  int32_t count;
  size_t bytes;
};

void resp_store_limits_default(resp_store_limits *l) {
  l->max_count = 1024;
  l->max_bytes = (size_t)64 << 20;
  l->ttl_s = 3600;
}

int resp_store_create(const resp_store_limits *l, resp_store **out) {
  resp_store *s = calloc(1, sizeof *s);
  if (!s) return QV_ENOMEM;
  if (uv_mutex_init(&s->mu)) {
    free(s);
    return QV_ENOMEM;
  }
  s->lim = *l;
  *out = s;
  return 0;
}

static void unlink_free(resp_store *s, entry *e) {
  if (e->prev) e->prev->next = e->next;
  else s->head = e->next;
  if (e->next) e->next->prev = e->prev;
  else s->tail = e->prev;
  s->count--;
  s->bytes -= e->bytes;
  free(e->id);
  free(e->response);
  free(e->conversation);
  free(e);
}

void resp_store_destroy(resp_store *s) {
  if (!s) return;
  while (s->head) unlink_free(s, s->head);
  uv_mutex_destroy(&s->mu);
  free(s);
}

static void expire(resp_store *s, int64_t now) {
  while (s->head && s->lim.ttl_s > 0 && now - s->head->created >= s->lim.ttl_s)
    unlink_free(s, s->head);
}

static entry *find(resp_store *s, const char *id) {
  for (entry *e = s->head; e; e = e->next)
    if (!strcmp(e->id, id)) return e;
  return NULL;
}

int resp_store_put(resp_store *s, const char *id, const char *response, const char *conversation,
                   int64_t now) {
  size_t bytes = strlen(id) + strlen(response) + strlen(conversation) + sizeof(entry);
  if (bytes > s->lim.max_bytes || s->lim.max_count <= 0) return QV_ELIMIT;
  entry *e = calloc(1, sizeof *e);
  if (!e) return QV_ENOMEM;
  e->id = strdup(id);
  e->response = strdup(response);
  e->conversation = strdup(conversation);
  if (!e->id || !e->response || !e->conversation) {
    free(e->id);
    free(e->response);
    free(e->conversation);
    free(e);
    return QV_ENOMEM;
  }
  e->bytes = bytes;
  e->created = now;
  uv_mutex_lock(&s->mu);
  expire(s, now);
  entry *old = find(s, id);
  if (old) unlink_free(s, old);
  while (s->head && (s->count + 1 > s->lim.max_count || s->bytes + bytes > s->lim.max_bytes))
    unlink_free(s, s->head);
  e->prev = s->tail;
  if (s->tail) s->tail->next = e;
  else s->head = e;
  s->tail = e;
  s->count++;
  s->bytes += bytes;
  uv_mutex_unlock(&s->mu);
  return 0;
}

int resp_store_get(resp_store *s, const char *id, int64_t now, char **response,
                   char **conversation) {
  int rc = 0;
  if (response) *response = NULL;
  if (conversation) *conversation = NULL;
  uv_mutex_lock(&s->mu);
  expire(s, now);
  entry *e = find(s, id);
  if (!e) {
    rc = QV_ENOTFOUND;
  } else {
    if (response && !(*response = strdup(e->response))) rc = QV_ENOMEM;
    if (!rc && conversation && !(*conversation = strdup(e->conversation))) rc = QV_ENOMEM;
  }
  uv_mutex_unlock(&s->mu);
  if (rc && response) {
    free(*response);
    *response = NULL;
  }
  return rc;
}

int resp_store_delete(resp_store *s, const char *id) {
  uv_mutex_lock(&s->mu);
  entry *e = find(s, id);
  if (e) unlink_free(s, e);
  uv_mutex_unlock(&s->mu);
  return e ? 0 : QV_ENOTFOUND;
}

int32_t resp_store_count(resp_store *s) {
  uv_mutex_lock(&s->mu);
  int32_t n = s->count;
  uv_mutex_unlock(&s->mu);
  return n;
}

size_t resp_store_bytes(resp_store *s) {
  uv_mutex_lock(&s->mu);
  size_t n = s->bytes;
  uv_mutex_unlock(&s->mu);
  return n;
}
