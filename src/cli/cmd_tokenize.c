/* quiver tokenize: encode text to a JSON array of token ids, or (--decode) a JSON array of ids
 * back to text, with any tokenizer quiver loads (model directory, tokenizer.json, .gguf). Input
 * comes from --text or stdin. Errors print one clear line and exit with status 1. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "quiver/tokenizer.h"

#define TOKENIZE_MAX_INPUT ((size_t)256 << 20)

static void usage(FILE *f) {
  fprintf(f,
          "usage: quiver tokenize --tokenizer PATH [--add-special] [--parse-special] [--text T]\n"
          "       quiver tokenize --tokenizer PATH --decode [--skip-special] [--text '[ids]']\n"
          "  PATH is a model directory, a tokenizer.json or a .gguf file.\n"
          "  Encoding prints a JSON array of ids; --decode reads a JSON array of ids and prints\n"
          "  the text. Without --text the input is read from stdin.\n"
          "  --add-special    add BOS/EOS as the tokenizer's post-processor says\n"
          "  --parse-special  match special-token text (e.g. <|im_start|>) in the input\n"
          "  --skip-special   (decode) leave special tokens out of the text\n");
}

static char *read_stdin(size_t *len) {
  size_t cap = 4096, n = 0;
  char *buf = malloc(cap);
  if (!buf) return NULL;
  for (;;) {
    if (n == cap) {
      if (cap >= TOKENIZE_MAX_INPUT) {
        free(buf);
        return NULL;
      }
      char *p = realloc(buf, cap * 2);
      if (!p) {
        free(buf);
        return NULL;
      }
      buf = p;
      cap *= 2;
    }
    size_t got = fread(buf + n, 1, cap - n, stdin);
    n += got;
    if (got == 0) break;
  }
  *len = n;
  return buf;
}

static int do_encode(const qv_tokenizer *tok, const char *text, size_t len, unsigned flags) {
  qv_error err = {0};
  int32_t *ids = NULL;
  size_t n = 0;
  if (qv_tokenizer_encode(tok, text, len, flags, &ids, &n, &err)) {
    fprintf(stderr, "quiver tokenize: %s\n", err.msg);
    return 1;
  }
  putchar('[');
  for (size_t i = 0; i < n; i++) printf(i ? ", %d" : "%d", ids[i]);
  printf("]\n");
  free(ids);
  return 0;
}

static int do_decode(const qv_tokenizer *tok, const char *text, size_t len, unsigned flags) {
  cJSON *arr = cJSON_ParseWithLength(text, len);
  if (!cJSON_IsArray(arr)) {
    cJSON_Delete(arr);
    fprintf(stderr, "quiver tokenize: --decode expects a JSON array of token ids\n");
    return 1;
  }
  int n = cJSON_GetArraySize(arr), i = 0;
  int32_t *ids = malloc((size_t)(n > 0 ? n : 1) * sizeof *ids);
  if (!ids) {
    cJSON_Delete(arr);
    fprintf(stderr, "quiver tokenize: out of memory\n");
    return 1;
  }
  const cJSON *e;
  cJSON_ArrayForEach(e, arr) {
    double v = cJSON_IsNumber(e) ? e->valuedouble : -1;
    if (!cJSON_IsNumber(e) || v < 0 || v >= qv_tokenizer_vocab_size(tok) || v != floor(v)) {
      fprintf(stderr, "quiver tokenize: element %d is not a token id in [0, %d)\n", i, qv_tokenizer_vocab_size(tok));
      free(ids);
      cJSON_Delete(arr);
      return 1;
    }
    ids[i++] = (int32_t)v;
  }
  cJSON_Delete(arr);
  qv_error err = {0};
  char *out = NULL;
  size_t out_len = 0;
  int rc = qv_tokenizer_decode(tok, ids, (size_t)i, flags, &out, &out_len, &err);
  free(ids);
  if (rc) {
    fprintf(stderr, "quiver tokenize: %s\n", err.msg);
    return 1;
  }
  fwrite(out, 1, out_len, stdout);
  putchar('\n');
  free(out);
  return 0;
}

int cli_tokenize(int argc, char **argv) {
  const char *path = NULL, *text = NULL;
  unsigned flags = 0;
  int decode = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      return 0;
    } else if (!strcmp(a, "--tokenizer") && i + 1 < argc) {
      path = argv[++i];
    } else if (!strcmp(a, "--text") && i + 1 < argc) {
      text = argv[++i];
    } else if (!strcmp(a, "--add-special")) {
      flags |= QV_TOK_ADD_SPECIAL;
    } else if (!strcmp(a, "--parse-special")) {
      flags |= QV_TOK_PARSE_SPECIAL;
    } else if (!strcmp(a, "--skip-special")) {
      flags |= QV_TOK_SKIP_SPECIAL;
    } else if (!strcmp(a, "--decode")) {
      decode = 1;
    } else {
      fprintf(stderr, "quiver tokenize: unknown or incomplete option '%s'\n", a);
      usage(stderr);
      return 1;
    }
  }
  if (!path) {
    fprintf(stderr, "quiver tokenize: --tokenizer PATH is required\n");
    usage(stderr);
    return 1;
  }
  qv_error err = {0};
  qv_tokenizer *tok = NULL;
  if (qv_tokenizer_load(path, &tok, &err)) {
    fprintf(stderr, "quiver tokenize: %s\n", err.msg);
    return 1;
  }
  char *input = NULL;
  size_t len = 0;
  if (text) {
    len = strlen(text);
  } else {
    input = read_stdin(&len);
    if (!input) {
      fprintf(stderr, "quiver tokenize: cannot read stdin (out of memory or over 256 MiB)\n");
      qv_tokenizer_destroy(tok);
      return 1;
    }
    text = input;
  }
  int rc = decode ? do_decode(tok, text, len, flags) : do_encode(tok, text, len, flags);
  free(input);
  qv_tokenizer_destroy(tok);
  return rc;
}
