//! A Spry client: local training on forward gradients over its assigned units only.
//!
//! For every minibatch: draw K directions on the assigned tensors (replayable from
//! `(seed, round, client, step, k, tensor)`), run one dual forward pass that returns the loss and
//! the K JVP scalars, form `ĝ = (1/K) Σ jvp_k v_k`, and step the local optimizer. Tensors that
//! the objective can differentiate exactly at no activation cost (a task head sitting on the last
//! activation) may take their exact gradient instead of a forward-gradient estimate; so do, always,
//! the tensors the model reverses locally (`Objective::backprop_params`: BERT's exact top layers).

use ndarray::{Array1, ArrayD};
use serde::{Deserialize, Serialize};

use super::estimator::{Estimate, EstimatorConfig, forward_gradient};
use super::optim::{LocalOptimizer, OptimizerState};
use super::perturb::{DirectionScheme, StepKey, directions_with};
use crate::modules::{Directions, DropoutKey, Trainable};
use crate::{Float, Result};

/// What one dual pass of an objective returns.
#[derive(Clone, Debug, PartialEq)]
pub struct LossJvp<F: Float> {
    /// The mean loss of the batch.
    pub loss: F,
    /// One JVP scalar per direction (`None` when the pass carried no direction).
    pub jvp: Option<Array1<F>>,
    /// Exact gradients the objective computed for free (parameter index, gradient), if asked.
    pub exact: Vec<(usize, ArrayD<F>)>,
}

/// A model plus its loss over batches of some kind: what a client trains.
pub trait Objective<F: Float>: Sync {
    /// A minibatch.
    type Batch: Sync;

    /// One pass over `batch`: the mean loss, the JVP scalars for `dirs`, and, for the parameters
    /// in `exact_for` that [`Objective::exact_params`] lists, their exact gradients.
    ///
    /// # Errors
    /// Model and kernel errors.
    fn loss_jvp(
        &self,
        batch: &Self::Batch,
        params: &Trainable<F>,
        dirs: &Directions<F>,
        dropout: Option<&DropoutKey>,
        exact_for: &[usize],
    ) -> Result<LossJvp<F>>;

    /// Parameters whose exact gradient the objective can return without storing activations
    /// (for a classifier: the head's weight and bias). They form the head's optimizer group
    /// ([`ClientConfig::optimizer_for`]) and take their exact gradient when
    /// [`ClientConfig::head_grad`] says so.
    fn exact_params(&self) -> Vec<usize> {
        Vec::new()
    }

    /// Parameters whose exact gradient the objective returns by a local reverse pass the model
    /// was configured for (BERT's top layers' adapters,
    /// `BertClassifier::with_exact_top_layers`), at the memory cost of those layers'
    /// activations. A client always trains the ones assigned to it on that gradient (never
    /// perturbed, whatever `head_grad` says) with the adapters' optimizer,
    /// [`ClientConfig::optimizer`]. Default: none.
    fn backprop_params(&self) -> Vec<usize> {
        Vec::new()
    }

    /// Number of examples in a batch (the averaging weight).
    fn batch_len(&self, batch: &Self::Batch) -> usize;
}

/// How a client treats tensors with an exact gradient available.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HeadGrad {
    /// Use the exact gradient (an outer product of the primal pass; no extra memory).
    Exact,
    /// Use the forward-gradient estimate like every other tensor (the paper's recipe).
    Forward,
}

from_names!(HeadGrad, "exact" => HeadGrad::Exact, "forward" => HeadGrad::Forward);

/// Local-training settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientConfig {
    /// Directions per step, all in one dual pass.
    pub k: usize,
    /// Passes over the local data per round.
    pub local_epochs: usize,
    /// The local optimizer.
    pub optimizer: LocalOptimizer,
    /// The optimizer of the task's head (the tensors its objective can differentiate exactly,
    /// `Objective::exact_params`), whichever way their gradient is obtained; `None`: the same
    /// as `optimizer`. An exact head gradient carries no estimator noise and tolerates a much
    /// larger step than the adapters' forward-gradient estimates; a forward-gradient head
    /// (`HeadGrad::Forward`) on the other hand sits right under the loss, where one noisy step
    /// moves the logits directly, and needs a much smaller one than the adapters' LoRA B.
    #[serde(default, alias = "exact_optimizer")]
    pub head_optimizer: Option<LocalOptimizer>,
    /// JVP clipping.
    pub jvp_clip: Option<f64>,
    /// Exact or forward gradient for the head.
    pub head_grad: HeadGrad,
    /// Apply LoRA dropout during local training.
    pub dropout: bool,
    /// Perturbation scale ε of the zero-order baseline (FedMeZO); unused by forward gradients.
    pub zo_eps: f64,
    /// Which of a client's assigned tensors carry directions.
    #[serde(default)]
    pub perturbation: Perturbation,
    /// How the directions are drawn.
    #[serde(default)]
    pub directions: DirectionScheme,
    /// How the learning rates of `optimizer` and `head_optimizer` change over the rounds.
    #[serde(default)]
    pub lr_schedule: LrSchedule,
}

impl Default for ClientConfig {
    /// The paper's recipe (the reference code's `run_job.sh`): K = 1 direction per step, one
    /// local epoch, AdamW at 1e-4 (weight decay 0.01) re-created every round over every tensor
    /// of the assigned units, the head treated like any other unit (forward gradient), LoRA
    /// dropout on during local training (it applies only when the `LoraConfig` has a dropout
    /// rate), Gaussian directions, no JVP clipping, a constant rate, ε = 1e-3 for FedMeZO.
    /// On rt_polarity with MiniLM this recipe leaves the adapters unchanged in practice and the
    /// head near the majority class (`docs/FORWARD_GRADIENTS.md`); see
    /// [`ClientConfig::tuned_classifier`].
    fn default() -> Self {
        ClientConfig {
            k: 1,
            local_epochs: 1,
            optimizer: LocalOptimizer::adamw(1e-4),
            head_optimizer: None,
            jvp_clip: None,
            head_grad: HeadGrad::Forward,
            dropout: true,
            zo_eps: 1e-3,
            perturbation: Perturbation::All,
            directions: DirectionScheme::Gaussian,
            lr_schedule: LrSchedule::Constant,
        }
    }
}

impl ClientConfig {
    /// The recipe chosen on rt_polarity's validation split with MiniLM
    /// (`docs/FORWARD_GRADIENTS.md`), for a classifier whose head sits on the last activation:
    ///
    /// - K = 4 directions in one dual pass (K = 16 gained half a point at 1.6× the time);
    /// - plain SGD at 1 on the adapters: AdamW normalises a noise-dominated estimate into steps
    ///   of `lr` on every coordinate and left the adapters' effect below 1e-3 nats;
    /// - LoRA B only (A stays at its random initialisation): while B = 0 a direction on A
    ///   measures nothing and only adds noise;
    /// - the head on its exact gradient (free from the primal pass) with SGD at 2: mean-pooled
    ///   MiniLM features are small, so the head's loss is flat and takes a large rate;
    /// - no dropout, Gaussian directions, a constant rate, one local epoch.
    pub fn tuned_classifier() -> Self {
        ClientConfig {
            k: 4,
            optimizer: LocalOptimizer::sgd(1.0),
            head_optimizer: Some(LocalOptimizer::sgd(2.0)),
            head_grad: HeadGrad::Exact,
            dropout: false,
            perturbation: Perturbation::LoraBOnly,
            ..ClientConfig::default()
        }
    }
}

/// A learning-rate schedule over rounds: the factor every local learning rate of round `r`
/// (0-based) is multiplied by.
///
/// A forward-gradient step carries noise of about `√(d/K)` times the gradient along every
/// direction it samples; at a constant rate that noise accumulates in the weights as a random
/// walk (the forward-only runs' adapter norms grow by a constant amount every round). A rate
/// decaying like `1/√r` keeps the walk's spread bounded relative to the signal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub enum LrSchedule {
    /// Factor 1.
    #[default]
    Constant,
    /// Factor `1/√(1 + r/rounds)`: the rate halves after `3·rounds` rounds.
    InverseSqrt {
        /// The time scale τ in rounds (positive).
        rounds: f64,
    },
}

impl LrSchedule {
    /// The factor of round `round` (0-based).
    pub fn factor(self, round: u64) -> f64 {
        match self {
            LrSchedule::Constant => 1.0,
            LrSchedule::InverseSqrt { rounds } => 1.0 / (1.0 + round as f64 / rounds).sqrt(),
        }
    }

    /// Checks the schedule's parameters.
    ///
    /// # Errors
    /// [`crate::Error::InvalidArgument`] for a time scale that is not positive and finite.
    pub fn validate(self) -> Result<()> {
        match self {
            LrSchedule::InverseSqrt { rounds } if !(rounds.is_finite() && rounds > 0.0) => {
                Err(crate::Error::invalid(
                    "LrSchedule",
                    format!("inverse-sqrt time scale {rounds}: must be positive"),
                ))
            }
            _ => Ok(()),
        }
    }
}

/// Which tensors of a client's assigned LoRA units are trained: perturbed by directions, or,
/// for tensors the objective differentiates exactly (exact top layers), given their exact
/// gradient.
///
/// With LoRA's initialisation B = 0, `ΔW = s·B·A` has `∂L/∂A = s·Bᵀ·∂L/∂ΔW = 0`: while B is
/// zero, a direction on A changes nothing in the pass, its JVP component is 0 and the estimate
/// `(∇L·v)·v_A` is pure noise, which moreover inflates the variance of the B estimate (the
/// JVP's noise sums over every perturbed coordinate).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Perturbation {
    /// Every assigned tensor (the paper).
    #[default]
    All,
    /// Only `lora_B` (and non-LoRA) tensors: A stays at its random initialisation (LoRA-FA),
    /// half the perturbed dimension.
    LoraBOnly,
    /// A module's `lora_A` is perturbed only once its `lora_B` is non-zero.
    BFirst,
}

from_names!(Perturbation,
    "all" => Perturbation::All,
    "b-only" => Perturbation::LoraBOnly,
    "b-first" => Perturbation::BFirst,
);

impl Perturbation {
    /// The tensors of `candidates` that carry directions under this rule, given the current
    /// values of `params` (registry names tell `lora_A` from `lora_B`).
    pub fn filter<F: Float>(self, params: &Trainable<F>, candidates: &[usize]) -> Vec<usize> {
        let is_a = |p: usize| params.names()[p].contains("lora_A");
        candidates
            .iter()
            .copied()
            .filter(|&p| match self {
                Perturbation::All => true,
                Perturbation::LoraBOnly => !is_a(p),
                Perturbation::BFirst => {
                    !is_a(p) || {
                        // the B of the same unit
                        let unit = &params.units()[params.unit_of(p)];
                        unit.params.clone().any(|q| {
                            params.names()[q].contains("lora_B")
                                && params.value(q).iter().any(|v| *v != F::zero())
                        })
                    }
                }
            })
            .collect()
    }
}

impl ClientConfig {
    /// The settings of round `round` (0-based): both optimizers' learning rates scaled by
    /// `lr_schedule`.
    pub fn for_round(&self, round: u64) -> ClientConfig {
        let f = self.lr_schedule.factor(round);
        ClientConfig {
            optimizer: self.optimizer.scaled(f),
            head_optimizer: self.head_optimizer.map(|o| o.scaled(f)),
            ..self.clone()
        }
    }

    /// The optimizer of the head's tensors: `head_optimizer`, or `optimizer` when unset.
    pub fn optimizer_of_head(&self) -> &LocalOptimizer {
        self.head_optimizer.as_ref().unwrap_or(&self.optimizer)
    }

    /// The optimizer of parameter `p` given the task head's parameters `head` (the parameter
    /// groups every local trainer and the per-iteration server replay use): the head's
    /// optimizer for the head, `optimizer` for the rest.
    pub fn optimizer_for(&self, p: usize, head: &[usize]) -> &LocalOptimizer {
        if head.contains(&p) {
            self.optimizer_of_head()
        } else {
            &self.optimizer
        }
    }
}

/// What a client reports after local training.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalReport {
    /// Steps taken.
    pub steps: usize,
    /// Steps skipped because a JVP was non-finite.
    pub skipped: usize,
    /// Mean training loss over the steps taken.
    pub mean_loss: f64,
    /// Examples seen (one epoch's worth: the averaging weight).
    pub n_examples: u64,
}

impl LocalReport {
    /// The report of a local run over `batches` that took `steps` steps (summing `loss_sum`) and
    /// skipped `skipped`; the example count is one epoch of `batches`.
    pub fn new<F: Float, O: Objective<F>>(
        objective: &O,
        batches: &[O::Batch],
        steps: usize,
        skipped: usize,
        loss_sum: f64,
    ) -> Self {
        LocalReport {
            steps,
            skipped,
            mean_loss: if steps > 0 {
                loss_sum / steps as f64
            } else {
                f64::NAN
            },
            n_examples: batches.iter().map(|b| objective.batch_len(b) as u64).sum(),
        }
    }
}

/// Splits a client's assigned parameters into those it trains on their exact gradient and
/// those it perturbs, both in assignment order. Exact: the assigned ones among `backprop` (the
/// objective's [`Objective::backprop_params`], always), and among `head` (its
/// [`Objective::exact_params`]) with [`HeadGrad::Exact`].
pub fn split_exact(
    assigned: &[usize],
    head: &[usize],
    backprop: &[usize],
    head_grad: HeadGrad,
) -> (Vec<usize>, Vec<usize>) {
    assigned
        .iter()
        .copied()
        .partition(|p| backprop.contains(p) || (head_grad == HeadGrad::Exact && head.contains(p)))
}

/// Trains `params` in place on `batches` for `cfg.local_epochs`, perturbing only `assigned`.
///
/// `state` carries the optimizer moments (reset by the caller between rounds, or kept).
///
/// # Errors
/// Objective errors.
pub fn train_local<F: Float, O: Objective<F>>(
    objective: &O,
    params: &mut Trainable<F>,
    assigned: &[usize],
    batches: &[O::Batch],
    cfg: &ClientConfig,
    state: &mut OptimizerState,
    key: StepKey,
) -> Result<LocalReport> {
    let head = objective.exact_params();
    let backprop = objective.backprop_params();
    let (exact_for, candidates) = split_exact(assigned, &head, &backprop, cfg.head_grad);
    let est_cfg = EstimatorConfig {
        jvp_clip: cfg.jvp_clip,
    };
    let (mut steps, mut skipped, mut loss_sum) = (0usize, 0usize, 0.0f64);
    if cfg.k == 0 && !candidates.is_empty() {
        return Err(crate::Error::invalid("train_local", "K must be at least 1"));
    }
    let mut step = key.step;
    for _epoch in 0..cfg.local_epochs {
        for batch in batches {
            let step_key = StepKey { step, ..key };
            step += 1;
            let perturbed = cfg.perturbation.filter(params, &candidates);
            // the same rule picks which exactly differentiated LoRA factors are trained
            let exact_for = cfg.perturbation.filter(params, &exact_for);
            let dirs = if perturbed.is_empty() {
                Directions::none(params.len())
            } else {
                directions_with(params, &perturbed, cfg.k, step_key, cfg.directions)?
            };
            let dropout = cfg.dropout.then(|| DropoutKey {
                seed: key.seed,
                parts: vec![key.round, key.client, step_key.step],
            });
            let out = objective.loss_jvp(batch, params, &dirs, dropout.as_ref(), &exact_for)?;
            let mut grads: Vec<Option<ArrayD<F>>> = match out.jvp.as_ref() {
                Some(jvp) => {
                    match forward_gradient(jvp.as_slice().expect("contiguous"), &dirs, &est_cfg)? {
                        Estimate::Gradient(g) => g,
                        Estimate::NonFinite => {
                            skipped += 1;
                            continue;
                        }
                    }
                }
                None => vec![None; params.len()],
            };
            if !out.loss.is_finite() {
                skipped += 1;
                continue;
            }
            // only the exact gradients this client asked for, and only finite ones
            let exact: Vec<(usize, ArrayD<F>)> = out
                .exact
                .into_iter()
                .filter(|(p, _)| exact_for.contains(p))
                .collect();
            if exact.iter().any(|(_, g)| g.iter().any(|v| !v.is_finite())) {
                skipped += 1;
                continue;
            }
            for (p, g) in exact {
                grads[p] = Some(g);
            }
            state.step_with(|p| cfg.optimizer_for(p, &head), params, &grads)?;
            steps += 1;
            loss_sum += out.loss.as_f64();
        }
    }
    Ok(LocalReport::new(
        objective, batches, steps, skipped, loss_sum,
    ))
}
