/* Helpers shared by the API dialects (see dialect.h): SSE framing, decode failures, text
 * blocks. */
#include "server/dialect.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "server/server_int.h"

char *dialect_sse(const char *event, cJSON *obj) {
  char *j = obj ? cJSON_PrintUnformatted(obj) : NULL;
  cJSON_Delete(obj);
  if (!j) return NULL;
  size_t n = strlen(j), en = event ? strlen(event) : 0;
  size_t cap = n + en + 20;
  char *s = malloc(cap);
  if (s) {
    if (event) snprintf(s, cap, "event: %s\ndata: %s\n\n", event, j);
    else snprintf(s, cap, "data: %s\n\n", j);
  }
  free(j);
  return s;
}

int dialect_fail(srv_req *r, int code, const char *param, const char *fmt, ...) {
  snprintf(r->o.err_param, sizeof r->o.err_param, "%s", param ? param : "");
  char msg[400];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return qv_error_set(&r->work_err, code, "%s", msg);
}

char *dialect_join_text(const cJSON *content, const char *const *text_types,
                        const char **err_block) {
  *err_block = "";
  if (cJSON_IsString(content)) return strdup(content->valuestring);
  if (!cJSON_IsArray(content)) return NULL;
  char *buf = NULL;
  size_t len = 0, cap = 0;
  if (dialect_append(&buf, &len, &cap, "", 0)) return NULL;
  const cJSON *b;
  cJSON_ArrayForEach(b, content) {
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(b, "type");
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(b, "text");
    if (!cJSON_IsObject(b) || !cJSON_IsString(type)) {
      free(buf);
      return NULL;
    }
    int ok = 0;
    for (const char *const *t = text_types; *t && !ok; t++) ok = !strcmp(type->valuestring, *t);
    if (!ok || !cJSON_IsString(text)) {
      *err_block = ok ? "" : type->valuestring;
      free(buf);
      return NULL;
    }
    if (dialect_append(&buf, &len, &cap, text->valuestring, strlen(text->valuestring))) {
      free(buf);
      return NULL;
    }
  }
  return buf;
}

int dialect_append(char **buf, size_t *len, size_t *cap, const char *t, size_t n) {
  char *nb = qv_grow(*buf, cap, *len + n + 1, 1, 256);
  if (!nb) return QV_ENOMEM;
  *buf = nb;
  if (n) memcpy(nb + *len, t, n);
  *len += n;
  nb[*len] = '\0';
  return 0;
}

cJSON *dialect_fn_object(const char *id, cJSON **fn) {
  cJSON *o = cJSON_CreateObject();
  if (!o || (id && !cJSON_AddStringToObject(o, "id", id)) ||
      !cJSON_AddStringToObject(o, "type", "function") ||
      !(*fn = cJSON_AddObjectToObject(o, "function"))) {
    cJSON_Delete(o);
    return NULL;
  }
  return o;
}

int dialect_add_msg(cJSON *msgs, const char *role, const char *content) {
  cJSON *m = cJSON_CreateObject();
  if (!m || !cJSON_AddStringToObject(m, "role", role) ||
      !cJSON_AddStringToObject(m, "content", content)) {
    cJSON_Delete(m);
    return QV_ENOMEM;
  }
  cJSON_AddItemToArray(msgs, m);
  return 0;
}
