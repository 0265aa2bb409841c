// MLorc CUDA kernels, compiled at run time by NVRTC (src/cuda/module.rs) for the device's own
// SM. They mirror the CPU backend (src/cpu/, src/step.rs, src/linalg.rs, src/rng.rs,
// src/dtype.rs) operation by operation: compiled with --fmad=false, so a product and a sum are
// fused exactly where the CPU fuses them (its `mul_add`, here an explicit fmaf) and rounded on
// their own elsewhere; only the order of the long reductions differs (see src/cuda/mirror.rs,
// which replays that order on the CPU).
//
// The launch geometry constants (SK_ROWS, SK_THREADS, PJ_COLS, PJ_SLABS, ...) are defined by
// the host through -D options, from src/cuda/launch.rs: one source of truth for the kernels and
// the CPU mirror.
//
// Every kernel reads Ctrl.skip (set by mlorc_prepare from *found_inf and the validity of lr and
// grad_scale) and returns at once when it is set, so a skipped step changes nothing, the step
// counter in Ctrl included. Nothing here allocates; no kernel needs a host synchronisation.

typedef unsigned long long u64;
typedef unsigned int u32;
typedef unsigned short u16;

#ifndef SK_ROWS
#error "SK_ROWS must be defined by the host"
#endif

#define DTYPE_F32 0
#define DTYPE_F16 1
#define DTYPE_BF16 2

#define STREAM_ROUNDING 2u

#define MAX_MOMENTS 2

// Rows of the projection whose loads are issued together.
#define PJ_BATCH 2

// ---------------------------------------------------------------------------------------------
// Shared structs: byte-for-byte the #[repr(C)] structs of src/cuda/launch.rs.

// Per-state control block in device memory.
struct Ctrl {
    u64 step;          // steps taken (found_inf steps excluded)
    u64 t;             // the step being taken (step + 1)
    u64 seed;
    u32 skip;          // 1: this step changes nothing
    u32 error;         // sticky flags: 1 = bad *lr, 2 = bad *grad_scale
    u32 stochastic;    // stochastic rounding of f16/bf16 parameters
    u32 adamw;         // 1 AdamW, 0 Lion
    float lr;
    float decay;       // 1 - lr * weight_decay
    float step_size;   // AdamW: lr / (1 - beta1^t); Lion: lr
    float inv_bc2sqrt; // AdamW: 1 / sqrt(1 - beta2^t), rounded from f64
    float eps;
    float beta1;
    float beta2;
    float grad_factor; // 1 / grad_scale
    float fill;        // negative fill of the second moment (AdamW)
    float one_minus_beta1;  // 1 - beta1 and 1 - beta2, rounded from f64 (StepScalars)
    float one_minus_beta2;
    u32 pad;
};

// Hyperparameters of one step, by value.
struct Hyper {
    double lr;
    double beta1;
    double beta2;
    double eps;
    double weight_decay;
    u64 seed;
    u32 bias_correction;
    u32 stochastic;
    u32 adamw;
    u32 pad;
};

// The state's device memory, by value (pointers of the workspace are fixed for a state's life).
struct Ptrs {
    float* u[MAX_MOMENTS];   // m x r
    float* s[MAX_MOMENTS];   // r
    float* v[MAX_MOMENTS];   // n x r
    float* vt[MAX_MOMENTS];  // r x n: the old V, transposed at the start of a step
    float* xt[MAX_MOMENTS];  // k x n: sketch input (Omega), row l = column l
    float* yt[MAX_MOMENTS];  // k x m: sketch Y, then Q = orth(Y)
    float* bt[MAX_MOMENTS];  // k x n: B = Q^T A (row l = column l of B^T)
    float* part;             // PJ_GRID_SLABS x moments x k x n: projection partial sums
    double* dwork;           // moments x k x max(m, n): f64 copy for orthonormalization
    double* small;           // moments x (2 k^2 + k): gram / eigenvectors, sigma
    double* negp;            // NEG_BLOCKS x 2: negative-fill partials (sum, count)
    u32 m, n, r, k;
    u32 moments;
    u32 grid_slabs;          // row slabs across the grid of the projection
};

struct Io {
    void* param;
    const void* grad;
    u32 param_dtype;
    u32 grad_dtype;
};

// ---------------------------------------------------------------------------------------------
// Philox4x32-10 and Box-Muller: src/rng.rs.

__device__ __forceinline__ void philox4x32_10(u32 c[4], u32 k0, u32 k1) {
    const u32 M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            k0 += W0;
            k1 += W1;
        }
        u32 hi0 = __umulhi(M0, c[0]), lo0 = M0 * c[0];
        u32 hi1 = __umulhi(M1, c[2]), lo1 = M1 * c[2];
        u32 n0 = hi1 ^ c[1] ^ k0, n1 = lo1, n2 = hi0 ^ c[3] ^ k1, n3 = lo0;
        c[0] = n0; c[1] = n1; c[2] = n2; c[3] = n3;
    }
}

__device__ __forceinline__ void philox_draw(u64 index, u64 step, u32 stream, u64 seed, u32 out[4]) {
    out[0] = (u32)index;
    out[1] = (u32)(index >> 32);
    out[2] = (u32)step;
    out[3] = ((u32)(step >> 32) & 0x00FFFFFFu) | (stream << 24);
    philox4x32_10(out, (u32)seed, (u32)(seed >> 32));
}

// Box–Muller exactly as src/rng.rs computes it (same constants, same operations in the same
// order; --fmad=false keeps every product and sum rounded on its own), so both backends draw
// the same bits of Omega.
__device__ const double SIN_COEFFS[9] = {
    1.0, -0.16666666666666666, 0.008333333333333333, -0.0001984126984126984, 2.7557319223985893e-06,
    -2.505210838544172e-08, 1.6059043836821613e-10, -7.647163731819816e-13, 2.8114572543455206e-15};
__device__ const double COS_COEFFS[10] = {
    1.0, -0.5, 0.041666666666666664, -0.001388888888888889, 2.48015873015873e-05, -2.755731922398589e-07,
    2.08767569878681e-09, -1.1470745597729725e-11, 4.779477332387385e-14, -1.5619206968586225e-16};
__device__ const double ATANH_COEFFS[12] = {
    1.0, 0.3333333333333333, 0.2, 0.14285714285714285, 0.1111111111111111, 0.09090909090909091,
    0.07692307692307693, 0.06666666666666667, 0.058823529411764705, 0.05263157894736842,
    0.047619047619047616, 0.043478260869565216};
#define OCTANT_STEP 1.4629180792671596e-09
#define LN2_HI 0.6931471803691238
#define LN2_LO 1.9082149292705877e-10

// sin and cos of 2*pi*b/2^32: the octant and the angle inside it from b's bits, then a
// polynomial on [0, pi/4] (src/rng.rs, sin_cos_turn).
__device__ __forceinline__ void sin_cos_turn(u32 b, double* s, double* c) {
    u32 octant = b >> 29;
    u32 inside = b & ((1u << 29) - 1u);
    u32 steps = (octant & 1u) ? (1u << 29) - inside : inside;
    double x = (double)steps * OCTANT_STEP;
    double x2 = x * x;
    double sn = SIN_COEFFS[8];
    for (int i = 7; i >= 0; --i) sn = sn * x2 + SIN_COEFFS[i];
    sn = sn * x;
    double cs = COS_COEFFS[9];
    for (int i = 8; i >= 0; --i) cs = cs * x2 + COS_COEFFS[i];
    bool swap = ((octant + 1u) & 2u) != 0u;
    double ss = swap ? cs : sn;
    double cc = swap ? sn : cs;
    *s = (octant & 4u) ? -ss : ss;
    *c = ((octant + 2u) & 4u) ? -cc : cc;
}

// ln((a + 1)/2^32) through a + 1 = 2^e * m, m in [sqrt(1/2), sqrt(2)] (src/rng.rs, ln_unit).
__device__ __forceinline__ double ln_unit(u32 a) {
    double x = (double)a + 1.0;
    u64 bits = (u64)__double_as_longlong(x);
    long long e = (long long)(bits >> 52) - 1023;
    double m = __longlong_as_double((long long)((bits & ((1ull << 52) - 1ull)) | (1023ull << 52)));
    if (m > 1.4142135623730951) {
        m *= 0.5;
        e += 1;
    }
    double s = (m - 1.0) / (m + 1.0);
    double s2 = s * s;
    double series = ATANH_COEFFS[11];
    for (int i = 10; i >= 0; --i) series = series * s2 + ATANH_COEFFS[i];
    double ln_m = 2.0 * s * series;
    double k = (double)(e - 32);
    return k * LN2_HI + (k * LN2_LO + ln_m);
}

__device__ __forceinline__ void box_muller(u32 a, u32 b, double* z0, double* z1) {
    double radius = sqrt(-2.0 * ln_unit(a));
    double s, c;
    sin_cos_turn(b, &s, &c);
    *z0 = radius * c;
    *z1 = radius * s;
}

// ---------------------------------------------------------------------------------------------
// Element types: src/dtype.rs.

__device__ __forceinline__ float f16_to_f32(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u16 f32_to_f16(float x) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(x));
    return h;
}

__device__ __forceinline__ float bf16_to_f32(u16 b) { return __uint_as_float(((u32)b) << 16); }

// half::bf16::from_f32: round to nearest even, NaN kept quiet.
__device__ __forceinline__ u16 f32_to_bf16(float x) {
    u32 bits = __float_as_uint(x);
    if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return (u16)((bits >> 16) | 0x0040u);
    const u32 round_bit = 0x00008000u;
    if ((bits & round_bit) != 0 && (bits & (3u * round_bit - 1u)) != 0) return (u16)((bits >> 16) + 1u);
    return (u16)(bits >> 16);
}

__device__ __forceinline__ float load_elem(const void* p, u32 dtype, u64 e) {
    if (dtype == DTYPE_F32) return ((const float*)p)[e];
    u16 bits = ((const u16*)p)[e];
    return dtype == DTYPE_F16 ? f16_to_f32(bits) : bf16_to_f32(bits);
}

__device__ __forceinline__ float bits16_to_f32(u16 bits, u32 dtype) {
    return dtype == DTYPE_F16 ? f16_to_f32(bits) : bf16_to_f32(bits);
}

__device__ __forceinline__ u16 nearest_bits16(float x, u32 dtype) {
    return dtype == DTYPE_F16 ? f32_to_f16(x) : f32_to_bf16(x);
}

__device__ __forceinline__ u16 neighbour_bits16(u16 bits, bool up) {
    bool negative = (bits & 0x8000u) != 0;
    u16 magnitude = bits & 0x7FFFu;
    if ((up && !negative) || (!up && negative)) return (u16)(bits + 1);
    if (up && negative && magnitude == 0) return 0x0001u;
    if (!up && !negative && magnitude == 0) return 0x8001u;
    return (u16)(bits - 1);
}

// dtype::round_stochastic.
__device__ u16 round_stochastic(float x, u32 dtype, u32 random) {
    u16 nearest = nearest_bits16(x, dtype);
    float nearest_value = bits16_to_f32(nearest, dtype);
    if (!isfinite(x) || !isfinite(nearest_value) || nearest_value == x) return nearest;
    u16 other = neighbour_bits16(nearest, nearest_value < x);
    float other_value = bits16_to_f32(other, dtype);
    if (!isfinite(other_value)) return nearest;
    float lo, hi;
    u16 lo_bits, hi_bits;
    if (nearest_value < other_value) {
        lo = nearest_value; hi = other_value; lo_bits = nearest; hi_bits = other;
    } else {
        lo = other_value; hi = nearest_value; lo_bits = other; hi_bits = nearest;
    }
    double p_up = ((double)x - (double)lo) / ((double)hi - (double)lo);
    double u = (double)(random >> 8) * (1.0 / 16777216.0);
    return u < p_up ? hi_bits : lo_bits;
}

// The f16 / bf16 bits dtype::store writes for element e.
__device__ __forceinline__ u16 store_bits16(u32 dtype, u64 e, float x, const Ctrl* c) {
    if (c->stochastic) {
        u32 words[4];
        philox_draw(e / 4, c->t, STREAM_ROUNDING, c->seed, words);
        return round_stochastic(x, dtype, words[e % 4]);
    }
    return nearest_bits16(x, dtype);
}

// dtype::store for one element e.
__device__ __forceinline__ void store_elem(void* p, u32 dtype, u64 e, float x, const Ctrl* c) {
    if (dtype == DTYPE_F32) ((float*)p)[e] = x;
    else ((u16*)p)[e] = store_bits16(dtype, e, x, c);
}

// Elements e .. e + count - 1 (count <= 4) into x[0 .. count), zeros after: one vector load
// when all four are there and aligned.
__device__ __forceinline__ void load4(const void* p, u32 dtype, u64 e, u32 count, float x[4]) {
    if (dtype == DTYPE_F32) {
        const float* f = (const float*)p + e;
        if (count == 4 && ((u64)f & 15u) == 0) {
            float4 t = *(const float4*)f;
            x[0] = t.x; x[1] = t.y; x[2] = t.z; x[3] = t.w;
            return;
        }
    } else {
        const u16* h = (const u16*)p + e;
        if (count == 4 && ((u64)h & 7u) == 0) {
            uint2 t = *(const uint2*)h;
            x[0] = bits16_to_f32((u16)(t.x & 0xFFFFu), dtype);
            x[1] = bits16_to_f32((u16)(t.x >> 16), dtype);
            x[2] = bits16_to_f32((u16)(t.y & 0xFFFFu), dtype);
            x[3] = bits16_to_f32((u16)(t.y >> 16), dtype);
            return;
        }
    }
#pragma unroll
    for (u32 v = 0; v < 4; ++v) x[v] = v < count ? load_elem(p, dtype, e + v) : 0.0f;
}

// f32 elements p[0 .. count) (count <= 4) of read-only memory into x, zeros after, through the
// read-only cache: one vector load when all four are there and aligned. p may be NULL when
// count is 0.
__device__ __forceinline__ void load4_ldg(const float* p, u32 count, float x[4]) {
    if (count == 4 && ((u64)p & 15u) == 0) {
        float4 t = __ldg((const float4*)p);
        x[0] = t.x; x[1] = t.y; x[2] = t.z; x[3] = t.w;
        return;
    }
#pragma unroll
    for (u32 v = 0; v < 4; ++v) x[v] = v < count ? __ldg(p + v) : 0.0f;
}

// store_elem for elements e .. e + count - 1: one vector store when all four are there and
// aligned.
__device__ __forceinline__ void store4(void* p, u32 dtype, u64 e, u32 count, const float x[4], const Ctrl* c) {
    if (dtype == DTYPE_F32) {
        float* f = (float*)p + e;
        if (count == 4 && ((u64)f & 15u) == 0) {
            *(float4*)f = make_float4(x[0], x[1], x[2], x[3]);
            return;
        }
    } else {
        u16* h = (u16*)p + e;
        if (count == 4 && ((u64)h & 7u) == 0) {
            u32 b0 = store_bits16(dtype, e, x[0], c), b1 = store_bits16(dtype, e + 1, x[1], c);
            u32 b2 = store_bits16(dtype, e + 2, x[2], c), b3 = store_bits16(dtype, e + 3, x[3], c);
            *(uint2*)h = make_uint2(b0 | (b1 << 16), b2 | (b3 << 16));
            return;
        }
    }
#pragma unroll
    for (u32 v = 0; v < 4; ++v)
        if (v < count) store_elem(p, dtype, e + v, x[v], c);
}

// ---------------------------------------------------------------------------------------------
// Step arithmetic: StepScalars (src/step.rs) and MomentTerms (src/cpu/tile.rs).

__device__ __forceinline__ float sign_of(float x) { return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f); }

// The step helpers read their scalars from `c`: the Ctrl block in device memory, or a StepRegs
// copy of its fields in registers (same values, so the same bits).

// The fields of Ctrl that the step helpers read, for kernels that keep them in registers.
struct StepRegs {
    u32 adamw;
    float lr, decay, step_size, inv_bc2sqrt, eps, beta1, beta2, fill, one_minus_beta1, one_minus_beta2;
};

__device__ __forceinline__ StepRegs step_regs(const Ctrl* c) {
    StepRegs s;
    s.adamw = c->adamw;
    s.lr = c->lr;
    s.decay = c->decay;
    s.step_size = c->step_size;
    s.inv_bc2sqrt = c->inv_bc2sqrt;
    s.eps = c->eps;
    s.beta1 = c->beta1;
    s.beta2 = c->beta2;
    s.fill = c->fill;
    s.one_minus_beta1 = c->one_minus_beta1;
    s.one_minus_beta2 = c->one_minus_beta2;
    return s;
}

// tile::update_adamw.
template <class S>
__device__ __forceinline__ float adamw_update(const S* c, float w, float m, float v) {
    float denom = fmaf(sqrtf(v), c->inv_bc2sqrt, c->eps);
    return fmaf(-c->step_size, m / denom, w * c->decay);
}

// tile::update_lion.
template <class S>
__device__ __forceinline__ float lion_update(const S* c, float w, float m_old, float g) {
    float cc = fmaf(c->beta1, m_old, c->one_minus_beta1 * g);
    return fmaf(-c->lr, sign_of(cc), w * c->decay);
}

// (beta, 1 - beta) of moment mo: StepScalars::moment_mix.
template <class S>
__device__ __forceinline__ float moment_beta(const S* c, u32 mo) {
    return (c->adamw && mo == 0) ? c->beta1 : c->beta2;
}

template <class S>
__device__ __forceinline__ float moment_weight(const S* c, u32 mo) {
    return (c->adamw && mo == 0) ? c->one_minus_beta1 : c->one_minus_beta2;
}

// Row i, column j of U diag(S) V^T from u*s (row i, in `us`, r values) and the transposed V
// (MomentTerms::rebuild).
__device__ __forceinline__ float rebuild(const float* us, const float* vt, u32 r, u32 n, u32 j) {
    float out = 0.0f;
    for (u32 l = 0; l < r; ++l) out = fmaf(us[l], vt[(u64)l * n + j], out);
    return out;
}

// MomentTerms::step8 for one element: the fixed old value and the new moment.
template <class S>
__device__ __forceinline__ void moment_step(const S* c, u32 mo, float rebuilt, float g, float* old_out, float* new_out) {
    float old = rebuilt;
    if (c->adamw && mo == 1) old = old < 0.0f ? c->fill : old;
    float h = (c->adamw && mo == 1) ? g * g : g;
    *old_out = old;
    *new_out = fmaf(moment_beta(c, mo), old, moment_weight(c, mo) * h);
}

// ---------------------------------------------------------------------------------------------
// Fixed-order reductions. Warp: shuffle-down tree with offsets 16, 8, 4, 2, 1 (lane 0 ends with
// the total); block: warp totals added in warp order by thread 0. src/cuda/mirror.rs replays
// both orders.

__device__ __forceinline__ float warp_sum_f32(float x) {
    for (int off = 16; off > 0; off >>= 1) x += __shfl_down_sync(0xFFFFFFFFu, x, off);
    return x;
}

__device__ __forceinline__ double warp_sum_f64(double x) {
    for (int off = 16; off > 0; off >>= 1) x += __shfl_down_sync(0xFFFFFFFFu, x, off);
    return x;
}

// Block sum of f64 values (blockDim.x a multiple of 32, at most 1024); every thread gets the
// total. `scratch` holds 33 doubles of shared memory. Contains __syncthreads: call uniformly.
__device__ double block_sum_f64(double x, double* scratch) {
    u32 lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    x = warp_sum_f64(x);
    __syncthreads();
    if (lane == 0) scratch[warp] = x;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = scratch[0];
        for (u32 w = 1; w < (blockDim.x >> 5); ++w) t += scratch[w];
        scratch[32] = t;
    }
    __syncthreads();
    return scratch[32];
}

// ---------------------------------------------------------------------------------------------
// Step prologue and epilogue.

// One thread: reads *found_inf, *grad_scale and *lr on the device, computes the step's scalars
// as StepScalars::new does (f64, then f32).
extern "C" __global__ void mlorc_prepare(Ctrl* c, Hyper h, const float* lr_ptr, const float* grad_scale, const float* found_inf) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    u32 skip = 0, error = 0;
    if (found_inf != 0 && *found_inf != 0.0f) skip = 1;
    double lr = lr_ptr != 0 ? (double)*lr_ptr : h.lr;
    if (!skip && !(isfinite(lr) && lr >= 0.0)) { skip = 1; error |= 1u; }
    float grad_factor = 1.0f;
    if (!skip && grad_scale != 0) {
        float s = *grad_scale;
        if (isfinite(s) && s > 0.0f) grad_factor = 1.0f / s;
        else { skip = 1; error |= 2u; }
    }
    u64 t = c->step + 1;
    double step_size = lr, bc2 = 1.0;  // bc2: sqrt(1 - beta2^t)
    if (h.adamw && h.bias_correction) {
        double bc1 = 1.0 - pow(h.beta1, (double)t);
        double b2 = 1.0 - pow(h.beta2, (double)t);
        step_size = lr / bc1;
        bc2 = sqrt(b2);
    }
    c->t = t;
    c->seed = h.seed;
    c->skip = skip;
    c->error |= error;
    c->stochastic = h.stochastic;
    c->adamw = h.adamw;
    c->lr = (float)lr;
    c->decay = (float)(1.0 - lr * h.weight_decay);
    c->step_size = (float)step_size;
    c->inv_bc2sqrt = (float)(1.0 / bc2);
    c->eps = (float)h.eps;
    c->beta1 = (float)h.beta1;
    c->beta2 = (float)h.beta2;
    c->one_minus_beta1 = (float)(1.0 - h.beta1);
    c->one_minus_beta2 = (float)(1.0 - h.beta2);
    c->grad_factor = grad_factor;
    c->fill = 0.0f;
}

// One thread: the step is taken.
extern "C" __global__ void mlorc_finish(Ctrl* c) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    if (!c->skip) c->step = c->t;
}

// ---------------------------------------------------------------------------------------------
// DENSE layout: plain AdamW / Lion (src/cpu/dense.rs), one element per thread, grid-stride.

extern "C" __global__ void mlorc_dense(const Ctrl* c, Io io, float* m, float* v, u64 len) {
    if (c->skip) return;
    for (u64 e = (u64)blockIdx.x * blockDim.x + threadIdx.x; e < len; e += (u64)gridDim.x * blockDim.x) {
        float g = load_elem(io.grad, io.grad_dtype, e) * c->grad_factor;
        float w = load_elem(io.param, io.param_dtype, e);
        float b1 = moment_beta(c, 0), w1 = moment_weight(c, 0);
        if (c->adamw) {
            float b2 = moment_beta(c, 1), w2 = moment_weight(c, 1);
            float mm = fmaf(b1, m[e], w1 * g);
            float vv = fmaf(b2, v[e], w2 * (g * g));
            m[e] = mm;
            v[e] = vv;
            w = adamw_update(c, w, mm, vv);
        } else {
            float mm = m[e];
            w = lion_update(c, w, mm, g);
            m[e] = fmaf(b1, mm, w1 * g);
        }
        store_elem(io.param, io.param_dtype, e, w, c);
    }
}

// ---------------------------------------------------------------------------------------------
// FACTORED layout, start of a step.

// vt[mo][l][j] = v[mo][j][l].
extern "C" __global__ void mlorc_transpose_v(const Ctrl* c, Ptrs p) {
    if (c->skip) return;
    u64 total = (u64)p.moments * p.r * p.n;
    for (u64 e = (u64)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (u64)gridDim.x * blockDim.x) {
        u32 mo = (u32)(e / ((u64)p.r * p.n));
        u64 rest = e % ((u64)p.r * p.n);
        u32 l = (u32)(rest / p.n), j = (u32)(rest % p.n);
        p.vt[mo][rest] = p.v[mo][(u64)j * p.r + l];
    }
}

// Negative fill of the second moment, stage 1: NEG_BLOCKS blocks of NEG_THREADS threads; block
// b takes rows b, b + NEG_BLOCKS, ...; thread t columns t, t + NEG_THREADS, ... Each thread
// sums |x| (f32) and counts the negative entries; the block adds the threads' sums in f64.
extern "C" __global__ void mlorc_negative_partial(const Ctrl* c, Ptrs p) {
    __shared__ double scratch[33];
    extern __shared__ float neg_us[];  // r floats: u * s of the block's current row
    if (c->skip) return;
    const u32 mo = 1, r = p.r, n = p.n;
    float sum = 0.0f;
    u32 count = 0;
    for (u32 i = blockIdx.x; i < p.m; i += gridDim.x) {
        __syncthreads();  // the previous row's u * s is no longer read
        for (u32 l = threadIdx.x; l < r; l += blockDim.x) neg_us[l] = p.u[mo][(u64)i * r + l] * p.s[mo][l];
        __syncthreads();
        for (u32 j = threadIdx.x; j < n; j += blockDim.x) {
            float x = rebuild(neg_us, p.vt[mo], r, n, j);
            bool negative = x < 0.0f;
            sum += negative ? -x : 0.0f;
            count += negative ? 1u : 0u;
        }
    }
    double bsum = block_sum_f64((double)sum, scratch);
    double bcount = block_sum_f64((double)count, scratch);
    if (threadIdx.x == 0) {
        p.negp[2 * blockIdx.x] = bsum;
        p.negp[2 * blockIdx.x + 1] = bcount;
    }
}

// Stage 2, one block of `blocks` threads (NEG_BLOCKS, a multiple of 32): thread b holds block
// b's partials, added by block_sum_f64's fixed tree; c = sum / count (0 when there is no
// negative).
extern "C" __global__ void mlorc_negative_final(Ctrl* c, Ptrs p, u32 blocks) {
    __shared__ double scratch[33];
    if (c->skip) return;
    const u32 b = threadIdx.x;
    double sum = block_sum_f64(b < blocks ? p.negp[2 * b] : 0.0, scratch);
    double count = block_sum_f64(b < blocks ? p.negp[2 * b + 1] : 0.0, scratch);
    if (b == 0) c->fill = count == 0.0 ? 0.0f : (float)(sum / count);
}

// Omega of every moment: xt[mo][l][j] is normal number j % 4 of Philox block (l << 32 | j / 4)
// at (seed, t, stream mo). One thread per (moment, l, block of four columns).
extern "C" __global__ void mlorc_omega(const Ctrl* c, Ptrs p) {
    if (c->skip) return;
    u32 blocks4 = (p.n + 3) / 4;
    u64 total = (u64)p.moments * p.k * blocks4;
    for (u64 e = (u64)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (u64)gridDim.x * blockDim.x) {
        u32 mo = (u32)(e / ((u64)p.k * blocks4));
        u64 rest = e % ((u64)p.k * blocks4);
        u32 l = (u32)(rest / blocks4), b = (u32)(rest % blocks4);
        u32 words[4];
        philox_draw(((u64)l << 32) | b, c->t, mo, c->seed, words);
        double z[4];
        box_muller(words[0], words[1], &z[0], &z[1]);
        box_muller(words[2], words[3], &z[2], &z[3]);
        for (u32 q = 0; q < 4; ++q) {
            u32 j = 4 * b + q;
            if (j < p.n) p.xt[mo][(u64)l * p.n + j] = (float)z[q];
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sketch pass: Y[:, l0 .. l0+KC] = A X[:, l0 .. l0+KC] for every moment. Block b takes rows
// SK_ROWS*b .. SK_ROWS*b + SK_ROWS - 1; thread t (SK_THREADS per block) the groups of SK_VEC
// columns t, t + SK_THREADS, ..., column by column, accumulating each (row, moment, l) in f32;
// then the block sum (warp tree, warps in order). `use_bt`: X is B^T (a power iteration), else
// Omega.

template <int KC>
__device__ void sketch_impl(const Ctrl* c, Ptrs p, Io io, u32 l0, u32 use_bt) {
    extern __shared__ float sk_shared[];  // SK_ROWS * moments * r floats: u * s of the rows
    // Each warp's totals, for the block sum (one barrier for all of them).
    __shared__ float warp_part[SK_THREADS / 32][SK_ROWS * MAX_MOMENTS * KC];
    if (c->skip) return;
    const u32 m = p.m, n = p.n, r = p.r, k = p.k, moments = p.moments;
    const u32 i0 = blockIdx.x * SK_ROWS;
    for (u32 e = threadIdx.x; e < SK_ROWS * moments * r; e += blockDim.x) {
        u32 row = e / (moments * r), rest = e % (moments * r);
        u32 mo = rest / r, l = rest % r;
        u32 i = i0 + row;
        sk_shared[e] = i < m ? p.u[mo][(u64)i * r + l] * p.s[mo][l] : 0.0f;
    }
    __syncthreads();
    const float grad_factor = c->grad_factor;
    // Loops over moments and rows run to compile-time bounds (guarded), so the accumulators
    // stay in registers.
    float acc[SK_ROWS][MAX_MOMENTS][KC];
#pragma unroll
    for (int a = 0; a < SK_ROWS; ++a)
#pragma unroll
        for (int b = 0; b < MAX_MOMENTS; ++b)
#pragma unroll
            for (int q = 0; q < KC; ++q) acc[a][b][q] = 0.0f;
    // Thread t takes the groups of SK_VEC columns t, t + SK_THREADS, ..., each in column order.
    const u32 groups = (n + SK_VEC - 1) / SK_VEC;
    for (u32 gr = threadIdx.x; gr < groups; gr += SK_THREADS) {
        const u32 j0 = gr * SK_VEC, count = min(SK_VEC, n - j0);
        // The rows' gradients first: independent loads in flight together.
        float g[SK_ROWS][SK_VEC];
#pragma unroll
        for (int row = 0; row < SK_ROWS; ++row) {
            load4(io.grad, io.grad_dtype, (u64)(i0 + row) * n + j0, i0 + row < m ? count : 0u, g[row]);
#pragma unroll
            for (int v = 0; v < SK_VEC; ++v) g[row][v] *= grad_factor;
        }
#pragma unroll
        for (int mo = 0; mo < MAX_MOMENTS; ++mo) {
            if (mo < (int)moments) {
                const float* src = use_bt ? p.bt[mo] : p.xt[mo];
                float x[KC][SK_VEC];
#pragma unroll
                for (int q = 0; q < KC; ++q) load4(src, DTYPE_F32, (u64)(l0 + q) * n + j0, l0 + q < k ? count : 0u, x[q]);
                // Each element's rebuild is the fma chain of `rebuild`; V^T is read once for
                // all rows, U·S once for the group.
                float rebuilt[SK_ROWS][SK_VEC];
#pragma unroll
                for (int row = 0; row < SK_ROWS; ++row)
#pragma unroll
                    for (int v = 0; v < SK_VEC; ++v) rebuilt[row][v] = 0.0f;
                const float* vt = p.vt[mo];
                for (u32 l = 0; l < r; ++l) {
                    float vl[SK_VEC];
                    load4(vt, DTYPE_F32, (u64)l * n + j0, count, vl);
#pragma unroll
                    for (int row = 0; row < SK_ROWS; ++row) {
                        const float us = sk_shared[(row * moments + mo) * r + l];
#pragma unroll
                        for (int v = 0; v < SK_VEC; ++v) rebuilt[row][v] = fmaf(us, vl[v], rebuilt[row][v]);
                    }
                }
#pragma unroll
                for (int row = 0; row < SK_ROWS; ++row) {
                    if (i0 + row < m) {
#pragma unroll
                        for (int v = 0; v < SK_VEC; ++v) {
                            if ((u32)v < count) {
                                float old, a;
                                moment_step(c, mo, rebuilt[row][v], g[row][v], &old, &a);
#pragma unroll
                                for (int q = 0; q < KC; ++q) acc[row][mo][q] = fmaf(a, x[q][v], acc[row][mo][q]);
                            }
                        }
                    }
                }
            }
        }
    }
    // Block sums: warp tree, then the warps' totals in warp order.
    const u32 lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
#pragma unroll
    for (int row = 0; row < SK_ROWS; ++row)
#pragma unroll
        for (int mo = 0; mo < MAX_MOMENTS; ++mo)
#pragma unroll
            for (int q = 0; q < KC; ++q) {
                float w = warp_sum_f32(acc[row][mo][q]);
                if (lane == 0) warp_part[warp][(row * MAX_MOMENTS + mo) * KC + q] = w;
            }
    __syncthreads();
    for (u32 e = threadIdx.x; e < SK_ROWS * MAX_MOMENTS * KC; e += SK_THREADS) {
        u32 row = e / (MAX_MOMENTS * KC), mo = (e / KC) % MAX_MOMENTS, q = e % KC;
        float t = warp_part[0][e];
        for (u32 ww = 1; ww < SK_THREADS / 32; ++ww) t += warp_part[ww][e];
        u32 i = i0 + row;
        if (mo < moments && i < m && l0 + q < k) p.yt[mo][(u64)(l0 + q) * m + i] = t;
    }
}

#define SKETCH_KERNEL(KC) \
    extern "C" __global__ void __launch_bounds__(SK_THREADS) mlorc_sketch_k##KC(const Ctrl* c, Ptrs p, Io io, u32 l0, u32 use_bt) { \
        sketch_impl<KC>(c, p, io, l0, use_bt); \
    }
SKETCH_KERNEL(1)
SKETCH_KERNEL(2)
SKETCH_KERNEL(4)
SKETCH_KERNEL(8)

// ---------------------------------------------------------------------------------------------
// Projection pass: B^T[:, l0 .. l0+KC] = A^T Q[:, l0 .. l0+KC] for every moment, and (with
// `update`, only in the launch with l0 == 0) the weight update of every element in place.
// Block (bx, by) has PJ_COLS x PJ_SLABS threads: thread (tx, ty) owns the PJ_VEC columns from
// j0 = PJ_VEC * (PJ_COLS*bx + tx) and row slab s = PJ_SLABS*by + ty of S = PJ_SLABS * grid_slabs
// slabs, each of ceil(m / S) consecutive rows summed in order. The block adds its slabs in order
// (ty = 0, 1, ...) into part[by]; mlorc_project_reduce adds part[0], part[1], ... in order.
// A row's factors and Q are read once for the thread's PJ_VEC columns.

//
// RK = 0: the rank is read at run time, and each row reads its thread's columns of V^T, S and
// the step's scalars again (a row's weight store may alias them as far as the compiler knows).
// RK > 0 (r == k == KC == RK, one launch, l0 = 0): those are read into registers once per thread;
// the same operations in the same order, so the same bits. The RK > 0 kernels are launched only
// in builds with the cargo feature `cuda-rank-projection` (src/cuda/backend.rs) until a GPU run
// has checked and timed them.

template <int KC, int RK>
__device__ void project_impl(const Ctrl* c, Ptrs p, Io io, u32 l0, u32 update) {
    __shared__ float red[PJ_SLABS][PJ_COLS * PJ_VEC];
    if (c->skip) return;
    const u32 m = p.m, n = p.n, r = RK > 0 ? (u32)RK : p.r, k = p.k, moments = p.moments;
    const u32 tx = threadIdx.x, ty = threadIdx.y;
    const u32 j0 = (blockIdx.x * PJ_COLS + tx) * PJ_VEC;
    const u32 count = j0 < n ? min(PJ_VEC, n - j0) : 0u;  // columns of this thread
    const u32 slabs = PJ_SLABS * p.grid_slabs;
    const u32 slab = blockIdx.y * PJ_SLABS + ty;
    const u32 rows_per_slab = (m + slabs - 1) / slabs;
    const u32 row_begin = min(m, slab * rows_per_slab), row_end = min(m, row_begin + rows_per_slab);
    // Compile-time loops over moments, columns and Q's columns (guarded): the accumulators
    // stay in registers.
    float acc[MAX_MOMENTS][KC][PJ_VEC];
#pragma unroll
    for (int b = 0; b < MAX_MOMENTS; ++b)
#pragma unroll
        for (int q = 0; q < KC; ++q)
#pragma unroll
            for (int v = 0; v < PJ_VEC; ++v) acc[b][q][v] = 0.0f;
    if (count > 0) {
        const float grad_factor = c->grad_factor;
        // RK > 0: the row-independent operands in registers (sized 1 and unused when RK = 0).
        constexpr int RR = RK > 0 ? RK : 1;
        float sv[MAX_MOMENTS][RR], vtr[MAX_MOMENTS][RR][PJ_VEC];
        StepRegs sr;
        if constexpr (RK > 0) {
            sr = step_regs(c);
#pragma unroll
            for (int mo = 0; mo < MAX_MOMENTS; ++mo)
#pragma unroll
                for (int l = 0; l < RK; ++l) {
                    const bool here = mo < (int)moments;
                    sv[mo][l] = here ? __ldg(p.s[mo] + l) : 0.0f;
                    load4_ldg(here ? p.vt[mo] + (u64)l * n + j0 : nullptr, here ? count : 0u, vtr[mo][l]);
                }
        }
        const auto sc = [&]() {
            if constexpr (RK > 0) return &sr;
            else return c;
        }();
        for (u32 batch = row_begin; batch < row_end; batch += PJ_BATCH) {
            // A batch's gradients and weights are loaded first, so PJ_BATCH rows of memory
            // traffic are in flight at once; the rows are then summed in order.
            float g[PJ_BATCH][PJ_VEC], w[PJ_BATCH][PJ_VEC];
#pragma unroll
            for (int b = 0; b < PJ_BATCH; ++b) {
                const u32 i = batch + b;
                const u64 e = (u64)i * n + j0;
                load4(io.grad, io.grad_dtype, e, i < row_end ? count : 0u, g[b]);
                load4(io.param, io.param_dtype, e, (update && i < row_end) ? count : 0u, w[b]);
#pragma unroll
                for (int v = 0; v < PJ_VEC; ++v) g[b][v] *= grad_factor;
            }
#pragma unroll
            for (int b = 0; b < PJ_BATCH; ++b) {
                const u32 i = batch + b;
                if (i < row_end) {
                    float olds[MAX_MOMENTS][PJ_VEC], news[MAX_MOMENTS][PJ_VEC];
#pragma unroll
                    for (int mo = 0; mo < MAX_MOMENTS; ++mo) {
#pragma unroll
                        for (int v = 0; v < PJ_VEC; ++v) {
                            olds[mo][v] = 0.0f;
                            news[mo][v] = 0.0f;
                        }
                        if (mo < (int)moments) {
                            // Factors and Q are read-only in this kernel (__ldg): their loads
                            // need not wait for the weight stores of earlier rows.
                            const float* urow = p.u[mo] + (u64)i * r;
                            float rebuilt[PJ_VEC];
#pragma unroll
                            for (int v = 0; v < PJ_VEC; ++v) rebuilt[v] = 0.0f;
                            if constexpr (RK > 0) {
#pragma unroll
                                for (int l = 0; l < RK; ++l) {
                                    const float us = __ldg(urow + l) * sv[mo][l];
#pragma unroll
                                    for (int v = 0; v < PJ_VEC; ++v) rebuilt[v] = fmaf(us, vtr[mo][l][v], rebuilt[v]);
                                }
                            } else {
                                for (u32 l = 0; l < r; ++l) {
                                    const float us = __ldg(urow + l) * __ldg(p.s[mo] + l);
                                    float vt[PJ_VEC];
                                    load4_ldg(p.vt[mo] + (u64)l * n + j0, count, vt);
#pragma unroll
                                    for (int v = 0; v < PJ_VEC; ++v) rebuilt[v] = fmaf(us, vt[v], rebuilt[v]);
                                }
                            }
#pragma unroll
                            for (int v = 0; v < PJ_VEC; ++v) moment_step(sc, mo, rebuilt[v], g[b][v], &olds[mo][v], &news[mo][v]);
#pragma unroll
                            for (int q = 0; q < KC; ++q) {
                                const float ql = l0 + q < k ? __ldg(p.yt[mo] + (u64)(l0 + q) * m + i) : 0.0f;
#pragma unroll
                                for (int v = 0; v < PJ_VEC; ++v) acc[mo][q][v] = fmaf(ql, news[mo][v], acc[mo][q][v]);
                            }
                        }
                    }
                    if (update) {
                        float wn[PJ_VEC];
#pragma unroll
                        for (int v = 0; v < PJ_VEC; ++v)
                            wn[v] = sc->adamw ? adamw_update(sc, w[b][v], news[0][v], news[1][v]) : lion_update(sc, w[b][v], olds[0][v], g[b][v]);
                        store4(io.param, io.param_dtype, (u64)i * n + j0, count, wn, c);
                    }
                }
            }
        }
    }
#pragma unroll
    for (int mo = 0; mo < MAX_MOMENTS; ++mo) {
        if (mo < (int)moments) {  // uniform across the block: the barriers are safe
#pragma unroll
            for (int q = 0; q < KC; ++q) {
                __syncthreads();
#pragma unroll
                for (int v = 0; v < PJ_VEC; ++v) red[ty][tx * PJ_VEC + v] = acc[mo][q][v];
                __syncthreads();
                if (ty == 0 && l0 + q < k) {
                    for (u32 v = 0; v < count; ++v) {
                        float t = red[0][tx * PJ_VEC + v];
                        for (u32 y = 1; y < PJ_SLABS; ++y) t += red[y][tx * PJ_VEC + v];
                        p.part[(((u64)blockIdx.y * moments + mo) * k + (l0 + q)) * n + j0 + v] = t;
                    }
                }
            }
        }
    }
}

#define PROJECT_KERNEL(KC) \
    extern "C" __global__ void __launch_bounds__(PJ_COLS * PJ_SLABS) mlorc_project_k##KC(const Ctrl* c, Ptrs p, Io io, u32 l0, u32 update) { \
        project_impl<KC, 0>(c, p, io, l0, update); \
    }
PROJECT_KERNEL(1)
PROJECT_KERNEL(2)
PROJECT_KERNEL(4)
PROJECT_KERNEL(8)

#define PROJECT_RANK_KERNEL(RK) \
    extern "C" __global__ void __launch_bounds__(PJ_COLS * PJ_SLABS) mlorc_project_r##RK(const Ctrl* c, Ptrs p, Io io, u32 update) { \
        project_impl<RK, RK>(c, p, io, 0u, update); \
    }
PROJECT_RANK_KERNEL(1)
PROJECT_RANK_KERNEL(2)
PROJECT_RANK_KERNEL(4)
PROJECT_RANK_KERNEL(8)

// bt[mo][l][j] = part[0][mo][l][j] + part[1][mo][l][j] + ... in order.
extern "C" __global__ void mlorc_project_reduce(const Ctrl* c, Ptrs p) {
    if (c->skip) return;
    u64 total = (u64)p.moments * p.k * p.n;
    for (u64 e = (u64)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (u64)gridDim.x * blockDim.x) {
        float t = p.part[e];
        for (u32 s = 1; s < p.grid_slabs; ++s) t += p.part[(u64)s * total + e];
        u32 mo = (u32)(e / ((u64)p.k * p.n));
        p.bt[mo][e % ((u64)p.k * p.n)] = t;
    }
}

// ---------------------------------------------------------------------------------------------
// Small factorizations, one block per moment (linalg.rs).

#define DEPENDENT_COLUMN_TOL (32.0 * 1.1920928955078125e-7)
#define SINGULAR_VALUE_TOL 1e-6

// Columns of a k x len column-contiguous f32 matrix (yt: len = m, or bt: len = n) made
// orthonormal in place by CGS2 in f64 (linalg::orthonormalize_columns): dependent columns
// become zero. Block = ORTH_THREADS threads, blockIdx.x = moment. `which`: 0 = yt, 1 = bt.
// `in_shared`: the launch gave k * len doubles of shared memory for the f64 columns (each of
// the ~k^2 dependent reductions then waits on shared memory, not L2); else they live in dwork.
extern "C" __global__ void __launch_bounds__(ORTH_THREADS) mlorc_orthonormalize(const Ctrl* c, Ptrs p, u32 which, u32 in_shared) {
    __shared__ double scratch[33];
    __shared__ double scale_sh;
    extern __shared__ double orth_shared[];
    if (c->skip) return;
    const u32 mo = blockIdx.x, k = p.k;
    const u32 len = which == 0 ? p.m : p.n;
    float* a = which == 0 ? p.yt[mo] : p.bt[mo];
    const u32 stride_max = p.m > p.n ? p.m : p.n;
    double* cols = in_shared ? orth_shared : p.dwork + (u64)mo * k * stride_max;
    // kept[l] lives in the small workspace's sigma slot: 1.0 kept, 0.0 not.
    double* kept = p.small + (u64)mo * (2 * (u64)k * k + k) + 2 * (u64)k * k;
    for (u64 e = threadIdx.x; e < (u64)k * len; e += blockDim.x) cols[e] = (double)a[e];
    __syncthreads();
    double scale = 0.0;
    for (u32 l = 0; l < k; ++l) {
        double part = 0.0;
        for (u32 i = threadIdx.x; i < len; i += blockDim.x) part += cols[(u64)l * len + i] * cols[(u64)l * len + i];
        double nrm = sqrt(block_sum_f64(part, scratch));
        scale = fmax(scale, nrm);
    }
    if (threadIdx.x == 0) scale_sh = scale;
    __syncthreads();
    const double threshold = DEPENDENT_COLUMN_TOL * scale_sh;
    for (u32 l = 0; l < k; ++l) {
        double* x = cols + (u64)l * len;
        for (int pass = 0; pass < 2; ++pass) {
            for (u32 b = 0; b < l; ++b) {
                if (kept[b] == 0.0) continue;
                const double* q = cols + (u64)b * len;
                double part = 0.0;
                for (u32 i = threadIdx.x; i < len; i += blockDim.x) part += q[i] * x[i];
                double d = block_sum_f64(part, scratch);
                for (u32 i = threadIdx.x; i < len; i += blockDim.x) x[i] -= d * q[i];
                __syncthreads();
            }
        }
        double part = 0.0;
        for (u32 i = threadIdx.x; i < len; i += blockDim.x) part += x[i] * x[i];
        double nrm = sqrt(block_sum_f64(part, scratch));
        bool keep = nrm > threshold && nrm > 0.0;
        for (u32 i = threadIdx.x; i < len; i += blockDim.x) x[i] = keep ? x[i] / nrm : 0.0;
        if (threadIdx.x == 0) kept[l] = keep ? 1.0 : 0.0;
        __syncthreads();
    }
    for (u64 e = threadIdx.x; e < (u64)k * len; e += blockDim.x) a[e] = (float)cols[e];
}

// Total order of f64 (f64::total_cmp) as a signed integer key.
__device__ __forceinline__ long long total_key(double x) {
    long long b = __double_as_longlong(x);
    return b ^ (long long)(((unsigned long long)(b >> 63)) >> 1);
}

// Gram matrix B B^T (k x k, f64) from bt, its eigen-decomposition by cyclic Jacobi
// (linalg::symmetric_eigen, same rotation sequence), sorted descending (ties by index), and the
// kept singular values: s[mo] written, small = [vectors k x k | work k x k | sigma k].
// The Gram matrix and the rotations live in shared memory when the launch provides 2 k^2
// doubles of it (k <= GRAM_SHARED_K), else in the workspace: Jacobi's serial steps wait on
// every access.
extern "C" __global__ void __launch_bounds__(ORTH_THREADS) mlorc_gram_eigen(const Ctrl* c, Ptrs p) {
    __shared__ double scratch[33];
    extern __shared__ double gram_shared[];
    if (c->skip) return;
    const u32 mo = blockIdx.x, k = p.k, n = p.n, r = p.r;
    const bool in_shared = k <= GRAM_SHARED_K;
    const float* bt = p.bt[mo];
    double* base = p.small + (u64)mo * (2 * (u64)k * k + k);
    double* vecs = base;            // sorted eigenvectors (columns)
    double* a = in_shared ? gram_shared : base + (u64)k * k;  // Gram, then rotated in place
    double* sigma = base + 2 * (u64)k * k;
    // Rotations accumulate here.
    double* w = in_shared ? gram_shared + (u64)k * k : p.dwork + (u64)mo * k * (p.m > p.n ? p.m : p.n);
    if (k <= GRAM_FUSED_K) {
        // Every entry's per-thread sum in one sweep over the columns (each entry's order as in
        // the loop below), then one barrier for all the block sums.
        __shared__ double gram_part[ORTH_THREADS / 32][GRAM_FUSED_K * (GRAM_FUSED_K + 1) / 2];
        double part[GRAM_FUSED_K * (GRAM_FUSED_K + 1) / 2];
#pragma unroll
        for (int e = 0; e < GRAM_FUSED_K * (GRAM_FUSED_K + 1) / 2; ++e) part[e] = 0.0;
        for (u32 j = threadIdx.x; j < n; j += blockDim.x) {
            double col[GRAM_FUSED_K];
#pragma unroll
            for (int x = 0; x < GRAM_FUSED_K; ++x) col[x] = x < (int)k ? (double)bt[(u64)x * n + j] : 0.0;
            int e = 0;
#pragma unroll
            for (int x = 0; x < GRAM_FUSED_K; ++x)
#pragma unroll
                for (int y = x; y < GRAM_FUSED_K; ++y) part[e++] += col[x] * col[y];
        }
        const u32 lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
#pragma unroll
        for (int e = 0; e < GRAM_FUSED_K * (GRAM_FUSED_K + 1) / 2; ++e) {
            double t = warp_sum_f64(part[e]);
            if (lane == 0) gram_part[warp][e] = t;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            int e = 0;
            for (int x = 0; x < GRAM_FUSED_K; ++x)
                for (int y = x; y < GRAM_FUSED_K; ++y, ++e) {
                    if (y >= (int)k) continue;
                    double g = gram_part[0][e];
                    for (u32 ww = 1; ww < (blockDim.x >> 5); ++ww) g += gram_part[ww][e];
                    a[x * k + y] = g;
                    a[y * k + x] = g;
                }
        }
    } else {
        for (u32 x = 0; x < k; ++x) {
            for (u32 y = x; y < k; ++y) {
                double part = 0.0;
                for (u32 j = threadIdx.x; j < n; j += blockDim.x) part += (double)bt[(u64)x * n + j] * (double)bt[(u64)y * n + j];
                double g = block_sum_f64(part, scratch);
                if (threadIdx.x == 0) {
                    a[x * k + y] = g;
                    a[y * k + x] = g;
                }
            }
        }
    }
    for (u32 e = threadIdx.x; e < k * k; e += blockDim.x) w[e] = (e / k == e % k) ? 1.0 : 0.0;
    __syncthreads();
    // Jacobi on the first warp only (k x k is small): warp barriers, no block-wide ones.
    if (threadIdx.x >= 32) return;
    const u32 lane = threadIdx.x;
    double total = 0.0;
    if (lane == 0)
        for (u32 e = 0; e < k * k; ++e) total += a[e] * a[e];
    for (int sweep = 0; sweep < 64; ++sweep) {
        int more = 0;
        if (lane == 0) {
            double off = 0.0;
            for (u32 i = 0; i < k; ++i)
                for (u32 jj = 0; jj < k; ++jj)
                    if (jj != i) off += a[i * k + jj] * a[i * k + jj];
            more = !(off <= 1e-30 * total || off == 0.0);
        }
        if (!__shfl_sync(0xFFFFFFFFu, more, 0)) break;
        for (u32 pp = 0; pp < k; ++pp) {
            for (u32 q = pp + 1; q < k; ++q) {
                double apq = a[pp * k + q];
                double app = a[pp * k + pp], aqq = a[q * k + q];
                __syncwarp();
                if (apq == 0.0) continue;
                double theta = (aqq - app) / (2.0 * apq);
                double sgn = theta > 0.0 ? 1.0 : (theta < 0.0 ? -1.0 : 0.0);
                // f64::signum gives 1 for +0.0; theta == 0 is handled below, so only the sign
                // of a non-zero theta matters here.
                double t = sgn / (fabs(theta) + sqrt(theta * theta + 1.0));
                if (theta == 0.0) t = 1.0;
                double cs = 1.0 / sqrt(t * t + 1.0);
                double sn = t * cs;
                for (u32 row = lane; row < k; row += 32) {
                    double arp = a[row * k + pp], arq = a[row * k + q];
                    a[row * k + pp] = cs * arp - sn * arq;
                    a[row * k + q] = sn * arp + cs * arq;
                }
                __syncwarp();
                for (u32 col = lane; col < k; col += 32) {
                    double apr = a[pp * k + col], aqr = a[q * k + col];
                    a[pp * k + col] = cs * apr - sn * aqr;
                    a[q * k + col] = sn * apr + cs * aqr;
                    double wrp = w[col * k + pp], wrq = w[col * k + q];
                    w[col * k + pp] = cs * wrp - sn * wrq;
                    w[col * k + q] = sn * wrp + cs * wrq;
                }
                __syncwarp();
            }
        }
    }
    __syncwarp();
    if (threadIdx.x == 0) {
        // Stable selection of the order: by value descending (total order), ties by index.
        // The order is kept in sigma[] temporarily as indices, then replaced by values.
        for (u32 dst = 0; dst < k; ++dst) {
            int best = -1;
            for (u32 cand = 0; cand < k; ++cand) {
                bool used = false;
                for (u32 d2 = 0; d2 < dst; ++d2) used |= ((u32)sigma[d2] == cand);
                if (used) continue;
                if (best < 0 || total_key(a[cand * k + cand]) > total_key(a[best * k + best])) best = (int)cand;
            }
            sigma[dst] = (double)best;
        }
        for (u32 dst = 0; dst < k; ++dst) {
            u32 src = (u32)sigma[dst];
            for (u32 row = 0; row < k; ++row) vecs[row * k + dst] = w[row * k + src];
        }
        double top = 0.0;
        for (u32 l = 0; l < k; ++l) {
            u32 src = (u32)sigma[l];
            w[l] = a[src * k + src];  // w is no longer needed: sorted eigenvalues
        }
        top = sqrt(fmax(w[0], 0.0));
        for (u32 l = 0; l < k; ++l) {
            double sl = sqrt(fmax(w[l], 0.0));
            double kept = (l < r && sl > SINGULAR_VALUE_TOL * top && sl > 0.0) ? sl : 0.0;
            sigma[l] = kept;
            if (l < r) p.s[mo][l] = (float)kept;
        }
    }
}

// New factors: u[i][l] = sum_p Q[i][p] vecs[p][l], v[j][l] = sum_p B^T[j][p] (vecs[p][l] / sigma[l])
// (zero where sigma is 0), as linalg::truncated_svd. One thread per output element of every moment.
extern "C" __global__ void mlorc_compose(const Ctrl* c, Ptrs p) {
    if (c->skip) return;
    const u32 m = p.m, n = p.n, r = p.r, k = p.k;
    u64 per = (u64)(m + n) * r;
    u64 total = per * p.moments;
    for (u64 e = (u64)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (u64)gridDim.x * blockDim.x) {
        u32 mo = (u32)(e / per);
        u64 rest = e % per;
        u32 row = (u32)(rest / r), l = (u32)(rest % r);
        const double* base = p.small + (u64)mo * (2 * (u64)k * k + k);
        const double* vecs = base;
        double sl = base[2 * (u64)k * k + l];
        if (row < m) {
            double acc = 0.0;
            if (sl > 0.0)
                for (u32 q = 0; q < k; ++q) acc += (double)p.yt[mo][(u64)q * m + row] * vecs[q * k + l];
            p.u[mo][(u64)row * r + l] = sl > 0.0 ? (float)acc : 0.0f;
        } else {
            u32 j = row - m;
            double acc = 0.0;
            if (sl > 0.0)
                for (u32 q = 0; q < k; ++q) acc += (double)p.bt[mo][(u64)q * n + j] * (vecs[q * k + l] / sl);
            p.v[mo][(u64)j * r + l] = sl > 0.0 ? (float)acc : 0.0f;
        }
    }
}
