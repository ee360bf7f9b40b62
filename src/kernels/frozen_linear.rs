//! Linear layer over a [`FrozenWeight`]: `y = x·Wᵀ + b`, `ẏ = ẋ·Wᵀ`, with a packed `W` widened one
//! tile of output rows at a time.
//!
//! For each tile of [`TILE_ROWS`] output features, the rows `W[o0..o1, :]` are widened once into a
//! reusable scratch buffer and serve two GEMMs: the N primal rows, `y[:, o0..o1] = x·W_tileᵀ`, and
//! all K·N stacked tangent rows, `ẏ[:, o0..o1] = ẋ·W_tileᵀ`. Widening costs `O(out·in)` per call,
//! amortised over `N·(1+K)` rows, and the tiles are split between threads, each widening its own;
//! the full float matrix never exists (each thread's scratch holds `TILE_ROWS × in` values, plus
//! the tile's panels for the panel GEMM). A dense weight goes straight to [`linear`], or to the
//! panel GEMM through its pre-packed panels ([`frozen_linear_panels`]).

use std::any::{Any, TypeId};

use std::ops::Range;

use ndarray::{Array2, ArrayView1, ArrayView2, ArrayViewMut2, Axis, Dimension, s};

use super::check;
use super::frozen::FrozenWeight;
use super::gemm::gemm_into;
use super::linear::linear;
use super::panel_gemm::{Kernel, PanelWeight};
use crate::parallel;
use crate::{Dual, Float, Result};

/// Output rows of a packed weight widened at a time (a tile of `TILE_ROWS × in` values: 1.1 MiB
/// in f32 for `in = 576`). Large tiles matter: the GEMM packs the activations `x` (and `ẋ`)
/// again for every tile, `out / TILE_ROWS` times per product.
pub const TILE_ROWS: usize = 512;

/// Linear layer with a frozen, possibly packed, weight: `y = x·Wᵀ + b`, `ẏ = ẋ·Wᵀ`.
///
/// A dense weight is [`linear`] itself. A packed weight is widened [`TILE_ROWS`] rows at a time,
/// the tiles split between threads; each widened tile is used by the primal rows and by all K
/// stacked tangent rows before the next one is widened. Every output element is the same dot
/// product as with the widened matrix (tiles split the output columns, not the inner dimension):
/// for `f32` on a CPU with a panel kernel the result equals [`frozen_linear_panels`] on the
/// widened matrix bit for bit, otherwise `linear(x, W.to_dense(), b)`.
///
/// # Shapes
/// - `x`: `[.., in]` (any rank ≥ 1), `w`: `[out, in]`, `b`: `[out]`
/// - output: `[.., out]`
///
/// # Errors
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) if `x`'s last axis is not `in` or `b`
/// is not `[out]`.
pub fn frozen_linear<F: Float, D: Dimension>(
    x: &Dual<F, D>,
    w: &FrozenWeight<F>,
    b: Option<ArrayView1<'_, F>>,
) -> Result<Dual<F, D>> {
    match w {
        FrozenWeight::Dense(w) => linear(x, w.view(), b),
        FrozenWeight::Packed(_) => tiled_linear(x, w, b),
    }
}

/// [`frozen_linear`] through the weight's pre-packed panels when it has them
/// ([`PanelCache::get`](super::frozen::PanelCache::get)): `y = x·Wᵀ + b` and the K·N stacked
/// tangent rows `ẏ = ẋ·Wᵀ` are then two [`PanelWeight`] products (only `x` and `ẋ` are packed).
/// Without panels, or for `F ≠ f32`, this is [`frozen_linear`] itself.
///
/// The panel GEMM sums in another order than `matrixmultiply`, so the two paths agree to f32
/// rounding, not bit for bit; each is deterministic for any thread count.
///
/// # Shapes
/// As [`frozen_linear`]; `panels` must be `w`'s.
///
/// # Errors
/// As [`frozen_linear`].
///
/// # Panics
/// If `panels` is not `[out, in]` like `w`.
pub fn frozen_linear_panels<F: Float, D: Dimension>(
    x: &Dual<F, D>,
    w: &FrozenWeight<F>,
    panels: Option<&PanelWeight>,
    b: Option<ArrayView1<'_, F>>,
) -> Result<Dual<F, D>> {
    const OP: &str = "frozen_linear";
    let Some(p) = panels.filter(|_| TypeId::of::<F>() == TypeId::of::<f32>()) else {
        return frozen_linear(x, w, b);
    };
    assert_eq!(
        p.dim(),
        w.dim(),
        "frozen_linear_panels: panels of another weight"
    );
    let (out_f, in_f) = w.dim();
    check::last_dim(OP, x.shape(), in_f)?;
    if let Some(b) = &b {
        check::exact(OP, b.shape(), &[out_f])?;
    }
    // y[N, out] = x[N, in] · Wᵀ + b
    let y = panel_product(p, x.primal_rows(), b);
    // ẏ[K·N, out] = ẋ[K·N, in] · Wᵀ, one product for all K directions
    let ty = x
        .tangent_rows()
        .map(|t| (x.k().unwrap_or(0), panel_product(p, t, None)));
    Ok(Dual::from_rows(x.shape(), y, ty))
}

/// `x·Wᵀ (+ b)` by the panel GEMM, for `F = f32` (the caller checks).
///
/// # Shapes
/// - `x`: `[n, in]`, `b`: `[out]`, result `[n, out]`
fn panel_product<F: Float>(
    p: &PanelWeight,
    x: ArrayView2<'_, F>,
    b: Option<ArrayView1<'_, F>>,
) -> Array2<F> {
    panel_product_threads(p, x, b, crate::parallel::worker_budget())
}

/// [`panel_product`] on at most `threads` threads.
fn panel_product_threads<F: Float>(
    p: &PanelWeight,
    x: ArrayView2<'_, F>,
    b: Option<ArrayView1<'_, F>>,
    threads: usize,
) -> Array2<F> {
    assert_eq!(
        TypeId::of::<F>(),
        TypeId::of::<f32>(),
        "panel_product: F is f32"
    );
    let x = x.as_standard_layout();
    let b = b.as_ref().map(|b| b.as_standard_layout());
    // SAFETY: F is f32 (asserted above), and `x` / `b` are standard-layout arrays of
    // that many f32s, viewed with their own shapes.
    let (x32, b32) = unsafe {
        (
            ArrayView2::<f32>::from_shape_ptr(x.dim(), x.as_ptr().cast::<f32>()),
            b.as_ref()
                .map(|b| ndarray::ArrayView1::<f32>::from_shape_ptr(b.len(), b.as_ptr().cast())),
        )
    };
    let y: Box<dyn Any> = Box::new(p.matmul_t_threads(x32, b32, threads));
    *y.downcast::<Array2<F>>().expect("F is f32")
}

/// `y = x·Wᵀ + b`, `ẏ = ẋ·Wᵀ` over tiles of [`TILE_ROWS`] output rows of `w`, the tiles split
/// between threads.
///
/// Each thread owns a contiguous range of tiles, that is of output columns of `y` and `ẏ`: it
/// widens its tiles one at a time into its own scratch buffer and runs their products serially,
/// so the widening (a quarter of a 4-bit 7B step's time when it ran on one thread) is spread
/// over the cores like the products. For `f32` on a CPU with a panel kernel each widened tile is
/// packed as [`PanelWeight`] panels and multiplied by the panel GEMM, exactly the sums a
/// [`PanelWeight`] of the whole widened matrix computes (tiles are whole panels); otherwise by
/// `matrixmultiply`, exactly the sums of [`linear`] on the widened matrix. Either way the result
/// does not depend on the number of threads.
fn tiled_linear<F: Float, D: Dimension>(
    x: &Dual<F, D>,
    w: &FrozenWeight<F>,
    b: Option<ArrayView1<'_, F>>,
) -> Result<Dual<F, D>> {
    const OP: &str = "frozen_linear";
    let (out_f, in_f) = w.dim();
    check::last_dim(OP, x.shape(), in_f)?;
    if let Some(b) = &b {
        check::exact(OP, b.shape(), &[out_f])?;
    }
    let xr = x.primal_rows();
    let tx = x.tangent_rows();
    let kernel = Kernel::detect().filter(|_| TypeId::of::<F>() == TypeId::of::<f32>());
    let mut y = Array2::<F>::zeros((xr.nrows(), out_f));
    let mut ty = tx.map(|t| Array2::<F>::zeros((t.nrows(), out_f)));
    // tiles [TILE_ROWS, in] of W, in contiguous ranges per thread
    let n_rows = xr.nrows() + tx.map_or(0, |t| t.nrows());
    let tile_ranges = parallel::row_ranges(out_f.div_ceil(TILE_ROWS), TILE_ROWS * n_rows.max(1));
    let columns: Vec<Range<usize>> = tile_ranges
        .iter()
        .map(|r| r.start * TILE_ROWS..(r.end * TILE_ROWS).min(out_f))
        .collect();
    let y_parts = split_columns(y.view_mut(), &columns);
    let ty_parts: Vec<Option<ArrayViewMut2<'_, F>>> = match ty.as_mut() {
        Some(ty) => split_columns(ty.view_mut(), &columns)
            .into_iter()
            .map(Some)
            .collect(),
        None => columns.iter().map(|_| None).collect(),
    };
    let jobs: Vec<_> = columns.into_iter().zip(y_parts).zip(ty_parts).collect();
    parallel::run(jobs, |((cols, mut y_part), mut ty_part)| {
        // this thread's scratch: a widened tile (matrixmultiply path) or a tile's panels
        let (mut scratch, mut storage) = (Vec::new(), Vec::new());
        for o0 in cols.clone().step_by(TILE_ROWS) {
            let o1 = (o0 + TILE_ROWS).min(cols.end);
            let local = o0 - cols.start..o1 - cols.start;
            let b_tile = b.map(|b| b.slice_move(s![o0..o1]));
            let y_tile = y_part.slice_mut(s![.., local.clone()]);
            let ty_tile = ty_part.as_mut().map(|ty| ty.slice_mut(s![.., local]));
            if let Some(k) = kernel {
                // W_tile widened row by row straight into panels, once for the primal and all
                // K·N tangent rows
                let panels =
                    PanelWeight::from_rows(k, (o1 - o0, in_f), std::mem::take(&mut storage), {
                        |r, buf| w.row_into(o0 + r, as_f_mut(buf))
                    })
                    .expect("the kernel was detected on this CPU");
                // y[:, o0..o1] = x · W_tileᵀ + b[o0..o1]; ẏ[:, o0..o1] = ẋ · W_tileᵀ
                assign(y_tile, panel_product_threads(&panels, xr, b_tile, 1));
                if let (Some(t), Some(ty)) = (tx, ty_tile) {
                    assign(ty, panel_product_threads(&panels, t, None, 1));
                }
                storage = panels.into_storage();
            } else {
                // W_tile[o1−o0, in], widened once for the primal and all K·N tangent rows
                let tile = w.tile(o0..o1, &mut scratch);
                tile_product(xr, tile, b_tile, y_tile);
                if let (Some(t), Some(ty)) = (tx, ty_tile) {
                    tile_product(t, tile, None, ty);
                }
            }
        }
    });
    let ty = ty.map(|t| (x.k().unwrap_or(0), t));
    Ok(Dual::from_rows(x.shape(), y, ty))
}

/// `c = a·tileᵀ (+ b)` by `matrixmultiply`, the bias added after the product (as [`linear`]
/// does).
///
/// # Shapes
/// - `a`: `[n, in]`, `tile`: `[t, in]`, `b`: `[t]`, `c`: `[n, t]`
fn tile_product<F: Float>(
    a: ArrayView2<'_, F>,
    tile: ArrayView2<'_, F>,
    b: Option<ArrayView1<'_, F>>,
    mut c: ArrayViewMut2<'_, F>,
) {
    gemm_into(F::one(), a, tile.t(), F::zero(), c.view_mut());
    if let Some(b) = b {
        c += &b;
    }
}

/// `c ← v`.
fn assign<F: Float>(mut c: ArrayViewMut2<'_, F>, v: Array2<F>) {
    c.assign(&v);
}

/// Splits `v` `[n, m]` into the column ranges `columns` (contiguous, increasing, covering `m`).
fn split_columns<'a, F>(
    mut v: ArrayViewMut2<'a, F>,
    columns: &[Range<usize>],
) -> Vec<ArrayViewMut2<'a, F>> {
    let mut parts = Vec::with_capacity(columns.len());
    for r in columns {
        let (head, tail) = v.split_at(Axis(1), r.len());
        parts.push(head);
        v = tail;
    }
    parts
}

/// `buf` as `F` values (the caller checked that `F` is `f32`; any other type is a bug).
fn as_f_mut<F: Float>(buf: &mut [f32]) -> &mut [F] {
    assert_eq!(TypeId::of::<F>(), TypeId::of::<f32>(), "as_f_mut: F is f32");
    // SAFETY: F is f32, so the slice's elements are F values of the same size and alignment.
    unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<F>(), buf.len()) }
}

/// Reference twin of [`frozen_linear`]: widens the whole weight, then [`linear`]. For tests.
///
/// # Errors
/// As [`frozen_linear`].
pub fn frozen_linear_reference<F: Float, D: Dimension>(
    x: &Dual<F, D>,
    w: &FrozenWeight<F>,
    b: Option<ArrayView1<'_, F>>,
) -> Result<Dual<F, D>> {
    linear(x, w.to_dense().view(), b)
}
