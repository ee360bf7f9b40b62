//! Sequence pooling: `[B, T, H]` token states to `[B, H]` sentence vectors.
//!
//! - [`mean_pool`]: mean over the valid tokens (sentence-transformers' mean pooling).
//! - [`first_token_pool`]: the first token's state (BERT's `[CLS]`).
//!
//! Both are linear, so the tangent is the same op applied to every direction.

use ndarray::{Array2, Array3, ArrayView2, ArrayView3, ArrayViewMut2, Axis, Ix2, Ix3, s};

use super::check;
use crate::{Dual, Float, Result};

/// Masked mean over the sequence: `y[b, :] = Σ_t m[b, t]·x[b, t, :] / n_b` with
/// `n_b = Σ_t m[b, t]`, and `ẏ_k` the same op on `ẋ_k`.
///
/// `mask[b, t] = true` marks a valid (non-padding) token. A sequence with **no valid token gives
/// a zero row** (and a zero tangent row), as sentence-transformers does by clamping the count
/// (`sum / clamp(n, min=1e-9)` with a zero sum).
///
/// # Shapes
/// - `x`: `[B, T, H]` (tangent `[K, B, T, H]`), `mask`: `[B, T]`, output `[B, H]`
///
/// # Errors
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) if `mask` is not `[B, T]`.
pub fn mean_pool<F: Float>(x: &Dual<F, Ix3>, mask: ArrayView2<'_, bool>) -> Result<Dual<F, Ix2>> {
    const OP: &str = "mean_pool";
    let (bsz, t, h) = x.primal().dim();
    check::exact(OP, mask.shape(), &[bsz, t])?;
    // inv[b] = 1 / n_b (0 for a sequence without valid tokens), shared by primal and tangents
    let inv: Vec<F> = mask
        .rows()
        .into_iter()
        .map(|m| match m.iter().filter(|&&v| v).count() {
            0 => F::zero(),
            n => F::one() / F::from_usize(n),
        })
        .collect();
    // y[B, H]
    let mut y = Array2::zeros((bsz, h));
    mean_pool_into(x.primal().view(), mask, &inv, y.view_mut());
    // ẏ[K·B, H]: block k = mean_pool(ẋ_k)
    let ty = x.tangent().map(|tx| {
        let k = tx.shape()[0];
        let mut ty = Array2::zeros((k * bsz, h));
        for kk in 0..k {
            let block = ty.slice_mut(s![kk * bsz..(kk + 1) * bsz, ..]);
            mean_pool_into(tx.index_axis(Axis(0), kk), mask, &inv, block);
        }
        (k, ty)
    });
    Ok(Dual::from_rows(&[bsz, h], y, ty))
}

/// `out[b, :] = inv[b] · Σ_{t valid} x[b, t, :]` (`out` zeroed by the caller).
fn mean_pool_into<F: Float>(
    x: ArrayView3<'_, F>,
    mask: ArrayView2<'_, bool>,
    inv: &[F],
    mut out: ArrayViewMut2<'_, F>,
) {
    for (b, mut row) in out.rows_mut().into_iter().enumerate() {
        for (tt, _) in mask.row(b).iter().enumerate().filter(|(_, v)| **v) {
            row += &x.slice(s![b, tt, ..]);
        }
        row *= inv[b];
    }
}

/// First-token pooling (BERT's `[CLS]`): `y[b, :] = x[b, 0, :]`, `ẏ_k[b, :] = ẋ_k[b, 0, :]`.
///
/// # Shapes
/// - `x`: `[B, T, H]` with `T ≥ 1` (tangent `[K, B, T, H]`), output `[B, H]`
///
/// # Errors
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) if `T = 0`.
pub fn first_token_pool<F: Float>(x: &Dual<F, Ix3>) -> Result<Dual<F, Ix2>> {
    const OP: &str = "first_token_pool";
    let (bsz, _, h) = x.primal().dim();
    check::nonempty_axis(OP, x.shape(), 1, "[B, T >= 1, H]")?;
    // y[B, H] = x[:, 0, :]
    let y = x
        .primal()
        .index_axis(Axis(1), 0)
        .as_standard_layout()
        .into_owned();
    // ẏ[K, B, H] = ẋ[:, :, 0, :]
    let ty = x.tangent().map(|tx| {
        let k = tx.shape()[0];
        let ty = tx.index_axis(Axis(2), 0).as_standard_layout().into_owned();
        (
            k,
            ty.into_shape_with_order((k * bsz, h))
                .expect("standard layout"),
        )
    });
    Ok(Dual::from_rows(&[bsz, h], y, ty))
}

// ---- naive reference twins (loops, one direction at a time) -------------------------------------

/// Naive twin of [`mean_pool`]: element loops, sum then divide by the count, one direction at a
/// time. For tests.
///
/// # Errors
/// As [`mean_pool`].
pub fn mean_pool_reference<F: Float>(
    x: &Dual<F, Ix3>,
    mask: ArrayView2<'_, bool>,
) -> Result<Dual<F, Ix2>> {
    const OP: &str = "mean_pool_reference";
    let (bsz, t, h) = x.primal().dim();
    check::exact(OP, mask.shape(), &[bsz, t])?;
    let pool = |src: ArrayView3<'_, F>| {
        let mut out = Array2::zeros((bsz, h));
        for b in 0..bsz {
            let n = (0..t).filter(|&tt| mask[[b, tt]]).count();
            for j in 0..h {
                let mut acc = F::zero();
                for tt in 0..t {
                    if mask[[b, tt]] {
                        acc += src[[b, tt, j]];
                    }
                }
                out[[b, j]] = if n == 0 {
                    F::zero()
                } else {
                    acc / F::from_usize(n)
                };
            }
        }
        out
    };
    let y = pool(x.primal().view());
    let ty = x.tangent().map(|tx| {
        let k = tx.shape()[0];
        let mut ty = Array3::zeros((k, bsz, h));
        for kk in 0..k {
            ty.index_axis_mut(Axis(0), kk)
                .assign(&pool(tx.index_axis(Axis(0), kk)));
        }
        ty
    });
    Dual::with_tangent(y, ty)
}

/// Naive twin of [`first_token_pool`]: element loops, one direction at a time. For tests.
///
/// # Errors
/// As [`first_token_pool`].
pub fn first_token_pool_reference<F: Float>(x: &Dual<F, Ix3>) -> Result<Dual<F, Ix2>> {
    const OP: &str = "first_token_pool_reference";
    let (bsz, _, h) = x.primal().dim();
    check::nonempty_axis(OP, x.shape(), 1, "[B, T >= 1, H]")?;
    let mut y = Array2::zeros((bsz, h));
    for b in 0..bsz {
        for j in 0..h {
            y[[b, j]] = x.primal()[[b, 0, j]];
        }
    }
    let ty = x.tangent().map(|tx| {
        let k = tx.shape()[0];
        let mut ty = Array3::zeros((k, bsz, h));
        for kk in 0..k {
            for b in 0..bsz {
                for j in 0..h {
                    ty[[kk, b, j]] = tx[[kk, b, 0, j]];
                }
            }
        }
        ty
    });
    Dual::with_tangent(y, ty)
}
