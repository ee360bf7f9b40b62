//! What a run leaves behind: the per-round `metrics.csv`, the `summary.json`, and the
//! personalised metric of the reference ("after local finetuning"). The in-process examples and
//! any other driver of a [`Simulation`] write the same files with these.

use serde::{Deserialize, Serialize};

use super::client::train_local;
use super::optim::OptimizerState;
use super::perturb::StepKey;
use super::sim::{Evaluation, FederatedTask, RoundMetrics, SimConfig, Simulation};
use crate::{Float, Result};

/// Header of `metrics.csv`: one row per round ([`RoundMetrics::csv_row`]); the diagnostics'
/// columns are empty when they are off or were not measured that round.
pub const METRICS_CSV_HEADER: &str = "round,wall_s,train_loss,test_loss,test_accuracy,bytes_up,\
     bytes_down,skipped_steps,rejected,probe_unit,grad_norm,estimator_cosine,update_cosine,\
     adapter_norm,adapter_update,head_update,adapter_loss_change,adapter_logit_rms,diag_s\n";

impl RoundMetrics {
    /// This round as a line of `metrics.csv` (ending in a newline).
    pub fn csv_row(&self) -> String {
        let (tl, ta) = self.test.map_or((String::new(), String::new()), |t| {
            (
                format!("{:.6}", t.loss),
                t.accuracy.map_or(String::new(), |a| format!("{a:.6}")),
            )
        });
        let diag = self
            .diagnostics
            .as_ref()
            .map_or(",,,,,,,,,".to_string(), |d| {
                format!(
                    "{},{:.6e},{:.6},{:.6},{:.6e},{:.6e},{:.6e},{:.6e},{},{:.3}",
                    d.unit.as_deref().unwrap_or(""),
                    d.grad_norm,
                    d.estimator_cosine,
                    d.update_cosine,
                    d.adapter_norm,
                    d.adapter_update,
                    d.head_update,
                    d.adapter_loss_change,
                    d.adapter_logit_rms
                        .map_or(String::new(), |v| format!("{v:.6e}")),
                    d.seconds
                )
            });
        let b = &self.bytes;
        format!(
            "{},{:.3},{:.6},{tl},{ta},{},{},{},{},{diag}\n",
            self.round,
            self.wall_s,
            self.train_loss,
            b.up,
            b.down,
            self.skipped_steps,
            self.rejected
        )
    }
}

/// The whole `metrics.csv` of `history`: the header and one row per round.
pub fn metrics_csv(history: &[RoundMetrics]) -> String {
    let rows: String = history.iter().map(RoundMetrics::csv_row).collect();
    format!("{METRICS_CSV_HEADER}{rows}")
}

/// The run's `summary.json`: final and best results, cost, and the configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// `spry`, `fedmezo`, `fedfgd` or `headonly`.
    pub method: String,
    /// Rounds completed.
    pub rounds: u64,
    /// Accuracy of the final model on the evaluation set.
    pub final_test_accuracy: Option<f64>,
    /// Mean loss of the final model on the evaluation set.
    pub final_test_loss: f64,
    /// Best accuracy over the evaluated rounds (the final model included).
    pub best_test_accuracy: f64,
    /// Accuracy before the first round.
    pub test_accuracy_before: Option<f64>,
    /// [`personalized_accuracy`] before local finetuning.
    pub personalized_accuracy_before: Option<f64>,
    /// [`personalized_accuracy`] after it.
    pub personalized_accuracy_after: Option<f64>,
    /// Training wall time of the last round (summed over resumed segments).
    pub wall_s: f64,
    /// Peak resident memory of the process.
    pub peak_rss_mib: Option<f64>,
    /// Bytes sent by the clients over the run.
    pub bytes_up: u64,
    /// Bytes sent to the clients over the run.
    pub bytes_down: u64,
    /// `bytes_up` per round.
    pub bytes_up_per_round: u64,
    /// `bytes_down` per round.
    pub bytes_down_per_round: u64,
    /// Steps skipped for a non-finite JVP over the run.
    pub skipped_steps: usize,
    /// The run's configuration.
    pub config: SimConfig,
}

impl RunSummary {
    /// The summary of `sim` after its run, given the evaluation before training and of the
    /// final model ([`Simulation::evaluate_last`]); no personalised metric.
    pub fn new<F: Float>(sim: &Simulation<F>, before: Evaluation, last: Evaluation) -> Self {
        let h = &sim.history;
        let best = h
            .iter()
            .filter_map(|m| m.test.and_then(|t| t.accuracy))
            .fold(last.accuracy.unwrap_or(0.0), f64::max);
        let (up, down) = h
            .iter()
            .fold((0, 0), |(u, d), m| (u + m.bytes.up, d + m.bytes.down));
        let rounds = sim.round.max(1);
        RunSummary {
            method: format!("{:?}", sim.config.method).to_lowercase(),
            rounds: sim.round,
            final_test_accuracy: last.accuracy,
            final_test_loss: last.loss,
            best_test_accuracy: best,
            test_accuracy_before: before.accuracy,
            personalized_accuracy_before: None,
            personalized_accuracy_after: None,
            wall_s: h.last().map_or(0.0, |m| m.wall_s),
            peak_rss_mib: crate::metrics::peak_rss_mib(),
            bytes_up: up,
            bytes_down: down,
            bytes_up_per_round: up / rounds,
            bytes_down_per_round: down / rounds,
            skipped_steps: h.iter().map(|m| m.skipped_steps).sum(),
            config: sim.config.clone(),
        }
    }
}

/// The reference's personalised metric ("Test Generalized Accuracy"): the mean accuracy on the
/// local test splits of `n` clients (drawn with the run's seed, the same every call) before and
/// after `epochs` local epochs of the run's client training over every trainable tensor; `None`
/// when `n` is 0 or no drawn client has local test examples.
///
/// # Errors
/// The task's and the local training's errors.
pub fn personalized_accuracy<F: Float, T: FederatedTask<F>>(
    task: &T,
    sim: &Simulation<F>,
    n: usize,
    epochs: usize,
) -> Result<Option<(f64, f64)>> {
    let (clients, _) = sim.sample_clients(u64::MAX, task.n_clients());
    let mut cfg = sim.config.client.clone();
    cfg.local_epochs = epochs;
    let all: Vec<usize> = (0..sim.global.len()).collect();
    let (mut before, mut after, mut m) = (0.0, 0.0, 0usize);
    for &c in clients.iter().take(n) {
        let b = task.evaluate_client(c as usize, &sim.global)?;
        if b.n == 0 {
            continue;
        }
        let mut local = sim.global.clone();
        let mut state = OptimizerState::new(local.len());
        let batches = task.train_batches(c as usize, u64::MAX, sim.config.batch_size)?;
        let key = StepKey {
            seed: sim.config.seed,
            round: u64::MAX,
            client: c,
            step: 0,
        };
        train_local(task, &mut local, &all, &batches, &cfg, &mut state, key)?;
        let a = task.evaluate_client(c as usize, &local)?;
        before += b.accuracy.unwrap_or(0.0);
        after += a.accuracy.unwrap_or(0.0);
        m += 1;
    }
    Ok((m > 0).then(|| (before / m as f64, after / m as f64)))
}
