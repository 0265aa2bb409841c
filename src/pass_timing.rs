//! Wall time of each pass of a FACTORED step, for benchmarks that ask where a step's time goes
//! (`cargo bench --bench cpu_step --features pass-timing`). Without the `pass-timing` feature
//! `time` is the pass itself and nothing is recorded.
//!
//! Records from every state go to one process-wide list: meaningful when one state steps at a
//! time. On the GPU a pass returns once its work is queued, so there the times are enqueue times.

#[cfg(feature = "pass-timing")]
use std::sync::Mutex;
#[cfg(feature = "pass-timing")]
use std::time::{Duration, Instant};

#[cfg(feature = "pass-timing")]
static RECORDED: Mutex<Vec<(&'static str, Duration)>> = Mutex::new(Vec::new());

/// Runs one pass, recording its wall time under `name` when the feature is on.
#[inline(always)]
pub(crate) fn time<T>(name: &'static str, pass: impl FnOnce() -> T) -> T {
    #[cfg(feature = "pass-timing")]
    {
        let start = Instant::now();
        let out = pass();
        let elapsed = start.elapsed();
        RECORDED.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push((name, elapsed));
        out
    }
    #[cfg(not(feature = "pass-timing"))]
    {
        let _ = name;
        pass()
    }
}

/// The passes timed since the last call, in the order they ran.
#[cfg(feature = "pass-timing")]
pub fn take() -> Vec<(&'static str, Duration)> {
    std::mem::take(&mut *RECORDED.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
}
