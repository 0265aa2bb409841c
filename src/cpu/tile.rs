//! The arithmetic of one row chunk: rebuild each moment from its factors, apply the
//! non-negativity fix, mix in the gradient. Loops run over contiguous f32 lanes so LLVM
//! vectorizes them; no multiply-add is contracted, so every instruction set gives the same bits.

use crate::config::Dtype;
use crate::dtype;

use super::SharedPtr;

/// Columns per chunk (and per tile of the column-parallel pass). A multiple of `LANES`.
pub const CHUNK: usize = 256;
/// Width of the fixed-order partial sums of dot products.
pub const LANES: usize = 8;

pub fn round_up_lanes(n: usize) -> usize {
    n.div_ceil(LANES) * LANES
}

/// The old factors of one moment, ready for rebuilding rows: U·diag(S) and Vᵀ.
pub struct MomentTerms {
    /// rows × rank, row-major.
    pub us: Vec<f32>,
    /// rank × stride: row l is column l of V, zero-padded to `stride`.
    pub vt: Vec<f32>,
    /// The non-negativity fix: entries below zero become this value (second moment only).
    pub fill: Option<f32>,
    pub beta: f32,
    pub weight: f32,
    /// The gradient enters squared (second moment).
    pub squared: bool,
}

/// Everything a chunk computation reads, shared by all tasks of a pass.
pub struct ChunkSource<'a> {
    pub moments: &'a [MomentTerms],
    pub rank: usize,
    pub stride: usize,
    pub cols: usize,
    pub grad: SharedPtr<u8>,
    pub grad_dtype: Dtype,
    pub grad_factor: f32,
}

/// Per-task scratch: the gradient, the rebuilt moments and the new moments of one chunk,
/// zero beyond the chunk's length up to a multiple of LANES.
pub struct Scratch {
    pub grad: [f32; CHUNK],
    pub rebuilt: [[f32; CHUNK]; 2],
    pub moment: [[f32; CHUNK]; 2],
}

impl Scratch {
    pub fn new() -> Box<Scratch> {
        Box::new(Scratch { grad: [0.0; CHUNK], rebuilt: [[0.0; CHUNK]; 2], moment: [[0.0; CHUNK]; 2] })
    }
}

/// Rebuilds row `row`, columns `col0 .. col0 + len` (len ≤ CHUNK) of the old moments into
/// `scratch.rebuilt` and the new moments into `scratch.moment`.
#[inline(always)]
pub fn rebuild_row(terms: &MomentTerms, rank: usize, stride: usize, row: usize, col0: usize, out: &mut [f32]) {
    out.fill(0.0);
    for l in 0..rank {
        let a = terms.us[row * rank + l];
        let v = &terms.vt[l * stride + col0..l * stride + col0 + out.len()];
        for (o, &x) in out.iter_mut().zip(v) {
            *o += a * x;
        }
    }
}

/// Fills `scratch` for row `row`, columns `col0 .. col0 + len`.
///
/// # Safety
/// `source.grad` must hold rows × cols readable elements and `col0 + len <= cols`.
#[inline(always)]
pub unsafe fn fill_chunk(source: &ChunkSource, row: usize, col0: usize, len: usize, scratch: &mut Scratch) {
    let padded = round_up_lanes(len);
    let grad = &mut scratch.grad[..len];
    // SAFETY: the range lies inside the gradient (caller's contract).
    dtype::load(source.grad.get(), source.grad_dtype, row * source.cols + col0, grad, source.grad_factor);
    for (m, terms) in source.moments.iter().enumerate() {
        let rebuilt = &mut scratch.rebuilt[m][..len];
        rebuild_row(terms, source.rank, source.stride, row, col0, rebuilt);
        if let Some(fill) = terms.fill {
            for x in rebuilt.iter_mut() {
                *x = if *x < 0.0 { fill } else { *x };
            }
        }
        let moment = &mut scratch.moment[m];
        let (beta, weight) = (terms.beta, terms.weight);
        if terms.squared {
            for ((o, &r), &g) in moment[..len].iter_mut().zip(rebuilt.iter()).zip(grad.iter()) {
                *o = beta * r + weight * (g * g);
            }
        } else {
            for ((o, &r), &g) in moment[..len].iter_mut().zip(rebuilt.iter()).zip(grad.iter()) {
                *o = beta * r + weight * g;
            }
        }
        moment[len..padded].fill(0.0);
    }
}

/// acc[t] += Σ a[8c + t]·b[8c + t]: lane-wise partial sums in a fixed order.
#[inline(always)]
pub fn dot_lanes(a: &[f32], b: &[f32], acc: &mut [f32; LANES]) {
    for (x, y) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        for t in 0..LANES {
            acc[t] += x[t] * y[t];
        }
    }
}

/// The fixed-order sum of the lanes.
#[inline(always)]
pub fn sum_lanes(acc: &[f32; LANES]) -> f32 {
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
}
