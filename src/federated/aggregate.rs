//! Server side: validating client updates, averaging each trainable tensor over the clients that
//! trained it, and the server optimizers (FedAvg, FedAvgM, FedAdam, FedYogi, FedAdagrad).
//!
//! For parameter p trained by the clients S_p this round, `w̄_p = Σ_{i∈S_p} n_i w_{i,p} / Σ n_i`,
//! `Δ_p = w̄_p − w_p`, and the server optimizer turns Δ into the new global value (Reddi et al.,
//! "Adaptive Federated Optimization", with Flower's defaults and update rules):
//!
//! ```text
//! FedAvg:     w ← w + η·Δ
//! FedAvgM:    m ← μ·m + Δ;                                                   w ← w + η·m
//! FedAdam:    m ← β1·m + (1−β1)·Δ;  v ← β2·v + (1−β2)·Δ²;                    w ← w + η·m/(√v + τ)
//! FedYogi:    m ← β1·m + (1−β1)·Δ;  v ← v − (1−β2)·Δ²·sign(v − Δ²);          w ← w + η·m/(√v + τ)
//! FedAdagrad: m ← β1·m + (1−β1)·Δ;  v ← v + Δ²;                               w ← w + η·m/(√v + τ)
//! ```
//! FedAvgM is Flower's server-momentum FedAvg (Hsu et al., 2019) written with Δ = −pseudo-gradient.
//! m and v start at zero, with no bias correction. A parameter nobody trained keeps its value and
//! its optimizer state.

use std::collections::{BTreeMap, BTreeSet};

use ndarray::ArrayD;
use serde::{Deserialize, Serialize};

use super::robust::CombineRule;
use crate::modules::Trainable;
use crate::{Error, Float, Result};

/// What a client sends back after local training (per-epoch mode): its trained tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientUpdate<F: Float> {
    /// The physical client id.
    pub client: u64,
    /// The round the update belongs to.
    pub round: u64,
    /// Number of local training examples (the averaging weight).
    pub n_examples: u64,
    /// (parameter index, new value) for each tensor the client trained.
    pub params: Vec<(usize, ArrayD<F>)>,
}

/// What the server expects this round: which client may send which parameters.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RoundExpectation {
    /// The round number.
    pub round: u64,
    /// Allowed parameter indices per sampled client.
    pub allowed: BTreeMap<u64, BTreeSet<usize>>,
}

/// A server optimizer with its hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum ServerOptimizer {
    /// `w ← w + η·Δ` (η = 1: plain averaging).
    FedAvg {
        /// η.
        eta: f64,
    },
    /// FedAvg with server momentum: `m ← μ·m + Δ; w ← w + η·m`. The momentum averages the
    /// pseudo-gradients of several rounds, so one round whose sampled clients share a skewed
    /// label mix moves the model less.
    FedAvgM {
        /// η.
        eta: f64,
        /// μ.
        momentum: f64,
    },
    /// FedAdam.
    FedAdam {
        /// η.
        eta: f64,
        /// β1.
        beta1: f64,
        /// β2.
        beta2: f64,
        /// τ.
        tau: f64,
    },
    /// FedYogi.
    FedYogi {
        /// η.
        eta: f64,
        /// β1.
        beta1: f64,
        /// β2.
        beta2: f64,
        /// τ.
        tau: f64,
    },
    /// FedAdagrad.
    FedAdagrad {
        /// η.
        eta: f64,
        /// β1.
        beta1: f64,
        /// τ.
        tau: f64,
    },
}

impl ServerOptimizer {
    /// FedAvg with η = 1.
    pub fn fedavg() -> Self {
        ServerOptimizer::FedAvg { eta: 1.0 }
    }
    /// FedAvgM with η = 1 and momentum μ.
    pub fn fedavgm(momentum: f64) -> Self {
        ServerOptimizer::FedAvgM { eta: 1.0, momentum }
    }
    /// FedYogi with Flower's defaults (η = 1e-2, β1 = 0.9, β2 = 0.99, τ = 1e-3), as the Spry
    /// reference uses.
    pub fn fedyogi() -> Self {
        ServerOptimizer::FedYogi {
            eta: 1e-2,
            beta1: 0.9,
            beta2: 0.99,
            tau: 1e-3,
        }
    }
    /// FedAdam with Flower's defaults (η = 1e-1, β1 = 0.9, β2 = 0.99, τ = 1e-9).
    pub fn fedadam() -> Self {
        ServerOptimizer::FedAdam {
            eta: 1e-1,
            beta1: 0.9,
            beta2: 0.99,
            tau: 1e-9,
        }
    }
    /// FedAdagrad with Flower's defaults (η = 1e-1, β1 = 0, τ = 1e-9).
    pub fn fedadagrad() -> Self {
        ServerOptimizer::FedAdagrad {
            eta: 1e-1,
            beta1: 0.0,
            tau: 1e-9,
        }
    }
    /// The server learning rate η.
    pub fn eta(&self) -> f64 {
        match *self {
            ServerOptimizer::FedAvg { eta }
            | ServerOptimizer::FedAvgM { eta, .. }
            | ServerOptimizer::FedAdam { eta, .. }
            | ServerOptimizer::FedYogi { eta, .. }
            | ServerOptimizer::FedAdagrad { eta, .. } => eta,
        }
    }
    /// The same optimizer with server learning rate `eta`.
    pub fn with_eta(mut self, new: f64) -> Self {
        match &mut self {
            ServerOptimizer::FedAvg { eta }
            | ServerOptimizer::FedAvgM { eta, .. }
            | ServerOptimizer::FedAdam { eta, .. }
            | ServerOptimizer::FedYogi { eta, .. }
            | ServerOptimizer::FedAdagrad { eta, .. } => *eta = new,
        }
        self
    }
    /// Name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            ServerOptimizer::FedAvg { .. } => "fedavg",
            ServerOptimizer::FedAvgM { .. } => "fedavgm",
            ServerOptimizer::FedAdam { .. } => "fedadam",
            ServerOptimizer::FedYogi { .. } => "fedyogi",
            ServerOptimizer::FedAdagrad { .. } => "fedadagrad",
        }
    }
}

/// Turns per-parameter averages into a new global model.
pub trait Aggregator<F: Float> {
    /// Applies `averages[p]` (the combination of parameter p over its contributors, or
    /// `None` if nobody trained it) to `global`. An implementation either applies the whole
    /// step or, on error, changes nothing ([`aggregate_round_with`] also restores both states
    /// if a step leaves a non-finite value).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if an average's shape differs from its parameter's;
    /// for [`ServerState`], [`Error::InvalidArgument`] for a non-finite average or a step that
    /// would leave a non-finite value or moment (the state and `global` are then unchanged).
    fn apply(&mut self, global: &mut Trainable<F>, averages: &[Option<ArrayD<F>>]) -> Result<()>;

    /// The state a checkpoint keeps so that a resumed run aggregates exactly as an
    /// uninterrupted one (moments, counters); `Value::Null` (the default) for a stateless rule.
    fn state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Restores what [`Aggregator::state`] returned.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a state this aggregator cannot have written.
    fn restore(&mut self, state: serde_json::Value) -> Result<()> {
        match state {
            serde_json::Value::Null => Ok(()),
            _ => Err(Error::invalid(
                "Aggregator::restore",
                "a stateless aggregator got a saved state",
            )),
        }
    }
}

/// A [`ServerOptimizer`] with its moment state (flat, one vector per parameter, created when the
/// parameter is first updated).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServerState {
    /// The optimizer.
    pub optimizer: ServerOptimizer,
    m: Vec<Option<Vec<f64>>>,
    v: Vec<Option<Vec<f64>>>,
}

impl ServerState {
    /// Checks a state (for example a checkpoint's) against the configured `optimizer` and
    /// parameters of `sizes` elements.
    ///
    /// # Errors
    /// A message naming the first inconsistency: another optimizer, a vector of the wrong
    /// length, a non-finite moment, a negative second moment.
    pub fn check(
        &self,
        optimizer: &ServerOptimizer,
        sizes: &[usize],
    ) -> std::result::Result<(), String> {
        if self.optimizer != *optimizer {
            return Err(format!(
                "server optimizer {:?}, but the configuration says {optimizer:?}",
                self.optimizer
            ));
        }
        super::optim::check_moments("server first moments", &self.m, sizes, false)?;
        super::optim::check_moments("server second moments", &self.v, sizes, true)
    }

    /// Fresh (zero) state for `n_params` parameters.
    pub fn new(optimizer: ServerOptimizer, n_params: usize) -> Self {
        ServerState {
            optimizer,
            m: vec![None; n_params],
            v: vec![None; n_params],
        }
    }
}

impl<F: Float> Aggregator<F> for ServerState {
    fn state(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    fn restore(&mut self, state: serde_json::Value) -> Result<()> {
        *self = serde_json::from_value(state)
            .map_err(|e| Error::invalid("ServerState::restore", e.to_string()))?;
        Ok(())
    }

    fn apply(&mut self, global: &mut Trainable<F>, averages: &[Option<ArrayD<F>>]) -> Result<()> {
        const OP: &str = "ServerState::apply";
        if averages.len() != global.len() || self.m.len() != global.len() {
            return Err(Error::invalid(
                OP,
                format!(
                    "{} averages for {} parameters",
                    averages.len(),
                    global.len()
                ),
            ));
        }
        for (p, avg) in averages.iter().enumerate() {
            if let Some(a) = avg
                && a.shape() != global.value(p).shape()
            {
                return Err(Error::shape(
                    OP,
                    format!("{:?}", global.value(p).shape()),
                    a.shape(),
                ));
            }
            if let Some(a) = avg
                && a.iter().any(|x| !x.is_finite())
            {
                return Err(Error::invalid(
                    OP,
                    format!("the average of `{}` is not finite", global.names()[p]),
                ));
            }
        }
        // staged on copies and committed only when every new value and moment is finite
        let mut staged = Vec::new();
        for (p, avg) in averages.iter().enumerate() {
            let Some(avg) = avg else { continue };
            let n = avg.len();
            let mut w: Vec<F> = global.value(p).iter().copied().collect();
            let mut m = self.m[p].clone().unwrap_or_else(|| vec![0.0; n]);
            let mut v = self.v[p].clone().unwrap_or_else(|| vec![0.0; n]);
            for (((wv, av), mv), vv) in w
                .iter_mut()
                .zip(avg.iter())
                .zip(m.iter_mut())
                .zip(v.iter_mut())
            {
                let wf = wv.as_f64();
                let delta = av.as_f64() - wf;
                let new = match self.optimizer {
                    ServerOptimizer::FedAvg { eta } => wf + eta * delta,
                    ServerOptimizer::FedAvgM { eta, momentum } => {
                        *mv = momentum * *mv + delta;
                        wf + eta * *mv
                    }
                    ServerOptimizer::FedAdam {
                        eta,
                        beta1,
                        beta2,
                        tau,
                    } => {
                        *mv = beta1 * *mv + (1.0 - beta1) * delta;
                        *vv = beta2 * *vv + (1.0 - beta2) * delta * delta;
                        wf + eta * *mv / (vv.sqrt() + tau)
                    }
                    ServerOptimizer::FedYogi {
                        eta,
                        beta1,
                        beta2,
                        tau,
                    } => {
                        *mv = beta1 * *mv + (1.0 - beta1) * delta;
                        let d2 = delta * delta;
                        *vv -= (1.0 - beta2) * d2 * sign(*vv - d2);
                        wf + eta * *mv / (vv.sqrt() + tau)
                    }
                    ServerOptimizer::FedAdagrad { eta, beta1, tau } => {
                        *mv = beta1 * *mv + (1.0 - beta1) * delta;
                        *vv += delta * delta;
                        wf + eta * *mv / (vv.sqrt() + tau)
                    }
                };
                *wv = F::from_f64(new);
                if !(wv.is_finite() && mv.is_finite() && vv.is_finite()) {
                    return Err(Error::invalid(
                        OP,
                        format!(
                            "the step of `{}` gives a value or moment that is not finite; nothing changed",
                            global.names()[p]
                        ),
                    ));
                }
            }
            staged.push((p, w, m, v));
        }
        for (p, w, m, v) in staged {
            for (dst, src) in global.value_mut(p).iter_mut().zip(w) {
                *dst = src;
            }
            self.m[p] = Some(m);
            self.v[p] = Some(v);
        }
        Ok(())
    }
}

/// numpy's sign: −1, 0 or 1.
fn sign(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// The largest example count one client may claim for one round (2³²): an update's averaging
/// weight is its example count, so an absurd count would let one client outweigh the rest.
pub const MAX_EXAMPLES_PER_UPDATE: u64 = 1 << 32;

/// Checks one update against the round's expectation and the global shapes, without changing
/// anything.
///
/// # Errors
/// [`Error::RejectedUpdate`] for a wrong round, an unknown (unsampled) or duplicate client, a
/// parameter the client was not assigned or that does not exist, a repeated parameter, a shape
/// mismatch, a non-finite value, zero examples or more than [`MAX_EXAMPLES_PER_UPDATE`].
pub fn validate_update<F: Float>(
    update: &ClientUpdate<F>,
    expected: &RoundExpectation,
    global: &Trainable<F>,
    already: &BTreeSet<u64>,
) -> Result<()> {
    let reject = |reason: String| Error::RejectedUpdate {
        client: update.client,
        round: update.round,
        reason,
    };
    if update.round != expected.round {
        return Err(reject(format!(
            "stale or future round (server is at round {})",
            expected.round
        )));
    }
    let Some(allowed) = expected.allowed.get(&update.client) else {
        return Err(reject("client was not sampled this round".into()));
    };
    if already.contains(&update.client) {
        return Err(reject("duplicate update from this client".into()));
    }
    if update.params.is_empty() {
        return Err(reject("the update carries no parameters".into()));
    }
    if update.n_examples == 0 {
        return Err(reject("zero training examples".into()));
    }
    if update.n_examples > MAX_EXAMPLES_PER_UPDATE {
        return Err(reject(format!(
            "{} training examples (at most {MAX_EXAMPLES_PER_UPDATE})",
            update.n_examples
        )));
    }
    let mut seen = BTreeSet::new();
    for (p, value) in &update.params {
        if *p >= global.len() {
            return Err(reject(format!("unknown parameter index {p}")));
        }
        if !allowed.contains(p) {
            return Err(reject(format!(
                "parameter `{}` was not assigned to this client",
                global.names()[*p]
            )));
        }
        if !seen.insert(*p) {
            return Err(reject(format!(
                "parameter `{}` sent twice",
                global.names()[*p]
            )));
        }
        if value.shape() != global.value(*p).shape() {
            return Err(reject(format!(
                "parameter `{}` has shape {:?}, expected {:?}",
                global.names()[*p],
                value.shape(),
                global.value(*p).shape()
            )));
        }
        if let Some(i) = value.iter().position(|v| !v.is_finite()) {
            return Err(reject(format!(
                "parameter `{}` holds a non-finite value at {i}",
                global.names()[*p]
            )));
        }
    }
    Ok(())
}

/// Per-parameter combinations of the updates under `rule`, over the clients that sent each
/// parameter (`None` for a parameter nobody sent). With [`CombineRule::Mean`] these are the
/// averages weighted by `n_examples`, computed on normalised weights in f64 so that no sum can
/// overflow.
///
/// # Shapes
/// Every update's tensors have their global parameter's shape (as [`validate_update`] checks).
///
/// # Errors
/// [`Error::InvalidArgument`] for an invalid rule or a parameter index past `global`.
pub fn combine_updates<F: Float>(
    updates: &[ClientUpdate<F>],
    global: &Trainable<F>,
    rule: CombineRule,
) -> Result<Vec<Option<ArrayD<F>>>> {
    let mut contributions: Vec<Vec<(f64, &ArrayD<F>)>> = vec![Vec::new(); global.len()];
    for u in updates {
        for (p, value) in &u.params {
            let Some(list) = contributions.get_mut(*p) else {
                return Err(Error::invalid(
                    "combine_updates",
                    format!("parameter index {p} of {}", global.len()),
                ));
            };
            list.push((u.n_examples as f64, value));
        }
    }
    contributions
        .iter()
        .enumerate()
        .map(|(p, list)| match list.is_empty() {
            true => Ok(None),
            false => rule.combine(global.value(p), list).map(Some),
        })
        .collect()
}

/// The outcome of one aggregation.
#[derive(Clone, Debug, PartialEq)]
pub struct AggregationReport {
    /// Clients whose updates were applied.
    pub accepted: Vec<u64>,
    /// Rejected updates and why (they changed nothing).
    pub rejected: Vec<(u64, String)>,
    /// Parameters nobody trained this round (kept as they were).
    pub untrained: Vec<usize>,
}

/// Validates every update, drops the invalid ones, and if at least `min_clients` remain, applies
/// the per-parameter weighted averages through `aggregator`: [`aggregate_round_with`] and
/// [`CombineRule::Mean`].
///
/// # Errors
/// As [`aggregate_round_with`].
pub fn aggregate_round<F: Float, A: Aggregator<F> + ?Sized>(
    global: &mut Trainable<F>,
    aggregator: &mut A,
    expected: &RoundExpectation,
    updates: Vec<ClientUpdate<F>>,
    min_clients: usize,
) -> Result<AggregationReport> {
    aggregate_round_with(
        global,
        aggregator,
        expected,
        updates,
        min_clients,
        CombineRule::Mean,
    )
}

/// Validates every update, drops the invalid ones, and if at least `min_clients` remain, applies
/// the per-parameter combinations under `rule` ([`combine_updates`]) through `aggregator`.
///
/// A round whose averages or server step would leave a non-finite value in the global state (for
/// example finite updates near the float range, which a weighted sum or a momentum step pushes
/// past it) fails as a whole: the global state and the aggregator's state are restored bit for
/// bit.
///
/// # Errors
/// [`Error::Round`] if fewer than `min_clients` valid updates arrived, or the step would make the
/// global state non-finite; the global state and the aggregator are then untouched.
/// [`Error::InvalidArgument`] for an invalid `rule`.
pub fn aggregate_round_with<F: Float, A: Aggregator<F> + ?Sized>(
    global: &mut Trainable<F>,
    aggregator: &mut A,
    expected: &RoundExpectation,
    updates: Vec<ClientUpdate<F>>,
    min_clients: usize,
    rule: CombineRule,
) -> Result<AggregationReport> {
    rule.validate()?;
    let mut accepted_ids = BTreeSet::new();
    let mut accepted = Vec::new();
    let mut rejected = Vec::new();
    for u in updates {
        match validate_update(&u, expected, global, &accepted_ids) {
            Ok(()) => {
                accepted_ids.insert(u.client);
                accepted.push(u);
            }
            Err(e) => rejected.push((u.client, e.to_string())),
        }
    }
    if accepted.len() < min_clients.max(1) {
        return Err(Error::Round {
            round: expected.round,
            reason: format!(
                "{} valid updates, at least {} required",
                accepted.len(),
                min_clients.max(1)
            ),
        });
    }
    let averages = combine_updates(&accepted, global, rule)?;
    let untrained = averages
        .iter()
        .enumerate()
        .filter(|(_, a)| a.is_none())
        .map(|(p, _)| p)
        .collect();
    let round_failed = |name: &str, what: &str| Error::Round {
        round: expected.round,
        reason: format!("the {what} of `{name}` is not finite; the round changed nothing"),
    };
    if let Some(p) = averages
        .iter()
        .position(|a| a.as_ref().is_some_and(|a| a.iter().any(|v| !v.is_finite())))
    {
        return Err(round_failed(&global.names()[p], "clients' average"));
    }
    // the step is undone if it fails or leaves anything non-finite
    let (before, state) = (global.clone(), aggregator.state());
    let outcome = aggregator.apply(global, &averages).and_then(|()| {
        match (0..global.len()).find(|&p| global.value(p).iter().any(|v| !v.is_finite())) {
            Some(p) => Err(round_failed(&global.names()[p], "server step's result")),
            None => Ok(()),
        }
    });
    if let Err(err) = outcome {
        *global = before;
        aggregator.restore(state)?;
        return Err(match err {
            Error::Round { .. } => err,
            other => Error::Round {
                round: expected.round,
                reason: format!("the server step failed ({other}); the round changed nothing"),
            },
        });
    }
    Ok(AggregationReport {
        accepted: accepted.iter().map(|u| u.client).collect(),
        rejected,
        untrained,
    })
}
