//! A streaming GGUF v3 writer: [`GgufWriter`] holds the metadata and the tensor infos (a few
//! kilobytes for a 7B model), computes every tensor's offset, and writes header, infos, padding
//! and then each tensor's data, asked of a callback one tensor at a time, so a multi-gigabyte
//! file never sits in memory.
//!
//! The layout is the one [`GgufFile`](super::GgufFile) checks: each tensor at the aligned end of
//! the one before, zero padding in between, the file ending where the last tensor's data ends.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::DEFAULT_ALIGNMENT;
use super::tensor::GgmlType;
use super::value::{GgufArray, GgufValue};
use crate::{Error, Result};

/// The GGUF version [`GgufWriter`] writes.
pub const GGUF_WRITE_VERSION: u32 = 3;

/// One tensor to write: its name, row-major shape (`[out, in]` for a linear weight, as
/// [`GgufTensorInfo::shape`](super::GgufTensorInfo::shape) reads it back) and type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufTensorSpec {
    /// The tensor name (`blk.0.attn_q.weight`, ...).
    pub name: String,
    /// Row-major shape (the file stores it reversed, innermost first).
    pub shape: Vec<usize>,
    /// The data type.
    pub ggml_type: GgmlType,
}

impl GgufTensorSpec {
    /// A tensor spec.
    pub fn new(name: impl Into<String>, shape: &[usize], ggml_type: GgmlType) -> Self {
        GgufTensorSpec {
            name: name.into(),
            shape: shape.to_vec(),
            ggml_type,
        }
    }

    /// The byte size of the tensor's data, checked as the reader checks it: 1 to 4 dimensions,
    /// none of size 0, a type of known layout, a row length (the last dimension) that is a
    /// multiple of the type's block size, no overflow.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] saying which check failed.
    pub fn n_bytes(&self) -> Result<usize> {
        let bad = |msg: String| Error::invalid("GgufTensorSpec::n_bytes", msg);
        let name = &self.name;
        if self.shape.is_empty() || self.shape.len() > 4 {
            return Err(bad(format!(
                "tensor `{name}`: {} dimensions, 1 to 4 allowed",
                self.shape.len()
            )));
        }
        if self.shape.contains(&0) {
            return Err(bad(format!(
                "tensor `{name}`: shape {:?} has an empty dimension",
                self.shape
            )));
        }
        let (block, block_bytes) = self.ggml_type.block_layout().ok_or_else(|| {
            bad(format!(
                "tensor `{name}`: {} has no known layout",
                self.ggml_type
            ))
        })?;
        let row = self.shape[self.shape.len() - 1];
        if !row.is_multiple_of(block) {
            return Err(bad(format!(
                "tensor `{name}` ({}): row length {row} is not a multiple of the block size \
                 {block}",
                self.ggml_type
            )));
        }
        self.shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .and_then(|n| (n / block).checked_mul(block_bytes))
            .ok_or_else(|| bad(format!("tensor `{name}`: shape {:?} overflows", self.shape)))
    }
}

/// A GGUF v3 file being described: metadata and tensor infos, checked as they are added; the
/// data is supplied tensor by tensor when the file is written ([`GgufWriter::write_file`],
/// [`GgufWriter::write_to`]).
///
/// ```no_run
/// # fn main() -> spry::Result<()> {
/// use spry::io::{GgmlType, GgufTensorSpec, GgufValue, GgufWriter};
/// let mut w = GgufWriter::new();
/// w.metadata("general.architecture", GgufValue::String("llama".into()))?;
/// w.tensor(GgufTensorSpec::new("output_norm.weight", &[64], GgmlType::F32))?;
/// w.write_file("tiny.gguf", |_, spec, out| {
///     let n = spec.n_bytes().map_err(std::io::Error::other)?;
///     out.write_all(&1f32.to_le_bytes().repeat(n / 4))
/// })?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct GgufWriter {
    alignment: usize,
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<GgufTensorSpec>,
    /// Each tensor's offset from the data start, and its byte size.
    placed: Vec<(u64, usize)>,
    /// Where the last tensor's data ends (relative to the data start).
    data_end: u64,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    /// An empty file with the default alignment ([`DEFAULT_ALIGNMENT`], 32 bytes).
    pub fn new() -> Self {
        GgufWriter {
            alignment: DEFAULT_ALIGNMENT,
            metadata: Vec::new(),
            tensors: Vec::new(),
            placed: Vec::new(),
            data_end: 0,
        }
    }

    /// An empty file whose tensors are aligned to `alignment` bytes (written as
    /// `general.alignment` when it is not the default).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] unless `alignment` is a power of two that fits in a `u32`.
    pub fn with_alignment(alignment: usize) -> Result<Self> {
        if !alignment.is_power_of_two() || u32::try_from(alignment).is_err() {
            return Err(Error::invalid(
                "GgufWriter::with_alignment",
                format!("alignment {alignment} is not a u32 power of two"),
            ));
        }
        let mut w = Self::new();
        w.alignment = alignment;
        if alignment != DEFAULT_ALIGNMENT {
            w.metadata.push((
                "general.alignment".to_owned(),
                GgufValue::U32(alignment as u32),
            ));
        }
        Ok(w)
    }

    /// The data alignment.
    pub fn alignment(&self) -> usize {
        self.alignment
    }

    /// Adds a metadata key (written in the order added).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a key already added, or `general.alignment` (set it with
    /// [`GgufWriter::with_alignment`]).
    pub fn metadata(&mut self, key: impl Into<String>, value: GgufValue) -> Result<&mut Self> {
        let key = key.into();
        if key == "general.alignment" {
            return Err(Error::invalid(
                "GgufWriter::metadata",
                "set general.alignment with GgufWriter::with_alignment",
            ));
        }
        if self.metadata.iter().any(|(k, _)| *k == key) {
            return Err(Error::invalid(
                "GgufWriter::metadata",
                format!("duplicate metadata key `{key}`"),
            ));
        }
        self.metadata.push((key, value));
        Ok(self)
    }

    /// Adds a tensor (its data comes after the previous tensor's, at the next aligned offset).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a duplicate name or a spec [`GgufTensorSpec::n_bytes`]
    /// refuses.
    pub fn tensor(&mut self, spec: GgufTensorSpec) -> Result<&mut Self> {
        let n = spec.n_bytes()?;
        if self.tensors.iter().any(|t| t.name == spec.name) {
            return Err(Error::invalid(
                "GgufWriter::tensor",
                format!("duplicate tensor `{}`", spec.name),
            ));
        }
        let offset = self.data_end.next_multiple_of(self.alignment as u64);
        self.placed.push((offset, n));
        self.data_end = offset + n as u64;
        self.tensors.push(spec);
        Ok(self)
    }

    /// The tensors, in file order.
    pub fn tensors(&self) -> &[GgufTensorSpec] {
        &self.tensors
    }

    /// Header, metadata and tensor infos, padded to the alignment: every byte before the data.
    pub fn header_bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        put_u32(&mut out, GGUF_WRITE_VERSION);
        put_u64(&mut out, self.tensors.len() as u64);
        put_u64(&mut out, self.metadata.len() as u64);
        for (k, v) in &self.metadata {
            put_str(&mut out, k);
            put_u32(&mut out, v.value_type().tag());
            put_value(&mut out, v);
        }
        for (t, &(offset, _)) in self.tensors.iter().zip(&self.placed) {
            put_str(&mut out, &t.name);
            put_u32(&mut out, t.shape.len() as u32);
            for &d in t.shape.iter().rev() {
                put_u64(&mut out, d as u64);
            }
            put_u32(&mut out, t.ggml_type.tag());
            put_u64(&mut out, offset);
        }
        out.resize(out.len().next_multiple_of(self.alignment), 0);
        out
    }

    /// The size of the whole file in bytes (it ends where the last tensor's data ends).
    pub fn file_len(&self) -> u64 {
        self.header_bytes().len() as u64 + self.data_end
    }

    /// Writes the file to `path`: into a hidden temporary file beside it (`.<name>.tmp`),
    /// buffered, then renamed over `path`, so a crash never leaves half a file under `path`.
    /// `data(i, spec, out)` must write exactly the `spec.n_bytes()` bytes of tensor `i`. Returns
    /// the file's length.
    ///
    /// # Errors
    /// As [`GgufWriter::write_to`]; [`Error::Io`] if the file cannot be created or renamed.
    pub fn write_file<D>(&self, path: impl AsRef<Path>, data: D) -> Result<u64>
    where
        D: FnMut(usize, &GgufTensorSpec, &mut dyn Write) -> std::io::Result<()>,
    {
        let path = path.as_ref();
        let tmp = crate::io::temp_path(path);
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| Error::Io { path: p, source }
        };
        let file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        let res = self.write_to(&tmp, &mut out, data).and_then(|n| {
            let file = out.into_inner().map_err(|e| io(&tmp)(e.into_error()))?;
            file.sync_all().map_err(io(&tmp))?;
            Ok(n)
        });
        match res {
            Ok(n) => {
                std::fs::rename(&tmp, path).map_err(io(path))?;
                Ok(n)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Streams the file to `out`: the header ([`GgufWriter::header_bytes`]), then each
    /// tensor's data as `data(i, spec, out)` writes it, with zero padding before it to its
    /// aligned offset. `data` must write exactly `spec.n_bytes()` bytes. `label` names the
    /// destination in errors. Returns the number of bytes written.
    ///
    /// # Errors
    /// - [`Error::Io`] (labelled `label`) if writing fails or `data` returns an error;
    /// - [`Error::InvalidArgument`] if `data` writes more or fewer bytes than the tensor holds.
    pub fn write_to<W, D>(&self, label: impl Into<PathBuf>, out: &mut W, mut data: D) -> Result<u64>
    where
        W: Write,
        D: FnMut(usize, &GgufTensorSpec, &mut dyn Write) -> std::io::Result<()>,
    {
        let label = label.into();
        let io = |source| Error::Io {
            path: label.clone(),
            source,
        };
        let header = self.header_bytes();
        out.write_all(&header).map_err(io)?;
        let mut at = 0u64;
        let zeros = [0u8; 64];
        for (i, (spec, &(offset, n))) in self.tensors.iter().zip(&self.placed).enumerate() {
            let mut pad = offset - at;
            while pad > 0 {
                let k = pad.min(zeros.len() as u64) as usize;
                out.write_all(&zeros[..k]).map_err(io)?;
                pad -= k as u64;
            }
            let mut counting = Counting {
                inner: &mut *out,
                written: 0,
            };
            data(i, spec, &mut counting).map_err(io)?;
            if counting.written != n as u64 {
                return Err(Error::invalid(
                    "GgufWriter::write_to",
                    format!(
                        "tensor `{}` ({}, shape {:?}): {} bytes written, {n} expected",
                        spec.name, spec.ggml_type, spec.shape, counting.written
                    ),
                ));
            }
            at = offset + n as u64;
        }
        out.flush().map_err(io)?;
        Ok(header.len() as u64 + at)
    }
}

/// A writer that counts the bytes passed through.
struct Counting<'a, W: Write> {
    inner: &'a mut W,
    written: u64,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// A value's payload (without its type tag).
fn put_value(out: &mut Vec<u8>, v: &GgufValue) {
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

/// An array: element type, count, elements.
fn put_array(out: &mut Vec<u8>, a: &GgufArray) {
    fn each<T: Clone>(out: &mut Vec<u8>, v: &[T], f: impl Fn(T) -> GgufValue) {
        for x in v {
            put_value(out, &f(x.clone()));
        }
    }
    put_u32(out, a.element_type().tag());
    put_u64(out, a.len() as u64);
    match a {
        GgufArray::U8(v) => out.extend_from_slice(v),
        GgufArray::I8(v) => each(out, v, GgufValue::I8),
        GgufArray::U16(v) => each(out, v, GgufValue::U16),
        GgufArray::I16(v) => each(out, v, GgufValue::I16),
        GgufArray::U32(v) => each(out, v, GgufValue::U32),
        GgufArray::I32(v) => each(out, v, GgufValue::I32),
        GgufArray::F32(v) => each(out, v, GgufValue::F32),
        GgufArray::Bool(v) => each(out, v, GgufValue::Bool),
        GgufArray::String(v) => v.iter().for_each(|s| put_str(out, s)),
        GgufArray::Array(v) => v.iter().for_each(|inner| put_array(out, inner)),
        GgufArray::U64(v) => each(out, v, GgufValue::U64),
        GgufArray::I64(v) => each(out, v, GgufValue::I64),
        GgufArray::F64(v) => each(out, v, GgufValue::F64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::GgufFile;

    /// Deterministic pseudo-random bytes.
    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 24) as u8
            })
            .collect()
    }

    /// Blocks of `block_bytes` with a finite f16 scale (0.01) in front of random payloads.
    fn blocks(n_blocks: usize, block_bytes: usize, seed: u64) -> Vec<u8> {
        let mut b = bytes(n_blocks * block_bytes, seed);
        let d = half::f16::from_f32(0.01).to_bits().to_le_bytes();
        for blk in b.chunks_exact_mut(block_bytes) {
            blk[..2].copy_from_slice(&d);
        }
        b
    }

    #[test]
    fn round_trips_through_the_reader() {
        let f32s: Vec<f32> = (0..96).map(|i| i as f32 * 0.25 - 7.0).collect();
        let f32_bytes: Vec<u8> = f32s.iter().flat_map(|x| x.to_le_bytes()).collect();
        let q8 = blocks(3 * 64 / 32, 34, 1);
        let q4 = blocks(5 * 96 / 32, 18, 2);
        let data = [f32_bytes, q8, q4];
        for alignment in [32usize, 64] {
            let mut w = GgufWriter::with_alignment(alignment).unwrap();
            w.metadata("general.architecture", GgufValue::String("llama".into()))
                .unwrap()
                .metadata("llama.block_count", GgufValue::U32(3))
                .unwrap()
                .metadata("x.f64", GgufValue::F64(-1.5))
                .unwrap()
                .metadata("x.bool", GgufValue::Bool(true))
                .unwrap()
                .metadata(
                    "tokenizer.ggml.tokens",
                    GgufValue::Array(GgufArray::String(vec!["a".into(), "bc".into()])),
                )
                .unwrap()
                .metadata(
                    "x.nested",
                    GgufValue::Array(GgufArray::Array(vec![
                        GgufArray::U8(vec![1, 2, 3]),
                        GgufArray::I32(vec![-4]),
                    ])),
                )
                .unwrap();
            // the f32 tensor's 384 bytes leave the next offset aligned; the Q8_0 tensor's 204
            // bytes do not, so the Q4_0 tensor follows padding
            w.tensor(GgufTensorSpec::new("f", &[96], GgmlType::F32))
                .unwrap()
                .tensor(GgufTensorSpec::new("q8", &[3, 64], GgmlType::Q8_0))
                .unwrap()
                .tensor(GgufTensorSpec::new("q4", &[5, 96], GgmlType::Q4_0))
                .unwrap();
            let mut out = Vec::new();
            let n = w
                .write_to("mem", &mut out, |i, _, o| o.write_all(&data[i]))
                .unwrap();
            assert_eq!(n, out.len() as u64);
            assert_eq!(n, w.file_len());
            let dir = std::env::temp_dir().join(format!("spry-gguf-write-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("t{alignment}.gguf"));
            let n_file = w
                .write_file(&path, |i, _, o| o.write_all(&data[i]))
                .unwrap();
            assert_eq!(n_file, n);
            assert_eq!(std::fs::read(&path).unwrap(), out);
            let g = GgufFile::open(&path).unwrap();
            std::fs::remove_dir_all(&dir).unwrap();
            assert_eq!(g.version(), 3);
            assert_eq!(g.alignment(), alignment);
            assert_eq!(
                g.metadata("general.architecture").and_then(|v| v.as_str()),
                Some("llama")
            );
            assert_eq!(g.metadata("llama.block_count"), Some(&GgufValue::U32(3)));
            assert_eq!(g.metadata("x.f64"), Some(&GgufValue::F64(-1.5)));
            assert_eq!(g.metadata("x.bool"), Some(&GgufValue::Bool(true)));
            assert_eq!(
                g.metadata("x.nested"),
                Some(&GgufValue::Array(GgufArray::Array(vec![
                    GgufArray::U8(vec![1, 2, 3]),
                    GgufArray::I32(vec![-4]),
                ])))
            );
            assert_eq!(
                g.metadata("tokenizer.ggml.tokens")
                    .and_then(|v| v.as_string_array()),
                Some(&["a".to_owned(), "bc".to_owned()][..])
            );
            let shapes: Vec<_> = g
                .tensor_infos()
                .iter()
                .map(|t| t.shape().to_vec())
                .collect();
            assert_eq!(shapes, [vec![96], vec![3, 64], vec![5, 96]]);
            let f = g.tensor_f32("f").unwrap();
            assert!(f.iter().zip(&f32s).all(|(a, b)| a.to_bits() == b.to_bits()));
            assert_eq!(g.tensor_packed("q8").unwrap().as_bytes(), &data[1][..]);
            assert_eq!(g.tensor_packed("q4").unwrap().as_bytes(), &data[2][..]);
        }
    }

    #[test]
    fn refuses_bad_specs_and_short_data() {
        let mut w = GgufWriter::new();
        assert!(
            w.tensor(GgufTensorSpec::new("x", &[2, 33], GgmlType::Q8_0))
                .is_err()
        );
        assert!(
            w.tensor(GgufTensorSpec::new("x", &[0, 32], GgmlType::F32))
                .is_err()
        );
        assert!(
            w.tensor(GgufTensorSpec::new("x", &[1, 1, 1, 1, 1], GgmlType::F32))
                .is_err()
        );
        assert!(
            w.tensor(GgufTensorSpec::new("x", &[32], GgmlType::Other(99)))
                .is_err()
        );
        assert!(w.metadata("general.alignment", GgufValue::U32(64)).is_err());
        assert!(GgufWriter::with_alignment(48).is_err());
        w.tensor(GgufTensorSpec::new("x", &[4], GgmlType::F32))
            .unwrap();
        assert!(
            w.tensor(GgufTensorSpec::new("x", &[4], GgmlType::F32))
                .is_err()
        );
        w.metadata("k", GgufValue::U8(1)).unwrap();
        assert!(w.metadata("k", GgufValue::U8(2)).is_err());
        let mut out = Vec::new();
        let e = w.write_to("mem", &mut out, |_, _, o| o.write_all(&[0; 15]));
        assert!(matches!(e, Err(Error::InvalidArgument { .. })));
    }
}
