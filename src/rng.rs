//! Counter-based random numbers: Philox4x32-10 (Salmon et al., SC'11). Every value is a pure
//! function of (seed, step, stream, index), so the CPU and CUDA backends draw the same Ω for the
//! same seed, whatever the thread count or launch shape.

/// Which random stream a draw belongs to (the top byte of the last counter word).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Stream {
    /// Ω of the first moment (exp_avg).
    SketchMoment0 = 0,
    /// Ω of the second moment (exp_avg_sq).
    SketchMoment1 = 1,
    /// Stochastic rounding of f16/bf16 parameters.
    Rounding = 2,
}

impl Stream {
    pub fn sketch(moment: usize) -> Stream {
        if moment == 0 {
            Stream::SketchMoment0
        } else {
            Stream::SketchMoment1
        }
    }
}

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

#[inline(always)]
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = a as u64 * b as u64;
    ((p >> 32) as u32, p as u32)
}

/// Philox4x32 with 10 rounds.
#[inline]
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let [mut c0, mut c1, mut c2, mut c3] = counter;
    let [mut k0, mut k1] = key;
    for round in 0..10 {
        if round > 0 {
            k0 = k0.wrapping_add(W0);
            k1 = k1.wrapping_add(W1);
        }
        let (hi0, lo0) = mulhilo(M0, c0);
        let (hi1, lo1) = mulhilo(M1, c2);
        let next = [hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0];
        c0 = next[0];
        c1 = next[1];
        c2 = next[2];
        c3 = next[3];
    }
    [c0, c1, c2, c3]
}

/// The counter of draw `index` (a 64-bit block number) at `step` in `stream`.
#[inline]
pub fn counter(index: u64, step: u64, stream: Stream) -> [u32; 4] {
    [
        index as u32,
        (index >> 32) as u32,
        step as u32,
        ((step >> 32) as u32 & 0x00FF_FFFF) | ((stream as u32) << 24),
    ]
}

#[inline]
pub fn key(seed: u64) -> [u32; 2] {
    [seed as u32, (seed >> 32) as u32]
}

/// sin and cos of x. glibc computes both in one call (`f64::sin_cos` makes two); either is
/// accurate to within an ulp of f64, far below the f32 that Ω is rounded to.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[inline]
fn sin_cos(x: f64) -> (f64, f64) {
    extern "C" {
        fn sincos(x: f64, sin: *mut f64, cos: *mut f64);
    }
    let (mut s, mut c) = (0.0, 0.0);
    // SAFETY: glibc's libm (linked by std on this target) writes the two f64 it is given.
    unsafe { sincos(x, &mut s, &mut c) };
    (s, c)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
#[inline]
fn sin_cos(x: f64) -> (f64, f64) {
    x.sin_cos()
}

/// Box–Muller on two 32-bit words: two independent N(0, 1) values.
#[inline]
fn box_muller(a: u32, b: u32) -> (f64, f64) {
    let u1 = (a as f64 + 1.0) * (1.0 / 4294967296.0); // (0, 1]: ln never sees 0
    let u2 = b as f64 * (1.0 / 4294967296.0);
    let radius = (-2.0 * u1.ln()).sqrt();
    let (s, c) = sin_cos(std::f64::consts::TAU * u2);
    (radius * c, radius * s)
}

/// Ω for one moment, transposed: row l (0 ≤ l < k) holds column l of the n×k Gaussian matrix,
/// rows `stride` apart, padding after column n left untouched. Element (j, l) is normal number
/// j % 4 of Philox block (index = l·2³² + j / 4) at (seed, step, stream).
pub fn fill_omega_transposed(
    seed: u64,
    step: u64,
    stream: Stream,
    n: usize,
    k: usize,
    stride: usize,
    out: &mut [f32],
) {
    for l in 0..k {
        fill_omega_columns(seed, step, stream, l, 0, &mut out[l * stride..l * stride + n]);
    }
}

/// Elements (first .. first + out.len(), l) of Ω into `out`, `first` a multiple of 4: the
/// values `fill_omega_transposed` puts there (so pieces of Ω can be drawn in parallel).
pub fn fill_omega_columns(seed: u64, step: u64, stream: Stream, l: usize, first: usize, out: &mut [f32]) {
    debug_assert!(first % 4 == 0);
    let key = key(seed);
    for (i, chunk) in out.chunks_mut(4).enumerate() {
        let index = ((l as u64) << 32) | (first / 4 + i) as u64;
        let [a, b, c, d] = philox4x32_10(counter(index, step, stream), key);
        let (z0, z1) = box_muller(a, b);
        let (z2, z3) = box_muller(c, d);
        for (dst, z) in chunk.iter_mut().zip([z0, z1, z2, z3]) {
            *dst = z as f32;
        }
    }
}

/// Omega as an n×k row-major f64 matrix (for references and tests).
pub fn omega(seed: u64, step: u64, moment: usize, n: usize, k: usize) -> Vec<f64> {
    let mut t = vec![0f32; n * k];
    fill_omega_transposed(seed, step, Stream::sketch(moment), n, k, n, &mut t);
    let mut out = vec![0f64; n * k];
    for j in 0..n {
        for l in 0..k {
            out[j * k + l] = t[l * n + j] as f64;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_call_sin_cos_equals_sin_and_cos() {
        for i in 0..200_000u32 {
            let x = std::f64::consts::TAU * (philox4x32_10([i, 0, 0, 0], [9, 9])[0] as f64 / 4294967296.0);
            let (s, c) = sin_cos(x);
            assert_eq!((s.to_bits(), c.to_bits()), (x.sin().to_bits(), x.cos().to_bits()), "x = {x}");
        }
    }

    #[test]
    fn omega_pieces_equal_the_whole() {
        let (n, k) = (37, 3);
        let mut whole = vec![0f32; n * k];
        fill_omega_transposed(5, 11, Stream::SketchMoment1, n, k, n, &mut whole);
        for l in 0..k {
            for first in (0..n).step_by(8) {
                let mut piece = vec![0f32; 8.min(n - first)];
                fill_omega_columns(5, 11, Stream::SketchMoment1, l, first, &mut piece);
                assert_eq!(piece, whole[l * n + first..l * n + first + piece.len()]);
            }
        }
    }

    #[test]
    fn philox_known_answers() {
        // Known-answer vectors of the Random123 distribution (kat_vectors, philox4x32_10).
        assert_eq!(philox4x32_10([0, 0, 0, 0], [0, 0]), [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
        assert_eq!(
            philox4x32_10([!0, !0, !0, !0], [!0, !0]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox4x32_10([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0]),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn omega_is_standard_normal_and_depends_on_every_input() {
        let (n, k) = (1000, 8);
        let w = omega(7, 3, 0, n, k);
        let mean = w.iter().sum::<f64>() / w.len() as f64;
        let var = w.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / w.len() as f64;
        assert!(mean.abs() < 0.05, "mean {mean}");
        assert!((var - 1.0).abs() < 0.06, "variance {var}");
        assert!(w.iter().all(|x| x.is_finite()));
        assert_ne!(w, omega(8, 3, 0, n, k));
        assert_ne!(w, omega(7, 4, 0, n, k));
        assert_ne!(w, omega(7, 3, 1, n, k));
        // Column l does not depend on k: widening the sketch keeps the first columns.
        let wide = omega(7, 3, 0, n, k + 3);
        for j in 0..n {
            for l in 0..k {
                assert_eq!(w[j * k + l], wide[j * (k + 3) + l]);
            }
        }
    }
}
