//! The AdamW sketch kernel (`sketch_chunk_both`, rank = k = 4) on one 8-row block of one
//! 256-column chunk (everything in L1), timed; its sums checked against the run-time-rank
//! kernels (`sketch_chunk_grad`, `sketch_chunk`), which do the same operations.
use crate::cpu::tile::{self, multiversion, F32s, MomentTerms, F8};
use crate::{time, Rng};

const K: usize = 4;
const ROWS: usize = 8;
const COLS: usize = 256;

multiversion! {
    fn block<S>(fused: bool, terms: &MomentTerms, x0: &[F8], x1: &[F8], g: &[F8], out: &mut [f32]) {
        let groups = COLS / 8;
        for i in 0..ROWS {
            let row = &g[i * groups..(i + 1) * groups];
            let (mut a0, mut a1) = ([S::zero(); K], [S::zero(); K]);
            if fused {
                tile::sketch_chunk_both::<S, F32s, K, 4, true>(terms, x0, x1, i, 0, row, &mut a0, &mut a1);
            } else {
                tile::sketch_chunk_grad::<S, F32s, K>(x0, 0, row, &mut a0);
                tile::sketch_chunk::<S, F32s, K, true>(terms, x1, 4, i, 0, row, &mut a1);
            }
            for l in 0..K {
                out[i * 2 * K + l] = tile::sum_lanes(&S::to_array(a0[l]));
                out[i * 2 * K + K + l] = tile::sum_lanes(&S::to_array(a1[l]));
            }
        }
    }
}

pub fn main() {
    let mut rng = Rng(88172645463325252);
    let terms = MomentTerms { us: (0..ROWS * 4).map(|_| rng.next()).collect(), vg: rng.groups(COLS / 8 * 4), fill: 1e-6, beta: 0.999, weight: 0.001 };
    let (x0, x1, g) = (rng.groups(COLS / 8 * K), rng.groups(COLS / 8 * K), rng.groups(ROWS * COLS / 8));
    let mut sums = [vec![0f32; ROWS * 2 * K], vec![0f32; ROWS * 2 * K]];
    block(false, &terms, &x0, &x1, &g, &mut sums[0]);
    let reps = 20_000;
    let (min, median) = time(30, || {
        for _ in 0..reps {
            block(true, &terms, &x0, &x1, &g, &mut sums[1]);
        }
    });
    let per = 1e9 / (reps * ROWS * COLS) as f64;
    println!("sketch, both moments in one loop: {:.3} ns/element min, {:.3} median", min * per, median * per);
    assert_eq!(sums[0], sums[1], "the fused kernel must give the sums of the run-time-rank kernels");
}
