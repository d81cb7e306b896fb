/* ReLU -> BatchNorm2d (training) over a channels_last activation seen as `rows` x `C` values.
 *
 * Forward: stats (per-channel sums of r = relu(x) and r^2), then apply (y = r * scale + shift).
 * Backward: grad_stats (sums of g and g * r), then grad_apply (dx = x > 0 ? g * scale + r * k1 + k0 : 0).
 * The bodies handle rows [m0, m1); the entries split rows over OpenMP threads and add sums into s1/s2.
 * Built by cifarnet/fused.py with -O3 -march=native; the AVX-512 BF16 path is used where the CPU has it.
 * Each entry returns 1, or 0 (doing nothing) for C > MAXC; fused.py checks MAX_CHANNELS before calling.
 */
#include <stdint.h>
#include <string.h>
#include <omp.h>

#define INLINE static inline __attribute__((always_inline))
#define BLOCK 64 /* rows summed in float before adding into the double totals */
#define MAXC 1024

INLINE float bf2f(uint16_t v) { uint32_t u = (uint32_t)v << 16; float f; memcpy(&f, &u, 4); return f; }
INLINE uint16_t f2bf(float f) { /* round to nearest even; NaN stays NaN */
    uint32_t u; memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
INLINE float f32(float v) { return v; }

/* Portable bodies (any C), compiled for float and bf16 storage. One sums body serves both directions:
 * with USE_G 0 it sums r and r * r (forward), with USE_G 1 it sums g and g * r (backward). */
#define DEFINE_SCALAR(SUF, T, LOAD, STORE)                                                                \
INLINE void sums_s_##SUF(const T* g, const T* x, int64_t m0, int64_t m1, const int64_t C, const int USE_G, \
                         double* s1, double* s2) {                                                        \
    float b1[MAXC], b2[MAXC];                                                                             \
    for (int64_t m = m0; m < m1; m += BLOCK) {                                                            \
        int64_t end = m + BLOCK < m1 ? m + BLOCK : m1;                                                    \
        for (int64_t c = 0; c < C; c++) { b1[c] = 0.f; b2[c] = 0.f; }                                     \
        for (int64_t r = m; r < end; r++)                                                                 \
            for (int64_t c = 0; c < C; c++) {                                                             \
                float v = LOAD(x[r * C + c]);                                                             \
                v = v < 0.f ? 0.f : v; /* NaN passes, as in torch.relu */                                 \
                float a = USE_G ? LOAD(g[r * C + c]) : v;                                                 \
                b1[c] += a; b2[c] += a * v;                                                               \
            }                                                                                             \
        for (int64_t c = 0; c < C; c++) { s1[c] += b1[c]; s2[c] += b2[c]; }                               \
    }                                                                                                     \
}                                                                                                         \
INLINE void apply_s_##SUF(const T* x, T* y, int64_t m0, int64_t m1, const int64_t C, const float* scale, \
                          const float* shift) {                                                           \
    for (int64_t r = m0; r < m1; r++)                                                                     \
        for (int64_t c = 0; c < C; c++) {                                                                 \
            float v = LOAD(x[r * C + c]);                                                                 \
            v = v < 0.f ? 0.f : v;                                                                        \
            y[r * C + c] = STORE(v * scale[c] + shift[c]);                                                \
        }                                                                                                 \
}                                                                                                         \
INLINE void grad_apply_s_##SUF(const T* g, const T* x, T* dx, int64_t m0, int64_t m1, const int64_t C,   \
                               const float* scale, const float* k1, const float* k0) {                    \
    for (int64_t r = m0; r < m1; r++)                                                                     \
        for (int64_t c = 0; c < C; c++) {                                                                 \
            float v = LOAD(x[r * C + c]);                                                                 \
            float d = LOAD(g[r * C + c]) * scale[c] + v * k1[c] + k0[c];                                  \
            dx[r * C + c] = STORE(v > 0.f ? d : 0.f);                                                     \
        }                                                                                                 \
}

DEFINE_SCALAR(bf16, uint16_t, bf2f, f2bf)
DEFINE_SCALAR(f32, float, f32, f32)

#if defined(__AVX512F__) && defined(__AVX512BF16__)
#include <immintrin.h>
#define VEC 1
/* 16 bf16 values <-> 16 floats; the store rounds to nearest even in hardware.
 * relu is max(0, v): max_ps returns its second operand when either is NaN, so NaN passes as in torch.relu. */
INLINE __m512 ld16(const uint16_t* p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}
INLINE void st16(uint16_t* p, __m512 v) { _mm256_storeu_si256((__m256i*)p, (__m256i)_mm512_cvtneps_pbh(v)); }

INLINE void sums_v(const uint16_t* g, const uint16_t* x, int64_t m0, int64_t m1, const int64_t C, const int USE_G,
                   double* s1, double* s2) {
    float b1[MAXC], b2[MAXC];
    const __m512 zero = _mm512_setzero_ps();
    for (int64_t m = m0; m < m1; m += BLOCK) {
        int64_t end = m + BLOCK < m1 ? m + BLOCK : m1;
        memset(b1, 0, C * sizeof(float)); memset(b2, 0, C * sizeof(float));
        for (int64_t r = m; r < end; r++)
            for (int64_t c = 0; c < C; c += 16) {
                __m512 v = _mm512_max_ps(zero, ld16(x + r * C + c));
                __m512 a = USE_G ? ld16(g + r * C + c) : v;
                _mm512_storeu_ps(b1 + c, _mm512_add_ps(_mm512_loadu_ps(b1 + c), a));
                _mm512_storeu_ps(b2 + c, _mm512_fmadd_ps(a, v, _mm512_loadu_ps(b2 + c)));
            }
        for (int64_t c = 0; c < C; c++) { s1[c] += b1[c]; s2[c] += b2[c]; }
    }
}
INLINE void apply_v(const uint16_t* x, uint16_t* y, int64_t m0, int64_t m1, const int64_t C,
                    const float* scale, const float* shift) {
    const __m512 zero = _mm512_setzero_ps();
    for (int64_t r = m0; r < m1; r++)
        for (int64_t c = 0; c < C; c += 16) {
            __m512 v = _mm512_max_ps(zero, ld16(x + r * C + c));
            st16(y + r * C + c, _mm512_fmadd_ps(v, _mm512_loadu_ps(scale + c), _mm512_loadu_ps(shift + c)));
        }
}
INLINE void grad_apply_v(const uint16_t* g, const uint16_t* x, uint16_t* dx, int64_t m0, int64_t m1,
                         const int64_t C, const float* scale, const float* k1, const float* k0) {
    const __m512 zero = _mm512_setzero_ps();
    for (int64_t r = m0; r < m1; r++)
        for (int64_t c = 0; c < C; c += 16) {
            __m512 v = ld16(x + r * C + c);
            __mmask16 pos = _mm512_cmp_ps_mask(v, zero, _CMP_GT_OQ);
            __m512 d = _mm512_fmadd_ps(ld16(g + r * C + c), _mm512_loadu_ps(scale + c),
                                       _mm512_fmadd_ps(v, _mm512_loadu_ps(k1 + c), _mm512_loadu_ps(k0 + c)));
            st16(dx + r * C + c, _mm512_maskz_mov_ps(pos, d));
        }
}
#else
#define VEC 0
#endif

/* Rows split evenly over torch's OpenMP threads (this library links the libgomp torch has loaded, so both share
 * one thread pool); each thread sums its rows apart, then adds its totals under a lock. */
#define PARALLEL_ROWS(...)                                                                                \
    _Pragma("omp parallel if (rows * C >= 65536)")                                                        \
    {                                                                                                     \
        int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();                                     \
        int64_t m0 = rows * t / nt, m1 = rows * (t + 1) / nt;                                             \
        __VA_ARGS__                                                                                       \
    }
#define PARALLEL_SUMS(...)                                                                                \
    PARALLEL_ROWS({                                                                                       \
        double p1[MAXC], p2[MAXC];                                                                        \
        for (int64_t c = 0; c < C; c++) { p1[c] = 0.0; p2[c] = 0.0; }                                     \
        __VA_ARGS__                                                                                       \
        _Pragma("omp critical")                                                                           \
        for (int64_t c = 0; c < C; c++) { s1[c] += p1[c]; s2[c] += p2[c]; }                               \
    })
/* C as a compile-time constant for the usual widths: the channel loop unrolls and accumulators stay in registers. */
#define SW(BODY, ARGS)                                                                                    \
    switch (C) {                                                                                          \
        case 64: { const int64_t CC = 64; BODY ARGS; break; }                                             \
        case 128: { const int64_t CC = 128; BODY ARGS; break; }                                           \
        case 256: { const int64_t CC = 256; BODY ARGS; break; }                                           \
        default: { const int64_t CC = C; BODY ARGS; break; }                                              \
    }
/* The vector bodies (suffix VSUF) take rows whose width is a multiple of 16; other widths take the portable ones. */
#define PICK(NAME, VSUF, SUF, ARGS)                                                                       \
    if (C % 16 == 0) { SW(NAME##_##VSUF, ARGS) } else { SW(NAME##_s_##SUF, ARGS) }

#define ENTRIES(SUF, T, VSUF)                                                                             \
int stats_##SUF(const T* x, int64_t rows, int64_t C, double* s1, double* s2) {                           \
    if (C > MAXC) return 0;                                                                               \
    PARALLEL_SUMS(PICK(sums, VSUF, SUF, (x, x, m0, m1, CC, 0, p1, p2)))                                   \
    return 1;                                                                                             \
}                                                                                                         \
int apply_##SUF(const T* x, T* y, int64_t rows, int64_t C, const float* scale, const float* shift) {     \
    if (C > MAXC) return 0;                                                                               \
    PARALLEL_ROWS(PICK(apply, VSUF, SUF, (x, y, m0, m1, CC, scale, shift)))                               \
    return 1;                                                                                             \
}                                                                                                         \
int grad_stats_##SUF(const T* g, const T* x, int64_t rows, int64_t C, double* s1, double* s2) {          \
    if (C > MAXC) return 0;                                                                               \
    PARALLEL_SUMS(PICK(sums, VSUF, SUF, (g, x, m0, m1, CC, 1, p1, p2)))                                   \
    return 1;                                                                                             \
}                                                                                                         \
int grad_apply_##SUF(const T* g, const T* x, T* dx, int64_t rows, int64_t C, const float* scale,         \
                     const float* k1, const float* k0) {                                                  \
    if (C > MAXC) return 0;                                                                               \
    PARALLEL_ROWS(PICK(grad_apply, VSUF, SUF, (g, x, dx, m0, m1, CC, scale, k1, k0)))                     \
    return 1;                                                                                             \
}

/* Without AVX-512 BF16 (and always for float32) the "vector" suffix names the portable bodies too. */
#if VEC
ENTRIES(bf16, uint16_t, v)
#else
ENTRIES(bf16, uint16_t, s_bf16)
#endif
ENTRIES(f32, float, s_f32)
