#!/usr/bin/env python3
"""Does MLorc-AdamW's gap to AdamW shrink with the model? The fine-tuning benchmark of
bench_quality.py (same texts, schedule, batches and caching) on a wider and deeper tinylm,
AdamW against MLorc-AdamW r=4 (and, with `--also`, GaLore-AdamW r=4, LoRA r=4, MLorc-AdamW
with dense embeddings and head, MLorc-AdamW r=8, r=4 with q=1 or p=4, or the plain-torch
reference with only M or only V compressed): each method's lr chosen by seed-0 validation loss
on the 1-3-10 grid (extended by a point, up to twice, while the best point is on an edge), then
seeds 0-2 at that lr.

    python3 benches/python/quality_scale.py                    # d_model 256, 4 layers (~25 min, 2 cores)
    python3 benches/python/quality_scale.py --d-model 192 --layers 3
    python3 benches/python/quality_scale.py --steps 400 --also galore,lora,blocks
    python3 benches/python/quality_scale.py --steps 800 --also only-m,only-v,q1,p4

Runs are cached in results/quality_runs.jsonl under their own pre-training key; the report is
printed and written to results/quality_scale_d{d}_l{layers}.md (and .json; `--steps` other than
200 add _s<steps>). `--plot` then draws the JSONs of 200-step runs into
results/quality_scale.png: the two methods' validation loss against the model's parameter
count, and their validation-loss curves; and every JSON into results/quality_budget.png: the
gap against the number of fine-tuning steps, per model. `--best` tabulates each model's
best result of each method over the budgets measured (results/quality_best.md). Both take a
budget's `--refine` report (results/quality_refine_*.json) instead of its 1-3-10 one where
there is one.

    python3 benches/python/quality_scale.py --d-model 128 --layers 3   # bench_quality's model (its cached runs)
    python3 benches/python/quality_scale.py --plot
    python3 benches/python/quality_scale.py --best
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_quality as bq  # noqa: E402
import _common as C  # noqa: E402
import torch  # noqa: E402

# Each method's grid: the three points of bench_quality's grid around where its best lr fell there.
METHODS = {"AdamW": [1e-3, 3e-3, 1e-2], "MLorc-AdamW r=4": [1e-3, 3e-3, 1e-2]}
# --also: the paper's other claim (MLorc beats GaLore and LoRA, both set up on the blocks' matrices
# only), MLorc with the embeddings and head dense (what compressing them costs), MLorc at
# rank 8 (what doubling r buys), with one power iteration or 4 oversampling columns (the RSVD's
# settings), and the plain-torch reference with one moment exact (which moment's compression
# costs the gap). Each with its own lr: (method, lr grid, bench_quality's extra settings).
ALSO = {"galore": ("GaLore-AdamW r=4", [3e-3, 1e-2, 3e-2], {}), "lora": ("LoRA r=4", [3e-3, 1e-2, 3e-2], {}),
        "blocks": (f"MLorc-AdamW r=4 {bq.BLOCKS_ONLY}", [1e-3, 3e-3, 1e-2], {}),
        "r8": ("MLorc-AdamW r=8", [1e-3, 3e-3, 1e-2], {"r": 8}),
        "q1": ("MLorc-AdamW r=4 q=1", [3e-3, 1e-2, 3e-2], {"q": 1}),
        "p4": ("MLorc-AdamW r=4 p=4", [3e-3, 1e-2, 3e-2], {"p": 4}),
        "only-m": ("ref r=4, only M compressed (V exact)", [1e-3, 3e-3, 1e-2], {"cv": False}),
        "only-v": ("ref r=4, only V compressed (M exact)", [1e-3, 3e-3, 1e-2], {"cm": False})}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=bq.MODES["full"]["steps"],
                    help="fine-tuning steps (reports of other lengths get an _s<steps> suffix)")
    ap.add_argument("--also", default="", help="comma-separated, more methods: " +
                    ", ".join(f"{k} ({name})" for k, (name, _, _) in ALSO.items()))
    ap.add_argument("--refine", action="store_true",
                    help="after the grid, also try the chosen lr times 10^-1/4 and 10^1/4 (seed 0) and take the best "
                         "of the three: is the grid's coarseness hiding a better lr? Report: quality_refine_*")
    ap.add_argument("--plot", action="store_true",
                    help="only draw results/quality_scale.png and quality_budget.png from the JSONs")
    ap.add_argument("--best", action="store_true",
                    help="only tabulate, per model, each method's best final val loss over the step budgets "
                         "measured (results/quality_best.md, from the JSONs)")
    args = ap.parse_args()
    if args.best:
        best_over_budgets(tuned_reports(), C.RESULTS / "quality_best.md")
        return
    if args.plot:
        paths = tuned_reports()
        plot(paths, C.RESULTS / "quality_scale.png", steps=bq.MODES["full"]["steps"])
        plot_budget(paths, C.RESULTS / "quality_budget.png")
        return
    also = [k.strip() for k in args.also.split(",") if k.strip()]
    if set(also) - set(ALSO):
        ap.error(f"--also: unknown {sorted(set(also) - set(ALSO))}; choose from {', '.join(ALSO)}")
    grids = {m: (grid, {}) for m, grid in METHODS.items()}
    grids.update({ALSO[k][0]: ALSO[k][1:] for k in also})
    torch.set_num_threads(args.threads)
    bq.MODEL = bq.TinyLMConfig(n_layer=args.layers, d_model=args.d_model, n_head=bq.MODEL.n_head,
                               context=bq.MODEL.context)
    mode = dict(bq.MODES["full"])
    default_steps = mode["steps"]
    mode["steps"] = args.steps
    t0 = time.perf_counter()
    setup = bq.finetune_setup(mode, no_cache=False)
    params, pre_val, base_val, src = setup.pre_model.num_params(), setup.pre_val, setup.base_val, setup.src
    print(f"model d_model {args.d_model}, {args.layers} layers, {params:,} params; pre-training held-out loss "
          f"{pre_val:.3f}; fine-tuning val loss before {base_val:.4f}", flush=True)
    runner = bq.Runner(argparse.Namespace(fresh=False, report_only=False), mode, setup.init_state, setup.pre_key,
                       setup.corpus, setup.val_batches)
    lines = []
    results = {}
    trained, used = [], set()

    def run(method, lr, seed, extra):
        if runner.key(method, lr, seed, extra) not in runner.cache:
            trained.append((method, lr, seed))
        used.add((method, lr, seed))
        return runner.run(method, lr, seed, extra)

    def chosen_lr(pts):
        lr = bq.best_lr(pts)
        return pts[0][0] if lr is None else lr  # every run diverged: the seeds at the smallest lr show how

    for method, (grid, extra) in grids.items():
        pts, _ = bq.tune_lr(grid, lambda lr: run(method, lr, 0, extra), mode["extend"])
        lr = chosen_lr(pts)
        if args.refine:  # half-way between the grid's points, on the log scale
            halves = [float(f"{lr * 10 ** d:.2g}") for d in (-0.25, 0.25)]
            pts = sorted(pts + [(x, run(method, x, 0, extra)) for x in halves])
            lr = chosen_lr(pts)
        runs = [run(method, lr, s, extra) for s in mode["seeds"]]
        vals = [r["val"] for r in runs]
        results[method] = (lr, statistics.mean(vals), statistics.stdev(vals), runs[0]["state_bytes"], pts, runs)
    adam = results["AdamW"][1]
    lines.append(f"Model: tinylm d_model {args.d_model}, {args.layers} layers, {params:,} parameters; pre-trained "
                 f"{mode['pretrain_steps']} AdamW steps (held-out licence loss {pre_val:.3f}); fine-tuned "
                 f"{mode['steps']} steps on {src.name}; val loss before fine-tuning {base_val:.4f}.")
    lines.append("")
    lines.append("| method | lr grid → val (seed 0) | chosen lr | val loss mean ± std (3 seeds) | vs AdamW | opt. state KiB |")
    lines.append("|---|---|---|---|---|---|")
    for method, (lr, mean, std, sb, pts, _) in results.items():
        grid_txt = ", ".join(f"{fmt_lr(g)}→{r['val']:.4f}" for g, r in pts)
        lines.append(f"| {method} | {grid_txt} | {fmt_lr(lr)} | {mean:.4f} ± {std:.4f} | {100 * (mean / adam - 1):+.2f}% | "
                     f"{sb / 1024:.1f} |")
    lines.append("")
    steps_arg = "" if args.steps == default_steps else f" --steps {args.steps}"
    also_arg = (f" --also {','.join(also)}" if also else "") + (" --refine" if args.refine else "")
    lines.append(f"Command: `python3 benches/python/quality_scale.py --d-model {args.d_model} --layers {args.layers}"
                 f"{steps_arg}{also_arg}` "
                 f"({time.perf_counter() - t0:.0f} s wall, {len(trained)} of {len(used)} runs trained, the rest from "
                 f"results/quality_runs.jsonl; {C.cpu_model()}, {C.ncores()} cores).")
    text = "\n".join(lines)
    print(text)
    suffix = "" if args.steps == default_steps else f"_s{args.steps}"
    kind = "refine" if args.refine else "scale"  # a refined report stands in for its 1-3-10 one: tuned_reports
    out = C.RESULTS / f"quality_{kind}_d{args.d_model}_l{args.layers}{suffix}.md"
    if trained or not out.exists():  # a report from the cache alone would hide the runs' wall time
        out.write_text(text + "\n")
    summary = dict(d_model=args.d_model, layers=args.layers, steps=args.steps, params=params, pre_val=pre_val,
                   base_val=base_val,
                   methods={method: dict(lr=lr, mean=mean, std=std, state_bytes=sb,
                                         grid=[(g, r["val"]) for g, r in pts],
                                         vals=[r["val"] for r in runs], val_steps=runs[0]["val_steps"],
                                         val_curves=[r["val_curve"] for r in runs])
                            for method, (lr, mean, std, sb, pts, runs) in results.items()})
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {out.with_suffix('.json')}" + (f" and {out.name}" if trained else ""))


def tuned_reports():
    """Every model's and budget's JSON, the `--refine` one where it exists: its grid holds the
    1-3-10 grid's points and the half-way ones, so its choice is the better tuned."""
    paths = sorted(C.RESULTS.glob("quality_scale_d*_l*.json"))
    refined = [p.with_name(p.name.replace("quality_scale_", "quality_refine_", 1)) for p in paths]
    return [r if r.exists() else p for p, r in zip(paths, refined)]


def fmt_lr(lr):
    """1e-03 for the grid's points, 5.6e-04 for --refine's."""
    return f"{lr:.1e}".replace(".0e", "e")


def mlorc_gap(model):
    """MLorc-AdamW r=4's mean final validation loss over AdamW's, in percent, from a model's JSON."""
    return 100 * (model["methods"]["MLorc-AdamW r=4"]["mean"] / model["methods"]["AdamW"]["mean"] - 1)


def models_by_size(paths):
    """The JSONs of each model, keyed by (parameters, d_model, layers), in budget order."""
    by_model = {}
    for d in (json.loads(p.read_text()) for p in paths):
        by_model.setdefault((d["params"], d["d_model"], d["layers"]), []).append(d)
    return {k: sorted(ds, key=lambda d: d["steps"]) for k, ds in sorted(by_model.items())}


def best_over_budgets(paths, out):
    """Per model: AdamW's and MLorc-AdamW r=4's 3-seed mean at every budget measured, and the gap
    between the best of each. A longer run can end worse (the fine-tuning text is small), so the
    gap at one budget is not the gap between the best models each optimizer can reach."""
    lines = ["| model | method | steps → lr, val (3 seeds) | best | best vs AdamW's best |", "|---|---|---|---|---|"]
    for (params, d_model, layers), ds in models_by_size(paths).items():
        best = {}
        for method in ("AdamW", "MLorc-AdamW r=4"):
            pts = [(d["steps"], d["methods"][method]) for d in ds]
            best[method] = min(pts, key=lambda p: p[1]["mean"])
            txt = ", ".join(f"{s} → {fmt_lr(m['lr'])}, {m['mean']:.4f} ± {m['std']:.4f}" for s, m in pts)
            steps, m = best[method]
            gap = 100 * (m["mean"] / best["AdamW"][1]["mean"] - 1)
            lines.append(f"| d_model {d_model} × {layers} layers ({params / 1e6:.1f} M) | {method} | {txt} | "
                         f"{m['mean']:.4f} ({steps} steps) | {gap:+.2f}% |")
    lines += ["", "Command: `python3 benches/python/quality_scale.py --best` (from results/quality_scale_d*_l*.json, "
              "or quality_refine_* where a budget was refined)."]
    text = "\n".join(lines)
    print(text)
    out.write_text(text + "\n")
    print(f"wrote {out}")


def plot(paths, out, steps):
    """Left: each method's validation loss (mean, min-max over seeds) against the parameter count;
    right: the validation-loss curves (mean over seeds), one colour per model. Runs of `steps`
    fine-tuning steps only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [json.loads(p.read_text()) for p in paths]
    models = sorted((d for d in models if d["steps"] == steps), key=lambda d: d["params"])
    if not models:
        sys.exit("no results/quality_scale_d*_l*.json yet: run a model first")
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 5))
    params = [d["params"] for d in models]
    for method, marker in (("AdamW", "o"), ("MLorc-AdamW r=4", "s")):
        ms = [d["methods"][method] for d in models]
        mean = [m["mean"] for m in ms]
        err = [[m["mean"] - min(m["vals"]) for m in ms], [max(m["vals"]) - m["mean"] for m in ms]]
        a1.errorbar(params, mean, yerr=err, marker=marker, capsize=3, label=method)
    for d in models:
        gap = mlorc_gap(d)
        a1.annotate(f"{gap:+.1f}%", (d["params"], d["methods"]["MLorc-AdamW r=4"]["mean"]),
                    textcoords="offset points", xytext=(6, 6), fontsize=8)
    a1.set_xscale("log")
    a1.set_xlabel("parameters")
    a1.set_ylabel("final validation loss (nats/byte), 3 seeds")
    a1.set_title("MLorc-AdamW r=4 against AdamW by model size (label: the gap)", fontsize=9)
    a1.grid(alpha=0.3, which="both")
    a1.legend(fontsize=8)
    for i, d in enumerate(models):
        for method, ls in (("AdamW", "-"), ("MLorc-AdamW r=4", "--")):
            m = d["methods"][method]
            curve = [statistics.mean(c[j] for c in m["val_curves"]) for j in range(len(m["val_steps"]))]
            a2.plot(m["val_steps"], curve, ls=ls, marker=".", color=f"C{i}",
                    label=f"{method}, d_model {d['d_model']} × {d['layers']} layers ({d['params'] / 1e6:.1f} M)")
    a2.set_xlabel("fine-tuning step")
    a2.set_ylabel("validation loss (mean over seeds)")
    a2.set_title("validation loss during fine-tuning (solid: AdamW, dashed: MLorc-AdamW r=4)", fontsize=9)
    a2.grid(alpha=0.3)
    a2.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"wrote {out}")


def plot_budget(paths, out):
    """MLorc-AdamW r=4's gap to AdamW against the fine-tuning steps, one line per model; a hollow
    marker where AdamW ends worse than with fewer steps (past its best budget: it overfits)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_model = models_by_size(paths)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    any_past = False
    for i, ((params, d_model, layers), ds) in enumerate(by_model.items()):
        steps, gaps, adam = zip(*((d["steps"], mlorc_gap(d), d["methods"]["AdamW"]["mean"]) for d in ds))
        ax.plot(steps, gaps, marker="o", color=f"C{i}", label=f"d_model {d_model} × {layers} layers ({params / 1e6:.1f} M)")
        past = [(s, g) for j, (s, g) in enumerate(zip(steps, gaps)) if j and adam[j] > min(adam[:j])]
        if past:
            ax.plot(*zip(*past), "o", mfc="white", color=f"C{i}", ms=7)
            any_past = True
    if any_past:
        ax.plot([], [], "o", mfc="white", color="0.4", label="hollow: AdamW ends worse than with fewer steps")
    ax.axhline(1.0, color="k", ls=":", lw=1, label="the 1% target")
    ax.set_xscale("log", base=2)
    ticks = sorted({d["steps"] for ds in by_model.values() for d in ds})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("fine-tuning steps")
    ax.set_ylabel("MLorc-AdamW r=4 over AdamW, final val loss (%)")
    ax.set_title("the gap against the fine-tuning budget (each method's lr tuned per budget)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
