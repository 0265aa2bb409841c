//! Validated hyperparameters and tensor shapes, and the plan derived from them: which layout a
//! tensor gets, its effective rank and sketch width, and the list of state buffers.

use crate::error::{invalid, Result};
use crate::shard::Shard;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    AdamW,
    Lion,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    Bf16,
}

impl Dtype {
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(i32),
}

/// What a caller asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutRequest {
    Auto,
    Factored,
    Dense,
}

/// What a tensor gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Factored,
    Dense,
}

/// Upper bounds that keep the small factorizations cheap and every size computation in range.
pub const MAX_SKETCH_WIDTH: u32 = 512;
pub const MAX_POWER_ITERS: u32 = 16;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    pub algorithm: Algorithm,
    pub layout: LayoutRequest,
    pub rank: u32,
    pub oversampling: u32,
    pub power_iters: u32,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub bias_correction: bool,
    pub stochastic_rounding: bool,
    pub seed: u64,
}

/// Seed used by `Config::defaults`; any value is valid.
pub const DEFAULT_SEED: u64 = 0x4d4c_6f72_6321;

impl Config {
    /// The defaults of ALGORITHM.md (the paper's code, with q = 0 for both algorithms).
    pub fn defaults(algorithm: Algorithm) -> Config {
        let (beta1, beta2, eps, weight_decay) = match algorithm {
            Algorithm::AdamW => (0.9, 0.999, 1e-8, 0.01),
            Algorithm::Lion => (0.95, 0.98, 0.0, 0.05),
        };
        Config {
            algorithm,
            layout: LayoutRequest::Auto,
            rank: 4,
            oversampling: 0,
            power_iters: 0,
            beta1,
            beta2,
            eps,
            weight_decay,
            bias_correction: true,
            stochastic_rounding: false,
            seed: DEFAULT_SEED,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return invalid!("config.rank is 0: the rank must be at least 1");
        }
        let width = self.rank as u64 + self.oversampling as u64;
        if width > MAX_SKETCH_WIDTH as u64 {
            return invalid!(
                "config.rank + config.oversampling is {width}: at most {MAX_SKETCH_WIDTH} is supported"
            );
        }
        if self.power_iters > MAX_POWER_ITERS {
            return invalid!(
                "config.power_iters is {}: at most {MAX_POWER_ITERS} is supported",
                self.power_iters
            );
        }
        check_unit_interval("config.beta1", self.beta1)?;
        check_unit_interval("config.beta2", self.beta2)?;
        check_non_negative("config.eps", self.eps)?;
        check_non_negative("config.weight_decay", self.weight_decay)?;
        Ok(())
    }

    /// Fields that fix the shapes of the state; they cannot change once a state exists.
    pub fn same_structure(&self, other: &Config) -> bool {
        self.algorithm == other.algorithm
            && self.layout == other.layout
            && self.rank == other.rank
            && self.oversampling == other.oversampling
    }
}

fn check_unit_interval(name: &str, value: f64) -> Result<()> {
    if !(0.0..1.0).contains(&value) {
        return invalid!("{name} is {value}: it must be in [0, 1)");
    }
    Ok(())
}

fn check_non_negative(name: &str, value: f64) -> Result<()> {
    if !(value.is_finite() && value >= 0.0) {
        return invalid!("{name} is {value}: it must be finite and >= 0");
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorDesc {
    pub rows: usize,
    pub cols: usize,
    pub param_dtype: Dtype,
    pub grad_dtype: Dtype,
    pub device: Device,
}

impl TensorDesc {
    pub fn validate(&self) -> Result<()> {
        if self.rows == 0 || self.cols == 0 {
            return invalid!(
                "tensor shape is {}x{}: rows and cols must both be at least 1",
                self.rows,
                self.cols
            );
        }
        // Every byte offset of the largest view (f32 elements) must fit in isize.
        let fits = self
            .rows
            .checked_mul(self.cols)
            .and_then(|e| e.checked_mul(4))
            .is_some_and(|b| b <= isize::MAX as usize);
        if !fits {
            return invalid!(
                "tensor shape {}x{} is too large to address",
                self.rows,
                self.cols
            );
        }
        Ok(())
    }

    pub fn elements(&self) -> usize {
        self.rows * self.cols
    }
}

/// Everything about a (config, tensor) pair that does not change from step to step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub algorithm: Algorithm,
    pub layout: Layout,
    pub rows: usize,
    pub cols: usize,
    /// Rank of the stored factors: min(config.rank, rows, cols). Zero for DENSE.
    pub rank: usize,
    /// Sketch width k = min(rank + oversampling, rows, cols). Zero for DENSE.
    pub sketch: usize,
    /// The elements this state holds (the whole matrix unless sharded).
    pub shard: Shard,
}

/// Name and shape of one f32 state buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferSpec {
    pub name: &'static str,
    pub rows: usize,
    pub cols: usize,
}

impl BufferSpec {
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Number of moments an algorithm keeps: AdamW's exp_avg and exp_avg_sq, Lion's exp_avg.
pub fn moment_count(algorithm: Algorithm) -> usize {
    match algorithm {
        Algorithm::AdamW => 2,
        Algorithm::Lion => 1,
    }
}

pub const MOMENT_NAMES: [&str; 2] = ["exp_avg", "exp_avg_sq"];
const FACTOR_NAMES: [[&str; 3]; 2] = [
    ["exp_avg.u", "exp_avg.s", "exp_avg.v"],
    ["exp_avg_sq.u", "exp_avg_sq.s", "exp_avg_sq.v"],
];

impl Plan {
    pub fn new(config: &Config, desc: &TensorDesc) -> Result<Plan> {
        Plan::sharded(config, desc, Shard::whole(desc.rows.saturating_mul(desc.cols)))
    }

    /// The plan of a state holding elements `shard` of the matrix. The layout and rank depend on
    /// the whole matrix only, so every rank of a group gets the same.
    pub fn sharded(config: &Config, desc: &TensorDesc, shard: Shard) -> Result<Plan> {
        config.validate()?;
        desc.validate()?;
        shard.validate(desc.elements())?;
        let (m, n) = (desc.rows, desc.cols);
        let max_rank = m.min(n);
        let rank = (config.rank as usize).min(max_rank);
        // Factors only pay when (m + n + 1)·r < m·n; ALGORITHM.md: smaller tensors stay dense.
        let factored_pays = (m as u128 + n as u128 + 1) * (config.rank as u128) < (m as u128) * (n as u128);
        let layout = match config.layout {
            LayoutRequest::Dense => Layout::Dense,
            LayoutRequest::Factored => Layout::Factored,
            LayoutRequest::Auto if factored_pays => Layout::Factored,
            LayoutRequest::Auto => Layout::Dense,
        };
        let (rank, sketch) = match layout {
            Layout::Dense => (0, 0),
            Layout::Factored => (rank, (rank + config.oversampling as usize).min(max_rank)),
        };
        Ok(Plan { algorithm: config.algorithm, layout, rows: m, cols: n, rank, sketch, shard })
    }

    pub fn moments(&self) -> usize {
        moment_count(self.algorithm)
    }

    pub fn is_sharded(&self) -> bool {
        !self.shard.is_whole(self.rows * self.cols)
    }

    /// The state buffers in their canonical order (the order of `mlorc_buffer_info`). Factors
    /// are the whole matrix's, sharded or not; dense moments cover the shard's elements only
    /// (1 × len when sharded).
    pub fn buffers(&self) -> Vec<BufferSpec> {
        let mut out = Vec::with_capacity(6);
        let (dense_rows, dense_cols) = if self.is_sharded() { (1, self.shard.len()) } else { (self.rows, self.cols) };
        for moment in 0..self.moments() {
            match self.layout {
                Layout::Dense => out.push(BufferSpec {
                    name: MOMENT_NAMES[moment],
                    rows: dense_rows,
                    cols: dense_cols,
                }),
                Layout::Factored => {
                    let [u, s, v] = FACTOR_NAMES[moment];
                    out.push(BufferSpec { name: u, rows: self.rows, cols: self.rank });
                    out.push(BufferSpec { name: s, rows: 1, cols: self.rank });
                    out.push(BufferSpec { name: v, rows: self.cols, cols: self.rank });
                }
            }
        }
        out
    }

    /// Bytes of optimizer state: moments · (m + n + 1) · r · 4 factored (on every rank of a
    /// sharded matrix), moments · elements · 4 dense (the shard's elements).
    pub fn state_bytes(&self) -> usize {
        self.buffers().iter().map(|b| b.len() * 4).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(rows: usize, cols: usize) -> TensorDesc {
        TensorDesc { rows, cols, param_dtype: Dtype::F32, grad_dtype: Dtype::F32, device: Device::Cpu }
    }

    #[test]
    fn auto_layout_follows_the_memory_rule() {
        let c = Config::defaults(Algorithm::AdamW);
        assert_eq!(Plan::new(&c, &desc(64, 64)).unwrap().layout, Layout::Factored);
        assert_eq!(Plan::new(&c, &desc(1, 4096)).unwrap().layout, Layout::Dense);
        // (8 + 8 + 1)·4 = 68 >= 64: dense.
        assert_eq!(Plan::new(&c, &desc(8, 8)).unwrap().layout, Layout::Dense);
        // (9 + 9 + 1)·4 = 76 < 81: factored.
        assert_eq!(Plan::new(&c, &desc(9, 9)).unwrap().layout, Layout::Factored);
    }

    #[test]
    fn state_bytes_match_the_formula() {
        let c = Config::defaults(Algorithm::AdamW);
        let p = Plan::new(&c, &desc(4096, 11008)).unwrap();
        assert_eq!(p.state_bytes(), 2 * (4096 + 11008 + 1) * 4 * 4);
        let mut lion = Config::defaults(Algorithm::Lion);
        lion.layout = LayoutRequest::Dense;
        assert_eq!(Plan::new(&lion, &desc(30, 7)).unwrap().state_bytes(), 30 * 7 * 4);
    }

    #[test]
    fn rank_is_clamped_and_invalid_configs_refused() {
        let mut c = Config::defaults(Algorithm::AdamW);
        c.layout = LayoutRequest::Factored;
        c.rank = 10;
        c.oversampling = 5;
        let p = Plan::new(&c, &desc(3, 5000)).unwrap();
        assert_eq!((p.rank, p.sketch), (3, 3));
        for bad in [
            Config { rank: 0, ..c },
            Config { beta1: f64::NAN, ..c },
            Config { beta2: 1.0, ..c },
            Config { eps: -1.0, ..c },
            Config { weight_decay: f64::INFINITY, ..c },
            Config { oversampling: MAX_SKETCH_WIDTH, ..c },
        ] {
            assert!(Plan::new(&bad, &desc(8, 8)).is_err(), "{bad:?}");
        }
        assert!(Plan::new(&c, &desc(0, 8)).is_err());
        assert!(Plan::new(&c, &desc(usize::MAX / 2, 8)).is_err());
    }
}
