/* Checkpoints: save/load continue bit-identically; read_buffer/write_buffer round trip; the
 * step count; corrupt bytes are rejected with MLORC_ERROR_CORRUPT_CHECKPOINT and a valid
 * checkpoint of another shape with MLORC_ERROR_INVALID_ARGUMENT, the target state unchanged. */
#include "test_util.h"

static MlorcState *make_state(MlorcAlgorithm algorithm, MlorcLayout layout, uint32_t rank,
                              size_t rows, size_t cols) {
    MlorcConfig cfg;
    REQUIRE_OK(mlorc_config_init(&cfg, algorithm));
    cfg.layout = layout;
    cfg.rank = rank;
    cfg.seed = 1234;
    MlorcTensorDesc desc;
    REQUIRE_OK(mlorc_tensor_desc_init(&desc, rows, cols, MLORC_F32));
    MlorcState *s = NULL;
    REQUIRE_OK(mlorc_state_create(&cfg, &desc, &s));
    return s;
}

static void fill(Rng *rng, float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = (float)rng_range(rng, -1.0, 1.0);
}

/* state, saved bytes before and after `call`, must be the same. */
static int same_bytes(const MlorcState *s, const unsigned char *before, size_t before_size) {
    size_t size = 0;
    unsigned char *now = save_state(s, &size);
    int same = size == before_size && memcmp(now, before, size) == 0;
    free(now);
    return same;
}

static void save_load_continue(MlorcAlgorithm algorithm, MlorcLayout layout, const char *name) {
    const size_t rows = 20, cols = 13, n = rows * cols;
    Rng rng = {42};
    MlorcState *a = make_state(algorithm, layout, 3, rows, cols);
    float *w = (float *)xcalloc(n, sizeof(float));
    float *g = (float *)xcalloc(n, sizeof(float));
    fill(&rng, w, n);
    MlorcStepOptions opt;
    REQUIRE_OK(mlorc_step_options_init(&opt, 1e-2));
    for (int t = 0; t < 4; t++) {
        fill(&rng, g, n);
        REQUIRE_OK(mlorc_step(a, w, g, &opt));
    }

    size_t need = 0, written = 0;
    REQUIRE_OK(mlorc_state_save_size(a, &need));
    CHECK(need > 0);
    unsigned char *ck = (unsigned char *)xcalloc(need + 16, 1);
    CHECK_OK(mlorc_state_save(a, ck, need + 16, &written)); /* larger capacity is fine */
    CHECK_INT_EQ(written, need);

    /* Fresh state with a different seed and hyperparameters: load replaces the configuration. */
    MlorcConfig cfg;
    REQUIRE_OK(mlorc_config_init(&cfg, algorithm));
    cfg.layout = layout;
    cfg.rank = 3;
    cfg.seed = 999;
    cfg.beta1 = 0.5;
    MlorcTensorDesc desc;
    REQUIRE_OK(mlorc_tensor_desc_init(&desc, rows, cols, MLORC_F32));
    MlorcState *b = NULL;
    REQUIRE_OK(mlorc_state_create(&cfg, &desc, &b));
    CHECK_OK(mlorc_state_load(b, ck, written));

    uint64_t ca = 0, cb = 0;
    CHECK_OK(mlorc_state_step_count(a, &ca));
    CHECK_OK(mlorc_state_step_count(b, &cb));
    CHECK_INT_EQ(ca, 4);
    CHECK_INT_EQ(cb, 4);
    MlorcConfig got;
    CHECK_OK(mlorc_state_get_config(b, &got));
    CHECK(got.beta1 == 0.9 || algorithm == MLORC_LION);
    CHECK_INT_EQ(got.seed, 1234);
    CHECK(same_bytes(b, ck, written));

    /* Continue both: bit-identical parameters. */
    float *w2 = (float *)xcalloc(n, sizeof(float));
    memcpy(w2, w, n * sizeof(float));
    for (int t = 0; t < 5; t++) {
        fill(&rng, g, n);
        CHECK_OK(mlorc_step(a, w, g, &opt));
        CHECK_OK(mlorc_step(b, w2, g, &opt));
    }
    CHECK(memcmp(w, w2, n * sizeof(float)) == 0);
    size_t sa = 0, sb = 0;
    unsigned char *ka = save_state(a, &sa);
    unsigned char *kb = save_state(b, &sb);
    CHECK(sa == sb && memcmp(ka, kb, sa) == 0);
    printf("  %-28s checkpoint %zu bytes: save/load/continue bit-identical\n", name, need);

    /* read_buffer / write_buffer round trip on every buffer. */
    MlorcConfig ac;
    REQUIRE_OK(mlorc_state_get_config(a, &ac));
    size_t count = 0;
    REQUIRE_OK(mlorc_buffer_count(&ac, &desc, &count));
    for (size_t i = 0; i < count; i++) {
        MlorcBufferInfo info;
        memset(&info, 0, sizeof info);
        info.struct_size = sizeof info;
        REQUIRE_OK(mlorc_buffer_info(&ac, &desc, i, &info));
        size_t len = info.rows * info.cols;
        float *x = (float *)xcalloc(len, sizeof(float));
        float *y = (float *)xcalloc(len, sizeof(float));
        CHECK_OK(mlorc_state_read_buffer(a, info.name, x, len));
        /* write something else into b, then the original back, and read it. */
        fill(&rng, y, len);
        CHECK_OK(mlorc_state_write_buffer(b, info.name, y, len));
        float *z = (float *)xcalloc(len, sizeof(float));
        CHECK_OK(mlorc_state_read_buffer(b, info.name, z, len));
        CHECK(memcmp(y, z, len * sizeof(float)) == 0);
        CHECK_OK(mlorc_state_write_buffer(b, info.name, x, len));
        free(x);
        free(y);
        free(z);
    }
    /* b holds a's buffers again, and the same step count and config: same bytes as a. */
    free(kb);
    kb = save_state(b, &sb);
    CHECK(sa == sb && memcmp(ka, kb, sa) == 0);

    /* Step count get/set. */
    CHECK_OK(mlorc_state_set_step_count(b, 1000));
    CHECK_OK(mlorc_state_step_count(b, &cb));
    CHECK_INT_EQ(cb, 1000);
    CHECK_OK(mlorc_state_set_step_count(b, 0));
    CHECK_OK(mlorc_state_step_count(b, &cb));
    CHECK_INT_EQ(cb, 0);

    mlorc_state_destroy(a);
    mlorc_state_destroy(b);
    free(ka);
    free(kb);
    free(ck);
    free(w);
    free(w2);
    free(g);
}

static void corrupt_checkpoints(MlorcAlgorithm algorithm, MlorcLayout layout, const char *name) {
    const size_t rows = 9, cols = 6, n = rows * cols;
    Rng rng = {7};
    MlorcState *src = make_state(algorithm, layout, 2, rows, cols);
    MlorcState *dst = make_state(algorithm, layout, 2, rows, cols);
    float *w = (float *)xcalloc(n, sizeof(float));
    float *g = (float *)xcalloc(n, sizeof(float));
    MlorcStepOptions opt;
    REQUIRE_OK(mlorc_step_options_init(&opt, 1e-2));
    fill(&rng, w, n);
    for (int t = 0; t < 3; t++) {
        fill(&rng, g, n);
        REQUIRE_OK(mlorc_step(src, w, g, &opt));
    }
    fill(&rng, g, n);
    REQUIRE_OK(mlorc_step(dst, w, g, &opt)); /* dst differs from src */

    size_t size = 0, dst_size = 0;
    unsigned char *good = save_state(src, &size);
    unsigned char *dst_bytes = save_state(dst, &dst_size);
    unsigned char *bad = (unsigned char *)xcalloc(size + 8, 1);

    size_t rejected = 0, wrong_code = 0;
    /* Every byte position, two kinds of flips: the lowest bit and the whole byte. */
    for (size_t pos = 0; pos < size; pos++) {
        for (int kind = 0; kind < 2; kind++) {
            memcpy(bad, good, size);
            bad[pos] ^= kind == 0 ? 0x01 : 0xFF;
            MlorcStatus st = mlorc_state_load(dst, bad, size);
            if (st == MLORC_ERROR_CORRUPT_CHECKPOINT) {
                rejected++;
            } else {
                wrong_code++;
                if (wrong_code <= 5)
                    fprintf(stderr, "%s:%d: %s: byte %zu ^ 0x%02x of %zu: %s (%s)\n", __FILE__,
                            __LINE__, name, pos, kind == 0 ? 0x01 : 0xFF, size,
                            mlorc_status_string(st), mlorc_last_error_message());
            }
        }
    }
    CHECK_INT_EQ(wrong_code, 0);
    CHECK(same_bytes(dst, dst_bytes, dst_size));
    CHECK(strlen(mlorc_last_error_message()) > 0);

    /* Truncated at every length, and extended by trailing bytes. */
    size_t trunc_wrong = 0;
    for (size_t len = 0; len < size; len++) {
        memcpy(bad, good, size);
        MlorcStatus st = mlorc_state_load(dst, bad, len);
        if (st != MLORC_ERROR_CORRUPT_CHECKPOINT) {
            /* a zero-length load may be refused as an invalid argument too (NULL-like input) */
            if (!(len == 0 && st == MLORC_ERROR_INVALID_ARGUMENT)) {
                trunc_wrong++;
                if (trunc_wrong <= 3)
                    fprintf(stderr, "%s:%d: %s: truncated to %zu: %s\n", __FILE__, __LINE__, name,
                            len, mlorc_status_string(st));
            }
        }
    }
    CHECK_INT_EQ(trunc_wrong, 0);
    memcpy(bad, good, size);
    memset(bad + size, 0, 8);
    CHECK_INT_EQ(mlorc_state_load(dst, bad, size + 8), MLORC_ERROR_CORRUPT_CHECKPOINT);

    /* Wrong magic. */
    memcpy(bad, good, size);
    memcpy(bad, "NOTMLORC", 8);
    CHECK_INT_EQ(mlorc_state_load(dst, bad, size), MLORC_ERROR_CORRUPT_CHECKPOINT);
    CHECK(strlen(mlorc_last_error_message()) > 0);
    CHECK(same_bytes(dst, dst_bytes, dst_size));

    /* The intact checkpoint still loads. */
    CHECK_OK(mlorc_state_load(dst, good, size));
    CHECK(same_bytes(dst, good, size));
    printf("  %-28s %zu-byte checkpoint: %zu flipped and %zu truncated copies rejected\n", name,
           size, rejected, size);

    mlorc_state_destroy(src);
    mlorc_state_destroy(dst);
    free(good);
    free(dst_bytes);
    free(bad);
    free(w);
    free(g);
}

/* A valid checkpoint that does not fit the target state. */
static void other_shape(void) {
    MlorcState *target = make_state(MLORC_ADAMW, MLORC_LAYOUT_FACTORED, 2, 9, 6);
    size_t tsize = 0;
    unsigned char *tbytes = save_state(target, &tsize);
    struct {
        const char *what;
        MlorcAlgorithm algorithm;
        MlorcLayout layout;
        uint32_t rank;
        size_t rows, cols;
    } others[] = {
        {"rows", MLORC_ADAMW, MLORC_LAYOUT_FACTORED, 2, 10, 6},
        {"cols", MLORC_ADAMW, MLORC_LAYOUT_FACTORED, 2, 9, 7},
        {"transposed", MLORC_ADAMW, MLORC_LAYOUT_FACTORED, 2, 6, 9},
        {"rank", MLORC_ADAMW, MLORC_LAYOUT_FACTORED, 3, 9, 6},
        {"algorithm", MLORC_LION, MLORC_LAYOUT_FACTORED, 2, 9, 6},
        {"layout", MLORC_ADAMW, MLORC_LAYOUT_DENSE, 2, 9, 6},
    };
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
        MlorcState *o = make_state(others[i].algorithm, others[i].layout, others[i].rank,
                                   others[i].rows, others[i].cols);
        size_t osize = 0;
        unsigned char *obytes = save_state(o, &osize);
        MlorcStatus st = mlorc_state_load(target, obytes, osize);
        if (st != MLORC_ERROR_INVALID_ARGUMENT)
            fprintf(stderr, "%s:%d: other %s: got %s (%s)\n", __FILE__, __LINE__, others[i].what,
                    mlorc_status_string(st), mlorc_last_error_message());
        CHECK_INT_EQ(st, MLORC_ERROR_INVALID_ARGUMENT);
        CHECK(strlen(mlorc_last_error_message()) > 0);
        CHECK(same_bytes(target, tbytes, tsize));
        mlorc_state_destroy(o);
        free(obytes);
    }
    printf("  checkpoints of another shape/rank/algorithm/layout rejected\n");
    mlorc_state_destroy(target);
    free(tbytes);
}

int main(void) {
    save_load_continue(MLORC_ADAMW, MLORC_LAYOUT_FACTORED, "adamw factored 20x13 r3");
    save_load_continue(MLORC_LION, MLORC_LAYOUT_FACTORED, "lion factored 20x13 r3");
    save_load_continue(MLORC_ADAMW, MLORC_LAYOUT_DENSE, "adamw dense 20x13");
    save_load_continue(MLORC_LION, MLORC_LAYOUT_DENSE, "lion dense 20x13");
    corrupt_checkpoints(MLORC_ADAMW, MLORC_LAYOUT_FACTORED, "adamw factored 9x6 r2");
    corrupt_checkpoints(MLORC_LION, MLORC_LAYOUT_DENSE, "lion dense 9x6");
    other_shape();
    return test_exit_code("test_checkpoint");
}
