/* Stop-string matcher (src/engine/stop_text.c): matches across pieces, the earliest of several
 * stops wins, include_stop_str, min_tokens-style unchecked appends, and the streamed hold-back
 * (never emits a prefix of a stop, releases it once it cannot match). Compared against a
 * brute-force reference on random piece splits. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "engine/stop_text.h"

/* Feeds text in pieces; returns the matched stop (or -1) and fills streamed/final text. */
static int feed(const char *text, const size_t *cuts, int n_cuts, char *const *stops, int n_stop, int include,
                char *streamed, char *final) {
  stop_text st;
  stop_text_init(&st);
  size_t maxl = 0, slen = 0;
  for (int i = 0; i < n_stop; i++) maxl = strlen(stops[i]) > maxl ? strlen(stops[i]) : maxl;
  int m = -1;
  size_t prev = 0;
  for (int c = 0; c <= n_cuts && m < 0; c++) {
    size_t end = c < n_cuts ? cuts[c] : strlen(text);
    m = stop_text_append(&st, text + prev, end - prev, stops, n_stop, maxl, include, 1);
    prev = end;
    size_t safe = stop_text_safe_end(&st, stops, n_stop, m >= 0 || c == n_cuts);
    cr_assert_geq(safe, st.emitted);
    memcpy(streamed + slen, st.buf + st.emitted, safe - st.emitted);
    slen += safe - st.emitted;
    st.emitted = safe;
    /* what was streamed never contains a stop string */
    streamed[slen] = 0;
    for (int i = 0; i < n_stop && !include; i++) cr_assert_null(strstr(streamed, stops[i]), "streamed '%s'", streamed);
  }
  strcpy(final, st.buf ? st.buf : "");
  cr_assert_str_eq(streamed, final);
  stop_text_deinit(&st);
  return m;
}

Test(stop_text, spans_pieces_and_earliest_wins) {
  char *stops[] = {"lazy dog", "fox j", "zzz"};
  size_t cuts[] = {3, 12, 17, 18, 25};
  char streamed[256], final[256];
  int m = feed("the quick brown fox jumps over the lazy dog", cuts, 5, stops, 3, 0, streamed, final);
  cr_assert_eq(m, 1);
  cr_assert_str_eq(final, "the quick brown ");
  m = feed("the quick brown fox jumps over the lazy dog", cuts, 5, stops, 3, 1, streamed, final);
  cr_assert_eq(m, 1);
  cr_assert_str_eq(final, "the quick brown fox j");
}

Test(stop_text, holdback_released_when_no_match) {
  char *stops[] = {"abcX"};
  size_t cuts[] = {2, 4, 5, 7};
  char streamed[64], final[64];
  int m = feed("xxabcabcab", cuts, 4, stops, 1, 0, streamed, final);
  cr_assert_eq(m, -1);
  cr_assert_str_eq(final, "xxabcabcab");
}

Test(stop_text, unchecked_appends_do_not_match) {
  stop_text st;
  stop_text_init(&st);
  char *stops[] = {"ab"};
  cr_assert_eq(stop_text_append(&st, "ab", 2, stops, 1, 2, 0, 0), -1);
  /* once checking starts, text already appended is searched too */
  cr_assert_eq(stop_text_append(&st, "c", 1, stops, 1, 2, 0, 1), 0);
  cr_assert_str_eq(st.buf, "");
  stop_text_deinit(&st);
}

/* Random texts over a small alphabet, random splits, against a direct reference. */
Test(stop_text, random_against_reference) {
  unsigned seed = 99;
  for (int iter = 0; iter < 2000; iter++) {
    char text[64], s0[5], s1[4];
    int len = 1 + rand_r(&seed) % 60;
    for (int i = 0; i < len; i++) text[i] = (char)('a' + rand_r(&seed) % 3);
    text[len] = 0;
    int l0 = 1 + rand_r(&seed) % 4, l1 = 1 + rand_r(&seed) % 3;
    for (int i = 0; i < l0; i++) s0[i] = (char)('a' + rand_r(&seed) % 3);
    for (int i = 0; i < l1; i++) s1[i] = (char)('a' + rand_r(&seed) % 3);
    s0[l0] = s1[l1] = 0;
    char *stops[] = {s0, s1};
    size_t cuts[8];
    int n_cuts = rand_r(&seed) % 8;
    for (int c = 0; c < n_cuts; c++) cuts[c] = (size_t)(rand_r(&seed) % (unsigned)(len + 1));
    for (int a = 0; a < n_cuts; a++) /* sort cuts */
      for (int b = a + 1; b < n_cuts; b++)
        if (cuts[b] < cuts[a]) {
          size_t t = cuts[a];
          cuts[a] = cuts[b];
          cuts[b] = t;
        }
    int include = rand_r(&seed) % 2;
    char streamed[128], final[128];
    int m = feed(text, cuts, n_cuts, stops, 2, include, streamed, final);
    /* Reference: after each piece, search the text so far; the first piece after which some
     * stop occurs decides, earliest start first, the first listed stop on a tie. */
    int want = -1;
    const char *first = NULL;
    for (int c = 0; c <= n_cuts && want < 0; c++) {
      size_t end = c < n_cuts ? cuts[c] : (size_t)len;
      char pre[64];
      memcpy(pre, text, end);
      pre[end] = 0;
      const char *p0 = strstr(pre, s0), *p1 = strstr(pre, s1);
      if (p0 || p1) {
        want = p0 && (!p1 || p0 <= p1) ? 0 : 1;
        first = text + ((want == 0 ? p0 : p1) - pre);
      }
    }
    if (want < 0) {
      cr_assert_eq(m, -1);
      cr_assert_str_eq(final, text);
    } else {
      cr_assert_eq(m, want, "text %s stops %s %s", text, s0, s1);
      size_t cut = (size_t)(first - text) + (include ? strlen(stops[want]) : 0);
      cr_assert_eq(strlen(final), cut, "text %s stops %s %s final %s", text, s0, s1, final);
      cr_assert(!strncmp(final, text, cut));
    }
  }
}
