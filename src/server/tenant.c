/* Tenants: config parsing, key lookup, permissions and quota buckets (see tenant.h). */
#include "server/tenant.h"

#include <math.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/auth.h"
#include "server/registry.h"

static void tenant_free(tenant *t) {
  free(t->name);
  for (int32_t i = 0; i < t->n_keys; i++) {
    OPENSSL_cleanse(t->keys[i], strlen(t->keys[i])); /* no key left in freed memory */
    free(t->keys[i]);
  }
  for (int32_t i = 0; i < t->n_models; i++) free(t->models[i]);
  for (int32_t i = 0; i < t->n_endpoints; i++) free(t->endpoints[i]);
  memset(t, 0, sizeof *t);
}

void tenant_cfg_destroy(tenant_cfg *c) {
  if (!c) return;
  for (int32_t i = 0; i < c->n; i++) tenant_free(&c->t[i]);
  free(c->index);
  EVP_MAC_CTX_free(c->mac);
  OPENSSL_cleanse(c->secret, sizeof c->secret);
  free(c);
}

/* A list of strings into arr[cap]; what is a string list for the message. */
static int load_strings(const cJSON *a, char **arr, int32_t *n, int32_t cap, int32_t max_len,
                        const char *tname, const char *what, qv_error *err) {
  if (!cJSON_IsArray(a))
    return qv_error_set(err, QV_EINVAL, "config: tenant '%s': '%s' must be an array of strings",
                        tname, what);
  const cJSON *it;
  cJSON_ArrayForEach(it, a) {
    if (!cJSON_IsString(it) || !it->valuestring[0] || strlen(it->valuestring) > (size_t)max_len)
      return qv_error_set(err, QV_EINVAL,
                          "config: tenant '%s': '%s' must hold non-empty strings of at most %d "
                          "bytes",
                          tname, what, max_len);
    if (*n >= cap)
      return qv_error_set(err, QV_ELIMIT, "config: tenant '%s': at most %d %s", tname, cap, what);
    if (!(arr[*n] = strdup(it->valuestring))) return qv_error_set(err, QV_ENOMEM, "out of memory");
    (*n)++;
  }
  return 0;
}

static int load_limit(const cJSON *o, const char *k, int64_t *out, const char *tname,
                      qv_error *err) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
  if (!v) return 0;
  if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < 1 ||
      v->valuedouble > (double)TENANT_MAX_LIMIT)
    return qv_error_set(err, QV_EINVAL,
                        "config: tenant '%s': '%s' must be an integer in [1, %lld]", tname, k,
                        (long long)TENANT_MAX_LIMIT);
  *out = (int64_t)v->valuedouble;
  return 0;
}

static int load_one(tenant *t, const cJSON *o, qv_error *err) {
  static const char *const known[] = {"name",      "keys",  "models", "endpoints",
                                      "requests_per_minute", "tokens_per_minute", "window_s", NULL};
  if (!cJSON_IsObject(o)) return qv_error_set(err, QV_EINVAL, "config: each tenant must be an object");
  const cJSON *name = cJSON_GetObjectItemCaseSensitive(o, "name");
  if (!cJSON_IsString(name) || !registry_valid_name(name->valuestring))
    return qv_error_set(err, QV_EINVAL,
                        "config: each tenant needs a 'name' (1-128 printable bytes, no spaces "
                        "or quotes)");
  if (!(t->name = strdup(name->valuestring))) return qv_error_set(err, QV_ENOMEM, "out of memory");
  const cJSON *it;
  cJSON_ArrayForEach(it, o) {
    int ok = 0;
    for (const char *const *k = known; *k; k++) ok |= !strcmp(*k, it->string);
    if (!ok)
      return qv_error_set(err, QV_EINVAL, "config: tenant '%s': unknown key '%.64s'", t->name,
                          it->string);
  }
  const cJSON *keys = cJSON_GetObjectItemCaseSensitive(o, "keys");
  if (!keys) return qv_error_set(err, QV_EINVAL, "config: tenant '%s' has no 'keys'", t->name);
  int rc = load_strings(keys, t->keys, &t->n_keys, TENANT_MAX_KEYS, 512, t->name, "keys", err);
  if (rc) return rc;
  if (t->n_keys == 0) return qv_error_set(err, QV_EINVAL, "config: tenant '%s' has no keys", t->name);
  const cJSON *models = cJSON_GetObjectItemCaseSensitive(o, "models");
  t->all_models = models == NULL;
  if (models &&
      (rc = load_strings(models, t->models, &t->n_models, TENANT_MAX_NAMES, 128, t->name, "models", err)))
    return rc;
  const cJSON *eps = cJSON_GetObjectItemCaseSensitive(o, "endpoints");
  t->all_endpoints = eps == NULL;
  if (eps && (rc = load_strings(eps, t->endpoints, &t->n_endpoints, TENANT_MAX_NAMES, 256, t->name,
                                "endpoints", err)))
    return rc;
  for (int32_t i = 0; i < t->n_endpoints; i++)
    if (t->endpoints[i][0] != '/')
      return qv_error_set(err, QV_EINVAL, "config: tenant '%s': endpoint '%.100s' must start with /",
                          t->name, t->endpoints[i]);
  if ((rc = load_limit(o, "requests_per_minute", &t->rpm, t->name, err))) return rc;
  if ((rc = load_limit(o, "tokens_per_minute", &t->tpm, t->name, err))) return rc;
  t->window_s = 60;
  const cJSON *w = cJSON_GetObjectItemCaseSensitive(o, "window_s");
  if (w) {
    if (!cJSON_IsNumber(w) || !(w->valuedouble >= 0.001 && w->valuedouble <= 86400))
      return qv_error_set(err, QV_EINVAL, "config: tenant '%s': 'window_s' must be a number in "
                          "[0.001, 86400]", t->name);
    t->window_s = w->valuedouble;
  }
  return 0;
}

int tenant_cfg_load_json(tenant_cfg **out, const cJSON *tenants, qv_error *err) {
  if (!cJSON_IsArray(tenants))
    return qv_error_set(err, QV_EINVAL, "config: 'tenants' must be an array of objects");
  if (!*out && !(*out = calloc(1, sizeof **out)))
    return qv_error_set(err, QV_ENOMEM, "out of memory");
  tenant_cfg *c = *out;
  const cJSON *o;
  cJSON_ArrayForEach(o, tenants) {
    if (c->n >= TENANT_MAX) return qv_error_set(err, QV_ELIMIT, "config: at most %d tenants", TENANT_MAX);
    /* Counted before parsing so that what a failed parse allocated is freed with the rest. */
    tenant *t = &c->t[c->n++];
    int rc = load_one(t, o, err);
    if (rc) return rc;
  }
  return 0;
}

/* The index hash of key[len]: 0 on success. A copy of the keyed context (OpenSSL's one-shot
 * HMAC fetches the algorithm on every call, several microseconds). */
static int key_hash(const tenant_cfg *c, const char *key, size_t len, uint64_t *h) {
  unsigned char md[EVP_MAX_MD_SIZE];
  size_t md_len = 0;
  EVP_MAC_CTX *m = c->mac ? EVP_MAC_CTX_dup(c->mac) : NULL;
  int ok = m && EVP_MAC_update(m, (const unsigned char *)key, len) &&
           EVP_MAC_final(m, md, &md_len, sizeof md) && md_len >= 8;
  EVP_MAC_CTX_free(m);
  if (!ok) return -1;
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v = v << 8 | md[i];
  *h = v;
  return 0;
}

static int cmp_ix(const void *a, const void *b) {
  uint64_t x = ((const tenant_key_ix *)a)->h, y = ((const tenant_key_ix *)b)->h;
  return x < y ? -1 : x > y;
}

static int build_index(tenant_cfg *c, qv_error *err) {
  free(c->index);
  c->index = NULL;
  c->n_index = 0;
  int32_t n = 0;
  for (int32_t i = 0; i < c->n; i++) n += c->t[i].n_keys;
  if (RAND_bytes(c->secret, (int)sizeof c->secret) != 1)
    return qv_error_set(err, QV_EIO, "tenants: no random bytes for the key index");
  EVP_MAC_CTX_free(c->mac);
  EVP_MAC *hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
  c->mac = hmac ? EVP_MAC_CTX_new(hmac) : NULL;
  EVP_MAC_free(hmac); /* the context keeps its own reference */
  OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0),
                         OSSL_PARAM_construct_end()};
  if (!c->mac || !EVP_MAC_init(c->mac, c->secret, sizeof c->secret, params))
    return qv_error_set(err, QV_EIO, "tenants: HMAC-SHA256 unavailable");
  c->index = calloc((size_t)n + 1, sizeof *c->index);
  if (!c->index) return qv_error_set(err, QV_ENOMEM, "out of memory");
  for (int32_t i = 0; i < c->n; i++)
    for (int32_t k = 0; k < c->t[i].n_keys; k++) {
      tenant_key_ix *e = &c->index[c->n_index++];
      e->tenant = i;
      e->key = k;
      if (key_hash(c, c->t[i].keys[k], strlen(c->t[i].keys[k]), &e->h))
        return qv_error_set(err, QV_EIO, "tenants: HMAC-SHA256 failed");
    }
  qsort(c->index, (size_t)c->n_index, sizeof *c->index, cmp_ix);
  return 0;
}

int tenant_cfg_finalize(tenant_cfg *c, const registry *reg, qv_error *err) {
  for (int32_t i = 0; i < tenant_count(c); i++) {
    const tenant *t = &c->t[i];
    for (int32_t j = 0; j < i; j++)
      if (!strcmp(t->name, c->t[j].name))
        return qv_error_set(err, QV_EINVAL, "tenant '%s' is defined twice", t->name);
    for (int32_t m = 0; m < t->n_models; m++) {
      int32_t idx[REG_MAX_ROUTE_LEN];
      if (registry_resolve(reg, t->models[m], idx, REG_MAX_ROUTE_LEN) < 1)
        return qv_error_set(err, QV_EINVAL, "tenant '%s' allows unknown model, alias or route '%s'",
                            t->name, t->models[m]);
    }
    /* Keys name no one in messages: a key is identified by its tenant and position. */
    for (int32_t k = 0; k < t->n_keys; k++) {
      for (int32_t a = 0; a < reg->n_api_keys; a++)
        if (!strcmp(t->keys[k], reg->api_keys[a]))
          return qv_error_set(err, QV_EINVAL,
                              "tenant '%s': key #%d is also an unrestricted api key", t->name, k + 1);
      for (int32_t j = 0; j <= i; j++)
        for (int32_t l = 0; l < (j == i ? k : c->t[j].n_keys); l++)
          if (!strcmp(t->keys[k], c->t[j].keys[l]))
            return qv_error_set(err, QV_EINVAL, "tenant '%s': key #%d is also key #%d of tenant '%s'",
                                t->name, k + 1, l + 1, c->t[j].name);
    }
  }
  return c ? build_index(c, err) : 0;
}

/* Constant-time equality selected into found by mask, without a branch on the result. */
static int32_t select_eq(const char *key, size_t klen, const char *stored, int32_t idx,
                         int32_t found) {
  int32_t mask = -(int32_t)auth_equal(key, klen, stored, strlen(stored)); /* all ones on a match */
  return (found & ~mask) | (idx & mask);
}

int32_t tenant_find_key(const tenant_cfg *c, const char *key) {
  if (!c || !key) return -1;
  while (*key == ' ') key++;
  size_t klen = strlen(key);
  if (klen == 0) return -1;
  int32_t found = -1;
  uint64_t h;
  if (!c->index || key_hash(c, key, klen, &h)) {
    /* Not finalized (or no HMAC): every key is compared. */
    for (int32_t i = 0; i < c->n; i++)
      for (int32_t k = 0; k < c->t[i].n_keys; k++) found = select_eq(key, klen, c->t[i].keys[k], i, found);
    return found;
  }
  int32_t lo = 0, hi = c->n_index; /* the first entry with index h >= h */
  while (lo < hi) {
    int32_t mid = lo + (hi - lo) / 2;
    if (c->index[mid].h < h) lo = mid + 1;
    else hi = mid;
  }
  for (int32_t i = lo; i < c->n_index && c->index[i].h == h; i++) {
    const tenant_key_ix *e = &c->index[i];
    found = select_eq(key, klen, c->t[e->tenant].keys[e->key], e->tenant, found);
  }
  return found;
}

static int in_list(char *const *list, int32_t n, const char *s) {
  for (int32_t i = 0; i < n; i++)
    if (!strcmp(list[i], s)) return 1;
  return 0;
}

int tenant_allows_model(const tenant_cfg *c, int32_t idx, const registry *reg, const char *name) {
  if (!c || idx < 0 || idx >= c->n || c->t[idx].all_models) return 1;
  const tenant *t = &c->t[idx];
  if (!name) return 0;
  if (in_list(t->models, t->n_models, name)) return 1;
  for (int32_t i = 0; i < reg->n_aliases; i++)
    if (!strcmp(reg->aliases[i].name, name)) return in_list(t->models, t->n_models, reg->aliases[i].target);
  return 0;
}

int tenant_allows_endpoint(const tenant_cfg *c, int32_t idx, const char *path) {
  if (!c || idx < 0 || idx >= c->n || c->t[idx].all_endpoints) return 1;
  const tenant *t = &c->t[idx];
  for (int32_t i = 0; i < t->n_endpoints; i++) {
    size_t n = strlen(t->endpoints[i]);
    if (!strncmp(path, t->endpoints[i], n) && (path[n] == '\0' || path[n] == '/')) return 1;
  }
  return 0;
}

/* ---- quotas ---- */

static void bucket_init(quota_bucket *b, int64_t limit, double window_s, uint64_t now_ns) {
  b->cap = (double)limit;
  b->level = b->cap;
  b->rate = limit > 0 ? b->cap / window_s : 0;
  b->t_ns = now_ns;
}

/* Brings the level up to now (a clock that went backwards refills nothing). */
static void bucket_refill(quota_bucket *b, uint64_t now_ns) {
  if (now_ns > b->t_ns) {
    b->level += b->rate * (double)(now_ns - b->t_ns) / 1e9;
    if (b->level > b->cap) b->level = b->cap;
  }
  b->t_ns = now_ns;
}

/* Seconds until the bucket holds need (0 when it does now). */
static double bucket_wait(const quota_bucket *b, double need) {
  return b->level >= need ? 0 : (need - b->level) / b->rate;
}

static int64_t retry_seconds(double w) { return w < 1 ? 1 : (int64_t)ceil(w); }

void tenant_quota_init(tenant_quota *q, const tenant *t, uint64_t now_ns) {
  bucket_init(&q->req, t->rpm, t->window_s, now_ns);
  bucket_init(&q->tok, t->tpm, t->window_s, now_ns);
}

tenant_admit_rc tenant_quota_admit(tenant_quota *q, uint64_t now_ns, int64_t must_tokens,
                                   int64_t *reserve, int64_t *retry_after_s) {
  *retry_after_s = 0;
  if (q->tok.cap > 0) {
    if ((double)must_tokens > q->tok.cap) return TENANT_ADMIT_TOO_LARGE;
    if ((double)*reserve > q->tok.cap) *reserve = (int64_t)q->tok.cap;
  }
  double wait_req = 0, wait_tok = 0;
  if (q->req.cap > 0) {
    bucket_refill(&q->req, now_ns);
    wait_req = bucket_wait(&q->req, 1);
  }
  if (q->tok.cap > 0) {
    bucket_refill(&q->tok, now_ns);
    wait_tok = bucket_wait(&q->tok, (double)*reserve);
  }
  if (wait_req > 0 || wait_tok > 0) {
    *retry_after_s = retry_seconds(wait_req > wait_tok ? wait_req : wait_tok);
    return wait_req >= wait_tok ? TENANT_ADMIT_REQUESTS : TENANT_ADMIT_TOKENS;
  }
  if (q->req.cap > 0) q->req.level -= 1;
  if (q->tok.cap > 0) q->tok.level -= (double)*reserve;
  return TENANT_ADMIT_OK;
}

int64_t tenant_quota_peek_requests(tenant_quota *q, uint64_t now_ns) {
  if (q->req.cap <= 0) return 0;
  bucket_refill(&q->req, now_ns);
  double w = bucket_wait(&q->req, 1);
  return w > 0 ? retry_seconds(w) : 0;
}

void tenant_limit_message(const tenant *t, tenant_admit_rc rc, int64_t must, int64_t retry_s,
                          char *msg, size_t cap) {
  if (rc == TENANT_ADMIT_TOO_LARGE) {
    snprintf(msg, cap,
             "Request too large for tenant '%s': it needs %lld tokens (prompt + max_tokens) and "
             "the limit is %lld tokens per %g s.",
             t->name, (long long)must, (long long)t->tpm, t->window_s);
    return;
  }
  int tokens = rc == TENANT_ADMIT_TOKENS;
  snprintf(msg, cap, "Rate limit reached for tenant '%s' on %s: limit %lld per %g s. Please retry "
           "after %lld s.",
           t->name, tokens ? "tokens" : "requests", (long long)(tokens ? t->tpm : t->rpm),
           t->window_s, (long long)retry_s);
}

void tenant_quota_settle(tenant_quota *q, uint64_t now_ns, int64_t reserved, int64_t used) {
  if (q->tok.cap <= 0) return;
  bucket_refill(&q->tok, now_ns);
  q->tok.level += (double)(reserved - used);
  if (q->tok.level > q->tok.cap) q->tok.level = q->tok.cap;
}

void tenant_quota_remaining(tenant_quota *q, uint64_t now_ns, int64_t *requests, int64_t *tokens) {
  bucket_refill(&q->req, now_ns);
  bucket_refill(&q->tok, now_ns);
  *requests = q->req.cap > 0 ? (int64_t)floor(q->req.level) : -1;
  *tokens = q->tok.cap > 0 ? (int64_t)floor(q->tok.level) : -1;
}
