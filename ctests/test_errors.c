/* Every error path of the C API: each must return its documented code (never MLORC_OK), leave a
 * fresh, non-empty mlorc_last_error_message() naming the offending argument, write no
 * out-parameter and change no state. */
#include "test_util.h"

/* Makes the last error a known message, so the next check sees a message the call itself set. */
static char g_sentinel[512];
static void set_sentinel(void) {
    MlorcStatus st = mlorc_tensor_desc_init(NULL, 1, 1, 424242u);
    REQUIRE(st == MLORC_ERROR_INVALID_ARGUMENT);
    snprintf(g_sentinel, sizeof g_sentinel, "%s", mlorc_last_error_message());
    REQUIRE(strlen(g_sentinel) > 0);
}

static int g_checked = 0;

/* `words` is one word or alternatives separated by '|'. */
static int mentions(const char *msg, const char *words) {
    char buf[128];
    snprintf(buf, sizeof buf, "%s", words);
    for (char *w = strtok(buf, "|"); w != NULL; w = strtok(NULL, "|"))
        if (strstr(msg, w) != NULL) return 1;
    return 0;
}

static void expect_err(MlorcStatus got, MlorcStatus want, const char *word, const char *expr,
                       const char *file, int line) {
    g_checked++;
    const char *msg = mlorc_last_error_message();
    if (got != want) {
        fprintf(stderr, "%s:%d: %s returned %s (%u), expected %s; message: %s\n", file, line, expr,
                mlorc_status_string(got), (unsigned)got, mlorc_status_string(want), msg);
        g_failures++;
        return;
    }
    if (msg == NULL || msg[0] == '\0' || strcmp(msg, g_sentinel) == 0) {
        fprintf(stderr, "%s:%d: %s: no fresh error message (\"%s\")\n", file, line, expr,
                msg ? msg : "(null)");
        g_failures++;
        return;
    }
    if (word != NULL && !mentions(msg, word)) {
        fprintf(stderr, "%s:%d: %s: message does not mention \"%s\": %s\n", file, line, expr, word,
                msg);
        g_failures++;
    }
    if (getenv("MLORC_TEST_VERBOSE")) printf("    %-70.70s -> %s\n", expr, msg);
}

/* Two acceptable codes (device checks). */
static void expect_err2(MlorcStatus got, MlorcStatus want1, MlorcStatus want2, const char *word,
                        const char *expr, const char *file, int line) {
    expect_err(got, got == want2 ? want2 : want1, word, expr, file, line);
}

#define EXPECT_ERR(call, code, word)                                                         \
    do {                                                                                     \
        set_sentinel();                                                                      \
        MlorcStatus got_ = (call);                                                           \
        expect_err(got_, (code), (word), #call, __FILE__, __LINE__);                         \
    } while (0)

#define EXPECT_INVALID(call, word) EXPECT_ERR(call, MLORC_ERROR_INVALID_ARGUMENT, word)

/* ---------------------------------------------------------------------------------------- */

static MlorcConfig g_cfg;      /* valid AdamW FACTORED rank 2 */
static MlorcTensorDesc g_desc; /* valid 8x6 f32 CPU */

static const size_t ROWS = 8, COLS = 6;

static void check_library_functions(void) {
    /* mlorc_status_string for every code, and an unknown one. */
    const char *names[] = {"MLORC_OK",
                           "MLORC_ERROR_INVALID_ARGUMENT",
                           "MLORC_ERROR_UNSUPPORTED",
                           "MLORC_ERROR_OUT_OF_MEMORY",
                           "MLORC_ERROR_CORRUPT_CHECKPOINT",
                           "MLORC_ERROR_DEVICE",
                           "MLORC_ERROR_DEVICE_UNAVAILABLE",
                           "MLORC_ERROR_INTERNAL"};
    const MlorcStatus codes[] = {MLORC_OK,
                                 MLORC_ERROR_INVALID_ARGUMENT,
                                 MLORC_ERROR_UNSUPPORTED,
                                 MLORC_ERROR_OUT_OF_MEMORY,
                                 MLORC_ERROR_CORRUPT_CHECKPOINT,
                                 MLORC_ERROR_DEVICE,
                                 MLORC_ERROR_DEVICE_UNAVAILABLE,
                                 MLORC_ERROR_INTERNAL};
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        CHECK_INT_EQ(codes[i], i); /* values are stable */
        CHECK_STR_EQ(mlorc_status_string(codes[i]), names[i]);
    }
    const char *unknown = mlorc_status_string(8);
    CHECK(unknown != NULL && unknown[0] != '\0');
    CHECK(mlorc_status_string(0xFFFFFFFFu) != NULL);

    mlorc_state_destroy(NULL); /* no-op */

    /* Initialisers. */
    MlorcConfig cfg;
    memset(&cfg, 0xAB, sizeof cfg);
    MlorcConfig cfg_copy = cfg;
    EXPECT_INVALID(mlorc_config_init(NULL, MLORC_ADAMW), "config");
    EXPECT_INVALID(mlorc_config_init(&cfg, 7), "algorithm");
    CHECK(memcmp(&cfg, &cfg_copy, sizeof cfg) == 0);

    MlorcTensorDesc desc;
    memset(&desc, 0xAB, sizeof desc);
    MlorcTensorDesc desc_copy = desc;
    EXPECT_INVALID(mlorc_tensor_desc_init(NULL, 4, 4, MLORC_F32), "desc");
    EXPECT_INVALID(mlorc_tensor_desc_init(&desc, 4, 4, 9), "dtype");
    CHECK(memcmp(&desc, &desc_copy, sizeof desc) == 0);

    EXPECT_INVALID(mlorc_step_options_init(NULL, 1e-3), "options");
}

/* Every way a (config, desc) pair can be wrong, against every function that takes one. */
typedef MlorcStatus (*PairFn)(const MlorcConfig *, const MlorcTensorDesc *, void *out);

static MlorcStatus pair_count(const MlorcConfig *c, const MlorcTensorDesc *d, void *out) {
    return mlorc_buffer_count(c, d, (size_t *)out);
}
static MlorcStatus pair_info(const MlorcConfig *c, const MlorcTensorDesc *d, void *out) {
    MlorcBufferInfo *info = (MlorcBufferInfo *)out;
    info->struct_size = sizeof *info;
    return mlorc_buffer_info(c, d, 0, info);
}
static MlorcStatus pair_bytes(const MlorcConfig *c, const MlorcTensorDesc *d, void *out) {
    return mlorc_state_bytes_required(c, d, (size_t *)out);
}
static MlorcStatus pair_layout(const MlorcConfig *c, const MlorcTensorDesc *d, void *out) {
    return mlorc_resolve_layout(c, d, (MlorcLayout *)out);
}
static MlorcStatus pair_create(const MlorcConfig *c, const MlorcTensorDesc *d, void *out) {
    return mlorc_state_create(c, d, (MlorcState **)out);
}
static float g_lent[6][64];
static MlorcStatus pair_create_lent(const MlorcConfig *c, const MlorcTensorDesc *d, void *out) {
    float *bufs[6] = {g_lent[0], g_lent[1], g_lent[2], g_lent[3], g_lent[4], g_lent[5]};
    return mlorc_state_create_with_buffers(c, d, bufs, 6, (MlorcState **)out);
}

typedef struct {
    const char *name;
    PairFn fn;
} PairCase;

static const PairCase PAIR_FNS[] = {
    {"mlorc_buffer_count", pair_count},
    {"mlorc_buffer_info", pair_info},
    {"mlorc_state_bytes_required", pair_bytes},
    {"mlorc_resolve_layout", pair_layout},
    {"mlorc_state_create", pair_create},
    {"mlorc_state_create_with_buffers", pair_create_lent},
};
#define N_PAIR_FNS (sizeof PAIR_FNS / sizeof PAIR_FNS[0])

typedef struct {
    unsigned char bytes[128]; /* big enough for every out-parameter */
} OutSlot;

static void expect_pair_error(const MlorcConfig *c, const MlorcTensorDesc *d, MlorcStatus want,
                              MlorcStatus want2, const char *word, const char *what, int line) {
    for (size_t f = 0; f < N_PAIR_FNS; f++) {
        OutSlot out, copy;
        memset(&out, 0x5A, sizeof out);
        if (PAIR_FNS[f].fn == pair_info) ((MlorcBufferInfo *)(void *)out.bytes)->struct_size = sizeof(MlorcBufferInfo);
        copy = out;
        char expr[256];
        snprintf(expr, sizeof expr, "%s with %s", PAIR_FNS[f].name, what);
        set_sentinel();
        MlorcStatus got = PAIR_FNS[f].fn(c, d, out.bytes);
        expect_err2(got, want, want2, word, expr, __FILE__, line);
        if (memcmp(&out, &copy, sizeof out) != 0) {
            fprintf(stderr, "%s:%d: %s wrote its out-parameter on failure\n", __FILE__, line, expr);
            g_failures++;
            if (got == MLORC_OK && PAIR_FNS[f].fn == pair_create) mlorc_state_destroy(*(MlorcState **)(void *)out.bytes);
        }
    }
}

#define PAIR_INVALID(c, d, word, what) \
    expect_pair_error((c), (d), MLORC_ERROR_INVALID_ARGUMENT, MLORC_ERROR_INVALID_ARGUMENT, (word), (what), __LINE__)

static void check_config_and_desc(void) {
    /* The valid pair works with every function. */
    for (size_t f = 0; f < N_PAIR_FNS; f++) {
        OutSlot out;
        memset(&out, 0, sizeof out);
        MlorcStatus st = PAIR_FNS[f].fn(&g_cfg, &g_desc, out.bytes);
        if (st != MLORC_OK)
            fprintf(stderr, "%s:%d: %s with the valid pair: %s: %s\n", __FILE__, __LINE__,
                    PAIR_FNS[f].name, mlorc_status_string(st), mlorc_last_error_message());
        CHECK_INT_EQ(st, MLORC_OK);
        if (st == MLORC_OK && (PAIR_FNS[f].fn == pair_create || PAIR_FNS[f].fn == pair_create_lent))
            mlorc_state_destroy(*(MlorcState **)(void *)out.bytes);
    }

    PAIR_INVALID(NULL, &g_desc, "config", "config NULL");
    PAIR_INVALID(&g_cfg, NULL, "desc", "desc NULL");

    /* NULL out-parameters. */
    EXPECT_INVALID(mlorc_buffer_count(&g_cfg, &g_desc, NULL), "count");
    EXPECT_INVALID(mlorc_buffer_info(&g_cfg, &g_desc, 0, NULL), "info");
    EXPECT_INVALID(mlorc_state_bytes_required(&g_cfg, &g_desc, NULL), "bytes");
    EXPECT_INVALID(mlorc_resolve_layout(&g_cfg, &g_desc, NULL), "layout");
    EXPECT_INVALID(mlorc_state_create(&g_cfg, &g_desc, NULL), "out");
    {
        float *bufs[6] = {g_lent[0], g_lent[1], g_lent[2], g_lent[3], g_lent[4], g_lent[5]};
        EXPECT_INVALID(mlorc_state_create_with_buffers(&g_cfg, &g_desc, bufs, 6, NULL), "out");
    }

    /* buffer_info: index out of range, wrong struct_size. */
    {
        MlorcBufferInfo info, copy;
        memset(&info, 0x5A, sizeof info);
        info.struct_size = sizeof info;
        copy = info;
        EXPECT_INVALID(mlorc_buffer_info(&g_cfg, &g_desc, 6, &info), "index");
        EXPECT_INVALID(mlorc_buffer_info(&g_cfg, &g_desc, (size_t)-1, &info), "index");
        CHECK(memcmp(&info, &copy, sizeof info) == 0);
        const size_t sizes[] = {0, sizeof info - 1, sizeof info + 8};
        for (size_t i = 0; i < 3; i++) {
            info.struct_size = sizes[i];
            copy = info;
            EXPECT_INVALID(mlorc_buffer_info(&g_cfg, &g_desc, 0, &info), "struct_size");
            CHECK(memcmp(&info, &copy, sizeof info) == 0);
        }
    }

    /* Wrong struct_size of config and desc. */
    const size_t cfg_sizes[] = {0, sizeof(MlorcConfig) - 1, sizeof(MlorcConfig) + 8};
    for (size_t i = 0; i < 3; i++) {
        MlorcConfig c = g_cfg;
        c.struct_size = cfg_sizes[i];
        PAIR_INVALID(&c, &g_desc, "struct_size", "config.struct_size wrong");
    }
    const size_t desc_sizes[] = {0, sizeof(MlorcTensorDesc) - 1, sizeof(MlorcTensorDesc) + 8};
    for (size_t i = 0; i < 3; i++) {
        MlorcTensorDesc d = g_desc;
        d.struct_size = desc_sizes[i];
        PAIR_INVALID(&g_cfg, &d, "struct_size", "desc.struct_size wrong");
    }

    /* Shapes. */
    {
        MlorcTensorDesc d = g_desc;
        d.rows = 0;
        PAIR_INVALID(&g_cfg, &d, "rows", "rows 0");
        d = g_desc;
        d.cols = 0;
        PAIR_INVALID(&g_cfg, &d, "cols", "cols 0");
        d = g_desc;
        d.rows = SIZE_MAX / 2;
        PAIR_INVALID(&g_cfg, &d, "large", "rows SIZE_MAX/2");
        d = g_desc;
        d.cols = SIZE_MAX / 2;
        d.rows = 3;
        PAIR_INVALID(&g_cfg, &d, "large", "cols SIZE_MAX/2");
        d = g_desc;
        d.rows = SIZE_MAX;
        d.cols = SIZE_MAX;
        PAIR_INVALID(&g_cfg, &d, "large", "rows = cols = SIZE_MAX");
    }

    /* Enums. */
    {
        MlorcConfig c = g_cfg;
        c.algorithm = 7;
        PAIR_INVALID(&c, &g_desc, "algorithm", "algorithm 7");
        c = g_cfg;
        c.layout = 5;
        PAIR_INVALID(&c, &g_desc, "layout", "layout 5");
        c = g_cfg;
        c.bias_correction = 2;
        PAIR_INVALID(&c, &g_desc, "bias_correction", "bias_correction 2");
        c = g_cfg;
        c.stochastic_rounding = 3;
        PAIR_INVALID(&c, &g_desc, "stochastic_rounding", "stochastic_rounding 3");
        c = g_cfg;
        c.rank = 0;
        PAIR_INVALID(&c, &g_desc, "rank", "rank 0");

        MlorcTensorDesc d = g_desc;
        d.param_dtype = 9;
        PAIR_INVALID(&g_cfg, &d, "param_dtype", "param_dtype 9");
        d = g_desc;
        d.grad_dtype = 9;
        PAIR_INVALID(&g_cfg, &d, "grad_dtype", "grad_dtype 9");
        d = g_desc;
        d.device = 3;
        PAIR_INVALID(&g_cfg, &d, "device", "device 3");
        d = g_desc;
        d.device = MLORC_DEVICE_CUDA;
        d.device_ordinal = -1;
        PAIR_INVALID(&g_cfg, &d, "device_ordinal", "device_ordinal -1");
    }

    /* Hyperparameters: NaN, inf, negative; betas must be < 1. */
    {
        const double bad_beta[] = {NAN, INFINITY, -INFINITY, -0.1, 1.0, 1.5};
        const double bad_nonneg[] = {NAN, INFINITY, -INFINITY, -1e-8};
        for (size_t i = 0; i < sizeof bad_beta / sizeof bad_beta[0]; i++) {
            char what[64];
            MlorcConfig c = g_cfg;
            c.beta1 = bad_beta[i];
            snprintf(what, sizeof what, "beta1 = %g", bad_beta[i]);
            PAIR_INVALID(&c, &g_desc, "beta1", what);
            c = g_cfg;
            c.beta2 = bad_beta[i];
            snprintf(what, sizeof what, "beta2 = %g", bad_beta[i]);
            PAIR_INVALID(&c, &g_desc, "beta2", what);
        }
        for (size_t i = 0; i < sizeof bad_nonneg / sizeof bad_nonneg[0]; i++) {
            char what[64];
            MlorcConfig c = g_cfg;
            c.eps = bad_nonneg[i];
            snprintf(what, sizeof what, "eps = %g", bad_nonneg[i]);
            PAIR_INVALID(&c, &g_desc, "eps", what);
            c = g_cfg;
            c.weight_decay = bad_nonneg[i];
            snprintf(what, sizeof what, "weight_decay = %g", bad_nonneg[i]);
            PAIR_INVALID(&c, &g_desc, "weight_decay", what);
        }
    }

    /* Addressable but far too large to allocate: MLORC_ERROR_OUT_OF_MEMORY, out untouched. */
    {
        MlorcTensorDesc d = g_desc;
        d.rows = (size_t)1 << 40;
        d.cols = (size_t)1 << 20;
        const MlorcLayout layouts[] = {MLORC_LAYOUT_FACTORED, MLORC_LAYOUT_DENSE};
        for (size_t i = 0; i < 2; i++) {
            MlorcConfig c = g_cfg;
            c.layout = layouts[i];
            MlorcState *s = NULL;
            EXPECT_ERR(mlorc_state_create(&c, &d, &s), MLORC_ERROR_OUT_OF_MEMORY, "allocate");
            CHECK(s == NULL);
        }
    }

    /* A device this build cannot use. */
    {
        MlorcTensorDesc d = g_desc;
        d.device = MLORC_DEVICE_CUDA;
        d.device_ordinal = 0;
        MlorcState *s = (MlorcState *)(void *)&d; /* any non-NULL value: must stay as is */
        MlorcState *const before = s;
        set_sentinel();
        MlorcStatus st = mlorc_state_create(&g_cfg, &d, &s);
        expect_err2(st, MLORC_ERROR_UNSUPPORTED, MLORC_ERROR_DEVICE_UNAVAILABLE, "CUDA",
                    "mlorc_state_create on CUDA", __FILE__, __LINE__);
        CHECK(s == before);
        if (st == MLORC_OK) mlorc_state_destroy(s);
    }
}

static void check_create_with_buffers(void) {
    float *bufs[6] = {g_lent[0], g_lent[1], g_lent[2], g_lent[3], g_lent[4], g_lent[5]};
    MlorcState *s = NULL;
    EXPECT_INVALID(mlorc_state_create_with_buffers(&g_cfg, &g_desc, NULL, 6, &s), "buffers");
    EXPECT_INVALID(mlorc_state_create_with_buffers(&g_cfg, &g_desc, bufs, 5, &s), "count|buffers given");
    EXPECT_INVALID(mlorc_state_create_with_buffers(&g_cfg, &g_desc, bufs, 7, &s), "count|buffers given");
    EXPECT_INVALID(mlorc_state_create_with_buffers(&g_cfg, &g_desc, bufs, 0, &s), "count|buffers given");
    for (size_t i = 0; i < 6; i++) {
        float *saved = bufs[i];
        bufs[i] = NULL;
        EXPECT_INVALID(mlorc_state_create_with_buffers(&g_cfg, &g_desc, bufs, 6, &s), "NULL");
        bufs[i] = saved;
    }
    {
        float *misaligned = (float *)(void *)((char *)(void *)g_lent[0] + 1);
        float *saved = bufs[0];
        bufs[0] = misaligned;
        EXPECT_INVALID(mlorc_state_create_with_buffers(&g_cfg, &g_desc, bufs, 6, &s), "align");
        bufs[0] = saved;
    }
    CHECK(s == NULL);
}

/* Errors on a live state: each must change nothing. `twin` receives only the valid calls, so at
 * the end a valid step on both must give bit-identical parameters and states. */
static void check_state_functions(void) {
    const size_t n = ROWS * COLS;
    MlorcState *s = NULL, *twin = NULL;
    REQUIRE_OK(mlorc_state_create(&g_cfg, &g_desc, &s));
    REQUIRE_OK(mlorc_state_create(&g_cfg, &g_desc, &twin));
    float w[48], w_twin[48], g[48], w_copy[48];
    Rng rng = {3};
    for (size_t i = 0; i < n; i++) {
        w[i] = w_twin[i] = (float)rng_range(&rng, -1, 1);
        g[i] = (float)rng_range(&rng, -1, 1);
    }
    MlorcStepOptions opt;
    REQUIRE_OK(mlorc_step_options_init(&opt, 1e-2));
    REQUIRE_OK(mlorc_step(s, w, g, &opt));
    REQUIRE_OK(mlorc_step(twin, w_twin, g, &opt));
    size_t ref_size = 0;
    unsigned char *ref = save_state(s, &ref_size);
    memcpy(w_copy, w, sizeof w);

    /* mlorc_step */
    EXPECT_INVALID(mlorc_step(NULL, w, g, &opt), "state");
    EXPECT_INVALID(mlorc_step(s, NULL, g, &opt), "param");
    EXPECT_INVALID(mlorc_step(s, w, NULL, &opt), "grad");
    EXPECT_INVALID(mlorc_step(s, w, g, NULL), "options");
    /* Elements are read and written in place: a pointer off their alignment is refused. */
    EXPECT_INVALID(mlorc_step(s, (char *)(void *)w + 2, g, &opt), "not aligned");
    EXPECT_INVALID(mlorc_step(s, w, (const char *)(const void *)g + 1, &opt), "not aligned");
    {
        const size_t sizes[] = {0, sizeof opt - 1, sizeof opt + 8};
        for (size_t i = 0; i < 3; i++) {
            MlorcStepOptions o = opt;
            o.struct_size = sizes[i];
            EXPECT_INVALID(mlorc_step(s, w, g, &o), "struct_size");
        }
        const double bad_lr[] = {NAN, -1e-3, INFINITY, -INFINITY};
        for (size_t i = 0; i < sizeof bad_lr / sizeof bad_lr[0]; i++) {
            MlorcStepOptions o = opt;
            o.lr = bad_lr[i];
            EXPECT_INVALID(mlorc_step(s, w, g, &o), "learning rate");
        }
        const float nan_f = NAN, neg_f = -1e-3f, zero_f = 0.0f, inf_f = INFINITY;
        MlorcStepOptions o = opt;
        o.lr_ptr = &nan_f;
        EXPECT_INVALID(mlorc_step(s, w, g, &o), "learning rate");
        o.lr_ptr = &neg_f;
        EXPECT_INVALID(mlorc_step(s, w, g, &o), "learning rate");
        o = opt;
        o.grad_scale = &nan_f;
        EXPECT_INVALID(mlorc_step(s, w, g, &o), "grad_scale");
        o.grad_scale = &zero_f;
        EXPECT_INVALID(mlorc_step(s, w, g, &o), "grad_scale");
        o.grad_scale = &neg_f;
        EXPECT_INVALID(mlorc_step(s, w, g, &o), "grad_scale");
        o.grad_scale = &inf_f;
        EXPECT_INVALID(mlorc_step(s, w, g, &o), "grad_scale");
    }
    CHECK(memcmp(w, w_copy, sizeof w) == 0);

    /* Counters and queries: NULL state, NULL out. */
    uint64_t count = 77;
    size_t bytes = 77;
    MlorcLayout layout = 77;
    MlorcConfig cfg;
    memset(&cfg, 0x5A, sizeof cfg);
    MlorcConfig cfg_copy = cfg;
    EXPECT_INVALID(mlorc_state_step_count(NULL, &count), "state");
    EXPECT_INVALID(mlorc_state_step_count(s, NULL), "count");
    EXPECT_INVALID(mlorc_state_set_step_count(NULL, 5), "state");
    EXPECT_INVALID(mlorc_state_memory_bytes(NULL, &bytes), "state");
    EXPECT_INVALID(mlorc_state_memory_bytes(s, NULL), "bytes");
    EXPECT_INVALID(mlorc_state_layout(NULL, &layout), "state");
    EXPECT_INVALID(mlorc_state_layout(s, NULL), "layout");
    EXPECT_INVALID(mlorc_state_get_config(NULL, &cfg), "state");
    EXPECT_INVALID(mlorc_state_get_config(s, NULL), "config");
    EXPECT_INVALID(mlorc_state_save_size(NULL, &bytes), "state");
    EXPECT_INVALID(mlorc_state_save_size(s, NULL), "size");
    CHECK_INT_EQ(count, 77);
    CHECK_INT_EQ(bytes, 77);
    CHECK_INT_EQ(layout, 77);
    CHECK(memcmp(&cfg, &cfg_copy, sizeof cfg) == 0);

    /* set_config: NULL, invalid values, structural changes. */
    {
        MlorcConfig c;
        REQUIRE_OK(mlorc_state_get_config(s, &c));
        EXPECT_INVALID(mlorc_state_set_config(NULL, &c), "state");
        EXPECT_INVALID(mlorc_state_set_config(s, NULL), "config");
        MlorcConfig b = c;
        b.struct_size = sizeof b + 8;
        EXPECT_INVALID(mlorc_state_set_config(s, &b), "struct_size");
        b = c;
        b.beta1 = NAN;
        EXPECT_INVALID(mlorc_state_set_config(s, &b), "beta1");
        b = c;
        b.beta2 = 1.0;
        EXPECT_INVALID(mlorc_state_set_config(s, &b), "beta2");
        b = c;
        b.eps = -1.0;
        EXPECT_INVALID(mlorc_state_set_config(s, &b), "eps");
        b = c;
        b.weight_decay = NAN;
        EXPECT_INVALID(mlorc_state_set_config(s, &b), "weight_decay");
        b = c;
        b.rank = 0;
        EXPECT_INVALID(mlorc_state_set_config(s, &b), "rank");
        b = c;
        b.rank = c.rank + 1;
        EXPECT_INVALID(mlorc_state_set_config(s, &b), "rank");
        b = c;
        b.oversampling = c.oversampling + 2;
        EXPECT_INVALID(mlorc_state_set_config(s, &b), "oversampling");
        b = c;
        b.algorithm = MLORC_LION;
        EXPECT_INVALID(mlorc_state_set_config(s, &b), "algorithm");
        b = c;
        b.layout = MLORC_LAYOUT_DENSE;
        EXPECT_INVALID(mlorc_state_set_config(s, &b), "layout");
        b = c;
        b.algorithm = 7;
        EXPECT_INVALID(mlorc_state_set_config(s, &b), "algorithm");
    }

    /* read_buffer / write_buffer. */
    {
        float buf[64];
        for (size_t i = 0; i < 64; i++) buf[i] = 1234.5f;
        const size_t u_len = ROWS * 2; /* exp_avg.u: rows x r, r = 2 */
        EXPECT_INVALID(mlorc_state_read_buffer(NULL, "exp_avg.u", buf, u_len), "state");
        EXPECT_INVALID(mlorc_state_read_buffer(s, NULL, buf, u_len), "name");
        EXPECT_INVALID(mlorc_state_read_buffer(s, "exp_avg.u", NULL, u_len), "dst");
        EXPECT_INVALID(mlorc_state_read_buffer(s, "no_such_buffer", buf, u_len), "no_such_buffer");
        EXPECT_INVALID(mlorc_state_read_buffer(s, "exp_avg", buf, u_len), "exp_avg");
        EXPECT_INVALID(mlorc_state_read_buffer(s, "", buf, u_len), "name");
        EXPECT_INVALID(mlorc_state_read_buffer(s, "exp_avg.u", buf, u_len - 1), "count");
        EXPECT_INVALID(mlorc_state_read_buffer(s, "exp_avg.u", buf, u_len + 1), "count");
        EXPECT_INVALID(mlorc_state_read_buffer(s, "exp_avg.u", buf, 0), "count");
        for (size_t i = 0; i < 64; i++) CHECK(buf[i] == 1234.5f);

        EXPECT_INVALID(mlorc_state_write_buffer(NULL, "exp_avg.u", buf, u_len), "state");
        EXPECT_INVALID(mlorc_state_write_buffer(s, NULL, buf, u_len), "name");
        EXPECT_INVALID(mlorc_state_write_buffer(s, "exp_avg.u", NULL, u_len), "src");
        EXPECT_INVALID(mlorc_state_write_buffer(s, "no_such_buffer", buf, u_len), "no_such_buffer");
        EXPECT_INVALID(mlorc_state_write_buffer(s, "exp_avg.u", buf, u_len - 1), "count|given");
        EXPECT_INVALID(mlorc_state_write_buffer(s, "exp_avg.u", buf, u_len + 1), "count|given");
        EXPECT_INVALID(mlorc_state_write_buffer(s, "exp_avg.s", buf, 0), "count|given");
    }

    /* save / load. */
    {
        size_t need = 0;
        REQUIRE_OK(mlorc_state_save_size(s, &need));
        unsigned char *dst = (unsigned char *)xcalloc(need, 1);
        size_t written = 77;
        EXPECT_INVALID(mlorc_state_save(NULL, dst, need, &written), "state");
        EXPECT_INVALID(mlorc_state_save(s, NULL, need, &written), "dst");
        EXPECT_INVALID(mlorc_state_save(s, dst, need, NULL), "written");
        memset(dst, 0xEE, need);
        EXPECT_INVALID(mlorc_state_save(s, dst, need - 1, &written), "capacity|needed");
        EXPECT_INVALID(mlorc_state_save(s, dst, 0, &written), "capacity|needed");
        CHECK_INT_EQ(written, 77);
        int untouched = 1;
        for (size_t i = 0; i < need; i++) untouched &= dst[i] == 0xEE;
        CHECK(untouched); /* nothing written on failure */

        EXPECT_INVALID(mlorc_state_load(NULL, ref, ref_size), "state");
        EXPECT_INVALID(mlorc_state_load(s, NULL, ref_size), "src");
        free(dst);
    }

    /* After all that, s equals twin: same bytes, and the next valid step is the same. */
    {
        size_t now_size = 0;
        unsigned char *now = save_state(s, &now_size);
        CHECK(now_size == ref_size && memcmp(now, ref, ref_size) == 0);
        free(now);
        CHECK(memcmp(w, w_twin, sizeof w) == 0);
        CHECK_OK(mlorc_step(s, w, g, &opt));
        CHECK_OK(mlorc_step(twin, w_twin, g, &opt));
        CHECK(memcmp(w, w_twin, sizeof w) == 0);
        CHECK(memcmp(w, w_copy, sizeof w) != 0); /* and it did step */
        uint64_t c1 = 0, c2 = 0;
        CHECK_OK(mlorc_state_step_count(s, &c1));
        CHECK_OK(mlorc_state_step_count(twin, &c2));
        CHECK_INT_EQ(c1, 2);
        CHECK_INT_EQ(c2, 2);
    }

    /* Successful calls leave the message alone. */
    set_sentinel();
    CHECK_OK(mlorc_state_step_count(s, &count));
    CHECK_STR_EQ(mlorc_last_error_message(), g_sentinel);

    mlorc_state_destroy(s);
    mlorc_state_destroy(twin);
    free(ref);
}

int main(void) {
    REQUIRE_OK(mlorc_config_init(&g_cfg, MLORC_ADAMW));
    g_cfg.layout = MLORC_LAYOUT_FACTORED;
    g_cfg.rank = 2;
    REQUIRE_OK(mlorc_tensor_desc_init(&g_desc, ROWS, COLS, MLORC_F32));

    check_library_functions();
    check_config_and_desc();
    check_create_with_buffers();
    check_state_functions();
    printf("test_errors: %d error paths checked\n", g_checked);
    return test_exit_code("test_errors");
}
