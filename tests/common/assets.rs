//! Locating the real assets (model files, text) that `scripts/fetch_assets.sh` installs.
//!
//! `SPRY_ASSETS` names the folder; the default is `<crate root>/assets`. A missing asset is
//! fetched on first use; one that cannot be fetched fails the test with a message saying how to
//! provide it: real-asset tests never pass silently.
#![allow(dead_code)]

use std::path::PathBuf;

/// The assets folder: `$SPRY_ASSETS`, else `<CARGO_MANIFEST_DIR>/assets`.
pub fn assets_dir() -> PathBuf {
    match std::env::var_os("SPRY_ASSETS") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets"),
    }
}

/// Path of an asset file (e.g. `all-MiniLM-L6-v2/tokenizer.json`), fetched on first use when
/// missing (`spry::recipes::bundled::ensure_bundled`); panics if it is still missing.
pub fn asset(rel: &str) -> PathBuf {
    let path = assets_dir().join(rel);
    if !path.is_file() {
        // the library's assets folder is this one when SPRY_ASSETS is set or the tests run in
        // the crate root (cargo's working directory for tests)
        let _ = spry::recipes::bundled::ensure_bundled();
    }
    assert!(
        path.is_file(),
        "missing asset {}: run `scripts/fetch_assets.sh` (or point SPRY_ASSETS at a folder that holds it)",
        path.display()
    );
    path
}

/// Parsed JSON of a golden file in `tests/golden/`.
pub fn golden(name: &str) -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read golden file {}: {e}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("golden file {} is not JSON: {e}", path.display()))
}
