/* quiver info: describes a model from its config and safetensors headers without loading the
 * weights: architecture, sizes, parameters, dtypes, memory per backend, KV bytes per token.
 * With --tp N it also loads the model sharded over N ranks (cpu, or with --device cuda one GPU per
 * rank) and reports each rank's weight bytes as placed (measured, not estimated) and its KV bytes
 * per token. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "core/cpu_features.h"
#include "models/model.h"

static void usage(FILE *f) {
  fprintf(f, "usage: quiver info [--model PATH] [--tp N [--device cpu|cuda]]\n"
             "  Describes a Hugging Face model directory or a GGUF model (a .gguf file, a directory\n"
             "  holding one, the first file of a split set); default: the embedded quiver-tiny.\n"
             "  --tp N (--tensor-parallel-size) loads the model sharded over N ranks and prints\n"
             "  each rank's weight bytes and KV bytes per token: CPU ranks, or with --device cuda\n"
             "  rank i on CUDA device i (needs N GPUs and a build with NCCL).\n");
}

static void print_bytes(const char *label, double b) {
  const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int i = 0;
  while (b >= 1024 && i < 4) {
    b /= 1024;
    i++;
  }
  printf("%-26s %.2f %s\n", label, b, u[i]);
}

static const char *rope_name(qv_rope_scaling_type t) {
  switch (t) {
  case QV_ROPE_SCALING_LINEAR: return "linear";
  case QV_ROPE_SCALING_DYNAMIC: return "dynamic";
  case QV_ROPE_SCALING_LLAMA3: return "llama3";
  case QV_ROPE_SCALING_YARN: return "yarn";
  case QV_ROPE_SCALING_LONGROPE: return "longrope";
  default: return "none";
  }
}

/* Loads the model over tp ranks of device and prints what each holds. */
static int print_ranks(const char *path, int tp, const char *device) {
  qv_error err = {0};
  qv_backend *be = NULL;
  qv_model *m = NULL;
  qv_backend_opts bo = {.n_threads = 1};
  qv_model_opts mo = {.max_batch_tokens = 16, .max_logits = 1, .tp_size = tp, .n_threads = tp};
  int rc = qv_backend_create(device, &bo, &be, &err);
  if (!rc) rc = qv_model_load(path, be, &mo, &m, &err);
  if (rc) {
    fprintf(stderr, "quiver info: --tp %d --device %s: %s\n", tp, device, err.msg);
    qv_backend_destroy(be);
    return 1;
  }
  printf("%-26s %d (%s ranks, loaded)\n", "tensor parallel size", tp, device);
  int64_t total = 0;
  for (int r = 0; r < tp; r++) {
    int64_t w = 0, kv = 0;
    qv_model_tp_rank_bytes(m, r, &w, &kv);
    char label[32];
    snprintf(label, sizeof label, "  rank %d", r);
    int64_t rss = qv_model_tp_rank_rss(m, r);
    printf("%-26s weights %.2f MiB (%lld bytes), KV %lld bytes per token", label, w / 1048576.0, (long long)w,
           (long long)kv);
    if (rss >= 0) printf(", resident +%.2f MiB while loading", rss / 1048576.0);
    printf("\n");
    total += w;
  }
  print_bytes("  all ranks' weights", (double)total);
  qv_model_destroy(m);
  qv_backend_destroy(be);
  return 0;
}

int cli_info(int argc, char **argv) {
  const char *path = NULL, *device = "cpu";
  int tp = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--model") && i + 1 < argc) path = argv[++i];
    else if ((!strcmp(argv[i], "--tp") || !strcmp(argv[i], "--tensor-parallel-size")) && i + 1 < argc) {
      tp = atoi(argv[++i]);
      if (tp < 1 || tp > QV_TP_MAX_SIZE) {
        fprintf(stderr, "quiver info: --tp must be in [1, %d]\n", QV_TP_MAX_SIZE);
        return 2;
      }
    }
    else if (!strcmp(argv[i], "--device") && i + 1 < argc) {
      device = argv[++i];
      if (strcmp(device, "cpu") && strcmp(device, "cuda")) {
        fprintf(stderr, "quiver info: --device must be cpu or cuda, got '%s'\n", device);
        return 2;
      }
    } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      usage(stdout);
      return 0;
    } else {
      fprintf(stderr, "quiver info: unknown or incomplete option '%s'\n", argv[i]);
      usage(stderr);
      return 2;
    }
  }
  qv_model_desc d;
  qv_error err = {0};
  if (qv_model_describe(path, &d, &err)) {
    fprintf(stderr, "quiver info: %s\n", err.msg);
    return 1;
  }
  const qv_model_config *c = &d.cfg;
  printf("%-26s %s\n", "model", path ? path : "quiver-tiny (embedded, synthetic weights)");
  printf("%-26s %s\n", "architecture", c->arch);
  if (d.n_params >= 1000000000) printf("%-26s %lld (%.2f B)\n", "parameters", (long long)d.n_params, d.n_params / 1e9);
  else printf("%-26s %lld (%.2f M)\n", "parameters", (long long)d.n_params, d.n_params / 1e6);
  printf("%-26s %s\n", "weight dtype", c->weight_dtype);
  printf("%-26s vocab %d, hidden %d, layers %d, heads %d, kv heads %d, head dim %d, ffn %d\n", "shape", c->vocab_size,
         c->dim, c->n_layer, c->n_head, c->n_kv_head, c->head_dim, c->ffn_dim);
  printf("%-26s %d\n", "max positions", c->max_pos);
  if (c->n_eos) {
    char ids[96];
    int at = 0;
    for (int32_t i = 0; i < c->n_eos && at < (int)sizeof ids - 16; i++)
      at += snprintf(ids + at, sizeof ids - (size_t)at, "%s%d", i ? ", " : "", c->eos_ids[i]);
    printf("%-26s %s\n", "stop ids", ids);
  }
  printf("%-26s theta %g, scaling %s (factor %g)\n", "rope", c->rope_theta, rope_name(c->rope_scaling), c->rope_factor);
  if (c->sliding_window) printf("%-26s %d tokens\n", "sliding window", c->sliding_window);
  else printf("%-26s none\n", "sliding window");
  printf("%-26s tied %s, qkv bias %s, qk norm %s\n", "features", c->tie_embeddings ? "yes" : "no",
         c->qkv_bias ? "yes" : "no", c->qk_norm ? "yes" : "no");
  if (c->family) {
    int n_sliding = 0, n_moe = 0;
    for (int32_t l = 0; l < c->n_layer; l++) {
      n_sliding += !!(c->layer_flags[l] & QV_LAYER_SLIDING);
      n_moe += !!(c->layer_flags[l] & QV_LAYER_MOE);
    }
    printf("%-26s %d sliding-window, %d global\n", "attention layers", n_sliding, c->n_layer - n_sliding);
    if (c->rope_local_theta > 0) printf("%-26s theta %g (sliding layers)\n", "local rope", c->rope_local_theta);
    if (c->rot_dim && c->rot_dim != c->head_dim) printf("%-26s %d of %d dims\n", "partial rotary", c->rot_dim, c->head_dim);
    if (c->rope_scaling == QV_ROPE_SCALING_LONGROPE)
      printf("%-26s %s factors (original context %d)\n", "longrope", c->rope_long ? "long" : "short", c->rope_orig_max_pos);
    if (c->attn_softcap > 0 || c->final_softcap > 0)
      printf("%-26s attention %g, final logits %g\n", "soft-capping", c->attn_softcap, c->final_softcap);
    if (c->attn_sinks) printf("%-26s yes\n", "attention sinks");
    if (n_moe)
      printf("%-26s %d of %d experts per token, expert ffn %d, %d MoE layers%s\n", "mixture of experts",
             c->n_expert_used, c->n_expert, c->moe_ffn_dim, n_moe, c->experts_mxfp4 ? ", MXFP4 experts" : "");
  }
  if (d.n_file_tensors) {
    printf("%-26s %d\n", "tensors in files", d.n_file_tensors);
    print_bytes("tensor data in files", (double)d.file_bytes);
  }
  char cpu[256];
  qv_cpu_features_describe(cpu, sizeof cpu);
  printf("%-26s %s\n", "cpu", cpu);
  qv_cpu_isa isa;
  qv_error ierr = {0};
  if (qv_cpu_isa_select(&isa, &ierr)) printf("%-26s none: %s\n", "cpu kernels", ierr.msg);
  else printf("%-26s %s (best on this cpu: %s; QUIVER_CPU_ISA overrides)\n", "cpu kernels", qv_cpu_isa_name(isa),
              qv_cpu_isa_name(qv_cpu_isa_best()));
  if (!ierr.code) {
    const char *env = getenv("QUIVER_CPU_BF16_DOT"), *why = qv_cpu_bf16_dot_unusable(isa);
    if (env && !strcmp(env, "1"))
      printf("%-26s %s\n", "cpu bf16 matmul", why ? "exact: bf16 dot product asked for but unavailable" : "bf16 dot product (QUIVER_CPU_BF16_DOT=1)");
    else
      printf("%-26s exact, widened to f32 (--cpu-bf16-dot / QUIVER_CPU_BF16_DOT=1: %s)\n", "cpu bf16 matmul",
             why ? why : "bf16 dot product available");
  }
  /* MXFP4 experts stay 4-bit (17 bytes per 32 weights: 16 of nibbles, 1 scale) on both backends. */
  double q_params = 0;
  if (c->experts_mxfp4)
    for (int32_t l = 0; l < c->n_layer; l++)
      if (c->layer_flags[l] & QV_LAYER_MOE) q_params += 3.0 * c->n_expert * c->dim * (double)c->moe_ffn_dim;
  if (d.is_gguf) {
    for (int t = 0; t < QV_DTYPE_COUNT; t++) {
      if (!d.type_count[t]) continue;
      char label[32];
      snprintf(label, sizeof label, "  %s tensors", qv_dtype_name((qv_dtype)t));
      printf("%-26s %d, %.2f MiB\n", label, d.type_count[t], d.type_bytes[t] / 1048576.0);
    }
    printf("%-26s %s\n", "chat template", d.has_chat_template ? "present (tokenizer.chat_template)" : "none");
    printf("%-26s %s\n", "rotary layout", c->rope_interleaved ? "interleaved pairs (llama.cpp's permuted q/k)" : "rotate-half (neox)");
    print_bytes("weights on cpu (quantized)", (double)d.file_bytes);
    print_bytes("weights on cpu (dequant)", (double)d.n_params * 4);
  } else if (!c->family && d.file_bytes) {
    /* The Llama family keeps matrices in the file's dtype on the cpu, mapped in place (norms
     * become f32); the other families convert to f32. */
    print_bytes("weights on cpu (as file)", (double)d.file_bytes);
  } else {
    print_bytes("weights on cpu (f32)", ((double)d.n_params - q_params) * 4 + q_params * 17.0 / 32.0);
  }
  print_bytes("weights on cuda (bf16)", ((double)d.n_params - q_params) * 2 + q_params * 17.0 / 32.0);
  int64_t kv = 2 * (int64_t)c->n_layer * c->n_kv_head * c->head_dim;
  printf("%-26s %lld (cpu f32), %lld (cuda bf16)\n", "KV bytes per token", (long long)kv * 4, (long long)kv * 2);
  print_bytes("KV for max positions, cuda", (double)kv * 2 * c->max_pos);
  return tp ? print_ranks(path, tp, device) : 0;
}
