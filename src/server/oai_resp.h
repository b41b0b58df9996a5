/* OpenAI-compatible response bodies: error objects, completion and chat completion responses,
 * streamed chunks as SSE events, usage, and logprobs in both endpoint shapes.
 *
 * Pure serialization over plain structs so the exact schema is unit tested without a model
 * (tests/unit/test_openai_resp.c). Every function returns a malloc'd NUL-terminated string the
 * caller frees, or NULL when out of memory. */
#ifndef QV_SERVER_OAI_RESP_H
#define QV_SERVER_OAI_RESP_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

#include "quiver/engine.h"
#include "server/oai_req.h"

/* {"error": {"message", "type", "param", "code"}}; type follows the status (400
 * invalid_request_error, 401 authentication_error, 404 not_found_error, 429 rate_limit_error,
 * 5xx server_error...). param and code may be NULL (JSON null). */
char *oai_error_json(int status, const char *message, const char *param, const char *code);

/* Logprobs accumulated for one choice, in the endpoint's shape:
 * completions {"tokens", "token_logprobs", "top_logprobs", "text_offset"};
 * chat {"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}. */
typedef struct oai_logprobs oai_logprobs;
oai_logprobs *oai_logprobs_create(oai_kind kind);
void oai_logprobs_destroy(oai_logprobs *lp);
/* Appends one position: the sampled token's text (tok, tok_len bytes), its logprob, and n_top
 * alternatives with their texts (top_strs[i], NUL-terminated). text_offset: completions only. */
int oai_logprobs_add(oai_logprobs *lp, const char *tok, size_t tok_len, float logprob,
                     const qv_top_logprob *top, const char *const *top_strs, int32_t n_top,
                     size_t text_offset);
/* Completions logprobs name tokens by strings (tokens[i] and the keys of the top_logprobs[i]
 * object), so distinct tokens need distinct names. oai_token_key: the token's text; or, when the
 * token's own bytes (raw[raw_len]) are not complete UTF-8 (a byte token holding part of a
 * character, whose text is U+FFFD), "bytes:" then \xNN (lowercase hex) for each byte. raw NULL:
 * the text. malloc'd; NULL when out of memory. */
char *oai_token_key(const char *text, const char *raw, size_t raw_len);
/* Makes the names of one position distinct. keys[0] and ids[0] are the sampled token's,
 * keys[1..n-1] and ids[1..n-1] its alternatives' (most likely first). In that order, an entry
 * whose id an earlier entry has takes that entry's key; a key that an earlier entry of another
 * token holds becomes "token_id:<id>". keys[i] are malloc'd and may be replaced. 0 or
 * QV_ENOMEM. */
int oai_distinct_keys(char **keys, const int32_t *ids, int32_t n);
/* The JSON value (borrowed, valid until the next add or destroy). */
const cJSON *oai_logprobs_json(const oai_logprobs *lp);
/* Moves the entries added so far out (for a stream chunk) and starts empty again. Caller
 * deletes the result with cJSON_Delete. */
cJSON *oai_logprobs_take(oai_logprobs *lp);

typedef struct oai_usage {
  int32_t prompt_tokens;
  int32_t completion_tokens;
  int32_t cached_tokens;
} oai_usage;

/* One finished choice of a non-streamed response. */
typedef struct oai_choice {
  const char *text;           /* [text_len] */
  size_t text_len;
  const char *finish_reason;  /* "stop", "length", ... */
  const char *stop_reason;    /* matched stop string or NULL */
  const cJSON *logprobs;      /* borrowed or NULL */
  const cJSON *tool_calls;    /* chat: borrowed array or NULL; content becomes null when the
                                 text is empty */
  int has_reasoning;          /* chat: add message.reasoning_content (null when reasoning is) */
  const char *reasoning;      /* NUL-terminated or NULL */
} oai_choice;

typedef struct oai_meta {
  oai_kind kind;              /* OAI_COMPLETION or OAI_CHAT */
  const char *id;             /* "cmpl-..." / "chatcmpl-..." */
  int64_t created;            /* unix seconds */
  const char *model;          /* the name the client asked for */
} oai_meta;

char *oai_response_json(const oai_meta *m, const oai_choice *choices, int32_t n_choices,
                        const oai_usage *usage);

/* One streamed chunk. Everything borrowed; zero/NULL fields are absent. */
typedef struct oai_chunk {
  int32_t index;
  int role_first;            /* chat: the first chunk of a choice: {"role":"assistant","content":""} */
  const char *text;          /* [text_len] delta */
  size_t text_len;
  const cJSON *tool_calls;   /* chat: delta.tool_calls (each with its "index") */
  const char *reasoning;     /* chat: [reasoning_len] delta.reasoning_content */
  size_t reasoning_len;
  const char *finish;        /* finish_reason or NULL */
  const char *stop_reason;
  const cJSON *logprobs;
  const oai_usage *usage;    /* non-NULL: the final usage-only chunk (choices []) */
  const oai_usage *live_usage; /* non-NULL: usage so far, added to this chunk
                                  (stream_options.continuous_usage_stats) */
} oai_chunk;

/* One SSE event "data: {chunk}\n\n". */
char *oai_chunk_sse(const oai_meta *m, const oai_chunk *c);

/* {"object":"list","data":[{"id","object":"model","created","owned_by":"quiver",
 * "root","max_model_len"}...]} over names[n] (roots[n] the model each name points to). */
char *oai_models_json(const char *const *names, const char *const *roots,
                      const int32_t *max_model_len, int32_t n, int64_t created);
char *oai_model_json(const char *name, const char *root, int32_t max_model_len, int64_t created);

#endif
