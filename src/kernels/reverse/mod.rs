//! Reverse-mode (vector-Jacobian) rules, primal only: given an op's saved inputs and the
//! gradient `dy = ∂L/∂y` of its output, each returns `∂L/∂x = Jᵀ·dy` for its inputs (and for a
//! LoRA layer the gradients of the adapter's factors).
//!
//! spry's passes are forward mode; these rules exist for the one place that reverses a few
//! layers: the exact gradient of the top encoder layers' adapters
//! (`models::bert::BertClassifier::with_exact_top_layers`), whose memory is those layers'
//! activations, recomputed from their saved inputs. No tangents are involved: every argument
//! is a plain array.
//!
//! - [`layer_norm_backward`]: `dx = r·(dx̂ − mean(dx̂) − x̂·mean(dx̂⊙x̂))`, `dx̂ = dy⊙γ`;
//! - [`gelu_backward`], [`tanh_backward`]: `dx = g′(x)⊙dy`;
//! - [`attention_backward`]: `dV = Pᵀ·dO`, `dS = P⊙(dO·Vᵀ − rowsum(P⊙dO·Vᵀ))`, `dQ = τ·dS·K`,
//!   `dK = τ·dSᵀ·Q`;
//! - [`frozen_linear_backward`] (`dx = dy·W`, a packed `W` widened a tile at a time) and
//!   [`lora_backward`] (`dB = s·dyᵀ·(x·Aᵀ)`, `dA = s·(dy·B)ᵀ·x`, `dx += s·(dy·B)·A`);
//! - [`mean_pool_backward`], [`first_token_pool_backward`].
//!
//! The tests check every rule against f64 central differences of `⟨dy, f(x)⟩` and, through the
//! adjoint identity `⟨dy, J·v⟩ = ⟨Jᵀ·dy, v⟩`, against the forward-mode kernel of the same op.

mod activation;
mod attention;
mod layer_norm;
mod linear;
mod pooling;

pub use activation::{gelu_backward, tanh_backward};
pub use attention::{AttentionGrads, attention_backward};
pub use layer_norm::layer_norm_backward;
pub use linear::{LoraGrads, frozen_linear_backward, lora_backward};
pub use pooling::{first_token_pool_backward, mean_pool_backward};
