/* A small, bounds-checked reader for the GGUF container (v2/v3): header, key-value metadata and
 * tensor infos (name, shape, ggml type, offset into the data section). Every length, count and
 * offset is checked against the buffer, so a truncated or corrupt file is an error, never a read
 * out of bounds. Tensor byte sizes depend on ggml block types and are left to the caller (the
 * loader), which must check offset + size <= data_bytes. The tokenizer uses the metadata only;
 * the loader subsystem can move this file to src/loader. The buffer is borrowed: it must outlive
 * the gguf_ctx. */
#ifndef QV_TOK_GGUF_H
#define QV_TOK_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "quiver/error.h"

enum {
  GGUF_T_U8 = 0, GGUF_T_I8, GGUF_T_U16, GGUF_T_I16, GGUF_T_U32, GGUF_T_I32, GGUF_T_F32,
  GGUF_T_BOOL, GGUF_T_STRING, GGUF_T_ARRAY, GGUF_T_U64, GGUF_T_I64, GGUF_T_F64, GGUF_T_COUNT
};

typedef struct gguf_kv {
  const char *key; size_t key_len; /* borrowed from the buffer, not NUL-terminated */
  uint32_t type;                   /* GGUF_T_* */
  const uint8_t *val;              /* scalar bytes, string (u64 length + bytes), or first array element */
  uint32_t arr_type;               /* GGUF_T_ARRAY: element type */
  uint64_t arr_n;                  /* GGUF_T_ARRAY: element count */
} gguf_kv;

typedef struct gguf_tensor {
  const char *name; size_t name_len; /* borrowed from the buffer, not NUL-terminated */
  uint32_t n_dims;                   /* 1..4 */
  uint64_t dims[4];                  /* ne[0] (fastest) first; unused dims are 1 */
  uint32_t type;                     /* ggml type id, not interpreted here */
  uint64_t offset;                   /* bytes from the start of the data section, aligned */
} gguf_tensor;

typedef struct gguf_ctx {
  uint32_t version;
  gguf_kv *kv; size_t n_kv;          /* owned */
  gguf_tensor *tensors; size_t n_tensors; /* owned */
  uint32_t alignment;                /* general.alignment or 32 */
  size_t data_offset;                /* start of the data section in the buffer */
  size_t data_bytes;                 /* bytes from data_offset to the end of the buffer */
} gguf_ctx;

int gguf_parse(const void *data, size_t len, gguf_ctx *out, qv_error *err);
void gguf_free(gguf_ctx *g);
const gguf_kv *gguf_find(const gguf_ctx *g, const char *key); /* NULL when absent */
/* Scalars: integer types convert when the value fits; 0 or QV_ENOTFOUND / QV_EFORMAT. */
int gguf_get_i64(const gguf_ctx *g, const char *key, int64_t *out);
int gguf_get_bool(const gguf_ctx *g, const char *key, int *out);
int gguf_get_str(const gguf_ctx *g, const char *key, const char **s, size_t *n);
/* Array element i as a number (integer or float element types). Caller checks i < arr_n. */
double gguf_arr_num(const gguf_kv *kv, uint64_t i);
/* Iterates a string array: *pos starts at kv->val; each call returns the next string. The
 * array was validated at parse time, so this cannot overrun. */
void gguf_arr_next_str(const uint8_t **pos, const char **s, size_t *n);

#endif
