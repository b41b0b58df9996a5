/* Stop-string matcher with hold-back for streaming (see stop_text.h). The search restarts a
 * stop's length before the old end of the text, so a match spanning the old text and the new
 * piece is found once and the whole text is never rescanned. */
#include "engine/stop_text.h"
#include "core/util.h"

#include <stdlib.h>
#include <string.h>

#include "quiver/error.h"

/* First occurrence of needle [nl] in hay [hl] (memmem is not C11/POSIX). */
static const char *find(const char *hay, size_t hl, const char *needle, size_t nl) {
  if (nl > hl) return NULL;
  for (size_t i = 0; i + nl <= hl; i++)
    if (hay[i] == needle[0] && !memcmp(hay + i, needle, nl)) return hay + i;
  return NULL;
}

void stop_text_init(stop_text *st) { memset(st, 0, sizeof *st); }

void stop_text_deinit(stop_text *st) {
  free(st->buf);
  memset(st, 0, sizeof *st);
}

int stop_text_append(stop_text *st, const char *s, size_t n, char *const *stops, int n_stop,
                     size_t max_stop_len, int include, int check) {
  char *b = qv_grow(st->buf, &st->cap, st->len + n + 1, 1, 64);
  if (!b) return QV_ENOMEM;
  st->buf = b;
  if (n) memcpy(st->buf + st->len, s, n);
  st->len += n;
  st->buf[st->len] = '\0';
  if (!check || n_stop == 0) return -1;
  size_t from = st->scanned > max_stop_len ? st->scanned - max_stop_len : 0;
  if (from < st->emitted) from = st->emitted; /* emitted text was already proven stop-free */
  size_t best_pos = (size_t)-1;
  int best = -1;
  for (int i = 0; i < n_stop; i++) {
    size_t L = strlen(stops[i]);
    if (L == 0 || L > st->len - from) continue;
    const char *m = find(st->buf + from, st->len - from, stops[i], L);
    if (m && (size_t)(m - st->buf) < best_pos) {
      best_pos = (size_t)(m - st->buf);
      best = i;
    }
  }
  st->scanned = st->len;
  if (best >= 0) {
    st->len = best_pos + (include ? strlen(stops[best]) : 0);
    st->buf[st->len] = '\0';
    st->scanned = st->len;
  }
  return best;
}

size_t stop_text_safe_end(const stop_text *st, char *const *stops, int n_stop, int final) {
  if (final || n_stop == 0) return st->len;
  size_t hold = 0;
  for (int i = 0; i < n_stop; i++) {
    size_t L = strlen(stops[i]);
    for (size_t k = L - 1 < st->len ? L - 1 : st->len; k > hold; k--)
      if (!memcmp(st->buf + st->len - k, stops[i], k)) {
        hold = k;
        break;
      }
  }
  size_t end = st->len - hold;
  return end < st->emitted ? st->emitted : end;
}
