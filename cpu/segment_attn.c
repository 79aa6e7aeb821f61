/* segment_attn.c - fused decode attention over a layer segment, its reference, and an fp16-cache
 * baseline (DESIGN §5.2).
 *
 * DESIGN: one pass over the tokens computes scores: for each token the key (entry or raw fp16,
 * converted once into a d-float buffer) is rotated at the token's position and dotted with the
 * `group` queries; since rotation is linear, the magnitude multiplies the dot product instead of
 * the d-vector. Softmax per query head, masked by the membership bits. Values: coded tokens add
 * p·m into a per-entry weight (scatter), then each entry with a nonzero weight is converted once
 * and accumulated into the outputs (GEMV over the codebook); raw tokens accumulate directly.
 * Work buffer: group·N scores + group·(entries) weights + 2·d floats.
 */
#include "segment_attn.h"

#include <errno.h>
#include <stdbool.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "fp16.h"
#include "sp_error.h"

static inline void load_f16(float *dst, const uint16_t *src, int d)
{
    int i = 0;
#if defined(__F16C__) && defined(__AVX2__)
    for (; i + 8 <= d; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
#endif
    for (; i < d; i++)
        dst[i] = sp_fp16_to_f32(src[i]);
}

/* kr = R(pos)·x for one head vector, table row cs = {cos, sin} pairs. The table's interleaved
 * (cos, sin) order matches the adjacent-pair layout, so SP_ROPE_NORM is one addsub per 8 floats. */
static inline void rotate(float *restrict kr, const float *restrict x, const float *restrict cs,
                          int d, sp_rope_mode mode)
{
    int half = d / 2, i = 0;
    if (mode == SP_ROPE_NORM) {
#if defined(__AVX2__)
        for (; 2 * i + 8 <= d; i += 4) {
            __m256 xv = _mm256_loadu_ps(x + 2 * i), t = _mm256_loadu_ps(cs + 2 * i);
            __m256 c = _mm256_moveldup_ps(t), sn = _mm256_movehdup_ps(t);
            __m256 sw = _mm256_permute_ps(xv, 0xb1); /* (x1, x0, x3, x2, ...) */
            _mm256_storeu_ps(kr + 2 * i, _mm256_addsub_ps(_mm256_mul_ps(xv, c),
                                                          _mm256_mul_ps(sw, sn)));
        }
#endif
        for (; i < half; i++) {
            float c = cs[2 * i], s = cs[2 * i + 1], x0 = x[2 * i], x1 = x[2 * i + 1];
            kr[2 * i] = x0 * c - x1 * s;
            kr[2 * i + 1] = x0 * s + x1 * c;
        }
    } else {
        for (; i < half; i++) {
            float c = cs[2 * i], s = cs[2 * i + 1], x0 = x[i], x1 = x[i + half];
            kr[i] = x0 * c - x1 * s;
            kr[i + half] = x0 * s + x1 * c;
        }
    }
}

static inline float dot(const float *restrict a, const float *restrict b, int d)
{
    int i = 0;
    float acc = 0;
#if defined(__AVX2__) && defined(__FMA__)
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    for (; i + 16 <= d; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    for (; i + 8 <= d; i += 8)
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s0 = _mm256_add_ps(s0, s1);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(s0), _mm256_extractf128_ps(s0, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    acc = _mm_cvtss_f32(h);
#endif
    for (; i < d; i++)
        acc += a[i] * b[i];
    return acc;
}

static inline void axpy(float *restrict y, float a, const float *restrict x, int d)
{
    for (int i = 0; i < d; i++)
        y[i] += a * x[i];
}

/* In-place softmax of s[0..n) (-inf entries -> 0), vectorized exp from cpu/ops.h. */
static void softmax(float *s, int64_t n)
{
    float mx = -INFINITY, sum = 0;
    for (int64_t j = 0; j < n; j++)
        mx = s[j] > mx ? s[j] : mx;
    if (mx == -INFINITY) {
        memset(s, 0, (size_t)n * sizeof *s);
        return;
    }
    for (int64_t j = 0; j < n; j++)
        s[j] -= mx;
    sp_op_exp(s, s, (int)n);
    for (int64_t j = 0; j < n; j++)
        sum += s[j];
    float inv = 1.0f / sum;
    for (int64_t j = 0; j < n; j++)
        s[j] *= inv;
}

static uint32_t idx_at(const void *p, uint32_t ib, int64_t j)
{
    return ib == 2 ? ((const uint16_t *)p)[j] : ((const uint32_t *)p)[j];
}

static uint64_t mask_bits(const sp_kv_seg_header *h, const sp_kv_seg_head *v, int64_t j,
                          uint64_t full)
{
    if (!v->mask)
        return full;
    if (h->mask_bytes == 1)
        return v->mask[j];
    uint64_t m = 0;
    for (uint32_t b = 0; b < h->mask_bytes; b++)
        m |= (uint64_t)v->mask[(size_t)j * h->mask_bytes + b] << (8 * b);
    return m;
}

size_t sp_segattn_work_floats(const sp_kv_segment *seg, const sp_kv_tail *tail, int kv_head)
{
    const sp_kv_seg_head *v = &seg->head[kv_head];
    size_t n = (size_t)sp_kv_segment_tokens(seg, tail, kv_head);
    size_t ent = (size_t)v->n_ent_v + (tail && tail->coded ? (size_t)tail->n_new_v[kv_head] : 0);
    return (size_t)seg->group * (n + ent) + 2 * (size_t)seg->hdr->head_dim + 16;
}

int sp_segattn_decode(const sp_kv_segment *seg, const sp_kv_tail *tail, int kv_head,
                      const float *q, const float *rope_table, int64_t rope_n_pos,
                      sp_rope_mode mode, float scale, float *out, float *work)
{
    if (!seg || !seg->hdr || kv_head < 0 || kv_head >= seg->hdr->n_kv_heads)
        return sp_error(EINVAL, "segment attention: bad segment or KV head %d", kv_head);
    const sp_kv_seg_header *h = seg->hdr;
    const sp_kv_seg_head *hv = &seg->head[kv_head];
    int d = h->head_dim, G = seg->group, half = d / 2;
    if (d % 2)
        return sp_error(EINVAL, "segment attention: head_dim %d must be even for RoPE", d);
    bool coded = h->flags & SP_KV_SEG_CODED;
    uint64_t full = G >= 64 ? ~0ull : (1ull << G) - 1;
    int64_t nk = hv->n_kept, nw = h->window, nt = tail ? tail->n : 0, N = nk + nw + nt;
    int64_t ent_seg = hv->n_ent_v;
    int64_t ent = ent_seg + (tail && tail->coded ? tail->n_new_v[kv_head] : 0);
    float *s = work;                       /* [G][N] */
    float *wv = s + (size_t)G * N;         /* [G][ent] */
    float *buf = wv + (size_t)G * ent;     /* [d] */
    float *kr = buf + d;                   /* [d] */
    size_t tc = tail ? (size_t)tail->cap : 0;

    if (h->l + (int64_t)h->n_folded > rope_n_pos) /* open() checked positions < l + n_folded */
        return sp_error(EINVAL, "segment attention: RoPE table has %lld positions, segment needs "
                                "%lld", (long long)rope_n_pos, (long long)(h->l + h->n_folded));
    /* Scores over listed tokens. */
    for (int64_t j = 0; j < nk; j++) {
        int32_t p = hv->pos ? hv->pos[j] : (int32_t)j;
        float m = 1.0f;
        if (coded) {
            load_f16(buf, hv->k_cb + (size_t)idx_at(hv->k_idx, h->index_bytes, j) * d, d);
            m = sp_fp16_to_f32(hv->k_mag[j]);
        } else {
            load_f16(buf, hv->raw_k + (size_t)j * d, d);
        }
        rotate(kr, buf, rope_table + (size_t)p * half * 2, d, mode);
        uint64_t bits = mask_bits(h, hv, j, full);
        for (int g = 0; g < G; g++)
            s[(size_t)g * N + j] = bits >> g & 1 ? m * scale * dot(q + (size_t)g * d, kr, d)
                                                 : -INFINITY;
    }
    for (int64_t j = 0; j < nw; j++) {
        load_f16(buf, hv->win_k + (size_t)j * d, d);
        rotate(kr, buf, rope_table + (size_t)(h->l - nw + j) * half * 2, d, mode);
        for (int g = 0; g < G; g++)
            s[(size_t)g * N + nk + j] = scale * dot(q + (size_t)g * d, kr, d);
    }
    for (int64_t j = 0; j < nt; j++) {
        int32_t p = tail->pos[j];
        if (p < 0 || p >= rope_n_pos)
            return sp_error(EINVAL, "segment attention: tail position %d outside the RoPE table "
                                    "(%lld)", p, (long long)rope_n_pos);
        size_t r = (size_t)kv_head * tc + (size_t)j;
        float m = 1.0f;
        if (!sp_kv_tail_is_raw(tail, j)) {
            uint32_t ik = tail->k_idx[r];
            load_f16(buf, ik < hv->n_ent_k ? hv->k_cb + (size_t)ik * d
                                           : tail->k_ent + ((size_t)kv_head * tc + ik -
                                                            (size_t)hv->n_ent_k) * d, d);
            m = sp_fp16_to_f32(tail->k_mag[r]);
        } else {
            load_f16(buf, tail->raw_k + sp_kv_tail_raw_row(tail, kv_head, j) * d, d);
        }
        rotate(kr, buf, rope_table + (size_t)p * half * 2, d, mode);
        for (int g = 0; g < G; g++)
            s[(size_t)g * N + nk + nw + j] = m * scale * dot(q + (size_t)g * d, kr, d);
    }
    /* Softmax per query head (every head has at least the window unless N == 0). */
    for (int g = 0; g < G; g++)
        softmax(s + (size_t)g * N, N);
    /* Values. */
    memset(out, 0, (size_t)G * d * sizeof *out);
    memset(wv, 0, (size_t)G * ent * sizeof *wv);
    for (int64_t j = 0; j < nk; j++) {
        if (coded) {
            uint32_t e = idx_at(hv->v_idx, h->index_bytes, j);
            float m = sp_fp16_to_f32(hv->v_mag[j]);
            for (int g = 0; g < G; g++)
                wv[(size_t)g * ent + e] += s[(size_t)g * N + j] * m;
        } else {
            load_f16(buf, hv->raw_v + (size_t)j * d, d);
            for (int g = 0; g < G; g++)
                axpy(out + (size_t)g * d, s[(size_t)g * N + j], buf, d);
        }
    }
    for (int64_t j = 0; j < nw; j++) {
        load_f16(buf, hv->win_v + (size_t)j * d, d);
        for (int g = 0; g < G; g++)
            axpy(out + (size_t)g * d, s[(size_t)g * N + nk + j], buf, d);
    }
    for (int64_t j = 0; j < nt; j++) {
        size_t r = (size_t)kv_head * tc + (size_t)j;
        if (!sp_kv_tail_is_raw(tail, j)) {
            uint32_t e = tail->v_idx[r];
            float m = sp_fp16_to_f32(tail->v_mag[r]);
            for (int g = 0; g < G; g++)
                wv[(size_t)g * ent + e] += s[(size_t)g * N + nk + nw + j] * m;
        } else {
            load_f16(buf, tail->raw_v + sp_kv_tail_raw_row(tail, kv_head, j) * d, d);
            for (int g = 0; g < G; g++)
                axpy(out + (size_t)g * d, s[(size_t)g * N + nk + nw + j], buf, d);
        }
    }
    if (coded || (tail && tail->coded)) {
        for (int64_t e = 0; e < ent; e++) {
            bool any = false;
            for (int g = 0; g < G; g++)
                any |= wv[(size_t)g * ent + e] != 0.0f;
            if (!any)
                continue;
            load_f16(buf, e < ent_seg ? hv->v_cb + (size_t)e * d
                                      : tail->v_ent + ((size_t)kv_head * tc + (size_t)(e - ent_seg)) * d,
                     d);
            for (int g = 0; g < G; g++)
                axpy(out + (size_t)g * d, wv[(size_t)g * ent + e], buf, d);
        }
    }
    return 0;
}

int sp_segattn_reference(const sp_kv_segment *seg, const sp_kv_tail *tail, int kv_head,
                         const float *q, const float *rope_table, int64_t rope_n_pos,
                         sp_rope_mode mode, float scale, float *out)
{
    if (!seg || !seg->hdr || kv_head < 0 || kv_head >= seg->hdr->n_kv_heads)
        return sp_error(EINVAL, "segment attention reference: bad segment or KV head %d", kv_head);
    int d = seg->hdr->head_dim, G = seg->group, half = d / 2, rc = 0;
    int64_t N = sp_kv_segment_tokens(seg, tail, kv_head);
    size_t n1 = (size_t)(N ? N : 1);
    float *k = malloc(n1 * d * sizeof *k), *v = malloc(n1 * d * sizeof *v);
    int32_t *pos = malloc(n1 * sizeof *pos);
    uint64_t *mask = malloc(n1 * sizeof *mask);
    double *p = malloc(n1 * sizeof *p);
    if (!k || !v || !pos || !mask || !p) {
        rc = sp_error(ENOMEM, "segment attention reference: out of memory");
        goto free_all;
    }
    int64_t n = sp_kv_segment_reconstruct(seg, tail, kv_head, k, v, pos, mask);
    if (n < 0) {
        rc = (int)n;
        goto free_all;
    }
    for (int64_t j = 0; j < n; j++) {
        if (pos[j] < 0 || pos[j] >= rope_n_pos) {
            rc = sp_error(EINVAL, "segment attention reference: position %d outside the table",
                          pos[j]);
            goto free_all;
        }
        float *x = k + (size_t)j * d, tmp[d];
        memcpy(tmp, x, (size_t)d * sizeof *tmp);
        const float *cs = rope_table + (size_t)pos[j] * half * 2;
        for (int i = 0; i < half; i++) {
            int a = mode == SP_ROPE_NORM ? 2 * i : i, b = mode == SP_ROPE_NORM ? 2 * i + 1 : i + half;
            x[a] = tmp[a] * cs[2 * i] - tmp[b] * cs[2 * i + 1];
            x[b] = tmp[a] * cs[2 * i + 1] + tmp[b] * cs[2 * i];
        }
    }
    for (int g = 0; g < G; g++) {
        double mx = -INFINITY, sum = 0;
        for (int64_t j = 0; j < n; j++) {
            if (!(mask[j] >> g & 1)) {
                p[j] = -INFINITY;
                continue;
            }
            double acc = 0;
            for (int i = 0; i < d; i++)
                acc += (double)q[(size_t)g * d + i] * k[(size_t)j * d + i];
            p[j] = acc * scale;
            mx = p[j] > mx ? p[j] : mx;
        }
        for (int64_t j = 0; j < n; j++) {
            p[j] = p[j] == -INFINITY ? 0 : exp(p[j] - mx);
            sum += p[j];
        }
        for (int i = 0; i < d; i++) {
            double acc = 0;
            for (int64_t j = 0; j < n; j++)
                acc += p[j] * v[(size_t)j * d + i];
            out[(size_t)g * d + i] = sum > 0 ? (float)(acc / sum) : 0.0f;
        }
    }
free_all:
    free(k);
    free(v);
    free(pos);
    free(mask);
    free(p);
    return rc;
}

void sp_segattn_full_fp16(const uint16_t *k, const uint16_t *v, int64_t n, int d, const float *q,
                          int group, float scale, float *out, float *work)
{
    float buf[d];
    float *s = work;
    for (int64_t j = 0; j < n; j++) {
        load_f16(buf, k + (size_t)j * d, d);
        for (int g = 0; g < group; g++)
            s[(size_t)g * n + j] = scale * dot(q + (size_t)g * d, buf, d);
    }
    for (int g = 0; g < group; g++)
        softmax(s + (size_t)g * n, n);
    memset(out, 0, (size_t)group * d * sizeof *out);
    for (int64_t j = 0; j < n; j++) {
        load_f16(buf, v + (size_t)j * d, d);
        for (int g = 0; g < group; g++)
            axpy(out + (size_t)g * d, s[(size_t)g * n + j], buf, d);
    }
}
