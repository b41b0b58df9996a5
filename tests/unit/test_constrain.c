/* Constrained decoding: grammar front ends accept and refuse the right strings, token masks are
 * exact (a token is in the mask iff the matcher accepts it, checked against every token along
 * random walks), partial UTF-8 tokens, rollback, limits, and the engine integration: the mask
 * holds under every sampling mode, constrained and unconstrained requests batch together
 * without changing the unconstrained outputs, max_tokens ends with "length", preemption keeps
 * outputs valid. Real-tokenizer coverage (random walks validated by jsonschema and re) is in
 * tests/e2e/test_constrain.py. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "engine_fake.h"
#include "quiver/constrain.h"

/* ---- a vocabulary that spells what the fake detokenizer prints ---- */

#define VOCAB 64

static qv_cst_vocab *fake_vocab(void) {
  char bufs[VOCAB][8];
  const char *toks[VOCAB];
  size_t lens[VOCAB];
  for (int32_t i = 0; i < VOCAB; i++) {
    lens[i] = fake_token_text(i, bufs[i], 1);
    toks[i] = lens[i] ? bufs[i] : NULL;
  }
  qv_cst_vocab *v = NULL;
  qv_error err = {0};
  cr_assert_eq(qv_cst_vocab_create_raw(toks, lens, VOCAB, FAKE_EOS, &v, &err), 0, "%s", err.msg);
  return v;
}

/* Bytes 0..255 as tokens 0..255, plus a few multi-byte tokens; EOS 300. */
static qv_cst_vocab *byte_vocab(void) {
  /* The last ones exercise the text chain's token classes: text ending inside a character,
   * text followed by a control byte or a stray continuation byte, longer text tokens. */
  static const char *extra[] = {"{\"", "\": ", ", \"", "\"}", "true", "null", "é", "\xc3", "ab", "abc", "12",
                                "éé", "x y", "中文字", "a\"", "\xe4\xb8", "ab\n", "x\n\n", "é\xc3", "ab\xe4",
                                "a\x80", "\nab", "abcdefgh", "abcdefghij\t", "zz\x7f", "中\xe6\x96", "a.b", "x@y",
                                "Ab9", "ab_", "ab-c", "QRSTUVWXYZab", "com\"", "Kqr", "Kqrs"};
  enum { NX = sizeof extra / sizeof extra[0] };
  const char *toks[301];
  size_t lens[301];
  static char bytes[256];
  for (int i = 0; i < 256; i++) {
    bytes[i] = (char)i;
    toks[i] = &bytes[i];
    lens[i] = 1;
  }
  for (int i = 256; i < 301; i++) toks[i] = NULL, lens[i] = 0;
  for (int i = 0; i < NX; i++) toks[256 + i] = extra[i], lens[256 + i] = strlen(extra[i]);
  qv_cst_vocab *v = NULL;
  qv_error err = {0};
  cr_assert_eq(qv_cst_vocab_create_raw(toks, lens, 301, 300, &v, &err), 0, "%s", err.msg);
  return v;
}

static qv_constraint *compile(qv_cst_vocab *v, qv_cst_kind kind, const char *text) {
  qv_cst_spec s = {.kind = kind, .text = text, .text_len = text ? strlen(text) : 0};
  qv_constraint *c = NULL;
  qv_error err = {0};
  cr_assert_eq(qv_constraint_compile(v, &s, &c, &err), 0, "compile '%s': %s", text ? text : "", err.msg);
  return c;
}

static int compile_err(qv_cst_vocab *v, qv_cst_kind kind, const char *text, char *msg) {
  qv_cst_spec s = {.kind = kind, .text = text, .text_len = strlen(text)};
  qv_constraint *c = NULL;
  qv_error err = {0};
  int rc = qv_constraint_compile(v, &s, &c, &err);
  if (msg) strcpy(msg, err.msg);
  qv_constraint_release(c);
  return rc;
}

/* 1 when the whole string is a complete match. */
static int matches(qv_constraint *c, const char *s) {
  qv_matcher *m;
  cr_assert_eq(qv_matcher_create(c, &m), 0);
  int ok = qv_matcher_accept_bytes(m, s, strlen(s)) == 0 && qv_matcher_is_complete(m);
  qv_matcher_destroy(m);
  return ok;
}

Test(constrain, json_and_schema_language) {
  qv_cst_vocab *v = byte_vocab();
  qv_constraint *j = compile(v, QV_CST_JSON, NULL);
  const char *good[] = {"{}", "[]", "{\"a\": [1, -2.5e3, \"x\\u00e9\\n\"], \"b\": {\"c\": null}}", "true", "\"é\"", "0"};
  const char *bad[] = {"{", "{\"a\":1}", "[1,2]", "01", "\"\x01\"", "\"\xff\"", "{\"a\": }", "tru"};
  for (size_t i = 0; i < sizeof good / sizeof *good; i++) cr_assert(matches(j, good[i]), "%s", good[i]);
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) cr_assert(!matches(j, bad[i]), "%s", bad[i]);
  qv_constraint_release(j);

  qv_constraint *s = compile(v, QV_CST_JSON_SCHEMA,
                             "{\"type\":\"object\",\"properties\":{\"id\":{\"type\":\"integer\",\"minimum\":-20,\"maximum\":305},"
                             "\"tag\":{\"enum\":[\"x\",2,null]},\"when\":{\"type\":\"string\",\"format\":\"date\"},"
                             "\"kids\":{\"type\":\"array\",\"items\":{\"$ref\":\"#\"},\"maxItems\":2}},"
                             "\"required\":[\"id\"],\"additionalProperties\":false}");
  cr_assert(matches(s, "{\"id\": 305}"));
  cr_assert(matches(s, "{\"id\": -20, \"tag\": null, \"when\": \"2024-02-28\", \"kids\": [{\"id\": 0}, {\"id\": 7, \"kids\": []}]}"));
  cr_assert(!matches(s, "{\"id\": 306}"));
  cr_assert(!matches(s, "{\"id\": -21}"));
  cr_assert(!matches(s, "{\"id\": 007}"));
  cr_assert(!matches(s, "{\"tag\": 2}"));                  /* id is required */
  cr_assert(!matches(s, "{\"id\": 1, \"when\": \"2024-13-01\"}"));
  cr_assert(!matches(s, "{\"id\": 1, \"kids\": [{\"id\": 1}, {\"id\": 2}, {\"id\": 3}]}"));
  cr_assert(!matches(s, "{\"when\": \"2024-01-01\", \"id\": 1}")); /* schema order */
  qv_constraint_release(s);
  qv_cst_vocab_destroy(v);
}

Test(constrain, regex_choice_grammars) {
  qv_cst_vocab *v = byte_vocab();
  qv_constraint *r = compile(v, QV_CST_REGEX, "(ab|c[0-9]{2,3})+\\.?[^a-z\\s]?");
  cr_assert(matches(r, "ab"));
  cr_assert(matches(r, "c12abc999."));
  cr_assert(matches(r, "abX"));
  cr_assert(matches(r, "ab\xc3\xa9")); /* é is not in [a-z\s] */
  cr_assert(!matches(r, "c1"));
  cr_assert(!matches(r, "abx"));
  cr_assert(!matches(r, "ab "));
  qv_constraint_release(r);
  const char *ch[] = {"yes", "no", "yes please"};
  qv_cst_spec cs = {.kind = QV_CST_CHOICE, .choices = ch, .n_choices = 3};
  qv_constraint *c = NULL;
  qv_error err = {0};
  cr_assert_eq(qv_constraint_compile(v, &cs, &c, &err), 0);
  cr_assert(matches(c, "yes") && matches(c, "yes please") && matches(c, "no"));
  cr_assert(!matches(c, "ye") && !matches(c, "yes "));
  qv_constraint_release(c);
  qv_constraint *g = compile(v, QV_CST_GBNF,
                             "# comment\nroot ::= item (\",\" item)*\nitem ::= [a-c]+ | \"<\" root \">\" | \"\\x41\"{2}\n");
  cr_assert(matches(g, "a,bc,<a,<b>>,AA"));
  cr_assert(!matches(g, "a,,b") && !matches(g, "<a") && !matches(g, "A"));
  qv_constraint_release(g);
  qv_constraint *l = compile(v, QV_CST_LARK, "start: kv (\";\" kv)*\nkv: KEY \"=\" /[0-9]+/ [\"!\"]\nKEY: (\"x\" | \"y\") ~ 1..2\n");
  cr_assert(matches(l, "x=1;yy=22!"));
  cr_assert(!matches(l, "xxx=1") && !matches(l, "x=") && !matches(l, "x=1;"));
  qv_constraint_release(l);
  /* %ignore: between the terminals of rules and around the text, never inside a terminal. */
  l = compile(v, QV_CST_LARK, "start: pair (\",\" pair)*\npair: NAME \"=\" /[0-9]+/\nNAME: /[a-z]+/ \"!\"?\n"
                              "%import common.WS\n%ignore WS\n%ignore /#[a-z]*\\n/\n");
  cr_assert(matches(l, "a=1") && matches(l, " ab = 12 ,\n c! =3 ") && matches(l, "a=1,#note\nb=2"));
  cr_assert(!matches(l, "a b=1") && !matches(l, "a =1 2") && !matches(l, "a=1,"), "not inside terminals");
  qv_constraint_release(l);
  qv_cst_vocab_destroy(v);
}

/* Forced tool calls: one call, or up to max_tool_calls in a row (hermes blocks, mistral array). */
Test(constrain, tool_calls_single_and_parallel) {
  qv_cst_vocab *v = byte_vocab();
  const char *tools = "[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{\"type\":\"object\","
                      "\"properties\":{\"x\":{\"type\":\"integer\"}},\"required\":[\"x\"]}}}]";
  const char *h1 = "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}}\n</tool_call>";
  char h2[256], h3[512], m1[128], m3[256];
  snprintf(h2, sizeof h2, "%s\n%s", h1, h1);
  snprintf(h3, sizeof h3, "%s\n%s", h2, h1);
  const char *call = "{\"name\": \"f\", \"arguments\": {\"x\": 2}}";
  snprintf(m1, sizeof m1, "[TOOL_CALLS][%s]", call);
  snprintf(m3, sizeof m3, "[TOOL_CALLS][%s, %s, %s]", call, call, call);
  for (int32_t max = 1; max <= 2; max++) {
    qv_cst_spec s = {.kind = QV_CST_TOOL_CALL, .text = tools, .text_len = strlen(tools), .tool_format = "hermes",
                     .max_tool_calls = max};
    qv_constraint *c = NULL;
    qv_error err = {0};
    cr_assert_eq(qv_constraint_compile(v, &s, &c, &err), 0, "%s", err.msg);
    cr_assert(matches(c, h1) && matches(c, h2) == (max == 2) && !matches(c, h3), "hermes, max %d", max);
    qv_constraint_release(c);
    s.tool_format = "mistral";
    s.max_tool_calls = max == 1 ? 1 : 3;
    cr_assert_eq(qv_constraint_compile(v, &s, &c, &err), 0, "%s", err.msg);
    cr_assert(matches(c, m1) && matches(c, m3) == (max == 2), "mistral, max %d", s.max_tool_calls);
    qv_constraint_release(c);
  }
  qv_cst_vocab_destroy(v);
}

Test(constrain, errors_and_limits) {
  qv_cst_vocab *v = byte_vocab();
  char msg[512];
  cr_assert_eq(compile_err(v, QV_CST_JSON_SCHEMA, "{\"type\":\"object\",\"not\":{}}", msg), QV_EUNSUPPORTED);
  cr_assert(strstr(msg, "'not'"), "%s", msg);
  cr_assert_eq(compile_err(v, QV_CST_JSON_SCHEMA, "{\"type\":", msg), QV_EINVAL);
  cr_assert_eq(compile_err(v, QV_CST_JSON_SCHEMA, "{\"$ref\":\"#/$defs/A\",\"$defs\":{\"A\":{\"$ref\":\"#/$defs/A\"}}}", msg), QV_EUNSUPPORTED);
  cr_assert_eq(compile_err(v, QV_CST_REGEX, "(a{1000}){1000}", msg), QV_ELIMIT);
  cr_assert_eq(compile_err(v, QV_CST_REGEX, "(a*)*", msg), QV_EUNSUPPORTED); /* nullable loop */
  cr_assert_eq(compile_err(v, QV_CST_REGEX, "a(?!b)", msg), QV_EUNSUPPORTED);
  cr_assert_eq(compile_err(v, QV_CST_GBNF, "root ::= x\nx ::= x \"a\" | \"b\"", msg), QV_EUNSUPPORTED);
  cr_assert(strstr(msg, "left-recursive"), "%s", msg);
  char deep[4096] = "";
  for (int i = 0; i < 100; i++) strcat(deep, "{\"items\":");
  strcat(deep, "true");
  for (int i = 0; i < 100; i++) strcat(deep, "}");
  cr_assert_eq(compile_err(v, QV_CST_JSON_SCHEMA, deep, msg), QV_ELIMIT);
  char nest[512] = "";
  for (int i = 0; i < 100; i++) strcat(nest, "(");
  strcat(nest, "a");
  for (int i = 0; i < 100; i++) strcat(nest, ")");
  cr_assert_eq(compile_err(v, QV_CST_REGEX, nest, msg), QV_ELIMIT);
  qv_cst_vocab_destroy(v);
}

static int has_bit(const uint32_t *m, int32_t id) { return (m[id >> 5] >> (id & 31)) & 1u; }

/* Random walks where every step checks the mask against accept() for every token. */
static void exact_walks(qv_cst_vocab *v, qv_constraint *c, int n_walks, int max_steps, unsigned seed) {
  int32_t V = qv_cst_vocab_size(v);
  for (int w = 0; w < n_walks; w++) {
    qv_matcher *m;
    cr_assert_eq(qv_matcher_create(c, &m), 0);
    uint32_t mask[16];
    for (int step = 0; step < max_steps; step++) {
      cr_assert_eq(qv_matcher_fill_mask(m, mask), 0);
      int32_t allowed[512], k = 0;
      for (int32_t id = 0; id < V; id++) {
        int in = has_bit(mask, id);
        if (in) allowed[k++] = id;
        size_t len;
        if (!qv_cst_vocab_token(v, id, &len)) {
          continue;
        }
        int ok = qv_matcher_accept(m, id) == 0;
        if (ok) cr_assert_eq(qv_matcher_rollback(m, 1), 0);
        cr_assert_eq(ok, in, "walk %d step %d token %d: accept %d, mask %d", w, step, id, ok, in);
      }
      if (k == 0) break;
      int32_t pick = allowed[rand_r(&seed) % (unsigned)k];
      size_t len;
      if (!qv_cst_vocab_token(v, pick, &len)) {
        cr_assert(qv_matcher_is_complete(m), "EOS allowed only when complete");
        break;
      }
      cr_assert_eq(qv_matcher_accept(m, pick), 0);
    }
    qv_matcher_destroy(m);
  }
}

Test(constrain, masks_are_exact) {
  qv_cst_vocab *bv = byte_vocab();
  const char *schema = "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"string\",\"maxLength\":3},"
                       "\"b\":{\"type\":\"array\",\"items\":{\"type\":\"number\"}},\"c\":{\"type\":\"boolean\"},"
                       "\"d\":{\"type\":\"string\"}},\"required\":[\"a\", \"d\"]}";
  qv_constraint *c1 = compile(bv, QV_CST_JSON_SCHEMA, schema);
  exact_walks(bv, c1, 12, 30, 1);
  /* Bounded strings shorter and longer than the longest text token (the chain's end), and
   * strings that take control bytes (a regex class), where text-x tokens stay alive. */
  qv_constraint *c4 = compile(bv, QV_CST_JSON_SCHEMA, "{\"type\":\"array\",\"items\":{\"anyOf\":[{\"type\":"
                                                      "\"string\",\"maxLength\":5},{\"type\":\"string\",\"minLength\":"
                                                      "12,\"maxLength\":14}]},\"maxItems\":3}");
  exact_walks(bv, c4, 12, 30, 4);
  qv_constraint *c5 = compile(bv, QV_CST_REGEX, "[^\"]{0,20}\"[a-z\\n\\t]*");
  exact_walks(bv, c5, 12, 30, 5);
  /* Class chains: letters in a hostname-like class, an email (local part and domain), \w. */
  qv_constraint *c6 = compile(bv, QV_CST_JSON_SCHEMA, "{\"type\":\"array\",\"items\":{\"type\":\"string\","
                                                      "\"format\":\"email\"},\"maxItems\":2}");
  exact_walks(bv, c6, 16, 30, 6);
  qv_constraint *c7 = compile(bv, QV_CST_REGEX, "([a-zA-Z0-9-]{1,6}\\.){1,2}[A-Za-z]{2,3}|\\w{2,14}@");
  exact_walks(bv, c7, 16, 20, 7);
  qv_constraint *c8 = compile(bv, QV_CST_REGEX, "[A-Za-z]{2}[a-z][0-9]?(b|c)*"); /* the chain stops at a level */
  exact_walks(bv, c8, 8, 8, 8);
  qv_constraint_release(c8);
  qv_constraint_release(c4);
  qv_constraint_release(c5);
  qv_constraint_release(c6);
  qv_constraint_release(c7);
  qv_constraint *c2 = compile(bv, QV_CST_REGEX, "(é|ab)+c?[0-9]*");
  exact_walks(bv, c2, 6, 12, 2);
  qv_constraint_release(c1);
  qv_constraint_release(c2);
  qv_cst_vocab_destroy(bv);
  qv_cst_vocab *fv = fake_vocab();
  qv_constraint *c3 = compile(fv, QV_CST_REGEX, "(ab|ca|dd)+[x-z]?");
  exact_walks(fv, c3, 10, 12, 3);
  qv_constraint_release(c3);
  qv_cst_vocab_destroy(fv);
}

Test(constrain, partial_utf8_and_rollback) {
  qv_cst_vocab *v = byte_vocab();
  qv_constraint *c = compile(v, QV_CST_REGEX, "é+");
  qv_matcher *m;
  cr_assert_eq(qv_matcher_create(c, &m), 0);
  uint32_t mask[16] = {0}, mask2[16] = {0};
  qv_matcher_fill_mask(m, mask);
  cr_assert(has_bit(mask, 0xC3) && has_bit(mask, 256 + 6) && has_bit(mask, 256 + 7) && !has_bit(mask, 0xA9));
  cr_assert_eq(qv_matcher_accept(m, 256 + 7), 0); /* "\xc3": inside the character */
  qv_matcher_fill_mask(m, mask);
  cr_assert(has_bit(mask, 0xA9) && !has_bit(mask, 0xC3) && !has_bit(mask, 300), "only the continuation byte");
  cr_assert_eq(qv_matcher_accept(m, 0xA9), 0);
  cr_assert(qv_matcher_is_complete(m));
  qv_matcher_fill_mask(m, mask);
  cr_assert(has_bit(mask, 300), "EOS once complete");
  cr_assert_eq(qv_matcher_accept(m, 256 + 6), 0);
  cr_assert_eq(qv_matcher_rollback(m, 2), 0);
  cr_assert_eq(qv_matcher_n_accepted(m), 1);
  qv_matcher_fill_mask(m, mask2);
  qv_matcher *f;
  cr_assert_eq(qv_matcher_create(c, &f), 0);
  cr_assert_eq(qv_matcher_accept(f, 256 + 7), 0);
  qv_matcher_fill_mask(f, mask);
  cr_assert_eq(memcmp(mask, mask2, sizeof mask), 0);
  cr_assert_eq(qv_matcher_accept(f, 'x'), QV_EINVAL);
  cr_assert_eq(qv_matcher_accept(f, 300), QV_EINVAL); /* EOS before complete */
  qv_matcher_destroy(f);
  qv_matcher_destroy(m);
  qv_constraint_release(c);
  qv_cst_vocab_destroy(v);
}

/* ---- engine ---- */

static fake_model fm;

static qv_engine *mk(qv_engine_opts *o, int32_t eos_boost) {
  engine_model_ops m = fake_ops(&fm, VOCAB, 512);
  fm.eos_boost = eos_boost;
  qv_engine *e = NULL;
  qv_error err = {0};
  cr_assert_eq(engine_create_ops(&m, &fake_text_ops, o, 1, &e, &err), 0, "%s", err.msg);
  return e;
}

static uint64_t submit(qv_engine *e, const int32_t *prompt, int32_t n, int32_t max_tokens, const qv_sampling_params *sp,
                       qv_constraint *c) {
  qv_request_params p;
  qv_request_params_default(&p);
  p.prompt_ids = prompt;
  p.n_prompt = n;
  p.max_tokens = max_tokens;
  if (sp) p.sampling = *sp;
  p.constraint = c;
  uint64_t id = 0;
  qv_error err = {0};
  cr_assert_eq(qv_engine_submit(e, &p, &id, &err), 0, "%s", err.msg);
  return id;
}

/* Accepts out's text over the constraint: 1 complete, 0 a valid prefix, -1 invalid. */
static int text_state(qv_constraint *c, const run_out *o) {
  qv_matcher *m;
  cr_assert_eq(qv_matcher_create(c, &m), 0);
  int r = qv_matcher_accept_bytes(m, o->text, o->text_len) ? -1 : qv_matcher_is_complete(m);
  qv_matcher_destroy(m);
  return r;
}

Test(constrain, engine_every_sampling_mode_and_mixed_batch) {
  qv_engine_opts o;
  qv_engine_opts_default(&o);
  qv_engine *e = mk(&o, 3);
  qv_cst_vocab *v = fake_vocab();
  qv_constraint *c = compile(v, QV_CST_REGEX, "(ab|ca|dd)+[x-z]?");
  qv_sampling_params modes[7];
  for (int i = 0; i < 7; i++) qv_sampling_params_default(&modes[i]);
  modes[0].temperature = 0.0f;
  modes[1].temperature = 1.5f;
  modes[2].top_k = 3;
  modes[3].top_p = 0.5f;
  modes[4].min_p = 0.3f;
  modes[5].repetition_penalty = 1.5f, modes[5].frequency_penalty = 1.0f, modes[5].presence_penalty = 0.5f;
  static const int32_t bias_ids[] = {10, 11, 12};
  static const float bias_vals[] = {100.0f, 100.0f, 100.0f}; /* boosts letters the regex refuses */
  modes[6].logit_bias_ids = bias_ids, modes[6].logit_bias_values = bias_vals, modes[6].n_logit_bias = 3;
  enum { N = 7 * 3 + 8 };
  run_out *out = calloc(N, sizeof *out);
  int32_t prompts[N][8];
  unsigned seed = 5;
  for (int i = 0; i < N; i++) {
    for (int k = 0; k < 8; k++) prompts[i][k] = 3 + (int32_t)(rand_r(&seed) % 60);
    qv_sampling_params sp = modes[i % 7];
    sp.has_seed = 1;
    sp.seed = (uint64_t)i;
    /* the last 8 are unconstrained greedy, checked against the reference */
    qv_sampling_params greedy;
    qv_sampling_params_default(&greedy);
    greedy.temperature = 0.0f;
    if (i >= 21) out[i].id = submit(e, prompts[i], 8, 20, &greedy, NULL);
    else out[i].id = submit(e, prompts[i], 8, 40, &sp, c);
  }
  run_until_done(e, out, N);
  for (int i = 0; i < N; i++) {
    if (i >= 21) {
      int32_t exp[64];
      int32_t n = fake_expected_greedy(&fm, prompts[i], 8, 20, exp);
      cr_assert_eq(out[i].n_tokens, n);
      cr_assert_eq(memcmp(out[i].tokens, exp, (size_t)n * sizeof *exp), 0, "unconstrained output changed");
      continue;
    }
    int st = text_state(c, &out[i]);
    cr_assert(st >= 0, "request %d mode %d: '%s' left the constraint", i, i % 7, out[i].text);
    if (out[i].finish == QV_FINISH_STOP) cr_assert_eq(st, 1, "stopped before complete: '%s'", out[i].text);
    else cr_assert_eq(out[i].finish, QV_FINISH_LENGTH);
  }
  /* A constraint that cannot be met in max_tokens: "length". */
  run_out one = {0};
  qv_constraint *json = compile(v, QV_CST_REGEX, "abababababab");
  one.id = submit(e, prompts[0], 8, 3, NULL, json);
  run_until_done(e, &one, 1);
  cr_assert_eq(one.finish, QV_FINISH_LENGTH);
  cr_assert_eq(one.n_tokens, 3);
  cr_assert(one.text_len >= 3 && !strncmp(one.text, "abababababab", one.text_len), "'%s'", one.text);
  /* A complete, closed constraint stops at once with EOS, even with min_tokens. */
  qv_constraint *fixed = compile(v, QV_CST_REGEX, "ab");
  qv_request_params p;
  qv_request_params_default(&p);
  p.prompt_ids = prompts[1];
  p.n_prompt = 8;
  p.max_tokens = 10;
  p.min_tokens = 5;
  p.constraint = fixed;
  qv_error err = {0};
  run_out two = {0};
  cr_assert_eq(qv_engine_submit(e, &p, &two.id, &err), 0);
  run_until_done(e, &two, 1);
  cr_assert_eq(two.finish, QV_FINISH_STOP);
  cr_assert_str_eq(two.text, "ab");
  qv_constraint_release(fixed);
  qv_constraint_release(json);
  free(out);
  assert_no_leak(e);
  qv_engine_destroy(e);
  fake_model_free(&fm);
  qv_constraint_release(c);
  qv_cst_vocab_destroy(v);
}

Test(constrain, engine_preemption_keeps_outputs_valid) {
  qv_engine_opts o;
  qv_engine_opts_default(&o);
  o.n_kv_blocks = 12;
  o.block_size = 16;
  qv_engine *e = mk(&o, 0);
  qv_cst_vocab *v = fake_vocab();
  qv_constraint *c = compile(v, QV_CST_REGEX, "(ab|ca|dd|[e-w])+");
  enum { N = 10 };
  run_out *out = calloc(N, sizeof *out);
  int32_t prompts[N][40];
  unsigned seed = 9;
  for (int i = 0; i < N; i++) {
    for (int k = 0; k < 40; k++) prompts[i][k] = 3 + (int32_t)(rand_r(&seed) % 60);
    qv_sampling_params sp;
    qv_sampling_params_default(&sp);
    sp.has_seed = 1;
    sp.seed = (uint64_t)i;
    out[i].id = submit(e, prompts[i], 40, 30, &sp, c);
  }
  run_until_done(e, out, N);
  qv_engine_stats st;
  qv_engine_get_stats(e, &st);
  cr_assert_gt(st.n_preemptions, 0);
  for (int i = 0; i < N; i++) cr_assert(text_state(c, &out[i]) >= 0, "'%s'", out[i].text);
  free(out);
  assert_no_leak(e);
  qv_engine_destroy(e);
  fake_model_free(&fm);
  qv_constraint_release(c);
  qv_cst_vocab_destroy(v);
}
