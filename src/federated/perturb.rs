//! Perturbation directions, replayable from the seed.
//!
//! Direction `k` of parameter `p` at local step `step` of client `client` in round `round` is
//! `v ~ N(0, I)` drawn from the `Perturbation` stream keyed by
//! `(seed, round, client, step, k, p)` ([`KeyedRng`]). A server that knows the seed, the round,
//! the client and its assignment regenerates exactly the directions the client used, bit for bit,
//! which is what per-iteration communication (uploading only the K JVP scalars) relies on.

use ndarray::{ArrayD, IxDyn};
use serde::{Deserialize, Serialize};

use crate::modules::{Directions, Trainable};
use crate::rng::{Domain, KeyedRng};
use crate::{Float, Result};

/// Where a set of directions sits in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StepKey {
    /// Run seed.
    pub seed: u64,
    /// Round number.
    pub round: u64,
    /// Client id (the physical client, not its slot).
    pub client: u64,
    /// Local step (minibatch counter within the round).
    pub step: u64,
}

/// Direction `k` for parameter `param` of shape `shape`.
pub fn direction<F: Float>(key: StepKey, k: usize, param: usize, shape: &[usize]) -> ArrayD<F> {
    let mut rng = KeyedRng::new(
        key.seed,
        Domain::Perturbation,
        &[key.round, key.client, key.step, k as u64, param as u64],
    );
    let mut v = ArrayD::<F>::zeros(IxDyn(shape));
    rng.fill_normal(v.as_slice_mut().expect("fresh array"));
    v
}

/// How the K directions of a step are drawn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirectionScheme {
    /// `v_k ~ N(0, I)`, independent (the paper).
    #[default]
    Gaussian,
    /// Directions guided by the current value of every perturbed `lora_B` tensor. LoRA's B
    /// starts at zero, so its value is the sum of its past updates: a guess of the descent
    /// direction that client and server both hold, with no extra communication. For such a
    /// tensor with value `w ≠ 0` and `ŵ = w/‖w‖`, `P⊥ = I − ŵŵᵀ`:
    ///
    /// - direction 0 is `s·√K·ŵ`, with `s = ±1` a keyed random sign per tensor;
    /// - directions `1..K` are `√(K/(K−1))·P⊥z_k`, `z_k ~ N(0, I)`.
    ///
    /// Then `E[(1/K) Σ_k v_k v_kᵀ] = ŵŵᵀ + P⊥ = I`, so `ĝ = (1/K) Σ_k (∇L·v_k) v_k` stays
    /// unbiased, and its component along `ŵ` is measured exactly instead of through `d` noisy
    /// coordinates (the random signs cancel the cross terms between tensors in expectation).
    /// Other tensors, a `lora_B` that is still zero, and K = 1 get Gaussian directions.
    GuidedByLoraB,
    /// Per tensor of `d` scalars, the K Gaussian draws orthonormalised (Gram–Schmidt in draw
    /// order) and scaled to length `√d`: a uniformly random orthogonal K-frame, so
    /// `E[v_k v_kᵀ] = I` and `ĝ` stays unbiased, while the K directions never measure the same
    /// component twice and no direction is longer or shorter than average. For `K ≪ d`
    /// independent Gaussian directions are already nearly orthogonal, so the expected gain is
    /// of order `K/d`. A tensor with fewer scalars than K, and K = 1, keep the Gaussian draws.
    ///
    /// (Antithetic pairs `±v` are no scheme here: a JVP is linear in `v`, so `(∇L·(−v))(−v)`
    /// equals `(∇L·v)v` and the pair is one direction counted twice. FedMeZO's two-point
    /// difference `L(w + εv) − L(w − εv)` is already antithetic.)
    Orthogonal,
}

from_names!(DirectionScheme,
    "gaussian" => DirectionScheme::Gaussian,
    "guided" => DirectionScheme::GuidedByLoraB,
    "orthogonal" => DirectionScheme::Orthogonal,
);

/// K directions on each parameter in `params` (the client's assigned tensors), symbolic zeros
/// elsewhere: [`directions_with`] and [`DirectionScheme::Gaussian`].
///
/// # Errors
/// Only if the registry and the index list disagree (an index out of range is an
/// [`Error::InvalidArgument`](crate::Error::InvalidArgument)).
pub fn directions<F: Float>(
    trainable: &Trainable<F>,
    params: &[usize],
    k: usize,
    key: StepKey,
) -> Result<Directions<F>> {
    directions_with(trainable, params, k, key, DirectionScheme::Gaussian)
}

/// K directions on each parameter in `params` under `scheme`, symbolic zeros elsewhere: a pure
/// function of `key`, `scheme` and the current values of `trainable` (which the server holds
/// too in per-iteration mode), so it can be replayed.
///
/// # Shapes
/// - each direction tensor: `[K, param shape]`
///
/// # Errors
/// Only if the registry and the index list disagree (an index out of range is an
/// [`Error::InvalidArgument`](crate::Error::InvalidArgument)).
pub fn directions_with<F: Float>(
    trainable: &Trainable<F>,
    params: &[usize],
    k: usize,
    key: StepKey,
    scheme: DirectionScheme,
) -> Result<Directions<F>> {
    let mut per_param: Vec<Option<ArrayD<F>>> = vec![None; trainable.len()];
    for &p in params {
        let value = trainable
            .values()
            .get(p)
            .ok_or_else(|| crate::Error::invalid("directions", format!("no parameter {p}")))?;
        let shape = value.shape().to_vec();
        let mut full = vec![k];
        full.extend_from_slice(&shape);
        let mut t = ArrayD::<F>::zeros(IxDyn(&full));
        for kk in 0..k {
            t.index_axis_mut(ndarray::Axis(0), kk)
                .assign(&direction::<F>(key, kk, p, &shape));
        }
        let guided = scheme == DirectionScheme::GuidedByLoraB
            && k >= 2
            && trainable.names()[p].contains("lora_B");
        if guided {
            guide(&mut t, value, key, p);
        }
        if scheme == DirectionScheme::Orthogonal && k >= 2 && value.len() >= k {
            orthogonalise(&mut t);
        }
        per_param[p] = Some(t);
    }
    Directions::new(trainable, k, per_param)
}

/// Rewrites the Gaussian directions `t` `[K, ..]` of one tensor (`d` scalars each, `K ≤ d`)
/// into those of [`DirectionScheme::Orthogonal`]: modified Gram–Schmidt in f64, then each
/// scaled to length `√d`.
fn orthogonalise<F: Float>(t: &mut ArrayD<F>) {
    let k = t.shape()[0];
    let d = t.len() / k;
    let mut rows: Vec<Vec<f64>> = t
        .outer_iter()
        .map(|v| v.iter().map(|x| x.as_f64()).collect())
        .collect();
    for i in 0..k {
        let (done, rest) = rows.split_at_mut(i);
        let row = &mut rest[0];
        for prev in done.iter() {
            let dot: f64 = row.iter().zip(prev).map(|(a, b)| a * b).sum();
            row.iter_mut().zip(prev).for_each(|(a, b)| *a -= dot * b);
        }
        let norm = row.iter().map(|a| a * a).sum::<f64>().sqrt();
        // a Gaussian draw lies in the span of the previous ones with probability 0
        let inv = if norm > 0.0 { 1.0 / norm } else { 0.0 };
        row.iter_mut().for_each(|a| *a *= inv);
    }
    let len = (d as f64).sqrt();
    for (mut v, row) in t.outer_iter_mut().zip(&rows) {
        for (x, r) in v.iter_mut().zip(row) {
            *x = F::from_f64(r * len);
        }
    }
}

/// Rewrites the Gaussian directions `t` `[K, ..]` of one tensor into the guided ones of
/// [`DirectionScheme::GuidedByLoraB`] (unchanged when `value` is zero).
fn guide<F: Float>(t: &mut ArrayD<F>, value: &ArrayD<F>, key: StepKey, param: usize) {
    let norm = value.iter().map(|v| v.as_f64().powi(2)).sum::<f64>().sqrt();
    if norm == 0.0 || !norm.is_finite() {
        return;
    }
    let k = t.shape()[0] as f64;
    let w: Vec<f64> = value.iter().map(|v| v.as_f64() / norm).collect();
    let mut sign_rng = KeyedRng::new(
        key.seed,
        Domain::Perturbation,
        &[key.round, key.client, key.step, u64::MAX, param as u64],
    );
    let sign = if sign_rng.uniform() < 0.5 { -1.0 } else { 1.0 };
    let (lead, scale_rest) = (sign * k.sqrt(), (k / (k - 1.0)).sqrt());
    for (kk, mut v) in t.outer_iter_mut().enumerate() {
        if kk == 0 {
            for (x, wi) in v.iter_mut().zip(&w) {
                *x = F::from_f64(lead * wi);
            }
        } else {
            // √(K/(K−1))·(z − (ŵ·z)ŵ)
            let dot: f64 = v.iter().zip(&w).map(|(x, wi)| x.as_f64() * wi).sum();
            for (x, wi) in v.iter_mut().zip(&w) {
                *x = F::from_f64(scale_rest * (x.as_f64() - dot * wi));
            }
        }
    }
}
