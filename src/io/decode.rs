//! Little-endian decoding of raw tensor bytes to f32, shared by the safetensors and GGUF readers.
//!
//! The byte buffers come from files and carry no alignment guarantee, so values are decoded with
//! `chunks_exact` + `from_le_bytes` (never by casting the buffer); half floats go through `half`'s
//! vectorised slice conversion.

use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use half::{bf16, f16};

/// Little-endian f32 values. A trailing partial value is ignored (callers check the length).
pub(crate) fn f32_le(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Little-endian u16 words. A trailing odd byte is ignored.
fn u16_le(bytes: &[u8]) -> Vec<u16> {
    bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// Little-endian IEEE half floats, converted to f32.
pub(crate) fn f16_le(bytes: &[u8]) -> Vec<f32> {
    let bits = u16_le(bytes);
    let mut out = vec![0.0f32; bits.len()];
    bits.reinterpret_cast::<f16>()
        .convert_to_f32_slice(&mut out);
    out
}

/// Little-endian bfloat16 values, converted to f32.
pub(crate) fn bf16_le(bytes: &[u8]) -> Vec<f32> {
    let bits = u16_le(bytes);
    let mut out = vec![0.0f32; bits.len()];
    bits.reinterpret_cast::<bf16>()
        .convert_to_f32_slice(&mut out);
    out
}

/// One little-endian f16 at `bytes[0..2]`, as f32.
#[inline]
pub(crate) fn f16_at(bytes: &[u8]) -> f32 {
    f16::from_bits(u16::from_le_bytes([bytes[0], bytes[1]])).to_f32()
}
