//! A minimal independent GGUF writer for tests: metadata of every value type, tensors with
//! their data laid out as llama.cpp does (each at the aligned end of the one before), and an
//! offset override to build broken files.
#![allow(dead_code)]

use spry::io::{GgufArray, GgufValue};

pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

pub fn tag(v: &GgufValue) -> u32 {
    match v {
        GgufValue::U8(_) => 0,
        GgufValue::I8(_) => 1,
        GgufValue::U16(_) => 2,
        GgufValue::I16(_) => 3,
        GgufValue::U32(_) => 4,
        GgufValue::I32(_) => 5,
        GgufValue::F32(_) => 6,
        GgufValue::Bool(_) => 7,
        GgufValue::String(_) => 8,
        GgufValue::Array(_) => 9,
        GgufValue::U64(_) => 10,
        GgufValue::I64(_) => 11,
        GgufValue::F64(_) => 12,
    }
}

/// A value's payload (without its type tag).
pub fn put_value(out: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => out.push(*x),
        GgufValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(x) => out.push(u8::from(*x)),
        GgufValue::String(s) => put_str(out, s),
        GgufValue::Array(a) => put_array(out, a),
        GgufValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

pub fn put_array(out: &mut Vec<u8>, a: &GgufArray) {
    fn each<T: Clone>(out: &mut Vec<u8>, t: u32, v: &[T], f: impl Fn(T) -> GgufValue) {
        put_u32(out, t);
        put_u64(out, v.len() as u64);
        for x in v {
            put_value(out, &f(x.clone()));
        }
    }
    match a {
        GgufArray::U8(v) => each(out, 0, v, GgufValue::U8),
        GgufArray::I8(v) => each(out, 1, v, GgufValue::I8),
        GgufArray::U16(v) => each(out, 2, v, GgufValue::U16),
        GgufArray::I16(v) => each(out, 3, v, GgufValue::I16),
        GgufArray::U32(v) => each(out, 4, v, GgufValue::U32),
        GgufArray::I32(v) => each(out, 5, v, GgufValue::I32),
        GgufArray::F32(v) => each(out, 6, v, GgufValue::F32),
        GgufArray::Bool(v) => each(out, 7, v, GgufValue::Bool),
        GgufArray::String(v) => each(out, 8, v, GgufValue::String),
        GgufArray::Array(v) => each(out, 9, v, GgufValue::Array),
        GgufArray::U64(v) => each(out, 10, v, GgufValue::U64),
        GgufArray::I64(v) => each(out, 11, v, GgufValue::I64),
        GgufArray::F64(v) => each(out, 12, v, GgufValue::F64),
    }
}

/// A tensor to write: dims innermost first, as the file stores them.
pub struct T {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: u32,
    pub data: Vec<u8>,
    /// Overrides the offset the writer would compute.
    pub offset: Option<u64>,
}

pub fn tensor(name: &str, dims: &[u64], ty: u32, data: Vec<u8>) -> T {
    T {
        name: name.to_owned(),
        dims: dims.to_vec(),
        ty,
        data,
        offset: None,
    }
}

/// A GGUF file: header, metadata, tensor infos, padding to `alignment`, data. It ends exactly
/// where the last tensor's data ends.
pub fn build(version: u32, kv: &[(&str, GgufValue)], tensors: &[T], alignment: usize) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    put_u32(&mut out, version);
    put_u64(&mut out, tensors.len() as u64);
    put_u64(&mut out, kv.len() as u64);
    for (k, v) in kv {
        put_str(&mut out, k);
        put_u32(&mut out, tag(v));
        put_value(&mut out, v);
    }
    let mut offsets = Vec::new();
    let mut next = 0usize;
    for t in tensors {
        next = next.next_multiple_of(alignment);
        offsets.push(next);
        next += t.data.len();
    }
    for (t, &off) in tensors.iter().zip(&offsets) {
        put_str(&mut out, &t.name);
        put_u32(&mut out, t.dims.len() as u32);
        for &d in &t.dims {
            put_u64(&mut out, d);
        }
        put_u32(&mut out, t.ty);
        put_u64(&mut out, t.offset.unwrap_or(off as u64));
    }
    let data_start = out.len().next_multiple_of(alignment);
    out.resize(data_start, 0);
    for (t, &off) in tensors.iter().zip(&offsets) {
        out.resize(data_start + off, 0);
        out.extend_from_slice(&t.data);
    }
    out
}
