//! The pool's threads as one team for the length of a step: one thread runs the step, the others
//! spin between its passes instead of sleeping, and join each pass at once. An idle rayon
//! worker sleeps within tens of µs and takes 30–45 µs to wake on a VM (BENCHMARKS.md §1), and a
//! step runs six passes with serial work between them: at 1024² that is ~10% of a step.
//!
//! A pass is indices 0..count of a task, claimed in runs of consecutive indices by whoever is
//! free, so which thread runs an index never changes a result (the passes' pieces depend on the
//! shape only). Runs start long and shrink (remaining / 2·threads, as OpenMP's guided
//! schedule): each thread streams through long contiguous parts of the matrix, which the
//! hardware prefetchers follow (one index at a time interleaves the threads' rows: 8% slower at
//! 4096²), and the last claims are single indices, which keeps the threads' ends together.
//!
//! Steps called from several threads at once each get a team of the threads that are free; a
//! thread busy with another caller's step joins later or not at all (the leader runs whatever
//! nobody claims), and a call returns once every pool thread has looked in on its team, so it
//! can wait for the end of a step another caller started on a busy thread.

use std::any::Any;
use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Spins before a waiting thread starts yielding its core (a pass's pieces take µs to ms).
const SPINS_BEFORE_YIELD: u32 = 1 << 10;

/// One wait of a thread that has waited `idle` times before: a spin, later a yield of its core.
fn pause(idle: &mut u32) {
    *idle = idle.saturating_add(1);
    if *idle < SPINS_BEFORE_YIELD {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One pass: indices 0..count of `task`.
struct Job {
    /// The leader's task, its lifetime erased: only called for a claimed index below `count`,
    /// and the leader waits for every such call before the task goes away.
    task: *const (dyn Fn(usize) + Sync),
    count: usize,
    /// Threads of the team: the runs claimed are remaining / (2·threads) long.
    threads: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

// SAFETY: `task` is Sync; see its field for why it is alive whenever it is called.
unsafe impl Send for Job {}
unsafe impl Sync for Job {}

impl Job {
    /// Claims runs of unclaimed indices and runs them until none are left.
    fn work(&self) {
        let mut start = self.next.load(Ordering::Relaxed);
        while start < self.count {
            let len = ((self.count - start) / (2 * self.threads)).max(1);
            if let Err(now) = self.next.compare_exchange_weak(start, start + len, Ordering::Relaxed, Ordering::Relaxed) {
                start = now;
                continue;
            }
            // SAFETY: these indices are below count, so the leader is still waiting for them
            // (Job::task).
            let task = unsafe { &*self.task };
            for i in start..start + len {
                if let Err(payload) = catch_unwind(AssertUnwindSafe(|| task(i))) {
                    lock(&self.panic).get_or_insert(payload);
                }
            }
            self.done.fetch_add(len, Ordering::Release);
            start = self.next.load(Ordering::Relaxed);
        }
    }
}

struct Team {
    threads: usize,
    /// Bumped for every new job and once more when the step ends.
    generation: AtomicUsize,
    job: Mutex<Option<Arc<Job>>>,
    finished: AtomicBool,
}

impl Team {
    /// A member's loop: join every job published until the step ends.
    fn follow(&self) {
        let mut seen = 0;
        let mut idle = 0u32;
        loop {
            let generation = self.generation.load(Ordering::Acquire);
            if generation == seen {
                pause(&mut idle);
                continue;
            }
            seen = generation;
            idle = 0;
            if self.finished.load(Ordering::Acquire) {
                return;
            }
            let job = lock(&self.job).clone();
            if let Some(job) = job {
                job.work();
            }
        }
    }
}

thread_local! {
    /// The team this thread leads, while it runs a step's serial parts.
    static LEADING: Cell<*const Team> = const { Cell::new(std::ptr::null()) };
}

/// Ends the team when the leader's step returns or unwinds.
struct EndOnDrop<'a>(&'a Team);

impl Drop for EndOnDrop<'_> {
    fn drop(&mut self) {
        LEADING.with(|l| l.set(std::ptr::null()));
        self.0.finished.store(true, Ordering::Release);
        self.0.generation.fetch_add(1, Ordering::Release);
    }
}

/// Runs `f` on one thread of `pool` with the pool's other threads as its team until it returns.
/// Must be called from outside the pool.
pub fn lead<R: Send>(pool: &rayon::ThreadPool, f: impl FnOnce() -> R + Send) -> R {
    let team = Team {
        threads: pool.current_num_threads().max(1),
        generation: AtomicUsize::new(0),
        job: Mutex::new(None),
        finished: AtomicBool::new(false),
    };
    let step = Mutex::new(Some(f));
    let out = Mutex::new(None);
    pool.broadcast(|_| {
        // The first thread to arrive leads; a thread that arrives after the step ended (it was
        // busy with another caller's work) finds `finished` and leaves.
        let Some(f) = lock(&step).take() else {
            team.follow();
            return;
        };
        let _end = EndOnDrop(&team);
        LEADING.with(|l| l.set(&team));
        *lock(&out) = Some(catch_unwind(AssertUnwindSafe(f)));
    });
    match out.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner()) {
        Some(Ok(r)) => r,
        Some(Err(payload)) => resume_unwind(payload),
        None => unreachable!("one thread of the broadcast runs the step"),
    }
}

/// Whether this thread leads a team (`run` then spreads a pass over it).
pub fn leading() -> bool {
    LEADING.with(|l| !l.get().is_null())
}

/// `task(i)` for every i in 0..count, spread over the team this thread leads (see `leading`).
/// Returns when all have run; a panic in any of them is resumed here.
pub fn run(count: usize, task: &(dyn Fn(usize) + Sync)) {
    let team = LEADING.with(|l| l.get());
    assert!(!team.is_null(), "team::run is for the thread that leads a team");
    // SAFETY: set by `lead` on this thread, whose Team outlives the step it runs.
    let team = unsafe { &*team };
    // SAFETY: only the lifetime is erased; this function returns only after every index that
    // anyone claimed has finished (done == count), and no index is called after that.
    let task: &'static (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(task) };
    let job = Arc::new(Job { task, count, threads: team.threads, next: AtomicUsize::new(0), done: AtomicUsize::new(0), panic: Mutex::new(None) });
    *lock(&team.job) = Some(job.clone());
    team.generation.fetch_add(1, Ordering::Release);
    // A pass inside a task runs where it is (no team within a team).
    LEADING.with(|l| l.set(std::ptr::null()));
    job.work();
    LEADING.with(|l| l.set(team));
    let mut idle = 0u32;
    while job.done.load(Ordering::Acquire) < count {
        pause(&mut idle);
    }
    *lock(&team.job) = None;
    let payload = lock(&job.panic).take();
    if let Some(payload) = payload {
        resume_unwind(payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap()
    }

    #[test]
    fn every_index_runs_once_on_the_team() {
        let pool = pool(3);
        for count in [0, 1, 2, 7, 1000] {
            let hits: Vec<AtomicUsize> = (0..count).map(|_| AtomicUsize::new(0)).collect();
            lead(&pool, || {
                for _ in 0..20 {
                    run(count, &|i| {
                        hits[i].fetch_add(1, Ordering::Relaxed);
                        // A pass inside a task runs where it is.
                        assert!(!leading());
                    });
                }
                assert!(leading());
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 20), "count {count}");
            assert!(!leading());
        }
    }

    #[test]
    fn a_panic_in_a_task_reaches_the_caller_and_the_pool_lives_on() {
        let pool = pool(2);
        let caught = catch_unwind(AssertUnwindSafe(|| {
            lead(&pool, || run(100, &|i| assert!(i != 57, "task 57 fails")));
        }));
        let message = caught.expect_err("the panic is resumed in the caller");
        let text = message.downcast_ref::<String>().map(String::as_str).or_else(|| message.downcast_ref::<&str>().copied());
        assert!(text.is_some_and(|m| m.contains("task 57 fails")), "{text:?}");
        assert_eq!(lead(&pool, || 41 + 1), 42);
    }

    #[test]
    fn steps_from_several_threads_share_the_pool() {
        let pool = pool(2);
        std::thread::scope(|scope| {
            for t in 0..4 {
                let pool = &pool;
                scope.spawn(move || {
                    for _ in 0..50 {
                        let sum = AtomicUsize::new(0);
                        lead(pool, || run(64, &|i| {
                            sum.fetch_add(i + t, Ordering::Relaxed);
                        }));
                        assert_eq!(sum.load(Ordering::Relaxed), 64 * 63 / 2 + 64 * t);
                    }
                });
            }
        });
    }
}
