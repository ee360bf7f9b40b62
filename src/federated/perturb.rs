//! Perturbation directions, replayable from the seed.
//!
//! Direction `k` of parameter `p` at local step `step` of client `client` in round `round` is
//! `v ~ N(0, I)` drawn from the `Perturbation` stream keyed by
//! `(seed, round, client, step, k, p)` ([`KeyedRng`]). A server that knows the seed, the round,
//! the client and its assignment regenerates exactly the directions the client used, bit for bit,
//! which is what per-iteration communication (uploading only the K JVP scalars) relies on.

use ndarray::{ArrayD, IxDyn};

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

/// K directions on each parameter in `params` (the client's assigned tensors), symbolic zeros
/// elsewhere.
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
    let mut per_param: Vec<Option<ArrayD<F>>> = vec![None; trainable.len()];
    for &p in params {
        let shape = trainable
            .values()
            .get(p)
            .ok_or_else(|| crate::Error::invalid("directions", format!("no parameter {p}")))?
            .shape()
            .to_vec();
        let mut full = vec![k];
        full.extend_from_slice(&shape);
        let mut t = ArrayD::<F>::zeros(IxDyn(&full));
        for kk in 0..k {
            t.index_axis_mut(ndarray::Axis(0), kk)
                .assign(&direction::<F>(key, kk, p, &shape));
        }
        per_param[p] = Some(t);
    }
    Directions::new(trainable, k, per_param)
}
