//! The projection pass's memory traffic without its arithmetic: w = a·w + b·g (12 bytes per
//! element) over a rows × cols f32 matrix in the pass's order (column tiles of `width`, blocks
//! of 4 rows, 256-column chunks, the 4 rows' groups of 8 interleaved as the kernel does them),
//! one thread, 8-lane vectors. The time the pass would take if its arithmetic overlapped its
//! memory traffic completely.
//! usage: pattern ROWS COLS WIDTH
use crate::cpu::tile::{multiversion, F8};
use crate::time;

multiversion! {
    fn sweep<S>(rows: usize, cols: usize, width: usize, g: &[F8], w: &mut [F8]) {
        let row_groups = cols / 8;
        let (a, b) = (S::splat(0.999), S::splat(1e-3));
        for col0 in (0..cols).step_by(width) {
            for row0 in (0..rows).step_by(4) {
                for chunk0 in (col0..col0 + width).step_by(256) {
                    for gi in chunk0 / 8..chunk0 / 8 + 32 {
                        for r in row0..row0 + 4 {
                            let i = r * row_groups + gi;
                            S::store(S::mul_add(S::load(&w[i]), a, S::mul(S::load(&g[i]), b)), &mut w[i]);
                        }
                    }
                }
            }
        }
    }
}

pub fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let (rows, cols, width) = (args[0], args[1], args[2]);
    assert!(rows % 4 == 0 && cols % width == 0 && width % 256 == 0, "rows % 4, cols % width, width % 256 must be 0");
    let g: Vec<F8> = (0..rows * cols / 8).map(|i| [(i % 7) as f32; 8]).collect();
    let mut w = vec![[1f32; 8]; rows * cols / 8];
    let runs = (400_000_000 / (rows * cols)).clamp(5, 400);
    let (min, median) = time(runs, || sweep(rows, cols, width, &g, &mut w));
    let per = 1e9 / (rows * cols) as f64;
    println!("pattern {rows}x{cols} tile {width}: {:.3} ns/element min ({:.1} GB/s), {:.3} median", min * per, 12.0 / (min * per), median * per);
}
