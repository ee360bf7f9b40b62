//! ggml tensor types and tensor infos.
//!
//! Dimensions are stored innermost first (`ne[0]` is the contiguous one); [`GgufTensorInfo::shape`]
//! reverses them to the row-major shape, so a linear weight is `[out, in]` as in Hugging Face
//! checkpoints and the flat data order is the row-major order of that shape. Quantised types come
//! in blocks along `ne[0]` ([`GgmlType::block_layout`]).

use std::fmt;

use crate::packed::PackedFormat;

/// A ggml tensor data type (`ggml_type`). Only F32, F16, BF16, Q8_0, Q4_0 and Q4_1 are
/// dequantised; the other named types are known so that their data extents can be checked, and
/// unknown tags are kept as [`GgmlType::Other`].
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// 32-bit float (tag 0).
    F32,
    /// IEEE half (tag 1).
    F16,
    /// 4-bit, blocks of 32 with an f16 scale (tag 2).
    Q4_0,
    /// 4-bit, blocks of 32 with an f16 scale and minimum (tag 3).
    Q4_1,
    /// 5-bit, blocks of 32 (tag 6; not dequantised).
    Q5_0,
    /// 5-bit with minimum, blocks of 32 (tag 7; not dequantised).
    Q5_1,
    /// 8-bit, blocks of 32 with an f16 scale (tag 8).
    Q8_0,
    /// 8-bit with sum, blocks of 32 (tag 9; not dequantised).
    Q8_1,
    /// k-quant, 2-bit, super-blocks of 256 (tag 10; not dequantised).
    Q2_K,
    /// k-quant, 3-bit (tag 11; not dequantised).
    Q3_K,
    /// k-quant, 4-bit (tag 12; not dequantised).
    Q4_K,
    /// k-quant, 5-bit (tag 13; not dequantised).
    Q5_K,
    /// k-quant, 6-bit (tag 14; not dequantised).
    Q6_K,
    /// k-quant, 8-bit (tag 15; not dequantised).
    Q8_K,
    /// `i8` (tag 24; skipped by [`GgufFile::load_all`](super::GgufFile::load_all)).
    I8,
    /// `i16` (tag 25; skipped).
    I16,
    /// `i32` (tag 26; skipped).
    I32,
    /// `i64` (tag 27; skipped).
    I64,
    /// `f64` (tag 28; not dequantised).
    F64,
    /// bfloat16 (tag 30).
    BF16,
    /// Any other tag (IQ quantisations, ternary types, ...): listed, not readable.
    Other(u32),
}

impl GgmlType {
    /// The type with tag `tag`.
    pub fn from_tag(tag: u32) -> Self {
        use GgmlType::*;
        match tag {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2_K,
            11 => Q3_K,
            12 => Q4_K,
            13 => Q5_K,
            14 => Q6_K,
            15 => Q8_K,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            28 => F64,
            30 => BF16,
            other => Other(other),
        }
    }

    /// The tag written in the file.
    pub fn tag(self) -> u32 {
        use GgmlType::*;
        match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q5_0 => 6,
            Q5_1 => 7,
            Q8_0 => 8,
            Q8_1 => 9,
            Q2_K => 10,
            Q3_K => 11,
            Q4_K => 12,
            Q5_K => 13,
            Q6_K => 14,
            Q8_K => 15,
            I8 => 24,
            I16 => 25,
            I32 => 26,
            I64 => 27,
            F64 => 28,
            BF16 => 30,
            Other(tag) => tag,
        }
    }

    /// `(elements per block, bytes per block)`, or `None` for [`GgmlType::Other`].
    pub fn block_layout(self) -> Option<(usize, usize)> {
        use GgmlType::*;
        Some(match self {
            F32 | I32 => (1, 4),
            F16 | BF16 | I16 => (1, 2),
            I8 => (1, 1),
            I64 | F64 => (1, 8),
            Q4_0 => (32, 18),
            Q4_1 => (32, 20),
            Q5_0 => (32, 22),
            Q5_1 => (32, 24),
            Q8_0 => (32, 34),
            Q8_1 => (32, 36),
            Q2_K => (256, 84),
            Q3_K => (256, 110),
            Q4_K => (256, 144),
            Q5_K => (256, 176),
            Q6_K => (256, 210),
            Q8_K => (256, 292),
            Other(_) => return None,
        })
    }

    /// Whether [`GgufFile::tensor_f32`](super::GgufFile::tensor_f32) can dequantise this type.
    pub fn is_dequantisable(self) -> bool {
        use GgmlType::*;
        matches!(self, F32 | F16 | BF16 | Q8_0 | Q4_0 | Q4_1)
    }

    /// Whether this is an integer type (skipped by
    /// [`GgufFile::load_all`](super::GgufFile::load_all), like the integer
    /// buffers of safetensors files).
    pub fn is_integer(self) -> bool {
        use GgmlType::*;
        matches!(self, I8 | I16 | I32 | I64)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GgmlType::Other(tag) => write!(f, "ggml type {tag}"),
            known => write!(f, "{known:?}"),
        }
    }
}

impl PackedFormat {
    /// The packed format of a ggml type, if it is one of the five.
    pub fn from_ggml(t: GgmlType) -> Option<Self> {
        Some(match t {
            GgmlType::F16 => PackedFormat::F16,
            GgmlType::BF16 => PackedFormat::BF16,
            GgmlType::Q8_0 => PackedFormat::Q8_0,
            GgmlType::Q4_0 => PackedFormat::Q4_0,
            GgmlType::Q4_1 => PackedFormat::Q4_1,
            _ => return None,
        })
    }
}

/// Where one tensor is and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensorInfo {
    pub(super) name: String,
    pub(super) shape: Vec<usize>,
    pub(super) ggml_type: GgmlType,
    pub(super) offset: u64,
    pub(super) n_elements: usize,
    pub(super) n_bytes: Option<usize>,
}

impl GgufTensorInfo {
    /// The tensor name (`token_embd.weight`, `blk.0.attn_q.weight`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The row-major shape: the file's dimensions reversed, so linear weights are `[out, in]`.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The data type.
    pub fn ggml_type(&self) -> GgmlType {
        self.ggml_type
    }

    /// The data offset relative to the start of the data section.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Number of elements.
    pub fn n_elements(&self) -> usize {
        self.n_elements
    }

    /// Size of the data in bytes, or `None` for a type of unknown layout.
    pub fn n_bytes(&self) -> Option<usize> {
        self.n_bytes
    }
}
