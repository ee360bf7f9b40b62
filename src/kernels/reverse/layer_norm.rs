//! The reverse rule of LayerNorm over the last axis with a frozen gain.

use ndarray::{Array2, ArrayView1, ArrayView2, Zip};

use crate::kernels::check;
use crate::{Float, Result};

/// `∂L/∂x` of `y = γ⊙x̂ + β`, `x̂ = (x − μ)·r`, `r = (σ² + ε)^(−1/2)`, row by row:
///
/// ```text
/// dx̂ = dy⊙γ,   dx = r·(dx̂ − mean(dx̂) − x̂·mean(dx̂⊙x̂))
/// ```
///
/// The statistics are recomputed from `x` in `f64` with a two-pass variance, as the forward
/// kernel computes them, and ε sits inside `r` (nothing assumes `mean(x̂²) = 1`). γ and β are
/// frozen: their gradients are not formed.
///
/// # Shapes
/// - `x`, `dy`: `[R, N]`, `gamma`: `[N]` → `[R, N]`
///
/// # Errors
/// [`Error::InvalidArgument`](crate::Error::InvalidArgument) if `eps` is negative or not
/// finite; [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) if `x`'s rows are not
/// `gamma`'s length or `dy`'s shape is not `x`'s.
pub fn layer_norm_backward<F: Float>(
    x: ArrayView2<'_, F>,
    gamma: ArrayView1<'_, F>,
    eps: f64,
    dy: ArrayView2<'_, F>,
) -> Result<Array2<F>> {
    const OP: &str = "layer_norm_backward";
    check::norm_eps(OP, eps)?;
    let n = gamma.len();
    check::last_dim(OP, x.shape(), n)?;
    check::exact(OP, dy.shape(), x.shape())?;
    let mut dx = Array2::zeros(x.raw_dim());
    let inv_n = 1.0 / n.max(1) as f64;
    // per-row f64 scratch: x̂ and dx̂
    let (mut xh, mut g) = (vec![0.0f64; n], vec![0.0f64; n]);
    Zip::from(dx.rows_mut())
        .and(x.rows())
        .and(dy.rows())
        .for_each(|mut out, xr, dyr| {
            let mu = xr.iter().map(|v| v.as_f64()).sum::<f64>() * inv_n;
            let var = xr
                .iter()
                .map(|v| (v.as_f64() - mu) * (v.as_f64() - mu))
                .sum::<f64>()
                * inv_n;
            let r = 1.0 / (var + eps).sqrt();
            let (mut m1, mut m2) = (0.0, 0.0);
            for i in 0..n {
                xh[i] = (xr[i].as_f64() - mu) * r;
                g[i] = dyr[i].as_f64() * gamma[i].as_f64();
                m1 += g[i];
                m2 += g[i] * xh[i];
            }
            let (m1, m2) = (m1 * inv_n, m2 * inv_n);
            for i in 0..n {
                out[i] = F::from_f64(r * (g[i] - m1 - xh[i] * m2));
            }
        });
    Ok(dx)
}
