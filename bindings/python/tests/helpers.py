"""Reference optimizers and comparison helpers for the tests."""

from typing import Callable, Iterable, List

import torch


class RefLion(torch.optim.Optimizer):
    """Lion, lucidrains semantics: update = sign(b1*m + (1-b1)*g); p = p*(1-lr*wd) - lr*update;
    m = b2*m + (1-b2)*g."""

    # |c| below this fraction of max|c| is a tie: within the f32 error of the moment that the
    # library rebuilds from factors recompressed every step (it grows to ~1e-5 of max|M| in 40
    # steps; sign flips were measured at |c| = 1.0-1.6e-5 of max|c|), so either sign is right.
    TIE = 1e-4

    def __init__(self, params, lr=1e-4, betas=(0.95, 0.98), weight_decay=0.05):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))
        self.ties = {}  # parameter -> elements whose last update was a tie (bool tensor)

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["exp_avg"] = torch.zeros_like(p)
                m = st["exp_avg"]
                g = p.grad
                c = m * b1 + g * (1 - b1)
                self.ties[p] = c.abs() <= self.TIE * c.abs().max()
                update = c.sign()
                p.mul_(1 - lr * wd)
                p.add_(update, alpha=-lr)
                m.mul_(b2).add_(g, alpha=1 - b2)


def bf16_ulp(x: torch.Tensor) -> torch.Tensor:
    """Spacing of bf16 numbers at |x| (elementwise, as float32)."""
    x = x.float().abs().clamp_min(1e-30)
    exp = torch.floor(torch.log2(x))
    return torch.pow(2.0, exp - 7)


class RefMLorcAdamW(torch.optim.Optimizer):
    """MLorc-AdamW written directly from ALGORITHM.md in plain torch (float64 moments, its own
    Gaussian sketches, QR-based orth): an independent implementation to compare training runs
    with. Matrices are factored when (m+n+1)·r < m·n, everything else is plain AdamW."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, rank=4, seed=0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, rank=rank))
        self.gen = torch.Generator().manual_seed(seed)

    def _rsvd(self, a, r):
        omega = torch.randn(a.shape[1], r, dtype=a.dtype, generator=self.gen)
        q, _ = torch.linalg.qr(a @ omega)
        u, s, vh = torch.linalg.svd(q.T @ a, full_matrices=False)
        return (q @ u[:, :r]) @ torch.diag(s[:r]) @ vh[:r]

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            lr, r = group["lr"], group["rank"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.double()
                st = self.state[p]
                if not st:
                    st["t"], st["m"], st["v"] = 0, torch.zeros_like(g), torch.zeros_like(g)
                st["t"] += 1
                t, m, v = st["t"], st["m"], st["v"]
                factored = p.dim() == 2 and (sum(p.shape) + 1) * r < p.numel()
                if factored and (v < 0).any():  # non-negativity fix of the rebuilt V
                    v = torch.where(v < 0, v[v < 0].abs().mean(), v)
                m = b1 * m + (1 - b1) * g
                v = b2 * v + (1 - b2) * g * g
                p.mul_(1 - lr * group["weight_decay"])
                upd = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + group["eps"])
                p.add_(upd.to(p.dtype), alpha=-lr)
                if factored:
                    m, v = self._rsvd(m, r), self._rsvd(v, r)
                st["m"], st["v"] = m, v
