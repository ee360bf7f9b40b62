//! Element-wise ops: the residual add.
//!
//! - [`add`]: `y = a + b`, `ẏ = ȧ + ḃ`; a symbolic-zero tangent costs nothing (zero + zero is a
//!   symbolic zero, zero + t is a copy of t).
//! - [`add_into`]: the same, consuming `a` and accumulating into its buffers (a residual stream
//!   updated in place).

use ndarray::Dimension;

use super::check;
use crate::{Dual, Float, Result, common_k};

/// Residual add: `y = a + b`, `ẏ = ȧ + ḃ`.
///
/// A symbolic-zero tangent is skipped: zero + zero is a symbolic zero, and zero + t is a copy of
/// t (no arithmetic).
///
/// # Shapes
/// - `a`, `b`: the same shape `[..]` (no broadcasting), output the same shape
///
/// # Errors
/// - [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) if the shapes differ.
/// - [`Error::TangentCountMismatch`](crate::Error::TangentCountMismatch) if both carry tangents
///   with different K.
pub fn add<F: Float, D: Dimension>(a: &Dual<F, D>, b: &Dual<F, D>) -> Result<Dual<F, D>> {
    const OP: &str = "add";
    check::exact(OP, b.shape(), a.shape())?;
    common_k(OP, &[a.k(), b.k()])?;
    // y = a + b
    let y = a.primal() + b.primal();
    // ẏ = ȧ + ḃ, skipping symbolic zeros
    let ty = match (a.tangent(), b.tangent()) {
        (None, None) => None,
        (Some(t), None) | (None, Some(t)) => Some(t.clone()),
        (Some(ta), Some(tb)) => Some(ta + tb),
    };
    Ok(Dual::from_parts_unchecked(y, ty))
}

/// Residual add in place: consumes `a` and returns `a + b`, with `ẏ = ȧ + ḃ` accumulated into
/// `a`'s buffers.
///
/// No new buffer is allocated when `a` already owns a tangent (or `b`'s tangent is a symbolic
/// zero); if `a`'s tangent is a symbolic zero and `b`'s is not, `b`'s tangent is copied.
///
/// # Shapes
/// As [`add`].
///
/// # Errors
/// As [`add`].
pub fn add_into<F: Float, D: Dimension>(a: Dual<F, D>, b: &Dual<F, D>) -> Result<Dual<F, D>> {
    const OP: &str = "add_into";
    check::exact(OP, b.shape(), a.shape())?;
    common_k(OP, &[a.k(), b.k()])?;
    let (mut y, ty) = a.into_parts();
    // y += b
    y += b.primal();
    // ẏ += ḃ, skipping symbolic zeros
    let ty = match (ty, b.tangent()) {
        (ty, None) => ty,
        (None, Some(tb)) => Some(tb.clone()),
        (Some(mut ta), Some(tb)) => {
            ta += tb;
            Some(ta)
        }
    };
    Ok(Dual::from_parts_unchecked(y, ty))
}

// ---- naive reference twins (loops, one direction at a time) -------------------------------------

/// Naive twin of [`add`] and [`add_into`]: element loops over flat buffers, one direction at a
/// time. For tests.
///
/// # Errors
/// As [`add`].
pub fn add_reference<F: Float, D: Dimension>(a: &Dual<F, D>, b: &Dual<F, D>) -> Result<Dual<F, D>> {
    const OP: &str = "add_reference";
    check::exact(OP, b.shape(), a.shape())?;
    let k = common_k(OP, &[a.k(), b.k()])?;
    let mut y = a.primal().clone();
    let len = y.len();
    {
        let ys = y.as_slice_mut().expect("standard layout");
        let bs = b.primal().as_slice().expect("standard layout");
        for i in 0..len {
            ys[i] += bs[i];
        }
    }
    let ty = k.map(|k| {
        let mut shape = vec![k];
        shape.extend_from_slice(a.shape());
        let mut t = vec![F::zero(); k * len];
        for kk in 0..k {
            for i in 0..len {
                let ta = a
                    .tangent()
                    .map_or(F::zero(), |t| t.as_slice().expect("standard")[kk * len + i]);
                let tb = b
                    .tangent()
                    .map_or(F::zero(), |t| t.as_slice().expect("standard")[kk * len + i]);
                t[kk * len + i] = ta + tb;
            }
        }
        ndarray::Array::from_shape_vec(ndarray::IxDyn(&shape), t)
            .expect("length matches")
            .into_dimensionality::<D::Larger>()
            .expect("rank matches")
    });
    Dual::with_tangent(y, ty)
}
