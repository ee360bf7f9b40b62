//! Locating the real assets (model files, text) that `scripts/fetch_assets.sh` installs.
//!
//! `SPRY_ASSETS` names the folder; the default is `<crate root>/assets`. A missing asset fails the
//! test with a message saying how to fetch it: real-asset tests never pass silently.
#![allow(dead_code)]

use std::path::PathBuf;

/// The assets folder: `$SPRY_ASSETS`, else `<CARGO_MANIFEST_DIR>/assets`.
pub fn assets_dir() -> PathBuf {
    match std::env::var_os("SPRY_ASSETS") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets"),
    }
}

/// Path of an asset file (e.g. `all-MiniLM-L6-v2/tokenizer.json`); panics if it is missing.
pub fn asset(rel: &str) -> PathBuf {
    let path = assets_dir().join(rel);
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
