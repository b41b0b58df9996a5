/* Structured-output fields of OpenAI-compatible requests -> one constraint spec on the
 * internal request: OpenAI's response_format (text, json_object, json_schema), vLLM's older
 * guided_json / guided_regex / guided_choice / guided_grammar (+ guided_decoding_backend,
 * accepted and ignored: quiver has one engine) and its newer structured_outputs object. At
 * most one may constrain a request. Compiling (which needs the model's vocabulary) happens
 * later, in server_gen.c; here only shapes are checked. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/oai_req.h"

static int cfail(oai_request *r, qv_error *err, int code, const char *param, const char *msg) {
  snprintf(r->err_param, sizeof r->err_param, "%s", param);
  return qv_error_set(err, code, "'%s' %s", param, msg);
}

static const cJSON *get(const cJSON *o, const char *k) { return cJSON_GetObjectItemCaseSensitive(o, k); }

/* Sets the constraint once; a second one is an error. */
static int set_kind(oai_request *r, qv_error *err, const char *param, qv_cst_kind kind) {
  if (r->cst.kind != QV_CST_NONE)
    return cfail(r, err, QV_EINVAL, param, "conflicts with another structured-output field (give only one)");
  r->cst.kind = kind;
  snprintf(r->cst_param, sizeof r->cst_param, "%s", param);
  return 0;
}

/* A schema given as an object (printed once) or as JSON text. */
static int set_schema(oai_request *r, qv_error *err, const char *param, const cJSON *s) {
  int rc = set_kind(r, err, param, QV_CST_JSON_SCHEMA);
  if (rc) return rc;
  if (cJSON_IsString(s)) {
    r->cst.text = s->valuestring;
    r->cst.text_len = strlen(s->valuestring);
    return 0;
  }
  if (!cJSON_IsObject(s) && !cJSON_IsBool(s)) return cfail(r, err, QV_EINVAL, param, "must be a JSON Schema object");
  r->cst_text = cJSON_PrintUnformatted(s);
  if (!r->cst_text) return qv_error_set(err, QV_ENOMEM, "out of memory");
  r->cst.text = r->cst_text;
  r->cst.text_len = strlen(r->cst_text);
  return 0;
}

static int set_text(oai_request *r, qv_error *err, const char *param, qv_cst_kind kind, const cJSON *s) {
  if (!cJSON_IsString(s) || !s->valuestring[0]) return cfail(r, err, QV_EINVAL, param, "must be a non-empty string");
  int rc = set_kind(r, err, param, kind);
  if (rc) return rc;
  r->cst.text = s->valuestring;
  r->cst.text_len = strlen(s->valuestring);
  return 0;
}

/* GBNF when the text uses `::=`, else Lark/EBNF (vLLM accepts both under one field). */
static int set_grammar(oai_request *r, qv_error *err, const char *param, const cJSON *s) {
  int lark = cJSON_IsString(s) && !strstr(s->valuestring, "::=");
  return set_text(r, err, param, lark ? QV_CST_LARK : QV_CST_GBNF, s);
}

static int set_choice(oai_request *r, qv_error *err, const char *param, const cJSON *a) {
  int32_t n = cJSON_GetArraySize(a);
  if (!cJSON_IsArray(a) || n == 0) return cfail(r, err, QV_EINVAL, param, "must be a non-empty array of strings");
  if (n > QV_CST_MAX_ENUM) return cfail(r, err, QV_ELIMIT, param, "has too many choices (at most 1024)");
  int rc = set_kind(r, err, param, QV_CST_CHOICE);
  if (rc) return rc;
  r->cst_choices = malloc((size_t)n * sizeof *r->cst_choices);
  if (!r->cst_choices) return qv_error_set(err, QV_ENOMEM, "out of memory");
  const cJSON *it;
  int32_t k = 0;
  cJSON_ArrayForEach(it, a) {
    if (!cJSON_IsString(it)) return cfail(r, err, QV_EINVAL, param, "must hold only strings");
    r->cst_choices[k++] = it->valuestring;
  }
  r->cst.choices = r->cst_choices;
  r->cst.n_choices = k;
  return 0;
}

static int response_format(oai_request *r, const cJSON *rf, qv_error *err) {
  const cJSON *type = cJSON_IsObject(rf) ? get(rf, "type") : NULL;
  if (!cJSON_IsString(type)) return cfail(r, err, QV_EINVAL, "response_format", "must be an object with a 'type'");
  const char *t = type->valuestring;
  if (!strcmp(t, "text")) return 0;
  if (!strcmp(t, "json_object")) {
    int rc = set_kind(r, err, "response_format", QV_CST_JSON);
    r->cst.text = "object";
    r->cst.text_len = 6;
    return rc;
  }
  if (!strcmp(t, "json_schema")) {
    const cJSON *js = get(rf, "json_schema");
    if (!cJSON_IsObject(js)) return cfail(r, err, QV_EINVAL, "response_format", "of type json_schema needs a 'json_schema' object");
    const cJSON *name = get(js, "name"), *strict = get(js, "strict"), *schema = get(js, "schema");
    if (name && !cJSON_IsString(name)) return cfail(r, err, QV_EINVAL, "response_format", "json_schema.name must be a string");
    if (strict && !cJSON_IsBool(strict) && !cJSON_IsNull(strict))
      return cfail(r, err, QV_EINVAL, "response_format", "json_schema.strict must be a boolean");
    if (!schema) { /* OpenAI allows a missing schema: any JSON object */
      int rc = set_kind(r, err, "response_format", QV_CST_JSON);
      r->cst.text = "object";
      r->cst.text_len = 6;
      return rc;
    }
    return set_schema(r, err, "response_format", schema);
  }
  return cfail(r, err, QV_EUNSUPPORTED, "response_format", "type must be text, json_object or json_schema");
}

static int structured_outputs(oai_request *r, const cJSON *so, qv_error *err) {
  const char *P = "structured_outputs";
  if (!cJSON_IsObject(so)) return cfail(r, err, QV_EINVAL, P, "must be an object");
  const cJSON *it;
  cJSON_ArrayForEach(it, so) {
    const char *k = it->string;
    int rc = 0;
    if (!strcmp(k, "json")) rc = set_schema(r, err, P, it);
    else if (!strcmp(k, "regex")) rc = set_text(r, err, P, QV_CST_REGEX, it);
    else if (!strcmp(k, "choice")) rc = set_choice(r, err, P, it);
    else if (!strcmp(k, "grammar")) rc = set_grammar(r, err, P, it);
    else if (!strcmp(k, "json_object")) {
      if (!cJSON_IsBool(it)) return cfail(r, err, QV_EINVAL, P, "json_object must be a boolean");
      if (cJSON_IsTrue(it)) {
        rc = set_kind(r, err, P, QV_CST_JSON);
        r->cst.text = "object";
        r->cst.text_len = 6;
      }
    } else if (!strcmp(k, "disable_any_whitespace") || !strcmp(k, "disable_fallback") ||
               !strcmp(k, "disable_additional_properties")) {
      if (!cJSON_IsBool(it)) return cfail(r, err, QV_EINVAL, P, "flags must be booleans");
    } else {
      char msg[128];
      snprintf(msg, sizeof msg, "field '%.40s' is not supported", k);
      return cfail(r, err, QV_EUNSUPPORTED, P, msg);
    }
    if (rc) return rc;
  }
  return 0;
}

int oai_parse_constraint(oai_request *r, const cJSON *root, qv_error *err) {
  int rc = 0;
  const cJSON *x;
  if ((x = get(root, "response_format")) && (rc = response_format(r, x, err))) return rc;
  if ((x = get(root, "guided_json")) && (rc = set_schema(r, err, "guided_json", x))) return rc;
  if ((x = get(root, "guided_regex")) && (rc = set_text(r, err, "guided_regex", QV_CST_REGEX, x))) return rc;
  if ((x = get(root, "guided_choice")) && (rc = set_choice(r, err, "guided_choice", x))) return rc;
  if ((x = get(root, "guided_grammar")) && (rc = set_grammar(r, err, "guided_grammar", x))) return rc;
  if ((x = get(root, "structured_outputs")) && (rc = structured_outputs(r, x, err))) return rc;
  if ((x = get(root, "guided_decoding_backend")) && !cJSON_IsString(x))
    return cfail(r, err, QV_EINVAL, "guided_decoding_backend", "must be a string");
  if ((x = get(root, "guided_whitespace_pattern")) && !cJSON_IsNull(x))
    return cfail(r, err, QV_EUNSUPPORTED, "guided_whitespace_pattern", "is not supported (output JSON is compact)");
  if (r->cst.kind != QV_CST_NONE && r->kind == OAI_CHAT && r->tool_choice && cJSON_IsObject(r->tool_choice))
    return cfail(r, err, QV_EINVAL, r->cst_param, "cannot be combined with a named tool_choice");
  if (r->cst.kind != QV_CST_NONE && r->kind == OAI_CHAT && cJSON_IsString(r->tool_choice) &&
      !strcmp(r->tool_choice->valuestring, "required"))
    return cfail(r, err, QV_EINVAL, r->cst_param, "cannot be combined with tool_choice 'required'");
  return 0;
}
