//! The bounds-checked little-endian cursor over a GGUF file's bytes, and the decoding of metadata
//! values with it.
//!
//! A string is `u64:len` + `len` UTF-8 bytes; an array is `u32:element_type u64:count` + elements
//! (arrays may nest). Every count and length is checked against the bytes that remain *before*
//! anything is allocated, so a corrupt file gives [`Error::Format`], never a panic or a huge
//! allocation.

use std::path::Path;

use super::format_error;
use super::value::{GgufArray, GgufValue, GgufValueType};
use crate::{Error, Result};

/// Arrays nested deeper than this are refused (a corrupt file could otherwise recurse without
/// bound: each level costs only 12 bytes).
const MAX_ARRAY_DEPTH: usize = 8;

/// A bounds-checked little-endian cursor over the file bytes.
pub(super) struct Reader<'a> {
    pub(super) buf: &'a [u8],
    pub(super) pos: usize,
    pub(super) path: &'a Path,
}

macro_rules! read_le {
    ($($name:ident: $ty:ty;)*) => {
        $(
            pub(super) fn $name(&mut self, what: &str) -> Result<$ty> {
                let bytes = self.take(size_of::<$ty>(), what)?;
                let mut arr = [0u8; size_of::<$ty>()];
                arr.copy_from_slice(bytes);
                Ok(<$ty>::from_le_bytes(arr))
            }
        )*
    };
}

impl<'a> Reader<'a> {
    pub(super) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(super) fn error(&self, msg: impl Into<String>) -> Error {
        format_error(self.path, msg)
    }

    pub(super) fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
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
    pub(super) fn count(&mut self, min_size: usize, what: &str) -> Result<usize> {
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

    pub(super) fn string(&mut self, what: &str) -> Result<String> {
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

    pub(super) fn value_type(&mut self, what: &str) -> Result<GgufValueType> {
        let tag = self.u32(what)?;
        GgufValueType::from_tag(tag).ok_or_else(|| {
            self.error(format!(
                "{what}: unknown value type {tag} at offset {}",
                self.pos - 4
            ))
        })
    }

    pub(super) fn value(&mut self, ty: GgufValueType, key: &str) -> Result<GgufValue> {
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
