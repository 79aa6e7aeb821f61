/* tokenizer.h - byte-level BPE tokenizer (GPT-2 style) that reproduces llama.cpp's ids.
 *
 * A tokenizer is built from a GGUF file's `tokenizer.ggml.*` metadata or from plain arrays. Encoding
 * follows llama.cpp (src/llama-vocab.cpp, src/unicode.cpp) step by step:
 *   1. special/control tokens written in the text are cut out first (longest token text first);
 *      user-defined tokens are always matched, control tokens only when parse_special is true;
 *   2. every remaining fragment is decoded as UTF-8 the lenient llama.cpp way (an invalid byte becomes
 *      U+FFFD, overlong forms are accepted and re-encoded canonically) and pre-split by the regex(es)
 *      of the named pre-tokenizer, applied in sequence, each one splitting the pieces left by the
 *      previous one (PCRE2, UTF + UCP);
 *   3. each piece is mapped byte -> printable code point (GPT-2 byte-to-unicode table) and merged
 *      pairwise by merge rank (lowest rank first, leftmost on ties); a final symbol that is not in the
 *      vocabulary falls back to the tokens of its single bytes.
 *
 * Thread-safety: a tokenizer is immutable after construction; every const function may be called
 * from many threads at once (scratch memory is per call). Ownership: the tokenizer copies all it
 * needs; it never points into the GGUF mapping or the caller's arrays.
 */
#ifndef SP_TOKENIZER_H
#define SP_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"

typedef struct sp_tokenizer sp_tokenizer_t;

/* Token types as stored in `tokenizer.ggml.token_type` (numbering fixed by llama.cpp/gguf-py). */
typedef enum sp_token_type {
    SP_TOKEN_TYPE_UNDEFINED = 0,
    SP_TOKEN_TYPE_NORMAL = 1,
    SP_TOKEN_TYPE_UNKNOWN = 2,
    SP_TOKEN_TYPE_CONTROL = 3,
    SP_TOKEN_TYPE_USER_DEFINED = 4,
    SP_TOKEN_TYPE_UNUSED = 5,
    SP_TOKEN_TYPE_BYTE = 6,
} sp_token_type;

/* Description of a vocabulary for sp_tokenizer_new(). Everything is copied. */
typedef struct sp_tokenizer_desc {
    size_t n_tokens;                 /* vocabulary size (ids 0..n_tokens-1), >= 1 */
    const char *const *tokens;       /* [n_tokens] token texts in the byte-mapped alphabet
                                        ("Ġthe"), NUL-terminated unless token_lens is given */
    const size_t *token_lens;        /* optional [n_tokens] byte lengths; NULL: strlen() */
    const int32_t *token_types;      /* optional [n_tokens] sp_token_type; NULL: all NORMAL */
    size_t n_merges;
    const char *const *merges;       /* [n_merges] "left right", rank = index; required (the array
                                        may be empty: n_merges == 0), NUL-terminated unless merge_lens */
    const size_t *merge_lens;        /* optional [n_merges] byte lengths; NULL: strlen() */
    const char *pre;                 /* pre-tokenizer name as in tokenizer.ggml.pre ("smollm",
                                        "llama-bpe", "qwen2", "gpt2", "default", ...); NULL: "default" */
    int32_t bos_id, eos_id, eot_id, pad_id;  /* -1 = none; eot -1 is auto-detected from the texts
                                                (<|im_end|>, <|eot_id|>, ...) as llama.cpp does */
    bool add_bos;                    /* encode(add_special=true) prepends bos_id */
    bool add_eos;                    /* encode(add_special=true) appends eos_id */
} sp_tokenizer_desc;

/* Build from arrays. Returns NULL on failure (sp_last_error(): which field/index is bad, e.g. no
 * merges, duplicate token text, unknown pre-tokenizer, special id out of range). */
sp_tokenizer_t *sp_tokenizer_new(const sp_tokenizer_desc *d);

/* Build from an open GGUF. Reads tokenizer.ggml.{model (must be "gpt2"), tokens, token_type, merges,
 * pre, bos_token_id, eos_token_id, eot_token_id, eom_token_id, padding_token_id, add_bos_token,
 * add_eos_token}. Defaults follow llama.cpp: missing pre -> "default"; pre-tokenizers of the llama-3
 * family turn add_bos on unless add_bos_token says otherwise. Returns NULL on failure with a message
 * naming the key and value. The tokenizer does not keep a reference to g. */
sp_tokenizer_t *sp_tokenizer_from_gguf(const sp_gguf_t *g);
/* Same, but with the pre-tokenizer name `pre` instead of the file's tokenizer.ggml.pre (used to
 * test the llama-bpe / qwen2 splitters with one vocabulary). pre == NULL: as sp_tokenizer_from_gguf. */
sp_tokenizer_t *sp_tokenizer_from_gguf_pre(const sp_gguf_t *g, const char *pre);

void sp_tokenizer_free(sp_tokenizer_t *t);   /* accepts NULL */

/* Tokenize text[0..len) (any bytes; need not be NUL-terminated or valid UTF-8).
 * add_special: add BOS (and EOS) if the vocabulary asks for it (sp_tokenizer_add_bos()).
 * parse_special: control tokens written in the text (<|im_start|>) become their ids; otherwise they
 * are tokenized as plain text. User-defined tokens are matched in both cases (llama.cpp behaviour).
 * Writes up to cap ids to out and the total count to *n_out. Returns 0, -ENOSPC when cap was too small
 * (*n_out then holds the number needed and out the first cap ids), -EINVAL on bad arguments or
 * -ENOMEM. */
int sp_tokenizer_encode(const sp_tokenizer_t *t, const char *text, size_t len, bool add_special,
                        bool parse_special, int32_t *out, size_t cap, size_t *n_out);

/* The bytes of one token: byte-level unmapping for normal tokens; control/unknown tokens render as
 * their text only when special is true (else nothing); user-defined tokens always render as text;
 * unused/undefined tokens render as nothing. A piece may be an incomplete UTF-8 sequence.
 * Returns the number of bytes written (not NUL-terminated), -ENOSPC when cap is too small
 * (sp_tokenizer_piece_len() tells the size) or -EINVAL for an id outside the vocabulary. */
int sp_tokenizer_token_to_piece(const sp_tokenizer_t *t, int32_t id, bool special, char *buf, size_t cap);
/* Length of that piece in bytes, or -EINVAL. */
int sp_tokenizer_piece_len(const sp_tokenizer_t *t, int32_t id, bool special);

/* Concatenated pieces of ids[0..n). Writes up to cap bytes; *n_out = bytes needed. Returns 0,
 * -ENOSPC (cap too small; out holds the first cap bytes) or -EINVAL (an id outside the vocabulary). */
int sp_tokenizer_decode(const sp_tokenizer_t *t, const int32_t *ids, size_t n, bool special,
                        char *out, size_t cap, size_t *n_out);

/* Streaming decode: pieces are appended one token at a time and only whole UTF-8 characters are
 * released, so a character split across tokens is never printed in halves. Bytes that can never
 * form a character (a stray continuation byte, a lead byte followed by a non-continuation byte) are
 * released as they are. Plain struct: zero it (or call _init) before use; one per output stream. */
typedef struct sp_tokenizer_stream {
    unsigned char pend[4];   /* bytes of an unfinished UTF-8 character */
    uint32_t n_pend;         /* 0..3 */
} sp_tokenizer_stream;

void sp_tokenizer_stream_init(sp_tokenizer_stream *s);
/* Append token id's piece; write the releasable bytes to out (at most cap; a piece is at most
 * sp_tokenizer_piece_len() + 3 bytes). Returns the number of bytes written, -ENOSPC (nothing consumed,
 * state unchanged) or -EINVAL. */
int sp_tokenizer_stream_put(const sp_tokenizer_t *t, sp_tokenizer_stream *s, int32_t id, bool special,
                            char *out, size_t cap);
/* Release whatever is pending (end of stream). Returns bytes written (0..3) or -ENOSPC. */
int sp_tokenizer_stream_flush(sp_tokenizer_stream *s, char *out, size_t cap);

/* Vocabulary facts. Ids are -1 when the vocabulary has none. */
int32_t sp_tokenizer_n_vocab(const sp_tokenizer_t *t);
int32_t sp_tokenizer_bos(const sp_tokenizer_t *t);
int32_t sp_tokenizer_eos(const sp_tokenizer_t *t);
int32_t sp_tokenizer_eot(const sp_tokenizer_t *t);
int32_t sp_tokenizer_pad(const sp_tokenizer_t *t);
bool sp_tokenizer_add_bos(const sp_tokenizer_t *t);
/* End of generation: eos, eot, eom, the FIM pad/repo/sep tokens and the texts llama.cpp treats as
 * end of turn (<|im_end|>, <|eot_id|>, <|endoftext|>, ...). False for ids outside the vocabulary. */
bool sp_tokenizer_is_eog(const sp_tokenizer_t *t, int32_t id);
/* Control/unknown token (rendered only with special = true). */
bool sp_tokenizer_is_control(const sp_tokenizer_t *t, int32_t id);
/* Id of the token whose vocabulary text is exactly text[0..len) (for chat templates:
 * "<|im_start|>"), or -1. */
int32_t sp_tokenizer_find(const sp_tokenizer_t *t, const char *text, size_t len);
/* Token of the single byte-level symbol for `byte` (e.g. "Ġ" for 0x20), or -1 when the vocabulary
 * lacks it. Text containing such a byte cannot round-trip: where BPE leaves that byte alone, encode
 * drops it, exactly as llama.cpp does (SmolLM2 lacks 0x04 0x06 0x13 0x14 0x16 0x1D 0xC0 0xC1 0xF1
 * 0xF2 0xF5..0xFF). */
int32_t sp_tokenizer_byte_to_token(const sp_tokenizer_t *t, unsigned char byte);
/* Vocabulary text of a token (byte-mapped alphabet, NUL-terminated, owned by t) or NULL. */
const char *sp_tokenizer_token_text(const sp_tokenizer_t *t, int32_t id);
/* Pre-tokenizer name in use ("smollm", ...). */
const char *sp_tokenizer_pre(const sp_tokenizer_t *t);
/* Chat template family the vocabulary implies: "chatml" when <|im_start|> exists, "llama3" when
 * <|start_header_id|> exists, else "none" (names as sp_chat_family_from_name() takes them). */
const char *sp_tokenizer_chat_template(const sp_tokenizer_t *t);

#endif
