//! Forward-mode (JVP) kernels for every transformer op.
//!
//! Each kernel takes [`Dual`](crate::Dual) inputs and returns the exact primal output plus the K
//! output tangents. They share one structure, after llm.c: check shapes, compute the primal and
//! the primal factors the tangent rule reuses (softmax probabilities, norm statistics, activation
//! derivatives), then run the tangent part, which is linear in the input tangents, once for all K
//! directions (stacked into the rows of one GEMM where the op is a matrix product). Symbolic-zero
//! tangents are skipped. Every fast kernel has a naive `*_reference` twin used by the tests.
//!
//! [`reverse`] holds the few reverse-mode rules (primal only) that the exact gradient of the top
//! encoder layers needs.

pub mod activation;
pub mod attention;
#[cfg(feature = "openblas")]
mod blas;
mod buffer;
mod check;
pub mod cross_entropy;
pub mod elementwise;
pub mod embedding;
mod exp;
pub mod frozen;
pub mod frozen_linear;
pub mod gemm;
pub mod layer_norm;
pub mod linear;
pub mod lm_head_loss;
pub mod lora;
pub mod panel_gemm;
pub mod pooling;
pub mod reverse;
pub mod rms_norm;
pub mod rope;
pub mod softmax;

pub use activation::{
    GeluKind, gelu, gelu_into, gelu_reference, silu, silu_reference, swiglu, swiglu_into,
    swiglu_reference, tanh, tanh_reference,
};
pub use attention::{AttentionShape, attention, attention_reference, attention_with_threads};
pub use cross_entropy::{
    CrossEntropy, cross_entropy, cross_entropy_logit_grad, cross_entropy_logit_grad_reference,
    cross_entropy_reference, cross_entropy_with_grad,
};
pub use elementwise::{add, add_into, add_reference};
pub use embedding::{
    embedding, embedding_dual, embedding_dual_reference, embedding_frozen, embedding_reference,
};
pub use frozen::{FrozenWeight, PanelCache};
pub use frozen_linear::{TILE_ROWS, frozen_linear, frozen_linear_panels, frozen_linear_reference};
pub use layer_norm::{
    layer_norm, layer_norm_dual, layer_norm_dual_reference, layer_norm_reference,
};
pub use linear::{
    linear, linear_dual, linear_dual_reference, linear_reference, matmul, matmul_reference,
};
pub use lm_head_loss::{VOCAB_TILE, lm_head_cross_entropy};
pub use lora::{lora_frozen_linear, lora_frozen_linear_panels, lora_linear, lora_linear_reference};
pub use pooling::{first_token_pool, first_token_pool_reference, mean_pool, mean_pool_reference};
pub use rms_norm::{rms_norm, rms_norm_dual, rms_norm_dual_reference, rms_norm_reference};
pub use rope::{RopeLayout, RopeTable, rope, rope_reference};
pub use softmax::{log_softmax, log_softmax_reference, softmax, softmax_reference};
