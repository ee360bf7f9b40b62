//! One BERT encoder layer (post-LayerNorm): a self-attention sub-block then a feed-forward
//! sub-block, each closed by a residual and a LayerNorm.
//!
//! ```text
//! a = Attn(q(x), k(x), v(x), mask);  x = LN(x + o(a))           (SelfAttention)
//! x = LN(x + out(GELU(inter(x))))                                (FeedForward)
//! ```
//! Each of the six linear layers may carry a LoRA adapter (PEFT's suffix match on `query`, `key`,
//! `value`, `attention.output.dense`, `intermediate.dense`, `output.dense`).
//!
//! Each sub-block and the layer also have a reverse pass (`backward`, in `layer/reverse.rs`) that
//! recomputes the primal forward from the saved input and returns the input gradient and the
//! adapters' gradients: the exact gradient of the top layers' adapters.

mod reverse;

use ndarray::{ArrayView2, Ix3};

use crate::io::{Activation, BertConfig};
use crate::kernels::{AttentionShape, GeluKind, add_into, attention, gelu_into};
use crate::models::{Adapters, WeightPath};
use crate::modules::norm::LayerNorm;
use crate::modules::{FrozenLinear, Pass};
use crate::{Dual, Error, Float, Result};

/// The FFN activation `config.hidden_act` names: `gelu` (exact, erf) or `gelu_new` /
/// `gelu_pytorch_tanh` (tanh approximation).
///
/// # Errors
/// [`Error::InvalidArgument`] for any other activation.
pub fn gelu_kind(config: &BertConfig) -> Result<GeluKind> {
    match config.hidden_act {
        Activation::Gelu => Ok(GeluKind::Erf),
        Activation::GeluTanh => Ok(GeluKind::Tanh),
        other => Err(Error::invalid(
            "Bert::load",
            format!("hidden_act {other:?} is not supported (only gelu and gelu_new)"),
        )),
    }
}

/// The self-attention sub-block: `x ← LN(x + O·Attn(Qx, Kx, Vx, mask))` (`attention.*`).
#[derive(Clone, Debug)]
pub struct SelfAttention<F: Float> {
    query: FrozenLinear<F>,
    key: FrozenLinear<F>,
    value: FrozenLinear<F>,
    output: FrozenLinear<F>,
    norm: LayerNorm<F>,
    shape: AttentionShape,
}

impl<F: Float> SelfAttention<F> {
    /// Loads `self.{query,key,value}`, `output.dense` and `output.LayerNorm` from `vb` (the
    /// `attention` module), registering the adapters `adapters` targets in that order.
    ///
    /// # Errors
    /// Missing or mis-shaped tensors; as [`Adapters::adapt`].
    pub fn load(
        mut vb: WeightPath<'_>,
        cfg: &BertConfig,
        adapters: &mut Adapters<'_, F>,
    ) -> Result<Self> {
        let (h, heads) = (cfg.hidden_size, cfg.num_attention_heads);
        Ok(SelfAttention {
            query: adapters.adapt(vb.pp("self.query").linear(h, h, true)?)?,
            key: adapters.adapt(vb.pp("self.key").linear(h, h, true)?)?,
            value: adapters.adapt(vb.pp("self.value").linear(h, h, true)?)?,
            output: adapters.adapt(vb.pp("output.dense").linear(h, h, true)?)?,
            norm: vb
                .pp("output.LayerNorm")
                .layer_norm(h, cfg.layer_norm_eps)?,
            shape: AttentionShape {
                n_heads: heads,
                n_kv_heads: heads,
                head_dim: h / heads,
                causal: false,
            },
        })
    }

    /// `LN(x + O·Attn(Qx, Kx, Vx, mask))`, consuming `x`.
    ///
    /// # Shapes
    /// - `x`: `[B, T, H]`, `mask`: `[B, T]` (true = real token) → `[B, T, H]`
    ///
    /// # Errors
    /// Shape and tangent-count errors of the kernels.
    pub fn forward(
        &self,
        x: Dual<F, Ix3>,
        mask: ArrayView2<'_, bool>,
        pass: &Pass<'_, F>,
    ) -> Result<Dual<F, Ix3>> {
        let q = self.query.forward(&x, pass)?;
        let k = self.key.forward(&x, pass)?;
        let v = self.value.forward(&x, pass)?;
        let a = attention(&q, &k, &v, Some(mask), &self.shape)?;
        drop((q, k, v));
        let o = self.output.forward(&a, pass)?;
        // the residual is added into o's buffers (no new allocation)
        self.norm.forward(&add_into(o, &x)?)
    }

    /// The four projections, in registration order.
    pub fn linears(&self) -> [&FrozenLinear<F>; 4] {
        [&self.query, &self.key, &self.value, &self.output]
    }

    /// [`linears`](Self::linears), mutably.
    pub fn linears_mut(&mut self) -> [&mut FrozenLinear<F>; 4] {
        [
            &mut self.query,
            &mut self.key,
            &mut self.value,
            &mut self.output,
        ]
    }
}

/// The feed-forward sub-block: `x ← LN(x + W₂·GELU(W₁x))` (`intermediate.dense`,
/// `output.dense`, `output.LayerNorm`).
#[derive(Clone, Debug)]
pub struct FeedForward<F: Float> {
    intermediate: FrozenLinear<F>,
    output: FrozenLinear<F>,
    norm: LayerNorm<F>,
    act: GeluKind,
}

impl<F: Float> FeedForward<F> {
    /// Loads `intermediate.dense`, `output.dense` and `output.LayerNorm` from `vb` (the encoder
    /// layer's module: Hugging Face keeps them beside `attention`), registering the adapters
    /// `adapters` targets in that order.
    ///
    /// # Errors
    /// Missing or mis-shaped tensors; as [`Adapters::adapt`].
    pub fn load(
        mut vb: WeightPath<'_>,
        cfg: &BertConfig,
        act: GeluKind,
        adapters: &mut Adapters<'_, F>,
    ) -> Result<Self> {
        let (h, ffn) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(FeedForward {
            intermediate: adapters.adapt(vb.pp("intermediate.dense").linear(ffn, h, true)?)?,
            output: adapters.adapt(vb.pp("output.dense").linear(h, ffn, true)?)?,
            norm: vb
                .pp("output.LayerNorm")
                .layer_norm(h, cfg.layer_norm_eps)?,
            act,
        })
    }

    /// `LN(x + W₂·GELU(W₁x))`, consuming `x`.
    ///
    /// # Shapes
    /// - `x`: `[B, T, H]` → `[B, T, H]` (through `[B, T, ffn]`)
    ///
    /// # Errors
    /// Shape and tangent-count errors of the kernels.
    pub fn forward(&self, x: Dual<F, Ix3>, pass: &Pass<'_, F>) -> Result<Dual<F, Ix3>> {
        // GELU scales the intermediate's tangents in place (no second [K, N, 4d] array)
        let hdn = gelu_into(self.intermediate.forward(&x, pass)?, self.act)?;
        let o = self.output.forward(&hdn, pass)?;
        drop(hdn);
        self.norm.forward(&add_into(o, &x)?)
    }

    /// The two projections, in registration order.
    pub fn linears(&self) -> [&FrozenLinear<F>; 2] {
        [&self.intermediate, &self.output]
    }

    /// [`linears`](Self::linears), mutably.
    pub fn linears_mut(&mut self) -> [&mut FrozenLinear<F>; 2] {
        [&mut self.intermediate, &mut self.output]
    }
}

/// One encoder layer (`encoder.layer.{l}`): self-attention, then feed-forward.
#[derive(Clone, Debug)]
pub struct Layer<F: Float> {
    attention: SelfAttention<F>,
    ffn: FeedForward<F>,
}

impl<F: Float> Layer<F> {
    /// Loads the layer from `vb` (`encoder.layer.{l}`): `attention.*`, then `intermediate.*`
    /// and `output.*`, registering adapters for q, k, v, attention output, intermediate, output.
    ///
    /// # Errors
    /// Missing or mis-shaped tensors; as [`Adapters::adapt`].
    pub fn load(
        mut vb: WeightPath<'_>,
        cfg: &BertConfig,
        act: GeluKind,
        adapters: &mut Adapters<'_, F>,
    ) -> Result<Self> {
        Ok(Layer {
            attention: SelfAttention::load(vb.pp("attention"), cfg, adapters)?,
            ffn: FeedForward::load(vb, cfg, act, adapters)?,
        })
    }

    /// The layer's output, consuming `x`.
    ///
    /// # Shapes
    /// - `x`: `[B, T, H]`, `mask`: `[B, T]` → `[B, T, H]`
    ///
    /// # Errors
    /// Shape and tangent-count errors of the kernels.
    pub fn forward(
        &self,
        x: Dual<F, Ix3>,
        mask: ArrayView2<'_, bool>,
        pass: &Pass<'_, F>,
    ) -> Result<Dual<F, Ix3>> {
        let x = self.attention.forward(x, mask, pass)?;
        self.ffn.forward(x, pass)
    }

    /// The six linear layers, in registration order.
    pub fn linears(&self) -> impl Iterator<Item = &FrozenLinear<F>> {
        self.attention
            .linears()
            .into_iter()
            .chain(self.ffn.linears())
    }

    /// [`linears`](Self::linears), mutably.
    pub fn linears_mut(&mut self) -> impl Iterator<Item = &mut FrozenLinear<F>> {
        self.attention
            .linears_mut()
            .into_iter()
            .chain(self.ffn.linears_mut())
    }
}
