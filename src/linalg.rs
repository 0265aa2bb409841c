//! The small dense factorizations of the randomized SVD, in f64: orthonormalizing the columns
//! of a tall-skinny matrix and the eigen-decomposition of a k×k Gram matrix. Both are
//! deterministic and survive rank deficiency: a direction that cannot be found becomes a zero
//! column, never NaN.

/// Columns whose residual after projection is below this fraction of the largest input column
/// norm are numerically dependent (the inputs are f32) and become zero.
const DEPENDENT_COLUMN_TOL: f64 = 32.0 * f32::EPSILON as f64;

/// Orthonormalizes the `k` columns of the row-major `rows`×`k` f32 matrix `a` in place by
/// classical Gram–Schmidt with one re-orthogonalization (CGS2), accumulating in f64.
pub fn orthonormalize_columns(a: &mut [f32], rows: usize, k: usize) {
    debug_assert_eq!(a.len(), rows * k);
    let mut cols: Vec<Vec<f64>> =
        (0..k).map(|l| (0..rows).map(|i| a[i * k + l] as f64).collect()).collect();
    let scale = cols.iter().map(|c| norm(c)).fold(0.0, f64::max);
    let threshold = DEPENDENT_COLUMN_TOL * scale;
    let mut kept: Vec<usize> = Vec::with_capacity(k);
    for l in 0..k {
        let (done, rest) = cols.split_at_mut(l);
        let x = &mut rest[0];
        for _ in 0..2 {
            for &b in &kept {
                let q = &done[b];
                let d = dot(q, x);
                x.iter_mut().zip(q).for_each(|(xi, qi)| *xi -= d * qi);
            }
        }
        let nrm = norm(x);
        if nrm > threshold && nrm > 0.0 {
            x.iter_mut().for_each(|xi| *xi /= nrm);
            kept.push(l);
        } else {
            x.iter_mut().for_each(|xi| *xi = 0.0);
        }
    }
    for (l, c) in cols.iter().enumerate() {
        for (i, v) in c.iter().enumerate() {
            a[i * k + l] = *v as f32;
        }
    }
}

/// Σ a·b with four partial sums in a fixed order: the loop vectorizes instead of waiting on
/// one chain of adds, and the result does not depend on anything but the inputs.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let (a4, a_tail) = a.as_chunks::<4>();
    let (b4, b_tail) = b.as_chunks::<4>();
    let mut partial = [0f64; 4];
    for (x, y) in a4.iter().zip(b4) {
        for t in 0..4 {
            partial[t] += x[t] * y[t];
        }
    }
    let tail: f64 = a_tail.iter().zip(b_tail).map(|(x, y)| x * y).sum();
    (partial[0] + partial[1]) + (partial[2] + partial[3]) + tail
}

fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

/// Eigen-decomposition of the symmetric k×k matrix `a` (row-major) by cyclic Jacobi rotations.
/// Returns eigenvalues in descending order and the matching eigenvectors as columns of a
/// row-major k×k matrix.
pub fn symmetric_eigen(a: &[f64], k: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = a.to_vec();
    let mut w = vec![0f64; k * k];
    for i in 0..k {
        w[i * k + i] = 1.0;
    }
    let total: f64 = a.iter().map(|x| x * x).sum();
    for _sweep in 0..64 {
        let off: f64 = (0..k)
            .flat_map(|i| (0..k).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * k + j] * a[i * k + j])
            .sum();
        if off <= 1e-30 * total || off == 0.0 {
            break;
        }
        for p in 0..k {
            for q in p + 1..k {
                let apq = a[p * k + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[q * k + q] - a[p * k + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for r in 0..k {
                    let arp = a[r * k + p];
                    let arq = a[r * k + q];
                    a[r * k + p] = c * arp - s * arq;
                    a[r * k + q] = s * arp + c * arq;
                }
                for r in 0..k {
                    let apr = a[p * k + r];
                    let aqr = a[q * k + r];
                    a[p * k + r] = c * apr - s * aqr;
                    a[q * k + r] = s * apr + c * aqr;
                }
                for r in 0..k {
                    let wrp = w[r * k + p];
                    let wrq = w[r * k + q];
                    w[r * k + p] = c * wrp - s * wrq;
                    w[r * k + q] = s * wrp + c * wrq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..k).collect();
    // Stable order: by value, ties by index, so equal inputs give equal outputs.
    order.sort_by(|&x, &y| a[y * k + y].total_cmp(&a[x * k + x]).then(x.cmp(&y)));
    let values = order.iter().map(|&i| a[i * k + i]).collect();
    let mut vectors = vec![0f64; k * k];
    for (dst, &src) in order.iter().enumerate() {
        for r in 0..k {
            vectors[r * k + dst] = w[r * k + src];
        }
    }
    (values, vectors)
}

/// Singular values below this fraction of the largest are dropped: B is only f32-accurate,
/// so such directions are noise.
const SINGULAR_VALUE_TOL: f64 = 1e-6;

/// The rank-`r` truncated SVD of A ≈ Q·B from the orthonormal sketch basis `q` (m×k, row-major)
/// and the projection `bt` = (QᵀA)ᵀ (n×k, row-major): B = Ŵ Σ V̂ᵀ via the eigen-decomposition
/// of the Gram matrix B·Bᵀ. Writes u (m×r), s (r), v (n×r); unfound directions are zero.
pub fn truncated_svd(
    q: &[f32],
    bt: &[f32],
    m: usize,
    n: usize,
    k: usize,
    r: usize,
    u: &mut [f32],
    s: &mut [f32],
    v: &mut [f32],
) {
    debug_assert!(q.len() == m * k && bt.len() == n * k && u.len() == m * r && v.len() == n * r);
    let gram = gram_matrix(bt, k);
    let (values, vectors) = symmetric_eigen(&gram, k);
    let top = values.first().copied().unwrap_or(0.0).max(0.0).sqrt();
    let sigma: Vec<f64> = (0..r)
        .map(|l| {
            let sl = values.get(l).copied().unwrap_or(0.0).max(0.0).sqrt();
            if l < k && sl > SINGULAR_VALUE_TOL * top && sl > 0.0 {
                sl
            } else {
                0.0
            }
        })
        .collect();
    for (dst, sl) in s.iter_mut().zip(&sigma) {
        *dst = *sl as f32;
    }
    // U = Q·Ŵ and V = Bᵀ·Ŵ·Σ⁻¹, through k×r coefficient matrices (zero columns where σ = 0).
    let mut to_u = vec![0f64; k * r];
    let mut to_v = vec![0f64; k * r];
    for p in 0..k {
        for l in 0..r {
            if sigma[l] > 0.0 {
                to_u[p * r + l] = vectors[p * k + l];
                to_v[p * r + l] = vectors[p * k + l] / sigma[l];
            }
        }
    }
    rows_times(q, k, &to_u, r, u);
    rows_times(bt, k, &to_v, r, v);
}

/// The k×k Gram matrix Σ_j b_j·b_jᵀ of the rows b_j of the row-major f32 matrix `bt`, in f64.
fn gram_matrix(bt: &[f32], k: usize) -> Vec<f64> {
    // Sums kept in locals across rows (for the common widths), not read back from memory.
    fn fixed<const K: usize>(bt: &[f32]) -> Vec<f64> {
        let mut g = [[0f64; K]; K];
        for row in bt.chunks_exact(K) {
            let x: [f64; K] = std::array::from_fn(|a| row[a] as f64);
            for a in 0..K {
                for b in a..K {
                    g[a][b] += x[a] * x[b];
                }
            }
        }
        let mut out = vec![0f64; K * K];
        for a in 0..K {
            for b in a..K {
                out[a * K + b] = g[a][b];
                out[b * K + a] = g[a][b];
            }
        }
        out
    }
    match k {
        1 => fixed::<1>(bt),
        2 => fixed::<2>(bt),
        4 => fixed::<4>(bt),
        8 => fixed::<8>(bt),
        _ => {
            let mut gram = vec![0f64; k * k];
            for row in bt.chunks_exact(k) {
                for a in 0..k {
                    let x = row[a] as f64;
                    for b in a..k {
                        gram[a * k + b] += x * row[b] as f64;
                    }
                }
            }
            for a in 0..k {
                for b in 0..a {
                    gram[a * k + b] = gram[b * k + a];
                }
            }
            gram
        }
    }
}

/// out = x·w for the row-major rows×k f32 `x` and k×r f64 `w`, summed in f64, rounded to f32.
fn rows_times(x: &[f32], k: usize, w: &[f64], r: usize, out: &mut [f32]) {
    fn fixed<const K: usize, const R: usize>(x: &[f32], w: &[f64], out: &mut [f32]) {
        let w: [[f64; R]; K] = std::array::from_fn(|p| std::array::from_fn(|l| w[p * R + l]));
        for (xi, oi) in x.chunks_exact(K).zip(out.chunks_exact_mut(R)) {
            let mut acc = [0f64; R];
            for p in 0..K {
                let xp = xi[p] as f64;
                for l in 0..R {
                    acc[l] += xp * w[p][l];
                }
            }
            for l in 0..R {
                oi[l] = acc[l] as f32;
            }
        }
    }
    match (k, r) {
        (1, 1) => fixed::<1, 1>(x, w, out),
        (2, 2) => fixed::<2, 2>(x, w, out),
        (4, 4) => fixed::<4, 4>(x, w, out),
        (8, 8) => fixed::<8, 8>(x, w, out),
        _ => {
            let mut acc = vec![0f64; r];
            for (xi, oi) in x.chunks_exact(k).zip(out.chunks_exact_mut(r)) {
                acc.fill(0.0);
                for (p, &xp) in xi.iter().enumerate() {
                    for (a, &wl) in acc.iter_mut().zip(&w[p * r..(p + 1) * r]) {
                        *a += xp as f64 * wl;
                    }
                }
                for (o, a) in oi.iter_mut().zip(&acc) {
                    *o = *a as f32;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(state: &mut u64) -> f64 {
        *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*state >> 11) as f64) / (1u64 << 53) as f64 - 0.5
    }

    #[test]
    fn orthonormal_columns_and_zero_for_dependent_ones() {
        let (rows, k) = (50, 5);
        let mut seed = 1;
        let mut a: Vec<f32> = (0..rows * k).map(|_| lcg(&mut seed) as f32).collect();
        // Column 3 = 2·column 0 + column 1: dependent.
        for i in 0..rows {
            a[i * k + 3] = 2.0 * a[i * k] + a[i * k + 1];
        }
        orthonormalize_columns(&mut a, rows, k);
        for x in 0..k {
            for y in 0..k {
                let d: f64 = (0..rows).map(|i| a[i * k + x] as f64 * a[i * k + y] as f64).sum();
                let expect = if x == y && x != 3 { 1.0 } else { 0.0 };
                assert!((d - expect).abs() < 1e-6, "({x},{y}): {d}");
            }
        }
        let mut zeros = vec![0f32; rows * k];
        orthonormalize_columns(&mut zeros, rows, k);
        assert!(zeros.iter().all(|&x| x == 0.0));
    }

    /// U·diag(S)·Vᵀ from Q (orthonormal) and Bᵀ is the best rank-r approximation of Q·B:
    /// orthonormal kept columns, S descending, and ‖QB − USVᵀ‖² = ‖QB‖² − Σ s² (nothing lost
    /// at r = k); directions Bᵀ lacks come out as zero columns. Widths with and without the
    /// fixed-size paths (k = 4, r = k) and r < k.
    #[test]
    fn truncated_svd_is_the_best_rank_r_factorization() {
        for (m, n, k, r, deficient) in [(37, 53, 4, 4, false), (37, 53, 4, 2, false), (20, 70, 3, 3, false), (40, 30, 4, 4, true)] {
            let mut seed = (m * n + k + r) as u64;
            let mut q: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed) as f32).collect();
            orthonormalize_columns(&mut q, m, k);
            let mut bt: Vec<f32> = (0..n * k).map(|_| lcg(&mut seed) as f32).collect();
            if deficient {
                // Column 2 of Bᵀ = column 0: B has rank k − 1.
                for j in 0..n {
                    bt[j * k + 2] = bt[j * k];
                }
            }
            let (mut u, mut sv, mut v) = (vec![f32::NAN; m * r], vec![f32::NAN; r], vec![f32::NAN; n * r]);
            truncated_svd(&q, &bt, m, n, k, r, &mut u, &mut sv, &mut v);
            assert!(u.iter().chain(&sv).chain(&v).all(|x| x.is_finite()), "{m}x{n} k={k} r={r}");
            assert!(sv.windows(2).all(|w| w[0] >= w[1]) && sv.iter().all(|&x| x >= 0.0));
            let kept: Vec<usize> = (0..r).filter(|&l| sv[l] > 0.0).collect();
            assert_eq!(kept.len(), if deficient { k - 1 } else { r });
            for (factor, rows) in [(&u, m), (&v, n)] {
                for a in 0..r {
                    for b in 0..r {
                        let d: f64 = (0..rows).map(|i| factor[i * r + a] as f64 * factor[i * r + b] as f64).sum();
                        let expect = if a == b && kept.contains(&a) { 1.0 } else { 0.0 };
                        assert!((d - expect).abs() < 1e-5, "{m}x{n} k={k} r={r}: ({a},{b}) {d}");
                    }
                }
            }
            let (mut total, mut residual) = (0f64, 0f64);
            for i in 0..m {
                for j in 0..n {
                    let a: f64 = (0..k).map(|p| q[i * k + p] as f64 * bt[j * k + p] as f64).sum();
                    let approx: f64 = (0..r).map(|l| u[i * r + l] as f64 * sv[l] as f64 * v[j * r + l] as f64).sum();
                    total += a * a;
                    residual += (a - approx) * (a - approx);
                }
            }
            let kept_energy: f64 = sv.iter().map(|&x| x as f64 * x as f64).sum();
            assert!((residual - (total - kept_energy)).abs() < 1e-5 * total, "{m}x{n} k={k} r={r}: {residual} vs {}", total - kept_energy);
            if r == k {
                assert!(residual < 1e-10 * total, "{m}x{n} k={k}: rank k loses {residual} of {total}");
            }
        }
    }

    #[test]
    fn jacobi_reconstructs_the_matrix() {
        let k = 6;
        let mut seed = 9;
        let b: Vec<f64> = (0..k * k).map(|_| lcg(&mut seed)).collect();
        let mut a = vec![0f64; k * k];
        for i in 0..k {
            for j in 0..k {
                a[i * k + j] = (0..k).map(|p| b[i * k + p] * b[j * k + p]).sum();
            }
        }
        let (vals, vecs) = symmetric_eigen(&a, k);
        assert!(vals.windows(2).all(|w| w[0] >= w[1]));
        for i in 0..k {
            for j in 0..k {
                let r: f64 = (0..k).map(|p| vecs[i * k + p] * vals[p] * vecs[j * k + p]).sum();
                assert!((r - a[i * k + j]).abs() < 1e-12, "{r} vs {}", a[i * k + j]);
            }
        }
    }
}
