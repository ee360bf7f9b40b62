//! The reverse rules of a frozen linear layer and of its LoRA adapter.
//!
//! For `y = x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ` with `W`, `b` frozen:
//!
//! ```text
//! h = x·Aᵀ,  g = dy·B                     (both [N, r])
//! dB = s·dyᵀ·h,   dA = s·gᵀ·x,   dx = dy·W + s·g·A
//! ```
//!
//! The rank-r factors `h` and `g` are formed once; every product is one GEMM.

use ndarray::{Array2, ArrayView2, ArrayViewMut2, s};

use crate::kernels::check;
use crate::kernels::frozen::FrozenWeight;
use crate::kernels::frozen_linear::TILE_ROWS;
use crate::kernels::gemm::{gemm_into, matmul_nn, matmul_nt};
use crate::{Float, Result};

/// The gradients of a LoRA adapter's factors.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraGrads<F: Float> {
    /// `∂L/∂A`: `[r, in]`.
    pub a: Array2<F>,
    /// `∂L/∂B`: `[out, r]`.
    pub b: Array2<F>,
}

/// `∂L/∂x` of the frozen product `y = x·Wᵀ (+ b)`: `dx = dy·W`.
///
/// A dense `W` is one GEMM; a packed one is widened [`TILE_ROWS`] output rows at a time and
/// `dx += dy[:, o0..o1]·W[o0..o1, :]` accumulated tile by tile, so it is never held whole.
///
/// # Shapes
/// - `dy`: `[N, out]`, `w`: `[out, in]` → `[N, in]`
///
/// # Errors
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) if `dy`'s rows are not `out` wide.
pub fn frozen_linear_backward<F: Float>(
    dy: ArrayView2<'_, F>,
    w: &FrozenWeight<F>,
) -> Result<Array2<F>> {
    let (out_f, in_f) = w.dim();
    check::last_dim("frozen_linear_backward", dy.shape(), out_f)?;
    match w {
        FrozenWeight::Dense(w) => Ok(matmul_nn(dy, w.view())),
        FrozenWeight::Packed(_) => {
            let mut dx = Array2::zeros((dy.nrows(), in_f));
            let mut scratch = Vec::new();
            for o0 in (0..out_f).step_by(TILE_ROWS) {
                let o1 = (o0 + TILE_ROWS).min(out_f);
                let tile = w.tile(o0..o1, &mut scratch);
                gemm_into(
                    F::one(),
                    dy.slice(s![.., o0..o1]),
                    tile,
                    F::one(),
                    dx.view_mut(),
                );
            }
            Ok(dx)
        }
    }
}

/// The gradients of the adapter of `y = x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ` (no dropout):
/// `dB = s·dyᵀ·(x·Aᵀ)`, `dA = s·(dy·B)ᵀ·x`; when `dx` is given, the adapter's share of the
/// input gradient is added into it, `dx += s·(dy·B)·A` (the frozen share is
/// [`frozen_linear_backward`]).
///
/// # Shapes
/// - `x`: `[N, in]`, `a`: `[r, in]`, `b`: `[out, r]`, `dy`: `[N, out]`, `dx`: `[N, in]`
/// - output: `a` `[r, in]`, `b` `[out, r]`
///
/// # Errors
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) if the shapes do not chain.
pub fn lora_backward<F: Float>(
    x: ArrayView2<'_, F>,
    a: ArrayView2<'_, F>,
    b: ArrayView2<'_, F>,
    scale: F,
    dy: ArrayView2<'_, F>,
    dx: Option<ArrayViewMut2<'_, F>>,
) -> Result<LoraGrads<F>> {
    const OP: &str = "lora_backward";
    let (n, in_f) = x.dim();
    let (r, out_f) = (a.nrows(), b.nrows());
    check::exact(OP, a.shape(), &[r, in_f])?;
    check::exact(OP, b.shape(), &[out_f, r])?;
    check::exact(OP, dy.shape(), &[n, out_f])?;
    if let Some(dx) = &dx {
        check::exact(OP, dx.shape(), &[n, in_f])?;
    }
    // h[N, r] = x·Aᵀ, g[N, r] = dy·B
    let h = matmul_nt(x, a);
    let g = matmul_nn(dy, b);
    // dB[out, r] = s·dyᵀ·h, dA[r, in] = s·gᵀ·x
    let mut db = Array2::zeros((out_f, r));
    gemm_into(scale, dy.t(), h.view(), F::zero(), db.view_mut());
    let mut da = Array2::zeros((r, in_f));
    gemm_into(scale, g.t(), x, F::zero(), da.view_mut());
    if let Some(dx) = dx {
        gemm_into(scale, g.view(), a, F::one(), dx);
    }
    Ok(LoraGrads { a: da, b: db })
}
