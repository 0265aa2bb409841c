"""DeepSpeed's client-optimizer path with MLorcAdamW (ZeRO stage 0, fp32, CPU, gloo, 2 ranks).

Skipped unless ``deepspeed`` is importable. On a machine without a GPU it needs
``DS_ACCELERATOR=cpu`` (set by the worker) and ninja on PATH (pip's ninja, next to the
interpreter): DeepSpeed JIT-compiles its shared-memory communication op on first use
(~2.5 minutes on 2 cores, cached in ~/.cache/torch_extensions afterwards; later runs ~30 s).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("deepspeed")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import dist_worker as W  # noqa: E402
import test_sharded as S  # noqa: E402

DEADLINE_S = 420  # includes a first-time JIT compile of DeepSpeed's CPU communication op


def test_deepspeed_stage0_client_optimizer_matches_single_process(tmp_path, monkeypatch):
    import ds_worker

    monkeypatch.setattr(S, "DEADLINE_S", DEADLINE_S)
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    world = 2
    t0 = time.monotonic()
    results = S._launch(world, tmp_path, script=HERE / "ds_worker.py")
    seconds = time.monotonic() - t0
    # DeepSpeed steps the client optimizer itself (no ZeRO wrapper) on whole parameters, and the
    # state of every matrix is MLorc's factors.
    assert results[0]["wrapped"] == "MLorcAdamW"
    keys = results[0]["state_keys"]
    assert keys["blocks.0.up.weight"][:3] == ["exp_avg.s", "exp_avg.u", "exp_avg.v"]
    ref = W.lm_reference()
    shapes = {n: tuple(p.shape) for n, p in W.lm_model().named_parameters()}
    for rank, r in enumerate(results):
        for step in range(ds_worker.STEPS):
            for name, want in ref["history"][step].items():
                err = S._fro_rel(r["history"][step][name], want)
                assert err <= S.TOL, f"rank {rank} step {step + 1} {name}: {err:.3g}"
    for step in range(ds_worker.STEPS):
        loss = sum(r["losses"][step] for r in results) / world
        assert abs(loss - ref["losses"][step]) <= S.TOL * abs(ref["losses"][step])
    print(f"DeepSpeed stage 0, {world} ranks: {seconds:.1f} s; parameters of {len(shapes)} tensors match")
