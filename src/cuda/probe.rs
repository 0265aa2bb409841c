//! Whether the CUDA driver (libcuda) and NVRTC (libnvrtc) can be loaded here. cudarc panics when
//! a library is missing, so every use of it is preceded by these non-panicking probes; a
//! positive answer is cached (a probe dlopens each time).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

static DRIVER_READY: AtomicBool = AtomicBool::new(false);
static NVRTC_PRESENT: AtomicBool = AtomicBool::new(false);

/// Runs `f`, turning a panic (cudarc's reaction to a missing library or symbol) into an error.
pub fn no_panic<R>(what: &str, f: impl FnOnce() -> R) -> Result<R> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|panic| {
        let msg = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Error::DeviceUnavailable(format!("{what}: {msg}"))
    })
}

/// Whether libnvrtc can be loaded (cached once true).
pub fn nvrtc_present() -> bool {
    if NVRTC_PRESENT.load(Ordering::Acquire) {
        return true;
    }
    // SAFETY: the probe only dlopens candidate library names.
    let present = no_panic("probing libnvrtc", || unsafe { cudarc::nvrtc::sys::is_culib_present() }).unwrap_or(false);
    if present {
        NVRTC_PRESENT.store(true, Ordering::Release);
    }
    present
}

/// Whether libcuda can be loaded (not cached: `ensure_available` caches the full answer).
pub fn driver_present() -> bool {
    // SAFETY: the probe only dlopens candidate library names.
    no_panic("probing libcuda", || unsafe { cudarc::driver::sys::is_culib_present() }).unwrap_or(false)
}

/// Ok when the driver library loads, cuInit succeeds and NVRTC is present; otherwise
/// `DeviceUnavailable` saying what was looked for.
pub fn ensure_available() -> Result<()> {
    if DRIVER_READY.load(Ordering::Acquire) && nvrtc_present() {
        return Ok(());
    }
    if !driver_present() {
        return Err(Error::DeviceUnavailable(
            "MLORC_DEVICE_CUDA: the CUDA driver library was not found (looked for libcuda.so and \
             libcuda.so.1 through the dynamic loader: LD_LIBRARY_PATH, ld.so.cache); is the NVIDIA \
             driver installed?"
                .into(),
        ));
    }
    if !nvrtc_present() {
        return Err(Error::DeviceUnavailable(
            "MLORC_DEVICE_CUDA: libnvrtc was not found (looked for libnvrtc.so, libnvrtc.so.13 and \
             similar names through the dynamic loader: LD_LIBRARY_PATH, ld.so.cache, or a copy \
             already loaded, e.g. by torch); the kernels are compiled at run time and need it"
                .into(),
        ));
    }
    match no_panic("cuInit", cudarc::driver::result::init)? {
        Ok(()) => {
            DRIVER_READY.store(true, Ordering::Release);
            Ok(())
        }
        Err(e) => Err(Error::DeviceUnavailable(format!(
            "MLORC_DEVICE_CUDA: libcuda was found but cuInit failed ({e:?}); no usable GPU or driver"
        ))),
    }
}
