//! The CUDA kernels' work decomposition replayed on the CPU: the same block/thread partition
//! and the same reduction order (per-thread sums in column or row order, the warp's
//! shuffle-down tree, warps and row slabs added in order) for the negative fill, the sketch and
//! the projection pass, with the weight update fused as in kernels.cu. It implements
//! `FactoredPasses`, so `run_factored` drives it exactly as it drives the GPU; tests compare it
//! with the CPU backend. The small factorizations use src/linalg.rs (the kernels port them
//! with the same operation order; their f64 reductions differ only in summation order).
//!
//! f32 parameters and gradients only: this checks tiling, not dtype conversion.

use crate::config::{Algorithm, Plan};
use crate::error::Result;
use crate::linalg;
use crate::rng::{self, Stream};
use crate::step::{FactoredPasses, SketchInput, StepScalars};

use super::launch::*;

/// Lane 0's value after `x += shfl_down(x, off)` for off = 16, 8, 4, 2, 1 (f32 or f64).
pub fn warp_tree<T: Copy + std::ops::Add<Output = T>>(lanes: &[T; 32]) -> T {
    let mut v = *lanes;
    let mut off = 16;
    while off > 0 {
        let old = v;
        for lane in 0..32 {
            v[lane] = old[lane] + if lane + off < 32 { old[lane + off] } else { old[lane] };
        }
        off >>= 1;
    }
    v[0]
}

/// block_sum of kernels.cu: warp trees, then warps added in order.
pub fn block_sum_f32(threads: &[f32]) -> f32 {
    let warps: Vec<f32> = threads.chunks_exact(32).map(|w| warp_tree(w.try_into().unwrap())).collect();
    warps[1..].iter().fold(warps[0], |t, &w| t + w)
}

pub fn block_sum_f64(threads: &[f64]) -> f64 {
    let warps: Vec<f64> = threads.chunks_exact(32).map(|w| warp_tree(w.try_into().unwrap())).collect();
    warps[1..].iter().fold(warps[0], |t, &w| t + w)
}

/// One FACTORED step replayed with the kernels' partition, on host memory.
pub struct MirrorPasses<'a> {
    plan: Plan,
    sc: StepScalars,
    seed: u64,
    adamw: bool,
    fill: f32,
    u: Vec<&'a mut [f32]>,
    s: Vec<&'a mut [f32]>,
    v: Vec<&'a mut [f32]>,
    param: &'a mut [f32],
    grad: &'a [f32],
    vt: Vec<Vec<f32>>,
    xt: Vec<Vec<f32>>,
    yt: Vec<Vec<f32>>,
    bt: Vec<Vec<f32>>,
}

impl<'a> MirrorPasses<'a> {
    /// `factors`: u, s, v per moment in buffer order. Runs mlorc_transpose_v and the negative
    /// fill, as the step's first kernels do.
    pub fn new(plan: Plan, sc: StepScalars, seed: u64, factors: Vec<&'a mut [f32]>, param: &'a mut [f32], grad: &'a [f32]) -> Self {
        let (m, n, r, k) = (plan.rows, plan.cols, plan.rank, plan.sketch);
        let moments = plan.moments();
        let (mut u, mut s, mut v) = (Vec::new(), Vec::new(), Vec::new());
        let mut it = factors.into_iter();
        for _ in 0..moments {
            u.push(it.next().unwrap());
            s.push(it.next().unwrap());
            v.push(it.next().unwrap());
        }
        let vt = (0..moments)
            .map(|mo| {
                let mut t = vec![0f32; r * n];
                for j in 0..n {
                    for l in 0..r {
                        t[l * n + j] = v[mo][j * r + l];
                    }
                }
                t
            })
            .collect();
        let mut me = MirrorPasses {
            plan,
            sc,
            seed,
            adamw: plan.algorithm == Algorithm::AdamW,
            fill: 0.0,
            u,
            s,
            v,
            param,
            grad,
            vt,
            xt: vec![vec![0f32; k * n]; moments],
            yt: vec![vec![0f32; k * m]; moments],
            bt: vec![vec![0f32; k * n]; moments],
        };
        if me.adamw {
            me.fill = me.negative_fill();
        }
        me
    }

    fn rebuild(&self, mo: usize, i: usize, j: usize) -> f32 {
        let (n, r) = (self.plan.cols, self.plan.rank);
        let mut out = 0f32;
        for l in 0..r {
            out = (self.u[mo][i * r + l] * self.s[mo][l]).mul_add(self.vt[mo][l * n + j], out);
        }
        out
    }

    /// moment_step of kernels.cu: (old, new).
    fn moment_step(&self, mo: usize, rebuilt: f32, g: f32) -> (f32, f32) {
        let second = self.adamw && mo == 1;
        let old = if second && rebuilt < 0.0 { self.fill } else { rebuilt };
        let (beta, weight) = self.sc.moment_mix(mo);
        let h = if second { g * g } else { g };
        (old, beta.mul_add(old, weight * h))
    }

    /// mlorc_negative_partial + mlorc_negative_final.
    fn negative_fill(&self) -> f32 {
        let (m, n) = (self.plan.rows, self.plan.cols);
        let mut block_sums = vec![0f64; NEG_BLOCKS as usize];
        let mut block_counts = vec![0f64; NEG_BLOCKS as usize];
        for b in 0..NEG_BLOCKS as usize {
            let mut sums = vec![0f64; NEG_THREADS as usize];
            let mut counts = vec![0f64; NEG_THREADS as usize];
            for t in 0..NEG_THREADS as usize {
                let (mut sum, mut c) = (0f32, 0u32);
                for i in (b..m).step_by(NEG_BLOCKS as usize) {
                    for j in (t..n).step_by(NEG_THREADS as usize) {
                        let x = self.rebuild(1, i, j);
                        if x < 0.0 {
                            sum += -x;
                            c += 1;
                        } else {
                            sum += 0.0;
                        }
                    }
                }
                sums[t] = sum as f64;
                counts[t] = c as f64;
            }
            block_sums[b] = block_sum_f64(&sums);
            block_counts[b] = block_sum_f64(&counts);
        }
        // mlorc_negative_final: one thread per block's partials, the block tree.
        let (total, count) = (block_sum_f64(&block_sums), block_sum_f64(&block_counts));
        if count == 0.0 {
            0.0
        } else {
            (total / count) as f32
        }
    }

    fn grad_at(&self, e: usize) -> f32 {
        self.grad[e] * self.sc.grad_factor
    }
}

impl FactoredPasses for MirrorPasses<'_> {
    fn sketch(&mut self, input: SketchInput) -> Result<()> {
        let (m, n, k) = (self.plan.rows, self.plan.cols, self.plan.sketch);
        let moments = self.plan.moments();
        if input == SketchInput::Random {
            for mo in 0..moments {
                rng::fill_omega_transposed(self.seed, self.sc.step, Stream::sketch(mo), n, k, n, &mut self.xt[mo]);
            }
        }
        let x: Vec<Vec<f32>> = match input {
            SketchInput::Random => self.xt.clone(),
            SketchInput::Projection => self.bt.clone(),
        };
        let (rows, threads) = (SK_ROWS as usize, SK_THREADS as usize);
        let mut l0 = 0;
        while l0 < k {
            let kc = chunk_width((k - l0) as u32) as usize;
            for block in 0..m.div_ceil(rows) {
                let i0 = block * rows;
                // acc[thread][row][mo][q]
                let mut acc = vec![0f32; threads * rows * moments * kc];
                for t in 0..threads {
                    // Thread t takes the groups of SK_VEC columns t, t + threads, ..., each in
                    // column order.
                    let groups = (t..n.div_ceil(SK_VEC as usize)).step_by(threads);
                    for j in groups.flat_map(|gr| gr * SK_VEC as usize..((gr + 1) * SK_VEC as usize).min(n)) {
                        for row in 0..rows {
                            let i = i0 + row;
                            if i >= m {
                                break;
                            }
                            let g = self.grad_at(i * n + j);
                            for mo in 0..moments {
                                let (_, a) = self.moment_step(mo, self.rebuild(mo, i, j), g);
                                for q in 0..kc {
                                    let xv = if l0 + q < k { x[mo][(l0 + q) * n + j] } else { 0.0 };
                                    let slot = &mut acc[((t * rows + row) * moments + mo) * kc + q];
                                    *slot = a.mul_add(xv, *slot);
                                }
                            }
                        }
                    }
                }
                for row in 0..rows {
                    for mo in 0..moments {
                        for q in 0..kc {
                            let per_thread: Vec<f32> = (0..threads).map(|t| acc[((t * rows + row) * moments + mo) * kc + q]).collect();
                            let total = block_sum_f32(&per_thread);
                            let i = i0 + row;
                            if i < m && l0 + q < k {
                                self.yt[mo][(l0 + q) * m + i] = total;
                            }
                        }
                    }
                }
            }
            l0 += kc;
        }
        Ok(())
    }

    fn orthonormalize_sketch(&mut self) -> Result<()> {
        let (m, k) = (self.plan.rows, self.plan.sketch);
        for yt in &mut self.yt {
            orth_transposed(yt, m, k);
        }
        Ok(())
    }

    fn project(&mut self, update_weights: bool) -> Result<()> {
        let (m, n, k) = (self.plan.rows, self.plan.cols, self.plan.sketch);
        let moments = self.plan.moments();
        let grid_slabs = grid_slabs(m, n) as usize;
        let slabs = PJ_SLABS as usize * grid_slabs;
        let rows_per_slab = m.div_ceil(slabs);
        let mut l0 = 0;
        // part[by][mo][l][j]
        let mut part = vec![0f32; grid_slabs * moments * k * n];
        while l0 < k {
            let kc = chunk_width((k - l0) as u32) as usize;
            let update = update_weights && l0 == 0;
            for j in 0..n {
                for by in 0..grid_slabs {
                    // red[ty][mo][q]
                    let mut red = vec![0f32; PJ_SLABS as usize * moments * kc];
                    for ty in 0..PJ_SLABS as usize {
                        let slab = by * PJ_SLABS as usize + ty;
                        let begin = (slab * rows_per_slab).min(m);
                        let end = (begin + rows_per_slab).min(m);
                        for i in begin..end {
                            let e = i * n + j;
                            let g = self.grad_at(e);
                            let mut olds = [0f32; 2];
                            let mut news = [0f32; 2];
                            for mo in 0..moments {
                                (olds[mo], news[mo]) = self.moment_step(mo, self.rebuild(mo, i, j), g);
                                for q in 0..kc {
                                    let ql = if l0 + q < k { self.yt[mo][(l0 + q) * m + i] } else { 0.0 };
                                    let slot = &mut red[(ty * moments + mo) * kc + q];
                                    *slot = ql.mul_add(news[mo], *slot);
                                }
                            }
                            if update {
                                let w = self.param[e];
                                self.param[e] = if self.adamw {
                                    let denom = news[1].sqrt().mul_add(self.sc.inv_bias_correction2_sqrt, self.sc.eps);
                                    (-self.sc.step_size).mul_add(news[0] / denom, w * self.sc.decay)
                                } else {
                                    let c = self.sc.beta1.mul_add(olds[0], self.sc.one_minus_beta1 * g);
                                    let sign = if c > 0.0 { 1.0 } else if c < 0.0 { -1.0 } else { 0.0 };
                                    (-self.sc.lr).mul_add(sign, w * self.sc.decay)
                                };
                            }
                        }
                    }
                    for mo in 0..moments {
                        for q in 0..kc {
                            if l0 + q < k {
                                let mut t = red[mo * kc + q];
                                for ty in 1..PJ_SLABS as usize {
                                    t += red[(ty * moments + mo) * kc + q];
                                }
                                part[((by * moments + mo) * k + l0 + q) * n + j] = t;
                            }
                        }
                    }
                }
            }
            l0 += kc;
        }
        // mlorc_project_reduce.
        let total = moments * k * n;
        for e in 0..total {
            let mut t = part[e];
            for s in 1..grid_slabs {
                t += part[s * total + e];
            }
            self.bt[e / (k * n)][e % (k * n)] = t;
        }
        Ok(())
    }

    fn orthonormalize_projection(&mut self) -> Result<()> {
        let (n, k) = (self.plan.cols, self.plan.sketch);
        for bt in &mut self.bt {
            orth_transposed(bt, n, k);
        }
        Ok(())
    }

    fn compress(&mut self) -> Result<()> {
        let (m, n, k, r) = (self.plan.rows, self.plan.cols, self.plan.sketch, self.plan.rank);
        for mo in 0..self.plan.moments() {
            let q = transpose(&self.yt[mo], k, m);
            let b = transpose(&self.bt[mo], k, n);
            linalg::truncated_svd(&q, &b, m, n, k, r, self.u[mo], self.s[mo], self.v[mo]);
        }
        Ok(())
    }
}

/// rows×cols row-major from cols×rows row-major.
fn transpose(t: &[f32], k: usize, len: usize) -> Vec<f32> {
    let mut out = vec![0f32; k * len];
    for l in 0..k {
        for i in 0..len {
            out[i * k + l] = t[l * len + i];
        }
    }
    out
}

fn orth_transposed(t: &mut [f32], len: usize, k: usize) {
    let mut a = transpose(t, k, len);
    linalg::orthonormalize_columns(&mut a, len, k);
    for l in 0..k {
        for i in 0..len {
            t[l * len + i] = a[i * k + l];
        }
    }
}
