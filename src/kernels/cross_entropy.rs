//! Mean cross-entropy from logits, with Hugging Face's `ignore_index` semantics.
//!
//! Per valid row i with target c:
//!
//! ```text
//! ℓ_i = logsumexp(z_i) − z_ic = log Σ_j exp(z_ij − m_i) − (z_ic − m_i),   m_i = max_j z_ij
//! ℓ̇_i = ⟨p_i, ż_i⟩ − ż_ic,                                               p_i = softmax(z_i)
//! ```
//!
//! The max shift is a constant (no tangent flows through it). The loss is the mean of `ℓ_i` over
//! the rows whose target is not `ignore_index`, and the Spry jvp scalar of direction k is the
//! mean of `ℓ̇_i` over the same rows. The gradient with respect to the logits,
//! `(p_i − onehot(c))/n_valid` (zero rows for ignored targets), gives the exact gradient of a task
//! head as an outer product with the last activation.
//!
//! - [`cross_entropy`]: loss and the K jvp scalars.
//! - [`cross_entropy_logit_grad`]: the gradient `∂loss/∂logits`.
//! - [`cross_entropy_with_grad`]: both, computing each row's softmax once.

use ndarray::{Array1, Array2, ArrayView2, ArrayView3, Ix2, Zip, s};

use crate::{Dual, Error, Float, Result};

/// The mean cross-entropy of a batch and its directional derivatives.
#[derive(Clone, Debug, PartialEq)]
pub struct CrossEntropy<F> {
    /// Mean of `ℓ_i` over the rows whose target is not the ignore index.
    pub loss: F,
    /// `jvp[k]` = mean of `ℓ̇_i` along direction k: `[K]`, or `None` when the logits' tangent is
    /// the symbolic zero.
    pub jvp: Option<Array1<F>>,
    /// Number of rows whose target is not the ignore index (the mean's denominator).
    pub n_valid: usize,
}

/// Mean cross-entropy from logits and its K directional derivatives:
/// `loss = mean_i (logsumexp(z_i) − z_ic)`, `jvp_k = mean_i (⟨softmax(z_i), ż_ki⟩ − ż_kic)`.
///
/// Rows whose target equals `ignore_index` (Hugging Face uses −100) are skipped and not counted
/// in the mean, as `torch.nn.functional.cross_entropy(..., ignore_index=)` does. The softmax is
/// max-shifted, so logits of any finite magnitude (±1e4 and beyond) give finite, exact results.
///
/// # Shapes
/// - `logits`: `[N, C]` (tangent `[K, N, C]`), `targets`: `[N]`; `jvp`: `[K]`
///
/// # Errors
/// - [`Error::ShapeMismatch`] if `targets` does not have N entries.
/// - [`Error::InvalidArgument`] if a target outside `[0, C)` is not the ignore index, or if every
///   target is ignored (the mean over no row is undefined; PyTorch would return NaN).
pub fn cross_entropy<F: Float>(
    logits: &Dual<F, Ix2>,
    targets: &[i64],
    ignore_index: i64,
) -> Result<CrossEntropy<F>> {
    let tz = logits.tangent().map(|t| t.view());
    let (ce, _) = ce_core(
        "cross_entropy",
        logits.primal().view(),
        tz,
        targets,
        ignore_index,
        false,
    )?;
    Ok(ce)
}

/// The gradient of the mean cross-entropy with respect to the logits:
/// `∂loss/∂z_i = (softmax(z_i) − onehot(c_i)) / n_valid`, and a zero row for an ignored target.
///
/// # Shapes
/// - `logits`: `[N, C]`, `targets`: `[N]`, output `[N, C]`
///
/// # Errors
/// As [`cross_entropy`].
pub fn cross_entropy_logit_grad<F: Float>(
    logits: ArrayView2<'_, F>,
    targets: &[i64],
    ignore_index: i64,
) -> Result<Array2<F>> {
    let (_, grad) = ce_core(
        "cross_entropy_logit_grad",
        logits,
        None,
        targets,
        ignore_index,
        true,
    )?;
    Ok(grad.expect("gradient requested"))
}

/// [`cross_entropy`] and [`cross_entropy_logit_grad`] in one pass: each row's softmax is computed
/// once and reused for the loss, the K jvps and the gradient.
///
/// # Shapes
/// As [`cross_entropy`]; the gradient is `[N, C]`.
///
/// # Errors
/// As [`cross_entropy`].
pub fn cross_entropy_with_grad<F: Float>(
    logits: &Dual<F, Ix2>,
    targets: &[i64],
    ignore_index: i64,
) -> Result<(CrossEntropy<F>, Array2<F>)> {
    let tz = logits.tangent().map(|t| t.view());
    let (ce, grad) = ce_core(
        "cross_entropy_with_grad",
        logits.primal().view(),
        tz,
        targets,
        ignore_index,
        true,
    )?;
    Ok((ce, grad.expect("gradient requested")))
}

/// Checks the targets and returns the number of non-ignored ones.
pub(crate) fn check_targets(
    op: &'static str,
    n: usize,
    c: usize,
    targets: &[i64],
    ignore_index: i64,
) -> Result<usize> {
    if targets.len() != n {
        return Err(Error::shape(op, format!("targets [{n}]"), &[targets.len()]));
    }
    let mut n_valid = 0;
    for (i, &tgt) in targets.iter().enumerate() {
        if tgt == ignore_index {
            continue;
        }
        if tgt < 0 || tgt as u64 >= c as u64 {
            return Err(Error::invalid(
                op,
                format!(
                    "target {tgt} at row {i} is outside [0, {c}) and is not the ignore index \
                     {ignore_index}"
                ),
            ));
        }
        n_valid += 1;
    }
    if n_valid == 0 {
        return Err(Error::invalid(
            op,
            format!(
                "all {n} targets equal the ignore index {ignore_index}: the mean over no target \
                 is undefined"
            ),
        ));
    }
    Ok(n_valid)
}

/// The shared routine: per valid row, the softmax once, then the loss term, the K jvp terms and
/// (if `want_grad`) the gradient row.
fn ce_core<F: Float>(
    op: &'static str,
    z: ArrayView2<'_, F>,
    tz: Option<ArrayView3<'_, F>>,
    targets: &[i64],
    ignore_index: i64,
    want_grad: bool,
) -> Result<(CrossEntropy<F>, Option<Array2<F>>)> {
    let (n, c) = z.dim();
    let n_valid = check_targets(op, n, c, targets, ignore_index)?;
    let inv_n = F::one() / F::from_usize(n_valid);
    let k = tz.as_ref().map(|t| t.shape()[0]);

    let mut p = Array1::<F>::zeros(c); // softmax of the current row, reused across rows
    let mut loss_sum = F::zero();
    let mut jvp_sum = k.map(Array1::<F>::zeros); // [K]
    let mut grad = want_grad.then(|| Array2::<F>::zeros((n, c))); // [N, C]
    for (i, &tgt) in targets.iter().enumerate() {
        if tgt == ignore_index {
            continue;
        }
        let ci = tgt as usize;
        let zi = z.row(i);
        // m = max_j z_ij, a constant shift
        let m = zi.fold(F::neg_infinity(), |acc, &v| acc.max(v));
        // p_j = exp(z_ij − m) / Σ_j exp(z_ij − m)
        let mut sum = F::zero();
        Zip::from(&mut p).and(&zi).for_each(|pj, &zj| {
            *pj = (zj - m).exp();
            sum += *pj;
        });
        p *= F::one() / sum;
        // ℓ_i = log Σ − (z_ic − m)
        loss_sum += sum.ln() - (zi[ci] - m);
        // ℓ̇_ki = ⟨p, ż_ki⟩ − ż_kic, for all K directions
        if let (Some(tz), Some(js)) = (&tz, &mut jvp_sum) {
            for (kk, jk) in js.iter_mut().enumerate() {
                let tzi = tz.slice(s![kk, i, ..]);
                *jk += p.dot(&tzi) - tzi[ci];
            }
        }
        // ∂loss/∂z_i = (p − onehot(c)) / n_valid
        if let Some(g) = &mut grad {
            let mut gi = g.row_mut(i);
            gi.assign(&p);
            gi[ci] -= F::one();
            gi *= inv_n;
        }
    }
    let ce = CrossEntropy {
        loss: loss_sum * inv_n,
        jvp: jvp_sum.map(|js| js * inv_n),
        n_valid,
    };
    Ok((ce, grad))
}

// ---- naive reference twins (loops, one direction at a time) -------------------------------------

/// Naive twin of [`cross_entropy`]: textbook loops, the softmax recomputed for each direction.
/// For tests.
///
/// # Errors
/// As [`cross_entropy`].
pub fn cross_entropy_reference<F: Float>(
    logits: &Dual<F, Ix2>,
    targets: &[i64],
    ignore_index: i64,
) -> Result<CrossEntropy<F>> {
    let z = logits.primal();
    let (n, c) = z.dim();
    let n_valid = check_targets("cross_entropy_reference", n, c, targets, ignore_index)?;
    let nv = F::from_usize(n_valid);
    // (max, Σ exp(z − max)) of row i
    let lse_parts = |i: usize| {
        let mut m = F::neg_infinity();
        for j in 0..c {
            if z[[i, j]] > m {
                m = z[[i, j]];
            }
        }
        let mut sum = F::zero();
        for j in 0..c {
            sum += (z[[i, j]] - m).exp();
        }
        (m, sum)
    };
    let mut loss = F::zero();
    for (i, &tgt) in targets.iter().enumerate() {
        if tgt != ignore_index {
            let (m, sum) = lse_parts(i);
            loss += m + sum.ln() - z[[i, tgt as usize]];
        }
    }
    let jvp = logits.tangent().map(|tz| {
        let k = tz.shape()[0];
        let mut jvp = Array1::zeros(k);
        for kk in 0..k {
            let mut acc = F::zero();
            for (i, &tgt) in targets.iter().enumerate() {
                if tgt == ignore_index {
                    continue;
                }
                let (m, sum) = lse_parts(i);
                for j in 0..c {
                    acc += (z[[i, j]] - m).exp() / sum * tz[[kk, i, j]];
                }
                acc -= tz[[kk, i, tgt as usize]];
            }
            jvp[kk] = acc / nv;
        }
        jvp
    });
    Ok(CrossEntropy {
        loss: loss / nv,
        jvp,
        n_valid,
    })
}

/// Naive twin of [`cross_entropy_logit_grad`]: textbook loops. For tests.
///
/// # Errors
/// As [`cross_entropy_logit_grad`].
pub fn cross_entropy_logit_grad_reference<F: Float>(
    logits: ArrayView2<'_, F>,
    targets: &[i64],
    ignore_index: i64,
) -> Result<Array2<F>> {
    let (n, c) = logits.dim();
    let n_valid = check_targets(
        "cross_entropy_logit_grad_reference",
        n,
        c,
        targets,
        ignore_index,
    )?;
    let nv = F::from_usize(n_valid);
    let mut grad = Array2::zeros((n, c));
    for (i, &tgt) in targets.iter().enumerate() {
        if tgt == ignore_index {
            continue;
        }
        let mut m = F::neg_infinity();
        for j in 0..c {
            if logits[[i, j]] > m {
                m = logits[[i, j]];
            }
        }
        let mut sum = F::zero();
        for j in 0..c {
            sum += (logits[[i, j]] - m).exp();
        }
        for j in 0..c {
            let onehot = if j == tgt as usize {
                F::one()
            } else {
                F::zero()
            };
            grad[[i, j]] = ((logits[[i, j]] - m).exp() / sum - onehot) / nv;
        }
    }
    Ok(grad)
}
