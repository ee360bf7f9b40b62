//! [`PackedMatrix`]: a frozen matrix kept in its stored format (f16, bf16, or GGUF's Q8_0, Q4_0,
//! Q4_1 blocks) and widened to f32/f64 a few rows at a time, so the full float matrix never
//! exists.
//!
//! The layout is the files' own: row-major `[rows, cols]`, each row `cols / block` consecutive
//! blocks (blocks run along `cols`, the input dimension of a linear weight `[out, in]`), so rows
//! are independent and any range of rows is one contiguous byte range. Widening rows
//! `r0..r1` costs `O((r1 − r0)·cols)` and allocates nothing ([`PackedMatrix::decode_rows`]).
//!
//! | format | elements per block | bytes per block | f32 bytes / stored bytes |
//! |---|---|---|---|
//! | F16, BF16 | 1 | 2 | 2 |
//! | Q8_0 | 32 | 34 | 3.8 |
//! | Q4_0 | 32 | 18 | 7.1 |
//! | Q4_1 | 32 | 20 | 6.4 |
//!
//! This layer sits between `dual`/`float` and `kernels`: the kernels read packed weights
//! (`kernels::FrozenWeight`) and the `io` readers produce them, so it depends on neither.
//! The block decoders (`decode.rs`) are the one implementation of each format, also used by the
//! GGUF reader to dequantise whole tensors.

pub(crate) mod decode;

use std::fmt;

use ndarray::Array2;

use crate::{Error, Float, Result};

/// The storage format of a [`PackedMatrix`].
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PackedFormat {
    /// IEEE half, little-endian.
    F16,
    /// bfloat16, little-endian.
    BF16,
    /// 34-byte blocks of 32: f16 scale d, 32 × i8 q; `x = d·q`.
    Q8_0,
    /// 18-byte blocks of 32: f16 scale d, 16 bytes of nibbles; `x = d·(q − 8)`.
    Q4_0,
    /// 20-byte blocks of 32: f16 scale d, f16 minimum m, 16 bytes of nibbles; `x = d·q + m`.
    Q4_1,
}

impl PackedFormat {
    /// `(elements per block, bytes per block)`.
    pub fn block_layout(self) -> (usize, usize) {
        match self {
            PackedFormat::F16 | PackedFormat::BF16 => (1, 2),
            PackedFormat::Q8_0 => (decode::QK, 34),
            PackedFormat::Q4_0 => (decode::QK, 18),
            PackedFormat::Q4_1 => (decode::QK, 20),
        }
    }
}

impl fmt::Display for PackedFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

/// A matrix `[rows, cols]` in a packed storage format, widened on demand.
///
/// ```
/// # fn main() -> spry::Result<()> {
/// use spry::packed::{PackedFormat, PackedMatrix};
/// // one Q8_0 row: scale 0.5 (f16 0x3800), q = 0, 1, .., 31
/// let mut bytes = vec![0x00, 0x38];
/// bytes.extend((0..32).map(|q| q as u8));
/// let m = PackedMatrix::new(PackedFormat::Q8_0, 1, 32, bytes)?;
/// let mut row = vec![0.0f32; 32];
/// m.decode_rows(0, &mut row);
/// assert_eq!(row[3], 1.5);
/// # Ok(()) }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct PackedMatrix {
    format: PackedFormat,
    rows: usize,
    cols: usize,
    bytes: Vec<u8>,
}

impl fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PackedMatrix")
            .field("format", &self.format)
            .field("shape", &[self.rows, self.cols])
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl PackedMatrix {
    /// Wraps the stored bytes of a `[rows, cols]` matrix.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `cols` is not a multiple of the format's block size or the
    /// byte count is not `rows · cols / block · block_bytes`.
    pub fn new(format: PackedFormat, rows: usize, cols: usize, bytes: Vec<u8>) -> Result<Self> {
        const OP: &str = "PackedMatrix::new";
        let (block, block_bytes) = format.block_layout();
        if !cols.is_multiple_of(block) {
            return Err(Error::invalid(
                OP,
                format!("{format}: row length {cols} is not a multiple of the block size {block}"),
            ));
        }
        let want = rows
            .checked_mul(cols / block)
            .and_then(|b| b.checked_mul(block_bytes));
        if want != Some(bytes.len()) {
            return Err(Error::invalid(
                OP,
                format!(
                    "{format} [{rows}, {cols}] needs {want:?} bytes, got {}",
                    bytes.len()
                ),
            ));
        }
        Ok(PackedMatrix {
            format,
            rows,
            cols,
            bytes,
        })
    }

    /// The storage format.
    pub fn format(&self) -> PackedFormat {
        self.format
    }

    /// Number of rows (output features of a linear weight).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (input features of a linear weight).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `(rows, cols)`.
    pub fn dim(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Bytes of one stored row.
    pub fn row_bytes(&self) -> usize {
        let (block, block_bytes) = self.format.block_layout();
        self.cols / block * block_bytes
    }

    /// The stored bytes, row-major.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Widens rows `start..start + n` into `out`, `n = out.len() / cols`, row-major: exactly the
    /// values the GGUF reader's `GgufFile::tensor_f32` gives (the same block decoders), widened
    /// to `F`.
    ///
    /// # Shapes
    /// - `out`: `n · cols` values
    ///
    /// # Panics
    /// If `out.len()` is not a multiple of `cols` or the rows run past the end (callers slice
    /// tiles inside the matrix).
    pub fn decode_rows<F: Float>(&self, start: usize, out: &mut [F]) {
        let n = out.len().checked_div(self.cols).unwrap_or(0);
        assert!(
            n * self.cols == out.len() && start + n <= self.rows,
            "decode_rows: rows {start}..{} of {} (buffer {} for {} columns)",
            start + n,
            self.rows,
            out.len(),
            self.cols
        );
        let rb = self.row_bytes();
        let data = &self.bytes[start * rb..(start + n) * rb];
        match self.format {
            PackedFormat::F16 => decode::f16_into(data, out),
            PackedFormat::BF16 => decode::bf16_into(data, out),
            PackedFormat::Q8_0 => decode::q8_0_into(data, out),
            PackedFormat::Q4_0 => decode::q4_0_into(data, out),
            PackedFormat::Q4_1 => decode::q4_1_into(data, out),
        }
    }

    /// The whole matrix widened to `F` (for tests, and for merging an adapter into it).
    ///
    /// # Shapes
    /// - output: `[rows, cols]`
    pub fn to_dense<F: Float>(&self) -> Array2<F> {
        let mut out = Array2::zeros((self.rows, self.cols));
        self.decode_rows(0, out.as_slice_mut().expect("standard layout"));
        out
    }

    /// A matrix whose row `i` is row `order[i]` of this one (whole rows of blocks are copied).
    ///
    /// # Panics
    /// If an index in `order` is not below [`PackedMatrix::rows`].
    pub fn select_rows(&self, order: &[usize]) -> PackedMatrix {
        let rb = self.row_bytes();
        let mut bytes = Vec::with_capacity(order.len() * rb);
        for &r in order {
            bytes.extend_from_slice(&self.bytes[r * rb..(r + 1) * rb]);
        }
        PackedMatrix {
            format: self.format,
            rows: order.len(),
            cols: self.cols,
            bytes,
        }
    }

    /// The row-major index of the first NaN or ±∞ value, if any (one widening pass, a row at a
    /// time).
    pub fn first_non_finite(&self) -> Option<usize> {
        if self.cols == 0 {
            // no element, however many (empty) rows
            return None;
        }
        let mut row = vec![0.0f32; self.cols];
        for r in 0..self.rows {
            self.decode_rows(r, &mut row);
            if let Some(c) = row.iter().position(|x| !x.is_finite()) {
                return Some(r * self.cols + c);
            }
        }
        None
    }
}
