//! Federated tasks over the real models: text classification with a BERT classifier, and
//! next-token prediction with a Llama model.

use ndarray::{Array2, ArrayD, Axis};

use super::client::{LossJvp, Objective};
use super::sim::{Evaluation, FederatedTask};
use crate::data::{Example, Partition, PartitionScheme, train_test_split};
use crate::kernels::cross_entropy_logit_grad;
use crate::models::bert::{BertBatch, BertClassifier, argmax_rows};
use crate::models::llama::Llama;
use crate::modules::{Directions, DropoutKey, Trainable};
use crate::rng::{Domain, KeyedRng};
use crate::tokenizer::TextTokenizer;
use crate::{Error, Result};

/// A tokenised classification batch: the model input and the labels.
pub struct LabelledBatch {
    /// Ids, segment ids and mask `[B, T]`.
    pub input: BertBatch,
    /// Class per row.
    pub labels: Vec<i64>,
}

/// Text classification over federated partitions of labelled examples, with a shared frozen
/// BERT classifier (borrowed: every simulated client reads the same weights).
pub struct ClassificationTask<'m> {
    /// The model.
    pub model: &'m BertClassifier<f32>,
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

impl<'m> ClassificationTask<'m> {
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
        model: &'m BertClassifier<f32>,
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

    /// Tokenises `examples[idx]` with dynamic padding.
    ///
    /// # Errors
    /// Tokenizer errors.
    pub fn batch(&self, examples: &[Example], idx: &[usize]) -> Result<LabelledBatch> {
        let texts: Vec<&str> = idx.iter().map(|&i| examples[i].text.as_str()).collect();
        let tb = self.tokenizer.encode_batch(&texts, true)?;
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
                .forward(&b.input, Some(&b.labels), params, &none, None)?;
            let ce = out.loss.expect("labels given");
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

impl Objective<f32> for ClassificationTask<'_> {
    type Batch = LabelledBatch;

    fn loss_jvp(
        &self,
        batch: &LabelledBatch,
        params: &Trainable<f32>,
        dirs: &Directions<f32>,
        dropout: Option<&DropoutKey>,
        exact_for: &[usize],
    ) -> Result<LossJvp<f32>> {
        let out = self
            .model
            .forward(&batch.input, Some(&batch.labels), params, dirs, dropout)?;
        let ce = out.loss.expect("labels given");
        let mut exact = Vec::new();
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

    fn batch_len(&self, batch: &LabelledBatch) -> usize {
        batch.labels.len()
    }
}

impl FederatedTask<f32> for ClassificationTask<'_> {
    fn n_clients(&self) -> usize {
        self.client_train.len()
    }

    fn train_batches(
        &self,
        client: usize,
        round: u64,
        batch_size: usize,
    ) -> Result<Vec<LabelledBatch>> {
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
        batch: &LabelledBatch,
        params: &Trainable<f32>,
    ) -> Result<(f64, Option<Vec<f64>>)> {
        let none = Directions::none(params.len());
        let out = self
            .model
            .forward(&batch.input, Some(&batch.labels), params, &none, None)?;
        let loss = out.loss.expect("labels given").loss as f64;
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

/// A next-token batch: ids, labels (`-100` on padding) and the key mask `[B, T]`.
pub struct LmBatch {
    /// Token ids.
    pub ids: Array2<u32>,
    /// Next-token labels aligned with `ids` (Hugging Face convention).
    pub labels: Array2<i64>,
    /// Key mask (true = real token).
    pub mask: Array2<bool>,
}

/// Causal-LM finetuning over federated shards of fixed-length token sequences.
pub struct LanguageModelTask<'m> {
    /// The model.
    pub model: &'m Llama<f32>,
    /// Training sequences (each of the same length).
    pub train: Vec<Vec<u32>>,
    /// Held-out sequences.
    pub test: Vec<Vec<u32>>,
    /// Training sequence indices per client.
    pub client_train: Partition,
    /// Seed of the per-round shuffles.
    pub seed: u64,
}

impl LanguageModelTask<'_> {
    /// Stacks sequences into a batch (all sequences must have the same length).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if lengths differ.
    pub fn batch(seqs: &[&Vec<u32>]) -> Result<LmBatch> {
        let t = seqs.first().map_or(0, |s| s.len());
        let mut ids = Array2::<u32>::zeros((seqs.len(), t));
        for (b, s) in seqs.iter().enumerate() {
            if s.len() != t {
                return Err(Error::shape(
                    "LanguageModelTask::batch",
                    format!("[{t}] tokens"),
                    &[s.len()],
                ));
            }
            ids.row_mut(b)
                .assign(&ndarray::ArrayView1::from(s.as_slice()));
        }
        Ok(LmBatch {
            labels: ids.mapv(|v| v as i64),
            mask: Array2::from_elem(ids.dim(), true),
            ids,
        })
    }

    /// Mean next-token NLL over `seqs` (plain forward), in nats per predicted token.
    ///
    /// # Errors
    /// Model errors.
    pub fn nll(
        &self,
        seqs: &[Vec<u32>],
        params: &Trainable<f32>,
        batch: usize,
    ) -> Result<Evaluation> {
        let none = Directions::none(params.len());
        let (mut sum, mut n) = (0.0f64, 0usize);
        for chunk in seqs.chunks(batch.max(1)) {
            let refs: Vec<&Vec<u32>> = chunk.iter().collect();
            let b = Self::batch(&refs)?;
            let ce = self.model.loss(
                b.ids.view(),
                b.labels.view(),
                Some(b.mask.view()),
                params,
                &none,
                None,
            )?;
            sum += ce.loss as f64 * ce.n_valid as f64;
            n += ce.n_valid;
        }
        Ok(Evaluation {
            loss: if n > 0 { sum / n as f64 } else { f64::NAN },
            accuracy: None,
            n,
        })
    }
}

impl Objective<f32> for LanguageModelTask<'_> {
    type Batch = LmBatch;

    fn loss_jvp(
        &self,
        batch: &LmBatch,
        params: &Trainable<f32>,
        dirs: &Directions<f32>,
        dropout: Option<&DropoutKey>,
        _exact_for: &[usize],
    ) -> Result<LossJvp<f32>> {
        let ce = self.model.loss(
            batch.ids.view(),
            batch.labels.view(),
            Some(batch.mask.view()),
            params,
            dirs,
            dropout,
        )?;
        Ok(LossJvp {
            loss: ce.loss,
            jvp: ce.jvp,
            exact: Vec::<(usize, ArrayD<f32>)>::new(),
        })
    }

    fn batch_len(&self, batch: &LmBatch) -> usize {
        batch.ids.nrows()
    }
}

impl FederatedTask<f32> for LanguageModelTask<'_> {
    fn n_clients(&self) -> usize {
        self.client_train.len()
    }

    fn train_batches(&self, client: usize, round: u64, batch_size: usize) -> Result<Vec<LmBatch>> {
        let mut idx = self
            .client_train
            .get(client)
            .ok_or_else(|| Error::invalid("LanguageModelTask", format!("no client {client}")))?
            .clone();
        KeyedRng::new(self.seed, Domain::Data, &[6, round, client as u64]).shuffle(&mut idx);
        idx.chunks(batch_size.max(1))
            .map(|c| Self::batch(&c.iter().map(|&i| &self.train[i]).collect::<Vec<_>>()))
            .collect()
    }

    fn evaluate(&self, params: &Trainable<f32>) -> Result<Evaluation> {
        self.nll(&self.test, params, 4)
    }

    fn evaluate_client(&self, client: usize, params: &Trainable<f32>) -> Result<Evaluation> {
        let seqs: Vec<Vec<u32>> = self
            .client_train
            .get(client)
            .ok_or_else(|| Error::invalid("LanguageModelTask", format!("no client {client}")))?
            .iter()
            .map(|&i| self.train[i].clone())
            .collect();
        self.nll(&seqs, params, 4)
    }
}

/// Cuts a token stream into consecutive sequences of `len` tokens (the tail is dropped).
pub fn lm_sequences(tokens: &[u32], len: usize) -> Vec<Vec<u32>> {
    tokens
        .chunks_exact(len.max(1))
        .map(|c| c.to_vec())
        .collect()
}
