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

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
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
    let mut gram = vec![0f64; k * k];
    for j in 0..n {
        let row = &bt[j * k..(j + 1) * k];
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
    for i in 0..m {
        let qi = &q[i * k..(i + 1) * k];
        for l in 0..r {
            u[i * r + l] = if sigma[l] > 0.0 {
                (0..k).map(|p| qi[p] as f64 * vectors[p * k + l]).sum::<f64>() as f32
            } else {
                0.0
            };
        }
    }
    for j in 0..n {
        let bj = &bt[j * k..(j + 1) * k];
        for l in 0..r {
            v[j * r + l] = if sigma[l] > 0.0 {
                ((0..k).map(|p| bj[p] as f64 * vectors[p * k + l]).sum::<f64>() / sigma[l]) as f32
            } else {
                0.0
            };
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
