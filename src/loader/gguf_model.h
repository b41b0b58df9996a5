/* GGUF model files (llama.cpp's format) as a weight source: one file, a directory holding one,
 * or a split set (NAME-00001-of-0000N.gguf and its siblings), mmap'd read-only.
 *
 * Opening validates everything the loader will touch against the file sizes: the container
 * (src/tokenizer/gguf.c checks lengths, counts and offsets), each tensor's ggml type (one quiver
 * supports), shape (dims > 0, rows a whole number of quant blocks), byte size (no overflow,
 * inside the data section) and that no two tensors overlap or share a name. Errors name the
 * file and the tensor. Tensor data pointers stay valid until gguf_model_close. */
#ifndef QV_LOADER_GGUF_MODEL_H
#define QV_LOADER_GGUF_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "core/dtype.h"
#include "quiver/error.h"
#include "tokenizer/gguf.h"

struct qv_model_config;

typedef struct gguf_wt {
  char *name;          /* owned by the model (NUL-terminated copy) */
  const char *file;    /* base name of the file holding it; owned by the model */
  qv_dtype dtype;      /* F32, F16, BF16 or a quant type */
  uint32_t n_dims;     /* 1..4 */
  int64_t dims[4];     /* ne[0] (contiguous) first, as ggml stores them; unused dims are 1 */
  const void *data;    /* points into the mapping */
  size_t n_bytes;
} gguf_wt;

typedef struct gguf_model gguf_model;

/* 1 when path names a GGUF model: a file named *.gguf or starting with the GGUF magic, or a
 * directory with no config.json that holds a .gguf file. */
int gguf_model_is_path(const char *path);
/* The .gguf file a path stands for (the path itself, the one .gguf in a directory, or the
 * first split of a directory's split set). *out is malloc'd (caller frees). */
int gguf_model_resolve(const char *path, char **out, qv_error *err);

int gguf_model_open(const char *path, gguf_model **out, qv_error *err);
void gguf_model_close(gguf_model *g);

/* Metadata of the first file (where a split set keeps it). Valid until close. */
const gguf_ctx *gguf_model_meta(const gguf_model *g);
/* Path of the first file. */
const char *gguf_model_file(const gguf_model *g);
int gguf_model_n_tensors(const gguf_model *g);
const gguf_wt *gguf_model_tensor_at(const gguf_model *g, int i);
const gguf_wt *gguf_model_find(const gguf_model *g, const char *name);

/* Drops the file pages of [p, p + n) (inside a tensor's data) from this process's memory
 * (madvise DONTNEED on the read-only mapping): call once those bytes were copied, so loading
 * never holds the file twice. The data stays readable (pages are read again on access). */
void gguf_model_release(const void *p, size_t n);

/* Fills the configuration (llama, qwen2, qwen3; gemma3 as QV_FAMILY_GEMMA3) from the metadata
 * and the tensor shapes. Names the missing or out-of-range key. */
int gguf_model_config(const gguf_model *g, struct qv_model_config *cfg, qv_error *err);

/* Maps a Hugging Face tensor name ("model.layers.3.mlp.up_proj.weight") to the GGUF name
 * ("blk.3.ffn_up.weight"); sandwich: Gemma's four norms per layer (post_attention_layernorm is
 * then post_attention_norm, not ffn_norm). Returns 0, or -1 when the name has no GGUF form. */
int gguf_model_hf_name(const char *hf, int sandwich, char *out, size_t cap);

/* The file's chat template (tokenizer.chat_template), malloc'd and NUL-terminated; QV_ENOTFOUND
 * when the file has none. */
int gguf_model_chat_template(const char *path, char **out, qv_error *err);

#endif
