//! The arithmetic of the passes on groups of eight columns held in registers: rebuild each
//! moment from its factors, apply the non-negativity fix, mix in the gradient, then sketch,
//! project or update. Lanes are explicit `[f32; 8]` values, so the AVX2 build and the portable
//! build execute the same operations in the same order (no multiply-add is ever contracted):
//! every machine and thread count gives the same bits.
//!
//! Column-indexed workspaces are stored group-major (`[group][l]` of 8-lane vectors) so that one
//! group's vectors are adjacent in memory.

use crate::step::StepScalars;

/// Columns per chunk (and per tile of the column-parallel pass). A multiple of `LANES`.
pub const CHUNK: usize = 256;
/// Width of a column group.
pub const LANES: usize = 8;
/// Column groups per chunk.
pub(crate) const GROUPS: usize = CHUNK / LANES;

pub type F8 = [f32; LANES];
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
    pub fill: Option<f32>,
    pub beta: f32,
    pub weight: f32,
    /// The gradient enters squared (second moment).
    pub squared: bool,
}

impl MomentTerms {
    /// Row `row`, column group `group` of U·diag(S)·Vᵀ.
    #[inline(always)]
    pub fn rebuild8(&self, rank: usize, row: usize, group: usize) -> F8 {
        let us = &self.us[row * rank..(row + 1) * rank];
        let v = &self.vg[group * rank..(group + 1) * rank];
        let mut out = ZERO;
        for (a, vl) in us.iter().zip(v) {
            for t in 0..LANES {
                out[t] += a * vl[t];
            }
        }
        out
    }

    /// The fixed rebuilt value and the new moment β·M̃ + (1 − β)·h for gradient lanes `g`.
    #[inline(always)]
    pub fn step8(&self, rank: usize, row: usize, group: usize, g: &F8) -> (F8, F8) {
        let mut old = self.rebuild8(rank, row, group);
        if let Some(fill) = self.fill {
            for x in old.iter_mut() {
                *x = if *x < 0.0 { fill } else { *x };
            }
        }
        let (beta, weight) = (self.beta, self.weight);
        let mut h = *g;
        if self.squared {
            for x in h.iter_mut() {
                *x *= *x;
            }
        }
        let mut new = ZERO;
        for t in 0..LANES {
            new[t] = beta * old[t] + weight * h[t];
        }
        (old, new)
    }
}

/// Sketch accumulators of one row: acc[mo][l] += A_mo[row, group]·X_mo[group, l] for the groups
/// of one chunk (`g` holds the chunk's gradient, zero-padded to whole groups).
#[inline(always)]
pub fn sketch_chunk<const K: usize>(
    moments: &[MomentTerms],
    xgs: &[&[F8]],
    rank: usize,
    row: usize,
    group0: usize,
    g: &[F8],
    acc: &mut [[F8; K]; 2],
) {
    for (gi, g8) in g.iter().enumerate() {
        let group = group0 + gi;
        for (mo, (terms, xg)) in moments.iter().zip(xgs).enumerate() {
            let (_, a) = terms.step8(rank, row, group, g8);
            let x = &xg[group * K..(group + 1) * K];
            for l in 0..K {
                for t in 0..LANES {
                    acc[mo][l][t] += a[t] * x[l][t];
                }
            }
        }
    }
}

/// The same for a sketch width known only at run time (accumulators in memory: acc[mo·k + l]).
#[inline(always)]
pub fn sketch_chunk_dyn(
    moments: &[MomentTerms],
    xgs: &[&[F8]],
    rank: usize,
    k: usize,
    row: usize,
    group0: usize,
    g: &[F8],
    acc: &mut [F8],
) {
    for (gi, g8) in g.iter().enumerate() {
        let group = group0 + gi;
        for (mo, (terms, xg)) in moments.iter().zip(xgs).enumerate() {
            let (_, a) = terms.step8(rank, row, group, g8);
            let x = &xg[group * k..(group + 1) * k];
            for (l, xl) in x.iter().enumerate() {
                let dst = &mut acc[mo * k + l];
                for t in 0..LANES {
                    dst[t] += a[t] * xl[t];
                }
            }
        }
    }
}

/// Projection (and optionally the weight update) of `R` consecutive rows from `row0` over one
/// chunk of a column tile: for each row in order, bacc[(mo·k + l)·bstride + gi] +=
/// Q_mo[row, l]·A_mo[row, group0 + gi] (`bacc` starts at the chunk's first group). Summing the
/// rows of a block in registers before one store gives the same bits as one row at a time.
/// `grads[r]` holds row r's gradient (whole groups); `weights`, when given, the rows' weights,
/// updated in place by `scalars`.
#[inline(always)]
pub fn project_rows<const R: usize>(
    moments: &[MomentTerms],
    qs: &[&[f32]],
    rank: usize,
    k: usize,
    row0: usize,
    group0: usize,
    grads: &[&[F8]; R],
    bacc: &mut [F8],
    bstride: usize,
    mut update: Option<(&StepScalars, &mut [&mut [F8]; R])>,
) {
    let adamw = moments.len() == 2;
    for gi in 0..grads[0].len() {
        let group = group0 + gi;
        let mut olds = [[ZERO; 2]; R];
        let mut news = [[ZERO; 2]; R];
        for r in 0..R {
            for (mo, terms) in moments.iter().enumerate() {
                (olds[r][mo], news[r][mo]) = terms.step8(rank, row0 + r, group, &grads[r][gi]);
            }
        }
        for (mo, q) in qs.iter().enumerate() {
            for l in 0..k {
                let dst = &mut bacc[(mo * k + l) * bstride + gi];
                let mut acc = *dst;
                for r in 0..R {
                    let ql = q[(row0 + r) * k + l];
                    for t in 0..LANES {
                        acc[t] += ql * news[r][mo][t];
                    }
                }
                *dst = acc;
            }
        }
        if let Some((scalars, weights)) = update.as_mut() {
            for r in 0..R {
                if adamw {
                    scalars.update_adamw(&mut weights[r][gi], &news[r][0], &news[r][1]);
                } else {
                    scalars.update_lion(&mut weights[r][gi], &olds[r][0], &grads[r][gi]);
                }
            }
        }
    }
}

/// Sum of |x| and count of the negative entries of row `row`, groups `groups` (padding
/// columns rebuild to zero and do not count).
#[inline(always)]
pub fn negatives_chunk(terms: &MomentTerms, rank: usize, row: usize, groups: std::ops::Range<usize>) -> (f32, u32) {
    let mut sum = ZERO;
    let mut count = [0u32; LANES];
    for group in groups {
        let x = terms.rebuild8(rank, row, group);
        for t in 0..LANES {
            let negative = x[t] < 0.0;
            sum[t] += if negative { -x[t] } else { 0.0 };
            count[t] += negative as u32;
        }
    }
    (sum_lanes(&sum), count.iter().sum())
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

/// Whether the AVX2 build of the kernels can run here (checked once).
#[cfg(target_arch = "x86_64")]
pub fn has_avx2() -> bool {
    use once_cell::sync::Lazy;
    static AVX2: Lazy<bool> = Lazy::new(|| std::is_x86_feature_detected!("avx2"));
    *AVX2
}

/// Defines `$name` that runs `$body` compiled for AVX2 when the CPU has it, and for the baseline
/// target otherwise. Both builds perform identical operations, so they give identical bits.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                if $crate::cpu::tile::has_avx2() {
                    // SAFETY: the CPU supports AVX2 (checked at run time).
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use multiversion;
