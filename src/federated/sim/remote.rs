//! A round whose clients run elsewhere (another process or machine, e.g. Flower SuperNodes):
//! the server plans it ([`Simulation::plan_round`]), each client runs the client step on its
//! own data ([`client_step`] per epoch, [`client_jvp_step`] per iteration), and the server
//! closes it from the replies it got ([`Simulation::close_round`], or
//! [`Simulation::begin_iteration`] / [`Simulation::iteration_step`] /
//! [`Simulation::close_iteration`]). The in-process rounds call the same client steps and the
//! same aggregation, so a remote run with every reply back ends bit-identical to
//! [`Simulation::run`].

use std::collections::BTreeSet;

use ndarray::ArrayD;

use super::super::aggregate::{
    AggregationReport, ClientUpdate, RoundExpectation, aggregate_round_with,
};
use super::super::client::{HeadGrad, split_exact, train_local};
use super::super::comm::{self, RoundBytes};
use super::super::diagnostics::Probe;
use super::super::mezo::train_local_mezo;
use super::super::optim::OptimizerState;
use super::super::per_iteration::{
    JvpUpload, StepPass, client_pass, exact_broadcast_bytes, replay_average, upload_bytes,
};
use super::super::perturb::StepKey;
use super::{CommMode, FederatedTask, Method, RoundMetrics, SimConfig, Simulation};
use crate::modules::Trainable;
use crate::{Error, Float, Result};

/// What the server decided for one round before any client ran.
pub struct RoundPlan<F: Float> {
    /// The round (0-based: the state after `round` rounds is trained).
    pub round: u64,
    /// Sampled clients, in sampled order.
    pub sampled: Vec<u64>,
    /// Sampled clients the simulation drops (`SimConfig::drop_prob`); a remote server sends
    /// them nothing.
    pub dropped: BTreeSet<u64>,
    /// Parameter indices each sampled client trains (parallel to `sampled`).
    pub assigned: Vec<Vec<usize>>,
    probe: Option<Probe<F>>,
}

impl<F: Float> RoundPlan<F> {
    /// The diagnostics' probe the plan took, for the in-process round that closes it.
    pub(super) fn take_probe(&mut self) -> Option<Probe<F>> {
        self.probe.take()
    }

    /// A plan without diagnostics.
    pub fn new(
        round: u64,
        sampled: Vec<u64>,
        dropped: BTreeSet<u64>,
        assigned: Vec<Vec<usize>>,
    ) -> Self {
        RoundPlan {
            round,
            sampled,
            dropped,
            assigned,
            probe: None,
        }
    }

    /// The clients that train this round with their parameter indices.
    pub fn active(&self) -> impl Iterator<Item = (u64, &[usize])> {
        self.sampled
            .iter()
            .zip(&self.assigned)
            .filter(|(c, _)| !self.dropped.contains(c))
            .map(|(&c, a)| (c, a.as_slice()))
    }

    /// Which client may send which parameters this round.
    pub fn expectation(&self) -> RoundExpectation {
        RoundExpectation {
            round: self.round,
            allowed: self
                .sampled
                .iter()
                .zip(&self.assigned)
                .map(|(&c, a)| (c, a.iter().copied().collect()))
                .collect(),
        }
    }
}

/// A client's result of a per-epoch round: its update, its optimizer state after the round, its
/// mean training loss and the steps it skipped for a non-finite JVP.
pub struct ClientStep<F: Float> {
    /// The trained tensors.
    pub update: ClientUpdate<F>,
    /// The local optimizer state after training.
    pub state: OptimizerState,
    /// Mean local training loss (NaN if no step was taken).
    pub loss: f64,
    /// Steps skipped.
    pub skipped: usize,
}

/// The client step of a per-epoch round: `client` trains a copy of `global` on its batches of
/// `round`, perturbing (or, for the head, differentiating exactly) only `params`, from optimizer
/// state `state`, and returns those tensors.
///
/// # Errors
/// The task's errors.
pub fn client_step<F: Float, T: FederatedTask<F>>(
    config: &SimConfig,
    task: &T,
    global: &Trainable<F>,
    round: u64,
    client: u64,
    params: &[usize],
    mut state: OptimizerState,
) -> Result<ClientStep<F>> {
    let batches = task.train_batches(client as usize, round, config.batch_size)?;
    let mut local = global.clone();
    let key = StepKey {
        seed: config.seed,
        round,
        client,
        step: 0,
    };
    let client_cfg = config.client.for_round(round);
    let report = match config.method {
        Method::Spry | Method::FedFgd | Method::HeadOnly => train_local(
            task,
            &mut local,
            params,
            &batches,
            &client_cfg,
            &mut state,
            key,
        )?,
        Method::FedMezo => train_local_mezo(
            task,
            &mut local,
            params,
            &batches,
            &client_cfg,
            &mut state,
            key,
        )?,
    };
    Ok(ClientStep {
        update: ClientUpdate {
            client,
            round,
            n_examples: report.n_examples,
            params: params
                .iter()
                .map(|&p| (p, local.value(p).clone()))
                .collect(),
        },
        state,
        loss: report.mean_loss,
        skipped: report.skipped,
    })
}

/// What a client sends for one step of a per-iteration round.
#[derive(Clone, Debug, PartialEq)]
pub struct JvpReply<F: Float> {
    /// The client.
    pub client: u64,
    /// K JVP scalars (empty when the client perturbs nothing).
    pub jvp: Vec<F>,
    /// Exact gradients of the tensors it trains on them (its head, its reversed layers).
    pub exact: Vec<(usize, ArrayD<F>)>,
    /// Examples in its batch (the averaging weight).
    pub n_examples: usize,
    /// Its loss on the batch.
    pub loss: f64,
}

/// The parameters a client perturbs and those it differentiates exactly in a per-iteration
/// step over `global`, given its assigned `params`.
fn jvp_roles<F: Float, T: FederatedTask<F>>(
    config: &SimConfig,
    task: &T,
    global: &Trainable<F>,
    params: &[usize],
) -> (Vec<usize>, Vec<usize>) {
    let cfg = &config.client;
    let (exact_for, candidates) = split_exact(
        params,
        &task.exact_params(),
        &task.backprop_params(),
        cfg.head_grad,
    );
    (
        cfg.perturbation.filter(global, &candidates),
        cfg.perturbation.filter(global, &exact_for),
    )
}

/// Number of steps of a per-iteration round for these clients: their longest epoch times the
/// local epochs (a client with fewer batches cycles through them).
///
/// # Errors
/// The task's errors.
pub fn iteration_steps<F: Float, T: FederatedTask<F>>(
    config: &SimConfig,
    task: &T,
    round: u64,
    clients: &[u64],
) -> Result<usize> {
    let mut longest = 0;
    for &c in clients {
        longest = longest.max(
            task.train_batches(c as usize, round, config.batch_size)?
                .len(),
        );
    }
    Ok(longest * config.client.local_epochs)
}

/// The client side of step `step` of a per-iteration round: one dual pass over `global` on the
/// client's batch of that step (its batches cycled), K directions on the perturbed part of
/// `params`. `None` when the client has no batch.
///
/// # Errors
/// The task's errors.
#[allow(clippy::too_many_arguments)]
pub fn client_jvp_step<F: Float, T: FederatedTask<F>>(
    config: &SimConfig,
    task: &T,
    global: &Trainable<F>,
    round: u64,
    step: u64,
    client: u64,
    params: &[usize],
) -> Result<Option<JvpReply<F>>> {
    let batches = task.train_batches(client as usize, round, config.batch_size)?;
    if batches.is_empty() {
        return Ok(None);
    }
    let (head, backprop) = (task.exact_params(), task.backprop_params());
    let pass = StepPass {
        cfg: config,
        round,
        step,
        head: &head,
        backprop: &backprop,
    };
    let batch = &batches[step as usize % batches.len()];
    let u = client_pass(task, global, &pass, client, params, batch)?;
    Ok(Some(JvpReply {
        client,
        jvp: u.jvp,
        exact: u.exact,
        n_examples: u.n_examples,
        loss: u.loss,
    }))
}

/// Where `client` is in the plan's sample (unsampled clients last, in their own order).
fn sampled_position<F: Float>(plan: &RoundPlan<F>, client: u64) -> usize {
    plan.sampled
        .iter()
        .position(|&c| c == client)
        .unwrap_or(usize::MAX)
}

/// Replies dropped by validation: the client and why.
pub type Rejected = Vec<(u64, String)>;

/// A per-iteration round in progress on the server.
pub struct IterationRound<F: Float> {
    /// The round's plan.
    pub plan: RoundPlan<F>,
    /// Steps of the round.
    pub steps: usize,
    /// The next step.
    pub step: usize,
    state: OptimizerState,
    loss_sum: f64,
    n_loss: usize,
    skipped: usize,
    rejected: usize,
    bytes: RoundBytes,
}

impl<F: Float> IterationRound<F> {
    /// Counts replies dropped before they reached [`Simulation::iteration_step`] (malformed on
    /// the wire) among the round's rejected ones.
    pub fn add_rejected(&mut self, n: usize) {
        self.rejected += n;
    }
}

/// Checks a per-iteration reply against what the client was asked for: a sampled, active
/// client of this round, K scalars when it perturbs something (none otherwise), exactly the
/// exact gradients it trains with the shapes of their tensors, a positive example count. A
/// non-finite value is not an error here: the replay skips it (as the in-process round does).
///
/// # Errors
/// [`Error::RejectedUpdate`] naming what is wrong.
pub fn validate_jvp_reply<F: Float, T: FederatedTask<F>>(
    config: &SimConfig,
    task: &T,
    global: &Trainable<F>,
    plan: &RoundPlan<F>,
    reply: &JvpReply<F>,
) -> Result<()> {
    let reject = |reason: String| Error::RejectedUpdate {
        client: reply.client,
        round: plan.round,
        reason,
    };
    let Some((_, params)) = plan.active().find(|(c, _)| *c == reply.client) else {
        return Err(reject("client was not sampled this round".into()));
    };
    let (perturbed, exact_for) = jvp_roles(config, task, global, params);
    let want_k = if perturbed.is_empty() {
        0
    } else {
        config.client.k
    };
    if reply.jvp.len() != want_k {
        return Err(reject(format!(
            "{} JVP scalars, expected {want_k}",
            reply.jvp.len()
        )));
    }
    if reply.n_examples == 0 {
        return Err(reject("zero training examples".into()));
    }
    let got: BTreeSet<usize> = reply.exact.iter().map(|(p, _)| *p).collect();
    let want: BTreeSet<usize> = exact_for.iter().copied().collect();
    if got != want || got.len() != reply.exact.len() {
        return Err(reject(format!(
            "exact gradients for {:?}, expected {:?}",
            reply
                .exact
                .iter()
                .map(|(p, _)| global.names().get(*p).map_or("?", |s| s.as_str()))
                .collect::<Vec<_>>(),
            exact_for
                .iter()
                .map(|&p| global.names()[p].as_str())
                .collect::<Vec<_>>()
        )));
    }
    for (p, g) in &reply.exact {
        if g.shape() != global.value(*p).shape() {
            return Err(reject(format!(
                "gradient of `{}` has shape {:?}, expected {:?}",
                global.names()[*p],
                g.shape(),
                global.value(*p).shape()
            )));
        }
    }
    Ok(())
}

impl<F: Float> Simulation<F> {
    /// Plans the next round (`self.round`) over a task of `n_clients` clients: the sampled
    /// clients, the simulated dropouts and each client's parameters; with diagnostics on,
    /// `task` takes the round's probe now, before any client trains.
    ///
    /// # Errors
    /// The planner's and the diagnostics' errors; a pending custom aggregator state.
    pub fn plan_round<T: FederatedTask<F>>(&self, task: &T) -> Result<RoundPlan<F>> {
        if self.pending_aggregator_state.is_some() {
            return Err(Error::invalid(
                "Simulation::plan_round",
                "the checkpoint holds a custom aggregator's state: plug it in with \
                 Simulation::with_aggregator before running",
            ));
        }
        let round = self.round;
        let (sampled, dropped) = self.sample_clients(round, task.n_clients());
        let assigned = self.assignments(round, sampled.len())?;
        let probe = match self.config.diagnostics {
            Some(cfg) => Some(Probe::before_round(self, task, cfg)?),
            None => None,
        };
        Ok(RoundPlan {
            round,
            sampled,
            dropped,
            assigned,
            probe,
        })
    }

    /// Closes a per-epoch round from the client steps that came back (from any number of the
    /// plan's clients; a missing client's tensors keep their values): validates and aggregates
    /// them with the server optimizer (or the plugged-in aggregator), counts the bytes of the
    /// in-process accounting, evaluates when due, and records the round's metrics (with
    /// `wall_s`) in the history. A round with too few valid updates changes nothing but the
    /// round counter, as in [`Simulation::run`]. Returns the metrics and, unless the round
    /// failed, the aggregation report (accepted and rejected clients).
    ///
    /// # Errors
    /// Evaluation and diagnostics errors; per-iteration mode.
    pub fn close_round<T: FederatedTask<F>>(
        &mut self,
        task: &T,
        plan: RoundPlan<F>,
        steps: Vec<ClientStep<F>>,
        wall_s: f64,
    ) -> Result<(RoundMetrics, Option<AggregationReport>)> {
        if self.config.comm != CommMode::PerEpoch || plan.round != self.round {
            return Err(Error::invalid(
                "Simulation::close_round",
                format!(
                    "a per-epoch round {} (the simulation is at round {}, {:?})",
                    plan.round, self.round, self.config.comm
                ),
            ));
        }
        let n_scalars = self.global.n_scalars();
        let mut bytes = RoundBytes {
            up: 0,
            down: comm::download_model(n_scalars) * plan.sampled.len() as u64,
        };
        // in sampled order, as the in-process round sums them (float sums depend on the order)
        let mut steps = steps;
        steps.sort_by_key(|s| sampled_position(&plan, s.update.client));
        let (mut loss_sum, mut n_loss, mut skipped) = (0.0, 0usize, 0usize);
        let mut updates = Vec::with_capacity(steps.len());
        let mut states = Vec::with_capacity(steps.len());
        for s in steps {
            let n_t = s.update.params.len();
            let n_s: usize = s.update.params.iter().map(|(_, v)| v.len()).sum();
            bytes.up += comm::upload_tensors(n_s, n_t);
            if s.loss.is_finite() {
                loss_sum += s.loss;
                n_loss += 1;
            }
            skipped += s.skipped;
            states.push((s.update.client, s.state));
            updates.push(s.update);
        }
        let expected = plan.expectation();
        let (min, rule) = (self.config.min_clients, self.config.combine);
        let outcome = match self.aggregator.as_mut() {
            Some(a) => {
                aggregate_round_with(&mut self.global, a.as_mut(), &expected, updates, min, rule)
            }
            None => aggregate_round_with(
                &mut self.global,
                &mut self.server,
                &expected,
                updates,
                min,
                rule,
            ),
        };
        let mean = if n_loss > 0 {
            loss_sum / n_loss as f64
        } else {
            f64::NAN
        };
        let report = match outcome {
            Ok(r) => r,
            Err(Error::Round { round, reason }) => {
                self.round += 1;
                let m = RoundMetrics {
                    round: round + 1,
                    wall_s,
                    train_loss: f64::NAN,
                    failed: Some(reason),
                    ..Default::default()
                };
                self.history.push(m.clone());
                return Ok((m, None));
            }
            Err(e) => return Err(e),
        };
        if self.config.keep_client_state {
            for (c, s) in states {
                if report.accepted.contains(&c) {
                    self.client_states.insert(c, s);
                }
            }
        }
        let m = self.finish_round(
            task,
            plan.probe,
            mean,
            bytes,
            skipped,
            report.rejected.len(),
            wall_s,
        )?;
        Ok((m, Some(report)))
    }

    /// Round counter, diagnostics, evaluation when due, history.
    #[allow(clippy::too_many_arguments)]
    fn finish_round<T: FederatedTask<F>>(
        &mut self,
        task: &T,
        probe: Option<Probe<F>>,
        train_loss: f64,
        bytes: RoundBytes,
        skipped: usize,
        rejected: usize,
        wall_s: f64,
    ) -> Result<RoundMetrics> {
        let mut m = self.close_metrics(task, probe, train_loss, bytes, skipped, rejected)?;
        m.wall_s = wall_s;
        self.history.push(m.clone());
        Ok(m)
    }

    /// Starts a per-iteration round from its plan: the number of steps, and the server's
    /// optimizer state (kept from the last round with `keep_client_state`, else fresh).
    ///
    /// # Errors
    /// FedMeZO (per-iteration mode is for forward gradients); the task's errors;
    /// [`Error::Round`] when fewer active clients than `min_clients` remain (the round then
    /// counts as failed: call [`Simulation::fail_round`]).
    pub fn begin_iteration<T: FederatedTask<F>>(
        &mut self,
        task: &T,
        plan: RoundPlan<F>,
    ) -> Result<IterationRound<F>> {
        if self.config.comm != CommMode::PerIteration || self.config.method == Method::FedMezo {
            return Err(Error::invalid(
                "Simulation",
                "per-iteration mode is defined for forward-gradient methods",
            ));
        }
        let active: Vec<u64> = plan.active().map(|(c, _)| c).collect();
        let min = self.config.min_clients.max(1);
        if active.len() < min {
            return Err(Error::Round {
                round: plan.round,
                reason: format!(
                    "{} clients left after dropouts, at least {min} required",
                    active.len()
                ),
            });
        }
        let steps = iteration_steps(&self.config, task, plan.round, &active)?;
        let mut state = self
            .iteration_state
            .take()
            .unwrap_or_else(|| OptimizerState::new(self.global.len()));
        if !self.config.keep_client_state {
            state = OptimizerState::new(self.global.len());
        }
        let bytes = RoundBytes {
            up: 0,
            down: comm::download_model(self.global.n_scalars()) * active.len() as u64,
        };
        Ok(IterationRound {
            plan,
            steps,
            step: 0,
            state,
            loss_sum: 0.0,
            n_loss: 0,
            skipped: 0,
            rejected: 0,
            bytes,
        })
    }

    /// Counts a round that could not run (too few clients) as failed, as [`Simulation::run`]
    /// does, and records it.
    pub fn fail_round(&mut self, reason: String, wall_s: f64) -> RoundMetrics {
        self.round += 1;
        let m = RoundMetrics {
            round: self.round,
            wall_s,
            train_loss: f64::NAN,
            failed: Some(reason),
            ..Default::default()
        };
        self.history.push(m.clone());
        m
    }

    /// The server side of step `it.step`: validates each reply ([`validate_jvp_reply`]; a bad
    /// one is dropped and returned with its reason), replays the valid ones' directions from the
    /// seed, averages per tensor and steps the global tensors. Returns the indices of the
    /// tensors that changed (what the clients need to follow the global state) and the
    /// rejected replies.
    ///
    /// # Errors
    /// The replay's and the optimizer's errors.
    pub fn iteration_step<T: FederatedTask<F>>(
        &mut self,
        task: &T,
        it: &mut IterationRound<F>,
        replies: Vec<JvpReply<F>>,
    ) -> Result<(Vec<usize>, Rejected)> {
        let cfg = self.config.clone();
        let mut rejected = Vec::new();
        let mut seen = BTreeSet::new();
        // in sampled order, as the in-process step sums them
        let mut replies = replies;
        replies.sort_by_key(|r| sampled_position(&it.plan, r.client));
        let mut uploads = Vec::with_capacity(replies.len());
        for r in replies {
            let check = if seen.contains(&r.client) {
                Err(Error::RejectedUpdate {
                    client: r.client,
                    round: it.plan.round,
                    reason: "duplicate reply from this client".into(),
                })
            } else {
                validate_jvp_reply(&cfg, task, &self.global, &it.plan, &r)
            };
            match check {
                Ok(()) => {
                    seen.insert(r.client);
                    let params = it
                        .plan
                        .active()
                        .find(|(c, _)| *c == r.client)
                        .map(|(_, p)| p.to_vec())
                        .unwrap_or_default();
                    let (perturbed, _) = jvp_roles(&cfg, task, &self.global, &params);
                    uploads.push(JvpUpload {
                        client: r.client,
                        perturbed,
                        jvp: r.jvp,
                        exact: r.exact,
                        n_examples: r.n_examples,
                        loss: r.loss,
                    });
                }
                Err(e) => rejected.push((r.client, e.to_string())),
            }
        }
        it.rejected += rejected.len();
        let changed = self.iteration_apply(task, it, uploads)?;
        Ok((changed, rejected))
    }

    /// Replays, averages and steps one per-iteration step from its uploads: the one server step
    /// of the in-process and the remote per-iteration rounds.
    pub(super) fn iteration_apply<T: FederatedTask<F>>(
        &mut self,
        task: &T,
        it: &mut IterationRound<F>,
        uploads: Vec<JvpUpload<F>>,
    ) -> Result<Vec<usize>> {
        let cfg = self.config.clone();
        let (head, backprop) = (task.exact_params(), task.backprop_params());
        let mut exact_trained = backprop.clone();
        if cfg.client.head_grad == HeadGrad::Exact {
            exact_trained.extend(head.iter().filter(|p| !backprop.contains(p)));
        }
        let pass = StepPass {
            cfg: &cfg,
            round: it.plan.round,
            step: it.step as u64,
            head: &head,
            backprop: &backprop,
        };
        it.bytes.up += uploads
            .iter()
            .map(|u| upload_bytes(u, cfg.client.k))
            .sum::<u64>();
        it.bytes.down += comm::broadcast_jvps(cfg.client.k, uploads.len());
        let replay = replay_average(&self.global, &pass, uploads)?;
        it.skipped += replay.skipped;
        it.loss_sum += replay.loss_sum;
        it.n_loss += replay.n_loss;
        if !exact_trained.is_empty() {
            let n_active = it.plan.active().count() as u64;
            it.bytes.down += n_active * exact_broadcast_bytes(&replay.grads, &exact_trained);
        }
        let client_cfg = cfg.client.for_round(it.plan.round);
        it.state.step_with(
            |p| client_cfg.optimizer_for(p, &head),
            &mut self.global,
            &replay.grads,
        )?;
        it.step += 1;
        Ok(replay
            .grads
            .iter()
            .enumerate()
            .filter(|(_, g)| g.is_some())
            .map(|(p, _)| p)
            .collect())
    }

    /// Ends a per-iteration round: keeps the optimizer state, evaluates when due, records the
    /// round's metrics (with `wall_s`) in the history.
    ///
    /// # Errors
    /// Evaluation and diagnostics errors.
    pub fn close_iteration<T: FederatedTask<F>>(
        &mut self,
        task: &T,
        it: IterationRound<F>,
        wall_s: f64,
    ) -> Result<RoundMetrics> {
        let (mean, bytes, skipped, rejected, probe) = self.end_iteration(it);
        self.finish_round(task, probe, mean, bytes, skipped, rejected, wall_s)
    }

    /// Keeps the round's optimizer state; the mean loss, bytes, skipped steps, rejected replies
    /// and the probe.
    pub(super) fn end_iteration(
        &mut self,
        it: IterationRound<F>,
    ) -> (f64, RoundBytes, usize, usize, Option<Probe<F>>) {
        self.iteration_state = Some(it.state);
        let mean = if it.n_loss > 0 {
            it.loss_sum / it.n_loss as f64
        } else {
            f64::NAN
        };
        (mean, it.bytes, it.skipped, it.rejected, it.plan.probe)
    }
}
