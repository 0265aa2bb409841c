//! One parameter tensor's optimizer state: its plan, its f32 buffers (allocated here or lent
//! by the caller) and its step count, and the step itself.

use std::ptr::NonNull;

use half::{bf16, f16};

use crate::config::{Config, Device, Dtype, Layout, Plan, TensorDesc, BufferSpec};
use crate::cpu;
use crate::cuda::CudaState;
use crate::error::{invalid, try_zeroed, Error, Result};
use crate::shard::{Collective, Shard};
use crate::step::{self, StepIo, StepScalars};

/// Where a buffer's memory comes from.
enum Storage {
    Owned(Vec<f32>),
    /// Caller memory, used in place and never freed; valid while the state lives.
    Borrowed(NonNull<f32>),
}

struct Buffer {
    spec: BufferSpec,
    storage: Storage,
}

impl Buffer {
    fn as_slice(&self) -> &[f32] {
        match &self.storage {
            Storage::Owned(v) => v,
            // SAFETY: the caller of `State::with_buffers` lent spec.len() valid floats.
            Storage::Borrowed(p) => unsafe { std::slice::from_raw_parts(p.as_ptr(), self.spec.len()) },
        }
    }
    fn as_mut_slice(&mut self) -> &mut [f32] {
        match &mut self.storage {
            Storage::Owned(v) => v,
            // SAFETY: as above, and the state holds the only handle to it during the call.
            Storage::Borrowed(p) => unsafe { std::slice::from_raw_parts_mut(p.as_ptr(), self.spec.len()) },
        }
    }
}

/// The learning rate of a step: a value, or read from memory of the state's device.
#[derive(Debug, Clone, Copy)]
pub enum LearningRate {
    Value(f64),
    Pointer(*const f32),
}

/// A step's inputs as the C API receives them (pointers into the state's memory space).
#[derive(Debug, Clone, Copy)]
pub struct StepRequest {
    pub param: *mut u8,
    pub grad: *const u8,
    pub lr: LearningRate,
    pub grad_scale: *const f32,
    pub found_inf: *const f32,
    /// CUDA stream (CUstream) to enqueue on; NULL is the legacy default stream. Ignored on the CPU.
    pub stream: *mut std::ffi::c_void,
}

/// An element type a parameter or gradient slice can have.
pub trait Element: Copy {
    const DTYPE: Dtype;
}
impl Element for f32 {
    const DTYPE: Dtype = Dtype::F32;
}
impl Element for f16 {
    const DTYPE: Dtype = Dtype::F16;
}
impl Element for bf16 {
    const DTYPE: Dtype = Dtype::Bf16;
}

/// Per-step options of the safe Rust API.
#[derive(Debug, Clone, Copy)]
pub struct StepOptions {
    pub lr: f64,
    pub grad_scale: Option<f32>,
    pub found_inf: bool,
}

impl StepOptions {
    pub fn lr(lr: f64) -> StepOptions {
        StepOptions { lr, grad_scale: None, found_inf: false }
    }
}

pub struct State {
    config: Config,
    desc: TensorDesc,
    plan: Plan,
    buffers: Vec<Buffer>,
    step: u64,
    /// The CUDA backend's state (device buffers, workspace, device step counter); `buffers` is
    /// then empty.
    cuda: Option<Box<CudaState>>,
    /// The group's all-reduce, when the matrix is sharded across ranks.
    collective: Option<Collective>,
}

// SAFETY: a State is used by one thread at a time (the C API enforces it); borrowed buffers are
// plain memory the caller keeps alive.
unsafe impl Send for State {}

impl State {
    /// A fresh state with zeroed buffers allocated by the library.
    pub fn new(config: &Config, desc: &TensorDesc) -> Result<State> {
        Self::new_sharded(config, desc, Shard::whole(desc.rows.saturating_mul(desc.cols)), None)
    }

    /// A fresh state for elements `shard` of the matrix `desc`, its buffers allocated by the
    /// library. With a collective, every FACTORED step sums its sketches and projections across
    /// the group (every rank must then step together); a FACTORED shard that is not the whole
    /// matrix needs one.
    pub fn new_sharded(config: &Config, desc: &TensorDesc, shard: Shard, collective: Option<Collective>) -> Result<State> {
        let plan = Self::plan_for(config, desc, shard, collective.as_ref())?;
        if let Device::Cuda(ordinal) = desc.device {
            let cuda = CudaState::new(plan, desc, ordinal, None)?;
            return Ok(State::assemble(config, desc, plan, Vec::new(), Some(Box::new(cuda)), collective));
        }
        let buffers = plan
            .buffers()
            .into_iter()
            .map(|spec| Ok(Buffer { spec, storage: Storage::Owned(try_zeroed(spec.len(), spec.name)?) }))
            .collect::<Result<Vec<_>>>()?;
        Ok(State::assemble(config, desc, plan, buffers, None, collective))
    }

    fn assemble(
        config: &Config,
        desc: &TensorDesc,
        plan: Plan,
        buffers: Vec<Buffer>,
        cuda: Option<Box<CudaState>>,
        collective: Option<Collective>,
    ) -> State {
        State { config: *config, desc: *desc, plan, buffers, step: 0, cuda, collective }
    }

    /// A state over caller buffers, one per `Plan::buffers` entry and in that order. Their
    /// contents are the state (zeros for a fresh one); they are never freed by the library.
    ///
    /// # Safety
    /// Each pointer must be valid for reads and writes of its buffer's length, suitably aligned,
    /// not overlap another buffer, and stay valid and untouched by others while the state lives.
    pub unsafe fn with_buffers(config: &Config, desc: &TensorDesc, pointers: &[*mut f32]) -> Result<State> {
        Self::with_buffers_sharded(config, desc, Shard::whole(desc.rows.saturating_mul(desc.cols)), None, pointers)
    }

    /// `with_buffers` for elements `shard` of the matrix (see `new_sharded`).
    ///
    /// # Safety
    /// As `with_buffers`.
    pub unsafe fn with_buffers_sharded(
        config: &Config,
        desc: &TensorDesc,
        shard: Shard,
        collective: Option<Collective>,
        pointers: &[*mut f32],
    ) -> Result<State> {
        let plan = Self::plan_for(config, desc, shard, collective.as_ref())?;
        let specs = plan.buffers();
        if pointers.len() != specs.len() {
            return invalid!(
                "count is {}: this (config, tensor) needs {} buffers ({})",
                pointers.len(),
                specs.len(),
                specs.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
            );
        }
        if let Device::Cuda(ordinal) = desc.device {
            if let Some(i) = pointers.iter().position(|p| p.is_null()) {
                return invalid!("buffer {} is NULL", specs[i].name);
            }
            let cuda = CudaState::new(plan, desc, ordinal, Some(pointers))?;
            return Ok(State::assemble(config, desc, plan, Vec::new(), Some(Box::new(cuda)), collective));
        }
        let mut buffers = Vec::with_capacity(specs.len());
        for (spec, &p) in specs.into_iter().zip(pointers) {
            // An empty buffer (the DENSE moments of an empty shard) has nothing to point to.
            let p = match NonNull::new(p) {
                Some(p) => p,
                None if spec.is_empty() => NonNull::dangling(),
                None => return invalid!("buffer {} is NULL", spec.name),
            };
            if !(p.as_ptr() as usize).is_multiple_of(std::mem::align_of::<f32>()) {
                return invalid!("buffer {} is not 4-byte aligned", spec.name);
            }
            buffers.push(Buffer { spec, storage: Storage::Borrowed(p) });
        }
        Ok(State::assemble(config, desc, plan, buffers, None, collective))
    }

    fn plan_for(config: &Config, desc: &TensorDesc, shard: Shard, collective: Option<&Collective>) -> Result<Plan> {
        let plan = Plan::sharded(config, desc, shard)?;
        if plan.is_sharded() && plan.layout == Layout::Factored && collective.is_none() {
            return invalid!(
                "shard [{}, {}) of a {}x{} FACTORED matrix needs an all-reduce callback: its sketches are sums over every rank's elements",
                shard.begin,
                shard.end,
                desc.rows,
                desc.cols
            );
        }
        if let (Device::Cuda(_), true) = (desc.device, plan.is_sharded() || collective.is_some()) {
            return Err(Error::Unsupported(
                "sharded states run on the CPU backend in this version; the CUDA backend takes whole matrices".into(),
            ));
        }
        match desc.device {
            Device::Cpu => Ok(plan),
            Device::Cuda(_) => {
                crate::cuda::ensure_available()?;
                Ok(plan)
            }
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn desc(&self) -> &TensorDesc {
        &self.desc
    }
    pub fn plan(&self) -> &Plan {
        &self.plan
    }
    /// The elements of the matrix this state holds.
    pub fn shard(&self) -> Shard {
        self.plan.shard
    }
    /// The step count (CPU). A CUDA state keeps its count on the device: see `try_step_count`.
    pub fn step_count(&self) -> u64 {
        match &self.cuda {
            Some(cuda) => cuda.step_count().unwrap_or(self.step),
            None => self.step,
        }
    }
    pub fn set_step_count(&mut self, step: u64) {
        let _ = self.try_set_step_count(step);
    }
    /// The step count; on CUDA read from the device (a synchronisation), reporting a bad
    /// *lr_ptr or *grad_scale seen by an earlier step.
    pub fn try_step_count(&self) -> Result<u64> {
        match &self.cuda {
            Some(cuda) => cuda.step_count(),
            None => Ok(self.step),
        }
    }
    pub fn try_set_step_count(&mut self, step: u64) -> Result<()> {
        self.step = step;
        match &mut self.cuda {
            Some(cuda) => cuda.set_step_count(step),
            None => Ok(()),
        }
    }
    /// Whether the state lives on a CUDA device.
    pub fn is_cuda(&self) -> bool {
        self.cuda.is_some()
    }

    /// Replaces the hyperparameters; fields that fix the buffers' shapes must stay the same.
    pub fn set_config(&mut self, config: &Config) -> Result<()> {
        config.validate()?;
        if !self.config.same_structure(config) {
            return invalid!(
                "algorithm, layout, rank and oversampling cannot change once a state exists (create a new state)"
            );
        }
        self.config = *config;
        Ok(())
    }

    /// Bytes of optimizer state held (owned or lent): the memory formula of `Plan::state_bytes`.
    pub fn memory_bytes(&self) -> usize {
        self.plan.state_bytes()
    }

    pub fn buffer_specs(&self) -> Vec<BufferSpec> {
        self.plan.buffers()
    }

    fn buffer_index(&self, name: &str) -> Result<usize> {
        let specs = self.plan.buffers();
        specs.iter().position(|b| b.name == name).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "this state has no buffer named {name:?} (it has: {})",
                specs.iter().map(|b| b.name).collect::<Vec<_>>().join(", ")
            ))
        })
    }

    /// The named buffer as host memory (CPU states only).
    pub fn buffer(&self, name: &str) -> Result<&[f32]> {
        let idx = self.buffer_index(name)?;
        if self.cuda.is_some() {
            return Err(Error::Unsupported(format!(
                "buffer {name} is CUDA device memory: copy it with read_buffer_into / mlorc_state_read_buffer"
            )));
        }
        Ok(self.buffers[idx].as_slice())
    }

    /// Copies the named buffer into host memory `dst` (any device; CUDA synchronises).
    pub fn read_buffer_into(&self, name: &str, dst: &mut [f32]) -> Result<()> {
        let idx = self.buffer_index(name)?;
        let len = self.plan.buffers()[idx].len();
        if dst.len() != len {
            return invalid!("count is {}: buffer {name} holds {len} floats", dst.len());
        }
        match &self.cuda {
            Some(cuda) => cuda.copy_buffer_host(idx, dst, true),
            None => {
                dst.copy_from_slice(self.buffers[idx].as_slice());
                Ok(())
            }
        }
    }

    /// Copies host memory `src` into the named buffer; it must have the buffer's length.
    pub fn write_buffer(&mut self, name: &str, src: &[f32]) -> Result<()> {
        let idx = self.buffer_index(name)?;
        let len = self.plan.buffers()[idx].len();
        if src.len() != len {
            return invalid!("count is {}: buffer {name} holds {len} floats", src.len());
        }
        match &self.cuda {
            Some(cuda) => {
                let mut staged = src.to_vec();
                cuda.copy_buffer_host(idx, &mut staged, false)
            }
            None => {
                self.buffers[idx].as_mut_slice().copy_from_slice(src);
                Ok(())
            }
        }
    }

    /// CUDA states: copies the named buffer to (`to_device_memory`) or from `count` floats of
    /// device memory at `ptr` on the state's device.
    pub fn copy_buffer_device(&self, name: &str, ptr: u64, count: usize, to_device_memory: bool) -> Result<()> {
        let idx = self.buffer_index(name)?;
        let len = self.plan.buffers()[idx].len();
        if count != len {
            return invalid!("count is {count}: buffer {name} holds {len} floats");
        }
        match &self.cuda {
            Some(cuda) => cuda.copy_buffer_device(idx, ptr, count, to_device_memory),
            None => Err(Error::Internal("copy_buffer_device on a CPU state".into())),
        }
    }

    pub(crate) fn buffers_mut(&mut self) -> Vec<&mut [f32]> {
        self.buffers.iter_mut().map(|b| b.as_mut_slice()).collect()
    }

    /// One step on slices (the safe Rust API): the state's elements (the whole tensor, or the
    /// shard's elements in row-major order).
    pub fn step<P: Element, G: Element>(&mut self, param: &mut [P], grad: &[G], options: &StepOptions) -> Result<()> {
        let n = self.plan.shard.len();
        if param.len() != n || grad.len() != n {
            return invalid!("param has {} and grad {} elements, the state holds {n}", param.len(), grad.len());
        }
        if P::DTYPE != self.desc.param_dtype || G::DTYPE != self.desc.grad_dtype {
            return invalid!(
                "param/grad are {}/{}, the state was created for {}/{}",
                P::DTYPE.name(),
                G::DTYPE.name(),
                self.desc.param_dtype.name(),
                self.desc.grad_dtype.name()
            );
        }
        if self.cuda.is_some() {
            return invalid!("this state lives on a CUDA device: step it with device pointers (step_raw / mlorc_step)");
        }
        let scale = options.grad_scale;
        let found_inf = if options.found_inf { 1.0f32 } else { 0.0 };
        let request = StepRequest {
            param: param.as_mut_ptr() as *mut u8,
            grad: grad.as_ptr() as *const u8,
            lr: LearningRate::Value(options.lr),
            grad_scale: scale.as_ref().map_or(std::ptr::null(), |s| s as *const f32),
            found_inf: &found_inf,
            stream: std::ptr::null_mut(),
        };
        // SAFETY: the slices have the tensor's length and dtype; the scalars live on the stack.
        unsafe { self.step_raw(&request) }
    }

    /// One step on raw memory: ALGORITHM.md, steps 1–5.
    ///
    /// # Safety
    /// `param` and `grad` must point to the state's elements (rows·cols, or the shard's) of the
    /// descriptor's dtypes in the state's memory space, not overlapping each other or the
    /// state's buffers; the optional scalar pointers must be NULL or point to one readable f32.
    pub unsafe fn step_raw(&mut self, request: &StepRequest) -> Result<()> {
        if self.cuda.is_some() {
            self.check_pointers(request)?;
        }
        if let Some(cuda) = &mut self.cuda {
            // Enqueued on the caller's stream; found_inf, grad_scale, lr_ptr and the step count
            // are read and written on the device.
            return cuda.step(&self.config, request);
        }
        match self.prepare_cpu(request)? {
            Some(step) => self.run_cpu(step),
            None => Ok(()),
        }
    }

    /// Whether this step runs its passes one after another on the calling thread, between the
    /// caller's all-reduces (a sharded state with a collective), or on a CUDA stream.
    pub(crate) fn steps_in_order(&self) -> bool {
        self.cuda.is_some() || self.collective.is_some()
    }

    /// Elements a step of this state sweeps (its shard's).
    pub(crate) fn step_work(&self) -> usize {
        self.plan.shard.len()
    }

    /// The checks of a step that enqueue nothing: NULL pointers, on CUDA the pointers' device and
    /// the learning rate value, on the CPU everything `prepare_cpu` checks.
    ///
    /// # Safety
    /// As `step_raw`.
    pub(crate) unsafe fn check_request(&self, request: &StepRequest) -> Result<()> {
        if let Some(cuda) = &self.cuda {
            self.check_pointers(request)?;
            return cuda.check_request(request);
        }
        self.prepare_cpu(request).map(|_| ())
    }

    fn check_pointers(&self, request: &StepRequest) -> Result<()> {
        if !self.plan.shard.is_empty() && (request.param.is_null() || request.grad.is_null()) {
            return invalid!("param and grad must not be NULL");
        }
        // The kernels read and write whole elements in place.
        for (what, address, dtype) in
            [("param", request.param as usize, self.desc.param_dtype), ("grad", request.grad as usize, self.desc.grad_dtype)]
        {
            if address % dtype.size() != 0 {
                return invalid!("{what} {address:#x} is not aligned to its {}-byte {} elements", dtype.size(), dtype.name());
            }
        }
        Ok(())
    }

    /// Every check of a CPU step, before anything changes: `None` when found_inf skips it.
    ///
    /// # Safety
    /// As `step_raw` (the scalar pointers are read here).
    pub(crate) unsafe fn prepare_cpu(&self, request: &StepRequest) -> Result<Option<CpuStep>> {
        self.check_pointers(request)?;
        if !request.found_inf.is_null() && *request.found_inf != 0.0 {
            return Ok(None);
        }
        let lr = match request.lr {
            LearningRate::Value(v) => v,
            LearningRate::Pointer(p) if p.is_null() => return invalid!("lr pointer is NULL"),
            LearningRate::Pointer(p) => *p as f64,
        };
        let grad_scale = (!request.grad_scale.is_null()).then(|| *request.grad_scale);
        let t = self.step.checked_add(1).ok_or_else(|| Error::InvalidArgument("step count overflow".into()))?;
        let scalars = StepScalars::new(&self.config, t, lr, grad_scale)?;
        // Element (0, 0) of the whole matrix, which a shard's memory starts after.
        let first = self.plan.shard.begin;
        let io = StepIo {
            param: request.param.wrapping_sub(first * self.desc.param_dtype.size()),
            param_dtype: self.desc.param_dtype,
            grad: request.grad.wrapping_sub(first * self.desc.grad_dtype.size()),
            grad_dtype: self.desc.grad_dtype,
        };
        Ok(Some(CpuStep { scalars, io }))
    }

    /// Runs a prepared CPU step. Only running out of memory (or a failed all-reduce) fails here,
    /// and then the state has not changed (the weights have, after a failed all-reduce).
    pub(crate) fn run_cpu(&mut self, step: CpuStep) -> Result<()> {
        let CpuStep { scalars, io } = step;
        let (plan, power_iters, seed, collective) = (self.plan, self.config.power_iters, self.config.seed, self.collective);
        let moments = self.buffers_mut();
        match plan.layout {
            Layout::Dense => {
                let (start, len) = (plan.shard.begin, plan.shard.len());
                // SAFETY: param/grad hold the shard's elements (contract of `prepare_cpu`).
                unsafe { cpu::dense_step(&scalars, &io, start, len, moments) };
            }
            Layout::Factored => {
                let whole_step = move || -> Result<()> {
                    let mut passes = crate::pass_timing::time("prepare (U·S, V, c)", || cpu::CpuFactored::new(plan, scalars, io, seed, moments, collective))?;
                    step::run_factored(&mut passes, power_iters)
                };
                if collective.is_some() {
                    // The caller's all-reduce runs on the calling thread, between the passes.
                    whole_step()?;
                } else {
                    // One hand-over to the pool for the whole step, not one per pass.
                    cpu::run_sized(plan.rows * plan.cols, whole_step)?;
                }
            }
        }
        self.step = scalars.step;
        Ok(())
    }
}

/// A CPU step that passed every check: its scalars and the caller's memory.
pub(crate) struct CpuStep {
    scalars: StepScalars,
    io: StepIo,
}
