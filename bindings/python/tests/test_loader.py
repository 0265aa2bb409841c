"""Library lookup: order, the deferred error, the ABI check."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mlorc import _loader

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _run(code: str, **env):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MLORC_")}
    full_env.update(env)
    full_env["PYTHONPATH"] = SRC
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=full_env, capture_output=True, text=True, timeout=120
    )


def test_search_order(monkeypatch, tmp_path):
    monkeypatch.setenv("MLORC_LIBRARY", "/custom/libmlorc.so")
    monkeypatch.setenv("MLORC_PREFIX", str(tmp_path))
    cands = _loader.candidates()
    whats = [w for w, _ in cands]
    assert cands[0] == ("$MLORC_LIBRARY", "/custom/libmlorc.so")
    assert whats[1] == "bundled copy" and cands[1][1].endswith(os.path.join("mlorc", "_lib", "libmlorc.so.1"))
    first_prefix = whats.index("$MLORC_PREFIX/lib")
    assert cands[first_prefix][1] == str(tmp_path / "lib" / "libmlorc.so.1")
    assert first_prefix > 1
    if _loader._repo_root() is not None:  # running from a checkout
        assert whats.index("checkout build/prefix/lib") > first_prefix
    assert cands[-1] == ("system search path", "libmlorc.so.1")


def test_missing_library_error_is_deferred_and_lists_every_place(tmp_path):
    r = _run(
        """
        import mlorc, mlorc._loader as L
        L._repo_root = lambda: None          # pretend not to run from a checkout
        help(mlorc)                          # import and help() work without the library
        import ctypes.util
        try:
            mlorc.library_version()
        except mlorc.LibraryNotFoundError as e:
            assert isinstance(e, ImportError)
            print("MESSAGE-START"); print(e)
        else:
            print("LOADED-FROM-SYSTEM")
        """,
        MLORC_LIBRARY=str(tmp_path / "nope" / "libmlorc.so.1"),
        MLORC_PREFIX=str(tmp_path / "prefix"),
    )
    assert r.returncode == 0, r.stderr
    if "LOADED-FROM-SYSTEM" in r.stdout:
        pytest.skip("a libmlorc.so.1 is installed on the system search path")
    msg = r.stdout.split("MESSAGE-START", 1)[1]
    assert "$MLORC_LIBRARY" in msg and str(tmp_path / "nope" / "libmlorc.so.1") in msg
    assert "bundled copy" in msg
    assert "$MLORC_PREFIX/lib" in msg and str(tmp_path / "prefix" / "lib") in msg
    assert "system search path" in msg and "libmlorc.so.1" in msg


def test_torch_module_imports_without_library(tmp_path):
    r = _run(
        """
        import mlorc._loader as L
        L.candidates = lambda: [("$MLORC_LIBRARY", "/nonexistent/libmlorc.so.1")]
        import torch, mlorc.torch
        assert "Momentum Low-rank" in mlorc.torch.MLorcAdamW.__doc__
        p = torch.nn.Parameter(torch.zeros(4, 4))
        try:
            mlorc.torch.MLorcAdamW([p]).state_bytes()
        except mlorc.LibraryNotFoundError as e:
            print("OK", str(e).count("/nonexistent/libmlorc.so.1"))
        """
    )
    assert r.returncode == 0, r.stderr
    assert "OK 1" in r.stdout


def test_abi_mismatch_is_refused():
    lib = os.environ.get("MLORC_LIBRARY")
    if not lib or not os.path.isfile(lib):
        pytest.skip("no MLORC_LIBRARY to test with")
    r = _run(
        """
        import mlorc, mlorc._capi as C, mlorc._loader as L
        C.ABI_VERSION = 2                    # pretend the binding expects another ABI
        L.candidates = lambda: [("$MLORC_LIBRARY", L.os.environ["MLORC_LIBRARY"])]
        try:
            C.lib()
        except mlorc.LibraryNotFoundError as e:
            print(e)
        """,
        MLORC_LIBRARY=lib,
    )
    assert r.returncode == 0, r.stderr
    assert "ABI version 1, but this binding needs ABI version 2" in r.stdout
