#!/usr/bin/env python3
"""CPU step time and memory of one optimizer step: MLorc (library, via mlorc.torch) against
torch.optim.AdamW and a plain-PyTorch implementation of the paper's algorithm.

    python3 benches/python/bench_speed.py                 # 1024², 4096², 4096x11008 (~5-8 min, 2 cores)
    python3 benches/python/bench_speed.py --skip-large    # without 4096x11008
    python3 benches/python/bench_speed.py --shapes 1024x1024 --target-s 0.5   # smoke

For every case: a fresh parameter (f32 or bf16) with a fixed random gradient, 2 warm-up steps,
then the median of N timed optimizer.step() calls (N chosen so a case takes ~--target-s seconds,
at least --min-reps). torch threads: --threads (default 2); the library uses its own pool
(MLORC_NUM_THREADS, default: all cores).

Paired rounds (--paired-rounds, default 15): the targets' ratios (MLorc-AdamW r=4 at q=0 and
q=1, MLorc-Lion r=4, each against torch AdamW, f32) measured again with the cases alternating
round by round, all on one parameter and gradient, the ratio taken per round: on a shared host
whose speed drifts within minutes, the steadier measure of a ratio than cases timed one after
the other.

Memory: RSS growth = peak RSS during the optimizer's construction, warm-up and timed steps
(the kernel's VmHWM, reset through /proc/self/clear_refs; no sampling thread competes with the
steps) minus RSS before the optimizer was made;
the process runs with MALLOC_MMAP_THRESHOLD_=65536 so freed large blocks go back to the OS and
cases do not hide in each other's freed heap. State bytes: AdamW's exp_avg/exp_avg_sq; the
library's state_bytes(); the reference's factors.

Bandwidth floor: median time of dst.copy_(src) over a 512 MiB f32 tensor (2 threads); GB/s counts
bytes read + written. Each method's floor = (its bytes per element, from ALGORITHM.md's data-flow
section) x m·n / bandwidth.

Writes results/speed.json, results/speed.md and results/speed_vs_size.png (log-log step time
vs m·n and vs r).
"""

from __future__ import annotations

import os
import sys

# Set before torch (and glibc's malloc) start: see the module docstring.
_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "OMP_WAIT_POLICY": "PASSIVE"}
if any(k not in os.environ for k in _ENV) and not os.environ.get("MLORC_BENCH_REEXEC"):
    for k, v in _ENV.items():
        os.environ.setdefault(k, v)
    os.environ["MLORC_BENCH_REEXEC"] = "1"
    os.execv(sys.executable, [sys.executable] + sys.argv)

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

mt = C.import_mlorc_torch()
import torch  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakRSS:
    """Peak RSS over a block, from the kernel's high-water mark (VmHWM), reset on entry by
    writing 5 to /proc/self/clear_refs. No sampling thread: one would take a core from the
    steps it measures (on 2 cores a 1 ms sampler slowed the library's 1024² step ~2x).
    Where the reset is refused, a thread samples /proc/self/statm every ~1 ms instead."""

    def __init__(self, interval=0.001):
        self.interval, self.peak, self._stop = interval, rss_bytes(), threading.Event()
        self._t = None
        self.method = "VmHWM"

    @staticmethod
    def _hwm() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        raise OSError("no VmHWM in /proc/self/status")

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self._hwm()
        except OSError:
            self.method = "sampled"
            self._t = threading.Thread(target=self._run, daemon=True)
            self._t.start()
        return self

    def __exit__(self, *exc):
        if self._t is None:
            self.peak = max(self.peak, self._hwm())
        else:
            self._stop.set()
            self._t.join()
        self.peak = max(self.peak, rss_bytes())


def fused_supported(dtype) -> bool:
    try:
        p = torch.nn.Parameter(torch.zeros(8, 8, dtype=dtype))
        p.grad = torch.ones(8, 8, dtype=dtype)
        torch.optim.AdamW([p], fused=True).step()
        return True
    except Exception as e:  # noqa: BLE001
        print(f"torch.optim.AdamW(fused=True) on CPU with {dtype}: not supported ({type(e).__name__}: {e})")
        return False


def bandwidth_gbs(mib=512, reps=7) -> float:
    n = mib * 2**20 // 4
    src, dst = torch.rand(n), torch.empty(n)
    dst.copy_(src)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        dst.copy_(src)
        ts.append(time.perf_counter() - t)
    del src, dst
    gc.collect()
    return 2 * n * 4 / statistics.median(ts) / 1e9


DT = {"f32": torch.float32, "bf16": torch.bfloat16}


def bytes_per_elt(c):
    """ALGORITHM.md, 'What the data flow should look like': q=0: g read twice, W read+written
    once; each power iteration adds two sweeps over g. Fused AdamW: g, W, M, V read; W, M, V
    written (torch keeps bf16 moments for bf16 params)."""
    es = 2 if c["dtype"] == "bf16" else 4
    if c["impl"] == "torch":
        return 7 * es
    if c["impl"] == "mlorc":
        return es * (2 + 2 * c["q"]) + 2 * es
    return None  # the torch reference materializes several m x n temporaries; not modelled


def make_opt(c, p):
    lr = 1e-5
    if c["impl"] == "torch":
        return torch.optim.AdamW([p], lr=lr, **({"fused": True} if c["variant"] == "fused" else {"foreach": True}))
    if c["impl"] == "mlorc":
        cls = mt.MLorcAdamW if c["alg"] == "adamw" else mt.MLorcLion
        return cls([p], lr=lr, rank=c["r"], power_iters=c["q"])
    return C.RefMLorc([p], lr=lr, algorithm=c["alg"], rank=c["r"], power_iters=c["q"])


def new_param(m, n, dt, g):
    """An m x n parameter of dtype dt with a fixed random gradient, drawn from generator g."""
    p = torch.nn.Parameter((torch.randn(m, n, generator=g) * 0.02).to(dt))
    p.grad = (torch.randn(m, n, generator=g) * 1e-3).to(dt)
    return p


def run_case(c, m, n, args):
    p = new_param(m, n, DT[c["dtype"]], torch.Generator().manual_seed(1234))
    gc.collect()
    rss0 = rss_bytes()
    with PeakRSS() as mon:
        opt = make_opt(c, p)
        t0 = time.perf_counter()
        opt.step()
        t1 = time.perf_counter()
        opt.step()
        t2 = time.perf_counter()
        est = max(t2 - t1, 1e-6)
        reps = int(min(args.max_reps, max(args.min_reps, args.target_s / est)))
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            opt.step()
            ts.append(time.perf_counter() - t)
    sb = C.state_bytes(opt)
    finite = bool(torch.isfinite(p.data.float()).all())
    del opt, p
    gc.collect()
    return dict(c, m=m, n=n, reps=reps, ms=1e3 * statistics.median(ts), ms_min=1e3 * min(ts),
                first_step_ms=1e3 * (t1 - t0), state_bytes=sb, rss_growth=mon.peak - rss0,
                rss_method=mon.method, finite=finite)


def paired_rounds(m, n, fused_f32, args):
    """The targets' ratios measured in alternation: torch AdamW (fused where torch has it) and
    MLorc-AdamW r=4 (q=0, q=1) and MLorc-Lion r=4, f32, all on the same parameter; every round
    steps each case once untimed (its data back into cache where it fits) and then times
    --paired-steps steps of it, the cases in a fresh random order every round (seeded), so that
    no case keeps one predecessor. A shared host's speed drifts by up to 2x within minutes, so
    cases timed one after the other (the main table) carry that drift into their ratio; cases
    alternating within a fraction of a second see the same host. torch runs as two instances,
    first and last: two identical torch instances in one process differed by up to 1.5x in
    their step time (BENCHMARKS.md; each keeps its moments in its own memory), so the baseline
    of a round is the faster of the two
    (torch's best path), and each ratio is taken per round against it; the median over rounds
    is reported."""
    torch_case = dict(impl="torch", alg="adamw", variant="fused" if fused_f32 else "foreach", dtype="f32", r=None, q=None)
    cases = [dict(torch_case, instance=1),
             dict(impl="mlorc", alg="adamw", variant="lib", dtype="f32", r=4, q=0),
             dict(impl="mlorc", alg="adamw", variant="lib", dtype="f32", r=4, q=1),
             dict(impl="mlorc", alg="lion", variant="lib", dtype="f32", r=4, q=0),
             dict(torch_case, instance=2)]
    # One parameter and gradient for every case: where a tensor lands changes how fast it
    # streams on the KVM guest of BENCHMARKS.md (§1, 2026-12-07), and no case's step time
    # depends on the weights' values; each optimizer keeps its own state.
    p = new_param(m, n, torch.float32, torch.Generator().manual_seed(1234))
    opts = []
    for c in cases:
        opt = make_opt(c, p)
        for _ in range(2):
            opt.step()
        opts.append((opt, p))
    times = [[] for _ in cases]
    for rnd in range(args.paired_rounds):
        order = list(range(len(cases)))
        random.Random(rnd).shuffle(order)
        for i in order:
            opt = opts[i][0]
            opt.step()
            t = time.perf_counter()
            for _ in range(args.paired_steps):
                opt.step()
            times[i].append((time.perf_counter() - t) / args.paired_steps)
    finite = all(bool(torch.isfinite(p.data).all()) for _, p in opts)
    del opts
    gc.collect()
    baseline = [min(a, b) for a, b in zip(times[0], times[-1])]
    out = []
    for c, ts in [(dict(torch_case, instance="faster"), baseline)] + list(zip(cases, times)):
        ratios = sorted(t / t0 for t, t0 in zip(ts, baseline))
        out.append(dict(c, m=m, n=n, rounds=len(ts), ms=1e3 * statistics.median(ts),
                        ratio_median=statistics.median(ratios), ratio_min=ratios[0], ratio_max=ratios[-1],
                        ratio_quartiles=statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3,
                        finite=finite))
    return out


def cases_for(shape_is_large, fused_f32, fused_bf16, args):
    cs = [dict(impl="torch", alg="adamw", variant="foreach", dtype="f32", r=None, q=None)]
    if fused_f32:
        cs.append(dict(impl="torch", alg="adamw", variant="fused", dtype="f32", r=None, q=None))
    cs.append(dict(impl="torch", alg="adamw", variant="fused" if fused_bf16 else "foreach", dtype="bf16",
                   r=None, q=None))
    for dtype in ("f32", "bf16"):
        for alg in ("adamw", "lion"):
            for r, q in ((1, 0), (4, 0), (16, 0), (4, 1)):
                cs.append(dict(impl="mlorc", alg=alg, variant="lib", dtype=dtype, r=r, q=q))
    if not args.no_ref:
        for alg, q in (("adamw", 0), ("adamw", 1), ("lion", 0)):
            cs.append(dict(impl="ref", alg=alg, variant="torch-ref", dtype="f32", r=4, q=q))
    return cs


def label(c):
    if c["impl"] == "torch":
        return f"torch AdamW ({c['variant']})"
    name = {"adamw": "AdamW", "lion": "Lion"}[c["alg"]]
    if c["impl"] == "mlorc":
        return f"MLorc-{name} (lib)"
    return f"MLorc-{name} (torch ref)"


def paired_label(r):
    if r.get("instance") == "faster":
        return f"{label(r)}, faster of two"
    if r.get("instance"):
        return f"{label(r)}, instance {r['instance']}"
    return label(r)


def plot(rows, path, bw):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(14, 6))
    # Colour: the method; line: the dtype (f32 solid, bf16 dashed); marker: q (circle 0, square 1).
    colours = {"torch AdamW fused": "tab:red", "torch AdamW foreach": "tab:orange", "MLorc-AdamW (lib)": "tab:blue",
               "MLorc-Lion (lib)": "tab:green", "MLorc-AdamW (torch ref)": "tab:purple", "MLorc-Lion (torch ref)": "tab:brown"}
    series = {}
    for r in rows:
        if r["impl"] == "torch":
            method, q = f"torch AdamW {r['variant']}", None
        elif r["r"] == 4:
            method, q = label(r), r["q"]
        else:
            continue
        key = (method, r["dtype"], q)
        series.setdefault(key, []).append((r["m"] * r["n"], r["ms"]))
    for (method, dtype, q), pts in sorted(series.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0)):
        pts.sort()
        name = f"{method} {dtype}" + ("" if q is None else f" r=4 q={q}")
        a1.plot([x for x, _ in pts], [y for _, y in pts], "-" if dtype == "f32" else "--", marker="s" if q == 1 else "o",
                color=colours.get(method, "black"), label=name)
    xs = sorted({r["m"] * r["n"] for r in rows})
    a1.plot(xs, [28 * x / bw / 1e6 for x in xs], "k:", lw=1, label="floor: 28 B/elt (fused AdamW f32)")
    a1.plot(xs, [16 * x / bw / 1e6 for x in xs], "k-.", lw=1, label="floor: 16 B/elt (MLorc q=0 f32)")
    a1.set_xscale("log")
    a1.set_yscale("log")
    a1.set_xlabel("m·n (elements)")
    a1.set_ylabel("optimizer step, median ms")
    a1.set_title("step time vs matrix size")
    a1.grid(alpha=0.3, which="both")
    a1.legend(fontsize=6.5, loc="upper left", ncol=2)

    shapes = sorted({(r["m"], r["n"]) for r in rows}, key=lambda s: s[0] * s[1])
    shape_colours = ["tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:brown"]
    for (m, n), colour in zip(shapes, shape_colours * len(shapes)):
        for alg in ("adamw", "lion"):
            pts = sorted((r["r"], r["ms"]) for r in rows if r["impl"] == "mlorc" and r["alg"] == alg
                         and r["dtype"] == "f32" and r["q"] == 0 and (r["m"], r["n"]) == (m, n))
            if pts:
                a2.plot([x for x, _ in pts], [y for _, y in pts], "-" if alg == "adamw" else "--", marker="o", color=colour,
                        label=f"MLorc-{'AdamW' if alg == 'adamw' else 'Lion'} lib f32 q=0, {m}x{n}")
        best = [r["ms"] for r in rows if r["impl"] == "torch" and r["dtype"] == "f32" and (r["m"], r["n"]) == (m, n)]
        if best:
            a2.axhline(min(best), color=colour, ls=":", lw=1)
            a2.text(1, min(best), f" best torch AdamW f32 {m}x{n}", fontsize=6.5, va="bottom", color=colour)
    a2.set_xscale("log", base=2)
    a2.set_yscale("log")
    a2.set_xlabel("rank r")
    a2.set_ylabel("optimizer step, median ms")
    a2.set_title("step time vs rank (f32, q=0)")
    a2.grid(alpha=0.3, which="both")
    a2.legend(fontsize=6.5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="1024x1024,4096x4096,4096x11008")
    ap.add_argument("--skip-large", action="store_true", help="drop shapes with m·n > 2^25 (4096x11008)")
    ap.add_argument("--no-ref", action="store_true", help="skip the plain-torch reference MLorc")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--target-s", type=float, default=2.0, help="timed seconds per case (approx.)")
    ap.add_argument("--min-reps", type=int, default=5)
    ap.add_argument("--max-reps", type=int, default=50)
    ap.add_argument("--paired-rounds", type=int, default=15,
                    help="rounds of the alternating measurement of the targets' ratios (0: skip it)")
    ap.add_argument("--paired-steps", type=int, default=3, help="timed steps per case and round")
    ap.add_argument("--out", default=str(C.RESULTS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    if args.skip_large:
        shapes = [s for s in shapes if s[0] * s[1] <= 2**25]
    machine = f"{C.cpu_model()}, {C.ncores()} cores, torch {torch.__version__}, {platform.python_version()}"
    print(f"machine: {machine}; torch threads {torch.get_num_threads()}; "
          f"MLORC_NUM_THREADS={os.environ.get('MLORC_NUM_THREADS', '(unset: all cores)')}")
    print(f"library: {os.environ.get('MLORC_LIBRARY')}")
    load0 = open("/proc/loadavg").read().split()[:3]
    print(f"load average at start: {' '.join(load0)} (other processes on the machine skew the timings)")
    fused_f32, fused_bf16 = fused_supported(torch.float32), fused_supported(torch.bfloat16)
    print(f"torch AdamW fused=True on CPU: f32 {'yes' if fused_f32 else 'NO'}, bf16 {'yes' if fused_bf16 else 'NO'}")
    bw = bandwidth_gbs()
    print(f"memory bandwidth (torch copy_, 512 MiB f32, read+write): {bw:.1f} GB/s")

    rows = []
    for (m, n) in shapes:
        for c in cases_for(m * n > 2**25, fused_f32, fused_bf16, args):
            res = run_case(c, m, n, args)
            rows.append(res)
            print(f"  {m}x{n} {label(c):26s} {c['dtype']:4s} r={c['r']} q={c['q']}: {res['ms']:9.2f} ms "
                  f"(min {res['ms_min']:.2f}, {res['reps']} reps)  state {res['state_bytes'] / 2**20:8.2f} MiB  "
                  f"RSS +{res['rss_growth'] / 2**20:8.1f} MiB", flush=True)
            if not res["finite"]:
                print("    WARNING: non-finite parameter after the steps")

    paired = []
    if args.paired_rounds > 0:
        for (m, n) in shapes:
            res = paired_rounds(m, n, fused_f32, args)
            paired += res
            for r in res:
                print(f"  paired {m}x{n} {paired_label(r):40s} r={r['r']} q={r['q']}: {r['ms']:9.2f} ms, ratio median "
                      f"{r['ratio_median']:.2f} (quartiles {r['ratio_quartiles'][0]:.2f}-{r['ratio_quartiles'][2]:.2f}, "
                      f"{r['rounds']} rounds)", flush=True)
                if not r["finite"]:
                    print("    WARNING: non-finite parameter after the steps")

    # ratios and floors
    for r in rows:
        best = min(x["ms"] for x in rows if x["impl"] == "torch" and x["dtype"] == r["dtype"]
                   and (x["m"], x["n"]) == (r["m"], r["n"]))
        best32 = min(x["ms"] for x in rows if x["impl"] == "torch" and x["dtype"] == "f32"
                     and (x["m"], x["n"]) == (r["m"], r["n"]))
        r["ratio_best_same_dtype"] = r["ms"] / best
        r["ratio_best_f32"] = r["ms"] / best32
        bpe = bytes_per_elt(r)
        r["bytes_per_elt"] = bpe
        r["floor_ms"] = bpe * r["m"] * r["n"] / bw / 1e6 if bpe else None

    lines = [
        f"Machine: {machine}. torch threads {args.threads}; library pool: "
        f"{os.environ.get('MLORC_NUM_THREADS', 'all cores')}. Memory-bandwidth floor (copy_ of 512 MiB f32, "
        f"read+write): **{bw:.1f} GB/s**. torch AdamW fused=True on CPU: f32 {'supported' if fused_f32 else 'NOT supported'}, "
        f"bf16 {'supported' if fused_bf16 else 'NOT supported'}.",
        "",
        "Ratio = median step time / the best torch.optim.AdamW step time for the same shape and param dtype "
        "(< 1: faster than AdamW). B/elt: bytes per element moved by an ideal single-pass implementation "
        "(ALGORITHM.md); floor = B/elt · m·n / bandwidth; ×floor = time / floor. RSS: peak RSS growth during "
        "construction + warm-up + timed steps (includes the state and transients).",
        "",
        "| shape | method | param | r | q | median ms | ratio vs best AdamW | state MiB | RSS growth MiB | B/elt | floor ms | ×floor |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        floor = "n/a" if r["floor_ms"] is None else f"{r['floor_ms']:.2f}"
        xfloor = "n/a" if r["floor_ms"] is None else f"{r['ms'] / r['floor_ms']:.1f}"
        q = "—" if r["q"] is None else r["q"]
        lines.append(
            f"| {r['m']}x{r['n']} | {label(r)} | {r['dtype']} | {r['r'] or '—'} | {q} "
            f"| {r['ms']:.2f} | {r['ratio_best_same_dtype']:.2f} | {r['state_bytes'] / 2**20:.2f} | "
            f"{r['rss_growth'] / 2**20:.1f} | {r['bytes_per_elt'] or 'n/a'} | {floor} | {xfloor} |"
        )
    if paired:
        lines += [
            "",
            f"Paired rounds (the targets' ratios measured in alternation, f32: each of {args.paired_rounds} rounds "
            f"steps every case once untimed, then times {args.paired_steps} steps of it, the cases in a random "
            "order drawn per round; torch as two instances, first and last, the baseline of a round the faster of them; ratio per "
            "round against that baseline, median and quartiles over the rounds):",
            "",
            "| shape | method | r | q | median ms | ratio median | ratio quartiles | ratio min–max |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in paired:
            q = "—" if r["q"] is None else r["q"]
            qs = r["ratio_quartiles"]
            lines.append(f"| {r['m']}x{r['n']} | {paired_label(r)} | {r['r'] or '—'} | {q} | {r['ms']:.2f} | "
                         f"{r['ratio_median']:.2f} | {qs[0]:.2f}–{qs[2]:.2f} | {r['ratio_min']:.2f}–{r['ratio_max']:.2f} |")
    load1 = open("/proc/loadavg").read().split()[:3]
    lines += ["", f"Load average (1/5/15 min) at start {' '.join(load0)}, at end {' '.join(load1)}."]
    md = "\n".join(lines)
    wall = time.perf_counter() - t_start
    cmd = "python3 " + " ".join([os.path.relpath(sys.argv[0], C.REPO)] + sys.argv[1:])
    (out / "speed.md").write_text(f"Command: `{cmd}` (wall {wall:.0f} s)\n\n" + md + "\n")
    (out / "speed.json").write_text(json.dumps(dict(machine=machine, bandwidth_gbs=bw, fused_f32=fused_f32,
                                                    fused_bf16=fused_bf16, command=cmd, wall_s=wall,
                                                    rows=rows, paired=paired), indent=1))
    plot(rows, out / "speed_vs_size.png", bw)
    print()
    print(md)
    print(f"\nwrote {out / 'speed.md'}, {out / 'speed.json'}, {out / 'speed_vs_size.png'}; wall {wall:.0f} s")


if __name__ == "__main__":
    main()
