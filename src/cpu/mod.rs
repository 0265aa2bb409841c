//! The CPU backend: host memory, rayon threads, deterministic. Work is split into pieces whose
//! boundaries do not depend on the thread count (rows, fixed-width column tiles, fixed element
//! blocks), and every reduction runs in a fixed order, so results are bitwise the same on 1 or
//! 64 threads.

mod dense;
mod factored;
mod segment;
pub(crate) mod lanes;
pub(crate) mod tile;

pub use dense::dense_step;
pub use factored::CpuFactored;

use once_cell::sync::Lazy;

/// The library's own pool, sized by MLORC_NUM_THREADS (default: all cores). A caller that is
/// already inside a rayon pool keeps its pool.
static POOL: Lazy<Option<rayon::ThreadPool>> = Lazy::new(|| {
    let threads = std::env::var("MLORC_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("mlorc-{i}"))
        .build()
        .ok()
});

/// Runs `f` on the library's pool (or the caller's rayon pool, or inline if no pool exists).
pub fn run<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    match POOL.as_ref() {
        Some(pool) => pool.install(f),
        None => f(),
    }
}

/// A raw pointer that may be shared across the pool's threads; each task touches a disjoint
/// range of it.
#[derive(Clone, Copy)]
pub(crate) struct SharedPtr<T>(pub *mut T);
// SAFETY: tasks write disjoint element ranges; the caller guarantees the memory outlives the call.
unsafe impl<T> Send for SharedPtr<T> {}
unsafe impl<T> Sync for SharedPtr<T> {}

impl<T> SharedPtr<T> {
    pub fn get(self) -> *mut T {
        self.0
    }
}
