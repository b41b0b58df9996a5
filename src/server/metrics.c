/* Prometheus text rendering of the server's counters and histograms (see metrics.h). */
#include "server/metrics.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const double ttft_buckets[METRICS_N_TTFT_BUCKETS] = {
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0};
static const double itl_buckets[METRICS_N_ITL_BUCKETS] = {
    0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5};

int metrics_init(metrics *m, const char *const *model_names, int32_t n_models) {
  memset(m, 0, sizeof *m);
  m->models = calloc((size_t)n_models + 1, sizeof *m->models);
  if (!m->models) return QV_ENOMEM;
  m->n_models = n_models;
  for (int32_t i = 0; i <= n_models; i++) {
    m->models[i].name = strdup(i < n_models ? model_names[i] : "");
    if (!m->models[i].name) {
      metrics_deinit(m);
      return QV_ENOMEM;
    }
  }
  return 0;
}

void metrics_deinit(metrics *m) {
  if (!m->models) return;
  for (int32_t i = 0; i <= m->n_models; i++) free(m->models[i].name);
  free(m->models);
  memset(m, 0, sizeof *m);
}

static metrics_model *slot(metrics *m, int32_t idx) {
  return &m->models[idx >= 0 && idx < m->n_models ? idx : m->n_models];
}

void metrics_count_request(metrics *m, int32_t model_idx, int status) {
  metrics_model *mm = slot(m, model_idx);
  for (int32_t i = 0; i < mm->n_status; i++)
    if (mm->status_codes[i] == status) {
      mm->status_counts[i]++;
      return;
    }
  if (mm->n_status < METRICS_MAX_STATUS) {
    mm->status_codes[mm->n_status] = status;
    mm->status_counts[mm->n_status++] = 1;
  }
}

void metrics_add_tokens(metrics *m, int32_t model_idx, int64_t prompt, int64_t generated) {
  metrics_model *mm = slot(m, model_idx);
  mm->prompt_tokens += prompt;
  mm->generation_tokens += generated;
}

static void hist_observe(metrics_hist *h, const double *bounds, int n, double v) {
  int b = 0;
  while (b < n && v > bounds[b]) b++;
  h->counts[b]++; /* b == n: only in +Inf */
  h->count++;
  h->sum += v;
}

void metrics_observe_ttft(metrics *m, int32_t model_idx, double seconds) {
  hist_observe(&slot(m, model_idx)->ttft, ttft_buckets, METRICS_N_TTFT_BUCKETS, seconds);
}

void metrics_observe_itl(metrics *m, int32_t model_idx, double seconds) {
  hist_observe(&slot(m, model_idx)->itl, itl_buckets, METRICS_N_ITL_BUCKETS, seconds);
}

typedef struct sbuf {
  char *s;
  size_t len, cap;
  int oom;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
  if (b->oom) return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->s + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0) {
      b->oom = 1;
      return;
    }
    if ((size_t)n < b->cap - b->len) {
      b->len += (size_t)n;
      return;
    }
    size_t ncap = b->cap * 2 + (size_t)n;
    char *ns = realloc(b->s, ncap);
    if (!ns) {
      b->oom = 1;
      return;
    }
    b->s = ns;
    b->cap = ncap;
  }
}

/* Label values escape backslash, double quote and newline. */
static void label_escape(const char *in, char *out, size_t cap) {
  size_t o = 0;
  for (; *in && o + 3 < cap; in++) {
    if (*in == '\\' || *in == '"') {
      out[o++] = '\\';
      out[o++] = *in;
    } else if (*in == '\n') {
      out[o++] = '\\';
      out[o++] = 'n';
    } else {
      out[o++] = *in;
    }
  }
  out[o] = '\0';
}

static void render_hist(sbuf *b, const char *name, const char *model, const metrics_hist *h,
                        const double *bounds, int n) {
  int64_t cum = 0;
  for (int i = 0; i < n; i++) {
    cum += h->counts[i];
    sb_printf(b, "%s_bucket{model=\"%s\",le=\"%g\"} %lld\n", name, model, bounds[i],
              (long long)cum);
  }
  sb_printf(b, "%s_bucket{model=\"%s\",le=\"+Inf\"} %lld\n", name, model, (long long)h->count);
  sb_printf(b, "%s_sum{model=\"%s\"} %.6f\n", name, model, h->sum);
  sb_printf(b, "%s_count{model=\"%s\"} %lld\n", name, model, (long long)h->count);
}

char *metrics_render(const metrics *m, const metrics_model_state *states, size_t *len) {
  sbuf b = {malloc(4096), 0, 4096, 0};
  if (!b.s) return NULL;
  char lbl[256];
  sb_printf(&b, "# HELP quiver_requests_total HTTP requests answered, by model and status.\n"
                "# TYPE quiver_requests_total counter\n");
  for (int32_t i = 0; i <= m->n_models; i++) {
    label_escape(m->models[i].name, lbl, sizeof lbl);
    for (int32_t s = 0; s < m->models[i].n_status; s++)
      sb_printf(&b, "quiver_requests_total{model=\"%s\",status=\"%d\"} %lld\n", lbl,
                m->models[i].status_codes[s], (long long)m->models[i].status_counts[s]);
  }
  sb_printf(&b, "# HELP quiver_prompt_tokens_total Prompt tokens of finished requests.\n"
                "# TYPE quiver_prompt_tokens_total counter\n");
  for (int32_t i = 0; i < m->n_models; i++) {
    label_escape(m->models[i].name, lbl, sizeof lbl);
    sb_printf(&b, "quiver_prompt_tokens_total{model=\"%s\"} %lld\n", lbl,
              (long long)m->models[i].prompt_tokens);
  }
  sb_printf(&b, "# HELP quiver_generation_tokens_total Generated tokens of finished requests.\n"
                "# TYPE quiver_generation_tokens_total counter\n");
  for (int32_t i = 0; i < m->n_models; i++) {
    label_escape(m->models[i].name, lbl, sizeof lbl);
    sb_printf(&b, "quiver_generation_tokens_total{model=\"%s\"} %lld\n", lbl,
              (long long)m->models[i].generation_tokens);
  }
  sb_printf(&b, "# HELP quiver_time_to_first_token_seconds Request arrival to first token.\n"
                "# TYPE quiver_time_to_first_token_seconds histogram\n");
  for (int32_t i = 0; i < m->n_models; i++) {
    label_escape(m->models[i].name, lbl, sizeof lbl);
    render_hist(&b, "quiver_time_to_first_token_seconds", lbl, &m->models[i].ttft, ttft_buckets,
                METRICS_N_TTFT_BUCKETS);
  }
  sb_printf(&b, "# HELP quiver_inter_token_latency_seconds Time between streamed tokens.\n"
                "# TYPE quiver_inter_token_latency_seconds histogram\n");
  for (int32_t i = 0; i < m->n_models; i++) {
    label_escape(m->models[i].name, lbl, sizeof lbl);
    render_hist(&b, "quiver_inter_token_latency_seconds", lbl, &m->models[i].itl, itl_buckets,
                METRICS_N_ITL_BUCKETS);
  }
  static const struct {
    const char *name, *help;
  } gauges[] = {
      {"quiver_model_ready", "1 when the model is loaded and serving."},
      {"quiver_requests_running", "Requests being computed by the engine."},
      {"quiver_requests_waiting", "Requests queued in the engine."},
      {"quiver_kv_blocks_total", "KV cache blocks in the pool."},
      {"quiver_kv_blocks_used", "KV cache blocks held by sequences."},
      {"quiver_prefix_cache_hit_rate", "Prompt tokens served from the prefix cache / looked up."},
  };
  for (size_t g = 0; g < sizeof gauges / sizeof gauges[0]; g++) {
    sb_printf(&b, "# HELP %s %s\n# TYPE %s gauge\n", gauges[g].name, gauges[g].help,
              gauges[g].name);
    for (int32_t i = 0; i < m->n_models; i++) {
      const qv_engine_stats *st = states ? states[i].stats : NULL;
      double v = 0;
      if (g == 0) v = states ? states[i].ready : 0;
      else if (st) {
        switch (g) {
        case 1: v = st->n_running; break;
        case 2: v = st->n_waiting; break;
        case 3: v = st->n_kv_blocks; break;
        case 4: v = st->n_kv_blocks_used; break;
        default:
          v = st->prefix_queries ? (double)st->prefix_hits / (double)st->prefix_queries : 0.0;
        }
      }
      label_escape(m->models[i].name, lbl, sizeof lbl);
      sb_printf(&b, "%s{model=\"%s\"} %.6g\n", gauges[g].name, lbl, v);
    }
  }
  if (b.oom) {
    free(b.s);
    return NULL;
  }
  if (len) *len = b.len;
  return b.s;
}
