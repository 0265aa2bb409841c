//! The projection pass's memory traffic without its arithmetic: w = a·w + b·g (12 bytes per
//! element) over a rows × cols f32 matrix in the pass's order (column tiles of `width`, blocks
//! of 4 rows, 256-column chunks), one thread. The floor the pass would reach if its arithmetic
//! overlapped its memory traffic completely.
//! usage: pattern ROWS COLS WIDTH
use mlorc_kernel_bench::time;

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let (rows, cols, width) = (args[0], args[1], args[2]);
    let g: Vec<f32> = (0..rows * cols).map(|i| (i % 7) as f32).collect();
    let mut w = vec![1f32; rows * cols];
    let runs = (400_000_000 / (rows * cols)).clamp(5, 2000);
    let (min, median) = time(runs, || {
        for col0 in (0..cols).step_by(width) {
            for row0 in (0..rows).step_by(4) {
                for chunk0 in (col0..col0 + width).step_by(256) {
                    for r in row0..row0 + 4 {
                        let o = r * cols + chunk0;
                        for (x, &y) in w[o..o + 256].iter_mut().zip(&g[o..o + 256]) {
                            *x = *x * 0.999 + y * 1e-3;
                        }
                    }
                }
            }
        }
        std::hint::black_box(&mut w);
    });
    let per = 1e9 / (rows * cols) as f64;
    println!("pattern {rows}x{cols} tile {width}: {:.3} ns/element min ({:.1} GB/s), {:.3} median", min * per, 12.0 / (min * per), median * per);
}
