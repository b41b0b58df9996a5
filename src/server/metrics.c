/* Prometheus text rendering of the server's counters and histograms (see metrics.h). */
#include "server/metrics.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const double ttft_buckets[METRICS_N_TTFT_BUCKETS] = {
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0};
static const double itl_buckets[METRICS_N_ITL_BUCKETS] = {
    0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5};
/* vLLM's request latency buckets (seconds). */
static const double req_buckets[METRICS_N_REQ_BUCKETS] = {
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
    120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
/* Tokens per request, 1-2-5 steps. */
static const double tok_buckets[METRICS_N_TOK_BUCKETS] = {
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000};
static const char *const finish_names[METRICS_N_FINISH] = {"stop", "length", "abort", "error"};

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

int metrics_add_model(metrics *m, const char *name) {
  char *nm = strdup(name);
  metrics_model *grown = nm ? realloc(m->models, ((size_t)m->n_models + 2) * sizeof *m->models) : NULL;
  if (!grown) {
    free(nm);
    return QV_ENOMEM;
  }
  m->models = grown;
  m->models[m->n_models + 1] = m->models[m->n_models]; /* the no-model entry stays last */
  memset(&m->models[m->n_models], 0, sizeof *m->models);
  m->models[m->n_models].name = nm;
  m->n_models++;
  return 0;
}

void metrics_deinit(metrics *m) {
  for (int32_t i = 0; i < m->n_tenants; i++) free(m->tenants[i].name);
  free(m->tenants);
  if (!m->models) return;
  for (int32_t i = 0; i <= m->n_models; i++) free(m->models[i].name);
  free(m->models);
  memset(m, 0, sizeof *m);
}

static metrics_model *slot(metrics *m, int32_t idx) {
  return &m->models[idx >= 0 && idx < m->n_models ? idx : m->n_models];
}

/* Counts status in a small table of distinct statuses (bounded: statuses beyond it are not
 * counted rather than grow memory). */
static void count_status(int32_t *codes, int64_t *counts, int32_t *n, int status) {
  for (int32_t i = 0; i < *n; i++)
    if (codes[i] == status) {
      counts[i]++;
      return;
    }
  if (*n < METRICS_MAX_STATUS) {
    codes[*n] = status;
    counts[(*n)++] = 1;
  }
}

void metrics_count_request(metrics *m, int32_t model_idx, int status) {
  metrics_model *mm = slot(m, model_idx);
  count_status(mm->status_codes, mm->status_counts, &mm->n_status, status);
}

void metrics_count_utility(metrics *m, int status) {
  count_status(m->util_codes, m->util_counts, &m->n_util, status);
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

int metrics_init_tenants(metrics *m, const char *const *names, int32_t n_tenants) {
  if (n_tenants <= 0) return 0;
  m->tenants = calloc((size_t)n_tenants, sizeof *m->tenants);
  if (!m->tenants) return QV_ENOMEM;
  for (int32_t i = 0; i < n_tenants; i++, m->n_tenants++)
    if (!(m->tenants[i].name = strdup(names[i]))) return QV_ENOMEM;
  return 0;
}

static metrics_model *tenant_slot(metrics *m, int32_t t) {
  return t >= 0 && t < m->n_tenants ? &m->tenants[t] : NULL;
}

void metrics_tenant_count(metrics *m, int32_t tenant, int status) {
  metrics_model *t = tenant_slot(m, tenant);
  if (t) count_status(t->status_codes, t->status_counts, &t->n_status, status);
}

void metrics_tenant_finish(metrics *m, int32_t tenant, int64_t prompt, int64_t generated,
                           double seconds) {
  metrics_model *t = tenant_slot(m, tenant);
  if (!t) return;
  t->prompt_tokens += prompt;
  t->generation_tokens += generated;
  hist_observe(&t->e2e, req_buckets, METRICS_N_REQ_BUCKETS, seconds);
}

void metrics_tenant_limited(metrics *m, int32_t tenant, int which) {
  metrics_model *t = tenant_slot(m, tenant);
  if (t && (which == 0 || which == 1)) t->rate_limited[which]++;
}

void metrics_observe_ttft(metrics *m, int32_t model_idx, double seconds) {
  hist_observe(&slot(m, model_idx)->ttft, ttft_buckets, METRICS_N_TTFT_BUCKETS, seconds);
}

void metrics_observe_itl(metrics *m, int32_t model_idx, double seconds) {
  hist_observe(&slot(m, model_idx)->itl, itl_buckets, METRICS_N_ITL_BUCKETS, seconds);
}

void metrics_observe_finish(metrics *m, int32_t model_idx, const metrics_finish *f) {
  metrics_model *mm = slot(m, model_idx);
  hist_observe(&mm->e2e, req_buckets, METRICS_N_REQ_BUCKETS, f->e2e_s);
  hist_observe(&mm->queue, req_buckets, METRICS_N_REQ_BUCKETS, f->queue_s);
  hist_observe(&mm->prefill, req_buckets, METRICS_N_REQ_BUCKETS, f->prefill_s);
  hist_observe(&mm->decode, req_buckets, METRICS_N_REQ_BUCKETS, f->decode_s);
  hist_observe(&mm->req_prompt, tok_buckets, METRICS_N_TOK_BUCKETS, (double)f->prompt_tokens);
  hist_observe(&mm->req_gen, tok_buckets, METRICS_N_TOK_BUCKETS, (double)f->generation_tokens);
  if (f->reason >= 0 && f->reason < METRICS_N_FINISH) mm->finished[f->reason]++;
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

/* key: the model label's name ("model" for quiver_*, "model_name" for vllm:*). */
static void render_hist_k(sbuf *b, const char *name, const char *key, const char *model,
                          const metrics_hist *h, const double *bounds, int n) {
  int64_t cum = 0;
  for (int i = 0; i < n; i++) {
    cum += h->counts[i];
    sb_printf(b, "%s_bucket{%s=\"%s\",le=\"%g\"} %lld\n", name, key, model, bounds[i],
              (long long)cum);
  }
  sb_printf(b, "%s_bucket{%s=\"%s\",le=\"+Inf\"} %lld\n", name, key, model, (long long)h->count);
  sb_printf(b, "%s_sum{%s=\"%s\"} %.6f\n", name, key, model, h->sum);
  sb_printf(b, "%s_count{%s=\"%s\"} %lld\n", name, key, model, (long long)h->count);
}

static void render_hist(sbuf *b, const char *name, const char *model, const metrics_hist *h,
                        const double *bounds, int n) {
  render_hist_k(b, name, "model", model, h, bounds, n);
}

/* Per-tenant series (label tenant: the tenant's name from the config, never its key). */
static void render_tenants(sbuf *b, const metrics *m) {
  if (m->n_tenants == 0) return;
  char lbl[256];
  sb_printf(b, "# HELP quiver_tenant_requests_total HTTP requests answered, by tenant and status "
               "(403: not allowed, 429: over quota or queue full).\n"
               "# TYPE quiver_tenant_requests_total counter\n");
  for (int32_t i = 0; i < m->n_tenants; i++) {
    label_escape(m->tenants[i].name, lbl, sizeof lbl);
    for (int32_t s = 0; s < m->tenants[i].n_status; s++)
      sb_printf(b, "quiver_tenant_requests_total{tenant=\"%s\",status=\"%d\"} %lld\n", lbl,
                m->tenants[i].status_codes[s], (long long)m->tenants[i].status_counts[s]);
  }
  static const char *const tok[2][2] = {
      {"quiver_tenant_prompt_tokens_total", "Prompt tokens of finished requests, by tenant."},
      {"quiver_tenant_generation_tokens_total", "Generated tokens of finished requests, by tenant."}};
  for (int k = 0; k < 2; k++) {
    sb_printf(b, "# HELP %s %s\n# TYPE %s counter\n", tok[k][0], tok[k][1], tok[k][0]);
    for (int32_t i = 0; i < m->n_tenants; i++) {
      label_escape(m->tenants[i].name, lbl, sizeof lbl);
      sb_printf(b, "%s{tenant=\"%s\"} %lld\n", tok[k][0], lbl,
                (long long)(k ? m->tenants[i].generation_tokens : m->tenants[i].prompt_tokens));
    }
  }
  sb_printf(b, "# HELP quiver_tenant_rate_limited_total Requests refused (429) by a tenant quota.\n"
               "# TYPE quiver_tenant_rate_limited_total counter\n");
  for (int32_t i = 0; i < m->n_tenants; i++) {
    label_escape(m->tenants[i].name, lbl, sizeof lbl);
    for (int k = 0; k < 2; k++)
      sb_printf(b, "quiver_tenant_rate_limited_total{tenant=\"%s\",limit=\"%s\"} %lld\n", lbl,
                k ? "tokens" : "requests", (long long)m->tenants[i].rate_limited[k]);
  }
  sb_printf(b, "# HELP quiver_tenant_request_duration_seconds Admitted generation requests, "
               "arrival to end.\n# TYPE quiver_tenant_request_duration_seconds histogram\n");
  for (int32_t i = 0; i < m->n_tenants; i++) {
    label_escape(m->tenants[i].name, lbl, sizeof lbl);
    render_hist_k(b, "quiver_tenant_request_duration_seconds", "tenant", lbl, &m->tenants[i].e2e,
                  req_buckets, METRICS_N_REQ_BUCKETS);
  }
}

/* The vLLM-named set (one family at a time, every model in it). */
static void render_vllm(sbuf *b, const metrics *m, const metrics_model_state *states) {
  char lbl[256];
  static const struct {
    const char *name, *type, *help;
  } fam[] = {
      {"vllm:num_requests_running", "gauge", "Requests in the engine's running batch."},
      {"vllm:num_requests_waiting", "gauge", "Requests waiting in the engine's queue."},
      {"vllm:kv_cache_usage_perc", "gauge", "KV cache usage: 1 means every block is held."},
      {"vllm:num_preemptions_total", "counter", "Preemptions of running requests (recompute)."},
      {"vllm:prefix_cache_queries_total", "counter", "Prompt tokens looked up in the prefix cache."},
      {"vllm:prefix_cache_hits_total", "counter", "Prompt tokens found in the prefix cache."},
      {"vllm:prompt_tokens_total", "counter", "Prompt tokens of finished requests."},
      {"vllm:generation_tokens_total", "counter", "Generated tokens of finished requests."},
  };
  for (size_t f = 0; f < sizeof fam / sizeof fam[0]; f++) {
    sb_printf(b, "# HELP %s %s\n# TYPE %s %s\n", fam[f].name, fam[f].help, fam[f].name, fam[f].type);
    for (int32_t i = 0; i < m->n_models; i++) {
      const qv_engine_stats *st = states ? states[i].stats : NULL;
      double v = 0;
      switch (f) {
      case 0: v = st ? st->n_running : 0; break;
      case 1: v = st ? st->n_waiting : 0; break;
      case 2: v = st && st->n_kv_blocks > 0 ? (double)st->n_kv_blocks_used / st->n_kv_blocks : 0; break;
      case 3: v = st ? (double)st->n_preemptions : 0; break;
      case 4: v = st ? (double)st->prefix_queries : 0; break;
      case 5: v = st ? (double)st->prefix_hits : 0; break;
      case 6: v = (double)m->models[i].prompt_tokens; break;
      default: v = (double)m->models[i].generation_tokens; break;
      }
      label_escape(m->models[i].name, lbl, sizeof lbl);
      sb_printf(b, "%s{model_name=\"%s\"} %.17g\n", fam[f].name, lbl, v);
    }
  }
  sb_printf(b, "# HELP vllm:request_success_total Finished requests by finish reason.\n"
               "# TYPE vllm:request_success_total counter\n");
  for (int32_t i = 0; i < m->n_models; i++) {
    label_escape(m->models[i].name, lbl, sizeof lbl);
    for (int r = 0; r < METRICS_N_FINISH; r++)
      sb_printf(b, "vllm:request_success_total{model_name=\"%s\",finished_reason=\"%s\"} %lld\n",
                lbl, finish_names[r], (long long)m->models[i].finished[r]);
  }
  static const struct {
    const char *name, *help;
    size_t off; /* offsetof the histogram in metrics_model */
    const double *bounds;
    int n;
  } hists[] = {
      {"vllm:time_to_first_token_seconds", "Request arrival to first token.",
       offsetof(metrics_model, ttft), ttft_buckets, METRICS_N_TTFT_BUCKETS},
      {"vllm:inter_token_latency_seconds", "Time between generated tokens.",
       offsetof(metrics_model, itl), itl_buckets, METRICS_N_ITL_BUCKETS},
      {"vllm:e2e_request_latency_seconds", "Request arrival to finish.",
       offsetof(metrics_model, e2e), req_buckets, METRICS_N_REQ_BUCKETS},
      {"vllm:request_queue_time_seconds", "Time waiting in the engine's queue.",
       offsetof(metrics_model, queue), req_buckets, METRICS_N_REQ_BUCKETS},
      {"vllm:request_prefill_time_seconds", "First scheduled to first token.",
       offsetof(metrics_model, prefill), req_buckets, METRICS_N_REQ_BUCKETS},
      {"vllm:request_decode_time_seconds", "First token to finish.",
       offsetof(metrics_model, decode), req_buckets, METRICS_N_REQ_BUCKETS},
      {"vllm:request_prompt_tokens", "Prompt tokens per finished request.",
       offsetof(metrics_model, req_prompt), tok_buckets, METRICS_N_TOK_BUCKETS},
      {"vllm:request_generation_tokens", "Generated tokens per finished request.",
       offsetof(metrics_model, req_gen), tok_buckets, METRICS_N_TOK_BUCKETS},
  };
  for (size_t h = 0; h < sizeof hists / sizeof hists[0]; h++) {
    sb_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", hists[h].name, hists[h].help, hists[h].name);
    for (int32_t i = 0; i < m->n_models; i++) {
      label_escape(m->models[i].name, lbl, sizeof lbl);
      const metrics_hist *mh = (const metrics_hist *)((const char *)&m->models[i] + hists[h].off);
      render_hist_k(b, hists[h].name, "model_name", lbl, mh, hists[h].bounds, hists[h].n);
    }
  }
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
  sb_printf(&b, "# HELP quiver_utility_requests_total Answers of endpoints that generate nothing "
                "(health, metrics, models, tokenize, version, preflights, unknown routes).\n"
                "# TYPE quiver_utility_requests_total counter\n");
  for (int32_t s = 0; s < m->n_util; s++)
    sb_printf(&b, "quiver_utility_requests_total{status=\"%d\"} %lld\n", m->util_codes[s],
              (long long)m->util_counts[s]);
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
      {"quiver_kv_blocks", "KV cache blocks in the pool (a gauge: no _total suffix)."},
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
  render_vllm(&b, m, states);
  render_tenants(&b, m);
  if (b.oom) {
    free(b.s);
    return NULL;
  }
  if (len) *len = b.len;
  return b.s;
}
