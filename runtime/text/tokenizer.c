/* tokenizer.c - byte-level BPE tokenizer that reproduces llama.cpp's token ids.
 *
 * DESIGN
 * - Strings are interned: every token text gets id = its token id, and every other string a merge
 *   mentions (a part or a result that is not a token) gets an id >= n_tokens. The BPE loop then works
 *   on integers only: merges are a hash map (left id, right id) -> (rank, merged id).
 * - Pre-splitting runs PCRE2 (UTF + UCP) over a "shadow" of the fragment: the fragment decoded the
 *   llama.cpp way (invalid byte -> U+FFFD) and re-encoded, with the few code points on which PCRE2's
 *   Unicode tables disagree with llama.cpp's (Unicode 15.1 there) replaced by a stand-in of
 *   llama.cpp's class. Matches are mapped back to code point indices, so the pieces themselves are
 *   built from the real code points. Each regex of a pre-tokenizer splits every piece left by the
 *   previous one, matching inside that piece only (end of piece = end of subject for lookaheads);
 *   the text between two matches becomes a piece of its own, as in llama.cpp.
 * - BPE per piece: a doubly linked list of symbols and a binary heap of candidate pairs ordered by
 *   (rank, left index). A popped pair is stale when either side has changed length since it was
 *   pushed (symbols only grow), which is the same test as llama.cpp's text comparison.
 * - Everything the encoder needs at run time is read-only, so one tokenizer serves many threads;
 *   scratch buffers live in a per-call work struct and are freed before returning.
 */
#define _GNU_SOURCE   /* memmem */
#define PCRE2_CODE_UNIT_WIDTH 8

#include "tokenizer.h"

#include <errno.h>
#include <inttypes.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "sp_error.h"

/* Token attributes (llama.cpp's llama_token_attr bits, plus our own EOG bit). */
enum {
    ATTR_UNDEFINED = 1u << 0,
    ATTR_UNKNOWN = 1u << 1,
    ATTR_UNUSED = 1u << 2,
    ATTR_NORMAL = 1u << 3,
    ATTR_CONTROL = 1u << 4,
    ATTR_USER_DEFINED = 1u << 5,
    ATTR_BYTE = 1u << 6,
    ATTR_EOG = 1u << 15,
};

typedef enum pre_kind {
    PRE_DEFAULT,   /* llama.cpp's fallback: punctuation runs, GPT-2, number runs, digit triples */
    PRE_GPT2,      /* the GPT-2 pattern alone */
    PRE_SMOLLM,    /* single digits first, then GPT-2 (smollm, starcoder, refact, ...) */
    PRE_LLAMA3,    /* llama-3 pattern (\p{N}{1,3}) */
    PRE_QWEN2,     /* llama-3 pattern with single digits */
} pre_kind;

#define RX_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
#define RX_LLAMA3_HEAD "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
#define RX_LLAMA3_TAIL "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

static const struct pre_def {
    pre_kind kind;
    int n_rx;
    const char *rx[4];
} k_pre_defs[] = {
    {PRE_DEFAULT, 4, {"[\\p{P}\\$\\+<=>\\^~\\|]+", RX_GPT2, "\\p{N}+", "[0-9][0-9][0-9]"}},
    {PRE_GPT2, 1, {RX_GPT2}},
    {PRE_SMOLLM, 2, {"\\p{N}", RX_GPT2}},
    {PRE_LLAMA3, 1, {RX_LLAMA3_HEAD "\\p{N}{1,3}" RX_LLAMA3_TAIL}},
    {PRE_QWEN2, 1, {RX_LLAMA3_HEAD "\\p{N}" RX_LLAMA3_TAIL}},
};

/* tokenizer.ggml.pre names (as llama.cpp maps them) for the splitters above. ignore_merges: a piece
 * that is itself a token is emitted whole; add_bos: the default when add_bos_token is absent. */
static const struct pre_name {
    const char *name;
    pre_kind kind;
    bool ignore_merges, add_bos;
} k_pre_names[] = {
    {"default", PRE_DEFAULT, false, false},
    {"gpt2", PRE_GPT2, false, false},         {"gpt-2", PRE_GPT2, false, false},
    {"phi-2", PRE_GPT2, false, false},        {"jina-es", PRE_GPT2, false, false},
    {"jina-de", PRE_GPT2, false, false},      {"gigachat", PRE_GPT2, false, false},
    {"jina-v2-es", PRE_GPT2, false, false},   {"jina-v2-de", PRE_GPT2, false, false},
    {"mellum", PRE_GPT2, false, false},       {"mpt", PRE_GPT2, false, false},
    {"olmo", PRE_GPT2, false, false},         {"jais", PRE_GPT2, false, false},
    {"trillion", PRE_GPT2, false, false},     {"exaone4", PRE_GPT2, false, false},
    {"roberta-bpe", PRE_GPT2, false, false},
    {"smollm", PRE_SMOLLM, false, false},     {"starcoder", PRE_SMOLLM, false, false},
    {"refact", PRE_SMOLLM, false, false},     {"command-r", PRE_SMOLLM, false, false},
    {"codeshell", PRE_SMOLLM, false, false},  {"exaone", PRE_SMOLLM, false, false},
    {"minerva-7b", PRE_SMOLLM, false, false},
    {"llama3", PRE_LLAMA3, true, true},       {"llama-v3", PRE_LLAMA3, true, true},
    {"llama-bpe", PRE_LLAMA3, true, true},    {"falcon3", PRE_LLAMA3, true, true},
    {"falcon-h1", PRE_LLAMA3, true, true},    {"pixtral", PRE_LLAMA3, true, true},
    {"midm-2.0", PRE_LLAMA3, true, true},     {"lfm2", PRE_LLAMA3, true, true},
    {"dbrx", PRE_LLAMA3, false, false},       {"smaug-bpe", PRE_LLAMA3, false, false},
    {"qwen2", PRE_QWEN2, false, false},       {"deepseek-r1-qwen", PRE_QWEN2, false, false},
    {"stablelm2", PRE_QWEN2, false, false},   {"megrez", PRE_QWEN2, true, false},
};

/* Code points whose class (whitespace / letter / number / punctuation / other) differs between
 * llama.cpp's tables (Unicode 15.1, its scripts/gen-unicode-data.py) and PCRE2 10.42 (Unicode 14):
 * letters and digits added in Unicode 15/15.1, and U+180E, which PCRE2 counts as \s and llama.cpp
 * does not. The shadow text carries a stand-in of llama.cpp's class for them. Sorted, disjoint. */
static const struct cls_override {
    uint32_t lo, hi;
    char cls;   /* 'L' letter, 'N' number, 'P' punctuation, 'O' other */
} k_overrides[] = {
    {0x0180E, 0x0180E, 'O'}, {0x1123F, 0x11240, 'L'}, {0x11B00, 0x11B09, 'P'},
    {0x11F02, 0x11F02, 'L'}, {0x11F04, 0x11F10, 'L'}, {0x11F12, 0x11F33, 'L'},
    {0x11F43, 0x11F4F, 'P'}, {0x11F50, 0x11F59, 'N'}, {0x1342F, 0x1342F, 'L'},
    {0x13441, 0x13446, 'L'}, {0x1B132, 0x1B132, 'L'}, {0x1B155, 0x1B155, 'L'},
    {0x1D2C0, 0x1D2D3, 'N'}, {0x1DF25, 0x1DF2A, 'L'}, {0x1E030, 0x1E06D, 'L'},
    {0x1E4D0, 0x1E4EB, 'L'}, {0x1E4F0, 0x1E4F9, 'N'}, {0x2B739, 0x2B739, 'L'},
    {0x2EBF0, 0x2EE5D, 'L'}, {0x31350, 0x323AF, 'L'},
};
/* Stand-ins: classes that are stable in every Unicode version. */
#define SHADOW_LETTER 0x4E00u   /* CJK ideograph, Lo */
#define SHADOW_NUMBER 0x0660u   /* ARABIC-INDIC DIGIT ZERO, Nd */
#define SHADOW_PUNCT 0x00A1u    /* INVERTED EXCLAMATION MARK, Po */
#define SHADOW_OTHER 0xE000u    /* private use, Co: not \s, \p{L}, \p{N}, \p{P} */

/* Texts llama.cpp recognises by name (llama-vocab.cpp, "auto-detect special tokens by text"). */
static const char *const k_eot_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
    "<EOT>", "_<EOT>", "[EOT]", "<\xef\xbd\x9c" "end\xe2\x96\x81" "of\xe2\x96\x81" "sentence\xef\xbd\x9c>",
    "<end_of_utterance>", NULL};
static const char *const k_eom_texts[] = {"<|eom_id|>", NULL};
static const char *const k_fim_pre_texts[] = {
    "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\xef\xbd\x9c" "fim\xe2\x96\x81" "begin\xef\xbd\x9c>",
    "<PRE>", "\xe2\x96\x81<PRE>", "<|code_prefix|>", "<|prefix|>", NULL};
static const char *const k_fim_suf_texts[] = {
    "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\xef\xbd\x9c" "fim\xe2\x96\x81" "hole\xef\xbd\x9c>",
    "<SUF>", "\xe2\x96\x81<SUF>", "<|code_suffix|>", "<|suffix|>", NULL};
static const char *const k_fim_mid_texts[] = {
    "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\xef\xbd\x9c" "fim\xe2\x96\x81" "end\xef\xbd\x9c>",
    "<MID>", "\xe2\x96\x81<MID>", "<|code_middle|>", "<|middle|>", NULL};
static const char *const k_fim_pad_texts[] = {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]", NULL};
static const char *const k_fim_rep_texts[] = {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>",
                                              "<reponame>", NULL};
static const char *const k_fim_sep_texts[] = {"<|file_sep|>", NULL};
static const char *const k_eog_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<\xef\xbd\x9c" "end\xe2\x96\x81" "of\xe2\x96\x81" "sentence\xef\xbd\x9c>", "[e~[", NULL};
/* gpt-oss: always rendered. */
static const char *const k_user_defined_texts[] = {"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>", NULL};

typedef struct merge_slot {
    uint64_t key;              /* left id << 32 | right id; UINT64_MAX = empty */
    uint32_t rank;             /* index in tokenizer.ggml.merges */
    int32_t res;               /* interned id of the merged string */
} merge_slot;

typedef struct str_ref {
    uint32_t off, len;   /* into pool; the bytes are followed by a NUL */
} str_ref;

struct sp_tokenizer {
    int32_t n_tokens;
    char *pool;                /* all interned strings, NUL-separated */
    size_t pool_len, pool_cap;
    str_ref *strs;             /* [n_strs]; ids < n_tokens are tokens */
    int32_t n_strs, strs_cap;
    int32_t *str_slots;        /* open addressing, string -> id, -1 = empty; power of two */
    size_t str_slots_cap;
    uint16_t *attr;            /* [n_tokens] ATTR_* */

    merge_slot *merges;        /* open addressing over (left id, right id); one cache line per probe */
    size_t merge_slots_cap;

    uint32_t byte_cp[256];     /* GPT-2 byte -> code point */
    int16_t cp_byte[324];      /* code point -> byte, -1 */
    int32_t byte_sym[256];     /* interned id of each byte's mapped character */

    int32_t *specials;         /* tokens cut out before BPE, longest text first */
    size_t n_specials;

    int32_t bos, eos, eot, eom, pad;
    bool add_bos, add_eos, ignore_merges;
    pre_kind kind;
    char pre_name[64];
    const char *chat;
    pcre2_code *rx[4];
    int n_rx;
};

/* Input of the common constructor: what a desc or a GGUF provides. */
typedef struct build_in {
    size_t n_tokens;
    const char *const *tokens;
    const size_t *token_lens;
    const int32_t *token_types;
    size_t n_merges;
    const char *const *merges;
    const size_t *merge_lens;
    const char *pre;
    int32_t bos, eos, eot, eom, pad, fim_pad, fim_rep, fim_sep;
    bool add_bos, add_eos;
    bool add_bos_set;   /* false: the pre-tokenizer's default decides */
} build_in;

/* ---- small helpers ---------------------------------------------------------------------------- */

static int utf8_put(uint32_t cp, unsigned char *o)
{
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* llama.cpp's lenient decoder (unicode_cpt_from_utf8 + unicode_cpts_from_utf8): the length comes from
 * the lead byte, continuation bytes must be 10xxxxxx, overlong forms and surrogates are accepted;
 * anything else consumes one byte and yields U+FFFD. Values above U+10FFFF (which make llama.cpp
 * throw later) are treated as invalid too. */
static uint32_t utf8_get(const unsigned char *s, size_t n, size_t *adv)
{
    unsigned c = s[0];
    *adv = 1;
    if (c < 0x80)
        return c;
    if (!(c & 0x40))
        return 0xFFFD;
    if (!(c & 0x20)) {
        if (n < 2 || (s[1] & 0xC0) != 0x80)
            return 0xFFFD;
        *adv = 2;
        return ((c & 0x1Fu) << 6) | (s[1] & 0x3Fu);
    }
    if (!(c & 0x10)) {
        if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80)
            return 0xFFFD;
        *adv = 3;
        return ((c & 0x0Fu) << 12) | ((s[1] & 0x3Fu) << 6) | (s[2] & 0x3Fu);
    }
    if (!(c & 0x08)) {
        if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80)
            return 0xFFFD;
        uint32_t cp = ((c & 0x07u) << 18) | ((s[1] & 0x3Fu) << 12) | ((s[2] & 0x3Fu) << 6) | (s[3] & 0x3Fu);
        if (cp > 0x10FFFF)
            return 0xFFFD;
        *adv = 4;
        return cp;
    }
    return 0xFFFD;
}

static uint32_t shadow_cp(uint32_t cp)
{
    if (cp < 0x180E)
        return cp;
    if (cp >= 0xD800 && cp <= 0xDFFF)   /* llama.cpp: category Cs, i.e. "other" */
        return SHADOW_OTHER;
    size_t lo = 0, hi = sizeof k_overrides / sizeof k_overrides[0];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < k_overrides[mid].lo)
            hi = mid;
        else if (cp > k_overrides[mid].hi)
            lo = mid + 1;
        else {
            switch (k_overrides[mid].cls) {
            case 'L': return SHADOW_LETTER;
            case 'N': return SHADOW_NUMBER;
            case 'P': return SHADOW_PUNCT;
            default: return SHADOW_OTHER;
            }
        }
    }
    return cp;
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

static size_t pow2_at_least(size_t n)
{
    size_t c = 16;
    while (c < n)
        c <<= 1;
    return c;
}

/* ---- interned strings ------------------------------------------------------------------------- */

static int32_t str_find(const sp_tokenizer_t *t, const void *s, size_t len)
{
    if (!t->str_slots_cap)
        return -1;
    size_t mask = t->str_slots_cap - 1;
    size_t h = (size_t)XXH3_64bits(s, len) & mask;
    for (;;) {
        int32_t id = t->str_slots[h];
        if (id < 0)
            return -1;
        const str_ref *r = &t->strs[id];
        if (r->len == len && memcmp(t->pool + r->off, s, len) == 0)
            return id;
        h = (h + 1) & mask;
    }
}

static int str_rehash(sp_tokenizer_t *t, size_t cap)
{
    int32_t *slots = malloc(cap * sizeof *slots);
    if (!slots)
        return -ENOMEM;
    for (size_t i = 0; i < cap; i++)
        slots[i] = -1;
    for (int32_t id = 0; id < t->n_strs; id++) {
        const str_ref *r = &t->strs[id];
        size_t h = (size_t)XXH3_64bits(t->pool + r->off, r->len) & (cap - 1);
        while (slots[h] >= 0)
            h = (h + 1) & (cap - 1);
        slots[h] = id;
    }
    free(t->str_slots);
    t->str_slots = slots;
    t->str_slots_cap = cap;
    return 0;
}

/* Add a string that is known to be absent; returns its id or a negative errno. */
static int32_t str_add(sp_tokenizer_t *t, const void *s, size_t len)
{
    if (len > UINT32_MAX / 2 || t->n_strs == INT32_MAX)
        return -ERANGE;
    if (t->pool_len + len + 1 > t->pool_cap) {
        size_t cap = t->pool_cap ? t->pool_cap : 1 << 16;
        while (cap < t->pool_len + len + 1)
            cap *= 2;
        if (cap > UINT32_MAX)
            return -ERANGE;
        char *p = realloc(t->pool, cap);
        if (!p)
            return -ENOMEM;
        t->pool = p;
        t->pool_cap = cap;
    }
    if (t->n_strs == t->strs_cap) {
        int32_t cap = t->strs_cap ? t->strs_cap * 2 : 1024;
        str_ref *p = realloc(t->strs, (size_t)cap * sizeof *p);
        if (!p)
            return -ENOMEM;
        t->strs = p;
        t->strs_cap = cap;
    }
    if ((size_t)(t->n_strs + 1) * 2 > t->str_slots_cap) {
        int rc = str_rehash(t, pow2_at_least((size_t)(t->n_strs + 1) * 4));
        if (rc < 0)
            return rc;
    }
    int32_t id = t->n_strs++;
    t->strs[id].off = (uint32_t)t->pool_len;
    t->strs[id].len = (uint32_t)len;
    if (len)
        memcpy(t->pool + t->pool_len, s, len);
    t->pool[t->pool_len + len] = '\0';
    t->pool_len += len + 1;
    size_t mask = t->str_slots_cap - 1;
    size_t h = (size_t)XXH3_64bits(s, len) & mask;
    while (t->str_slots[h] >= 0)
        h = (h + 1) & mask;
    t->str_slots[h] = id;
    return id;
}

static int32_t str_intern(sp_tokenizer_t *t, const void *s, size_t len)
{
    int32_t id = str_find(t, s, len);
    return id >= 0 ? id : str_add(t, s, len);
}

/* ---- merges ----------------------------------------------------------------------------------- */

static bool merge_find(const sp_tokenizer_t *t, int32_t a, int32_t b, uint32_t *rank, int32_t *res)
{
    if (!t->merge_slots_cap)
        return false;
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t mask = t->merge_slots_cap - 1;
    size_t h = (size_t)mix64(key) & mask;
    for (;;) {
        const merge_slot *m = &t->merges[h];
        if (m->key == UINT64_MAX)
            return false;
        if (m->key == key) {
            *rank = m->rank;
            *res = m->res;
            return true;
        }
        h = (h + 1) & mask;
    }
}

static int build_merges(sp_tokenizer_t *t, const build_in *in)
{
    size_t cap = pow2_at_least(in->n_merges * 2 + 2);
    if (!(t->merges = malloc(cap * sizeof *t->merges)))
        return sp_error(ENOMEM, "tokenizer: out of memory for %zu merges", in->n_merges);
    t->merge_slots_cap = cap;
    for (size_t i = 0; i < cap; i++)
        t->merges[i].key = UINT64_MAX;

    char *buf = NULL;
    size_t buf_cap = 0;
    int rc = 0;
    for (size_t i = 0; i < in->n_merges; i++) {
        const char *m = in->merges[i];
        if (!m) {
            rc = sp_error(EINVAL, "tokenizer: merge %zu is NULL", i);
            goto out;
        }
        size_t len = in->merge_lens ? in->merge_lens[i] : strlen(m);
        /* llama.cpp splits at the first space after the first byte; a merge without one can never
         * apply (it becomes the pair ("", "")), so it is skipped but keeps its rank slot. */
        const char *sp = len > 1 ? memchr(m + 1, ' ', len - 1) : NULL;
        if (!sp)
            continue;
        size_t la = (size_t)(sp - m), lb = len - la - 1;
        if (la + lb > buf_cap) {
            size_t nc = (la + lb) * 2 + 64;
            char *nb = realloc(buf, nc);
            if (!nb) {
                rc = sp_error(ENOMEM, "tokenizer: out of memory reading merges");
                goto out;
            }
            buf = nb;
            buf_cap = nc;
        }
        memcpy(buf, m, la);
        memcpy(buf + la, sp + 1, lb);
        int32_t a = str_intern(t, m, la), b = str_intern(t, sp + 1, lb), ab = str_intern(t, buf, la + lb);
        if (a < 0 || b < 0 || ab < 0) {
            rc = sp_error(ENOMEM, "tokenizer: out of memory interning merge %zu", i);
            goto out;
        }
        uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
        size_t mask = cap - 1, h = (size_t)mix64(key) & mask;
        while (t->merges[h].key != UINT64_MAX && t->merges[h].key != key)
            h = (h + 1) & mask;
        if (t->merges[h].key == key)
            continue;   /* duplicate pair: the first (lowest) rank wins, as std::map::emplace */
        t->merges[h] = (merge_slot){key, (uint32_t)i, ab};
    }
out:
    free(buf);
    return rc;
}

/* ---- construction ----------------------------------------------------------------------------- */

static int32_t find_text(const sp_tokenizer_t *t, const char *s)
{
    int32_t id = str_find(t, s, strlen(s));
    return id < t->n_tokens ? id : -1;
}

/* First token (in list order) whose text is in `texts`, or -1. */
static int32_t detect(sp_tokenizer_t *t, const char *const *texts)
{
    for (size_t i = 0; texts[i]; i++) {
        int32_t id = find_text(t, texts[i]);
        if (id >= 0)
            return id;
    }
    return -1;
}

static void make_control(sp_tokenizer_t *t, int32_t id)
{
    if (id >= 0 && !(t->attr[id] & ATTR_CONTROL))
        t->attr[id] |= ATTR_CONTROL;
}

/* llama.cpp's text-based special-token rules (see k_*_texts). */
static void apply_text_rules(sp_tokenizer_t *t, const build_in *in)
{
    int32_t eot = in->eot, eom = in->eom;
    int32_t fim_pad = in->fim_pad, fim_rep = in->fim_rep, fim_sep = in->fim_sep;
    if (eot < 0)
        make_control(t, eot = detect(t, k_eot_texts));
    if (eom < 0)
        make_control(t, eom = detect(t, k_eom_texts));
    make_control(t, detect(t, k_fim_pre_texts));
    make_control(t, detect(t, k_fim_suf_texts));
    make_control(t, detect(t, k_fim_mid_texts));
    if (fim_pad < 0)
        make_control(t, fim_pad = detect(t, k_fim_pad_texts));
    if (fim_rep < 0)
        make_control(t, fim_rep = detect(t, k_fim_rep_texts));
    if (fim_sep < 0)
        make_control(t, fim_sep = detect(t, k_fim_sep_texts));
    t->eot = eot;
    t->eom = eom;

    for (int32_t id = 0; id < t->n_tokens; id++)
        if ((t->attr[id] & ATTR_CONTROL) && strstr(t->pool + t->strs[id].off, "unused"))
            t->attr[id] |= ATTR_UNUSED;

    int32_t eog_ids[] = {fim_pad, fim_rep, fim_sep, t->eos, eot, eom};
    for (size_t i = 0; i < sizeof eog_ids / sizeof eog_ids[0]; i++)
        if (eog_ids[i] >= 0)
            t->attr[eog_ids[i]] |= ATTR_EOG;
    for (size_t i = 0; k_eog_texts[i]; i++) {
        int32_t id = find_text(t, k_eog_texts[i]);
        if (id >= 0) {
            t->attr[id] |= ATTR_EOG;
            make_control(t, id);
        }
    }
    for (size_t i = 0; k_user_defined_texts[i]; i++) {
        int32_t id = find_text(t, k_user_defined_texts[i]);
        if (id >= 0)
            t->attr[id] = (uint16_t)((t->attr[id] & ATTR_EOG) | ATTR_USER_DEFINED);
    }
    /* gpt-oss / solar-open: <|end|> is not an end of generation when <|return|> and <|call|> (or
     * <|calls|> and <|flush|>) exist; it becomes a user-defined token. */
    int32_t end = find_text(t, "<|end|>");
    if (end >= 0 && (t->attr[end] & ATTR_EOG)) {
        int32_t ret = find_text(t, "<|return|>"), call = find_text(t, "<|call|>");
        int32_t calls = find_text(t, "<|calls|>"), flush = find_text(t, "<|flush|>");
        bool has_call = call >= 0 || calls >= 0;
        if ((ret >= 0 && has_call) || (has_call && flush >= 0))
            t->attr[end] = ATTR_USER_DEFINED;
    }
}

static int cmp_special(const void *a, const void *b, void *arg)
{
    const sp_tokenizer_t *t = arg;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    uint32_t lx = t->strs[x].len, ly = t->strs[y].len;
    if (lx != ly)
        return lx > ly ? -1 : 1;
    return x < y ? -1 : x > y;
}

static int compile_pre(sp_tokenizer_t *t)
{
    const struct pre_def *def = NULL;
    for (size_t i = 0; i < sizeof k_pre_defs / sizeof k_pre_defs[0]; i++)
        if (k_pre_defs[i].kind == t->kind)
            def = &k_pre_defs[i];
    for (int i = 0; i < def->n_rx; i++) {
        int err;
        PCRE2_SIZE eoff;
        t->rx[i] = pcre2_compile((PCRE2_SPTR)def->rx[i], PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP,
                                 &err, &eoff, NULL);
        if (!t->rx[i]) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(err, msg, sizeof msg);
            return sp_error(EINVAL, "tokenizer: PCRE2 rejected pre-tokenizer regex %d of \"%s\" at offset %zu: %s",
                            i, t->pre_name, (size_t)eoff, (const char *)msg);
        }
        t->n_rx = i + 1;
        /* JIT is an optimisation only: without it (no JIT support, W^X policy) matching still works. */
        (void)pcre2_jit_compile(t->rx[i], PCRE2_JIT_COMPLETE);
    }
    return 0;
}

static int check_id(const sp_tokenizer_t *t, const char *what, int32_t id)
{
    if (id < -1 || id >= t->n_tokens)
        return sp_error(EINVAL, "tokenizer: %s = %d is outside the vocabulary of %d tokens", what, id, t->n_tokens);
    return 0;
}

static sp_tokenizer_t *build(const build_in *in)
{
    sp_tokenizer_t *t = calloc(1, sizeof *t);
    if (!t) {
        sp_error(ENOMEM, "tokenizer: out of memory");
        return NULL;
    }
    if (in->n_tokens == 0 || in->n_tokens >= (size_t)INT32_MAX / 2 || !in->tokens) {
        sp_error(EINVAL, "tokenizer: the vocabulary is empty or too large (%zu tokens)", in->n_tokens);
        goto fail;
    }
    if (!in->merges && in->n_merges) {
        sp_error(EINVAL, "tokenizer: %zu merges announced but no merge array given", in->n_merges);
        goto fail;
    }
    if (!in->merges) {
        sp_error(EINVAL, "tokenizer: no BPE merges given (a byte-level BPE vocabulary needs tokenizer.ggml.merges)");
        goto fail;
    }
    const char *pre = in->pre && in->pre[0] ? in->pre : "default";
    const struct pre_name *pn = NULL;
    for (size_t i = 0; i < sizeof k_pre_names / sizeof k_pre_names[0]; i++)
        if (!strcmp(k_pre_names[i].name, pre))
            pn = &k_pre_names[i];
    if (!pn) {
        sp_error(EINVAL, "tokenizer: unknown pre-tokenizer tokenizer.ggml.pre = \"%.60s\" (supported: default, "
                 "gpt2, smollm, starcoder, llama-bpe, llama3, qwen2, and their llama.cpp aliases)", pre);
        goto fail;
    }
    t->n_tokens = (int32_t)in->n_tokens;
    t->kind = pn->kind;
    t->ignore_merges = pn->ignore_merges;
    snprintf(t->pre_name, sizeof t->pre_name, "%s", pn->name);

    if (!(t->attr = malloc(in->n_tokens * sizeof *t->attr))) {
        sp_error(ENOMEM, "tokenizer: out of memory for %zu tokens", in->n_tokens);
        goto fail;
    }
    for (size_t i = 0; i < in->n_tokens; i++) {
        const char *s = in->tokens[i];
        if (!s) {
            sp_error(EINVAL, "tokenizer: token %zu is NULL", i);
            goto fail;
        }
        size_t len = in->token_lens ? in->token_lens[i] : strlen(s);
        char empty[32];
        if (len == 0) {   /* llama.cpp renames empty tokens so that every text stays unique */
            snprintf(empty, sizeof empty, "[EMPTY_%zu]", i);
            s = empty;
            len = strlen(empty);
        }
        int32_t dup = str_find(t, s, len);
        if (dup >= 0) {
            sp_error(EINVAL, "tokenizer: tokens %d and %zu have the same text \"%.*s\"", dup, i,
                     (int)(len > 60 ? 60 : len), s);
            goto fail;
        }
        int32_t id = str_add(t, s, len);
        if (id < 0) {
            sp_error(-id, "tokenizer: out of memory storing token %zu", i);
            goto fail;
        }
        int type = in->token_types ? in->token_types[i] : SP_TOKEN_TYPE_NORMAL;
        switch (type) {
        case SP_TOKEN_TYPE_NORMAL: t->attr[i] = ATTR_NORMAL; break;
        case SP_TOKEN_TYPE_UNKNOWN: t->attr[i] = ATTR_UNKNOWN; break;
        case SP_TOKEN_TYPE_CONTROL: t->attr[i] = ATTR_CONTROL; break;
        case SP_TOKEN_TYPE_USER_DEFINED: t->attr[i] = ATTR_USER_DEFINED; break;
        case SP_TOKEN_TYPE_UNUSED: t->attr[i] = ATTR_UNUSED; break;
        case SP_TOKEN_TYPE_BYTE: t->attr[i] = ATTR_BYTE; break;
        default: t->attr[i] = ATTR_UNDEFINED; break;
        }
    }

    /* GPT-2 bytes_to_unicode: printable Latin-1 maps to itself, the other 68 bytes to U+0100.. */
    for (int i = 0; i < 324; i++)
        t->cp_byte[i] = -1;
    int n_extra = 0;
    for (int b = 0; b < 256; b++) {
        bool keep = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        t->byte_cp[b] = keep ? (uint32_t)b : (uint32_t)(256 + n_extra++);
        t->cp_byte[t->byte_cp[b]] = (int16_t)b;
    }

    if (build_merges(t, in) < 0)
        goto fail;
    for (int b = 0; b < 256; b++) {
        unsigned char u[4];
        int n = utf8_put(t->byte_cp[b], u);
        if ((t->byte_sym[b] = str_intern(t, u, (size_t)n)) < 0) {
            sp_error(ENOMEM, "tokenizer: out of memory");
            goto fail;
        }
    }

    if (check_id(t, "bos_token_id", in->bos) < 0 || check_id(t, "eos_token_id", in->eos) < 0 ||
        check_id(t, "eot_token_id", in->eot) < 0 || check_id(t, "eom_token_id", in->eom) < 0 ||
        check_id(t, "padding_token_id", in->pad) < 0 || check_id(t, "fim_pad_token_id", in->fim_pad) < 0 ||
        check_id(t, "fim_rep_token_id", in->fim_rep) < 0 || check_id(t, "fim_sep_token_id", in->fim_sep) < 0)
        goto fail;
    t->bos = in->bos;
    t->eos = in->eos;
    t->pad = in->pad;
    t->add_bos = in->add_bos_set ? in->add_bos : pn->add_bos;
    t->add_eos = in->add_eos;
    apply_text_rules(t, in);

    size_t n_sp = 0;
    for (int32_t id = 0; id < t->n_tokens; id++)
        n_sp += (t->attr[id] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN)) != 0;
    if (n_sp) {
        if (!(t->specials = malloc(n_sp * sizeof *t->specials))) {
            sp_error(ENOMEM, "tokenizer: out of memory");
            goto fail;
        }
        for (int32_t id = 0; id < t->n_tokens; id++)
            if (t->attr[id] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN))
                t->specials[t->n_specials++] = id;
        /* llama.cpp sorts by length with an unstable sort; ties only matter for equally long special
         * texts that overlap in the input, and we break them by id. */
        qsort_r(t->specials, t->n_specials, sizeof *t->specials, cmp_special, t);
    }

    if (find_text(t, "<|im_start|>") >= 0)
        t->chat = "chatml";
    else if (find_text(t, "<|start_header_id|>") >= 0)
        t->chat = "llama3";
    else
        t->chat = "none";

    if (compile_pre(t) < 0)
        goto fail;
    return t;
fail:
    sp_tokenizer_free(t);
    return NULL;
}

sp_tokenizer_t *sp_tokenizer_new(const sp_tokenizer_desc *d)
{
    if (!d) {
        sp_error(EINVAL, "tokenizer: NULL description");
        return NULL;
    }
    if (d->token_types)
        for (size_t i = 0; i < d->n_tokens; i++)
            if (d->token_types[i] < 0 || d->token_types[i] > SP_TOKEN_TYPE_BYTE) {
                sp_error(EINVAL, "tokenizer: token %zu has type %d (valid: 0..6)", i, d->token_types[i]);
                return NULL;
            }
    build_in in = {
        .n_tokens = d->n_tokens, .tokens = d->tokens, .token_lens = d->token_lens,
        .token_types = d->token_types, .n_merges = d->n_merges, .merges = d->merges,
        .merge_lens = d->merge_lens, .pre = d->pre, .bos = d->bos_id, .eos = d->eos_id,
        .eot = d->eot_id, .eom = -1, .pad = d->pad_id, .fim_pad = -1, .fim_rep = -1, .fim_sep = -1,
        .add_bos = d->add_bos, .add_eos = d->add_eos, .add_bos_set = true,
    };
    return build(&in);
}

/* Optional special-token id from the GGUF: missing -> def; out of range -> def with a notice (as
 * llama.cpp, which warns and keeps its default). */
static int32_t gguf_special_id(const sp_gguf_t *g, const char *key, int32_t def, size_t n_tokens)
{
    if (def >= 0 && (size_t)def >= n_tokens)
        def = -1;
    if (sp_gguf_find_key(g, key) < 0)
        return def;
    int64_t v;
    if (sp_gguf_get_i64(g, key, &v) < 0 || v < 0 || (uint64_t)v >= n_tokens) {
        sp_notice("tokenizer: %s is not a valid token id for a vocabulary of %zu tokens; using %d",
                  key, n_tokens, def);
        return def;
    }
    return (int32_t)v;
}

sp_tokenizer_t *sp_tokenizer_from_gguf_pre(const sp_gguf_t *g, const char *pre_override)
{
    sp_tokenizer_t *t = NULL;
    const char **toks = NULL, **merges = NULL;
    size_t *tok_lens = NULL, *merge_lens = NULL;
    int32_t *types = NULL;
    char pre[128] = "";

    if (!g) {
        sp_error(EINVAL, "tokenizer: NULL GGUF handle");
        return NULL;
    }
    sp_gguf_str model;
    if (sp_gguf_get_str(g, "tokenizer.ggml.model", &model) < 0) {
        sp_error(EINVAL, "%s: tokenizer.ggml.model is missing or not a string: no vocabulary in this file",
                 sp_gguf_path(g));
        return NULL;
    }
    if (model.len != 4 || memcmp(model.ptr, "gpt2", 4) != 0) {
        sp_error(EINVAL, "%s: tokenizer.ggml.model = \"%.*s\" is not supported (only \"gpt2\", byte-level BPE)",
                 sp_gguf_path(g), (int)(model.len > 60 ? 60 : model.len), model.ptr);
        return NULL;
    }
    sp_gguf_vtype et;
    uint64_t n_tok = 0, n_merges = 0;
    if (sp_gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n_tok) < 0 || et != SP_GGUF_STRING || n_tok == 0 ||
        n_tok >= (uint64_t)INT32_MAX / 2) {
        sp_error(EINVAL, "%s: tokenizer.ggml.tokens must be a non-empty array of strings", sp_gguf_path(g));
        return NULL;
    }
    if (sp_gguf_find_key(g, "tokenizer.ggml.merges") < 0) {
        sp_error(EINVAL, "%s: tokenizer.ggml.merges is missing: a gpt2 (BPE) vocabulary needs its merges",
                 sp_gguf_path(g));
        return NULL;
    }
    if (sp_gguf_get_arr(g, "tokenizer.ggml.merges", &et, &n_merges) < 0 || et != SP_GGUF_STRING) {
        sp_error(EINVAL, "%s: tokenizer.ggml.merges must be an array of strings", sp_gguf_path(g));
        return NULL;
    }
    toks = malloc(n_tok * sizeof *toks);
    tok_lens = malloc(n_tok * sizeof *tok_lens);
    merges = malloc((n_merges ? n_merges : 1) * sizeof *merges);
    merge_lens = malloc((n_merges ? n_merges : 1) * sizeof *merge_lens);
    if (!toks || !tok_lens || !merges || !merge_lens) {
        sp_error(ENOMEM, "tokenizer: out of memory reading %" PRIu64 " tokens", n_tok);
        goto out;
    }
    for (uint64_t i = 0; i < n_tok; i++) {
        sp_gguf_str s;
        if (sp_gguf_arr_str(g, "tokenizer.ggml.tokens", i, &s) < 0)
            goto out;
        toks[i] = s.ptr;
        tok_lens[i] = (size_t)s.len;
    }
    for (uint64_t i = 0; i < n_merges; i++) {
        sp_gguf_str s;
        if (sp_gguf_arr_str(g, "tokenizer.ggml.merges", i, &s) < 0)
            goto out;
        merges[i] = s.ptr;
        merge_lens[i] = (size_t)s.len;
    }
    if (sp_gguf_find_key(g, "tokenizer.ggml.token_type") >= 0) {
        uint64_t n_types = 0;
        if (sp_gguf_get_arr(g, "tokenizer.ggml.token_type", &et, &n_types) < 0 || et != SP_GGUF_INT32) {
            sp_error(EINVAL, "%s: tokenizer.ggml.token_type must be an array of int32", sp_gguf_path(g));
            goto out;
        }
        if (n_types < n_tok) {
            sp_error(EINVAL, "%s: tokenizer.ggml.token_type has %" PRIu64 " entries for %" PRIu64 " tokens",
                     sp_gguf_path(g), n_types, n_tok);
            goto out;
        }
        if (!(types = malloc(n_tok * sizeof *types))) {
            sp_error(ENOMEM, "tokenizer: out of memory");
            goto out;
        }
        for (uint64_t i = 0; i < n_tok; i++) {
            int64_t v;
            if (sp_gguf_arr_i64(g, "tokenizer.ggml.token_type", i, &v) < 0)
                goto out;
            types[i] = (int32_t)v;   /* out-of-range types become UNDEFINED, as in llama.cpp */
        }
    }
    if (pre_override) {
        snprintf(pre, sizeof pre, "%s", pre_override);
    } else if (sp_gguf_find_key(g, "tokenizer.ggml.pre") >= 0) {
        sp_gguf_str s;
        if (sp_gguf_get_str(g, "tokenizer.ggml.pre", &s) < 0) {
            sp_error(EINVAL, "%s: tokenizer.ggml.pre is not a string", sp_gguf_path(g));
            goto out;
        }
        snprintf(pre, sizeof pre, "%.*s", (int)(s.len < sizeof pre ? s.len : sizeof pre - 1), s.ptr);
    } else {
        sp_notice("%s: tokenizer.ggml.pre is missing; using the \"default\" pre-tokenizer (tokenization "
                  "may differ from the model's training)", sp_gguf_path(g));
        snprintf(pre, sizeof pre, "default");
    }

    build_in in = {
        .n_tokens = (size_t)n_tok, .tokens = toks, .token_lens = tok_lens, .token_types = types,
        .n_merges = (size_t)n_merges, .merges = merges, .merge_lens = merge_lens, .pre = pre,
        /* llama.cpp's defaults for gpt2 vocabularies: bos = eos = 11 unless the file says otherwise */
        .bos = gguf_special_id(g, "tokenizer.ggml.bos_token_id", 11, (size_t)n_tok),
        .eos = gguf_special_id(g, "tokenizer.ggml.eos_token_id", 11, (size_t)n_tok),
        .eot = gguf_special_id(g, "tokenizer.ggml.eot_token_id", -1, (size_t)n_tok),
        .eom = gguf_special_id(g, "tokenizer.ggml.eom_token_id", -1, (size_t)n_tok),
        .pad = gguf_special_id(g, "tokenizer.ggml.padding_token_id", -1, (size_t)n_tok),
        .fim_pad = gguf_special_id(g, "tokenizer.ggml.fim_pad_token_id", -1, (size_t)n_tok),
        .fim_rep = gguf_special_id(g, "tokenizer.ggml.fim_rep_token_id", -1, (size_t)n_tok),
        .fim_sep = gguf_special_id(g, "tokenizer.ggml.fim_sep_token_id", -1, (size_t)n_tok),
    };
    if (sp_gguf_find_key(g, "tokenizer.ggml.add_bos_token") >= 0) {
        if (sp_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &in.add_bos) < 0)
            goto out;
        in.add_bos_set = true;
    }
    if (sp_gguf_find_key(g, "tokenizer.ggml.add_eos_token") >= 0 &&
        sp_gguf_get_bool(g, "tokenizer.ggml.add_eos_token", &in.add_eos) < 0)
        goto out;
    t = build(&in);
out:
    free(toks);
    free(tok_lens);
    free(merges);
    free(merge_lens);
    free(types);
    return t;
}

sp_tokenizer_t *sp_tokenizer_from_gguf(const sp_gguf_t *g)
{
    return sp_tokenizer_from_gguf_pre(g, NULL);
}

void sp_tokenizer_free(sp_tokenizer_t *t)
{
    if (!t)
        return;
    for (int i = 0; i < t->n_rx; i++)
        pcre2_code_free(t->rx[i]);
    free(t->specials);
    free(t->merges);
    free(t->attr);
    free(t->str_slots);
    free(t->strs);
    free(t->pool);
    free(t);
}

/* ---- encoding --------------------------------------------------------------------------------- */

typedef struct frag {
    int32_t id;          /* special token id, or -1 for raw text */
    size_t off, len;     /* raw text range */
} frag;

typedef struct symbol {
    int32_t sym;         /* interned id of the symbol's text */
    uint32_t start, len; /* byte range in the piece; len 0 = merged away */
    int32_t prev, next;
} symbol;

typedef struct bigram {
    uint32_t rank;
    int32_t left, right;
    uint32_t llen, rlen; /* lengths when pushed: a change means the pair is stale */
    int32_t res;         /* interned id of the merged text */
} bigram;

/* Per-call scratch: grows, never shrinks, freed at the end of the call. */
typedef struct work {
    int32_t *out;
    size_t cap, n;       /* ids written so far (counting past cap) */
    uint32_t *cps;
    size_t cps_cap;
    unsigned char *shadow;
    size_t shadow_cap;
    size_t *sh_off;      /* [n_cp + 1] byte offset of each code point in the shadow */
    size_t sh_off_cap;
    size_t *chunks, *chunks2;   /* pairs (start cp, end cp) */
    size_t chunks_cap, chunks2_cap;
    unsigned char *word;
    size_t word_cap;
    symbol *syms;
    size_t syms_cap;
    bigram *heap;
    size_t heap_n, heap_cap;
    pcre2_match_data *md;
} work;

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : 64;
    while (c < need)
        c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q)
        return sp_error(ENOMEM, "tokenizer: out of memory (%zu bytes of scratch)", c * elem);
    *p = q;
    *cap = c;
    return 0;
}

static void work_free(work *w)
{
    free(w->cps);
    free(w->shadow);
    free(w->sh_off);
    free(w->chunks);
    free(w->chunks2);
    free(w->word);
    free(w->syms);
    free(w->heap);
    pcre2_match_data_free(w->md);
}

static void emit(work *w, int32_t id)
{
    if (w->n < w->cap)
        w->out[w->n] = id;
    w->n++;
}

static bool bigram_less(const bigram *a, const bigram *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static int heap_push(work *w, const bigram *b)
{
    if (grow((void **)&w->heap, &w->heap_cap, w->heap_n + 1, sizeof *w->heap) < 0)
        return -ENOMEM;
    size_t i = w->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!bigram_less(b, &w->heap[p]))
            break;
        w->heap[i] = w->heap[p];
        i = p;
    }
    w->heap[i] = *b;
    return 0;
}

static bigram heap_pop(work *w)
{
    bigram top = w->heap[0], last = w->heap[--w->heap_n];
    size_t i = 0, n = w->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && bigram_less(&w->heap[c + 1], &w->heap[c]))
            c++;
        if (!bigram_less(&w->heap[c], &last))
            break;
        w->heap[i] = w->heap[c];
        i = c;
    }
    if (n)
        w->heap[i] = last;
    return top;
}

static int try_pair(const sp_tokenizer_t *t, work *w, int32_t left, int32_t right)
{
    if (left < 0 || right < 0)
        return 0;
    uint32_t rank;
    int32_t res;
    if (!merge_find(t, w->syms[left].sym, w->syms[right].sym, &rank, &res))
        return 0;
    bigram b = {rank, left, right, w->syms[left].len, w->syms[right].len, res};
    return heap_push(w, &b);
}

/* Tokens of a symbol that is not in the vocabulary: llama.cpp looks up every byte of the symbol's
 * byte-mapped UTF-8 text as a one-byte token and drops those that do not exist. */
static void emit_fallback(const sp_tokenizer_t *t, work *w, const unsigned char *bytes, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char u[4];
        int k = utf8_put(t->byte_cp[bytes[i]], u);
        for (int j = 0; j < k; j++) {
            int32_t id = str_find(t, &u[j], 1);
            if (id >= 0 && id < t->n_tokens)
                emit(w, id);
        }
    }
}

/* BPE over one pre-tokenized piece (raw bytes, before the byte mapping). */
static int bpe_piece(const sp_tokenizer_t *t, work *w, const unsigned char *p, size_t n)
{
    if (t->ignore_merges) {
        /* the whole piece, byte-mapped, may itself be a token */
        unsigned char stack[256], *m = stack;
        unsigned char *heap_buf = NULL;
        if (n * 2 > sizeof stack) {
            if (!(heap_buf = malloc(n * 2)))
                return sp_error(ENOMEM, "tokenizer: out of memory");
            m = heap_buf;
        }
        size_t k = 0;
        for (size_t i = 0; i < n; i++)
            k += (size_t)utf8_put(t->byte_cp[p[i]], m + k);
        int32_t id = str_find(t, m, k);
        free(heap_buf);
        if (id >= 0 && id < t->n_tokens) {
            emit(w, id);
            return 0;
        }
    }
    if (grow((void **)&w->syms, &w->syms_cap, n, sizeof *w->syms) < 0)
        return -ENOMEM;
    symbol *s = w->syms;
    for (size_t i = 0; i < n; i++) {
        s[i].sym = t->byte_sym[p[i]];
        s[i].start = (uint32_t)i;
        s[i].len = 1;
        s[i].prev = (int32_t)i - 1;
        s[i].next = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    w->heap_n = 0;
    for (size_t i = 1; i < n; i++)
        if (try_pair(t, w, (int32_t)i - 1, (int32_t)i) < 0)
            return -ENOMEM;
    while (w->heap_n) {
        bigram b = heap_pop(w);
        symbol *l = &w->syms[b.left], *r = &w->syms[b.right];
        if (l->len == 0 || r->len == 0 || l->len != b.llen || r->len != b.rlen)
            continue;
        l->sym = b.res;
        l->len += r->len;
        r->len = 0;
        l->next = r->next;
        if (r->next >= 0)
            w->syms[r->next].prev = b.left;
        if (try_pair(t, w, l->prev, b.left) < 0 || try_pair(t, w, b.left, l->next) < 0)
            return -ENOMEM;
    }
    for (int32_t i = 0; i >= 0; i = w->syms[i].next) {
        const symbol *x = &w->syms[i];
        if (x->sym >= 0 && x->sym < t->n_tokens)
            emit(w, x->sym);
        else
            emit_fallback(t, w, p + x->start, x->len);
    }
    return 0;
}

static size_t cp_at(const size_t *sh_off, size_t lo, size_t hi, size_t byte)
{
    /* smallest i in [lo, hi] with sh_off[i] >= byte; matches start and end on code point boundaries */
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (sh_off[mid] < byte)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static int push_chunk(work *w, size_t *n, size_t a, size_t b)
{
    if (grow((void **)&w->chunks2, &w->chunks2_cap, (*n + 1) * 2, sizeof *w->chunks2) < 0)
        return -ENOMEM;
    w->chunks2[2 * *n] = a;
    w->chunks2[2 * *n + 1] = b;
    (*n)++;
    return 0;
}

/* One raw-text fragment: decode, pre-split, BPE. */
static int encode_fragment(const sp_tokenizer_t *t, work *w, const unsigned char *text, size_t len)
{
    if (grow((void **)&w->cps, &w->cps_cap, len, sizeof *w->cps) < 0 ||
        grow((void **)&w->sh_off, &w->sh_off_cap, len + 1, sizeof *w->sh_off) < 0 ||
        grow((void **)&w->shadow, &w->shadow_cap, len * 3 + 4, 1) < 0)
        return -ENOMEM;
    size_t n_cp = 0, sh = 0;
    for (size_t i = 0; i < len;) {
        size_t adv;
        uint32_t cp = utf8_get(text + i, len - i, &adv);
        i += adv;
        /* U+FFFD and stand-ins take 3 bytes for an invalid byte: the shadow can outgrow the text */
        if (grow((void **)&w->shadow, &w->shadow_cap, sh + 4, 1) < 0)
            return -ENOMEM;
        w->cps[n_cp] = cp;
        w->sh_off[n_cp++] = sh;
        sh += (size_t)utf8_put(shadow_cp(cp), w->shadow + sh);
    }
    w->sh_off[n_cp] = sh;

    size_t n_chunks = 1;
    if (grow((void **)&w->chunks, &w->chunks_cap, 2, sizeof *w->chunks) < 0)
        return -ENOMEM;
    w->chunks[0] = 0;
    w->chunks[1] = n_cp;
    for (int r = 0; r < t->n_rx; r++) {
        size_t n2 = 0;
        for (size_t c = 0; c < n_chunks; c++) {
            size_t s = w->chunks[2 * c], e = w->chunks[2 * c + 1];
            const unsigned char *subj = w->shadow + w->sh_off[s];
            size_t sublen = w->sh_off[e] - w->sh_off[s], pos = 0, prev = s;
            while (pos < sublen) {
                int rc = pcre2_match(t->rx[r], subj, sublen, pos, PCRE2_NO_UTF_CHECK, w->md, NULL);
                if (rc == PCRE2_ERROR_NOMATCH)
                    break;
                if (rc < 0) {
                    PCRE2_UCHAR msg[256];
                    pcre2_get_error_message(rc, msg, sizeof msg);
                    return sp_error(EIO, "tokenizer: PCRE2 match failed: %s", (const char *)msg);
                }
                PCRE2_SIZE *ov = pcre2_get_ovector_pointer(w->md);
                size_t ms = cp_at(w->sh_off, s, e, w->sh_off[s] + ov[0]);
                size_t me = cp_at(w->sh_off, s, e, w->sh_off[s] + ov[1]);
                if (me == ms) {   /* no pattern matches empty; guard against looping anyway */
                    pos = w->sh_off[ms + 1 <= e ? ms + 1 : e] - w->sh_off[s];
                    continue;
                }
                if (ms > prev && push_chunk(w, &n2, prev, ms) < 0)
                    return -ENOMEM;
                if (push_chunk(w, &n2, ms, me) < 0)
                    return -ENOMEM;
                prev = me;
                pos = ov[1];
            }
            if (prev < e && push_chunk(w, &n2, prev, e) < 0)
                return -ENOMEM;
        }
        size_t *tmp = w->chunks, tcap = w->chunks_cap;
        w->chunks = w->chunks2;
        w->chunks_cap = w->chunks2_cap;
        w->chunks2 = tmp;
        w->chunks2_cap = tcap;
        n_chunks = n2;
    }

    for (size_t c = 0; c < n_chunks; c++) {
        size_t s = w->chunks[2 * c], e = w->chunks[2 * c + 1];
        if (grow((void **)&w->word, &w->word_cap, (e - s) * 4, 1) < 0)
            return -ENOMEM;
        size_t k = 0;
        for (size_t i = s; i < e; i++)   /* canonical re-encoding, as llama.cpp rebuilds its words */
            k += (size_t)utf8_put(w->cps[i], w->word + k);
        int rc = bpe_piece(t, w, w->word, k);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Cut special tokens out of the text, longest text first; each one splits every raw fragment at all
 * of its (non-overlapping, leftmost-first) occurrences. Two arrays are swapped per token. */
static int frag_push(frag **a, size_t *n, size_t *cap, frag f)
{
    if (grow((void **)a, cap, *n + 1, sizeof **a) < 0)
        return -ENOMEM;
    (*a)[(*n)++] = f;
    return 0;
}

static int split_specials(const sp_tokenizer_t *t, const char *text, size_t len, bool parse_special,
                          frag **fr, size_t *n_fr)
{
    frag *a = NULL, *b = NULL;
    size_t na = 0, nb = 0, cap_a = 0, cap_b = 0;
    int rc = frag_push(&a, &na, &cap_a, (frag){-1, 0, len});
    for (size_t k = 0; rc == 0 && k < t->n_specials; k++) {
        int32_t id = t->specials[k];
        if (!parse_special && (t->attr[id] & (ATTR_CONTROL | ATTR_UNKNOWN)))
            continue;
        const char *st = t->pool + t->strs[id].off;
        size_t sl = t->strs[id].len;
        nb = 0;
        for (size_t f = 0; rc == 0 && f < na; f++) {
            const char *hit = NULL;
            if (a[f].id < 0 && a[f].len >= sl)
                hit = memmem(text + a[f].off, a[f].len, st, sl);
            if (!hit) {
                rc = frag_push(&b, &nb, &cap_b, a[f]);
                continue;
            }
            size_t cur = a[f].off, end = a[f].off + a[f].len;
            while (hit && rc == 0) {
                size_t h = (size_t)(hit - text);
                if (h > cur)
                    rc = frag_push(&b, &nb, &cap_b, (frag){-1, cur, h - cur});
                if (rc == 0)
                    rc = frag_push(&b, &nb, &cap_b, (frag){id, h, sl});
                cur = h + sl;
                hit = end - cur >= sl ? memmem(text + cur, end - cur, st, sl) : NULL;
            }
            if (rc == 0 && cur < end)
                rc = frag_push(&b, &nb, &cap_b, (frag){-1, cur, end - cur});
        }
        frag *tf = a;
        size_t tc = cap_a;
        a = b;
        cap_a = cap_b;
        na = nb;
        b = tf;
        cap_b = tc;
    }
    free(b);
    if (rc < 0) {
        free(a);
        return rc;
    }
    *fr = a;
    *n_fr = na;
    return 0;
}

int sp_tokenizer_encode(const sp_tokenizer_t *t, const char *text, size_t len, bool add_special,
                        bool parse_special, int32_t *out, size_t cap, size_t *n_out)
{
    if (n_out)
        *n_out = 0;
    if (!t || !n_out || (!text && len) || (!out && cap))
        return sp_error(EINVAL, "tokenizer: encode called with a NULL tokenizer, text, output or count");
    work w = {.out = out, .cap = cap};
    frag *fr = NULL;
    size_t n_fr = 0;
    int rc = 0;
    if (!(w.md = pcre2_match_data_create(1, NULL))) {
        rc = sp_error(ENOMEM, "tokenizer: out of memory");
        goto out;
    }
    if (add_special && t->add_bos && t->bos >= 0)
        emit(&w, t->bos);
    if (len) {
        if ((rc = split_specials(t, text, len, parse_special, &fr, &n_fr)) < 0)
            goto out;
        for (size_t i = 0; i < n_fr; i++) {
            if (fr[i].id >= 0)
                emit(&w, fr[i].id);
            else if ((rc = encode_fragment(t, &w, (const unsigned char *)text + fr[i].off, fr[i].len)) < 0)
                goto out;
        }
    }
    if (add_special && t->add_eos && t->eos >= 0)
        emit(&w, t->eos);
    *n_out = w.n;
    if (w.n > cap)
        rc = -ENOSPC;
out:
    free(fr);
    work_free(&w);
    return rc;
}

/* ---- decoding --------------------------------------------------------------------------------- */

/* Writes up to cap bytes of the piece and returns its full length (or -EINVAL). */
static int piece_write(const sp_tokenizer_t *t, int32_t id, bool special, char *buf, size_t cap)
{
    if (!t || id < 0 || id >= t->n_tokens)
        return sp_error(EINVAL, "tokenizer: token id %d is outside the vocabulary", id);
    unsigned a = t->attr[id];
    const unsigned char *s = (const unsigned char *)t->pool + t->strs[id].off;
    size_t len = t->strs[id].len, n = 0;
    if (!special && (a & (ATTR_UNKNOWN | ATTR_CONTROL)))
        return 0;
    if (a & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED)) {
        if (cap) /* buf may be NULL when only the length is asked for */
            memcpy(buf, s, len < cap ? len : cap);
        return (int)len;
    }
    if (a & ATTR_BYTE && len == 6 && !memcmp(s, "<0x", 3) && s[5] == '>') {
        unsigned v;
        if (sscanf((const char *)s + 3, "%2x", &v) == 1) {
            if (cap)
                buf[0] = (char)v;
            return 1;
        }
    }
    if (!(a & (ATTR_NORMAL | ATTR_BYTE)))
        return 0;
    for (size_t i = 0; i < len;) {
        size_t adv;
        uint32_t cp = utf8_get(s + i, len - i, &adv);
        if (cp < 324 && t->cp_byte[cp] >= 0) {
            if (n < cap)
                buf[n] = (char)t->cp_byte[cp];
            n++;
        } else {   /* not a mapped byte (llama.cpp prints an [UNK_BYTE] marker): keep the raw text */
            for (size_t j = 0; j < adv; j++, n++)
                if (n < cap)
                    buf[n] = (char)s[i + j];
        }
        i += adv;
    }
    return (int)n;
}

int sp_tokenizer_piece_len(const sp_tokenizer_t *t, int32_t id, bool special)
{
    return piece_write(t, id, special, NULL, 0);
}

int sp_tokenizer_token_to_piece(const sp_tokenizer_t *t, int32_t id, bool special, char *buf, size_t cap)
{
    int n = piece_write(t, id, special, NULL, 0);
    if (n < 0)
        return n;
    if ((size_t)n > cap)
        return sp_error(ENOSPC, "tokenizer: piece of token %d needs %d bytes, buffer has %zu", id, n, cap);
    return piece_write(t, id, special, buf, cap);
}

int sp_tokenizer_decode(const sp_tokenizer_t *t, const int32_t *ids, size_t n, bool special, char *out,
                        size_t cap, size_t *n_out)
{
    if (n_out)
        *n_out = 0;
    if (!t || !n_out || (!ids && n) || (!out && cap))
        return sp_error(EINVAL, "tokenizer: decode called with a NULL tokenizer, ids, output or count");
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        int k = piece_write(t, ids[i], special, total < cap ? out + total : NULL, total < cap ? cap - total : 0);
        if (k < 0)
            return k;
        total += (size_t)k;
    }
    *n_out = total;
    if (total > cap)
        return sp_error(ENOSPC, "tokenizer: decoded text needs %zu bytes, buffer has %zu", total, cap);
    return 0;
}

void sp_tokenizer_stream_init(sp_tokenizer_stream *s)
{
    if (s)
        memset(s, 0, sizeof *s);
}

static size_t utf8_need(unsigned char c)
{
    if (c >= 0xC0 && c < 0xE0)
        return 2;
    if (c >= 0xE0 && c < 0xF0)
        return 3;
    if (c >= 0xF0 && c < 0xF8)
        return 4;
    return 1;
}

int sp_tokenizer_stream_put(const sp_tokenizer_t *t, sp_tokenizer_stream *s, int32_t id, bool special,
                            char *out, size_t cap)
{
    if (!s || (!out && cap))
        return sp_error(EINVAL, "tokenizer: stream_put with a NULL stream or buffer");
    int plen = piece_write(t, id, special, NULL, 0);
    if (plen < 0)
        return plen;
    size_t total = s->n_pend + (size_t)plen;
    if (total > cap)
        return sp_error(ENOSPC, "tokenizer: stream_put needs %zu bytes of buffer, has %zu", total, cap);
    memcpy(out, s->pend, s->n_pend);
    piece_write(t, id, special, out + s->n_pend, (size_t)plen);
    /* hold back a trailing character whose continuation bytes have not all arrived yet */
    size_t hold = 0;
    for (size_t back = 1; back <= 3 && back <= total; back++) {
        unsigned char c = (unsigned char)out[total - back];
        if ((c & 0xC0) == 0x80)
            continue;   /* continuation byte: keep looking for its lead */
        if (utf8_need(c) > back)
            hold = back;
        break;
    }
    memcpy(s->pend, out + total - hold, hold);
    s->n_pend = (uint32_t)hold;
    return (int)(total - hold);
}

int sp_tokenizer_stream_flush(sp_tokenizer_stream *s, char *out, size_t cap)
{
    if (!s || (!out && cap))
        return sp_error(EINVAL, "tokenizer: stream_flush with a NULL stream or buffer");
    if (s->n_pend > cap)
        return sp_error(ENOSPC, "tokenizer: stream_flush needs %u bytes", s->n_pend);
    int n = (int)s->n_pend;
    memcpy(out, s->pend, s->n_pend);
    s->n_pend = 0;
    return n;
}

/* ---- vocabulary facts ------------------------------------------------------------------------- */

int32_t sp_tokenizer_n_vocab(const sp_tokenizer_t *t) { return t ? t->n_tokens : 0; }
int32_t sp_tokenizer_bos(const sp_tokenizer_t *t) { return t ? t->bos : -1; }
int32_t sp_tokenizer_eos(const sp_tokenizer_t *t) { return t ? t->eos : -1; }
int32_t sp_tokenizer_eot(const sp_tokenizer_t *t) { return t ? t->eot : -1; }
int32_t sp_tokenizer_pad(const sp_tokenizer_t *t) { return t ? t->pad : -1; }
bool sp_tokenizer_add_bos(const sp_tokenizer_t *t) { return t && t->add_bos; }
const char *sp_tokenizer_pre(const sp_tokenizer_t *t) { return t ? t->pre_name : NULL; }
const char *sp_tokenizer_chat_template(const sp_tokenizer_t *t) { return t ? t->chat : "none"; }

bool sp_tokenizer_is_eog(const sp_tokenizer_t *t, int32_t id)
{
    return t && id >= 0 && id < t->n_tokens && (t->attr[id] & ATTR_EOG);
}

bool sp_tokenizer_is_control(const sp_tokenizer_t *t, int32_t id)
{
    return t && id >= 0 && id < t->n_tokens && (t->attr[id] & (ATTR_CONTROL | ATTR_UNKNOWN));
}

int32_t sp_tokenizer_find(const sp_tokenizer_t *t, const char *text, size_t len)
{
    if (!t || (!text && len))
        return -1;
    int32_t id = str_find(t, text, len);
    return id < t->n_tokens ? id : -1;
}

int32_t sp_tokenizer_byte_to_token(const sp_tokenizer_t *t, unsigned char byte)
{
    if (!t)
        return -1;
    int32_t id = t->byte_sym[byte];
    return id < t->n_tokens ? id : -1;
}

const char *sp_tokenizer_token_text(const sp_tokenizer_t *t, int32_t id)
{
    if (!t || id < 0 || id >= t->n_tokens)
        return NULL;
    return t->pool + t->strs[id].off;
}
