//! Library-wide functions: versions, status strings, initialisers of the C structs, and the
//! queries that answer for a (config, tensor) pair before any state exists.

use std::ffi::c_char;

use crate::config::{Config, Layout, Plan};
use crate::error::{invalid, Result};
use crate::shard::{Collective, Shard};

use super::status::{guard, last_error_ptr};
use super::types::*;
use super::{read_struct, write_out};

/// Version of the library, major part (the header and the library are checked to agree).
pub const MLORC_VERSION_MAJOR: u32 = 0;
/// Version of the library, minor part.
pub const MLORC_VERSION_MINOR: u32 = 1;
/// Version of the library, patch part.
pub const MLORC_VERSION_PATCH: u32 = 0;

/// The ABI version of the loaded library; compare it with MLORC_ABI_VERSION from the header.
/// Thread-safe.
#[no_mangle]
pub extern "C" fn mlorc_abi_version() -> u32 {
    MLORC_ABI_VERSION
}

/// The library version as a static NUL-terminated string ("0.1.0"); never freed.
#[no_mangle]
pub extern "C" fn mlorc_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}

/// A static NUL-terminated name for a status code ("MLORC_OK", ...); never freed.
#[no_mangle]
pub extern "C" fn mlorc_status_string(status: MlorcStatus) -> *const c_char {
    let s: &'static str = match status {
        MLORC_OK => "MLORC_OK\0",
        MLORC_ERROR_INVALID_ARGUMENT => "MLORC_ERROR_INVALID_ARGUMENT\0",
        MLORC_ERROR_UNSUPPORTED => "MLORC_ERROR_UNSUPPORTED\0",
        MLORC_ERROR_OUT_OF_MEMORY => "MLORC_ERROR_OUT_OF_MEMORY\0",
        MLORC_ERROR_CORRUPT_CHECKPOINT => "MLORC_ERROR_CORRUPT_CHECKPOINT\0",
        MLORC_ERROR_DEVICE => "MLORC_ERROR_DEVICE\0",
        MLORC_ERROR_DEVICE_UNAVAILABLE => "MLORC_ERROR_DEVICE_UNAVAILABLE\0",
        MLORC_ERROR_INTERNAL => "MLORC_ERROR_INTERNAL\0",
        MLORC_ERROR_COLLECTIVE => "MLORC_ERROR_COLLECTIVE\0",
        _ => "unknown status\0",
    };
    s.as_ptr() as *const c_char
}

/// What the most recent failed call on this thread found wrong, and where, as a NUL-terminated
/// string ("" before any failure). Owned by the library; valid until the next failing call on
/// the same thread. Successful calls leave it unchanged.
#[no_mangle]
pub extern "C" fn mlorc_last_error_message() -> *const c_char {
    last_error_ptr()
}

/// Fills `config` with the defaults of `algorithm` (ALGORITHM.md): rank 4, oversampling 0,
/// power_iters 0, AUTO layout; AdamW betas (0.9, 0.999), eps 1e-8, weight_decay 0.01; Lion
/// betas (0.95, 0.98), weight_decay 0.05; bias correction on, stochastic rounding off.
/// Sets struct_size. `config` is caller-owned and only written on success.
#[no_mangle]
pub extern "C" fn mlorc_config_init(config: *mut MlorcConfig, algorithm: MlorcAlgorithm) -> MlorcStatus {
    guard("mlorc_config_init", || {
        let algorithm = algorithm_from_c(algorithm)?;
        write_out(config, MlorcConfig::from_config(&Config::defaults(algorithm)), "config")
    })
}

/// Fills `desc` for a rows × cols CPU tensor whose parameter and gradient have `dtype`; change
/// the fields afterwards for other cases. Sets struct_size. Written only on success.
#[no_mangle]
pub extern "C" fn mlorc_tensor_desc_init(
    desc: *mut MlorcTensorDesc,
    rows: usize,
    cols: usize,
    dtype: MlorcDtype,
) -> MlorcStatus {
    guard("mlorc_tensor_desc_init", || {
        dtype_from_c(dtype, "dtype")?;
        let value = MlorcTensorDesc {
            struct_size: std::mem::size_of::<MlorcTensorDesc>(),
            rows,
            cols,
            param_dtype: dtype,
            grad_dtype: dtype,
            device: MLORC_DEVICE_CPU,
            device_ordinal: 0,
        };
        write_out(desc, value, "desc")
    })
}

/// Fills `options` with learning rate `lr` and every pointer NULL. Sets struct_size.
#[no_mangle]
pub extern "C" fn mlorc_step_options_init(options: *mut MlorcStepOptions, lr: f64) -> MlorcStatus {
    guard("mlorc_step_options_init", || {
        let value = MlorcStepOptions {
            struct_size: std::mem::size_of::<MlorcStepOptions>(),
            lr,
            lr_ptr: std::ptr::null(),
            grad_scale: std::ptr::null(),
            found_inf: std::ptr::null(),
            stream: std::ptr::null_mut(),
        };
        write_out(options, value, "options")
    })
}

/// Fills `shard` for elements [begin, end) of a matrix, summed across the group by
/// `all_reduce(…, context)`. Sets struct_size. Ranges are checked against the matrix when a
/// state or query uses the shard. Written only on success.
#[no_mangle]
pub extern "C" fn mlorc_shard_init(
    shard: *mut MlorcShard,
    begin: u64,
    end: u64,
    all_reduce: MlorcAllReduceFn,
    context: *mut std::ffi::c_void,
) -> MlorcStatus {
    guard("mlorc_shard_init", || {
        let value = MlorcShard {
            struct_size: std::mem::size_of::<MlorcShard>(),
            begin,
            end,
            all_reduce,
            all_reduce_context: context,
        };
        write_out(shard, value, "shard")
    })
}

pub(crate) fn plan_of(config: *const MlorcConfig, desc: *const MlorcTensorDesc) -> Result<Plan> {
    let config = read_struct(config, "config")?.to_config()?;
    let desc = read_struct(desc, "desc")?.to_desc()?;
    Plan::new(&config, &desc)
}

/// The library's view of a caller's MlorcShard.
pub(crate) fn shard_of(shard: *const MlorcShard) -> Result<(Shard, Option<Collective>)> {
    let s = read_struct(shard, "shard")?;
    let (Ok(begin), Ok(end)) = (usize::try_from(s.begin), usize::try_from(s.end)) else {
        return invalid!("shard [{}, {}) does not fit in this machine's address space", s.begin, s.end);
    };
    let collective = s.all_reduce.map(|all_reduce| Collective { all_reduce, context: s.all_reduce_context });
    Ok((Shard { begin, end }, collective))
}

fn sharded_plan_of(config: *const MlorcConfig, desc: *const MlorcTensorDesc, shard: *const MlorcShard) -> Result<Plan> {
    let config = read_struct(config, "config")?.to_config()?;
    let desc = read_struct(desc, "desc")?.to_desc()?;
    let (shard, _) = shard_of(shard)?;
    Plan::sharded(&config, &desc, shard)
}

/// How many state buffers a state for (config, desc) has: 1 or 2 DENSE, 3 or 6 FACTORED.
#[no_mangle]
pub extern "C" fn mlorc_buffer_count(
    config: *const MlorcConfig,
    desc: *const MlorcTensorDesc,
    count: *mut usize,
) -> MlorcStatus {
    guard("mlorc_buffer_count", || write_out(count, plan_of(config, desc)?.buffers().len(), "count"))
}

/// Name and shape of state buffer `index` (0 ≤ index < mlorc_buffer_count) for (config, desc),
/// before any state exists. The caller sets info->struct_size; the name is a static string.
#[no_mangle]
pub extern "C" fn mlorc_buffer_info(
    config: *const MlorcConfig,
    desc: *const MlorcTensorDesc,
    index: usize,
    info: *mut MlorcBufferInfo,
) -> MlorcStatus {
    guard("mlorc_buffer_info", || write_buffer_info(&plan_of(config, desc)?, index, info))
}

/// How many state buffers a state for shard `shard` of (config, desc) has (as
/// mlorc_buffer_count).
#[no_mangle]
pub extern "C" fn mlorc_shard_buffer_count(
    config: *const MlorcConfig,
    desc: *const MlorcTensorDesc,
    shard: *const MlorcShard,
    count: *mut usize,
) -> MlorcStatus {
    guard("mlorc_shard_buffer_count", || write_out(count, sharded_plan_of(config, desc, shard)?.buffers().len(), "count"))
}

/// Name and shape of state buffer `index` of a state for shard `shard` of (config, desc).
/// FACTORED: the whole matrix's factors, as unsharded (replicated on every rank). DENSE: the
/// moments of the shard's elements, 1 × (end − begin) (rows × cols if the shard is the whole
/// matrix).
#[no_mangle]
pub extern "C" fn mlorc_shard_buffer_info(
    config: *const MlorcConfig,
    desc: *const MlorcTensorDesc,
    shard: *const MlorcShard,
    index: usize,
    info: *mut MlorcBufferInfo,
) -> MlorcStatus {
    guard("mlorc_shard_buffer_info", || write_buffer_info(&sharded_plan_of(config, desc, shard)?, index, info))
}

/// Bytes of optimizer state a state for shard `shard` of (config, desc) holds:
/// moments·(rows + cols + 1)·r·4 FACTORED (on every rank), moments·(end − begin)·4 DENSE.
#[no_mangle]
pub extern "C" fn mlorc_shard_state_bytes_required(
    config: *const MlorcConfig,
    desc: *const MlorcTensorDesc,
    shard: *const MlorcShard,
    bytes: *mut usize,
) -> MlorcStatus {
    guard("mlorc_shard_state_bytes_required", || {
        write_out(bytes, sharded_plan_of(config, desc, shard)?.state_bytes(), "bytes")
    })
}

fn write_buffer_info(plan: &Plan, index: usize, info: *mut MlorcBufferInfo) -> Result<()> {
    {
        let buffers = plan.buffers();
        let Some(spec) = buffers.get(index) else {
            return invalid!("index {index} is out of range: there are {} buffers", buffers.len());
        };
        if info.is_null() {
            return invalid!("info is NULL");
        }
        // SAFETY: a non-NULL info points to a caller struct that starts with its size_t size.
        let size = unsafe { std::ptr::read_unaligned(info as *const usize) };
        check_struct_size(size, std::mem::size_of::<MlorcBufferInfo>(), "info")?;
        let names: &'static [&'static str] = &[
            "exp_avg\0",
            "exp_avg_sq\0",
            "exp_avg.u\0",
            "exp_avg.s\0",
            "exp_avg.v\0",
            "exp_avg_sq.u\0",
            "exp_avg_sq.s\0",
            "exp_avg_sq.v\0",
        ];
        let name = names.iter().find(|n| &n[..n.len() - 1] == spec.name).expect("every buffer name is listed");
        let value = MlorcBufferInfo {
            struct_size: size,
            name: name.as_ptr() as *const c_char,
            rows: spec.rows,
            cols: spec.cols,
            dtype: MLORC_F32,
            bytes: spec.len() * 4,
        };
        write_out(info, value, "info")
    }
}

/// Bytes of optimizer state a state for (config, desc) holds: moments·(rows + cols + 1)·r·4
/// FACTORED (r = min(rank, rows, cols)), moments·rows·cols·4 DENSE; moments is 2 for AdamW,
/// 1 for Lion.
#[no_mangle]
pub extern "C" fn mlorc_state_bytes_required(
    config: *const MlorcConfig,
    desc: *const MlorcTensorDesc,
    bytes: *mut usize,
) -> MlorcStatus {
    guard("mlorc_state_bytes_required", || write_out(bytes, plan_of(config, desc)?.state_bytes(), "bytes"))
}

/// The layout (FACTORED or DENSE) that (config, desc) resolves to.
#[no_mangle]
pub extern "C" fn mlorc_resolve_layout(
    config: *const MlorcConfig,
    desc: *const MlorcTensorDesc,
    layout: *mut MlorcLayout,
) -> MlorcStatus {
    guard("mlorc_resolve_layout", || write_out(layout, layout_to_c(plan_of(config, desc)?.layout), "layout"))
}

pub(crate) fn layout_to_c(layout: Layout) -> MlorcLayout {
    match layout {
        Layout::Factored => MLORC_LAYOUT_FACTORED,
        Layout::Dense => MLORC_LAYOUT_DENSE,
    }
}
