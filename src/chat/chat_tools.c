/* Tool-call parsing: generated text -> content + OpenAI tool calls, for three formats:
 *   hermes  <tool_call>{"name": "f", "arguments": {...}}</tool_call>   (Hermes 2/3, Qwen 2.5/3),
 *           or a message that is only that bare object (small Qwen models drop the tags)
 *   llama3  {"name": "f", "parameters": {...}}, optionally after <|python_tag|>  (Llama 3.1/3.2)
 *   mistral [TOOL_CALLS][{"name": "f", "arguments": {...}}, ...]  or [TOOL_CALLS]f[ARGS]{...}
 *
 * One scanner serves both the batch parser and the streaming one: scan() classifies the region
 * starting at a position as plain text, a complete call, or an unfinished call that needs more
 * text. Streaming feeds the growing buffer through scan() and only emits what is decided:
 * text that cannot be the start of a call marker, and calls once their JSON is complete.
 * A call whose JSON is malformed stays in the content: the model did not make a valid call. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat/chat.h"
#include "core/util.h"

const char *qv_chat_tool_format_name(qv_chat_tool_format fmt) {
  switch (fmt) {
    case QV_CHAT_TOOLS_HERMES: return "hermes";
    case QV_CHAT_TOOLS_LLAMA3: return "llama3";
    case QV_CHAT_TOOLS_MISTRAL: return "mistral";
    default: return "none";
  }
}

int qv_chat_tool_format_parse(const char *name, qv_chat_tool_format *out) {
  static const struct { const char *name; qv_chat_tool_format fmt; } tab[] = {
      {"none", QV_CHAT_TOOLS_NONE},       {"hermes", QV_CHAT_TOOLS_HERMES},
      {"qwen", QV_CHAT_TOOLS_HERMES},     {"llama3", QV_CHAT_TOOLS_LLAMA3},
      {"llama3_json", QV_CHAT_TOOLS_LLAMA3}, {"mistral", QV_CHAT_TOOLS_MISTRAL}};
  for (size_t i = 0; name && i < sizeof tab / sizeof tab[0]; i++)
    if (!strcmp(name, tab[i].name)) {
      *out = tab[i].fmt;
      return 0;
    }
  return QV_EINVAL;
}

/* ---- growable outputs ----------------------------------------------------------------------- */

typedef struct sbuf { char *p; size_t n, cap; } sbuf;

static int sbuf_put(sbuf *b, const char *s, size_t n) {
  char *p = qv_grow(b->p, &b->cap, b->n + n + 1, 1, 64);
  if (!p) return QV_ENOMEM;
  b->p = p;
  if (n) memcpy(b->p + b->n, s, n);
  b->n += n;
  b->p[b->n] = 0;
  return 0;
}

void qv_chat_parsed_deinit(qv_chat_parsed *p) {
  if (!p) return;
  for (int i = 0; i < p->n_calls; i++) {
    free(p->calls[i].id);
    free(p->calls[i].name);
    free(p->calls[i].arguments);
  }
  free(p->calls);
  free(p->content);
  memset(p, 0, sizeof(*p));
}

/* Deterministic call ids: FNV-1a over the call, expanded with splitmix64 into alphanumerics.
 * Mistral's template insists on 9-character ids; everyone else gets OpenAI's "call_" + 24. */
static char *make_id(qv_chat_tool_format fmt, const char *name, const char *args, int index) {
  static const char alnum[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  uint64_t h = 1469598103934665603ull;
  for (const char *s = name; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
  for (const char *s = args; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
  h ^= (uint64_t)index * 0x9E3779B97F4A7C15ull;
  int len = fmt == QV_CHAT_TOOLS_MISTRAL ? 9 : 24;
  const char *prefix = fmt == QV_CHAT_TOOLS_MISTRAL ? "" : "call_";
  size_t pl = strlen(prefix);
  char *id = malloc(pl + (size_t)len + 1);
  if (!id) return NULL;
  memcpy(id, prefix, pl);
  for (int i = 0; i < len; i++) {
    h += 0x9E3779B97F4A7C15ull;
    uint64_t z = h;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    id[pl + (size_t)i] = alnum[z % (sizeof alnum - 1)];
  }
  id[pl + (size_t)len] = 0;
  return id;
}

/* Appends a call built from a JSON object {"name", "arguments"|"parameters"}; returns 1 when obj
 * is not a call (no string name), 0 on success, QV_ENOMEM. */
static int add_call(qv_chat_parsed *out, qv_chat_tool_format fmt, const cJSON *obj,
                    const char *name_override, int index) {
  const cJSON *name = cJSON_GetObjectItemCaseSensitive(obj, "name");
  const char *nm = name_override ? name_override : (cJSON_IsString(name) ? name->valuestring : NULL);
  if (!nm || !nm[0]) return 1;
  const cJSON *args = name_override ? obj : cJSON_GetObjectItemCaseSensitive(obj, "arguments");
  if (!args && !name_override) args = cJSON_GetObjectItemCaseSensitive(obj, "parameters");
  char *arg_text;
  if (!args) arg_text = strdup("{}");
  else if (cJSON_IsString(args)) arg_text = strdup(args->valuestring);
  else if (cJSON_IsObject(args)) arg_text = cJSON_PrintUnformatted(args);
  else return 1;
  qv_chat_tool_call *calls = realloc(out->calls, (size_t)(out->n_calls + 1) * sizeof(*calls));
  if (calls) out->calls = calls;
  char *nm_copy = strdup(nm);
  char *id = arg_text ? make_id(fmt, nm, arg_text, index) : NULL;
  if (!calls || !nm_copy || !arg_text || !id) {
    free(nm_copy);
    free(arg_text);
    free(id);
    return QV_ENOMEM;
  }
  calls[out->n_calls].id = id;
  calls[out->n_calls].name = nm_copy;
  calls[out->n_calls].arguments = arg_text;
  out->n_calls++;
  return 0;
}

/* ---- scanner -------------------------------------------------------------------------------- */

typedef enum { SCAN_TEXT, SCAN_CALL, SCAN_MORE } scan_kind;

typedef struct scan_result {
  scan_kind kind;
  size_t next;   /* end of the region (exclusive) */
  bool in_call;  /* SCAN_MORE inside a started call (not an undecided marker prefix) */
} scan_result;

static const char *marker(qv_chat_tool_format fmt) {
  switch (fmt) {
    case QV_CHAT_TOOLS_HERMES: return "<tool_call>";
    case QV_CHAT_TOOLS_LLAMA3: return "<|python_tag|>";
    case QV_CHAT_TOOLS_MISTRAL: return "[TOOL_CALLS]";
    default: return NULL;
  }
}

static const char *find(const char *s, size_t n, const char *lit) {
  size_t k = strlen(lit);
  for (size_t i = 0; i + k <= n; i++)
    if (s[i] == lit[0] && memcmp(s + i, lit, k) == 0) return s + i;
  return NULL;
}

static bool is_space(char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }

/* Length of the longest suffix of s[0..n) that is a proper prefix of lit. */
static size_t partial_suffix(const char *s, size_t n, const char *lit) {
  size_t k = strlen(lit);
  for (size_t len = k - 1 < n ? k - 1 : n; len > 0; len--)
    if (memcmp(s + n - len, lit, len) == 0) return len;
  return 0;
}

/* Parses one JSON value at s[0..n); returns it and sets *used, or NULL when incomplete/invalid. */
static cJSON *parse_json_prefix(const char *s, size_t n, size_t *used) {
  const char *end = NULL;
  cJSON *j = cJSON_ParseWithLengthOpts(s, n, &end, 0);
  if (j) *used = (size_t)(end - s);
  return j;
}

/* Calls from a parsed JSON value (object or array of objects) into out; 1 when not calls. */
static int add_calls_from(qv_chat_parsed *out, qv_chat_tool_format fmt, const cJSON *j,
                          int *index) {
  if (cJSON_IsObject(j)) {
    int rc = add_call(out, fmt, j, NULL, *index);
    if (rc == 0) (*index)++;
    return rc;
  }
  if (!cJSON_IsArray(j) || !j->child) return 1;
  const cJSON *e;
  cJSON_ArrayForEach(e, j) if (!cJSON_IsObject(e) || !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(e, "name"))) return 1;
  cJSON_ArrayForEach(e, j) {
    int rc = add_call(out, fmt, e, NULL, *index);
    if (rc) return rc;
    (*index)++;
  }
  return 0;
}

/* Classifies s[pos..n). at_start: nothing but whitespace precedes pos in this message (llama3's
 * bare-JSON calls are only recognised there). final: no more text will come. Complete calls are
 * appended to calls. */
static int scan(qv_chat_tool_format fmt, const char *s, size_t n, size_t pos, bool at_start,
                bool final, qv_chat_parsed *calls, int *index, scan_result *r) {
  const char *mk = marker(fmt);
  const char *base = s + pos;
  size_t len = n - pos;
  r->in_call = false;
  if (!mk) {
    r->kind = SCAN_TEXT;
    r->next = n;
    return 0;
  }
  size_t mlen = strlen(mk);
  /* llama3: a message that starts with '{' is a JSON call candidate. hermes: so is a message
   * that is one bare {"name": ..., "arguments": {...}} object, as small Qwen models write it
   * without the <tool_call> tags their template asks for. */
  if ((fmt == QV_CHAT_TOOLS_LLAMA3 || fmt == QV_CHAT_TOOLS_HERMES) && at_start) {
    size_t w = 0;
    while (w < len && is_space(base[w])) w++;
    if (w == len && !final) {
      r->kind = SCAN_MORE;
      return 0;
    }
    if (w < len && base[w] == '{') {
      size_t used = 0;
      cJSON *j = parse_json_prefix(base + w, len - w, &used);
      if (!j) {
        if (!final) {
          r->kind = SCAN_MORE;
          r->in_call = true;
          return 0;
        }
        r->kind = SCAN_TEXT;
        r->next = n;
        return 0;
      }
      int bare_ok = fmt != QV_CHAT_TOOLS_HERMES ||
                    (cJSON_IsObject(j) && cJSON_IsString(cJSON_GetObjectItemCaseSensitive(j, "name")) &&
                     cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(j, "arguments")));
      int rc = bare_ok ? add_calls_from(calls, fmt, j, index) : 1;
      cJSON_Delete(j);
      if (rc < 0) return rc;
      size_t end = pos + w + used;
      if (rc == 0) {
        while (end < n && (is_space(s[end]) || s[end] == ';')) end++;
        r->kind = SCAN_CALL;
      } else {
        r->kind = SCAN_TEXT;
      }
      r->next = end;
      return 0;
    }
  }
  const char *m = find(base, len, mk);
  if (!m) {
    r->kind = SCAN_TEXT;
    r->next = final ? n : n - partial_suffix(base, len, mk);
    if (r->next == pos) r->kind = SCAN_MORE;
    return 0;
  }
  if (m > base) {
    r->kind = SCAN_TEXT;
    r->next = pos + (size_t)(m - base);
    return 0;
  }
  /* a marker at pos */
  const char *body = base + mlen;
  size_t blen = len - mlen;
  if (fmt == QV_CHAT_TOOLS_HERMES) {
    const char *close = find(body, blen, "</tool_call>");
    size_t json_len = close ? (size_t)(close - body) : blen;
    if (!close && !final) {
      r->kind = SCAN_MORE;
      r->in_call = true;
      return 0;
    }
    size_t w = 0;
    while (w < json_len && is_space(body[w])) w++;
    size_t used = 0;
    cJSON *j = parse_json_prefix(body + w, json_len - w, &used);
    bool ok = false;
    if (j) {
      size_t t = w + used;
      while (t < json_len && is_space(body[t])) t++;
      if (t == json_len && cJSON_IsObject(j)) {
        int rc = add_call(calls, fmt, j, NULL, *index);
        if (rc < 0) {
          cJSON_Delete(j);
          return rc;
        }
        if (rc == 0) {
          (*index)++;
          ok = true;
        }
      }
      cJSON_Delete(j);
    }
    r->kind = ok ? SCAN_CALL : SCAN_TEXT;
    r->next = close ? (size_t)(close - s) + strlen("</tool_call>") : n;
    return 0;
  }
  size_t w = 0;
  while (w < blen && is_space(body[w])) w++;
  r->in_call = !final;
  if (w == blen) {
    r->kind = final ? SCAN_TEXT : SCAN_MORE;
    r->next = n;
    return 0;
  }
  const char *name = NULL;
  size_t name_len = 0;
  if (fmt == QV_CHAT_TOOLS_MISTRAL && body[w] != '[') {
    /* [TOOL_CALLS]name[ARGS]{...} */
    const char *args = find(body + w, blen - w, "[ARGS]");
    if (!args) {
      r->kind = final ? SCAN_TEXT : SCAN_MORE;
      r->next = n;
      return 0;
    }
    name = body + w;
    name_len = (size_t)(args - name);
    w = (size_t)(args - body) + 6;
  }
  size_t used = 0;
  cJSON *j = parse_json_prefix(body + w, blen - w, &used);
  if (!j) {
    r->kind = final ? SCAN_TEXT : SCAN_MORE;
    r->next = n;
    return 0;
  }
  int rc;
  if (name) {
    char *nm = malloc(name_len + 1);
    if (!nm) {
      cJSON_Delete(j);
      return QV_ENOMEM;
    }
    memcpy(nm, name, name_len);
    nm[name_len] = 0;
    rc = cJSON_IsObject(j) ? add_call(calls, fmt, j, nm, *index) : 1;
    if (rc == 0) (*index)++;
    free(nm);
  } else {
    rc = add_calls_from(calls, fmt, j, index);
  }
  cJSON_Delete(j);
  if (rc < 0) return rc;
  size_t end = (size_t)(body - s) + w + used;
  if (rc == 0) while (end < n && (is_space(s[end]) || s[end] == ';')) end++;
  r->kind = rc == 0 ? SCAN_CALL : SCAN_TEXT;
  r->next = end;
  return 0;
}

/* ---- batch ---------------------------------------------------------------------------------- */

int qv_chat_tools_parse(qv_chat_tool_format fmt, const char *text, size_t len,
                        qv_chat_parsed *out, qv_error *err) {
  memset(out, 0, sizeof(*out));
  sbuf content = {0};
  size_t pos = 0;
  int index = 0, rc = 0;
  bool at_start = true;
  while (pos < len && rc == 0) {
    scan_result r;
    rc = scan(fmt, text, len, pos, at_start, true, out, &index, &r);
    if (rc) break;
    if (r.next <= pos) r.next = len; /* defensive: always progress */
    if (r.kind != SCAN_CALL) {
      rc = sbuf_put(&content, text + pos, r.next - pos);
      for (size_t i = pos; i < r.next; i++)
        if (!is_space(text[i])) at_start = false;
    } else {
      at_start = true;
    }
    pos = r.next;
  }
  if (rc == 0 && !content.p) rc = sbuf_put(&content, "", 0);
  if (rc) {
    free(content.p);
    qv_chat_parsed_deinit(out);
    return qv_error_set(err, QV_ENOMEM, "out of memory parsing tool calls");
  }
  if (out->n_calls > 0) { /* surrounding whitespace around calls is not content */
    size_t a = 0, b = content.n;
    while (a < b && is_space(content.p[a])) a++;
    while (b > a && is_space(content.p[b - 1])) b--;
    memmove(content.p, content.p + a, b - a);
    content.p[b - a] = 0;
  }
  out->content = content.p;
  return 0;
}

/* ---- streaming ------------------------------------------------------------------------------ */

struct qv_chat_tool_stream {
  qv_chat_tool_format fmt;
  sbuf buf;       /* all text so far */
  size_t pos;     /* everything before pos has been emitted (as content or calls) */
  bool at_start;
  bool waiting;   /* the last step stopped at an unfinished call */
  int index;      /* calls emitted so far */
};

int qv_chat_tool_stream_create(qv_chat_tool_format fmt, qv_chat_tool_stream **out, qv_error *err) {
  *out = calloc(1, sizeof(**out));
  if (!*out) return qv_error_set(err, QV_ENOMEM, "out of memory");
  (*out)->fmt = fmt;
  (*out)->at_start = true;
  return 0;
}

void qv_chat_tool_stream_destroy(qv_chat_tool_stream *s) {
  if (!s) return;
  free(s->buf.p);
  free(s);
}

int qv_chat_tool_stream_n_calls(const qv_chat_tool_stream *s) { return s ? s->index : 0; }

static int stream_step(qv_chat_tool_stream *s, bool final, qv_chat_parsed *out, qv_error *err) {
  qv_chat_parsed_deinit(out);
  sbuf content = {0};
  int rc = 0;
  const char *text = s->buf.p ? s->buf.p : "";
  size_t n = s->buf.n;
  while (s->pos < n && rc == 0) {
    scan_result r;
    rc = scan(s->fmt, text, n, s->pos, s->at_start, final, out, &s->index, &r);
    s->waiting = rc == 0 && r.kind == SCAN_MORE && r.in_call;
    if (rc || r.kind == SCAN_MORE) break;
    if (r.next <= s->pos) r.next = n;
    if (r.kind == SCAN_TEXT) {
      rc = sbuf_put(&content, text + s->pos, r.next - s->pos);
      for (size_t i = s->pos; i < r.next; i++)
        if (!is_space(text[i])) s->at_start = false;
    } else {
      s->at_start = true;
    }
    s->pos = r.next;
  }
  if (rc == 0 && !content.p) rc = sbuf_put(&content, "", 0);
  if (rc) {
    free(content.p);
    qv_chat_parsed_deinit(out);
    return qv_error_set(err, QV_ENOMEM, "out of memory parsing tool calls");
  }
  out->content = content.p;
  return 0;
}

int qv_chat_tool_stream_feed(qv_chat_tool_stream *s, const char *delta, size_t len,
                             qv_chat_parsed *out, qv_error *err) {
  if (!s || (!delta && len)) return qv_error_set(err, QV_EINVAL, "invalid stream arguments");
  if (len && sbuf_put(&s->buf, delta, len)) return qv_error_set(err, QV_ENOMEM, "out of memory");
  /* An unfinished call can only complete on a closing '>' (of </tool_call>) or a closing JSON
   * bracket: skip re-scanning the whole call for deltas without one, which keeps long calls
   * streamed token by token linear rather than quadratic. */
  bool may_complete = false;
  for (size_t i = 0; i < len && !may_complete; i++)
    may_complete = delta[i] == '>' || delta[i] == '}' || delta[i] == ']';
  if (s->waiting && !may_complete) {
    qv_chat_parsed_deinit(out);
    out->content = calloc(1, 1);
    return out->content ? 0 : qv_error_set(err, QV_ENOMEM, "out of memory");
  }
  return stream_step(s, false, out, err);
}

int qv_chat_tool_stream_finish(qv_chat_tool_stream *s, qv_chat_parsed *out, qv_error *err) {
  if (!s) return qv_error_set(err, QV_EINVAL, "invalid stream");
  return stream_step(s, true, out, err);
}
