//! The projection + AdamW update kernel (4-row blocks, rank = k = 4) swept over a rows × cols
//! f32 matrix in column tiles of `width`, as the library's projection pass does, on one
//! thread. `update` 0 leaves the weights alone (the gradient stream only); `bf16` 1 reads the
//! gradient and updates the weights as bf16 where they lie (half the bytes, converted in the
//! kernel).
//! usage: pass ROWS COLS WIDTH [update=1] [bf16=0]
use crate::cpu::tile::{self, multiversion, Bf16s, F32s, MomentTerms, Packed, F8, H8};
use crate::step::StepScalars;
use crate::{time, Rng};

const R: usize = 4;
const K: usize = 4;
const CHUNK: usize = 256;

struct Job<'a> {
    rows: usize,
    cols: usize,
    width: usize,
    update: bool,
    moments: &'a [MomentTerms],
    qs: &'a [&'a [f32]],
    scalars: StepScalars,
}

multiversion! {
    fn sweep_f32<S>(job: &Job, g: &[F8], w: &mut [F8], bacc: &mut [F8]) {
        sweep::<S, F32s>(job, g, w, bacc)
    }
}

multiversion! {
    fn sweep_bf16<S>(job: &Job, g: &[H8], w: &mut [H8], bacc: &mut [F8]) {
        sweep::<S, Bf16s>(job, g, w, bacc)
    }
}

#[inline(always)]
fn sweep<S: crate::cpu::lanes::Lanes, E: Packed>(job: &Job, g: &[E::Group], w: &mut [E::Group], bacc: &mut [F8]) {
    let (n, width) = (job.cols, job.width);
    let (row_groups, tile_groups) = (n / 8, width / 8);
    for col0 in (0..n).step_by(width) {
        bacc.fill([0.0; 8]);
        for row0 in (0..job.rows).step_by(R) {
            for chunk0 in (col0..col0 + width).step_by(CHUNK) {
                let (group0, gi0) = (chunk0 / 8, (chunk0 - col0) / 8);
                let grads: [&[E::Group]; R] = std::array::from_fn(|r| &g[(row0 + r) * row_groups + group0..][..CHUNK / 8]);
                let wp = w.as_mut_ptr();
                // SAFETY: rows row0..row0+R, one chunk each: disjoint, inside w.
                let mut ws: [&mut [E::Group]; R] = std::array::from_fn(|r| unsafe { std::slice::from_raw_parts_mut(wp.add((row0 + r) * row_groups + group0), CHUNK / 8) });
                let update = job.update.then_some((&job.scalars, &mut ws));
                tile::project_rows::<S, E, E, R, true, 4>(job.moments, job.qs, 4, K, row0, group0, &grads, &mut bacc[gi0..], tile_groups, update);
            }
        }
    }
}

pub fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let (rows, cols, width) = (args[0], args[1], args[2]);
    let update = args.get(3).copied().unwrap_or(1) == 1;
    let bf16 = args.get(4).copied().unwrap_or(0) == 1;
    assert!(rows % R == 0 && cols % width == 0 && width % CHUNK == 0, "rows % 4, cols % width, width % 256 must be 0");
    let mut rng = Rng(88172645463325252);
    let moments: Vec<MomentTerms> = [(0.9, 0.1), (0.999, 0.001)]
        .iter()
        .map(|&(beta, weight)| MomentTerms { us: (0..rows * 4).map(|_| rng.next()).collect(), vg: rng.groups(cols / 8 * 4), fill: 1e-6, beta, weight })
        .collect();
    let q: Vec<Vec<f32>> = (0..2).map(|_| (0..rows * K).map(|_| rng.next()).collect()).collect();
    let qs: Vec<&[f32]> = q.iter().map(|v| v.as_slice()).collect();
    let g = rng.groups(rows * cols / 8);
    let mut w = rng.groups(rows * cols / 8);
    let halves = |v: &[F8]| -> Vec<H8> { v.iter().map(|x| x.map(|e| (e.to_bits() >> 16) as u16)).collect() };
    let (g16, mut w16) = (halves(&g), halves(&w));
    let job = Job { rows, cols, width, update, moments: &moments, qs: &qs, scalars: StepScalars::adamw() };
    let mut bacc = vec![[0f32; 8]; 2 * K * (width / 8)];
    // Small matrices are swept several times per timing, so a timing is at least ~1 M elements.
    let repeat = (1usize << 20).div_ceil(rows * cols);
    let runs = (400_000_000 / (rows * cols * repeat)).clamp(5, 400);
    let (min, median) = time(runs, || {
        for _ in 0..repeat {
            if bf16 {
                sweep_bf16(&job, &g16, &mut w16, &mut bacc);
            } else {
                sweep_f32(&job, &g, &mut w, &mut bacc);
            }
        }
    });
    let per = 1e9 / (rows * cols * repeat) as f64;
    let dtype = if bf16 { "bf16" } else { "f32" };
    println!("pass {rows}x{cols} tile {width} update {update} {dtype}: {:.3} ns/element min, {:.3} median ({runs} runs)", min * per, median * per);
}
