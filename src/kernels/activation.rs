//! Element-wise activations: GELU (erf and tanh forms), SiLU, tanh, and SwiGLU.
//!
//! Each computes the primal and the derivative factor `g′(x)` once per element, then every
//! tangent direction is `ẏ = g′(x)·ẋ`. Constants are full precision (`std::f64::consts`).

use std::f64::consts::{FRAC_1_SQRT_2, FRAC_2_SQRT_PI, PI};

use ndarray::{Array, Dimension};

use crate::{Dual, Float, Result, common_k};

/// Which GELU: Hugging Face's `"gelu"` is [`GeluKind::Erf`] (BERT), `"gelu_new"` /
/// `"gelu_pytorch_tanh"` is [`GeluKind::Tanh`] (GPT-2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeluKind {
    /// `g(x) = x·Φ(x)`, Φ the standard normal CDF.
    Erf,
    /// `g(x) = ½x(1 + tanh(√(2/π)(x + 0.044715x³)))`.
    Tanh,
}

/// Value and derivative of GELU at `x` (f64 internally).
fn gelu_and_grad(x: f64, kind: GeluKind) -> (f64, f64) {
    match kind {
        GeluKind::Erf => {
            // Φ = ½(1 + erf(x/√2)), φ = e^{−x²/2}/√(2π); g = xΦ, g′ = Φ + xφ
            let cdf = 0.5 * (1.0 + libm::erf(x * FRAC_1_SQRT_2));
            let pdf = (-0.5 * x * x).exp() * (0.5 * FRAC_2_SQRT_PI * FRAC_1_SQRT_2);
            (x * cdf, cdf + x * pdf)
        }
        GeluKind::Tanh => {
            // u = √(2/π)(x + 0.044715x³), t = tanh u, g = ½x(1+t),
            // g′ = ½(1+t) + ½x(1−t)(1+t)·√(2/π)(1 + 3·0.044715x²)
            let c = (2.0 / PI).sqrt();
            let t = (c * (x + 0.044715 * x * x * x)).tanh();
            let du = c * (1.0 + 3.0 * 0.044715 * x * x);
            (
                0.5 * x * (1.0 + t),
                0.5 * (1.0 + t) + 0.5 * x * (1.0 - t) * (1.0 + t) * du,
            )
        }
    }
}

/// Value and derivative of SiLU at `x`: `y = xσ(x)`, `y′ = σ(x)(1 + x(1 − σ(x)))`.
fn silu_and_grad(x: f64) -> (f64, f64) {
    let s = 1.0 / (1.0 + (-x).exp());
    (x * s, s * (1.0 + x * (1.0 - s)))
}

/// Applies `f` (returning value and derivative) element-wise: `y = f(x)`, `ẏ_k = f′(x)·ẋ_k`.
fn unary<F: Float, D: Dimension>(x: &Dual<F, D>, f: impl Fn(f64) -> (f64, f64)) -> Dual<F, D> {
    let xs = x.primal().as_slice().expect("standard layout");
    let n = xs.len();
    // primal and the derivative factor, once per element
    let mut y = Vec::with_capacity(n);
    let mut d = Vec::with_capacity(if x.is_constant() { 0 } else { n });
    for &v in xs {
        let (fy, fd) = f(v.as_f64());
        y.push(F::from_f64(fy));
        if !x.is_constant() {
            d.push(F::from_f64(fd));
        }
    }
    let y = Array::from_shape_vec(x.primal().raw_dim(), y).expect("same size");
    // ẏ_k = f′(x) ⊙ ẋ_k for every direction
    let t = x.tangent().map(|t| {
        let mut out = t.clone();
        let s = out.as_slice_mut().expect("standard layout");
        for chunk in s.chunks_exact_mut(n.max(1)) {
            for (o, &di) in chunk.iter_mut().zip(&d) {
                *o *= di;
            }
        }
        out
    });
    Dual::from_parts_unchecked(y, t)
}

/// GELU: `y = g(x)`, `ẏ = g′(x)·ẋ` (see [`GeluKind`] for the two forms).
///
/// # Shapes
/// - any; output shaped like `x`
///
/// # Errors
/// None; the `Result` keeps the kernel signatures uniform.
pub fn gelu<F: Float, D: Dimension>(x: &Dual<F, D>, kind: GeluKind) -> Result<Dual<F, D>> {
    Ok(unary(x, |v| gelu_and_grad(v, kind)))
}

/// SiLU (swish): `y = x·σ(x)`, `ẏ = σ(x)(1 + x(1 − σ(x)))·ẋ`.
///
/// # Shapes
/// - any; output shaped like `x`
///
/// # Errors
/// None.
pub fn silu<F: Float, D: Dimension>(x: &Dual<F, D>) -> Result<Dual<F, D>> {
    Ok(unary(x, silu_and_grad))
}

/// Hyperbolic tangent: `y = tanh x`, `ẏ = (1 − y)(1 + y)·ẋ` (better than `1 − y²` near |y| → 1).
///
/// # Shapes
/// - any; output shaped like `x`
///
/// # Errors
/// None.
pub fn tanh<F: Float, D: Dimension>(x: &Dual<F, D>) -> Result<Dual<F, D>> {
    Ok(unary(x, |v| {
        let t = v.tanh();
        (t, (1.0 - t) * (1.0 + t))
    }))
}

/// SwiGLU: `y = SiLU(g) ⊙ u`, `ẏ = SiLU′(g)·ġ ⊙ u + SiLU(g) ⊙ u̇`.
///
/// Either operand may carry a symbolic-zero tangent; its term is skipped.
///
/// # Shapes
/// - `gate`, `up`: the same shape; output the same
///
/// # Errors
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) if the shapes differ;
/// [`Error::TangentCountMismatch`](crate::Error::TangentCountMismatch) if the K differ.
pub fn swiglu<F: Float, D: Dimension>(gate: &Dual<F, D>, up: &Dual<F, D>) -> Result<Dual<F, D>> {
    const OP: &str = "swiglu";
    super::check::exact(OP, up.shape(), gate.shape())?;
    let k = common_k(OP, &[gate.k(), up.k()])?;
    let gs = gate.primal().as_slice().expect("standard layout");
    let us = up.primal().as_slice().expect("standard layout");
    let n = gs.len();
    // primal factors: s = SiLU(g), a = SiLU′(g)·u
    let mut y = Vec::with_capacity(n);
    let mut s = Vec::with_capacity(n);
    let mut a = Vec::with_capacity(n);
    for (&g, &u) in gs.iter().zip(us) {
        let (sv, sd) = silu_and_grad(g.as_f64());
        y.push(F::from_f64(sv) * u);
        s.push(F::from_f64(sv));
        a.push(F::from_f64(sd) * u);
    }
    let y = Array::from_shape_vec(gate.primal().raw_dim(), y).expect("same size");
    let Some(k) = k else {
        return Ok(Dual::from_parts_unchecked(y, None));
    };
    // ẏ_k = a ⊙ ġ_k + s ⊙ u̇_k
    let mut t = match gate.tangent() {
        Some(tg) => {
            let mut t = tg.clone();
            for chunk in t
                .as_slice_mut()
                .expect("standard")
                .chunks_exact_mut(n.max(1))
            {
                chunk.iter_mut().zip(&a).for_each(|(o, &ai)| *o *= ai);
            }
            t
        }
        None => {
            let mut shape = gate.primal().raw_dim().insert_axis(ndarray::Axis(0));
            shape[0] = k;
            Array::zeros(shape)
        }
    };
    if let Some(tu) = up.tangent() {
        let ts = t.as_slice_mut().expect("standard");
        let tus = tu.as_slice().expect("standard");
        for (chunk, uchunk) in ts
            .chunks_exact_mut(n.max(1))
            .zip(tus.chunks_exact(n.max(1)))
        {
            for ((o, &ui), &si) in chunk.iter_mut().zip(uchunk).zip(&s) {
                *o += si * ui;
            }
        }
    }
    Ok(Dual::from_parts_unchecked(y, Some(t)))
}

// ---- naive reference twins ------------------------------------------------------------------

/// Derivative by the textbook formula of each activation, evaluated per element and per
/// direction with no shared factors. For tests.
fn unary_reference<F: Float, D: Dimension>(
    x: &Dual<F, D>,
    f: impl Fn(f64) -> f64,
    df: impl Fn(f64) -> f64,
) -> Dual<F, D> {
    let y = x.primal().mapv(|v| F::from_f64(f(v.as_f64())));
    let t = x.tangent().map(|t| {
        let mut out = t.clone();
        for k in 0..t.shape()[0] {
            let mut o = out.index_axis_mut(ndarray::Axis(0), k);
            for (ov, xv) in o.iter_mut().zip(x.primal().iter()) {
                *ov = F::from_f64(df(xv.as_f64()) * ov.as_f64());
            }
        }
        out
    });
    Dual::from_parts_unchecked(y, t)
}

/// Naive twin of [`gelu`].
///
/// # Errors
/// None.
pub fn gelu_reference<F: Float, D: Dimension>(
    x: &Dual<F, D>,
    kind: GeluKind,
) -> Result<Dual<F, D>> {
    Ok(match kind {
        GeluKind::Erf => unary_reference(
            x,
            |v| 0.5 * v * (1.0 + libm::erf(v / 2f64.sqrt())),
            |v| {
                0.5 * (1.0 + libm::erf(v / 2f64.sqrt()))
                    + v * (-v * v / 2.0).exp() / (2.0 * PI).sqrt()
            },
        ),
        GeluKind::Tanh => unary_reference(
            x,
            |v| 0.5 * v * (1.0 + ((2.0 / PI).sqrt() * (v + 0.044715 * v.powi(3))).tanh()),
            |v| {
                let u = (2.0 / PI).sqrt() * (v + 0.044715 * v.powi(3));
                let sech2 = 1.0 / u.cosh().powi(2);
                0.5 * (1.0 + u.tanh())
                    + 0.5 * v * sech2 * (2.0 / PI).sqrt() * (1.0 + 3.0 * 0.044715 * v * v)
            },
        ),
    })
}

/// Naive twin of [`silu`].
///
/// # Errors
/// None.
pub fn silu_reference<F: Float, D: Dimension>(x: &Dual<F, D>) -> Result<Dual<F, D>> {
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    Ok(unary_reference(
        x,
        |v| v * sig(v),
        |v| sig(v) + v * sig(v) * (1.0 - sig(v)),
    ))
}

/// Naive twin of [`tanh`].
///
/// # Errors
/// None.
pub fn tanh_reference<F: Float, D: Dimension>(x: &Dual<F, D>) -> Result<Dual<F, D>> {
    Ok(unary_reference(x, f64::tanh, |v| 1.0 / v.cosh().powi(2)))
}

/// Naive twin of [`swiglu`]: SiLU of the gate times `up` by the product rule, per direction.
///
/// # Errors
/// As [`swiglu`].
pub fn swiglu_reference<F: Float, D: Dimension>(
    gate: &Dual<F, D>,
    up: &Dual<F, D>,
) -> Result<Dual<F, D>> {
    super::check::exact("swiglu_reference", up.shape(), gate.shape())?;
    let k = common_k("swiglu_reference", &[gate.k(), up.k()])?;
    let s = silu_reference(gate)?;
    let y = ndarray::Zip::from(s.primal())
        .and(up.primal())
        .map_collect(|&a, &b| a * b);
    let t = k.map(|k| {
        let mut shape = vec![k];
        shape.extend_from_slice(gate.shape());
        let mut t = ndarray::ArrayD::<F>::zeros(ndarray::IxDyn(&shape));
        for kk in 0..k {
            for (i, (&sv, &uv)) in s.primal().iter().zip(up.primal().iter()).enumerate() {
                let ds = s.tangent().map_or(F::zero(), |st| {
                    st.as_slice().expect("std")[kk * s.primal().len() + i]
                });
                let du = up.tangent().map_or(F::zero(), |ut| {
                    ut.as_slice().expect("std")[kk * s.primal().len() + i]
                });
                t.as_slice_mut().expect("std")[kk * s.primal().len() + i] = ds * uv + sv * du;
            }
        }
        t.into_dimensionality::<D::Larger>().expect("rank")
    });
    Ok(Dual::from_parts_unchecked(y, t))
}
