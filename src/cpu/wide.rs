//! Kernels sixteen lanes wide, in AVX-512 registers, for the build that runs on CPUs with
//! AVX-512 (`Avx<true>`): the projection pass (f32 gradients and weights), AdamW's sketch (f32
//! gradients, rank = k) and the non-negativity sweep. Every lane gets the operations of the
//! eight-lane kernel in `tile` in the same order, so the results are the same bits:
//! - the projection takes two adjacent column groups per register (rebuild, fix, mix and
//!   update are per element; each column's Bᵀ sum still runs down the rows);
//! - the sketch and the sweep take one column group of two rows per register (each lane still
//!   sums its row's groups in column order).
//! Twice the lanes per instruction halve the instructions of the arithmetic. On the Zen 4
//! machine of BENCHMARKS.md that arithmetic no longer bounds the passes: leaving out AdamW's
//! division and square root, or the second moment's rebuild, barely changed a pass's time.
//!
//! The workspaces keep their eight-lane layout: two adjacent groups are one 16-float load; two
//! groups `rank` vectors apart, or one group for both halves, are built from 8-float loads.
//! Closures are avoided in this module: they would not inherit its target features.

use std::arch::x86_64::*;

use super::lanes::{Arith, Avx, Lanes, F8, H8};
use super::tile::{update_adamw, update_lion, MomentTerms};
use crate::step::StepScalars;

/// One AVX-512 register of sixteen f32 lanes. Its methods are only reached from functions
/// compiled with AVX-512F enabled (the `pub unsafe fn`s below), which run only where the CPU
/// has it.
#[derive(Clone, Copy)]
pub struct Zmm(());

// SAFETY (every method): reached only on CPUs with AVX-512F (see above); the intrinsics touch
// registers only. Each is the sixteen-lane form of `Avx`'s instruction (same IEEE operation).
impl Arith for Zmm {
    type V = __m512;
    #[inline(always)]
    fn splat(x: f32) -> __m512 {
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    fn add(a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    fn mul(a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[inline(always)]
    fn mul_add(a: __m512, b: __m512, c: __m512) -> __m512 {
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn div(a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_div_ps(a, b) }
    }
    #[inline(always)]
    fn sqrt(a: __m512) -> __m512 {
        unsafe { _mm512_sqrt_ps(a) }
    }
    #[inline(always)]
    fn fill_negative(x: __m512, fill: __m512) -> __m512 {
        unsafe { _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_setzero_ps()), x, fill) }
    }
    #[inline(always)]
    fn negative_magnitude(x: __m512) -> __m512 {
        unsafe {
            let zero = _mm512_setzero_ps();
            _mm512_maskz_sub_ps(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, zero), zero, x)
        }
    }
    #[inline(always)]
    fn negative_indicator(x: __m512) -> __m512 {
        unsafe { _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_setzero_ps()), _mm512_set1_ps(1.0)) }
    }
    #[inline(always)]
    fn sign(x: __m512) -> __m512 {
        unsafe {
            let zero = _mm512_setzero_ps();
            let positive = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, zero), _mm512_set1_ps(1.0));
            _mm512_mask_mov_ps(positive, _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, zero), _mm512_set1_ps(-1.0))
        }
    }
}

/// Elements `at .. at + 16` of a row of f32 (`BF16` false) or bf16 values (true), as f32
/// (bf16 widening is exact).
///
/// # Safety
/// Those elements are readable.
#[inline(always)]
unsafe fn load16<const BF16: bool>(row: *const u8, at: usize) -> __m512 {
    unsafe {
        if BF16 {
            let halves = _mm256_loadu_si256(row.cast::<u16>().add(at).cast());
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(halves)))
        } else {
            _mm512_loadu_ps(row.cast::<f32>().add(at))
        }
    }
}

/// Stores sixteen lanes at elements `at .. at + 16` of a row of f32 or bf16 values; bf16 rounded
/// as `Lanes::store_bf16` (nearest even; NaN stays NaN, quieted).
///
/// # Safety
/// Those elements are writable.
#[inline(always)]
unsafe fn store16<const BF16: bool>(row: *mut u8, at: usize, v: __m512) {
    unsafe {
        if BF16 {
            let b = _mm512_castps_si512(v);
            let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(1));
            let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(b, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))));
            let quiet_nan = _mm512_or_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(0x0040));
            let magnitude = _mm512_and_si512(b, _mm512_set1_epi32(0x7fff_ffff));
            let nan = _mm512_cmpgt_epi32_mask(magnitude, _mm512_set1_epi32(0x7f80_0000));
            // Every lane is below 2^16: narrowing keeps it whole.
            let bits = _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(nan, rounded, quiet_nan));
            _mm256_storeu_si256(row.cast::<u16>().add(at).cast(), bits);
        } else {
            _mm512_storeu_ps(row.cast::<f32>().add(at), v);
        }
    }
}

/// Vector `l` of column groups `group` and `group + 1` of a group-major V (`rank` vectors per
/// group).
///
/// # Safety
/// Both groups lie inside `vg`.
#[inline(always)]
unsafe fn v_pair(vg: *const F8, rank: usize, group: usize, l: usize) -> __m512 {
    unsafe { rows_pair(_mm256_loadu_ps(vg.add(group * rank + l) as *const f32), _mm256_loadu_ps(vg.add((group + 1) * rank + l) as *const f32)) }
}

/// Row `row` of U·diag(S)·Vᵀ on column groups `group`, `group + 1`: the operations of
/// `tile::rebuild_fixed`, in its order.
#[inline(always)]
unsafe fn rebuild_pair<const RANK: usize>(us: &[__m512; RANK], vg: *const F8, group: usize) -> __m512 {
    let mut out = Zmm::zero();
    for (l, &u) in us.iter().enumerate() {
        // SAFETY: the caller's contract.
        out = Zmm::mul_add(u, unsafe { v_pair(vg, RANK, group, l) }, out);
    }
    out
}

/// bacc[(first + l)·bstride + gi .. + 2] += Σ_r q[r][l]·news[r], rows in order: the sums of
/// `tile::project_rows_fixed` for two groups at once.
#[inline(always)]
unsafe fn accumulate<const R: usize, const K: usize>(bacc: *mut F8, q: &[[f32; K]; R], first: usize, bstride: usize, gi: usize, news: &[__m512; R]) {
    for l in 0..K {
        // SAFETY: the caller's contract (both groups of row first + l lie inside bacc).
        unsafe {
            let dst = bacc.add((first + l) * bstride + gi) as *mut f32;
            let mut acc = _mm512_loadu_ps(dst);
            for r in 0..R {
                acc = Zmm::mul_add(Zmm::splat(q[r][l]), news[r], acc);
            }
            _mm512_storeu_ps(dst, acc);
        }
    }
}

/// `tile::project_rows_fixed` for gradient rows and weights (updated in place when given) both
/// f32 (`BF16` false) or both bf16 (true), on the first `2·⌊groups/2⌋` column groups; returns
/// how many groups it did (the caller does the last one, if any, eight lanes wide).
///
/// # Safety
/// The CPU has AVX-512F; `moments`, `qs`, `grads`, `bacc` and `weights` satisfy the bounds that
/// `project_rows_fixed` asserts (every `grads[r]` and `weights[r]` holds `groups` groups, bacc
/// `(count·K − 1)·bstride + groups`, qs rows `row0 .. row0 + R` of K values).
#[target_feature(enable = "avx512f")]
pub unsafe fn project_rows_wide<const R: usize, const ADAMW: bool, const RANK: usize, const K: usize, const BF16: bool>(
    moments: &[MomentTerms],
    qs: &[&[f32]],
    row0: usize,
    group0: usize,
    groups: usize,
    grads: [*const u8; R],
    bacc: *mut F8,
    bstride: usize,
    update: Option<(&StepScalars, [*mut u8; R])>,
) -> usize {
    let count = if ADAMW { 2 } else { 1 };
    let mut us = [[[Zmm::zero(); RANK]; R]; 2];
    let mut q = [[[0f32; K]; R]; 2];
    let mut vgs: [*const F8; 2] = [std::ptr::null(); 2];
    for mo in 0..count {
        for r in 0..R {
            us[mo][r] = row_splats::<RANK>(&moments[mo], row0 + r);
            q[mo][r].copy_from_slice(&qs[mo][(row0 + r) * K..(row0 + r + 1) * K]);
        }
        vgs[mo] = moments[mo].vg[group0 * RANK..].as_ptr();
    }
    let fill = Zmm::splat(if ADAMW { moments[1].fill } else { 0.0 });
    // Without an update the first moment's rebuild is left to the caller (`tile::project_rows`).
    let first_low_rank = update.is_none();
    let first_weight = Zmm::splat(moments[0].weight);
    let pairs = groups / 2;
    for gi in (0..2 * pairs).step_by(2) {
        // SAFETY (every access below): gi + 1 < groups, inside every operand (the contract).
        let mut g = [Zmm::zero(); R];
        for r in 0..R {
            g[r] = unsafe { load16::<BF16>(grads[r], gi * 8) };
        }
        let mut olds = [Zmm::zero(); R];
        let mut firsts = [Zmm::zero(); R];
        for r in 0..R {
            if first_low_rank {
                firsts[r] = Zmm::mul(first_weight, g[r]);
            } else {
                olds[r] = unsafe { rebuild_pair::<RANK>(&us[0][r], vgs[0], gi) };
                firsts[r] = moments[0].mix::<Zmm>(olds[r], g[r]);
            }
        }
        unsafe { accumulate::<R, K>(bacc, &q[0], 0, bstride, gi, &firsts) };
        let mut seconds = [Zmm::zero(); R];
        if ADAMW {
            for r in 0..R {
                let old = Zmm::fill_negative(unsafe { rebuild_pair::<RANK>(&us[1][r], vgs[1], gi) }, fill);
                seconds[r] = moments[1].mix::<Zmm>(old, Zmm::mul(g[r], g[r]));
            }
            unsafe { accumulate::<R, K>(bacc, &q[1], K, bstride, gi, &seconds) };
        }
        if let Some((scalars, weights)) = update {
            for r in 0..R {
                let w = unsafe { load16::<BF16>(weights[r], gi * 8) };
                let w = if ADAMW { update_adamw::<Zmm>(scalars, w, firsts[r], seconds[r]) } else { update_lion::<Zmm>(scalars, w, olds[r], g[r]) };
                unsafe { store16::<BF16>(weights[r], gi * 8, w) };
            }
        }
    }
    2 * pairs
}

/// Row `row` of U·diag(S) as splats (`MomentTerms::row_splats`, whose closure would not
/// inherit this module's target features).
#[inline(always)]
fn row_splats<const N: usize>(terms: &MomentTerms, row: usize) -> [__m512; N] {
    let a: &[f32; N] = terms.us[row * N..(row + 1) * N].try_into().expect("a row of U·S has N values");
    let mut out = [Zmm::zero(); N];
    for l in 0..N {
        out[l] = Zmm::splat(a[l]);
    }
    out
}

/// Rows `rows[0]` and `rows[1]` of U·diag(S) as splats, one row per half. Plain loops, no
/// closures: a closure would not inherit this module's target features.
///
/// # Safety
/// The CPU has AVX-512F.
#[inline(always)]
unsafe fn pair_splats<const N: usize>(terms: &MomentTerms, rows: [usize; 2]) -> [__m512; N] {
    let a: &[f32; N] = terms.us[rows[0] * N..(rows[0] + 1) * N].try_into().expect("a row of U·S has N values");
    let b: &[f32; N] = terms.us[rows[1] * N..(rows[1] + 1) * N].try_into().expect("a row of U·S has N values");
    let mut out = [Zmm::zero(); N];
    for l in 0..N {
        // SAFETY: registers only.
        out[l] = unsafe { rows_pair(_mm256_set1_ps(a[l]), _mm256_set1_ps(b[l])) };
    }
    out
}

/// Elements `at .. at + 8` (`at` a multiple of 8) of a row of f32 or bf16 values, as f32: the
/// eight-lane loads of `Avx`.
///
/// # Safety
/// Those elements are readable.
#[inline(always)]
unsafe fn load8<const BF16: bool>(row: *const u8, at: usize) -> __m256 {
    // SAFETY: the caller's contract; F8 and H8 need the alignment of one element.
    unsafe {
        if BF16 {
            Avx::<true>::load_bf16(&*row.cast::<H8>().add(at / 8))
        } else {
            Avx::<true>::load(&*row.cast::<F8>().add(at / 8))
        }
    }
}

/// `a`'s eight lanes in the low half, `b`'s in the high half (insertf64x4 rather than
/// insertf32x8: the same bits moved, and AVX-512F only).
#[inline(always)]
unsafe fn rows_pair(a: __m256, b: __m256) -> __m512 {
    unsafe { _mm512_castpd_ps(_mm512_insertf64x4::<1>(_mm512_castps_pd(_mm512_castps256_ps512(a)), _mm256_castps_pd(b))) }
}

/// The same eight lanes in both halves.
///
/// # Safety
/// `p .. p + 8` is readable.
#[inline(always)]
unsafe fn both_halves(p: *const F8) -> __m512 {
    unsafe { _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(_mm256_loadu_ps(p as *const f32)))) }
}

/// `tile::sketch_chunk_both` for two rows at once: lanes 0–7 are row `rows[0]`, lanes 8–15 row
/// `rows[1]`, each lane with the operations of the eight-lane kernel in its order (the
/// accumulators still sum each row's groups in column order), so the same bits. `acc` holds
/// both rows' accumulators between chunks: [moment][l][lane]. `betas` is the second moment's β
/// per row: 0 for a row whose chunk the caller adds as a low-rank product (as
/// `MomentTerms::sketched` without the rebuild: the same bits); without `REBUILD` neither row's
/// rebuild is made and `betas` is not read.
///
/// # Safety
/// The CPU has AVX-512F; `grads[0]` and `grads[1]` each hold `groups` groups of f32
/// (`BF16` false) or bf16 (true), and `x0`, `x1` and `terms.vg` hold K vectors for each group
/// `group0 .. group0 + groups`.
#[target_feature(enable = "avx512f")]
pub unsafe fn sketch_chunk_both_pair<const K: usize, const BF16: bool, const REBUILD: bool>(
    terms: &MomentTerms,
    x0: &[F8],
    x1: &[F8],
    rows: [usize; 2],
    betas: [f32; 2],
    group0: usize,
    groups: usize,
    grads: [*const u8; 2],
    acc: &mut [[[f32; 16]; K]; 2],
) {
    // SAFETY (every intrinsic below): registers, and the operands' bounds (the contract).
    let us = unsafe { pair_splats::<K>(terms, rows) };
    let beta = unsafe { rows_pair(_mm256_set1_ps(betas[0]), _mm256_set1_ps(betas[1])) };
    let (fill, weight) = (Zmm::splat(terms.fill), Zmm::splat(terms.weight));
    let (mut acc0, mut acc1) = ([Zmm::zero(); K], [Zmm::zero(); K]);
    for l in 0..K {
        unsafe {
            acc0[l] = _mm512_loadu_ps(acc[0][l].as_ptr());
            acc1[l] = _mm512_loadu_ps(acc[1][l].as_ptr());
        }
    }
    let (vg, x0, x1) = (terms.vg.as_ptr(), x0.as_ptr(), x1.as_ptr());
    for gi in 0..groups {
        let group = group0 + gi;
        let g = unsafe { rows_pair(load8::<BF16>(grads[0], gi * 8), load8::<BF16>(grads[1], gi * 8)) };
        for l in 0..K {
            acc0[l] = Zmm::mul_add(g, unsafe { both_halves(x0.add(group * K + l)) }, acc0[l]);
        }
        let new = if REBUILD {
            let mut old = Zmm::zero();
            for l in 0..K {
                old = Zmm::mul_add(us[l], unsafe { both_halves(vg.add(group * K + l)) }, old);
            }
            let old = Zmm::fill_negative(old, fill);
            Zmm::mul_add(beta, old, Zmm::mul(weight, Zmm::mul(g, g)))
        } else {
            Zmm::mul(weight, Zmm::mul(g, g))
        };
        for l in 0..K {
            acc1[l] = Zmm::mul_add(new, unsafe { both_halves(x1.add(group * K + l)) }, acc1[l]);
        }
    }
    for l in 0..K {
        unsafe {
            _mm512_storeu_ps(acc[0][l].as_mut_ptr(), acc0[l]);
            _mm512_storeu_ps(acc[1][l].as_mut_ptr(), acc1[l]);
        }
    }
}

/// `tile::negatives_chunk_fixed` for two rows at once (lanes 0–7 row `rows[0]`, 8–15 row
/// `rows[1]`; the same operations per lane in the same order, so the same bits): each row's
/// sum of |x| and count of the negative entries of U·diag(S)·Vᵀ over column groups `groups`.
///
/// # Safety
/// The CPU has AVX-512F; `terms.vg` holds RANK vectors for every group of `groups`.
#[target_feature(enable = "avx512f")]
pub unsafe fn negatives_chunk_pair<const RANK: usize>(terms: &MomentTerms, rows: [usize; 2], groups: std::ops::Range<usize>) -> [(f32, u32); 2] {
    // SAFETY (every intrinsic below): registers, and vg's bounds (the contract).
    let us = unsafe { pair_splats::<RANK>(terms, rows) };
    let mut sum = Zmm::zero();
    let mut count = Zmm::zero();
    let vg = terms.vg.as_ptr();
    for group in groups {
        let mut x = Zmm::zero();
        for (l, &u) in us.iter().enumerate() {
            x = Zmm::mul_add(u, unsafe { both_halves(vg.add(group * RANK + l)) }, x);
        }
        sum = Zmm::add(sum, Zmm::negative_magnitude(x));
        count = Zmm::add(count, Zmm::negative_indicator(x));
    }
    let (mut sums, mut counts) = ([0f32; 16], [0f32; 16]);
    unsafe {
        _mm512_storeu_ps(sums.as_mut_ptr(), sum);
        _mm512_storeu_ps(counts.as_mut_ptr(), count);
    }
    let mut out = [(0f32, 0u32); 2];
    for (h, o) in out.iter_mut().enumerate() {
        let lanes = h * 8..h * 8 + 8;
        let s: &F8 = sums[lanes.clone()].try_into().expect("eight lanes");
        let mut c = 0u32;
        for &x in &counts[lanes] {
            c += x as u32;
        }
        *o = (super::tile::sum_lanes(s), c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::lanes::{Lanes, Portable};

    /// Each operation on sixteen lanes gives the bits of the portable one on each half, on
    /// special values (signed zeros, infinities, NaN, tiny and huge numbers).
    #[test]
    fn zmm_and_portable_agree_bitwise() {
        if !std::is_x86_feature_detected!("avx512f") {
            eprintln!("SKIP: no AVX-512F");
            return;
        }
        let a: [f32; 16] = [1.5, -2.25, 0.0, -0.0, 3.0e-38, -7.0, f32::INFINITY, 1e30, f32::NAN, -1e-45, 2.0, -3.5, f32::NEG_INFINITY, 0.75, -0.0, 9.0];
        let b: [f32; 16] = [0.1, 3.0, -1.0, 2.0, 5.0, -0.5, 2.0, 1e-30, 1.0, 4.0, -0.0, 0.3, 1.0, f32::NAN, -2.0, 1e-40];
        #[target_feature(enable = "avx512f")]
        unsafe fn wide(a: &[f32; 16], b: &[f32; 16]) -> Vec<u32> {
            let (x, y) = unsafe { (_mm512_loadu_ps(a.as_ptr()), _mm512_loadu_ps(b.as_ptr())) };
            let ops = [
                Zmm::add(x, y),
                Zmm::mul(x, y),
                Zmm::mul_add(x, y, x),
                Zmm::div(x, y),
                Zmm::sqrt(Zmm::mul(x, x)),
                Zmm::fill_negative(x, y),
                Zmm::negative_magnitude(x),
                Zmm::negative_indicator(x),
                Zmm::sign(x),
            ];
            let mut out = Vec::new();
            for v in ops {
                let mut lanes = [0f32; 16];
                unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), v) };
                out.extend(lanes.iter().map(|x| x.to_bits()));
            }
            out
        }
        fn narrow(a: &[f32; 16], b: &[f32; 16]) -> Vec<u32> {
            let halves = |v: &[f32; 16]| -> [F8; 2] { [v[..8].try_into().unwrap(), v[8..].try_into().unwrap()] };
            let (ah, bh) = (halves(a), halves(b));
            let mut out = Vec::new();
            let ops: [fn(F8, F8) -> F8; 9] = [
                |x, y| Portable::add(x, y),
                |x, y| Portable::mul(x, y),
                |x, y| Portable::mul_add(x, y, x),
                |x, y| Portable::div(x, y),
                |x, _| Portable::sqrt(Portable::mul(x, x)),
                |x, y| Portable::fill_negative(x, y),
                |x, _| Portable::negative_magnitude(x),
                |x, _| Portable::negative_indicator(x),
                |x, _| Portable::sign(x),
            ];
            for op in ops {
                for h in 0..2 {
                    out.extend(Portable::to_array(op(ah[h], bh[h])).iter().map(|x| x.to_bits()));
                }
            }
            out
        }
        // SAFETY: the CPU has AVX-512F (checked above).
        assert_eq!(unsafe { wide(&a, &b) }, narrow(&a, &b));
    }

    /// bf16 loads and stores sixteen at a time against the half crate: values that round up,
    /// down and to even, overflow, NaNs, subnormals and 100,000 random bit patterns.
    #[test]
    fn bf16_loads_and_stores_match_the_half_crate() {
        if !std::is_x86_feature_detected!("avx512f") {
            eprintln!("SKIP: no AVX-512F");
            return;
        }
        let specials: [u32; 16] = [
            0x3f80_8000, 0x3f81_8000, 0x3f80_7fff, 0x7f7f_ffff, 0xff7f_8000, 0x7f80_0001, 0xffc0_0000, 0x7fbf_ffff,
            0x0000_8000, 0x8001_8000, 0x8000_0000, 0x0080_7fff, 0xff80_0000, 0xffff_ffff, 0x0000_0001, 0x4040_8001,
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut random = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u32
        };
        let values: Vec<f32> = specials.iter().map(|&b| f32::from_bits(b)).chain((0..100_000).map(|_| f32::from_bits(random()))).collect();
        #[target_feature(enable = "avx512f")]
        unsafe fn round_trip(values: &[f32]) -> (Vec<u16>, Vec<u32>) {
            let mut stored = vec![0u16; values.len()];
            let mut loaded = vec![0f32; values.len()];
            for at in (0..values.len()).step_by(16) {
                unsafe {
                    let v = load16::<false>(values.as_ptr().cast(), at);
                    store16::<true>(stored.as_mut_ptr().cast(), at, v);
                    store16::<false>(loaded.as_mut_ptr().cast(), at, load16::<true>(stored.as_ptr().cast(), at));
                }
            }
            (stored, loaded.iter().map(|x| x.to_bits()).collect())
        }
        let expected: Vec<u16> = values.iter().map(|&x| half::bf16::from_f32(x).to_bits()).collect();
        let widened: Vec<u32> = expected.iter().map(|&h| half::bf16::from_bits(h).to_f32().to_bits()).collect();
        assert_eq!(values.len() % 16, 0);
        // SAFETY: the CPU has AVX-512F (checked above).
        assert_eq!(unsafe { round_trip(&values) }, (expected, widened));
    }
}
