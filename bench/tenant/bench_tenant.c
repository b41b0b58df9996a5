/* qv-bench-tenant: what tenancy adds to each request on the server's loop thread.
 *
 *   qv-bench-tenant [--reps N]
 *
 * Per request the loop looks up the key (constant time: every key of every tenant is
 * compared), admits and later settles the quota, and orders a route. This times each step
 * with 1 tenant and with the largest config (64 tenants x 16 keys of 47 bytes), and, as a
 * reference measured in the same run, cJSON parsing a small chat request body (work every
 * request already does), so the ratio says how the tenant path compares with it. Prints JSON
 * (median nanoseconds per operation over N samples of 2,000 operations) to stdout. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/bench_metrics.h"
#include "core/build_info.h"
#include "core/util.h"
#include "server/registry.h"
#include "server/route.h"
#include "server/tenant.h"

#define OPS 2000

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof(double), cmp_d);
  return bench_percentile(v, (size_t)n, 50);
}

/* A registry with n_tenants x n_keys keys of 47 bytes, two models and two routes; finalized
 * (the HMAC key index) or not (lookups scan every key: what the index replaced). */
static int make_registry(registry *g, int n_tenants, int n_keys, int finalize) {
  size_t cap = 4096 + (size_t)n_tenants * (size_t)n_keys * 64;
  char *cfg = malloc(cap);
  if (!cfg) return -1;
  int n = snprintf(cfg, cap,
                   "{\"models\":[{\"name\":\"a\",\"path\":\"quiver-tiny\"},{\"name\":\"b\",\"path\":"
                   "\"quiver-tiny\"}],\"routes\":{\"w\":{\"strategy\":\"weighted\",\"targets\":[{"
                   "\"model\":\"a\",\"weight\":90},{\"model\":\"b\",\"weight\":10}]},\"l\":{"
                   "\"strategy\":\"least_loaded\",\"targets\":[\"a\",\"b\"]}},\"tenants\":[");
  for (int t = 0; t < n_tenants; t++) {
    n += snprintf(cfg + n, cap - (size_t)n, "%s{\"name\":\"t%d\",\"requests_per_minute\":1000000000,"
                  "\"tokens_per_minute\":1000000000000,\"keys\":[", t ? "," : "", t);
    for (int k = 0; k < n_keys; k++)
      n += snprintf(cfg + n, cap - (size_t)n, "%s\"sk-%040d-%03d\"", k ? "," : "", t, k);
    n += snprintf(cfg + n, cap - (size_t)n, "]}");
  }
  n += snprintf(cfg + n, cap - (size_t)n, "]}");
  registry_init(g);
  qv_error err = {0};
  int rc = registry_load_json(g, cfg, (size_t)n, &err);
  if (!rc && finalize) rc = registry_finalize(g, &err);
  if (rc) fprintf(stderr, "qv-bench-tenant: %s\n", err.msg);
  free(cfg);
  return rc;
}

typedef struct result {
  double lookup_hit_ns, lookup_miss_ns, admit_settle_ns;
} result;

static void run(const registry *g, int reps, result *out) {
  const tenant_cfg *c = g->tenants;
  const tenant *last = &c->t[c->n - 1];
  const char *hit = last->keys[last->n_keys - 1]; /* the last key compared: worst case */
  char miss[64];
  snprintf(miss, sizeof miss, "sk-%040d-xxx", 0);
  double *s = malloc(sizeof(double) * (size_t)reps);
  volatile int32_t sink = 0;
  for (int r = 0; r < reps; r++) {
    double t0 = now_ns();
    for (int i = 0; i < OPS; i++) sink += tenant_find_key(c, hit);
    s[r] = (now_ns() - t0) / OPS;
  }
  out->lookup_hit_ns = median(s, reps);
  for (int r = 0; r < reps; r++) {
    double t0 = now_ns();
    for (int i = 0; i < OPS; i++) sink += tenant_find_key(c, miss);
    s[r] = (now_ns() - t0) / OPS;
  }
  out->lookup_miss_ns = median(s, reps);
  tenant_quota q;
  tenant_quota_init(&q, last, 0);
  uint64_t clock = 0;
  for (int r = 0; r < reps; r++) {
    double t0 = now_ns();
    for (int i = 0; i < OPS; i++) {
      int64_t reserve = 300, retry;
      clock += 1000;
      sink += (int32_t)tenant_quota_admit(&q, clock, 100, &reserve, &retry);
      tenant_quota_settle(&q, clock, reserve, 150);
    }
    s[r] = (now_ns() - t0) / OPS;
  }
  out->admit_settle_ns = median(s, reps);
  free(s);
  (void)sink;
}

static double time_route(const reg_route *rt, int reps, const int64_t *load) {
  double *s = malloc(sizeof(double) * (size_t)reps);
  int32_t order[REG_MAX_ROUTE_LEN];
  volatile int32_t sink = 0;
  for (int r = 0; r < reps; r++) {
    double t0 = now_ns();
    for (int i = 0; i < OPS; i++) {
      route_order(rt, qv_mix64((uint64_t)i), load, order);
      sink += order[0];
    }
    s[r] = (now_ns() - t0) / OPS;
  }
  double m = median(s, reps);
  free(s);
  (void)sink;
  return m;
}

static double time_json(int reps) {
  static const char body[] =
      "{\"model\":\"w\",\"messages\":[{\"role\":\"system\",\"content\":\"You are terse.\"},"
      "{\"role\":\"user\",\"content\":\"Name three colours of the rainbow.\"}],"
      "\"max_tokens\":32,\"temperature\":0.7,\"stream\":true}";
  double *s = malloc(sizeof(double) * (size_t)reps);
  for (int r = 0; r < reps; r++) {
    double t0 = now_ns();
    for (int i = 0; i < OPS; i++) cJSON_Delete(cJSON_Parse(body));
    s[r] = (now_ns() - t0) / OPS;
  }
  double m = median(s, reps);
  free(s);
  return m;
}

int main(int argc, char **argv) {
  int reps = 50;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
    else {
      fprintf(stderr, "usage: qv-bench-tenant [--reps N]\n");
      return 2;
    }
  }
  if (reps < 1 || reps > 100000) reps = 50;
  registry small, small_linear, big, linear;
  if (make_registry(&small, 1, 1, 1) || make_registry(&small_linear, 1, 1, 0) ||
      make_registry(&big, TENANT_MAX, TENANT_MAX_KEYS, 1) ||
      make_registry(&linear, TENANT_MAX, TENANT_MAX_KEYS, 0))
    return 1;
  result rs, rsl, rb, rl;
  run(&small, reps, &rs);
  run(&small_linear, reps, &rsl);
  run(&big, reps, &rb);
  run(&linear, reps, &rl);
  int64_t load[REG_MAX_MODELS] = {3, 1};
  double weighted = time_route(registry_route_of(&big, "w"), reps, NULL);
  double least = time_route(registry_route_of(&big, "l"), reps, load);
  double json = time_json(reps);
  double la[3] = {0, 0, 0};
  FILE *f = fopen("/proc/loadavg", "r");
  if (f) {
    if (fscanf(f, "%lf %lf %lf", &la[0], &la[1], &la[2]) != 3) la[0] = la[1] = la[2] = 0;
    fclose(f);
  }
  char cpu[256] = "unknown";
  f = fopen("/proc/cpuinfo", "r");
  if (f) {
    char line[512];
    while (fgets(line, sizeof line, f))
      if (!strncmp(line, "model name", 10)) {
        char *p = strchr(line, ':');
        if (p) snprintf(cpu, sizeof cpu, "%s", p + 2);
        cpu[strcspn(cpu, "\n")] = '\0';
        break;
      }
    fclose(f);
  }
  const qv_build_info *b = qv_build_info_get();
  printf("{\n  \"bench\": \"tenant\",\n  \"commit\": \"%s\",\n  \"build_type\": \"%s\",\n", b->commit,
         b->build_type);
  printf("  \"machine\": {\"cpu\": \"%s\", \"online_cpus\": %ld, \"loadavg\": [%.2f, %.2f, %.2f]},\n", cpu,
         sysconf(_SC_NPROCESSORS_ONLN), la[0], la[1], la[2]);
  printf("  \"settings\": {\"reps\": %d, \"ops_per_sample\": %d, \"key_bytes\": 47},\n", reps, OPS);
  printf("  \"ns_per_op_median\": {\n");
  printf("    \"key_lookup_1_key\": %.1f,\n", rs.lookup_hit_ns);
  printf("    \"key_lookup_1024_keys_hit\": %.1f,\n", rb.lookup_hit_ns);
  printf("    \"key_lookup_1024_keys_miss\": %.1f,\n", rb.lookup_miss_ns);
  printf("    \"key_lookup_1024_keys_linear_scan_hit\": %.1f,\n", rl.lookup_hit_ns);
  printf("    \"key_lookup_1_key_linear_scan_hit\": %.1f,\n", rsl.lookup_hit_ns);
  printf("    \"quota_admit_and_settle\": %.1f,\n", rb.admit_settle_ns);
  printf("    \"route_order_weighted\": %.1f,\n", weighted);
  printf("    \"route_order_least_loaded\": %.1f,\n", least);
  printf("    \"reference_cjson_parse_small_chat_body\": %.1f\n  },\n", json);
  printf("  \"ratio_worst_tenant_path_to_json_parse\": %.3f\n}\n",
         (rb.lookup_hit_ns + rb.admit_settle_ns + least) / json);
  registry_deinit(&small);
  registry_deinit(&big);
  registry_deinit(&linear);
  registry_deinit(&small_linear);
  return 0;
}
