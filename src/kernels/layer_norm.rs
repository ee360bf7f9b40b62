//! LayerNorm over the last axis, and the normalisation core it shares with
//! [`rms_norm`](mod@super::rms_norm).
//!
//! - [`layer_norm`] / [`layer_norm_dual`]: `y = γ⊙x̂ + β` with `x̂ = (x − μ)·r`,
//!   `r = (σ² + ε)^(−1/2)`; frozen or dual `γ`, `β`.
//!
//! LayerNorm and RMSNorm (frozen or dual parameters) run one implementation, `normalize`: per
//! row, the statistics (μ, σ², r) are accumulated in `f64` (eight interleaved partial sums, so
//! the additions vectorise) with a two-pass variance (the mean taken relative to the row's first
//! element), `x̂` is formed once, and the tangent rule
//! `x̂̇ = r·(ẋ − mean(ẋ) − x̂·mean(x̂⊙ẋ))` (without the `mean(ẋ)` term for RMSNorm) reuses `r`
//! and `x̂` for all K directions. ε sits inside the `rsqrt` in the primal and in the tangent
//! alike; nothing assumes `mean(x̂²) = 1`, which is false for ε > 0. The `f64` statistics matter
//! for BERT's ε = 1e-12, which is below f32 resolution: a near-constant f32 row has a spread
//! close to the rounding error of an f32 mean, and a huge `r` amplifies that error.

use std::mem::MaybeUninit;
use std::ops::Range;

use ndarray::{Array2, ArrayView1, ArrayView2, Dimension, Ix1};

use super::{buffer, check};
use crate::parallel;
use crate::{Dual, Float, Result, common_k};

/// LayerNorm over the last axis with frozen `γ` and `β`.
///
/// `μ = mean(x)`, `σ² = mean((x − μ)²)` (two passes), `r = (σ² + ε)^(−1/2)`, `x̂ = (x − μ)·r`,
/// `y = γ⊙x̂ + β`; `ẏ = γ⊙r·(ẋ − mean(ẋ) − x̂·mean(x̂⊙ẋ))`. A symbolic-zero input tangent gives a
/// symbolic-zero output. With ε = 0 a constant row is `0/0`: the output is not finite.
///
/// # Shapes
/// - `x`: `[.., N]` (any rank ≥ 1), `gamma`: `[N]`, `beta`: `[N]`
/// - output: `[.., N]`
///
/// # Errors
/// [`Error::InvalidArgument`](crate::Error::InvalidArgument) if `eps` is negative or not finite;
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) if `x` has rank 0 or its last axis is not the length of `gamma`, or
/// `beta` has another length.
pub fn layer_norm<F: Float, D: Dimension>(
    x: &Dual<F, D>,
    gamma: ArrayView1<'_, F>,
    beta: Option<ArrayView1<'_, F>>,
    eps: f64,
) -> Result<Dual<F, D>> {
    let affine = Affine::frozen(gamma, beta);
    normalize("layer_norm", x, affine, eps, Kind::Layer)
}

/// LayerNorm over the last axis with dual `γ` and `β`.
///
/// As [`layer_norm`], plus the parameter tangents: `ẏ = γ⊙x̂̇ + γ̇⊙x̂ + β̇`.
///
/// # Shapes
/// - `x`: `[.., N]`, `gamma`: `[N]` (tangent `[K, N]`), `beta`: `[N]` (tangent `[K, N]`)
/// - output: `[.., N]`
///
/// # Errors
/// As [`layer_norm`], and [`Error::TangentCountMismatch`](crate::Error::TangentCountMismatch) if the operands carry different K.
pub fn layer_norm_dual<F: Float, D: Dimension>(
    x: &Dual<F, D>,
    gamma: &Dual<F, Ix1>,
    beta: Option<&Dual<F, Ix1>>,
    eps: f64,
) -> Result<Dual<F, D>> {
    let affine = Affine::dual(gamma, beta);
    normalize("layer_norm_dual", x, affine, eps, Kind::Layer)
}

/// Which norm: LayerNorm subtracts the row mean, RMSNorm does not.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// LayerNorm: `x̂ = (x − μ)·r`.
    Layer,
    /// RMSNorm: `x̂ = x·r`.
    Rms,
}

/// The affine parameters `γ`, `β` as views, each with an optional tangent `[K, N]`.
pub(super) struct Affine<'a, F> {
    gamma: ArrayView1<'a, F>,
    gamma_t: Option<ArrayView2<'a, F>>,
    beta: Option<ArrayView1<'a, F>>,
    beta_t: Option<ArrayView2<'a, F>>,
}

impl<'a, F: Float> Affine<'a, F> {
    pub(super) fn frozen(gamma: ArrayView1<'a, F>, beta: Option<ArrayView1<'a, F>>) -> Self {
        Affine {
            gamma,
            gamma_t: None,
            beta,
            beta_t: None,
        }
    }

    pub(super) fn dual(gamma: &'a Dual<F, Ix1>, beta: Option<&'a Dual<F, Ix1>>) -> Self {
        Affine {
            gamma: gamma.primal().view(),
            gamma_t: gamma.tangent().map(|t| t.view()),
            beta: beta.map(|b| b.primal().view()),
            beta_t: beta.and_then(Dual::tangent).map(|t| t.view()),
        }
    }
}

/// The one implementation behind LayerNorm and RMSNorm, frozen or dual.
pub(super) fn normalize<F: Float, D: Dimension>(
    op: &'static str,
    x: &Dual<F, D>,
    p: Affine<'_, F>,
    eps: f64,
    kind: Kind,
) -> Result<Dual<F, D>> {
    check::norm_eps(op, eps)?;
    let n = p.gamma.len();
    check::last_dim(op, x.shape(), n)?;
    if let Some(b) = &p.beta {
        check::exact(op, b.shape(), &[n])?;
    }
    let k = common_k(
        op,
        &[
            x.k(),
            p.gamma_t.map(|t| t.nrows()),
            p.beta_t.map(|t| t.nrows()),
        ],
    )?;
    let xr = x.primal_rows(); // [R, N]
    let tx = x.tangent_rows(); // [K·R, N]
    let rows = xr.nrows();
    let inv_n = 1.0 / n as f64;
    let xs = xr.as_slice().expect("standard layout");
    let txs = tx.as_ref().map(|t| t.as_slice().expect("standard layout"));
    // γ, β (and their tangents) as contiguous rows, copied only if the caller's views are strided
    let gamma = p.gamma.as_standard_layout();
    let gamma = gamma.as_slice().expect("standard layout");
    let beta = p.beta.as_ref().map(|b| b.as_standard_layout());
    let beta = beta
        .as_ref()
        .map(|b| b.as_slice().expect("standard layout"));
    let gamma_t = p.gamma_t.as_ref().map(|t| t.as_standard_layout());
    let beta_t = p.beta_t.as_ref().map(|t| t.as_standard_layout());

    let mut y = buffer::uninit::<F, _>((rows, n)); // [R, N]
    let mut ty = k.map(|k| buffer::uninit::<F, _>((k * rows, n))); // [K·R, N]
    let kn = k.unwrap_or(0);

    // One range of rows: `y_part` holds those rows of y, `ty_parts[kk]` those of direction kk.
    let rows_body = |range: Range<usize>,
                     y_part: &mut [MaybeUninit<F>],
                     ty_parts: Vec<&mut [MaybeUninit<F>]>| {
        let mut ty_parts = ty_parts;
        let mut xhat = vec![F::zero(); n]; // x̂ of the current row, reused by every direction
        for (i, r) in range.enumerate() {
            let xrow = &xs[r * n..(r + 1) * n];
            // μ and σ² (mean(x²) for RMSNorm) in f64, two passes; r = (σ² + ε)^(−1/2).
            // LayerNorm measures x from its first element x₀ (μ = x₀ + mean(x − x₀)): x − x₀ is
            // exact on near-constant rows, so a constant row gives x − μ = 0 exactly, not a
            // rounding residue that a huge r (BERT's ε = 1e-12) would blow up.
            let x0 = match kind {
                Kind::Layer => xrow.first().map_or(0.0, |&v| v.as_f64()),
                Kind::Rms => 0.0,
            };
            let mean_d = match kind {
                Kind::Layer => lane_sum(xrow, |v| v.as_f64() - x0) * inv_n,
                Kind::Rms => 0.0,
            };
            let centred = |v: F| (v.as_f64() - x0) - mean_d; // x − μ
            let var = lane_sum(xrow, |v| centred(v).powi(2)) * inv_n;
            let rstd = 1.0 / (var + eps).sqrt();
            // x̂ = (x − μ)·r ; y = γ⊙x̂ + β
            for (h, &v) in xhat.iter_mut().zip(xrow) {
                *h = F::from_f64(centred(v) * rstd);
            }
            let yrow = &mut y_part[i * n..(i + 1) * n];
            match beta {
                Some(b) => {
                    for (((o, &h), &g), &b) in yrow.iter_mut().zip(&xhat).zip(gamma).zip(b) {
                        o.write(g * h + b);
                    }
                }
                None => {
                    for ((o, &h), &g) in yrow.iter_mut().zip(&xhat).zip(gamma) {
                        o.write(g * h);
                    }
                }
            }

            let rstd = F::from_f64(rstd);
            for (kk, tyk) in ty_parts.iter_mut().enumerate() {
                let out = &mut tyk[i * n..(i + 1) * n];
                match txs {
                    Some(txs) => {
                        // ẏ = γ⊙r·(ẋ − mean(ẋ) − x̂·mean(x̂⊙ẋ)), the means in f64
                        let row = kk * rows + r;
                        let trow = &txs[row * n..(row + 1) * n];
                        let (s_t, s_ht) = lane_sums_t_ht(trow, &xhat);
                        let m_t = match kind {
                            Kind::Layer => F::from_f64(s_t * inv_n),
                            Kind::Rms => F::zero(),
                        };
                        let m_ht = F::from_f64(s_ht * inv_n);
                        for (((o, &t), &h), &g) in out.iter_mut().zip(trow).zip(&xhat).zip(gamma) {
                            o.write(g * rstd * (t - m_t - h * m_ht));
                        }
                    }
                    None => out.iter_mut().for_each(|o| {
                        o.write(F::zero());
                    }),
                }
                // SAFETY: every element of `out` was written just above; `MaybeUninit<F>` has
                // the layout of `F`.
                let out = unsafe { &mut *(out as *mut [MaybeUninit<F>] as *mut [F]) };
                if let Some(tg) = &gamma_t {
                    // ẏ += γ̇⊙x̂
                    for ((o, &tg), &h) in out.iter_mut().zip(tg.row(kk)).zip(&xhat) {
                        *o += tg * h;
                    }
                }
                if let Some(tb) = &beta_t {
                    // ẏ += β̇
                    for (o, &tb) in out.iter_mut().zip(tb.row(kk)) {
                        *o += tb;
                    }
                }
            }
        }
    };

    // rows split across threads (each row computed exactly as a serial pass would)
    let ranges = parallel::row_ranges(rows, n * (1 + kn));
    let y_parts = parallel::split_blocks(y.as_slice_mut().expect("row-major"), 1, rows, n, &ranges);
    let ty_parts = match ty.as_mut() {
        Some(t) => {
            parallel::split_blocks(t.as_slice_mut().expect("row-major"), kn, rows, n, &ranges)
        }
        None => ranges.iter().map(|_| Vec::new()).collect(),
    };
    let parts: Vec<_> = ranges.iter().cloned().zip(y_parts).zip(ty_parts).collect();
    parallel::run(parts, |((range, mut y_part), ty_part)| {
        rows_body(range, y_part.pop().expect("one block"), ty_part);
    });
    // SAFETY: the ranges cover every row, and each range's body wrote its rows of `y` and, for
    // every direction, of `ty`.
    let (y, ty) = unsafe { (y.assume_init(), ty.map(|t| t.assume_init())) };
    Ok(Dual::from_rows(x.shape(), y, k.zip(ty)))
}

/// `Σᵢ f(xᵢ)` in `f64` over eight interleaved partial sums (element `i` goes to lane `i mod 8`,
/// the lanes are added pairwise at the end): independent additions, which the compiler turns into
/// vector adds, where one running sum would wait on every addition. Deterministic for a given
/// length.
#[inline(always)]
fn lane_sum<F: Float>(xs: &[F], f: impl Fn(F) -> f64) -> f64 {
    let mut lanes = [0.0f64; 8];
    let chunks = xs.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += f(v);
        }
    }
    for (l, &v) in lanes.iter_mut().zip(tail) {
        *l += f(v);
    }
    combine(lanes)
}

/// `(Σᵢ tᵢ, Σᵢ hᵢ·tᵢ)` in `f64` in one pass, with the lanes of [`lane_sum`].
#[inline(always)]
fn lane_sums_t_ht<F: Float>(t: &[F], h: &[F]) -> (f64, f64) {
    let (mut st, mut sht) = ([0.0f64; 8], [0.0f64; 8]);
    let (ct, ch) = (t.chunks_exact(8), h.chunks_exact(8));
    let (rt, rh) = (ct.remainder(), ch.remainder());
    let mut add = |tc: &[F], hc: &[F]| {
        for (((a, b), &tv), &hv) in st.iter_mut().zip(sht.iter_mut()).zip(tc).zip(hc) {
            *a += tv.as_f64();
            *b += hv.as_f64() * tv.as_f64();
        }
    };
    for (tc, hc) in ct.zip(ch) {
        add(tc, hc);
    }
    add(rt, rh);
    (combine(st), combine(sht))
}

/// The pairwise total of eight lanes.
#[inline(always)]
fn combine(l: [f64; 8]) -> f64 {
    ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
}

// ---- naive reference twins (loops, one direction at a time) -------------------------------------

/// Naive twin of [`layer_norm`]. For tests.
///
/// # Errors
/// As [`layer_norm`].
pub fn layer_norm_reference<F: Float, D: Dimension>(
    x: &Dual<F, D>,
    gamma: ArrayView1<'_, F>,
    beta: Option<ArrayView1<'_, F>>,
    eps: f64,
) -> Result<Dual<F, D>> {
    let g = Dual::constant(gamma.to_owned());
    let b = beta.map(|b| Dual::constant(b.to_owned()));
    norm_reference("layer_norm_reference", x, &g, b.as_ref(), eps, true)
}

/// Naive twin of [`layer_norm_dual`]. For tests.
///
/// # Errors
/// As [`layer_norm_dual`].
pub fn layer_norm_dual_reference<F: Float, D: Dimension>(
    x: &Dual<F, D>,
    gamma: &Dual<F, Ix1>,
    beta: Option<&Dual<F, Ix1>>,
    eps: f64,
) -> Result<Dual<F, D>> {
    norm_reference("layer_norm_dual_reference", x, gamma, beta, eps, true)
}

/// Textbook LayerNorm (`center`) or RMSNorm in f64, with the tangent as an explicit Jacobian
/// product: `∂x̂ᵢ/∂xⱼ = r·(δᵢⱼ − [center]/N − x̂ᵢx̂ⱼ/N)`.
pub(super) fn norm_reference<F: Float, D: Dimension>(
    op: &'static str,
    x: &Dual<F, D>,
    gamma: &Dual<F, Ix1>,
    beta: Option<&Dual<F, Ix1>>,
    eps: f64,
    center: bool,
) -> Result<Dual<F, D>> {
    check::norm_eps(op, eps)?;
    let n = gamma.primal().len();
    check::last_dim(op, x.shape(), n)?;
    if let Some(b) = beta {
        check::exact(op, b.shape(), &[n])?;
    }
    let k = common_k(op, &[x.k(), gamma.k(), beta.and_then(Dual::k)])?;
    let xr = x.primal_rows();
    let rows = xr.nrows();
    let nf = n as f64;
    let g = |i: usize| gamma.primal()[i].as_f64();
    let mut y = Array2::zeros((rows, n));
    let mut ty = k.map(|k| Array2::zeros((k * rows, n)));
    for r in 0..rows {
        let mut mu = 0.0;
        if center {
            for i in 0..n {
                mu += xr[[r, i]].as_f64() / nf;
            }
        }
        let mut var = 0.0;
        for i in 0..n {
            var += (xr[[r, i]].as_f64() - mu).powi(2) / nf;
        }
        let rstd = 1.0 / (var + eps).sqrt();
        let xhat: Vec<f64> = (0..n).map(|i| (xr[[r, i]].as_f64() - mu) * rstd).collect();
        for i in 0..n {
            let b = beta.map_or(0.0, |b| b.primal()[i].as_f64());
            y[[r, i]] = F::from_f64(g(i) * xhat[i] + b);
        }
        let (Some(k), Some(ty)) = (k, ty.as_mut()) else {
            continue;
        };
        for kk in 0..k {
            for i in 0..n {
                let mut acc = 0.0;
                if let Some(tx) = x.tangent_rows() {
                    for j in 0..n {
                        let delta = if i == j { 1.0 } else { 0.0 };
                        let mean_term = if center { 1.0 / nf } else { 0.0 };
                        let jac = rstd * (delta - mean_term - xhat[i] * xhat[j] / nf);
                        acc += g(i) * jac * tx[[kk * rows + r, j]].as_f64();
                    }
                }
                if let Some(tg) = gamma.tangent() {
                    acc += tg[[kk, i]].as_f64() * xhat[i];
                }
                if let Some(tb) = beta.and_then(Dual::tangent) {
                    acc += tb[[kk, i]].as_f64();
                }
                ty[[kk * rows + r, i]] = F::from_f64(acc);
            }
        }
    }
    Ok(Dual::from_rows(x.shape(), y, k.zip(ty)))
}
