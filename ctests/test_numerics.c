/* Full optimizer steps against a double-precision reference, using the oracles of
 * ALGORITHM.md that do not depend on the library's random sketch Ω:
 *   (a) DENSE layout: plain AdamW (torch.optim.AdamW semantics) and Lion;
 *   (b) FACTORED with rank >= min(rows, cols): the compression is exact;
 *   (c) FACTORED rank 2 on rank-1 gradient streams g_t = a_t b^T (fixed b): exact as well.
 * Plus grad_scale, found_inf, lr_ptr and bf16 parameters/gradients.
 * Error measure: max|W - W_ref| / max|W_ref - W0| (relative to the reference's total change). */
#include "test_util.h"

#define TOL 1e-4

typedef enum { GRAD_RANDOM, GRAD_RANK1 } GradKind;

typedef struct {
    const char *name;
    MlorcAlgorithm algorithm;
    MlorcLayout layout;
    uint32_t rank;
    uint32_t power_iters;
    uint32_t bias_correction;
    size_t rows, cols;
    int steps;
    GradKind grads;
    int grad_scale;     /* pass grad * 1024 with *grad_scale = 1024 */
    int found_inf_step; /* before this step (1-based), one call with *found_inf = 1; 0: never */
    int lr_ptr;         /* pass the learning rate through lr_ptr (options.lr is then wrong) */
    uint64_t seed;
} Case;

static RefHyper hyper_of(const MlorcConfig *c, double lr) {
    RefHyper h;
    h.lr = lr;
    h.beta1 = c->beta1;
    h.beta2 = c->beta2;
    h.eps = c->eps;
    h.weight_decay = c->weight_decay;
    h.bias_correction = (int)c->bias_correction;
    return h;
}

/* Gradient of step t into g (f32, what the library gets unscaled) and gd (the same in double). */
static void make_grad(GradKind kind, Rng *rng, const float *b, size_t rows, size_t cols, float *g,
                      double *gd) {
    if (kind == GRAD_RANDOM) {
        /* Magnitudes in [0.5, 1.5): the second moment stays well away from zero, so sqrt(V)
         * is well conditioned and f32 rounding cannot decide the update. */
        for (size_t i = 0; i < rows * cols; i++) g[i] = (float)rng_signed(rng, 0.5, 1.5);
    } else {
        /* a_i, b_j are multiples of 1/64 with 7-bit numerators: a_i * b_j is exact in f32, so the
         * stream is exactly rank 1. */
        for (size_t i = 0; i < rows; i++) {
            double ai = (double)(32 + (int)(rng_next(rng) % 64)) / 64.0;
            if (rng_next(rng) & 1u) ai = -ai;
            for (size_t j = 0; j < cols; j++) g[i * cols + j] = (float)ai * b[j];
        }
    }
    for (size_t i = 0; i < rows * cols; i++) gd[i] = (double)g[i];
}

static void run_case(const Case *c) {
    const size_t n = c->rows * c->cols;
    const double lr = 1e-2;
    Rng rng = {c->seed};

    MlorcConfig cfg;
    REQUIRE_OK(mlorc_config_init(&cfg, c->algorithm));
    cfg.layout = c->layout;
    cfg.rank = c->rank;
    cfg.power_iters = c->power_iters;
    cfg.bias_correction = c->bias_correction;
    cfg.weight_decay = 0.1;
    cfg.seed = c->seed;
    MlorcTensorDesc desc;
    REQUIRE_OK(mlorc_tensor_desc_init(&desc, c->rows, c->cols, MLORC_F32));
    MlorcState *state = NULL;
    REQUIRE_OK(mlorc_state_create(&cfg, &desc, &state));
    MlorcLayout resolved = 99;
    CHECK_OK(mlorc_state_layout(state, &resolved));
    CHECK_INT_EQ(resolved, c->layout);

    float *w = (float *)xcalloc(n, sizeof(float));
    float *w_before = (float *)xcalloc(n, sizeof(float));
    float *g = (float *)xcalloc(n, sizeof(float));
    float *g_lib = (float *)xcalloc(n, sizeof(float));
    double *gd = (double *)xcalloc(n, sizeof(double));
    double *wref = (double *)xcalloc(n, sizeof(double));
    double *w0 = (double *)xcalloc(n, sizeof(double));
    double *m = (double *)xcalloc(n, sizeof(double));
    double *v = (double *)xcalloc(n, sizeof(double));
    unsigned char *tie = (unsigned char *)xcalloc(n, 1);
    float *b = (float *)xcalloc(c->cols, sizeof(float));

    for (size_t i = 0; i < n; i++) {
        w[i] = (float)rng_range(&rng, -1.0, 1.0);
        wref[i] = w0[i] = (double)w[i];
    }
    for (size_t j = 0; j < c->cols; j++) {
        double bj = (double)(32 + (int)(rng_next(&rng) % 64)) / 64.0;
        b[j] = (float)((rng_next(&rng) & 1u) ? bj : -bj);
    }

    const RefHyper h = hyper_of(&cfg, lr);
    const float scale = 1024.0f, lr_f = (float)lr, inf_flag = 1.0f, no_inf = 0.0f;
    size_t ties = 0;
    double worst = 0.0;
    int worst_step = 0;

    for (int t = 1; t <= c->steps; t++) {
        make_grad(c->grads, &rng, b, c->rows, c->cols, g, gd);
        for (size_t i = 0; i < n; i++) g_lib[i] = c->grad_scale ? g[i] * scale : g[i];

        MlorcStepOptions opt;
        REQUIRE_OK(mlorc_step_options_init(&opt, c->lr_ptr ? 123.0 : lr));
        if (c->lr_ptr) opt.lr_ptr = &lr_f;
        if (c->grad_scale) opt.grad_scale = &scale;

        if (t == c->found_inf_step) {
            /* Skipped step: params, state and step count unchanged. */
            size_t before_size = 0, after_size = 0;
            unsigned char *before = save_state(state, &before_size);
            memcpy(w_before, w, n * sizeof(float));
            MlorcStepOptions skip = opt;
            skip.found_inf = &inf_flag;
            CHECK_OK(mlorc_step(state, w, g_lib, &skip));
            CHECK(memcmp(w_before, w, n * sizeof(float)) == 0);
            uint64_t count = 0;
            CHECK_OK(mlorc_state_step_count(state, &count));
            CHECK_INT_EQ(count, (uint64_t)(t - 1));
            unsigned char *after = save_state(state, &after_size);
            CHECK(before_size == after_size && memcmp(before, after, before_size) == 0);
            free(before);
            free(after);
            opt.found_inf = &no_inf; /* a zero flag: a normal step */
        }

        CHECK_OK(mlorc_step(state, w, g_lib, &opt));
        if (c->algorithm == MLORC_ADAMW) {
            ref_adamw_step(wref, m, v, gd, n, &h, (uint64_t)t);
        } else {
            ties += ref_lion_step(wref, m, gd, n, &h, tie);
            /* Where |c| is at rounding level the sign is the library's call, not an error. */
            for (size_t i = 0; i < n; i++)
                if (tie[i]) wref[i] = (double)w[i];
        }

        double change = 0.0;
        for (size_t i = 0; i < n; i++) change = fmax(change, fabs(wref[i] - w0[i]));
        double err = max_abs_diff_fd(w, wref, n) / change;
        if (!(err <= worst)) {
            worst = isnan(err) ? INFINITY : err;
            worst_step = t;
        }
    }

    CHECK(!any_nan_f(w, n));
    uint64_t count = 0;
    CHECK_OK(mlorc_state_step_count(state, &count));
    CHECK_INT_EQ(count, (uint64_t)c->steps);
    CHECK(ties * 50 <= n * (size_t)c->steps); /* sign ties must stay rare */
    printf("  %-44s %3zux%-3zu steps %2d  rel err %.2e (worst at step %d)%s\n", c->name, c->rows,
           c->cols, c->steps, worst, worst_step, ties ? "  [lion sign ties synced]" : "");
    if (!(worst < TOL)) {
        fprintf(stderr, "%s:%d: case %s: relative error %.3e >= %.0e at step %d\n", __FILE__,
                __LINE__, c->name, worst, TOL, worst_step);
        g_failures++;
    }

    mlorc_state_destroy(state);
    free(w);
    free(w_before);
    free(g);
    free(g_lib);
    free(gd);
    free(wref);
    free(w0);
    free(m);
    free(v);
    free(tie);
    free(b);
}

/* bf16 parameters and gradients: each step is compared with the reference step taken from the
 * library's own (bf16) parameters, so the tolerance is bf16 rounding of the result. */
static void run_bf16(const char *name, MlorcAlgorithm algorithm, MlorcLayout layout, uint32_t rank,
                     size_t rows, size_t cols) {
    const size_t n = rows * cols;
    const double lr = 1e-2;
    const int steps = 10;
    Rng rng = {77u + rows};

    MlorcConfig cfg;
    REQUIRE_OK(mlorc_config_init(&cfg, algorithm));
    cfg.layout = layout;
    cfg.rank = rank;
    cfg.weight_decay = 0.1;
    MlorcTensorDesc desc;
    REQUIRE_OK(mlorc_tensor_desc_init(&desc, rows, cols, MLORC_BF16));
    MlorcState *state = NULL;
    REQUIRE_OK(mlorc_state_create(&cfg, &desc, &state));

    uint16_t *w = (uint16_t *)xcalloc(n, sizeof(uint16_t));
    uint16_t *g = (uint16_t *)xcalloc(n, sizeof(uint16_t));
    double *gd = (double *)xcalloc(n, sizeof(double));
    double *wref = (double *)xcalloc(n, sizeof(double));
    double *m = (double *)xcalloc(n, sizeof(double));
    double *v = (double *)xcalloc(n, sizeof(double));
    unsigned char *tie = (unsigned char *)xcalloc(n, 1);
    for (size_t i = 0; i < n; i++) w[i] = f32_to_bf16((float)rng_range(&rng, -0.1, 0.1));

    const RefHyper h = hyper_of(&cfg, lr);
    size_t mismatched = 0, beyond_ulp = 0;
    double worst_ulps = 0.0;
    for (int t = 1; t <= steps; t++) {
        for (size_t i = 0; i < n; i++) {
            g[i] = f32_to_bf16((float)rng_signed(&rng, 0.5, 1.5));
            gd[i] = (double)bf16_to_f32(g[i]);
            wref[i] = (double)bf16_to_f32(w[i]);
        }
        MlorcStepOptions opt;
        REQUIRE_OK(mlorc_step_options_init(&opt, lr));
        CHECK_OK(mlorc_step(state, w, g, &opt));
        if (algorithm == MLORC_ADAMW) {
            ref_adamw_step(wref, m, v, gd, n, &h, (uint64_t)t);
        } else {
            ref_lion_step(wref, m, gd, n, &h, tie);
        }
        for (size_t i = 0; i < n; i++) {
            if (algorithm == MLORC_LION && tie[i]) continue;
            float lib = bf16_to_f32(w[i]);
            CHECK(!isnan(lib));
            float nearest = bf16_to_f32(f32_to_bf16((float)wref[i]));
            if (lib != nearest) mismatched++;
            /* one bf16 ulp at the larger magnitude: 2^(exponent - 7) */
            double mag = fmax(fabs((double)lib), fabs(wref[i]));
            int e;
            frexp(mag, &e);
            double ulp = ldexp(1.0, e - 1 - 7);
            double ulps = fabs((double)lib - wref[i]) / ulp;
            if (ulps > worst_ulps) worst_ulps = ulps;
            if (ulps > 1.0) beyond_ulp++;
        }
    }
    printf("  %-44s %3zux%-3zu steps %2d  worst %.2f bf16 ulp, %zu of %zu not the nearest bf16\n",
           name, rows, cols, steps, worst_ulps, mismatched, n * (size_t)steps);
    CHECK_INT_EQ(beyond_ulp, 0);
    /* Rounding an f32 result rather than the exact one changes a few entries at most. */
    CHECK(mismatched * 20 <= n * (size_t)steps);

    mlorc_state_destroy(state);
    free(w);
    free(g);
    free(gd);
    free(wref);
    free(m);
    free(v);
    free(tie);
}

int main(void) {
    const Case cases[] = {
        /* name                                 algorithm    layout                 r  q  bc rows cols st grads       gs inf lp seed */
        {"adamw dense",                         MLORC_ADAMW, MLORC_LAYOUT_DENSE,    4, 0, 1, 16, 11, 20, GRAD_RANDOM, 0, 0, 0, 1},
        {"adamw dense, no bias correction",     MLORC_ADAMW, MLORC_LAYOUT_DENSE,    4, 0, 0, 16, 11, 20, GRAD_RANDOM, 0, 0, 0, 2},
        {"lion dense",                          MLORC_LION,  MLORC_LAYOUT_DENSE,    4, 0, 1, 16, 11, 20, GRAD_RANDOM, 0, 0, 0, 3},
        {"adamw factored, rank = min (12x7 r7)", MLORC_ADAMW, MLORC_LAYOUT_FACTORED, 7, 0, 1, 12, 7, 20, GRAD_RANDOM, 0, 0, 0, 4},
        {"lion factored, rank = min (12x7 r7)", MLORC_LION,  MLORC_LAYOUT_FACTORED, 7, 0, 1, 12, 7, 20, GRAD_RANDOM, 0, 0, 0, 5},
        {"adamw factored, rank > min (5x40 r8)", MLORC_ADAMW, MLORC_LAYOUT_FACTORED, 8, 0, 1, 5, 40, 20, GRAD_RANDOM, 0, 0, 0, 6},
        {"lion factored, rank > min (5x40 r8)", MLORC_LION,  MLORC_LAYOUT_FACTORED, 8, 0, 1, 5, 40, 20, GRAD_RANDOM, 0, 0, 0, 7},
        {"adamw factored r2, rank-1 grads",     MLORC_ADAMW, MLORC_LAYOUT_FACTORED, 2, 0, 1, 24, 17, 20, GRAD_RANK1,  0, 0, 0, 8},
        {"lion factored r2, rank-1 grads",      MLORC_LION,  MLORC_LAYOUT_FACTORED, 2, 0, 1, 24, 17, 20, GRAD_RANK1,  0, 0, 0, 9},
        {"adamw factored r2 q1, rank-1 grads",  MLORC_ADAMW, MLORC_LAYOUT_FACTORED, 2, 1, 1, 24, 17, 20, GRAD_RANK1,  0, 0, 0, 10},
        {"adamw factored r1, rank-1 grads",     MLORC_ADAMW, MLORC_LAYOUT_FACTORED, 1, 0, 1, 24, 17, 20, GRAD_RANK1,  0, 0, 0, 11},
        {"adamw dense, grad_scale",             MLORC_ADAMW, MLORC_LAYOUT_DENSE,    4, 0, 1, 16, 11, 8,  GRAD_RANDOM, 1, 0, 0, 12},
        {"adamw factored, grad_scale",          MLORC_ADAMW, MLORC_LAYOUT_FACTORED, 7, 0, 1, 12, 7, 8,  GRAD_RANDOM, 1, 0, 0, 13},
        {"lion factored, grad_scale",           MLORC_LION,  MLORC_LAYOUT_FACTORED, 7, 0, 1, 12, 7, 8,  GRAD_RANDOM, 1, 0, 0, 14},
        {"adamw dense, found_inf at step 4",    MLORC_ADAMW, MLORC_LAYOUT_DENSE,    4, 0, 1, 16, 11, 8,  GRAD_RANDOM, 0, 4, 0, 15},
        {"adamw factored, found_inf at 1 and gs", MLORC_ADAMW, MLORC_LAYOUT_FACTORED, 7, 0, 1, 12, 7, 8, GRAD_RANDOM, 1, 1, 0, 16},
        {"lion factored, found_inf at step 5",  MLORC_LION,  MLORC_LAYOUT_FACTORED, 2, 0, 1, 24, 17, 8,  GRAD_RANK1,  0, 5, 0, 17},
        {"adamw factored, lr_ptr",              MLORC_ADAMW, MLORC_LAYOUT_FACTORED, 7, 0, 1, 12, 7, 8,  GRAD_RANDOM, 0, 0, 1, 18},
    };
    printf("test_numerics: relative error must stay below %.0e\n", TOL);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(&cases[i]);

    run_bf16("bf16 adamw dense", MLORC_ADAMW, MLORC_LAYOUT_DENSE, 4, 16, 11);
    run_bf16("bf16 adamw factored (12x7 r7)", MLORC_ADAMW, MLORC_LAYOUT_FACTORED, 7, 12, 7);
    run_bf16("bf16 lion dense", MLORC_LION, MLORC_LAYOUT_DENSE, 4, 16, 11);
    return test_exit_code("test_numerics");
}
