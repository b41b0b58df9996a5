/* Regexes for pre-tokenizers, normalizers and decoders through PCRE2 (UTF, Unicode properties,
 * JIT). The reference library uses Oniguruma (Ruby syntax), so patterns are compiled with
 * multi-line anchors and the Perl classes \s \S \w \W are rewritten to Oniguruma's Unicode
 * meaning (\s includes U+0085; \w is letters, marks, decimal digits and connector punctuation),
 * where PCRE2's own definitions differ. */
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_internal.h"

#define WORD_CLASS "\\p{L}\\p{M}\\p{Nd}\\p{Nl}\\p{Pc}\\x{200C}\\x{200D}\\x{24B6}-\\x{24E9}"

/* Rewrites pat into out; returns 0 or QV_ENOMEM. */
static int translate(const char *pat, size_t len, tok_buf *out) {
  int in_class = 0;
  size_t class_start = 0;
  for (size_t i = 0; i < len; i++) {
    char c = pat[i];
    const char *rep = NULL;
    if (c == '\\' && i + 1 < len) {
      char e = pat[i + 1];
      if (e == 's') rep = in_class ? "\\s\\x{85}" : "[\\s\\x{85}]";
      else if (e == 'S' && !in_class) rep = "[^\\s\\x{85}]";
      else if (e == 'w') rep = in_class ? WORD_CLASS : "[" WORD_CLASS "]";
      else if (e == 'W' && !in_class) rep = "[^" WORD_CLASS "]";
      else if ((e == 'p' || e == 'P') && i + 2 < len && pat[i + 2] == '{') {
        /* \p{Han}: Oniguruma tests the Script property, PCRE2 Script_Extensions (which puts
         * CJK punctuation in Han); "sc:" asks PCRE2 for the plain Script. */
        const char *close = memchr(pat + i + 3, '}', len - i - 3);
        if (close) {
          size_t nl = (size_t)(close - (pat + i + 3));
          const char *name = pat + i + 3;
          int is_script = nl >= 3 && name[0] != '^' && memchr(name, ':', nl) == NULL &&
                          !(nl == 3 && (memcmp(name, "Any", 3) == 0 || name[0] == 'X'));
          if (is_script) {
            char head[5] = {'\\', e, '{', 's', 'c'};
            if (tok_buf_append(out, head, 5) || tok_buf_append(out, ":", 1) ||
                tok_buf_append(out, name, nl + 1))
              return QV_ENOMEM;
            i += 3 + nl;
            continue;
          }
        }
      }
      if (rep) {
        if (tok_buf_append(out, rep, strlen(rep))) return QV_ENOMEM;
      } else if (tok_buf_append(out, pat + i, 2)) {
        return QV_ENOMEM;
      }
      i++;
      continue;
    }
    if (!in_class && c == '[') {
      in_class = 1;
      class_start = i + 1;
      if (class_start < len && pat[class_start] == '^') class_start++;
    } else if (in_class && c == ']' && i != class_start) {
      in_class = 0;
    }
    if (tok_buf_append(out, &c, 1)) return QV_ENOMEM;
  }
  return 0;
}

int tok_regex_compile(tok_regex *re, const char *pat, size_t len, int literal, qv_error *err) {
  tok_buf t = {0};
  uint32_t opts = PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE;
  const char *src = pat;
  size_t src_len = len;
  if (literal) {
    opts = PCRE2_UTF | PCRE2_LITERAL; /* the only options PCRE2 allows with a literal */
  } else {
    if (translate(pat, len, &t)) return qv_error_set(err, QV_ENOMEM, "out of memory");
    src = t.data ? t.data : "";
    src_len = t.len;
  }
  int code = 0;
  PCRE2_SIZE off = 0;
  re->code = pcre2_compile((PCRE2_SPTR)src, src_len, opts, &code, &off, NULL);
  tok_buf_free(&t);
  if (!re->code) {
    PCRE2_UCHAR msg[160];
    pcre2_get_error_message(code, msg, sizeof msg);
    return qv_error_set(err, QV_EFORMAT, "bad regex \"%.*s\" at offset %zu: %s", (int)(len > 80 ? 80 : len),
                        pat, (size_t)off, (const char *)msg);
  }
  /* JIT is an optimisation: when it is unavailable the interpreter gives the same matches. */
  (void)pcre2_jit_compile(re->code, PCRE2_JIT_COMPLETE);
  return 0;
}

void tok_regex_free(tok_regex *re) {
  if (re && re->code) pcre2_code_free(re->code);
  if (re) re->code = NULL;
}

void tok_match_ctx_free(tok_match_ctx *m) {
  if (m->md) pcre2_match_data_free(m->md);
  if (m->mctx) pcre2_match_context_free(m->mctx);
  if (m->jit_stack) pcre2_jit_stack_free(m->jit_stack);
  memset(m, 0, sizeof *m);
}

int tok_regex_next(const tok_regex *re, tok_match_ctx *m, const char *s, size_t n, size_t start,
                   size_t *ms, size_t *me) {
  if (!m->md) {
    m->md = pcre2_match_data_create(4, NULL);
    if (!m->md) return QV_ENOMEM;
  }
  for (int attempt = 0; attempt < 2; attempt++) {
    int rc = pcre2_match(re->code, (PCRE2_SPTR)s, n, start, PCRE2_NO_UTF_CHECK, m->md, m->mctx);
    if (rc == PCRE2_ERROR_NOMATCH) return 0;
    if (rc >= 0) {
      PCRE2_SIZE *ov = pcre2_get_ovector_pointer(m->md);
      *ms = ov[0];
      *me = ov[1];
      if (*me < *ms) *me = *ms; /* \K tricks can invert; treat as empty */
      return 1;
    }
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT && attempt == 0) {
      /* Long whitespace runs with look-ahead can exhaust the default 32 KiB JIT stack. */
      if (!m->mctx) m->mctx = pcre2_match_context_create(NULL);
      if (!m->jit_stack) m->jit_stack = pcre2_jit_stack_create(64 * 1024, 64 * 1024 * 1024, NULL);
      if (!m->mctx || !m->jit_stack) return QV_ENOMEM;
      pcre2_jit_stack_assign(m->mctx, NULL, m->jit_stack);
      continue;
    }
    return QV_ELIMIT;
  }
  return QV_ELIMIT;
}
