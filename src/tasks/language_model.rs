//! Federated causal-LM finetuning: next-token prediction with a Llama model over shards of
//! fixed-length token sequences.

use ndarray::{Array2, ArrayD};

use crate::data::Partition;
use crate::federated::{Evaluation, FederatedTask, LossJvp, Objective};
use crate::models::llama::Llama;
use crate::modules::{Directions, DropoutKey, Trainable};
use crate::rng::{Domain, KeyedRng};
use crate::{Error, Result};

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
