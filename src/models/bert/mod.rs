//! BERT encoder (post-LayerNorm, exact or tanh GELU as `hidden_act` says, padding mask) with a
//! sequence-classification head (pooler + classifier, as Hugging Face's
//! `BertForSequenceClassification`) and mean-pooled sentence embeddings (as
//! sentence-transformers' all-MiniLM-L6-v2).
//!
//! ```text
//! x = LN(E_word[ids] + E_pos[t] + E_type[type_ids])                 embeddings.rs
//! per layer:  a = Attn(q(x), k(x), v(x), mask);  x = LN(x + o(a))   layer.rs
//!             x = LN(x + out(GELU(inter(x))))
//! classifier: logits = W_c · tanh(W_p · x[:, 0] + b_p) + b_c        pooler.rs, classifier.rs
//! ```
//! Any of the six linear layers of a block can carry a LoRA adapter (PEFT's suffix match on
//! `query`, `key`, `value`, `attention.output.dense`, `intermediate.dense`, `output.dense`).
//! [`Bert`] is the embeddings, a list of [`Layer`]s and an optional [`Pooler`], each loaded from
//! its own [`WeightPath`] and run by its own `forward`.

mod batch;
mod classifier;
mod embeddings;
mod layer;
mod pooler;
mod saved;
mod top;

use ndarray::{Array2, Array3, Axis, Ix2, Ix3};

use super::adapted::AdaptedModel;
pub use super::adapted::PEFT_PREFIX;
pub use super::argmax_rows;
use super::microbatch::default_max_rows;
use super::source::WeightSource;
use super::weight_path::{Adapters, WeightPath};
pub use batch::BertBatch;
pub use classifier::{BertClassifier, ClassifierOutput, Pooling};
pub use embeddings::Embeddings;
pub use layer::{FeedForward, Layer, SelfAttention, gelu_kind};
pub use pooler::Pooler;
pub use saved::{CLASSIFIER_CONFIG_FILE, ClassifierConfig};
pub use top::TopInputs;

use crate::io::BertConfig;
use crate::kernels::{first_token_pool, mean_pool};
use crate::modules::{Directions, DropoutKey, FrozenLinear, LoraConfig, Pass, Trainable};
use crate::{Dual, Error, Float, Result};

/// The BERT encoder with frozen weights and (optionally) LoRA slots.
pub struct Bert<F: Float> {
    config: BertConfig,
    lora: LoraConfig,
    embeddings: Embeddings<F>,
    layers: Vec<Layer<F>>,
    pooler: Option<Pooler<F>>,
    /// Module-path prefix of the encoder inside a PEFT-wrapped model (`bert.` for
    /// `BertForSequenceClassification`, empty for a bare `BertModel`).
    path_prefix: String,
    /// Row budget (sequences × positions) of one micro-batch of [`Bert::encode`].
    max_rows: usize,
}

impl<F: Float> Bert<F> {
    /// Loads the encoder from a checkpoint (names with or without the `bert.` prefix) and
    /// registers a LoRA adapter in `trainable` for every targeted linear layer, under the PEFT
    /// names `base_model.model.{module_prefix}encoder.layer.{l}.….lora_{A,B}.weight`.
    ///
    /// # Errors
    /// Missing or mis-shaped tensors ([`Error::MissingTensor`], [`Error::TensorShape`]);
    /// [`Error::Config`] if `num_hidden_layers` differs from the layers the checkpoint holds; an
    /// invalid LoRA config; [`Error::InvalidArgument`] for a `hidden_act` other than `gelu`
    /// (exact) or `gelu_new`/`gelu_pytorch_tanh` (tanh approximation).
    pub fn load(
        config: &BertConfig,
        src: &mut dyn WeightSource,
        lora: &LoraConfig,
        module_prefix: &str,
        seed: u64,
        trainable: &mut Trainable<F>,
    ) -> Result<Self> {
        lora.validate()?;
        let act = gelu_kind(config)?;
        let root = if src.has("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            ""
        };
        let mut vb = WeightPath::new(src).with_root(root);
        vb.pp("encoder.layer")
            .check_layers(config.num_hidden_layers)?;
        let mut adapters = Adapters {
            lora,
            prefix: format!("{PEFT_PREFIX}{module_prefix}"),
            seed,
            trainable,
        };
        let embeddings = Embeddings::load(vb.pp("embeddings"), config)?;
        let mut encoder = vb.pp("encoder.layer");
        let layers = (0..config.num_hidden_layers)
            .map(|l| Layer::load(encoder.pp(l), config, act, &mut adapters))
            .collect::<Result<Vec<_>>>()?;
        let pooler = vb.pp("pooler");
        let pooler = if pooler.has("dense.weight") {
            Some(Pooler::load(pooler, config)?)
        } else {
            None
        };
        Ok(Bert {
            config: config.clone(),
            lora: lora.clone(),
            embeddings,
            layers,
            pooler,
            path_prefix: module_prefix.to_string(),
            max_rows: default_max_rows(config.intermediate_size),
        })
    }

    /// The same encoder running [`Bert::encode`] in micro-batches of at most `max_rows` rows
    /// ([`AdaptedModel::with_max_rows`]).
    pub fn with_max_rows(self, max_rows: usize) -> Self {
        AdaptedModel::with_max_rows(self, max_rows)
    }

    /// The configuration.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// The LoRA configuration.
    pub fn lora(&self) -> &LoraConfig {
        &self.lora
    }

    /// Module-path prefix used for PEFT names.
    pub fn path_prefix(&self) -> &str {
        &self.path_prefix
    }

    /// Whether any layer still carries a LoRA adapter ([`AdaptedModel::has_adapters`]).
    pub fn has_adapters(&self) -> bool {
        AdaptedModel::has_adapters(self)
    }

    /// Folds every LoRA adapter into its frozen weight ([`AdaptedModel::merge_adapters`]).
    ///
    /// # Errors
    /// As [`AdaptedModel::merge_adapters`]; the model is unchanged then.
    pub fn merge_adapters(&mut self, trainable: &Trainable<F>) -> Result<()> {
        AdaptedModel::merge_adapters(self, trainable)
    }

    /// The last hidden state `[B, T, H]` with K tangents if `dirs` perturbs any adapter.
    ///
    /// # Errors
    /// Shape errors for a malformed batch; kernel errors.
    ///
    /// The batch runs in micro-batches of at most [`Bert::with_max_rows`] rows (the sequences
    /// never interact), each through all layers, so only one micro-batch's activations exist at
    /// a time; with dropout, micro-batch c of several draws its masks with c appended to the key.
    pub fn encode(
        &self,
        batch: &BertBatch,
        trainable: &Trainable<F>,
        dirs: &Directions<F>,
        dropout: Option<&DropoutKey>,
    ) -> Result<Dual<F, Ix3>> {
        Ok(self.encode_saving(batch, trainable, dirs, dropout, 0)?.0)
    }

    /// Checks that a batch's ids, segment ids and mask have one shape.
    fn check_batch(&self, batch: &BertBatch) -> Result<()> {
        if batch.ids.dim() != batch.mask.dim() || batch.ids.dim() != batch.type_ids.dim() {
            return Err(Error::shape(
                "Bert::encode",
                format!("mask and type ids {:?}", batch.ids.shape()),
                batch.mask.shape(),
            ));
        }
        Ok(())
    }

    /// [`Bert::encode`] of the whole batch in one pass: the embeddings, then every layer,
    /// pushing the primal input of every layer from `save_from` on into `saved`.
    fn forward(
        &self,
        batch: &BertBatch,
        pass: &Pass<'_, F>,
        save_from: usize,
        saved: &mut Vec<Array3<F>>,
    ) -> Result<Dual<F, Ix3>> {
        let mut x = self.embeddings.forward(batch)?;
        for (l, layer) in self.layers.iter().enumerate() {
            if l >= save_from {
                saved.push(x.primal().clone());
            }
            x = layer.forward(x, batch.mask.view(), pass)?;
        }
        Ok(x)
    }

    /// Pooled features with their tangents: the mean of the last hidden state over real
    /// tokens, `e_b = Σ_t m_bt·x_bt / Σ_t m_bt`, not normalised, and `ė_b` along each of the K
    /// directions of `dirs` (K = 0: a plain forward).
    ///
    /// # Shapes
    /// - output primal `[B, H]`, tangent `[K, B, H]`
    ///
    /// # Errors
    /// As [`Bert::encode`].
    pub fn mean_pooled(
        &self,
        batch: &BertBatch,
        trainable: &Trainable<F>,
        dirs: &Directions<F>,
    ) -> Result<Dual<F, Ix2>> {
        let h = self.encode(batch, trainable, dirs, None)?;
        mean_pool(&h, batch.mask.view())
    }

    /// Sentence embeddings: mean of the last hidden state over real tokens, L2-normalised (the
    /// all-MiniLM-L6-v2 recipe). A plain forward with the adapters as they are.
    ///
    /// # Shapes
    /// - output `[B, H]`
    ///
    /// # Errors
    /// As [`Bert::encode`].
    pub fn sentence_embeddings(
        &self,
        batch: &BertBatch,
        trainable: &Trainable<F>,
    ) -> Result<Array2<F>> {
        let none = Directions::none(trainable.len());
        let mut e = self.mean_pooled(batch, trainable, &none)?.into_primal();
        // e_b ← e_b / ‖e_b‖₂ for every row
        for mut row in e.axis_iter_mut(Axis(0)) {
            let norm = row.iter().map(|v| *v * *v).sum::<F>().sqrt();
            if norm > F::zero() {
                row.mapv_inplace(|v| v / norm);
            }
        }
        Ok(e)
    }

    /// BERT's pooler on the first token, `tanh(W_p·x[:, 0] + b_p)`, or the first token itself
    /// when the checkpoint has no pooler. No dropout.
    fn pool(
        &self,
        h: &Dual<F, Ix3>,
        trainable: &Trainable<F>,
        dirs: &Directions<F>,
    ) -> Result<Dual<F, Ix2>> {
        match &self.pooler {
            Some(p) => p.forward(h, &self.pass(trainable, dirs, None)),
            None => first_token_pool(h),
        }
    }
}

impl<F: Float> AdaptedModel<F> for Bert<F> {
    fn lora(&self) -> &LoraConfig {
        &self.lora
    }

    fn linears(&self) -> Vec<&FrozenLinear<F>> {
        self.layers.iter().flat_map(Layer::linears).collect()
    }

    fn linears_mut(&mut self) -> Vec<&mut FrozenLinear<F>> {
        self.layers
            .iter_mut()
            .flat_map(Layer::linears_mut)
            .collect()
    }

    fn set_max_rows(&mut self, max_rows: usize) {
        self.max_rows = max_rows;
    }
}
