//! [`GgufFile`]: opening and parsing a GGUF file (magic, version, metadata, alignment, tensor
//! infos) and checking that every tensor's data lies inside the file, plus the accessors of what
//! was parsed. Reading the tensors out is in `data.rs`.

use std::collections::HashMap;
use std::fmt;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use super::format_error;
use super::reader::Reader;
use super::tensor::{GgmlType, GgufTensorInfo};
use super::value::GgufValue;
use crate::{Error, Result};

const MAGIC: &[u8; 4] = b"GGUF";
/// `general.alignment` when the key is absent.
pub const DEFAULT_ALIGNMENT: usize = 32;
/// ggml's `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;

/// A parsed GGUF file: header, metadata, tensor infos, and the raw bytes to dequantise from.
///
/// [`GgufFile::open_mapped`] maps the file read-only: nothing is copied at open, the bytes are
/// page cache (file-backed, reclaimable) rather than anonymous memory, and the packed matrices
/// taken from it ([`GgufFile::tensor_packed`]) are ranges of the same map, so a model's frozen
/// weights cost no second copy. The file must not be modified or truncated while the map is
/// alive (see [`GgufFile::open_mapped`]). [`GgufFile::open`] reads the whole file into memory
/// instead, and [`GgufFile::from_bytes`] parses bytes already there.
/// Tensors are dequantised on demand by [`GgufFile::tensor_f32`], or all at once by
/// [`GgufFile::load_all`], or kept packed by [`GgufFile::tensor_packed`].
///
/// ```no_run
/// # fn main() -> spry::Result<()> {
/// use spry::io::{GgufFile, LlamaConfig, asset};
/// let gguf =
///     GgufFile::open_mapped(asset("SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf")?)?;
/// let config = LlamaConfig::from_gguf(&gguf)?;
/// let weights = gguf.load_all()?;
/// let emb = weights.get2("token_embd.weight", [config.vocab_size, config.hidden_size])?;
/// # Ok(()) }
/// ```
pub struct GgufFile {
    pub(super) path: PathBuf,
    /// The whole file, read or mapped.
    pub(super) bytes: FileBytes,
    version: u32,
    alignment: usize,
    pub(super) data_start: usize,
    metadata: Vec<(String, GgufValue)>,
    metadata_index: HashMap<String, usize>,
    pub(super) tensors: Vec<GgufTensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("bytes", &self.bytes.len())
            .field("mapped", &self.is_mapped())
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// The bytes of a [`GgufFile`]: read into memory, or a shared read-only map of the file.
pub(super) enum FileBytes {
    Owned(Vec<u8>),
    Mapped(Arc<Mmap>),
}

impl Deref for FileBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Owned(v) => v,
            FileBytes::Mapped(m) => m,
        }
    }
}

impl GgufFile {
    /// Reads and parses a GGUF file (tensor data is dequantised later, on demand).
    ///
    /// # Errors
    /// - [`Error::Io`] if the file cannot be read.
    /// - [`Error::Format`] on a bad magic, a version other than 2 or 3, a truncated header,
    ///   metadata or string, a count or length larger than the rest of the file, an unknown value
    ///   type, a non-UTF-8 string, a duplicate key or tensor name, an invalid `general.alignment`,
    ///   more than 4 dimensions, a dimension of size 0, an element count or byte size that
    ///   overflows, a row length (`ne[0]`) that is not a multiple of the type's block size, a
    ///   misaligned tensor offset, tensor data beyond the end of the file, tensors that do not
    ///   follow one another in file order each at the aligned end of the one before (overlapping
    ///   ranges, a changed type, shape or offset), or a file that does not end where the data
    ///   (or its padding) does.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(path, bytes)
    }

    /// Maps a GGUF file read-only and parses its header from the map, with every check of
    /// [`GgufFile::open`]; tensors are read from the map when they are taken, and packed ones
    /// ([`GgufFile::tensor_packed`]) stay in it ([`PackedMatrix::is_mapped`]). The file costs its
    /// page cache (file-backed, reclaimable, shared with other processes mapping it) instead of
    /// anonymous memory, and nothing holds the file and a copy of it at once.
    ///
    /// # Contract
    /// The file must not be modified or truncated while this `GgufFile` or any matrix taken from
    /// it is alive. A file that is truncated or malformed before it is opened gives the typed
    /// errors of [`GgufFile::open`]; a file truncated *after* it was mapped makes the process
    /// receive `SIGBUS` when a page past its new end is read, and one rewritten in place changes
    /// the weights under the model. Deleting the file, or replacing it by renaming a new one over
    /// it, is safe: the map keeps the old file.
    ///
    /// # Errors
    /// As [`GgufFile::open`] ([`Error::Io`] also if the file cannot be mapped, e.g. a
    /// directory).
    ///
    /// [`PackedMatrix::is_mapped`]: crate::packed::PackedMatrix::is_mapped
    pub fn open_mapped(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let map = crate::mapped::map_file(path)?;
        Self::parse(path.to_path_buf(), FileBytes::Mapped(map))
    }

    /// Parses GGUF bytes already in memory; `path` only labels the errors.
    ///
    /// # Errors
    /// As [`GgufFile::open`], without the I/O.
    pub fn from_bytes(path: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self> {
        Self::parse(path.into(), FileBytes::Owned(bytes))
    }

    /// Parses the header of `data` and checks the layout of its tensors.
    fn parse(path: PathBuf, data: FileBytes) -> Result<Self> {
        let bytes: &[u8] = &data;
        let mut r = Reader {
            buf: bytes,
            pos: 0,
            path: &path,
        };
        let magic = r.take(4, "magic")?;
        if magic != MAGIC {
            return Err(r.error(format!("bad magic {magic:02x?}, expected \"GGUF\"")));
        }
        let version = r.u32("version")?;
        if !(version == 2 || version == 3) {
            let hint = if version.swap_bytes() <= 3 {
                " (a big-endian file?)"
            } else {
                ""
            };
            return Err(r.error(format!(
                "unsupported version {version}{hint}: only GGUF v3 (and v2) are read"
            )));
        }
        // Minimal encodings: tensor info = name length + n_dims + type + offset; key/value =
        // key length + type + 1-byte value.
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.count(8 + 4 + 1, "metadata count")?;

        let mut metadata = Vec::with_capacity(n_kv);
        let mut metadata_index = HashMap::with_capacity(n_kv);
        for i in 0..n_kv {
            let key = r.string(&format!("metadata key {i}"))?;
            let ty = r.value_type(&format!("type of `{key}`"))?;
            let value = r.value(ty, &key)?;
            if metadata_index.insert(key.clone(), i).is_some() {
                return Err(r.error(format!("duplicate metadata key `{key}`")));
            }
            metadata.push((key, value));
        }

        let alignment = match metadata_index.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(&i) => match metadata[i].1 {
                GgufValue::U32(a) if a.is_power_of_two() => a as usize,
                ref other => {
                    return Err(r.error(format!(
                        "general.alignment must be a u32 power of two, got {other:?}"
                    )));
                }
            },
        };

        let infos_at = r.pos;
        let fits = usize::try_from(n_tensors)
            .ok()
            .and_then(|n| n.checked_mul(8 + 4 + 4 + 8))
            .is_some_and(|b| b <= r.remaining());
        if !fits {
            return Err(r.error(format!(
                "tensor count {n_tensors} cannot fit in the {} bytes after the metadata \
                 (offset {infos_at})",
                r.remaining()
            )));
        }
        let n_tensors = n_tensors as usize;
        let mut tensors = Vec::with_capacity(n_tensors);
        let mut tensor_index = HashMap::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let name = r.string(&format!("name of tensor {i}"))?;
            let n_dims = r.u32(&format!("dimension count of `{name}`"))?;
            if n_dims > MAX_DIMS {
                return Err(r.error(format!(
                    "tensor `{name}` has {n_dims} dimensions, at most {MAX_DIMS} allowed"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                let d = r.u64(&format!("dimensions of `{name}`"))?;
                // ggml has no empty dimension (llama.cpp divides by them); refusing them also
                // means every dimension is at most the element count, which the data bounds.
                if d == 0 {
                    return Err(r.error(format!("tensor `{name}` has a dimension of size 0")));
                }
                let d = usize::try_from(d)
                    .map_err(|_| r.error(format!("tensor `{name}`: dimension {d} too large")))?;
                dims.push(d);
            }
            let ggml_type = GgmlType::from_tag(r.u32(&format!("type of `{name}`"))?);
            let offset = r.u64(&format!("offset of `{name}`"))?;
            let n_elements = dims
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| {
                    r.error(format!(
                        "tensor `{name}`: element count of dims {dims:?} overflows"
                    ))
                })?;
            let n_bytes = match ggml_type.block_layout() {
                None => None,
                Some((block, block_bytes)) => {
                    let row = dims.first().copied().unwrap_or(1);
                    if !row.is_multiple_of(block) {
                        return Err(r.error(format!(
                            "tensor `{name}` ({ggml_type}): row length {row} (element count \
                             {n_elements}) is not a multiple of the block size {block}"
                        )));
                    }
                    Some(
                        (n_elements / block)
                            .checked_mul(block_bytes)
                            .ok_or_else(|| {
                                r.error(format!("tensor `{name}`: byte size overflows"))
                            })?,
                    )
                }
            };
            if !offset.is_multiple_of(alignment as u64) {
                return Err(r.error(format!(
                    "tensor `{name}`: offset {offset} is not a multiple of the alignment \
                     {alignment}"
                )));
            }
            if tensor_index.insert(name.clone(), i).is_some() {
                return Err(r.error(format!("duplicate tensor name `{name}`")));
            }
            dims.reverse();
            tensors.push(GgufTensorInfo {
                name,
                shape: dims,
                ggml_type,
                offset,
                n_elements,
                n_bytes,
            });
        }

        let data_start = r.pos.next_multiple_of(alignment);
        check_data_layout(&path, &tensors, alignment, data_start, bytes)?;
        Ok(GgufFile {
            path,
            bytes: data,
            version,
            alignment,
            data_start,
            metadata,
            metadata_index,
            tensors,
            tensor_index,
        })
    }

    /// The file the data came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file is memory-mapped ([`GgufFile::open_mapped`]) rather than read.
    pub fn is_mapped(&self) -> bool {
        matches!(self.bytes, FileBytes::Mapped(_))
    }

    /// The format version (3, or 2).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The data alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> usize {
        self.alignment
    }

    /// Byte offset of the tensor data section in the file.
    pub fn data_start(&self) -> usize {
        self.data_start
    }

    /// The metadata value of `key`, if present.
    pub fn metadata(&self, key: &str) -> Option<&GgufValue> {
        self.metadata_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// All metadata key/values, in file order.
    pub fn metadata_iter(&self) -> impl Iterator<Item = (&str, &GgufValue)> {
        self.metadata.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The info of tensor `name`.
    ///
    /// # Errors
    /// [`Error::MissingTensor`] if there is no such tensor.
    pub fn tensor_info(&self, name: &str) -> Result<&GgufTensorInfo> {
        self.tensor_index
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| Error::MissingTensor {
                path: self.path.clone(),
                name: name.to_owned(),
            })
    }

    /// All tensor infos, in file order.
    pub fn tensor_infos(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// Total element count of all tensors (the parameter count of a model file).
    pub fn n_params(&self) -> usize {
        self.tensors.iter().map(|t| t.n_elements).sum()
    }
}

/// Checks that the tensors tile the data section as llama.cpp lays it out (and as its reader
/// requires): in file order, each at the aligned end of the one before, the first at offset 0,
/// every byte range inside the file, the padding between them zero (as every writer pads), and
/// the file ending at the end of the last tensor or at its padding to the alignment. So no two
/// ranges overlap, and a changed type, shape or offset (which moves where a tensor's data would
/// end, into the next tensor or leaving its own bytes in what should be zero padding) is refused
/// instead of read as garbage.
///
/// A tensor of unknown layout ([`GgmlType::Other`]) has no size: it must start after the one
/// before it (at its aligned end if that one's size is known), and its data runs to the next
/// tensor's offset or the end of the file.
fn check_data_layout(
    path: &Path,
    tensors: &[GgufTensorInfo],
    alignment: usize,
    data_start: usize,
    bytes: &[u8],
) -> Result<()> {
    let file_len = bytes.len();
    let err = |msg: String| Err(format_error(path, msg));
    // Padding `from..to` (relative to the data start, inside the file) must be zero.
    let check_padding = |from: usize, to: usize, after: &str| -> Result<()> {
        let (from, to) = (data_start + from, (data_start + to).min(file_len));
        match bytes
            .get(from..to)
            .and_then(|p| p.iter().position(|&b| b != 0))
        {
            None => Ok(()),
            Some(i) => err(format!(
                "non-zero byte at {} in the padding after {after}: a tensor's data is shorter \
                 than what was written there (a changed type or shape?)",
                from + i
            )),
        }
    };
    // Where the previous tensor's data ends (relative to `data_start`); `None` after a tensor of
    // unknown size, which only requires the next one to start past its offset.
    let mut end = Some(0usize);
    let mut last_offset = None::<usize>;
    for t in tensors {
        let offset = usize::try_from(t.offset).ok();
        // a tensor of unknown layout holds at least one byte (it has no empty dimension)
        let stop = offset.and_then(|o| o.checked_add(t.n_bytes.unwrap_or(1)));
        let abs_stop = stop.and_then(|s| data_start.checked_add(s));
        if abs_stop.is_none_or(|s| s > file_len) {
            return err(format!(
                "tensor `{}`: {} bytes of data at offset {} (+ data start {data_start}) run \
                 beyond the end of the file ({file_len} bytes)",
                t.name,
                t.n_bytes
                    .map_or_else(|| "its".to_owned(), |n| n.to_string()),
                t.offset
            ));
        }
        let (offset, stop) = (offset.unwrap_or(0), stop.unwrap_or(0));
        let placed = match end {
            Some(e) => offset == e.next_multiple_of(alignment),
            None => last_offset.is_none_or(|l| offset > l),
        };
        if !placed {
            let expected = match end {
                Some(e) => format!("{}", e.next_multiple_of(alignment)),
                None => format!("past {}", last_offset.unwrap_or(0)),
            };
            return err(format!(
                "tensor `{}` ({}, shape {:?}): data at offset {offset}, expected {expected}: \
                 tensors must follow one another in file order, each at the aligned end of \
                 the one before (overlapping or misplaced data, or a changed type or shape)",
                t.name, t.ggml_type, t.shape
            ));
        }
        if let Some(e) = end {
            check_padding(e, offset, &format!("the tensor before `{}`", t.name))?;
        }
        last_offset = Some(offset);
        end = t.n_bytes.map(|_| stop);
    }
    // The file ends where the data does, or at its padding.
    if let Some(e) = end {
        let data_end = data_start + e;
        let padded = data_end.next_multiple_of(alignment);
        let ok = if tensors.is_empty() {
            file_len <= padded
        } else {
            file_len == data_end || file_len == padded
        };
        if !ok {
            return err(format!(
                "the tensor data ends at byte {data_end} but the file has {file_len} bytes \
                 (a changed type or shape, or trailing bytes)"
            ));
        }
        if !tensors.is_empty() {
            check_padding(e, file_len - data_start, "the last tensor")?;
        }
    }
    Ok(())
}
