//! Llama's feed-forward network: a SwiGLU of two projections, then a down projection.
//!
//! ```text
//! m = Down(SiLU(Gate h) ⊙ Up h)      h = RMS(x), from the block
//! ```

use ndarray::Ix3;

use crate::io::LlamaConfig;
use crate::kernels::swiglu_into;
use crate::models::{Adapters, WeightPath};
use crate::modules::{FrozenLinear, Pass};
use crate::{Dual, Float, Result};

/// The MLP of one block (`mlp.{gate,up,down}_proj`), each projection possibly adapted.
#[derive(Clone, Debug)]
pub struct Mlp<F: Float> {
    gate: FrozenLinear<F>,
    up: FrozenLinear<F>,
    down: FrozenLinear<F>,
}

impl<F: Float> Mlp<F> {
    /// Loads `gate_proj`, `up_proj` `[ffn, H]` and `down_proj` `[H, ffn]` from `vb` (the `mlp`
    /// module), with biases when `mlp_bias` is set, registering the adapters `adapters` targets
    /// in that order.
    ///
    /// # Errors
    /// Missing or mis-shaped tensors; as [`Adapters::adapt`].
    pub fn load(
        mut vb: WeightPath<'_>,
        cfg: &LlamaConfig,
        adapters: &mut Adapters<'_, F>,
    ) -> Result<Self> {
        let (h, ffn, bias) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        Ok(Mlp {
            gate: adapters.adapt(vb.pp("gate_proj").linear(ffn, h, bias)?)?,
            up: adapters.adapt(vb.pp("up_proj").linear(ffn, h, bias)?)?,
            down: adapters.adapt(vb.pp("down_proj").linear(h, ffn, bias)?)?,
        })
    }

    /// `Down(SiLU(Gate h) ⊙ Up h)`, consuming the normalised input `h`.
    ///
    /// # Shapes
    /// - `h`: `[B, T, H]` → `[B, T, H]` (through `[B, T, ffn]`)
    ///
    /// # Errors
    /// Shape and tangent-count errors of the kernels.
    pub fn forward(&self, h: Dual<F, Ix3>, pass: &Pass<'_, F>) -> Result<Dual<F, Ix3>> {
        let g = self.gate.forward(&h, pass)?;
        let u = self.up.forward(&h, pass)?;
        drop(h);
        // the gate's tangents become the activation's in place
        let act = swiglu_into(g, &u)?;
        drop(u);
        self.down.forward(&act, pass)
    }

    /// The three projections, in registration order.
    pub fn linears(&self) -> [&FrozenLinear<F>; 3] {
        [&self.gate, &self.up, &self.down]
    }

    /// [`linears`](Self::linears), mutably.
    pub fn linears_mut(&mut self) -> [&mut FrozenLinear<F>; 3] {
        [&mut self.gate, &mut self.up, &mut self.down]
    }
}
