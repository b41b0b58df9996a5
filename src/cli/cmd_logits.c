/* quiver logits: one prefill of a prompt given as ids, printing the full logits of chosen rows
 * as JSON. A debugging and conformance tool (the GGUF fidelity tests compare its output with
 * transformers); it drives qv_model directly, without the engine or a tokenizer. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "models/model.h"

#define LG_BLOCK 16

static void usage(FILE *f) {
  fprintf(f, "usage: quiver logits --model PATH --prompt-ids \"1 2 3\" [--rows \"0 2\"] [--threads N]\n"
             "                     [--dequantize] [--tp N]\n"
             "  Runs the prompt as one prefill on the CPU and prints {\"rows\": [{\"row\": r, \"logits\":\n"
             "  [...]}]} for each row asked for (default: the last). --dequantize loads GGUF weights\n"
             "  dequantized to f32 (the exact reference path) instead of keeping them quantized.\n"
             "  --tp N shards the model over N CPU ranks (tensor parallelism).\n");
}

/* Parses whitespace- or comma-separated integers into a malloc'd array. */
static int parse_ids(const char *s, int32_t **out, int32_t *n) {
  int32_t cap = 64, k = 0;
  int32_t *a = malloc((size_t)cap * sizeof *a);
  if (!a) return -1;
  while (*s) {
    while (*s == ' ' || *s == ',' || *s == '\t' || *s == '\n') s++;
    if (!*s) break;
    char *end;
    long v = strtol(s, &end, 10);
    if (end == s || v < 0 || v > 0x7fffffff) {
      free(a);
      return -1;
    }
    if (k == cap) {
      int32_t *b = realloc(a, (size_t)(cap *= 2) * sizeof *a);
      if (!b) {
        free(a);
        return -1;
      }
      a = b;
    }
    a[k++] = (int32_t)v;
    s = end;
  }
  *out = a;
  *n = k;
  return 0;
}

int cli_logits(int argc, char **argv) {
  const char *path = NULL, *ids_s = NULL, *rows_s = NULL;
  int threads = 0, deq = 0, tp = 1;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--model") && i + 1 < argc) path = argv[++i];
    else if (!strcmp(argv[i], "--prompt-ids") && i + 1 < argc) ids_s = argv[++i];
    else if (!strcmp(argv[i], "--rows") && i + 1 < argc) rows_s = argv[++i];
    else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--dequantize")) deq = 1;
    else if ((!strcmp(argv[i], "--tensor-parallel-size") || !strcmp(argv[i], "--tp")) && i + 1 < argc) {
      tp = atoi(argv[++i]);
      if (tp < 1 || tp > QV_TP_MAX_SIZE) {
        fprintf(stderr, "quiver logits: --tp must be in [1, %d]\n", QV_TP_MAX_SIZE);
        return 2;
      }
    }
    else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      usage(stdout);
      return 0;
    } else {
      fprintf(stderr, "quiver logits: unknown or incomplete option '%s'\n", argv[i]);
      usage(stderr);
      return 2;
    }
  }
  int32_t *ids = NULL, *rows = NULL, n = 0, n_rows = 0;
  if (!ids_s || parse_ids(ids_s, &ids, &n) || n == 0 || (rows_s && (parse_ids(rows_s, &rows, &n_rows) || !n_rows))) {
    fprintf(stderr, "quiver logits: --prompt-ids needs a non-empty list of ids (and --rows a list of rows)\n");
    free(ids);
    free(rows);
    return 2;
  }
  if (!rows) {
    rows = malloc(sizeof *rows);
    if (!rows) return 1;
    rows[0] = n - 1;
    n_rows = 1;
  }
  for (int32_t i = 0; i < n_rows; i++)
    if (rows[i] < 0 || rows[i] >= n) {
      fprintf(stderr, "quiver logits: row %d outside the prompt (%d tokens)\n", rows[i], n);
      free(ids);
      free(rows);
      return 2;
    }
  qv_error err = {0};
  qv_backend *be = NULL;
  qv_model *m = NULL;
  qv_backend_opts bo = {.n_threads = threads};
  qv_model_opts mo = {.max_batch_tokens = n, .max_logits = n_rows, .dequantize = deq, .tp_size = tp,
                      .n_threads = threads};
  int32_t n_blocks = (n + LG_BLOCK - 1) / LG_BLOCK;
  int32_t *pos = malloc((size_t)n * sizeof *pos), *slots = malloc((size_t)n * sizeof *slots);
  int32_t *bt = malloc((size_t)n_blocks * sizeof *bt);
  float *logits = NULL;
  int rc = !pos || !slots || !bt;
  if (!rc) rc = qv_backend_create("cpu", &bo, &be, &err);
  if (!rc) rc = qv_model_load(path, be, &mo, &m, &err);
  if (!rc) rc = qv_model_kv_init(m, n_blocks, LG_BLOCK, &err);
  if (!rc) {
    int32_t vocab = qv_model_get_config(m)->vocab_size;
    logits = malloc((size_t)n_rows * (size_t)vocab * sizeof *logits);
    rc = !logits;
    for (int32_t i = 0; i < n; i++) pos[i] = i, slots[i] = i;
    for (int32_t i = 0; i < n_blocks; i++) bt[i] = i;
    int32_t qs[2] = {0, n}, ctx = n;
    qv_batch b = {.n_tokens = n, .n_seqs = 1, .n_logits = n_rows, .token_ids = ids, .positions = pos,
                  .slot_mapping = slots, .seq_q_start = qs, .seq_ctx_len = &ctx, .block_tables = bt,
                  .max_blocks = n_blocks, .logits_idx = rows};
    if (!rc) rc = qv_model_forward(m, &b, logits, &err);
    if (!rc) {
      printf("{\"rows\": [");
      for (int32_t r = 0; r < n_rows; r++) {
        printf("%s{\"row\": %d, \"logits\": [", r ? ", " : "", rows[r]);
        for (int32_t j = 0; j < vocab; j++) printf("%s%.9g", j ? "," : "", logits[(size_t)r * vocab + j]);
        printf("]}");
      }
      printf("]}\n");
    }
  }
  if (rc) fprintf(stderr, "quiver logits: %s\n", err.msg[0] ? err.msg : "out of memory");
  free(logits);
  free(pos);
  free(slots);
  free(bt);
  free(ids);
  free(rows);
  qv_model_destroy(m);
  qv_backend_destroy(be);
  return rc ? 1 : 0;
}
