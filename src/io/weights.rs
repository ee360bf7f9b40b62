//! [`Weights`]: a name → f32 tensor store of frozen weights loaded from one checkpoint.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, ArrayView1, ArrayView2, ArrayViewD, Ix1, Ix2};

use crate::{Error, Result};

/// A tensor the loader listed but did not convert (an integer buffer such as BERT's
/// `embeddings.position_ids`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedTensor {
    /// The data type, as the file names it (`I64`, `I32`, ...).
    pub dtype: String,
    /// The shape, row-major.
    pub shape: Vec<usize>,
}

/// Frozen weights of one checkpoint: f32 tensors by name, plus the names of the integer buffers
/// the loader skipped.
///
/// Every tensor is finite: [`Weights::insert`] (and so every loader) rejects NaN and ±∞. The
/// accessors return errors that name the source file and the tensor, so a model constructor can
/// write `w.get2("encoder.layer.0.attention.self.query.weight", [h, h])?` and report a useful
/// message on a wrong checkpoint.
///
/// Names iterate in sorted order.
#[derive(Clone)]
pub struct Weights {
    path: PathBuf,
    tensors: BTreeMap<String, ArrayD<f32>>,
    skipped: BTreeMap<String, SkippedTensor>,
}

impl fmt::Debug for Weights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Weights")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .field("params", &self.n_params())
            .field("skipped", &self.skipped.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Weights {
    /// An empty store whose errors will name `path` (the checkpoint, or any label for weights
    /// built in code).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Weights {
            path: path.into(),
            tensors: BTreeMap::new(),
            skipped: BTreeMap::new(),
        }
    }

    /// The file the weights were loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds (or replaces) a tensor.
    ///
    /// # Errors
    /// [`Error::NonFinite`] naming the tensor and the row-major index of its first NaN or ±∞;
    /// the store is unchanged then.
    pub fn insert(&mut self, name: impl Into<String>, tensor: ArrayD<f32>) -> Result<()> {
        let name = name.into();
        check_finite(&self.path, &name, tensor.iter())?;
        self.skipped.remove(&name);
        self.tensors.insert(name, tensor);
        Ok(())
    }

    /// Adds a tensor the caller has already checked finite.
    pub(crate) fn insert_finite(&mut self, name: String, tensor: ArrayD<f32>) {
        self.skipped.remove(&name);
        self.tensors.insert(name, tensor);
    }

    /// Records a tensor that was listed but not converted.
    pub(crate) fn insert_skipped(&mut self, name: String, dtype: String, shape: Vec<usize>) {
        self.skipped.insert(name, SkippedTensor { dtype, shape });
    }

    /// The tensor `name`, any rank.
    ///
    /// # Errors
    /// [`Error::MissingTensor`] if absent; [`Error::UnsupportedDtype`] if `name` is an integer
    /// buffer the loader skipped.
    pub fn get(&self, name: &str) -> Result<ArrayViewD<'_, f32>> {
        match self.tensors.get(name) {
            Some(t) => Ok(t.view()),
            None => Err(self.missing(name)),
        }
    }

    /// The vector `name`, checked to be `[len]`.
    ///
    /// # Shapes
    /// - output: `[len]`
    ///
    /// # Errors
    /// As [`Weights::get`]; [`Error::TensorShape`] if the tensor is not `[len]`.
    pub fn get1(&self, name: &str, len: usize) -> Result<ArrayView1<'_, f32>> {
        let t = self.get(name)?;
        self.check_shape(name, t.shape(), &[len])?;
        t.into_dimensionality::<Ix1>()
            .map_err(|_| self.shape_error(name, &[len]))
    }

    /// The matrix `name`, checked to be `[rows, cols]` (linear weights are `[out, in]`).
    ///
    /// # Shapes
    /// - output: `[rows, cols]`
    ///
    /// # Errors
    /// As [`Weights::get`]; [`Error::TensorShape`] if the tensor is not `[rows, cols]`.
    pub fn get2(&self, name: &str, [rows, cols]: [usize; 2]) -> Result<ArrayView2<'_, f32>> {
        let t = self.get(name)?;
        self.check_shape(name, t.shape(), &[rows, cols])?;
        t.into_dimensionality::<Ix2>()
            .map_err(|_| self.shape_error(name, &[rows, cols]))
    }

    /// The shape of tensor `name`.
    ///
    /// # Errors
    /// As [`Weights::get`].
    pub fn shape(&self, name: &str) -> Result<&[usize]> {
        match self.tensors.get(name) {
            Some(t) => Ok(t.shape()),
            None => Err(self.missing(name)),
        }
    }

    /// Removes tensor `name` and returns it owned (to transform it without a copy, e.g. with
    /// [`unpermute_rope_rows`](crate::io::unpermute_rope_rows), or to make it trainable).
    ///
    /// # Errors
    /// As [`Weights::get`].
    pub fn take(&mut self, name: &str) -> Result<ArrayD<f32>> {
        match self.tensors.remove(name) {
            Some(t) => Ok(t),
            None => Err(self.missing(name)),
        }
    }

    /// Whether an f32 tensor `name` is present (skipped integer buffers do not count).
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Names of the f32 tensors, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The f32 tensors with their names, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, ArrayViewD<'_, f32>)> {
        self.tensors.iter().map(|(n, t)| (n.as_str(), t.view()))
    }

    /// The tensors the loader listed but skipped (integer buffers), sorted by name.
    pub fn skipped(&self) -> impl Iterator<Item = (&str, &SkippedTensor)> {
        self.skipped.iter().map(|(n, s)| (n.as_str(), s))
    }

    /// Number of f32 tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether there is no f32 tensor.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Total number of f32 elements (skipped buffers excluded).
    pub fn n_params(&self) -> usize {
        self.tensors.values().map(ArrayD::len).sum()
    }

    fn missing(&self, name: &str) -> Error {
        match self.skipped.get(name) {
            Some(s) => Error::UnsupportedDtype {
                path: self.path.clone(),
                name: name.to_owned(),
                dtype: format!("{} (integer buffer, skipped at load)", s.dtype),
            },
            None => Error::MissingTensor {
                path: self.path.clone(),
                name: name.to_owned(),
            },
        }
    }

    fn check_shape(&self, name: &str, got: &[usize], expected: &[usize]) -> Result<()> {
        if got == expected {
            Ok(())
        } else {
            Err(Error::TensorShape {
                path: self.path.clone(),
                name: name.to_owned(),
                expected: expected.to_vec(),
                got: got.to_vec(),
            })
        }
    }

    fn shape_error(&self, name: &str, expected: &[usize]) -> Error {
        Error::TensorShape {
            path: self.path.clone(),
            name: name.to_owned(),
            expected: expected.to_vec(),
            got: self
                .tensors
                .get(name)
                .map_or(vec![], |t| t.shape().to_vec()),
        }
    }
}

/// [`Error::NonFinite`] at the first non-finite value of `values` (in the order given, which the
/// loaders keep row-major).
pub(crate) fn check_finite<'a>(
    path: &Path,
    name: &str,
    values: impl IntoIterator<Item = &'a f32>,
) -> Result<()> {
    match values.into_iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(index) => Err(Error::NonFinite {
            path: path.to_path_buf(),
            name: name.to_owned(),
            index,
        }),
    }
}
