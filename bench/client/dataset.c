/* Request lists for the load generator: the random dataset (exact-length prompts from token
 * ids), ShareGPT conversations filtered as vLLM filters them, and JSONL prompt files. */
#include "dataset.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/bench_dataset.h"

void bench_prompts_free(bench_prompt *p, size_t n) {
  if (!p) return;
  for (size_t i = 0; i < n; i++) free(p[i].prompt);
  free(p);
}

/* Reads a whole file (at most 4 GiB). */
static int read_file(const char *path, char **buf, size_t *len, qv_error *err) {
  *buf = NULL;
  FILE *f = fopen(path, "rb");
  if (!f) return qv_error_set(err, QV_EIO, "cannot open '%s'", path);
  size_t cap = 1 << 16, n = 0;
  char *b = malloc(cap);
  while (b) {
    if (n == cap) {
      if (cap >= ((size_t)4 << 30)) {
        free(b);
        fclose(f);
        return qv_error_set(err, QV_ELIMIT, "'%s' is larger than 4 GiB", path);
      }
      char *nb = realloc(b, cap * 2);
      if (!nb) break;
      b = nb;
      cap *= 2;
    }
    size_t r = fread(b + n, 1, cap - n, f);
    n += r;
    if (r == 0) break;
  }
  int bad = ferror(f);
  fclose(f);
  if (!b || bad) {
    free(b);
    return qv_error_set(err, bad ? QV_EIO : QV_ENOMEM, "reading '%s' failed", path);
  }
  *buf = b;
  *len = n;
  return 0;
}

static int build_random(const bench_opts *o, bench_tok *tok, bench_prompt *out, qv_error *err) {
  bench_len_range r;
  int rc = bench_random_ranges(o->input_len, o->output_len, o->range_ratio, tok->n_special, &r, err);
  if (rc) return rc;
  bench_rng rng;
  bench_rng_seed(&rng, o->seed);
  int32_t *prefix = NULL, *ids = NULL;
  size_t np = (size_t)o->prefix_len;
  prefix = malloc((np + 1) * sizeof *prefix);
  ids = malloc((np + (size_t)r.in_hi + 1) * sizeof *ids);
  if (!prefix || !ids) {
    free(prefix);
    free(ids);
    return qv_error_set(err, QV_ENOMEM, "out of memory");
  }
  for (size_t j = 0; j < np; j++) prefix[j] = tok->allowed[bench_rng_int(&rng, 0, (int64_t)tok->n_allowed - 1)];
  int64_t mismatch = 0;
  for (int32_t i = 0; i < o->num_prompts && !rc; i++) {
    int32_t in_len = (int32_t)bench_rng_int(&rng, r.in_lo, r.in_hi);
    out[i].output_len = (int32_t)bench_rng_int(&rng, r.out_lo, r.out_hi);
    int64_t offset = bench_rng_int(&rng, 0, (int64_t)tok->n_allowed - 1);
    memcpy(ids, prefix, np * sizeof *ids);
    for (int32_t j = 0; j < in_len; j++) ids[np + (size_t)j] = tok->allowed[(size_t)(offset + i + j) % tok->n_allowed];
    size_t target = np + (size_t)in_len, got;
    rc = bench_tok_exact_prompt(tok, &rng, ids, target, target, &out[i].prompt, &got, err);
    out[i].prompt_len = (int32_t)got + tok->n_special;
    mismatch += (int64_t)got - (int64_t)target;
  }
  free(prefix);
  free(ids);
  if (!rc && mismatch)
    fprintf(stderr, "quiver-bench: note: random prompts have %lld tokens %s than asked in all (the tokenizer "
                    "merges some sequences)\n", (long long)(mismatch < 0 ? -mismatch : mismatch),
            mismatch > 0 ? "more" : "fewer");
  return rc;
}

static int build_sharegpt(const bench_opts *o, bench_tok *tok, bench_prompt *out, qv_error *err) {
  char *buf;
  size_t len;
  int rc = read_file(o->dataset_path, &buf, &len, err);
  if (rc) return rc;
  bench_text *t;
  size_t n;
  rc = bench_sharegpt_parse(buf, len, &t, &n, NULL, err);
  free(buf);
  if (rc) {
    qv_error_prefix(err, "%s", o->dataset_path);
    return rc;
  }
  bench_rng rng;
  bench_rng_seed(&rng, o->seed);
  size_t *idx = malloc((n + 1) * sizeof *idx);
  if (!idx) {
    bench_texts_free(t, n);
    return qv_error_set(err, QV_ENOMEM, "out of memory");
  }
  for (size_t i = 0; i < n; i++) idx[i] = i;
  bench_rng_shuffle(&rng, idx, n);
  size_t k = 0;
  for (size_t i = 0; i < n && k < (size_t)o->num_prompts && !rc; i++) {
    const bench_text *e = &t[idx[i]];
    int32_t *ids;
    size_t plen, olen = (size_t)o->output_len;
    rc = bench_tok_encode(tok, e->prompt, 0, &ids, &plen, err);
    if (rc) break;
    free(ids);
    if (!o->output_len_set) {
      rc = bench_tok_encode(tok, e->completion, 0, &ids, &olen, err);
      if (rc) break;
      free(ids);
    }
    if (!bench_sharegpt_keep((int64_t)plen, (int64_t)olen, o->output_len_set)) continue;
    out[k].prompt = strdup(e->prompt);
    if (!out[k].prompt) rc = qv_error_set(err, QV_ENOMEM, "out of memory");
    out[k].prompt_len = (int32_t)plen + tok->n_special;
    out[k].output_len = (int32_t)olen;
    k++;
  }
  free(idx);
  bench_texts_free(t, n);
  if (rc) return rc;
  if (k == 0) return qv_error_set(err, QV_EINVAL, "%s: no conversation passes the length filter", o->dataset_path);
  /* Fewer valid samples than asked: draw more from the valid ones, as vLLM oversamples. */
  for (size_t i = k; i < (size_t)o->num_prompts; i++) {
    size_t j = (size_t)bench_rng_int(&rng, 0, (int64_t)k - 1);
    out[i] = out[j];
    out[i].prompt = strdup(out[j].prompt);
    if (!out[i].prompt) return qv_error_set(err, QV_ENOMEM, "out of memory");
  }
  if (k < (size_t)o->num_prompts)
    fprintf(stderr, "quiver-bench: note: %zu conversations pass the filter; resampled to %d prompts\n", k,
            o->num_prompts);
  return 0;
}

static int build_jsonl(const bench_opts *o, bench_tok *tok, bench_prompt *out, qv_error *err) {
  char *buf;
  size_t len;
  int rc = read_file(o->dataset_path, &buf, &len, err);
  if (rc) return rc;
  bench_text *t;
  size_t n;
  rc = bench_jsonl_parse(buf, len, &t, &n, err);
  free(buf);
  if (rc) {
    qv_error_prefix(err, "%s", o->dataset_path);
    return rc;
  }
  if (n == 0) {
    bench_texts_free(t, n);
    return qv_error_set(err, QV_EINVAL, "%s: no prompts", o->dataset_path);
  }
  /* File order, cycling when the file has fewer prompts than --num-prompts. */
  for (int32_t i = 0; i < o->num_prompts && !rc; i++) {
    const bench_text *e = &t[(size_t)i % n];
    out[i].prompt = strdup(e->prompt);
    if (!out[i].prompt) {
      rc = qv_error_set(err, QV_ENOMEM, "out of memory");
      break;
    }
    out[i].output_len = e->output_len > 0 ? e->output_len : o->output_len;
    out[i].prompt_len = -1;
    if (tok) {
      int32_t *ids;
      size_t plen;
      rc = bench_tok_encode(tok, e->prompt, 1, &ids, &plen, err);
      if (!rc) {
        free(ids);
        out[i].prompt_len = (int32_t)plen;
      }
    }
  }
  bench_texts_free(t, n);
  return rc;
}

int bench_dataset_build(const bench_opts *o, bench_tok *tok, bench_prompt **out, size_t *n, qv_error *err) {
  *out = NULL;
  *n = 0;
  bench_prompt *p = calloc((size_t)o->num_prompts, sizeof *p);
  if (!p) return qv_error_set(err, QV_ENOMEM, "out of memory for %d prompts", o->num_prompts);
  int rc;
  if (!strcmp(o->dataset, "random")) rc = build_random(o, tok, p, err);
  else if (!strcmp(o->dataset, "sharegpt")) rc = build_sharegpt(o, tok, p, err);
  else rc = build_jsonl(o, tok, p, err);
  if (rc) {
    bench_prompts_free(p, (size_t)o->num_prompts);
    return rc;
  }
  *out = p;
  *n = (size_t)o->num_prompts;
  return 0;
}
