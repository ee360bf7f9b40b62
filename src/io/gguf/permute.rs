//! Undoing llama.cpp's per-head permutation of the q/k projection rows, so GGUF weights can be
//! used under Hugging Face names with rotate-half RoPE.

use ndarray::Array2;

use crate::packed::PackedMatrix;
use crate::{Error, Result};

/// Undoes llama.cpp's per-head permutation of the q/k projection rows, giving the Hugging Face
/// layout that rotate-half RoPE expects.
///
/// llama.cpp's converter reorders each head's rows so that interleaved RoPE (pairs `2i, 2i+1`)
/// applies; this is the inverse: `reshape(n_heads, head_dim/2, 2, in) → swap axes 1, 2 →
/// reshape(out, in)`, i.e. output row `h·hd + t·hd/2 + i` is input row `h·hd + 2i + t`.
/// Use `n_heads` = the query head count for `attn_q`, the KV head count for `attn_k`.
///
/// # Shapes
/// - `w`: `[n_heads·head_dim, in]` with `head_dim` even; output: the same
///
/// # Errors
/// [`Error::InvalidArgument`] if `n_heads` is zero or does not divide the row count into heads
/// of even size.
pub fn unpermute_rope_rows(w: Array2<f32>, n_heads: usize) -> Result<Array2<f32>> {
    let order = rope_unpermute_order(w.nrows(), n_heads)?;
    let mut out = Array2::zeros(w.dim());
    for (dst, &src) in order.iter().enumerate() {
        out.row_mut(dst).assign(&w.row(src));
    }
    Ok(out)
}

/// [`unpermute_rope_rows`] on a packed matrix, without copying it: the result shares `w`'s bytes
/// (a memory-mapped matrix stays in the map) and carries the row order
/// ([`PackedMatrix::permute_rows`]; blocks run along the input dimension, so rows are
/// independent). Nothing is widened. It decodes equal to `w.select_rows(order)`.
///
/// # Shapes
/// - `w`: `[n_heads·head_dim, in]` with `head_dim` even; output: the same
///
/// # Errors
/// As [`unpermute_rope_rows`].
pub fn unpermute_rope_rows_packed(w: &PackedMatrix, n_heads: usize) -> Result<PackedMatrix> {
    let order = rope_unpermute_order(w.rows(), n_heads)?;
    w.permute_rows(&order)
}

/// The source row of every output row of the q/k un-permutation: output row
/// `h·hd + t·hd/2 + i` is input row `h·hd + 2i + t`.
fn rope_unpermute_order(rows: usize, n_heads: usize) -> Result<Vec<usize>> {
    const OP: &str = "unpermute_rope_rows";
    if n_heads == 0 || !rows.is_multiple_of(n_heads) || !(rows / n_heads).is_multiple_of(2) {
        return Err(Error::invalid(
            OP,
            format!("{rows} rows do not split into {n_heads} heads of even size"),
        ));
    }
    let head_dim = rows / n_heads;
    let half = head_dim / 2;
    let mut order = vec![0; rows];
    for h in 0..n_heads {
        let base = h * head_dim;
        for i in 0..half {
            for t in 0..2 {
                order[base + t * half + i] = base + 2 * i + t;
            }
        }
    }
    Ok(order)
}
