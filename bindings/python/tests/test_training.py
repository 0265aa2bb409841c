"""A full fine-tuning loop: a "pretrained" small MLP is fine-tuned towards a changed network.

MLorcAdamW with rank 4 (the three weight matrices factored: (m+n+1)·4 << m·n) must reduce the
loss and end within a margin of two references trained with the same hyperparameters:

* an independent MLorc-AdamW written in plain torch from ALGORITHM.md (helpers.RefMLorcAdamW,
  float64, its own random sketches): the final loss must be within 20% of it. Measured: 0.129
  (library) vs 0.128 (reference); over library seeds the spread is ~4%, so 20% only tolerates
  sketch randomness, while a numerical bug (wrong moments, wrong bias correction) moves it more.
* torch.optim.AdamW: at most 2.5× its final loss. Measured ratio ~2.1 with r = 4, q = 0 on
  this task (AdamW 0.061): the gap belongs to the algorithm at this small rank and lr, since
  the plain-torch MLorc shows the same gap; the library with rank 8 is at 1.6×, and with
  power_iters=1 at 1.55×. 2.5× still fails an optimizer that does not fine-tune (the loss
  then stays near its initial ~0.60, 10× AdamW's).
"""

import torch

import mlorc.torch as mt
from helpers import RefMLorcAdamW

STEPS = 150


def _base_and_target():
    """A "pretrained" MLP and a fine-tuning target: the same MLP plus a rank-2 change of every
    weight matrix and a bias shift (fine-tuning updates are close to low rank)."""
    g = torch.Generator().manual_seed(0)
    base = _mlp()
    with torch.no_grad():
        for p in base.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / max(1, p.shape[-1]) ** 0.5)
    target = _mlp()
    target.load_state_dict(base.state_dict())
    with torch.no_grad():
        for p in target.parameters():
            if p.dim() == 2:
                m, n = p.shape
                p.add_(torch.randn(m, 2, generator=g) @ torch.randn(2, n, generator=g) * (0.5 / n**0.5))
            else:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
        x = torch.randn(1024, 32, generator=g)
        y = target(x) + 0.01 * torch.randn(1024, 8, generator=g)
    return base, x, y


def _mlp():
    return torch.nn.Sequential(
        torch.nn.Linear(32, 96), torch.nn.GELU(), torch.nn.Linear(96, 96), torch.nn.GELU(), torch.nn.Linear(96, 8)
    )


def _train(make_opt):
    base, x, y = _base_and_target()
    model = _mlp()
    model.load_state_dict(base.state_dict())
    opt = make_opt(model.parameters())
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=STEPS, pct_start=0.1)
    g = torch.Generator().manual_seed(2)
    losses = []
    for _ in range(STEPS):
        idx = torch.randint(0, 1024, (64,), generator=g)
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = torch.nn.functional.mse_loss(model(x), y).item()
    return losses, final, opt


def test_finetuning_loss_falls_and_tracks_adamw():
    _, ref_final, _ = _train(lambda p: torch.optim.AdamW(p, lr=3e-3, weight_decay=0.01))
    _, py_final, _ = _train(lambda p: RefMLorcAdamW(p, lr=3e-3, weight_decay=0.01, rank=4))
    losses, final, opt = _train(lambda p: mt.MLorcAdamW(p, lr=3e-3, weight_decay=0.01, rank=4))
    first = sum(losses[:5]) / 5
    last = sum(losses[-10:]) / 10
    assert last < 0.35 * first, f"loss did not fall: {first:.4f} -> {last:.4f}"
    assert abs(final - py_final) <= 0.2 * py_final, f"MLorc {final:.4f} vs plain-torch MLorc {py_final:.4f}"
    assert final <= 2.5 * ref_final, f"MLorc {final:.4f} vs AdamW {ref_final:.4f}"
    # Sanity: the big matrices really are factored (state far smaller than AdamW's).
    dense_bytes = sum(2 * p.numel() * 4 for p in _mlp().parameters())
    assert opt.state_bytes() < 0.25 * dense_bytes
    print(f"AdamW {ref_final:.4f}  plain-torch MLorc {py_final:.4f}  MLorcAdamW r=4 {final:.4f}")


def test_lion_trains():
    _, ref_final, _ = _train(lambda p: torch.optim.AdamW(p, lr=3e-3, weight_decay=0.01))
    losses, final, _ = _train(lambda p: mt.MLorcLion(p, lr=3e-4, weight_decay=0.05, rank=4))
    assert sum(losses[-10:]) / 10 < 0.35 * sum(losses[:5]) / 5
    assert final <= 2.5 * ref_final
    print(f"AdamW {ref_final:.4f}  MLorcLion r=4 {final:.4f}")
