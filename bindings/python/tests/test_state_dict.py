"""state_dict / load_state_dict / torch.save: resumed runs are bit-identical; bad dicts are refused."""

import copy
import io

import pytest
import torch

import mlorc.torch as mt


def _model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(12, 32), torch.nn.GELU(), torch.nn.Linear(32, 24), torch.nn.LayerNorm(24), torch.nn.Linear(24, 3)
    ).to(dtype)


def _data(dtype=torch.float32):
    g = torch.Generator().manual_seed(123)
    x = torch.randn(64, 12, generator=g).to(dtype)
    y = torch.randn(64, 3, generator=g).to(dtype)
    return x, y


def _train(model, opt, sched, steps, start):
    x, y = _data(next(model.parameters()).dtype)
    for t in range(start, start + steps):
        idx = slice((t * 16) % 64, (t * 16) % 64 + 16)
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        sched.step()


def _make(cls, model, **kw):
    opt = cls(
        [
            {"params": [p for n, p in model.named_parameters() if p.dim() > 1]},
            {"params": [p for n, p in model.named_parameters() if p.dim() <= 1], "weight_decay": 0.0},
        ],
        **kw,
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 30)
    return opt, sched


@pytest.mark.parametrize("cls", [mt.MLorcAdamW, mt.MLorcLion])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_resume_is_bit_identical(cls, dtype):
    n, k = 7, 6
    kw = dict(lr=3e-3, rank=3, seed=11)
    ref_model = _model(dtype=dtype)
    ref_opt, ref_sched = _make(cls, ref_model, **kw)
    _train(ref_model, ref_opt, ref_sched, n + k, 0)

    model = _model(dtype=dtype)
    opt, sched = _make(cls, model, **kw)
    _train(model, opt, sched, n, 0)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    del model, opt, sched

    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    model2 = _model(seed=99, dtype=dtype)
    opt2, sched2 = _make(cls, model2, lr=1.0, rank=3, seed=11)
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    sched2.load_state_dict(ckpt["sched"])
    p0 = next(iter(opt2.state))
    assert opt2.state[p0]["step"].item() == n
    assert all(t.dtype == torch.float32 for k_, t in opt2.state[p0].items())
    _train(model2, opt2, sched2, k, n)

    for a, b in zip(ref_model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    for pa, pb in zip(ref_opt.state.values(), opt2.state.values()):
        assert pa.keys() == pb.keys()
        for key in pa:
            assert torch.equal(pa[key], pb[key]), key


def test_state_tensors_are_the_library_state():
    """Writing into self.state[p] changes the next step (the library works in place)."""
    model = _model()
    opt, _ = _make(mt.MLorcAdamW, model)
    _train(model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0), 2, 0)
    twin = copy.deepcopy(model)
    opt_twin, _ = _make(mt.MLorcAdamW, twin)
    opt_twin.load_state_dict(opt.state_dict())
    w = model[0].weight
    with torch.no_grad():
        opt.state[w]["exp_avg.s"].mul_(0)  # drop the first moment of one matrix in place
    for o, m in ((opt, model), (opt_twin, twin)):
        o.zero_grad()
        m(torch.ones(2, 12)).sum().backward()
        o.step()
    assert not torch.equal(model[0].weight, twin[0].weight)
    assert torch.equal(model[2].weight, twin[2].weight)


def test_loaded_dict_is_not_aliased():
    model = _model()
    opt, sched = _make(mt.MLorcAdamW, model)
    _train(model, opt, sched, 2, 0)
    sd = copy.deepcopy(opt.state_dict())
    snapshot = copy.deepcopy(sd)
    opt.load_state_dict(sd)
    _train(model, opt, sched, 2, 2)
    for k, st in sd["state"].items():
        for key, t in st.items():
            assert torch.equal(t, snapshot["state"][k][key])


def _state_copy(opt):
    return {id(p): {k: v.clone() for k, v in st.items()} for p, st in opt.state.items()}


def _assert_same_state(opt, saved):
    assert {id(p) for p in opt.state} == set(saved)
    for p, st in opt.state.items():
        assert st.keys() == saved[id(p)].keys()
        for k, v in st.items():
            assert torch.equal(v, saved[id(p)][k])


def test_mismatched_state_dicts_are_refused_and_change_nothing():
    model = _model()
    opt, sched = _make(mt.MLorcAdamW, model, rank=3)
    _train(model, opt, sched, 2, 0)
    good = opt.state_dict()
    before = _state_copy(opt)
    groups_before = copy.deepcopy([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups])

    bad = copy.deepcopy(good)
    bad["state"][0]["exp_avg.u"] = torch.zeros(5, 5)  # wrong shape
    with pytest.raises(ValueError, match="exp_avg.u"):
        opt.load_state_dict(bad)

    bad = copy.deepcopy(good)
    del bad["state"][0]["exp_avg_sq.v"]  # missing key
    with pytest.raises(ValueError, match="missing"):
        opt.load_state_dict(bad)

    bad = copy.deepcopy(good)
    bad["state"][1]["extra"] = torch.zeros(1)  # unexpected key
    with pytest.raises(ValueError, match="unexpected"):
        opt.load_state_dict(bad)

    bad = copy.deepcopy(good)
    bad["param_groups"][0]["rank"] = 5  # buffers were saved for rank 3
    with pytest.raises(ValueError):
        opt.load_state_dict(bad)

    bad = copy.deepcopy(good)
    bad["param_groups"][1]["params"] = bad["param_groups"][1]["params"][:-1]
    with pytest.raises(ValueError, match="size"):
        opt.load_state_dict(bad)

    # A dict from another model (different shapes).
    other = torch.nn.Sequential(torch.nn.Linear(12, 40), torch.nn.GELU(), torch.nn.Linear(40, 24),
                                torch.nn.LayerNorm(24), torch.nn.Linear(24, 3))
    o_opt, o_sched = _make(mt.MLorcAdamW, other, rank=3)
    _train(other, o_opt, o_sched, 1, 0)
    with pytest.raises(ValueError):
        opt.load_state_dict(o_opt.state_dict())

    _assert_same_state(opt, before)
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == groups_before
    opt.load_state_dict(good)  # and the good one still loads
    _train(model, opt, sched, 1, 2)


def test_replaced_state_tensors_recreate_the_handle():
    """New tensors in self.state[p] (as after .to(device) or a manual copy) are picked up."""
    a, b = _model(), _model()
    oa, sa = _make(mt.MLorcAdamW, a, seed=3)
    ob, sb = _make(mt.MLorcAdamW, b, seed=3)
    _train(a, oa, sa, 3, 0)
    _train(b, ob, sb, 3, 0)
    for st in ob.state.values():
        for k in list(st):
            st[k] = st[k].clone()  # same values, new storage (and a new 'step' tensor)
    _train(a, oa, sa, 3, 3)
    _train(b, ob, sb, 3, 3)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    assert all(h.tensors[0] is ob.state[p][next(k for k in ob.state[p] if k != "step")]
               for p in ob.state for h in [ob._mlorc_handles[id(p)]])


def test_tensor_lr_equals_float_lr():
    a, b = _model(), _model()
    oa = mt.MLorcAdamW(a.parameters(), lr=torch.tensor(2e-3))
    ob = mt.MLorcAdamW(b.parameters(), lr=2e-3)
    sa = torch.optim.lr_scheduler.LambdaLR(oa, lambda t: 0.9**t)
    sb = torch.optim.lr_scheduler.LambdaLR(ob, lambda t: 0.9**t)
    _train(a, oa, sa, 4, 0)
    _train(b, ob, sb, 4, 0)
    assert isinstance(oa.param_groups[0]["lr"], torch.Tensor)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-6)
