/* Small helpers several subsystems share: whole-file reads, the splitmix64 mixer and the
 * xoshiro256** generator step. */
#ifndef QV_CORE_UTIL_H
#define QV_CORE_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "quiver/error.h"

/* Reads a whole file of at most max_bytes into a malloc'd, NUL-terminated buffer (caller
 * frees); *len (may be NULL) gets its size. NULL on failure with err set: QV_ENOTFOUND for a
 * missing file, QV_EIO, QV_ELIMIT (larger than max_bytes) or QV_ENOMEM. */
char *qv_read_file(const char *path, size_t max_bytes, size_t *len, qv_error *err);

/* Growable arrays: returns p reallocated to hold at least need elements of elem_size bytes
 * (capacity doubling from min_cap, *cap updated), p itself when it already does, or NULL when
 * out of memory (p is then still valid and *cap unchanged). */
void *qv_grow(void *p, size_t *cap, size_t need, size_t elem_size, size_t min_cap);

/* One step of splitmix64: advances *state and returns a well-mixed 64-bit value. */
static inline uint64_t qv_splitmix64(uint64_t *state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* One step of xoshiro256** over the 4-word state s (seed it with qv_splitmix64; never all
 * zero): a fast generator whose sequence is the same on every platform. */
static inline uint64_t qv_xoshiro256ss(uint64_t s[4]) {
  uint64_t r = s[1] * 5, t = s[1] << 17;
  uint64_t result = ((r << 7) | (r >> 57)) * 9;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = (s[3] << 45) | (s[3] >> 19);
  return result;
}

/* splitmix64's output function applied to x (a stateless 64-bit mix). */
static inline uint64_t qv_mix64(uint64_t x) { return qv_splitmix64(&x); }

#endif
