/* OpenAI-compatible request bodies (completions, chat completions, tokenize, detokenize)
 * parsed and validated into engine request parameters.
 *
 * Pure functions over a JSON body: no model, engine or I/O is involved, so every rule is unit
 * tested on its own (tests/unit/test_openai.c). Validation is strict: a wrong type, a value
 * out of range, or a field quiver does not implement that would change the output is an error
 * naming the field (the HTTP layer answers 400). Fields that change nothing quiver computes
 * (metadata such as store, service_tier) are accepted; on completions and chat, a field nobody
 * knows is ignored and remembered in `ignored` (the server logs each name once), as vLLM does.
 * Checks that need the model (vocabulary size, context length) happen later, in server.c. */
#ifndef QV_SERVER_OAI_REQ_H
#define QV_SERVER_OAI_REQ_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

#include "quiver/constrain.h"
#include "quiver/engine.h"
#include "quiver/error.h"

typedef enum oai_kind {
  OAI_COMPLETION = 1,
  OAI_CHAT = 2,
  OAI_TOKENIZE = 3,
  OAI_DETOKENIZE = 4,
} oai_kind;

#define OAI_MAX_N 128         /* choices per request */
#define OAI_MAX_STOP 16       /* stop strings per request */
#define OAI_MAX_PROMPTS 64    /* prompts in one completions request */
#define OAI_MAX_TOP_LOGPROBS 20
#define OAI_MAX_IGNORED 16    /* unknown fields remembered per request (for a log line) */

/* One prompt of a completions request: text or token ids. */
typedef struct oai_prompt {
  const char *text;  /* borrowed from the request's JSON, or NULL when ids are given */
  size_t text_len;
  int32_t *ids;      /* [n_ids] owned by the request, or NULL for text */
  int32_t n_ids;
} oai_prompt;

typedef struct oai_request {
  oai_kind kind;
  cJSON *root;              /* owned: the parsed body */
  const char *model;        /* borrowed from root; NULL when absent (default model) */

  oai_prompt *prompts;      /* [n_prompts] completions and tokenize (prompt form) */
  int32_t n_prompts;
  cJSON *messages;          /* owned normalized copy: [{role, content(string), ...}] (chat,
                               tokenize with messages) */
  const cJSON *tools;       /* borrowed from root or NULL */
  const cJSON *tool_choice; /* borrowed from root or NULL */
  const cJSON *template_kwargs; /* chat_template_kwargs, borrowed or NULL */
  int add_generation_prompt;/* chat/tokenize: default 1 */
  int add_special_tokens;   /* tokenize: default 1 for prompts, 0 for messages */

  int32_t *detok_ids;       /* [n_detok_ids] detokenize, owned */
  int32_t n_detok_ids;

  qv_request_params params; /* its pointers refer to the owned arrays below */
  char **stop;              /* [n_stop] owned strings */
  int32_t n_stop;
  int32_t *stop_token_ids;  /* [n_stop_token_ids] owned */
  int32_t *bias_ids;        /* [n_bias] owned */
  float *bias_values;       /* [n_bias] owned */
  int32_t n_bias;
  int max_tokens_given;     /* 0: max_tokens defaults to what the context leaves */

  int echo;                 /* completions */
  int stream;
  int include_usage;        /* stream_options.include_usage */
  int continuous_usage;     /* stream_options.continuous_usage_stats: usage in every chunk */
  int parallel_tool_calls;  /* chat: default 1; 0 keeps only the first tool call */
  cJSON *kwargs_owned;      /* owned: chat_template_kwargs plus reasoning_effort, or NULL;
                               template_kwargs points here when set */
  const char *ignored[OAI_MAX_IGNORED]; /* borrowed from root: unknown fields ignored */
  int32_t n_ignored;
  int want_logprobs;        /* completions: logprobs given; chat: logprobs true */
  const char *user;         /* borrowed or NULL */
  /* Structured output (oai_cst.c): kind QV_CST_NONE when the request has none. Its strings
   * are borrowed from root or owned below. */
  qv_cst_spec cst;
  char cst_param[32];       /* the field that set it, for errors */
  char *cst_text;           /* owned: a schema object printed */
  const char **cst_choices; /* owned array of strings borrowed from root */
  char err_param[64];       /* on failure: the offending field ("" when none) */
} oai_request;

/* Parses and validates a request body of the given kind into out (initialised here; free it
 * with oai_request_free even on failure). QV_EFORMAT: not JSON / not an object; QV_EINVAL: bad
 * field; QV_EUNSUPPORTED: a field or value quiver does not implement. */
int oai_request_parse(oai_kind kind, const char *body, size_t len, oai_request *out,
                      qv_error *err);
/* Parses a request body as every endpoint must: valid UTF-8, no raw NUL byte, exactly one JSON
 * value with nothing but whitespace after it, no duplicate keys and no NUL character in any
 * object key. A \u0000 in a string value is kept as the NUL marker of json_nul.h (text may hold
 * NULs; model names and stop strings are refused later when they do). *root (the caller
 * frees it) on success; QV_EFORMAT / QV_EINVAL with err otherwise. */
int oai_json_parse_strict(const char *body, size_t len, cJSON **root, qv_error *err);
/* The same over an already parsed body: root is taken over (freed with out, even on
 * failure). The API dialects (dialect_anthropic.c, dialect_responses.c) translate their bodies
 * into a chat-completions body and parse it here, so every rule applies to all of them. */
int oai_request_parse_root(oai_kind kind, cJSON *root, oai_request *out, qv_error *err);
void oai_request_free(oai_request *r);
/* oai_cst.c: reads response_format, guided_* and structured_outputs into r->cst. */
int oai_parse_constraint(oai_request *r, const cJSON *root, qv_error *err);

/* The default chat format used when a model ships no chat template: each message becomes
 * "<|role|>\n<content>\n" (role one of system, user, assistant, tool, developer), and when
 * add_generation_prompt is set the prompt ends with "<|assistant|>\n". *out is malloc'd. */
int oai_chat_default_render(const cJSON *messages, int add_generation_prompt, char **out,
                            size_t *out_len, qv_error *err);

#endif
