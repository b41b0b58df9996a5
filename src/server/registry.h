/* The served-model registry: models (name -> path and per-model engine options), aliases
 * (alias -> model or route name) and routes (name -> ordered list of models to try), filled
 * from CLI flags and/or a JSON config file, validated, and resolved by request `model` names.
 *
 * Pure data over strings: loading models and engines is server.c's job. Config file shape:
 *   {"host": "127.0.0.1", "port": 8000, "api_keys": ["k"], "open_paths": ["/health"],
 *    "models": [{"name": "a", "path": "/m/a", "device": "cpu", "max_model_len": 2048,
 *                "max_num_seqs": 64, "max_waiting": 256, "n_kv_blocks": 0,
 *                "reasoning_parser": "deepseek_r1", "cpu_bf16_dot": false}],
 *    "aliases": {"b": "a"},
 *    "routes": {"r": ["a", "tiny"],
 *               "canary": {"strategy": "weighted", "targets": [{"model": "a", "weight": 90},
 *                                                              {"model": "tiny", "weight": 10}]},
 *               "pool": {"strategy": "least_loaded", "targets": ["a", "tiny"]}},
 *    "tenants": [...]}  (server/tenant.h)
 * Every key is optional except a model's path ("quiver-tiny" names the embedded model). Route
 * strategies are in server/route.h. */
#ifndef QV_SERVER_REGISTRY_H
#define QV_SERVER_REGISTRY_H

#include <stddef.h>
#include <stdint.h>

#include "quiver/error.h"

#define REG_MAX_MODELS 64
#define REG_MAX_NAMES 64
#define REG_MAX_ROUTE_LEN 8

/* Which reasoning parser splits <think>...</think> off a model's chat output (names as vLLM's
 * --reasoning-parser). UNSET takes the server-wide default (quiver serve --reasoning-parser). */
typedef enum reg_reasoning {
  REG_REASONING_UNSET = 0,
  REG_REASONING_NONE,        /* "none": no reasoning parsing */
  REG_REASONING_DEEPSEEK_R1, /* "deepseek_r1": the output starts inside the reasoning */
  REG_REASONING_QWEN3,       /* "qwen3": reasoning only inside a <think>...</think> it opens */
} reg_reasoning;

/* Name -> parser; QV_EINVAL naming the known parsers for an unknown name. */
int registry_reasoning_parse(const char *name, reg_reasoning *out, qv_error *err);

typedef struct reg_model {
  char *name;            /* owned */
  char *path;            /* owned; "quiver-tiny" for the embedded model */
  char *device;          /* owned or NULL (server default) */
  int32_t max_model_len; /* 0: default */
  int32_t max_num_seqs;  /* 0: default */
  int32_t tp_size;       /* "tensor_parallel_size": ranks this model is sharded over (0: the flag's) */
  int32_t max_waiting;   /* 0: default */
  int32_t n_kv_blocks;   /* 0: default */
  int32_t cpu_bf16_dot;  /* "cpu_bf16_dot": true 1, false -1, absent 0 (the --cpu-bf16-dot flag's) */
  reg_reasoning reasoning; /* UNSET: the server default */
  /* Fleet options (fleet/fleet.h). */
  int32_t on_demand;     /* "load": "on_demand" (default "startup") */
  int32_t pin;           /* "pin": true: never evicted for room */
  double keep_alive_s;   /* "keep_alive": idle seconds before sleeping (0: never) */
  int32_t min_kv, max_kv; /* "min_kv"/"max_kv": KV blocks reserved / at most (0: default) */
  /* Admin API: added at run time; removed (DELETE of an added model): no longer resolved or
   * listed, its name free; the slot is taken again when the name is added again. */
  int32_t added, removed;
} reg_model;

/* How a route orders its models for a request (server/route.h); the rest of the order is the
 * fallback when a model's queue is full. */
typedef enum reg_route_strategy {
  REG_ROUTE_FALLBACK = 0,  /* the listed order */
  REG_ROUTE_WEIGHTED,      /* one target drawn by weight first (canary, A/B) */
  REG_ROUTE_LEAST_LOADED,  /* fewest queued + running sequences first */
} reg_route_strategy;

typedef struct reg_route {
  char *name;                        /* owned */
  int32_t models[REG_MAX_ROUTE_LEN]; /* indices into models, tried in order */
  char *targets[REG_MAX_ROUTE_LEN];  /* owned names before validation */
  int32_t n;
  reg_route_strategy strategy;
  int32_t weights[REG_MAX_ROUTE_LEN]; /* WEIGHTED: [n], each >= 0, sum > 0 */
  uint64_t seed;                     /* WEIGHTED: mixed into the draw (optional "seed") */
} reg_route;

typedef struct reg_alias {
  char *name;   /* owned */
  char *target; /* owned: a model or route name */
} reg_alias;

typedef struct registry {
  reg_model models[REG_MAX_MODELS];
  int32_t n_models;
  reg_alias aliases[REG_MAX_NAMES];
  int32_t n_aliases;
  reg_route routes[REG_MAX_NAMES];
  int32_t n_routes;
  /* Server options a config file may carry (CLI flags override). */
  char *host;                  /* owned or NULL */
  int32_t port;                /* 0: not set */
  char *api_keys[REG_MAX_NAMES]; /* owned */
  int32_t n_api_keys;
  char *open_paths[REG_MAX_NAMES]; /* owned: paths served without a key */
  int32_t n_open_paths;
  int open_paths_set;          /* config/CLI gave open paths (else the default: /health) */
  char *admin_keys[REG_MAX_NAMES]; /* owned: keys of the admin API (never user keys) */
  int32_t n_admin_keys;
  struct tenant_cfg *tenants;  /* owned (server/tenant.h) or NULL: no tenants */
} registry;

/* 1 when s may name a model, alias, route or tenant: 1-128 printable bytes, no spaces, quotes
 * or backslashes (names appear in URLs and metric labels). */
int registry_valid_name(const char *s);

void registry_init(registry *r);
void registry_deinit(registry *r);

/* "NAME=PATH" or "PATH" (name: the path's last component, "quiver-tiny" for that path). */
int registry_add_model_arg(registry *r, const char *arg, qv_error *err);
/* "ALIAS=TARGET". */
int registry_add_alias_arg(registry *r, const char *arg, qv_error *err);
int registry_add_api_key(registry *r, const char *key, qv_error *err);
int registry_add_open_path(registry *r, const char *path, qv_error *err);
int registry_add_admin_key(registry *r, const char *key, qv_error *err);
/* Merges a JSON config text. */
int registry_load_json(registry *r, const char *text, size_t len, qv_error *err);
/* Reads and merges a config file. */
int registry_load_file(registry *r, const char *path, qv_error *err);
/* Adds one model at run time from an admin API body: {"name", "path", and the per-model keys of
 * the config file but "aliases"}; *idx is its index. A removed model of that name gets its slot
 * back (same index) when reusable(arg, idx) says it is idle (QV_EBUSY while its unload is not
 * done; reusable NULL: always busy); any other name takes the next index. Strict: invalid JSON,
 * an unknown key, a bad value or name: QV_EINVAL; a name already used by a model, alias or
 * route: QV_ESTATE; REG_MAX_MODELS models already: QV_ELIMIT. On error nothing changes. */
int registry_add_model_json(registry *r, const char *text, size_t len,
                            int (*reusable)(void *arg, int32_t idx), void *arg, int32_t *idx,
                            qv_error *err);
/* Checks names are unique across models, aliases and routes, and that every alias and route
 * target exists (aliases may point to routes); resolves route indices. With no model at all
 * it adds the embedded model as "quiver-tiny". */
int registry_finalize(registry *r, qv_error *err);

/* The models to try for a requested name, in order (a model: itself; an alias: what it
 * points to; a route: its list). Returns how many (0: unknown name). */
int32_t registry_resolve(const registry *r, const char *name, int32_t *out, int32_t cap);
/* The route a requested name (a route or an alias of one) names, or NULL. */
const reg_route *registry_route_of(const registry *r, const char *name);
/* 1 when path is served without an API key. */
int registry_is_open_path(const registry *r, const char *path);

#endif
