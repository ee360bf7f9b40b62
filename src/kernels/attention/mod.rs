//! Multi-head scaled-dot-product attention with grouped-query heads, padding and causal masks,
//! streamed over key blocks (flash-style) for the primal and the K tangents.
//!
//! Per (batch, head), with `τ = 1/√D` and the set `M` of masked (query, key) pairs:
//!
//! - `S = τ·Q·Kᵀ`, `P = softmax(S)` over the allowed keys of each row (`Pᵢⱼ = 0` for `(i, j) ∈ M`),
//!   `O = P·V`
//! - `Ṡ = τ·(Q̇·Kᵀ + Q·K̇ᵀ)`, `Ṗ = P ⊙ (Ṡ − rowsum(P ⊙ Ṡ))`, `Ȯ = Ṗ·V + P·V̇`
//!
//! No `[T, S]` matrix is ever formed. For one query row `q` with scores `sⱼ = τ·q·kⱼ` and
//! `ṡⱼ = τ·(q̇·kⱼ + q·k̇ⱼ)`, the kernel walks the keys block by block keeping a running maximum
//! `m` (a constant: never differentiated) and, with `eⱼ = exp(sⱼ − m)`,
//!
//! - `l = Σ eⱼ`, `o = Σ eⱼ·vⱼ`, and per direction `b = Σ eⱼ·ṡⱼ`, `ȯ = Σ eⱼ·(ṡⱼ·vⱼ + v̇ⱼ)`,
//!
//! all rescaled by `exp(m_old − m_new)` when a block raises the maximum. At the end
//! `O = o/l` and `Ȯ = ȯ/l − (b/l)·O`, which is `Ṗ·V + P·V̇` since `Σ pⱼ(ṡⱼ − Σ pᵢṡᵢ)vⱼ =
//! Σ pⱼṡⱼvⱼ − (Σ pᵢṡᵢ)·O`. The per-block products are GEMMs with the K directions stacked
//! (see `stream.rs`); the working memory is `O(block² · K + K·S·D)` per worker (block workspaces and
//! one head's key tangents), never `O(T·S)`.
//!
//! Masked keys are skipped (loop bounds, boolean tests, and whole key blocks: the causal upper
//! triangle and fully padded blocks are never visited), never filled with `−∞`, so no `−∞·0` or
//! `(−∞) − (−∞)` can arise; a query row with no allowed key gives a zero output row and a zero
//! tangent row.
//!
//! Heads are read in place from the Hugging Face layout `[B, T, n_heads·D]` (head `h` is columns
//! `h·D..(h+1)·D`) through strided views. The work is split into (batch, head, query block)
//! blocks, grouped into tasks of consecutive query blocks of one head, run on the available cores
//! ([`parallel_map_init`]); each block owns its disjoint part of the output and is computed by
//! the same sequence of operations whatever the thread count and grouping, so the result is
//! bitwise deterministic.

mod reference;
mod stream;

use ndarray::{Array3, Array4, ArrayView2, ArrayViewMut2, ArrayViewMut3, Axis, Ix3, s};

pub use reference::attention_reference;

use super::check;
use crate::parallel::{available_workers, parallel_map_init};
use crate::{Dual, Error, Float, Result, common_k};
use stream::{BLOCK_Q, HeadInputs, Keys, Present, QueryBlock};

/// Below this many multiply-adds a call runs on the calling thread (spawning costs ~20 µs).
const PARALLEL_MIN_WORK: usize = 1 << 19;

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
/// `Ȯ = Ṗ·V + P·V̇`, `Ṗ = P ⊙ (Ṡ − rowsum(P ⊙ Ṡ))`, `Ṡ = τ·(Q̇·Kᵀ + Q·K̇ᵀ)`, streamed over key
/// blocks with an online softmax (see the [module docs](self)), on all available cores.
///
/// Any of q, k, v may carry a symbolic-zero tangent; its terms are skipped (with only Q̇ and V̇
/// nonzero, as in Spry's LoRA-on-q,v default, no `Q·K̇ᵀ` product is run; with only V̇, no
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
    attention_with_threads(q, k, v, key_mask, shape, available_workers())
}

/// [`attention`] on at most `threads` worker threads (1 = the calling thread only).
///
/// The result is bitwise identical for every `threads`: each (batch, head, query block) is
/// computed by one worker, by the same operations in the same order. Called from inside a
/// [`parallel_map`](crate::parallel::parallel_map) worker it runs serially.
///
/// # Shapes
/// As [`attention`].
///
/// # Errors
/// As [`attention`].
pub fn attention_with_threads<F: Float>(
    q: &Dual<F, Ix3>,
    k: &Dual<F, Ix3>,
    v: &Dual<F, Ix3>,
    key_mask: Option<ArrayView2<'_, bool>>,
    shape: &AttentionShape,
    threads: usize,
) -> Result<Dual<F, Ix3>> {
    const OP: &str = "attention";
    let g = Geometry::check(OP, q, k, v, key_mask.as_ref(), shape)?;
    let kd = common_k(OP, &[q.k(), k.k(), v.k()])?;
    let (b_n, t_n, s_n, d) = (g.batch, g.t, g.s, g.d);
    let (h_n, hd) = (shape.n_heads, shape.n_heads * d);
    // out[B, T, H·D], ȯ[K, B, T, H·D]
    let mut out = Array3::zeros((b_n, t_n, hd));
    let mut out_dot = kd.map(|kd| Array4::zeros((kd, b_n, t_n, hd)));
    if s_n == 0 || t_n == 0 {
        // no query, or no key at all: every query row is fully masked
        return Ok(Dual::from_parts_unchecked(out, out_dot));
    }
    let tau = F::from_f64(1.0 / (d as f64).sqrt());

    // multiply-adds of the call (2·T·S·D per head for the primal, up to 4·T·S·D per direction),
    // to decide whether threads pay off
    let work = (b_n * h_n * t_n * s_n * d).saturating_mul(2 + 4 * kd.unwrap_or(0));
    let workers = if work < PARALLEL_MIN_WORK { 1 } else { threads };
    let tasks = split_tasks(&mut out, out_dot.as_mut(), h_n, d, workers);
    let present = kd.map(|kd| Present {
        kd,
        q: !q.is_constant(),
        k: !k.is_constant(),
        v: !v.is_constant(),
    });
    let workspace = || QueryBlock::new(t_n, s_n, d, present);
    parallel_map_init(tasks, workers, workspace, |ws, task| {
        let (b, cols) = (task.b, task.h * d..(task.h + 1) * d);
        let kv = task.h / g.group;
        let kv_cols = kv * d..(kv + 1) * d;
        let keys = Keys {
            mask: key_mask.as_ref().map(|m| m.row(b).to_vec()),
            causal: shape.causal,
            t: t_n,
            s: s_n,
        };
        for block in task.blocks {
            let rows = block.i0..block.i0 + block.out.nrows();
            let head = HeadInputs {
                q: q.primal().slice(s![b, rows.clone(), cols.clone()]),
                k: k.primal().slice(s![b, .., kv_cols.clone()]),
                v: v.primal().slice(s![b, .., kv_cols.clone()]),
                q_dot: q.tangent().map(|t| t.slice(s![.., b, rows, cols.clone()])),
                k_dot: k.tangent().map(|t| t.slice(s![.., b, .., kv_cols.clone()])),
                v_dot: v.tangent().map(|t| t.slice(s![.., b, .., kv_cols.clone()])),
                tau,
                kv_id: (b, kv),
            };
            ws.run(&head, &keys, block.i0, block.out, block.out_dot);
        }
        Ok(())
    })?;
    Ok(Dual::from_parts_unchecked(out, out_dot))
}

/// Tasks per worker the query blocks are grouped into, at least (for load balance).
const TASKS_PER_WORKER: usize = 8;

/// Splits the outputs into (batch, head, query block) blocks, in that order, each owning its
/// part of the output: `out` `[B, T, H·D]` → `[B, T, H, D]` → `[B, H, T, D]` → `[BLOCK_Q, D]`
/// blocks, `ȯ` `[K, B, T, H·D]` → `[K, B, T, H, D]` → `[B, H, K, T, D]` → `[K, BLOCK_Q, D]`
/// blocks; and groups consecutive query blocks of one head into tasks, as few per head as
/// still gives every worker [`TASKS_PER_WORKER`] tasks, so that a worker copies a head's key
/// tangents once for several query blocks.
fn split_tasks<'a, F: Float>(
    out: &'a mut Array3<F>,
    out_dot: Option<&'a mut Array4<F>>,
    h_n: usize,
    d: usize,
    workers: usize,
) -> Vec<Task<'a, F>> {
    let (b_n, t_n) = (out.shape()[0], out.shape()[1]);
    let n_qb = t_n.div_ceil(BLOCK_Q);
    let chunks_per_head = (TASKS_PER_WORKER * workers)
        .div_ceil(b_n * h_n)
        .clamp(1, n_qb);
    let per_task = n_qb.div_ceil(chunks_per_head);
    let out_blocks = out
        .view_mut()
        .into_shape_with_order((b_n, t_n, h_n, d))
        .expect("standard layout")
        .permuted_axes([0, 2, 1, 3])
        .into_outer_iter_mut()
        .flat_map(|per_b| per_b.into_outer_iter_mut())
        .flat_map(|per_h| per_h.into_axis_chunks_iter_mut(Axis(0), BLOCK_Q));
    let mut dot_blocks = out_dot.map(|od| {
        let kd = od.shape()[0];
        od.view_mut()
            .into_shape_with_order((kd, b_n, t_n, h_n, d))
            .expect("standard layout")
            .permuted_axes([1, 3, 0, 2, 4])
            .into_outer_iter_mut()
            .flat_map(|per_b| per_b.into_outer_iter_mut())
            .flat_map(|per_h| per_h.into_axis_chunks_iter_mut(Axis(1), BLOCK_Q))
    });
    let mut tasks: Vec<Task<'a, F>> = Vec::new();
    for (i, out) in out_blocks.enumerate() {
        let (b, h, qb) = (i / (h_n * n_qb), i / n_qb % h_n, i % n_qb);
        if qb % per_task == 0 {
            tasks.push(Task {
                b,
                h,
                blocks: Vec::with_capacity(per_task),
            });
        }
        let block = QueryRows {
            i0: qb * BLOCK_Q,
            out,
            out_dot: dot_blocks
                .as_mut()
                .map(|it| it.next().expect("one tangent block per output block")),
        };
        tasks.last_mut().expect("pushed above").blocks.push(block);
    }
    tasks
}

/// Consecutive query blocks of head `h` of batch element `b`.
struct Task<'a, F: Float> {
    b: usize,
    h: usize,
    blocks: Vec<QueryRows<'a, F>>,
}

/// One query block of the output: rows `i0..i0 + out.nrows()` of a head.
struct QueryRows<'a, F: Float> {
    i0: usize,
    /// `[bq, D]`
    out: ArrayViewMut2<'a, F>,
    /// `[K, bq, D]`
    out_dot: Option<ArrayViewMut3<'a, F>>,
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
