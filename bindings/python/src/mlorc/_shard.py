"""Sharded parameters for the PyTorch optimizers: FSDP2 DTensors, ZeRO-style flat ranges, and the
all-reduce callback the library calls (``MlorcAllReduceFn``) built on ``torch.distributed``.

The library (``mlorc_state_create_sharded``) holds, per rank, elements ``[begin, end)`` of the
row-major ``rows × cols`` matrix a parameter is seen as (``shape[0] × numel/shape[0]``; 1-d:
``1 × numel``). What this module works out for each parameter is that range, the tensors the
library reads and writes (the local shard of the parameter and of its gradient) and the process
group its all-reduces go through.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import _capi

__all__ = ["FlatShard", "flat_shard", "TorchAllReduce"]

_ATTR = "_mlorc_flat_shard"


def _matrix_dims(shape: Sequence[int]) -> Tuple[int, int]:
    """(rows, cols) of a tensor of this shape as the library sees it (0-d/1-d: 1 × numel)."""
    numel = math.prod(shape) if len(shape) else 1
    if len(shape) <= 1:
        return 1, numel
    return int(shape[0]), (numel // shape[0] if shape[0] else 0)


# ------------------------------------------------------------------------------------------------
# The all-reduce callback
# ------------------------------------------------------------------------------------------------


class TorchAllReduce:
    """An ``MlorcAllReduceFn`` that sums in place with ``torch.distributed.all_reduce`` over
    ``group`` (None: the default group).

    The library calls it from inside ``mlorc_step`` (and ``mlorc_state_create_sharded``) on the
    calling thread, with a host buffer of ``count`` floats; it is wrapped as a float32 tensor
    sharing that memory (no copy) and all-reduced in place. Every exception is caught inside the
    callback — none may cross ctypes — kept in :attr:`error`, and reported to the library as a
    non-zero return, which fails the step with ``MLORC_ERROR_COLLECTIVE``; the optimizer then
    raises :class:`mlorc.MlorcCollectiveError` with that exception as its ``__cause__``.

    Counters (this rank's view, cumulative; :meth:`reset_counters` zeroes them):
    :attr:`calls` (all-reduce calls), :attr:`floats` (float32 elements all-reduced),
    :attr:`bytes` (= 4·floats: the payload each rank contributes per call, not the wire
    traffic of the reduction algorithm).

    The ctypes function object is :attr:`fn`; it must stay alive as long as any state that holds
    it, which the optimizer ensures by keeping this object on every handle that uses it.
    """

    def __init__(self, group: Any = None) -> None:
        self.group = group
        self.calls = 0
        self.floats = 0
        self.error: Optional[BaseException] = None
        self.fn = _capi.MlorcAllReduceFn(self._call)

    @property
    def bytes(self) -> int:
        return 4 * self.floats

    def reset_counters(self) -> None:
        self.calls = 0
        self.floats = 0

    def _call(self, data, count, stream, context) -> int:  # noqa: ARG002 - context unused
        try:
            n = int(count)
            if stream:
                raise RuntimeError(
                    "mlorc TorchAllReduce: a device stream was passed; this callback only reduces "
                    "host (CPU) buffers"
                )
            if n > 0:
                address = ctypes.cast(data, ctypes.c_void_p).value
                if not address:
                    raise RuntimeError(f"mlorc TorchAllReduce: NULL buffer for {n} floats")
                buf = (ctypes.c_float * n).from_address(address)
                t = torch.frombuffer(buf, dtype=torch.float32, count=n)
                torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM, group=self.group)
            self.calls += 1
            self.floats += n
            return 0
        except BaseException as e:  # noqa: BLE001 - nothing may propagate through ctypes
            self.error = e
            return 1

    def take_error(self) -> Optional[BaseException]:
        e, self.error = self.error, None
        return e


# ------------------------------------------------------------------------------------------------
# ZeRO-style flat ranges
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlatShard:
    """What :func:`flat_shard` attaches to a tensor: it holds elements ``[begin, end)`` of the
    row-major flattening of a parameter of shape ``full_shape``; all-reduces go through
    ``process_group`` (None: the optimizer's ``process_group``, else the default group)."""

    full_shape: Tuple[int, ...]
    begin: int
    end: int
    process_group: Any = None

    @property
    def rows_cols(self) -> Tuple[int, int]:
        return _matrix_dims(self.full_shape)


def flat_shard(tensor: Tensor, full_shape: Sequence[int], begin: int, end: int, process_group: Any = None) -> Tensor:
    """Marks ``tensor`` as elements ``[begin, end)`` of a parameter of shape ``full_shape``, for
    ZeRO-style partitions whose boundaries fall anywhere (mid-row, or nowhere: ``begin == end``).

    ``tensor`` is this rank's piece, contiguous, with ``end - begin`` elements in the row-major
    order of the whole parameter (any shape; typically a 1-d view into a flat partition). Its
    ``.grad`` must be the same elements of the full gradient. Returns ``tensor`` itself, so::

        seg = flat_shard(flat_partition[a:b], w.shape, begin, end, group)
        opt = MLorcAdamW([seg, ...], process_group=group)

    Every rank of the group must pass, in the same order, a piece (possibly empty) of every
    sharded parameter, and step together: the library all-reduces sketches of the whole matrix.
    An empty piece still needs a ``.grad`` (an empty tensor), or ranks would disagree on which
    parameters step.
    """
    if not isinstance(tensor, Tensor):
        raise TypeError(f"flat_shard: expected a Tensor, got {type(tensor).__name__}")
    shape = tuple(int(s) for s in full_shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"flat_shard: invalid full_shape {tuple(full_shape)}")
    total = math.prod(shape) if shape else 1
    for name, v in (("begin", begin), ("end", end)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"flat_shard: {name} must be an int, got {v!r}")
    if not 0 <= begin <= end <= total:
        raise ValueError(f"flat_shard: need 0 <= begin <= end <= {total} (numel of {shape}); got [{begin}, {end})")
    if tensor.numel() != end - begin:
        raise ValueError(
            f"flat_shard: the tensor has {tensor.numel()} elements but [{begin}, {end}) holds {end - begin}"
        )
    if not tensor.is_contiguous():
        raise ValueError("flat_shard: the tensor must be contiguous (the library updates it in place)")
    setattr(tensor, _ATTR, FlatShard(shape, begin, end, process_group))
    return tensor


def flat_shard_of(tensor: Tensor) -> Optional[FlatShard]:
    """The :class:`FlatShard` marker of a tensor, or None."""
    return getattr(tensor, _ATTR, None)


# ------------------------------------------------------------------------------------------------
# How the library sees one parameter
# ------------------------------------------------------------------------------------------------


@dataclass
class ParamView:
    """One parameter as the library sees it."""

    rows: int
    cols: int
    sharded: bool  # a sharded state (collectives for FACTORED layout) or a plain one
    begin: int
    end: int
    group: Any  # the process group of the all-reduces (None: default group); unused unsharded
    local: Tensor  # the tensor the library updates in place (end - begin elements)
    kind: str  # "plain", "dtensor" or "flat"

    @property
    def numel(self) -> int:
        return self.rows * self.cols

    def local_grad(self, p: Tensor) -> Optional[Tensor]:
        g = p.grad
        if g is None:
            return None
        if self.kind == "dtensor":
            if not _is_dtensor(g):
                raise RuntimeError(
                    "a DTensor parameter has a plain-tensor gradient; expected a DTensor with the "
                    "parameter's placements"
                )
            if tuple(g.placements) != tuple(p.placements):
                raise RuntimeError(
                    f"gradient placements {tuple(g.placements)} differ from the parameter's "
                    f"{tuple(p.placements)}"
                )
            return g.to_local()
        return g


_DTENSOR: Any = None  # torch's DTensor class once looked up; False where torch lacks it


def _is_dtensor(t: Any) -> bool:
    # Called for every parameter at every step: the import is looked up once.
    global _DTENSOR
    if _DTENSOR is None:
        try:
            from torch.distributed.tensor import DTensor

            _DTENSOR = DTensor
        except Exception:  # pragma: no cover - torch without distributed
            _DTENSOR = False
    return _DTENSOR is not False and isinstance(t, _DTENSOR)


def _dtensor_view(p: Tensor, process_group: Any) -> ParamView:
    from torch.distributed.tensor.placement_types import Partial, Replicate, Shard

    mesh = p.device_mesh
    placements = tuple(p.placements)
    rows, cols = _matrix_dims(tuple(p.shape))
    local = p.to_local()
    shard_dims = []
    for mesh_dim, pl in enumerate(placements):
        if isinstance(pl, Replicate):
            continue
        if isinstance(pl, Partial):
            raise NotImplementedError(f"mlorc: DTensor parameters with a Partial placement are not supported ({placements})")
        if type(pl) is Shard and pl.dim == 0:
            shard_dims.append(mesh_dim)
            continue
        raise NotImplementedError(
            f"mlorc: a DTensor parameter with placements {placements} holds no contiguous range of "
            "its row-major elements. Supported: Shard(0) (FSDP2's default, fully_shard) on one mesh "
            "dimension and Replicate on the others. For other layouts pass the local pieces with "
            "mlorc.torch.flat_shard."
        )
    if len(shard_dims) > 1:
        raise NotImplementedError(
            f"mlorc: a DTensor parameter sharded on dim 0 over several mesh dimensions ({placements}) "
            "is not supported; use a single Shard(0) mesh dimension (HSDP: (Replicate(), Shard(0)))"
        )
    if not shard_dims or mesh.size(shard_dims[0]) == 1:
        if local.numel() != p.numel():
            raise RuntimeError(f"mlorc: replicated DTensor with a local tensor of {local.numel()} of {p.numel()} elements")
        return ParamView(rows, cols, False, 0, rows * cols, None, local, "dtensor")
    mesh_dim = shard_dims[0]
    n_dim0 = p.shape[0] if p.dim() >= 1 else 1
    row_elems = p.numel() // n_dim0 if n_dim0 else 0
    # torch.chunk semantics (what DTensor's Shard uses): ceil-sized chunks, the last ranks may
    # get fewer rows or none.
    world = mesh.size(mesh_dim)
    coord = mesh.get_local_rank(mesh_dim)
    chunk = -(-n_dim0 // world) if n_dim0 else 0
    start = min(coord * chunk, n_dim0)
    length = max(0, min(chunk, n_dim0 - start))
    try:  # cross-check with DTensor's own bookkeeping where available
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        lshape, offset = compute_local_shape_and_global_offset(p.shape, mesh, placements)
        if p.dim() >= 1 and (int(offset[0]) != start or int(lshape[0]) != length):
            start, length = int(offset[0]), int(lshape[0])
    except ImportError:  # pragma: no cover - older torch
        pass
    if tuple(local.shape[:1]) != ((length,) if p.dim() >= 1 else ()) or local.numel() != length * row_elems:
        raise RuntimeError(
            f"mlorc: the local shard of a DTensor of shape {tuple(p.shape)} has shape {tuple(local.shape)}; "
            f"expected {length} rows starting at row {start}"
        )
    group = process_group if process_group is not None else mesh.get_group(mesh_dim)
    return ParamView(rows, cols, True, start * row_elems, (start + length) * row_elems, group, local, "dtensor")


def param_view(p: Tensor, process_group: Any = None) -> ParamView:
    """How the library sees parameter ``p``; ``process_group`` overrides the group of sharded
    parameters (DTensor mesh group / FlatShard group / default group)."""
    marker = flat_shard_of(p)
    if marker is not None:
        rows, cols = marker.rows_cols
        group = marker.process_group if marker.process_group is not None else process_group
        return ParamView(rows, cols, True, marker.begin, marker.end, group, p, "flat")
    if _is_dtensor(p):
        return _dtensor_view(p, process_group)
    rows, cols = _matrix_dims(tuple(p.shape))
    return ParamView(rows, cols, False, 0, rows * cols, None, p, "plain")
