//! BERT's pooler: the first token's hidden state through a dense layer and tanh, the input of
//! Hugging Face's `BertForSequenceClassification` head.
//!
//! ```text
//! p_b = tanh(W_p · x[b, 0] + b_p)
//! dx[b, 0] = ((1 − p_b)(1 + p_b) ⊙ dp_b) · W_p                    (the reverse pass)
//! ```

use ndarray::{Array3, ArrayView2, Ix2, Ix3};

use crate::io::BertConfig;
use crate::kernels::reverse::{first_token_pool_backward, frozen_linear_backward, tanh_backward};
use crate::kernels::{first_token_pool, tanh};
use crate::models::WeightPath;
use crate::modules::{FrozenLinear, Pass};
use crate::{Dual, Float, Result};

/// The frozen pooler (`pooler.dense`); it never carries an adapter.
#[derive(Clone, Debug)]
pub struct Pooler<F: Float> {
    dense: FrozenLinear<F>,
}

impl<F: Float> Pooler<F> {
    /// Loads `dense` `[H, H]` with its bias from `vb` (the `pooler` module).
    ///
    /// # Errors
    /// Missing or mis-shaped tensors.
    pub fn load(mut vb: WeightPath<'_>, cfg: &BertConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Pooler {
            dense: vb.pp("dense").linear(h, h, true)?,
        })
    }

    /// `tanh(W_p·x[:, 0] + b_p)` with its tangents (the pooler is frozen: they come from `x`'s).
    ///
    /// # Shapes
    /// - `x`: `[B, T, H]` → `[B, H]`
    ///
    /// # Errors
    /// Shape errors of the kernels.
    pub fn forward(&self, x: &Dual<F, Ix3>, pass: &Pass<'_, F>) -> Result<Dual<F, Ix2>> {
        let first = first_token_pool(x)?;
        tanh(&self.dense.forward(&first, pass)?)
    }

    /// The reverse pass: `∂L/∂x` given the pooler's output `p` (a forward's primal) and
    /// `dp = ∂L/∂p`: `dx[:, 0] = ((1 − p)(1 + p)⊙dp)·W_p`, zero at the other positions.
    ///
    /// # Shapes
    /// - `p`, `dp`: `[B, H]` → `[B, t, H]`
    ///
    /// # Errors
    /// [`crate::Error::ShapeMismatch`] if `p` and `dp` differ in shape or `t = 0`.
    pub fn backward(
        &self,
        p: ArrayView2<'_, F>,
        dp: ArrayView2<'_, F>,
        t: usize,
    ) -> Result<Array3<F>> {
        // the pooler is frozen and never adapted: only dx = dpre·W_p
        let dpre = tanh_backward(p, dp)?;
        let dfirst = frozen_linear_backward(dpre.view(), &self.dense.weight)?;
        first_token_pool_backward(dfirst.view(), t)
    }
}
