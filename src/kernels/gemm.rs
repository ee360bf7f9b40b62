//! Matrix products through `matrixmultiply` (via ndarray's `general_mat_mul`).
//!
//! Transposes are free: they only swap the strides handed to the GEMM, so a Hugging Face weight
//! `[out, in]` is used as `Wᵀ` in place, never copied.

use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView2, ArrayViewMut2};

use crate::Float;

/// `C = A·Bᵀ`.
///
/// # Shapes
/// - `a`: `[m, k]`, `b`: `[n, k]` (a Hugging Face weight `[out, in]`), result `[m, n]`
///
/// # Panics
/// If the inner dimensions differ; callers check shapes first and return typed errors.
pub fn matmul_nt<F: Float>(a: ArrayView2<'_, F>, b: ArrayView2<'_, F>) -> Array2<F> {
    let mut c = Array2::zeros((a.nrows(), b.nrows()));
    general_mat_mul(F::one(), &a, &b.t(), F::zero(), &mut c);
    c
}

/// `C = A·B`.
///
/// # Shapes
/// - `a`: `[m, k]`, `b`: `[k, n]`, result `[m, n]`
///
/// # Panics
/// If the inner dimensions differ.
pub fn matmul_nn<F: Float>(a: ArrayView2<'_, F>, b: ArrayView2<'_, F>) -> Array2<F> {
    let mut c = Array2::zeros((a.nrows(), b.ncols()));
    general_mat_mul(F::one(), &a, &b, F::zero(), &mut c);
    c
}

/// `C ← α·A·B + β·C` on arbitrary (strided) views.
///
/// # Shapes
/// - `a`: `[m, k]`, `b`: `[k, n]`, `c`: `[m, n]`
///
/// # Panics
/// If the shapes do not chain.
pub fn gemm_into<F: Float>(
    alpha: F,
    a: ArrayView2<'_, F>,
    b: ArrayView2<'_, F>,
    beta: F,
    mut c: ArrayViewMut2<'_, F>,
) {
    general_mat_mul(alpha, &a, &b, beta, &mut c);
}
