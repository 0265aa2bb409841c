"""PyTorch optimizers backed by libmlorc: :class:`MLorcAdamW`, :class:`MLorcLion`, and
:func:`register_fused_backward`.
"""

from __future__ import annotations

import math
import weakref
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import _capi
from ._capi import MlorcCollectiveError, MlorcError
from ._shard import _ATTR as _FLAT_SHARD_ATTR
from ._shard import FlatShard, ParamView, TorchAllReduce, _is_dtensor, flat_shard, param_view

__all__ = [
    "MLorcAdamW",
    "MLorcLion",
    "register_fused_backward",
    "flat_shard",
    "FlatShard",
    "TorchAllReduce",
    "MlorcError",
    "MlorcCollectiveError",
]

_DTYPES = {
    torch.float32: _capi.MLORC_F32,
    torch.float16: _capi.MLORC_F16,
    torch.bfloat16: _capi.MLORC_BF16,
}
_LAYOUTS = {
    "auto": _capi.MLORC_LAYOUT_AUTO,
    "factored": _capi.MLORC_LAYOUT_FACTORED,
    "dense": _capi.MLORC_LAYOUT_DENSE,
}
_U64 = 1 << 64
_STRIDED = torch.strided
_F32 = torch.float32
# One torch call sets many step tensors (torch >= 2.1 has it; else one fill_ each).
_FOREACH_COPY = getattr(torch, "_foreach_copy_", None)
# Parameter types whose metadata reads `_Handle.unchanged` trusts (no __torch_function__ of their own).
_PLAIN_TYPES = (Tensor, torch.nn.Parameter)

ParamsT = Union[Iterable[Tensor], Iterable[Dict[str, Any]]]


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def _matrix_shape(p: Tensor) -> Tuple[int, int]:
    """How a parameter is seen by the library: 0-d/1-d → (1, numel); N-d → (shape[0], rest)."""
    n = p.numel()
    if p.dim() <= 1:
        return 1, n
    return p.shape[0], n // p.shape[0]


def _check_float(name: str, value: Any, lo: float = 0.0, hi: Optional[float] = None, closed_hi: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"Invalid {name}: {value!r} (expected a number)")
    v = float(value)
    if not math.isfinite(v) or v < lo or (hi is not None and (v > hi if closed_hi else v >= hi)):
        if hi is None:
            rng = f">= {lo} and finite"
        else:
            rng = f"in [{lo}, {hi}{']' if closed_hi else ')'}"
        raise ValueError(f"Invalid {name}: {value!r} (must be {rng})")


def _check_int(name: str, value: Any, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"Invalid {name}: {value!r} (must be an integer >= {lo})")


def _check_param(p: Tensor, cls: str) -> None:
    if not isinstance(p, Tensor):
        raise TypeError(f"{cls} can only optimize Tensors, got {type(p).__name__}")
    if _is_dtensor(p):
        # The library works on the local shard; param_view refuses placements it cannot map to
        # one element range (raises NotImplementedError with what is supported).
        view = param_view(p)
        _check_param(view.local, cls)
        return
    if p.is_sparse or p.layout != torch.strided:
        raise ValueError(f"{cls} does not support sparse parameters (layout {p.layout})")
    if p.dtype not in _DTYPES:
        raise TypeError(
            f"{cls} supports float32, float16 and bfloat16 parameters; got a {p.dtype} parameter "
            f"of shape {tuple(p.shape)}. Convert the model (e.g. model.float()) or optimize it "
            "with a torch optimizer."
        )
    if p.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{cls}: parameters on {p.device} are not supported (CPU or CUDA only)")
    if not p.is_contiguous():
        raise ValueError(
            f"{cls} needs contiguous parameters; got one of shape {tuple(p.shape)} with strides "
            f"{tuple(p.stride())}. The library updates the parameter in place as a row-major "
            "matrix and will not make a hidden m×n copy; make the parameter contiguous (e.g. "
            "`param.data = param.data.contiguous()`) before building the optimizer."
        )


class _Handle:
    """A live MlorcState over the tensors of ``self.state[p]`` (not part of state_dict)."""

    __slots__ = ("ptr", "key", "ptrs", "tensors", "config_key", "structure", "count", "infos", "comm", "signature",
                 "ptype", "gsig", "shape", "dtype", "device", "grad_dtype", "checks")

    def __init__(
        self, ptr: int, key: tuple, infos: list, ptrs: tuple, tensors: list, config_key: tuple, structure: tuple
    ) -> None:
        self.structure = structure  # (layout, rank, oversampling): fixed for the state's life
        self.ptr = ptr
        self.key = key  # (rows, cols, param dtype, grad dtype, device)
        self.ptrs = ptrs  # data_ptrs of the buffers it was created over
        self.bind(infos, tensors)
        self.config_key = config_key
        self.count = 0  # the library's step count, as last set or read
        self.comm: Optional[TorchAllReduce] = None  # a sharded state's callback: must outlive it
        # What the handle was last checked against (group hyperparameters, parameter, gradient
        # and shard); while it and the state's tensors are unchanged, a step skips the checks.
        self.signature: Optional[tuple] = None
        # The same for `unchanged` (plain parameters only; ptype None: always the full checks).
        self.ptype: Optional[type] = None
        self.gsig: Optional[tuple] = None
        self.shape: Any = None
        self.dtype: Any = None
        self.device: Any = None
        self.grad_dtype: Any = None

    def bind(self, infos: list, tensors: list) -> None:
        """Sets the buffer tensors the handle steps (over the memory of ``self.ptrs``), and
        ``checks``: (name, tensor, data_ptr or None for a buffer without memory) of each."""
        self.infos = infos
        self.tensors = tensors  # keeps those buffers alive as long as the handle
        self.checks = tuple(
            (name, t, ptr if t.numel() else None) for (name, _, _), t, ptr in zip(infos, tensors, self.ptrs)
        )

    def remember(self, p: Tensor, grad: Tensor, gsig: tuple, view: ParamView) -> None:
        """Records what a plain parameter's step passed every check with."""
        if (
            view.kind != "plain"
            or type(p) not in _PLAIN_TYPES
            or type(grad) is not Tensor
            or any(t.numel() == 0 for t in self.tensors)
        ):
            self.ptype = None
            return
        self.ptype = type(p)
        self.gsig = gsig
        self.shape = p.shape
        self.dtype = p.dtype
        self.device = p.device
        self.grad_dtype = grad.dtype

    def unchanged(self, p: Tensor, grad: Tensor, gsig: tuple, states: Any) -> Optional[Dict[str, Any]]:
        """``states[p]`` when every check of `_prepare_param` would pass as it did for
        `remember` and `_handle_for` would return this handle as it is; else None.

        The parameter and gradient can change between steps without changing identity
        (``.data =``, ``set_``, ``t_``...), so their metadata is read again; each read here is one
        the full checks make (an exact Tensor's layout is strided exactly when it is not sparse).
        """
        if (
            type(p) is not self.ptype  # also: not a DTensor, as when remembered
            or type(grad) is not Tensor
            or self.gsig != gsig
            or getattr(p, _FLAT_SHARD_ATTR, None) is not None
        ):
            return None
        shape = self.shape
        device = self.device
        if (
            p.layout is not _STRIDED
            or p.dtype is not self.dtype
            or p.shape != shape
            or p.device != device
            or not p.is_contiguous()
            or grad.layout is not _STRIDED
            or grad.dtype is not self.grad_dtype
            or grad.shape != shape
            or grad.device != device
            or not grad.is_contiguous()
        ):
            return None
        state = states[p]
        return state if self.holds(state) else None

    def holds(self, state: Dict[str, Any]) -> bool:
        """Whether ``state`` still has the very tensors (and memory) this handle steps."""
        for name, t, ptr in self.checks:
            if state.get(name) is not t or (ptr is not None and t.data_ptr() != ptr):
                return False
        return True


class _Prepared:
    """One parameter's step after its checks: what the library call needs."""

    __slots__ = ("param", "handle", "param_ptr", "grad_ptr", "options", "options_key")

    def __init__(self, param: Tensor, handle: _Handle, param_ptr: int, grad_ptr: int, options: Any,
                 options_key: tuple) -> None:
        self.param = param
        self.handle = handle
        self.param_ptr = param_ptr
        self.grad_ptr = grad_ptr
        self.options = options  # shared by every parameter of its group on one device
        self.options_key = options_key


class _Batch:
    """Parameters of one group and device that one library call steps (lists of addresses:
    no per-parameter objects)."""

    __slots__ = ("options", "device", "no_inf", "handles", "states", "steps", "param_ptrs", "grad_ptrs")

    def __init__(self, options: Any, device: torch.device, no_inf: bool) -> None:
        self.options = options
        self.device = device
        self.no_inf = no_inf  # no found_inf: each step adds one to the count
        self.handles: List[_Handle] = []
        self.states: List[Dict[str, Any]] = []  # optimizer state dicts
        self.steps: List[Optional[Tensor]] = []  # see _Batch.add
        self.param_ptrs: List[int] = []
        self.grad_ptrs: List[int] = []

    def add(self, h: _Handle, state: Dict[str, Any], step_t: Optional[Tensor], param_ptr: int, grad_ptr: int) -> None:
        """``step_t``: ``state["step"]`` when `_record_step_counts` may set it with one
        float32 copy for many (`_sync_step_count`'s answer), else None."""
        self.handles.append(h)
        self.states.append(state)
        self.steps.append(step_t)
        self.param_ptrs.append(param_ptr)
        self.grad_ptrs.append(grad_ptr)


def _destroy_handles(handles: Dict[int, _Handle]) -> None:
    for h in list(handles.values()):
        try:
            _capi.state_destroy(h.ptr)
        except Exception:  # pragma: no cover - interpreter shutdown
            pass
    handles.clear()


# ------------------------------------------------------------------------------------------------
# The optimizer
# ------------------------------------------------------------------------------------------------


class _MLorcBase(Optimizer):
    _algorithm: int = _capi.MLORC_ADAMW
    _uses_eps = True
    # GradScaler hands us `grad_scale` / `found_inf` tensors instead of unscaling the grads
    # itself, as it does for torch's fused optimizers (torch/amp/grad_scaler.py).
    _step_supports_amp_scaling = True

    def __init__(self, params: ParamsT, defaults: Dict[str, Any], process_group: Any = None) -> None:
        self._mlorc_handles: Dict[int, _Handle] = {}
        self._mlorc_group_of: Dict[int, int] = {}
        # Not in defaults: a ProcessGroup is neither comparable nor serializable (state_dict).
        self._mlorc_process_group = process_group
        self._mlorc_comms: Dict[int, TorchAllReduce] = {}
        self._mlorc_placeholders: Dict[Any, Tensor] = {}
        self._validate_group(defaults, "defaults")
        super().__init__(params, defaults)
        self._mlorc_finalizer = weakref.finalize(self, _destroy_handles, self._mlorc_handles)

    # -- groups and validation --------------------------------------------------------------------

    def _validate_group(self, group: Dict[str, Any], where: str = "param group") -> None:
        lr = group["lr"]
        if isinstance(lr, Tensor):
            if lr.numel() != 1 or not lr.is_floating_point():
                raise ValueError(f"Invalid lr: a tensor lr must be a one-element float tensor ({where})")
            if lr.device.type == "cpu":
                _check_float("learning rate", float(lr.item()))
        else:
            _check_float("learning rate", lr)
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"Invalid betas: {betas!r} (expected a pair)")
        for i, b in enumerate(betas):
            _check_float(f"beta parameter at index {i}", b, 0.0, 1.0)
        if self._uses_eps:
            _check_float("epsilon value", group["eps"])
        _check_float("weight_decay value", group["weight_decay"])
        _check_int("rank", group["rank"], 1)
        _check_int("oversampling", group["oversampling"], 0)
        _check_int("power_iters", group["power_iters"], 0)
        if group["layout"] not in _LAYOUTS:
            raise ValueError(f"Invalid layout: {group['layout']!r} (expected one of {sorted(_LAYOUTS)})")
        if self._uses_eps and not isinstance(group["bias_correction"], bool):
            raise ValueError(f"Invalid bias_correction: {group['bias_correction']!r} (expected a bool)")
        if not isinstance(group["stochastic_rounding"], bool):
            raise ValueError(f"Invalid stochastic_rounding: {group['stochastic_rounding']!r} (expected a bool)")
        seed = group["seed"]
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < _U64):
            raise ValueError(f"Invalid seed: {seed!r} (None or an integer in [0, 2**64))")

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._validate_group(group)
            for p in group["params"]:
                _check_param(p, type(self).__name__)
        except Exception:
            self.param_groups.pop()
            raise
        self._reindex_groups()

    def _reindex_groups(self) -> None:
        self._mlorc_group_of = {id(p): i for i, g in enumerate(self.param_groups) for p in g["params"]}

    # -- library objects --------------------------------------------------------------------------

    def _group_signature(self, group: Dict[str, Any]) -> tuple:
        """The group's values that configure a state, as plain numbers: cheap to compare
        between steps, and what `_config` builds the library's config from."""
        b1, b2 = group["betas"]
        sig = (group["layout"], group["rank"], group["oversampling"], group["power_iters"], float(b1), float(b2),
               float(group["weight_decay"]), bool(group["stochastic_rounding"]), group["seed"])
        if self._uses_eps:
            sig += (float(group["eps"]), bool(group["bias_correction"]))
        return sig

    def _config(self, group: Dict[str, Any]) -> _capi.MlorcConfig:
        layout, rank, oversampling, power_iters, b1, b2, wd, rounding, seed, *adam = self._group_signature(group)
        c = _capi.config_init(self._algorithm)
        c.layout = _LAYOUTS[layout]
        c.rank = rank
        c.oversampling = oversampling
        c.power_iters = power_iters
        c.beta1, c.beta2 = b1, b2
        c.weight_decay = wd
        if adam:
            eps, bias_correction = adam
            c.eps = eps
            c.bias_correction = int(bias_correction)
        c.stochastic_rounding = int(rounding)
        if seed is not None:
            c.seed = int(seed)
        return c

    @staticmethod
    def _config_key(c: _capi.MlorcConfig) -> tuple:
        return tuple(getattr(c, f) for f, _ in c._fields_)

    def _placeholder(self, device: torch.device) -> Tensor:
        t = self._mlorc_placeholders.get(device)
        if t is None:
            t = self._mlorc_placeholders[device] = torch.zeros(1, dtype=torch.float32, device=device)
        return t

    def _view(self, p: Tensor) -> ParamView:
        return param_view(p, self._mlorc_process_group)

    def _comm(self, group: Any) -> TorchAllReduce:
        """The all-reduce callback of a process group (one per group, shared by its states)."""
        c = self._mlorc_comms.get(id(group))
        if c is None or c.group is not group:
            c = TorchAllReduce(group)
            self._mlorc_comms[id(group)] = c
        return c

    def _shard_struct(self, view: ParamView) -> Tuple[_capi.MlorcShard, TorchAllReduce]:
        comm = self._comm(view.group)
        return _capi.shard_init(view.begin, view.end, comm.fn), comm

    def _buffer_infos(self, config: _capi.MlorcConfig, desc: _capi.MlorcTensorDesc, view: ParamView) -> list:
        if view.sharded:
            shard, _ = self._shard_struct(view)
            return _capi.shard_buffer_infos(config, desc, shard)
        return _capi.buffer_infos(config, desc)

    def comm_stats(self) -> Dict[str, int]:
        """What this rank's sharded states have all-reduced so far: ``calls``, ``floats`` and
        ``bytes`` (= 4·floats, the payload each rank contributes), summed over process groups.
        Zero without sharded parameters. :meth:`reset_comm_stats` starts counting again."""
        comms = list(self._mlorc_comms.values())
        return {
            "calls": sum(c.calls for c in comms),
            "floats": sum(c.floats for c in comms),
            "bytes": sum(c.bytes for c in comms),
        }

    def reset_comm_stats(self) -> None:
        for c in self._mlorc_comms.values():
            c.reset_counters()

    @staticmethod
    def _desc(p: Tensor, grad_dtype: torch.dtype, view: Optional[ParamView] = None) -> _capi.MlorcTensorDesc:
        rows, cols = (view.rows, view.cols) if view is not None else _matrix_shape(p)
        d = _capi.tensor_desc_init(rows, cols, _DTYPES[p.dtype])
        d.grad_dtype = _DTYPES[grad_dtype]
        if p.device.type == "cuda":
            d.device = _capi.MLORC_DEVICE_CUDA
            d.device_ordinal = p.device.index if p.device.index is not None else torch.cuda.current_device()
        return d

    def _handle_for(self, p: Tensor, group: Dict[str, Any], gsig: tuple, grad: Tensor, view: ParamView) -> _Handle:
        """The live handle of p, (re)created over the current state tensors when needed;
        ``gsig`` is ``_group_signature(group)``."""
        state = self.state[p]
        h = self._mlorc_handles.get(id(p))
        if h is not None:
            h.ptype = None  # no fast path until this handle passes again (`remember`)
        signature = (gsig, p.shape, p.dtype, p.device, grad.dtype, view.begin, view.end,
                     id(view.group) if view.sharded else None)
        if h is not None and h.signature == signature and h.holds(state):
            self._sync_step_count(h, state)
            return h
        config = self._config(group)
        if h is not None and h.structure != (config.layout, config.rank, config.oversampling):
            raise ValueError(
                f"{type(self).__name__}: rank, oversampling and layout of a parameter cannot "
                "change once its state exists (they fix the state's shapes)"
            )
        desc = self._desc(p, grad.dtype, view)
        key = (desc.rows, desc.cols, desc.param_dtype, desc.grad_dtype, desc.device, desc.device_ordinal)
        if view.sharded:
            key += (view.begin, view.end, id(view.group))
        # Buffer names/shapes depend only on (layout, rank, oversampling), the desc and the shard.
        infos = h.infos if h is not None and h.key == key else self._buffer_infos(config, desc, view)
        if not state:
            fresh = {name: torch.zeros((r, c), dtype=torch.float32, device=p.device) for name, r, c in infos}
            fresh_step = torch.tensor(0.0, dtype=torch.float32)
        else:
            fresh = None
        buffers = fresh if fresh is not None else state
        tensors = []
        for name, r, c in infos:
            t = buffers.get(name)
            if not isinstance(t, Tensor):
                raise RuntimeError(f"{type(self).__name__}: state of a parameter lacks buffer {name!r}")
            if t.dtype != torch.float32 or t.shape != (r, c) or t.device != p.device or not t.is_contiguous():
                raise RuntimeError(
                    f"{type(self).__name__}: state buffer {name!r} must be a contiguous float32 tensor "
                    f"of shape ({r}, {c}) on {p.device}; it is {t.dtype} {tuple(t.shape)} on {t.device}"
                    " (rank, oversampling and layout cannot change once a parameter has state)"
                )
            tensors.append(t)
        # A buffer of 0 floats (the dense moments of an empty shard) has no memory and torch
        # gives it data_ptr 0; the library wants a non-NULL address for every buffer it borrows
        # (it reads and writes 0 floats there), so such buffers get a shared placeholder's.
        ptrs = tuple(t.data_ptr() if t.numel() else self._placeholder(p.device).data_ptr() for t in tensors)
        if any(t.numel() == 0 for t in tensors):
            tensors.append(self._placeholder(p.device))  # the handle keeps it alive too
        ckey = self._config_key(config)
        if h is not None and h.ptrs == ptrs and h.key == key:
            h.bind(infos, tensors)  # the same memory, perhaps through new tensor objects
            if h.config_key != ckey:
                _capi.state_set_config(h.ptr, config)
                h.config_key = ckey
        else:
            comm = None
            if view.sharded:
                shard, comm = self._shard_struct(view)
                ptr = _capi.state_create_sharded(config, desc, shard, ptrs)
            else:
                ptr = _capi.state_create_with_buffers(config, desc, ptrs)
            if h is not None:
                _capi.state_destroy(h.ptr)
                del self._mlorc_handles[id(p)]
            h = _Handle(ptr, key, infos, ptrs, tensors, ckey, (config.layout, config.rank, config.oversampling))
            h.comm = comm
            self._mlorc_handles[id(p)] = h
            if fresh is not None:
                state["step"] = fresh_step
                state.update(fresh)
        h.signature = signature
        self._sync_step_count(h, state)
        return h

    @staticmethod
    def _sync_step_count(h: _Handle, state: Dict[str, Any]) -> Optional[Tensor]:
        """Gives the library the step count of ``state["step"]`` when someone changed it.
        Returns ``state["step"]`` if it is a CPU float32 Tensor (then a float32 copy_ sets it
        as fill_ does), else None."""
        step_t = state.get("step")
        count = int(step_t.item()) if isinstance(step_t, Tensor) else int(step_t or 0)
        if count != h.count:
            _capi.state_set_step_count(h.ptr, count)
            h.count = count
        if _FOREACH_COPY is not None and type(step_t) is Tensor and step_t.dtype is _F32 and step_t.is_cpu:
            return step_t
        return None

    # -- stepping ---------------------------------------------------------------------------------

    def _scaler_tensors(self) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        return getattr(self, "grad_scale", None), getattr(self, "found_inf", None)

    def _prepare_param(
        self,
        p: Tensor,
        group: Dict[str, Any],
        gsig: tuple,
        scale: Optional[Tensor],
        found_inf: Optional[Tensor],
        cache: Dict[Any, Any],
    ) -> Optional["_Prepared"]:
        """Every check of one parameter's step, its state handle and its step options; None
        when it has nothing to step. Changes no weight and no moment."""
        if p.grad is None:
            return None
        name = type(self).__name__
        view = self._view(p)
        if view.numel == 0:
            return None
        # The library reads and writes the local pieces: the parameter itself unless it is a
        # DTensor (then its local shard; param_view checked the placements).
        local = view.local
        grad = view.local_grad(p)
        if grad.is_sparse or grad.layout != torch.strided:
            raise RuntimeError(f"{name} does not support sparse gradients")
        _check_param(local, name)
        if grad.dtype not in _DTYPES:
            raise TypeError(f"{name} supports float32, float16 and bfloat16 gradients; got {grad.dtype}")
        if grad.shape != local.shape or grad.device != local.device:
            raise ValueError(f"{name}: gradient {tuple(grad.shape)} on {grad.device} does not match its parameter")
        if not grad.is_contiguous():
            raise ValueError(
                f"{name} needs contiguous gradients (strides {tuple(grad.stride())}); no hidden copy is made"
            )
        h = self._handle_for(p, group, gsig, grad, view)
        h.remember(p, grad, gsig, view)
        options_key = ("options", id(group), p.device)
        options = self._options(group, p.device, scale, found_inf, cache, options_key)
        return _Prepared(p, h, local.data_ptr(), grad.data_ptr(), options, options_key)

    def _options(
        self,
        group: Dict[str, Any],
        device: torch.device,
        scale: Optional[Tensor],
        found_inf: Optional[Tensor],
        cache: Dict[Any, Any],
        options_key: tuple,
    ) -> Any:
        """The step options of a group's parameters on ``device`` (built once per step)."""
        options = cache.get(options_key)
        if options is not None:
            return options

        def on_device(t: Tensor, tag: str) -> Tensor:
            if t.device == device and t.dtype == torch.float32:
                return t
            k = (tag, device)
            if k not in cache:
                cache[k] = t.detach().to(device=device, dtype=torch.float32).reshape(())
            return cache[k]

        lr = group["lr"]
        if isinstance(lr, Tensor):
            options = _capi.step_options_init(0.0)
            lr_t = on_device(lr, "lr")
        else:
            options = _capi.step_options_init(float(lr))
            lr_t = None
        scale_t = on_device(scale, "scale") if scale is not None else None
        inf_t = on_device(found_inf, "found_inf") if found_inf is not None else None
        stream = None
        if device.type == "cuda":
            stream = torch.cuda.current_stream(device).cuda_stream
        _capi.set_step_option_pointers(
            options,
            lr_ptr=lr_t.data_ptr() if lr_t is not None else None,
            grad_scale=scale_t.data_ptr() if scale_t is not None else None,
            found_inf=inf_t.data_ptr() if inf_t is not None else None,
            stream=stream,
        )
        cache[options_key] = options
        return options

    def _step_one(
        self,
        h: _Handle,
        state: Dict[str, Any],
        step_t: Optional[Tensor],
        param_ptr: int,
        grad_ptr: int,
        options: Any,
        no_inf: bool,
    ) -> None:
        """One mlorc_step (``state``, ``step_t``: as `_Batch.add` takes them); ``no_inf``: the
        options have no found_inf (a step adds one to the count)."""
        # An empty shard has no memory (data_ptr 0: NULL, which the library accepts for it) but
        # still takes part in every all-reduce of the step.
        try:
            _capi.step(h.ptr, param_ptr, grad_ptr, options)
        except MlorcCollectiveError as e:
            cause = h.comm.take_error() if h.comm is not None else None
            if cause is not None and not isinstance(cause, Exception):
                raise cause from None  # KeyboardInterrupt, SystemExit: re-raise as they were
            if cause is not None:
                raise MlorcCollectiveError(
                    e.status,
                    e.status_name,
                    f"{e.message} (torch.distributed.all_reduce raised {type(cause).__name__}: {cause}). "
                    "This rank's parameter shard and state may now differ from the other ranks': "
                    "reload a checkpoint on every rank.",
                    e.function,
                ) from cause
            raise
        self._record_step_counts((h,), (state,), (step_t,), no_inf)

    def _step_prepared(self, prep: "_Prepared", no_inf: bool) -> None:
        state = self.state[prep.param]
        self._step_one(prep.handle, state, None, prep.param_ptr, prep.grad_ptr, prep.options, no_inf)

    def _record_step_counts(
        self,
        handles: Sequence[_Handle],
        states: Sequence[Dict[str, Any]],
        steps: Sequence[Optional[Tensor]],
        stepped: bool,
    ) -> None:
        """Copies the library's step counts of states just stepped into ``state["step"]``.

        ``stepped``: every call succeeded without found_inf, so each count went up by one (the
        library's contract) and needs no query.
        """
        fills: Dict[int, List[Tensor]] = {}
        try:
            for h, state, t in zip(handles, states, steps):
                count = h.count + 1 if stepped else _capi.state_step_count(h.ptr)
                if count != h.count:
                    h.count = count
                    if t is None:
                        state["step"].fill_(float(count))
                    else:
                        ts = fills.get(count)
                        if ts is None:
                            fills[count] = [t]
                        else:
                            ts.append(t)
        finally:
            # A float32 copy_ writes what fill_(float(count)) does, in one torch call per count.
            for count, ts in fills.items():
                src = torch.tensor(float(count), dtype=torch.float32)
                _FOREACH_COPY(ts, [src] * len(ts))

    def _step_batch(self, batch: "_Batch") -> None:
        """Steps parameters that share their step options in one library call (the library
        spreads the tensors over its threads)."""
        if len(batch.handles) == 1 or not _capi.has_step_many():
            for h, state, t, pp, gp in zip(batch.handles, batch.states, batch.steps, batch.param_ptrs, batch.grad_ptrs):
                self._step_one(h, state, t, pp, gp, batch.options, batch.no_inf)
            return
        ok = False
        try:
            _capi.step_many([h.ptr for h in batch.handles], batch.param_ptrs, batch.grad_ptrs, batch.options)
            ok = True
        finally:
            # Past its checks, a failed call may have stepped some tensors: keep every count true.
            self._record_step_counts(batch.handles, batch.states, batch.steps, ok and batch.no_inf)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:  # type: ignore[override]
        """Performs a single optimization step on every parameter that has a ``.grad``.

        Args:
            closure (Callable, optional): A closure that reevaluates the model and returns the
                loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # Validate every group first, so that a bad hyperparameter changes nothing.
        for group in self.param_groups:
            self._validate_group(group)
        scale, found_inf = self._scaler_tensors()
        no_inf = found_inf is None
        cache: Dict[Any, Any] = {}
        handles = self._mlorc_handles
        states = self.state
        # Every parameter is checked before any steps. Sharded parameters step one by one, in
        # order (their all-reduces must match across ranks); the others in one library call per
        # group and device.
        sharded: List[_Prepared] = []
        batches: Dict[Any, _Batch] = {}
        for group in self.param_groups:
            gsig = self._group_signature(group)
            batch: Optional[_Batch] = None  # the last parameter's
            for p in group["params"]:
                grad = p.grad
                if grad is None:
                    continue
                h = handles.get(id(p))
                state = h.unchanged(p, grad, gsig, states) if h is not None else None
                if state is not None:
                    # Nothing the checks depend on changed since they last passed.
                    step_t = self._sync_step_count(h, state)
                    device = h.device
                    if batch is None or batch.device != device:
                        batch = self._batch(batches, group, device, scale, found_inf, cache)
                    batch.add(h, state, step_t, p.data_ptr(), grad.data_ptr())
                    continue
                prep = self._prepare_param(p, group, gsig, scale, found_inf, cache)
                if prep is None:
                    continue
                if prep.handle.comm is not None:
                    sharded.append(prep)
                else:
                    batch = self._batch(batches, group, prep.options_key[2], scale, found_inf, cache)
                    batch.add(prep.handle, states[p], None, prep.param_ptr, prep.grad_ptr)
        for prep in sharded:
            self._step_prepared(prep, no_inf)
        for batch in batches.values():
            self._step_batch(batch)
        return loss

    def _batch(
        self,
        batches: Dict[Any, "_Batch"],
        group: Dict[str, Any],
        device: torch.device,
        scale: Optional[Tensor],
        found_inf: Optional[Tensor],
        cache: Dict[Any, Any],
    ) -> "_Batch":
        key = ("options", id(group), device)
        b = batches.get(key)
        if b is None:
            options = self._options(group, device, scale, found_inf, cache, key)
            b = batches[key] = _Batch(options, device, found_inf is None)
        return b

    @torch.no_grad()
    def step_param(self, p: Tensor) -> None:
        """Steps one parameter with its current ``.grad`` and its group's hyperparameters.

        Meant for fused backward passes (see :func:`register_fused_backward`): call it from a
        ``register_post_accumulate_grad_hook`` and free the gradient right after. Does nothing
        when ``p.grad`` is None.
        """
        if len(self._mlorc_group_of) != sum(len(g["params"]) for g in self.param_groups):
            self._reindex_groups()
        index = self._mlorc_group_of.get(id(p))
        if index is None:
            raise ValueError(f"{type(self).__name__}.step_param: this tensor is not one of the optimizer's parameters")
        group = self.param_groups[index]
        self._validate_group(group)
        self._opt_called = True  # what torch's LR-scheduler step wrapper records
        scale, found_inf = self._scaler_tensors()
        grad = p.grad
        if grad is None:
            return
        gsig = self._group_signature(group)
        h = self._mlorc_handles.get(id(p))
        state = h.unchanged(p, grad, gsig, self.state) if h is not None else None
        if state is not None:
            step_t = self._sync_step_count(h, state)
            key = ("options", id(group), h.device)
            options = self._options(group, h.device, scale, found_inf, {}, key)
            self._step_one(h, state, step_t, p.data_ptr(), grad.data_ptr(), options, found_inf is None)
            return
        prep = self._prepare_param(p, group, gsig, scale, found_inf, {})
        if prep is not None:
            self._step_prepared(prep, found_inf is None)

    # -- memory -----------------------------------------------------------------------------------

    def state_bytes(self) -> int:
        """Total bytes of optimizer state, held now or (for parameters not yet stepped) to be
        allocated at their first step: the sum of ``mlorc_state_memory_bytes`` /
        ``mlorc_state_bytes_required`` over all parameters.

        Per matrix of m×n with rank r: ``2·(m+n+1)·r·4`` bytes for AdamW, ``(m+n+1)·r·4`` for
        Lion; dense moments (``2·m·n·4`` / ``m·n·4``) for vectors and small matrices.
        The ``state['step']`` scalars are not counted. For sharded parameters this is what this
        rank holds: the whole (replicated) factors, or the dense moments of its own elements.
        """
        total = 0
        for group in self.param_groups:
            config = None
            for p in group["params"]:
                view = self._view(p)
                if view.numel == 0:
                    continue
                h = self._mlorc_handles.get(id(p))
                if h is not None:
                    total += _capi.state_memory_bytes(h.ptr)
                else:
                    config = config or self._config(group)
                    grad_dtype = p.grad.dtype if p.grad is not None else p.dtype
                    desc = self._desc(p, grad_dtype, view)
                    if view.sharded:
                        shard, _ = self._shard_struct(view)
                        total += _capi.shard_state_bytes_required(config, desc, shard)
                    else:
                        total += _capi.state_bytes_required(config, desc)
        return total

    # -- state_dict -------------------------------------------------------------------------------

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Loads optimizer state (from :meth:`state_dict`).

        The state dict is validated completely first — group sizes, and for every parameter the
        buffer names and shapes its (saved) group's rank/layout imply — so that a mismatched
        dict raises ``ValueError`` and leaves this optimizer unchanged. State buffers are kept in
        float32 whatever the parameter dtype (torch's default loading would cast them to it) and
        copied, so the loaded dict is never written to.
        """
        name = type(self).__name__
        groups = self.param_groups
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError(f"{name}.load_state_dict: expected a dict with 'state' and 'param_groups'")
        saved_groups = state_dict["param_groups"]
        if len(groups) != len(saved_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        if any(len(g["params"]) != len(s["params"]) for g, s in zip(groups, saved_groups)):
            raise ValueError("loaded state dict contains a parameter group that doesn't match the size of optimizer's group")
        id_map: Dict[Any, Tuple[Tensor, Dict[str, Any]]] = {}
        for g, s in zip(groups, saved_groups):
            merged = dict(self.defaults)
            merged.update({k: v for k, v in s.items() if k != "params"})
            try:
                self._validate_group(merged, "loaded param group")
            except KeyError as e:
                raise ValueError(f"{name}.load_state_dict: a saved param group lacks {e}") from None
            for saved_id, p in zip(s["params"], g["params"]):
                id_map[saved_id] = (p, merged)
        loaded: Dict[Tensor, Dict[str, Any]] = {}
        for k, v in state_dict["state"].items():
            if k not in id_map:
                continue
            p, merged = id_map[k]
            if not isinstance(v, dict):
                raise ValueError(f"{name}.load_state_dict: the state of parameter {k} is not a dict")
            if not v:
                continue
            view = self._view(p)
            if view.numel == 0:
                continue
            infos = self._buffer_infos(self._config(merged), self._desc(p, p.dtype, view), view)
            expected = {n: (r, c) for n, r, c in infos}
            missing = [n for n in ["step", *expected] if n not in v]
            extra = [n for n in v if n != "step" and n not in expected]
            if missing or extra:
                raise ValueError(
                    f"{name}.load_state_dict: state of parameter {k} (shape {tuple(p.shape)}) has "
                    f"keys {sorted(v)}; expected 'step' and {list(expected)}"
                    + (f"; missing {missing}" if missing else "")
                    + (f"; unexpected {extra}" if extra else "")
                )
            step = v["step"]
            step_value = float(step.item()) if isinstance(step, Tensor) else step
            if not isinstance(step_value, (int, float)) or not (step_value >= 0 and float(step_value).is_integer()):
                raise ValueError(f"{name}.load_state_dict: state['step'] of parameter {k} is {step!r}")
            fixed: Dict[str, Any] = {"step": torch.tensor(float(step_value), dtype=torch.float32)}
            for n, shape in expected.items():
                t = v[n]
                if (
                    view.sharded
                    and isinstance(t, Tensor)
                    and tuple(t.shape) == (view.rows, view.cols)
                    and shape == (1, view.end - view.begin)
                ):
                    # Dense moments of the whole matrix (an unsharded run's checkpoint, or one
                    # gathered from every rank) into a shard: keep this shard's elements.
                    t = t.reshape(-1)[view.begin : view.end].reshape(shape)
                if not isinstance(t, Tensor) or not t.is_floating_point() or tuple(t.shape) != shape:
                    got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
                    raise ValueError(
                        f"{name}.load_state_dict: buffer {n!r} of parameter {k} (shape "
                        f"{tuple(p.shape)}) must be a float tensor of shape {shape}; got {got}"
                    )
                fixed[n] = t
            loaded[p] = fixed
        super().load_state_dict(state_dict)
        # Replace what torch cast to the parameter dtype by float32 copies of the saved buffers.
        for p, fixed in loaded.items():
            st = self.state[p]
            st.clear()
            st["step"] = fixed.pop("step")
            for n, t in fixed.items():
                st[n] = t.detach().to(device=p.device, dtype=torch.float32, copy=True).contiguous()
        _destroy_handles(self._mlorc_handles)
        self._reindex_groups()

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)
        if not hasattr(self, "_mlorc_handles"):  # unpickled / deep-copied optimizer
            self._mlorc_handles = {}
            self._mlorc_finalizer = weakref.finalize(self, _destroy_handles, self._mlorc_handles)
            self._reindex_groups()
        if not hasattr(self, "_mlorc_placeholders"):
            self._mlorc_placeholders = {}
        if not hasattr(self, "_mlorc_comms"):
            # A process group does not survive pickling: sharded parameters of an unpickled
            # optimizer use their DTensor mesh group / FlatShard group / the default group.
            self._mlorc_process_group = None
            self._mlorc_comms = {}

    def __getstate__(self) -> Dict[str, Any]:
        return {"defaults": self.defaults, "state": self.state, "param_groups": self.param_groups}


_COMMON_DOC = r"""
    **What MLorc is.** MLorc (Momentum Low-rank compression, Shen et al., arXiv 2506.01897)
    keeps each moment of a weight matrix W (m×n) only as a rank-r factorization
    ``U·diag(S)·Vᵀ`` (U: m×r, S: r, V: n×r). At every step the library rebuilds the moments,
    updates them with the *full* gradient, updates W with them (a full-rank update, unlike
    LoRA; the compression acts on the momentum, not on the gradient, unlike GaLore), and
    compresses them again with a randomized SVD. The numerics run in the native library
    ``libmlorc`` (f32 arithmetic, multi-threaded on the CPU).

    **Parameter shapes.** 0-d and 1-d tensors are treated as a 1×numel matrix (so AUTO layout
    gives them dense moments); an N-d tensor as ``shape[0] × (numel // shape[0])``.
    Parameters must be contiguous (the library updates them in place; no hidden m×n copy is
    made: a ``ValueError`` says so). Sparse gradients raise ``RuntimeError``.

    **Memory.** Per matrix (m×n, rank r = min(rank, m, n)) the state is
    ``{formula}`` bytes ({moments}), instead of the ``{dense}`` bytes of dense moments.
    Vectors and small matrices — those where ``(m+n+1)·r ≥ m·n`` — keep dense moments (plain
    {plain}) under ``layout="auto"``. :meth:`state_bytes` returns the total. Factors are f32
    whatever the parameter dtype.

    **Dtypes.** Parameters and gradients may be float32, float16 or bfloat16 (independently);
    arithmetic is f32, f16/bf16 parameters are written back rounded to nearest even (or
    stochastically with ``stochastic_rounding=True``). Other dtypes (float64, ...) raise
    ``TypeError``.

    **Devices.** CPU today. CUDA parameters are passed to the library with their device
    ordinal and ``torch.cuda.current_stream()``; a library built without CUDA answers
    ``MLORC_ERROR_UNSUPPORTED``, raised as :class:`mlorc.MlorcError`.

    **Learning rate.** ``lr`` may be a float or a one-element tensor (passed by pointer, so it
    can change without re-capturing CUDA graphs). torch LR schedulers work: they set
    ``group['lr']`` before each step. Changing ``betas``/``weight_decay``/... of a group takes
    effect at the next step; ``rank``, ``oversampling`` and ``layout`` cannot change once a
    parameter has state.

    **GradScaler.** Like torch's fused optimizers (``_step_supports_amp_scaling = True``):
    ``torch.amp.GradScaler.step(opt)`` does not unscale the gradients itself but sets
    ``opt.grad_scale`` and ``opt.found_inf``; the library divides the gradient by the scale
    inside the step and, when ``found_inf`` is non-zero, changes nothing — neither
    parameters, nor moments, nor ``state['step']``. ``scaler.unscale_(opt)`` before ``step``
    (e.g. for gradient clipping) works as usual.

    **Fused backward.** :meth:`step_param` steps one parameter; :func:`register_fused_backward`
    registers ``register_post_accumulate_grad_hook`` hooks that step each parameter as soon
    as its gradient is ready and free the gradient (``p.grad = None``), so that the whole set
    of gradients never exists at once. LR schedulers keep working (they change
    ``group['lr']``, which each hook reads).

    **state_dict.** ``self.state[p]`` holds ``'step'`` (a float32 scalar tensor, as
    torch.optim.AdamW) and one float32 tensor per library buffer, named as the C API names
    them: ``{names}`` (FACTORED) or ``{dense_names}`` (DENSE), shapes ``(m, r)``, ``(1, r)``,
    ``(n, r)`` / ``(m, n)``. The library works on these tensors in place, so
    ``state_dict()``, ``load_state_dict()`` and ``torch.save`` behave as with any torch
    optimizer, and a resumed run continues bit-exactly (the random sketches are a function
    of ``seed`` and the step). ``load_state_dict`` validates names and shapes first and
    leaves the optimizer unchanged on a mismatch.

    **Sharded parameters (FSDP2, ZeRO-style ranges).** A parameter that is an FSDP2 DTensor
    (``torch.distributed.fsdp.fully_shard``: placement ``Shard(0)``, possibly
    ``(Replicate(), Shard(0))`` for HSDP) is stepped on its local shard: the library gets the
    shard's element range ``[begin, end)`` of the whole ``m×n`` matrix and sums its sketches of
    the whole matrix across ranks with ``torch.distributed.all_reduce`` over the DTensor's mesh
    group (or ``process_group`` when given). A plain tensor marked with
    :func:`mlorc.torch.flat_shard` holds any range (mid-row, or empty) of a parameter of a
    given shape. The result equals the unsharded step on the gathered matrix within f32
    rounding. Per step and FACTORED matrix, each rank all-reduces
    ``(q+1)·{n_moments}·(m+n)·k`` floats in ``2·(q+1)`` calls{extra_reduce}, k = min(r+p, m, n);
    dense moments (vectors, small matrices) need no communication. :meth:`comm_stats` counts
    them. Every rank must call ``step()`` together (same parameters with gradients, same lr and
    GradScaler state); an empty shard still takes part. The factors of a sharded matrix are
    the same on every rank (``state_dict()`` of any rank holds them, and they load into any
    sharding of the same matrix); dense moments are per rank, shape ``(1, end - begin)``
    (``load_state_dict`` also accepts whole-matrix dense moments and keeps this rank's slice).
    CPU only in this version. A failed all-reduce raises :class:`mlorc.MlorcCollectiveError`.
"""


class MLorcAdamW(_MLorcBase):
    __doc__ = (
        r"""MLorc-AdamW: AdamW whose two moments are stored as rank-``rank`` factors.

    With exact moments (``layout="dense"``, or rank ≥ min(m, n)) a step equals
    ``torch.optim.AdamW`` up to f32 rounding: weight decay ``W ← W·(1 − lr·wd)`` first, then
    ``W ← W − lr/(1−β1^t) · M / (sqrt(V)/sqrt(1−β2^t) + eps)``.

    Args:
        params (iterable): iterable of parameters or dicts defining parameter groups.
        lr (float or Tensor, optional): learning rate (default: 1e-3).
        betas (Tuple[float, float], optional): decay rates of the first and second moments,
            each in [0, 1) (default: (0.9, 0.999)).
        eps (float, optional): added to the denominator (default: 1e-8).
        weight_decay (float, optional): decoupled weight decay (default: 1e-2).
        rank (int, optional): rank r of the stored factors, ≥ 1; clamped to min(m, n)
            (default: 4).
        oversampling (int, optional): oversampling p of the randomized SVD, sketch width
            r + p (default: 0).
        power_iters (int, optional): power iterations q of the randomized SVD (default: 0;
            the paper's code uses 1 — more accurate, twice the sweeps).
        layout (str, optional): ``"auto"`` (factors when (m+n+1)·r < m·n, else dense),
            ``"factored"`` or ``"dense"`` (plain AdamW) (default: ``"auto"``).
        bias_correction (bool, optional): Adam bias correction (default: True).
        stochastic_rounding (bool, optional): write f16/bf16 parameters back with stochastic
            rounding instead of round-to-nearest-even (default: False).
        seed (int, optional): seed of the random sketches (and of stochastic rounding);
            None uses the library's default seed (default: None).
        process_group (ProcessGroup, optional): the group that the all-reduces of sharded
            parameters go through; None: each DTensor's mesh group along its sharded
            dimension, and for :func:`flat_shard` tensors their own group or else the default
            group (default: None). Not part of ``state_dict``.
"""
        + _COMMON_DOC.format(
            formula="2·(m+n+1)·r·4",
            moments="two moments of (m+n+1)·r float32 each",
            dense="2·m·n·4",
            plain="AdamW",
            names="exp_avg.u, exp_avg.s, exp_avg.v, exp_avg_sq.u, exp_avg_sq.s, exp_avg_sq.v",
            dense_names="exp_avg, exp_avg_sq",
            n_moments="2",
            extra_reduce=" (+ one call of 4 floats after the first step)",
        )
        + r"""
    Example:
        >>> opt = MLorcAdamW(model.parameters(), lr=1e-4, rank=4)
        >>> loss_fn(model(x), y).backward()
        >>> opt.step(); opt.zero_grad()
    """
    )

    _algorithm = _capi.MLORC_ADAMW
    _uses_eps = True

    def __init__(
        self,
        params: ParamsT,
        lr: Union[float, Tensor] = 1e-3,
        betas: Tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        rank: int = 4,
        oversampling: int = 0,
        power_iters: int = 0,
        layout: str = "auto",
        bias_correction: bool = True,
        stochastic_rounding: bool = False,
        seed: Optional[int] = None,
        process_group: Any = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=tuple(betas) if isinstance(betas, (list, tuple)) else betas,
            eps=eps,
            weight_decay=weight_decay,
            rank=rank,
            oversampling=oversampling,
            power_iters=power_iters,
            layout=layout,
            bias_correction=bias_correction,
            stochastic_rounding=stochastic_rounding,
            seed=seed,
        )
        super().__init__(params, defaults, process_group=process_group)


class MLorcLion(_MLorcBase):
    __doc__ = (
        r"""MLorc-Lion: Lion whose momentum is stored as rank-``rank`` factors.

    Step (lucidrains/Chen et al. semantics, sign(0) = 0): ``c = β1·M + (1−β1)·g``;
    ``W ← W·(1 − lr·wd)``; ``W ← W − lr·sign(c)``; ``M ← β2·M + (1−β2)·g``.

    Args:
        params (iterable): iterable of parameters or dicts defining parameter groups.
        lr (float or Tensor, optional): learning rate (default: 1e-4).
        betas (Tuple[float, float], optional): β1 interpolates the update, β2 decays the
            momentum, each in [0, 1) (default: (0.95, 0.98)).
        weight_decay (float, optional): decoupled weight decay (default: 5e-2).
        rank (int, optional): rank r of the stored factors, ≥ 1; clamped to min(m, n)
            (default: 4).
        oversampling (int, optional): oversampling p of the randomized SVD (default: 0).
        power_iters (int, optional): power iterations q of the randomized SVD (default: 0).
        layout (str, optional): ``"auto"``, ``"factored"`` or ``"dense"`` (plain Lion)
            (default: ``"auto"``).
        stochastic_rounding (bool, optional): stochastic rounding of f16/bf16 parameters
            (default: False).
        seed (int, optional): seed of the random sketches; None: the library default
            (default: None).
        process_group (ProcessGroup, optional): the group of the all-reduces of sharded
            parameters (see MLorcAdamW) (default: None).
"""
        + _COMMON_DOC.format(
            formula="(m+n+1)·r·4",
            moments="one moment",
            dense="m·n·4",
            plain="Lion",
            names="exp_avg.u, exp_avg.s, exp_avg.v",
            dense_names="exp_avg",
            n_moments="1",
            extra_reduce="",
        )
    )

    _algorithm = _capi.MLORC_LION
    _uses_eps = False

    def __init__(
        self,
        params: ParamsT,
        lr: Union[float, Tensor] = 1e-4,
        betas: Tuple[float, float] = (0.95, 0.98),
        weight_decay: float = 5e-2,
        rank: int = 4,
        oversampling: int = 0,
        power_iters: int = 0,
        layout: str = "auto",
        stochastic_rounding: bool = False,
        seed: Optional[int] = None,
        process_group: Any = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=tuple(betas) if isinstance(betas, (list, tuple)) else betas,
            weight_decay=weight_decay,
            rank=rank,
            oversampling=oversampling,
            power_iters=power_iters,
            layout=layout,
            stochastic_rounding=stochastic_rounding,
            seed=seed,
        )
        super().__init__(params, defaults, process_group=process_group)


def register_fused_backward(
    model_or_params: Union[torch.nn.Module, Iterable[Tensor]],
    optimizer: _MLorcBase,
) -> List[Any]:
    """Steps each parameter during ``backward()``, as soon as its gradient is accumulated.

    Registers ``register_post_accumulate_grad_hook`` on every parameter (that requires grad)
    of ``model_or_params``; the hook calls ``optimizer.step_param(p)`` and then sets
    ``p.grad = None``, so gradients of the whole model never exist at once (the memory
    pattern of OneTrainer / ai-toolkit). Afterwards a training step is just::

        loss.backward()      # parameters are updated here
        scheduler.step()     # LR schedulers still work: they change group['lr']

    Do not call ``optimizer.step()`` or accumulate gradients over several backward passes
    with the hooks in place. Every parameter must belong to ``optimizer``.

    Returns:
        list of ``torch.utils.hooks.RemovableHandle``; call ``.remove()`` on each to undo.
    """
    if not isinstance(optimizer, _MLorcBase):
        raise TypeError("register_fused_backward needs an MLorcAdamW or MLorcLion optimizer")
    params = model_or_params.parameters() if isinstance(model_or_params, torch.nn.Module) else model_or_params
    known = {id(p) for g in optimizer.param_groups for p in g["params"]}
    opt_ref = weakref.ref(optimizer)

    def hook(p: Tensor) -> None:
        opt = opt_ref()
        if opt is None:
            return
        opt.step_param(p)
        p.grad = None

    handles = []
    for p in params:
        if not p.requires_grad:
            continue
        if id(p) not in known:
            for h in handles:
                h.remove()
            raise ValueError(
                f"register_fused_backward: a parameter of shape {tuple(p.shape)} is not managed by the optimizer"
            )
        handles.append(p.register_post_accumulate_grad_hook(hook))
    return handles
