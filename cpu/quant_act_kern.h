/* quant_act_kern.h - the bodies of the 32-element block dot products (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0),
 * private to cpu/: included once by quant_act.c (the x86-64-v3 baseline, or the scalar build) and
 * once by quant_act_vnni.c under an AVX-512 VNNI target, which defines SP_QA_VNNI 1 so that the
 * 4-byte lane sums use vpdpbusd (the same exact int32 sums as maddubs + madd: no pair can saturate
 * int16 for these value ranges, see quant_act.h). SP_QA_FN(name) names the generated row functions.
 * The includer provides h2f(), sp_hsum256() and the block structs. */
#ifndef SP_QA_VNNI
#define SP_QA_VNNI 0
#endif

enum { QA_Q4_0_BYTES = 18, QA_Q4_1_BYTES = 20, QA_Q5_0_BYTES = 22, QA_Q5_1_BYTES = 24, QA_Q8_0_BYTES = 34 };

/* Q4_1 and Q5_1: w = d*q + m, against Q8_1 activations (whose s carries the min term). */
static inline bool has_min(uint32_t type)
{
    return type == SP_TYPE_Q4_1 || type == SP_TYPE_Q5_1;
}

#ifdef __AVX2__
/* 8 lanes: float(sum of the 4 products ux[4i..4i+3] * sy[4i..4i+3]), ux unsigned, sy signed. */
static inline __m256 lanes_us(__m256i ux, __m256i sy)
{
#if SP_QA_VNNI
    return _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), ux, sy));
#else
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_set1_epi16(1), _mm256_maddubs_epi16(ux, sy)));
#endif
}

/* 32 nibbles -> 32 bytes: low nibbles first (elements 0..15), then high nibbles (16..31). */
static inline __m256i nibbles(const uint8_t *qs)
{
    __m128i raw = _mm_loadu_si128((const __m128i *)(const void *)qs);
    __m256i b = _mm256_insertf128_si256(_mm256_castsi128_si256(raw), _mm_srli_epi16(raw, 4), 1);
    return _mm256_and_si256(b, _mm256_set1_epi8(0x0f));
}

/* The 32 bits of a Q5 block's qh as bytes: 0xff where bit j (element j) is set. */
static inline __m256i fifth_bits(const uint8_t *qh)
{
    uint32_t h;
    memcpy(&h, qh, 4);
    const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32((int)h),
                                               _mm256_setr_epi64x(0, 0x0101010101010101, 0x0202020202020202,
                                                                  0x0303030303030303));
    const __m256i bit = _mm256_set1_epi64x(0x8040201008040201);
    return _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
}

/* The weight block as bytes for maddubs: unsigned values for the types with a min (Q4_1/Q5_1: ux),
 * else |w| with *sx = w for the sign transfer. Q5_0: nibble | 16*bit - 16, i.e. the nibble with the
 * high nibble set (as int8: minus 16) where the fifth bit is clear. */
static inline __m256i wbytes(uint32_t type, const uint8_t *blk, __m256i *sx)
{
    __m256i q;
    switch (type) {
    case SP_TYPE_Q8_0: q = _mm256_loadu_si256((const __m256i *)(const void *)(blk + 2)); break;
    case SP_TYPE_Q4_0: q = _mm256_sub_epi8(nibbles(blk + 2), _mm256_set1_epi8(8)); break;
    case SP_TYPE_Q5_0:
        q = _mm256_or_si256(nibbles(blk + 6), _mm256_andnot_si256(fifth_bits(blk + 2), _mm256_set1_epi8((char)0xf0)));
        break;
    case SP_TYPE_Q5_1:
        q = _mm256_or_si256(nibbles(blk + 8), _mm256_and_si256(fifth_bits(blk + 4), _mm256_set1_epi8(0x10)));
        break;
    default: q = nibbles(blk + 4); break;   /* Q4_1 */
    }
    *sx = q;
    return has_min(type) ? q : _mm256_sign_epi8(q, q);
}

static inline __m256i abytes(uint32_t type, const uint8_t *ablk, __m256i sx)
{
    __m256i qy = _mm256_loadu_si256((const __m256i *)(const void *)(ablk + (has_min(type) ? 4 : 2)));
    return has_min(type) ? qy : _mm256_sign_epi8(qy, sx);
}
#else
static float hsum8(const float *l)
{
    return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}

/* Weight values of one block as ints (32 of them). */
static void unpack_block(uint32_t type, const uint8_t *blk, int *q)
{
    if (type == SP_TYPE_Q8_0) {
        for (int j = 0; j < SP_QK8; j++)
            q[j] = (int8_t)blk[2 + j];
        return;
    }
    const bool five = type == SP_TYPE_Q5_0 || type == SP_TYPE_Q5_1;
    const uint8_t *qs = blk + (has_min(type) ? 4 : 2) + (five ? 4 : 0);
    uint32_t qh = 0;
    if (five)
        memcpy(&qh, qs - 4, 4);
    int off = type == SP_TYPE_Q4_0 ? 8 : type == SP_TYPE_Q5_0 ? 16 : 0;
    for (int j = 0; j < SP_QK8 / 2; j++) {
        q[j] = ((qs[j] & 0x0f) | (int)((qh >> j) & 1) << 4) - off;
        q[j + SP_QK8 / 2] = ((qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4) - off;
    }
}
#endif

static inline size_t wblock_bytes(uint32_t type)
{
    switch (type) {
    case SP_TYPE_Q4_0: return QA_Q4_0_BYTES;
    case SP_TYPE_Q4_1: return QA_Q4_1_BYTES;
    case SP_TYPE_Q5_0: return QA_Q5_0_BYTES;
    case SP_TYPE_Q5_1: return QA_Q5_1_BYTES;
    default: return QA_Q8_0_BYTES;
    }
}

/* One weight row . one activation row whose blocks are ab bytes apart, scales read from the blocks
 * (ggml_vec_dot_*). */
static inline __attribute__((always_inline)) float dot_one(uint32_t type, const uint8_t *w, int64_t nb,
                                                           const uint8_t *a, size_t ab)
{
    const bool with_min = has_min(type);
    const size_t wb = wblock_bytes(type);
    float summs = 0.0f;
#ifdef __AVX2__
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = w + (size_t)b * wb, *ablk = a + (size_t)b * ab;
        __m256i sx, ux = wbytes(type, blk, &sx);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(blk) * h2f(ablk)), lanes_us(ux, abytes(type, ablk, sx)), acc);
        if (with_min)
            summs = fmaf(h2f(blk + 2), h2f(ablk + 2), summs);
    }
    return sp_hsum256(acc) + summs;
#else
    float acc[8] = { 0 };
    int q[SP_QK8];
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = w + (size_t)b * wb, *ablk = a + (size_t)b * ab;
        const int8_t *qy = (const int8_t *)(ablk + (with_min ? 4 : 2));
        unpack_block(type, blk, q);
        float dd = h2f(blk) * h2f(ablk);
        for (int l = 0; l < 8; l++) {
            int s4 = 0;
            for (int j = 4 * l; j < 4 * l + 4; j++)
                s4 += q[j] * qy[j];
            acc[l] = fmaf(dd, (float)s4, acc[l]);
        }
        if (with_min)
            summs = fmaf(h2f(blk + 2), h2f(ablk + 2), summs);
    }
    return hsum8(acc) + summs;
#endif
}

/* One weight row . the first nt rows of an activation tile (sp_act_quant_tiled layout), scales from
 * the tile's scale block. Same per-row arithmetic as dot_one; the scale products and min terms of the
 * tile's rows are computed 8 at a time. Rows >= nt are computed from whatever the tile holds and not
 * written. */
static inline __attribute__((always_inline)) void dot_tile(uint32_t type, const uint8_t *w, int64_t nb,
                                                           const uint8_t *a, const float *sc, int nt, float *out,
                                                           size_t out_stride)
{
    enum { T = SP_ACT_TILE };
    const bool with_min = has_min(type);
    const size_t wb = wblock_bytes(type), ab = with_min ? sizeof(sp_block_q8_1) : sizeof(sp_block_q8_0);
    const int ks = with_min ? 2 : 1;
#ifdef __AVX2__
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0, acc4 = acc0, acc5 = acc0,
           acc6 = acc0, acc7 = acc0, summs = acc0;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = w + (size_t)b * wb, *at = a + (size_t)b * T * ab;
        __m256i sx, ux = wbytes(type, blk, &sx);
        const float *scb = sc + (size_t)b * ks * T;
        __m256 dd = _mm256_mul_ps(_mm256_set1_ps(h2f(blk)), _mm256_loadu_ps(scb));
        if (with_min)
            summs = _mm256_fmadd_ps(_mm256_set1_ps(h2f(blk + 2)), _mm256_loadu_ps(scb + T), summs);
#define TILE_ROW(t, acc)                                                                                       \
    acc = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(dd, _mm256_set1_epi32(t)),                                   \
                          lanes_us(ux, abytes(type, at + (t) * ab, sx)), acc)
        TILE_ROW(0, acc0); TILE_ROW(1, acc1); TILE_ROW(2, acc2); TILE_ROW(3, acc3);
        TILE_ROW(4, acc4); TILE_ROW(5, acc5); TILE_ROW(6, acc6); TILE_ROW(7, acc7);
#undef TILE_ROW
    }
    float sm[T];
    _mm256_storeu_ps(sm, summs);
    const __m256 accs[T] = { acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7 };
    for (int t = 0; t < nt; t++)
        out[t * out_stride] = sp_hsum256(accs[t]) + sm[t];
#else
    float acc[T][8], summs[T];
    memset(acc, 0, sizeof(acc));
    memset(summs, 0, sizeof(summs));
    int q[SP_QK8];
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = w + (size_t)b * wb;
        const float *scb = sc + (size_t)b * ks * T;
        unpack_block(type, blk, q);
        float dw = h2f(blk);
        for (int t = 0; t < nt; t++) {
            const int8_t *qy = (const int8_t *)(a + ((size_t)b * T + t) * ab + (with_min ? 4 : 2));
            float dd = dw * scb[t];
            for (int l = 0; l < 8; l++) {
                int s4 = 0;
                for (int j = 4 * l; j < 4 * l + 4; j++)
                    s4 += q[j] * qy[j];
                acc[t][l] = fmaf(dd, (float)s4, acc[t][l]);
            }
            if (with_min)
                summs[t] = fmaf(h2f(blk + 2), scb[T + t], summs[t]);
        }
    }
    for (int t = 0; t < nt; t++)
        out[t * out_stride] = hsum8(acc[t]) + summs[t];
#endif
}

/* Specialized per weight type (the type tests then fold away). */
#define DOT_ROWS_FN(name, TYPE)                                                                                \
    static void SP_QA_FN(name)(const void *w, int64_t nb, const void *tiles, int nt, float *out, size_t out_stride)     \
    {                                                                                                          \
        const size_t ab = has_min(TYPE) ? sizeof(sp_block_q8_1) : sizeof(sp_block_q8_0);               \
        const size_t tb = sp_act_tile_bytes(sp_act_type_for(TYPE), nb * SP_QK8);                              \
        const size_t qb = ((size_t)nb * SP_ACT_TILE * ab + 31) & ~(size_t)31;  /* the scales' offset */        \
        for (int t = 0; t < nt; t += SP_ACT_TILE) {                                                            \
            const uint8_t *tile = (const uint8_t *)tiles + (size_t)(t / SP_ACT_TILE) * tb;                     \
            int k = nt - t < SP_ACT_TILE ? nt - t : SP_ACT_TILE;                                               \
            if (k >= SP_ACT_TILE / 2) /* fewer rows: the tile would compute mostly unused ones */              \
                dot_tile(TYPE, w, nb, tile, (const float *)(const void *)(tile + qb), k,                       \
                         out + (size_t)t * out_stride, out_stride);                                            \
            else                                                                                               \
                for (int i = 0; i < k; i++)                                                                    \
                    out[(size_t)(t + i) * out_stride] = dot_one(TYPE, w, nb, tile + (size_t)i * ab,            \
                                                                SP_ACT_TILE * ab);                             \
        }                                                                                                      \
    }
DOT_ROWS_FN(rows_q4_0, SP_TYPE_Q4_0)
DOT_ROWS_FN(rows_q4_1, SP_TYPE_Q4_1)
DOT_ROWS_FN(rows_q8_0, SP_TYPE_Q8_0)
DOT_ROWS_FN(rows_q5_0, SP_TYPE_Q5_0)
DOT_ROWS_FN(rows_q5_1, SP_TYPE_Q5_1)
#undef DOT_ROWS_FN
