//! The FACTORED passes on the CPU: the sketch pass runs over rows, the projection pass over
//! fixed-width column tiles (so each tile owns its columns of B and no reduction crosses
//! threads), and the small factorizations run in f64. A sharded state runs the passes over its
//! whole rows (and its partial rows, `segment`) and sums each pass's small output across the
//! group before the next step of the RSVD uses it. Parallel work runs on the library's pool;
//! the caller's all-reduce runs on the calling thread.

use crate::config::{Algorithm, Dtype, Plan};
use crate::dtype;
use crate::error::{try_filled, try_zeroed, Result};
use crate::linalg;
use crate::rng::{self, Stream};
use crate::shard::{self, Collective, ShardRows};
use crate::step::{FactoredPasses, SketchInput, StepIo, StepScalars};

use super::lanes::Lanes;
use super::tile::{self, multiversion, Bf16s, F32s, MomentTerms, Packed, CHUNK, F8, GROUPS, H8, LANES};
use super::sign_bound::SignBound;
use super::{segment, SharedPtr};

/// Rows per task of the row-parallel passes.
const ROW_BLOCK: usize = 8;
/// Columns of Ω per task (a multiple of 4, Philox's block).
const OMEGA_PIECE: usize = 512;

/// The stored factors of one moment and the per-step workspace, all O((m + n)·k).
struct MomentWork<'a> {
    u: &'a mut [f32],
    s: &'a mut [f32],
    v: &'a mut [f32],
    /// Sketch input X (Ω or a power-iteration basis), group-major: groups × k.
    xg: Vec<F8>,
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
    terms: Vec<MomentTerms>,
    work: Vec<MomentWork<'a>>,
    /// Where AdamW's Ṽ provably holds no negative entry (its sweep and sketches skip those
    /// chunks' rebuilds).
    bound: Option<SignBound>,
    /// The state's elements in row terms (every row when unsharded).
    rows: ShardRows,
    /// Sums pass outputs across the group (sharded states).
    collective: Option<Collective>,
}

impl<'a> CpuFactored<'a> {
    /// Prepares a step from the stored factors (u, s, v per moment, in buffer order). With a
    /// collective, this sums the non-negativity statistics across the group.
    pub fn new(
        plan: Plan,
        scalars: StepScalars,
        io: StepIo,
        seed: u64,
        factors: Vec<&'a mut [f32]>,
        collective: Option<Collective>,
    ) -> Result<CpuFactored<'a>> {
        let (m, n, r, k) = (plan.rows, plan.cols, plan.rank, plan.sketch);
        let groups = tile::groups(n);
        // Each moment's U·S, V and workspaces, the moments side by side.
        let prepared = {
            let read: Vec<&[f32]> = factors.iter().map(|f| &**f).collect();
            super::map_indices(plan.moments(), (m + n) * k * 4, |moment| -> Result<Prepared> {
                let (u, s, v) = (read[3 * moment], read[3 * moment + 1], read[3 * moment + 2]);
                let (beta, weight) = scalars.moment_mix(moment);
                let terms = MomentTerms { us: scaled_rows(u, s, r)?, vg: group_major_rows(v, r, groups)?, fill: 0.0, beta, weight };
                // AdamW's second moment: the bound of its non-negativity fix.
                let bound = if plan.algorithm == Algorithm::AdamW && moment == 1 { SignBound::new(&terms.us, &terms.vg, r) } else { None };
                let (y, bt) = (try_zeroed(m * k, "sketch workspace")?, try_zeroed(n * k, "projection workspace")?);
                Ok(Prepared { terms, bound, xg: try_filled(groups * k, tile::ZERO, "sketch input workspace")?, y, bt })
            })
        };
        let mut terms = Vec::with_capacity(plan.moments());
        let mut work = Vec::with_capacity(plan.moments());
        let mut bound = None;
        let mut parts = factors.into_iter();
        for moment in prepared {
            let Prepared { terms: moment_terms, bound: moment_bound, xg, y, bt } = moment?;
            let (Some(u), Some(s), Some(v)) = (parts.next(), parts.next(), parts.next()) else {
                unreachable!("a FACTORED plan has three buffers per moment");
            };
            terms.push(moment_terms);
            bound = bound.or(moment_bound);
            work.push(MomentWork { u, s, v, xg, y, bt });
        }
        let rows = plan.shard.rows(n);
        if plan.algorithm == Algorithm::AdamW {
            terms[1].fill = negative_fill(&terms[1], r, groups, &rows, bound.as_ref(), collective.as_ref())?;
        }
        Ok(CpuFactored { plan, scalars, io, seed, terms, work, bound, rows, collective })
    }

    /// Sums one buffer per moment across the group, in one call.
    fn sum_across_group(&mut self, pick: for<'b> fn(&'b mut MomentWork<'a>) -> &'b mut Vec<f32>, what: &str) -> Result<()> {
        let Some(collective) = self.collective else { return Ok(()) };
        let mut packed: Vec<f32> = self.work.iter_mut().flat_map(|w| pick(w).to_vec()).collect();
        collective.sum(&mut packed, std::ptr::null_mut(), what)?;
        let mut rest = packed.as_slice();
        for w in &mut self.work {
            let dst = pick(w);
            let (mine, tail) = rest.split_at(dst.len());
            dst.copy_from_slice(mine);
            rest = tail;
        }
        Ok(())
    }

    fn source(&self) -> Source<'_> {
        Source {
            moments: &self.terms,
            rank: self.plan.rank,
            k: self.plan.sketch,
            cols: self.plan.cols,
            grad: SharedPtr(self.io.grad as *mut u8),
            grad_dtype: self.io.grad_dtype,
            grad_factor: self.scalars.grad_factor,
            bound: self.bound.as_ref(),
            body_end: self.rows.body.end,
        }
    }
}

impl FactoredPasses for CpuFactored<'_> {
    fn sketch(&mut self, input: SketchInput) -> Result<()> {
        let (n, k) = (self.plan.cols, self.plan.sketch);
        // Ω in pieces of OMEGA_PIECE columns of one column l of one moment, drawn in parallel
        // (a normal costs about as much as 20 elements of a pass).
        match input {
            SketchInput::Random => {
                let (seed, step) = (self.seed, self.scalars.step);
                let pieces_per_column = n.div_ceil(OMEGA_PIECE);
                let xgs: Vec<SharedPtr<F8>> = self.work.iter_mut().map(|w| SharedPtr(w.xg.as_mut_ptr())).collect();
                super::map_indices(self.work.len() * k * pieces_per_column, self.work.len() * k * n * 20, |piece| {
                    let (moment, l, first) = (piece / (k * pieces_per_column), piece / pieces_per_column % k, piece % pieces_per_column * OMEGA_PIECE);
                    let mut omega = [0f32; OMEGA_PIECE];
                    let omega = &mut omega[..OMEGA_PIECE.min(n - first)];
                    rng::fill_omega_columns(seed, step, Stream::sketch(moment), l, first, omega);
                    for (gi, lanes) in omega.chunks(LANES).enumerate() {
                        // SAFETY: `first` is a multiple of LANES, so this piece alone writes
                        // vector l of these groups of the moment's xg (groups × k vectors,
                        // alive until the step ends).
                        let dst = unsafe { &mut *xgs[moment].element((first / LANES + gi) * k + l) };
                        dst[..lanes.len()].copy_from_slice(lanes);
                    }
                });
            }
            SketchInput::Projection => {
                for w in &mut self.work {
                    for (j, row) in w.bt.chunks_exact(k).enumerate() {
                        for l in 0..k {
                            *tile::group_major(&mut w.xg, k, j, l) = row[l];
                        }
                    }
                }
            }
        }
        // The first moment has no non-negativity fix, so its sketch splits without a rebuild:
        // (β·U·S·Vᵀ + (1 − β)·G)·X = β·(U·S)·(VᵀX) + (1 − β)·G·X. The second moment splits
        // the same way over the chunks its bound passes.
        let low = SketchLowRank {
            first: low_rank_product(&self.terms[0].vg, &self.work[0].xg, self.plan.rank, k, n),
            second: match (&self.bound, self.terms.get(1)) {
                (Some(_), Some(terms)) => chunk_products(&terms.vg, &self.work[1].xg, self.plan.rank, k, n),
                _ => ChunkProducts::default(),
            },
        };
        if self.plan.is_sharded() {
            // Rows outside the shard are other ranks' part of the sum.
            self.work.iter_mut().for_each(|w| w.y.fill(0.0));
        }
        let ys: Vec<SharedPtr<f32>> = self.work.iter_mut().map(|w| SharedPtr(w.y.as_mut_ptr())).collect();
        let source = self.source();
        let moments = self.terms.len();
        let xgs: Vec<&[F8]> = self.work.iter().map(|w| w.xg.as_slice()).collect();
        let body = self.rows.body.clone();
        super::map_indices(body.len().div_ceil(ROW_BLOCK), body.len() * n, |b| {
            let start = body.start + b * ROW_BLOCK;
            let rows = start..(start + ROW_BLOCK).min(body.end);
            let block = sketch_rows(&source, &xgs, &low, rows.clone());
            for (i, row) in rows.zip(block.chunks_exact(moments * k)) {
                for (y, part) in ys.iter().zip(row.chunks_exact(k)) {
                    // SAFETY: this block alone writes rows `rows` of each moment's y (m × k,
                    // alive until the step ends; nothing reads it during the pass).
                    unsafe { std::ptr::copy_nonoverlapping(part.as_ptr(), y.element(i * k), k) };
                }
            }
        });
        let mut partial: Vec<(usize, Vec<f32>)> = Vec::new();
        for seg in self.rows.segments() {
            let mut out = vec![0f32; moments * k];
            segment::sketch(&source, &xgs, seg, &mut out);
            partial.push((seg.row, out));
        }
        for (i, row) in partial {
            for (mo, w) in self.work.iter_mut().enumerate() {
                for l in 0..k {
                    w.y[i * k + l] += row[mo * k + l];
                }
            }
        }
        self.sum_across_group(|w| &mut w.y, "sketch")
    }

    fn orthonormalize_sketch(&mut self) -> Result<()> {
        let (m, k) = (self.plan.rows, self.plan.sketch);
        let work = &mut self.work;
        super::for_each_mut(work, m * k * k, |w| linalg::orthonormalize_columns(&mut w.y, m, k));
        Ok(())
    }

    fn project(&mut self, update_weights: bool) -> Result<()> {
        let (n, k) = (self.plan.cols, self.plan.sketch);
        let source = self.source();
        let qs: Vec<&[f32]> = self.work.iter().map(|w| w.y.as_slice()).collect();
        let update = update_weights.then_some((SharedPtr(self.io.param), self.io.param_dtype, self.scalars));
        // Each column's sums run over a span's rows in order and the spans' sums are added in
        // order, so the tile width (chosen for the pool's size: long contiguous row segments,
        // enough tiles for every thread) never changes the result; the spans depend on the
        // shape alone.
        let body = self.rows.body.clone();
        let spans = row_spans(body.len(), n);
        let width = tile_width(n, super::threads(), accumulator_column_bytes(self.terms.len(), k));
        let span_rows = body.len().div_ceil(spans).next_multiple_of(PROJECT_ROWS);
        let pieces: Vec<Vec<F8>> = super::map_indices(n.div_ceil(width) * spans, body.len() * n, |piece| {
            let (t, span) = (piece / spans, piece % spans);
            let first = (body.start + span * span_rows).min(body.end);
            let rows = first..(first + span_rows).min(body.end);
            project_tile(&source, &qs, t * width, width.min(n - t * width), rows, update)
        });
        // The partial rows of a flat shard, added after the whole rows.
        let mut partial: Vec<Vec<f32>> = Vec::new();
        if self.rows.segments().next().is_some() {
            partial = vec![vec![0f32; n * k]; self.terms.len()];
            let mut bts: Vec<&mut [f32]> = partial.iter_mut().map(|b| b.as_mut_slice()).collect();
            for seg in self.rows.segments() {
                segment::project(&source, &qs, seg, &mut bts, update);
            }
        }
        for (piece, acc) in pieces.iter().enumerate() {
            let (t, span) = (piece / spans, piece % spans);
            let col0 = t * width;
            let len = width.min(n - col0);
            let stride = accumulator_stride(len);
            for (mo, w) in self.work.iter_mut().enumerate() {
                let bt = &mut w.bt[col0 * k..(col0 + len) * k];
                for l in 0..k {
                    let src = &acc[(mo * k + l) * stride..][..tile::groups(len)].as_flattened()[..len];
                    let dst = bt.iter_mut().skip(l).step_by(k);
                    if span == 0 {
                        dst.zip(src).for_each(|(d, &x)| *d = x);
                    } else {
                        dst.zip(src).for_each(|(d, &x)| *d += x);
                    }
                }
            }
        }
        for (w, extra) in self.work.iter_mut().zip(&partial) {
            for (b, e) in w.bt.iter_mut().zip(extra) {
                *b += e;
            }
        }
        if !update_weights {
            // The kernels left the first moment's rebuild out of the whole rows (`tile::project_rows`).
            let w = &mut self.work[0];
            add_first_low_rank(&self.terms[0], &w.y, body, self.plan.rank, k, n, &mut w.bt);
        }
        self.sum_across_group(|w| &mut w.bt, "projection")
    }

    fn orthonormalize_projection(&mut self) -> Result<()> {
        let (n, k) = (self.plan.cols, self.plan.sketch);
        let work = &mut self.work;
        super::for_each_mut(work, n * k * k, |w| linalg::orthonormalize_columns(&mut w.bt, n, k));
        Ok(())
    }

    fn compress(&mut self) -> Result<()> {
        let (m, n, k, r) = (self.plan.rows, self.plan.cols, self.plan.sketch, self.plan.rank);
        let work = &mut self.work;
        super::for_each_mut(work, (m + n) * k * k, |w| linalg::truncated_svd(&w.y, &w.bt, m, n, k, r, w.u, w.s, w.v));
        Ok(())
    }
}

/// One moment made ready for a step by `CpuFactored::new`.
struct Prepared {
    terms: MomentTerms,
    bound: Option<SignBound>,
    xg: Vec<F8>,
    y: Vec<f32>,
    bt: Vec<f32>,
}

/// U·diag(S): rows × rank, row-major.
fn scaled_rows(u: &[f32], s: &[f32], rank: usize) -> Result<Vec<f32>> {
    let mut us = try_zeroed(u.len(), "U·S workspace")?;
    for (dst, src) in us.chunks_exact_mut(rank).zip(u.chunks_exact(rank)) {
        for ((d, &x), &scale) in dst.iter_mut().zip(src).zip(s) {
            *d = x * scale;
        }
    }
    Ok(us)
}

/// V (cols × rank, row-major) group-major: `groups` × rank vectors of eight columns, zero past
/// the last column.
fn group_major_rows(v: &[f32], rank: usize, groups: usize) -> Result<Vec<F8>> {
    let mut vg = try_filled(groups * rank, tile::ZERO, "V workspace")?;
    for (block, cols) in vg.chunks_exact_mut(rank).zip(v.chunks(LANES * rank)) {
        for (t, row) in cols.chunks_exact(rank).enumerate() {
            for (dst, &x) in block.iter_mut().zip(row) {
                dst[t] = x;
            }
        }
    }
    Ok(vg)
}

/// What every task of a pass reads.
pub(super) struct Source<'a> {
    pub moments: &'a [MomentTerms],
    pub rank: usize,
    pub k: usize,
    pub cols: usize,
    pub grad: SharedPtr<u8>,
    pub grad_dtype: Dtype,
    pub grad_factor: f32,
    /// AdamW's second moment's sign bound, if any.
    pub bound: Option<&'a SignBound>,
    /// End of the whole rows a pass covers.
    pub body_end: usize,
}

impl Source<'_> {
    /// Whether AdamW's sketch leaves the second moment's rebuild out of row `row`, chunk `chunk`
    /// (CHUNK columns): its bound shows Ṽ free of negatives there, so the fix does not act and
    /// that part of the sketch is the low-rank product β·(U·S)·(VᵀX) over the chunk, added per
    /// row (`add_second_low_rank`). Partial rows (`segment`) always rebuild.
    #[inline(always)]
    fn low_rank_chunk(&self, row: usize, chunk: usize) -> bool {
        self.bound.is_some_and(|b| b.nonnegative(row, chunk))
    }

    /// Asks for row `row`, columns `col0 .. col0 + len` of the gradient to be brought into cache.
    #[inline(always)]
    fn prefetch_grad<S: Lanes>(&self, row: usize, col0: usize, len: usize) {
        let size = self.grad_dtype.size();
        let start = (self.grad.get() as *const u8).wrapping_add((row * self.cols + col0) * size);
        for line in (0..len * size).step_by(64) {
            S::prefetch(start.wrapping_add(line));
        }
    }

    /// Asks for the gradient a sketch block reads after row `row`'s chunk at `col0`: the row's
    /// next chunk (needed after the block's other rows; the hardware prefetcher does not follow
    /// this many interleaved row streams), or after its last chunk the first chunk of the same
    /// row of the next block, which is this thread's next unless the block ends its range. A
    /// narrow matrix's rows are a chunk or a few long, too short for the prefetcher to pick up:
    /// without this its sketch waited for DRAM on every block (a d=256 model's step: the sketch
    /// pass 33% shorter with it).
    #[inline(always)]
    fn prefetch_after<S: Lanes>(&self, row: usize, col0: usize) {
        let (n, next) = (self.cols, col0 + CHUNK);
        if next < n {
            self.prefetch_grad::<S>(row, next, CHUNK.min(n - next));
        } else if row + ROW_BLOCK < self.body_end {
            self.prefetch_grad::<S>(row + ROW_BLOCK, 0, CHUNK.min(n));
        }
    }

    /// Row `row`, columns `col0 .. col0 + len` of the gradient into `out`, zero-padded to whole
    /// groups; returns those groups.
    #[inline(always)] // into the AVX2 passes, where the conversions vectorize
    fn load_grad<'b>(&'b self, row: usize, col0: usize, len: usize, out: &'b mut [f32; CHUNK]) -> &'b [F8] {
        let offset = row * self.cols + col0;
        if self.grad_in_place_f32() && len.is_multiple_of(LANES) {
            // SAFETY: the range lies inside the rows × cols f32 gradient (contract of the step),
            // which nobody writes during the step.
            let direct = unsafe { std::slice::from_raw_parts((self.grad.get() as *const f32).wrapping_add(offset), len) };
            return tile::as_groups(direct);
        }
        // SAFETY: as above.
        unsafe { dtype::load(self.grad.get(), self.grad_dtype, offset, &mut out[..len], self.grad_factor) };
        let padded = tile::groups(len) * LANES;
        out[len..padded].fill(0.0);
        tile::as_groups(&out[..padded])
    }

    /// Whether the kernels read the gradient where it lies as f32 (`F32s`, rows of whole groups):
    /// f32 with no scale to apply.
    fn grad_in_place_f32(&self) -> bool {
        self.grad_dtype == Dtype::F32 && self.grad_factor == 1.0
    }

    /// Whether the kernels read the gradient where it lies as bf16 (`Bf16s`): bf16, no scale
    /// to apply, and rows of whole groups (so every chunk is whole groups too).
    fn grad_in_place_bf16(&self) -> bool {
        self.grad_dtype == Dtype::Bf16 && self.grad_factor == 1.0 && self.cols.is_multiple_of(LANES)
    }
}

/// Where the kernels of a pass read gradient rows: `F32s` groups (the caller's f32 rows, or an
/// f32 copy of other dtypes, `Source::load_grad`) or `Bf16s` groups (the caller's bf16 rows
/// where they lie; only when `Source::grad_in_place_bf16`).
trait GradRows: Packed {
    /// Row `row`, columns `col0 .. col0 + len`: at most CHUNK columns through `scratch`, any
    /// number where the rows are read in place (`project_block`).
    fn row<'b>(source: &'b Source, row: usize, col0: usize, len: usize, scratch: &'b mut [f32; CHUNK]) -> &'b [Self::Group];
    /// Whether `row` reads this step's gradient where it lies (rows of whole groups).
    fn in_place(source: &Source) -> bool;
    /// Whether the projection updates weights of `dtype` in place with this packing.
    fn weights_in_place(dtype: Dtype, rounding: &dtype::Rounding) -> bool;
    /// The rows as f32 groups (`F32s` only), for weights updated through an f32 copy: the
    /// kernels are instantiated for one packing of gradient and weights together.
    fn as_f32<const R: usize>(rows: [&[Self::Group]; R]) -> Option<[&[F8]; R]>;
}

impl GradRows for F32s {
    #[inline(always)]
    fn row<'b>(source: &'b Source, row: usize, col0: usize, len: usize, scratch: &'b mut [f32; CHUNK]) -> &'b [F8] {
        source.load_grad(row, col0, len, scratch)
    }
    fn in_place(source: &Source) -> bool {
        source.grad_in_place_f32()
    }
    fn weights_in_place(dtype: Dtype, _: &dtype::Rounding) -> bool {
        dtype == Dtype::F32
    }
    fn as_f32<const R: usize>(rows: [&[F8]; R]) -> Option<[&[F8]; R]> {
        Some(rows)
    }
}

impl GradRows for Bf16s {
    #[inline(always)]
    fn row<'b>(source: &'b Source, row: usize, col0: usize, len: usize, _: &'b mut [f32; CHUNK]) -> &'b [H8] {
        debug_assert!(source.grad_in_place_bf16() && len.is_multiple_of(LANES));
        let start = (source.grad.get() as *const u16).wrapping_add(row * source.cols + col0);
        // SAFETY: the range lies inside the rows × cols bf16 gradient (contract of the step),
        // which nobody writes during the step; u16 and [u16; 8] need the same alignment.
        let halves = unsafe { std::slice::from_raw_parts(start, len) };
        halves.as_chunks::<LANES>().0
    }
    fn in_place(source: &Source) -> bool {
        source.grad_in_place_bf16()
    }
    fn weights_in_place(dtype: Dtype, rounding: &dtype::Rounding) -> bool {
        dtype == Dtype::Bf16 && matches!(rounding, dtype::Rounding::NearestEven)
    }
    fn as_f32<const R: usize>(_: [&[H8]; R]) -> Option<[&[F8]; R]> {
        None
    }
}

multiversion! {
    /// Y rows of a block of rows, all moments: [row][moment][l].
    fn sketch_rows<S>(source: &Source, xgs: &[&[F8]], low: &SketchLowRank, rows: std::ops::Range<usize>) -> Vec<f32> {
        // Rank = k (no oversampling, the default) also fixes the rebuild's length.
        macro_rules! fixed_width {
            ($($k:literal)*) => {
                match source.k {
                    $($k if source.rank == $k => sketch_rows_fixed::<S, F32s, $k, true>(source, xgs, low, rows),)*
                    $($k => sketch_rows_fixed::<S, F32s, $k, false>(source, xgs, low, rows),)*
                    _ => sketch_rows_dyn::<S>(source, xgs, low, rows),
                }
            };
        }
        // bf16 gradients are read in place by the kernels of rank = k (the default); other
        // shapes of the sketch convert rows into f32 copies.
        macro_rules! in_place_bf16 {
            ($($k:literal)*) => {
                match source.k {
                    $($k => return sketch_rows_fixed::<S, Bf16s, $k, true>(source, xgs, low, rows),)*
                    _ => {}
                }
            };
        }
        if S::PACKED_BF16 && source.grad_in_place_bf16() && source.rank == source.k {
            in_place_bf16!(1 2 4 8);
        }
        fixed_width!(1 2 3 4 5 6 7 8 16)
    }
}

/// `sketch_rows` for a sketch width known at compile time. Chunk by chunk, every row of the
/// block in turn: the chunk's X and V (a few KB) stay in L1 across the rows instead of
/// streaming from L2 once per row; a row's accumulators wait in memory between chunks, which
/// leaves each row's sums in the same order.
#[inline(always)]
fn sketch_rows_fixed<S: Lanes, G: GradRows, const K: usize, const RANK_IS_K: bool>(
    source: &Source,
    xgs: &[&[F8]],
    low: &SketchLowRank,
    rows: std::ops::Range<usize>,
) -> Vec<f32> {
    let n = source.cols;
    let rank = if RANK_IS_K { K } else { source.rank };
    let moments = source.moments.len();
    debug_assert!(rows.len() <= ROW_BLOCK && moments <= 2);
    #[cfg(target_arch = "x86_64")]
    if S::WIDE && RANK_IS_K && moments == 2 {
        return sketch_rows_wide::<S, G, K>(source, xgs, low, rows);
    }
    let mut accs = [[[S::zero(); K]; 2]; ROW_BLOCK];
    let mut low_chunks = [0usize; ROW_BLOCK];
    let mut grad = [0f32; CHUNK];
    for col0 in (0..n).step_by(CHUNK) {
        for ((acc, i), low) in accs.iter_mut().zip(rows.clone()).zip(&mut low_chunks) {
            source.prefetch_after::<S>(i, col0);
            let g = G::row(source, i, col0, CHUNK.min(n - col0), &mut grad);
            let rebuild = !source.low_rank_chunk(i, col0 / CHUNK);
            *low += !rebuild as usize;
            if RANK_IS_K && moments == 2 {
                // AdamW: both moments in one loop (the same operations per accumulator).
                let [a0, a1] = acc;
                if rebuild {
                    tile::sketch_chunk_both::<S, G, K, K, true>(&source.moments[1], xgs[0], xgs[1], i, col0 / LANES, g, a0, a1);
                } else {
                    tile::sketch_chunk_both::<S, G, K, K, false>(&source.moments[1], xgs[0], xgs[1], i, col0 / LANES, g, a0, a1);
                }
                continue;
            }
            for (mo, (terms, xg)) in source.moments.iter().zip(xgs).enumerate() {
                // A local copy, so the accumulators live in registers for the chunk.
                let mut a = acc[mo];
                if mo == 0 {
                    tile::sketch_chunk_grad::<S, G, K>(xg, col0 / LANES, g, &mut a);
                } else {
                    // Rank ≠ k (oversampling): the rebuild's length is known at run time only.
                    if rebuild {
                        tile::sketch_chunk::<S, G, K, true>(terms, xg, rank, i, col0 / LANES, g, &mut a);
                    } else {
                        tile::sketch_chunk::<S, G, K, false>(terms, xg, rank, i, col0 / LANES, g, &mut a);
                    }
                }
                acc[mo] = a;
            }
        }
    }
    let mut out = vec![0f32; rows.len() * moments * K];
    for ((ri, i), acc) in rows.enumerate().zip(&accs) {
        for (mo, terms) in source.moments.iter().enumerate() {
            for l in 0..K {
                let sum = tile::sum_lanes(&S::to_array(acc[mo][l]));
                out[(ri * moments + mo) * K + l] = if mo == 0 { first_moment_sketch(terms, &low.first, source.rank, K, i, l, sum) } else { sum };
            }
        }
        if moments == 2 {
            add_second_low_rank(source, &low.second, i, low_chunks[ri], &mut out[(ri * 2 + 1) * K..(ri * 2 + 2) * K]);
        }
    }
    out
}

/// `sketch_rows_fixed` for AdamW with rank = k = K on CPUs with AVX-512: the rows of the block
/// two at a time in sixteen lanes (`wide::sketch_chunk_both_pair`; a lone last row is paired
/// with itself), the same bits.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn sketch_rows_wide<S: Lanes, G: GradRows, const K: usize>(source: &Source, xgs: &[&[F8]], low: &SketchLowRank, rows: std::ops::Range<usize>) -> Vec<f32> {
    let n = source.cols;
    let groups = tile::groups(n);
    // The bounds `sketch_chunk_both_pair` relies on.
    assert!(source.moments.len() == 2 && xgs.len() == 2);
    assert!(xgs.iter().all(|x| x.len() >= groups * K) && source.moments[1].vg.len() >= groups * K);
    let mut accs = [[[[0f32; 16]; K]; 2]; ROW_BLOCK / 2];
    let mut low_chunks = [0usize; ROW_BLOCK];
    let mut scratch = [[0f32; CHUNK]; 2];
    for col0 in (0..n).step_by(CHUNK) {
        let len = CHUNK.min(n - col0);
        for (p, acc) in accs.iter_mut().enumerate().take(rows.len().div_ceil(2)) {
            let a = rows.start + 2 * p;
            let b = (a + 1).min(rows.end - 1);
            source.prefetch_after::<S>(a, col0);
            source.prefetch_after::<S>(b, col0);
            let [sa, sb] = &mut scratch;
            let (ga, gb) = (G::row(source, a, col0, len, sa), G::row(source, b, col0, len, sb));
            let (rows, group0, groups) = ([a, b], col0 / LANES, ga.len());
            let (ga, gb) = (ga.as_ptr().cast::<u8>(), gb.as_ptr().cast::<u8>());
            // A row whose chunk is a low-rank product gets β = 0 (the same bits as leaving its
            // rebuild out); the rebuilds are made unless both rows leave them out.
            let terms = &source.moments[1];
            let low_rank = [source.low_rank_chunk(a, col0 / CHUNK), source.low_rank_chunk(b, col0 / CHUNK)];
            low_chunks[2 * p] += low_rank[0] as usize;
            low_chunks[2 * p + 1] += low_rank[1] as usize; // a lone last row's pair: unused
            let betas = [if low_rank[0] { 0.0 } else { terms.beta }, if low_rank[1] { 0.0 } else { terms.beta }];
            // SAFETY: S::WIDE holds only in the build that runs on CPUs with AVX-512F
            // (isa::active); both rows' chunks have the same groups, of G's dtype; bounds
            // asserted above.
            unsafe {
                use super::wide::sketch_chunk_both_pair as pair;
                match (G::BF16, low_rank == [true, true]) {
                    (true, false) => pair::<K, true, true>(terms, xgs[0], xgs[1], rows, betas, group0, groups, [ga, gb], acc),
                    (true, true) => pair::<K, true, false>(terms, xgs[0], xgs[1], rows, betas, group0, groups, [ga, gb], acc),
                    (false, false) => pair::<K, false, true>(terms, xgs[0], xgs[1], rows, betas, group0, groups, [ga, gb], acc),
                    (false, true) => pair::<K, false, false>(terms, xgs[0], xgs[1], rows, betas, group0, groups, [ga, gb], acc),
                }
            };
        }
    }
    let mut out = vec![0f32; rows.len() * 2 * K];
    for (ri, i) in rows.enumerate() {
        let (acc, half) = (&accs[ri / 2], ri % 2 * LANES);
        for (mo, terms) in source.moments.iter().enumerate() {
            for l in 0..K {
                let lanes: &F8 = acc[mo][l][half..half + LANES].try_into().expect("eight lanes");
                let sum = tile::sum_lanes(lanes);
                out[(ri * 2 + mo) * K + l] = if mo == 0 { first_moment_sketch(terms, &low.first, source.rank, K, i, l, sum) } else { sum };
            }
        }
        add_second_low_rank(source, &low.second, i, low_chunks[ri], &mut out[(ri * 2 + 1) * K..(ri * 2 + 2) * K]);
    }
    out
}

#[inline(always)]
fn sketch_rows_dyn<S: Lanes>(source: &Source, xgs: &[&[F8]], low: &SketchLowRank, rows: std::ops::Range<usize>) -> Vec<f32> {
    let (k, n) = (source.k, source.cols);
    let moments = source.moments.len();
    let mut out = vec![0f32; rows.len() * moments * k];
    let mut grad = [0f32; CHUNK];
    let mut acc = vec![tile::ZERO; k];
    for (ri, i) in rows.enumerate() {
        for (mo, (terms, xg)) in source.moments.iter().zip(xgs).enumerate() {
            acc.fill(tile::ZERO);
            let mut low_chunks = 0;
            for col0 in (0..n).step_by(CHUNK) {
                let g = source.load_grad(i, col0, CHUNK.min(n - col0), &mut grad);
                if mo == 0 {
                    tile::sketch_chunk_grad_dyn::<S>(xg, k, col0 / LANES, g, &mut acc);
                } else {
                    if source.low_rank_chunk(i, col0 / CHUNK) {
                        low_chunks += 1;
                        tile::sketch_chunk_dyn::<S, false>(terms, xg, source.rank, k, i, col0 / LANES, g, &mut acc);
                    } else {
                        tile::sketch_chunk_dyn::<S, true>(terms, xg, source.rank, k, i, col0 / LANES, g, &mut acc);
                    }
                }
            }
            let dst = &mut out[(ri * moments + mo) * k..(ri * moments + mo + 1) * k];
            for (l, (d, lanes)) in dst.iter_mut().zip(&acc).enumerate() {
                let sum = tile::sum_lanes(lanes);
                *d = if mo == 0 { first_moment_sketch(terms, &low.first, source.rank, k, i, l, sum) } else { sum };
            }
            if mo == 1 {
                add_second_low_rank(source, &low.second, i, low_chunks, dst);
            }
        }
    }
    out
}

/// Columns per tile of the projection pass: a multiple of CHUNK. Two tiles per thread keep the
/// threads level; but each row of a tile is a stream the hardware prefetcher must pick up anew,
/// so where that leaves tiles narrower than STREAM_COLS they are widened to one per thread if
/// every thread still gets one (4096² on two threads: 2048 columns, not 1024; 1024²: 512, not
/// 256). Tiles grow past 2048 columns, and are widened at all, only while their Bᵀ accumulators
/// (`column_bytes` per column) take at most WIDE_ACCUMULATOR_BYTES: rank-16 AdamW's 256 KiB at
/// 2048 columns ran the 4096² projection slower than 1024 (5 of 6 alternating runs).
fn tile_width(cols: usize, threads: usize, column_bytes: usize) -> usize {
    let threads = threads.max(1);
    let fits = |width: usize| width * column_bytes <= WIDE_ACCUMULATOR_BYTES;
    let max_width = (WIDE_ACCUMULATOR_BYTES / column_bytes.max(1) / CHUNK * CHUNK).clamp(8 * CHUNK, MAX_TILE);
    let width_for = |tiles: usize| (cols.div_ceil(tiles).div_ceil(CHUNK) * CHUNK).clamp(CHUNK, max_width);
    let balanced = width_for(2 * threads);
    let widened = width_for(threads);
    if balanced < STREAM_COLS && widened > balanced && cols.div_ceil(widened) >= threads && fits(widened) {
        return widened;
    }
    balanced
}

/// Bytes of Bᵀ accumulators per column of a projection tile.
fn accumulator_column_bytes(moments: usize, k: usize) -> usize {
    moments * k * std::mem::size_of::<f32>()
}

/// Tile width below which the projection's rows are too short to stream well: at 4096² on two
/// threads (rank 4) the pass ran in ~0.83× the time with 2048-column tiles against 1024 (15 of
/// 19 alternating runs), at 4096×11008 in ~0.9× with 2816 against 2048.
const STREAM_COLS: usize = 8 * CHUNK;
/// The widest projection tile.
const MAX_TILE: usize = 16 * CHUNK;
/// Accumulator bytes up to which a tile may be widened or grow past 2048 columns (rank-4
/// AdamW: 3072 columns).
const WIDE_ACCUMULATOR_BYTES: usize = 96 << 10;

/// Row spans of the projection pass, from the shape alone: a narrow matrix has too few column
/// tiles to keep every thread busy, so its rows are split as well (256 columns: 8 spans, 2048
/// and more: 1), at least 64 rows each.
fn row_spans(rows: usize, cols: usize) -> usize {
    (8 * CHUNK).div_ceil(cols.max(1)).min(rows / 64).max(1)
}

/// Rows the projection pass handles together.
const PROJECT_ROWS: usize = 4;

/// Groups between consecutive rows of a column tile's Bᵀ accumulators: the tile's groups and
/// one cache line more. Every column group updates 2k of these rows; a whole number of KiB
/// apart (1024 columns: 4 KiB) they would all fall into one L1 set and evict each other.
fn accumulator_stride(width: usize) -> usize {
    tile::groups(width) + 64 / std::mem::size_of::<F8>()
}

multiversion! {
    /// Bᵀ of the column tile `col0 .. col0 + width` over `rows`, all moments: [moment][l][group],
    /// rows `accumulator_stride(width)` groups apart,
    /// and the weight update of the tile's columns when `update` is given.
    fn project_tile<S>(
        source: &Source,
        qs: &[&[f32]],
        col0: usize,
        width: usize,
        rows: std::ops::Range<usize>,
        update: Option<(SharedPtr<u8>, Dtype, StepScalars)>,
    ) -> Vec<F8> {
        let adamw = source.moments.len() == 2;
        // bf16 gradients (with bf16 weights rounded to nearest, or no update) are read in place
        // by the kernels of the common ranks with rank = k; other cases convert rows into f32
        // copies.
        let weights_too = update.as_ref().is_none_or(|(_, dtype, scalars)| Bf16s::weights_in_place(*dtype, &scalars.rounding));
        macro_rules! in_place_bf16 {
            ($($rk:literal)*) => {
                match (adamw, source.rank) {
                    $((true, $rk) => return project_tile_rows::<S, Bf16s, true, $rk>(source, qs, col0, width, rows, update),)*
                    $((false, $rk) => return project_tile_rows::<S, Bf16s, false, $rk>(source, qs, col0, width, rows, update),)*
                    _ => {}
                }
            };
        }
        if S::PACKED_BF16 && source.grad_in_place_bf16() && weights_too && source.rank == source.k {
            in_place_bf16!(1 2 4 8);
        }
        // Common ranks with rank = k get loops of known length (unrolled, no loop overhead).
        macro_rules! fixed_rank {
            ($($rk:literal)*) => {
                match (adamw, source.rank) {
                    $((true, $rk) if source.k == $rk => project_tile_rows::<S, F32s, true, $rk>(source, qs, col0, width, rows, update),)*
                    $((false, $rk) if source.k == $rk => project_tile_rows::<S, F32s, false, $rk>(source, qs, col0, width, rows, update),)*
                    (true, _) => project_tile_rows::<S, F32s, true, 0>(source, qs, col0, width, rows, update),
                    (false, _) => project_tile_rows::<S, F32s, false, 0>(source, qs, col0, width, rows, update),
                }
            };
        }
        fixed_rank!(1 2 4 8 16)
    }
}

/// `project_tile` for AdamW (two moments) or Lion: blocks of PROJECT_ROWS rows, then the rest.
/// `RK` > 0: rank = k = RK.
#[inline(always)]
fn project_tile_rows<S: Lanes, G: GradRows, const ADAMW: bool, const RK: usize>(
    source: &Source,
    qs: &[&[f32]],
    col0: usize,
    width: usize,
    rows: std::ops::Range<usize>,
    update: Option<(SharedPtr<u8>, Dtype, StepScalars)>,
) -> Vec<F8> {
    let mut acc = vec![tile::ZERO; source.moments.len() * source.k * accumulator_stride(width)];
    let mut scratch = RowScratch::<PROJECT_ROWS>::new();
    let full = rows.end - rows.len() % PROJECT_ROWS;
    for row0 in (rows.start..full).step_by(PROJECT_ROWS) {
        project_block::<S, G, PROJECT_ROWS, ADAMW, RK>(source, qs, col0, width, update, row0, &mut acc, &mut scratch);
    }
    let mut single = RowScratch::<1>::new();
    for row in full..rows.end {
        project_block::<S, G, 1, ADAMW, RK>(source, qs, col0, width, update, row, &mut acc, &mut single);
    }
    acc
}

/// Gradient and weight rows of one block of `R` rows, one chunk wide.
struct RowScratch<const R: usize> {
    grads: [[f32; CHUNK]; R],
    weights: [[f32; CHUNK]; R],
}

impl<const R: usize> RowScratch<R> {
    fn new() -> Box<Self> {
        Box::new(RowScratch { grads: [[0.0; CHUNK]; R], weights: [[0.0; CHUNK]; R] })
    }
}

/// Rows `row0 .. row0 + R`, columns `chunk0 .. chunk0 + len` (whole groups) of the parameter,
/// as groups of `T` (`F8` for f32, `H8` for bf16) where they lie.
///
/// # Safety
/// The parameter holds rows × `n` elements of `T`'s dtype, those rows are whole rows of the
/// state's elements, and only the caller touches these columns during the pass.
#[inline(always)]
unsafe fn weight_rows<'a, T, const R: usize>(param: SharedPtr<u8>, row0: usize, n: usize, chunk0: usize, len: usize) -> [&'a mut [T]; R] {
    let bytes = std::mem::size_of::<T>() / LANES; // per element
    std::array::from_fn(|r| {
        let start = param.get().wrapping_add(((row0 + r) * n + chunk0) * bytes) as *mut T;
        // SAFETY: the caller's contract; the parameter is aligned for its dtype (checked by
        // the step), and T is an array of that dtype.
        unsafe { std::slice::from_raw_parts_mut(start, len / LANES) }
    })
}

/// Rows `row0 .. row0 + R` of a column tile: projection, and the update when given.
#[inline(always)]
fn project_block<S: Lanes, G: GradRows, const R: usize, const ADAMW: bool, const RK: usize>(
    source: &Source,
    qs: &[&[f32]],
    col0: usize,
    width: usize,
    update: Option<(SharedPtr<u8>, Dtype, StepScalars)>,
    row0: usize,
    acc: &mut [F8],
    scratch: &mut RowScratch<R>,
) {
    let n = source.cols;
    let (rank, k) = if RK > 0 { (RK, RK) } else { (source.rank, source.k) };
    let bstride = accumulator_stride(width);
    // Rows read where they lie and weights updated where they lie need no chunk-sized copies:
    // one kernel call covers the tile's width. Each column still sums the rows in order, so
    // the bits are those of chunk by chunk.
    let in_place = G::in_place(source) && width.is_multiple_of(LANES) && update.is_none_or(|(_, dtype, scalars)| G::weights_in_place(dtype, &scalars.rounding));
    let step = if in_place { width } else { CHUNK };
    for chunk0 in (col0..col0 + width).step_by(step) {
        let len = step.min(col0 + width - chunk0);
        let padded = tile::groups(len) * LANES;
        let (group0, gi0) = (chunk0 / LANES, (chunk0 - col0) / LANES);
        let RowScratch { grads, weights } = scratch;
        // A plain loop, not array::from_fn: its closure would not be inlined into this AVX2
        // code, and the 16-bit conversions in load_grad would run scalar.
        let mut rows: [&[G::Group]; R] = [&[]; R];
        for (r, (slot, g)) in rows.iter_mut().zip(grads.iter_mut()).enumerate() {
            *slot = G::row(source, row0 + r, chunk0, len, g);
        }
        let grads = rows;
        let bacc = &mut acc[gi0..];
        match update {
            None => tile::project_rows::<S, G, G, R, ADAMW, RK>(source.moments, qs, rank, k, row0, group0, &grads, bacc, bstride, None),
            // Weights of the gradient's packing (f32; bf16 rounded to nearest) are updated
            // where they are.
            Some((param, dtype, scalars)) if len % LANES == 0 && G::weights_in_place(dtype, &scalars.rounding) => {
                // SAFETY: the parameter's dtype is G's (weights_in_place); see weight_rows.
                let mut ws = unsafe { weight_rows::<G::Group, R>(param, row0, n, chunk0, len) };
                tile::project_rows::<S, G, G, R, ADAMW, RK>(source.moments, qs, rank, k, row0, group0, &grads, bacc, bstride, Some((&scalars, &mut ws)));
            }
            // Other weights through an f32 copy, with f32 gradient rows (project_tile reads
            // bf16 gradients in place only when the weights are bf16 rounded to nearest).
            Some((param, dtype, scalars)) => {
                let grads = G::as_f32(grads).expect("in-place bf16 gradients come with in-place bf16 weights");
                for (r, w) in weights.iter_mut().enumerate() {
                    // SAFETY: the chunk of row row0 + r lies inside the rows × cols parameter;
                    // tiles own disjoint columns.
                    unsafe { dtype::load(param.get(), dtype, (row0 + r) * n + chunk0, &mut w[..len], 1.0) };
                    w[len..padded].fill(0.0);
                }
                let mut ws: [&mut [F8]; R] = {
                    let mut it = weights.iter_mut();
                    std::array::from_fn(|_| tile::as_groups_mut(&mut it.next().unwrap()[..padded]))
                };
                tile::project_rows::<S, F32s, F32s, R, ADAMW, RK>(source.moments, qs, rank, k, row0, group0, &grads, bacc, bstride, Some((&scalars, &mut ws)));
                for (r, w) in weights.iter().enumerate() {
                    unsafe { dtype::store(param.get(), dtype, (row0 + r) * n + chunk0, &w[..len], scalars.rounding) };
                }
            }
        }
    }
}

multiversion! {
    /// Sum of |x| and count of the negative entries of U·diag(S)·Vᵀ over a block of rows.
    fn negatives_rows<S>(terms: &MomentTerms, rank: usize, groups: usize, rows: std::ops::Range<usize>, bound: Option<&SignBound>) -> (f64, u64) {
        match rank {
            1 => negatives_rows_fixed::<S, 1>(terms, rank, groups, rows, bound),
            2 => negatives_rows_fixed::<S, 2>(terms, rank, groups, rows, bound),
            4 => negatives_rows_fixed::<S, 4>(terms, rank, groups, rows, bound),
            8 => negatives_rows_fixed::<S, 8>(terms, rank, groups, rows, bound),
            16 => negatives_rows_fixed::<S, 16>(terms, rank, groups, rows, bound),
            _ => negatives_rows_fixed::<S, 0>(terms, rank, groups, rows, bound),
        }
    }
}

/// `negatives_rows` for `RANK` > 0 known at compile time (0: `rank` at run time). Chunk by chunk over
/// the rows of the block, so the chunk's V stays in L1; per-row sums, added in row order. Chunks
/// of a row that `bound` shows free of negatives are skipped: they would add exact zeros.
#[inline(always)]
fn negatives_rows_fixed<S: Lanes, const RANK: usize>(
    terms: &MomentTerms,
    rank: usize,
    groups: usize,
    rows: std::ops::Range<usize>,
    bound: Option<&SignBound>,
) -> (f64, u64) {
    let rank = if RANK > 0 { RANK } else { rank };
    debug_assert!(rows.len() <= ROW_BLOCK);
    let skip = |row: usize, group0: usize| bound.is_some_and(|b| b.nonnegative(row, group0 / GROUPS));
    let mut partial = [(0f64, 0u64); ROW_BLOCK];
    #[cfg(target_arch = "x86_64")]
    if S::WIDE && RANK > 0 {
        // Two rows at a time in sixteen lanes (a lone last row paired with itself): the same
        // per-row sums.
        assert!(terms.vg.len() >= groups * RANK, "V covers every group");
        for group0 in (0..groups).step_by(GROUPS) {
            for (p, a) in rows.clone().step_by(2).enumerate() {
                let b = (a + 1).min(rows.end - 1);
                if skip(a, group0) && skip(b, group0) {
                    continue;
                }
                // SAFETY: S::WIDE holds only in the build that runs on CPUs with AVX-512F
                // (isa::active); V covers the chunk (asserted above).
                let pair = unsafe { super::wide::negatives_chunk_pair::<RANK>(terms, [a, b], group0..(group0 + GROUPS).min(groups)) };
                for (h, (s, c)) in pair.into_iter().enumerate().take(rows.end - a) {
                    partial[2 * p + h].0 += s as f64;
                    partial[2 * p + h].1 += c as u64;
                }
            }
        }
        return partial.iter().fold((0f64, 0u64), |(s, c), &(ps, pc)| (s + ps, c + pc));
    }
    for group0 in (0..groups).step_by(GROUPS) {
        for (p, i) in partial.iter_mut().zip(rows.clone()) {
            if skip(i, group0) {
                continue;
            }
            let chunk = group0..(group0 + GROUPS).min(groups);
            let (s, c) = if RANK > 0 { tile::negatives_chunk_fixed::<S, RANK>(terms, i, chunk) } else { tile::negatives_chunk::<S>(terms, rank, i, chunk) };
            p.0 += s as f64;
            p.1 += c as u64;
        }
    }
    partial.iter().fold((0f64, 0u64), |(s, c), &(ps, pc)| (s + ps, c + pc))
}

/// c of ALGORITHM.md step 2: the mean of |x| over the negative entries x of U·diag(S)·Vᵀ, by
/// a compute-only sweep over the factors (0 when there are none). A shard sweeps its own
/// elements and sums the statistics across the group.
fn negative_fill(terms: &MomentTerms, r: usize, groups: usize, rows: &ShardRows, bound: Option<&SignBound>, collective: Option<&Collective>) -> Result<f32> {
    // The factors are the same on every rank, so every rank skips the collective together.
    if terms.us.iter().all(|&x| x == 0.0) {
        return Ok(0.0);
    }
    let body = rows.body.clone();
    let partial: Vec<(f64, u64)> = super::map_indices(body.len().div_ceil(ROW_BLOCK), body.len() * groups * LANES, |b| {
        let start = body.start + b * ROW_BLOCK;
        negatives_rows(terms, r, groups, start..(start + ROW_BLOCK).min(body.end), bound)
    });
    let (mut sum, mut count) = partial.iter().fold((0f64, 0u64), |(s, c), &(ps, pc)| (s + ps, c + pc));
    for seg in rows.segments() {
        let (s, c) = segment::negatives(terms, r, seg);
        sum += s;
        count += c;
    }
    if let Some(collective) = collective {
        let mut packed = shard::pack_negatives(sum, count);
        collective.sum(&mut packed, std::ptr::null_mut(), "non-negativity statistics")?;
        (sum, count) = shard::unpack_negatives(&packed);
    }
    Ok(if count == 0 { 0.0 } else { (sum / count as f64) as f32 })
}


/// Column p of V times column l of X over the column groups `groups`, for group-major V
/// (groups × rank) and X (groups × k), in f64: lane-wise sums, then across lanes (eight chains
/// of additions, not one), a fixed order.
fn group_dot(vg: &[F8], xg: &[F8], rank: usize, k: usize, p: usize, l: usize, groups: std::ops::Range<usize>) -> f64 {
    let mut lanes = [0f64; LANES];
    for g in groups {
        let (v, x) = (&vg[g * rank + p], &xg[g * k + l]);
        for t in 0..LANES {
            lanes[t] += v[t] as f64 * x[t] as f64;
        }
    }
    lanes.iter().sum()
}

/// VᵀX (rank × k, row-major) over all n columns.
fn low_rank_product(vg: &[F8], xg: &[F8], rank: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; rank * k];
    for p in 0..rank {
        for l in 0..k {
            out[p * k + l] = group_dot(vg, xg, rank, k, p, l, 0..tile::groups(n)) as f32;
        }
    }
    out
}

/// The parts of a sketch Y = A·X that the kernels leave to low-rank products, added per row.
struct SketchLowRank {
    /// VᵀX of the first moment (rank × k): its whole rebuild.
    first: Vec<f32>,
    /// The second moment's, per chunk (empty without a bound).
    second: ChunkProducts,
}

/// V_cᵀX_c (rank × k, f64) for every chunk c of CHUNK columns, and their sum in chunk order.
#[derive(Default)]
struct ChunkProducts {
    per_chunk: Vec<f64>,
    all: Vec<f64>,
}

/// `ChunkProducts` of group-major V (groups × rank) and X (groups × k), in a fixed order.
fn chunk_products(vg: &[F8], xg: &[F8], rank: usize, k: usize, n: usize) -> ChunkProducts {
    let groups = tile::groups(n);
    let chunks = groups.div_ceil(GROUPS);
    let mut per_chunk = vec![0f64; chunks * rank * k];
    for (c, out) in per_chunk.chunks_exact_mut(rank * k).enumerate() {
        for p in 0..rank {
            for l in 0..k {
                out[p * k + l] = group_dot(vg, xg, rank, k, p, l, c * GROUPS..((c + 1) * GROUPS).min(groups));
            }
        }
    }
    let mut all = vec![0f64; rank * k];
    for chunk in per_chunk.chunks_exact(rank * k) {
        all.iter_mut().zip(chunk).for_each(|(a, x)| *a += x);
    }
    ChunkProducts { per_chunk, all }
}

/// Adds to the second moment's sketch row `y` (k values, the kernels' sums) β·(U·S)[row]·V_cᵀX_c
/// for the chunks c whose rebuild the kernels left out (`Source::low_rank_chunk`; `passed` of
/// them).
fn add_second_low_rank(source: &Source, products: &ChunkProducts, row: usize, passed: usize, y: &mut [f32]) {
    let (rank, k) = (source.rank, source.k);
    if passed == 0 {
        return;
    }
    let chunks = products.per_chunk.len() / (rank * k);
    let mut partial;
    let w: &[f64] = if passed == chunks {
        &products.all
    } else {
        partial = vec![0f64; rank * k];
        for (c, chunk) in products.per_chunk.chunks_exact(rank * k).enumerate() {
            if source.low_rank_chunk(row, c) {
                partial.iter_mut().zip(chunk).for_each(|(a, x)| *a += x);
            }
        }
        &partial
    };
    let terms = &source.moments[1];
    let us = &terms.us[row * rank..(row + 1) * rank];
    for (l, out) in y.iter_mut().enumerate() {
        let low_rank: f64 = us.iter().enumerate().map(|(p, &a)| a as f64 * w[p * k + l]).sum();
        *out += terms.beta * low_rank as f32;
    }
}

/// Adds the first moment's rebuild over rows `rows` to its projection Bᵀ = AᵀQ (n × k):
/// β·V·((U·S)ᵀQ), with (U·S)ᵀQ summed in f64 in row order.
fn add_first_low_rank(terms: &MomentTerms, q: &[f32], rows: std::ops::Range<usize>, rank: usize, k: usize, n: usize, bt: &mut [f32]) {
    let mut usq = vec![0f64; rank * k];
    for i in rows {
        for p in 0..rank {
            let a = terms.us[i * rank + p] as f64;
            for l in 0..k {
                usq[p * k + l] += a * q[i * k + l] as f64;
            }
        }
    }
    for (j, out) in bt.chunks_exact_mut(k).enumerate().take(n) {
        let v = &terms.vg[j / LANES * rank..(j / LANES + 1) * rank];
        for (l, b) in out.iter_mut().enumerate() {
            let low_rank: f64 = (0..rank).map(|p| v[p][j % LANES] as f64 * usq[p * k + l]).sum();
            *b += terms.beta * low_rank as f32;
        }
    }
}

/// Y[row, l] of the first moment: β·(U·S)[row]·(VᵀX)[:, l] + (1 − β)·(G·X)[row, l].
#[inline(always)]
fn first_moment_sketch(terms: &MomentTerms, vtx: &[f32], rank: usize, k: usize, row: usize, l: usize, grad_part: f32) -> f32 {
    let us = &terms.us[row * rank..(row + 1) * rank];
    let low_rank: f32 = us.iter().enumerate().map(|(p, &a)| a * vtx[p * k + l]).sum();
    terms.beta * low_rank + terms.weight * grad_part
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::sign_bound::tests::{factors, group_major, Gen};

    /// A tile is widened beyond two per thread only where every thread still gets one and its
    /// accumulators stay small; it grows past 2048 columns only while they do.
    #[test]
    fn projection_tiles_are_widened_only_where_every_thread_keeps_one() {
        for (moments, k) in [(2, 4), (1, 4), (2, 8), (2, 16), (2, 64), (1, 300)] {
            let bytes = accumulator_column_bytes(moments, k);
            for cols in [8, 100, 256, 300, 512, 1000, 1024, 2048, 4096, 11008, 50000] {
                for threads in [1, 2, 3, 4, 8, 16, 64] {
                    let width = tile_width(cols, threads, bytes);
                    assert!(width.is_multiple_of(CHUNK) && (CHUNK..=MAX_TILE).contains(&width), "{cols} {threads}: {width}");
                    assert!(width <= 8 * CHUNK || width * bytes <= WIDE_ACCUMULATOR_BYTES, "{moments}x{k}, {cols} {threads}: {width}");
                    let balanced = (cols.div_ceil(2 * threads).div_ceil(CHUNK) * CHUNK).clamp(CHUNK, width.max(8 * CHUNK));
                    if width != balanced {
                        assert!(width > balanced && balanced < STREAM_COLS && cols.div_ceil(width) >= threads, "{cols} columns, {threads} threads: {width}");
                        assert!(width * bytes <= WIDE_ACCUMULATOR_BYTES, "{moments}x{k}, {cols} {threads}: {width}");
                    }
                }
            }
        }
        let (rank4, rank16) = (accumulator_column_bytes(2, 4), accumulator_column_bytes(2, 16));
        assert_eq!(tile_width(1024, 2, rank4), 2 * CHUNK);
        assert_eq!(tile_width(1024, 16, rank4), CHUNK);
        assert_eq!(tile_width(1000, 3, rank4), CHUNK); // 512 would leave a thread without a tile
        assert_eq!(tile_width(4096, 2, rank4), 8 * CHUNK);
        assert_eq!(tile_width(11008, 2, rank4), 11 * CHUNK);
        // Rank 16 as before the widening: two tiles per thread, at most 2048 columns.
        assert_eq!(tile_width(4096, 2, rank16), 4 * CHUNK);
        assert_eq!(tile_width(11008, 2, rank16), 8 * CHUNK);
    }

    /// Skipping the chunks the bound passes leaves the sweep's statistics bit for bit the same,
    /// on factors from dominant (most chunks skipped) to not (negatives everywhere), every rank
    /// kernel (3: the run-time rank), an odd row count and a last chunk of padded groups.
    #[test]
    fn skipping_passed_chunks_changes_no_bit() {
        let mut g = Gen(0x2545_f491_4f6c_dd1d);
        let (m, n) = (27, 2 * tile::CHUNK + 45);
        let groups = tile::groups(n);
        let mut skipped_some = false;
        for rank in [1, 2, 3, 4, 8, 16] {
            for dominance in [1.0f32, 3.0, 30.0] {
                let (us, v) = factors(&mut g, m, n, rank, dominance);
                let terms = MomentTerms { us, vg: group_major(&v, n, rank), fill: 0.0, beta: 0.999, weight: 0.001 };
                let bound = SignBound::new(&terms.us, &terms.vg, rank);
                skipped_some |= bound.as_ref().is_some_and(|b| (0..m).any(|i| (0..groups.div_ceil(GROUPS)).any(|c| b.nonnegative(i, c))));
                for start in (0..m).step_by(ROW_BLOCK) {
                    let rows = start..(start + ROW_BLOCK).min(m);
                    let (s0, c0) = negatives_rows(&terms, rank, groups, rows.clone(), None);
                    let (s1, c1) = negatives_rows(&terms, rank, groups, rows, bound.as_ref());
                    assert_eq!((s0.to_bits(), c0), (s1.to_bits(), c1), "rank {rank}, dominance {dominance}, rows from {start}");
                }
            }
        }
        assert!(skipped_some, "the bound passed no chunk: the test compares nothing");
    }

    /// AdamW's sketch with the second moment's rebuild left out where the bound passes (and the
    /// low-rank product added per row) matches the sketch that rebuilds everywhere, within the
    /// f32 rounding of either; the first moment's rows are untouched. Every kernel: sixteen
    /// lanes (rank = k), eight lanes with rank ≠ k, and a run-time width (k = 11).
    #[test]
    fn low_rank_chunks_of_the_second_moment_sketch_match_the_rebuild() {
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        let (m, n) = (27, 2 * tile::CHUNK + 45);
        let groups = tile::groups(n);
        let mut left_out = 0;
        for (rank, k) in [(1, 1), (2, 2), (4, 4), (8, 8), (16, 16), (3, 5), (2, 11)] {
            for dominance in [1.0f32, 3.0, 30.0] {
                let (us0, v0) = factors(&mut g, m, n, rank, 1.0);
                let (us1, v1) = factors(&mut g, m, n, rank, dominance);
                let x: Vec<Vec<f32>> = (0..2).map(|_| (0..n * k).map(|_| g.next()).collect()).collect();
                let grad: Vec<f32> = (0..m * n).map(|_| 10.0 * g.next()).collect();
                let moments = [
                    MomentTerms { us: us0, vg: group_major(&v0, n, rank), fill: 0.0, beta: 0.9, weight: 0.1 },
                    MomentTerms { us: us1, vg: group_major(&v1, n, rank), fill: 0.37, beta: 0.999, weight: 0.001 },
                ];
                let xgs: Vec<Vec<F8>> = x.iter().map(|x| group_major(x, n, k)).collect();
                let xgs: Vec<&[F8]> = xgs.iter().map(|x| x.as_slice()).collect();
                let bound = SignBound::new(&moments[1].us, &moments[1].vg, rank);
                let source = |bound| Source {
                    moments: &moments,
                    rank,
                    k,
                    cols: n,
                    grad: SharedPtr(grad.as_ptr() as *mut u8),
                    grad_dtype: Dtype::F32,
                    grad_factor: 1.0,
                    bound,
                    body_end: m,
                };
                let (with, without) = (source(bound.as_ref()), source(None));
                let low = |second| SketchLowRank { first: low_rank_product(&moments[0].vg, xgs[0], rank, k, n), second };
                for start in (0..m).step_by(ROW_BLOCK) {
                    let rows = start..(start + ROW_BLOCK).min(m);
                    left_out += rows.clone().flat_map(|i| (0..groups.div_ceil(GROUPS)).map(move |c| (i, c))).filter(|&(i, c)| with.low_rank_chunk(i, c)).count();
                    let fast = sketch_rows(&with, &xgs, &low(chunk_products(&moments[1].vg, xgs[1], rank, k, n)), rows.clone());
                    let full = sketch_rows(&without, &xgs, &low(ChunkProducts::default()), rows.clone());
                    for (ri, i) in rows.enumerate() {
                        for l in 0..k {
                            let (a, b) = (fast[(ri * 2) * k + l], full[(ri * 2) * k + l]);
                            assert_eq!(a.to_bits(), b.to_bits(), "first moment, row {i}");
                            // Σ|terms| of the second moment's row sum, and the rounding of a sum of
                            // n + rank + 3 roundings on either side.
                            let magnitude: f64 = (0..n)
                                .map(|j| {
                                    let rebuilt: f64 = (0..rank).map(|p| moments[1].us[i * rank + p] as f64 * v1[j * rank + p] as f64).sum();
                                    let h = grad[i * n + j] as f64 * grad[i * n + j] as f64;
                                    (0.999 * rebuilt.abs().max(0.37) + 0.001 * h) * (x[1][j * k + l] as f64).abs()
                                })
                                .sum();
                            let tolerance = 2.0 * (n + rank + 3) as f64 * f64::powi(2.0, -24) * magnitude;
                            let (a, b) = (fast[(ri * 2 + 1) * k + l], full[(ri * 2 + 1) * k + l]);
                            assert!(a.is_finite() && ((a - b) as f64).abs() <= tolerance, "rank {rank}, k {k}, dominance {dominance}, row {i}, l {l}: {a} vs {b} (tolerance {tolerance:e})");
                        }
                    }
                }
            }
        }
        assert!(left_out > 100, "the bound passed only {left_out} chunks: the test compares little");
    }
}
