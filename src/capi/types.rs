//! The C-visible types: status and enum constants, and the `repr(C)` structs with their
//! conversions into validated library types. Enums cross the boundary as `uint32_t` so an
//! out-of-range value from C is an error, never undefined behaviour.

use std::ffi::{c_char, c_void};

use crate::config::{Algorithm, Config, Device, Dtype, LayoutRequest, TensorDesc};
use crate::error::{invalid, Result};

/// Version of the C ABI. It changes only when a released struct or signature changes
/// incompatibly; it is the major number of the shared library's soname.
pub const MLORC_ABI_VERSION: u32 = 1;

/// Result of every fallible call. Values are stable and never reused.
pub type MlorcStatus = u32;
/// Success.
pub const MLORC_OK: MlorcStatus = 0;
/// A NULL pointer, a wrong size or struct_size, an out-of-range value, a NaN hyperparameter.
pub const MLORC_ERROR_INVALID_ARGUMENT: MlorcStatus = 1;
/// Valid input this build cannot handle (for example a device it was not built for).
pub const MLORC_ERROR_UNSUPPORTED: MlorcStatus = 2;
/// An allocation failed.
pub const MLORC_ERROR_OUT_OF_MEMORY: MlorcStatus = 3;
/// A checkpoint failed validation (magic, version, checksum, shapes); the state is unchanged.
pub const MLORC_ERROR_CORRUPT_CHECKPOINT: MlorcStatus = 4;
/// The device reported an error (it may stem from earlier asynchronous work).
pub const MLORC_ERROR_DEVICE: MlorcStatus = 5;
/// The device or its driver libraries cannot be found or used on this machine.
pub const MLORC_ERROR_DEVICE_UNAVAILABLE: MlorcStatus = 6;
/// A bug in the library (a caught panic); the message says where.
pub const MLORC_ERROR_INTERNAL: MlorcStatus = 7;
/// The all-reduce callback of a sharded state returned non-zero. The parameter shard and the
/// state may then disagree with the other ranks: reload a checkpoint on every rank.
pub const MLORC_ERROR_COLLECTIVE: MlorcStatus = 8;

/// Optimizer algorithm.
pub type MlorcAlgorithm = u32;
/// MLorc-AdamW: two compressed moments (exp_avg, exp_avg_sq).
pub const MLORC_ADAMW: MlorcAlgorithm = 0;
/// MLorc-Lion: one compressed moment (exp_avg).
pub const MLORC_LION: MlorcAlgorithm = 1;

/// Element type of parameters and gradients. State buffers are always MLORC_F32.
pub type MlorcDtype = u32;
pub const MLORC_F32: MlorcDtype = 0;
pub const MLORC_F16: MlorcDtype = 1;
pub const MLORC_BF16: MlorcDtype = 2;

/// Where the parameter, gradient and state live.
pub type MlorcDevice = u32;
pub const MLORC_DEVICE_CPU: MlorcDevice = 0;
pub const MLORC_DEVICE_CUDA: MlorcDevice = 1;

/// How moments are stored.
pub type MlorcLayout = u32;
/// FACTORED when (rows + cols + 1)·rank < rows·cols, else DENSE.
pub const MLORC_LAYOUT_AUTO: MlorcLayout = 0;
/// Rank-r factors u (rows×r), s (r), v (cols×r) per moment.
pub const MLORC_LAYOUT_FACTORED: MlorcLayout = 1;
/// Full rows×cols moments: plain AdamW / Lion.
pub const MLORC_LAYOUT_DENSE: MlorcLayout = 2;

/// Optimizer configuration. Fill it with `mlorc_config_init`, then change what you need.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct MlorcConfig {
    /// Must be sizeof(MlorcConfig); set by mlorc_config_init.
    pub struct_size: usize,
    /// MLORC_ADAMW or MLORC_LION.
    pub algorithm: MlorcAlgorithm,
    /// MLORC_LAYOUT_AUTO (default), _FACTORED or _DENSE.
    pub layout: MlorcLayout,
    /// Rank r of the stored factors (default 4); clamped to min(rows, cols).
    pub rank: u32,
    /// Oversampling p of the randomized SVD (default 0); sketch width k = r + p.
    pub oversampling: u32,
    /// Power iterations q of the randomized SVD (default 0).
    pub power_iters: u32,
    /// 1: Adam bias correction (default), 0: none. Ignored by Lion.
    pub bias_correction: u32,
    /// 1: f16/bf16 parameters are written back with stochastic rounding; 0: round to nearest
    /// even (default).
    pub stochastic_rounding: u32,
    /// AdamW: first-moment decay (0.9). Lion: interpolation of the update (0.95).
    pub beta1: f64,
    /// AdamW: second-moment decay (0.999). Lion: momentum decay (0.98).
    pub beta2: f64,
    /// AdamW: added to the denominator (1e-8). Ignored by Lion.
    pub eps: f64,
    /// Decoupled weight decay (AdamW 0.01, Lion 0.05): W ← W·(1 − lr·weight_decay).
    pub weight_decay: f64,
    /// Seed of the random sketches and of stochastic rounding.
    pub seed: u64,
}

/// A parameter tensor: row-major and contiguous. Flatten N-d tensors to rows × (product of rest).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct MlorcTensorDesc {
    /// Must be sizeof(MlorcTensorDesc); set by mlorc_tensor_desc_init.
    pub struct_size: usize,
    pub rows: usize,
    pub cols: usize,
    pub param_dtype: MlorcDtype,
    pub grad_dtype: MlorcDtype,
    pub device: MlorcDevice,
    /// CUDA device ordinal; ignored on the CPU.
    pub device_ordinal: i32,
}

/// Per-step inputs. Every pointer is caller-owned and read only during the call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct MlorcStepOptions {
    /// Must be sizeof(MlorcStepOptions); set by mlorc_step_options_init.
    pub struct_size: usize,
    /// Learning rate, used when lr_ptr is NULL.
    pub lr: f64,
    /// Optional: one float holding the learning rate (same memory space as the parameter);
    /// overrides lr. Lets a captured CUDA graph follow a schedule.
    pub lr_ptr: *const f32,
    /// Optional: one float; the gradient is divided by it (GradScaler's scale).
    pub grad_scale: *const f32,
    /// Optional: one float; when non-zero the step changes nothing, not even the step count.
    pub found_inf: *const f32,
    /// CUDA stream (CUstream / cudaStream_t) to enqueue on; NULL is the default stream.
    /// Ignored on the CPU.
    pub stream: *mut c_void,
}

/// Sums `count` floats at `data` in place across the group of ranks that share a sharded
/// matrix (every rank receives the sum), as MPI_Allreduce / ncclAllReduce / torch's all_reduce
/// with SUM do. Every rank's library calls it the same number of times with the same counts in
/// the same order; it is called on the thread that called mlorc_step. `data` is valid during
/// the call only (host memory on the CPU). `stream` is the step's stream (NULL on the CPU);
/// `context` is MlorcShard.all_reduce_context. Return 0 on success; any other value fails the
/// step with MLORC_ERROR_COLLECTIVE.
pub type MlorcAllReduceFn =
    Option<unsafe extern "C" fn(data: *mut f32, count: usize, stream: *mut c_void, context: *mut c_void) -> i32>;

/// The part of a rows × cols matrix one rank holds: elements [begin, end) of the row-major
/// matrix (whole rows for FSDP-style dim-0 shards; any range for ZeRO-style flat partitions;
/// empty is allowed), and the group's all-reduce. Fill it with mlorc_shard_init.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct MlorcShard {
    /// Must be sizeof(MlorcShard); set by mlorc_shard_init.
    pub struct_size: usize,
    /// First element held, counted in the row-major order of the whole matrix.
    pub begin: u64,
    /// One past the last element held; begin <= end <= rows·cols.
    pub end: u64,
    /// Required for the FACTORED layout; never called for DENSE (it may be NULL there).
    pub all_reduce: MlorcAllReduceFn,
    /// Passed to all_reduce; caller-owned, must stay valid while the state lives.
    pub all_reduce_context: *mut c_void,
}

/// Name and shape of one state buffer, as told by mlorc_buffer_info.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct MlorcBufferInfo {
    /// Set by the caller to sizeof(MlorcBufferInfo) before the call.
    pub struct_size: usize,
    /// Static NUL-terminated name such as "exp_avg.u"; never freed.
    pub name: *const c_char,
    pub rows: usize,
    pub cols: usize,
    /// Always MLORC_F32.
    pub dtype: MlorcDtype,
    /// rows · cols · 4.
    pub bytes: usize,
}

pub(crate) fn algorithm_from_c(value: MlorcAlgorithm) -> Result<Algorithm> {
    match value {
        MLORC_ADAMW => Ok(Algorithm::AdamW),
        MLORC_LION => Ok(Algorithm::Lion),
        other => invalid!("unknown algorithm {other} (expected MLORC_ADAMW=0 or MLORC_LION=1)"),
    }
}

pub(crate) fn algorithm_to_c(value: Algorithm) -> MlorcAlgorithm {
    match value {
        Algorithm::AdamW => MLORC_ADAMW,
        Algorithm::Lion => MLORC_LION,
    }
}

pub(crate) fn dtype_from_c(value: MlorcDtype, what: &str) -> Result<Dtype> {
    match value {
        MLORC_F32 => Ok(Dtype::F32),
        MLORC_F16 => Ok(Dtype::F16),
        MLORC_BF16 => Ok(Dtype::Bf16),
        other => invalid!("{what} is {other}: expected MLORC_F32=0, MLORC_F16=1 or MLORC_BF16=2"),
    }
}

pub(crate) fn layout_request_from_c(value: MlorcLayout) -> Result<LayoutRequest> {
    match value {
        MLORC_LAYOUT_AUTO => Ok(LayoutRequest::Auto),
        MLORC_LAYOUT_FACTORED => Ok(LayoutRequest::Factored),
        MLORC_LAYOUT_DENSE => Ok(LayoutRequest::Dense),
        other => invalid!("unknown layout {other} (expected AUTO=0, FACTORED=1 or DENSE=2)"),
    }
}

pub(crate) fn layout_request_to_c(value: LayoutRequest) -> MlorcLayout {
    match value {
        LayoutRequest::Auto => MLORC_LAYOUT_AUTO,
        LayoutRequest::Factored => MLORC_LAYOUT_FACTORED,
        LayoutRequest::Dense => MLORC_LAYOUT_DENSE,
    }
}

fn flag_from_c(value: u32, what: &str) -> Result<bool> {
    match value {
        0 => Ok(false),
        1 => Ok(true),
        other => invalid!("{what} is {other}: expected 0 or 1"),
    }
}

pub(crate) fn check_struct_size(found: usize, expected: usize, what: &str) -> Result<()> {
    if found != expected {
        return invalid!(
            "{what}.struct_size is {found}, expected {expected}: initialise it with the matching _init function of this library's header"
        );
    }
    Ok(())
}

impl MlorcConfig {
    pub(crate) fn from_config(c: &Config) -> MlorcConfig {
        MlorcConfig {
            struct_size: std::mem::size_of::<MlorcConfig>(),
            algorithm: algorithm_to_c(c.algorithm),
            layout: layout_request_to_c(c.layout),
            rank: c.rank,
            oversampling: c.oversampling,
            power_iters: c.power_iters,
            bias_correction: c.bias_correction as u32,
            stochastic_rounding: c.stochastic_rounding as u32,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            weight_decay: c.weight_decay,
            seed: c.seed,
        }
    }

    pub(crate) fn to_config(&self) -> Result<Config> {
        check_struct_size(self.struct_size, std::mem::size_of::<MlorcConfig>(), "config")?;
        let config = Config {
            algorithm: algorithm_from_c(self.algorithm)?,
            layout: layout_request_from_c(self.layout)?,
            rank: self.rank,
            oversampling: self.oversampling,
            power_iters: self.power_iters,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            bias_correction: flag_from_c(self.bias_correction, "config.bias_correction")?,
            stochastic_rounding: flag_from_c(self.stochastic_rounding, "config.stochastic_rounding")?,
            seed: self.seed,
        };
        config.validate()?;
        Ok(config)
    }
}

impl MlorcTensorDesc {
    pub(crate) fn to_desc(&self) -> Result<TensorDesc> {
        check_struct_size(self.struct_size, std::mem::size_of::<MlorcTensorDesc>(), "desc")?;
        let device = match self.device {
            MLORC_DEVICE_CPU => Device::Cpu,
            MLORC_DEVICE_CUDA => {
                if self.device_ordinal < 0 {
                    return invalid!("desc.device_ordinal is {}: must be >= 0", self.device_ordinal);
                }
                Device::Cuda(self.device_ordinal)
            }
            other => return invalid!("desc.device is {other}: expected MLORC_DEVICE_CPU=0 or MLORC_DEVICE_CUDA=1"),
        };
        let desc = TensorDesc {
            rows: self.rows,
            cols: self.cols,
            param_dtype: dtype_from_c(self.param_dtype, "desc.param_dtype")?,
            grad_dtype: dtype_from_c(self.grad_dtype, "desc.grad_dtype")?,
            device,
        };
        desc.validate()?;
        Ok(desc)
    }
}
