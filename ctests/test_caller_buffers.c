/* Caller-owned state buffers: names and shapes before creation, bit-identical steps against a
 * state with library buffers, the lent buffers hold the state, and the memory formulas. */
#include "test_util.h"

typedef struct {
    const char *name;
    MlorcAlgorithm algorithm;
    MlorcLayout layout; /* requested */
    MlorcLayout expect; /* resolved */
    uint32_t rank;
    size_t rows, cols;
    MlorcDtype dtype;
} Case;

static size_t expected_bytes(const Case *c, size_t r) {
    size_t moments = c->algorithm == MLORC_ADAMW ? 2 : 1;
    if (c->expect == MLORC_LAYOUT_DENSE) return c->rows * c->cols * 4 * moments;
    return moments * (c->rows + c->cols + 1) * r * 4;
}

static void run(const Case *c) {
    const size_t n = c->rows * c->cols;
    const size_t r = c->rank < c->rows ? (c->rank < c->cols ? c->rank : c->cols)
                                       : (c->rows < c->cols ? c->rows : c->cols);
    MlorcConfig cfg;
    REQUIRE_OK(mlorc_config_init(&cfg, c->algorithm));
    cfg.layout = c->layout;
    cfg.rank = c->rank;
    MlorcTensorDesc desc;
    REQUIRE_OK(mlorc_tensor_desc_init(&desc, c->rows, c->cols, c->dtype));

    MlorcLayout resolved = 99;
    REQUIRE_OK(mlorc_resolve_layout(&cfg, &desc, &resolved));
    CHECK_INT_EQ(resolved, c->expect);

    /* Expected names and shapes. */
    const char *names[6];
    size_t shapes[6][2];
    size_t expect_count = 0;
    const char *moments[2] = {"exp_avg", "exp_avg_sq"};
    size_t n_moments = c->algorithm == MLORC_ADAMW ? 2 : 1;
    static char name_store[6][32];
    for (size_t k = 0; k < n_moments; k++) {
        if (c->expect == MLORC_LAYOUT_DENSE) {
            names[expect_count] = moments[k];
            shapes[expect_count][0] = c->rows;
            shapes[expect_count][1] = c->cols;
            expect_count++;
        } else {
            const char *suffix[3] = {"u", "s", "v"};
            const size_t rows_of[3] = {c->rows, 1, c->cols};
            for (size_t f = 0; f < 3; f++) {
                snprintf(name_store[expect_count], sizeof name_store[0], "%s.%s", moments[k], suffix[f]);
                names[expect_count] = name_store[expect_count];
                shapes[expect_count][0] = rows_of[f];
                shapes[expect_count][1] = r;
                expect_count++;
            }
        }
    }

    size_t count = 0;
    REQUIRE_OK(mlorc_buffer_count(&cfg, &desc, &count));
    CHECK_INT_EQ(count, expect_count);
    REQUIRE(count == expect_count);
    float *lent[6] = {NULL, NULL, NULL, NULL, NULL, NULL};
    size_t lens[6] = {0, 0, 0, 0, 0, 0};
    size_t total = 0;
    for (size_t i = 0; i < count; i++) {
        MlorcBufferInfo info;
        memset(&info, 0, sizeof info);
        info.struct_size = sizeof info;
        REQUIRE_OK(mlorc_buffer_info(&cfg, &desc, i, &info));
        CHECK_STR_EQ(info.name, names[i]);
        CHECK_INT_EQ(info.rows, shapes[i][0]);
        CHECK_INT_EQ(info.cols, shapes[i][1]);
        CHECK_INT_EQ(info.dtype, MLORC_F32);
        CHECK_INT_EQ(info.bytes, info.rows * info.cols * 4);
        CHECK_INT_EQ(info.struct_size, sizeof info);
        lens[i] = info.rows * info.cols;
        total += info.bytes;
        lent[i] = (float *)xcalloc(lens[i], sizeof(float)); /* malloc'd and zeroed */
    }

    size_t required = 0;
    REQUIRE_OK(mlorc_state_bytes_required(&cfg, &desc, &required));
    CHECK_INT_EQ(required, expected_bytes(c, r));
    CHECK_INT_EQ(total, required);

    MlorcState *own = NULL, *borrowed = NULL;
    REQUIRE_OK(mlorc_state_create(&cfg, &desc, &own));
    REQUIRE_OK(mlorc_state_create_with_buffers(&cfg, &desc, lent, count, &borrowed));
    size_t mem_own = 0, mem_borrowed = 0;
    CHECK_OK(mlorc_state_memory_bytes(own, &mem_own));
    CHECK_OK(mlorc_state_memory_bytes(borrowed, &mem_borrowed));
    CHECK_INT_EQ(mem_own, required);
    CHECK_INT_EQ(mem_borrowed, required);
    MlorcLayout l1 = 99, l2 = 99;
    CHECK_OK(mlorc_state_layout(own, &l1));
    CHECK_OK(mlorc_state_layout(borrowed, &l2));
    CHECK_INT_EQ(l1, c->expect);
    CHECK_INT_EQ(l2, c->expect);

    /* Parameters in the descriptor's dtype (f32 or bf16), the same for both states. */
    const size_t elem = c->dtype == MLORC_F32 ? 4 : 2;
    unsigned char *w1 = (unsigned char *)xcalloc(n, elem);
    unsigned char *w2 = (unsigned char *)xcalloc(n, elem);
    unsigned char *g = (unsigned char *)xcalloc(n, elem);
    Rng rng = {c->rows * 131 + c->cols};
    for (size_t i = 0; i < n; i++) {
        float x = (float)rng_range(&rng, -1, 1);
        if (elem == 4) memcpy(w1 + 4 * i, &x, 4);
        else {
            uint16_t h = f32_to_bf16(x);
            memcpy(w1 + 2 * i, &h, 2);
        }
    }
    memcpy(w2, w1, n * elem);

    MlorcStepOptions opt;
    REQUIRE_OK(mlorc_step_options_init(&opt, 1e-2));
    for (int t = 0; t < 6; t++) {
        for (size_t i = 0; i < n; i++) {
            float x = (float)rng_range(&rng, -1, 1);
            if (elem == 4) memcpy(g + 4 * i, &x, 4);
            else {
                uint16_t h = f32_to_bf16(x);
                memcpy(g + 2 * i, &h, 2);
            }
        }
        CHECK_OK(mlorc_step(own, w1, g, &opt));
        CHECK_OK(mlorc_step(borrowed, w2, g, &opt));
        CHECK(memcmp(w1, w2, n * elem) == 0);
    }

    /* The lent buffers are the state: equal to read_buffer of both states. */
    int nonzero = 0;
    for (size_t i = 0; i < count; i++) {
        float *a = (float *)xcalloc(lens[i], sizeof(float));
        float *b = (float *)xcalloc(lens[i], sizeof(float));
        CHECK_OK(mlorc_state_read_buffer(own, names[i], a, lens[i]));
        CHECK_OK(mlorc_state_read_buffer(borrowed, names[i], b, lens[i]));
        CHECK(memcmp(a, lent[i], lens[i] * sizeof(float)) == 0);
        CHECK(memcmp(b, lent[i], lens[i] * sizeof(float)) == 0);
        for (size_t j = 0; j < lens[i]; j++) nonzero |= lent[i][j] != 0.0f;
        free(a);
        free(b);
    }
    CHECK(nonzero);

    /* Same checkpoint bytes. */
    size_t s1 = 0, s2 = 0;
    unsigned char *k1 = save_state(own, &s1);
    unsigned char *k2 = save_state(borrowed, &s2);
    CHECK(s1 == s2 && memcmp(k1, k2, s1) == 0);

    /* write_buffer on a borrowing state writes into the caller's memory. */
    {
        float *x = (float *)xcalloc(lens[0], sizeof(float));
        for (size_t j = 0; j < lens[0]; j++) x[j] = (float)j + 0.5f;
        CHECK_OK(mlorc_state_write_buffer(borrowed, names[0], x, lens[0]));
        CHECK(memcmp(x, lent[0], lens[0] * sizeof(float)) == 0);
        free(x);
    }
    /* load on a borrowing state fills the caller's memory too. */
    CHECK_OK(mlorc_state_load(borrowed, k1, s1));
    for (size_t i = 0; i < count; i++) {
        float *a = (float *)xcalloc(lens[i], sizeof(float));
        CHECK_OK(mlorc_state_read_buffer(own, names[i], a, lens[i]));
        CHECK(memcmp(a, lent[i], lens[i] * sizeof(float)) == 0);
        free(a);
    }

    /* Destroying the borrowing state leaves the caller's buffers alone (valgrind checks that
     * they are not freed: they are freed below). */
    mlorc_state_destroy(borrowed);
    mlorc_state_destroy(own);
    printf("  %-40s %2zu buffers, %6zu bytes of state (dense would be %zu)\n", c->name, count,
           required, n * 4 * n_moments);
    for (size_t i = 0; i < count; i++) free(lent[i]);
    free(w1);
    free(w2);
    free(g);
    free(k1);
    free(k2);
}

int main(void) {
    const Case cases[] = {
        {"adamw factored 30x20 r4", MLORC_ADAMW, MLORC_LAYOUT_FACTORED, MLORC_LAYOUT_FACTORED, 4, 30, 20, MLORC_F32},
        {"lion factored 30x20 r4", MLORC_LION, MLORC_LAYOUT_FACTORED, MLORC_LAYOUT_FACTORED, 4, 30, 20, MLORC_F32},
        {"adamw auto 64x48 r3 (factored)", MLORC_ADAMW, MLORC_LAYOUT_AUTO, MLORC_LAYOUT_FACTORED, 3, 64, 48, MLORC_F32},
        {"adamw factored 5x40 r8 (r clamped to 5)", MLORC_ADAMW, MLORC_LAYOUT_FACTORED, MLORC_LAYOUT_FACTORED, 8, 5, 40, MLORC_F32},
        {"adamw dense 12x9", MLORC_ADAMW, MLORC_LAYOUT_DENSE, MLORC_LAYOUT_DENSE, 4, 12, 9, MLORC_F32},
        {"lion dense 12x9", MLORC_LION, MLORC_LAYOUT_DENSE, MLORC_LAYOUT_DENSE, 4, 12, 9, MLORC_F32},
        {"adamw auto 6x5 r4 (dense: too small)", MLORC_ADAMW, MLORC_LAYOUT_AUTO, MLORC_LAYOUT_DENSE, 4, 6, 5, MLORC_F32},
        {"adamw auto 1x50 (bias-like, dense)", MLORC_ADAMW, MLORC_LAYOUT_AUTO, MLORC_LAYOUT_DENSE, 4, 1, 50, MLORC_F32},
        {"adamw factored 30x20 r4 bf16", MLORC_ADAMW, MLORC_LAYOUT_FACTORED, MLORC_LAYOUT_FACTORED, 4, 30, 20, MLORC_BF16},
        {"lion dense 12x9 bf16", MLORC_LION, MLORC_LAYOUT_DENSE, MLORC_LAYOUT_DENSE, 4, 12, 9, MLORC_BF16},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run(&cases[i]);
    return test_exit_code("test_caller_buffers");
}
