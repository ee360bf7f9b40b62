//! The zero-order baseline FedMeZO: local training with two-point SPSA estimates (MeZO,
//! Malladi et al. 2023) instead of forward gradients.
//!
//! Per step: `z ~ N(0, I)` over the client's tensors (replayable from
//! `(seed, round, client, step, param)` in the `ZeroOrder` stream), two plain forward passes at
//! `θ ± εz`, `ĝ = ((L(θ+εz) − L(θ−εz)) / 2ε)·z`, then the local optimizer.

use ndarray::{ArrayD, IxDyn};

use super::client::{ClientConfig, LocalReport, Objective};
use super::optim::OptimizerState;
use super::perturb::StepKey;
use crate::modules::{Directions, Trainable};
use crate::rng::{Domain, KeyedRng};
use crate::{Float, Result};

/// The SPSA perturbation `z` of parameter `param` at a step.
pub fn spsa_direction<F: Float>(key: StepKey, param: usize, shape: &[usize]) -> ArrayD<F> {
    let mut rng = KeyedRng::new(
        key.seed,
        Domain::ZeroOrder,
        &[key.round, key.client, key.step, param as u64],
    );
    let mut z = ArrayD::<F>::zeros(IxDyn(shape));
    rng.fill_normal(z.as_slice_mut().expect("fresh array"));
    z
}

/// Trains `params` in place with SPSA estimates over the tensors of `assigned` that
/// `cfg.perturbation` keeps (the same rule as Spry's, so that a B-only comparison is like for
/// like), `cfg.zo_eps` being the perturbation scale; the head's tensors step with
/// `cfg.head_optimizer` as in Spry. Returns the same report as
/// [`train_local`](super::client::train_local).
///
/// # Errors
/// Objective errors.
pub fn train_local_mezo<F: Float, O: Objective<F>>(
    objective: &O,
    params: &mut Trainable<F>,
    assigned: &[usize],
    batches: &[O::Batch],
    cfg: &ClientConfig,
    state: &mut OptimizerState,
    key: StepKey,
) -> Result<LocalReport> {
    let eps = cfg.zo_eps;
    let head = objective.exact_params();
    let none = Directions::none(params.len());
    let (mut steps, mut skipped, mut loss_sum) = (0usize, 0usize, 0.0f64);
    let mut step = key.step;
    let shift = |params: &mut Trainable<F>, zs: &[(usize, ArrayD<F>)], scale: f64| {
        for (p, z) in zs {
            params.value_mut(*p).scaled_add(F::from_f64(scale), z);
        }
    };
    for _epoch in 0..cfg.local_epochs {
        for batch in batches {
            let step_key = StepKey { step, ..key };
            step += 1;
            let zs: Vec<(usize, ArrayD<F>)> = cfg
                .perturbation
                .filter(params, assigned)
                .into_iter()
                .map(|p| (p, spsa_direction::<F>(step_key, p, params.value(p).shape())))
                .collect();
            shift(params, &zs, eps);
            let plus = objective.loss_jvp(batch, params, &none, None, &[])?.loss;
            shift(params, &zs, -2.0 * eps);
            let minus = objective.loss_jvp(batch, params, &none, None, &[])?.loss;
            shift(params, &zs, eps);
            let projected = (plus.as_f64() - minus.as_f64()) / (2.0 * eps);
            if !projected.is_finite() {
                skipped += 1;
                continue;
            }
            let mut grads: Vec<Option<ArrayD<F>>> = vec![None; params.len()];
            for (p, z) in zs {
                grads[p] = Some(z.mapv(|v| v * F::from_f64(projected)));
            }
            state.step_with(|p| cfg.optimizer_for(p, &head), params, &grads)?;
            steps += 1;
            loss_sum += 0.5 * (plus.as_f64() + minus.as_f64());
        }
    }
    Ok(LocalReport::new(
        objective, batches, steps, skipped, loss_sum,
    ))
}
