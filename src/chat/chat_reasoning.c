/* Reasoning parsing: splits `<think>...</think>` off a generation into reasoning_content.
 *
 * Two shapes exist: DeepSeek-R1's template opens `<think>\n` in the prompt, so the generation
 * starts inside the reasoning and only `</think>` appears (started_in_think); Qwen3 generates
 * both tags itself. A small state machine handles both, fed deltas as they are generated; the
 * batch split is the same machine fed once, so streamed and non-streamed results agree. Text
 * that might be a partial tag ("</thi") is held back until decided. */
#include <stdlib.h>
#include <string.h>

#include "chat/chat.h"

typedef enum {
  R_WAIT_OPEN,  /* at the start: a "<think>" may come (after whitespace) */
  R_IN_THINK,   /* inside the reasoning, waiting for "</think>" */
  R_AFTER,      /* right after "</think>": drop whitespace before the content */
  R_CONTENT,    /* plain content until the end */
} rstate;

struct qv_chat_reasoning_stream {
  rstate state;
  bool started_in_think; /* a missing "<think>" means we are already inside */
  char *pending;         /* held-back text (malloc'd) */
  size_t n_pending;
  bool saw_reasoning;
};

static const char OPEN[] = "<think>";
static const char CLOSE[] = "</think>";

typedef struct obuf { char *p; size_t n; } obuf;

static int obuf_put(obuf *b, const char *s, size_t n) {
  char *p = realloc(b->p, b->n + n + 1);
  if (!p) return QV_ENOMEM;
  if (n) memcpy(p + b->n, s, n);
  b->p = p;
  b->n += n;
  p[b->n] = 0;
  return 0;
}

static bool ws(char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }

bool qv_chat_prompt_opens_think(const char *prompt, size_t len) {
  while (len > 0 && ws(prompt[len - 1])) len--;
  size_t k = strlen(OPEN);
  return len >= k && memcmp(prompt + len - k, OPEN, k) == 0;
}

int qv_chat_reasoning_stream_create(bool started_in_think, qv_chat_reasoning_stream **out,
                                    qv_error *err) {
  *out = calloc(1, sizeof(**out));
  if (!*out) return qv_error_set(err, QV_ENOMEM, "out of memory");
  (*out)->state = R_WAIT_OPEN;
  (*out)->started_in_think = started_in_think;
  return 0;
}

void qv_chat_reasoning_stream_destroy(qv_chat_reasoning_stream *s) {
  if (!s) return;
  free(s->pending);
  free(s);
}

/* Runs the machine over pending; final flushes what is held back. */
static int step(qv_chat_reasoning_stream *s, bool final, obuf *reason, obuf *content) {
  const char *p = s->pending ? s->pending : "";
  size_t n = s->n_pending, i = 0;
  int rc = 0;
  while (i < n && rc == 0) {
    switch (s->state) {
      case R_WAIT_OPEN: {
        size_t w = i;
        while (w < n && ws(p[w])) w++;
        size_t k = strlen(OPEN), avail = n - w;
        if (avail >= k && memcmp(p + w, OPEN, k) == 0) {
          s->state = R_IN_THINK;
          s->saw_reasoning = true;
          i = w + k;
        } else if (!final && avail < k && memcmp(p + w, OPEN, avail) == 0) {
          goto hold; /* maybe "<thi" so far */
        } else if (s->started_in_think) {
          s->state = R_IN_THINK;
          s->saw_reasoning = true;
        } else {
          s->state = R_CONTENT;
        }
        break;
      }
      case R_IN_THINK: {
        const char *close = NULL;
        size_t k = strlen(CLOSE);
        for (size_t j = i; j + k <= n; j++)
          if (p[j] == '<' && memcmp(p + j, CLOSE, k) == 0) { close = p + j; break; }
        if (close) {
          rc = obuf_put(reason, p + i, (size_t)(close - (p + i)));
          i = (size_t)(close - p) + k;
          s->state = R_AFTER;
          break;
        }
        size_t keep = 0;
        if (!final)
          for (size_t len = k - 1 < n - i ? k - 1 : n - i; len > 0; len--)
            if (memcmp(p + n - len, CLOSE, len) == 0) { keep = len; break; }
        rc = obuf_put(reason, p + i, n - i - keep);
        i = n - keep;
        if (keep) goto hold;
        break;
      }
      case R_AFTER:
        while (i < n && ws(p[i])) i++;
        if (i < n) s->state = R_CONTENT;
        break;
      case R_CONTENT:
        rc = obuf_put(content, p + i, n - i);
        i = n;
        break;
    }
  }
hold:
  if (rc) return rc;
  /* keep p[i..n) pending */
  memmove(s->pending ? s->pending : (char *)p, p + i, n - i);
  s->n_pending = n - i;
  return 0;
}

static int finish_out(int rc, obuf *reason, obuf *content, char **reasoning_delta,
                      char **content_delta, qv_error *err) {
  if (rc == 0 && !reason->p) rc = obuf_put(reason, "", 0);
  if (rc == 0 && !content->p) rc = obuf_put(content, "", 0);
  if (rc) {
    free(reason->p);
    free(content->p);
    *reasoning_delta = *content_delta = NULL;
    return qv_error_set(err, QV_ENOMEM, "out of memory parsing reasoning");
  }
  *reasoning_delta = reason->p;
  *content_delta = content->p;
  return 0;
}

int qv_chat_reasoning_stream_feed(qv_chat_reasoning_stream *s, const char *delta, size_t len,
                                  char **reasoning_delta, char **content_delta, qv_error *err) {
  *reasoning_delta = *content_delta = NULL;
  if (!s || (!delta && len)) return qv_error_set(err, QV_EINVAL, "invalid stream arguments");
  char *np = realloc(s->pending, s->n_pending + len + 1);
  if (!np) return qv_error_set(err, QV_ENOMEM, "out of memory");
  s->pending = np;
  if (len) memcpy(np + s->n_pending, delta, len);
  s->n_pending += len;
  np[s->n_pending] = 0;
  obuf reason = {0}, content = {0};
  int rc = step(s, false, &reason, &content);
  return finish_out(rc, &reason, &content, reasoning_delta, content_delta, err);
}

int qv_chat_reasoning_stream_finish(qv_chat_reasoning_stream *s, char **reasoning_delta,
                                    char **content_delta, qv_error *err) {
  *reasoning_delta = *content_delta = NULL;
  if (!s) return qv_error_set(err, QV_EINVAL, "invalid stream");
  obuf reason = {0}, content = {0};
  int rc = step(s, true, &reason, &content);
  return finish_out(rc, &reason, &content, reasoning_delta, content_delta, err);
}

int qv_chat_reasoning_split(const char *text, size_t len, bool started_in_think, char **reasoning,
                            char **content, qv_error *err) {
  *reasoning = *content = NULL;
  qv_chat_reasoning_stream *s = NULL;
  int rc = qv_chat_reasoning_stream_create(started_in_think, &s, err);
  if (rc) return rc;
  char *r1 = NULL, *c1 = NULL, *r2 = NULL, *c2 = NULL;
  rc = qv_chat_reasoning_stream_feed(s, text, len, &r1, &c1, err);
  if (rc == 0) rc = qv_chat_reasoning_stream_finish(s, &r2, &c2, err);
  if (rc == 0) {
    obuf r = {0}, c = {0};
    if (obuf_put(&r, r1, strlen(r1)) || obuf_put(&r, r2, strlen(r2)) ||
        obuf_put(&c, c1, strlen(c1)) || obuf_put(&c, c2, strlen(c2))) {
      free(r.p);
      free(c.p);
      rc = qv_error_set(err, QV_ENOMEM, "out of memory");
    } else {
      if (!s->saw_reasoning) {
        free(r.p);
        r.p = NULL;
      }
      *reasoning = r.p;
      *content = c.p;
    }
  }
  free(r1);
  free(c1);
  free(r2);
  free(c2);
  qv_chat_reasoning_stream_destroy(s);
  return rc;
}
