/* Engine tests over the fake deterministic model (engine_fake.h): continuous batching, batch
 * invariance, chunked prefill, prefix caching, preemption, aborts at every stage, seeded
 * sampling across batch compositions, n > 1, stop tokens and strings, limits and rejections.
 * Every test ends with a leak check of the KV pool. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine_fake.h"

#define VOCAB 64

static fake_model fm;

static qv_engine *mk(qv_engine_opts *o, int with_text, int max_pos) {
  engine_model_ops m = fake_ops(&fm, VOCAB, max_pos);
  qv_engine *e = NULL;
  qv_error err = {0};
  int rc = engine_create_ops(&m, with_text ? &fake_text_ops : NULL, o, 1, &e, &err);
  cr_assert_eq(rc, 0, "create: %s", err.msg);
  return e;
}

static void done(qv_engine *e) {
  assert_no_leak(e);
  qv_engine_destroy(e);
  fake_model_free(&fm);
}

static uint64_t submit_greedy(qv_engine *e, const int32_t *prompt, int32_t n, int32_t max_tokens) {
  qv_request_params p;
  qv_request_params_default(&p);
  p.prompt_ids = prompt;
  p.n_prompt = n;
  p.max_tokens = max_tokens;
  p.sampling.temperature = 0.0f;
  uint64_t id = 0;
  qv_error err = {0};
  cr_assert_eq(qv_engine_submit(e, &p, &id, &err), 0, "submit: %s", err.msg);
  return id;
}

static void check_expected(const run_out *o, const int32_t *prompt, int32_t n_prompt, int32_t max_tokens) {
  int32_t exp[4096];
  int32_t n = fake_expected_greedy(&fm, prompt, n_prompt, max_tokens, exp);
  cr_assert_eq(o->n_tokens, n, "req %llu: %d tokens, expected %d", (unsigned long long)o->id, o->n_tokens, n);
  for (int32_t i = 0; i < n; i++) cr_assert_eq(o->tokens[i], exp[i], "token %d differs", i);
  cr_assert_eq(o->n_finish, 1);
  cr_assert_eq(o->completion_tokens, n);
  cr_assert_eq(o->prompt_tokens, n_prompt);
}

Test(engine, greedy_matches_reference) {
  qv_engine_opts o;
  qv_engine_opts_default(&o);
  o.n_kv_blocks = 64;
  qv_engine *e = mk(&o, 0, 512);
  unsigned seed = 11;
  int32_t prompt[13];
  fill_random(prompt, 13, VOCAB, &seed);
  run_out *out = calloc(1, sizeof *out);
  out->id = submit_greedy(e, prompt, 13, 20);
  run_until_done(e, out, 1);
  check_expected(out, prompt, 13, 20);
  cr_assert_eq(out->finish, QV_FINISH_LENGTH);
  cr_assert_eq(out->stop_token, -1);
  free(out);
  done(e);
}

/* Acceptance: 64 greedy requests of different prompt lengths run together give exactly the
 * tokens each gives alone (the fake model's reference, and the engine run alone for some). */
Test(engine, batch_invariance_64) {
  qv_engine_opts o;
  qv_engine_opts_default(&o);
  o.n_kv_blocks = 1024;
  o.max_num_batched_tokens = 256; /* long prompts are chunked and mixed with decodes */
  o.max_num_seqs = 64;
  qv_engine *e = mk(&o, 0, 512);
  enum { N = 64 };
  int32_t prompts[N][200], lens[N];
  unsigned seed = 5;
  run_out *out = calloc(N, sizeof *out);
  for (int i = 0; i < N; i++) {
    lens[i] = 1 + (int32_t)(rand_r(&seed) % 199);
    fill_random(prompts[i], lens[i], VOCAB, &seed);
    out[i].id = submit_greedy(e, prompts[i], lens[i], 16 + i % 9);
  }
  run_until_done(e, out, N);
  for (int i = 0; i < N; i++) check_expected(&out[i], prompts[i], lens[i], 16 + i % 9);
  assert_no_leak(e);
  /* A few alone, through the same engine. */
  for (int i = 0; i < N; i += 13) {
    run_out one = {0};
    one.id = submit_greedy(e, prompts[i], lens[i], 16 + i % 9);
    run_until_done(e, &one, 1);
    cr_assert_eq(one.n_tokens, out[i].n_tokens);
    cr_assert_arr_eq(one.tokens, out[i].tokens, sizeof(int32_t) * (size_t)one.n_tokens);
  }
  free(out);
  done(e);
}

Test(engine, chunked_prefill_respects_budget) {
  qv_engine_opts o;
  qv_engine_opts_default(&o);
  o.n_kv_blocks = 64;
  o.max_num_batched_tokens = 48;
  qv_engine *e = mk(&o, 0, 512);
  unsigned seed = 3;
  int32_t prompt[300];
  fill_random(prompt, 300, VOCAB, &seed);
  run_out *out = calloc(1, sizeof *out);
  out->id = submit_greedy(e, prompt, 300, 5);
  run_until_done(e, out, 1);
  check_expected(out, prompt, 300, 5);
  /* 300 prompt tokens in chunks of 48 take 7 forwards, then 4 decodes. */
  cr_assert_eq(fm.n_forward, 7 + 4, "forwards: %lld", (long long)fm.n_forward);
  free(out);
  done(e);
}

/* Acceptance: a second request sharing a 200-token prefix reports >= 192 cached tokens,
 * computes only the rest, and gives identical output to a cold run. */
Test(engine, prefix_caching) {
  qv_engine_opts o;
  qv_engine_opts_default(&o);
  o.n_kv_blocks = 128;
  qv_engine *e = mk(&o, 0, 512);
  unsigned seed = 9;
  int32_t a[230], b[230];
  fill_random(a, 230, VOCAB, &seed);
  memcpy(b, a, 200 * sizeof(int32_t));
  fill_random(b + 200, 30, VOCAB, &seed);
  run_out *oa = calloc(1, sizeof *oa), *ob = calloc(1, sizeof *ob);
  oa->id = submit_greedy(e, a, 230, 8);
  run_until_done(e, oa, 1);
  check_expected(oa, a, 230, 8);
  cr_assert_eq(oa->cached_tokens, 0);
  int64_t before = fm.n_tokens_computed;
  ob->id = submit_greedy(e, b, 230, 8);
  run_until_done(e, ob, 1);
  check_expected(ob, b, 230, 8);
  cr_assert_geq(ob->cached_tokens, 192, "cached %d", ob->cached_tokens);
  cr_assert_eq(fm.n_tokens_computed - before, 230 - ob->cached_tokens + 7, "computed %lld",
               (long long)(fm.n_tokens_computed - before));
  qv_engine_stats st;
  qv_engine_get_stats(e, &st);
  cr_assert_eq(st.prefix_hits, ob->cached_tokens);
  cr_assert_eq(st.prefix_queries, 460);
  /* The same prompt again hits everything but the last token. */
  run_out *oc = calloc(1, sizeof *oc);
  oc->id = submit_greedy(e, b, 230, 8);
  run_until_done(e, oc, 1);
  cr_assert_eq(oc->cached_tokens, 224);
  cr_assert_arr_eq(oc->tokens, ob->tokens, sizeof(int32_t) * 8);
  free(oa);
  free(ob);
  free(oc);
  done(e);
}

Test(engine, prefix_caching_off) {
  qv_engine_opts o;
  qv_engine_opts_default(&o);
  o.n_kv_blocks = 128;
  o.enable_prefix_caching = 0;
  qv_engine *e = mk(&o, 0, 512);
  unsigned seed = 9;
  int32_t a[100];
  fill_random(a, 100, VOCAB, &seed);
  for (int k = 0; k < 2; k++) {
    run_out *out = calloc(1, sizeof *out);
    out->id = submit_greedy(e, a, 100, 4);
    run_until_done(e, out, 1);
    check_expected(out, a, 100, 4);
    cr_assert_eq(out->cached_tokens, 0);
    free(out);
  }
  cr_assert_eq(fm.n_tokens_computed, 2 * (100 + 3));
  done(e);
}

/* Acceptance: a pool too small for all running requests; everything completes with outputs
 * identical to the unconstrained reference, with preemptions, and no block leaks. */
Test(engine, preemption_small_pool) {
  for (int caching = 0; caching < 2; caching++) {
    qv_engine_opts o;
    qv_engine_opts_default(&o);
    o.n_kv_blocks = 24; /* 16 requests need ~5 blocks each */
    o.block_size = 16;
    o.enable_prefix_caching = caching;
    qv_engine *e = mk(&o, 0, 384);
    enum { N = 16 };
    int32_t prompts[N][64], lens[N];
    unsigned seed = 21 + (unsigned)caching;
    run_out *out = calloc(N, sizeof *out);
    for (int i = 0; i < N; i++) {
      lens[i] = 20 + (int32_t)(rand_r(&seed) % 40);
      fill_random(prompts[i], lens[i], VOCAB, &seed);
      out[i].id = submit_greedy(e, prompts[i], lens[i], 30);
    }
    run_until_done(e, out, N);
    for (int i = 0; i < N; i++) check_expected(&out[i], prompts[i], lens[i], 30);
    qv_engine_stats st;
    qv_engine_get_stats(e, &st);
    cr_assert_gt(st.n_preemptions, 0, "the pool was meant to be too small");
    free(out);
    done(e);
  }
}

Test(engine, preemption_single_block_pool_edge) {
  /* Pool exactly one max-length sequence: max_model_len is clamped to it and requests still
   * finish one at a time. */
  qv_engine_opts o;
  qv_engine_opts_default(&o);
  o.n_kv_blocks = 4;
  o.block_size = 8;
  qv_engine *e = mk(&o, 0, 512);
  cr_assert_eq(qv_engine_max_model_len(e), 32);
  int32_t prompts[6][10];
  unsigned seed = 4;
  run_out *out = calloc(6, sizeof *out);
  for (int i = 0; i < 6; i++) {
    fill_random(prompts[i], 10, VOCAB, &seed);
    out[i].id = submit_greedy(e, prompts[i], 10, -1);
  }
  run_until_done(e, out, 6);
  for (int i = 0; i < 6; i++) {
    check_expected(&out[i], prompts[i], 10, 22);
    cr_assert_eq(out[i].finish, QV_FINISH_LENGTH);
  }
  done(e);
}

/* Aborts while waiting, while prefilling, while decoding: each ends with an abort FINISH and
 * frees everything; other requests are unaffected. */
Test(engine, aborts_at_every_stage) {
  qv_engine_opts o;
  qv_engine_opts_default(&o);
  o.n_kv_blocks = 64;
  o.max_num_batched_tokens = 32;
  qv_engine *e = mk(&o, 0, 512);
  unsigned seed = 8;
  int32_t p1[100], p2[20], p3[20];
  fill_random(p1, 100, VOCAB, &seed);
  fill_random(p2, 20, VOCAB, &seed);
  fill_random(p3, 20, VOCAB, &seed);
  run_out *out = calloc(4, sizeof *out);
  /* waiting: aborted before any step */
  out[0].id = submit_greedy(e, p2, 20, 10);
  qv_engine_abort(e, out[0].id);
  qv_engine_abort(e, 987654); /* unknown: ignored */
  engine_step(e);
  collect(e, out, 4);
  cr_assert_eq(out[0].n_finish, 1);
  cr_assert_eq(out[0].finish, QV_FINISH_ABORT);
  cr_assert_eq(out[0].n_tokens, 0);
  /* prefilling: a 100-token prompt with a 32-token budget is mid-prefill after one step */
  out[1].id = submit_greedy(e, p1, 100, 10);
  out[2].id = submit_greedy(e, p3, 20, 10); /* survives */
  engine_step(e);
  qv_engine_stats st;
  qv_engine_get_stats(e, &st);
  cr_assert_gt(st.n_kv_blocks_used, 0);
  qv_engine_abort(e, out[1].id);
  engine_step(e);
  collect(e, out, 4);
  cr_assert_eq(out[1].finish, QV_FINISH_ABORT);
  cr_assert_eq(out[1].n_tokens, 0);
  /* decoding */
  out[3].id = submit_greedy(e, p2, 20, 50);
  for (int i = 0; i < 4; i++) engine_step(e);
  collect(e, out, 4);
  cr_assert_gt(out[3].n_tokens, 0);
  cr_assert_eq(out[3].n_finish, 0);
  qv_engine_abort(e, out[3].id);
  engine_step(e);
  collect(e, out, 4);
  cr_assert_eq(out[3].finish, QV_FINISH_ABORT);
  int32_t got = out[3].n_tokens;
  run_until_done(e, out + 2, 1);
  check_expected(&out[2], p3, 20, 10);
  collect(e, out, 4);
  cr_assert_eq(out[3].n_tokens, got, "tokens after abort");
  for (int i = 0; i < 4; i++) cr_assert_eq(out[i].n_finish, 1);
  free(out);
  done(e);
}

static uint64_t submit_sampled(qv_engine *e, const int32_t *prompt, int32_t n, int32_t max_tokens, uint64_t seed,
                               int has_seed, int32_t nchoices) {
  qv_request_params p;
  qv_request_params_default(&p);
  p.prompt_ids = prompt;
  p.n_prompt = n;
  p.max_tokens = max_tokens;
  p.sampling.temperature = 0.9f;
  p.sampling.top_p = 0.95f;
  p.sampling.top_k = 40;
  p.sampling.has_seed = has_seed;
  p.sampling.seed = seed;
  p.sampling.logprobs = 1;
  p.n = nchoices;
  uint64_t id = 0;
  qv_error err = {0};
  cr_assert_eq(qv_engine_submit(e, &p, &id, &err), 0, "submit: %s", err.msg);
  return id;
}

/* Acceptance: same seed, same tokens, whatever else is batched. */
Test(engine, seeded_sampling_batch_independent) {
  qv_engine_opts o;
  qv_engine_opts_default(&o);
  o.n_kv_blocks = 256;
  qv_engine *e = mk(&o, 0, 512);
  unsigned seed = 77;
  int32_t prompt[30];
  fill_random(prompt, 30, VOCAB, &seed);
  run_out *alone = calloc(1, sizeof *alone);
  alone->id = submit_sampled(e, prompt, 30, 40, 1234, 1, 1);
  run_until_done(e, alone, 1);
  cr_assert_eq(alone->n_tokens, 40);
  /* Now with 20 other requests (different seeds, lengths) around it. */
  enum { M = 21 };
  run_out *many = calloc(M, sizeof *many);
  int32_t others[M][50];
  for (int i = 0; i < M; i++) {
    if (i == 7) {
      many[i].id = submit_sampled(e, prompt, 30, 40, 1234, 1, 1);
      continue;
    }
    int32_t n = 5 + (int32_t)(rand_r(&seed) % 45);
    fill_random(others[i], n, VOCAB, &seed);
    many[i].id = submit_sampled(e, others[i], n, 10 + i, (uint64_t)i, 1, 1);
  }
  run_until_done(e, many, M);
  cr_assert_arr_eq(many[7].tokens, alone->tokens, sizeof(int32_t) * 40);
  cr_assert_arr_eq(many[7].logprobs, alone->logprobs, sizeof(float) * 40);
  /* A different seed gives a different sequence (40 draws from ~40-way distributions). */
  run_out *other = calloc(1, sizeof *other);
  other->id = submit_sampled(e, prompt, 30, 40, 999, 1, 1);
  run_until_done(e, other, 1);
  cr_assert(memcmp(other->tokens, alone->tokens, sizeof(int32_t) * 40) != 0);
  /* Logprobs are real log-probabilities of the raw distribution: negative, above -20. */
  for (int i = 0; i < 40; i++) cr_assert(alone->logprobs[i] < 0.0f && alone->logprobs[i] > -20.0f);
  free(alone);
  free(many);
  free(other);
  done(e);
}

/* n > 1: choices share the prompt's full blocks (computed once), each has its own RNG stream,
 * each gets a FINISH with the whole request's usage. */
Test(engine, n_choices_share_prompt) {
  qv_engine_opts o;
  qv_engine_opts_default(&o);
  o.n_kv_blocks = 256;
  o.enable_prefix_caching = 0; /* sharing must not depend on the prefix cache */
  qv_engine *e = mk(&o, 0, 512);
  unsigned seed = 31;
  int32_t prompt[100];
  fill_random(prompt, 100, VOCAB, &seed);
  uint64_t id = submit_sampled(e, prompt, 100, 12, 5, 1, 4);
  int fin = 0, ntok[4] = {0}, total = -1;
  int32_t toks[4][12];
  for (int iter = 0; fin < 4; iter++) {
    cr_assert(iter < 10000);
    engine_step(e);
    qv_event *evs[16];
    int n;
    while ((n = qv_engine_poll(e, evs, 16)) > 0)
      for (int i = 0; i < n; i++) {
        cr_assert_eq(evs[i]->req_id, id);
        cr_assert(evs[i]->choice >= 0 && evs[i]->choice < 4);
        if (evs[i]->type == QV_EVENT_TOKENS) toks[evs[i]->choice][ntok[evs[i]->choice]++] = evs[i]->token_ids[0];
        else {
          fin++;
          cr_assert_eq(evs[i]->completion_tokens, 12);
          total = evs[i]->total_completion_tokens;
        }
        qv_event_free(evs[i]);
      }
  }
  cr_assert_eq(total, 48);
  /* Prompt computed once, plus each follower's partial last block (100 % 16 = 4 tokens), plus
   * 11 decode tokens per choice. */
  cr_assert_eq(fm.n_tokens_computed, 100 + 3 * 4 + 4 * 11, "computed %lld", (long long)fm.n_tokens_computed);
  cr_assert(memcmp(toks[0], toks[1], sizeof toks[0]) || memcmp(toks[1], toks[2], sizeof toks[0]),
            "choices should differ");
  done(e);
}

Test(engine, eos_stop_token_min_tokens_ignore_eos) {
  qv_engine_opts o;
  qv_engine_opts_default(&o);
  o.n_kv_blocks = 128;
  qv_engine *e = mk(&o, 0, 512);
  fm.eos_boost = 3; /* EOS now wins often */
  unsigned seed = 2;
  int32_t prompt[10];
  /* find a prompt whose greedy output hits EOS within 30 tokens, after at least 2 tokens */
  int32_t exp[64], n = 0;
  for (int tries = 0; tries < 1000; tries++) {
    fill_random(prompt, 10, VOCAB, &seed);
    n = fake_expected_greedy(&fm, prompt, 10, 30, exp);
    if (n >= 3 && n < 30) break;
  }
  cr_assert(n >= 3 && n < 30 && exp[n - 1] == FAKE_EOS);
  run_out *out = calloc(4, sizeof *out);
  out[0].id = submit_greedy(e, prompt, 10, 30);
  run_until_done(e, out, 1);
  check_expected(&out[0], prompt, 10, 30);
  cr_assert_eq(out[0].finish, QV_FINISH_STOP);
  cr_assert_eq(out[0].stop_token, FAKE_EOS);
  /* ignore_eos runs to max_tokens */
  qv_request_params p;
  qv_request_params_default(&p);
  p.prompt_ids = prompt;
  p.n_prompt = 10;
  p.max_tokens = 30;
  p.sampling.temperature = 0;
  p.ignore_eos = 1;
  cr_assert_eq(qv_engine_submit(e, &p, &out[1].id, NULL), 0);
  run_until_done(e, out + 1, 1);
  cr_assert_eq(out[1].n_tokens, 30);
  cr_assert_eq(out[1].finish, QV_FINISH_LENGTH);
  cr_assert_arr_eq(out[1].tokens, exp, sizeof(int32_t) * (size_t)n);
  /* min_tokens bans EOS until reached: the EOS position gets the runner-up */
  p.ignore_eos = 0;
  p.min_tokens = n + 2;
  cr_assert_eq(qv_engine_submit(e, &p, &out[2].id, NULL), 0);
  run_until_done(e, out + 2, 1);
  cr_assert_geq(out[2].n_tokens, n + 2);
  cr_assert_neq(out[2].tokens[n - 1], FAKE_EOS);
  for (int32_t i = 0; i < n + 1; i++) cr_assert_neq(out[2].tokens[i], FAKE_EOS);
  /* a stop token id: the second generated token */
  p.min_tokens = 0;
  int32_t stop_id = exp[1];
  p.stop_token_ids = &stop_id;
  p.n_stop_token_ids = 1;
  cr_assert_eq(qv_engine_submit(e, &p, &out[3].id, NULL), 0);
  run_until_done(e, out + 3, 1);
  int32_t first = exp[0] == stop_id ? 1 : 2;
  cr_assert_eq(out[3].n_tokens, first);
  cr_assert_eq(out[3].finish, QV_FINISH_STOP);
  cr_assert_eq(out[3].stop_token, stop_id);
  free(out);
  done(e);
}

/* Text of the greedy continuation, via the fake detokenizer. */
static size_t expected_text(const int32_t *toks, int32_t n, char *buf) {
  size_t len = 0;
  for (int32_t i = 0; i < n; i++) len += fake_token_text(toks[i], buf + len, 1);
  buf[len] = 0;
  return len;
}

/* Stop strings spanning tokens: the final text and the concatenated stream both end before the
 * stop (or after it with include_stop_str), and no delta runs past it. */
Test(engine, stop_strings_span_tokens) {
  qv_engine_opts o;
  qv_engine_opts_default(&o);
  o.n_kv_blocks = 128;
  qv_engine *e = mk(&o, 1, 512);
  unsigned seed = 12;
  int32_t prompt[8], exp[40];
  fill_random(prompt, 8, VOCAB, &seed);
  int32_t n = fake_expected_greedy(&fm, prompt, 8, 40, exp);
  cr_assert_eq(n, 40);
  char full[128];
  size_t flen = expected_text(exp, 40, full);
  cr_assert_gt(flen, 20);
  /* A 4-byte stop starting mid-text: spans at least two tokens since tokens are <= 2 bytes. */
  char stop[8];
  size_t at = 11;
  memcpy(stop, full + at, 4);
  stop[4] = 0;
  size_t first = (size_t)(strstr(full, stop) - full);
  for (int include = 0; include < 2; include++) {
    qv_request_params p;
    qv_request_params_default(&p);
    p.prompt_ids = prompt;
    p.n_prompt = 8;
    p.max_tokens = 40;
    p.sampling.temperature = 0;
    const char *stops[2] = {"QQQ-never", stop};
    p.stop = stops;
    p.n_stop = 2;
    p.include_stop_str = include;
    run_out *out = calloc(1, sizeof *out);
    cr_assert_eq(qv_engine_submit(e, &p, &out->id, NULL), 0);
    run_until_done(e, out, 1);
    cr_assert_eq(out->finish, QV_FINISH_STOP);
    cr_assert_str_eq(out->stop_str, stop);
    cr_assert_eq(out->stop_token, -1);
    size_t want = first + (include ? 4 : 0);
    cr_assert_eq(out->text_len, want, "text '%s' (%zu), want %zu bytes of '%s'", out->text, out->text_len, want, full);
    cr_assert(!memcmp(out->text, full, want));
    /* generation stopped at the token that completed the stop */
    char tt[128];
    size_t tl = expected_text(out->tokens, out->n_tokens, tt);
    cr_assert_geq(tl, first + 4);
    cr_assert_lt(tl - (first + 4), 2);
    free(out);
  }
  done(e);
}

/* Streaming hold-back: with a stop string that never fully matches but whose prefix appears,
 * the held text is released later and the stream equals the whole text. */
Test(engine, stop_string_holdback_releases) {
  qv_engine_opts o;
  qv_engine_opts_default(&o);
  o.n_kv_blocks = 128;
  qv_engine *e = mk(&o, 1, 512);
  unsigned seed = 14;
  int32_t prompt[8], exp[30];
  fill_random(prompt, 8, VOCAB, &seed);
  fake_expected_greedy(&fm, prompt, 8, 30, exp);
  char full[128];
  size_t flen = expected_text(exp, 30, full);
  char stop[8] = {full[5], full[6], '#', 0}; /* prefix occurs, '#' never generated */
  qv_request_params p;
  qv_request_params_default(&p);
  p.prompt_ids = prompt;
  p.n_prompt = 8;
  p.max_tokens = 30;
  p.sampling.temperature = 0;
  const char *stops[1] = {stop};
  p.stop = stops;
  p.n_stop = 1;
  run_out *out = calloc(1, sizeof *out);
  cr_assert_eq(qv_engine_submit(e, &p, &out->id, NULL), 0);
  run_until_done(e, out, 1);
  cr_assert_eq(out->finish, QV_FINISH_LENGTH);
  cr_assert_eq(out->text_len, flen);
  cr_assert_str_eq(out->text, full);
  free(out);
  done(e);
}

Test(engine, rejects_bad_requests) {
  qv_engine_opts o;
  qv_engine_opts_default(&o);
  o.n_kv_blocks = 16;
  o.max_model_len = 100;
  qv_engine *e = mk(&o, 0, 512);
  int32_t prompt[101];
  unsigned seed = 1;
  fill_random(prompt, 101, VOCAB, &seed);
  qv_request_params p;
  qv_error err = {0};
  qv_request_params_default(&p);
  p.prompt_ids = prompt;
  p.n_prompt = 101;
  cr_assert_eq(qv_engine_submit(e, &p, NULL, &err), QV_ERANGE);
  cr_assert(strstr(err.msg, "max_model_len"), "%s", err.msg);
  p.n_prompt = 0;
  cr_assert_eq(qv_engine_submit(e, &p, NULL, &err), QV_EINVAL);
  p.n_prompt = 5;
  int32_t bad = VOCAB;
  p.prompt_ids = &bad;
  p.n_prompt = 1;
  cr_assert_eq(qv_engine_submit(e, &p, NULL, &err), QV_EINVAL);
  p.prompt_ids = prompt;
  p.n_prompt = 5;
#define BAD(field, val)                                                 \
  do {                                                                  \
    qv_request_params q = p;                                            \
    q.field = val;                                                      \
    cr_assert_eq(qv_engine_submit(e, &q, NULL, &err), QV_EINVAL, #field); \
  } while (0)
  BAD(sampling.temperature, -1.0f);
  BAD(sampling.temperature, NAN);
  BAD(sampling.top_p, 0.0f);
  BAD(sampling.top_p, 1.5f);
  BAD(sampling.top_k, -2);
  BAD(sampling.min_p, 2.0f);
  BAD(sampling.repetition_penalty, 0.0f);
  BAD(sampling.top_logprobs, 21);
  BAD(n, 0);
  BAD(max_tokens, -2);
  BAD(min_tokens, 100);
  BAD(n_stop, 1); /* no tokenizer in this engine (and stop is NULL) */
  const char *stops[1] = {"x"};
  qv_request_params q = p;
  q.stop = stops;
  q.n_stop = 1;
  cr_assert_eq(qv_engine_submit(e, &q, NULL, &err), QV_EINVAL);
  cr_assert(strstr(err.msg, "tokenizer"), "%s", err.msg);
  int32_t bias_id = 999;
  float bias_v = 1.0f;
  q = p;
  q.sampling.logit_bias_ids = &bias_id;
  q.sampling.logit_bias_values = &bias_v;
  q.sampling.n_logit_bias = 1;
  cr_assert_eq(qv_engine_submit(e, &q, NULL, &err), QV_EINVAL);
  /* max_tokens 0 finishes at once with no tokens */
  run_out *out = calloc(1, sizeof *out);
  q = p;
  q.max_tokens = 0;
  cr_assert_eq(qv_engine_submit(e, &q, &out->id, NULL), 0);
  run_until_done(e, out, 1);
  cr_assert_eq(out->n_tokens, 0);
  cr_assert_eq(out->finish, QV_FINISH_LENGTH);
  free(out);
  done(e);
}

Test(engine, bad_options) {
  engine_model_ops m = fake_ops(&fm, VOCAB, 512);
  qv_engine *e = NULL;
  qv_engine_opts o;
  qv_error err = {0};
  qv_engine_opts_default(&o);
  o.block_size = 0;
  cr_assert_eq(engine_create_ops(&m, NULL, &o, 1, &e, &err), QV_EINVAL);
  qv_engine_opts_default(&o);
  o.max_model_len = 1000; /* > max_pos */
  cr_assert_eq(engine_create_ops(&m, NULL, &o, 1, &e, &err), QV_EINVAL);
  qv_engine_opts_default(&o);
  o.n_kv_blocks = 2;
  o.max_model_len = 100; /* explicit and larger than the pool */
  cr_assert_eq(engine_create_ops(&m, NULL, &o, 1, &e, &err), QV_ERANGE);
  cr_assert_null(e);
  fake_model_free(&fm);
}

Test(engine, busy_when_queue_full) {
  qv_engine_opts o;
  qv_engine_opts_default(&o);
  o.n_kv_blocks = 16;
  o.max_waiting = 2;
  qv_engine *e = mk(&o, 0, 512);
  int32_t prompt[4] = {5, 6, 7, 8};
  run_out *out = calloc(2, sizeof *out);
  out[0].id = submit_greedy(e, prompt, 4, 3);
  out[1].id = submit_greedy(e, prompt, 4, 3);
  qv_request_params p;
  qv_request_params_default(&p);
  p.prompt_ids = prompt;
  p.n_prompt = 4;
  cr_assert_eq(qv_engine_submit(e, &p, NULL, NULL), QV_EBUSY);
  run_until_done(e, out, 2);
  free(out);
  done(e);
}

/* The threaded engine with a notify hook: events arrive without the caller stepping. */
typedef struct notify_state {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int count;
} notify_state;

static void on_notify(void *arg) {
  notify_state *s = arg;
  pthread_mutex_lock(&s->mu);
  s->count++;
  pthread_cond_signal(&s->cv);
  pthread_mutex_unlock(&s->mu);
}

Test(engine, threaded_with_notify) {
  engine_model_ops m = fake_ops(&fm, VOCAB, 512);
  qv_engine_opts o;
  qv_engine_opts_default(&o);
  o.n_kv_blocks = 128;
  qv_engine *e = NULL;
  qv_error err = {0};
  cr_assert_eq(engine_create_ops(&m, NULL, &o, 0, &e, &err), 0, "%s", err.msg);
  notify_state ns = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
  qv_engine_set_notify(e, on_notify, &ns);
  enum { N = 8 };
  int32_t prompts[N][40];
  unsigned seed = 55;
  run_out *out = calloc(N, sizeof *out);
  for (int i = 0; i < N; i++) {
    fill_random(prompts[i], 10 + i, VOCAB, &seed);
    out[i].id = submit_greedy(e, prompts[i], 10 + i, 12);
  }
  int fin = 0;
  while (fin < N) {
    pthread_mutex_lock(&ns.mu);
    while (ns.count == 0) pthread_cond_wait(&ns.cv, &ns.mu);
    ns.count = 0;
    pthread_mutex_unlock(&ns.mu);
    fin += collect(e, out, N); /* drain everything: notifications coalesce */
  }
  for (int i = 0; i < N; i++) check_expected(&out[i], prompts[i], 10 + i, 12);
  /* A request in flight at destroy is aborted and freed (ASan checks the leak). */
  submit_greedy(e, prompts[0], 10, 400);
  qv_engine_stats st;
  qv_engine_get_stats(e, &st);
  cr_assert_eq(st.n_kv_blocks, 128);
  qv_engine_destroy(e);
  fake_model_free(&fm);
  free(out);
}

/* A random mix under pressure: shared prefixes, n = 1..3 greedy choices, priorities, a tiny
 * pool (preemption), a small token budget (chunking), aborts at random times, prefix caching
 * on and off. Every finished choice must equal the reference, every request must end exactly
 * once per choice, and no block may leak. */
Test(engine, stress_random_mix) {
  for (int caching = 0; caching < 2; caching++) {
    qv_engine_opts o;
    qv_engine_opts_default(&o);
    o.n_kv_blocks = 40;
    o.block_size = 8;
    o.max_num_batched_tokens = 40;
    o.max_num_seqs = 12;
    o.enable_prefix_caching = caching;
    qv_engine *e = mk(&o, 0, 320);
    enum { N = 40 };
    unsigned seed = 1000 + (unsigned)caching;
    int32_t base[120];
    fill_random(base, 120, VOCAB, &seed);
    int32_t prompts[N][120], lens[N], nch[N], maxt[N];
    uint64_t ids[N];
    int fin[N] = {0}, aborted[N] = {0}, ntok[N][3] = {{0}};
    int32_t toks[N][3][64];
    int submitted = 0, finished = 0;
    for (int step = 0; finished < N; step++) {
      cr_assert(step < 200000);
      if (submitted < N && rand_r(&seed) % 3 == 0) {
        int i = submitted++;
        lens[i] = 1 + (int32_t)(rand_r(&seed) % 119);
        int32_t share = (int32_t)(rand_r(&seed) % (unsigned)(lens[i] + 1));
        memcpy(prompts[i], base, (size_t)share * sizeof(int32_t));
        fill_random(prompts[i] + share, lens[i] - share, VOCAB, &seed);
        nch[i] = 1 + (int32_t)(rand_r(&seed) % 3);
        maxt[i] = 1 + (int32_t)(rand_r(&seed) % 40);
        qv_request_params p;
        qv_request_params_default(&p);
        p.prompt_ids = prompts[i];
        p.n_prompt = lens[i];
        p.max_tokens = maxt[i];
        p.sampling.temperature = 0;
        p.n = nch[i];
        p.priority = (int32_t)(rand_r(&seed) % 3);
        cr_assert_eq(qv_engine_submit(e, &p, &ids[i], NULL), 0);
      }
      if (submitted > 0 && rand_r(&seed) % 40 == 0) {
        int i = (int)(rand_r(&seed) % (unsigned)submitted);
        if (!aborted[i]) aborted[i] = 1, qv_engine_abort(e, ids[i]);
      }
      if (submitted == N || rand_r(&seed) % 2) cr_assert_geq(engine_step(e), 0);
      qv_event *evs[64];
      int n;
      while ((n = qv_engine_poll(e, evs, 64)) > 0)
        for (int k = 0; k < n; k++) {
          qv_event *ev = evs[k];
          int i = 0;
          while (ids[i] != ev->req_id) i++;
          int c = ev->choice;
          if (ev->type == QV_EVENT_TOKENS) {
            cr_assert_eq(fin[i] & (1 << c), 0, "tokens after finish");
            toks[i][c][ntok[i][c]++] = ev->token_ids[0];
          } else {
            cr_assert_eq(fin[i] & (1 << c), 0, "second finish");
            fin[i] |= 1 << c;
            if (ev->finish == QV_FINISH_ABORT) cr_assert(aborted[i]);
            else cr_assert_eq(ev->finish, QV_FINISH_LENGTH);
            if (fin[i] == (1 << nch[i]) - 1) finished++;
          }
          qv_event_free(ev);
        }
    }
    for (int i = 0; i < N; i++) {
      int32_t exp[64];
      int32_t ne = fake_expected_greedy(&fm, prompts[i], lens[i], maxt[i], exp);
      for (int c = 0; c < nch[i]; c++) {
        cr_assert_leq(ntok[i][c], ne);
        if (!aborted[i]) cr_assert_eq(ntok[i][c], ne, "request %d choice %d", i, c);
        for (int t = 0; t < ntok[i][c]; t++) cr_assert_eq(toks[i][c][t], exp[t], "request %d choice %d token %d", i, c, t);
      }
    }
    qv_engine_stats st;
    qv_engine_get_stats(e, &st);
    cr_assert_gt(st.n_preemptions, 0);
    done(e);
  }
}

/* Logprobs in events: the sampled token's raw logprob and top_logprobs alternatives, highest
 * first; under greedy the sampled token is the first alternative. */
Test(engine, logprobs_in_events) {
  qv_engine_opts o;
  qv_engine_opts_default(&o);
  o.n_kv_blocks = 32;
  qv_engine *e = mk(&o, 0, 512);
  int32_t prompt[5] = {7, 8, 9, 10, 11};
  qv_request_params p;
  qv_request_params_default(&p);
  p.prompt_ids = prompt;
  p.n_prompt = 5;
  p.max_tokens = 6;
  p.sampling.temperature = 0;
  p.sampling.logprobs = 1;
  p.sampling.top_logprobs = 5;
  uint64_t id;
  cr_assert_eq(qv_engine_submit(e, &p, &id, NULL), 0);
  int fin = 0, n_tok = 0;
  float lg[VOCAB];
  int32_t ctx[16];
  memcpy(ctx, prompt, sizeof prompt);
  while (!fin) {
    engine_step(e);
    qv_event *evs[8];
    int n;
    while ((n = qv_engine_poll(e, evs, 8)) > 0)
      for (int i = 0; i < n; i++) {
        qv_event *ev = evs[i];
        if (ev->type == QV_EVENT_FINISH) fin = 1;
        else {
          cr_assert_not_null(ev->logprobs);
          cr_assert_eq(ev->n_top, 5);
          cr_assert_not_null(ev->top);
          /* reference: log-softmax of the fake model's logits for this context */
          fake_logits(&fm, fake_ctx_hash(ctx, 5 + n_tok), lg);
          double mx = -1e30, z = 0;
          for (int v = 0; v < VOCAB; v++) mx = fmax(mx, lg[v]);
          for (int v = 0; v < VOCAB; v++) z += exp(lg[v] - mx);
          double lse = mx + log(z);
          cr_assert(fabs(ev->logprobs[0] - (lg[ev->token_ids[0]] - lse)) < 1e-5);
          cr_assert_eq(ev->top[0].id, ev->token_ids[0]);
          for (int k = 1; k < 5; k++) cr_assert_geq(ev->top[k - 1].logprob, ev->top[k].logprob);
          for (int k = 0; k < 5; k++) cr_assert(fabs(ev->top[k].logprob - (lg[ev->top[k].id] - lse)) < 1e-5);
          ctx[5 + n_tok++] = ev->token_ids[0];
        }
        qv_event_free(ev);
      }
  }
  cr_assert_eq(n_tok, 6);
  done(e);
}

/* The request phases reported in FINISH events (what vllm:request_queue/prefill/decode_time
 * read): with one running sequence at a time, the second request waits for the first, so its
 * queue time covers the first one's whole run; phases are non-negative and within the wall
 * time. Steps are spaced by a sleep so the times are not all zero. */
Test(engine, finish_events_report_phases) {
  qv_engine_opts o;
  qv_engine_opts_default(&o);
  o.n_kv_blocks = 64;
  o.max_num_seqs = 1;
  qv_engine *e = mk(&o, 0, 256);
  int32_t prompt[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  struct timespec t0, t1, nap = {0, 2000000};
  clock_gettime(CLOCK_MONOTONIC, &t0);
  uint64_t id[2] = {submit_greedy(e, prompt, 8, 4), submit_greedy(e, prompt, 8, 4)};
  double q[2] = {-1, -1}, pf[2] = {-1, -1}, dc[2] = {-1, -1};
  for (int steps = 0; steps < 100 && (q[0] < 0 || q[1] < 0); steps++) {
    cr_assert_geq(engine_step(e), 0);
    nanosleep(&nap, NULL);
    qv_event *evs[16];
    int n;
    while ((n = qv_engine_poll(e, evs, 16)) > 0)
      for (int i = 0; i < n; i++) {
        if (evs[i]->type == QV_EVENT_FINISH) {
          int k = evs[i]->req_id == id[0] ? 0 : 1;
          q[k] = evs[i]->queue_s;
          pf[k] = evs[i]->prefill_s;
          dc[k] = evs[i]->decode_s;
        }
        qv_event_free(evs[i]);
      }
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double wall = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
  for (int k = 0; k < 2; k++) {
    cr_assert(q[k] >= 0 && pf[k] >= 0 && dc[k] >= 0, "request %d: %g %g %g", k, q[k], pf[k], dc[k]);
    cr_assert_leq(q[k] + pf[k] + dc[k], wall + 1e-3);
  }
  /* Four tokens one step apart (decode spans three sleeps); the second waited for all of it. */
  cr_assert_gt(dc[0], 0.004);
  cr_assert_gt(q[1], dc[0]);
  done(e);
}
