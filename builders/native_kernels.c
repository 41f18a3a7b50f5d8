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

/* blocks of 4096 floats (16 KiB): each thread takes a contiguous range of them */
#define BLOCK 4096

void darkcfg_mish_inplace(float *x, int64_t n, int threads) {
    int64_t blocks = (n + BLOCK - 1) / BLOCK;
    if (threads < 1 || blocks < 2 * threads)
        threads = 1;  /* under ~32 KiB a thread per block costs more than it saves */
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t b = 0; b < blocks; b++) {
        int64_t i = b * BLOCK, end = i + BLOCK < n ? i + BLOCK : n;
#ifdef DARKCFG_AVX2
        for (; i + 8 <= end; i += 8)
            _mm256_storeu_ps(x + i, mish_avx2(_mm256_loadu_ps(x + i)));
#endif
        for (; i < end; i++)
            x[i] = mish_scalar(x[i]);
    }
}

int darkcfg_kernels_version(void) { return 1; }

int darkcfg_kernels_vectorized(void) {
#ifdef DARKCFG_AVX2
    return 1;
#else
    return 0;
#endif
}
