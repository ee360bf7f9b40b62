//! [`Pass`]: what one forward pass hands to every layer it runs: the trainable values, the
//! tangent directions, the LoRA hyper-parameters and the dropout key. A layer's forward is then
//! `forward(&self, x, &pass)`, whatever the layer.

use super::linear::DropoutKey;
use super::lora::LoraConfig;
use super::trainable::{Directions, Trainable};
use crate::Float;

/// The context of one forward pass, shared by all its layers.
///
/// With `dirs` = [`Directions::none`] the pass is the plain forward (every tangent is the
/// symbolic zero); with K directions on some trainable tensors every layer that reads one of them
/// starts K tangents. `dropout` keys the LoRA dropout masks (`None`: no dropout, as in
/// evaluation).
#[derive(Debug)]
pub struct Pass<'a, F: Float> {
    /// The trainable values (LoRA factors, task head) the layers read.
    pub trainable: &'a Trainable<F>,
    /// The K tangent directions on the trainable values.
    pub dirs: &'a Directions<F>,
    /// The LoRA hyper-parameters (scale `α/r`, dropout probability).
    pub lora: &'a LoraConfig,
    /// Keys the dropout masks of this pass (`None`: no dropout).
    pub dropout: Option<&'a DropoutKey>,
}

impl<F: Float> Clone for Pass<'_, F> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<F: Float> Copy for Pass<'_, F> {}

impl<'a, F: Float> Pass<'a, F> {
    /// A pass over `trainable` along `dirs`, with `lora`'s hyper-parameters and dropout keyed
    /// by `dropout`.
    pub fn new(
        trainable: &'a Trainable<F>,
        dirs: &'a Directions<F>,
        lora: &'a LoraConfig,
        dropout: Option<&'a DropoutKey>,
    ) -> Self {
        Pass {
            trainable,
            dirs,
            lora,
            dropout,
        }
    }

    /// Whether the pass applies LoRA dropout: a dropout key and `lora.lora_dropout > 0`.
    pub fn lora_dropout_active(&self) -> bool {
        self.dropout.is_some() && self.lora.lora_dropout > 0.0
    }

    /// The same pass with its dropout keyed by `dropout` instead (a micro-batch's own key, or
    /// `None` for a layer that never drops, such as BERT's pooler).
    pub fn with_dropout<'b>(self, dropout: Option<&'b DropoutKey>) -> Pass<'b, F>
    where
        'a: 'b,
    {
        Pass { dropout, ..self }
    }
}
