//! The reverse rules of sequence pooling: `[B, H]` gradients back to `[B, T, H]` token states.

use ndarray::{Array3, ArrayView2, Axis, s};

use crate::kernels::check;
use crate::{Error, Float, Result};

/// `∂L/∂x` of the masked mean `y_b = Σ_t m_bt·x_bt / n_b`, `n_b = Σ_t m_bt`:
/// `dx_bt = m_bt·dy_b / n_b`, and zero rows for a sequence without valid tokens (whose pooled
/// row is the constant zero).
///
/// # Shapes
/// - `dy`: `[B, H]`, `mask`: `[B, T]` (true = valid token) → `[B, T, H]`
///
/// # Errors
/// [`Error::ShapeMismatch`] if `mask` has another number of rows than `dy`.
pub fn mean_pool_backward<F: Float>(
    dy: ArrayView2<'_, F>,
    mask: ArrayView2<'_, bool>,
) -> Result<Array3<F>> {
    let (b, h) = dy.dim();
    let t = mask.ncols();
    check::exact("mean_pool_backward", mask.shape(), &[b, t])?;
    let mut dx = Array3::zeros((b, t, h));
    for (bb, m) in mask.rows().into_iter().enumerate() {
        let n = m.iter().filter(|&&v| v).count();
        if n == 0 {
            continue;
        }
        // the forward's factor 1/n_b, as it computes it
        let inv = F::one() / F::from_usize(n);
        let row = dy.row(bb).mapv(|v| v * inv);
        for (tt, _) in m.iter().enumerate().filter(|(_, v)| **v) {
            dx.slice_mut(s![bb, tt, ..]).assign(&row);
        }
    }
    Ok(dx)
}

/// `∂L/∂x` of first-token pooling `y_b = x_b0`: `dx_b0 = dy_b`, zero at every other position.
///
/// # Shapes
/// - `dy`: `[B, H]` → `[B, t, H]`
///
/// # Errors
/// [`Error::ShapeMismatch`] if `t = 0`.
pub fn first_token_pool_backward<F: Float>(dy: ArrayView2<'_, F>, t: usize) -> Result<Array3<F>> {
    let (b, h) = dy.dim();
    if t == 0 {
        return Err(Error::shape(
            "first_token_pool_backward",
            "[B, T >= 1, H]",
            &[b, t, h],
        ));
    }
    let mut dx = Array3::zeros((b, t, h));
    dx.index_axis_mut(Axis(1), 0).assign(&dy);
    Ok(dx)
}
