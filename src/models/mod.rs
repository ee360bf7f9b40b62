//! Transformer models built from the kernels, each with one forward pass over [`Dual`](crate::Dual)
//! values: with no directions it is the plain forward (symbolic-zero tangents cost nothing), with
//! K directions on some trainable parameters it also returns one JVP scalar per direction.

pub mod adapted;
pub mod bert;
pub mod llama;
pub mod microbatch;
pub mod pretrained;
pub mod source;
pub mod weight_path;

pub use adapted::{AdaptedModel, PEFT_PREFIX};
pub use source::{WeightFormat, WeightSource};
pub use weight_path::{Adapters, WeightPath};

use ndarray::ArrayView2;

use crate::Float;

/// Index of the largest entry of every row (the first one on ties).
///
/// # Shapes
/// - `x`: `[N, C]` → `N` indices
pub fn argmax_rows<F: Float>(x: ArrayView2<'_, F>) -> Vec<usize> {
    x.rows()
        .into_iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .fold((0, F::neg_infinity()), |(bi, bv), (i, &v)| {
                    if v > bv { (i, v) } else { (bi, bv) }
                })
                .0
        })
        .collect()
}
