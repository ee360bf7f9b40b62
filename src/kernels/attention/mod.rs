//! Multi-head scaled-dot-product attention with grouped-query heads, padding and causal masks.
//!
//! Per (batch, head), with `τ = 1/√D` and the set `M` of masked (query, key) pairs:
//!
//! - `S = τ·Q·Kᵀ`, `P = softmax(S)` over the allowed keys of each row (`Pᵢⱼ = 0` for `(i, j) ∈ M`),
//!   `O = P·V`
//! - `Ṡ = τ·(Q̇·Kᵀ + Q·K̇ᵀ)` with `Ṡᵢⱼ = 0` for `(i, j) ∈ M`, `Ṗ = P ⊙ (Ṡ − rowsum(P ⊙ Ṡ))`,
//!   `Ȯ = Ṗ·V + P·V̇`
//!
//! Masked entries are skipped (loop bounds and boolean tests), never filled with `−∞`, so no
//! `−∞·0` or `(−∞) − (−∞)` can arise; a query row with no allowed key gives a zero output row and
//! a zero tangent row.
//!
//! Heads are read in place from the Hugging Face layout `[B, T, n_heads·D]` (head `h` is columns
//! `h·D..(h+1)·D`) through strided views. One (batch, head) is processed at a time: the kernel
//! holds that head's `[T, S]` probabilities and its K tangent score blocks, never all heads'.
//!
//! The K tangent directions are stacked "query-row major" (rows `(t, k)`), which turns every
//! tangent product into a single GEMM per head: `Q̇·Kᵀ` is `[T·K, D]·[D, S]`, `Q·K̇ᵀ` is
//! `[T, D]·[D, K·S]`, `Ṗ·V` is `[T·K, S]·[S, D]` and `P·V̇` is `[T, S]·[S, K·D]`. The tangent slices
//! of one head are gathered into these stacked layouts (one copy of `K·(T + 2S)·D` elements per
//! head, small next to the `K·T·S·D` GEMMs), and the output tangent is scattered back.

use ndarray::{Array2, Array3, Array4, ArrayView2, ArrayViewMut2, Axis, Ix3, s};

use super::check;
use super::gemm::gemm_into;
use super::softmax::{pairwise_dot, pairwise_sum};
use crate::{Dual, Error, Float, Result, common_k};

/// Geometry of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    /// Number of query heads H (the q and output last axis is `H·D`).
    pub n_heads: usize,
    /// Number of key/value heads (the k and v last axis is `n_kv_heads·D`); query head `h` reads
    /// kv head `h / (n_heads / n_kv_heads)` (grouped-query attention; equal to `n_heads` for
    /// plain multi-head attention).
    pub n_kv_heads: usize,
    /// Head dimension D; the scores are scaled by `1/√D`.
    pub head_dim: usize,
    /// Causal mask: query `t` may attend key `s` only if `s ≤ t + (S − T)`, so a chunk of T new
    /// queries against S ≥ T cached keys sees every earlier key.
    pub causal: bool,
}

/// Multi-head scaled-dot-product attention: per (batch, head), `O = softmax(τ·Q·Kᵀ)·V` with
/// `τ = 1/√D`, masked entries skipped, and the tangent
/// `Ȯ = Ṗ·V + P·V̇`, `Ṗ = P ⊙ (Ṡ − rowsum(P ⊙ Ṡ))`, `Ṡ = τ·(Q̇·Kᵀ + Q·K̇ᵀ)`.
///
/// Any of q, k, v may carry a symbolic-zero tangent; its terms are skipped (with only Q̇ and V̇
/// nonzero, as in Spry's LoRA-on-q,v default, the `Q·K̇ᵀ` GEMM is never run; with only V̇, no
/// tangent scores are formed at all). If all three are symbolic zeros the output is a symbolic
/// zero and no tangent work is done.
///
/// A key is allowed for query `t` of batch `b` if `key_mask[b, s]` is true (or there is no mask)
/// and, when `shape.causal`, `s ≤ t + (S − T)`. A query row with no allowed key gives a zero output
/// row and a zero tangent row.
///
/// # Shapes
/// - `q`: `[B, T, H·D]`, `k`, `v`: `[B, S, H_kv·D]` (head `h` = columns `h·D..(h+1)·D`), tangents
///   `[K, ..]`
/// - `key_mask`: `[B, S]`, true = the key may be attended (padding mask)
/// - output: `[B, T, H·D]`
///
/// # Errors
/// - [`Error::InvalidArgument`] if a head count or the head dimension is zero, or `n_heads` is
///   not a multiple of `n_kv_heads`.
/// - [`Error::ShapeMismatch`] if q's last axis is not `H·D`, k's is not `H_kv·D`, v's shape
///   differs from k's, the batch sizes differ, or `key_mask` is not `[B, S]`.
/// - [`Error::TangentCountMismatch`] if the operands carry different K.
pub fn attention<F: Float>(
    q: &Dual<F, Ix3>,
    k: &Dual<F, Ix3>,
    v: &Dual<F, Ix3>,
    key_mask: Option<ArrayView2<'_, bool>>,
    shape: &AttentionShape,
) -> Result<Dual<F, Ix3>> {
    const OP: &str = "attention";
    let g = Geometry::check(OP, q, k, v, key_mask.as_ref(), shape)?;
    let kd = common_k(OP, &[q.k(), k.k(), v.k()])?;
    let (b_n, t_n, s_n, d) = (g.batch, g.t, g.s, g.d);
    let hd = shape.n_heads * d;
    let tau = F::from_f64(1.0 / (d as f64).sqrt());

    // out[B, T, H·D], filled head by head through strided views
    let mut out = Array3::zeros((b_n, t_n, hd));
    // ȯ[K, B, T, H·D]
    let mut out_dot = kd.map(|kd| Array4::zeros((kd, b_n, t_n, hd)));
    if s_n == 0 {
        // no keys at all: every query row is fully masked
        return Ok(Dual::from_parts_unchecked(out, out_dot));
    }
    let present = Present {
        q: !q.is_constant(),
        k: !k.is_constant(),
        v: !v.is_constant(),
    };
    let mut ws = Workspace::new(t_n, s_n, d, kd.map(|kd| (kd, present)));
    let mut mask_row = vec![true; s_n];

    for bi in 0..b_n {
        if let Some(m) = &key_mask {
            for (dst, &src) in mask_row.iter_mut().zip(m.row(bi)) {
                *dst = src;
            }
        }
        let rows = RowMask {
            keys: &mask_row,
            has_mask: key_mask.is_some(),
            causal: shape.causal,
            t: t_n,
        };
        for kv in 0..shape.n_kv_heads {
            let kv_cols = kv * d..(kv + 1) * d;
            // K, V of this kv head: [S, D] strided views
            let kh = k.primal().slice(s![bi, .., kv_cols.clone()]);
            let vh = v.primal().slice(s![bi, .., kv_cols.clone()]);
            if let Some(tw) = ws.tangent.as_mut() {
                tw.gather_kv(k, v, bi, kv_cols.clone());
            }
            for h in kv * g.group..(kv + 1) * g.group {
                let cols = h * d..(h + 1) * d;
                // Q of this head: [T, D] strided view
                let qh = q.primal().slice(s![bi, .., cols.clone()]);
                // S[T, S] = τ·Q·Kᵀ, then P = masked row softmax of S, in place
                gemm_into(tau, qh, kh.t(), F::zero(), ws.p.view_mut());
                for (ti, prow) in ws.p.axis_iter_mut(Axis(0)).enumerate() {
                    let prow = prow.into_slice().expect("standard layout");
                    rows.softmax_in_place(ti, prow);
                }
                // O[T, D] = P·V, written straight into out[bi, :, cols]
                gemm_into(
                    F::one(),
                    ws.p.view(),
                    vh,
                    F::zero(),
                    out.slice_mut(s![bi, .., cols.clone()]),
                );
                if let (Some(tw), Some(od)) = (ws.tangent.as_mut(), out_dot.as_mut()) {
                    tw.head(q, bi, cols.clone(), qh, kh, vh, tau, ws.p.view(), &rows);
                    tw.scatter_out(od, bi, cols);
                }
            }
        }
    }
    Ok(Dual::from_parts_unchecked(out, out_dot))
}

/// The validated sizes of one attention call.
struct Geometry {
    batch: usize,
    t: usize,
    s: usize,
    d: usize,
    /// Query heads per kv head.
    group: usize,
}

impl Geometry {
    fn check<F: Float>(
        op: &'static str,
        q: &Dual<F, Ix3>,
        k: &Dual<F, Ix3>,
        v: &Dual<F, Ix3>,
        key_mask: Option<&ArrayView2<'_, bool>>,
        shape: &AttentionShape,
    ) -> Result<Self> {
        let &AttentionShape {
            n_heads,
            n_kv_heads,
            head_dim,
            ..
        } = shape;
        if n_heads == 0 || n_kv_heads == 0 || head_dim == 0 {
            return Err(Error::invalid(
                op,
                format!(
                    "n_heads ({n_heads}), n_kv_heads ({n_kv_heads}) and head_dim ({head_dim}) \
                     must be positive"
                ),
            ));
        }
        if n_heads % n_kv_heads != 0 {
            return Err(Error::invalid(
                op,
                format!("n_heads ({n_heads}) is not a multiple of n_kv_heads ({n_kv_heads})"),
            ));
        }
        check::heads(op, q.shape(), n_heads, head_dim)?;
        check::heads(op, k.shape(), n_kv_heads, head_dim)?;
        check::exact(op, v.shape(), k.shape())?;
        let (batch, t) = (q.shape()[0], q.shape()[1]);
        let s = k.shape()[1];
        if k.shape()[0] != batch {
            return Err(Error::shape(
                op,
                format!("k, v [{batch}, S, {}] (batch of q)", n_kv_heads * head_dim),
                k.shape(),
            ));
        }
        if let Some(m) = key_mask {
            check::exact(op, m.shape(), &[batch, s])?;
        }
        Ok(Geometry {
            batch,
            t,
            s,
            d: head_dim,
            group: n_heads / n_kv_heads,
        })
    }
}

/// Which keys one query row of the current batch element may attend.
struct RowMask<'a> {
    /// `key_mask[b, :]` (all true without a mask).
    keys: &'a [bool],
    has_mask: bool,
    causal: bool,
    /// Number of queries T.
    t: usize,
}

impl RowMask<'_> {
    /// One past the last key query `ti` may attend by position: `ti + 1 + (S − T)` if causal,
    /// clamped to `[0, S]`.
    fn hi(&self, ti: usize) -> usize {
        let s = self.keys.len();
        if self.causal {
            (ti + 1 + s).saturating_sub(self.t).min(s)
        } else {
            s
        }
    }

    /// Replaces the scores of row `ti` by the probabilities over its allowed keys (0 elsewhere;
    /// all 0 if no key is allowed).
    fn softmax_in_place<F: Float>(&self, ti: usize, row: &mut [F]) {
        let hi = self.hi(ti);
        let (head, tail) = row.split_at_mut(hi);
        tail.iter_mut().for_each(|p| *p = F::zero());
        // the maximum over the allowed keys only, treated as a constant
        let mut max: Option<F> = None;
        for (sc, &ok) in head.iter().zip(self.keys) {
            if ok {
                max = Some(max.map_or(*sc, |m| m.max(*sc)));
            }
        }
        let Some(m) = max else {
            head.iter_mut().for_each(|p| *p = F::zero());
            return;
        };
        for (sc, &ok) in head.iter_mut().zip(self.keys) {
            *sc = if ok { (*sc - m).exp() } else { F::zero() };
        }
        // the maximum contributes exp(0) = 1, so the sum is ≥ 1
        let inv = pairwise_sum(head).recip();
        head.iter_mut().for_each(|p| *p *= inv);
    }

    /// Turns the tangent scores `ṡ` of row `ti` (one direction) into `ṗ = p ⊙ (ṡ − ⟨p, ṡ⟩)`,
    /// with `ṡ` and `ṗ` zero on the masked keys.
    fn softmax_tangent_in_place<F: Float>(&self, ti: usize, p: &[F], sd: &mut [F]) {
        let hi = self.hi(ti);
        let (head, tail) = sd.split_at_mut(hi);
        tail.iter_mut().for_each(|x| *x = F::zero());
        if self.has_mask {
            for (x, &ok) in head.iter_mut().zip(self.keys) {
                if !ok {
                    *x = F::zero();
                }
            }
        }
        let dot = pairwise_dot(&p[..hi], head);
        for (x, &pj) in head.iter_mut().zip(p) {
            *x = pj * (*x - dot);
        }
    }
}

/// Per-call workspace, allocated once and reused for every (batch, head): one head's `[T, S]`
/// probabilities and, with tangents, its K stacked tangent blocks.
struct Workspace<F: Float> {
    /// `[T, S]`: the scores `S`, then (in place) the probabilities `P`.
    p: Array2<F>,
    tangent: Option<TangentWorkspace<F>>,
}

impl<F: Float> Workspace<F> {
    fn new(t: usize, s: usize, d: usize, tangent: Option<(usize, Present)>) -> Self {
        Workspace {
            p: Array2::zeros((t, s)),
            tangent: tangent.map(|(kd, has)| TangentWorkspace {
                kd,
                t,
                s,
                d,
                q_dot: has.q.then(|| Array2::zeros((t * kd, d))),
                k_dot: has.k.then(|| Array2::zeros((kd * s, d))),
                v_dot: has.v.then(|| Array2::zeros((s, kd * d))),
                s_dot: (has.q || has.k).then(|| Array2::zeros((t * kd, s))),
                o_dot: Array2::zeros((t * kd, d)),
            }),
        }
    }
}

/// Which of the tangents `Q̇`, `K̇`, `V̇` are present (not symbolic zeros).
#[derive(Clone, Copy)]
struct Present {
    q: bool,
    k: bool,
    v: bool,
}

/// The tangent blocks of one head, K directions stacked; `None` = that term is a symbolic zero.
struct TangentWorkspace<F: Float> {
    kd: usize,
    t: usize,
    s: usize,
    d: usize,
    /// `[T·K, D]`, rows `(t, k)`: `Q̇` of the current query head.
    q_dot: Option<Array2<F>>,
    /// `[K·S, D]`, rows `(k, s)`: `K̇` of the current kv head (its transpose is `[D, K·S]`).
    k_dot: Option<Array2<F>>,
    /// `[S, K·D]`, columns `(k, d)`: `V̇` of the current kv head.
    v_dot: Option<Array2<F>>,
    /// `[T·K, S]`, rows `(t, k)`: `Ṡ`, then (in place) `Ṗ`.
    s_dot: Option<Array2<F>>,
    /// `[T·K, D]` = `[T, K·D]`, rows `(t, k)`: `Ȯ` of the current query head.
    o_dot: Array2<F>,
}

impl<F: Float> TangentWorkspace<F> {
    /// Gathers `K̇`, `V̇` of kv head columns `cols` of batch `bi` into the stacked layouts.
    fn gather_kv(
        &mut self,
        k: &Dual<F, Ix3>,
        v: &Dual<F, Ix3>,
        bi: usize,
        cols: std::ops::Range<usize>,
    ) {
        let (kd, s, d) = (self.kd, self.s, self.d);
        if let (Some(dst), Some(tk)) = (self.k_dot.as_mut(), k.tangent()) {
            // [K, S, D] ← K̇[:, bi, :, cols]
            stacked(dst, (kd, s, d)).assign(&tk.slice(s![.., bi, .., cols.clone()]));
        }
        if let (Some(dst), Some(tv)) = (self.v_dot.as_mut(), v.tangent()) {
            // [S, K, D] ← V̇[:, bi, :, cols] with the first two axes swapped
            stacked(dst, (s, kd, d))
                .assign(&tv.slice(s![.., bi, .., cols]).permuted_axes([1, 0, 2]));
        }
    }

    /// Computes `Ȯ` of one (batch, query head) into `o_dot`, given the head's primal views and
    /// probabilities `p`.
    #[allow(clippy::too_many_arguments)]
    fn head(
        &mut self,
        q: &Dual<F, Ix3>,
        bi: usize,
        cols: std::ops::Range<usize>,
        qh: ArrayView2<'_, F>,
        kh: ArrayView2<'_, F>,
        vh: ArrayView2<'_, F>,
        tau: F,
        p: ArrayView2<'_, F>,
        rows: &RowMask<'_>,
    ) {
        let (kd, t, s, d) = (self.kd, self.t, self.s, self.d);
        if let Some(sd) = self.s_dot.as_mut() {
            let mut beta = F::zero();
            if let (Some(qd), Some(tq)) = (self.q_dot.as_mut(), q.tangent()) {
                // [T, K, D] ← Q̇[:, bi, :, cols] with the first two axes swapped
                stacked(qd, (t, kd, d))
                    .assign(&tq.slice(s![.., bi, .., cols]).permuted_axes([1, 0, 2]));
                // Ṡ[T·K, S] = τ·Q̇[T·K, D]·Kᵀ[D, S]
                gemm_into(tau, qd.view(), kh.t(), beta, sd.view_mut());
                beta = F::one();
            }
            if let Some(kdot) = self.k_dot.as_ref() {
                // Ṡ[T, K·S] += τ·Q[T, D]·K̇ᵀ[D, K·S]
                gemm_into(tau, qh, kdot.t(), beta, flat_rows(sd, t, kd * s));
            }
            // Ṗ = P ⊙ (Ṡ − rowsum(P ⊙ Ṡ)), row (t, k) against P row t
            let p = p.as_slice().expect("standard layout");
            for (r, row) in sd.axis_iter_mut(Axis(0)).enumerate() {
                let ti = r / kd;
                let row = row.into_slice().expect("standard layout");
                rows.softmax_tangent_in_place(ti, &p[ti * s..(ti + 1) * s], row);
            }
        }
        let mut beta = F::zero();
        if let Some(pd) = self.s_dot.as_ref() {
            // Ȯ[T·K, D] = Ṗ[T·K, S]·V[S, D]
            gemm_into(F::one(), pd.view(), vh, beta, self.o_dot.view_mut());
            beta = F::one();
        }
        if let Some(vd) = self.v_dot.as_ref() {
            // Ȯ[T, K·D] += P[T, S]·V̇[S, K·D]
            gemm_into(
                F::one(),
                p,
                vd.view(),
                beta,
                flat_rows(&mut self.o_dot, t, kd * d),
            );
        }
    }

    /// Scatters `o_dot` (`[T, K, D]`) into `ȯ[:, bi, :, cols]` (`[K, T, D]`).
    fn scatter_out(&self, out_dot: &mut Array4<F>, bi: usize, cols: std::ops::Range<usize>) {
        let (kd, t, d) = (self.kd, self.t, self.d);
        let src = self
            .o_dot
            .view()
            .into_shape_with_order((t, kd, d))
            .expect("contiguous workspace");
        out_dot
            .slice_mut(s![.., bi, .., cols])
            .assign(&src.permuted_axes([1, 0, 2]));
    }
}

/// A contiguous workspace matrix viewed as a 3-D block `dims` (same element count).
fn stacked<F: Float>(
    a: &mut Array2<F>,
    dims: (usize, usize, usize),
) -> ndarray::ArrayViewMut3<'_, F> {
    a.view_mut()
        .into_shape_with_order(dims)
        .expect("contiguous workspace")
}

/// A contiguous workspace matrix viewed with `rows` rows of `cols` (same element count).
fn flat_rows<F: Float>(a: &mut Array2<F>, rows: usize, cols: usize) -> ArrayViewMut2<'_, F> {
    a.view_mut()
        .into_shape_with_order((rows, cols))
        .expect("contiguous workspace")
}

// ---- naive reference twins (loops, one direction at a time) -------------------------------------

/// Naive twin of [`attention`]: textbook loops over (batch, head, query), one direction at a
/// time, masked keys skipped by an explicit test. For tests.
///
/// # Errors
/// As [`attention`].
#[allow(clippy::needless_range_loop)] // textbook index loops on purpose
pub fn attention_reference<F: Float>(
    q: &Dual<F, Ix3>,
    k: &Dual<F, Ix3>,
    v: &Dual<F, Ix3>,
    key_mask: Option<ArrayView2<'_, bool>>,
    shape: &AttentionShape,
) -> Result<Dual<F, Ix3>> {
    const OP: &str = "attention_reference";
    let g = Geometry::check(OP, q, k, v, key_mask.as_ref(), shape)?;
    let kd = common_k(OP, &[q.k(), k.k(), v.k()])?;
    let (b_n, t_n, s_n, d) = (g.batch, g.t, g.s, g.d);
    let h_n = shape.n_heads;
    let tau = F::from_f64(1.0 / (d as f64).sqrt());
    let (qp, kp, vp) = (q.primal(), k.primal(), v.primal());
    let allowed = |b: usize, t: usize, s: usize| -> bool {
        let by_mask = key_mask.as_ref().is_none_or(|m| m[[b, s]]);
        let by_pos = !shape.causal || s + t_n <= t + s_n;
        by_mask && by_pos
    };
    let mut out = Array3::zeros((b_n, t_n, h_n * d));
    let mut out_dot = kd.map(|kd| Array4::zeros((kd, b_n, t_n, h_n * d)));
    let mut p = vec![F::zero(); s_n];
    for b in 0..b_n {
        for h in 0..h_n {
            let g_kv = h / g.group;
            for t in 0..t_n {
                // p = softmax of the allowed scores, 0 elsewhere
                let mut max: Option<F> = None;
                for s in 0..s_n {
                    p[s] = F::zero();
                    if allowed(b, t, s) {
                        let mut sc = F::zero();
                        for e in 0..d {
                            sc += qp[[b, t, h * d + e]] * kp[[b, s, g_kv * d + e]];
                        }
                        p[s] = tau * sc;
                        max = Some(max.map_or(p[s], |m: F| if p[s] > m { p[s] } else { m }));
                    }
                }
                let Some(m) = max else {
                    continue; // fully masked row: zero output and tangent
                };
                let mut sum = F::zero();
                for s in 0..s_n {
                    if allowed(b, t, s) {
                        p[s] = (p[s] - m).exp();
                        sum += p[s];
                    }
                }
                for s in 0..s_n {
                    p[s] /= sum;
                }
                for e in 0..d {
                    let mut o = F::zero();
                    for s in 0..s_n {
                        o += p[s] * vp[[b, s, g_kv * d + e]];
                    }
                    out[[b, t, h * d + e]] = o;
                }
                let Some(od) = out_dot.as_mut() else {
                    continue;
                };
                for kk in 0..od.shape()[0] {
                    // ṡ_s = τ·(q̇·k_s + q·k̇_s) on the allowed keys
                    let mut sd = vec![F::zero(); s_n];
                    for s in 0..s_n {
                        if !allowed(b, t, s) {
                            continue;
                        }
                        let mut acc = F::zero();
                        for e in 0..d {
                            if let Some(tq) = q.tangent() {
                                acc += tq[[kk, b, t, h * d + e]] * kp[[b, s, g_kv * d + e]];
                            }
                            if let Some(tk) = k.tangent() {
                                acc += qp[[b, t, h * d + e]] * tk[[kk, b, s, g_kv * d + e]];
                            }
                        }
                        sd[s] = tau * acc;
                    }
                    let mut dot = F::zero();
                    for s in 0..s_n {
                        dot += p[s] * sd[s];
                    }
                    for e in 0..d {
                        let mut o = F::zero();
                        for s in 0..s_n {
                            if !allowed(b, t, s) {
                                continue;
                            }
                            o += p[s] * (sd[s] - dot) * vp[[b, s, g_kv * d + e]];
                            if let Some(tv) = v.tangent() {
                                o += p[s] * tv[[kk, b, s, g_kv * d + e]];
                            }
                        }
                        od[[kk, b, t, h * d + e]] = o;
                    }
                }
            }
        }
    }
    Ok(Dual::from_parts_unchecked(out, out_dot))
}
