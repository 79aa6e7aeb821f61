/* gguf.c - GGUF (llama.cpp model file) reader: validate once at open, then serve borrowed views.
 *
 * DESIGN
 * - The whole file is parsed and validated in sp_gguf_open*(); getters never re-validate. Every
 *   read goes through a cursor (struct rd) that checks `n <= size - pos` before touching bytes, so
 *   no arithmetic on untrusted values can overflow or read outside the buffer.
 * - Allocation is proportional to the file size, never to a count read from it: a count is accepted
 *   only if the bytes its elements need at minimum are still left in the file (13 bytes per key,
 *   32 per tensor, 8 per string-array element, the element size for fixed-size arrays, 12 per
 *   nested array). So a hostile 1 KiB file cannot request a gigabyte.
 * - Keys and tensor names go into open-addressing hash tables: duplicate detection and lookup are
 *   O(1) expected, not O(n^2) (a fuzzer-sized file can hold ~100k keys).
 * - String arrays (49k tokens, 49k merges) get an index of element pointers built at open, so
 *   sp_gguf_arr_str() is O(1) and the handle stays read-only (safe to share between threads).
 * - Arrays of arrays are walked (bounded depth) so the parse stays correct, but their elements
 *   are not exposed: sp_gguf_arr_str / arr_data / arr_* reject them with -EINVAL.
 * - Tensor types: ones dequant supports get their size from sp_type_row_bytes(); other ggml types
 *   with a known block layout (Q2_K, IQ*, I8, F64, ...) still get an exact size from a private
 *   table, so `inspect` can list such files and their data ranges are still validated; the model
 *   loader rejects them when it dequantizes. A type id unknown to ggml's table makes the size
 *   unknowable, so the file is rejected at open with a message naming the tensor and the type.
 * - Tensor data offsets must be multiples of the alignment and [off, off+nbytes) must lie inside
 *   the file; overlapping tensors are not rejected (harmless for a read-only mapping).
 */
#include "gguf.h"

#include "sp_error.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_MAGIC "GGUF"
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_ARRAY_DEPTH 8 /* nesting of arrays of arrays we walk; deeper is rejected */
#define GGUF_KV_MIN_BYTES 13   /* key length (8) + value type (4) + smallest value (1) */
#define GGUF_TI_MIN_BYTES 32   /* name length (8) + n_dims (4) + one dim (8) + type (4) + offset (8) */

struct kv {
    sp_gguf_str key;
    uint32_t type;       /* sp_gguf_vtype */
    uint32_t elem_type;  /* arrays: element type */
    uint64_t n;          /* arrays: element count; strings: byte length */
    const uint8_t *val;  /* scalars: the value bytes; strings: the characters; arrays: first element */
    const uint8_t **strs; /* string arrays: [n] pointers to each element's 8-byte length prefix */
};

struct sp_gguf {
    char *name;              /* file name used in messages (owned) */
    const uint8_t *base;     /* start of the file bytes */
    size_t size;             /* file size in bytes */
    bool mapped;             /* base is our mmap (unmapped on close) */
    uint32_t version;
    uint64_t alignment;
    uint64_t data_off;       /* absolute offset of the data section */
    int64_t n_kv;
    struct kv *kv;           /* [n_kv] */
    int64_t n_tensors;
    sp_gguf_tensor *tensors; /* [n_tensors] */
    uint32_t *kv_hash;       /* [kv_cap] index+1 into kv, 0 = empty */
    uint64_t kv_cap;         /* power of two */
    uint32_t *t_hash;        /* [t_cap] index+1 into tensors, 0 = empty */
    uint64_t t_cap;
};

/* ---- bounded reader ---- */

struct rd {
    const uint8_t *p;
    size_t size, pos;
    const char *name;
};

static size_t rd_left(const struct rd *r) { return r->size - r->pos; }

static int rd_bytes(struct rd *r, size_t n, const uint8_t **out, const char *what)
{
    if (n > rd_left(r))
        return sp_error(EINVAL, "%s: truncated %s at offset %zu (needs %zu bytes, %zu left in the file of %zu bytes)",
                        r->name, what, r->pos, n, rd_left(r), r->size);
    *out = r->p + r->pos;
    r->pos += n;
    return 0;
}

/* A little-endian number of n bytes into *v. */
static int rd_num(struct rd *r, void *v, size_t n, const char *what)
{
    const uint8_t *b = NULL;
    int rc = rd_bytes(r, n, &b, what);
    if (rc == 0)
        memcpy(v, b, n);
    return rc;
}

static int rd_u32(struct rd *r, uint32_t *v, const char *what) { return rd_num(r, v, sizeof *v, what); }
static int rd_u64(struct rd *r, uint64_t *v, const char *what) { return rd_num(r, v, sizeof *v, what); }

/* A length-prefixed string; `what` names it in messages (e.g. "key #3", "tensor #7 name"). */
static int rd_str(struct rd *r, sp_gguf_str *s, const char *what)
{
    uint64_t len;
    char buf[96];
    snprintf(buf, sizeof buf, "%s length", what);
    int rc = rd_u64(r, &len, buf);
    if (rc)
        return rc;
    if (len > rd_left(r))
        return sp_error(EINVAL, "%s: %s: string length %" PRIu64 " at offset %zu exceeds the %zu bytes left in the file "
                        "(truncated or corrupt)",
                        r->name, what, len, r->pos - 8, rd_left(r));
    s->ptr = (const char *)r->p + r->pos;
    s->len = len;
    r->pos += (size_t)len;
    return 0;
}

/* ---- value types ---- */

static const char *const vtype_names[] = {
    "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64",
};

static const char *vtype_name(uint32_t t) { return t <= SP_GGUF_FLOAT64 ? vtype_names[t] : "unknown"; }

/* Size of a fixed-size value type; 0 for string/array/unknown. */
static size_t vtype_size(uint32_t t)
{
    switch (t) {
    case SP_GGUF_UINT8: case SP_GGUF_INT8: case SP_GGUF_BOOL: return 1;
    case SP_GGUF_UINT16: case SP_GGUF_INT16: return 2;
    case SP_GGUF_UINT32: case SP_GGUF_INT32: case SP_GGUF_FLOAT32: return 4;
    case SP_GGUF_UINT64: case SP_GGUF_INT64: case SP_GGUF_FLOAT64: return 8;
    default: return 0;
    }
}

static bool vtype_valid(uint32_t t) { return t <= SP_GGUF_FLOAT64; }

/* Whether n elements of type et (valid) can fit in the bytes left: a fixed-size element takes its
 * size, a string at least its 8-byte length, a nested array at least its type and length (12). */
static int check_arr_len(const struct rd *r, const char *key, uint32_t et, uint64_t n, const char *what)
{
    size_t es = vtype_size(et);
    uint64_t min = es ? es : et == SP_GGUF_STRING ? 8 : 12;
    if (n > rd_left(r) / min)
        return sp_error(EINVAL, "%s: key '%s': %s length %" PRIu64 " of %s exceeds the %zu bytes left in the file",
                        r->name, key, what, n, vtype_name(et), rd_left(r));
    return 0;
}

/* Walk over one array body (element type + count + elements) without exposing it; used for
 * arrays nested inside arrays. Work is bounded by the file size: every element consumes bytes. */
static int skip_array(struct rd *r, int depth, const char *key)
{
    uint32_t et;
    uint64_t n;
    int rc;
    if (depth > GGUF_MAX_ARRAY_DEPTH)
        return sp_error(EINVAL, "%s: key '%s': arrays nested deeper than %d levels", r->name, key,
                        GGUF_MAX_ARRAY_DEPTH);
    if ((rc = rd_u32(r, &et, "nested array type")) || (rc = rd_u64(r, &n, "nested array length")))
        return rc;
    if (!vtype_valid(et))
        return sp_error(EINVAL, "%s: key '%s': unknown value type %" PRIu32 " in nested array", r->name, key, et);
    if ((rc = check_arr_len(r, key, et, n, "nested array")))
        return rc;
    size_t es = vtype_size(et);
    if (es) {
        r->pos += (size_t)(n * es);
        return 0;
    }
    for (uint64_t i = 0; i < n; i++) {
        if (et == SP_GGUF_STRING) {
            sp_gguf_str s;
            if ((rc = rd_str(r, &s, "nested array string")))
                return rc;
        } else if ((rc = skip_array(r, depth + 1, key))) {
            return rc;
        }
    }
    return 0;
}

/* Parse one key's value of type `t` into kv (the key name is already set). */
static int read_value(struct rd *r, struct kv *kv, const char *keyname)
{
    int rc;
    const uint8_t *b;
    size_t es = vtype_size(kv->type);
    if (es)
        return rd_bytes(r, es, &kv->val, keyname);
    if (kv->type == SP_GGUF_STRING) {
        sp_gguf_str s;
        char what[200];
        snprintf(what, sizeof what, "key '%s' value", keyname);
        if ((rc = rd_str(r, &s, what)))
            return rc;
        kv->val = (const uint8_t *)s.ptr;
        kv->n = s.len;
        return 0;
    }
    /* array */
    if ((rc = rd_u32(r, &kv->elem_type, "array element type")) || (rc = rd_u64(r, &kv->n, "array length")))
        return rc;
    if (!vtype_valid(kv->elem_type))
        return sp_error(EINVAL, "%s: key '%s': unknown value type %" PRIu32 " for array elements", r->name,
                        keyname, kv->elem_type);
    kv->val = r->p + r->pos;
    if ((rc = check_arr_len(r, keyname, kv->elem_type, kv->n, "array")))
        return rc;
    es = vtype_size(kv->elem_type);
    if (es)
        return rd_bytes(r, (size_t)(kv->n * es), &b, keyname);
    if (kv->elem_type == SP_GGUF_STRING) {
        /* n <= bytes left / 8 <= file size / 8: the index is at most the file's size */
        kv->strs = malloc((size_t)(kv->n ? kv->n : 1) * sizeof *kv->strs);
        if (!kv->strs)
            return sp_error(ENOMEM, "%s: key '%s': out of memory for %" PRIu64 " strings", r->name, keyname, kv->n);
        for (uint64_t i = 0; i < kv->n; i++) {
            sp_gguf_str s;
            char what[200];
            kv->strs[i] = r->p + r->pos;
            snprintf(what, sizeof what, "key '%s' element %" PRIu64, keyname, i);
            if ((rc = rd_str(r, &s, what)))
                return rc;
        }
        return 0;
    }
    for (uint64_t i = 0; i < kv->n; i++)
        if ((rc = skip_array(r, 1, keyname)))
            return rc;
    return 0;
}

/* ---- hash tables (FNV-1a, open addressing, linear probing) ---- */

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

/* Capacity: a power of two >= 2n (n is bounded by the file size, so this cannot overflow). */
static uint64_t table_cap(uint64_t n)
{
    uint64_t cap = 16;
    while (cap < 2 * n)
        cap <<= 1;
    return cap;
}

static bool kv_key_eq(const struct kv *kv, const char *s, size_t n)
{
    return kv->key.len == n && memcmp(kv->key.ptr, s, n) == 0;
}

/* Returns the key index, or -1. */
static int64_t kv_lookup(const sp_gguf_t *g, const char *s, size_t n)
{
    if (!g->kv_cap)
        return -1;
    for (uint64_t h = hash_bytes(s, n) & (g->kv_cap - 1);; h = (h + 1) & (g->kv_cap - 1)) {
        uint32_t e = g->kv_hash[h];
        if (!e)
            return -1;
        if (kv_key_eq(&g->kv[e - 1], s, n))
            return e - 1;
    }
}

static int64_t tensor_lookup(const sp_gguf_t *g, const char *s)
{
    size_t n = strlen(s);
    if (!g->t_cap)
        return -1;
    for (uint64_t h = hash_bytes(s, n) & (g->t_cap - 1);; h = (h + 1) & (g->t_cap - 1)) {
        uint32_t e = g->t_hash[h];
        if (!e)
            return -1;
        if (strcmp(g->tensors[e - 1].name, s) == 0)
            return e - 1;
    }
}

/* ---- ggml tensor types ---- */

/* Bytes of one row of n elements: 0 if the type is unknown or n is not a multiple of its block. */
static uint64_t tensor_row_bytes(uint32_t type, int64_t n)
{
    return sp_type_any_row_bytes(type, n);
}

/* ---- open ---- */

static int parse_kvs(sp_gguf_t *g, struct rd *r, uint64_t n_kv)
{
    int rc;
    if (n_kv > rd_left(r) / GGUF_KV_MIN_BYTES || n_kv >= UINT32_MAX)
        return sp_error(EINVAL, "%s: key count %" PRIu64 " is impossible for the %zu bytes left in the file",
                        g->name, n_kv, rd_left(r));
    g->kv = calloc(n_kv ? n_kv : 1, sizeof *g->kv);
    g->kv_cap = table_cap(n_kv);
    g->kv_hash = calloc(g->kv_cap, sizeof *g->kv_hash);
    if (!g->kv || !g->kv_hash)
        return sp_error(ENOMEM, "%s: out of memory for %" PRIu64 " keys", g->name, n_kv);
    for (uint64_t i = 0; i < n_kv; i++) {
        struct kv *kv = &g->kv[i];
        char what[64], keyname[160];
        snprintf(what, sizeof what, "key #%" PRIu64 " name", i);
        if ((rc = rd_str(r, &kv->key, what)))
            return rc;
        g->n_kv = (int64_t)i + 1; /* from here on close() frees this entry */
        snprintf(keyname, sizeof keyname, "%.*s", (int)(kv->key.len > 120 ? 120 : kv->key.len), kv->key.ptr);
        if ((rc = rd_u32(r, &kv->type, "key value type")))
            return rc;
        if (!vtype_valid(kv->type))
            return sp_error(EINVAL, "%s: key '%s': unknown value type %" PRIu32, g->name, keyname, kv->type);
        if ((rc = read_value(r, kv, keyname)))
            return rc;
        uint64_t h = hash_bytes(kv->key.ptr, kv->key.len) & (g->kv_cap - 1);
        for (; g->kv_hash[h]; h = (h + 1) & (g->kv_cap - 1))
            if (kv_key_eq(&g->kv[g->kv_hash[h] - 1], kv->key.ptr, kv->key.len))
                return sp_error(EINVAL, "%s: duplicate key '%s' (entries #%" PRIu32 " and #%" PRIu64 ")", g->name,
                                keyname, g->kv_hash[h] - 1, i);
        g->kv_hash[h] = (uint32_t)i + 1;
    }
    return 0;
}

static int parse_alignment(sp_gguf_t *g)
{
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    int64_t i = kv_lookup(g, "general.alignment", strlen("general.alignment"));
    if (i < 0)
        return 0;
    const struct kv *kv = &g->kv[i];
    if (kv->type != SP_GGUF_UINT32)
        return sp_error(EINVAL, "%s: general.alignment has type %s, expected u32", g->name, vtype_name(kv->type));
    uint32_t a;
    memcpy(&a, kv->val, 4);
    if (a == 0 || (a & (a - 1)))
        return sp_error(EINVAL, "%s: general.alignment = %" PRIu32 " is not a power of two", g->name, a);
    g->alignment = a;
    return 0;
}

static int parse_tensor(sp_gguf_t *g, struct rd *r, uint64_t i)
{
    sp_gguf_tensor *t = &g->tensors[i];
    sp_gguf_str name = {NULL, 0};
    char what[64];
    int rc;
    snprintf(what, sizeof what, "tensor #%" PRIu64 " name", i);
    if ((rc = rd_str(r, &name, what)))
        return rc;
    if (name.len == 0 || name.len >= sizeof t->name)
        return sp_error(EINVAL, "%s: tensor #%" PRIu64 ": name length %" PRIu64 " is not in 1..%zu", g->name, i,
                        name.len, sizeof t->name - 1);
    if (memchr(name.ptr, '\0', name.len))
        return sp_error(EINVAL, "%s: tensor #%" PRIu64 ": name contains a NUL byte", g->name, i);
    memcpy(t->name, name.ptr, name.len);
    t->name[name.len] = '\0';
    if ((rc = rd_u32(r, &t->n_dims, "tensor n_dims")))
        return rc;
    if (t->n_dims < 1 || t->n_dims > 4)
        return sp_error(EINVAL, "%s: tensor '%s': n_dims = %" PRIu32 " is not in 1..4", g->name, t->name, t->n_dims);
    uint64_t nel = 1;
    for (uint32_t d = 0; d < 4; d++) {
        uint64_t ne = 1;
        if (d < t->n_dims && (rc = rd_u64(r, &ne, "tensor dimension")))
            return rc;
        if (ne == 0 || ne > INT64_MAX)
            return sp_error(EINVAL, "%s: tensor '%s': dimension %" PRIu32 " = %" PRIu64 " is not in 1..2^63-1",
                            g->name, t->name, d, ne);
        if (nel > (uint64_t)INT64_MAX / ne)
            return sp_error(EINVAL, "%s: tensor '%s': element count overflows (dimension %" PRIu32 " = %" PRIu64 ")",
                            g->name, t->name, d, ne);
        nel *= ne;
        t->ne[d] = (int64_t)ne;
    }
    if ((rc = rd_u32(r, &t->type, "tensor type")) || (rc = rd_u64(r, &t->offset, "tensor offset")))
        return rc;
    uint64_t row = tensor_row_bytes(t->type, t->ne[0]);
    if (row == 0) {
        if (!strcmp(sp_ggml_type_name(t->type), "unknown"))
            return sp_error(EINVAL, "%s: tensor '%s': unknown tensor type %" PRIu32, g->name, t->name, t->type);
        return sp_error(EINVAL, "%s: tensor '%s': row length %" PRId64 " is not a multiple of the %s block size",
                        g->name, t->name, t->ne[0], sp_ggml_type_name(t->type));
    }
    uint64_t rows = nel / (uint64_t)t->ne[0];
    if (row > UINT64_MAX / rows)
        return sp_error(EINVAL, "%s: tensor '%s': byte size overflows", g->name, t->name);
    t->nbytes = row * rows;

    uint64_t h = hash_bytes(t->name, name.len) & (g->t_cap - 1);
    for (; g->t_hash[h]; h = (h + 1) & (g->t_cap - 1))
        if (!strcmp(g->tensors[g->t_hash[h] - 1].name, t->name))
            return sp_error(EINVAL, "%s: duplicate tensor name '%s' (tensors #%" PRIu32 " and #%" PRIu64 ")", g->name,
                            t->name, g->t_hash[h] - 1, i);
    g->t_hash[h] = (uint32_t)i + 1;
    return 0;
}

static int parse(sp_gguf_t *g)
{
    struct rd r = {.p = g->base, .size = g->size, .pos = 0, .name = g->name};
    const uint8_t *magic;
    uint64_t n_tensors, n_kv;
    int rc;

    if (g->size == 0)
        return sp_error(EINVAL, "%s: empty file (0 bytes), not a GGUF file", g->name);
    if (g->size < 4 || memcmp(g->base, GGUF_MAGIC, 4) != 0) {
        char shown[16] = "";
        for (size_t i = 0; i < 4 && i < g->size; i++)
            snprintf(shown + 2 * i, sizeof shown - 2 * i, "%02x", g->base[i]);
        return sp_error(EINVAL, "%s: not a GGUF file (bad magic 0x%s, expected \"GGUF\")", g->name, shown);
    }
    (void)rd_bytes(&r, 4, &magic, "magic");
    if ((rc = rd_u32(&r, &g->version, "header (version)")))
        return rc;
    if (g->version != 2 && g->version != 3) {
        if (__builtin_bswap32(g->version) == 2 || __builtin_bswap32(g->version) == 3)
            return sp_error(EINVAL, "%s: unsupported GGUF version %" PRIu32 " (a big-endian GGUF v%" PRIu32
                            "? only little-endian files are supported)", g->name, g->version,
                            __builtin_bswap32(g->version));
        return sp_error(EINVAL, "%s: unsupported GGUF version %" PRIu32 " (supported: 2, 3)", g->name, g->version);
    }
    if ((rc = rd_u64(&r, &n_tensors, "header (tensor count)")) || (rc = rd_u64(&r, &n_kv, "header (key count)")))
        return rc;
    if ((rc = parse_kvs(g, &r, n_kv)) || (rc = parse_alignment(g)))
        return rc;

    if (n_tensors > rd_left(&r) / GGUF_TI_MIN_BYTES || n_tensors >= UINT32_MAX)
        return sp_error(EINVAL, "%s: tensor count %" PRIu64 " is impossible for the %zu bytes left in the file "
                        "(truncated tensor table?)", g->name, n_tensors, rd_left(&r));
    g->tensors = calloc(n_tensors ? n_tensors : 1, sizeof *g->tensors);
    g->t_cap = table_cap(n_tensors);
    g->t_hash = calloc(g->t_cap, sizeof *g->t_hash);
    if (!g->tensors || !g->t_hash)
        return sp_error(ENOMEM, "%s: out of memory for %" PRIu64 " tensors", g->name, n_tensors);
    for (uint64_t i = 0; i < n_tensors; i++)
        if ((rc = parse_tensor(g, &r, i)))
            return rc;
    g->n_tensors = (int64_t)n_tensors;

    /* data section: next multiple of the alignment (pos <= size, alignment <= 2^31: no overflow) */
    g->data_off = ((uint64_t)r.pos + g->alignment - 1) & ~(g->alignment - 1);
    for (int64_t i = 0; i < g->n_tensors; i++) {
        sp_gguf_tensor *t = &g->tensors[i];
        if (t->offset % g->alignment)
            return sp_error(EINVAL, "%s: tensor '%s': data offset %" PRIu64 " is not aligned to %" PRIu64 " bytes",
                            g->name, t->name, t->offset, g->alignment);
        if (g->data_off > g->size || t->offset > g->size - g->data_off ||
            t->nbytes > g->size - g->data_off - t->offset) {
            uint64_t a = g->data_off + t->offset, b = a + t->nbytes;
            if (t->offset > UINT64_MAX - g->data_off || t->nbytes > UINT64_MAX - a)
                return sp_error(EINVAL, "%s: tensor '%s' data (offset %" PRIu64 " + %" PRIu64 " bytes after the "
                                "data section at %" PRIu64 ") lies outside the file (size %zu)", g->name, t->name,
                                t->offset, t->nbytes, g->data_off, g->size);
            return sp_error(EINVAL, "%s: tensor '%s' data [%" PRIu64 ", %" PRIu64 ") lies outside the file (size %zu)",
                            g->name, t->name, a, b, g->size);
        }
        t->data = g->base + g->data_off + t->offset;
    }
    return 0;
}

static sp_gguf_t *gguf_new(const char *name)
{
    sp_gguf_t *g = calloc(1, sizeof *g);
    if (!g) {
        sp_error(ENOMEM, "%s: out of memory", name);
        return NULL;
    }
    g->name = strdup(name);
    if (!g->name) {
        free(g);
        sp_error(ENOMEM, "%s: out of memory", name);
        return NULL;
    }
    return g;
}

void sp_gguf_close(sp_gguf_t *g)
{
    if (!g)
        return;
    for (int64_t i = 0; i < g->n_kv; i++)
        free(g->kv[i].strs);
    free(g->kv);
    free(g->kv_hash);
    free(g->tensors);
    free(g->t_hash);
    if (g->mapped)
        munmap((void *)g->base, g->size);
    free(g->name);
    free(g);
}

sp_gguf_t *sp_gguf_open_buffer(const void *buf, size_t size, const char *name)
{
    if (!name)
        name = "<buffer>";
    if (!buf && size) {
        sp_error(EINVAL, "%s: NULL buffer of %zu bytes", name, size);
        return NULL;
    }
    sp_gguf_t *g = gguf_new(name);
    if (!g)
        return NULL;
    g->base = buf;
    g->size = size;
    if (parse(g)) {
        sp_gguf_close(g);
        return NULL;
    }
    return g;
}

sp_gguf_t *sp_gguf_open(const char *path)
{
    struct stat st;
    sp_gguf_t *g = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        sp_error(errno, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    if (fstat(fd, &st) != 0) {
        sp_error(errno, "%s: cannot stat: %s", path, strerror(errno));
        goto close_fd;
    }
    if (!S_ISREG(st.st_mode)) {
        sp_error(EINVAL, "%s: not a regular file", path);
        goto close_fd;
    }
    if (!(g = gguf_new(path)))
        goto close_fd;
    g->size = (size_t)st.st_size;
    if (g->size > 0) {
        void *m = mmap(NULL, g->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            sp_error(errno, "%s: cannot mmap %zu bytes: %s", path, g->size, strerror(errno));
            goto free_g;
        }
        g->base = m;
        g->mapped = true;
    }
    if (parse(g))
        goto free_g;
    close(fd);
    return g;

free_g:
    sp_gguf_close(g);
    g = NULL;
close_fd:
    close(fd);
    return NULL;
}

/* ---- accessors ---- */

const char *sp_gguf_path(const sp_gguf_t *g) { return g->name; }
uint32_t sp_gguf_version(const sp_gguf_t *g) { return g->version; }
uint64_t sp_gguf_alignment(const sp_gguf_t *g) { return g->alignment; }
size_t sp_gguf_file_size(const sp_gguf_t *g) { return g->size; }
uint64_t sp_gguf_data_offset(const sp_gguf_t *g) { return g->data_off; }

int64_t sp_gguf_n_kv(const sp_gguf_t *g) { return g->n_kv; }

int64_t sp_gguf_find_key(const sp_gguf_t *g, const char *key) { return kv_lookup(g, key, strlen(key)); }

sp_gguf_str sp_gguf_key_name(const sp_gguf_t *g, int64_t i)
{
    sp_gguf_str none = {"", 0};
    return i >= 0 && i < g->n_kv ? g->kv[i].key : none;
}

sp_gguf_vtype sp_gguf_kv_type(const sp_gguf_t *g, int64_t i)
{
    return i >= 0 && i < g->n_kv ? (sp_gguf_vtype)g->kv[i].type : (sp_gguf_vtype)-1;
}

static const struct kv *get_kv(const sp_gguf_t *g, const char *key)
{
    int64_t i = kv_lookup(g, key, strlen(key));
    if (i < 0) {
        sp_error(ENOENT, "%s: key '%s' not found", g->name, key);
        return NULL;
    }
    return &g->kv[i];
}

/* Reads an integer value of any integer type: signed ones into *s, unsigned into *u. */
static bool int_value(uint32_t type, const uint8_t *p, bool *is_signed, int64_t *s, uint64_t *u)
{
    uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32;
    *is_signed = false;
    switch (type) {
    case SP_GGUF_UINT8: memcpy(&u8, p, 1); *u = u8; return true;
    case SP_GGUF_UINT16: memcpy(&u16, p, 2); *u = u16; return true;
    case SP_GGUF_UINT32: memcpy(&u32, p, 4); *u = u32; return true;
    case SP_GGUF_UINT64: memcpy(u, p, 8); return true;
    case SP_GGUF_INT8: memcpy(&i8, p, 1); *s = i8; break;
    case SP_GGUF_INT16: memcpy(&i16, p, 2); *s = i16; break;
    case SP_GGUF_INT32: memcpy(&i32, p, 4); *s = i32; break;
    case SP_GGUF_INT64: memcpy(s, p, 8); break;
    default: return false;
    }
    *is_signed = true;
    return true;
}

/* The integer value of key (see int_value); 0, -ENOENT or -EINVAL. */
static int get_int(const sp_gguf_t *g, const char *key, bool *sg, int64_t *s, uint64_t *u)
{
    const struct kv *kv = get_kv(g, key);
    if (!kv)
        return -ENOENT;
    if (!int_value(kv->type, kv->val, sg, s, u))
        return sp_error(EINVAL, "%s: key '%s' has type %s, expected an integer", g->name, key, vtype_name(kv->type));
    return 0;
}

/* A float value of type f32 or f64 at p, as float. */
static float float_value(uint32_t type, const uint8_t *p)
{
    float f;
    double d;
    if (type == SP_GGUF_FLOAT32) {
        memcpy(&f, p, 4);
        return f;
    }
    memcpy(&d, p, 8);
    return (float)d;
}

int sp_gguf_get_u32(const sp_gguf_t *g, const char *key, uint32_t *out)
{
    bool sg;
    int64_t s = 0;
    uint64_t u = 0;
    int rc = get_int(g, key, &sg, &s, &u);
    if (rc)
        return rc;
    if (sg ? (s < 0 || s > (int64_t)UINT32_MAX) : u > UINT32_MAX)
        return sp_error(EINVAL, "%s: key '%s' = %s%" PRIu64 " does not fit in u32", g->name, key,
                        sg && s < 0 ? "-" : "", sg ? (s < 0 ? (uint64_t)0 - (uint64_t)s : (uint64_t)s) : u);
    *out = sg ? (uint32_t)s : (uint32_t)u;
    return 0;
}

int sp_gguf_get_i64(const sp_gguf_t *g, const char *key, int64_t *out)
{
    bool sg;
    int64_t s = 0;
    uint64_t u = 0;
    int rc = get_int(g, key, &sg, &s, &u);
    if (rc)
        return rc;
    if (!sg && u > INT64_MAX)
        return sp_error(EINVAL, "%s: key '%s' = %" PRIu64 " does not fit in i64", g->name, key, u);
    *out = sg ? s : (int64_t)u;
    return 0;
}

int sp_gguf_get_f32(const sp_gguf_t *g, const char *key, float *out)
{
    const struct kv *kv = get_kv(g, key);
    if (!kv)
        return -ENOENT;
    if (kv->type == SP_GGUF_FLOAT32 || kv->type == SP_GGUF_FLOAT64) {
        *out = float_value(kv->type, kv->val);
        return 0;
    }
    return sp_error(EINVAL, "%s: key '%s' has type %s, expected f32 or f64", g->name, key, vtype_name(kv->type));
}

int sp_gguf_get_bool(const sp_gguf_t *g, const char *key, bool *out)
{
    const struct kv *kv = get_kv(g, key);
    if (!kv)
        return -ENOENT;
    if (kv->type != SP_GGUF_BOOL)
        return sp_error(EINVAL, "%s: key '%s' has type %s, expected bool", g->name, key, vtype_name(kv->type));
    *out = kv->val[0] != 0;
    return 0;
}

int sp_gguf_get_str(const sp_gguf_t *g, const char *key, sp_gguf_str *out)
{
    const struct kv *kv = get_kv(g, key);
    if (!kv)
        return -ENOENT;
    if (kv->type != SP_GGUF_STRING)
        return sp_error(EINVAL, "%s: key '%s' has type %s, expected string", g->name, key, vtype_name(kv->type));
    out->ptr = (const char *)kv->val;
    out->len = kv->n;
    return 0;
}

static const struct kv *get_arr(const sp_gguf_t *g, const char *key, int *rc)
{
    const struct kv *kv = get_kv(g, key);
    if (!kv) {
        *rc = -ENOENT;
        return NULL;
    }
    if (kv->type != SP_GGUF_ARRAY) {
        *rc = sp_error(EINVAL, "%s: key '%s' has type %s, expected an array", g->name, key, vtype_name(kv->type));
        return NULL;
    }
    return kv;
}

/* Element types accepted by the typed array accessors (bit t = value type t). */
enum {
    ELEMS_INT = (1 << SP_GGUF_UINT8) | (1 << SP_GGUF_INT8) | (1 << SP_GGUF_UINT16) | (1 << SP_GGUF_INT16) |
                (1 << SP_GGUF_UINT32) | (1 << SP_GGUF_INT32) | (1 << SP_GGUF_UINT64) | (1 << SP_GGUF_INT64),
    ELEMS_FLOAT = (1 << SP_GGUF_FLOAT32) | (1 << SP_GGUF_FLOAT64),
    ELEMS_STRING = 1 << SP_GGUF_STRING,
};

/* The array key whose element i exists and has one of the types in `types` (`what` names them in the
 * message); NULL with *rc = -ENOENT, -EINVAL or -ERANGE. */
static const struct kv *get_arr_elem(const sp_gguf_t *g, const char *key, uint64_t i, uint32_t types,
                                     const char *what, int *rc)
{
    const struct kv *kv = get_arr(g, key, rc);
    if (!kv)
        return NULL;
    if (!(kv->elem_type <= SP_GGUF_FLOAT64 && (types >> kv->elem_type) & 1)) {
        *rc = sp_error(EINVAL, "%s: key '%s' is an array of %s, expected %s", g->name, key,
                       vtype_name(kv->elem_type), what);
        return NULL;
    }
    if (i >= kv->n) {
        *rc = sp_error(ERANGE, "%s: key '%s': index %" PRIu64 " out of range (%" PRIu64 " elements)", g->name, key,
                       i, kv->n);
        return NULL;
    }
    return kv;
}

int sp_gguf_get_arr(const sp_gguf_t *g, const char *key, sp_gguf_vtype *elem_type, uint64_t *n)
{
    int rc = 0;
    const struct kv *kv = get_arr(g, key, &rc);
    if (!kv)
        return rc;
    *elem_type = (sp_gguf_vtype)kv->elem_type;
    *n = kv->n;
    return 0;
}

int sp_gguf_arr_str(const sp_gguf_t *g, const char *key, uint64_t i, sp_gguf_str *out)
{
    int rc = 0;
    const struct kv *kv = get_arr_elem(g, key, i, ELEMS_STRING, "strings", &rc);
    if (!kv)
        return rc;
    memcpy(&out->len, kv->strs[i], 8);
    out->ptr = (const char *)kv->strs[i] + 8;
    return 0;
}

const void *sp_gguf_arr_data(const sp_gguf_t *g, const char *key)
{
    int rc = 0;
    const struct kv *kv = get_arr(g, key, &rc);
    if (!kv)
        return NULL;
    if (!vtype_size(kv->elem_type)) {
        sp_error(EINVAL, "%s: key '%s' is an array of %s, which has no flat data", g->name, key,
                 vtype_name(kv->elem_type));
        return NULL;
    }
    return kv->val;
}

int sp_gguf_arr_i64(const sp_gguf_t *g, const char *key, uint64_t i, int64_t *out)
{
    int rc = 0;
    const struct kv *kv = get_arr_elem(g, key, i, ELEMS_INT, "integers", &rc);
    bool sg;
    int64_t s = 0;
    uint64_t u = 0;
    if (!kv)
        return rc;
    int_value(kv->elem_type, kv->val + i * vtype_size(kv->elem_type), &sg, &s, &u);
    if (!sg && u > INT64_MAX)
        return sp_error(EINVAL, "%s: key '%s'[%" PRIu64 "] = %" PRIu64 " does not fit in i64", g->name, key, i, u);
    *out = sg ? s : (int64_t)u;
    return 0;
}

int sp_gguf_arr_f32(const sp_gguf_t *g, const char *key, uint64_t i, float *out)
{
    int rc = 0;
    const struct kv *kv = get_arr_elem(g, key, i, ELEMS_FLOAT, "f32 or f64", &rc);
    if (!kv)
        return rc;
    *out = float_value(kv->elem_type, kv->val + i * vtype_size(kv->elem_type));
    return 0;
}

int sp_gguf_kv_to_string(const sp_gguf_t *g, int64_t i, char *buf, size_t size)
{
    if (i < 0 || i >= g->n_kv)
        return sp_error(EINVAL, "%s: key index %" PRId64 " out of range (%" PRId64 " keys)", g->name, i, g->n_kv);
    if (!buf || size == 0)
        return sp_error(EINVAL, "%s: kv_to_string: empty output buffer", g->name);
    const struct kv *kv = &g->kv[i];
    bool sg;
    int64_t s = 0;
    uint64_t u = 0;
    int n;
    float f;
    double d;
    if (int_value(kv->type, kv->val, &sg, &s, &u)) {
        n = sg ? snprintf(buf, size, "%" PRId64, s) : snprintf(buf, size, "%" PRIu64, u);
    } else {
        switch (kv->type) {
        case SP_GGUF_FLOAT32: memcpy(&f, kv->val, 4); n = snprintf(buf, size, "%.9g", (double)f); break;
        case SP_GGUF_FLOAT64: memcpy(&d, kv->val, 8); n = snprintf(buf, size, "%.17g", d); break;
        case SP_GGUF_BOOL: n = snprintf(buf, size, "%s", kv->val[0] ? "true" : "false"); break;
        case SP_GGUF_STRING:
            n = snprintf(buf, size, "%.*s", (int)(kv->n > INT32_MAX ? INT32_MAX : kv->n), (const char *)kv->val);
            if (kv->n > INT32_MAX)
                n = INT32_MAX;
            break;
        default: n = snprintf(buf, size, "[%s; %" PRIu64 "]", vtype_name(kv->elem_type), kv->n); break;
        }
    }
    if (n < 0 || (size_t)n >= size)
        return sp_error(ERANGE, "%s: key '%.*s': value does not fit in %zu bytes (truncated)", g->name,
                        (int)(kv->key.len > 120 ? 120 : kv->key.len), kv->key.ptr, size);
    return 0;
}

int64_t sp_gguf_n_tensors(const sp_gguf_t *g) { return g->n_tensors; }

const sp_gguf_tensor *sp_gguf_tensor_at(const sp_gguf_t *g, int64_t i)
{
    return i >= 0 && i < g->n_tensors ? &g->tensors[i] : NULL;
}

const sp_gguf_tensor *sp_gguf_find_tensor(const sp_gguf_t *g, const char *name)
{
    int64_t i = tensor_lookup(g, name);
    return i < 0 ? NULL : &g->tensors[i];
}
