//! Linear layer over a [`FrozenWeight`]: `y = x·Wᵀ + b`, `ẏ = ẋ·Wᵀ`, with a packed `W` widened one
//! tile of output rows at a time.
//!
//! For each tile of [`TILE_ROWS`] output features, the rows `W[o0..o1, :]` are widened once into a
//! reusable scratch buffer and serve two GEMMs: the N primal rows, `y[:, o0..o1] = x·W_tileᵀ`, and
//! all K·N stacked tangent rows, `ẏ[:, o0..o1] = ẋ·W_tileᵀ`. Widening costs `O(out·in)` per call,
//! amortised over `N·(1+K)` rows; the full float matrix never exists (the scratch holds
//! `TILE_ROWS × in` values). A dense weight goes straight to [`linear`].

use std::any::{Any, TypeId};

use ndarray::{Array2, ArrayView1, ArrayView2, Dimension, s};

use super::check;
use super::frozen::FrozenWeight;
use super::gemm::gemm_into;
use super::linear::linear;
use super::panel_gemm::PanelWeight;
use crate::{Dual, Float, Result};

/// Output rows of a packed weight widened at a time (a tile of `TILE_ROWS × in` values: 1.1 MiB
/// in f32 for `in = 576`). Large tiles matter: the GEMM packs the activations `x` (and `ẋ`)
/// again for every tile, `out / TILE_ROWS` times per product.
pub const TILE_ROWS: usize = 512;

/// Linear layer with a frozen, possibly packed, weight: `y = x·Wᵀ + b`, `ẏ = ẋ·Wᵀ`.
///
/// A dense weight is [`linear`] itself. A packed weight is widened [`TILE_ROWS`] rows at a time;
/// each widened tile is used by the primal rows and by all K stacked tangent rows before the next
/// one is widened. Every output element is the same GEMM dot product as with the widened matrix
/// (tiles split the output columns, not the inner dimension), so the result equals
/// `linear(x, W.to_dense(), b)` bit for bit.
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
    let y: Box<dyn Any> = Box::new(p.matmul_t(x32, b32));
    *y.downcast::<Array2<F>>().expect("F is f32")
}

/// `y = x·Wᵀ + b`, `ẏ = ẋ·Wᵀ` over tiles of [`TILE_ROWS`] output rows of `w`.
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
    let mut y = Array2::<F>::zeros((xr.nrows(), out_f));
    let mut ty = tx.map(|t| Array2::<F>::zeros((t.nrows(), out_f)));
    let mut scratch = Vec::new();
    for o0 in (0..out_f).step_by(TILE_ROWS) {
        let o1 = (o0 + TILE_ROWS).min(out_f);
        // W_tile[o1−o0, in], widened once for the primal and all K·N tangent rows
        let tile = w.tile(o0..o1, &mut scratch);
        // y[:, o0..o1] = x · W_tileᵀ
        gemm_into(
            F::one(),
            xr,
            tile.t(),
            F::zero(),
            y.slice_mut(s![.., o0..o1]),
        );
        // ẏ[:, o0..o1] = ẋ · W_tileᵀ (K·N stacked rows)
        if let (Some(t), Some(ty)) = (tx, ty.as_mut()) {
            gemm_into(
                F::one(),
                t,
                tile.t(),
                F::zero(),
                ty.slice_mut(s![.., o0..o1]),
            );
        }
    }
    if let Some(b) = b {
        y += &b;
    }
    let ty = ty.map(|t| (x.k().unwrap_or(0), t));
    Ok(Dual::from_rows(x.shape(), y, ty))
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
