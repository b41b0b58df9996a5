/* The NCCL communicator on real GPUs: one rank per visible device, one thread per rank (TP 1
 * where one GPU exists, TP n where n exist), all-reduce (f32 and bf16), all-gather, broadcast
 * and barrier against a float64 host reference on random inputs. Skipped (not passed) in a build
 * without NCCL or on a machine without a GPU.
 * Tolerances: f32 all-reduce within 1e-6 relative of the float64 sum (NCCL's order of summation
 * is its own); bf16 within 2^-7 relative; gather and broadcast exact. */
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm/comm.h"
#include "core/dtype.h"

#ifdef QV_HAVE_NCCL
#include <cuda_runtime_api.h>

enum { N = 896 * 17 + 3, MAXDEV = 16 };

typedef struct nccl_rank {
  const uint8_t *id;
  int rank, size, fails;
  char msg[512];
  float *sum;       /* owned: [N] all-reduce result */
  uint16_t *sum_bf; /* owned: [N] bf16 all-reduce result */
  float *gathered;  /* owned: [size*N] */
  float *bcast;     /* owned: [N] */
} nccl_rank;

static void fill(float *x, size_t n, int seed, int rank) {
  uint64_t s = 0x9E3779B97F4A7C15ull ^ ((uint64_t)seed << 20) ^ (uint64_t)(rank + 1) * 0x51ull;
  for (size_t i = 0; i < n; i++) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    float v = ((float)(s >> 40) / 16777216.0f - 0.5f) * 2.0f;
    x[i] = v == 0.0f ? 0.25f : v;
  }
}

#define STEP(cond)                                                                                 \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      if (!r->fails) snprintf(r->msg, sizeof r->msg, "%s: %.300s", #cond, e.msg);                  \
      r->fails++;                                                                                  \
      goto out;                                                                                    \
    }                                                                                              \
  } while (0)

static void *rank_main(void *arg) {
  nccl_rank *r = arg;
  qv_error e = {0};
  qv_comm *c = NULL;
  float *d = NULL, *dg = NULL;
  size_t bytes = N * sizeof(float);
  r->sum = malloc(bytes);
  r->sum_bf = malloc(N * sizeof(uint16_t));
  r->gathered = malloc(bytes * (size_t)r->size);
  r->bcast = malloc(bytes);
  qv_comm_nccl_opts o = {
      .unique_id = r->id, .rank = r->rank, .size = r->size, .device = r->rank, .timeout_ms = 60000};
  STEP(qv_comm_nccl_create(&o, &c, &e) == 0);
  STEP(cudaSetDevice(r->rank) == cudaSuccess);
  STEP(cudaMalloc((void **)&d, bytes) == cudaSuccess);
  STEP(cudaMalloc((void **)&dg, bytes * (size_t)r->size) == cudaSuccess);
  fill(r->sum, N, 1, r->rank);
  STEP(cudaMemcpy(d, r->sum, bytes, cudaMemcpyHostToDevice) == cudaSuccess);
  STEP(qv_comm_all_reduce_sum(c, d, N, QV_COMM_F32, &e) == 0);
  STEP(cudaMemcpy(r->sum, d, bytes, cudaMemcpyDeviceToHost) == cudaSuccess);
  fill(r->bcast, N, 2, r->rank);
  for (size_t i = 0; i < N; i++) r->sum_bf[i] = qv_f32_to_bf16(r->bcast[i]);
  STEP(cudaMemcpy(d, r->sum_bf, N * 2, cudaMemcpyHostToDevice) == cudaSuccess);
  STEP(qv_comm_all_reduce_sum(c, d, N, QV_COMM_BF16, &e) == 0);
  STEP(cudaMemcpy(r->sum_bf, d, N * 2, cudaMemcpyDeviceToHost) == cudaSuccess);
  fill(r->bcast, N, 3, r->rank);
  STEP(cudaMemcpy(d, r->bcast, bytes, cudaMemcpyHostToDevice) == cudaSuccess);
  STEP(cudaMemset(dg, 0xFF, bytes * (size_t)r->size) == cudaSuccess); /* poisoned (NaN) */
  STEP(qv_comm_all_gather(c, d, dg, N, QV_COMM_F32, &e) == 0);
  STEP(cudaMemcpy(r->gathered, dg, bytes * (size_t)r->size, cudaMemcpyDeviceToHost) == cudaSuccess);
  if (r->rank != r->size - 1) STEP(cudaMemset(d, 0, bytes) == cudaSuccess);
  STEP(qv_comm_broadcast(c, d, bytes, r->size - 1, &e) == 0);
  STEP(cudaMemcpy(r->bcast, d, bytes, cudaMemcpyDeviceToHost) == cudaSuccess);
  STEP(qv_comm_barrier(c, &e) == 0);
out:
  cudaFree(d);
  cudaFree(dg);
  qv_comm_destroy(c);
  return NULL;
}
#endif

Test(comm_nccl, collectives_one_rank_per_gpu) {
#ifndef QV_HAVE_NCCL
  cr_skip_test("no NCCL: this build has no CUDA backend with NCCL");
#else
  int n_dev = 0;
  if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev < 1) cr_skip_test("no CUDA GPU");
  if (n_dev > MAXDEV) n_dev = MAXDEV;
  uint8_t id[QV_COMM_NCCL_ID_BYTES];
  qv_error e = {0};
  cr_assert_eq(qv_comm_nccl_unique_id(id, &e), 0, "%s", e.msg);
  nccl_rank ranks[MAXDEV];
  pthread_t th[MAXDEV];
  for (int r = 0; r < n_dev; r++) {
    ranks[r] = (nccl_rank){.id = id, .rank = r, .size = n_dev};
    cr_assert_eq(pthread_create(&th[r], NULL, rank_main, &ranks[r]), 0);
  }
  for (int r = 0; r < n_dev; r++) pthread_join(th[r], NULL);
  double *ref = calloc(N, sizeof(double)), *ref_bf = calloc(N, sizeof(double));
  float *x = malloc(N * sizeof(float));
  for (int r = 0; r < n_dev; r++) {
    fill(x, N, 1, r);
    for (size_t i = 0; i < N; i++) ref[i] += x[i];
    fill(x, N, 2, r);
    for (size_t i = 0; i < N; i++) ref_bf[i] += qv_bf16_to_f32(qv_f32_to_bf16(x[i]));
  }
  for (int r = 0; r < n_dev; r++) {
    nccl_rank *k = &ranks[r];
    cr_assert_eq(k->fails, 0, "rank %d: %s", r, k->msg);
    for (size_t i = 0; i < N; i++) {
      cr_assert_leq(fabs(k->sum[i] - ref[i]), 1e-6 * fabs(ref[i]) + 1e-6, "f32 [%zu]", i);
      cr_assert_leq(fabs(qv_bf16_to_f32(k->sum_bf[i]) - ref_bf[i]),
                    ldexp(fabs(ref_bf[i]), -7) + 1e-6, "bf16 [%zu]", i);
    }
    for (int src = 0; src < n_dev; src++) {
      fill(x, N, 3, src);
      cr_assert_eq(memcmp(k->gathered + (size_t)src * N, x, N * sizeof(float)), 0, "gather %d",
                   src);
    }
    fill(x, N, 3, n_dev - 1);
    cr_assert_eq(memcmp(k->bcast, x, N * sizeof(float)), 0, "broadcast at rank %d", r);
    free(k->sum);
    free(k->sum_bf);
    free(k->gathered);
    free(k->bcast);
  }
  free(ref);
  free(ref_bf);
  free(x);
#endif
}
