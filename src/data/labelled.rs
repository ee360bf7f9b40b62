//! Labelled files in: TSV, CSV or JSON Lines, with integer or string labels, read into
//! [`Example`]s and the [`LabelSet`] of their classes.
//!
//! A training file's classes are inferred from its labels ([`LabelSet::infer`]); a test file is
//! read against them, so the same name is the same class index in both.

use std::path::Path;

use super::labels::preview;
use super::rows::{RawRow, Source, Width, read_rows};
use super::{Columns, Example, FileFormat, LabelSet};
use crate::Result;

/// Reads a training file, its format chosen by its extension ([`FileFormat::from_path`]), and
/// infers its classes from the labels ([`LabelSet::infer`]): integers `0..=max` keep their
/// values as class indices, other labels are the sorted distinct names.
///
/// Every format: line numbers are 1-based (a TSV or CSV header is line 1, a CSV row spanning
/// several lines is named by its first), empty lines between rows are skipped (in JSON Lines
/// whitespace-only ones too), labels are trimmed, texts are kept as written, a UTF-8 byte-order
/// mark is ignored. TSV and CSV rows must have as many fields as the header. There is no size
/// limit: the file is read whole (memory about twice its size while parsing) and no allocation
/// is sized by a value in it (a label table at most [`MAX_CLASSES`](super::MAX_CLASSES) long).
///
/// ```no_run
/// use spry::data::{Columns, load_labelled, load_labelled_against};
///
/// let columns = Columns::new("premise", "label").with_text_pair("hypothesis");
/// let (train, labels) = load_labelled("nli_train.csv".as_ref(), &columns)?;
/// let test = load_labelled_against("nli_test.jsonl".as_ref(), &columns, &labels)?;
/// println!("{} classes: {:?}", labels.len(), labels.names());
/// # Ok::<(), spry::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for an unknown extension;
/// [`FileFormat::load`]'s errors.
pub fn load_labelled(path: &Path, columns: &Columns) -> Result<(Vec<Example>, LabelSet)> {
    FileFormat::from_path(path)?.load(path, columns)
}

/// Reads a file (a test split), its format chosen by its extension, whose labels must be
/// classes of `labels` (those of the training file).
///
/// # Errors
/// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for an unknown extension;
/// [`FileFormat::load_against`]'s errors.
pub fn load_labelled_against(
    path: &Path,
    columns: &Columns,
    labels: &LabelSet,
) -> Result<Vec<Example>> {
    FileFormat::from_path(path)?.load_against(path, columns, labels)
}

/// The examples of rows whose labels are class indices already.
fn examples(rows: Vec<RawRow>, ids: impl IntoIterator<Item = usize>) -> Vec<Example> {
    rows.into_iter()
        .zip(ids)
        .map(|(r, label)| Example {
            text: r.text,
            text_pair: r.text_pair,
            label,
            group: r.group,
        })
        .collect()
}

/// The rows of a labelled file, refusing a file without any.
fn nonempty_rows(path: &Path, format: FileFormat, columns: &Columns) -> Result<Vec<RawRow>> {
    let rows = read_rows(path, format, columns, Width::Exact)?;
    if rows.is_empty() {
        return Err(Source { path, format }.error("no examples (an empty or header-only file)"));
    }
    Ok(rows)
}

impl FileFormat {
    /// Reads a training file in this format and infers its classes, as [`load_labelled`].
    ///
    /// # Errors
    /// [`Error::Io`](crate::Error::Io) if the file cannot be read;
    /// [`Error::Format`](crate::Error::Format) (naming the line where there is one) for invalid
    /// UTF-8, an empty file, a header without a named column (the message lists the header) or
    /// naming it twice, a row with more or fewer fields than the header, an empty text, text pair
    /// or label, a JSON line that is not an object or lacks a named key, a text that is not a
    /// JSON string, no example at all, or labels [`LabelSet::infer`] refuses (an integer label of
    /// [`MAX_CLASSES`](super::MAX_CLASSES) or more).
    pub fn load(self, path: &Path, columns: &Columns) -> Result<(Vec<Example>, LabelSet)> {
        let src = Source { path, format: self };
        let rows = nonempty_rows(path, self, columns)?;
        let raw: Vec<&str> = rows.iter().map(|r| r.label.as_str()).collect();
        let labels = LabelSet::infer_at(&raw).map_err(|(i, msg)| src.at(rows[i].line, msg))?;
        let ids: Vec<usize> = rows
            .iter()
            .map(|r| labels.id(&r.label).unwrap_or_default())
            .collect();
        Ok((examples(rows, ids), labels))
    }

    /// Reads a file in this format whose labels must be classes of `labels`, as
    /// [`load_labelled_against`].
    ///
    /// # Errors
    /// [`FileFormat::load`]'s file errors, and [`Error::Format`](crate::Error::Format) naming the
    /// line of a label that is not one of `labels`.
    pub fn load_against(
        self,
        path: &Path,
        columns: &Columns,
        labels: &LabelSet,
    ) -> Result<Vec<Example>> {
        let src = Source { path, format: self };
        let rows = nonempty_rows(path, self, columns)?;
        let ids = rows
            .iter()
            .map(|r| {
                labels.id(&r.label).ok_or_else(|| {
                    src.at(
                        r.line,
                        format!(
                            "label `{}` is not one of the {} classes {}",
                            r.label,
                            labels.len(),
                            preview(labels.names())
                        ),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(examples(rows, ids))
    }
}
