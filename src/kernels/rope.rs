//! Rotary position embedding (RoPE), in the two layouts found in checkpoints.
//!
//! Token `t` at position `m` has each pair `(a, b)` of every head rotated by the angle `m·ωᵢ`,
//! `ωᵢ = θ^(−2i/D)` for pair `i < D/2`:
//!
//! `a' = a·cos(mωᵢ) − b·sin(mωᵢ)`, `b' = b·cos(mωᵢ) + a·sin(mωᵢ)`
//!
//! - [`RopeLayout::RotateHalf`] pairs columns `(i, i + D/2)` (Hugging Face Llama, `rotate_half`).
//! - [`RopeLayout::Interleaved`] pairs columns `(2i, 2i + 1)` (GPT-J, GGUF raw rows).
//!
//! RoPE is linear in its input, so the tangent is the same rotation applied to every direction:
//! `ẏ_k = R·ẋ_k`.

use ndarray::{Array2, ArrayView2, Ix3};

use super::check;
use crate::{Dual, Error, Float, Result};

/// Which columns of a head form the rotation pairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// Pairs `(i, i + D/2)`: Hugging Face Llama (`rotate_half`), SmolLM, Mistral, Qwen.
    RotateHalf,
    /// Pairs `(2i, 2i + 1)`: GPT-J, the original RoFormer, and the q/k rows of GGUF files.
    Interleaved,
}

impl RopeLayout {
    /// The columns `(a, b)` of rotation pair `i` in a head of dimension `d`.
    fn pair(self, i: usize, d: usize) -> (usize, usize) {
        match self {
            RopeLayout::RotateHalf => (i, i + d / 2),
            RopeLayout::Interleaved => (2 * i, 2 * i + 1),
        }
    }
}

/// The cosines and sines of every (position, pair) angle, built once per model.
///
/// # Shapes
/// - `cos`, `sin`: `[max_positions, D/2]`, entry `[m, i]` for the angle `m·θ^(−2i/D)`
#[derive(Clone, Debug)]
pub struct RopeTable<F> {
    head_dim: usize,
    theta: f64,
    cos: Array2<F>,
    sin: Array2<F>,
}

impl<F: Float> RopeTable<F> {
    /// Builds the table for positions `0..max_positions`: `cos[m, i] = cos(m·ωᵢ)`,
    /// `sin[m, i] = sin(m·ωᵢ)` with `ωᵢ = θ^(−2i/D)`, the angles computed in f64 and then
    /// rounded to `F`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `head_dim` is zero or odd, `theta` is not a finite positive
    /// number, or the table size overflows.
    pub fn new(head_dim: usize, max_positions: usize, theta: f64) -> Result<Self> {
        const OP: &str = "RopeTable::new";
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(Error::invalid(
                OP,
                format!("head_dim must be even and positive, got {head_dim}"),
            ));
        }
        if !(theta.is_finite() && theta > 0.0) {
            return Err(Error::invalid(
                OP,
                format!("theta must be finite and positive, got {theta}"),
            ));
        }
        let half = head_dim / 2;
        if max_positions.checked_mul(half).is_none() {
            return Err(Error::invalid(
                OP,
                format!("a table of {max_positions} x {half} overflows"),
            ));
        }
        let inv_freq: Vec<f64> = (0..half)
            .map(|i| theta.powf(-((2 * i) as f64) / head_dim as f64))
            .collect();
        let angle = |m: usize, i: usize| m as f64 * inv_freq[i];
        Ok(RopeTable {
            head_dim,
            theta,
            cos: Array2::from_shape_fn((max_positions, half), |(m, i)| {
                F::from_f64(angle(m, i).cos())
            }),
            sin: Array2::from_shape_fn((max_positions, half), |(m, i)| {
                F::from_f64(angle(m, i).sin())
            }),
        })
    }

    /// The head dimension D the table was built for.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// The number of positions the table covers.
    pub fn max_positions(&self) -> usize {
        self.cos.nrows()
    }

    /// The base θ of the frequencies.
    pub fn theta(&self) -> f64 {
        self.theta
    }

    /// `cos(m·ωᵢ)`, `[max_positions, D/2]`.
    pub fn cos(&self) -> ArrayView2<'_, F> {
        self.cos.view()
    }

    /// `sin(m·ωᵢ)`, `[max_positions, D/2]`.
    pub fn sin(&self) -> ArrayView2<'_, F> {
        self.sin.view()
    }
}

/// Rotary position embedding: every head of token `t` is rotated pair by pair by the angles of
/// position `position_offset + t`; the same rotation is applied to each tangent direction
/// (`ẏ_k = R·ẋ_k`). A symbolic-zero tangent stays a symbolic zero.
///
/// # Shapes
/// - `x`: `[B, T, n_heads·D]` (head `h` = columns `h·D..(h+1)·D`), tangent `[K, B, T, n_heads·D]`
/// - output: the same shape as `x`
///
/// # Errors
/// - [`Error::InvalidArgument`] if `n_heads` is zero or positions
///   `position_offset..position_offset + T` run past the table.
/// - [`Error::ShapeMismatch`] if `x`'s last axis is not `n_heads·D` with D the table's head
///   dimension.
pub fn rope<F: Float>(
    x: &Dual<F, Ix3>,
    table: &RopeTable<F>,
    n_heads: usize,
    position_offset: usize,
    layout: RopeLayout,
) -> Result<Dual<F, Ix3>> {
    const OP: &str = "rope";
    let t_n = check_rope(OP, x, table, n_heads, position_offset)?;
    // y[B·T, H·D] = R(position of the row)·x
    let mut y = x.primal_rows().to_owned();
    rotate_rows(&mut y, table, t_n, position_offset, layout);
    // ẏ[K·B·T, H·D] = R·ẋ: row r of the stacked tangent is token r mod T, as in the primal
    let ty = x.tangent_rows().map(|tx| {
        let mut ty = tx.to_owned();
        rotate_rows(&mut ty, table, t_n, position_offset, layout);
        (x.k().unwrap_or(0), ty)
    });
    Ok(Dual::from_rows(x.shape(), y, ty))
}

/// Validates a rope call and returns T.
fn check_rope<F: Float>(
    op: &'static str,
    x: &Dual<F, Ix3>,
    table: &RopeTable<F>,
    n_heads: usize,
    position_offset: usize,
) -> Result<usize> {
    if n_heads == 0 {
        return Err(Error::invalid(op, "n_heads must be positive"));
    }
    check::heads(op, x.shape(), n_heads, table.head_dim)?;
    let t_n = x.shape()[1];
    match position_offset.checked_add(t_n) {
        Some(end) if end <= table.max_positions() => Ok(t_n),
        _ => Err(Error::invalid(
            op,
            format!(
                "positions {position_offset}..{position_offset}+{t_n} run past the table of {} \
                 positions",
                table.max_positions()
            ),
        )),
    }
}

/// Rotates in place every row of `rows` (`[N, H·D]`, row `r` = token `r mod T`).
fn rotate_rows<F: Float>(
    rows: &mut Array2<F>,
    table: &RopeTable<F>,
    t_n: usize,
    offset: usize,
    layout: RopeLayout,
) {
    let (d, half) = (table.head_dim, table.head_dim / 2);
    let width = rows.ncols();
    let flat = rows.as_slice_mut().expect("owned rows are standard");
    for (r, row) in flat.chunks_exact_mut(width).enumerate() {
        let pos = offset + r % t_n;
        let cos = &table.cos.as_slice().expect("standard")[pos * half..(pos + 1) * half];
        let sin = &table.sin.as_slice().expect("standard")[pos * half..(pos + 1) * half];
        for head in row.chunks_exact_mut(d) {
            match layout {
                RopeLayout::RotateHalf => {
                    let (lo, hi) = head.split_at_mut(half);
                    for (((a, b), &c), &s) in lo.iter_mut().zip(hi).zip(cos).zip(sin) {
                        let (x0, x1) = (*a, *b);
                        *a = x0 * c - x1 * s;
                        *b = x1 * c + x0 * s;
                    }
                }
                RopeLayout::Interleaved => {
                    for ((pair, &c), &s) in head.chunks_exact_mut(2).zip(cos).zip(sin) {
                        let (x0, x1) = (pair[0], pair[1]);
                        pair[0] = x0 * c - x1 * s;
                        pair[1] = x1 * c + x0 * s;
                    }
                }
            }
        }
    }
}

// ---- naive reference twins (loops, one direction at a time) -------------------------------------

/// Naive twin of [`rope`]: explicit loops over (batch, token, head, pair), one direction at a
/// time, with the angles recomputed in f64 from the table's θ. For tests.
///
/// # Errors
/// As [`rope`].
pub fn rope_reference<F: Float>(
    x: &Dual<F, Ix3>,
    table: &RopeTable<F>,
    n_heads: usize,
    position_offset: usize,
    layout: RopeLayout,
) -> Result<Dual<F, Ix3>> {
    check_rope("rope_reference", x, table, n_heads, position_offset)?;
    let d = table.head_dim;
    let rotate = |src: ndarray::ArrayView3<'_, F>| {
        let (b_n, t_n, _) = src.dim();
        let mut dst = ndarray::Array3::zeros(src.raw_dim());
        for b in 0..b_n {
            for t in 0..t_n {
                let m = (position_offset + t) as f64;
                for h in 0..n_heads {
                    for i in 0..d / 2 {
                        let w = table.theta.powf(-((2 * i) as f64) / d as f64);
                        let (c, s) = (F::from_f64((m * w).cos()), F::from_f64((m * w).sin()));
                        let (ia, ib) = layout.pair(i, d);
                        let (a, bb) = (src[[b, t, h * d + ia]], src[[b, t, h * d + ib]]);
                        dst[[b, t, h * d + ia]] = a * c - bb * s;
                        dst[[b, t, h * d + ib]] = bb * c + a * s;
                    }
                }
            }
        }
        dst
    };
    let y = rotate(x.primal().view());
    let ty = x.tangent().map(|tx| {
        let dirs: Vec<_> = tx.outer_iter().map(rotate).collect();
        let views: Vec<_> = dirs.iter().map(|a| a.view()).collect();
        ndarray::stack(ndarray::Axis(0), &views).expect("same shapes")
    });
    Ok(Dual::from_parts_unchecked(y, ty))
}
