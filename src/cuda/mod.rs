//! The CUDA backend: caller-owned device memory, the caller's stream, the primary context of
//! the parameter's device. cudarc loads libcuda and libnvrtc at run time, so a build with this
//! backend still loads and runs on machines without CUDA; there, creating a CUDA state fails
//! with `Error::DeviceUnavailable`.
//!
//! One concept per file: `probe` (are the libraries there), `context` (the device's primary
//! context and the caller's current context), `module` (NVRTC compile to CUBIN, cached per
//! process and device), `launch` (launch geometry and the structs shared with kernels.cu),
//! `memory` (device allocations), `backend` (the state and the passes `run_factored` drives),
//! `mirror` (the kernels' work decomposition replayed on the CPU, for tests).
//!
//! The kernels compile with NVRTC in CI (scripts/nvrtc-check.sh), their work decomposition is
//! tested on the CPU (mirror.rs), and scripts/gpu-check.sh runs them on a GPU (an H200 so far:
//! BENCHMARKS.md §3).

pub mod backend;
pub mod context;
pub mod launch;
pub mod memory;
pub mod mirror;
pub mod module;
pub mod probe;

pub use backend::CudaState;
pub use probe::ensure_available;

/// The kernels' CUDA C++ source.
pub(crate) const KERNELS_SOURCE: &str = include_str!("kernels.cu");
