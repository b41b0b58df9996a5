/* NUL characters in request and response text, carried without C-string truncation.
 *
 * JSON strings may hold U+0000 (escaped as \u0000), and a random-token prompt (vLLM's bench
 * random dataset) decodes to one whenever it holds a <0x00> byte token. The server keeps its
 * text in cJSON trees and C strings, where a NUL byte would silently cut the text. So inside the
 * server a NUL character is the two bytes C0 80 (the "modified UTF-8" of Java and Tcl): an
 * overlong encoding that valid UTF-8 never holds, so it can only mean NUL. The request body is
 * checked to be valid UTF-8 and the tokenizer's decoder emits valid UTF-8, so the marker has no
 * other source. Conversions happen at three boundaries only:
 *   request body -> tree:  jnul_unescape turns each \u0000 escape into the marker before cJSON
 *                          parses the body (oai_json_parse_strict);
 *   text <-> tokenizer:    jnul_decode gives the real bytes to encode; jnul_encode marks the
 *                          NULs of decoded or generated text (server_gen.c);
 *   tree -> wire:          jnul_wire writes the marker as \u0000 in every JSON body and SSE
 *                          event the server sends (its three send functions).
 * Where a NUL is unsafe (object keys, model names, stop strings, header values) the request is
 * refused with a 400 instead (jnul_has). Pure functions, unit tested in test_server_dialects.c. */
#ifndef QV_SERVER_JSON_NUL_H
#define QV_SERVER_JSON_NUL_H

#include <cjson/cJSON.h>
#include <stddef.h>

#define JNUL_MARK "\xC0\x80" /* a NUL character inside the server */

/* 1 when s[n] holds the marker. */
int jnul_has(const char *s, size_t n);

/* A JSON text body[len] with each \u0000 escape written as the marker. *out is NULL when the
 * body has none (use it as it is), otherwise malloc'd [*out_len + 1] and NUL-terminated.
 * 0 or QV_ENOMEM. */
int jnul_unescape(const char *body, size_t len, char **out, size_t *out_len);

/* Text to bytes, in place: every marker of s[n] becomes a NUL byte. Returns the new length. */
size_t jnul_decode(char *s, size_t n);

/* Bytes to text: s[n] with every NUL byte written as the marker, malloc'd and NUL-terminated
 * (*out_len bytes before the terminator; out_len may be NULL). NULL when out of memory. */
char *jnul_encode(const char *s, size_t n, size_t *out_len);

/* The number of bytes s[n] stands for (a marker counts one). */
size_t jnul_bytes(const char *s, size_t n);

/* A cJSON string from the bytes s[n], NUL bytes kept as markers. NULL when out of memory. */
cJSON *jnul_string(const char *s, size_t n);

/* A JSON text for the wire: json[len] with each marker written as \u0000. NULL when there is
 * none (send json as it is) or when out of memory (*oom set); otherwise malloc'd, NUL-terminated,
 * *out_len bytes long. */
char *jnul_wire(const char *json, size_t len, size_t *out_len, int *oom);

#endif
