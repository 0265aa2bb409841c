//! Many states stepped in one call (`mlorc::batch::step_many`): the same bits as one step per
//! state, every check before anything changes, and found_inf honoured for all.

mod common;

use common::TestRng;
use mlorc::batch::{step_many, BatchItem};
use mlorc::state::{LearningRate, StepRequest};
use mlorc::{Algorithm, Config, Device, Dtype, State, TensorDesc};

/// A model's mix: vectors, small matrices (dense and factored) and one large enough to be
/// stepped with every thread.
const SHAPES: [(usize, usize); 10] =
    [(1, 300), (768, 256), (256, 256), (3, 5000), (1024, 256), (256, 1024), (1, 64), (600, 700), (5, 5), (1200, 1100)];

struct Tensor {
    state: State,
    param: Vec<f32>,
    grad: Vec<f32>,
}

fn model(algorithm: Algorithm, seed: u64) -> Vec<Tensor> {
    let mut rng = TestRng::new(seed);
    let config = Config::defaults(algorithm);
    SHAPES
        .iter()
        .map(|&(rows, cols)| {
            let desc = TensorDesc { rows, cols, param_dtype: Dtype::F32, grad_dtype: Dtype::F32, device: Device::Cpu };
            Tensor {
                state: State::new(&config, &desc).unwrap(),
                param: rng.normals_f32(rows * cols, 0.05),
                grad: rng.normals_f32(rows * cols, 1e-3),
            }
        })
        .collect()
}

fn request(t: &mut Tensor, lr: f64, found_inf: *const f32) -> StepRequest {
    StepRequest {
        param: t.param.as_mut_ptr() as *mut u8,
        grad: t.grad.as_ptr() as *const u8,
        lr: LearningRate::Value(lr),
        grad_scale: std::ptr::null(),
        found_inf,
        stream: std::ptr::null_mut(),
    }
}

fn step_all(tensors: &mut [Tensor], lr: f64, found_inf: *const f32) -> mlorc::Result<()> {
    let requests: Vec<StepRequest> = tensors.iter_mut().map(|t| request(t, lr, found_inf)).collect();
    let mut items: Vec<BatchItem> =
        tensors.iter_mut().zip(requests).map(|(t, request)| BatchItem { state: &mut t.state, request }).collect();
    // SAFETY: every request points at its own tensor's param and grad.
    unsafe { step_many(&mut items) }
}

fn bits(tensors: &[Tensor]) -> Vec<u32> {
    let mut out = Vec::new();
    for t in tensors {
        out.extend(t.param.iter().map(|x| x.to_bits()));
        for spec in t.state.buffer_specs() {
            out.extend(t.state.buffer(spec.name).unwrap().iter().map(|x| x.to_bits()));
        }
        out.push(t.state.step_count() as u32);
    }
    out
}

fn new_gradients(tensors: &mut [Tensor], rng: &mut TestRng) {
    for t in tensors {
        let n = t.grad.len();
        t.grad = rng.normals_f32(n, 1e-3);
    }
}

#[test]
fn a_batch_gives_the_bits_of_one_step_per_state() {
    for algorithm in [Algorithm::AdamW, Algorithm::Lion] {
        let (mut batched, mut single) = (model(algorithm, 7), model(algorithm, 7));
        let (mut rng_a, mut rng_b) = (TestRng::new(99), TestRng::new(99));
        for step in 0..3 {
            step_all(&mut batched, 1e-3, std::ptr::null()).unwrap();
            for t in &mut single {
                let req = request(t, 1e-3, std::ptr::null());
                unsafe { t.state.step_raw(&req) }.unwrap();
            }
            assert_eq!(bits(&batched), bits(&single), "{algorithm:?}, step {step}");
            assert!(batched.iter().all(|t| t.param.iter().all(|x| x.is_finite())));
            new_gradients(&mut batched, &mut rng_a);
            new_gradients(&mut single, &mut rng_b);
        }
        assert!(batched.iter().all(|t| t.state.step_count() == 3));
    }
}

#[test]
fn a_bad_item_changes_nothing_in_any_state() {
    let mut tensors = model(Algorithm::AdamW, 3);
    step_all(&mut tensors, 1e-3, std::ptr::null()).unwrap();
    let before = bits(&tensors);
    // A NaN learning rate fails every item's check; the first is named.
    let err = step_all(&mut tensors, f64::NAN, std::ptr::null()).unwrap_err();
    assert!(matches!(err, mlorc::Error::InvalidArgument(_)) && err.message().contains("tensor 0"), "{err}");
    assert_eq!(bits(&tensors), before);
    // A NULL gradient in the last item: the items before it must not have stepped either.
    let last = tensors.len() - 1;
    let mut requests: Vec<StepRequest> = tensors.iter_mut().map(|t| request(t, 1e-3, std::ptr::null())).collect();
    requests[last].grad = std::ptr::null();
    let mut items: Vec<BatchItem> = tensors.iter_mut().zip(requests).map(|(t, request)| BatchItem { state: &mut t.state, request }).collect();
    let err = unsafe { step_many(&mut items) }.unwrap_err();
    drop(items);
    assert!(err.message().contains(&format!("tensor {last}")), "{err}");
    assert_eq!(bits(&tensors), before);
}

#[test]
fn found_inf_skips_every_state() {
    let mut tensors = model(Algorithm::Lion, 5);
    step_all(&mut tensors, 1e-3, std::ptr::null()).unwrap();
    let before = bits(&tensors);
    let inf = 1.0f32;
    step_all(&mut tensors, 1e-3, &inf).unwrap();
    assert_eq!(bits(&tensors), before);
    let clear = 0.0f32;
    step_all(&mut tensors, 1e-3, &clear).unwrap();
    assert!(tensors.iter().all(|t| t.state.step_count() == 2));
}

#[test]
fn an_empty_batch_is_a_no_op() {
    unsafe { step_many(&mut []) }.unwrap();
}
