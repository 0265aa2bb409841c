//! Which chunks of a row of Ṽ = U·diag(S)·Vᵀ provably hold no negative entry, so that the
//! non-negativity sweep can skip them.
//!
//! Entry (i, j) is Σ_l a_il·b_jl with a = U·S and b = V. Split off the first term: by
//! Cauchy–Schwarz the others sum to at least −‖a_i,2:‖·‖b_j,2:‖, so when a_i1·b_j1 > 0 the entry
//! is positive once ρ_i·κ_j < 1, with ρ_i = ‖a_i,2:‖ / |a_i1| and κ_j = ‖b_j,2:‖ / |b_j1|. A
//! second moment is close to rank 1 in training (its first term dominates), so after the first
//! steps most rows pass for most chunks. The test keeps a margin for the kernels' f32 rounding
//! (each of the r multiply-adds rounds at most twice: error ≤ 2r·2⁻²⁴·Σ|a_il·b_jl|) and limits
//! |a_i1·b_j1| to [2⁻¹⁰⁰, 2¹⁰⁰] so no partial sum leaves f32's normal range: the computed entries
//! of a chunk it passes are all ≥ 0, so skipping the chunk leaves the sweep's sums bit for bit
//! the same. Columns that are all zero (the padding of the last group among them) rebuild to ±0
//! and never count, whatever the row.

use super::tile::{F8, GROUPS, LANES};

/// Largest rank the margin covers (its subnormal slack is sized for it).
const MAX_RANK: usize = 1024;
/// Bounds on |a_i1·b_j1| that keep every partial sum of a passed entry a normal f32.
const LEAD_MIN: f64 = 7.888609052210118e-31; // 2^-100
const LEAD_MAX: f64 = 1.2676506002282294e30; // 2^100

/// The first-term dominance of each row and of each chunk of `GROUPS` column groups.
pub struct SignBound {
    rows: Vec<RowLead>,
    chunks: Vec<ChunkLead>,
    /// ρ²·κ² must not exceed this: ((1 − ε) / (1 + ε))².
    limit: f64,
}

#[derive(Clone, Copy)]
struct RowLead {
    /// Sign of a_i1 as an index into `ChunkLead::ratio` (0: positive, 1: negative); None when
    /// a_i1 = 0.
    sign: Option<usize>,
    /// ρ_i² = ‖a_i,2:‖² / a_i1² (squares: no square roots per step).
    ratio: f64,
    /// |a_i1|.
    lead: f64,
    /// The whole row of a is zero: its entries are ±0.
    zero: bool,
    /// No chunk can pass (ρ_i²·κ² is over the limit even for the chunk of smallest κ²): one
    /// test per chunk instead of several, where the bound does not help.
    hopeless: bool,
}

#[derive(Clone, Copy)]
struct ChunkLead {
    /// Largest κ_j² of the chunk's non-zero columns, for rows with a positive (index 0) or negative
    /// (index 1) a_i1; infinite when a column has b_j1 of the other sign or zero.
    ratio: [f64; 2],
    /// Smallest and largest |b_j1| of the chunk's non-zero columns (∞ and 0 when it has none).
    lead_min: f64,
    lead_max: f64,
}

impl SignBound {
    /// The bound for a = `us` (rows × rank, row-major) and b = `vg` (groups × rank vectors of
    /// eight columns). None where it cannot be trusted (a non-finite factor, a rank above
    /// `MAX_RANK`) or passes nothing.
    pub fn new(us: &[f32], vg: &[F8], rank: usize) -> Option<SignBound> {
        // A fold without early exit vectorizes; the factors are almost always finite.
        let finite = |x: &[f32]| x.iter().fold(true, |all, v| all & v.is_finite());
        if rank == 0 || rank > MAX_RANK || !finite(us) || !finite(vg.as_flattened()) {
            return None;
        }
        let mut rows: Vec<RowLead> = us
            .chunks_exact(rank)
            .map(|a| {
                let lead = a[0] as f64;
                let rest = a[1..].iter().map(|&x| x as f64 * x as f64).sum::<f64>();
                RowLead {
                    sign: if lead > 0.0 { Some(0) } else if lead < 0.0 { Some(1) } else { None },
                    ratio: rest / (lead * lead),
                    lead: lead.abs(),
                    zero: lead == 0.0 && rest == 0.0,
                    hopeless: false,
                }
            })
            .collect();
        let groups = vg.len() / rank;
        let chunks: Vec<ChunkLead> = (0..groups.div_ceil(GROUPS))
            .map(|c| {
                let mut chunk = ChunkLead { ratio: [0.0; 2], lead_min: f64::INFINITY, lead_max: 0.0 };
                for g in c * GROUPS..((c + 1) * GROUPS).min(groups) {
                    let b = &vg[g * rank..(g + 1) * rank];
                    // Lane-wise sums of squares, l outer: vectorizes.
                    let mut rests = [0f64; LANES];
                    for v in &b[1..] {
                        for t in 0..LANES {
                            rests[t] += v[t] as f64 * v[t] as f64;
                        }
                    }
                    for t in 0..LANES {
                        let (lead, rest) = (b[0][t] as f64, rests[t]);
                        if lead == 0.0 {
                            if rest != 0.0 {
                                chunk.ratio = [f64::INFINITY; 2];
                            }
                            continue; // a zero column: ±0 entries
                        }
                        let (same, other) = if lead > 0.0 { (0, 1) } else { (1, 0) };
                        chunk.ratio[same] = chunk.ratio[same].max(rest / (lead * lead));
                        chunk.ratio[other] = f64::INFINITY;
                        chunk.lead_min = chunk.lead_min.min(lead.abs());
                        chunk.lead_max = chunk.lead_max.max(lead.abs());
                    }
                }
                chunk
            })
            .collect();
        // Rounding: ≤ 2r·2⁻²⁴ relative (twice that, for slack); the 2⁻⁴⁰ covers the f64 rounding
        // of ρ and κ and, with |a_i1·b_j1| ≥ 2⁻¹⁰⁰, the absolute error of up to MAX_RANK
        // subnormal roundings.
        let eps = 4.0 * rank as f64 * f64::powi(2.0, -24) + f64::powi(2.0, -40);
        let limit = (1.0 - eps) / (1.0 + eps);
        let limit = limit * limit;
        let smallest = |sign: usize| chunks.iter().map(|c: &ChunkLead| c.ratio[sign]).fold(f64::INFINITY, f64::min);
        let smallest = [smallest(0), smallest(1)];
        for row in &mut rows {
            row.hopeless = !row.zero && !row.sign.is_some_and(|sign| row.ratio * smallest[sign] <= limit);
        }
        // Where no row can pass, nobody should pay for asking.
        if rows.iter().all(|row| row.hopeless) {
            return None;
        }
        Some(SignBound { rows, chunks, limit })
    }

    /// Whether every entry of row `row` in chunk `chunk` (column groups chunk·GROUPS ..) is
    /// computed ≥ 0 (or NaN-free ±0) by the kernels.
    #[inline]
    pub fn nonnegative(&self, row: usize, chunk: usize) -> bool {
        let r = &self.rows[row];
        if r.hopeless {
            return false;
        }
        let c = &self.chunks[chunk];
        if r.zero || c.lead_max == 0.0 && c.ratio == [0.0; 2] {
            return true; // a zero row, or a chunk of zero columns
        }
        let Some(sign) = r.sign else { return false };
        // NaN (0·∞) and ∞ fail the comparisons.
        r.ratio * c.ratio[sign] <= self.limit && r.lead * c.lead_min >= LEAD_MIN && r.lead * c.lead_max <= LEAD_MAX
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cpu::tile;

    /// A small deterministic generator (xorshift), uniform in [-1, 1).
    pub(crate) struct Gen(pub u64);
    impl Gen {
        pub fn next(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            ((self.0 >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        }
    }

    /// `v` (n × rank, row-major) as the kernels read V: group-major, zero-padded.
    pub(crate) fn group_major(v: &[f32], n: usize, rank: usize) -> Vec<F8> {
        let mut vg = vec![tile::ZERO; tile::groups(n) * rank];
        for j in 0..n {
            for l in 0..rank {
                *tile::group_major(&mut vg, rank, j, l) = v[j * rank + l];
            }
        }
        vg
    }

    /// Entry (i, j) as the kernels compute it: multiply-adds from zero, l = 0 first.
    fn rebuilt(us: &[f32], v: &[f32], rank: usize, i: usize, j: usize) -> f32 {
        (0..rank).fold(0f32, |x, l| us[i * rank + l].mul_add(v[j * rank + l], x))
    }

    /// Factors whose first term dominates by `dominance` (scaled per row and column), with
    /// signs flipped at random and a few zero rows and columns.
    pub(crate) fn factors(g: &mut Gen, m: usize, n: usize, rank: usize, dominance: f32) -> (Vec<f32>, Vec<f32>) {
        let mut us = vec![0f32; m * rank];
        let mut v = vec![0f32; n * rank];
        let flip = if g.next() < 0.0 { -1.0 } else { 1.0 };
        for i in 0..m {
            let scale = 10f32.powf(3.0 * g.next());
            for l in 0..rank {
                us[i * rank + l] = scale * if l == 0 { flip * (0.5 + g.next().abs()) } else { g.next() / dominance };
            }
        }
        for j in 0..n {
            let scale = 10f32.powf(3.0 * g.next());
            for l in 0..rank {
                v[j * rank + l] = scale * if l == 0 { flip * (0.5 + g.next().abs()) } else { g.next() / dominance };
            }
        }
        if m > 3 {
            us[2 * rank..3 * rank].fill(0.0);
        }
        if n > 5 {
            for l in 0..rank {
                v[4 * rank + l] = 0.0;
            }
        }
        (us, v)
    }

    /// Every chunk the bound passes holds no negative entry, on factors from clearly dominant to
    /// not dominant at all; and on dominant factors it passes most chunks (else it is useless).
    #[test]
    fn passed_chunks_hold_no_negative_entry() {
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        let (m, n) = (40, 3 * tile::CHUNK + 13);
        for rank in [1, 2, 3, 4, 8, 16] {
            for dominance in [0.5f32, 1.0, 2.0, 4.0, 50.0, 1e4] {
                let (us, v) = factors(&mut g, m, n, rank, dominance);
                let bound = SignBound::new(&us, &group_major(&v, n, rank), rank);
                let mut passed = 0;
                for i in 0..m {
                    for c in 0..n.div_ceil(tile::CHUNK) {
                        if !bound.as_ref().is_some_and(|b| b.nonnegative(i, c)) {
                            continue;
                        }
                        passed += 1;
                        for j in c * tile::CHUNK..((c + 1) * tile::CHUNK).min(n) {
                            let x = rebuilt(&us, &v, rank, i, j);
                            assert!(x >= 0.0, "rank {rank}, dominance {dominance}: entry ({i}, {j}) = {x} in a passed chunk");
                        }
                    }
                }
                let total = m * n.div_ceil(tile::CHUNK);
                if dominance >= 50.0 {
                    assert!(passed * 10 >= total * 9, "rank {rank}, dominance {dominance}: only {passed} of {total} chunks passed");
                }
            }
        }
    }

    /// Right at the edge: entries a·b − (just under or over a·b) in the second term.
    #[test]
    fn the_margin_covers_rounding_at_the_edge() {
        for &(excess, expect) in &[(1.0 - 1e-4, true), (1.0 - 1e-7, false), (1.0, false), (1.0 + 1e-7, false)] {
            // Row (1, t), column (1, −1): the entry is 1 − t.
            let us = [1.0f32, excess as f32];
            let v = [1.0f32, -1.0];
            let bound = SignBound::new(&us, &group_major(&v, 1, 2), 2);
            assert_eq!(bound.is_some_and(|b| b.nonnegative(0, 0)), expect, "t = {excess}");
        }
    }

    /// The limits on magnitudes and finiteness.
    #[test]
    fn refuses_what_it_cannot_bound() {
        let v = group_major(&[1.0, 0.0], 1, 2);
        assert!(SignBound::new(&[f32::NAN, 0.0], &v, 2).is_none());
        assert!(SignBound::new(&[f32::INFINITY, 0.0], &v, 2).is_none());
        // Lead products far below 2^-100 or above 2^100.
        let tiny = SignBound::new(&[1e-35, 0.0], &group_major(&[1e-35, 0.0], 1, 2), 2);
        assert!(!tiny.is_some_and(|b| b.nonnegative(0, 0)));
        let huge = SignBound::new(&[1e20, 0.0], &group_major(&[1e20, 0.0], 1, 2), 2);
        assert!(!huge.is_some_and(|b| b.nonnegative(0, 0)));
        // Opposite signs of the first terms, and a zero first term with a non-zero rest.
        let opposite = SignBound::new(&[1.0, 0.0], &group_major(&[-1.0, 0.0], 1, 2), 2);
        assert!(!opposite.is_some_and(|b| b.nonnegative(0, 0)));
        let no_lead = SignBound::new(&[0.0, 1.0], &group_major(&[1.0, 0.0], 1, 2), 2);
        assert!(!no_lead.is_some_and(|b| b.nonnegative(0, 0)));
        let column_without_lead = SignBound::new(&[1.0, 0.5], &group_major(&[0.0, 1.0], 1, 2), 2);
        assert!(!column_without_lead.is_some_and(|b| b.nonnegative(0, 0)));
        // A zero row passes whatever the columns.
        let zero_row = SignBound::new(&[0.0, 0.0], &group_major(&[-1.0, 3.0], 1, 2), 2);
        assert!(zero_row.is_some_and(|b| b.nonnegative(0, 0)));
    }
}
