//! A state's life: creation (library or caller buffers), the step, its counters and
//! hyperparameters, copies of single buffers, and checkpoints.

use std::ffi::{c_char, c_void, CStr};

use crate::batch::{step_many, BatchItem};
use crate::checkpoint;
use crate::error::invalid;
use crate::state::{LearningRate, State, StepRequest};

use super::library::{layout_to_c, shard_of};
use super::status::guard;
use super::types::*;
use super::{caller_slice, caller_slice_mut, read_struct, with_state, with_states, write_out, MlorcState};

fn create(
    config: *const MlorcConfig,
    desc: *const MlorcTensorDesc,
    out: *mut *mut MlorcState,
    make: impl FnOnce(&crate::config::Config, &crate::config::TensorDesc) -> crate::error::Result<State>,
) -> crate::error::Result<()> {
    if out.is_null() {
        return invalid!("out is NULL");
    }
    let config = read_struct(config, "config")?.to_config()?;
    let desc = read_struct(desc, "desc")?.to_desc()?;
    let state = make(&config, &desc)?;
    let handle = Box::into_raw(Box::new(MlorcState::new(state)));
    write_out(out, handle, "out")
}

/// Creates the optimizer state of one parameter tensor, its buffers allocated by the library
/// and zeroed. On success `*out` owns the state: release it with mlorc_state_destroy. `config`
/// and `desc` are read during the call only.
#[no_mangle]
pub extern "C" fn mlorc_state_create(
    config: *const MlorcConfig,
    desc: *const MlorcTensorDesc,
    out: *mut *mut MlorcState,
) -> MlorcStatus {
    guard("mlorc_state_create", || create(config, desc, out, State::new))
}

/// Creates a state that keeps its buffers in caller memory: `buffers[i]` points to buffer i of
/// mlorc_buffer_info (f32, rows·cols elements, 4-byte aligned, same memory space as the
/// parameter), `count` is mlorc_buffer_count. Their current contents are the state (zeros for a
/// fresh one). The library reads and writes them in place during calls and never frees them;
/// they must stay valid, and not be touched by the caller during a call, until the state is
/// destroyed. The step count starts at 0 (set it with mlorc_state_set_step_count when resuming).
#[no_mangle]
pub extern "C" fn mlorc_state_create_with_buffers(
    config: *const MlorcConfig,
    desc: *const MlorcTensorDesc,
    buffers: *const *mut f32,
    count: usize,
    out: *mut *mut MlorcState,
) -> MlorcStatus {
    guard("mlorc_state_create_with_buffers", || {
        let pointers = caller_slice(buffers, count, "buffers")?;
        // SAFETY: the caller lends the buffers under the contract documented above.
        create(config, desc, out, |c, d| unsafe { State::with_buffers(c, d, pointers) })
    })
}

/// Creates the state of one rank's shard `shard` of a rows × cols parameter (`desc` describes
/// the whole matrix): elements [shard->begin, shard->end) of its row-major order. FACTORED
/// states keep the whole matrix's factors, identical on every rank, and sum their small
/// sketches and projections across the group through shard->all_reduce during each step
/// (required for FACTORED); DENSE states keep the moments of their own elements and never
/// communicate. `buffers` NULL with `count` 0: the library allocates zeroed buffers; otherwise
/// caller buffers as in mlorc_state_create_with_buffers, shaped by mlorc_shard_buffer_info
/// (a buffer of 0 floats, as the DENSE moments of an empty shard, may be NULL).
/// `shard` is copied; its context must stay valid while the state lives. CPU states only in
/// this version (a CUDA desc gives MLORC_ERROR_UNSUPPORTED).
///
/// Every rank of the group must create its state with the same config and desc and step it
/// in the same order with the same lr, grad_scale and found_inf values (found_inf must agree
/// across the group, as torch's sharded grad scaler makes it), or the group deadlocks.
#[no_mangle]
pub extern "C" fn mlorc_state_create_sharded(
    config: *const MlorcConfig,
    desc: *const MlorcTensorDesc,
    shard: *const MlorcShard,
    buffers: *const *mut f32,
    count: usize,
    out: *mut *mut MlorcState,
) -> MlorcStatus {
    guard("mlorc_state_create_sharded", || {
        let (range, collective) = shard_of(shard)?;
        if buffers.is_null() && count == 0 {
            return create(config, desc, out, |c, d| State::new_sharded(c, d, range, collective));
        }
        let pointers = caller_slice(buffers, count, "buffers")?;
        // SAFETY: the caller lends the buffers under the contract documented above.
        create(config, desc, out, |c, d| unsafe { State::with_buffers_sharded(c, d, range, collective, pointers) })
    })
}

/// The elements [*begin, *end) of the matrix the state holds (0 and rows·cols unsharded).
#[no_mangle]
pub extern "C" fn mlorc_state_shard_range(state: *const MlorcState, begin: *mut u64, end: *mut u64) -> MlorcStatus {
    guard("mlorc_state_shard_range", || {
        if begin.is_null() || end.is_null() {
            return invalid!("begin and end must not be NULL");
        }
        let shard = with_state(state, |s| Ok(s.shard()))?;
        write_out(begin, shard.begin as u64, "begin")?;
        write_out(end, shard.end as u64, "end")
    })
}

/// Destroys a state and frees what the library allocated for it (never caller buffers).
/// NULL is a no-op. The handle must not be used afterwards, nor be in use by another thread.
#[no_mangle]
pub extern "C" fn mlorc_state_destroy(state: *mut MlorcState) {
    if state.is_null() {
        return;
    }
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: a non-NULL handle was returned by mlorc_state_create* and is destroyed once.
        drop(unsafe { Box::from_raw(state) });
    }));
}

/// The step inputs of one tensor under `options`.
fn request_of(options: &MlorcStepOptions, param: *mut c_void, grad: *const c_void) -> StepRequest {
    StepRequest {
        param: param as *mut u8,
        grad: grad as *const u8,
        lr: if options.lr_ptr.is_null() { LearningRate::Value(options.lr) } else { LearningRate::Pointer(options.lr_ptr) },
        grad_scale: options.grad_scale,
        found_inf: options.found_inf,
        stream: options.stream,
    }
}

/// One optimizer step: updates `param` in place from `grad` and the state, then compresses the
/// new moments into the state. `param` (rows·cols of desc.param_dtype) and `grad` (of
/// desc.grad_dtype) are caller-owned, row-major, contiguous, aligned to their element size, in
/// the state's memory space, and must not overlap each other or the state's buffers; they are
/// used during the call only.
/// A sharded state takes its shard's end − begin elements (NULL if the shard is empty).
/// Options: lr (or *lr_ptr), optional *grad_scale (the gradient is divided by it), optional
/// *found_inf (non-zero: nothing changes, not even the step count). On the CPU the step is
/// complete on return. On error nothing has changed, except after MLORC_ERROR_COLLECTIVE
/// (a failed all-reduce of a sharded state, see MlorcAllReduceFn).
#[no_mangle]
pub extern "C" fn mlorc_step(
    state: *mut MlorcState,
    param: *mut c_void,
    grad: *const c_void,
    options: *const MlorcStepOptions,
) -> MlorcStatus {
    guard("mlorc_step", || {
        let options = read_struct(options, "options")?;
        let request = request_of(&options, param, grad);
        with_state(state, |s| {
            // An empty shard has no elements to point to.
            if !s.shard().is_empty() {
                if param.is_null() {
                    return invalid!("param is NULL");
                }
                if grad.is_null() {
                    return invalid!("grad is NULL");
                }
            }
            // SAFETY: the caller's contract above covers param, grad and the option pointers.
            unsafe { s.step_raw(&request) }
        })
    })
}

/// Steps `count` states at once, each as mlorc_step would with the same `options`:
/// `states[i]` with `params[i]` and `grads[i]`. On the CPU the library spreads small tensors
/// over its threads, one tensor per thread at a time (a model's many small matrices and
/// vectors step faster than in a loop of mlorc_step calls); the results are bitwise those of
/// mlorc_step. Each state may appear once; params must not overlap each other or any grad.
/// Every check runs first: an invalid state, pointer or option anywhere returns an error that
/// names the tensor, and nothing has changed. Past the checks only MLORC_ERROR_OUT_OF_MEMORY,
/// a device error or MLORC_ERROR_COLLECTIVE can occur; then the states whose steps completed
/// have stepped (read their step counts). CUDA states and sharded states with an all-reduce
/// step in array order on the calling thread. The arrays are read during the call only;
/// count 0 does nothing (the arrays may then be NULL).
#[no_mangle]
pub extern "C" fn mlorc_step_many(
    states: *const *mut MlorcState,
    params: *const *mut c_void,
    grads: *const *const c_void,
    count: usize,
    options: *const MlorcStepOptions,
) -> MlorcStatus {
    guard("mlorc_step_many", || {
        let options = read_struct(options, "options")?;
        let handles = caller_slice(states, count, "states")?;
        let params = caller_slice(params, count, "params")?;
        let grads = caller_slice(grads, count, "grads")?;
        with_states(handles, |states| {
            let mut items: Vec<BatchItem> = states
                .into_iter()
                .zip(params.iter().zip(grads))
                .map(|(state, (&param, &grad))| BatchItem { state, request: request_of(&options, param, grad) })
                .collect();
            // SAFETY: the caller's contract above covers the arrays' pointers and the options.
            unsafe { step_many(&mut items) }
        })
    })
}

/// The number of steps taken (found_inf steps excluded).
#[no_mangle]
pub extern "C" fn mlorc_state_step_count(state: *const MlorcState, count: *mut u64) -> MlorcStatus {
    guard("mlorc_state_step_count", || {
        let value = with_state(state, |s| s.try_step_count())?;
        write_out(count, value, "count")
    })
}

/// Sets the step count (bias correction and the random sketches follow it).
#[no_mangle]
pub extern "C" fn mlorc_state_set_step_count(state: *mut MlorcState, count: u64) -> MlorcStatus {
    guard("mlorc_state_set_step_count", || with_state(state, |s| s.try_set_step_count(count)))
}

/// Bytes of optimizer state this state holds, whether allocated by the library or lent by the
/// caller (the formula of mlorc_state_bytes_required).
#[no_mangle]
pub extern "C" fn mlorc_state_memory_bytes(state: *const MlorcState, bytes: *mut usize) -> MlorcStatus {
    guard("mlorc_state_memory_bytes", || {
        let value = with_state(state, |s| Ok(s.memory_bytes()))?;
        write_out(bytes, value, "bytes")
    })
}

/// The layout the state resolved to (MLORC_LAYOUT_FACTORED or MLORC_LAYOUT_DENSE).
#[no_mangle]
pub extern "C" fn mlorc_state_layout(state: *const MlorcState, layout: *mut MlorcLayout) -> MlorcStatus {
    guard("mlorc_state_layout", || {
        let value = with_state(state, |s| Ok(layout_to_c(s.plan().layout)))?;
        write_out(layout, value, "layout")
    })
}

/// Copies the state's configuration into `config` (struct_size is set).
#[no_mangle]
pub extern "C" fn mlorc_state_get_config(state: *const MlorcState, config: *mut MlorcConfig) -> MlorcStatus {
    guard("mlorc_state_get_config", || {
        let value = with_state(state, |s| Ok(MlorcConfig::from_config(s.config())))?;
        write_out(config, value, "config")
    })
}

/// Changes hyperparameters (betas, eps, weight_decay, bias_correction, stochastic_rounding,
/// power_iters, seed) from the next step on. algorithm, layout, rank and oversampling must
/// equal the state's; otherwise MLORC_ERROR_INVALID_ARGUMENT and nothing changes.
#[no_mangle]
pub extern "C" fn mlorc_state_set_config(state: *mut MlorcState, config: *const MlorcConfig) -> MlorcStatus {
    guard("mlorc_state_set_config", || {
        let config = read_struct(config, "config")?.to_config()?;
        with_state(state, |s| s.set_config(&config))
    })
}

fn buffer_name<'a>(name: *const c_char) -> crate::error::Result<&'a str> {
    if name.is_null() {
        return invalid!("name is NULL");
    }
    // SAFETY: a non-NULL name must be a NUL-terminated string (caller contract).
    let name = unsafe { CStr::from_ptr(name) };
    name.to_str().or_else(|_| invalid!("name is not UTF-8"))
}

/// Copies the state buffer called `name` (see mlorc_buffer_info) into `dst`, which holds
/// `count` floats in the state's memory space; count must equal the buffer's rows·cols.
#[no_mangle]
pub extern "C" fn mlorc_state_read_buffer(
    state: *const MlorcState,
    name: *const c_char,
    dst: *mut f32,
    count: usize,
) -> MlorcStatus {
    guard("mlorc_state_read_buffer", || {
        let name = buffer_name(name)?;
        with_state(state, |s| {
            if s.is_cuda() {
                if dst.is_null() {
                    return invalid!("dst is NULL");
                }
                return s.copy_buffer_device(name, dst as u64, count, true);
            }
            let src = s.buffer(name)?;
            if count != src.len() {
                return invalid!("count is {count}: buffer {name} holds {} floats", src.len());
            }
            caller_slice_mut(dst, count, "dst")?.copy_from_slice(src);
            Ok(())
        })
    })
}

/// Copies `count` floats from `src` into the state buffer called `name`; count must equal the
/// buffer's rows·cols. Nothing is derived from buffers between steps, so the next step uses
/// the new contents as they are.
#[no_mangle]
pub extern "C" fn mlorc_state_write_buffer(
    state: *mut MlorcState,
    name: *const c_char,
    src: *const f32,
    count: usize,
) -> MlorcStatus {
    guard("mlorc_state_write_buffer", || {
        let name = buffer_name(name)?;
        with_state(state, |s| {
            if s.is_cuda() {
                if src.is_null() {
                    return invalid!("src is NULL");
                }
                return s.copy_buffer_device(name, src as u64, count, false);
            }
            s.write_buffer(name, caller_slice(src, count, "src")?)
        })
    })
}

/// Bytes mlorc_state_save will write for this state.
#[no_mangle]
pub extern "C" fn mlorc_state_save_size(state: *const MlorcState, size: *mut usize) -> MlorcStatus {
    guard("mlorc_state_save_size", || {
        let value = with_state(state, |s| Ok(checkpoint::saved_size(s)))?;
        write_out(size, value, "size")
    })
}

/// Writes the whole state (configuration, step count, buffers) into caller memory `dst` of
/// `capacity` bytes in the versioned, checksummed, machine-independent checkpoint format;
/// `*written` receives the size. dst is host memory, whatever the state's device; a CUDA state
/// synchronises its device first (a checkpoint is not a per-step call).
#[no_mangle]
pub extern "C" fn mlorc_state_save(
    state: *const MlorcState,
    dst: *mut c_void,
    capacity: usize,
    written: *mut usize,
) -> MlorcStatus {
    guard("mlorc_state_save", || {
        if written.is_null() {
            return invalid!("written is NULL");
        }
        let out = caller_slice_mut(dst as *mut u8, capacity, "dst")?;
        let size = with_state(state, |s| checkpoint::save(s, out))?;
        write_out(written, size, "written")
    })
}

/// Replaces the state's configuration, step count and buffers with a checkpoint of `size`
/// bytes at `src` (host memory). Bytes that do not validate give MLORC_ERROR_CORRUPT_CHECKPOINT;
/// a valid checkpoint of another shape, algorithm, layout, rank or oversampling gives
/// MLORC_ERROR_INVALID_ARGUMENT. Either way the state is unchanged. The format is the same for
/// both backends: a checkpoint saved from a CPU state loads into a CUDA state and back (CUDA
/// synchronises its device). A sharded FACTORED state accepts a checkpoint of any range of the
/// same matrix; DENSE needs the same range.
#[no_mangle]
pub extern "C" fn mlorc_state_load(state: *mut MlorcState, src: *const c_void, size: usize) -> MlorcStatus {
    guard("mlorc_state_load", || {
        let bytes = caller_slice(src as *const u8, size, "src")?;
        with_state(state, |s| checkpoint::load(s, bytes))
    })
}

