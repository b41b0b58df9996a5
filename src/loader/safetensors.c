/* safetensors reader; see safetensors.h. The header JSON is parsed with cJSON; tensors are kept
 * in one array sorted by name for lookup. */
#include "loader/safetensors.h"

#include "core/util.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* A header larger than this is not a model file (real ones are a few MB at most). */
#define ST_MAX_HEADER_BYTES ((uint64_t)100 << 20)

typedef struct st_file {
  char *path;
  char *base;         /* base name, for messages */
  void *map;
  size_t map_bytes;
} st_file;

struct st_set {
  st_file *files;     /* [n_files] */
  int n_files;
  st_tensor *tensors; /* [n_tensors], sorted by name */
  int n_tensors;
  int cap_tensors;
};

static const struct {
  const char *str;
  int dtype;
  size_t size;
} st_dtypes[] = {
    {"F32", QV_DTYPE_F32, 4}, {"F16", QV_DTYPE_F16, 2}, {"BF16", QV_DTYPE_BF16, 2},
    {"I32", QV_DTYPE_I32, 4}, {"F64", -1, 8},          {"I64", -1, 8},
    {"U64", -1, 8},           {"U32", -1, 4},          {"I16", -1, 2},
    {"U16", -1, 2},           {"I8", -1, 1},           {"U8", QV_DTYPE_U8, 1},
    {"BOOL", -1, 1},          {"F8_E4M3", -1, 1},      {"F8_E5M2", -1, 1},
};

static const char *base_name(const char *p) {
  const char *s = strrchr(p, '/');
  return s ? s + 1 : p;
}

static int tensor_cmp(const void *a, const void *b) {
  return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

static int offset_cmp(const void *a, const void *b) {
  const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
  return x->data < y->data ? -1 : x->data > y->data;
}

static int map_file(st_file *f, const char *path, qv_error *err) {
  f->path = strdup(path);
  if (!f->path) return qv_error_set(err, QV_ENOMEM, "out of memory");
  f->base = (char *)base_name(f->path);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return qv_error_set(err, QV_EIO, "%s: cannot open: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return qv_error_set(err, QV_EIO, "%s: not a regular file", path);
  }
  if (st.st_size < 8) {
    close(fd);
    return qv_error_set(err, QV_EFORMAT, "%s: truncated (%lld bytes; a safetensors file has at least 8)",
                        f->base, (long long)st.st_size);
  }
  f->map_bytes = (size_t)st.st_size;
  f->map = mmap(NULL, f->map_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (f->map == MAP_FAILED) {
    f->map = NULL;
    return qv_error_set(err, QV_EIO, "%s: mmap failed: %s", f->base, strerror(errno));
  }
  return 0;
}

static int push_tensor(st_set *s, const st_tensor *t) {
  if (s->n_tensors == s->cap_tensors) {
    int cap = s->cap_tensors ? s->cap_tensors * 2 : 64;
    st_tensor *nt = realloc(s->tensors, (size_t)cap * sizeof *nt);
    if (!nt) return QV_ENOMEM;
    s->tensors = nt;
    s->cap_tensors = cap;
  }
  s->tensors[s->n_tensors++] = *t;
  return 0;
}

/* Parses and validates one file's header, appending its tensors to s. */
static int parse_file(st_set *s, st_file *f, qv_error *err) {
  const uint8_t *p = f->map;
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | p[i];
  if (hlen > ST_MAX_HEADER_BYTES || hlen > f->map_bytes - 8)
    return qv_error_set(err, QV_EFORMAT, "%s: header length %llu exceeds the file (%zu bytes)",
                        f->base, (unsigned long long)hlen, f->map_bytes);
  size_t data_bytes = f->map_bytes - 8 - (size_t)hlen;
  const uint8_t *data = p + 8 + hlen;
  cJSON *root = cJSON_ParseWithLength((const char *)p + 8, (size_t)hlen);
  if (!root || !cJSON_IsObject(root)) {
    cJSON_Delete(root);
    return qv_error_set(err, QV_EFORMAT, "%s: header is not a JSON object", f->base);
  }
  int first = s->n_tensors, rc = 0;
  const cJSON *it;
  cJSON_ArrayForEach(it, root) {
    const char *name = it->string;
    if (!name) continue;
    if (!strcmp(name, "__metadata__")) continue;
    if (!cJSON_IsObject(it)) {
      rc = qv_error_set(err, QV_EFORMAT, "%s: tensor '%s': entry is not an object", f->base, name);
      break;
    }
    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(it, "dtype");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(it, "shape");
    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(it, "data_offsets");
    if (!cJSON_IsString(jd) || !cJSON_IsArray(js) || !cJSON_IsArray(jo) || cJSON_GetArraySize(jo) != 2) {
      rc = qv_error_set(err, QV_EFORMAT, "%s: tensor '%s': needs dtype, shape and data_offsets [begin, end]",
                        f->base, name);
      break;
    }
    st_tensor t = {0};
    t.name = name; /* re-pointed to a copy below */
    t.file = f->base;
    size_t esize = 0;
    t.dtype = -2;
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
      if (!strcmp(jd->valuestring, st_dtypes[i].str)) {
        t.dtype = st_dtypes[i].dtype;
        esize = st_dtypes[i].size;
      }
    if (t.dtype == -2) {
      rc = qv_error_set(err, QV_EFORMAT, "%s: tensor '%s': unknown dtype '%.16s'", f->base, name, jd->valuestring);
      break;
    }
    snprintf(t.dtype_str, sizeof t.dtype_str, "%s", jd->valuestring);
    t.n_dims = cJSON_GetArraySize(js);
    if (t.n_dims > ST_MAX_DIMS) {
      rc = qv_error_set(err, QV_EFORMAT, "%s: tensor '%s': %d dimensions (at most %d)", f->base, name,
                        t.n_dims, ST_MAX_DIMS);
      break;
    }
    t.n_elems = 1;
    int d = 0;
    const cJSON *jv;
    cJSON_ArrayForEach(jv, js) {
      double v = cJSON_IsNumber(jv) ? jv->valuedouble : -1;
      if (v < 0 || v > (double)INT64_MAX / 2 || v != (double)(int64_t)v) {
        rc = qv_error_set(err, QV_EFORMAT, "%s: tensor '%s': bad shape entry", f->base, name);
        break;
      }
      t.shape[d++] = (int64_t)v;
      if (t.shape[d - 1] != 0 && t.n_elems > INT64_MAX / 16 / t.shape[d - 1]) {
        rc = qv_error_set(err, QV_EFORMAT, "%s: tensor '%s': shape too large", f->base, name);
        break;
      }
      t.n_elems *= t.shape[d - 1];
    }
    if (rc) break;
    double b = cJSON_IsNumber(jo->child) ? jo->child->valuedouble : -1;
    double e = cJSON_IsNumber(jo->child->next) ? jo->child->next->valuedouble : -1;
    if (b < 0 || e < b || e > (double)data_bytes || b != (double)(uint64_t)b || e != (double)(uint64_t)e) {
      rc = qv_error_set(err, QV_EFORMAT,
                        "%s: tensor '%s': data_offsets [%.0f, %.0f] outside the %zu data bytes (truncated file?)",
                        f->base, name, b, e, data_bytes);
      break;
    }
    t.n_bytes = (size_t)e - (size_t)b;
    if ((uint64_t)t.n_elems * esize != t.n_bytes) {
      rc = qv_error_set(err, QV_EFORMAT, "%s: tensor '%s': %zu bytes for %lld elements of %s", f->base, name,
                        t.n_bytes, (long long)t.n_elems, t.dtype_str);
      break;
    }
    t.data = data + (size_t)b;
    char *copy = strdup(name);
    if (!copy) {
      rc = qv_error_set(err, QV_ENOMEM, "out of memory");
      break;
    }
    t.name = copy;
    if (push_tensor(s, &t)) {
      free(copy);
      rc = qv_error_set(err, QV_ENOMEM, "out of memory");
      break;
    }
  }
  cJSON_Delete(root);
  if (rc) return rc;
  /* Tensors of one file must not overlap. */
  int n = s->n_tensors - first;
  if (n > 1) {
    const st_tensor **by_off = malloc((size_t)n * sizeof *by_off);
    if (!by_off) return qv_error_set(err, QV_ENOMEM, "out of memory");
    for (int i = 0; i < n; i++) by_off[i] = &s->tensors[first + i];
    qsort(by_off, (size_t)n, sizeof *by_off, offset_cmp);
    for (int i = 1; i < n && !rc; i++) {
      const st_tensor *a = by_off[i - 1], *c = by_off[i];
      if ((const uint8_t *)a->data + a->n_bytes > (const uint8_t *)c->data)
        rc = qv_error_set(err, QV_EFORMAT, "%s: tensors '%s' and '%s' overlap", f->base, a->name, c->name);
    }
    free(by_off);
  }
  return rc;
}

static int add_file(st_set *s, const char *path, qv_error *err) {
  st_file *nf = realloc(s->files, (size_t)(s->n_files + 1) * sizeof *nf);
  if (!nf) return qv_error_set(err, QV_ENOMEM, "out of memory");
  s->files = nf;
  st_file *f = &s->files[s->n_files++];
  memset(f, 0, sizeof *f);
  int rc = map_file(f, path, err);
  if (!rc) rc = parse_file(s, f, err);
  return rc;
}

static int finish(st_set *s, qv_error *err) {
  qsort(s->tensors, (size_t)s->n_tensors, sizeof *s->tensors, tensor_cmp);
  for (int i = 1; i < s->n_tensors; i++)
    if (!strcmp(s->tensors[i - 1].name, s->tensors[i].name))
      return qv_error_set(err, QV_EFORMAT, "%s and %s: tensor '%s' appears twice", s->tensors[i - 1].file,
                          s->tensors[i].file, s->tensors[i].name);
  return 0;
}

int st_open_file(const char *path, st_set **out, qv_error *err) {
  *out = NULL;
  st_set *s = calloc(1, sizeof *s);
  if (!s) return qv_error_set(err, QV_ENOMEM, "out of memory");
  int rc = add_file(s, path, err);
  if (!rc) rc = finish(s, err);
  if (rc) {
    st_close(s);
    return rc;
  }
  *out = s;
  return 0;
}

int st_open_dir(const char *dir, st_set **out, qv_error *err) {
  *out = NULL;
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
  if (access(path, F_OK) != 0) {
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (access(path, F_OK) != 0)
      return qv_error_set(err, QV_ENOTFOUND, "%s: no model.safetensors or model.safetensors.index.json", dir);
    return st_open_file(path, out, err);
  }
  size_t len;
  char *text = qv_read_file(path, 64u << 20, &len, err);
  if (!text) return err ? err->code : QV_EIO;
  cJSON *root = cJSON_ParseWithLength(text, len);
  free(text);
  const cJSON *map = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
  if (!cJSON_IsObject(map)) {
    cJSON_Delete(root);
    return qv_error_set(err, QV_EFORMAT, "model.safetensors.index.json: no \"weight_map\" object");
  }
  st_set *s = calloc(1, sizeof *s);
  if (!s) {
    cJSON_Delete(root);
    return qv_error_set(err, QV_ENOMEM, "out of memory");
  }
  int rc = 0;
  const cJSON *it;
  /* Open each distinct shard once, in first-mention order. */
  cJSON_ArrayForEach(it, map) {
    if (!cJSON_IsString(it) || strchr(it->valuestring, '/') || !strcmp(it->valuestring, "..")) {
      rc = qv_error_set(err, QV_EFORMAT, "model.safetensors.index.json: tensor '%s': bad shard name",
                        it->string ? it->string : "?");
      break;
    }
    int seen = 0;
    for (int i = 0; i < s->n_files && !seen; i++) seen = !strcmp(s->files[i].base, it->valuestring);
    if (seen) continue;
    snprintf(path, sizeof path, "%s/%s", dir, it->valuestring);
    if ((rc = add_file(s, path, err))) {
      qv_error_prefix(err, "shard of tensor '%s'", it->string);
      break;
    }
  }
  if (!rc) rc = finish(s, err);
  /* Every tensor the index names must be in the shard it names. */
  if (!rc) cJSON_ArrayForEach(it, map) {
      const st_tensor *t = st_find(s, it->string);
      if (!t || strcmp(t->file, it->valuestring)) {
        rc = qv_error_set(err, QV_EFORMAT, "model.safetensors.index.json: tensor '%s' is not in %s", it->string,
                          it->valuestring);
        break;
      }
    }
  cJSON_Delete(root);
  if (rc) {
    st_close(s);
    return rc;
  }
  *out = s;
  return 0;
}

void st_close(st_set *s) {
  if (!s) return;
  for (int i = 0; i < s->n_tensors; i++) free((char *)s->tensors[i].name);
  for (int i = 0; i < s->n_files; i++) {
    if (s->files[i].map) munmap(s->files[i].map, s->files[i].map_bytes);
    free(s->files[i].path);
  }
  free(s->tensors);
  free(s->files);
  free(s);
}

const st_tensor *st_find(const st_set *s, const char *name) {
  int lo = 0, hi = s->n_tensors - 1;
  while (lo <= hi) {
    int mid = (lo + hi) / 2, c = strcmp(s->tensors[mid].name, name);
    if (!c) return &s->tensors[mid];
    if (c < 0) lo = mid + 1;
    else hi = mid - 1;
  }
  return NULL;
}

int st_count(const st_set *s) { return s->n_tensors; }
const st_tensor *st_at(const st_set *s, int idx) { return idx >= 0 && idx < s->n_tensors ? &s->tensors[idx] : NULL; }
