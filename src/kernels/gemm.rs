//! Matrix products through `matrixmultiply`, or the system's OpenBLAS with the cargo feature
//! `openblas` (`blas.rs`; views BLAS cannot take still go through `matrixmultiply`).
//!
//! Transposes are free: they only swap the strides handed to the GEMM, so a Hugging Face weight
//! `[out, in]` is used as `Wᵀ` in place, never copied.
//!
//! Fresh outputs are never zero-filled first: with `β = 0` the GEMM only writes `C`, so
//! [`gemm_new`] and [`gemm_blocks`] hand `matrixmultiply` an uninitialised buffer and write every
//! element exactly once. A broadcast bias row is written into the buffer before the product,
//! which then accumulates onto it (`β = 1`), so `x·Wᵀ + b` is one pass over the output, not two.

use std::any::TypeId;

use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView1, ArrayView2, ArrayViewMut2, Axis, ShapeBuilder};

use super::buffer;
use crate::Float;

/// `C = A·Bᵀ`.
///
/// # Shapes
/// - `a`: `[m, k]`, `b`: `[n, k]` (a Hugging Face weight `[out, in]`), result `[m, n]`
///
/// # Panics
/// If the inner dimensions differ; callers check shapes first and return typed errors.
pub fn matmul_nt<F: Float>(a: ArrayView2<'_, F>, b: ArrayView2<'_, F>) -> Array2<F> {
    gemm_new(F::one(), a, b.t(), None)
}

/// `C = A·B`.
///
/// # Shapes
/// - `a`: `[m, k]`, `b`: `[k, n]`, result `[m, n]`
///
/// # Panics
/// If the inner dimensions differ.
pub fn matmul_nn<F: Float>(a: ArrayView2<'_, F>, b: ArrayView2<'_, F>) -> Array2<F> {
    gemm_new(F::one(), a, b, None)
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
    #[cfg(feature = "openblas")]
    {
        assert!(
            a.nrows() == c.nrows() && b.ncols() == c.ncols() && a.ncols() == b.nrows(),
            "gemm_into: [{}, {}]·[{}, {}] into [{}, {}]",
            a.nrows(),
            a.ncols(),
            b.nrows(),
            b.ncols(),
            c.nrows(),
            c.ncols()
        );
        let strides = (c.strides()[0], c.strides()[1]);
        // SAFETY: the shapes chain (checked above); `c` is a mutable view, so it aliases
        // neither `a` nor `b`, and it is initialised (β may be non-zero).
        if unsafe { blas_gemm(alpha, a.view(), b.view(), beta, c.as_mut_ptr(), strides) } {
            return;
        }
    }
    general_mat_mul(alpha, &a, &b, beta, &mut c);
}

/// `C ← α·A·B + β·C` through the BLAS backend for `f32`/`f64`; `false` (nothing written) when
/// the type or a layout is not one BLAS takes.
///
/// # Safety
/// As `gemm_raw`, for `c` with strides `sc`; `c` must be initialised unless `β = 0`.
#[cfg(feature = "openblas")]
unsafe fn blas_gemm<F: Float>(
    alpha: F,
    a: ArrayView2<'_, F>,
    b: ArrayView2<'_, F>,
    beta: F,
    c: *mut F,
    sc: (isize, isize),
) -> bool {
    let ((m, k), n) = (a.dim(), b.ncols());
    let sa = (a.strides()[0], a.strides()[1]);
    let sb = (b.strides()[0], b.strides()[1]);
    let cast = |x: F| x.to_f64().expect("a float");
    if TypeId::of::<F>() == TypeId::of::<f32>() {
        // SAFETY: F is f32; the caller guarantees the operands and C.
        unsafe {
            super::blas::sgemm(
                m,
                k,
                n,
                cast(alpha) as f32,
                a.as_ptr().cast(),
                sa,
                b.as_ptr().cast(),
                sb,
                cast(beta) as f32,
                c.cast(),
                sc,
            )
        }
    } else if TypeId::of::<F>() == TypeId::of::<f64>() {
        // SAFETY: F is f64; as above.
        unsafe {
            super::blas::dgemm(
                m,
                k,
                n,
                cast(alpha),
                a.as_ptr().cast(),
                sa,
                b.as_ptr().cast(),
                sb,
                cast(beta),
                c.cast(),
                sc,
            )
        }
    } else {
        false
    }
}

/// A fresh `C = α·A·B + 1·bias` (the bias row broadcast over the rows of `C`), written in one pass:
/// without a bias the product goes straight into an uninitialised buffer (`β = 0`); with one, the
/// buffer is filled with the bias rows and the product accumulates onto them (`β = 1`).
///
/// # Shapes
/// - `a`: `[m, k]`, `b`: `[k, n]` (any strides), `bias`: `[n]`, result `[m, n]` (row-major)
///
/// # Panics
/// If the shapes do not chain.
pub fn gemm_new<F: Float>(
    alpha: F,
    a: ArrayView2<'_, F>,
    b: ArrayView2<'_, F>,
    bias: Option<ArrayView1<'_, F>>,
) -> Array2<F> {
    let (m, n) = (a.nrows(), b.ncols());
    match bias {
        Some(bias) => {
            assert_eq!(bias.len(), n, "gemm_new: bias length");
            let mut c = broadcast_rows(bias, m);
            gemm_into(alpha, a, b, F::one(), c.view_mut());
            c
        }
        None => gemm_blocks(m, n, 1, |_| (alpha, a.view(), b.view())),
    }
}

/// A fresh stack of K products `C = [C_0; ..; C_{K−1}]`, `C_k = α_k·A_k·B_k`, each block written
/// once straight into an uninitialised buffer (`β = 0`).
///
/// `block(k)` returns `(α_k, A_k, B_k)`; it is called once per block, in order.
///
/// # Shapes
/// - `A_k`: `[m, inner_k]`, `B_k`: `[inner_k, n]` (any strides), result `[K·m, n]` (row-major)
///
/// # Panics
/// If a block's shapes do not chain or its product is not `[m, n]`.
pub fn gemm_blocks<'a, F: Float>(
    m: usize,
    n: usize,
    k: usize,
    mut block: impl FnMut(usize) -> (F, ArrayView2<'a, F>, ArrayView2<'a, F>),
) -> Array2<F> {
    let mut c = buffer::uninit::<F, _>((k * m, n));
    for (kk, mut ck) in c.axis_chunks_iter_mut(Axis(0), m.max(1)).enumerate() {
        let (alpha, a, b) = block(kk);
        assert!(
            a.nrows() == m && b.ncols() == n && a.ncols() == b.nrows(),
            "gemm_blocks: block {kk} is [{}, {}]·[{}, {}], want [{m}, _]·[_, {n}]",
            a.nrows(),
            a.ncols(),
            b.nrows(),
            b.ncols()
        );
        // SAFETY: the shapes were checked above; `ck` is a row-major [m, n] block of `c` that
        // nothing else aliases. `MaybeUninit<F>` has `F`'s layout, and with β = 0 the GEMM only
        // writes C (matrixmultiply: "if β is zero, then C does not need to be initialized").
        unsafe { gemm_raw(alpha, a, b, ck.as_mut_ptr().cast::<F>(), ck.strides()) };
    }
    // SAFETY: the blocks tile all K·m rows and each was fully written by its GEMM (for m = 0 or
    // n = 0 there is nothing to write).
    unsafe { c.assume_init() }
}

/// `[m, n]` with every row equal to `row`, written once (no zero fill first).
pub(crate) fn broadcast_rows<F: Float>(row: ArrayView1<'_, F>, m: usize) -> Array2<F> {
    let row = row.as_standard_layout();
    let row = row.as_slice().expect("standard layout");
    let mut c = buffer::with_capacity(m * row.len());
    for _ in 0..m {
        c.extend_from_slice(row);
    }
    Array2::from_shape_vec((m, row.len()), c).expect("m·n elements")
}

/// `C = α·A·B` written into raw, possibly uninitialised memory with `β = 0` (`f32`/`f64` only;
/// another `Float` type is zero-filled and goes through ndarray).
///
/// # Safety
/// `c` must point to a `[a.nrows(), b.ncols()]` matrix with strides `c_strides` that is valid
/// for writes and aliases neither `a` nor `b`; the strides must be non-negative and the shapes
/// must chain (`a.ncols() == b.nrows()`).
unsafe fn gemm_raw<F: Float>(
    alpha: F,
    a: ArrayView2<'_, F>,
    b: ArrayView2<'_, F>,
    c: *mut F,
    c_strides: &[isize],
) {
    let ((m, k), n) = (a.dim(), b.ncols());
    let (rsa, csa) = (a.strides()[0], a.strides()[1]);
    let (rsb, csb) = (b.strides()[0], b.strides()[1]);
    let (rsc, csc) = (c_strides[0], c_strides[1]);
    #[cfg(feature = "openblas")]
    // SAFETY: the caller's guarantees are `blas_gemm`'s, with β = 0 (C is not read).
    if unsafe { blas_gemm(alpha, a.view(), b.view(), F::zero(), c, (rsc, csc)) } {
        return;
    }
    if TypeId::of::<F>() == TypeId::of::<f32>() {
        // SAFETY: F is f32 (same type), the caller guarantees the shapes and the C buffer.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                *(&alpha as *const F).cast::<f32>(),
                a.as_ptr().cast(),
                rsa,
                csa,
                b.as_ptr().cast(),
                rsb,
                csb,
                0.0,
                c.cast(),
                rsc,
                csc,
            );
        }
    } else if TypeId::of::<F>() == TypeId::of::<f64>() {
        // SAFETY: as above, with F = f64.
        unsafe {
            matrixmultiply::dgemm(
                m,
                k,
                n,
                *(&alpha as *const F).cast::<f64>(),
                a.as_ptr().cast(),
                rsa,
                csa,
                b.as_ptr().cast(),
                rsb,
                csb,
                0.0,
                c.cast(),
                rsc,
                csc,
            );
        }
    } else {
        // SAFETY: the caller guarantees that `c` is a valid, unaliased [m, n] matrix with these
        // strides; it is zero-filled element by element (through raw pointers, never reading the
        // old contents) before any view of it is formed.
        unsafe {
            for i in 0..m {
                for j in 0..n {
                    c.offset(i as isize * rsc + j as isize * csc)
                        .write(F::zero());
                }
            }
            let mut cv =
                ArrayViewMut2::from_shape_ptr((m, n).strides((rsc as usize, csc as usize)), c);
            general_mat_mul(alpha, &a, &b, F::zero(), &mut cv);
        }
    }
}
