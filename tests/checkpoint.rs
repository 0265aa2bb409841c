//! Checkpoints: bit-exact round trips, and a loader that rejects every corruption without
//! changing the state (also under random mutations).

mod common;

use common::TestRng;
use mlorc::{checkpoint, Algorithm, Config, Device, Dtype, Error, LayoutRequest, State, StepOptions, TensorDesc};

fn desc(rows: usize, cols: usize) -> TensorDesc {
    TensorDesc { rows, cols, param_dtype: Dtype::F32, grad_dtype: Dtype::F32, device: Device::Cpu }
}

fn trained(config: &Config, m: usize, n: usize, steps: usize, rng: &mut TestRng, w: &mut [f32]) -> State {
    let mut state = State::new(config, &desc(m, n)).unwrap();
    for _ in 0..steps {
        state.step(w, &rng.normals_f32(m * n, 1.0), &StepOptions::lr(1e-2)).unwrap();
    }
    state
}

fn save(state: &State) -> Vec<u8> {
    let mut bytes = vec![0u8; checkpoint::saved_size(state)];
    assert_eq!(checkpoint::save(state, &mut bytes).unwrap(), bytes.len());
    bytes
}

#[test]
fn round_trip_resumes_bit_exactly() {
    for (algorithm, layout) in [
        (Algorithm::AdamW, LayoutRequest::Factored),
        (Algorithm::Lion, LayoutRequest::Factored),
        (Algorithm::AdamW, LayoutRequest::Dense),
    ] {
        let config = Config { layout, oversampling: 1, power_iters: 1, seed: 99, ..Config::defaults(algorithm) };
        let (m, n) = (23, 41);
        let mut rng = TestRng::new(1);
        let mut w = rng.normals_f32(m * n, 1.0);
        let mut original = trained(&config, m, n, 3, &mut rng, &mut w);
        let bytes = save(&original);
        // A state created with other hyperparameters adopts the checkpoint's.
        let other = Config { beta1: 0.5, seed: 1, ..config };
        let mut resumed = State::new(&other, &desc(m, n)).unwrap();
        checkpoint::load(&mut resumed, &bytes).unwrap();
        assert_eq!(resumed.step_count(), 3);
        assert_eq!(save(&resumed), bytes, "{algorithm:?} {layout:?}: saved bytes differ after a load");
        let mut w2 = w.clone();
        for _ in 0..3 {
            let g = rng.normals_f32(m * n, 1.0);
            original.step(&mut w, &g, &StepOptions::lr(1e-2)).unwrap();
            resumed.step(&mut w2, &g, &StepOptions::lr(1e-2)).unwrap();
        }
        assert!(w.iter().zip(&w2).all(|(a, b)| a.to_bits() == b.to_bits()), "{algorithm:?} {layout:?}");
    }
}

#[test]
fn every_corruption_is_rejected_and_changes_nothing() {
    let config = Config { layout: LayoutRequest::Factored, ..Config::defaults(Algorithm::AdamW) };
    let mut rng = TestRng::new(2);
    let mut w = rng.normals_f32(8 * 9, 1.0);
    let source = trained(&config, 8, 9, 2, &mut rng, &mut w);
    let good = save(&source);
    let mut target = trained(&config, 8, 9, 1, &mut rng, &mut w);
    let before = save(&target);
    let mut expect_corrupt = |bytes: &[u8], what: &str| {
        match checkpoint::load(&mut target, bytes) {
            Err(Error::CorruptCheckpoint(_)) => {}
            other => panic!("{what}: {other:?}"),
        }
        assert_eq!(save(&target), before, "{what}: the state changed");
    };
    for pos in 0..good.len() {
        for bit in [0, 3, 7] {
            let mut bad = good.clone();
            bad[pos] ^= 1 << bit;
            expect_corrupt(&bad, &format!("bit {bit} of byte {pos} flipped"));
        }
    }
    for len in [0, 1, 8, 100, good.len() - 4, good.len() - 1] {
        expect_corrupt(&good[..len], &format!("truncated to {len}"));
    }
    let mut longer = good.clone();
    longer.push(0);
    expect_corrupt(&longer, "one byte appended");
}

/// Rewrites the trailing checksum so that a mutation reaches the field validation.
fn reseal(bytes: &mut [u8]) {
    let n = bytes.len();
    let crc = checkpoint::crc32(&bytes[..n - 4]);
    bytes[n - 4..].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn fuzzed_checkpoints_either_load_and_validate_or_are_rejected() {
    let config = Config { layout: LayoutRequest::Factored, rank: 2, ..Config::defaults(Algorithm::AdamW) };
    let mut rng = TestRng::new(3);
    let mut w = rng.normals_f32(6 * 7, 1.0);
    let good = save(&trained(&config, 6, 7, 2, &mut rng, &mut w));
    let mut loaded = 0;
    for case in 0..20000u64 {
        let mut bytes = good.clone();
        let edits = 1 + (rng.next_u64() % 4) as usize;
        for _ in 0..edits {
            match rng.next_u64() % 4 {
                0 => {
                    let pos = (rng.next_u64() as usize) % bytes.len();
                    bytes[pos] = rng.next_u64() as u8;
                }
                1 => {
                    let len = (rng.next_u64() as usize) % (bytes.len() + 1);
                    bytes.truncate(len.max(1));
                }
                2 => {
                    // Header fields: sizes, counts, enum values.
                    let pos = (rng.next_u64() as usize) % 140.min(bytes.len());
                    let v = [0u8, 1, 2, 7, 255][(rng.next_u64() % 5) as usize];
                    bytes[pos] = v;
                }
                _ => {
                    let extra = (rng.next_u64() % 16) as usize;
                    bytes.extend((0..extra).map(|_| rng.next_u64() as u8));
                }
            }
        }
        if case % 2 == 0 && bytes.len() >= 4 {
            reseal(&mut bytes);
        }
        let mut target = State::new(&config, &desc(6, 7)).unwrap();
        let before = save(&target);
        match checkpoint::load(&mut target, &bytes) {
            Ok(()) => {
                // A checkpoint that loads must describe a valid state of this shape.
                loaded += 1;
                target.config().validate().unwrap();
                let mut g = vec![0.5f32; 42];
                g[3] = -1.0;
                let mut w2 = w.clone();
                target.step(&mut w2, &g, &StepOptions::lr(1e-3)).unwrap();
            }
            Err(Error::CorruptCheckpoint(_)) | Err(Error::InvalidArgument(_)) => {
                assert_eq!(save(&target), before, "case {case}: a rejected load changed the state");
            }
            Err(other) => panic!("case {case}: unexpected {other:?}"),
        }
    }
    // Resealed edits inside float payloads load (they are valid states); most others do not.
    assert!(loaded > 0 && loaded < 20000, "loaded {loaded}");
}

#[test]
fn a_valid_checkpoint_of_another_shape_is_refused() {
    let config = Config { layout: LayoutRequest::Factored, ..Config::defaults(Algorithm::AdamW) };
    let mut rng = TestRng::new(4);
    let mut w = rng.normals_f32(10 * 12, 1.0);
    let bytes = save(&trained(&config, 10, 12, 1, &mut rng, &mut w));
    for (cfg, m, n) in [
        (config, 12, 10),
        (Config { rank: 3, ..config }, 10, 12),
        (Config { algorithm: Algorithm::Lion, ..config }, 10, 12),
        (Config { layout: LayoutRequest::Dense, ..config }, 10, 12),
    ] {
        let mut target = State::new(&cfg, &desc(m, n)).unwrap();
        let before = save(&target);
        assert!(matches!(checkpoint::load(&mut target, &bytes), Err(Error::InvalidArgument(_))));
        assert_eq!(save(&target), before);
    }
}
