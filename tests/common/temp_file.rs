//! A scratch file for tests that read files.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A file in the temp directory with the extension `ext` (loaders pick the format by it),
/// unique per process and call, removed on drop.
pub struct TempFile(pub PathBuf);

impl TempFile {
    /// Writes `content` to a fresh file.
    pub fn new(ext: &str, content: impl AsRef<[u8]>) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "spry-test-{}-{}.{ext}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::write(&path, content).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
