/* quiver serve: loads the configured models (or the embedded quiver-tiny), starts one engine
 * thread per model and serves the OpenAI-compatible HTTP API on one libuv loop until SIGINT or
 * SIGTERM, which drain in-flight requests up to a deadline and exit 0.
 *
 * Flags build a registry (src/server/registry.h); a --config file is merged first so that
 * flags given on the command line add to it and override its host, port and limits. */
#include <signal.h>
#include <stdio.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "cli/cli.h"
#include "core/log.h"
#include "server/models.h"
#include "server/registry.h"
#include "server/server.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: quiver serve [options]\n"
          "  --model [NAME=]PATH     serve a model directory (repeatable; NAME defaults to the\n"
          "                          directory name; PATH quiver-tiny is the embedded model).\n"
          "                          With no --model and no config models: quiver-tiny.\n"
          "  --alias ALIAS=NAME      another name for a model or route (repeatable)\n"
          "  --config FILE           JSON config: models, aliases, routes, keys (see README)\n"
          "  --host ADDR             listen address (default 127.0.0.1)\n"
          "  --port N                listen port (default 8000; 0 picks a free one)\n"
          "  --api-key KEY           require 'Authorization: Bearer KEY' (repeatable; also\n"
          "                          QUIVER_API_KEY)\n"
          "  --open-path PATH        serve PATH without a key (repeatable; default /health)\n"
          "  --device cpu|cuda       backend for models that do not name one (default cpu)\n"
          "  --max-model-len N       context length limit per sequence (default: the model's)\n"
          "  --max-num-seqs N        sequences running at once per model\n"
          "  --max-waiting N         queued requests per model before 429 / route fallback\n"
          "  --n-kv-blocks N         KV cache blocks per model (default: sized from memory)\n"
          "  --gpu-memory-utilization F  share (0, 1] of the free memory after the weights\n"
          "                          given to the KV cache (default 0.9 on cuda, 0.25 of RAM on cpu)\n"
          "  --threads N             CPU backend threads (default: all cores)\n"
          "  --reasoning-parser NAME split <think> reasoning off chat output into\n"
          "                          reasoning_content: deepseek_r1, qwen3 or none (default);\n"
          "                          a config model's \"reasoning_parser\" wins\n"
          "  --max-body-bytes N      request body limit (default 8 MiB) -> 413\n"
          "  --max-header-bytes N    request line + headers limit (default 16 KiB) -> 431\n"
          "  --header-timeout S      seconds to receive the headers (default 10) -> 408\n"
          "  --body-timeout S        seconds to receive the body (default 30) -> 408\n"
          "  --idle-timeout S        keep-alive idle seconds (default 60)\n"
          "  --max-connections N     open connections at most (default 1024; 8 more are kept\n"
          "                          for /health; beyond: 503 and close)\n"
          "  --max-connections-per-client N  open connections per client address (default 256)\n"
          "  --max-buffered-body-bytes N  request bodies held by the server at once (default\n"
          "                          256 MiB) -> 503\n"
          "  --max-output-backlog-bytes N  unsent bytes per connection before it is no longer\n"
          "                          read (default 1 MiB)\n"
          "  --max-request-sequences N  prompts x n of one request (default 256) -> 400\n"
          "  --max-total-output-bytes N  unsent answer bytes of the server (default 1 GiB);\n"
          "                          a large answer past it becomes a 503\n"
          "  --max-pipeline-bytes N  pipelined request bytes buffered per connection (256 KiB)\n"
          "  --probe-connections N   connections kept for /health beyond --max-connections (8)\n"
          "  --linger-timeout S      read and drop a refused request's body this long (default 2)\n"
          "  --drain-timeout S       on SIGINT/SIGTERM, wait this long for requests (default 30)\n");
}

static int parse_int(const char *flag, const char *v, long lo, long hi, long *out) {
  char *end = NULL;
  long x = strtol(v, &end, 10);
  if (!*v || *end || x < lo || x > hi) {
    fprintf(stderr, "quiver serve: %s expects an integer in [%ld, %ld], got '%s'\n", flag, lo, hi, v);
    return -1;
  }
  *out = x;
  return 0;
}

int cli_serve(int argc, char **argv) {
  registry reg;
  registry_init(&reg);
  server_opts so;
  server_opts_default(&so);
  srv_load_opts lo = {0};
  const char *host = NULL;
  long port = -1;
  qv_error err = {0};
  int rc = 0;
  /* The config file first, so flags add to and override it. */
  for (int i = 1; i + 1 < argc; i++)
    if (!strcmp(argv[i], "--config") && registry_load_file(&reg, argv[i + 1], &err)) {
      fprintf(stderr, "quiver serve: %s\n", err.msg);
      registry_deinit(&reg);
      return 2;
    }
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      registry_deinit(&reg);
      return 0;
    }
    if (i + 1 >= argc) {
      fprintf(stderr, "quiver serve: unknown or incomplete option '%s'\n", a);
      usage(stderr);
      registry_deinit(&reg);
      return 2;
    }
    const char *v = argv[++i];
    long x = 0;
    if (!strcmp(a, "--config")) continue;
    if (!strcmp(a, "--model")) rc = registry_add_model_arg(&reg, v, &err);
    else if (!strcmp(a, "--alias")) rc = registry_add_alias_arg(&reg, v, &err);
    else if (!strcmp(a, "--api-key")) rc = registry_add_api_key(&reg, v, &err);
    else if (!strcmp(a, "--open-path")) rc = registry_add_open_path(&reg, v, &err);
    else if (!strcmp(a, "--host")) host = v;
    else if (!strcmp(a, "--device")) {
      if (strcmp(v, "cpu") && strcmp(v, "cuda")) rc = qv_error_set(&err, QV_EINVAL, "--device must be cpu or cuda");
      lo.device = v;
    } else if (!strcmp(a, "--gpu-memory-utilization")) {
      char *end;
      double f = strtod(v, &end);
      if (end == v || *end || !(f > 0.0 && f <= 1.0))
        rc = qv_error_set(&err, QV_EINVAL, "--gpu-memory-utilization must be a number in (0, 1]");
      lo.kv_mem_fraction = f;
    } else if (!strcmp(a, "--reasoning-parser")) {
      rc = registry_reasoning_parse(v, &lo.reasoning, &err);
    } else {
      static const struct {
        const char *flag;
        long lo, hi;
      } ints[] = {
          {"--port", 0, 65535},          {"--max-model-len", 1, 1 << 24},
          {"--max-num-seqs", 1, 65536},  {"--max-waiting", 1, 1 << 20},
          {"--n-kv-blocks", 1, 1 << 26}, {"--threads", 0, 1024},
          {"--max-body-bytes", 1024, 1L << 30}, {"--max-header-bytes", 1024, 1 << 20},
          {"--header-timeout", 1, 3600}, {"--body-timeout", 1, 3600},
          {"--idle-timeout", 1, 86400},  {"--max-connections", 1, 1 << 20},
          {"--drain-timeout", 0, 3600},
          {"--max-connections-per-client", 1, 1 << 20},
          {"--max-buffered-body-bytes", 1L << 20, 1L << 40},
          {"--max-output-backlog-bytes", 4096, 1L << 32},
          {"--max-request-sequences", 1, 1 << 20},
          {"--linger-timeout", 0, 60},
          {"--max-total-output-bytes", 1L << 20, 1L << 44},
          {"--max-pipeline-bytes", 4096, 1L << 30},
          {"--probe-connections", 0, 1 << 16},
      };
      int k = -1;
      for (size_t j = 0; j < sizeof ints / sizeof ints[0]; j++)
        if (!strcmp(a, ints[j].flag)) k = (int)j;
      if (k < 0) {
        fprintf(stderr, "quiver serve: unknown option '%s'\n", a);
        usage(stderr);
        registry_deinit(&reg);
        return 2;
      }
      if (parse_int(a, v, ints[k].lo, ints[k].hi, &x)) {
        registry_deinit(&reg);
        return 2;
      }
      switch (k) {
      case 0: port = x; break;
      case 1: lo.max_model_len = (int32_t)x; break;
      case 2: lo.max_num_seqs = (int32_t)x; break;
      case 3: lo.max_waiting = (int32_t)x; break;
      case 4: lo.n_kv_blocks = (int32_t)x; break;
      case 5: lo.n_threads = (int32_t)x; break;
      case 6: so.limits.max_body_bytes = (size_t)x; break;
      case 7: so.limits.max_header_bytes = (size_t)x; break;
      case 8: so.limits.header_timeout_ms = (uint64_t)x * 1000; break;
      case 9: so.limits.body_timeout_ms = (uint64_t)x * 1000; break;
      case 10: so.limits.idle_timeout_ms = (uint64_t)x * 1000; break;
      case 11: so.limits.max_connections = (int32_t)x; break;
      case 12: so.drain_timeout_ms = (uint64_t)x * 1000; break;
      case 13: so.limits.max_connections_per_client = (int32_t)x; break;
      case 14: so.limits.max_buffered_body_bytes = (size_t)x; break;
      case 15: so.limits.max_conn_output_bytes = (size_t)x; break;
      case 16: so.max_request_seqs = (int32_t)x; break;
      case 17: so.limits.linger_ms = (uint64_t)x * 1000; break;
      case 18: so.limits.max_total_output_bytes = (size_t)x; break;
      case 19: so.limits.max_pipeline_bytes = (size_t)x; break;
      default: so.limits.probe_connections = (int32_t)x; break;
      }
    }
    if (rc) {
      fprintf(stderr, "quiver serve: %s\n", err.msg);
      registry_deinit(&reg);
      return 2;
    }
  }
  const char *env_key = getenv("QUIVER_API_KEY");
  if (env_key && *env_key && registry_add_api_key(&reg, env_key, &err)) {
    fprintf(stderr, "quiver serve: %s\n", err.msg);
    registry_deinit(&reg);
    return 2;
  }
  if (registry_finalize(&reg, &err)) {
    fprintf(stderr, "quiver serve: %s\n", err.msg);
    registry_deinit(&reg);
    return 2;
  }
  so.host = host ? host : (reg.host ? reg.host : "127.0.0.1");
  so.port = port >= 0 ? (int)port : (reg.port ? reg.port : 8000);

  /* A peer that vanishes mid-write must not kill the process. */
  signal(SIGPIPE, SIG_IGN);
#ifdef __GLIBC__
  /* Large request and answer buffers (bodies, tokenize answers) come and go: serve them from
   * mmap at a fixed threshold (glibc would otherwise raise it after each free and keep them in
   * the heap), and give freed heap back to the system, so the resident set stays flat. */
  mallopt(M_MMAP_THRESHOLD, 256 * 1024);
  mallopt(M_TRIM_THRESHOLD, 1024 * 1024);
#endif
  /* libuv's pool prepares ordinary requests (parsing, tokenizing, templates); large ones go to
   * the server's own heavy pool. Sized from the machine unless the user set it. */
  if (!getenv("UV_THREADPOOL_SIZE")) {
    char n[16];
    unsigned cores = uv_available_parallelism();
    snprintf(n, sizeof n, "%u", cores < 4 ? 4 : cores > 64 ? 64 : cores);
    setenv("UV_THREADPOOL_SIZE", n, 1);
  }

  srv_models *loaded = NULL;
  srv_model *models = NULL;
  if (srv_models_load(&reg, &lo, &loaded, &models, &err)) {
    fprintf(stderr, "quiver serve: %s\n", err.msg);
    registry_deinit(&reg);
    return 1;
  }
  uv_loop_t loop;
  uv_loop_init(&loop);
  server *srv = NULL;
  if (server_create(&loop, &reg, models, &so, &srv, &err)) {
    fprintf(stderr, "quiver serve: %s\n", err.msg);
    uv_run(&loop, UV_RUN_DEFAULT); /* close what was opened */
    uv_loop_close(&loop);
    srv_models_destroy(loaded);
    registry_deinit(&reg);
    return 1;
  }
  /* The one line tools wait for: the address actually bound. */
  fprintf(stderr, "quiver serve: listening on http://%s:%d (%d model%s)\n", so.host,
          server_port(srv), reg.n_models, reg.n_models == 1 ? "" : "s");
  fflush(stderr);
  uv_run(&loop, UV_RUN_DEFAULT);
  int aborted = server_aborted(srv);
  srv_models_stop(loaded);
  server_destroy(srv);
  uv_loop_close(&loop);
  srv_models_destroy(loaded);
  registry_deinit(&reg);
  fprintf(stderr, "quiver serve: stopped%s\n", aborted ? " (requests aborted)" : "");
  return aborted ? 1 : 0;
}
