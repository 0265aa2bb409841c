"""Whole-model optimizer step on the CPU: every tensor of a small transformer stepped once.

A model has hundreds of tensors, most of them small; what a trainer pays per step is the sum
over all of them, including each tensor's fixed cost in the library and in the Python binding.
This times `optimizer.step()` for torch.optim.AdamW (foreach and fused) and the library's
MLorcAdamW / MLorcLion (r = 4, q = 0) over the same parameter list, and splits the library's
time into the C calls and the binding's Python work around them.

    python3 benches/python/bench_model_step.py [--layers 24 --d-model 256 --threads 2]
"""

import argparse
import os
import statistics
import sys
import time

import torch

import _common as C  # noqa: E402

mt = C.import_mlorc_torch()  # this checkout's package and target/release/libmlorc.so
from mlorc import _capi  # noqa: E402

MLorcAdamW, MLorcLion = mt.MLorcAdamW, mt.MLorcLion


def model_params(layers: int, d: int) -> list:
    """A transformer's matrices and vectors: per block qkv, proj, fc1, fc2 and six vectors."""
    g = torch.Generator().manual_seed(0)
    shapes = []
    for _ in range(layers):
        shapes += [(3 * d, d), (d, d), (4 * d, d), (d, 4 * d), (3 * d,), (d,), (4 * d,), (d,), (d,), (d,)]
    params = [torch.nn.Parameter(torch.randn(s, generator=g) * 0.02) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    return params


def time_steps(opt, reps: int, warmup: int = 3):
    for _ in range(warmup):
        opt.step()
    in_library = [0.0]
    originals = {name: getattr(_capi, name) for name in ("step", "step_many")}

    def timed(original):
        def call(*args):
            t = time.perf_counter()
            try:
                return original(*args)
            finally:
                in_library[0] += time.perf_counter() - t
        return call

    for name, original in originals.items():
        setattr(_capi, name, timed(original))
    try:
        times, lib = [], []
        for _ in range(reps):
            in_library[0] = 0.0
            t = time.perf_counter()
            opt.step()
            times.append(time.perf_counter() - t)
            lib.append(in_library[0])
    finally:
        for name, original in originals.items():
            setattr(_capi, name, original)
    return statistics.median(times), statistics.median(lib)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    params = model_params(args.layers, args.d_model)
    n = sum(p.numel() for p in params)
    print(f"library: {os.environ.get('MLORC_LIBRARY')}")
    print(f"{len(params)} tensors ({sum(p.dim() == 2 for p in params)} matrices), {n / 1e6:.1f} M parameters; "
          f"torch threads {args.threads}, MLORC_NUM_THREADS={os.environ.get('MLORC_NUM_THREADS', '(all cores)')}; "
          f"load average {' '.join(open('/proc/loadavg').read().split()[:3])}")
    makers = [
        ("torch AdamW fused", lambda: torch.optim.AdamW(params, lr=1e-3, fused=True)),
        ("torch AdamW foreach", lambda: torch.optim.AdamW(params, lr=1e-3, foreach=True)),
        ("MLorcAdamW r=4", lambda: MLorcAdamW(params, lr=1e-3)),
        ("MLorcLion r=4", lambda: MLorcLion(params, lr=1e-4)),
    ]
    print("| optimizer | median ms per step | in library calls ms | binding Python ms | ratio vs fused AdamW |")
    print("|---|---|---|---|---|")
    fused = None
    for name, make in makers:
        ms, lib = (x * 1e3 for x in time_steps(make(), args.reps))
        fused = ms if name == "torch AdamW fused" else fused
        is_mlorc = name.startswith("MLorc")
        ratio = f"{ms / fused:.2f}" if fused else "—"
        print(f"| {name} | {ms:.2f} | {lib:.2f} | {ms - lib:.2f} | {ratio} |" if is_mlorc
              else f"| {name} | {ms:.2f} | — | — | {ratio} |", flush=True)
        if not all(torch.isfinite(p).all() for p in params):
            print("WARNING: non-finite parameters")


if __name__ == "__main__":
    main()
