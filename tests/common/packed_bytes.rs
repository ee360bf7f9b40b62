//! Random stored bytes of packed matrices, every value finite, for the packed-weight tests.
#![allow(dead_code)]

use half::{bf16, f16};
use spry::io::PackedFormat;
use spry::rng::KeyedRng;

/// The stored bytes of a `[rows, cols]` matrix in `format`: F16/BF16 elements uniform in ±2;
/// quantised blocks with scales in ±0.1 (Q4_1 minimums in ±0.5) and uniformly random quants.
pub fn random_packed_bytes(
    format: PackedFormat,
    rows: usize,
    cols: usize,
    r: &mut KeyedRng,
) -> Vec<u8> {
    let f16_bytes = |x: f64| f16::from_f64(x).to_bits().to_le_bytes();
    let mut bytes = Vec::new();
    match format {
        PackedFormat::F16 => {
            for _ in 0..rows * cols {
                bytes.extend(f16_bytes(r.uniform_in(-2.0, 2.0)));
            }
        }
        PackedFormat::BF16 => {
            for _ in 0..rows * cols {
                let x = bf16::from_f64(r.uniform_in(-2.0, 2.0));
                bytes.extend(x.to_bits().to_le_bytes());
            }
        }
        _ => {
            let (block, block_bytes) = format.block_layout();
            for _ in 0..rows * cols / block {
                bytes.extend(f16_bytes(r.uniform_in(-0.1, 0.1)));
                let mut rest = block_bytes - 2;
                if format == PackedFormat::Q4_1 {
                    bytes.extend(f16_bytes(r.uniform_in(-0.5, 0.5)));
                    rest -= 2;
                }
                bytes.extend((0..rest).map(|_| r.below(256) as u8));
            }
        }
    }
    bytes
}
