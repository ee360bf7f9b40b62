//! Federated text classification: a [`TextClassifier`] (BERT's, or a user's own model) over
//! federated partitions of labelled texts. The head's exact gradient comes from the pooled
//! features; a model with a reverse pass of its own (BERT's exact top layers,
//! [`BertClassifier::with_exact_top_layers`]) returns the exact gradients of more tensors.

use ndarray::Axis;

use crate::data::{Example, Partition, PartitionScheme, train_test_split};
use crate::federated::{Evaluation, FederatedTask, LossJvp, Objective};
use crate::kernels::cross_entropy_logit_grad;
use crate::models::bert::{BertBatch, BertClassifier, ClassifierOutput, argmax_rows};
use crate::modules::{Directions, DropoutKey, Trainable};
use crate::rng::{Domain, KeyedRng};
use crate::tokenizer::{TextTokenizer, TokenBatch};
use crate::{Error, Result};

/// A classifier of tokenised texts whose logits are a linear head on pooled features,
/// `logits = features·Wᵀ + b`: what [`ClassificationTask`] trains. [`BertClassifier`]
/// implements it; a user's own model plugs in the same way.
pub trait TextClassifier: Sync {
    /// The model's input, built from the tokenizer's batch.
    type Input: From<TokenBatch> + Sync;

    /// One pass: logits, and with `labels` the mean cross-entropy plus one JVP scalar per
    /// direction of `dirs`, and the head's input features.
    ///
    /// # Shapes
    /// - `labels`: `[B]`; output logits `[B, C]`, features `[B, H]`
    ///
    /// # Errors
    /// The model's errors.
    fn classify(
        &self,
        input: &Self::Input,
        labels: Option<&[i64]>,
        params: &Trainable<f32>,
        dirs: &Directions<f32>,
        dropout: Option<&DropoutKey>,
    ) -> Result<ClassifierOutput<f32>>;

    /// Registry indices of the head's weight `[C, H]` and bias `[C]`, whose exact gradients
    /// the task computes from the features at no activation cost.
    fn head_params(&self) -> (usize, usize);

    /// Registry indices of the tensors (besides the head) whose exact gradient the model can
    /// return by a reverse pass of its own ([`TextClassifier::classify_with_exact`]): for
    /// BERT, the top layers' adapters ([`BertClassifier::with_exact_top_layers`]). Default:
    /// none.
    fn backprop_params(&self) -> Vec<usize> {
        Vec::new()
    }

    /// [`TextClassifier::classify`], plus the exact gradients of the tensors `exact_for` (a
    /// subset of [`TextClassifier::backprop_params`], given only with labels) in
    /// [`ClassifierOutput::exact`]. The default, for a model without a reverse pass (whose
    /// `backprop_params` is empty, so `exact_for` is too), is `classify`.
    ///
    /// # Errors
    /// The model's errors.
    fn classify_with_exact(
        &self,
        input: &Self::Input,
        labels: Option<&[i64]>,
        params: &Trainable<f32>,
        dirs: &Directions<f32>,
        dropout: Option<&DropoutKey>,
        exact_for: &[usize],
    ) -> Result<ClassifierOutput<f32>> {
        let _ = exact_for;
        self.classify(input, labels, params, dirs, dropout)
    }
}

/// The loss of a pass that was given labels: a [`TextClassifier`] that returns none is a model
/// error, not a panic.
fn labelled_loss(
    loss: Option<crate::kernels::CrossEntropy<f32>>,
) -> Result<crate::kernels::CrossEntropy<f32>> {
    loss.ok_or_else(|| {
        Error::invalid(
            "TextClassifier::classify",
            "returned no loss for a labelled batch",
        )
    })
}

impl TextClassifier for BertClassifier<f32> {
    type Input = BertBatch;

    fn classify(
        &self,
        input: &BertBatch,
        labels: Option<&[i64]>,
        params: &Trainable<f32>,
        dirs: &Directions<f32>,
        dropout: Option<&DropoutKey>,
    ) -> Result<ClassifierOutput<f32>> {
        self.forward(input, labels, params, dirs, dropout)
    }

    fn head_params(&self) -> (usize, usize) {
        BertClassifier::head_params(self)
    }

    fn backprop_params(&self) -> Vec<usize> {
        BertClassifier::backprop_params(self)
    }

    fn classify_with_exact(
        &self,
        input: &BertBatch,
        labels: Option<&[i64]>,
        params: &Trainable<f32>,
        dirs: &Directions<f32>,
        dropout: Option<&DropoutKey>,
        exact_for: &[usize],
    ) -> Result<ClassifierOutput<f32>> {
        self.forward_with_exact(input, labels, params, dirs, dropout, exact_for)
    }
}

/// A tokenised classification batch: the model input and the labels.
pub struct LabelledBatch<I = BertBatch> {
    /// The model's input (for BERT: ids, segment ids and mask `[B, T]`).
    pub input: I,
    /// Class per row.
    pub labels: Vec<i64>,
}

/// Text classification over federated partitions of labelled examples, with a shared frozen
/// classifier (borrowed: every simulated client reads the same weights).
pub struct ClassificationTask<'m, M: TextClassifier = BertClassifier<f32>> {
    /// The model.
    pub model: &'m M,
    /// Its tokenizer (truncation set to the maximum length).
    pub tokenizer: &'m TextTokenizer,
    /// All training examples.
    pub train: Vec<Example>,
    /// The global test set.
    pub test: Vec<Example>,
    /// Training example indices per client.
    pub client_train: Partition,
    /// Local test example indices (into `train`) per client.
    pub client_test: Partition,
    /// Seed of the per-round shuffles.
    pub seed: u64,
    /// Batch size for evaluation.
    pub eval_batch: usize,
}

impl<'m, M: TextClassifier> ClassificationTask<'m, M> {
    /// Share of each client's examples held out as its local test split (the reference's 80/20),
    /// for the personalised metric [`FederatedTask::evaluate_client`].
    pub const CLIENT_TEST_FRACTION: f64 = 0.2;
    /// Evaluation batch size of [`ClassificationTask::new`].
    pub const EVAL_BATCH: usize = 64;

    /// A task over `train` split among `n_clients` clients by `scheme` (each client's examples
    /// then split 80/20 into local train and test), evaluated on `test`, all seeded by `seed`.
    ///
    /// # Errors
    /// [`PartitionScheme::split`]'s errors.
    pub fn new(
        model: &'m M,
        tokenizer: &'m TextTokenizer,
        train: Vec<Example>,
        test: Vec<Example>,
        scheme: &PartitionScheme,
        n_clients: usize,
        seed: u64,
    ) -> Result<Self> {
        let parts = scheme.split(&train, n_clients, seed)?;
        let (client_train, client_test) =
            train_test_split(&parts, Self::CLIENT_TEST_FRACTION, seed);
        Ok(ClassificationTask {
            model,
            tokenizer,
            train,
            test,
            client_train,
            client_test,
            seed,
            eval_batch: Self::EVAL_BATCH,
        })
    }

    /// Tokenises `examples[idx]` with dynamic padding; an example with a
    /// [`text_pair`](Example::text_pair) is encoded as a pair (BERT: `[CLS] text [SEP] pair
    /// [SEP]`, segment ids 1 on the pair).
    ///
    /// # Errors
    /// Tokenizer errors.
    pub fn batch(&self, examples: &[Example], idx: &[usize]) -> Result<LabelledBatch<M::Input>> {
        let texts: Vec<(&str, Option<&str>)> = idx
            .iter()
            .map(|&i| (examples[i].text.as_str(), examples[i].text_pair.as_deref()))
            .collect();
        let tb = self.tokenizer.encode_pair_batch(&texts, true)?;
        Ok(LabelledBatch {
            input: tb.into(),
            labels: idx.iter().map(|&i| examples[i].label as i64).collect(),
        })
    }

    fn eval_on(
        &self,
        examples: &[Example],
        idx: &[usize],
        params: &Trainable<f32>,
    ) -> Result<Evaluation> {
        let none = Directions::none(params.len());
        // batches of similar lengths pad little (the order does not change any prediction)
        let mut idx = idx.to_vec();
        idx.sort_by_key(|&i| (examples[i].text.len(), i));
        let (mut loss, mut correct, mut n) = (0.0f64, 0usize, 0usize);
        for chunk in idx.chunks(self.eval_batch.max(1)) {
            let b = self.batch(examples, chunk)?;
            let out = self
                .model
                .classify(&b.input, Some(&b.labels), params, &none, None)?;
            let ce = labelled_loss(out.loss)?;
            loss += ce.loss as f64 * chunk.len() as f64;
            correct += argmax_rows(out.logits.view())
                .iter()
                .zip(&b.labels)
                .filter(|(p, l)| **p as i64 == **l)
                .count();
            n += chunk.len();
        }
        if n == 0 {
            return Ok(Evaluation::default());
        }
        Ok(Evaluation {
            loss: loss / n as f64,
            accuracy: Some(correct as f64 / n as f64),
            n,
        })
    }
}

impl<M: TextClassifier> Objective<f32> for ClassificationTask<'_, M> {
    type Batch = LabelledBatch<M::Input>;

    fn loss_jvp(
        &self,
        batch: &LabelledBatch<M::Input>,
        params: &Trainable<f32>,
        dirs: &Directions<f32>,
        dropout: Option<&DropoutKey>,
        exact_for: &[usize],
    ) -> Result<LossJvp<f32>> {
        // the model's own reverse pass for the requested tensors it can differentiate exactly
        let backprop = self.model.backprop_params();
        let wanted: Vec<usize> = exact_for
            .iter()
            .copied()
            .filter(|p| backprop.contains(p))
            .collect();
        let out = self.model.classify_with_exact(
            &batch.input,
            Some(&batch.labels),
            params,
            dirs,
            dropout,
            &wanted,
        )?;
        let ce = labelled_loss(out.loss)?;
        let mut exact: Vec<_> = out
            .exact
            .into_iter()
            .filter(|(p, _)| wanted.contains(p))
            .collect();
        if let Some(p) = wanted
            .iter()
            .find(|&&p| !exact.iter().any(|(q, _)| *q == p))
        {
            return Err(Error::invalid(
                "TextClassifier::classify_with_exact",
                format!("returned no gradient for tensor {p} of its backprop_params"),
            ));
        }
        let (hw, hb) = self.model.head_params();
        if exact_for.contains(&hw) || exact_for.contains(&hb) {
            // the head sits on the last activation: ∂L/∂W = dZᵀ·X, ∂L/∂b = Σ_rows dZ
            let dz = cross_entropy_logit_grad(out.logits.view(), &batch.labels, -100)?;
            if exact_for.contains(&hw) {
                exact.push((hw, dz.t().dot(&out.features).into_dyn()));
            }
            if exact_for.contains(&hb) {
                exact.push((hb, dz.sum_axis(Axis(0)).into_dyn()));
            }
        }
        Ok(LossJvp {
            loss: ce.loss,
            jvp: ce.jvp,
            exact,
        })
    }

    fn exact_params(&self) -> Vec<usize> {
        let (w, b) = self.model.head_params();
        vec![w, b]
    }

    fn backprop_params(&self) -> Vec<usize> {
        self.model.backprop_params()
    }

    fn batch_len(&self, batch: &LabelledBatch<M::Input>) -> usize {
        batch.labels.len()
    }
}

impl<M: TextClassifier> FederatedTask<f32> for ClassificationTask<'_, M> {
    fn n_clients(&self) -> usize {
        self.client_train.len()
    }

    fn train_batches(
        &self,
        client: usize,
        round: u64,
        batch_size: usize,
    ) -> Result<Vec<LabelledBatch<M::Input>>> {
        let mut idx = self
            .client_train
            .get(client)
            .ok_or_else(|| Error::invalid("ClassificationTask", format!("no client {client}")))?
            .clone();
        KeyedRng::new(self.seed, Domain::Data, &[5, round, client as u64]).shuffle(&mut idx);
        idx.chunks(batch_size.max(1))
            .map(|c| self.batch(&self.train, c))
            .collect()
    }

    fn evaluate(&self, params: &Trainable<f32>) -> Result<Evaluation> {
        let idx: Vec<usize> = (0..self.test.len()).collect();
        self.eval_on(&self.test, &idx, params)
    }

    fn loss_and_outputs(
        &self,
        batch: &LabelledBatch<M::Input>,
        params: &Trainable<f32>,
    ) -> Result<(f64, Option<Vec<f64>>)> {
        let none = Directions::none(params.len());
        let out = self
            .model
            .classify(&batch.input, Some(&batch.labels), params, &none, None)?;
        let loss = labelled_loss(out.loss)?.loss as f64;
        Ok((loss, Some(out.logits.iter().map(|&v| v as f64).collect())))
    }

    fn evaluate_client(&self, client: usize, params: &Trainable<f32>) -> Result<Evaluation> {
        let idx = self
            .client_test
            .get(client)
            .ok_or_else(|| Error::invalid("ClassificationTask", format!("no client {client}")))?;
        self.eval_on(&self.train, idx, params)
    }
}
