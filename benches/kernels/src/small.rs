//! The per-step work that does not grow with m·n: orthonormalizing the m×k sketch, the
//! truncated SVD from Q and Bᵀ, and drawing Ω (n×k, both moments of AdamW), one thread, k = r = 4.
//! A matrix pays these once per step whatever its passes cost, so they weigh most on small and
//! wide matrices. Usage: `small [MxN ...]` (default 256x1024 1024x256 1024x1024 4096x4096).
use crate::rng::{self, Stream};
use crate::{linalg, time, Rng};

const K: usize = 4;

pub fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let shapes = if args.is_empty() { vec!["256x1024".into(), "1024x256".into(), "1024x1024".into(), "4096x4096".into()] } else { args };
    for shape in shapes {
        let (m, n) = shape.split_once('x').expect("shape as MxN");
        let (m, n): (usize, usize) = (m.parse().unwrap(), n.parse().unwrap());
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (m * n) as u64);
        let y0: Vec<f32> = (0..m * K).map(|_| rng.next()).collect();
        let bt: Vec<f32> = (0..n * K).map(|_| rng.next()).collect();
        let mut q = y0.clone();
        let (orth, _) = time(200, || {
            q.copy_from_slice(&y0);
            linalg::orthonormalize_columns(&mut q, m, K);
        });
        let (mut u, mut s, mut v) = (vec![0f32; m * K], vec![0f32; K], vec![0f32; n * K]);
        let (svd, _) = time(200, || linalg::truncated_svd(&q, &bt, m, n, K, K, &mut u, &mut s, &mut v));
        let mut column = vec![0f32; n];
        let (omega, _) = time(20, || {
            for l in 0..2 * K {
                rng::fill_omega_columns(1, 2, Stream::sketch(l / K), l % K, 0, &mut column);
            }
        });
        assert!(u.iter().chain(&s).chain(&v).chain(&column).all(|x| x.is_finite()));
        println!(
            "small {m}x{n} k=r={K}: orthonormalize (m×k) {:.1} µs, truncated SVD {:.1} µs, Ω of both moments ({} normals) {:.1} µs (minimum of runs)",
            orth * 1e6,
            svd * 1e6,
            2 * K * n,
            omega * 1e6
        );
    }
}
