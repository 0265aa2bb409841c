#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks for `make demo` and `make test`: system packages
# (apt-get), Python packages (pip, from PyPI only; a virtual environment in build/venv when the
# system Python refuses). Only package registries are used. Does nothing when all is present.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else
        echo "ensure-deps: need root to run: $*" >&2; return 1; fi
}

# System packages.
missing=()
for tool in cmake:cmake valgrind:valgrind pkg-config:pkg-config g++:g++ gcc:gcc make:make \
            python3:python3 readelf:binutils; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool#*:}")
done
[ -f /usr/include/stdio.h ] || missing+=(libc6-dev)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
    echo "== apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update
    as_root apt-get install -y --no-install-recommends "${missing[@]}" ca-certificates
fi

# Rust: the machine's toolchain. Only package registries are reachable, so a machine without
# cargo cannot be fixed from here.
if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
    echo "ensure-deps: no cargo found; install a Rust toolchain (>= 1.89) first" >&2
    exit 1
fi

# Python: torch and friends from PyPI only (no custom index). Debian 12 marks the system
# Python as externally managed, so use a virtual environment when pip refuses.
python_packages=(torch numpy pytest matplotlib tqdm)
if ! python3 -c 'import torch, numpy, pytest, matplotlib, tqdm' >/dev/null 2>&1; then
    echo "== pip install ${python_packages[*]}"
    if ! python3 -m pip install "${python_packages[@]}"; then
        mkdir -p build
        python3 -m venv --system-site-packages build/venv
        build/venv/bin/python3 -m pip install "${python_packages[@]}"
    fi
fi

