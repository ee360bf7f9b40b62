//! Dual tensors: a primal array plus K tangent directions stacked on a leading axis.
//!
//! A [`Dual`] of primal shape `[d0, .., dn]` carries tangents of shape `[K, d0, .., dn]`: the K
//! directional derivatives that one forward pass pushes through the network at once. A tangent
//! may also be the *symbolic zero* (`None`): it allocates nothing, and every kernel skips its
//! tangent arithmetic when all of its dual inputs are symbolic zeros. Frozen weights and every
//! activation below a client's first perturbed LoRA unit are symbolic zeros, which is what makes
//! forward-mode training cheap.
//!
//! Both arrays are kept in standard (row-major, contiguous) layout, so kernels can view them as
//! matrices of rows without copying.

use ndarray::{Array, ArrayView, ArrayView2, Axis, Dimension, Ix2};

use crate::{Error, Float, Result};

/// A primal array with K stacked tangents (or a symbolic zero tangent).
///
/// # Shapes
/// - primal: `[d0, .., dn]`
/// - tangent: `[K, d0, .., dn]`, or `None` for the symbolic zero
#[derive(Clone, Debug, PartialEq)]
pub struct Dual<F: Float, D: Dimension> {
    primal: Array<F, D>,
    tangent: Option<Array<F, D::Larger>>,
}

/// The stacked-tangent array of a [`Dual`] with primal dimension `D`: `[K, ..]`.
pub type TangentArray<F, D> = Array<F, <D as Dimension>::Larger>;

/// Returns `a` itself if it is already row-major and contiguous, otherwise a row-major copy.
pub(crate) fn standard<F: Float, D: Dimension>(a: Array<F, D>) -> Array<F, D> {
    if a.is_standard_layout() {
        a
    } else {
        a.as_standard_layout().into_owned()
    }
}

impl<F: Float, D: Dimension> Dual<F, D> {
    /// A dual value whose tangent is the symbolic zero: a constant (a frozen weight, an input).
    pub fn constant(primal: Array<F, D>) -> Self {
        Dual {
            primal: standard(primal),
            tangent: None,
        }
    }

    /// A dual value with K explicit tangent directions.
    ///
    /// # Shapes
    /// - `primal`: `[d0, .., dn]`; `tangent`: `[K, d0, .., dn]` with K ≥ 1
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if `tangent` is not `[K, primal shape]` with K ≥ 1.
    pub fn new(primal: Array<F, D>, tangent: Array<F, D::Larger>) -> Result<Self> {
        if tangent.shape().first().copied().unwrap_or(0) == 0
            || tangent.shape()[1..] != *primal.shape()
        {
            return Err(Error::shape(
                "Dual::new",
                format!("tangent [K>=1, {:?}]", primal.shape()),
                tangent.shape(),
            ));
        }
        Ok(Dual {
            primal: standard(primal),
            tangent: Some(standard(tangent)),
        })
    }

    /// A dual value with an optional tangent (`None` = symbolic zero).
    ///
    /// # Errors
    /// As [`Dual::new`].
    pub fn with_tangent(primal: Array<F, D>, tangent: Option<Array<F, D::Larger>>) -> Result<Self> {
        match tangent {
            Some(t) => Self::new(primal, t),
            None => Ok(Self::constant(primal)),
        }
    }

    /// Stacks K single-direction tangents (each shaped like `primal`) into one dual value.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if `directions` is empty or one direction differs from the
    /// primal's shape.
    pub fn from_directions(primal: Array<F, D>, directions: &[ArrayView<F, D>]) -> Result<Self> {
        if directions.is_empty() {
            return Err(Error::shape(
                "Dual::from_directions",
                "at least one direction",
                &[0],
            ));
        }
        for d in directions {
            if d.shape() != primal.shape() {
                return Err(Error::shape(
                    "Dual::from_directions",
                    format!("{:?}", primal.shape()),
                    d.shape(),
                ));
            }
        }
        let tangent = ndarray::stack(Axis(0), directions)
            .map_err(|_| Error::shape("Dual::from_directions", "stackable directions", &[]))?;
        Self::new(primal, tangent)
    }

    /// The primal value.
    pub fn primal(&self) -> &Array<F, D> {
        &self.primal
    }

    /// The stacked tangents `[K, ..]`, or `None` for the symbolic zero.
    pub fn tangent(&self) -> Option<&Array<F, D::Larger>> {
        self.tangent.as_ref()
    }

    /// Number of tangent directions, or `None` for the symbolic zero.
    pub fn k(&self) -> Option<usize> {
        self.tangent.as_ref().map(|t| t.shape()[0])
    }

    /// Whether the tangent is the symbolic zero.
    pub fn is_constant(&self) -> bool {
        self.tangent.is_none()
    }

    /// The shape of the primal.
    pub fn shape(&self) -> &[usize] {
        self.primal.shape()
    }

    /// Tangent direction `k` (shaped like the primal), or `None` for the symbolic zero.
    ///
    /// # Panics
    /// If `k` is not below [`Dual::k`].
    pub fn direction(&self, k: usize) -> Option<ArrayView<'_, F, D>> {
        self.tangent.as_ref().map(|t| {
            t.index_axis(Axis(0), k)
                .into_dimensionality::<D>()
                .expect("same rank")
        })
    }

    /// Splits into the primal and the optional tangent.
    pub fn into_parts(self) -> (Array<F, D>, Option<TangentArray<F, D>>) {
        (self.primal, self.tangent)
    }

    /// Drops the tangent and returns the primal.
    pub fn into_primal(self) -> Array<F, D> {
        self.primal
    }

    /// The primal as a matrix of rows: `[d0·..·d(n-1), dn]` (a vector is one row).
    pub fn primal_rows(&self) -> ArrayView2<'_, F> {
        rows_view(&self.primal)
    }

    /// The tangents as a matrix of rows: `[K·d0·..·d(n-1), dn]`, direction-major.
    pub fn tangent_rows(&self) -> Option<ArrayView2<'_, F>> {
        self.tangent.as_ref().map(rows_view)
    }
}

/// Views a standard-layout array as `[product of leading dims, last dim]`.
pub(crate) fn rows_view<F: Float, E: Dimension>(a: &Array<F, E>) -> ArrayView2<'_, F> {
    let last = a.shape().last().copied().unwrap_or(1);
    let rows = a.len().checked_div(last).unwrap_or(0);
    ArrayView2::from_shape((rows, last), a.as_slice().expect("standard layout"))
        .expect("rows view of a standard-layout array")
}

/// Reshapes a `[rows, last]` matrix back to `shape` with the last axis replaced by `last`.
///
/// `lead` is prepended (the K axis for tangents), so `shape` is always the primal's shape.
pub(crate) fn reshape_rows<F: Float, E: Dimension>(
    rows: Array<F, Ix2>,
    shape: &[usize],
    lead: Option<usize>,
) -> Array<F, E> {
    let mut dims: Vec<usize> = lead.into_iter().chain(shape.iter().copied()).collect();
    *dims.last_mut().expect("rank >= 1") = rows.ncols();
    let (v, off) = rows.into_raw_vec_and_offset();
    debug_assert_eq!(off.unwrap_or(0), 0);
    Array::from_shape_vec(ndarray::IxDyn(&dims), v)
        .expect("row count matches")
        .into_dimensionality::<E>()
        .expect("rank matches")
}

/// The K shared by a kernel's dual inputs: `None` if all are symbolic zeros.
///
/// # Errors
/// [`Error::TangentCountMismatch`] if two inputs carry different K.
pub fn common_k(op: &'static str, ks: &[Option<usize>]) -> Result<Option<usize>> {
    let mut found: Option<usize> = None;
    for &k in ks.iter().flatten() {
        match found {
            Some(f) if f != k => return Err(Error::TangentCountMismatch { op, lhs: f, rhs: k }),
            _ => found = Some(k),
        }
    }
    Ok(found)
}

impl<F: Float, D: Dimension> Dual<F, D> {
    /// Builds a dual value from row matrices: `primal` `[N, c]`, `tangent` `[K·N, c]`, reshaped
    /// to `shape` with its last axis replaced by `c`. The inverse of
    /// [`Dual::primal_rows`]/[`Dual::tangent_rows`]; kernels use it to return their outputs.
    pub(crate) fn from_rows(
        shape: &[usize],
        primal: Array<F, Ix2>,
        tangent: Option<(usize, Array<F, Ix2>)>,
    ) -> Self {
        Dual {
            primal: reshape_rows(primal, shape, None),
            tangent: tangent.map(|(k, t)| reshape_rows(t, shape, Some(k))),
        }
    }

    /// Builds a dual value from parts already known to be consistent (kernel outputs).
    #[allow(dead_code)] // used by kernels that build outputs in their final shape
    pub(crate) fn from_parts_unchecked(
        primal: Array<F, D>,
        tangent: Option<Array<F, D::Larger>>,
    ) -> Self {
        debug_assert!(
            tangent
                .as_ref()
                .is_none_or(|t| t.shape()[1..] == *primal.shape())
        );
        Dual {
            primal: standard(primal),
            tangent: tangent.map(standard),
        }
    }
}
