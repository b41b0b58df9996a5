/* Loading the registry's models for serving: per model a backend, the model weights, its
 * tokenizer, its chat template (when the model ships one) and an engine thread, exposed to the
 * server as srv_model entries over srv_model_ops. The loading itself is the fleet's
 * (fleet/fleet.h): this file implements the fleet's ops over the real loader and engine, and
 * the server enters a model (ops.enter) before using it.
 *
 * This is the only server file that touches the real engine, tokenizer, model and chat template
 * code; everything else goes through srv_model_ops so it is testable with fakes. (The reasoning
 * parser is pure text and server_gen.c calls it directly.) */
#ifndef QV_SERVER_MODELS_H
#define QV_SERVER_MODELS_H

#include <stdint.h>

#include "quiver/error.h"
#include "server/registry.h"
#include "server/server.h"

typedef struct srv_load_opts {
  const char *device;     /* "cpu" (default) or "cuda"; a model's own device wins */
  int32_t max_model_len;  /* 0: the model's (a model's own setting wins) */
  int32_t max_num_seqs;   /* 0: engine default */
  int32_t max_waiting;    /* 0: engine default */
  int32_t n_kv_blocks;    /* 0: engine default sizing */
  int32_t n_threads;      /* cpu backend threads (0: all cores) */
  int32_t cpu_bf16_dot;   /* --cpu-bf16-dot for models that set none (qv_backend_opts) */
  double kv_mem_fraction; /* --gpu-memory-utilization: share of free memory for KV (0: engine default) */
  reg_reasoning reasoning; /* for models that set none (UNSET: no reasoning parsing) */
  /* Serving options of issue 19 (vLLM spellings; 0 / NULL / -1: the engine's default). */
  int32_t max_num_batched_tokens;
  int32_t block_size;
  int32_t prefix_caching;  /* -1: default (on), 0 off, 1 on */
  const char *dtype;       /* NULL or "auto", "float32", "bfloat16", "float16": must be what the
                              backend computes in, else the load fails with a clear error */
  int32_t has_seed;        /* seed the engine's per-request seeds (reproducible runs) */
  uint64_t seed;
  const char *chat_template; /* a template file or the template text itself; overrides the
                                model's own (borrowed) */
  int32_t tool_parser;     /* -1: detected from the template, else a qv_chat_tool_format */
  int64_t memory_budget;   /* > 0: one budget in bytes for every model's weights and KV
                              (fleet/budget.h); 0: none */
  double memory_budget_fraction; /* > 0 (instead of bytes): a fraction of the device memory
                              (--device cuda) or of the RAM (cpu) */
  int32_t tp_size;         /* --tensor-parallel-size (0: 1); a model's own setting wins */
  const struct qv_tp_net_opts *tp_net; /* borrowed; NULL: every rank in this process */
} srv_load_opts;

/* Defaults: everything unset. */
void srv_load_opts_default(srv_load_opts *o);

typedef struct srv_models srv_models;

/* Registers every model of reg (borrowed; must outlive the result) with a fleet and waits
 * until the startup models (all but "load": "on_demand" ones) are loaded on its loader thread.
 * On success *models is an array [reg->n_models] owned by *out. A startup model that fails to
 * load fails the whole call with the reason in err (serving half a configuration silently is
 * worse than not starting). */
int srv_models_load(const registry *reg, const srv_load_opts *o, srv_models **out,
                    srv_model **models, qv_error *err);
/* Takes the model the registry just got at run time (registry_add_model_json; idx is the
 * registry's last index, or a removed model's unloaded slot taken again): its srv_model slot (models[idx], allocated from the start for
 * REG_MAX_MODELS, so the array never moves) is ready for server_model_added, after which the
 * caller joins it to the fleet (fleet_add). Loop thread. */
int srv_models_add(srv_models *m, int32_t idx, qv_error *err);
/* The fleet and the budget (NULL without one) behind the models; owned by m. */
struct fleet *srv_models_fleet(srv_models *m);
struct qv_budget *srv_models_budget(srv_models *m);
/* Sets the hook called (on the fleet's loader thread) after a model's state changed. */
void srv_models_set_changed(srv_models *m, void (*fn)(void *arg, int32_t idx), void *arg);
/* Stops every engine thread (aborting what is in flight); call after uv_run returned and before
 * server_destroy. */
void srv_models_stop(srv_models *m);
/* Model i's loaded qv_model (borrowed; NULL when i is out of range or it failed to load). */
struct qv_model *srv_models_model(const srv_models *m, int32_t i);
/* Frees everything (stops engines first if needed). Accepts NULL. */
void srv_models_destroy(srv_models *m);

#endif
