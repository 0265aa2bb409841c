//! Device memory the library allocates (state buffers, workspace, control block): allocated and
//! zeroed when a state is created, freed when it is dropped, never inside a step. Caller memory
//! never goes through this type.

use std::sync::Arc;

use cudarc::driver::{result, CudaContext};

use super::context::{device_error, ContextGuard};
use crate::error::{Error, Result};

pub struct DeviceMemory {
    ptr: u64,
    bytes: usize,
    ctx: Arc<CudaContext>,
}

impl DeviceMemory {
    /// `bytes` of zeroed device memory (the caller has the context current).
    pub fn zeroed(ctx: &Arc<CudaContext>, bytes: usize, what: &str) -> Result<DeviceMemory> {
        let size = bytes.max(4);
        // SAFETY: plain allocation in the current (primary) context.
        let ptr = unsafe { result::malloc_sync(size) }.map_err(|e| match e.0 {
            cudarc::driver::sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY => {
                Error::OutOfMemory(format!("cannot allocate {bytes} bytes of device memory for {what}"))
            }
            _ => device_error(&format!("allocating {bytes} bytes for {what}"), e),
        })?;
        let mem = DeviceMemory { ptr, bytes: size, ctx: ctx.clone() };
        // SAFETY: ptr holds `size` bytes.
        unsafe { result::memset_d8_sync(ptr, 0, size) }.map_err(|e| device_error("zeroing device memory", e))?;
        Ok(mem)
    }

    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for DeviceMemory {
    fn drop(&mut self) {
        if let Ok(_guard) = ContextGuard::enter(&self.ctx) {
            // SAFETY: ptr was allocated by malloc_sync in this context and is freed once.
            let _ = unsafe { result::free_sync(self.ptr) };
        }
    }
}
