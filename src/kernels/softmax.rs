//! Softmax and log-softmax over the last axis.
//!
//! Both use the stable primal: the row maximum `m` is subtracted before `exp` and treated as a
//! constant (never differentiated; the tangent rule below does not depend on it). The tangent
//! rules reuse the probabilities `p`, computed once per row, for all K directions:
//!
//! - softmax: `p = exp(x − m) / Σⱼ exp(xⱼ − m)`, `ṗ = p ⊙ (ẋ − ⟨p, ẋ⟩)`
//! - log-softmax: `l = x − m − ln Σⱼ exp(xⱼ − m)`, `l̇ = ẋ − ⟨p, ẋ⟩`
//!
//! Row sums and the inner products `⟨p, ẋ⟩` are accumulated pairwise, so long rows (a
//! vocabulary, a long key axis) keep f32 rounding error at `O(log n)`.
//!
//! The row helpers at the bottom (`pairwise_sum`, `pairwise_dot`) are shared with attention.

use ndarray::{Array2, Dimension};

use super::check;
use crate::{Dual, Float, Result};

/// Softmax over the last axis: `p = exp(x − m) / Σⱼ exp(xⱼ − m)` with `m = maxⱼ xⱼ`,
/// `ṗ = p ⊙ (ẋ − ⟨p, ẋ⟩)`.
///
/// `p` is computed once per row and reused for all K directions; a symbolic-zero input tangent
/// gives a symbolic-zero output and no tangent work. Logits of any finite magnitude (±1e4 in
/// f32) give finite probabilities and tangents.
///
/// # Shapes
/// - `x`: `[.., C]` (rank ≥ 1, C ≥ 1), tangent `[K, .., C]`
/// - output: the same shape as `x`
///
/// # Errors
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) if `x` has rank 0 or an empty last
/// axis.
pub fn softmax<F: Float, D: Dimension>(x: &Dual<F, D>) -> Result<Dual<F, D>> {
    const OP: &str = "softmax";
    check::nonempty_axis(
        OP,
        x.shape(),
        x.shape().len().wrapping_sub(1),
        "[.., C >= 1]",
    )?;
    let c = x.shape()[x.shape().len() - 1];
    // p[N, C] = softmax(x[N, C]) row by row
    let mut p = x.primal_rows().to_owned();
    for row in as_rows_mut(&mut p, c) {
        softmax_row_in_place(row);
    }
    // ṗ[K·N, C] = p ⊙ (ẋ − ⟨p, ẋ⟩), row i of ẋ pairs with row i mod N of p
    let tangent = x.tangent_rows().map(|tx| {
        let mut tp = tx.to_owned();
        for (tr, pr) in as_rows_mut(&mut tp, c).zip(as_rows(&p, c).cycle()) {
            let dot = pairwise_dot(pr, tr);
            for (t, &pj) in tr.iter_mut().zip(pr) {
                *t = pj * (*t - dot);
            }
        }
        (x.k().unwrap_or(0), tp)
    });
    Ok(Dual::from_rows(x.shape(), p, tangent))
}

/// Log-softmax over the last axis: `l = x − m − ln Σⱼ exp(xⱼ − m)` with `m = maxⱼ xⱼ`,
/// `l̇ = ẋ − ⟨p, ẋ⟩` with `p = softmax(x)`.
///
/// `p` is computed only when a tangent is present, once per row, and reused for all K
/// directions; a symbolic-zero input tangent gives a symbolic-zero output.
///
/// # Shapes
/// - `x`: `[.., C]` (rank ≥ 1, C ≥ 1), tangent `[K, .., C]`
/// - output: the same shape as `x`
///
/// # Errors
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) if `x` has rank 0 or an empty last
/// axis.
pub fn log_softmax<F: Float, D: Dimension>(x: &Dual<F, D>) -> Result<Dual<F, D>> {
    const OP: &str = "log_softmax";
    check::nonempty_axis(
        OP,
        x.shape(),
        x.shape().len().wrapping_sub(1),
        "[.., C >= 1]",
    )?;
    let c = x.shape()[x.shape().len() - 1];
    // l[N, C] = x − m − ln Σ exp(x − m)
    let mut l = x.primal_rows().to_owned();
    for row in as_rows_mut(&mut l, c) {
        let m = row_max(row);
        let ln_sum = pairwise_sum_map(row, |v| (v - m).exp()).ln();
        for v in row.iter_mut() {
            *v = (*v - m) - ln_sum;
        }
    }
    let tangent = x.tangent_rows().map(|tx| {
        // p[N, C] = softmax(x), once for all K directions
        let mut p = x.primal_rows().to_owned();
        for row in as_rows_mut(&mut p, c) {
            softmax_row_in_place(row);
        }
        // l̇[K·N, C] = ẋ − ⟨p, ẋ⟩
        let mut tl = tx.to_owned();
        for (tr, pr) in as_rows_mut(&mut tl, c).zip(as_rows(&p, c).cycle()) {
            let dot = pairwise_dot(pr, tr);
            for t in tr.iter_mut() {
                *t -= dot;
            }
        }
        (x.k().unwrap_or(0), tl)
    });
    Ok(Dual::from_rows(x.shape(), l, tangent))
}

// ---- row helpers (shared with attention) --------------------------------------------------------

/// Below this length a row is summed with one running accumulator; above, it is split in halves.
const PAIRWISE_BLOCK: usize = 32;

/// The rows of a standard-layout `[N, c]` matrix as slices (`c ≥ 1`).
fn as_rows<F: Float>(a: &Array2<F>, c: usize) -> std::slice::ChunksExact<'_, F> {
    a.as_slice()
        .expect("owned rows are standard")
        .chunks_exact(c)
}

/// The rows of a standard-layout `[N, c]` matrix as mutable slices (`c ≥ 1`).
fn as_rows_mut<F: Float>(a: &mut Array2<F>, c: usize) -> std::slice::ChunksExactMut<'_, F> {
    a.as_slice_mut()
        .expect("owned rows are standard")
        .chunks_exact_mut(c)
}

/// `maxⱼ xⱼ` of a non-empty row.
fn row_max<F: Float>(row: &[F]) -> F {
    row.iter().copied().fold(F::neg_infinity(), F::max)
}

/// In-place stable softmax of a non-empty row: `x ← exp(x − max x) / Σ exp(x − max x)`.
pub(crate) fn softmax_row_in_place<F: Float>(row: &mut [F]) {
    let m = row_max(row);
    for v in row.iter_mut() {
        *v = (*v - m).exp();
    }
    // the maximum contributes exp(0) = 1, so the sum is ≥ 1
    let inv = pairwise_sum(row).recip();
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// `Σᵢ xᵢ`, accumulated pairwise.
pub(crate) fn pairwise_sum<F: Float>(xs: &[F]) -> F {
    pairwise_sum_map(xs, |v| v)
}

/// `Σᵢ f(xᵢ)`, accumulated pairwise.
fn pairwise_sum_map<F: Float>(xs: &[F], f: impl Fn(F) -> F + Copy) -> F {
    if xs.len() <= PAIRWISE_BLOCK {
        xs.iter().fold(F::zero(), |acc, &v| acc + f(v))
    } else {
        let (a, b) = xs.split_at(xs.len() / 2);
        pairwise_sum_map(a, f) + pairwise_sum_map(b, f)
    }
}

/// `Σᵢ aᵢbᵢ` over the common length, accumulated pairwise.
pub(crate) fn pairwise_dot<F: Float>(a: &[F], b: &[F]) -> F {
    let n = a.len().min(b.len());
    if n <= PAIRWISE_BLOCK {
        a[..n]
            .iter()
            .zip(&b[..n])
            .fold(F::zero(), |acc, (&x, &y)| acc + x * y)
    } else {
        let h = n / 2;
        pairwise_dot(&a[..h], &b[..h]) + pairwise_dot(&a[h..n], &b[h..n])
    }
}

// ---- naive reference twins (loops, one direction at a time) -------------------------------------

/// Naive twin of [`softmax`]: textbook loops, one row and one direction at a time. For tests.
///
/// # Errors
/// As [`softmax`].
pub fn softmax_reference<F: Float, D: Dimension>(x: &Dual<F, D>) -> Result<Dual<F, D>> {
    reference(x, "softmax_reference", false)
}

/// Naive twin of [`log_softmax`]. For tests.
///
/// # Errors
/// As [`log_softmax`].
pub fn log_softmax_reference<F: Float, D: Dimension>(x: &Dual<F, D>) -> Result<Dual<F, D>> {
    reference(x, "log_softmax_reference", true)
}

fn reference<F: Float, D: Dimension>(
    x: &Dual<F, D>,
    op: &'static str,
    log: bool,
) -> Result<Dual<F, D>> {
    check::nonempty_axis(
        op,
        x.shape(),
        x.shape().len().wrapping_sub(1),
        "[.., C >= 1]",
    )?;
    let xr = x.primal_rows();
    let (n, c) = xr.dim();
    let mut y = Array2::zeros((n, c));
    let mut p = Array2::zeros((n, c));
    for r in 0..n {
        let mut m = xr[[r, 0]];
        for j in 1..c {
            if xr[[r, j]] > m {
                m = xr[[r, j]];
            }
        }
        let mut s = F::zero();
        for j in 0..c {
            s += (xr[[r, j]] - m).exp();
        }
        for j in 0..c {
            p[[r, j]] = (xr[[r, j]] - m).exp() / s;
            y[[r, j]] = if log {
                xr[[r, j]] - m - s.ln()
            } else {
                p[[r, j]]
            };
        }
    }
    let tangent = x.tangent_rows().map(|tx| {
        let k = x.k().unwrap_or(0);
        let mut ty = Array2::zeros((k * n, c));
        for kk in 0..k {
            for r in 0..n {
                let i = kk * n + r;
                let mut dot = F::zero();
                for j in 0..c {
                    dot += p[[r, j]] * tx[[i, j]];
                }
                for j in 0..c {
                    ty[[i, j]] = if log {
                        tx[[i, j]] - dot
                    } else {
                        p[[r, j]] * (tx[[i, j]] - dot)
                    };
                }
            }
        }
        (k, ty)
    });
    Ok(Dual::from_rows(x.shape(), y, tangent))
}
