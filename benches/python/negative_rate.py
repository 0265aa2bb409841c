#!/usr/bin/env python3
"""How often does MLorc-AdamW's non-negativity fix act? (ALGORITHM.md step 2.)

    python3 benches/python/negative_rate.py            # about 1.5 minutes on 2 cores
    python3 benches/python/negative_rate.py --lr 3e-3 --rank 8

Fine-tunes tinylm from bench_quality's pre-trained weights with the library's MLorcAdamW (the
benchmark's MLorc-AdamW r=4 run: lr 1e-2, 200 steps, seed 0, the same batches) and after every
step rebuilds, for every factored matrix, the rank-r second moment Ṽ = u·diag(s)·vᵀ that the next
step will fix, and counts its negative entries: the share of entries, and the share of groups of
16 consecutive elements of a row holding at least one (the unit a vectorized kernel could skip).
It also gives the share of 256-column row chunks that the library's sweep skips because a bound
on the factors proves them free of negatives (`src/cpu/sign_bound.rs`, re-implemented here).
Prints medians and maxima over matrices for windows of steps; writes nothing.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
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

WINDOWS = ((1, 9), (10, 49), (50, 99), (100, 10**9))


def negative_shares(v: torch.Tensor) -> tuple:
    """(share of negative entries, share of 16-element row groups with one) of a matrix."""
    neg = v < 0
    cols = neg.shape[1] // 16 * 16
    groups = neg[:, :cols].reshape(neg.shape[0], -1, 16).any(-1) if cols else neg
    return float(neg.float().mean()), float(groups.float().mean())


def bound_skip_share(u: torch.Tensor, s: torch.Tensor, v: torch.Tensor, chunk: int = 256) -> float:
    """Share of (row, 256-column chunk) pieces of u·diag(s)·vᵀ that src/cpu/sign_bound.rs
    passes: a_i1·b_j1 > 0 and ρ_i²·κ_j² ≤ ((1 − ε)/(1 + ε))² for every column j of the chunk,
    with ρ_i² = ‖a_i,2:‖²/a_i1², κ_j² = ‖b_j,2:‖²/b_j1² (a = u·s, b = v). The magnitude limits
    (2⁻¹⁰⁰ ≤ |a_i1·b_j1| ≤ 2¹⁰⁰) and zero rows and columns are left out: they do not occur here."""
    a, b = u.double() * s.double(), v.double()
    r = a.shape[1]
    eps = 4 * r * 2.0**-24 + 2.0**-40
    limit = ((1 - eps) / (1 + eps)) ** 2
    rho = (a[:, 1:] ** 2).sum(1) / a[:, 0] ** 2
    kappa = (b[:, 1:] ** 2).sum(1) / b[:, 0] ** 2
    n = b.shape[0]
    chunks = -(-n // chunk)
    pad = chunks * chunk - n

    def worst(k: torch.Tensor) -> torch.Tensor:  # largest κ² of each chunk
        k = torch.cat([k, k.new_zeros(pad)]) if pad else k
        return k.reshape(chunks, chunk).max(1).values

    inf = torch.tensor(float("inf"), dtype=torch.float64)
    worst_pos = worst(torch.where(b[:, 0] > 0, kappa, inf))  # rows with a_i1 > 0
    worst_neg = worst(torch.where(b[:, 0] < 0, kappa, inf))
    worst_row = torch.where(a[:, :1] > 0, worst_pos[None, :], worst_neg[None, :])
    passed = (rho[:, None] * worst_row <= limit) & (a[:, :1] != 0)
    return float(passed.double().mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lr", type=float, default=1e-2, help="peak lr (bench_quality's choice for r=4)")
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    pre_model, _, _, _ = Q.pretrain(Q.MODES["full"]["pretrain_steps"], no_cache=False)
    corpus = ByteCorpus.from_source(tinylm.finetune_corpus(), val_fraction=0.1)
    torch.manual_seed(args.seed)
    model = TinyLM(Q.MODEL)
    model.load_state_dict(pre_model.state_dict())
    model, opt = Q.build("MLorc-AdamW", args.lr, args.seed, model, args.steps, {"r": args.rank})
    names = {id(w): n for n, w in model.named_parameters()}
    rows = []  # (step, matrix, share of entries, share of groups, share of chunks the sweep skips)

    def progress(step, _loss):
        with torch.no_grad():
            for w in model.parameters():
                st = opt.state.get(w, {})
                if "exp_avg_sq.u" not in st:
                    continue  # a dense moment: nothing to fix
                u, s, v = st["exp_avg_sq.u"], st["exp_avg_sq.s"].reshape(-1), st["exp_avg_sq.v"]
                rows.append((step, names[id(w)], *negative_shares((u.double() * s.double()) @ v.double().T),
                             bound_skip_share(u, s, v)))

    batches = corpus.train_batches(args.steps, Q.BATCH, Q.MODEL.context, seed=2000 + args.seed)
    tinylm.train(model, opt, batches, "cpu", args.steps, warmup=max(1, args.steps // 20), progress=progress)
    val = tinylm.evaluate(model, corpus.val_batches(Q.BATCH, Q.MODEL.context), "cpu")

    print(f"Command: `python3 benches/python/negative_rate.py --lr {args.lr:g} --rank {args.rank} "
          f"--steps {args.steps} --seed {args.seed}` ({time.perf_counter() - t0:.0f} s; {C.cpu_model()})")
    print(f"MLorc-AdamW r={args.rank}: final validation loss {val:.4f}; "
          f"{len({r[1] for r in rows})} factored matrices")
    print("| Ṽ stored after steps | negative entries: median / max | 16-element groups with one: median / max "
          "| row chunks the sweep skips: median / min / mean |")
    print("|---|---|---|---|")
    for lo, hi in WINDOWS:
        sel = [r for r in rows if lo <= r[0] <= hi]
        if not sel:
            continue
        label = f"{lo}–{min(hi, args.steps)}"
        e, g, k = [r[2] for r in sel], [r[3] for r in sel], [r[4] for r in sel]
        print(f"| {label} | {statistics.median(e):.4%} / {max(e):.2%} | {statistics.median(g):.4%} / {max(g):.2%} "
              f"| {statistics.median(k):.1%} / {min(k):.1%} / {statistics.mean(k):.1%} |")


if __name__ == "__main__":
    main()
