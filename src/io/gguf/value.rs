//! GGUF metadata values: the 13 value types and their tags, a value, and arrays stored by element
//! type (a 49k-token vocabulary is one `Vec<String>`), with typed accessors.

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
    pub(super) fn min_encoded_size(self) -> usize {
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
