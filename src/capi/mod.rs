//! The C ABI. Every exported function runs inside `status::guard` (no panic crosses the
//! boundary), reads caller structs only after checking their `struct_size`, turns NULL into
//! MLORC_ERROR_INVALID_ARGUMENT, and writes out-parameters only on success. Only this module
//! casts caller pointers.

// Exported functions take the caller's raw pointers by the C convention and check them before
// any use; marking them `unsafe` would change nothing for C callers.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

pub mod library;
pub mod state;
pub mod status;
pub mod types;

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{invalid, Error, Result};
use crate::state::State;

/// Opaque handle to one tensor's optimizer state.
pub struct MlorcState {
    busy: AtomicBool,
    inner: UnsafeCell<State>,
}

impl MlorcState {
    pub(crate) fn new(state: State) -> MlorcState {
        MlorcState { busy: AtomicBool::new(false), inner: UnsafeCell::new(state) }
    }
}

/// Exclusive use of a state for the length of one call; a second concurrent call on the same
/// state is refused instead of racing.
struct Claim<'a>(&'a MlorcState);

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.0.busy.store(false, Ordering::Release);
    }
}

/// Runs `f` with exclusive access to the state behind `handle`.
pub(crate) fn with_state<R>(handle: *const MlorcState, f: impl FnOnce(&mut State) -> Result<R>) -> Result<R> {
    if handle.is_null() {
        return invalid!("state is NULL");
    }
    // SAFETY: a non-NULL handle comes from mlorc_state_create and has not been destroyed
    // (caller contract, documented in the header).
    let handle = unsafe { &*handle };
    if handle.busy.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
        return Err(Error::InvalidArgument(
            "state is in use by another call right now: one state must not be used from two threads at once".into(),
        ));
    }
    let _claim = Claim(handle);
    // SAFETY: the busy flag gives this call the only access to the state.
    f(unsafe { &mut *handle.inner.get() })
}

/// Runs `f` with exclusive access to every state behind `handles`; a NULL handle, or one
/// listed twice or in use by another call, is refused before `f` runs.
pub(crate) fn with_states<R>(handles: &[*mut MlorcState], f: impl FnOnce(Vec<&mut State>) -> Result<R>) -> Result<R> {
    let mut claims = Vec::with_capacity(handles.len());
    for (i, &handle) in handles.iter().enumerate() {
        if handle.is_null() {
            return invalid!("states[{i}] is NULL");
        }
        // SAFETY: a non-NULL handle comes from mlorc_state_create and has not been destroyed.
        let handle = unsafe { &*handle };
        if handle.busy.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            let twice = handles[..i].iter().position(|&h| std::ptr::eq(h, handle));
            return Err(Error::InvalidArgument(match twice {
                Some(j) => format!("states[{i}] is states[{j}]: a state may appear once in a batch"),
                None => format!("states[{i}] is in use by another call right now: one state must not be used from two threads at once"),
            }));
        }
        claims.push(Claim(handle));
    }
    // SAFETY: the busy flags give this call the only access to each (distinct) state.
    f(claims.iter().map(|c| unsafe { &mut *c.0.inner.get() }).collect())
}

/// Reads a caller struct whose first field is `struct_size`, checking it before reading the rest.
pub(crate) fn read_struct<T: Copy>(p: *const T, what: &str) -> Result<T> {
    if p.is_null() {
        return invalid!("{what} is NULL");
    }
    // SAFETY: every such struct starts with a size_t the caller must have set; reading it is in
    // bounds of any version of the struct.
    let size = unsafe { std::ptr::read_unaligned(p as *const usize) };
    types::check_struct_size(size, std::mem::size_of::<T>(), what)?;
    // SAFETY: the caller's struct is as large as ours.
    Ok(unsafe { std::ptr::read_unaligned(p) })
}

/// Writes an out-parameter, refusing NULL.
pub(crate) fn write_out<T>(p: *mut T, value: T, what: &str) -> Result<()> {
    if p.is_null() {
        return invalid!("{what} is NULL");
    }
    // SAFETY: a non-NULL out-pointer must point to writable memory of type T (caller contract).
    unsafe { p.write_unaligned(value) };
    Ok(())
}

/// A caller array as a slice, refusing NULL unless it is empty.
pub(crate) fn caller_slice<'a, T>(p: *const T, len: usize, what: &str) -> Result<&'a [T]> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return invalid!("{what} is NULL");
    }
    if len.checked_mul(std::mem::size_of::<T>()).is_none_or(|b| b > isize::MAX as usize) {
        return invalid!("{what}: length {len} is too large");
    }
    if !(p as usize).is_multiple_of(std::mem::align_of::<T>()) {
        return invalid!("{what} is not aligned for its element type");
    }
    // SAFETY: the caller promises `len` readable elements at `p`.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

pub(crate) fn caller_slice_mut<'a, T>(p: *mut T, len: usize, what: &str) -> Result<&'a mut [T]> {
    let s = caller_slice(p as *const T, len, what)?;
    // SAFETY: as above, and the caller promises the memory is writable and not aliased.
    Ok(unsafe { std::slice::from_raw_parts_mut(s.as_ptr() as *mut T, s.len()) })
}
