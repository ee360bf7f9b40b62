//! One (batch, head, query block) of attention, streamed over key blocks with an online softmax
//! that carries the K tangents.
//!
//! For the `bq` query rows of the block and each visited key block `j0..j1` (`bk` keys):
//!
//! 1. scores `S[bq, bk] = τ·Q·K_blkᵀ` (one GEMM);
//! 2. per row: the block maximum over the allowed keys, `m_new = max(m, block max)`,
//!    `α = exp(m − m_new)`, `eⱼ = exp(sⱼ − m_new)` on the allowed keys (0 elsewhere),
//!    `l ← α·l + Σⱼ eⱼ`: the block's primal factors `E`, computed once for all K directions;
//! 3. `o ← α·o + E·V_blk`;
//! 4. tangents, K directions stacked query-row major (rows `(t, k)`):
//!    `Ṡ[bq·K, bk] = τ·Q̇[bq·K, D]·K_blkᵀ`, plus, per direction k, `τ·Q[bq, D]·K̇ₖ_blkᵀ[D, bk]`
//!    written to the same buffer viewed as `[bq, K·bk]`; then per row `(t, k)`:
//!    `b ← α·b + Σⱼ eⱼṡⱼ`, `ṡ ← e ⊙ ṡ`;
//!    `ȯ ← α·ȯ + (E⊙Ṡ)[bq·K, bk]·V_blk + E[bq, bk]·V̇_blk[bk, K·D]` (the last into `ȯ` viewed as
//!    `[bq, K·D]`).
//!
//! Finally `O = o/l`, `Ȯ = ȯ/l − (b/l)·O`. A row's state stays zero until its first allowed key
//! (`l = 0`), so no infinity is ever formed; a row that never meets one is left zero. Terms whose
//! input tangent is a symbolic zero are skipped, as are key blocks no row of the block may attend
//! (the causal upper triangle, fully padded blocks).
//!
//! `K̇` and `V̇` are strided head slices of `[K, B, S, H_kv·D]` arrays; copying a key block of
//! them into GEMM-ready layout is a large part of the JVP's cost, so each worker copies the keys
//! of one (batch, kv head) once, as the first query block to need them arrives, into head-wide
//! caches (`[K, S, D]` and `[S, K, D]`) that every later query block of that head reads
//! (`O(K·S·D)` per worker).

use ndarray::{ArrayView2, ArrayView3, ArrayViewMut2, ArrayViewMut3, Axis, s};

use super::super::exp::exp_shifted_in_place;
use super::super::gemm::gemm_into;
use crate::Float;

/// Query rows per task.
pub(super) const BLOCK_Q: usize = 32;
/// Keys per streamed block.
pub(super) const BLOCK_K: usize = 128;

/// One head's operands, as strided views into the `[B, T, H·D]` inputs.
pub(super) struct HeadInputs<'a, F: Float> {
    /// `[bq, D]`: the query rows of the block.
    pub q: ArrayView2<'a, F>,
    /// `[S, D]`
    pub k: ArrayView2<'a, F>,
    /// `[S, D]`
    pub v: ArrayView2<'a, F>,
    /// `[K, bq, D]`, or `None` for the symbolic zero.
    pub q_dot: Option<ArrayView3<'a, F>>,
    /// `[K, S, D]`, or `None`.
    pub k_dot: Option<ArrayView3<'a, F>>,
    /// `[K, S, D]`, or `None`.
    pub v_dot: Option<ArrayView3<'a, F>>,
    /// `1/√D`
    pub tau: F,
    /// (batch, kv head) of `k`, `v` and their tangents: the key of the per-worker key caches.
    pub kv_id: (usize, usize),
}

/// Which keys the query rows of one batch element may attend.
pub(super) struct Keys {
    /// `key_mask[b, :]` (`[S]`), or `None` = every key.
    pub mask: Option<Vec<bool>>,
    pub causal: bool,
    /// Number of queries T.
    pub t: usize,
    /// Number of keys S.
    pub s: usize,
}

impl Keys {
    /// One past the last key query `ti` may attend by position: `ti + 1 + (S − T)` if causal,
    /// clamped to `[0, S]`.
    fn hi(&self, ti: usize) -> usize {
        if self.causal {
            (ti + 1 + self.s).saturating_sub(self.t).min(self.s)
        } else {
            self.s
        }
    }

    /// The padding mask of keys `j0..j1`: `Some(None)` if all are allowed, `Some(Some(mask))` if
    /// some are, `None` if none is (the block is skipped).
    fn block(&self, j0: usize, j1: usize) -> Option<Option<&[bool]>> {
        match &self.mask {
            None => Some(None),
            Some(m) => {
                let m = &m[j0..j1];
                if m.iter().all(|&ok| ok) {
                    Some(None)
                } else if m.iter().any(|&ok| ok) {
                    Some(Some(m))
                } else {
                    None
                }
            }
        }
    }
}

/// The running state of one query block and its workspace, all buffers flat and row-major,
/// allocated once per worker for the largest block and reused for every block it runs.
pub(super) struct QueryBlock<F: Float> {
    /// First query row of the current block.
    i0: usize,
    /// Rows of the current block.
    bq: usize,
    d: usize,
    /// `[bq, bk]`: the scores of the current key block, then (in place) `E`.
    e: Vec<F>,
    /// Running maximum per row (meaningful once `l > 0`).
    m: Vec<F>,
    /// Running `Σ eⱼ` per row; 0 until the row meets an allowed key.
    l: Vec<F>,
    /// `exp(m_old − m_new)` of the current key block per row.
    alpha: Vec<F>,
    /// `[bq, D]`: running `Σ eⱼ·vⱼ`, then `O`.
    o: Vec<F>,
    tangent: Option<Tangents<F>>,
}

/// The tangent state and workspace of one query block, K directions stacked; `None` = that term
/// is a symbolic zero.
struct Tangents<F: Float> {
    kd: usize,
    /// Number of keys S.
    s: usize,
    /// `[bq, K, D]`: `Q̇` of the block's rows, gathered once per block.
    q_dot: Option<Vec<F>>,
    /// `[K, S, D]`: `K̇` of the cached kv head, keys `0..gathered`.
    k_dot: Option<Vec<F>>,
    /// `[S, K, D]`: `V̇` of the cached kv head, keys `0..gathered`.
    v_dot: Option<Vec<F>>,
    /// The (batch, kv head) the key caches hold.
    cached: Option<(usize, usize)>,
    /// Keys `0..gathered` of that head are in the caches.
    gathered: usize,
    /// `[bq, K, bk]`: `Ṡ`, then (in place) `E ⊙ Ṡ`; present iff `Q̇` or `K̇` is.
    s_dot: Option<Vec<F>>,
    /// `[bq, K]`: running `Σ eⱼ·ṡⱼ`.
    b: Vec<F>,
    /// `[bq, K, D]`: running `Σ eⱼ·(ṡⱼ·vⱼ + v̇ⱼ)`.
    o_dot: Vec<F>,
}

/// Which input tangents are present (not symbolic zeros), and their K.
#[derive(Clone, Copy)]
pub(super) struct Present {
    pub kd: usize,
    pub q: bool,
    pub k: bool,
    pub v: bool,
}

impl<F: Float> QueryBlock<F> {
    /// A workspace for blocks of up to [`BLOCK_Q`] of `t` query rows against `s` keys of
    /// dimension `d`, with the tangents `present` (`None` = a plain forward).
    pub(super) fn new(t: usize, s: usize, d: usize, present: Option<Present>) -> Self {
        let (bq, bk) = (BLOCK_Q.min(t), BLOCK_K.min(s));
        let tangent = present.map(|p| {
            let kd = p.kd;
            Tangents {
                kd,
                s,
                q_dot: p.q.then(|| vec![F::zero(); bq * kd * d]),
                k_dot: p.k.then(|| vec![F::zero(); kd * s * d]),
                v_dot: p.v.then(|| vec![F::zero(); s * kd * d]),
                cached: None,
                gathered: 0,
                s_dot: (p.q || p.k).then(|| vec![F::zero(); bq * kd * bk]),
                b: vec![F::zero(); bq * kd],
                o_dot: vec![F::zero(); bq * kd * d],
            }
        });
        QueryBlock {
            i0: 0,
            bq,
            d,
            e: vec![F::zero(); bq * bk],
            m: vec![F::zero(); bq],
            l: vec![F::zero(); bq],
            alpha: vec![F::one(); bq],
            o: vec![F::zero(); bq * d],
            tangent,
        }
    }

    /// Computes the query rows `i0..i0 + bq` (the rows of `head.q`): streams over the key
    /// blocks, then writes `O` into `out` (`[bq, D]`) and `Ȯ` into `out_dot` (`[K, bq, D]`). Both
    /// must be zero on entry (rows with no allowed key are left untouched). Nothing from an
    /// earlier block is read.
    pub(super) fn run(
        &mut self,
        head: &HeadInputs<'_, F>,
        keys: &Keys,
        i0: usize,
        out: ArrayViewMut2<'_, F>,
        out_dot: Option<ArrayViewMut3<'_, F>>,
    ) {
        let (bq, d) = head.q.dim();
        debug_assert!(bq <= self.l.len() && d == self.d);
        (self.i0, self.bq) = (i0, bq);
        self.l[..bq].fill(F::zero());
        self.o[..bq * d].fill(F::zero());
        if let Some(tg) = self.tangent.as_mut() {
            let kd = tg.kd;
            tg.b[..bq * kd].fill(F::zero());
            tg.o_dot[..bq * kd * d].fill(F::zero());
            if let (Some(buf), Some(qd)) = (tg.q_dot.as_mut(), head.q_dot) {
                // [bq, K, D] ← Q̇[K, bq, D] with the first two axes swapped
                gather(buf, qd.permuted_axes([1, 0, 2]));
            }
        }
        // keys at or past `hi` are causally masked for every row of the block
        let hi = keys.hi(i0 + bq - 1);
        for j0 in (0..hi).step_by(BLOCK_K) {
            let j1 = (j0 + BLOCK_K).min(hi);
            if let Some(mask) = keys.block(j0, j1) {
                self.key_block(head, keys, j0, j1, mask);
            }
        }
        self.finish(out, out_dot);
    }

    /// Folds keys `j0..j1` into the running state.
    fn key_block(
        &mut self,
        head: &HeadInputs<'_, F>,
        keys: &Keys,
        j0: usize,
        j1: usize,
        mask: Option<&[bool]>,
    ) {
        let (bq, bk, d) = (self.bq, j1 - j0, self.d);
        let kb = head.k.slice(s![j0..j1, ..]);
        let vb = head.v.slice(s![j0..j1, ..]);
        // S[bq, bk] = τ·Q[bq, D]·K_blkᵀ[D, bk]
        gemm_serial(
            head.tau,
            head.q,
            kb.t(),
            F::zero(),
            mat_mut(&mut self.e, bq, bk),
        );
        // E and the row statistics, once for all K directions
        for (t, row) in self.e[..bq * bk].chunks_exact_mut(bk).enumerate() {
            let allowed = keys.hi(self.i0 + t).saturating_sub(j0).min(bk);
            self.alpha[t] = online_row(row, allowed, mask, &mut self.m[t], &mut self.l[t]);
        }
        // o[bq, D] ← α ⊙ o + E[bq, bk]·V_blk[bk, D]
        scale_rows(&mut self.o, d, 1, &self.alpha);
        gemm_serial(
            F::one(),
            mat(&self.e, bq, bk),
            vb,
            F::one(),
            mat_mut(&mut self.o, bq, d),
        );
        if let Some(tg) = self.tangent.as_mut() {
            tg.key_block(head, j0, j1, bq, d, &self.e[..bq * bk], &self.alpha);
        }
    }

    /// `O = o/l`, `Ȯ = ȯ/l − (b/l)·O`, written into the (zero) output blocks.
    fn finish(&mut self, mut out: ArrayViewMut2<'_, F>, out_dot: Option<ArrayViewMut3<'_, F>>) {
        let (bq, d) = (self.bq, self.d);
        // o ← o/l in place (rows with no allowed key stay zero)
        for ((o, mut dst), &l) in self.o[..bq * d]
            .chunks_exact_mut(d)
            .zip(out.rows_mut())
            .zip(&self.l)
        {
            if l != F::zero() {
                let inv = l.recip();
                o.iter_mut().for_each(|x| *x *= inv);
                assign_row(&mut dst, o);
            }
        }
        let (Some(tg), Some(mut od)) = (self.tangent.as_mut(), out_dot) else {
            return;
        };
        let kd = tg.kd;
        // ȯ ← ȯ/l − (b/l)·O in place, row (t, k), then scattered to Ȯ[k, t, :]
        for (r, row) in tg.o_dot[..bq * kd * d].chunks_exact_mut(d).enumerate() {
            let t = r / kd;
            if self.l[t] == F::zero() {
                continue;
            }
            let inv = self.l[t].recip();
            let bl = tg.b[r] * inv;
            for (x, &oj) in row.iter_mut().zip(&self.o[t * d..(t + 1) * d]) {
                *x = *x * inv - bl * oj;
            }
        }
        for (kk, mut od_k) in od.outer_iter_mut().enumerate() {
            for (t, mut dst) in od_k.rows_mut().into_iter().enumerate() {
                if self.l[t] != F::zero() {
                    let r = t * kd + kk;
                    assign_row(&mut dst, &tg.o_dot[r * d..(r + 1) * d]);
                }
            }
        }
    }
}

/// Copies `src` into a row of an output view (a `memcpy` when the row is contiguous).
fn assign_row<F: Float>(dst: &mut ndarray::ArrayViewMut1<'_, F>, src: &[F]) {
    match dst.as_slice_mut() {
        Some(d) => d.copy_from_slice(src),
        None => dst.iter_mut().zip(src).for_each(|(y, &x)| *y = x),
    }
}

impl<F: Float> Tangents<F> {
    /// Folds keys `j0..j1` into the tangent accumulators, given the block's `E` (`[bq, bk]`) and
    /// the rows' rescale factors `alpha`.
    #[allow(clippy::too_many_arguments)]
    fn key_block(
        &mut self,
        head: &HeadInputs<'_, F>,
        j0: usize,
        j1: usize,
        bq: usize,
        d: usize,
        e: &[F],
        alpha: &[F],
    ) {
        let (kd, bk, s_n) = (self.kd, j1 - j0, self.s);
        let vb = head.v.slice(s![j0..j1, ..]);
        self.gather_keys(head, j1);
        if let Some(sd) = self.s_dot.as_mut() {
            let mut beta = F::zero();
            if let Some(qd) = self.q_dot.as_ref() {
                // Ṡ[bq·K, bk] = τ·Q̇[bq·K, D]·K_blkᵀ[D, bk]
                let kb = head.k.slice(s![j0..j1, ..]);
                gemm_serial(
                    head.tau,
                    mat(qd, bq * kd, d),
                    kb.t(),
                    beta,
                    mat_mut(sd, bq * kd, bk),
                );
                beta = F::one();
            }
            if let Some(cache) = self.k_dot.as_ref() {
                let mut sd = mat_mut(sd, bq, kd * bk);
                for kk in 0..kd {
                    // Ṡ[bq, k, :] += τ·Q[bq, D]·K̇ₖ_blkᵀ[D, bk]
                    let k_blk = mat(&cache[(kk * s_n + j0) * d..], bk, d);
                    gemm_serial(
                        head.tau,
                        head.q,
                        k_blk.t(),
                        beta,
                        sd.slice_mut(s![.., kk * bk..(kk + 1) * bk]),
                    );
                }
            }
            // per row (t, k): ṡ ← e ⊙ ṡ, b ← α·b + Σⱼ eⱼṡⱼ
            for (r, srow) in sd[..bq * kd * bk].chunks_exact_mut(bk).enumerate() {
                let t = r / kd;
                self.b[r] = alpha[t] * self.b[r] + mul_and_sum(srow, &e[t * bk..(t + 1) * bk]);
            }
        }
        // ȯ ← α ⊙ ȯ, row (t, k) by α[t]
        scale_rows(&mut self.o_dot, d, kd, alpha);
        if let Some(sd) = self.s_dot.as_ref() {
            // ȯ[bq·K, D] += (E⊙Ṡ)[bq·K, bk]·V_blk[bk, D]
            gemm_serial(
                F::one(),
                mat(sd, bq * kd, bk),
                vb,
                F::one(),
                mat_mut(&mut self.o_dot, bq * kd, d),
            );
        }
        if let Some(cache) = self.v_dot.as_ref() {
            // ȯ[bq, K·D] += E[bq, bk]·V̇_blk[bk, K·D]
            gemm_serial(
                F::one(),
                mat(e, bq, bk),
                mat(&cache[j0 * kd * d..], bk, kd * d),
                F::one(),
                mat_mut(&mut self.o_dot, bq, kd * d),
            );
        }
    }

    /// Makes keys `0..j1` of `head`'s kv head available in the key caches: starts afresh for a
    /// new kv head, then copies the keys not yet copied (`K̇` into `[K, S, D]`, `V̇` into
    /// `[S, K, D]`).
    fn gather_keys(&mut self, head: &HeadInputs<'_, F>, j1: usize) {
        if self.cached != Some(head.kv_id) {
            (self.cached, self.gathered) = (Some(head.kv_id), 0);
        }
        let (g, kd, s_n) = (self.gathered, self.kd, self.s);
        if j1 <= g {
            return;
        }
        let d = head.k.ncols();
        if let (Some(cache), Some(kdot)) = (self.k_dot.as_mut(), head.k_dot.as_ref()) {
            for kk in 0..kd {
                // [j1 − g, D] ← K̇[k, g..j1, :]
                gather(
                    &mut cache[(kk * s_n + g) * d..],
                    kdot.slice(s![kk..kk + 1, g..j1, ..]),
                );
            }
        }
        if let (Some(cache), Some(vdot)) = (self.v_dot.as_mut(), head.v_dot.as_ref()) {
            // [j1 − g, K, D] ← V̇[:, g..j1, :] with the first two axes swapped
            gather(
                &mut cache[g * kd * d..],
                vdot.slice(s![.., g..j1, ..]).permuted_axes([1, 0, 2]),
            );
        }
        self.gathered = j1;
    }
}

/// Online-softmax update of one query row for one key block: the row holds the block's scores
/// and becomes `eⱼ = exp(sⱼ − m_new)` on the allowed keys (the first `allowed` keys, minus the
/// masked ones) and 0 elsewhere; `m`, `l` are updated. Returns `α = exp(m_old − m_new)`, the factor
/// by which the row's earlier accumulators must be rescaled (1 if nothing changed or the row had
/// no allowed key before).
fn online_row<F: Float>(
    row: &mut [F],
    allowed: usize,
    mask: Option<&[bool]>,
    m: &mut F,
    l: &mut F,
) -> F {
    let (head, tail) = row.split_at_mut(allowed);
    tail.iter_mut().for_each(|x| *x = F::zero());
    // the block maximum over the allowed keys only, treated as a constant
    let block_max = match mask {
        None => (!head.is_empty()).then(|| lane_max(head)),
        Some(mask) => head
            .iter()
            .zip(mask)
            .filter(|&(_, &ok)| ok)
            .map(|(&x, _)| x)
            .reduce(F::max),
    };
    let Some(block_max) = block_max else {
        head.iter_mut().for_each(|x| *x = F::zero());
        return F::one();
    };
    let first = *l == F::zero();
    let m_new = if first { block_max } else { m.max(block_max) };
    let alpha = if first || m_new == *m {
        F::one()
    } else {
        (*m - m_new).exp()
    };
    exp_shifted_in_place(head, m_new);
    if let Some(mask) = mask {
        for (x, &ok) in head.iter_mut().zip(mask) {
            if !ok {
                *x = F::zero();
            }
        }
    }
    // the row maximum contributes exp(0) = 1 once it is reached, so l ≥ 1 from here on
    *l = *l * alpha + lane_sum(head);
    *m = m_new;
    alpha
}

/// Multiplies the rows of a flat `[n·per, width]` buffer by `alpha[row / per]` (rows whose factor
/// is 1 are left alone).
fn scale_rows<F: Float>(buf: &mut [F], width: usize, per: usize, alpha: &[F]) {
    for (r, row) in buf.chunks_exact_mut(width).enumerate() {
        let a = alpha[r / per];
        if a != F::one() {
            row.iter_mut().for_each(|x| *x *= a);
        }
    }
}

/// `matrixmultiply` threads a product once `m·k + k·n ≥ 2·2¹⁴` (its `threading.rs` heuristic);
/// below that it runs on the calling thread.
const SERIAL_GEMM_SIZE: usize = 1 << 15;

/// `C ← α·A·B + β·C` on the calling thread: products large enough for `matrixmultiply` to thread
/// are split along rows of A or columns of B (the workers already occupy every core; the split
/// does not change any sum).
///
/// # Shapes
/// - `a`: `[m, k]`, `b`: `[k, n]`, `c`: `[m, n]`
fn gemm_serial<F: Float>(
    alpha: F,
    a: ArrayView2<'_, F>,
    b: ArrayView2<'_, F>,
    beta: F,
    c: ArrayViewMut2<'_, F>,
) {
    let ((m, k), n) = (a.dim(), b.ncols());
    if m * k + k * n < SERIAL_GEMM_SIZE || (m <= 1 && n <= 1) {
        gemm_into(alpha, a, b, beta, c);
    } else if m > 1 && (m >= n || n <= 1) {
        let (a0, a1) = a.split_at(Axis(0), m / 2);
        let (c0, c1) = c.split_at(Axis(0), m / 2);
        gemm_serial(alpha, a0, b, beta, c0);
        gemm_serial(alpha, a1, b, beta, c1);
    } else {
        let (b0, b1) = b.split_at(Axis(1), n / 2);
        let (c0, c1) = c.split_at(Axis(1), n / 2);
        gemm_serial(alpha, a, b0, beta, c0);
        gemm_serial(alpha, a, b1, beta, c1);
    }
}

/// The first `rows·cols` elements of a workspace buffer as a `[rows, cols]` matrix.
fn mat<F: Float>(buf: &[F], rows: usize, cols: usize) -> ArrayView2<'_, F> {
    ArrayView2::from_shape((rows, cols), &buf[..rows * cols]).expect("workspace size")
}

/// The first `rows·cols` elements of a workspace buffer as a mutable `[rows, cols]` matrix.
fn mat_mut<F: Float>(buf: &mut [F], rows: usize, cols: usize) -> ArrayViewMut2<'_, F> {
    ArrayViewMut2::from_shape((rows, cols), &mut buf[..rows * cols]).expect("workspace size")
}

/// Copies a `[a, b, c]` view into the first `a·b·c` elements of a workspace buffer (row-major),
/// one last-axis row at a time (a `memcpy` when the rows are contiguous, as head slices are).
fn gather<F: Float>(buf: &mut [F], src: ArrayView3<'_, F>) {
    let c = src.shape()[2];
    for (dst, row) in buf[..src.len()].chunks_exact_mut(c).zip(src.rows()) {
        match row.as_slice() {
            Some(row) => dst.copy_from_slice(row),
            None => dst.iter_mut().zip(row).for_each(|(d, &x)| *d = x),
        }
    }
}

/// Lanes of the row reductions below: 8 interleaved accumulators, which the compiler keeps in
/// vector registers; the order of every sum is fixed, so results are deterministic.
const LANES: usize = 8;

/// `Σᵢ xᵢ` over 8 interleaved accumulators.
fn lane_sum<F: Float>(xs: &[F]) -> F {
    let mut acc = [F::zero(); LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    for (a, &x) in acc.iter_mut().zip(chunks.remainder()) {
        *a += x;
    }
    combine(acc)
}

/// `xᵢ ← xᵢ·eᵢ`, returning `Σᵢ xᵢ·eᵢ` (8 interleaved accumulators).
fn mul_and_sum<F: Float>(xs: &mut [F], e: &[F]) -> F {
    let mut acc = [F::zero(); LANES];
    let mut chunks = xs.chunks_exact_mut(LANES);
    let mut e_chunks = e.chunks_exact(LANES);
    for (c, ec) in (&mut chunks).zip(&mut e_chunks) {
        for ((a, x), &ej) in acc.iter_mut().zip(c.iter_mut()).zip(ec) {
            *x *= ej;
            *a += *x;
        }
    }
    for ((a, x), &ej) in acc
        .iter_mut()
        .zip(chunks.into_remainder())
        .zip(e_chunks.remainder())
    {
        *x *= ej;
        *a += *x;
    }
    combine(acc)
}

/// `maxᵢ xᵢ` of a non-empty slice over 8 interleaved lanes.
fn lane_max<F: Float>(xs: &[F]) -> F {
    let mut acc = [xs[0]; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = if x > *a { x } else { *a };
        }
    }
    for (a, &x) in acc.iter_mut().zip(chunks.remainder()) {
        *a = if x > *a { x } else { *a };
    }
    acc.into_iter().reduce(F::max).expect("LANES > 0")
}

/// Adds the lanes pairwise.
fn combine<F: Float>(a: [F; LANES]) -> F {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}
