"""MLorc: Momentum Low-rank compression optimizers (arXiv 2506.01897) for PyTorch.

MLorc keeps each Adam/Lion moment of a weight matrix (m×n) as a rank-r factorization
``U·diag(S)·Vᵀ`` — ``(m + n + 1)·r`` floats instead of ``m·n`` — and rebuilds it at every step,
while the weight update itself stays full-rank. The numerics run in the native library
``libmlorc`` (Rust, stable C ABI), loaded through ctypes at first use.

Optimizers (``import mlorc.torch``):

* :class:`mlorc.torch.MLorcAdamW` — drop-in for ``torch.optim.AdamW``;
* :class:`mlorc.torch.MLorcLion` — MLorc-Lion;
* :func:`mlorc.torch.register_fused_backward` — step each parameter during ``backward()``;
* sharded parameters: FSDP2 DTensors work as they are; :func:`mlorc.torch.flat_shard` marks
  ZeRO-style pieces (any element range of a parameter). See bindings/python/README.md.

Will it work on a model? :func:`mlorc.diagnostics.low_rank_energy` measures how close a plain
AdamW run's moments are to rank r (MLorc's premise), pure torch.

Library lookup (first usable one wins): ``$MLORC_LIBRARY``; the copy bundled in this package;
``$MLORC_PREFIX/lib`` and a checkout's ``build/prefix/lib``; the system search path
(``libmlorc.so.1``). If none works, the first call that needs the library raises
:class:`LibraryNotFoundError` listing every place looked at; ``import mlorc`` itself never fails
for that reason.
"""

from __future__ import annotations

from typing import Any, Optional

from ._capi import ABI_VERSION, MlorcCollectiveError, MlorcError
from ._loader import LibraryNotFoundError

__all__ = [
    "ABI_VERSION",
    "LibraryNotFoundError",
    "MlorcCollectiveError",
    "MlorcError",
    "abi_version",
    "library_path",
    "library_version",
    "__version__",
]

__version__ = "0.1.0"


def library_version() -> str:
    """Version string of the loaded libmlorc (loads it; may raise LibraryNotFoundError)."""
    from . import _capi

    return _capi.version()


def abi_version() -> int:
    """C ABI version of the loaded libmlorc (loads it; may raise LibraryNotFoundError)."""
    from . import _capi

    return _capi.abi_version()


def library_path() -> Optional[str]:
    """Path of the libmlorc in use (loads it; may raise LibraryNotFoundError)."""
    from . import _capi, _loader

    _capi.lib()
    return _loader.loaded_path()


def __getattr__(name: str) -> Any:
    # `mlorc.MLorcAdamW` etc. without importing torch at `import mlorc`.
    if name in ("MLorcAdamW", "MLorcLion", "register_fused_backward", "flat_shard"):
        from . import torch as _torch

        return getattr(_torch, name)
    raise AttributeError(f"module 'mlorc' has no attribute {name!r}")
