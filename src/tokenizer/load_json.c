/* Loading a Hugging Face tokenizer.json (plus an optional tokenizer_config.json) with cJSON.
 * Every field is checked: a malformed file (bad JSON, wrong types, merges naming unknown
 * tokens, invalid UTF-8 in the vocabulary, a bad regex, a component quiver does not implement)
 * is a load error with the JSON path in the message, never a crash or a silent approximation. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_internal.h"

typedef struct jctx {
  qv_tokenizer *tok;
  qv_error *err;
} jctx;

static int str_eq(const cJSON *j, const char *s) {
  return cJSON_IsString(j) && j->valuestring && strcmp(j->valuestring, s) == 0;
}

static const char *jtype(const cJSON *obj) {
  const cJSON *t = cJSON_GetObjectItemCaseSensitive(obj, "type");
  return cJSON_IsString(t) && t->valuestring ? t->valuestring : "";
}

static int jbool(const cJSON *obj, const char *key, int dflt) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  if (cJSON_IsBool(v)) return cJSON_IsTrue(v);
  return dflt;
}

/* A string field; *out is borrowed from the JSON tree. Missing -> NULL when optional. */
static int jstr(jctx *c, const cJSON *obj, const char *key, int required, const char **out, const char *where) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  *out = NULL;
  if (!v || cJSON_IsNull(v)) {
    if (required) return qv_error_set(c->err, QV_EFORMAT, "%s.%s: missing", where, key);
    return 0;
  }
  if (!cJSON_IsString(v) || !v->valuestring) return qv_error_set(c->err, QV_EFORMAT, "%s.%s: not a string", where, key);
  size_t n = strlen(v->valuestring);
  if (tok_utf8_valid_prefix(v->valuestring, n) != n)
    return qv_error_set(c->err, QV_EFORMAT, "%s.%s: invalid UTF-8", where, key);
  *out = v->valuestring;
  return 0;
}

static int first_cp(const char *s, uint32_t *cp) {
  size_t n = strlen(s);
  if (n == 0) return -1;
  int k = tok_utf8_decode((const unsigned char *)s, n, cp);
  return (size_t)k == n ? 0 : -1;
}

static char *dupn(const char *s, size_t n) {
  char *p = malloc(n + 1);
  if (p) {
    memcpy(p, s, n);
    p[n] = '\0';
  }
  return p;
}

/* pattern: {"String": s} or {"Regex": r}. Compiles into re (regex or literal); *lit gets a copy
 * of the literal string when want_literal_copy. */
static int parse_pattern(jctx *c, const cJSON *obj, tok_regex *re, char **lit, size_t *lit_len,
                         int want_literal_copy, const char *where) {
  const cJSON *p = cJSON_GetObjectItemCaseSensitive(obj, "pattern");
  const cJSON *s = cJSON_GetObjectItemCaseSensitive(p, "String");
  const cJSON *r = cJSON_GetObjectItemCaseSensitive(p, "Regex");
  if (cJSON_IsString(s) && s->valuestring) {
    size_t n = strlen(s->valuestring);
    if (want_literal_copy) {
      *lit = dupn(s->valuestring, n);
      *lit_len = n;
      return *lit ? 0 : qv_error_set(c->err, QV_ENOMEM, "out of memory");
    }
    if (n == 0) return qv_error_set(c->err, QV_EUNSUPPORTED, "%s: empty split pattern", where);
    int rc = tok_regex_compile(re, s->valuestring, n, 1, c->err);
    if (rc) qv_error_prefix(c->err, "%s", where);
    return rc;
  }
  if (cJSON_IsString(r) && r->valuestring) {
    int rc = tok_regex_compile(re, r->valuestring, strlen(r->valuestring), 0, c->err);
    if (rc) qv_error_prefix(c->err, "%s", where);
    return rc;
  }
  return qv_error_set(c->err, QV_EFORMAT, "%s.pattern: expected {\"String\": ...} or {\"Regex\": ...}", where);
}

static int parse_prepend_scheme(jctx *c, const cJSON *obj, tok_prepend_scheme *out, const char *where) {
  const cJSON *ps = cJSON_GetObjectItemCaseSensitive(obj, "prepend_scheme");
  if (cJSON_IsString(ps)) {
    if (str_eq(ps, "always")) *out = TOK_PREPEND_ALWAYS;
    else if (str_eq(ps, "first")) *out = TOK_PREPEND_FIRST;
    else if (str_eq(ps, "never")) *out = TOK_PREPEND_NEVER;
    else return qv_error_set(c->err, QV_EFORMAT, "%s.prepend_scheme: unknown value", where);
    return 0;
  }
  *out = jbool(obj, "add_prefix_space", 1) ? TOK_PREPEND_ALWAYS : TOK_PREPEND_NEVER;
  return 0;
}

static int parse_replacement(jctx *c, const cJSON *obj, uint32_t *cp, const char *where) {
  const char *r;
  int rc = jstr(c, obj, "replacement", 0, &r, where);
  if (rc) return rc;
  if (!r) { *cp = 0x2581; return 0; }
  if (first_cp(r, cp)) return qv_error_set(c->err, QV_EFORMAT, "%s.replacement: must be one character", where);
  return 0;
}

#define GROW(arr, n) \
  do { void *p_ = realloc((arr), ((size_t)(n) + 1) * sizeof *(arr)); if (!p_) return QV_ENOMEM; (arr) = p_; \
       memset(&(arr)[(n)], 0, sizeof *(arr)); } while (0)

static int parse_normalizer(jctx *c, const cJSON *j, int depth) {
  if (!j || cJSON_IsNull(j)) return 0;
  if (depth > 16 || !cJSON_IsObject(j)) return qv_error_set(c->err, QV_EFORMAT, "normalizer: expected an object");
  qv_tokenizer *tok = c->tok;
  const char *t = jtype(j);
  if (strcmp(t, "Sequence") == 0) {
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(j, "normalizers"), *e;
    if (!cJSON_IsArray(arr)) return qv_error_set(c->err, QV_EFORMAT, "normalizer.normalizers: not an array");
    cJSON_ArrayForEach(e, arr) {
      int rc = parse_normalizer(c, e, depth + 1);
      if (rc) return rc;
    }
    return 0;
  }
  GROW(tok->norm, tok->n_norm);
  tok_norm_step *st = &tok->norm[tok->n_norm++];
  if (strcmp(t, "NFC") == 0) st->kind = TOK_NORM_NFC;
  else if (strcmp(t, "NFKC") == 0) st->kind = TOK_NORM_NFKC;
  else if (strcmp(t, "NFD") == 0) st->kind = TOK_NORM_NFD;
  else if (strcmp(t, "NFKD") == 0) st->kind = TOK_NORM_NFKD;
  else if (strcmp(t, "Lowercase") == 0) st->kind = TOK_NORM_LOWERCASE;
  else if (strcmp(t, "Strip") == 0) {
    st->kind = TOK_NORM_STRIP;
    st->strip_left = jbool(j, "strip_left", 1);
    st->strip_right = jbool(j, "strip_right", 1);
  } else if (strcmp(t, "Prepend") == 0) {
    st->kind = TOK_NORM_PREPEND;
    const char *p;
    int rc = jstr(c, j, "prepend", 1, &p, "normalizer Prepend");
    if (rc) return rc;
    st->str_len = strlen(p);
    if (!(st->str = dupn(p, st->str_len))) return QV_ENOMEM;
  } else if (strcmp(t, "Replace") == 0) {
    st->kind = TOK_NORM_REPLACE;
    const char *content;
    int rc = jstr(c, j, "content", 1, &content, "normalizer Replace");
    if (rc) return rc;
    st->content_len = strlen(content);
    if (!(st->content = dupn(content, st->content_len))) return QV_ENOMEM;
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, "pattern");
    int literal = cJSON_IsString(cJSON_GetObjectItemCaseSensitive(p, "String"));
    rc = parse_pattern(c, j, &st->re, &st->str, &st->str_len, literal, "normalizer Replace");
    if (rc) return rc;
  } else {
    return qv_error_set(c->err, QV_EUNSUPPORTED, "normalizer type \"%s\" is not supported", t);
  }
  return 0;
}

static int parse_behavior(jctx *c, const cJSON *j, tok_split_behavior dflt, tok_split_behavior *out) {
  const cJSON *b = cJSON_GetObjectItemCaseSensitive(j, "behavior");
  *out = dflt;
  if (!b) return 0;
  if (str_eq(b, "Removed")) *out = TOK_SPLIT_REMOVED;
  else if (str_eq(b, "Isolated")) *out = TOK_SPLIT_ISOLATED;
  else if (str_eq(b, "MergedWithPrevious")) *out = TOK_SPLIT_MERGED_PREV;
  else if (str_eq(b, "MergedWithNext")) *out = TOK_SPLIT_MERGED_NEXT;
  else if (str_eq(b, "Contiguous")) *out = TOK_SPLIT_CONTIGUOUS;
  else return qv_error_set(c->err, QV_EFORMAT, "pre_tokenizer.behavior: unknown value");
  return 0;
}

static const char GPT2_PATTERN[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static int parse_pre(jctx *c, const cJSON *j, int depth) {
  if (!j || cJSON_IsNull(j)) return 0;
  if (depth > 16 || !cJSON_IsObject(j)) return qv_error_set(c->err, QV_EFORMAT, "pre_tokenizer: expected an object");
  qv_tokenizer *tok = c->tok;
  const char *t = jtype(j);
  int rc = 0;
  if (strcmp(t, "Sequence") == 0) {
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(j, "pretokenizers"), *e;
    if (!cJSON_IsArray(arr)) return qv_error_set(c->err, QV_EFORMAT, "pre_tokenizer.pretokenizers: not an array");
    cJSON_ArrayForEach(e, arr) {
      if ((rc = parse_pre(c, e, depth + 1))) return rc;
    }
    return 0;
  }
  if (strcmp(t, "BertPreTokenizer") == 0) {
    GROW(tok->pre, tok->n_pre);
    tok->pre[tok->n_pre++].kind = TOK_PRE_WSPLIT;
    GROW(tok->pre, tok->n_pre);
    tok->pre[tok->n_pre].kind = TOK_PRE_PUNCT;
    tok->pre[tok->n_pre++].behavior = TOK_SPLIT_ISOLATED;
    return 0;
  }
  GROW(tok->pre, tok->n_pre);
  tok_pre_step *st = &tok->pre[tok->n_pre++];
  if (strcmp(t, "Split") == 0) {
    st->kind = TOK_PRE_SPLIT;
    st->invert = jbool(j, "invert", 0);
    if ((rc = parse_behavior(c, j, TOK_SPLIT_ISOLATED, &st->behavior))) return rc;
    return parse_pattern(c, j, &st->re, NULL, NULL, 0, "pre_tokenizer Split");
  }
  if (strcmp(t, "ByteLevel") == 0) {
    st->kind = TOK_PRE_BYTELEVEL;
    st->add_prefix_space = jbool(j, "add_prefix_space", 1);
    st->use_regex = jbool(j, "use_regex", 1);
    if (st->use_regex) return tok_regex_compile(&st->re, GPT2_PATTERN, sizeof GPT2_PATTERN - 1, 0, c->err);
    return 0;
  }
  if (strcmp(t, "Metaspace") == 0) {
    st->kind = TOK_PRE_METASPACE;
    st->split = jbool(j, "split", 1);
    if ((rc = parse_replacement(c, j, &st->replacement, "pre_tokenizer Metaspace"))) return rc;
    return parse_prepend_scheme(c, j, &st->prepend, "pre_tokenizer Metaspace");
  }
  if (strcmp(t, "Digits") == 0) {
    st->kind = TOK_PRE_DIGITS;
    st->individual_digits = jbool(j, "individual_digits", 0);
    return 0;
  }
  if (strcmp(t, "Punctuation") == 0) {
    st->kind = TOK_PRE_PUNCT;
    return parse_behavior(c, j, TOK_SPLIT_ISOLATED, &st->behavior);
  }
  if (strcmp(t, "Whitespace") == 0) {
    static const char ws[] = "\\w+|[^\\w\\s]+";
    st->kind = TOK_PRE_WHITESPACE;
    st->invert = 1;
    st->behavior = TOK_SPLIT_REMOVED;
    return tok_regex_compile(&st->re, ws, sizeof ws - 1, 0, c->err);
  }
  if (strcmp(t, "WhitespaceSplit") == 0) {
    st->kind = TOK_PRE_WSPLIT;
    return 0;
  }
  return qv_error_set(c->err, QV_EUNSUPPORTED, "pre_tokenizer type \"%s\" is not supported", t);
}

static int parse_decoder(jctx *c, const cJSON *j, int depth) {
  if (!j || cJSON_IsNull(j)) return 0;
  if (depth > 16 || !cJSON_IsObject(j)) return qv_error_set(c->err, QV_EFORMAT, "decoder: expected an object");
  qv_tokenizer *tok = c->tok;
  tok->has_decoder = 1;
  const char *t = jtype(j);
  int rc = 0;
  if (strcmp(t, "Sequence") == 0) {
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(j, "decoders"), *e;
    if (!cJSON_IsArray(arr)) return qv_error_set(c->err, QV_EFORMAT, "decoder.decoders: not an array");
    cJSON_ArrayForEach(e, arr) {
      if ((rc = parse_decoder(c, e, depth + 1))) return rc;
    }
    return 0;
  }
  GROW(tok->dec, tok->n_dec);
  tok_dec_step *st = &tok->dec[tok->n_dec++];
  if (strcmp(t, "ByteLevel") == 0) st->kind = TOK_DEC_BYTELEVEL;
  else if (strcmp(t, "ByteFallback") == 0) st->kind = TOK_DEC_BYTEFALLBACK;
  else if (strcmp(t, "Fuse") == 0) st->kind = TOK_DEC_FUSE;
  else if (strcmp(t, "Metaspace") == 0) {
    st->kind = TOK_DEC_METASPACE;
    if ((rc = parse_replacement(c, j, &st->replacement, "decoder Metaspace"))) return rc;
    return parse_prepend_scheme(c, j, &st->prepend, "decoder Metaspace");
  } else if (strcmp(t, "Replace") == 0) {
    st->kind = TOK_DEC_REPLACE;
    const char *content;
    if ((rc = jstr(c, j, "content", 1, &content, "decoder Replace"))) return rc;
    st->content_len = strlen(content);
    if (!(st->content = dupn(content, st->content_len))) return QV_ENOMEM;
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, "pattern");
    int literal = cJSON_IsString(cJSON_GetObjectItemCaseSensitive(p, "String"));
    return parse_pattern(c, j, &st->re, &st->pattern, &st->pattern_len, literal, "decoder Replace");
  } else if (strcmp(t, "Strip") == 0) {
    st->kind = TOK_DEC_STRIP;
    const char *content;
    if ((rc = jstr(c, j, "content", 1, &content, "decoder Strip"))) return rc;
    if (first_cp(content, &st->strip_char))
      return qv_error_set(c->err, QV_EFORMAT, "decoder Strip.content: must be one character");
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, "start"), *b = cJSON_GetObjectItemCaseSensitive(j, "stop");
    if (!cJSON_IsNumber(a) || !cJSON_IsNumber(b) || a->valuedouble < 0 || b->valuedouble < 0 ||
        a->valuedouble > 1e6 || b->valuedouble > 1e6)
      return qv_error_set(c->err, QV_EFORMAT, "decoder Strip: start/stop must be small non-negative numbers");
    st->strip_start = (int)a->valuedouble;
    st->strip_stop = (int)b->valuedouble;
  } else {
    return qv_error_set(c->err, QV_EUNSUPPORTED, "decoder type \"%s\" is not supported", t);
  }
  return 0;
}

/* Finds the id of a special token name listed in TemplateProcessing.special_tokens. */
static int template_ids(jctx *c, const cJSON *special, const char *name, int32_t **arr, int *n) {
  const cJSON *e = cJSON_GetObjectItemCaseSensitive(special, name);
  const cJSON *ids = cJSON_GetObjectItemCaseSensitive(e, "ids"), *x;
  if (!cJSON_IsArray(ids)) return qv_error_set(c->err, QV_EFORMAT, "post_processor: special token \"%s\" has no ids", name);
  cJSON_ArrayForEach(x, ids) {
    if (!cJSON_IsNumber(x) || x->valuedouble < 0 || x->valuedouble >= TOK_MAX_ID)
      return qv_error_set(c->err, QV_EFORMAT, "post_processor: bad id for \"%s\"", name);
    GROW(*arr, *n);
    (*arr)[(*n)++] = (int32_t)x->valuedouble;
  }
  return 0;
}

static int parse_post(jctx *c, const cJSON *j, int depth) {
  if (!j || cJSON_IsNull(j)) return 0;
  if (depth > 16 || !cJSON_IsObject(j)) return qv_error_set(c->err, QV_EFORMAT, "post_processor: expected an object");
  qv_tokenizer *tok = c->tok;
  const char *t = jtype(j);
  int rc;
  if (strcmp(t, "Sequence") == 0) {
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(j, "processors"), *e;
    if (!cJSON_IsArray(arr)) return qv_error_set(c->err, QV_EFORMAT, "post_processor.processors: not an array");
    cJSON_ArrayForEach(e, arr) {
      if ((rc = parse_post(c, e, depth + 1))) return rc;
    }
    return 0;
  }
  if (strcmp(t, "ByteLevel") == 0) return 0; /* only touches offsets */
  if (strcmp(t, "TemplateProcessing") == 0) {
    const cJSON *single = cJSON_GetObjectItemCaseSensitive(j, "single"), *it;
    const cJSON *special = cJSON_GetObjectItemCaseSensitive(j, "special_tokens");
    if (!cJSON_IsArray(single)) return qv_error_set(c->err, QV_EFORMAT, "post_processor.single: not an array");
    free(tok->post_pre);
    free(tok->post_post);
    tok->post_pre = tok->post_post = NULL;
    tok->n_post_pre = tok->n_post_post = 0;
    int after = 0;
    cJSON_ArrayForEach(it, single) {
      const cJSON *sp = cJSON_GetObjectItemCaseSensitive(it, "SpecialToken");
      const cJSON *sq = cJSON_GetObjectItemCaseSensitive(it, "Sequence");
      if (sq) {
        after = 1;
      } else if (sp) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(sp, "id");
        if (!cJSON_IsString(id)) return qv_error_set(c->err, QV_EFORMAT, "post_processor: SpecialToken without id");
        rc = after ? template_ids(c, special, id->valuestring, &tok->post_post, &tok->n_post_post)
                   : template_ids(c, special, id->valuestring, &tok->post_pre, &tok->n_post_pre);
        if (rc) return rc;
      } else {
        return qv_error_set(c->err, QV_EFORMAT, "post_processor.single: unknown item");
      }
    }
    return 0;
  }
  if (strcmp(t, "RobertaProcessing") == 0 || strcmp(t, "BertProcessing") == 0) {
    const cJSON *cls = cJSON_GetObjectItemCaseSensitive(j, "cls"), *sep = cJSON_GetObjectItemCaseSensitive(j, "sep");
    const cJSON *ci = cJSON_GetArrayItem(cls, 1), *si = cJSON_GetArrayItem(sep, 1);
    if (!cJSON_IsNumber(ci) || !cJSON_IsNumber(si) || ci->valuedouble < 0 || si->valuedouble < 0 ||
        ci->valuedouble >= TOK_MAX_ID || si->valuedouble >= TOK_MAX_ID)
      return qv_error_set(c->err, QV_EFORMAT, "post_processor %s: bad cls/sep", t);
    free(tok->post_pre);
    free(tok->post_post);
    tok->post_pre = malloc(sizeof(int32_t));
    tok->post_post = malloc(sizeof(int32_t));
    if (!tok->post_pre || !tok->post_post) return QV_ENOMEM;
    tok->post_pre[0] = (int32_t)ci->valuedouble;
    tok->post_post[0] = (int32_t)si->valuedouble;
    tok->n_post_pre = tok->n_post_post = 1;
    return 0;
  }
  return qv_error_set(c->err, QV_EUNSUPPORTED, "post_processor type \"%s\" is not supported", t);
}

static int parse_model(jctx *c, const cJSON *m) {
  qv_tokenizer *tok = c->tok;
  if (!cJSON_IsObject(m)) return qv_error_set(c->err, QV_EFORMAT, "model: missing");
  const char *t = jtype(m);
  if (*t && strcmp(t, "BPE") != 0) return qv_error_set(c->err, QV_EUNSUPPORTED, "model type \"%s\" is not supported (BPE only)", t);
  const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(m, "vocab"), *e;
  const cJSON *merges = cJSON_GetObjectItemCaseSensitive(m, "merges");
  if (!cJSON_IsObject(vocab)) return qv_error_set(c->err, QV_EFORMAT, "model.vocab: not an object");
  if (merges && !cJSON_IsArray(merges) && !cJSON_IsNull(merges)) return qv_error_set(c->err, QV_EFORMAT, "model.merges: not an array");
  const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(m, "dropout");
  if (cJSON_IsNumber(dropout) && dropout->valuedouble > 0)
    return qv_error_set(c->err, QV_EUNSUPPORTED, "model.dropout: BPE dropout is not supported");
  int n = cJSON_GetArraySize(vocab);
  int rc = tok_strmap_init(&tok->vocab, (uint32_t)n);
  if (rc) return qv_error_set(c->err, rc, "out of memory");
  int32_t max_id = -1;
  cJSON_ArrayForEach(e, vocab) {
    if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble >= TOK_MAX_ID ||
        e->valuedouble != (double)(int32_t)e->valuedouble)
      return qv_error_set(c->err, QV_EFORMAT, "model.vocab[\"%.40s\"]: id must be a non-negative integer", e->string ? e->string : "");
    if (e->valuedouble > max_id) max_id = (int32_t)e->valuedouble;
  }
  if ((rc = tok_vocab_alloc(tok, max_id + 1))) return qv_error_set(c->err, rc, "vocabulary too large");
  cJSON_ArrayForEach(e, vocab) {
    const char *s = e->string ? e->string : "";
    size_t len = strlen(s);
    if (tok_utf8_valid_prefix(s, len) != len)
      return qv_error_set(c->err, QV_EFORMAT, "model.vocab: token %d is not valid UTF-8", (int)e->valuedouble);
    int32_t id = (int32_t)e->valuedouble;
    rc = tok_strmap_put(&tok->vocab, s, len, id);
    if (rc < 0) return qv_error_set(c->err, rc, "out of memory");
    if (rc == 0 && (rc = tok_vocab_set(tok, id, s, len))) return qv_error_set(c->err, rc, "out of memory");
  }
  const char *unk, *pre, *suf;
  if ((rc = jstr(c, m, "unk_token", 0, &unk, "model"))) return rc;
  if (unk) {
    tok->unk_id = tok_strmap_get(&tok->vocab, unk, strlen(unk));
    if (tok->unk_id < 0) return qv_error_set(c->err, QV_EFORMAT, "model.unk_token \"%.40s\" is not in the vocabulary", unk);
  }
  if ((rc = jstr(c, m, "continuing_subword_prefix", 0, &pre, "model"))) return rc;
  if ((rc = jstr(c, m, "end_of_word_suffix", 0, &suf, "model"))) return rc;
  if (pre && *pre) {
    tok->cont_prefix_len = strlen(pre);
    if (!(tok->cont_prefix = dupn(pre, tok->cont_prefix_len))) return QV_ENOMEM;
  }
  if (suf && *suf) {
    tok->eow_suffix_len = strlen(suf);
    if (!(tok->eow_suffix = dupn(suf, tok->eow_suffix_len))) return QV_ENOMEM;
  }
  int n_merges = merges ? cJSON_GetArraySize(merges) : 0;
  if ((rc = tok_pairmap_init(&tok->merges, (uint32_t)n_merges))) return qv_error_set(c->err, rc, "out of memory");
  int rank = 0;
  cJSON_ArrayForEach(e, merges) {
    const char *a = NULL, *b = NULL;
    size_t al = 0, bl = 0;
    if (cJSON_IsString(e) && e->valuestring) {
      /* "left right". Some files (Llama 2 exports) hold tokens that contain spaces; then the
       * one split whose parts and concatenation are all in the vocabulary is taken. */
      a = e->valuestring;
      size_t n = strlen(a), n_ok = 0, cut = 0;
      for (size_t k = 0; k < n; k++) {
        if (a[k] != ' ') continue;
        if (n_ok == 0 && !cut) cut = k + 1; /* first space, for the error message */
        if (tok_strmap_get(&tok->vocab, a, k) >= 0 && tok_strmap_get(&tok->vocab, a + k + 1, n - k - 1) >= 0) {
          if (n_ok++ == 0) cut = k + 1;
        }
      }
      if (!cut) return qv_error_set(c->err, QV_EFORMAT, "model.merges[%d]: expected \"left right\"", rank);
      if (n_ok > 1) return qv_error_set(c->err, QV_EFORMAT, "model.merges[%d]: ambiguous merge \"%.60s\"", rank, a);
      al = cut - 1;
      b = a + cut;
      bl = n - cut;
    } else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 && cJSON_IsString(cJSON_GetArrayItem(e, 0)) &&
               cJSON_IsString(cJSON_GetArrayItem(e, 1))) {
      a = cJSON_GetArrayItem(e, 0)->valuestring;
      b = cJSON_GetArrayItem(e, 1)->valuestring;
      al = strlen(a);
      bl = strlen(b);
    } else {
      return qv_error_set(c->err, QV_EFORMAT, "model.merges[%d]: expected a string or a pair of strings", rank);
    }
    int32_t ia = tok_strmap_get(&tok->vocab, a, al), ib = tok_strmap_get(&tok->vocab, b, bl);
    if (ia < 0 || ib < 0)
      return qv_error_set(c->err, QV_EFORMAT, "model.merges[%d]: token \"%.*s\" is not in the vocabulary", rank,
                          (int)(ia < 0 ? (al > 60 ? 60 : al) : (bl > 60 ? 60 : bl)), ia < 0 ? a : b);
    char stack[256];
    char *buf = al + bl <= sizeof stack ? stack : malloc(al + bl);
    if (!buf) return qv_error_set(c->err, QV_ENOMEM, "out of memory");
    /* With a continuing-subword prefix, "a ##b" merges into "ab" (the prefix of b drops). */
    size_t skip = tok->cont_prefix && bl >= tok->cont_prefix_len &&
                          memcmp(b, tok->cont_prefix, tok->cont_prefix_len) == 0
                      ? tok->cont_prefix_len
                      : 0;
    memcpy(buf, a, al);
    memcpy(buf + al, b + skip, bl - skip);
    int32_t im = tok_strmap_get(&tok->vocab, buf, al + bl - skip);
    if (buf != stack) free(buf);
    if (im < 0) return qv_error_set(c->err, QV_EFORMAT, "model.merges[%d]: merged token is not in the vocabulary", rank);
    if (tok_pairmap_put(&tok->merges, ia, ib, rank, im) < 0) return qv_error_set(c->err, QV_ENOMEM, "out of memory");
    rank++;
  }
  tok->byte_fallback = jbool(m, "byte_fallback", 0);
  tok->fuse_unk = jbool(m, "fuse_unk", 0);
  tok->ignore_merges = jbool(m, "ignore_merges", 0);
  tok->model_kind = TOK_MODEL_BPE;
  return 0;
}

static int parse_added(jctx *c, const cJSON *arr) {
  const cJSON *e;
  if (!arr || cJSON_IsNull(arr)) return 0;
  if (!cJSON_IsArray(arr)) return qv_error_set(c->err, QV_EFORMAT, "added_tokens: not an array");
  int i = 0;
  cJSON_ArrayForEach(e, arr) {
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
    const char *content;
    int rc = jstr(c, e, "content", 1, &content, "added_tokens[]");
    if (rc) return rc;
    if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble >= TOK_MAX_ID)
      return qv_error_set(c->err, QV_EFORMAT, "added_tokens[%d].id: must be a non-negative integer", i);
    if (!*content) return qv_error_set(c->err, QV_EFORMAT, "added_tokens[%d].content: empty", i);
    tok_added a = {
        .id = (int32_t)id->valuedouble, .content = (char *)content, .len = strlen(content),
        .special = (uint8_t)jbool(e, "special", 0), .lstrip = (uint8_t)jbool(e, "lstrip", 0),
        .rstrip = (uint8_t)jbool(e, "rstrip", 0), .single_word = (uint8_t)jbool(e, "single_word", 0),
        .normalized = (uint8_t)jbool(e, "normalized", !jbool(e, "special", 0)),
    };
    if ((rc = tok_add_token(c->tok, &a))) return qv_error_set(c->err, rc, "added_tokens[%d]: cannot add", i);
    i++;
  }
  return 0;
}

/* Added tokens with normalized=true are matched in normalized text: normalize their content. */
static int normalize_added(jctx *c) {
  qv_tokenizer *tok = c->tok;
  if (tok->n_norm == 0) return 0;
  tok_match_ctx mc = {0};
  tok_buf b = {0};
  int rc = 0;
  for (uint32_t i = 0; i < tok->n_added && rc == 0; i++) {
    tok_added *a = &tok->added[i];
    if (!a->normalized) continue;
    rc = tok_normalize(tok, &mc, a->content, a->len, &b);
    if (rc == 0 && b.len > 0 && (b.len != a->len || memcmp(b.data, a->content, b.len) != 0)) {
      /* Decoded as its normalized text, and no longer skipped as special (see TOK_FLAG_*). */
      if (a->id < tok->n_vocab) {
        tok->tok_special[a->id] |= TOK_FLAG_NORM_TEXT;
        tok->tok_special[a->id] &= (uint8_t)~TOK_FLAG_SKIP;
      }
      char *p = dupn(b.data, b.len);
      if (!p) { rc = QV_ENOMEM; break; }
      free(a->content);
      a->content = p;
      a->len = b.len;
    }
  }
  tok_buf_free(&b);
  tok_match_ctx_free(&mc);
  return rc ? qv_error_set(c->err, rc, "normalizing added tokens failed") : 0;
}

/* bos_token / eos_token in tokenizer_config.json: a string or {"content": ...}. *id is -1 when
 * the key is absent or null; naming a token the vocabulary lacks is an error. */
static int config_token(jctx *c, const cJSON *cfg, const char *key, int32_t *id) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
  if (cJSON_IsObject(v)) v = cJSON_GetObjectItemCaseSensitive(v, "content");
  *id = -1;
  if (!v || cJSON_IsNull(v)) return 0;
  if (!cJSON_IsString(v) || !v->valuestring) return qv_error_set(c->err, QV_EFORMAT, "tokenizer_config.%s: not a string", key);
  *id = qv_tokenizer_token_id(c->tok, v->valuestring);
  if (*id < 0)
    return qv_error_set(c->err, QV_EFORMAT, "tokenizer_config.%s \"%.60s\" is not in the vocabulary", key, v->valuestring);
  return 0;
}

static int apply_config(jctx *c, const cJSON *cfg) {
  qv_tokenizer *tok = c->tok;
  if (cfg) {
    int rc = config_token(c, cfg, "bos_token", &tok->bos_id);
    if (rc == 0) rc = config_token(c, cfg, "eos_token", &tok->eos_id);
    if (rc) return rc;
  }
  if (tok->bos_id < 0 && tok->n_post_pre == 1) tok->bos_id = tok->post_pre[0];
  if (tok->eos_id < 0) {
    static const char *const names[] = {"</s>", "<|endoftext|>", "<|end_of_text|>", "<|im_end|>", "<eos>", "<|eot_id|>"};
    for (size_t i = 0; i < sizeof names / sizeof *names && tok->eos_id < 0; i++) {
      int32_t id = qv_tokenizer_token_id(tok, names[i]);
      if (id >= 0 && qv_tokenizer_is_special(tok, id)) tok->eos_id = id;
    }
  }
  const cJSON *ab = cJSON_GetObjectItemCaseSensitive(cfg, "add_bos_token");
  const cJSON *ae = cJSON_GetObjectItemCaseSensitive(cfg, "add_eos_token");
  /* As transformers' Llama-family fast tokenizers do, each flag that is present rebuilds its
   * side of the template (BOS in front, EOS at the end); an absent flag keeps that side. */
  if (cJSON_IsBool(ab)) {
    int add = cJSON_IsTrue(ab);
    if (add && tok->bos_id < 0) return qv_error_set(c->err, QV_EFORMAT, "tokenizer_config: add_bos_token is true but there is no bos_token");
    free(tok->post_pre);
    tok->post_pre = NULL;
    tok->n_post_pre = 0;
    if (add) {
      GROW(tok->post_pre, 0);
      tok->post_pre[tok->n_post_pre++] = tok->bos_id;
    }
  }
  if (cJSON_IsBool(ae)) {
    int add = cJSON_IsTrue(ae);
    if (add && tok->eos_id < 0) return qv_error_set(c->err, QV_EFORMAT, "tokenizer_config: add_eos_token is true but there is no eos_token");
    free(tok->post_post);
    tok->post_post = NULL;
    tok->n_post_post = 0;
    if (add) {
      GROW(tok->post_post, 0);
      tok->post_post[tok->n_post_post++] = tok->eos_id;
    }
  }
  return 0;
}

static int check_post_ids(jctx *c) {
  qv_tokenizer *tok = c->tok;
  for (int i = 0; i < tok->n_post_pre; i++)
    if (tok->post_pre[i] >= tok->n_vocab) return qv_error_set(c->err, QV_EFORMAT, "post_processor: id %d out of range", tok->post_pre[i]);
  for (int i = 0; i < tok->n_post_post; i++)
    if (tok->post_post[i] >= tok->n_vocab) return qv_error_set(c->err, QV_EFORMAT, "post_processor: id %d out of range", tok->post_post[i]);
  return 0;
}

static int parse_json(const char *s, size_t n, cJSON **out, const char *what, qv_error *err) {
  *out = cJSON_ParseWithLength(s, n);
  if (*out) return 0;
  const char *at = cJSON_GetErrorPtr();
  size_t off = at && at >= s && at <= s + n ? (size_t)(at - s) : 0;
  size_t line = 1, col = 1;
  for (size_t i = 0; i < off; i++) {
    if (s[i] == '\n') { line++; col = 1; } else col++;
  }
  return qv_error_set(err, QV_EFORMAT, "%s: invalid JSON near line %zu column %zu", what, line, col);
}

int tok_load_json(qv_tokenizer *tok, const char *json, size_t len, const char *config_json,
                  size_t config_len, qv_error *err) {
  cJSON *root = NULL, *cfg = NULL;
  jctx c = {tok, err};
  int rc = parse_json(json, len, &root, "tokenizer.json", err);
  if (rc) return rc;
  if (config_json && parse_json(config_json, config_len, &cfg, "tokenizer_config.json", err)) {
    cJSON_Delete(root);
    return QV_EFORMAT;
  }
  if (!cJSON_IsObject(root)) rc = qv_error_set(err, QV_EFORMAT, "tokenizer.json: not an object");
  if (rc == 0) rc = parse_model(&c, cJSON_GetObjectItemCaseSensitive(root, "model"));
  if (rc == 0) rc = parse_normalizer(&c, cJSON_GetObjectItemCaseSensitive(root, "normalizer"), 0);
  if (rc == 0) rc = parse_pre(&c, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), 0);
  if (rc == 0) rc = parse_decoder(&c, cJSON_GetObjectItemCaseSensitive(root, "decoder"), 0);
  if (rc == 0) rc = parse_post(&c, cJSON_GetObjectItemCaseSensitive(root, "post_processor"), 0);
  if (rc == 0) rc = parse_added(&c, cJSON_GetObjectItemCaseSensitive(root, "added_tokens"));
  if (rc == 0) rc = normalize_added(&c);
  if (rc == 0) rc = apply_config(&c, cfg);
  if (rc == 0) rc = check_post_ids(&c);
  if (rc && err && err->code == 0) qv_error_set(err, rc, "tokenizer.json: %s", qv_strerror(rc));
  cJSON_Delete(root);
  cJSON_Delete(cfg);
  return rc;
}
