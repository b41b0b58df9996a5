/* JSON and JSON Schema -> grammar, and the tool-call grammars built on them.
 *
 * Output layout is fixed unless any_whitespace is set: ", " between items and ": " after keys
 * (as Python's json.dumps writes), no other whitespace; with any_whitespace up to 16
 * whitespace characters may appear between tokens (bounded, so a weak model cannot loop on
 * spaces). Object properties come in the schema's order; optional ones may be left out.
 *
 * Keywords are handled as follows. Supported: type (and lists of types), enum, const,
 * properties, required, additionalProperties (false, true or a schema; extra properties are
 * generated only for pure maps), items, prefixItems, minItems, maxItems, minLength, maxLength,
 * pattern, format (date, time, date-time, uuid, email, ipv4, uri), minimum/maximum and the
 * exclusive forms (integers exactly; numbers by integral bounds rounded inwards, so outputs
 * stay valid), anyOf, oneOf (branches are assumed disjoint), allOf of one schema or of object
 * schemas (merged), $ref to the same document ($defs, definitions, JSON pointers) including
 * recursion, nullable (OpenAPI). Annotations (title, description, default, examples, ...) are
 * ignored. Anything else that constrains values (not, if/then/else, uniqueItems, contains,
 * patternProperties, multipleOf, ...) is an error naming the keyword. Integers and numbers are
 * limited to 16 digits per part so a generation cannot run away on digits. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "constrain/cst_internal.h"

#define MAX_DIGITS 16

typedef struct ref_ent {
  char *ref;
  int32_t rule;
} ref_ent;

typedef struct jctx {
  cst_builder *b;
  const cJSON *doc;
  int any_ws;
  int depth;
  ref_ent *refs;
  int32_t n_refs, cap_refs;
  int32_t r_value, r_string, r_char, r_number, r_integer; /* lazily made rules, -1 none */
} jctx;

static int32_t J_FAIL(jctx *j, int code, const char *fmt, const char *arg) {
  return cst_fail(j->b, code, fmt, arg);
}

/* Optional whitespace between tokens (empty in compact mode). */
static int32_t ws(jctx *j) {
  if (!j->any_ws) return ex_empty(j->b);
  cst_bset s = {{0}};
  cst_bset_add(&s, ' ');
  cst_bset_add(&s, '\t');
  cst_bset_add(&s, '\n');
  cst_bset_add(&s, '\r');
  return ex_rep(j->b, ex_set(j->b, &s), 0, 16);
}

static int32_t tok(jctx *j, const char *compact, const char *punct) {
  /* compact: the token in compact mode (", "), punct: the bare punctuation (","). */
  if (!j->any_ws) return ex_str(j->b, compact);
  return ex_seq3(j->b, ws(j), ex_str(j->b, punct), ws(j));
}

static int32_t rule_of(jctx *j, int32_t *slot, int32_t (*make)(jctx *)) {
  if (*slot < 0) {
    int32_t r = cst_rule_new(j->b);
    if (r < 0) return -1;
    *slot = r;
    if (cst_rule_set(j->b, r, make(j))) return -1;
  }
  return ex_ref(j->b, *slot);
}

static int32_t digits(jctx *j, int lo_first, int min, int max) {
  /* one digit from [lo_first-9] then [0-9]{min,max} */
  cst_bset a = {{0}}, d = {{0}};
  cst_bset_range(&a, (unsigned)('0' + lo_first), '9');
  cst_bset_range(&d, '0', '9');
  return ex_seq2(j->b, ex_set(j->b, &a), ex_rep(j->b, ex_set(j->b, &d), min, max));
}

static int32_t digit_run(jctx *j, int min, int max) {
  cst_bset d = {{0}};
  cst_bset_range(&d, '0', '9');
  return ex_rep(j->b, ex_set(j->b, &d), min, max);
}

/* "0" | [1-9][0-9]{0,15} */
static int32_t uint_expr(jctx *j) { return ex_alt2(j->b, ex_byte(j->b, '0'), digits(j, 1, 0, MAX_DIGITS - 1)); }

static int32_t make_integer(jctx *j) {
  return ex_seq2(j->b, ex_rep(j->b, ex_byte(j->b, '-'), 0, 1), uint_expr(j));
}

static int32_t make_number(jctx *j) {
  cst_bset e = {{0}}, pm = {{0}};
  cst_bset_add(&e, 'e');
  cst_bset_add(&e, 'E');
  cst_bset_add(&pm, '+');
  cst_bset_add(&pm, '-');
  int32_t frac = ex_rep(j->b, ex_seq2(j->b, ex_byte(j->b, '.'), digit_run(j, 1, MAX_DIGITS)), 0, 1);
  int32_t exp = ex_rep(j->b, ex_seq3(j->b, ex_set(j->b, &e), ex_rep(j->b, ex_set(j->b, &pm), 0, 1), digit_run(j, 1, 2)), 0, 1);
  return ex_seq(j->b, (int32_t[]){ex_rep(j->b, ex_byte(j->b, '-'), 0, 1), uint_expr(j), frac, exp}, 4);
}

/* One character of a JSON string: unescaped (not '"', '\' or a control) or an escape. */
static int32_t make_char(jctx *j) {
  static const uint32_t bad[] = {0, 0x1F, '"', '"', '\\', '\\'};
  cst_bset esc = {{0}}, hex = {{0}};
  for (const char *p = "\"\\/bfnrt"; *p; p++) cst_bset_add(&esc, (unsigned char)*p);
  cst_bset_range(&hex, '0', '9');
  cst_bset_range(&hex, 'a', 'f');
  cst_bset_range(&hex, 'A', 'F');
  int32_t h = ex_set(j->b, &hex);
  int32_t u = ex_seq(j->b, (int32_t[]){ex_byte(j->b, 'u'), h, h, h, h}, 5);
  int32_t escape = ex_seq2(j->b, ex_byte(j->b, '\\'), ex_alt2(j->b, ex_set(j->b, &esc), u));
  return ex_alt2(j->b, ex_cps_not(j->b, bad, 3), escape);
}

static int32_t str_char(jctx *j) { return rule_of(j, &j->r_char, make_char); }

static int32_t make_string(jctx *j) {
  return ex_seq3(j->b, ex_byte(j->b, '"'), ex_rep(j->b, str_char(j), 0, -1), ex_byte(j->b, '"'));
}

static int32_t any_value(jctx *j);

static int32_t make_value(jctx *j) {
  cst_builder *b = j->b;
  int32_t v = ex_ref(b, j->r_value);
  int32_t s = rule_of(j, &j->r_string, make_string);
  int32_t kv = ex_seq3(b, s, tok(j, ": ", ":"), v);
  int32_t obj = ex_seq3(b, tok(j, "{", "{"),
                        ex_rep(b, ex_seq2(b, kv, ex_rep(b, ex_seq2(b, tok(j, ", ", ","), kv), 0, -1)), 0, 1),
                        tok(j, "}", "}"));
  int32_t arr = ex_seq3(b, tok(j, "[", "["),
                        ex_rep(b, ex_seq2(b, v, ex_rep(b, ex_seq2(b, tok(j, ", ", ","), v), 0, -1)), 0, 1),
                        tok(j, "]", "]"));
  int32_t alts[] = {obj, arr, s, rule_of(j, &j->r_number, make_number), ex_str(b, "true"), ex_str(b, "false"),
                    ex_str(b, "null")};
  return ex_alt(b, alts, 7);
}

static int32_t any_value(jctx *j) {
  if (j->r_value < 0) {
    j->r_value = cst_rule_new(j->b);
    if (j->r_value < 0) return -1;
    if (cst_rule_set(j->b, j->r_value, make_value(j))) return -1;
  }
  return ex_ref(j->b, j->r_value);
}

static void jctx_init(jctx *j, cst_builder *b, const cJSON *doc, int any_ws) {
  memset(j, 0, sizeof *j);
  j->b = b;
  j->doc = doc;
  j->any_ws = any_ws;
  j->r_value = j->r_string = j->r_char = j->r_number = j->r_integer = -1;
}

static void jctx_deinit(jctx *j) {
  for (int32_t i = 0; i < j->n_refs; i++) free(j->refs[i].ref);
  free(j->refs);
}

int cst_build_json_any(cst_builder *b, int object_only, int any_ws, int32_t *root) {
  jctx j;
  jctx_init(&j, b, NULL, any_ws);
  int32_t v = any_value(&j);
  if (object_only && v >= 0) {
    int32_t s = rule_of(&j, &j.r_string, make_string);
    int32_t kv = ex_seq3(b, s, tok(&j, ": ", ":"), v);
    v = ex_seq3(b, tok(&j, "{", "{"),
                ex_rep(b, ex_seq2(b, kv, ex_rep(b, ex_seq2(b, tok(&j, ", ", ","), kv), 0, -1)), 0, 1),
                tok(&j, "}", "}"));
  }
  *root = any_ws ? ex_seq3(b, ws(&j), v, ws(&j)) : v;
  jctx_deinit(&j);
  return b->failed;
}

/* ---- literals ---- */

/* A JSON value as a fixed literal in the output layout. */
static int32_t json_literal(jctx *j, const cJSON *v, int depth) {
  cst_builder *b = j->b;
  if (depth > QV_CST_MAX_DEPTH) return J_FAIL(j, QV_ELIMIT, "const/enum value nested too deeply%s", "");
  if (cJSON_IsArray(v) || cJSON_IsObject(v)) {
    int obj = cJSON_IsObject(v);
    int32_t n = cJSON_GetArraySize(v), k = 0;
    int32_t *xs = malloc((size_t)(3 * n + 2) * sizeof *xs);
    if (!xs) return cst_fail(b, QV_ENOMEM, "out of memory");
    xs[k++] = tok(j, obj ? "{" : "[", obj ? "{" : "[");
    const cJSON *it;
    int first = 1;
    cJSON_ArrayForEach(it, v) {
      if (!first) xs[k++] = tok(j, ", ", ",");
      first = 0;
      if (obj) {
        cJSON *key = cJSON_CreateString(it->string);
        char *ks = key ? cJSON_PrintUnformatted(key) : NULL;
        xs[k++] = ks ? ex_seq2(b, ex_str(b, ks), tok(j, ": ", ":")) : cst_fail(b, QV_ENOMEM, "out of memory");
        free(ks);
        cJSON_Delete(key);
      }
      xs[k++] = json_literal(j, it, depth + 1);
    }
    xs[k++] = tok(j, obj ? "}" : "]", obj ? "}" : "]");
    int32_t r = ex_seq(b, xs, k);
    free(xs);
    return r;
  }
  char *s = cJSON_PrintUnformatted(v);
  if (!s) return cst_fail(b, QV_ENOMEM, "out of memory");
  int32_t r = ex_str(b, s);
  free(s);
  return r;
}

/* ---- integer ranges ---- */

#define UNBOUNDED_HI INT64_MAX
#define UNBOUNDED_LO INT64_MIN

/* Digit strings of equal length n with values in [lo, hi] (leading zeros allowed). */
static int32_t fixed_range(jctx *j, const char *lo, const char *hi, int n) {
  cst_builder *b = j->b;
  if (n == 0) return ex_empty(b);
  cst_bset s = {{0}};
  if (n == 1) {
    cst_bset_range(&s, (unsigned char)lo[0], (unsigned char)hi[0]);
    return ex_set(b, &s);
  }
  if (lo[0] == hi[0]) return ex_seq2(b, ex_byte(b, (unsigned char)lo[0]), fixed_range(j, lo + 1, hi + 1, n - 1));
  /* Linear, not exponential: a side whose rest is all 0s (lo) or all 9s (hi) joins the
   * middle range, so only the partial sides recurse, each on one side only. */
  char nines[32], zeros[32];
  memset(nines, '9', sizeof nines);
  memset(zeros, '0', sizeof zeros);
  int lo_full = !memcmp(lo + 1, zeros, (size_t)(n - 1)), hi_full = !memcmp(hi + 1, nines, (size_t)(n - 1));
  int a = lo[0] + (lo_full ? 0 : 1), z = hi[0] - (hi_full ? 0 : 1);
  int32_t alts[3];
  int k = 0;
  if (!lo_full) alts[k++] = ex_seq2(b, ex_byte(b, (unsigned char)lo[0]), fixed_range(j, lo + 1, nines, n - 1));
  if (a <= z) {
    cst_bset_range(&s, (unsigned)a, (unsigned)z);
    alts[k++] = ex_seq2(b, ex_set(b, &s), digit_run(j, n - 1, n - 1));
  }
  if (!hi_full) alts[k++] = ex_seq2(b, ex_byte(b, (unsigned char)hi[0]), fixed_range(j, zeros, hi + 1, n - 1));
  return ex_alt(b, alts, k);
}

static int ndigits(int64_t v) {
  int n = 1;
  while (v >= 10) v /= 10, n++;
  return n;
}

/* Non-negative integers in [lo, hi] written without leading zeros; hi may be UNBOUNDED_HI. */
static int32_t uint_range(jctx *j, int64_t lo, int64_t hi) {
  cst_builder *b = j->b;
  int32_t alts[MAX_DIGITS + 2];
  int k = 0;
  int nlo = ndigits(lo), nhi = hi == UNBOUNDED_HI ? MAX_DIGITS : ndigits(hi);
  if (nhi > MAX_DIGITS) nhi = MAX_DIGITS;
  for (int n = nlo; n <= nhi; n++) {
    int64_t p = 1;
    for (int i = 1; i < n; i++) p *= 10;
    int64_t a = n == 1 ? 0 : p, z = p * 10 - 1;
    if (a < lo) a = lo;
    if (hi != UNBOUNDED_HI && z > hi) z = hi;
    if (a > z) continue;
    char sa[24], sz[24];
    snprintf(sa, sizeof sa, "%lld", (long long)a);
    snprintf(sz, sizeof sz, "%lld", (long long)z);
    alts[k++] = fixed_range(j, sa, sz, n);
  }
  if (k == 0) return ex_alt(b, NULL, 0);
  return ex_alt(b, alts, k);
}

/* Integers in [lo, hi] (either may be unbounded). */
static int32_t int_range(jctx *j, int64_t lo, int64_t hi) {
  cst_builder *b = j->b;
  int32_t alts[2];
  int k = 0;
  if (lo < 0) { /* negatives: "-" then k in [max(1,-hi), -lo] */
    int64_t klo = hi < 0 ? -hi : 1, khi = lo == UNBOUNDED_LO ? UNBOUNDED_HI : -lo;
    if (klo <= khi) alts[k++] = ex_seq2(b, ex_byte(b, '-'), uint_range(j, klo, khi));
  }
  if (hi >= 0) alts[k++] = uint_range(j, lo < 0 ? 0 : lo, hi);
  if (k == 0) return ex_alt(b, NULL, 0);
  return ex_alt(b, alts, k);
}

/* Reads minimum/maximum and the exclusive forms as an integer range rounded inwards. Returns
 * 1 when a bound exists. */
static int int_bounds(const cJSON *s, int64_t *lo, int64_t *hi) {
  *lo = UNBOUNDED_LO;
  *hi = UNBOUNDED_HI;
  int any = 0;
  const double lim = 1e15;
  const cJSON *x;
  if ((x = cJSON_GetObjectItemCaseSensitive(s, "minimum")) && cJSON_IsNumber(x)) {
    double v = ceil(x->valuedouble);
    if (v > -lim) *lo = (int64_t)(v < lim ? v : lim);
    any = 1;
  }
  if ((x = cJSON_GetObjectItemCaseSensitive(s, "exclusiveMinimum")) && cJSON_IsNumber(x)) {
    double v = floor(x->valuedouble) + 1;
    if (v > -lim && (int64_t)(v < lim ? v : lim) > *lo) *lo = (int64_t)(v < lim ? v : lim);
    any = 1;
  }
  if ((x = cJSON_GetObjectItemCaseSensitive(s, "maximum")) && cJSON_IsNumber(x)) {
    double v = floor(x->valuedouble);
    if (v < lim) *hi = (int64_t)(v > -lim ? v : -lim);
    any = 1;
  }
  if ((x = cJSON_GetObjectItemCaseSensitive(s, "exclusiveMaximum")) && cJSON_IsNumber(x)) {
    double v = ceil(x->valuedouble) - 1;
    if (v < lim && (int64_t)(v > -lim ? v : -lim) < *hi) *hi = (int64_t)(v > -lim ? v : -lim);
    any = 1;
  }
  return any;
}

static int32_t number_bounded(jctx *j, int64_t lo, int64_t hi) {
  cst_builder *b = j->b;
  /* integers in range, or I.fff with the whole open interval (I, I+1) inside the range */
  int32_t frac = ex_seq2(b, ex_byte(b, '.'), digit_run(j, 1, MAX_DIGITS));
  int32_t alts[3];
  int k = 0;
  alts[k++] = int_range(j, lo, hi);
  int64_t plo = lo < 0 ? 0 : lo, phi = hi == UNBOUNDED_HI ? UNBOUNDED_HI : hi - 1;
  if (hi > 0 && plo <= phi) alts[k++] = ex_seq2(b, uint_range(j, plo, phi), frac);
  if (lo < 0) { /* -K.fff in (-(K+1), -K): needs K+1 <= -lo and K >= max(0, -hi) */
    int64_t klo = hi < 0 ? -hi : 0, khi = lo == UNBOUNDED_LO ? UNBOUNDED_HI : -lo - 1;
    if (klo <= khi) alts[k++] = ex_seq3(b, ex_byte(b, '-'), uint_range(j, klo, khi), frac);
  }
  return ex_alt(b, alts, k);
}

/* ---- strings ---- */

static int32_t hexn(jctx *j, int n) {
  cst_bset hex = {{0}};
  cst_bset_range(&hex, '0', '9');
  cst_bset_range(&hex, 'a', 'f');
  cst_bset_range(&hex, 'A', 'F');
  return ex_rep(j->b, ex_set(j->b, &hex), n, n);
}

static int32_t fixed_digits(jctx *j, const char *lo, const char *hi) {
  return fixed_range(j, lo, hi, (int)strlen(lo));
}

static int32_t fmt_date(jctx *j) {
  cst_builder *b = j->b;
  int32_t year = digit_run(j, 4, 4);
  int32_t month = fixed_digits(j, "01", "12");
  int32_t day = ex_alt2(b, fixed_digits(j, "01", "28"), ex_alt2(b, ex_str(b, "29"), ex_str(b, "30")));
  /* Days 29/30 are valid in every month but February; keep February to 28 for simplicity. */
  int32_t not_feb = ex_alt2(b, ex_str(b, "01"), fixed_digits(j, "03", "12"));
  int32_t md = ex_alt(b, (int32_t[]){ex_seq3(b, ex_str(b, "02"), ex_byte(b, '-'), fixed_digits(j, "01", "28")),
                                     ex_seq3(b, not_feb, ex_byte(b, '-'), day),
                                     ex_seq2(b, ex_alt(b, (int32_t[]){ex_str(b, "01"), ex_str(b, "03"), ex_str(b, "05"), ex_str(b, "07"), ex_str(b, "08"), ex_str(b, "10"), ex_str(b, "12")}, 7), ex_str(b, "-31"))},
                     3);
  (void)month;
  return ex_seq3(b, year, ex_byte(b, '-'), md);
}

static int32_t fmt_time(jctx *j) {
  cst_builder *b = j->b;
  int32_t hh = fixed_digits(j, "00", "23"), mm = fixed_digits(j, "00", "59");
  int32_t frac = ex_rep(b, ex_seq2(b, ex_byte(b, '.'), digit_run(j, 1, 6)), 0, 1);
  cst_bset pm = {{0}};
  cst_bset_add(&pm, '+');
  cst_bset_add(&pm, '-');
  int32_t off = ex_alt2(b, ex_byte(b, 'Z'), ex_seq(b, (int32_t[]){ex_set(b, &pm), fixed_digits(j, "00", "23"), ex_byte(b, ':'), fixed_digits(j, "00", "59")}, 4));
  return ex_seq(b, (int32_t[]){hh, ex_byte(b, ':'), mm, ex_byte(b, ':'), fixed_digits(j, "00", "59"), frac, off}, 7);
}

static int32_t fmt_ipv4(jctx *j) {
  cst_builder *b = j->b;
  int32_t oct = uint_range(j, 0, 255);
  int32_t dot = ex_byte(b, '.');
  return ex_seq(b, (int32_t[]){oct, dot, oct, dot, oct, dot, oct}, 7);
}

static int32_t fmt_email(jctx *j) {
  cst_builder *b = j->b;
  cst_bset l = {{0}}, d = {{0}};
  cst_bset_range(&l, 'a', 'z');
  cst_bset_range(&l, 'A', 'Z');
  cst_bset_range(&l, '0', '9');
  d = l;
  for (const char *p = "._%+-"; *p; p++) cst_bset_add(&l, (unsigned char)*p);
  cst_bset_add(&d, '-');
  cst_bset alpha = {{0}}; /* the top-level domain: letters of either case, like the labels */
  cst_bset_range(&alpha, 'a', 'z');
  cst_bset_range(&alpha, 'A', 'Z');
  int32_t label = ex_rep(b, ex_set(b, &d), 1, 32);
  return ex_seq(b, (int32_t[]){ex_rep(b, ex_set(b, &l), 1, 32), ex_byte(b, '@'), label,
                               ex_rep(b, ex_seq2(b, ex_byte(b, '.'), label), 0, 3), ex_byte(b, '.'),
                               ex_rep(b, ex_set(b, &alpha), 2, 8)}, 6);
}

static int32_t fmt_uri(jctx *j) {
  cst_builder *b = j->b;
  cst_bset sch = {{0}}, rest = {{0}};
  cst_bset_range(&sch, 'a', 'z');
  cst_bset_range(&rest, 'a', 'z');
  cst_bset_range(&rest, 'A', 'Z');
  cst_bset_range(&rest, '0', '9');
  for (const char *p = "-._~:/?#[]@!$&'()*+,;=%"; *p; p++) cst_bset_add(&rest, (unsigned char)*p);
  return ex_seq3(b, ex_rep(b, ex_set(b, &sch), 1, 10), ex_str(b, "://"), ex_rep(b, ex_set(b, &rest), 1, 256));
}

static int32_t string_format(jctx *j, const char *f) {
  cst_builder *b = j->b;
  int32_t body;
  if (!strcmp(f, "date")) body = fmt_date(j);
  else if (!strcmp(f, "time")) body = fmt_time(j);
  else if (!strcmp(f, "date-time")) body = ex_seq3(b, fmt_date(j), ex_byte(b, 'T'), fmt_time(j));
  else if (!strcmp(f, "uuid"))
    body = ex_seq(b, (int32_t[]){hexn(j, 8), ex_byte(b, '-'), hexn(j, 4), ex_byte(b, '-'), hexn(j, 4),
                                 ex_byte(b, '-'), hexn(j, 4), ex_byte(b, '-'), hexn(j, 12)}, 9);
  else if (!strcmp(f, "email")) body = fmt_email(j);
  else if (!strcmp(f, "ipv4")) body = fmt_ipv4(j);
  else if (!strcmp(f, "uri")) body = fmt_uri(j);
  else return J_FAIL(j, QV_EUNSUPPORTED, "JSON Schema string format '%.64s' is not supported", f);
  return ex_seq3(b, ex_byte(b, '"'), body, ex_byte(b, '"'));
}

int32_t cst_regex_expr(cst_builder *b, const char *pat, size_t len, int json_string, int search);

static int get_count(jctx *j, const cJSON *s, const char *key, int32_t *out) {
  const cJSON *x = cJSON_GetObjectItemCaseSensitive(s, key);
  if (!x) return 0;
  if (!cJSON_IsNumber(x) || x->valuedouble < 0 || x->valuedouble != floor(x->valuedouble))
    return J_FAIL(j, QV_EINVAL, "JSON Schema '%s' must be a non-negative integer", key);
  if (x->valuedouble > QV_CST_MAX_REPEAT)
    return cst_fail(j->b, QV_ELIMIT, "JSON Schema '%s' over %d is not supported", key, QV_CST_MAX_REPEAT);
  *out = (int32_t)x->valuedouble;
  return 1;
}

static int32_t string_schema(jctx *j, const cJSON *s) {
  cst_builder *b = j->b;
  int32_t mn = 0, mx = -1;
  int has_min = get_count(j, s, "minLength", &mn), has_max = get_count(j, s, "maxLength", &mx);
  if (has_min < 0 || has_max < 0) return -1;
  const cJSON *pat = cJSON_GetObjectItemCaseSensitive(s, "pattern");
  const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(s, "format");
  if (pat) {
    if (!cJSON_IsString(pat)) return J_FAIL(j, QV_EINVAL, "JSON Schema 'pattern' must be a string%s", "");
    if (has_min || has_max)
      return J_FAIL(j, QV_EUNSUPPORTED, "JSON Schema 'pattern' together with minLength/maxLength is not supported%s", "");
    int32_t body = cst_regex_expr(b, pat->valuestring, strlen(pat->valuestring), 1, 1);
    return ex_seq3(b, ex_byte(b, '"'), body, ex_byte(b, '"'));
  }
  if (fmt && cJSON_IsString(fmt)) {
    if (has_min || has_max)
      return J_FAIL(j, QV_EUNSUPPORTED, "JSON Schema 'format' together with minLength/maxLength is not supported%s", "");
    return string_format(j, fmt->valuestring);
  }
  if (has_max && mx < mn) return J_FAIL(j, QV_EINVAL, "JSON Schema maxLength is below minLength%s", "");
  if (!has_min && !has_max) return rule_of(j, &j->r_string, make_string);
  return ex_seq3(b, ex_byte(b, '"'), ex_rep(b, str_char(j), mn, has_max ? mx : -1), ex_byte(b, '"'));
}

/* ---- schemas ---- */

static int32_t schema(jctx *j, const cJSON *s);

static const cJSON *resolve_ref(jctx *j, const char *ref) {
  if (ref[0] != '#') return NULL;
  const cJSON *cur = j->doc;
  const char *p = ref + 1;
  while (*p == '/') {
    p++;
    char seg[256];
    size_t n = 0;
    while (*p && *p != '/' && n + 1 < sizeof seg) {
      if (p[0] == '~' && p[1] == '1') seg[n++] = '/', p += 2;
      else if (p[0] == '~' && p[1] == '0') seg[n++] = '~', p += 2;
      else seg[n++] = *p++;
    }
    seg[n] = 0;
    if (cJSON_IsArray(cur)) {
      char *end;
      long idx = strtol(seg, &end, 10);
      cur = *end ? NULL : cJSON_GetArrayItem(cur, (int)idx);
    } else {
      cur = cJSON_GetObjectItemCaseSensitive(cur, seg);
    }
    if (!cur) return NULL;
  }
  return *p ? NULL : cur;
}

static int32_t ref_schema(jctx *j, const char *ref) {
  for (int32_t i = 0; i < j->n_refs; i++)
    if (!strcmp(j->refs[i].ref, ref)) return ex_ref(j->b, j->refs[i].rule);
  const cJSON *target = resolve_ref(j, ref);
  if (!target) return J_FAIL(j, QV_EUNSUPPORTED, "JSON Schema $ref '%.128s' cannot be resolved (only local refs are supported)", ref);
  if (j->n_refs >= 4096) return J_FAIL(j, QV_ELIMIT, "too many $ref targets%s", "");
  if (j->n_refs == j->cap_refs) {
    int32_t cap = j->cap_refs ? j->cap_refs * 2 : 16;
    ref_ent *r = realloc(j->refs, (size_t)cap * sizeof *r);
    if (!r) return cst_fail(j->b, QV_ENOMEM, "out of memory");
    j->refs = r;
    j->cap_refs = cap;
  }
  int32_t rule = cst_rule_new(j->b);
  char *copy = strdup(ref);
  if (rule < 0 || !copy) {
    free(copy);
    return cst_fail(j->b, QV_ENOMEM, "out of memory");
  }
  j->refs[j->n_refs].ref = copy;
  j->refs[j->n_refs].rule = rule;
  j->n_refs++;
  if (cst_rule_set(j->b, rule, schema(j, target))) return -1;
  return ex_ref(j->b, rule);
}

/* Properties of an object schema: (name, schema, required) in schema order. */
typedef struct prop {
  const char *name;
  const cJSON *schema;
  int required;
} prop;

static int is_required(const cJSON *req, const char *name) {
  const cJSON *r;
  cJSON_ArrayForEach(r, req) if (cJSON_IsString(r) && !strcmp(r->valuestring, name)) return 1;
  return 0;
}

/* seq(i, first): properties i.. of the object, "first" meaning no comma is needed yet;
 * memoised as rules so optional properties stay linear. */
static int32_t props_seq(jctx *j, const prop *ps, int32_t n, int32_t i, int first, int32_t *memo, const int32_t *kv) {
  cst_builder *b = j->b;
  if (i == n) return ex_empty(b);
  int32_t *slot = &memo[2 * i + first];
  if (*slot >= 0) return ex_ref(b, *slot);
  int32_t r = cst_rule_new(b);
  if (r < 0) return -1;
  *slot = r;
  int32_t with = ex_seq3(b, first ? ex_empty(b) : tok(j, ", ", ","), ex_ref(b, kv[i]), props_seq(j, ps, n, i + 1, 0, memo, kv));
  int32_t body = ps[i].required ? with : ex_alt2(b, with, props_seq(j, ps, n, i + 1, first, memo, kv));
  if (cst_rule_set(b, r, body)) return -1;
  return ex_ref(b, r);
}

static int32_t key_literal(jctx *j, const char *name) {
  cJSON *k = cJSON_CreateString(name);
  char *s = k ? cJSON_PrintUnformatted(k) : NULL;
  cJSON_Delete(k);
  if (!s) return cst_fail(j->b, QV_ENOMEM, "out of memory");
  int32_t r = ex_str(j->b, s);
  free(s);
  return r;
}

static int32_t object_schema(jctx *j, const cJSON *props, const cJSON *req, const cJSON *addl, const cJSON *s) {
  cst_builder *b = j->b;
  int32_t n = props ? cJSON_GetArraySize(props) : 0;
  int32_t mnp = 0, mxp = -1;
  int has_mn = get_count(j, s, "minProperties", &mnp), has_mx = get_count(j, s, "maxProperties", &mxp);
  if (has_mn < 0 || has_mx < 0) return -1;
  if (n == 0 && addl && !cJSON_IsFalse(addl)) { /* a map: string keys, values per additionalProperties */
    int32_t v = cJSON_IsTrue(addl) ? any_value(j) : schema(j, addl);
    int32_t kv = ex_seq3(b, rule_of(j, &j->r_string, make_string), tok(j, ": ", ":"), v);
    int32_t more = ex_rep(b, ex_seq2(b, tok(j, ", ", ","), kv), mnp > 0 ? mnp - 1 : 0, has_mx ? (mxp > 0 ? mxp - 1 : 0) : -1);
    int32_t items = ex_seq2(b, kv, more);
    if (has_mx && mxp == 0) items = ex_empty(b);
    else if (mnp == 0) items = ex_rep(b, items, 0, 1);
    return ex_seq3(b, tok(j, "{", "{"), items, tok(j, "}", "}"));
  }
  if (has_mn || has_mx) {
    int32_t n_req = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, props) n_req += is_required(req, it->string);
    if ((has_mn && mnp > n_req) || (has_mx && mxp < n))
      return J_FAIL(j, QV_EUNSUPPORTED, "JSON Schema 'minProperties'/'maxProperties' on an object with properties is not supported%s", "");
  }
  const cJSON *r;
  cJSON_ArrayForEach(r, req) {
    if (!cJSON_IsString(r)) return J_FAIL(j, QV_EINVAL, "JSON Schema 'required' must list strings%s", "");
    if (!props || !cJSON_GetObjectItemCaseSensitive(props, r->valuestring))
      return J_FAIL(j, QV_EUNSUPPORTED, "JSON Schema: required property '%.64s' has no schema in 'properties'", r->valuestring);
  }
  if (n > 1024) return J_FAIL(j, QV_ELIMIT, "more than 1024 properties in one object%s", "");
  prop *ps = calloc((size_t)(n ? n : 1), sizeof *ps);
  int32_t *memo = malloc((size_t)(2 * n + 2) * sizeof *memo);
  int32_t *kv = malloc((size_t)(n ? n : 1) * sizeof *kv);
  if (!ps || !memo || !kv) {
    free(ps);
    free(memo);
    free(kv);
    return cst_fail(b, QV_ENOMEM, "out of memory");
  }
  int32_t i = 0;
  const cJSON *p;
  cJSON_ArrayForEach(p, props) {
    ps[i].name = p->string;
    ps[i].schema = p;
    ps[i].required = is_required(req, p->string);
    memo[2 * i] = memo[2 * i + 1] = -1;
    /* each key: value pair as a rule of its own */
    kv[i] = cst_rule_new(b);
    if (kv[i] >= 0) cst_rule_set(b, kv[i], ex_seq3(b, key_literal(j, p->string), tok(j, ": ", ":"), schema(j, p)));
    i++;
  }
  int32_t body = b->failed ? -1 : props_seq(j, ps, n, 0, 1, memo, kv);
  int32_t out = ex_seq3(b, tok(j, "{", "{"), body, tok(j, "}", "}"));
  free(ps);
  free(memo);
  free(kv);
  return out;
}

static int32_t array_schema(jctx *j, const cJSON *s) {
  cst_builder *b = j->b;
  int32_t mn = 0, mx = -1;
  int has_mn = get_count(j, s, "minItems", &mn), has_mx = get_count(j, s, "maxItems", &mx);
  if (has_mn < 0 || has_mx < 0) return -1;
  if (has_mx && mx < mn) return J_FAIL(j, QV_EINVAL, "JSON Schema maxItems is below minItems%s", "");
  const cJSON *pre = cJSON_GetObjectItemCaseSensitive(s, "prefixItems");
  const cJSON *items = cJSON_GetObjectItemCaseSensitive(s, "items");
  if (pre && !cJSON_IsArray(pre)) return J_FAIL(j, QV_EINVAL, "JSON Schema 'prefixItems' must be an array%s", "");
  if (cJSON_IsArray(items)) pre = items, items = NULL; /* draft 4-7 tuple form */
  int32_t npre = pre ? cJSON_GetArraySize(pre) : 0;
  if (npre > 256) return J_FAIL(j, QV_ELIMIT, "more than 256 prefixItems%s", "");
  if (has_mx && mx < npre) return J_FAIL(j, QV_EUNSUPPORTED, "JSON Schema maxItems below the number of prefixItems%s", "");
  int32_t n = 0, *xs = malloc((size_t)(2 * npre + 4) * sizeof *xs);
  if (!xs) return cst_fail(b, QV_ENOMEM, "out of memory");
  xs[n++] = tok(j, "[", "[");
  const cJSON *it;
  int32_t k = 0;
  cJSON_ArrayForEach(it, pre) {
    if (k++) xs[n++] = tok(j, ", ", ",");
    xs[n++] = schema(j, it);
  }
  int more_allowed = !(items && cJSON_IsFalse(items)) && !(pre && !items);
  if (more_allowed) {
    int32_t item = items && !cJSON_IsTrue(items) ? schema(j, items) : any_value(j);
    int32_t lo = mn > npre ? mn - npre : 0, hi = has_mx ? mx - npre : -1;
    if (item >= 0 && item != -1) {
      int32_t ir = cst_rule_new(b);
      if (ir >= 0) cst_rule_set(b, ir, item);
      item = ex_ref(b, ir);
    }
    if (npre > 0) {
      xs[n++] = ex_rep(b, ex_seq2(b, tok(j, ", ", ","), item), lo, hi);
    } else if (hi != 0) {
      int32_t rest = ex_rep(b, ex_seq2(b, tok(j, ", ", ","), item), lo > 0 ? lo - 1 : 0, hi > 0 ? hi - 1 : -1);
      int32_t seq = ex_seq2(b, item, rest);
      xs[n++] = lo > 0 ? seq : ex_rep(b, seq, 0, 1);
    }
  } else if (mn > npre) {
    free(xs);
    return J_FAIL(j, QV_EUNSUPPORTED, "JSON Schema minItems above the number of allowed items%s", "");
  }
  xs[n++] = tok(j, "]", "]");
  int32_t r = ex_seq(b, xs, n);
  free(xs);
  return r;
}

static const char *const unsupported_kw[] = {
    "not", "if", "then", "else", "dependentSchemas", "dependentRequired", "dependencies",
    "uniqueItems", "contains", "minContains", "maxContains", "patternProperties", "propertyNames",
    "unevaluatedProperties", "unevaluatedItems", "multipleOf", "$dynamicRef", "$recursiveRef",
    "contentSchema", NULL};

static int check_keywords(jctx *j, const cJSON *s) {
  for (int i = 0; unsupported_kw[i]; i++) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(s, unsupported_kw[i]);
    if (!x) continue;
    if (!strcmp(unsupported_kw[i], "uniqueItems") && cJSON_IsFalse(x)) continue;
    if (!strcmp(unsupported_kw[i], "multipleOf") && cJSON_IsNumber(x) && x->valuedouble == 1) continue;
    return J_FAIL(j, QV_EUNSUPPORTED, "JSON Schema keyword '%s' is not supported", unsupported_kw[i]);
  }
  return 0;
}

static int32_t typed(jctx *j, const cJSON *s, const char *type) {
  cst_builder *b = j->b;
  if (!strcmp(type, "null")) return ex_str(b, "null");
  if (!strcmp(type, "boolean")) return ex_alt2(b, ex_str(b, "true"), ex_str(b, "false"));
  if (!strcmp(type, "string")) return string_schema(j, s);
  if (!strcmp(type, "integer")) {
    int64_t lo, hi;
    if (int_bounds(s, &lo, &hi)) {
      if (lo > hi) return J_FAIL(j, QV_EINVAL, "JSON Schema integer range is empty%s", "");
      return int_range(j, lo, hi);
    }
    return rule_of(j, &j->r_integer, make_integer);
  }
  if (!strcmp(type, "number")) {
    int64_t lo, hi;
    if (int_bounds(s, &lo, &hi)) {
      if (lo > hi) return J_FAIL(j, QV_EUNSUPPORTED, "JSON Schema number range has no integral bounds inside it%s", "");
      return number_bounded(j, lo, hi);
    }
    return rule_of(j, &j->r_number, make_number);
  }
  if (!strcmp(type, "object"))
    return object_schema(j, cJSON_GetObjectItemCaseSensitive(s, "properties"),
                         cJSON_GetObjectItemCaseSensitive(s, "required"),
                         cJSON_GetObjectItemCaseSensitive(s, "additionalProperties"), s);
  if (!strcmp(type, "array")) return array_schema(j, s);
  return J_FAIL(j, QV_EINVAL, "JSON Schema type '%.32s' is not a JSON type", type);
}

/* allOf of object schemas (or refs to them): merged properties and required. */
static int32_t all_of(jctx *j, const cJSON *s, const cJSON *all) {
  int32_t n = cJSON_GetArraySize(all);
  if (!cJSON_IsArray(all) || n == 0) return J_FAIL(j, QV_EINVAL, "JSON Schema 'allOf' must be a non-empty array%s", "");
  if (n == 1 && !cJSON_GetObjectItemCaseSensitive(s, "properties")) return schema(j, cJSON_GetArrayItem(all, 0));
  cJSON *props = cJSON_CreateObject(), *req = cJSON_CreateArray();
  if (!props || !req) {
    cJSON_Delete(props);
    cJSON_Delete(req);
    return cst_fail(j->b, QV_ENOMEM, "out of memory");
  }
  const cJSON *parts[65];
  int32_t np = 0;
  parts[np++] = s;
  const cJSON *it;
  cJSON_ArrayForEach(it, all) {
    if (np >= 65) break;
    const cJSON *t = it;
    for (int hop = 0; hop < 8 && cJSON_IsObject(t) && cJSON_IsString(cJSON_GetObjectItemCaseSensitive(t, "$ref")); hop++)
      t = resolve_ref(j, cJSON_GetObjectItemCaseSensitive(t, "$ref")->valuestring);
    parts[np++] = t;
  }
  int ok = 1;
  for (int32_t i = 0; i < np && ok; i++) {
    const cJSON *t = parts[i];
    if (!cJSON_IsObject(t)) { ok = 0; break; }
    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(t, "type");
    if (ty && !(cJSON_IsString(ty) && !strcmp(ty->valuestring, "object"))) ok = 0;
    if (cJSON_GetObjectItemCaseSensitive(t, "anyOf") || cJSON_GetObjectItemCaseSensitive(t, "oneOf") ||
        (i > 0 && cJSON_GetObjectItemCaseSensitive(t, "allOf")))
      ok = 0;
    const cJSON *p;
    cJSON_ArrayForEach(p, cJSON_GetObjectItemCaseSensitive(t, "properties")) {
      if (cJSON_GetObjectItemCaseSensitive(props, p->string)) { ok = 0; break; }
      cJSON_AddItemReferenceToObject(props, p->string, (cJSON *)p);
    }
    cJSON_ArrayForEach(p, cJSON_GetObjectItemCaseSensitive(t, "required"))
      cJSON_AddItemReferenceToArray(req, (cJSON *)p);
  }
  int32_t r = ok ? object_schema(j, props, req, NULL, s)
                 : J_FAIL(j, QV_EUNSUPPORTED, "JSON Schema 'allOf' is supported only for one schema or object schemas with distinct properties%s", "");
  cJSON_Delete(props);
  cJSON_Delete(req);
  return r;
}

static int32_t schema(jctx *j, const cJSON *s) {
  cst_builder *b = j->b;
  if (b->failed || cst_check_time(b)) return -1;
  if (cJSON_IsTrue(s)) return any_value(j);
  if (cJSON_IsFalse(s)) return J_FAIL(j, QV_EUNSUPPORTED, "JSON Schema 'false' (no value is valid) cannot be generated%s", "");
  if (!cJSON_IsObject(s)) return J_FAIL(j, QV_EINVAL, "a JSON Schema must be an object or a boolean%s", "");
  if (++j->depth > QV_CST_MAX_DEPTH) return cst_fail(b, QV_ELIMIT, "JSON Schema nested deeper than %d", QV_CST_MAX_DEPTH);
  int32_t out = -1;
  if (check_keywords(j, s)) goto done;
  const cJSON *x;
  int nullable = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(s, "nullable"));
  if ((x = cJSON_GetObjectItemCaseSensitive(s, "$ref"))) {
    if (!cJSON_IsString(x)) {
      J_FAIL(j, QV_EINVAL, "JSON Schema '$ref' must be a string%s", "");
      goto done;
    }
    out = ref_schema(j, x->valuestring);
  } else if ((x = cJSON_GetObjectItemCaseSensitive(s, "const"))) {
    out = json_literal(j, x, 0);
  } else if ((x = cJSON_GetObjectItemCaseSensitive(s, "enum"))) {
    int32_t n = cJSON_GetArraySize(x);
    if (!cJSON_IsArray(x) || n == 0) {
      J_FAIL(j, QV_EINVAL, "JSON Schema 'enum' must be a non-empty array%s", "");
      goto done;
    }
    if (n > QV_CST_MAX_ENUM) {
      cst_fail(b, QV_ELIMIT, "JSON Schema 'enum' with more than %d values", QV_CST_MAX_ENUM);
      goto done;
    }
    int32_t *xs = malloc((size_t)n * sizeof *xs), k = 0;
    if (!xs) {
      cst_fail(b, QV_ENOMEM, "out of memory");
      goto done;
    }
    const cJSON *it;
    cJSON_ArrayForEach(it, x) xs[k++] = json_literal(j, it, 0);
    out = ex_alt(b, xs, k);
    free(xs);
  } else if ((x = cJSON_GetObjectItemCaseSensitive(s, "anyOf")) || (x = cJSON_GetObjectItemCaseSensitive(s, "oneOf"))) {
    int32_t n = cJSON_GetArraySize(x);
    if (!cJSON_IsArray(x) || n == 0 || n > 256) {
      J_FAIL(j, QV_EINVAL, "JSON Schema 'anyOf'/'oneOf' must be an array of 1 to 256 schemas%s", "");
      goto done;
    }
    if (cJSON_GetObjectItemCaseSensitive(s, "properties") || cJSON_GetObjectItemCaseSensitive(s, "items") ||
        (cJSON_GetObjectItemCaseSensitive(s, "anyOf") && cJSON_GetObjectItemCaseSensitive(s, "oneOf"))) {
      J_FAIL(j, QV_EUNSUPPORTED, "JSON Schema 'anyOf'/'oneOf' next to properties/items or each other is not supported%s", "");
      goto done;
    }
    int32_t xs[256], k = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, x) xs[k++] = schema(j, it);
    out = ex_alt(b, xs, k);
  } else if ((x = cJSON_GetObjectItemCaseSensitive(s, "allOf"))) {
    out = all_of(j, s, x);
  } else if ((x = cJSON_GetObjectItemCaseSensitive(s, "type"))) {
    if (cJSON_IsString(x)) {
      out = typed(j, s, x->valuestring);
    } else if (cJSON_IsArray(x) && cJSON_GetArraySize(x) > 0 && cJSON_GetArraySize(x) <= 7) {
      int32_t xs[7], k = 0;
      const cJSON *it;
      cJSON_ArrayForEach(it, x) {
        if (!cJSON_IsString(it)) {
          J_FAIL(j, QV_EINVAL, "JSON Schema 'type' must be a string or a list of strings%s", "");
          goto done;
        }
        xs[k++] = typed(j, s, it->valuestring);
      }
      out = ex_alt(b, xs, k);
    } else {
      J_FAIL(j, QV_EINVAL, "JSON Schema 'type' must be a string or a list of strings%s", "");
    }
  } else if (cJSON_GetObjectItemCaseSensitive(s, "properties") || cJSON_GetObjectItemCaseSensitive(s, "additionalProperties")) {
    out = typed(j, s, "object");
  } else if (cJSON_GetObjectItemCaseSensitive(s, "items") || cJSON_GetObjectItemCaseSensitive(s, "prefixItems")) {
    out = typed(j, s, "array");
  } else {
    out = any_value(j);
  }
  if (nullable && out >= 0) out = ex_alt2(b, out, ex_str(b, "null"));
done:
  j->depth--;
  return b->failed ? -1 : out;
}

static int parse_doc(cst_builder *b, const char *text, size_t len, cJSON **doc) {
  *doc = cJSON_ParseWithLength(text, len);
  if (!*doc) return cst_fail(b, QV_EINVAL, "the JSON schema is not valid JSON");
  return 0;
}

int cst_build_json_schema(cst_builder *b, const char *text, size_t len, int any_ws, int32_t *root) {
  cJSON *doc;
  if (parse_doc(b, text, len, &doc)) return b->failed;
  jctx j;
  jctx_init(&j, b, doc, any_ws);
  int32_t x = schema(&j, doc);
  *root = any_ws ? ex_seq3(b, ws(&j), x, ws(&j)) : x;
  jctx_deinit(&j);
  cJSON_Delete(doc);
  return b->failed;
}

/* ---- tool calls ---- */

int cst_build_tool_call(cst_builder *b, const char *tools_json, size_t len, const char *name,
                        const char *format, int32_t max_calls, int32_t *root) {
  cJSON *tools;
  if (parse_doc(b, tools_json, len, &tools)) return b->failed;
  int hermes = !format || !strcmp(format, "hermes"), llama3 = format && !strcmp(format, "llama3"),
      mistral = format && !strcmp(format, "mistral");
  if (!hermes && !llama3 && !mistral) {
    cJSON_Delete(tools);
    return cst_fail(b, QV_EUNSUPPORTED, "tool-call format '%.32s' cannot be enforced", format);
  }
  jctx j;
  jctx_init(&j, b, NULL, 0);
  int32_t alts[256], k = 0;
  const cJSON *t;
  cJSON_ArrayForEach(t, tools) {
    const cJSON *fn = cJSON_GetObjectItemCaseSensitive(t, "function");
    const cJSON *fname = cJSON_GetObjectItemCaseSensitive(fn, "name");
    if (!cJSON_IsString(fname)) continue;
    if (name && strcmp(name, fname->valuestring)) continue;
    if (k >= 256) {
      cst_fail(b, QV_ELIMIT, "more than 256 tools");
      break;
    }
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(fn, "parameters");
    j.doc = params; /* refs inside a tool's parameters resolve against them */
    for (int32_t i = 0; i < j.n_refs; i++) free(j.refs[i].ref);
    j.n_refs = 0;
    int32_t args = params ? schema(&j, params) : ex_str(b, "{}");
    char head[400];
    cJSON *nm = cJSON_CreateString(fname->valuestring);
    char *nms = nm ? cJSON_PrintUnformatted(nm) : NULL;
    cJSON_Delete(nm);
    if (!nms || strlen(nms) > 300) {
      free(nms);
      cst_fail(b, QV_EINVAL, "tool name too long");
      break;
    }
    snprintf(head, sizeof head, "{\"name\": %s, \"%s\": ", nms, llama3 ? "parameters" : "arguments");
    free(nms);
    alts[k++] = ex_seq3(b, ex_str(b, head), args, ex_byte(b, '}'));
  }
  if (!b->failed && k == 0)
    cst_fail(b, QV_EINVAL, name ? "tool_choice names a function that is not in tools" : "no tools to call");
  int32_t call = b->failed ? -1 : ex_alt(b, alts, k);
  /* Parallel calls (max_calls > 1): more blocks after a newline (hermes, as Qwen's template
   * renders them) or more array elements (mistral); llama3's format holds one call. */
  if (max_calls < 1 || max_calls > QV_CST_MAX_TOOL_CALLS) max_calls = max_calls < 1 ? 1 : QV_CST_MAX_TOOL_CALLS;
  if (hermes) {
    int32_t block = ex_seq3(b, ex_str(b, "<tool_call>\n"), call, ex_str(b, "\n</tool_call>"));
    *root = ex_seq2(b, block, ex_rep(b, ex_seq2(b, ex_byte(b, '\n'), block), 0, max_calls - 1));
  } else if (llama3) {
    *root = call;
  } else {
    int32_t more = ex_rep(b, ex_seq2(b, ex_str(b, ", "), call), 0, max_calls - 1);
    *root = ex_seq(b, (int32_t[]){ex_str(b, "[TOOL_CALLS]["), call, more, ex_byte(b, ']')}, 4);
  }
  jctx_deinit(&j);
  cJSON_Delete(tools);
  return b->failed;
}
