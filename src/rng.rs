//! Counter-based random numbers: Philox4x32-10 (Salmon et al., SC'11), turned into normals by
//! Box–Muller in plain f64 arithmetic that src/cuda/kernels.cu repeats operation for operation.
//! Every value is a pure function of (seed, step, stream, index), so the CPU and CUDA backends
//! draw the same bits of Ω for the same seed, whatever the thread count or launch shape.

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

/// Coefficients of the Taylor series of sin and cos on [0, π/4] (1/n!, alternating; the
/// first omitted terms are below 1e-19 there). Written out so that src/cuda/kernels.cu uses
/// the very same doubles.
const SIN_COEFFS: [f64; 9] = [
    1.0,
    -0.16666666666666666,
    0.008333333333333333,
    -0.0001984126984126984,
    2.7557319223985893e-06,
    -2.505210838544172e-08,
    1.6059043836821613e-10,
    -7.647163731819816e-13,
    2.8114572543455206e-15,
];
const COS_COEFFS: [f64; 10] = [
    1.0,
    -0.5,
    0.041666666666666664,
    -0.001388888888888889,
    2.48015873015873e-05,
    -2.755731922398589e-07,
    2.08767569878681e-09,
    -1.1470745597729725e-11,
    4.779477332387385e-14,
    -1.5619206968586225e-16,
];
/// 1/(2n + 1) for n = 0..11: atanh(s)/s = Σ s²ⁿ/(2n + 1), whose first omitted term is below
/// 1e-18 of the sum for |s| ≤ 0.172.
const ATANH_COEFFS: [f64; 12] = [
    1.0,
    0.3333333333333333,
    0.2,
    0.14285714285714285,
    0.1111111111111111,
    0.09090909090909091,
    0.07692307692307693,
    0.06666666666666667,
    0.058823529411764705,
    0.05263157894736842,
    0.047619047619047616,
    0.043478260869565216,
];
/// π/4 / 2²⁹: one step of the within-octant angle.
const OCTANT_STEP: f64 = 1.4629180792671596e-09;
/// ln 2 in two parts; the first has trailing zero bits, so e·LN2_HI is exact for |e| < 2¹¹.
const LN2_HI: f64 = 0.6931471803691238;
const LN2_LO: f64 = 1.9082149292705877e-10;

/// sin and cos of 2π·b/2³², to about an ulp of f64. The angle is a whole number of 2⁻³² turns,
/// so its octant and the angle inside it come from b's bits exactly; only a short polynomial on
/// [0, π/4] is left. Plain multiplies and adds in a fixed order (no fused multiply-add), so
/// every machine and the CUDA kernel compute the same bits.
#[inline(always)]
pub fn sin_cos_turn(b: u32) -> (f64, f64) {
    let octant = b >> 29;
    let inside = b & ((1 << 29) - 1);
    // Odd octants measure their angle from the octant's far end: θ = (octant + 1)·π/4 − x.
    let steps = if octant & 1 == 1 { (1u32 << 29) - inside } else { inside };
    let x = steps as f64 * OCTANT_STEP;
    let x2 = x * x;
    let mut sin = SIN_COEFFS[8];
    for &c in SIN_COEFFS[..8].iter().rev() {
        sin = sin * x2 + c;
    }
    let sin = sin * x;
    let mut cos = COS_COEFFS[9];
    for &c in COS_COEFFS[..9].iter().rev() {
        cos = cos * x2 + c;
    }
    // Octants 1, 2, 5, 6 exchange sine and cosine; sine is negative in 4–7, cosine in 2–5.
    let (s, c) = if (octant + 1) & 2 != 0 { (cos, sin) } else { (sin, cos) };
    let s = if octant & 4 != 0 { -s } else { s };
    let c = if (octant + 2) & 4 != 0 { -c } else { c };
    (s, c)
}

/// ln((a + 1)/2³²), in (−32·ln 2, 0], to about an ulp: a + 1 = 2^e·m with m in [√½, √2],
/// ln m = 2·atanh((m − 1)/(m + 1)) by its series. Plain arithmetic, as `sin_cos_turn`.
#[inline(always)]
pub fn ln_unit(a: u32) -> f64 {
    let x = a as f64 + 1.0; // exact: 1 ..= 2³²
    let bits = x.to_bits();
    let mut e = ((bits >> 52) as i64) - 1023;
    let mut m = f64::from_bits((bits & ((1u64 << 52) - 1)) | (1023u64 << 52)); // [1, 2)
    if m > std::f64::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut series = ATANH_COEFFS[11];
    for &c in ATANH_COEFFS[..11].iter().rev() {
        series = series * s2 + c;
    }
    let ln_m = 2.0 * s * series;
    let k = (e - 32) as f64;
    k * LN2_HI + (k * LN2_LO + ln_m)
}

/// Box–Muller on two 32-bit words: two independent N(0, 1) values.
#[inline(always)]
pub fn box_muller(a: u32, b: u32) -> (f64, f64) {
    let radius = (-2.0 * ln_unit(a)).sqrt();
    let (s, c) = sin_cos_turn(b);
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
    debug_assert!(first.is_multiple_of(4));
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::isa::active() >= crate::cpu::isa::CpuKernels::Avx2 {
        // SAFETY: the CPU has AVX2 (`active` names no build it lacks).
        return unsafe { fill_omega_columns_avx2(seed, step, stream, l, first, out) };
    }
    fill_omega_columns_with(seed, step, stream, l, first, out)
}

/// The same code with AVX2 enabled, where its loops run four or eight lanes at a time. Only
/// plain f64 operations, no fused multiply-adds: the same bits as without AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn fill_omega_columns_avx2(seed: u64, step: u64, stream: Stream, l: usize, first: usize, out: &mut [f32]) {
    fill_omega_columns_with(seed, step, stream, l, first, out)
}

/// Normals per piece: Philox words for the whole piece first, then Box–Muller over them, two
/// loops without branches that the compiler can vectorize.
const OMEGA_BATCH: usize = 64;

#[inline(always)]
fn fill_omega_columns_with(seed: u64, step: u64, stream: Stream, l: usize, first: usize, out: &mut [f32]) {
    let key = key(seed);
    for (p, piece) in out.chunks_mut(OMEGA_BATCH).enumerate() {
        let block0 = (first + p * OMEGA_BATCH) / 4;
        let mut words = [0u32; OMEGA_BATCH];
        for (b, w) in words.chunks_exact_mut(4).enumerate() {
            let index = ((l as u64) << 32) | (block0 + b) as u64;
            w.copy_from_slice(&philox4x32_10(counter(index, step, stream), key));
        }
        let mut normals = [0f32; OMEGA_BATCH];
        for (z, w) in normals.chunks_exact_mut(2).zip(words.chunks_exact(2)) {
            let (z0, z1) = box_muller(w[0], w[1]);
            z[0] = z0 as f32;
            z[1] = z1 as f32;
        }
        piece.copy_from_slice(&normals[..piece.len()]);
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

    /// Against the standard library's sin, cos and ln (glibc here): within a few ulps of f64
    /// (1e-16 absolute more for sin and cos), over random words and the edges of every octant.
    #[test]
    fn turn_sine_cosine_and_unit_log_match_the_standard_library() {
        let mut words: Vec<u32> = (0..200_000u32).map(|i| philox4x32_10([i, 1, 2, 3], [4, 5])[0]).collect();
        for octant in 0..8u32 {
            let edge = octant << 29;
            words.extend([edge, edge.wrapping_add(1), edge.wrapping_sub(1), edge | (1 << 28)]);
        }
        words.extend([u32::MAX, 0, 1]);
        let close = |got: f64, want: f64, what: &str| {
            let tol = 4.0 * f64::EPSILON * want.abs() + 1e-16;
            assert!((got - want).abs() <= tol, "{what}: {got:e} vs {want:e}");
        };
        for &w in &words {
            // Reference: the nearest quarter turn taken off exactly (the turns are dyadic), the
            // rest (within ±π/4) through the standard library, the quarter by identities.
            let turns = w as f64 / 4294967296.0;
            let quarter = (4.0 * turns).round();
            let (rs, rc) = (std::f64::consts::TAU * (turns - quarter / 4.0)).sin_cos();
            let (want_s, want_c) = match quarter as u32 % 4 {
                0 => (rs, rc),
                1 => (rc, -rs),
                2 => (-rs, -rc),
                _ => (-rc, rs),
            };
            let (s, c) = sin_cos_turn(w);
            close(s, want_s, &format!("sin of word {w:#x}"));
            close(c, want_c, &format!("cos of word {w:#x}"));
            let want = ((w as f64 + 1.0) / 4294967296.0).ln();
            let got = ln_unit(w);
            assert!((got - want).abs() <= 4.0 * f64::EPSILON * want.abs(), "ln of word {w:#x}: {got:e} vs {want:e}");
        }
        assert_eq!(ln_unit(u32::MAX), 0.0);
        assert_eq!(sin_cos_turn(0), (0.0, 1.0));
    }

    /// The AVX2 build of the Ω loop (vectorized) and the portable one give the same bits.
    #[test]
    fn omega_does_not_depend_on_the_instruction_set() {
        for (n, first) in [(1000, 0), (37, 8), (64, 4), (3, 12)] {
            let (mut dispatched, mut portable) = (vec![0f32; n], vec![0f32; n]);
            fill_omega_columns(11, 5, Stream::SketchMoment0, 2, first, &mut dispatched);
            fill_omega_columns_with(11, 5, Stream::SketchMoment0, 2, first, &mut portable);
            assert_eq!(dispatched.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), portable.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
        }
    }

    #[test]
    fn series_coefficients_are_the_nearest_doubles() {
        for (n, &c) in ATANH_COEFFS.iter().enumerate() {
            assert_eq!(c, 1.0 / (2 * n + 1) as f64);
        }
        // 1/n! for n ≤ 18 rounded once (n! is exact in f64 up to 18!).
        let mut factorial = 1f64;
        for n in 0..=18u32 {
            if n > 0 {
                factorial *= n as f64;
            }
            let expect = if (n / 2) % 2 == 0 { 1.0 / factorial } else { -1.0 / factorial };
            let got = if n % 2 == 0 { COS_COEFFS[n as usize / 2] } else { SIN_COEFFS[n as usize / 2] };
            assert_eq!(got, expect, "1/{n}!");
        }
        assert_eq!(OCTANT_STEP, std::f64::consts::FRAC_PI_4 / (1u64 << 29) as f64);
        assert_eq!(LN2_HI.to_bits() & 0x1F_FFFF, 0, "e·LN2_HI must be exact");
        assert!(((LN2_HI + LN2_LO) - std::f64::consts::LN_2).abs() <= f64::EPSILON * 0.5);
    }

    /// The normals, rounded to f32, are those of Box–Muller with the standard library's ln, sin
    /// and cos (glibc here) in all but rare last-bit cases.
    #[test]
    fn normals_equal_box_muller_with_the_standard_library() {
        let (mut same, mut total) = (0usize, 0usize);
        for i in 0..100_000u32 {
            let [a, b, c, d] = philox4x32_10([i, 7, 0, 0], [1, 2]);
            for (x, y) in [(a, b), (c, d)] {
                let radius = (-2.0 * ((x as f64 + 1.0) / 4294967296.0).ln()).sqrt();
                let (s, co) = (std::f64::consts::TAU * (y as f64 / 4294967296.0)).sin_cos();
                let (z0, z1) = box_muller(x, y);
                for (got, want) in [(z0, radius * co), (z1, radius * s)] {
                    assert!((got - want).abs() <= 1e-14 * want.abs().max(1.0), "{got:e} vs {want:e}");
                    same += (got as f32 == want as f32) as usize;
                    total += 1;
                }
            }
        }
        eprintln!("{same} of {total} equal in f32");
        assert!(same as f64 >= 0.9999 * total as f64, "{same} of {total} equal in f32");
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
