//! Inference with a [`Llama`]: the logits of the last position, and greedy generation with a
//! key/value cache (one [`LayerCache`] per block).
//!
//! ```text
//! prompt → hidden (cache filled) → next = argmax(RMS(x_last)·E_outᵀ) → feed next → ...
//! ```

use ndarray::{Array2, Array3, ArrayView2, Axis};

use super::{LayerCache, Llama};
use crate::kernels::frozen_linear;
use crate::models::{AdaptedModel, argmax_rows};
use crate::modules::{Directions, Trainable};
use crate::{Dual, Error, Float, Result};

impl<F: Float> Llama<F> {
    /// Logits of the last position of every sequence `[B, V]` (plain forward).
    ///
    /// # Errors
    /// Kernel errors.
    pub fn last_logits(
        &self,
        ids: ArrayView2<'_, u32>,
        trainable: &Trainable<F>,
    ) -> Result<Array2<F>> {
        let none = Directions::none(trainable.len());
        let hidden = self.hidden(ids, None, &self.pass(trainable, &none, None))?;
        self.logits_of_last(hidden.primal())
    }

    /// `RMS(x)[:, T−1] · E_outᵀ`: the LM head on the last position of a final hidden state.
    ///
    /// # Shapes
    /// - `hidden`: `[B, T, H]` → `[B, V]`
    fn logits_of_last(&self, hidden: &Array3<F>) -> Result<Array2<F>> {
        let last = hidden.index_axis(Axis(1), hidden.shape()[1] - 1).to_owned();
        Ok(frozen_linear(&Dual::constant(last), self.head(), None)?.into_primal())
    }

    /// Greedy generation with a KV cache: feeds `prompt`, then appends the argmax token until
    /// `max_new` tokens or a token in `stop` is produced (the stop token is included).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty prompt or one longer than the context; kernel
    /// errors.
    pub fn generate_greedy(
        &self,
        prompt: &[u32],
        max_new: usize,
        stop: &[u32],
        trainable: &Trainable<F>,
    ) -> Result<Vec<u32>> {
        const OP: &str = "Llama::generate_greedy";
        if prompt.is_empty() {
            return Err(Error::invalid(OP, "empty prompt"));
        }
        if prompt
            .len()
            .checked_add(max_new)
            .is_none_or(|n| n > self.config.max_position_embeddings)
        {
            return Err(Error::invalid(
                OP,
                "prompt plus new tokens exceed the context length",
            ));
        }
        let none = Directions::none(trainable.len());
        let pass = self.pass(trainable, &none, None);
        let mut cache = vec![LayerCache::default(); self.layers.len()];
        let ids = Array2::from_shape_vec((1, prompt.len()), prompt.to_vec()).expect("one row");
        let mut hidden = self.forward(ids.view(), None, &pass, Some(&mut cache))?;
        let mut out = Vec::with_capacity(max_new);
        for _ in 0..max_new {
            let logits = self.logits_of_last(hidden.primal())?;
            let next = argmax_rows(logits.view())[0] as u32;
            out.push(next);
            if stop.contains(&next) {
                break;
            }
            let step = Array2::from_elem((1, 1), next);
            hidden = self.forward(step.view(), None, &pass, Some(&mut cache))?;
        }
        Ok(out)
    }
}
