"""One rank of the multi-process tests of sharded MLorc (test_sharded.py), and the single-process
references they are compared with.

Run as ``python dist_worker.py RANK WORLD STORE_FILE OUT_DIR``: joins a gloo group through a
FileStore (no port to pick; gloo's own sockets bind ephemeral ports on the loopback), runs every
scenario below and writes ``OUT_DIR/rank{RANK}.pt``. Every collective has a timeout, and the
parent kills the ranks when its deadline passes, so nothing can hang.

Scenarios (all ranks, same order):

* ``dim0_adamw`` / ``dim0_lion``: DTensor parameters with placement Shard(0) (FSDP2's layout:
  torch.chunk rows, the last ranks may be empty), gradients set as DTensors, 20 steps;
* ``ragged_adamw`` / ``ragged_lion``: ZeRO-style: all parameters concatenated into one flat
  vector cut into uneven per-rank ranges that start and end mid-row, every parameter given to
  the optimizer as this rank's piece (``flat_shard``, empty for most), 20 steps;
* ``q1_adamw``: dim-0 shards with power_iters=1, oversampling=2 (k = r + p), 6 steps;
* ``resume``: a state_dict round trip in the middle of a sharded run is bit-exact, and an
  unsharded run's state_dict loads into the sharded optimizer (factors replicated, dense moments
  sliced) and continues as the unsharded run does;
* ``fsdp2``: a small transformer under ``fully_shard`` trained 6 steps with MLorcAdamW on this
  rank's part of each batch (its gradients recorded too);
* ``placements``: a Replicate() DTensor steps like a plain tensor, Shard(1) is refused.

Each records, per step, this rank's parameter pieces with their element ranges, and what the
optimizer's all-reduce callback counted.
"""

from __future__ import annotations

import datetime
import io
import math
import sys
from pathlib import Path
from typing import Dict, List, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import mlorc.torch as mt  # noqa: E402
from mlorc._shard import param_view  # noqa: E402

STEPS = 20
LR = {"adamw": 2e-2, "lion": 2e-3}

# ------------------------------------------------------------------------------------------------
# The parameter sets (shapes chosen for: rows not divisible by 2 or 4, a FACTORED matrix with an
# empty dim-0 shard on 2 and on 4 ranks, dense vectors and small matrices, a 3-d tensor)
# ------------------------------------------------------------------------------------------------

#: (name, shape, layout): "auto" unless a group forces it.
PARAMS: List[Tuple[str, Tuple[int, ...], str]] = [
    ("w1", (37, 23), "auto"),  # FACTORED, 37 rows: 19/18 on 2 ranks, 10/10/10/7 on 4
    ("w2", (16, 40), "auto"),  # FACTORED
    ("w3", (5, 40), "auto"),  # FACTORED; 4 ranks: 2/2/1/0 rows (empty shard on rank 3)
    ("row", (1, 64), "factored"),  # one row, FACTORED forced: on >= 2 ranks all but rank 0 empty
    ("small", (3, 29), "auto"),  # DENSE under AUTO ((3+29+1)*4 >= 87)
    ("bias", (23,), "auto"),  # a vector: DENSE
    ("t3", (6, 5, 4), "auto"),  # 3-d: seen as 6 x 20, FACTORED
]


def init_params(seed: int = 1) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=g) * 0.5 for n, s, _ in PARAMS}


def grad_at(step: int, index: int, shape) -> torch.Tensor:
    """The full gradient of parameter ``index`` at ``step`` (the same on every rank)."""
    g = torch.Generator().manual_seed(1000 * step + index)
    return torch.randn(shape, generator=g) * (0.1 + 0.05 * index)


def make_opt(algo: str, params_by_layout: Dict[str, list], **kw):
    groups = [{"params": ps, "layout": lay} for lay, ps in params_by_layout.items() if ps]
    if algo == "adamw":
        return mt.MLorcAdamW(groups, lr=LR[algo], rank=3, seed=5, weight_decay=0.01, **kw)
    return mt.MLorcLion(groups, lr=LR[algo], rank=3, seed=5, weight_decay=0.05, **kw)


def _grouped(tensors: Dict[str, torch.Tensor]) -> Dict[str, list]:
    out: Dict[str, list] = {}
    for n, _, lay in PARAMS:
        out.setdefault(lay, []).append(tensors[n])
    return out


def reference_run(algo: str, steps: int = STEPS, **kw) -> List[Dict[str, torch.Tensor]]:
    """The single-process run: full parameters after each step."""
    params = {n: t.clone() for n, t in init_params().items()}
    opt = make_opt(algo, _grouped(params), **kw)
    history = []
    for step in range(steps):
        for i, (n, s, _) in enumerate(PARAMS):
            params[n].grad = grad_at(step, i, s)
        opt.step()
        history.append({n: t.clone() for n, t in params.items()})
    return history


# ------------------------------------------------------------------------------------------------
# Ragged (ZeRO-style) partitions
# ------------------------------------------------------------------------------------------------


def ragged_bounds(world: int) -> List[int]:
    """Uneven cut points of the concatenation of PARAMS (1985 elements), mid-row on purpose."""
    total = sum(math.prod(s) for _, s, _ in PARAMS)
    assert total == 1985, total
    # Offsets: w1 [0, 851), w2 [851, 1491), w3 [1491, 1691), row [1691, 1755), small [1755, 1842),
    # bias [1842, 1865), t3 [1865, 1985).
    if world == 2:
        return [0, 900, total]  # w2 cut after 49 elements: one row of 40 and 9
    if world == 4:
        # w1 cut after 300 = 13 rows of 23 and 1; rank 2 holds w3[4:49] (mid-row to mid-row,
        # across a row boundary) and nothing else; empty pieces on every rank.
        return [0, 300, 1495, 1540, total]
    raise ValueError(world)


def param_offsets() -> Dict[str, Tuple[int, int]]:
    out, at = {}, 0
    for n, s, _ in PARAMS:
        out[n] = (at, at + math.prod(s))
        at += math.prod(s)
    return out


# ------------------------------------------------------------------------------------------------
# The small transformer of the FSDP2 scenario
# ------------------------------------------------------------------------------------------------

VOCAB, DIM, HEADS, SEQ, LAYERS, BATCH = 32, 16, 2, 8, 2, 8


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(DIM)
        # No bias: softmax attention is invariant to the key bias, whose gradient is therefore
        # pure rounding noise (~1e-10 here), and any Adam turns noise into ±lr steps that differ
        # between any two summation orders (single process vs reduce-scatter): a test of
        # sharding could not compare such a parameter at 1e-5.
        self.qkv = nn.Linear(DIM, 3 * DIM, bias=False)
        self.proj = nn.Linear(DIM, DIM)
        self.ln2 = nn.LayerNorm(DIM)
        self.up = nn.Linear(DIM, 4 * DIM)
        self.down = nn.Linear(4 * DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(DIM, dim=-1)
        q, k, v = (z.view(b, t, HEADS, d // HEADS).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.down(F.gelu(self.up(self.ln2(x))))


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, DIM)
        self.pos = nn.Parameter(torch.randn(SEQ, DIM) * 0.02)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.ln = nn.LayerNorm(DIM)
        self.head = nn.Linear(DIM, VOCAB, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.emb(idx) + self.pos[: idx.shape[1]]
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln(x))


FSDP_STEPS = 6


def lm_model() -> TinyLM:
    torch.manual_seed(3)
    return TinyLM()


def lm_batch(step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(77 + step)
    return torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=g)


def lm_loss(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))


def lm_opt(params):
    return mt.MLorcAdamW(params, lr=1e-2, rank=4, seed=9, weight_decay=0.01)


def lm_reference() -> dict:
    """Single-process training on the whole batch: losses, parameters after each step, and the
    gradient of the first step."""
    model = lm_model()
    opt = lm_opt(model.parameters())
    history, losses, first_grads = [], [], None
    for step in range(FSDP_STEPS):
        opt.zero_grad()
        loss = lm_loss(model, lm_batch(step))
        loss.backward()
        if step == 0:
            first_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        opt.step()
        losses.append(loss.item())
        history.append({n: p.detach().clone() for n, p in model.named_parameters()})
    return {"history": history, "losses": losses, "first_grads": first_grads}


def lm_teacher_forced(grads: List[Dict[str, torch.Tensor]]) -> List[Dict[str, torch.Tensor]]:
    """The unsharded optimizer of a single process fed the given (full) gradients step by step."""
    model = lm_model()
    opt = lm_opt(model.parameters())
    named = dict(model.named_parameters())
    history = []
    for g in grads:
        for n, p in named.items():
            p.grad = g[n].clone()
        opt.step()
        history.append({n: p.detach().clone() for n, p in named.items()})
    return history


# ------------------------------------------------------------------------------------------------
# The rank
# ------------------------------------------------------------------------------------------------


def _pieces(named: Dict[str, torch.Tensor], opt) -> Dict[str, Tuple[int, int, torch.Tensor]]:
    """name -> (begin, end, this rank's elements) for every parameter."""
    out = {}
    for n, p in named.items():
        v = param_view(p, getattr(opt, "_mlorc_process_group", None))
        out[n] = (v.begin, v.end, v.local.detach().reshape(-1).clone())
    return out


def _factors(named: Dict[str, torch.Tensor], opt) -> Dict[str, Dict[str, torch.Tensor]]:
    return {
        n: {k: v.clone() for k, v in opt.state[p].items() if "." in k} for n, p in named.items() if opt.state[p]
    }


def _stats_delta(opt, before):
    now = opt.comm_stats()
    return {k: now[k] - before[k] for k in now}


def run_dim0(algo: str, rank: int, world: int, steps: int = STEPS, **kw) -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    full = init_params()
    named = {n: nn.Parameter(distribute_tensor(t, mesh, [Shard(0)])) for n, t in full.items()}
    opt = make_opt(algo, _grouped(named), **kw)
    history, stats = [], []
    for step in range(steps):
        for i, (n, s, _) in enumerate(PARAMS):
            p = named[n]
            local_rows = p.to_local().shape[0]
            v = param_view(p)
            g = grad_at(step, i, s).reshape(-1)[v.begin : v.end].reshape((local_rows,) + tuple(s[1:]))
            p.grad = DTensor.from_local(g, mesh, [Shard(0)], run_check=False, shape=p.shape, stride=p.stride())
        before = opt.comm_stats()
        opt.step()
        stats.append(_stats_delta(opt, before))
        history.append(_pieces(named, opt))
    return {"history": history, "stats": stats, "factors": _factors(named, opt)}


def run_ragged(algo: str, rank: int, world: int, steps: int = STEPS) -> dict:
    bounds = ragged_bounds(world)
    lo, hi = bounds[rank], bounds[rank + 1]
    full = init_params()
    flat = torch.cat([full[n].reshape(-1) for n, _, _ in PARAMS])
    partition = flat[lo:hi].clone()  # this rank's flat partition (what ZeRO-1/2 keeps)
    offsets = param_offsets()
    named = {}
    for n, s, _ in PARAMS:
        a, b = offsets[n]
        ia, ib = min(max(a, lo), hi), max(min(b, hi), lo)
        if ia >= ib:  # nothing of this parameter here: an empty piece at the partition's edge
            ia = ib = min(max(a, lo), hi)
        begin, end = (ia - a, ib - a) if ib > ia else (0, 0)
        named[n] = mt.flat_shard(partition[ia - lo : ib - lo], s, begin, end)
    opt = make_opt(algo, _grouped(named))
    history, stats = [], []
    for step in range(steps):
        for i, (n, s, _) in enumerate(PARAMS):
            m = named[n]._mlorc_flat_shard
            named[n].grad = grad_at(step, i, s).reshape(-1)[m.begin : m.end].clone()
        before = opt.comm_stats()
        opt.step()
        stats.append(_stats_delta(opt, before))
        history.append(_pieces(named, opt))
    return {"history": history, "stats": stats, "factors": _factors(named, opt), "partition": (lo, hi)}


def run_resume(rank: int, world: int) -> dict:
    """(a) sharded: 20 straight steps == 10 steps, state_dict -> bytes -> new optimizer, 10 more
    (bit-exact); (b) 10 unsharded steps, its state_dict loaded into the sharded optimizer, 10
    sharded steps == the 20-step unsharded reference (compared by the parent)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))

    def sharded(start_params):
        return {n: nn.Parameter(distribute_tensor(t.clone(), mesh, [Shard(0)])) for n, t in start_params.items()}

    def steps(named, opt, a, b):
        for step in range(a, b):
            for i, (n, s, _) in enumerate(PARAMS):
                p = named[n]
                v = param_view(p)
                g = grad_at(step, i, s).reshape(-1)[v.begin : v.end].reshape((p.to_local().shape[0],) + tuple(s[1:]))
                p.grad = DTensor.from_local(g, mesh, [Shard(0)], run_check=False, shape=p.shape, stride=p.stride())
            opt.step()

    straight = sharded(init_params())
    opt_a = make_opt("adamw", _grouped(straight))
    steps(straight, opt_a, 0, STEPS)

    first = sharded(init_params())
    opt_b = make_opt("adamw", _grouped(first))
    steps(first, opt_b, 0, STEPS // 2)
    buf = io.BytesIO()
    torch.save(opt_b.state_dict(), buf)
    opt_c = make_opt("adamw", _grouped(first))
    buf.seek(0)
    opt_c.load_state_dict(torch.load(buf, weights_only=False))
    steps(first, opt_c, STEPS // 2, STEPS)
    resumed_equal = all(
        torch.equal(straight[n].to_local(), first[n].to_local()) for n in straight
    )
    dense_shapes = {
        n: tuple(opt_c.state[first[n]]["exp_avg"].shape) for n in first if "exp_avg" in opt_c.state[first[n]]
    }

    # (b) from an unsharded run
    plain = {n: t.clone() for n, t in init_params().items()}
    opt_p = make_opt("adamw", _grouped(plain))
    for step in range(STEPS // 2):
        for i, (n, s, _) in enumerate(PARAMS):
            plain[n].grad = grad_at(step, i, s)
        opt_p.step()
    resharded = sharded(plain)
    opt_r = make_opt("adamw", _grouped(resharded))
    opt_r.load_state_dict(opt_p.state_dict())
    steps(resharded, opt_r, STEPS // 2, STEPS)
    return {
        "resumed_equal": resumed_equal,
        "dense_shapes": dense_shapes,
        "resharded": _pieces(resharded, opt_r),
    }


def run_fsdp2(rank: int, world: int) -> dict:
    from torch.distributed.fsdp import fully_shard

    model = lm_model()
    for blk in model.blocks:
        fully_shard(blk)
    fully_shard(model)
    named = dict(model.named_parameters())
    opt = lm_opt(model.parameters())
    per = BATCH // world
    history, stats, losses, grads = [], [], [], []
    for step in range(FSDP_STEPS):
        opt.zero_grad()
        tokens = lm_batch(step)[rank * per : (rank + 1) * per]
        loss = lm_loss(model, tokens)
        loss.backward()
        grads.append(
            {n: (v.begin, v.end, v.local_grad(p).reshape(-1).clone()) for n, p in named.items() for v in [param_view(p)]}
        )
        before = opt.comm_stats()
        opt.step()
        stats.append(_stats_delta(opt, before))
        losses.append(loss.item())
        history.append(_pieces(named, opt))
    kinds = {n: param_view(p).kind for n, p in named.items()}
    return {"history": history, "stats": stats, "losses": losses, "grads": grads, "kinds": kinds}


def run_placements(rank: int, world: int) -> dict:
    """A Replicate() DTensor is stepped whole without communication (equal to a plain tensor);
    placements that hold no element range are refused when the optimizer is built."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    full = init_params()["w1"]
    rep_p = nn.Parameter(distribute_tensor(full.clone(), mesh, [Replicate()]))
    plain = full.clone()
    opt = make_opt("adamw", {"auto": [rep_p]})
    ref = make_opt("adamw", {"auto": [plain]})
    for step in range(3):
        g = grad_at(step, 0, full.shape)
        rep_p.grad = DTensor.from_local(g.clone(), mesh, [Replicate()], run_check=False)
        plain.grad = g
        opt.step()
        ref.step()
    refused = {}
    for name, placement in (("shard1", Shard(1)),):
        q = nn.Parameter(distribute_tensor(full.clone(), mesh, [placement]))
        try:
            make_opt("adamw", {"auto": [q]})
            refused[name] = None
        except NotImplementedError as e:
            refused[name] = str(e)
    return {
        "replicate_equal": torch.equal(rep_p.to_local(), plain),
        "replicate_calls": opt.comm_stats()["calls"],
        "refused": refused,
    }


def main() -> None:
    rank, world, store_file, out_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
    torch.set_num_threads(1)
    import torch.distributed as dist

    store = dist.FileStore(store_file, world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    results = {}
    import time

    for name, fn in [
        ("dim0_adamw", lambda: run_dim0("adamw", rank, world)),
        ("dim0_lion", lambda: run_dim0("lion", rank, world)),
        ("ragged_adamw", lambda: run_ragged("adamw", rank, world)),
        ("ragged_lion", lambda: run_ragged("lion", rank, world)),
        ("q1_adamw", lambda: run_dim0("adamw", rank, world, steps=6, power_iters=1, oversampling=2)),
        ("resume", lambda: run_resume(rank, world)),
        ("fsdp2", lambda: run_fsdp2(rank, world)),
        ("placements", lambda: run_placements(rank, world)),
    ]:
        t0 = time.perf_counter()
        results[name] = fn()
        results[name]["seconds"] = time.perf_counter() - t0
        dist.barrier()
    torch.save(results, out_dir / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
