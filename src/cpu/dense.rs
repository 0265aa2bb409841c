//! The DENSE layout: plain AdamW / Lion with full f32 moments, elementwise over fixed blocks.

use rayon::prelude::*;

use crate::config::Algorithm;
use crate::dtype;
use crate::step::{StepIo, StepScalars};

use super::SharedPtr;

const BLOCK: usize = 4096;

/// One dense step over `len` elements; `moments` are exp_avg (and exp_avg_sq for AdamW).
///
/// # Safety
/// `io.param` and `io.grad` must hold `len` elements of their dtypes.
pub unsafe fn dense_step(scalars: &StepScalars, io: &StepIo, len: usize, mut moments: Vec<&mut [f32]>) {
    let param = SharedPtr(io.param);
    let grad = SharedPtr(io.grad as *mut u8);
    let (pd, gd) = (io.param_dtype, io.grad_dtype);
    let s = *scalars;
    let block = move |b: usize, m: &mut [f32], v: Option<&mut [f32]>| {
        let offset = b * BLOCK;
        let n = m.len();
        let mut g = [0f32; BLOCK];
        let mut w = [0f32; BLOCK];
        let (g, w) = (&mut g[..n], &mut w[..n]);
        // SAFETY: block b covers elements offset..offset+n < len of both tensors.
        unsafe {
            dtype::load(grad.get(), gd, offset, g, s.grad_factor);
            dtype::load(param.get(), pd, offset, w, 1.0);
        }
        let (b1, w1) = s.moment_mix(0);
        match (s.algorithm, v) {
            (Algorithm::AdamW, Some(v)) => {
                let (b2, w2) = s.moment_mix(1);
                for j in 0..n {
                    m[j] = b1 * m[j] + w1 * g[j];
                    v[j] = b2 * v[j] + w2 * (g[j] * g[j]);
                    w[j] = s.update(w[j], m[j], v[j]);
                }
            }
            _ => {
                for j in 0..n {
                    w[j] = s.update(w[j], m[j], g[j]);
                    m[j] = b1 * m[j] + w1 * g[j];
                }
            }
        }
        unsafe { dtype::store(param.get(), pd, offset, w, s.rounding) };
    };
    debug_assert!(moments.iter().all(|m| m.len() == len));
    if moments.len() == 2 {
        let v = moments.pop().unwrap();
        let m = moments.pop().unwrap();
        m.par_chunks_mut(BLOCK)
            .zip(v.par_chunks_mut(BLOCK))
            .enumerate()
            .for_each(|(b, (m, v))| block(b, m, Some(v)));
    } else {
        let m = moments.pop().unwrap();
        m.par_chunks_mut(BLOCK).enumerate().for_each(|(b, m)| block(b, m, None));
    }
}
