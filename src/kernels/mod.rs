//! Forward-mode (JVP) kernels for every transformer op.
//!
//! Each kernel takes [`Dual`](crate::Dual) inputs and returns the exact primal output plus the K
//! output tangents. They share one structure, after llm.c: check shapes, compute the primal and
//! the primal factors the tangent rule reuses (softmax probabilities, norm statistics, activation
//! derivatives), then run the tangent part, which is linear in the input tangents, once for all K
//! directions (stacked into the rows of one GEMM where the op is a matrix product). Symbolic-zero
//! tangents are skipped. Every fast kernel has a naive `*_reference` twin used by the tests.

pub mod activation;
mod check;
pub mod gemm;
pub mod layer_norm;
pub mod linear;
pub mod rms_norm;

pub use activation::{
    GeluKind, gelu, gelu_reference, silu, silu_reference, swiglu, swiglu_reference, tanh,
    tanh_reference,
};
pub use layer_norm::{
    layer_norm, layer_norm_dual, layer_norm_dual_reference, layer_norm_reference,
};
pub use linear::{
    linear, linear_dual, linear_dual_reference, linear_reference, matmul, matmul_reference,
};
pub use rms_norm::{rms_norm, rms_norm_dual, rms_norm_dual_reference, rms_norm_reference};
