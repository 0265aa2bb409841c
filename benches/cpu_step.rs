//! CPU step time of MLorc-AdamW (r = 4) against this library's DENSE AdamW on the same matrix,
//! in the same run, with the state bytes of each. Not a test: run `make bench`.
//!
//! Options (environment): MLORC_BENCH_SHAPES="1024x1024,4096x4096,4096x11008",
//! MLORC_BENCH_REPS (timed steps per case, default 7), MLORC_BENCH_ONLY=dense|q0|q1 (one case,
//! for profiling), MLORC_BENCH_RANK (MLorc's rank, default 4), MLORC_BENCH_DTYPE=bf16 (bf16
//! param and grad instead of f32), MLORC_BENCH_GRAD=gaussian (a Gaussian gradient instead of the
//! default fixed pattern), MLORC_NUM_THREADS. MLORC_BENCH_MODEL=DxL instead times one
//! `step_many` over the matrices of an L-block transformer of width D (per block 3D×D, D×D,
//! 4D×D, D×4D; Gaussian gradients): a model's step, made of narrow matrices; there
//! MLORC_BENCH_ONLY may also be lion (MLorc-Lion). MLORC_BENCH_PAIRED=N instead times dense,
//! q=0 and q=1 in N rounds that alternate them (`paired_times`), each step warm (back to back)
//! and cold (after the caches are evicted, as a training step finds its data), on the wall
//! clock, and reports their ratios per round: the way to compare them on a machine whose speed
//! drifts.
//!
//! Built with `--features pass-timing`, it also prints the median wall time of each pass of
//! the MLorc steps (where a step's time goes) after the table.
//!
//! The gradient matters to MLorc-AdamW's non-negativity sweep, which skips row chunks of Ṽ that
//! provably hold no negative entry: the pattern's rank-4 Ṽ has negatives in 12% of its entries
//! and almost no chunk can be skipped (the sweep's worst case); a Gaussian gradient's Ṽ is
//! dominated by its mean and nearly every chunk is skipped, as in most steps of a real
//! fine-tuning run (`benches/python/negative_rate.py`).

use std::time::Instant;

use mlorc::batch::BatchItem;
use mlorc::state::{LearningRate, StepRequest};
use mlorc::{Algorithm, Config, Device, LayoutRequest, State, StepOptions, TensorDesc};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Seconds on the wall clock, or of this thread's CPU time with MLORC_BENCH_CLOCK=thread (with
/// MLORC_NUM_THREADS=1 the steps run on the calling pool thread: a measure that other load on
/// the machine disturbs less, for comparing kernel versions).
fn now() -> f64 {
    if std::env::var("MLORC_BENCH_CLOCK").as_deref() == Ok("thread") {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: a valid out-pointer for clock_gettime.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
    } else {
        use std::sync::OnceLock;
        static START: OnceLock<Instant> = OnceLock::new();
        START.get_or_init(Instant::now).elapsed().as_secs_f64()
    }
}

/// Median step time, state bytes, and the median time of each pass (`pass-timing` builds).
type Timed = (f64, usize, Vec<(&'static str, f64)>);

fn time_steps(config: &Config, m: usize, n: usize, reps: usize) -> Timed {
    if std::env::var("MLORC_BENCH_DTYPE").as_deref() == Ok("bf16") {
        time_steps_of::<half::bf16>(config, m, n, reps)
    } else {
        time_steps_of::<f32>(config, m, n, reps)
    }
}

/// The passes each step recorded since the last call (none without `pass-timing`).
fn recorded_passes() -> Vec<(&'static str, f64)> {
    #[cfg(feature = "pass-timing")]
    return mlorc::pass_timing::take().into_iter().map(|(name, d)| (name, d.as_secs_f64())).collect();
    #[cfg(not(feature = "pass-timing"))]
    Vec::new()
}

/// Per pass name, in the order of the first step, the median over steps of its summed time.
fn pass_medians(steps: &[Vec<(&'static str, f64)>]) -> Vec<(&'static str, f64)> {
    let Some(first) = steps.first() else { return Vec::new() };
    let mut names: Vec<&'static str> = Vec::new();
    for (name, _) in first {
        if !names.contains(name) {
            names.push(name);
        }
    }
    names
        .into_iter()
        .map(|name| (name, median(steps.iter().map(|s| s.iter().filter(|(n, _)| *n == name).map(|(_, t)| t).sum()).collect())))
        .collect()
}

/// Parameter and gradient element types the benchmark can time.
trait BenchElement: mlorc::state::Element + Send + Sync {
    fn of(x: f32) -> Self;
}
impl BenchElement for f32 {
    fn of(x: f32) -> f32 {
        x
    }
}
impl BenchElement for half::bf16 {
    fn of(x: f32) -> half::bf16 {
        half::bf16::from_f32(x)
    }
}

/// Seed of the gradients' normals.
const GRAD_SEED: u64 = 0x853c_49e6_748f_ea9b;

/// `len` normals of standard deviation `sigma` (Box–Muller on a 64-bit LCG started at `seed`).
fn gaussian(len: usize, sigma: f32, seed: u64) -> Vec<f32> {
    let mut state = seed;
    let mut uniform = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..len)
        .map(|_| {
            let (u, v) = (uniform(), uniform());
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32 * sigma
        })
        .collect()
}

/// Two warm-up calls of `step` (page faults, pool start), then the median time of `reps`
/// calls and each pass's median over them.
fn time_calls(reps: usize, mut step: impl FnMut()) -> (f64, Vec<(&'static str, f64)>) {
    for _ in 0..2 {
        step();
    }
    recorded_passes(); // drops the warm-up steps' records
    let (times, passes): (Vec<f64>, Vec<_>) = (0..reps)
        .map(|_| {
            let t = now();
            step();
            (now() - t, recorded_passes())
        })
        .unzip();
    (median(times), pass_medians(&passes))
}

/// An m×n matrix's weights and gradient: the fixed pattern, or with MLORC_BENCH_GRAD=gaussian
/// Gaussian values.
fn bench_tensors<E: BenchElement>(m: usize, n: usize) -> (Vec<E>, Vec<E>) {
    let w: Vec<E> = (0..m * n).map(|i| E::of(((i * 7919) % 1000) as f32 * 1e-3 - 0.5)).collect();
    let g: Vec<E> = if std::env::var("MLORC_BENCH_GRAD").as_deref() == Ok("gaussian") {
        gaussian(m * n, 0.03, GRAD_SEED).into_iter().map(E::of).collect()
    } else {
        (0..m * n).map(|i| E::of(((i * 104729) % 2001) as f32 * 1e-4 - 0.1)).collect()
    };
    (w, g)
}

/// A CPU m×n tensor of E's dtype, parameter and gradient.
fn bench_desc<E: BenchElement>(m: usize, n: usize) -> TensorDesc {
    TensorDesc { rows: m, cols: n, param_dtype: E::DTYPE, grad_dtype: E::DTYPE, device: Device::Cpu }
}

/// "MxN" as (m, n).
fn parse_shape(shape: &str) -> (usize, usize) {
    let (m, n) = shape.split_once('x').expect("shape as MxN");
    (m.trim().parse().expect("rows"), n.trim().parse().expect("cols"))
}

/// The AdamW cases every mode times, as (MLORC_BENCH_ONLY key, name, config): the library's
/// DENSE AdamW and MLorc-AdamW at MLORC_BENCH_RANK (default 4) with q = 0 and q = 1.
fn adamw_cases() -> [(&'static str, &'static str, Config); 3] {
    let rank = std::env::var("MLORC_BENCH_RANK").ok().and_then(|v| v.parse().ok()).unwrap_or(4);
    let q0 = Config { layout: LayoutRequest::Factored, rank, ..Config::defaults(Algorithm::AdamW) };
    [
        ("dense", "dense AdamW", Config { layout: LayoutRequest::Dense, ..Config::defaults(Algorithm::AdamW) }),
        ("q0", "MLorc-AdamW q=0", q0),
        ("q1", "MLorc-AdamW q=1", Config { power_iters: 1, ..q0 }),
    ]
}

fn time_steps_of<E: BenchElement>(config: &Config, m: usize, n: usize, reps: usize) -> Timed {
    let mut state = State::new(config, &bench_desc::<E>(m, n)).unwrap();
    let (mut w, g) = bench_tensors::<E>(m, n);
    let opts = StepOptions::lr(1e-4);
    // Stepped from this thread, as a trainer calls the library (each step hands its work to
    // the library's pool and waits), except with MLORC_BENCH_CLOCK=thread: that clock only
    // sees work done on this thread, so the steps then run on a pool thread.
    let mut run = || {
        let (time, passes) = time_calls(reps, || state.step(&mut w, &g, &opts).unwrap());
        (time, state.memory_bytes(), passes)
    };
    if std::env::var("MLORC_BENCH_CLOCK").as_deref() == Ok("thread") {
        mlorc::run_on_pool(run)
    } else {
        run()
    }
}

/// Reads 128 MiB (four times the last-level cache of the machines in BENCHMARKS.md; a sum the
/// compiler must keep), so that the next step finds none of its data in any cache.
fn evict_caches(buffer: &[u64]) {
    std::hint::black_box(buffer.iter().fold(0u64, |sum, &x| sum.wrapping_add(x)));
}

/// The q-th quantile (0..=1) of sorted values, the nearest rank.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Step times of each case over `rounds` rounds, warm and cold, all on the same weights and
/// gradient: every round takes the cases in
/// an order drawn from the round's number and, for each, makes one untimed step, one timed step
/// (warm: its data where that step left it, in cache where it fits), then evicts the caches and
/// times one more (cold). Alternating within a round, the cases see the same host: a shared
/// machine's speed drifts by up to 2× within minutes (BENCHMARKS.md).
fn paired_times<E: BenchElement>(cases: &[Config], m: usize, n: usize, rounds: usize) -> Vec<(Vec<f64>, Vec<f64>)> {
    let desc = bench_desc::<E>(m, n);
    // One weight buffer for every case: where an allocation lands changes how fast it streams
    // (up to 1.8× on the KVM guest of BENCHMARKS.md §1), and no case's time depends on the
    // weights' values.
    let (mut w, g) = bench_tensors::<E>(m, n);
    let mut states: Vec<State> = cases.iter().map(|config| State::new(config, &desc).unwrap()).collect();
    let buffer = vec![1u64; 16 << 20]; // 128 MiB, written: a never-written buffer would read one zero page
    let opts = StepOptions::lr(1e-4);
    let mut times = vec![(Vec::new(), Vec::new()); cases.len()];
    let mut order: Vec<usize> = (0..cases.len()).collect();
    for round in 0..rounds {
        // Fisher–Yates on an LCG seeded by the round: no case keeps one predecessor.
        let mut seed = (round as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for i in (1..order.len()).rev() {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            order.swap(i, (seed >> 33) as usize % (i + 1));
        }
        for &c in &order {
            let state = &mut states[c];
            let mut timed = || {
                let t = Instant::now();
                state.step(&mut w, &g, &opts).unwrap();
                t.elapsed().as_secs_f64()
            };
            timed();
            times[c].0.push(timed());
            evict_caches(&buffer);
            times[c].1.push(timed());
            recorded_passes(); // pass records are not reported in this mode
        }
    }
    times
}

/// MLORC_BENCH_PAIRED=N: the dense, q=0 and q=1 cases of each shape in N paired rounds
/// (`paired_times`); per case the median step and the median over rounds of
/// its ratio to the same round's dense step, warm and cold.
fn main_paired(shapes: &str, rounds: usize) {
    let threads = mlorc::run_on_pool(rayon::current_num_threads);
    let bf16 = std::env::var("MLORC_BENCH_DTYPE").as_deref() == Ok("bf16");
    let grad = std::env::var("MLORC_BENCH_GRAD").unwrap_or_else(|_| "pattern".into());
    let cases = adamw_cases();
    let rank = cases[1].2.rank;
    println!(
        "Paired rounds: {rounds} rounds, {} param and grad ({grad} gradient), {threads} threads, rank {rank}; per round and case, in a random order: \
         one untimed step, a timed step (warm), a read of 128 MiB, a timed step (cold: from DRAM, as between the backward passes of training)",
        if bf16 { "bf16" } else { "f32" }
    );
    println!("| shape | case | warm ms | warm / dense: median (quartiles) | cold ms | cold / dense: median (quartiles) |");
    println!("|---|---|---|---|---|---|");
    let configs: Vec<Config> = cases.iter().map(|(_, _, c)| *c).collect();
    for shape in shapes.split(',') {
        let (m, n) = parse_shape(shape);
        let times = if bf16 { paired_times::<half::bf16>(&configs, m, n, rounds) } else { paired_times::<f32>(&configs, m, n, rounds) };
        let cell = |ts: &[f64], dense: &[f64]| {
            let mut ratios: Vec<f64> = ts.iter().zip(dense).map(|(t, d)| t / d).collect();
            ratios.sort_by(f64::total_cmp);
            format!(
                "{:.3} | {:.2} ({:.2}–{:.2})",
                median(ts.to_vec()) * 1e3,
                quantile(&ratios, 0.5),
                quantile(&ratios, 0.25),
                quantile(&ratios, 0.75)
            )
        };
        for ((_, name, _), (warm, cold)) in cases.iter().zip(&times) {
            println!("| {m}x{n} | {name} | {} | {} |", cell(warm, &times[0].0), cell(cold, &times[0].1));
        }
    }
}

/// The matrices of a `blocks`-block transformer of width `d`, as `bench_model_step.py` builds.
fn model_shapes(d: usize, blocks: usize) -> Vec<(usize, usize)> {
    (0..blocks).flat_map(|_| [(3 * d, d), (d, d), (4 * d, d), (d, 4 * d)]).collect()
}

/// Median wall time of one `step_many` over every matrix of the model, and the per-pass sums
/// over its tensors (thread time, `pass-timing` builds).
fn time_model(config: &Config, shapes: &[(usize, usize)], reps: usize) -> Timed {
    let mut tensors: Vec<(State, Vec<f32>, Vec<f32>)> = shapes
        .iter()
        .map(|&(m, n)| {
            let desc = TensorDesc { rows: m, cols: n, param_dtype: mlorc::Dtype::F32, grad_dtype: mlorc::Dtype::F32, device: Device::Cpu };
            // Weights from their own seed: from the gradient's they would be the gradient / 1.5.
            let w = gaussian(m * n, 0.02, !GRAD_SEED);
            let g = gaussian(m * n, 0.03, GRAD_SEED);
            (State::new(config, &desc).unwrap(), w, g)
        })
        .collect();
    let step = || {
        let mut items: Vec<BatchItem> = tensors
            .iter_mut()
            .map(|(state, w, g)| BatchItem {
                state,
                request: StepRequest {
                    param: w.as_mut_ptr() as *mut u8,
                    grad: g.as_ptr() as *const u8,
                    lr: LearningRate::Value(1e-4),
                    grad_scale: std::ptr::null(),
                    found_inf: std::ptr::null(),
                    stream: std::ptr::null_mut(),
                },
            })
            .collect();
        // SAFETY: every request points at its own tensor's f32 param and grad of the state's size.
        unsafe { mlorc::batch::step_many(&mut items) }.unwrap();
    };
    let (time, passes) = time_calls(reps, step);
    let bytes = tensors.iter().map(|(state, _, _)| state.memory_bytes()).sum();
    (time, bytes, passes)
}

fn main_model(spec: &str) {
    let (d, blocks) = parse_shape(spec);
    let shapes = model_shapes(d, blocks);
    let reps: usize = std::env::var("MLORC_BENCH_REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(15);
    let threads = mlorc::run_on_pool(rayon::current_num_threads);
    let elements: usize = shapes.iter().map(|(m, n)| m * n).sum();
    println!(
        "Model step (step_many), {} matrices of a d={d} transformer, {:.1} M elements, f32, Gaussian gradients, {threads} threads, median of {reps}",
        shapes.len(),
        elements as f64 / 1e6
    );
    println!("| case | ms | state MB | ns per element |");
    println!("|---|---|---|---|");
    let [dense, q0, q1] = adamw_cases();
    let lion = ("lion", "MLorc-Lion", Config { layout: LayoutRequest::Factored, rank: q0.2.rank, ..Config::defaults(Algorithm::Lion) });
    let cases = [dense, q0, q1, lion];
    let only = std::env::var("MLORC_BENCH_ONLY").unwrap_or_default();
    let mut breakdowns = Vec::new();
    for (key, name, config) in cases {
        if !(only.is_empty() || only == key) {
            continue;
        }
        let (time, bytes, passes) = time_model(&config, &shapes, reps);
        println!("| {name} | {:.2} | {:.3} | {:.3} |", time * 1e3, bytes as f64 / 1e6, time * 1e9 / elements as f64);
        if !passes.is_empty() {
            let parts: Vec<String> = passes.iter().map(|(pass, t)| format!("{pass} {:.3}", t * 1e3)).collect();
            breakdowns.push(format!("- {name} ({:.2} ms): {} ms", time * 1e3, parts.join(", ")));
        }
    }
    if !breakdowns.is_empty() {
        // Each tensor's passes run on one thread, so these sums are thread-busy time, about
        // threads × the step.
        println!("\nEach pass's median time summed over the model's tensors (pass-timing build):");
        breakdowns.iter().for_each(|line| println!("{line}"));
    }
}

fn main() {
    if let Ok(spec) = std::env::var("MLORC_BENCH_MODEL") {
        return main_model(&spec);
    }
    let shapes = std::env::var("MLORC_BENCH_SHAPES").unwrap_or_else(|_| "1024x1024,4096x4096,4096x11008".into());
    if let Some(rounds) = std::env::var("MLORC_BENCH_PAIRED").ok().and_then(|v| v.parse().ok()).filter(|&r: &usize| r > 0) {
        return main_paired(&shapes, rounds);
    }
    let reps: usize = std::env::var("MLORC_BENCH_REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(7);
    let threads = mlorc::run_on_pool(rayon::current_num_threads);
    let dtype = std::env::var("MLORC_BENCH_DTYPE").unwrap_or_else(|_| "f32".into());
    let grad = std::env::var("MLORC_BENCH_GRAD").unwrap_or_else(|_| "pattern".into());
    println!("CPU step, {dtype} param and grad ({grad} gradient), {threads} threads, median of {reps} steps after 2 warm-up steps");
    println!(
        "| shape | dense AdamW ms | MLorc q=0 ms | ratio | MLorc q=1 ms | ratio | dense state MB | MLorc state MB | state ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut breakdowns: Vec<String> = Vec::new();
    let [dense, q0, q1] = adamw_cases();
    let only = std::env::var("MLORC_BENCH_ONLY").unwrap_or_default();
    for shape in shapes.split(',') {
        let (m, n) = parse_shape(shape);
        let mut run = |(name, _, config): &(&str, &str, Config)| {
            if !(only.is_empty() || only == *name) {
                return (f64::NAN, 0);
            }
            let (time, bytes, passes) = time_steps(config, m, n, reps);
            if !passes.is_empty() {
                let parts: Vec<String> = passes.iter().map(|(pass, t)| format!("{pass} {:.3}", t * 1e3)).collect();
                breakdowns.push(format!("- {m}x{n} {name} ({:.2} ms): {} ms", time * 1e3, parts.join(", ")));
            }
            (time, bytes)
        };
        let (td, bd) = run(&dense);
        let (t0, b0) = run(&q0);
        let (t1, _) = run(&q1);
        println!(
            "| {m}x{n} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {:.3} | {:.3}% |",
            td * 1e3,
            t0 * 1e3,
            t0 / td,
            t1 * 1e3,
            t1 / td,
            bd as f64 / 1e6,
            b0 as f64 / 1e6,
            100.0 * b0 as f64 / bd as f64
        );
    }
    if !breakdowns.is_empty() {
        println!("\nMedian wall time of each pass (pass-timing build):");
        breakdowns.iter().for_each(|line| println!("{line}"));
    }
}
