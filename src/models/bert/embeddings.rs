//! BERT's embedding layer: word, position and segment tables summed, then a LayerNorm.
//!
//! ```text
//! x[b, t] = LN(E_word[ids[b, t]] + E_pos[t] + E_type[type_ids[b, t]])
//! ```

use ndarray::{Array2, Array3, Ix3, s};

use super::BertBatch;
use crate::io::BertConfig;
use crate::models::WeightPath;
use crate::modules::norm::LayerNorm;
use crate::{Dual, Error, Float, Result};

/// The frozen embedding tables and their LayerNorm (`embeddings.*` in a checkpoint).
#[derive(Clone, Debug)]
pub struct Embeddings<F: Float> {
    word: Array2<F>,
    position: Array2<F>,
    token_type: Array2<F>,
    norm: LayerNorm<F>,
}

impl<F: Float> Embeddings<F> {
    /// Loads `word_embeddings`, `position_embeddings`, `token_type_embeddings` and `LayerNorm`
    /// from `vb` (the `embeddings` module).
    ///
    /// # Errors
    /// Missing or mis-shaped tensors ([`Error::MissingTensor`], [`Error::TensorShape`]).
    pub fn load(mut vb: WeightPath<'_>, cfg: &BertConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Embeddings {
            word: vb
                .pp("word_embeddings")
                .matrix("weight", cfg.vocab_size, h)?,
            position: vb.pp("position_embeddings").matrix(
                "weight",
                cfg.max_position_embeddings,
                h,
            )?,
            token_type: vb
                .pp("token_type_embeddings")
                .matrix("weight", cfg.type_vocab_size, h)?,
            norm: vb.pp("LayerNorm").layer_norm(h, cfg.layer_norm_eps)?,
        })
    }

    /// `LN(E_word[ids] + E_pos[t] + E_type[type_ids])`, a constant (the tables are frozen).
    ///
    /// # Shapes
    /// - `batch`: `[B, T]` → `[B, T, H]`
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a sequence longer than the position table, a token id
    /// outside the vocabulary or a segment id outside the segment table.
    pub fn forward(&self, batch: &BertBatch) -> Result<Dual<F, Ix3>> {
        const OP: &str = "Bert::embed";
        let (b, t) = batch.ids.dim();
        let h = self.word.ncols();
        if t > self.position.nrows() {
            return Err(Error::invalid(
                OP,
                format!(
                    "sequence length {t} exceeds {} positions",
                    self.position.nrows()
                ),
            ));
        }
        // x[b, t, :] = E_word[id] + E_pos[t] + E_type[ty], summed in that order
        let mut x = Array3::<F>::zeros((b, t, h));
        for bi in 0..b {
            for ti in 0..t {
                let id = batch.ids[[bi, ti]] as usize;
                let ty = batch.type_ids[[bi, ti]] as usize;
                if id >= self.word.nrows() {
                    return Err(Error::invalid(
                        OP,
                        format!("token id {id} >= vocabulary {}", self.word.nrows()),
                    ));
                }
                if ty >= self.token_type.nrows() {
                    return Err(Error::invalid(
                        OP,
                        format!("token type {ty} >= {}", self.token_type.nrows()),
                    ));
                }
                let mut row = x.slice_mut(s![bi, ti, ..]);
                row += &self.word.row(id);
                row += &self.position.row(ti);
                row += &self.token_type.row(ty);
            }
        }
        self.norm.forward(&Dual::constant(x))
    }
}
