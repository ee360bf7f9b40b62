//! The ordered registry of trainable parameters, grouped into units.
//!
//! A model registers its trainable tensors in a fixed order (LoRA A then B of each target module,
//! in layer order, then the task head), under their PEFT names. Consecutive tensors form a
//! **unit** (one LoRA module's (A, B) pair, or the head): the thing the Spry planner assigns to
//! clients. Everything that moves between server and clients is indexed by this registry.

use ndarray::{ArrayD, IxDyn};

use crate::{Error, Float, Result};

/// A named group of consecutive trainable parameters (one LoRA module, or the task head).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unit {
    /// Human-readable name, e.g. `encoder.layer.3.attention.self.query` or `classifier`.
    pub name: String,
    /// Indices of the unit's parameters in the registry.
    pub params: std::ops::Range<usize>,
}

/// The trainable parameters of a model, in registration order, grouped into [`Unit`]s.
#[derive(Clone, Debug, PartialEq)]
pub struct Trainable<F: Float> {
    names: Vec<String>,
    values: Vec<ArrayD<F>>,
    unit_of: Vec<usize>,
    units: Vec<Unit>,
}

impl<F: Float> Default for Trainable<F> {
    fn default() -> Self {
        Trainable {
            names: Vec::new(),
            values: Vec::new(),
            unit_of: Vec::new(),
            units: Vec::new(),
        }
    }
}

impl<F: Float> Trainable<F> {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a unit made of `params` (name, initial value) and returns its index.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if a parameter name is already registered or `params` is empty.
    pub fn push_unit(
        &mut self,
        unit_name: impl Into<String>,
        params: Vec<(String, ArrayD<F>)>,
    ) -> Result<usize> {
        if params.is_empty() {
            return Err(Error::invalid(
                "Trainable::push_unit",
                "a unit needs at least one parameter",
            ));
        }
        let unit = self.units.len();
        let start = self.names.len();
        for (name, value) in params {
            if self.names.contains(&name) {
                return Err(Error::invalid(
                    "Trainable::push_unit",
                    format!("parameter `{name}` registered twice"),
                ));
            }
            self.names.push(name);
            self.values.push(value);
            self.unit_of.push(unit);
        }
        self.units.push(Unit {
            name: unit_name.into(),
            params: start..self.names.len(),
        });
        Ok(unit)
    }

    /// Number of parameter tensors.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether no parameter is registered.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Total number of scalars over all parameters.
    pub fn n_scalars(&self) -> usize {
        self.values.iter().map(|v| v.len()).sum()
    }

    /// The units, in registration order.
    pub fn units(&self) -> &[Unit] {
        &self.units
    }

    /// Parameter names (PEFT names), in registration order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Index of the parameter called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// The unit parameter `i` belongs to.
    ///
    /// # Panics
    /// If `i` is out of range.
    pub fn unit_of(&self, i: usize) -> usize {
        self.unit_of[i]
    }

    /// Value of parameter `i`.
    ///
    /// # Panics
    /// If `i` is out of range.
    pub fn value(&self, i: usize) -> &ArrayD<F> {
        &self.values[i]
    }

    /// All values, in registration order.
    pub fn values(&self) -> &[ArrayD<F>] {
        &self.values
    }

    /// Replaces the value of parameter `i`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `i` is out of range; [`Error::ShapeMismatch`] if the shape
    /// changes.
    pub fn set_value(&mut self, i: usize, value: ArrayD<F>) -> Result<()> {
        let old = self
            .values
            .get_mut(i)
            .ok_or_else(|| Error::invalid("Trainable::set_value", format!("no parameter {i}")))?;
        if old.shape() != value.shape() {
            return Err(Error::shape(
                "Trainable::set_value",
                format!("{:?}", old.shape()),
                value.shape(),
            ));
        }
        *old = value;
        Ok(())
    }

    /// Mutable access to parameter `i` (same shape enforced by the borrow).
    ///
    /// # Panics
    /// If `i` is out of range.
    pub fn value_mut(&mut self, i: usize) -> &mut ArrayD<F> {
        &mut self.values[i]
    }

    /// Converts every value to another float type (f32 ↔ f64).
    pub fn cast<G: Float>(&self) -> Trainable<G> {
        Trainable {
            names: self.names.clone(),
            values: self
                .values
                .iter()
                .map(|v| v.mapv(|x| G::from_f64(x.as_f64())))
                .collect(),
            unit_of: self.unit_of.clone(),
            units: self.units.clone(),
        }
    }
}

/// Tangent directions for some of the trainable parameters: `[K, param shape]` per parameter, or
/// `None` (a symbolic zero: the parameter is frozen for this pass).
#[derive(Clone, Debug, PartialEq)]
pub struct Directions<F: Float> {
    k: usize,
    per_param: Vec<Option<ArrayD<F>>>,
}

impl<F: Float> Directions<F> {
    /// No direction on any parameter: a plain forward pass.
    pub fn none(n_params: usize) -> Self {
        Directions {
            k: 0,
            per_param: vec![None; n_params],
        }
    }

    /// Directions for `n_params` parameters with K directions each where given.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if a tangent is not `[K, shape of its parameter]`;
    /// [`Error::InvalidArgument`] if the list length differs from the registry's.
    pub fn new(
        trainable: &Trainable<F>,
        k: usize,
        per_param: Vec<Option<ArrayD<F>>>,
    ) -> Result<Self> {
        if per_param.len() != trainable.len() {
            return Err(Error::invalid(
                "Directions::new",
                format!(
                    "{} tangents for {} parameters",
                    per_param.len(),
                    trainable.len()
                ),
            ));
        }
        for (i, t) in per_param.iter().enumerate() {
            if let Some(t) = t {
                let mut expect = vec![k];
                expect.extend_from_slice(trainable.value(i).shape());
                if t.shape() != expect.as_slice() {
                    return Err(Error::shape(
                        "Directions::new",
                        format!("{expect:?}"),
                        t.shape(),
                    ));
                }
            }
        }
        Ok(Directions { k, per_param })
    }

    /// One direction (K = 1) given by tensor names: `named` pairs a registry (PEFT) name with a
    /// tensor of that parameter's shape; every other parameter is frozen for the pass.
    ///
    /// # Shapes
    /// - each named tensor: the shape of its parameter
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a name the registry does not hold or given twice;
    /// [`Error::ShapeMismatch`] for a tensor of another shape.
    pub fn from_named<'a>(
        trainable: &Trainable<F>,
        named: impl IntoIterator<Item = (&'a str, ArrayD<F>)>,
    ) -> Result<Self> {
        const OP: &str = "Directions::from_named";
        let mut per_param: Vec<Option<ArrayD<F>>> = vec![None; trainable.len()];
        for (name, t) in named {
            let i = trainable
                .index_of(name)
                .ok_or_else(|| Error::invalid(OP, format!("no trainable tensor `{name}`")))?;
            if per_param[i].is_some() {
                return Err(Error::invalid(OP, format!("`{name}` given twice")));
            }
            if t.shape() != trainable.value(i).shape() {
                return Err(Error::shape(
                    OP,
                    format!("{:?} (`{name}`)", trainable.value(i).shape()),
                    t.shape(),
                ));
            }
            per_param[i] = Some(t.insert_axis(ndarray::Axis(0)));
        }
        Ok(Directions { k: 1, per_param })
    }

    /// One direction (K = 1) given by the values of `direction`, a registry with the same names
    /// and shapes as `trainable` (for example an adapter read with
    /// [`crate::modules::load_peft_tensors`] into a clone of it). All-zero tensors stay
    /// symbolic zeros, so the pass skips them.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the registries' names differ; [`Error::ShapeMismatch`] if
    /// a shape does.
    pub fn from_trainable(trainable: &Trainable<F>, direction: &Trainable<F>) -> Result<Self> {
        if trainable.names() != direction.names() {
            return Err(Error::invalid(
                "Directions::from_trainable",
                "the two registries hold different tensors",
            ));
        }
        Self::from_named(
            trainable,
            direction
                .names()
                .iter()
                .zip(direction.values())
                .filter(|(_, v)| v.iter().any(|x| *x != F::zero()))
                .map(|(n, v)| (n.as_str(), v.clone())),
        )
    }

    /// Number of directions (0 when no parameter carries one).
    pub fn k(&self) -> usize {
        self.k
    }

    /// The tangent of parameter `i`, if it carries one.
    pub fn get(&self, i: usize) -> Option<&ArrayD<F>> {
        self.per_param.get(i).and_then(Option::as_ref)
    }

    /// Whether any parameter carries a direction.
    pub fn is_empty(&self) -> bool {
        self.per_param.iter().all(Option::is_none)
    }

    /// The per-parameter list.
    pub fn per_param(&self) -> &[Option<ArrayD<F>>] {
        &self.per_param
    }
}

/// Gradients of some trainable tensors: `(registry index, ∂L/∂θ)`, each shaped like its tensor.
pub type ParamGrads<F> = Vec<(usize, ArrayD<F>)>;

/// Builds the dual value of parameter `i` as a fixed-rank [`Dual`](crate::Dual) for a kernel.
///
/// # Errors
/// [`Error::ShapeMismatch`] if the parameter does not have rank `D::NDIM`.
pub fn param_dual<F: Float, D: ndarray::Dimension>(
    trainable: &Trainable<F>,
    directions: &Directions<F>,
    i: usize,
) -> Result<crate::Dual<F, D>> {
    let rank_err =
        |shape: &[usize]| Error::shape("param_dual", format!("rank {:?}", D::NDIM), shape);
    let value = trainable.value(i);
    let p = value
        .clone()
        .into_dimensionality::<D>()
        .map_err(|_| rank_err(value.shape()))?;
    let t = match directions.get(i) {
        Some(t) => Some(
            t.clone()
                .into_dimensionality::<D::Larger>()
                .map_err(|_| rank_err(t.shape()))?,
        ),
        None => None,
    };
    crate::Dual::with_tangent(p, t)
}

/// An `IxDyn` zero array shaped like parameter `i` with a leading K axis.
pub fn zeros_with_k<F: Float>(trainable: &Trainable<F>, i: usize, k: usize) -> ArrayD<F> {
    let mut shape = vec![k];
    shape.extend_from_slice(trainable.value(i).shape());
    ArrayD::zeros(IxDyn(&shape))
}
