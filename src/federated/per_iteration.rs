//! The two sides of a per-iteration step ([`super::CommMode::PerIteration`]): every active
//! client runs one dual pass on the current global and uploads K JVP scalars (plus the exact
//! gradients of its head and of the tensors its model reverses locally); the server replays each client's directions from the seed, forms
//! the estimates, averages them per tensor and steps; and the bytes this moves.

use ndarray::ArrayD;

use super::client::split_exact;
use super::comm;
use super::estimator::{Estimate, EstimatorConfig, forward_gradient};
use super::perturb::{StepKey, directions_with};
use super::sim::{FederatedTask, SimConfig};
use crate::modules::{Directions, DropoutKey, Trainable};
use crate::{Float, Result};

/// What a client sends per step in per-iteration mode.
pub(super) struct JvpUpload<F: Float> {
    pub(super) client: u64,
    /// The parameters it perturbed (the server replays their directions).
    pub(super) perturbed: Vec<usize>,
    /// K JVP scalars (empty if nothing was perturbed).
    pub(super) jvp: Vec<F>,
    /// Exact gradients of the parameters it trains on them.
    pub(super) exact: Vec<(usize, ArrayD<F>)>,
    pub(super) n_examples: usize,
    pub(super) loss: f64,
}

/// Where a per-iteration step sits: what the clients' passes and the server's replay share.
pub(super) struct StepPass<'a> {
    pub(super) cfg: &'a SimConfig,
    pub(super) round: u64,
    pub(super) step: u64,
    /// The task's head ([`Objective::exact_params`](super::Objective::exact_params)).
    pub(super) head: &'a [usize],
    /// The tensors its model reverses locally
    /// ([`Objective::backprop_params`](super::Objective::backprop_params)).
    pub(super) backprop: &'a [usize],
}

impl StepPass<'_> {
    fn key(&self, client: u64) -> StepKey {
        StepKey {
            seed: self.cfg.seed,
            round: self.round,
            client,
            step: self.step,
        }
    }
}

/// A client's side of a per-iteration step: one dual pass on the current global over `batch`
/// with K directions on the perturbed part of `params`, and what it uploads.
///
/// # Errors
/// The task's and the directions' errors.
pub(super) fn client_pass<F: Float, T: FederatedTask<F>>(
    task: &T,
    global: &Trainable<F>,
    pass: &StepPass<'_>,
    client: u64,
    params: &[usize],
    batch: &T::Batch,
) -> Result<JvpUpload<F>> {
    let cfg = &pass.cfg.client;
    let (exact_for, candidates) = split_exact(params, pass.head, pass.backprop, cfg.head_grad);
    let perturbed = cfg.perturbation.filter(global, &candidates);
    // the same rule picks which exactly differentiated LoRA factors are trained
    let exact_for = cfg.perturbation.filter(global, &exact_for);
    let dirs = if perturbed.is_empty() {
        Directions::none(global.len())
    } else {
        directions_with(global, &perturbed, cfg.k, pass.key(client), cfg.directions)?
    };
    let dropout = cfg.dropout.then(|| DropoutKey {
        seed: pass.cfg.seed,
        parts: vec![pass.round, client, pass.step],
    });
    let out = task.loss_jvp(batch, global, &dirs, dropout.as_ref(), &exact_for)?;
    Ok(JvpUpload {
        client,
        perturbed,
        jvp: out.jvp.map(|j| j.to_vec()).unwrap_or_default(),
        exact: out
            .exact
            .into_iter()
            .filter(|(p, _)| exact_for.contains(p))
            .collect(),
        n_examples: task.batch_len(batch),
        loss: out.loss.as_f64(),
    })
}

/// Bytes of one client's upload: K JVP scalars, plus its exact gradients if any.
pub(super) fn upload_bytes<F: Float>(u: &JvpUpload<F>, k: usize) -> u64 {
    let n: usize = u.exact.iter().map(|(_, g)| g.len()).sum();
    let extra = if u.exact.is_empty() {
        0
    } else {
        comm::upload_gradients(n, u.exact.len())
    };
    comm::upload_jvps(k) + extra
}

/// Bytes of the averaged exact gradients (of the tensors `exact`) that go to one participant
/// with the JVP broadcast.
pub(super) fn exact_broadcast_bytes<F: Float>(grads: &[Option<ArrayD<F>>], exact: &[usize]) -> u64 {
    let (n_s, n_t) = grads
        .iter()
        .enumerate()
        .filter(|(p, g)| g.is_some() && exact.contains(p))
        .fold((0, 0), |(s, t), (_, g)| {
            (s + g.as_ref().map_or(0, |g| g.len()), t + 1)
        });
    if n_t > 0 {
        comm::upload_gradients(n_s, n_t)
    } else {
        0
    }
}

/// The server's side of a per-iteration step.
pub(super) struct Replay<F: Float> {
    /// Per-parameter gradient averaged over the clients that sent one (weighted by examples).
    pub(super) grads: Vec<Option<ArrayD<F>>>,
    /// Uploads dropped for a non-finite JVP, loss or exact gradient.
    pub(super) skipped: usize,
    pub(super) loss_sum: f64,
    pub(super) n_loss: usize,
}

/// Replays each upload's directions from the seed, forms its estimate `ĝ = (1/K) Σ jvp_k v_k`
/// (plus its exact gradients), and averages per tensor weighted by the batch sizes:
/// `g_p = Σ_c n_c ĝ_{c,p} / Σ_c n_c` over the clients c that trained p.
///
/// # Errors
/// The directions' and the estimator's errors.
pub(super) fn replay_average<F: Float>(
    global: &Trainable<F>,
    pass: &StepPass<'_>,
    uploads: Vec<JvpUpload<F>>,
) -> Result<Replay<F>> {
    let cfg = &pass.cfg.client;
    let est_cfg = EstimatorConfig {
        jvp_clip: cfg.jvp_clip,
    };
    let mut sums: Vec<Option<(ArrayD<F>, f64)>> = vec![None; global.len()];
    let (mut skipped, mut loss_sum, mut n_loss) = (0, 0.0, 0);
    for u in uploads {
        let mut grads: Vec<(usize, ArrayD<F>)> = Vec::new();
        if !u.perturbed.is_empty() {
            let dirs = directions_with(
                global,
                &u.perturbed,
                cfg.k,
                pass.key(u.client),
                cfg.directions,
            )?;
            match forward_gradient(&u.jvp, &dirs, &est_cfg)? {
                Estimate::NonFinite => {
                    skipped += 1;
                    continue;
                }
                Estimate::Gradient(g) => grads.extend(
                    g.into_iter()
                        .enumerate()
                        .filter_map(|(p, g)| g.map(|g| (p, g))),
                ),
            }
        }
        if !u.loss.is_finite()
            || u.exact
                .iter()
                .any(|(_, g)| g.iter().any(|v| !v.is_finite()))
        {
            skipped += 1;
            continue;
        }
        grads.extend(u.exact);
        for (p, g) in grads {
            let e = sums[p].get_or_insert_with(|| (ArrayD::zeros(g.shape()), 0.0));
            e.0.scaled_add(F::from_usize(u.n_examples), &g);
            e.1 += u.n_examples as f64;
        }
        loss_sum += u.loss;
        n_loss += 1;
    }
    let grads = sums
        .into_iter()
        .map(|s| s.map(|(g, w)| g.mapv(|v| v / F::from_f64(w))))
        .collect();
    Ok(Replay {
        grads,
        skipped,
        loss_sum,
        n_loss,
    })
}
