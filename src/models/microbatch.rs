//! Micro-batching: a model whose batch elements never interact (every layer is position-wise or
//! attends within one sequence) runs a long batch a few sequences at a time, so its widest
//! intermediates (the `[rows, ffn]` feed-forward activations, the q/k/v projections, each with K
//! tangents) exist for one chunk only. Results equal the whole-batch pass row for row.
//!
//! ```text
//! per = max(1, max_rows / T);  for b0 in (0..B).step_by(per):  Y[b0..b0+per] = f(X[b0..b0+per])
//! ```

use std::ops::Range;

use ndarray::{Array3, Array4, Ix3, s};

use crate::modules::DropoutKey;
use crate::{Dual, Error, Float, Result};

/// Default row budget of one chunk (sequences × positions): MiniLM's feed-forward at K = 1 then
/// holds `2·2·1024·1536·4` B = 24 MiB at once, and a batch of 8 × 128 runs as a single chunk.
pub const DEFAULT_MAX_ROWS: usize = 1024;

/// Default budget of one chunk's widest activation `[rows, width]` (the feed-forward's inner
/// width): 8 Mi values, 32 MiB in f32, per tensor and per tangent direction.
pub const DEFAULT_MAX_ACTIVATION: usize = 8 << 20;

/// The default row budget of a model whose widest activation has `width` columns:
/// `clamp(DEFAULT_MAX_ACTIVATION / width, 1, DEFAULT_MAX_ROWS)`. MiniLM, SmolLM2 (`width` 1536)
/// and any model up to `width` 8192 get [`DEFAULT_MAX_ROWS`]; Llama-2-7B (`width` 11008) gets 762
/// rows, so a batch of 256-token sequences runs two at a time and its feed-forward
/// activations stay near 32 MiB each instead of 43 MiB.
pub fn default_max_rows(width: usize) -> usize {
    (DEFAULT_MAX_ACTIVATION / width.max(1)).clamp(1, DEFAULT_MAX_ROWS)
}

/// Runs `f` over the micro-batches of a batch of `b` sequences of length `t` (ranges of at most
/// `max_rows` rows, at least one sequence each) and stacks their `[b', T, H]` results along the
/// batch axis. `f` receives each range and its dropout key: the pass's key when the batch is a
/// single micro-batch, else the key with the micro-batch index appended, so that every
/// micro-batch draws its own masks.
///
/// # Shapes
/// - each `f(range, key)`: `[range.len(), T, H]`, the same T, H and tangent count for every range
/// - output: `[b, T, H]`
///
/// # Errors
/// `f`'s errors; [`Error::ShapeMismatch`] if two micro-batches disagree on T, H or K.
pub fn map_micro_batches<F: Float>(
    b: usize,
    t: usize,
    max_rows: usize,
    dropout: Option<&DropoutKey>,
    mut f: impl FnMut(Range<usize>, Option<&DropoutKey>) -> Result<Dual<F, Ix3>>,
) -> Result<Dual<F, Ix3>> {
    let per = (max_rows / t.max(1)).max(1);
    if per >= b {
        return f(0..b, dropout);
    }
    let ranges: Vec<Range<usize>> = (0..b)
        .step_by(per)
        .map(|b0| b0..(b0 + per).min(b))
        .collect();
    stack_chunks(&ranges, |range, c| {
        let key = dropout.map(|k| {
            let mut k = k.clone();
            k.parts.push(c as u64);
            k
        });
        f(range, key.as_ref())
    })
}

/// Runs `f` on each batch range of `ranges` (with its index) and stacks the `[b, T, H]` results (and their
/// `[K, b, T, H]` tangents) along the batch axis into one `[B, T, H]` dual value.
///
/// # Shapes
/// - each `f(range, c)`: `[range.len(), T, H]`, the same T, H and tangent count for every chunk
/// - output: `[B, T, H]`, B = the end of the last range
///
/// # Errors
/// `f`'s errors; [`Error::ShapeMismatch`] if two chunks disagree on T, H or K.
fn stack_chunks<F: Float>(
    ranges: &[Range<usize>],
    mut f: impl FnMut(Range<usize>, usize) -> Result<Dual<F, Ix3>>,
) -> Result<Dual<F, Ix3>> {
    const OP: &str = "microbatch::stack_chunks";
    let b = ranges.last().map_or(0, |r| r.end);
    let mut out: Option<(Array3<F>, Option<Array4<F>>)> = None;
    for (c, range) in ranges.iter().enumerate() {
        let (yp, yt) = f(range.clone(), c)?.into_parts();
        let (_, t, h) = yp.dim();
        let (op, ot) = out.get_or_insert_with(|| {
            (
                Array3::zeros((b, t, h)),
                yt.as_ref().map(|yt| Array4::zeros((yt.dim().0, b, t, h))),
            )
        });
        if op.dim().1 != t || op.dim().2 != h {
            return Err(Error::shape(
                OP,
                format!("[_, {}, {}]", op.dim().1, op.dim().2),
                yp.shape(),
            ));
        }
        op.slice_mut(s![range.clone(), .., ..]).assign(&yp);
        match (ot.as_mut(), yt) {
            (None, None) => {}
            (Some(ot), Some(yt)) if yt.dim().0 == ot.dim().0 => {
                ot.slice_mut(s![.., range.clone(), .., ..]).assign(&yt);
            }
            (ot, yt) => {
                return Err(Error::shape(
                    OP,
                    format!("tangents {:?}", ot.map(|t| t.dim().0)),
                    yt.as_ref().map_or(&[][..], |t| t.shape()),
                ));
            }
        }
    }
    let (p, t) = out.unwrap_or_else(|| (Array3::zeros((0, 0, 0)), None));
    Dual::with_tangent(p, t)
}
