#!/usr/bin/env bash
# Compiles every CUDA kernel (src/cuda/kernels.cu) with NVRTC to CUBINs for sm_80 and sm_90 on a
# machine without a GPU, using the libnvrtc that PyTorch's pip wheels ship
# (site-packages/nvidia/cu13/lib or nvidia/cuda_nvrtc/lib). Fails on any compile error, and
# when no libnvrtc can be found at all (set MLORC_NVRTC_DIR to point at one).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

dir="${MLORC_NVRTC_DIR:-}"
if [ -z "$dir" ]; then
    for py in ${PYTHON:-} python3 python; do
        command -v "$py" >/dev/null 2>&1 || continue
        dir="$("$py" - <<'PY' 2>/dev/null || true
import glob, os, site, sys
roots = list(site.getsitepackages()) + [site.getusersitepackages()]
try:
    import nvidia
    roots = [os.path.dirname(p) for p in nvidia.__path__] + roots
except Exception:
    pass
for root in roots:
    for pattern in ("nvidia/cu13/lib/libnvrtc.so*", "nvidia/cuda_nvrtc/lib/libnvrtc.so*", "nvidia/*/lib/libnvrtc.so*"):
        hits = sorted(glob.glob(os.path.join(root, pattern)))
        if hits:
            print(os.path.dirname(hits[0])); sys.exit(0)
PY
)"
        [ -n "$dir" ] && break
    done
fi
if [ -z "$dir" ] || ! ls "$dir"/libnvrtc.so* >/dev/null 2>&1; then
    echo "nvrtc-check: no libnvrtc found (pip install torch, or set MLORC_NVRTC_DIR)" >&2
    exit 1
fi
echo "nvrtc-check: using $(ls "$dir"/libnvrtc.so* | head -1)"
unset CUDARC_CUDA_VERSION
LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" MLORC_REQUIRE_NVRTC=1 \
    cargo test --profile test-opt --test cuda_nvrtc -- --nocapture
