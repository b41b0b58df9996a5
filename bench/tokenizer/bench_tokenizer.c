/* qv-bench-tokenizer: single-thread encode throughput of quiver on one text and tokenizer,
 * optionally next to the Hugging Face `tokenizers` library measured in the same run (through
 * bench/tokenizer/reference.py and the Python given with --python), with the ratio.
 *
 *   qv-bench-tokenizer --tokenizer PATH --text FILE [--lines] [--iters N] [--python PY] [--label NAME]
 *
 * Without --lines the whole file is one input (one long document); with --lines each line is
 * its own encode call (request-sized inputs; the reference then uses encode_batch with
 * parallelism off, so neither side pays per-call Python overhead).
 *
 * Prints one JSON object: bytes, ids, per-iteration seconds, median MB/s for quiver and, with
 * --python, for the reference plus the speed ratio and whether both produced the same ids. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "quiver/tokenizer.h"
#include "core/util.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* FNV-1a over the ids as little-endian u32, to compare with the reference's ids cheaply. */
static uint64_t ids_hash(const int32_t *ids, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; i++)
    for (int k = 0; k < 4; k++) h = (h ^ (((uint32_t)ids[i] >> (8 * k)) & 0xFF)) * 0x100000001b3ull;
  return h;
}

int main(int argc, char **argv) {
  const char *path = NULL, *text_path = NULL, *python = NULL, *label = "";
  int iters = 5, lines = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc) path = argv[++i];
    else if (!strcmp(argv[i], "--text") && i + 1 < argc) text_path = argv[++i];
    else if (!strcmp(argv[i], "--python") && i + 1 < argc) python = argv[++i];
    else if (!strcmp(argv[i], "--label") && i + 1 < argc) label = argv[++i];
    else if (!strcmp(argv[i], "--iters") && i + 1 < argc) iters = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--lines")) lines = 1;
    else {
      fprintf(stderr, "usage: qv-bench-tokenizer --tokenizer PATH --text FILE [--iters N] [--python PY] [--label NAME]\n");
      return 2;
    }
  }
  if (!path || !text_path || iters < 1 || iters > 1000) {
    fprintf(stderr, "qv-bench-tokenizer: --tokenizer and --text are required (iters 1..1000)\n");
    return 2;
  }
  qv_error err = {0};
  qv_tokenizer *tok;
  if (qv_tokenizer_load(path, &tok, &err)) {
    fprintf(stderr, "qv-bench-tokenizer: %s\n", err.msg);
    return 1;
  }
  size_t len;
  char *text = qv_read_file(text_path, (size_t)1 << 30, &len, NULL);
  if (!text) {
    fprintf(stderr, "qv-bench-tokenizer: cannot read %s\n", text_path);
    qv_tokenizer_destroy(tok);
    return 1;
  }
  double *secs = malloc((size_t)iters * sizeof *secs);
  size_t n_ids = 0;
  uint64_t hash = 0;
  for (int it = 0; it < iters; it++) {
    int32_t *ids;
    size_t n;
    double t0 = now_s();
    if (!lines) {
      if (qv_tokenizer_encode(tok, text, len, 0, &ids, &n, &err)) {
        fprintf(stderr, "qv-bench-tokenizer: %s\n", err.msg);
        return 1;
      }
      secs[it] = now_s() - t0;
      n_ids = n;
      hash = ids_hash(ids, n);
      free(ids);
      continue;
    }
    /* One encode per line; the hash chains over all lines' ids in order. */
    n_ids = 0;
    hash = 0xcbf29ce484222325ull;
    double hash_s = 0;
    for (size_t p = 0; p <= len;) {
      const char *nl = memchr(text + p, '\n', len - p);
      size_t e = nl ? (size_t)(nl - text) : len;
      if (qv_tokenizer_encode(tok, text + p, e - p, 0, &ids, &n, &err)) {
        fprintf(stderr, "qv-bench-tokenizer: %s\n", err.msg);
        return 1;
      }
      double h0 = now_s();
      for (size_t i = 0; i < n; i++)
        for (int k = 0; k < 4; k++) hash = (hash ^ (((uint32_t)ids[i] >> (8 * k)) & 0xFF)) * 0x100000001b3ull;
      hash_s += now_s() - h0;
      n_ids += n;
      free(ids);
      p = e + 1;
    }
    secs[it] = now_s() - t0 - hash_s;
  }
  qsort(secs, (size_t)iters, sizeof *secs, cmp_double);
  double med = secs[iters / 2], mbs = (double)len / med / 1e6;
  printf("{\"label\": \"%s\", \"tokenizer\": \"%s\", \"mode\": \"%s\", \"bytes\": %zu, \"ids\": %zu, \"iters\": %d,\n"
         " \"quiver\": {\"median_s\": %.6f, \"min_s\": %.6f, \"max_s\": %.6f, \"mb_per_s\": %.3f}",
         label, path, lines ? "lines" : "document", len, n_ids, iters, med, secs[0], secs[iters - 1], mbs);
  if (python) {
    /* The reference runs in a child process on the same file; it prints "seconds... ids hash". */
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false '%s' \"$(dirname '%s')/../../bench/tokenizer/reference.py\" '%s' '%s' %d %s",
             python, argv[0], path, text_path, iters, lines ? "lines" : "document");
    const char *src = getenv("QV_SOURCE_DIR");
    if (src) snprintf(cmd, sizeof cmd, "RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false '%s' '%s/bench/tokenizer/reference.py' '%s' '%s' %d %s",
                      python, src, path, text_path, iters, lines ? "lines" : "document");
    FILE *p = popen(cmd, "r");
    double ref_med = 0;
    size_t ref_ids = 0;
    unsigned long long ref_hash = 0;
    int ok = p && fscanf(p, "%lf %zu %llx", &ref_med, &ref_ids, &ref_hash) == 3;
    if (p) pclose(p);
    if (ok && ref_med > 0) {
      double ref_mbs = (double)len / ref_med / 1e6;
      printf(",\n \"reference\": {\"median_s\": %.6f, \"mb_per_s\": %.3f, \"ids\": %zu},\n"
             " \"speedup\": %.3f, \"same_ids\": %s",
             ref_med, ref_mbs, ref_ids, mbs / ref_mbs, (ref_ids == n_ids && ref_hash == hash) ? "true" : "false");
    } else {
      printf(",\n \"reference\": null");
      fprintf(stderr, "qv-bench-tokenizer: the reference did not run (%s)\n", cmd);
    }
  }
  printf("}\n");
  free(secs);
  free(text);
  qv_tokenizer_destroy(tok);
  return 0;
}
