//! The CPU pass kernels of the library (src/cpu/tile.rs, lanes.rs, wide.rs and isa.rs, included as they are),
//! with the one type of the step they read, so a binary can time a kernel on its own.
#![allow(dead_code)]

pub mod step {
    /// The fields of the library's `StepScalars` that the kernels read.
    #[derive(Clone, Copy)]
    pub struct StepScalars {
        pub inv_bias_correction2_sqrt: f32,
        pub eps: f32,
        pub step_size: f32,
        pub decay: f32,
        pub beta1: f32,
        pub one_minus_beta1: f32,
        pub lr: f32,
    }

    impl StepScalars {
        /// AdamW at step 10 with the defaults of ALGORITHM.md and lr 1e-3.
        pub fn adamw() -> StepScalars {
            let (lr, b1, b2, wd, t) = (1e-3f64, 0.9f64, 0.999f64, 0.01f64, 10);
            StepScalars {
                inv_bias_correction2_sqrt: (1.0 / (1.0 - b2.powi(t)).sqrt()) as f32,
                eps: 1e-8,
                step_size: (lr / (1.0 - b1.powi(t))) as f32,
                decay: (1.0 - lr * wd) as f32,
                beta1: b1 as f32,
                one_minus_beta1: (1.0 - b1) as f32,
                lr: lr as f32,
            }
        }
    }
}

#[path = "../../../src/cpu"]
pub mod cpu {
    pub mod isa;
    pub mod lanes;
    pub mod tile;
    #[cfg(target_arch = "x86_64")]
    pub mod wide;
}

/// The small factorizations and Ω of every step (src/linalg.rs, src/rng.rs, as they are).
#[path = "../../../src/linalg.rs"]
pub mod linalg;
#[path = "../../../src/rng.rs"]
pub mod rng;

/// xorshift uniforms in [-0.5, 0.5).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
    pub fn groups(&mut self, n: usize) -> Vec<[f32; 8]> {
        (0..n).map(|_| std::array::from_fn(|_| self.next())).collect()
    }
}

/// Minimum and median of `runs` timings of `f`, in seconds.
pub fn time(runs: usize, mut f: impl FnMut()) -> (f64, f64) {
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let start = std::time::Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (t[0], t[runs / 2])
}

pub mod pass;
pub mod pattern;
pub mod sketch;
pub mod small;
