//! Llama's self-attention: grouped-query attention over RoPE-rotated queries and keys, causal,
//! with an optional key/value cache for generation.
//!
//! ```text
//! a = O · Attn(RoPE(Q h), RoPE(K h), V h, causal, key mask)      h = RMS(x), from the block
//! ```

use ndarray::{Array3, ArrayView2, Axis, Ix3};

use crate::io::LlamaConfig;
use crate::kernels::{AttentionShape, RopeLayout, RopeTable, attention, rope};
use crate::models::{Adapters, WeightPath};
use crate::modules::{FrozenLinear, Pass};
use crate::{Dual, Float, Result};

/// What every layer of one pass shares besides the [`Pass`]: the RoPE table, the position of
/// the first token (the number of cached ones) and the padding mask over the keys.
#[derive(Clone, Copy, Debug)]
pub struct Positions<'a, F: Float> {
    /// The rotation angles.
    pub rope: &'a RopeTable<F>,
    /// Position of the first token of the batch (0 without a cache).
    pub offset: usize,
    /// `[B, S]`, true = a real key (`None`: every key is real).
    pub key_mask: Option<ArrayView2<'a, bool>>,
}

/// Post-RoPE keys and values of one layer `[1, S, kv_heads·D]`, as generation caches them
/// (primals only: generation is a plain forward).
#[derive(Clone, Debug, Default)]
pub struct LayerCache<F: Float> {
    kv: Option<(Array3<F>, Array3<F>)>,
}

impl<F: Float> LayerCache<F> {
    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.kv.as_ref().map_or(0, |(k, _)| k.shape()[1])
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.kv.is_none()
    }

    /// Appends the new positions' keys and values and returns all cached ones, as constants.
    fn append(&mut self, k: &Array3<F>, v: &Array3<F>) -> (Dual<F, Ix3>, Dual<F, Ix3>) {
        let (kc, vc) = match self.kv.take() {
            None => (k.clone(), v.clone()),
            Some((kc, vc)) => (
                ndarray::concatenate(Axis(1), &[kc.view(), k.view()])
                    .expect("same batch and width"),
                ndarray::concatenate(Axis(1), &[vc.view(), v.view()])
                    .expect("same batch and width"),
            ),
        };
        let out = (Dual::constant(kc.clone()), Dual::constant(vc.clone()));
        self.kv = Some((kc, vc));
        out
    }
}

/// The attention projections of one block (`self_attn.{q,k,v,o}_proj`), each possibly adapted.
#[derive(Clone, Debug)]
pub struct Attention<F: Float> {
    q: FrozenLinear<F>,
    k: FrozenLinear<F>,
    v: FrozenLinear<F>,
    o: FrozenLinear<F>,
    shape: AttentionShape,
}

impl<F: Float> Attention<F> {
    /// Loads `q_proj` `[nh·D, H]`, `k_proj`, `v_proj` `[nkv·D, H]` and `o_proj` `[H, nh·D]` from
    /// `vb` (the `self_attn` module), with biases when `attention_bias` is set, registering the
    /// adapters `adapters` targets in that order.
    ///
    /// # Errors
    /// Missing or mis-shaped tensors; as [`Adapters::adapt`].
    pub fn load(
        mut vb: WeightPath<'_>,
        cfg: &LlamaConfig,
        adapters: &mut Adapters<'_, F>,
    ) -> Result<Self> {
        let (h, hd, bias) = (cfg.hidden_size, cfg.head_dim(), cfg.attention_bias);
        let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        Ok(Attention {
            q: adapters.adapt(vb.pp("q_proj").linear(nh * hd, h, bias)?)?,
            k: adapters.adapt(vb.pp("k_proj").linear(nkv * hd, h, bias)?)?,
            v: adapters.adapt(vb.pp("v_proj").linear(nkv * hd, h, bias)?)?,
            o: adapters.adapt(vb.pp("o_proj").linear(h, nh * hd, bias)?)?,
            shape: AttentionShape {
                n_heads: nh,
                n_kv_heads: nkv,
                head_dim: hd,
                causal: true,
            },
        })
    }

    /// `O·Attn(RoPE(Qh), RoPE(Kh), Vh)`, consuming the normalised input `h`. With `cache`, the
    /// new keys and values are appended to it and the queries attend to all cached positions.
    ///
    /// # Shapes
    /// - `h`: `[B, T, H]` → `[B, T, H]`; with a cache B = 1
    ///
    /// # Errors
    /// Shape and tangent-count errors of the kernels.
    pub fn forward(
        &self,
        h: Dual<F, Ix3>,
        pass: &Pass<'_, F>,
        pos: &Positions<'_, F>,
        cache: Option<&mut LayerCache<F>>,
    ) -> Result<Dual<F, Ix3>> {
        let (nh, nkv) = (self.shape.n_heads, self.shape.n_kv_heads);
        let q = rope(
            &self.q.forward(&h, pass)?,
            pos.rope,
            nh,
            pos.offset,
            RopeLayout::RotateHalf,
        )?;
        let mut k = rope(
            &self.k.forward(&h, pass)?,
            pos.rope,
            nkv,
            pos.offset,
            RopeLayout::RotateHalf,
        )?;
        let mut v = self.v.forward(&h, pass)?;
        drop(h);
        if let Some(c) = cache {
            // generation is a plain forward: the cache holds primals only
            (k, v) = c.append(k.primal(), v.primal());
        }
        let a = attention(&q, &k, &v, pos.key_mask, &self.shape)?;
        drop((q, k, v));
        self.o.forward(&a, pass)
    }

    /// The four projections, in registration order.
    pub fn linears(&self) -> [&FrozenLinear<F>; 4] {
        [&self.q, &self.k, &self.v, &self.o]
    }

    /// [`linears`](Self::linears), mutably.
    pub fn linears_mut(&mut self) -> [&mut FrozenLinear<F>; 4] {
        [&mut self.q, &mut self.k, &mut self.v, &mut self.o]
    }
}
