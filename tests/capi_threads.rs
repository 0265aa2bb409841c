//! One state used from two threads at once: the second call is refused with a clear error
//! instead of racing, and the state stays usable.

use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, Ordering};

use mlorc::capi::library::*;
use mlorc::capi::state::*;
use mlorc::capi::types::*;

struct Handle(*mut mlorc::capi::MlorcState);
// SAFETY: the test hands the handle to a second thread on purpose; the library must refuse
// concurrent use, which is what is being tested.
unsafe impl Send for Handle {}
unsafe impl Sync for Handle {}

#[test]
fn concurrent_use_of_one_state_is_refused_not_raced() {
    let (rows, cols) = (1024usize, 1024usize);
    let mut config = std::mem::MaybeUninit::<MlorcConfig>::uninit();
    assert_eq!(mlorc_config_init(config.as_mut_ptr(), MLORC_ADAMW), MLORC_OK);
    let config = unsafe { config.assume_init() };
    let mut desc = std::mem::MaybeUninit::<MlorcTensorDesc>::uninit();
    assert_eq!(mlorc_tensor_desc_init(desc.as_mut_ptr(), rows, cols, MLORC_F32), MLORC_OK);
    let desc = unsafe { desc.assume_init() };
    let mut state = std::ptr::null_mut();
    assert_eq!(mlorc_state_create(&config, &desc, &mut state), MLORC_OK);
    let handle = Handle(state);
    let mut options = std::mem::MaybeUninit::<MlorcStepOptions>::uninit();
    assert_eq!(mlorc_step_options_init(options.as_mut_ptr(), 1e-3), MLORC_OK);
    let options = unsafe { options.assume_init() };
    let mut param = vec![0.5f32; rows * cols];
    let grad: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5).collect();

    let stepping = AtomicBool::new(true);
    let refused = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let handle = &handle;
            let mut refused = None;
            while stepping.load(Ordering::Acquire) && refused.is_none() {
                let mut count = u64::MAX;
                let status = mlorc_state_step_count(handle.0, &mut count);
                if status != MLORC_OK {
                    let message = unsafe { CStr::from_ptr(mlorc_last_error_message()) }.to_string_lossy().into_owned();
                    refused = Some((status, message, count));
                }
            }
            refused
        });
        // The watcher stops when this scope ends, even if an assertion below fails (a panic
        // here would otherwise wait forever for the watcher).
        struct StopWatcher<'a>(&'a AtomicBool);
        impl Drop for StopWatcher<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _stop = StopWatcher(&stepping);
        // Step until the watcher has seen a refusal (each step takes milliseconds; the watcher
        // polls continuously), at most 200 steps.
        for _ in 0..200 {
            // The refusal works both ways: a step that starts while the watcher's call is in
            // flight is refused too, and is simply tried again.
            let status = loop {
                let status = mlorc_step(handle.0, param.as_mut_ptr().cast(), grad.as_ptr().cast(), &options);
                let message = unsafe { CStr::from_ptr(mlorc_last_error_message()) }.to_string_lossy().into_owned();
                if !(status == MLORC_ERROR_INVALID_ARGUMENT && message.contains("in use")) {
                    break status;
                }
            };
            assert_eq!(status, MLORC_OK);
            if watcher.is_finished() {
                break;
            }
        }
        stepping.store(false, Ordering::Release);
        watcher.join().unwrap()
    });
    let (status, message, count) = refused.expect("a call during a step on another thread was never refused");
    assert_eq!(status, MLORC_ERROR_INVALID_ARGUMENT);
    assert!(message.contains("in use"), "{message}");
    assert_eq!(count, u64::MAX, "the out-parameter must stay untouched on failure");
    // The state is still usable afterwards.
    let mut count = 0u64;
    assert_eq!(mlorc_state_step_count(handle.0, &mut count), MLORC_OK);
    assert!(count >= 1);
    mlorc_state_destroy(handle.0);
}
