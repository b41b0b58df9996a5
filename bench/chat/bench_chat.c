/* qv-bench-chat: how long template loading, rendering and tool-call parsing take on the CPU.
 *
 *   qv-bench-chat [--reps N] [--fixtures DIR] [--templates DIR]
 *
 * For every template in the shared chat-templates folder: parse time, and render time over the
 * committed conversation corpus (all conversations that render, one pass = one sample). As a
 * reference measured in the same run, cJSON parsing of the same corpus (the work a request
 * already does before templating), so the ratio says how templating compares with it. Prints
 * JSON (medians in microseconds) to stdout. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "chat/chat.h"
#include "core/util.h"

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof(double), cmp_d);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int main(int argc, char **argv) {
  int reps = 50;
  const char *fixtures = "tests/fixtures/chat", *tdir = NULL;
  char tbuf[1024];
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--fixtures") && i + 1 < argc) fixtures = argv[++i];
    else if (!strcmp(argv[i], "--templates") && i + 1 < argc) tdir = argv[++i];
    else {
      fprintf(stderr, "usage: qv-bench-chat [--reps N] [--fixtures DIR] [--templates DIR]\n");
      return 2;
    }
  }
  if (reps < 1 || reps > 100000) reps = 50;
  if (!tdir) {
    const char *sh = getenv("QV_SHARED_DIR");
    snprintf(tbuf, sizeof tbuf, "%s/data/chat-templates", sh ? sh : "../shared");
    tdir = tbuf;
  }
  char path[2048];
  snprintf(path, sizeof path, "%s/conversations.json", fixtures);
  char *corpus_text = qv_read_file(path, (size_t)1 << 30, NULL, NULL);
  cJSON *corpus = corpus_text ? cJSON_Parse(corpus_text) : NULL;
  if (!corpus) {
    fprintf(stderr, "qv-bench-chat: cannot read %s\n", path);
    free(corpus_text);
    return 2;
  }
  double *samples = malloc(sizeof(double) * (size_t)reps);
  /* reference: parsing the corpus JSON */
  for (int r = 0; r < reps; r++) {
    double t0 = now_us();
    cJSON *j = cJSON_Parse(corpus_text);
    samples[r] = now_us() - t0;
    cJSON_Delete(j);
  }
  double ref = median(samples, reps);
  printf("{\n  \"bench\": \"chat\",\n  \"reps\": %d,\n  \"conversations\": %d,\n", reps, cJSON_GetArraySize(corpus));
  printf("  \"reference_cjson_parse_corpus_us\": %.1f,\n  \"templates\": [\n", ref);
  DIR *d = opendir(tdir);
  if (!d) {
    fprintf(stderr, "qv-bench-chat: cannot open %s\n", tdir);
    return 2;
  }
  struct dirent *e;
  int first = 1;
  while ((e = readdir(d))) {
    if (!strstr(e->d_name, ".jinja")) continue;
    snprintf(path, sizeof path, "%s/%s", tdir, e->d_name);
    char *src = qv_read_file(path, (size_t)1 << 30, NULL, NULL);
    if (!src) continue;
    qv_error err = {0};
    qv_chat_template *t = NULL;
    for (int r = 0; r < reps; r++) {
      double t0 = now_us();
      qv_chat_template_load_string(src, NULL, &t, &err);
      samples[r] = now_us() - t0;
      if (r + 1 < reps) qv_chat_template_destroy(t);
    }
    double load_us = median(samples, reps);
    size_t bytes = 0;
    int n_ok = 0;
    for (int r = 0; r < reps; r++) {
      double t0 = now_us();
      const cJSON *c;
      n_ok = 0;
      bytes = 0;
      cJSON_ArrayForEach(c, corpus) {
        char *out = NULL;
        size_t n = 0;
        if (qv_chat_template_render(t, cJSON_GetObjectItem(c, "vars"), &out, &n, &err) == 0) {
          n_ok++;
          bytes += n;
        }
        free(out);
      }
      samples[r] = now_us() - t0;
    }
    double render_us = median(samples, reps);
    printf("%s    {\"template\": \"%s\", \"load_us\": %.1f, \"render_corpus_us\": %.1f, "
           "\"renders\": %d, \"output_bytes\": %zu, \"render_per_conversation_us\": %.2f, "
           "\"ratio_vs_reference\": %.2f}",
           first ? "" : ",\n", e->d_name, load_us, render_us, n_ok, bytes,
           render_us / (cJSON_GetArraySize(corpus) ? cJSON_GetArraySize(corpus) : 1), render_us / ref);
    first = 0;
    qv_chat_template_destroy(t);
    free(src);
  }
  closedir(d);
  printf("\n  ]\n}\n");
  free(samples);
  cJSON_Delete(corpus);
  free(corpus_text);
  return 0;
}
