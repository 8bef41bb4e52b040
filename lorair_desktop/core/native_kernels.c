/* Fused CPU kernels for the NAFNet's memory-bound steps (native.py compiles, checks and loads this;
 * the reasons and the measurements are there).
 *
 * Layout: channels_last, i.e. each pixel's C channels lie side by side ("rows" of C values).
 * - lorair_layer_norm_rows: LayerNorm over each row, times w plus b, optionally plus the row itself
 *   (the DAM's residual); one function per row length, so that a row stays in registers;
 * - lorair_gate_pool: NAFNet's SimpleGate with TLC's cell means taken in the same pass;
 * - lorair_scale_by_grid: a tensor times the bilinear upsampling of a cell grid (TLC's attention);
 * - lorair_shuffle_add: pixel_shuffle(u, 2) + skip (the decoder's upsampling and skip connection).
 * Types: float32, or bfloat16 as raw uint16 in and out (rounded to nearest even, as PyTorch rounds);
 * arithmetic in float32 either way, as PyTorch's own kernels do it.
 * Each entry point returns 0, -1 for input it has no kernel for, -2 where memory ran out.
 */
#include <math.h>
#include <stdlib.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#define LORAIR_MAX_THREADS 64

static inline float bf16_to_f32(uint16_t v) {
    uint32_t u = (uint32_t)v << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    uint32_t quiet_nan = (u >> 16) | 0x40u;
    /* written as a select (no early return) so that the loop around it still vectorises */
    return (uint16_t)(((u & 0x7fffffffu) > 0x7f800000u) ? quiet_nan : rounded);
}

#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#endif

/* A row of n values to bf16. With AVX512-BF16 (vcvtneps2bf16) the hardware rounds, to nearest even
 * as above; it reads and writes denormals (< 1.2e-38) as zero, the only difference. The compiler
 * does not vectorise the portable version well where rows are short (16 values). */
static inline void f32_row_to_bf16(const float *restrict src, uint16_t *restrict dst, int64_t n) {
#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__)
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) /* whole vectors unmasked: a mask per vector was measured 2-3x slower */
        _mm256_storeu_si256((__m256i *)(dst + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(src + i)));
    if (i < n) { /* the tail, masked (no scalar loop, which GCC warns about for fixed n) */
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        _mm256_mask_storeu_epi16(dst + i, m, (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, src + i)));
    }
#else
    for (int64_t i = 0; i < n; i++) dst[i] = f32_to_bf16(src[i]);
#endif
}

static inline void bf16_row_to_f32(const uint16_t *restrict src, float *restrict dst, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = bf16_to_f32(src[i]);
}

static inline void f32_row_copy(const float *restrict src, float *restrict dst, int64_t n) {
    memcpy(dst, src, (size_t)n * sizeof(float));
}

/* ---- the runner: units of work [0, n) split over threads ----
 * Built with OpenMP (native.py links it to the runtime PyTorch already loaded), the work runs on
 * PyTorch's own thread team, which is awake between its ops; threads of our own would compete with
 * that team's spinning wait for the same cores. Without OpenMP: POSIX threads, started per call. */

typedef void (*unit_fn)(const void *args, int64_t u0, int64_t u1, float *scratch);

/* 1..LORAIR_MAX_THREADS threads, and no more than there are units */
static int clamp_threads(int nthreads, int64_t n) {
    if (nthreads < 1) nthreads = 1;
    if (nthreads > LORAIR_MAX_THREADS) nthreads = LORAIR_MAX_THREADS;
    return (int64_t)nthreads > n ? (n > 0 ? (int)n : 1) : nthreads;
}

#ifdef _OPENMP
#include <omp.h>

/* Runs fn over units [0, n) split over threads, each with `scratch` floats of its own.
 * Returns 0, or -2 where the scratch memory could not be had (nothing was run then). */
static int run_units(unit_fn fn, const void *args, int64_t n, int nthreads, int64_t scratch) {
    nthreads = clamp_threads(nthreads, n);
    float *mem = (float *)malloc((size_t)(nthreads * (scratch > 0 ? scratch : 1)) * sizeof(float));
    if (!mem) return -2;
#pragma omp parallel num_threads(nthreads)
    {
        const int64_t t = omp_get_thread_num(), k = omp_get_num_threads();
        fn(args, n * t / k, n * (t + 1) / k, mem + t * scratch);
    }
    free(mem);
    return 0;
}

int lorair_openmp(void) { return 1; }

#else

typedef struct {
    unit_fn fn;
    const void *args;
    int64_t u0, u1;
    float *scratch;
} unit_task;

static void *unit_thread(void *arg) {
    unit_task *t = (unit_task *)arg;
    t->fn(t->args, t->u0, t->u1, t->scratch);
    return 0;
}

/* Runs fn over units [0, n) split over threads, each with `scratch` floats of its own.
 * Returns 0, or -2 where the scratch memory could not be had (nothing was run then). */
static int run_units(unit_fn fn, const void *args, int64_t n, int nthreads, int64_t scratch) {
    nthreads = clamp_threads(nthreads, n);
    float *mem = (float *)malloc((size_t)(nthreads * (scratch > 0 ? scratch : 1)) * sizeof(float));
    if (!mem) return -2;
    unit_task tasks[LORAIR_MAX_THREADS];
    pthread_t threads[LORAIR_MAX_THREADS];
    int started[LORAIR_MAX_THREADS] = {0};
    for (int t = 0; t < nthreads; t++)
        tasks[t] = (unit_task){fn, args, n * t / nthreads, n * (t + 1) / nthreads, mem + t * scratch};
    for (int t = 1; t < nthreads; t++) started[t] = pthread_create(&threads[t], 0, unit_thread, &tasks[t]) == 0;
    unit_thread(&tasks[0]);
    for (int t = 1; t < nthreads; t++) {
        if (started[t]) pthread_join(threads[t], 0);
        else unit_thread(&tasks[t]); /* no thread to be had: do its share here */
    }
    free(mem);
    return 0;
}

int lorair_openmp(void) { return 0; }

#endif

/* ---- layer norm over rows ---- */

typedef struct {
    const void *x;
    void *y;
    const float *w;
    const float *b;
    int64_t r0, r1;
    float eps;
} ln_job;

/* y = LN(x) * w + b (+ x when RES): one function per (C, type, residual), C fixed so that a row
 * stays in registers. */
#define LN_ROWS(C, T, LOAD_ROW, STORE_ROW, RES)                                     \
    static void ln_##C##_##T##_##RES(const ln_job *j) {                            \
        const T *restrict X = (const T *)j->x;                                      \
        T *restrict Y = (T *)j->y;                                                  \
        const float *restrict W = j->w, *restrict B = j->b;                         \
        for (int64_t r = j->r0; r < j->r1; r++) {                                   \
            float v[C], o[C];                                                       \
            LOAD_ROW(X + r * C, v, C);                                              \
            float s = 0.f;                                                          \
            for (int i = 0; i < C; i++) s += v[i];                                  \
            const float m = s * (1.0f / C);                                         \
            float q = 0.f;                                                          \
            for (int i = 0; i < C; i++) { float d = v[i] - m; q += d * d; }         \
            const float rs = 1.0f / sqrtf(q * (1.0f / C) + j->eps);                 \
            for (int i = 0; i < C; i++) o[i] = (v[i] - m) * rs * W[i] + B[i] + (RES ? v[i] : 0.f); \
            STORE_ROW(o, Y + r * C, C);                                             \
        }                                                                           \
    }

#define F32 float
#define BF16 uint16_t
#define LN_TYPES(C)                                                                                   \
    LN_ROWS(C, F32, f32_row_copy, f32_row_copy, 0) LN_ROWS(C, F32, f32_row_copy, f32_row_copy, 1)     \
    LN_ROWS(C, BF16, bf16_row_to_f32, f32_row_to_bf16, 0) LN_ROWS(C, BF16, bf16_row_to_f32, f32_row_to_bf16, 1)

LN_TYPES(16) LN_TYPES(32) LN_TYPES(64) LN_TYPES(128) LN_TYPES(256) LN_TYPES(512) LN_TYPES(1024)

typedef void (*ln_fn)(const ln_job *);

/* kind: bit 0 bfloat16 (else float32) in and out, bit 1 residual (add x) */
#define LN_PICK(C)                                                                  \
    switch (kind) {                                                                 \
    case 0: return ln_##C##_F32_0;                                                  \
    case 2: return ln_##C##_F32_1;                                                  \
    case 1: return ln_##C##_BF16_0;                                                 \
    case 3: return ln_##C##_BF16_1;                                                 \
    default: return 0;                                                              \
    }

static ln_fn ln_pick(int c, int kind) {
    switch (c) {
    case 16: LN_PICK(16)
    case 32: LN_PICK(32)
    case 64: LN_PICK(64)
    case 128: LN_PICK(128)
    case 256: LN_PICK(256)
    case 512: LN_PICK(512)
    case 1024: LN_PICK(1024)
    default: return 0;
    }
}

typedef struct {
    ln_fn fn;
    ln_job job;
} ln_args;

static void ln_units(const void *args, int64_t u0, int64_t u1, float *unused) {
    (void)unused;
    const ln_args *a = (const ln_args *)args;
    ln_job j = a->job;
    j.r0 = u0;
    j.r1 = u1;
    a->fn(&j);
}

/* y = LN(x) * w + b (+ x), rows of c values. Returns 0, -1 for a channel count / type combination
 * this library has no kernel for, -2 where memory ran out. */
int lorair_layer_norm_rows(const void *x, void *y, const float *w, const float *b, int64_t rows, int c,
                           float eps, int kind, int nthreads) {
    ln_args a = {ln_pick(c, kind), {x, y, w, b, 0, 0, eps}};
    if (!a.fn) return -1;
    return run_units(ln_units, &a, rows, nthreads, 0);
}

static inline float load_any(const void *p, int64_t i, int bf) {
    return bf ? bf16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

static inline void store_any(void *p, int64_t i, float v, int bf) {
    if (bf) ((uint16_t *)p)[i] = f32_to_bf16(v);
    else ((float *)p)[i] = v;
}

/* ---- SimpleGate with the TLC cell means in the same pass ----
 * x: (B, H, W, 2C) -> g = x[..., :C] * x[..., C:] (B, H, W, C) and cells (B, H/s, W/s, C), the means of g
 * over s x s cells (H and W multiples of s), both in x's type: what `a * b` then `avg_pool2d(g, s)` give. */
typedef struct {
    const void *x;
    void *g, *cells;
    int64_t h, w, c, s;
    int bf;
} gate_args;

static void gate_pool_units(const void *args, int64_t u0, int64_t u1, float *acc) {
    const gate_args *a = (const gate_args *)args;
    const int64_t c = a->c, s = a->s, gh = a->h / s, gw = a->w / s;
    float *tmp = acc + gw * c; /* scratch: the cell sums of one row of cells, then one pixel's row */
    for (int64_t u = u0; u < u1; u++) { /* u = one row of cells of one image */
        const int64_t b = u / gh, cy = u % gh;
        memset(acc, 0, (size_t)(gw * c) * sizeof(float));
        for (int64_t y = cy * s; y < (cy + 1) * s; y++) {
            const int64_t row = (b * a->h + y) * a->w;
            for (int64_t x = 0; x < a->w; x++) {
                const int64_t in = (row + x) * 2 * c, out = (row + x) * c;
                float *cell = acc + (x / s) * c;
                if (a->bf) {
                    const uint16_t *restrict p = (const uint16_t *)a->x + in;
                    uint16_t *restrict q = (uint16_t *)a->g + out;
                    for (int64_t i = 0; i < c; i++) tmp[i] = bf16_to_f32(p[i]) * bf16_to_f32(p[i + c]);
                    f32_row_to_bf16(tmp, q, c);
                    for (int64_t i = 0; i < c; i++) cell[i] += bf16_to_f32(q[i]); /* the mean of what g holds */
                } else {
                    const float *p = (const float *)a->x + in;
                    float *q = (float *)a->g + out;
                    for (int64_t i = 0; i < c; i++) {
                        float v = p[i] * p[i + c];
                        q[i] = v;
                        cell[i] += v;
                    }
                }
            }
        }
        const float inv = 1.0f / (float)(s * s);
        for (int64_t i = 0; i < gw * c; i++) acc[i] *= inv;
        const int64_t at = (b * gh + cy) * gw * c;
        if (a->bf) f32_row_to_bf16(acc, (uint16_t *)a->cells + at, gw * c);
        else f32_row_copy(acc, (float *)a->cells + at, gw * c);
    }
}

int lorair_gate_pool(const void *x, void *g, void *cells, int64_t batch, int64_t h, int64_t w, int64_t c, int64_t s,
                     int bf, int nthreads) {
    if (s < 1 || h % s || w % s || c < 1) return -1;
    gate_args a = {x, g, cells, h, w, c, s, bf};
    return run_units(gate_pool_units, &a, batch * (h / s), nthreads, (w / s) * c + c);
}

/* ---- x times the bilinear upsampling of a cell grid (TLC's attention), in one pass ----
 * y = x * up(att), up = F.interpolate(att, scale_factor=s, mode="bilinear", align_corners=False) with
 * x: (B, H, W, C), att: (B, gh, gw, C), H = gh*s, W = gw*s. The upsampled value is rounded to x's type
 * before the product, as PyTorch's two ops round it. */
typedef struct {
    const void *x, *att;
    void *y;
    int64_t h, w, c, s, gh, gw;
    int bf;
} scale_args;

static inline void source_index(int64_t dst, int64_t s, int64_t n, int64_t *i0, int64_t *i1, float *l1) {
    /* PyTorch's align_corners=False source coordinate, clamped at 0, with the given scale 1/s */
    float src = ((float)dst + 0.5f) * (1.0f / (float)s) - 0.5f;
    if (src < 0.f) src = 0.f;
    int64_t i = (int64_t)src;
    *i0 = i;
    *i1 = i + (i < n - 1 ? 1 : 0);
    *l1 = src - (float)i;
}

static void scale_units(const void *args, int64_t u0, int64_t u1, float *line) {
    const scale_args *a = (const scale_args *)args;
    const int64_t c = a->c, gw = a->gw;
    float *tmp = line + gw * c; /* scratch: the attention rows interpolated in y, then one pixel's row */
    for (int64_t u = u0; u < u1; u++) { /* u = one output row of one image */
        const int64_t b = u / a->h, y = u % a->h;
        int64_t r0, r1;
        float ly;
        source_index(y, a->s, a->gh, &r0, &r1, &ly);
        const int64_t g0 = (b * a->gh + r0) * gw * c, g1 = (b * a->gh + r1) * gw * c;
        for (int64_t i = 0; i < gw * c; i++)
            line[i] = (1.0f - ly) * load_any(a->att, g0 + i, a->bf) + ly * load_any(a->att, g1 + i, a->bf);
        for (int64_t x = 0; x < a->w; x++) {
            int64_t k0, k1;
            float lx;
            source_index(x, a->s, gw, &k0, &k1, &lx);
            const float *p0 = line + k0 * c, *p1 = line + k1 * c;
            const int64_t o = ((b * a->h + y) * a->w + x) * c;
            if (a->bf) {
                const uint16_t *restrict p = (const uint16_t *)a->x + o;
                uint16_t *restrict q = (uint16_t *)a->y + o;
                for (int64_t i = 0; i < c; i++) tmp[i] = (1.0f - lx) * p0[i] + lx * p1[i];
                f32_row_to_bf16(tmp, q, c); /* the upsampled attention, rounded as PyTorch's op leaves it */
                for (int64_t i = 0; i < c; i++) tmp[i] = bf16_to_f32(p[i]) * bf16_to_f32(q[i]);
                f32_row_to_bf16(tmp, q, c);
            } else {
                const float *p = (const float *)a->x + o;
                float *q = (float *)a->y + o;
                for (int64_t i = 0; i < c; i++) q[i] = p[i] * ((1.0f - lx) * p0[i] + lx * p1[i]);
            }
        }
    }
}

int lorair_scale_by_grid(const void *x, const void *att, void *y, int64_t batch, int64_t gh, int64_t gw, int64_t c,
                         int64_t s, int bf, int nthreads) {
    if (s < 1 || gh < 1 || gw < 1 || c < 1) return -1;
    scale_args a = {x, att, y, gh * s, gw * s, c, s, gh, gw, bf};
    return run_units(scale_units, &a, batch * gh * s, nthreads, gw * c + c);
}

/* ---- pixel_shuffle(u, 2) + skip in one pass ----
 * u: (B, H/2, W/2, 4C), skip and y: (B, H, W, C); y[b, 2i+di, 2j+dj, c] = u[b, i, j, 4c + 2di + dj] + skip. */
typedef struct {
    const void *u, *skip;
    void *y;
    int64_t h, w, c;
    int bf;
} shuffle_args;

static void shuffle_units(const void *args, int64_t u0, int64_t u1, float *in) {
    const shuffle_args *a = (const shuffle_args *)args;
    const int64_t c = a->c, ih = a->h / 2, iw = a->w / 2;
    for (int64_t u = u0; u < u1; u++) { /* u = one input row of one image: output rows 2i and 2i+1 */
        const int64_t b = u / ih, i = u % ih;
        for (int64_t j = 0; j < iw; j++) {
            const int64_t src = ((b * ih + i) * iw + j) * 4 * c;
            int64_t o[4]; /* (di, dj) = (0,0), (0,1), (1,0), (1,1): channel 4c + 2di + dj goes there */
            for (int k = 0; k < 4; k++) o[k] = ((b * a->h + 2 * i + k / 2) * a->w + 2 * j + k % 2) * c;
            for (int k = 0; k < 4; k++) {
                if (a->bf) {
                    const uint16_t *restrict p = (const uint16_t *)a->u + src;
                    const uint16_t *restrict sk = (const uint16_t *)a->skip + o[k];
                    uint16_t *restrict q = (uint16_t *)a->y + o[k];
                    if (k == 0)
                        for (int64_t ch = 0; ch < 4 * c; ch++) in[ch] = bf16_to_f32(p[ch]); /* converted once */
                    float *restrict sum = in + 4 * c;
                    for (int64_t ch = 0; ch < c; ch++) sum[ch] = in[4 * ch + k] + bf16_to_f32(sk[ch]);
                    f32_row_to_bf16(sum, q, c);
                } else {
                    const float *restrict p = (const float *)a->u + src;
                    const float *restrict sk = (const float *)a->skip + o[k];
                    float *restrict q = (float *)a->y + o[k];
                    for (int64_t ch = 0; ch < c; ch++) q[ch] = p[4 * ch + k] + sk[ch];
                }
            }
        }
    }
}

int lorair_shuffle_add(const void *u, const void *skip, void *y, int64_t batch, int64_t h, int64_t w, int64_t c, int bf,
                       int nthreads) {
    if (h % 2 || w % 2 || c < 1) return -1;
    shuffle_args a = {u, skip, y, h, w, c, bf};
    return run_units(shuffle_units, &a, batch * (h / 2), nthreads, 5 * c);
}
