//! Sharded states: a group of ranks, each holding a range of the matrix's elements, stepped
//! together through an in-process all-reduce, must follow the unsharded state on the gathered
//! matrix; the communication volume must match the documented formula.

mod common;

use std::ffi::c_void;
use std::sync::{Barrier, Mutex};

use common::TestRng;
use mlorc::shard::{Collective, Shard};
use mlorc::{Algorithm, Config, Device, Dtype, Error, LayoutRequest, State, StepOptions, TensorDesc};

fn desc(rows: usize, cols: usize) -> TensorDesc {
    TensorDesc { rows, cols, param_dtype: Dtype::F32, grad_dtype: Dtype::F32, device: Device::Cpu }
}

fn config(algorithm: Algorithm, oversampling: u32, power_iters: u32) -> Config {
    Config { layout: LayoutRequest::Factored, oversampling, power_iters, ..Config::defaults(algorithm) }
}

/// N ranks in one process: each rank's thread posts its buffer, and every rank sums the posts
/// in rank order, so all ranks get identical bits (as NCCL and gloo give every rank).
struct Group {
    posts: Mutex<Vec<Vec<f32>>>,
    barrier: Barrier,
    calls: Mutex<Vec<usize>>,
    fail: std::sync::atomic::AtomicBool,
}

struct RankContext<'a> {
    group: &'a Group,
    rank: usize,
}

impl Group {
    fn new(ranks: usize) -> Group {
        Group {
            posts: Mutex::new(vec![Vec::new(); ranks]),
            barrier: Barrier::new(ranks),
            calls: Mutex::new(Vec::new()),
            fail: false.into(),
        }
    }
}

unsafe extern "C" fn all_reduce(data: *mut f32, count: usize, _stream: *mut c_void, context: *mut c_void) -> i32 {
    let ctx = &*(context as *const RankContext);
    let data = std::slice::from_raw_parts_mut(data, count);
    ctx.group.posts.lock().unwrap()[ctx.rank] = data.to_vec();
    ctx.group.barrier.wait();
    {
        let posts = ctx.group.posts.lock().unwrap();
        data.fill(0.0);
        for post in posts.iter() {
            assert_eq!(post.len(), count, "ranks disagree on the size of an all-reduce");
            for (d, p) in data.iter_mut().zip(post) {
                *d += p;
            }
        }
    }
    if ctx.rank == 0 {
        ctx.group.calls.lock().unwrap().push(count);
    }
    ctx.group.barrier.wait();
    if ctx.group.fail.load(std::sync::atomic::Ordering::Relaxed) {
        return 7;
    }
    0
}

/// Runs `steps` steps of the unsharded state and of one state per shard on the same gradients;
/// returns (unsharded W, gathered sharded W, the group's all-reduce sizes, rank states, and the
/// unsharded state).
#[allow(clippy::type_complexity)]
fn run_group(config: Config, m: usize, n: usize, shards: &[Shard], steps: usize, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<usize>, Vec<State>, State) {
    let mut rng = TestRng::new(seed);
    let w0 = rng.normals_f32(m * n, 1.0);
    let grads: Vec<Vec<f32>> = (0..steps).map(|_| rng.normals_f32(m * n, 1.0)).collect();
    let options = StepOptions::lr(1e-2);

    let mut whole = State::new(&config, &desc(m, n)).unwrap();
    let mut w = w0.clone();
    for g in &grads {
        whole.step(&mut w, g, &options).unwrap();
    }

    let group = Group::new(shards.len());
    let contexts: Vec<RankContext> = (0..shards.len()).map(|rank| RankContext { group: &group, rank }).collect();
    let results: Vec<(Vec<f32>, State)> = std::thread::scope(|scope| {
        let handles: Vec<_> = shards
            .iter()
            .zip(&contexts)
            .map(|(&shard, ctx)| {
                let (w0, grads) = (&w0, &grads);
                scope.spawn(move || {
                    let collective = Collective { all_reduce, context: ctx as *const RankContext as *mut c_void };
                    let mut state = State::new_sharded(&config, &desc(m, n), shard, Some(collective)).unwrap();
                    let mut w = w0[shard.begin..shard.end].to_vec();
                    for g in grads {
                        state.step(&mut w, &g[shard.begin..shard.end], &options).unwrap();
                    }
                    (w, state)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let gathered: Vec<f32> = results.iter().flat_map(|(w, _)| w.iter().copied()).collect();
    let calls = group.calls.lock().unwrap().clone();
    (w, gathered, calls, results.into_iter().map(|(_, s)| s).collect(), whole)
}

/// U·diag(S)·Vᵀ of moment `moment` of a FACTORED state.
fn rebuilt(state: &State, moment: usize) -> Vec<f32> {
    let specs = state.buffer_specs();
    let (u, s, v) = (state.buffer(specs[3 * moment].name).unwrap(), state.buffer(specs[3 * moment + 1].name).unwrap(), state.buffer(specs[3 * moment + 2].name).unwrap());
    let common::Mat { data, .. } = common::product(u, s, v, specs[3 * moment].rows, specs[3 * moment + 2].rows, s.len());
    data.iter().map(|&x| x as f32).collect()
}

fn split(bounds: &[usize]) -> Vec<Shard> {
    bounds.windows(2).map(|b| Shard { begin: b[0], end: b[1] }).collect()
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().fold(0f64, |s, &x| s.max(x.abs() as f64));
    a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).abs() / scale).fold(0.0, f64::max)
}

const M: usize = 37;
const N: usize = 53;

/// Dim-0 shards (whole rows), ragged ranges that start and end mid-row, an empty shard, a
/// range inside one row.
fn splits() -> Vec<Vec<Shard>> {
    let mn = M * N;
    vec![
        split(&[0, 19 * N, mn]),
        split(&[0, 10 * N, 20 * N, 30 * N, mn]),
        split(&[0, 700, 700, 1234, mn]),
        split(&[0, 5, 40, 1000, mn]),
    ]
}

#[test]
fn sharded_steps_follow_the_unsharded_state() {
    for algorithm in [Algorithm::AdamW, Algorithm::Lion] {
        for (oversampling, power_iters) in [(0, 0), (2, 1)] {
            let config = config(algorithm, oversampling, power_iters);
            for (si, shards) in splits().iter().enumerate() {
                let (whole, gathered, _, states, whole_state) = run_group(config, M, N, shards, 12, 40 + si as u64);
                assert!(gathered.iter().all(|x| x.is_finite()));
                let diff = max_rel_diff(&whole, &gathered);
                eprintln!("{algorithm:?} p={oversampling} q={power_iters} split {si}: max diff {diff:e}");
                assert!(diff < 1e-5, "{algorithm:?} p={oversampling} q={power_iters} split {si}: max diff {diff:e}");
                // Every rank holds the same factors, bit for bit.
                for name in states[0].buffer_specs().iter().map(|b| b.name) {
                    let first = states[0].buffer(name).unwrap();
                    for s in &states[1..] {
                        assert_eq!(s.buffer(name).unwrap(), first, "{name} differs between ranks");
                    }
                }
                assert_eq!(states[0].step_count(), 12);
                // And their moments are the unsharded state's (as products: factor signs may flip).
                for moment in 0..states[0].buffer_specs().len() / 3 {
                    let (a, b) = (rebuilt(&states[0], moment), rebuilt(&whole_state, moment));
                    let d = max_rel_diff(&b, &a);
                    assert!(d < 1e-4, "{algorithm:?} split {si}: moment {moment} differs by {d:e}");
                }
            }
        }
    }
}

#[test]
fn communication_volume_matches_the_formula() {
    let k = 4 + 2;
    for (algorithm, moments) in [(Algorithm::AdamW, 2usize), (Algorithm::Lion, 1)] {
        for q in [0u32, 1] {
            let steps = 3;
            let (_, _, calls, _, _) = run_group(config(algorithm, 2, q), M, N, &splits()[2], steps, 5);
            let per_pass_sketch = moments * M * k;
            let per_pass_projection = moments * N * k;
            let mut expected = Vec::new();
            for step in 0..steps {
                if algorithm == Algorithm::AdamW && step > 0 {
                    expected.push(4);
                }
                expected.push(per_pass_sketch);
                for _ in 0..q {
                    expected.push(per_pass_projection);
                    expected.push(per_pass_sketch);
                }
                expected.push(per_pass_projection);
            }
            assert_eq!(calls, expected, "{algorithm:?} q={q}");
            let floats: usize = calls.iter().sum();
            let formula = steps * (q as usize + 1) * moments * (M + N) * k + if algorithm == Algorithm::AdamW { 4 * (steps - 1) } else { 0 };
            assert_eq!(floats, formula);
        }
    }
}

#[test]
fn dense_shards_step_locally_and_exactly() {
    for algorithm in [Algorithm::AdamW, Algorithm::Lion] {
        let config = Config { layout: LayoutRequest::Dense, ..Config::defaults(algorithm) };
        let (whole, gathered, calls, states, _) = run_group(config, M, N, &splits()[3], 6, 9);
        assert_eq!(whole, gathered, "elementwise steps do not depend on the split");
        assert!(calls.is_empty(), "a dense shard never communicates");
        assert_eq!(states[1].buffer_specs()[0].len(), 35);
        assert_eq!(states[1].memory_bytes(), moments_of(algorithm) * 35 * 4);
    }
}

fn moments_of(algorithm: Algorithm) -> usize {
    match algorithm {
        Algorithm::AdamW => 2,
        Algorithm::Lion => 1,
    }
}

#[test]
fn factored_shards_hold_the_whole_factors_and_nothing_of_matrix_size() {
    let config = config(Algorithm::AdamW, 0, 0);
    let unsharded = State::new(&config, &desc(M, N)).unwrap().memory_bytes();
    assert_eq!(unsharded, 2 * (M + N + 1) * 4 * 4);
    let (_, _, _, states, _) = run_group(config, M, N, &splits()[1], 1, 3);
    for s in &states {
        assert_eq!(s.memory_bytes(), unsharded);
    }
}

#[test]
fn a_factored_checkpoint_resumes_on_another_number_of_ranks() {
    let config = config(Algorithm::AdamW, 0, 0);
    let (m, n, steps) = (M, N, 4);
    let mut rng = TestRng::new(77);
    let w0 = rng.normals_f32(m * n, 1.0);
    let grads: Vec<Vec<f32>> = (0..2 * steps).map(|_| rng.normals_f32(m * n, 1.0)).collect();
    let options = StepOptions::lr(1e-2);
    let mut whole = State::new(&config, &desc(m, n)).unwrap();
    let mut w = w0.clone();
    for g in &grads[..steps] {
        whole.step(&mut w, g, &options).unwrap();
    }
    let mut bytes = vec![0u8; mlorc::checkpoint::saved_size(&whole)];
    mlorc::checkpoint::save(&whole, &mut bytes).unwrap();
    let w_mid = w.clone();
    for g in &grads[steps..] {
        whole.step(&mut w, g, &options).unwrap();
    }

    // Resume the unsharded checkpoint on three ranks.
    let shards = split(&[0, 500, 1100, m * n]);
    let group = Group::new(3);
    let contexts: Vec<RankContext> = (0..3).map(|rank| RankContext { group: &group, rank }).collect();
    let gathered: Vec<f32> = std::thread::scope(|scope| {
        let handles: Vec<_> = shards
            .iter()
            .zip(&contexts)
            .map(|(&shard, ctx)| {
                let (bytes, w_mid, grads) = (&bytes, &w_mid, &grads);
                scope.spawn(move || {
                    let collective = Collective { all_reduce, context: ctx as *const RankContext as *mut c_void };
                    let mut state = State::new_sharded(&config, &desc(m, n), shard, Some(collective)).unwrap();
                    mlorc::checkpoint::load(&mut state, bytes).unwrap();
                    assert_eq!(state.step_count(), steps as u64);
                    assert_eq!(state.shard(), shard, "loading keeps the state's own shard");
                    let mut w = w_mid[shard.begin..shard.end].to_vec();
                    for g in &grads[steps..] {
                        state.step(&mut w, &g[shard.begin..shard.end], &options).unwrap();
                    }
                    w
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let diff = max_rel_diff(&w, &gathered);
    assert!(diff < 1e-5, "max diff {diff:e}");
}

#[test]
fn an_empty_dense_shard_takes_null_buffers() {
    let config = Config { layout: LayoutRequest::Dense, ..Config::defaults(Algorithm::AdamW) };
    let shard = Shard { begin: 40, end: 40 };
    // SAFETY: both buffers hold 0 floats.
    let mut state = unsafe { State::with_buffers_sharded(&config, &desc(M, N), shard, None, &[std::ptr::null_mut(); 2]) }.unwrap();
    state.step::<f32, f32>(&mut [], &[], &StepOptions::lr(1e-3)).unwrap();
    assert_eq!(state.step_count(), 1);
    // A buffer with floats still needs memory.
    let busy = Shard { begin: 40, end: 41 };
    assert!(unsafe { State::with_buffers_sharded(&config, &desc(M, N), busy, None, &[std::ptr::null_mut(); 2]) }.is_err());
}

#[test]
fn dense_checkpoints_need_the_same_range() {
    let config = Config { layout: LayoutRequest::Dense, ..Config::defaults(Algorithm::AdamW) };
    let a = State::new_sharded(&config, &desc(M, N), Shard { begin: 0, end: 100 }, None).unwrap();
    let mut bytes = vec![0u8; mlorc::checkpoint::saved_size(&a)];
    mlorc::checkpoint::save(&a, &mut bytes).unwrap();
    let mut same = State::new_sharded(&config, &desc(M, N), Shard { begin: 0, end: 100 }, None).unwrap();
    mlorc::checkpoint::load(&mut same, &bytes).unwrap();
    let mut other = State::new_sharded(&config, &desc(M, N), Shard { begin: 100, end: 200 }, None).unwrap();
    match mlorc::checkpoint::load(&mut other, &bytes) {
        Err(Error::InvalidArgument(msg)) => assert!(msg.contains("[0, 100)"), "{msg}"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn bad_shards_are_refused() {
    let config = config(Algorithm::AdamW, 0, 0);
    let d = desc(M, N);
    let bad = |shard: Shard, collective: Option<Collective>| match State::new_sharded(&config, &d, shard, collective) {
        Err(Error::InvalidArgument(msg)) => msg,
        Err(e) => panic!("{shard:?}: expected InvalidArgument, got {e:?}"),
        Ok(_) => panic!("{shard:?}: accepted"),
    };
    let group = Group::new(1);
    let ctx = RankContext { group: &group, rank: 0 };
    let collective = Collective { all_reduce, context: &ctx as *const RankContext as *mut c_void };
    assert!(bad(Shard { begin: 10, end: 5 }, Some(collective)).contains("[10, 5)"));
    assert!(bad(Shard { begin: 0, end: M * N + 1 }, Some(collective)).contains("elements"));
    assert!(bad(Shard { begin: 0, end: 10 }, None).contains("all-reduce"));
    let cuda = TensorDesc { device: Device::Cuda(0), ..d };
    assert!(matches!(
        State::new_sharded(&config, &cuda, Shard { begin: 0, end: 10 }, Some(collective)),
        Err(Error::Unsupported(_)) | Err(Error::DeviceUnavailable(_))
    ));
    // A one-rank group: the wrong number of elements is refused before any communication.
    let mut state = State::new_sharded(&config, &d, Shard { begin: 0, end: M * N }, Some(collective)).unwrap();
    let mut w = vec![0f32; 10];
    assert!(matches!(state.step(&mut w, &[0f32; 10], &StepOptions::lr(1e-3)), Err(Error::InvalidArgument(_))));
    assert!(group.calls.lock().unwrap().is_empty());
}

#[test]
fn a_failed_all_reduce_is_reported() {
    let config = config(Algorithm::Lion, 0, 0);
    let group = Group::new(1);
    group.fail.store(true, std::sync::atomic::Ordering::Relaxed);
    let ctx = RankContext { group: &group, rank: 0 };
    let collective = Collective { all_reduce, context: &ctx as *const RankContext as *mut c_void };
    let mut state = State::new_sharded(&config, &desc(M, N), Shard::whole(M * N), Some(collective)).unwrap();
    let mut w = vec![0f32; M * N];
    let g = vec![1f32; M * N];
    match state.step(&mut w, &g, &StepOptions::lr(1e-3)) {
        Err(Error::Collective(msg)) => assert!(msg.contains("returned 7"), "{msg}"),
        other => panic!("expected a collective error, got {other:?}"),
    }
    assert_eq!(state.step_count(), 0, "a failed step is not counted");
}
