//! Eight f32 lanes, with two implementations of the same operations: `Portable` (plain arrays)
//! and, on x86-64, `Avx` (one 256-bit register). Kernels are generic over `Lanes`, so the
//! vector code is explicit rather than left to the auto-vectorizer, and both builds execute the
//! same IEEE operations in the same order: they give the same bits. `mul_add` is one fused
//! multiply-add (one rounding) in both.

pub type F8 = [f32; 8];

pub trait Lanes: Copy {
    type V: Copy;
    fn splat(x: f32) -> Self::V;
    fn load(a: &F8) -> Self::V;
    fn store(v: Self::V, out: &mut F8);
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
    fn to_array(v: Self::V) -> F8 {
        let mut out = [0.0; 8];
        Self::store(v, &mut out);
        out
    }
    /// Hints that the cache line at `p` will be read soon. Any address is allowed: a
    /// prefetch never faults and changes no result.
    #[inline(always)]
    fn prefetch(_p: *const u8) {}
}

/// Plain arrays: any target.
#[derive(Clone, Copy)]
pub struct Portable;

impl Lanes for Portable {
    type V = F8;
    #[inline(always)]
    fn splat(x: f32) -> F8 {
        [x; 8]
    }
    #[inline(always)]
    fn load(a: &F8) -> F8 {
        *a
    }
    #[inline(always)]
    fn store(v: F8, out: &mut F8) {
        *out = v;
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

#[cfg(target_arch = "x86_64")]
pub use avx::Avx;

#[cfg(target_arch = "x86_64")]
mod avx {
    use super::{Lanes, F8};
    use std::arch::x86_64::*;

    /// One AVX register. Only `avx_if_available` makes one, after checking the CPU, and its
    /// methods are only reached from functions compiled with AVX2 enabled.
    #[derive(Clone, Copy)]
    pub struct Avx(());

    impl Avx {
        pub fn if_available() -> Option<Avx> {
            super::super::tile::has_avx2().then_some(Avx(()))
        }
    }

    // SAFETY (every method): an `Avx` value exists only on CPUs with AVX2 (see `if_available`);
    // the intrinsics touch registers and the given arrays only.
    impl Lanes for Avx {
        type V = __m256;
        #[inline(always)]
        fn splat(x: f32) -> __m256 {
            unsafe { _mm256_set1_ps(x) }
        }
        #[inline(always)]
        fn prefetch(p: *const u8) {
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p as *const i8) }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx_and_portable_agree_bitwise() {
        let Some(_) = Avx::if_available() else { return };
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
        assert_eq!(bits(all::<Portable>(a, b)), bits(all::<Avx>(a, b)));
    }
}
