//! [`AdaptedModel`]: what every model with LoRA slots shares, written once. A model lists its
//! frozen linear layers and says where its LoRA configuration and micro-batch budget live; adapter
//! queries, merging and the micro-batch setting follow.

use crate::modules::linear::merge_all_adapters;
use crate::modules::{Directions, DropoutKey, FrozenLinear, LoraConfig, Pass, Trainable};
use crate::{Float, Result};

/// Prefix PEFT puts before every module path in an adapter file.
pub const PEFT_PREFIX: &str = "base_model.model.";

/// A model made of frozen linear layers that may carry LoRA adapters (see
/// [`FrozenLinear`]).
///
/// Implementors give [`linears`](Self::linears) / [`linears_mut`](Self::linears_mut) (every
/// adaptable layer, in the order their adapters were registered), [`lora`](Self::lora) and
/// [`set_max_rows`](Self::set_max_rows); the other methods are provided.
pub trait AdaptedModel<F: Float> {
    /// The LoRA configuration the model was loaded with.
    fn lora(&self) -> &LoraConfig;

    /// Every linear layer that may carry an adapter, in registration order.
    fn linears(&self) -> Vec<&FrozenLinear<F>>;

    /// [`linears`](Self::linears), mutably.
    fn linears_mut(&mut self) -> Vec<&mut FrozenLinear<F>>;

    /// Sets the row budget (sequences × positions) of one micro-batch: a batch longer than this
    /// runs a few sequences at a time through all layers (see
    /// [`map_micro_batches`](super::microbatch::map_micro_batches)).
    fn set_max_rows(&mut self, max_rows: usize);

    /// The same model running its passes in micro-batches of at most `max_rows` rows
    /// (sequences × positions, at least one sequence; default
    /// [`default_max_rows`](super::microbatch::default_max_rows) of the feed-forward width,
    /// 1024 rows for every bundled model): a smaller budget lowers the
    /// peak working memory of long batches, a larger one lets more rows share each GEMM. Results
    /// are bitwise the same for any budget.
    fn with_max_rows(mut self, max_rows: usize) -> Self
    where
        Self: Sized,
    {
        self.set_max_rows(max_rows);
        self
    }

    /// Whether any layer still carries a LoRA adapter (false after
    /// [`merge_adapters`](Self::merge_adapters)).
    fn has_adapters(&self) -> bool {
        self.linears().iter().any(|l| l.adapter.is_some())
    }

    /// Folds every LoRA adapter into its frozen weight (`W ← W + (α/r)·B·A`, see
    /// [`FrozenLinear::merged_weight`]) and drops the adapters: the model then computes what it
    /// computed with `trainable`'s adapter values, at the cost of the base model, and no longer
    /// reads the registry's LoRA tensors (the registry itself is not changed).
    ///
    /// # Errors
    /// As [`FrozenLinear::check_adapter`] if `trainable` is not this model's registry; the model
    /// is unchanged then.
    fn merge_adapters(&mut self, trainable: &Trainable<F>) -> Result<()> {
        let lora = self.lora().clone();
        merge_all_adapters(self.linears_mut(), trainable, &lora)
    }

    /// The context of one pass of this model: `trainable`'s values along `dirs`, with the model's
    /// LoRA configuration and dropout keyed by `dropout`.
    fn pass<'a>(
        &'a self,
        trainable: &'a Trainable<F>,
        dirs: &'a Directions<F>,
        dropout: Option<&'a DropoutKey>,
    ) -> Pass<'a, F> {
        Pass::new(trainable, dirs, self.lora(), dropout)
    }
}
