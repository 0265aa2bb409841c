"""Is MLorc's premise true on your model? Measure it on a short run of plain AdamW.

MLorc keeps each moment of a weight matrix at rank r. How much that costs depends on how close
the moments really are to rank r, which :func:`low_rank_energy` measures from the state of a
``torch.optim.Adam``/``AdamW`` (or any optimizer whose state holds ``exp_avg`` /
``exp_avg_sq``): for every parameter MLorc would factor, the share of ``||A||²_F`` that the best
rank-r approximation of ``A`` keeps (``Σ_{i≤r} σ_i² / Σ σ_i²``, from an f64 SVD). On the
byte-level fine-tuning benchmark of BENCHMARKS.md §2.2 the first moment kept 37–65% at r = 4
and MLorc-AdamW ended 1.05–12% above AdamW's validation loss; where it keeps nearly all, expect
MLorc to match AdamW.

    opt = torch.optim.AdamW(model.parameters(), lr=...)
    ... train some steps ...
    for row in low_rank_energy(opt, model=model):
        print(row.name, row.shape, row.energy["exp_avg"][4])

The SVD runs on the state's device; a 4096×11008 matrix takes seconds on a CPU core.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.optim import Optimizer

from .torch import _matrix_shape

__all__ = ["MomentEnergy", "factored_at_rank", "low_rank_energy", "weighted_energy"]


@dataclass
class MomentEnergy:
    """The low-rank energy of one parameter's optimizer state."""

    name: str
    """The parameter's name in ``model`` (else ``"group G, param I"``)."""
    shape: Tuple[int, int]
    """The m×n matrix the library sees (``N``-d parameters: ``(shape[0], rest)``)."""
    energy: Dict[str, Dict[int, float]] = field(default_factory=dict)
    """``energy[key][r]``: share of ``||A||²_F`` the best rank-r approximation keeps, for each
    state key (and ``"grad"`` when the parameter holds a gradient). 1.0 for an all-zero A."""
    norm2: Dict[str, float] = field(default_factory=dict)
    """``||A||²_F`` of each measured matrix (to weigh parameters against each other)."""


def factored_at_rank(shape: Tuple[int, int], rank: int) -> bool:
    """Whether MLorc's AUTO layout keeps an m×n matrix as rank-``rank`` factors:
    ``(m + n + 1)·r < m·n`` (else its moments stay dense, i.e. exact AdamW)."""
    m, n = shape
    return (m + n + 1) * rank < m * n


def _energies(a: Tensor, ranks: Sequence[int], what: str) -> Tuple[Dict[int, float], float]:
    a64 = a.detach().to(torch.float64)
    if not bool(torch.isfinite(a64).all()):
        raise ValueError(f"{what} holds NaN or Inf; a diverged run says nothing about rank")
    s2 = torch.linalg.svdvals(a64) ** 2
    total = float(s2.sum())
    if total == 0.0:
        return {r: 1.0 for r in ranks}, 0.0
    kept = torch.cumsum(s2, 0)
    return {r: min(1.0, float(kept[min(r, kept.numel()) - 1]) / total) for r in ranks}, total


def low_rank_energy(
    optimizer: Optimizer,
    ranks: Sequence[int] = (1, 2, 4, 8, 16),
    model: Optional[torch.nn.Module] = None,
    keys: Sequence[str] = ("exp_avg", "exp_avg_sq"),
    rank_for_layout: int = 4,
) -> List[MomentEnergy]:
    """The low-rank energy of ``optimizer``'s moments, one :class:`MomentEnergy` per parameter
    that MLorc would factor at rank ``rank_for_layout`` (the AUTO layout's rule,
    :func:`factored_at_rank`) and that has every state key in ``keys`` (parameters not stepped
    yet have none and are left out). ``model``, when given, names the parameters.

    Raises ValueError for ranks that are not integers ≥ 1, an empty ``keys`` or a state tensor
    that is not finite (naming the parameter).
    """
    try:
        ranks = [operator.index(r) for r in ranks]
        rank_for_layout = operator.index(rank_for_layout)
    except TypeError as e:
        raise ValueError(f"ranks and rank_for_layout must be integers ({e})") from None
    if not ranks or min(ranks) < 1 or rank_for_layout < 1:
        raise ValueError(f"ranks must be positive integers, got {list(ranks)!r} and rank_for_layout {rank_for_layout}")
    if not keys:
        raise ValueError("keys must name at least one state entry, e.g. 'exp_avg'")
    names = {id(p): n for n, p in model.named_parameters()} if model is not None else {}
    rows = []
    for gi, group in enumerate(optimizer.param_groups):
        for pi, p in enumerate(group["params"]):
            state = optimizer.state.get(p, {})
            if not all(isinstance(state.get(k), Tensor) and state[k].shape == p.shape for k in keys):
                continue
            shape = _matrix_shape(p)
            if not factored_at_rank(shape, rank_for_layout):
                continue
            name = names.get(id(p), f"group {gi}, param {pi}")
            row = MomentEnergy(name=name, shape=shape)
            sources = [(k, state[k]) for k in keys]
            if p.grad is not None and p.grad.shape == p.shape:
                sources.append(("grad", p.grad))
            for key, tensor in sources:
                row.energy[key], row.norm2[key] = _energies(tensor.reshape(shape), ranks, f"{key} of {name}")
            rows.append(row)
    return rows


def weighted_energy(rows: Sequence[MomentEnergy], key: str, rank: int) -> float:
    """The ``||A||²_F``-weighted mean of ``energy[key][rank]`` over ``rows``: one figure for a
    whole model (all-zero matrices only: 1.0). Raises ValueError if no row measured ``key`` at
    ``rank``."""
    measured = [r for r in rows if rank in r.energy.get(key, {})]
    if not measured:
        raise ValueError(f"no row holds {key!r} at rank {rank}")
    total = sum(r.norm2[key] for r in measured)
    if total == 0.0:
        return 1.0
    return sum(r.energy[key][rank] * r.norm2[key] for r in measured) / total
