//! A frozen linear layer with a LoRA adapter (Hu et al. 2021, PEFT layout) and shared dropout.
//!
//! - [`lora_linear`]: `y = x·Wᵀ + b + s·(x̃·Aᵀ)·Bᵀ` with `x̃ = x ⊙ mask`, where `W`, `b` are frozen
//!   and `x`, `A`, `B` may each be dual or constant (a Spry client perturbs only its assigned
//!   adapters; every other adapter is a constant).
//! - [`lora_frozen_linear`]: the same over a [`FrozenWeight`], dense or packed (the base product
//!   through [`frozen_linear`]): the one LoRA path of `FrozenLinear`, whatever its storage.
//!
//! The tangent is
//!
//! ```text
//! ẏ = ẋ·Wᵀ + s·[(x̃̇·Aᵀ + x̃·Ȧᵀ)·Bᵀ + (x̃·Aᵀ)·Ḃᵀ],   x̃̇ = ẋ ⊙ mask
//! ```
//!
//! The rank-r factor `h = x̃·Aᵀ` is computed once by the primal and reused by the `Ḃ` term.
//! `ẋ·Wᵀ` (through [`linear`]), `x̃̇·Aᵀ` and `ḣ·Bᵀ` are each one GEMM over all K·N stacked tangent
//! rows; `x̃·Ȧ_kᵀ` and `h·Ḃ_kᵀ` are one small GEMM per direction (each `Ȧ_k`, `Ḃ_k` is a different
//! matrix).
//!
//! With the PEFT initialisation `B = 0` the `Ȧ` term is exactly zero: at step 0 only `Ḃ` moves
//! the output, so the forward gradient of `A` is pure noise until `B` has moved. This is expected.

use ndarray::{Array2, ArrayView, ArrayView1, ArrayView2, Axis, Dimension, Ix2, s};

use super::check;
use super::frozen::FrozenWeight;
use super::frozen_linear::{frozen_linear, frozen_linear_panels};
use super::gemm::{gemm_into, matmul_nt};
use super::linear::linear;
use super::panel_gemm::PanelWeight;
use crate::{Dual, Error, Float, Result, common_k};

/// Linear layer with a frozen weight plus a LoRA adapter and an optional dropout mask:
/// `y = x·Wᵀ + b + s·(x̃·Aᵀ)·Bᵀ`, `x̃ = x ⊙ mask`.
///
/// Tangent: `ẏ = ẋ·Wᵀ + s·[(x̃̇·Aᵀ + x̃·Ȧᵀ)·Bᵀ + (x̃·Aᵀ)·Ḃᵀ]` with `x̃̇ = ẋ ⊙ mask`: the *same* mask
/// multiplies the primal and every tangent direction (one forward pass draws one mask, a
/// constant of the function being differentiated). The mask holds the already-scaled dropout factors (`0` or `1/(1−p)`), as the
/// caller's seeded dropout draws them; `None` means no dropout (evaluation, or `p = 0`). The
/// dropout applies to the adapter branch only, as PEFT's `lora_dropout` does.
///
/// Each of `x`, `a`, `b` may be dual or a constant (symbolic-zero tangent); terms whose tangent
/// is a symbolic zero are skipped, and if all three are constants the output is a constant.
///
/// # Shapes
/// - `x`: `[.., in]` (any rank ≥ 1), `w`: `[out, in]`, `bias`: `[out]`
/// - `a`: `[r, in]` (tangent `[K, r, in]`), `b`: `[out, r]` (tangent `[K, out, r]`)
/// - `dropout_mask`: the shape of `x`
/// - output: `[.., out]`
///
/// # Errors
/// - [`Error::ShapeMismatch`] if `x`'s last axis is not `in`, `bias` is not `[out]`, `a` is not
///   `[r, in]`, `b` is not `[out, r]` (rank or output mismatch), or the mask's shape differs
///   from `x`'s.
/// - [`Error::TangentCountMismatch`] if `x`, `a`, `b` carry different K.
pub fn lora_linear<F: Float, D: Dimension>(
    x: &Dual<F, D>,
    w: ArrayView2<'_, F>,
    bias: Option<ArrayView1<'_, F>>,
    a: &Dual<F, Ix2>,
    b: &Dual<F, Ix2>,
    scale: F,
    dropout_mask: Option<ArrayView<'_, F, D>>,
) -> Result<Dual<F, D>> {
    let base = |x: &Dual<F, D>| linear(x, w, bias);
    lora_over(x, w.dim(), bias, base, a, b, scale, dropout_mask)
}

/// [`lora_linear`] over a [`FrozenWeight`], dense or packed: the same LoRA code path, with the
/// base product `x·Wᵀ + b`, `ẋ·Wᵀ` taken by [`frozen_linear`] (a dense weight is [`linear`]
/// itself, so this equals [`lora_linear`] bit for bit; a packed one is widened a tile at a time,
/// each tile shared by the primal and all K tangents, with the same products bit for bit as the
/// widened matrix).
///
/// # Shapes
/// As [`lora_linear`], with `w`: `[out, in]`.
///
/// # Errors
/// As [`lora_linear`].
pub fn lora_frozen_linear<F: Float, D: Dimension>(
    x: &Dual<F, D>,
    w: &FrozenWeight<F>,
    bias: Option<ArrayView1<'_, F>>,
    a: &Dual<F, Ix2>,
    b: &Dual<F, Ix2>,
    scale: F,
    dropout_mask: Option<ArrayView<'_, F, D>>,
) -> Result<Dual<F, D>> {
    let base = |x: &Dual<F, D>| frozen_linear(x, w, bias);
    lora_over(x, w.dim(), bias, base, a, b, scale, dropout_mask)
}

/// [`lora_frozen_linear`] with the base product through the weight's pre-packed panels when it
/// has them ([`frozen_linear_panels`]).
///
/// # Errors
/// As [`lora_linear`].
#[allow(clippy::too_many_arguments)]
pub fn lora_frozen_linear_panels<F: Float, D: Dimension>(
    x: &Dual<F, D>,
    w: &FrozenWeight<F>,
    panels: Option<&PanelWeight>,
    bias: Option<ArrayView1<'_, F>>,
    a: &Dual<F, Ix2>,
    b: &Dual<F, Ix2>,
    scale: F,
    dropout_mask: Option<ArrayView<'_, F, D>>,
) -> Result<Dual<F, D>> {
    let base = |x: &Dual<F, D>| frozen_linear_panels(x, w, panels, bias);
    lora_over(x, w.dim(), bias, base, a, b, scale, dropout_mask)
}

/// The LoRA layer over any frozen base product: checks the shapes against `w_dim = (out, in)`,
/// takes `y = x·Wᵀ + b`, `ẏ = ẋ·Wᵀ` from `base`, and adds the adapter branch and its tangents
/// into them (the one LoRA code path of [`lora_linear`] and [`lora_frozen_linear`]).
#[allow(clippy::too_many_arguments)]
fn lora_over<F: Float, D: Dimension>(
    x: &Dual<F, D>,
    w_dim: (usize, usize),
    bias: Option<ArrayView1<'_, F>>,
    base: impl FnOnce(&Dual<F, D>) -> Result<Dual<F, D>>,
    a: &Dual<F, Ix2>,
    b: &Dual<F, Ix2>,
    scale: F,
    dropout_mask: Option<ArrayView<'_, F, D>>,
) -> Result<Dual<F, D>> {
    const OP: &str = "lora_linear";
    let (out_f, in_f) = w_dim;
    let r = check_lora_shapes(OP, x, w_dim, bias, a, b, dropout_mask.as_ref())?;
    let k = common_k(OP, &[x.k(), a.k(), b.k()])?;
    let (ap, bp) = (a.primal().view(), b.primal().view());
    let n = x.primal_rows().nrows();

    // mask[N, in]: a view when the caller's mask is row-major, a copy otherwise
    let mask = match &dropout_mask {
        Some(m) => Some(
            m.to_shape((n, in_f))
                .map_err(|_| Error::shape(OP, format!("{:?}", x.shape()), m.shape()))?,
        ),
        None => None,
    };

    // Base: y[N, out] = x·Wᵀ + b and ẏ[K·N, out] = ẋ·Wᵀ (one stacked GEMM inside `linear`).
    let (y, ty) = base(x)?.into_parts();
    let mut y = y
        .into_shape_with_order((n, out_f))
        .map_err(|_| Error::shape(OP, format!("[{n}, {out_f}]"), x.shape()))?;
    let ty = match ty {
        Some(t) => {
            let rows = t.shape()[0] * n;
            Some(
                t.into_shape_with_order((rows, out_f))
                    .map_err(|_| Error::shape(OP, format!("[K·{n}, {out_f}]"), x.shape()))?,
            )
        }
        None => None,
    };

    // x̃[N, in] = x ⊙ mask
    let xd_owned = mask.as_ref().map(|m| {
        let mut xd = x.primal_rows().to_owned();
        xd *= m;
        xd
    });
    let xd = xd_owned
        .as_ref()
        .map_or_else(|| x.primal_rows(), |v| v.view());

    // h[N, r] = x̃·Aᵀ, the primal factor the Ḃ term reuses
    let h = matmul_nt(xd, ap);
    // y += s·h·Bᵀ
    gemm_into(scale, h.view(), bp.t(), F::one(), y.view_mut());

    let Some(k) = k else {
        return Ok(Dual::from_rows(x.shape(), y, None));
    };

    // x̃̇[K·N, in] = ẋ ⊙ mask, the same mask for every direction
    let txd_owned = match (x.tangent_rows(), &mask) {
        (Some(t), Some(m)) => {
            let mut t = t.to_owned();
            for kk in 0..k {
                let mut block = t.slice_mut(s![kk * n..(kk + 1) * n, ..]);
                block *= m;
            }
            Some(t)
        }
        _ => None,
    };
    let txd = txd_owned
        .as_ref()
        .map(|t| t.view())
        .or_else(|| x.tangent_rows());

    // ḣ[K·N, r] = x̃̇·Aᵀ (one GEMM over all K·N rows) + x̃·Ȧ_kᵀ, the latter for all K at once
    // as x̃·[Ȧ_1; ..; Ȧ_K]ᵀ = [N, K·r] (one GEMM, x̃ read once), then scattered per direction
    let mut th = txd.map(|t| matmul_nt(t, ap));
    if let Some(ta) = a.tangent() {
        let ta_rows = ta
            .view()
            .into_shape_with_order((k * r, in_f))
            .map_err(|_| Error::shape(OP, format!("[{k}, {r}, {in_f}]"), ta.shape()))?;
        let all = matmul_nt(xd, ta_rows);
        let th = th.get_or_insert_with(|| Array2::zeros((k * n, r)));
        for kk in 0..k {
            let mut block = th.slice_mut(s![kk * n..(kk + 1) * n, ..]);
            block += &all.slice(s![.., kk * r..(kk + 1) * r]);
        }
    }

    // ẏ[K·N, out] = ẋ·Wᵀ + s·(ḣ_k·Bᵀ + h·Ḃ_kᵀ). With both terms present, each direction is one
    // GEMM of inner dimension 2r, s·[ḣ_k | h]·[B | Ḃ_k]ᵀ: a single pass over ẏ_k instead of two.
    let mut ty = ty.unwrap_or_else(|| Array2::zeros((k * n, out_f)));
    match (&th, b.tangent()) {
        (Some(th), Some(tb)) => {
            let mut left = Array2::<F>::zeros((n, 2 * r));
            left.slice_mut(s![.., r..]).assign(&h);
            let mut right = Array2::<F>::zeros((out_f, 2 * r));
            right.slice_mut(s![.., ..r]).assign(&bp);
            for kk in 0..k {
                left.slice_mut(s![.., ..r])
                    .assign(&th.slice(s![kk * n..(kk + 1) * n, ..]));
                right
                    .slice_mut(s![.., r..])
                    .assign(&tb.index_axis(Axis(0), kk));
                let block = ty.slice_mut(s![kk * n..(kk + 1) * n, ..]);
                gemm_into(scale, left.view(), right.t(), F::one(), block);
            }
        }
        (Some(th), None) => gemm_into(scale, th.view(), bp.t(), F::one(), ty.view_mut()),
        (None, Some(tb)) => {
            for kk in 0..k {
                let block = ty.slice_mut(s![kk * n..(kk + 1) * n, ..]);
                gemm_into(
                    scale,
                    h.view(),
                    tb.index_axis(Axis(0), kk).t(),
                    F::one(),
                    block,
                );
            }
        }
        (None, None) => {}
    }
    Ok(Dual::from_rows(x.shape(), y, Some((k, ty))))
}

/// Checks the shapes of a LoRA layer's operands and returns the rank `r`.
fn check_lora_shapes<F: Float, D: Dimension>(
    op: &'static str,
    x: &Dual<F, D>,
    (out_f, in_f): (usize, usize),
    bias: Option<ArrayView1<'_, F>>,
    a: &Dual<F, Ix2>,
    b: &Dual<F, Ix2>,
    mask: Option<&ArrayView<'_, F, D>>,
) -> Result<usize> {
    check::last_dim(op, x.shape(), in_f)?;
    if let Some(bias) = &bias {
        check::exact(op, bias.shape(), &[out_f])?;
    }
    let r = a.shape()[0];
    check::exact(op, a.shape(), &[r, in_f])?;
    check::exact(op, b.shape(), &[out_f, r])?;
    if let Some(m) = mask {
        check::exact(op, m.shape(), x.shape())?;
    }
    Ok(r)
}

// ---- naive reference twins (loops, one direction at a time) -------------------------------------

/// Naive twin of [`lora_linear`]: explicit loops, one direction at a time. For tests.
///
/// # Errors
/// As [`lora_linear`].
pub fn lora_linear_reference<F: Float, D: Dimension>(
    x: &Dual<F, D>,
    w: ArrayView2<'_, F>,
    bias: Option<ArrayView1<'_, F>>,
    a: &Dual<F, Ix2>,
    b: &Dual<F, Ix2>,
    scale: F,
    dropout_mask: Option<ArrayView<'_, F, D>>,
) -> Result<Dual<F, D>> {
    const OP: &str = "lora_linear_reference";
    let (out_f, in_f) = w.dim();
    let r = check_lora_shapes(OP, x, w.dim(), bias, a, b, dropout_mask.as_ref())?;
    let k = common_k(OP, &[x.k(), a.k(), b.k()])?;
    let xr = x.primal_rows();
    let n = xr.nrows();
    let mask: Vec<F> = match &dropout_mask {
        Some(m) => m.iter().copied().collect(),
        None => vec![F::one(); n * in_f],
    };
    let (ap, bp) = (a.primal(), b.primal());
    let mut y = Array2::zeros((n, out_f));
    for row in 0..n {
        for o in 0..out_f {
            let mut acc = bias.map_or(F::zero(), |b| b[o]);
            for i in 0..in_f {
                acc += xr[[row, i]] * w[[o, i]];
            }
            let mut lora = F::zero();
            for j in 0..r {
                let mut hj = F::zero();
                for i in 0..in_f {
                    hj += ap[[j, i]] * xr[[row, i]] * mask[row * in_f + i];
                }
                lora += bp[[o, j]] * hj;
            }
            y[[row, o]] = acc + scale * lora;
        }
    }
    let ty = k.map(|k| {
        let mut ty = Array2::zeros((k * n, out_f));
        for kk in 0..k {
            // One direction: ẋ_k, Ȧ_k, Ḃ_k, each zero when its operand is a constant.
            let dx =
                |row: usize, i: usize| x.tangent_rows().map_or(F::zero(), |t| t[[kk * n + row, i]]);
            let da = |j: usize, i: usize| a.tangent().map_or(F::zero(), |t| t[[kk, j, i]]);
            let db = |o: usize, j: usize| b.tangent().map_or(F::zero(), |t| t[[kk, o, j]]);
            for row in 0..n {
                for o in 0..out_f {
                    let mut acc = F::zero();
                    for i in 0..in_f {
                        acc += dx(row, i) * w[[o, i]];
                    }
                    let mut lora = F::zero();
                    for j in 0..r {
                        let (mut hj, mut dhj) = (F::zero(), F::zero());
                        for i in 0..in_f {
                            let m = mask[row * in_f + i];
                            hj += ap[[j, i]] * xr[[row, i]] * m;
                            dhj += ap[[j, i]] * dx(row, i) * m + da(j, i) * xr[[row, i]] * m;
                        }
                        lora += bp[[o, j]] * dhj + db(o, j) * hj;
                    }
                    ty[[kk * n + row, o]] = acc + scale * lora;
                }
            }
        }
        (k, ty)
    });
    Ok(Dual::from_rows(x.shape(), y, ty))
}
