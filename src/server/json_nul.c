/* NUL characters as the marker C0 80 inside the server (see json_nul.h). */
#include "server/json_nul.h"

#include <stdlib.h>
#include <string.h>

#include "quiver/error.h"

static int is_mark(const char *s, size_t n, size_t i) {
  return (unsigned char)s[i] == 0xC0 && i + 1 < n && (unsigned char)s[i + 1] == 0x80;
}

int jnul_has(const char *s, size_t n) {
  const char *p = s, *end = s + n;
  while ((p = memchr(p, 0xC0, (size_t)(end - p))) != NULL) {
    if (p + 1 < end && (unsigned char)p[1] == 0x80) return 1;
    p++;
  }
  return 0;
}

/* Outside strings a backslash is invalid JSON, and inside one it always starts an escape, so
 * walking escapes pairwise finds every \u0000 without tracking strings. */
int jnul_unescape(const char *body, size_t len, char **out, size_t *out_len) {
  *out = NULL;
  *out_len = 0;
  char *o = NULL;
  size_t w = 0, from = 0;
  for (size_t i = 0; i + 1 < len; i++) {
    if (body[i] != '\\') continue;
    if (body[i + 1] == 'u' && i + 5 < len && !memcmp(body + i + 2, "0000", 4)) {
      if (!o && !(o = malloc(len + 1))) return QV_ENOMEM; /* never grows: 6 bytes become 2 */
      memcpy(o + w, body + from, i - from);
      w += i - from;
      memcpy(o + w, JNUL_MARK, 2);
      w += 2;
      from = i + 6;
      i += 5;
      continue;
    }
    i++; /* the escaped character */
  }
  if (!o) return 0;
  memcpy(o + w, body + from, len - from);
  w += len - from;
  o[w] = '\0';
  *out = o;
  *out_len = w;
  return 0;
}

size_t jnul_decode(char *s, size_t n) {
  size_t w = 0;
  for (size_t i = 0; i < n; i++) {
    if (is_mark(s, n, i)) {
      s[w++] = '\0';
      i++;
    } else {
      s[w++] = s[i];
    }
  }
  return w;
}

char *jnul_encode(const char *s, size_t n, size_t *out_len) {
  size_t extra = 0;
  for (const char *p = s; n && (p = memchr(p, 0, n - (size_t)(p - s))) != NULL; p++) extra++;
  char *o = malloc(n + extra + 1);
  if (!o) return NULL;
  size_t w = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i]) {
      o[w++] = s[i];
    } else {
      memcpy(o + w, JNUL_MARK, 2);
      w += 2;
    }
  }
  o[w] = '\0';
  if (out_len) *out_len = w;
  return o;
}

size_t jnul_bytes(const char *s, size_t n) {
  size_t b = n;
  for (size_t i = 0; i + 1 < n; i++)
    if (is_mark(s, n, i)) {
      b--;
      i++;
    }
  return b;
}

cJSON *jnul_string(const char *s, size_t n) {
  char *t = jnul_encode(s, n, NULL);
  if (!t) return NULL;
  cJSON *j = cJSON_CreateString(t);
  free(t);
  return j;
}

char *jnul_wire(const char *json, size_t len, size_t *out_len, int *oom) {
  *oom = 0;
  *out_len = 0;
  if (!jnul_has(json, len)) return NULL; /* the common case: one memchr pass */
  size_t n_marks = 0;
  for (size_t i = 0; i + 1 < len; i++)
    if (is_mark(json, len, i)) {
      n_marks++;
      i++;
    }
  if (!n_marks) return NULL;
  char *o = malloc(len + 4 * n_marks + 1); /* 2 bytes become the 6 of \u0000 */
  if (!o) {
    *oom = 1;
    return NULL;
  }
  size_t w = 0;
  for (size_t i = 0; i < len; i++) {
    if (is_mark(json, len, i)) {
      memcpy(o + w, "\\u0000", 6);
      w += 6;
      i++;
    } else {
      o[w++] = json[i];
    }
  }
  o[w] = '\0';
  *out_len = w;
  return o;
}
