#!/usr/bin/env python3
"""Does MLorc-AdamW's gap to AdamW shrink with the model? The fine-tuning benchmark of
bench_quality.py (same texts, schedule, batches and caching) on a wider and deeper tinylm,
AdamW against MLorc-AdamW r=4 only: each method's lr chosen by seed-0 validation loss on the
1-3-10 grid (extended once where the best point is on an edge), then seeds 0-2 at that lr.

    python3 benches/python/quality_scale.py                    # d_model 256, 4 layers (~25 min, 2 cores)
    python3 benches/python/quality_scale.py --d-model 192 --layers 3

Runs are cached in results/quality_runs.jsonl under their own pre-training key; the report is
printed and written to results/quality_scale_d{d}_l{layers}.md.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_quality as bq  # noqa: E402
import _common as C  # noqa: E402
import torch  # noqa: E402

METHODS = {"AdamW": [1e-3, 3e-3, 1e-2], "MLorc-AdamW r=4": [1e-3, 3e-3, 1e-2]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bq.MODEL = bq.TinyLMConfig(n_layer=args.layers, d_model=args.d_model, n_head=4, context=64)
    mode = dict(bq.MODES["full"])
    t0 = time.perf_counter()
    setup = bq.finetune_setup(mode, no_cache=False)
    params, pre_val, base_val, src = setup.pre_model.num_params(), setup.pre_val, setup.base_val, setup.src
    print(f"model d_model {args.d_model}, {args.layers} layers, {params:,} params; pre-training held-out loss "
          f"{pre_val:.3f}; fine-tuning val loss before {base_val:.4f}", flush=True)
    runner = bq.Runner(argparse.Namespace(fresh=False, report_only=False), mode, setup.init_state, setup.pre_key,
                       setup.corpus, setup.val_batches)
    lines = []
    results = {}
    for method, grid in METHODS.items():
        pts = [(lr, runner.run(method, lr, 0)) for lr in grid]
        best = min(pts, key=lambda p: p[1]["val"] if math.isfinite(p[1]["val"]) else math.inf)
        if best[0] in (grid[0], grid[-1]):
            lr = bq._next_lr(best[0], up=best[0] == grid[-1])
            pts.append((lr, runner.run(method, lr, 0)))
            pts.sort()
            best = min(pts, key=lambda p: p[1]["val"] if math.isfinite(p[1]["val"]) else math.inf)
        lr = best[0]
        runs = [runner.run(method, lr, s) for s in mode["seeds"]]
        vals = [r["val"] for r in runs]
        results[method] = (lr, statistics.mean(vals), statistics.stdev(vals), runs[0]["state_bytes"], pts)
    adam = results["AdamW"][1]
    lines.append(f"Model: tinylm d_model {args.d_model}, {args.layers} layers, {params:,} parameters; pre-trained "
                 f"{mode['pretrain_steps']} AdamW steps (held-out licence loss {pre_val:.3f}); fine-tuned "
                 f"{mode['steps']} steps on {src.name}; val loss before fine-tuning {base_val:.4f}.")
    lines.append("")
    lines.append("| method | lr grid → val (seed 0) | chosen lr | val loss mean ± std (3 seeds) | vs AdamW | opt. state KiB |")
    lines.append("|---|---|---|---|---|---|")
    for method, (lr, mean, std, sb, pts) in results.items():
        grid_txt = ", ".join(f"{g:.0e}→{r['val']:.4f}" for g, r in pts)
        lines.append(f"| {method} | {grid_txt} | {lr:.0e} | {mean:.4f} ± {std:.4f} | {100 * (mean / adam - 1):+.1f}% | "
                     f"{sb / 1024:.1f} |")
    lines.append("")
    lines.append(f"Command: `python3 benches/python/quality_scale.py --d-model {args.d_model} --layers {args.layers}` "
                 f"({time.perf_counter() - t0:.0f} s wall, {C.cpu_model()}, {C.ncores()} cores).")
    text = "\n".join(lines)
    print(text)
    out = C.RESULTS / f"quality_scale_d{args.d_model}_l{args.layers}.md"
    out.write_text(text + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
