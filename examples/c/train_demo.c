/* train_demo: a 64 -> 128 -> 10 MLP (ReLU, softmax cross-entropy) trained through the libmlorc
 * C API, once with plain AdamW (DENSE moments) and once with MLorc-AdamW (FACTORED moments of
 * rank 4 for the weight matrices; the biases keep dense moments), on the same data and the same
 * initial weights. The task has hidden low-rank structure: the labels come from a teacher whose
 * logits are a rank-4 map of the input.
 *
 * Build against an installed libmlorc (see CMakeLists.txt) or with `make demo-c`. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mlorc.h"

enum { IN = 64, HID = 128, OUT = 10, TEACHER_RANK = 4, BATCH = 32, STEPS = 400, EVERY = 25,
       EVAL = 2000 };

#define LR 2e-3

static void die_on(MlorcStatus st, const char *what) {
    if (st != MLORC_OK) {
        fprintf(stderr, "train_demo: %s failed: %s: %s\n", what, mlorc_status_string(st),
                mlorc_last_error_message());
        exit(1);
    }
}

/* ---- random numbers ---- */
typedef struct {
    uint64_t s;
} Rng;
static uint64_t rng_next(Rng *r) {
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static double rng_uniform(Rng *r) { return ((double)(rng_next(r) >> 11) + 0.5) / 9007199254740992.0; }
static float rng_normal(Rng *r) {
    return (float)(sqrt(-2.0 * log(rng_uniform(r))) * cos(6.283185307179586 * rng_uniform(r)));
}

/* ---- the task: y = argmax(A x), A = P Q^T of rank 4 (OUT x IN) ---- */
typedef struct {
    float a[OUT * IN];
} Teacher;

static void teacher_init(Teacher *t, Rng *rng) {
    float p[OUT * TEACHER_RANK], q[IN * TEACHER_RANK];
    for (int i = 0; i < OUT * TEACHER_RANK; i++) p[i] = rng_normal(rng);
    for (int i = 0; i < IN * TEACHER_RANK; i++) q[i] = rng_normal(rng);
    for (int o = 0; o < OUT; o++)
        for (int i = 0; i < IN; i++) {
            float s = 0;
            for (int k = 0; k < TEACHER_RANK; k++) s += p[o * TEACHER_RANK + k] * q[i * TEACHER_RANK + k];
            t->a[o * IN + i] = s;
        }
}

static void sample(const Teacher *t, Rng *rng, int n, float *x, int *y) {
    for (int b = 0; b < n; b++) {
        float *xb = x + (size_t)b * IN;
        for (int i = 0; i < IN; i++) xb[i] = rng_normal(rng);
        int best = 0;
        float best_v = -INFINITY;
        for (int o = 0; o < OUT; o++) {
            float s = 0;
            for (int i = 0; i < IN; i++) s += t->a[o * IN + i] * xb[i];
            if (s > best_v) best_v = s, best = o;
        }
        y[b] = best;
    }
}

/* ---- the model: four tensors, each with its own optimizer state ---- */
enum { W1, B1, W2, B2, NT };
static const size_t T_ROWS[NT] = {HID, 1, OUT, 1};
static const size_t T_COLS[NT] = {IN, HID, HID, OUT};
static const char *const T_NAME[NT] = {"w1", "b1", "w2", "b2"};

typedef struct {
    float *p[NT];
    float *g[NT];
    MlorcState *opt[NT];
    const char *label;
} Model;

static size_t numel(int t) { return T_ROWS[t] * T_COLS[t]; }

static void model_init(Model *m, const char *label, MlorcLayout matrix_layout, uint64_t seed) {
    Rng rng = {seed};
    m->label = label;
    for (int t = 0; t < NT; t++) {
        m->p[t] = (float *)calloc(numel(t), sizeof(float));
        m->g[t] = (float *)calloc(numel(t), sizeof(float));
        if (!m->p[t] || !m->g[t]) {
            fprintf(stderr, "train_demo: out of memory\n");
            exit(1);
        }
        int is_matrix = T_ROWS[t] > 1;
        float scale = is_matrix ? (float)sqrt(2.0 / (double)T_COLS[t]) : 0.0f;
        for (size_t i = 0; i < numel(t); i++) m->p[t][i] = scale * rng_normal(&rng);

        MlorcConfig cfg;
        die_on(mlorc_config_init(&cfg, MLORC_ADAMW), "mlorc_config_init");
        cfg.rank = 4;
        /* Matrices get the requested layout; biases are vectors: AUTO makes them DENSE. */
        cfg.layout = is_matrix ? matrix_layout : MLORC_LAYOUT_AUTO;
        cfg.seed = 2024;
        MlorcTensorDesc desc;
        die_on(mlorc_tensor_desc_init(&desc, T_ROWS[t], T_COLS[t], MLORC_F32), "mlorc_tensor_desc_init");
        die_on(mlorc_state_create(&cfg, &desc, &m->opt[t]), "mlorc_state_create");
    }
}

static void model_free(Model *m) {
    for (int t = 0; t < NT; t++) {
        mlorc_state_destroy(m->opt[t]);
        free(m->p[t]);
        free(m->g[t]);
    }
}

static size_t model_state_bytes(const Model *m) {
    size_t total = 0;
    for (int t = 0; t < NT; t++) {
        size_t b = 0;
        die_on(mlorc_state_memory_bytes(m->opt[t], &b), "mlorc_state_memory_bytes");
        total += b;
    }
    return total;
}

/* Forward (and, when `train`, backward into m->g) on n samples; returns the mean loss and
 * counts correct predictions into *correct. */
static double forward_backward(Model *m, const float *x, const int *y, int n, int train, int *correct) {
    static float h[BATCH > EVAL ? BATCH : EVAL][HID];
    float logits[OUT], dlog[OUT], dh[HID];
    double loss = 0;
    int right = 0;
    if (train)
        for (int t = 0; t < NT; t++) memset(m->g[t], 0, numel(t) * sizeof(float));
    for (int b = 0; b < n; b++) {
        const float *xb = x + (size_t)b * IN;
        for (int j = 0; j < HID; j++) {
            float s = m->p[B1][j];
            const float *w = m->p[W1] + (size_t)j * IN;
            for (int i = 0; i < IN; i++) s += w[i] * xb[i];
            h[b][j] = s > 0 ? s : 0;
        }
        float mx = -INFINITY;
        int arg = 0;
        for (int o = 0; o < OUT; o++) {
            float s = m->p[B2][o];
            const float *w = m->p[W2] + (size_t)o * HID;
            for (int j = 0; j < HID; j++) s += w[j] * h[b][j];
            logits[o] = s;
            if (s > mx) mx = s, arg = o;
        }
        right += arg == y[b];
        double z = 0;
        for (int o = 0; o < OUT; o++) z += exp((double)(logits[o] - mx));
        loss += log(z) - (double)(logits[y[b]] - mx);
        if (!train) continue;
        /* d loss / d logits = softmax - onehot, averaged over the batch */
        for (int o = 0; o < OUT; o++)
            dlog[o] = (float)((exp((double)(logits[o] - mx)) / z - (o == y[b])) / n);
        for (int j = 0; j < HID; j++) dh[j] = 0;
        for (int o = 0; o < OUT; o++) {
            float *gw = m->g[W2] + (size_t)o * HID;
            const float *w = m->p[W2] + (size_t)o * HID;
            for (int j = 0; j < HID; j++) {
                gw[j] += dlog[o] * h[b][j];
                dh[j] += dlog[o] * w[j];
            }
            m->g[B2][o] += dlog[o];
        }
        for (int j = 0; j < HID; j++) {
            if (h[b][j] <= 0) continue; /* ReLU */
            float *gw = m->g[W1] + (size_t)j * IN;
            for (int i = 0; i < IN; i++) gw[i] += dh[j] * xb[i];
            m->g[B1][j] += dh[j];
        }
    }
    if (correct) *correct = right;
    return loss / n;
}

static void model_step(Model *m, double lr) {
    MlorcStepOptions opt;
    die_on(mlorc_step_options_init(&opt, lr), "mlorc_step_options_init");
    /* All tensors in one call (what a loop of mlorc_step would do, spread over the library's
     * threads): the arrays are indexed like m->opt. */
    die_on(mlorc_step_many(m->opt, (void *const *)m->p, (const void *const *)m->g, NT, &opt), "mlorc_step_many");
}

int main(void) {
    printf("libmlorc %s (ABI %u): 64->128->10 MLP, teacher of rank %d, batch %d, %d steps, lr %g\n\n",
           mlorc_version(), mlorc_abi_version(), TEACHER_RANK, BATCH, STEPS, LR);
    Rng data_rng = {7};
    Teacher teacher;
    teacher_init(&teacher, &data_rng);

    static float eval_x[EVAL * IN];
    static int eval_y[EVAL];
    sample(&teacher, &data_rng, EVAL, eval_x, eval_y);

    Model dense, mlorc;
    model_init(&dense, "AdamW (dense)", MLORC_LAYOUT_DENSE, 11);
    model_init(&mlorc, "MLorc-AdamW r4", MLORC_LAYOUT_FACTORED, 11); /* same initial weights */

    for (int t = 0; t < NT; t++) {
        MlorcLayout ld = 0, lm = 0;
        die_on(mlorc_state_layout(dense.opt[t], &ld), "mlorc_state_layout");
        die_on(mlorc_state_layout(mlorc.opt[t], &lm), "mlorc_state_layout");
        printf("  %-3s %3zux%-3zu  AdamW: %-8s  MLorc: %s\n", T_NAME[t], T_ROWS[t], T_COLS[t],
               ld == MLORC_LAYOUT_DENSE ? "dense" : "factored",
               lm == MLORC_LAYOUT_DENSE ? "dense" : "factored");
    }
    printf("\n%6s  %16s  %16s   (mean training loss over the last %d steps)\n", "step",
           dense.label, mlorc.label, EVERY);

    static float x[BATCH * IN];
    static int y[BATCH];
    double sum_d = 0, sum_m = 0;
    double first_d = 0, first_m = 0;
    for (int step = 1; step <= STEPS; step++) {
        sample(&teacher, &data_rng, BATCH, x, y); /* both models see the same batch */
        double ld = forward_backward(&dense, x, y, BATCH, 1, NULL);
        double lm = forward_backward(&mlorc, x, y, BATCH, 1, NULL);
        if (step == 1) first_d = ld, first_m = lm;
        model_step(&dense, LR);
        model_step(&mlorc, LR);
        sum_d += ld;
        sum_m += lm;
        if (step % EVERY == 0 || step == 1) {
            int k = step == 1 ? 1 : EVERY;
            printf("%6d  %16.4f  %16.4f\n", step, sum_d / k, sum_m / k);
            sum_d = sum_m = 0;
        }
    }

    int cd = 0, cm = 0;
    double ed = forward_backward(&dense, eval_x, eval_y, EVAL, 0, &cd);
    double em = forward_backward(&mlorc, eval_x, eval_y, EVAL, 0, &cm);
    size_t bd = model_state_bytes(&dense), bm = model_state_bytes(&mlorc);
    printf("\n%-16s  %12s  %12s  %10s  %14s\n", "optimizer", "first loss", "eval loss", "eval acc",
           "state bytes");
    printf("%-16s  %12.4f  %12.4f  %9.1f%%  %14zu\n", dense.label, first_d, ed, 100.0 * cd / EVAL, bd);
    printf("%-16s  %12.4f  %12.4f  %9.1f%%  %14zu  (%.1f%% of AdamW's)\n", mlorc.label, first_m, em,
           100.0 * cm / EVAL, bm, 100.0 * (double)bm / (double)bd);

    int ok = isfinite(ed) && isfinite(em) && ed < first_d && em < first_m;
    model_free(&dense);
    model_free(&mlorc);
    if (!ok) {
        fprintf(stderr, "train_demo: the loss did not fall\n");
        return 1;
    }
    return 0;
}
