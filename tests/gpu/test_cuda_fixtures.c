/* The model fixtures (tests/fixtures/models/<name>: tiny random-weight Llama, Mistral, Qwen2, Qwen3
 * checkpoints with transformers' fp32 logits in reference.json) on the CUDA backend: the
 * 12-token prefill (every row's logits) and 8 greedy decode steps. Tolerance for bf16 weights
 * and activations: per row, max_j |gpu_j - ref_j| / max_j |ref_j| <= 4e-2 (a bf16 rounding is
 * 2^-9 relative; a handful of them compound through two layers; a wrong formula moves logits
 * by far more). Skipped (not passed) without a CUDA build or a GPU. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <limits.h>

#include "gpu_common.h"
#include "models/model.h"
#include "../test_util.h"

#define TOL 4e-2
#define BS 4
#define MAXB 8
#define N_DECODE 8

static int ints(const cJSON *a, int32_t *out, int cap) {
  int n = 0;
  const cJSON *it;
  cJSON_ArrayForEach(it, a) {
    cr_assert(n < cap && cJSON_IsNumber(it));
    out[n++] = (int32_t)it->valuedouble;
  }
  return n;
}

static float *rows_of(const cJSON *a, int rows, int vocab) {
  float *out = malloc(sizeof(float) * (size_t)rows * (size_t)vocab);
  int r = 0;
  const cJSON *row;
  cJSON_ArrayForEach(row, a) {
    cr_assert(r < rows && cJSON_GetArraySize(row) == vocab);
    int j = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, row) out[(size_t)r * vocab + j++] = (float)x->valuedouble;
    r++;
  }
  cr_assert_eq(r, rows);
  return out;
}

static double row_err(const float *a, const float *b, int n) {
  double d = 0, m = 0;
  for (int i = 0; i < n; i++) {
    d = fmax(d, fabs((double)a[i] - b[i]));
    m = fmax(m, fabs((double)b[i]));
  }
  return m > 0 ? d / m : d;
}

/* Runs one fixture on p->gpu; returns the worst row error. */
static double run_fixture(gpu_pair *p, const char *dir, const char *name) {
  char path[PATH_MAX + 400];
  snprintf(path, sizeof path, "%s/reference.json", dir);
  char *text = test_slurp(path, NULL);
  cr_assert(text, "cannot read %s", path);
  cJSON *root = cJSON_Parse(text);
  free(text);
  cr_assert(root, "%s: bad JSON", path);
  int32_t prompt[64], dec_ids[N_DECODE];
  const int n_prompt = ints(cJSON_GetObjectItem(root, "prompt_ids"), prompt, 64);
  cr_assert_eq(ints(cJSON_GetObjectItem(root, "decode_ids"), dec_ids, N_DECODE), N_DECODE);
  const cJSON *pl = cJSON_GetObjectItem(root, "prefill_logits");
  const int vocab = cJSON_GetArraySize(cJSON_GetArrayItem(pl, 0));
  float *want_pre = rows_of(pl, n_prompt, vocab);
  float *want_dec = rows_of(cJSON_GetObjectItem(root, "decode_logits"), N_DECODE, vocab);
  cJSON_Delete(root);

  qv_error err = {0};
  qv_model *m = NULL;
  qv_model_opts o = {.max_batch_tokens = 64, .max_logits = 64};
  int rc = qv_model_load(dir, p->gpu, &o, &m, &err);
  if (rc == QV_EUNSUPPORTED) { /* a family whose ops this backend lacks (gpt-oss's sinks on CUDA) */
    cr_log_warn("%s: skipped, %s", name, err.msg);
    fprintf(stderr, "cuda fixtures: %s skipped: %s\n", name, err.msg);
    free(want_pre);
    free(want_dec);
    return -1;
  }
  cr_assert_eq(rc, 0, "%s: %s", name, err.msg);
  cr_assert_eq(qv_model_get_config(m)->vocab_size, vocab);
  cr_assert_eq(qv_model_kv_init(m, 40, BS, &err), 0, "%s", err.msg);
  const int32_t bt[MAXB] = {17, 3, 29, 8, 11, 36, 0, 22}; /* scattered pages */
  float *got = malloc(sizeof(float) * (size_t)n_prompt * (size_t)vocab);
  int32_t pos[64], slots[64], li[64], q[2] = {0, n_prompt}, ctx = n_prompt;
  for (int i = 0; i < n_prompt; i++) {
    pos[i] = i;
    slots[i] = bt[i / BS] * BS + i % BS;
    li[i] = i;
  }
  qv_batch b = {.n_tokens = n_prompt, .n_seqs = 1, .n_logits = n_prompt, .token_ids = prompt, .positions = pos,
                .slot_mapping = slots, .seq_q_start = q, .seq_ctx_len = &ctx, .block_tables = bt,
                .max_blocks = MAXB, .logits_idx = li};
  cr_assert_eq(qv_model_forward(m, &b, got, &err), 0, "%s: %s", name, err.msg);
  double worst = 0;
  for (int r = 0; r < n_prompt; r++) {
    const double e = row_err(got + (size_t)r * vocab, want_pre + (size_t)r * vocab, vocab);
    cr_assert(e <= TOL, "%s prefill row %d: relative error %g > %g", name, r, e, TOL);
    worst = fmax(worst, e);
  }
  for (int s = 0; s < N_DECODE; s++) {
    int32_t id = dec_ids[s], ps = n_prompt + s, sl = bt[ps / BS] * BS + ps % BS, c = ps + 1, l0 = 0, q1[2] = {0, 1};
    qv_batch d = {.n_tokens = 1, .n_seqs = 1, .n_logits = 1, .token_ids = &id, .positions = &ps, .slot_mapping = &sl,
                  .seq_q_start = q1, .seq_ctx_len = &c, .block_tables = bt, .max_blocks = MAXB, .logits_idx = &l0};
    cr_assert_eq(qv_model_forward(m, &d, got, &err), 0, "%s: %s", name, err.msg);
    const double e = row_err(got, want_dec + (size_t)s * vocab, vocab);
    cr_assert(e <= TOL, "%s decode step %d: relative error %g > %g", name, s, e, TOL);
    worst = fmax(worst, e);
  }
  qv_model_destroy(m);
  free(got);
  free(want_pre);
  free(want_dec);
  return worst;
}

Test(cuda_fixtures, all_fixtures_within_bf16_tolerance) {
  gpu_pair p;
  gpu_pair_open(&p);
  char root[PATH_MAX];
  const char *src = getenv("QV_SOURCE_DIR");
  snprintf(root, sizeof root, "%s/tests/fixtures/models", src ? src : ".");
  DIR *d = opendir(root);
  if (!d) {
    gpu_pair_close(&p);
    cr_skip_test("no fixtures at %s", root);
  }
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    char dir[PATH_MAX + 300];
    snprintf(dir, sizeof dir, "%s/%s", root, e->d_name);
    char ref[PATH_MAX + 340];
    snprintf(ref, sizeof ref, "%s/reference.json", dir);
    FILE *f = fopen(ref, "r");
    if (!f) continue;
    fclose(f);
    const double worst = run_fixture(&p, dir, e->d_name);
    cr_log_info("%s: worst relative logit error %.3g", e->d_name, worst);
    n++;
  }
  closedir(d);
  cr_assert_gt(n, 0, "no fixture found under %s", root);
  gpu_pair_close(&p);
}
