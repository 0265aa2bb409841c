"""mlorc.diagnostics: low-rank energy of an AdamW run's moments, against numpy's f64 SVD and the
rank-1 oracle of ALGORITHM.md (gradients a_t·bᵀ with one b give moments of rank 1)."""

import math

import numpy as np
import pytest
import torch

from mlorc.diagnostics import MomentEnergy, factored_at_rank, low_rank_energy, weighted_energy


def _adamw_steps(params, grads_per_step):
    opt = torch.optim.AdamW(params, lr=1e-3)
    for grads in grads_per_step:
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
    return opt


def _reference_energy(a, r):
    s = np.linalg.svd(a.detach().double().numpy(), compute_uv=False)
    total = float((s**2).sum())
    return float((s[:r] ** 2).sum()) / total, total


def test_rank_one_gradients_give_rank_one_moments():
    gen = torch.Generator().manual_seed(1)
    w = torch.nn.Parameter(torch.randn(40, 30, generator=gen))
    b = torch.randn(30, generator=gen)
    steps = [[torch.outer(torch.randn(40, generator=gen), b)] for _ in range(6)]
    rows = low_rank_energy(_adamw_steps([w], steps), ranks=(1, 4))
    assert len(rows) == 1 and rows[0].shape == (40, 30)
    for key in ("exp_avg", "exp_avg_sq", "grad"):
        assert rows[0].energy[key][1] == pytest.approx(1.0, abs=1e-9), key
        assert rows[0].energy[key][4] == pytest.approx(1.0, abs=1e-9), key


def test_energies_match_numpy_svd_on_fresh_random_moments():
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    gen = torch.Generator().manual_seed(seed)
    w = torch.nn.Parameter(torch.randn(37, 53, generator=gen))
    steps = [[torch.randn(37, 53, generator=gen) * (1 + t)] for t in range(3)]
    opt = _adamw_steps([w], steps)
    ranks = (1, 2, 4, 8, 16, 100)
    row = low_rank_energy(opt, ranks=ranks)[0]
    for key, tensor in (("exp_avg", opt.state[w]["exp_avg"]), ("exp_avg_sq", opt.state[w]["exp_avg_sq"]), ("grad", w.grad)):
        for r in ranks:
            want, total = _reference_energy(tensor, r)
            got = row.energy[key][r]
            assert math.isfinite(got) and got == pytest.approx(want, rel=1e-12, abs=1e-15), (seed, key, r)
        assert row.norm2[key] == pytest.approx(total, rel=1e-12), (seed, key)
    # Energies grow with r and reach 1 at full rank.
    assert [row.energy["exp_avg"][r] for r in ranks] == sorted(row.energy["exp_avg"][r] for r in ranks)
    assert row.energy["exp_avg"][100] == pytest.approx(1.0, abs=1e-12)


def test_only_what_mlorc_would_factor_and_what_has_state():
    model = torch.nn.Sequential(torch.nn.Linear(32, 48), torch.nn.Linear(48, 4), torch.nn.Conv2d(3, 8, 3))
    x = torch.randn(5, 32)
    model[1](model[0](x)).sum().backward()
    model[2](torch.randn(2, 3, 9, 9)).sum().backward()
    unused = torch.nn.Parameter(torch.randn(64, 64))  # never gets a gradient: no state
    opt = torch.optim.AdamW(list(model.parameters()) + [unused])
    opt.step()
    rows = low_rank_energy(opt, ranks=(1, 4), model=model)
    names = {r.name: r.shape for r in rows}
    # 48×32 and the conv's 8×27 are factored at r = 4; 4×48 is not ((4 + 48 + 1)·4 ≥ 192); biases never.
    assert names == {"0.weight": (48, 32), "2.weight": (8, 27)}
    assert factored_at_rank((8, 27), 4) and not factored_at_rank((4, 48), 4) and factored_at_rank((4, 48), 3)
    assert {r.name for r in low_rank_energy(opt, ranks=(1,), rank_for_layout=3, model=model)} == {
        "0.weight", "1.weight", "2.weight"}
    # Without a model the rows are named by their place in the optimizer.
    assert [r.name for r in low_rank_energy(opt, ranks=(1,))] == ["group 0, param 0", "group 0, param 4"]


def test_zero_moments_are_rank_zero_not_nan():
    w = torch.nn.Parameter(torch.zeros(20, 30))
    opt = _adamw_steps([w], [[torch.zeros(20, 30)]])
    rows = low_rank_energy(opt, ranks=(1, 4))
    assert rows[0].energy["exp_avg"] == {1: 1.0, 4: 1.0} and rows[0].norm2["exp_avg"] == 0.0
    assert weighted_energy(rows, "exp_avg", 4) == 1.0


def test_weighted_energy_weighs_by_squared_norm():
    rows = [
        MomentEnergy("a", (10, 10), {"exp_avg": {4: 0.5}}, {"exp_avg": 3.0}),
        MomentEnergy("b", (10, 10), {"exp_avg": {4: 1.0}}, {"exp_avg": 1.0}),
    ]
    assert weighted_energy(rows, "exp_avg", 4) == pytest.approx((0.5 * 3 + 1.0) / 4)
    with pytest.raises(ValueError, match="no row"):
        weighted_energy(rows, "exp_avg", 8)


def test_bad_input_raises_and_names_the_parameter():
    w = torch.nn.Parameter(torch.randn(20, 30))
    opt = _adamw_steps([w], [[torch.randn(20, 30)]])
    with pytest.raises(ValueError, match="ranks"):
        low_rank_energy(opt, ranks=(0, 4))
    with pytest.raises(ValueError, match="ranks"):
        low_rank_energy(opt, ranks=())
    with pytest.raises(ValueError, match="integers"):
        low_rank_energy(opt, ranks=(2.5,))
    with pytest.raises(ValueError, match="rank_for_layout"):
        low_rank_energy(opt, rank_for_layout=0)
    with pytest.raises(ValueError, match="keys"):
        low_rank_energy(opt, keys=())
    opt.state[w]["exp_avg"][3, 4] = float("nan")
    with pytest.raises(ValueError, match="exp_avg of group 0, param 0"):
        low_rank_energy(opt)
