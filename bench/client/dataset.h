/* Building the list of requests to send from --dataset random | sharegpt | jsonl (see
 * bench/README.md for each one's rules). Deterministic for a given --seed and server tokenizer. */
#ifndef QV_BENCH_DATASET_H
#define QV_BENCH_DATASET_H

#include "bench.h"
#include "tok.h"

/* tok may be NULL for jsonl (prompt lengths then come from the server's usage). *out[*n] is
 * owned by the caller (bench_prompts_free). */
int bench_dataset_build(const bench_opts *o, bench_tok *tok, bench_prompt **out, size_t *n, qv_error *err);

#endif
