"""Sharded MLorc under torch.distributed (gloo, CPU): 2 and 4 processes on localhost.

The ranks run dist_worker.py (every scenario in one launch per world size, bounded by a deadline
after which every rank is killed); the assertions here compare what they recorded with
single-process runs of the same optimizer:

* FSDP2-style dim-0 DTensor shards and ZeRO-style ragged flat ranges (mid-row starts and ends,
  empty pieces), MLorc-AdamW and MLorc-Lion, 20 steps: the pieces put together equal the
  single-process parameters at every step, within 1e-5 of the weights' scale;
* the replicated factors are bitwise identical on every rank;
* power iterations and oversampling (q = 1, p = 2) likewise;
* state_dict round trips (sharded -> sharded bit-exact; unsharded -> sharded);
* a small transformer trained with ``fully_shard`` + MLorcAdamW equals single-process training;
* the floats and calls the all-reduce callback saw per step equal the formula of the sharded API
  (docs: per FACTORED matrix (q+1)·moments·(m+n)·k floats in 2(q+1) calls, +4 floats in one
  call for AdamW after the first step; nothing for DENSE).

In-process tests (no process group) check flat shards of DENSE parameters against the unsharded
optimizer and that a failing all-reduce becomes MlorcCollectiveError, never a hang or a crash.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import mlorc
import mlorc.torch as mt
from mlorc import _capi

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import dist_worker as W  # noqa: E402

pytestmark = [
    pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available"),
    pytest.mark.skipif(
        not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
        reason="the gloo backend is not available",
    ),
]

DEADLINE_S = 120  # per launch of all ranks; then every rank is killed and the test fails
TOL = 1e-5  # relative to the weights' scale (max |w|)
WORLDS = [2, 4]


# ------------------------------------------------------------------------------------------------
# Launching the ranks
# ------------------------------------------------------------------------------------------------


def _launch(world: int, tmp: Path, script: Path = HERE / "dist_worker.py") -> list:
    env = dict(os.environ)
    env["MLORC_NUM_THREADS"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent / "src"), env.get("PYTHONPATH", "")])
    store = tmp / "store"
    logs, procs = [], []
    for rank in range(world):
        log = open(tmp / f"rank{rank}.log", "w")
        logs.append(log)
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), str(rank), str(world), str(store), str(tmp)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(tmp),
            )
        )
    start = time.monotonic()
    failed = None
    try:
        while True:
            codes = [p.poll() for p in procs]
            if all(c is not None for c in codes):
                break
            bad = [r for r, c in enumerate(codes) if c not in (None, 0)]
            if bad:  # one rank died: the others would only wait for it in a collective
                failed = f"rank {bad[0]} exited with status {codes[bad[0]]}"
                break
            if time.monotonic() - start > DEADLINE_S:
                failed = f"the {world} ranks did not finish within {DEADLINE_S} s"
                break
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            p.wait()
        for log in logs:
            log.close()
    codes = [p.returncode for p in procs]
    if failed is None and any(codes):
        failed = f"exit statuses {codes}"
    if failed is not None:
        out = "\n".join(f"--- rank {r} ---\n{(tmp / f'rank{r}.log').read_text()[-4000:]}" for r in range(world))
        pytest.fail(f"{failed}\n{out}")
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(world)]


_RESULTS: dict = {}


@pytest.fixture(scope="module", params=WORLDS, ids=lambda w: f"{w}ranks")
def ranks(request, tmp_path_factory):
    world = request.param
    if world not in _RESULTS:
        t0 = time.monotonic()
        _RESULTS[world] = _launch(world, tmp_path_factory.mktemp(f"world{world}"))
        _RESULTS[world][0]["launch_seconds"] = time.monotonic() - t0
    return world, _RESULTS[world]


@pytest.fixture(scope="module")
def references():
    return {
        "adamw": W.reference_run("adamw"),
        "lion": W.reference_run("lion"),
        "q1_adamw": W.reference_run("adamw", steps=6, power_iters=1, oversampling=2),
        "fsdp2": W.lm_reference(),
    }


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def _assemble(per_rank_pieces: list, shapes: dict) -> dict:
    """Full tensors from every rank's (begin, end, elements); checks the ranges tile exactly."""
    out = {}
    for name, shape in shapes.items():
        numel = math.prod(shape)
        flat = torch.full((numel,), float("nan"))
        covered = torch.zeros(numel, dtype=torch.int32)
        for pieces in per_rank_pieces:
            b, e, t = pieces[name]
            assert t.numel() == e - b, (name, b, e, t.numel())
            flat[b:e] = t
            covered[b:e] += 1
        assert bool((covered == 1).all()), f"{name}: ranks' ranges do not tile [0, {numel}) exactly"
        out[name] = flat.reshape(shape)
    return out


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Elementwise: max |a - b| / max |b|."""
    return (a - b).abs().max().item() / b.abs().max().item()


def _fro_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Tensor-wise: ||a - b|| / ||b||."""
    return (a - b).norm().item() / b.norm().item()


def _compare(history_by_rank: list, reference: list, shapes: dict, what: str, metric=_max_rel) -> float:
    """Max over steps and parameters of metric(sharded, single); fails above TOL."""
    worst = 0.0
    assert len(history_by_rank[0]) == len(reference)
    for step, ref in enumerate(reference):
        got = _assemble([h[step] for h in history_by_rank], shapes)
        for name, r in ref.items():
            err = metric(got[name], r)
            assert err <= TOL, f"{what}: step {step + 1}, {name} {tuple(r.shape)}: relative error {err:.3g} > {TOL}"
            worst = max(worst, err)
    return worst


def _factored(shape, layout: str, rank: int) -> bool:
    """The layout rule of the README, independently of the library."""
    if layout == "factored":
        return True
    if layout == "dense" or len(shape) < 2:
        return False
    m, n = shape[0], math.prod(shape) // shape[0]
    r = min(rank, m, n)
    return (m + n + 1) * r < m * n


def _expected_comm(shapes_layouts, rank: int, algo: str, step: int, q: int = 0, p: int = 0):
    """(calls, floats) one rank all-reduces in step `step` (1-based), per the sharded API."""
    moments = 2 if algo == "adamw" else 1
    calls = floats = 0
    for shape, layout in shapes_layouts:
        if not _factored(shape, layout, rank):
            continue
        m, n = shape[0], math.prod(shape) // shape[0]
        k = min(rank + p, m, n)
        calls += 2 * (q + 1)
        floats += (q + 1) * moments * (m + n) * k
        if algo == "adamw" and step > 1:
            calls += 1
            floats += 4
    return calls, floats


PARAM_SHAPES = {n: s for n, s, _ in W.PARAMS}


# ------------------------------------------------------------------------------------------------
# Multi-process tests
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dim0", "ragged"])
@pytest.mark.parametrize("algo", ["adamw", "lion"])
def test_sharded_equals_single_process(ranks, references, kind, algo):
    world, results = ranks
    res = [r[f"{kind}_{algo}"] for r in results]
    ref = references[algo]
    init = W.init_params()
    # The run does something: every parameter moved well beyond the tolerance.
    for name, r in ref[-1].items():
        assert (r - init[name]).abs().max().item() > 100 * TOL * r.abs().max().item(), name
    worst = _compare([x["history"] for x in res], ref, PARAM_SHAPES, f"{kind} {algo} on {world} ranks")
    print(f"{kind} {algo} {world} ranks: worst relative error over {W.STEPS} steps {worst:.2e}")


def test_shards_include_empty_and_mid_row_pieces(ranks):
    world, results = ranks
    dim0 = [r["dim0_adamw"]["history"][0] for r in results]
    # torch.chunk rows: "row" (1 x 64, FACTORED) lives on rank 0 only; w3 (5 rows) is empty on
    # the last of 4 ranks.
    assert [p["row"][1] - p["row"][0] for p in dim0] == [64] + [0] * (world - 1)
    if world == 4:
        assert dim0[3]["w3"][0] == dim0[3]["w3"][1]
    ragged = [r["ragged_adamw"]["history"][0] for r in results]
    cols = {n: math.prod(s) // s[0] if len(s) > 1 else math.prod(s) for n, s in PARAM_SHAPES.items()}
    mid_row = [
        (n, b, e) for pieces in ragged for n, (b, e, _) in pieces.items() if e > b and (b % cols[n] or e % cols[n])
    ]
    empty = [(n, r) for r, pieces in enumerate(ragged) for n, (b, e, _) in pieces.items() if b == e]
    assert len(mid_row) >= 2 and len(empty) >= 5, (mid_row, empty)


@pytest.mark.parametrize("kind", ["dim0", "ragged"])
@pytest.mark.parametrize("algo", ["adamw", "lion"])
def test_factors_are_identical_on_every_rank(ranks, kind, algo):
    world, results = ranks
    factors = [r[f"{kind}_{algo}"]["factors"] for r in results]
    names = sorted(factors[0])
    assert {"w1", "w2", "w3", "row", "t3"} <= set(names)
    for other in factors[1:]:
        assert sorted(other) == names
        for n in names:
            for buf, t in factors[0][n].items():
                assert torch.equal(other[n][buf], t), f"{n}.{buf} differs between ranks"


@pytest.mark.parametrize("kind", ["dim0", "ragged"])
@pytest.mark.parametrize("algo", ["adamw", "lion"])
def test_comm_volume_matches_formula(ranks, kind, algo):
    world, results = ranks
    shapes_layouts = [(s, lay) for _, s, lay in W.PARAMS]
    for rank, r in enumerate(results):
        for step, got in enumerate(r[f"{kind}_{algo}"]["stats"], start=1):
            calls, floats = _expected_comm(shapes_layouts, 3, algo, step)
            assert (got["calls"], got["floats"]) == (calls, floats), (rank, step, got)
            assert got["bytes"] == 4 * floats


def test_power_iterations_and_oversampling(ranks, references):
    world, results = ranks
    res = [r["q1_adamw"] for r in results]
    _compare([x["history"] for x in res], references["q1_adamw"], PARAM_SHAPES, f"q=1 p=2 on {world} ranks")
    shapes_layouts = [(s, lay) for _, s, lay in W.PARAMS]
    for r in res:
        for step, got in enumerate(r["stats"], start=1):
            assert (got["calls"], got["floats"]) == _expected_comm(shapes_layouts, 3, "adamw", step, q=1, p=2)


def test_state_dict_resume_and_reshard(ranks, references):
    world, results = ranks
    for rank, r in enumerate(results):
        res = r["resume"]
        assert res["resumed_equal"], f"rank {rank}: a sharded run resumed from its state_dict diverged"
        b_e = {n: (b, e) for n, (b, e, _) in r["dim0_adamw"]["history"][0].items()}
        # Dense moments are this rank's elements only; factors stay whole.
        assert res["dense_shapes"] == {n: (1, b_e[n][1] - b_e[n][0]) for n in ("small", "bias")}
    _compare(
        [[r["resume"]["resharded"]] for r in results],
        [references["adamw"][-1]],
        PARAM_SHAPES,
        f"unsharded state_dict continued sharded on {world} ranks",
    )


def test_fsdp2_transformer_matches_single_process(ranks, references):
    """fully_shard + MLorcAdamW (default rank 4) on a small transformer, against single-process
    training.

    1. The sharded optimizer: the single-process optimizer fed the gradients FSDP2 computed
       (gathered from the ranks) must give the same parameters at every step, to 1e-5 of each
       tensor's norm.
    2. FSDP2's forward/backward: the first step's gradients (same parameters) equal
       single-process gradients to 1e-5 of their largest entry, and every step's loss (mean
       over ranks) equals the single-process loss to 1e-5.
    3. End to end: parameters of independent single-process training, to 1e-5 of each tensor's
       norm.

    Why tensor norms here and not the largest entry as in the synthetic tests: MLorc divides by
    the square root of a rank-r *rebuilt* second moment, some of whose entries are close to
    zero, so rounding-level differences (f32 summation order: across ranks, or just micro-batches
    in one process) move single weights by up to ~1e-5 of the weights' largest entry after a
    step or two, with or without sharding (measured on this model in one process: whole batch
    vs. two accumulated micro-batches, 1.2e-5). The norm-wise error stays near 1e-6.
    """
    world, results = ranks
    res = [r["fsdp2"] for r in results]
    ref = references["fsdp2"]
    assert set(res[0]["kinds"].values()) == {"dtensor"}
    model = W.lm_model()
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    # 1. FSDP2's gradients, gathered; the single-process optimizer stepped with them.
    grads = [_assemble([x["grads"][step] for x in res], shapes) for step in range(W.FSDP_STEPS)]
    forced = W.lm_teacher_forced(grads)
    histories = [x["history"] for x in res]
    worst = _compare(histories, forced, shapes, f"FSDP2 on {world} ranks (same gradients)", _fro_rel)
    for name, r in forced[-1].items():  # training moved every matrix well beyond the tolerance
        if len(r.shape) == 2:
            assert _fro_rel(init[name], r) > 100 * TOL, name
    # 2. FSDP2's forward/backward: first-step gradients (same parameters) and every step's loss.
    for name, g in ref["first_grads"].items():
        err = _max_rel(grads[0][name], g)
        assert err <= TOL, f"step-1 gradient of {name}: relative error {err:.3g}"
    losses = [sum(x["losses"][step] for x in res) / world for step in range(W.FSDP_STEPS)]
    for step, (got, want) in enumerate(zip(losses, ref["losses"])):
        assert abs(got - want) <= TOL * abs(want), f"step {step + 1}: loss {got} vs single-process {want}"
    assert losses[-1] < losses[0]
    # 3. End to end.
    e2e = _compare(histories, ref["history"], shapes, f"FSDP2 on {world} ranks vs single process", _fro_rel)
    # The all-reduces: per step, the formula summed over the FACTORED matrices of the model.
    shapes_layouts = [(s, "auto") for s in shapes.values()]
    assert any(_factored(s, "auto", 4) for s, _ in shapes_layouts)
    for r in res:
        for step, got in enumerate(r["stats"], start=1):
            assert (got["calls"], got["floats"]) == _expected_comm(shapes_layouts, 4, "adamw", step)
    per_step = res[0]["stats"][-1]
    e2e_max = max(_max_rel(a, b) for step in range(W.FSDP_STEPS)
                  for a, b in zip(_assemble([h[step] for h in histories], shapes).values(), ref["history"][step].values()))
    forced_max = max(_max_rel(a, b) for step in range(W.FSDP_STEPS)
                     for a, b in zip(_assemble([h[step] for h in histories], shapes).values(), forced[step].values()))
    print(
        f"FSDP2 {world} ranks: norm-wise vs same-gradient optimizer {worst:.2e}, vs independent training "
        f"{e2e:.2e}; largest-entry-wise {forced_max:.2e} / {e2e_max:.2e}; all-reduce per step "
        f"{per_step['calls']} calls, {per_step['floats']} floats ({per_step['bytes']} bytes) for "
        f"{sum(math.prod(s) for s in shapes.values())} parameters; launch {results[0].get('launch_seconds', 0):.1f} s"
    )


def test_replicated_dtensor_and_unsupported_placements(ranks):
    world, results = ranks
    for r in results:
        res = r["placements"]
        assert res["replicate_equal"] and res["replicate_calls"] == 0
        assert res["refused"]["shard1"] is not None and "Shard(0)" in res["refused"]["shard1"]


# ------------------------------------------------------------------------------------------------
# In-process tests (no process group needed)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [mt.MLorcAdamW, mt.MLorcLion])
def test_flat_shards_of_dense_parameters_equal_unsharded(cls):
    """DENSE sharded states make no collective: pieces [0,7), [7,7) (empty) and [7,87) of a 3x29
    matrix and of a vector step exactly like the unsharded optimizer, bit for bit."""
    torch.manual_seed(0)
    w = torch.randn(3, 29)
    b = torch.randn(23)
    ref_w, ref_b = w.clone(), b.clone()
    cuts_w, cuts_b = [0, 7, 7, 87], [0, 23, 23]
    pieces = []
    for full, cuts in ((w, cuts_w), (b, cuts_b)):
        flat = full.reshape(-1).clone()
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            pieces.append((full.shape, lo, hi, mt.flat_shard(flat[lo:hi], full.shape, lo, hi)))
    opt = cls([t for *_, t in pieces], lr=1e-2, rank=4)
    ref = cls([ref_w, ref_b], lr=1e-2, rank=4)
    for step in range(5):
        gw, gb = torch.randn(3, 29), torch.randn(23)
        ref_w.grad, ref_b.grad = gw, gb
        for shape, lo, hi, t in pieces:
            g = gw if len(shape) == 2 else gb
            t.grad = g.reshape(-1)[lo:hi].clone()
        opt.step()
        ref.step()
    got_w = torch.cat([t for shape, *_, t in pieces if len(shape) == 2])
    got_b = torch.cat([t for shape, *_, t in pieces if len(shape) == 1])
    assert torch.equal(got_w, ref_w.reshape(-1)) and torch.equal(got_b, ref_b)
    assert not torch.equal(ref_w, w)
    assert opt.comm_stats() == {"calls": 0, "floats": 0, "bytes": 0}
    # Dense moments of a shard are its own elements; the state_dict says so and loads back.
    sd = opt.state_dict()
    assert [tuple(s["exp_avg"].shape) for s in sd["state"].values()] == [(1, 7), (1, 0), (1, 80), (1, 23), (1, 0)]
    opt.load_state_dict(sd)


def test_failing_all_reduce_raises_collective_error():
    """A FACTORED sharded state with no process group: torch.distributed.all_reduce raises inside
    the callback; the callback returns non-zero (nothing crosses ctypes) and the step raises
    MlorcCollectiveError with the torch exception as its cause."""
    assert not torch.distributed.is_initialized()
    w = torch.randn(16, 12)
    piece = mt.flat_shard(w.reshape(-1)[:100].clone(), w.shape, 0, 100)
    opt = mt.MLorcAdamW([piece], lr=1e-2, rank=2, layout="factored")
    piece.grad = torch.randn(100)
    with pytest.raises(mlorc.MlorcCollectiveError) as info:
        opt.step()
    assert info.value.status == _capi.MLORC_ERROR_COLLECTIVE == 8
    assert info.value.__cause__ is not None
    assert "all_reduce" in str(info.value) and "reload a checkpoint" in str(info.value)
    assert isinstance(info.value, mlorc.MlorcError)


def test_flat_shard_validates_its_range():
    t = torch.zeros(5)
    with pytest.raises(ValueError, match="elements"):
        mt.flat_shard(t, (3, 4), 0, 6)
    with pytest.raises(ValueError, match="begin <= end"):
        mt.flat_shard(t, (3, 4), 9, 14)
    with pytest.raises(ValueError, match="contiguous"):
        mt.flat_shard(torch.zeros(10)[::2], (3, 4), 0, 5)
    assert mt.flat_shard(t, (3, 4), 7, 12) is t


def test_sharded_state_bytes():
    """state_bytes() of a FACTORED piece is the whole factors; of a DENSE piece its own moments."""
    w = torch.randn(40, 30)
    big = mt.flat_shard(torch.zeros(0), w.shape, 600, 600)  # empty piece: still the full factors
    small = mt.flat_shard(torch.zeros(10), (3, 29), 5, 15)
    opt = mt.MLorcAdamW([big, small], rank=4)
    assert opt.state_bytes() == 2 * (40 + 30 + 1) * 4 * 4 + 2 * 10 * 4


def test_capi_sharded_state_with_a_python_callback():
    """The ctypes layer alone: a FACTORED state for [0, m·n) with a one-rank "all-reduce" (a
    Python callback that only counts) steps like the unsharded state; mlorc_state_shard_range
    reports the range; a callback returning non-zero fails the step with MLORC_ERROR_COLLECTIVE."""
    m, n, r = 24, 18, 3
    config = _capi.config_init(_capi.MLORC_ADAMW)
    config.layout, config.rank, config.seed = _capi.MLORC_LAYOUT_FACTORED, r, 7
    desc = _capi.tensor_desc_init(m, n, _capi.MLORC_F32)
    seen = []
    fail = [False]

    def reduce(data, count, stream, context):
        seen.append((int(count), stream, context))
        return 1 if fail[0] else 0

    fn = _capi.MlorcAllReduceFn(reduce)
    shard = _capi.shard_init(0, m * n, fn, 1234)
    assert (shard.begin, shard.end, shard.all_reduce_context) == (0, m * n, 1234)
    assert _capi.shard_buffer_infos(config, desc, shard) == _capi.buffer_infos(config, desc)
    assert _capi.shard_state_bytes_required(config, desc, shard) == 2 * (m + n + 1) * r * 4
    sharded = _capi.state_create_sharded(config, desc, shard)
    plain = _capi.state_create(config, desc)
    try:
        assert _capi.state_shard_range(sharded) == (0, m * n)
        assert _capi.state_shard_range(plain) == (0, m * n)
        torch.manual_seed(0)
        w1 = torch.randn(m, n)
        w2 = w1.clone()
        options = _capi.step_options_init(1e-2)
        for step in range(1, 4):
            g = torch.randn(m, n)
            seen.clear()
            _capi.step(sharded, w1.data_ptr(), g.data_ptr(), options)
            _capi.step(plain, w2.data_ptr(), g.data_ptr(), options)
            expected = [m * 2 * r, n * 2 * r] if step == 1 else [4, m * 2 * r, n * 2 * r]
            assert [c for c, _, _ in seen] == expected
            assert all(s is None and ctx == 1234 for _, s, ctx in seen)
            assert (w1 - w2).abs().max().item() <= 1e-6 * w2.abs().max().item()
        fail[0] = True
        with pytest.raises(mlorc.MlorcCollectiveError) as info:
            _capi.step(sharded, w1.data_ptr(), torch.randn(m, n).data_ptr(), options)
        assert info.value.status == _capi.MLORC_ERROR_COLLECTIVE
    finally:
        _capi.state_destroy(sharded)
        _capi.state_destroy(plain)
