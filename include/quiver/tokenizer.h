/* Tokenizers: Hugging Face tokenizer.json (byte-level BPE and SentencePiece-style BPE with byte
 * fallback) and GGUF vocabularies, encoding and decoding exactly as the Hugging Face
 * `tokenizers` library does, plus an incremental detokenizer for streaming.
 *
 * A qv_tokenizer is immutable after loading and safe to use from several threads at once. */
#ifndef QUIVER_TOKENIZER_H
#define QUIVER_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "quiver/error.h"

typedef struct qv_tokenizer qv_tokenizer;
typedef struct qv_detok qv_detok;

enum {
  QV_TOK_ADD_SPECIAL = 1u << 0,   /* encode: apply the post-processor (BOS/EOS per tokenizer_config) */
  QV_TOK_PARSE_SPECIAL = 1u << 1, /* encode: match special-token text in the input (chat templates) */
  QV_TOK_SKIP_SPECIAL = 1u << 2,  /* decode: drop special tokens from the text */
  QV_TOK_KEEP_BYTES = 1u << 3,    /* decode: bytes that are not complete UTF-8 (a byte token
                                     alone) stay as they are instead of becoming U+FFFD; the
                                     result may then not be valid UTF-8 */
};

/* Loads from a model directory (tokenizer.json + tokenizer_config.json), a tokenizer.json file,
 * or a .gguf file. */
int qv_tokenizer_load(const char *path, qv_tokenizer **out, qv_error *err);
/* The byte-level tokenizer of the embedded quiver-tiny model: ids 0 <unk>, 1 <s> (BOS),
 * 2 </s> (EOS), then 3 + b for each byte value b (259 ids in all). */
int qv_tokenizer_create_bytes(qv_tokenizer **out, qv_error *err);
void qv_tokenizer_destroy(qv_tokenizer *tok);

/* Encodes len bytes of text. *ids is malloc'd (caller frees) with *n_ids entries. */
int qv_tokenizer_encode(const qv_tokenizer *tok, const char *text, size_t len, unsigned flags,
                        int32_t **ids, size_t *n_ids, qv_error *err);
/* Decodes ids to text. *text is malloc'd and NUL-terminated (caller frees); *len excludes the NUL. */
int qv_tokenizer_decode(const qv_tokenizer *tok, const int32_t *ids, size_t n_ids, unsigned flags,
                        char **text, size_t *len, qv_error *err);

int32_t qv_tokenizer_vocab_size(const qv_tokenizer *tok);
int32_t qv_tokenizer_bos_id(const qv_tokenizer *tok); /* -1 if none */
int32_t qv_tokenizer_eos_id(const qv_tokenizer *tok); /* -1 if none */
/* The vocabulary string of id (e.g. "<s>", "▁the", "<0x0A>"; "" for an id outside the vocabulary);
 * valid for the tokenizer's life. */
const char *qv_tokenizer_token_str(const qv_tokenizer *tok, int32_t id);
int qv_tokenizer_is_special(const qv_tokenizer *tok, int32_t id);
/* Id of a token given its exact vocabulary string, or -1. */
int32_t qv_tokenizer_token_id(const qv_tokenizer *tok, const char *str);

/* Streaming detokenizer: push ids one at a time; each push returns the text that became
 * complete (whole UTF-8 characters only). The concatenation of all pushes plus the final
 * flush equals qv_tokenizer_decode() of all ids with the same flags. */
int qv_detok_create(const qv_tokenizer *tok, unsigned flags, qv_detok **out);
/* Returns new text in *text (borrowed, valid until the next call on d) of *len bytes. */
int qv_detok_push(qv_detok *d, int32_t id, const char **text, size_t *len);
/* Feeds context that is not to be emitted (a prompt): afterwards the next push decodes in its
 * context (a SentencePiece leading space is kept as in a one-shot decode of the whole
 * sequence) and returns only text that later ids produce, never held-back prompt text. Call
 * before the first push. */
int qv_detok_prime(qv_detok *d, const int32_t *ids, size_t n_ids);
/* Emits whatever is still held back (incomplete bytes become U+FFFD as the reference does). */
int qv_detok_flush(qv_detok *d, const char **text, size_t *len);
void qv_detok_destroy(qv_detok *d);

#endif
