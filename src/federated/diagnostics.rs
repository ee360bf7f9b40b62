//! Diagnostics of forward-gradient training: is the estimate pointing the right way, and do the
//! adapters move and matter?
//!
//! - [`exact_gradient`]: the true gradient of some parameters, itself computed in forward mode
//!   (one JVP per basis direction `e_i`, `∂L/∂θ_i = ∇L·e_i`, K basis directions per dual pass).
//!   It needs no reverse pass (spry's only one is BERT's exact top layers); this costs `d / K`
//!   passes for `d` scalars, so it is for a probe batch and one unit at a time, not for training.
//!   The exactly trained tensors (the head with `HeadGrad::Exact`, and the tensors the model
//!   reverses locally, `Objective::backprop_params`) are not probed: they carry no estimate.
//! - [`estimator_cosine`]: the cosine between a K-direction forward-gradient estimate, drawn
//!   exactly as a client draws it, and the exact gradient. For `v ~ N(0, I)` over d scalars its
//!   expectation is about `√(K / (d + K + 1))`; a cosine far below that means a broken JVP.
//! - [`Probe`]: what the simulation records per round on a fixed probe batch (see
//!   [`RoundDiagnostics`]).

use std::time::Instant;

use ndarray::{ArrayD, IxDyn};
use serde::{Deserialize, Serialize};

use super::client::{HeadGrad, Objective, split_exact};
use super::estimator::{Estimate, EstimatorConfig, forward_gradient};
use super::perturb::{StepKey, directions_with};
use super::sim::{FederatedTask, Simulation};
use crate::modules::{Directions, Trainable};
use crate::{Error, Float, Result};

/// The exact gradient of the parameters `of` on `batch`, by forward mode: every scalar of those
/// parameters is a basis direction, and `stack` of them share one dual pass.
///
/// `∂L/∂θ_i = ∇L·e_i`, so the JVP of direction `e_i` is the i-th gradient coordinate.
///
/// # Shapes
/// - returns one array per entry of `of`, shaped like that parameter
///
/// # Errors
/// [`Error::InvalidArgument`] for `stack = 0` or an index outside the registry; objective errors;
/// [`Error::InvalidArgument`] if a pass returns no JVP.
pub fn exact_gradient<F: Float, O: Objective<F>>(
    objective: &O,
    batch: &O::Batch,
    params: &Trainable<F>,
    of: &[usize],
    stack: usize,
) -> Result<Vec<ArrayD<F>>> {
    const OP: &str = "exact_gradient";
    if stack == 0 {
        return Err(Error::invalid(OP, "stack must be at least 1"));
    }
    if let Some(&p) = of.iter().find(|&&p| p >= params.len()) {
        return Err(Error::invalid(OP, format!("no parameter {p}")));
    }
    // coordinate c of the flattened list ↔ (entry e of `of`, offset within that parameter)
    let sizes: Vec<usize> = of.iter().map(|&p| params.value(p).len()).collect();
    let total: usize = sizes.iter().sum();
    let mut flat = vec![F::zero(); total];
    let mut start = 0;
    while start < total {
        let k = stack.min(total - start);
        let mut per_param: Vec<Option<ArrayD<F>>> = vec![None; params.len()];
        let mut offset = 0;
        for (e, &p) in of.iter().enumerate() {
            let (lo, hi) = (offset, offset + sizes[e]);
            offset = hi;
            if hi <= start || lo >= start + k {
                continue;
            }
            // rows of the stack whose basis coordinate falls inside this parameter
            let t = per_param[p].get_or_insert_with(|| {
                let mut shape = vec![k];
                shape.extend_from_slice(params.value(p).shape());
                ArrayD::zeros(IxDyn(&shape))
            });
            let n = sizes[e];
            let data = t.as_slice_mut().expect("fresh array");
            for c in start.max(lo)..(start + k).min(hi) {
                data[(c - start) * n + (c - lo)] = F::one();
            }
        }
        let dirs = Directions::new(params, k, per_param)?;
        let out = objective.loss_jvp(batch, params, &dirs, None, &[])?;
        let jvp = out
            .jvp
            .ok_or_else(|| Error::invalid(OP, "the objective returned no JVP"))?;
        for (i, j) in jvp.iter().enumerate() {
            flat[start + i] = *j;
        }
        start += k;
    }
    let mut grads = Vec::with_capacity(of.len());
    let mut offset = 0;
    for &p in of {
        let n = params.value(p).len();
        let g = ArrayD::from_shape_vec(
            IxDyn(params.value(p).shape()),
            flat[offset..offset + n].to_vec(),
        )
        .map_err(|e| Error::invalid(OP, e.to_string()))?;
        grads.push(g);
        offset += n;
    }
    Ok(grads)
}

/// `a·b / (‖a‖ ‖b‖)` over lists of arrays taken as one flat vector (0 when either is zero).
pub fn cosine<F: Float>(a: &[ArrayD<F>], b: &[ArrayD<F>]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        for (u, v) in x.iter().zip(y.iter()) {
            let (u, v) = (u.as_f64(), v.as_f64());
            ab += u * v;
            aa += u * u;
            bb += v * v;
        }
    }
    if aa == 0.0 || bb == 0.0 {
        0.0
    } else {
        ab / (aa.sqrt() * bb.sqrt())
    }
}

/// `‖a‖₂` over a list of arrays taken as one flat vector.
pub fn norm<'a, F: Float + 'a>(a: impl IntoIterator<Item = &'a ArrayD<F>>) -> f64 {
    a.into_iter()
        .flat_map(|x| x.iter())
        .map(|v| v.as_f64() * v.as_f64())
        .sum::<f64>()
        .sqrt()
}

/// The mean cosine, over the draws `draws` (each K directions on the parameters `of`, as a
/// client draws them), between the forward-gradient estimate and the exact gradient `exact` of
/// those parameters (from [`exact_gradient`]).
///
/// # Errors
/// Objective errors; [`Error::InvalidArgument`] for a draw without directions on `of` or a
/// non-finite JVP.
pub fn estimator_cosine<F: Float, O: Objective<F>>(
    objective: &O,
    batch: &O::Batch,
    params: &Trainable<F>,
    of: &[usize],
    exact: &[ArrayD<F>],
    draws: &[Directions<F>],
) -> Result<f64> {
    const OP: &str = "estimator_cosine";
    let mut sum = 0.0;
    for dirs in draws {
        let out = objective.loss_jvp(batch, params, dirs, None, &[])?;
        let jvp = out
            .jvp
            .ok_or_else(|| Error::invalid(OP, "the objective returned no JVP"))?;
        let est = match forward_gradient(
            jvp.as_slice().expect("contiguous"),
            dirs,
            &EstimatorConfig::default(),
        )? {
            Estimate::Gradient(g) => g,
            Estimate::NonFinite => return Err(Error::invalid(OP, "non-finite JVP")),
        };
        let est: Vec<ArrayD<F>> = of
            .iter()
            .map(|&p| {
                est[p]
                    .clone()
                    .ok_or_else(|| Error::invalid(OP, format!("no direction on parameter {p}")))
            })
            .collect::<Result<_>>()?;
        sum += cosine(&est, exact);
    }
    Ok(sum / draws.len().max(1) as f64)
}

/// What the simulation measures per round when diagnostics are on (all on one fixed probe batch
/// from the training data, the global state before and after the round).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundDiagnostics {
    /// The adapter unit probed this round (units are probed in turn; `None` in rounds without
    /// gradient measurements, whose gradient fields are then NaN).
    pub unit: Option<String>,
    /// ‖∇L‖ of the probed unit's perturbed tensors, before the round.
    pub grad_norm: f64,
    /// Mean cosine between a K-direction estimate and the exact gradient of the probed unit.
    pub estimator_cosine: f64,
    /// Cosine between the round's server update of the probed unit and −∇L (before the round):
    /// positive when the federated update descends.
    pub update_cosine: f64,
    /// ‖adapters‖ (every perturbed tensor, i.e. all but the exactly trained ones) after the round.
    pub adapter_norm: f64,
    /// ‖Δ adapters‖ this round.
    pub adapter_update: f64,
    /// ‖Δ exactly trained tensors‖ (the head, and any top-layer adapters the model reverses
    /// locally) this round.
    pub head_update: f64,
    /// Probe loss with the adapters minus the probe loss with the adapters zeroed (after the
    /// round): negative when the adapters help.
    pub adapter_loss_change: f64,
    /// RMS change of the probe outputs (logits) due to the adapters; `None` for objectives that
    /// expose no outputs.
    pub adapter_logit_rms: Option<f64>,
    /// Seconds spent on these diagnostics (not counted in the run's training wall time).
    pub seconds: f64,
}

/// Diagnostics settings.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiagnosticsConfig {
    /// Examples in the probe batch.
    pub probe_size: usize,
    /// Basis directions per dual pass of [`exact_gradient`].
    pub stack: usize,
    /// Draws averaged by [`estimator_cosine`].
    pub draws: usize,
    /// The exact-gradient measurements (gradient norm, estimator and update cosines: `d / stack`
    /// dual passes each) run in rounds `r` with `r % gradient_every == 0`; the norms and the
    /// adapters' effect every round.
    pub gradient_every: u64,
}

impl Default for DiagnosticsConfig {
    /// 4 probe examples, 64 basis directions per pass, 4 draws, gradients every 5 rounds (for a
    /// MiniLM q/v unit with r = 1, the exact gradient costs 12 dual passes of 64 directions).
    fn default() -> Self {
        DiagnosticsConfig {
            probe_size: 4,
            stack: 64,
            draws: 4,
            gradient_every: 5,
        }
    }
}

/// The tensors a method perturbs (everything not trained on an exact gradient) and the exactly
/// trained ones, over the whole registry.
pub fn adapter_and_exact<F: Float, O: Objective<F>>(
    objective: &O,
    params: &Trainable<F>,
    head_grad: HeadGrad,
) -> (Vec<usize>, Vec<usize>) {
    let all: Vec<usize> = (0..params.len()).collect();
    let (exact, adapters) = split_exact(
        &all,
        &objective.exact_params(),
        &objective.backprop_params(),
        head_grad,
    );
    (adapters, exact)
}

/// `params` with the given tensors set to zero (LoRA with B = 0 and A = 0 is the bare model).
pub fn zeroed<F: Float>(params: &Trainable<F>, which: &[usize]) -> Result<Trainable<F>> {
    let mut p = params.clone();
    for &i in which {
        let z = ArrayD::zeros(p.value(i).raw_dim());
        p.set_value(i, z)?;
    }
    Ok(p)
}

/// `‖after − before‖` over the tensors `which`.
pub fn update_norm<F: Float>(before: &Trainable<F>, after: &Trainable<F>, which: &[usize]) -> f64 {
    let d: Vec<ArrayD<F>> = which
        .iter()
        .map(|&i| after.value(i) - before.value(i))
        .collect();
    norm(&d)
}

/// The probe of one round: taken before the round (exact gradient and estimator cosine of one
/// adapter unit, in turn), completed after it (update cosine, norms, the adapters' effect).
pub struct Probe<F: Float> {
    cfg: DiagnosticsConfig,
    before: Trainable<F>,
    unit: Option<(String, Vec<usize>)>,
    grad: Vec<ArrayD<F>>,
    estimator_cosine: f64,
    seconds: f64,
}

impl<F: Float> Probe<F> {
    /// Measures the state before round `sim.round`.
    ///
    /// # Errors
    /// Task and objective errors.
    pub fn before_round<T: FederatedTask<F>>(
        sim: &Simulation<F>,
        task: &T,
        cfg: DiagnosticsConfig,
    ) -> Result<Self> {
        let start = Instant::now();
        let params = &sim.global;
        let (perturbed, _) = adapter_and_exact(task, params, sim.config.client.head_grad);
        let perturbed = sim.config.client.perturbation.filter(params, &perturbed);
        // adapter units (those with a perturbed tensor), probed in turn
        let units: Vec<(String, Vec<usize>)> = params
            .units()
            .iter()
            .map(|u| {
                let ps: Vec<usize> = u.params.clone().filter(|p| perturbed.contains(p)).collect();
                (u.name.clone(), ps)
            })
            .filter(|(_, ps)| !ps.is_empty())
            .collect();
        let probed = sim.round.is_multiple_of(cfg.gradient_every.max(1));
        let turn = (sim.round / cfg.gradient_every.max(1)) as usize;
        let unit = (probed && !units.is_empty()).then(|| units[turn % units.len()].clone());
        let (mut grad, mut est_cos) = (Vec::new(), 0.0);
        if let Some((_, of)) = &unit {
            let batch = task.probe_batch(cfg.probe_size)?;
            grad = exact_gradient(task, &batch, params, of, cfg.stack)?;
            let client = &sim.config.client;
            let draws: Vec<Directions<F>> = (0..cfg.draws as u64)
                .map(|step| {
                    let key = StepKey {
                        seed: sim.config.seed,
                        round: sim.round,
                        client: u64::MAX,
                        step,
                    };
                    directions_with(params, of, client.k, key, client.directions)
                })
                .collect::<Result<_>>()?;
            est_cos = estimator_cosine(task, &batch, params, of, &grad, &draws)?;
        }
        Ok(Probe {
            cfg,
            before: params.clone(),
            unit,
            grad,
            estimator_cosine: est_cos,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// Completes the probe with the state after the round.
    ///
    /// # Errors
    /// Task and objective errors.
    pub fn after_round<T: FederatedTask<F>>(
        self,
        sim: &Simulation<F>,
        task: &T,
    ) -> Result<RoundDiagnostics> {
        let start = Instant::now();
        let after = &sim.global;
        let (adapters, exact) = adapter_and_exact(task, after, sim.config.client.head_grad);
        let (grad_norm, estimator_cosine, update_cosine) = match &self.unit {
            Some((_, of)) => {
                let delta: Vec<ArrayD<F>> = of
                    .iter()
                    .map(|&p| self.before.value(p) - after.value(p))
                    .collect();
                (
                    norm(&self.grad),
                    self.estimator_cosine,
                    cosine(&delta, &self.grad),
                )
            }
            None => (f64::NAN, f64::NAN, f64::NAN),
        };
        let batch = task.probe_batch(self.cfg.probe_size)?;
        let bare = zeroed(after, &adapters)?;
        let (with, out_with) = task.loss_and_outputs(&batch, after)?;
        let (without, out_without) = task.loss_and_outputs(&batch, &bare)?;
        let adapter_logit_rms = match (out_with, out_without) {
            (Some(a), Some(b)) if !a.is_empty() && a.len() == b.len() => Some(
                (a.iter()
                    .zip(&b)
                    .map(|(x, y)| (x - y) * (x - y))
                    .sum::<f64>()
                    / a.len() as f64)
                    .sqrt(),
            ),
            _ => None,
        };
        Ok(RoundDiagnostics {
            unit: self.unit.as_ref().map(|(n, _)| n.clone()),
            grad_norm,
            estimator_cosine,
            update_cosine,
            adapter_norm: norm(adapters.iter().map(|&p| after.value(p))),
            adapter_update: update_norm(&self.before, after, &adapters),
            head_update: update_norm(&self.before, after, &exact),
            adapter_loss_change: with - without,
            adapter_logit_rms,
            seconds: self.seconds + start.elapsed().as_secs_f64(),
        })
    }
}
