//! BERT encoder (post-LayerNorm, exact or tanh GELU as `hidden_act` says, padding mask) with a
//! sequence-classification head (pooler + classifier, as Hugging Face's
//! `BertForSequenceClassification`) and mean-pooled sentence embeddings (as
//! sentence-transformers' all-MiniLM-L6-v2).
//!
//! ```text
//! x = LN(E_word[ids] + E_pos[t] + E_type[type_ids])
//! per layer:  a = Attn(q(x), k(x), v(x), mask);  x = LN(x + o(a));  x = LN(x + out(GELU(inter(x))))
//! classifier: logits = W_c · tanh(W_p · x[:, 0] + b_p) + b_c
//! ```
//! Any of the six linear layers of a block can carry a LoRA adapter (PEFT's suffix match on
//! `query`, `key`, `value`, `attention.output.dense`, `intermediate.dense`, `output.dense`).

use std::ops::Range;

use ndarray::{Array1, Array2, Array3, ArrayView2, Axis, Ix1, Ix2, Ix3, s};

use super::adapted::AdaptedModel;
use super::microbatch::{DEFAULT_MAX_ROWS, map_micro_batches};
use super::source::{WeightSource, take1, take2};
use crate::io::{Activation, BertConfig};
use crate::kernels::{
    AttentionShape, CrossEntropy, GeluKind, add_into, attention, cross_entropy, first_token_pool,
    gelu_into, layer_norm, linear_dual, mean_pool, tanh,
};
use crate::modules::trainable::param_dual;
use crate::modules::{Directions, DropoutKey, FrozenLinear, LoraConfig, Pass, Trainable};
use crate::{Dual, Error, Float, Result};

pub use super::adapted::PEFT_PREFIX;

/// A batch of tokenised sentences.
///
/// # Shapes
/// - `ids`, `type_ids`, `mask`: `[B, T]` (`mask` true = real token, false = padding)
#[derive(Clone, Debug)]
pub struct BertBatch {
    /// Token ids.
    pub ids: Array2<u32>,
    /// Segment ids (all 0 for single sentences).
    pub type_ids: Array2<u32>,
    /// Attention mask.
    pub mask: Array2<bool>,
}

impl BertBatch {
    /// A batch of single-segment sentences.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if `ids` and `mask` differ in shape.
    pub fn new(ids: Array2<u32>, mask: Array2<bool>) -> Result<Self> {
        if ids.dim() != mask.dim() {
            return Err(Error::shape(
                "BertBatch::new",
                format!("mask {:?}", ids.shape()),
                mask.shape(),
            ));
        }
        let type_ids = Array2::zeros(ids.dim());
        Ok(BertBatch {
            ids,
            type_ids,
            mask,
        })
    }

    /// A batch of two-segment inputs (sentence pairs): `type_ids` as the tokenizer gave them.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if `ids`, `type_ids` and `mask` differ in shape.
    pub fn with_type_ids(
        ids: Array2<u32>,
        type_ids: Array2<u32>,
        mask: Array2<bool>,
    ) -> Result<Self> {
        if type_ids.dim() != ids.dim() {
            return Err(Error::shape(
                "BertBatch::with_type_ids",
                format!("type ids {:?}", ids.shape()),
                type_ids.shape(),
            ));
        }
        let mut batch = BertBatch::new(ids, mask)?;
        batch.type_ids = type_ids;
        Ok(batch)
    }

    /// The sequences `range` of the batch.
    ///
    /// # Shapes
    /// - output: `[range.len(), T]`
    pub fn rows(&self, range: Range<usize>) -> BertBatch {
        BertBatch {
            ids: self.ids.slice(s![range.clone(), ..]).to_owned(),
            type_ids: self.type_ids.slice(s![range.clone(), ..]).to_owned(),
            mask: self.mask.slice(s![range, ..]).to_owned(),
        }
    }
}

impl From<crate::tokenizer::TokenBatch> for BertBatch {
    /// The tokenizer's ids, segment ids and mask, as they are.
    fn from(t: crate::tokenizer::TokenBatch) -> Self {
        BertBatch {
            ids: t.ids,
            type_ids: t.type_ids,
            mask: t.mask,
        }
    }
}

struct Block<F: Float> {
    query: FrozenLinear<F>,
    key: FrozenLinear<F>,
    value: FrozenLinear<F>,
    attn_out: FrozenLinear<F>,
    attn_ln: (Array1<F>, Array1<F>),
    intermediate: FrozenLinear<F>,
    output: FrozenLinear<F>,
    out_ln: (Array1<F>, Array1<F>),
}

/// The BERT encoder with frozen weights and (optionally) LoRA slots.
pub struct Bert<F: Float> {
    config: BertConfig,
    lora: LoraConfig,
    word: Array2<F>,
    position: Array2<F>,
    token_type: Array2<F>,
    emb_ln: (Array1<F>, Array1<F>),
    blocks: Vec<Block<F>>,
    /// The FFN activation named by `config.hidden_act`.
    act: GeluKind,
    pooler: Option<FrozenLinear<F>>,
    /// Module-path prefix of the encoder inside a PEFT-wrapped model (`bert.` for
    /// `BertForSequenceClassification`, empty for a bare `BertModel`).
    path_prefix: String,
    /// Row budget (sequences × positions) of one micro-batch of [`Bert::encode`].
    max_rows: usize,
}

fn frozen<F: Float>(
    src: &mut dyn WeightSource,
    name_prefix: &str,
    path: &str,
    out: usize,
    inp: usize,
) -> Result<FrozenLinear<F>> {
    Ok(FrozenLinear {
        path: path.to_string(),
        weight: take2(src, &format!("{name_prefix}{path}.weight"), out, inp)?.into(),
        bias: Some(take1(src, &format!("{name_prefix}{path}.bias"), out)?),
        adapter: None,
    })
}

fn ln_pair<F: Float>(
    src: &mut dyn WeightSource,
    name: &str,
    h: usize,
) -> Result<(Array1<F>, Array1<F>)> {
    Ok((
        take1(src, &format!("{name}.weight"), h)?,
        take1(src, &format!("{name}.bias"), h)?,
    ))
}

impl<F: Float> Bert<F> {
    /// Loads the encoder from a checkpoint (names with or without the `bert.` prefix) and
    /// registers a LoRA adapter in `trainable` for every targeted linear layer.
    ///
    /// # Errors
    /// Missing or mis-shaped tensors ([`Error::MissingTensor`], [`Error::TensorShape`]); an
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
        let act = match config.hidden_act {
            Activation::Gelu => GeluKind::Erf,
            Activation::GeluTanh => GeluKind::Tanh,
            other => {
                return Err(Error::invalid(
                    "Bert::load",
                    format!("hidden_act {other:?} is not supported (only gelu and gelu_new)"),
                ));
            }
        };
        let (h, ffn) = (config.hidden_size, config.intermediate_size);
        let np = if src.has("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            ""
        };
        let word = take2(
            src,
            &format!("{np}embeddings.word_embeddings.weight"),
            config.vocab_size,
            h,
        )?;
        let position = take2(
            src,
            &format!("{np}embeddings.position_embeddings.weight"),
            config.max_position_embeddings,
            h,
        )?;
        let token_type = take2(
            src,
            &format!("{np}embeddings.token_type_embeddings.weight"),
            config.type_vocab_size,
            h,
        )?;
        let emb_ln = ln_pair(src, &format!("{np}embeddings.LayerNorm"), h)?;
        let peft_prefix = format!("{PEFT_PREFIX}{module_prefix}");
        let mut blocks = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            let mut block = Block {
                query: frozen(src, np, &format!("{p}.attention.self.query"), h, h)?,
                key: frozen(src, np, &format!("{p}.attention.self.key"), h, h)?,
                value: frozen(src, np, &format!("{p}.attention.self.value"), h, h)?,
                attn_out: frozen(src, np, &format!("{p}.attention.output.dense"), h, h)?,
                attn_ln: ln_pair(src, &format!("{np}{p}.attention.output.LayerNorm"), h)?,
                intermediate: frozen(src, np, &format!("{p}.intermediate.dense"), ffn, h)?,
                output: frozen(src, np, &format!("{p}.output.dense"), h, ffn)?,
                out_ln: ln_pair(src, &format!("{np}{p}.output.LayerNorm"), h)?,
            };
            for lin in [
                &mut block.query,
                &mut block.key,
                &mut block.value,
                &mut block.attn_out,
                &mut block.intermediate,
                &mut block.output,
            ] {
                lin.attach_lora(lora, &peft_prefix, seed, trainable)?;
            }
            blocks.push(block);
        }
        let pooler = if src.has(&format!("{np}pooler.dense.weight")) {
            Some(frozen(src, np, "pooler.dense", h, h)?)
        } else {
            None
        };
        Ok(Bert {
            config: config.clone(),
            lora: lora.clone(),
            word,
            position,
            token_type,
            emb_ln,
            blocks,
            act,
            pooler,
            path_prefix: module_prefix.to_string(),
            max_rows: DEFAULT_MAX_ROWS,
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

    /// Embedding layer: `LN(E_word[ids] + E_pos[t] + E_type[type_ids])` (no tangent: frozen).
    fn embed(&self, batch: &BertBatch) -> Result<Dual<F, Ix3>> {
        const OP: &str = "Bert::embed";
        let (b, t) = batch.ids.dim();
        let h = self.config.hidden_size;
        if t > self.position.nrows() {
            return Err(Error::invalid(
                OP,
                format!(
                    "sequence length {t} exceeds {} positions",
                    self.position.nrows()
                ),
            ));
        }
        let mut x = Array3::<F>::zeros((b, t, h));
        for bi in 0..b {
            for ti in 0..t {
                let id = batch.ids[[bi, ti]] as usize;
                let ty = batch.type_ids[[bi, ti]] as usize;
                if id >= self.word.nrows() {
                    return Err(Error::invalid(
                        OP,
                        format!("token id {id} >= vocabulary {}", self.word.nrows()),
                    ));
                }
                if ty >= self.token_type.nrows() {
                    return Err(Error::invalid(
                        OP,
                        format!("token type {ty} >= {}", self.token_type.nrows()),
                    ));
                }
                let mut row = x.slice_mut(ndarray::s![bi, ti, ..]);
                row += &self.word.row(id);
                row += &self.position.row(ti);
                row += &self.token_type.row(ty);
            }
        }
        layer_norm(
            &Dual::constant(x),
            self.emb_ln.0.view(),
            Some(self.emb_ln.1.view()),
            self.config.layer_norm_eps,
        )
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
        if batch.ids.dim() != batch.mask.dim() || batch.ids.dim() != batch.type_ids.dim() {
            return Err(Error::shape(
                "Bert::encode",
                format!("mask and type ids {:?}", batch.ids.shape()),
                batch.mask.shape(),
            ));
        }
        let (b, t) = batch.ids.dim();
        map_micro_batches(b, t, self.max_rows, dropout, |range, key| {
            self.encode_all(&batch.rows(range), trainable, dirs, key)
        })
    }

    /// [`Bert::encode`] of the whole batch in one pass.
    fn encode_all(
        &self,
        batch: &BertBatch,
        trainable: &Trainable<F>,
        dirs: &Directions<F>,
        dropout: Option<&DropoutKey>,
    ) -> Result<Dual<F, Ix3>> {
        let cfg = &self.config;
        let heads = cfg.num_attention_heads;
        let shape = AttentionShape {
            n_heads: heads,
            n_kv_heads: heads,
            head_dim: cfg.hidden_size / heads,
            causal: false,
        };
        let eps = cfg.layer_norm_eps;
        let pass = Pass::new(trainable, dirs, &self.lora, dropout);
        let mut x = self.embed(batch)?;
        for blk in &self.blocks {
            // attention sub-block: x = LN(x + O·Attn(Qx, Kx, Vx))
            let q = blk.query.forward(&x, &pass)?;
            let k = blk.key.forward(&x, &pass)?;
            let v = blk.value.forward(&x, &pass)?;
            let a = attention(&q, &k, &v, Some(batch.mask.view()), &shape)?;
            drop((q, k, v));
            let o = blk.attn_out.forward(&a, &pass)?;
            // the residual is added into o's buffers (no new allocation)
            x = layer_norm(
                &add_into(o, &x)?,
                blk.attn_ln.0.view(),
                Some(blk.attn_ln.1.view()),
                eps,
            )?;
            // feed-forward sub-block: x = LN(x + W2·GELU(W1x))
            // GELU scales the intermediate's tangents in place (no second [K, N, 4d] array)
            let hdn = gelu_into(blk.intermediate.forward(&x, &pass)?, self.act)?;
            let o = blk.output.forward(&hdn, &pass)?;
            drop(hdn);
            x = layer_norm(
                &add_into(o, &x)?,
                blk.out_ln.0.view(),
                Some(blk.out_ln.1.view()),
                eps,
            )?;
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
        for mut row in e.axis_iter_mut(Axis(0)) {
            let norm = row.iter().map(|v| *v * *v).sum::<F>().sqrt();
            if norm > F::zero() {
                row.mapv_inplace(|v| v / norm);
            }
        }
        Ok(e)
    }

    /// BERT's pooler on the first token: `tanh(W_p·x[:, 0] + b_p)`.
    fn pool(
        &self,
        h: &Dual<F, Ix3>,
        trainable: &Trainable<F>,
        dirs: &Directions<F>,
    ) -> Result<Dual<F, Ix2>> {
        let first = first_token_pool(h)?;
        match &self.pooler {
            Some(p) => tanh(&p.forward(&first, &Pass::new(trainable, dirs, &self.lora, None))?),
            None => Ok(first),
        }
    }
}

impl<F: Float> AdaptedModel<F> for Bert<F> {
    fn lora(&self) -> &LoraConfig {
        &self.lora
    }

    fn linears(&self) -> Vec<&FrozenLinear<F>> {
        self.blocks
            .iter()
            .flat_map(|b| {
                [
                    &b.query,
                    &b.key,
                    &b.value,
                    &b.attn_out,
                    &b.intermediate,
                    &b.output,
                ]
            })
            .collect()
    }

    fn linears_mut(&mut self) -> Vec<&mut FrozenLinear<F>> {
        self.blocks
            .iter_mut()
            .flat_map(|b| {
                [
                    &mut b.query,
                    &mut b.key,
                    &mut b.value,
                    &mut b.attn_out,
                    &mut b.intermediate,
                    &mut b.output,
                ]
            })
            .collect()
    }

    fn set_max_rows(&mut self, max_rows: usize) {
        self.max_rows = max_rows;
    }
}

/// What a classifier pass returns.
#[derive(Clone, Debug)]
pub struct ClassifierOutput<F: Float> {
    /// Logits `[B, C]`.
    pub logits: Array2<F>,
    /// Mean cross-entropy and its K JVP scalars (when labels were given).
    pub loss: Option<CrossEntropy<F>>,
    /// The head's input `[B, H]` (the pooled features), for exact head gradients.
    pub features: Array2<F>,
}

/// How the classifier turns the last hidden state into the head's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Pooling {
    /// BERT's pooler on the first token, `tanh(W_p·x[:, 0] + b_p)` (Hugging Face's
    /// `BertForSequenceClassification`).
    Pooler,
    /// Mean over real tokens (how sentence-transformers models such as all-MiniLM-L6-v2 were
    /// trained to be read).
    Mean,
}

/// `BertForSequenceClassification` with LoRA: the encoder, its pooler, and a trainable linear
/// classifier registered as the last unit (PEFT's `modules_to_save = ["classifier"]`).
pub struct BertClassifier<F: Float> {
    bert: Bert<F>,
    pooling: Pooling,
    n_labels: usize,
    head_unit: usize,
    head_weight: usize,
    head_bias: usize,
}

impl<F: Float> BertClassifier<F> {
    /// Loads the encoder, attaches LoRA adapters and a fresh classifier (`N(0, 0.02²)` weight,
    /// zero bias, as Hugging Face initialises it), and returns the model with its initial
    /// trainable parameters.
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
                pooling: Pooling::Pooler,
                n_labels,
                head_unit: unit,
                head_weight: params.start,
                head_bias: params.start + 1,
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

    /// The pooling in use.
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// The encoder.
    pub fn bert(&self) -> &Bert<F> {
        &self.bert
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
        if let Some(l) = labels
            && l.len() != batch.ids.nrows()
        {
            return Err(Error::shape(
                "BertClassifier::forward",
                format!("[{}] labels", batch.ids.nrows()),
                &[l.len()],
            ));
        }
        let h = self.bert.encode(batch, trainable, dirs, dropout)?;
        let pooled = match self.pooling {
            Pooling::Pooler => self.bert.pool(&h, trainable, dirs)?,
            Pooling::Mean => mean_pool(&h, batch.mask.view())?,
        };
        drop(h);
        let w = param_dual::<F, Ix2>(trainable, dirs, self.head_weight)?;
        let b = param_dual::<F, Ix1>(trainable, dirs, self.head_bias)?;
        let logits = linear_dual(&pooled, &w, Some(&b))?;
        let loss = match labels {
            Some(l) => Some(cross_entropy(&logits, l, -100)?),
            None => None,
        };
        Ok(ClassifierOutput {
            logits: logits.into_primal(),
            loss,
            features: pooled.into_primal(),
        })
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
        &self.bert.lora
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

/// Index of the largest entry of every row.
pub fn argmax_rows<F: Float>(x: ArrayView2<'_, F>) -> Vec<usize> {
    x.rows()
        .into_iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .fold((0, F::neg_infinity()), |(bi, bv), (i, &v)| {
                    if v > bv { (i, v) } else { (bi, bv) }
                })
                .0
        })
        .collect()
}
