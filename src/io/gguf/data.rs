//! Reading tensors out of a [`GgufFile`]'s data section: dequantised to f32
//! ([`GgufFile::tensor_f32`], [`GgufFile::load_all`]) or kept in their stored blocks
//! ([`GgufFile::tensor_packed`]).
//!
//! Dequantised types: F32, F16, BF16 (the whole-tensor decoders of `io::decode`), Q8_0, Q4_0,
//! Q4_1 (blocks of 32 along `ne[0]`; the block decoders of `packed::decode`, shared with
//! [`PackedMatrix`]). Matrices of the last five types can also be kept as stored and widened a
//! tile at a time later.

use ndarray::{ArrayD, IxDyn};

use super::file::{FileBytes, GgufFile};
use super::format_error;
use super::tensor::{GgmlType, GgufTensorInfo};
use crate::io::decode;
use crate::io::weights::{Weights, check_finite};
use crate::packed::{PackedFormat, PackedMatrix, decode as block};
use crate::{Error, Result};

impl GgufFile {
    /// The byte range in the file of the `n_bytes` data bytes of tensor `info` (bounds checked
    /// at open).
    fn tensor_range(&self, info: &GgufTensorInfo, n_bytes: usize) -> std::ops::Range<usize> {
        let start = self.data_start + info.offset as usize;
        start..start + n_bytes
    }

    /// Tensor `name` dequantised to f32, in its row-major shape ([`GgufTensorInfo::shape`]).
    ///
    /// # Shapes
    /// - output: the file's dimensions reversed (`[out, in]` for a linear weight)
    ///
    /// # Errors
    /// [`Error::MissingTensor`] if absent; [`Error::UnsupportedDtype`] naming the tensor and its
    /// type if it is not F32, F16, BF16, Q8_0, Q4_0 or Q4_1; [`Error::NonFinite`] naming the
    /// tensor and the index of the first NaN or ±∞ (for instance from a non-finite block scale).
    pub fn tensor_f32(&self, name: &str) -> Result<ArrayD<f32>> {
        let info = self.tensor_info(name)?;
        let values = self.dequantise(info)?;
        check_finite(&self.path, name, &values)?;
        ArrayD::from_shape_vec(IxDyn(&info.shape), values).map_err(|e| {
            format_error(
                &self.path,
                format!("tensor `{name}`: data does not fill its shape: {e}"),
            )
        })
    }

    /// Every tensor dequantised to f32, by GGUF name (`token_embd.weight`,
    /// `blk.{i}.attn_q.weight`, ...). Integer tensors are skipped and listed by
    /// [`Weights::skipped`]. The q/k rows stay in the file's order (see
    /// [`unpermute_rope_rows`](super::unpermute_rope_rows)).
    ///
    /// # Errors
    /// As [`GgufFile::tensor_f32`], for the first tensor (in file order) that fails.
    pub fn load_all(&self) -> Result<Weights> {
        let mut weights = Weights::new(&self.path);
        for info in &self.tensors {
            if info.ggml_type.is_integer() {
                weights.insert_skipped(
                    info.name.clone(),
                    info.ggml_type.to_string(),
                    info.shape.clone(),
                );
                continue;
            }
            let t = self.tensor_f32(&info.name)?;
            weights.insert_finite(info.name.clone(), t);
        }
        Ok(weights)
    }

    fn dequantise(&self, info: &GgufTensorInfo) -> Result<Vec<f32>> {
        let unsupported = || Error::UnsupportedDtype {
            path: self.path.clone(),
            name: info.name.clone(),
            dtype: info.ggml_type.to_string(),
        };
        if !info.ggml_type.is_dequantisable() {
            return Err(unsupported());
        }
        // Bounds were checked at open for every type with a known layout.
        let n_bytes = info.n_bytes.ok_or_else(unsupported)?;
        let data = &self.bytes[self.tensor_range(info, n_bytes)];
        Ok(match info.ggml_type {
            GgmlType::F32 => decode::f32_le(data),
            GgmlType::F16 => decode::f16_le(data),
            GgmlType::BF16 => decode::bf16_le(data),
            GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1 => {
                let mut out = vec![0.0f32; info.n_elements];
                match info.ggml_type {
                    GgmlType::Q8_0 => block::q8_0_into(data, &mut out),
                    GgmlType::Q4_0 => block::q4_0_into(data, &mut out),
                    _ => block::q4_1_into(data, &mut out),
                }
                out
            }
            _ => return Err(unsupported()),
        })
    }

    /// The matrix `name` kept in its stored format (F16, BF16, Q8_0, Q4_0 or Q4_1), nothing
    /// widened: for a file opened with [`GgufFile::open_mapped`] the matrix is a range of the
    /// map (no copy, [`PackedMatrix::is_mapped`]), otherwise its bytes are copied out. Every
    /// value is checked finite (one decoding pass, no f32 copy of the whole matrix).
    ///
    /// # Shapes
    /// - output: `[rows, cols]`, the file's dimensions reversed (`[out, in]` for a linear weight)
    ///
    /// # Errors
    /// [`Error::MissingTensor`] if absent; [`Error::UnsupportedDtype`] naming the tensor and its
    /// type if it is not one of the five packable types (F32 tensors are read with
    /// [`GgufFile::tensor_f32`]); [`Error::TensorShape`] if it is not a matrix;
    /// [`Error::NonFinite`] naming the tensor and the row-major index of its first NaN or ±∞.
    pub fn tensor_packed(&self, name: &str) -> Result<PackedMatrix> {
        let info = self.tensor_info(name)?;
        let format =
            PackedFormat::from_ggml(info.ggml_type).ok_or_else(|| Error::UnsupportedDtype {
                path: self.path.clone(),
                name: name.to_owned(),
                dtype: format!("{} (not a packed format)", info.ggml_type),
            })?;
        let &[rows, cols] = info.shape.as_slice() else {
            return Err(Error::TensorShape {
                path: self.path.clone(),
                name: name.to_owned(),
                expected: vec![info.shape.iter().product(), 1],
                got: info.shape.clone(),
            });
        };
        // Bounds were checked at open.
        let n_bytes = info.n_bytes.expect("packed formats have a known layout");
        let range = self.tensor_range(info, n_bytes);
        let m = match &self.bytes {
            FileBytes::Mapped(map) => PackedMatrix::mapped(format, rows, cols, map.clone(), range),
            FileBytes::Owned(bytes) => PackedMatrix::new(format, rows, cols, bytes[range].to_vec()),
        }
        .map_err(|e| format_error(&self.path, format!("tensor `{name}`: {e}")))?;
        if let Some(index) = m.first_non_finite() {
            return Err(Error::NonFinite {
                path: self.path.clone(),
                name: name.to_owned(),
                index,
            });
        }
        Ok(m)
    }
}
