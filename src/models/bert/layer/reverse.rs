//! The reverse passes of the encoder layer's sub-blocks, beside their forwards: each recomputes
//! its primal forward from the saved input (the dual pass kept no activation), keeping what the
//! reverse rules need, then runs them from the output gradient down to the input.
//!
//! ```text
//! SelfAttention:  q, k, v = x·W_{q,k,v}ᵀ (+LoRA);  a = Attn(q, k, v);  z = o(a) + x;  y = LN(z)
//!   dz = LN'(z)ᵀ·dy;  da, dW_o = o'ᵀ·dz;  dq, dk, dv = Attn'ᵀ·da;  dx = dz + Σ_{q,k,v} dx_{q,k,v}
//! FeedForward:    u = inter(x);  f = GELU(u);  z = out(f) + x;  y = LN(z)
//!   dz = LN'(z)ᵀ·dy;  df = out'ᵀ·dz;  du = GELU'(u)⊙df;  dx = dz + inter'ᵀ·du
//! ```
//!
//! Each returns the input gradient and the gradients of the adapters it carries, as
//! `(registry index, gradient)` in registry order. Only the primal of `pass` is read (its
//! trainable values, LoRA scale and dropout setting), never its directions.

use ndarray::{Array2, Array3, ArrayView2, ArrayView3, Ix3};

use super::{FeedForward, Layer, SelfAttention};
use crate::kernels::reverse::{attention_backward, gelu_backward};
use crate::kernels::{add_into, attention, gelu};
use crate::modules::{Directions, ParamGrads, Pass};
use crate::{Dual, Error, Float, Result};

/// What [`SelfAttention`]'s recomputed forward keeps for its reverse pass.
struct AttentionCache<F: Float> {
    q: Array3<F>,
    k: Array3<F>,
    v: Array3<F>,
    /// Attention output, the input of `attention.output.dense`.
    a: Array3<F>,
    /// The LayerNorm's input `o(a) + x`.
    z: Array3<F>,
}

/// What [`FeedForward`]'s recomputed forward keeps for its reverse pass.
struct FeedForwardCache<F: Float> {
    /// `intermediate.dense`'s output (GELU's input) `[N, ffn]`.
    u: Array3<F>,
    /// GELU's output, the input of `output.dense` `[N, ffn]`.
    f: Array3<F>,
    /// The LayerNorm's input `out(f) + x`.
    z: Array3<F>,
}

/// `[B, T, H]` as `[B·T, H]` rows.
fn rows<'a, F: Float>(op: &'static str, a: ArrayView3<'a, F>) -> Result<ArrayView2<'a, F>> {
    let (b, t, h) = a.dim();
    let shape = a.shape().to_vec();
    a.into_shape_with_order((b * t, h))
        .map_err(|_| Error::shape(op, "a standard-layout [B, T, H]", &shape))
}

/// `[B·T, H]` rows back as `[B, T, H]`.
fn unrows<F: Float>(op: &'static str, a: Array2<F>, b: usize, t: usize) -> Result<Array3<F>> {
    let shape = a.shape().to_vec();
    let h = a.ncols();
    a.into_shape_with_order((b, t, h))
        .map_err(|_| Error::shape(op, format!("[{b}·{t}, {h}]"), &shape))
}

/// Refuses a pass with LoRA dropout (the reverse rules carry no mask).
fn check_no_dropout<F: Float>(op: &'static str, pass: &Pass<'_, F>) -> Result<()> {
    if pass.lora_dropout_active() {
        return Err(Error::invalid(
            op,
            "LoRA dropout is active in the pass and the reverse rules have no mask",
        ));
    }
    Ok(())
}

/// The pass's primal: the same values and settings without directions.
fn primal_directions<F: Float>(pass: &Pass<'_, F>) -> Directions<F> {
    Directions::none(pass.trainable.len())
}

impl<F: Float> SelfAttention<F> {
    /// The forward's primal from `x`, with the activations the reverse pass reads.
    fn forward_cached(
        &self,
        x: ArrayView3<'_, F>,
        mask: ArrayView2<'_, bool>,
        pass: &Pass<'_, F>,
    ) -> Result<(Array3<F>, AttentionCache<F>)> {
        let x = Dual::<F, Ix3>::constant(x.to_owned());
        let q = self.query.forward(&x, pass)?;
        let k = self.key.forward(&x, pass)?;
        let v = self.value.forward(&x, pass)?;
        let a = attention(&q, &k, &v, Some(mask), &self.shape)?;
        let z = add_into(self.output.forward(&a, pass)?, &x)?;
        let y = self.norm.forward(&z)?.into_primal();
        let cache = AttentionCache {
            q: q.into_primal(),
            k: k.into_primal(),
            v: v.into_primal(),
            a: a.into_primal(),
            z: z.into_primal(),
        };
        Ok((y, cache))
    }

    /// The reverse rules from `dy` over a recomputed forward's cache.
    fn reverse(
        &self,
        x: ArrayView3<'_, F>,
        mask: ArrayView2<'_, bool>,
        c: AttentionCache<F>,
        dy: ArrayView3<'_, F>,
        pass: &Pass<'_, F>,
    ) -> Result<(Array3<F>, ParamGrads<F>)> {
        const OP: &str = "SelfAttention::backward";
        let (b, t, _) = x.dim();
        // y = LN(z), z = o + x: the residual passes dz to x unchanged
        let dz = self.norm.backward(rows(OP, c.z.view())?, rows(OP, dy)?)?;
        let (da, g_o) = self
            .output
            .backward(rows(OP, c.a.view())?, dz.view(), pass)?;
        drop(c.a);
        let da = unrows(OP, da, b, t)?;
        let g = attention_backward(
            c.q.view(),
            c.k.view(),
            c.v.view(),
            Some(mask),
            &self.shape,
            da.view(),
        )?;
        let x2 = rows(OP, x)?;
        let mut dx = dz;
        let mut grads = Vec::new();
        for (lin, d) in [(&self.query, &g.q), (&self.key, &g.k), (&self.value, &g.v)] {
            let (dxi, gi) = lin.backward(x2, rows(OP, d.view())?, pass)?;
            dx += &dxi;
            grads.extend(gi);
        }
        grads.extend(g_o);
        Ok((unrows(OP, dx, b, t)?, grads))
    }

    /// The reverse pass at the primal point of `pass`: recomputes the forward from the saved
    /// input `x`, then returns `∂L/∂x` and the gradients of the adapters of q, k, v and the
    /// output projection (registry order), given `dy = ∂L/∂y`:
    /// `dz = LN'(z)ᵀ·dy`, `da = o'ᵀ·dz`, `dq, dk, dv = Attn'ᵀ·da`,
    /// `dx = dz + Σ_{q,k,v} (d·W + s·(d·B)·A)`.
    ///
    /// # Shapes
    /// - `x`, `dy`: `[B, T, H]`, `mask`: `[B, T]` → `[B, T, H]`
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `pass` applies LoRA dropout; shape errors of the kernels.
    pub fn backward(
        &self,
        x: ArrayView3<'_, F>,
        mask: ArrayView2<'_, bool>,
        dy: ArrayView3<'_, F>,
        pass: &Pass<'_, F>,
    ) -> Result<(Array3<F>, ParamGrads<F>)> {
        check_no_dropout("SelfAttention::backward", pass)?;
        let none = primal_directions(pass);
        let (_, cache) = self.forward_cached(
            x,
            mask,
            &Pass {
                dirs: &none,
                ..*pass
            },
        )?;
        self.reverse(x, mask, cache, dy, pass)
    }
}

impl<F: Float> FeedForward<F> {
    /// The forward's primal from `x`, with the activations the reverse pass reads.
    fn forward_cached(
        &self,
        x: ArrayView3<'_, F>,
        pass: &Pass<'_, F>,
    ) -> Result<FeedForwardCache<F>> {
        let x = Dual::<F, Ix3>::constant(x.to_owned());
        let u = self.intermediate.forward(&x, pass)?;
        let f = gelu(&u, self.act)?;
        let z = add_into(self.output.forward(&f, pass)?, &x)?;
        Ok(FeedForwardCache {
            u: u.into_primal(),
            f: f.into_primal(),
            z: z.into_primal(),
        })
    }

    /// The reverse pass at the primal point of `pass`: recomputes the forward from the saved
    /// input `x`, then returns `∂L/∂x` and the gradients of the adapters of
    /// `intermediate.dense` and `output.dense` (registry order), given `dy = ∂L/∂y`:
    /// `dz = LN'(z)ᵀ·dy`, `df = out'ᵀ·dz`, `du = GELU'(u)⊙df`, `dx = dz + inter'ᵀ·du`.
    ///
    /// # Shapes
    /// - `x`, `dy`: `[B, T, H]` → `[B, T, H]` (through `[B, T, ffn]`)
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `pass` applies LoRA dropout; shape errors of the kernels.
    pub fn backward(
        &self,
        x: ArrayView3<'_, F>,
        dy: ArrayView3<'_, F>,
        pass: &Pass<'_, F>,
    ) -> Result<(Array3<F>, ParamGrads<F>)> {
        const OP: &str = "FeedForward::backward";
        check_no_dropout(OP, pass)?;
        let (b, t, _) = x.dim();
        let none = primal_directions(pass);
        let c = self.forward_cached(
            x,
            &Pass {
                dirs: &none,
                ..*pass
            },
        )?;
        let dz = self.norm.backward(rows(OP, c.z.view())?, rows(OP, dy)?)?;
        let (df, g_out) = self
            .output
            .backward(rows(OP, c.f.view())?, dz.view(), pass)?;
        drop(c.f);
        let du = gelu_backward(rows(OP, c.u.view())?, df.view(), self.act)?;
        drop((c.u, df));
        let (dxi, mut grads) = self.intermediate.backward(rows(OP, x)?, du.view(), pass)?;
        let mut dx = dz;
        dx += &dxi;
        grads.extend(g_out);
        Ok((unrows(OP, dx, b, t)?, grads))
    }
}

impl<F: Float> Layer<F> {
    /// The layer's reverse pass at the primal point of `pass`, from its saved input `x0`: the
    /// self-attention sub-block's forward is recomputed (its output is the feed-forward's
    /// input), the feed-forward reversed ([`FeedForward::backward`]), then the self-attention
    /// ([`SelfAttention::backward`]'s rules on the kept activations). Returns `∂L/∂x0` (to
    /// propagate into the layer below) and the gradients of the layer's adapters, registry
    /// order. Its memory is one layer's activations.
    ///
    /// # Shapes
    /// - `x0`, `dy`: `[B, T, H]`, `mask`: `[B, T]` → `[B, T, H]`
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `pass` applies LoRA dropout; shape errors of the kernels.
    pub fn backward(
        &self,
        x0: ArrayView3<'_, F>,
        mask: ArrayView2<'_, bool>,
        dy: ArrayView3<'_, F>,
        pass: &Pass<'_, F>,
    ) -> Result<(Array3<F>, ParamGrads<F>)> {
        check_no_dropout("Layer::backward", pass)?;
        let none = primal_directions(pass);
        let (y1, cache) = self.attention.forward_cached(
            x0,
            mask,
            &Pass {
                dirs: &none,
                ..*pass
            },
        )?;
        let (dy1, g_ffn) = self.ffn.backward(y1.view(), dy, pass)?;
        drop(y1);
        let (dx0, mut grads) = self.attention.reverse(x0, mask, cache, dy1.view(), pass)?;
        grads.extend(g_ffn);
        Ok((dx0, grads))
    }
}
