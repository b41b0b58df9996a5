/* Chat template sources and rendering (the template half of chat.h).
 *
 * A model ships its template as tokenizer_config.json "chat_template" (a string, or a list of
 * {"name", "template"} such as "default" and "tool_use"), as chat_template.jinja next to it, or
 * the user passes a file. Every named template is parsed at load so syntax errors surface with
 * line and column before any request; rendering picks "tool_use" when the request has tools. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/util.h"
#include "chat/chat.h"
#include "chat/jinja.h"
#include "loader/gguf_model.h"

#define MAX_TEMPLATE_FILE_BYTES (16u << 20)
#define MAX_NAMED 16

typedef struct named_template {
  char *name;           /* owned */
  jinja_template *tpl;  /* owned */
} named_template;

struct qv_chat_template {
  named_template named[MAX_NAMED];
  int n_named;
  char *bos, *eos;      /* owned, may be NULL */
  qv_chat_limits limits;
};

static int add_named(qv_chat_template *t, const char *name, const char *src, qv_error *err) {
  if (t->n_named == MAX_NAMED) return qv_error_set(err, QV_ELIMIT, "too many named chat templates");
  jinja_template *tpl = NULL;
  int rc = jinja_template_parse(src, strlen(src), &tpl, err);
  if (rc) {
    if (name && strcmp(name, "default")) qv_error_prefix(err, "chat template '%s'", name);
    return rc;
  }
  char *nm = strdup(name ? name : "default");
  if (!nm) {
    jinja_template_destroy(tpl);
    return qv_error_set(err, QV_ENOMEM, "out of memory");
  }
  t->named[t->n_named].name = nm;
  t->named[t->n_named].tpl = tpl;
  t->n_named++;
  return 0;
}

static qv_chat_template *tpl_new(void) { return calloc(1, sizeof(qv_chat_template)); }

void qv_chat_template_destroy(qv_chat_template *t) {
  if (!t) return;
  for (int i = 0; i < t->n_named; i++) {
    free(t->named[i].name);
    jinja_template_destroy(t->named[i].tpl);
  }
  free(t->bos);
  free(t->eos);
  free(t);
}

int qv_chat_template_load_string(const char *src, const char *name, qv_chat_template **out,
                                 qv_error *err) {
  *out = NULL;
  if (!src) return qv_error_set(err, QV_EINVAL, "no template source");
  qv_chat_template *t = tpl_new();
  if (!t) return qv_error_set(err, QV_ENOMEM, "out of memory");
  int rc = add_named(t, "default", src, err);
  if (rc) {
    if (name) qv_error_prefix(err, "%s", name);
    qv_chat_template_destroy(t);
    return rc;
  }
  *out = t;
  return 0;
}

/* A special-token entry of tokenizer_config.json: a string or {"content": "..."}. */
static char *token_string(const cJSON *v) {
  if (cJSON_IsString(v)) return strdup(v->valuestring);
  const cJSON *c = cJSON_GetObjectItemCaseSensitive(v, "content");
  if (cJSON_IsString(c)) return strdup(c->valuestring);
  return NULL;
}

int qv_chat_template_load_config(const cJSON *cfg, qv_chat_template **out, qv_error *err) {
  *out = NULL;
  const cJSON *ct = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template");
  if (!ct) return qv_error_set(err, QV_ENOTFOUND, "tokenizer_config.json has no chat_template");
  qv_chat_template *t = tpl_new();
  if (!t) return qv_error_set(err, QV_ENOMEM, "out of memory");
  int rc = 0;
  if (cJSON_IsString(ct)) {
    rc = add_named(t, "default", ct->valuestring, err);
  } else if (cJSON_IsArray(ct)) {
    const cJSON *e;
    cJSON_ArrayForEach(e, ct) {
      const cJSON *nm = cJSON_GetObjectItemCaseSensitive(e, "name");
      const cJSON *src = cJSON_GetObjectItemCaseSensitive(e, "template");
      if (!cJSON_IsString(nm) || !cJSON_IsString(src)) {
        rc = qv_error_set(err, QV_EFORMAT, "chat_template list entries need string name and template");
        break;
      }
      rc = add_named(t, nm->valuestring, src->valuestring, err);
      if (rc) break;
    }
    if (rc == 0 && t->n_named == 0) rc = qv_error_set(err, QV_EFORMAT, "chat_template list is empty");
  } else {
    rc = qv_error_set(err, QV_EFORMAT, "chat_template must be a string or a list");
  }
  if (rc == 0) {
    t->bos = token_string(cJSON_GetObjectItemCaseSensitive(cfg, "bos_token"));
    t->eos = token_string(cJSON_GetObjectItemCaseSensitive(cfg, "eos_token"));
    *out = t;
  } else {
    qv_chat_template_destroy(t);
  }
  return rc;
}

/* Reads a whole file (bounded) into a malloc'd NUL-terminated string; templates hold no NULs. */
static int read_file(const char *path, char **out, qv_error *err) {
  size_t n;
  char *buf = qv_read_file(path, MAX_TEMPLATE_FILE_BYTES, &n, err);
  if (!buf) return err ? err->code : QV_EIO;
  if (memchr(buf, 0, n)) {
    free(buf);
    return qv_error_set(err, QV_EFORMAT, "%s: contains NUL bytes", path);
  }
  *out = buf;
  return 0;
}

static int load_config_file(const char *path, qv_chat_template **out, qv_error *err) {
  char *text = NULL;
  int rc = read_file(path, &text, err);
  if (rc) return rc;
  cJSON *cfg = cJSON_Parse(text);
  free(text);
  if (!cfg) return qv_error_set(err, QV_EFORMAT, "%s: invalid JSON", path);
  rc = qv_chat_template_load_config(cfg, out, err);
  cJSON_Delete(cfg);
  if (rc) qv_error_prefix(err, "%s", path);
  return rc;
}

static bool ends_with(const char *s, const char *suf) {
  size_t n = strlen(s), k = strlen(suf);
  return n >= k && strcmp(s + n - k, suf) == 0;
}

int qv_chat_template_load_path(const char *path, qv_chat_template **out, qv_error *err) {
  *out = NULL;
  if (!path) return qv_error_set(err, QV_EINVAL, "no template path");
  struct stat st;
  if (stat(path, &st) != 0) return qv_error_set(err, QV_ENOTFOUND, "%s: %s", path, strerror(errno));
  if (gguf_model_is_path(path)) {
    /* A GGUF model carries its template as tokenizer.chat_template. */
    char *src = NULL;
    int rc = gguf_model_chat_template(path, &src, err);
    if (rc == 0) rc = qv_chat_template_load_string(src, path, out, err);
    free(src);
    return rc;
  }
  if (S_ISDIR(st.st_mode)) {
    size_t n = strlen(path) + 32;
    char *p = malloc(n);
    if (!p) return qv_error_set(err, QV_ENOMEM, "out of memory");
    snprintf(p, n, "%s/chat_template.jinja", path);
    int rc;
    if (stat(p, &st) == 0) {
      char *src = NULL;
      rc = read_file(p, &src, err);
      if (rc == 0) rc = qv_chat_template_load_string(src, p, out, err);
      free(src);
      /* bos/eos still come from tokenizer_config.json when present */
      snprintf(p, n, "%s/tokenizer_config.json", path);
      char *text = NULL;
      if (rc == 0 && stat(p, &st) == 0 && read_file(p, &text, NULL) == 0) {
        cJSON *cfg = cJSON_Parse(text);
        if (cfg) {
          (*out)->bos = token_string(cJSON_GetObjectItemCaseSensitive(cfg, "bos_token"));
          (*out)->eos = token_string(cJSON_GetObjectItemCaseSensitive(cfg, "eos_token"));
          cJSON_Delete(cfg);
        }
        free(text);
      }
    } else {
      snprintf(p, n, "%s/tokenizer_config.json", path);
      rc = load_config_file(p, out, err);
    }
    free(p);
    return rc;
  }
  if (ends_with(path, ".json")) return load_config_file(path, out, err);
  char *src = NULL;
  int rc = read_file(path, &src, err);
  if (rc) return rc;
  rc = qv_chat_template_load_string(src, path, out, err);
  free(src);
  return rc;
}

void qv_chat_template_set_limits(qv_chat_template *t, const qv_chat_limits *limits) {
  if (t && limits) t->limits = *limits;
}

static const named_template *pick(const qv_chat_template *t, bool has_tools) {
  if (t->n_named == 0) return NULL;
  const named_template *def = NULL, *tool = NULL;
  for (int i = 0; i < t->n_named; i++) {
    if (!strcmp(t->named[i].name, "default")) def = &t->named[i];
    if (!strcmp(t->named[i].name, "tool_use")) tool = &t->named[i];
  }
  if (has_tools && tool) return tool;
  return def ? def : &t->named[0];
}

const char *qv_chat_template_source(const qv_chat_template *t, bool has_tools) {
  const named_template *n = t ? pick(t, has_tools) : NULL;
  return n ? n->tpl->source : NULL;
}

const char *qv_chat_template_bos(const qv_chat_template *t) { return t ? t->bos : NULL; }
const char *qv_chat_template_eos(const qv_chat_template *t) { return t ? t->eos : NULL; }

int qv_chat_template_render(const qv_chat_template *t, const cJSON *vars, char **out,
                            size_t *out_len, qv_error *err) {
  *out = NULL;
  if (!t) return qv_error_set(err, QV_EINVAL, "no template");
  if (vars && !cJSON_IsObject(vars)) return qv_error_set(err, QV_EINVAL, "template variables must be a JSON object");
  const cJSON *tools = vars ? cJSON_GetObjectItemCaseSensitive(vars, "tools") : NULL;
  bool has_tools = cJSON_IsArray(tools) && cJSON_GetArraySize(tools) > 0;
  const named_template *n = pick(t, has_tools);
  if (!n) return qv_error_set(err, QV_ENOTFOUND, "no chat template");
  jinja_limits lim = {
      .max_depth = t->limits.max_depth > 0 ? t->limits.max_depth : 500,
      .max_loop_iters = t->limits.max_loop_iters > 0 ? t->limits.max_loop_iters : 1000000,
      .max_output_bytes = t->limits.max_output_bytes > 0 ? t->limits.max_output_bytes : (16u << 20),
  };
  /* values created while rendering: generous against the output cap, still bounded */
  lim.max_arena_bytes = lim.max_output_bytes * 4 + (32u << 20);
  return jinja_render(n->tpl, vars, &lim, out, out_len, err);
}

qv_chat_tool_format qv_chat_tool_format_detect(const qv_chat_template *t) {
  for (int pass = 0; pass < 2; pass++) {
    const char *src = qv_chat_template_source(t, pass == 0);
    if (!src) continue;
    if (strstr(src, "[TOOL_CALLS]")) return QV_CHAT_TOOLS_MISTRAL;
    if (strstr(src, "<tool_call>")) return QV_CHAT_TOOLS_HERMES;
    if (strstr(src, "<|python_tag|>") || strstr(src, "\"parameters\": dictionary of argument"))
      return QV_CHAT_TOOLS_LLAMA3;
  }
  return QV_CHAT_TOOLS_NONE;
}
