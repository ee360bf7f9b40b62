//! Shape checks shared by the kernels; each returns a typed [`Error`](crate::Error) naming the op.

use crate::{Error, Result};

/// Checks that `shape` has rank ≥ 1 and last dimension `expected`.
pub(crate) fn last_dim(op: &'static str, shape: &[usize], expected: usize) -> Result<()> {
    match shape.last() {
        Some(&d) if d == expected => Ok(()),
        _ => Err(Error::shape(op, format!("[.., {expected}]"), shape)),
    }
}

/// Checks that `shape` equals `expected` exactly.
pub(crate) fn exact(op: &'static str, shape: &[usize], expected: &[usize]) -> Result<()> {
    if shape == expected {
        Ok(())
    } else {
        Err(Error::shape(op, format!("{expected:?}"), shape))
    }
}

/// Checks that axis `axis` of `shape` is not empty; `expected` describes the required shape
/// (e.g. `"[B, T >= 1, H]"`).
pub(crate) fn nonempty_axis(
    op: &'static str,
    shape: &[usize],
    axis: usize,
    expected: &str,
) -> Result<()> {
    match shape.get(axis) {
        Some(&d) if d > 0 => Ok(()),
        _ => Err(Error::shape(op, expected, shape)),
    }
}

/// Checks that `shape` is `[B, T, n_heads·head_dim]` (heads side by side in the last axis, the
/// Hugging Face layout).
pub(crate) fn heads(
    op: &'static str,
    shape: &[usize],
    n_heads: usize,
    head_dim: usize,
) -> Result<()> {
    let Some(width) = n_heads.checked_mul(head_dim) else {
        return Err(Error::invalid(
            op,
            format!("n_heads ({n_heads}) x head_dim ({head_dim}) overflows"),
        ));
    };
    if shape.len() == 3 && shape[2] == width {
        Ok(())
    } else {
        Err(Error::shape(
            op,
            format!("[B, T, {width}] ({n_heads} heads of {head_dim})"),
            shape,
        ))
    }
}

/// Checks that a norm's ε is finite and ≥ 0.
pub(crate) fn norm_eps(op: &'static str, eps: f64) -> Result<()> {
    if eps.is_finite() && eps >= 0.0 {
        Ok(())
    } else {
        Err(Error::invalid(
            op,
            format!("eps must be finite and >= 0, got {eps}"),
        ))
    }
}
