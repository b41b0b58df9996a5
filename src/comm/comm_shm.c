/* Shared-memory communicator: CPU ranks on one host, as threads of one process or as separate
 * processes (the same code: every rank maps the group's segment itself).
 *
 * One POSIX shared-memory segment per group, named "/qv-comm-<token>":
 *   header (atomics: ready magic, joined count, aborted flag, one pid per rank, a central
 *   sense-counting barrier) | data[2][size][slot_bytes] (two buffer sets, one staging slot per
 *   rank in each).
 * Collectives alternate the buffer sets, so one needs no trailing barrier: a rank can only write
 * set s again after the next collective's barrier, which every rank reaches after it finished
 * reading set s. Messages larger than a slot go in slot-sized pieces.
 *
 * All-reduce: each rank stages its piece; barrier; rank r sums elements [n*r/size, n*(r+1)/size)
 * over the slots in rank order (rank 0 + rank 1 + ..., accumulated in double, rounded once) and
 * writes them into set's slot 0; barrier; everyone copies slot 0 out. Every element's sum order
 * therefore depends only on (n, size), never on which rank computes it or who arrives first, so
 * results are bit-identical across runs and on every rank.
 *
 * Waiting spins with backoff (pause, then yield, then short sleeps: the host may have fewer cores
 * than ranks), checks the group's aborted flag, every few milliseconds checks whether a peer left
 * or its process is gone (kill(pid, 0); a dead but unreaped child still counts as alive and is
 * caught by the timeout), and gives up at the collective's deadline by aborting the group. */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdalign.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "comm/comm.h"
#include "comm/comm_impl.h"
#include "core/dtype.h"

#if ATOMIC_INT_LOCK_FREE != 2
#error "the shm communicator needs lock-free 32-bit atomics (address-free across processes)"
#endif

enum {
  SHM_MAGIC = 0x71766373u, /* "qvcs", stored last by rank 0 once the header is initialised */
  SHM_VERSION = 1,
  PID_LEFT = -1, /* pids[r] of a rank that destroyed its handle */
  PEER_CHECK_MS = 5,
};
#define SHM_DEFAULT_SLOT_BYTES ((size_t)4 << 20)
#define SHM_MAX_SLOT_BYTES ((size_t)1 << 30)

typedef struct shm_header {
  _Atomic uint32_t magic;
  uint32_t version, size, pad0;
  uint64_t slot_bytes;
  _Atomic uint32_t n_joined;
  _Atomic uint32_t aborted;
  _Atomic int32_t pids[QV_COMM_MAX_RANKS]; /* 0 = not joined, PID_LEFT = left, else its pid */
  alignas(64) _Atomic uint32_t bar_count;  /* ranks arrived at the current barrier */
  alignas(64) _Atomic uint32_t bar_gen;    /* barrier generation, bumped by the last arriver */
} shm_header;

typedef struct shm_comm {
  qv_comm base;
  shm_header *hdr; /* owned mapping of map_bytes */
  uint8_t *data;   /* [2][size][slot_bytes], inside the mapping */
  size_t map_bytes, slot_bytes;
  uint64_t n_ops;  /* collectives so far: its parity picks the buffer set */
  int name_linked; /* rank 0 only: the segment's name still exists */
  pid_t pid;
  char name[8 + QV_COMM_TOKEN_MAX + 2];
} shm_comm;

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

/* Busy-waits briefly, then yields, then sleeps in short steps: ranks may outnumber cores. */
static void backoff(unsigned *spins) {
  unsigned s = (*spins)++;
  if (s < 64) {
    cpu_relax();
  } else if (s < 256) {
    sched_yield();
  } else {
    struct timespec ts = {0, s < 1024 ? 20000 : 100000};
    nanosleep(&ts, NULL);
  }
}

static uint8_t *slot(shm_comm *s, unsigned set, int rank) {
  return s->data + ((size_t)set * (size_t)s->base.size + (size_t)rank) * s->slot_bytes;
}

static int group_aborted(const qv_comm *c) {
  const shm_comm *s = (const shm_comm *)c;
  return atomic_load_explicit(&s->hdr->aborted, memory_order_acquire) != 0;
}

/* Marks the whole group aborted and reports why. */
static int do_abort(shm_comm *s, qv_error *err, const char *what, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int do_abort(shm_comm *s, qv_error *err, const char *what, const char *fmt, ...) {
  atomic_store_explicit(&s->hdr->aborted, 1, memory_order_release);
  char msg[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return qv_error_set(err, QV_EABORTED, "comm shm %s (rank %d of %d): %s; communicator aborted",
                      what, s->base.rank, s->base.size, msg);
}

/* A peer that left or whose process is gone: its rank, else -1. *left says which. */
static int dead_peer(shm_comm *s, int *left) {
  for (int r = 0; r < s->base.size; r++) {
    if (r == s->base.rank) continue;
    int32_t p = atomic_load_explicit(&s->hdr->pids[r], memory_order_acquire);
    if (p == PID_LEFT) {
      *left = 1;
      return r;
    }
    if (p > 0 && p != s->pid && kill(p, 0) != 0 && errno == ESRCH) {
      *left = 0;
      return r;
    }
  }
  return -1;
}

/* The group barrier, bounded by deadline (ms on the monotonic clock). */
static int wait_all(shm_comm *s, double deadline, const char *what, qv_error *err) {
  shm_header *h = s->hdr;
  uint32_t gen = atomic_load_explicit(&h->bar_gen, memory_order_acquire);
  uint32_t arrived = atomic_fetch_add_explicit(&h->bar_count, 1, memory_order_acq_rel) + 1;
  if (arrived == (uint32_t)s->base.size) {
    /* The count may include a rank that has since timed out and aborted the group: then this
     * collective fails here too rather than completing on data nobody else will use. */
    if (atomic_load_explicit(&h->aborted, memory_order_acquire))
      return qv_error_set(err, QV_EABORTED,
                          "comm shm %s (rank %d of %d): another rank aborted the communicator",
                          what, s->base.rank, s->base.size);
    atomic_store_explicit(&h->bar_count, 0, memory_order_relaxed);
    atomic_store_explicit(&h->bar_gen, gen + 1, memory_order_release);
    return 0;
  }
  unsigned spins = 0;
  double next_check = 0;
  while (atomic_load_explicit(&h->bar_gen, memory_order_acquire) == gen) {
    if (atomic_load_explicit(&h->aborted, memory_order_acquire))
      return qv_error_set(err, QV_EABORTED,
                          "comm shm %s (rank %d of %d): another rank aborted the communicator",
                          what, s->base.rank, s->base.size);
    backoff(&spins);
    if ((spins & 15) != 0 && spins > 64) continue;
    double t = now_ms();
    if (t >= next_check) {
      next_check = t + PEER_CHECK_MS;
      int left = 0, r = dead_peer(s, &left);
      /* A peer may pass this barrier, finish and leave between our load of bar_gen and this
       * check: its leaving (release) follows the barrier's completion, so a fresh load of
       * bar_gen tells a completed barrier from one the peer really abandoned. */
      if (r >= 0 && atomic_load_explicit(&h->bar_gen, memory_order_acquire) != gen) break;
      if (r >= 0)
        return do_abort(s, err, what, left ? "rank %d left the group" : "rank %d's process died",
                        r);
    }
    if (t >= deadline && atomic_load_explicit(&h->bar_gen, memory_order_acquire) == gen)
      return do_abort(s, err, what, "timed out after %d ms waiting for the other ranks",
                      s->base.timeout_ms);
  }
  return 0;
}

/* dst[i] = sum over ranks r in order of src_r[i] for i in [lo, hi), in one piece of a set.
 * Blocks of BLK elements keep the running sums in a local array so the loops vectorise while
 * every element still sees rank 0 + rank 1 + ... . */
static void reduce_slice(shm_comm *s, unsigned set, size_t lo, size_t hi, qv_comm_dtype dtype) {
  enum { BLK = 256 };
  double acc[BLK];
  int size = s->base.size;
  for (size_t b = lo; b < hi; b += BLK) {
    size_t n = hi - b < BLK ? hi - b : BLK;
    if (dtype == QV_COMM_F32) {
      const float *x0 = (const float *)slot(s, set, 0) + b;
      for (size_t i = 0; i < n; i++) acc[i] = x0[i];
      for (int r = 1; r < size; r++) {
        const float *x = (const float *)slot(s, set, r) + b;
        for (size_t i = 0; i < n; i++) acc[i] += x[i];
      }
      float *y = (float *)slot(s, set, 0) + b;
      for (size_t i = 0; i < n; i++) y[i] = (float)acc[i];
    } else {
      const uint16_t *x0 = (const uint16_t *)slot(s, set, 0) + b;
      for (size_t i = 0; i < n; i++) acc[i] = qv_bf16_to_f32(x0[i]);
      for (int r = 1; r < size; r++) {
        const uint16_t *x = (const uint16_t *)slot(s, set, r) + b;
        for (size_t i = 0; i < n; i++) acc[i] += qv_bf16_to_f32(x[i]);
      }
      uint16_t *y = (uint16_t *)slot(s, set, 0) + b;
      for (size_t i = 0; i < n; i++) y[i] = qv_f32_to_bf16((float)acc[i]);
    }
  }
}

static int shm_all_reduce(qv_comm *c, void *buf, size_t count, qv_comm_dtype dtype, qv_error *err) {
  shm_comm *s = (shm_comm *)c;
  size_t es = qv_comm_dtype_bytes(dtype), per = s->slot_bytes / es;
  double deadline = now_ms() + c->timeout_ms;
  for (size_t off = 0; off < count; off += per) {
    size_t n = count - off < per ? count - off : per;
    unsigned set = (unsigned)(s->n_ops++ & 1);
    memcpy(slot(s, set, c->rank), (uint8_t *)buf + off * es, n * es);
    int rc = wait_all(s, deadline, "all_reduce", err);
    if (rc) return rc;
    size_t lo = n * (size_t)c->rank / (size_t)c->size,
           hi = n * (size_t)(c->rank + 1) / (size_t)c->size;
    reduce_slice(s, set, lo, hi, dtype);
    rc = wait_all(s, deadline, "all_reduce", err);
    if (rc) return rc;
    memcpy((uint8_t *)buf + off * es, slot(s, set, 0), n * es);
  }
  return 0;
}

static int shm_all_gather(qv_comm *c, const void *send, void *recv, size_t count,
                          qv_comm_dtype dtype, qv_error *err) {
  shm_comm *s = (shm_comm *)c;
  size_t es = qv_comm_dtype_bytes(dtype), per = s->slot_bytes / es;
  double deadline = now_ms() + c->timeout_ms;
  for (size_t off = 0; off < count; off += per) {
    size_t n = count - off < per ? count - off : per;
    unsigned set = (unsigned)(s->n_ops++ & 1);
    memcpy(slot(s, set, c->rank), (const uint8_t *)send + off * es, n * es);
    int rc = wait_all(s, deadline, "all_gather", err);
    if (rc) return rc;
    for (int r = 0; r < c->size; r++)
      memcpy((uint8_t *)recv + ((size_t)r * count + off) * es, slot(s, set, r), n * es);
  }
  return 0;
}

static int shm_broadcast(qv_comm *c, void *buf, size_t n_bytes, int root, qv_error *err) {
  shm_comm *s = (shm_comm *)c;
  double deadline = now_ms() + c->timeout_ms;
  for (size_t off = 0; off < n_bytes; off += s->slot_bytes) {
    size_t n = n_bytes - off < s->slot_bytes ? n_bytes - off : s->slot_bytes;
    unsigned set = (unsigned)(s->n_ops++ & 1);
    if (c->rank == root) memcpy(slot(s, set, root), (uint8_t *)buf + off, n);
    int rc = wait_all(s, deadline, "broadcast", err);
    if (rc) return rc;
    if (c->rank != root) memcpy((uint8_t *)buf + off, slot(s, set, root), n);
  }
  return 0;
}

static int shm_barrier(qv_comm *c, qv_error *err) {
  shm_comm *s = (shm_comm *)c;
  s->n_ops++;
  return wait_all(s, now_ms() + c->timeout_ms, "barrier", err);
}

static void shm_destroy(qv_comm *c) {
  shm_comm *s = (shm_comm *)c;
  if (s->hdr) {
    /* Peers waiting on this rank learn at once that it is gone rather than at their timeout. */
    atomic_store_explicit(&s->hdr->pids[c->rank], PID_LEFT, memory_order_release);
    munmap(s->hdr, s->map_bytes);
  }
  if (s->name_linked) shm_unlink(s->name);
  free(s);
}

static const qv_comm_ops shm_ops = {
    .kind = "shm",
    .all_reduce_sum = shm_all_reduce,
    .all_gather = shm_all_gather,
    .broadcast = shm_broadcast,
    .barrier = shm_barrier,
    .aborted = group_aborted,
    .destroy = shm_destroy,
};

static int valid_token(const char *t) {
  size_t n = 0;
  for (; t[n]; n++) {
    char ch = t[n];
    int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
             ch == '_' || ch == '-';
    if (!ok || n >= QV_COMM_TOKEN_MAX) return 0;
  }
  return n > 0;
}

int qv_comm_shm_token(char out[33], qv_error *err) {
  uint8_t b[16];
  if (getentropy(b, sizeof b) != 0)
    return qv_error_set(err, QV_EIO, "comm shm: no random bytes for a token: %s", strerror(errno));
  for (int i = 0; i < 16; i++) snprintf(out + 2 * i, 3, "%02x", b[i]);
  return 0;
}

/* Rank 0: creates, sizes and initialises the segment; the magic is stored last. */
static int create_segment(shm_comm *s, qv_error *err) {
  int fd = shm_open(s->name, O_RDWR | O_CREAT | O_EXCL, 0600);
  if (fd < 0)
    return qv_error_set(err, errno == EEXIST ? QV_EBUSY : QV_EIO, "comm shm: creating %s: %s%s",
                        s->name, strerror(errno),
                        errno == EEXIST ? " (a group with this token exists: use a fresh token)"
                                        : "");
  s->name_linked = 1;
  if (ftruncate(fd, (off_t)s->map_bytes) != 0) {
    int e = errno;
    close(fd);
    return qv_error_set(err, QV_ENOMEM, "comm shm: sizing %s to %zu bytes: %s", s->name,
                        s->map_bytes, strerror(e));
  }
  /* Reserve the pages now: on a full /dev/shm (containers often give it 64 MiB) a write to a
   * sparse segment would be a SIGBUS later; here it is an error. */
  int fe = posix_fallocate(fd, 0, (off_t)s->map_bytes);
  if (fe && fe != EOPNOTSUPP && fe != EINVAL) {
    close(fd);
    return qv_error_set(err, QV_ENOMEM,
                        "comm shm: reserving %zu bytes for %s: %s (is /dev/shm "
                        "large enough? lower slot_bytes)",
                        s->map_bytes, s->name, strerror(fe));
  }
  void *p = mmap(NULL, s->map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  int e = errno;
  close(fd);
  if (p == MAP_FAILED)
    return qv_error_set(err, QV_ENOMEM, "comm shm: mapping %s: %s", s->name, strerror(e));
  s->hdr = p;
  shm_header *h = s->hdr;
  h->version = SHM_VERSION;
  h->size = (uint32_t)s->base.size;
  h->slot_bytes = s->slot_bytes;
  atomic_store_explicit(&h->pids[0], (int32_t)s->pid, memory_order_relaxed);
  atomic_store_explicit(&h->n_joined, 1, memory_order_relaxed);
  atomic_store_explicit(&h->magic, SHM_MAGIC, memory_order_release);
  return 0;
}

/* Ranks > 0: opens the segment once rank 0 has created and sized it, then registers. */
static int join_segment(shm_comm *s, double deadline, qv_error *err) {
  unsigned spins = 0;
  int fd = -1;
  for (;;) {
    fd = shm_open(s->name, O_RDWR, 0);
    if (fd >= 0) {
      struct stat st;
      if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return qv_error_set(err, QV_EIO, "comm shm: stat %s: %s", s->name, strerror(e));
      }
      if ((size_t)st.st_size == s->map_bytes) break;
      close(fd);
      if (st.st_size != 0)
        return qv_error_set(err, QV_EINVAL,
                            "comm shm: group %s has %lld bytes, this rank expects "
                            "%zu (size or slot_bytes differ between ranks)",
                            s->name, (long long)st.st_size, s->map_bytes);
    } else if (errno != ENOENT) {
      return qv_error_set(err, QV_EIO, "comm shm: opening %s: %s", s->name, strerror(errno));
    }
    if (now_ms() >= deadline)
      return qv_error_set(err, QV_EABORTED,
                          "comm shm: rank %d: group %s did not appear within %d ms",
                          s->base.rank, s->name, s->base.timeout_ms);
    backoff(&spins);
  }
  void *p = mmap(NULL, s->map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  int e = errno;
  close(fd);
  if (p == MAP_FAILED)
    return qv_error_set(err, QV_ENOMEM, "comm shm: mapping %s: %s", s->name, strerror(e));
  s->hdr = p;
  shm_header *h = s->hdr;
  while (atomic_load_explicit(&h->magic, memory_order_acquire) != SHM_MAGIC) {
    if (now_ms() >= deadline)
      return qv_error_set(err, QV_EABORTED, "comm shm: group %s was never initialised", s->name);
    backoff(&spins);
  }
  if (h->version != SHM_VERSION || h->size != (uint32_t)s->base.size ||
      h->slot_bytes != s->slot_bytes)
    return qv_error_set(err, QV_EINVAL,
                        "comm shm: group %s has version %u, size %u, slot_bytes "
                        "%llu; this rank expects %d, %d, %zu",
                        s->name, h->version, h->size, (unsigned long long)h->slot_bytes,
                        SHM_VERSION, s->base.size, s->slot_bytes);
  int32_t expect = 0;
  if (!atomic_compare_exchange_strong(&h->pids[s->base.rank], &expect, (int32_t)s->pid))
    return qv_error_set(err, QV_EINVAL, "comm shm: rank %d of group %s joined twice", s->base.rank,
                        s->name);
  atomic_fetch_add_explicit(&h->n_joined, 1, memory_order_acq_rel);
  return 0;
}

int qv_comm_shm_create(const qv_comm_shm_opts *o, qv_comm **out, qv_error *err) {
  if (!out) return qv_error_set(err, QV_EINVAL, "comm shm: no output handle");
  *out = NULL;
  if (!o || !o->token || !valid_token(o->token))
    return qv_error_set(err, QV_EINVAL,
                        "comm shm: the token must be 1..%d characters of [A-Za-z0-9_-]",
                        QV_COMM_TOKEN_MAX);
  if (o->size < 1 || o->size > QV_COMM_MAX_RANKS || o->rank < 0 || o->rank >= o->size)
    return qv_error_set(err, QV_EINVAL, "comm shm: rank %d of size %d (size must be 1..%d)",
                        o->rank, o->size, QV_COMM_MAX_RANKS);
  if (o->timeout_ms < 0) return qv_error_set(err, QV_EINVAL, "comm shm: negative timeout");
  size_t slot_bytes = o->slot_bytes ? o->slot_bytes : SHM_DEFAULT_SLOT_BYTES;
  if (slot_bytes < 64 || slot_bytes > SHM_MAX_SLOT_BYTES)
    return qv_error_set(err, QV_EINVAL, "comm shm: slot_bytes %zu outside 64..%zu", slot_bytes,
                        SHM_MAX_SLOT_BYTES);
  slot_bytes = (slot_bytes + 63) & ~(size_t)63; /* every slot 64-byte aligned */
  shm_comm *s = calloc(1, sizeof *s);
  if (!s) return qv_error_set(err, QV_ENOMEM, "comm shm: out of memory");
  s->base.ops = &shm_ops;
  s->base.rank = o->rank;
  s->base.size = o->size;
  s->base.timeout_ms = o->timeout_ms ? o->timeout_ms : QV_COMM_DEFAULT_TIMEOUT_MS;
  s->slot_bytes = slot_bytes;
  size_t data_off = (sizeof(shm_header) + 63) & ~(size_t)63;
  s->map_bytes = data_off + 2 * (size_t)o->size * slot_bytes;
  s->pid = getpid();
  snprintf(s->name, sizeof s->name, "/qv-comm-%s", o->token);

  double deadline = now_ms() + s->base.timeout_ms;
  int rc = o->rank == 0 ? create_segment(s, err) : join_segment(s, deadline, err);
  if (rc == 0) {
    s->data = (uint8_t *)s->hdr + data_off;
    shm_header *h = s->hdr;
    unsigned spins = 0;
    while (atomic_load_explicit(&h->n_joined, memory_order_acquire) < (uint32_t)o->size) {
      if (atomic_load_explicit(&h->aborted, memory_order_acquire)) {
        rc =
            qv_error_set(err, QV_EABORTED, "comm shm: group %s was aborted while joining", s->name);
        break;
      }
      if (now_ms() >= deadline) {
        atomic_store_explicit(&h->aborted, 1, memory_order_release);
        rc = qv_error_set(err, QV_EABORTED,
                          "comm shm: rank %d: only %u of %d ranks joined group %s within %d ms",
                          o->rank, atomic_load(&h->n_joined), o->size, s->name, s->base.timeout_ms);
        break;
      }
      backoff(&spins);
    }
  }
  /* Complete or failed, the name is no longer needed: the mappings keep the memory alive. */
  if (s->name_linked) {
    shm_unlink(s->name);
    s->name_linked = 0;
  }
  if (rc) {
    if (s->hdr) munmap(s->hdr, s->map_bytes);
    free(s);
    return rc;
  }
  *out = &s->base;
  return 0;
}
