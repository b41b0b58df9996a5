/* GGUF model files: opening (one file, a directory, split sets), validation of every tensor
 * against the file, the Llama-family configuration from the metadata, and the name mapping
 * from the Hugging Face names the model code asks for to llama.cpp's. See gguf_model.h. */
#include "loader/gguf_model.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "models/model.h"
#include "quant/quant.h"

#define GGUF_MAX_SPLITS 256

typedef struct gguf_file {
  char *path;
  const char *base; /* into path */
  void *map;
  size_t size;
  gguf_ctx ctx;
} gguf_file;

struct gguf_model {
  gguf_file *files;
  int n_files;
  gguf_wt *wts;
  int n_wts;
};

/* ---- paths ---- */

static int has_suffix(const char *s, const char *suf) {
  size_t n = strlen(s), m = strlen(suf);
  return n >= m && strcmp(s + n - m, suf) == 0;
}

static int file_has_magic(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return 0;
  char magic[4] = {0};
  size_t got = fread(magic, 1, 4, f);
  fclose(f);
  return got == 4 && memcmp(magic, "GGUF", 4) == 0;
}

/* Parses "...-%05d-of-%05d.gguf": returns 1 and the index and count (1-based). */
static int split_parts(const char *path, int *idx, int *count) {
  size_t n = strlen(path);
  if (n < 20 || !has_suffix(path, ".gguf")) return 0;
  const char *p = path + n - 5 - 15; /* "-00001-of-00003" */
  if (p[0] != '-' || memcmp(p + 6, "-of-", 4) != 0) return 0;
  int a = 0, b = 0;
  for (int i = 1; i <= 5; i++) {
    if (p[i] < '0' || p[i] > '9' || p[i + 9] < '0' || p[i + 9] > '9') return 0;
    a = a * 10 + (p[i] - '0');
    b = b * 10 + (p[i + 9] - '0');
  }
  if (a < 1 || b < 1 || a > b) return 0;
  *idx = a;
  *count = b;
  return 1;
}

int gguf_model_is_path(const char *path) {
  struct stat st;
  if (!path || stat(path, &st) != 0) return 0;
  if (S_ISREG(st.st_mode)) return has_suffix(path, ".gguf") || file_has_magic(path);
  if (!S_ISDIR(st.st_mode)) return 0;
  char p[4096];
  snprintf(p, sizeof p, "%s/config.json", path);
  if (stat(p, &st) == 0) return 0;
  DIR *d = opendir(path);
  if (!d) return 0;
  int found = 0;
  for (struct dirent *e; !found && (e = readdir(d));) found = e->d_name[0] != '.' && has_suffix(e->d_name, ".gguf");
  closedir(d);
  return found;
}

int gguf_model_resolve(const char *path, char **out, qv_error *err) {
  *out = NULL;
  struct stat st;
  if (stat(path, &st) != 0) return qv_error_set(err, QV_ENOTFOUND, "%s: %s", path, strerror(errno));
  if (!S_ISDIR(st.st_mode)) {
    *out = strdup(path);
    return *out ? 0 : qv_error_set(err, QV_ENOMEM, "out of memory");
  }
  DIR *d = opendir(path);
  if (!d) return qv_error_set(err, QV_EIO, "%s: %s", path, strerror(errno));
  char *pick = NULL;
  int n_models = 0;
  for (struct dirent *e; (e = readdir(d));) {
    int idx, cnt;
    if (e->d_name[0] == '.' || !has_suffix(e->d_name, ".gguf")) continue;
    if (split_parts(e->d_name, &idx, &cnt) && idx != 1) continue; /* later splits of a set */
    n_models++;
    if (!pick || strcmp(e->d_name, pick) < 0) {
      free(pick);
      pick = strdup(e->d_name);
      if (!pick) {
        closedir(d);
        return qv_error_set(err, QV_ENOMEM, "out of memory");
      }
    }
  }
  closedir(d);
  if (n_models != 1) {
    free(pick);
    return qv_error_set(err, n_models ? QV_EINVAL : QV_ENOTFOUND,
                        "%s: %d GGUF models in the directory; name the file with --model", path, n_models);
  }
  size_t n = strlen(path) + strlen(pick) + 2;
  *out = malloc(n);
  if (*out) snprintf(*out, n, "%s/%s", path, pick);
  free(pick);
  return *out ? 0 : qv_error_set(err, QV_ENOMEM, "out of memory");
}

/* ---- opening ---- */

static int map_file(gguf_file *f, qv_error *err) {
  int fd = open(f->path, O_RDONLY);
  if (fd < 0) return qv_error_set(err, errno == ENOENT ? QV_ENOTFOUND : QV_EIO, "%s: %s", f->path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size < 24) {
    close(fd);
    return qv_error_set(err, QV_EFORMAT, "%s: not a GGUF file (too short or not a regular file)", f->path);
  }
  f->size = (size_t)st.st_size;
  f->map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (f->map == MAP_FAILED) {
    f->map = NULL;
    return qv_error_set(err, QV_EIO, "%s: mmap failed", f->path);
  }
  int rc = gguf_parse(f->map, f->size, &f->ctx, err);
  if (rc) qv_error_prefix(err, "%s", f->path);
  return rc;
}

static int cmp_offset(const void *a, const void *b) {
  const gguf_wt *x = *(const gguf_wt *const *)a, *y = *(const gguf_wt *const *)b;
  uintptr_t p = (uintptr_t)x->data, q = (uintptr_t)y->data;
  return p < q ? -1 : p > q;
}

static int cmp_name(const void *a, const void *b) {
  return strcmp(((const gguf_wt *)a)->name, ((const gguf_wt *)b)->name);
}

/* Checks one tensor info of file f and fills w. */
static int check_tensor(const gguf_file *f, const gguf_tensor *t, gguf_wt *w, qv_error *err) {
  w->name = malloc(t->name_len + 1);
  if (!w->name) return qv_error_set(err, QV_ENOMEM, "out of memory");
  memcpy(w->name, t->name, t->name_len);
  w->name[t->name_len] = '\0';
  w->file = f->base;
  if (t->name_len == 0 || strlen(w->name) != t->name_len)
    return qv_error_set(err, QV_EFORMAT, "%s: a tensor has an empty name or one with a NUL byte", f->base);
  char tn[32];
  if (quant_dtype_from_ggml(t->type, &w->dtype))
    return qv_error_set(err, QV_EUNSUPPORTED,
                        "%s: tensor '%s' has type %s (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, "
                        "Q4_K, Q5_K, Q6_K)", f->base, w->name, quant_ggml_type_name(t->type, tn, sizeof tn));
  w->n_dims = t->n_dims;
  uint64_t rows = 1;
  for (int d = 0; d < 4; d++) {
    w->dims[d] = (int64_t)t->dims[d]; /* gguf_parse bounds each dim to 2^40 */
    if (d > 0) {
      if (rows > ((uint64_t)1 << 40) / t->dims[d])
        return qv_error_set(err, QV_EFORMAT, "%s: tensor '%s' has too many elements", f->base, w->name);
      rows *= t->dims[d];
    }
  }
  size_t rb = qv_dtype_row_bytes(w->dtype, w->dims[0]);
  if (!rb)
    return qv_error_set(err, QV_EFORMAT, "%s: tensor '%s' of type %s has rows of %lld elements, not a multiple of its "
                        "block size %d", f->base, w->name, qv_dtype_name(w->dtype), (long long)w->dims[0],
                        qv_dtype_block_elems(w->dtype));
  if (rows > (uint64_t)SIZE_MAX / rb || rows * rb > ((uint64_t)1 << 42))
    return qv_error_set(err, QV_EFORMAT, "%s: tensor '%s' is too large", f->base, w->name);
  w->n_bytes = (size_t)(rows * rb);
  if (t->offset > f->ctx.data_bytes || w->n_bytes > f->ctx.data_bytes - t->offset)
    return qv_error_set(err, QV_EFORMAT, "%s: tensor '%s' (%zu bytes at data offset %llu) runs past the end of the "
                        "file (%zu data bytes)", f->base, w->name, w->n_bytes, (unsigned long long)t->offset,
                        f->ctx.data_bytes);
  w->data = (const uint8_t *)f->map + f->ctx.data_offset + t->offset;
  return 0;
}

/* Opens the split set whose first file is path (count files). */
static int open_files(gguf_model *g, const char *path, qv_error *err) {
  int idx = 0, count = 1;
  if (split_parts(path, &idx, &count) && idx != 1)
    return qv_error_set(err, QV_EINVAL, "%s: split %d of %d; name the first split (-00001-of-%05d.gguf)", path, idx,
                        count, count);
  if (count > GGUF_MAX_SPLITS) return qv_error_set(err, QV_EUNSUPPORTED, "%s: more than %d splits", path, GGUF_MAX_SPLITS);
  g->files = calloc((size_t)count, sizeof *g->files);
  if (!g->files) return qv_error_set(err, QV_ENOMEM, "out of memory");
  size_t n = strlen(path);
  for (int i = 0; i < count; i++) {
    gguf_file *f = &g->files[i];
    f->path = strdup(path);
    if (!f->path) return qv_error_set(err, QV_ENOMEM, "out of memory");
    if (count > 1) {
      char digits[16];
      snprintf(digits, sizeof digits, "%05d", i + 1);
      memcpy(f->path + n - 19, digits, 5);
    }
    const char *slash = strrchr(f->path, '/');
    f->base = slash ? slash + 1 : f->path;
    g->n_files = i + 1;
    int rc = map_file(f, err);
    if (rc) return rc;
    /* A split set says how many files it has; a lone file must not claim to be a split. */
    int64_t sc = 0;
    if (gguf_get_i64(&f->ctx, "split.count", &sc) == 0 && sc != count)
      return qv_error_set(err, QV_EFORMAT, "%s: split.count %lld but the file name says %d files", f->path,
                          (long long)sc, count);
  }
  return 0;
}

int gguf_model_open(const char *path, gguf_model **out, qv_error *err) {
  *out = NULL;
  char *file = NULL;
  int rc = gguf_model_resolve(path, &file, err);
  if (rc) return rc;
  gguf_model *g = calloc(1, sizeof *g);
  if (!g) {
    free(file);
    return qv_error_set(err, QV_ENOMEM, "out of memory");
  }
  if ((rc = open_files(g, file, err))) goto fail;
  size_t total = 0;
  for (int i = 0; i < g->n_files; i++) total += g->files[i].ctx.n_tensors;
  if (total == 0 || total > (1u << 20)) {
    rc = qv_error_set(err, QV_EFORMAT, "%s: %zu tensors", file, total);
    goto fail;
  }
  g->wts = calloc(total, sizeof *g->wts);
  gguf_wt **by_off = calloc(total, sizeof *by_off);
  if (!g->wts || !by_off) {
    free(by_off);
    rc = qv_error_set(err, QV_ENOMEM, "out of memory");
    goto fail;
  }
  for (int i = 0; i < g->n_files && !rc; i++)
    for (size_t j = 0; j < g->files[i].ctx.n_tensors && !rc; j++) {
      gguf_wt *w = &g->wts[g->n_wts++];
      rc = check_tensor(&g->files[i], &g->files[i].ctx.tensors[j], w, err);
    }
  if (!rc) {
    /* No two tensors of a file may overlap (a hostile file could alias weights). */
    for (int i = 0; i < g->n_wts; i++) by_off[i] = &g->wts[i];
    qsort(by_off, (size_t)g->n_wts, sizeof *by_off, cmp_offset);
    for (int i = 1; i < g->n_wts && !rc; i++) {
      const gguf_wt *a = by_off[i - 1], *b = by_off[i];
      if (a->file == b->file && (const uint8_t *)a->data + a->n_bytes > (const uint8_t *)b->data)
        rc = qv_error_set(err, QV_EFORMAT, "%s: tensors '%s' and '%s' overlap", a->file, a->name, b->name);
    }
  }
  free(by_off);
  if (rc) goto fail;
  qsort(g->wts, (size_t)g->n_wts, sizeof *g->wts, cmp_name);
  for (int i = 1; i < g->n_wts; i++)
    if (!strcmp(g->wts[i - 1].name, g->wts[i].name)) {
      rc = qv_error_set(err, QV_EFORMAT, "%s: tensor '%s' appears twice", g->wts[i].file, g->wts[i].name);
      goto fail;
    }
  free(file);
  *out = g;
  return 0;
fail:
  free(file);
  gguf_model_close(g);
  return rc;
}

void gguf_model_close(gguf_model *g) {
  if (!g) return;
  for (int i = 0; i < g->n_files; i++) {
    gguf_free(&g->files[i].ctx);
    if (g->files[i].map) munmap(g->files[i].map, g->files[i].size);
    free(g->files[i].path);
  }
  for (int i = 0; i < g->n_wts; i++) free(g->wts[i].name);
  free(g->wts);
  free(g->files);
  free(g);
}

const gguf_ctx *gguf_model_meta(const gguf_model *g) { return &g->files[0].ctx; }
const char *gguf_model_file(const gguf_model *g) { return g->files[0].path; }
int gguf_model_n_tensors(const gguf_model *g) { return g->n_wts; }
const gguf_wt *gguf_model_tensor_at(const gguf_model *g, int i) { return &g->wts[i]; }

const gguf_wt *gguf_model_find(const gguf_model *g, const char *name) {
  int lo = 0, hi = g->n_wts - 1;
  while (lo <= hi) {
    int mid = (lo + hi) / 2, c = strcmp(g->wts[mid].name, name);
    if (!c) return &g->wts[mid];
    if (c < 0) lo = mid + 1;
    else hi = mid - 1;
  }
  return NULL;
}

void gguf_model_release(const void *p, size_t n) {
  long ps = sysconf(_SC_PAGESIZE);
  if (!p || ps <= 0) return;
  uintptr_t a = (uintptr_t)p, e = a + n;
  uintptr_t a0 = (a + (uintptr_t)ps - 1) & ~((uintptr_t)ps - 1), e0 = e & ~((uintptr_t)ps - 1);
  if (e0 > a0) madvise((void *)a0, e0 - a0, MADV_DONTNEED);
}

/* ---- configuration ---- */

/* Reads "<arch>.<key>" as an integer in [lo, hi]; def when absent (def < lo: required). */
static int meta_int(const gguf_ctx *m, const char *arch, const char *key, int64_t def, int64_t lo, int64_t hi,
                    int32_t *out, qv_error *err) {
  char k[96];
  snprintf(k, sizeof k, "%s.%s", arch, key);
  int64_t v;
  int rc = gguf_get_i64(m, k, &v);
  if (rc == QV_ENOTFOUND) {
    if (def < lo) return qv_error_set(err, QV_EFORMAT, "missing metadata key %s", k);
    v = def;
  } else if (rc) {
    return qv_error_set(err, QV_EFORMAT, "metadata key %s is not an integer", k);
  }
  if (v < lo || v > hi)
    return qv_error_set(err, QV_EFORMAT, "metadata key %s = %lld is outside [%lld, %lld]", k, (long long)v,
                        (long long)lo, (long long)hi);
  *out = (int32_t)v;
  return 0;
}

static int meta_float(const gguf_ctx *m, const char *arch, const char *key, double def, double lo, double hi,
                      float *out, qv_error *err) {
  char k[96];
  snprintf(k, sizeof k, "%s.%s", arch, key);
  const gguf_kv *kv = gguf_find(m, k);
  double v = def;
  if (kv) {
    if (kv->type == GGUF_T_F32) {
      float f;
      memcpy(&f, kv->val, 4);
      v = f;
    } else if (kv->type == GGUF_T_F64) {
      memcpy(&v, kv->val, 8);
    } else {
      int64_t i;
      if (gguf_get_i64(m, k, &i)) return qv_error_set(err, QV_EFORMAT, "metadata key %s is not a number", k);
      v = (double)i;
    }
  }
  if (!(v >= lo && v <= hi)) return qv_error_set(err, QV_EFORMAT, "metadata key %s = %g is outside [%g, %g]", k, v, lo, hi);
  *out = (float)v;
  return 0;
}

static void add_eos(qv_model_config *c, int64_t id) {
  if (id < 0 || id >= c->vocab_size || c->n_eos >= QV_MAX_EOS) return;
  for (int i = 0; i < c->n_eos; i++)
    if (c->eos_ids[i] == id) return;
  c->eos_ids[c->n_eos++] = (int32_t)id;
}

/* Gemma 3 (text): what llama.cpp's converter leaves out of the metadata, llama.cpp and
 * transformers take from the architecture: the local rope base 10,000 for sliding layers, every
 * 6th layer global, query_pre_attn_scalar = head_dim (llama.cpp's rule; 27B, 62 layers, uses
 * hidden/heads). Norm weights are stored with Gemma's +1 already added (the weight source undoes
 * that as transformers does, see models/model_gguf.c). */
static int gemma3_config(const gguf_model *g, qv_model_config *c, qv_error *err) {
  const gguf_ctx *m = gguf_model_meta(g);
  int rc = meta_int(m, c->arch, "attention.sliding_window", 0, 0, 1 << 24, &c->sliding_window, err);
  if (rc) return rc;
  c->family = QV_FAMILY_GEMMA3;
  c->act = QV_ACT_GELU_TANH;
  c->norm_plus_one = 1;
  c->sandwich_norm = 1;
  c->qk_norm = 1;
  c->embed_scale = (float)sqrt((double)c->dim);
  double qpas = c->n_layer == 62 ? (double)c->dim / c->n_head : (double)c->head_dim;
  c->attn_scale = (float)pow(qpas, -0.5);
  c->rope_local_theta = 10000.0f;
  c->rot_dim = c->head_dim;
  for (int32_t i = 0; i < c->n_layer; i++)
    c->layer_flags[i] = (uint8_t)((i + 1) % 6 && c->sliding_window ? QV_LAYER_SLIDING : 0);
  return 0;
}

int gguf_model_config(const gguf_model *g, qv_model_config *c, qv_error *err) {
  memset(c, 0, sizeof *c);
  const gguf_ctx *m = gguf_model_meta(g);
  const char *arch;
  size_t an;
  if (gguf_get_str(m, "general.architecture", &arch, &an))
    return qv_error_set(err, QV_EFORMAT, "missing metadata key general.architecture");
  static const char *archs[] = {"llama", "qwen2", "qwen3", "gemma3"};
  int known = 0;
  for (size_t i = 0; i < sizeof archs / sizeof archs[0]; i++)
    known |= an == strlen(archs[i]) && !memcmp(arch, archs[i], an);
  if (!known)
    return qv_error_set(err, QV_EUNSUPPORTED, "architecture '%.*s' is not supported for GGUF (llama, qwen2, qwen3, gemma3)",
                        (int)(an > 40 ? 40 : an), arch);
  snprintf(c->arch, sizeof c->arch, "%.*s", (int)an, arch);
  const char *a = c->arch;
  const gguf_wt *emb = gguf_model_find(g, "token_embd.weight");
  if (!emb || emb->n_dims != 2) return qv_error_set(err, QV_ENOTFOUND, "missing 2-D tensor 'token_embd.weight'");
  int rc;
  if ((rc = meta_int(m, a, "embedding_length", -1, 1, 1 << 16, &c->dim, err)) ||
      (rc = meta_int(m, a, "block_count", -1, 1, 1024, &c->n_layer, err)) ||
      (rc = meta_int(m, a, "attention.head_count", -1, 1, 1024, &c->n_head, err)) ||
      (rc = meta_int(m, a, "attention.head_count_kv", c->n_head, 1, 1024, &c->n_kv_head, err)) ||
      (rc = meta_int(m, a, "feed_forward_length", -1, 1, 1 << 18, &c->ffn_dim, err)) ||
      (rc = meta_int(m, a, "context_length", 2048, 1, 1 << 24, &c->max_pos, err)) ||
      (rc = meta_int(m, a, "attention.key_length", c->dim / c->n_head, 1, 1024, &c->head_dim, err)) ||
      (rc = meta_float(m, a, "attention.layer_norm_rms_epsilon", 1e-6, 0.0, 1.0, &c->norm_eps, err)) ||
      (rc = meta_float(m, a, "rope.freq_base", 10000.0, 1.0, 1e12, &c->rope_theta, err)))
    return rc;
  int32_t vl = 0, rot = 0;
  if ((rc = meta_int(m, a, "attention.value_length", c->head_dim, 1, 1024, &vl, err)) ||
      (rc = meta_int(m, a, "rope.dimension_count", c->head_dim, 1, 1024, &rot, err)))
    return rc;
  if (vl != c->head_dim || rot != c->head_dim)
    return qv_error_set(err, QV_EUNSUPPORTED, "%s: value_length %d / rope.dimension_count %d differ from the head size %d",
                        a, vl, rot, c->head_dim);
  if (c->n_head % c->n_kv_head || c->head_dim % 2)
    return qv_error_set(err, QV_EFORMAT, "%s: %d heads are not a multiple of %d KV heads, or head size %d is odd", a,
                        c->n_head, c->n_kv_head, c->head_dim);
  if (emb->dims[0] != c->dim || emb->dims[1] > (1 << 22))
    return qv_error_set(err, QV_EFORMAT, "tensor 'token_embd.weight' is [%lld, %lld], expected [%d, vocab]",
                        (long long)emb->dims[0], (long long)emb->dims[1], c->dim);
  c->vocab_size = (int32_t)emb->dims[1];
  /* Rope scaling the converter records in metadata; llama3-style scaling is baked into a
   * rope_freqs tensor instead, which quiver does not read yet. */
  const char *st;
  size_t sn;
  char key[96];
  snprintf(key, sizeof key, "%s.rope.scaling.type", a);
  if (gguf_model_find(g, "rope_freqs.weight"))
    return qv_error_set(err, QV_EUNSUPPORTED, "rope_freqs.weight (Llama 3.1 rope scaling in GGUF) is not supported yet");
  if (gguf_get_str(m, key, &st, &sn) == 0 && !(sn == 4 && !memcmp(st, "none", 4))) {
    if (sn == 6 && !memcmp(st, "linear", 6)) c->rope_scaling = QV_ROPE_SCALING_LINEAR;
    else if (sn == 4 && !memcmp(st, "yarn", 4)) c->rope_scaling = QV_ROPE_SCALING_YARN;
    else return qv_error_set(err, QV_EUNSUPPORTED, "%s = '%.*s' is not supported (linear, yarn)", key, (int)(sn > 20 ? 20 : sn), st);
    if ((rc = meta_float(m, a, "rope.scaling.factor", 1.0, 1.0, 1e6, &c->rope_factor, err)) ||
        (rc = meta_int(m, a, "rope.scaling.original_context_length", c->max_pos, 1, 1 << 24, &c->rope_orig_max_pos, err)))
      return rc;
    c->yarn_beta_fast = 32.0f;
    c->yarn_beta_slow = 1.0f;
  }
  /* llama.cpp's converter permutes Llama's q/k rows so rotary pairs are adjacent (ggml's
   * "normal" rope); Qwen2/3 keep Hugging Face's rotate-half layout (ggml's neox rope). */
  c->rope_interleaved = !strcmp(a, "llama");
  c->qkv_bias = gguf_model_find(g, "blk.0.attn_q.bias") != NULL;
  c->o_bias = gguf_model_find(g, "blk.0.attn_output.bias") != NULL;
  c->qk_norm = !strcmp(a, "qwen3");
  if (!strcmp(a, "gemma3") && (rc = gemma3_config(g, c, err))) return rc;
  c->tie_embeddings = gguf_model_find(g, "output.weight") == NULL;
  int64_t v;
  c->bos_id = gguf_get_i64(m, "tokenizer.ggml.bos_token_id", &v) == 0 && v >= 0 && v < c->vocab_size ? (int32_t)v : -1;
  static const char *eos_keys[] = {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                                   "tokenizer.ggml.eom_token_id"};
  for (size_t i = 0; i < sizeof eos_keys / sizeof eos_keys[0]; i++)
    if (gguf_get_i64(m, eos_keys[i], &v) == 0) add_eos(c, v);
  /* Gemma 3's chat turns end with <end_of_turn>, which its files do not name in the metadata:
   * a stop id too, as llama.cpp and transformers' generation_config treat it. */
  const gguf_kv *toks = gguf_find(m, "tokenizer.ggml.tokens");
  if (c->family == QV_FAMILY_GEMMA3 && toks && toks->type == GGUF_T_ARRAY && toks->arr_type == GGUF_T_STRING) {
    const uint8_t *pos = toks->val;
    for (uint64_t i = 0; i < toks->arr_n && i < (uint64_t)c->vocab_size; i++) {
      const char *ts;
      size_t tn;
      gguf_arr_next_str(&pos, &ts, &tn);
      if (tn == 13 && !memcmp(ts, "<end_of_turn>", 13)) {
        add_eos(c, (int64_t)i);
        break;
      }
    }
  }
  /* The file's tensor types: one name or "mixed" (quiver info lists them per type). */
  qv_dtype first = QV_DTYPE_COUNT;
  int mixed = 0;
  for (int i = 0; i < g->n_wts; i++) {
    if (g->wts[i].n_dims < 2) continue;
    if (first == QV_DTYPE_COUNT) first = g->wts[i].dtype;
    else mixed |= g->wts[i].dtype != first;
  }
  snprintf(c->weight_dtype, sizeof c->weight_dtype, "%s", mixed ? "mixed" : qv_dtype_name(first));
  return 0;
}

/* ---- names ---- */

int gguf_model_hf_name(const char *hf, int sandwich, char *out, size_t cap) {
  static const char *top[][2] = {{"model.embed_tokens.weight", "token_embd.weight"},
                                 {"model.norm.weight", "output_norm.weight"},
                                 {"lm_head.weight", "output.weight"}};
  for (size_t i = 0; i < sizeof top / sizeof top[0]; i++)
    if (!strcmp(hf, top[i][0])) return snprintf(out, cap, "%s", top[i][1]) < (int)cap ? 0 : -1;
  static const char *layer[][2] = {
      {"input_layernorm", "attn_norm"}, {"self_attn.q_proj", "attn_q"}, {"self_attn.k_proj", "attn_k"},
      {"self_attn.v_proj", "attn_v"}, {"self_attn.o_proj", "attn_output"}, {"self_attn.q_norm", "attn_q_norm"},
      {"self_attn.k_norm", "attn_k_norm"}, {"post_attention_layernorm", "ffn_norm"}, {"mlp.gate_proj", "ffn_gate"},
      {"mlp.up_proj", "ffn_up"}, {"mlp.down_proj", "ffn_down"}};
  /* Gemma's norms around attention and MLP: llama.cpp's ffn_norm is the pre-feedforward one. */
  static const char *gemma[][2] = {{"post_attention_layernorm", "post_attention_norm"},
                                   {"pre_feedforward_layernorm", "ffn_norm"},
                                   {"post_feedforward_layernorm", "post_ffw_norm"}};
  int l, used = 0;
  if (sscanf(hf, "model.layers.%d.%n", &l, &used) != 1 || used == 0 || l < 0) return -1;
  const char *rest = hf + used;
  for (size_t i = 0; sandwich && i < sizeof gemma / sizeof gemma[0]; i++) {
    size_t n = strlen(gemma[i][0]);
    if (!strncmp(rest, gemma[i][0], n) && !strcmp(rest + n, ".weight"))
      return snprintf(out, cap, "blk.%d.%s.weight", l, gemma[i][1]) < (int)cap ? 0 : -1;
  }
  for (size_t i = 0; i < sizeof layer / sizeof layer[0]; i++) {
    size_t n = strlen(layer[i][0]);
    if (!strncmp(rest, layer[i][0], n) && (!strcmp(rest + n, ".weight") || !strcmp(rest + n, ".bias")))
      return snprintf(out, cap, "blk.%d.%s%s", l, layer[i][1], rest + n) < (int)cap ? 0 : -1;
  }
  return -1;
}

/* ---- chat template ---- */

int gguf_model_chat_template(const char *path, char **out, qv_error *err) {
  *out = NULL;
  char *file = NULL;
  int rc = gguf_model_resolve(path, &file, err);
  if (rc) return rc;
  gguf_file f = {.path = file, .base = file};
  rc = map_file(&f, err);
  if (!rc) {
    const char *s;
    size_t n;
    rc = gguf_get_str(&f.ctx, "tokenizer.chat_template", &s, &n);
    if (rc == QV_ENOTFOUND) rc = qv_error_set(err, rc, "%s: no tokenizer.chat_template", file);
    else if (rc) rc = qv_error_set(err, rc, "%s: tokenizer.chat_template is not a string", file);
    else if (memchr(s, '\0', n)) rc = qv_error_set(err, QV_EFORMAT, "%s: tokenizer.chat_template has a NUL byte", file);
    else if (!(*out = malloc(n + 1))) rc = qv_error_set(err, QV_ENOMEM, "out of memory");
    else {
      memcpy(*out, s, n);
      (*out)[n] = '\0';
    }
  }
  gguf_free(&f.ctx);
  if (f.map) munmap(f.map, f.size);
  free(file);
  return rc;
}
