//! Loading real checkpoints: safetensors, GGUF and Hugging Face `config.json`.
//!
//! - [`Weights`]: a name → f32 tensor store of frozen weights, with shape-checked accessors whose
//!   errors name the file and the tensor.
//! - [`load_safetensors`] / [`save_safetensors`]: Hugging Face safetensors (F32, F16, BF16 read
//!   as f32; integer buffers skipped; f32 written, for adapters).
//! - [`GgufFile`]: a GGUF v3 (and v2) reader with metadata and dequantisation of F32, F16, BF16,
//!   Q8_0, Q4_0 and Q4_1 tensors; [`unpermute_rope_rows`] undoes llama.cpp's q/k row permutation.
//! - [`PackedMatrix`]: a matrix kept in its stored format (F16, BF16, Q8_0, Q4_0, Q4_1), widened
//!   a tile of rows at a time by the kernels. It lives in [`crate::packed`], the layer the
//!   kernels and `io` both build on, and is re-exported here; [`GgufFile::tensor_packed`]
//!   produces it.
//! - [`BertConfig`] / [`LlamaConfig`]: validated model hyper-parameters, from `config.json` or
//!   (Llama) from GGUF metadata.
//! - [`assets_dir`] / [`asset`]: where the real model files live (`$SPRY_ASSETS`, else
//!   `./assets` where `scripts/fetch_assets.sh` puts them in a checkout, else a per-user cache).
//!
//! Every reader checks lengths and offsets against the file before it allocates or slices, so a
//! corrupt or truncated file gives an [`Error::Format`], never a panic or a
//! huge allocation; every weight is checked finite at load
//! ([`Error::NonFinite`]).
//!
//! Safetensors files, and GGUF files opened with [`GgufFile::open_mapped`] (as the model loaders
//! do), are memory-mapped read-only rather than read: the file costs page cache, not anonymous
//! memory, and no load holds the file and a copy of it at once. A mapped file must not be
//! modified or truncated while mapped: the checks run when it is opened, and a file truncated
//! after that raises `SIGBUS` on the next read of a page past its end.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

pub mod config;
mod decode;
pub mod gguf;
/// The packed-matrix layer [`crate::packed`], re-exported so that `io::packed::*` paths still work.
pub use crate::packed;
pub mod safetensors;
pub mod weights;

pub use crate::packed::{PackedFormat, PackedMatrix};
pub use config::{Activation, BertConfig, LlamaConfig};
pub use gguf::{
    GgmlType, GgufArray, GgufFile, GgufTensorInfo, GgufTensorSpec, GgufValue, GgufValueType,
    GgufWriter, unpermute_rope_rows, unpermute_rope_rows_packed,
};
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
    let tmp = temp_path(path);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// The hidden temporary file beside `path` that an atomic write goes through: `.<name>.tmp`.
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map_or_else(
        || std::ffi::OsString::from("file"),
        std::ffi::OsStr::to_os_string,
    );
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    path.with_file_name(tmp_name)
}

/// Environment variable naming the folder of the real model files.
pub const ASSETS_ENV: &str = "SPRY_ASSETS";

/// The folder holding the real model files, first of:
///
/// 1. `$SPRY_ASSETS`, if set and non-empty;
/// 2. `./assets` in the current directory, if it exists (a checkout of spry, where
///    `scripts/fetch_assets.sh` puts them, or a project that keeps its files there);
/// 3. the per-user cache [`user_assets_dir`].
///
/// It never points into spry's own source tree (inside the cargo registry for a dependent).
/// Code that knows its folder passes it explicitly (the examples' `--assets`).
///
/// The layout below it is one folder per model, e.g.
/// `all-MiniLM-L6-v2/model.safetensors` and
/// `SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf`.
pub fn assets_dir() -> PathBuf {
    match std::env::var_os(ASSETS_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ if Path::new("assets").is_dir() => PathBuf::from("assets"),
        _ => user_assets_dir(),
    }
}

/// The per-user cache folder for assets: `$XDG_CACHE_HOME/spry/assets`, else
/// `$HOME/.cache/spry/assets` (`$HOME/Library/Caches/spry/assets` on macOS,
/// `%LOCALAPPDATA%\spry\assets` on Windows); `./spry-assets` if none of these is set.
pub fn user_assets_dir() -> PathBuf {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let cache = if cfg!(windows) {
        var("LOCALAPPDATA")
    } else if cfg!(target_os = "macos") {
        var("HOME").map(|h| h.join("Library").join("Caches"))
    } else {
        var("XDG_CACHE_HOME").or_else(|| var("HOME").map(|h| h.join(".cache")))
    };
    match cache {
        Some(dir) => dir.join("spry").join("assets"),
        None => PathBuf::from("spry-assets"),
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
                    "asset not found: set {ASSETS_ENV} to the folder that holds the model files \
                     (or put them in {}); spry's repository has `scripts/fetch_assets.sh`, \
                     which downloads them (`--dest DIR`)",
                    user_assets_dir().display()
                ),
            ),
            path,
        })
    }
}
