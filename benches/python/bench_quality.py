#!/usr/bin/env python3
"""Fine-tuning quality: MLorc against the methods a user would pick instead, on tinylm.

    python3 benches/python/bench_quality.py --quick     # < 5 min on 2 idle cores (smoke: 30 steps, 2 lrs, 2 seeds)
    python3 benches/python/bench_quality.py             # full: 4 lrs x 6 methods, 3 seeds, ablation
    python3 benches/python/bench_quality.py --report-only   # re-render from the cached runs

Task: the byte-level transformer of examples/python/tinylm.py (3 layers, d_model 128) is
pre-trained with AdamW on the GNU licence texts, then fine-tuned on Python stdlib docstrings
(tinylm.pretrain_corpus / finetune_corpus; nothing is fetched). Every fine-tuning run starts
from the same pre-trained weights and uses tinylm.train (5 % warmup, cosine to 10 %, grad-clip
1.0, batch 32 x 64 bytes); a run's batches depend only on its seed.

Methods: AdamW (torch), MLorc-AdamW r=4 and MLorc-Lion r=4 (the library via mlorc.torch),
Lion (plain torch, in _common.py), GaLore-AdamW r=4 (galore-torch's GaLoreAdamW, rank-4 groups
for the attention/MLP weight matrices, update_proj_gap = steps/4, scale 1), LoRA r=4 (peft,
alpha 8, on qkv/proj/fc1/fc2; AdamW on the adapters; everything else frozen).
Fairness: each method's peak lr is chosen on its own 4-point log grid (1-3-10 steps; the 2
largest points with --quick, whose 30-step runs favour large lrs) by the final validation loss
of seed 0, with the same step budget; in full mode a grid whose best point is on its edge is
extended by up to 2 points that way. The
chosen lr is then run with the other seeds. Reported: validation loss mean ± std over seeds,
optimizer-state bytes, time per training step and per optimizer.step().

Ablation (MLorc-AdamW, library, the r=4 setting's chosen lr): r in {1,2,4,8,16} x q in {0,1} x
p in {0,4}, every seed (a subset on seed 0 with --quick). Rank with its own lr (full mode): each
r at q=0, p=0 on the r=4 lr and its two grid neighbours (seed 0), then every seed at the best.
Diagnosis (plain-torch reference RefMLorc of _common.py, MLorc-AdamW's chosen lr): both moments
compressed vs only the first (V exact) vs only the second (M exact), and the non-negativity fix
of ALGORITHM.md vs clamping negatives to 0; AdamW at the same lr alongside.

Every finished run is appended to results/quality_runs.jsonl (keyed by its settings) and
reused by later invocations, so an interrupted run resumes; --fresh ignores the cache.
Writes results/quality[_quick].{md,json} and results/quality_curves[_quick].png.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import NamedTuple  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

mt = C.import_mlorc_torch()
import torch  # noqa: E402

import tinylm  # noqa: E402
from tinylm import ByteCorpus, TinyLM, TinyLMConfig  # noqa: E402

MODEL = TinyLMConfig(n_layer=3, d_model=128, n_head=4, context=64)
BATCH = 32
VERSION = "q1"
CACHE = Path(__file__).resolve().parent / ".cache"

MODES = {
    "quick": dict(pretrain_steps=80, steps=30, seeds=[0, 1], grid=slice(2, 4), eval_batches=4, eval_points=2,
                  ablation=[(1, 0, 0), (16, 0, 0), (4, 1, 0)], ablation_all_seeds=False, rank_sweep=(),
                  diag_seeds=[0], extend=0),
    "full": dict(pretrain_steps=400, steps=200, seeds=[0, 1, 2], grid=slice(0, 4), eval_batches=None,
                 eval_points=5, ablation=[(r, q, p) for r in (1, 2, 4, 8, 16) for q in (0, 1) for p in (0, 4)],
                 ablation_all_seeds=True, rank_sweep=(1, 2, 4, 8, 16), diag_seeds=[0, 1, 2], extend=2),
}

GRIDS = {
    "AdamW": [3e-4, 1e-3, 3e-3, 1e-2],
    "MLorc-AdamW r=4": [3e-4, 1e-3, 3e-3, 1e-2],
    "Lion": [3e-5, 1e-4, 3e-4, 1e-3],
    "MLorc-Lion r=4": [3e-5, 1e-4, 3e-4, 1e-3],
    "GaLore-AdamW r=4": [1e-3, 3e-3, 1e-2, 3e-2],
    "LoRA r=4": [1e-3, 3e-3, 1e-2, 3e-2],
}
METHODS = list(GRIDS)
MATRIX_NAMES = ("qkv", "proj", "fc1", "fc2")
BLOCKS_ONLY = "blocks only"  # suffix of an MLorc-AdamW method whose embeddings and head stay dense
WD_ADAM, WD_LION = 0.01, 0.05


# --------------------------------------------------------------------------------------------
# Optimizers / models per method
# --------------------------------------------------------------------------------------------


def block_matrices(model):
    """(the transformer blocks' weight matrices, every other parameter)."""
    blocks = [w for n, w in model.named_parameters() if w.dim() == 2 and n.split(".")[-2] in MATRIX_NAMES]
    ids = {id(w) for w in blocks}
    return blocks, [w for w in model.parameters() if id(w) not in ids]


def build(method, lr, seed, model, steps, extra):
    """Returns (model to train, optimizer)."""
    r, q, p = extra.get("r", 4), extra.get("q", 0), extra.get("p", 0)
    if method == "AdamW":
        return model, torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=WD_ADAM)
    if method.startswith("MLorc-AdamW"):
        params = model.parameters()
        if method.endswith(BLOCKS_ONLY):  # embeddings and head keep dense moments, as GaLore's set-up below
            blocks, rest = block_matrices(model)
            params = [{"params": blocks}, {"params": rest, "layout": "dense"}]
        return model, mt.MLorcAdamW(params, lr=lr, weight_decay=WD_ADAM, rank=r, power_iters=q,
                                    oversampling=p, seed=seed)
    if method.startswith("MLorc-Lion"):
        return model, mt.MLorcLion(model.parameters(), lr=lr, weight_decay=WD_LION, rank=r, power_iters=q,
                                   oversampling=p, seed=seed)
    if method == "Lion":
        return model, C.TorchLion(model.parameters(), lr=lr, weight_decay=WD_LION)
    if method.startswith("GaLore"):
        from galore_torch import GaLoreAdamW

        gal, rest = block_matrices(model)
        groups = [{"params": rest},
                  {"params": gal, "rank": r, "update_proj_gap": max(1, steps // 4), "scale": 1.0, "proj_type": "std"}]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return model, GaLoreAdamW(groups, lr=lr, weight_decay=WD_ADAM)
    if method.startswith("LoRA"):
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=list(MATRIX_NAMES), bias="none")
        pm = get_peft_model(model, cfg)
        train_params = [w for w in pm.parameters() if w.requires_grad]
        return pm, torch.optim.AdamW(train_params, lr=lr, weight_decay=WD_ADAM)
    if method.startswith("ref"):
        return model, C.RefMLorc(model.parameters(), lr=lr, weight_decay=WD_ADAM, rank=r, power_iters=q,
                                 oversampling=p, compress_m=extra.get("cm", True), compress_v=extra.get("cv", True),
                                 negfix=extra.get("negfix", "mean"), seed=seed)
    raise ValueError(method)


# --------------------------------------------------------------------------------------------
# Runs (cached)
# --------------------------------------------------------------------------------------------


class Runner:
    def __init__(self, args, mode, init_state, pre_key, corpus, val_batches):
        self.args, self.mode, self.init_state, self.pre_key = args, mode, init_state, pre_key
        self.corpus, self.val_batches = corpus, val_batches
        self.path = C.RESULTS / "quality_runs.jsonl"
        self.cache = {}
        if self.path.is_file() and not args.fresh:
            for line in self.path.read_text().splitlines():
                try:
                    d = json.loads(line)
                    self.cache[d["key"]] = d
                except (ValueError, KeyError):
                    pass
        self.ran = 0

    def key(self, method, lr, seed, extra):
        m = self.mode
        s = json.dumps([VERSION, self.pre_key, method, f"{lr:.3e}", seed, m["steps"], m["eval_batches"],
                        m["eval_points"], sorted(extra.items())])
        return hashlib.sha256(s.encode()).hexdigest()[:20]

    def run(self, method, lr, seed, extra=None):
        extra = extra or {}
        k = self.key(method, lr, seed, extra)
        if k in self.cache:
            return self.cache[k]
        if self.args.report_only:
            return None
        steps = self.mode["steps"]
        torch.manual_seed(seed)
        model = TinyLM(MODEL)
        model.load_state_dict(self.init_state)
        model, opt = build(method, lr, seed, model, steps, extra)
        batches = self.corpus.train_batches(steps, BATCH, MODEL.context, seed=2000 + seed)
        t0 = time.perf_counter()
        log = tinylm.train(model, opt, batches, "cpu", steps, warmup=max(1, steps // 20),
                           eval_every=max(1, steps // self.mode["eval_points"]), val_batches=self.val_batches)
        wall = time.perf_counter() - t0
        skip = min(3, len(log.step_seconds) - 1)
        n_trainable = sum(w.numel() for w in model.parameters() if w.requires_grad)
        d = dict(key=k, method=method, lr=lr, seed=seed, extra=extra, steps=steps,
                 val=log.val_losses[-1], val_steps=log.val_steps, val_curve=log.val_losses,
                 train_tail=sum(log.losses[-10:]) / len(log.losses[-10:]),
                 state_bytes=C.state_bytes(opt), trainable_params=n_trainable,
                 s_per_step=statistics.median(log.step_seconds[skip:]),
                 opt_ms=1e3 * statistics.median(log.opt_seconds[skip:]), wall_s=wall)
        self.cache[k] = d
        self.ran += 1
        C.RESULTS.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(d) + "\n")
        print(f"  {method:34s} lr={lr:.0e} seed={seed} {json.dumps(extra) if extra else '':28s} "
              f"val {d['val']:.4f}  state {d['state_bytes'] / 1024:8.1f} KiB  {d['s_per_step']:.3f} s/step  "
              f"opt {d['opt_ms']:.1f} ms  ({wall:.0f} s)", flush=True)
        return d


# --------------------------------------------------------------------------------------------
# Pre-training (cached)
# --------------------------------------------------------------------------------------------


def pretrain(steps, no_cache):
    src = tinylm.pretrain_corpus()
    corpus = ByteCorpus.from_source(src, val_fraction=0.05)
    cfg = dict(steps=steps, lr=2e-3, warmup=max(1, steps // 12), weight_decay=0.1)
    key = tinylm.config_hash(MODEL.as_dict(), cfg, BATCH, src.sha, "bench-quality-v1")
    path = CACHE / f"pretrain-{key}.pt"
    model = TinyLM(MODEL)
    if path.is_file() and not no_cache:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(blob["model"])
        print(f"pre-trained weights from cache {path.relative_to(C.REPO)} (val {blob['val_loss']:.3f})")
        return model, key, src, float(blob["val_loss"])
    torch.manual_seed(0)
    model = TinyLM(MODEL)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"], betas=(0.9, 0.95))
    t0 = time.perf_counter()
    tinylm.train(model, opt, corpus.train_batches(steps, BATCH, MODEL.context, seed=1000), "cpu", steps,
                 warmup=cfg["warmup"])
    val = tinylm.evaluate(model, corpus.val_batches(BATCH, MODEL.context), "cpu")
    print(f"pre-trained {steps} steps in {time.perf_counter() - t0:.0f} s; held-out licence-text loss {val:.3f}")
    if not no_cache:
        CACHE.mkdir(parents=True, exist_ok=True)
        torch.save({"model": model.state_dict(), "val_loss": val}, path)
    return model, key, src, val


class Setup(NamedTuple):
    pre_model: TinyLM
    pre_key: str
    pre_src: tinylm.Text
    pre_val: float
    init_state: dict
    src: tinylm.Text
    corpus: ByteCorpus
    val_batches: list
    base_val: float


def finetune_setup(mode, no_cache) -> Setup:
    """The pre-trained MODEL (cached), the fine-tuning corpus, its validation batches and the
    pre-trained model's loss on them: what every fine-tuning run starts from."""
    pre_model, pre_key, pre_src, pre_val = pretrain(mode["pretrain_steps"], no_cache)
    init_state = {k: v.detach().clone() for k, v in pre_model.state_dict().items()}
    src = tinylm.finetune_corpus()
    corpus = ByteCorpus.from_source(src, val_fraction=0.1)
    val_batches = corpus.val_batches(BATCH, MODEL.context, max_batches=mode["eval_batches"])
    base_val = tinylm.evaluate(pre_model, val_batches, "cpu")
    return Setup(pre_model, pre_key, pre_src, pre_val, init_state, src, corpus, val_batches, base_val)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def ms(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return float("nan"), float("nan"), 0
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else float("nan")), len(xs)


def fmt_ms(xs):
    m, s, n = ms(xs)
    if n == 0:
        return "—"
    return f"{m:.4f} ± {s:.4f} (n={n})" if n > 1 else f"{m:.4f} (n=1)"


def kib(b):
    return f"{b / 1024:.1f}"


def plot(path, main_rows, grid_rows, base_val, mode_name):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 5))
    for i, (method, runs) in enumerate(main_rows.items()):
        runs = [r for r in runs if r]
        if not runs:
            continue
        steps = runs[0]["val_steps"]
        curves = [r["val_curve"] for r in runs if len(r["val_curve"]) == len(steps)]
        mean = [statistics.mean(c[j] for c in curves) for j in range(len(steps))]
        lo = [min(c[j] for c in curves) for j in range(len(steps))]
        hi = [max(c[j] for c in curves) for j in range(len(steps))]
        col = f"C{i}"
        a1.plot(steps, mean, marker="o", color=col, label=f"{method} (lr {runs[0]['lr']:.0e}, {len(curves)} seeds)")
        a1.fill_between(steps, lo, hi, color=col, alpha=0.15)
    a1.axhline(base_val, color="gray", ls=":", lw=1, label=f"pre-trained, before fine-tuning ({base_val:.3f})")
    a1.set_xlabel("fine-tuning step")
    a1.set_ylabel("validation loss (nats/byte)")
    a1.set_title(f"validation loss at each method's chosen lr (band: min–max over seeds) [{mode_name}]", fontsize=9)
    a1.grid(alpha=0.3)
    a1.legend(fontsize=7)
    for i, (method, pts) in enumerate(grid_rows.items()):
        pts = [(lr, r["val"]) for lr, r in pts if r]
        if pts:
            a2.plot([x for x, _ in pts], [y for _, y in pts], marker="o", color=f"C{i}", label=method)
    a2.set_xscale("log")
    a2.set_xlabel("peak learning rate")
    a2.set_ylabel("final validation loss, seed 0")
    a2.set_title("learning-rate grid (each method its own grid)", fontsize=9)
    a2.grid(alpha=0.3, which="both")
    a2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _next_lr(lr, up):
    """The 1-3-10 log grid: 1e-3 -> 3e-3 -> 1e-2 upwards, 1e-3 -> 3e-4 -> 1e-4 downwards."""
    lead = lr / 10 ** math.floor(math.log10(lr) + 1e-9)
    x = (lr * 3 if lead < 2 else lr * 10 / 3) if up else (lr * 0.3 if lead < 2 else lr / 3)
    return float(f"{x:.3g}")


def best_lr(pts):
    """The lr of the (lr, run) points with the lowest finite validation loss (the smaller lr on a
    tie); None where no run finished."""
    done = [(r["val"], lr) for lr, r in pts if r and math.isfinite(r["val"])]
    return min(done)[1] if done else None


def tune_lr(grid, run_at, extend):
    """Runs `run_at(lr)` on the grid, extending it by one 1-3-10 point that way while the best lr is
    on an edge, at most `extend` times. Returns the (lr, run) points in lr order and `best_lr` of
    them."""
    pts = [(lr, run_at(lr)) for lr in grid]
    for _ in range(extend):
        lr = best_lr(pts)
        if lr is None or lr not in (pts[0][0], pts[-1][0]):
            break
        edge = _next_lr(lr, up=lr == pts[-1][0])
        pts = sorted(pts + [(edge, run_at(edge))], key=lambda p: p[0])
    return pts, best_lr(pts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=None, help="fine-tuning steps per run (overrides the mode)")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (overrides the mode)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fresh", action="store_true", help="ignore cached runs in results/quality_runs.jsonl")
    ap.add_argument("--no-cache", action="store_true", help="do not cache the pre-trained weights")
    ap.add_argument("--report-only", action="store_true", help="only render what is cached; run nothing")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: ablation,diagnosis")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    mode_name = "quick" if args.quick else "full"
    mode = dict(MODES[mode_name])
    if args.steps:
        mode["steps"] = args.steps
    if args.seeds:
        mode["seeds"] = list(range(args.seeds))
        mode["diag_seeds"] = mode["seeds"] if mode_name == "full" else mode["diag_seeds"][: args.seeds]
    skip = set(filter(None, args.skip.split(",")))
    t_start = time.perf_counter()
    machine = f"{C.cpu_model()}, {C.ncores()} cores, torch {torch.__version__}, Python {platform.python_version()}"
    print(f"mode {mode_name}: {mode}\nmachine: {machine}; torch threads {torch.get_num_threads()}")
    import galore_torch  # noqa: F401  (fail early, loudly, if missing)
    import peft

    pre_model, pre_key, pre_src, pre_val, init_state, src, corpus, val_batches, base_val = finetune_setup(mode, args.no_cache)
    print(f"fine-tuning text: {src.name}: {len(corpus.train):,} train bytes, {len(corpus.val):,} val bytes "
          f"({len(val_batches)} val batches used); val loss before fine-tuning {base_val:.4f}")
    R = Runner(args, mode, init_state, pre_key, corpus, val_batches)
    seeds = mode["seeds"]

    # 1. lr grid, seed 0
    grid_rows, chosen = {}, {}
    for method in METHODS:
        grid = list(GRIDS[method][mode["grid"]])
        grid_rows[method], chosen[method] = tune_lr(grid, lambda lr: R.run(method, lr, seeds[0]), mode["extend"])
    # 2. other seeds at the chosen lr
    main_rows = {}
    for method in METHODS:
        lr = chosen[method]
        main_rows[method] = [R.run(method, lr, s) for s in seeds] if lr else []
    lr_m = chosen["MLorc-AdamW r=4"]
    # 3. diagnosis
    diag = {}
    if "diagnosis" not in skip and lr_m:
        variants = [
            ("AdamW (exact moments), same lr", "AdamW", {}),
            ("MLorc-AdamW r=4 (library)", "MLorc-AdamW r=4", {}),
            ("ref: M and V compressed, mean fix (= MLorc)", "ref", {}),
            ("ref: only M compressed (V exact)", "ref", {"cv": False}),
            ("ref: only V compressed (M exact)", "ref", {"cm": False}),
            ("ref: M and V compressed, clamp negatives to 0", "ref", {"negfix": "zero"}),
        ]
        for name, method, extra in variants:
            diag[name] = [R.run(method, lr_m, s, extra) for s in mode["diag_seeds"]]
    # 4. ablation at MLorc-AdamW's lr, on every seed (one seed differs from the next by up to
    # ~0.05 here, more than most settings differ from each other)
    abl = {}
    if "ablation" not in skip and lr_m:
        abl_seeds = seeds if mode["ablation_all_seeds"] else seeds[:1]
        for (r, q, p) in mode["ablation"]:
            extra = {k: v for k, v in (("r", r), ("q", q), ("p", p)) if (k, v) not in (("r", 4), ("q", 0), ("p", 0))}
            abl[(r, q, p)] = [R.run("MLorc-AdamW r=4", lr_m, s, extra) for s in abl_seeds]
    # 5. rank with its own lr: the ablation's fixed lr favours the rank it was tuned for
    sweep = {}
    if "ablation" not in skip and lr_m:
        for r in mode["rank_sweep"]:
            extra = {"r": r} if r != 4 else {}
            lrs = [_next_lr(lr_m, up=False), lr_m, _next_lr(lr_m, up=True)]
            grid = [(lr, R.run("MLorc-AdamW r=4", lr, seeds[0], extra)) for lr in lrs]
            done = [(g["val"], lr) for lr, g in grid if g and math.isfinite(g["val"])]
            best = min(done)[1] if done else None
            runs = [R.run("MLorc-AdamW r=4", best, s, extra) for s in seeds] if best else []
            sweep[r] = dict(grid=grid, lr=best, runs=runs)

    # ---------------- report ----------------
    wall = time.perf_counter() - t_start
    cmd = "python3 " + " ".join([os.path.relpath(sys.argv[0], C.REPO)] + sys.argv[1:])
    L = [f"Command: `{cmd}` — mode {mode_name}, this invocation {wall:.0f} s wall ({R.ran} runs executed, "
         f"the rest from results/quality_runs.jsonl).", "",
         f"Machine: {machine}; torch threads {args.threads}. Model: tinylm {MODEL.n_layer} layers, d_model "
         f"{MODEL.d_model}, {TinyLM(MODEL).num_params():,} params; pre-trained {mode['pretrain_steps']} AdamW steps on "
         f"{pre_src.name} (held-out loss {pre_val:.3f}); fine-tuned {mode['steps']} steps x {BATCH} x {MODEL.context} "
         f"bytes on {src.name}; validation: {len(val_batches)} batches of held-out docstrings. Loss before "
         f"fine-tuning: {base_val:.4f} nats/byte. galore-torch and peft {peft.__version__} imported.", "",
         "### Main comparison", "",
         f"lr chosen per method on its own grid by seed-0 final validation loss; then seeds {seeds}. "
         "State = optimizer state bytes (AdamW: exp_avg+exp_avg_sq; MLorc: state_bytes(); GaLore: projected "
         "moments + projection matrices; LoRA: AdamW moments of the adapters). s/step = median "
         "forward+backward+step; opt ms = median optimizer.step().", "",
         "| method | grid: lr → val (seed 0) | chosen lr | val loss mean ± std | state KiB | trainable params | s/step | opt ms |",
         "|---|---|---|---|---|---|---|---|"]
    for method in METHODS:
        g = ", ".join(f"{lr:.0e}→{r['val']:.4f}" if r else f"{lr:.0e}→(not run)" for lr, r in grid_rows[method])
        runs = [r for r in main_rows[method] if r]
        lr = chosen[method]
        edge = ""
        grid = [lr_ for lr_, _ in grid_rows[method]]
        if lr is not None and (lr == grid[0] or lr == grid[-1]):
            edge = " (grid edge)"
        if len(grid) > len(GRIDS[method][mode["grid"]]):
            edge += " (grid extended)"
        if runs:
            L.append(f"| {method} | {g} | {lr:.0e}{edge} | {fmt_ms([r['val'] for r in runs])} | "
                     f"{kib(runs[0]['state_bytes'])} | {runs[0]['trainable_params']:,} | "
                     f"{statistics.median(r['s_per_step'] for r in runs):.3f} | "
                     f"{statistics.median(r['opt_ms'] for r in runs):.1f} |")
        else:
            L.append(f"| {method} | {g} | — | — | — | — | — | — |")
    # pairwise deltas vs MLorc-AdamW
    L += ["", "Differences of mean validation loss (row − MLorc-AdamW r=4), with the seed std of each:", ""]
    ref_vals = [r["val"] for r in main_rows["MLorc-AdamW r=4"] if r]
    m0, s0, _ = ms(ref_vals)
    for method in METHODS:
        vals = [r["val"] for r in main_rows[method] if r]
        if vals and method != "MLorc-AdamW r=4":
            m1, s1, _ = ms(vals)
            L.append(f"- {method}: {m1 - m0:+.4f} (std {s1:.4f} vs {s0:.4f})")
    if diag:
        L += ["", "### Diagnosis (plain-torch reference MLorc-AdamW r=4, q=0, p=0; "
              f"lr {lr_m:.0e} = MLorc-AdamW's chosen lr; seeds {mode['diag_seeds']})", "",
              "| variant | val loss mean ± std | opt ms |", "|---|---|---|"]
        for name, runs in diag.items():
            runs = [r for r in runs if r]
            if runs:
                L.append(f"| {name} | {fmt_ms([r['val'] for r in runs])} | "
                         f"{statistics.median(r['opt_ms'] for r in runs):.1f} |")
    if abl:
        L += ["", f"### Ablation (MLorc-AdamW library, lr {lr_m:.0e} = the r=4 setting's chosen lr)", "",
              "| r | q | p | val loss mean ± std | state KiB | opt ms | s/step |", "|---|---|---|---|---|---|---|"]
        for key in sorted(abl):
            runs = [r for r in abl[key] if r]
            if runs:
                L.append(f"| {key[0]} | {key[1]} | {key[2]} | {fmt_ms([r['val'] for r in runs])} | "
                         f"{kib(runs[0]['state_bytes'])} | {statistics.median(r['opt_ms'] for r in runs):.1f} | "
                         f"{statistics.median(r['s_per_step'] for r in runs):.3f} |")
    if sweep:
        L += ["", "### Rank with its own lr (MLorc-AdamW library, q=0, p=0; lr chosen by seed-0 validation "
              f"loss among the r=4 lr and its two grid neighbours; then seeds {seeds})", "",
              "| r | lr → val (seed 0) | chosen lr | val loss mean ± std | state KiB | opt ms |",
              "|---|---|---|---|---|---|"]
        for r, d in sweep.items():
            g = ", ".join(f"{lr:.0e}→{x['val']:.4f}" if x else f"{lr:.0e}→(not run)" for lr, x in d["grid"])
            runs = [x for x in d["runs"] if x]
            if runs:
                L.append(f"| {r} | {g} | {d['lr']:.0e} | {fmt_ms([x['val'] for x in runs])} | "
                         f"{kib(runs[0]['state_bytes'])} | {statistics.median(x['opt_ms'] for x in runs):.1f} |")
    suffix = "_quick" if args.quick else ""
    png = C.RESULTS / f"quality_curves{suffix}.png"
    plot(png, main_rows, grid_rows, base_val, mode_name)
    L += ["", f"Plot: `{png.relative_to(C.REPO)}`"]
    md = "\n".join(L)
    (C.RESULTS / f"quality{suffix}.md").write_text(md + "\n")
    (C.RESULTS / f"quality{suffix}.json").write_text(json.dumps(dict(
        mode=mode_name, settings={k: (str(v) if isinstance(v, slice) else v) for k, v in mode.items()},
        command=cmd, machine=machine, base_val=base_val, chosen=chosen,
        grid={m: [(lr, r and r["val"]) for lr, r in v] for m, v in grid_rows.items()},
        main={m: v for m, v in main_rows.items()}, diagnosis=diag,
        ablation={str(k): v for k, v in abl.items()},
        rank_sweep={str(r): dict(lr=d["lr"], grid=[(lr, x and x["val"]) for lr, x in d["grid"]], runs=d["runs"])
                    for r, d in sweep.items()}), indent=1, default=str))
    print()
    print(md)
    print(f"\nwrote results/quality{suffix}.md, .json, {png.name}; wall {wall:.0f} s")


if __name__ == "__main__":
    main()
