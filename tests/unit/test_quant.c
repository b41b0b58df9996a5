/* Quantized weights: the reference dequantizer against gguf-py (the library transformers loads
 * GGUF with) on random blocks of every type, and the CPU backend's quantized matmul and
 * embedding against float64 math on random blocks, on every instruction set this machine has:
 * bit-exact SIMD dequantization, batch invariance and thread-count invariance. */
#include <criterion/criterion.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "core/cpu_features.h"
#include "quant/quant.h"
#include "../test_util.h"

static const qv_dtype TYPES[] = {QV_DTYPE_Q8_0, QV_DTYPE_Q4_0, QV_DTYPE_Q4_1, QV_DTYPE_Q5_0,
                                 QV_DTYPE_Q5_1, QV_DTYPE_Q4_K, QV_DTYPE_Q5_K, QV_DTYPE_Q6_K};
#define N_TYPES (int)(sizeof TYPES / sizeof TYPES[0])
static const char *ISAS[] = {"portable", "avx2", "avx512"};

Test(quant, dequant_matches_gguf_py) {
  char path[4096];
  snprintf(path, sizeof path, "%s/tests/fixtures/gguf/quant-blocks.json", getenv("QV_SOURCE_DIR") ? getenv("QV_SOURCE_DIR") : ".");
  char *text = test_slurp(path, NULL);
  cr_assert(text, "cannot read %s", path);
  cJSON *root = cJSON_Parse(text);
  free(text);
  cr_assert(root);
  for (int t = 0; t < N_TYPES; t++) {
    const cJSON *e = cJSON_GetObjectItem(root, qv_dtype_name(TYPES[t]));
    cr_assert(e, "%s missing from the fixture", qv_dtype_name(TYPES[t]));
    const char *hex = cJSON_GetObjectItem(e, "hex")->valuestring;
    const cJSON *vals = cJSON_GetObjectItem(e, "values");
    size_t nb = strlen(hex) / 2;
    int n = cJSON_GetArraySize(vals);
    cr_assert_eq(nb, 2 * qv_dtype_block_bytes(TYPES[t]));
    cr_assert_eq(n, 2 * qv_dtype_block_elems(TYPES[t]));
    uint8_t *raw = malloc(nb);
    float *got = malloc((size_t)n * sizeof *got);
    for (size_t i = 0; i < nb; i++) sscanf(hex + 2 * i, "%2hhx", &raw[i]);
    for (int i = 0; i < n; i++) got[i] = NAN;
    quant_dequant_row(TYPES[t], raw, got, n);
    for (int i = 0; i < n; i++) {
      float want = (float)cJSON_GetArrayItem(vals, i)->valuedouble;
      cr_assert(got[i] == want, "%s element %d: %.9g != %.9g", qv_dtype_name(TYPES[t]), i, got[i], want);
    }
    free(raw);
    free(got);
  }
  cJSON_Delete(root);
}

static double urand(unsigned *s) {
  *s = *s * 1103515245u + 12345u;
  return ((*s >> 8) & 0xffffff) / (double)0x1000000 * 2.0 - 1.0;
}

static qv_backend *cpu(int threads, const char *isa) {
  setenv("QUIVER_CPU_ISA", isa, 1);
  qv_backend *be;
  qv_error e = {0};
  cr_assert_eq(qv_backend_create("cpu", &(qv_backend_opts){.n_threads = threads}, &be, &e), 0, "%s", e.msg);
  return be;
}

/* A random quantized weight [m][k] of type t on be, and its reference dequantization. */
static qv_tensor make_weight(qv_backend *be, qv_dtype t, int64_t m, int64_t k, uint64_t seed, float **deq) {
  size_t rb = qv_dtype_row_bytes(t, k);
  uint8_t *raw = malloc((size_t)m * rb);
  quant_fill_random(t, raw, m * k / qv_dtype_block_elems(t), seed);
  qv_tensor w;
  cr_assert_eq(be->ops->alloc(be, t, m, k, &w), 0);
  cr_assert_eq(be->ops->upload(be, &w, raw, t), 0);
  *deq = malloc((size_t)(m * k) * sizeof **deq);
  for (int64_t j = 0; j < m; j++) quant_dequant_row(t, raw + (size_t)j * rb, *deq + j * k, k);
  free(raw);
  return w;
}

static qv_tensor f32(qv_backend *be, int64_t r, int64_t c, unsigned *s) {
  qv_tensor t;
  cr_assert_eq(be->ops->alloc(be, QV_DTYPE_F32, r, c, &t), 0);
  for (int64_t i = 0; i < r * c; i++) ((float *)t.data)[i] = s ? (float)urand(s) : NAN;
  return t;
}

Test(quant, cpu_matmul_vs_f64_every_type_and_isa) {
  const int64_t n = 5, m = 37, k = 512; /* m not a multiple of the tile or of 4 */
  for (int isa = 0; isa < 3; isa++) {
    qv_backend *be = cpu(2, ISAS[isa]);
    for (int t = 0; t < N_TYPES; t++) {
      unsigned s = 7u + (unsigned)t;
      float *deq;
      qv_tensor w = make_weight(be, TYPES[t], m, k, 100 + (uint64_t)t, &deq);
      qv_tensor x = f32(be, n, k, &s), b = f32(be, 1, m, &s), o = f32(be, n, m, NULL);
      cr_assert_eq(be->ops->matmul(be, &o, &x, &w, &b), 0, "%s", be->last_error.msg);
      for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < m; j++) {
          double ref = ((float *)b.data)[j], mag = fabs(ref);
          for (int64_t q = 0; q < k; q++) {
            double p = (double)((float *)x.data)[i * k + q] * deq[j * k + q];
            ref += p;
            mag += fabs(p);
          }
          float got = ((float *)o.data)[i * m + j];
          cr_assert(fabs(got - ref) <= 1e-5 * mag + 1e-7, "%s %s (%lld,%lld): %g vs %g", ISAS[isa],
                    qv_dtype_name(TYPES[t]), (long long)i, (long long)j, got, ref);
        }
      free(deq);
      qv_tensor *ts[] = {&w, &x, &b, &o};
      for (int i = 0; i < 4; i++) be->ops->free(be, ts[i]);
    }
    qv_backend_destroy(be);
  }
  unsetenv("QUIVER_CPU_ISA");
}

/* x = rows of the identity: out[i][j] = w[j][i] exactly, so the SIMD dequantizers must equal
 * the reference bit for bit. */
Test(quant, simd_dequant_is_bit_exact) {
  const int64_t k = 256, m = 12;
  for (int isa = 0; isa < 3; isa++) {
    qv_backend *be = cpu(1, ISAS[isa]);
    for (int t = 0; t < N_TYPES; t++) {
      float *deq;
      qv_tensor w = make_weight(be, TYPES[t], m, k, 900 + (uint64_t)t, &deq);
      qv_tensor x = f32(be, k, k, NULL), o = f32(be, k, m, NULL);
      memset(x.data, 0, (size_t)(k * k) * sizeof(float));
      for (int64_t i = 0; i < k; i++) ((float *)x.data)[i * k + i] = 1.0f;
      cr_assert_eq(be->ops->matmul(be, &o, &x, &w, NULL), 0);
      for (int64_t i = 0; i < k; i++)
        for (int64_t j = 0; j < m; j++)
          cr_assert(((float *)o.data)[i * m + j] == deq[j * k + i], "%s %s element (%lld,%lld)", ISAS[isa],
                    qv_dtype_name(TYPES[t]), (long long)j, (long long)i);
      free(deq);
      be->ops->free(be, &w), be->ops->free(be, &x), be->ops->free(be, &o);
    }
    qv_backend_destroy(be);
  }
  unsetenv("QUIVER_CPU_ISA");
}

/* A row's result is the same bits alone and inside batches of 7 and 64 rows (where the matmul
 * takes the GEMM tiles and the larger dequantization blocks instead of the GEMV), with 1, 2 or 3
 * threads, on every kernel path this CPU can run. */
Test(quant, batch_and_thread_invariance) {
  const int64_t m = 203, k = 768, batches[] = {7, 64};
  const int threads[] = {1, 2, 3};
  for (int isa = 0; isa < 3; isa++) {
    if (!qv_cpu_isa_supported((qv_cpu_isa)(QV_CPU_ISA_PORTABLE + isa))) continue;
    for (int t = 0; t < N_TYPES; t++) {
      qv_backend *b1 = cpu(1, ISAS[isa]);
      unsigned s = 3;
      float *deq;
      qv_tensor w1 = make_weight(b1, TYPES[t], m, k, 5, &deq);
      free(deq);
      qv_tensor x = f32(b1, 64, k, &s), o1 = f32(b1, 1, m, NULL);
      float *alone = malloc((size_t)(64 * m) * sizeof *alone);
      for (int64_t i = 0; i < 64; i++) {
        qv_tensor xi = {.data = (float *)x.data + i * k, .dtype = QV_DTYPE_F32, .rows = 1, .cols = k};
        cr_assert_eq(b1->ops->matmul(b1, &o1, &xi, &w1, NULL), 0);
        memcpy(alone + i * m, o1.data, (size_t)m * sizeof(float));
      }
      for (int th = 0; th < 3; th++) {
        qv_backend *bt = cpu(threads[th], ISAS[isa]);
        qv_tensor wt = make_weight(bt, TYPES[t], m, k, 5, &deq);
        free(deq);
        for (int bi = 0; bi < 2; bi++) {
          int64_t n = batches[bi];
          qv_tensor xb = {.data = x.data, .dtype = QV_DTYPE_F32, .rows = n, .cols = k}, o = f32(bt, n, m, NULL);
          cr_assert_eq(bt->ops->matmul(bt, &o, &xb, &wt, NULL), 0);
          for (int64_t i = 0; i < n; i++)
            cr_assert(!memcmp(alone + i * m, (float *)o.data + i * m, (size_t)m * sizeof(float)),
                      "%s %s: row %lld of a batch of %lld with %d threads differs from the row alone", ISAS[isa],
                      qv_dtype_name(TYPES[t]), (long long)i, (long long)n, threads[th]);
          bt->ops->free(bt, &o);
        }
        bt->ops->free(bt, &wt);
        qv_backend_destroy(bt);
      }
      free(alone);
      b1->ops->free(b1, &w1), b1->ops->free(b1, &x), b1->ops->free(b1, &o1);
      qv_backend_destroy(b1);
    }
  }
  unsetenv("QUIVER_CPU_ISA");
}

/* The quantized path equals the f32 path on the dequantized weights, bit for bit (same kernel
 * chain), for a batch that takes the GEMM tiles. */
Test(quant, equals_f32_path_on_dequantized_weights) {
  const int64_t n = 19, m = 70, k = 512;
  for (int isa = 0; isa < 3; isa++) {
    if (!qv_cpu_isa_supported((qv_cpu_isa)(QV_CPU_ISA_PORTABLE + isa))) continue;
    qv_backend *be = cpu(2, ISAS[isa]);
    for (int t = 0; t < N_TYPES; t++) {
      unsigned s = 11;
      float *deq;
      qv_tensor w = make_weight(be, TYPES[t], m, k, 40 + (uint64_t)t, &deq), wf;
      cr_assert_eq(be->ops->alloc(be, QV_DTYPE_F32, m, k, &wf), 0);
      cr_assert_eq(be->ops->upload(be, &wf, deq, QV_DTYPE_F32), 0);
      qv_tensor x = f32(be, n, k, &s), b = f32(be, 1, m, &s), o = f32(be, n, m, NULL), of = f32(be, n, m, NULL);
      cr_assert_eq(be->ops->matmul(be, &o, &x, &w, &b), 0);
      cr_assert_eq(be->ops->matmul(be, &of, &x, &wf, &b), 0);
      cr_assert(!memcmp(o.data, of.data, (size_t)(n * m) * sizeof(float)), "%s %s", ISAS[isa], qv_dtype_name(TYPES[t]));
      free(deq);
      qv_tensor *ts[] = {&w, &wf, &x, &b, &o, &of};
      for (int i = 0; i < 6; i++) be->ops->free(be, ts[i]);
    }
    qv_backend_destroy(be);
  }
  unsetenv("QUIVER_CPU_ISA");
}

Test(quant, embed_rows_and_errors) {
  qv_backend *be = cpu(1, "avx2");
  const int64_t vocab = 10, dim = 64;
  float *deq;
  qv_tensor w = make_weight(be, QV_DTYPE_Q5_0, vocab, dim, 11, &deq);
  qv_kv_desc kd = {1, 4, 4, 1, 8};
  cr_assert_eq(be->ops->kv_init(be, &kd), 0);
  int32_t ids[3] = {7, 0, 9}, pos[3] = {0, 1, 2}, slots[3] = {0, 1, 2}, qs[2] = {0, 3}, ctx = 3, bt[1] = {0};
  qv_batch b = {.n_tokens = 3, .n_seqs = 1, .token_ids = ids, .positions = pos, .slot_mapping = slots,
                .seq_q_start = qs, .seq_ctx_len = &ctx, .block_tables = bt, .max_blocks = 1, .logits_idx = ids};
  cr_assert_eq(be->ops->set_batch(be, &b), 0, "%s", be->last_error.msg);
  qv_tensor o = f32(be, 3, dim, NULL);
  cr_assert_eq(be->ops->embed(be, &o, &w), 0, "%s", be->last_error.msg);
  for (int i = 0; i < 3; i++) cr_assert(!memcmp((float *)o.data + i * dim, deq + ids[i] * dim, dim * sizeof(float)));
  /* A quantized matmul with mismatched shapes is an error, not a crash. */
  qv_tensor bad = f32(be, 3, dim + 32, NULL), o2 = f32(be, 3, vocab, NULL);
  cr_assert_neq(be->ops->matmul(be, &o2, &bad, &w, NULL), 0);
  free(deq);
  be->ops->free(be, &w), be->ops->free(be, &o), be->ops->free(be, &bad), be->ops->free(be, &o2);
  qv_backend_destroy(be);
  unsetenv("QUIVER_CPU_ISA");
}

Test(quant, row_bytes_and_ggml_ids) {
  cr_assert_eq(qv_dtype_row_bytes(QV_DTYPE_Q4_K, 512), 288u);
  cr_assert_eq(qv_dtype_row_bytes(QV_DTYPE_Q6_K, 256), 210u);
  cr_assert_eq(qv_dtype_row_bytes(QV_DTYPE_Q8_0, 33), 0u);
  cr_assert_eq(qv_dtype_row_bytes(QV_DTYPE_F16, 3), 6u);
  qv_dtype d;
  cr_assert_eq(quant_dtype_from_ggml(GGML_TYPE_Q5_K, &d), 0);
  cr_assert_eq(d, QV_DTYPE_Q5_K);
  cr_assert_neq(quant_dtype_from_ggml(16 /* IQ2_XXS */, &d), 0);
  char buf[16];
  cr_assert_str_eq(quant_ggml_type_name(16, buf, sizeof buf), "IQ2_XXS");
  cr_assert_str_eq(quant_ggml_type_name(999, buf, sizeof buf), "type 999");
}
