/* mlorc_step_many: the bits of one mlorc_step per state, every check before anything changes,
 * and its error paths (NULL arrays, a state listed twice, NULL options, count 0). */
#include "test_util.h"

#define COUNT 7
static const size_t SHAPES[COUNT][2] = {{1, 300}, {768, 256}, {256, 1024}, {3, 5000}, {1, 64}, {600, 700}, {5, 5}};

typedef struct {
    MlorcState *states[COUNT];
    float *params[COUNT];
    float *grads[COUNT];
} Model;

static void model_init(Model *m, MlorcAlgorithm algorithm, uint64_t seed) {
    MlorcConfig cfg;
    REQUIRE_OK(mlorc_config_init(&cfg, algorithm));
    Rng rng = {seed};
    for (size_t i = 0; i < COUNT; i++) {
        size_t n = SHAPES[i][0] * SHAPES[i][1];
        MlorcTensorDesc desc;
        REQUIRE_OK(mlorc_tensor_desc_init(&desc, SHAPES[i][0], SHAPES[i][1], MLORC_F32));
        REQUIRE_OK(mlorc_state_create(&cfg, &desc, &m->states[i]));
        m->params[i] = xcalloc(n, sizeof(float));
        m->grads[i] = xcalloc(n, sizeof(float));
        for (size_t j = 0; j < n; j++) m->params[i][j] = (float)rng_signed(&rng, 0.01, 0.1);
    }
}

static void new_gradients(Model *m, uint64_t seed) {
    Rng rng = {seed};
    for (size_t i = 0; i < COUNT; i++)
        for (size_t j = 0; j < SHAPES[i][0] * SHAPES[i][1]; j++) m->grads[i][j] = (float)rng_signed(&rng, 1e-4, 1e-2);
}

static void model_free(Model *m) {
    for (size_t i = 0; i < COUNT; i++) {
        mlorc_state_destroy(m->states[i]);
        free(m->params[i]);
        free(m->grads[i]);
    }
}

/* Whether two models hold the same bits: params and whole saved states. */
static int same(const Model *a, const Model *b) {
    for (size_t i = 0; i < COUNT; i++) {
        size_t n = SHAPES[i][0] * SHAPES[i][1];
        if (memcmp(a->params[i], b->params[i], n * sizeof(float)) != 0) return 0;
        size_t sa = 0, sb = 0;
        unsigned char *ba = save_state(a->states[i], &sa), *bb = save_state(b->states[i], &sb);
        int equal = sa == sb && memcmp(ba, bb, sa) == 0;
        free(ba);
        free(bb);
        if (!equal) return 0;
    }
    return 1;
}

static MlorcStatus step_many(Model *m, const MlorcStepOptions *options) {
    return mlorc_step_many(m->states, (void *const *)m->params, (const void *const *)m->grads, COUNT, options);
}

static void test_same_bits_as_single_steps(MlorcAlgorithm algorithm) {
    Model batched, single;
    model_init(&batched, algorithm, 11);
    model_init(&single, algorithm, 11);
    MlorcStepOptions options;
    REQUIRE_OK(mlorc_step_options_init(&options, 1e-3));
    for (int step = 0; step < 3; step++) {
        new_gradients(&batched, 100 + step);
        new_gradients(&single, 100 + step);
        CHECK_OK(step_many(&batched, &options));
        for (size_t i = 0; i < COUNT; i++) CHECK_OK(mlorc_step(single.states[i], single.params[i], single.grads[i], &options));
        CHECK(same(&batched, &single));
    }
    for (size_t i = 0; i < COUNT; i++) {
        uint64_t count = 0;
        CHECK_OK(mlorc_state_step_count(batched.states[i], &count));
        CHECK_INT_EQ(count, 3);
        CHECK(!any_nan_f(batched.params[i], SHAPES[i][0] * SHAPES[i][1]));
    }
    model_free(&batched);
    model_free(&single);
}

static void test_errors_change_nothing(void) {
    Model m, copy;
    model_init(&m, MLORC_ADAMW, 5);
    model_init(&copy, MLORC_ADAMW, 5);
    new_gradients(&m, 1);
    new_gradients(&copy, 1);
    MlorcStepOptions options;
    REQUIRE_OK(mlorc_step_options_init(&options, 1e-3));
    REQUIRE_OK(step_many(&m, &options));
    REQUIRE_OK(step_many(&copy, &options));

    /* A NULL gradient in the last tensor: no tensor before it has stepped. */
    const float *saved = m.grads[COUNT - 1];
    m.grads[COUNT - 1] = NULL;
    CHECK_INT_EQ(step_many(&m, &options), MLORC_ERROR_INVALID_ARGUMENT);
    CHECK(strstr(mlorc_last_error_message(), "tensor 6") != NULL);
    m.grads[COUNT - 1] = (float *)saved;
    CHECK(same(&m, &copy));

    /* A NaN learning rate. */
    MlorcStepOptions bad = options;
    bad.lr = NAN;
    CHECK_INT_EQ(step_many(&m, &bad), MLORC_ERROR_INVALID_ARGUMENT);
    CHECK(same(&m, &copy));

    /* A state listed twice. */
    MlorcState *twice[2] = {m.states[1], m.states[1]};
    void *params[2] = {m.params[1], m.params[1]};
    const void *grads[2] = {m.grads[1], m.grads[1]};
    CHECK_INT_EQ(mlorc_step_many(twice, params, grads, 2, &options), MLORC_ERROR_INVALID_ARGUMENT);
    CHECK(strstr(mlorc_last_error_message(), "once") != NULL);
    CHECK(same(&m, &copy));
    /* The refused call released its claims: the state steps again. */
    CHECK_OK(mlorc_step(m.states[1], m.params[1], m.grads[1], &options));
    CHECK_OK(mlorc_step(copy.states[1], copy.params[1], copy.grads[1], &options));
    CHECK(same(&m, &copy));

    /* NULL arrays, a NULL state, NULL options, a wrong struct_size; count 0 does nothing. */
    CHECK_INT_EQ(mlorc_step_many(NULL, (void *const *)m.params, (const void *const *)m.grads, COUNT, &options), MLORC_ERROR_INVALID_ARGUMENT);
    CHECK_INT_EQ(mlorc_step_many(m.states, NULL, (const void *const *)m.grads, COUNT, &options), MLORC_ERROR_INVALID_ARGUMENT);
    CHECK_INT_EQ(mlorc_step_many(m.states, (void *const *)m.params, NULL, COUNT, &options), MLORC_ERROR_INVALID_ARGUMENT);
    MlorcState *with_null[2] = {m.states[0], NULL};
    CHECK_INT_EQ(mlorc_step_many(with_null, params, grads, 2, &options), MLORC_ERROR_INVALID_ARGUMENT);
    CHECK(strstr(mlorc_last_error_message(), "states[1]") != NULL);
    CHECK_INT_EQ(step_many(&m, NULL), MLORC_ERROR_INVALID_ARGUMENT);
    MlorcStepOptions small = options;
    small.struct_size = 8;
    CHECK_INT_EQ(step_many(&m, &small), MLORC_ERROR_INVALID_ARGUMENT);
    CHECK_OK(mlorc_step_many(NULL, NULL, NULL, 0, &options));
    CHECK(same(&m, &copy));

    /* found_inf: nothing changes, not even the step counts. */
    float inf = 1.0f;
    MlorcStepOptions skip = options;
    skip.found_inf = &inf;
    CHECK_OK(step_many(&m, &skip));
    CHECK(same(&m, &copy));
    model_free(&m);
    model_free(&copy);
}

int main(void) {
    test_same_bits_as_single_steps(MLORC_ADAMW);
    test_same_bits_as_single_steps(MLORC_LION);
    test_errors_change_nothing();
    return test_exit_code("test_batch");
}
