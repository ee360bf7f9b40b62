//! Element-wise activations: GELU (erf and tanh forms), SiLU, tanh, and the SwiGLU gate.
//!
//! Each activation `y = g(x)` has the tangent `ẏ = g′(x)⊙ẋ`. The derivative factor `g′(x)` is
//! computed once per element together with the primal and reused for all K directions; a
//! symbolic-zero input skips it entirely (primal-only pass). Constants are full precision
//! (`FRAC_2_SQRT_PI`, `FRAC_1_SQRT_2`), never 6-digit literals, so f64 finite differences agree
//! to ~1e-10.

use std::f64::consts::{FRAC_1_SQRT_2, FRAC_2_SQRT_PI};

use ndarray::{Array, ArrayView1, ArrayView2, ArrayViewMut2, Dimension, Zip};

use super::{buffer, check};
use crate::{Dual, Float, Result, common_k};

/// `√(2/π)`, the scale of the tanh-form GELU.
const SQRT_2_OVER_PI: f64 = FRAC_2_SQRT_PI * FRAC_1_SQRT_2;
/// `1/√(2π)`, the normalisation of the standard normal density.
const FRAC_1_SQRT_2PI: f64 = 0.5 * FRAC_2_SQRT_PI * FRAC_1_SQRT_2;
/// The cubic coefficient of the tanh-form GELU (Hendrycks & Gimpel); a definition, not a
/// rounded value.
const GELU_TANH_CUBIC: f64 = 0.044715;

/// Which GELU: the exact erf form or the tanh approximation.
///
/// Hugging Face `"gelu"` (BERT, RoBERTa, DistilBERT) is [`GeluKind::Erf`];
/// `"gelu_new"` (GPT-2) and `"gelu_pytorch_tanh"` are [`GeluKind::Tanh`]. The two differ by up to
/// ~5e-4, enough to break parity with a checkpoint trained with the other one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeluKind {
    /// `g(x) = x·Φ(x)` with `Φ(x) = ½(1 + erf(x/√2))` (PyTorch's default).
    Erf,
    /// `g(x) = ½x(1 + tanh(√(2/π)(x + 0.044715x³)))` (JAX's default).
    Tanh,
}

/// GELU, element-wise: `y = g(x)`, `ẏ = g′(x)⊙ẋ`.
///
/// - [`GeluKind::Erf`]: `g = xΦ(x)`, `g′ = Φ(x) + xφ(x)`, `Φ = ½(1 + erf(x/√2))`,
///   `φ = e^{−x²/2}/√(2π)`.
/// - [`GeluKind::Tanh`]: `u = √(2/π)(x + 0.044715x³)`, `t = tanh u`, `g = ½x(1 + t)`,
///   `g′ = ½(1 + t) + ½x(1 − t)(1 + t)·√(2/π)(1 + 3·0.044715x²)`.
///
/// # Shapes
/// - `x`: any shape; output: the same shape
///
/// # Errors
/// None; the `Result` keeps the kernel signatures uniform.
pub fn gelu<F: Float, D: Dimension>(x: &Dual<F, D>, kind: GeluKind) -> Result<Dual<F, D>> {
    Ok(match kind {
        GeluKind::Erf => unary(x, |v| gelu_erf(v).0, gelu_erf),
        GeluKind::Tanh => unary(x, |v| gelu_tanh(v).0, gelu_tanh),
    })
}

/// [`gelu`] consuming its input: the K tangents are scaled in place, `ẋ_k ← g′(x)⊙ẋ_k`, so no
/// second `[K, ..]` array is allocated, written or held beside the first (100 MB at K = 16 for
/// MiniLM's FFN activations). The results are bitwise those of [`gelu`].
///
/// # Shapes
/// - `x`: any shape; output: the same shape
///
/// # Errors
/// None; the `Result` keeps the kernel signatures uniform.
pub fn gelu_into<F: Float, D: Dimension>(x: Dual<F, D>, kind: GeluKind) -> Result<Dual<F, D>> {
    Ok(match kind {
        GeluKind::Erf => unary_into(x, |v| gelu_erf(v).0, gelu_erf),
        GeluKind::Tanh => unary_into(x, |v| gelu_tanh(v).0, gelu_tanh),
    })
}

/// SiLU (swish), element-wise: `y = x·σ(x)`, `ẏ = σ(x)(1 + x(1 − σ(x)))⊙ẋ`.
///
/// # Shapes
/// - `x`: any shape; output: the same shape
///
/// # Errors
/// None; the `Result` keeps the kernel signatures uniform.
pub fn silu<F: Float, D: Dimension>(x: &Dual<F, D>) -> Result<Dual<F, D>> {
    Ok(unary(x, |v| silu_value(v).0, silu_value))
}

/// Hyperbolic tangent, element-wise: `y = tanh x`, `ẏ = (1 − y)(1 + y)⊙ẋ` (more accurate than
/// `1 − y²` as `|y| → 1`).
///
/// # Shapes
/// - `x`: any shape; output: the same shape
///
/// # Errors
/// None; the `Result` keeps the kernel signatures uniform.
pub fn tanh<F: Float, D: Dimension>(x: &Dual<F, D>) -> Result<Dual<F, D>> {
    Ok(unary(x, |v| tanh_value(v).0, tanh_value))
}

/// SwiGLU gate: `y = silu(g)⊙u`, `ẏ = silu′(g)⊙ġ⊙u + silu(g)⊙u̇`.
///
/// Either operand may carry a symbolic-zero tangent (its term is skipped); if both do, the
/// output is a symbolic zero.
///
/// # Shapes
/// - `gate`, `up`: the same shape (any); output: that shape
///
/// # Errors
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) if the shapes differ;
/// [`Error::TangentCountMismatch`](crate::Error::TangentCountMismatch) if the operands carry
/// different K.
pub fn swiglu<F: Float, D: Dimension>(gate: &Dual<F, D>, up: &Dual<F, D>) -> Result<Dual<F, D>> {
    swiglu_with("swiglu", gate.primal(), gate.k(), up, |a| {
        // ẏ_k = a⊙ġ_k into a fresh array
        gate.tangent()
            .map(|tg| buffer::map_blocks(tg, a, |a, t| a * t))
    })
}

/// [`swiglu`] consuming the gate: its K tangents become the output's in place
/// (`ġ_k ← a⊙ġ_k + s⊙u̇_k`), so no second `[K, ..]` array is allocated beside them (100 MB at
/// K = 16 for SmolLM2's FFN activations). The results equal those of [`swiglu`].
///
/// # Shapes
/// As [`swiglu`].
///
/// # Errors
/// As [`swiglu`].
pub fn swiglu_into<F: Float, D: Dimension>(
    gate: Dual<F, D>,
    up: &Dual<F, D>,
) -> Result<Dual<F, D>> {
    let k = gate.k();
    let (g, tg) = gate.into_parts();
    swiglu_with("swiglu_into", &g, k, up, |a| {
        // ẏ_k = a⊙ġ_k in ġ's buffer
        tg.map(|mut tg| {
            buffer::map_blocks_in_place(&mut tg, a, |a, t| a * t);
            tg
        })
    })
}

/// The shared body of [`swiglu`] and [`swiglu_into`]: the primal `y = s⊙u` and the factors
/// `s = silu(g)`, `a = silu′(g)⊙u` once per element, then `ẏ = gate_term(a) + s⊙u̇`, where
/// `gate_term(a)` returns `a⊙ġ` (or `None` when `ġ` is a symbolic zero).
fn swiglu_with<F: Float, D: Dimension>(
    op: &'static str,
    g: &Array<F, D>,
    g_k: Option<usize>,
    up: &Dual<F, D>,
    gate_term: impl FnOnce(&[F]) -> Option<Array<F, D::Larger>>,
) -> Result<Dual<F, D>> {
    check::exact(op, up.shape(), g.shape())?;
    let Some(k) = common_k(op, &[g_k, up.k()])? else {
        // y = silu(g)⊙u, primal only
        let y = Zip::from(g)
            .and(up.primal())
            .map_collect(|&g, &u| silu_value(g).0 * u);
        return Ok(Dual::constant(y));
    };
    // y = s⊙u and the factors s = silu(g), a = silu′(g)⊙u, once per element
    let dim = g.raw_dim();
    let (mut y, mut s, mut a) = (
        Array::zeros(dim.clone()),
        Array::zeros(dim.clone()),
        Array::zeros(dim),
    );
    Zip::from(&mut y)
        .and(&mut s)
        .and(&mut a)
        .and(g)
        .and(up.primal())
        .for_each(|y, s, a, &g, &u| {
            let (sg, dsg) = silu_value(g);
            *y = sg * u;
            *s = sg;
            *a = dsg * u;
        });
    let s = s.as_slice().expect("standard layout");
    // ẏ_k = a⊙ġ_k + s⊙u̇_k
    let ty = match (
        gate_term(a.as_slice().expect("standard layout")),
        up.tangent(),
    ) {
        (Some(mut ty), Some(tu)) => {
            let len = y.len();
            let mut ty_rows = rows_mut(&mut ty, k, len);
            for (mut out, tu) in ty_rows.outer_iter_mut().zip(rows(tu, k, len).outer_iter()) {
                Zip::from(&mut out)
                    .and(&tu)
                    .and(&ArrayView1::from(s))
                    .for_each(|o, &t, &s| *o += s * t);
            }
            ty
        }
        (Some(ty), None) => ty,
        (None, Some(tu)) => buffer::map_blocks(tu, s, |s, t| s * t),
        (None, None) => unreachable!("common_k returned Some(K), so one operand is dual"),
    };
    Ok(Dual::from_parts_unchecked(y, Some(ty)))
}

/// GELU of one value and its derivative `(g(x), g′(x))`, the same scalar code as [`gelu`] (for
/// the reverse rule of `kernels::reverse`, which must use the forward's slope).
#[inline(always)]
pub(crate) fn gelu_scalar<F: Float>(x: F, kind: GeluKind) -> (F, F) {
    match kind {
        GeluKind::Erf => gelu_erf(x),
        GeluKind::Tanh => gelu_tanh(x),
    }
}

// Scalar functions returning (g(x), g′(x)). The primal-only pass keeps `.0`; the slope it drops
// is pure arithmetic (and `exp`), which the optimiser removes as dead code.

/// Erf-form GELU and its derivative.
#[inline(always)]
fn gelu_erf<F: Float>(x: F) -> (F, F) {
    let half = F::from_f64(0.5);
    // Φ(x) = ½(1 + erf(x/√2)), φ(x) = e^{−x²/2}/√(2π)
    let cdf = half * (F::one() + (x * F::from_f64(FRAC_1_SQRT_2)).erf());
    let pdf = (-half * x * x).exp_vec() * F::from_f64(FRAC_1_SQRT_2PI);
    (x * cdf, cdf + x * pdf)
}

/// Tanh-form GELU and its derivative.
#[inline(always)]
fn gelu_tanh<F: Float>(x: F) -> (F, F) {
    let (half, one) = (F::from_f64(0.5), F::one());
    let c = F::from_f64(GELU_TANH_CUBIC);
    let s = F::from_f64(SQRT_2_OVER_PI);
    let x2 = x * x;
    let t = (s * (x + c * x2 * x)).tanh();
    let sech2 = (one - t) * (one + t);
    // sech² = 0 once tanh saturates; skip the product so an overflowing x² cannot make 0·∞
    let slope = if sech2 == F::zero() {
        half * (one + t)
    } else {
        half * (one + t) + half * x * sech2 * s * (one + F::from_f64(3.0) * c * x2)
    };
    (half * x * (one + t), slope)
}

/// SiLU and its derivative: `σ = 1/(1 + e^{−x})`, `(xσ, σ(1 + x(1 − σ)))`.
#[inline(always)]
fn silu_value<F: Float>(x: F) -> (F, F) {
    let one = F::one();
    let sig = one / (one + (-x).exp_vec());
    (x * sig, sig * (one + x * (one - sig)))
}

/// tanh and its derivative `(1 − t)(1 + t)`.
#[inline(always)]
fn tanh_value<F: Float>(x: F) -> (F, F) {
    let t = x.tanh();
    (t, (F::one() - t) * (F::one() + t))
}

/// The shared body of the unary activations.
///
/// `value` must compute the same expression as `value_and_slope(..).0`, so that the primal of a
/// dual pass equals the primal-only pass bitwise.
fn unary<F: Float, D: Dimension>(
    x: &Dual<F, D>,
    value: impl Fn(F) -> F + Sync,
    value_and_slope: impl Fn(F) -> (F, F) + Sync,
) -> Dual<F, D> {
    let Some(tx) = x.tangent() else {
        // y = g(x), primal only
        return Dual::constant(buffer::map(x.primal(), value));
    };
    // y = g(x) and g′(x), once per element
    let (y, slope) = buffer::map2(x.primal(), value_and_slope);
    // ẏ_k = g′(x)⊙ẋ_k for every direction k
    let ty = buffer::map_blocks(tx, flat(&slope).as_slice().expect("contiguous"), |s, t| {
        s * t
    });
    Dual::from_parts_unchecked(y, Some(ty))
}

/// [`unary`] consuming its input: the same primal and slope, then `ẋ_k ← g′(x)⊙ẋ_k` in place.
fn unary_into<F: Float, D: Dimension>(
    x: Dual<F, D>,
    value: impl Fn(F) -> F + Sync,
    value_and_slope: impl Fn(F) -> (F, F) + Sync,
) -> Dual<F, D> {
    let (x, tx) = x.into_parts();
    let Some(mut tx) = tx else {
        return Dual::constant(buffer::map(&x, value));
    };
    let (y, slope) = buffer::map2(&x, value_and_slope);
    drop(x);
    buffer::map_blocks_in_place(
        &mut tx,
        flat(&slope).as_slice().expect("contiguous"),
        |s, t| s * t,
    );
    Dual::from_parts_unchecked(y, Some(tx))
}

/// A standard-layout array (every `Dual` array is one) as a flat vector view.
fn flat<F: Float, E: Dimension>(a: &Array<F, E>) -> ArrayView1<'_, F> {
    ArrayView1::from(a.as_slice().expect("standard layout"))
}

/// Stacked tangents `[K, ..]` (standard layout) as a `[K, len]` matrix view.
fn rows<F: Float, E: Dimension>(t: &Array<F, E>, k: usize, len: usize) -> ArrayView2<'_, F> {
    ArrayView2::from_shape((k, len), t.as_slice().expect("standard layout"))
        .expect("K times the primal length")
}

/// Mutable twin of [`rows`].
fn rows_mut<F: Float, E: Dimension>(
    t: &mut Array<F, E>,
    k: usize,
    len: usize,
) -> ArrayViewMut2<'_, F> {
    ArrayViewMut2::from_shape((k, len), t.as_slice_mut().expect("standard layout"))
        .expect("K times the primal length")
}

// ---- naive reference twins (loops, one direction at a time) -------------------------------------

/// Naive twin of [`gelu`]: textbook formulas in f64, one direction at a time. For tests.
///
/// # Errors
/// None, as [`gelu`].
pub fn gelu_reference<F: Float, D: Dimension>(
    x: &Dual<F, D>,
    kind: GeluKind,
) -> Result<Dual<F, D>> {
    Ok(unary_reference(x, |x| match kind {
        GeluKind::Erf => {
            let cdf = 0.5 * (1.0 + libm::erf(x / 2f64.sqrt()));
            let pdf = (-x * x / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
            (x * cdf, cdf + x * pdf)
        }
        GeluKind::Tanh => {
            let c = (2.0 / std::f64::consts::PI).sqrt();
            let u = c * (x + 0.044715 * x.powi(3));
            let du = c * (1.0 + 3.0 * 0.044715 * x * x);
            let sech2 = 1.0 / u.cosh().powi(2);
            (
                0.5 * x * (1.0 + u.tanh()),
                0.5 * (1.0 + u.tanh()) + 0.5 * x * sech2 * du,
            )
        }
    }))
}

/// Naive twin of [`silu`]. For tests.
///
/// # Errors
/// None, as [`silu`].
pub fn silu_reference<F: Float, D: Dimension>(x: &Dual<F, D>) -> Result<Dual<F, D>> {
    Ok(unary_reference(x, silu_reference_scalar))
}

/// Naive twin of [`tanh`]. For tests.
///
/// # Errors
/// None, as [`tanh`].
pub fn tanh_reference<F: Float, D: Dimension>(x: &Dual<F, D>) -> Result<Dual<F, D>> {
    Ok(unary_reference(x, |x| (x.tanh(), 1.0 - x.tanh().powi(2))))
}

/// Naive twin of [`swiglu`]. For tests.
///
/// # Errors
/// As [`swiglu`].
pub fn swiglu_reference<F: Float, D: Dimension>(
    gate: &Dual<F, D>,
    up: &Dual<F, D>,
) -> Result<Dual<F, D>> {
    const OP: &str = "swiglu_reference";
    check::exact(OP, up.shape(), gate.shape())?;
    let k = common_k(OP, &[gate.k(), up.k()])?;
    let g: Vec<f64> = gate.primal().iter().map(|&v| v.as_f64()).collect();
    let u: Vec<f64> = up.primal().iter().map(|&v| v.as_f64()).collect();
    let mut y = Vec::new();
    for i in 0..g.len() {
        y.push(F::from_f64(silu_reference_scalar(g[i]).0 * u[i]));
    }
    let y = Array::from_shape_vec(gate.primal().raw_dim(), y).expect("same length");
    let Some(k) = k else {
        return Ok(Dual::constant(y));
    };
    let zeros = vec![0.0; g.len()];
    let mut directions = Vec::new();
    for kk in 0..k {
        // one direction at a time; a symbolic zero contributes zeros
        let dg: Vec<f64> = gate
            .direction(kk)
            .map_or(zeros.clone(), |d| d.iter().map(|&v| v.as_f64()).collect());
        let du: Vec<f64> = up
            .direction(kk)
            .map_or(zeros.clone(), |d| d.iter().map(|&v| v.as_f64()).collect());
        let mut d = Vec::new();
        for i in 0..g.len() {
            let (s, ds) = silu_reference_scalar(g[i]);
            d.push(F::from_f64(ds * dg[i] * u[i] + s * du[i]));
        }
        directions.push(Array::from_shape_vec(y.raw_dim(), d).expect("same length"));
    }
    let views: Vec<_> = directions.iter().map(|d| d.view()).collect();
    Dual::from_directions(y, &views)
}

/// SiLU and its derivative as textbook formulas: `σ + xσ(1 − σ)`.
fn silu_reference_scalar(x: f64) -> (f64, f64) {
    let sig = 1.0 / (1.0 + (-x).exp());
    (x * sig, sig + x * sig * (1.0 - sig))
}

/// Applies `f(x) = (g(x), g′(x))` in f64 element by element, one direction at a time.
fn unary_reference<F: Float, D: Dimension>(
    x: &Dual<F, D>,
    f: impl Fn(f64) -> (f64, f64),
) -> Dual<F, D> {
    let y = x.primal().mapv(|v| F::from_f64(f(v.as_f64()).0));
    let Some(k) = x.k() else {
        return Dual::constant(y);
    };
    let directions: Vec<_> = (0..k)
        .map(|kk| {
            let mut d = x.direction(kk).expect("dual input").to_owned();
            Zip::from(&mut d)
                .and(x.primal())
                .for_each(|d, &v| *d = F::from_f64(f(v.as_f64()).1 * d.as_f64()));
            d
        })
        .collect();
    let views: Vec<_> = directions.iter().map(|d| d.view()).collect();
    Dual::from_directions(y, &views).expect("directions shaped like the primal")
}
