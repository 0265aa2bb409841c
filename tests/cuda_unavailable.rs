//! On a machine without the CUDA driver, a CUDA state is refused with
//! MLORC_ERROR_DEVICE_UNAVAILABLE and a message naming what was looked for: never a panic.

use std::ffi::CStr;

use mlorc::capi::library::*;
use mlorc::capi::state::*;
use mlorc::capi::types::*;
use mlorc::{Algorithm, Config, Device, Dtype, Error, State, TensorDesc};

fn driver_present() -> bool {
    mlorc::cuda::probe::driver_present()
}

#[test]
fn cuda_state_without_driver_is_device_unavailable() {
    if driver_present() {
        eprintln!("SKIP: libcuda is present on this machine; the GPU tests cover it");
        return;
    }
    let desc = TensorDesc { rows: 64, cols: 48, param_dtype: Dtype::F32, grad_dtype: Dtype::F32, device: Device::Cuda(0) };
    for algorithm in [Algorithm::AdamW, Algorithm::Lion] {
        match State::new(&Config::defaults(algorithm), &desc) {
            Err(Error::DeviceUnavailable(msg)) => assert!(msg.contains("libcuda"), "{msg}"),
            Err(other) => panic!("expected DeviceUnavailable, got {other:?}"),
            Ok(_) => panic!("a CUDA state was created without a driver"),
        }
    }

    // Through the C API, twice (nothing cached wrongly after a failure).
    for _ in 0..2 {
        let mut config = std::mem::MaybeUninit::<MlorcConfig>::uninit();
        assert_eq!(mlorc_config_init(config.as_mut_ptr(), MLORC_ADAMW), MLORC_OK);
        let config = unsafe { config.assume_init() };
        let mut d = std::mem::MaybeUninit::<MlorcTensorDesc>::uninit();
        assert_eq!(mlorc_tensor_desc_init(d.as_mut_ptr(), 256, 128, MLORC_F32), MLORC_OK);
        let mut d = unsafe { d.assume_init() };
        d.device = MLORC_DEVICE_CUDA;
        d.device_ordinal = 0;
        let mut out: *mut mlorc::capi::MlorcState = std::ptr::null_mut();
        let status = mlorc_state_create(&config, &d, &mut out);
        assert_eq!(status, MLORC_ERROR_DEVICE_UNAVAILABLE);
        assert!(out.is_null());
        let msg = unsafe { CStr::from_ptr(mlorc_last_error_message()) }.to_string_lossy().into_owned();
        assert!(msg.contains("libcuda.so"), "{msg}");
        let mut ptrs = [std::ptr::null_mut::<f32>(); 6];
        let status = mlorc_state_create_with_buffers(&config, &d, ptrs.as_mut_ptr() as *const *mut f32, 6, &mut out);
        assert_eq!(status, MLORC_ERROR_DEVICE_UNAVAILABLE);
    }
}
