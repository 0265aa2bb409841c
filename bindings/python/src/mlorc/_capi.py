"""Thin ctypes layer over the C API of libmlorc (``include/mlorc.h``), one to one.

Everything that touches raw pointers lives here: the ctypes mirrors of the header's structs,
its constants, the prototype table (``PROTOTYPES``: restype and argtypes of every exported
function, applied to the library when it is loaded), and one small Python wrapper per C
function that checks the status and turns every non-OK status into :class:`MlorcError`.

Pointers cross this layer as plain Python integers (``tensor.data_ptr()``); the wrappers cast
them. The rest of the package never does pointer arithmetic.
"""

from __future__ import annotations

import array
import ctypes
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    byref,
    c_char_p,
    c_double,
    c_float,
    c_int32,
    c_size_t,
    c_uint32,
    c_uint64,
    c_void_p,
    sizeof,
)
from typing import Dict, List, Optional, Sequence, Tuple

from . import _loader

# --------------------------------------------------------------------------------------------
# Constants (include/mlorc.h)
# --------------------------------------------------------------------------------------------

#: The C ABI this binding was written against (MLORC_ABI_VERSION).
ABI_VERSION = 1

MLORC_OK = 0
MLORC_ERROR_INVALID_ARGUMENT = 1
MLORC_ERROR_UNSUPPORTED = 2
MLORC_ERROR_OUT_OF_MEMORY = 3
MLORC_ERROR_CORRUPT_CHECKPOINT = 4
MLORC_ERROR_DEVICE = 5
MLORC_ERROR_DEVICE_UNAVAILABLE = 6
MLORC_ERROR_INTERNAL = 7
#: The all-reduce callback of a sharded state returned non-zero (raised as MlorcCollectiveError).
MLORC_ERROR_COLLECTIVE = 8

MLORC_ADAMW = 0
MLORC_LION = 1

MLORC_F32 = 0
MLORC_F16 = 1
MLORC_BF16 = 2

MLORC_DEVICE_CPU = 0
MLORC_DEVICE_CUDA = 1

MLORC_LAYOUT_AUTO = 0
MLORC_LAYOUT_FACTORED = 1
MLORC_LAYOUT_DENSE = 2

STATUS_NAMES: Dict[int, str] = {
    MLORC_OK: "MLORC_OK",
    MLORC_ERROR_INVALID_ARGUMENT: "MLORC_ERROR_INVALID_ARGUMENT",
    MLORC_ERROR_UNSUPPORTED: "MLORC_ERROR_UNSUPPORTED",
    MLORC_ERROR_OUT_OF_MEMORY: "MLORC_ERROR_OUT_OF_MEMORY",
    MLORC_ERROR_CORRUPT_CHECKPOINT: "MLORC_ERROR_CORRUPT_CHECKPOINT",
    MLORC_ERROR_DEVICE: "MLORC_ERROR_DEVICE",
    MLORC_ERROR_DEVICE_UNAVAILABLE: "MLORC_ERROR_DEVICE_UNAVAILABLE",
    MLORC_ERROR_INTERNAL: "MLORC_ERROR_INTERNAL",
    MLORC_ERROR_COLLECTIVE: "MLORC_ERROR_COLLECTIVE",
}

# Typedefs of the header (all uint32_t).
MlorcStatus = c_uint32
MlorcAlgorithm = c_uint32
MlorcLayout = c_uint32
MlorcDtype = c_uint32
MlorcDevice = c_uint32
#: ``struct MlorcState *``: an opaque handle, carried as a void pointer.
MlorcStatePtr = c_void_p

#: ``typedef int32_t (*MlorcAllReduceFn)(float *data, size_t count, void *stream, void *context)``:
#: sums ``count`` floats at ``data`` in place across the group; 0 on success. Python callables
#: wrapped in it must never raise (ctypes would print and return 0) and must be kept alive as
#: long as any state that holds them (see mlorc.torch's TorchAllReduce).
MlorcAllReduceFn = CFUNCTYPE(c_int32, POINTER(c_float), c_size_t, c_void_p, c_void_p)


# --------------------------------------------------------------------------------------------
# Structs (exact field order and types of include/mlorc.h)
# --------------------------------------------------------------------------------------------


class MlorcConfig(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("algorithm", MlorcAlgorithm),
        ("layout", MlorcLayout),
        ("rank", c_uint32),
        ("oversampling", c_uint32),
        ("power_iters", c_uint32),
        ("bias_correction", c_uint32),
        ("stochastic_rounding", c_uint32),
        ("beta1", c_double),
        ("beta2", c_double),
        ("eps", c_double),
        ("weight_decay", c_double),
        ("seed", c_uint64),
    ]


class MlorcTensorDesc(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("rows", c_size_t),
        ("cols", c_size_t),
        ("param_dtype", MlorcDtype),
        ("grad_dtype", MlorcDtype),
        ("device", MlorcDevice),
        ("device_ordinal", c_int32),
    ]


class MlorcStepOptions(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("lr", c_double),
        ("lr_ptr", POINTER(c_float)),
        ("grad_scale", POINTER(c_float)),
        ("found_inf", POINTER(c_float)),
        ("stream", c_void_p),
    ]


class MlorcBufferInfo(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("name", c_char_p),
        ("rows", c_size_t),
        ("cols", c_size_t),
        ("dtype", MlorcDtype),
        ("bytes", c_size_t),
    ]


class MlorcShard(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("begin", c_uint64),
        ("end", c_uint64),
        ("all_reduce", MlorcAllReduceFn),
        ("all_reduce_context", c_void_p),
    ]


STRUCTS = {
    "MlorcConfig": MlorcConfig,
    "MlorcTensorDesc": MlorcTensorDesc,
    "MlorcStepOptions": MlorcStepOptions,
    "MlorcBufferInfo": MlorcBufferInfo,
    "MlorcShard": MlorcShard,
}

# --------------------------------------------------------------------------------------------
# Prototypes: name -> (restype, argtypes). Checked against the header by tests/test_capi_header.py.
# --------------------------------------------------------------------------------------------

_P = POINTER
PROTOTYPES: Dict[str, Tuple[object, List[object]]] = {
    "mlorc_abi_version": (c_uint32, []),
    "mlorc_version": (c_char_p, []),
    "mlorc_status_string": (c_char_p, [MlorcStatus]),
    "mlorc_last_error_message": (c_char_p, []),
    "mlorc_config_init": (MlorcStatus, [_P(MlorcConfig), MlorcAlgorithm]),
    "mlorc_tensor_desc_init": (MlorcStatus, [_P(MlorcTensorDesc), c_size_t, c_size_t, MlorcDtype]),
    "mlorc_step_options_init": (MlorcStatus, [_P(MlorcStepOptions), c_double]),
    "mlorc_buffer_count": (MlorcStatus, [_P(MlorcConfig), _P(MlorcTensorDesc), _P(c_size_t)]),
    "mlorc_buffer_info": (
        MlorcStatus,
        [_P(MlorcConfig), _P(MlorcTensorDesc), c_size_t, _P(MlorcBufferInfo)],
    ),
    "mlorc_state_bytes_required": (
        MlorcStatus,
        [_P(MlorcConfig), _P(MlorcTensorDesc), _P(c_size_t)],
    ),
    "mlorc_resolve_layout": (MlorcStatus, [_P(MlorcConfig), _P(MlorcTensorDesc), _P(MlorcLayout)]),
    "mlorc_state_create": (
        MlorcStatus,
        [_P(MlorcConfig), _P(MlorcTensorDesc), _P(MlorcStatePtr)],
    ),
    "mlorc_state_create_with_buffers": (
        MlorcStatus,
        [_P(MlorcConfig), _P(MlorcTensorDesc), _P(_P(c_float)), c_size_t, _P(MlorcStatePtr)],
    ),
    "mlorc_state_destroy": (None, [MlorcStatePtr]),
    "mlorc_step": (MlorcStatus, [MlorcStatePtr, c_void_p, c_void_p, _P(MlorcStepOptions)]),
    "mlorc_step_many": (MlorcStatus, [_P(MlorcStatePtr), _P(c_void_p), _P(c_void_p), c_size_t, _P(MlorcStepOptions)]),
    "mlorc_state_step_count": (MlorcStatus, [MlorcStatePtr, _P(c_uint64)]),
    "mlorc_state_set_step_count": (MlorcStatus, [MlorcStatePtr, c_uint64]),
    "mlorc_state_memory_bytes": (MlorcStatus, [MlorcStatePtr, _P(c_size_t)]),
    "mlorc_state_layout": (MlorcStatus, [MlorcStatePtr, _P(MlorcLayout)]),
    "mlorc_state_get_config": (MlorcStatus, [MlorcStatePtr, _P(MlorcConfig)]),
    "mlorc_state_set_config": (MlorcStatus, [MlorcStatePtr, _P(MlorcConfig)]),
    "mlorc_state_read_buffer": (MlorcStatus, [MlorcStatePtr, c_char_p, _P(c_float), c_size_t]),
    "mlorc_state_write_buffer": (MlorcStatus, [MlorcStatePtr, c_char_p, _P(c_float), c_size_t]),
    "mlorc_state_save_size": (MlorcStatus, [MlorcStatePtr, _P(c_size_t)]),
    "mlorc_state_save": (MlorcStatus, [MlorcStatePtr, c_void_p, c_size_t, _P(c_size_t)]),
    "mlorc_state_load": (MlorcStatus, [MlorcStatePtr, c_void_p, c_size_t]),
    # Sharded states (issue 6).
    "mlorc_shard_init": (MlorcStatus, [_P(MlorcShard), c_uint64, c_uint64, MlorcAllReduceFn, c_void_p]),
    "mlorc_shard_buffer_count": (
        MlorcStatus,
        [_P(MlorcConfig), _P(MlorcTensorDesc), _P(MlorcShard), _P(c_size_t)],
    ),
    "mlorc_shard_buffer_info": (
        MlorcStatus,
        [_P(MlorcConfig), _P(MlorcTensorDesc), _P(MlorcShard), c_size_t, _P(MlorcBufferInfo)],
    ),
    "mlorc_shard_state_bytes_required": (
        MlorcStatus,
        [_P(MlorcConfig), _P(MlorcTensorDesc), _P(MlorcShard), _P(c_size_t)],
    ),
    "mlorc_state_create_sharded": (
        MlorcStatus,
        [
            _P(MlorcConfig),
            _P(MlorcTensorDesc),
            _P(MlorcShard),
            _P(_P(c_float)),
            c_size_t,
            _P(MlorcStatePtr),
        ],
    ),
    "mlorc_state_shard_range": (MlorcStatus, [MlorcStatePtr, _P(c_uint64), _P(c_uint64)]),
}
del _P

#: Functions a libmlorc.so.1 built before sharded states (issue 6) lacks. Such a library is still
#: accepted (everything unsharded works); a sharded call then raises MlorcError(UNSUPPORTED).
OPTIONAL_FUNCTIONS = frozenset(
    {
        "mlorc_shard_init",
        "mlorc_shard_buffer_count",
        "mlorc_shard_buffer_info",
        "mlorc_shard_state_bytes_required",
        "mlorc_state_create_sharded",
        "mlorc_state_shard_range",
        "mlorc_step_many",
    }
)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class MlorcError(RuntimeError):
    """A libmlorc call returned a status other than MLORC_OK.

    Attributes:
        status (int): the MlorcStatus value (for example ``MLORC_ERROR_INVALID_ARGUMENT`` = 1).
        status_name (str): its name, as ``mlorc_status_string`` gives it.
        message (str): what the library found wrong (``mlorc_last_error_message``).
        function (str): the C function that failed.
    """

    def __init__(self, status: int, status_name: str, message: str, function: str = "") -> None:
        self.status = int(status)
        self.status_name = status_name
        self.message = message
        self.function = function
        where = f"{function}: " if function else ""
        super().__init__(f"{where}{status_name} ({self.status}): {message}")


class MlorcCollectiveError(MlorcError):
    """The all-reduce of a sharded state failed (``MLORC_ERROR_COLLECTIVE``).

    The callback returned non-zero (in the PyTorch binding: ``torch.distributed.all_reduce``
    raised; that exception is chained as ``__cause__``). The step stopped part-way: this rank's
    parameter shard and state may now disagree with the other ranks, and ranks that did not fail
    may be blocked in their own collective. Reload a checkpoint on every rank before going on.
    """


def _configure(lib: ctypes.CDLL) -> None:
    """Declares restype/argtypes of every prototype on a freshly loaded library."""
    for name, (restype, argtypes) in PROTOTYPES.items():
        try:
            fn = getattr(lib, name)
        except AttributeError:
            if name in OPTIONAL_FUNCTIONS:
                continue
            raise  # a required symbol is missing -> the loader reports it
        fn.restype = restype
        fn.argtypes = argtypes


def has_sharding() -> bool:
    """Whether the loaded library has sharded states (mlorc_state_create_sharded and friends)."""
    l = lib()
    return all(hasattr(l, n) for n in OPTIONAL_FUNCTIONS)


def _validate(lib: ctypes.CDLL) -> Optional[str]:
    """Why this library cannot be used by this binding, or None if it can."""
    try:
        _configure(lib)
    except AttributeError as e:
        return f"missing symbol ({e})"
    abi = lib.mlorc_abi_version()
    if abi != ABI_VERSION:
        return f"ABI version {abi}, but this binding needs ABI version {ABI_VERSION}"
    config = MlorcConfig()
    if lib.mlorc_config_init(byref(config), MLORC_ADAMW) != MLORC_OK:
        return "mlorc_config_init failed"
    if config.struct_size != sizeof(MlorcConfig):
        return (
            f"sizeof(MlorcConfig) is {config.struct_size} in the library but {sizeof(MlorcConfig)} "
            "in this binding"
        )
    return None


def lib() -> ctypes.CDLL:
    """The loaded and configured library (raises mlorc.LibraryNotFoundError if there is none)."""
    return _loader.load(_validate)


def _check(status: int, function: str) -> None:
    if status != MLORC_OK:
        l = lib()
        name_b = l.mlorc_status_string(status)
        name = name_b.decode() if name_b else STATUS_NAMES.get(status, f"status {status}")
        msg_b = l.mlorc_last_error_message()
        message = msg_b.decode(errors="replace") if msg_b else ""
        cls = MlorcCollectiveError if status == MLORC_ERROR_COLLECTIVE else MlorcError
        raise cls(status, name, message, function)


def _sharded_fn(name: str):
    l = lib()
    fn = getattr(l, name, None)
    if fn is None:
        raise MlorcError(
            MLORC_ERROR_UNSUPPORTED,
            "MLORC_ERROR_UNSUPPORTED",
            f"the loaded libmlorc ({_loader.loaded_path()}, version {version()}) has no sharded "
            f"states ({name} is missing); rebuild it from a checkout that has them",
            name,
        )
    return fn


def _float_ptr(address: Optional[int]):
    """A ``float *`` for an integer address (``tensor.data_ptr()``); NULL for None or 0."""
    if not address:
        return POINTER(c_float)()
    return ctypes.cast(c_void_p(address), POINTER(c_float))


# --------------------------------------------------------------------------------------------
# One wrapper per C function
# --------------------------------------------------------------------------------------------


def abi_version() -> int:
    return int(lib().mlorc_abi_version())


def version() -> str:
    return lib().mlorc_version().decode()


def status_string(status: int) -> str:
    s = lib().mlorc_status_string(status)
    return s.decode() if s else ""


def last_error_message() -> str:
    s = lib().mlorc_last_error_message()
    return s.decode(errors="replace") if s else ""


def config_init(algorithm: int) -> MlorcConfig:
    config = MlorcConfig()
    _check(lib().mlorc_config_init(byref(config), algorithm), "mlorc_config_init")
    return config


def tensor_desc_init(rows: int, cols: int, dtype: int) -> MlorcTensorDesc:
    desc = MlorcTensorDesc()
    _check(lib().mlorc_tensor_desc_init(byref(desc), rows, cols, dtype), "mlorc_tensor_desc_init")
    return desc


def step_options_init(lr: float) -> MlorcStepOptions:
    options = MlorcStepOptions()
    _check(lib().mlorc_step_options_init(byref(options), lr), "mlorc_step_options_init")
    return options


def set_step_option_pointers(
    options: MlorcStepOptions,
    lr_ptr: Optional[int] = None,
    grad_scale: Optional[int] = None,
    found_inf: Optional[int] = None,
    stream: Optional[int] = None,
) -> None:
    """Sets the optional pointers of ``options`` from integer addresses (None/0: NULL)."""
    options.lr_ptr = _float_ptr(lr_ptr)
    options.grad_scale = _float_ptr(grad_scale)
    options.found_inf = _float_ptr(found_inf)
    options.stream = c_void_p(stream) if stream else None


def buffer_count(config: MlorcConfig, desc: MlorcTensorDesc) -> int:
    n = c_size_t()
    _check(lib().mlorc_buffer_count(byref(config), byref(desc), byref(n)), "mlorc_buffer_count")
    return n.value


def buffer_info(config: MlorcConfig, desc: MlorcTensorDesc, index: int) -> MlorcBufferInfo:
    info = MlorcBufferInfo()
    info.struct_size = sizeof(MlorcBufferInfo)
    _check(lib().mlorc_buffer_info(byref(config), byref(desc), index, byref(info)), "mlorc_buffer_info")
    return info


def buffer_infos(config: MlorcConfig, desc: MlorcTensorDesc) -> List[Tuple[str, int, int]]:
    """(name, rows, cols) of every state buffer, in the library's order."""
    out = []
    for i in range(buffer_count(config, desc)):
        info = buffer_info(config, desc, i)
        out.append((info.name.decode(), int(info.rows), int(info.cols)))
    return out


def state_bytes_required(config: MlorcConfig, desc: MlorcTensorDesc) -> int:
    n = c_size_t()
    _check(
        lib().mlorc_state_bytes_required(byref(config), byref(desc), byref(n)),
        "mlorc_state_bytes_required",
    )
    return n.value


def resolve_layout(config: MlorcConfig, desc: MlorcTensorDesc) -> int:
    layout = MlorcLayout()
    _check(lib().mlorc_resolve_layout(byref(config), byref(desc), byref(layout)), "mlorc_resolve_layout")
    return layout.value


def state_create(config: MlorcConfig, desc: MlorcTensorDesc) -> int:
    """A new library-owned state; returns the handle as an integer (destroy it!)."""
    out = c_void_p()
    _check(lib().mlorc_state_create(byref(config), byref(desc), byref(out)), "mlorc_state_create")
    return int(out.value)


def state_create_with_buffers(config: MlorcConfig, desc: MlorcTensorDesc, buffers: Sequence[int]) -> int:
    """A new state over caller buffers (integer addresses, in mlorc_buffer_info order)."""
    array = (POINTER(c_float) * max(len(buffers), 1))()
    for i, address in enumerate(buffers):
        array[i] = _float_ptr(address)
    out = c_void_p()
    _check(
        lib().mlorc_state_create_with_buffers(
            byref(config), byref(desc), array, len(buffers), byref(out)
        ),
        "mlorc_state_create_with_buffers",
    )
    return int(out.value)


def state_destroy(state: Optional[int]) -> None:
    if state:
        lib().mlorc_state_destroy(c_void_p(state))


def step(state: int, param: int, grad: int, options: MlorcStepOptions) -> None:
    _check(
        lib().mlorc_step(c_void_p(state), c_void_p(param), c_void_p(grad), byref(options)),
        "mlorc_step",
    )


def has_step_many() -> bool:
    """Whether the loaded library steps many states in one call (mlorc_step_many)."""
    return hasattr(lib(), "mlorc_step_many")


# The array typecode of a pointer-sized unsigned integer.
_ADDRESS_CODE = next((c for c in "LQI" if array.array(c).itemsize == sizeof(c_void_p)), None)


def _address_array(addresses: Sequence[int], count: int):
    """A ``void *[count]`` of integer addresses (None: NULL). Through array.array when every
    address is an int: 4x faster than converting each to a c_void_p."""
    if _ADDRESS_CODE is not None:
        try:
            return (c_void_p * count).from_buffer(array.array(_ADDRESS_CODE, addresses))
        except (TypeError, OverflowError):
            pass
    return (c_void_p * count)(*addresses)


def step_many(states: Sequence[int], params: Sequence[int], grads: Sequence[int], options: MlorcStepOptions) -> None:
    """One mlorc_step_many call: ``states[i]`` with ``params[i]`` and ``grads[i]`` (addresses)."""
    count = len(states)
    if len(params) != count or len(grads) != count:
        raise ValueError(f"step_many: {count} states, {len(params)} params and {len(grads)} grads")
    _check(
        lib().mlorc_step_many(_address_array(states, count), _address_array(params, count),
                              _address_array(grads, count), count, byref(options)),
        "mlorc_step_many",
    )


def state_step_count(state: int) -> int:
    n = c_uint64()
    _check(lib().mlorc_state_step_count(c_void_p(state), byref(n)), "mlorc_state_step_count")
    return n.value


def state_set_step_count(state: int, count: int) -> None:
    _check(lib().mlorc_state_set_step_count(c_void_p(state), count), "mlorc_state_set_step_count")


def state_memory_bytes(state: int) -> int:
    n = c_size_t()
    _check(lib().mlorc_state_memory_bytes(c_void_p(state), byref(n)), "mlorc_state_memory_bytes")
    return n.value


def state_layout(state: int) -> int:
    layout = MlorcLayout()
    _check(lib().mlorc_state_layout(c_void_p(state), byref(layout)), "mlorc_state_layout")
    return layout.value


def state_get_config(state: int) -> MlorcConfig:
    config = MlorcConfig()
    config.struct_size = sizeof(MlorcConfig)
    _check(lib().mlorc_state_get_config(c_void_p(state), byref(config)), "mlorc_state_get_config")
    return config


def state_set_config(state: int, config: MlorcConfig) -> None:
    _check(lib().mlorc_state_set_config(c_void_p(state), byref(config)), "mlorc_state_set_config")


def state_read_buffer(state: int, name: str, dst: int, count: int) -> None:
    _check(
        lib().mlorc_state_read_buffer(c_void_p(state), name.encode(), _float_ptr(dst), count),
        "mlorc_state_read_buffer",
    )


def state_write_buffer(state: int, name: str, src: int, count: int) -> None:
    _check(
        lib().mlorc_state_write_buffer(c_void_p(state), name.encode(), _float_ptr(src), count),
        "mlorc_state_write_buffer",
    )


def state_save_size(state: int) -> int:
    n = c_size_t()
    _check(lib().mlorc_state_save_size(c_void_p(state), byref(n)), "mlorc_state_save_size")
    return n.value


def state_save(state: int) -> bytes:
    """The whole state as a checkpoint (bytes)."""
    size = state_save_size(state)
    buf = ctypes.create_string_buffer(max(size, 1))
    written = c_size_t()
    _check(
        lib().mlorc_state_save(c_void_p(state), ctypes.cast(buf, c_void_p), size, byref(written)),
        "mlorc_state_save",
    )
    return buf.raw[: written.value]


def state_load(state: int, data: bytes) -> None:
    buf = ctypes.create_string_buffer(bytes(data), max(len(data), 1))
    _check(
        lib().mlorc_state_load(c_void_p(state), ctypes.cast(buf, c_void_p), len(data)),
        "mlorc_state_load",
    )


# --------------------------------------------------------------------------------------------
# Sharded states (issue 6)
# --------------------------------------------------------------------------------------------


def shard_init(begin: int, end: int, all_reduce=None, context: Optional[int] = None) -> MlorcShard:
    """An MlorcShard for elements [begin, end) of the row-major matrix.

    ``all_reduce`` is an ``MlorcAllReduceFn`` instance or None (NULL: fine for DENSE layout).
    The returned struct references ``all_reduce``; the caller keeps that object alive as long as
    any state created from the struct.
    """
    shard = MlorcShard()
    fn = all_reduce if all_reduce is not None else MlorcAllReduceFn()
    _check(
        _sharded_fn("mlorc_shard_init")(byref(shard), begin, end, fn, c_void_p(context) if context else None),
        "mlorc_shard_init",
    )
    return shard


def shard_buffer_count(config: MlorcConfig, desc: MlorcTensorDesc, shard: MlorcShard) -> int:
    n = c_size_t()
    _check(
        _sharded_fn("mlorc_shard_buffer_count")(byref(config), byref(desc), byref(shard), byref(n)),
        "mlorc_shard_buffer_count",
    )
    return n.value


def shard_buffer_info(config: MlorcConfig, desc: MlorcTensorDesc, shard: MlorcShard, index: int) -> MlorcBufferInfo:
    info = MlorcBufferInfo()
    info.struct_size = sizeof(MlorcBufferInfo)
    _check(
        _sharded_fn("mlorc_shard_buffer_info")(byref(config), byref(desc), byref(shard), index, byref(info)),
        "mlorc_shard_buffer_info",
    )
    return info


def shard_buffer_infos(config: MlorcConfig, desc: MlorcTensorDesc, shard: MlorcShard) -> List[Tuple[str, int, int]]:
    """(name, rows, cols) of every state buffer of a shard, in the library's order."""
    out = []
    for i in range(shard_buffer_count(config, desc, shard)):
        info = shard_buffer_info(config, desc, shard, i)
        out.append((info.name.decode(), int(info.rows), int(info.cols)))
    return out


def shard_state_bytes_required(config: MlorcConfig, desc: MlorcTensorDesc, shard: MlorcShard) -> int:
    n = c_size_t()
    _check(
        _sharded_fn("mlorc_shard_state_bytes_required")(byref(config), byref(desc), byref(shard), byref(n)),
        "mlorc_shard_state_bytes_required",
    )
    return n.value


def state_create_sharded(
    config: MlorcConfig, desc: MlorcTensorDesc, shard: MlorcShard, buffers: Optional[Sequence[int]] = None
) -> int:
    """A new state for a shard; ``buffers`` (integer addresses in mlorc_shard_buffer_info order)
    or None for library-owned zeroed buffers. The callback of ``shard`` must outlive the state."""
    if buffers is None:
        array, n = None, 0
    else:
        array = (POINTER(c_float) * max(len(buffers), 1))()
        for i, address in enumerate(buffers):
            array[i] = _float_ptr(address)
        n = len(buffers)
    out = c_void_p()
    _check(
        _sharded_fn("mlorc_state_create_sharded")(byref(config), byref(desc), byref(shard), array, n, byref(out)),
        "mlorc_state_create_sharded",
    )
    return int(out.value)


def state_shard_range(state: int) -> Tuple[int, int]:
    """(begin, end) of the elements a state holds ((0, rows*cols) when unsharded)."""
    b, e = c_uint64(), c_uint64()
    _check(
        _sharded_fn("mlorc_state_shard_range")(c_void_p(state), byref(b), byref(e)),
        "mlorc_state_shard_range",
    )
    return b.value, e.value
