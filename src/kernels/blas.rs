//! The optional BLAS backend (cargo feature `openblas`): f32/f64 products through the system's
//! OpenBLAS `cblas_sgemm`/`cblas_dgemm` instead of `matrixmultiply`.
//!
//! Only the entry points [`sgemm`] and [`dgemm`] live here; `gemm.rs` calls them first and falls
//! back to `matrixmultiply` when they decline. They decline when an operand is not a plain BLAS
//! matrix: a row-major (or, for `A` and `B`, transposed row-major) layout with unit stride along
//! one axis and a leading dimension that covers the other, non-negative strides, and dimensions
//! that fit the library's 32-bit integers. Every other view (a strided slice of heads, a negative
//! stride) takes the `matrixmultiply` path as before.
//!
//! Linking: `-l openblas` (Debian: `apt-get install libopenblas-dev`). OpenBLAS runs its own
//! thread pool (`OPENBLAS_NUM_THREADS`, default: every core); it splits a product over the rows
//! and columns of `C`, never along the inner dimension, so each element's sum runs in the same
//! order and the result does not depend on the thread count.

use std::ffi::c_int;

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

#[link(name = "openblas")]
unsafe extern "C" {
    fn cblas_sgemm(
        layout: c_int,
        trans_a: c_int,
        trans_b: c_int,
        m: c_int,
        n: c_int,
        k: c_int,
        alpha: f32,
        a: *const f32,
        lda: c_int,
        b: *const f32,
        ldb: c_int,
        beta: f32,
        c: *mut f32,
        ldc: c_int,
    );
    fn cblas_dgemm(
        layout: c_int,
        trans_a: c_int,
        trans_b: c_int,
        m: c_int,
        n: c_int,
        k: c_int,
        alpha: f64,
        a: *const f64,
        lda: c_int,
        b: *const f64,
        ldb: c_int,
        beta: f64,
        c: *mut f64,
        ldc: c_int,
    );
}

/// One `[rows, cols]` operand with strides `(rs, cs)` as BLAS sees it: `(transposed, ld)`, or
/// `None` if it is not a plain BLAS matrix.
///
/// Row-major (`cs = 1`) is `NoTrans` with `ld = rs`; column-major (`rs = 1`) is the row-major
/// `[cols, rows]` matrix transposed, `ld = cs`. A single row or column may carry any stride along
/// its length-1 axis, so the leading dimension is clamped up to what BLAS checks (`ld ≥ cols`).
fn operand(rows: usize, cols: usize, rs: isize, cs: isize) -> Option<(bool, c_int)> {
    if rs < 0 || cs < 0 {
        return None;
    }
    let (rs, cs) = (rs as usize, cs as usize);
    let ld = if cs == 1 && (rows <= 1 || rs >= cols) {
        (false, rs.max(cols).max(1))
    } else if rs == 1 && (cols <= 1 || cs >= rows) {
        (true, cs.max(rows).max(1))
    } else {
        return None;
    };
    Some((ld.0, c_int::try_from(ld.1).ok()?))
}

/// The BLAS call's dimensions and layout, or `None` to decline. `C` must be row-major.
#[allow(clippy::too_many_arguments)]
fn plan(
    m: usize,
    k: usize,
    n: usize,
    (rsa, csa): (isize, isize),
    (rsb, csb): (isize, isize),
    (rsc, csc): (isize, isize),
) -> Option<[c_int; 8]> {
    let (ta, lda) = operand(m, k, rsa, csa)?;
    let (tb, ldb) = operand(k, n, rsb, csb)?;
    let (tc, ldc) = operand(m, n, rsc, csc)?;
    if tc && !(m <= 1 && n <= 1) {
        return None;
    }
    let trans = |t: bool| if t { TRANS } else { NO_TRANS };
    Some([
        trans(ta),
        trans(tb),
        c_int::try_from(m).ok()?,
        c_int::try_from(n).ok()?,
        c_int::try_from(k).ok()?,
        lda,
        ldb,
        ldc,
    ])
}

macro_rules! blas_gemm {
    ($name:ident, $cblas:ident, $t:ty) => {
        /// `C ← α·A·B + β·C` through OpenBLAS; returns `false` (and touches nothing) if an
        /// operand's layout is not one BLAS takes, so the caller can fall back.
        ///
        /// # Shapes
        /// - `a`: `[m, k]`, `b`: `[k, n]`, `c`: `[m, n]`, each with strides `(row, column)`
        ///
        /// # Safety
        /// The pointers must address matrices of these shapes and strides, `c` valid for
        /// writes and aliasing neither `a` nor `b`; with `β = 0`, `C` may be uninitialised
        /// (BLAS does not read it then).
        #[allow(clippy::too_many_arguments)]
        pub(super) unsafe fn $name(
            m: usize,
            k: usize,
            n: usize,
            alpha: $t,
            a: *const $t,
            sa: (isize, isize),
            b: *const $t,
            sb: (isize, isize),
            beta: $t,
            c: *mut $t,
            sc: (isize, isize),
        ) -> bool {
            if m == 0 || n == 0 {
                return true;
            }
            let Some([ta, tb, mi, ni, ki, lda, ldb, ldc]) = plan(m, k, n, sa, sb, sc) else {
                return false;
            };
            // SAFETY: `plan` checked that each operand is a plain BLAS matrix with these
            // dimensions and leading dimensions; the caller guarantees the memory.
            unsafe {
                $cblas(
                    ROW_MAJOR, ta, tb, mi, ni, ki, alpha, a, lda, b, ldb, beta, c, ldc,
                );
            }
            true
        }
    };
}

blas_gemm!(sgemm, cblas_sgemm, f32);
blas_gemm!(dgemm, cblas_dgemm, f64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operand_layouts() {
        // row-major [3, 4], ld 4; a slice of a wider matrix, ld 10
        assert_eq!(operand(3, 4, 4, 1), Some((false, 4)));
        assert_eq!(operand(3, 4, 10, 1), Some((false, 10)));
        // column-major [3, 4] = transposed row-major [4, 3]
        assert_eq!(operand(3, 4, 1, 3), Some((true, 3)));
        // a single row with an arbitrary row stride
        assert_eq!(operand(1, 4, 0, 1), Some((false, 4)));
        // strided both ways, negative, overlapping rows
        assert_eq!(operand(3, 4, 8, 2), None);
        assert_eq!(operand(3, 4, -4, 1), None);
        assert_eq!(operand(3, 4, 2, 1), None);
    }

    #[test]
    fn matches_a_naive_product_for_each_layout() {
        let (m, k, n) = (5usize, 7usize, 3usize);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        let naive = |ta: bool, tb: bool| {
            let mut c = vec![0.0f64; m * n];
            for i in 0..m {
                for j in 0..n {
                    for p in 0..k {
                        let x = if ta { a[p * m + i] } else { a[i * k + p] };
                        let y = if tb { b[j * k + p] } else { b[p * n + j] };
                        c[i * n + j] += x as f64 * y as f64;
                    }
                }
            }
            c
        };
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let sa = if ta { (1, m as isize) } else { (k as isize, 1) };
            let sb = if tb { (1, k as isize) } else { (n as isize, 1) };
            let mut c = vec![f32::NAN; m * n];
            // SAFETY: a, b, c hold m·k, k·n and m·n values in the layouts the strides describe.
            let done = unsafe {
                sgemm(
                    m,
                    k,
                    n,
                    1.0,
                    a.as_ptr(),
                    sa,
                    b.as_ptr(),
                    sb,
                    0.0,
                    c.as_mut_ptr(),
                    (n as isize, 1),
                )
            };
            assert!(done);
            for (x, y) in c.iter().zip(naive(ta, tb)) {
                assert!((*x as f64 - y).abs() < 1e-5, "{ta} {tb}: {x} vs {y}");
            }
        }
    }
}
