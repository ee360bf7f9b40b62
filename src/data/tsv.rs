//! [`load_labelled_tsv`]: the first loader, integer labels from a TSV file, kept for its callers.
//! New code reads any labelled file with [`super::load_labelled`].

use std::path::Path;

use super::rows::{Width, read_rows};
use super::{Columns, FileFormat, MAX_CLASSES};
use crate::Result;

pub use super::example::Example;

/// Reads `path` (tab-separated, first row = header) and returns one [`Example`] per row, taking
/// the text, the label (a class index, written as a non-negative integer) and optionally a
/// grouping value from the named columns.
///
/// The reading is [`FileFormat::Tsv`]'s (see [`super::load_labelled`]), with two differences
/// kept from the first version: a row may have more fields than the header (the extra ones are
/// ignored), and a header-only file is an empty data set rather than an error. Labels are not
/// inferred: each must parse as an index below [`MAX_CLASSES`].
///
/// # Errors
/// [`crate::Error::Io`] if the file cannot be read; [`crate::Error::Format`] for invalid UTF-8,
/// an empty file, a missing column, a row with too few fields, an empty text, or a label that is
/// not a class index (the line number is named).
pub fn load_labelled_tsv(
    path: &Path,
    text_col: &str,
    label_col: &str,
    group_col: Option<&str>,
) -> Result<Vec<Example>> {
    let mut columns = Columns::new(text_col, label_col);
    columns.group = group_col.map(str::to_owned);
    let rows = read_rows(path, FileFormat::Tsv, &columns, Width::AtLeast)?;
    rows.into_iter()
        .map(|r| {
            let label = r
                .label
                .parse::<usize>()
                .ok()
                .filter(|&l| l < MAX_CLASSES)
                .ok_or_else(|| crate::Error::Format {
                    path: path.to_path_buf(),
                    format: FileFormat::Tsv.name(),
                    msg: format!(
                        "line {}: label `{}` is not a class index below {MAX_CLASSES}",
                        r.line, r.label
                    ),
                })?;
            Ok(Example {
                text: r.text,
                text_pair: None,
                label,
                group: r.group,
            })
        })
        .collect()
}
