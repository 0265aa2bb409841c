//! The CPU backend: host memory, rayon threads, deterministic. Work is split into pieces whose
//! boundaries do not depend on the thread count (rows, fixed-width column tiles, fixed element
//! blocks), and every reduction runs in a fixed order, so results are bitwise the same on 1 or
//! 64 threads.

mod dense;
mod factored;
pub(crate) mod isa;
mod segment;
mod sign_bound;
mod team;
pub(crate) mod lanes;
pub(crate) mod tile;
#[cfg(target_arch = "x86_64")]
mod wide;

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

/// Threads that `run` gives a parallel loop.
pub fn threads() -> usize {
    if rayon::current_thread_index().is_some() {
        return rayon::current_num_threads();
    }
    POOL.as_ref().map_or(1, |pool| pool.current_num_threads())
}

/// Elements of work below which a pass runs on the calling thread: handing a pass to the pool
/// and waiting for it costs about 10 µs of wake-ups, more than the pass saves (a model's
/// biases and norms would pay it hundreds of times a step).
const INLINE_WORK: usize = 1 << 16;

thread_local! {
    /// Set while this thread runs one tensor of a batch (`spread`): its passes stay on this
    /// thread, since the other threads are busy with other tensors.
    static SERIAL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The same inside a step that leads a team (`team`): its threads spin between passes, so a
/// hand-over costs about a µs, and a step's small work (orthonormalization and truncated SVD of
/// each moment, ~10–20 µs at 1024²) gains from running its moments side by side.
const TEAM_INLINE_WORK: usize = 1 << 12;

/// Whether a pass of `pieces` over about `work` elements goes to the pool.
fn on_pool(pieces: usize, work: usize) -> bool {
    let least = if team::leading() { TEAM_INLINE_WORK } else { INLINE_WORK };
    pieces > 1 && work >= least && !SERIAL.with(|s| s.get()) && threads() > 1
}

/// `f` over `items`, whole items spread over the pool's threads, each running its passes on
/// the thread that took it (no pool hand-over inside an item). Results in item order. Worth it
/// when there are more items than threads and each is small: a pass split across threads pays
/// for the hand-over and the wait for the slowest piece, an item on one thread does not.
pub fn spread<T: Send, R: Send>(items: Vec<T>, work: usize, f: impl Fn(T) -> R + Sync + Send) -> Vec<R> {
    use rayon::prelude::*;
    struct Serial(bool);
    impl Drop for Serial {
        fn drop(&mut self) {
            SERIAL.with(|s| s.set(self.0));
        }
    }
    let one = |item: T| {
        let _restore = Serial(SERIAL.with(|s| s.replace(true)));
        f(item)
    };
    if on_pool(items.len(), work) {
        run(|| items.into_par_iter().with_max_len(1).map(one).collect())
    } else {
        items.into_iter().map(one).collect()
    }
}

/// `f()` on the pool when `work` (elements) pays for the hand-over, else on the calling thread.
/// From outside any rayon pool, the library's pool runs `f` as a team (`team`): its passes
/// start on every thread at once.
pub fn run_sized<R: Send>(work: usize, f: impl FnOnce() -> R + Send) -> R {
    if !on_pool(2, work) {
        return f();
    }
    match POOL.as_ref() {
        Some(pool) if rayon::current_thread_index().is_none() => team::lead(pool, f),
        _ => run(f),
    }
}

/// `(0..count).map(f).collect()`, in parallel when `work` (elements) pays for it. The pieces
/// are the same either way, so is the result.
pub fn map_indices<R: Send>(count: usize, work: usize, f: impl Fn(usize) -> R + Sync + Send) -> Vec<R> {
    use rayon::prelude::*;
    if !on_pool(count, work) {
        return (0..count).map(f).collect();
    }
    if team::leading() {
        let slots: Vec<std::sync::Mutex<Option<R>>> = (0..count).map(|_| std::sync::Mutex::new(None)).collect();
        team::run(count, &|i| {
            let r = f(i);
            *slots[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
        });
        return slots.into_iter().map(|s| s.into_inner().unwrap_or_else(|p| p.into_inner()).expect("team::run runs every index")).collect();
    }
    run(|| (0..count).into_par_iter().map(f).collect())
}

/// `items.iter_mut().for_each(f)`, in parallel when `work` (elements) pays for it.
pub fn for_each_mut<T: Send>(items: &mut [T], work: usize, f: impl Fn(&mut T) + Sync + Send) {
    use rayon::prelude::*;
    if !on_pool(items.len(), work) {
        return items.iter_mut().for_each(f);
    }
    if team::leading() {
        let base = SharedPtr(items.as_mut_ptr());
        // SAFETY: each index is run once, so every item is borrowed by one task only, and
        // `items` outlives team::run.
        team::run(items.len(), &|i| f(unsafe { &mut *base.element(i) }));
        return;
    }
    run(|| items.par_iter_mut().for_each(f))
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

    /// The address of element `i` (no check: the caller knows the bounds).
    pub fn element(&self, i: usize) -> *mut T {
        self.0.wrapping_add(i)
    }
}
