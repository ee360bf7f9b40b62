//! LayerNorm and RMSNorm over the last axis, with frozen or dual γ/β.
//!
//! LayerNorm: `μ = mean(x)`, `σ² = mean((x−μ)²)` (two passes), `r = (σ² + ε)^{−1/2}`,
//! `x̂ = (x−μ)·r`, `y = γ⊙x̂ + β`, and
//! `ẏ = γ⊙r(ẋ − mean(ẋ) − x̂·mean(x̂⊙ẋ)) + γ̇⊙x̂ + β̇`.
//!
//! RMSNorm: `r = (mean(x²) + ε)^{−1/2}`, `x̂ = x·r`, `y = γ⊙x̂`, and
//! `ẏ = γ⊙r(ẋ − x̂·mean(x̂⊙ẋ)) + γ̇⊙x̂`.
//!
//! ε sits inside the rsqrt in both primal and tangent (never simplified with `mean(x̂²) = 1`,
//! which is false for ε > 0). Row statistics are accumulated in f64: BERT's ε = 1e-12 is zero in
//! f32 and near-constant rows give a huge r. The statistics (r, x̂) are computed once per row and
//! reused for every tangent direction.

use ndarray::{Array2, ArrayView1, ArrayView2, Dimension, Ix1};

use super::check;
use crate::{Dual, Error, Float, Result, common_k};

/// The normalisation and its optional dual affine parameters.
struct Affine<'a, F: Float> {
    gamma: ArrayView1<'a, F>,
    gamma_t: Option<ArrayView2<'a, F>>,
    beta: Option<ArrayView1<'a, F>>,
    beta_t: Option<ArrayView2<'a, F>>,
}

fn check_eps(op: &'static str, eps: f64) -> Result<()> {
    if eps.is_finite() && eps >= 0.0 {
        Ok(())
    } else {
        Err(Error::invalid(
            op,
            format!("epsilon {eps} must be finite and >= 0"),
        ))
    }
}

/// Shared implementation of both norms (`center` = LayerNorm).
fn normalize<F: Float, D: Dimension>(
    op: &'static str,
    x: &Dual<F, D>,
    p: Affine<'_, F>,
    k: Option<usize>,
    eps: f64,
    center: bool,
) -> Result<Dual<F, D>> {
    let n = p.gamma.len();
    check::last_dim(op, x.shape(), n)?;
    if let Some(b) = &p.beta {
        check::exact(op, b.shape(), &[n])?;
    }
    check_eps(op, eps)?;
    let xr = x.primal_rows();
    let rows = xr.nrows();
    let inv_n = 1.0 / n.max(1) as f64;
    // primal and per-row factors: r[row] and x̂[row, :]
    let mut y = Array2::<F>::zeros((rows, n));
    let mut xhat = Array2::<F>::zeros((if k.is_some() { rows } else { 0 }, n));
    let mut rstd = vec![0.0f64; rows];
    for (row, xrow) in xr.rows().into_iter().enumerate() {
        let mean = if center {
            xrow.iter().map(|v| v.as_f64()).sum::<f64>() * inv_n
        } else {
            0.0
        };
        let var = xrow
            .iter()
            .map(|v| (v.as_f64() - mean).powi(2))
            .sum::<f64>()
            * inv_n;
        let r = 1.0 / (var + eps).sqrt();
        rstd[row] = r;
        for i in 0..n {
            let xh = (xrow[i].as_f64() - mean) * r;
            let b = p.beta.as_ref().map_or(0.0, |b| b[i].as_f64());
            y[[row, i]] = F::from_f64(p.gamma[i].as_f64() * xh + b);
            if k.is_some() {
                xhat[[row, i]] = F::from_f64(xh);
            }
        }
    }
    let Some(k) = k else {
        return Ok(Dual::from_rows(x.shape(), y, None));
    };
    // tangents: ẏ = γ⊙r(ẋ − mean(ẋ) − x̂·mean(x̂⊙ẋ)) + γ̇⊙x̂ + β̇, per direction and row
    let mut ty = Array2::<F>::zeros((k * rows, n));
    let tx = x.tangent_rows();
    for kk in 0..k {
        for (row, &r) in rstd.iter().enumerate() {
            let out_row = kk * rows + row;
            let xh = xhat.row(row);
            if let Some(tx) = &tx {
                let t = tx.row(out_row);
                let m1 = if center {
                    t.iter().map(|v| v.as_f64()).sum::<f64>() * inv_n
                } else {
                    0.0
                };
                let m2 = t
                    .iter()
                    .zip(xh.iter())
                    .map(|(a, b)| a.as_f64() * b.as_f64())
                    .sum::<f64>()
                    * inv_n;
                for i in 0..n {
                    let d = r * (t[i].as_f64() - m1 - xh[i].as_f64() * m2);
                    ty[[out_row, i]] = F::from_f64(p.gamma[i].as_f64() * d);
                }
            }
            if let Some(gt) = &p.gamma_t {
                for i in 0..n {
                    ty[[out_row, i]] += gt[[kk, i]] * xh[i];
                }
            }
            if let Some(bt) = &p.beta_t {
                for i in 0..n {
                    ty[[out_row, i]] += bt[[kk, i]];
                }
            }
        }
    }
    Ok(Dual::from_rows(x.shape(), y, Some((k, ty))))
}

/// LayerNorm with frozen γ and β (see the module doc for the formulas).
///
/// # Shapes
/// - `x`: `[.., N]`, `gamma`, `beta`: `[N]`; output shaped like `x`
///
/// # Errors
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) if γ/β do not match the last axis;
/// [`Error::InvalidArgument`](crate::Error::InvalidArgument) if ε is negative or not finite.
pub fn layer_norm<F: Float, D: Dimension>(
    x: &Dual<F, D>,
    gamma: ArrayView1<'_, F>,
    beta: Option<ArrayView1<'_, F>>,
    eps: f64,
) -> Result<Dual<F, D>> {
    let affine = Affine {
        gamma,
        gamma_t: None,
        beta,
        beta_t: None,
    };
    normalize("layer_norm", x, affine, x.k(), eps, true)
}

/// LayerNorm with dual γ and β (trainable norm parameters).
///
/// # Shapes
/// - `x`: `[.., N]`, `gamma`, `beta`: `[N]` (tangents `[K, N]`); output shaped like `x`
///
/// # Errors
/// As [`layer_norm`]; [`Error::TangentCountMismatch`](crate::Error::TangentCountMismatch) if the
/// operands carry different K.
pub fn layer_norm_dual<F: Float, D: Dimension>(
    x: &Dual<F, D>,
    gamma: &Dual<F, Ix1>,
    beta: Option<&Dual<F, Ix1>>,
    eps: f64,
) -> Result<Dual<F, D>> {
    let k = common_k(
        "layer_norm_dual",
        &[x.k(), gamma.k(), beta.and_then(Dual::k)],
    )?;
    let affine = Affine {
        gamma: gamma.primal().view(),
        gamma_t: gamma.tangent().map(|t| t.view()),
        beta: beta.map(|b| b.primal().view()),
        beta_t: beta.and_then(Dual::tangent).map(|t| t.view()),
    };
    normalize("layer_norm_dual", x, affine, k, eps, true)
}

/// RMSNorm with a frozen γ (see the module doc for the formulas).
///
/// # Shapes
/// - `x`: `[.., N]`, `gamma`: `[N]`; output shaped like `x`
///
/// # Errors
/// As [`layer_norm`].
pub fn rms_norm<F: Float, D: Dimension>(
    x: &Dual<F, D>,
    gamma: ArrayView1<'_, F>,
    eps: f64,
) -> Result<Dual<F, D>> {
    let affine = Affine {
        gamma,
        gamma_t: None,
        beta: None,
        beta_t: None,
    };
    normalize("rms_norm", x, affine, x.k(), eps, false)
}

/// RMSNorm with a dual γ.
///
/// # Shapes
/// - `x`: `[.., N]`, `gamma`: `[N]` (tangent `[K, N]`); output shaped like `x`
///
/// # Errors
/// As [`layer_norm_dual`].
pub fn rms_norm_dual<F: Float, D: Dimension>(
    x: &Dual<F, D>,
    gamma: &Dual<F, Ix1>,
    eps: f64,
) -> Result<Dual<F, D>> {
    let k = common_k("rms_norm_dual", &[x.k(), gamma.k()])?;
    let affine = Affine {
        gamma: gamma.primal().view(),
        gamma_t: gamma.tangent().map(|t| t.view()),
        beta: None,
        beta_t: None,
    };
    normalize("rms_norm_dual", x, affine, k, eps, false)
}

// ---- naive reference twins ------------------------------------------------------------------

/// Naive twin of both norms in Jacobian form: `ẏ_i = γ_i Σ_j J_ij ẋ_j + γ̇_i x̂_i + β̇_i` with
/// `J_ij = r(δ_ij − c/N − x̂_i x̂_j / N)` (c = 1 for LayerNorm, 0 for RMSNorm), one direction at
/// a time. For tests.
///
/// # Errors
/// As [`layer_norm_dual`].
pub fn norm_reference<F: Float, D: Dimension>(
    x: &Dual<F, D>,
    gamma: &Dual<F, Ix1>,
    beta: Option<&Dual<F, Ix1>>,
    eps: f64,
    center: bool,
) -> Result<Dual<F, D>> {
    const OP: &str = "norm_reference";
    let k = common_k(OP, &[x.k(), gamma.k(), beta.and_then(Dual::k)])?;
    let n = gamma.primal().len();
    check::last_dim(OP, x.shape(), n)?;
    check_eps(OP, eps)?;
    let xr = x.primal_rows();
    let rows = xr.nrows();
    let nf = n as f64;
    let mut y = Array2::<F>::zeros((rows, n));
    let mut ty = k.map(|k| Array2::<F>::zeros((k * rows, n)));
    for row in 0..rows {
        let xs: Vec<f64> = xr.row(row).iter().map(|v| v.as_f64()).collect();
        let mean = if center {
            xs.iter().sum::<f64>() / nf
        } else {
            0.0
        };
        let var = xs.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / nf;
        let r = 1.0 / (var + eps).sqrt();
        let xh: Vec<f64> = xs.iter().map(|v| (v - mean) * r).collect();
        for i in 0..n {
            let b = beta.map_or(0.0, |b| b.primal()[i].as_f64());
            y[[row, i]] = F::from_f64(gamma.primal()[i].as_f64() * xh[i] + b);
        }
        if let (Some(k), Some(ty)) = (k, ty.as_mut()) {
            let c = if center { 1.0 } else { 0.0 };
            for kk in 0..k {
                for i in 0..n {
                    let mut acc = 0.0;
                    if let Some(tx) = x.tangent_rows() {
                        for j in 0..n {
                            let delta = if i == j { 1.0 } else { 0.0 };
                            let jac = r * (delta - c / nf - xh[i] * xh[j] / nf);
                            acc += jac * tx[[kk * rows + row, j]].as_f64();
                        }
                    }
                    acc *= gamma.primal()[i].as_f64();
                    if let Some(gt) = gamma.tangent() {
                        acc += gt[[kk, i]].as_f64() * xh[i];
                    }
                    if let Some(bt) = beta.and_then(Dual::tangent) {
                        acc += bt[[kk, i]].as_f64();
                    }
                    ty[[kk * rows + row, i]] = F::from_f64(acc);
                }
            }
        }
    }
    Ok(Dual::from_rows(x.shape(), y, k.zip(ty)))
}
