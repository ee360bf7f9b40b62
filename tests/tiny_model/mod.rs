//! A tiny f64 model for the federated tests: a 2-layer network
//! `logits = W2·tanh(W1·x + b1) + b2` with mean cross-entropy, built from `linear_dual` and
//! `cross_entropy_with_grad`, plus an independent plain-loop loss for finite differences.
//!
//! Parameters (two units): p0 = W1 `[H, D]`, p1 = b1 `[H]` (unit "hidden"), p2 = W2 `[C, H]`,
//! p3 = b2 `[C]` (unit "head"). The head's exact gradient is offered through
//! [`Objective::exact_params`].
#![allow(dead_code)]

use std::sync::Mutex;

use ndarray::{Array2, ArrayD, Ix1, Ix2, IxDyn};
use spry::federated::{Evaluation, FederatedTask, LossJvp, Objective};
use spry::kernels::{cross_entropy_with_grad, linear_dual};
use spry::modules::{Directions, DropoutKey, Trainable, trainable::param_dual};
use spry::rng::{Domain, KeyedRng};
use spry::{Dual, Result};

/// Input features.
pub const D: usize = 3;
/// Hidden units.
pub const H: usize = 4;
/// Classes.
pub const C: usize = 3;
/// Parameter shapes in registry order.
pub const SHAPES: [&[usize]; 4] = [&[H, D], &[H], &[C, H], &[C]];
/// Total number of scalars (12 + 4 + 12 + 3).
pub const N_SCALARS: usize = H * D + H + C * H + C;

/// A minibatch: inputs `[B, D]` and class targets.
#[derive(Clone, Debug)]
pub struct Batch {
    /// Inputs `[B, D]`.
    pub x: Array2<f64>,
    /// Targets in `0..C`.
    pub y: Vec<i64>,
}

/// What one call of the objective saw (for assertions).
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    /// Which parameters carried a tangent.
    pub tangent_on: Vec<usize>,
    /// K of the directions.
    pub k: usize,
    /// The `exact_for` list.
    pub exact_for: Vec<usize>,
    /// The dropout key, if any.
    pub dropout: Option<DropoutKey>,
}

/// The model as an [`Objective`]. Records every call.
#[derive(Default)]
pub struct TinyNet {
    /// Calls so far.
    pub calls: Mutex<Vec<Call>>,
}

/// A registry with the model's four parameters initialised from `seed` (uniform in ±0.8).
pub fn init_params(seed: u64) -> Trainable<f64> {
    let mut rng = KeyedRng::new(seed, Domain::Init, &[]);
    let mut val = |shape: &[usize]| {
        let mut a = ArrayD::<f64>::zeros(IxDyn(shape));
        rng.fill_uniform(a.as_slice_mut().unwrap(), -0.8, 0.8);
        a
    };
    let (w1, b1, w2, b2) = (
        val(SHAPES[0]),
        val(SHAPES[1]),
        val(SHAPES[2]),
        val(SHAPES[3]),
    );
    let mut t = Trainable::new();
    t.push_unit("hidden", vec![("w1".into(), w1), ("b1".into(), b1)])
        .unwrap();
    t.push_unit("head", vec![("w2".into(), w2), ("b2".into(), b2)])
        .unwrap();
    t
}

/// A batch of `b` random inputs in ±1.5 with random targets.
pub fn random_batch(seed: u64, b: usize) -> Batch {
    let mut rng = KeyedRng::new(seed, Domain::Data, &[77]);
    let mut x = Array2::<f64>::zeros((b, D));
    rng.fill_uniform(x.as_slice_mut().unwrap(), -1.5, 1.5);
    let y = (0..b).map(|_| rng.below(C as u64) as i64).collect();
    Batch { x, y }
}

/// Linearly separable data: class c is centred at 2·e_c (one axis per class) with noise ±0.5,
/// cut into batches of `b`.
pub fn separable_batches(seed: u64, n: usize, b: usize) -> Vec<Batch> {
    let mut rng = KeyedRng::new(seed, Domain::Data, &[78]);
    let mut xs = Vec::new();
    let mut ys = Vec::new();
    for i in 0..n {
        let c = i % C;
        let mut row = [0.0; D];
        for (j, r) in row.iter_mut().enumerate() {
            *r = rng.uniform_in(-0.5, 0.5) + if j == c { 2.0 } else { 0.0 };
        }
        xs.push(row);
        ys.push(c as i64);
    }
    xs.chunks(b)
        .zip(ys.chunks(b))
        .map(|(xc, yc)| Batch {
            x: Array2::from_shape_fn((xc.len(), D), |(r, j)| xc[r][j]),
            y: yc.to_vec(),
        })
        .collect()
}

/// tanh on a dual value: `y = tanh(h)`, `ẏ = (1 − y²)·ḣ`.
fn tanh_dual(h: &Dual<f64, Ix2>) -> Dual<f64, Ix2> {
    let y = h.primal().mapv(f64::tanh);
    let t = h.tangent().map(|t| {
        let mut t = t.clone();
        for mut tk in t.outer_iter_mut() {
            tk.zip_mut_with(&y, |a, &yy| *a *= 1.0 - yy * yy);
        }
        t
    });
    Dual::with_tangent(y, t).unwrap()
}

impl Objective<f64> for TinyNet {
    type Batch = Batch;

    fn loss_jvp(
        &self,
        batch: &Batch,
        params: &Trainable<f64>,
        dirs: &Directions<f64>,
        dropout: Option<&DropoutKey>,
        exact_for: &[usize],
    ) -> Result<LossJvp<f64>> {
        self.calls.lock().unwrap().push(Call {
            tangent_on: (0..params.len())
                .filter(|&p| dirs.get(p).is_some())
                .collect(),
            k: dirs.k(),
            exact_for: exact_for.to_vec(),
            dropout: dropout.cloned(),
        });
        let x = Dual::<f64, Ix2>::constant(batch.x.clone());
        let w1 = param_dual::<f64, Ix2>(params, dirs, 0)?;
        let b1 = param_dual::<f64, Ix1>(params, dirs, 1)?;
        let w2 = param_dual::<f64, Ix2>(params, dirs, 2)?;
        let b2 = param_dual::<f64, Ix1>(params, dirs, 3)?;
        let a = tanh_dual(&linear_dual(&x, &w1, Some(&b1))?);
        let logits = linear_dual(&a, &w2, Some(&b2))?;
        let (ce, gz) = cross_entropy_with_grad(&logits, &batch.y, -100)?;
        let mut exact = Vec::new();
        for &p in exact_for {
            match p {
                // ∂L/∂W2 = gzᵀ · a  ([C, B]·[B, H])
                2 => exact.push((2, gz.t().dot(a.primal()).into_dyn())),
                // ∂L/∂b2 = Σ_rows gz
                3 => exact.push((3, gz.sum_axis(ndarray::Axis(0)).into_dyn())),
                _ => {}
            }
        }
        Ok(LossJvp {
            loss: ce.loss,
            jvp: ce.jvp,
            exact,
        })
    }

    fn exact_params(&self) -> Vec<usize> {
        vec![2, 3]
    }

    fn batch_len(&self, batch: &Batch) -> usize {
        batch.y.len()
    }
}

/// The registry's values concatenated (registry order, row-major).
pub fn flatten(t: &Trainable<f64>) -> Vec<f64> {
    t.values().iter().flat_map(|v| v.iter().copied()).collect()
}

/// The offsets of the four parameters in the flat vector.
pub fn offsets() -> [std::ops::Range<usize>; 4] {
    let mut start = 0;
    SHAPES.map(|s| {
        let n: usize = s.iter().product();
        let r = start..start + n;
        start += n;
        r
    })
}

/// The mean cross-entropy written out with plain loops, independent of the crate's kernels.
pub fn plain_loss(theta: &[f64], batch: &Batch) -> f64 {
    let [o0, o1, o2, o3] = offsets();
    let (w1, b1, w2, b2) = (&theta[o0], &theta[o1], &theta[o2], &theta[o3]);
    let rows = batch.y.len();
    let mut total = 0.0;
    for r in 0..rows {
        let mut hid = [0.0; H];
        for (h, hv) in hid.iter_mut().enumerate() {
            let mut s = b1[h];
            for d in 0..D {
                s += w1[h * D + d] * batch.x[[r, d]];
            }
            *hv = s.tanh();
        }
        let mut z = [0.0; C];
        for (c, zv) in z.iter_mut().enumerate() {
            let mut s = b2[c];
            for h in 0..H {
                s += w2[c * H + h] * hid[h];
            }
            *zv = s;
        }
        let m = z.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
        let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        total += lse - z[batch.y[r] as usize];
    }
    total / rows as f64
}

/// The mean loss over several batches (weighted by rows).
pub fn plain_loss_all(theta: &[f64], batches: &[Batch]) -> f64 {
    let n: usize = batches.iter().map(|b| b.y.len()).sum();
    batches
        .iter()
        .map(|b| plain_loss(theta, b) * b.y.len() as f64)
        .sum::<f64>()
        / n as f64
}

/// The gradient of [`plain_loss`] by central differences (step 1e-5; error O(1e-10)).
pub fn fd_gradient(theta: &[f64], batch: &Batch) -> Vec<f64> {
    let h = 1e-5;
    (0..theta.len())
        .map(|i| {
            let mut p = theta.to_vec();
            let mut m = theta.to_vec();
            p[i] += h;
            m[i] -= h;
            (plain_loss(&p, batch) - plain_loss(&m, batch)) / (2.0 * h)
        })
        .collect()
}

/// A federated task over the tiny network: eight clients with separable data, a shared test
/// set.
pub struct TinyTask {
    pub net: TinyNet,
    pub clients: Vec<Vec<Batch>>,
    pub test: Vec<Batch>,
}

impl TinyTask {
    pub fn new() -> Self {
        TinyTask {
            net: TinyNet::default(),
            clients: (0..8).map(|c| separable_batches(100 + c, 24, 6)).collect(),
            test: separable_batches(999, 60, 20),
        }
    }
}

impl Objective<f64> for TinyTask {
    type Batch = Batch;
    fn loss_jvp(
        &self,
        b: &Batch,
        p: &Trainable<f64>,
        d: &Directions<f64>,
        drop: Option<&DropoutKey>,
        ex: &[usize],
    ) -> Result<LossJvp<f64>> {
        self.net.loss_jvp(b, p, d, drop, ex)
    }
    fn exact_params(&self) -> Vec<usize> {
        self.net.exact_params()
    }
    fn batch_len(&self, b: &Batch) -> usize {
        b.y.len()
    }
}

impl FederatedTask<f64> for TinyTask {
    fn n_clients(&self) -> usize {
        self.clients.len()
    }
    fn train_batches(&self, client: usize, _round: u64, _bs: usize) -> Result<Vec<Batch>> {
        Ok(self.clients[client].clone())
    }
    fn evaluate(&self, params: &Trainable<f64>) -> Result<Evaluation> {
        let none = Directions::none(params.len());
        let loss = self
            .test
            .iter()
            .map(|b| self.net.loss_jvp(b, params, &none, None, &[]).unwrap().loss)
            .sum::<f64>()
            / self.test.len() as f64;
        Ok(Evaluation {
            loss,
            accuracy: None,
            n: 60,
        })
    }
    fn evaluate_client(&self, _client: usize, params: &Trainable<f64>) -> Result<Evaluation> {
        self.evaluate(params)
    }
}
