//! `BertForSequenceClassification` with LoRA: the encoder, a pooling of its last hidden state
//! (mean, first token, or BERT's pooler), and a trainable linear classifier registered as the
//! last unit.
//!
//! ```text
//! logits = W_c · pool(x) + b_c,   pool(x) = Σ_t m_t·x_t / Σ_t m_t,  x[:, 0],  or  tanh(W_p · x[:, 0] + b_p)
//! ```
//!
//! Optionally ([`BertClassifier::with_exact_top_layers`]) the adapters of the top encoder layers
//! get their exact gradient by a reverse pass through just those layers
//! ([`BertClassifier::forward_with_exact`]).

use std::collections::BTreeMap;

use ndarray::{Array1, Array2, ArrayD, Ix1, Ix2};

use super::{Bert, BertBatch, PEFT_PREFIX};
use crate::io::BertConfig;
use crate::kernels::reverse::{first_token_pool_backward, mean_pool_backward};
use crate::kernels::{
    CrossEntropy, cross_entropy, cross_entropy_logit_grad, first_token_pool, linear_dual, mean_pool,
};
use crate::models::{AdaptedModel, WeightSource, argmax_rows};
use crate::modules::trainable::param_dual;
use crate::modules::{Directions, DropoutKey, FrozenLinear, LoraConfig, Trainable};
use crate::{Error, Float, Result};

/// What a classifier pass returns.
#[derive(Clone, Debug)]
pub struct ClassifierOutput<F: Float> {
    /// Logits `[B, C]`.
    pub logits: Array2<F>,
    /// Mean cross-entropy and its K JVP scalars (when labels were given).
    pub loss: Option<CrossEntropy<F>>,
    /// The head's input `[B, H]` (the pooled features), for exact head gradients.
    pub features: Array2<F>,
    /// Exact gradients `(registry index, ∂L/∂θ)` of the top layers' adapter tensors a pass was
    /// asked for ([`BertClassifier::forward_with_exact`]), in the order asked; empty otherwise.
    pub exact: Vec<(usize, ArrayD<F>)>,
}

/// How the classifier turns the last hidden state into the head's input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// BERT's pooler on the first token, `tanh(W_p·x[:, 0] + b_p)` (Hugging Face's
    /// `BertForSequenceClassification`; the first token itself for a checkpoint without pooler
    /// weights).
    Pooler,
    /// Mean over real tokens, `Σ_t m_t·x_t / Σ_t m_t` (how sentence-transformers models such as
    /// all-MiniLM-L6-v2 and bge were trained to be read, and it needs no pooler weights): the
    /// default.
    #[default]
    Mean,
    /// The first token's last hidden state `x[:, 0]` (`[CLS]`), without the pooler (how bge and
    /// sentence-transformers' CLS-pooled models are read).
    Cls,
}

from_names!(Pooling, "mean" => Pooling::Mean, "cls" => Pooling::Cls, "pooler" => Pooling::Pooler);

/// `BertForSequenceClassification` with LoRA: the encoder, a pooling, and a trainable linear
/// classifier registered as the last unit (PEFT's `modules_to_save = ["classifier"]`).
pub struct BertClassifier<F: Float> {
    bert: Bert<F>,
    pooling: Pooling,
    n_labels: usize,
    head_unit: usize,
    head_weight: usize,
    head_bias: usize,
    /// Top encoder layers whose adapters get their exact gradient (0: none).
    exact_top: usize,
}

impl<F: Float> BertClassifier<F> {
    /// Loads the encoder, attaches LoRA adapters and a fresh classifier (`N(0, 0.02²)` weight,
    /// zero bias, as Hugging Face initialises it), and returns the model with its initial
    /// trainable parameters. The head reads mean-pooled features ([`Pooling::default`]);
    /// [`BertClassifier::with_pooling`] chooses another pooling.
    ///
    /// # Errors
    /// As [`Bert::load`]; [`Error::InvalidArgument`] if `n_labels` < 2.
    pub fn load(
        config: &BertConfig,
        src: &mut dyn WeightSource,
        lora: &LoraConfig,
        n_labels: usize,
        seed: u64,
    ) -> Result<(Self, Trainable<F>)> {
        if n_labels < 2 {
            return Err(Error::invalid(
                "BertClassifier::load",
                format!("{n_labels} labels; need at least 2"),
            ));
        }
        let mut trainable = Trainable::new();
        let bert = Bert::load(config, src, lora, "bert.", seed, &mut trainable)?;
        let h = config.hidden_size;
        let mut rng = crate::rng::KeyedRng::new(seed, crate::rng::Domain::Init, &[u64::MAX]);
        let mut w = Array2::<F>::zeros((n_labels, h));
        w.iter_mut()
            .for_each(|v| *v = F::from_f64(0.02 * rng.normal()));
        let b = Array1::<F>::zeros(n_labels);
        let unit = trainable.push_unit(
            "classifier",
            vec![
                (format!("{PEFT_PREFIX}classifier.weight"), w.into_dyn()),
                (format!("{PEFT_PREFIX}classifier.bias"), b.into_dyn()),
            ],
        )?;
        let params = trainable.units()[unit].params.clone();
        Ok((
            BertClassifier {
                bert,
                pooling: Pooling::default(),
                n_labels,
                head_unit: unit,
                head_weight: params.start,
                head_bias: params.start + 1,
                exact_top: 0,
            },
            trainable,
        ))
    }

    /// Uses `pooling` to read the encoder's output.
    pub fn with_pooling(mut self, pooling: Pooling) -> Self {
        self.pooling = pooling;
        self
    }

    /// Runs the encoder in micro-batches of at most `max_rows` rows (see
    /// [`Bert::with_max_rows`]).
    pub fn with_max_rows(self, max_rows: usize) -> Self {
        AdaptedModel::with_max_rows(self, max_rows)
    }

    /// Gives the adapters of the top `n` encoder layers their exact gradient by a local
    /// reverse pass through just those layers (0, the default: none). Their registry indices
    /// are [`BertClassifier::backprop_params`]; [`BertClassifier::forward_with_exact`] returns
    /// their gradients beside the forward-mode JVPs of everything else. The memory this costs
    /// is the n layers' `[B, T, H]` inputs plus one layer's activations (recomputed; see
    /// `models/bert/top.rs`).
    ///
    /// An `n` larger than the number of layers is refused at use: every pass then returns
    /// [`Error::InvalidArgument`].
    pub fn with_exact_top_layers(mut self, n: usize) -> Self {
        self.exact_top = n;
        self
    }

    /// The number of top layers trained on their exact gradient
    /// ([`BertClassifier::with_exact_top_layers`]).
    pub fn exact_top_layers(&self) -> usize {
        self.exact_top
    }

    /// Registry indices of the adapter tensors (`lora_A`, `lora_B`) of the top
    /// [`exact_top_layers`](Self::exact_top_layers) encoder layers, registry order: what
    /// [`BertClassifier::forward_with_exact`] can differentiate exactly. Empty when the option
    /// is off or those layers carry no adapter (a LoRA config restricted to lower layers).
    pub fn backprop_params(&self) -> Vec<usize> {
        let n = self.bert.n_layers();
        (n - self.exact_top.min(n)..n)
            .flat_map(|l| self.bert.layer_params(l))
            .collect()
    }

    /// The pooling in use.
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// The encoder.
    pub fn bert(&self) -> &Bert<F> {
        &self.bert
    }

    /// The encoder, without the head (its registry entries stay; the encoder never reads them).
    pub fn into_bert(self) -> Bert<F> {
        self.bert
    }

    /// Folds the encoder's LoRA adapters into its weights ([`Bert::merge_adapters`]); the
    /// classifier stays in the registry.
    ///
    /// # Errors
    /// As [`Bert::merge_adapters`].
    pub fn merge_adapters(&mut self, trainable: &Trainable<F>) -> Result<()> {
        AdaptedModel::merge_adapters(self, trainable)
    }

    /// Number of classes.
    pub fn n_labels(&self) -> usize {
        self.n_labels
    }

    /// Registry index of the classifier's unit (its weight and bias): the unit a federated run
    /// shares with every client ([`crate::federated::SimConfig::tuned_classifier`]).
    pub fn head_unit(&self) -> usize {
        self.head_unit
    }

    /// Registry indices of the classifier's weight and bias.
    pub fn head_params(&self) -> (usize, usize) {
        (self.head_weight, self.head_bias)
    }

    /// One pass: logits, and with `labels` the mean cross-entropy plus one JVP scalar per
    /// direction in `dirs` (none when `dirs` is empty: then this is the plain forward).
    ///
    /// # Errors
    /// Batch/label shape errors; kernel errors.
    pub fn forward(
        &self,
        batch: &BertBatch,
        labels: Option<&[i64]>,
        trainable: &Trainable<F>,
        dirs: &Directions<F>,
        dropout: Option<&DropoutKey>,
    ) -> Result<ClassifierOutput<F>> {
        self.forward_with_exact(batch, labels, trainable, dirs, dropout, &[])
    }

    /// [`BertClassifier::forward`], plus the exact gradients of the mean cross-entropy with
    /// respect to the tensors `exact_for` (a subset of [`BertClassifier::backprop_params`]) in
    /// [`ClassifierOutput::exact`], in that order. The dual pass runs as always (the JVPs along
    /// `dirs` are unchanged); the top layers are then reversed from
    ///
    /// ```text
    /// dZ = (softmax(Z) − onehot(y)) / n_valid,   dpooled = dZ·W_c,
    /// dh = mean pooling: m_bt·dpooled_b / Σ_t m_bt  |  pooler: ((1 − p)(1 + p)⊙dpooled)·W_p at t = 0
    /// ```
    ///
    /// down to the lowest layer that holds a requested tensor ([`Bert::backward_top`]), at the
    /// primal point of `trainable`. An empty `exact_for` is exactly [`BertClassifier::forward`].
    ///
    /// # Errors
    /// As [`BertClassifier::forward`]; [`Error::InvalidArgument`] if
    /// [`with_exact_top_layers`](Self::with_exact_top_layers) exceeds the number of layers (on
    /// every pass), or, with a non-empty `exact_for`, if a tensor is not in
    /// [`BertClassifier::backprop_params`], no labels are given, or the pass applies LoRA
    /// dropout (a dropout key and `lora_dropout > 0`: the reverse rules have no mask).
    pub fn forward_with_exact(
        &self,
        batch: &BertBatch,
        labels: Option<&[i64]>,
        trainable: &Trainable<F>,
        dirs: &Directions<F>,
        dropout: Option<&DropoutKey>,
        exact_for: &[usize],
    ) -> Result<ClassifierOutput<F>> {
        const OP: &str = "BertClassifier::forward";
        if let Some(l) = labels
            && l.len() != batch.ids.nrows()
        {
            return Err(Error::shape(
                OP,
                format!("[{}] labels", batch.ids.nrows()),
                &[l.len()],
            ));
        }
        let top = self.reversed_layers(labels, dropout, exact_for)?;
        let (h, saved) = self
            .bert
            .encode_saving(batch, trainable, dirs, dropout, top)?;
        let pooled = match self.pooling {
            Pooling::Pooler => self.bert.pool(&h, trainable, dirs)?,
            Pooling::Mean => mean_pool(&h, batch.mask.view())?,
            Pooling::Cls => first_token_pool(&h)?,
        };
        drop(h);
        let w = param_dual::<F, Ix2>(trainable, dirs, self.head_weight)?;
        let b = param_dual::<F, Ix1>(trainable, dirs, self.head_bias)?;
        let logits = linear_dual(&pooled, &w, Some(&b))?;
        let loss = match labels {
            Some(l) => Some(cross_entropy(&logits, l, -100)?),
            None => None,
        };
        let (logits, features) = (logits.into_primal(), pooled.into_primal());
        let mut exact = Vec::new();
        if let (true, Some(labels)) = (top > 0, labels) {
            // ∂L/∂h from the head, then the reverse pass through the saved top layers
            let dz = cross_entropy_logit_grad(logits.view(), labels, -100)?;
            let dpooled = dz.dot(w.primal());
            let t = batch.ids.ncols();
            let dh = match self.pooling {
                Pooling::Pooler => self
                    .bert
                    .pool_backward(features.view(), dpooled.view(), t)?,
                Pooling::Mean => mean_pool_backward(dpooled.view(), batch.mask.view())?,
                Pooling::Cls => first_token_pool_backward(dpooled.view(), t)?,
            };
            let mut grads: BTreeMap<usize, ArrayD<F>> = self
                .bert
                .backward_top(batch, saved, dh.view(), trainable, dropout)?
                .into_iter()
                .collect();
            for p in exact_for {
                let g = grads
                    .remove(p)
                    .ok_or_else(|| Error::invalid(OP, format!("no gradient of tensor {p}")))?;
                exact.push((*p, g));
            }
        }
        Ok(ClassifierOutput {
            logits,
            loss,
            features,
            exact,
        })
    }

    /// How many top layers a pass reverses for the tensors `exact_for`: down to the lowest
    /// layer holding one of them (0 when none is asked for), after checking the request.
    fn reversed_layers(
        &self,
        labels: Option<&[i64]>,
        dropout: Option<&DropoutKey>,
        exact_for: &[usize],
    ) -> Result<usize> {
        const OP: &str = "BertClassifier::forward";
        let n = self.bert.n_layers();
        if self.exact_top > n {
            return Err(Error::invalid(
                OP,
                format!(
                    "exact gradients for the top {} layers, the encoder has {n}",
                    self.exact_top
                ),
            ));
        }
        if exact_for.is_empty() {
            return Ok(0);
        }
        if labels.is_none() {
            return Err(Error::invalid(OP, "exact gradients need labels"));
        }
        if dropout.is_some() && self.bert.lora().lora_dropout > 0.0 {
            return Err(Error::invalid(
                OP,
                "exact gradients with LoRA dropout active in the pass: the reverse rules have \
                 no mask",
            ));
        }
        let mut lowest = n;
        for &p in exact_for {
            let layer = (n - self.exact_top..n).find(|&l| self.bert.layer_params(l).contains(&p));
            match layer {
                Some(l) => lowest = lowest.min(l),
                None => {
                    return Err(Error::invalid(
                        OP,
                        format!(
                            "tensor {p} is not an adapter of the top {} layers (backprop_params)",
                            self.exact_top
                        ),
                    ));
                }
            }
        }
        Ok(n - lowest)
    }

    /// Predicted classes (argmax of the logits) for a batch, with the adapters as they are.
    ///
    /// # Errors
    /// As [`BertClassifier::forward`].
    pub fn predict(&self, batch: &BertBatch, trainable: &Trainable<F>) -> Result<Vec<usize>> {
        let out = self.forward(
            batch,
            None,
            trainable,
            &Directions::none(trainable.len()),
            None,
        )?;
        Ok(argmax_rows(out.logits.view()))
    }
}

impl<F: Float> AdaptedModel<F> for BertClassifier<F> {
    fn lora(&self) -> &LoraConfig {
        self.bert.lora()
    }

    fn linears(&self) -> Vec<&FrozenLinear<F>> {
        self.bert.linears()
    }

    fn linears_mut(&mut self) -> Vec<&mut FrozenLinear<F>> {
        self.bert.linears_mut()
    }

    fn set_max_rows(&mut self, max_rows: usize) {
        self.bert.set_max_rows(max_rows);
    }
}
