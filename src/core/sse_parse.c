/* Incremental Server-Sent Events parser (see sse_parse.h). */
#include "core/sse_parse.h"

#include <stdlib.h>
#include <string.h>

void sse_parser_init(sse_parser *p, size_t max_bytes, sse_event_fn fn, void *arg) {
  memset(p, 0, sizeof *p);
  p->max_bytes = max_bytes ? max_bytes : (size_t)16 << 20;
  p->fn = fn;
  p->arg = arg;
}

void sse_parser_deinit(sse_parser *p) {
  free(p->line);
  free(p->data);
  p->line = p->data = NULL;
  p->line_len = p->line_cap = p->data_len = p->data_cap = 0;
}

/* Makes room for need more bytes plus a NUL in *buf. */
static int reserve(char **buf, size_t *cap, size_t len, size_t need, size_t max, qv_error *err) {
  if (len + need > max) return qv_error_set(err, QV_ELIMIT, "SSE line or event longer than %zu bytes", max);
  if (len + need + 1 <= *cap) return 0;
  size_t c = *cap ? *cap : 256;
  while (c < len + need + 1) c *= 2;
  char *nb = realloc(*buf, c);
  if (!nb) return qv_error_set(err, QV_ENOMEM, "out of memory in the SSE parser");
  *buf = nb;
  *cap = c;
  return 0;
}

static int dispatch(sse_parser *p) {
  if (!p->has_data) {
    p->event[0] = '\0';
    return 0;
  }
  /* The data buffer ends with the LF of its last line; drop it. */
  size_t n = p->data_len;
  if (n && p->data[n - 1] == '\n') n--;
  p->data[n] = '\0';
  int rc = p->fn ? p->fn(p->arg, p->event, p->data, n) : 0;
  p->data_len = 0;
  p->has_data = 0;
  p->event[0] = '\0';
  return rc;
}

/* Handles one complete line (without its terminator). */
static int process_line(sse_parser *p, const char *line, size_t len, qv_error *err) {
  if (len == 0) return dispatch(p);
  if (line[0] == ':') return 0;
  const char *colon = memchr(line, ':', len);
  size_t name_len = colon ? (size_t)(colon - line) : len;
  const char *val = colon ? colon + 1 : line + len;
  size_t val_len = (size_t)(line + len - val);
  if (val_len && val[0] == ' ') val++, val_len--;
  if (name_len == 4 && !memcmp(line, "data", 4)) {
    int rc = reserve(&p->data, &p->data_cap, p->data_len, val_len + 1, p->max_bytes, err);
    if (rc) return rc;
    memcpy(p->data + p->data_len, val, val_len);
    p->data_len += val_len;
    p->data[p->data_len++] = '\n';
    p->has_data = 1;
  } else if (name_len == 5 && !memcmp(line, "event", 5)) {
    size_t n = val_len < sizeof p->event - 1 ? val_len : sizeof p->event - 1;
    memcpy(p->event, val, n);
    p->event[n] = '\0';
  }
  return 0;
}

int sse_parser_feed(sse_parser *p, const char *buf, size_t len, qv_error *err) {
  size_t i = 0;
  if (len && p->last_cr && buf[0] == '\n') i = 1;
  p->last_cr = 0;
  while (i < len) {
    /* Find the end of the line in this piece. */
    size_t j = i;
    while (j < len && buf[j] != '\n' && buf[j] != '\r') j++;
    if (j == len) {
      int rc = reserve(&p->line, &p->line_cap, p->line_len, len - i, p->max_bytes, err);
      if (rc) return rc;
      memcpy(p->line + p->line_len, buf + i, len - i);
      p->line_len += len - i;
      return 0;
    }
    int rc;
    if (p->line_len) {
      rc = reserve(&p->line, &p->line_cap, p->line_len, j - i, p->max_bytes, err);
      if (rc) return rc;
      memcpy(p->line + p->line_len, buf + i, j - i);
      p->line_len += j - i;
      rc = process_line(p, p->line, p->line_len, err);
      p->line_len = 0;
    } else {
      if (j - i > p->max_bytes) return qv_error_set(err, QV_ELIMIT, "SSE line longer than %zu bytes", p->max_bytes);
      rc = process_line(p, buf + i, j - i, err);
    }
    if (rc) return rc;
    if (buf[j] == '\r') {
      if (j + 1 < len) {
        if (buf[j + 1] == '\n') j++;
      } else {
        p->last_cr = 1;
      }
    }
    i = j + 1;
  }
  return 0;
}

int sse_parser_finish(sse_parser *p, qv_error *err) {
  int rc = 0;
  if (p->line_len) {
    rc = process_line(p, p->line, p->line_len, err);
    p->line_len = 0;
    if (rc) return rc;
  }
  p->last_cr = 0;
  return dispatch(p);
}
