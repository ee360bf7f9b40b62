//! RMSNorm over the last axis (Llama, SmolLM): [`rms_norm`] / [`rms_norm_dual`],
//! `y = γ⊙x̂` with `x̂ = x·r`, `r = (mean(x²) + ε)^(−1/2)`.
//!
//! It runs the LayerNorm core (`layer_norm::normalize`) without the mean subtraction:
//! `f64` statistics, `r` and `x̂` computed once per row and reused for all K directions.

use ndarray::{ArrayView1, Dimension, Ix1};

use super::layer_norm::{Affine, Kind, norm_reference, normalize};
use crate::{Dual, Float, Result};

/// RMSNorm over the last axis with a frozen `γ`.
///
/// `r = (mean(x²) + ε)^(−1/2)`, `x̂ = x·r`, `y = γ⊙x̂`; `ẏ = γ⊙r·(ẋ − x̂·mean(x̂⊙ẋ))`. A
/// symbolic-zero input tangent gives a symbolic-zero output. With ε = 0 a zero row is `0/0`.
///
/// # Shapes
/// - `x`: `[.., N]` (any rank ≥ 1), `gamma`: `[N]`
/// - output: `[.., N]`
///
/// # Errors
/// [`Error::InvalidArgument`](crate::Error::InvalidArgument) if `eps` is negative or not finite;
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) if `x` has rank 0 or its last axis is not the length of `gamma`.
pub fn rms_norm<F: Float, D: Dimension>(
    x: &Dual<F, D>,
    gamma: ArrayView1<'_, F>,
    eps: f64,
) -> Result<Dual<F, D>> {
    let affine = Affine::frozen(gamma, None);
    normalize("rms_norm", x, affine, eps, Kind::Rms)
}

/// RMSNorm over the last axis with a dual `γ`: as [`rms_norm`], plus `γ̇⊙x̂`.
///
/// # Shapes
/// - `x`: `[.., N]`, `gamma`: `[N]` (tangent `[K, N]`)
/// - output: `[.., N]`
///
/// # Errors
/// As [`rms_norm`], and [`Error::TangentCountMismatch`](crate::Error::TangentCountMismatch) if `x` and `gamma` carry different K.
pub fn rms_norm_dual<F: Float, D: Dimension>(
    x: &Dual<F, D>,
    gamma: &Dual<F, Ix1>,
    eps: f64,
) -> Result<Dual<F, D>> {
    let affine = Affine::dual(gamma, None);
    normalize("rms_norm_dual", x, affine, eps, Kind::Rms)
}

// ---- naive reference twins (loops, one direction at a time) -------------------------------------

/// Naive twin of [`rms_norm`]. For tests.
///
/// # Errors
/// As [`rms_norm`].
pub fn rms_norm_reference<F: Float, D: Dimension>(
    x: &Dual<F, D>,
    gamma: ArrayView1<'_, F>,
    eps: f64,
) -> Result<Dual<F, D>> {
    let g = Dual::constant(gamma.to_owned());
    norm_reference("rms_norm_reference", x, &g, None, eps, false)
}

/// Naive twin of [`rms_norm_dual`]. For tests.
///
/// # Errors
/// As [`rms_norm_dual`].
pub fn rms_norm_dual_reference<F: Float, D: Dimension>(
    x: &Dual<F, D>,
    gamma: &Dual<F, Ix1>,
    eps: f64,
) -> Result<Dual<F, D>> {
    norm_reference("rms_norm_dual_reference", x, gamma, None, eps, false)
}
