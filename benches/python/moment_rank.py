#!/usr/bin/env python3
"""How low-rank are AdamW's moments on the quality benchmark's task? (MLorc's premise.)

    python3 benches/python/moment_rank.py              # about 2 minutes on 2 cores
    python3 benches/python/moment_rank.py --lr 1e-2 --steps 200
    python3 benches/python/moment_rank.py --d-model 320 --layers 5 --lr 1e-3   # quality_scale.py's model

Fine-tunes tinylm from bench_quality's pre-trained weights with exact torch AdamW (the
benchmark's chosen lr 3e-3, 200 steps, seed 0: the same batches as its AdamW run) and, at a few
steps t, for every matrix MLorc factors, measures with a full SVD in f64:

- energy: the share of ||A||²_F the best rank-r approximation keeps, for the gradient g_t, the
  first moment M_t (exp_avg) and the second moment V_t (exp_avg_sq), r in {1, 2, 4, 8, 16};
- next update: AdamW's update at step t+1 against the update built as MLorc builds it, from
  rank-r moments of step t: M = β1·[M_t]_r + (1−β1)·g_{t+1}, V = β2·fix([V_t]_r) + (1−β2)·g²_{t+1}
  (fix: ALGORITHM.md step 2), with the optimal rank-r factors (no sketching error). Reported as
  the cosine between the two update matrices and the norm ratio |MLorc| / |AdamW|.

Medians over the matrices of each kind (qkv, proj, fc1, fc2 over the layers; tok, pos) and
energy-weighted overall means. The training itself is exact AdamW throughout, so every step's
figures describe one compression of the moments AdamW really has, not MLorc's accumulated drift.
Writes results/moment_rank.{md,json} (with a suffix naming the model, lr, steps and seed where
they are not the defaults).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

C.setup_paths()
import torch  # noqa: E402

import tinylm  # noqa: E402
from tinylm import ByteCorpus, TinyLM  # noqa: E402

import bench_quality as Q  # noqa: E402  (the task: model, pre-training, batches)

RANKS = (1, 2, 4, 8, 16)
BETAS = (0.9, 0.999)
EPS = 1e-8


def kind(name: str) -> str:
    return name.split(".")[-2]


def best_rank(svd, r: int) -> torch.Tensor:
    u, s, vh = svd
    return (u[:, :r] * s[:r]) @ vh[:r]


def energy(svd, r: int) -> float:
    s2 = svd[1] ** 2
    total = float(s2.sum())
    return float(s2[:r].sum()) / total if total > 0 else 1.0


def negative_fix(v: torch.Tensor) -> torch.Tensor:
    neg = v < 0
    if not bool(neg.any()):
        return v
    return torch.where(neg, v[neg].abs().mean(), v)


def adamw_update(m: torch.Tensor, v: torch.Tensor, t: int) -> torch.Tensor:
    b1, b2 = BETAS
    return (m / (1 - b1 ** t)) / (v.sqrt() / math.sqrt(1 - b2 ** t) + EPS)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lr", type=float, default=3e-3, help="peak lr of the AdamW run (bench_quality's choice)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--at", default="1,10,50,100,199", help="steps t at which the moments are measured")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--d-model", type=int, default=Q.MODEL.d_model,
                    help="width of the model (quality_scale.py's models: 256, 320, 384)")
    ap.add_argument("--layers", type=int, default=Q.MODEL.n_layer)
    args = ap.parse_args()
    default_model = (args.d_model, args.layers) == (Q.MODEL.d_model, Q.MODEL.n_layer)
    # The pre-training cache is keyed by the model, so quality_scale.py's runs share it.
    Q.MODEL = Q.TinyLMConfig(n_layer=args.layers, d_model=args.d_model, n_head=Q.MODEL.n_head,
                             context=Q.MODEL.context)
    torch.set_num_threads(args.threads)
    at = sorted({int(x) for x in args.at.split(",")})
    if not at or at[0] < 1 or at[-1] >= args.steps:
        sys.exit(f"--at steps must lie in 1 .. {args.steps - 1} (step t+1 is needed too)")

    t0 = time.perf_counter()
    mode = Q.MODES["full"]
    pre_model, _, _, _ = Q.pretrain(mode["pretrain_steps"], no_cache=False)
    corpus = ByteCorpus.from_source(tinylm.finetune_corpus(), val_fraction=0.1)
    torch.manual_seed(args.seed)
    model = TinyLM(Q.MODEL)
    model.load_state_dict(pre_model.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=BETAS, eps=EPS, weight_decay=Q.WD_ADAM)
    # The matrices MLorc factors at r = 4 (ALGORITHM.md: (m + n + 1)·r < m·n).
    mats = {n: w for n, w in model.named_parameters() if w.dim() == 2 and (sum(w.shape) + 1) * 4 < w.numel()}
    pending = {}  # name -> (t, {r: (M_r, V_r)}) measured at step t, scored at t + 1
    rows = []  # one per (matrix, t)

    def progress(step, _loss):
        with torch.no_grad():
            for name, w in mats.items():
                st = opt.state[w]
                g = w.grad.double()
                m, v = st["exp_avg"].double(), st["exp_avg_sq"].double()
                if name in pending:
                    t, low = pending.pop(name)
                    b1, b2 = BETAS
                    exact = adamw_update(m, v, step)
                    row = next(x for x in rows if x["name"] == name and x["t"] == t)
                    for r, (mr, vr) in low.items():
                        approx = adamw_update(b1 * mr + (1 - b1) * g, b2 * negative_fix(vr) + (1 - b2) * g * g, step)
                        cos = float((exact * approx).sum() / (exact.norm() * approx.norm()))
                        row[f"cos_r{r}"] = cos
                        row[f"norm_r{r}"] = float(approx.norm() / exact.norm())
                if step in at:
                    svds = {x: torch.linalg.svd(a, full_matrices=False) for x, a in (("g", g), ("m", m), ("v", v))}
                    row = dict(name=name, kind=kind(name), t=step, shape=list(w.shape))
                    for x, s in svds.items():
                        row[f"{x}_norm2"] = float((s[1] ** 2).sum())
                        for r in RANKS:
                            row[f"{x}_r{r}"] = energy(s, r)
                    rows.append(row)
                    pending[name] = (step, {r: (best_rank(svds["m"], r), best_rank(svds["v"], r)) for r in RANKS})

    batches = corpus.train_batches(args.steps, Q.BATCH, Q.MODEL.context, seed=2000 + args.seed)
    log = tinylm.train(model, opt, batches, "cpu", args.steps, warmup=max(1, args.steps // 20), progress=progress)
    val = tinylm.evaluate(model, corpus.val_batches(Q.BATCH, Q.MODEL.context), "cpu")
    wall = time.perf_counter() - t0

    kinds = sorted({row["kind"] for row in rows}, key=["tok", "pos", "qkv", "proj", "fc1", "fc2"].index)
    model_args = "" if default_model else f" --d-model {args.d_model} --layers {args.layers}"
    lines = [f"Command: `python3 benches/python/moment_rank.py{model_args} --lr {args.lr:g} --steps {args.steps} "
             f"--seed {args.seed} --at {','.join(map(str, at))}` ({wall:.0f} s; {C.cpu_model()}, "
             f"torch {torch.__version__}). Model: tinylm d_model {args.d_model}, {args.layers} layers, "
             f"{model.num_params():,} parameters. AdamW fine-tuning final val loss {val:.4f}, "
             f"last train loss {log.losses[-1]:.4f}.", ""]
    lines += ["Share of ||·||²_F kept by the best rank-r approximation (median over the matrices of a kind; "
              "'all' = energy-weighted mean over all matrices):", ""]
    header = "| t | kind | " + " | ".join(f"{x} r={r}" for x in ("g", "M", "V") for r in (1, 4, 16)) + " |"
    lines += [header, "|" + "---|" * (2 + 9)]
    for t in at:
        for kd in kinds + ["all"]:
            sel = [x for x in rows if x["t"] == t and (kd == "all" or x["kind"] == kd)]
            cells = []
            for x in ("g", "m", "v"):
                for r in (1, 4, 16):
                    if kd == "all":
                        tot = sum(y[f"{x}_norm2"] for y in sel)
                        val_ = sum(y[f"{x}_r{r}"] * y[f"{x}_norm2"] for y in sel) / tot
                    else:
                        val_ = statistics.median(y[f"{x}_r{r}"] for y in sel)
                    cells.append(f"{val_:.3f}")
            lines.append(f"| {t} | {kd} | " + " | ".join(cells) + " |")
    lines += ["", "Next AdamW update from rank-r moments (optimal factors) against exact AdamW's: cosine "
              "(norm ratio), median over all matrices:", ""]
    lines += ["| t | " + " | ".join(f"r={r}" for r in RANKS) + " |", "|" + "---|" * (1 + len(RANKS))]
    for t in at:
        sel = [x for x in rows if x["t"] == t]
        cells = [f"{statistics.median(y[f'cos_r{r}'] for y in sel):.3f} "
                 f"({statistics.median(y[f'norm_r{r}'] for y in sel):.2f})" for r in RANKS]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    C.RESULTS.mkdir(parents=True, exist_ok=True)
    # Another model has no default lr, so its name always carries the lr.
    suffix = "" if default_model else f"_d{args.d_model}_l{args.layers}"
    if not default_model or args.lr != 3e-3:
        suffix += f"_lr{args.lr:g}"
    if (args.steps, args.seed) != (200, 0):
        suffix += f"_s{args.steps}_seed{args.seed}"
    (C.RESULTS / f"moment_rank{suffix}.md").write_text(text)
    (C.RESULTS / f"moment_rank{suffix}.json").write_text(json.dumps(dict(args=vars(args), val=val, rows=rows), indent=1))


if __name__ == "__main__":
    main()
