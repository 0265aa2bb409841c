/* Sharded optimizer states (issue 6): a documented example of the all-reduce callback, with a
 * fake process group of 2 or 3 ranks in one process (one pthread per rank, no MPI), and the
 * test that a sharded step equals the unsharded step on the whole matrix.
 *
 * How a trainer uses it
 * ---------------------
 * A trainer that splits a weight matrix of rows x cols across the ranks of a data-parallel group
 * (ZeRO / FSDP style) gives each rank a contiguous range [begin, end) of the row-major elements:
 * whole rows (a dim-0 slice) or a flat range that starts and ends inside rows; a range may be
 * empty. Each rank creates its own state for its range with mlorc_state_create_sharded, passing
 * the descriptor of the WHOLE matrix and a callback that sums a float buffer across the group:
 *
 *     MlorcShard shard;
 *     mlorc_shard_init(&shard, begin, end, my_all_reduce, &my_comm);  // copied by the library
 *     mlorc_state_create_sharded(&config, &whole_matrix_desc, &shard, NULL, 0, &state);
 *     ...
 *     mlorc_step(state, my_param_elements, my_grad_elements, &options);  // end - begin of each
 *
 * With MPI the callback is a few lines:
 *
 *     static int32_t my_all_reduce(float *data, size_t count, void *stream, void *context) {
 *         (void)stream;                                    // NULL for CPU states
 *         MPI_Comm comm = *(MPI_Comm *)context;            // count is O((rows + cols) * k):
 *         return MPI_Allreduce(MPI_IN_PLACE, data, (int)count, MPI_FLOAT, MPI_SUM, comm)
 *                == MPI_SUCCESS ? 0 : 1;                   // far below INT_MAX
 *     }
 *
 * and with NCCL (for device states, once the library runs sharded states on CUDA):
 *
 *     return ncclAllReduce(data, data, count, ncclFloat32, ncclSum, *(ncclComm_t *)context,
 *                          (cudaStream_t)stream) == ncclSuccess ? 0 : 1;
 *
 * Rules the callback and the trainer follow (see mlorc.h):
 *  - every rank should get the same bits back (the usual MPI_Allreduce and ncclAllReduce
 *    algorithms do; a reduce followed by a broadcast always does): the factors of the compressed
 *    moments are replicated on every rank and stay bitwise identical only if the sums are;
 *  - mlorc_step blocks inside the callback until every rank has called it, so all ranks step
 *    together, with the same lr, grad_scale and found_inf values (and DENSE states make no call);
 *  - a non-zero return fails the step with MLORC_ERROR_COLLECTIVE on that rank; the state and
 *    the parameter shard may then be half-updated, so every rank reloads its last checkpoint
 *    (and parameters) and the group goes on, as run_case below does after injected failures.
 *
 * What the test checks: for MLorc-AdamW and MLorc-Lion (FACTORED), whole-row, ragged and empty
 * shards on 2 and 3 ranks, 10 steps on random gradients: the ranks' parameter shards put
 * together equal the unsharded state's parameter (relative 1e-5 of the weights' scale); the
 * factors read back are bitwise identical on every rank and equal the unsharded factors in the
 * product U diag(S) V^T and in S (relative 1e-4; the individual columns of U and V are not
 * compared: their signs and, for close singular values, their rotation are not stable under
 * rounding-level changes of the input, while U diag(S) V^T and S are); the number of calls and
 * floats of the callback per step equal the formula of the sharded API; the callback runs on
 * the stepping thread. DENSE shards: no call, bitwise the unsharded update and moments. Errors:
 * bad ranges, a missing callback, CUDA, and failing callbacks (MLORC_ERROR_COLLECTIVE). */
#define _POSIX_C_SOURCE 200809L /* pthreads, clock_gettime under -std=c11 */

#include <errno.h>
#include <pthread.h>
#include <time.h>

#include "test_util.h"

/* ======================================================================================== */
/* The fake process group: N ranks as N threads of this process.                             */
/* ======================================================================================== */

#define MAX_RANKS 3
#define WAIT_SECONDS 30 /* a rank waiting this long in the all-reduce means a deadlock */

typedef struct {
    int size;
    pthread_mutex_t mutex;
    pthread_cond_t cond;
    int turn;        /* the rank adding its data now; == size once the sum is complete */
    int copied;      /* ranks that have copied the complete sum back */
    size_t count;    /* floats of the reduction in progress (rank 0's count) */
    int mismatch;    /* a rank passed another count: the reduction fails on every rank */
    float *sum;      /* the shared accumulator */
    size_t capacity; /* floats allocated at sum */
} FakeGroup;

static void group_init(FakeGroup *g, int size) {
    memset(g, 0, sizeof *g);
    g->size = size;
    REQUIRE(pthread_mutex_init(&g->mutex, NULL) == 0);
    REQUIRE(pthread_cond_init(&g->cond, NULL) == 0);
}

static void group_destroy(FakeGroup *g) {
    pthread_cond_destroy(&g->cond);
    pthread_mutex_destroy(&g->mutex);
    free(g->sum);
}

/* pthread_cond_wait (mutex held) that ends the test, instead of hanging, when the ranks' calls do
 * not match: a rank that stepped with a different number of collectives leaves the others
 * waiting forever. */
static void group_wait(FakeGroup *g, int rank) {
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += WAIT_SECONDS;
    if (pthread_cond_timedwait(&g->cond, &g->mutex, &deadline) == ETIMEDOUT) {
        fprintf(stderr, "rank %d waited %d s in the all-reduce (turn %d of %d): the ranks' "
                        "collectives do not match, deadlock\n", rank, WAIT_SECONDS, g->turn, g->size);
        exit(1);
    }
}

/* The all-reduce itself: rank 0 puts its data into the shared accumulator, rank 1 adds its own,
 * and so on in rank order, so the sum is the same bits on every rank and in every run; once the
 * last rank has added, every rank copies the sum back into its `data`. The last rank to copy
 * resets the group; a rank that calls again meanwhile waits for its turn. Returns 0, or 1 when
 * the ranks passed different counts (on every rank). */
static int32_t group_sum(FakeGroup *g, int rank, float *data, size_t count) {
    pthread_mutex_lock(&g->mutex);
    while (g->turn != rank) group_wait(g, rank);
    if (rank == 0) {
        if (count > g->capacity) {
            float *grown = (float *)realloc(g->sum, count * sizeof(float));
            REQUIRE(grown != NULL);
            g->sum = grown;
            g->capacity = count;
        }
        g->count = count;
        g->mismatch = 0;
        if (count > 0) memcpy(g->sum, data, count * sizeof(float));
    } else if (count != g->count) {
        g->mismatch = 1;
    } else {
        for (size_t i = 0; i < count; i++) g->sum[i] += data[i];
    }
    g->turn++;
    pthread_cond_broadcast(&g->cond);

    while (g->turn != g->size) group_wait(g, rank); /* the sum is complete */
    const int32_t failed = g->mismatch;
    if (!failed && count > 0) memcpy(data, g->sum, count * sizeof(float));
    if (++g->copied == g->size) { /* everyone has the sum: the next reduction may start */
        g->copied = 0;
        g->turn = 0;
        pthread_cond_broadcast(&g->cond);
    }
    pthread_mutex_unlock(&g->mutex);
    return failed;
}

/* The context of one rank's callback: its group and rank, plus what the test observes. */
#define LOG_MAX 8
typedef struct {
    FakeGroup *group;
    int rank;
    pthread_t thread;       /* the rank's thread, set by the thread itself */
    size_t calls, floats;   /* since the last comm_reset */
    size_t log[LOG_MAX];    /* counts of the first LOG_MAX calls since the last comm_reset */
    size_t fail_call;       /* inject a failure: call number fail_call (1-based) returns 1 */
    size_t wrong_thread;    /* calls made on another thread than the one stepping the state */
    size_t non_null_stream; /* calls with a stream (CPU states pass NULL) */
    size_t mismatched;      /* reductions whose counts differed across the ranks */
} RankComm;

static void comm_reset(RankComm *rc) {
    rc->calls = 0;
    rc->floats = 0;
    memset(rc->log, 0, sizeof rc->log);
}

/* The MlorcAllReduceFn handed to the library: bookkeeping, then the group's sum. */
static int32_t fake_all_reduce(float *data, size_t count, void *stream, void *context) {
    RankComm *rc = (RankComm *)context;
    rc->calls++;
    rc->floats += count;
    if (rc->calls <= LOG_MAX) rc->log[rc->calls - 1] = count;
    if (!pthread_equal(pthread_self(), rc->thread)) rc->wrong_thread++;
    if (stream != NULL) rc->non_null_stream++;
    if (rc->calls == rc->fail_call) return 1; /* every rank fails the same call: no one waits */
    int32_t failed = group_sum(rc->group, rc->rank, data, count);
    if (failed) rc->mismatched++;
    return failed;
}

/* ======================================================================================== */
/* One scenario: N ranks step their shards, the main thread steps the whole matrix.          */
/* ======================================================================================== */

#define ROWS 29 /* neither multiple of the 8 SIMD lanes: shards end inside lane groups too */
#define COLS 23
#define N_ELEM (ROWS * COLS) /* 667 */
#define RANK 4
#define STEPS 10
#define LR 1e-2
#define PARAM_TOL 1e-5  /* relative to max |W0| */
#define FACTOR_TOL 1e-4 /* relative to max |moment| and max S */

typedef struct {
    const char *name;
    MlorcAlgorithm algorithm;
    MlorcLayout layout; /* FACTORED or DENSE */
    uint32_t oversampling, power_iters;
    int ranks;
    uint64_t bounds[MAX_RANKS + 1]; /* rank i holds [bounds[i], bounds[i + 1]); last = N_ELEM */
    int dense_callback;             /* DENSE: 1 passes the callback (never called), 0 NULL */
    int lend_rank;                  /* this rank keeps its state in its own buffers; -1: none */
    int fail_step[2], fail_call[2]; /* injected callback failures (1-based); step 0: none */
} Case;

typedef struct {
    size_t count;
    const char *names[6];
    size_t lens[6];
    size_t offset[6]; /* into the buffers concatenated in this order */
    size_t total;     /* floats */
    size_t bytes;
} Buffers;

typedef struct {
    const Case *c;
    MlorcConfig cfg;
    MlorcTensorDesc desc;
    const float *w0;    /* N_ELEM */
    const float *grads; /* STEPS x N_ELEM */
    float *w_hist;      /* STEPS x N_ELEM: after each step, each rank writes its own range */
} Run;

typedef struct {
    const Run *run;
    int rank;
    uint64_t begin, end;
    int lend;
    Buffers bufs;       /* this shard's buffers */
    RankComm comm;
    /* results, read by the main thread after join */
    MlorcStatus init_status, create_status;
    char create_msg[256];
    int stepped;        /* steps taken */
    MlorcStatus step_status[STEPS + 1];
    size_t calls[STEPS + 1], floats[STEPS + 1], log[STEPS + 1][LOG_MAX];
    MlorcStatus fail_status[STEPS + 1]; /* injected failures: what mlorc_step returned */
    size_t fail_calls[STEPS + 1];       /* ... the calls it made */
    int fail_msg_ok[STEPS + 1];         /* ... a non-empty error message */
    MlorcStatus reload_status[STEPS + 1];
    uint64_t count_after_reload[STEPS + 1];
    float *fac_hist;    /* STEPS x bufs.total: the buffers read after each step */
    MlorcStatus final_status;
    uint64_t range_begin, range_end;
    size_t memory_bytes;
    MlorcLayout layout;
    int lent_matches;   /* the lent buffers hold what read_buffer returns */
} RankJob;

static void buffers_of(const MlorcConfig *cfg, const MlorcTensorDesc *desc, const MlorcShard *shard,
                       Buffers *b) {
    memset(b, 0, sizeof *b);
    if (shard) REQUIRE_OK(mlorc_shard_buffer_count(cfg, desc, shard, &b->count));
    else REQUIRE_OK(mlorc_buffer_count(cfg, desc, &b->count));
    REQUIRE(b->count >= 1 && b->count <= 6);
    for (size_t i = 0; i < b->count; i++) {
        MlorcBufferInfo info;
        memset(&info, 0, sizeof info);
        info.struct_size = sizeof info;
        if (shard) REQUIRE_OK(mlorc_shard_buffer_info(cfg, desc, shard, i, &info));
        else REQUIRE_OK(mlorc_buffer_info(cfg, desc, i, &info));
        b->names[i] = info.name;
        b->lens[i] = info.rows * info.cols;
        b->offset[i] = b->total;
        b->total += b->lens[i];
        b->bytes += info.bytes;
    }
}

static void read_buffers(const MlorcState *state, const Buffers *b, float *dst, MlorcStatus *st) {
    for (size_t i = 0; i < b->count; i++) {
        MlorcStatus s = mlorc_state_read_buffer(state, b->names[i], dst + b->offset[i], b->lens[i]);
        if (s != MLORC_OK) *st = s;
    }
}

static void *rank_main(void *arg) {
    RankJob *job = (RankJob *)arg;
    const Run *run = job->run;
    const Case *c = run->c;
    const size_t len = (size_t)(job->end - job->begin);
    job->comm.thread = pthread_self();

    /* The shard: this rank's range, the callback and its context. */
    const int with_callback = c->layout == MLORC_LAYOUT_FACTORED || c->dense_callback;
    MlorcShard shard;
    job->init_status = mlorc_shard_init(&shard, job->begin, job->end,
                                        with_callback ? fake_all_reduce : NULL, &job->comm);

    /* The state: in library buffers, or in buffers of ours (as a framework's allocator would). */
    MlorcState *state = NULL;
    float *lent[6] = {NULL, NULL, NULL, NULL, NULL, NULL};
    if (job->lend) {
        for (size_t i = 0; i < job->bufs.count; i++) lent[i] = (float *)xcalloc(job->bufs.lens[i], sizeof(float));
        job->create_status = mlorc_state_create_sharded(&run->cfg, &run->desc, &shard, lent,
                                                        job->bufs.count, &state);
    } else {
        job->create_status = mlorc_state_create_sharded(&run->cfg, &run->desc, &shard, NULL, 0, &state);
    }
    if (job->create_status != MLORC_OK)
        snprintf(job->create_msg, sizeof job->create_msg, "%s", mlorc_last_error_message());

    /* The ranks agree that every one has a state before stepping: a rank that failed would leave
     * the others waiting in the first collective of the step. */
    float failed_ranks = job->create_status != MLORC_OK ? 1.0f : 0.0f;
    int go = group_sum(job->comm.group, job->rank, &failed_ranks, 1) == 0 && failed_ranks == 0.0f;

    /* The shard's parameter; an empty shard passes NULL. */
    float *w = len ? (float *)xcalloc(len, sizeof(float)) : NULL;
    float *w_saved = len ? (float *)xcalloc(len, sizeof(float)) : NULL;
    if (len) memcpy(w, run->w0 + job->begin, len * sizeof(float));
    MlorcStepOptions opt;
    mlorc_step_options_init(&opt, LR);

    for (int t = 1; go && t <= STEPS; t++) {
        const float *g = len ? run->grads + (size_t)(t - 1) * N_ELEM + job->begin : NULL;
        for (int f = 0; f < 2; f++) {
            if (c->fail_step[f] != t) continue;
            /* The callback fails on call fail_call of this step, on every rank. The ranks then go
             * back to their last checkpoint (saved here before the step) and step again. */
            size_t ckpt_size = 0;
            unsigned char *ckpt = save_state(state, &ckpt_size);
            if (len) memcpy(w_saved, w, len * sizeof(float));
            comm_reset(&job->comm);
            job->comm.fail_call = (size_t)c->fail_call[f];
            job->fail_status[t] = mlorc_step(state, w, g, &opt);
            const char *msg = mlorc_last_error_message();
            job->fail_msg_ok[t] = msg != NULL && msg[0] != '\0';
            job->fail_calls[t] = job->comm.calls;
            job->comm.fail_call = 0;
            job->reload_status[t] = mlorc_state_load(state, ckpt, ckpt_size);
            if (len) memcpy(w, w_saved, len * sizeof(float));
            job->count_after_reload[t] = 999;
            mlorc_state_step_count(state, &job->count_after_reload[t]);
            free(ckpt);
        }
        comm_reset(&job->comm);
        job->step_status[t] = mlorc_step(state, w, g, &opt);
        job->calls[t] = job->comm.calls;
        job->floats[t] = job->comm.floats;
        memcpy(job->log[t], job->comm.log, sizeof job->log[t]);
        if (len) memcpy(run->w_hist + (size_t)(t - 1) * N_ELEM + job->begin, w, len * sizeof(float));
        read_buffers(state, &job->bufs, job->fac_hist + (size_t)(t - 1) * job->bufs.total, &job->final_status);
        job->stepped = t;
    }

    if (state != NULL) {
        MlorcStatus s;
        if ((s = mlorc_state_shard_range(state, &job->range_begin, &job->range_end)) != MLORC_OK) job->final_status = s;
        if ((s = mlorc_state_memory_bytes(state, &job->memory_bytes)) != MLORC_OK) job->final_status = s;
        if ((s = mlorc_state_layout(state, &job->layout)) != MLORC_OK) job->final_status = s;
        if (job->lend) {
            float *now = (float *)xcalloc(job->bufs.total, sizeof(float));
            read_buffers(state, &job->bufs, now, &job->final_status);
            job->lent_matches = 1;
            for (size_t i = 0; i < job->bufs.count; i++)
                if (memcmp(now + job->bufs.offset[i], lent[i], job->bufs.lens[i] * sizeof(float)) != 0)
                    job->lent_matches = 0;
            free(now);
        }
        mlorc_state_destroy(state);
    }
    for (size_t i = 0; i < 6; i++) free(lent[i]);
    free(w);
    free(w_saved);
    return NULL;
}

/* max |U diag(S) V^T - U' diag(S') V'^T| for the factors of one moment (u: rows x r row-major,
 * s: r, v: cols x r), and max |U diag(S) V^T| into *scale. */
static double moment_diff(const float *u, const float *s, const float *v, const float *u2,
                          const float *s2, const float *v2, size_t r, double *scale) {
    double d = 0.0, mx = 0.0;
    for (size_t i = 0; i < ROWS; i++)
        for (size_t j = 0; j < COLS; j++) {
            double a = 0.0, b = 0.0;
            for (size_t k = 0; k < r; k++) {
                a += (double)u[i * r + k] * s[k] * v[j * r + k];
                b += (double)u2[i * r + k] * s2[k] * v2[j * r + k];
            }
            mx = fmax(mx, fabs(b));
            double x = fabs(a - b);
            if (!(x <= d)) d = isnan(x) ? INFINITY : x;
        }
    *scale = mx;
    return d;
}

/* Lion: elements where c = beta1 M~ + (1 - beta1) g is so close to zero that rounding-level
 * differences in M~ may flip sign(c) get tied[i] = t (the sharded and the unsharded state may then
 * move that weight in opposite directions, by 2 lr, from step t on). `fac` holds the unsharded
 * factors before step t (NULL: zero). Returns the number of new ties. */
static size_t mark_lion_ties(const MlorcConfig *cfg, const Buffers *b, const float *fac, const float *g,
                             int t, unsigned char *tied) {
    const size_t r = b->lens[1];
    double *cv = (double *)xcalloc(N_ELEM, sizeof(double));
    double cmax = 0.0;
    for (size_t i = 0; i < ROWS; i++)
        for (size_t j = 0; j < COLS; j++) {
            double m = 0.0;
            if (fac)
                for (size_t k = 0; k < r; k++)
                    m += (double)fac[b->offset[0] + i * r + k] * fac[b->offset[1] + k] * fac[b->offset[2] + j * r + k];
            double x = cfg->beta1 * m + (1.0 - cfg->beta1) * g[i * COLS + j];
            cv[i * COLS + j] = x;
            cmax = fmax(cmax, fabs(x));
        }
    size_t fresh = 0;
    for (size_t i = 0; i < N_ELEM; i++)
        if (!tied[i] && fabs(cv[i]) <= 1e-4 * cmax) {
            tied[i] = (unsigned char)t;
            fresh++;
        }
    free(cv);
    return fresh;
}

static void run_case(const Case *c, uint64_t seed) {
    REQUIRE(c->ranks >= 1 && c->ranks <= MAX_RANKS);
    REQUIRE(c->bounds[0] == 0 && c->bounds[c->ranks] == N_ELEM);
    const int factored = c->layout == MLORC_LAYOUT_FACTORED;
    const size_t moments = c->algorithm == MLORC_ADAMW ? 2 : 1;

    Run run;
    run.c = c;
    REQUIRE_OK(mlorc_config_init(&run.cfg, c->algorithm));
    run.cfg.layout = c->layout;
    run.cfg.rank = RANK;
    run.cfg.oversampling = c->oversampling;
    run.cfg.power_iters = c->power_iters;
    run.cfg.weight_decay = 0.1;
    run.cfg.seed = seed;
    REQUIRE_OK(mlorc_tensor_desc_init(&run.desc, ROWS, COLS, MLORC_F32));

    /* Weights in [-1, 1), gradients with magnitudes in [0.5, 1.5) (the second moment stays away
     * from zero, so f32 rounding cannot decide an AdamW update). */
    Rng rng = {run.cfg.seed};
    float *w0 = (float *)xcalloc(N_ELEM, sizeof(float));
    float *grads = (float *)xcalloc((size_t)STEPS * N_ELEM, sizeof(float));
    for (size_t i = 0; i < N_ELEM; i++) w0[i] = (float)rng_range(&rng, -1.0, 1.0);
    for (size_t i = 0; i < (size_t)STEPS * N_ELEM; i++) grads[i] = (float)rng_signed(&rng, 0.5, 1.5);
    run.w0 = w0;
    run.grads = grads;
    run.w_hist = (float *)xcalloc((size_t)STEPS * N_ELEM, sizeof(float));

    /* The unsharded state on the whole matrix, stepped here. */
    Buffers whole;
    buffers_of(&run.cfg, &run.desc, NULL, &whole);
    float *ref_w_hist = (float *)xcalloc((size_t)STEPS * N_ELEM, sizeof(float));
    float *ref_fac = (float *)xcalloc((size_t)STEPS * whole.total, sizeof(float));
    unsigned char *tied = (unsigned char *)xcalloc(N_ELEM, 1);
    size_t ties = 0;
    {
        MlorcState *state = NULL;
        REQUIRE_OK(mlorc_state_create(&run.cfg, &run.desc, &state));
        uint64_t b = 1, e = 0;
        CHECK_OK(mlorc_state_shard_range(state, &b, &e)); /* unsharded: the whole matrix */
        CHECK_INT_EQ(b, 0);
        CHECK_INT_EQ(e, N_ELEM);
        float *w = (float *)xcalloc(N_ELEM, sizeof(float));
        memcpy(w, w0, N_ELEM * sizeof(float));
        MlorcStepOptions opt;
        REQUIRE_OK(mlorc_step_options_init(&opt, LR));
        for (int t = 1; t <= STEPS; t++) {
            const float *g = grads + (size_t)(t - 1) * N_ELEM;
            if (factored && c->algorithm == MLORC_LION)
                ties += mark_lion_ties(&run.cfg, &whole, t > 1 ? ref_fac + (size_t)(t - 2) * whole.total : NULL, g, t, tied);
            REQUIRE_OK(mlorc_step(state, w, g, &opt));
            memcpy(ref_w_hist + (size_t)(t - 1) * N_ELEM, w, N_ELEM * sizeof(float));
            MlorcStatus st = MLORC_OK;
            read_buffers(state, &whole, ref_fac + (size_t)(t - 1) * whole.total, &st);
            REQUIRE_OK(st);
        }
        mlorc_state_destroy(state);
        free(w);
    }

    /* The ranks, and what each shard's buffers must be before any state exists. */
    FakeGroup group;
    group_init(&group, c->ranks);
    RankJob jobs[MAX_RANKS];
    pthread_t threads[MAX_RANKS];
    for (int k = 0; k < c->ranks; k++) {
        RankJob *job = &jobs[k];
        memset(job, 0, sizeof *job);
        job->run = &run;
        job->rank = k;
        job->begin = c->bounds[k];
        job->end = c->bounds[k + 1];
        job->lend = c->lend_rank == k;
        job->comm.group = &group;
        job->comm.rank = k;
        const size_t len = (size_t)(job->end - job->begin);

        MlorcShard shard;
        REQUIRE_OK(mlorc_shard_init(&shard, job->begin, job->end, fake_all_reduce, &job->comm));
        CHECK_INT_EQ(shard.struct_size, sizeof(MlorcShard));
        CHECK_INT_EQ(shard.begin, job->begin);
        CHECK_INT_EQ(shard.end, job->end);
        CHECK(shard.all_reduce == fake_all_reduce && shard.all_reduce_context == &job->comm);
        buffers_of(&run.cfg, &run.desc, &shard, &job->bufs);
        size_t required = 0;
        CHECK_OK(mlorc_shard_state_bytes_required(&run.cfg, &run.desc, &shard, &required));
        CHECK_INT_EQ(required, job->bufs.bytes);
        if (factored) {
            /* The factors of the whole matrix, exactly as unsharded. */
            CHECK_INT_EQ(job->bufs.count, whole.count);
            for (size_t i = 0; i < whole.count && i < job->bufs.count; i++) {
                CHECK_STR_EQ(job->bufs.names[i], whole.names[i]);
                CHECK_INT_EQ(job->bufs.lens[i], whole.lens[i]);
            }
            CHECK_INT_EQ(required, moments * (ROWS + COLS + 1) * RANK * 4);
        } else {
            /* The moments of the shard's elements only: 1 x len each. */
            CHECK_INT_EQ(job->bufs.count, moments);
            for (size_t i = 0; i < job->bufs.count && i < moments; i++) {
                CHECK_STR_EQ(job->bufs.names[i], i == 0 ? "exp_avg" : "exp_avg_sq");
                CHECK_INT_EQ(job->bufs.lens[i], len);
                MlorcBufferInfo info;
                memset(&info, 0, sizeof info);
                info.struct_size = sizeof info;
                CHECK_OK(mlorc_shard_buffer_info(&run.cfg, &run.desc, &shard, i, &info));
                CHECK_INT_EQ(info.rows, 1);
                CHECK_INT_EQ(info.cols, len);
            }
            CHECK_INT_EQ(required, moments * len * 4);
        }
        job->fac_hist = (float *)xcalloc((size_t)STEPS * job->bufs.total, sizeof(float));
    }
    for (int k = 0; k < c->ranks; k++) REQUIRE(pthread_create(&threads[k], NULL, rank_main, &jobs[k]) == 0);
    for (int k = 0; k < c->ranks; k++) REQUIRE(pthread_join(threads[k], NULL) == 0);
    group_destroy(&group);

    /* ---- every rank: statuses, the state it reports, the callback's calls ---- */
    size_t k_sketch = (size_t)RANK + c->oversampling; /* k = min(rank + oversampling, rows, cols) */
    if (k_sketch > ROWS) k_sketch = ROWS;
    if (k_sketch > COLS) k_sketch = COLS;
    const size_t q = c->power_iters;
    int all_stepped = 1;
    for (int k = 0; k < c->ranks; k++) {
        RankJob *job = &jobs[k];
        CHECK_OK(job->init_status);
        if (job->create_status != MLORC_OK) {
            fprintf(stderr, "%s:%d: %s: rank %d: mlorc_state_create_sharded [%llu, %llu) returned %s: %s\n",
                    __FILE__, __LINE__, c->name, k, (unsigned long long)job->begin,
                    (unsigned long long)job->end, mlorc_status_string(job->create_status), job->create_msg);
            g_failures++;
        }
        CHECK_INT_EQ(job->stepped, STEPS);
        if (job->stepped != STEPS) all_stepped = 0;
        CHECK_OK(job->final_status);
        if (job->stepped == 0) continue;
        CHECK_INT_EQ(job->range_begin, job->begin);
        CHECK_INT_EQ(job->range_end, job->end);
        CHECK_INT_EQ(job->memory_bytes, job->bufs.bytes);
        CHECK_INT_EQ(job->layout, c->layout);
        if (job->lend) CHECK(job->lent_matches);
        CHECK_INT_EQ(job->comm.wrong_thread, 0);    /* called on the thread of mlorc_step */
        CHECK_INT_EQ(job->comm.non_null_stream, 0); /* CPU: stream NULL */
        CHECK_INT_EQ(job->comm.mismatched, 0);      /* every rank passed the same counts */
        for (int t = 1; t <= job->stepped; t++) {
            CHECK_OK(job->step_status[t]);
            /* Expected calls: AdamW after its first step, 4 floats of statistics; then per
             * power iteration and the final pass, a sketch (rows x k per moment) and a projection
             * (cols x k per moment), alternating. DENSE: none. */
            size_t want[LOG_MAX], n_want = 0, floats = 0;
            if (factored) {
                if (c->algorithm == MLORC_ADAMW && t > 1) want[n_want++] = 4;
                for (size_t i = 0; i <= q; i++) {
                    want[n_want++] = moments * ROWS * k_sketch;
                    want[n_want++] = moments * COLS * k_sketch;
                }
            }
            for (size_t i = 0; i < n_want; i++) floats += want[i];
            REQUIRE(n_want <= LOG_MAX);
            CHECK_INT_EQ(job->calls[t], n_want);
            CHECK_INT_EQ(job->floats[t], floats);
            /* the formula of the API: (q+1)*moments*(rows+cols)*k (+4 for AdamW after step 1) */
            CHECK_INT_EQ(job->floats[t], (factored ? (q + 1) * moments * (ROWS + COLS) * k_sketch : 0) +
                                             (factored && c->algorithm == MLORC_ADAMW && t > 1 ? 4 : 0));
            for (size_t i = 0; i < n_want && i < job->calls[t]; i++)
                if (job->log[t][i] != want[i]) {
                    fprintf(stderr, "%s:%d: %s: rank %d step %d: call %zu had %zu floats, expected %zu\n",
                            __FILE__, __LINE__, c->name, k, t, i + 1, job->log[t][i], want[i]);
                    g_failures++;
                }
        }
        for (int f = 0; f < 2; f++) {
            const int t = c->fail_step[f];
            if (t == 0 || t > job->stepped) continue;
            /* The failed attempt: MLORC_ERROR_COLLECTIVE with a message, no call after the failed
             * one; the checkpoint reloads to the step count before the step. */
            CHECK_INT_EQ(job->fail_status[t], MLORC_ERROR_COLLECTIVE);
            CHECK(job->fail_msg_ok[t]);
            CHECK_INT_EQ(job->fail_calls[t], c->fail_call[f]);
            CHECK_OK(job->reload_status[t]);
            CHECK_INT_EQ(job->count_after_reload[t], (uint64_t)(t - 1));
        }
    }

    /* ---- against the unsharded state, step by step ---- */
    double scale_w = 0.0;
    for (size_t i = 0; i < N_ELEM; i++) scale_w = fmax(scale_w, fabs((double)w0[i]));
    double worst_w = 0.0, worst_m = 0.0, worst_s = 0.0, moved = 0.0, s_max = 0.0;
    int dense_equal = 1, ranks_identical = 1;
    if (all_stepped) {
        for (int t = 1; t <= STEPS; t++) {
            const float *wt = run.w_hist + (size_t)(t - 1) * N_ELEM;
            const float *rt = ref_w_hist + (size_t)(t - 1) * N_ELEM;
            const float *ref = ref_fac + (size_t)(t - 1) * whole.total;
            if (!factored) {
                /* DENSE: elementwise, so the shards' update is the unsharded one, bit for bit, and
                 * so are their moments (the unsharded moments' elements [begin, end)). */
                if (memcmp(wt, rt, N_ELEM * sizeof(float)) != 0) dense_equal = 0;
                for (int k = 0; k < c->ranks; k++) {
                    const RankJob *job = &jobs[k];
                    const size_t len = (size_t)(job->end - job->begin);
                    const float *mine = job->fac_hist + (size_t)(t - 1) * job->bufs.total;
                    for (size_t i = 0; i < moments && i < job->bufs.count; i++)
                        if (len && memcmp(mine + job->bufs.offset[i], ref + whole.offset[i] + job->begin,
                                          len * sizeof(float)) != 0)
                            dense_equal = 0;
                }
                continue;
            }
            /* FACTORED: the parameter within rounding; Lion's rounding-level sign ties excluded. */
            for (size_t i = 0; i < N_ELEM; i++) {
                moved = fmax(moved, fabs((double)rt[i] - w0[i]));
                if (tied[i] != 0 && tied[i] <= t) continue;
                double d = fabs((double)wt[i] - rt[i]);
                if (!(d <= worst_w)) worst_w = isnan(d) ? INFINITY : d;
            }
            /* The factors: the same bits on every rank ... */
            const float *f0 = jobs[0].fac_hist + (size_t)(t - 1) * jobs[0].bufs.total;
            for (int k = 1; k < c->ranks; k++)
                if (memcmp(jobs[k].fac_hist + (size_t)(t - 1) * jobs[k].bufs.total, f0,
                           whole.total * sizeof(float)) != 0)
                    ranks_identical = 0;
            /* ... and the unsharded moments U diag(S) V^T and singular values S. */
            for (size_t m = 0; m < moments; m++) {
                const size_t u = whole.offset[3 * m], s = whole.offset[3 * m + 1], v = whole.offset[3 * m + 2];
                const size_t r = whole.lens[3 * m + 1];
                double scale = 0.0;
                double d = moment_diff(f0 + u, f0 + s, f0 + v, ref + u, ref + s, ref + v, r, &scale);
                worst_m = fmax(worst_m, isnan(d) ? INFINITY : d / scale);
                double smax = 0.0, sd = 0.0;
                for (size_t i = 0; i < r; i++) {
                    smax = fmax(smax, fabs((double)ref[s + i]));
                    double x = fabs((double)f0[s + i] - ref[s + i]);
                    if (!(x <= sd)) sd = isnan(x) ? INFINITY : x;
                }
                worst_s = fmax(worst_s, sd / smax);
                s_max = fmax(s_max, smax);
            }
        }
    }
    if (!factored) {
        CHECK(dense_equal);
        printf("  %-52s dense: %s\n", c->name, dense_equal ? "bitwise equal to unsharded" : "DIFFERENT");
    } else {
        CHECK(ranks_identical);
        CHECK(moved > LR); /* the weights did move: not a vacuous comparison */
        CHECK(s_max > 0.0);
        CHECK(ties * 50 <= (size_t)N_ELEM * STEPS); /* Lion sign ties stay rare */
        if (!(worst_w <= PARAM_TOL * scale_w)) {
            fprintf(stderr, "%s:%d: %s: max |W_sharded - W| = %.3e > %.0e * %.3f\n", __FILE__,
                    __LINE__, c->name, worst_w, PARAM_TOL, scale_w);
            g_failures++;
        }
        if (!(worst_m <= FACTOR_TOL) || !(worst_s <= FACTOR_TOL)) {
            fprintf(stderr, "%s:%d: %s: moments differ by %.3e, S by %.3e (relative) > %.0e\n",
                    __FILE__, __LINE__, c->name, worst_m, worst_s, FACTOR_TOL);
            g_failures++;
        }
        printf("  %-52s W %.1e  moments %.1e  S %.1e  factors %s%s\n", c->name, worst_w / scale_w,
               worst_m, worst_s, ranks_identical ? "identical on all ranks" : "DIFFER ACROSS RANKS",
               ties ? "  [lion sign ties excluded]" : "");
    }

    for (int k = 0; k < c->ranks; k++) free(jobs[k].fac_hist);
    free(w0);
    free(grads);
    free(run.w_hist);
    free(ref_w_hist);
    free(ref_fac);
    free(tied);
}

/* ======================================================================================== */
/* Errors                                                                                    */
/* ======================================================================================== */

/* A callback that only counts its calls (context: a size_t), and one that fails. */
static int32_t counting_all_reduce(float *data, size_t count, void *stream, void *context) {
    (void)data, (void)count, (void)stream;
    ++*(size_t *)context;
    return 0;
}

static int32_t failing_all_reduce(float *data, size_t count, void *stream, void *context) {
    (void)data, (void)count, (void)stream;
    ++*(size_t *)context;
    return 7;
}

static void expect_status(MlorcStatus got, MlorcStatus want, const char *what, int line) {
    const char *msg = mlorc_last_error_message();
    if (got != want) {
        fprintf(stderr, "%s:%d: %s returned %s (%u), expected %s; message: %s\n", __FILE__, line,
                what, mlorc_status_string(got), (unsigned)got, mlorc_status_string(want), msg);
        g_failures++;
    } else if (want != MLORC_OK && (msg == NULL || msg[0] == '\0')) {
        fprintf(stderr, "%s:%d: %s: no error message\n", __FILE__, line, what);
        g_failures++;
    }
}
#define EXPECT_STATUS(call, want) expect_status((call), (want), #call, __LINE__)

/* A sharded create that must fail with `want`: every query and the create, nothing written. */
static void expect_create_fails(const MlorcConfig *cfg, const MlorcTensorDesc *desc,
                                const MlorcShard *shard, MlorcStatus want, int queries_too,
                                const char *what, int line) {
    static char anything;
    MlorcState *const sentinel = (MlorcState *)(void *)&anything;
    MlorcState *out = sentinel;
    char label[160];
    snprintf(label, sizeof label, "mlorc_state_create_sharded (%s)", what);
    MlorcStatus st = mlorc_state_create_sharded(cfg, desc, shard, NULL, 0, &out);
    expect_status(st, want, label, line);
    if (out != sentinel) {
        fprintf(stderr, "%s:%d: %s: out was written\n", __FILE__, line, label);
        g_failures++;
        if (st == MLORC_OK) mlorc_state_destroy(out);
    }
    if (!queries_too) return;
    size_t count = 12345, bytes = 12345;
    MlorcBufferInfo info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    snprintf(label, sizeof label, "mlorc_shard_buffer_count (%s)", what);
    expect_status(mlorc_shard_buffer_count(cfg, desc, shard, &count), want, label, line);
    snprintf(label, sizeof label, "mlorc_shard_buffer_info (%s)", what);
    expect_status(mlorc_shard_buffer_info(cfg, desc, shard, 0, &info), want, label, line);
    snprintf(label, sizeof label, "mlorc_shard_state_bytes_required (%s)", what);
    expect_status(mlorc_shard_state_bytes_required(cfg, desc, shard, &bytes), want, label, line);
    if (count != 12345 || bytes != 12345 || info.name != NULL) {
        fprintf(stderr, "%s:%d: %s: a query wrote its out-parameter\n", __FILE__, line, what);
        g_failures++;
    }
}

static void check_errors(void) {
    CHECK_INT_EQ(MLORC_ERROR_COLLECTIVE, 8);
    CHECK_STR_EQ(mlorc_status_string(MLORC_ERROR_COLLECTIVE), "MLORC_ERROR_COLLECTIVE");

    MlorcConfig cfg;
    REQUIRE_OK(mlorc_config_init(&cfg, MLORC_ADAMW));
    cfg.layout = MLORC_LAYOUT_FACTORED;
    cfg.rank = 2;
    MlorcTensorDesc desc;
    REQUIRE_OK(mlorc_tensor_desc_init(&desc, 8, 6, MLORC_F32)); /* 48 elements */
    size_t calls = 0;
    MlorcShard good;
    REQUIRE_OK(mlorc_shard_init(&good, 20, 30, counting_all_reduce, &calls));
    EXPECT_STATUS(mlorc_shard_init(NULL, 0, 1, counting_all_reduce, &calls), MLORC_ERROR_INVALID_ARGUMENT);

    /* Queries: a DENSE shard that is the whole matrix keeps rows x cols moments. */
    {
        MlorcConfig d = cfg;
        d.layout = MLORC_LAYOUT_DENSE;
        MlorcShard all;
        REQUIRE_OK(mlorc_shard_init(&all, 0, 48, NULL, NULL));
        size_t count = 0, bytes = 0;
        CHECK_OK(mlorc_shard_buffer_count(&d, &desc, &all, &count));
        CHECK_INT_EQ(count, 2);
        MlorcBufferInfo info;
        memset(&info, 0, sizeof info);
        info.struct_size = sizeof info;
        CHECK_OK(mlorc_shard_buffer_info(&d, &desc, &all, 1, &info));
        CHECK_STR_EQ(info.name, "exp_avg_sq");
        CHECK_INT_EQ(info.rows, 8);
        CHECK_INT_EQ(info.cols, 6);
        CHECK_OK(mlorc_shard_state_bytes_required(&d, &desc, &all, &bytes));
        CHECK_INT_EQ(bytes, 2 * 48 * 4);
    }

    MlorcShard s = good;
    s.begin = 31;
    s.end = 30;
    expect_create_fails(&cfg, &desc, &s, MLORC_ERROR_INVALID_ARGUMENT, 1, "begin > end", __LINE__);
    s = good;
    s.end = 49;
    expect_create_fails(&cfg, &desc, &s, MLORC_ERROR_INVALID_ARGUMENT, 1, "end > rows*cols", __LINE__);
    s = good;
    s.begin = 49;
    s.end = 49;
    expect_create_fails(&cfg, &desc, &s, MLORC_ERROR_INVALID_ARGUMENT, 1, "empty, past the end", __LINE__);
    s = good;
    s.struct_size = sizeof s - 1;
    expect_create_fails(&cfg, &desc, &s, MLORC_ERROR_INVALID_ARGUMENT, 1, "struct_size", __LINE__);
    expect_create_fails(&cfg, &desc, NULL, MLORC_ERROR_INVALID_ARGUMENT, 1, "NULL shard", __LINE__);
    s = good;
    s.all_reduce = NULL;
    expect_create_fails(&cfg, &desc, &s, MLORC_ERROR_INVALID_ARGUMENT, 0, "FACTORED, no callback", __LINE__);
    {
        MlorcConfig a = cfg; /* AUTO resolving to FACTORED needs the callback too */
        MlorcTensorDesc big;
        REQUIRE_OK(mlorc_tensor_desc_init(&big, 64, 48, MLORC_F32));
        a.layout = MLORC_LAYOUT_AUTO;
        MlorcLayout resolved = 99;
        REQUIRE_OK(mlorc_resolve_layout(&a, &big, &resolved));
        CHECK_INT_EQ(resolved, MLORC_LAYOUT_FACTORED);
        expect_create_fails(&a, &big, &s, MLORC_ERROR_INVALID_ARGUMENT, 0, "AUTO->FACTORED, no callback", __LINE__);
    }
    {
        MlorcTensorDesc cuda = desc;
        cuda.device = MLORC_DEVICE_CUDA;
        cuda.device_ordinal = 0;
        expect_create_fails(&cfg, &cuda, &good, MLORC_ERROR_UNSUPPORTED, 0, "CUDA", __LINE__);
        MlorcConfig d = cfg;
        d.layout = MLORC_LAYOUT_DENSE;
        expect_create_fails(&d, &cuda, &good, MLORC_ERROR_UNSUPPORTED, 0, "CUDA, DENSE", __LINE__);
    }
    {
        /* Caller buffers: a wrong count. */
        size_t count = 0;
        REQUIRE_OK(mlorc_shard_buffer_count(&cfg, &desc, &good, &count));
        CHECK_INT_EQ(count, 6);
        float *bufs[6];
        for (size_t i = 0; i < 6; i++) bufs[i] = (float *)xcalloc(64, sizeof(float));
        static char anything;
        MlorcState *const sentinel = (MlorcState *)(void *)&anything;
        MlorcState *out = sentinel;
        EXPECT_STATUS(mlorc_state_create_sharded(&cfg, &desc, &good, bufs, 5, &out), MLORC_ERROR_INVALID_ARGUMENT);
        CHECK(out == sentinel);
        for (size_t i = 0; i < 6; i++) free(bufs[i]);
    }
    CHECK_INT_EQ(calls, 0); /* no failed call reached the callback */

    /* A DENSE shard needs no callback. */
    {
        MlorcConfig d = cfg;
        d.layout = MLORC_LAYOUT_DENSE;
        MlorcShard nocb;
        REQUIRE_OK(mlorc_shard_init(&nocb, 20, 30, NULL, NULL));
        MlorcState *st = NULL;
        CHECK_OK(mlorc_state_create_sharded(&d, &desc, &nocb, NULL, 0, &st));
        mlorc_state_destroy(st);
    }

    /* Steps of one rank of a group, alone: a callback that only counts (the sums are then this
     * rank's partial sums, which is all these checks need). */
    MlorcState *state = NULL;
    REQUIRE_OK(mlorc_state_create_sharded(&cfg, &desc, &good, NULL, 0, &state));
    float w[10], g[10];
    for (int i = 0; i < 10; i++) {
        w[i] = 0.1f * (float)i;
        g[i] = 1.0f - 0.15f * (float)i;
    }
    MlorcStepOptions opt;
    REQUIRE_OK(mlorc_step_options_init(&opt, LR));
    /* A non-empty shard needs its parameter and gradient: refused before any collective. */
    EXPECT_STATUS(mlorc_step(state, NULL, g, &opt), MLORC_ERROR_INVALID_ARGUMENT);
    EXPECT_STATUS(mlorc_step(state, w, NULL, &opt), MLORC_ERROR_INVALID_ARGUMENT);
    CHECK_INT_EQ(calls, 0);
    CHECK_OK(mlorc_step(state, w, g, &opt));
    CHECK_INT_EQ(calls, 2); /* sketch and projection */
    uint64_t count = 0;
    CHECK_OK(mlorc_state_step_count(state, &count));
    CHECK_INT_EQ(count, 1);
    mlorc_state_destroy(state);

    /* A callback returning non-zero: MLORC_ERROR_COLLECTIVE, and no further call in that step. */
    size_t failing_calls = 0;
    MlorcShard bad;
    REQUIRE_OK(mlorc_shard_init(&bad, 20, 30, failing_all_reduce, &failing_calls));
    REQUIRE_OK(mlorc_state_create_sharded(&cfg, &desc, &bad, NULL, 0, &state));
    EXPECT_STATUS(mlorc_step(state, w, g, &opt), MLORC_ERROR_COLLECTIVE);
    CHECK_INT_EQ(failing_calls, 1);
    mlorc_state_destroy(state);
    printf("  error cases checked\n");
}

/* ======================================================================================== */

int main(void) {
    /* 29 x 23 = 667 elements; row i covers [23 i, 23 i + 23). */
    const Case cases[] = {
        /* name, algorithm, layout, p, q, ranks, bounds, dense_callback, lend_rank, fail_step, fail_call */
        {"adamw 2 ranks, whole rows (11 + 18)", MLORC_ADAMW, MLORC_LAYOUT_FACTORED, 0, 0, 2,
         {0, 253, 667}, 0, -1, {0, 0}, {0, 0}},
        {"lion 2 ranks, whole rows (11 + 18)", MLORC_LION, MLORC_LAYOUT_FACTORED, 0, 0, 2,
         {0, 253, 667}, 0, -1, {0, 0}, {0, 0}},
        {"adamw 2 ranks, ragged (split mid-row), lent bufs", MLORC_ADAMW, MLORC_LAYOUT_FACTORED, 0, 0, 2,
         {0, 400, 667}, 0, 1, {0, 0}, {0, 0}},
        {"lion 2 ranks, ragged (split mid-row)", MLORC_LION, MLORC_LAYOUT_FACTORED, 0, 0, 2,
         {0, 400, 667}, 0, -1, {0, 0}, {0, 0}},
        {"adamw 3 ranks, whole rows (10 + 10 + 9)", MLORC_ADAMW, MLORC_LAYOUT_FACTORED, 0, 0, 3,
         {0, 230, 460, 667}, 0, -1, {0, 0}, {0, 0}},
        {"adamw 3 ranks, middle shard inside one row", MLORC_ADAMW, MLORC_LAYOUT_FACTORED, 0, 0, 3,
         {0, 100, 110, 667}, 0, -1, {0, 0}, {0, 0}},
        {"lion 3 ranks, ragged, empty middle shard", MLORC_LION, MLORC_LAYOUT_FACTORED, 0, 0, 3,
         {0, 300, 300, 667}, 0, 2, {0, 0}, {0, 0}},
        {"adamw 3 ranks, empty first, q=1 p=2", MLORC_ADAMW, MLORC_LAYOUT_FACTORED, 2, 1, 3,
         {0, 0, 345, 667}, 0, -1, {0, 0}, {0, 0}},
        {"lion 3 ranks, empty last shard, q=1", MLORC_LION, MLORC_LAYOUT_FACTORED, 0, 1, 3,
         {0, 333, 667, 667}, 0, -1, {0, 0}, {0, 0}},
        {"adamw 2 ranks, ragged, callback fails, reload", MLORC_ADAMW, MLORC_LAYOUT_FACTORED, 0, 0, 2,
         {0, 400, 667}, 0, -1, {2, 4}, {3, 1}},
        {"lion 3 ranks, ragged, callback fails, reload", MLORC_LION, MLORC_LAYOUT_FACTORED, 0, 0, 3,
         {0, 100, 500, 667}, 0, -1, {1, 5}, {1, 2}},
        {"dense adamw 2 ranks, ragged, callback set", MLORC_ADAMW, MLORC_LAYOUT_DENSE, 0, 0, 2,
         {0, 400, 667}, 1, 0, {0, 0}, {0, 0}},
        {"dense lion 3 ranks, empty middle, no callback", MLORC_LION, MLORC_LAYOUT_DENSE, 0, 0, 3,
         {0, 301, 301, 667}, 0, -1, {0, 0}, {0, 0}},
    };
    check_errors();
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(&cases[i], 1000u + i);
    return test_exit_code("test_sharded");
}
