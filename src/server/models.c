/* Model loading and the srv_model_ops adapter over qv_engine, qv_tokenizer and the chat
 * template engine (see models.h). */
#include "server/models.h"
#include "core/util.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "backend/backend.h"
#include "chat/chat.h"
#include "core/log.h"
#include "fleet/fleet.h"
#include "loader/gguf_model.h"
#include "models/model.h"
#include "quiver/engine.h"
#include "quiver/tokenizer.h"

struct srv_models;

/* One model. be, model, tok, tmpl, cvocab exist from load_weights to drop_weights, eng from
 * start_engine to stop_engine (fleet ops, on the fleet's loader thread); mu guards eng for the
 * calls that reach every model whatever its state (poll, stats, notify). */
typedef struct loaded {
  struct srv_models *owner;
  int32_t idx;
  pthread_mutex_t mu;
  void (*notify)(void *);
  void *notify_arg;
  qv_backend *be;
  qv_model *model;
  qv_tokenizer *tok;
  qv_engine *eng;
  qv_chat_template *tmpl;
  qv_chat_tool_format tool_fmt; /* detected from the template; hermes when there is none */
  qv_cst_vocab *cvocab;         /* token index for structured output */
} loaded;

struct srv_models {
  loaded *l;       /* [n] */
  srv_model *m;    /* [n] */
  int32_t n;
  const registry *reg;   /* borrowed */
  srv_load_opts o;       /* copied; its strings borrowed */
  qv_budget *budget;     /* owned, NULL without --memory-budget */
  fleet *fl;             /* owned */
  void (*changed)(void *arg, int32_t idx); /* srv_models_set_changed */
  void *changed_arg;
  pthread_mutex_t changed_mu;
};

/* ---- ops ---- */

static int op_submit(void *ctx, const qv_request_params *p, uint64_t *id, qv_error *err) {
  return qv_engine_submit(((loaded *)ctx)->eng, p, id, err);
}
static void op_abort(void *ctx, uint64_t id) { qv_engine_abort(((loaded *)ctx)->eng, id); }
static int op_poll(void *ctx, qv_event **evs, int max) {
  loaded *l = ctx;
  pthread_mutex_lock(&l->mu);
  int n = l->eng ? qv_engine_poll(l->eng, evs, max) : 0;
  pthread_mutex_unlock(&l->mu);
  return n;
}
static void op_set_notify(void *ctx, void (*fn)(void *), void *arg) {
  loaded *l = ctx;
  pthread_mutex_lock(&l->mu);
  l->notify = fn;
  l->notify_arg = arg;
  if (l->eng) qv_engine_set_notify(l->eng, fn, arg);
  pthread_mutex_unlock(&l->mu);
}
static void op_stats(void *ctx, qv_engine_stats *st) {
  loaded *l = ctx;
  memset(st, 0, sizeof *st);
  pthread_mutex_lock(&l->mu);
  if (l->eng) qv_engine_get_stats(l->eng, st);
  pthread_mutex_unlock(&l->mu);
}
static int op_enter(void *ctx) { loaded *l = ctx; return l->owner->fl && fleet_enter(l->owner->fl, l->idx); }
static void op_leave(void *ctx) {
  loaded *l = ctx;
  if (l->owner->fl) fleet_leave(l->owner->fl, l->idx);
}
static void op_want(void *ctx) {
  loaded *l = ctx;
  if (l->owner->fl) fleet_load(l->owner->fl, l->idx);
}

static int op_encode(void *ctx, const char *text, size_t len, int add_special, int parse_special,
                     int32_t **ids, size_t *n, qv_error *err) {
  unsigned flags = (add_special ? QV_TOK_ADD_SPECIAL : 0u) | (parse_special ? QV_TOK_PARSE_SPECIAL : 0u);
  return qv_tokenizer_encode(((loaded *)ctx)->tok, text, len, flags, ids, n, err);
}

static int op_token_bytes(void *ctx, int32_t id, char **bytes, size_t *len) {
  return qv_tokenizer_decode(((loaded *)ctx)->tok, &id, 1, QV_TOK_KEEP_BYTES, bytes, len, NULL);
}

static int op_decode(void *ctx, const int32_t *ids, size_t n, int skip_special, char **text,
                     size_t *len, qv_error *err) {
  return qv_tokenizer_decode(((loaded *)ctx)->tok, ids, n, skip_special ? QV_TOK_SKIP_SPECIAL : 0u,
                             text, len, err);
}

/* Template variables as transformers passes them: messages, tools, add_generation_prompt,
 * bos/eos token strings, plus the request's chat_template_kwargs. */
static int op_render(void *ctx, const cJSON *messages, const cJSON *tools, const cJSON *tool_choice,
                     const cJSON *kwargs, int add_generation_prompt, char **out, size_t *len,
                     qv_error *err) {
  loaded *l = ctx;
  cJSON *vars = cJSON_CreateObject();
  if (!vars) return qv_error_set(err, QV_ENOMEM, "out of memory");
  const cJSON *kw;
  cJSON_ArrayForEach(kw, kwargs) cJSON_AddItemToObject(vars, kw->string, cJSON_Duplicate(kw, 1));
  cJSON_DeleteItemFromObject(vars, "messages");
  cJSON_AddItemToObject(vars, "messages", cJSON_Duplicate(messages, 1));
  if (tools) cJSON_AddItemToObject(vars, "tools", cJSON_Duplicate(tools, 1));
  if (tool_choice) cJSON_AddItemToObject(vars, "tool_choice", cJSON_Duplicate(tool_choice, 1));
  cJSON_DeleteItemFromObject(vars, "add_generation_prompt");
  cJSON_AddBoolToObject(vars, "add_generation_prompt", add_generation_prompt);
  const char *bos = qv_chat_template_bos(l->tmpl);
  const char *eos = qv_chat_template_eos(l->tmpl);
  int32_t bos_id = qv_tokenizer_bos_id(l->tok), eos_id = qv_tokenizer_eos_id(l->tok);
  if (!bos && bos_id >= 0) bos = qv_tokenizer_token_str(l->tok, bos_id);
  if (!eos && eos_id >= 0) eos = qv_tokenizer_token_str(l->tok, eos_id);
  if (!cJSON_GetObjectItem(vars, "bos_token")) cJSON_AddStringToObject(vars, "bos_token", bos ? bos : "");
  if (!cJSON_GetObjectItem(vars, "eos_token")) cJSON_AddStringToObject(vars, "eos_token", eos ? eos : "");
  int rc = qv_chat_template_render(l->tmpl, vars, out, len, err);
  cJSON_Delete(vars);
  return rc;
}

static void op_event_free(qv_event *ev) { qv_event_free(ev); }

/* content + calls of a parse result in the server's shapes. */
static int parsed_to_json(const qv_chat_parsed *p, char **content, cJSON **tool_calls,
                          qv_error *err) {
  *content = strdup(p->content ? p->content : "");
  *tool_calls = NULL;
  if (p->n_calls > 0) {
    cJSON *arr = cJSON_CreateArray();
    for (int i = 0; arr && i < p->n_calls; i++) {
      cJSON *c = cJSON_CreateObject();
      cJSON_AddStringToObject(c, "id", p->calls[i].id);
      cJSON_AddStringToObject(c, "type", "function");
      cJSON *fn = cJSON_AddObjectToObject(c, "function");
      cJSON_AddStringToObject(fn, "name", p->calls[i].name);
      cJSON_AddStringToObject(fn, "arguments", p->calls[i].arguments);
      cJSON_AddItemToArray(arr, c);
    }
    *tool_calls = arr;
  }
  return *content ? 0 : qv_error_set(err, QV_ENOMEM, "out of memory");
}

static int op_parse_tools(void *ctx, const char *text, size_t len, char **content,
                          cJSON **tool_calls, qv_error *err) {
  qv_chat_parsed p = {0};
  int rc = qv_chat_tools_parse(((loaded *)ctx)->tool_fmt, text, len, &p, err);
  if (!rc) rc = parsed_to_json(&p, content, tool_calls, err);
  qv_chat_parsed_deinit(&p);
  return rc;
}

static void *op_tool_stream_create(void *ctx) {
  qv_chat_tool_stream *st = NULL;
  if (qv_chat_tool_stream_create(((loaded *)ctx)->tool_fmt, &st, NULL)) return NULL;
  return st;
}

static int op_tool_stream_feed(void *st, const char *delta, size_t len, int finish, char **content,
                               cJSON **calls, qv_error *err) {
  qv_chat_parsed p = {0};
  int rc = finish ? qv_chat_tool_stream_finish(st, &p, err)
                  : qv_chat_tool_stream_feed(st, delta, len, &p, err);
  *content = NULL;
  *calls = NULL;
  if (!rc) rc = parsed_to_json(&p, content, calls, err);
  qv_chat_parsed_deinit(&p);
  return rc;
}

static void op_tool_stream_destroy(void *st) { qv_chat_tool_stream_destroy(st); }

static int op_compile_constraint(void *ctx, const qv_cst_spec *spec, qv_constraint **out, qv_error *err) {
  return qv_constraint_compile(((loaded *)ctx)->cvocab, spec, out, err);
}

static const char *op_tool_format(void *ctx) { return qv_chat_tool_format_name(((loaded *)ctx)->tool_fmt); }

static const srv_model_ops ops_default_chat = {
    .submit = op_submit, .abort = op_abort, .poll = op_poll, .set_notify = op_set_notify,
    .get_stats = op_stats, .event_free = op_event_free, .encode = op_encode, .decode = op_decode,
    .render_chat = NULL, .parse_tools = op_parse_tools,
    .tool_stream_create = op_tool_stream_create, .tool_stream_feed = op_tool_stream_feed,
    .tool_stream_destroy = op_tool_stream_destroy, .compile_constraint = op_compile_constraint,
    .tool_format = op_tool_format, .token_bytes = op_token_bytes,
    .enter = op_enter, .leave = op_leave, .want = op_want,
};

static const srv_model_ops ops_template_chat = {
    .submit = op_submit, .abort = op_abort, .poll = op_poll, .set_notify = op_set_notify,
    .get_stats = op_stats, .event_free = op_event_free, .encode = op_encode, .decode = op_decode,
    .render_chat = op_render, .parse_tools = op_parse_tools,
    .tool_stream_create = op_tool_stream_create, .tool_stream_feed = op_tool_stream_feed,
    .tool_stream_destroy = op_tool_stream_destroy, .compile_constraint = op_compile_constraint,
    .tool_format = op_tool_format, .token_bytes = op_token_bytes,
    .enter = op_enter, .leave = op_leave, .want = op_want,
};

/* A model directory has a template when it ships chat_template.jinja or a tokenizer_config.json
 * with a "chat_template"; otherwise the server's documented default format is used. */
static int has_template(const char *dir) {
  char p[4096];
  struct stat st;
  if (gguf_model_is_path(dir)) {
    char *src = NULL;
    qv_error e = {0};
    int yes = gguf_model_chat_template(dir, &src, &e) == 0;
    free(src);
    return yes;
  }
  snprintf(p, sizeof p, "%s/chat_template.jinja", dir);
  if (stat(p, &st) == 0) return 1;
  snprintf(p, sizeof p, "%s/tokenizer_config.json", dir);
  size_t n;
  char *buf = qv_read_file(p, 4u << 20, &n, NULL);
  if (!buf) return 0;
  cJSON *j = cJSON_ParseWithLength(buf, n);
  free(buf);
  const cJSON *t = cJSON_GetObjectItem(j, "chat_template");
  int yes = t && (cJSON_IsString(t) || cJSON_IsArray(t));
  cJSON_Delete(j);
  return yes;
}

/* ---- loading ---- */

void srv_load_opts_default(srv_load_opts *o) {
  memset(o, 0, sizeof *o);
  o->prefix_caching = -1;
  o->tool_parser = -1;
}

/* The model's own template, or --chat-template (a file, else the template text itself). */
static int load_template(const reg_model *rm, const srv_load_opts *o, int tiny, loaded *l,
                         qv_error *err) {
  if (o->chat_template) {
    struct stat st;
    int rc = stat(o->chat_template, &st) == 0 && S_ISREG(st.st_mode)
                 ? qv_chat_template_load_path(o->chat_template, &l->tmpl, err)
             : strstr(o->chat_template, "{{") || strstr(o->chat_template, "{%")
                 ? qv_chat_template_load_string(o->chat_template, "--chat-template", &l->tmpl, err)
                 : qv_error_set(err, QV_EINVAL, "--chat-template '%.200s' is neither a file nor a "
                                "Jinja template", o->chat_template);
    if (rc) return rc;
  } else if (!tiny && has_template(rm->path)) {
    int rc = qv_chat_template_load_path(rm->path, &l->tmpl, err);
    if (rc) return rc;
  }
  if (l->tmpl) {
    qv_chat_tool_format f = qv_chat_tool_format_detect(l->tmpl);
    if (f != QV_CHAT_TOOLS_NONE) l->tool_fmt = f;
  }
  if (o->tool_parser >= 0) l->tool_fmt = (qv_chat_tool_format)o->tool_parser;
  return 0;
}

/* Tokens per step and logits rows per step the model is loaded for (the engine samples at most
 * max_num_seqs rows per step: the logits buffer needs no more). */
static void model_limits(const srv_models *s, int32_t idx, int32_t *tokens, int32_t *rows) {
  const reg_model *rm = &s->reg->models[idx];
  *tokens = s->o.max_num_batched_tokens ? s->o.max_num_batched_tokens : 2048;
  *rows = rm->max_num_seqs ? rm->max_num_seqs : s->o.max_num_seqs ? s->o.max_num_seqs : 256;
  if (*rows > *tokens) *rows = *tokens;
}

static void fl_drop_weights(void *ctx, int32_t idx);

/* Fleet op: weights, tokenizer, constraint vocabulary and template (depth 0 -> 1). */
static int load_weights(void *ctx, int32_t idx, qv_error *err) {
  srv_models *s = ctx;
  loaded *l = &s->l[idx];
  const reg_model *rm = &s->reg->models[idx];
  const srv_load_opts *o = &s->o;
  int tiny = !strcmp(rm->path, "quiver-tiny");
  const char *device = rm->device ? rm->device : (o->device ? o->device : "cpu");
  int bf16_dot = rm->cpu_bf16_dot ? rm->cpu_bf16_dot > 0 : o->cpu_bf16_dot;
  qv_backend_opts bo = {.n_threads = o->n_threads, .device = 0, .cpu_bf16_dot = bf16_dot};
  int rc = qv_backend_create(device, &bo, &l->be, err);
  if (rc) return rc;
  if ((rc = qv_backend_check_dtype(l->be, o->dtype, err))) return rc;
  qv_model_opts mo = {.tp_size = rm->tp_size ? rm->tp_size : o->tp_size, .n_threads = o->n_threads,
                      .cpu_bf16_dot = bf16_dot, .tp_net = o->tp_net};
  model_limits(s, idx, &mo.max_batch_tokens, &mo.max_logits);
  if ((rc = qv_model_load(tiny ? NULL : rm->path, l->be, &mo, &l->model, err))) return rc;
  if (tiny) rc = qv_tokenizer_create_bytes(&l->tok, err);
  else rc = qv_tokenizer_load(rm->path, &l->tok, err);
  if (rc) return rc;
  if ((rc = qv_cst_vocab_create(l->tok, &l->cvocab, err))) return rc;
  /* Without a template (or a template with no tool-call format) calls use the Hermes format,
   * which tool_choice required/named enforces and the parser reads back. */
  l->tool_fmt = QV_CHAT_TOOLS_HERMES;
  if ((rc = load_template(rm, o, tiny, l, err))) return rc;
  srv_model *sm = &s->m[idx];
  sm->ops = l->tmpl ? &ops_template_chat : &ops_default_chat;
  sm->vocab_size = qv_model_get_config(l->model)->vocab_size;
  return 0;
}

/* A failed load leaves nothing behind. */
static int fl_load_weights(void *ctx, int32_t idx, qv_error *err) {
  int rc = load_weights(ctx, idx, err);
  if (rc) fl_drop_weights(ctx, idx);
  return rc;
}

/* Fleet op: the engine (depth 1 -> 2), its KV pool in the shared budget when there is one. */
static int fl_start_engine(void *ctx, int32_t idx, qv_error *err) {
  srv_models *s = ctx;
  loaded *l = &s->l[idx];
  const reg_model *rm = &s->reg->models[idx];
  const srv_load_opts *o = &s->o;
  qv_engine_opts eo;
  qv_engine_opts_default(&eo);
  if (o->max_num_batched_tokens) eo.max_num_batched_tokens = o->max_num_batched_tokens;
  if (o->block_size) eo.block_size = o->block_size;
  if (o->prefix_caching >= 0) eo.enable_prefix_caching = o->prefix_caching;
  eo.has_seed = o->has_seed;
  eo.seed = o->seed;
  eo.max_model_len = rm->max_model_len ? rm->max_model_len : o->max_model_len;
  if (rm->max_num_seqs || o->max_num_seqs) eo.max_num_seqs = rm->max_num_seqs ? rm->max_num_seqs : o->max_num_seqs;
  if (rm->max_waiting || o->max_waiting) eo.max_waiting = rm->max_waiting ? rm->max_waiting : o->max_waiting;
  eo.n_kv_blocks = rm->max_kv ? rm->max_kv : rm->n_kv_blocks ? rm->n_kv_blocks : o->n_kv_blocks;
  if (o->kv_mem_fraction > 0) eo.kv_mem_fraction = o->kv_mem_fraction;
  eo.kv_budget = s->budget;
  eo.kv_min_blocks = rm->min_kv;
  /* Salt prefix hashes with the model name so two models never share cached blocks. */
  uint64_t h = 1469598103934665603ull;
  for (const char *p = rm->name; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ull;
  eo.cache_salt = h;
  qv_engine *eng = NULL;
  int rc = qv_engine_create(l->model, l->tok, &eo, &eng, err);
  if (rc) {
    qv_model_kv_deinit(l->model); /* a failed create may have allocated it */
    return rc;
  }
  srv_model *sm = &s->m[idx];
  sm->max_model_len = qv_engine_max_model_len(eng);
  pthread_mutex_lock(&l->mu);
  l->eng = eng;
  if (l->notify) qv_engine_set_notify(eng, l->notify, l->notify_arg);
  pthread_mutex_unlock(&l->mu);
  QV_LOGI("serve: model '%s' (%s) ready: max_model_len %d, chat %s", rm->name, rm->path,
          sm->max_model_len, sm->ops->render_chat ? "template" : "default format");
  return 0;
}

/* Fleet op: the engine stops (no request holds the model); its KV and prefix cache are gone. */
static void fl_stop_engine(void *ctx, int32_t idx) {
  srv_models *s = ctx;
  loaded *l = &s->l[idx];
  pthread_mutex_lock(&l->mu);
  qv_engine *eng = l->eng;
  l->eng = NULL;
  pthread_mutex_unlock(&l->mu);
  qv_engine_destroy(eng);
  qv_model_kv_deinit(l->model);
}

static void fl_drop_weights(void *ctx, int32_t idx) {
  loaded *l = &((srv_models *)ctx)->l[idx];
  qv_chat_template_destroy(l->tmpl);
  qv_cst_vocab_destroy(l->cvocab);
  qv_tokenizer_destroy(l->tok);
  qv_model_destroy(l->model);
  qv_backend_destroy(l->be);
  l->tmpl = NULL;
  l->cvocab = NULL;
  l->tok = NULL;
  l->model = NULL;
  l->be = NULL;
}

/* Bytes of a model's weights as stored: the GGUF file, or a directory's safetensors files
 * (the CPU backend computes on them in place, so the file size is what they occupy). */
static int64_t fl_weight_bytes(void *ctx, int32_t idx) {
  const char *path = ((srv_models *)ctx)->reg->models[idx].path;
  if (!strcmp(path, "quiver-tiny")) return 1 << 20;
  struct stat st;
  if (stat(path, &st)) return 0;
  if (!S_ISDIR(st.st_mode)) return (int64_t)st.st_size;
  int64_t total = 0;
  DIR *d = opendir(path);
  for (struct dirent *e; d && (e = readdir(d));) {
    size_t n = strlen(e->d_name);
    if (n < 12 || strcmp(e->d_name + n - 12, ".safetensors")) continue;
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", path, e->d_name);
    if (!stat(p, &st)) total += (int64_t)st.st_size;
  }
  if (d) closedir(d);
  return total;
}

/* The weights as stored plus the model's activation scratch at its limits (dense layers in
 * f32: x, h, o [tokens][dim], q, att [tokens][heads*head_dim], k, v [tokens][kv_heads*head_dim],
 * g, u [tokens][ffn]; selected rows [logits][dim] and logits [logits][vocab]): what the model
 * can touch, so the budget holds the resident set and not just the file. */
static int64_t fl_loaded_bytes(void *ctx, int32_t idx) {
  srv_models *s = ctx;
  const qv_model_config *c = qv_model_get_config(s->l[idx].model);
  int32_t tok, seqs;
  model_limits(s, idx, &tok, &seqs);
  int64_t qd = (int64_t)c->n_head * c->head_dim, kd = (int64_t)c->n_kv_head * c->head_dim;
  int64_t per_tok = 3 * (int64_t)c->dim + 2 * qd + 2 * kd + 2 * (int64_t)c->ffn_dim;
  return fl_weight_bytes(ctx, idx) + 4 * ((int64_t)tok * per_tok + (int64_t)seqs * ((int64_t)c->dim + c->vocab_size));
}

static void fl_changed(void *ctx, int32_t idx) {
  srv_models *s = ctx;
  pthread_mutex_lock(&s->changed_mu);
  if (s->changed) s->changed(s->changed_arg, idx);
  pthread_mutex_unlock(&s->changed_mu);
}

/* Model i's slots before its first load. */
static void init_slot(srv_models *s, int32_t i) {
  const reg_model *rm = &s->reg->models[i];
  const srv_load_opts *o = &s->o;
  s->l[i].owner = s;
  s->l[i].idx = i;
  pthread_mutex_init(&s->l[i].mu, NULL);
  /* Until its weights are loaded a model answers with the default chat ops; the server only
   * calls them on a model it entered (READY). */
  s->m[i].ops = &ops_default_chat;
  s->m[i].ctx = &s->l[i];
  s->m[i].ready = 1;
  s->m[i].max_model_len = rm->max_model_len ? rm->max_model_len : o->max_model_len;
  s->m[i].reasoning = rm->reasoning != REG_REASONING_UNSET ? rm->reasoning : o->reasoning;
}

int srv_models_add(srv_models *s, int32_t idx, qv_error *err) {
  if (idx < s->n) { /* a removed model's slot taken again (unloaded: only these fields change) */
    const reg_model *rm = &s->reg->models[idx];
    s->m[idx].max_model_len = rm->max_model_len ? rm->max_model_len : s->o.max_model_len;
    s->m[idx].reasoning = rm->reasoning != REG_REASONING_UNSET ? rm->reasoning : s->o.reasoning;
    return 0;
  }
  if (idx != s->n || idx >= REG_MAX_MODELS || idx >= s->reg->n_models)
    return qv_error_set(err, QV_ESTATE, "model %d is not the registry's next model", idx);
  init_slot(s, idx);
  s->n = idx + 1;
  return 0;
}

int srv_models_load(const registry *reg, const srv_load_opts *o, srv_models **out,
                    srv_model **models, qv_error *err) {
  srv_models *s = calloc(1, sizeof *s);
  if (!s) return qv_error_set(err, QV_ENOMEM, "out of memory");
  pthread_mutex_init(&s->changed_mu, NULL);
  s->n = reg->n_models;
  s->reg = reg;
  s->o = *o;
  /* Sized for REG_MAX_MODELS: models added at run time (srv_models_add) never move a slot
   * the event loop or the loader thread reads. */
  s->l = calloc(REG_MAX_MODELS, sizeof *s->l);
  s->m = calloc(REG_MAX_MODELS, sizeof *s->m);
  fleet_model_cfg *cfg = calloc((size_t)s->n, sizeof *cfg);
  if (!s->l || !s->m || !cfg) {
    free(cfg);
    srv_models_destroy(s);
    return qv_error_set(err, QV_ENOMEM, "out of memory");
  }
  for (int32_t i = 0; i < s->n; i++) {
    init_slot(s, i);
    const reg_model *rm = &reg->models[i];
    cfg[i] = (fleet_model_cfg){.name = rm->name, .on_demand = rm->on_demand, .pin = rm->pin,
                               .keep_alive_s = rm->keep_alive_s};
  }
  int64_t budget = o->memory_budget;
  const char *device = o->device ? o->device : "cpu";
  if (o->memory_budget_fraction > 0 && !strcmp(device, "cuda")) {
    /* A fraction means the device's memory when the models live there. */
    qv_backend *be = NULL;
    qv_backend_opts bo = {.n_threads = o->n_threads, .device = 0};
    size_t free_b = 0, total_b = 0;
    if (!qv_backend_create("cuda", &bo, &be, NULL) && be->ops->mem_info &&
        !be->ops->mem_info(be, &free_b, &total_b))
      budget = (int64_t)(o->memory_budget_fraction * (double)total_b);
    qv_backend_destroy(be);
  }
  int rc = 0;
  if (budget > 0) rc = qv_budget_create(budget, &s->budget, err);
  fleet_ops fo = {.ctx = s, .weight_bytes = fl_weight_bytes, .loaded_bytes = fl_loaded_bytes,
                  .load_weights = fl_load_weights,
                  .start_engine = fl_start_engine, .stop_engine = fl_stop_engine,
                  .drop_weights = fl_drop_weights, .changed = fl_changed};
  if (!rc) rc = fleet_create(&fo, s->budget, cfg, s->n, &s->fl, err);
  free(cfg);
  if (!rc) {
    fleet_start(s->fl);
    for (int32_t i = 0; i < s->n && !rc; i++) {
      if (reg->models[i].on_demand) continue;
      rc = fleet_wait(s->fl, i, INT64_C(24) * 3600 * 1000, err);
      if (rc) {
        fleet_model_info in;
        fleet_get_info(s->fl, i, &in);
        if (in.error[0]) qv_error_set(err, rc, "%s", in.error);
        qv_error_prefix(err, "model '%s' (%s)", reg->models[i].name, reg->models[i].path);
      }
    }
  }
  if (rc) {
    srv_models_destroy(s);
    return rc;
  }
  *out = s;
  *models = s->m;
  return 0;
}

struct fleet *srv_models_fleet(srv_models *s) { return s ? s->fl : NULL; }
struct qv_budget *srv_models_budget(srv_models *s) { return s ? s->budget : NULL; }

void srv_models_set_changed(srv_models *s, void (*fn)(void *arg, int32_t idx), void *arg) {
  pthread_mutex_lock(&s->changed_mu);
  s->changed = fn;
  s->changed_arg = arg;
  pthread_mutex_unlock(&s->changed_mu);
}

void srv_models_stop(srv_models *s) {
  if (!s) return;
  srv_models_set_changed(s, NULL, NULL);
  fleet_destroy(s->fl); /* stops the loader, then every engine and model */
  s->fl = NULL;
}

void srv_models_destroy(srv_models *s) {
  if (!s) return;
  srv_models_stop(s);
  for (int32_t i = 0; s->l && i < s->n; i++) pthread_mutex_destroy(&s->l[i].mu);
  qv_budget_destroy(s->budget);
  pthread_mutex_destroy(&s->changed_mu);
  free(s->l);
  free(s->m);
  free(s);
}

struct qv_model *srv_models_model(const srv_models *m, int32_t i) {
  return m && i >= 0 && i < m->n ? m->l[i].model : NULL;
}
