//! Local (client-side) optimizers over the client's assigned tensors only.
//!
//! Parameters without a gradient are untouched: no update and no weight decay, as in the
//! reference (PyTorch skips parameters whose `.grad` is `None`).

use ndarray::ArrayD;
use serde::{Deserialize, Serialize};

use crate::modules::Trainable;
use crate::{Error, Float, Result};

/// A local optimizer and its hyper-parameters (PyTorch semantics).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum LocalOptimizer {
    /// `buf ← μ·buf + (g + wd·p)`, `p ← p − lr·buf` (`torch.optim.SGD`, no dampening).
    Sgd {
        /// Learning rate.
        lr: f64,
        /// Momentum μ.
        momentum: f64,
        /// L2 weight decay (coupled, as torch's SGD).
        weight_decay: f64,
    },
    /// `p ← p·(1 − lr·wd)`, then Adam with bias correction (`torch.optim.AdamW`).
    AdamW {
        /// Learning rate.
        lr: f64,
        /// β1.
        beta1: f64,
        /// β2.
        beta2: f64,
        /// ε.
        eps: f64,
        /// Decoupled weight decay.
        weight_decay: f64,
    },
}

impl LocalOptimizer {
    /// AdamW with PyTorch's defaults and the given learning rate (β = (0.9, 0.999), ε = 1e-8,
    /// weight decay 0.01): the Spry reference's client optimizer.
    pub fn adamw(lr: f64) -> Self {
        LocalOptimizer::AdamW {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }

    /// Plain SGD at `lr` (no momentum, no weight decay).
    pub fn sgd(lr: f64) -> Self {
        LocalOptimizer::Sgd {
            lr,
            momentum: 0.0,
            weight_decay: 0.0,
        }
    }

    /// The same optimizer with its learning rate multiplied by `factor` (a schedule's step).
    pub fn scaled(mut self, factor: f64) -> Self {
        match &mut self {
            LocalOptimizer::Sgd { lr, .. } | LocalOptimizer::AdamW { lr, .. } => *lr *= factor,
        }
        self
    }

    /// The optimizer a command line names: `sgd` ([`LocalOptimizer::sgd`]) or `adamw`
    /// ([`LocalOptimizer::adamw`]), at `lr`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for another name or a learning rate that is negative or not
    /// finite.
    pub fn named(name: &str, lr: f64) -> Result<Self> {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(Error::invalid(
                "LocalOptimizer::named",
                format!("learning rate {lr}"),
            ));
        }
        match name {
            "sgd" => Ok(Self::sgd(lr)),
            "adamw" => Ok(Self::adamw(lr)),
            _ => Err(Error::invalid(
                "LocalOptimizer::named",
                format!("{name:?}: expected sgd or adamw"),
            )),
        }
    }
}

/// Per-parameter optimizer state (moments), created lazily for the parameters that get updates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimizerState {
    steps: Vec<u64>,
    m: Vec<Option<Vec<f64>>>,
    v: Vec<Option<Vec<f64>>>,
}

/// Checks moment vectors against the parameter sizes: one entry per parameter, each absent or
/// of the parameter's length, every value finite, second moments (`second`) non-negative.
pub(crate) fn check_moments(
    what: &str,
    moments: &[Option<Vec<f64>>],
    sizes: &[usize],
    second: bool,
) -> std::result::Result<(), String> {
    if moments.len() != sizes.len() {
        return Err(format!(
            "{what}: {} entries for {} parameters",
            moments.len(),
            sizes.len()
        ));
    }
    for (i, (m, &n)) in moments.iter().zip(sizes).enumerate() {
        let Some(m) = m else { continue };
        if m.len() != n {
            return Err(format!("{what}[{i}]: {} values for {n}", m.len()));
        }
        if let Some(x) = m.iter().find(|x| !x.is_finite() || (second && **x < 0.0)) {
            return Err(format!("{what}[{i}]: value {x} out of range"));
        }
    }
    Ok(())
}

impl OptimizerState {
    /// Checks a state (for example a checkpoint's) against parameters of `sizes` elements.
    ///
    /// # Errors
    /// A message naming the first inconsistency: a vector of the wrong length, a non-finite
    /// moment, a negative second moment.
    pub fn check(&self, sizes: &[usize]) -> std::result::Result<(), String> {
        if self.steps.len() != sizes.len() {
            return Err(format!(
                "step counts: {} for {} parameters",
                self.steps.len(),
                sizes.len()
            ));
        }
        check_moments("first moments", &self.m, sizes, false)?;
        check_moments("second moments", &self.v, sizes, true)
    }

    /// Fresh state for `n_params` parameters.
    pub fn new(n_params: usize) -> Self {
        OptimizerState {
            steps: vec![0; n_params],
            m: vec![None; n_params],
            v: vec![None; n_params],
        }
    }

    /// Applies one step of `opt` to every parameter that has a gradient.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `grads` does not have one entry per parameter;
    /// [`Error::ShapeMismatch`] if a gradient's shape differs from its parameter's.
    pub fn step<F: Float>(
        &mut self,
        opt: &LocalOptimizer,
        trainable: &mut Trainable<F>,
        grads: &[Option<ArrayD<F>>],
    ) -> Result<()> {
        self.step_with(|_| opt, trainable, grads)
    }

    /// Applies one step to every parameter `i` that has a gradient, with the optimizer
    /// `opt_for(i)` (parameter groups, e.g. a larger learning rate for exactly-differentiated
    /// tensors than for forward-gradient estimates). Nothing changes unless every gradient is
    /// valid.
    ///
    /// # Errors
    /// As [`OptimizerState::step`].
    pub fn step_with<'o, F: Float>(
        &mut self,
        opt_for: impl Fn(usize) -> &'o LocalOptimizer,
        trainable: &mut Trainable<F>,
        grads: &[Option<ArrayD<F>>],
    ) -> Result<()> {
        const OP: &str = "OptimizerState::step";
        if grads.len() != trainable.len() || self.steps.len() != trainable.len() {
            return Err(Error::invalid(
                OP,
                format!(
                    "{} gradients for {} parameters",
                    grads.len(),
                    trainable.len()
                ),
            ));
        }
        for (i, g) in grads.iter().enumerate() {
            let Some(g) = g else { continue };
            if g.shape() != trainable.value(i).shape() {
                return Err(Error::shape(
                    OP,
                    format!("{:?}", trainable.value(i).shape()),
                    g.shape(),
                ));
            }
        }
        for (i, g) in grads.iter().enumerate() {
            let Some(g) = g else { continue };
            self.steps[i] += 1;
            let t = self.steps[i];
            let n = g.len();
            let p = trainable.value_mut(i);
            match *opt_for(i) {
                LocalOptimizer::Sgd {
                    lr,
                    momentum,
                    weight_decay,
                } => {
                    let buf = self.m[i].get_or_insert_with(|| vec![0.0; n]);
                    for ((pv, gv), b) in p.iter_mut().zip(g.iter()).zip(buf.iter_mut()) {
                        let d = gv.as_f64() + weight_decay * pv.as_f64();
                        *b = if t == 1 { d } else { momentum * *b + d };
                        *pv = F::from_f64(pv.as_f64() - lr * *b);
                    }
                }
                LocalOptimizer::AdamW {
                    lr,
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                } => {
                    let m = self.m[i].get_or_insert_with(|| vec![0.0; n]);
                    let v = self.v[i].get_or_insert_with(|| vec![0.0; n]);
                    let bc1 = 1.0 - beta1.powi(t as i32);
                    let bc2 = 1.0 - beta2.powi(t as i32);
                    for (((pv, gv), mv), vv) in p
                        .iter_mut()
                        .zip(g.iter())
                        .zip(m.iter_mut())
                        .zip(v.iter_mut())
                    {
                        let gf = gv.as_f64();
                        let mut w = pv.as_f64() * (1.0 - lr * weight_decay);
                        *mv = beta1 * *mv + (1.0 - beta1) * gf;
                        *vv = beta2 * *vv + (1.0 - beta2) * gf * gf;
                        w -= lr * (*mv / bc1) / ((*vv / bc2).sqrt() + eps);
                        *pv = F::from_f64(w);
                    }
                }
            }
        }
        Ok(())
    }
}
