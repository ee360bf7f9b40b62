//! [`BertBatch`]: a batch of tokenised sentences (ids, segment ids, padding mask).

use std::ops::Range;

use ndarray::{Array2, s};

use crate::{Error, Result};

/// A batch of tokenised sentences.
///
/// # Shapes
/// - `ids`, `type_ids`, `mask`: `[B, T]` (`mask` true = real token, false = padding)
#[derive(Clone, Debug)]
pub struct BertBatch {
    /// Token ids.
    pub ids: Array2<u32>,
    /// Segment ids (all 0 for single sentences).
    pub type_ids: Array2<u32>,
    /// Attention mask.
    pub mask: Array2<bool>,
}

impl BertBatch {
    /// A batch of single-segment sentences.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if `ids` and `mask` differ in shape.
    pub fn new(ids: Array2<u32>, mask: Array2<bool>) -> Result<Self> {
        if ids.dim() != mask.dim() {
            return Err(Error::shape(
                "BertBatch::new",
                format!("mask {:?}", ids.shape()),
                mask.shape(),
            ));
        }
        let type_ids = Array2::zeros(ids.dim());
        Ok(BertBatch {
            ids,
            type_ids,
            mask,
        })
    }

    /// A batch of two-segment inputs (sentence pairs): `type_ids` as the tokenizer gave them.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if `ids`, `type_ids` and `mask` differ in shape.
    pub fn with_type_ids(
        ids: Array2<u32>,
        type_ids: Array2<u32>,
        mask: Array2<bool>,
    ) -> Result<Self> {
        if type_ids.dim() != ids.dim() {
            return Err(Error::shape(
                "BertBatch::with_type_ids",
                format!("type ids {:?}", ids.shape()),
                type_ids.shape(),
            ));
        }
        let mut batch = BertBatch::new(ids, mask)?;
        batch.type_ids = type_ids;
        Ok(batch)
    }

    /// The sequences `range` of the batch.
    ///
    /// # Shapes
    /// - output: `[range.len(), T]`
    pub fn rows(&self, range: Range<usize>) -> BertBatch {
        BertBatch {
            ids: self.ids.slice(s![range.clone(), ..]).to_owned(),
            type_ids: self.type_ids.slice(s![range.clone(), ..]).to_owned(),
            mask: self.mask.slice(s![range, ..]).to_owned(),
        }
    }
}

impl From<crate::tokenizer::TokenBatch> for BertBatch {
    /// The tokenizer's ids, segment ids and mask, as they are.
    fn from(t: crate::tokenizer::TokenBatch) -> Self {
        BertBatch {
            ids: t.ids,
            type_ids: t.type_ids,
            mask: t.mask,
        }
    }
}
