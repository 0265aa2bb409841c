#!/usr/bin/env python3
"""MLorc demo: fine-tune a small pre-trained byte-level transformer with AdamW and MLorc-AdamW.

What it does (a few minutes on 2 CPU cores, nothing downloaded):
  1. pre-trains a tiny byte-level transformer LM on licence texts found on the machine
     (the GNU GPL/LGPL/GFDL texts in /usr/share/common-licenses; cached under build/),
  2. fine-tunes copies of it on a clearly different text -- docstrings of Python standard-library
     modules gathered with `inspect` -- once with torch.optim.AdamW and once with
     mlorc.torch.MLorcAdamW (rank-4 compressed moments, full-rank updates): same steps, same
     batches, same seed, same lr schedule,
  3. prints a results table (losses, optimizer-state memory, time per step) and saves a plot of
     both loss curves to build/demo/finetune_loss.png.

    python3 examples/python/finetune_demo.py            # full demo (~2-4 min on 2 cores)
    python3 examples/python/finetune_demo.py --quick    # ~30 s smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: on a small machine that is also busy with
# something else (a build, a test suite), spinning threads made each step 3-4x slower in our
# runs on 2 cores. Must be set before torch is imported; a value set by the user wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

import tinylm  # noqa: E402
from tinylm import ByteCorpus, TinyLM, TinyLMConfig  # noqa: E402

# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------

MODEL = TinyLMConfig(n_layer=3, d_model=128, n_head=4, context=64)
BATCH = 32

PRETRAIN = dict(steps=400, lr=2e-3, warmup=30, weight_decay=0.1)
QUICK_PRETRAIN = dict(steps=40, lr=2e-3, warmup=8, weight_decay=0.1)

FINETUNE_STEPS = 300
QUICK_FINETUNE_STEPS = 30
# Fine-tuning learning rates (peak; 5 % linear warmup then cosine decay to 10 %), each the best
# of a doubling sweep run offline on exactly this setting (300 steps, seed 0, 2 CPU cores),
# final validation loss in nats/byte:
#   AdamW:             5e-4 2.021 | 1e-3 1.927 | 2e-3 1.840 | 4e-3 1.809 | 8e-3 1.814
#   MLorc-AdamW r=4:   1e-3 2.190 | 2e-3 2.098 | 4e-3 2.013 | 8e-3 1.962 | 1.6e-2 2.043
# (The short pre-training leaves a lot to learn, hence lrs above the usual fine-tuning values;
# on this tiny model MLorc's best lr is about twice AdamW's.)
LR_ADAMW = 4e-3
LR_MLORC = 8e-3
WEIGHT_DECAY = 0.01
RANK = 4


def import_mlorc_torch():
    """Import mlorc.torch, from an installed package or else from this repository's checkout.

    There is deliberately no fallback: if MLorc cannot be loaded the demo stops.
    """
    lib = REPO / "target" / "release" / "libmlorc.so"
    if "MLORC_LIBRARY" not in os.environ and lib.is_file():
        os.environ["MLORC_LIBRARY"] = str(lib)
    try:
        import mlorc  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(REPO / "bindings" / "python" / "src"))
    try:
        import mlorc.torch as mt

        # The native library is loaded lazily: take one step on a small matrix now, so that a
        # missing or broken libmlorc stops the demo here and not after pre-training.
        p = torch.nn.Parameter(torch.zeros(8, 16))
        p.grad = torch.ones(8, 16)
        mt.MLorcAdamW([p], lr=1e-3, rank=1).step()
        return mt
    except Exception as e:  # ImportError, or the native library failing to load
        sys.exit(
            "error: cannot import mlorc.torch (the MLorc PyTorch bindings): "
            f"{type(e).__name__}: {e}\n"
            "  Build the native library with `cargo build --release` in the repository root\n"
            "  (or set MLORC_LIBRARY=/path/to/libmlorc.so), and install the bindings with\n"
            "  `pip install -e bindings/python` or run from a repository checkout."
        )


# --------------------------------------------------------------------------------------------
# Phases
# --------------------------------------------------------------------------------------------


def make_bar(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, leave=True)


def progress_cb(bar):
    ema = [None]

    def cb(step: int, loss: float) -> None:
        ema[0] = loss if ema[0] is None else 0.9 * ema[0] + 0.1 * loss
        bar.update(1)
        if step % 5 == 0 or step == bar.total:
            bar.set_postfix(loss=f"{ema[0]:.3f}")

    return cb


def pretrain(args, device, cache_dir: Path):
    cfgp = QUICK_PRETRAIN if args.quick else dict(PRETRAIN, steps=args.pretrain_steps or PRETRAIN["steps"])
    src = tinylm.pretrain_corpus()
    print(f"pre-training text: {src.name} ({len(src):,} bytes)")
    corpus = ByteCorpus.from_source(src, val_fraction=0.05)
    key = tinylm.config_hash(MODEL.as_dict(), cfgp, BATCH, args.seed, src.sha, "v1")
    path = cache_dir / f"pretrain-{key}.pt"
    model = TinyLM(MODEL)
    if path.is_file() and not args.no_cache:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(blob["model"])
        print(f"loaded cached pre-trained weights: {path} "
              f"(pre-training val loss {blob['val_loss']:.3f} nats/byte)")
        return model.to(device), float(blob["val_loss"]), src

    torch.manual_seed(args.seed)
    model = TinyLM(MODEL).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfgp["lr"], weight_decay=cfgp["weight_decay"],
                            betas=(0.9, 0.95))
    batches = corpus.train_batches(cfgp["steps"], BATCH, MODEL.context, seed=args.seed + 1000)
    t0 = time.perf_counter()
    with make_bar(cfgp["steps"], "pre-train (AdamW)") as bar:
        tinylm.train(model, opt, batches, device, cfgp["steps"], warmup=cfgp["warmup"],
                     progress=progress_cb(bar))
    val = tinylm.evaluate(model, corpus.val_batches(BATCH, MODEL.context), device)
    print(f"pre-trained in {time.perf_counter() - t0:.1f}s; held-out loss on the licence texts "
          f"{val:.3f} nats/byte")
    if not args.no_cache:
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            tmp = path.with_suffix(".tmp")
            torch.save({"model": state, "val_loss": val, "config": MODEL.as_dict(),
                        "pretrain": cfgp, "text": src.name}, tmp)
            os.replace(tmp, path)
            print(f"cached pre-trained weights: {path}")
        except OSError as e:
            print(f"warning: could not cache pre-trained weights in {cache_dir}: {e}")
    return model, val, src


def finetune(name, make_opt, init_state, corpus, batches, val_batches, steps, device, seed):
    torch.manual_seed(seed)
    model = TinyLM(MODEL).to(device)
    model.load_state_dict(init_state)
    opt = make_opt(model.parameters())
    eval_every = max(1, steps // 12)
    with make_bar(steps, f"fine-tune ({name})") as bar:
        log = tinylm.train(model, opt, iter(batches), device, steps, warmup=max(1, steps // 20),
                           eval_every=eval_every, val_batches=val_batches, progress=progress_cb(bar))
    return model, opt, log


def summarize(name, opt, log, state_bytes):
    tail = min(20, len(log.losses))
    skip = min(5, len(log.step_seconds) - 1)  # first steps allocate state / warm up kernels
    return dict(
        method=name,
        train_loss=sum(log.losses[-tail:]) / tail,
        val_loss=log.val_losses[-1],
        best_val_loss=min(log.val_losses[1:]) if len(log.val_losses) > 1 else log.val_losses[-1],
        state_mb=state_bytes / 2**20,
        state_bytes=state_bytes,
        s_per_step=sum(log.step_seconds[skip:]) / len(log.step_seconds[skip:]),
        opt_ms_per_step=1e3 * sum(log.opt_seconds[skip:]) / len(log.opt_seconds[skip:]),
        lr=opt.defaults["lr"],
    )


def print_table(rows, tail):
    head = ["method", f"train loss*", "val loss", "opt state MB", "s/step", "opt.step ms"]
    cells = [[r["method"], f"{r['train_loss']:.3f}", f"{r['val_loss']:.3f}", f"{r['state_mb']:.3f}",
              f"{r['s_per_step']:.3f}", f"{r['opt_ms_per_step']:.1f}"] for r in rows]
    w = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
    line = "+-" + "-+-".join("-" * x for x in w) + "-+"
    fmt = lambda row: "| " + " | ".join(  # noqa: E731
        (c.ljust(x) if i == 0 else c.rjust(x)) for i, (c, x) in enumerate(zip(row, w))) + " |"
    print(line)
    print(fmt(head))
    print(line)
    for c in cells:
        print(fmt(c))
    print(line)
    print(f"* train loss: mean of the last {tail} steps; losses in nats/byte; "
          "val loss on the held-out docstrings after the last step.")


def ema(xs, alpha):
    out, m = [], None
    for x in xs:
        m = x if m is None else (1 - alpha) * m + alpha * x
        out.append(m)
    return out


def plot(path: Path, logs, rows, base_val, texts, rank, steps):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"AdamW": "tab:blue", f"MLorc-AdamW (rank {rank})": "tab:orange"}
    fig, (ax, axm) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [3, 1]})
    alpha = 2 / (1 + max(5, steps // 15))
    for (name, log), row in zip(logs, rows):
        c = colors.get(name, None)
        ax.plot(log.steps, log.losses, color=c, alpha=0.18, lw=0.8)
        ax.plot(log.steps, ema(log.losses, alpha), color=c, lw=2, label=f"{name}: train (smoothed)")
        ax.plot(log.val_steps, log.val_losses, color=c, ls="--", marker="o", ms=5,
                label=f"{name}: validation (final {row['val_loss']:.3f})")
    ax.axhline(base_val, color="gray", ls=":", lw=1,
               label=f"pre-trained model, before fine-tuning (val {base_val:.3f})")
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("cross-entropy loss (nats / byte)")
    ax.set_title("Fine-tuning loss: AdamW vs MLorc-AdamW", fontsize=12)
    lo = min(min(r["train_loss"], r["val_loss"]) for r in rows)
    hi = max(base_val, *(l.val_losses[0] for _, l in logs))
    ax.set_ylim(lo - 0.15 * (hi - lo), hi + 0.08 * (hi - lo))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="upper right")

    names = [r["method"].replace(" (", "\n(") for r in rows]
    mbs = [r["state_mb"] for r in rows]
    bars = axm.bar(names, mbs, color=[colors.get(r["method"]) for r in rows])
    for b, r in zip(bars, rows):
        axm.text(b.get_x() + b.get_width() / 2, b.get_height(), f"{r['state_mb']:.2f} MB",
                 ha="center", va="bottom", fontsize=9)
    axm.set_ylabel("optimizer state (MB)")
    axm.set_title("Optimizer-state memory", fontsize=12)
    axm.set_ylim(0, max(mbs) * 1.15)
    axm.grid(alpha=0.3, axis="y")

    fig.suptitle(
        f"Byte-level transformer ({MODEL.n_layer} layers, d={MODEL.d_model}, "
        f"{sum(p.numel() for p in TinyLM(MODEL).parameters()) / 1e6:.2f}M params) pre-trained on "
        f"{texts[0]}, fine-tuned on {texts[1]}",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=None,
                   help=f"fine-tuning steps per optimizer (default {FINETUNE_STEPS}; "
                        f"{QUICK_FINETUNE_STEPS} with --quick)")
    p.add_argument("--quick", action="store_true", help="~30 s smoke version (fewer steps)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--out", default=str(REPO / "build" / "demo"),
                   help="output directory for the plot and results JSON (default: build/demo)")
    p.add_argument("--cache-dir", default=str(REPO / "build" / "demo" / "cache"),
                   help="where pre-trained weights are cached (default: build/demo/cache)")
    p.add_argument("--no-cache", action="store_true", help="always pre-train; write no cache")
    p.add_argument("--pretrain-steps", type=int, default=None,
                   help=f"pre-training steps (default {PRETRAIN['steps']}; ignored with --quick)")
    p.add_argument("--lr-adamw", type=float, default=LR_ADAMW)
    p.add_argument("--lr-mlorc", type=float, default=LR_MLORC)
    p.add_argument("--rank", type=int, default=RANK, help="MLorc rank (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: all available cores)")
    return p.parse_args(argv)


def main(argv=None):
    t_start = time.perf_counter()
    args = parse_args(argv)
    steps = args.steps or (QUICK_FINETUNE_STEPS if args.quick else FINETUNE_STEPS)
    if steps < 1:
        sys.exit("error: --steps must be >= 1")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda requested but CUDA is not available")
    try:
        ncores = len(os.sched_getaffinity(0))
    except AttributeError:
        ncores = os.cpu_count() or 1
    torch.set_num_threads(args.threads or ncores)

    mt = import_mlorc_torch()
    out = Path(args.out)
    print(f"device: {device}   torch threads: {torch.get_num_threads()}   torch {torch.__version__}")
    print(f"model: byte-level transformer, {MODEL.n_layer} layers, d_model {MODEL.d_model}, "
          f"{MODEL.n_head} heads, context {MODEL.context}, batch {BATCH}, "
          f"{TinyLM(MODEL).num_params():,} parameters")

    base_model, pre_val, pre_src = pretrain(args, device, Path(args.cache_dir))
    init_state = {k: v.detach().clone() for k, v in base_model.state_dict().items()}
    del base_model

    src = tinylm.finetune_corpus()
    corpus = ByteCorpus.from_source(src, val_fraction=0.1)
    print(f"fine-tuning text: {src.name} ({len(corpus.train):,} training bytes, "
          f"{len(corpus.val):,} held-out bytes)")
    val_batches = corpus.val_batches(BATCH, MODEL.context, max_batches=3 if args.quick else None)
    batches = list(corpus.train_batches(steps, BATCH, MODEL.context, seed=args.seed + 2000))

    mlorc_name = f"MLorc-AdamW (rank {args.rank})"
    methods = [
        ("AdamW", lambda ps: torch.optim.AdamW(ps, lr=args.lr_adamw, weight_decay=WEIGHT_DECAY),
         tinylm.adamw_state_bytes),
        (mlorc_name, lambda ps: mt.MLorcAdamW(ps, lr=args.lr_mlorc, weight_decay=WEIGHT_DECAY,
                                              rank=args.rank),
         lambda o: o.state_bytes()),
    ]
    logs, rows = [], []
    for name, make_opt, state_bytes in methods:
        _, opt, log = finetune(name, make_opt, init_state, corpus, batches, val_batches, steps,
                               device, args.seed)
        logs.append((name, log))
        rows.append(summarize(name, opt, log, state_bytes(opt)))
        del opt

    base_val = logs[0][1].val_losses[0]
    print()
    print(f"Fine-tuning {steps} steps x {BATCH} x {MODEL.context} bytes on {device}; "
          f"pre-trained model's val loss before fine-tuning: {base_val:.3f} nats/byte")
    print_table(rows, min(20, steps))
    a, m = rows
    if a["state_bytes"]:
        print(f"MLorc keeps {m['state_mb']:.3f} MB of optimizer state vs {a['state_mb']:.3f} MB "
              f"for AdamW ({a['state_bytes'] / max(m['state_bytes'], 1):.1f}x less); "
              f"val loss {m['val_loss']:.3f} vs {a['val_loss']:.3f}.")

    out.mkdir(parents=True, exist_ok=True)
    png = out / "finetune_loss.png"
    short = ("GNU licence texts" if pre_src.name.startswith("GNU") else pre_src.name,
             "Python stdlib docstrings" if src.name.startswith("docstrings") else src.name)
    plot(png, logs, rows, base_val, short, args.rank, steps)
    res = dict(device=str(device), steps=steps, batch=BATCH, model=MODEL.as_dict(),
               pretrain_text=pre_src.name, finetune_text=src.name,
               pretrain_val_loss=pre_val, base_val_loss=base_val, results=rows,
               curves={n: dict(steps=l.steps, loss=l.losses, val_steps=l.val_steps,
                               val_loss=l.val_losses) for n, l in logs})
    (out / "finetune_results.json").write_text(json.dumps(res, indent=1))
    print(f"plot: {png}")
    print(f"results: {out / 'finetune_results.json'}")
    print(f"total wall time: {time.perf_counter() - t_start:.1f}s")
    for r in rows:
        if not all(math.isfinite(r[k]) for k in ("train_loss", "val_loss")):
            sys.exit(f"error: {r['method']} produced a non-finite loss")


if __name__ == "__main__":
    main()
