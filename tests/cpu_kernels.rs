//! Every build of the CPU kernels (portable, AVX2, AVX2 with AVX-512VL's registers) gives
//! bitwise the same weights and state: the builds differ in instruction selection and register
//! allocation only. One test in this binary, since the cap it sets is process-wide.

mod common;

use common::TestRng;
use half::{bf16, f16};
use mlorc::cpu_kernels::{self, CpuKernels};
use mlorc::state::Element;
use mlorc::{Algorithm, Config, Device, LayoutRequest, State, StepOptions, TensorDesc};

/// Weights (as bits) and every state buffer (as bits) after three steps.
type Outcome = (Vec<u32>, Vec<Vec<u32>>);

/// Widening a bf16 or f16 weight is exact and one-to-one, so its f32 bits stand for its own.
fn run<P: Element, G: Element>(config: &Config, m: usize, n: usize, to_p: fn(f32) -> P, from_p: fn(P) -> f32, to_g: fn(f32) -> G, scale: Option<f32>) -> Outcome {
    let desc = TensorDesc { rows: m, cols: n, param_dtype: P::DTYPE, grad_dtype: G::DTYPE, device: Device::Cpu };
    let mut state = State::new(config, &desc).unwrap();
    let mut rng = TestRng::new(config.seed ^ (m * n) as u64);
    let mut w: Vec<P> = rng.normals_f32(m * n, 1.0).into_iter().map(to_p).collect();
    for _ in 0..3 {
        let g: Vec<G> = rng.normals_f32(m * n, 0.3).into_iter().map(to_g).collect();
        state.step(&mut w, &g, &StepOptions { grad_scale: scale, ..StepOptions::lr(1e-2) }).unwrap();
    }
    let weights: Vec<f32> = w.into_iter().map(from_p).collect();
    assert!(weights.iter().all(|x| x.is_finite()), "{m}x{n} {config:?}: weights not finite");
    let buffers = state.buffer_specs().iter().map(|spec| state.buffer(spec.name).unwrap().iter().map(|x| x.to_bits()).collect()).collect();
    (weights.iter().map(|x| x.to_bits()).collect(), buffers)
}

/// Outcomes of every case, in a fixed order.
fn all_cases() -> Vec<(String, Outcome)> {
    let mut out = Vec::new();
    // 300x260 passes run on the pool (above 64 Ki elements); 37x45 and 1x1000 are off the
    // 8-lane grid or a single row; 131x264 (an odd number of rows and of column groups) and
    // 1x1000 read and write bf16 tensors where they lie.
    let shapes = [(300, 260), (37, 45), (1, 1000), (131, 264)];
    let settings = [
        (Algorithm::AdamW, LayoutRequest::Factored, 4, 0, 0),
        (Algorithm::AdamW, LayoutRequest::Factored, 3, 2, 1),
        (Algorithm::AdamW, LayoutRequest::Factored, 4, 0, 1),
        (Algorithm::AdamW, LayoutRequest::Factored, 16, 0, 0),
        (Algorithm::Lion, LayoutRequest::Factored, 4, 0, 0),
        (Algorithm::Lion, LayoutRequest::Factored, 2, 3, 1),
        (Algorithm::Lion, LayoutRequest::Factored, 4, 0, 1),
        (Algorithm::AdamW, LayoutRequest::Dense, 4, 0, 0),
        (Algorithm::Lion, LayoutRequest::Dense, 4, 0, 0),
    ];
    for (case, (&(m, n), &(algorithm, layout, rank, oversampling, power_iters))) in
        shapes.iter().flat_map(|s| settings.iter().map(move |c| (s, c))).enumerate()
    {
        let config = Config { layout, rank, oversampling, power_iters, seed: 7 + case as u64, ..Config::defaults(algorithm) };
        let sr = Config { stochastic_rounding: true, ..config };
        let what = format!("{m}x{n} {algorithm:?} {layout:?} r={rank} p={oversampling} q={power_iters}");
        let same = |x: f32| x;
        out.push((format!("{what} f32"), run::<f32, f32>(&config, m, n, same, same, same, None)));
        out.push((format!("{what} f32 scaled"), run::<f32, f32>(&config, m, n, same, same, same, Some(512.0))));
        out.push((format!("{what} bf16"), run::<bf16, bf16>(&config, m, n, bf16::from_f32, bf16::to_f32, bf16::from_f32, None)));
        out.push((format!("{what} bf16 param, f32 grad"), run::<bf16, f32>(&config, m, n, bf16::from_f32, bf16::to_f32, same, None)));
        out.push((format!("{what} bf16 stochastic"), run::<bf16, bf16>(&sr, m, n, bf16::from_f32, bf16::to_f32, bf16::from_f32, None)));
        out.push((format!("{what} f16"), run::<f16, f16>(&config, m, n, f16::from_f32, f16::to_f32, f16::from_f32, None)));
    }
    out
}

#[test]
fn every_kernel_build_gives_the_same_bits() {
    let widest = CpuKernels::supported();
    let builds: Vec<CpuKernels> = [CpuKernels::Portable, CpuKernels::Avx2, CpuKernels::Avx512Vl].into_iter().filter(|&b| b <= widest).collect();
    let mut reference: Option<(CpuKernels, Vec<(String, Outcome)>)> = None;
    for build in builds {
        assert_eq!(cpu_kernels::limit(build), build, "the cap selects the build");
        assert_eq!(cpu_kernels::active(), build);
        let outcomes = all_cases();
        match &reference {
            None => reference = Some((build, outcomes)),
            Some((first, expected)) => {
                for ((what, got), (_, want)) in outcomes.iter().zip(expected) {
                    assert!(got == want, "{what}: {build:?} differs from {first:?}");
                }
            }
        }
    }
    cpu_kernels::limit(CpuKernels::Avx512Vl);
    if widest < CpuKernels::Avx512Vl {
        eprintln!("SKIP part: this CPU runs builds up to {widest:?} only");
    }
}
