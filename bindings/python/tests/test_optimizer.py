"""Validation, bad input, memory accounting, GradScaler, fused backward, closures, groups."""

import math

import pytest
import torch

import mlorc
import mlorc.torch as mt
from mlorc import _capi


def _params(*shapes, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, dtype=dtype)) for s in shapes]


def _snapshot(params, opt):
    return (
        [p.detach().clone() for p in params],
        {id(p): {k: v.clone() for k, v in st.items()} for p, st in opt.state.items()},
    )


def _assert_unchanged(params, opt, snap):
    ps, st = snap
    for p, q in zip(params, ps):
        assert torch.equal(p, q)
    assert {id(p) for p in opt.state} == set(st)
    for p, s in opt.state.items():
        for k, v in s.items():
            assert torch.equal(v, st[id(p)][k]), k


# -- constructor validation -------------------------------------------------------------------


def test_defaults_match_library():
    p = _params((8, 8))
    adamw = mt.MLorcAdamW(p).defaults
    c = _capi.config_init(_capi.MLORC_ADAMW)
    assert adamw["betas"] == (c.beta1, c.beta2) and adamw["eps"] == c.eps
    assert adamw["weight_decay"] == c.weight_decay and adamw["rank"] == c.rank
    assert adamw["oversampling"] == c.oversampling and adamw["power_iters"] == c.power_iters
    assert adamw["bias_correction"] == bool(c.bias_correction)
    assert adamw["stochastic_rounding"] == bool(c.stochastic_rounding) and adamw["layout"] == "auto"
    assert adamw["lr"] == 1e-3
    lion = mt.MLorcLion(p).defaults
    c = _capi.config_init(_capi.MLORC_LION)
    assert lion["betas"] == (c.beta1, c.beta2) and lion["weight_decay"] == c.weight_decay
    assert lion["rank"] == c.rank and lion["lr"] == 1e-4 and "eps" not in lion


@pytest.mark.parametrize(
    "kw",
    [
        dict(lr=float("nan")),
        dict(lr=-1e-3),
        dict(lr=float("inf")),
        dict(betas=(1.0, 0.999)),
        dict(betas=(0.9, -0.1)),
        dict(betas=(0.9,)),
        dict(eps=-1e-8),
        dict(weight_decay=float("nan")),
        dict(rank=0),
        dict(rank=2.5),
        dict(oversampling=-1),
        dict(power_iters=-1),
        dict(layout="lowrank"),
        dict(seed=-1),
        dict(seed=2**64),
    ],
)
def test_constructor_rejects_bad_hyperparameters(kw):
    with pytest.raises(ValueError):
        mt.MLorcAdamW(_params((4, 4)), **kw)


def test_lion_rejects_bad_hyperparameters():
    with pytest.raises(ValueError):
        mt.MLorcLion(_params((4, 4)), betas=(0.9, 1.5))
    with pytest.raises(ValueError):
        mt.MLorcLion(_params((4, 4)), lr=float("nan"))


def test_bad_param_group_is_not_added():
    opt = mt.MLorcAdamW(_params((4, 4)))
    with pytest.raises(ValueError):
        opt.add_param_group({"params": _params((3, 3)), "rank": 0})
    assert len(opt.param_groups) == 1


# -- bad input ----------------------------------------------------------------------------------


def test_float64_params_are_refused():
    with pytest.raises(TypeError, match="float64"):
        mt.MLorcAdamW(_params((4, 4), dtype=torch.float64))


def test_float64_grad_is_refused_and_changes_nothing():
    (p,) = _params((6, 5))
    opt = mt.MLorcAdamW([p])
    if hasattr(p, "grad_dtype"):
        p.grad_dtype = None  # torch >= 2.10 refuses a .grad of another dtype unless told
    p.grad = torch.randn(6, 5, dtype=torch.float64)
    snap = _snapshot([p], opt)
    with pytest.raises(TypeError, match="float64"):
        opt.step()
    _assert_unchanged([p], opt, snap)


def test_non_contiguous_param_is_refused():
    base = torch.randn(8, 6)
    p = torch.nn.Parameter(base.t())  # a non-contiguous view
    assert not p.is_contiguous()
    with pytest.raises(ValueError, match="contiguous.*no hidden|hidden m×n copy"):
        mt.MLorcAdamW([p])


def test_non_contiguous_grad_is_refused():
    (p,) = _params((6, 8))
    opt = mt.MLorcAdamW([p])
    p.grad = torch.randn(8, 6).t()
    with pytest.raises(ValueError, match="contiguous"):
        opt.step()


def test_sparse_grads_raise_runtime_error():
    emb = torch.nn.Embedding(10, 4, sparse=True)
    opt = mt.MLorcAdamW(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    assert emb.weight.grad.is_sparse
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


def test_nan_lr_set_later_changes_nothing():
    params = _params((16, 12), (12,), (10, 10))
    opt = mt.MLorcAdamW([{"params": params[:2]}, {"params": params[2:]}], lr=1e-2)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    opt.param_groups[1]["lr"] = float("nan")  # the second group: the first must not move either
    snap = _snapshot(params, opt)
    with pytest.raises((ValueError, mlorc.MlorcError)):
        opt.step()
    _assert_unchanged(params, opt, snap)


def test_nan_tensor_lr_is_refused_by_the_library():
    (p,) = _params((16, 12))
    opt = mt.MLorcAdamW([p], lr=torch.tensor(1e-2))
    p.grad = torch.randn_like(p)
    opt.step()
    snap = _snapshot([p], opt)
    opt.param_groups[0]["lr"] = torch.tensor(float("nan"))
    with pytest.raises((ValueError, mlorc.MlorcError)):
        opt.step()
    _assert_unchanged([p], opt, snap)


def test_library_errors_carry_status_and_message():
    (p,) = _params((16, 12))
    opt = mt.MLorcAdamW([p], lr=1e-2)
    p.grad = torch.randn_like(p)
    opt.step()
    snap = _snapshot([p], opt)
    opt.scale = None
    opt.grad_scale = torch.tensor(-1.0)  # a negative scale: invalid for the library
    with pytest.raises(mlorc.MlorcError) as info:
        opt.step()
    del opt.grad_scale
    e = info.value
    assert e.status == _capi.MLORC_ERROR_INVALID_ARGUMENT
    assert e.status_name == "MLORC_ERROR_INVALID_ARGUMENT"
    assert "grad_scale" in e.message
    _assert_unchanged([p], opt, snap)


def test_structural_change_is_refused():
    (p,) = _params((16, 12))
    opt = mt.MLorcAdamW([p], rank=2)
    p.grad = torch.randn_like(p)
    opt.step()
    opt.param_groups[0]["rank"] = 3
    with pytest.raises(ValueError, match="rank"):
        opt.step()


def test_unsupported_device_or_cuda_surfaces_clearly():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    p = torch.nn.Parameter(torch.randn(16, 12, device="cuda"))
    opt = mt.MLorcAdamW([p])
    p.grad = torch.randn_like(p)
    try:
        opt.step()
    except mlorc.MlorcError as e:
        assert e.status in (_capi.MLORC_ERROR_UNSUPPORTED, _capi.MLORC_ERROR_DEVICE_UNAVAILABLE)
        assert not opt.state[p]


# -- memory ---------------------------------------------------------------------------------------


def _formula(shape, rank, moments):
    m, n = (1, math.prod(shape)) if len(shape) <= 1 else (shape[0], math.prod(shape[1:]))
    r = min(rank, m, n)
    if (m + n + 1) * rank < m * n:
        return moments * (m + n + 1) * r * 4
    return moments * m * n * 4


@pytest.mark.parametrize("cls,moments", [(mt.MLorcAdamW, 2), (mt.MLorcLion, 1)])
def test_state_bytes_match_formula(cls, moments):
    shapes = [(256, 128), (64, 32, 3, 3), (128,), (), (8, 8), (9, 9), (1000, 3), (40, 30)]
    params = _params(*shapes)
    rank = 4
    opt = cls(params, rank=rank)
    expected = sum(_formula(s, rank, moments) for s in shapes)
    assert opt.state_bytes() == expected  # before any state exists: what it will hold
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    assert opt.state_bytes() == expected
    held = sum(t.numel() * t.element_size() for st in opt.state.values() for k, t in st.items() if k != "step")
    assert held == expected
    # AdamW r=4 on the 256x128 matrix: 2·(256+128+1)·4·4 bytes instead of 2·256·128·4.
    if moments == 2:
        assert _formula((256, 128), 4, 2) == 2 * 385 * 16


def test_buffer_names_and_shapes():
    big, vec = _params((20, 10), (10,))
    opt = mt.MLorcAdamW([big, vec], rank=3)
    big.grad, vec.grad = torch.randn_like(big), torch.randn_like(vec)
    opt.step()
    st = opt.state[big]
    assert {k: tuple(v.shape) for k, v in st.items() if k != "step"} == {
        "exp_avg.u": (20, 3), "exp_avg.s": (1, 3), "exp_avg.v": (10, 3),
        "exp_avg_sq.u": (20, 3), "exp_avg_sq.s": (1, 3), "exp_avg_sq.v": (10, 3),
    }
    assert st["step"].dtype == torch.float32 and st["step"].dim() == 0 and st["step"].item() == 1
    assert {k: tuple(v.shape) for k, v in opt.state[vec].items() if k != "step"} == {
        "exp_avg": (1, 10), "exp_avg_sq": (1, 10)}


# -- GradScaler -----------------------------------------------------------------------------------


def _scaler_supported_on_cpu():
    try:
        torch.amp.GradScaler("cpu")
        return True
    except Exception:
        return False


def test_grad_scale_and_found_inf_attributes():
    """The attributes GradScaler sets for fused optimizers (emulated by hand)."""
    a, = _params((24, 16), seed=1)
    b = torch.nn.Parameter(a.detach().clone())
    opt_a = mt.MLorcAdamW([a], lr=1e-2)
    opt_b = mt.MLorcAdamW([b], lr=1e-2)
    for _ in range(3):
        g = torch.randn(24, 16)
        a.grad = g * 1024.0
        b.grad = g.clone()
        opt_a.grad_scale = torch.tensor(1024.0)
        opt_a.found_inf = torch.tensor(0.0)
        opt_a.step()
        opt_b.step()
    assert torch.equal(a, b)  # scaling by a power of two is exact
    snap = _snapshot([a], opt_a)
    a.grad = torch.full_like(a, float("inf"))
    opt_a.found_inf = torch.tensor(1.0)
    opt_a.step()
    _assert_unchanged([a], opt_a, snap)
    assert opt_a.state[a]["step"].item() == 3


@pytest.mark.skipif(not _scaler_supported_on_cpu(), reason="torch.amp.GradScaler('cpu') unavailable")
def test_torch_grad_scaler_on_cpu():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    twin = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    twin.load_state_dict(model.state_dict())
    opt = mt.MLorcAdamW(model.parameters(), lr=1e-2)
    ref = mt.MLorcAdamW(twin.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0, growth_interval=1000)
    x, y = torch.randn(32, 8), torch.randn(32, 2)
    for _ in range(4):
        for m, o in ((model, opt), (twin, ref)):
            o.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        torch.nn.functional.mse_loss(twin(x), y).backward()
        ref.step()
    assert not hasattr(opt, "found_inf")  # GradScaler removes its attributes after the step
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-6)
    # An overflow: nothing changes, not even state['step'], and the scale backs off.
    snap = _snapshot(list(model.parameters()), opt)
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y) * float("inf")
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    _assert_unchanged(list(model.parameters()), opt, snap)
    assert scaler.get_scale() == 128.0
    assert all(st["step"].item() == 4 for st in opt.state.values())


# -- fused backward, closures, groups -------------------------------------------------------------


@pytest.mark.parametrize("cls", [mt.MLorcAdamW, mt.MLorcLion])
def test_fused_backward_matches_step(cls):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    twin = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    twin.load_state_dict(model.state_dict())
    opt = cls(model.parameters(), lr=1e-2, rank=2)
    fused = cls(twin.parameters(), lr=1e-2, rank=2)
    sched = torch.optim.lr_scheduler.StepLR(opt, 2, gamma=0.5)
    fsched = torch.optim.lr_scheduler.StepLR(fused, 2, gamma=0.5)
    handles = mt.register_fused_backward(twin, fused)
    x, y = torch.randn(16, 10), torch.randn(16, 4)
    for _ in range(6):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        sched.step()
        torch.nn.functional.mse_loss(twin(x), y).backward()  # steps inside backward
        fsched.step()
        assert all(p.grad is None for p in twin.parameters())
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)
    for h in handles:
        h.remove()


def test_fused_backward_rejects_foreign_params():
    a, b = _params((4, 4), (4, 4))
    opt = mt.MLorcAdamW([a])
    with pytest.raises(ValueError):
        mt.register_fused_backward([a, b], opt)


def test_closure_param_groups_and_hyperparameter_changes():
    torch.manual_seed(0)
    w1, b1 = _params((12, 10), (12,))
    r1, rb1 = (torch.nn.Parameter(t.detach().clone()) for t in (w1, b1))
    x = torch.randn(8, 10)

    opt = mt.MLorcAdamW([{"params": [w1]}, {"params": [b1], "lr": 5e-2, "weight_decay": 0.0}],
                        lr=1e-2, layout="dense")
    ref = torch.optim.AdamW([{"params": [r1]}, {"params": [rb1], "lr": 5e-2, "weight_decay": 0.0}],
                            lr=1e-2, foreach=False)

    def closure_for(o, w, b):
        def closure():
            o.zero_grad()
            loss = (x @ w.t() + b).pow(2).mean()
            loss.backward()
            return loss
        return closure

    for t in range(8):
        if t == 4:  # change betas / eps / weight decay mid-run: mlorc_state_set_config
            for o in (opt, ref):
                o.param_groups[0]["betas"] = (0.8, 0.99)
                o.param_groups[0]["eps"] = 1e-6
                o.param_groups[0]["weight_decay"] = 0.2
        la = opt.step(closure_for(opt, w1, b1))
        lb = ref.step(closure_for(ref, r1, rb1))
        assert torch.allclose(la, lb, rtol=1e-5, atol=1e-7)
    assert torch.allclose(w1, r1, rtol=0, atol=1e-5)
    assert torch.allclose(b1, rb1, rtol=0, atol=1e-5)


def test_step_param_equals_step_and_skips_missing_grads():
    a, b = _params((12, 9), (12, 9))
    c, d = (torch.nn.Parameter(t.detach().clone()) for t in (a, b))
    o1 = mt.MLorcAdamW([a, b], lr=1e-2)
    o2 = mt.MLorcAdamW([c, d], lr=1e-2)
    for _ in range(3):
        g = torch.randn(12, 9)
        a.grad = g.clone()
        c.grad = g.clone()
        o1.step()
        o2.step_param(c)
        o2.step_param(d)  # no grad: nothing happens
    assert torch.equal(a, c) and torch.equal(b, d)
    assert d not in o2.state or not o2.state[d]
    with pytest.raises(ValueError):
        o2.step_param(torch.nn.Parameter(torch.zeros(2)))


@pytest.mark.parametrize("cls", [mt.MLorcAdamW, mt.MLorcLion])
def test_one_batched_step_equals_one_step_per_parameter(cls):
    # step() hands a group's tensors to the library in one call (mlorc_step_many), which spreads
    # them over its threads; step_param steps one tensor per call. Same bits.
    shapes = [(300,), (384, 256), (256, 256), (64,), (512, 256), (256, 512), (3, 5000), (7, 5)]
    batched = _params(*shapes, seed=3)
    single = [torch.nn.Parameter(p.detach().clone()) for p in batched]
    o1 = cls([{"params": batched[:5]}, {"params": batched[5:], "lr": 3e-4}], lr=1e-3)
    o2 = cls([{"params": single[:5]}, {"params": single[5:], "lr": 3e-4}], lr=1e-3)
    assert _capi.has_step_many()
    for _ in range(3):
        for p, q in zip(batched, single):
            p.grad = torch.randn(p.shape) * 1e-2
            q.grad = p.grad.clone()
        o1.step()
        for q in single:
            o2.step_param(q)
    for p, q in zip(batched, single):
        assert torch.isfinite(p).all()
        assert torch.equal(p, q)
        for k, v in o1.state[p].items():
            assert torch.equal(v, o2.state[q][k]), k


def test_a_bad_gradient_anywhere_changes_no_parameter():
    ps = _params((40, 30), (30,), (50, 20))
    opt = mt.MLorcAdamW(ps)
    for p in ps:
        p.grad = torch.randn(p.shape)
    opt.step()
    for p in ps[:2]:
        p.grad = torch.randn(p.shape)
    ps[2].grad = torch.randn(20, 50).t()  # the last one is not contiguous
    snap = _snapshot(ps, opt)
    with pytest.raises(ValueError, match="contiguous"):
        opt.step()
    _assert_unchanged(ps, opt, snap)


def test_zero_sized_and_scalar_params():
    e, s = torch.nn.Parameter(torch.zeros(0, 4)), torch.nn.Parameter(torch.tensor(1.5))
    opt = mt.MLorcLion([e, s], lr=0.1, weight_decay=0.0)
    e.grad, s.grad = torch.zeros(0, 4), torch.tensor(2.0)
    opt.step()
    assert s.item() == pytest.approx(1.4)


def test_optimizer_gc_destroys_handles():
    import gc
    import weakref

    (p,) = _params((16, 16))
    opt = mt.MLorcAdamW([p])
    p.grad = torch.randn_like(p)
    opt.step()
    handles = opt._mlorc_handles
    assert len(handles) == 1
    ref = weakref.ref(opt)
    del opt
    gc.collect()
    assert ref() is None and len(handles) == 0


def test_help_documents_everything():
    doc = mt.MLorcAdamW.__doc__
    for word in ["Momentum Low-rank", "lr", "betas", "eps", "weight_decay", "rank", "oversampling",
                 "power_iters", "layout", "bias_correction", "stochastic_rounding", "seed",
                 "2·(m+n+1)·r·4", "bfloat16", "GradScaler", "register_fused_backward", "state_dict",
                 "exp_avg.u"]:
        assert word in doc, word
    assert "(m+n+1)·r·4" in mt.MLorcLion.__doc__


def test_cuda_desc_is_answered_with_a_clear_error_by_a_cpu_build():
    """The CUDA path of the binding sends device=MLORC_DEVICE_CUDA + ordinal; a CPU-only build
    must answer with a clear status (checked at the C level, no GPU needed)."""
    config = _capi.config_init(_capi.MLORC_ADAMW)
    desc = _capi.tensor_desc_init(16, 12, _capi.MLORC_F32)
    desc.device = _capi.MLORC_DEVICE_CUDA
    desc.device_ordinal = 0
    try:
        handle = _capi.state_create(config, desc)
    except mlorc.MlorcError as e:
        assert e.status in (_capi.MLORC_ERROR_UNSUPPORTED, _capi.MLORC_ERROR_DEVICE_UNAVAILABLE)
        assert e.message
    else:  # a CUDA-enabled build on a machine with a GPU
        _capi.state_destroy(handle)


@pytest.mark.skipif(not _scaler_supported_on_cpu(), reason="torch.amp.GradScaler('cpu') unavailable")
def test_grad_scaler_unscale_then_clip():
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 6)
    twin = torch.nn.Linear(8, 6)
    twin.load_state_dict(model.state_dict())
    opt = mt.MLorcAdamW(model.parameters(), lr=1e-2, layout="dense")
    ref = torch.optim.AdamW(twin.parameters(), lr=1e-2, foreach=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=64.0)
    x, y = torch.randn(16, 8), torch.randn(16, 6)
    for _ in range(3):
        opt.zero_grad()
        ref.zero_grad()
        scaler.scale(torch.nn.functional.mse_loss(model(x), y)).backward()
        scaler.unscale_(opt)  # grads unscaled in place: the step must not divide again
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        scaler.step(opt)
        scaler.update()
        torch.nn.functional.mse_loss(twin(x), y).backward()
        torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.1)
        ref.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-5)


def test_deepcopy_and_pickle():
    import copy
    import pickle

    (p,) = _params((16, 12))
    opt = mt.MLorcAdamW([p], lr=1e-2)
    p.grad = torch.randn_like(p)
    opt.step()
    clone = copy.deepcopy(opt)  # a copy of the optimizer over the same parameter
    assert clone._mlorc_handles == {} and clone.state[clone.param_groups[0]["params"][0]]["step"].item() == 1
    q = clone.param_groups[0]["params"][0]
    q.grad = p.grad.clone()
    clone.step()
    opt.step()
    assert torch.equal(p, q)  # the copy continues exactly like the original
    restored = pickle.loads(pickle.dumps(opt))
    assert restored.state_bytes() == opt.state_bytes()


def test_step_counts_of_a_batch_follow_changes_by_hand():
    """state['step'] is the library's count after each one-call step of many parameters, and a
    count changed by hand (in place, or as a new tensor) is the one the next step uses, with or
    without a found_inf tensor (= 0) in the step: the same weights either way."""
    params = _params((24, 16), (16, 24), (40,), seed=3)
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt = mt.MLorcAdamW(params, lr=1e-2)
    twin_opt = mt.MLorcAdamW(twins, lr=1e-2)
    gen = torch.Generator().manual_seed(4)

    def step_both():
        for p, q in zip(params, twins):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        opt.step()
        twin_opt.found_inf = torch.tensor(0.0)
        twin_opt.step()

    for _ in range(2):
        step_both()
    assert [opt.state[p]["step"].item() for p in params] == [2, 2, 2]
    for o, ps in ((opt, params), (twin_opt, twins)):
        o.state[ps[0]]["step"].fill_(10.0)
        o.state[ps[1]]["step"] = torch.tensor(20.0)
    step_both()
    step_both()
    for o, ps in ((opt, params), (twin_opt, twins)):
        assert [o.state[p]["step"].item() for p in ps] == [12, 22, 4]
        assert [_capi.state_step_count(o._mlorc_handles[id(p)].ptr) for p in ps] == [12, 22, 4]
    for p, q in zip(params, twins):
        assert torch.equal(p, q)


# -- later steps: whatever changed since the last step is seen ----------------------------------
# After a parameter has stepped, step() skips its full checks while nothing they depend on has
# changed (_Handle.unchanged). Each test changes one thing between steps, then compares with a
# twin optimizer loaded from a copy of the state_dict, whose next step runs every check afresh.

_SHAPES = [(24, 16), (16,), (8, 8), (6, 5)]  # factored; dense vector; square (for .t()); dense


def _started(cls=mt.MLorcAdamW, steps=2):
    params = _params(*_SHAPES, seed=5)
    opt = cls(params, lr=1e-2)
    gen = torch.Generator().manual_seed(6)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    return params, opt


def _twin(params, opt):
    import copy

    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    twin_opt = type(opt)(twins)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    return twins, twin_opt


def _step_like_twin(params, opt, via="step", grads=None):
    """Steps opt and a twin made now with the same gradients (``grads``: already set on
    params); asserts the same weights, state and library step counts."""
    if grads is None:
        gen = torch.Generator().manual_seed(7)
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)
    twins, twin_opt = _twin(params, opt)
    for p, q in zip(params, twins):
        if p.grad.dtype != q.dtype and hasattr(q, "grad_dtype"):
            q.grad_dtype = None  # torch >= 2.10 refuses a .grad of another dtype unless told
        q.grad = p.grad.clone()
    if via == "step":
        opt.step()
    else:
        for p in params:
            opt.step_param(p)
    twin_opt.step()
    for p, q in zip(params, twins):
        assert torch.equal(p, q)
        st, twin_st = opt.state[p], twin_opt.state[q]
        assert list(st) == list(twin_st)
        for k, v in st.items():
            assert torch.equal(v, twin_st[k]), k
        count = _capi.state_step_count(opt._mlorc_handles[id(p)].ptr)
        assert count == _capi.state_step_count(twin_opt._mlorc_handles[id(q)].ptr) == st["step"].item()


def test_steady_steps_skip_the_full_checks(monkeypatch):
    params, opt = _started()
    prepared = []
    full = mt._MLorcBase._prepare_param

    def counted(self, p, *args):
        if self is opt:  # not the twin's
            prepared.append(p)
        return full(self, p, *args)

    monkeypatch.setattr(mt._MLorcBase, "_prepare_param", counted)
    _step_like_twin(params, opt)
    assert prepared == []
    opt.param_groups[0]["weight_decay"] = 0.2
    _step_like_twin(params, opt)
    assert len(prepared) == len(params)
    st = opt.state[params[1]]
    st["exp_avg"] = st["exp_avg"].clone()
    prepared.clear()
    _step_like_twin(params, opt)
    assert prepared == [params[1]]


_COMMON_CHANGES = [{"betas": (0.8, 0.95)}, {"weight_decay": 0.3}, {"lr": 3e-2}, {"seed": 123}, {"power_iters": 1}]


@pytest.mark.parametrize(
    "cls,change",
    [(mt.MLorcAdamW, c) for c in _COMMON_CHANGES + [{"eps": 1e-3}, {"bias_correction": False}]]
    + [(mt.MLorcLion, c) for c in _COMMON_CHANGES],
)
@pytest.mark.parametrize("via", ["step", "step_param"])
def test_hyperparameters_changed_between_steps_take_effect(cls, change, via):
    params, opt = _started(cls)
    group = opt.param_groups[0]
    before = {k: group[k] for k in change}
    group.update(change)
    _step_like_twin(params, opt, via)
    group.update(before)  # and back
    _step_like_twin(params, opt, via)


def test_a_step_that_fails_after_reconfiguring_leaves_no_stale_shortcut():
    # The failed step has already given the library the new betas of params[0] when its bad
    # step count stops it; with the old betas back, the next step must reconfigure again.
    params, opt = _started()
    group = opt.param_groups[0]
    betas = group["betas"]
    group["betas"] = (0.5, 0.6)
    opt.state[params[0]]["step"].fill_(float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        opt.step()
    group["betas"] = betas
    opt.state[params[0]]["step"].fill_(2.0)
    _step_like_twin(params, opt)


@pytest.mark.parametrize("how", ["fill_", "add_", "copy_", "data", "numpy", "new tensor"])
@pytest.mark.parametrize("via", ["step", "step_param"])
def test_step_count_changed_between_steps_is_used(how, via):
    params, opt = _started()
    st = opt.state[params[1]]
    t = st["step"]
    if how == "fill_":
        t.fill_(7.0)
    elif how == "add_":
        t.add_(5.0)
    elif how == "copy_":
        t.copy_(torch.tensor(7.0))
    elif how == "data":  # new memory, same tensor object
        t.data = torch.tensor(7.0)
    elif how == "numpy":  # same memory, and torch does not see the write (no _version bump)
        t.numpy()[()] = 7.0
    else:
        st["step"] = torch.tensor(7.0)
    _step_like_twin(params, opt, via)
    assert [opt.state[p]["step"].item() for p in params] == [3, 8, 3, 3]


def test_step_counts_with_and_without_found_inf():
    params, opt = _started()
    for found_inf, count in [(1.0, 2), (0.0, 3), (None, 4), (1.0, 4), (None, 5), (0.0, 6)]:
        if found_inf is None:
            opt.__dict__.pop("found_inf", None)
        else:
            opt.found_inf = torch.tensor(found_inf)
        for p in params:
            p.grad = torch.randn(p.shape)
        opt.step()
        for p in params:
            assert opt.state[p]["step"].item() == count
            assert _capi.state_step_count(opt._mlorc_handles[id(p)].ptr) == count


@pytest.mark.parametrize("how", ["replaced", "data", "set_", "new dict", "cleared", "deleted"])
@pytest.mark.parametrize("via", ["step", "step_param"])
def test_state_buffers_changed_between_steps_are_used(how, via):
    params, opt = _started()
    for p in params[:3]:
        st = opt.state[p]
        if how == "new dict":
            opt.state[p] = {k: v * (0.5 if k != "step" else 1.0) for k, v in st.items()}
        elif how == "cleared":
            st.clear()  # the parameter starts afresh
        elif how == "deleted":
            del opt.state[p]
        else:
            for name in [k for k in st if k != "step"]:
                t, new = st[name], st[name] * 0.5  # new memory
                if how == "replaced":
                    st[name] = new
                elif how == "data":
                    t.data = new
                else:
                    t.set_(new)
    _step_like_twin(params, opt, via)


_BAD_BUFFER = r"state buffer 'exp_avg' must be a contiguous float32 tensor of shape \(8, 8\)"


@pytest.mark.parametrize(
    "change,error,match",
    [
        (lambda t: t.double(), RuntimeError, _BAD_BUFFER),
        (lambda t: t[:4].clone(), RuntimeError, _BAD_BUFFER),
        (lambda t: t.t(), RuntimeError, _BAD_BUFFER),
        (None, RuntimeError, "lacks buffer 'exp_avg'"),
    ],
)
def test_bad_state_buffers_set_between_steps_are_refused(change, error, match):
    params, opt = _started()
    st = opt.state[params[2]]
    if change is None:
        del st["exp_avg"]
    else:
        st["exp_avg"] = change(st["exp_avg"])
    for p in params:
        p.grad = torch.randn(p.shape)
    snap = _snapshot(params, opt)
    with pytest.raises(error, match=match):
        opt.step()
    _assert_unchanged(params, opt, snap)


def _grad_float64(p):
    if hasattr(p, "grad_dtype"):
        p.grad_dtype = None  # torch >= 2.10 refuses a .grad of another dtype unless told
    p.grad = torch.randn(p.shape, dtype=torch.float64)


def _grad_data_float64(p):
    p.grad.data = p.grad.data.double()  # the same gradient tensor, now float64


@pytest.mark.parametrize(
    "change,error,match",
    [
        (lambda p: p.grad.t_(), ValueError, "needs contiguous gradients"),  # the same tensor
        (lambda p: setattr(p, "grad", torch.randn(8, 8).t()), ValueError, "needs contiguous gradients"),
        (_grad_float64, TypeError, "gradients; got torch.float64"),
        (_grad_data_float64, TypeError, "gradients; got torch.float64"),
        (lambda p: setattr(p.grad, "data", torch.randn(4, 16)), ValueError, r"gradient \(4, 16\) on cpu does not"),
        (lambda p: setattr(p, "grad", torch.randn(8, 8).to_sparse()), RuntimeError, "does not support sparse"),
        (lambda p: setattr(p, "data", p.data.t()), ValueError, "needs contiguous parameters"),
        (lambda p: setattr(p, "data", p.data.double()), TypeError, "got a torch.float64 parameter"),
    ],
)
def test_bad_gradients_and_parameters_set_between_steps_are_refused(change, error, match):
    params, opt = _started()
    for p in params:
        p.grad = torch.randn(p.shape)
    change(params[2])
    snap = _snapshot(params, opt)
    with pytest.raises(error, match=match):
        opt.step()
    _assert_unchanged(params, opt, snap)


@pytest.mark.parametrize("change", ["param memory", "param float16", "grad float16", "grad memory", "flat_shard"])
def test_good_gradients_and_parameters_set_between_steps_are_used(change):
    params, opt = _started()
    p = params[0]
    for q in params:
        q.grad = torch.randn(q.shape)
    if change == "flat_shard":  # the whole of a dense vector as a shard: no collective, same bits
        p = mt.flat_shard(params[1], (16,), 0, 16)
        _step_like_twin(params, opt, grads="set")
        assert opt._mlorc_handles[id(p)].comm is not None
        return
    if change == "param memory":
        p.data = p.data.clone()  # new memory, same metadata
    elif change == "param float16":
        p.data = p.data.half()
        p.grad.data = p.grad.data.half()
    elif change == "grad float16":
        p.grad.data = p.grad.data.half()
    else:
        p.grad.data = p.grad.data.clone()
    _step_like_twin(params, opt, grads="set")
