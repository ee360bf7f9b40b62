//! Token-embedding lookup.
//!
//! - [`embedding`]: frozen table; the output tangent is the symbolic zero (ids carry no tangent).
//! - [`embedding_dual`]: dual table; `ẏ[b, t] = Ė[ids[b, t]]`, the same gather on every direction.
//! - [`embedding_frozen`]: frozen table that may be packed; only the rows looked up are widened.
//!
//! Position and token-type embeddings are the same lookup with position or segment ids; add the
//! results with [`add`](super::add).

use ndarray::{Array2, Array3, Array4, ArrayView2, Axis, Ix2, Ix3};

use super::frozen::FrozenWeight;
use crate::{Dual, Error, Float, Result};

/// Embedding lookup in a frozen table: `y[b, t, :] = E[ids[b, t], :]`, `ẏ = 0` (symbolic zero).
///
/// # Shapes
/// - `ids`: `[B, T]`, `table`: `[vocab, H]`, output `[B, T, H]`
///
/// # Errors
/// [`Error::InvalidArgument`] naming the offending id, its position and the vocabulary size if
/// an id is `≥ vocab`.
pub fn embedding<F: Float>(
    ids: ArrayView2<'_, u32>,
    table: ArrayView2<'_, F>,
) -> Result<Dual<F, Ix3>> {
    const OP: &str = "embedding";
    check_ids(OP, ids, table.nrows())?;
    let (bsz, t) = ids.dim();
    // y[B·T, H] = E[ids]
    let y = gather_rows(ids, table);
    Ok(Dual::from_rows(&[bsz, t, table.ncols()], y, None))
}

/// Embedding lookup in a frozen table that may be packed: `y[b, t, :] = E[ids[b, t], :]`, `ẏ = 0`
/// (symbolic zero). A dense table is [`embedding`]; a packed one widens only the rows looked up,
/// straight into the output (the values [`FrozenWeight::to_dense`] would hold).
///
/// # Shapes
/// - `ids`: `[B, T]`, `table`: `[vocab, H]`, output `[B, T, H]`
///
/// # Errors
/// As [`embedding`].
pub fn embedding_frozen<F: Float>(
    ids: ArrayView2<'_, u32>,
    table: &FrozenWeight<F>,
) -> Result<Dual<F, Ix3>> {
    const OP: &str = "embedding_frozen";
    let (vocab, h) = table.dim();
    if let FrozenWeight::Dense(t) = table {
        return embedding(ids, t.view());
    }
    check_ids(OP, ids, vocab)?;
    let (bsz, t) = ids.dim();
    // y[B·T, H] = E[ids], one widened row each
    let mut y = Array2::zeros((bsz * t, h));
    for (mut row, &id) in y.rows_mut().into_iter().zip(ids.iter()) {
        table.row_into(id as usize, row.as_slice_mut().expect("standard layout"));
    }
    Ok(Dual::from_rows(&[bsz, t, h], y, None))
}

/// Embedding lookup in a dual table: `y[b, t, :] = E[ids[b, t], :]`,
/// `ẏ_k[b, t, :] = Ė_k[ids[b, t], :]`.
///
/// A constant table gives a symbolic-zero output tangent, as [`embedding`].
///
/// # Shapes
/// - `ids`: `[B, T]`, `table`: `[vocab, H]` (tangent `[K, vocab, H]`), output `[B, T, H]`
///   (tangent `[K, B, T, H]`)
///
/// # Errors
/// As [`embedding`].
pub fn embedding_dual<F: Float>(
    ids: ArrayView2<'_, u32>,
    table: &Dual<F, Ix2>,
) -> Result<Dual<F, Ix3>> {
    const OP: &str = "embedding_dual";
    let (vocab, h) = table.primal().dim();
    check_ids(OP, ids, vocab)?;
    let (bsz, t) = ids.dim();
    let bt = bsz * t;
    // y[B·T, H] = E[ids]
    let y = gather_rows(ids, table.primal().view());
    // ẏ[K·B·T, H]: block k = Ė_k[ids]
    let ty = table.tangent().map(|te| {
        let k = te.shape()[0];
        let mut ty = Array2::zeros((k * bt, h));
        for kk in 0..k {
            let tek = te.index_axis(Axis(0), kk);
            for (row, &id) in ids.iter().enumerate() {
                ty.row_mut(kk * bt + row).assign(&tek.row(id as usize));
            }
        }
        (k, ty)
    });
    Ok(Dual::from_rows(&[bsz, t, h], y, ty))
}

/// Checks that every id is below `vocab`.
fn check_ids(op: &'static str, ids: ArrayView2<'_, u32>, vocab: usize) -> Result<()> {
    for ((b, t), &id) in ids.indexed_iter() {
        if id as usize >= vocab {
            return Err(Error::invalid(
                op,
                format!("token id {id} at [{b}, {t}] is out of range for a vocabulary of {vocab}"),
            ));
        }
    }
    Ok(())
}

/// `out[b·T + t, :] = table[ids[b, t], :]` (ids already checked).
fn gather_rows<F: Float>(ids: ArrayView2<'_, u32>, table: ArrayView2<'_, F>) -> Array2<F> {
    let mut out = Array2::zeros((ids.len(), table.ncols()));
    for (row, &id) in ids.iter().enumerate() {
        out.row_mut(row).assign(&table.row(id as usize));
    }
    out
}

// ---- naive reference twins (loops, one direction at a time) -------------------------------------

/// Naive twin of [`embedding`]: element loops. For tests.
///
/// # Errors
/// As [`embedding`].
pub fn embedding_reference<F: Float>(
    ids: ArrayView2<'_, u32>,
    table: ArrayView2<'_, F>,
) -> Result<Dual<F, Ix3>> {
    embedding_dual_reference(ids, &Dual::constant(table.to_owned()))
}

/// Naive twin of [`embedding_dual`]: element loops, one direction at a time. For tests.
///
/// # Errors
/// As [`embedding_dual`].
pub fn embedding_dual_reference<F: Float>(
    ids: ArrayView2<'_, u32>,
    table: &Dual<F, Ix2>,
) -> Result<Dual<F, Ix3>> {
    const OP: &str = "embedding_dual_reference";
    let (vocab, h) = table.primal().dim();
    let (bsz, t) = ids.dim();
    let mut y = Array3::zeros((bsz, t, h));
    for b in 0..bsz {
        for tt in 0..t {
            let id = ids[[b, tt]] as usize;
            if id >= vocab {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "token id {id} at [{b}, {tt}] is out of range for a vocabulary of {vocab}"
                    ),
                ));
            }
            for j in 0..h {
                y[[b, tt, j]] = table.primal()[[id, j]];
            }
        }
    }
    let ty = table.tangent().map(|te| {
        let k = te.shape()[0];
        let mut ty = Array4::zeros((k, bsz, t, h));
        for kk in 0..k {
            for b in 0..bsz {
                for tt in 0..t {
                    let id = ids[[b, tt]] as usize;
                    for j in 0..h {
                        ty[[kk, b, tt, j]] = te[[kk, id, j]];
                    }
                }
            }
        }
        ty
    });
    Dual::with_tangent(y, ty)
}
