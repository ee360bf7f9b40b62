//! Hugging Face safetensors: load any checkpoint's float tensors as f32, save f32 tensors.
//!
//! The format is an 8-byte little-endian header length `n`, `n` bytes of JSON (name →
//! `{dtype, shape, data_offsets}`, plus an optional string map `__metadata__`), then the raw
//! little-endian C-order data. Parsing and offset validation are the `safetensors` crate's; this
//! module adds the size checks it leaves to the caller, the dtype conversion, and errors that name
//! the file.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::Path;

use ::safetensors::tensor::{Dtype, SafeTensors, View};
use ndarray::{ArrayD, ArrayViewD, IxDyn};

use super::decode;
use super::weights::{Weights, check_finite};
use crate::{Error, Result};

const FORMAT: &str = "safetensors";

fn format_error(path: &Path, msg: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        format: FORMAT,
        msg: msg.into(),
    }
}

/// Loads every float tensor of a safetensors file as f32.
///
/// - `F32` is read as is; `F16` and `BF16` are converted exactly (every half value is an f32).
/// - Integer buffers (`I64`, `I32`, such as BERT's `embeddings.position_ids`) are not weights:
///   they are skipped, and listed by [`Weights::skipped`]; asking for one with
///   [`Weights::get`] gives [`Error::UnsupportedDtype`].
/// - Any other dtype (F64, F8 variants, U8, BOOL, ...) is an error.
///
/// The file is memory-mapped read-only, not read: the peak is the f32 copies plus the file's
/// page cache (reclaimable), not two copies of the model. The map is dropped before this
/// returns, so the returned weights do not depend on the file. While the call runs, the file
/// must not be truncated or modified (a file truncated during the load raises `SIGBUS`; a file
/// truncated before it is opened gives [`Error::Format`]).
///
/// # Errors
/// - [`Error::Io`] if the file cannot be opened or mapped (a directory, a pipe).
/// - [`Error::Format`] if the file is shorter than the 8-byte length prefix, the header length
///   exceeds the file, the header is not UTF-8 JSON of the expected form, or the data offsets
///   are inconsistent with the shapes or the file size (truncated or padded data).
/// - [`Error::UnsupportedDtype`] naming the first tensor of an unsupported dtype.
/// - [`Error::NonFinite`] naming the tensor and index of a NaN or ±∞.
pub fn load_safetensors(path: impl AsRef<Path>) -> Result<Weights> {
    let path = path.as_ref();
    let map = crate::mapped::map_file(path)?;
    weights_from_bytes(path, &map)
}

fn weights_from_bytes(path: &Path, bytes: &[u8]) -> Result<Weights> {
    // The crate caps the header at 100 MB but slices before comparing with the file; check the
    // declared length against what is actually there first, for a clear message.
    let Some(prefix) = bytes.first_chunk::<8>() else {
        return Err(format_error(
            path,
            format!(
                "file is {} bytes, shorter than the 8-byte header length",
                bytes.len()
            ),
        ));
    };
    let header_len = u64::from_le_bytes(*prefix);
    let available = (bytes.len() - 8) as u64;
    if header_len > available {
        return Err(format_error(
            path,
            format!(
                "header length {header_len} exceeds the {available} bytes that follow it \
                 (file size {})",
                bytes.len()
            ),
        ));
    }
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| format_error(path, format!("invalid header or data layout: {e}")))?;

    let mut weights = Weights::new(path);
    // Sorted, so that the first error reported does not depend on hash order.
    let mut entries: Vec<_> = st.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    for (name, view) in entries {
        let shape = view.shape().to_vec();
        let data = view.data();
        let values = match view.dtype() {
            Dtype::F32 => decode::f32_le(data),
            Dtype::F16 => decode::f16_le(data),
            Dtype::BF16 => decode::bf16_le(data),
            dtype @ (Dtype::I64 | Dtype::I32) => {
                weights.insert_skipped(name.to_owned(), dtype.to_string(), shape);
                continue;
            }
            dtype => {
                return Err(Error::UnsupportedDtype {
                    path: path.to_path_buf(),
                    name: name.to_owned(),
                    dtype: dtype.to_string(),
                });
            }
        };
        let tensor = ArrayD::from_shape_vec(IxDyn(&shape), values).map_err(|e| {
            format_error(
                path,
                format!("tensor `{name}`: data does not fill shape {shape:?}: {e}"),
            )
        })?;
        weights.insert(name, tensor)?;
    }
    Ok(weights)
}

/// An f32 array viewed as a safetensors tensor (little-endian bytes in row-major order).
struct F32View<'a, 'b> {
    array: &'a ArrayViewD<'b, f32>,
}

impl View for F32View<'_, '_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }

    fn shape(&self) -> &[usize] {
        self.array.shape()
    }

    fn data(&self) -> Cow<'_, [u8]> {
        // Logical (row-major) order, whatever the view's strides; no byte cast of the f32s.
        let mut out = Vec::with_capacity(self.data_len());
        for x in self.array.iter() {
            out.extend_from_slice(&x.to_le_bytes());
        }
        Cow::Owned(out)
    }

    fn data_len(&self) -> usize {
        self.array.len() * size_of::<f32>()
    }
}

/// Writes f32 tensors (for instance trained adapters) to a safetensors file, with an optional
/// `__metadata__` string map.
///
/// Views of any strides are written in row-major order. The file is serialised in memory, then
/// written with [`write_atomic`](super::write_atomic) (a temporary file beside `path`, renamed
/// over it), so an existing file is replaced atomically and the new one gets the usual
/// permissions. Tensors are stored sorted by name, as the format prescribes.
///
/// # Shapes
/// - each tensor: any shape (including scalars `[]` and empty tensors)
///
/// # Errors
/// - [`Error::InvalidArgument`] if two tensors share a name or a name is `__metadata__`.
/// - [`Error::NonFinite`] if a tensor holds NaN or ±∞ (the loader would reject the file).
/// - [`Error::Io`] if the file cannot be written; [`Error::Format`] if the crate rejects the
///   layout (a header above 100 MB).
pub fn save_safetensors(
    path: impl AsRef<Path>,
    tensors: &[(&str, ArrayViewD<'_, f32>)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    const OP: &str = "save_safetensors";
    let path = path.as_ref();
    let mut seen = HashSet::with_capacity(tensors.len());
    for (name, array) in tensors {
        if *name == "__metadata__" {
            return Err(Error::invalid(
                OP,
                "`__metadata__` is reserved, not a tensor name",
            ));
        }
        if !seen.insert(*name) {
            return Err(Error::invalid(
                OP,
                format!("duplicate tensor name `{name}`"),
            ));
        }
        check_finite(path, name, array.iter())?;
    }
    let views = tensors
        .iter()
        .map(|(name, array)| (*name, F32View { array }));
    let bytes = ::safetensors::serialize(views, metadata)
        .map_err(|e| format_error(path, format!("cannot serialise: {e}")))?;
    super::write_atomic(path, &bytes)
}
