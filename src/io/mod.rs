//! Loading real checkpoints: safetensors, GGUF and Hugging Face `config.json`.
//!
//! - [`Weights`]: a name → f32 tensor store of frozen weights, with shape-checked accessors whose
//!   errors name the file and the tensor.
//! - [`load_safetensors`] / [`save_safetensors`]: Hugging Face safetensors (F32, F16, BF16 read
//!   as f32; integer buffers skipped; f32 written, for adapters).
//! - [`GgufFile`]: a GGUF v3 (and v2) reader with metadata and dequantisation of F32, F16, BF16,
//!   Q8_0, Q4_0 and Q4_1 tensors; [`unpermute_rope_rows`] undoes llama.cpp's q/k row permutation.
//! - [`PackedMatrix`]: a matrix kept in its stored format (F16, BF16, Q8_0, Q4_0, Q4_1), widened
//!   a tile of rows at a time by the kernels.
//! - [`BertConfig`] / [`LlamaConfig`]: validated model hyper-parameters, from `config.json` or
//!   (Llama) from GGUF metadata.
//! - [`assets_dir`] / [`asset`]: where the real model files live (`$SPRY_ASSETS`, default
//!   `<crate>/assets`, filled by `scripts/fetch_assets.sh`).
//!
//! Every reader checks lengths and offsets against the file before it allocates or slices, so a
//! corrupt or truncated file gives an [`Error::Format`], never a panic or a
//! huge allocation; every weight is checked finite at load
//! ([`Error::NonFinite`]).

use std::path::{Path, PathBuf};

use crate::{Error, Result};

pub mod config;
mod decode;
pub mod gguf;
pub mod packed;
pub mod safetensors;
pub mod weights;

pub use config::{Activation, BertConfig, LlamaConfig};
pub use gguf::{
    GgmlType, GgufArray, GgufFile, GgufTensorInfo, GgufValue, GgufValueType, unpermute_rope_rows,
    unpermute_rope_rows_packed,
};
pub use packed::{PackedFormat, PackedMatrix};
pub use safetensors::{load_safetensors, save_safetensors};
pub use weights::{SkippedTensor, Weights};

/// Writes `bytes` to `path` atomically: into a hidden temporary file beside it
/// (`.<name>.tmp`), then renamed over `path`, so a reader (or a crash) sees the old file or the
/// new one, never half of one. The file gets the usual permissions of a new file (`0666` minus
/// the umask).
///
/// # Errors
/// - [`Error::Io`] naming the file that could not be written or renamed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().map_or_else(
        || std::ffi::OsString::from("file"),
        std::ffi::OsStr::to_os_string,
    );
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Environment variable naming the folder of the real model files.
pub const ASSETS_ENV: &str = "SPRY_ASSETS";

/// The folder holding the real model files: `$SPRY_ASSETS` if set (and non-empty), else the
/// crate's own `assets/` folder (`<crate>/assets`, gitignored), where `scripts/fetch_assets.sh`
/// puts them.
///
/// The layout below it is one folder per model, e.g.
/// `all-MiniLM-L6-v2/model.safetensors` and
/// `SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf`.
pub fn assets_dir() -> PathBuf {
    match std::env::var_os(ASSETS_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("assets"),
    }
}

/// The path of one asset, `assets_dir()/relative`, checked to exist.
///
/// Examples and real-file tests call this so a missing asset fails loudly, with a message that
/// says how to get it, instead of being skipped.
///
/// # Errors
/// [`Error::Io`] (kind `NotFound`) naming the missing path and telling to run
/// `scripts/fetch_assets.sh` or to set `SPRY_ASSETS`.
pub fn asset(relative: impl AsRef<Path>) -> Result<PathBuf> {
    let path = assets_dir().join(relative);
    if path.exists() {
        Ok(path)
    } else {
        Err(Error::Io {
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "asset not found: run `scripts/fetch_assets.sh` to download the model files \
                     (or set {ASSETS_ENV} to the folder that holds them)"
                ),
            ),
            path,
        })
    }
}
