//! [`PackedMatrix`]: a frozen matrix kept in its stored format (f16, bf16, or GGUF's Q8_0, Q4_0,
//! Q4_1 blocks) and widened to f32/f64 a few rows at a time, so the full float matrix never
//! exists.
//!
//! The layout is the files' own: row-major `[rows, cols]`, each row `cols / block` consecutive
//! blocks (blocks run along `cols`, the input dimension of a linear weight `[out, in]`), so rows
//! are independent and any range of stored rows is one contiguous byte range. Widening rows
//! `r0..r1` costs `O((r1 − r0)·cols)` and allocates nothing ([`PackedMatrix::decode_rows`]).
//!
//! The bytes are owned, or shared with a read-only memory map of the checkpoint file (the
//! matrices of a GGUF file opened with
//! [`GgufFile::open_mapped`](crate::io::GgufFile::open_mapped): page cache, not anonymous
//! memory). A matrix may carry a row order (logical row `i` is stored row `order[i]`), so the
//! GGUF reader's q/k un-permutation reorders rows without copying them.
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
use std::ops::{Deref, Range};
use std::sync::Arc;

use memmap2::Mmap;
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
/// Its bytes are either owned ([`PackedMatrix::new`]) or a range of a read-only memory map of
/// the checkpoint it came from (a matrix taken from a GGUF file opened with
/// [`GgufFile::open_mapped`](crate::io::GgufFile::open_mapped); [`PackedMatrix::is_mapped`]),
/// which costs page cache rather than anonymous memory and is shared by every clone (cloning a
/// mapped matrix copies no weights). A mapped matrix is subject to the map's contract: the file
/// must not be modified or truncated while the matrix is alive (a truncated file raises `SIGBUS`
/// on the next read; see `GgufFile::open_mapped`).
///
/// A matrix may also carry a row order ([`PackedMatrix::permute_rows`]): logical row `i` is
/// stored row [`stored_row(i)`](PackedMatrix::stored_row), so reordering rows (the q/k RoPE
/// un-permutation of a GGUF file) copies no bytes. Every method reads rows in logical order;
/// only [`PackedMatrix::as_bytes`] exposes the stored order. Equality compares the logical
/// contents (format, shape and the bytes of each logical row), not how they are stored.
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
#[derive(Clone)]
pub struct PackedMatrix {
    format: PackedFormat,
    rows: usize,
    cols: usize,
    bytes: Storage,
    /// The stored row of each logical row; `None` when logical row `i` is stored row `i`.
    order: Option<Arc<[usize]>>,
}

/// The bytes of a [`PackedMatrix`]: owned, or a range of a shared memory map.
#[derive(Clone)]
enum Storage {
    Owned(Vec<u8>),
    Mapped { map: Arc<Mmap>, range: Range<usize> },
}

impl Deref for Storage {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Storage::Owned(v) => v,
            Storage::Mapped { map, range } => &map[range.clone()],
        }
    }
}

impl fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PackedMatrix")
            .field("format", &self.format)
            .field("shape", &[self.rows, self.cols])
            .field("bytes", &self.bytes.len())
            .field("mapped", &self.is_mapped())
            .field("reordered", &self.order.is_some())
            .finish()
    }
}

impl PartialEq for PackedMatrix {
    fn eq(&self, other: &Self) -> bool {
        if self.format != other.format || self.dim() != other.dim() {
            return false;
        }
        if self.order.is_none() && other.order.is_none() {
            return *self.bytes == *other.bytes;
        }
        (0..self.rows).all(|r| self.row(r) == other.row(r))
    }
}

impl Eq for PackedMatrix {}

impl PackedMatrix {
    /// Wraps the stored bytes of a `[rows, cols]` matrix.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `cols` is not a multiple of the format's block size or the
    /// byte count is not `rows · cols / block · block_bytes`.
    pub fn new(format: PackedFormat, rows: usize, cols: usize, bytes: Vec<u8>) -> Result<Self> {
        check_layout(format, rows, cols, bytes.len())?;
        Ok(PackedMatrix {
            format,
            rows,
            cols,
            bytes: Storage::Owned(bytes),
            order: None,
        })
    }

    /// A `[rows, cols]` matrix stored in bytes `range` of `map`, which it shares (no copy).
    ///
    /// # Errors
    /// As [`PackedMatrix::new`] for the range's length; [`Error::InvalidArgument`] if the range
    /// does not lie inside the map.
    pub(crate) fn mapped(
        format: PackedFormat,
        rows: usize,
        cols: usize,
        map: Arc<Mmap>,
        range: Range<usize>,
    ) -> Result<Self> {
        if range.start > range.end || range.end > map.len() {
            return Err(Error::invalid(
                "PackedMatrix::mapped",
                format!("bytes {range:?} outside a map of {} bytes", map.len()),
            ));
        }
        check_layout(format, rows, cols, range.len())?;
        Ok(PackedMatrix {
            format,
            rows,
            cols,
            bytes: Storage::Mapped { map, range },
            order: None,
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

    /// Whether the bytes are a range of a memory-mapped file (page cache, shared by clones)
    /// rather than owned (anonymous memory).
    pub fn is_mapped(&self) -> bool {
        matches!(self.bytes, Storage::Mapped { .. })
    }

    /// The stored bytes, `rows · row_bytes()` of them, in **stored** row order: logical row `i`
    /// is stored row [`stored_row(i)`](PackedMatrix::stored_row), which is `i` unless the matrix
    /// was reordered with [`PackedMatrix::permute_rows`] ([`PackedMatrix::row_order`]). For the
    /// bytes in logical order use [`PackedMatrix::select_rows`] over `0..rows` or
    /// [`PackedMatrix::row`].
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The stored row of each logical row, or `None` when they coincide.
    pub fn row_order(&self) -> Option<&[usize]> {
        self.order.as_deref()
    }

    /// The stored row that holds logical row `r`.
    ///
    /// # Panics
    /// If `r` is not below [`PackedMatrix::rows`].
    pub fn stored_row(&self, r: usize) -> usize {
        assert!(r < self.rows, "row {r} of {}", self.rows);
        self.order.as_ref().map_or(r, |o| o[r])
    }

    /// The stored bytes of logical row `r` (`row_bytes()` of them).
    ///
    /// # Panics
    /// If `r` is not below [`PackedMatrix::rows`].
    pub fn row(&self, r: usize) -> &[u8] {
        let rb = self.row_bytes();
        let s = self.stored_row(r);
        &self.bytes[s * rb..(s + 1) * rb]
    }

    /// Widens rows `start..start + n` into `out`, `n = out.len() / cols`, row-major: exactly the
    /// values the GGUF reader's `GgufFile::tensor_f32` gives (the same block decoders), widened
    /// to `F`. Logical rows stored one after another (all of them, without a row order) are
    /// decoded in one call.
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
        let Some(order) = &self.order else {
            self.decode_stored(&self.bytes[start * rb..(start + n) * rb], out);
            return;
        };
        // runs of consecutive stored rows, one decoder call each
        let order = &order[start..start + n];
        let mut i = 0;
        while i < n {
            let s = order[i];
            let mut j = i + 1;
            while j < n && order[j] == s + (j - i) {
                j += 1;
            }
            self.decode_stored(
                &self.bytes[s * rb..(s + j - i) * rb],
                &mut out[i * self.cols..j * self.cols],
            );
            i = j;
        }
    }

    /// Decodes whole stored rows `data` into `out`.
    fn decode_stored<F: Float>(&self, data: &[u8], out: &mut [F]) {
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

    /// A matrix whose row `i` is row `order[i]` of this one, with owned bytes: whole rows of
    /// blocks are copied, in logical order (the result has no row order). Any row may appear
    /// any number of times. For a reordering without a copy use [`PackedMatrix::permute_rows`].
    ///
    /// # Panics
    /// If an index in `order` is not below [`PackedMatrix::rows`].
    pub fn select_rows(&self, order: &[usize]) -> PackedMatrix {
        let mut bytes = Vec::with_capacity(order.len() * self.row_bytes());
        for &r in order {
            bytes.extend_from_slice(self.row(r));
        }
        PackedMatrix {
            format: self.format,
            rows: order.len(),
            cols: self.cols,
            bytes: Storage::Owned(bytes),
            order: None,
        }
    }

    /// The same matrix with its rows reordered, sharing the bytes (no copy): row `i` of the
    /// result is row `order[i]` of this one. The result decodes equal to
    /// [`select_rows(order)`](PackedMatrix::select_rows); it carries a row order of `rows`
    /// indices (none if `order` is the identity).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `order` is not a permutation of `0..rows`.
    pub fn permute_rows(&self, order: &[usize]) -> Result<PackedMatrix> {
        const OP: &str = "PackedMatrix::permute_rows";
        if order.len() != self.rows {
            return Err(Error::invalid(
                OP,
                format!("{} indices for {} rows", order.len(), self.rows),
            ));
        }
        let mut seen = vec![false; self.rows];
        for &r in order {
            if r >= self.rows || std::mem::replace(&mut seen[r], true) {
                return Err(Error::invalid(
                    OP,
                    format!("row {r} is out of range or repeated: not a permutation"),
                ));
            }
        }
        let stored: Vec<usize> = order.iter().map(|&r| self.stored_row(r)).collect();
        let identity = stored.iter().enumerate().all(|(i, &s)| i == s);
        Ok(PackedMatrix {
            order: (!identity).then(|| stored.into()),
            ..self.clone()
        })
    }

    /// The row-major index (in logical order) of the first NaN or ±∞ value, if any (one
    /// widening pass, a row at a time).
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

/// Checks that `n_bytes` bytes hold a `[rows, cols]` matrix of `format`.
fn check_layout(format: PackedFormat, rows: usize, cols: usize, n_bytes: usize) -> Result<()> {
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
    if want != Some(n_bytes) {
        return Err(Error::invalid(
            OP,
            format!("{format} [{rows}, {cols}] needs {want:?} bytes, got {n_bytes}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `[rows, 2]` F16 matrix whose row `r` holds `r` and `-r`.
    fn numbered(rows: usize) -> PackedMatrix {
        let bytes = (0..rows)
            .flat_map(|r| [r as f32, -(r as f32)])
            .flat_map(|x| half::f16::from_f32(x).to_le_bytes())
            .collect();
        PackedMatrix::new(PackedFormat::F16, rows, 2, bytes).unwrap()
    }

    fn firsts(m: &PackedMatrix) -> Vec<f32> {
        m.to_dense::<f32>().column(0).to_vec()
    }

    #[test]
    fn permuted_rows_share_the_bytes_and_read_in_the_new_order() {
        let m = numbered(5);
        let order = [3, 4, 0, 2, 1];
        let p = m.permute_rows(&order).unwrap();
        assert_eq!(p.as_bytes(), m.as_bytes());
        assert_eq!(p.row_order(), Some(&order[..]));
        assert_eq!(firsts(&p), [3.0, 4.0, 0.0, 2.0, 1.0]);
        assert_eq!(p, m.select_rows(&order));
        assert_ne!(p, m);
        assert_eq!(p.row(1), m.row(4));
        // decoding a tile in the middle: runs 4 | 0 and single rows alike
        let mut tile = [0.0f32; 6];
        p.decode_rows(1, &mut tile);
        assert_eq!(tile, [4.0, -4.0, 0.0, -0.0, 2.0, -2.0]);
        // a permutation of a permutation composes; the inverse gives back no row order
        let inverse = [2, 4, 3, 0, 1];
        let back = p.permute_rows(&inverse).unwrap();
        assert_eq!(back.row_order(), None);
        assert_eq!(back, m);
        let twice = p.permute_rows(&order).unwrap();
        assert_eq!(twice, m.select_rows(&order).select_rows(&order));
        // selection copies in logical order, honouring the row order
        let sel = p.select_rows(&[1, 1, 0]);
        assert_eq!(sel.row_order(), None);
        assert_eq!(firsts(&sel), [4.0, 4.0, 3.0]);
        assert_eq!(p.stored_row(0), 3);
    }

    #[test]
    fn only_permutations_reorder_rows() {
        let m = numbered(3);
        for bad in [&[0, 1][..], &[0, 1, 1], &[0, 1, 3], &[0, 1, 2, 0]] {
            assert!(
                matches!(m.permute_rows(bad), Err(Error::InvalidArgument { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(m.permute_rows(&[0, 1, 2]).unwrap().row_order(), None);
    }

    #[test]
    fn first_non_finite_counts_logical_positions() {
        let mut bytes = numbered(3).as_bytes().to_vec();
        // stored row 0, column 1 becomes +inf
        bytes[2..4].copy_from_slice(&half::f16::INFINITY.to_le_bytes());
        let m = PackedMatrix::new(PackedFormat::F16, 3, 2, bytes).unwrap();
        assert_eq!(m.first_non_finite(), Some(1));
        let p = m.permute_rows(&[2, 1, 0]).unwrap();
        assert_eq!(p.first_non_finite(), Some(2 * 2 + 1));
    }

    #[test]
    fn a_mapped_matrix_equals_its_owned_copy_and_clones_share_the_map() {
        let m = numbered(4);
        let path = std::env::temp_dir().join(format!("spry_packed_{}.bin", std::process::id()));
        let mut file = vec![7u8; 3];
        file.extend_from_slice(m.as_bytes());
        std::fs::write(&path, &file).unwrap();
        let map = crate::mapped::map_file(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let mapped =
            PackedMatrix::mapped(PackedFormat::F16, 4, 2, map.clone(), 3..file.len()).unwrap();
        assert!(mapped.is_mapped() && !m.is_mapped());
        assert_eq!(mapped, m);
        let clone = mapped.clone();
        assert_eq!(Arc::strong_count(&map), 3);
        assert_eq!(clone.as_bytes().as_ptr(), mapped.as_bytes().as_ptr());
        let p = clone.permute_rows(&[1, 0, 3, 2]).unwrap();
        assert!(p.is_mapped());
        assert_eq!(p, m.select_rows(&[1, 0, 3, 2]));
        // a range outside the map or of the wrong length is refused
        for range in [0..file.len() + 1, 2..file.len()] {
            assert!(matches!(
                PackedMatrix::mapped(PackedFormat::F16, 4, 2, map.clone(), range),
                Err(Error::InvalidArgument { .. })
            ));
        }
    }
}
