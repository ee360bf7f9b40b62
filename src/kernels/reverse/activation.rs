//! The reverse rules of the element-wise activations: `dx = g′(x)⊙dy`.

use ndarray::{Array, ArrayView, Dimension, Zip};

use crate::kernels::activation::gelu_scalar;
use crate::kernels::{GeluKind, check};
use crate::{Float, Result};

/// `∂L/∂x` of `y = GELU(x)`: `dx = g′(x)⊙dy`, with the forward kernel's own slope
/// ([`GeluKind::Erf`]: `g′ = Φ(x) + xφ(x)`; [`GeluKind::Tanh`]:
/// `g′ = ½(1 + t) + ½x(1 − t)(1 + t)·√(2/π)(1 + 3·0.044715x²)`, `t = tanh(√(2/π)(x + 0.044715x³))`).
///
/// # Shapes
/// - `x` (the activation's input), `dy`: the same shape → that shape
///
/// # Errors
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) if the shapes differ.
pub fn gelu_backward<F: Float, D: Dimension>(
    x: ArrayView<'_, F, D>,
    dy: ArrayView<'_, F, D>,
    kind: GeluKind,
) -> Result<Array<F, D>> {
    check::exact("gelu_backward", dy.shape(), x.shape())?;
    Ok(Zip::from(&x)
        .and(&dy)
        .map_collect(|&x, &d| gelu_scalar(x, kind).1 * d))
}

/// `∂L/∂x` of `y = tanh(x)` from the output: `dx = (1 − y)(1 + y)⊙dy`.
///
/// # Shapes
/// - `y` (the activation's output), `dy`: the same shape → that shape
///
/// # Errors
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) if the shapes differ.
pub fn tanh_backward<F: Float, D: Dimension>(
    y: ArrayView<'_, F, D>,
    dy: ArrayView<'_, F, D>,
) -> Result<Array<F, D>> {
    check::exact("tanh_backward", dy.shape(), y.shape())?;
    Ok(Zip::from(&y)
        .and(&dy)
        .map_collect(|&y, &d| (F::one() - y) * (F::one() + y) * d))
}
