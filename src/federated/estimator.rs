//! The forward-gradient estimator `ĝ = (1/K) Σ_k (∇f·v_k) v_k`.
//!
//! With `v_k ~ N(0, I)`, `E[(a·v)v] = a`: the estimate is unbiased, with variance
//! `(d + 1)‖a‖² / K` over the d perturbed coordinates. Splitting the trainable units among clients
//! keeps d small on each client, which is what makes the estimate usable (Spry).

use ndarray::ArrayD;

use crate::modules::Directions;
use crate::{Error, Float, Result};

/// What to do with the JVP scalars before forming the estimate.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EstimatorConfig {
    /// Clip every JVP scalar to `[-c, c]` (the follow-up work's `jvp_range`); `None` = no clip.
    pub jvp_clip: Option<f64>,
}

/// The per-parameter estimate (for the parameters that carry directions), or why the step
/// must be skipped.
#[derive(Clone, Debug, PartialEq)]
pub enum Estimate<F: Float> {
    /// `ĝ` per parameter (`None` where the parameter carried no direction).
    Gradient(Vec<Option<ArrayD<F>>>),
    /// A JVP scalar was NaN or ±∞: the step is skipped (and counted) rather than poisoning the
    /// weights.
    NonFinite,
}

/// Forms `ĝ = (1/K) Σ_k jvp_k · v_k` for every parameter that carries directions.
///
/// # Shapes
/// - `jvp`: `[K]`; each direction tensor `[K, param shape]`; each estimate `[param shape]`
///
/// # Errors
/// [`Error::ShapeMismatch`] if `jvp` does not have K entries.
pub fn forward_gradient<F: Float>(
    jvp: &[F],
    dirs: &Directions<F>,
    cfg: &EstimatorConfig,
) -> Result<Estimate<F>> {
    let k = dirs.k();
    if jvp.len() != k {
        return Err(Error::shape(
            "forward_gradient",
            format!("[{k}] jvp scalars"),
            &[jvp.len()],
        ));
    }
    if jvp.iter().any(|j| !j.is_finite()) {
        return Ok(Estimate::NonFinite);
    }
    let clip = |j: F| match cfg.jvp_clip {
        Some(c) => j.max(F::from_f64(-c)).min(F::from_f64(c)),
        None => j,
    };
    let inv_k = F::one() / F::from_usize(k.max(1));
    let grads = dirs
        .per_param()
        .iter()
        .map(|t| {
            t.as_ref().map(|t| {
                // ĝ = (1/K) Σ_k jvp_k · v_k  (t: [K, ..])
                let mut g = ArrayD::<F>::zeros(&t.shape()[1..]);
                for (kk, v) in t.outer_iter().enumerate() {
                    g.scaled_add(clip(jvp[kk]) * inv_k, &v);
                }
                g
            })
        })
        .collect();
    Ok(Estimate::Gradient(grads))
}
