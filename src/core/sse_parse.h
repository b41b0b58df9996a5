/* Incremental parser for Server-Sent Events (text/event-stream), as a streaming HTTP client
 * receives them: bytes arrive in arbitrary pieces (a line, or even a CRLF pair, may be split
 * across reads), so the parser keeps the partial line and the event being built between calls.
 *
 * Follows the WHATWG event-stream rules that matter to OpenAI-style streams: lines end in LF,
 * CRLF or CR; a blank line dispatches the event; "data:" lines are joined with LF; one space
 * after the colon is dropped; lines starting with ':' are comments; "event:" names the event;
 * other fields are ignored. Unlike a browser, data still pending when the stream ends is
 * dispatched by sse_parser_finish (some servers omit the final blank line). */
#ifndef QV_CORE_SSE_PARSE_H
#define QV_CORE_SSE_PARSE_H

#include <stddef.h>

#include "quiver/error.h"

/* Called once per event. event is "" unless an "event:" field named it; data is NUL-terminated
 * with data_len bytes (no trailing LF). Both are borrowed for the call. A non-zero return stops
 * the parser and is returned from sse_parser_feed/finish. */
typedef int (*sse_event_fn)(void *arg, const char *event, const char *data, size_t data_len);

typedef struct sse_parser {
  char *line;          /* [line_cap] the current, incomplete line; owned */
  size_t line_len, line_cap;
  char *data;          /* [data_cap] data of the event being built, LF-joined; owned */
  size_t data_len, data_cap;
  char event[64];      /* event name of the event being built, truncated */
  int has_data;        /* a data field was seen since the last dispatch */
  int last_cr;         /* the previous byte was CR (so an LF right after it ends nothing) */
  size_t max_bytes;    /* limit on one line and on one event's data (QV_ELIMIT beyond) */
  sse_event_fn fn;     /* borrowed */
  void *arg;
} sse_parser;

/* max_bytes 0 means 16 MiB. */
void sse_parser_init(sse_parser *p, size_t max_bytes, sse_event_fn fn, void *arg);
/* Frees the buffers; the parser may be init'ed again. Accepts a zeroed parser. */
void sse_parser_deinit(sse_parser *p);
/* Consumes len bytes. Returns 0, QV_ENOMEM, QV_ELIMIT, or the callback's non-zero return. */
int sse_parser_feed(sse_parser *p, const char *buf, size_t len, qv_error *err);
/* Ends the stream: dispatches a pending final line/event. */
int sse_parser_finish(sse_parser *p, qv_error *err);

#endif
