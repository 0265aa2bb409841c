/* Helpers shared by the C tests of libmlorc: checks that print file:line and values, a
 * deterministic random generator, bf16 conversion and the double-precision AdamW / Lion
 * references of ALGORITHM.md. Header-only (static inline) so each test is one source file. */
#ifndef MLORC_TEST_UTIL_H
#define MLORC_TEST_UTIL_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mlorc.h"

static int g_failures = 0;

/* Prints file:line, the expression and its value; counts the failure and goes on, so one run
 * reports every broken check. main returns test_exit_code(). */
#define CHECK(cond)                                                                          \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);         \
            g_failures++;                                                                    \
        }                                                                                    \
    } while (0)

#define CHECK_INT_EQ(a, b)                                                                   \
    do {                                                                                     \
        unsigned long long va_ = (unsigned long long)(a), vb_ = (unsigned long long)(b);     \
        if (va_ != vb_) {                                                                    \
            fprintf(stderr, "%s:%d: CHECK failed: %s == %s (%llu vs %llu)\n", __FILE__,      \
                    __LINE__, #a, #b, va_, vb_);                                             \
            g_failures++;                                                                    \
        }                                                                                    \
    } while (0)

#define CHECK_STR_EQ(a, b)                                                                   \
    do {                                                                                     \
        const char *sa_ = (a), *sb_ = (b);                                                   \
        if (sa_ == NULL || sb_ == NULL || strcmp(sa_, sb_) != 0) {                           \
            fprintf(stderr, "%s:%d: CHECK failed: %s == %s (\"%s\" vs \"%s\")\n", __FILE__,  \
                    __LINE__, #a, #b, sa_ ? sa_ : "(null)", sb_ ? sb_ : "(null)");           \
            g_failures++;                                                                    \
        }                                                                                    \
    } while (0)

/* The call must succeed; otherwise the status and the library's message are printed. */
#define CHECK_OK(call)                                                                       \
    do {                                                                                     \
        MlorcStatus st_ = (call);                                                            \
        if (st_ != MLORC_OK) {                                                               \
            fprintf(stderr, "%s:%d: %s returned %s (%u): %s\n", __FILE__, __LINE__, #call,   \
                    mlorc_status_string(st_), (unsigned)st_, mlorc_last_error_message());    \
            g_failures++;                                                                    \
        }                                                                                    \
    } while (0)

/* Like CHECK_OK, but stops the test: what follows depends on the call. */
#define REQUIRE_OK(call)                                                                     \
    do {                                                                                     \
        MlorcStatus st_ = (call);                                                            \
        if (st_ != MLORC_OK) {                                                               \
            fprintf(stderr, "%s:%d: %s returned %s (%u): %s\n", __FILE__, __LINE__, #call,   \
                    mlorc_status_string(st_), (unsigned)st_, mlorc_last_error_message());    \
            exit(1);                                                                         \
        }                                                                                    \
    } while (0)

#define REQUIRE(cond)                                                                        \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            fprintf(stderr, "%s:%d: REQUIRE failed: %s\n", __FILE__, __LINE__, #cond);       \
            exit(1);                                                                         \
        }                                                                                    \
    } while (0)

static inline int test_exit_code(const char *name) {
    if (g_failures != 0) {
        fprintf(stderr, "%s: %d check(s) failed\n", name, g_failures);
        return 1;
    }
    printf("%s: all checks passed\n", name);
    return 0;
}

static inline void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n == 0 ? 1 : n, size == 0 ? 1 : size);
    REQUIRE(p != NULL);
    return p;
}

/* ---- deterministic random numbers (splitmix64) ---- */

typedef struct {
    uint64_t s;
} Rng;

static inline uint64_t rng_next(Rng *r) {
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1). */
static inline double rng_uniform(Rng *r) { return (double)(rng_next(r) >> 11) * 0x1.0p-53; }

/* Uniform in [lo, hi). */
static inline double rng_range(Rng *r, double lo, double hi) { return lo + (hi - lo) * rng_uniform(r); }

/* A random sign times a magnitude in [lo, hi): bounded away from zero. */
static inline double rng_signed(Rng *r, double lo, double hi) {
    double m = rng_range(r, lo, hi);
    return (rng_next(r) & 1u) ? m : -m;
}

/* ---- bf16 ---- */

static inline float bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* Round to nearest even (finite inputs). */
static inline uint16_t f32_to_bf16(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    uint32_t rounding = 0x7FFFu + ((bits >> 16) & 1u);
    return (uint16_t)((bits + rounding) >> 16);
}

/* ---- references in double precision (torch.optim.AdamW / Lion semantics) ---- */

typedef struct {
    double lr, beta1, beta2, eps, weight_decay;
    int bias_correction;
} RefHyper;

/* One AdamW step on n elements; t is the new step number (1, 2, ...). */
static inline void ref_adamw_step(double *w, double *m, double *v, const double *g, size_t n,
                                  const RefHyper *h, uint64_t t) {
    double bc1 = h->bias_correction ? 1.0 - pow(h->beta1, (double)t) : 1.0;
    double bc2 = h->bias_correction ? 1.0 - pow(h->beta2, (double)t) : 1.0;
    for (size_t i = 0; i < n; i++) {
        w[i] *= 1.0 - h->lr * h->weight_decay;
        m[i] = h->beta1 * m[i] + (1.0 - h->beta1) * g[i];
        v[i] = h->beta2 * v[i] + (1.0 - h->beta2) * g[i] * g[i];
        w[i] -= h->lr / bc1 * m[i] / (sqrt(v[i]) / sqrt(bc2) + h->eps);
    }
}

/* One Lion step on n elements. Entries whose interpolation c is so close to zero that f32
 * rounding may decide its sign are flagged in tie[i] (may be NULL); returns their number. */
static inline size_t ref_lion_step(double *w, double *m, const double *g, size_t n,
                                   const RefHyper *h, unsigned char *tie) {
    double cmax = 0.0;
    for (size_t i = 0; i < n; i++) {
        double c = h->beta1 * m[i] + (1.0 - h->beta1) * g[i];
        if (fabs(c) > cmax) cmax = fabs(c);
    }
    size_t ties = 0;
    for (size_t i = 0; i < n; i++) {
        double c = h->beta1 * m[i] + (1.0 - h->beta1) * g[i];
        double s = c > 0.0 ? 1.0 : (c < 0.0 ? -1.0 : 0.0);
        int is_tie = fabs(c) <= 1e-4 * cmax;
        if (tie != NULL) tie[i] = (unsigned char)is_tie;
        ties += (size_t)is_tie;
        w[i] = w[i] * (1.0 - h->lr * h->weight_decay) - h->lr * s;
        m[i] = h->beta2 * m[i] + (1.0 - h->beta2) * g[i];
    }
    return ties;
}

/* max|a - b| over n elements; NaN propagates as +inf. */
static inline double max_abs_diff_fd(const float *a, const double *b, size_t n) {
    double d = 0.0;
    for (size_t i = 0; i < n; i++) {
        double x = fabs((double)a[i] - b[i]);
        if (!(x <= d)) d = isnan(x) ? INFINITY : x;
    }
    return d;
}

static inline int any_nan_f(const float *a, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (isnan(a[i]) || isinf(a[i])) return 1;
    return 0;
}

/* The bytes of mlorc_state_save for `state` (malloc'd; *size receives the length). */
static inline unsigned char *save_state(const MlorcState *state, size_t *size) {
    size_t need = 0, written = 0;
    REQUIRE_OK(mlorc_state_save_size(state, &need));
    unsigned char *buf = (unsigned char *)xcalloc(need, 1);
    REQUIRE_OK(mlorc_state_save(state, buf, need, &written));
    REQUIRE(written == need);
    *size = need;
    return buf;
}

#endif /* MLORC_TEST_UTIL_H */
