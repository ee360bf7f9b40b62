//! BERT's pooler: the first token's hidden state through a dense layer and tanh, the input of
//! Hugging Face's `BertForSequenceClassification` head.
//!
//! ```text
//! p_b = tanh(W_p · x[b, 0] + b_p)
//! ```

use ndarray::{Ix2, Ix3};

use crate::io::BertConfig;
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
}
