//! Eight f32 lanes, with two implementations of the same operations: `Portable` (plain arrays)
//! and, on x86-64, `Avx` (one 256-bit register). Kernels are generic over `Lanes`, so the
//! vector code is explicit rather than left to the auto-vectorizer, and both builds execute the
//! same IEEE operations in the same order: they give the same bits. `mul_add` is one fused
//! multiply-add (one rounding) in both. The arithmetic alone is the trait `Arith`, which the
//! sixteen-lane `wide::Zmm` implements too, so helpers written over it serve both widths.

pub type F8 = [f32; 8];
/// Eight bf16 values, as their bits.
pub type H8 = [u16; 8];

/// `bf16::from_f32(x).to_bits()` (round to nearest even; NaN stays NaN, quieted) without
/// branches, so a loop of it vectorizes.
#[inline(always)]
pub fn bf16_nearest_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16;
    let quiet_nan = (b >> 16) | 0x0040;
    (if (b & 0x7fff_ffff) > 0x7f80_0000 { quiet_nan } else { rounded }) as u16
}

/// The arithmetic of the kernels on one vector of lanes, whatever its width.
pub trait Arith: Copy {
    type V: Copy;
    fn splat(x: f32) -> Self::V;
    fn add(a: Self::V, b: Self::V) -> Self::V;
    fn mul(a: Self::V, b: Self::V) -> Self::V;
    /// a·b + c, rounded once.
    fn mul_add(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    fn div(a: Self::V, b: Self::V) -> Self::V;
    fn sqrt(a: Self::V) -> Self::V;
    /// Lanes of `x` below zero replaced by `fill`.
    fn fill_negative(x: Self::V, fill: Self::V) -> Self::V;
    /// |x| where x < 0, else 0.
    fn negative_magnitude(x: Self::V) -> Self::V;
    /// 1 where x < 0, else 0.
    fn negative_indicator(x: Self::V) -> Self::V;
    /// 1, −1 or 0 by the sign of x (0 for ±0 and NaN).
    fn sign(x: Self::V) -> Self::V;
    fn zero() -> Self::V {
        Self::splat(0.0)
    }
}

/// Eight lanes: the arithmetic, and loads and stores of one group of eight columns.
pub trait Lanes: Arith {
    /// Whether the passes read bf16 tensors where they lie with this implementation. The
    /// portable fallback converts rows into f32 copies instead (same bits), which keeps the
    /// kernels compiled for it to one packing.
    const PACKED_BF16: bool;
    /// Whether the CPU also runs the sixteen-lane AVX-512 kernels (`wide`).
    const WIDE: bool = false;
    fn load(a: &F8) -> Self::V;
    fn store(v: Self::V, out: &mut F8);
    /// Eight bf16 values widened to f32 (exact).
    fn load_bf16(a: &H8) -> Self::V;
    /// Rounded to bf16 as `bf16_nearest_bits` (nearest even; NaN stays NaN, quieted).
    fn store_bf16(v: Self::V, out: &mut H8);
    fn to_array(v: Self::V) -> F8 {
        let mut out = [0.0; 8];
        Self::store(v, &mut out);
        out
    }
    /// Hints that the cache line at `p` will be read soon, bringing it into L2: into L1 the
    /// sketch's prefetched rows pushed out the X and V that its row blocks share (4096² on
    /// two threads, Zen 4: the sketch pass in ~0.85× the time with L2, 6 of 6 alternating runs).
    /// Any address is allowed: a prefetch never faults and changes no result.
    #[inline(always)]
    fn prefetch(_p: *const u8) {}
}

/// Plain arrays: any target.
#[derive(Clone, Copy)]
pub struct Portable;

impl Arith for Portable {
    type V = F8;
    #[inline(always)]
    fn splat(x: f32) -> F8 {
        [x; 8]
    }
    #[inline(always)]
    fn add(a: F8, b: F8) -> F8 {
        let mut o = a;
        for t in 0..8 {
            o[t] = a[t] + b[t];
        }
        o
    }
    #[inline(always)]
    fn mul(a: F8, b: F8) -> F8 {
        let mut o = a;
        for t in 0..8 {
            o[t] = a[t] * b[t];
        }
        o
    }
    #[inline(always)]
    fn mul_add(a: F8, b: F8, c: F8) -> F8 {
        let mut o = c;
        for t in 0..8 {
            o[t] = a[t].mul_add(b[t], c[t]);
        }
        o
    }
    #[inline(always)]
    fn div(a: F8, b: F8) -> F8 {
        let mut o = a;
        for t in 0..8 {
            o[t] = a[t] / b[t];
        }
        o
    }
    #[inline(always)]
    fn sqrt(a: F8) -> F8 {
        let mut o = a;
        for t in 0..8 {
            o[t] = a[t].sqrt();
        }
        o
    }
    #[inline(always)]
    fn fill_negative(x: F8, fill: F8) -> F8 {
        std::array::from_fn(|t| if x[t] < 0.0 { fill[t] } else { x[t] })
    }
    #[inline(always)]
    fn negative_magnitude(x: F8) -> F8 {
        std::array::from_fn(|t| if x[t] < 0.0 { 0.0 - x[t] } else { 0.0 })
    }
    #[inline(always)]
    fn negative_indicator(x: F8) -> F8 {
        std::array::from_fn(|t| if x[t] < 0.0 { 1.0 } else { 0.0 })
    }
    #[inline(always)]
    fn sign(x: F8) -> F8 {
        std::array::from_fn(|t| {
            if x[t] > 0.0 {
                1.0
            } else if x[t] < 0.0 {
                -1.0
            } else {
                0.0
            }
        })
    }
}

impl Lanes for Portable {
    const PACKED_BF16: bool = false;
    #[inline(always)]
    fn load(a: &F8) -> F8 {
        *a
    }
    #[inline(always)]
    fn store(v: F8, out: &mut F8) {
        *out = v;
    }
    #[inline(always)]
    fn load_bf16(a: &H8) -> F8 {
        std::array::from_fn(|t| f32::from_bits((a[t] as u32) << 16))
    }
    #[inline(always)]
    fn store_bf16(v: F8, out: &mut H8) {
        *out = std::array::from_fn(|t| bf16_nearest_bits(v[t]));
    }
}

#[cfg(target_arch = "x86_64")]
pub use avx::Avx;

#[cfg(target_arch = "x86_64")]
mod avx {
    use super::{Arith, Lanes, F8, H8};
    use std::arch::x86_64::*;

    /// One AVX register. Its methods are only reached from functions compiled with AVX2
    /// enabled, which run only where the CPU has it (`isa::active`). `WIDE`: the build for
    /// CPUs with AVX-512 too, whose kernels may also run sixteen lanes at a time (`wide`).
    #[derive(Clone, Copy)]
    pub struct Avx<const WIDE: bool>(());

    // SAFETY (every method): reached only on CPUs with AVX2 (see above); the intrinsics touch
    // registers and the given arrays only.
    impl<const WIDE: bool> Arith for Avx<WIDE> {
        type V = __m256;
        #[inline(always)]
        fn splat(x: f32) -> __m256 {
            unsafe { _mm256_set1_ps(x) }
        }
        #[inline(always)]
        fn add(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_add_ps(a, b) }
        }
        #[inline(always)]
        fn mul(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_mul_ps(a, b) }
        }
        #[inline(always)]
        fn mul_add(a: __m256, b: __m256, c: __m256) -> __m256 {
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        fn div(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_div_ps(a, b) }
        }
        #[inline(always)]
        fn sqrt(a: __m256) -> __m256 {
            unsafe { _mm256_sqrt_ps(a) }
        }
        #[inline(always)]
        fn fill_negative(x: __m256, fill: __m256) -> __m256 {
            unsafe { _mm256_blendv_ps(x, fill, _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_setzero_ps())) }
        }
        #[inline(always)]
        fn negative_magnitude(x: __m256) -> __m256 {
            unsafe {
                let zero = _mm256_setzero_ps();
                let negative = _mm256_cmp_ps::<_CMP_LT_OQ>(x, zero);
                _mm256_and_ps(negative, _mm256_sub_ps(zero, x))
            }
        }
        #[inline(always)]
        fn negative_indicator(x: __m256) -> __m256 {
            unsafe { _mm256_and_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_setzero_ps()), _mm256_set1_ps(1.0)) }
        }
        #[inline(always)]
        fn sign(x: __m256) -> __m256 {
            unsafe {
                let zero = _mm256_setzero_ps();
                let positive = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(x, zero), _mm256_set1_ps(1.0));
                let negative = _mm256_and_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(x, zero), _mm256_set1_ps(-1.0));
                _mm256_or_ps(positive, negative)
            }
        }
    }

    impl<const WIDE: bool> Lanes for Avx<WIDE> {
        const PACKED_BF16: bool = true;
        const WIDE: bool = WIDE;
        #[inline(always)]
        fn prefetch(p: *const u8) {
            unsafe { _mm_prefetch::<_MM_HINT_T1>(p as *const i8) }
        }
        #[inline(always)]
        fn load(a: &F8) -> __m256 {
            unsafe { _mm256_loadu_ps(a.as_ptr()) }
        }
        #[inline(always)]
        fn store(v: __m256, out: &mut F8) {
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) }
        }
        #[inline(always)]
        fn load_bf16(a: &H8) -> __m256 {
            unsafe {
                let halves = _mm_loadu_si128(a.as_ptr() as *const __m128i);
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(halves)))
            }
        }
        #[inline(always)]
        fn store_bf16(v: __m256, out: &mut H8) {
            // bf16_nearest_bits on eight lanes: add 0x7fff plus the kept part's lowest
            // bit and keep the top half; NaN (magnitude above infinity's) keeps its top half
            // with the quiet bit set.
            unsafe {
                let b = _mm256_castps_si256(v);
                let odd = _mm256_and_si256(_mm256_srli_epi32::<16>(b), _mm256_set1_epi32(1));
                let rounded = _mm256_srli_epi32::<16>(_mm256_add_epi32(b, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff))));
                let quiet_nan = _mm256_or_si256(_mm256_srli_epi32::<16>(b), _mm256_set1_epi32(0x0040));
                let magnitude = _mm256_and_si256(b, _mm256_set1_epi32(0x7fff_ffff));
                let nan = _mm256_cmpgt_epi32(magnitude, _mm256_set1_epi32(0x7f80_0000));
                let bits = _mm256_blendv_epi8(rounded, quiet_nan, nan);
                // Every lane is below 2^16: packing with unsigned saturation keeps them whole.
                let packed = _mm_packus_epi32(_mm256_castsi256_si128(bits), _mm256_extracti128_si256::<1>(bits));
                _mm_storeu_si128(out.as_mut_ptr() as *mut __m128i, packed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx_and_portable_agree_bitwise() {
        if crate::cpu::isa::CpuKernels::supported() < crate::cpu::isa::CpuKernels::Avx2 {
            return;
        }
        let a: F8 = [1.5, -2.25, 0.0, -0.0, 3.0e-38, -7.0, f32::INFINITY, 1e30];
        let b: F8 = [0.1, 3.0, -1.0, 2.0, 5.0, -0.5, 2.0, 1e-30];
        fn all<S: Lanes>(a: F8, b: F8) -> Vec<F8> {
            let (x, y) = (S::load(&a), S::load(&b));
            vec![
                S::to_array(S::add(x, y)),
                S::to_array(S::mul(x, y)),
                S::to_array(S::mul_add(x, y, x)),
                S::to_array(S::div(x, y)),
                S::to_array(S::sqrt(S::mul(x, x))),
                S::to_array(S::fill_negative(x, y)),
                S::to_array(S::negative_magnitude(x)),
                S::to_array(S::negative_indicator(x)),
                S::to_array(S::sign(x)),
            ]
        }
        let bits = |v: Vec<F8>| v.iter().flatten().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(all::<Portable>(a, b)), bits(all::<Avx<false>>(a, b)));
    }

    /// bf16 rounding (`bf16_nearest_bits`, and both implementations' loads and stores) against
    /// the half crate, on values that round up, down and to even, overflow to infinity, NaNs
    /// (signalling and quiet) and 200,000 random bit patterns.
    #[test]
    fn bf16_loads_and_stores_match_the_half_crate() {
        // Whole groups of eight: 24 special values, then random ones.
        let specials: [u32; 24] = [
            0x3f80_8000, 0x3f81_8000, 0x3f80_7fff, 0x3f80_8001, 0x7f7f_ffff, 0xff7f_8000, 0x7f80_0000, 0x7f80_0001,
            0xffc0_0000, 0x7fbf_ffff, 0x0000_8000, 0x8001_8000, 0x0000_0000, 0x8000_0000, 0x0080_7fff, 0xc2f6_e979,
            0xff80_0000, 0x7fc0_0000, 0xffff_ffff, 0x0001_8000, 0x0000_0001, 0x807f_ffff, 0x4040_8000, 0x4040_8001,
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut random = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u32
        };
        let values: Vec<f32> = specials.iter().map(|&b| f32::from_bits(b)).chain((0..200_000).map(|_| f32::from_bits(random()))).collect();
        for &x in &values {
            assert_eq!(bf16_nearest_bits(x), half::bf16::from_f32(x).to_bits(), "{:#010x}", x.to_bits());
        }
        fn round_trip<S: Lanes>(values: &[f32]) -> (Vec<u16>, Vec<u32>) {
            assert_eq!(values.len() % 8, 0, "whole groups");
            let mut stored = Vec::new();
            let mut loaded = Vec::new();
            for chunk in values.chunks_exact(8) {
                let mut h: H8 = [0; 8];
                S::store_bf16(S::load(chunk.try_into().unwrap()), &mut h);
                stored.extend_from_slice(&h);
                loaded.extend(S::to_array(S::load_bf16(&h)).iter().map(|x| x.to_bits()));
            }
            (stored, loaded)
        }
        let expected: Vec<u16> = values.iter().map(|&x| half::bf16::from_f32(x).to_bits()).collect();
        let widened: Vec<u32> = expected.iter().map(|&h| half::bf16::from_bits(h).to_f32().to_bits()).collect();
        let portable = round_trip::<Portable>(&values);
        assert_eq!(portable, (expected.clone(), widened.clone()));
        #[cfg(target_arch = "x86_64")]
        if crate::cpu::isa::CpuKernels::supported() >= crate::cpu::isa::CpuKernels::Avx2 {
            // SAFETY: the CPU has AVX2 (checked above).
            assert_eq!(unsafe { avx_round_trip(&values) }, (expected, widened));
        }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        unsafe fn avx_round_trip(values: &[f32]) -> (Vec<u16>, Vec<u32>) {
            round_trip::<Avx<false>>(values)
        }
    }
}
