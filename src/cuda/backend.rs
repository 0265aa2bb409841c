//! A CUDA state: its buffers in device memory (allocated here or lent by the caller), the
//! O((m + n)·k) workspace and the control block (step counter, per-step scalars) allocated at
//! creation, and the step: kernels enqueued on the caller's stream with no host
//! synchronisation, no allocation and no module loading, so it can be captured into a CUDA
//! graph. `run_factored` (src/step.rs) drives the FACTORED passes, as on the CPU.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{result, sys};

use super::context::{check_pointer, device_error, ContextGuard};
use super::launch::*;
use super::memory::DeviceMemory;
use super::module::{device_kernels, DeviceKernels};
use crate::config::{Algorithm, Config, Dtype, Layout, Plan, TensorDesc};
use crate::error::{invalid, Error, Result};
use crate::state::{LearningRate, StepRequest};
use crate::step::{self, FactoredPasses, SketchInput};

pub struct CudaState {
    dev: Arc<DeviceKernels>,
    plan: Plan,
    desc: TensorDesc,
    ctrl: DeviceMemory,
    /// Buffers of `Plan::buffers`, in that order (device pointers).
    buffers: Vec<u64>,
    _owned: Vec<DeviceMemory>,
    _work: Option<DeviceMemory>,
    ptrs: Ptrs,
}

// SAFETY: the state's device memory is used by one thread at a time (the C API enforces it).
unsafe impl Send for CudaState {}

fn dtype_code(d: Dtype) -> u32 {
    match d {
        Dtype::F32 => 0,
        Dtype::F16 => 1,
        Dtype::Bf16 => 2,
    }
}

impl CudaState {
    /// A state on device `ordinal`: library buffers (zeroed) when `lent` is None, else the
    /// caller's device buffers in `Plan::buffers` order.
    pub fn new(plan: Plan, desc: &TensorDesc, ordinal: i32, lent: Option<&[*mut f32]>) -> Result<CudaState> {
        let dev = device_kernels(ordinal)?;
        let _guard = ContextGuard::enter(&dev.ctx)?;
        let specs = plan.buffers();
        let mut owned = Vec::new();
        let mut buffers = Vec::with_capacity(specs.len());
        match lent {
            None => {
                for spec in &specs {
                    let mem = DeviceMemory::zeroed(&dev.ctx, spec.len() * 4, spec.name)?;
                    buffers.push(mem.ptr());
                    owned.push(mem);
                }
            }
            Some(pointers) => {
                for (spec, &p) in specs.iter().zip(pointers) {
                    if !(p as usize).is_multiple_of(4) {
                        return invalid!("buffer {} is not 4-byte aligned", spec.name);
                    }
                    check_pointer(p as u64, ordinal, &format!("buffer {}", spec.name))?;
                    buffers.push(p as u64);
                }
            }
        }
        let ctrl = DeviceMemory::zeroed(&dev.ctx, CTRL_BYTES, "the control block")?;
        let (m, n, r, k) = (plan.rows, plan.cols, plan.rank, plan.sketch);
        let moments = plan.moments();
        let mut ptrs = Ptrs { m: m as u32, n: n as u32, r: r as u32, k: k as u32, moments: moments as u32, ..Ptrs::default() };
        let mut work = None;
        if plan.layout == Layout::Factored {
            if m > u32::MAX as usize || n > u32::MAX as usize {
                return Err(Error::Unsupported(format!("{m}x{n}: the CUDA backend takes at most 2^32-1 rows and columns")));
            }
            let sizes = WorkspaceSizes::new(m, n, r, k, moments);
            let mem = DeviceMemory::zeroed(&dev.ctx, sizes.bytes(moments) + 16 * 256, "the step workspace")?;
            let mut at = mem.ptr();
            let mut take = |bytes: usize| {
                let p = at;
                at += (bytes as u64).div_ceil(256) * 256;
                p
            };
            for mo in 0..moments {
                ptrs.u[mo] = buffers[step::factor_index(mo, 0)];
                ptrs.s[mo] = buffers[step::factor_index(mo, 1)];
                ptrs.v[mo] = buffers[step::factor_index(mo, 2)];
            }
            // Pieces start on 256-byte boundaries (the allocation has 16·256 bytes of slack).
            ptrs.dwork = take(8 * sizes.dwork);
            ptrs.small = take(8 * sizes.small);
            ptrs.negp = take(8 * sizes.negp);
            for mo in 0..moments {
                ptrs.vt[mo] = take(4 * sizes.vt);
                ptrs.xt[mo] = take(4 * sizes.xt);
                ptrs.yt[mo] = take(4 * sizes.yt);
                ptrs.bt[mo] = take(4 * sizes.bt);
            }
            ptrs.part = take(4 * sizes.part);
            ptrs.grid_slabs = grid_slabs(m, n);
            if at > mem.ptr() + mem.bytes() as u64 {
                return Err(Error::Internal("workspace layout exceeds its allocation".into()));
            }
            work = Some(mem);
        }
        Ok(CudaState { dev, plan, desc: *desc, ctrl, buffers, _owned: owned, _work: work, ptrs })
    }

    pub fn ordinal(&self) -> i32 {
        self.dev.ordinal
    }

    pub fn buffer_pointer(&self, index: usize) -> u64 {
        self.buffers[index]
    }

    /// Reads the device step counter (synchronises the device; not for use inside a step). A
    /// bad *lr or *grad_scale seen by an earlier step is reported here.
    pub fn step_count(&self) -> Result<u64> {
        let _guard = ContextGuard::enter(&self.dev.ctx)?;
        self.synchronize()?;
        let mut block = [0u8; CTRL_BYTES];
        // SAFETY: ctrl holds CTRL_BYTES bytes.
        unsafe { result::memcpy_dtoh_sync(&mut block[..], self.ctrl.ptr()) }.map_err(|e| device_error("reading the step counter", e))?;
        let error = u32::from_le_bytes(block[CTRL_ERROR_OFFSET..CTRL_ERROR_OFFSET + 4].try_into().unwrap());
        if error != 0 {
            let mut what = Vec::new();
            if error & 1 != 0 {
                what.push("*lr_ptr was negative or not finite");
            }
            if error & 2 != 0 {
                what.push("*grad_scale was not finite and > 0");
            }
            return Err(Error::InvalidArgument(format!("an earlier step was skipped: {}", what.join("; "))));
        }
        Ok(u64::from_le_bytes(block[CTRL_STEP_OFFSET..CTRL_STEP_OFFSET + 8].try_into().unwrap()))
    }

    pub fn set_step_count(&mut self, count: u64) -> Result<()> {
        let _guard = ContextGuard::enter(&self.dev.ctx)?;
        self.synchronize()?;
        let mut block = [0u8; CTRL_BYTES];
        block[CTRL_STEP_OFFSET..CTRL_STEP_OFFSET + 8].copy_from_slice(&count.to_le_bytes());
        // SAFETY: ctrl holds CTRL_BYTES bytes; clears the sticky error flags too.
        unsafe { result::memcpy_htod_sync(self.ctrl.ptr(), &block[..]) }.map_err(|e| device_error("writing the step counter", e))
    }

    fn synchronize(&self) -> Result<()> {
        // SAFETY: the primary context is current (callers hold a ContextGuard).
        unsafe { sys::cuCtxSynchronize() }.result().map_err(|e| device_error("cuCtxSynchronize", e))
    }

    /// Copies buffer `index` to or from host memory (synchronises the device).
    pub fn copy_buffer_host(&self, index: usize, host: &mut [f32], to_host: bool) -> Result<()> {
        let _guard = ContextGuard::enter(&self.dev.ctx)?;
        self.synchronize()?;
        let p = self.buffers[index];
        // SAFETY: the buffer holds host.len() floats (checked by the caller against its spec).
        unsafe {
            if to_host {
                result::memcpy_dtoh_sync(host, p)
            } else {
                result::memcpy_htod_sync(p, &host[..])
            }
        }
        .map_err(|e| device_error("copying a state buffer", e))
    }

    /// Copies buffer `index` to or from `count` floats of device memory at `other`.
    pub fn copy_buffer_device(&self, index: usize, other: u64, count: usize, to_other: bool) -> Result<()> {
        let _guard = ContextGuard::enter(&self.dev.ctx)?;
        check_pointer(other, self.dev.ordinal, if to_other { "dst" } else { "src" })?;
        self.synchronize()?;
        let p = self.buffers[index];
        let (dst, src) = if to_other { (other, p) } else { (p, other) };
        // SAFETY: both ranges hold count floats of device memory (checked by the caller).
        unsafe { result::memcpy_dtod_sync(dst, src, count * 4) }.map_err(|e| device_error("copying a state buffer", e))?;
        self.synchronize()
    }

    /// The host-side checks of a step: every pointer on this state's device, the learning rate
    /// when it is a value. Nothing is enqueued.
    pub fn check_request(&self, request: &StepRequest) -> Result<()> {
        let ordinal = self.dev.ordinal;
        let _guard = ContextGuard::enter(&self.dev.ctx)?;
        check_pointer(request.param as u64, ordinal, "param")?;
        check_pointer(request.grad as u64, ordinal, "grad")?;
        match request.lr {
            LearningRate::Value(v) if !(v.is_finite() && v >= 0.0) => {
                return invalid!("learning rate is {v}: it must be finite and >= 0");
            }
            LearningRate::Value(_) => {}
            LearningRate::Pointer(p) if p.is_null() => return invalid!("lr pointer is NULL"),
            LearningRate::Pointer(p) => check_pointer(p as u64, ordinal, "lr_ptr")?,
        }
        for (p, what) in [(request.grad_scale, "grad_scale"), (request.found_inf, "found_inf")] {
            if !p.is_null() {
                check_pointer(p as u64, ordinal, what)?;
            }
        }
        Ok(())
    }

    /// One step, enqueued on `request.stream` (NULL: the legacy default stream).
    pub fn step(&mut self, config: &Config, request: &StepRequest) -> Result<()> {
        self.check_request(request)?;
        let _guard = ContextGuard::enter(&self.dev.ctx)?;
        let mut hyper = Hyper {
            lr: 0.0,
            beta1: config.beta1,
            beta2: config.beta2,
            eps: config.eps,
            weight_decay: config.weight_decay,
            seed: config.seed,
            bias_correction: config.bias_correction as u32,
            stochastic: config.stochastic_rounding as u32,
            adamw: (config.algorithm == Algorithm::AdamW) as u32,
            pad: 0,
        };
        let lr_ptr = match request.lr {
            LearningRate::Value(v) => {
                hyper.lr = v;
                0u64
            }
            LearningRate::Pointer(p) => p as u64,
        };
        let grad_scale = request.grad_scale as u64;
        let found_inf = request.found_inf as u64;
        let io = Io {
            param: request.param as u64,
            grad: request.grad as u64,
            param_dtype: dtype_code(self.desc.param_dtype),
            grad_dtype: dtype_code(self.desc.grad_dtype),
        };
        let launcher = Launcher { dev: &self.dev, stream: request.stream as sys::CUstream, ctrl: self.ctrl.ptr() };
        let ctrl = self.ctrl.ptr();
        launcher.launch("mlorc_prepare", 1, 1, 0, &mut [arg(&ctrl), arg(&hyper), arg(&lr_ptr), arg(&grad_scale), arg(&found_inf)])?;
        match self.plan.layout {
            Layout::Dense => {
                let len = self.desc.elements() as u64;
                let m = self.buffers[0];
                let v = if self.plan.moments() == 2 { self.buffers[1] } else { 0u64 };
                let blocks = elementwise_blocks(len, self.dev.multiprocessors);
                launcher.launch("mlorc_dense", blocks, ELEMENTWISE_THREADS, 0, &mut [arg(&ctrl), arg(&io), arg(&m), arg(&v), arg(&len)])?;
            }
            Layout::Factored => {
                let mut passes = CudaPasses { launcher: &launcher, ptrs: self.ptrs, io };
                passes.start()?;
                step::run_factored(&mut passes, config.power_iters)?;
            }
        }
        launcher.launch("mlorc_finish", 1, 1, 0, &mut [arg(&ctrl)])
    }
}

fn elementwise_blocks(len: u64, multiprocessors: u32) -> u32 {
    let needed = len.div_ceil(ELEMENTWISE_THREADS as u64).max(1);
    needed.min(multiprocessors.max(1) as u64 * 32) as u32
}

fn arg<T>(value: &T) -> *mut c_void {
    value as *const T as *mut c_void
}

/// Launches kernels of one device on the caller's stream.
struct Launcher<'a> {
    dev: &'a DeviceKernels,
    stream: sys::CUstream,
    ctrl: u64,
}

impl Launcher<'_> {
    fn launch(&self, name: &str, grid: impl Into<Dim>, block: impl Into<Dim>, shared: u32, params: &mut [*mut c_void]) -> Result<()> {
        let f = self.dev.function(name)?;
        let (g, b) = (grid.into().0, block.into().0);
        // SAFETY: the parameters match the kernel's signature in kernels.cu (pointers to
        // values alive for the call; cuLaunchKernel copies them); the device memory they name
        // belongs to the state or the caller, checked to be on this device.
        unsafe { result::launch_kernel(f, g, b, shared, self.stream, params) }.map_err(|e| device_error(&format!("launching {name}"), e))
    }
}

struct Dim((u32, u32, u32));
impl From<u32> for Dim {
    fn from(x: u32) -> Dim {
        Dim((x, 1, 1))
    }
}
impl From<(u32, u32)> for Dim {
    fn from((x, y): (u32, u32)) -> Dim {
        Dim((x, y, 1))
    }
}

/// The FACTORED passes as kernel launches (see kernels.cu for each kernel's partition).
struct CudaPasses<'a> {
    launcher: &'a Launcher<'a>,
    ptrs: Ptrs,
    io: Io,
}

impl CudaPasses<'_> {
    fn blocks(&self, work: u64) -> u32 {
        elementwise_blocks(work, self.launcher.dev.multiprocessors)
    }

    /// V transposed, and the negative fill of the second moment (AdamW).
    fn start(&mut self) -> Result<()> {
        let (c, p) = (self.launcher.ctrl, self.ptrs);
        let work = p.moments as u64 * p.r as u64 * p.n as u64;
        self.launcher.launch("mlorc_transpose_v", self.blocks(work), ELEMENTWISE_THREADS, 0, &mut [arg(&c), arg(&p)])?;
        if p.moments == 2 {
            self.launcher.launch("mlorc_negative_partial", NEG_BLOCKS, NEG_THREADS, p.r * 4, &mut [arg(&c), arg(&p)])?;
            let blocks = NEG_BLOCKS;
            self.launcher.launch("mlorc_negative_final", 1, NEG_BLOCKS, 0, &mut [arg(&c), arg(&p), arg(&blocks)])?;
        }
        Ok(())
    }

    fn orthonormalize(&mut self, which: u32) -> Result<()> {
        let (c, p) = (self.launcher.ctrl, self.ptrs);
        let len = if which == 0 { p.m } else { p.n } as u64;
        let bytes = p.k as u64 * len * 8;
        let in_shared = (bytes <= self.launcher.dev.orth_shared_bytes as u64) as u32;
        let shared = if in_shared == 1 { bytes as u32 } else { 0 };
        self.launcher.launch("mlorc_orthonormalize", p.moments, ORTH_THREADS, shared, &mut [arg(&c), arg(&p), arg(&which), arg(&in_shared)])
    }
}

impl FactoredPasses for CudaPasses<'_> {
    fn sketch(&mut self, input: SketchInput) -> Result<()> {
        let (c, p, io) = (self.launcher.ctrl, self.ptrs, self.io);
        let use_bt: u32 = match input {
            SketchInput::Random => {
                let work = p.moments as u64 * p.k as u64 * (p.n as u64).div_ceil(4);
                self.launcher.launch("mlorc_omega", self.blocks(work), ELEMENTWISE_THREADS, 0, &mut [arg(&c), arg(&p)])?;
                0
            }
            SketchInput::Projection => 1,
        };
        let shared = SK_ROWS * p.moments * p.r * 4;
        let grid = p.m.div_ceil(SK_ROWS);
        let mut l0 = 0u32;
        while l0 < p.k {
            let width = chunk_width(p.k - l0);
            let name = format!("mlorc_sketch_k{width}");
            self.launcher.launch(&name, grid, SK_THREADS, shared, &mut [arg(&c), arg(&p), arg(&io), arg(&l0), arg(&use_bt)])?;
            l0 += width;
        }
        Ok(())
    }

    fn orthonormalize_sketch(&mut self) -> Result<()> {
        self.orthonormalize(0)
    }

    fn project(&mut self, update_weights: bool) -> Result<()> {
        let (c, p, io) = (self.launcher.ctrl, self.ptrs, self.io);
        let grid = (p.n.div_ceil(PJ_COLS * PJ_VEC), p.grid_slabs);
        if cfg!(feature = "cuda-rank-projection") && p.r == p.k && SKETCH_CHUNKS.contains(&p.k) {
            // One launch: the rank-specialized kernel (kernels.cu, project_rank_impl).
            let update = update_weights as u32;
            let name = format!("mlorc_project_r{}", p.k);
            self.launcher.launch(&name, grid, (PJ_COLS, PJ_SLABS), 0, &mut [arg(&c), arg(&p), arg(&io), arg(&update)])?;
            let work = p.moments as u64 * p.k as u64 * p.n as u64;
            return self.launcher.launch("mlorc_project_reduce", self.blocks(work), ELEMENTWISE_THREADS, 0, &mut [arg(&c), arg(&p)]);
        }
        let mut l0 = 0u32;
        while l0 < p.k {
            let width = chunk_width(p.k - l0);
            // The weights are updated exactly once: in the first chunk's launch.
            let update = (update_weights && l0 == 0) as u32;
            let name = format!("mlorc_project_k{width}");
            self.launcher.launch(&name, grid, (PJ_COLS, PJ_SLABS), 0, &mut [arg(&c), arg(&p), arg(&io), arg(&l0), arg(&update)])?;
            l0 += width;
        }
        let work = p.moments as u64 * p.k as u64 * p.n as u64;
        self.launcher.launch("mlorc_project_reduce", self.blocks(work), ELEMENTWISE_THREADS, 0, &mut [arg(&c), arg(&p)])
    }

    fn orthonormalize_projection(&mut self) -> Result<()> {
        self.orthonormalize(1)
    }

    fn compress(&mut self) -> Result<()> {
        let (c, p) = (self.launcher.ctrl, self.ptrs);
        let shared = if p.k <= GRAM_SHARED_K { 2 * p.k * p.k * 8 } else { 0 };
        self.launcher.launch("mlorc_gram_eigen", p.moments, ORTH_THREADS, shared, &mut [arg(&c), arg(&p)])?;
        let work = p.moments as u64 * (p.m as u64 + p.n as u64) * p.r as u64;
        self.launcher.launch("mlorc_compose", self.blocks(work), ELEMENTWISE_THREADS, 0, &mut [arg(&c), arg(&p)])
    }
}
