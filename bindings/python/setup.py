"""Build step of the `mlorc` Python package: builds libmlorc with cargo and bundles it.

`pip install ./bindings/python` runs `cargo build --release` at the repository root (two levels
up, when Cargo.toml is there) and copies target/release/libmlorc.so into the package as
mlorc/_lib/libmlorc.so.1 (its soname). Environment knobs:

  MLORC_BUNDLE_LIBRARY=/path/libmlorc.so  bundle this file; do not run cargo
  MLORC_SKIP_CARGO=1                      do not run cargo; bundle an existing target/release build
  MLORC_NO_BUNDLE=1                       bundle nothing (the package then finds the library
                                          through MLORC_LIBRARY / MLORC_PREFIX / the system path)
  CARGO=/path/cargo, CARGO_TARGET_DIR     as for cargo itself
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

HERE = Path(__file__).resolve().parent
ABI_MAJOR = 1


def _repo_root():
    root = HERE.parent.parent
    cargo_toml = root / "Cargo.toml"
    if cargo_toml.is_file() and 'name = "mlorc"' in cargo_toml.read_text():
        return root
    return None


def _lib_names():
    if sys.platform == "darwin":
        return "libmlorc.dylib", f"libmlorc.{ABI_MAJOR}.dylib"
    if sys.platform == "win32":
        return "mlorc.dll", "mlorc.dll"
    return "libmlorc.so", f"libmlorc.so.{ABI_MAJOR}"


def _truthy(name):
    return os.environ.get(name, "").lower() not in ("", "0", "false", "no")


def _find_or_build_library():
    explicit = os.environ.get("MLORC_BUNDLE_LIBRARY")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise SystemExit(f"MLORC_BUNDLE_LIBRARY={explicit}: no such file")
        return path
    root = _repo_root()
    if root is None:
        raise SystemExit(
            "mlorc: cannot find the Rust sources (Cargo.toml two levels above bindings/python). "
            "Set MLORC_BUNDLE_LIBRARY to a built libmlorc.so, or MLORC_NO_BUNDLE=1 to install "
            "without a bundled library."
        )
    target = Path(os.environ.get("CARGO_TARGET_DIR", root / "target"))
    if not target.is_absolute():
        target = root / target
    built = target / "release" / _lib_names()[0]
    if not _truthy("MLORC_SKIP_CARGO"):
        cargo = os.environ.get("CARGO", "cargo")
        if shutil.which(cargo) is None:
            raise SystemExit(
                f"mlorc: `{cargo}` not found; install Rust (https://rustup.rs) or set "
                "MLORC_BUNDLE_LIBRARY to a built libmlorc.so"
            )
        command = [cargo, "build", "--release", "--lib"]
        print(f"mlorc: running `{' '.join(command)}` in {root}", flush=True)
        subprocess.run(command, cwd=root, check=True)
    if not built.is_file():
        raise SystemExit(f"mlorc: {built} does not exist after the cargo build")
    return built


class BuildPyWithLibrary(build_py):
    """build_py that also places libmlorc into mlorc/_lib/."""

    def run(self):
        super().run()
        if _truthy("MLORC_NO_BUNDLE"):
            return
        src = _find_or_build_library()
        dest_dir = Path(self.build_lib) / "mlorc" / "_lib"
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / _lib_names()[1]
        shutil.copyfile(src, dest)
        os.chmod(dest, 0o755)
        print(f"mlorc: bundled {src} as {dest}", flush=True)


class BinaryDistribution(Distribution):
    """The wheel carries a native library: tag it for this platform, not py3-none-any."""

    def has_ext_modules(self):
        return not _truthy("MLORC_NO_BUNDLE")


cmdclass = {"build_py": BuildPyWithLibrary}
try:  # setuptools >= 70.1 ships bdist_wheel; older ones use the wheel package's
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # pragma: no cover
    try:
        from wheel.bdist_wheel import bdist_wheel
    except ImportError:
        bdist_wheel = None

if bdist_wheel is not None:

    class PlatformWheel(bdist_wheel):
        """libmlorc is loaded through ctypes: any CPython 3 works, only the platform matters."""

        def get_tag(self):
            python, abi, plat = super().get_tag()
            if not _truthy("MLORC_NO_BUNDLE"):
                python, abi = "py3", "none"
            return python, abi, plat

    cmdclass["bdist_wheel"] = PlatformWheel

setup(cmdclass=cmdclass, distclass=BinaryDistribution)
