/* Bearer API-key checks (see auth.h). */
#include "server/auth.h"

#include <string.h>
#include <strings.h>

int auth_equal(const char *a, size_t alen, const char *b, size_t blen) {
  /* Walk the longer length so the loop count does not depend on where they differ. */
  size_t n = alen > blen ? alen : blen;
  unsigned diff = (unsigned)(alen ^ blen);
  for (size_t i = 0; i < n; i++) {
    unsigned char x = i < alen ? (unsigned char)a[i] : 0;
    unsigned char y = i < blen ? (unsigned char)b[i] : 0;
    diff |= (unsigned)(x ^ y);
  }
  return diff == 0;
}

int auth_check(const char *const *keys, int n_keys, const char *authorization) {
  if (n_keys <= 0) return 1;
  if (!authorization || strncasecmp(authorization, "Bearer ", 7)) return 0;
  return auth_check_key(keys, n_keys, authorization + 7);
}

int auth_check_key(const char *const *keys, int n_keys, const char *key) {
  if (n_keys <= 0) return 1;
  if (!key) return 0;
  const char *tok = key;
  while (*tok == ' ') tok++;
  size_t tlen = strlen(tok);
  int ok = 0;
  for (int i = 0; i < n_keys; i++) ok |= auth_equal(tok, tlen, keys[i], strlen(keys[i]));
  return ok && tlen > 0;
}
