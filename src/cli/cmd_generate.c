/* quiver generate: offline generation through the engine, in one process. One prompt (text or
 * ids) streams its text (or prints its generated ids with --ids); --prompts FILE.jsonl submits
 * every line at once, so the engine batches them continuously, and prints one JSON result per
 * input line in input order. Everything a user passes is validated here with a one-line error
 * and exit status 1 (2 for usage errors). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "cli/cli.h"
#include "cli/opts.h"
#include "models/model.h"
#include "quiver/engine.h"
#include "quiver/tokenizer.h"

#define GEN_MAX_STOPS 16
#define GEN_MAX_LINES 100000
#define GEN_MAX_PROMPT_IDS 1000000

typedef struct gen_args {
  const char *model, *device, *prompt, *prompt_ids, *prompts_file;
  int32_t max_tokens, top_k, threads;
  float temperature, top_p;
  int has_seed;
  uint64_t seed;
  int ids, ignore_eos;
  const char *stops[GEN_MAX_STOPS];
  int n_stops;
  cli_engine_cfg eng; /* the shared engine options as given */
  qv_engine_opts eo;  /* derived from eng */
} gen_args;

enum {
  G_MODEL = 1,
  G_PROMPT,
  G_PROMPT_IDS,
  G_PROMPTS,
  G_MAX_TOKENS,
  G_TEMPERATURE,
  G_TOP_P,
  G_TOP_K,
  G_STOP,
  G_IGNORE_EOS,
  G_IDS,
};

static const cli_opt gen_opts[] = {
    {G_MODEL, CLI_OPT_STR, {"--model", "-m"}, 0, 0, "PATH",
     "model directory (also the positional argument; default: the embedded quiver-tiny,\n"
     "byte tokenizer)"},
    {G_PROMPT, CLI_OPT_STR, {"--prompt", "-p"}, 0, 0, "TEXT", "one prompt; its text streams out"},
    {G_PROMPT_IDS, CLI_OPT_STR, {"--prompt-ids"}, 0, 0, "\"1 2 3\"", "one prompt as token ids"},
    {G_PROMPTS, CLI_OPT_STR, {"--prompts"}, 0, 0, "FILE.jsonl",
     "every line at once ({\"prompt\" or \"prompt_ids\", \"max_tokens\", \"temperature\",\n"
     "\"top_p\", \"top_k\", \"min_p\", \"seed\", \"stop\", \"ignore_eos\", \"min_tokens\",\n"
     "\"presence_penalty\", \"frequency_penalty\", \"repetition_penalty\"}; flags give the\n"
     "defaults); one JSON line per input, in order"},
    {G_MAX_TOKENS, CLI_OPT_INT, {"--max-tokens", "-n", "--n-predict"}, -1, 1 << 24, "N",
     "tokens to generate (default 128; -1: until the context ends)"},
    {G_TEMPERATURE, CLI_OPT_NUM, {"--temperature", "--temp"}, 0.0, 100.0, "T", "default 1 (0: greedy)"},
    {G_TOP_P, CLI_OPT_NUM, {"--top-p"}, 1e-9, 1.0, "P", "default 1 (off)"},
    {G_TOP_K, CLI_OPT_INT, {"--top-k"}, -1, 1 << 24, "K", "default 0 (off)"},
    {G_STOP, CLI_OPT_STR, {"--stop"}, 0, 0, "STR", "stop string (repeatable, at most 16)"},
    {G_IGNORE_EOS, CLI_OPT_FLAG, {"--ignore-eos"}, 0, 0, NULL, "keep generating past EOS"},
    {G_IDS, CLI_OPT_FLAG, {"--ids"}, 0, 0, NULL, "print the generated ids on one line"},
};

static cli_spec gen_spec(void) {
  return (cli_spec){.prog = "quiver generate",
                    .synopsis = "quiver generate [MODEL] (--prompt TEXT | --prompt-ids IDS | "
                                "--prompts FILE.jsonl) [options]",
                    .own = gen_opts,
                    .n_own = (int)(sizeof gen_opts / sizeof gen_opts[0]),
                    .common = cli_engine_opts,
                    .n_common = cli_n_engine_opts,
                    .positional_id = G_MODEL,
                    .first_arg = 1};
}

static int gen_opt(void *ud, const cli_opt *o, const cli_value *v, qv_error *err) {
  gen_args *a = ud;
  if (o->id >= CLI_E_DEVICE) return cli_engine_apply(&a->eng, o, v, err);
  switch (o->id) {
  case G_MODEL: a->model = v->str; break;
  case G_PROMPT: a->prompt = v->str; break;
  case G_PROMPT_IDS: a->prompt_ids = v->str; break;
  case G_PROMPTS: a->prompts_file = v->str; break;
  case G_MAX_TOKENS: a->max_tokens = (int32_t)v->i; break;
  case G_TEMPERATURE: a->temperature = (float)v->num; break;
  case G_TOP_P: a->top_p = (float)v->num; break;
  case G_TOP_K: a->top_k = (int32_t)v->i; break;
  case G_STOP:
    if (a->n_stops == GEN_MAX_STOPS || !*v->str)
      return qv_error_set(err, QV_EINVAL, "invalid value '%s' for --stop (non-empty, at most %d)",
                          v->str, GEN_MAX_STOPS);
    a->stops[a->n_stops++] = v->str;
    break;
  case G_IGNORE_EOS: a->ignore_eos = 1; break;
  case G_IDS: a->ids = 1; break;
  default: return qv_error_set(err, QV_EINVAL, "internal: unhandled option %s", o->names[0]);
  }
  return 0;
}

/* Returns 0 to run, 1 after --help, 2 on a usage error (message printed). */
static int parse_args(int argc, char **argv, gen_args *a) {
  memset(a, 0, sizeof *a);
  a->max_tokens = 128;
  a->temperature = 1.0f;
  a->top_p = 1.0f;
  cli_engine_cfg_init(&a->eng);
  cli_spec spec = gen_spec();
  qv_error err = {0};
  int rc = cli_parse(&spec, argc, argv, gen_opt, a, &err);
  if (rc == CLI_HELP) {
    cli_usage(&spec, stdout);
    return 1;
  }
  if (rc) {
    fprintf(stderr, "quiver generate: %s\n", err.msg);
    return 2;
  }
  int n_src = !!a->prompt + !!a->prompt_ids + !!a->prompts_file;
  if (n_src != 1) {
    fprintf(stderr, "quiver generate: give exactly one of --prompt, --prompt-ids, --prompts\n");
    return 2;
  }
  /* The shared options over the engine's defaults. */
  qv_engine_opts_default(&a->eo);
  const cli_engine_cfg *e = &a->eng;
  a->device = e->device ? e->device : "cpu";
  a->threads = e->threads > 0 ? e->threads : 0;
  if (e->max_model_len) a->eo.max_model_len = e->max_model_len;
  if (e->max_num_seqs) a->eo.max_num_seqs = e->max_num_seqs;
  if (e->max_num_batched_tokens) a->eo.max_num_batched_tokens = e->max_num_batched_tokens;
  if (e->block_size) a->eo.block_size = e->block_size;
  if (e->n_kv_blocks) a->eo.n_kv_blocks = e->n_kv_blocks;
  if (e->kv_mem_fraction > 0) a->eo.kv_mem_fraction = e->kv_mem_fraction;
  if (e->prefix_caching >= 0) a->eo.enable_prefix_caching = e->prefix_caching;
  a->has_seed = e->has_seed;
  a->seed = e->seed;
  return 0;
}

/* Parses "1 2 3" (spaces or commas) into ids. */
static int parse_id_list(const char *s, int32_t **out, int32_t *n_out) {
  size_t cap = 16;
  int32_t n = 0, *ids = malloc(cap * sizeof *ids);
  if (!ids) return -1;
  const char *p = s;
  for (;;) {
    while (*p == ' ' || *p == ',' || *p == '\t' || *p == '\n') p++;
    if (!*p) break;
    char *end;
    errno = 0;
    long v = strtol(p, &end, 10);
    if (end == p || errno || v < 0 || v > INT32_MAX || n == GEN_MAX_PROMPT_IDS) {
      free(ids);
      return -1;
    }
    if ((size_t)n == cap) {
      int32_t *t = realloc(ids, cap * 2 * sizeof *ids);
      if (!t) {
        free(ids);
        return -1;
      }
      ids = t;
      cap *= 2;
    }
    ids[n++] = (int32_t)v;
    p = end;
  }
  *out = ids;
  *n_out = n;
  return 0;
}

/* One request's inputs and gathered outputs. */
typedef struct gen_item {
  int32_t *prompt;   /* [n_prompt] owned */
  int32_t n_prompt;
  char **stops;      /* [n_stops] owned (JSONL) or borrowed from argv */
  int n_stops, own_stops;
  qv_request_params p;
  uint64_t id;
  int done;
  int32_t *out_ids;  /* [n_out] owned */
  int32_t n_out, cap_out;
  char *text;        /* [text_len] owned */
  size_t text_len, text_cap;
  qv_event fin;      /* copy of the FINISH event's scalars */
  char *error;       /* owned */
} gen_item;

static void item_free(gen_item *it) {
  free(it->prompt);
  if (it->own_stops)
    for (int i = 0; i < it->n_stops; i++) free(it->stops[i]);
  if (it->own_stops) free(it->stops);
  free(it->out_ids);
  free(it->text);
  free(it->error);
}

static int item_defaults(gen_item *it, const gen_args *a) {
  qv_request_params_default(&it->p);
  it->p.max_tokens = a->max_tokens;
  it->p.sampling.temperature = a->temperature;
  it->p.sampling.top_p = a->top_p;
  it->p.sampling.top_k = a->top_k;
  it->p.sampling.has_seed = a->has_seed;
  it->p.sampling.seed = a->seed;
  it->p.ignore_eos = a->ignore_eos;
  it->stops = (char **)a->stops;
  it->n_stops = a->n_stops;
  return 0;
}

static int encode_text(const qv_tokenizer *tok, const char *text, size_t len, gen_item *it, char *msg, size_t cap) {
  if (!tok) {
    snprintf(msg, cap, "a text prompt needs a tokenizer, and this model has none (use prompt ids)");
    return -1;
  }
  qv_error err = {0};
  int32_t *ids;
  size_t n;
  if (qv_tokenizer_encode(tok, text, len, QV_TOK_ADD_SPECIAL, &ids, &n, &err)) {
    snprintf(msg, cap, "encoding the prompt: %.400s", err.msg);
    return -1;
  }
  if (n == 0 || n > GEN_MAX_PROMPT_IDS) {
    free(ids);
    snprintf(msg, cap, "the prompt encodes to %zu tokens", n);
    return -1;
  }
  it->prompt = ids;
  it->n_prompt = (int32_t)n;
  return 0;
}

static int json_num(const cJSON *o, const char *key, double lo, double hi, double *out, char *msg, size_t cap) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!v || cJSON_IsNull(v)) return 0;
  if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble < lo || v->valuedouble > hi) {
    snprintf(msg, cap, "\"%s\" must be a number in [%g, %g]", key, lo, hi);
    return -1;
  }
  *out = v->valuedouble;
  return 1;
}

/* Fills it from one JSONL object; flags already gave the defaults. */
static int item_from_json(gen_item *it, const char *line, const qv_tokenizer *tok, char *msg, size_t cap) {
  cJSON *o = cJSON_Parse(line);
  int rc = -1;
  if (!cJSON_IsObject(o)) {
    snprintf(msg, cap, "not a JSON object");
    goto out;
  }
  const cJSON *pr = cJSON_GetObjectItemCaseSensitive(o, "prompt");
  const cJSON *pi = cJSON_GetObjectItemCaseSensitive(o, "prompt_ids");
  if (!!pr == !!pi) {
    snprintf(msg, cap, "give exactly one of \"prompt\" and \"prompt_ids\"");
    goto out;
  }
  if (pr) {
    if (!cJSON_IsString(pr)) {
      snprintf(msg, cap, "\"prompt\" must be a string");
      goto out;
    }
    if (encode_text(tok, pr->valuestring, strlen(pr->valuestring), it, msg, cap)) goto out;
  } else {
    int n = cJSON_IsArray(pi) ? cJSON_GetArraySize(pi) : -1;
    if (n <= 0 || n > GEN_MAX_PROMPT_IDS) {
      snprintf(msg, cap, "\"prompt_ids\" must be a non-empty array of token ids");
      goto out;
    }
    it->prompt = malloc((size_t)n * sizeof *it->prompt);
    if (!it->prompt) {
      snprintf(msg, cap, "out of memory");
      goto out;
    }
    const cJSON *e;
    int k = 0;
    cJSON_ArrayForEach(e, pi) {
      if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble > INT32_MAX || e->valuedouble != floor(e->valuedouble)) {
        snprintf(msg, cap, "\"prompt_ids\" must hold non-negative integers");
        goto out;
      }
      it->prompt[k++] = (int32_t)e->valuedouble;
    }
    it->n_prompt = n;
  }
  double d;
  int r;
#define NUM(key, lo, hi, dst)                                          \
  if ((r = json_num(o, key, lo, hi, &d, msg, cap)) < 0) goto out;      \
  if (r) dst = d
  NUM("max_tokens", -1, 1 << 24, it->p.max_tokens);
  NUM("min_tokens", 0, 1 << 24, it->p.min_tokens);
  NUM("temperature", 0, 100, it->p.sampling.temperature);
  NUM("top_p", 1e-9, 1, it->p.sampling.top_p);
  NUM("top_k", -1, 1 << 24, it->p.sampling.top_k);
  NUM("min_p", 0, 1, it->p.sampling.min_p);
  NUM("presence_penalty", -2, 2, it->p.sampling.presence_penalty);
  NUM("frequency_penalty", -2, 2, it->p.sampling.frequency_penalty);
  NUM("repetition_penalty", 1e-3, 100, it->p.sampling.repetition_penalty);
#undef NUM
  if ((r = json_num(o, "seed", 0, 9007199254740992.0, &d, msg, cap)) < 0) goto out;
  if (r) {
    it->p.sampling.seed = (uint64_t)d;
    it->p.sampling.has_seed = 1;
  }
  const cJSON *ie = cJSON_GetObjectItemCaseSensitive(o, "ignore_eos");
  if (ie && !cJSON_IsNull(ie)) {
    if (!cJSON_IsBool(ie)) {
      snprintf(msg, cap, "\"ignore_eos\" must be true or false");
      goto out;
    }
    it->p.ignore_eos = cJSON_IsTrue(ie);
  }
  const cJSON *st = cJSON_GetObjectItemCaseSensitive(o, "stop");
  if (st && !cJSON_IsNull(st)) {
    int n = cJSON_IsString(st) ? 1 : cJSON_IsArray(st) ? cJSON_GetArraySize(st) : -1;
    if (n < 0 || n > GEN_MAX_STOPS) {
      snprintf(msg, cap, "\"stop\" must be a string or an array of at most %d strings", GEN_MAX_STOPS);
      goto out;
    }
    it->stops = calloc((size_t)(n ? n : 1), sizeof *it->stops);
    it->own_stops = 1;
    it->n_stops = 0;
    if (!it->stops) {
      snprintf(msg, cap, "out of memory");
      goto out;
    }
    const cJSON *e = cJSON_IsString(st) ? st : st->child;
    for (int k = 0; k < n; k++, e = e->next) {
      if (!cJSON_IsString(e)) {
        snprintf(msg, cap, "\"stop\" entries must be strings");
        goto out;
      }
      if (!(it->stops[it->n_stops] = strdup(e->valuestring))) {
        snprintf(msg, cap, "out of memory");
        goto out;
      }
      it->n_stops++;
    }
  }
  rc = 0;
out:
  cJSON_Delete(o);
  return rc;
}

typedef struct waiter {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int pending;
} waiter;

static void on_notify(void *arg) {
  waiter *w = arg;
  pthread_mutex_lock(&w->mu);
  w->pending = 1;
  pthread_cond_signal(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

static int append_ids(gen_item *it, const qv_event *ev) {
  if (it->n_out + ev->n_tokens > it->cap_out) {
    int32_t cap = it->cap_out ? it->cap_out * 2 : 64;
    while (cap < it->n_out + ev->n_tokens) cap *= 2;
    int32_t *t = realloc(it->out_ids, (size_t)cap * sizeof *t);
    if (!t) return -1;
    it->out_ids = t;
    it->cap_out = cap;
  }
  memcpy(it->out_ids + it->n_out, ev->token_ids, (size_t)ev->n_tokens * sizeof(int32_t));
  it->n_out += ev->n_tokens;
  return 0;
}

static int append_text(gen_item *it, const char *s, size_t n) {
  if (it->text_len + n + 1 > it->text_cap) {
    size_t cap = it->text_cap ? it->text_cap * 2 : 256;
    while (cap < it->text_len + n + 1) cap *= 2;
    char *t = realloc(it->text, cap);
    if (!t) return -1;
    it->text = t;
    it->text_cap = cap;
  }
  memcpy(it->text + it->text_len, s, n);
  it->text_len += n;
  it->text[it->text_len] = '\0';
  return 0;
}

/* Drains events until every item finished. stream: print text deltas of items[0] as they come. */
static int run_items(qv_engine *e, waiter *w, gen_item *items, int n, int stream) {
  int left = n;
  qv_event *evs[256];
  while (left > 0) {
    pthread_mutex_lock(&w->mu);
    while (!w->pending) pthread_cond_wait(&w->cv, &w->mu);
    w->pending = 0;
    pthread_mutex_unlock(&w->mu);
    int got;
    while ((got = qv_engine_poll(e, evs, 256)) > 0) {
      for (int i = 0; i < got; i++) {
        qv_event *ev = evs[i];
        gen_item *it = NULL;
        for (int k = 0; k < n && !it; k++) /* ids are dense from 1 in submit order */
          if (items[k].id == ev->req_id) it = &items[k];
        if (it && ev->type == QV_EVENT_TOKENS) {
          if (append_ids(it, ev) || append_text(it, ev->text, ev->text_len)) {
            fprintf(stderr, "quiver generate: out of memory\n");
            for (int k = i; k < got; k++) qv_event_free(evs[k]);
            return 1;
          }
          if (stream && ev->text_len) {
            fwrite(ev->text, 1, ev->text_len, stdout);
            fflush(stdout);
          }
        } else if (it && ev->type == QV_EVENT_FINISH && !it->done) {
          it->done = 1;
          it->fin = *ev;
          if (ev->error) it->error = strdup(ev->error);
          left--;
        }
        qv_event_free(ev);
      }
    }
  }
  return 0;
}

static void print_result(const gen_item *it, int index) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddNumberToObject(o, "index", index);
  cJSON_AddStringToObject(o, "text", it->text ? it->text : "");
  cJSON *ids = cJSON_AddArrayToObject(o, "token_ids");
  for (int32_t i = 0; i < it->n_out; i++) cJSON_AddItemToArray(ids, cJSON_CreateNumber(it->out_ids[i]));
  cJSON_AddStringToObject(o, "finish_reason", qv_finish_reason_str(it->fin.finish));
  cJSON_AddNumberToObject(o, "prompt_tokens", it->fin.prompt_tokens);
  cJSON_AddNumberToObject(o, "cached_tokens", it->fin.cached_tokens);
  cJSON_AddNumberToObject(o, "completion_tokens", it->fin.completion_tokens);
  if (it->error) cJSON_AddStringToObject(o, "error", it->error);
  char *s = cJSON_PrintUnformatted(o);
  if (s) printf("%s\n", s);
  cJSON_free(s);
  cJSON_Delete(o);
}

/* Reads the JSONL file into items (blank lines skipped). */
static int read_prompts(const char *path, const gen_args *a, const qv_tokenizer *tok, gen_item **out, int *n_out) {
  FILE *f = fopen(path, "r");
  if (!f) {
    fprintf(stderr, "quiver generate: cannot open %s: %s\n", path, strerror(errno));
    return 1;
  }
  gen_item *items = NULL;
  int n = 0, cap = 0, rc = 0, lineno = 0;
  char *line = NULL;
  size_t lcap = 0;
  ssize_t len;
  while ((len = getline(&line, &lcap, f)) >= 0) {
    lineno++;
    size_t k = 0;
    while (k < (size_t)len && (line[k] == ' ' || line[k] == '\t' || line[k] == '\r' || line[k] == '\n')) k++;
    if (k == (size_t)len) continue;
    if (n == GEN_MAX_LINES) {
      fprintf(stderr, "quiver generate: %s: more than %d prompts\n", path, GEN_MAX_LINES);
      rc = 1;
      break;
    }
    if (n == cap) {
      cap = cap ? cap * 2 : 64;
      gen_item *t = realloc(items, (size_t)cap * sizeof *t);
      if (!t) {
        fprintf(stderr, "quiver generate: out of memory\n");
        rc = 1;
        break;
      }
      items = t;
    }
    gen_item *it = &items[n++];
    memset(it, 0, sizeof *it);
    item_defaults(it, a);
    char msg[512];
    if (item_from_json(it, line, tok, msg, sizeof msg)) {
      fprintf(stderr, "quiver generate: %s line %d: %s\n", path, lineno, msg);
      rc = 1;
      break;
    }
  }
  if (!rc && ferror(f)) {
    fprintf(stderr, "quiver generate: reading %s failed\n", path);
    rc = 1;
  }
  free(line);
  fclose(f);
  if (!rc && n == 0) {
    fprintf(stderr, "quiver generate: %s holds no prompts\n", path);
    rc = 1;
  }
  *out = items;
  *n_out = n;
  return rc;
}

int cli_generate(int argc, char **argv) {
  gen_args a;
  int rc = parse_args(argc, argv, &a);
  if (rc) return rc == 1 ? 0 : rc;
  qv_error err = {0};
  qv_backend *be = NULL;
  qv_model *m = NULL;
  qv_tokenizer *tok = NULL;
  qv_engine *e = NULL;
  gen_item *items = NULL;
  int n_items = 0;
  waiter w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
  rc = 1;

  qv_backend_opts bo = {.n_threads = a.threads, .cpu_bf16_dot = a.eng.cpu_bf16_dot};
  if (qv_backend_create(a.device, &bo, &be, &err) || qv_backend_check_dtype(be, a.eng.dtype, &err)) {
    fprintf(stderr, "quiver generate: %s\n", err.msg);
    goto out;
  }
  qv_model_opts mo = {.max_batch_tokens = a.eo.max_num_batched_tokens, .max_logits = a.eo.max_num_seqs,
                      .tp_size = a.eng.tp_size, .n_threads = a.threads, .cpu_bf16_dot = a.eng.cpu_bf16_dot};
  if (qv_model_load(a.model, be, &mo, &m, &err)) {
    fprintf(stderr, "quiver generate: cannot load the model: %s\n", err.msg);
    goto out;
  }
  int tok_rc = a.model ? qv_tokenizer_load(a.model, &tok, &err) : qv_tokenizer_create_bytes(&tok, &err);
  if (tok_rc) {
    /* Only a run that needs no text may go on without a tokenizer. */
    if (!(a.ids && a.prompt_ids)) {
      fprintf(stderr, "quiver generate: loading the tokenizer: %s\n", err.msg);
      goto out;
    }
    tok = NULL;
  }
  if (a.prompts_file) {
    if (read_prompts(a.prompts_file, &a, tok, &items, &n_items)) goto out;
    if (a.eo.max_waiting < n_items) a.eo.max_waiting = n_items;
  } else {
    items = calloc(1, sizeof *items);
    if (!items) goto out;
    n_items = 1;
    item_defaults(&items[0], &a);
    char msg[512];
    if (a.prompt_ids) {
      if (parse_id_list(a.prompt_ids, &items[0].prompt, &items[0].n_prompt) || items[0].n_prompt == 0) {
        fprintf(stderr, "quiver generate: --prompt-ids wants token ids separated by spaces\n");
        goto out;
      }
    } else if (encode_text(tok, a.prompt, strlen(a.prompt), &items[0], msg, sizeof msg)) {
      fprintf(stderr, "quiver generate: %s\n", msg);
      goto out;
    }
  }
  if (!a.ids && !a.prompts_file && !tok) {
    fprintf(stderr, "quiver generate: text output needs a tokenizer; use --ids\n");
    goto out;
  }
  if (qv_engine_create(m, tok, &a.eo, &e, &err)) {
    fprintf(stderr, "quiver generate: %s\n", err.msg);
    goto out;
  }
  qv_engine_set_notify(e, on_notify, &w);
  for (int i = 0; i < n_items; i++) {
    gen_item *it = &items[i];
    it->p.prompt_ids = it->prompt;
    it->p.n_prompt = it->n_prompt;
    it->p.stop = (const char *const *)it->stops;
    it->p.n_stop = it->n_stops;
    it->p.detokenize = tok != NULL;
    if (qv_engine_submit(e, &it->p, &it->id, &err)) {
      if (a.prompts_file) fprintf(stderr, "quiver generate: prompt %d: %s\n", i, err.msg);
      else fprintf(stderr, "quiver generate: %s\n", err.msg);
      goto out;
    }
  }
  int stream = !a.prompts_file && !a.ids;
  if (run_items(e, &w, items, n_items, stream)) goto out;
  if (a.prompts_file) {
    for (int i = 0; i < n_items; i++) print_result(&items[i], i);
  } else if (a.ids) {
    for (int32_t i = 0; i < items[0].n_out; i++) printf(i ? " %d" : "%d", items[0].out_ids[i]);
    printf("\n");
  } else {
    printf("\n");
  }
  rc = 0;
  for (int i = 0; i < n_items; i++) {
    /* A "length" finish short of max_tokens means the sequence reached max_model_len. */
    const gen_item *it = &items[i];
    if (!it->error && it->fin.finish == QV_FINISH_LENGTH && it->p.max_tokens >= 0 &&
        it->fin.completion_tokens < it->p.max_tokens)
      fprintf(stderr, "quiver generate: warning: prompt %d stopped at max_model_len %d after %d of max_tokens %d "
              "tokens\n", i, qv_engine_max_model_len(e), it->fin.completion_tokens, it->p.max_tokens);
  }
  for (int i = 0; i < n_items; i++)
    if (items[i].error) {
      fprintf(stderr, "quiver generate: prompt %d: %s\n", i, items[i].error);
      rc = 1;
    }
out:
  qv_engine_destroy(e);
  for (int i = 0; i < n_items; i++) item_free(&items[i]);
  free(items);
  qv_tokenizer_destroy(tok);
  qv_model_destroy(m);
  qv_backend_destroy(be);
  fflush(stdout);
  return rc;
}
