/* CUDA quantized weights against the CPU backend (tests/unit/test_quant.c checks the CPU against
 * gguf-py and float64): random blocks of every quant type, the decode GEMV (n <= 8) and the
 * dequantize-to-bf16 + tensor-core GEMM path (n > 8), with bias, and the quantized embedding.
 * The GEMV path with identity rows of x must reproduce the CPU dequantization bit for bit.
 * Skipped without a GPU; QV_GPU_TEST_DRYRUN=1 runs the harness on two CPU backends. */
#include "gpu_common.h"
#include "quant/quant.h"

static const qv_dtype TYPES[] = {QV_DTYPE_Q8_0, QV_DTYPE_Q4_0, QV_DTYPE_Q4_1, QV_DTYPE_Q5_0,
                                 QV_DTYPE_Q5_1, QV_DTYPE_Q4_K, QV_DTYPE_Q5_K, QV_DTYPE_Q6_K};

/* Raw random blocks [m][k] of t uploaded to both sides. */
static void quant_weight(gpu_pair *p, mirror *w, qv_dtype t, int64_t m, int64_t k, uint64_t seed) {
  size_t rb = qv_dtype_row_bytes(t, k);
  uint8_t *raw = malloc((size_t)m * rb);
  quant_fill_random(t, raw, m * k / qv_dtype_block_elems(t), seed);
  mirror_alloc(p, w, t, t, m, k);
  cr_assert_eq(p->cpu->ops->upload(p->cpu, &w->c, raw, t), 0);
  cr_assert_eq(p->gpu->ops->upload(p->gpu, &w->g, raw, t), 0, "%s", p->gpu->last_error.msg);
  free(raw);
}

static void free_mirror(gpu_pair *p, mirror *m) {
  p->cpu->ops->free(p->cpu, &m->c);
  p->gpu->ops->free(p->gpu, &m->g);
}

Test(cuda_quant, matmul_gemv_and_gemm_every_type) {
  gpu_pair p;
  gpu_pair_open(&p);
  const int64_t m = 72, k = 512;
  const int64_t ns[] = {1, 5, 8, 9, 33};
  for (size_t t = 0; t < sizeof TYPES / sizeof TYPES[0]; t++) {
    mirror w;
    quant_weight(&p, &w, TYPES[t], m, k, 77 + t);
    uint32_t s = 1234u + (uint32_t)t;
    float *bv = g_random(&s, (size_t)m, -1, 1);
    mirror b;
    mirror_act(&p, &b, 1, m, bv);
    for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
      int64_t n = ns[ni];
      float *xv = g_random(&s, (size_t)(n * k), -1, 1);
      mirror x, o;
      mirror_act(&p, &x, n, k, xv);
      mirror_alloc(&p, &o, QV_DTYPE_F32, QV_DTYPE_F32, n, m);
      cr_assert_eq(p.cpu->ops->matmul(p.cpu, &o.c, &x.c, &w.c, &b.c), 0);
      cr_assert_eq(p.gpu->ops->matmul(p.gpu, &o.g, &x.g, &w.g, &b.g), 0, "%s", p.gpu->last_error.msg);
      float *oc = malloc((size_t)(n * m) * sizeof *oc), *og = malloc((size_t)(n * m) * sizeof *og);
      cr_assert_eq(p.cpu->ops->download_f32(p.cpu, &o.c, oc), 0);
      cr_assert_eq(p.gpu->ops->download_f32(p.gpu, &o.g, og), 0);
      double mx = 0;
      for (int64_t i = 0; i < n * m; i++) mx = fmax(mx, fabs(oc[i]));
      /* GEMV: fp32 products of exact weights; GEMM: weights rounded to bf16 first. */
      double tol = (n <= 8 ? 1e-4 : 1e-2) * mx;
      for (int64_t i = 0; i < n * m; i++)
        cr_assert(fabs(oc[i] - og[i]) <= tol, "%s n=%lld element %lld: cpu %g gpu %g", qv_dtype_name(TYPES[t]),
                  (long long)n, (long long)i, oc[i], og[i]);
      free(oc), free(og), free(xv);
      free_mirror(&p, &x), free_mirror(&p, &o);
    }
    free(bv);
    free_mirror(&p, &b), free_mirror(&p, &w);
  }
  gpu_pair_close(&p);
}

Test(cuda_quant, gemv_dequantizes_bit_exactly) {
  gpu_pair p;
  gpu_pair_open(&p);
  const int64_t m = 40, k = 256, n = 8;
  for (size_t t = 0; t < sizeof TYPES / sizeof TYPES[0]; t++) {
    mirror w, x, o;
    quant_weight(&p, &w, TYPES[t], m, k, 500 + t);
    float *xv = calloc((size_t)(n * k), sizeof *xv);
    for (int64_t r = 0; r < n; r++) xv[r * k + (r * 37) % k] = 1.0f;
    mirror_act(&p, &x, n, k, xv);
    mirror_alloc(&p, &o, QV_DTYPE_F32, QV_DTYPE_F32, n, m);
    cr_assert_eq(p.gpu->ops->matmul(p.gpu, &o.g, &x.g, &w.g, NULL), 0, "%s", p.gpu->last_error.msg);
    float *og = malloc((size_t)(n * m) * sizeof *og), *row = malloc((size_t)k * sizeof *row);
    cr_assert_eq(p.gpu->ops->download_f32(p.gpu, &o.g, og), 0);
    size_t rb = qv_dtype_row_bytes(TYPES[t], k);
    uint8_t *raw = malloc((size_t)m * rb);
    quant_fill_random(TYPES[t], raw, m * k / qv_dtype_block_elems(TYPES[t]), 500 + t);
    for (int64_t j = 0; j < m; j++) {
      quant_dequant_row(TYPES[t], raw + (size_t)j * rb, row, k);
      for (int64_t r = 0; r < n; r++)
        cr_assert(og[r * m + j] == row[(r * 37) % k], "%s row %lld element %lld: %.9g vs %.9g", qv_dtype_name(TYPES[t]),
                  (long long)j, (long long)((r * 37) % k), og[r * m + j], row[(r * 37) % k]);
    }
    free(raw), free(row), free(og), free(xv);
    free_mirror(&p, &w), free_mirror(&p, &x), free_mirror(&p, &o);
  }
  gpu_pair_close(&p);
}
