/* GGUF metadata reader (see gguf.h). Values are read with memcpy from little-endian data. */
#include "tokenizer/gguf.h"

#include <stdlib.h>
#include <string.h>

static const size_t TYPE_SIZE[GGUF_T_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

typedef struct rd { const uint8_t *p; size_t n, off; } rd;

static int rd_u32(rd *r, uint32_t *v) {
  if (r->n - r->off < 4) return -1;
  memcpy(v, r->p + r->off, 4);
  r->off += 4;
  return 0;
}

static int rd_u64(rd *r, uint64_t *v) {
  if (r->n - r->off < 8) return -1;
  memcpy(v, r->p + r->off, 8);
  r->off += 8;
  return 0;
}

static int rd_str(rd *r, const char **s, size_t *len) {
  uint64_t n;
  if (rd_u64(r, &n) || n > r->n - r->off) return -1;
  *s = (const char *)r->p + r->off;
  *len = (size_t)n;
  r->off += (size_t)n;
  return 0;
}

/* Skips one value of type t (depth-limited for nested arrays). */
static int skip_value(rd *r, uint32_t t, int depth) {
  if (t >= GGUF_T_COUNT) return -1;
  if (t == GGUF_T_STRING) {
    const char *s;
    size_t n;
    return rd_str(r, &s, &n);
  }
  if (t == GGUF_T_ARRAY) {
    uint32_t et;
    uint64_t cnt;
    if (depth > 2 || rd_u32(r, &et) || rd_u64(r, &cnt) || et >= GGUF_T_COUNT) return -1;
    if (et != GGUF_T_STRING && et != GGUF_T_ARRAY) {
      if (cnt > (r->n - r->off) / TYPE_SIZE[et]) return -1;
      r->off += (size_t)cnt * TYPE_SIZE[et];
      return 0;
    }
    for (uint64_t i = 0; i < cnt; i++)
      if (skip_value(r, et, depth + 1)) return -1;
    return 0;
  }
  if (r->n - r->off < TYPE_SIZE[t]) return -1;
  r->off += TYPE_SIZE[t];
  return 0;
}

/* Tensor infos after the metadata, then the aligned data section. */
static int parse_tensors(gguf_ctx *out, rd *r, uint64_t n_tensors, qv_error *err) {
  out->alignment = 32;
  const gguf_kv *al = gguf_find(out, "general.alignment");
  if (al) {
    int64_t v;
    if (gguf_get_i64(out, "general.alignment", &v) || v <= 0 || v > (1 << 20) || (v & (v - 1)) != 0) {
      gguf_free(out);
      return qv_error_set(err, QV_EFORMAT, "GGUF general.alignment must be a power of two");
    }
    out->alignment = (uint32_t)v;
  }
  /* Each tensor info takes at least 8 + 4 + 8 + 4 + 8 bytes. */
  if (n_tensors > (r->n - r->off) / 32) {
    gguf_free(out);
    return qv_error_set(err, QV_EFORMAT, "GGUF header claims %llu tensors, file too short", (unsigned long long)n_tensors);
  }
  out->tensors = calloc(n_tensors ? (size_t)n_tensors : 1, sizeof *out->tensors);
  if (!out->tensors) {
    gguf_free(out);
    return qv_error_set(err, QV_ENOMEM, "out of memory");
  }
  for (uint64_t i = 0; i < n_tensors; i++) {
    gguf_tensor *t = &out->tensors[i];
    int bad = rd_str(r, &t->name, &t->name_len) || rd_u32(r, &t->n_dims) || t->n_dims == 0 || t->n_dims > 4;
    for (uint32_t d = 0; !bad && d < 4; d++) {
      t->dims[d] = 1;
      if (d < t->n_dims) bad = rd_u64(r, &t->dims[d]) || t->dims[d] == 0 || t->dims[d] > ((uint64_t)1 << 40);
    }
    bad = bad || rd_u32(r, &t->type) || rd_u64(r, &t->offset) || t->offset % out->alignment != 0;
    if (bad) {
      gguf_free(out);
      return qv_error_set(err, QV_EFORMAT, "GGUF tensor info %llu: truncated or invalid", (unsigned long long)i);
    }
    out->n_tensors++;
  }
  size_t data = (r->off + out->alignment - 1) / out->alignment * out->alignment;
  out->data_offset = data < r->n ? data : r->n;
  out->data_bytes = r->n - out->data_offset;
  for (size_t i = 0; i < out->n_tensors; i++) {
    if (out->tensors[i].offset > out->data_bytes) {
      qv_error_set(err, QV_EFORMAT, "GGUF tensor %zu '%.*s' starts past the end of the file", i,
                   (int)(out->tensors[i].name_len > 96 ? 96 : out->tensors[i].name_len), out->tensors[i].name);
      gguf_free(out);
      return QV_EFORMAT;
    }
  }
  return 0;
}

int gguf_parse(const void *data, size_t len, gguf_ctx *out, qv_error *err) {
  memset(out, 0, sizeof *out);
  rd r = {data, len, 0};
  uint32_t magic;
  uint64_t n_kv;
  if (rd_u32(&r, &magic) || memcmp(data, "GGUF", 4) != 0) return qv_error_set(err, QV_EFORMAT, "not a GGUF file (bad magic)");
  if (rd_u32(&r, &out->version) || (out->version != 2 && out->version != 3))
    return qv_error_set(err, QV_EUNSUPPORTED, "GGUF version %u is not supported (2 or 3)", out->version);
  uint64_t n_tensors;
  if (rd_u64(&r, &n_tensors) || rd_u64(&r, &n_kv)) return qv_error_set(err, QV_EFORMAT, "GGUF header truncated");
  /* Each key-value takes at least 8 + 4 + 1 bytes: bounds the count before allocating. */
  if (n_kv > (len - r.off) / 13) return qv_error_set(err, QV_EFORMAT, "GGUF header claims %llu key-values, file too short", (unsigned long long)n_kv);
  out->kv = calloc(n_kv ? (size_t)n_kv : 1, sizeof *out->kv);
  if (!out->kv) return qv_error_set(err, QV_ENOMEM, "out of memory");
  for (uint64_t i = 0; i < n_kv; i++) {
    gguf_kv *kv = &out->kv[i];
    if (rd_str(&r, &kv->key, &kv->key_len) || rd_u32(&r, &kv->type) || kv->type >= GGUF_T_COUNT) {
      gguf_free(out);
      return qv_error_set(err, QV_EFORMAT, "GGUF key-value %llu: truncated or bad type", (unsigned long long)i);
    }
    size_t start = r.off;
    if (kv->type == GGUF_T_ARRAY) {
      if (rd_u32(&r, &kv->arr_type) || rd_u64(&r, &kv->arr_n)) {
        qv_error_set(err, QV_EFORMAT, "GGUF key %.*s: truncated array header", (int)(kv->key_len > 64 ? 64 : kv->key_len), kv->key);
        gguf_free(out);
        return QV_EFORMAT;
      }
      r.off = start;
      kv->val = r.p + start + 12;
    } else {
      kv->val = r.p + start;
    }
    if (skip_value(&r, kv->type, 0)) {
      qv_error_set(err, QV_EFORMAT, "GGUF key %.*s: value truncated or malformed", (int)(kv->key_len > 64 ? 64 : kv->key_len), kv->key);
      gguf_free(out);
      return QV_EFORMAT;
    }
    out->n_kv++;
  }
  return parse_tensors(out, &r, n_tensors, err);
}

void gguf_free(gguf_ctx *g) {
  if (!g) return;
  free(g->kv);
  free(g->tensors);
  g->kv = NULL;
  g->tensors = NULL;
  g->n_kv = g->n_tensors = 0;
}

const gguf_kv *gguf_find(const gguf_ctx *g, const char *key) {
  size_t n = strlen(key);
  for (size_t i = 0; i < g->n_kv; i++)
    if (g->kv[i].key_len == n && memcmp(g->kv[i].key, key, n) == 0) return &g->kv[i];
  return NULL;
}

static int scalar_i64(uint32_t t, const uint8_t *p, int64_t *out) {
  switch (t) {
    case GGUF_T_U8: case GGUF_T_BOOL: *out = p[0]; return 0;
    case GGUF_T_I8: *out = (int8_t)p[0]; return 0;
    case GGUF_T_U16: { uint16_t v; memcpy(&v, p, 2); *out = v; return 0; }
    case GGUF_T_I16: { int16_t v; memcpy(&v, p, 2); *out = v; return 0; }
    case GGUF_T_U32: { uint32_t v; memcpy(&v, p, 4); *out = v; return 0; }
    case GGUF_T_I32: { int32_t v; memcpy(&v, p, 4); *out = v; return 0; }
    case GGUF_T_U64: { uint64_t v; memcpy(&v, p, 8); if (v > INT64_MAX) return -1; *out = (int64_t)v; return 0; }
    case GGUF_T_I64: { int64_t v; memcpy(&v, p, 8); *out = v; return 0; }
    default: return -1;
  }
}

int gguf_get_i64(const gguf_ctx *g, const char *key, int64_t *out) {
  const gguf_kv *kv = gguf_find(g, key);
  if (!kv) return QV_ENOTFOUND;
  return scalar_i64(kv->type, kv->val, out) ? QV_EFORMAT : 0;
}

int gguf_get_bool(const gguf_ctx *g, const char *key, int *out) {
  int64_t v;
  int rc = gguf_get_i64(g, key, &v);
  if (rc == 0) *out = v != 0;
  return rc;
}

int gguf_get_str(const gguf_ctx *g, const char *key, const char **s, size_t *n) {
  const gguf_kv *kv = gguf_find(g, key);
  if (!kv) return QV_ENOTFOUND;
  if (kv->type != GGUF_T_STRING) return QV_EFORMAT;
  uint64_t len;
  memcpy(&len, kv->val, 8);
  *s = (const char *)kv->val + 8;
  *n = (size_t)len;
  return 0;
}

double gguf_arr_num(const gguf_kv *kv, uint64_t i) {
  const uint8_t *p = kv->val + (size_t)i * TYPE_SIZE[kv->arr_type < GGUF_T_COUNT ? kv->arr_type : 0];
  if (kv->arr_type == GGUF_T_F32) { float f; memcpy(&f, p, 4); return f; }
  if (kv->arr_type == GGUF_T_F64) { double d; memcpy(&d, p, 8); return d; }
  int64_t v = 0;
  if (kv->arr_type == GGUF_T_STRING || kv->arr_type == GGUF_T_ARRAY || scalar_i64(kv->arr_type, p, &v)) return 0;
  return (double)v;
}

void gguf_arr_next_str(const uint8_t **pos, const char **s, size_t *n) {
  uint64_t len;
  memcpy(&len, *pos, 8);
  *s = (const char *)*pos + 8;
  *n = (size_t)len;
  *pos += 8 + (size_t)len;
}
