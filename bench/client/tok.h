/* Token counting and exact-length prompts for the load generator. Counts come either from the
 * server under test (POST /tokenize and /detokenize, as vLLM and quiver serve them;
 * llama-server's response shapes are accepted too), so they match what the server itself will
 * count, or from quiver's tokenizer library loading --tokenizer PATH (for servers without those
 * endpoints). Both give the same prompts when the tokenizers agree. */
#ifndef QV_BENCH_TOK_H
#define QV_BENCH_TOK_H

#include <stddef.h>
#include <stdint.h>

#include "core/bench_rng.h"
#include "http.h"
#include "quiver/error.h"
#include "quiver/tokenizer.h"

typedef struct bench_tok {
  qv_tokenizer *lib;         /* owned; NULL: use the server's endpoints */
  bench_http *http;          /* borrowed */
  const char *model;         /* borrowed */
  int32_t n_special;         /* tokens the server adds to a prompt (BOS...) */
  int32_t *allowed;          /* [n_allowed] ids random prompts are drawn from; owned */
  size_t n_allowed;
} bench_tok;

/* Uses tokenizer_path (a model directory, tokenizer.json or .gguf) through quiver's tokenizer
 * library when it is not NULL, else probes the server's tokenizer endpoints; then collects the
 * allowed ids (the distinct ids of a built-in English text, which are ordinary text tokens of
 * any vocabulary). */
int bench_tok_init(bench_tok *t, const char *tokenizer_path, bench_http *http, const char *model, qv_error *err);
void bench_tok_deinit(bench_tok *t);

/* Tokens of text without special tokens; *ids malloc'd (caller frees). */
int bench_tok_encode(bench_tok *t, const char *text, int add_special, int32_t **ids, size_t *n, qv_error *err);
/* Text of ids; *text malloc'd (caller frees). */
int bench_tok_decode(bench_tok *t, const int32_t *ids, size_t n, char **text, qv_error *err);

/* Makes a prompt of exactly target tokens (when the tokenizer allows; *got tells) starting from
 * ids[n] (the wish): decode, re-encode, then truncate or extend with random allowed ids, up to a
 * few rounds. *text malloc'd. */
int bench_tok_exact_prompt(bench_tok *t, bench_rng *rng, const int32_t *ids, size_t n, size_t target,
                           char **text, size_t *got, qv_error *err);

#endif
