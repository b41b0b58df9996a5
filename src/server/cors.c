/* CORS configuration and header lines (see cors.h). */
#include "server/cors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cjson/cJSON.h>

void cors_opts_deinit(cors_opts *o) {
  for (int i = 0; i < o->n_origins; i++) free(o->origins[i]);
  free(o->methods);
  free(o->headers);
  memset(o, 0, sizeof *o);
}

int cors_enabled(const cors_opts *o) { return o && o->n_origins > 0; }

/* A value that can go into a header line as is. */
static int header_safe(const char *s) {
  if (!*s || strlen(s) > 256) return 0;
  for (const unsigned char *p = (const unsigned char *)s; *p; p++)
    if (*p < 0x20 || *p >= 0x7f || *p == '"' || *p == ',') return 0;
  return 1;
}

/* Calls add(item) for each entry of a JSON list or a comma-separated list. */
static int each_item(const char *list, const char *flag, int (*add)(void *, const char *, qv_error *),
                     void *ud, qv_error *err) {
  const char *p = list;
  while (*p == ' ') p++;
  if (*p == '[') {
    cJSON *j = cJSON_Parse(list);
    if (!cJSON_IsArray(j)) {
      cJSON_Delete(j);
      return qv_error_set(err, QV_EINVAL, "%s: '%.100s' is not a JSON list of strings", flag, list);
    }
    const cJSON *it;
    int rc = 0;
    cJSON_ArrayForEach(it, j) {
      if (!cJSON_IsString(it)) rc = qv_error_set(err, QV_EINVAL, "%s: list items must be strings", flag);
      else rc = add(ud, it->valuestring, err);
      if (rc) break;
    }
    cJSON_Delete(j);
    return rc;
  }
  char item[300];
  while (*p) {
    const char *comma = strchr(p, ',');
    size_t n = comma ? (size_t)(comma - p) : strlen(p);
    while (n && p[n - 1] == ' ') n--;
    if (n >= sizeof item) return qv_error_set(err, QV_EINVAL, "%s: item too long", flag);
    memcpy(item, p, n);
    item[n] = '\0';
    if (n) {
      int rc = add(ud, item, err);
      if (rc) return rc;
    }
    p = comma ? comma + 1 : p + strlen(p);
    while (*p == ' ') p++;
  }
  return 0;
}

static int add_origin(void *ud, const char *s, qv_error *err) {
  cors_opts *o = ud;
  if (!header_safe(s)) return qv_error_set(err, QV_EINVAL, "--allowed-origins: bad origin '%.100s'", s);
  if (o->n_origins == CORS_MAX_ORIGINS)
    return qv_error_set(err, QV_ELIMIT, "--allowed-origins: at most %d origins", CORS_MAX_ORIGINS);
  if (!(o->origins[o->n_origins] = strdup(s))) return qv_error_set(err, QV_ENOMEM, "out of memory");
  o->n_origins++;
  return 0;
}

/* Appends s to a ", "-joined list. */
static int join(char **list, const char *s, const char *flag, qv_error *err) {
  if (!header_safe(s)) return qv_error_set(err, QV_EINVAL, "%s: bad item '%.100s'", flag, s);
  size_t old = *list ? strlen(*list) : 0;
  if (old > 4096) return qv_error_set(err, QV_ELIMIT, "%s: list too long", flag);
  char *n = realloc(*list, old + strlen(s) + 3);
  if (!n) return qv_error_set(err, QV_ENOMEM, "out of memory");
  sprintf(n + old, "%s%s", old ? ", " : "", s);
  *list = n;
  return 0;
}

static int add_method(void *ud, const char *s, qv_error *err) {
  return join(&((cors_opts *)ud)->methods, s, "--allowed-methods", err);
}
static int add_header(void *ud, const char *s, qv_error *err) {
  return join(&((cors_opts *)ud)->headers, s, "--allowed-headers", err);
}

int cors_opts_add_origins(cors_opts *o, const char *list, qv_error *err) {
  return each_item(list, "--allowed-origins", add_origin, o, err);
}
int cors_opts_add_methods(cors_opts *o, const char *list, qv_error *err) {
  return each_item(list, "--allowed-methods", add_method, o, err);
}
int cors_opts_add_headers(cors_opts *o, const char *list, qv_error *err) {
  return each_item(list, "--allowed-headers", add_header, o, err);
}

/* The Access-Control-Allow-Origin value for origin, or NULL when it is not allowed. "*" is
 * echoed as the origin itself when credentials are allowed (browsers refuse "*" then). */
static const char *allowed(const cors_opts *o, const char *origin) {
  if (!cors_enabled(o) || !origin || !header_safe(origin)) return NULL;
  for (int i = 0; i < o->n_origins; i++) {
    if (!strcmp(o->origins[i], "*")) return o->allow_credentials ? origin : "*";
    if (!strcasecmp(o->origins[i], origin)) return origin;
  }
  return NULL;
}

void cors_headers(const cors_opts *o, const char *origin, char *out, size_t cap) {
  out[0] = '\0';
  const char *v = allowed(o, origin);
  if (!v) return;
  snprintf(out, cap, "Access-Control-Allow-Origin: %s\r\n%s%s", v,
           o->allow_credentials ? "Access-Control-Allow-Credentials: true\r\n" : "",
           strcmp(v, "*") ? "Vary: Origin\r\n" : "");
}

/* A requested header list echoed back: header-name characters, commas and spaces only. */
static int header_list_safe(const char *s) {
  if (strlen(s) > 1024) return 0;
  for (const unsigned char *p = (const unsigned char *)s; *p; p++)
    if (!(*p == ',' || *p == ' ' || *p == '-' || *p == '_' || *p == '.' || (*p >= '0' && *p <= '9') ||
          ((*p | 0x20) >= 'a' && (*p | 0x20) <= 'z')))
      return 0;
  return 1;
}

int cors_preflight(const cors_opts *o, const char *origin, const char *request_method,
                   const char *request_headers, char *out, size_t cap) {
  out[0] = '\0';
  const char *v = allowed(o, origin);
  if (!v || !request_method) return 0;
  char base[512];
  cors_headers(o, origin, base, sizeof base);
  snprintf(out, cap,
           "%sAccess-Control-Allow-Methods: %s\r\nAccess-Control-Allow-Headers: %s\r\n"
           "Access-Control-Max-Age: 600\r\n",
           base, o->methods ? o->methods : "GET, POST, OPTIONS",
           o->headers ? o->headers
           : request_headers && *request_headers && header_list_safe(request_headers)
               ? request_headers
               : "Authorization, Content-Type");
  return 1;
}
