//! Many states stepped in one call: a model's parameters, or a group of them. Small tensors
//! (most of a model's) are spread whole over the library's threads, each stepped on one
//! thread; a tensor large enough to keep every thread busy on its own is stepped with all of
//! them, as `State::step_raw` does. The results are the same bits either way: a state's step
//! never depends on the threads that run it.

use crate::error::Result;
use crate::state::{State, StepRequest};

/// One state of a batch and its step's inputs.
pub struct BatchItem<'a> {
    pub state: &'a mut State,
    pub request: StepRequest,
}

/// Steps every item. Every check runs first: a bad pointer, learning rate or gradient scale in
/// any item returns its error (naming the item) before any state or weight has changed. After
/// that only running out of memory, a device error or a failed all-reduce can fail; then the
/// items whose steps completed have stepped (their step counts say which).
///
/// CUDA states and sharded states with an all-reduce step one after another in the given order
/// (on the caller's stream; the all-reduces in the same order on every rank).
///
/// # Safety
/// Each request as for `State::step_raw`; no item's param may overlap another item's param or
/// grad.
pub unsafe fn step_many(items: &mut [BatchItem]) -> Result<()> {
    let place = |i: usize| format!("tensor {i} of the batch");
    if items.iter().any(|it| it.state.steps_in_order()) {
        for (i, it) in items.iter().enumerate() {
            it.state.check_request(&it.request).map_err(|e| e.context(&place(i)))?;
        }
        for (i, it) in items.iter_mut().enumerate() {
            it.state.step_raw(&it.request).map_err(|e| e.context(&place(i)))?;
        }
        return Ok(());
    }
    let mut jobs = Vec::with_capacity(items.len());
    for (i, it) in items.iter_mut().enumerate() {
        if let Some(step) = it.state.prepare_cpu(&it.request).map_err(|e| e.context(&place(i)))? {
            jobs.push((i, &mut *it.state, step));
        }
    }
    // Largest first: a thread that takes a small tensor last finishes soon after the others.
    jobs.sort_by_key(|(i, state, _)| (std::cmp::Reverse(state.step_work()), *i));
    let total: usize = jobs.iter().map(|(_, state, _)| state.step_work()).sum();
    let threads = crate::cpu::threads();
    let (large, small): (Vec<_>, Vec<_>) = jobs.into_iter().partition(|(_, state, _)| state.step_work().saturating_mul(threads) >= total);
    let mut outcomes: Vec<(usize, Result<()>)> = large.into_iter().map(|(i, state, step)| (i, state.run_cpu(step))).collect();
    outcomes.extend(crate::cpu::spread(small, total, |(i, state, step)| (i, state.run_cpu(step))));
    outcomes.sort_by_key(|(i, _)| *i);
    match outcomes.into_iter().find(|(_, r)| r.is_err()) {
        Some((i, Err(e))) => Err(e.context(&place(i))),
        _ => Ok(()),
    }
}
