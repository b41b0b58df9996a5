/* Benchmark datasets, the parsing and sampling rules only (no I/O, no tokenizer), so they can be
 * unit-tested: ShareGPT-format JSON (first two turns of each conversation), JSONL prompt files,
 * vLLM's ShareGPT length filter and the random dataset's length ranges. The load generator
 * (bench/client) reads the files and measures token lengths. */
#ifndef QV_CORE_BENCH_DATASET_H
#define QV_CORE_BENCH_DATASET_H

#include <stddef.h>
#include <stdint.h>

#include "quiver/error.h"

/* One prompt taken from a file. */
typedef struct bench_text {
  char *prompt;       /* owned, NUL-terminated */
  char *completion;   /* owned; the reference answer (ShareGPT's second turn), or NULL */
  int32_t output_len; /* requested output tokens from the file, or -1 when it gives none */
} bench_text;

/* Parses a ShareGPT-format JSON array: entries with a "conversations" array of at least two
 * turns whose "value"s are strings give (first turn, second turn), in file order; other entries
 * are skipped (counted in *n_skipped, may be NULL). *out is owned by the caller
 * (bench_texts_free). QV_EFORMAT with a message when the text is not such an array. */
int bench_sharegpt_parse(const char *json, size_t len, bench_text **out, size_t *n, size_t *n_skipped,
                         qv_error *err);

/* Parses a JSONL prompt file: each non-blank line is either a JSON string (the prompt) or an
 * object with a string "prompt" and optionally an integer "output_len" (or "max_tokens") >= 1.
 * QV_EFORMAT names the first bad line. */
int bench_jsonl_parse(const char *buf, size_t len, bench_text **out, size_t *n, qv_error *err);

void bench_texts_free(bench_text *t, size_t n); /* accepts NULL */

/* vLLM's ShareGPT filter: keeps a sample unless prompt_len < 4, output_len < 4 (skipped when
 * the output length is fixed by the user), prompt_len > 1024 or prompt_len + output_len > 2048. */
int bench_sharegpt_keep(int64_t prompt_len, int64_t output_len, int fixed_output_len);

/* The random dataset's length ranges, as vLLM computes them: inputs in
 * [floor(L'(1-r)), ceil(L'(1+r))] with L' = input_len - n_special (the tokens the server adds),
 * outputs in [max(1, floor(M(1-r))), max(1, ceil(M(1+r)))], for range ratio r in [0,1). */
typedef struct bench_len_range {
  int32_t in_lo, in_hi, out_lo, out_hi;
} bench_len_range;

int bench_random_ranges(int32_t input_len, int32_t output_len, double range_ratio, int32_t n_special,
                        bench_len_range *out, qv_error *err);

#endif
