#!/usr/bin/env bash
# The GPU check of issue 4, for the device machine (CUDA 13.0, driver 580, PyTorch, no Rust).
# Build here first (`cargo build --release`) and carry target/release/libmlorc.so; then on the
# device machine: `bash scripts/gpu-check.sh` (OUT=<dir> for logs; $OUT is set by the device tool).
#   1. the CUDA tests (scripts/gpu/mlorc_gpu_test.py): CPU-vs-CUDA equality for the same seed in
#      every dtype and both algorithms and layouts, the rank-1 oracle against torch AdamW,
#      found_inf / bad pointers / bad grad_scale, graph capture and replay;
#   2. a short subset under compute-sanitizer (memcheck, then racecheck on the quick subset);
#   3. the benchmark (per-matrix, per-kernel profile, whole-model), bench.json and a short table last;
#   4. hardware counters (ncu) of the main kernels of a 4096x4096 bf16 step, where ncu works.
# Kernel variants: build each library here (e.g. `cargo build --release --features
# cuda-rank-projection`), carry them, and compare with `mlorc_gpu_test.py --quick --lib X`
# (correctness) and `--profile-only --lib X` (per-kernel time); BENCHMARKS.md §3.
# Fails loudly: any failed step makes the exit status non-zero, and the table says which.
# Time budget: under 8 minutes in all (each stage has its own timeout).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT"
LIB="${MLORC_LIB:-$PWD/target/release/libmlorc.so}"
PY="${PYTHON:-python3}"
status=0
summary=()

if [ ! -f "$LIB" ]; then
    echo "gpu-check: $LIB not found: build it on the CPU machine and carry target/release/libmlorc.so" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv > "$OUT/nvidia-smi.txt" 2>&1 || true
cat "$OUT/nvidia-smi.txt"
# libcuda must be the real driver, never lib64/stubs.
export LD_LIBRARY_PATH="$(echo "${LD_LIBRARY_PATH:-}" | tr ':' '\n' | grep -v stubs | paste -sd: -)"
# libnvrtc: torch has it loaded inside the Python process; for compute-sanitizer's child too.
NVRTC_DIR="$("$PY" - <<'PY' 2>/dev/null
import glob, os
import nvidia
for root in [os.path.dirname(p) for p in nvidia.__path__]:
    for pat in ("nvidia/cu13/lib/libnvrtc.so*", "nvidia/cuda_nvrtc/lib/libnvrtc.so*", "nvidia/*/lib/libnvrtc.so*"):
        hits = sorted(glob.glob(os.path.join(root, pat)))
        if hits:
            print(os.path.dirname(hits[0])); raise SystemExit
PY
)"
[ -n "$NVRTC_DIR" ] && export LD_LIBRARY_PATH="$NVRTC_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "gpu-check: lib=$LIB nvrtc_dir=${NVRTC_DIR:-<none>}"

run() {  # name timeout command...
    local name="$1" limit="$2"; shift 2
    echo "=== $name (timeout ${limit}s)"
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 40 "$OUT/$name.log"
    if [ $rc -ne 0 ]; then
        status=1
        summary+=("FAIL  $name (rc=$rc, $((SECONDS - t0))s): see $OUT/$name.log")
    else
        summary+=("ok    $name ($((SECONDS - t0))s)")
    fi
}

run tests 150 "$PY" scripts/gpu/mlorc_gpu_test.py --lib "$LIB" --out "$OUT"
SAN="$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)"
if [ -n "$SAN" ]; then
    run memcheck 90 "$SAN" --tool memcheck --error-exitcode 3 --target-processes all "$PY" scripts/gpu/mlorc_gpu_test.py --lib "$LIB" --quick --out "$OUT"
    run racecheck 60 "$SAN" --tool racecheck --error-exitcode 3 --target-processes all "$PY" scripts/gpu/mlorc_gpu_test.py --lib "$LIB" --quick --out "$OUT"
else
    status=1
    summary+=("FAIL  compute-sanitizer not found")
fi
run bench 150 "$PY" scripts/gpu/mlorc_gpu_test.py --lib "$LIB" --bench --out "$OUT"
# Hardware counters of the step's main kernels (where ncu can read them: not under gVisor).
NCU="$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)"
if [ -n "$NCU" ]; then
    run ncu 120 "$NCU" --clock-control none --target-processes all \
        --kernel-name regex:'mlorc_(project_k|sketch_k|orthonormalize|gram_eigen|negative_partial)' \
        --launch-skip 6 --launch-count 6 \
        --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis \
        "$PY" scripts/gpu/mlorc_gpu_test.py --lib "$LIB" --steps-only --out "$OUT"
fi

echo
echo "=== summary (logs and bench.json in $OUT)"
printf '%s\n' "${summary[@]}" | tee "$OUT/summary.txt"
if [ -f "$OUT/bench.json" ]; then
    "$PY" - "$OUT/bench.json" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys
for row in json.load(open(sys.argv[1])):
    print(" | ".join(f"{k}: {v}" for k, v in row.items()))
PY
fi
exit $status
