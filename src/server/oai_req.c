/* OpenAI request parsing and validation (see oai_req.h).
 *
 * Each endpoint has a table of the fields it accepts; anything else is rejected so a client
 * never believes an option took effect when it did not. JSON null counts as absent, as the
 * OpenAI API treats it. Numbers are range-checked here; token ids only for being non-negative
 * (the vocabulary size is known later). */
#include "server/oai_req.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/json_nul.h"

static int fail(oai_request *r, qv_error *err, int code, const char *param, const char *fmt,
                const char *detail) {
  snprintf(r->err_param, sizeof r->err_param, "%s", param ? param : "");
  char msg[400];
  snprintf(msg, sizeof msg, fmt, param ? param : "", detail ? detail : "");
  return qv_error_set(err, code, "%s", msg);
}

#define BAD(param, what) fail(r, err, QV_EINVAL, param, "'%s' " what "%s", NULL)

static const cJSON *get(const cJSON *o, const char *k) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
  return v && !cJSON_IsNull(v) ? v : NULL;
}

/* Integral number check (JSON has one number type; 1.5 is not a token count). */
static int is_int(const cJSON *v) {
  if (!cJSON_IsNumber(v)) return 0;
  double d = v->valuedouble;
  return isfinite(d) && d == floor(d) && fabs(d) <= 9007199254740992.0;
}

static int get_bool(oai_request *r, const cJSON *o, const char *k, int *out, qv_error *err) {
  const cJSON *v = get(o, k);
  if (!v) return 0;
  if (!cJSON_IsBool(v)) return BAD(k, "must be a boolean");
  *out = cJSON_IsTrue(v);
  return 0;
}

static int get_float(oai_request *r, const cJSON *o, const char *k, double lo, double hi,
                     float *out, qv_error *err) {
  const cJSON *v = get(o, k);
  if (!v) return 0;
  if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) return BAD(k, "must be a number");
  if (v->valuedouble < lo || v->valuedouble > hi) {
    char d[96];
    snprintf(d, sizeof d, " (got %g, allowed %g to %g)", v->valuedouble, lo, hi);
    return fail(r, err, QV_EINVAL, k, "'%s' is out of range%s", d);
  }
  *out = (float)v->valuedouble;
  return 0;
}

static int get_int(oai_request *r, const cJSON *o, const char *k, int64_t lo, int64_t hi,
                   int32_t *out, qv_error *err) {
  const cJSON *v = get(o, k);
  if (!v) return 0;
  if (!is_int(v)) return BAD(k, "must be an integer");
  if (v->valuedouble < (double)lo || v->valuedouble > (double)hi) {
    char d[96];
    snprintf(d, sizeof d, " (got %.0f, allowed %lld to %lld)", v->valuedouble, (long long)lo,
             (long long)hi);
    return fail(r, err, QV_EINVAL, k, "'%s' is out of range%s", d);
  }
  *out = (int32_t)v->valuedouble;
  return 1;
}

/* Token id arrays: [int, ...] with every id in [0, 2^31). */
static int parse_ids(oai_request *r, const cJSON *arr, const char *k, int32_t **ids, int32_t *n,
                     qv_error *err) {
  int cnt = cJSON_GetArraySize(arr);
  *ids = malloc(sizeof **ids * (size_t)(cnt ? cnt : 1));
  if (!*ids) return qv_error_set(err, QV_ENOMEM, "out of memory");
  *n = 0;
  const cJSON *it;
  cJSON_ArrayForEach(it, arr) {
    if (!is_int(it) || it->valuedouble < 0 || it->valuedouble > 2147483647.0)
      return BAD(k, "must hold non-negative integer token ids");
    (*ids)[(*n)++] = (int32_t)it->valuedouble;
  }
  return 0;
}

static int in_list(const char *name, const char *const *list) {
  for (const char *const *a = list; *a; a++)
    if (!strcmp(*a, name)) return 1;
  return 0;
}

/* Fields of OpenAI's or vLLM's APIs that would change the output if they took effect, which
 * quiver does not implement: always a 400 naming them, never silently ignored. */
static const char *const refused_fields[] = {
    "prediction", "audio", "modalities", "functions", "function_call", "web_search_options",
    "verbosity", "logits_processors", "allowed_token_ids", "bad_words", "truncate_prompt_tokens",
    "prompt_logprobs", "use_beam_search", "length_penalty", "return_tokens_as_token_ids",
    "continue_final_message", "documents", "chat_template", "mm_processor_kwargs", "echo",
    "best_of", "suffix", NULL};

/* strict: every field must be in allowed. Otherwise (completions, chat) refused_fields are
 * errors and any other unknown field is ignored and remembered in r->ignored. */
static int check_fields(oai_request *r, const cJSON *root, const char *const *allowed,
                        int strict, qv_error *err) {
  const cJSON *it;
  cJSON_ArrayForEach(it, root) {
    if (in_list(it->string, allowed)) continue;
    if (strict || in_list(it->string, refused_fields))
      return fail(r, err, QV_EUNSUPPORTED, it->string,
                  "unsupported field '%s': quiver does not implement it%s", NULL);
    if (r->n_ignored < OAI_MAX_IGNORED) r->ignored[r->n_ignored++] = it->string;
  }
  return 0;
}

static const char *const completion_fields[] = {
    "model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "min_p", "n", "stream",
    "stream_options", "logprobs", "echo", "stop", "stop_token_ids", "presence_penalty",
    "frequency_penalty", "repetition_penalty", "logit_bias", "user", "seed", "ignore_eos",
    "min_tokens", "skip_special_tokens", "include_stop_str_in_output", "best_of", "suffix",
    "priority", "response_format", "guided_json", "guided_regex", "guided_choice",
    "guided_grammar", "guided_decoding_backend", "guided_whitespace_pattern",
    "structured_outputs", NULL};

static const char *const chat_fields[] = {
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k",
    "min_p", "n", "stream", "stream_options", "logprobs", "top_logprobs", "stop",
    "stop_token_ids", "presence_penalty", "frequency_penalty", "repetition_penalty",
    "logit_bias", "user", "seed", "ignore_eos", "min_tokens", "skip_special_tokens",
    "include_stop_str_in_output", "tools", "tool_choice", "parallel_tool_calls",
    "response_format", "add_generation_prompt", "chat_template_kwargs", "priority",
    "guided_json", "guided_regex", "guided_choice", "guided_grammar", "guided_decoding_backend",
    "guided_whitespace_pattern", "structured_outputs", "reasoning_effort", "store", "metadata",
    "service_tier", "prompt_cache_key", "safety_identifier", NULL};

static const char *const tokenize_fields[] = {"model",       "prompt", "messages",
                                              "add_special_tokens", "add_generation_prompt",
                                              "tools",       "chat_template_kwargs", NULL};

static const char *const detokenize_fields[] = {"model", "tokens", NULL};

/* ---- messages ---- */

static int valid_role(const char *role) {
  static const char *const roles[] = {"system", "developer", "user", "assistant", "tool", NULL};
  for (const char *const *x = roles; *x; x++)
    if (!strcmp(role, *x)) return 1;
  return 0;
}

/* Joins an array of content parts [{type:"text", text}] into one string. */
static int join_parts(oai_request *r, const cJSON *parts, char **out, qv_error *err) {
  size_t len = 0;
  const cJSON *p;
  cJSON_ArrayForEach(p, parts) {
    const cJSON *type = get(p, "type");
    if (!cJSON_IsObject(p) || !cJSON_IsString(type))
      return BAD("messages", "content parts must be objects with a 'type'");
    if (strcmp(type->valuestring, "text"))
      return fail(r, err, QV_EUNSUPPORTED, "messages",
                  "'%s': content part type '%s' is not supported (text only)",
                  type->valuestring);
    const cJSON *t = get(p, "text");
    if (!cJSON_IsString(t)) return BAD("messages", "text parts need a string 'text'");
    len += strlen(t->valuestring);
  }
  char *s = malloc(len + 1);
  if (!s) return qv_error_set(err, QV_ENOMEM, "out of memory");
  size_t o = 0;
  cJSON_ArrayForEach(p, parts) {
    const char *t = get(p, "text")->valuestring;
    size_t l = strlen(t);
    memcpy(s + o, t, l);
    o += l;
  }
  s[o] = '\0';
  *out = s;
  return 0;
}

static int parse_messages(oai_request *r, const cJSON *msgs, qv_error *err) {
  if (!cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) == 0)
    return BAD("messages", "must be a non-empty array");
  r->messages = cJSON_CreateArray();
  if (!r->messages) return qv_error_set(err, QV_ENOMEM, "out of memory");
  const cJSON *m;
  cJSON_ArrayForEach(m, msgs) {
    if (!cJSON_IsObject(m)) return BAD("messages", "must hold objects");
    const cJSON *role = get(m, "role");
    if (!cJSON_IsString(role) || !valid_role(role->valuestring))
      return BAD("messages", "needs a role of system, developer, user, assistant or tool");
    cJSON *nm = cJSON_Duplicate(m, 1);
    if (!nm) return qv_error_set(err, QV_ENOMEM, "out of memory");
    cJSON_AddItemToArray(r->messages, nm);
    const cJSON *content = get(m, "content");
    const cJSON *tool_calls = get(m, "tool_calls");
    if (!content) {
      if (strcmp(role->valuestring, "assistant") || !tool_calls)
        return BAD("messages", "needs 'content' (only assistant tool-call messages may omit it)");
      cJSON_DeleteItemFromObjectCaseSensitive(nm, "content");
      cJSON_AddStringToObject(nm, "content", "");
    } else if (cJSON_IsArray(content)) {
      char *joined = NULL;
      int rc = join_parts(r, content, &joined, err);
      if (rc) return rc;
      cJSON_ReplaceItemInObjectCaseSensitive(nm, "content", cJSON_CreateString(joined));
      free(joined);
    } else if (!cJSON_IsString(content)) {
      return BAD("messages", "content must be a string or an array of text parts");
    }
    if (tool_calls && !cJSON_IsArray(tool_calls))
      return BAD("messages", "tool_calls must be an array");
  }
  return 0;
}

/* ---- prompts ---- */

static int parse_prompt(oai_request *r, const cJSON *p, qv_error *err) {
  if (!p) return BAD("prompt", "is required");
  int cnt;
  if (cJSON_IsString(p)) cnt = 1;
  else if (cJSON_IsArray(p)) {
    cnt = cJSON_GetArraySize(p);
    if (cnt == 0) return BAD("prompt", "must not be empty");
    /* An array of ints is one tokenized prompt. */
    if (cJSON_IsNumber(p->child)) cnt = 1;
  } else {
    return BAD("prompt", "must be a string, an array of strings, or token ids");
  }
  if (cnt > OAI_MAX_PROMPTS) return BAD("prompt", "holds too many prompts (at most 64)");
  r->prompts = calloc((size_t)cnt, sizeof *r->prompts);
  if (!r->prompts) return qv_error_set(err, QV_ENOMEM, "out of memory");
  r->n_prompts = cnt;
  if (cJSON_IsString(p)) {
    r->prompts[0].text = p->valuestring;
    r->prompts[0].text_len = strlen(p->valuestring);
  } else if (cJSON_IsNumber(p->child)) {
    int rc = parse_ids(r, p, "prompt", &r->prompts[0].ids, &r->prompts[0].n_ids, err);
    if (rc) return rc;
  } else {
    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, p) {
      if (cJSON_IsString(it)) {
        r->prompts[i].text = it->valuestring;
        r->prompts[i].text_len = strlen(it->valuestring);
      } else if (cJSON_IsArray(it) && cJSON_GetArraySize(it) > 0) {
        int rc = parse_ids(r, it, "prompt", &r->prompts[i].ids, &r->prompts[i].n_ids, err);
        if (rc) return rc;
      } else {
        return BAD("prompt", "items must be strings or non-empty token id arrays");
      }
      i++;
    }
  }
  for (int i = 0; i < r->n_prompts; i++)
    if (r->prompts[i].text && r->prompts[i].text_len == 0 && r->kind == OAI_COMPLETION)
      return BAD("prompt", "must not be an empty string");
  return 0;
}

/* ---- sampling and stop fields ---- */

static int parse_stop(oai_request *r, const cJSON *root, qv_error *err) {
  const cJSON *s = get(root, "stop");
  if (s) {
    int cnt = cJSON_IsString(s) ? 1 : cJSON_IsArray(s) ? cJSON_GetArraySize(s) : -1;
    if (cnt < 0) return BAD("stop", "must be a string or an array of strings");
    if (cnt > OAI_MAX_STOP) return BAD("stop", "holds too many strings (at most 16)");
    r->stop = calloc((size_t)(cnt ? cnt : 1), sizeof *r->stop);
    if (!r->stop) return qv_error_set(err, QV_ENOMEM, "out of memory");
    const cJSON *it;
    if (cJSON_IsString(s)) {
      r->stop[0] = strdup(s->valuestring);
      r->n_stop = 1;
    } else {
      cJSON_ArrayForEach(it, s) {
        if (!cJSON_IsString(it)) return BAD("stop", "must hold strings only");
        r->stop[r->n_stop++] = strdup(it->valuestring);
      }
    }
    for (int i = 0; i < r->n_stop; i++) {
      if (!r->stop[i]) return qv_error_set(err, QV_ENOMEM, "out of memory");
      if (!r->stop[i][0]) return BAD("stop", "must not contain empty strings");
      /* the engine matches stop strings as C strings */
      if (jnul_has(r->stop[i], strlen(r->stop[i])))
        return BAD("stop", "must not contain NUL characters (\\u0000)");
    }
  }
  const cJSON *st = get(root, "stop_token_ids");
  if (st) {
    if (!cJSON_IsArray(st)) return BAD("stop_token_ids", "must be an array of token ids");
    int rc = parse_ids(r, st, "stop_token_ids", &r->stop_token_ids,
                       &r->params.n_stop_token_ids, err);
    if (rc) return rc;
  }
  return 0;
}

static int parse_logit_bias(oai_request *r, const cJSON *root, qv_error *err) {
  const cJSON *b = get(root, "logit_bias");
  if (!b) return 0;
  if (!cJSON_IsObject(b)) return BAD("logit_bias", "must be an object of token id to bias");
  int cnt = cJSON_GetArraySize(b);
  if (cnt > 4096) return BAD("logit_bias", "holds too many entries (at most 4096)");
  r->bias_ids = malloc(sizeof *r->bias_ids * (size_t)(cnt ? cnt : 1));
  r->bias_values = malloc(sizeof *r->bias_values * (size_t)(cnt ? cnt : 1));
  if (!r->bias_ids || !r->bias_values) return qv_error_set(err, QV_ENOMEM, "out of memory");
  const cJSON *it;
  cJSON_ArrayForEach(it, b) {
    /* Digits only: strtol alone would also take " 5" or "+5". */
    const char *k = it->string;
    size_t kl = strlen(k);
    int digits = kl > 0 && kl <= 10;
    for (size_t i = 0; digits && i < kl; i++) digits = k[i] >= '0' && k[i] <= '9';
    long id = digits ? strtol(k, NULL, 10) : -1;
    if (!digits || id < 0 || id > 2147483647L)
      return BAD("logit_bias", "keys must be non-negative token ids");
    if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble) || it->valuedouble < -100.0 ||
        it->valuedouble > 100.0)
      return BAD("logit_bias", "values must be numbers from -100 to 100");
    r->bias_ids[r->n_bias] = (int32_t)id;
    r->bias_values[r->n_bias] = (float)it->valuedouble;
    r->n_bias++;
  }
  return 0;
}

static int parse_sampling(oai_request *r, const cJSON *root, qv_error *err) {
  qv_sampling_params *sp = &r->params.sampling;
  int rc;
  if ((rc = get_float(r, root, "temperature", 0.0, 2.0, &sp->temperature, err))) return rc;
  if ((rc = get_float(r, root, "top_p", 0.0, 1.0, &sp->top_p, err))) return rc;
  if (get(root, "top_p") && sp->top_p <= 0.0f) return BAD("top_p", "must be above 0");
  if ((rc = get_int(r, root, "top_k", -1, 1 << 30, &sp->top_k, err)) < 0) return rc;
  if ((rc = get_float(r, root, "min_p", 0.0, 1.0, &sp->min_p, err))) return rc;
  if ((rc = get_float(r, root, "presence_penalty", -2.0, 2.0, &sp->presence_penalty, err)))
    return rc;
  if ((rc = get_float(r, root, "frequency_penalty", -2.0, 2.0, &sp->frequency_penalty, err)))
    return rc;
  if ((rc = get_float(r, root, "repetition_penalty", 0.01, 10.0, &sp->repetition_penalty, err)))
    return rc;
  const cJSON *seed = get(root, "seed");
  if (seed) {
    if (!is_int(seed)) return BAD("seed", "must be an integer");
    sp->has_seed = 1;
    sp->seed = (uint64_t)(int64_t)seed->valuedouble;
  }
  return parse_logit_bias(r, root, err);
}

/* A model name is looked up and echoed in headers: a NUL character is refused. */
static int parse_model(oai_request *r, const cJSON *root, qv_error *err) {
  const cJSON *model = get(root, "model");
  if (!model) return 0;
  if (!cJSON_IsString(model) || !model->valuestring[0])
    return BAD("model", "must be a non-empty string");
  if (jnul_has(model->valuestring, strlen(model->valuestring)))
    return BAD("model", "must not contain NUL characters (\\u0000)");
  r->model = model->valuestring;
  return 0;
}

static int parse_common(oai_request *r, const cJSON *root, qv_error *err) {
  int rc;
  if ((rc = parse_model(r, root, err))) return rc;
  if ((rc = parse_sampling(r, root, err))) return rc;
  if ((rc = parse_stop(r, root, err))) return rc;
  int32_t n = 1;
  if ((rc = get_int(r, root, "n", 1, OAI_MAX_N, &n, err)) < 0) return rc;
  r->params.n = n;
  const char *mt = r->kind == OAI_CHAT && get(root, "max_completion_tokens")
                       ? "max_completion_tokens"
                       : "max_tokens";
  if ((rc = get_int(r, root, mt, 1, 1 << 30, &r->params.max_tokens, err)) < 0) return rc;
  r->max_tokens_given = rc == 1;
  if ((rc = get_int(r, root, "min_tokens", 0, 1 << 30, &r->params.min_tokens, err)) < 0)
    return rc;
  if (r->max_tokens_given && r->params.min_tokens > r->params.max_tokens)
    return BAD("min_tokens", "must not exceed max_tokens");
  if ((rc = get_int(r, root, "priority", -1000000, 1000000, &r->params.priority, err)) < 0)
    return rc;
  if ((rc = get_bool(r, root, "ignore_eos", &r->params.ignore_eos, err))) return rc;
  if ((rc = get_bool(r, root, "skip_special_tokens", &r->params.skip_special_tokens, err)))
    return rc;
  if ((rc = get_bool(r, root, "include_stop_str_in_output", &r->params.include_stop_str, err)))
    return rc;
  if ((rc = get_bool(r, root, "stream", &r->stream, err))) return rc;
  const cJSON *so = get(root, "stream_options");
  if (so) {
    if (!r->stream) return BAD("stream_options", "is only allowed when stream is true");
    if (!cJSON_IsObject(so)) return BAD("stream_options", "must be an object");
    const cJSON *it;
    cJSON_ArrayForEach(it, so) {
      if (strcmp(it->string, "include_usage") && strcmp(it->string, "continuous_usage_stats") &&
          strcmp(it->string, "include_obfuscation"))
        return fail(r, err, QV_EUNSUPPORTED, "stream_options",
                    "'%s.%s' is not supported", it->string);
    }
    if ((rc = get_bool(r, so, "include_usage", &r->include_usage, err))) return rc;
    if ((rc = get_bool(r, so, "continuous_usage_stats", &r->continuous_usage, err))) return rc;
    int obfuscation = 0; /* OpenAI's padding of stream events; quiver never pads */
    if ((rc = get_bool(r, so, "include_obfuscation", &obfuscation, err))) return rc;
  }
  const cJSON *user = get(root, "user");
  if (user) {
    if (!cJSON_IsString(user)) return BAD("user", "must be a string");
    r->user = user->valuestring;
  }
  return 0;
}

static int parse_completion(oai_request *r, const cJSON *root, qv_error *err) {
  int rc;
  if ((rc = parse_prompt(r, get(root, "prompt"), err))) return rc;
  if ((rc = parse_common(r, root, err))) return rc;
  int32_t lp = -1;
  if ((rc = get_int(r, root, "logprobs", 0, OAI_MAX_TOP_LOGPROBS, &lp, err)) < 0) return rc;
  if (lp >= 0) {
    r->want_logprobs = 1;
    r->params.sampling.logprobs = 1;
    r->params.sampling.top_logprobs = lp;
  }
  /* OpenAI's completions default; chat's default is whatever the context leaves (-1). */
  if (!r->max_tokens_given) r->params.max_tokens = 16;
  if ((rc = get_bool(r, root, "echo", &r->echo, err))) return rc;
  /* OpenAI's echo with logprobs also scores the prompt tokens, which the engine does not. */
  if (r->echo && r->want_logprobs)
    return fail(r, err, QV_EUNSUPPORTED, "echo",
                "'%s' together with logprobs is not supported (no prompt logprobs)%s", NULL);
  int32_t best_of = r->params.n;
  if ((rc = get_int(r, root, "best_of", 1, OAI_MAX_N, &best_of, err)) < 0) return rc;
  if ((rc = oai_parse_constraint(r, root, err))) return rc;
  if (best_of != r->params.n)
    return fail(r, err, QV_EUNSUPPORTED, "best_of",
                "'%s' different from n is not supported%s", NULL);
  const cJSON *suffix = get(root, "suffix");
  if (suffix && (!cJSON_IsString(suffix) || suffix->valuestring[0]))
    return fail(r, err, QV_EUNSUPPORTED, "suffix", "'%s' is not supported%s", NULL);
  return 0;
}

static int parse_tools(oai_request *r, const cJSON *root, qv_error *err) {
  const cJSON *tools = get(root, "tools");
  if (tools) {
    if (!cJSON_IsArray(tools)) return BAD("tools", "must be an array");
    const cJSON *t;
    cJSON_ArrayForEach(t, tools) {
      const cJSON *type = get(t, "type");
      const cJSON *fn = get(t, "function");
      if (!cJSON_IsObject(t) || !cJSON_IsString(type) || strcmp(type->valuestring, "function") ||
          !cJSON_IsObject(fn) || !cJSON_IsString(get(fn, "name")))
        return BAD("tools", "items must be {\"type\": \"function\", \"function\": {\"name\": ...}}");
    }
    if (cJSON_GetArraySize(tools) > 0) r->tools = tools;
  }
  const cJSON *tc = get(root, "tool_choice");
  if (tc) {
    if (cJSON_IsString(tc)) {
      if (strcmp(tc->valuestring, "none") && strcmp(tc->valuestring, "auto") &&
          strcmp(tc->valuestring, "required"))
        return BAD("tool_choice", "must be none, auto, required or a function object");
    } else if (!cJSON_IsObject(tc)) {
      return BAD("tool_choice", "must be none, auto, required or a function object");
    }
    r->tool_choice = tc;
  }
  const cJSON *kw = get(root, "chat_template_kwargs");
  if (kw) {
    if (!cJSON_IsObject(kw)) return BAD("chat_template_kwargs", "must be an object");
    r->template_kwargs = kw;
  }
  return get_bool(r, root, "parallel_tool_calls", &r->parallel_tool_calls, err);
}

/* Fields that change nothing quiver computes: type-checked, then ignored. reasoning_effort is
 * passed to the chat template (gpt-oss and others read it) through chat_template_kwargs, where
 * an explicit kwarg of the same name wins. */
static int parse_metadata(oai_request *r, const cJSON *root, qv_error *err) {
  int store = 0, rc;
  if ((rc = get_bool(r, root, "store", &store, err))) return rc;
  const cJSON *md = get(root, "metadata");
  if (md && !cJSON_IsObject(md)) return BAD("metadata", "must be an object");
  static const char *const strs[] = {"service_tier", "prompt_cache_key", "safety_identifier",
                                     "reasoning_effort", NULL};
  for (const char *const *k = strs; *k; k++) {
    const cJSON *v = get(root, *k);
    if (v && !cJSON_IsString(v)) return BAD(*k, "must be a string");
  }
  const cJSON *effort = get(root, "reasoning_effort");
  if (!effort || cJSON_GetObjectItemCaseSensitive(r->template_kwargs, "reasoning_effort"))
    return 0;
  r->kwargs_owned = r->template_kwargs ? cJSON_Duplicate(r->template_kwargs, 1)
                                       : cJSON_CreateObject();
  if (!r->kwargs_owned ||
      !cJSON_AddStringToObject(r->kwargs_owned, "reasoning_effort", effort->valuestring))
    return qv_error_set(err, QV_ENOMEM, "out of memory");
  r->template_kwargs = r->kwargs_owned;
  return 0;
}

static int parse_chat(oai_request *r, const cJSON *root, qv_error *err) {
  int rc;
  if ((rc = parse_messages(r, get(root, "messages"), err))) return rc;
  if ((rc = parse_common(r, root, err))) return rc;
  if ((rc = parse_tools(r, root, err))) return rc;
  if ((rc = parse_metadata(r, root, err))) return rc;
  if ((rc = get_bool(r, root, "logprobs", &r->want_logprobs, err))) return rc;
  int32_t top = 0;
  if ((rc = get_int(r, root, "top_logprobs", 0, OAI_MAX_TOP_LOGPROBS, &top, err)) < 0) return rc;
  if (rc == 1 && !r->want_logprobs) return BAD("top_logprobs", "requires logprobs to be true");
  r->params.sampling.logprobs = r->want_logprobs;
  r->params.sampling.top_logprobs = r->want_logprobs ? top : 0;
  if ((rc = get_bool(r, root, "add_generation_prompt", &r->add_generation_prompt, err)))
    return rc;
  return oai_parse_constraint(r, root, err);
}

static int parse_tokenize(oai_request *r, const cJSON *root, qv_error *err) {
  int rc;
  if ((rc = parse_model(r, root, err))) return rc;
  const cJSON *msgs = get(root, "messages");
  const cJSON *prompt = get(root, "prompt");
  if (!!msgs == !!prompt) return BAD("prompt", "or 'messages' is required (exactly one)");
  if (prompt) {
    if (!cJSON_IsString(prompt)) return BAD("prompt", "must be a string");
    if ((rc = parse_prompt(r, prompt, err))) return rc;
  } else {
    r->add_special_tokens = 0;
    if ((rc = parse_messages(r, msgs, err))) return rc;
    if ((rc = parse_tools(r, root, err))) return rc;
  }
  if ((rc = get_bool(r, root, "add_special_tokens", &r->add_special_tokens, err))) return rc;
  return get_bool(r, root, "add_generation_prompt", &r->add_generation_prompt, err);
}

static int parse_detokenize(oai_request *r, const cJSON *root, qv_error *err) {
  int rc;
  if ((rc = parse_model(r, root, err))) return rc;
  const cJSON *toks = get(root, "tokens");
  if (!cJSON_IsArray(toks)) return BAD("tokens", "must be an array of token ids");
  return parse_ids(r, toks, "tokens", &r->detok_ids, &r->n_detok_ids, err);
}

/* The engine's documented defaults (engine.h), with OpenAI's temperature of 1. Set here rather
 * than through qv_request_params_default so this parser stays usable without the engine. */
static void params_default(qv_request_params *p) {
  memset(p, 0, sizeof *p);
  p->sampling.temperature = 1.0f;
  p->sampling.top_p = 1.0f;
  p->sampling.repetition_penalty = 1.0f;
  p->max_tokens = -1;
  p->n = 1;
  p->skip_special_tokens = 1;
  p->detokenize = 1;
}

/* Valid UTF-8 throughout (RFC 8259 JSON text); overlongs and surrogates are invalid. */
static int utf8_valid(const unsigned char *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    unsigned char b = s[i];
    if (b < 0x80) {
      i++;
      continue;
    }
    size_t len;
    unsigned lo = 0x80, hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) len = 2;
    else if (b >= 0xE0 && b <= 0xEF) {
      len = 3;
      if (b == 0xE0) lo = 0xA0;
      if (b == 0xED) hi = 0x9F;
    } else if (b >= 0xF0 && b <= 0xF4) {
      len = 4;
      if (b == 0xF0) lo = 0x90;
      if (b == 0xF4) hi = 0x8F;
    } else {
      return 0;
    }
    if (n - i < len || s[i + 1] < lo || s[i + 1] > hi) return 0;
    for (size_t k = 2; k < len; k++)
      if (s[i + k] < 0x80 || s[i + k] > 0xBF) return 0;
    i += len;
  }
  return 1;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The first key that appears twice in some object of the tree, or NULL (n log n per object). */
static const char *duplicate_key(const cJSON *v) {
  if (!cJSON_IsObject(v) && !cJSON_IsArray(v)) return NULL;
  int n = 0;
  const cJSON *it;
  cJSON_ArrayForEach(it, v) {
    const char *d = duplicate_key(it);
    if (d) return d;
    n++;
  }
  if (!cJSON_IsObject(v) || n < 2) return NULL;
  const char **keys = malloc(sizeof *keys * (size_t)n);
  if (!keys) return NULL;
  int k = 0;
  cJSON_ArrayForEach(it, v) keys[k++] = it->string;
  qsort(keys, (size_t)n, sizeof *keys, cmp_str);
  const char *dup = NULL;
  for (int i = 1; i < n && !dup; i++)
    if (!strcmp(keys[i - 1], keys[i])) dup = keys[i];
  free(keys);
  return dup;
}

/* The first object key holding a NUL character (the marker), or NULL: keys are names, and
 * cJSON looks them up as C strings. */
static const char *nul_key(const cJSON *v) {
  const cJSON *it;
  cJSON_ArrayForEach(it, v) {
    if (it->string && jnul_has(it->string, strlen(it->string))) return it->string;
    const char *k = nul_key(it);
    if (k) return k;
  }
  return NULL;
}

int oai_json_parse_strict(const char *body, size_t len, cJSON **out, qv_error *err) {
  *out = NULL;
  if (!utf8_valid((const unsigned char *)body, len))
    return qv_error_set(err, QV_EFORMAT, "request body is not valid UTF-8");
  /* JSON strings hold control characters escaped only; a raw NUL byte is not JSON. */
  if (memchr(body, '\0', len))
    return qv_error_set(err, QV_EFORMAT,
                        "request body holds a raw NUL byte (write it as \\u0000 in a string)");
  /* \u0000 escapes become the NUL marker (json_nul.h), so text keeps its NULs. */
  char *unesc = NULL;
  size_t unesc_len = 0;
  if (jnul_unescape(body, len, &unesc, &unesc_len))
    return qv_error_set(err, QV_ENOMEM, "out of memory");
  if (unesc) {
    body = unesc;
    len = unesc_len;
  }
  /* Nothing but whitespace may follow the value (a second value or garbage is refused). */
  const char *end = NULL;
  cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
  for (const char *p = end; root && p && p < body + len; p++)
    if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
      cJSON_Delete(root);
      root = NULL;
    }
  free(unesc);
  if (!root)
    return qv_error_set(err, QV_EFORMAT,
                        "request body is not valid JSON (or has data after the JSON value)");
  const char *dup = duplicate_key(root);
  int rc = 0;
  if (dup) rc = qv_error_set(err, QV_EINVAL, "request body has a duplicate key '%.60s'", dup);
  else if (nul_key(root))
    rc = qv_error_set(err, QV_EINVAL, "object keys must not contain NUL characters (\\u0000)");
  if (rc) {
    cJSON_Delete(root);
    return rc;
  }
  *out = root;
  return 0;
}

int oai_request_parse(oai_kind kind, const char *body, size_t len, oai_request *r,
                      qv_error *err) {
  memset(r, 0, sizeof *r);
  cJSON *root = NULL;
  int rc = oai_json_parse_strict(body, len, &root, err);
  if (rc) return rc;
  return oai_request_parse_root(kind, root, r, err);
}

int oai_request_parse_root(oai_kind kind, cJSON *root, oai_request *r, qv_error *err) {
  memset(r, 0, sizeof *r);
  r->kind = kind;
  r->add_generation_prompt = 1;
  r->add_special_tokens = 1;
  r->parallel_tool_calls = 1;
  params_default(&r->params);
  r->root = root;
  const char *dup = duplicate_key(r->root);
  if (dup) {
    char d[80];
    snprintf(d, sizeof d, "%.60s", dup);
    return fail(r, err, QV_EINVAL, NULL, "request body has a duplicate key '%s%s'", d);
  }
  if (!cJSON_IsObject(r->root))
    return fail(r, err, QV_EFORMAT, NULL, "request body must be a JSON object%s%s", NULL);
  int rc;
  switch (kind) {
  case OAI_COMPLETION:
    if ((rc = check_fields(r, r->root, completion_fields, 0, err))) return rc;
    rc = parse_completion(r, r->root, err);
    break;
  case OAI_CHAT:
    if ((rc = check_fields(r, r->root, chat_fields, 0, err))) return rc;
    rc = parse_chat(r, r->root, err);
    break;
  case OAI_TOKENIZE:
    if ((rc = check_fields(r, r->root, tokenize_fields, 1, err))) return rc;
    rc = parse_tokenize(r, r->root, err);
    break;
  case OAI_DETOKENIZE:
    if ((rc = check_fields(r, r->root, detokenize_fields, 1, err))) return rc;
    rc = parse_detokenize(r, r->root, err);
    break;
  default:
    rc = qv_error_set(err, QV_EINVAL, "unknown request kind");
  }
  if (rc) return rc;
  r->params.stop = (const char *const *)r->stop;
  r->params.n_stop = r->n_stop;
  r->params.stop_token_ids = r->stop_token_ids;
  r->params.sampling.logit_bias_ids = r->bias_ids;
  r->params.sampling.logit_bias_values = r->bias_values;
  r->params.sampling.n_logit_bias = r->n_bias;
  return 0;
}

void oai_request_free(oai_request *r) {
  if (!r) return;
  for (int32_t i = 0; i < r->n_prompts; i++) free(r->prompts[i].ids);
  free(r->prompts);
  for (int32_t i = 0; i < r->n_stop; i++) free(r->stop[i]);
  /* n_stop counts only the successfully parsed entries; later ones were never allocated. */
  free(r->stop);
  free(r->stop_token_ids);
  free(r->bias_ids);
  free(r->bias_values);
  free(r->detok_ids);
  free(r->cst_text);
  free(r->cst_choices);
  cJSON_Delete(r->messages);
  cJSON_Delete(r->kwargs_owned);
  cJSON_Delete(r->root);
  memset(r, 0, sizeof *r);
}

int oai_chat_default_render(const cJSON *messages, int add_generation_prompt, char **out,
                            size_t *out_len, qv_error *err) {
  size_t cap = 64, len = 0;
  const cJSON *m;
  cJSON_ArrayForEach(m, messages) {
    const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
    if (!cJSON_IsString(role) || !cJSON_IsString(content))
      return qv_error_set(err, QV_EINVAL, "messages need string role and content");
    cap += strlen(role->valuestring) + strlen(content->valuestring) + 8;
  }
  char *s = malloc(cap);
  if (!s) return qv_error_set(err, QV_ENOMEM, "out of memory");
  cJSON_ArrayForEach(m, messages) {
    const char *role = cJSON_GetObjectItemCaseSensitive(m, "role")->valuestring;
    const char *content = cJSON_GetObjectItemCaseSensitive(m, "content")->valuestring;
    len += (size_t)snprintf(s + len, cap - len, "<|%s|>\n%s\n", role, content);
  }
  if (add_generation_prompt) len += (size_t)snprintf(s + len, cap - len, "<|assistant|>\n");
  *out = s;
  *out_len = len;
  return 0;
}
