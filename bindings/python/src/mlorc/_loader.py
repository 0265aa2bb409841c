"""Finds and loads libmlorc, once, at first use.

Order (the first library that loads and passes the ABI check wins):

1. ``$MLORC_LIBRARY`` (a file path);
2. the copy bundled in this package (``mlorc/_lib/libmlorc.so.1``);
3. the CMake install prefix: ``$MLORC_PREFIX/lib``, then ``<repo>/build/prefix/lib`` when the
   package runs from a source checkout;
4. the system search path (``libmlorc.so.1``: LD_LIBRARY_PATH, ldconfig cache, ...).

If none works, :class:`LibraryNotFoundError` lists every place looked at and why each failed.
The error is raised at first use, never at ``import mlorc``.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import warnings
from pathlib import Path
from typing import Callable, List, Optional, Tuple

ABI_MAJOR = 1


class LibraryNotFoundError(ImportError):
    """libmlorc could not be found or loaded, or has an ABI this binding does not speak.

    The message lists every place that was tried and why each failed.
    """


def _names() -> List[str]:
    if sys.platform == "darwin":
        return [f"libmlorc.{ABI_MAJOR}.dylib", "libmlorc.dylib"]
    if sys.platform == "win32":
        return ["mlorc.dll"]
    return [f"libmlorc.so.{ABI_MAJOR}", "libmlorc.so"]


def _repo_root() -> Optional[Path]:
    """<repo> when this package is imported from <repo>/bindings/python/src/mlorc."""
    here = Path(__file__).resolve().parent
    for parent in list(here.parents)[:5]:
        if (parent / "Cargo.toml").is_file() and (parent / "include" / "mlorc.h").is_file():
            return parent
    return None


def candidates() -> List[Tuple[str, str]]:
    """(description, path or soname) in search order."""
    out: List[Tuple[str, str]] = []
    env = os.environ.get("MLORC_LIBRARY")
    if env:
        out.append(("$MLORC_LIBRARY", env))
    pkg = Path(__file__).resolve().parent / "_lib"
    for name in _names():
        out.append(("bundled copy", str(pkg / name)))
    prefixes = []
    if os.environ.get("MLORC_PREFIX"):
        prefixes.append(("$MLORC_PREFIX", Path(os.environ["MLORC_PREFIX"])))
    repo = _repo_root()
    if repo is not None:
        prefixes.append(("checkout build/prefix", repo / "build" / "prefix"))
    for what, prefix in prefixes:
        for libdir in ("lib", "lib64"):
            for name in _names():
                out.append((f"{what}/{libdir}", str(prefix / libdir / name)))
    out.append(("system search path", _names()[0]))
    return out


_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_error: Optional[LibraryNotFoundError] = None


def load(validate: Callable[[ctypes.CDLL], Optional[str]]) -> ctypes.CDLL:
    """The library, loaded on first call; ``validate`` returns why a candidate is unusable."""
    global _lib, _error
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is not None:
            return _lib
        if _error is not None:
            raise _error
        tried: List[str] = []
        env_failed = False
        for what, path in candidates():
            is_file_candidate = os.sep in path
            if is_file_candidate and not os.path.exists(path):
                tried.append(f"  {what}: {path}: no such file")
                env_failed |= what == "$MLORC_LIBRARY"
                continue
            try:
                lib = ctypes.CDLL(path)
            except OSError as e:
                tried.append(f"  {what}: {path}: cannot load ({e})")
                env_failed |= what == "$MLORC_LIBRARY"
                continue
            problem = validate(lib)
            if problem is not None:
                tried.append(f"  {what}: {path}: {problem}")
                env_failed |= what == "$MLORC_LIBRARY"
                continue
            if env_failed:
                warnings.warn(
                    "MLORC_LIBRARY is set but unusable; using " + path + " instead:\n" + "\n".join(tried),
                    RuntimeWarning,
                    stacklevel=3,
                )
            _lib = lib
            _lib._mlorc_path = path  # type: ignore[attr-defined]
            return lib
        _error = LibraryNotFoundError(
            f"libmlorc (C ABI version {ABI_MAJOR}) was not found. Looked at, in order:\n"
            + "\n".join(tried)
            + "\nInstall the package with `pip install ./bindings/python` (it builds and bundles the "
            "library), or set MLORC_LIBRARY to the path of libmlorc.so.1, or MLORC_PREFIX to "
            "its CMake install prefix."
        )
        raise _error


def loaded_path() -> Optional[str]:
    """Path of the loaded library (None before first use)."""
    return getattr(_lib, "_mlorc_path", None) if _lib is not None else None


def _reset_for_tests() -> None:
    global _lib, _error
    with _lock:
        _lib = None
        _error = None
