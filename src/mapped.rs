//! Read-only memory maps of checkpoint files: the one place the crate maps a file.
//!
//! A mapped checkpoint costs page cache (file-backed, reclaimable, shared between processes
//! mapping the same file) rather than anonymous memory, and opening it copies nothing, so a
//! loader never holds the file and a second copy of it at once. The GGUF reader
//! ([`GgufFile::open_mapped`](crate::io::GgufFile::open_mapped)) keeps packed matrices as ranges
//! of the map ([`PackedMatrix`](crate::packed::PackedMatrix)); the safetensors loader maps the
//! file and copies the tensors out as f32.
//!
//! # Contract
//!
//! The file must not be modified or truncated while it is mapped (for a GGUF file: while the
//! [`GgufFile`](crate::io::GgufFile) or any matrix taken from it is alive). Every byte range is
//! checked against the file's length when it is opened, so a file that is truncated or malformed
//! *before* it is opened gives a typed error; but a file truncated *after* it was mapped makes
//! the kernel raise `SIGBUS` on the first read of a page past the new end, and a file rewritten
//! in place changes the weights under the model. Replacing the file (writing a new one and
//! renaming it over, as [`write_atomic`](crate::io::write_atomic) does) or deleting it is safe:
//! the map keeps the old inode.

use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;

use crate::{Error, Result};

/// Maps `path` read-only (an empty file gives an empty map).
///
/// # Errors
/// [`Error::Io`] naming the file if it cannot be opened or mapped (a directory, a pipe).
pub(crate) fn map_file(path: &Path) -> Result<Arc<Mmap>> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    // SAFETY: the map is read-only and is only read through `&[u8]`. Soundness needs the file
    // not to change while it is mapped, which is this module's documented contract (the same as
    // that of reading tensors from the file on demand); see the module docs.
    let map = unsafe { Mmap::map(&file) }.map_err(io)?;
    Ok(Arc::new(map))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_a_file_and_an_empty_one_and_refuses_a_directory() {
        let dir = std::env::temp_dir().join(format!("spry_mapped_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let full = dir.join("full.bin");
        std::fs::write(&full, b"abc").unwrap();
        assert_eq!(&map_file(&full).unwrap()[..], b"abc");
        let empty = dir.join("empty.bin");
        std::fs::write(&empty, b"").unwrap();
        assert!(map_file(&empty).unwrap().is_empty());
        assert!(matches!(map_file(&dir), Err(Error::Io { path, .. }) if path == dir));
        assert!(matches!(
            map_file(&dir.join("missing")),
            Err(Error::Io { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
