/* quiver constrain: exercises a constraint over a real tokenizer without a model.
 *
 * Default mode is a random walk: each sample draws tokens uniformly among those the mask
 * allows (EOS included once the constraint is complete) until EOS, and prints the text as one
 * JSON line, so a test can check every output with a reference validator (Python's jsonschema
 * or re). Past --max-tokens / 2 steps the walk prefers single-byte tokens that close things
 * ('"', '}', ']') so that it finishes. --check reads JSON strings, one per line, tokenizes each
 * as the tokenizer would (no special tokens) and reports whether every token was in the mask
 * in turn and the end is complete (reachability). Every sampled token is also checked against
 * the matcher (accept), and with --verify-mask N the first N steps check that every token
 * outside the mask is refused. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/cli.h"
#include "core/util.h"
#include "quiver/constrain.h"
#include "quiver/tokenizer.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: quiver constrain --tokenizer PATH KIND [--any-ws] [--samples N] [--seed S]\n"
          "                        [--max-tokens M] [--verify-mask N] [--check FILE] [--stats]\n"
          "  KIND: --json | --json-object | --schema FILE | --regex PATTERN | --choice S (repeat)\n"
          "        | --gbnf FILE | --lark FILE | --tools FILE [--tool-name N] [--tool-format F]\n"
          "  Prints one JSON line per sample: {\"text\", \"hex\", \"complete\", \"n_tokens\"};\n"
          "  with --check, one line per input: {\"ok\", \"reason\"}. --stats adds mask timings.\n");
}

static uint64_t rng_next(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int has_bit(const uint32_t *m, int32_t id) { return (m[id >> 5] >> (id & 31)) & 1u; }

static void print_sample(const char *text, size_t n, int complete, int32_t n_tok, int32_t idx) {
  char *hex = malloc(2 * n + 1);
  if (!hex) return;
  for (size_t i = 0; i < n; i++) snprintf(hex + 2 * i, 3, "%02x", (unsigned char)text[i]);
  hex[2 * n] = 0;
  printf("{\"index\": %d, \"hex\": \"%s\", \"complete\": %s, \"n_tokens\": %d}\n", idx, hex,
         complete ? "true" : "false", n_tok);
  free(hex);
}

typedef struct walk_stats {
  double mask_s;
  int64_t n_masks;
} walk_stats;

static int random_walk(qv_constraint *c, const qv_cst_vocab *v, int32_t eos, uint64_t *rng, int32_t max_tokens,
                       int32_t verify_steps, walk_stats *st, int32_t idx) {
  qv_matcher *m;
  if (qv_matcher_create(c, &m)) return 1;
  int32_t V = qv_cst_vocab_size(v), words = qv_matcher_mask_words(m);
  uint32_t *mask = calloc((size_t)words, sizeof *mask);
  int32_t *ids = malloc((size_t)V * sizeof *ids);
  size_t cap = 1024, n = 0;
  char *text = malloc(cap);
  int rc = (!mask || !ids || !text) ? 1 : 0;
  int complete = 0;
  int32_t step = 0;
  for (; !rc && step < max_tokens; step++) {
    double t0 = now_s();
    if (qv_matcher_fill_mask(m, mask)) {
      rc = 1;
      break;
    }
    st->mask_s += now_s() - t0;
    st->n_masks++;
    int32_t k = 0;
    for (int32_t id = 0; id < V; id++)
      if (has_bit(mask, id)) ids[k++] = id;
    if (k == 0) { /* the vocabulary cannot continue: reported as an incomplete sample */
      fprintf(stderr, "constrain: empty mask at step %d\n", step);
      break;
    }
    if (step < verify_steps) {
      /* Every token outside the mask must be refused, every one inside accepted. */
      for (int32_t id = 0; id < V && !rc; id++) {
        if (id == eos) continue;
        int ok = qv_matcher_accept(m, id) == 0;
        if (ok) qv_matcher_rollback(m, 1);
        if (ok != has_bit(mask, id)) {
          fprintf(stderr, "constrain: token %d is %s the mask but %s\n", id, ok ? "outside" : "inside",
                  ok ? "accepted" : "refused");
          rc = 1;
        }
      }
    }
    int32_t pick = ids[rng_next(rng) % (uint64_t)k];
    if (step >= max_tokens / 2) {
      /* Closing phase: EOS if allowed, else a closing byte, else any single-byte token. */
      static const char closers[] = "\"}]";
      int32_t best = -1, best_rank = 99;
      for (int32_t i = 0; i < k; i++) {
        size_t len;
        const char *s = qv_cst_vocab_token(v, ids[i], &len);
        if (ids[i] == eos) { best = eos; best_rank = -1; break; }
        if (!s || len != 1) continue;
        const char *p = memchr(closers, s[0], 3);
        int rank = p ? (int)(p - closers) : 10;
        if (rank < best_rank || (rank == best_rank && rng_next(rng) % 4 == 0)) best = ids[i], best_rank = rank;
      }
      if (best >= 0) pick = best;
    }
    if (pick == eos) {
      complete = qv_matcher_is_complete(m);
      break;
    }
    if (qv_matcher_accept(m, pick)) {
      fprintf(stderr, "constrain: token %d from the mask was refused\n", pick);
      rc = 1;
      break;
    }
    size_t len;
    const char *s = qv_cst_vocab_token(v, pick, &len);
    if (n + len + 1 > cap) {
      char *t = realloc(text, (cap = 2 * (n + len + 1)));
      if (!t) { rc = 1; break; }
      text = t;
    }
    memcpy(text + n, s, len);
    n += len;
  }
  if (!rc) print_sample(text, n, complete, step, idx);
  free(text);
  free(ids);
  free(mask);
  qv_matcher_destroy(m);
  return rc;
}

static int check_line(qv_constraint *c, const qv_tokenizer *tok, const char *s, size_t len) {
  int32_t *ids = NULL;
  size_t n = 0;
  qv_error err = {0};
  if (qv_tokenizer_encode(tok, s, len, 0, &ids, &n, &err)) return 1;
  qv_matcher *m;
  if (qv_matcher_create(c, &m)) {
    free(ids);
    return 1;
  }
  uint32_t *mask = calloc((size_t)qv_matcher_mask_words(m), sizeof *mask);
  const char *reason = NULL;
  char buf[128];
  for (size_t i = 0; mask && i < n && !reason; i++) {
    qv_matcher_fill_mask(m, mask);
    if (ids[i] >= qv_tokenizer_vocab_size(tok) || !has_bit(mask, ids[i])) {
      snprintf(buf, sizeof buf, "token %zu (id %d) not in the mask", i, ids[i]);
      reason = buf;
    } else if (qv_matcher_accept(m, ids[i])) {
      snprintf(buf, sizeof buf, "token %zu (id %d) refused", i, ids[i]);
      reason = buf;
    }
  }
  if (!reason && !qv_matcher_is_complete(m)) reason = "incomplete at the end";
  if (!reason && mask) {
    qv_matcher_fill_mask(m, mask);
    int32_t eos = qv_tokenizer_eos_id(tok);
    if (eos >= 0 && !has_bit(mask, eos)) reason = "EOS not allowed at the end";
  }
  printf("{\"ok\": %s, \"reason\": \"%s\"}\n", reason ? "false" : "true", reason ? reason : "");
  free(mask);
  free(ids);
  qv_matcher_destroy(m);
  return 0;
}

int cli_constrain(int argc, char **argv) {
  const char *tok_path = NULL, *check = NULL, *schemas = NULL;
  qv_cst_spec spec = {0};
  const char *choices[256];
  int32_t n_choices = 0;
  char *file_text = NULL;
  size_t file_len = 0;
  int32_t samples = 10, max_tokens = 256, verify = 0, stats = 0;
  uint64_t seed = 1;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *val = i + 1 < argc ? argv[i + 1] : NULL;
    int file_kind = 0;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      return 0;
    } else if (!strcmp(a, "--tokenizer") && val) tok_path = val, i++;
    else if (!strcmp(a, "--json")) spec.kind = QV_CST_JSON;
    else if (!strcmp(a, "--json-object")) spec.kind = QV_CST_JSON, spec.text = "object", spec.text_len = 6;
    else if (!strcmp(a, "--any-ws")) spec.any_whitespace = 1;
    else if (!strcmp(a, "--regex") && val) spec.kind = QV_CST_REGEX, spec.text = val, spec.text_len = strlen(val), i++;
    else if (!strcmp(a, "--choice") && val && n_choices < 256) spec.kind = QV_CST_CHOICE, choices[n_choices++] = val, i++;
    else if (!strcmp(a, "--schema") && val) spec.kind = QV_CST_JSON_SCHEMA, file_kind = 1;
    else if (!strcmp(a, "--schemas") && val) spec.kind = QV_CST_JSON_SCHEMA, schemas = val, i++;
    else if (!strcmp(a, "--gbnf") && val) spec.kind = QV_CST_GBNF, file_kind = 1;
    else if (!strcmp(a, "--lark") && val) spec.kind = QV_CST_LARK, file_kind = 1;
    else if (!strcmp(a, "--tools") && val) spec.kind = QV_CST_TOOL_CALL, file_kind = 1;
    else if (!strcmp(a, "--tool-name") && val) spec.tool_name = val, i++;
    else if (!strcmp(a, "--tool-format") && val) spec.tool_format = val, i++;
    else if (!strcmp(a, "--samples") && val) samples = atoi(val), i++;
    else if (!strcmp(a, "--seed") && val) seed = strtoull(val, NULL, 10), i++;
    else if (!strcmp(a, "--max-tokens") && val) max_tokens = atoi(val), i++;
    else if (!strcmp(a, "--verify-mask") && val) verify = atoi(val), i++;
    else if (!strcmp(a, "--check") && val) check = val, i++;
    else if (!strcmp(a, "--stats")) stats = 1;
    else {
      fprintf(stderr, "quiver constrain: unknown or incomplete option '%s'\n", a);
      usage(stderr);
      free(file_text);
      return 2;
    }
    if (file_kind) {
      free(file_text);
      qv_error ferr = {0};
      if (!(file_text = qv_read_file(val, QV_CST_MAX_SPEC_BYTES * 4, &file_len, &ferr))) {
        fprintf(stderr, "quiver constrain: cannot read %s\n", val);
        return 1;
      }
      spec.text = file_text;
      spec.text_len = file_len;
      i++;
    }
  }
  spec.choices = choices;
  spec.n_choices = n_choices;
  if (!tok_path || spec.kind == QV_CST_NONE || samples < 0 || max_tokens <= 0) {
    usage(stderr);
    free(file_text);
    return 2;
  }
  qv_error err = {0};
  qv_tokenizer *tok = NULL;
  qv_cst_vocab *v = NULL;
  qv_constraint *c = NULL;
  int rc = 1;
  double t0 = now_s();
  if (qv_tokenizer_load(tok_path, &tok, &err) || qv_cst_vocab_create(tok, &v, &err)) {
    fprintf(stderr, "quiver constrain: %s\n", err.msg);
    goto out;
  }
  double t1 = now_s();
  if (schemas) { /* one JSON Schema per line: compile each and walk it */
    size_t n;
    char *lines = qv_read_file(schemas, (size_t)64 << 20, &n, &err);
    if (!lines) {
      fprintf(stderr, "quiver constrain: cannot read %s\n", schemas);
      goto out;
    }
    rc = 0;
    walk_stats st = {0};
    uint64_t rng = seed * 0x2545F4914F6CDD1DULL + 1;
    int32_t idx = 0;
    char *save = NULL;
    for (char *line = strtok_r(lines, "\n", &save); line && !rc; line = strtok_r(NULL, "\n", &save), idx++) {
      spec.text = line;
      spec.text_len = strlen(line);
      qv_constraint *sc = NULL;
      qv_error e2 = {0};
      if (qv_constraint_compile(v, &spec, &sc, &e2)) {
        cJSON *msg = cJSON_CreateString(e2.msg);
        char *m = msg ? cJSON_PrintUnformatted(msg) : NULL;
        printf("{\"index\": %d, \"error\": %s, \"code\": %d}\n", idx, m ? m : "\"\"", e2.code);
        free(m);
        cJSON_Delete(msg);
        continue;
      }
      for (int32_t i = 0; i < samples && !rc; i++)
        rc = random_walk(sc, v, qv_tokenizer_eos_id(tok), &rng, max_tokens, verify, &st, idx);
      qv_constraint_release(sc);
    }
    free(lines);
    if (stats)
      fprintf(stderr, "{\"masks\": %lld, \"mask_mean_us\": %.2f}\n", (long long)st.n_masks,
              st.n_masks ? st.mask_s / (double)st.n_masks * 1e6 : 0.0);
    goto out;
  }
  if (qv_constraint_compile(v, &spec, &c, &err)) {
    cJSON *msg = cJSON_CreateString(err.msg);
    char *ms = msg ? cJSON_PrintUnformatted(msg) : NULL;
    printf("{\"error\": %s, \"code\": %d}\n", ms ? ms : "\"\"", err.code);
    free(ms);
    cJSON_Delete(msg);
    rc = 3;
    goto out;
  }
  double t2 = now_s();
  rc = 0;
  walk_stats st = {0};
  if (check) {
    size_t n;
    char *lines = qv_read_file(check, (size_t)64 << 20, &n, &err);
    if (!lines) {
      fprintf(stderr, "quiver constrain: cannot read %s\n", check);
      rc = 1;
      goto out;
    }
    char *save = NULL;
    for (char *line = strtok_r(lines, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
      cJSON *j = cJSON_Parse(line);
      if (cJSON_IsString(j)) rc |= check_line(c, tok, j->valuestring, strlen(j->valuestring));
      cJSON_Delete(j);
    }
    free(lines);
  } else {
    uint64_t rng = seed * 0x2545F4914F6CDD1DULL + 1;
    for (int32_t i = 0; i < samples && !rc; i++)
      rc = random_walk(c, v, qv_tokenizer_eos_id(tok), &rng, max_tokens, verify, &st, 0);
  }
  if (stats)
    fprintf(stderr, "{\"vocab_s\": %.6f, \"compile_s\": %.6f, \"masks\": %lld, \"mask_mean_us\": %.2f}\n", t1 - t0,
            t2 - t1, (long long)st.n_masks, st.n_masks ? st.mask_s / (double)st.n_masks * 1e6 : 0.0);
out:
  qv_constraint_release(c);
  qv_cst_vocab_destroy(v);
  qv_tokenizer_destroy(tok);
  free(file_text);
  return rc;
}
