//! [`FrozenWeight`]: a frozen matrix either dense in `F` or packed in its stored format, read by
//! the kernels one tile of rows at a time.
//!
//! A packed weight is never widened whole: [`FrozenWeight::tile`] widens rows `r0..r1` into a
//! scratch buffer the caller reuses, and a dense weight hands out a view of the same rows, so a
//! kernel written over tiles serves both.

use std::any::TypeId;
use std::ops::Range;
use std::sync::OnceLock;

use ndarray::{Array2, ArrayView2, s};

use super::panel_gemm::PanelWeight;
use crate::Float;
use crate::packed::PackedMatrix;

/// A frozen weight `[rows, cols]` (a linear weight `[out, in]`, an embedding table
/// `[vocab, H]`).
#[derive(Clone, Debug, PartialEq)]
pub enum FrozenWeight<F: Float> {
    /// Dense, in the model's float type.
    Dense(Array2<F>),
    /// In its stored format (f16, bf16, Q8_0, Q4_0, Q4_1), widened a tile at a time.
    Packed(PackedMatrix),
}

impl<F: Float> From<Array2<F>> for FrozenWeight<F> {
    fn from(a: Array2<F>) -> Self {
        FrozenWeight::Dense(a)
    }
}

impl<F: Float> FrozenWeight<F> {
    /// `(rows, cols)`.
    pub fn dim(&self) -> (usize, usize) {
        match self {
            FrozenWeight::Dense(a) => a.dim(),
            FrozenWeight::Packed(p) => p.dim(),
        }
    }

    /// Number of rows.
    pub fn nrows(&self) -> usize {
        self.dim().0
    }

    /// Number of columns.
    pub fn ncols(&self) -> usize {
        self.dim().1
    }

    /// Whether the weight is kept packed.
    pub fn is_packed(&self) -> bool {
        matches!(self, FrozenWeight::Packed(_))
    }

    /// Bytes the weight occupies in memory (its elements or its stored blocks).
    pub fn n_bytes(&self) -> usize {
        match self {
            FrozenWeight::Dense(a) => a.len() * size_of::<F>(),
            FrozenWeight::Packed(p) => p.as_bytes().len(),
        }
    }

    /// The storage, as a short name: `dense` or the packed format (`Q4_1`, ...).
    pub fn format_name(&self) -> String {
        match self {
            FrozenWeight::Dense(_) => "dense".into(),
            FrozenWeight::Packed(p) => p.format().to_string(),
        }
    }

    /// The whole matrix in `F` (a copy; widens a packed weight).
    ///
    /// # Shapes
    /// - output: `[rows, cols]`
    pub fn to_dense(&self) -> Array2<F> {
        match self {
            FrozenWeight::Dense(a) => a.clone(),
            FrozenWeight::Packed(p) => p.to_dense(),
        }
    }

    /// Rows `rows` as a matrix: a view for a dense weight; for a packed one, the rows widened
    /// into `scratch` (grown as needed, reused across calls) and viewed there.
    ///
    /// # Shapes
    /// - output: `[rows.len(), cols]`
    ///
    /// # Panics
    /// If `rows` runs past the last row.
    pub fn tile<'a>(&'a self, rows: Range<usize>, scratch: &'a mut Vec<F>) -> ArrayView2<'a, F> {
        match self {
            FrozenWeight::Dense(a) => a.slice(s![rows, ..]),
            FrozenWeight::Packed(p) => {
                let (n, cols) = (rows.len(), p.cols());
                if scratch.len() < n * cols {
                    scratch.resize(n * cols, F::zero());
                }
                let buf = &mut scratch[..n * cols];
                p.decode_rows(rows.start, buf);
                ArrayView2::from_shape((n, cols), buf).expect("n·cols values")
            }
        }
    }

    /// Writes row `r` into `out` (`cols` values), widening it if packed.
    ///
    /// # Panics
    /// If `r` is not a row or `out` does not hold `cols` values.
    pub fn row_into(&self, r: usize, out: &mut [F]) {
        match self {
            FrozenWeight::Dense(a) => ndarray::ArrayViewMut1::from(out).assign(&a.row(r)),
            FrozenWeight::Packed(p) => p.decode_rows(r, out),
        }
    }
}

/// The panels of a dense `f32` linear weight for [`PanelWeight`]'s GEMM, packed on first use and
/// kept beside the weight (an `f64` or packed weight, or a CPU without a panel kernel, gets none
/// and keeps the `matrixmultiply` path).
///
/// The panels are tied to the weight's buffer (its address and shape): a weight replaced by
/// another gets none from [`PanelCache::get`] until [`PanelCache::clear`]; a weight changed in
/// place must be followed by [`PanelCache::clear`]. A clone starts empty (its weight is another
/// buffer) and packs again on first use.
#[derive(Debug, Default)]
pub struct PanelCache {
    /// The panels and the weight they were packed from, set once (`None`: no panels).
    cell: OnceLock<Option<CachedPanels>>,
}

/// Panels with the weight buffer they were packed from.
#[derive(Debug)]
struct CachedPanels {
    /// Address of the weight's first element and its shape.
    key: (usize, (usize, usize)),
    panels: PanelWeight,
}

impl Clone for PanelCache {
    fn clone(&self) -> Self {
        PanelCache::default()
    }
}

impl PanelCache {
    /// The panels of `w`, packed now if this is the first call: `Some` for a dense `f32` weight
    /// on a CPU with a panel kernel, `None` otherwise.
    pub fn get<F: Float>(&self, w: &FrozenWeight<F>) -> Option<&PanelWeight> {
        let FrozenWeight::Dense(a) = w else {
            return None;
        };
        if TypeId::of::<F>() != TypeId::of::<f32>() || !a.is_standard_layout() {
            return None;
        }
        let key = (a.as_ptr() as usize, a.dim());
        let cached = self.cell.get_or_init(|| {
            // SAFETY: F is f32 and `a` is in standard layout (both checked above), so this is
            // the same row-major [out, in] view of the same f32s.
            let w32 =
                unsafe { ArrayView2::<f32>::from_shape_ptr(a.dim(), a.as_ptr().cast::<f32>()) };
            PanelWeight::new(w32).map(|panels| CachedPanels { key, panels })
        });
        match cached {
            Some(c) if c.key == key => Some(&c.panels),
            _ => None,
        }
    }

    /// Forgets the panels (after the weight changed); the next [`PanelCache::get`] packs again.
    pub fn clear(&mut self) {
        self.cell = OnceLock::new();
    }
}
