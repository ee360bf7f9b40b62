//! The block decoders: little-endian f16/bf16 elements and GGUF's Q8_0, Q4_0, Q4_1 blocks,
//! widened into a caller's slice of any [`Float`] (`f32` or `f64`). They are the one
//! implementation of each format: [`PackedMatrix`](super::PackedMatrix) widens tiles of rows with
//! them, and the GGUF reader of the `io` layer dequantises whole quantised tensors with them.
//!
//! The byte buffers come from files and carry no alignment guarantee, so values are decoded with
//! `chunks_exact` + `from_le_bytes` (never by casting the buffer). Each value is computed in f32
//! exactly as the format defines it, then widened (exactly) to `F`.
//!
//! | format | block bytes | layout | value |
//! |---|---|---|---|
//! | Q8_0 | 34 | f16 d, 32 × i8 q | `d·q` |
//! | Q4_0 | 18 | f16 d, 16 bytes | `d·(q − 8)` |
//! | Q4_1 | 20 | f16 d, f16 m, 16 bytes | `d·q + m` |
//!
//! In the 4-bit formats, byte j holds element j in its low nibble and element j + 16 in its high
//! nibble.

use half::{bf16, f16};

use crate::Float;

/// Elements per block of the Q8_0, Q4_0 and Q4_1 formats.
pub(crate) const QK: usize = 32;

/// One little-endian f16 at `bytes[0..2]`, as f32.
#[inline]
pub(crate) fn f16_at(bytes: &[u8]) -> f32 {
    f16::from_bits(u16::from_le_bytes([bytes[0], bytes[1]])).to_f32()
}

/// An f32 value widened to `F` (exact: f32 → f64 is exact, and for `F = f32` this is the
/// identity).
#[inline(always)]
fn widen<F: Float>(x: f32) -> F {
    F::from_f64(f64::from(x))
}

/// Little-endian IEEE half floats into `out` (`out.len()` values, `2·out.len()` bytes).
pub(crate) fn f16_into<F: Float>(bytes: &[u8], out: &mut [F]) {
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = widen(f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32());
    }
}

/// Little-endian bfloat16 values into `out` (`out.len()` values, `2·out.len()` bytes).
pub(crate) fn bf16_into<F: Float>(bytes: &[u8], out: &mut [F]) {
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = widen(bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32());
    }
}

/// Q8_0: 34-byte blocks `{f16 d, i8 q[32]}`, `x = d·q`, into `out` (32 values per block).
pub(crate) fn q8_0_into<F: Float>(data: &[u8], out: &mut [F]) {
    for (block, out) in data.chunks_exact(34).zip(out.chunks_exact_mut(QK)) {
        let d = f16_at(&block[0..2]);
        for (o, &q) in out.iter_mut().zip(&block[2..34]) {
            *o = widen(f32::from(q as i8) * d);
        }
    }
}

/// Q4_0: 18-byte blocks `{f16 d, u8 qs[16]}`, `x = d·(q − 8)`, into `out`; low nibbles are
/// elements 0..16, high nibbles 16..32.
pub(crate) fn q4_0_into<F: Float>(data: &[u8], out: &mut [F]) {
    for (block, out) in data.chunks_exact(18).zip(out.chunks_exact_mut(QK)) {
        let d = f16_at(&block[0..2]);
        let (lo, hi) = out.split_at_mut(QK / 2);
        for ((l, h), &b) in lo.iter_mut().zip(hi).zip(&block[2..18]) {
            *l = widen(f32::from((b & 0x0F) as i8 - 8) * d);
            *h = widen(f32::from((b >> 4) as i8 - 8) * d);
        }
    }
}

/// Q4_1: 20-byte blocks `{f16 d, f16 m, u8 qs[16]}`, `x = d·q + m`, into `out`; nibble order as
/// Q4_0.
pub(crate) fn q4_1_into<F: Float>(data: &[u8], out: &mut [F]) {
    for (block, out) in data.chunks_exact(20).zip(out.chunks_exact_mut(QK)) {
        let d = f16_at(&block[0..2]);
        let m = f16_at(&block[2..4]);
        let (lo, hi) = out.split_at_mut(QK / 2);
        for ((l, h), &b) in lo.iter_mut().zip(hi).zip(&block[4..20]) {
            *l = widen(f32::from(b & 0x0F) * d + m);
            *h = widen(f32::from(b >> 4) * d + m);
        }
    }
}
