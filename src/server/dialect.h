/* API dialects: the request and response shapes of OpenAI's chat/completions, Anthropic's
 * Messages and OpenAI's Responses APIs over one internal request/event path.
 *
 * Every generation request, whatever its dialect, becomes one oai_request of kind OAI_CHAT (or
 * OAI_COMPLETION, or OAI_TOKENIZE for counting): a dialect's decoder translates its body into
 * a chat-completions body and oai_request_parse_root validates that, so sampling, stop,
 * tools, tool_choice and template rules exist once. server_gen.c renders the prompt, submits
 * it, and maps engine events to text / reasoning / tool-call deltas (reasoning parser first,
 * then the tool-call parser) in one place; the dialect only encodes those deltas and the
 * finished choices in its own wire format. A dialect is this vtable plus its own state. */
#ifndef QV_SERVER_DIALECT_H
#define QV_SERVER_DIALECT_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

#include "server/oai_resp.h"

struct srv_req;

/* One streamed delta of one choice, already split by the shared path. Everything borrowed;
 * empty fields are zero. */
typedef struct srv_delta {
  const char *text;          /* [text_len] content */
  size_t text_len;
  const char *reasoning;     /* [reasoning_len] reasoning (models with a reasoning parser) */
  size_t reasoning_len;
  const cJSON *tool_calls;   /* completed calls [{index, id, type, function: {name,
                                arguments}}] or NULL */
  const cJSON *logprobs;     /* chat/completions logprobs entries or NULL */
} srv_delta;

typedef struct srv_dialect {
  const char *name;          /* "openai", "anthropic", "responses" */
  /* Thread pool: translates body[len] into r->o (oai_request_parse_root on a chat body of
   * kind r->kind), keeping what the encoder needs in r->dstate. On failure set r->o.err_param
   * and r->work_err and return a QV_E* code (400; 404 with fail_status for an unknown stored
   * response). NULL: body is parsed as an OpenAI body of kind r->kind. */
  int (*decode)(struct srv_req *r, const char *body, size_t len);
  /* An error body in this dialect (malloc'd). param/code may be NULL. */
  char *(*error_json)(int status, const char *message, const char *param, const char *code);
  /* Streaming, loop thread; each writes with srv_stream_send. */
  void (*stream_begin)(struct srv_req *r);                 /* after submission */
  void (*stream_delta)(struct srv_req *r, int32_t ci, const srv_delta *d);
  void (*stream_finish)(struct srv_req *r, int32_t ci);    /* choice ci ended (finish set) */
  void (*stream_error)(struct srv_req *r, int32_t ci, const char *message);
  void (*stream_end)(struct srv_req *r);                   /* every choice ended */
  /* Non-streamed: the whole response body (malloc'd) from the finished choices. */
  char *(*response_json)(struct srv_req *r, const oai_choice *choices, int32_t n);
  /* OAI_TOKENIZE requests of this dialect: the answer body (malloc'd). NULL: /tokenize's. */
  char *(*count_json)(struct srv_req *r);
  /* The id prefix ("chatcmpl-", "msg_", ...) of r. */
  const char *(*id_prefix)(const struct srv_req *r);
  void (*state_free)(void *dstate);                        /* NULL: nothing to free */
} srv_dialect;

/* Helpers shared by the dialects (dialect.c). */

/* "event: NAME\ndata: JSON\n\n" (event line left out when name is NULL); takes obj. NULL when
 * out of memory. */
char *dialect_sse(const char *event, cJSON *obj);
/* Records a decoding failure on r (param named in r->o.err_param) and returns code. */
int dialect_fail(struct srv_req *r, int code, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Joins the text of content blocks [{type: text_type, text}] (or takes a string) into a
 * malloc'd string; any other block type is an error naming it. NULL + *err_block on failure
 * (err_block the offending type, or "" for a malformed block). */
char *dialect_join_text(const cJSON *content, const char *const *text_types,
                        const char **err_block);
/* {"id": id (left out when NULL), "type": "function", "function": {}} in OpenAI's key order
 * (templates print tools with tojson, so the order reaches the prompt); *fn is the inner
 * object. NULL when out of memory. */
cJSON *dialect_fn_object(const char *id, cJSON **fn);
/* Appends {"role": role, "content": content} to the chat messages array msgs. 0 or
 * QV_ENOMEM. */
int dialect_add_msg(cJSON *msgs, const char *role, const char *content);
/* Appends n bytes to a growing NUL-terminated buffer. */
int dialect_append(char **buf, size_t *len, size_t *cap, const char *t, size_t n);

extern const srv_dialect srv_dialect_openai;     /* dialect_openai.c */
extern const srv_dialect srv_dialect_anthropic;  /* dialect_anthropic.c */
extern const srv_dialect srv_dialect_responses;  /* dialect_responses.c */

#endif
