//! The element types kernels are generic over: `f32` for real models, `f64` for the
//! finite-difference tests.

use std::fmt::{Debug, Display};
use std::iter::Sum;
use std::ops::{AddAssign, DivAssign, MulAssign, SubAssign};

use ndarray::{LinalgScalar, ScalarOperand};

/// A floating-point element type a kernel can run in (`f32` or `f64`).
///
/// Besides `num_traits::Float` it provides the few things kernels need that the standard traits
/// lack: an error function, an exponential that element-wise loops can vectorise, and
/// lossless-enough conversion from `f64` constants.
pub trait Float:
    num_traits::Float
    + num_traits::FloatConst
    + LinalgScalar
    + ScalarOperand
    + Sum
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + Default
    + Debug
    + Display
    + Send
    + Sync
    + 'static
{
    /// The error function `erf(x) = 2/√π ∫₀ˣ e^{-t²} dt`.
    ///
    /// `f64`: `libm`'s `erf`. `f32`: the branch-free rational approximation of Eigen and XLA
    /// (JAX's CPU `erf`), `erf(x) ≈ x·P(x²)/Q(x²)` on `x` clamped to `[−4, 4]`, within 5e-7 of the
    /// exact value, which element-wise loops vectorise (`libm`'s `erff` branches and calls
    /// `expf`, ~5 ns per element).
    fn erf(self) -> Self;
    /// `eˣ` in a form element-wise loops vectorise.
    ///
    /// `f64`: the standard library's `exp`. `f32`: `2ⁿ·e^r` with `n = round(x·log₂e)` and a
    /// degree-7 polynomial for `e^r` on `|r| ≤ ln2/2` (Cephes' `expf`), within 2 ulp; `0` below
    /// `−87.34` (where `eˣ` is below the smallest normal `f32`), `+∞` above `88.73`, NaN for NaN.
    fn exp_vec(self) -> Self;
    /// Converts an `f64` (a constant or a statistic) to this type, rounding to nearest.
    fn from_f64(v: f64) -> Self;
    /// Widens to `f64`.
    fn as_f64(self) -> f64;
    /// Converts a count (a row length, a batch size) to this type.
    fn from_usize(n: usize) -> Self {
        Self::from_f64(n as f64)
    }
}

impl Float for f32 {
    #[inline(always)]
    fn erf(self) -> Self {
        erf_f32(self)
    }
    #[inline(always)]
    fn exp_vec(self) -> Self {
        exp_f32(self)
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn as_f64(self) -> f64 {
        self as f64
    }
}

impl Float for f64 {
    fn erf(self) -> Self {
        libm::erf(self)
    }
    #[inline(always)]
    fn exp_vec(self) -> Self {
        self.exp()
    }
    fn from_f64(v: f64) -> Self {
        v
    }
    fn as_f64(self) -> f64 {
        self
    }
}

/// Eigen's/XLA's `f32` erf: `x·P(x²)/Q(x²)` on `x` clamped to `[−4, 4]` (beyond, `erf` is `±1` in
/// `f32`), then clamped to `[−1, 1]`. Branch-free, so loops over slices vectorise.
#[inline(always)]
fn erf_f32(x: f32) -> f32 {
    // odd numerator P (coefficients of x¹, x³, .., x¹³) and even denominator Q (x⁰, .., x⁸),
    // highest degree first
    const P: [f32; 7] = [
        -2.726_142_4e-10,
        2.770_681_5e-8,
        -2.101_024e-6,
        -5.692_506_2e-5,
        -7.349_906_4e-4,
        -2.954_6e-3,
        -1.609_603_3e-2,
    ];
    const Q: [f32; 5] = [
        -1.456_607_15e-5,
        -2.133_740_5e-4,
        -1.682_827e-3,
        -7.373_329_3e-3,
        -1.426_473_9e-2,
    ];
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let p = P[1..].iter().fold(P[0], |acc, &c| acc * x2 + c);
    let q = Q[1..].iter().fold(Q[0], |acc, &c| acc * x2 + c);
    (x * p / q).clamp(-1.0, 1.0)
}

/// Cephes' `expf`: `eˣ = 2ⁿ·e^r`, `n = round(x·log₂e)`, `r = x − n·ln2` (ln2 split in two so
/// `n·ln2` is exact), `e^r ≈ 1 + r + r²·P(r)`. Branch-free (selects, not jumps), so loops over
/// slices vectorise.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4; // = 0.693359375 (9 significant bits, so n·LN2_HI is exact)
    const LN2_LO: f32 = -2.121_944_4e-4; // ln2 − LN2_HI
    // 1.5·2²³: adding and subtracting it rounds to the nearest integer (|t| < 2²²)
    const ROUND: f32 = 12_582_912.0;
    const P: [f32; 6] = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_66,
        0.5,
    ];
    // on [−87.34, 88.72] the result is a normal f32 and n ∈ [−126, 128]; outside, the selects
    // below give 0 and +∞
    let xc = x.clamp(-87.336_55, 88.722_83);
    let n = (xc * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let p = P[1..].iter().fold(P[0], |acc, &c| acc * r + c);
    let er = p * r * r + r + 1.0;
    // 2ⁿ as 2^⌊n/2⌋·2^(n−⌊n/2⌋), both factors normal for n ∈ [−126, 128]
    let (n, pow2) = (n as i32, |e: i32| f32::from_bits(((e + 127) as u32) << 23));
    let y = er * pow2(n >> 1) * pow2(n - (n >> 1));
    if x < -87.336_55 {
        0.0
    } else if x > 88.722_84 {
        f32::INFINITY
    } else {
        y
    }
}

#[cfg(test)]
mod tests {
    use super::{erf_f32, exp_f32};

    /// Evenly spaced points plus a few special values.
    fn grid(lo: f32, hi: f32, n: usize) -> impl Iterator<Item = f32> {
        (0..=n).map(move |i| lo + (hi - lo) * i as f32 / n as f32)
    }

    #[test]
    fn erf_f32_is_within_5e7_of_f64() {
        let mut worst = 0.0f64;
        for x in grid(-6.0, 6.0, 600_000).chain([0.0, -0.0, 1e-30, -1e-30, 1e30, -1e30]) {
            let e = (erf_f32(x) as f64 - libm::erf(x as f64)).abs();
            worst = worst.max(e);
        }
        // 5e-7 is ~8 ulp of values near ±1, where the error is largest
        assert!(worst < 5e-7, "max |erf_f32 − erf| = {worst:e}");
        assert_eq!(erf_f32(f32::INFINITY), 1.0);
        assert_eq!(erf_f32(f32::NEG_INFINITY), -1.0);
        assert!(erf_f32(f32::NAN).is_nan());
        // odd, and relative accuracy near zero (where erf(x) ≈ 2x/√π)
        for x in grid(1e-6, 1e-3, 1000) {
            assert_eq!(erf_f32(-x), -erf_f32(x));
            let rel = (erf_f32(x) as f64 / libm::erf(x as f64) - 1.0).abs();
            assert!(rel < 1e-6, "relative error {rel:e} at {x}");
        }
    }

    #[test]
    fn exp_f32_is_within_2_ulp() {
        let mut worst = 0.0f64;
        for x in grid(-87.0, 88.7, 2_000_000).chain(grid(-1.0, 1.0, 100_000)) {
            let exact = (x as f64).exp();
            let ulp = (exact as f32).abs() as f64 * f32::EPSILON as f64;
            worst = worst.max((exp_f32(x) as f64 - exact).abs() / ulp);
        }
        assert!(worst <= 2.0, "max error {worst} ulp");
        // near the bottom the result is subnormal-bound: relative error only
        for x in grid(-87.336, -87.0, 10_000) {
            let rel = (exp_f32(x) as f64 / (x as f64).exp() - 1.0).abs();
            assert!(rel < 1e-6, "relative error {rel:e} at {x}");
        }
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(-100.0), 0.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(100.0), f32::INFINITY);
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert!(exp_f32(f32::NAN).is_nan());
        for x in [88.0f32, 88.5, 88.7, 88.722_83] {
            let rel = (exp_f32(x) as f64 / (x as f64).exp() - 1.0).abs();
            assert!(rel < 2.5e-7, "relative error {rel:e} at {x}");
        }
    }
}
