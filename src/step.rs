//! One optimizer step, written once for every backend: the per-step scalars of AdamW / Lion and
//! the order of the randomized-SVD passes of ALGORITHM.md. A backend supplies the passes
//! (`FactoredPasses`) and the elementwise dense step.

use crate::config::{Algorithm, Config, Dtype};
use crate::dtype::Rounding;
use crate::error::{invalid, Result};

/// Scalars of step t, computed in f64 as torch does and used in f32 by the kernels.
#[derive(Debug, Clone, Copy)]
pub struct StepScalars {
    pub algorithm: Algorithm,
    /// The step being taken, 1-based.
    pub step: u64,
    pub lr: f32,
    /// 1 − lr·weight_decay.
    pub decay: f32,
    /// AdamW: lr / (1 − β1^t). Lion: lr.
    pub step_size: f32,
    /// AdamW: sqrt(1 − β2^t).
    pub bias_correction2_sqrt: f32,
    /// AdamW: 1 / sqrt(1 − β2^t), rounded from f64: the CPU multiplies by it (a division costs
    /// as much as the rest of the update there); the result differs from dividing by at most
    /// an ulp of sqrt(V_t).
    pub inv_bias_correction2_sqrt: f32,
    pub eps: f32,
    pub beta1: f32,
    pub beta2: f32,
    /// 1 − β1 and 1 − β2, rounded from f64 (not computed from the rounded betas).
    pub one_minus_beta1: f32,
    pub one_minus_beta2: f32,
    /// Multiplies the gradient: 1 / grad_scale.
    pub grad_factor: f32,
    pub rounding: Rounding,
}

impl StepScalars {
    pub fn new(config: &Config, step: u64, lr: f64, grad_scale: Option<f32>) -> Result<StepScalars> {
        if !(lr.is_finite() && lr >= 0.0) {
            return invalid!("learning rate is {lr}: it must be finite and >= 0");
        }
        let grad_factor = match grad_scale {
            None => 1.0,
            Some(s) if s.is_finite() && s > 0.0 => 1.0 / s,
            Some(s) => return invalid!("*grad_scale is {s}: it must be finite and > 0"),
        };
        let (step_size, bias_correction2_sqrt) = match config.algorithm {
            Algorithm::AdamW if config.bias_correction => {
                let bc1 = 1.0 - config.beta1.powf(step as f64);
                let bc2 = 1.0 - config.beta2.powf(step as f64);
                (lr / bc1, bc2.sqrt())
            }
            _ => (lr, 1.0),
        };
        let rounding = if config.stochastic_rounding {
            Rounding::Stochastic { seed: config.seed, step }
        } else {
            Rounding::NearestEven
        };
        Ok(StepScalars {
            algorithm: config.algorithm,
            step,
            lr: lr as f32,
            decay: (1.0 - lr * config.weight_decay) as f32,
            step_size: step_size as f32,
            bias_correction2_sqrt: bias_correction2_sqrt as f32,
            inv_bias_correction2_sqrt: (1.0 / bias_correction2_sqrt) as f32,
            eps: config.eps as f32,
            beta1: config.beta1 as f32,
            beta2: config.beta2 as f32,
            one_minus_beta1: (1.0 - config.beta1) as f32,
            one_minus_beta2: (1.0 - config.beta2) as f32,
            grad_factor,
            rounding,
        })
    }

    /// Decay and gradient weight of moment `moment` in M_t = β·M̃ + (1 − β)·h.
    pub fn moment_mix(&self, moment: usize) -> (f32, f32) {
        match (self.algorithm, moment) {
            (Algorithm::AdamW, 0) => (self.beta1, self.one_minus_beta1),
            _ => (self.beta2, self.one_minus_beta2),
        }
    }

}

/// The parameter and gradient of one step, as raw memory of the state's device: the addresses
/// of element (0, 0) of the whole matrix. For a shard that starts at element b they lie b
/// elements before the caller's memory (wrapping arithmetic), so every pass addresses element
/// (i, j) at offset i·cols + j and touches only the shard's elements.
#[derive(Debug, Clone, Copy)]
pub struct StepIo {
    pub param: *mut u8,
    pub param_dtype: Dtype,
    pub grad: *const u8,
    pub grad_dtype: Dtype,
}

// SAFETY: the pointers are caller memory that outlives the step; the passes write disjoint
// ranges of `param` from different threads and only read `grad`.
unsafe impl Send for StepIo {}
unsafe impl Sync for StepIo {}

/// What a sketch pass multiplies each moment by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SketchInput {
    /// Ω, drawn for this step (seed, step, moment).
    Random,
    /// The orthonormalized projection orth(AᵀQ) of a power iteration.
    Projection,
}

/// The passes a backend runs for a FACTORED step; every moment of the step is handled by each
/// call, so one sweep over the gradient serves all of them.
pub trait FactoredPasses {
    /// Y = A·X for every moment A (rebuilt from the old factors and the gradient).
    fn sketch(&mut self, input: SketchInput) -> Result<()>;
    /// Q = orth(Y).
    fn orthonormalize_sketch(&mut self) -> Result<()>;
    /// Bᵀ = AᵀQ for every moment; with `update_weights`, also the weight update in place.
    fn project(&mut self, update_weights: bool) -> Result<()>;
    /// X = orth(Bᵀ), the input of the next sketch of a power iteration.
    fn orthonormalize_projection(&mut self) -> Result<()>;
    /// The new factors from Q and B (truncated SVD), written into the state's buffers.
    fn compress(&mut self) -> Result<()>;
}

/// ALGORITHM.md's step 1–5 for every moment: RSVD(A, r, p, q) with the weight update fused
/// into the last pass over the gradient.
pub fn run_factored(passes: &mut impl FactoredPasses, power_iters: u32) -> Result<()> {
    use crate::pass_timing::time;
    time("sketch A·Ω", || passes.sketch(SketchInput::Random))?;
    time("orth(Y)", || passes.orthonormalize_sketch())?;
    for _ in 0..power_iters {
        time("power: project AᵀQ", || passes.project(false))?;
        time("power: orth(AᵀQ)", || passes.orthonormalize_projection())?;
        time("power: sketch A·X", || passes.sketch(SketchInput::Projection))?;
        time("power: orth(Y)", || passes.orthonormalize_sketch())?;
    }
    time("project QᵀA + update", || passes.project(true))?;
    time("compress (SVD)", || passes.compress())
}

/// Which buffer holds factor `part` (0 = u, 1 = s, 2 = v) of `moment` in `Plan::buffers` order.
pub fn factor_index(moment: usize, part: usize) -> usize {
    moment * 3 + part
}

