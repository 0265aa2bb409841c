//! The device's primary context (the one PyTorch's runtime uses) and the caller's current
//! context: every entry into the backend saves the caller's current context, makes the device's
//! primary context current, and restores the caller's on the way out.

use std::sync::Arc;

use cudarc::driver::{result, sys, CudaContext};

use super::probe::no_panic;
use crate::error::{Error, Result};

/// Makes `ctx` current for the guard's life; restores the caller's context when dropped.
pub struct ContextGuard {
    previous: sys::CUcontext,
}

impl ContextGuard {
    pub fn enter(ctx: &CudaContext) -> Result<ContextGuard> {
        let previous = current()?;
        // SAFETY: ctx is a live, retained primary context.
        unsafe { result::ctx::set_current(ctx.cu_ctx()) }.map_err(|e| device_error("cuCtxSetCurrent", e))?;
        Ok(ContextGuard { previous })
    }
}

impl Drop for ContextGuard {
    fn drop(&mut self) {
        // SAFETY: restores what was current on entry (NULL included: no context).
        let _ = unsafe { result::ctx::set_current(self.previous) };
    }
}

fn current() -> Result<sys::CUcontext> {
    Ok(result::ctx::get_current().map_err(|e| device_error("cuCtxGetCurrent", e))?.unwrap_or(std::ptr::null_mut()))
}

/// Retains the primary context of device `ordinal` without leaving it current.
pub fn primary_context(ordinal: i32) -> Result<Arc<CudaContext>> {
    let previous = current()?;
    let ctx = no_panic("CudaContext::new", || CudaContext::new(ordinal as usize))?;
    // SAFETY: CudaContext::new made its context current; put back the caller's.
    let _ = unsafe { result::ctx::set_current(previous) };
    ctx.map_err(|e| match e.0 {
        sys::cudaError_enum::CUDA_ERROR_INVALID_DEVICE => Error::InvalidArgument(format!(
            "desc.device_ordinal is {ordinal}: no such CUDA device ({} visible)",
            result::device::get_count().unwrap_or(0)
        )),
        _ => device_error("retaining the primary context", e),
    })
}

pub fn device_error(what: &str, e: result::DriverError) -> Error {
    Error::Device(format!(
        "{what} failed: {e:?} (CUDA errors from earlier asynchronous work can surface here)"
    ))
}

/// Which device `ptr` lives on; refuses pointers that are not device memory.
pub fn pointer_device(ptr: u64, what: &str) -> Result<i32> {
    let mut ordinal: i32 = -1;
    // SAFETY: the attribute query writes one int and does not dereference ptr.
    let rc = unsafe {
        sys::cuPointerGetAttribute(
            &mut ordinal as *mut i32 as *mut std::ffi::c_void,
            sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
            ptr,
        )
    };
    if rc != sys::cudaError_enum::CUDA_SUCCESS {
        return Err(Error::InvalidArgument(format!(
            "{what} ({ptr:#x}) is not CUDA device memory known to the driver ({rc:?})"
        )));
    }
    Ok(ordinal)
}

/// Refuses `ptr` unless it is memory of device `ordinal`.
pub fn check_pointer(ptr: u64, ordinal: i32, what: &str) -> Result<()> {
    let found = pointer_device(ptr, what)?;
    if found != ordinal {
        return Err(Error::InvalidArgument(format!(
            "{what} is memory of CUDA device {found}, but the state lives on device {ordinal}"
        )));
    }
    Ok(())
}
