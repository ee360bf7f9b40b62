//! The element types kernels are generic over: `f32` for real models, `f64` for the
//! finite-difference tests.

use std::fmt::{Debug, Display};
use std::iter::Sum;
use std::ops::{AddAssign, DivAssign, MulAssign, SubAssign};

use ndarray::{LinalgScalar, ScalarOperand};

/// A floating-point element type a kernel can run in (`f32` or `f64`).
///
/// Besides `num_traits::Float` it provides the few things kernels need that the standard traits
/// lack: an error function and lossless-enough conversion from `f64` constants.
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
    /// The error function `erf(x) = 2/√π ∫₀ˣ e^{-t²} dt` (from `libm`).
    fn erf(self) -> Self;
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
    fn erf(self) -> Self {
        libm::erff(self)
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
    fn from_f64(v: f64) -> Self {
        v
    }
    fn as_f64(self) -> f64 {
        self
    }
}
