//! One Llama decoder block (pre-norm): attention then MLP, each on an RMS-normalised input and
//! added back to the residual stream.
//!
//! ```text
//! x = x + Attn(RMS(x))          (attention.rs)
//! x = x + Mlp(RMS(x))           (mlp.rs)
//! ```

use ndarray::Ix3;

use super::attention::{Attention, LayerCache, Positions};
use super::mlp::Mlp;
use crate::io::LlamaConfig;
use crate::kernels::add;
use crate::models::{Adapters, WeightPath};
use crate::modules::norm::RmsNorm;
use crate::modules::{FrozenLinear, Pass};
use crate::{Dual, Float, Result};

/// One decoder block (`model.layers.{l}`).
#[derive(Clone, Debug)]
pub struct Block<F: Float> {
    attn_norm: RmsNorm<F>,
    attn: Attention<F>,
    ffn_norm: RmsNorm<F>,
    mlp: Mlp<F>,
}

impl<F: Float> Block<F> {
    /// Loads `input_layernorm`, `self_attn.*`, `post_attention_layernorm` and `mlp.*` from `vb`
    /// (`model.layers.{l}`), registering adapters for q, k, v, o, gate, up, down in that order.
    ///
    /// # Errors
    /// Missing or mis-shaped tensors; as [`Adapters::adapt`].
    pub fn load(
        mut vb: WeightPath<'_>,
        cfg: &LlamaConfig,
        adapters: &mut Adapters<'_, F>,
    ) -> Result<Self> {
        let (h, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        Ok(Block {
            attn_norm: vb.pp("input_layernorm").rms_norm(h, eps)?,
            attn: Attention::load(vb.pp("self_attn"), cfg, adapters)?,
            ffn_norm: vb.pp("post_attention_layernorm").rms_norm(h, eps)?,
            mlp: Mlp::load(vb.pp("mlp"), cfg, adapters)?,
        })
    }

    /// The block's output, consuming its input `x` (the residual stream); with `cache`, this
    /// block's keys and values are appended to it.
    ///
    /// # Shapes
    /// - `x`: `[B, T, H]` → `[B, T, H]`
    ///
    /// # Errors
    /// Shape and tangent-count errors of the kernels.
    pub fn forward(
        &self,
        mut x: Dual<F, Ix3>,
        pass: &Pass<'_, F>,
        pos: &Positions<'_, F>,
        cache: Option<&mut LayerCache<F>>,
    ) -> Result<Dual<F, Ix3>> {
        // attention: x = x + O·Attn(RoPE(Qh), RoPE(Kh), Vh), h = RMS(x)
        let a = self
            .attn
            .forward(self.attn_norm.forward(&x)?, pass, pos, cache)?;
        x = add(&x, &a)?;
        drop(a);
        // feed-forward: x = x + Down(SiLU(Gate h) ⊙ Up h), h = RMS(x)
        let m = self.mlp.forward(self.ffn_norm.forward(&x)?, pass)?;
        add(&x, &m)
    }

    /// Bytes held by the block's frozen matrices, biases and norm gains.
    pub fn frozen_bytes(&self) -> usize {
        self.linears().map(FrozenLinear::n_bytes).sum::<usize>()
            + self.attn_norm.n_bytes()
            + self.ffn_norm.n_bytes()
    }

    /// The seven projections, in registration order.
    pub fn linears(&self) -> impl Iterator<Item = &FrozenLinear<F>> {
        self.attn.linears().into_iter().chain(self.mlp.linears())
    }

    /// [`linears`](Self::linears), mutably.
    pub fn linears_mut(&mut self) -> impl Iterator<Item = &mut FrozenLinear<F>> {
        self.attn
            .linears_mut()
            .into_iter()
            .chain(self.mlp.linears_mut())
    }
}
