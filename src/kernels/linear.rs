//! Linear layers and the matrix product of two dual operands.
//!
//! - [`linear`]: frozen weight `[out, in]` (Hugging Face layout) and bias; `ẏ = ẋ·Wᵀ` is one GEMM
//!   over all K·rows, with `Wᵀ` taken through strides.
//! - [`linear_dual`]: dual weight and bias (a trainable head); `ẏ = ẋ·Wᵀ + x·Ẇᵀ + ḃ`.
//! - [`matmul`]: `C = A·B` of two dual matrices; `Ċ = Ȧ·B + A·Ḃ` (bilinear rule).

use ndarray::{Array2, ArrayView1, ArrayView2, Axis, Dimension, Ix1, Ix2, s};

use super::check;
use super::gemm::{gemm_blocks, gemm_into, gemm_new, matmul_nn, matmul_nt};
use crate::{Dual, Float, Result, common_k};

/// Linear layer with a frozen weight: `y = x·Wᵀ + b`, `ẏ = ẋ·Wᵀ`.
///
/// The K tangents are stacked into the rows of a single GEMM (`[K·N, in]·Wᵀ`), so the weight is
/// packed once for all directions. A symbolic-zero input tangent gives a symbolic-zero output.
///
/// # Shapes
/// - `x`: `[.., in]` (any rank ≥ 1), `w`: `[out, in]`, `b`: `[out]`
/// - output: `[.., out]`
///
/// # Errors
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) if `x`'s last axis is not `in` or `b`
/// is not `[out]`.
pub fn linear<F: Float, D: Dimension>(
    x: &Dual<F, D>,
    w: ArrayView2<'_, F>,
    b: Option<ArrayView1<'_, F>>,
) -> Result<Dual<F, D>> {
    const OP: &str = "linear";
    let (out_f, in_f) = w.dim();
    check::last_dim(OP, x.shape(), in_f)?;
    if let Some(b) = &b {
        check::exact(OP, b.shape(), &[out_f])?;
    }
    // y[N, out] = x[N, in] · Wᵀ + b, the bias written first and the product added onto it
    let y = gemm_new(F::one(), x.primal_rows(), w.t(), b);
    // ẏ[K·N, out] = ẋ[K·N, in] · Wᵀ
    let ty = x
        .tangent_rows()
        .map(|t| (x.k().unwrap_or(0), matmul_nt(t, w)));
    Ok(Dual::from_rows(x.shape(), y, ty))
}

/// Linear layer with a dual weight and bias: `y = x·Wᵀ + b`, `ẏ = ẋ·Wᵀ + x·Ẇ_kᵀ + ḃ_k`.
///
/// `ẋ·Wᵀ` is one stacked GEMM; `x·Ẇ_kᵀ` is one GEMM per direction (each `Ẇ_k` is a different
/// matrix), accumulated in place.
///
/// # Shapes
/// - `x`: `[.., in]`, `w`: `[out, in]` (tangent `[K, out, in]`), `b`: `[out]` (tangent `[K, out]`)
/// - output: `[.., out]`
///
/// # Errors
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) as [`linear`];
/// [`Error::TangentCountMismatch`](crate::Error::TangentCountMismatch) if the operands carry
/// different K.
pub fn linear_dual<F: Float, D: Dimension>(
    x: &Dual<F, D>,
    w: &Dual<F, Ix2>,
    b: Option<&Dual<F, Ix1>>,
) -> Result<Dual<F, D>> {
    const OP: &str = "linear_dual";
    let (out_f, in_f) = w.primal().dim();
    check::last_dim(OP, x.shape(), in_f)?;
    if let Some(b) = b {
        check::exact(OP, b.shape(), &[out_f])?;
    }
    let k = common_k(OP, &[x.k(), w.k(), b.and_then(Dual::k)])?;
    let xr = x.primal_rows();
    let n = xr.nrows();
    // y[N, out] = x · Wᵀ + b
    let y = gemm_new(F::one(), xr, w.primal().t(), b.map(|b| b.primal().view()));
    let Some(k) = k else {
        return Ok(Dual::from_rows(x.shape(), y, None));
    };
    // ẏ[K·N, out]: ẋ·Wᵀ (one GEMM) then += x·Ẇ_kᵀ per direction; without ẋ, ẏ_k = x·Ẇ_kᵀ is
    // written directly (nothing is zero-filled first)
    let mut ty = match (x.tangent_rows(), w.tangent()) {
        (Some(t), tw) => {
            let mut ty = matmul_nt(t, w.primal().view());
            for (kk, tw) in tw.iter().flat_map(|tw| tw.outer_iter().enumerate()) {
                // ẏ_k += x[N, in] · Ẇ_kᵀ[in, out]
                let block = ty.slice_mut(s![kk * n..(kk + 1) * n, ..]);
                gemm_into(F::one(), xr, tw.t(), F::one(), block);
            }
            ty
        }
        (None, Some(tw)) => gemm_blocks(n, out_f, k, |kk| {
            (F::one(), xr, tw.index_axis(Axis(0), kk).reversed_axes())
        }),
        (None, None) => Array2::zeros((k * n, out_f)), // only ḃ moves the output
    };
    if let Some(tb) = b.and_then(Dual::tangent) {
        for kk in 0..k {
            // ẏ_k[n, :] += ḃ_k
            let mut block = ty.slice_mut(s![kk * n..(kk + 1) * n, ..]);
            block += &tb.index_axis(Axis(0), kk);
        }
    }
    Ok(Dual::from_rows(x.shape(), y, Some((k, ty))))
}

/// Matrix product of two dual matrices: `C = A·B`, `Ċ = Ȧ·B + A·Ḃ`.
///
/// `Ȧ·B` is one GEMM over the K stacked directions (`[K·m, k]·[k, n]`); `A·Ḃ_k` is one GEMM per
/// direction.
///
/// # Shapes
/// - `a`: `[m, k]`, `b`: `[k, n]`, output `[m, n]`
///
/// # Errors
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) if the inner dimensions differ;
/// [`Error::TangentCountMismatch`](crate::Error::TangentCountMismatch) if the operands carry
/// different K.
pub fn matmul<F: Float>(a: &Dual<F, Ix2>, b: &Dual<F, Ix2>) -> Result<Dual<F, Ix2>> {
    const OP: &str = "matmul";
    let (m, inner) = a.primal().dim();
    let n = b.primal().ncols();
    check::exact(OP, b.shape(), &[inner, n])?;
    let k = common_k(OP, &[a.k(), b.k()])?;
    // C[m, n] = A · B
    let c = matmul_nn(a.primal().view(), b.primal().view());
    let Some(k) = k else {
        return Ok(Dual::constant(c));
    };
    // Ċ[K·m, n]: Ȧ·B in one GEMM, then += A·Ḃ_k per direction; without Ȧ, Ċ_k = A·Ḃ_k
    // written directly (every block is written, so nothing is zero-filled first)
    let tc = match (a.tangent_rows(), b.tangent()) {
        (Some(ta), tb) => {
            let mut tc = matmul_nn(ta, b.primal().view());
            if let Some(tb) = tb {
                for kk in 0..k {
                    let block = tc.slice_mut(s![kk * m..(kk + 1) * m, ..]);
                    gemm_into(
                        F::one(),
                        a.primal().view(),
                        tb.index_axis(Axis(0), kk),
                        F::one(),
                        block,
                    );
                }
            }
            tc
        }
        (None, Some(tb)) => gemm_blocks(m, n, k, |kk| {
            (F::one(), a.primal().view(), tb.index_axis(Axis(0), kk))
        }),
        (None, None) => unreachable!("k is Some, so an operand carries a tangent"),
    };
    Ok(Dual::from_rows(&[m, n], c, Some((k, tc))))
}

// ---- naive reference twins (loops, one direction at a time) -------------------------------------

/// Naive twin of [`linear`]: explicit loops, one direction at a time. For tests.
///
/// # Errors
/// As [`linear`].
pub fn linear_reference<F: Float, D: Dimension>(
    x: &Dual<F, D>,
    w: ArrayView2<'_, F>,
    b: Option<ArrayView1<'_, F>>,
) -> Result<Dual<F, D>> {
    let wd = Dual::constant(w.to_owned());
    let bd = b.map(|b| Dual::constant(b.to_owned()));
    linear_dual_reference(x, &wd, bd.as_ref())
}

/// Naive twin of [`linear_dual`]. For tests.
///
/// # Errors
/// As [`linear_dual`].
pub fn linear_dual_reference<F: Float, D: Dimension>(
    x: &Dual<F, D>,
    w: &Dual<F, Ix2>,
    b: Option<&Dual<F, Ix1>>,
) -> Result<Dual<F, D>> {
    const OP: &str = "linear_dual_reference";
    let (out_f, in_f) = w.primal().dim();
    check::last_dim(OP, x.shape(), in_f)?;
    if let Some(b) = b {
        check::exact(OP, b.shape(), &[out_f])?;
    }
    let k = common_k(OP, &[x.k(), w.k(), b.and_then(Dual::k)])?;
    let xr = x.primal_rows();
    let n = xr.nrows();
    let wp = w.primal();
    let mut y = Array2::zeros((n, out_f));
    for r in 0..n {
        for o in 0..out_f {
            let mut acc = b.map_or(F::zero(), |b| b.primal()[o]);
            for i in 0..in_f {
                acc += xr[[r, i]] * wp[[o, i]];
            }
            y[[r, o]] = acc;
        }
    }
    let ty = k.map(|k| {
        let mut ty = Array2::zeros((k * n, out_f));
        for kk in 0..k {
            for r in 0..n {
                for o in 0..out_f {
                    let mut acc = F::zero();
                    for i in 0..in_f {
                        if let Some(tx) = x.tangent_rows() {
                            acc += tx[[kk * n + r, i]] * wp[[o, i]];
                        }
                        if let Some(tw) = w.tangent() {
                            acc += xr[[r, i]] * tw[[kk, o, i]];
                        }
                    }
                    if let Some(tb) = b.and_then(Dual::tangent) {
                        acc += tb[[kk, o]];
                    }
                    ty[[kk * n + r, o]] = acc;
                }
            }
        }
        (k, ty)
    });
    Ok(Dual::from_rows(x.shape(), y, ty))
}

/// Naive twin of [`matmul`]. For tests.
///
/// # Errors
/// As [`matmul`].
pub fn matmul_reference<F: Float>(a: &Dual<F, Ix2>, b: &Dual<F, Ix2>) -> Result<Dual<F, Ix2>> {
    // A·B = linear(A, Bᵀ) with a dual weight Bᵀ.
    let bt_primal = b.primal().t().to_owned();
    let bt_tangent = b.tangent().map(|t| t.clone().permuted_axes([0, 2, 1]));
    let bt = Dual::with_tangent(bt_primal, bt_tangent)?;
    linear_dual_reference(a, &bt, None)
}
