/* quiver chat: the API the HTTP server uses to turn chat messages into a prompt and the model's
 * output back into OpenAI message fields.
 *
 * Three independent parts:
 *   1. Chat templates: a Jinja-compatible engine that renders the templates models ship
 *      (tokenizer_config.json "chat_template", chat_template.jinja, a string) byte for byte as
 *      Python's jinja2 does under Hugging Face transformers' conventions (trim_blocks,
 *      lstrip_blocks, raise_exception, strftime_now, tojson keeping non-ASCII).
 *   2. Tool-call parsing: generated text -> content + tool calls, for the Hermes/Qwen,
 *      Llama 3.x and Mistral formats, in one shot or streamed (complete calls only).
 *   3. Reasoning parsing: `<think>...</think>` -> reasoning_content + content, batch or streamed.
 *
 * Errors follow include/quiver/error.h: 0 or a negative QV_E* code plus a message in err.
 * Syntax errors at load are QV_EFORMAT with "line L, column C"; runtime template errors
 * (raise_exception, type errors, undefined calls) are QV_ETEMPLATE with the template's own
 * message; exceeded limits are QV_ELIMIT. Every object here is used by one thread at a time; a
 * loaded qv_chat_template is immutable and may be rendered from several threads at once. */
#ifndef QV_CHAT_CHAT_H
#define QV_CHAT_CHAT_H

#include <stdbool.h>
#include <stddef.h>

#include <cjson/cJSON.h>

#include "quiver/error.h"

/* ---------------------------------------------------------------------------------------------
 * Chat templates
 * ------------------------------------------------------------------------------------------- */

typedef struct qv_chat_template qv_chat_template;

/* Bounds applied while rendering; 0 in a field means the default in parentheses. */
typedef struct qv_chat_limits {
  int max_depth;            /* nesting of statements, macro calls and expressions (500); a render
                             * needs about 1 MiB of stack at the default */
  long max_loop_iters;      /* total loop iterations per render (1,000,000) */
  size_t max_output_bytes;  /* rendered size (16 MiB) */
} qv_chat_limits;

/* Loads a template from a path that is a .jinja (or any text) file, a tokenizer_config.json
 * (its "chat_template" a string or a list of {"name","template"}), or a model directory
 * (chat_template.jinja, else tokenizer_config.json). Parses every template found; a syntax error
 * returns QV_EFORMAT with the line and column. On success *out is owned by the caller (free with
 * qv_chat_template_destroy). */
int qv_chat_template_load_path(const char *path, qv_chat_template **out, qv_error *err);

/* Loads a template from its source text (borrowed, copied). name is used in messages (may be
 * NULL). */
int qv_chat_template_load_string(const char *src, const char *name, qv_chat_template **out,
                                 qv_error *err);

/* Loads from the "chat_template" value of a parsed tokenizer_config.json (borrowed). Also keeps
 * bos_token / eos_token strings of that config when present (see qv_chat_template_bos). */
int qv_chat_template_load_config(const cJSON *tokenizer_config, qv_chat_template **out,
                                 qv_error *err);

/* Frees a template; accepts NULL. */
void qv_chat_template_destroy(qv_chat_template *t);

/* Sets render limits (copied). Not thread-safe against concurrent renders of t. */
void qv_chat_template_set_limits(qv_chat_template *t, const qv_chat_limits *limits);

/* The source of the template that a render with (has_tools) would use: "tool_use" when has_tools
 * and the config named one, else "default" (or the only one). Valid until destroy. */
const char *qv_chat_template_source(const qv_chat_template *t, bool has_tools);

/* bos_token / eos_token strings found in a tokenizer_config.json, or NULL. Valid until destroy. */
const char *qv_chat_template_bos(const qv_chat_template *t);
const char *qv_chat_template_eos(const qv_chat_template *t);

/* Renders with vars (borrowed), a JSON object holding messages, tools, add_generation_prompt,
 * bos_token, eos_token and any extra keyword arguments (e.g. enable_thinking from the request's
 * chat_template_kwargs). Missing keys are jinja2 Undefined. Picks the "tool_use" template when
 * vars.tools is a non-empty array and one exists. On success *out is a NUL-terminated malloc'd
 * string owned by the caller and *out_len (may be NULL) its length. */
int qv_chat_template_render(const qv_chat_template *t, const cJSON *vars, char **out,
                            size_t *out_len, qv_error *err);

/* Builds the template variables for an OpenAI-style chat request (borrowed): messages (an
 * array content of {"type":"text"} parts is joined with "\n"; assistant tool_calls whose
 * "arguments" is a JSON string get it parsed into an object, as templates expect), tools,
 * add_generation_prompt (the request's, default true), bos_token / eos_token (from t when known,
 * else ""), then every key of the request's chat_template_kwargs object (which cannot replace
 * messages or tools). *out is a new cJSON object owned by the caller (cJSON_Delete). QV_EINVAL
 * with a message for a malformed request (messages missing or not an array, a message without a
 * string role, a content part that is not text). */
int qv_chat_request_vars(const qv_chat_template *t, const cJSON *request, cJSON **out,
                         qv_error *err);

/* ---------------------------------------------------------------------------------------------
 * Tool calls
 * ------------------------------------------------------------------------------------------- */

typedef enum qv_chat_tool_format {
  QV_CHAT_TOOLS_NONE = 0, /* no parsing: everything is content */
  QV_CHAT_TOOLS_HERMES,   /* <tool_call>{"name":..,"arguments":{..}}</tool_call> (Hermes, Qwen) */
  QV_CHAT_TOOLS_LLAMA3,   /* {"name":..,"parameters":{..}} or <|python_tag|>... (Llama 3.1/3.2) */
  QV_CHAT_TOOLS_MISTRAL,  /* [TOOL_CALLS][{"name":..,"arguments":{..}}, ...] (Mistral) */
} qv_chat_tool_format;

/* Guesses the tool-call format from a template's source (markers such as <tool_call>,
 * <|python_tag|>, [TOOL_CALLS]); QV_CHAT_TOOLS_NONE when nothing matches. */
qv_chat_tool_format qv_chat_tool_format_detect(const qv_chat_template *t);

/* "hermes", "llama3", "mistral", "none" <-> enum. parse returns QV_EINVAL for an unknown name. */
const char *qv_chat_tool_format_name(qv_chat_tool_format fmt);
int qv_chat_tool_format_parse(const char *name, qv_chat_tool_format *out);

typedef struct qv_chat_tool_call {
  char *id;        /* owned: "call_" + 24 alphanumerics derived from the text and index */
  char *name;      /* owned */
  char *arguments; /* owned: compact JSON object text, as OpenAI's function.arguments */
} qv_chat_tool_call;

/* Result of parsing a whole generation. All pointers owned; free with qv_chat_parsed_deinit. */
typedef struct qv_chat_parsed {
  char *content;               /* text outside tool calls (never NULL; may be "") */
  qv_chat_tool_call *calls;    /* [n_calls] */
  int n_calls;
} qv_chat_parsed;

/* Parses text[0..len) in format fmt. A call whose JSON is malformed is left in content as text
 * (the model did not produce a valid call); this is not an error. When calls are found, the
 * whitespace around them is trimmed from content (a server may send content null when it is
 * then empty). Llama 3 calls are recognised only when the message starts with the JSON (or at
 * <|python_tag|>). */
int qv_chat_tools_parse(qv_chat_tool_format fmt, const char *text, size_t len,
                        qv_chat_parsed *out, qv_error *err);
void qv_chat_parsed_deinit(qv_chat_parsed *p);

/* Streaming: feed text deltas; each feed appends to out a content delta (text that can no longer
 * become part of a tool call) and any tool calls completed by this delta. Text that might still
 * be the start of a call marker is held back until it is decided. Content deltas are not
 * trimmed; concatenated, they equal the batch content up to the whitespace around calls.
 *
 * With reasoning too, run the reasoning parser first and feed only its content to this one:
 *   prompt -> qv_chat_prompt_opens_think -> reasoning stream -> content -> tool stream. */
typedef struct qv_chat_tool_stream qv_chat_tool_stream;

int qv_chat_tool_stream_create(qv_chat_tool_format fmt, qv_chat_tool_stream **out, qv_error *err);
void qv_chat_tool_stream_destroy(qv_chat_tool_stream *s);
/* out must be zero-initialised before the first call (or hold a previous result): it is
 * deinit'ed by the callee first, then filled; the caller deinits it after the last call. */
int qv_chat_tool_stream_feed(qv_chat_tool_stream *s, const char *delta, size_t len,
                             qv_chat_parsed *out, qv_error *err);
/* End of generation: flushes held text and any unterminated call (as content, or as a call
 * when its JSON is already complete). */
int qv_chat_tool_stream_finish(qv_chat_tool_stream *s, qv_chat_parsed *out, qv_error *err);
/* Total number of calls emitted so far (the server reports finish_reason "tool_calls" when > 0). */
int qv_chat_tool_stream_n_calls(const qv_chat_tool_stream *s);

/* ---------------------------------------------------------------------------------------------
 * Reasoning (<think> ... </think>)
 * ------------------------------------------------------------------------------------------- */

/* True when the rendered prompt ends with an opened "<think>" (ignoring trailing whitespace),
 * as DeepSeek-R1's template does: the generation then starts inside the reasoning. */
bool qv_chat_prompt_opens_think(const char *prompt, size_t len);

/* Splits text into reasoning and content. With started_in_think the text begins inside the
 * reasoning (DeepSeek-R1); otherwise reasoning is only what a leading <think>...</think> holds
 * (Qwen3). Without a closing </think>: started_in_think -> all reasoning; else no reasoning
 * unless a <think> was opened, in which case the rest is reasoning. Whitespace right after
 * </think> is dropped from content. *reasoning and *content are malloc'd (owned by caller);
 * *reasoning is NULL when there was none. */
int qv_chat_reasoning_split(const char *text, size_t len, bool started_in_think, char **reasoning,
                            char **content, qv_error *err);

typedef struct qv_chat_reasoning_stream qv_chat_reasoning_stream;

int qv_chat_reasoning_stream_create(bool started_in_think, qv_chat_reasoning_stream **out,
                                    qv_error *err);
void qv_chat_reasoning_stream_destroy(qv_chat_reasoning_stream *s);
/* Feeds a delta; *reasoning_delta and *content_delta are malloc'd (possibly "") and owned by the
 * caller. Text that may be a partial tag is held back. */
int qv_chat_reasoning_stream_feed(qv_chat_reasoning_stream *s, const char *delta, size_t len,
                                  char **reasoning_delta, char **content_delta, qv_error *err);
/* Flushes what was held back. */
int qv_chat_reasoning_stream_finish(qv_chat_reasoning_stream *s, char **reasoning_delta,
                                    char **content_delta, qv_error *err);

#endif
