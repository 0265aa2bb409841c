//! Reading parameters and gradients of any supported dtype as f32, and writing f32 results
//! back: round-to-nearest-even, or stochastic rounding for f16/bf16.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use crate::cpu::lanes::bf16_nearest_bits;
use crate::config::Dtype;
use crate::rng::{self, Stream};

/// Converts `out.len()` elements starting at element `offset` of `src` to f32, times `scale`.
///
/// # Safety
/// Elements `offset .. offset + out.len()` counted from `src` must be readable memory of `dtype`.
/// `src` itself may lie before the allocation (the base of a shard, see `StepIo::base`); the
/// offset arithmetic wraps, and only the addressed range is touched.
/// Always inlined: in the passes' AVX2 code its loops vectorize.
#[inline(always)]
pub unsafe fn load(src: *const u8, dtype: Dtype, offset: usize, out: &mut [f32], scale: f32) {
    let len = out.len();
    match dtype {
        Dtype::F32 => {
            // SAFETY: the caller guarantees the range is readable.
            let s = std::slice::from_raw_parts((src as *const f32).wrapping_add(offset), len);
            if scale == 1.0 {
                out.copy_from_slice(s);
            } else {
                for (o, &x) in out.iter_mut().zip(s) {
                    *o = x * scale;
                }
            }
        }
        Dtype::F16 => {
            let s = std::slice::from_raw_parts((src as *const f16).wrapping_add(offset), len);
            s.convert_to_f32_slice(out);
            if scale != 1.0 {
                out.iter_mut().for_each(|o| *o *= scale);
            }
        }
        Dtype::Bf16 => {
            let s = std::slice::from_raw_parts((src as *const u16).wrapping_add(offset), len);
            for (o, &x) in out.iter_mut().zip(s) {
                *o = f32::from_bits((x as u32) << 16) * scale;
            }
        }
    }
}

/// How f32 results are written into a 16-bit parameter.
#[derive(Debug, Clone, Copy)]
pub enum Rounding {
    NearestEven,
    /// Stochastic rounding with draws keyed by (seed, step) and the element index.
    Stochastic { seed: u64, step: u64 },
}

/// Writes `vals` into elements `offset..offset + vals.len()` of `dst`. Stochastic rounding draws
/// its bits from the element index `offset + i`, so a shard rounds as the whole tensor would.
///
/// # Safety
/// Elements `offset .. offset + vals.len()` counted from `dst` must be writable memory of
/// `dtype` (`dst` may lie before the allocation, as for `load`).
/// Always inlined: in the passes' AVX2 code its round-to-nearest loops vectorize.
#[inline(always)]
pub unsafe fn store(dst: *mut u8, dtype: Dtype, offset: usize, vals: &[f32], rounding: Rounding) {
    let len = vals.len();
    match (dtype, rounding) {
        (Dtype::F32, _) => {
            // SAFETY: the caller guarantees the range is writable.
            std::slice::from_raw_parts_mut((dst as *mut f32).wrapping_add(offset), len).copy_from_slice(vals);
        }
        (Dtype::F16, Rounding::NearestEven) => {
            std::slice::from_raw_parts_mut((dst as *mut f16).wrapping_add(offset), len).convert_from_f32_slice(vals);
        }
        (Dtype::Bf16, Rounding::NearestEven) => {
            let d = std::slice::from_raw_parts_mut((dst as *mut u16).wrapping_add(offset), len);
            for (o, &x) in d.iter_mut().zip(vals) {
                *o = bf16_nearest_bits(x);
            }
        }
        (Dtype::F16 | Dtype::Bf16, Rounding::Stochastic { seed, step }) => {
            let d = std::slice::from_raw_parts_mut((dst as *mut u16).wrapping_add(offset), len);
            let key = rng::key(seed);
            let mut e = offset;
            let mut words = [0u32; 4];
            for (o, &x) in d.iter_mut().zip(vals) {
                if e.is_multiple_of(4) || e == offset {
                    words = rng::philox4x32_10(rng::counter(e as u64 / 4, step, Stream::Rounding), key);
                }
                *o = round_stochastic(x, dtype, words[e % 4]);
                e += 1;
            }
        }
    }
}

fn to_f32_bits16(bits: u16, dtype: Dtype) -> f32 {
    match dtype {
        Dtype::F16 => f16::from_bits(bits).to_f32(),
        _ => f32::from_bits((bits as u32) << 16),
    }
}

fn nearest_bits16(x: f32, dtype: Dtype) -> u16 {
    match dtype {
        Dtype::F16 => f16::from_f32(x).to_bits(),
        _ => bf16::from_f32(x).to_bits(),
    }
}

/// The next representable 16-bit value above (`up`) or below, in sign-magnitude encoding.
fn neighbour_bits16(bits: u16, up: bool) -> u16 {
    let negative = bits & 0x8000 != 0;
    let magnitude = bits & 0x7fff;
    match (up, negative) {
        (true, false) | (false, true) => bits + 1, // away from zero
        (true, true) if magnitude == 0 => 0x0001,
        (false, false) if magnitude == 0 => 0x8001,
        _ => bits - 1, // toward zero
    }
}

/// Rounds `x` to one of its two 16-bit neighbours, up with probability equal to its distance
/// from the lower one over the gap; `random` supplies the uniform draw. Exact and non-finite
/// values are rounded to nearest.
pub fn round_stochastic(x: f32, dtype: Dtype, random: u32) -> u16 {
    let nearest = nearest_bits16(x, dtype);
    let nearest_value = to_f32_bits16(nearest, dtype);
    if !x.is_finite() || !nearest_value.is_finite() || nearest_value == x {
        return nearest;
    }
    let other = neighbour_bits16(nearest, nearest_value < x);
    let other_value = to_f32_bits16(other, dtype);
    if !other_value.is_finite() {
        return nearest;
    }
    let (lo, hi, lo_bits, hi_bits) = if nearest_value < other_value {
        (nearest_value, other_value, nearest, other)
    } else {
        (other_value, nearest_value, other, nearest)
    };
    let p_up = (x as f64 - lo as f64) / (hi as f64 - lo as f64);
    let u = (random >> 8) as f64 * (1.0 / 16777216.0); // 24-bit uniform in [0, 1)
    if u < p_up {
        hi_bits
    } else {
        lo_bits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stochastic_rounding_is_unbiased_and_stays_between_neighbours() {
        for dtype in [Dtype::F16, Dtype::Bf16] {
            for &x in &[1.0f32 + 1.0 / 3.0, -2.7182817, 3.0e-6, -7.1e-5, 1234.567] {
                let mut sum = 0f64;
                let trials = 20000u32;
                for t in 0..trials {
                    let r = rng::philox4x32_10([t, 0, 0, 9], [1, 2])[0];
                    let bits = round_stochastic(x, dtype, r);
                    let v = to_f32_bits16(bits, dtype) as f64;
                    sum += v;
                    let a = to_f32_bits16(neighbour_bits16(nearest_bits16(x, dtype), true), dtype);
                    let b = to_f32_bits16(neighbour_bits16(nearest_bits16(x, dtype), false), dtype);
                    assert!(v >= a.min(b) as f64 && v <= a.max(b) as f64);
                }
                let mean = sum / trials as f64;
                let ulp = (to_f32_bits16(neighbour_bits16(nearest_bits16(x, dtype), true), dtype)
                    - to_f32_bits16(nearest_bits16(x, dtype), dtype))
                .abs() as f64;
                assert!((mean - x as f64).abs() < 0.02 * ulp, "{dtype:?} {x}: mean {mean}");
            }
            // Representable values are kept exactly.
            assert_eq!(round_stochastic(1.5, dtype, u32::MAX), nearest_bits16(1.5, dtype));
        }
    }

    #[test]
    fn load_and_store_round_trip() {
        let vals = [1.0f32, -0.5, 3.25, 65504.0];
        for dtype in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
            let mut raw = vec![0u8; vals.len() * dtype.size()];
            unsafe {
                store(raw.as_mut_ptr(), dtype, 0, &vals, Rounding::NearestEven);
                let mut back = [0f32; 4];
                load(raw.as_ptr(), dtype, 0, &mut back, 2.0);
                for (b, v) in back.iter().zip(vals) {
                    let expect = to_f32_nearest(v, dtype) * 2.0;
                    assert_eq!(*b, expect);
                }
            }
        }
    }

    fn to_f32_nearest(x: f32, dtype: Dtype) -> f32 {
        match dtype {
            Dtype::F32 => x,
            _ => to_f32_bits16(nearest_bits16(x, dtype), dtype),
        }
    }
}
