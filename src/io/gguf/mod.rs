//! GGUF (llama.cpp's checkpoint format) reader: metadata, tensor infos, dequantisation to f32.
//!
//! Layout (v3; v2 is identical, v1 used 32-bit lengths and is refused), all little-endian:
//!
//! ```text
//! "GGUF" u32:version u64:n_tensors u64:n_kv
//! n_kv × { string:key  u32:value_type  value }
//! n_tensors × { string:name  u32:n_dims  n_dims × u64:dim (innermost first)  u32:ggml_type  u64:offset }
//! padding to general.alignment (default 32)
//! tensor data (each tensor at data_start + offset, offsets multiples of the alignment)
//! ```
//!
//! The tensors tile the data section in file order, each at the aligned end of the one before
//! (llama.cpp writes them so and its reader requires it), and the file ends with the last one or
//! its padding; a shape's element count and byte size are computed with checked arithmetic, and
//! no dimension is 0. So every tensor's byte range lies inside the file, matches its type and
//! shape exactly and overlaps no other.
//!
//! Every count and length is checked against the bytes that remain *before* anything is
//! allocated, so a corrupt file gives [`Error::Format`], never a panic or a huge allocation.
//! Tensor shapes are row-major ([`GgufTensorInfo::shape`]: the file's dimensions reversed), so a
//! linear weight is `[out, in]` as in Hugging Face checkpoints. F32, F16, BF16, Q8_0, Q4_0 and
//! Q4_1 tensors are dequantised ([`GgufFile::tensor_f32`]); matrices of the last five types can
//! also be kept as stored ([`GgufFile::tensor_packed`]): ranges of the file's map, without a
//! copy, for a file opened with [`GgufFile::open_mapped`] (which must then not be modified or
//! truncated while mapped; all the checks above run on the map before any tensor is read).
//!
//! The reader is split by concern:
//!
//! - `value.rs`: metadata values ([`GgufValueType`], [`GgufValue`], [`GgufArray`]);
//! - `reader.rs`: the bounds-checked little-endian cursor that decodes them;
//! - `tensor.rs`: ggml tensor types ([`GgmlType`]) and tensor infos ([`GgufTensorInfo`]);
//! - `file.rs`: [`GgufFile`] and its parsing: header, metadata, alignment, tensor infos, the
//!   bounds of the data section, of a file read into memory or memory-mapped
//!   ([`GgufFile::open_mapped`]: the model loaders' path, whose packed tensors stay in the map);
//! - `data.rs`: reading tensors out of the data section, dequantised or packed;
//! - `permute.rs`: [`unpermute_rope_rows`], which undoes llama.cpp's q/k row permutation for
//!   Hugging Face names.

use std::path::Path;

use crate::Error;

mod data;
mod file;
mod permute;
mod reader;
mod tensor;
mod value;
mod write;

pub use file::{DEFAULT_ALIGNMENT, GgufFile};
pub use permute::{unpermute_rope_rows, unpermute_rope_rows_packed};
pub use tensor::{GgmlType, GgufTensorInfo};
pub use value::{GgufArray, GgufValue, GgufValueType};
pub use write::{GGUF_WRITE_VERSION, GgufTensorSpec, GgufWriter};

/// The format name in [`Error::Format`].
const FORMAT: &str = "gguf";

fn format_error(path: &Path, msg: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        format: FORMAT,
        msg: msg.into(),
    }
}
