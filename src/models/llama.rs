//! Llama decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU, tied or untied LM head) with a
//! causal-LM loss and greedy generation with a KV cache.
//!
//! ```text
//! x = E[ids]
//! per layer:  h = RMS(x);  x = x + O·Attn(RoPE(Q h), RoPE(K h), V h, causal)
//!             h = RMS(x);  x = x + Down(SiLU(Gate h) ⊙ Up h)
//! logits = RMS(x) · E_outᵀ          (E_out = E when the embeddings are tied)
//! ```
//! Weights use Hugging Face names and layouts (`model.layers.{l}.self_attn.q_proj.weight`,
//! rotate-half RoPE); a GGUF source translates names and un-permutes q/k rows on loading. The
//! frozen matrices (projections, embeddings, LM head) are [`FrozenWeight`]s: dense, or packed in
//! the checkpoint's format and widened a tile at a time. The loss runs the LM head fused with the
//! cross-entropy over vocabulary tiles ([`lm_head_cross_entropy`]), so the logits `[B·T, V]` are
//! never held.
//! LoRA targets match `q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`, `up_proj`, `down_proj`.

use ndarray::{Array1, Array2, Array3, ArrayView2, Axis, Ix3, s};

use super::adapted::{AdaptedModel, PEFT_PREFIX};
use super::microbatch::{DEFAULT_MAX_ROWS, map_micro_batches};
use super::source::{WeightSource, take_frozen, take1};
use crate::io::LlamaConfig;
use crate::kernels::{
    AttentionShape, CrossEntropy, FrozenWeight, RopeLayout, RopeTable, add, attention,
    embedding_frozen, frozen_linear, lm_head_cross_entropy, rms_norm, rope, swiglu_into,
};
use crate::modules::{Directions, DropoutKey, FrozenLinear, LoraConfig, Pass, Trainable};
use crate::{Dual, Error, Float, Result};

struct Layer<F: Float> {
    attn_norm: Array1<F>,
    q: FrozenLinear<F>,
    k: FrozenLinear<F>,
    v: FrozenLinear<F>,
    o: FrozenLinear<F>,
    ffn_norm: Array1<F>,
    gate: FrozenLinear<F>,
    up: FrozenLinear<F>,
    down: FrozenLinear<F>,
}

/// Per-layer key/value cache for generation: post-RoPE keys and values `[1, S, kv_heads·D]`.
struct KvCache<F: Float> {
    k: Vec<Array3<F>>,
    v: Vec<Array3<F>>,
}

/// The fewest rows of the final hidden state the loss multiplies by a vocabulary tile of the LM
/// head at a time (see [`LOSS_PASS_ROWS`] and [`lm_head_cross_entropy`]).
pub const LOSS_CHUNK_ROWS: usize = 64;

/// Rows, primal and tangent together, the loss aims to multiply by each vocabulary tile of the
/// LM head in one pass: a chunk holds `max(LOSS_CHUNK_ROWS, LOSS_PASS_ROWS / (1 + K))` hidden
/// rows, so the logits buffer stays about `LOSS_PASS_ROWS × VOCAB_TILE` (4 MiB in f32) while the
/// GEMMs are large enough to keep every core busy (at SmolLM2 sizes, K = 1, 1024-row chunks run
/// the fused head 2.4× faster than 64-row ones; `examples/packed_ratio.rs`).
pub const LOSS_PASS_ROWS: usize = 2048;

/// A Llama causal language model with frozen weights and (optionally) LoRA slots.
pub struct Llama<F: Float> {
    config: LlamaConfig,
    lora: LoraConfig,
    embed: FrozenWeight<F>,
    layers: Vec<Layer<F>>,
    norm: Array1<F>,
    lm_head: Option<FrozenWeight<F>>,
    rope: RopeTable<F>,
    /// Row budget (sequences × positions) of one micro-batch of a pass without KV cache.
    max_rows: usize,
}

fn proj<F: Float>(
    src: &mut dyn WeightSource,
    path: String,
    out: usize,
    inp: usize,
    bias: bool,
) -> Result<FrozenLinear<F>> {
    Ok(FrozenLinear {
        weight: take_frozen(src, &format!("{path}.weight"), out, inp)?,
        bias: if bias {
            Some(take1(src, &format!("{path}.bias"), out)?)
        } else {
            None
        },
        adapter: None,
        path,
    })
}

impl<F: Float> Llama<F> {
    /// Loads the model from a source with Hugging Face names, registering a LoRA adapter in
    /// `trainable` for every targeted projection. Frozen matrices come as the source hands them
    /// out ([`WeightSource::take_matrix`]): packed ones stay packed.
    ///
    /// Projection biases (`{path}.bias`) are loaded when `attention_bias` (q, k, v, o) or
    /// `mlp_bias` (gate, up, down) is set.
    ///
    /// # Errors
    /// Missing or mis-shaped tensors; an invalid LoRA config.
    pub fn load(
        config: &LlamaConfig,
        src: &mut dyn WeightSource,
        lora: &LoraConfig,
        seed: u64,
        trainable: &mut Trainable<F>,
    ) -> Result<Self> {
        lora.validate()?;
        let h = config.hidden_size;
        let hd = config.head_dim();
        let (nh, nkv, ffn) = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.intermediate_size,
        );
        // Hugging Face: `attention_bias` gives q/k/v/o biases, `mlp_bias` gate/up/down biases
        let (ab, mb) = (config.attention_bias, config.mlp_bias);
        let embed = take_frozen(src, "model.embed_tokens.weight", config.vocab_size, h)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let mut layer = Layer {
                attn_norm: take1(src, &format!("{p}.input_layernorm.weight"), h)?,
                q: proj(src, format!("{p}.self_attn.q_proj"), nh * hd, h, ab)?,
                k: proj(src, format!("{p}.self_attn.k_proj"), nkv * hd, h, ab)?,
                v: proj(src, format!("{p}.self_attn.v_proj"), nkv * hd, h, ab)?,
                o: proj(src, format!("{p}.self_attn.o_proj"), h, nh * hd, ab)?,
                ffn_norm: take1(src, &format!("{p}.post_attention_layernorm.weight"), h)?,
                gate: proj(src, format!("{p}.mlp.gate_proj"), ffn, h, mb)?,
                up: proj(src, format!("{p}.mlp.up_proj"), ffn, h, mb)?,
                down: proj(src, format!("{p}.mlp.down_proj"), h, ffn, mb)?,
            };
            for lin in [
                &mut layer.q,
                &mut layer.k,
                &mut layer.v,
                &mut layer.o,
                &mut layer.gate,
                &mut layer.up,
                &mut layer.down,
            ] {
                lin.attach_lora(lora, PEFT_PREFIX, seed, trainable)?;
            }
            layers.push(layer);
        }
        let norm = take1(src, "model.norm.weight", h)?;
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(take_frozen(src, "lm_head.weight", config.vocab_size, h)?)
        };
        let rope = RopeTable::new(hd, config.max_position_embeddings, config.rope_theta)?;
        Ok(Llama {
            config: config.clone(),
            lora: lora.clone(),
            embed,
            layers,
            norm,
            lm_head,
            rope,
            max_rows: DEFAULT_MAX_ROWS,
        })
    }

    /// The same model running passes without KV cache (loss, last logits) in micro-batches of
    /// at most `max_rows` rows ([`AdaptedModel::with_max_rows`]): only one micro-batch's
    /// activations exist at a time.
    pub fn with_max_rows(self, max_rows: usize) -> Self {
        AdaptedModel::with_max_rows(self, max_rows)
    }

    /// The configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The LoRA configuration.
    pub fn lora(&self) -> &LoraConfig {
        &self.lora
    }

    /// Bytes held by the frozen matrices (projections, embeddings, LM head) and the norm gains:
    /// the resident size of the frozen model.
    pub fn frozen_bytes(&self) -> usize {
        let vec_bytes = |v: &Array1<F>| v.len() * size_of::<F>();
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down]
                    .iter()
                    .map(|p| p.weight.n_bytes() + p.bias.as_ref().map_or(0, vec_bytes))
                    .sum::<usize>()
                    + vec_bytes(&l.attn_norm)
                    + vec_bytes(&l.ffn_norm)
            })
            .sum();
        self.embed.n_bytes()
            + self.lm_head.as_ref().map_or(0, FrozenWeight::n_bytes)
            + vec_bytes(&self.norm)
            + layers
    }

    /// Whether any projection still carries a LoRA adapter ([`AdaptedModel::has_adapters`]).
    pub fn has_adapters(&self) -> bool {
        AdaptedModel::has_adapters(self)
    }

    /// Folds every LoRA adapter into its frozen weight ([`AdaptedModel::merge_adapters`]).
    ///
    /// # Errors
    /// As [`AdaptedModel::merge_adapters`]; the model is unchanged then.
    pub fn merge_adapters(&mut self, trainable: &Trainable<F>) -> Result<()> {
        AdaptedModel::merge_adapters(self, trainable)
    }

    fn head(&self) -> &FrozenWeight<F> {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    fn attention_shape(&self) -> AttentionShape {
        AttentionShape {
            n_heads: self.config.num_attention_heads,
            n_kv_heads: self.config.num_key_value_heads,
            head_dim: self.config.head_dim(),
            causal: true,
        }
    }

    /// The final hidden state (after the last RMSNorm) `[B, T, H]`; with `cache`, keys and
    /// values are appended to it and positions start after the cached ones. Without a cache the
    /// batch runs in micro-batches of at most `max_rows` rows (the sequences never interact);
    /// with dropout, micro-batch c of several draws its masks with c appended to the key.
    fn hidden(
        &self,
        ids: ArrayView2<'_, u32>,
        key_mask: Option<ArrayView2<'_, bool>>,
        trainable: &Trainable<F>,
        dirs: &Directions<F>,
        dropout: Option<&DropoutKey>,
        cache: Option<&mut KvCache<F>>,
    ) -> Result<Dual<F, Ix3>> {
        if cache.is_some() {
            return self.hidden_all(ids, key_mask, trainable, dirs, dropout, cache);
        }
        if let Some(m) = key_mask
            && m.dim() != ids.dim()
        {
            return Err(Error::shape(
                "Llama::hidden",
                format!("key mask {:?}", ids.shape()),
                m.shape(),
            ));
        }
        let (b, t) = ids.dim();
        map_micro_batches(b, t, self.max_rows, dropout, |range, key| {
            self.hidden_all(
                ids.slice(s![range.clone(), ..]),
                key_mask.map(|m| m.slice_move(s![range, ..])),
                trainable,
                dirs,
                key,
                None,
            )
        })
    }

    /// [`Llama::hidden`] of the whole batch in one pass.
    fn hidden_all(
        &self,
        ids: ArrayView2<'_, u32>,
        key_mask: Option<ArrayView2<'_, bool>>,
        trainable: &Trainable<F>,
        dirs: &Directions<F>,
        dropout: Option<&DropoutKey>,
        mut cache: Option<&mut KvCache<F>>,
    ) -> Result<Dual<F, Ix3>> {
        let shape = self.attention_shape();
        let eps = self.config.rms_norm_eps;
        let (nh, nkv) = (shape.n_heads, shape.n_kv_heads);
        let pass = Pass::new(trainable, dirs, &self.lora, dropout);
        let offset = cache
            .as_ref()
            .map_or(0, |c| c.k.first().map_or(0, |k| k.shape()[1]));
        let mut x = embedding_frozen(ids, &self.embed)?;
        for (l, layer) in self.layers.iter().enumerate() {
            // attention: x = x + O·Attn(RoPE(Qh), RoPE(Kh), Vh)
            let hn = rms_norm(&x, layer.attn_norm.view(), eps)?;
            let q = rope(
                &layer.q.forward(&hn, &pass)?,
                &self.rope,
                nh,
                offset,
                RopeLayout::RotateHalf,
            )?;
            let mut k = rope(
                &layer.k.forward(&hn, &pass)?,
                &self.rope,
                nkv,
                offset,
                RopeLayout::RotateHalf,
            )?;
            let mut v = layer.v.forward(&hn, &pass)?;
            drop(hn);
            if let Some(c) = cache.as_deref_mut() {
                // generation is a plain forward: the cache holds primals only
                if l == c.k.len() {
                    c.k.push(k.primal().clone());
                    c.v.push(v.primal().clone());
                } else {
                    c.k[l] = ndarray::concatenate(Axis(1), &[c.k[l].view(), k.primal().view()])
                        .expect("same batch and width");
                    c.v[l] = ndarray::concatenate(Axis(1), &[c.v[l].view(), v.primal().view()])
                        .expect("same batch and width");
                }
                k = Dual::constant(c.k[l].clone());
                v = Dual::constant(c.v[l].clone());
            }
            let a = attention(&q, &k, &v, key_mask, &shape)?;
            drop((q, k, v));
            x = add(&x, &layer.o.forward(&a, &pass)?)?;
            // feed-forward: x = x + Down(SiLU(Gate h) ⊙ Up h)
            let hn = rms_norm(&x, layer.ffn_norm.view(), eps)?;
            let g = layer.gate.forward(&hn, &pass)?;
            let u = layer.up.forward(&hn, &pass)?;
            drop(hn);
            // the gate's tangents become the activation's in place
            let act = swiglu_into(g, &u)?;
            drop(u);
            x = add(&x, &layer.down.forward(&act, &pass)?)?;
        }
        rms_norm(&x, self.norm.view(), eps)
    }

    /// Mean next-token cross-entropy and one JVP scalar per direction.
    ///
    /// `labels` follows Hugging Face: `[B, T]` aligned with `ids` (position t is predicted from
    /// positions ≤ t−1; the shift happens here), `-100` = ignored (padding, prompt tokens).
    /// The logits are never held: the LM head and the cross-entropy run fused over vocabulary
    /// tiles, in chunks of rows sized by [`LOSS_PASS_ROWS`] ([`lm_head_cross_entropy`]).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if `labels` or `key_mask` is not `[B, T]`;
    /// [`Error::InvalidArgument`] if no label is valid; kernel errors.
    pub fn loss(
        &self,
        ids: ArrayView2<'_, u32>,
        labels: ArrayView2<'_, i64>,
        key_mask: Option<ArrayView2<'_, bool>>,
        trainable: &Trainable<F>,
        dirs: &Directions<F>,
        dropout: Option<&DropoutKey>,
    ) -> Result<CrossEntropy<F>> {
        const OP: &str = "Llama::loss";
        if labels.dim() != ids.dim() {
            return Err(Error::shape(
                OP,
                format!("labels {:?}", ids.shape()),
                labels.shape(),
            ));
        }
        let (b, t) = ids.dim();
        let hidden = self.hidden(ids, key_mask, trainable, dirs, dropout, None)?;
        // targets of row (b, t) = labels[b, t + 1]; the last position predicts nothing
        let mut targets = vec![-100i64; b * t];
        for bi in 0..b {
            for ti in 0..t.saturating_sub(1) {
                targets[bi * t + ti] = labels[[bi, ti + 1]];
            }
        }
        if targets.iter().all(|&y| y == -100) {
            return Err(Error::invalid(OP, "no valid next-token label in the batch"));
        }
        let h = self.config.hidden_size;
        let k = hidden.k();
        let (hp, ht) = hidden.into_parts();
        let hp = hp.into_shape_with_order((b * t, h)).expect("contiguous");
        let ht = ht.map(|t3| {
            t3.into_shape_with_order((k.unwrap_or(0), b * t, h))
                .expect("contiguous")
        });
        let rows = Dual::with_tangent(hp, ht)?;
        let chunk = (LOSS_PASS_ROWS / (1 + k.unwrap_or(0))).max(LOSS_CHUNK_ROWS);
        lm_head_cross_entropy(&rows, self.head(), &targets, -100, chunk)
    }

    /// Logits of the last position of every sequence `[B, V]` (plain forward).
    ///
    /// # Errors
    /// Kernel errors.
    pub fn last_logits(
        &self,
        ids: ArrayView2<'_, u32>,
        trainable: &Trainable<F>,
    ) -> Result<Array2<F>> {
        let hidden = self.hidden(
            ids,
            None,
            trainable,
            &Directions::none(trainable.len()),
            None,
            None,
        )?;
        self.logits_of_last(hidden.primal())
    }

    fn logits_of_last(&self, hidden: &Array3<F>) -> Result<Array2<F>> {
        let last = hidden.index_axis(Axis(1), hidden.shape()[1] - 1).to_owned();
        Ok(frozen_linear(&Dual::constant(last), self.head(), None)?.into_primal())
    }

    /// Greedy generation with a KV cache: feeds `prompt`, then appends the argmax token until
    /// `max_new` tokens or a token in `stop` is produced (the stop token is included).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty prompt or one longer than the context; kernel
    /// errors.
    pub fn generate_greedy(
        &self,
        prompt: &[u32],
        max_new: usize,
        stop: &[u32],
        trainable: &Trainable<F>,
    ) -> Result<Vec<u32>> {
        const OP: &str = "Llama::generate_greedy";
        if prompt.is_empty() {
            return Err(Error::invalid(OP, "empty prompt"));
        }
        if prompt.len() + max_new > self.config.max_position_embeddings {
            return Err(Error::invalid(
                OP,
                "prompt plus new tokens exceed the context length",
            ));
        }
        let none = Directions::none(trainable.len());
        let mut cache = KvCache {
            k: Vec::new(),
            v: Vec::new(),
        };
        let ids = Array2::from_shape_vec((1, prompt.len()), prompt.to_vec()).expect("one row");
        let mut hidden = self.hidden(ids.view(), None, trainable, &none, None, Some(&mut cache))?;
        let mut out = Vec::with_capacity(max_new);
        for _ in 0..max_new {
            let logits = self.logits_of_last(hidden.primal())?;
            let next = super::bert::argmax_rows(logits.view())[0] as u32;
            out.push(next);
            if stop.contains(&next) {
                break;
            }
            let step = Array2::from_elem((1, 1), next);
            hidden = self.hidden(step.view(), None, trainable, &none, None, Some(&mut cache))?;
        }
        Ok(out)
    }
}

impl<F: Float> AdaptedModel<F> for Llama<F> {
    fn lora(&self) -> &LoraConfig {
        &self.lora
    }

    fn linears(&self) -> Vec<&FrozenLinear<F>> {
        self.layers
            .iter()
            .flat_map(|l| [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down])
            .collect()
    }

    fn linears_mut(&mut self) -> Vec<&mut FrozenLinear<F>> {
        self.layers
            .iter_mut()
            .flat_map(|l| {
                [
                    &mut l.q,
                    &mut l.k,
                    &mut l.v,
                    &mut l.o,
                    &mut l.gate,
                    &mut l.up,
                    &mut l.down,
                ]
            })
            .collect()
    }

    fn set_max_rows(&mut self, max_rows: usize) {
        self.max_rows = max_rows;
    }
}
