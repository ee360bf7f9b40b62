//! The in-process federated simulation: Spry, FedFgd and FedMeZO over any [`FederatedTask`].
//!
//! Each round: sample M clients (seeded), plan which units each trains, let every sampled client
//! train a copy of the global trainable tensors on its own data (or, per-iteration, exchange JVP
//! scalars step by step), validate and aggregate the updates per tensor, step the server
//! optimizer, evaluate every `eval_every` rounds, and checkpoint. All randomness is keyed by
//! `(seed, round, client, step, ...)`, so a run resumed from its checkpoint ends bit-identical to
//! an uninterrupted one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

use ndarray::ArrayD;
use serde::{Deserialize, Serialize};

use super::aggregate::{
    Aggregator, RoundExpectation, ServerOptimizer, ServerState, aggregate_round_with,
};
use super::attack::Attack;
use super::client::{ClientConfig, Objective};
use super::comm::{self, CommMode, RoundBytes};
use super::diagnostics::{DiagnosticsConfig, RoundDiagnostics};
use super::optim::OptimizerState;
use super::per_iteration::{StepPass, client_pass};
use super::planner::{
    AllUnitsPlanner, DepthAwarePlanner, NoUnitsPlanner, Planner, ReferencePlanner, ReshufflePlanner,
};
use super::robust::CombineRule;
use crate::modules::{Directions, Trainable};
pub use crate::parallel::parallel_map;

pub mod remote;
use crate::rng::{Domain, KeyedRng};
use crate::{Error, Float, Result};
use remote::{IterationRound, RoundPlan, client_step};

/// Model quality on some examples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Mean loss.
    pub loss: f64,
    /// Accuracy for classification tasks.
    pub accuracy: Option<f64>,
    /// Number of examples (or tokens) evaluated.
    pub n: usize,
}

/// An objective with federated data: what the simulation trains.
pub trait FederatedTask<F: Float>: Objective<F> {
    /// Number of clients.
    fn n_clients(&self) -> usize;
    /// Client `client`'s training batches for `round` (shuffled with a key of the task's seed,
    /// the round and the client).
    ///
    /// # Errors
    /// Tokenisation or data errors.
    fn train_batches(
        &self,
        client: usize,
        round: u64,
        batch_size: usize,
    ) -> Result<Vec<Self::Batch>>;
    /// Quality on the global test set.
    ///
    /// # Errors
    /// Model errors.
    fn evaluate(&self, params: &Trainable<F>) -> Result<Evaluation>;
    /// Quality on client `client`'s local test split.
    ///
    /// # Errors
    /// Model errors.
    fn evaluate_client(&self, client: usize, params: &Trainable<F>) -> Result<Evaluation>;

    /// A fixed batch of `size` training examples for per-round diagnostics (the same every
    /// call).
    ///
    /// # Errors
    /// As [`FederatedTask::train_batches`]; [`Error::InvalidArgument`] when there is no data.
    fn probe_batch(&self, size: usize) -> Result<Self::Batch> {
        self.train_batches(0, u64::MAX - 1, size)?
            .into_iter()
            .next()
            .ok_or_else(|| Error::invalid("FederatedTask::probe_batch", "client 0 has no data"))
    }

    /// The mean loss on `batch` and, where the task has a small output to compare (a
    /// classifier's logits, flat), that output: one plain forward pass, for diagnostics.
    ///
    /// # Errors
    /// Model errors.
    fn loss_and_outputs(
        &self,
        batch: &Self::Batch,
        params: &Trainable<F>,
    ) -> Result<(f64, Option<Vec<f64>>)> {
        let none = Directions::none(params.len());
        let out = self.loss_jvp(batch, params, &none, None, &[])?;
        Ok((out.loss.as_f64(), None))
    }
}

/// The training method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Method {
    /// Forward gradients on the units the planner assigns (the paper's method).
    Spry,
    /// Forward gradients on every unit at every client (no splitting).
    FedFgd,
    /// Two-point zero-order (SPSA) estimates on every unit.
    FedMezo,
    /// Adapters frozen: clients train only `SimConfig::shared_units` (a task head on its exact
    /// gradient: a federated linear probe). The baseline every adapter method must beat.
    HeadOnly,
}

from_names!(Method,
    "spry" => Method::Spry,
    "fedmezo" => Method::FedMezo,
    "fedfgd" => Method::FedFgd,
    "head-only" => Method::HeadOnly,
);

/// Which planner splits the units (Spry only; the baselines train every unit).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlannerKind {
    /// Unit j → slot j mod M, fixed.
    Reference,
    /// The reference rule over a per-round permutation.
    Reshuffle,
    /// Contiguous blocks, deepest first.
    Depth,
}

from_names!(PlannerKind,
    "reference" => PlannerKind::Reference,
    "reshuffle" => PlannerKind::Reshuffle,
    "depth" => PlannerKind::Depth,
);

/// Everything that defines a run (saved in the checkpoint; a resume must use the same).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SimConfig {
    /// Training method.
    pub method: Method,
    /// Clients sampled per round (M).
    pub clients_per_round: usize,
    /// Number of rounds.
    pub rounds: u64,
    /// Minibatch size.
    pub batch_size: usize,
    /// Communication mode.
    pub comm: CommMode,
    /// Planner (Spry).
    pub planner: PlannerKind,
    /// Server optimizer.
    pub server: ServerOptimizer,
    /// Local training settings.
    pub client: ClientConfig,
    /// Keep each client's optimizer state across rounds instead of resetting it (the reference
    /// resets).
    pub keep_client_state: bool,
    /// Run seed.
    pub seed: u64,
    /// Evaluate on the test set every this many rounds (and after the last).
    pub eval_every: u64,
    /// Probability that a sampled client drops out of a round (simulated failures).
    pub drop_prob: f64,
    /// A round fails (and is retried with the next round's sample) below this many updates.
    pub min_clients: usize,
    /// Clients trained concurrently (each on its own thread).
    pub workers: usize,
    /// Units every sampled client trains in addition to its plan (e.g. a task head whose exact
    /// gradient is free); empty = the plan alone, as in the paper.
    pub shared_units: Vec<usize>,
    /// Per-round diagnostics on a probe batch (`None`: off). Their time is not counted in
    /// `RoundMetrics::wall_s`.
    #[serde(default)]
    pub diagnostics: Option<DiagnosticsConfig>,
    /// How the server combines the values several clients sent for one parameter: the
    /// example-weighted mean, or a rule robust to a few hostile clients.
    #[serde(default)]
    pub combine: CombineRule,
    /// Simulated hostile clients (`None`: every client is honest), to measure what `combine`
    /// withstands. Per-epoch communication only.
    #[serde(default)]
    pub attack: Option<Attack>,
}

impl Default for SimConfig {
    /// The paper's recipe for SST-2-sized data (the reference code's `run_job.sh`): Spry with
    /// the reference planner (unit j → client j mod M), 10 clients per round, batches of 8,
    /// per-epoch communication, FedYogi with Flower's defaults on the server,
    /// [`ClientConfig::default`] on the clients, 1500 rounds, every unit planned (the head
    /// too), an evaluation every 5 rounds, seed 0, no dropouts, one worker, no diagnostics.
    fn default() -> Self {
        SimConfig {
            method: Method::Spry,
            clients_per_round: 10,
            rounds: 1500,
            batch_size: 8,
            comm: CommMode::PerEpoch,
            planner: PlannerKind::Reference,
            server: ServerOptimizer::fedyogi(),
            client: ClientConfig::default(),
            keep_client_state: false,
            seed: 0,
            eval_every: 5,
            drop_prob: 0.0,
            min_clients: 1,
            workers: 1,
            shared_units: Vec::new(),
            diagnostics: None,
            combine: CombineRule::Mean,
            attack: None,
        }
    }
}

impl SimConfig {
    /// The recipe chosen on rt_polarity's validation split with MiniLM
    /// (`docs/FORWARD_GRADIENTS.md`) for a classifier whose head is unit `head_unit`
    /// (for example [`crate::models::bert::BertClassifier::head_unit`]):
    ///
    /// - the head is trained by every sampled client on its exact gradient (it costs one outer
    ///   product per step), the adapters are split among the clients by the depth-aware
    ///   planner (a client's tangents start at the bottom of its own block);
    /// - 20 clients per round: the round's average over label-skewed clients swings half as
    ///   much as with 10 for the same examples per minute;
    /// - FedAvgM with η = 0.1 and μ = 0.8 (an effective step of η/(1 − μ) = 0.5 averaged over
    ///   about five rounds, so one round of skewed clients moves the model less);
    /// - [`ClientConfig::tuned_classifier`] on the clients, 40 rounds, batches of 8.
    pub fn tuned_classifier(head_unit: usize) -> Self {
        SimConfig {
            clients_per_round: 20,
            rounds: 40,
            planner: PlannerKind::Depth,
            server: ServerOptimizer::fedavgm(0.8).with_eta(0.1),
            client: ClientConfig::tuned_classifier(),
            shared_units: vec![head_unit],
            ..SimConfig::default()
        }
    }
}

/// One row of the metrics log.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundMetrics {
    /// Round number (1-based: the state after this many rounds).
    pub round: u64,
    /// Wall time since the run started (summed over resumed segments).
    pub wall_s: f64,
    /// Mean local training loss of the round's clients.
    pub train_loss: f64,
    /// Test evaluation, on evaluation rounds.
    pub test: Option<Evaluation>,
    /// Bytes this round.
    pub bytes: RoundBytes,
    /// Steps skipped for non-finite JVPs this round.
    pub skipped_steps: usize,
    /// Updates rejected this round.
    pub rejected: usize,
    /// Why the round failed, if it did (too few valid updates): the global state is unchanged.
    pub failed: Option<String>,
    /// Diagnostics of the round (when `SimConfig::diagnostics` is on).
    #[serde(default)]
    pub diagnostics: Option<RoundDiagnostics>,
}

/// The largest parameter magnitude a checkpoint may hold: f32's range, in which every spry model
/// keeps its weights. A larger value (finite in f64) comes from a run that diverged or a file
/// that was changed, and is refused by [`Checkpoint::validate`].
pub const MAX_CHECKPOINT_VALUE: f64 = f32::MAX as f64;

/// The resumable state of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The run's configuration.
    pub config: SimConfig,
    /// Rounds completed.
    pub round: u64,
    /// Global trainable tensors, flat, in registry order (f64 holds f32 and f64 values exactly).
    pub params: Vec<Vec<f64>>,
    /// Server optimizer state.
    pub server: ServerState,
    /// Per-client optimizer states (when kept across rounds).
    pub client_states: BTreeMap<u64, OptimizerState>,
    /// Server-side optimizer state of per-iteration mode.
    pub iteration_state: Option<OptimizerState>,
    /// Metrics so far.
    pub history: Vec<RoundMetrics>,
    /// The state of a user's aggregator ([`Simulation::with_aggregator`]), when one was set.
    #[serde(default)]
    pub aggregator_state: Option<serde_json::Value>,
}

impl Checkpoint {
    /// Checks the whole checkpoint against its own configuration and parameters of `sizes`
    /// elements, before a resume uses any of it: the parameter count and lengths, finite
    /// values within ±[`MAX_CHECKPOINT_VALUE`], the server state (its optimizer must be the
    /// configuration's), every optimizer state, and a round count within the configured rounds
    /// (so it cannot overflow).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the first inconsistency.
    pub fn validate(&self, sizes: &[usize]) -> Result<()> {
        let bad = |msg: String| Error::invalid("Checkpoint::validate", msg);
        if self.round > self.config.rounds {
            return Err(bad(format!(
                "round {} is past the configured {} rounds",
                self.round, self.config.rounds
            )));
        }
        if self.history.len() as u64 > self.round {
            return Err(bad(format!(
                "{} rounds of metrics for {} rounds",
                self.history.len(),
                self.round
            )));
        }
        if self.params.len() != sizes.len() {
            return Err(bad(format!(
                "{} tensors for a model with {}",
                self.params.len(),
                sizes.len()
            )));
        }
        let params: Vec<Option<Vec<f64>>> = self.params.iter().cloned().map(Some).collect();
        super::optim::check_moments("parameters", &params, sizes, false).map_err(bad)?;
        if let Some((i, x)) = self.params.iter().enumerate().find_map(|(i, t)| {
            t.iter()
                .find(|x| x.abs() > MAX_CHECKPOINT_VALUE)
                .map(|x| (i, x))
        }) {
            return Err(bad(format!(
                "tensor {i} holds {x}, beyond ±{MAX_CHECKPOINT_VALUE:e} (the float range of the \
                 models' weights)"
            )));
        }
        self.server
            .check(&self.config.server, sizes)
            .map_err(&bad)?;
        for (client, state) in &self.client_states {
            state
                .check(sizes)
                .map_err(|e| bad(format!("client {client}: {e}")))?;
        }
        if let Some(state) = &self.iteration_state {
            state
                .check(sizes)
                .map_err(|e| bad(format!("per-iteration state: {e}")))?;
        }
        Ok(())
    }
}

/// A running simulation.
///
/// The planner and the server's aggregation rule come from `config` (the serialisable presets
/// [`PlannerKind`] and [`ServerOptimizer`]) unless a user's own [`Planner`] or [`Aggregator`] is
/// plugged in with [`Simulation::with_planner`] / [`Simulation::with_aggregator`].
pub struct Simulation<F: Float> {
    /// Configuration.
    pub config: SimConfig,
    /// Global trainable tensors.
    pub global: Trainable<F>,
    server: ServerState,
    planner: Option<Box<dyn Planner>>,
    aggregator: Option<Box<dyn Aggregator<F>>>,
    /// A resumed user aggregator's state, until [`Simulation::with_aggregator`] takes it.
    pending_aggregator_state: Option<serde_json::Value>,
    client_states: BTreeMap<u64, OptimizerState>,
    iteration_state: Option<OptimizerState>,
    /// Rounds completed.
    pub round: u64,
    /// Metrics of every completed round.
    pub history: Vec<RoundMetrics>,
}

/// The checks a run's configuration must pass, whether it starts fresh or resumes from a
/// checkpoint (which carries its configuration).
fn check_config<F: Float>(
    op: &'static str,
    config: &SimConfig,
    initial: &Trainable<F>,
) -> Result<()> {
    if config.clients_per_round == 0
        || config.batch_size == 0
        || config.client.k == 0
        || config.workers == 0
    {
        return Err(Error::invalid(
            op,
            "clients per round, batch size, K and workers must be positive",
        ));
    }
    config.client.lr_schedule.validate()?;
    config.combine.validate()?;
    if config.attack.is_some() && config.comm != CommMode::PerEpoch {
        return Err(Error::invalid(
            op,
            "simulated attacks corrupt per-epoch updates; use per-epoch communication",
        ));
    }
    if !(0.0..1.0).contains(&config.drop_prob) {
        return Err(Error::invalid(op, "drop probability must be in [0, 1)"));
    }
    let n_units = initial.units().len();
    if let Some(&u) = config.shared_units.iter().find(|&&u| u >= n_units) {
        return Err(Error::invalid(
            op,
            format!("shared unit {u} does not exist ({n_units} units)"),
        ));
    }
    if config.method == Method::HeadOnly && config.shared_units.is_empty() {
        return Err(Error::invalid(
            op,
            "head-only training needs the head among the shared units",
        ));
    }
    Ok(())
}

impl<F: Float> Simulation<F> {
    /// A fresh run from initial tensors.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an inconsistent configuration.
    pub fn new(config: SimConfig, initial: Trainable<F>) -> Result<Self> {
        check_config("Simulation::new", &config, &initial)?;
        let server = ServerState::new(config.server, initial.len());
        Ok(Simulation {
            config,
            global: initial,
            server,
            planner: None,
            aggregator: None,
            pending_aggregator_state: None,
            client_states: BTreeMap::new(),
            iteration_state: None,
            round: 0,
            history: Vec::new(),
        })
    }

    /// Resumes from a checkpoint; `initial` supplies the registry (names and shapes) the
    /// checkpoint's values are loaded into.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the checkpoint does not match the registry or `config`, or
    /// its configuration is one [`Simulation::new`] refuses.
    pub fn resume(config: &SimConfig, mut initial: Trainable<F>, ckpt: Checkpoint) -> Result<Self> {
        const OP: &str = "Simulation::resume";
        if ckpt.config != *config {
            return Err(Error::invalid(
                OP,
                "the checkpoint was written by a run with another configuration",
            ));
        }
        check_config(OP, &ckpt.config, &initial)?;
        let sizes: Vec<usize> = initial.values().iter().map(|v| v.len()).collect();
        ckpt.validate(&sizes)?;
        // every value converted and checked before the registry changes
        let mut values = Vec::with_capacity(ckpt.params.len());
        for (i, flat) in ckpt.params.iter().enumerate() {
            let shape = initial.value(i).shape().to_vec();
            let converted: Vec<F> = flat.iter().map(|&x| F::from_f64(x)).collect();
            if converted.iter().any(|x| !x.is_finite()) {
                return Err(Error::invalid(
                    OP,
                    format!("tensor {i} holds a value out of the model's float range"),
                ));
            }
            values.push(
                ArrayD::from_shape_vec(shape.clone(), converted)
                    .map_err(|_| Error::shape(OP, format!("{shape:?}"), &[flat.len()]))?,
            );
        }
        for (i, v) in values.into_iter().enumerate() {
            initial.set_value(i, v)?;
        }
        Ok(Simulation {
            config: ckpt.config,
            global: initial,
            server: ckpt.server,
            planner: None,
            aggregator: None,
            pending_aggregator_state: ckpt.aggregator_state,
            client_states: ckpt.client_states,
            iteration_state: ckpt.iteration_state,
            round: ckpt.round,
            history: ckpt.history,
        })
    }

    /// The resumable state.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            config: self.config.clone(),
            round: self.round,
            params: self
                .global
                .values()
                .iter()
                .map(|v| v.iter().map(|x| x.as_f64()).collect())
                .collect(),
            server: self.server.clone(),
            client_states: self.client_states.clone(),
            iteration_state: self.iteration_state.clone(),
            history: self.history.clone(),
            aggregator_state: match &self.aggregator {
                Some(a) => Some(a.state()),
                None => self.pending_aggregator_state.clone(),
            },
        }
    }

    /// Plugs in a user's planner for [`Method::Spry`] in place of `config.planner` (the
    /// baselines' rules are part of their method: every unit for FedFgd and FedMeZO, none for
    /// head-only). The planner is code, not data: a resumed run must plug the same one in again.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the method is not Spry.
    pub fn with_planner(mut self, planner: Box<dyn Planner>) -> Result<Self> {
        if self.config.method != Method::Spry {
            return Err(Error::invalid(
                "Simulation::with_planner",
                format!("{:?} does not split units", self.config.method),
            ));
        }
        self.planner = Some(planner);
        Ok(self)
    }

    /// Plugs in a user's aggregation rule in place of `config.server` (per-epoch rounds: it gets
    /// the validated per-parameter averages). Its [`Aggregator::state`] goes into every
    /// checkpoint; on a resumed run this restores the saved state into `aggregator`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] in per-iteration mode (its server replays the clients'
    /// optimizer steps and aggregates nothing); [`Aggregator::restore`]'s errors on a resumed
    /// run.
    pub fn with_aggregator(mut self, mut aggregator: Box<dyn Aggregator<F>>) -> Result<Self> {
        if self.config.comm == CommMode::PerIteration {
            return Err(Error::invalid(
                "Simulation::with_aggregator",
                "per-iteration rounds aggregate no updates",
            ));
        }
        if let Some(state) = self.pending_aggregator_state.take() {
            aggregator.restore(state)?;
        }
        self.aggregator = Some(aggregator);
        Ok(self)
    }

    /// Writes the checkpoint to `path` atomically (write then rename), with the checksum of
    /// [`Checkpoint::to_file_bytes`].
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn save_checkpoint(&self, path: &Path) -> Result<()> {
        crate::io::write_atomic(path, &self.checkpoint().to_file_bytes()?)
    }

    /// Reads a checkpoint written by [`Simulation::save_checkpoint`], checksum checked
    /// ([`Checkpoint::from_file_bytes`]).
    ///
    /// # Errors
    /// [`Error::Io`]; [`Error::Format`] for a corrupt file.
    pub fn load_checkpoint(path: &Path) -> Result<Checkpoint> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Checkpoint::from_file_bytes(path, &bytes)
    }

    fn planner(&self) -> Box<dyn Planner + '_> {
        if let (Method::Spry, Some(p)) = (self.config.method, &self.planner) {
            return Box::new(p.as_ref());
        }
        match (self.config.method, self.config.planner) {
            (Method::FedFgd | Method::FedMezo, _) => Box::new(AllUnitsPlanner),
            (Method::HeadOnly, _) => Box::new(NoUnitsPlanner),
            (Method::Spry, PlannerKind::Reference) => Box::new(ReferencePlanner),
            (Method::Spry, PlannerKind::Reshuffle) => Box::new(ReshufflePlanner {
                seed: self.config.seed,
            }),
            (Method::Spry, PlannerKind::Depth) => Box::new(DepthAwarePlanner),
        }
    }

    /// The clients sampled in `round` (without replacement, in sampled order), and which of them
    /// drop out.
    pub fn sample_clients(&self, round: u64, n_clients: usize) -> (Vec<u64>, BTreeSet<u64>) {
        let mut all: Vec<u64> = (0..n_clients as u64).collect();
        let mut rng = KeyedRng::new(self.config.seed, Domain::Sampling, &[round, 0]);
        rng.shuffle(&mut all);
        all.truncate(self.config.clients_per_round.min(n_clients));
        let dropped = all
            .iter()
            .copied()
            .filter(|_| rng.uniform() < self.config.drop_prob)
            .collect();
        (all, dropped)
    }

    /// Parameter indices of a set of units.
    fn params_of(&self, units: &[usize]) -> Vec<usize> {
        units
            .iter()
            .flat_map(|&u| self.global.units()[u].params.clone())
            .collect()
    }

    /// The parameter indices each of the `n_sampled` clients of `round` trains, in sampled
    /// order: the units the planner gives it out of those that are not shared, then the
    /// `shared_units` (which every client trains, so the planner does not spend a slot on them).
    ///
    /// # Errors
    /// The planner's errors (e.g. no client).
    pub fn assignments(&self, round: u64, n_sampled: usize) -> Result<Vec<Vec<usize>>> {
        // the planner splits the units nobody trains anyway; shared units go to every client
        let shared = &self.config.shared_units;
        let planned: Vec<usize> = (0..self.global.units().len())
            .filter(|u| !shared.contains(u))
            .collect();
        let plan = if planned.is_empty() {
            vec![Vec::new(); n_sampled]
        } else {
            self.planner().plan(round, n_sampled, planned.len())?.units
        };
        Ok(plan
            .iter()
            .map(|slot| {
                let mut units: Vec<usize> = slot.iter().map(|&j| planned[j]).collect();
                for &u in shared {
                    if !units.contains(&u) {
                        units.push(u);
                    }
                }
                self.params_of(&units)
            })
            .collect())
    }

    /// Runs one round and returns its metrics.
    ///
    /// # Errors
    /// Task errors; [`Error::Round`] if too few clients returned valid updates (the global
    /// state is then unchanged).
    pub fn run_round<T: FederatedTask<F>>(&mut self, task: &T) -> Result<RoundMetrics> {
        let mut plan = self.plan_round(task)?;
        let probe = plan.take_probe();
        let (sampled, dropped, assigned) = (plan.sampled, plan.dropped, plan.assigned);
        let (train_loss, bytes, skipped, rejected) = match self.config.comm {
            CommMode::PerEpoch => self.round_per_epoch(task, &sampled, &dropped, &assigned)?,
            CommMode::PerIteration => {
                self.round_per_iteration(task, &sampled, &dropped, &assigned)?
            }
        };
        self.close_metrics(task, probe, train_loss, bytes, skipped, rejected)
    }

    /// Advances the round counter and returns the round's metrics, with the diagnostics'
    /// second half and the evaluation when one is due (the caller sets `wall_s`).
    fn close_metrics<T: FederatedTask<F>>(
        &mut self,
        task: &T,
        probe: Option<super::diagnostics::Probe<F>>,
        train_loss: f64,
        bytes: RoundBytes,
        skipped: usize,
        rejected: usize,
    ) -> Result<RoundMetrics> {
        self.round += 1;
        let mut m = RoundMetrics {
            round: self.round,
            train_loss,
            bytes,
            skipped_steps: skipped,
            rejected,
            ..Default::default()
        };
        if let Some(probe) = probe {
            m.diagnostics = Some(probe.after_round(self, task)?);
        }
        if self.round.is_multiple_of(self.config.eval_every.max(1))
            || self.round == self.config.rounds
        {
            m.test = Some(task.evaluate(&self.global)?);
        }
        Ok(m)
    }

    /// The evaluation of the current global model: the last round's, or, when that round was
    /// not evaluated (a run stopped between evaluations), a fresh one, recorded in that round's
    /// metrics so the history ends evaluated.
    ///
    /// # Errors
    /// The task's evaluation errors.
    pub fn evaluate_last<T: FederatedTask<F>>(&mut self, task: &T) -> Result<Evaluation> {
        if let Some(t) = self.history.last().and_then(|m| m.test) {
            return Ok(t);
        }
        let t = task.evaluate(&self.global)?;
        if let Some(m) = self.history.last_mut() {
            m.test = Some(t);
        }
        Ok(t)
    }

    fn round_per_epoch<T: FederatedTask<F>>(
        &mut self,
        task: &T,
        sampled: &[u64],
        dropped: &BTreeSet<u64>,
        assigned: &[Vec<usize>],
    ) -> Result<(f64, RoundBytes, usize, usize)> {
        let round = self.round;
        let cfg = &self.config;
        let n_scalars = self.global.n_scalars();
        let mut bytes = RoundBytes::default();
        let jobs: Vec<(u64, Vec<usize>, OptimizerState)> = sampled
            .iter()
            .zip(assigned)
            .filter(|(c, _)| !dropped.contains(c))
            .map(|(&c, a)| {
                let state = if cfg.keep_client_state {
                    self.client_states
                        .get(&c)
                        .cloned()
                        .unwrap_or_else(|| OptimizerState::new(self.global.len()))
                } else {
                    OptimizerState::new(self.global.len())
                };
                (c, a.clone(), state)
            })
            .collect();
        for _ in sampled {
            bytes.down += comm::download_model(n_scalars);
        }
        let global = &self.global;
        let run_client = |(c, params, state): (u64, Vec<usize>, OptimizerState)| {
            client_step(cfg, task, global, round, c, &params, state)
                .map(|s| (s.update, s.state, s.loss, s.skipped))
        };
        let results = parallel_map(jobs, cfg.workers, run_client)?;
        let mut updates = Vec::with_capacity(results.len());
        let (mut loss_sum, mut n_loss, mut skipped) = (0.0, 0usize, 0usize);
        let mut new_states = Vec::new();
        for (i, (mut update, state, loss, sk)) in results.into_iter().enumerate() {
            if let Some(attack) = cfg.attack
                && i < attack.clients_per_round
            {
                attack.kind.corrupt(&self.global, &mut update);
            }
            let n_t = update.params.len();
            let n_s: usize = update.params.iter().map(|(_, v)| v.len()).sum();
            bytes.up += comm::upload_tensors(n_s, n_t);
            if loss.is_finite() {
                loss_sum += loss;
                n_loss += 1;
            }
            skipped += sk;
            new_states.push((update.client, state));
            updates.push(update);
        }
        let expected = RoundExpectation {
            round,
            allowed: sampled
                .iter()
                .zip(assigned)
                .map(|(&c, a)| (c, a.iter().copied().collect()))
                .collect(),
        };
        let report = match self.aggregator.as_mut() {
            Some(a) => aggregate_round_with(
                &mut self.global,
                a.as_mut(),
                &expected,
                updates,
                cfg.min_clients,
                cfg.combine,
            )?,
            None => aggregate_round_with(
                &mut self.global,
                &mut self.server,
                &expected,
                updates,
                cfg.min_clients,
                cfg.combine,
            )?,
        };
        if self.config.keep_client_state {
            let accepted: BTreeSet<u64> = report.accepted.iter().copied().collect();
            for (c, s) in new_states {
                if accepted.contains(&c) {
                    self.client_states.insert(c, s);
                }
            }
        }
        let mean = if n_loss > 0 {
            loss_sum / n_loss as f64
        } else {
            f64::NAN
        };
        Ok((mean, bytes, skipped, report.rejected.len()))
    }

    fn round_per_iteration<T: FederatedTask<F>>(
        &mut self,
        task: &T,
        sampled: &[u64],
        dropped: &BTreeSet<u64>,
        assigned: &[Vec<usize>],
    ) -> Result<(f64, RoundBytes, usize, usize)> {
        let round = self.round;
        let plan = RoundPlan::new(round, sampled.to_vec(), dropped.clone(), assigned.to_vec());
        let mut it: IterationRound<F> = self.begin_iteration(task, plan)?;
        let cfg = self.config.clone();
        let active: Vec<(u64, Vec<usize>)> =
            it.plan.active().map(|(c, a)| (c, a.to_vec())).collect();
        // each client's batches are tokenised once for the whole round
        let batches: Vec<Vec<T::Batch>> = active
            .iter()
            .map(|(c, _)| task.train_batches(*c as usize, round, cfg.batch_size))
            .collect::<Result<_>>()?;
        let (head, backprop) = (task.exact_params(), task.backprop_params());
        while it.step < it.steps {
            let step = it.step;
            // clients: one dual pass each on the current global, upload K scalars (and the exact
            // gradients of the tensors trained on them)
            let work: Vec<(usize, u64, Vec<usize>)> = active
                .iter()
                .enumerate()
                .filter(|(i, _)| !batches[*i].is_empty())
                .map(|(i, (c, a))| (i, *c, a.clone()))
                .collect();
            let pass = StepPass {
                cfg: &cfg,
                round,
                step: step as u64,
                head: &head,
                backprop: &backprop,
            };
            let global = &self.global;
            let uploads = parallel_map(work, cfg.workers, |(i, client, params)| {
                let batch = &batches[i][step % batches[i].len()];
                client_pass(task, global, &pass, client, &params, batch)
            })?;
            // server: replay each client's directions from the seed, average per tensor, step
            self.iteration_apply(task, &mut it, uploads)?;
        }
        let (mean, bytes, skipped, rejected, _) = self.end_iteration(it);
        Ok((mean, bytes, skipped, rejected))
    }

    /// Runs until `config.rounds`, checkpointing after every round to `checkpoint` (if given)
    /// and calling `on_round` with each round's metrics; `on_round` returning `false` stops the
    /// run after that round (e.g. a wall-time budget).
    ///
    /// # Errors
    /// As [`Simulation::run_round`]; checkpoint I/O errors.
    pub fn run<T: FederatedTask<F>>(
        &mut self,
        task: &T,
        checkpoint: Option<&Path>,
        mut on_round: impl FnMut(&RoundMetrics) -> bool,
    ) -> Result<()> {
        self.run_with(task, checkpoint, |m, _| on_round(m))
    }

    /// [`Simulation::run`] whose `on_round` also sees the global tensors after the round (to
    /// save the adapter of the best evaluated round, for example).
    ///
    /// # Errors
    /// As [`Simulation::run`].
    pub fn run_with<T: FederatedTask<F>>(
        &mut self,
        task: &T,
        checkpoint: Option<&Path>,
        mut on_round: impl FnMut(&RoundMetrics, &Trainable<F>) -> bool,
    ) -> Result<()> {
        let start = Instant::now();
        let offset = self.history.last().map_or(0.0, |m| m.wall_s);
        let mut diag_s = 0.0;
        while self.round < self.config.rounds {
            let mut m = match self.run_round(task) {
                Ok(m) => m,
                Err(Error::Round { round, reason }) => {
                    // a failed round changes nothing but the round counter (the next sample differs)
                    self.round += 1;
                    RoundMetrics {
                        round: round + 1,
                        train_loss: f64::NAN,
                        failed: Some(reason),
                        ..Default::default()
                    }
                }
                Err(e) => return Err(e),
            };
            diag_s += m.diagnostics.as_ref().map_or(0.0, |d| d.seconds);
            m.wall_s = offset + start.elapsed().as_secs_f64() - diag_s;
            let keep_going = on_round(&m, &self.global);
            self.history.push(m);
            if let Some(p) = checkpoint {
                self.save_checkpoint(p)?;
            }
            if !keep_going {
                break;
            }
        }
        Ok(())
    }
}
