//! The layer order of `docs/ARCHITECTURE.md` holds: code in a layer names (through `crate::`
//! paths, including the crate-root re-exports such as `crate::Error`) only its own layer or the
//! ones listed above it. The order is read from the architecture table itself, so the test and
//! the document cannot drift apart. Comments and doc links are not dependencies and are skipped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Layer index of every top-level module of `src/`, from the first column of the architecture
/// table: "| `error.rs`, `float.rs`, .. |" is layer 0, the next row layer 1, ...
fn layers() -> HashMap<String, usize> {
    let doc = std::fs::read_to_string(root().join("docs/ARCHITECTURE.md")).unwrap();
    let rows = doc
        .lines()
        .skip_while(|l| !l.starts_with("| folder / file |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'));
    let mut layer = HashMap::new();
    for (i, row) in rows.enumerate() {
        let first = row.split('|').nth(1).unwrap();
        for name in first.split('`').skip(1).step_by(2) {
            let module = name.trim_end_matches('/').trim_end_matches(".rs");
            layer.insert(module.to_owned(), i);
        }
    }
    layer
}

/// The module each crate-root name of `src/lib.rs` comes from (`Error` → `error`, ...); names
/// re-exported from other crates (`ndarray`) are absent.
fn root_names(layer: &HashMap<String, usize>) -> HashMap<String, String> {
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).unwrap();
    let mut names = HashMap::new();
    for line in lib.lines() {
        if let Some(m) = line.strip_prefix("pub mod ") {
            let m = m.trim_end_matches(';');
            names.insert(m.to_owned(), m.to_owned());
        } else if let Some(rest) = line.strip_prefix("pub use ") {
            let (module, items) = rest.split_once("::").unwrap_or((rest, ""));
            if layer.contains_key(module) {
                for item in items
                    .trim_end_matches(';')
                    .trim_matches(['{', '}'])
                    .split(',')
                {
                    names.insert(item.trim().to_owned(), module.to_owned());
                }
            }
        }
    }
    names
}

/// The code of a source file, without comments (`//` to the end of the line).
fn code(source: &str) -> String {
    source
        .lines()
        .map(|l| l.split_once("//").map_or(l, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first segment of every path in a `crate::` reference starting at `text`: `Error` for
/// `crate::Error`, `io` and `Float` for `crate::{io::{A, B}, Float}`.
fn first_segments(text: &str) -> Vec<String> {
    let Some(group) = text.strip_prefix('{') else {
        let end = text
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(text.len());
        return vec![text[..end].to_owned()];
    };
    let (mut depth, mut start, mut out) = (0usize, 0usize, Vec::new());
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                out.extend(first_segments(group[start..i].trim()));
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.extend(first_segments(group[start..i].trim()));
                start = i + 1;
            }
            _ => {}
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_module_depends_only_on_its_layer_and_the_ones_above() {
    let layer = layers();
    for module in ["error", "packed", "kernels", "io", "modules", "federated"] {
        assert!(layer.contains_key(module), "{module} is not in the table");
    }
    let names = root_names(&layer);
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut upward = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let top = rel.iter().next().unwrap().to_str().unwrap();
        let top = top.trim_end_matches(".rs");
        if top == "lib" {
            continue;
        }
        let mine = *layer
            .get(top)
            .unwrap_or_else(|| panic!("src/{top} is not in the architecture table"));
        let source = code(&std::fs::read_to_string(&file).unwrap());
        for (at, _) in source.match_indices("crate::") {
            if source[..at].ends_with('$') {
                continue; // `$crate::` in a macro
            }
            for name in first_segments(&source[at + "crate::".len()..]) {
                let Some(module) = names.get(&name) else {
                    continue; // another crate's re-export (`ndarray`)
                };
                if layer[module] > mine {
                    upward.push(format!(
                        "{}: `{top}` names `crate::{name}` ({module})",
                        rel.display()
                    ));
                }
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports against the layer order:\n{}",
        upward.join("\n")
    );
}
