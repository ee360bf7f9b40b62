//! Little-endian decoding of whole raw tensors to f32 vectors, for the safetensors and GGUF
//! readers (F32, F16, BF16). The byte buffers come from files and carry no alignment guarantee, so
//! values are decoded with `chunks_exact` + `from_le_bytes` (never by casting the buffer); whole
//! f16/bf16 tensors go through `half`'s vectorised slice conversion.
//!
//! The block formats (Q8_0, Q4_0, Q4_1), and the f16/bf16 decoders into a caller's slice, are in
//! the `packed` layer (`src/packed/decode.rs`, above `io` in the layer order), shared with
//! [`PackedMatrix`](crate::packed::PackedMatrix).

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
