//! Llama decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU, tied or untied LM head) with a
//! causal-LM loss and greedy generation with a KV cache.
//!
//! ```text
//! x = E[ids]
//! per layer:  h = RMS(x);  x = x + O·Attn(RoPE(Q h), RoPE(K h), V h, causal)      attention.rs
//!             h = RMS(x);  x = x + Down(SiLU(Gate h) ⊙ Up h)                       mlp.rs
//! logits = RMS(x) · E_outᵀ          (E_out = E when the embeddings are tied)
//! ```
//! Weights use Hugging Face names and layouts (`model.layers.{l}.self_attn.q_proj.weight`,
//! rotate-half RoPE); a GGUF source translates names and un-permutes q/k rows on loading. The
//! frozen matrices (projections, embeddings, LM head) are [`FrozenWeight`]s: dense, or packed in
//! the checkpoint's format and widened a tile at a time. The loss runs the LM head fused with the
//! cross-entropy over vocabulary tiles ([`lm_head_cross_entropy`]), so the logits `[B·T, V]` are
//! never held.
//! LoRA targets match `q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`, `up_proj`, `down_proj`.
//! [`Llama`] is the embedding table, a list of [`Block`]s, the final norm and the LM head; each
//! block loads itself from its [`WeightPath`] and has its own `forward`.

mod attention;
mod block;
mod generate;
mod mlp;

use std::sync::{Arc, PoisonError, RwLock};

use ndarray::{ArrayView2, Ix3, s};

pub use attention::{Attention, LayerCache, Positions};
pub use block::Block;
pub use mlp::Mlp;

use super::adapted::{AdaptedModel, PEFT_PREFIX};
use super::microbatch::{default_max_rows, map_micro_batches};
use super::source::WeightSource;
use super::weight_path::{Adapters, WeightPath};
use crate::io::LlamaConfig;
use crate::kernels::{
    CrossEntropy, FrozenWeight, RopeTable, embedding_frozen, lm_head_cross_entropy,
};
use crate::modules::norm::RmsNorm;
use crate::modules::{Directions, DropoutKey, FrozenLinear, LoraConfig, Pass, Trainable};
use crate::{Dual, Error, Float, Result};

/// The fewest rows of the final hidden state the loss multiplies by a vocabulary tile of the LM
/// head at a time (see [`LOSS_PASS_ROWS`] and [`lm_head_cross_entropy`]).
pub const LOSS_CHUNK_ROWS: usize = 64;

/// Rows, primal and tangent together, the loss aims to multiply by each vocabulary tile of the
/// LM head in one pass: a chunk holds `max(LOSS_CHUNK_ROWS, LOSS_PASS_ROWS / (1 + K))` hidden
/// rows, so the logits buffer stays about `LOSS_PASS_ROWS × VOCAB_TILE` (4 MiB in f32) while the
/// GEMMs are large enough to keep every core busy (at SmolLM2 sizes, K = 1, 1024-row chunks run
/// the fused head 2.4× faster than 64-row ones; `examples/packed_ratio.rs`).
pub const LOSS_PASS_ROWS: usize = 2048;

/// The fewest positions a [`Llama`]'s RoPE table is grown to (it grows by doubling, up to the
/// context length, as passes reach further positions).
pub const ROPE_MIN_POSITIONS: usize = 256;

/// A Llama causal language model with frozen weights and (optionally) LoRA slots.
pub struct Llama<F: Float> {
    config: LlamaConfig,
    lora: LoraConfig,
    embed: FrozenWeight<F>,
    layers: Vec<Block<F>>,
    norm: RmsNorm<F>,
    lm_head: Option<FrozenWeight<F>>,
    /// The RoPE angles of the positions passes have used so far, grown on demand (never sized
    /// by `max_position_embeddings`, which a file may set to millions).
    rope: RwLock<Arc<RopeTable<F>>>,
    /// Row budget (sequences × positions) of one micro-batch of a pass without KV cache.
    max_rows: usize,
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
    /// Missing or mis-shaped tensors; [`Error::Config`] if `num_hidden_layers` differs from the
    /// layers the checkpoint holds; an invalid LoRA config.
    pub fn load(
        config: &LlamaConfig,
        src: &mut dyn WeightSource,
        lora: &LoraConfig,
        seed: u64,
        trainable: &mut Trainable<F>,
    ) -> Result<Self> {
        lora.validate()?;
        let (h, v) = (config.hidden_size, config.vocab_size);
        let mut vb = WeightPath::new(src);
        let mut adapters = Adapters {
            lora,
            prefix: PEFT_PREFIX.to_string(),
            seed,
            trainable,
        };
        let mut model = vb.pp("model");
        model.pp("layers").check_layers(config.num_hidden_layers)?;
        let embed = model.pp("embed_tokens").frozen("weight", v, h)?;
        let mut blocks = model.pp("layers");
        let layers = (0..config.num_hidden_layers)
            .map(|l| Block::load(blocks.pp(l), config, &mut adapters))
            .collect::<Result<Vec<_>>>()?;
        let norm = model.pp("norm").rms_norm(h, config.rms_norm_eps)?;
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(vb.pp("lm_head").frozen("weight", v, h)?)
        };
        let rope = RwLock::new(Arc::new(RopeTable::new(
            config.head_dim(),
            0,
            config.rope_theta,
        )?));
        Ok(Llama {
            config: config.clone(),
            lora: lora.clone(),
            embed,
            layers,
            norm,
            lm_head,
            rope,
            max_rows: default_max_rows(config.intermediate_size),
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
    /// the size of the frozen model. Packed matrices loaded from a mapped GGUF file
    /// ([`PackedMatrix::is_mapped`](crate::packed::PackedMatrix::is_mapped)) count their bytes
    /// in the map, which are the file's page cache (resident once read, file-backed), not
    /// anonymous memory.
    pub fn frozen_bytes(&self) -> usize {
        self.embed.n_bytes()
            + self.lm_head.as_ref().map_or(0, FrozenWeight::n_bytes)
            + self.norm.n_bytes()
            + self.layers.iter().map(Block::frozen_bytes).sum::<usize>()
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

    /// The RoPE table covering positions `0..end`: the one built so far if it is long enough,
    /// else one grown to the next power of two (at least [`ROPE_MIN_POSITIONS`], at most the
    /// context length). The table a pass needs is sized by the positions it uses, so memory
    /// never follows a configured context length the run does not reach.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `end` exceeds `max_position_embeddings`.
    fn rope_table(&self, end: usize) -> Result<Arc<RopeTable<F>>> {
        let max = self.config.max_position_embeddings;
        if end > max {
            return Err(Error::invalid(
                "Llama::forward",
                format!("positions up to {end} exceed the context length {max}"),
            ));
        }
        let current = self.rope.read().unwrap_or_else(PoisonError::into_inner);
        if current.max_positions() >= end {
            return Ok(Arc::clone(&current));
        }
        drop(current);
        let mut table = self.rope.write().unwrap_or_else(PoisonError::into_inner);
        if table.max_positions() < end {
            let n = end.next_power_of_two().max(ROPE_MIN_POSITIONS).min(max);
            *table = Arc::new(RopeTable::new(
                self.config.head_dim(),
                n,
                self.config.rope_theta,
            )?);
        }
        Ok(Arc::clone(&table))
    }

    /// The LM head: its own matrix, or the embedding table when they are tied.
    fn head(&self) -> &FrozenWeight<F> {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// The final hidden state (after the last RMSNorm) `[B, T, H]` of a pass without cache. The
    /// batch runs in micro-batches of at most `max_rows` rows (the sequences never interact);
    /// with dropout, micro-batch c of several draws its masks with c appended to the key.
    fn hidden(
        &self,
        ids: ArrayView2<'_, u32>,
        key_mask: Option<ArrayView2<'_, bool>>,
        pass: &Pass<'_, F>,
    ) -> Result<Dual<F, Ix3>> {
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
        map_micro_batches(b, t, self.max_rows, pass.dropout, |range, key| {
            self.forward(
                ids.slice(s![range.clone(), ..]),
                key_mask.map(|m| m.slice_move(s![range, ..])),
                &pass.with_dropout(key),
                None,
            )
        })
    }

    /// [`Llama::hidden`] of the whole batch in one pass: the embeddings, every block, the final
    /// norm. With `cache` (one entry per block), keys and values are appended to it and
    /// positions start after the cached ones.
    fn forward(
        &self,
        ids: ArrayView2<'_, u32>,
        key_mask: Option<ArrayView2<'_, bool>>,
        pass: &Pass<'_, F>,
        mut cache: Option<&mut [LayerCache<F>]>,
    ) -> Result<Dual<F, Ix3>> {
        let offset = cache
            .as_ref()
            .map_or(0, |c| c.first().map_or(0, LayerCache::len));
        let end = offset.checked_add(ids.ncols()).ok_or_else(|| {
            Error::invalid("Llama::forward", "position count overflows".to_string())
        })?;
        let rope = self.rope_table(end)?;
        let pos = Positions {
            rope: &rope,
            offset,
            key_mask,
        };
        let mut x = embedding_frozen(ids, &self.embed)?;
        for (l, block) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| &mut c[l]);
            x = block.forward(x, pass, &pos, layer_cache)?;
        }
        self.norm.forward(&x)
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
        let hidden = self.hidden(ids, key_mask, &self.pass(trainable, dirs, dropout))?;
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
}

impl<F: Float> AdaptedModel<F> for Llama<F> {
    fn lora(&self) -> &LoraConfig {
        &self.lora
    }

    fn linears(&self) -> Vec<&FrozenLinear<F>> {
        self.layers.iter().flat_map(Block::linears).collect()
    }

    fn linears_mut(&mut self) -> Vec<&mut FrozenLinear<F>> {
        self.layers
            .iter_mut()
            .flat_map(Block::linears_mut)
            .collect()
    }

    fn set_max_rows(&mut self, max_rows: usize) {
        self.max_rows = max_rows;
    }
}
