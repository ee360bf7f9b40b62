//! Frozen normalisation layers: [`LayerNorm`] (BERT) and [`RmsNorm`] (Llama), each a gain (and
//! shift) with its ε, applied by the kernels of the same name.

use ndarray::{Array1, Array2, ArrayView2, Dimension};

use crate::kernels::reverse::layer_norm_backward;
use crate::kernels::{layer_norm, rms_norm};
use crate::{Dual, Float, Result};

/// A frozen LayerNorm over the last axis: `y = (x − μ)/√(σ² + ε) ⊙ γ + β`.
#[derive(Clone, Debug)]
pub struct LayerNorm<F: Float> {
    /// Gain γ `[H]`.
    pub weight: Array1<F>,
    /// Shift β `[H]`.
    pub bias: Option<Array1<F>>,
    /// ε added to the variance.
    pub eps: f64,
}

impl<F: Float> LayerNorm<F> {
    /// Normalises `x` over its last axis ([`layer_norm()`]); the tangents follow the kernel's JVP.
    ///
    /// # Shapes
    /// - `x`: `[.., H]` → `[.., H]`
    ///
    /// # Errors
    /// As [`layer_norm()`]: `x`'s last axis is not `H`.
    pub fn forward<D: Dimension>(&self, x: &Dual<F, D>) -> Result<Dual<F, D>> {
        layer_norm(
            x,
            self.weight.view(),
            self.bias.as_ref().map(|b| b.view()),
            self.eps,
        )
    }

    /// The reverse pass: `∂L/∂x` given the input `x` and `dy = ∂L/∂y`
    /// (`kernels::reverse::layer_norm_backward`, `dx = r·(dx̂ − mean(dx̂) − x̂·mean(dx̂⊙x̂))`,
    /// `dx̂ = dy⊙γ`); γ and β are frozen.
    ///
    /// # Shapes
    /// - `x`, `dy`: `[N, H]` → `[N, H]`
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) if the shapes differ or the rows
    /// are not `H` wide.
    pub fn backward(&self, x: ArrayView2<'_, F>, dy: ArrayView2<'_, F>) -> Result<Array2<F>> {
        layer_norm_backward(x, self.weight.view(), self.eps, dy)
    }

    /// Bytes held by the gain and shift.
    pub fn n_bytes(&self) -> usize {
        (self.weight.len() + self.bias.as_ref().map_or(0, Array1::len)) * size_of::<F>()
    }
}

/// A frozen RMSNorm over the last axis: `y = x/√(mean(x²) + ε) ⊙ γ`.
#[derive(Clone, Debug)]
pub struct RmsNorm<F: Float> {
    /// Gain γ `[H]`.
    pub weight: Array1<F>,
    /// ε added to the mean square.
    pub eps: f64,
}

impl<F: Float> RmsNorm<F> {
    /// Normalises `x` over its last axis ([`rms_norm()`]).
    ///
    /// # Shapes
    /// - `x`: `[.., H]` → `[.., H]`
    ///
    /// # Errors
    /// As [`rms_norm()`]: `x`'s last axis is not `H`.
    pub fn forward<D: Dimension>(&self, x: &Dual<F, D>) -> Result<Dual<F, D>> {
        rms_norm(x, self.weight.view(), self.eps)
    }

    /// Bytes held by the gain.
    pub fn n_bytes(&self) -> usize {
        self.weight.len() * size_of::<F>()
    }
}
