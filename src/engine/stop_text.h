/* Stop strings over streamed text: the generated text of one choice grows piece by piece (as
 * the incremental detokenizer releases whole characters); a stop string may span any number of
 * pieces. After each append the matcher reports the earliest match, or how much of the text is
 * safe to emit: a suffix that could still become the start of a stop string is held back, so
 * streamed text never runs past a stop.
 *
 * Single-threaded, one per choice. */
#ifndef QV_ENGINE_STOP_TEXT_H
#define QV_ENGINE_STOP_TEXT_H

#include <stddef.h>

typedef struct stop_text {
  char *buf;       /* [len + 1] generated text so far, NUL-terminated, owned */
  size_t len, cap;
  size_t emitted;  /* bytes of buf already handed out as deltas */
  size_t scanned;  /* stop strings were searched in buf[0, scanned) */
} stop_text;

void stop_text_init(stop_text *st);
void stop_text_deinit(stop_text *st);

/* Appends n bytes and searches stops[0..n_stop) (each non-empty, borrowed) in the text that
 * the new bytes can complete. Returns the index of the stop that matched earliest (the text is
 * then cut before it, or after it when include is set), -1 when none matched, or QV_ENOMEM.
 * check == 0 appends without searching (before min_tokens is reached). */
int stop_text_append(stop_text *st, const char *s, size_t n, char *const *stops, int n_stop,
                     size_t max_stop_len, int include, int check);

/* Bytes that can be emitted now: everything when final, else all but the longest suffix that
 * is a proper prefix of some stop string. */
size_t stop_text_safe_end(const stop_text *st, char *const *stops, int n_stop, int final);

#endif
