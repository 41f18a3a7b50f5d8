/* darkcfg's native CPU kernels (builders/native.py compiles this file on first use with the
 * system C compiler, -O3 -march=native -fopenmp, and calls it through ctypes).
 *
 * mish_inplace: Darknet's mish, x * tanh(softplus(x)), in one pass over memory. torch has no
 * fused mish that is fast on the CPU: ATen's evaluates exp, log1p and tanh through Sleef, and
 * composing torch ops costs several passes. Here tanh(softplus(x)) = m / (m + 2) with
 * m = e^x (e^x + 2), and e^x = 2^k e^r (k = round(x / ln 2), |r| <= ln 2 / 2) with a degree-6
 * Taylor polynomial for e^r (truncation error 1.2e-7 relative, about one float ulp).
 * x is clamped to [-87, 20] for the exponential only: above 20, m / (m + 2) rounds to 1 in
 * float (Darknet's softplus threshold gives x too); below -87, e^x would be denormal, which is
 * slow, and the result is already x * e^x < 1e-36 in magnitude.
 *
 * OpenMP: the library links libgomp.so.1, which resolves to the copy torch has already loaded,
 * so this kernel shares torch's thread pool; `threads` is torch.get_num_threads(). */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define DARKCFG_AVX2 1
#endif

#define LOG2E 1.44269504088896341f
#define LN2_HI 0.693145751953125f          /* ln 2 split so that k * LN2_HI is exact */
#define LN2_LO 1.428606765330187045e-06f
#define LO (-87.0f)
#define HI 20.0f

static inline float mish_scalar(float v) {
    float c = v < LO ? LO : (v > HI ? HI : v);
    float k = __builtin_nearbyintf(c * LOG2E);
    float r = (c - k * LN2_HI) - k * LN2_LO;
    float p = 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = ((int32_t)k + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    float e = p * scale;
    float m = e * (e + 2.0f);
    return v * (m / (m + 2.0f));  /* exactly v once m + 2 rounds to m */
}

#ifdef DARKCFG_AVX2
static inline __m256 mish_avx2(__m256 v) {
    /* max/min return their second operand for NaN: c is finite, and v * m keeps the NaN */
    __m256 c = _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(LO)), _mm256_set1_ps(HI));
    __m256 k = _mm256_round_ps(_mm256_mul_ps(c, _mm256_set1_ps(LOG2E)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(LN2_HI), c);
    r = _mm256_fnmadd_ps(k, _mm256_set1_ps(LN2_LO), r);
    __m256 p = _mm256_set1_ps(1.0f / 720);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i bits = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    __m256 e = _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
    __m256 m = _mm256_mul_ps(e, _mm256_add_ps(e, _mm256_set1_ps(2.0f)));
    return _mm256_mul_ps(v, _mm256_div_ps(m, _mm256_add_ps(m, _mm256_set1_ps(2.0f))));
}
#endif

#if defined(__AVX512F__)
#define DARKCFG_AVX512 1
/* mish_avx2's steps on 16 lanes, about twice its rate: scalef applies 2^k in one step, and the
 * division is a reciprocal estimate (14 bits) refined by one Newton step (~28 bits, below
 * float's rounding), which the vector units pipeline where a divide would stall them. */
static inline __m512 mish_avx512(__m512 v) {
    __m512 c = _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(LO)), _mm512_set1_ps(HI));
    __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(c, _mm512_set1_ps(LOG2E)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(LN2_HI), c);
    r = _mm512_fnmadd_ps(k, _mm512_set1_ps(LN2_LO), r);
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    __m512 e = _mm512_scalef_ps(p, k);
    __m512 m = _mm512_mul_ps(e, _mm512_add_ps(e, _mm512_set1_ps(2.0f)));
    __m512 d = _mm512_add_ps(m, _mm512_set1_ps(2.0f));
    __m512 q = _mm512_rcp14_ps(d);
    q = _mm512_mul_ps(q, _mm512_fnmadd_ps(d, q, _mm512_set1_ps(2.0f)));
    return _mm512_mul_ps(v, _mm512_mul_ps(m, q));
}
#endif

/* mish over o[0 .. n) in place, the widest vectors first */
static inline void mish_run(float *o, int64_t n) {
    int64_t q = 0;
#ifdef DARKCFG_AVX512
    for (; q + 16 <= n; q += 16) _mm512_storeu_ps(o + q, mish_avx512(_mm512_loadu_ps(o + q)));
#endif
#ifdef DARKCFG_AVX2
    for (; q + 8 <= n; q += 8) _mm256_storeu_ps(o + q, mish_avx2(_mm256_loadu_ps(o + q)));
#endif
    for (; q < n; q++) o[q] = mish_scalar(o[q]);
}

/* blocks of 4096 floats (16 KiB): each thread takes a contiguous range of them */
#define BLOCK 4096

void darkcfg_mish_inplace(float *x, int64_t n, int threads) {
    int64_t blocks = (n + BLOCK - 1) / BLOCK;
    if (threads < 1 || blocks < 2 * threads)
        threads = 1;  /* under ~32 KiB a thread per block costs more than it saves */
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t b = 0; b < blocks; b++) {
        int64_t i = b * BLOCK, end = i + BLOCK < n ? i + BLOCK : n;
        mish_run(x + i, end - i);
    }
}

/* hsv_shift_u8: the training augmentation's colour jitter (darkcfg/data/detection/augment.py
 * hsv_shift, OpenCV's 8-bit RGB -> HSV, S *= dsat, V *= dexp, H += hue_add, HSV -> RGB), the
 * same float32 operations in the same order, so the bytes equal the torch version's exactly
 * (tests/test_detection_data.py compares them). No contraction into FMAs: a fused
 * multiply-add rounds once where torch rounds twice. `src`, `dst`: planar RGB (3, hw). */
#if defined(__clang__)
#pragma clang fp contract(off)
#define NO_CONTRACT
#elif defined(__GNUC__)
#define NO_CONTRACT __attribute__((optimize("fp-contract=off")))
#else
#define NO_CONTRACT
#endif

static inline float clamp255(float x) { return x < 0.0f ? 0.0f : (x > 255.0f ? 255.0f : x); }

static const float HSV_SECTOR_BASE[3] = {5.0f, 3.0f, 1.0f};  /* R, G, B */

NO_CONTRACT
static inline void hsv_pixel(const uint8_t *src, uint8_t *dst, int64_t hw, int64_t p,
                             float hue_add, float dsat, float dexp, float hue_to_sector) {
    float r = src[p], g = src[hw + p], b = src[2 * hw + p];
    /* the max channel, R winning ties, then G (torch's max returns the first) */
    int arg = 0;
    float v = r;
    if (g > v) { v = g; arg = 1; }
    if (b > v) { v = b; arg = 2; }
    float mn = r < g ? r : g;
    mn = mn < b ? mn : b;
    float diff = v - mn;
    float safe = diff < 1.0f ? 1.0f : diff;
    float hraw = arg == 0 ? g - b : (arg == 1 ? (b - r) + 2.0f * diff : (r - g) + 4.0f * diff);
    float h = __builtin_floorf(hraw * 30.0f / safe + 0.5f);
    h = (h < 0.0f ? h + 180.0f : h) * (diff > 0.0f ? 1.0f : 0.0f);
    float s = __builtin_floorf(diff * 255.0f / (v < 1.0f ? 1.0f : v) + 0.5f);
    h = clamp255(__builtin_floorf(h + hue_add + 0.5f));
    s = clamp255(__builtin_floorf(s * dsat + 0.5f)) / 255.0f;
    v = clamp255(__builtin_floorf(v * dexp + 0.5f));
    float vs = v * s, hs = h * hue_to_sector;
    for (int c = 0; c < 3; c++) {
        float k = HSV_SECTOR_BASE[c] + hs;  /* in [1, 13.5]: k mod 6 is exact by subtraction */
        k = k >= 12.0f ? k - 12.0f : (k >= 6.0f ? k - 6.0f : k);
        float t = 4.0f - k;
        t = k < t ? k : t;
        t = t < 0.0f ? 0.0f : (t > 1.0f ? 1.0f : t);
        float out = clamp255(__builtin_floorf((v - vs * t) + 0.5f));
        dst[c * hw + p] = (uint8_t)out;
    }
}

#ifdef DARKCFG_AVX2
/* hsv_pixel on 8 pixels: the same float32 operations lane by lane (selects for the branches;
 * min/max written so their operand order gives the C conditionals' result), so the bytes are
 * the same. GCC does not vectorise the scalar loop (the byte loads and the sector selects). */
static inline __m256 bytes8(const uint8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

static inline void store8(uint8_t *p, __m256 x) {
    __m256i i = _mm256_cvttps_epi32(x);  /* whole numbers in [0, 255] already */
    __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(i), _mm256_extractf128_si256(i, 1));
    _mm_storel_epi64((__m128i *)p, _mm_packus_epi16(w, w));
}

static inline __m256 clamp255_avx2(__m256 x) {
    return _mm256_min_ps(_mm256_max_ps(x, _mm256_setzero_ps()), _mm256_set1_ps(255.0f));
}

static inline __m256 floor_avx2(__m256 x) {
    return _mm256_round_ps(x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
}

NO_CONTRACT
static void hsv_avx2(const uint8_t *src, uint8_t *dst, int64_t hw, int64_t p, float hue_add,
                     float dsat, float dexp, float hue_to_sector) {
    const __m256 one = _mm256_set1_ps(1.0f), half = _mm256_set1_ps(0.5f);
    __m256 r = bytes8(src + p), g = bytes8(src + hw + p), b = bytes8(src + 2 * hw + p);
    __m256 g_max = _mm256_cmp_ps(g, r, _CMP_GT_OQ);
    __m256 v = _mm256_blendv_ps(r, g, g_max);
    __m256 b_max = _mm256_cmp_ps(b, v, _CMP_GT_OQ);
    v = _mm256_blendv_ps(v, b, b_max);
    __m256 mn = _mm256_min_ps(_mm256_min_ps(r, g), b);
    __m256 diff = _mm256_sub_ps(v, mn);
    __m256 safe = _mm256_max_ps(diff, one);
    __m256 h_r = _mm256_sub_ps(g, b);
    __m256 h_g = _mm256_add_ps(_mm256_sub_ps(b, r), _mm256_mul_ps(_mm256_set1_ps(2.0f), diff));
    __m256 h_b = _mm256_add_ps(_mm256_sub_ps(r, g), _mm256_mul_ps(_mm256_set1_ps(4.0f), diff));
    __m256 hraw = _mm256_blendv_ps(_mm256_blendv_ps(h_r, h_g, g_max), h_b, b_max);
    __m256 h = floor_avx2(_mm256_add_ps(
        _mm256_div_ps(_mm256_mul_ps(hraw, _mm256_set1_ps(30.0f)), safe), half));
    __m256 negative = _mm256_cmp_ps(h, _mm256_setzero_ps(), _CMP_LT_OQ);
    h = _mm256_blendv_ps(h, _mm256_add_ps(h, _mm256_set1_ps(180.0f)), negative);
    __m256 coloured = _mm256_cmp_ps(diff, _mm256_setzero_ps(), _CMP_GT_OQ);
    h = _mm256_mul_ps(h, _mm256_and_ps(coloured, one));
    __m256 s = floor_avx2(_mm256_add_ps(
        _mm256_div_ps(_mm256_mul_ps(diff, _mm256_set1_ps(255.0f)), _mm256_max_ps(v, one)),
        half));
    h = clamp255_avx2(floor_avx2(_mm256_add_ps(_mm256_add_ps(h, _mm256_set1_ps(hue_add)),
                                               half)));
    s = _mm256_div_ps(clamp255_avx2(floor_avx2(_mm256_add_ps(
        _mm256_mul_ps(s, _mm256_set1_ps(dsat)), half))), _mm256_set1_ps(255.0f));
    v = clamp255_avx2(floor_avx2(_mm256_add_ps(_mm256_mul_ps(v, _mm256_set1_ps(dexp)), half)));
    __m256 vs = _mm256_mul_ps(v, s), hs = _mm256_mul_ps(h, _mm256_set1_ps(hue_to_sector));
    for (int c = 0; c < 3; c++) {
        __m256 k = _mm256_add_ps(_mm256_set1_ps(HSV_SECTOR_BASE[c]), hs);
        __m256 over12 = _mm256_cmp_ps(k, _mm256_set1_ps(12.0f), _CMP_GE_OQ);
        __m256 over6 = _mm256_cmp_ps(k, _mm256_set1_ps(6.0f), _CMP_GE_OQ);
        k = _mm256_blendv_ps(_mm256_blendv_ps(k, _mm256_sub_ps(k, _mm256_set1_ps(6.0f)), over6),
                             _mm256_sub_ps(k, _mm256_set1_ps(12.0f)), over12);
        __m256 t = _mm256_min_ps(k, _mm256_sub_ps(_mm256_set1_ps(4.0f), k));
        t = _mm256_min_ps(_mm256_max_ps(t, _mm256_setzero_ps()), one);
        __m256 out = clamp255_avx2(floor_avx2(_mm256_add_ps(
            _mm256_sub_ps(v, _mm256_mul_ps(vs, t)), half)));
        store8(dst + c * hw + p, out);
    }
}
#endif

void darkcfg_hsv_shift_u8(const uint8_t *src, uint8_t *dst, int64_t hw, float hue_add,
                          float dsat, float dexp, float hue_to_sector) {
    int64_t p = 0;
#ifdef DARKCFG_AVX2
    for (; p + 8 <= hw; p += 8)
        hsv_avx2(src, dst, hw, p, hue_add, dsat, dexp, hue_to_sector);
#endif
    for (; p < hw; p++)
        hsv_pixel(src, dst, hw, p, hue_add, dsat, dexp, hue_to_sector);
}

/* src/image.c distort_image on uint8 RGB planes (3, hw), the classifier's colour jitter
 * (darkcfg.data.augment.distort_image is the reference): bytes / 255, rgb_to_hsv with H in
 * [0, 1), S *= dsat, V *= dexp, H += dhue wrapped once, hsv_to_rgb, clamped to [0, 1] and
 * rounded back to bytes (half to even, as torch.round). The float32 operations and their order
 * are the torch version's (no contraction: -std=c11 keeps a * b + c two roundings), so the
 * bytes are the same. */
static inline float unit_clamp(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }

static inline void distort_pixel(const uint8_t *src, uint8_t *dst, int64_t hw, int64_t p,
                                 float dhue, float dsat, float dexp) {
    float r = (float)src[p] / 255.0f, g = (float)src[hw + p] / 255.0f;
    float b = (float)src[2 * hw + p] / 255.0f;
    float v = r > g ? r : g;
    v = v > b ? v : b;
    float mn = r < g ? r : g;
    mn = mn < b ? mn : b;
    float delta = v - mn;
    /* every quotient computed, then selected, as the torch version does */
    float s = delta / (v > 0.0f ? v : 1.0f);
    s = v > 0.0f ? s : 0.0f;
    float d = delta > 0.0f ? delta : 1.0f;
    float hr = (g - b) / d, hg = 2.0f + (b - r) / d, hb = 4.0f + (r - g) / d;
    float h = r == v ? hr : (g == v ? hg : hb);
    h = (h < 0.0f ? h + 6.0f : h) / 6.0f;
    s = s * dsat;
    v = v * dexp;
    h = h + dhue;
    h = h > 1.0f ? h - 1.0f : (h < 0.0f ? h + 1.0f : h);
    float h6 = h * 6.0f;
    float index = __builtin_floorf(h6);
    float f = h6 - index;
    float pp = v * (1.0f - s), q = v * (1.0f - s * f), t = v * (1.0f - s * (1.0f - f));
    /* hsv_to_rgb's six sectors; an index outside 0..4 takes the last one */
    float o0 = index == 1.0f ? q : (index == 2.0f || index == 3.0f ? pp
                                    : (index == 4.0f ? t : v));
    float o1 = index == 0.0f ? t : (index == 1.0f || index == 2.0f ? v
                                    : (index == 3.0f ? q : pp));
    float o2 = index == 0.0f || index == 1.0f ? pp : (index == 2.0f ? t
                                    : (index == 3.0f || index == 4.0f ? v : q));
    if (s == 0.0f) { o0 = v; o1 = v; o2 = v; }
    dst[p] = (uint8_t)__builtin_nearbyintf(unit_clamp(o0) * 255.0f);
    dst[hw + p] = (uint8_t)__builtin_nearbyintf(unit_clamp(o1) * 255.0f);
    dst[2 * hw + p] = (uint8_t)__builtin_nearbyintf(unit_clamp(o2) * 255.0f);
}

#ifdef DARKCFG_AVX2
/* distort_pixel on 8 pixels: the same float32 operations lane by lane, selects for the
 * branches (max/min/blend operand orders give the C conditionals' results); GCC does not
 * vectorise the scalar loop ("control flow in loop"). */
static inline __m256 pick(__m256 otherwise, __m256 value, __m256 where) {
    return _mm256_blendv_ps(otherwise, value, where);
}

static inline void distort_avx2(const uint8_t *src, uint8_t *dst, int64_t hw, int64_t p,
                                float dhue, float dsat, float dexp) {
    const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f);
    const __m256 k255 = _mm256_set1_ps(255.0f), six = _mm256_set1_ps(6.0f);
    __m256 r = _mm256_div_ps(bytes8(src + p), k255);
    __m256 g = _mm256_div_ps(bytes8(src + hw + p), k255);
    __m256 b = _mm256_div_ps(bytes8(src + 2 * hw + p), k255);
    __m256 v = _mm256_max_ps(_mm256_max_ps(r, g), b);   /* a > b ? a : b */
    __m256 mn = _mm256_min_ps(_mm256_min_ps(r, g), b);  /* a < b ? a : b */
    __m256 delta = _mm256_sub_ps(v, mn);
    __m256 vpos = _mm256_cmp_ps(v, zero, _CMP_GT_OQ);
    __m256 s = _mm256_and_ps(_mm256_div_ps(delta, pick(one, v, vpos)), vpos);
    __m256 d = pick(one, delta, _mm256_cmp_ps(delta, zero, _CMP_GT_OQ));
    __m256 hr = _mm256_div_ps(_mm256_sub_ps(g, b), d);
    __m256 hg = _mm256_add_ps(_mm256_set1_ps(2.0f), _mm256_div_ps(_mm256_sub_ps(b, r), d));
    __m256 hb = _mm256_add_ps(_mm256_set1_ps(4.0f), _mm256_div_ps(_mm256_sub_ps(r, g), d));
    __m256 h = pick(pick(hb, hg, _mm256_cmp_ps(g, v, _CMP_EQ_OQ)), hr,
                    _mm256_cmp_ps(r, v, _CMP_EQ_OQ));
    h = pick(h, _mm256_add_ps(h, six), _mm256_cmp_ps(h, zero, _CMP_LT_OQ));
    h = _mm256_div_ps(h, six);
    s = _mm256_mul_ps(s, _mm256_set1_ps(dsat));
    v = _mm256_mul_ps(v, _mm256_set1_ps(dexp));
    h = _mm256_add_ps(h, _mm256_set1_ps(dhue));
    h = pick(pick(h, _mm256_add_ps(h, one), _mm256_cmp_ps(h, zero, _CMP_LT_OQ)),
             _mm256_sub_ps(h, one), _mm256_cmp_ps(h, one, _CMP_GT_OQ));
    __m256 h6 = _mm256_mul_ps(h, six);
    __m256 index = _mm256_floor_ps(h6);
    __m256 f = _mm256_sub_ps(h6, index);
    __m256 pp = _mm256_mul_ps(v, _mm256_sub_ps(one, s));
    __m256 q = _mm256_mul_ps(v, _mm256_sub_ps(one, _mm256_mul_ps(s, f)));
    __m256 t = _mm256_mul_ps(v, _mm256_sub_ps(one, _mm256_mul_ps(s, _mm256_sub_ps(one, f))));
    __m256 e[5];
    for (int k = 0; k < 5; k++)
        e[k] = _mm256_cmp_ps(index, _mm256_set1_ps((float)k), _CMP_EQ_OQ);
    /* the sectors are exclusive: blending in any order gives the scalar's choice */
    __m256 o0 = pick(pick(pick(v, t, e[4]), pp, _mm256_or_ps(e[2], e[3])), q, e[1]);
    __m256 o1 = pick(pick(pick(pp, q, e[3]), v, _mm256_or_ps(e[1], e[2])), t, e[0]);
    __m256 o2 = pick(pick(pick(q, v, _mm256_or_ps(e[3], e[4])), t, e[2]), pp,
                     _mm256_or_ps(e[0], e[1]));
    __m256 grey = _mm256_cmp_ps(s, zero, _CMP_EQ_OQ);
    __m256 out[3] = {pick(o0, v, grey), pick(o1, v, grey), pick(o2, v, grey)};
    for (int c = 0; c < 3; c++) {
        /* unit_clamp: max(x, 0) gives +0 where the scalar keeps -0: the same byte */
        __m256 x = _mm256_min_ps(_mm256_max_ps(out[c], zero), one);
        x = _mm256_round_ps(_mm256_mul_ps(x, k255), _MM_FROUND_TO_NEAREST_INT |
                            _MM_FROUND_NO_EXC);
        store8(dst + c * hw + p, x);
    }
}
#endif

void darkcfg_distort_u8(const uint8_t *src, uint8_t *dst, int64_t hw, float dhue, float dsat,
                        float dexp) {
    int64_t p = 0;
#ifdef DARKCFG_AVX2
    for (; p + 8 <= hw; p += 8)
        distort_avx2(src, dst, hw, p, dhue, dsat, dexp);
#endif
    for (; p < hw; p++)
        distort_pixel(src, dst, hw, p, dhue, dsat, dexp);
}

/* [maxpool] size=2 stride=2 over NCHW float32 planes, for training (torch's NCHW
 * max_pool2d_with_indices runs 5-8x slower than this on the CPU; its channels-last kernel is
 * fast, but the network trains in NCHW). y (planes, h/2, w/2); which: 0..3, the window position
 * of the maximum in row-major order, the first of equal ones (src/maxpool_layer.c
 * forward_maxpool_layer, and torch, keep the first); a NaN wins, as in torch. A trailing odd row
 * or column is outside every window (torch's floor mode; Darknet's stride-2 shapes). */
void darkcfg_maxpool2x2_forward(const float *x, float *y, uint8_t *which, int64_t planes,
                                int64_t h, int64_t w, int threads) {
    int64_t oh = h / 2, ow = w / 2;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t p = 0; p < planes; p++) {
        for (int64_t i = 0; i < oh; i++) {
            const float *r0 = x + (p * h + 2 * i) * w, *r1 = r0 + w;
            float *yo = y + (p * oh + i) * ow;
            uint8_t *wo = which + (p * oh + i) * ow;
            for (int64_t j = 0; j < ow; j++) {
                float m = r0[2 * j], v;
                uint8_t k = 0;
                v = r0[2 * j + 1];
                if (v > m || v != v) { m = v; k = 1; }
                v = r1[2 * j];
                if (v > m || v != v) { m = v; k = 2; }
                v = r1[2 * j + 1];
                if (v > m || v != v) { m = v; k = 3; }
                yo[j] = m;
                wo[j] = k;
            }
        }
    }
}

/* Its gradient: gx (planes, h, w) gets each gy at its window's maximum, 0 elsewhere. */
void darkcfg_maxpool2x2_backward(const float *gy, const uint8_t *which, float *gx,
                                 int64_t planes, int64_t h, int64_t w, int threads) {
    int64_t oh = h / 2, ow = w / 2;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t p = 0; p < planes; p++) {
        float *plane = gx + p * h * w;
        memset(plane, 0, (size_t)(h * w) * sizeof(float));  /* then one store per window */
        for (int64_t i = 0; i < oh; i++) {
            float *r0 = plane + 2 * i * w;
            const float *g = gy + (p * oh + i) * ow;
            const uint8_t *wk = which + (p * oh + i) * ow;
            for (int64_t j = 0; j < ow; j++) {
                uint8_t k = wk[j];
                r0[(k >> 1) * w + 2 * j + (k & 1)] = g[j];
            }
        }
    }
}

/* Batch-norm in training, then leaky (slope 0.1), relu (0) or linear (1), over NCHW float32:
 * AlexeyAB's [convolutional] batch_normalize=1 (src/batchnorm_layer.c forward_batchnorm_layer,
 * with torch's biased variance in the normalisation), one channel per thread. torch runs these
 * as two ops of two to three passes each; here the forward is two passes (statistics, then
 * normalise + activate) and the backward two (sums, then the input gradient), the activation's
 * mask recomputed from the input rather than stored. Each row (one image's plane) is summed in
 * float with SIMD lanes, the rows in double. */
void darkcfg_bn_act_forward(const float *x, float *y, const float *w, const float *b,
                            float *mean, float *invstd, float *var_unbiased, int64_t n,
                            int64_t c, int64_t hw, float eps, float slope, int threads) {
    int64_t count = n * hw;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t ch = 0; ch < c; ch++) {
        double sum = 0.0;
        for (int64_t i = 0; i < n; i++) {
            const float *xp = x + (i * c + ch) * hw;
            float row = 0.0f;
#pragma omp simd reduction(+ : row)
            for (int64_t p = 0; p < hw; p++) row += xp[p];
            sum += row;
        }
        float m = (float)(sum / (double)count);
        double sq = 0.0;
        for (int64_t i = 0; i < n; i++) {
            const float *xp = x + (i * c + ch) * hw;
            float row = 0.0f;
#pragma omp simd reduction(+ : row)
            for (int64_t p = 0; p < hw; p++) {
                float d = xp[p] - m;
                row += d * d;
            }
            sq += row;
        }
        float inv = (float)(1.0 / __builtin_sqrt(sq / (double)count + (double)eps));
        mean[ch] = m;
        invstd[ch] = inv;
        var_unbiased[ch] = (float)(sq / (double)(count - 1));
        float a = w[ch] * inv, shift = b[ch];
        for (int64_t i = 0; i < n; i++) {
            const float *xp = x + (i * c + ch) * hw;
            float *yp = y + (i * c + ch) * hw;
#pragma omp simd
            for (int64_t p = 0; p < hw; p++) {
                float z = (xp[p] - m) * a + shift;
                yp[p] = z > 0.0f ? z : (slope == 0.0f ? 0.0f : z * slope);  /* relu: +0 */
            }
        }
    }
}

/* Its gradients: dx, and d(weight), d(bias) per channel. */
void darkcfg_bn_act_backward(const float *x, const float *dy, const float *w, const float *b,
                             const float *mean, const float *invstd, float *dx, float *dw,
                             float *db, int64_t n, int64_t c, int64_t hw, float slope,
                             int threads) {
    int64_t count = n * hw;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t ch = 0; ch < c; ch++) {
        float inv = invstd[ch], m = mean[ch];
        float a = w[ch] * inv, shift = b[ch];
        double sdz = 0.0, sdzx = 0.0;
        for (int64_t i = 0; i < n; i++) {
            const float *xp = x + (i * c + ch) * hw, *gp = dy + (i * c + ch) * hw;
            float rdz = 0.0f, rdzx = 0.0f;
#pragma omp simd reduction(+ : rdz, rdzx)
            for (int64_t p = 0; p < hw; p++) {
                float z = (xp[p] - m) * a + shift;
                float dz = z > 0.0f ? gp[p] : gp[p] * slope;
                rdz += dz;
                rdzx += dz * ((xp[p] - m) * inv);
            }
            sdz += rdz;
            sdzx += rdzx;
        }
        dw[ch] = (float)sdzx;
        db[ch] = (float)sdz;
        float mdz = (float)(sdz / (double)count), mdzx = (float)(sdzx / (double)count);
        for (int64_t i = 0; i < n; i++) {
            const float *xp = x + (i * c + ch) * hw, *gp = dy + (i * c + ch) * hw;
            float *dp = dx + (i * c + ch) * hw;
#pragma omp simd
            for (int64_t p = 0; p < hw; p++) {
                float z = (xp[p] - m) * a + shift;
                float dz = z > 0.0f ? gp[p] : gp[p] * slope;
                dp[p] = a * (dz - mdz - (xp[p] - m) * inv * mdzx);
            }
        }
    }
}

/* The same batch-norm + activation for `--amp` training: bfloat16 channels-last (NHWC) tensors,
 * as oneDNN's bfloat16 convolutions give them, with float32 parameters and statistics (torch's
 * autocast runs batch-norm in the input's dtype this way). rows = n * h * w rows of c channels;
 * each thread takes a run of rows and sums its channels in float over blocks of ROW_BLOCK rows
 * (one vector across the channels), the blocks and threads in double; values are computed in float
 * and stored rounded to nearest even, as torch's bfloat16. torch's channels-last bfloat16
 * batch-norm and leaky take five to six passes (0.25 s of an 0.85 s yolov3-tiny 416 `--amp`
 * step); this takes three forward and two backward. */
#define ROW_BLOCK 64

static inline float bf16_load(uint16_t v) {
    uint32_t bits = (uint32_t)v << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline uint16_t bf16_store(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    if (f != f) return 0x7FC0;
    return (uint16_t)((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

/* per-channel sums over a run of rows of one or two terms: kind 0 x, kind 1 (x - m)^2, kind 2
 * dz and dz * (x - m) * inv (the backward's, `dy` given) */
NO_CONTRACT
static void nhwc_sums(const uint16_t *x, const uint16_t *dy, int64_t lo, int64_t hi, int64_t c,
                      int kind, const float *m, const float *inv, const float *a,
                      const float *shift, float slope, float *block, double *out1,
                      double *out2) {
    for (int64_t r0 = lo; r0 < hi; r0 += ROW_BLOCK) {
        int64_t r1 = r0 + ROW_BLOCK < hi ? r0 + ROW_BLOCK : hi;
        memset(block, 0, sizeof(float) * (size_t)(2 * c));
        for (int64_t r = r0; r < r1; r++) {
            const uint16_t *xr = x + r * c;
            if (kind == 0) {
#pragma omp simd
                for (int64_t ch = 0; ch < c; ch++) block[ch] += bf16_load(xr[ch]);
            } else if (kind == 1) {
#pragma omp simd
                for (int64_t ch = 0; ch < c; ch++) {
                    float d = bf16_load(xr[ch]) - m[ch];
                    block[ch] += d * d;
                }
            } else {
                const uint16_t *gr = dy + r * c;
#pragma omp simd
                for (int64_t ch = 0; ch < c; ch++) {
                    float xv = bf16_load(xr[ch]), g = bf16_load(gr[ch]);
                    float z = (xv - m[ch]) * a[ch] + shift[ch];
                    float dz = z > 0.0f ? g : g * slope;
                    block[ch] += dz;
                    block[c + ch] += dz * ((xv - m[ch]) * inv[ch]);
                }
            }
        }
        for (int64_t ch = 0; ch < c; ch++) out1[ch] += block[ch];
        if (kind == 2)
            for (int64_t ch = 0; ch < c; ch++) out2[ch] += block[c + ch];
    }
}

/* the sums of every part (a thread's run of rows), added up in double into total1/total2 */
static int nhwc_reduce(const uint16_t *x, const uint16_t *dy, int64_t rows, int64_t c, int kind,
                       const float *m, const float *inv, const float *a, const float *shift,
                       float slope, int threads, double *total1, double *total2) {
    int parts = threads < 1 ? 1 : threads;
    double *acc = calloc((size_t)(2 * parts * c), sizeof(double));
    if (!acc) return 0;
    int ok = 1;
#pragma omp parallel for num_threads(parts) schedule(static)
    for (int p = 0; p < parts; p++) {
        float *block = malloc(sizeof(float) * (size_t)(2 * c));
        if (!block) {
#pragma omp atomic write
            ok = 0;
            continue;
        }
        nhwc_sums(x, dy, rows * p / parts, rows * (p + 1) / parts, c, kind, m, inv, a, shift,
                  slope, block, acc + 2 * p * c, acc + (2 * p + 1) * c);
        free(block);
    }
    for (int64_t ch = 0; ch < c; ch++) {
        double s1 = 0.0, s2 = 0.0;
        for (int p = 0; p < parts; p++) {
            s1 += acc[2 * p * c + ch];
            s2 += acc[(2 * p + 1) * c + ch];
        }
        total1[ch] = s1;
        if (total2) total2[ch] = s2;
    }
    free(acc);
    return ok;
}

NO_CONTRACT
int darkcfg_bn_act_forward_nhwc_bf16(const uint16_t *x, uint16_t *y, const float *w,
                                     const float *b, float *mean, float *invstd,
                                     float *var_unbiased, int64_t rows, int64_t c, float eps,
                                     float slope, int threads) {
    double *sums = malloc(sizeof(double) * (size_t)c);
    float *a = malloc(sizeof(float) * (size_t)(2 * c)), *shift = a ? a + c : NULL;
    int ok = sums && a;
    ok = ok && nhwc_reduce(x, NULL, rows, c, 0, NULL, NULL, NULL, NULL, 0.0f, threads, sums,
                           NULL);
    if (ok)
        for (int64_t ch = 0; ch < c; ch++) mean[ch] = (float)(sums[ch] / (double)rows);
    ok = ok && nhwc_reduce(x, NULL, rows, c, 1, mean, NULL, NULL, NULL, 0.0f, threads, sums,
                           NULL);
    if (ok) {
        for (int64_t ch = 0; ch < c; ch++) {
            invstd[ch] = (float)(1.0 / __builtin_sqrt(sums[ch] / (double)rows + (double)eps));
            var_unbiased[ch] = (float)(sums[ch] / (double)(rows - 1));
            a[ch] = w[ch] * invstd[ch];
            shift[ch] = b[ch];
        }
#pragma omp parallel for num_threads(threads < 1 ? 1 : threads) schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            const uint16_t *xr = x + r * c;
            uint16_t *yr = y + r * c;
#pragma omp simd
            for (int64_t ch = 0; ch < c; ch++) {
                float z = (bf16_load(xr[ch]) - mean[ch]) * a[ch] + shift[ch];
                yr[ch] = bf16_store(z > 0.0f ? z : (slope == 0.0f ? 0.0f : z * slope));
            }
        }
    }
    free(sums);
    free(a);
    return ok;
}

NO_CONTRACT
int darkcfg_bn_act_backward_nhwc_bf16(const uint16_t *x, const uint16_t *dy, const float *w,
                                      const float *b, const float *mean, const float *invstd,
                                      uint16_t *dx, float *dw, float *db, int64_t rows,
                                      int64_t c, float slope, int threads) {
    double *sums = malloc(sizeof(double) * (size_t)(2 * c));
    float *a = malloc(sizeof(float) * (size_t)(4 * c));
    int ok = sums && a;
    float *shift = ok ? a + c : NULL, *mdz = ok ? a + 2 * c : NULL, *mdzx = ok ? a + 3 * c : NULL;
    if (ok)
        for (int64_t ch = 0; ch < c; ch++) {
            a[ch] = w[ch] * invstd[ch];
            shift[ch] = b[ch];
        }
    ok = ok && nhwc_reduce(x, dy, rows, c, 2, mean, invstd, a, shift, slope, threads, sums,
                           sums + c);
    if (ok) {
        for (int64_t ch = 0; ch < c; ch++) {
            db[ch] = (float)sums[ch];
            dw[ch] = (float)sums[c + ch];
            mdz[ch] = (float)(sums[ch] / (double)rows);
            mdzx[ch] = (float)(sums[c + ch] / (double)rows);
        }
#pragma omp parallel for num_threads(threads < 1 ? 1 : threads) schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            const uint16_t *xr = x + r * c, *gr = dy + r * c;
            uint16_t *dr = dx + r * c;
#pragma omp simd
            for (int64_t ch = 0; ch < c; ch++) {
                float xv = bf16_load(xr[ch]), g = bf16_load(gr[ch]);
                float z = (xv - mean[ch]) * a[ch] + shift[ch];
                float dz = z > 0.0f ? g : g * slope;
                dr[ch] = bf16_store(a[ch] * (dz - mdz[ch] - (xv - mean[ch]) * invstd[ch] *
                                             mdzx[ch]));
            }
        }
    }
    free(sums);
    free(a);
    return ok;
}

/* The same 2x2 max-pool for `--amp` training: bfloat16 channels-last (NHWC) x (n, h, w, c) ->
 * y (n, h/2, w/2, c) and which (the same shape), channel by channel across a row (the values
 * compared as floats: exact). Its gradient writes every input position once, the gradient at
 * the window's maximum and zero at the other three (and at a trailing odd row or column), so
 * no separate zeroing pass: torch's channels-last bfloat16 pool and its backward (with the
 * fill) took 0.1 s of a 0.75 s yolov3-tiny 416 `--amp` step. */
void darkcfg_maxpool2x2_forward_nhwc_bf16(const uint16_t *x, uint16_t *y, uint8_t *which,
                                          int64_t n, int64_t h, int64_t w, int64_t c,
                                          int threads) {
    int64_t oh = h / 2, ow = w / 2;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t bi = 0; bi < n * oh; bi++) {
        int64_t b = bi / oh, i = bi % oh;
        for (int64_t j = 0; j < ow; j++) {
            const uint16_t *p00 = x + ((b * h + 2 * i) * w + 2 * j) * c, *p01 = p00 + c;
            const uint16_t *p10 = p00 + w * c, *p11 = p10 + c;
            uint16_t *yo = y + ((b * oh + i) * ow + j) * c;
            uint8_t *wo = which + ((b * oh + i) * ow + j) * c;
#pragma omp simd
            for (int64_t ch = 0; ch < c; ch++) {
                float m = bf16_load(p00[ch]), v;
                uint8_t k = 0;
                v = bf16_load(p01[ch]);
                if (v > m || v != v) { m = v; k = 1; }
                v = bf16_load(p10[ch]);
                if (v > m || v != v) { m = v; k = 2; }
                v = bf16_load(p11[ch]);
                if (v > m || v != v) { m = v; k = 3; }
                yo[ch] = bf16_store(m);  /* exact; a NaN as torch's canonical one */
                wo[ch] = k;
            }
        }
    }
}

/* The 2x2 max-pool of the inference fast path: float32 channels-last x (n, h, w, c) -> y
 * (n, h/2, w/2, c), one pass (torch's channels-last max_pool2d and two maxima of a view both
 * run slower on these maps); a NaN wins, as in torch. */
void darkcfg_maxpool2x2_nhwc(const float *x, float *y, int64_t n, int64_t h, int64_t w,
                             int64_t c, int threads) {
    int64_t oh = h / 2, ow = w / 2;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t bi = 0; bi < n * oh; bi++) {
        int64_t b = bi / oh, i = bi % oh;
        for (int64_t j = 0; j < ow; j++) {
            const float *p00 = x + ((b * h + 2 * i) * w + 2 * j) * c, *p01 = p00 + c;
            const float *p10 = p00 + w * c, *p11 = p10 + c;
            float *yo = y + ((b * oh + i) * ow + j) * c;
#pragma omp simd
            for (int64_t ch = 0; ch < c; ch++) {
                float m = p00[ch], v;
                v = p01[ch];
                m = v > m || v != v ? v : m;
                v = p10[ch];
                m = v > m || v != v ? v : m;
                v = p11[ch];
                m = v > m || v != v ? v : m;
                yo[ch] = m;
            }
        }
    }
}

void darkcfg_maxpool2x2_backward_nhwc_bf16(const uint16_t *gy, const uint8_t *which,
                                           uint16_t *gx, int64_t n, int64_t h, int64_t w,
                                           int64_t c, int threads) {
    int64_t oh = h / 2, ow = w / 2;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t bi = 0; bi < n * h; bi++) {  /* one input row each */
        int64_t b = bi / h, r = bi % h;
        uint16_t *row = gx + (b * h + r) * w * c;
        if (r >= 2 * oh) {  /* a trailing odd row: outside every window */
            memset(row, 0, sizeof(uint16_t) * (size_t)(w * c));
            continue;
        }
        int64_t i = r / 2, dy = r % 2;
        for (int64_t j = 0; j < ow; j++) {
            const uint16_t *g = gy + ((b * oh + i) * ow + j) * c;
            const uint8_t *wk = which + ((b * oh + i) * ow + j) * c;
            uint16_t *left = row + 2 * j * c, *right = left + c;
            uint8_t kl = (uint8_t)(2 * dy), kr = (uint8_t)(2 * dy + 1);
#pragma omp simd
            for (int64_t ch = 0; ch < c; ch++) {
                left[ch] = wk[ch] == kl ? g[ch] : 0;
                right[ch] = wk[ch] == kr ? g[ch] : 0;
            }
        }
        if (w > 2 * ow) memset(row + 2 * ow * c, 0, sizeof(uint16_t) * (size_t)c);
    }
}

/* resize_u8: an image read as bytes -> the network input, in one pass over it: each byte read as
 * byte / 255 (Darknet's load_image), then bilinear with the corners aligned (src/image.c
 * resize_image), the arithmetic of torch's F.interpolate(mode="bilinear", align_corners=True)
 * on those floats (builders/boxes.py resize_image): per axis, source = (in - 1) / (out - 1) * i
 * in float, the lower index floored and kept inside, weight min(source - index, 1); an axis
 * of equal size is copied. Along x first, then along y, no FMA contraction, so the values equal
 * the torch path's within float rounding (tests/test_detect_native.py). torch would take three
 * passes and a float copy of the whole image (0.5 ms of a 640x480 photo; this: 0.2 ms).
 * src: byte (p, y, x) at src[p * src_plane + y * src_row + x * src_col] (a decoder's
 * interleaved rows as they are); dst: plane p, row r, column c at dst[p * dst_plane +
 * r * dst_row + c] (a letterbox canvas's inside). */
NO_CONTRACT
static void axis_weights(int64_t in, int64_t out, int64_t *i0, int64_t *i1, float *w0,
                         float *w1) {
    float scale = out > 1 ? (float)(in - 1) / (float)(out - 1) : 0.0f;
    for (int64_t i = 0; i < out; i++) {
        if (in == out) {
            i0[i] = i1[i] = i;
            w0[i] = 1.0f;
            w1[i] = 0.0f;
            continue;
        }
        float src = scale * (float)i;
        int64_t lo = (int64_t)__builtin_floorf(src);
        if (lo > in - 1) lo = in - 1;
        float l = src - (float)lo;
        l = l < 0.0f ? 0.0f : (l > 1.0f ? 1.0f : l);
        i0[i] = lo;
        i1[i] = lo < in - 1 ? lo + 1 : lo;
        w1[i] = l;
        w0[i] = 1.0f - l;
    }
}

/* one source row resampled along x: bytes -> floats (byte / 255) -> two taps per column */
NO_CONTRACT
static void resample_row(const uint8_t *s, int64_t sx, int64_t w, float *floats,
                         const int32_t *x0, const int32_t *x1, const float *wx0,
                         const float *wx1, int64_t ow, float *t) {
    if (sx == 1) {
#pragma omp simd
        for (int64_t i = 0; i < w; i++) floats[i] = (float)s[i] / 255.0f;
    } else if (sx == 3) {  /* interleaved RGB, as decoders give it: a constant stride */
#pragma omp simd
        for (int64_t i = 0; i < w; i++) floats[i] = (float)s[3 * i] / 255.0f;
    } else {
        for (int64_t i = 0; i < w; i++) floats[i] = (float)s[i * sx] / 255.0f;
    }
#pragma omp simd
    for (int64_t c = 0; c < ow; c++)
        t[c] = floats[x0[c]] * wx0[c] + floats[x1[c]] * wx1[c];
}

NO_CONTRACT
int darkcfg_resize_u8(const uint8_t *src, int64_t planes, int64_t h, int64_t w,
                      int64_t src_plane, int64_t src_row, int64_t src_col, float *dst,
                      int64_t oh, int64_t ow, int64_t dst_row, int64_t dst_plane,
                      int threads) {
    if (w > INT32_MAX) return 0;
    int64_t *index = malloc(sizeof(int64_t) * (size_t)(2 * oh + 2 * ow));
    int32_t *xi = malloc(sizeof(int32_t) * (size_t)(2 * ow));
    float *wts = malloc(sizeof(float) * (size_t)(2 * ow + 2 * oh));
    if (!index || !xi || !wts) {
        free(index); free(xi); free(wts);
        return 0;
    }
    int64_t *y0 = index, *y1 = index + oh;
    int32_t *x0 = xi, *x1 = xi + ow;  /* 32-bit: the column gathers vectorise */
    float *wx0 = wts, *wx1 = wts + ow, *wy0 = wts + 2 * ow, *wy1 = wy0 + oh;
    axis_weights(h, oh, y0, y1, wy0, wy1);
    axis_weights(w, ow, index + 2 * oh, index + 2 * oh + ow, wx0, wx1);
    for (int64_t c = 0; c < ow; c++) {
        x0[c] = (int32_t)index[2 * oh + c];
        x1[c] = (int32_t)index[2 * oh + ow + c];
    }
    int ok = 1;
    if (threads < 1 || planes * oh * ow < 65536) threads = 1;
#pragma omp parallel num_threads(threads)
    {
        /* each thread: a run of output rows, keeping the two source rows it last resampled */
        float *buf = malloc(sizeof(float) * (size_t)(w + 2 * ow));
        if (!buf) {
#pragma omp atomic write
            ok = 0;
        }
        float *rows[2] = {buf + w, buf + w + ow};
        int64_t held[2] = {-1, -1};
#pragma omp for schedule(static)
        for (int64_t pr = 0; pr < planes * oh; pr++) {
            if (!buf) continue;
            int64_t p = pr / oh, r = pr % oh;
            int64_t top = p * h + y0[r], bottom = p * h + y1[r];  /* (plane, row) keys */
            int a = held[0] == top ? 0 : (held[1] == top ? 1 : -1);
            if (a < 0) {
                a = held[0] == bottom ? 1 : 0;  /* keep the row the lower tap needs */
                resample_row(src + p * src_plane + y0[r] * src_row, src_col, w, buf, x0, x1,
                             wx0, wx1, ow, rows[a]);
                held[a] = top;
            }
            int b = held[a] == bottom ? a : (held[1 - a] == bottom ? 1 - a : -1);
            if (b < 0) {
                b = 1 - a;
                resample_row(src + p * src_plane + y1[r] * src_row, src_col, w, buf, x0, x1,
                             wx0, wx1, ow, rows[b]);
                held[b] = bottom;
            }
            float *o = dst + p * dst_plane + r * dst_row, u = wy0[r], v = wy1[r];
            const float *ra = rows[a], *rb = rows[b];
#pragma omp simd
            for (int64_t c = 0; c < ow; c++) o[c] = ra[c] * u + rb[c] * v;
        }
        free(buf);
    }
    free(index); free(xi); free(wts);
    return ok;
}

/* greedy_nms: Darknet's per-class greedy NMS with its DIoU test (src/box.c diounms_sort,
 * greedynms: box_diou / box_diounms against nms) on candidate boxes (k, 4) [x, y, w, h] and
 * probs (k, c), writing suppressed (k, c) = 1 where a class's prob is zeroed. A class's rows
 * with prob > 0 and active are visited in descending prob, ties in row order (qsort is not
 * stable, so the row decides), each not yet removed one removing the later rows whose DIoU
 * passes. The similarity is the float32 arithmetic of builders/boxes.py box_iou / box_diou
 * (the power in double), so the kept pairs equal darkcfg/detect/decode.py's torch/numpy
 * version's (tests/test_detect_native.py compares them). It is symmetric and tested once per
 * pair of rows that take part in some class; the passing pairs are listed (up to `budget`
 * of them, else each class tests its pairs as it walks). torch's ops cost ~20 us each for a
 * handful of boxes: 0.5-0.8 ms of a typical image's NMS, here 20 us; 2407 boxes with every
 * class above thresh: 100 ms in either version before the lists, 22 ms with them. */
typedef struct { float prob; int64_t row; } ranked;

static int by_prob(const void *pa, const void *pb) {
    const ranked *a = pa, *b = pb;
    if (a->prob != b->prob) return a->prob > b->prob ? -1 : 1;
    return (a->row > b->row) - (a->row < b->row);
}

NO_CONTRACT
static float half_overlap(float c1, float w1, float c2, float w2) {
    float l1 = c1 - w1 / 2, l2 = c2 - w2 / 2, r1 = c1 + w1 / 2, r2 = c2 + w2 / 2;
    float left = l1 > l2 ? l1 : l2, right = r1 < r2 ? r1 : r2;
    return right - left;
}

NO_CONTRACT
static int diou_passes(const float *a, const float *b, float thresh, double beta) {
    float w = half_overlap(a[0], a[2], b[0], b[2]);
    float h = half_overlap(a[1], a[3], b[1], b[3]);
    float inter = (w < 0 || h < 0) ? 0.0f : w * h;
    float uni = a[2] * a[3] + b[2] * b[3] - inter;
    float iou = (inter != 0 && uni != 0) ? inter / uni : 0.0f;
    if (!(iou > thresh)) return 0;  /* DIoU <= IoU: only these can pass (NaN never does) */
    float ra = a[0] + a[2] / 2, rb = b[0] + b[2] / 2, la = a[0] - a[2] / 2, lb = b[0] - b[2] / 2;
    float cw = (ra > rb ? ra : rb) - (la < lb ? la : lb);
    float ba = a[1] + a[3] / 2, bb = b[1] + b[3] / 2, ta = a[1] - a[3] / 2, tb = b[1] - b[3] / 2;
    float ch = (ba > bb ? ba : bb) - (ta < tb ? ta : tb);
    float c = cw * cw + ch * ch;
    if (c == 0) return 1;
    float dx = a[0] - b[0], dy = a[1] - b[1];
    float d = dx * dx + dy * dy;
    float term = (float)__builtin_pow((double)d / (double)c, beta);
    return iou - term > thresh;
}

/* The pairs of the n rows whose test passes, as adjacency lists (CSR: neighbours of i at
 * adj[start[i] .. start[i + 1])); 0 when more than `budget` pairs pass (or no memory). */
static int similar_pairs(const float *boxes, const int64_t *rows, int64_t n, float thresh,
                         double beta, int64_t budget, int64_t **start_out, int32_t **adj_out) {
    int64_t cap = 1024, used = 0;
    int32_t *pairs = malloc(sizeof(int32_t) * 2 * (size_t)cap);
    int64_t *start = calloc((size_t)n + 1, sizeof(int64_t));
    if (!pairs || !start) { free(pairs); free(start); return 0; }
    for (int64_t i = 0; i < n; i++) {
        const float *a = boxes + 4 * rows[i];
        for (int64_t j = i + 1; j < n; j++) {
            if (!diou_passes(a, boxes + 4 * rows[j], thresh, beta)) continue;
            if (used == budget) { free(pairs); free(start); return 0; }
            if (used == cap) {
                int32_t *more = realloc(pairs, sizeof(int32_t) * 4 * (size_t)cap);
                if (!more) { free(pairs); free(start); return 0; }
                pairs = more;
                cap *= 2;
            }
            pairs[2 * used] = (int32_t)i;
            pairs[2 * used + 1] = (int32_t)j;
            used++;
            start[i + 1]++;
            start[j + 1]++;
        }
    }
    for (int64_t i = 0; i < n; i++) start[i + 1] += start[i];
    int32_t *adj = malloc(sizeof(int32_t) * (size_t)(used ? 2 * used : 1));
    int64_t *fill = malloc(sizeof(int64_t) * (size_t)(n ? n : 1));
    if (!adj || !fill) { free(pairs); free(start); free(adj); free(fill); return 0; }
    memcpy(fill, start, sizeof(int64_t) * (size_t)n);
    for (int64_t e = 0; e < used; e++) {
        int32_t i = pairs[2 * e], j = pairs[2 * e + 1];
        adj[fill[i]++] = j;
        adj[fill[j]++] = i;
    }
    free(pairs);
    free(fill);
    *start_out = start;
    *adj_out = adj;
    return 1;
}

int darkcfg_greedy_nms(const float *boxes, const float *probs, const uint8_t *active,
                       int64_t k, int64_t c, float thresh, double beta, int64_t budget,
                       uint8_t *suppressed) {
    if (k > INT32_MAX) return 0;
    size_t kk = (size_t)(k ? k : 1);
    int64_t *rows = malloc(sizeof(int64_t) * kk);
    ranked *order = malloc(sizeof(ranked) * kk);
    int64_t *rank = malloc(sizeof(int64_t) * kk);
    uint8_t *removed = malloc(kk);
    if (!rows || !order || !rank || !removed) {
        free(rows); free(order); free(rank); free(removed);
        return 0;
    }
    int64_t n = 0;  /* rows taking part in some class, by local index */
    for (int64_t i = 0; i < k; i++) {
        if (!active[i]) continue;
        for (int64_t j = 0; j < c; j++)
            if (probs[i * c + j] > 0) { rows[n++] = i; break; }
    }
    /* the similar pairs once for all classes: each class then visits only the neighbours of
     * the rows it keeps (its cost follows the overlaps, not the square of its rows) */
    int64_t *start = NULL;
    int32_t *adj = NULL;
    int listed = similar_pairs(boxes, rows, n, thresh, beta, budget, &start, &adj);
    memset(suppressed, 0, (size_t)(k * c));
    for (int64_t q = 0; q < n; q++) rank[q] = -1;
    for (int64_t j = 0; j < c; j++) {
        int64_t m = 0;
        for (int64_t q = 0; q < n; q++) {
            float p = probs[rows[q] * c + j];
            if (p > 0) { order[m].prob = p; order[m].row = q; m++; }  /* row: local index */
        }
        if (m < 2) continue;
        qsort(order, (size_t)m, sizeof(ranked), by_prob);
        for (int64_t a = 0; a < m; a++) {
            rank[order[a].row] = a;
            removed[order[a].row] = 0;
        }
        for (int64_t a = 0; a < m; a++) {
            int64_t la = order[a].row;
            if (removed[la]) continue;
            if (listed) {
                for (int64_t e = start[la]; e < start[la + 1]; e++) {
                    int64_t lb = adj[e];
                    if (rank[lb] > a && !removed[lb]) {
                        removed[lb] = 1;
                        suppressed[rows[lb] * c + j] = 1;
                    }
                }
            } else {  /* too many overlapping pairs to list: test them as they come */
                for (int64_t b = a + 1; b < m; b++) {
                    int64_t lb = order[b].row;
                    if (!removed[lb] && diou_passes(boxes + 4 * rows[la], boxes + 4 * rows[lb],
                                                    thresh, beta)) {
                        removed[lb] = 1;
                        suppressed[rows[lb] * c + j] = 1;
                    }
                }
            }
        }
        for (int64_t a = 0; a < m; a++) rank[order[a].row] = -1;
    }
    free(start); free(adj); free(rows); free(order); free(rank); free(removed);
    return 1;
}

/* yolo_emit: src/yolo_layer.c get_yolo_detections / get_yolo_box for the cells whose objectness
 * passes `thresh` (strictly; NaN never does), in get_network_boxes order (image, row, column,
 * anchor inner), straight from the head output y (batch, n * entries, h, w): the candidate's
 * image and its index (r * w + c) * n + a (`found`: 2 x cap), and a row of 5 + classes floats:
 * its box (relative x, y, w, h), objectness and the class scores objectness * p (before
 * thresholding). The arithmetic of builders/heads/yolo.py
 * YoloDecoding._decoded, operation by operation in float: x = (c + tx) / w, w = e^tw * anchor_w
 * / net_w (new_coords: tw * tw * 4 * anchor_w / net_w); `step` is the entry stride between the
 * four box values. At most `cap` candidates are written; the return value is how many passed,
 * so a caller that gave too small a buffer calls again. torch takes ~25 small ops per head for
 * this (0.3 ms of a typical image after the forward has emptied the caches). */
NO_CONTRACT
int64_t darkcfg_yolo_emit(const float *y, int64_t batch, int64_t n, int64_t entries, int64_t h,
                          int64_t w, int64_t box, int64_t step, const float *anchors,
                          float net_w, float net_h, int new_coords, float thresh, int64_t cap,
                          int64_t *found, float *rows) {
    int64_t hw = h * w, classes = entries - 1 - box, k = 0;
    for (int64_t b = 0; b < batch; b++)
        for (int64_t r = 0; r < h; r++)
            for (int64_t c = 0; c < w; c++)
                for (int64_t a = 0; a < n; a++) {
                    const float *p = y + (b * n + a) * entries * hw + r * w + c;
                    float o = p[box * hw];
                    if (!(o > thresh)) continue;
                    if (k < cap) {
                        float tw = p[2 * step * hw], th = p[3 * step * hw];
                        float ew = new_coords ? tw * tw * 4.0f : __builtin_expf(tw);
                        float eh = new_coords ? th * th * 4.0f : __builtin_expf(th);
                        float *bx = rows + (5 + classes) * k, *sc = bx + 5;
                        found[k] = b;
                        found[cap + k] = (r * w + c) * n + a;
                        bx[0] = ((float)c + p[0]) / (float)w;
                        bx[1] = ((float)r + p[step * hw]) / (float)h;
                        bx[2] = ew * anchors[2 * a] / net_w;
                        bx[3] = eh * anchors[2 * a + 1] / net_h;
                        bx[4] = o;
                        for (int64_t j = 0; j < classes; j++) sc[j] = o * p[(box + 1 + j) * hw];
                    }
                    k++;
                }
    return k;
}

/* found_objects: what `detector test` prints (src/image.c draw_detections_v3), in its order:
 * the candidates with some class prob > thresh, by left edge x - w / 2 (float; ties and NaN as
 * a stable sort of numpy's: in row order, NaN last), and for each the best class first (the
 * lowest id among equals), then its other classes > thresh in id order. Per printed pair: the
 * class, the prob as a double, and the box corners in pixels, (x -+ w / 2) * image_w and
 * (y -+ h / 2) * image_h in double (`corners`: 4 x cap, left, top, right, bottom). The
 * arithmetic and order of darkcfg/detect/decode.py's numpy version (tests/test_detect_native.py
 * compares them); at most `cap` pairs are written, the return value is how many there are. */
typedef struct { float left; int64_t row; } edge;

static int by_left(const void *pa, const void *pb) {
    const edge *a = pa, *b = pb;
    int na = a->left != a->left, nb = b->left != b->left;
    if (na != nb) return na - nb;
    if (!na && a->left != b->left) return a->left < b->left ? -1 : 1;
    return (a->row > b->row) - (a->row < b->row);
}

NO_CONTRACT
static void print_pair(const float *bx, double image_w, double image_h, int64_t n, int64_t cap,
                       double *corners) {
    double x = bx[0], y = bx[1], w = bx[2], h = bx[3];
    corners[n] = (x - w / 2) * image_w;
    corners[cap + n] = (y - h / 2) * image_h;
    corners[2 * cap + n] = (x + w / 2) * image_w;
    corners[3 * cap + n] = (y + h / 2) * image_h;
}

NO_CONTRACT
int64_t darkcfg_found_objects(const float *probs, const float *boxes, int64_t k, int64_t c,
                              float thresh, double image_w, double image_h, int64_t cap,
                              int64_t *cls, double *scores, double *corners) {
    edge *order = malloc(sizeof(edge) * (size_t)(k ? k : 1));
    if (!order) return -1;
    int64_t m = 0, n = 0;
    for (int64_t i = 0; i < k; i++)
        for (int64_t j = 0; j < c; j++)
            if (probs[i * c + j] > thresh) {
                order[m].left = boxes[4 * i] - boxes[4 * i + 2] / 2.0f;
                order[m++].row = i;
                break;
            }
    qsort(order, (size_t)m, sizeof(edge), by_left);
    for (int64_t q = 0; q < m; q++) {
        const float *p = probs + order[q].row * c, *bx = boxes + 4 * order[q].row;
        int64_t best = -1;
        for (int64_t j = 0; j < c; j++)
            if (p[j] > thresh && (best < 0 || p[j] > p[best])) best = j;
        for (int64_t j = -1; j < c; j++) {  /* -1: the best class, first */
            int64_t at = j < 0 ? best : j;
            if (j == best || !(p[at] > thresh)) continue;
            if (n < cap) {
                cls[n] = at;
                scores[n] = (double)p[at];
                print_pair(bx, image_w, image_h, n, cap, corners);
            }
            n++;
        }
    }
    free(order);
    return n;
}

/* Winograd F(4x4, 3x3) for the inference fast path's 3x3 stride-1 convolutions (Lavin & Gray,
 * "Fast Algorithms for Convolutional Neural Networks", 2015; interpolation points 0, +-1, +-2,
 * infinity). A 4x4 output tile is A^T [(G g G^T) . (B^T d B)] A from a 6x6 input tile d: the
 * channel sums of the element-wise products are 36 matrix products [tiles x c] x [c x k], which
 * torch.bmm runs; these two kernels are the transforms around them: 36 multiply-adds per output
 * tile and channel pair against the direct convolution's 16 x 9 = 144. Channels-last float32;
 * each tile's channels are contiguous, so every transform is a vector loop over channels
 * (WINO_CB at a time).
 *
 * input:  x [n][h][w][c], pixels `ldx` floats apart (> c: some channels of a wider map, a
 *         [route]'s), zero padding `pad` on each side; v [36][tiles][c] for the tiles
 *         [t0, t1) of n x th x tw (tile (ty, tx) reads rows 4 ty - pad .. +5).
 * output: m [36][tiles][k] -> y [n][oh][ow][k] (+ bias, then the activation: 0 linear,
 *         1 leaky with `slope`, 2 relu, 3 mish, then + res [n][oh][ow][k] unless NULL: a
 *         [shortcut] fused into the layer before it), for the same tiles; y's pixels `ldy`
 *         floats apart (> k: channels k0.. of a [route]'s concatenation). */
#define WINO_CB 64

static const float WINO_ZERO[WINO_CB];

/* the `rows` input rows y0.. of column ix, channels c0.. of image b: zeros outside the image */
static inline void wino_column(const float **z, int rows, const float *x, int64_t ldx,
                               int64_t b, int64_t h, int64_t w, int64_t y0, int64_t ix,
                               int64_t c0) {
    for (int i = 0; i < rows; i++) {
        int64_t iy = y0 + i;
        z[i] = iy < 0 || iy >= h || ix < 0 || ix >= w
                   ? WINO_ZERO : x + ((b * h + iy) * w + ix) * ldx + c0;
    }
}

/* The transforms, each written once and applied to the columns, then to the rows of a tile:
 * out[i] = sum_j T[i][j] in[j] on vectors of n channels (+ bias[q] after A^T's rows). Inlined
 * where the tile side is a constant, so that the vector loops stay as if written out. */
#define WINO_INLINE static inline __attribute__((always_inline))

/* F(4x4, 3x3): B^T (6x6) */
WINO_INLINE void wino43_bt(const float *const *in, float *const *out, int64_t n) {
#pragma omp simd
    for (int64_t q = 0; q < n; q++) {
        float z0 = in[0][q], z1 = in[1][q], z2 = in[2][q];
        float z3 = in[3][q], z4 = in[4][q], z5 = in[5][q];
        out[0][q] = 4 * z0 - 5 * z2 + z4;
        out[1][q] = -4 * (z1 + z2) + z3 + z4;
        out[2][q] = 4 * (z1 - z2) - z3 + z4;
        out[3][q] = 2 * (z3 - z1) - z2 + z4;
        out[4][q] = 2 * (z1 - z3) - z2 + z4;
        out[5][q] = 4 * z1 - 5 * z3 + z5;
    }
}

/* F(4x4, 3x3): A^T (4x6) */
WINO_INLINE void wino43_at(const float *const *in, float *const *out, const float *bias,
                           int64_t n) {
#pragma omp simd
    for (int64_t q = 0; q < n; q++) {
        float z0 = in[0][q], z1 = in[1][q], z2 = in[2][q];
        float z3 = in[3][q], z4 = in[4][q], z5 = in[5][q];
        float a = z1 + z2, d = z1 - z2, e = z3 + z4, f = z3 - z4;
        float r0 = z0 + a + e, r1 = d + 2 * f, r2 = a + 4 * e, r3 = d + 8 * f + z5;
        if (bias) {
            float bq = bias[q];
            r0 += bq, r1 += bq, r2 += bq, r3 += bq;
        }
        out[0][q] = r0, out[1][q] = r1, out[2][q] = r2, out[3][q] = r3;
    }
}

/* F(2x2, 3x3): B^T (4x4) */
WINO_INLINE void wino23_bt(const float *const *in, float *const *out, int64_t n) {
#pragma omp simd
    for (int64_t q = 0; q < n; q++) {
        float z0 = in[0][q], z1 = in[1][q], z2 = in[2][q], z3 = in[3][q];
        out[0][q] = z0 - z2;
        out[1][q] = z1 + z2;
        out[2][q] = z2 - z1;
        out[3][q] = z1 - z3;
    }
}

/* F(2x2, 3x3): A^T (2x4) */
WINO_INLINE void wino23_at(const float *const *in, float *const *out, const float *bias,
                           int64_t n) {
#pragma omp simd
    for (int64_t q = 0; q < n; q++) {
        float z0 = in[0][q], z1 = in[1][q], z2 = in[2][q], z3 = in[3][q];
        float r0 = z0 + z1 + z2, r1 = z1 - z2 - z3;
        if (bias) {
            float bq = bias[q];
            r0 += bq, r1 += bq;
        }
        out[0][q] = r0, out[1][q] = r1;
    }
}

/* the transform of output tile side m (4: F(4x4, 3x3), 2: F(2x2, 3x3)) */
WINO_INLINE void wino_bt(int m, const float *const *in, float *const *out, int64_t n) {
    if (m == 4)
        wino43_bt(in, out, n);
    else
        wino23_bt(in, out, n);
}

WINO_INLINE void wino_at(int m, const float *const *in, float *const *out, const float *bias,
                         int64_t n) {
    if (m == 4)
        wino43_at(in, out, bias, n);
    else
        wino23_at(in, out, bias, n);
}

/* threads for `tiles` tiles: one where there are too few to share */
static inline int wino_threads(int threads, int64_t tiles) {
    return threads < 1 || tiles < 4 * threads ? 1 : threads;
}

/* B^T d B of tile t (the tt-th of `tiles`) for output tiles of side m: (m + 2)^2 vectors of
 * c channels at v[i * (m + 2) + j][tt] */
WINO_INLINE void wino_input_tile(int m, const float *x, int64_t ldx, float *v, int64_t h,
                                 int64_t w, int64_t c, int64_t pad, int64_t th, int64_t tw,
                                 int64_t t, int64_t tt, int64_t tiles) {
    const int a = m + 2;
    int64_t b = t / (th * tw), r = t % (th * tw);
    int64_t y0 = (r / tw) * m - pad, x0 = (r % tw) * m - pad;
    float u[6][6][WINO_CB];
    for (int64_t c0 = 0; c0 < c; c0 += WINO_CB) {
        int64_t cb = c - c0 < WINO_CB ? c - c0 : WINO_CB;
        /* u = B^T d: the rows of each column (zeros outside the image) */
        for (int j = 0; j < a; j++) {
            const float *z[6];
            float *out[6];
            wino_column(z, a, x, ldx, b, h, w, y0, x0 + j, c0);
            for (int i = 0; i < a; i++) out[i] = u[i][j];
            wino_bt(m, z, out, cb);
        }
        /* (B^T d) B: the columns of each row, stored at v[i * a + j][tt][c0 ..] */
        for (int i = 0; i < a; i++) {
            const float *row[6];
            float *out[6];
            for (int j = 0; j < a; j++) {
                row[j] = u[i][j];
                out[j] = v + ((int64_t)(i * a + j) * tiles + tt) * c + c0;
            }
            wino_bt(m, row, out, cb);
        }
    }
}

void darkcfg_wino43_input(const float *x, int64_t ldx, float *v, int64_t n, int64_t h,
                          int64_t w, int64_t c, int64_t pad, int64_t th, int64_t tw, int64_t t0,
                          int64_t t1, int threads) {
    int64_t tiles = t1 - t0;
    (void)n;
    threads = wino_threads(threads, tiles);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t t = t0; t < t1; t++)
        wino_input_tile(4, x, ldx, v, h, w, c, pad, th, tw, t, t - t0, tiles);
}

static inline void wino_activate(float *o, int64_t cb, int act, float slope) {
    if (act == 1) {
#pragma omp simd
        for (int64_t q = 0; q < cb; q++) o[q] = o[q] > 0 ? o[q] : slope * o[q];
    } else if (act == 2) {
#pragma omp simd
        for (int64_t q = 0; q < cb; q++) o[q] = o[q] > 0 ? o[q] : 0.0f;
    } else if (act == 3) {
        mish_run(o, cb);
    }
}

/* one output pixel's kb channels from k0: the activation, + res, then stored */
static inline void wino_store(float *o, int64_t kb, int act, float slope, const float *res,
                              float *y, int64_t ldy, int64_t k, int64_t pixel, int64_t k0) {
    wino_activate(o, kb, act, slope);
    if (res) {
        const float *rr = res + pixel * k + k0;
#pragma omp simd
        for (int64_t q = 0; q < kb; q++) o[q] += rr[q];
    }
    memcpy(y + pixel * ldy + k0, o, (size_t)kb * sizeof(float));
}

/* A^T M A of tile t (the tt-th of `tiles`) for output tiles of side m, + bias, the
 * activation, + res, into y */
WINO_INLINE void wino_output_tile(int m, const float *mt, const float *bias, const float *res,
                                  float *y, int64_t ldy, int64_t oh, int64_t ow, int64_t k,
                                  int64_t th, int64_t tw, int64_t t, int64_t tt, int64_t tiles,
                                  int act, float slope) {
    const int a = m + 2;
    int64_t b = t / (th * tw), r = t % (th * tw);
    int64_t y0 = (r / tw) * m, x0 = (r % tw) * m;
    float u[4][6][WINO_CB];
    for (int64_t k0 = 0; k0 < k; k0 += WINO_CB) {
        int64_t kb = k - k0 < WINO_CB ? k - k0 : WINO_CB;
        /* u = A^T m: the rows of each column */
        for (int j = 0; j < a; j++) {
            const float *z[6];
            float *out[4];
            for (int i = 0; i < a; i++) z[i] = mt + ((int64_t)(i * a + j) * tiles + tt) * k + k0;
            for (int i = 0; i < m; i++) out[i] = u[i][j];
            wino_at(m, z, out, NULL, kb);
        }
        /* o = u A: the columns of each row, + bias, then the activation, + res */
        for (int i = 0; i < m && y0 + i < oh; i++) {
            float o[4][WINO_CB];
            const float *row[6];
            float *out[4];
            for (int j = 0; j < a; j++) row[j] = u[i][j];
            for (int j = 0; j < m; j++) out[j] = o[j];
            wino_at(m, row, out, bias + k0, kb);
            for (int j = 0; j < m && x0 + j < ow; j++)
                wino_store(o[j], kb, act, slope, res, y, ldy, k,
                           (b * oh + y0 + i) * ow + x0 + j, k0);
        }
    }
}

void darkcfg_wino43_output(const float *m, const float *bias, const float *res, float *y,
                           int64_t ldy, int64_t oh, int64_t ow, int64_t k, int64_t th,
                           int64_t tw, int64_t t0, int64_t t1, int act, float slope,
                           int threads) {
    int64_t tiles = t1 - t0;
    threads = wino_threads(threads, tiles);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t t = t0; t < t1; t++)
        wino_output_tile(4, m, bias, res, y, ldy, oh, ow, k, th, tw, t, t - t0, tiles, act,
                         slope);
}

/* wino23: Winograd F(2x2, 3x3), the same scheme on 4x4 input tiles at a stride of 2: 16
 * products per 4 outputs and channel pair against the direct convolution's 36 (2.25x fewer;
 * F(4x4, 3x3): 4x), with 16/9 of the weights where F(4x4, 3x3) has 4x. On small maps
 * (16x16, 13x13 at batch 1) its matrix products have 3-4x the rows of F(4x4, 3x3)'s, which is
 * what keeps the matrix-product kernel busy there rather than waiting on the weights.
 * B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], A^T = [1 1 1 0; 0 1 -1 -1].
 * input:  x as for wino43 (pixels `ldx` floats apart); v [16][tiles][c], tile (ty, tx) reading
 *         rows 2 ty - pad .. +3.
 * output: m [16][tiles][k] -> y (pixels `ldy` floats apart), + bias, activation, + res. */
void darkcfg_wino23_input(const float *x, int64_t ldx, float *v, int64_t n, int64_t h,
                          int64_t w, int64_t c, int64_t pad, int64_t th, int64_t tw, int64_t t0,
                          int64_t t1, int threads) {
    int64_t tiles = t1 - t0;
    (void)n;
    threads = wino_threads(threads, tiles);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t t = t0; t < t1; t++)
        wino_input_tile(2, x, ldx, v, h, w, c, pad, th, tw, t, t - t0, tiles);
}

void darkcfg_wino23_output(const float *m, const float *bias, const float *res, float *y,
                           int64_t ldy, int64_t oh, int64_t ow, int64_t k, int64_t th,
                           int64_t tw, int64_t t0, int64_t t1, int act, float slope,
                           int threads) {
    int64_t tiles = t1 - t0;
    threads = wino_threads(threads, tiles);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t t = t0; t < t1; t++)
        wino_output_tile(2, m, bias, res, y, ldy, oh, ow, k, th, tw, t, t - t0, tiles, act,
                         slope);
}

/* pointwise: a 1x1 stride-1 convolution on a channels-last map, the matrix product
 * y[p][j] = act(bias[j] + sum_c x[p][c] w[j][c]) over pixels p, computed in registers with the
 * bias and the activation applied before the result leaves them (oneDNN, as torch reaches it,
 * has no mish post-op: the fast path paid a second pass over memory for it). AVX-512 only;
 * elsewhere `darkcfg_pointwise_available` says 0 and oneDNN's kernel runs.
 *
 * Weights come packed in panels of PW_NR = 32 output channels, wp[panel][c][32], zeros past k.
 * A tile of PW_MR = 12 pixels x 32 channels lives in 24 vector registers through the sum; each
 * step loads two weight vectors and broadcasts one input value per pixel, read in place (the
 * BLIS micro-kernel shape, Van Zee & van de Geijn 2015; packing the input cost more than it
 * saved at these depths). The sum runs in blocks of PW_KC channels, so that a panel's block of
 * weights (32 KiB) stays in the first-level cache across the tiles; partial sums wait in `y`.
 * Threads take contiguous ranges of (block of tiles, range of panels) items. */
#define PW_MR 12
#define PW_NR 32
#define PW_KC 256
#ifndef PW_PF
#define PW_PF 16
#endif

int darkcfg_pointwise_available(void) {
#ifdef DARKCFG_AVX512
    return 1;
#else
    return 0;
#endif
}

#ifdef DARKCFG_AVX512
static inline __m512 pw_activate(__m512 v, int act, __m512 slope) {
    if (act == 1) return _mm512_max_ps(v, _mm512_mul_ps(v, slope));  /* leaky, slope < 1 */
    if (act == 2) return _mm512_max_ps(v, _mm512_setzero_ps());
    if (act == 3) return mish_avx512(v);
    return v;
}

/* one tile of mr <= PW_MR pixels (rows `lda` floats apart from `a`) and one panel, over
 * `depth` input channels; `first`: start from zero, else from the partial sums in y; `last`:
 * add the bias (none if NULL) and apply the activation. With `off` (darkcfg_conv_gather),
 * input d of pixel r is a[r * lda + off[d]] instead of a[r * lda + d]. Always inlined with a
 * constant `mr` (pw_tile_rows, gather_tile_rows), so that the accumulators are registers, no
 * spare rows are computed, and the 1x1 kernel's `off` (NULL) folds away. */
static inline __attribute__((always_inline)) void pw_tile(
        const float *a, int64_t lda, int64_t depth, int first, int last, const float *wp,
        const float *bias, const float *res, int64_t ldr, float *y, int64_t ldy, const int mr,
        __mmask16 m0, __mmask16 m1, int act, __m512 slope, const float *next,
        const int64_t *off) {
    __m512 acc[PW_MR][2];
    const float *row[PW_MR];
#pragma GCC unroll 12
    for (int r = 0; r < mr; r++) {
        row[r] = a + r * lda;
        if (first) {
            acc[r][0] = acc[r][1] = _mm512_setzero_ps();
        } else {
            acc[r][0] = _mm512_maskz_loadu_ps(m0, y + r * ldy);
            acc[r][1] = _mm512_maskz_loadu_ps(m1, y + r * ldy + 16);
        }
    }
    for (int64_t d = 0; d < depth; d++, wp += PW_NR) {
        _mm_prefetch((const char *)(wp + PW_PF * PW_NR), _MM_HINT_T0);
        _mm_prefetch((const char *)(wp + PW_PF * PW_NR + 16), _MM_HINT_T0);
        if (next) {
            _mm_prefetch((const char *)(next + d * PW_NR), _MM_HINT_T1);
            _mm_prefetch((const char *)(next + d * PW_NR + 16), _MM_HINT_T1);
        }
        __m512 b0 = _mm512_loadu_ps(wp), b1 = _mm512_loadu_ps(wp + 16);
        const float *at = off ? a + off[d] : NULL;
#pragma GCC unroll 12
        for (int r = 0; r < mr; r++) {
            __m512 v = _mm512_set1_ps(off ? at[r * lda] : row[r][d]);
            acc[r][0] = _mm512_fmadd_ps(v, b0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(v, b1, acc[r][1]);
        }
    }
    if (last) {
        __m512 bias0 = bias ? _mm512_maskz_loadu_ps(m0, bias) : _mm512_setzero_ps();
        __m512 bias1 = bias ? _mm512_maskz_loadu_ps(m1, bias + 16) : _mm512_setzero_ps();
#pragma GCC unroll 12
        for (int r = 0; r < mr; r++) {
            acc[r][0] = pw_activate(_mm512_add_ps(acc[r][0], bias0), act, slope);
            acc[r][1] = pw_activate(_mm512_add_ps(acc[r][1], bias1), act, slope);
            if (res) {
                acc[r][0] = _mm512_add_ps(acc[r][0], _mm512_maskz_loadu_ps(m0, res + r * ldr));
                acc[r][1] = _mm512_add_ps(acc[r][1],
                                          _mm512_maskz_loadu_ps(m1, res + r * ldr + 16));
            }
        }
    }
#pragma GCC unroll 12
    for (int r = 0; r < mr; r++) {
        _mm512_mask_storeu_ps(y + r * ldy, m0, acc[r][0]);
        _mm512_mask_storeu_ps(y + r * ldy + 16, m1, acc[r][1]);
    }
}

/* pw_tile for any 1 <= mr <= PW_MR, each case compiled for its own row count */
static void pw_tile_rows(const float *a, int64_t lda, int64_t depth, int first, int last,
                         const float *wp, const float *bias, const float *res, int64_t ldr,
                         float *y, int64_t ldy, int mr, __mmask16 m0, __mmask16 m1, int act,
                         __m512 slope, const float *next) {
#define PW_CASE(n) case n: pw_tile(a, lda, depth, first, last, wp, bias, res, ldr, y, ldy, n, \
                                   m0, m1, act, slope, next, NULL); break;
    switch (mr) {
        PW_CASE(1) PW_CASE(2) PW_CASE(3) PW_CASE(4) PW_CASE(5) PW_CASE(6)
        PW_CASE(7) PW_CASE(8) PW_CASE(9) PW_CASE(10) PW_CASE(11) PW_CASE(12)
        default: break;
    }
#undef PW_CASE
}
#endif

/* `count` independent products y_i = act(bias + x_i w_i) (+ res_i), each as darkcfg_pointwise
 * describes; x_i = x + i * sx, w_i = wp + i * sw, y_i = y + i * sy, res_i = res + i * sr.
 * Pixels are cut into near-equal tiles of at most PW_MR rows (49 = 4 x 10 + 9, not 4 x 12 + 1).
 * Threads take contiguous ranges of (product, block of tiles, range of panels) items: many
 * pixels give blocks of tiles whose input block (PW_KC channels) fits ~192 KiB; few pixels
 * (Winograd's products on small maps) one block and the panels split, so that each weight
 * leaves memory once and serves every tile from the first-level cache. */
static void pw_run(int64_t count, const float *x, int64_t sx, int64_t ldx, int64_t pixels,
                   int64_t c, const float *wp, int64_t sw, const float *bias, const float *res,
                   int64_t sr, float *y, int64_t sy, int64_t ldy, int64_t k, int act,
                   float slope, int threads) {
#ifdef DARKCFG_AVX512
    int64_t tiles = (pixels + PW_MR - 1) / PW_MR, panels = (k + PW_NR - 1) / PW_NR;
    int64_t kc = c <= 3 * PW_KC / 2 ? c : PW_KC;
    if (threads < 1) threads = 1;
    int64_t block = (192 << 10) / (PW_MR * kc * 4);
    if (block < 1) block = 1;
    if (block > tiles) block = tiles;
    int64_t blocks = (tiles + block - 1) / block, chunks = 1;
    if (count * blocks >= 2 * threads) {
        if (count == 1) {  /* as many blocks per thread, of near-equal sizes */
            blocks = (blocks + threads - 1) / threads * threads;
            block = (tiles + blocks - 1) / blocks;
            blocks = (tiles + block - 1) / block;
        }
    } else {  /* few pixels: the threads split the panels, each weight read by one of them */
        block = (tiles + blocks - 1) / blocks;  /* blocks of near-equal sizes (22 tiles: 11 + 11,
                                                   not 16 + 6 on two threads) */
        blocks = (tiles + block - 1) / block;
        chunks = (2 * threads + count * blocks - 1) / (count * blocks);
        if (chunks > panels) chunks = panels;
        if (count * blocks * chunks < threads) {  /* and few panels: the tiles too */
            blocks = (threads + count * chunks - 1) / (count * chunks);
            if (blocks > tiles) blocks = tiles;
            block = (tiles + blocks - 1) / blocks;
            blocks = (tiles + block - 1) / block;
        }
    }
    int64_t items = count * blocks * chunks;
    if (items < threads) threads = (int)items;
    __m512 slope_v = _mm512_set1_ps(slope);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t item = 0; item < items; item++) {
        int64_t i = item / (blocks * chunks), rest = item % (blocks * chunks);
        int64_t blk = rest / chunks, chunk = rest % chunks;
        int64_t t0 = blk * block, t1 = t0 + block < tiles ? t0 + block : tiles;
        int64_t pa = panels * chunk / chunks, pb = panels * (chunk + 1) / chunks;
        const float *xi = x + i * sx, *wi = wp + i * sw, *ri = res ? res + i * sr : NULL;
        float *yi = y + i * sy;
        for (int64_t d0 = 0; d0 < c; d0 += kc) {
            int64_t d1 = d0 + kc < c ? d0 + kc : c;
            for (int64_t panel = pa; panel < pb; panel++) {
                int64_t j0 = panel * PW_NR, left = k - j0;
                __mmask16 m0 = left >= 16 ? 0xFFFF : (__mmask16)((1u << left) - 1);
                __mmask16 m1 = left >= 32 ? 0xFFFF : left <= 16 ? 0
                                                   : (__mmask16)((1u << (left - 16)) - 1);
                const float *wpanel = wi + (panel * c + d0) * PW_NR;
                /* the last tile pulls the next panel's block into the second-level cache */
                const float *next = panel + 1 < pb ? wpanel + c * PW_NR
                                    : d1 < c ? wi + (pa * c + d1) * PW_NR : NULL;
                for (int64_t t = t0; t < t1; t++) {
                    int64_t p0 = pixels * t / tiles, p1 = pixels * (t + 1) / tiles;
                    pw_tile_rows(xi + p0 * ldx + d0, ldx, d1 - d0, d0 == 0, d1 == c, wpanel,
                                 bias ? bias + j0 : NULL, ri ? ri + p0 * k + j0 : NULL, k,
                                 yi + p0 * ldy + j0, ldy, (int)(p1 - p0), m0, m1, act,
                                 slope_v, t == t1 - 1 ? next : NULL);
                }
            }
        }
    }
#else
    (void)count; (void)x; (void)sx; (void)ldx; (void)pixels; (void)c; (void)wp; (void)sw;
    (void)bias; (void)res; (void)sr; (void)y; (void)sy; (void)ldy; (void)k; (void)act;
    (void)slope; (void)threads;
#endif
}

/* x [pixels][c], pixels `ldx` floats apart (> c: some channels of a wider map); wp as above;
 * y [pixels], rows `ldy` floats apart (> k: channels j.. of a [route]'s concatenation);
 * act: 0 linear, 1 leaky with `slope`, 2 relu, 3 mish; then + res [pixels][k] unless NULL: a
 * [shortcut] fused into the layer before it */
void darkcfg_pointwise(const float *x, int64_t ldx, int64_t pixels, int64_t c,
                       const float *wp, const float *bias, const float *res, float *y,
                       int64_t ldy, int64_t k, int act, float slope, int threads) {
    pw_run(1, x, 0, ldx, pixels, c, wp, 0, bias, res, 0, y, 0, ldy, k, act, slope, threads);
}

/* Winograd's element-wise stage: for each of `points` positions i, m[i] = v[i] u[i], with
 * v [points][tiles][c], u packed as above per position ([points][panels][c][32]) and
 * m [points][tiles][k]; no bias, no activation */
void darkcfg_pointwise_batch(int64_t points, const float *v, int64_t tiles, int64_t c,
                             const float *up, float *m, int64_t k, int threads) {
    int64_t panels = (k + PW_NR - 1) / PW_NR;
    pw_run(points, v, tiles * c, c, tiles, c, up, panels * c * PW_NR, NULL, NULL, 0, m,
           tiles * k, k, k, 0, 0.0f, threads);
}

#ifdef DARKCFG_AVX512
/* pw_tile in its gather mode for any 1 <= mr <= PW_MR: one panel, from zero, the bias and the
 * activation applied, one store (a network's first convolution, whose few input channels leave
 * no depth to sum over contiguously) */
static void gather_tile_rows(const float *a, int64_t lda, const int64_t *off, int64_t depth,
                             const float *wp, const float *bias, float *y, int64_t ldy, int mr,
                             __mmask16 m0, __mmask16 m1, int act, __m512 slope) {
#define GT_CASE(n) case n: pw_tile(a, lda, depth, 1, 1, wp, bias, NULL, 0, y, ldy, n, m0, m1, \
                                   act, slope, NULL, off); break;
    switch (mr) {
        GT_CASE(1) GT_CASE(2) GT_CASE(3) GT_CASE(4) GT_CASE(5) GT_CASE(6)
        GT_CASE(7) GT_CASE(8) GT_CASE(9) GT_CASE(10) GT_CASE(11) GT_CASE(12)
        default: break;
    }
#undef GT_CASE
}
#endif

/* A convolution over few input channels (a network's first layer: 3 channels, 27 products per
 * output value, too shallow for oneDNN's kernels to run at speed) as builders.pointwise's
 * register tile with its inputs gathered through an offset table. x: n images, each `image`
 * floats, zero-padded planes of row length `ldx` (the caller pads); output pixel (i, j) reads
 * x + i * sy * ldx + j * sx + off[d] for d < depth (channel, window row, window column);
 * wp packed as darkcfg_pointwise's [panels][depth][32]; y channels-last [n][oh][ow], pixels
 * `ldy` floats apart; act as darkcfg_pointwise. Threads take ranges of (image, row, panel). */
void darkcfg_conv_gather(const float *x, int64_t n, int64_t image, int64_t ldx, int64_t sy,
                         int64_t sx, const int64_t *off, int64_t depth, const float *wp,
                         const float *bias, float *y, int64_t oh, int64_t ow, int64_t ldy,
                         int64_t k, int act, float slope, int threads) {
#ifdef DARKCFG_AVX512
    int64_t panels = (k + PW_NR - 1) / PW_NR, tiles = (ow + PW_MR - 1) / PW_MR;
    int64_t items = n * oh * panels;
    if (items <= 0 || ow <= 0) return;
    if (threads < 1) threads = 1;
    if (items < threads) threads = (int)items;
    __m512 slope_v = _mm512_set1_ps(slope);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t item = 0; item < items; item++) {
        int64_t b = item / (oh * panels), rest = item % (oh * panels);
        int64_t i = rest / panels, panel = rest % panels;
        int64_t j0 = panel * PW_NR, left = k - j0;
        __mmask16 m0 = left >= 16 ? 0xFFFF : (__mmask16)((1u << left) - 1);
        __mmask16 m1 = left >= 32 ? 0xFFFF : left <= 16 ? 0 : (__mmask16)((1u << (left - 16)) - 1);
        const float *row = x + b * image + i * sy * ldx;
        float *out = y + (b * oh + i) * ow * ldy + j0;
        for (int64_t t = 0; t < tiles; t++) {
            int64_t p0 = ow * t / tiles, p1 = ow * (t + 1) / tiles;
            gather_tile_rows(row + p0 * sx, sx, off, depth, wp + panel * depth * PW_NR,
                             bias + j0, out + p0 * ldy, ldy, (int)(p1 - p0), m0, m1, act,
                             slope_v);
        }
    }
#else
    (void)x; (void)n; (void)image; (void)ldx; (void)sy; (void)sx; (void)off; (void)depth;
    (void)wp; (void)bias; (void)y; (void)oh; (void)ow; (void)ldy; (void)k; (void)act;
    (void)slope; (void)threads;
#endif
}

int darkcfg_kernels_version(void) { return 17; }

/* 2: AVX-512 (mish 16 lanes wide), 1: AVX2, 0: scalar */
int darkcfg_kernels_vectorized(void) {
#if defined(DARKCFG_AVX512)
    return 2;
#elif defined(DARKCFG_AVX2)
    return 1;
#else
    return 0;
#endif
}
