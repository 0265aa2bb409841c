//! MLorc: Momentum Low-rank compression (arXiv 2506.01897) for AdamW and Lion, with a stable
//! C ABI. Each weight matrix keeps its moments as rank-r factors, `(rows + cols + 1)·r` floats
//! per moment, and still takes full-rank updates. See ALGORITHM.md for the math and README.md
//! for the C API.

pub mod batch;
pub mod capi;
pub mod checkpoint;
pub mod config;
mod cpu;
pub mod cuda;
pub mod dtype;
pub mod error;
pub mod linalg;
pub mod pass_timing;
pub mod rng;
pub mod shard;
pub mod state;
pub mod step;

pub use config::{Algorithm, Config, Device, Dtype, Layout, LayoutRequest, Plan, TensorDesc};
pub use error::{Error, Result};
pub use state::{State, StepOptions};

/// Runs `f` on the library's CPU thread pool (for Rust callers that want the same threading
/// as the C API).
pub fn run_on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    cpu::run(f)
}

/// The build of the CPU kernels that runs, and a process-wide cap on it (tests and benchmarks
/// compare the builds; all give the same bits). `MLORC_CPU_KERNELS=portable|avx2` caps it too.
#[doc(hidden)]
pub mod cpu_kernels {
    pub use crate::cpu::isa::{active, limit, CpuKernels};
}
