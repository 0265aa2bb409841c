#!/usr/bin/env python3
"""GPU checks of libmlorc's CUDA backend through its C API (ctypes + torch), for the device
machine (no Rust there: the library built on the CPU machine is carried). Run by
scripts/gpu-check.sh; `--quick` is the short subset run under compute-sanitizer.

Each check prints one line `PASS name` or `FAIL name: why`; the process exits non-zero if any
check failed. Nothing here has run yet on a GPU: expect to fix things on the first run.
"""
import argparse, ctypes, json, math, os, sys, time

import torch

F32, F16, BF16 = 0, 1, 2
ADAMW, LION = 0, 1
AUTO, FACTORED, DENSE = 0, 1, 2
CPU, CUDA = 0, 1
OK, INVALID, DEVICE_UNAVAILABLE = 0, 1, 6
TORCH_DTYPE = {F32: torch.float32, F16: torch.float16, BF16: torch.bfloat16}


class Config(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("algorithm", ctypes.c_uint32), ("layout", ctypes.c_uint32),
                ("rank", ctypes.c_uint32), ("oversampling", ctypes.c_uint32), ("power_iters", ctypes.c_uint32),
                ("bias_correction", ctypes.c_uint32), ("stochastic_rounding", ctypes.c_uint32),
                ("beta1", ctypes.c_double), ("beta2", ctypes.c_double), ("eps", ctypes.c_double),
                ("weight_decay", ctypes.c_double), ("seed", ctypes.c_uint64)]


class Desc(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("rows", ctypes.c_size_t), ("cols", ctypes.c_size_t),
                ("param_dtype", ctypes.c_uint32), ("grad_dtype", ctypes.c_uint32), ("device", ctypes.c_uint32),
                ("device_ordinal", ctypes.c_int32)]


class StepOptions(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("lr", ctypes.c_double), ("lr_ptr", ctypes.c_void_p),
                ("grad_scale", ctypes.c_void_p), ("found_inf", ctypes.c_void_p), ("stream", ctypes.c_void_p)]


def load(path):
    lib = ctypes.CDLL(path)
    P = ctypes.POINTER
    sigs = {
        "mlorc_config_init": ([P(Config), ctypes.c_uint32], ctypes.c_uint32),
        "mlorc_tensor_desc_init": ([P(Desc), ctypes.c_size_t, ctypes.c_size_t, ctypes.c_uint32], ctypes.c_uint32),
        "mlorc_step_options_init": ([P(StepOptions), ctypes.c_double], ctypes.c_uint32),
        "mlorc_state_create": ([P(Config), P(Desc), P(ctypes.c_void_p)], ctypes.c_uint32),
        "mlorc_state_destroy": ([ctypes.c_void_p], None),
        "mlorc_step": ([ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, P(StepOptions)], ctypes.c_uint32),
        "mlorc_state_step_count": ([ctypes.c_void_p, P(ctypes.c_uint64)], ctypes.c_uint32),
        "mlorc_state_read_buffer": ([ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t], ctypes.c_uint32),
        "mlorc_last_error_message": ([], ctypes.c_char_p),
        "mlorc_state_save_size": ([ctypes.c_void_p, P(ctypes.c_size_t)], ctypes.c_uint32),
        "mlorc_state_save": ([ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, P(ctypes.c_size_t)], ctypes.c_uint32),
        "mlorc_state_load": ([ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t], ctypes.c_uint32),
    }
    for name, (args, res) in sigs.items():
        f = getattr(lib, name)
        f.argtypes, f.restype = args, res
    return lib


class Mlorc:
    def __init__(self, lib, lib_path):
        self.lib, self.lib_path = lib, lib_path

    def check(self, status, what):
        if status != OK:
            raise RuntimeError(f"{what}: status {status}: {self.lib.mlorc_last_error_message().decode()}")

    def config(self, algorithm, layout=FACTORED, rank=4, oversampling=0, power_iters=0, sr=False, seed=1234):
        c = Config()
        self.check(self.lib.mlorc_config_init(ctypes.byref(c), algorithm), "config_init")
        c.layout, c.rank, c.oversampling, c.power_iters = layout, rank, oversampling, power_iters
        c.stochastic_rounding, c.seed = int(sr), seed
        return c

    def state(self, config, rows, cols, dtype, device, ordinal=0):
        d = Desc()
        self.check(self.lib.mlorc_tensor_desc_init(ctypes.byref(d), rows, cols, dtype), "desc_init")
        d.device, d.device_ordinal = device, ordinal
        h = ctypes.c_void_p()
        self.check(self.lib.mlorc_state_create(ctypes.byref(config), ctypes.byref(d), ctypes.byref(h)), "state_create")
        return h

    def step(self, h, param, grad, lr=1e-3, lr_ptr=None, grad_scale=None, found_inf=None, stream=None):
        o = StepOptions()
        self.check(self.lib.mlorc_step_options_init(ctypes.byref(o), lr), "options_init")
        o.lr_ptr = lr_ptr.data_ptr() if lr_ptr is not None else None
        o.grad_scale = grad_scale.data_ptr() if grad_scale is not None else None
        o.found_inf = found_inf.data_ptr() if found_inf is not None else None
        if param.is_cuda:
            o.stream = (stream or torch.cuda.current_stream()).cuda_stream
        return self.lib.mlorc_step(h, param.data_ptr(), grad.data_ptr(), ctypes.byref(o))

    def step_count(self, h):
        n = ctypes.c_uint64()
        self.check(self.lib.mlorc_state_step_count(h, ctypes.byref(n)), "step_count")
        return n.value

    def save(self, h):
        size = ctypes.c_size_t()
        self.check(self.lib.mlorc_state_save_size(h, ctypes.byref(size)), "save_size")
        data = ctypes.create_string_buffer(size.value)
        self.check(self.lib.mlorc_state_save(h, data, size.value, ctypes.byref(size)), "save")
        return data.raw[: size.value]

    def load(self, h, data):
        buf = ctypes.create_string_buffer(data, len(data))
        self.check(self.lib.mlorc_state_load(h, buf, len(data)), "load")

    def buffer(self, h, name, numel, device):
        out = torch.empty(numel, dtype=torch.float32, device=device)
        self.check(self.lib.mlorc_state_read_buffer(h, name.encode(), out.data_ptr(), numel), f"read_buffer {name}")
        return out


def rel(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def assert_updates_match(d_cpu, d_cuda, lion, f32, what):
    # AdamW: the update within 1e-5 relative (f32) or 2e-2 (f16/bf16). Lion: its sign may flip
    # where beta1*M + (1 - beta1)*g is within rounding of zero, on at most 1e-3 (2e-2) of them.
    if lion:
        frac = ((d_cpu - d_cuda).abs() > 1e-6).float().mean().item()
        limit = 1e-3 if f32 else 2e-2
        assert frac <= limit, f"{what}: {frac:.2e} of Lion updates differ"
    else:
        e, tol = rel(d_cuda, d_cpu), (1e-5 if f32 else 2e-2)
        assert e < tol, f"{what}: update differs by {e:.2e} (tol {tol})"


def mlorc_torch(lib_path):
    # The PyTorch classes of bindings/python, over the library under test.
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bindings", "python", "src"))
    os.environ["MLORC_LIBRARY"] = lib_path
    import mlorc.torch
    return mlorc.torch


RESULTS = []


def check(name, fn):
    t = time.time()
    try:
        fn()
        RESULTS.append((name, True, ""))
        print(f"PASS {name} ({time.time() - t:.1f}s)", flush=True)
    except Exception as e:  # noqa: BLE001
        RESULTS.append((name, False, repr(e)))
        print(f"FAIL {name}: {e!r}", flush=True)


def factors_product(ml, h, moment, m, n, r, device):
    base = ["exp_avg", "exp_avg_sq"][moment]
    u = ml.buffer(h, f"{base}.u", m * r, device).view(m, r).double().cpu()
    s = ml.buffer(h, f"{base}.s", r, device).double().cpu()
    v = ml.buffer(h, f"{base}.v", n * r, device).view(n, r).double().cpu()
    return (u * s) @ v.T


def cpu_vs_cuda(ml, algorithm, layout, dtype, m, n, power_iters=0, oversampling=0, sr=False, steps=3):
    cfg = ml.config(algorithm, layout=layout, power_iters=power_iters, oversampling=oversampling, sr=sr)
    hc = ml.state(cfg, m, n, dtype, CPU)
    hg = ml.state(cfg, m, n, dtype, CUDA)
    g_ = torch.Generator().manual_seed(m * 7 + n)
    # Weights at a transformer's init scale: an f32 weight of size 1 would round the 1e-3 update
    # to its ulp (1.2e-7, i.e. 1e-4 of the update), and that rounding, not the step's arithmetic,
    # would dominate the update's difference.
    w = (0.02 * torch.randn(m, n, generator=g_)).to(TORCH_DTYPE[dtype])
    wc, wg = w.clone(), w.cuda()
    scale = torch.tensor([4.0])
    for t in range(steps):
        a = torch.randn(m, 6, generator=g_) @ torch.randn(6, n, generator=g_) + 0.05 * torch.randn(m, n, generator=g_)
        g = (a * 4.0).to(TORCH_DTYPE[dtype])
        before = wc.clone()
        ml.check(ml.step(hc, wc, g, lr=1e-3, grad_scale=scale), "cpu step")
        ml.check(ml.step(hg, wg, g.cuda(), lr=1e-3, grad_scale=scale.cuda()), "cuda step")
        torch.cuda.synchronize()
        assert torch.isfinite(wg.float()).all(), "non-finite weights on the GPU"
        d_c, d_g = wc.float() - before.float(), wg.cpu().float() - before.float()
        assert_updates_match(d_c, d_g, algorithm == LION, dtype == F32, f"step {t}")
        if layout == FACTORED and dtype == F32:
            for mo in range(2 if algorithm == ADAMW else 1):
                e = rel(factors_product(ml, hg, mo, m, n, 4, "cuda"), factors_product(ml, hc, mo, m, n, 4, "cpu"))
                assert e < 1e-4, f"step {t}, moment {mo}: factors differ by {e:.2e}"
        # The next step starts from the same state and weights on both backends: each step is
        # compared on equal inputs. (Left to drift, the backends' different summation orders in
        # the factors are amplified by the update's 1/sqrt of small rebuilt second moments.)
        ml.load(hc, ml.save(hg))
        wc.copy_(wg.cpu())
    assert ml.step_count(hg) == steps, f"device step count {ml.step_count(hg)}"
    ml.lib.mlorc_state_destroy(hc)
    ml.lib.mlorc_state_destroy(hg)


def oracle_rank1(ml):
    # Gradients a_t b^T with one fixed b: MLorc-AdamW equals torch.optim.AdamW.
    m, n = 300, 200
    cfg = ml.config(ADAMW, layout=FACTORED)
    h = ml.state(cfg, m, n, F32, CUDA)
    w = torch.randn(m, n, device="cuda")
    ref = torch.nn.Parameter(w.clone())
    opt = torch.optim.AdamW([ref], lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, foreach=False)
    b = torch.randn(n, device="cuda")
    for t in range(5):
        g = torch.outer(torch.randn(m, device="cuda"), b)
        ml.check(ml.step(h, w, g, lr=1e-2), "step")
        ref.grad = g.clone()
        opt.step()
    torch.cuda.synchronize()
    d = rel(w, ref.detach())
    assert d < 1e-5, f"MLorc-AdamW vs torch AdamW on rank-1 gradients: {d:.2e}"
    ml.lib.mlorc_state_destroy(h)


def found_inf_and_bad_pointers(ml):
    m, n = 128, 96
    h = ml.state(ml.config(ADAMW), m, n, F32, CUDA)
    w = torch.randn(m, n, device="cuda")
    g = torch.randn(m, n, device="cuda")
    w0 = w.clone()
    ml.check(ml.step(h, w, g, found_inf=torch.ones(1, device="cuda")), "found_inf step")
    torch.cuda.synchronize()
    assert torch.equal(w, w0), "found_inf step changed the weights"
    assert ml.step_count(h) == 0, "found_inf step changed the step count"
    ml.check(ml.step(h, w, g, found_inf=torch.zeros(1, device="cuda")), "normal step")
    assert ml.step_count(h) == 1
    # A host pointer is refused.
    status = ml.step(h, w, g.cpu())
    assert status == INVALID, f"host grad accepted (status {status})"
    # A bad device-side grad_scale skips the step and is reported later.
    ml.check(ml.step(h, w, g, grad_scale=torch.tensor([float("nan")], device="cuda")), "nan scale step enqueued")
    n_ = ctypes.c_uint64()
    status = ml.lib.mlorc_state_step_count(h, ctypes.byref(n_))
    assert status == INVALID, "a NaN grad_scale was not reported"
    ml.lib.mlorc_state_destroy(h)


def graph_capture(ml):
    m, n = 512, 384
    cfg = ml.config(ADAMW, layout=FACTORED)
    hg, he = ml.state(cfg, m, n, BF16, CUDA), ml.state(cfg, m, n, BF16, CUDA)
    w0 = torch.randn(m, n, device="cuda").bfloat16()
    wg, we = w0.clone(), w0.clone()
    grad = torch.zeros(m, n, device="cuda", dtype=torch.bfloat16)
    lr = torch.tensor([1e-3], device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(side):
        with torch.cuda.graph(graph, stream=side):
            ml.check(ml.step(hg, wg, grad, lr_ptr=lr, stream=side), "captured step")
    torch.cuda.synchronize()
    # Capture itself must not have stepped.
    assert torch.equal(wg, w0), "capture executed the step"
    gen = torch.Generator(device="cuda").manual_seed(5)
    for t in range(3):
        g = torch.randn(m, n, device="cuda", generator=gen).bfloat16()
        grad.copy_(g)
        lr.fill_(1e-3 * (t + 1))
        graph.replay()
        ml.check(ml.step(he, we, g, lr=1e-3 * (t + 1)), "eager step")
    torch.cuda.synchronize()
    assert ml.step_count(hg) == 3, f"replayed state counted {ml.step_count(hg)} steps"
    assert torch.equal(wg, we), f"graph replay differs from eager steps: {rel(wg.float(), we.float()):.2e}"
    ml.lib.mlorc_state_destroy(hg)
    ml.lib.mlorc_state_destroy(he)


def checkpoint_across_backends(ml):
    # CPU -> CUDA -> CPU: the same bytes, and the resumed CUDA state keeps following the CPU one.
    m, n = 200, 150
    cfg = ml.config(ADAMW, layout=FACTORED)
    hc, hg, hback = ml.state(cfg, m, n, F32, CPU), ml.state(cfg, m, n, F32, CUDA), ml.state(cfg, m, n, F32, CPU)
    gen = torch.Generator().manual_seed(11)
    w = torch.randn(m, n, generator=gen)
    for _ in range(3):
        ml.check(ml.step(hc, w, torch.randn(m, n, generator=gen)), "cpu step")
    saved = ml.save(hc)
    ml.load(hg, saved)
    assert ml.step_count(hg) == 3, f"loaded CUDA state counts {ml.step_count(hg)} steps"
    assert ml.save(hg) == saved, "a CUDA state saves other bytes than the checkpoint it loaded"
    wg = w.cuda()
    g = torch.randn(m, n, generator=gen)
    ml.check(ml.step(hc, w, g), "cpu step")
    ml.check(ml.step(hg, wg, g.cuda()), "cuda step")
    e = rel(wg, w)
    assert e < 1e-5, f"resumed CUDA step differs from the CPU one by {e:.2e}"
    ml.load(hback, ml.save(hg))
    for mo in range(2):
        e = rel(factors_product(ml, hback, mo, m, n, 4, "cpu"), factors_product(ml, hc, mo, m, n, 4, "cpu"))
        assert e < 1e-4, f"moment {mo} after CUDA -> CPU: {e:.2e}"
    for h in (hc, hg, hback):
        ml.lib.mlorc_state_destroy(h)


def torch_classes(lib_path):
    # The PyTorch classes on CUDA parameters, no code change: the same steps as on the CPU.
    mt = mlorc_torch(lib_path)
    for cls in (mt.MLorcAdamW, mt.MLorcLion):
        gen = torch.Generator().manual_seed(3)
        shapes = [(96, 80), (80,), (200, 33)]
        cpu = [torch.nn.Parameter(0.02 * torch.randn(*s, generator=gen)) for s in shapes]
        gpu = [torch.nn.Parameter(p.detach().cuda()) for p in cpu]
        start = [p.detach().clone() for p in cpu]
        oc, og = cls(cpu, lr=1e-3, seed=7), cls(gpu, lr=1e-3, seed=7)
        for _ in range(3):
            for pc, pg in zip(cpu, gpu):
                a = torch.randn(pc.shape[0], 3, generator=gen) @ torch.randn(3, pc.numel() // pc.shape[0], generator=gen)
                pc.grad = a.reshape(pc.shape).clone()
                pg.grad = pc.grad.cuda()
            oc.step()
            og.step()
        torch.cuda.synchronize()
        for pc, pg, p0 in zip(cpu, gpu, start):
            d_c, d_g = pc.detach() - p0, pg.detach().cpu() - p0
            assert_updates_match(d_c, d_g, cls is mt.MLorcLion, True, f"{cls.__name__} {tuple(pc.shape)}")
        sd = og.state_dict()
        og2 = cls(gpu, lr=1e-3, seed=7)
        og2.load_state_dict(sd)


def correctness(ml, quick):
    shapes = [(37, 300), (130, 75)] if quick else [(37, 300), (130, 75), (257, 1030), (1024, 768)]
    for (m, n) in shapes:
        for algorithm in (ADAMW, LION):
            for dtype in ((F32,) if quick else (F32, BF16, F16)):
                name = f"cpu_vs_cuda {'adamw' if algorithm == ADAMW else 'lion'} {m}x{n} {['f32', 'f16', 'bf16'][dtype]}"
                check(name, lambda: cpu_vs_cuda(ml, algorithm, FACTORED, dtype, m, n))
    if quick:
        return
    check("cpu_vs_cuda adamw q=1 p=8 (k=12: chunked kernels)", lambda: cpu_vs_cuda(ml, ADAMW, FACTORED, F32, 200, 150, power_iters=1, oversampling=8))
    check("cpu_vs_cuda dense adamw bf16", lambda: cpu_vs_cuda(ml, ADAMW, DENSE, BF16, 33, 17))
    check("cpu_vs_cuda dense lion f32", lambda: cpu_vs_cuda(ml, LION, DENSE, F32, 33, 17))
    check("cpu_vs_cuda stochastic rounding bf16", lambda: cpu_vs_cuda(ml, ADAMW, FACTORED, BF16, 256, 200, sr=True))
    check("oracle rank-1 gradients = torch AdamW", lambda: oracle_rank1(ml))
    check("found_inf, bad pointers, bad grad_scale", lambda: found_inf_and_bad_pointers(ml))
    check("graph capture and replay", lambda: graph_capture(ml))
    check("checkpoint CPU -> CUDA -> CPU", lambda: checkpoint_across_backends(ml))
    check("torch classes on CUDA parameters", lambda: torch_classes(ml.lib_path))


# ------------------------------------------------------------------------------------------
# Benchmark.

def median_ms(fn, warmup=5, reps=30):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def paper_step(w, g, state, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, wd=0.01, r=4, niter=1):
    # The paper's algorithm in torch (its public code's structure: rebuild, fix, update, pca_lowrank).
    t = state["t"] = state.get("t", 0) + 1
    m_old = state["mu"] @ torch.diag(state["ms"]) @ state["mv"].T if "mu" in state else torch.zeros_like(g)
    v_old = state["vu"] @ torch.diag(state["vs"]) @ state["vv"].T if "vu" in state else torch.zeros_like(g)
    if (v_old < 0).any():
        neg = v_old[v_old < 0]
        v_old = torch.where(v_old < 0, neg.abs().mean(), v_old)
    mt = b1 * m_old + (1 - b1) * g
    vt = b2 * v_old + (1 - b2) * g * g
    w.mul_(1 - lr * wd)
    w.add_(-(lr / (1 - b1 ** t)) * mt / (vt.sqrt() / math.sqrt(1 - b2 ** t) + eps))
    state["mu"], state["ms"], state["mv"] = torch.pca_lowrank(mt, q=r, center=False, niter=niter)
    state["vu"], state["vs"], state["vv"] = torch.pca_lowrank(vt, q=r, center=False, niter=niter)


def benchmark(ml, rows_out):
    big = torch.empty(1 << 28, dtype=torch.uint8, device="cuda")
    big2 = torch.empty_like(big)
    copy_ms = median_ms(lambda: big2.copy_(big))
    copy_gbs = 2 * big.numel() / copy_ms / 1e6
    del big, big2
    rows_out.append({"what": "device-to-device copy", "GB/s": round(copy_gbs, 1)})
    for (m, n) in [(4096, 4096), (4096, 11008)]:
        for dtype in (BF16, F32):
            td = TORCH_DTYPE[dtype]
            w = torch.randn(m, n, device="cuda").to(td)
            g = torch.randn(m, n, device="cuda").to(td)
            p = torch.nn.Parameter(w.clone())
            p.grad = g.clone()
            opt = torch.optim.AdamW([p], lr=1e-3, fused=True)
            t_fused = median_ms(opt.step)
            row = {"shape": f"{m}x{n}", "dtype": ["f32", "f16", "bf16"][dtype], "torch fused AdamW ms": round(t_fused, 3)}
            for label, algorithm, q in [("mlorc adamw q=0", ADAMW, 0), ("mlorc adamw q=1", ADAMW, 1), ("mlorc lion", LION, 0)]:
                free0 = torch.cuda.mem_get_info()[0]
                h = ml.state(ml.config(algorithm, layout=FACTORED, power_iters=q), m, n, dtype, CUDA)
                free1 = torch.cuda.mem_get_info()[0]
                t = median_ms(lambda: ml.check(ml.step(h, w, g), "bench step"))
                free2 = torch.cuda.mem_get_info()[0]
                row[f"{label} ms"] = round(t, 3)
                row[f"{label} state+workspace MiB"] = round((free0 - free1) / 2**20, 2)
                row[f"{label} extra during step MiB"] = round((free1 - free2) / 2**20, 2)
                if label == "mlorc adamw q=0":
                    bytes_moved = 2 * g.element_size() * m * n + 2 * w.element_size() * m * n
                    row["mlorc q=0 GB/s"] = round(bytes_moved / t / 1e6, 1)
                ml.lib.mlorc_state_destroy(h)
            st = {}
            wf = w.clone()
            t_paper = median_ms(lambda: paper_step(wf, g.float() if dtype == F32 else g.float(), st), warmup=2, reps=5)
            row["torch paper impl ms"] = round(t_paper, 3)
            row["q=1 / fused"] = round(row["mlorc adamw q=1 ms"] / t_fused, 3)
            row["q=0 / fused"] = round(row["mlorc adamw q=0 ms"] / t_fused, 3)
            row["paper / q=1"] = round(t_paper / row["mlorc adamw q=1 ms"], 1)
            rows_out.append(row)
            print(json.dumps(row), flush=True)
            del opt, p, w, g


def profile(ml, rows_out):
    # Where a step's time goes: per-kernel device time (CUPTI through torch.profiler) of 10
    # steps on 4096x4096 bf16, and one step replayed from a CUDA graph (no launch overhead).
    from torch.profiler import profile as torch_profile, ProfilerActivity
    m, n = 4096, 4096
    w = torch.randn(m, n, device="cuda").bfloat16()
    g = torch.randn(m, n, device="cuda").bfloat16()
    for label, algorithm, q in [("adamw q=0", ADAMW, 0), ("adamw q=1", ADAMW, 1), ("lion", LION, 0)]:
        h = ml.state(ml.config(algorithm, layout=FACTORED, power_iters=q), m, n, BF16, CUDA)
        for _ in range(3):
            ml.check(ml.step(h, w, g), "warm-up step")
        torch.cuda.synchronize()
        with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                ml.check(ml.step(h, w, g), "profiled step")
            torch.cuda.synchronize()
        table = None
        for key in ("self_device_time_total", "self_cuda_time_total"):
            try:
                table = prof.key_averages().table(sort_by=key, row_limit=25)
                break
            except Exception:  # noqa: BLE001
                pass
        print(f"--- profile {label}, 10 steps, 4096x4096 bf16", flush=True)
        print(table, flush=True)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(side):
            with torch.cuda.graph(graph, stream=side):
                ml.check(ml.step(h, w, g, stream=side), "captured step")
        torch.cuda.synchronize()
        t_graph = median_ms(graph.replay)
        t_eager = median_ms(lambda: ml.check(ml.step(h, w, g), "eager step"))
        row = {"what": f"4096x4096 bf16 {label}", "eager ms": round(t_eager, 3), "graph replay ms": round(t_graph, 3)}
        rows_out.append(row)
        print(json.dumps(row), flush=True)
        ml.lib.mlorc_state_destroy(h)


def whole_model(ml, rows_out):
    # ~1B-parameter transformer shapes (d=2048, ffn=5632, 22 layers, vocab 32000), bf16.
    d, f, layers, vocab = 2048, 5632, 22, 32000
    shapes = [(vocab, d)] + [(d, d)] * 4 * layers + [(f, d), (f, d), (d, f)] * layers + [(d,)] * (2 * layers + 1)
    params = [torch.randn(*s, device="cuda", dtype=torch.bfloat16) for s in shapes]
    grads = [torch.randn_like(p) for p in params]
    total = sum(p.numel() for p in params)
    states = []
    for p in params:
        rows, cols = (p.shape[0], p.shape[1]) if p.dim() == 2 else (1, p.shape[0])
        states.append(ml.state(ml.config(ADAMW), rows, cols, BF16, CUDA))
    t_mlorc = median_ms(lambda: [ml.check(ml.step(h, p, g), "model step") for h, p, g in zip(states, params, grads)], warmup=2, reps=5)
    for h in states:
        ml.lib.mlorc_state_destroy(h)
    MLorcAdamW = mlorc_torch(ml.lib_path).MLorcAdamW
    tp = [torch.nn.Parameter(p) for p in params]
    for p, g in zip(tp, grads):
        p.grad = g
    opt = MLorcAdamW(tp, lr=1e-3)
    t_class = median_ms(opt.step, warmup=2, reps=5)
    del opt
    for p, g in zip(tp, grads):
        p.grad = g
    opt = torch.optim.AdamW(tp, lr=1e-3, fused=True)
    t_fused = median_ms(opt.step, warmup=2, reps=5)
    row = {"what": f"whole model, {len(shapes)} tensors, {total / 1e9:.2f}B params bf16", "mlorc adamw ms (C API per tensor)": round(t_mlorc, 2),
           "MLorcAdamW class ms": round(t_class, 2),
           "torch fused AdamW ms": round(t_fused, 2), "ratio": round(t_mlorc / t_fused, 3), "class ratio": round(t_class / t_fused, 3)}
    rows_out.append(row)
    print(json.dumps(row), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--out", default=".")
    ap.add_argument("--steps-only", action="store_true", help="a few 4096x4096 bf16 AdamW steps (for ncu)")
    ap.add_argument("--profile-only", action="store_true", help="only the per-kernel profile (to compare builds)")
    args = ap.parse_args()
    assert torch.cuda.is_available(), "torch sees no GPU"
    torch.cuda.init()
    print("device:", torch.cuda.get_device_name(), "torch", torch.__version__, "cuda", torch.version.cuda, flush=True)
    ml = Mlorc(load(args.lib), args.lib)
    t = time.time()
    h = ml.state(ml.config(ADAMW), 64, 64, F32, CUDA)  # compiles the kernels (NVRTC) once
    ml.lib.mlorc_state_destroy(h)
    print(f"first CUDA state (NVRTC compile + load): {time.time() - t:.1f}s", flush=True)
    with open("/proc/self/maps") as f:
        libs = sorted({l.split()[-1] for l in f if "nvrtc" in l or "libcuda" in l})
    print("loaded:", *libs, sep="\n  ", flush=True)
    if args.steps_only:
        w = torch.randn(4096, 4096, device="cuda").bfloat16()
        g = torch.randn(4096, 4096, device="cuda").bfloat16()
        h = ml.state(ml.config(ADAMW, layout=FACTORED), 4096, 4096, BF16, CUDA)
        for _ in range(4):
            ml.check(ml.step(h, w, g), "step")
        torch.cuda.synchronize()
        ml.lib.mlorc_state_destroy(h)
        return
    if args.profile_only:
        profile(ml, [])
        return
    if not args.bench:
        correctness(ml, args.quick)
    rows = []
    if args.bench:
        for stage in (benchmark, profile, whole_model):
            check(stage.__name__, lambda: stage(ml, rows))
            with open(os.path.join(args.out, "bench.json"), "w") as f:
                json.dump(rows, f, indent=1)
    failed = [r for r in RESULTS if not r[1]]
    print(f"{len(RESULTS) - len(failed)} passed, {len(failed)} failed", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
