//! The arithmetic of the passes on groups of eight columns held in registers: rebuild each
//! moment from its factors, apply the non-negativity fix, mix in the gradient, then sketch,
//! project or update. Written once over `Lanes` (AVX or portable, same bits).
//!
//! Column-indexed workspaces are stored group-major (`[group][l]` of 8-lane vectors) so that one
//! group's vectors are adjacent in memory.

use crate::step::StepScalars;

pub use super::lanes::{F8, H8};
use super::lanes::{Arith, Lanes};

/// How the kernels read and write groups of eight elements of a caller's tensor where it lies:
/// f32 as they are, bf16 widened on load and rounded to nearest even on store. A 16-bit tensor
/// read this way takes no extra pass through an f32 copy; the arithmetic is the same.
pub trait Packed {
    type Group: Copy;
    /// Whether a group is eight bf16 (`H8`) rather than eight f32 (`F8`).
    const BF16: bool;
    fn load<S: Lanes>(g: &Self::Group) -> S::V;
    fn store<S: Lanes>(v: S::V, out: &mut Self::Group);
}

pub enum F32s {}
pub enum Bf16s {}

impl Packed for F32s {
    type Group = F8;
    const BF16: bool = false;
    #[inline(always)]
    fn load<S: Lanes>(g: &F8) -> S::V {
        S::load(g)
    }
    #[inline(always)]
    fn store<S: Lanes>(v: S::V, out: &mut F8) {
        S::store(v, out)
    }
}

impl Packed for Bf16s {
    type Group = H8;
    const BF16: bool = true;
    #[inline(always)]
    fn load<S: Lanes>(g: &H8) -> S::V {
        S::load_bf16(g)
    }
    #[inline(always)]
    fn store<S: Lanes>(v: S::V, out: &mut H8) {
        S::store_bf16(v, out)
    }
}

/// Columns per chunk (and per tile of the column-parallel pass). A multiple of `LANES`.
pub const CHUNK: usize = 256;
/// Width of a column group.
pub const LANES: usize = 8;
/// Column groups per chunk.
pub(crate) const GROUPS: usize = CHUNK / LANES;

pub const ZERO: F8 = [0.0; LANES];

pub fn groups(n: usize) -> usize {
    n.div_ceil(LANES)
}

/// Element (j, l) of a group-major matrix with `width` vectors per group.
#[inline(always)]
pub fn group_major(data: &mut [F8], width: usize, j: usize, l: usize) -> &mut f32 {
    &mut data[(j / LANES) * width + l][j % LANES]
}

/// The old factors of one moment, ready for rebuilding rows: U·diag(S) and V group-major.
pub struct MomentTerms {
    /// rows × rank, row-major.
    pub us: Vec<f32>,
    /// groups × rank vectors: V[8g .. 8g + 8, l] at index g·rank + l, zero past the last column.
    pub vg: Vec<F8>,
    /// The non-negativity fix: entries below zero become this value (second moment only).
    pub fill: f32,
    pub beta: f32,
    pub weight: f32,
}

impl MomentTerms {
    /// Row `row`, column group `group` of U·diag(S)·Vᵀ.
    #[inline(always)]
    pub fn rebuild<S: Lanes>(&self, rank: usize, row: usize, group: usize) -> S::V {
        let us = &self.us[row * rank..(row + 1) * rank];
        let v = &self.vg[group * rank..(group + 1) * rank];
        let mut out = S::zero();
        for (&a, vl) in us.iter().zip(v) {
            out = S::mul_add(S::splat(a), S::load(vl), out);
        }
        out
    }

    /// The (fixed) rebuilt value and the new moment β·M̃ + (1 − β)·h for gradient lanes `g`.
    /// `SECOND`: AdamW's second moment (h = g², the non-negativity fix); else h = g.
    #[inline(always)]
    pub fn step<S: Lanes, const SECOND: bool>(&self, rank: usize, row: usize, group: usize, g: S::V) -> (S::V, S::V) {
        let mut old = self.rebuild::<S>(rank, row, group);
        let mut h = g;
        if SECOND {
            old = S::fill_negative(old, S::splat(self.fill));
            h = S::mul(g, g);
        }
        (old, self.mix::<S>(old, h))
    }

    /// The new moment β·old + (1 − β)·h.
    #[inline(always)]
    pub fn mix<S: Arith>(&self, old: S::V, h: S::V) -> S::V {
        S::mul_add(S::splat(self.beta), old, S::mul(S::splat(self.weight), h))
    }

    /// What AdamW's sketch accumulates for the second moment: the new moment, or with
    /// `REBUILD` false only its gradient part (1 − β)·g², for chunks whose rebuild the caller
    /// adds as a low-rank product. Bit for bit the new moment with β = 0 there (β·old is ±0
    /// for the finite old values of such chunks), so both ways give the same bits.
    #[inline(always)]
    pub fn sketched<S: Lanes, const REBUILD: bool>(&self, rank: usize, row: usize, group: usize, g: S::V) -> S::V {
        if REBUILD {
            self.step::<S, true>(rank, row, group, g).1
        } else {
            S::mul(S::splat(self.weight), S::mul(g, g))
        }
    }

    /// Row `row` of U·diag(S) as splats, for the kernels of a rank known at compile time.
    #[inline(always)]
    pub fn row_splats<S: Arith, const RANK: usize>(&self, row: usize) -> [S::V; RANK] {
        let us: &[f32; RANK] = self.us[row * RANK..(row + 1) * RANK].try_into().expect("a row of U·S has RANK values");
        std::array::from_fn(|l| S::splat(us[l]))
    }
}

/// One group of U·diag(S)·Vᵀ from a row's splats (`MomentTerms::row_splats`) and the group's
/// RANK vectors of V: the operations of `MomentTerms::rebuild`, in its order.
#[inline(always)]
pub fn rebuild_fixed<S: Lanes, const RANK: usize>(us: &[S::V; RANK], v: &[F8]) -> S::V {
    let mut out = S::zero();
    for l in 0..RANK {
        out = S::mul_add(us[l], S::load(&v[l]), out);
    }
    out
}

/// AdamW on eight weights from the new moments M_t, V_t.
#[inline(always)]
pub fn update_adamw<S: Arith>(s: &StepScalars, w: S::V, m: S::V, v: S::V) -> S::V {
    let denom = S::mul_add(S::sqrt(v), S::splat(s.inv_bias_correction2_sqrt), S::splat(s.eps));
    S::mul_add(S::splat(-s.step_size), S::div(m, denom), S::mul(w, S::splat(s.decay)))
}

/// Lion on eight weights from the old moment M̃ and the gradient.
#[inline(always)]
pub fn update_lion<S: Arith>(s: &StepScalars, w: S::V, m: S::V, g: S::V) -> S::V {
    let c = S::mul_add(S::splat(s.beta1), m, S::mul(S::splat(s.one_minus_beta1), g));
    S::mul_add(S::splat(-s.lr), S::sign(c), S::mul(w, S::splat(s.decay)))
}

/// Sketch accumulators of one row of AdamW's second moment (the only one sketched from a rebuild:
/// its non-negativity fix does not split): acc[l] += V_t[row, group]·X[group, l] over the groups
/// of one chunk (`g` holds the chunk's gradient, zero-padded to whole groups). Without
/// `REBUILD`, only the gradient's part (`MomentTerms::sketched`).
#[inline(always)]
pub fn sketch_chunk<S: Lanes, G: Packed, const K: usize, const REBUILD: bool>(
    terms: &MomentTerms,
    xg: &[F8],
    rank: usize,
    row: usize,
    group0: usize,
    g: &[G::Group],
    acc: &mut [S::V; K],
) {
    for (gi, g8) in g.iter().enumerate() {
        let group = group0 + gi;
        let a = terms.sketched::<S, REBUILD>(rank, row, group, G::load::<S>(g8));
        let x = &xg[group * K..(group + 1) * K];
        for l in 0..K {
            acc[l] = S::mul_add(a, S::load(&x[l]), acc[l]);
        }
    }
}

/// AdamW's sketch accumulators of one row over one chunk, for a rank known at compile time:
/// `acc0` as `sketch_chunk_grad` (the first moment's gradient part), `acc1` the second
/// moment's as `sketch_chunk::<REBUILD>` (same operations, same order). The row's U·S splats are made
/// once per chunk, V and X are walked without index checks, and one loop gives the
/// out-of-order core both sets of independent chains at once.
#[inline(always)]
pub fn sketch_chunk_both<S: Lanes, G: Packed, const K: usize, const RANK: usize, const REBUILD: bool>(
    terms: &MomentTerms,
    x0: &[F8],
    x1: &[F8],
    row: usize,
    group0: usize,
    g: &[G::Group],
    acc0: &mut [S::V; K],
    acc1: &mut [S::V; K],
) {
    let us = terms.row_splats::<S, RANK>(row);
    let (fill, beta, weight) = (S::splat(terms.fill), S::splat(terms.beta), S::splat(terms.weight));
    let groups = g.len();
    let vs = terms.vg[group0 * RANK..(group0 + groups) * RANK].chunks_exact(RANK);
    let x0s = x0[group0 * K..(group0 + groups) * K].chunks_exact(K);
    let x1s = x1[group0 * K..(group0 + groups) * K].chunks_exact(K);
    for (((g8, v), xa), xb) in g.iter().zip(vs).zip(x0s).zip(x1s) {
        let gv = G::load::<S>(g8);
        for l in 0..K {
            acc0[l] = S::mul_add(gv, S::load(&xa[l]), acc0[l]);
        }
        let new = if REBUILD {
            let old = S::fill_negative(rebuild_fixed::<S, RANK>(&us, v), fill);
            S::mul_add(beta, old, S::mul(weight, S::mul(gv, gv)))
        } else {
            S::mul(weight, S::mul(gv, gv))
        };
        for l in 0..K {
            acc1[l] = S::mul_add(new, S::load(&xb[l]), acc1[l]);
        }
    }
}

/// The gradient part of the first moment's sketch: acc[l] += G[row, group]·X[group, l].
#[inline(always)]
pub fn sketch_chunk_grad<S: Lanes, G: Packed, const K: usize>(xg: &[F8], group0: usize, g: &[G::Group], acc: &mut [S::V; K]) {
    for (gi, g8) in g.iter().enumerate() {
        let group = group0 + gi;
        let gv = G::load::<S>(g8);
        let x = &xg[group * K..(group + 1) * K];
        for l in 0..K {
            acc[l] = S::mul_add(gv, S::load(&x[l]), acc[l]);
        }
    }
}

/// The same for a sketch width known only at run time.
#[inline(always)]
pub fn sketch_chunk_grad_dyn<S: Lanes>(xg: &[F8], k: usize, group0: usize, g: &[F8], acc: &mut [F8]) {
    for (gi, g8) in g.iter().enumerate() {
        let group = group0 + gi;
        let gv = S::load(g8);
        for (dst, xl) in acc.iter_mut().zip(&xg[group * k..(group + 1) * k]) {
            S::store(S::mul_add(gv, S::load(xl), S::load(dst)), dst);
        }
    }
}

/// The same for a sketch width known only at run time (accumulators in memory).
#[inline(always)]
pub fn sketch_chunk_dyn<S: Lanes, const REBUILD: bool>(
    terms: &MomentTerms,
    xg: &[F8],
    rank: usize,
    k: usize,
    row: usize,
    group0: usize,
    g: &[F8],
    acc: &mut [F8],
) {
    for (gi, g8) in g.iter().enumerate() {
        let group = group0 + gi;
        let a = terms.sketched::<S, REBUILD>(rank, row, group, S::load(g8));
        let x = &xg[group * k..(group + 1) * k];
        for (dst, xl) in acc.iter_mut().zip(x) {
            S::store(S::mul_add(a, S::load(xl), S::load(dst)), dst);
        }
    }
}

/// Projection (and optionally the weight update) of `R` consecutive rows from `row0` over one
/// chunk of a column tile: for each row in order, bacc[(mo·k + l)·bstride + gi] +=
/// Q_mo[row, l]·A_mo[row, group0 + gi] (`bacc` starts at the chunk's first group). Summing the
/// rows of a block in registers before one store gives the same bits as one row at a time.
/// `grads[r]` holds row r's gradient (whole groups); `weights`, when given, the rows' weights,
/// updated in place by `scalars`. `ADAMW`: two moments, else Lion's one. `RK` > 0: rank = k =
/// RK, known at compile time (`project_rows_fixed`). Without weights (a power iteration's
/// projection) nothing needs the first moment elementwise, so its rebuild is left out: A_0 here
/// is only (1 − β)·G, and the caller adds β·V·((U·S)ᵀQ).
#[inline(always)]
pub fn project_rows<S: Lanes, G: Packed, W: Packed, const R: usize, const ADAMW: bool, const RK: usize>(
    moments: &[MomentTerms],
    qs: &[&[f32]],
    rank: usize,
    k: usize,
    row0: usize,
    group0: usize,
    grads: &[&[G::Group]; R],
    bacc: &mut [F8],
    bstride: usize,
    mut update: Option<(&StepScalars, &mut [&mut [W::Group]; R])>,
) {
    if RK > 0 {
        #[cfg(target_arch = "x86_64")]
        {
            let done = project_rows_wide_part::<S, G, W, R, ADAMW, RK>(moments, qs, row0, group0, grads, bacc, bstride, &mut update);
            if done == grads[0].len() {
                return;
            }
            if done > 0 {
                // The last group of an odd count, eight lanes wide.
                let rest: [&[G::Group]; R] = std::array::from_fn(|r| &grads[r][done..]);
                let mut tail = update.map(|(scalars, weights)| (scalars, weights.each_mut().map(|w| &mut w[done..])));
                let update = tail.as_mut().map(|(scalars, weights)| (*scalars, weights));
                return project_rows_fixed::<S, G, W, R, ADAMW, RK, RK>(moments, qs, row0, group0 + done, &rest, &mut bacc[done..], bstride, update);
            }
        }
        return project_rows_fixed::<S, G, W, R, ADAMW, RK, RK>(moments, qs, row0, group0, grads, bacc, bstride, update);
    }
    #[inline(always)]
    fn accumulate<S: Lanes, const R: usize>(bacc: &mut [F8], q: &[f32], k: usize, row0: usize, first: usize, bstride: usize, news: &[S::V; R]) {
        for l in 0..k {
            let dst = &mut bacc[(first + l) * bstride];
            let mut acc = S::load(dst);
            for (r, &new) in news.iter().enumerate() {
                acc = S::mul_add(S::splat(q[(row0 + r) * k + l]), new, acc);
            }
            S::store(acc, dst);
        }
    }
    for gi in 0..grads[0].len() {
        let group = group0 + gi;
        let bacc = &mut bacc[gi..];
        let mut g = [S::zero(); R];
        for r in 0..R {
            g[r] = G::load::<S>(&grads[r][gi]);
        }
        let mut olds = [S::zero(); R];
        let mut firsts = [S::zero(); R];
        for r in 0..R {
            if update.is_none() {
                firsts[r] = S::mul(S::splat(moments[0].weight), g[r]);
            } else {
                (olds[r], firsts[r]) = moments[0].step::<S, false>(rank, row0 + r, group, g[r]);
            }
        }
        accumulate::<S, R>(bacc, qs[0], k, row0, 0, bstride, &firsts);
        let mut seconds = [S::zero(); R];
        if ADAMW {
            for r in 0..R {
                seconds[r] = moments[1].step::<S, true>(rank, row0 + r, group, g[r]).1;
            }
            accumulate::<S, R>(bacc, qs[1], k, row0, k, bstride, &seconds);
        }
        if let Some((scalars, weights)) = update.as_mut() {
            for r in 0..R {
                let w = W::load::<S>(&weights[r][gi]);
                let w = if ADAMW {
                    update_adamw::<S>(scalars, w, firsts[r], seconds[r])
                } else {
                    update_lion::<S>(scalars, w, olds[r], g[r])
                };
                W::store::<S>(w, &mut weights[r][gi]);
            }
        }
    }
}

/// The first groups of `project_rows_fixed`'s work sixteen lanes wide (`wide`) where the build
/// and the packing allow it (AVX-512; gradients and weights both f32 or both bf16): the same
/// bits. Returns how many groups it did (0: none; else all but the last of an odd count).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn project_rows_wide_part<S: Lanes, G: Packed, W: Packed, const R: usize, const ADAMW: bool, const RK: usize>(
    moments: &[MomentTerms],
    qs: &[&[f32]],
    row0: usize,
    group0: usize,
    grads: &[&[G::Group]; R],
    bacc: &mut [F8],
    bstride: usize,
    update: &mut Option<(&StepScalars, &mut [&mut [W::Group]; R])>,
) -> usize {
    let groups = grads[0].len();
    if !S::WIDE || G::BF16 != W::BF16 || groups < 2 {
        return 0;
    }
    // The bounds `wide::project_rows_wide` relies on.
    assert_project_bounds::<G, W, R, ADAMW, RK>(moments, qs, grads, bacc, bstride, update.as_ref().map(|(_, w)| &**w));
    assert!(moments.iter().all(|m| m.vg.len() >= (group0 + groups) * RK));
    let weights = update.as_mut().map(|(scalars, weights)| (*scalars, std::array::from_fn(|r| weights[r].as_mut_ptr().cast::<u8>())));
    let grads = std::array::from_fn(|r| grads[r].as_ptr().cast::<u8>());
    // SAFETY: S::WIDE holds only in the build that runs on CPUs with AVX-512F (isa::active);
    // G's and W's groups are eight values of the dtype that Packed::BF16 names; the bounds are
    // asserted above.
    unsafe {
        if G::BF16 {
            super::wide::project_rows_wide::<R, ADAMW, RK, RK, true>(moments, qs, row0, group0, groups, grads, bacc.as_mut_ptr(), bstride, weights)
        } else {
            super::wide::project_rows_wide::<R, ADAMW, RK, RK, false>(moments, qs, row0, group0, groups, grads, bacc.as_mut_ptr(), bstride, weights)
        }
    }
}

/// The bounds the projection kernels index by without checks: one moment (Lion) or two (AdamW)
/// with their Q, `grads[0].len()` groups in every gradient row and weight row, and K rows of
/// Bᵀ accumulators per moment `bstride` groups apart.
#[inline(always)]
fn assert_project_bounds<G: Packed, W: Packed, const R: usize, const ADAMW: bool, const K: usize>(
    moments: &[MomentTerms],
    qs: &[&[f32]],
    grads: &[&[G::Group]; R],
    bacc: &[F8],
    bstride: usize,
    weights: Option<&[&mut [W::Group]; R]>,
) {
    let count = if ADAMW { 2 } else { 1 };
    let groups = grads[0].len();
    assert!(moments.len() == count && qs.len() == count);
    assert!(grads.iter().all(|g| g.len() == groups));
    assert!(groups == 0 || bacc.len() >= (count * K - 1) * bstride + groups);
    if let Some(weights) = weights {
        assert!(weights.iter().all(|w| w.len() >= groups));
    }
}

/// `project_rows` for a rank and sketch width known at compile time. The block's rows of U·S
/// and Q are copied once into fixed arrays and the group loop indexes nothing it has to check,
/// so the loop is arithmetic, not address bookkeeping. The same operations in the same order
/// as `project_rows`: the same bits.
#[inline(always)]
pub fn project_rows_fixed<S: Lanes, G: Packed, W: Packed, const R: usize, const ADAMW: bool, const RANK: usize, const K: usize>(
    moments: &[MomentTerms],
    qs: &[&[f32]],
    row0: usize,
    group0: usize,
    grads: &[&[G::Group]; R],
    bacc: &mut [F8],
    bstride: usize,
    mut update: Option<(&StepScalars, &mut [&mut [W::Group]; R])>,
) {
    let count = if ADAMW { 2 } else { 1 };
    let groups = grads[0].len();
    // Every index of the loop below is in bounds of these checks.
    assert_project_bounds::<G, W, R, ADAMW, K>(moments, qs, grads, bacc, bstride, update.as_ref().map(|(_, w)| &**w));
    let mut us = [[[S::zero(); RANK]; R]; 2];
    let mut q = [[[0f32; K]; R]; 2];
    let mut vgs: [&[F8]; 2] = [&[], &[]];
    for mo in 0..count {
        for r in 0..R {
            us[mo][r] = moments[mo].row_splats::<S, RANK>(row0 + r);
            q[mo][r].copy_from_slice(&qs[mo][(row0 + r) * K..(row0 + r + 1) * K]);
        }
        vgs[mo] = &moments[mo].vg[group0 * RANK..(group0 + groups) * RANK];
    }
    let bacc = bacc.as_mut_ptr();
    let (first_low_rank, first_weight) = (update.is_none(), S::splat(moments[0].weight));
    /// bacc[(first + l)·bstride + gi] += Σ_r q[r][l]·news[r], rows in order.
    #[inline(always)]
    unsafe fn accumulate<S: Lanes, const R: usize, const K: usize>(bacc: *mut F8, q: &[[f32; K]; R], first: usize, bstride: usize, gi: usize, news: &[S::V; R]) {
        for l in 0..K {
            // SAFETY: (first + l)·bstride + gi < (count·K − 1)·bstride + groups (asserted).
            let dst = unsafe { &mut *bacc.add((first + l) * bstride + gi) };
            let mut acc = S::load(dst);
            for r in 0..R {
                acc = S::mul_add(S::splat(q[r][l]), news[r], acc);
            }
            S::store(acc, dst);
        }
    }
    for gi in 0..groups {
        let mut g = [S::zero(); R];
        for r in 0..R {
            // SAFETY: gi < groups = grads[r].len() (asserted).
            g[r] = G::load::<S>(unsafe { grads[r].get_unchecked(gi) });
        }
        let vm = &vgs[0][gi * RANK..(gi + 1) * RANK];
        let mut olds = [S::zero(); R];
        let mut firsts = [S::zero(); R];
        for r in 0..R {
            if first_low_rank {
                firsts[r] = S::mul(first_weight, g[r]);
            } else {
                olds[r] = rebuild_fixed::<S, RANK>(&us[0][r], vm);
                firsts[r] = moments[0].mix::<S>(olds[r], g[r]);
            }
        }
        // SAFETY (accumulate): the bounds asserted above.
        unsafe { accumulate::<S, R, K>(bacc, &q[0], 0, bstride, gi, &firsts) };
        let mut seconds = [S::zero(); R];
        if ADAMW {
            let vv = &vgs[1][gi * RANK..(gi + 1) * RANK];
            let fill = S::splat(moments[1].fill);
            for r in 0..R {
                let old = S::fill_negative(rebuild_fixed::<S, RANK>(&us[1][r], vv), fill);
                seconds[r] = moments[1].mix::<S>(old, S::mul(g[r], g[r]));
            }
            unsafe { accumulate::<S, R, K>(bacc, &q[1], K, bstride, gi, &seconds) };
        }
        if let Some((scalars, weights)) = update.as_mut() {
            for r in 0..R {
                // SAFETY: gi < groups <= weights[r].len() (asserted).
                let w8 = unsafe { weights[r].get_unchecked_mut(gi) };
                let w = W::load::<S>(w8);
                let w = if ADAMW {
                    update_adamw::<S>(scalars, w, firsts[r], seconds[r])
                } else {
                    update_lion::<S>(scalars, w, olds[r], g[r])
                };
                W::store::<S>(w, w8);
            }
        }
    }
}

/// Sum of |x| and count of the negative entries of row `row`, groups `groups` (padding
/// columns rebuild to zero and do not count).
#[inline(always)]
pub fn negatives_chunk<S: Lanes>(terms: &MomentTerms, rank: usize, row: usize, groups: std::ops::Range<usize>) -> (f32, u32) {
    let mut sum = S::zero();
    // Counts as f32 lanes: exact, a chunk adds at most GROUPS per lane.
    let mut count = S::zero();
    for group in groups {
        let x = terms.rebuild::<S>(rank, row, group);
        sum = S::add(sum, S::negative_magnitude(x));
        count = S::add(count, S::negative_indicator(x));
    }
    (sum_lanes(&S::to_array(sum)), S::to_array(count).iter().map(|&c| c as u32).sum())
}

/// `negatives_chunk` for a rank known at compile time: the row's U·S splats are made once and
/// the chunk's V is walked without index checks. Same operations in the same order.
#[inline(always)]
pub fn negatives_chunk_fixed<S: Lanes, const RANK: usize>(terms: &MomentTerms, row: usize, groups: std::ops::Range<usize>) -> (f32, u32) {
    let us = terms.row_splats::<S, RANK>(row);
    let mut sum = S::zero();
    let mut count = S::zero();
    for v in terms.vg[groups.start * RANK..groups.end * RANK].chunks_exact(RANK) {
        let x = rebuild_fixed::<S, RANK>(&us, v);
        sum = S::add(sum, S::negative_magnitude(x));
        count = S::add(count, S::negative_indicator(x));
    }
    (sum_lanes(&S::to_array(sum)), S::to_array(count).iter().map(|&c| c as u32).sum())
}

/// The fixed-order sum of the lanes.
#[inline(always)]
pub fn sum_lanes(acc: &F8) -> f32 {
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
}

/// Views f32 data as whole 8-lane groups (`data.len()` a multiple of 8).
#[inline(always)]
pub fn as_groups(data: &[f32]) -> &[F8] {
    let (groups, rest) = data.as_chunks::<LANES>();
    debug_assert!(rest.is_empty());
    groups
}

#[inline(always)]
pub fn as_groups_mut(data: &mut [f32]) -> &mut [F8] {
    let (groups, rest) = data.as_chunks_mut::<LANES>();
    debug_assert!(rest.is_empty());
    groups
}

/// Defines `$name` that runs `$body` (generic over `S: Lanes`) in the build `isa::active`
/// names: `S = Avx` inside a function compiled for AVX2 (with or without AVX-512VL's
/// registers), or `S = Portable`. All give the same bits.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident<$s:ident>($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body<$s: $crate::cpu::lanes::Lanes>($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma,avx512f,avx512vl")]
                unsafe fn avx512vl($($arg: $ty),*) $(-> $ret)? { body::<$crate::cpu::lanes::Avx<true>>($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { body::<$crate::cpu::lanes::Avx<false>>($($arg),*) }
                match $crate::cpu::isa::active() {
                    // SAFETY: `active` never names a build the CPU does not support.
                    $crate::cpu::isa::CpuKernels::Avx512Vl => return unsafe { avx512vl($($arg),*) },
                    $crate::cpu::isa::CpuKernels::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::cpu::isa::CpuKernels::Portable => {}
                }
            }
            body::<$crate::cpu::lanes::Portable>($($arg),*)
        }
    };
}
pub(crate) use multiversion;
