/* Route strategies: how a route orders its models for one request. Every strategy yields a full
 * order of the route's models; the server tries the first and falls to the next when a model's
 * queue is full (or it failed to load), so fallback works under every strategy.
 *
 *   ["a", "b"]                                  fallback: the listed order
 *   {"strategy": "fallback", "targets": ["a", "b"]}
 *   {"strategy": "weighted", "targets": [{"model": "a", "weight": 90}, {"model": "b", "weight": 10}],
 *    "seed": 7}                                 one target drawn by weight, then the others listed
 *   {"strategy": "least_loaded", "targets": ["a", "b"]}
 *                                               fewest queued + running sequences first (ties:
 *                                               the listed order)
 *
 * The weighted draw is a function of a 64-bit draw value the server gives each request (a hash
 * of its X-Request-Id header when it sends one, so a retried request lands on the same model;
 * else the next value of a counter mixed by splitmix64) and the route's seed: deterministic and
 * testable. Weights are integers in [0, 1000000] summing to more than 0; a 0-weight target is
 * never drawn first but stays a fallback. */
#ifndef QV_SERVER_ROUTE_H
#define QV_SERVER_ROUTE_H

#include <cjson/cJSON.h>
#include <stdint.h>

#include "quiver/error.h"
#include "server/registry.h"

#define ROUTE_MAX_WEIGHT 1000000

/* Parses one route's JSON value (array or object) into rt (name set by the caller; targets
 * owned by rt). */
int route_parse_json(reg_route *rt, const cJSON *v, qv_error *err);
/* The draw value of a request id (stable across runs and servers). */
uint64_t route_draw_of_id(const char *id);
/* Writes rt's models (indices into the registry) in the order to try for one request into
 * out[rt->n]. draw: the request's draw (WEIGHTED); load: [registry models] queued + running
 * sequences per model (LEAST_LOADED; NULL: the listed order). Returns rt->n. */
int32_t route_order(const reg_route *rt, uint64_t draw, const int64_t *load, int32_t *out);

#endif
