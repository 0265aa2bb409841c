//! The partial rows of a flat shard (at most two per state: where a ZeRO-style range starts and
//! ends inside a row). Whole rows go through the tiled passes; these few elements take a simple
//! lane-at-a-time path over the same tile arithmetic, with the lanes outside the segment masked.

use crate::config::Dtype;
use crate::dtype;
use crate::shard::Segment;
use crate::step::StepScalars;

use super::factored::Source;
use super::lanes::{Arith, Portable};
use super::tile::{self, MomentTerms, F8, LANES, ZERO};
use super::SharedPtr;

type P = Portable;

/// The column groups a segment touches, each with the lane range inside the segment.
fn groups(segment: &Segment) -> impl Iterator<Item = (usize, std::ops::Range<usize>)> + '_ {
    let first = segment.cols.start / LANES;
    let last = segment.cols.end.div_ceil(LANES);
    (first..last).map(move |group| {
        let lo = segment.cols.start.max(group * LANES) - group * LANES;
        let hi = segment.cols.end.min((group + 1) * LANES) - group * LANES;
        (group, lo..hi)
    })
}

fn masked(v: F8, lanes: &std::ops::Range<usize>) -> F8 {
    let mut out = ZERO;
    out[lanes.clone()].copy_from_slice(&v[lanes.clone()]);
    out
}

/// The gradient lanes of one group (zero outside `lanes`).
fn load_grad(source: &Source, row: usize, group: usize, lanes: &std::ops::Range<usize>) -> F8 {
    let mut g = ZERO;
    // SAFETY: the lanes lie inside the shard, whose gradient elements are valid memory.
    unsafe {
        dtype::load(
            source.grad.get(),
            source.grad_dtype,
            row * source.cols + group * LANES + lanes.start,
            &mut g[lanes.clone()],
            source.grad_factor,
        )
    };
    g
}

/// The new moment `moment` (β·M̃ + (1 − β)·h) and the old one, on one group's lanes.
fn moment_lanes(terms: &MomentTerms, second: bool, rank: usize, row: usize, group: usize, g: F8) -> (F8, F8) {
    if second {
        terms.step::<P, true>(rank, row, group, g)
    } else {
        terms.step::<P, false>(rank, row, group, g)
    }
}

/// Whether moment `mo` of `moments` is AdamW's second moment (the one with the fix).
fn is_second(moments: &[MomentTerms], mo: usize) -> bool {
    moments.len() == 2 && mo == 1
}

/// Adds the segment's part of Y = A·X to `y_rows` ([moment][l] of the segment's row).
pub(super) fn sketch(source: &Source, xgs: &[&[F8]], segment: &Segment, y_rows: &mut [f32]) {
    let k = source.k;
    for (mo, (terms, xg)) in source.moments.iter().zip(xgs).enumerate() {
        let mut acc = vec![ZERO; k];
        for (group, lanes) in groups(segment) {
            let g = load_grad(source, segment.row, group, &lanes);
            let (_, new) = moment_lanes(terms, is_second(source.moments, mo), source.rank, segment.row, group, g);
            let new = masked(new, &lanes);
            for (l, a) in acc.iter_mut().enumerate() {
                *a = P::mul_add(new, xg[group * k + l], *a);
            }
        }
        for (l, a) in acc.iter().enumerate() {
            y_rows[mo * k + l] += tile::sum_lanes(a);
        }
    }
}

/// Adds the segment's part of Bᵀ = AᵀQ to `bts` (one n × k per moment) and, with `update`,
/// updates the segment's weights.
pub(super) fn project(
    source: &Source,
    qs: &[&[f32]],
    segment: &Segment,
    bts: &mut [&mut [f32]],
    update: Option<(SharedPtr<u8>, Dtype, StepScalars)>,
) {
    let (k, row) = (source.k, segment.row);
    for (group, lanes) in groups(segment) {
        let g = load_grad(source, row, group, &lanes);
        let mut olds = [ZERO; 2];
        let mut news = [ZERO; 2];
        for (mo, terms) in source.moments.iter().enumerate() {
            let (old, new) = moment_lanes(terms, is_second(source.moments, mo), source.rank, row, group, g);
            (olds[mo], news[mo]) = (old, new);
            let q = &qs[mo][row * k..(row + 1) * k];
            for t in lanes.clone() {
                let j = group * LANES + t;
                for l in 0..k {
                    bts[mo][j * k + l] += q[l] * new[t];
                }
            }
        }
        if let Some((param, param_dtype, scalars)) = update {
            let offset = row * source.cols + group * LANES + lanes.start;
            let mut w = ZERO;
            // SAFETY: the lanes lie inside the shard's parameter elements.
            unsafe { dtype::load(param.get(), param_dtype, offset, &mut w[lanes.clone()], 1.0) };
            let w = if source.moments.len() == 2 {
                tile::update_adamw::<P>(&scalars, w, news[0], news[1])
            } else {
                tile::update_lion::<P>(&scalars, w, olds[0], g)
            };
            // SAFETY: as above.
            unsafe { dtype::store(param.get(), param_dtype, offset, &w[lanes.clone()], scalars.rounding) };
        }
    }
}

/// Sum of |x| and count of the negative entries of U·diag(S)·Vᵀ on the segment.
pub(super) fn negatives(terms: &MomentTerms, rank: usize, segment: &Segment) -> (f64, u64) {
    let (mut sum, mut count) = (0f64, 0u64);
    for (group, lanes) in groups(segment) {
        let x = terms.rebuild::<P>(rank, segment.row, group);
        for &v in &x[lanes] {
            if v < 0.0 {
                sum += -v as f64;
                count += 1;
            }
        }
    }
    (sum, count)
}
