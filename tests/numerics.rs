//! The CPU backend against the f64 reference of ALGORITHM.md on fresh random inputs, and the
//! oracles that hold whatever Ω is.

mod common;

use common::*;
use half::{bf16, f16};
use mlorc::{Algorithm, Config, Device, Dtype, LayoutRequest, State, StepOptions, TensorDesc};

fn desc(rows: usize, cols: usize, param: Dtype, grad: Dtype) -> TensorDesc {
    TensorDesc { rows, cols, param_dtype: param, grad_dtype: grad, device: Device::Cpu }
}

fn f32_desc(rows: usize, cols: usize) -> TensorDesc {
    desc(rows, cols, Dtype::F32, Dtype::F32)
}

fn factored(algorithm: Algorithm, rank: u32, oversampling: u32, power_iters: u32, seed: u64) -> Config {
    Config {
        layout: LayoutRequest::Factored,
        rank,
        oversampling,
        power_iters,
        seed,
        ..Config::defaults(algorithm)
    }
}

fn moments_of(state: &State) -> Vec<Mat> {
    let p = *state.plan();
    let names: &[[&str; 3]] = &[["exp_avg.u", "exp_avg.s", "exp_avg.v"], ["exp_avg_sq.u", "exp_avg_sq.s", "exp_avg_sq.v"]];
    (0..p.moments())
        .map(|mo| {
            let [u, s, v] = names[mo];
            product(state.buffer(u).unwrap(), state.buffer(s).unwrap(), state.buffer(v).unwrap(), p.rows, p.cols, p.rank)
        })
        .collect()
}

/// Each step of the library equals one f64 reference step taken from the library's own state.
fn check_against_reference(config: Config, m: usize, n: usize, steps: usize, seed: u64) {
    let mut rng = TestRng::new(seed);
    let mut state = State::new(&config, &f32_desc(m, n)).unwrap();
    let plan = *state.plan();
    let mut w = rng.normals_f32(m * n, 1.0);
    for t in 1..=steps as u64 {
        // A gradient with a decaying spectrum plus noise, so moments are not trivially low rank.
        let g = rng.normals_f32(m * n, 0.1 + 0.05 * t as f64);
        let lr = 1e-2;
        let old = moments_of(&state);
        let w_old: Vec<f64> = w.iter().map(|&x| x as f64).collect();
        let (w_ref, moments_ref) =
            mlorc_reference_step(&config, &w_old, &Mat::from_f32(m, n, &g), &old, t, lr, plan.rank, plan.sketch);
        state.step(&mut w, &g, &StepOptions::lr(lr)).unwrap();
        let w_new: Vec<f64> = w.iter().map(|&x| x as f64).collect();
        let change: Vec<f64> = w_ref.iter().zip(&w_old).map(|(a, b)| a - b).collect();
        let err = rel_err(&w_new, &w_ref, &change);
        assert!(err < 2e-4, "{config:?} {m}x{n} step {t}: weight error {err:e} of the step size");
        for (mo, (lib, reference)) in moments_of(&state).iter().zip(&moments_ref).enumerate() {
            let e = lib.sub(reference).frobenius() / reference.frobenius().max(1e-300);
            assert!(e < 1e-4, "{config:?} {m}x{n} step {t} moment {mo}: factor error {e:e}");
        }
        assert_eq!(state.step_count(), t);
    }
}

#[test]
fn adamw_steps_match_the_f64_reference() {
    // Rank 16 (kernels specialised for it) over several row blocks and a ragged last group.
    for (m, n, r, p, q, seed) in [(37, 53, 4, 0, 0, 1), (64, 20, 4, 2, 0, 2), (24, 300, 3, 0, 1, 3), (300, 9, 2, 3, 1, 4), (70, 300, 16, 0, 0, 7), (40, 300, 4, 0, 1, 9)] {
        check_against_reference(factored(Algorithm::AdamW, r, p, q, 100 + seed), m, n, 5, seed);
    }
}

#[test]
fn lion_steps_match_the_f64_reference() {
    for (m, n, r, p, q, seed) in [(41, 33, 4, 0, 0, 5), (16, 270, 2, 2, 1, 6), (50, 260, 16, 0, 0, 8), (33, 270, 4, 0, 1, 10)] {
        check_against_reference(factored(Algorithm::Lion, r, p, q, 200 + seed), m, n, 5, seed);
    }
}

/// Runs `steps` of the library and of dense f64 AdamW/Lion on the same gradients and returns the
/// weight error relative to the total change.
fn run_against_dense(config: Config, m: usize, n: usize, steps: usize, grads: &mut dyn FnMut(usize) -> Vec<f32>) -> f64 {
    let mut rng = TestRng::new(77);
    let mut w = rng.normals_f32(m * n, 1.0);
    let mut state = State::new(&config, &f32_desc(m, n)).unwrap();
    let mut reference = DenseReference::new(config, &w);
    let w0 = reference.w.clone();
    for t in 0..steps {
        let g = grads(t);
        let lr = 1e-2 * (1.0 - t as f64 / (2.0 * steps as f64)); // a schedule
        state.step(&mut w, &g, &StepOptions::lr(lr)).unwrap();
        reference.step(&g.iter().map(|&x| x as f64).collect::<Vec<_>>(), lr);
    }
    let w_new: Vec<f64> = w.iter().map(|&x| x as f64).collect();
    let change: Vec<f64> = reference.w.iter().zip(&w0).map(|(a, b)| a - b).collect();
    rel_err(&w_new, &reference.w, &change)
}

#[test]
fn rank_one_gradient_streams_equal_adamw_and_lion() {
    for algorithm in [Algorithm::AdamW, Algorithm::Lion] {
        for (m, n, r) in [(24, 17, 1), (40, 64, 4), (7, 90, 2)] {
            let mut rng = TestRng::new(m as u64 * 31 + n as u64);
            let b = rng.normals_f32(n, 1.0);
            let mut grads = |_t: usize| {
                let a = rng.normals_f32(m, 1.0);
                (0..m * n).map(|e| a[e / n] * b[e % n]).collect()
            };
            let config = factored(algorithm, r, 0, 0, 9);
            let err = run_against_dense(config, m, n, 30, &mut grads);
            assert!(err < 1e-4, "{algorithm:?} {m}x{n} r={r}: error {err:e}");
        }
    }
}

#[test]
fn full_rank_factored_equals_adamw_and_lion() {
    for algorithm in [Algorithm::AdamW, Algorithm::Lion] {
        for (m, n, r, q) in [(12, 7, 7, 0), (5, 40, 8, 1), (16, 16, 16, 0)] {
            let mut rng = TestRng::new(5 + m as u64);
            // |g| in [0.5, 1.5): V's entries stay within a small dynamic range, so storing its
            // exact factors in f32 (errors ~1e-7 of its largest entry) perturbs no entry of V by
            // more than ~1e-6 of itself. Gradients near 0 would make some entries of V tiny and
            // their f32 reconstruction, not the algorithm, the error.
            let mut grads = |_t: usize| {
                (0..m * n).map(|_| if rng.next_u64().is_multiple_of(2) { 1.0 } else { -1.0 } * (0.5 + rng.uniform() as f32)).collect()
            };
            let err = run_against_dense(factored(algorithm, r, 0, q, 3), m, n, 30, &mut grads);
            assert!(err < 1e-4, "{algorithm:?} {m}x{n} r={r}: error {err:e}");
        }
    }
}

#[test]
fn dense_layout_equals_adamw_and_lion() {
    for algorithm in [Algorithm::AdamW, Algorithm::Lion] {
        for bias_correction in [true, false] {
            let config = Config { layout: LayoutRequest::Dense, bias_correction, ..Config::defaults(algorithm) };
            let mut rng = TestRng::new(11);
            let mut grads = |_t: usize| rng.normals_f32(33 * 70, 1.0);
            let err = run_against_dense(config, 33, 70, 25, &mut grads);
            // f32 weights round by ~1e-7 per step: over 25 steps against a total change of about
            // 0.2 that is ~1e-5 of the change, so 1e-4 as for the factored oracles.
            assert!(err < 1e-4, "{algorithm:?}: error {err:e}");
        }
    }
}

/// Orthogonal n×n matrix from the QR of a Gaussian one.
fn random_orthogonal(rng: &mut TestRng, n: usize, k: usize) -> Mat {
    householder_q(&Mat { rows: n, cols: k, data: rng.normals(n * k, 1.0) })
}

#[test]
fn rsvd_error_is_near_the_optimal_rank_r_error() {
    let (m, n, r) = (120, 90, 4);
    let beta1 = Config::defaults(Algorithm::AdamW).beta1;
    // (oversampling, power iterations) → bound on error / optimal error, averaged over seeds.
    for (p, q, bound) in [(0, 0, 2.5), (0, 1, 1.25), (4, 0, 1.3), (4, 1, 1.02)] {
        let mut ratios = Vec::new();
        for seed in 0..5u64 {
            let mut rng = TestRng::new(1000 + seed);
            let left = random_orthogonal(&mut rng, m, n);
            let right = random_orthogonal(&mut rng, n, n);
            let sigma: Vec<f64> = (0..n).map(|i| 0.7f64.powi(i as i32)).collect();
            let mut g = Mat::zeros(m, n);
            for i in 0..m {
                for j in 0..n {
                    g.set(i, j, (0..n).map(|l| left.at(i, l) * sigma[l] * right.at(j, l)).sum());
                }
            }
            let g32: Vec<f32> = g.data.iter().map(|&x| x as f32).collect();
            let mut state = State::new(&factored(Algorithm::AdamW, r, p, q, seed), &f32_desc(m, n)).unwrap();
            let mut w = vec![0f32; m * n];
            state.step(&mut w, &g32, &StepOptions::lr(0.0)).unwrap();
            let approx = &moments_of(&state)[0];
            let target = Mat { rows: m, cols: n, data: g32.iter().map(|&x| (1.0 - beta1) * x as f64).collect() };
            let optimal = (1.0 - beta1) * sigma[r as usize..].iter().map(|s| s * s).sum::<f64>().sqrt();
            ratios.push(approx.sub(&target).frobenius() / optimal);
        }
        let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
        println!("p={p} q={q}: error/optimal = {mean:.3} {ratios:.3?}");
        assert!(mean >= 0.999 && mean < bound, "p={p} q={q}: error/optimal {mean} (bound {bound})");
    }
}

#[test]
fn degenerate_inputs_give_finite_documented_results() {
    for algorithm in [Algorithm::AdamW, Algorithm::Lion] {
        // Zero gradient: factors stay zero, weights only decay.
        let config = factored(algorithm, 4, 2, 1, 1);
        let mut state = State::new(&config, &f32_desc(20, 30)).unwrap();
        let mut w = vec![1f32; 600];
        for _ in 0..3 {
            state.step(&mut w, &vec![0f32; 600], &StepOptions::lr(0.1)).unwrap();
        }
        let decay = (1.0 - 0.1 * config.weight_decay).powi(3) as f32;
        assert!(w.iter().all(|&x| (x - decay).abs() < 1e-6), "{algorithm:?}: {}", w[0]);
        for name in ["exp_avg.u", "exp_avg.s", "exp_avg.v"] {
            assert!(state.buffer(name).unwrap().iter().all(|&x| x == 0.0));
        }
        // Thin shapes and ranks above min(m, n): clamped rank, finite results.
        for (m, n) in [(1, 50), (50, 1), (3, 5000), (2, 2)] {
            let config = factored(algorithm, 8, 4, 1, 2);
            let mut state = State::new(&config, &f32_desc(m, n)).unwrap();
            assert_eq!(state.plan().rank, m.min(n));
            let mut rng = TestRng::new(3);
            let mut w = rng.normals_f32(m * n, 1.0);
            for _ in 0..4 {
                let g = rng.normals_f32(m * n, 1.0);
                state.step(&mut w, &g, &StepOptions::lr(1e-2)).unwrap();
            }
            assert!(w.iter().all(|x| x.is_finite()));
            for spec in state.buffer_specs() {
                assert!(state.buffer(spec.name).unwrap().iter().all(|x| x.is_finite()), "{m}x{n} {}", spec.name);
            }
        }
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    for (algorithm, layout) in [(Algorithm::AdamW, LayoutRequest::Factored), (Algorithm::Lion, LayoutRequest::Factored), (Algorithm::AdamW, LayoutRequest::Dense)] {
        let config = Config { layout, power_iters: 1, oversampling: 2, ..Config::defaults(algorithm) };
        // Above the size that the library steps on the calling thread (64 Ki elements).
        let (m, n) = (131, 600);
        let steps = || {
            let mut rng = TestRng::new(42);
            let mut state = State::new(&config, &desc(m, n, Dtype::Bf16, Dtype::F32)).unwrap();
            let mut w: Vec<bf16> = rng.normals_f32(m * n, 1.0).into_iter().map(bf16::from_f32).collect();
            for _ in 0..3 {
                let g = rng.normals_f32(m * n, 1.0);
                state.step(&mut w, &g, &StepOptions::lr(1e-2)).unwrap();
            }
            let buffers: Vec<Vec<f32>> = state.buffer_specs().iter().map(|s| state.buffer(s.name).unwrap().to_vec()).collect();
            (w.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), buffers.concat().iter().map(|x| x.to_bits()).collect::<Vec<_>>())
        };
        // Inside a caller's rayon pool of `threads` (the steps run on that pool).
        let run = |threads: usize| rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(steps);
        let one = run(1);
        for threads in [2, 3, 4] {
            assert!(run(threads) == one, "{algorithm:?} {layout:?}: {threads} threads differ from 1");
        }
        // From a thread outside any pool, as a trainer calls: the library's own pool, whose
        // threads run each step's passes as a team.
        assert!(steps() == one, "{algorithm:?} {layout:?}: the library's pool differs from 1 thread");
    }
}

/// Half-precision parameters: each step equals the f64 reference step from the same state,
/// rounded to the parameter dtype (nearest even), or to one of its two neighbours (stochastic).
fn check_half<P: mlorc::state::Element + Copy>(to: fn(f32) -> P, from: fn(P) -> f32, dtype: Dtype, stochastic: bool) {
    let (m, n) = (30, 45);
    let config = Config { stochastic_rounding: stochastic, ..factored(Algorithm::AdamW, 3, 0, 0, 8) };
    let mut state = State::new(&config, &desc(m, n, dtype, dtype)).unwrap();
    let plan = *state.plan();
    let mut rng = TestRng::new(dtype as u64 + 17);
    let mut w: Vec<P> = rng.normals_f32(m * n, 1.0).into_iter().map(to).collect();
    let mut rounded_up = 0usize;
    let mut between = 0usize;
    for t in 1..=4u64 {
        let g: Vec<P> = rng.normals_f32(m * n, 0.5).into_iter().map(to).collect();
        let g64 = Mat { rows: m, cols: n, data: g.iter().map(|&x| from(x) as f64).collect() };
        let w_old: Vec<f64> = w.iter().map(|&x| from(x) as f64).collect();
        let (w_ref, _) = mlorc_reference_step(&config, &w_old, &g64, &moments_of(&state), t, 1e-2, plan.rank, plan.sketch);
        state.step(&mut w, &g, &StepOptions::lr(1e-2)).unwrap();
        for (e, (&lib, &reference)) in w.iter().zip(&w_ref).enumerate() {
            let lib = from(lib) as f64;
            let nearest = from(to(reference as f32)) as f64;
            if stochastic {
                // Either neighbour of the reference value (f32 noise of the step allowed).
                let ulp = (from(to(nearest as f32)) as f64).abs() * if dtype == Dtype::Bf16 { 1.0 / 128.0 } else { 1.0 / 1024.0 };
                assert!((lib - reference).abs() <= ulp * 1.01 + 1e-6, "t={t} e={e}: {lib} vs {reference}");
                if (lib - reference).abs() > 1e-7 {
                    between += 1;
                    rounded_up += (lib > reference) as usize;
                }
            } else {
                let tol = (reference - w_old[e]).abs() * 1e-3;
                let ok = lib == nearest || (lib - reference).abs() <= (nearest - reference).abs() + tol;
                assert!(ok, "t={t} e={e}: {lib} vs reference {reference} (nearest {nearest})");
            }
        }
    }
    if stochastic {
        let fraction = rounded_up as f64 / between as f64;
        assert!(between > 1000 && (0.4..0.6).contains(&fraction), "rounded up {rounded_up} of {between}");
    }
}

#[test]
fn half_precision_parameters_follow_the_reference() {
    check_half::<bf16>(bf16::from_f32, bf16::to_f32, Dtype::Bf16, false);
    check_half::<f16>(f16::from_f32, f16::to_f32, Dtype::F16, false);
    check_half::<bf16>(bf16::from_f32, bf16::to_f32, Dtype::Bf16, true);
    check_half::<f16>(f16::from_f32, f16::to_f32, Dtype::F16, true);
}

/// A bf16 step does the f32 step's arithmetic on the widened values and rounds the weights to
/// nearest even once: from bf16-representable inputs its weights are bitwise the f32 step's
/// rounded, and its moments bitwise the f32 step's. Widths on and off the 8-lane grid, every
/// specialised rank and a run-time one, bf16 or f32 gradients, one and several threads.
#[test]
fn bf16_steps_are_the_f32_step_rounded() {
    let bf = |x: f32| bf16::from_f32(x).to_f32();
    let shapes = [(12, 64), (9, 45), (40, 264), (300, 2056), (5, 8)];
    let settings = [(Algorithm::AdamW, 4, 0), (Algorithm::AdamW, 1, 0), (Algorithm::AdamW, 2, 0), (Algorithm::AdamW, 8, 0),
        (Algorithm::AdamW, 3, 2), (Algorithm::Lion, 4, 0), (Algorithm::Lion, 2, 3)];
    for (case, (&(m, n), &(algorithm, rank, oversampling))) in
        shapes.iter().flat_map(|s| settings.iter().map(move |c| (s, c))).enumerate()
    {
        for grad_dtype in [Dtype::Bf16, Dtype::F32] {
            // Parallel passes start above 64 Ki elements (300x2056 here).
            let pool = rayon::ThreadPoolBuilder::new().num_threads(if case % 2 == 0 { 1 } else { 3 }).build().unwrap();
            let config = factored(algorithm, rank, oversampling, (case % 3 == 0) as u32, 40 + case as u64);
            let mut exact = State::new(&config, &f32_desc(m, n)).unwrap();
            let mut half = State::new(&config, &desc(m, n, Dtype::Bf16, grad_dtype)).unwrap();
            let mut rng = TestRng::new(case as u64 + 101);
            let mut w: Vec<bf16> = rng.normals_f32(m * n, 1.0).into_iter().map(bf16::from_f32).collect();
            for t in 1..=3 {
                let g: Vec<f32> = rng.normals_f32(m * n, 0.3).into_iter().map(bf).collect();
                let mut w32: Vec<f32> = w.iter().map(|x| x.to_f32()).collect();
                pool.install(|| {
                    exact.step(&mut w32, &g, &StepOptions::lr(1e-2)).unwrap();
                    if grad_dtype == Dtype::Bf16 {
                        let g16: Vec<bf16> = g.iter().copied().map(bf16::from_f32).collect();
                        half.step(&mut w, &g16, &StepOptions::lr(1e-2)).unwrap();
                    } else {
                        half.step(&mut w, &g, &StepOptions::lr(1e-2)).unwrap();
                    }
                });
                let what = format!("{m}x{n} {algorithm:?} r={rank} p={oversampling} grad {grad_dtype:?} step {t}");
                for (e, (h, x)) in w.iter().zip(&w32).enumerate() {
                    assert_eq!(h.to_bits(), bf16::from_f32(*x).to_bits(), "{what}: weight {e}");
                }
                for name in ["exp_avg.u", "exp_avg.s", "exp_avg.v", "exp_avg_sq.u", "exp_avg_sq.s", "exp_avg_sq.v"] {
                    if let (Ok(a), Ok(b)) = (exact.buffer(name), half.buffer(name)) {
                        assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "{what}: {name}");
                    }
                }
            }
        }
    }
}

#[test]
fn grad_scale_and_found_inf() {
    let config = factored(Algorithm::AdamW, 2, 0, 0, 4);
    let (m, n) = (10, 12);
    let mut rng = TestRng::new(5);
    let w0 = rng.normals_f32(m * n, 1.0);
    let g = rng.normals_f32(m * n, 1.0);
    let scaled: Vec<f32> = g.iter().map(|x| x * 1024.0).collect();
    let mut a = State::new(&config, &f32_desc(m, n)).unwrap();
    let mut b = State::new(&config, &f32_desc(m, n)).unwrap();
    let (mut wa, mut wb) = (w0.clone(), w0.clone());
    a.step(&mut wa, &g, &StepOptions::lr(1e-2)).unwrap();
    b.step(&mut wb, &scaled, &StepOptions { grad_scale: Some(1024.0), ..StepOptions::lr(1e-2) }).unwrap();
    assert_eq!(wa, wb, "a power-of-two scale divides out exactly");
    let before: Vec<f32> = b.buffer("exp_avg.u").unwrap().to_vec();
    let w_before = wb.clone();
    b.step(&mut wb, &scaled, &StepOptions { found_inf: true, ..StepOptions::lr(1e-2) }).unwrap();
    assert_eq!(wb, w_before);
    assert_eq!(b.buffer("exp_avg.u").unwrap(), &before[..]);
    assert_eq!(b.step_count(), 1);
    let bad = b.step(&mut wb, &g, &StepOptions { grad_scale: Some(f32::NAN), ..StepOptions::lr(1e-2) });
    assert!(bad.is_err());
    assert!(b.step(&mut wb, &g, &StepOptions::lr(f64::NAN)).is_err());
    assert_eq!((wb, b.step_count()), (w_before, 1));
}
