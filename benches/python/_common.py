"""Shared pieces of the Python benchmarks in benches/python/.

- `setup_paths()`: makes this checkout's `mlorc` package and examples/python/tinylm.py
  importable, and points MLORC_LIBRARY at target/release/libmlorc.so when it is unset.
- `import_mlorc_torch()`: imports mlorc.torch or exits with an error (never substitutes).
- `RefMLorc`: a plain-PyTorch reference of MLorc-AdamW / MLorc-Lion written from
  /work/shared/ALGORITHM.md the way the paper's code does it: full-size M̃, Ṽ, M_t, V_t tensors
  are materialized every step, the randomized SVD uses torch.linalg.qr and torch.linalg.svd on
  the small matrices. It has switches the library does not: compress only the first or only the
  second moment, and the non-negativity fix ("mean" = ALGORITHM.md step 2, "zero" = clamp
  negatives to 0, "none").
- `TorchLion`: plain Lion (Chen et al. 2023; lucidrains semantics, sign(0) = 0).
- `state_bytes(opt)`: optimizer-state bytes of any of the optimizers the benches use.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
RESULTS = HERE / "results"


def setup_paths() -> None:
    lib = REPO / "target" / "release" / "libmlorc.so"
    if "MLORC_LIBRARY" not in os.environ and lib.is_file():
        os.environ["MLORC_LIBRARY"] = str(lib)
    for p in (REPO / "bindings" / "python" / "src", REPO / "examples" / "python"):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))


def import_mlorc_torch():
    setup_paths()
    try:
        import mlorc.torch as mt

        return mt
    except Exception as e:  # noqa: BLE001
        sys.exit(
            f"error: cannot import mlorc.torch: {type(e).__name__}: {e}\n"
            "  build the library first: cargo build --release (or set MLORC_LIBRARY)"
        )


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def ncores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


import torch  # noqa: E402
from torch.optim import Optimizer  # noqa: E402


# --------------------------------------------------------------------------------------------
# Randomized SVD (ALGORITHM.md "RSVD(A, r, p, q)")
# --------------------------------------------------------------------------------------------


def rsvd(A: torch.Tensor, r: int, p: int, q: int, gen: torch.Generator):
    m, n = A.shape
    k = min(r + p, m, n)
    omega = torch.randn(n, k, generator=gen, dtype=A.dtype, device=A.device)
    Q, _ = torch.linalg.qr(A @ omega)
    for _ in range(q):
        Z, _ = torch.linalg.qr(A.T @ Q)
        Q, _ = torch.linalg.qr(A @ Z)
    B = Q.T @ A  # k x n
    Uh, S, Vh = torch.linalg.svd(B, full_matrices=False)
    r = min(r, k)
    return (Q @ Uh[:, :r]).contiguous(), S[:r].contiguous(), Vh[:r].T.contiguous()


def _rebuild(f):
    U, S, V = f
    return (U * S) @ V.T


class RefMLorc(Optimizer):
    """Reference MLorc in plain torch (f32 math). algorithm: "adamw" or "lion".

    compress_m / compress_v: keep that moment as rank-r factors (True) or exact (False).
    negfix: "mean" (ALGORITHM.md), "zero" (clamp negatives of Ṽ to 0) or "none".
    Tensors that are not matrices, or matrices with (m+n+1)·r >= m·n, keep exact moments (as the
    library's AUTO layout does).
    """

    def __init__(self, params, lr=1e-3, algorithm="adamw", betas=None, eps=1e-8, weight_decay=None,
                 rank=4, oversampling=0, power_iters=0, compress_m=True, compress_v=True,
                 negfix="mean", seed=0):
        if algorithm not in ("adamw", "lion"):
            raise ValueError(algorithm)
        betas = betas or ((0.9, 0.999) if algorithm == "adamw" else (0.95, 0.98))
        weight_decay = (0.01 if algorithm == "adamw" else 0.05) if weight_decay is None else weight_decay
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, rank=rank,
                        oversampling=oversampling, power_iters=power_iters)
        super().__init__(params, defaults)
        self.algorithm = algorithm
        self.compress_m, self.compress_v, self.negfix = compress_m, compress_v, negfix
        self.gen = torch.Generator().manual_seed(seed)

    def _factored(self, p, r):
        return p.dim() == 2 and (p.shape[0] + p.shape[1] + 1) * r < p.numel()

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, (b1, b2), wd = group["lr"], group["betas"], group["weight_decay"]
            r, pp, qq = group["rank"], group["oversampling"], group["power_iters"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.float()
                st = self.state[p]
                fact = self._factored(p, r)
                if not st:
                    st["step"] = 0
                    m_, n_ = (p.shape if p.dim() == 2 else (1, p.numel()))
                    zero_f = lambda: (torch.zeros(m_, r), torch.zeros(r), torch.zeros(n_, r))  # noqa: E731
                    moments = ("m", "v") if self.algorithm == "adamw" else ("m",)
                    for k in moments:
                        comp = fact and (self.compress_m if k == "m" else self.compress_v)
                        st[k] = zero_f() if comp else torch.zeros_like(g)
                st["step"] += 1
                t = st["step"]
                Mt_old = _rebuild(st["m"]) if isinstance(st["m"], tuple) else st["m"]
                pf = p.data if p.dtype == torch.float32 else p.data.float()
                pf.mul_(1 - lr * wd)
                if self.algorithm == "lion":
                    c = Mt_old.mul(b1).add_(g, alpha=1 - b1)
                    pf.add_(c.sign_(), alpha=-lr)
                    Mt = Mt_old.mul(b2).add_(g, alpha=1 - b2)
                    st["m"] = rsvd(Mt, r, pp, qq, self.gen) if isinstance(st["m"], tuple) else Mt
                else:
                    if isinstance(st["v"], tuple):
                        Vt_old = _rebuild(st["v"])
                        if self.negfix == "mean":
                            neg = Vt_old < 0
                            if neg.any():  # a host sync, as in the paper's code
                                c = Vt_old[neg].abs().mean()
                                Vt_old = torch.where(neg, c, Vt_old)
                        elif self.negfix == "zero":
                            Vt_old.clamp_(min=0)
                    else:
                        Vt_old = st["v"]
                    Mt = Mt_old.mul(b1).add_(g, alpha=1 - b1)
                    Vt = Vt_old.mul(b2).addcmul_(g, g, value=1 - b2)
                    bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
                    denom = (Vt.sqrt() / math.sqrt(bc2)).add_(group["eps"])
                    pf.addcdiv_(Mt, denom, value=-lr / bc1)
                    st["m"] = rsvd(Mt, r, pp, qq, self.gen) if isinstance(st["m"], tuple) else Mt
                    st["v"] = rsvd(Vt, r, pp, qq, self.gen) if isinstance(st["v"], tuple) else Vt
                if pf is not p.data:
                    p.data.copy_(pf)
        return loss


class TorchLion(Optimizer):
    """Plain Lion: c = β1·m + (1−β1)·g; W ← W(1−lr·wd) − lr·sign(c); m ← β2·m + (1−β2)·g."""

    def __init__(self, params, lr=1e-4, betas=(0.95, 0.98), weight_decay=0.05):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, (b1, b2), wd = group["lr"], group["betas"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["exp_avg"] = torch.zeros_like(p)
                m = st["exp_avg"]
                p.mul_(1 - lr * wd)
                p.add_(m.mul(b1).add_(p.grad, alpha=1 - b1).sign_(), alpha=-lr)
                m.mul_(b2).add_(p.grad, alpha=1 - b2)
        return loss


def _tensor_bytes(x) -> int:
    if isinstance(x, torch.Tensor):
        return 0 if x.dim() == 0 else x.numel() * x.element_size()  # skip step counters
    if isinstance(x, (tuple, list)):
        return sum(_tensor_bytes(y) for y in x)
    if isinstance(x, dict):
        return sum(_tensor_bytes(y) for y in x.values())
    if hasattr(x, "ortho_matrix"):  # GaLoreProjector
        return _tensor_bytes(x.ortho_matrix)
    return 0


def state_bytes(opt) -> int:
    """Optimizer-state bytes: mlorc's state_bytes(), else every non-scalar tensor in opt.state
    (moments, factors, GaLore's projection matrices)."""
    if hasattr(opt, "state_bytes"):
        return int(opt.state_bytes())
    return sum(_tensor_bytes(st) for st in opt.state.values())
