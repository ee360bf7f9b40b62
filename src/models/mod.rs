//! Transformer models built from the kernels, each with one forward pass over [`Dual`](crate::Dual)
//! values: with no directions it is the plain forward (symbolic-zero tangents cost nothing), with
//! K directions on some trainable parameters it also returns one JVP scalar per direction.

pub mod adapted;
pub mod bert;
pub mod llama;
pub mod microbatch;
pub mod pretrained;
pub mod source;

pub use adapted::{AdaptedModel, PEFT_PREFIX};
pub use source::{WeightFormat, WeightSource};
