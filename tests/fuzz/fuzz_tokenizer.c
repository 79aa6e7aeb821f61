/* fuzz_tokenizer.c - libFuzzer target for the tokenizer: arbitrary bytes through encode (all
 * pre-tokenizers, special parsing on and off), piece and streaming decode.
 *
 * Byte 0 of the input picks the pre-tokenizer and the flags, the rest is the text. Besides crashes,
 * leaks and UB, two invariants abort:
 *   - strictly valid UTF-8 without special parsing, made of bytes the vocabulary has tokens for,
 *     decodes back to exactly the input bytes (byte-level BPE loses nothing; the lenient U+FFFD path
 *     only applies to invalid input);
 *   - the streaming decoder releases the same bytes as the one-shot decode.
 * The vocabulary is the default model's (SPINDLE_MODEL, else the set-up script's cache path); it is
 * loaded once per pre-tokenizer in LLVMFuzzerInitialize. Seeds: tests/fuzz/corpus/tokenizer.
 */
#include "gguf.h"
#include "sp_error.h"
#include "tokenizer.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const k_pre[] = {NULL, "llama-bpe", "qwen2", "gpt2", "default"};
enum { N_PRE = sizeof k_pre / sizeof k_pre[0], MAX_IDS = 1 << 16, MAX_TEXT = 1 << 18 };

static sp_tokenizer_t *g_tok[N_PRE];
static bool g_byte_ok[256]; /* the vocabulary has a token for this byte (same in every copy) */
static int32_t g_ids[MAX_IDS];
static char g_text[MAX_TEXT], g_stream[MAX_TEXT];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char path[4096];
    const char *env = getenv("SPINDLE_MODEL"), *home = getenv("HOME");
    if (env && *env)
        snprintf(path, sizeof path, "%s", env);
    else
        snprintf(path, sizeof path, "%s/.cache/spindle/models/SmolLM2-135M-Instruct.Q4_1.gguf",
                 home ? home : "");
    sp_gguf_t *g = sp_gguf_open(path);
    if (!g) {
        fprintf(stderr, "fuzz_tokenizer: %s (set SPINDLE_MODEL or run scripts/setup.sh)\n", sp_last_error());
        exit(1);
    }
    for (int i = 0; i < N_PRE; i++) {
        g_tok[i] = sp_tokenizer_from_gguf_pre(g, k_pre[i]);
        if (!g_tok[i]) {
            fprintf(stderr, "fuzz_tokenizer: pre-tokenizer %s: %s\n", k_pre[i] ? k_pre[i] : "(file)",
                    sp_last_error());
            exit(1);
        }
    }
    sp_gguf_close(g);
    for (int b = 0; b < 256; b++)
        g_byte_ok[b] = sp_tokenizer_byte_to_token(g_tok[0], (unsigned char)b) >= 0;
    return 0;
}

/* Strict UTF-8 (no overlong forms, no surrogates, <= U+10FFFF) made only of bytes the vocabulary
 * can represent: llama.cpp drops a byte without a token where BPE leaves it alone (tokenizer.h). */
static bool utf8_valid(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!g_byte_ok[s[i]])
            return false;
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t len;
        uint32_t cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            len = 2, cp = c & 0x1F, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3, cp = c & 0x0F, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            len = 4, cp = c & 0x07, min = 0x10000;
        } else {
            return false;
        }
        if (i + len > n)
            return false;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return false;
            cp = cp << 6 | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += len;
    }
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > MAX_TEXT / 8)
        return 0;
    const sp_tokenizer_t *t = g_tok[data[0] % N_PRE];
    const bool parse_special = data[0] & 0x10, add_special = data[0] & 0x20;
    const char *text = (const char *)data + 1;
    const size_t len = size - 1;

    size_t n = 0;
    int rc = sp_tokenizer_encode(t, text, len, add_special, parse_special, g_ids, MAX_IDS, &n);
    if (rc == -ENOSPC || rc == -ENOMEM)
        return 0;
    if (rc != 0 || n > MAX_IDS)
        abort();
    /* The ENOSPC path with a short buffer must report the same count. */
    if (n > 1) {
        size_t n2 = 0;
        if (sp_tokenizer_encode(t, text, len, add_special, parse_special, g_ids, n - 1, &n2) != -ENOSPC || n2 != n)
            abort();
        if (sp_tokenizer_encode(t, text, len, add_special, parse_special, g_ids, MAX_IDS, &n2) != 0)
            abort();
    }

    size_t dec = 0;
    if (sp_tokenizer_decode(t, g_ids, n, false, g_text, sizeof g_text, &dec) != 0)
        return 0; /* output larger than the buffer: legal, nothing to compare */
    if (!parse_special && !add_special && utf8_valid(data + 1, len) &&
        (dec != len || memcmp(g_text, text, len) != 0))
        abort();

    sp_tokenizer_stream st;
    sp_tokenizer_stream_init(&st);
    size_t out = 0;
    for (size_t i = 0; i < n; i++) {
        int w = sp_tokenizer_stream_put(t, &st, g_ids[i], false, g_stream + out, sizeof g_stream - out);
        if (w < 0)
            abort();
        out += (size_t)w;
    }
    int w = sp_tokenizer_stream_flush(&st, g_stream + out, sizeof g_stream - out);
    if (w < 0)
        abort();
    out += (size_t)w;
    if (out != dec || memcmp(g_stream, g_text, dec) != 0)
        abort();
    return 0;
}
