/* Tenants: API keys mapped to who is calling (a tenant name for metrics, never the key), what
 * they may use (model, alias and route names; HTTP endpoints) and how much (requests and
 * tokens per window, usually a minute).
 *
 * Config file shape (the "tenants" key of quiver serve's --config):
 *   "tenants": [{"name": "team-a", "keys": ["sk-a1", "sk-a2"],
 *                "models": ["tiny", "auto"],               (absent: every name)
 *                "endpoints": ["/v1/chat/completions"],     (absent: every endpoint)
 *                "requests_per_minute": 60, "tokens_per_minute": 20000,  (absent: unlimited)
 *                "window_s": 60}]                            (the "minute"; tests shorten it)
 *
 * Quotas are token buckets: a bucket holds at most the limit, refills at limit / window_s per
 * second and starts full, so a tenant may burst its whole minute at once and then proceeds at
 * the steady rate. A request costs one request and a token reservation taken at admission:
 * prompt tokens + max_tokens (x n) as the engine sees it (given, or completions' default 16),
 * else (chat without max_tokens) + the rest of the model's context (x n), that implicit part
 * capped so the reservation never exceeds the bucket. When
 * the request ends, the reservation is settled against what it used (prompt + generated
 * tokens): the unused part is refunded (the level never exceeds the limit). A request that does
 * not fit answers 429 with Retry-After: the seconds until both buckets hold enough again; one
 * whose prompt + max_tokens exceeds the whole limit can never fit and answers 429 without it.
 *
 * Config data is immutable after finalizing (worker threads read it); quota state lives in
 * tenant_quota, touched only on the server's loop thread. Keys never appear in messages or
 * logs. Lookup: a sorted index of HMAC-SHA256(per-process random secret, key) prefixes finds
 * the candidate (an attacker cannot steer where a guess lands without the secret, so the
 * search's timing tells nothing about the keys), then the key itself is compared in constant
 * time; cost is one HMAC and a binary search whatever the number of keys. */
#ifndef QV_SERVER_TENANT_H
#define QV_SERVER_TENANT_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

#include "quiver/error.h"

#define TENANT_MAX 64         /* tenants per config */
#define TENANT_MAX_KEYS 16    /* keys per tenant */
#define TENANT_MAX_NAMES 32   /* allowed model names or endpoints per tenant */
#define TENANT_MAX_LIMIT 1000000000000LL /* requests or tokens per window */

struct registry;

typedef struct tenant {
  char *name;                       /* owned; the metrics label */
  char *keys[TENANT_MAX_KEYS];      /* owned */
  int32_t n_keys;
  char *models[TENANT_MAX_NAMES];   /* owned: model, alias or route names it may request */
  int32_t n_models;
  int all_models;                   /* no "models" list: every name */
  char *endpoints[TENANT_MAX_NAMES]; /* owned: paths it may call (a path also covers path/...) */
  int32_t n_endpoints;
  int all_endpoints;                /* no "endpoints" list: every endpoint */
  int64_t rpm, tpm;                 /* per window; 0: unlimited */
  double window_s;                  /* the quota window (default 60) */
} tenant;

typedef struct tenant_key_ix {
  uint64_t h;        /* the first 8 bytes of HMAC-SHA256(secret, key) */
  int32_t tenant, key;
} tenant_key_ix;

typedef struct tenant_cfg {
  tenant t[TENANT_MAX];
  int32_t n;
  unsigned char secret[32];  /* random per process (tenant_cfg_finalize) */
  struct evp_mac_ctx_st *mac; /* HMAC-SHA256 keyed with secret, copied per lookup (owned) */
  tenant_key_ix *index;      /* [n_index] sorted by h (owned); NULL before finalizing */
  int32_t n_index;
} tenant_cfg;

/* Parses the config's "tenants" array into *out (allocated; NULL in, freed by
 * tenant_cfg_destroy). Merges into an existing *out when called again. */
int tenant_cfg_load_json(tenant_cfg **out, const cJSON *tenants, qv_error *err);
/* Checks names are unique, keys are unique (also against the unrestricted api keys) and that
 * every allowed name exists in reg; builds the key index. NULL c: nothing to do. */
int tenant_cfg_finalize(tenant_cfg *c, const struct registry *reg, qv_error *err);
void tenant_cfg_destroy(tenant_cfg *c);
static inline int32_t tenant_count(const tenant_cfg *c) { return c ? c->n : 0; }

/* The tenant holding key, or -1 (NULL key: -1). Timing does not depend on how much of key
 * matches a configured key (see above); linear over every key before finalizing. */
int32_t tenant_find_key(const tenant_cfg *c, const char *key);
/* 1 when tenant idx (-1: unrestricted) may request name (a model, alias or route; an alias is
 * allowed when its target is). */
int tenant_allows_model(const tenant_cfg *c, int32_t idx, const struct registry *reg,
                        const char *name);
/* 1 when tenant idx (-1: unrestricted) may call path. */
int tenant_allows_endpoint(const tenant_cfg *c, int32_t idx, const char *path);

/* ---- quotas (pure arithmetic over an explicit clock, so tests use a fake one) ---- */

typedef struct quota_bucket {
  double level;     /* what may be spent now; negative: debt from an under-reservation */
  double cap;       /* the limit (0: unlimited, the bucket is inert) */
  double rate;      /* refill per second: cap / window */
  uint64_t t_ns;    /* time level was last brought up to date */
} quota_bucket;

typedef struct tenant_quota {
  quota_bucket req, tok;
} tenant_quota;

void tenant_quota_init(tenant_quota *q, const tenant *t, uint64_t now_ns);

typedef enum tenant_admit_rc {
  TENANT_ADMIT_OK = 0,
  TENANT_ADMIT_REQUESTS,  /* the request bucket is short: retry later */
  TENANT_ADMIT_TOKENS,    /* the token bucket is short: retry later */
  TENANT_ADMIT_TOO_LARGE, /* the reservation exceeds the whole token limit: never fits */
} tenant_admit_rc;

/* Takes one request and *reserve tokens when both buckets hold enough; otherwise takes nothing
 * and sets *retry_after_s (whole seconds, >= 1) until they will. must_tokens is the part of
 * the reservation the request asked for explicitly (prompt + max_tokens); *reserve (in: the
 * full reservation) is capped at the token limit when only its implicit part exceeds it. */
tenant_admit_rc tenant_quota_admit(tenant_quota *q, uint64_t now_ns, int64_t must_tokens,
                                   int64_t *reserve, int64_t *retry_after_s);
/* Without taking anything: 0 when the request bucket holds a request now, else the whole
 * seconds until it will (so a refused request is answered before its body is read). */
int64_t tenant_quota_peek_requests(tenant_quota *q, uint64_t now_ns);
/* The 429 message of a refusal (rc != OK) for tenant t: must is the explicit token ask,
 * retry_s the Retry-After. */
void tenant_limit_message(const tenant *t, tenant_admit_rc rc, int64_t must, int64_t retry_s,
                          char *msg, size_t cap);
/* Settles a finished request: refunds reserved - used tokens (or charges the excess). */
void tenant_quota_settle(tenant_quota *q, uint64_t now_ns, int64_t reserved, int64_t used);
/* What each bucket holds now (whole units, for headers and tests; -1: unlimited). */
void tenant_quota_remaining(tenant_quota *q, uint64_t now_ns, int64_t *requests, int64_t *tokens);

#endif
