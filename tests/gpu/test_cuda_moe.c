/* The model families' CUDA ops (kernels/moe.cu through src/backend/cuda/cuda_ext.c) against the
 * CPU reference on random inputs, outputs poisoned first: scale and gated activations (rtol
 * 1e-2, bf16 storage), routing (identical expert ids; weights within 1e-5 since logits are f32),
 * the expert-grouped matmul on bf16 and MXFP4 experts, and the
 * combine (rtol 2e-2 plus 1e-2 of the rms: bf16 inputs and outputs of long dot products). The
 * grouped matmul on one token alone must equal its rows in the full batch bit for bit (batch
 * invariance). Skipped without a CUDA build or a GPU. */
#include "gpu_common.h"

static void upload_both(gpu_pair *p, mirror *m, const void *v, qv_dtype src) {
  cr_assert_eq(p->cpu->ops->upload(p->cpu, &m->c, v, src), 0, "%s", p->cpu->last_error.msg);
  cr_assert_eq(p->gpu->ops->upload(p->gpu, &m->g, v, src), 0, "%s", p->gpu->last_error.msg);
}

Test(cuda_moe, scale_and_gated_act) {
  gpu_pair p;
  gpu_pair_open(&p);
  uint32_t rng = 0x51u;
  const int64_t n = 7, d = 300;
  float *gv = g_random(&rng, (size_t)(n * d), -5, 5), *uv = g_random(&rng, (size_t)(n * d), -5, 5);
  mirror g, u, o;
  mirror_act(&p, &g, n, d, gv);
  mirror_act(&p, &u, n, d, uv);
  mirror_act(&p, &o, n, d, gv);
  const qv_act acts[] = {{QV_ACT_SILU, 0, 0}, {QV_ACT_GELU_TANH, 0, 0}, {QV_ACT_SWIGLU_OAI, 1.702f, 3.0f}};
  for (int a = 0; a < 3; a++) {
    mirror_poison(&p, &o);
    cr_assert_eq(p.cpu->ops->gated_act(p.cpu, &o.c, &g.c, &u.c, &acts[a]), 0);
    cr_assert_eq(p.gpu->ops->gated_act(p.gpu, &o.g, &g.g, &u.g, &acts[a]), 0, "%s", p.gpu->last_error.msg);
    mirror_expect_close(&p, &o, 1e-2, 1e-3, "gated_act");
  }
  cr_assert_eq(p.cpu->ops->scale(p.cpu, &g.c, 6.5f), 0);
  cr_assert_eq(p.gpu->ops->scale(p.gpu, &g.g, 6.5f), 0);
  mirror_expect_close(&p, &g, 1e-2, 1e-3, "scale");
  mirror_free(&p, &g), mirror_free(&p, &u), mirror_free(&p, &o);
  free(gv), free(uv);
  gpu_pair_close(&p);
}

Test(cuda_moe, route_matmul_combine) {
  gpu_pair p;
  gpu_pair_open(&p);
  uint32_t rng = 0x77u;
  const int32_t n = 19, E = 16, k = 4;
  const int64_t dim = 256, ffn = 96;
  /* Routing on f32 logits: every kind, same ids, close weights. */
  float *lv = g_random(&rng, (size_t)(n * E), -3, 3);
  mirror l, ids, w;
  mirror_alloc(&p, &l, QV_DTYPE_F32, QV_DTYPE_F32, n, E);
  upload_both(&p, &l, lv, QV_DTYPE_F32);
  mirror_alloc(&p, &ids, QV_DTYPE_I32, QV_DTYPE_I32, n, k);
  mirror_alloc(&p, &w, QV_DTYPE_F32, QV_DTYPE_F32, n, k);
  int32_t *ic = malloc(sizeof(int32_t) * n * k), *ig = malloc(sizeof(int32_t) * n * k);
  float *wc = malloc(sizeof(float) * n * k), *wg = malloc(sizeof(float) * n * k);
  for (int kind = 0; kind < 3; kind++) {
    qv_moe_route r = {(qv_route_kind)kind, E, k, kind != 1};
    mirror_poison(&p, &w);
    cr_assert_eq(p.cpu->ops->moe_route(p.cpu, &l.c, &r, &ids.c, &w.c), 0);
    cr_assert_eq(p.gpu->ops->moe_route(p.gpu, &l.g, &r, &ids.g, &w.g), 0, "%s", p.gpu->last_error.msg);
    memcpy(ic, ids.c.data, sizeof(int32_t) * n * k);
    float tmp[19 * 4];
    if (p.dry) { /* the stand-in is a CPU backend, whose download is F32 only */
      memcpy(ig, ids.g.data, sizeof(int32_t) * n * k);
    } else {
      cr_assert_eq(p.gpu->ops->download_f32(p.gpu, &ids.g, tmp), 0);
      for (int i = 0; i < n * k; i++) ig[i] = (int32_t)tmp[i];
    }
    cr_assert(!memcmp(ic, ig, sizeof(int32_t) * n * k), "route kind %d: expert ids differ", kind);
    cr_assert_eq(p.cpu->ops->download_f32(p.cpu, &w.c, wc), 0);
    cr_assert_eq(p.gpu->ops->download_f32(p.gpu, &w.g, wg), 0);
    for (int i = 0; i < n * k; i++) cr_assert(fabsf(wc[i] - wg[i]) <= 1e-5f, "route kind %d weight %d", kind, i);
  }
  /* Experts: bf16-representable dense weights, and random MXFP4 bytes. */
  for (int mx = 0; mx < 2; mx++) {
    qv_experts ec = {.n_expert = E, .rows = ffn, .cols = dim, .mxfp4 = mx};
    qv_experts eg = ec;
    mirror wt, bl, sc, bias;
    float *bv = g_random(&rng, (size_t)(E * ffn), -0.5f, 0.5f);
    mirror_alloc(&p, &bias, QV_DTYPE_F32, QV_DTYPE_F32, E, ffn);
    upload_both(&p, &bias, bv, QV_DTYPE_F32);
    ec.bias = bias.c, eg.bias = bias.g;
    float *wv = NULL;
    uint8_t *bytes = NULL;
    if (mx) {
      bytes = malloc((size_t)(E * ffn * (dim / 2 + dim / 32)));
      for (int64_t i = 0; i < E * ffn * dim / 2; i++) bytes[i] = (uint8_t)g_rng(&rng);
      for (int64_t i = 0; i < E * ffn * dim / 32; i++) bytes[E * ffn * dim / 2 + i] = (uint8_t)(120 + g_rng(&rng) % 4);
      mirror_alloc(&p, &bl, QV_DTYPE_U8, QV_DTYPE_U8, E * ffn, dim / 2);
      mirror_alloc(&p, &sc, QV_DTYPE_U8, QV_DTYPE_U8, E * ffn, dim / 32);
      upload_both(&p, &bl, bytes, QV_DTYPE_U8);
      upload_both(&p, &sc, bytes + E * ffn * dim / 2, QV_DTYPE_U8);
      ec.blocks = bl.c, eg.blocks = bl.g, ec.scales = sc.c, eg.scales = sc.g;
    } else {
      wv = g_random(&rng, (size_t)(E * ffn * dim), -0.1f, 0.1f);
      mirror_weight(&p, &wt, E * ffn, dim, wv);
      ec.w = wt.c, eg.w = wt.g;
    }
    float *xv = g_random(&rng, (size_t)(n * dim), -1, 1);
    mirror x, out, out1;
    mirror_act(&p, &x, n, dim, xv);
    mirror_alloc(&p, &out, p.cpu->ops->act_dtype, p.gpu->ops->act_dtype, (int64_t)n * k, ffn);
    mirror_poison(&p, &out);
    cr_assert_eq(p.cpu->ops->moe_matmul(p.cpu, &out.c, &x.c, &ec, &ids.c), 0, "%s", p.cpu->last_error.msg);
    cr_assert_eq(p.gpu->ops->moe_matmul(p.gpu, &out.g, &x.g, &eg, &ids.g), 0, "%s", p.gpu->last_error.msg);
    mirror_expect_close(&p, &out, 2e-2, 1e-2, mx ? "moe_matmul mxfp4" : "moe_matmul bf16");
    /* Token 5 alone: the same bits as its rows in the batch. */
    mirror_alloc(&p, &out1, p.gpu->ops->act_dtype, p.gpu->ops->act_dtype, k, ffn);
    qv_tensor x5 = x.g, id5 = ids.g;
    x5.rows = 1, id5.rows = 1;
    x5.data = (char *)x.g.data + 5 * dim * qv_dtype_size(x.g.dtype);
    id5.data = (int32_t *)ids.g.data + 5 * k;
    cr_assert_eq(p.gpu->ops->moe_matmul(p.gpu, &out1.g, &x5, &eg, &id5), 0, "%s", p.gpu->last_error.msg);
    float *all = malloc(sizeof(float) * n * k * ffn), *one = malloc(sizeof(float) * k * ffn);
    cr_assert_eq(p.gpu->ops->download_f32(p.gpu, &out.g, all), 0);
    cr_assert_eq(p.gpu->ops->download_f32(p.gpu, &out1.g, one), 0);
    cr_assert(!memcmp(one, all + 5 * k * ffn, sizeof(float) * k * ffn), "token 5 alone differs from the batch");
    /* The combine of the slots' outputs with the routing weights. */
    mirror comb;
    mirror_alloc(&p, &comb, p.cpu->ops->act_dtype, p.gpu->ops->act_dtype, n, ffn);
    mirror_poison(&p, &comb);
    cr_assert_eq(p.cpu->ops->moe_combine(p.cpu, &comb.c, &out.c, &w.c), 0);
    cr_assert_eq(p.gpu->ops->moe_combine(p.gpu, &comb.g, &out.g, &w.g), 0, "%s", p.gpu->last_error.msg);
    mirror_expect_close(&p, &comb, 2e-2, 1e-2, "moe_combine");
    free(all), free(one), free(xv), free(bv), free(wv), free(bytes);
    mirror_free(&p, &comb), mirror_free(&p, &x), mirror_free(&p, &out), mirror_free(&p, &bias), mirror_free(&p, &out1);
    if (mx) mirror_free(&p, &bl), mirror_free(&p, &sc);
    else mirror_free(&p, &wt);
  }
  mirror_free(&p, &l), mirror_free(&p, &ids), mirror_free(&p, &w);
  free(lv), free(ic), free(ig), free(wc), free(wg);
  gpu_pair_close(&p);
}

/* gpt-oss's attention sinks on the generic kernel against the CPU, head_dim 64 (which would
 * otherwise take the tensor-core path), with a sliding window; rtol 2e-2 + 1e-2 rms. */
Test(cuda_moe, attention_sinks) {
  gpu_pair p;
  gpu_pair_open(&p);
  uint32_t rng = 0x99u;
  const int32_t H = 4, KV = 2, hd = 64, n = 21, bs = 16;
  const qv_kv_desc kv = {.n_layer = 1, .n_blocks = 4, .block_size = bs, .n_kv_head = KV, .head_dim = hd};
  cr_assert_eq(p.cpu->ops->kv_init(p.cpu, &kv), 0);
  cr_assert_eq(p.gpu->ops->kv_init(p.gpu, &kv), 0, "%s", p.gpu->last_error.msg);
  int32_t ids[21] = {0}, pos[21], slots[21], qs[2] = {0, n}, ctx[1] = {n}, bt[2] = {3, 1}, li[1] = {n - 1};
  for (int i = 0; i < n; i++) pos[i] = i, slots[i] = bt[i / bs] * bs + i % bs;
  qv_batch b = {.n_tokens = n, .n_seqs = 1, .n_logits = 1, .token_ids = ids, .positions = pos, .slot_mapping = slots,
                .seq_q_start = qs, .seq_ctx_len = ctx, .block_tables = bt, .max_blocks = 2, .logits_idx = li};
  cr_assert_eq(p.cpu->ops->set_batch(p.cpu, &b), 0);
  cr_assert_eq(p.gpu->ops->set_batch(p.gpu, &b), 0, "%s", p.gpu->last_error.msg);
  float *qv = g_random(&rng, (size_t)(n * H * hd), -1, 1), *kvv = g_random(&rng, (size_t)(n * KV * hd), -1, 1);
  float *vv = g_random(&rng, (size_t)(n * KV * hd), -1, 1), *sv = g_random(&rng, (size_t)H, -2, 2);
  mirror q, k, v, o, sk;
  mirror_act(&p, &q, n, H * hd, qv);
  mirror_act(&p, &k, n, KV * hd, kvv);
  mirror_act(&p, &v, n, KV * hd, vv);
  mirror_act(&p, &o, n, H * hd, qv);
  mirror_alloc(&p, &sk, QV_DTYPE_F32, QV_DTYPE_F32, 1, H);
  upload_both(&p, &sk, sv, QV_DTYPE_F32);
  cr_assert_eq(p.cpu->ops->kv_write(p.cpu, 0, &k.c, &v.c), 0);
  cr_assert_eq(p.gpu->ops->kv_write(p.gpu, 0, &k.g, &v.g), 0);
  mirror_poison(&p, &o);
  qv_attn_params pc = {.layer = 0, .n_head = H, .n_kv_head = KV, .head_dim = hd, .scale = 0.125f, .sliding_window = 8,
                       .sinks = &sk.c};
  qv_attn_params pg = pc;
  pg.sinks = &sk.g;
  cr_assert_eq(p.cpu->ops->attention(p.cpu, &o.c, &q.c, &pc), 0, "%s", p.cpu->last_error.msg);
  cr_assert_eq(p.gpu->ops->attention(p.gpu, &o.g, &q.g, &pg), 0, "%s", p.gpu->last_error.msg);
  mirror_expect_close(&p, &o, 2e-2, 1e-2, "attention with sinks");
  mirror_free(&p, &q), mirror_free(&p, &k), mirror_free(&p, &v), mirror_free(&p, &o), mirror_free(&p, &sk);
  free(qv), free(kvv), free(vv), free(sv);
  p.cpu->ops->kv_deinit(p.cpu);
  p.gpu->ops->kv_deinit(p.gpu);
  gpu_pair_close(&p);
}
