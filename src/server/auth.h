/* Bearer API-key checks. Keys are compared in constant time (with respect to the key contents
 * and the position of a mismatch) so response timing does not leak how much of a guess was
 * right; every configured key is compared, with no early exit. */
#ifndef QV_SERVER_AUTH_H
#define QV_SERVER_AUTH_H

#include <stddef.h>

/* 1 when the Authorization header value ("Bearer <key>", scheme case-insensitive) carries one
 * of keys[n_keys]; 0 otherwise (also for a NULL header). With n_keys == 0 everything passes. */
int auth_check(const char *const *keys, int n_keys, const char *authorization);

/* The same for a bare key header (Anthropic's "x-api-key: <key>"). */
int auth_check_key(const char *const *keys, int n_keys, const char *key);

/* Constant-time equality of a[alen] and b[blen] (time depends only on the lengths). */
int auth_equal(const char *a, size_t alen, const char *b, size_t blen);

#endif
