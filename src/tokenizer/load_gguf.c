/* Loading a GGUF vocabulary (tokenizer.ggml.*) into the same pipeline as tokenizer.json, so
 * that the result equals the Hugging Face tokenizer the GGUF was converted from:
 *   model "llama": SentencePiece BPE (merge priority = token score, byte fallback, "▁" prefix
 *                  and space replacement, decoder Replace+ByteFallback+Fuse+Strip);
 *   model "gpt2":  byte-level BPE with merges and the pre-tokenizer named by tokenizer.ggml.pre
 *                  (a table of the original regexes per model family below).
 * Control tokens become special added tokens, user-defined ones plain added tokens. */
#include <stdlib.h>
#include <string.h>

#include "tokenizer/gguf.h"
#include "tokenizer/tok_internal.h"

#define GPT2_RE "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
#define LLAMA3_RE "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define QWEN2_RE "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define GPT4O_RE                                                                                         \
  "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|" \
  "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|" \
  "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define CJK_RE "[\xe4\xb8\x80-\xe9\xbe\xa5\xe0\xa0\x80-\xe4\xb8\x80\xea\xb0\x80-\xed\x9f\xbf]+"

/* Pre-tokenizer families: each regex is a Split(Isolated) applied in order, then the byte-level
 * mapping. gpt2_regex: use the ByteLevel pre-tokenizer's own GPT-2 regex instead. */
typedef struct pre_family {
  const char *names; /* '|'-separated tokenizer.ggml.pre values */
  const char *regex[6];
  int gpt2_regex, nfc, ignore_merges;
} pre_family;

static const pre_family FAMILIES[] = {
    {"gpt-2|phi-2|mpt|olmo|jais|gpt2", {NULL}, 1, 0, 0},
    {"default", {"[\\p{P}\\$\\+<=>\\^~\\|]+", GPT2_RE, "\\p{N}+", "[0-9][0-9][0-9]"}, 0, 0, 0},
    {"llama-bpe|llama3|llama-v3|dbrx|smaug-bpe", {LLAMA3_RE}, 0, 0, 1},
    {"qwen2|stablelm2", {QWEN2_RE}, 0, 1, 0},
    {"deepseek-llm",
     {"[\\r\\n]",
      "\\s?[A-Za-z\xc2\xb5\xc3\x80-\xc3\x96\xc3\x98-\xc3\xb6\xc3\xb8-\xc6\xba\xc6\xbc-\xc6\xbf\xc7\x84-\xca\x93"
      "\xca\x95-\xca\xaf\xcd\xb0-\xcd\xb3\xcd\xb6\xcd\xb7\xcd\xbb-\xcd\xbd\xcd\xbf\xce\x86\xce\x88-\xce\x8a\xce\x8c"
      "\xce\x8e-\xce\xa1\xce\xa3-\xcf\xb5\xcf\xb7-\xd2\x81\xd2\x8a-\xd4\xaf\xd4\xb1-\xd5\x96\xe1\x82\xa0-\xe1\x83\x85"
      "\xe1\x8e\xa0-\xe1\x8f\xb5\xe1\x8f\xb8-\xe1\x8f\xbd\xe1\xb2\x90-\xe1\xb2\xba\xe1\xb2\xbd-\xe1\xb2\xbf"
      "\xe1\xb4\x80-\xe1\xb4\xab\xe1\xb5\xab-\xe1\xb5\xb7\xe1\xb5\xb9-\xe1\xb6\x9a\xe1\xb8\x80-\xe1\xbc\x95"
      "\xe1\xbc\x98-\xe1\xbc\x9d\xe1\xbc\xa0-\xe1\xbd\x85\xe1\xbd\x88-\xe1\xbd\x8d\xe1\xbd\x90-\xe1\xbd\x97"
      "\xe1\xbd\x99\xe1\xbd\x9b\xe1\xbd\x9d\xe1\xbd\x9f-\xe1\xbd\xbd\xe1\xbe\x80-\xe1\xbe\xb4\xe1\xbe\xb6-\xe1\xbe\xbc"
      "\xe1\xbe\xbe\xe1\xbf\x82-\xe1\xbf\x84\xe1\xbf\x86-\xe1\xbf\x8c\xe1\xbf\x90-\xe1\xbf\x93\xe1\xbf\x96-\xe1\xbf\x9b"
      "\xe1\xbf\xa0-\xe1\xbf\xac\xe1\xbf\xb2-\xe1\xbf\xb4\xe1\xbf\xb6-\xe1\xbf\xbc\xe2\x84\x82\xe2\x84\x87"
      "\xe2\x84\x8a-\xe2\x84\x93\xe2\x84\x95\xe2\x84\x99-\xe2\x84\x9d\xe2\x84\xa4\xe2\x84\xa6\xe2\x84\xa8"
      "\xe2\x84\xaa-\xe2\x84\xad\xe2\x84\xaf-\xe2\x84\xb4\xe2\x84\xb9\xe2\x84\xbc-\xe2\x84\xbf\xe2\x85\x85-\xe2\x85\x89"
      "\xe2\x85\x8e\xe2\x86\x83\xe2\x86\x84\xe2\xb0\x80-\xe2\xb1\xbb\xe2\xb1\xbe-\xe2\xb3\xa4\xe2\xb3\xab-\xe2\xb3\xae"
      "\xe2\xb3\xb2\xe2\xb3\xb3\xea\x99\x80-\xea\x99\xad\xea\x9a\x80-\xea\x9a\x9b\xea\x9c\xa2-\xea\x9d\xaf"
      "\xea\x9d\xb1-\xea\x9e\x87\xea\x9e\x8b-\xea\x9e\x8e\xea\xad\xb0-\xea\xae\xbf\xef\xac\x80-\xef\xac\x86"
      "\xef\xac\x93-\xef\xac\x97\xef\xbc\xa1-\xef\xbc\xba\xef\xbd\x81-\xef\xbd\x9a\xf0\x90\x90\x80-\xf0\x90\x91\x8f"
      "\xf0\x90\x92\xb0-\xf0\x90\x93\x93\xf0\x90\x93\x98-\xf0\x90\x93\xbb\xf0\x90\xb2\x80-\xf0\x90\xb2\xb2"
      "\xf0\x90\xb3\x80-\xf0\x90\xb3\xb2\xf0\x91\xa2\xa0-\xf0\x91\xa3\x9f\xf0\x9e\xa4\x80-\xf0\x9e\xa5\x83]+",
      "\\s?[!-/:-~\xef\xbc\x81-\xef\xbc\x8f\xef\xbc\x9a-\xef\xbd\x9e\xe2\x80\x98-\xe2\x80\x9f\xe3\x80\x80-\xe3\x80\x82]+",
      "\\s+$", CJK_RE, "\\p{N}+"},
     0, 0, 0},
    {"deepseek-coder", {"[\\r\\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", CJK_RE, "\\p{N}"}, 0, 0, 0},
    {"falcon", {"[\\p{P}\\$\\+<=>\\^~\\|`]+", "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)", "[0-9][0-9][0-9]"}, 0, 0, 0},
    {"starcoder|refact|command-r|smollm|codeshell|exaone|minerva", {"\\p{N}", GPT2_RE}, 0, 0, 0},
    {"gpt-4o|minimax-m2", {GPT4O_RE}, 0, 0, 0},
    {"chatglm4|glm4", {LLAMA3_RE}, 0, 0, 0},
    {"deepseek-v3|hunyuan-dense",
     {"\\p{N}{1,3}", "[\xe4\xb8\x80-\xe9\xbe\xa5\xe3\x81\x80-\xe3\x82\x9f\xe3\x82\xa0-\xe3\x83\xbf]+",
      "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\\r\\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
     0, 0, 0},
    {"tekken",
     {"[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+|"
      "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*|"
      "\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
     0, 0, 0},
    {"poro-chat|bloom|gpt3-finnish", {" ?[^(\\s|.,!?\xe2\x80\xa6\xe3\x80\x82\xef\xbc\x8c\xe3\x80\x81\xe0\xa5\xa4\xdb\x94\xd8\x8c)]+"}, 0, 0, 0},
    {"viking", {" ?[^(\\s|.,!?\xe2\x80\xa6\xe3\x80\x82\xef\xbc\x8c\xe3\x80\x81\xe0\xa5\xa4\xdb\x94\xd8\x8c)]+", "\\p{N}"}, 0, 0, 0},
};

static const pre_family *find_family(const char *name, size_t n) {
  for (size_t i = 0; i < sizeof FAMILIES / sizeof *FAMILIES; i++) {
    const char *p = FAMILIES[i].names;
    while (*p) {
      const char *bar = strchr(p, '|');
      size_t len = bar ? (size_t)(bar - p) : strlen(p);
      if (len == n && memcmp(p, name, n) == 0) return &FAMILIES[i];
      p += len + (bar ? 1 : 0);
    }
  }
  return NULL;
}

enum { GGUF_TT_NORMAL = 1, GGUF_TT_UNKNOWN = 2, GGUF_TT_CONTROL = 3, GGUF_TT_USER = 4, GGUF_TT_UNUSED = 5, GGUF_TT_BYTE = 6 };

static int token_id_key(const gguf_ctx *g, const char *key, int32_t n_vocab, int32_t *out) {
  int64_t v;
  *out = -1;
  int rc = gguf_get_i64(g, key, &v);
  if (rc == QV_ENOTFOUND) return 0;
  if (rc || v < 0 || v >= n_vocab) return QV_EFORMAT;
  *out = (int32_t)v;
  return 0;
}

typedef struct spm_order { float score; int32_t id; } spm_order;

static int cmp_spm(const void *a, const void *b) {
  const spm_order *x = a, *y = b;
  if (x->score != y->score) return x->score > y->score ? -1 : 1;
  return (x->id > y->id) - (x->id < y->id);
}

static int add_dec(qv_tokenizer *tok, tok_dec_kind kind) {
  tok_dec_step *d = realloc(tok->dec, ((size_t)tok->n_dec + 1) * sizeof *d);
  if (!d) return QV_ENOMEM;
  tok->dec = d;
  memset(&d[tok->n_dec], 0, sizeof *d);
  d[tok->n_dec++].kind = kind;
  return 0;
}

static int add_norm(qv_tokenizer *tok, tok_norm_kind kind, const char *str, const char *content) {
  tok_norm_step *n = realloc(tok->norm, ((size_t)tok->n_norm + 1) * sizeof *n);
  if (!n) return QV_ENOMEM;
  tok->norm = n;
  tok_norm_step *st = &n[tok->n_norm++];
  memset(st, 0, sizeof *st);
  st->kind = kind;
  if (str) {
    st->str_len = strlen(str);
    if (!(st->str = strdup(str))) return QV_ENOMEM;
  }
  if (content) {
    st->content_len = strlen(content);
    if (!(st->content = strdup(content))) return QV_ENOMEM;
  }
  return 0;
}

static int add_pre(qv_tokenizer *tok, tok_pre_kind kind, const char *re, qv_error *err) {
  tok_pre_step *p = realloc(tok->pre, ((size_t)tok->n_pre + 1) * sizeof *p);
  if (!p) return QV_ENOMEM;
  tok->pre = p;
  tok_pre_step *st = &p[tok->n_pre++];
  memset(st, 0, sizeof *st);
  st->kind = kind;
  st->behavior = TOK_SPLIT_ISOLATED;
  if (re) {
    st->use_regex = kind == TOK_PRE_BYTELEVEL;
    return tok_regex_compile(&st->re, re, strlen(re), 0, err);
  }
  return 0;
}

static int load(qv_tokenizer *tok, const gguf_ctx *g, qv_error *err) {
  const char *model;
  size_t model_len;
  if (gguf_get_str(g, "tokenizer.ggml.model", &model, &model_len))
    return qv_error_set(err, QV_EFORMAT, "tokenizer.ggml.model: missing or not a string");
  int is_llama = model_len == 5 && memcmp(model, "llama", 5) == 0;
  int is_gpt2 = model_len == 4 && memcmp(model, "gpt2", 4) == 0;
  if (!is_llama && !is_gpt2)
    return qv_error_set(err, QV_EUNSUPPORTED, "tokenizer.ggml.model \"%.*s\" is not supported (llama, gpt2)",
                        (int)(model_len > 40 ? 40 : model_len), model);
  const gguf_kv *tokens = gguf_find(g, "tokenizer.ggml.tokens");
  if (!tokens || tokens->type != GGUF_T_ARRAY || tokens->arr_type != GGUF_T_STRING || tokens->arr_n == 0 ||
      tokens->arr_n > TOK_MAX_ID)
    return qv_error_set(err, QV_EFORMAT, "tokenizer.ggml.tokens: missing or not a string array");
  int32_t n_vocab = (int32_t)tokens->arr_n;
  const gguf_kv *scores = gguf_find(g, "tokenizer.ggml.scores");
  const gguf_kv *types = gguf_find(g, "tokenizer.ggml.token_type");
  if (scores && (scores->type != GGUF_T_ARRAY || scores->arr_n != tokens->arr_n ||
                 (scores->arr_type != GGUF_T_F32 && scores->arr_type != GGUF_T_F64)))
    return qv_error_set(err, QV_EFORMAT, "tokenizer.ggml.scores: must be a float array as long as the tokens");
  if (types && (types->type != GGUF_T_ARRAY || types->arr_n != tokens->arr_n ||
                types->arr_type == GGUF_T_STRING || types->arr_type == GGUF_T_ARRAY || types->arr_type == GGUF_T_F32 ||
                types->arr_type == GGUF_T_F64))
    return qv_error_set(err, QV_EFORMAT, "tokenizer.ggml.token_type: must be an integer array as long as the tokens");
  if (is_llama && !scores) return qv_error_set(err, QV_EFORMAT, "tokenizer.ggml.scores: required for a llama vocabulary");
  int rc = tok_vocab_alloc(tok, n_vocab);
  if (rc == 0) rc = tok_strmap_init(&tok->vocab, (uint32_t)n_vocab);
  if (rc) return qv_error_set(err, rc, "out of memory");
  const uint8_t *pos = tokens->val;
  for (int32_t id = 0; id < n_vocab; id++) {
    const char *s;
    size_t n;
    gguf_arr_next_str(&pos, &s, &n);
    if (tok_utf8_valid_prefix(s, n) != n) return qv_error_set(err, QV_EFORMAT, "token %d is not valid UTF-8", id);
    if ((rc = tok_vocab_set(tok, id, s, n))) return qv_error_set(err, rc, "out of memory");
    if (tok_strmap_put(&tok->vocab, s, n, id) < 0) return qv_error_set(err, QV_ENOMEM, "out of memory");
    int tt = types ? (int)gguf_arr_num(types, (uint64_t)id) : GGUF_TT_NORMAL;
    if ((tt == GGUF_TT_CONTROL || tt == GGUF_TT_USER || tt == GGUF_TT_UNKNOWN) && n > 0) {
      tok_added a = {.id = id, .content = (char *)s, .len = n, .special = tt != GGUF_TT_USER};
      if ((rc = tok_add_token(tok, &a))) return qv_error_set(err, rc, "out of memory");
    }
  }
  int32_t unk, bos, eos, eot, pad;
  if (token_id_key(g, "tokenizer.ggml.unknown_token_id", n_vocab, &unk) ||
      token_id_key(g, "tokenizer.ggml.bos_token_id", n_vocab, &bos) ||
      token_id_key(g, "tokenizer.ggml.eos_token_id", n_vocab, &eos) ||
      token_id_key(g, "tokenizer.ggml.eot_token_id", n_vocab, &eot) ||
      token_id_key(g, "tokenizer.ggml.padding_token_id", n_vocab, &pad))
    return qv_error_set(err, QV_EFORMAT, "tokenizer.ggml.*_token_id: not an id inside the vocabulary");
  tok->bos_id = bos;
  /* End of generation: eos, else the end-of-turn token some chat models define instead. */
  tok->eos_id = eos >= 0 ? eos : eot;
  int add_bos = is_llama, add_eos = 0, add_space = 1;
  gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &add_bos);
  gguf_get_bool(g, "tokenizer.ggml.add_eos_token", &add_eos);
  gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &add_space);
  if ((add_bos && bos < 0) || (add_eos && eos < 0))
    return qv_error_set(err, QV_EFORMAT, "add_bos/eos_token is set but the token id is missing");
  if (add_bos) {
    if (!(tok->post_pre = malloc(sizeof(int32_t)))) return QV_ENOMEM;
    tok->post_pre[tok->n_post_pre++] = bos;
  }
  if (add_eos) {
    if (!(tok->post_post = malloc(sizeof(int32_t)))) return QV_ENOMEM;
    tok->post_post[tok->n_post_post++] = eos;
  }
  tok->has_decoder = 1;
  if (is_llama) {
    tok->model_kind = TOK_MODEL_SPM_SCORES;
    tok->byte_fallback = 1;
    tok->fuse_unk = 1;
    tok->unk_id = unk >= 0 ? unk : tok_strmap_get(&tok->vocab, "<unk>", 5);
    spm_order *ord = malloc((size_t)n_vocab * sizeof *ord);
    tok->spm_rank = malloc((size_t)n_vocab * sizeof *tok->spm_rank);
    if (!ord || !tok->spm_rank) {
      free(ord);
      return qv_error_set(err, QV_ENOMEM, "out of memory");
    }
    for (int32_t i = 0; i < n_vocab; i++) ord[i] = (spm_order){(float)gguf_arr_num(scores, (uint64_t)i), i};
    qsort(ord, (size_t)n_vocab, sizeof *ord, cmp_spm);
    for (int32_t r = 0; r < n_vocab; r++) {
      int32_t id = ord[r].id;
      int tt = types ? (int)gguf_arr_num(types, (uint64_t)id) : GGUF_TT_NORMAL;
      tok->spm_rank[id] = (tt == GGUF_TT_NORMAL || tt == GGUF_TT_USER) ? r : -1;
    }
    free(ord);
    static const char sp[] = "\xe2\x96\x81"; /* U+2581 */
    if ((add_space && add_norm(tok, TOK_NORM_PREPEND, sp, NULL)) || add_norm(tok, TOK_NORM_REPLACE, " ", sp))
      return QV_ENOMEM;
    if (add_dec(tok, TOK_DEC_REPLACE) || add_dec(tok, TOK_DEC_BYTEFALLBACK) || add_dec(tok, TOK_DEC_FUSE))
      return QV_ENOMEM;
    tok_dec_step *r = &tok->dec[0];
    r->pattern = strdup(sp);
    r->pattern_len = 3;
    r->content = strdup(" ");
    r->content_len = 1;
    if (!r->pattern || !r->content) return QV_ENOMEM;
    if (add_space) {
      if (add_dec(tok, TOK_DEC_STRIP)) return QV_ENOMEM;
      tok_dec_step *s = &tok->dec[tok->n_dec - 1];
      s->strip_char = ' ';
      s->strip_start = 1;
    }
    return 0;
  }
  /* gpt2: byte-level BPE. */
  const char *pre = "default";
  size_t pre_len = 7;
  gguf_get_str(g, "tokenizer.ggml.pre", &pre, &pre_len);
  const pre_family *fam = find_family(pre, pre_len);
  if (!fam)
    return qv_error_set(err, QV_EUNSUPPORTED, "tokenizer.ggml.pre \"%.*s\" is not a known pre-tokenizer",
                        (int)(pre_len > 40 ? 40 : pre_len), pre);
  if (fam->nfc && add_norm(tok, TOK_NORM_NFC, NULL, NULL)) return QV_ENOMEM;
  for (int i = 0; i < 6 && fam->regex[i]; i++)
    if ((rc = add_pre(tok, TOK_PRE_SPLIT, fam->regex[i], err))) return rc;
  if ((rc = add_pre(tok, TOK_PRE_BYTELEVEL, fam->gpt2_regex ? GPT2_RE : NULL, err))) return rc;
  tok->ignore_merges = fam->ignore_merges;
  if (add_dec(tok, TOK_DEC_BYTELEVEL)) return QV_ENOMEM;
  tok->unk_id = unk;
  const gguf_kv *merges = gguf_find(g, "tokenizer.ggml.merges");
  if (!merges || merges->type != GGUF_T_ARRAY || merges->arr_type != GGUF_T_STRING)
    return qv_error_set(err, QV_EFORMAT, "tokenizer.ggml.merges: missing or not a string array");
  if (merges->arr_n > (1u << 24)) return qv_error_set(err, QV_ELIMIT, "tokenizer.ggml.merges: too many merges");
  if ((rc = tok_pairmap_init(&tok->merges, (uint32_t)merges->arr_n))) return qv_error_set(err, rc, "out of memory");
  pos = merges->val;
  for (uint64_t r = 0; r < merges->arr_n; r++) {
    const char *s;
    size_t n;
    gguf_arr_next_str(&pos, &s, &n);
    const char *sp = memchr(s, ' ', n);
    if (!sp) return qv_error_set(err, QV_EFORMAT, "tokenizer.ggml.merges[%llu]: expected \"left right\"", (unsigned long long)r);
    size_t al = (size_t)(sp - s), bl = n - al - 1;
    int32_t ia = tok_strmap_get(&tok->vocab, s, al), ib = tok_strmap_get(&tok->vocab, sp + 1, bl);
    char *buf = malloc(al + bl + 1);
    if (!buf) return QV_ENOMEM;
    memcpy(buf, s, al);
    memcpy(buf + al, sp + 1, bl);
    int32_t im = tok_strmap_get(&tok->vocab, buf, al + bl);
    free(buf);
    if (ia < 0 || ib < 0 || im < 0)
      return qv_error_set(err, QV_EFORMAT, "tokenizer.ggml.merges[%llu]: names a token not in the vocabulary", (unsigned long long)r);
    if (tok_pairmap_put(&tok->merges, ia, ib, (int32_t)r, im) < 0) return QV_ENOMEM;
  }
  return 0;
}

int tok_load_gguf(qv_tokenizer *tok, const void *data, size_t len, qv_error *err) {
  gguf_ctx g;
  int rc = gguf_parse(data, len, &g, err);
  if (rc) return rc;
  rc = load(tok, &g, err);
  if (rc && err && err->code == 0) qv_error_set(err, rc, "GGUF vocabulary: %s", qv_strerror(rc));
  gguf_free(&g);
  return rc;
}
