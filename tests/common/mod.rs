//! An independent f64 reference of ALGORITHM.md for the tests: dense AdamW / Lion, and the
//! MLorc step with Householder QR and one-sided Jacobi SVD (the library uses CGS2 and a Gram
//! eigen-decomposition in its own code). Only Ω is shared, through `mlorc::rng::omega`.
#![allow(dead_code)]

use mlorc::{Algorithm, Config};

/// SplitMix64 + Box–Muller: fresh test inputs from a seed.
pub struct TestRng(u64);

impl TestRng {
    pub fn new(seed: u64) -> TestRng {
        TestRng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
    pub fn normals(&mut self, n: usize, scale: f64) -> Vec<f64> {
        (0..n).map(|_| self.normal() * scale).collect()
    }
    pub fn normals_f32(&mut self, n: usize, scale: f64) -> Vec<f32> {
        (0..n).map(|_| (self.normal() * scale) as f32).collect()
    }
}

/// Row-major dense matrix.
#[derive(Clone, Debug)]
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl Mat {
    pub fn zeros(rows: usize, cols: usize) -> Mat {
        Mat { rows, cols, data: vec![0.0; rows * cols] }
    }
    pub fn from_f32(rows: usize, cols: usize, data: &[f32]) -> Mat {
        assert_eq!(data.len(), rows * cols);
        Mat { rows, cols, data: data.iter().map(|&x| x as f64).collect() }
    }
    pub fn at(&self, i: usize, j: usize) -> f64 {
        self.data[i * self.cols + j]
    }
    pub fn set(&mut self, i: usize, j: usize, v: f64) {
        self.data[i * self.cols + j] = v;
    }
    pub fn transpose(&self) -> Mat {
        let mut t = Mat::zeros(self.cols, self.rows);
        for i in 0..self.rows {
            for j in 0..self.cols {
                t.set(j, i, self.at(i, j));
            }
        }
        t
    }
    pub fn matmul(&self, b: &Mat) -> Mat {
        assert_eq!(self.cols, b.rows);
        let mut c = Mat::zeros(self.rows, b.cols);
        for i in 0..self.rows {
            for p in 0..self.cols {
                let a = self.at(i, p);
                if a == 0.0 {
                    continue;
                }
                for j in 0..b.cols {
                    c.data[i * b.cols + j] += a * b.data[p * b.cols + j];
                }
            }
        }
        c
    }
    pub fn frobenius(&self) -> f64 {
        self.data.iter().map(|x| x * x).sum::<f64>().sqrt()
    }
    pub fn sub(&self, b: &Mat) -> Mat {
        Mat { rows: self.rows, cols: self.cols, data: self.data.iter().zip(&b.data).map(|(x, y)| x - y).collect() }
    }
}

/// Thin Q (rows×cols, cols ≤ rows) of a Householder QR.
pub fn householder_q(a: &Mat) -> Mat {
    let (m, k) = (a.rows, a.cols);
    let mut r = a.clone();
    let mut vs: Vec<Vec<f64>> = Vec::new();
    for c in 0..k.min(m) {
        let mut v: Vec<f64> = (c..m).map(|i| r.at(i, c)).collect();
        let alpha = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let sign = if v[0] >= 0.0 { 1.0 } else { -1.0 };
        v[0] += sign * alpha;
        let vn = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if vn > 0.0 {
            v.iter_mut().for_each(|x| *x /= vn);
        }
        for j in 0..k {
            let d: f64 = (c..m).map(|i| v[i - c] * r.at(i, j)).sum();
            for i in c..m {
                let val = r.at(i, j) - 2.0 * v[i - c] * d;
                r.set(i, j, val);
            }
        }
        vs.push(v);
    }
    let mut q = Mat::zeros(m, k);
    for j in 0..k.min(m) {
        q.set(j, j, 1.0);
    }
    for (c, v) in vs.iter().enumerate().rev() {
        for j in 0..k {
            let d: f64 = (c..m).map(|i| v[i - c] * q.at(i, j)).sum();
            for i in c..m {
                let val = q.at(i, j) - 2.0 * v[i - c] * d;
                q.set(i, j, val);
            }
        }
    }
    q
}

/// SVD of a small-by-wide matrix B (k×n) by one-sided Jacobi on Bᵀ: (U k×k, S k, V n×k),
/// singular values descending.
pub fn svd_wide(b: &Mat) -> (Mat, Vec<f64>, Mat) {
    let (k, n) = (b.rows, b.cols);
    let mut a = b.transpose(); // n×k, orthogonalize its columns
    let mut u = Mat::zeros(k, k);
    for i in 0..k {
        u.set(i, i, 1.0);
    }
    for _ in 0..100 {
        let mut rotated = false;
        for p in 0..k {
            for q in p + 1..k {
                let (mut alpha, mut beta, mut gamma) = (0.0, 0.0, 0.0);
                for i in 0..n {
                    let (x, y) = (a.at(i, p), a.at(i, q));
                    alpha += x * x;
                    beta += y * y;
                    gamma += x * y;
                }
                if gamma.abs() <= 1e-15 * (alpha * beta).sqrt() || gamma == 0.0 {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let t = if zeta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                for i in 0..n {
                    let (x, y) = (a.at(i, p), a.at(i, q));
                    a.set(i, p, c * x - s * y);
                    a.set(i, q, s * x + c * y);
                }
                for i in 0..k {
                    let (x, y) = (u.at(i, p), u.at(i, q));
                    u.set(i, p, c * x - s * y);
                    u.set(i, q, s * x + c * y);
                }
            }
        }
        if !rotated {
            break;
        }
    }
    // Columns of a are σ_l·v_l; u holds the rotations (the left singular vectors of B).
    let mut sv: Vec<(f64, usize)> =
        (0..k).map(|l| ((0..n).map(|i| a.at(i, l).powi(2)).sum::<f64>().sqrt(), l)).collect();
    sv.sort_by(|x, y| y.0.total_cmp(&x.0));
    let mut uu = Mat::zeros(k, k);
    let mut vv = Mat::zeros(n, k);
    let mut s = vec![0.0; k];
    for (dst, &(sigma, src)) in sv.iter().enumerate() {
        s[dst] = sigma;
        for i in 0..k {
            uu.set(i, dst, u.at(i, src));
        }
        for i in 0..n {
            vv.set(i, dst, if sigma > 0.0 { a.at(i, src) / sigma } else { 0.0 });
        }
    }
    (uu, s, vv)
}

/// Rank-r RSVD of ALGORITHM.md in f64 with the library's Ω: the rank-r approximation as a matrix.
pub fn rsvd_reference(a: &Mat, r: usize, k: usize, q: u32, seed: u64, step: u64, moment: usize) -> Mat {
    let omega = Mat { rows: a.cols, cols: k, data: mlorc::rng::omega(seed, step, moment, a.cols, k) };
    let mut qm = householder_q(&a.matmul(&omega));
    let at = a.transpose();
    for _ in 0..q {
        let z = householder_q(&at.matmul(&qm));
        qm = householder_q(&a.matmul(&z));
    }
    let b = qm.transpose().matmul(a);
    let (ub, s, v) = svd_wide(&b);
    let u = qm.matmul(&ub);
    let mut out = Mat::zeros(a.rows, a.cols);
    for l in 0..r {
        for i in 0..a.rows {
            let x = u.at(i, l) * s[l];
            for j in 0..a.cols {
                out.data[i * a.cols + j] += x * v.at(j, l);
            }
        }
    }
    out
}

/// The factored state of one moment as a matrix: U·diag(S)·Vᵀ.
pub fn product(u: &[f32], s: &[f32], v: &[f32], m: usize, n: usize, r: usize) -> Mat {
    let mut out = Mat::zeros(m, n);
    for i in 0..m {
        for l in 0..r {
            let x = u[i * r + l] as f64 * s[l] as f64;
            for j in 0..n {
                out.data[i * n + j] += x * v[j * r + l] as f64;
            }
        }
    }
    out
}

/// Dense AdamW / Lion in f64 with torch semantics. Moments are m (and v for AdamW).
pub struct DenseReference {
    pub config: Config,
    pub w: Vec<f64>,
    pub m: Vec<f64>,
    pub v: Vec<f64>,
    pub t: u64,
}

impl DenseReference {
    pub fn new(config: Config, w: &[f32]) -> DenseReference {
        let n = w.len();
        DenseReference { config, w: w.iter().map(|&x| x as f64).collect(), m: vec![0.0; n], v: vec![0.0; n], t: 0 }
    }

    pub fn step(&mut self, g: &[f64], lr: f64) {
        self.t += 1;
        let c = &self.config;
        let t = self.t as i32;
        for i in 0..self.w.len() {
            let w = self.w[i] * (1.0 - lr * c.weight_decay);
            match c.algorithm {
                Algorithm::AdamW => {
                    self.m[i] = c.beta1 * self.m[i] + (1.0 - c.beta1) * g[i];
                    self.v[i] = c.beta2 * self.v[i] + (1.0 - c.beta2) * g[i] * g[i];
                    let (bc1, bc2) = if c.bias_correction {
                        (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t))
                    } else {
                        (1.0, 1.0)
                    };
                    self.w[i] = w - lr / bc1 * self.m[i] / (self.v[i].sqrt() / bc2.sqrt() + c.eps);
                }
                Algorithm::Lion => {
                    let u = c.beta1 * self.m[i] + (1.0 - c.beta1) * g[i];
                    let sign = if u > 0.0 { 1.0 } else if u < 0.0 { -1.0 } else { 0.0 };
                    self.w[i] = w - lr * sign;
                    self.m[i] = c.beta2 * self.m[i] + (1.0 - c.beta2) * g[i];
                }
            }
        }
    }
}

/// One MLorc step of ALGORITHM.md in f64 from the given old moments (rebuilt matrices).
/// Returns (new W, compressed M_t, compressed V_t (AdamW)).
pub fn mlorc_reference_step(
    config: &Config,
    w: &[f64],
    g: &Mat,
    old: &[Mat],
    t: u64,
    lr: f64,
    rank: usize,
    sketch: usize,
) -> (Vec<f64>, Vec<Mat>) {
    let (m, n) = (g.rows, g.cols);
    let c = config;
    let mut moments = Vec::new();
    let mut w_new = vec![0.0; m * n];
    match c.algorithm {
        Algorithm::AdamW => {
            let mt_old = &old[0];
            let mut vt_old = old[1].clone();
            let negatives: Vec<f64> = vt_old.data.iter().copied().filter(|&x| x < 0.0).collect();
            let fill = if negatives.is_empty() { 0.0 } else { negatives.iter().map(|x| -x).sum::<f64>() / negatives.len() as f64 };
            vt_old.data.iter_mut().for_each(|x| if *x < 0.0 { *x = fill });
            let mut mt = Mat::zeros(m, n);
            let mut vt = Mat::zeros(m, n);
            let ti = t as i32;
            let (bc1, bc2) = if c.bias_correction { (1.0 - c.beta1.powi(ti), 1.0 - c.beta2.powi(ti)) } else { (1.0, 1.0) };
            for e in 0..m * n {
                mt.data[e] = c.beta1 * mt_old.data[e] + (1.0 - c.beta1) * g.data[e];
                vt.data[e] = c.beta2 * vt_old.data[e] + (1.0 - c.beta2) * g.data[e] * g.data[e];
                let wd = w[e] * (1.0 - lr * c.weight_decay);
                w_new[e] = wd - lr / bc1 * mt.data[e] / (vt.data[e].sqrt() / bc2.sqrt() + c.eps);
            }
            moments.push(rsvd_reference(&mt, rank, sketch, c.power_iters, c.seed, t, 0));
            moments.push(rsvd_reference(&vt, rank, sketch, c.power_iters, c.seed, t, 1));
        }
        Algorithm::Lion => {
            let old = &old[0];
            let mut mt = Mat::zeros(m, n);
            for e in 0..m * n {
                let u = c.beta1 * old.data[e] + (1.0 - c.beta1) * g.data[e];
                let sign = if u > 0.0 { 1.0 } else if u < 0.0 { -1.0 } else { 0.0 };
                w_new[e] = w[e] * (1.0 - lr * c.weight_decay) - lr * sign;
                mt.data[e] = c.beta2 * old.data[e] + (1.0 - c.beta2) * g.data[e];
            }
            moments.push(rsvd_reference(&mt, rank, sketch, c.power_iters, c.seed, t, 0));
        }
    }
    (w_new, moments)
}

/// max |a − b| / max(max |scale|, tiny).
pub fn rel_err(a: &[f64], b: &[f64], scale: &[f64]) -> f64 {
    let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    let s = scale.iter().map(|x| x.abs()).fold(0.0, f64::max).max(1e-300);
    assert!(d.is_finite(), "non-finite difference");
    d / s
}
