//! GGUF (llama.cpp's checkpoint format) reader: metadata, tensor infos, dequantisation to f32.
//!
//! Layout (v3; v2 is identical, v1 used 32-bit lengths and is refused), all little-endian:
//!
//! ```text
//! "GGUF" u32:version u64:n_tensors u64:n_kv
//! n_kv × { string:key  u32:value_type  value }
//! n_tensors × { string:name  u32:n_dims  n_dims × u64:dim (innermost first)  u32:ggml_type  u64:offset }
//! padding to general.alignment (default 32)
//! tensor data (each tensor at data_start + offset, offsets multiples of the alignment)
//! ```
//!
//! A string is `u64:len` + `len` UTF-8 bytes; an array is `u32:element_type u64:count` + elements
//! (arrays may nest). Every count and length is checked against the bytes that remain *before*
//! anything is allocated, so a corrupt file gives [`Error::Format`], never a panic or a huge
//! allocation.
//!
//! Dimensions are stored innermost first (`ne[0]` is the contiguous one); [`GgufTensorInfo::shape`]
//! reverses them to the row-major shape, so a linear weight is `[out, in]` as in Hugging Face
//! checkpoints and the flat data order is the row-major order of that shape.
//!
//! Dequantised types: F32, F16, BF16, Q8_0, Q4_0, Q4_1 (blocks of 32 along `ne[0]`; the block
//! layouts are in `packed::decode`). Matrices of the last five types can also be kept as stored,
//! [`GgufFile::tensor_packed`], and widened a tile at a time later (see [`PackedMatrix`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use ndarray::{Array2, ArrayD, IxDyn};

use super::decode;
use super::weights::{Weights, check_finite};
use crate::packed::{PackedFormat, PackedMatrix, decode as block};
use crate::{Error, Result};

const FORMAT: &str = "gguf";
const MAGIC: &[u8; 4] = b"GGUF";
/// `general.alignment` when the key is absent.
pub const DEFAULT_ALIGNMENT: usize = 32;
/// ggml's `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;
/// Arrays nested deeper than this are refused (a corrupt file could otherwise recurse without
/// bound: each level costs only 12 bytes).
const MAX_ARRAY_DEPTH: usize = 8;

fn format_error(path: &Path, msg: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        format: FORMAT,
        msg: msg.into(),
    }
}

// ---- metadata values -----------------------------------------------------------------------

/// The type tag of a GGUF metadata value (`gguf_type` in llama.cpp).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgufValueType {
    /// `u8` (tag 0).
    U8,
    /// `i8` (tag 1).
    I8,
    /// `u16` (tag 2).
    U16,
    /// `i16` (tag 3).
    I16,
    /// `u32` (tag 4).
    U32,
    /// `i32` (tag 5).
    I32,
    /// `f32` (tag 6).
    F32,
    /// `bool`, one byte 0 or 1 (tag 7).
    Bool,
    /// UTF-8 string, `u64` length prefix (tag 8).
    String,
    /// Array, `u32` element type + `u64` count (tag 9).
    Array,
    /// `u64` (tag 10).
    U64,
    /// `i64` (tag 11).
    I64,
    /// `f64` (tag 12).
    F64,
}

impl GgufValueType {
    /// The type with tag `tag`, if it is one of the 13 GGUF value types.
    pub fn from_tag(tag: u32) -> Option<Self> {
        use GgufValueType::*;
        Some(match tag {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// The tag written in the file.
    pub fn tag(self) -> u32 {
        use GgufValueType::*;
        match self {
            U8 => 0,
            I8 => 1,
            U16 => 2,
            I16 => 3,
            U32 => 4,
            I32 => 5,
            F32 => 6,
            Bool => 7,
            String => 8,
            Array => 9,
            U64 => 10,
            I64 => 11,
            F64 => 12,
        }
    }

    /// The fewest bytes one value of this type takes in the file (its size for fixed-size types;
    /// the length prefix for strings; type + count for arrays). Used to bound counts before
    /// allocating.
    fn min_encoded_size(self) -> usize {
        use GgufValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

/// A GGUF metadata value.
///
/// The `as_*` accessors return the value only if it has exactly that type; [`GgufValue::to_u64`]
/// and [`GgufValue::to_f64`] accept any integer (or number) type that converts without loss.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// `u8`.
    U8(u8),
    /// `i8`.
    I8(i8),
    /// `u16`.
    U16(u16),
    /// `i16`.
    I16(i16),
    /// `u32`.
    U32(u32),
    /// `i32`.
    I32(i32),
    /// `f32`.
    F32(f32),
    /// `bool`.
    Bool(bool),
    /// UTF-8 string.
    String(String),
    /// Array of values of one type.
    Array(GgufArray),
    /// `u64`.
    U64(u64),
    /// `i64`.
    I64(i64),
    /// `f64`.
    F64(f64),
}

/// A GGUF metadata array, stored by element type (so a 49k-token vocabulary is one
/// `Vec<String>`). Arrays of arrays hold one [`GgufArray`] per element, each with its own type.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufArray {
    /// `u8` elements.
    U8(Vec<u8>),
    /// `i8` elements.
    I8(Vec<i8>),
    /// `u16` elements.
    U16(Vec<u16>),
    /// `i16` elements.
    I16(Vec<i16>),
    /// `u32` elements.
    U32(Vec<u32>),
    /// `i32` elements.
    I32(Vec<i32>),
    /// `f32` elements.
    F32(Vec<f32>),
    /// `bool` elements.
    Bool(Vec<bool>),
    /// String elements.
    String(Vec<String>),
    /// Array elements (nested arrays).
    Array(Vec<GgufArray>),
    /// `u64` elements.
    U64(Vec<u64>),
    /// `i64` elements.
    I64(Vec<i64>),
    /// `f64` elements.
    F64(Vec<f64>),
}

macro_rules! exact_accessor {
    ($(#[$doc:meta] $name:ident, $variant:ident, $ty:ty;)*) => {
        $(
            #[$doc]
            pub fn $name(&self) -> Option<$ty> {
                match self {
                    GgufValue::$variant(v) => Some(*v),
                    _ => None,
                }
            }
        )*
    };
}

macro_rules! array_accessor {
    ($(#[$doc:meta] $name:ident, $variant:ident, $ty:ty;)*) => {
        $(
            #[$doc]
            pub fn $name(&self) -> Option<&[$ty]> {
                match self {
                    GgufValue::Array(GgufArray::$variant(v)) => Some(v),
                    _ => None,
                }
            }
        )*
    };
}

impl GgufValue {
    /// The value's type tag.
    pub fn value_type(&self) -> GgufValueType {
        match self {
            GgufValue::U8(_) => GgufValueType::U8,
            GgufValue::I8(_) => GgufValueType::I8,
            GgufValue::U16(_) => GgufValueType::U16,
            GgufValue::I16(_) => GgufValueType::I16,
            GgufValue::U32(_) => GgufValueType::U32,
            GgufValue::I32(_) => GgufValueType::I32,
            GgufValue::F32(_) => GgufValueType::F32,
            GgufValue::Bool(_) => GgufValueType::Bool,
            GgufValue::String(_) => GgufValueType::String,
            GgufValue::Array(_) => GgufValueType::Array,
            GgufValue::U64(_) => GgufValueType::U64,
            GgufValue::I64(_) => GgufValueType::I64,
            GgufValue::F64(_) => GgufValueType::F64,
        }
    }

    exact_accessor! {
        /// The value if it is a `u8`.
        as_u8, U8, u8;
        /// The value if it is an `i8`.
        as_i8, I8, i8;
        /// The value if it is a `u16`.
        as_u16, U16, u16;
        /// The value if it is an `i16`.
        as_i16, I16, i16;
        /// The value if it is a `u32`.
        as_u32, U32, u32;
        /// The value if it is an `i32`.
        as_i32, I32, i32;
        /// The value if it is a `u64`.
        as_u64, U64, u64;
        /// The value if it is an `i64`.
        as_i64, I64, i64;
        /// The value if it is an `f32`.
        as_f32, F32, f32;
        /// The value if it is an `f64`.
        as_f64, F64, f64;
        /// The value if it is a `bool`.
        as_bool, Bool, bool;
    }

    /// The value if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value if it is an array.
    pub fn as_array(&self) -> Option<&GgufArray> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }

    array_accessor! {
        /// The elements if the value is an array of strings (e.g. `tokenizer.ggml.tokens`).
        as_string_array, String, String;
        /// The elements if the value is an array of `u8`.
        as_u8_array, U8, u8;
        /// The elements if the value is an array of `i32` (e.g. `tokenizer.ggml.token_type`).
        as_i32_array, I32, i32;
        /// The elements if the value is an array of `u32`.
        as_u32_array, U32, u32;
        /// The elements if the value is an array of `i64`.
        as_i64_array, I64, i64;
        /// The elements if the value is an array of `u64`.
        as_u64_array, U64, u64;
        /// The elements if the value is an array of `f32` (e.g. `tokenizer.ggml.scores`).
        as_f32_array, F32, f32;
        /// The elements if the value is an array of `f64`.
        as_f64_array, F64, f64;
        /// The elements if the value is an array of `bool`.
        as_bool_array, Bool, bool;
    }

    /// Any integer value that is non-negative, as `u64` (writers differ on the integer type of
    /// counts such as `llama.block_count`).
    pub fn to_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any float value, or an integer value exactly representable in f64, as `f64`.
    pub fn to_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::U64(v) if v < (1 << 53) => Some(v as f64),
            GgufValue::I64(v) if v.unsigned_abs() < (1 << 53) => Some(v as f64),
            _ => None,
        }
    }
}

impl GgufArray {
    /// The element type.
    pub fn element_type(&self) -> GgufValueType {
        match self {
            GgufArray::U8(_) => GgufValueType::U8,
            GgufArray::I8(_) => GgufValueType::I8,
            GgufArray::U16(_) => GgufValueType::U16,
            GgufArray::I16(_) => GgufValueType::I16,
            GgufArray::U32(_) => GgufValueType::U32,
            GgufArray::I32(_) => GgufValueType::I32,
            GgufArray::F32(_) => GgufValueType::F32,
            GgufArray::Bool(_) => GgufValueType::Bool,
            GgufArray::String(_) => GgufValueType::String,
            GgufArray::Array(_) => GgufValueType::Array,
            GgufArray::U64(_) => GgufValueType::U64,
            GgufArray::I64(_) => GgufValueType::I64,
            GgufArray::F64(_) => GgufValueType::F64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            GgufArray::U8(v) => v.len(),
            GgufArray::I8(v) => v.len(),
            GgufArray::U16(v) => v.len(),
            GgufArray::I16(v) => v.len(),
            GgufArray::U32(v) => v.len(),
            GgufArray::I32(v) => v.len(),
            GgufArray::F32(v) => v.len(),
            GgufArray::Bool(v) => v.len(),
            GgufArray::String(v) => v.len(),
            GgufArray::Array(v) => v.len(),
            GgufArray::U64(v) => v.len(),
            GgufArray::I64(v) => v.len(),
            GgufArray::F64(v) => v.len(),
        }
    }

    /// Whether the array has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// ---- tensor types --------------------------------------------------------------------------

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
    /// `i8` (tag 24; skipped by [`GgufFile::load_all`]).
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

    /// Whether [`GgufFile::tensor_f32`] can dequantise this type.
    pub fn is_dequantisable(self) -> bool {
        use GgmlType::*;
        matches!(self, F32 | F16 | BF16 | Q8_0 | Q4_0 | Q4_1)
    }

    /// Whether this is an integer type (skipped by [`GgufFile::load_all`], like the integer
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
    name: String,
    shape: Vec<usize>,
    ggml_type: GgmlType,
    offset: u64,
    n_elements: usize,
    n_bytes: Option<usize>,
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

// ---- the byte reader -----------------------------------------------------------------------

/// A bounds-checked little-endian cursor over the file bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

macro_rules! read_le {
    ($($name:ident: $ty:ty;)*) => {
        $(
            fn $name(&mut self, what: &str) -> Result<$ty> {
                let bytes = self.take(size_of::<$ty>(), what)?;
                let mut arr = [0u8; size_of::<$ty>()];
                arr.copy_from_slice(bytes);
                Ok(<$ty>::from_le_bytes(arr))
            }
        )*
    };
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn error(&self, msg: impl Into<String>) -> Error {
        format_error(self.path, msg)
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.error(format!(
                "truncated: {what} needs {n} bytes at offset {}, only {} remain",
                self.pos,
                self.remaining()
            )));
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    read_le! {
        u8: u8;
        i8: i8;
        u16: u16;
        i16: i16;
        u32: u32;
        i32: i32;
        u64: u64;
        i64: i64;
        f32: f32;
        f64: f64;
    }

    /// A count of items of at least `min_size` bytes each, checked to fit in the rest of the
    /// file (so it can be used as a capacity).
    fn count(&mut self, min_size: usize, what: &str) -> Result<usize> {
        let at = self.pos;
        let n = self.u64(what)?;
        let fits = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(min_size))
            .is_some_and(|bytes| bytes <= self.remaining());
        if !fits {
            return Err(self.error(format!(
                "{what} {n} at offset {at} cannot fit in the {} bytes that remain",
                self.remaining()
            )));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let at = self.pos;
        let len = self.count(1, &format!("length of {what}"))?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| self.error(format!("{what} at offset {at} is not UTF-8: {e}")))
    }

    fn bool(&mut self, what: &str) -> Result<bool> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(self.error(format!(
                "{what}: bool byte {b} at offset {} is neither 0 nor 1",
                self.pos - 1
            ))),
        }
    }

    fn value_type(&mut self, what: &str) -> Result<GgufValueType> {
        let tag = self.u32(what)?;
        GgufValueType::from_tag(tag).ok_or_else(|| {
            self.error(format!(
                "{what}: unknown value type {tag} at offset {}",
                self.pos - 4
            ))
        })
    }

    fn value(&mut self, ty: GgufValueType, key: &str) -> Result<GgufValue> {
        use GgufValueType as T;
        Ok(match ty {
            T::U8 => GgufValue::U8(self.u8(key)?),
            T::I8 => GgufValue::I8(self.i8(key)?),
            T::U16 => GgufValue::U16(self.u16(key)?),
            T::I16 => GgufValue::I16(self.i16(key)?),
            T::U32 => GgufValue::U32(self.u32(key)?),
            T::I32 => GgufValue::I32(self.i32(key)?),
            T::F32 => GgufValue::F32(self.f32(key)?),
            T::Bool => GgufValue::Bool(self.bool(key)?),
            T::String => GgufValue::String(self.string(key)?),
            T::U64 => GgufValue::U64(self.u64(key)?),
            T::I64 => GgufValue::I64(self.i64(key)?),
            T::F64 => GgufValue::F64(self.f64(key)?),
            T::Array => GgufValue::Array(self.array(key, 0)?),
        })
    }

    fn array(&mut self, key: &str, depth: usize) -> Result<GgufArray> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(self.error(format!(
                "`{key}`: arrays nested more than {MAX_ARRAY_DEPTH} deep"
            )));
        }
        let elem = self.value_type(&format!("element type of `{key}`"))?;
        let n = self.count(
            elem.min_encoded_size(),
            &format!("element count of `{key}`"),
        )?;
        macro_rules! elems {
            ($variant:ident, $read:ident) => {{
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.$read(key)?);
                }
                GgufArray::$variant(v)
            }};
        }
        use GgufValueType as T;
        Ok(match elem {
            T::U8 => elems!(U8, u8),
            T::I8 => elems!(I8, i8),
            T::U16 => elems!(U16, u16),
            T::I16 => elems!(I16, i16),
            T::U32 => elems!(U32, u32),
            T::I32 => elems!(I32, i32),
            T::F32 => elems!(F32, f32),
            T::Bool => elems!(Bool, bool),
            T::String => elems!(String, string),
            T::U64 => elems!(U64, u64),
            T::I64 => elems!(I64, i64),
            T::F64 => elems!(F64, f64),
            T::Array => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.array(key, depth + 1)?);
                }
                GgufArray::Array(v)
            }
        })
    }
}

// ---- the file ------------------------------------------------------------------------------

/// A parsed GGUF file: header, metadata, tensor infos, and the raw bytes to dequantise from.
///
/// [`GgufFile::open`] reads the whole file into memory (memory mapping would need `unsafe`);
/// [`GgufFile::open_lazy`] keeps only the header and reads each tensor's bytes from the file when
/// it is taken, so a loader copying tensors out never holds the raw file beside its copies.
/// Tensors are dequantised on demand by [`GgufFile::tensor_f32`], or all at once by
/// [`GgufFile::load_all`], or kept packed by [`GgufFile::tensor_packed`].
///
/// ```no_run
/// # fn main() -> spry::Result<()> {
/// use spry::io::{GgufFile, LlamaConfig, asset};
/// let gguf = GgufFile::open(asset("SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf")?)?;
/// let config = LlamaConfig::from_gguf(&gguf)?;
/// let weights = gguf.load_all()?;
/// let emb = weights.get2("token_embd.weight", [config.vocab_size, config.hidden_size])?;
/// # Ok(()) }
/// ```
pub struct GgufFile {
    path: PathBuf,
    /// The whole file, or (lazy) only its header: `..data_start`.
    bytes: Vec<u8>,
    /// Whether `bytes` holds the tensor data (else it is read from `path` on demand).
    data_in_memory: bool,
    version: u32,
    alignment: usize,
    data_start: usize,
    metadata: Vec<(String, GgufValue)>,
    metadata_index: HashMap<String, usize>,
    tensors: Vec<GgufTensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("bytes", &self.bytes.len())
            .field("data_in_memory", &self.data_in_memory)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Reads and parses a GGUF file (tensor data is dequantised later, on demand).
    ///
    /// # Errors
    /// - [`Error::Io`] if the file cannot be read.
    /// - [`Error::Format`] on a bad magic, a version other than 2 or 3, a truncated header,
    ///   metadata or string, a count or length larger than the rest of the file, an unknown value
    ///   type, a non-UTF-8 string, a duplicate key or tensor name, an invalid `general.alignment`,
    ///   more than 4 dimensions, a row length (`ne[0]`) that is not a multiple of the type's
    ///   block size, a misaligned tensor offset, or tensor data beyond the end of the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(path, bytes)
    }

    /// Reads and parses a GGUF file like [`GgufFile::open`], then keeps only its header
    /// (metadata and tensor infos) in memory: each tensor's bytes are read from the file when the
    /// tensor is taken. The raw file is resident only while it is parsed, never beside the
    /// tensors a loader copies out. The file must not change while the `GgufFile` is in use.
    ///
    /// # Errors
    /// As [`GgufFile::open`]; taking a tensor later may also give [`Error::Io`].
    pub fn open_lazy(path: impl AsRef<Path>) -> Result<Self> {
        let mut file = Self::open(path)?;
        file.bytes.truncate(file.data_start.min(file.bytes.len()));
        file.bytes.shrink_to_fit();
        file.data_in_memory = false;
        Ok(file)
    }

    /// The `n_bytes` data bytes of tensor `info` (bounds checked at open): a slice of the file in
    /// memory, or read from the file for a lazy one.
    fn tensor_data(&self, info: &GgufTensorInfo, n_bytes: usize) -> Result<Cow<'_, [u8]>> {
        let start = self.data_start + info.offset as usize;
        if self.data_in_memory {
            return Ok(Cow::Borrowed(&self.bytes[start..start + n_bytes]));
        }
        let io = |source| Error::Io {
            path: self.path.clone(),
            source,
        };
        let mut f = std::fs::File::open(&self.path).map_err(io)?;
        f.seek(SeekFrom::Start(start as u64)).map_err(io)?;
        let mut buf = vec![0u8; n_bytes];
        f.read_exact(&mut buf).map_err(io)?;
        Ok(Cow::Owned(buf))
    }

    /// Parses GGUF bytes already in memory; `path` only labels the errors.
    ///
    /// # Errors
    /// As [`GgufFile::open`], without the I/O.
    pub fn from_bytes(path: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self> {
        let path = path.into();
        let mut r = Reader {
            buf: &bytes,
            pos: 0,
            path: &path,
        };
        let magic = r.take(4, "magic")?;
        if magic != MAGIC {
            return Err(r.error(format!("bad magic {magic:02x?}, expected \"GGUF\"")));
        }
        let version = r.u32("version")?;
        if !(version == 2 || version == 3) {
            let hint = if version.swap_bytes() <= 3 {
                " (a big-endian file?)"
            } else {
                ""
            };
            return Err(r.error(format!(
                "unsupported version {version}{hint}: only GGUF v3 (and v2) are read"
            )));
        }
        // Minimal encodings: tensor info = name length + n_dims + type + offset; key/value =
        // key length + type + 1-byte value.
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.count(8 + 4 + 1, "metadata count")?;

        let mut metadata = Vec::with_capacity(n_kv);
        let mut metadata_index = HashMap::with_capacity(n_kv);
        for i in 0..n_kv {
            let key = r.string(&format!("metadata key {i}"))?;
            let ty = r.value_type(&format!("type of `{key}`"))?;
            let value = r.value(ty, &key)?;
            if metadata_index.insert(key.clone(), i).is_some() {
                return Err(r.error(format!("duplicate metadata key `{key}`")));
            }
            metadata.push((key, value));
        }

        let alignment = match metadata_index.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(&i) => match metadata[i].1 {
                GgufValue::U32(a) if a.is_power_of_two() => a as usize,
                ref other => {
                    return Err(r.error(format!(
                        "general.alignment must be a u32 power of two, got {other:?}"
                    )));
                }
            },
        };

        let infos_at = r.pos;
        let fits = usize::try_from(n_tensors)
            .ok()
            .and_then(|n| n.checked_mul(8 + 4 + 4 + 8))
            .is_some_and(|b| b <= r.remaining());
        if !fits {
            return Err(r.error(format!(
                "tensor count {n_tensors} cannot fit in the {} bytes after the metadata \
                 (offset {infos_at})",
                r.remaining()
            )));
        }
        let n_tensors = n_tensors as usize;
        let mut tensors = Vec::with_capacity(n_tensors);
        let mut tensor_index = HashMap::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let name = r.string(&format!("name of tensor {i}"))?;
            let n_dims = r.u32(&format!("dimension count of `{name}`"))?;
            if n_dims > MAX_DIMS {
                return Err(r.error(format!(
                    "tensor `{name}` has {n_dims} dimensions, at most {MAX_DIMS} allowed"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                let d = r.u64(&format!("dimensions of `{name}`"))?;
                let d = usize::try_from(d)
                    .map_err(|_| r.error(format!("tensor `{name}`: dimension {d} too large")))?;
                dims.push(d);
            }
            let ggml_type = GgmlType::from_tag(r.u32(&format!("type of `{name}`"))?);
            let offset = r.u64(&format!("offset of `{name}`"))?;
            let n_elements = dims
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| {
                    r.error(format!(
                        "tensor `{name}`: element count of dims {dims:?} overflows"
                    ))
                })?;
            let n_bytes = match ggml_type.block_layout() {
                None => None,
                Some((block, block_bytes)) => {
                    let row = dims.first().copied().unwrap_or(1);
                    if !row.is_multiple_of(block) {
                        return Err(r.error(format!(
                            "tensor `{name}` ({ggml_type}): row length {row} (element count \
                             {n_elements}) is not a multiple of the block size {block}"
                        )));
                    }
                    Some(
                        (n_elements / block)
                            .checked_mul(block_bytes)
                            .ok_or_else(|| {
                                r.error(format!("tensor `{name}`: byte size overflows"))
                            })?,
                    )
                }
            };
            if !offset.is_multiple_of(alignment as u64) {
                return Err(r.error(format!(
                    "tensor `{name}`: offset {offset} is not a multiple of the alignment \
                     {alignment}"
                )));
            }
            if tensor_index.insert(name.clone(), i).is_some() {
                return Err(r.error(format!("duplicate tensor name `{name}`")));
            }
            dims.reverse();
            tensors.push(GgufTensorInfo {
                name,
                shape: dims,
                ggml_type,
                offset,
                n_elements,
                n_bytes,
            });
        }

        let data_start = r.pos.next_multiple_of(alignment);
        let file_len = bytes.len();
        for t in &tensors {
            let Some(n_bytes) = t.n_bytes else { continue };
            let end = usize::try_from(t.offset)
                .ok()
                .and_then(|o| data_start.checked_add(o))
                .and_then(|s| s.checked_add(n_bytes));
            if end.is_none_or(|end| end > file_len) {
                return Err(format_error(
                    &path,
                    format!(
                        "tensor `{}`: {} bytes of data at offset {} (+ data start {data_start}) \
                         run beyond the end of the file ({file_len} bytes)",
                        t.name, n_bytes, t.offset
                    ),
                ));
            }
        }

        Ok(GgufFile {
            path,
            bytes,
            data_in_memory: true,
            version,
            alignment,
            data_start,
            metadata,
            metadata_index,
            tensors,
            tensor_index,
        })
    }

    /// The file the data came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The format version (3, or 2).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The data alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> usize {
        self.alignment
    }

    /// Byte offset of the tensor data section in the file.
    pub fn data_start(&self) -> usize {
        self.data_start
    }

    /// The metadata value of `key`, if present.
    pub fn metadata(&self, key: &str) -> Option<&GgufValue> {
        self.metadata_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// All metadata key/values, in file order.
    pub fn metadata_iter(&self) -> impl Iterator<Item = (&str, &GgufValue)> {
        self.metadata.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The info of tensor `name`.
    ///
    /// # Errors
    /// [`Error::MissingTensor`] if there is no such tensor.
    pub fn tensor_info(&self, name: &str) -> Result<&GgufTensorInfo> {
        self.tensor_index
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| Error::MissingTensor {
                path: self.path.clone(),
                name: name.to_owned(),
            })
    }

    /// All tensor infos, in file order.
    pub fn tensor_infos(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// Total element count of all tensors (the parameter count of a model file).
    pub fn n_params(&self) -> usize {
        self.tensors.iter().map(|t| t.n_elements).sum()
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
    /// [`unpermute_rope_rows`]).
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
        let data = self.tensor_data(info, n_bytes)?;
        let data = &data[..];
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

    /// The matrix `name` kept in its stored format (F16, BF16, Q8_0, Q4_0 or Q4_1): its bytes are
    /// copied out of the file, nothing is widened. Every value is checked finite (one decoding
    /// pass, no f32 copy of the whole matrix).
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
        let bytes = self.tensor_data(info, n_bytes)?.into_owned();
        let m = PackedMatrix::new(format, rows, cols, bytes)
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

/// Undoes llama.cpp's per-head permutation of the q/k projection rows, giving the Hugging Face
/// layout that rotate-half RoPE expects.
///
/// llama.cpp's converter reorders each head's rows so that interleaved RoPE (pairs `2i, 2i+1`)
/// applies; this is the inverse: `reshape(n_heads, head_dim/2, 2, in) → swap axes 1, 2 →
/// reshape(out, in)`, i.e. output row `h·hd + t·hd/2 + i` is input row `h·hd + 2i + t`.
/// Use `n_heads` = the query head count for `attn_q`, the KV head count for `attn_k`.
///
/// # Shapes
/// - `w`: `[n_heads·head_dim, in]` with `head_dim` even; output: the same
///
/// # Errors
/// [`Error::InvalidArgument`] if `n_heads` is zero or does not divide the row count into heads
/// of even size.
pub fn unpermute_rope_rows(w: Array2<f32>, n_heads: usize) -> Result<Array2<f32>> {
    let order = rope_unpermute_order(w.nrows(), n_heads)?;
    let mut out = Array2::zeros(w.dim());
    for (dst, &src) in order.iter().enumerate() {
        out.row_mut(dst).assign(&w.row(src));
    }
    Ok(out)
}

/// [`unpermute_rope_rows`] on a packed matrix: whole rows of blocks are moved (blocks run along
/// the input dimension, so rows are independent), nothing is widened.
///
/// # Shapes
/// - `w`: `[n_heads·head_dim, in]` with `head_dim` even; output: the same
///
/// # Errors
/// As [`unpermute_rope_rows`].
pub fn unpermute_rope_rows_packed(w: &PackedMatrix, n_heads: usize) -> Result<PackedMatrix> {
    let order = rope_unpermute_order(w.rows(), n_heads)?;
    Ok(w.select_rows(&order))
}

/// The source row of every output row of the q/k un-permutation: output row
/// `h·hd + t·hd/2 + i` is input row `h·hd + 2i + t`.
fn rope_unpermute_order(rows: usize, n_heads: usize) -> Result<Vec<usize>> {
    const OP: &str = "unpermute_rope_rows";
    if n_heads == 0 || !rows.is_multiple_of(n_heads) || !(rows / n_heads).is_multiple_of(2) {
        return Err(Error::invalid(
            OP,
            format!("{rows} rows do not split into {n_heads} heads of even size"),
        ));
    }
    let head_dim = rows / n_heads;
    let half = head_dim / 2;
    let mut order = vec![0; rows];
    for h in 0..n_heads {
        let base = h * head_dim;
        for i in 0..half {
            for t in 0..2 {
                order[base + t * half + i] = base + 2 * i + t;
            }
        }
    }
    Ok(order)
}
