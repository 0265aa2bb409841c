//! The kernels compiled by NVRTC to a CUBIN for the device's own SM (no PTX: a newer NVRTC emits
//! PTX that an older driver cannot JIT), loaded once per process and device and cached with the
//! device's primary context.

use std::collections::HashMap;
use std::ffi::{c_char, CString};
use std::sync::{Arc, Mutex};

use cudarc::driver::{result, sys, CudaContext};
use cudarc::nvrtc::sys as nvrtc;

use super::context::{device_error, primary_context, ContextGuard};
use super::launch::{defines, KERNEL_NAMES, ORTH_SHARED_MAX};
use super::probe::{ensure_available, no_panic, nvrtc_present};
use super::KERNELS_SOURCE;
use crate::error::{Error, Result};

/// Compiles kernels.cu for `arch` (e.g. "sm_90") and returns the CUBIN.
pub fn compile_cubin(arch: &str) -> Result<Vec<u8>> {
    if !nvrtc_present() {
        return Err(Error::DeviceUnavailable("libnvrtc was not found (looked for libnvrtc.so, libnvrtc.so.13, ...)".into()));
    }
    no_panic("NVRTC", || compile_unguarded(arch))?
}

fn nvrtc_check(what: &str, rc: nvrtc::nvrtcResult) -> Result<()> {
    if rc == nvrtc::nvrtcResult::NVRTC_SUCCESS {
        Ok(())
    } else {
        Err(Error::Internal(format!("{what} failed: {rc:?}")))
    }
}

fn compile_unguarded(arch: &str) -> Result<Vec<u8>> {
    let source = CString::new(KERNELS_SOURCE).map_err(|_| Error::Internal("kernels.cu contains NUL".into()))?;
    let name = c"mlorc_kernels.cu";
    let mut prog: nvrtc::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: source and name outlive the program (destroyed below).
    nvrtc_check("nvrtcCreateProgram", unsafe {
        nvrtc::nvrtcCreateProgram(&mut prog, source.as_ptr(), name.as_ptr(), 0, std::ptr::null(), std::ptr::null())
    })?;
    let mut options = vec![format!("--gpu-architecture={arch}"), "--fmad=false".into(), "--std=c++17".into()];
    options.extend(defines());
    let options: Vec<CString> = options.into_iter().map(|o| CString::new(o).expect("option without NUL")).collect();
    let pointers: Vec<*const c_char> = options.iter().map(|o| o.as_ptr()).collect();
    // SAFETY: prog is live; the option strings outlive the call.
    let rc = unsafe { nvrtc::nvrtcCompileProgram(prog, pointers.len() as i32, pointers.as_ptr()) };
    let result = if rc != nvrtc::nvrtcResult::NVRTC_SUCCESS {
        Err(Error::Internal(format!("NVRTC could not compile the kernels for {arch} ({rc:?}):\n{}", log(prog))))
    } else {
        let mut size = 0usize;
        // SAFETY: prog compiled successfully; the buffer has the size NVRTC reports.
        nvrtc_check("nvrtcGetCUBINSize", unsafe { nvrtc::nvrtcGetCUBINSize(prog, &mut size) }).and_then(|()| {
            let mut cubin = vec![0u8; size];
            nvrtc_check("nvrtcGetCUBIN", unsafe { nvrtc::nvrtcGetCUBIN(prog, cubin.as_mut_ptr() as *mut c_char) })?;
            if cubin.is_empty() {
                return Err(Error::Internal(format!("NVRTC produced an empty CUBIN for {arch}")));
            }
            Ok(cubin)
        })
    };
    // SAFETY: prog is live and destroyed once.
    let _ = unsafe { nvrtc::nvrtcDestroyProgram(&mut prog) };
    result
}

fn log(prog: nvrtc::nvrtcProgram) -> String {
    let mut size = 0usize;
    // SAFETY: prog is live; the buffer has the size NVRTC reports.
    unsafe {
        if nvrtc::nvrtcGetProgramLogSize(prog, &mut size) != nvrtc::nvrtcResult::NVRTC_SUCCESS || size == 0 {
            return "(no log)".into();
        }
        let mut buf = vec![0u8; size];
        if nvrtc::nvrtcGetProgramLog(prog, buf.as_mut_ptr() as *mut c_char) != nvrtc::nvrtcResult::NVRTC_SUCCESS {
            return "(no log)".into();
        }
        String::from_utf8_lossy(&buf).trim_end_matches('\0').to_string()
    }
}

/// NVRTC's version, e.g. (13, 2).
pub fn nvrtc_version() -> Option<(i32, i32)> {
    if !nvrtc_present() {
        return None;
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: writes two ints.
    let rc = no_panic("nvrtcVersion", || unsafe { nvrtc::nvrtcVersion(&mut major, &mut minor) }).ok()?;
    (rc == nvrtc::nvrtcResult::NVRTC_SUCCESS).then_some((major, minor))
}

/// A device's primary context and the kernels loaded into it.
pub struct DeviceKernels {
    pub ctx: Arc<CudaContext>,
    pub ordinal: i32,
    pub arch: String,
    pub multiprocessors: u32,
    /// Dynamic shared memory mlorc_orthonormalize may take (its columns in f64); 0: none.
    pub orth_shared_bytes: u32,
    functions: HashMap<&'static str, sys::CUfunction>,
}

// SAFETY: CUfunction handles are plain driver handles, usable from any thread with the context
// current; the module is never unloaded.
unsafe impl Send for DeviceKernels {}
unsafe impl Sync for DeviceKernels {}

impl DeviceKernels {
    pub fn function(&self, name: &str) -> Result<sys::CUfunction> {
        self.functions.get(name).copied().ok_or_else(|| Error::Internal(format!("kernel {name} not loaded")))
    }
}

static DEVICES: Mutex<Vec<(i32, Arc<DeviceKernels>)>> = Mutex::new(Vec::new());

/// The kernels of device `ordinal`, compiled and loaded on first use (not inside a step).
pub fn device_kernels(ordinal: i32) -> Result<Arc<DeviceKernels>> {
    ensure_available()?;
    let mut devices = DEVICES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, d)) = devices.iter().find(|(o, _)| *o == ordinal) {
        return Ok(d.clone());
    }
    let ctx = primary_context(ordinal)?;
    let _guard = ContextGuard::enter(&ctx)?;
    let (major, minor) = ctx.compute_capability().map_err(|e| device_error("reading the compute capability", e))?;
    let multiprocessors = ctx
        .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .map_err(|e| device_error("reading the multiprocessor count", e))? as u32;
    let arch = format!("sm_{major}{minor}");
    let cubin = compile_cubin(&arch)?;
    // SAFETY: cubin is a complete CUBIN image for this device's architecture.
    let module = unsafe { result::module::load_data(cubin.as_ptr() as *const std::ffi::c_void) }
        .map_err(|e| device_error(&format!("loading the {arch} CUBIN"), e))?;
    let mut functions = HashMap::new();
    for &name in KERNEL_NAMES {
        let cname = CString::new(name).expect("kernel names have no NUL");
        // SAFETY: module is loaded and never unloaded.
        let f = unsafe { result::module::get_function(module, cname) }.map_err(|e| device_error(&format!("finding kernel {name}"), e))?;
        functions.insert(name, f);
    }
    // Up to ORTH_SHARED_MAX bytes of the device's opt-in shared memory, less the static part.
    let optin = ctx
        .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
        .map_err(|e| device_error("reading the shared memory per block", e))?;
    let mut orth_shared_bytes = (optin.max(0) as u32).saturating_sub(1024).min(ORTH_SHARED_MAX);
    if orth_shared_bytes > 0 {
        let orth = functions["mlorc_orthonormalize"];
        // SAFETY: orth is a loaded kernel of this context; the value is within the device's limit.
        let set = unsafe {
            result::function::set_function_attribute(
                orth,
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                orth_shared_bytes as i32,
            )
        };
        if set.is_err() {
            orth_shared_bytes = 0;  // the columns stay in global memory: slower, same results
        }
    }
    let d = Arc::new(DeviceKernels { ctx: ctx.clone(), ordinal, arch, multiprocessors, orth_shared_bytes, functions });
    devices.push((ordinal, d.clone()));
    Ok(d)
}
