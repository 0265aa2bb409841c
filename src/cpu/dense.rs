//! The DENSE layout: plain AdamW / Lion with full f32 moments, elementwise over fixed blocks.

use crate::config::Algorithm;
use crate::dtype;
use crate::step::{StepIo, StepScalars};

use super::lanes::Lanes;
use super::tile::{self, multiversion, F8, LANES, ZERO};
use super::SharedPtr;

const BLOCK: usize = 4096;

/// AdamW (with `v`) or Lion on whole groups of 8 lanes.
#[inline(always)]
fn step_groups<S: Lanes>(s: &StepScalars, m: &mut [F8], v: Option<&mut [F8]>, g: &[F8], w: &mut [F8]) {
    let (b1, w1) = s.moment_mix(0);
    let (b1, w1) = (S::splat(b1), S::splat(w1));
    match v {
        Some(v) => {
            let (b2, w2) = s.moment_mix(1);
            let (b2, w2) = (S::splat(b2), S::splat(w2));
            for (((m8, v8), g8), w8) in m.iter_mut().zip(v.iter_mut()).zip(g).zip(w.iter_mut()) {
                let g = S::load(g8);
                let m = S::mul_add(b1, S::load(m8), S::mul(w1, g));
                let v = S::mul_add(b2, S::load(v8), S::mul(w2, S::mul(g, g)));
                S::store(m, m8);
                S::store(v, v8);
                S::store(tile::update_adamw::<S>(s, S::load(w8), m, v), w8);
            }
        }
        None => {
            for ((m8, g8), w8) in m.iter_mut().zip(g).zip(w.iter_mut()) {
                let (g, m) = (S::load(g8), S::load(m8));
                S::store(tile::update_lion::<S>(s, S::load(w8), m, g), w8);
                S::store(S::mul_add(b1, m, S::mul(w1, g)), m8);
            }
        }
    }
}

multiversion! {
    /// Block `b` of the elements from `start`: `m` (and `v` for AdamW) are the block's moments.
    fn dense_block<S>(s: &StepScalars, param: SharedPtr<u8>, grad: SharedPtr<u8>, io: &StepIo, start: usize, b: usize, m: &mut [f32], v: Option<&mut [f32]>) {
        let offset = start + b * BLOCK;
        let n = m.len();
        let mut g = [0f32; BLOCK];
        let mut w = [0f32; BLOCK];
        let (g, w) = (&mut g[..n], &mut w[..n]);
        // SAFETY: block b covers elements offset..offset+n of both tensors (dense_step's contract).
        unsafe {
            dtype::load(grad.get(), io.grad_dtype, offset, g, s.grad_factor);
            dtype::load(param.get(), io.param_dtype, offset, w, 1.0);
        }
        let body = n - n % LANES;
        let mut v = v;
        step_groups::<S>(
            s,
            tile::as_groups_mut(&mut m[..body]),
            v.as_deref_mut().map(|v| tile::as_groups_mut(&mut v[..body])),
            tile::as_groups(&g[..body]),
            tile::as_groups_mut(&mut w[..body]),
        );
        if body < n {
            // The tail of the last block, zero-padded to one group (padding is not stored back).
            let rest = n - body;
            let pad = |src: &[f32]| {
                let mut x = ZERO;
                x[..rest].copy_from_slice(src);
                x
            };
            let (mut m8, g8, mut w8) = (pad(&m[body..]), pad(&g[body..]), pad(&w[body..]));
            let mut v8 = v.as_deref().map(|v| pad(&v[body..]));
            step_groups::<S>(s, std::slice::from_mut(&mut m8), v8.as_mut().map(std::slice::from_mut), &[g8], std::slice::from_mut(&mut w8));
            m[body..].copy_from_slice(&m8[..rest]);
            if let (Some(v), Some(v8)) = (v, v8) {
                v[body..].copy_from_slice(&v8[..rest]);
            }
            w[body..].copy_from_slice(&w8[..rest]);
        }
        unsafe { dtype::store(param.get(), io.param_dtype, offset, w, s.rounding) };
    }
}

/// One dense step over elements `start .. start + len`; `moments` are exp_avg (and exp_avg_sq
/// for AdamW) of those elements.
///
/// # Safety
/// Elements `start .. start + len` of `io.param` and `io.grad` must be valid memory of their
/// dtypes.
pub unsafe fn dense_step(scalars: &StepScalars, io: &StepIo, start: usize, len: usize, mut moments: Vec<&mut [f32]>) {
    let param = SharedPtr(io.param);
    let grad = SharedPtr(io.grad as *mut u8);
    debug_assert!(moments.iter().all(|m| m.len() == len));
    debug_assert_eq!(moments.len() == 2, scalars.algorithm == Algorithm::AdamW);
    // The moments' blocks, numbered: each is stepped alone, so any order gives the same bits.
    let v = if moments.len() == 2 { moments.pop() } else { None };
    let m = moments.pop().expect("one moment at least");
    let mut blocks: Vec<(usize, &mut [f32], Option<&mut [f32]>)> = match v {
        Some(v) => m.chunks_mut(BLOCK).zip(v.chunks_mut(BLOCK)).enumerate().map(|(b, (m, v))| (b, m, Some(v))).collect(),
        None => m.chunks_mut(BLOCK).enumerate().map(|(b, m)| (b, m, None)).collect(),
    };
    super::for_each_mut(&mut blocks, len, |(b, m, v)| dense_block(scalars, param, grad, io, start, *b, m, v.as_deref_mut()));
}
