/* safetensors reader: one file or a sharded set (model.safetensors.index.json), mmap'd read-only.
 *
 * Format: an 8-byte little-endian header length N, N bytes of JSON mapping tensor names to
 * {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the byte after the
 * header), then the data. Every length, offset and shape is validated against the file size at
 * open, so a truncated or lying file is an error naming the file and tensor, never a crash. */
#ifndef QV_LOADER_SAFETENSORS_H
#define QV_LOADER_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "core/dtype.h"
#include "quiver/error.h"

#define ST_MAX_DIMS 8

typedef struct st_tensor {
  const char *name;   /* owned by the set */
  const char *file;   /* base name of the file holding it; owned by the set */
  int dtype;          /* a qv_dtype, or -1 for a dtype safetensors knows but quiver does not load */
  char dtype_str[12]; /* the file's dtype string ("F32", "F8_E4M3", ...) */
  int n_dims;
  int64_t shape[ST_MAX_DIMS];
  int64_t n_elems;
  const void *data;   /* points into the mapping; valid until st_close */
  size_t n_bytes;
} st_tensor;

typedef struct st_set st_set;

/* Opens the safetensors of a model directory: model.safetensors.index.json with its shards, or
 * model.safetensors. */
int st_open_dir(const char *dir, st_set **out, qv_error *err);
/* Opens one .safetensors file. */
int st_open_file(const char *path, st_set **out, qv_error *err);
void st_close(st_set *s);

/* The tensor of that name or NULL. */
const st_tensor *st_find(const st_set *s, const char *name);
int st_count(const st_set *s);
const st_tensor *st_at(const st_set *s, int idx);

#endif
