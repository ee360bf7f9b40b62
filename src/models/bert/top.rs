//! Exact gradients of the top encoder layers' adapters, by a local reverse pass through just
//! those layers (`BertClassifier::with_exact_top_layers`).
//!
//! ```text
//! forward:  x_0 = E(batch);  x_{l+1} = Layer_l(x_l)   (dual, K tangents, as always)
//!           saving the primal x_l of the top n layers l = L−n..L (one [B, T, H] each)
//! reverse:  dx_L = ∂L/∂h;  for l = L−1 down to L−n:  dx_l, ∂L/∂θ_l = Layer_l.backward(x_l, dx_{l+1})
//! ```
//!
//! The dual forward runs unchanged (the lower layers' tangents still reach the loss); the top
//! layers then recompute their primal forward from the saved inputs, one layer at a time, and
//! reverse it: the extra memory is the n saved inputs plus one layer's activations. A
//! micro-batched pass saves and reverses each micro-batch on its own; the gradients, already
//! normalised by the whole batch's loss (`∂L/∂h` of a mean over every valid row), add up.

use std::collections::BTreeMap;
use std::ops::Range;

use ndarray::{Array3, ArrayD, ArrayView2, ArrayView3, Ix3, s};

use super::{Bert, BertBatch, Layer};
use crate::kernels::reverse::first_token_pool_backward;
use crate::models::AdaptedModel;
use crate::models::microbatch::map_micro_batches;
use crate::modules::{Directions, DropoutKey, ParamGrads, Pass, Trainable};
use crate::{Dual, Error, Float, Result};

/// The primal inputs of the top encoder layers that [`Bert::encode_saving`] kept for their
/// reverse pass ([`Bert::backward_top`]).
#[derive(Clone, Debug)]
pub struct TopInputs<F: Float> {
    /// Index of the lowest saved layer (`L − n`).
    first: usize,
    /// Per micro-batch: its sequences and the inputs of layers `first..L`, bottom up.
    chunks: Vec<(Range<usize>, Vec<Array3<F>>)>,
}

impl<F: Float> TopInputs<F> {
    /// Index of the lowest saved layer.
    pub fn first_layer(&self) -> usize {
        self.first
    }

    /// Bytes held by the saved inputs.
    pub fn n_bytes(&self) -> usize {
        self.chunks
            .iter()
            .flat_map(|(_, xs)| xs)
            .map(|x| x.len() * size_of::<F>())
            .sum()
    }
}

impl<F: Float> Bert<F> {
    /// Number of encoder layers.
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// Registry indices of the adapter tensors of encoder layer `l` (`lora_A`, `lora_B` of each
    /// adapted linear, registry order); empty for a layer without adapters or past the last.
    pub fn layer_params(&self, l: usize) -> Vec<usize> {
        self.layers.get(l).map_or_else(Vec::new, |layer| {
            layer
                .linears()
                .filter_map(|lin| lin.adapter)
                .flat_map(|slot| [slot.a, slot.b])
                .collect()
        })
    }

    /// [`Bert::encode`], keeping the primal input of each of the top `top` layers for
    /// [`Bert::backward_top`] (`top = 0`: exactly [`Bert::encode`], nothing saved).
    ///
    /// # Errors
    /// As [`Bert::encode`]; [`Error::InvalidArgument`] if `top` exceeds the number of layers.
    pub fn encode_saving(
        &self,
        batch: &BertBatch,
        trainable: &Trainable<F>,
        dirs: &Directions<F>,
        dropout: Option<&DropoutKey>,
        top: usize,
    ) -> Result<(Dual<F, Ix3>, TopInputs<F>)> {
        let n = self.layers.len();
        if top > n {
            return Err(Error::invalid(
                "Bert::encode_saving",
                format!("{top} top layers to save, the encoder has {n}"),
            ));
        }
        self.check_batch(batch)?;
        let (b, t) = batch.ids.dim();
        let pass = self.pass(trainable, dirs, dropout);
        let first = n - top;
        let mut chunks = Vec::new();
        let h = map_micro_batches(b, t, self.max_rows, dropout, |range, key| {
            let mut saved = Vec::new();
            let y = self.forward(
                &batch.rows(range.clone()),
                &pass.with_dropout(key),
                first,
                &mut saved,
            )?;
            if top > 0 {
                chunks.push((range, saved));
            }
            Ok(y)
        })?;
        Ok((h, TopInputs { first, chunks }))
    }

    /// The reverse pass of the saved top layers at the primal point of `trainable`: from
    /// `dh = ∂L/∂h` (the gradient of the loss with respect to the last hidden state), each
    /// micro-batch runs [`Layer::backward`] from the top layer down to `saved.first_layer()`,
    /// each layer's input gradient flowing into the one below, and the adapters' gradients are
    /// summed over the micro-batches. Returns them in registry order (every adapter tensor of
    /// the saved layers).
    ///
    /// # Shapes
    /// - `dh`: `[B, T, H]`, the batch's shape
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if `dh` is not the batch's `[B, T, H]`;
    /// [`Error::InvalidArgument`] if `dropout` applies LoRA dropout; kernel errors.
    pub fn backward_top(
        &self,
        batch: &BertBatch,
        saved: TopInputs<F>,
        dh: ArrayView3<'_, F>,
        trainable: &Trainable<F>,
        dropout: Option<&DropoutKey>,
    ) -> Result<ParamGrads<F>> {
        let (b, t) = batch.ids.dim();
        let h = self.config.hidden_size;
        if dh.dim() != (b, t, h) {
            return Err(Error::shape(
                "Bert::backward_top",
                format!("[{b}, {t}, {h}]"),
                dh.shape(),
            ));
        }
        let none = Directions::none(trainable.len());
        let pass = Pass::new(trainable, &none, &self.lora, dropout);
        let mut sums: BTreeMap<usize, ArrayD<F>> = BTreeMap::new();
        for (range, mut inputs) in saved.chunks {
            let mask = batch.mask.slice(s![range.clone(), ..]);
            let mut dy = dh.slice(s![range, .., ..]).to_owned();
            let mut l = saved.first + inputs.len();
            // top layer first; each saved input is freed once its layer is reversed
            while let Some(x) = inputs.pop() {
                l -= 1;
                let layer: &Layer<F> = &self.layers[l];
                let (dx, grads) = layer.backward(x.view(), mask, dy.view(), &pass)?;
                for (p, g) in grads {
                    match sums.get_mut(&p) {
                        Some(acc) => *acc += &g,
                        None => {
                            sums.insert(p, g);
                        }
                    }
                }
                dy = dx;
            }
        }
        Ok(sums.into_iter().collect())
    }

    /// The reverse pass of [`Pooling::Pooler`](super::Pooling::Pooler)'s read-out: the pooler
    /// (`p` its output) or, for a checkpoint without one, the first token.
    pub(super) fn pool_backward(
        &self,
        p: ArrayView2<'_, F>,
        dp: ArrayView2<'_, F>,
        t: usize,
    ) -> Result<Array3<F>> {
        match &self.pooler {
            Some(pooler) => pooler.backward(p, dp, t),
            None => first_token_pool_backward(dp, t),
        }
    }
}
