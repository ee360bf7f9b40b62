//! The reverse rule of multi-head scaled-dot-product attention (grouped-query heads, padding
//! and causal masks), per (batch, head), with `τ = 1/√D`:
//!
//! ```text
//! S = τ·Q·Kᵀ,  P = softmax(S) over the allowed keys (0 elsewhere),  O = P·V
//! dV = Pᵀ·dO,  dP = dO·Vᵀ,  dS = P⊙(dP − rowsum(P⊙dP)),  dQ = τ·dS·K,  dK = τ·dSᵀ·Q
//! ```
//!
//! The mask semantics are the forward kernel's ([`attention`](crate::kernels::attention)):
//! masked keys are skipped, never filled with `−∞`; a query row without an allowed key has a
//! zero output, so its `P` row and its gradients are zero. One head's `[T, S]` probabilities
//! are formed at a time (this rule serves a few reversed layers, not the streamed forward);
//! the query heads of a group add their `dK`, `dV` into their shared kv head.

use ndarray::{Array3, ArrayView2, ArrayView3, s};

use crate::kernels::attention::AttentionShape;
use crate::kernels::check;
use crate::kernels::gemm::{gemm_into, matmul_nt};
use crate::{Error, Float, Result};

/// The gradients of attention's three inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionGrads<F: Float> {
    /// `∂L/∂q`: `[B, T, H·D]`.
    pub q: Array3<F>,
    /// `∂L/∂k`: `[B, S, H_kv·D]`.
    pub k: Array3<F>,
    /// `∂L/∂v`: `[B, S, H_kv·D]`.
    pub v: Array3<F>,
}

/// `∂L/∂q`, `∂L/∂k`, `∂L/∂v` of `O = softmax(τ·Q·Kᵀ)·V` per (batch, head), given
/// `d_out = ∂L/∂O`: `dV = Pᵀ·dO`, `dS = P⊙(dO·Vᵀ − rowsum(P⊙dO·Vᵀ))`, `dQ = τ·dS·K`,
/// `dK = τ·dSᵀ·Q` (grouped query heads add into their kv head's `dK`, `dV`). The probabilities are recomputed from `q`, `k`
/// with the forward's masks: key `s` is allowed for query `t` of batch `b` if `key_mask[b, s]`
/// (or no mask) and, when `shape.causal`, `s ≤ t + (S − T)`.
///
/// # Shapes
/// - `q`, `d_out`: `[B, T, H·D]`, `k`, `v`: `[B, S, H_kv·D]`, `key_mask`: `[B, S]`
/// - output: shaped like `q`, `k`, `v`
///
/// # Errors
/// [`Error::InvalidArgument`] if a head count or the head dimension is zero, or `n_heads` is
/// not a multiple of `n_kv_heads`; [`Error::ShapeMismatch`] if the shapes do not match the
/// geometry or each other.
pub fn attention_backward<F: Float>(
    q: ArrayView3<'_, F>,
    k: ArrayView3<'_, F>,
    v: ArrayView3<'_, F>,
    key_mask: Option<ArrayView2<'_, bool>>,
    shape: &AttentionShape,
    d_out: ArrayView3<'_, F>,
) -> Result<AttentionGrads<F>> {
    const OP: &str = "attention_backward";
    let (h_n, kv_n, d) = (shape.n_heads, shape.n_kv_heads, shape.head_dim);
    if h_n == 0 || kv_n == 0 || d == 0 || h_n % kv_n != 0 {
        return Err(Error::invalid(
            OP,
            format!(
                "n_heads ({h_n}) must be a positive multiple of n_kv_heads ({kv_n}), \
                 head_dim ({d}) positive"
            ),
        ));
    }
    check::heads(OP, q.shape(), h_n, d)?;
    check::heads(OP, k.shape(), kv_n, d)?;
    check::exact(OP, v.shape(), k.shape())?;
    check::exact(OP, d_out.shape(), q.shape())?;
    let (b_n, t_n, _) = q.dim();
    let s_n = k.shape()[1];
    if k.shape()[0] != b_n {
        return Err(Error::shape(
            OP,
            format!("k, v [{b_n}, S, {}] (batch of q)", kv_n * d),
            k.shape(),
        ));
    }
    if let Some(m) = &key_mask {
        check::exact(OP, m.shape(), &[b_n, s_n])?;
    }
    let group = h_n / kv_n;
    let tau = F::from_f64(1.0 / (d as f64).sqrt());
    let mut dq = Array3::zeros(q.raw_dim());
    let mut dk = Array3::zeros(k.raw_dim());
    let mut dv = Array3::zeros(v.raw_dim());
    if t_n == 0 || s_n == 0 {
        return Ok(AttentionGrads {
            q: dq,
            k: dk,
            v: dv,
        });
    }
    for b in 0..b_n {
        let allowed = |t: usize, s: usize| {
            key_mask.as_ref().is_none_or(|m| m[[b, s]]) && (!shape.causal || s + t_n <= t + s_n)
        };
        for h in 0..h_n {
            let cols = h * d..(h + 1) * d;
            let kv_cols = (h / group) * d..(h / group + 1) * d;
            let qh = q.slice(s![b, .., cols.clone()]); // [T, D]
            let kh = k.slice(s![b, .., kv_cols.clone()]); // [S, D]
            let vh = v.slice(s![b, .., kv_cols.clone()]); // [S, D]
            let doh = d_out.slice(s![b, .., cols.clone()]); // [T, D]
            // P[T, S] = softmax of τ·Q·Kᵀ over the allowed keys, 0 elsewhere
            let mut p = matmul_nt(qh, kh);
            for (t, mut row) in p.rows_mut().into_iter().enumerate() {
                let mut max: Option<F> = None;
                for (s, x) in row.iter_mut().enumerate() {
                    if allowed(t, s) {
                        *x *= tau;
                        max = Some(max.map_or(*x, |m: F| m.max(*x)));
                    }
                }
                let Some(m) = max else {
                    row.fill(F::zero());
                    continue;
                };
                let mut sum = F::zero();
                for (s, x) in row.iter_mut().enumerate() {
                    *x = if allowed(t, s) {
                        (*x - m).exp()
                    } else {
                        F::zero()
                    };
                    sum += *x;
                }
                row.mapv_inplace(|x| x / sum);
            }
            // dV_h += Pᵀ·dO_h
            gemm_into(
                F::one(),
                p.t(),
                doh,
                F::one(),
                dv.slice_mut(s![b, .., kv_cols.clone()]),
            );
            // dS[T, S] = P⊙(dP − rowsum(P⊙dP)), dP = dO_h·V_hᵀ
            let mut ds = matmul_nt(doh, vh);
            for (mut ds_row, p_row) in ds.rows_mut().into_iter().zip(p.rows()) {
                let c: F = ds_row.iter().zip(p_row).map(|(&g, &pp)| g * pp).sum();
                ds_row.zip_mut_with(&p_row, |g, &pp| *g = pp * (*g - c));
            }
            // dQ_h = τ·dS·K_h, dK_h += τ·dSᵀ·Q_h
            gemm_into(tau, ds.view(), kh, F::zero(), dq.slice_mut(s![b, .., cols]));
            gemm_into(tau, ds.t(), qh, F::one(), dk.slice_mut(s![b, .., kv_cols]));
        }
    }
    Ok(AttentionGrads {
        q: dq,
        k: dk,
        v: dv,
    })
}
