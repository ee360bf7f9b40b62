//! A language-model head fused with the mean cross-entropy, over vocabulary tiles: the logits
//! `z = h·Eᵀ` `[N, V]` are never held, neither in full nor per row chunk.
//!
//! For each tile of [`VOCAB_TILE`] vocabulary rows the head rows `E[v0..v1, :]` are widened once
//! (a view if dense) and multiplied by every chunk of valid hidden rows (primal and the K stacked
//! tangents). Each row keeps running softmax statistics, rescaled whenever its running maximum
//! grows (the online softmax):
//!
//! ```text
//! m_i = max_j z_ij                       running maximum (a constant shift, no tangent)
//! s_i = Σ_j exp(z_ij − m_i)              running normaliser
//! u_ki = Σ_j exp(z_ij − m_i)·ż_kij       running numerator of ⟨p_i, ż_ki⟩
//! on a new tile: m' = max(m_i, max_tile z_ij), s_i ← s_i·e^{m_i − m'} + Σ_tile e^{z_ij − m'},
//!                u_ki ← u_ki·e^{m_i − m'} + Σ_tile e^{z_ij − m'}·ż_kij,  m_i ← m'
//! ℓ_i = ln s_i − (z_ic − m_i),   ℓ̇_ki = u_ki / s_i − ż_kic
//! ```
//!
//! The loss is the mean of `ℓ_i` over the rows whose target is not the ignore index (ignored rows
//! are dropped before any product), the jvp of direction k the mean of `ℓ̇_ki`: exactly
//! [`cross_entropy`](super::cross_entropy()) of the full logits, up to f32 rounding (the sums run in
//! a different order). Memory: `chunk_rows × VOCAB_TILE × (1+K)` logits, plus a widened tile.

use ndarray::{Array1, Array2, ArrayView2, Axis, Ix2, s};

use super::cross_entropy::{CrossEntropy, check_targets};
use super::frozen::FrozenWeight;
use super::gemm::gemm_into;
use crate::{Dual, Error, Float, Result};

/// Vocabulary rows of the head widened and multiplied at a time.
pub const VOCAB_TILE: usize = 512;

/// Mean cross-entropy of the logits `z = h·Eᵀ` and its K directional derivatives
/// (`ż = ḣ·Eᵀ`, the head is frozen), computed over vocabulary tiles without holding the logits.
///
/// `loss = mean_i (logsumexp(z_i) − z_ic)`, `jvp_k = mean_i (⟨softmax(z_i), ż_ki⟩ − ż_kic)` over
/// the rows whose target is not `ignore_index`; each head tile (widened once if packed) serves
/// all valid rows, `chunk_rows` of them per GEMM.
///
/// # Shapes
/// - `hidden`: `[N, H]` (tangent `[K, N, H]`), `head`: `[V, H]`, `targets`: `[N]`; `jvp`: `[K]`
///
/// # Errors
/// - [`Error::ShapeMismatch`] if `head` is not `[V, H]` or `targets` does not have N entries.
/// - [`Error::InvalidArgument`] if `chunk_rows` is 0, a target outside `[0, V)` is not the
///   ignore index, or every target is ignored.
pub fn lm_head_cross_entropy<F: Float>(
    hidden: &Dual<F, Ix2>,
    head: &FrozenWeight<F>,
    targets: &[i64],
    ignore_index: i64,
    chunk_rows: usize,
) -> Result<CrossEntropy<F>> {
    const OP: &str = "lm_head_cross_entropy";
    let (n, h) = hidden.primal().dim();
    let (vocab, head_h) = head.dim();
    if head_h != h {
        return Err(Error::shape(OP, format!("head [V, {h}]"), &[vocab, head_h]));
    }
    if chunk_rows == 0 {
        return Err(Error::invalid(OP, "chunk_rows must be at least 1"));
    }
    let n_valid = check_targets(OP, n, vocab, targets, ignore_index)?;
    let valid: Vec<usize> = (0..n).filter(|&i| targets[i] != ignore_index).collect();
    let k = hidden.k().unwrap_or(0);

    // The valid rows, in chunks: x_c [r, H] and ẋ_c [K·r, H] (direction-major).
    let chunks: Vec<(Array2<F>, Option<Array2<F>>)> = valid
        .chunks(chunk_rows)
        .map(|rows| {
            let xc = hidden.primal().select(Axis(0), rows);
            let txc = hidden.tangent().map(|t| {
                let r = rows.len();
                Array2::from_shape_fn((k * r, h), |(i, j)| t[[i / r, rows[i % r], j]])
            });
            (xc, txc)
        })
        .collect();

    let mut stats = OnlineSoftmax::new(n_valid, k);
    let mut z = Array2::<F>::zeros((chunk_rows.min(n_valid), VOCAB_TILE));
    let mut tz = Array2::<F>::zeros((k * chunk_rows.min(n_valid), VOCAB_TILE));
    let mut scratch = Vec::new();
    for v0 in (0..vocab).step_by(VOCAB_TILE) {
        let v1 = (v0 + VOCAB_TILE).min(vocab);
        // E_tile [v1−v0, H], widened once for every row chunk and direction
        let tile = head.tile(v0..v1, &mut scratch);
        for (c, (xc, txc)) in chunks.iter().enumerate() {
            let r = xc.nrows();
            // z[r, tile] = x_c · E_tileᵀ
            let zb = z.slice_mut(s![..r, ..v1 - v0]);
            gemm_into(F::one(), xc.view(), tile.t(), F::zero(), zb);
            // ż[K·r, tile] = ẋ_c · E_tileᵀ
            if let Some(txc) = txc {
                let tzb = tz.slice_mut(s![..k * r, ..v1 - v0]);
                gemm_into(F::one(), txc.view(), tile.t(), F::zero(), tzb);
            }
            for i in 0..r {
                let row = c * chunk_rows + i;
                let target = targets[valid[row]] as usize;
                stats.update(row, z.view(), tz.view(), i, r, v0..v1, target);
            }
        }
    }
    let (loss, jvp) = stats.finish(hidden.k().is_some());
    Ok(CrossEntropy { loss, jvp, n_valid })
}

/// Per-row running statistics of the online softmax (see the module docs).
struct OnlineSoftmax<F> {
    /// Running maximum `m_i`.
    m: Vec<F>,
    /// Running normaliser `s_i`.
    s: Vec<F>,
    /// Running numerators `u_ki` `[K, N]`.
    u: Array2<F>,
    /// Target logit `z_ic`.
    zc: Vec<F>,
    /// Target logit tangents `ż_kic` `[K, N]`.
    tzc: Array2<F>,
    /// `exp(z_ij − m')` of the current tile row.
    e: Vec<F>,
}

impl<F: Float> OnlineSoftmax<F> {
    fn new(n: usize, k: usize) -> Self {
        OnlineSoftmax {
            m: vec![F::neg_infinity(); n],
            s: vec![F::zero(); n],
            u: Array2::zeros((k, n)),
            zc: vec![F::zero(); n],
            tzc: Array2::zeros((k, n)),
            e: Vec::with_capacity(VOCAB_TILE),
        }
    }

    /// Folds tile `cols` of row `row` in: its logits are `z[i, ..]`, its tangents
    /// `tz[kk·r + i, ..]`.
    #[allow(clippy::too_many_arguments)]
    fn update(
        &mut self,
        row: usize,
        z: ArrayView2<'_, F>,
        tz: ArrayView2<'_, F>,
        i: usize,
        r: usize,
        cols: std::ops::Range<usize>,
        target: usize,
    ) {
        let width = cols.len();
        let zi = z.slice(s![i, ..width]);
        let tile_max = zi.fold(F::neg_infinity(), |a, &v| a.max(v));
        let m_new = self.m[row].max(tile_max);
        // e^{m − m'} rescales what was summed under the old maximum (0 for the first tile)
        let rescale = (self.m[row] - m_new).exp();
        self.e.clear();
        self.e.extend(zi.iter().map(|&v| (v - m_new).exp()));
        self.s[row] = self.s[row] * rescale + self.e.iter().copied().sum::<F>();
        for kk in 0..self.u.nrows() {
            let tzi = tz.slice(s![kk * r + i, ..width]);
            let dot = self
                .e
                .iter()
                .zip(tzi.iter())
                .fold(F::zero(), |a, (&e, &t)| a + e * t);
            self.u[[kk, row]] = self.u[[kk, row]] * rescale + dot;
            if cols.contains(&target) {
                self.tzc[[kk, row]] = tzi[target - cols.start];
            }
        }
        if cols.contains(&target) {
            self.zc[row] = zi[target - cols.start];
        }
        self.m[row] = m_new;
    }

    /// `(mean ℓ_i, mean ℓ̇_ki)`; the jvp only `with_jvp`.
    fn finish(&self, with_jvp: bool) -> (F, Option<Array1<F>>) {
        let n = self.m.len();
        let inv_n = F::one() / F::from_usize(n);
        let mut loss = F::zero();
        for i in 0..n {
            // ℓ_i = ln s_i − (z_ic − m_i)
            loss += self.s[i].ln() - (self.zc[i] - self.m[i]);
        }
        let jvp = with_jvp.then(|| {
            Array1::from_shape_fn(self.u.nrows(), |kk| {
                let mut acc = F::zero();
                for i in 0..n {
                    // ℓ̇_ki = u_ki / s_i − ż_kic
                    acc += self.u[[kk, i]] / self.s[i] - self.tzc[[kk, i]];
                }
                acc * inv_n
            })
        });
        (loss * inv_n, jvp)
    }
}
