//! Labelled text examples from a TSV file with a header row.

use std::path::Path;

use crate::{Error, Result};

/// One labelled text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    /// The text.
    pub text: String,
    /// Class index.
    pub label: usize,
    /// Value of the grouping column (e.g. the movie), if one was named.
    pub group: Option<String>,
}

/// Reads `path` (tab-separated, first row = header) and returns one [`Example`] per row, taking
/// the text, the label and optionally a grouping value from the named columns.
///
/// # Errors
/// [`Error::Io`] if the file cannot be read; [`Error::Format`] for a missing column, a row with
/// too few fields, or a label that is not a non-negative integer (the line number is named).
pub fn load_labelled_tsv(
    path: &Path,
    text_col: &str,
    label_col: &str,
    group_col: Option<&str>,
) -> Result<Vec<Example>> {
    let content = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |msg: String| Error::Format {
        path: path.to_path_buf(),
        format: "tsv",
        msg,
    };
    let mut lines = content.lines();
    let header: Vec<&str> = lines
        .next()
        .ok_or_else(|| bad("empty file".into()))?
        .split('\t')
        .collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| bad(format!("no column `{name}` in header {header:?}")))
    };
    let (ti, li) = (col(text_col)?, col(label_col)?);
    let gi = group_col.map(col).transpose()?;
    let need = ti.max(li).max(gi.unwrap_or(0)) + 1;
    let mut out = Vec::new();
    for (n, line) in lines.enumerate() {
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() < need {
            return Err(bad(format!(
                "line {}: {} fields, need {need}",
                n + 2,
                fields.len()
            )));
        }
        let label = fields[li].trim().parse::<usize>().map_err(|_| {
            bad(format!(
                "line {}: label `{}` is not a class index",
                n + 2,
                fields[li]
            ))
        })?;
        out.push(Example {
            text: fields[ti].to_string(),
            label,
            group: gi.map(|g| fields[g].to_string()),
        });
    }
    Ok(out)
}
