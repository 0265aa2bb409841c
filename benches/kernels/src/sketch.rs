//! The AdamW sketch kernels on one 8-row block of one 256-column chunk (everything in L1):
//! the two moments in separate loops (`sketch_chunk_grad` then `sketch_chunk_fixed`) against
//! one loop (`sketch_chunk_both`). Same sums; prints both.
use crate::cpu::tile::{self, multiversion, MomentTerms, F8};
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
                tile::sketch_chunk_both::<S, K, 4>(terms, x0, x1, i, 0, row, &mut a0, &mut a1);
            } else {
                tile::sketch_chunk_grad::<S, K>(x0, 0, row, &mut a0);
                tile::sketch_chunk_fixed::<S, K, 4>(terms, x1, i, 0, row, &mut a1);
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
    let reps = 20_000;
    for (fused, out) in [false, true].into_iter().zip(sums.iter_mut()) {
        let (min, median) = time(30, || {
            for _ in 0..reps {
                block(fused, &terms, &x0, &x1, &g, out);
            }
        });
        let per = 1e9 / (reps * ROWS * COLS) as f64;
        println!("sketch, {}: {:.3} ns/element min, {:.3} median", if fused { "one loop" } else { "two loops" }, min * per, median * per);
    }
    assert_eq!(sums[0], sums[1], "one loop must give the sums of two");
}
