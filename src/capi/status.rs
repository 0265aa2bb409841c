//! Status codes from errors, the thread-local last-error message, and the panic boundary that
//! every exported function runs inside.

use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::error::Error;

use super::types::*;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

pub(crate) fn status_of(error: &Error) -> MlorcStatus {
    match error {
        Error::InvalidArgument(_) => MLORC_ERROR_INVALID_ARGUMENT,
        Error::Unsupported(_) => MLORC_ERROR_UNSUPPORTED,
        Error::OutOfMemory(_) => MLORC_ERROR_OUT_OF_MEMORY,
        Error::CorruptCheckpoint(_) => MLORC_ERROR_CORRUPT_CHECKPOINT,
        Error::Device(_) => MLORC_ERROR_DEVICE,
        Error::DeviceUnavailable(_) => MLORC_ERROR_DEVICE_UNAVAILABLE,
        Error::Internal(_) => MLORC_ERROR_INTERNAL,
        Error::Collective(_) => MLORC_ERROR_COLLECTIVE,
    }
}

fn set_last_error(function: &str, message: &str) {
    let text = format!("{function}: {message}").replace('\0', " ");
    LAST_ERROR.with(|e| *e.borrow_mut() = CString::new(text).unwrap_or_default());
}

pub(crate) fn last_error_ptr() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Runs an exported function's body: errors become a status plus the last-error message, and a
/// panic becomes MLORC_ERROR_INTERNAL instead of unwinding into C.
pub(crate) fn guard(function: &str, body: impl FnOnce() -> crate::error::Result<()>) -> MlorcStatus {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => MLORC_OK,
        Ok(Err(error)) => {
            set_last_error(function, error.message());
            status_of(&error)
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(function, &format!("internal error (please report): {what}"));
            MLORC_ERROR_INTERNAL
        }
    }
}
