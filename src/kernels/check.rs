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
