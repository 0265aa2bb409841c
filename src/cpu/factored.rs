//! The FACTORED passes on the CPU: the sketch pass runs over rows, the projection pass over
//! fixed-width column tiles (so each tile owns its columns of B and no reduction crosses
//! threads), and the small factorizations run in f64.

use rayon::prelude::*;

use crate::config::{Algorithm, Plan};
use crate::dtype;
use crate::error::{try_zeroed, Result};
use crate::linalg;
use crate::rng::{self, Stream};
use crate::step::{FactoredPasses, SketchInput, StepIo, StepScalars};

use super::tile::{self, ChunkSource, MomentTerms, Scratch, CHUNK, LANES};
use super::SharedPtr;

/// Rows per task of the row-parallel passes.
const ROW_BLOCK: usize = 8;

/// The stored factors of one moment and the per-step workspace, all O((m + n)·k).
struct MomentWork<'a> {
    u: &'a mut [f32],
    s: &'a mut [f32],
    v: &'a mut [f32],
    /// Sketch input Xᵀ (Ω or a power-iteration basis): k × stride.
    xt: Vec<f32>,
    /// Sketch Y, then Q = orth(Y): m × k.
    y: Vec<f32>,
    /// Projection Bᵀ = AᵀQ: n × k.
    bt: Vec<f32>,
}

/// One FACTORED step in progress on the CPU.
pub struct CpuFactored<'a> {
    plan: Plan,
    scalars: StepScalars,
    io: StepIo,
    seed: u64,
    stride: usize,
    terms: Vec<MomentTerms>,
    work: Vec<MomentWork<'a>>,
}

impl<'a> CpuFactored<'a> {
    /// Prepares a step from the stored factors (u, s, v per moment, in buffer order).
    pub fn new(
        plan: Plan,
        scalars: StepScalars,
        io: StepIo,
        seed: u64,
        factors: Vec<&'a mut [f32]>,
    ) -> Result<CpuFactored<'a>> {
        let (m, n, r, k) = (plan.rows, plan.cols, plan.rank, plan.sketch);
        let stride = tile::round_up_lanes(n);
        let mut terms = Vec::with_capacity(plan.moments());
        let mut work = Vec::with_capacity(plan.moments());
        let mut parts = factors.into_iter();
        for moment in 0..plan.moments() {
            let (Some(u), Some(s), Some(v)) = (parts.next(), parts.next(), parts.next()) else {
                unreachable!("a FACTORED plan has three buffers per moment");
            };
            let mut us = try_zeroed(m * r, "U·S workspace")?;
            for (dst, src) in us.chunks_exact_mut(r).zip(u.chunks_exact(r)) {
                for l in 0..r {
                    dst[l] = src[l] * s[l];
                }
            }
            let mut vt = try_zeroed(r * stride, "Vᵀ workspace")?;
            for (j, row) in v.chunks_exact(r).enumerate() {
                for l in 0..r {
                    vt[l * stride + j] = row[l];
                }
            }
            let (beta, weight) = scalars.moment_mix(moment);
            let squared = plan.algorithm == Algorithm::AdamW && moment == 1;
            terms.push(MomentTerms { us, vt, fill: None, beta, weight, squared });
            work.push(MomentWork {
                u,
                s,
                v,
                xt: try_zeroed(k * stride, "sketch input workspace")?,
                y: try_zeroed(m * k, "sketch workspace")?,
                bt: try_zeroed(n * k, "projection workspace")?,
            });
        }
        if plan.algorithm == Algorithm::AdamW {
            terms[1].fill = Some(negative_fill(&terms[1], m, r, stride, n));
        }
        Ok(CpuFactored { plan, scalars, io, seed, stride, terms, work })
    }

    fn source(&self) -> ChunkSource<'_> {
        ChunkSource {
            moments: &self.terms,
            rank: self.plan.rank,
            stride: self.stride,
            cols: self.plan.cols,
            grad: SharedPtr(self.io.grad as *mut u8),
            grad_dtype: self.io.grad_dtype,
            grad_factor: self.scalars.grad_factor,
        }
    }
}

impl FactoredPasses for CpuFactored<'_> {
    fn sketch(&mut self, input: SketchInput) -> Result<()> {
        let (m, n, k, stride) = (self.plan.rows, self.plan.cols, self.plan.sketch, self.stride);
        for (moment, w) in self.work.iter_mut().enumerate() {
            match input {
                SketchInput::Random => rng::fill_omega_transposed(
                    self.seed,
                    self.scalars.step,
                    Stream::sketch(moment),
                    n,
                    k,
                    stride,
                    &mut w.xt,
                ),
                SketchInput::Projection => {
                    for (j, row) in w.bt.chunks_exact(k).enumerate() {
                        for l in 0..k {
                            w.xt[l * stride + j] = row[l];
                        }
                    }
                }
            }
        }
        let source = self.source();
        let moments = self.terms.len();
        let xts: Vec<&[f32]> = self.work.iter().map(|w| w.xt.as_slice()).collect();
        let blocks: Vec<Vec<f32>> = (0..m.div_ceil(ROW_BLOCK))
            .into_par_iter()
            .map(|b| {
                let rows = b * ROW_BLOCK..((b + 1) * ROW_BLOCK).min(m);
                let mut out = vec![0f32; rows.len() * moments * k];
                let mut scratch = Scratch::new();
                let mut acc = vec![[0f32; LANES]; moments * k];
                for (ri, i) in rows.enumerate() {
                    acc.fill([0.0; LANES]);
                    for col0 in (0..n).step_by(CHUNK) {
                        let len = CHUNK.min(n - col0);
                        let padded = tile::round_up_lanes(len);
                        // SAFETY: row i, columns col0..col0+len lie inside the m×n gradient.
                        unsafe { tile::fill_chunk(&source, i, col0, len, &mut scratch) };
                        for (mo, xt) in xts.iter().enumerate() {
                            let a = &scratch.moment[mo][..padded];
                            for l in 0..k {
                                let x = &xt[l * stride + col0..l * stride + col0 + padded];
                                tile::dot_lanes(a, x, &mut acc[mo * k + l]);
                            }
                        }
                    }
                    for (dst, lanes) in out[ri * moments * k..(ri + 1) * moments * k].iter_mut().zip(&acc) {
                        *dst = tile::sum_lanes(lanes);
                    }
                }
                out
            })
            .collect();
        for (b, out) in blocks.iter().enumerate() {
            for (ri, row) in out.chunks_exact(moments * k).enumerate() {
                let i = b * ROW_BLOCK + ri;
                for (mo, w) in self.work.iter_mut().enumerate() {
                    w.y[i * k..(i + 1) * k].copy_from_slice(&row[mo * k..(mo + 1) * k]);
                }
            }
        }
        Ok(())
    }

    fn orthonormalize_sketch(&mut self) -> Result<()> {
        let (m, k) = (self.plan.rows, self.plan.sketch);
        self.work.par_iter_mut().for_each(|w| linalg::orthonormalize_columns(&mut w.y, m, k));
        Ok(())
    }

    fn project(&mut self, update_weights: bool) -> Result<()> {
        let (m, n, k) = (self.plan.rows, self.plan.cols, self.plan.sketch);
        let source = self.source();
        let moments = self.terms.len();
        let qs: Vec<&[f32]> = self.work.iter().map(|w| w.y.as_slice()).collect();
        let scalars = self.scalars;
        let param = SharedPtr(self.io.param);
        let param_dtype = self.io.param_dtype;
        let tiles: Vec<Vec<f32>> = (0..n.div_ceil(CHUNK))
            .into_par_iter()
            .map(|t| {
                let col0 = t * CHUNK;
                let len = CHUNK.min(n - col0);
                let mut acc = vec![0f32; moments * k * CHUNK];
                let mut scratch = Scratch::new();
                let mut weights = [0f32; CHUNK];
                for i in 0..m {
                    // SAFETY: row i, columns col0..col0+len lie inside the m×n gradient.
                    unsafe { tile::fill_chunk(&source, i, col0, len, &mut scratch) };
                    for (mo, q) in qs.iter().enumerate() {
                        let a = &scratch.moment[mo][..len];
                        for l in 0..k {
                            let ql = q[i * k + l];
                            let dst = &mut acc[(mo * k + l) * CHUNK..(mo * k + l) * CHUNK + len];
                            for (d, &x) in dst.iter_mut().zip(a) {
                                *d += ql * x;
                            }
                        }
                    }
                    if update_weights {
                        let w = &mut weights[..len];
                        let offset = i * n + col0;
                        // SAFETY: the same range of the m×n parameter; tiles own disjoint columns.
                        unsafe { dtype::load(param.get(), param_dtype, offset, w, 1.0) };
                        match scalars.algorithm {
                            Algorithm::AdamW => {
                                let (mt, vt) = (&scratch.moment[0][..len], &scratch.moment[1][..len]);
                                for ((w, &mv), &vv) in w.iter_mut().zip(mt).zip(vt) {
                                    *w = scalars.update(*w, mv, vv);
                                }
                            }
                            Algorithm::Lion => {
                                let (old, g) = (&scratch.rebuilt[0][..len], &scratch.grad[..len]);
                                for ((w, &mv), &gv) in w.iter_mut().zip(old).zip(g) {
                                    *w = scalars.update(*w, mv, gv);
                                }
                            }
                        }
                        unsafe { dtype::store(param.get(), param_dtype, offset, w, scalars.rounding) };
                    }
                }
                acc
            })
            .collect();
        for (t, acc) in tiles.iter().enumerate() {
            let col0 = t * CHUNK;
            let len = CHUNK.min(n - col0);
            for (mo, w) in self.work.iter_mut().enumerate() {
                for l in 0..k {
                    let src = &acc[(mo * k + l) * CHUNK..(mo * k + l) * CHUNK + len];
                    for (j, &x) in src.iter().enumerate() {
                        w.bt[(col0 + j) * k + l] = x;
                    }
                }
            }
        }
        Ok(())
    }

    fn orthonormalize_projection(&mut self) -> Result<()> {
        let (n, k) = (self.plan.cols, self.plan.sketch);
        self.work.par_iter_mut().for_each(|w| linalg::orthonormalize_columns(&mut w.bt, n, k));
        Ok(())
    }

    fn compress(&mut self) -> Result<()> {
        let (m, n, k, r) = (self.plan.rows, self.plan.cols, self.plan.sketch, self.plan.rank);
        self.work.par_iter_mut().for_each(|w| {
            linalg::truncated_svd(&w.y, &w.bt, m, n, k, r, w.u, w.s, w.v);
        });
        Ok(())
    }
}

/// c of ALGORITHM.md step 2: the mean of |x| over the negative entries x of U·diag(S)·Vᵀ, by
/// a compute-only sweep over the factors (0 when there are none).
fn negative_fill(terms: &MomentTerms, m: usize, r: usize, stride: usize, n: usize) -> f32 {
    if terms.us.iter().all(|&x| x == 0.0) {
        return 0.0;
    }
    let partial: Vec<(f64, u64)> = (0..m.div_ceil(ROW_BLOCK))
        .into_par_iter()
        .map(|b| {
            let mut row_buf = [0f32; CHUNK];
            let (mut sum, mut count) = (0f64, 0u64);
            for i in b * ROW_BLOCK..((b + 1) * ROW_BLOCK).min(m) {
                for col0 in (0..n).step_by(CHUNK) {
                    let out = &mut row_buf[..CHUNK.min(n - col0)];
                    tile::rebuild_row(terms, r, stride, i, col0, out);
                    let mut lanes = [0f32; LANES];
                    let mut negatives = [0u32; LANES];
                    for chunk in out.chunks(LANES) {
                        for (t, &x) in chunk.iter().enumerate() {
                            let negative = x < 0.0;
                            lanes[t] += if negative { -x } else { 0.0 };
                            negatives[t] += negative as u32;
                        }
                    }
                    sum += tile::sum_lanes(&lanes) as f64;
                    count += negatives.iter().map(|&c| c as u64).sum::<u64>();
                }
            }
            (sum, count)
        })
        .collect();
    let (sum, count) = partial.iter().fold((0f64, 0u64), |(s, c), &(ps, pc)| (s + ps, c + pc));
    if count == 0 {
        0.0
    } else {
        (sum / count as f64) as f32
    }
}
